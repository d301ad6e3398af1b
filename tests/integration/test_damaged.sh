#!/bin/bash
# Damaged and cut-short chunk files are never plain data and never zeros
# (issue #10, items 1 and 2):
#  - the first block of a chunk file overwritten (bytes 0..7, or all of
#    header copy A) while copy B verifies: still a chunk file.  The mount and
#    rekeyctl cat serve its plaintext (from copy B), never the stored bytes;
#    a write through the mount keeps it a chunk file; fsck --deep reports the
#    overwritten copy (exit bit 4, the file named); release-key refuses the
#    key its chunks are under and names it; a sweep rekeys it, after which
#    the old key may go and the file still reads back;
#  - both copies damaged but the file starts with the magic: EIO, not plain;
#  - a stored file cut short before or inside its slots (an interrupted copy
#    or restore): the chunks it lost read as EIO through the mount and from
#    rekeyctl cat (the chunks before the cut read fine), fsck --deep exits
#    with bit 4 naming the file and the first lost chunk.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup

CS=4096
SS=$((CS + 64))
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
EXP="$T_TMP/expected"
mkdir -p "$MNT" "$EXP"
new_datadir "$DATA" 4

make_random "$EXP/a.dat" $((5 * CS + 100))
make_random "$EXP/b.dat" $((5 * CS))
make_random "$EXP/z.dat" $((5 * CS))
make_text "$EXP/c.dat" $((3 * CS)) 3
mount_fs "$DATA" "$MNT"
cp "$EXP/a.dat" "$EXP/b.dat" "$EXP/z.dat" "$MNT/" || fail "writing through the mount"
umount_fs "$MNT"
for f in a.dat b.dat z.dat; do
	is_chunk_file "$DATA/$f" || fail "$f is not a chunk file"
	cp "$DATA/$f" "$T_TMP/$f.stored"
done
# from here on new data goes under key2; a.dat, b.dat, z.dat stay under key1
run rekeyctl alter -d "$KEYS" "$DATA" --key key2
assert_rc 0 "alter / --key key2"
mount_fs "$DATA" "$MNT"
cp "$EXP/c.dat" "$MNT/" || fail "writing c.dat"
umount_fs "$MNT"
rm -f "$DATA/z.dat" # only the damaged files hold key1 chunks now

# overwrite FILE OFFSET LEN: LEN bytes of junk (starting with 'X') at OFFSET
overwrite() {
	{
		printf 'X'
		head -c $(($3 - 1)) /dev/urandom
	} | dd of="$1" bs=1 seek="$2" conv=notrunc status=none || fail "cannot overwrite $1"
}

# served_right WHAT: a.dat through the mount and from rekeyctl cat is its
# plaintext (or an error), never the stored bytes
served_right() {
	mount_fs "$DATA" "$MNT"
	assert_eq "$(stat -c %s "$MNT/a.dat")" "$(stat -c %s "$EXP/a.dat")" "plaintext size of a.dat ($1)"
	run cat "$MNT/a.dat"
	if [ "$RC" -eq 0 ]; then
		cmp -s "$T_OUT" "$DATA/a.dat" && fail "the mount serves the stored bytes of a.dat ($1)"
		assert_same "$T_OUT" "$EXP/a.dat" "a.dat through the mount ($1)"
	else
		assert_err_has "Input/output error" "a.dat through the mount ($1)"
	fi
	assert_same "$MNT/c.dat" "$EXP/c.dat" "c.dat next to it ($1)"
	umount_fs "$MNT"
	run rekeyctl cat -d "$KEYS" "$DATA/a.dat"
	if [ "$RC" -eq 0 ]; then
		assert_same "$T_OUT" "$EXP/a.dat" "rekeyctl cat a.dat ($1)"
	else
		assert_err_has "a\\.dat" "rekeyctl cat names a.dat ($1)"
	fi
}

# fsck_corrupt FILE WHAT [CHUNK]: fsck --deep exits with bit 4 and reports a
# problem for FILE (about chunk CHUNK when given)
fsck_corrupt() {
	run rekeyctl fsck -d "$KEYS" --deep "$DATA"
	[ $((RC & 4)) -eq 4 ] || {
		cat "$T_OUT" "$T_ERR" >&2
		fail "fsck --deep on $2: exit status $RC lacks bit 4 (corruption)"
	}
	run rekeyctl fsck -d "$KEYS" --deep --json "$DATA"
	"$PY" - "$T_OUT" "/$1" "${3:-}" <<'PYEOF' || fail "fsck --deep --json on $2: no problem for /$1 ${3:+at chunk $3}"
import json, sys
d = json.load(open(sys.argv[1]))
ps = [p for p in d["problems"] if p["path"] == sys.argv[2]]
for p in ps:
    print("  problem: %s chunk %s: %s" % (p["kind"], p["chunk"], p["detail"]))
if sys.argv[3]:
    ps = [p for p in ps if p["chunk"] == int(sys.argv[3])]
sys.exit(0 if ps else 1)
PYEOF
	ok "fsck --deep: status 5 with a problem for $1"
}

# ---- item 1: the first block damaged, copy B intact ------------------------------------------
for span in 8 4096; do
	checking "a.dat with its first $span bytes overwritten (copy B intact) stays a chunk file"
	cp "$T_TMP/a.dat.stored" "$DATA/a.dat"
	overwrite "$DATA/a.dat" 0 $span
	fsck_corrupt a.dat "first $span bytes overwritten"
	checking "release-key key1 is refused while a.dat ($span bytes overwritten) has chunks under it"
	mv "$DATA/b.dat" "$T_TMP/b.dat.away"
	run rekeyctl release-key -d "$KEYS" key1 "$DATA"
	assert_rc_nonzero "release-key key1 with a damaged a.dat under it"
	grep -q "a\\.dat" "$T_OUT" "$T_ERR" || fail "the refusal does not name a.dat"
	ok "refused: $(head -c 300 "$T_ERR" | tr '\n' ' ')"
	mv "$T_TMP/b.dat.away" "$DATA/b.dat"
	# (reads through the mount rekey lazily and repair copy A: last)
	served_right "first $span bytes overwritten"
