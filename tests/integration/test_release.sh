#!/bin/bash
# Guarded key release (issue #4):
#   - release-key is refused while a table targets the key, and while any
#     chunk is under it: the refusal gives the counts that remain (they equal
#     an independent deep scan), also during the sweep
#   - a second `rekeyctl rekey` while a sweep runs joins it and says so
#   - release confirms by reading every chunk's key reference: a file whose
#     header counts claim no chunk under the key (clean header, forged
#     counts) still blocks the release
#   - after the sweep release succeeds, the registry says released (status,
#     rekeyctl keys), a released key cannot become a target again
#   - the daemon forgets the key at once: a file restored from an old backup
#     (a stored file sealed under the released key) reads with EIO and the
#     daemon log names the file and the released key, even while the key
#     file is still in the key directory; rekeyctl keys lists its chunks
#   - unmount, move the key file away, remount: every byte identical
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd diff cmp
integ_setup

SEED="${RELEASE_SEED:-${CRASH_SEED:-$(( ($(date +%s) ^ $$) % 1000000 ))}}"
echo "seed: $SEED (RELEASE_SEED=$SEED repeats the file contents)"

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
ORIG="$T_TMP/orig"
BACKUP="$T_TMP/backup"
mkdir -p "$MNT" "$ORIG/ks/t1" "$ORIG/ks/t2"

compare_tree() {
	diff -r --exclude=.rekeyfs "$ORIG" "$MNT" >"$T_TMP/diff.out" 2>&1 ||
		fail "$1: the mount differs from the original files: $(head -c 1500 "$T_TMP/diff.out")"
}
# expect_eio FILE: reading FILE through the mount fails with EIO
expect_eio() {
	python3 - "$1" <<'EOF' || fail "reading $1 did not fail with EIO (see above)"
import errno, sys
try:
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    print("read %d bytes without an error" % len(data))
    sys.exit(1)
except OSError as e:
    if e.errno != errno.EIO:
        print("failed with %s, not EIO" % e)
        sys.exit(1)
EOF
}
# forge_counts FILE KEY: set KEY's count to 0 in both header copies and clear
# COUNTS_DIRTY, with valid checksums (a header whose counts lie)
forge_counts() {
	python3 - "$1" "$2" <<'EOF' || fail "forging the header counts of $1"
import hashlib, struct, sys
path, key = sys.argv[1], sys.argv[2].encode()
with open(path, "r+b") as f:
    for base in (0, 4096):
        f.seek(base)
        h = bytearray(f.read(4096))
        if hashlib.sha256(h[:4064]).digest() != h[4064:4096]:
            continue
        found = False
        for j in range(16):
            o = 64 + 96 * j
            if h[o + 81] & 1 and h[o:o + 64].split(b"\0", 1)[0] == key:
                struct.pack_into("<Q", h, o + 88, 0)
                found = True
        if not found:
            sys.exit("no key entry %s" % key)
        struct.pack_into("<I", h, 12, struct.unpack_from("<I", h, 12)[0] & ~1)
        h[4064:4096] = hashlib.sha256(h[:4064]).digest()
        f.seek(base)
        f.write(h)
EOF
}

checking "set up: tables /ks/t1 and /ks/t2, files under key1; a backup copy of the data directory"
new_datadir "$DATA" 16 key1
mount_fs "$DATA" "$MNT" "lazy=off"
mkdir -p "$MNT/ks/t1" "$MNT/ks/t2"
for t in ks/t1 ks/t2; do
	run rekeyctl alter "$MNT/$t" --key key1
	assert_rc 0 "alter $t"
done
n=0
for rel in r1.dat ks/t1/a.dat ks/t1/b.txt ks/t2/c.dat ks/t2/d.txt ks/t2/e.dat; do
	n=$((n + 1))
	case $rel in
	*.txt) make_text "$ORIG/$rel" $((200000 + n * 33333)) $n ;;
	*) seeded_random "$ORIG/$rel" $((200000 + n * 33333)) "$rel" ;;
	esac
	cp "$ORIG/$rel" "$MNT/$rel" || fail "cp $rel"
done
umount_fs "$MNT"
cp -a "$DATA" "$BACKUP" || fail "backup copy"
scan --files
K1=$(scget 'd["keys"]["key1"]["chunks"]')
ok "$K1 chunks under key1 in $(scget 'd["keys"]["key1"]["files"]') files"

