#!/bin/bash
# rekeyctl rotate --rewrap, offline (issue 16, item 2, offline half): the
# data keys wrapped under key1 are rewrapped under key3, headers only.
#   - refused before anything changes when NEW's cipher differs (key2 is
#     ChaCha20, key1 AES-256)
#   - kill -9 between the two header copies of a file's rewrap
#     (rewrap.first-copy), and after a whole file (offline-rewrap.file-done):
#     every file still reads with both keys present; running it again
#     finishes the job
#   - afterwards: no slot byte of any file changed (headers only), verify
#     and release key1 pass, and with key1's file gone from the key
#     directory every file reads back identical
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd md5sum python3
integ_setup
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 key3
assert_rc 0 "createkey key3"

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16 key1
mkdir -p "$DATA/ks/t1"
run rekeyctl alter -d "$KEYS" "$DATA/ks/t1" --key key1
assert_rc 0 "alter t1"
mount_fs "$DATA" "$MNT"
for d in ks/t1 .; do
	for i in 1 2 3; do
		head -c $((50000 * i + 777)) /dev/urandom >"$MNT/$d/f$i" || fail "write $d/f$i"
	done
done
ln "$MNT/ks/t1/f2" "$MNT/ks/t1/f2.link" || fail "hard link"
sync
(cd "$MNT" && find . -path ./.rekeyfs -prune -o -type f -print0 | sort -z | xargs -0 md5sum) >"$T_TMP/sums"
[ "$(wc -l <"$T_TMP/sums")" -eq 7 ] || fail "expected 7 names: $(cat "$T_TMP/sums")"
umount_fs "$MNT"

# the stored bytes past the 8 KiB header area of every file, and the headers
slots() {
	python3 - "$DATA" <<'PY'
import hashlib, os, sys
root = sys.argv[1]
for d, dirs, files in sorted(os.walk(root)):
    dirs[:] = sorted(x for x in dirs if x != ".rekeyfs")
    for f in sorted(files):
        p = os.path.join(d, f)
        b = open(p, "rb").read()
        print(os.path.relpath(p, root), hashlib.sha256(b[8192:]).hexdigest(), b[8:10].hex())
PY
}
slots >"$T_TMP/slots.before" || fail "reading the stored files"
grep -q " 0200$" "$T_TMP/slots.before" || fail "new files should be format 2: $(cat "$T_TMP/slots.before")"
# mounted without the walker and lazy rekeys: after the alter the tables
# target key3 and those would reseal chunks still under key1
check_sums() {
	mount_fs "$DATA" "$MNT" "lazy=off,walker=off"
	(cd "$MNT" && md5sum -c --quiet "$T_TMP/sums") >"$T_TMP/sums.out" 2>&1 ||
		fail "$1: files differ: $(head -c 1500 "$T_TMP/sums.out")"
	umount_fs "$MNT"
}

checking "rotate --rewrap to a key of another cipher is refused before anything changes"
run rekeyctl rotate -d "$KEYS" --rewrap --from key1 --to key2 "$DATA"
assert_rc_nonzero "rewrap to ChaCha20"
assert_err_has "differ in cipher or strength" "says why"
run rekeyctl keys -d "$KEYS" "$DATA"
if grep -Eq "^key2" "$T_OUT"; then fail "key2 was registered by a refused rewrap: $(cat "$T_OUT")"; fi
run rekeyctl rotate -d "$KEYS" --rewrap --to key3 "$DATA"
assert_rc_nonzero "--rewrap without --from"

checking "kill -9 between the two header copies of the first file's rewrap (batches of one file): every file reads"
run_env REKEYFS_REWRAP_BATCH=1 REKEYFS_CRASHPOINT="rewrap.first-copy" -- rekeyctl rotate -d "$KEYS" --rewrap --from key1 --to key3 "$DATA"
assert_rc 137 "killed at rewrap.first-copy (stderr: $(cat "$T_ERR"))"
assert_err_has "crash point rewrap.first-copy reached" "the crash point was reached"
check_sums "after the kill in a rewrap"

checking "kill -9 after the second file's second header copy, the others' first copies durable (one batch): every file reads"
run_env REKEYFS_CRASHPOINT="offline-rewrap.file-done:2" -- rekeyctl rotate -d "$KEYS" --rewrap --from key1 --to key3 "$DATA"
assert_rc 137 "killed at offline-rewrap.file-done:2 (stderr: $(cat "$T_ERR"))"
check_sums "after the kill between files"

checking "the older header copies a cut run left under key1 keep key1 from release"
run rekeyctl release-key -d "$KEYS" key1 "$DATA"
assert_rc_nonzero "release of key1 while older header copies name it"
assert_err_has "older header copy still wraps a data key under it" "the refusal names the cause"
run rekeyctl fsck -d "$KEYS" --key key1 "$DATA"
assert_rc 1 "fsck --key key1 says no (stdout: $(cat "$T_OUT"))"

checking "run again: finishes, verifies and releases key1; no slot byte changed"
run rekeyctl rotate -d "$KEYS" --rewrap --from key1 --to key3 --release "$DATA"
assert_rc 0 "rotate --rewrap --release (stderr: $(cat "$T_ERR"))"
assert_out_has "^rewrap: .*no chunk rewritten" "the rewrap step"
assert_out_has " [1-9][0-9]* with an older header copy left under key1 by a cut run written again" "the cut files repaired"
python3 - "$DATA" >"$T_TMP/copies.out" 2>&1 <<'PY' || fail "header copies still naming key1: $(cat "$T_TMP/copies.out")"
import os, sys
bad = []
for d, dirs, files in os.walk(sys.argv[1]):
    dirs[:] = [x for x in dirs if x != ".rekeyfs"]
    for f in files:
        b = open(os.path.join(d, f), "rb").read(8192)
        if b"key1" in b:
            bad.append(os.path.join(d, f))
if bad:
    sys.exit(" ".join(bad))
PY
assert_out_has "^verify: no chunk" "verify step"
assert_out_has "key 'key1' released" "release step"
slots >"$T_TMP/slots.after" || fail "reading the stored files"
diff "$T_TMP/slots.before" "$T_TMP/slots.after" >"$T_TMP/slots.diff" ||
	fail "a rewrap changed stored bytes past the headers: $(head -c 1500 "$T_TMP/slots.diff")"
run rekeyctl fsck -d "$KEYS" "$DATA"
assert_rc 0 "fsck after the rewrap: $(cat "$T_OUT")"

checking "a file with two names in one batch is rewrapped once"
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 key4
assert_rc 0 "createkey key4"
run rekeyctl rotate -d "$KEYS" --rewrap --from key3 --to key4 "$DATA"
assert_rc 0 "rotate --rewrap key3 -> key4 (stderr: $(cat "$T_ERR"))"
assert_out_has "^rewrap: 6 file\\(s\\), 6 data key\\(s\\) rewrapped" "6 files for 7 names"

checking "with key1's file gone from the key directory every file reads back identical"
mv "$KEYS/key1" "$T_TMP/key1.away" || fail "moving key1 away"
check_sums "without key1"
finish
