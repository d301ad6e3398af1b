#!/bin/bash
# The name .rekeyfs is reserved at every level, and rekeyctl talks only to a
# real rekeyfs mount root (issue #10 item 3).
#   * A .rekeyfs planted below the root in DATADIR (a directory with a fake
#     control file, a symlink to the root's state directory) is hidden by the
#     daemon (readdir, lookup) and reported in its log.
#   * mkdir/create/mknod/symlink/link/rename to .rekeyfs fail with EPERM at
#     any level.
#   * rekeyctl given MOUNT/TABLE talks to the mount root's daemon (the table
#     is relative to the mount root), never to a planted control file; a fake
#     .rekeyfs/control on a path that is no rekeyfs mount is refused (exit
#     non-zero) and never written to.
#   * Offline, a .rekeyfs that is a symlink or not root's is passed over: the
#     data directory is the one whose state directory is root's.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16
mkdir -p "$DATA/t1/.rekeyfs" "$DATA/t2" "$DATA/t3"
FAKE="ok released key2 FAKE-REPLY: the key file may now be moved away"
printf '%s\n%s\n' "$FAKE" "$FAKE" >"$DATA/t1/.rekeyfs/control"
cp "$DATA/t1/.rekeyfs/control" "$T_TMP/control.orig"
chown -R 65534:65534 "$DATA/t1"
ln -s ../.rekeyfs "$DATA/t2/.rekeyfs"
echo data >"$DATA/t3/plain"
mount_fs "$DATA" "$MNT"

checking "planted .rekeyfs below the root are hidden from readdir and lookup"
ls -a "$MNT/t1" "$MNT/t2" >"$T_OUT" 2>&1
if grep -q '^\.rekeyfs$' "$T_OUT"; then fail "readdir shows a planted .rekeyfs: $(cat "$T_OUT")"; fi
for t in t1 t2; do
	[ -e "$MNT/$t/.rekeyfs" ] && fail "lookup of $t/.rekeyfs succeeds through the mount"
	[ -L "$MNT/$t/.rekeyfs" ] && fail "lookup of $t/.rekeyfs (symlink) succeeds through the mount"
done
[ -f "$MNT/.rekeyfs/control" ] || fail "the root's virtual control file is gone"
grep -q "below the data directory root is hidden" "$LAST_LOG" || fail "the daemon did not report the planted .rekeyfs: $(cat "$LAST_LOG")"

checking "creating .rekeyfs below the root is refused (EPERM) for every kind of object"
for op in "mkdir '$MNT/t3/.rekeyfs'" "touch '$MNT/t3/.rekeyfs'" "mknod '$MNT/t3/.rekeyfs' p" \
	"ln -s x '$MNT/t3/.rekeyfs'" "ln '$MNT/t3/plain' '$MNT/t3/.rekeyfs'" "mv '$MNT/t3/plain' '$MNT/t3/.rekeyfs'" \
	"mkdir -p '$MNT/t3/sub/.rekeyfs'"; do
	run sh -c "$op"
	assert_rc_nonzero "$op"
	assert_err_has "Operation not permitted" "$op"
done
[ -e "$DATA/t3/.rekeyfs" ] && fail "a .rekeyfs was made in DATADIR/t3"
[ -e "$DATA/t3/sub/.rekeyfs" ] && fail "a .rekeyfs was made in DATADIR/t3/sub"
assert_eq "$(cat "$MNT/t3/plain")" "data" "the renamed-from file is still there"

