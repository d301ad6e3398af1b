#!/bin/bash
# Refusing mistakes around a mounted data directory (issue 12, item 7):
#   - offline commands on a mounted data directory (mounted elsewhere, and
#     mounted over itself) say "DATADIR is mounted at M by pid N; use
#     rekeyctl CMD ... M", never "cannot read .rekeyfs/format"
#   - a second rekeyfs mount of a mounted data directory says the same
#   - mounting over a non-empty directory other than DATADIR is refused
#     unless -o nonempty
#   - -o key= on a directory with plain files says how many stay plain
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd timeout
integ_setup
export REKEYFS_LOCK_WAIT=1

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
MNT2="$T_TMP/mnt2"
mkdir -p "$MNT2"
at_exit 'mountpoint -q "$MNT2" && fusermount3 -uz "$MNT2"'
new_datadir "$DATA"
mount_fs "$DATA" "$MNT"
echo hello >"$MNT/a" || fail "write a"

# mounted_msg CMD M: the last run failed with the mounted message naming M and the daemon's pid
mounted_msg() {
	assert_rc_nonzero "$1"
	assert_err_has "is mounted at $2 by pid $LAST_PID; use rekeyctl" "$1: names the mount and the pid"
	assert_err_lacks "format" "$1: no format error"
}

checking "offline commands on a data directory mounted elsewhere name the mount and the pid"
run rekeyctl keys -d "$KEYS" "$DATA"
mounted_msg "keys DATADIR" "$MNT"
run rekeyctl encrypt -d "$KEYS" "$DATA"
mounted_msg "encrypt DATADIR" "$MNT"
run rekeyctl rekey -d "$KEYS" "$DATA"
mounted_msg "rekey DATADIR" "$MNT"
assert_err_has "use rekeyctl rekey \.\.\. $MNT" "rekey: says to use the mount"
run rekeyctl rotate -d "$KEYS" --from key1 --to key2 "$DATA"
mounted_msg "rotate DATADIR" "$MNT"

checking "a second rekeyfs mount of the data directory names the first mount and its pid"
run timeout 60 rekeyfs -f -o "keydir=$KEYS" "$DATA" "$MNT2"
mounted_msg "second rekeyfs" "$MNT"
mountpoint -q "$MNT2" && fail "the second mount came up"
umount_fs "$MNT"

checking "mounted over itself: offline commands and a second mount name the mount (not .rekeyfs/format)"
mount_fs "$DATA" "$DATA"
run rekeyctl keys -d "$KEYS" "$DATA"
mounted_msg "keys DATADIR over itself" "$DATA"
run rekeyctl encrypt -d "$KEYS" "$DATA"
mounted_msg "encrypt DATADIR over itself" "$DATA"
run timeout 60 rekeyfs -f -o "keydir=$KEYS" "$DATA" "$MNT2"
mounted_msg "second rekeyfs over itself" "$DATA"
mountpoint -q "$MNT2" && fail "the second mount came up"
umount_fs "$DATA"

checking "mounting over a non-empty directory other than DATADIR is refused unless -o nonempty"
mkdir -p "$T_TMP/full"
echo keep >"$T_TMP/full/precious"
run timeout 60 rekeyfs -f -o "keydir=$KEYS" "$DATA" "$T_TMP/full"
assert_rc_nonzero "mount over a non-empty directory"
assert_err_has "$T_TMP/full is not empty" "the refusal names the mount point"
assert_err_has "-o nonempty" "the refusal names the option"
mountpoint -q "$T_TMP/full" && fail "the refused mount came up"
mount_fs "$DATA" "$T_TMP/full" nonempty
[ "$(cat "$T_TMP/full/a")" = hello ] || fail "the nonempty mount does not show the data"
umount_fs "$T_TMP/full"
[ "$(cat "$T_TMP/full/precious")" = keep ] || fail "the hidden file is gone"
# over the data directory itself (not empty) needs no option: shown above

checking "-o key= on a directory with plain files says how many stay plain"
PLAIN="$T_TMP/plain"
mkdir -p "$PLAIN/sub"
for f in a b sub/c; do echo "$f" >"$PLAIN/$f"; done
mount_fs "$PLAIN" "$MNT" "key=key1"
assert_file_has "$LAST_LOG" "3 existing file\(s\) stay plain" "the daemon log counts the plain files"
assert_file_has "$LAST_LOG" "rekeyctl encrypt $PLAIN" "the daemon log says how to encrypt them"
umount_fs "$MNT"
finish