mount_fs "$DATA" "$MNT" "lazy=off,walker_rate=300000"
DLOG=$LAST_LOG
checking "release refused while a table targets the key; an unknown key is refused"
run rekeyctl release-key -d "$KEYS" key1 "$MNT"
assert_rc_nonzero "release-key key1 while every table targets it"
assert_err_has "refused: table /[^ ]* still has it as target key" "the refusal names a table"
run rekeyctl release-key -d "$KEYS" nosuchkey "$MNT"
assert_rc_nonzero "release-key of a key the registry does not know"
assert_err_has "not in this data directory's registry" "unknown key"
run rekeyctl release-key -d "$KEYS" key1 "$DATA"
assert_rc_nonzero "offline release-key on a data directory a daemon holds"
assert_err_has "is mounted at $MNT by pid [0-9]+; use rekeyctl release-key" "offline release names the mount and the pid"
status
assert_eq "$(sget '[k["state"] for k in d["keys"] if k["name"] == "key1"]')" '["active"]' "key1 state after refused releases"

checking "after alter to key2: release refused with the remaining counts, equal to the deep scan"
for t in "" /ks/t1; do
	run rekeyctl alter "$MNT$t" --key key2
	assert_rc 0 "alter $MNT$t --key key2"
done
run rekeyctl release-key -d "$KEYS" key1 "$MNT"
assert_rc_nonzero "release-key key1 while /ks/t2 still targets it"
assert_err_has "table /ks/t2 still has it as target key" "the refusal names the remaining table"
run rekeyctl alter "$MNT/ks/t2" --key key2
assert_rc 0 "alter /ks/t2 --key key2"
run rekeyctl release-key -d "$KEYS" key1 "$MNT"
assert_rc_nonzero "release-key key1 while all its chunks remain"
scan --files
want="$(scget 'd["keys"]["key1"]["chunks"]') chunk(s) in $(scget 'd["keys"]["key1"]["files"]') file(s) are still under it"
grep -qF "$want" "$T_ERR" || fail "the refusal does not say '$want': $(cat "$T_ERR")"
ok "$(head -c 250 "$T_ERR")"

checking "rekey starts a sweep; a second rekey while it runs joins it and says so"
run rekeyctl rekey "$MNT"
assert_rc 0 "rekeyctl rekey"
assert_out_has "sweep 1 started" "first rekey"
run rekeyctl rekey "$MNT"
assert_rc 0 "second rekeyctl rekey (a no-op is not an error)"
assert_out_has "joins running sweep 1" "the second rekey says it joins the running sweep"
assert_err_lacks "." "the second rekey prints no error"
status
assert_eq "$(sget 'd["walker"]["sweep"]')" 1 "sweep number after the second request"
assert_eq "$(sget 'd["walker"]["state"]')" running "walker state"
ok "$(head -1 "$T_OUT")"

checking "release refused during the sweep, with counts that shrink"
sleep 1.5
run rekeyctl release-key -d "$KEYS" key1 "$MNT"
assert_rc_nonzero "release-key key1 during the sweep"
left=$(sed -n "s/.*refused: \([0-9]*\) chunk(s) in.*/\1/p" "$T_ERR")
[ -n "$left" ] || fail "the refusal during the sweep gives no count: $(cat "$T_ERR")"
[ "$left" -gt 0 ] && [ "$left" -lt "$K1" ] || fail "during the sweep $left chunks remain (of $K1): expected fewer, but some"
ok "$left of $K1 chunks remain"

checking "the sweep finishes; every table 100%"
wait_idle 40
assert_eq "$(sget '[t["percent"] for t in d["walker"]["tables"] if t["percent"] != 100.0]')" "[]" "tables below 100%"
sleep 0.3
scan --files
assert_eq "$(scget "d['keys'].get('key1',{}).get('chunks',0)")" 0 "chunks under key1 after the sweep"

checking "release reads every chunk's key reference: a file with forged header counts (0 under key1) blocks it"
cp "$BACKUP/ks/t1/a.dat" "$DATA/ks/t1/forged.dat" || fail "cp forged.dat"
forge_counts "$DATA/ks/t1/forged.dat" key1
NA=$(( ($(stat -c %s "$ORIG/ks/t1/a.dat") + 16383) / 16384 ))
scan --files
assert_eq "$(scget "d['files']['/ks/t1/forged.dat']['header']")" "{}" "the forged header claims no chunk under key1"
assert_eq "$(scget "d['files']['/ks/t1/forged.dat']['keys']")" "{\"key1\": $NA}" "the forged file's slots"
run rekeyctl release-key -d "$KEYS" key1 "$MNT"
assert_rc_nonzero "BUG: release-key key1 with a file whose header counts lie (its slots are under key1)"
assert_err_has "refused: $NA chunk\(s\) in 1 file\(s\) are still under it \(/ks/t1/forged.dat\)" "the refusal names the file and its chunks"
rm "$MNT/ks/t1/forged.dat" || fail "rm forged.dat through the mount"
ok "$(head -c 200 "$T_ERR")"