checking "rekeyctl on MOUNT/TABLE talks to the mount root's daemon, never to a planted control file"
run rekeyctl alter --key key2 "$MNT/t1"
assert_rc 0 "alter MOUNT/t1"
if grep -q FAKE "$T_OUT" "$T_ERR"; then fail "rekeyctl printed the planted reply: $(cat "$T_OUT" "$T_ERR")"; fi
assert_same "$DATA/t1/.rekeyfs/control" "$T_TMP/control.orig" "the planted control file was written to"
run rekeyctl status --json "$MNT"
assert_rc 0 "status"
assert_out_has '"/t1"' "the table /t1 (relative to the mount root) exists after the alter"
run rekeyctl release-key key1 "$MNT/t1"
assert_rc_nonzero "release-key of the root table's key through MOUNT/t1"
if grep -q FAKE "$T_OUT" "$T_ERR"; then fail "rekeyctl printed the planted reply: $(cat "$T_OUT" "$T_ERR")"; fi
assert_same "$DATA/t1/.rekeyfs/control" "$T_TMP/control.orig" "the planted control file was written to"

checking "a fake .rekeyfs/control on a path that is no rekeyfs mount is refused"
FK="$T_TMP/fake"
mkdir -p "$FK/sub/.rekeyfs"
printf '%s\n%s\n' "$FAKE" "$FAKE" >"$FK/sub/.rekeyfs/control"
chown -R 65534:65534 "$FK/sub"
for cmd in "release-key key2 $FK/sub" "alter --key key2 $FK/sub" "rekey $FK/sub" "status $FK/sub"; do
	# shellcheck disable=SC2086
	run rekeyctl $cmd
	assert_rc_nonzero "rekeyctl $cmd"
	if grep -q FAKE "$T_OUT" "$T_ERR"; then fail "rekeyctl $cmd printed the fake reply: $(cat "$T_OUT" "$T_ERR")"; fi
	assert_same "$FK/sub/.rekeyfs/control" "$T_TMP/control.orig" "rekeyctl $cmd wrote to the fake control file"
done
# root-owned too (not a mount: no daemon behind it)
chown -R 0:0 "$FK/sub"
chmod 755 "$FK/sub/.rekeyfs"
run rekeyctl release-key key2 "$FK/sub"
assert_rc_nonzero "release-key through a root-owned fake control file"
if grep -q FAKE "$T_OUT" "$T_ERR"; then fail "rekeyctl printed the fake reply: $(cat "$T_OUT" "$T_ERR")"; fi
assert_same "$FK/sub/.rekeyfs/control" "$T_TMP/control.orig" "the fake control file was written to"
umount_fs "$MNT"

checking "offline: a planted state directory (another user's copy, a symlink) is passed over"
cp -a "$DATA/.rekeyfs" "$DATA/t3/.rekeyfs"
chown -R 65534:65534 "$DATA/t3/.rekeyfs"
cp "$DATA/t3/.rekeyfs/policy" "$T_TMP/planted-policy.orig"
run rekeyctl alter -d "$KEYS" --key key2 "$DATA/t3"
assert_rc 0 "offline alter of DATADIR/t3"
assert_err_has "ignoring .*t3/.rekeyfs: it is owned by another user" "the planted state directory is reported"
assert_same "$DATA/t3/.rekeyfs/policy" "$T_TMP/planted-policy.orig" "the planted policy was changed"
grep -Eq '^table /t3 ' "$DATA/.rekeyfs/policy" || fail "the real policy has no /t3: $(cat "$DATA/.rekeyfs/policy")"
run rekeyctl alter -d "$KEYS" --key key2 "$DATA/t2"
assert_rc 0 "offline alter of DATADIR/t2 (a .rekeyfs symlink in it)"
assert_err_has "ignoring .*t2/.rekeyfs: it is a symbolic link" "the symlink is reported"
grep -Eq '^table /t2 ' "$DATA/.rekeyfs/policy" || fail "the real policy has no /t2: $(cat "$DATA/.rekeyfs/policy")"
run rekeyctl fsck "$DATA/t1"
assert_rc 0 "offline fsck of DATADIR/t1 (a planted directory in it)"
chmod 777 "$T_TMP/fake/sub/.rekeyfs"
run rekeyctl fsck "$T_TMP/fake/sub"
assert_rc_nonzero "fsck of a tree with a world-writable .rekeyfs"
assert_err_has "writable by group or others" "the world-writable state directory is reported"
finish
