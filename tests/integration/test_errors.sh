#!/bin/bash
# Bad input gets a clear error and loses nothing:
#  - a table's target key file is missing: the mount fails naming the key;
#  - a key file whose content changed under the same name (re-created with
#    rekeyctl createkey): the mount is refused with a message about the
#    fingerprint, the likely accident and how to rotate;
#  - a DATADIR that is not a rekeyfs data directory: the message says
#    "rekeyctl init"; with -o key=NAME it is initialised instead;
#  - a corrupted chunk: EIO for the bytes of that chunk only, the daemon log
#    names file and chunk, other chunks and files read fine, the daemon lives;
#  - a corrupted header (both copies): EIO for the file, nothing else;
#  - a key file with mode 0644 is refused with a message saying chmod 600.
# After each refusal the cause is repaired and every file reads back intact.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup

CKB=64
CS=$((CKB * 1024))
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
EXP="$T_TMP/expected"
mkdir -p "$MNT" "$EXP"
new_datadir "$DATA" $CKB
mkdir -p "$DATA/t"
run rekeyctl alter -d "$KEYS" "$DATA/t" --key key2
assert_rc 0 "alter /t --key key2"

# files: a.dat and c.dat, d.dat under key1 (root table), t/b.dat under key2
make_random "$EXP/a.dat" $((3 * CS + 500))
make_text "$EXP/b.dat" $((2 * CS + 99)) 4
make_random "$EXP/c.dat" $((3 * CS))
make_text "$EXP/d.dat" 20000 5
mount_fs "$DATA" "$MNT"
cp "$EXP/a.dat" "$EXP/c.dat" "$EXP/d.dat" "$MNT/" || fail "writing through the mount"
cp "$EXP/b.dat" "$MNT/t/" || fail "writing through the mount"
umount_fs "$MNT"
for f in a.dat c.dat d.dat t/b.dat; do
	is_chunk_file "$DATA/$f" || fail "$f is not a chunk file"
done

# all_intact: mount and compare every file (after a repaired refusal)
all_intact() {
	mount_fs "$DATA" "$MNT" "${1:-}"
	local f
	for f in a.dat c.dat d.dat; do
		assert_same "$MNT/$f" "$EXP/$f" "$f after: $2"
	done
	assert_same "$MNT/t/b.dat" "$EXP/b.dat" "t/b.dat after: $2"
	umount_fs "$MNT"
}

# expect_mount_fail WHAT DATADIR [OPTS]: the daemon must refuse (and exit);
# its messages end up in $T_ERR
expect_mount_fail() {
	local what="$1" d="$2" o="${3:-}"
	RKFX_QUIET=1 RKFX_TIMEOUT=15 rkfx_mount "$d" "$MNT" "$KEYS" "$o" "$T_ERR"
	local rc=$?
	if [ $rc -eq 0 ]; then
		rkfx_umount "$MNT"
		fail "$what: the mount succeeded; it must be refused"
	fi
	rkfx_is_mounted "$MNT" && fail "$what: something is mounted on $MNT after a refused mount"
	[ -s "$T_ERR" ] || fail "$what: the daemon said nothing"
	echo "  daemon said: $(head -c 600 "$T_ERR" | tr '\n' ' ')"
}

# ---- a missing key file -----------------------------------------------------------------------
checking "the target key file of a table is missing: the mount fails and names the key"
mkdir -p "$T_TMP/keys.away"
mv "$KEYS/key2" "$T_TMP/keys.away/key2"
expect_mount_fail "missing key2" "$DATA"
assert_err_has "key2" "the message names the missing key"
mv "$T_TMP/keys.away/key2" "$KEYS/key2"
checking "with the key file back, every file is intact"
all_intact "" "missing key"

# ---- a key file re-created under the same name ---------------------------------------------------
checking "a key file whose content changed under the same name stops the mount (fingerprint, accident, rotation)"
mv "$KEYS/key2" "$T_TMP/keys.away/key2"
run rekeyctl createkey -d "$KEYS" ChaCha20/Poly1305/NoPadding 256 key2
assert_rc 0 "re-create key2"
expect_mount_fail "changed key2" "$DATA"
assert_err_has "key2" "the message names the key"
grep -qi "fingerprint" "$T_ERR" || fail "the message does not mention the fingerprint"
grep -qi "accident" "$T_ERR" || fail "the message does not explain the likely accident"
grep -qiE "rotat" "$T_ERR" || fail "the message does not explain how to rotate"
mv -f "$T_TMP/keys.away/key2" "$KEYS/key2"
checking "with the original key file back, every file is intact"
all_intact "" "changed key"

# ---- key file permissions ---------------------------------------------------------------------------
checking "a key file with mode 0644 is refused with a message saying chmod 600"
chmod 644 "$KEYS/key1"
expect_mount_fail "key1 mode 0644" "$DATA"
assert_err_has "chmod 600" "the message says chmod 600"
assert_err_has "key1" "the message names the key file"
chmod 600 "$KEYS/key1"
checking "after chmod 600 every file is intact"
all_intact "" "key file mode"

