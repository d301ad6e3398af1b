#!/bin/bash
# CREATE without O_EXCL on a name that appeared after the kernel's negative
# lookup never opens (or truncates) someone else's file on the caller's
# behalf (issue #10 item 10).
#
# The kernel sends LOOKUP (negative) and then CREATE; the daemon used to
# answer a CREATE whose exclusive create met EEXIST by opening the existing
# file read-write as root (and honouring O_TRUNC), although the kernel had
# checked no permission on it.  Here root keeps making a 0600 root-owned file
# appear in DATADIR (the route of a restore, or of another daemon client)
# while an unprivileged user keeps calling open(O_CREAT|O_RDWR|O_TRUNC) on
# the same name through the mount.  The user must never get root's file and
# root's content must never be truncated.  With the fix no interleaving can
# fail; the loop runs for a fixed number of attempts (and a deadline), so a
# pass does not depend on timing, and on the old daemon the window is hit
# within the first few hundred attempts.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup

chmod 755 "$T_TMP"
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16
mount_fs "$DATA" "$MNT" allow_other,entry_timeout=0,attr_timeout=0
chmod 755 "$MNT"
mkdir "$MNT/shared"
chmod 1777 "$MNT/shared"

checking "an unprivileged O_CREAT|O_RDWR|O_TRUNC never opens a root file that appeared meanwhile"
run "$PY" - "$DATA/shared" "$MNT/shared" <<'EOF'
import errno, os, sys, time
data, mnt = sys.argv[1], sys.argv[2]
name = "victim"
secret = b"root secret: must never be truncated or read by the user\n"
ATTEMPTS, DEADLINE = 20000, time.monotonic() + 20
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    # the unprivileged user, through the mount
    os.close(r)
    os.umask(0o022)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    bad = ""
    got_own = denied = 0
    for i in range(ATTEMPTS):
        if time.monotonic() > DEADLINE:
            break
        try:
            fd = os.open(os.path.join(mnt, name), os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EEXIST, errno.ENOENT, errno.EPERM):
                denied += 1
                continue
            bad = "attempt %d: unexpected error %s" % (i, e)
            break
        st = os.fstat(fd)
        if st.st_uid != 65534 or st.st_mode & 0o777 != 0o644:
            bad = "attempt %d: the user opened a file owned by uid %d (mode %o) read-write" % (i, st.st_uid, st.st_mode)
            os.close(fd)
            break
        got_own += 1
        os.close(fd)
    os.write(w, ("%s|%d|%d" % (bad, got_own, denied)).encode())
    os._exit(0)
os.close(w)
# root, in the data directory: the file keeps appearing, 0600 root
made = 0
violations = []
path = os.path.join(data, name)
while True:
    done, _ = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    try:
        st = os.lstat(path)
        if st.st_uid == 0 and st.st_mode & 0o777 == 0o600:  # root's, not the user's 0644
            with open(path, "rb") as f:
                if f.read() != secret:
                    violations.append("root's file was truncated or changed")
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        continue  # the user's create won this round
    os.write(fd, secret)
    os.close(fd)
    made += 1
msg = os.read(r, 4096).decode()
if msg.count("|") != 2:
    print("the user process reported: %r" % msg)
    sys.exit(1)
bad, own, denied = msg.split("|")
if os.path.exists(path) and os.lstat(path).st_uid == 0 and os.lstat(path).st_mode & 0o777 == 0o600:
    with open(path, "rb") as f:
        if f.read() != secret:
            violations.append("root's file was truncated or changed")
print("root made the file %d times; the user created its own %s times, was refused %s times" % (made, own, denied))
if bad:
    violations.append(bad)
if violations:
    print("VIOLATION: " + "; ".join(violations[:3]))
    sys.exit(1)
EOF
cat "$T_OUT"
assert_rc 0 "the race between a user's create and a file appearing in DATADIR ($(cat "$T_OUT" "$T_ERR"))"

checking "without the race: a user opening an existing file it may write gets it, one it may not is refused"
echo "the user's data" >"$MNT/shared/ownfile"
chown 65534:65534 "$DATA/shared/ownfile"
run setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "echo more >>'$MNT/shared/ownfile'"
assert_rc 0 "the user appends to its own file"
echo "root only" >"$MNT/shared/rootonly"
chmod 600 "$MNT/shared/rootonly"
run setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "echo x >'$MNT/shared/rootonly'"
assert_rc_nonzero "the user truncates root's 0600 file"
assert_eq "$(cat "$MNT/shared/rootonly")" "root only" "root's file after the refused open"
umount_fs "$MNT"
finish