done

checking "a write through the mount keeps the damaged a.dat a chunk file"
cp "$T_TMP/a.dat.stored" "$DATA/a.dat"
overwrite "$DATA/a.dat" 0 8
mount_fs "$DATA" "$MNT"
printf 'tail' >>"$MNT/a.dat" || fail "appending to a.dat"
umount_fs "$MNT"
run rekeyctl cat -d "$KEYS" "$DATA/a.dat"
assert_rc 0 "rekeyctl cat a.dat after the append"
{
	cat "$EXP/a.dat"
	printf 'tail'
} >"$T_TMP/a.appended"
assert_same "$T_OUT" "$T_TMP/a.appended" "a.dat after the append"
is_chunk_file "$DATA/a.dat" || fail "a.dat was not repaired into a chunk file with copy A"

checking "both header copies damaged, the file starts with the magic: EIO, never plain"
cp "$T_TMP/a.dat.stored" "$DATA/a.dat"
flip_byte "$DATA/a.dat" 50
flip_byte "$DATA/a.dat" $((4096 + 50))
mount_fs "$DATA" "$MNT"
run cat "$MNT/a.dat"
assert_rc_nonzero "cat of a.dat with both copies damaged"
assert_err_has "Input/output error" "EIO for both copies damaged"
run sh -c "printf x >>'$MNT/a.dat'"
assert_rc_nonzero "a write to a.dat with both copies damaged"
umount_fs "$MNT"
is_chunk_file "$DATA/a.dat" || fail "a.dat with both copies damaged was rewritten"
fsck_corrupt a.dat "both copies damaged"

# ---- item 2: a stored file cut short -------------------------------------------------------------
# cut AT FIRST: b.dat cut at stored byte AT; chunks from FIRST on are lost
for cut in "8192 0" "$((8192 + 2 * SS)) 2" "$((8192 + 2 * SS + 10)) 2" "$((8192 + 3 * SS + 500)) 3"; do
	set -- $cut
	at=$1 first=$2
	checking "b.dat cut short at stored byte $at: chunks from $first on are EIO, never zeros"
	cp "$T_TMP/b.dat.stored" "$DATA/b.dat"
	truncate -s "$at" "$DATA/b.dat"
	mount_fs "$DATA" "$MNT"
	assert_eq "$(stat -c %s "$MNT/b.dat")" $((5 * CS)) "plaintext size of the cut b.dat"
	run cat "$MNT/b.dat"
	assert_rc_nonzero "cat of b.dat cut at $at"
	assert_err_has "Input/output error" "EIO for b.dat cut at $at"
	run dd if="$MNT/b.dat" of="$T_TMP/b.tail" bs=$CS skip=4 count=1 status=none
	assert_rc_nonzero "the last chunk of b.dat cut at $at"
	if [ "$first" -gt 0 ]; then
		run dd if="$MNT/b.dat" of="$T_TMP/b.head" bs=$CS count="$first" status=none
		assert_rc 0 "the chunks before the cut"
		head -c $((first * CS)) "$EXP/b.dat" >"$T_TMP/b.want"
		assert_same "$T_TMP/b.head" "$T_TMP/b.want" "chunks before the cut"
	fi
	assert_same "$MNT/c.dat" "$EXP/c.dat" "c.dat next to the cut b.dat"
	umount_fs "$MNT"
	grep -q "b\\.dat" "$LAST_LOG" || fail "the daemon log does not name b.dat"
	run rekeyctl cat -d "$KEYS" "$DATA/b.dat"
	assert_rc_nonzero "rekeyctl cat of b.dat cut at $at"
	assert_err_has "b\\.dat" "rekeyctl cat names b.dat"
	fsck_corrupt b.dat "b.dat cut at $at" "$first"
done
checking "b.dat whose clean header counts a chunk whose slot header was zeroed: fsck --deep reports it"
cp "$T_TMP/b.dat.stored" "$DATA/b.dat"
dd if=/dev/zero of="$DATA/b.dat" bs=1 seek=$((8192 + SS)) count=32 conv=notrunc status=none
fsck_corrupt b.dat "a zeroed slot header"
rm -f "$DATA/b.dat"

# ---- item 1 again: a sweep, then release-key (last: key1 goes) -------------------------------------
checking "a sweep rekeys a.dat with copy A overwritten; then key1 may go and a.dat still reads"
cp "$T_TMP/a.dat.stored" "$DATA/a.dat"
overwrite "$DATA/a.dat" 0 4096
run rekeyctl rekey -d "$KEYS" "$DATA"
echo "  rekey: status $RC, $(tail -c 300 "$T_OUT" | tr '\n' ' ')"
run rekeyctl release-key -d "$KEYS" key1 "$DATA"
echo "  release-key: status $RC, $(head -c 300 "$T_ERR" | tr '\n' ' ')"
mount_fs "$DATA" "$MNT"
assert_same "$MNT/a.dat" "$EXP/a.dat" "a.dat after the sweep and release-key"
assert_same "$MNT/c.dat" "$EXP/c.dat" "c.dat after the sweep and release-key"
umount_fs "$MNT"

finish