# ---- not a data directory -------------------------------------------------------------------------
checking "a directory that is not a rekeyfs data directory: the message says 'rekeyctl init'"
NEW="$T_TMP/notdata"
mkdir -p "$NEW/sub"
make_text "$NEW/sub/old.txt" 3000 7
cp "$NEW/sub/old.txt" "$T_TMP/old.txt"
expect_mount_fail "not a data directory" "$NEW"
assert_err_has "rekeyctl init" "the message says rekeyctl init"
[ -e "$NEW/.rekeyfs" ] && fail "a refused mount created $NEW/.rekeyfs"
assert_same "$NEW/sub/old.txt" "$T_TMP/old.txt" "the existing file after a refused mount"
checking "with -o key=key1 it is initialised and mounted; old plain files pass through"
mount_fs "$NEW" "$MNT" key=key1
[ -d "$NEW/.rekeyfs" ] || fail "-o key=key1 did not initialise $NEW (no .rekeyfs)"
assert_same "$MNT/sub/old.txt" "$T_TMP/old.txt" "the pre-existing plain file through the mount"
echo "new file" >"$MNT/new.txt"
umount_fs "$MNT"
is_chunk_file "$NEW/new.txt" || fail "a file written after -o key= initialisation is not a chunk file"
is_chunk_file "$NEW/sub/old.txt" && fail "the pre-existing plain file was converted"
run rekeyctl keys -d "$KEYS" "$NEW"
assert_rc 0 "rekeyctl keys on the initialised directory"
assert_out_has "key1" "the new data directory's registry has key1"

# ---- a corrupted chunk ------------------------------------------------------------------------------
checking "a corrupted chunk gives EIO for its bytes only, and the log names file and chunk"
cp "$DATA/c.dat" "$T_TMP/c.dat.stored"
flip_byte "$DATA/c.dat" $((8192 + 100))
mount_fs "$DATA" "$MNT"
run cat "$MNT/c.dat"
assert_rc_nonzero "cat of a file with a corrupt first chunk"
assert_err_has "Input/output error" "cat reports EIO"
run dd if="$MNT/c.dat" of="$T_TMP/chunk0" bs=$CS count=1
assert_rc_nonzero "dd of the corrupt first chunk"
assert_err_has "Input/output error" "dd of chunk 0 reports EIO"
run dd if="$MNT/c.dat" of="$T_TMP/chunk1" bs=$CS skip=1 count=1 status=none
assert_rc 0 "dd of the second chunk (skip=1)"
dd if="$EXP/c.dat" of="$T_TMP/chunk1.exp" bs=$CS skip=1 count=1 status=none
assert_same "$T_TMP/chunk1" "$T_TMP/chunk1.exp" "the second chunk of the corrupted file"
run dd if="$MNT/c.dat" of="$T_TMP/chunk2" bs=$CS skip=2 status=none
assert_rc 0 "dd of the third chunk"
assert_eq "$(stat -c %s "$MNT/c.dat")" $((3 * CS)) "size of the corrupted file"
checking "other files are unaffected and the daemon is still serving"
assert_same "$MNT/a.dat" "$EXP/a.dat" "a.dat next to a corrupted file"
assert_same "$MNT/t/b.dat" "$EXP/b.dat" "t/b.dat next to a corrupted file"
kill -0 "$LAST_PID" 2>/dev/null || fail "the daemon died after a corrupt chunk"
run python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['io']['read_errors'])" "$MNT/.rekeyfs/status"
assert_rc 0 "status after the error"
[ "$(cat "$T_OUT")" -ge 1 ] 2>/dev/null || fail "status io.read_errors is not >= 1: $(cat "$T_OUT")"
umount_fs "$MNT"
grep -E "c\.dat" "$LAST_LOG" | grep -Eqi "chunk 0" || {
	cat "$LAST_LOG" >&2
	fail "the daemon log does not name c.dat and chunk 0 on one line"
}
ok "log: $(grep -E 'c\.dat' "$LAST_LOG" | head -1)"
checking "offline rekeyctl cat of the corrupted file fails clearly, naming the chunk"
run rekeyctl cat -d "$KEYS" "$DATA/c.dat"
assert_rc_nonzero "rekeyctl cat of a corrupted file"
assert_err_has "c\\.dat" "the message names the file"
assert_err_has "chunk 0" "the message names the chunk"
cp "$T_TMP/c.dat.stored" "$DATA/c.dat"
checking "with the byte restored every file is intact"
all_intact "" "corrupt chunk"

# ---- a corrupted header -------------------------------------------------------------------------------
checking "one corrupt header copy is survived; both corrupt give EIO for that file only"
cp "$DATA/d.dat" "$T_TMP/d.dat.stored"
flip_byte "$DATA/d.dat" 50
mount_fs "$DATA" "$MNT"
assert_same "$MNT/d.dat" "$EXP/d.dat" "d.dat with header copy A corrupt"
umount_fs "$MNT"
cp "$T_TMP/d.dat.stored" "$DATA/d.dat"
flip_byte "$DATA/d.dat" 50
flip_byte "$DATA/d.dat" $((4096 + 50))
mount_fs "$DATA" "$MNT"
run cat "$MNT/d.dat"
assert_rc_nonzero "cat of a file with both header copies corrupt"
assert_err_has "Input/output error" "EIO for a corrupt header"
assert_same "$MNT/a.dat" "$EXP/a.dat" "a.dat next to a corrupt header"
kill -0 "$LAST_PID" 2>/dev/null || fail "the daemon died after a corrupt header"
umount_fs "$MNT"
grep -q "d\.dat" "$LAST_LOG" || fail "the daemon log does not name d.dat"
cp "$T_TMP/d.dat.stored" "$DATA/d.dat"
all_intact "" "corrupt header"
finish
