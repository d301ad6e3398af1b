#!/bin/bash
# The offline rewrap makes headers durable on every file system it wrote
# to (issue 16): a table directory that is a mount point of another file
# system (a loop-mounted ext4 here) gets its own syncfs.  The check: right
# after `rotate --rewrap --release` returns, a copy of the loop image (what
# a power cut would leave) holds both header copies of every file under the
# new key and none under the released one.  Before the fix only the data
# directory root's file system was synced: the copy still named key1 only,
# which was already released.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd md5sum python3 mkfs.ext4 losetup
integ_setup
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 key3
assert_rc 0 "createkey key3"

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
IMG="$T_TMP/t1.img"
new_datadir "$DATA" 16 key1
mkdir -p "$DATA/ks/t1"
truncate -s 64M "$IMG" || fail "truncate $IMG"
mkfs.ext4 -q -F "$IMG" >"$T_TMP/mkfs.out" 2>&1 || fail "mkfs.ext4: $(cat "$T_TMP/mkfs.out")"
mount -o loop "$IMG" "$DATA/ks/t1" 2>"$T_TMP/loop.err" || fail "loop mount of $IMG: $(cat "$T_TMP/loop.err")"
at_exit "umount '$DATA/ks/t1' 2>/dev/null"
run rekeyctl alter -d "$KEYS" "$DATA/ks/t1" --key key1
assert_rc 0 "alter t1"

mount_fs "$DATA" "$MNT"
for i in 1 2 3 4 5 6; do
	head -c $((40000 * i + 11)) /dev/urandom >"$MNT/ks/t1/f$i" || fail "write f$i"
done
umount_fs "$MNT"
sync

checking "rotate --rewrap --release with a table on its own file system: its headers are durable before the release"
run rekeyctl rotate -d "$KEYS" --rewrap --from key1 --to key3 --release "$DATA"
assert_rc 0 "rotate --rewrap --release (stderr: $(cat "$T_ERR"))"
assert_out_has "key 'key1' released" "released"
# what the loop device holds now: no sync of the loop file system since the
# rotate returned (a power cut here keeps exactly this)
cp --sparse=always "$IMG" "$T_TMP/copy.img" || fail "copy the image"
mkdir -p "$T_TMP/copy"
mount -o loop,ro,noload "$T_TMP/copy.img" "$T_TMP/copy" 2>"$T_TMP/loop2.err" ||
	fail "loop mount of the copy: $(cat "$T_TMP/loop2.err")"
at_exit "umount '$T_TMP/copy' 2>/dev/null"
python3 - "$T_TMP/copy" >"$T_TMP/hdr.out" 2>&1 <<'PY' || fail "headers in the image copy: $(head -c 1500 "$T_TMP/hdr.out")"
import os, sys
d = sys.argv[1]
bad, n = [], 0
for f in sorted(os.listdir(d)):
    p = os.path.join(d, f)
    if not f.startswith("f") or not os.path.isfile(p):
        continue
    n += 1
    b = open(p, "rb").read(8192)
    for c in (0, 1):
        area = b[c * 4096:(c + 1) * 4096]
        if b"key1" in area or b"key3" not in area:
            bad.append("%s copy %s: key1 %s, key3 %s" % (f, "AB"[c], b"key1" in area, b"key3" in area))
if n != 6:
    sys.exit("expected 6 files, found %d" % n)
if bad:
    sys.exit("header copies not durable under key3: " + "; ".join(bad))
PY
umount "$T_TMP/copy" || fail "umount the copy"
finish
