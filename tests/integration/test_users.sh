#!/bin/bash
# -o allow_other,default_permissions with a real non-root user (created for
# the test, deleted at exit): the user creates files in a world-writable
# sticky directory on the mount and they are owned by the user's uid/gid in
# DATADIR; a setgid directory passes its group on; the user cannot read or
# change other users' files (0600, 0644, sticky bit); chmod by the owner
# works.  Without allow_other the user cannot enter the mount at all.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd useradd userdel setpriv
integ_setup

U="rkuser$$"
useradd -M -U -s /bin/sh "$U" >"$T_OUT" 2>"$T_ERR" || fail "useradd $U failed: $(cat "$T_ERR")"
at_exit "userdel '$U' >/dev/null 2>&1 || true"
UID_="$(id -u "$U")"
GID_="$(id -g "$U")"
echo "test user $U uid $UID_ gid $GID_"

# as_user CMD: run a shell command as the test user (no supplementary groups)
as_user() {
	setpriv --reuid="$UID_" --regid="$GID_" --clear-groups -- sh -c "$1" >"$T_OUT" 2>"$T_ERR" </dev/null
	RC=$?
}

chmod 755 "$T_TMP" # the user must be able to reach the mount point
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16
mount_fs "$DATA" "$MNT" allow_other,default_permissions
chmod 755 "$MNT"
mkdir "$MNT/shared"
chmod 1777 "$MNT/shared"
echo "root secret" >"$MNT/shared/rootfile"
chmod 600 "$MNT/shared/rootfile"
echo "root public" >"$MNT/shared/public"
chmod 644 "$MNT/shared/public"
echo "other user's secret" >"$MNT/shared/otherfile"
chown 54321:54321 "$MNT/shared/otherfile"
chmod 600 "$MNT/shared/otherfile"
mkdir "$MNT/sgid"
chown 0:4242 "$MNT/sgid"
chmod 2777 "$MNT/sgid"

checking "the user creates a file in a 1777 directory on the mount"
as_user "echo 'written by the user' >'$MNT/shared/userfile' && cat '$MNT/shared/userfile'"
assert_rc 0 "user creates and reads its file"
assert_out_has "^written by the user$" "the user reads its own file"
checking "in DATADIR the stored file is owned by the user's uid/gid and is a chunk file"
assert_eq "$(stat -c %u:%g "$DATA/shared/userfile")" "$UID_:$GID_" "owner of the stored file"
assert_eq "$(stat -c %u:%g "$MNT/shared/userfile")" "$UID_:$GID_" "owner seen through the mount"
is_chunk_file "$DATA/shared/userfile" || fail "the user's file is not a chunk file"
as_user "mkdir '$MNT/shared/udir' && echo x >'$MNT/shared/udir/f' && ln -s f '$MNT/shared/udir/l' && mkfifo '$MNT/shared/udir/p'"
assert_rc 0 "user makes a directory, a file, a symlink and a fifo"
for o in udir udir/f udir/l udir/p; do
	assert_eq "$(stat -c %u:%g "$DATA/shared/$o")" "$UID_:$GID_" "owner of the stored $o"
done

checking "a setgid directory gives new files its group"
as_user "echo g >'$MNT/sgid/gfile' && mkdir '$MNT/sgid/gdir'"
assert_rc 0 "user creates in the setgid directory"
assert_eq "$(stat -c %u:%g "$DATA/sgid/gfile")" "$UID_:4242" "owner of a file in a setgid directory"
assert_eq "$(stat -c %g "$DATA/sgid/gdir")" 4242 "group of a directory in a setgid directory"
[ -g "$DATA/sgid/gdir" ] || fail "a directory made in a setgid directory lost the setgid bit"

checking "the user cannot read another user's 0600 file"
as_user "cat '$MNT/shared/rootfile'"
assert_rc_nonzero "user reads root's 0600 file"
assert_err_has "Permission denied" "reading root's 0600 file"
as_user "cat '$MNT/shared/otherfile'"
assert_rc_nonzero "user reads uid 54321's 0600 file"
assert_err_has "Permission denied" "reading another user's 0600 file"
checking "the user cannot write a 0644 file of another user, chmod it, or delete it from a sticky directory"
as_user "echo x >>'$MNT/shared/public'"
assert_rc_nonzero "user appends to root's 0644 file"
assert_err_has "Permission denied" "writing root's 0644 file"
as_user "cat '$MNT/shared/public'"
assert_rc 0 "user reads root's 0644 file"
as_user "chmod 666 '$MNT/shared/public'"
assert_rc_nonzero "user chmods root's file"
assert_err_has "Operation not permitted" "chmod of another user's file"
as_user "rm -f '$MNT/shared/public'"
assert_rc_nonzero "user deletes root's file from the sticky directory"
[ -e "$DATA/shared/public" ] || fail "root's file was deleted by the user"
as_user "truncate -s 0 '$MNT/shared/public'"
assert_rc_nonzero "user truncates root's 0644 file"
assert_eq "$(cat "$MNT/shared/public")" "root public" "root's file after the user's attempts"

checking "chmod by the owner works (and takes effect for others)"
as_user "chmod 600 '$MNT/shared/userfile' && stat -c %a '$MNT/shared/userfile'"
assert_rc 0 "owner chmods its file"
assert_out_has "^600$" "mode after chmod"
assert_eq "$(stat -c %a "$DATA/shared/userfile")" 600 "stored mode after chmod"
as_user "chmod 640 '$MNT/shared/userfile' && touch -d '2011-11-11 11:11:11' '$MNT/shared/userfile' && stat -c %Y '$MNT/shared/userfile'"
assert_rc 0 "owner chmods and touches its file"
assert_eq "$(stat -c %a "$DATA/shared/userfile")" 640 "stored mode after the second chmod"
as_user "echo more >>'$MNT/shared/userfile' && rm '$MNT/shared/udir/f' '$MNT/shared/udir/l' '$MNT/shared/udir/p' && rmdir '$MNT/shared/udir'"
assert_rc 0 "owner appends and removes its own objects"
umount_fs "$MNT"

checking "after a remount the user's file keeps owner, mode and content"
mount_fs "$DATA" "$MNT" allow_other,default_permissions
as_user "cat '$MNT/shared/userfile'"
assert_rc 0 "user reads its file after remount"
assert_eq "$(cat "$T_OUT")" "written by the user
more" "the user's file after remount"
assert_eq "$(stat -c '%u:%g %a' "$MNT/shared/userfile")" "$UID_:$GID_ 640" "owner and mode after remount"
umount_fs "$MNT"

checking "without allow_other the user cannot enter the mount"
mount_fs "$DATA" "$MNT"
as_user "ls '$MNT/shared'"
assert_rc_nonzero "user lists a mount without allow_other"
umount_fs "$MNT"
finish
