#!/bin/bash
# One user cannot exhaust the daemon's descriptors (issue #10 item 8).
#
# The daemon runs with a descriptor limit of 1024 (hard and soft).  An
# unprivileged user opens files through the mount and keeps them open until
# an open fails: it must fail with EMFILE or ENFILE (never EIO) at the
# per-user bound (a quarter of the limit, 256), long before the daemon runs
# out; meanwhile root creates, writes and reads files through the mount.
# The daemon's descriptors stay within one per open file.  When the user
# lets go, it can open again.  A lower bound (max_open_per_user=) is honoured.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd prlimit
integ_setup
ulimit -n 1024 || fail "cannot set the descriptor limit to 1024"

chmod 755 "$T_TMP"
X="$T_TMP/x" # the user's notes
mkdir "$X" && chmod 1777 "$X"
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16
mount_fs "$DATA" "$MNT" allow_other
[ "$(prlimit --pid "$LAST_PID" --nofile -o HARD --noheadings | tr -d " ")" = 1024 ] ||
	fail "the daemon's descriptor limit is not 1024: $(prlimit --pid "$LAST_PID" --nofile)"
chmod 755 "$MNT"
mkdir "$MNT/pub"
chmod 1777 "$MNT/pub"
N=900
for i in $(seq 1 $N); do echo "file $i" >"$MNT/pub/f$i"; done
chmod 644 "$MNT/pub"/f*

# hold_files: the user opens pub/f1..fN and holds them; prints how many it
# got and the errno that stopped it, then waits for $T_TMP/go-<tag> to
# close them all
cat >"$T_TMP/hold.py" <<'EOF'
import errno, os, sys, time
mnt, n, tag, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
fds, err = [], "none"
for i in range(1, n + 1):
    try:
        fds.append(os.open("%s/pub/f%d" % (mnt, i), os.O_RDONLY))
    except OSError as e:
        err = errno.errorcode.get(e.errno, str(e.errno))
        break
with open("%s/held-%s" % (tmp, tag), "w") as f:
    f.write("%d %s\n" % (len(fds), err))
deadline = time.monotonic() + 120
while not os.path.exists("%s/go-%s" % (tmp, tag)) and time.monotonic() < deadline:
    time.sleep(0.05)
for fd in fds:
    os.close(fd)
EOF
# wait_file FILE: wait (60 s at most) until FILE exists
wait_file() { wait_until 60 "timed out waiting for $1" test -s "$1"; }
daemon_fds() { ls "/proc/$LAST_PID/fd" | wc -l; }

checking "a user holding open files is stopped at the per-user bound with EMFILE/ENFILE, not EIO"
fds0=$(daemon_fds)
"$PY" "$T_TMP/hold.py" "$MNT" "$N" a "$X" &
HOLDER=$!
bg_register $HOLDER
wait_file "$X/held-a"
read -r got err <"$X/held-a"
echo "the user got $got open files, then $err; the daemon had $fds0 fds before, $(daemon_fds) now"
case "$err" in
EMFILE | ENFILE) ;;
*) fail "the user's open failed with $err after $got files (expected EMFILE or ENFILE at the per-user bound)" ;;
esac
[ "$got" -ge 200 ] && [ "$got" -le 256 ] || fail "the user got $got open files (expected the per-user bound, 256)"
# every held file is one descriptor of the daemon: no two fds on one file
dups=$(find "/proc/$LAST_PID/fd" -mindepth 1 -printf '%l\n' 2>/dev/null | grep '/pub/f' | sort | uniq -d | wc -l)
[ "$dups" -le 2 ] || fail "the daemon holds two descriptors each for $dups of the user's $got open files"

checking "root keeps creating, writing and reading files through the mount meanwhile"
mkdir "$MNT/rootdir" || fail "root's mkdir"
for i in $(seq 1 100); do
	echo "root $i" >"$MNT/rootdir/r$i" || fail "root's create of r$i failed while the user holds $got files"
done
exec 7<"$MNT/rootdir/r1" || fail "root's open"
for i in $(seq 1 100); do
	assert_eq "$(cat "$MNT/rootdir/r$i")" "root $i" "root reads r$i"
done
exec 7<&-
assert_eq "$(cat "$MNT/pub/f$N")" "file $N" "root reads a file the user could not open"
touch "$X/go-a"
wait $HOLDER
bg_forget $HOLDER

checking "after the user let go, it can open files again; a lower max_open_per_user is honoured"
umount_fs "$MNT"
mount_fs "$DATA" "$MNT" allow_other,max_open_per_user=50
"$PY" "$T_TMP/hold.py" "$MNT" "$N" b "$X" &
HOLDER=$!
bg_register $HOLDER
wait_file "$X/held-b"
read -r got err <"$X/held-b"
assert_eq "$got $err" "50 EMFILE" "open files of the user with max_open_per_user=50"
touch "$X/go-b"
wait $HOLDER
bg_forget $HOLDER
"$PY" "$T_TMP/hold.py" "$MNT" 40 c "$X" &
HOLDER=$!
bg_register $HOLDER
wait_file "$X/held-c"
read -r got err <"$X/held-c"
assert_eq "$got $err" "40 none" "the user opens again after closing"
touch "$X/go-c"
wait $HOLDER
bg_forget $HOLDER
umount_fs "$MNT"
finish