checking "release succeeds once nothing is under the key; the registry marks it released"
run rekeyctl release-key -d "$KEYS" key1 "$MNT"
assert_rc 0 "release-key key1 after the sweep"
assert_out_has "key 'key1' released: 0 chunks under it" "release message"
run rekeyctl release-key -d "$KEYS" key1 "$MNT"
assert_rc 0 "a second release-key key1"
assert_out_has "already released" "second release says already released"
status
assert_eq "$(sget '[k["state"] for k in d["keys"] if k["name"] == "key1"]')" '["released"]' "status: key1 state"
assert_eq "$(sget '[k["state"] for k in d["keys"] if k["name"] == "key2"]')" '["active"]' "status: key2 state"
assert_file_has "$DLOG" "key 'key1' released" "the daemon log records the release"
assert_file_has "$DATA/.rekeyfs/keys" "released" "the registry file records the release"
run rekeyctl release-key -d "$KEYS" key2 "$MNT"
assert_rc_nonzero "release-key key2 (the target of every table)"
run rekeyctl alter "$MNT/ks/t1" --key key1
assert_rc_nonzero "alter a table back to the released key1"
compare_tree "after the release"

checking "the daemon forgot key1: a file restored from a backup reads with EIO, the log names file and key (key file still present)"
assert_exists "$KEYS/key1" "key1's file (not moved yet)"
cp "$BACKUP/ks/t2/d.txt" "$DATA/ks/t2/restored1.txt" || fail "restore from the backup"
NR=$(( ($(stat -c %s "$ORIG/ks/t2/d.txt") + 16383) / 16384 ))
expect_eio "$MNT/ks/t2/restored1.txt"
grep "restored1.txt" "$DLOG" | grep "key1" | grep -q "released" ||
	fail "the daemon log has no line naming /ks/t2/restored1.txt and the released key1: $(grep restored1 "$DLOG" | head -3)"
ok "$(grep restored1.txt "$DLOG" | head -1 | head -c 250)"
umount_fs "$MNT"

checking "offline: rekeyctl keys shows key1 released, and lists the restored file's chunks under it"
run rekeyctl keys -d "$KEYS" "$DATA"
assert_rc 0 "rekeyctl keys"
grep -Eq "^key1 +.* released +[^ ]+ +$NR +1 " "$T_OUT" ||
	fail "rekeyctl keys does not show key1 released with the restored file's $NR chunks: $(cat "$T_OUT")"
rm "$DATA/ks/t2/restored1.txt"
run rekeyctl keys -d "$KEYS" "$DATA"
assert_rc 0 "rekeyctl keys"
grep -Eq "^key1 +.* released +[^ ]+ +0 +0 " "$T_OUT" || fail "rekeyctl keys: key1 not released with 0 chunks: $(cat "$T_OUT")"
scan --files
K2=$(scget 'd["keys"]["key2"]["chunks"]')
grep -Eq "^key2 +.* active +ok +$K2 +6 " "$T_OUT" || fail "rekeyctl keys: key2 does not have the deep scan's $K2 chunks in 6 files: $(cat "$T_OUT")"
run rekeyctl release-key -d "$KEYS" key2 "$DATA"
assert_rc_nonzero "offline release-key of key2 (a target key)"
assert_err_has "target key" "the offline refusal says why"

checking "move key1 out of the key directory, remount: every byte reads back identical"
mkdir -p "$T_TMP/oldkeys"
mv "$KEYS/key1" "$T_TMP/oldkeys/" || fail "mv key1"
mount_fs "$DATA" "$MNT"
DLOG=$LAST_LOG
compare_tree "remount without key1"
evict
compare_tree "remount without key1 (cold cache)"
status
assert_eq "$(sget '[k["state"] for k in d["keys"] if k["name"] == "key1"]')" '["released"]' "status after the remount: key1"

checking "a file restored from the old backup reads with EIO; the daemon log names the file and the released key"
cp "$BACKUP/ks/t1/b.txt" "$DATA/ks/t1/restored2.txt" || fail "restore from the backup"
expect_eio "$MNT/ks/t1/restored2.txt"
grep "restored2.txt" "$DLOG" | grep "key1" | grep -q "released" ||
	fail "the daemon log has no line naming /ks/t1/restored2.txt and the released key1: $(grep restored2 "$DLOG" | head -3)"
ok "$(grep restored2.txt "$DLOG" | head -1 | head -c 250)"
rm "$MNT/ks/t1/restored2.txt" || fail "rm restored2.txt"
compare_tree "at the end"
umount_fs "$MNT"
finish
