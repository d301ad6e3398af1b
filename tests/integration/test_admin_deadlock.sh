#!/bin/bash
# Admin commands during a sweep never hang the mount (issue #10, item 6).
# The walker's whole-file commit holds an inode's lock and then takes the
# inode table lock; the control fsck's (and a successful release's) walk over
# the open files used to hold the table lock and take each inode's lock: a
# lock-order inversion that hung every later lookup.  Here: ~3,000 small files
# under an old key with 4 KiB chunks, sweeps running (several rounds, key1 ->
# key2 -> key1 ...), and meanwhile a loop of `rekeyctl fsck MOUNT`,
# `rekeyctl release-key` attempts (refused: chunks remain) and lookups/stats
# through the mount.  Every operation has a deadline; one that does not finish
# in time fails the test (the mount is then detached and the daemon killed).
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
# The unmount cleans the headers of the 3,000 files closed with dirty counts
# (a recount and an fsync each): work in proportion to the files, which a
# loaded or sanitizer build may need more than the fixture's default 20 s for.
# A daemon that never exits still fails, only later.
export RKFX_TIMEOUT="${RKFX_TIMEOUT:-180}"
need_cmd timeout python3
integ_setup
D="$T_TMP/data"
M="$T_TMP/mnt"
NFILES=${NFILES:-3000}
OP_DEADLINE=${OP_DEADLINE:-60}  # seconds for any single operation
ROUNDS=${ROUNDS:-2}

STATUS_TIMEOUT=$OP_DEADLINE # status_get (integ.bash) is killed after it
hung() { # MSG: the mount is stuck; tear it down forcibly and fail
	echo "HUNG: $*" >&2
	echo "--- daemon threads:" >&2
	for t in /proc/"$LAST_PID"/task/*; do
		echo "$(cat "$t/comm" 2>/dev/null) $(cat "$t/wchan" 2>/dev/null)" >&2
	done
	fusermount3 -uz "$M" 2>/dev/null || umount -l "$M" 2>/dev/null
	kill -9 "$LAST_PID" 2>/dev/null
	RKFX_PIDS=()
	fail "$* did not finish within ${OP_DEADLINE}s: the daemon is deadlocked"
}
op() { # DESC CMD...: run CMD with the deadline; its status is in $OP_RC
	timeout -s KILL "$OP_DEADLINE" "${@:2}" >"$T_TMP/op.out" 2>&1
	OP_RC=$?
	[ $OP_RC -eq 137 ] && hung "$1"
	return 0
}

checking "set up: $NFILES small files (2 chunks of 4 KiB each) under key1"
new_datadir "$D" 4 key1
mount_fs "$D" "$M" "walker=off"
python3 - "$M" "$NFILES" <<'PY' || fail "cannot create the files"
import os, sys
m, n = sys.argv[1], int(sys.argv[2])
for d in range(10):
    os.mkdir(os.path.join(m, "d%d" % d))
for i in range(n):
    with open(os.path.join(m, "d%d" % (i % 10), "f%05d" % i), "wb") as f:
        f.write((b"%05d" % i) * 1200)
PY
umount_fs "$M"
ok "$NFILES files"

checking "fsck, release-key attempts and lookups while $ROUNDS sweeps rekey every file: nothing hangs"
mount_fs "$D" "$M" "walker_rate=0"
key=key1
fscks=0
released=
for round in $(seq "$ROUNDS"); do
	old=$key
	key=$([ "$key" = key1 ] && echo key2 || echo key1)
	op "alter to $key" rekeyctl alter "$M/" --key "$key"
	[ $OP_RC -eq 0 ] || fail "alter to $key: $(cat "$T_TMP/op.out")"
	op "rekey" rekeyctl rekey "$M"
	[ $OP_RC -eq 0 ] || fail "rekey: $(cat "$T_TMP/op.out")"
	i=0
	deadline=$((SECONDS + 300))
	while :; do
		i=$((i + 1))
		op "rekeyctl fsck (round $round, try $i)" rekeyctl fsck "$M"
		fscks=$((fscks + 1))
		if [ $((OP_RC & 24)) -ne 0 ]; then
			fail "fsck failed (status $OP_RC): $(cat "$T_TMP/op.out")"
		fi
		if [ "$round" = "$ROUNDS" ] && [ $((i % 3)) -eq 0 ] && [ -z "$released" ]; then
			# refused while chunks remain; a release that succeeds visits the
			# open files (the same walk as fsck's).  Last round only: a
			# released key cannot become a target again.
			op "rekeyctl release-key $old (round $round)" rekeyctl release-key -d "$KEYS" "$old" "$M"
			[ $OP_RC -eq 0 ] && released=$old
		fi
		op "stat of a new name" stat "$M/d$((i % 10))/nosuch.$i"
		op "stat of a file" stat "$M/d$((i % 10))/f$(printf %05d $(((i * 37) % NFILES)))"
		st=$(status_get '"queued" if w["queued"] else w["state"]')
		[ $? -eq 137 ] && hung "reading the walker status"
		[ "$st" = finished ] && break
		[ $SECONDS -lt $deadline ] || fail "sweep $round did not finish within 300 s (walker: $st)"
	done
	note "round $round ($old -> $key): $i fsck runs during the sweep"
done
if [ -z "$released" ]; then
	op "rekeyctl release-key $old after the last sweep" rekeyctl release-key -d "$KEYS" "$old" "$M"
	[ $OP_RC -eq 0 ] || fail "release of $old after the sweep: $(cat "$T_TMP/op.out")"
fi
ok "$fscks fsck runs, $ROUNDS sweeps, no operation over ${OP_DEADLINE}s"

checking "the data is intact and every chunk is under $key"
op "read back" python3 - "$M" "$NFILES" <<'PY'
import os, sys
m, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(m, "d%d" % (i % 10), "f%05d" % i), "rb") as f:
        if f.read() != (b"%05d" % i) * 1200:
            sys.exit("f%05d differs" % i)
PY
[ $OP_RC -eq 0 ] || fail "read back: $(cat "$T_TMP/op.out")"
umount_fs "$M"
run rekeyctl fsck --deep -d "$KEYS" "$D"
assert_rc 0 "offline deep fsck: every chunk authenticates and is on target"
ok "intact"
finish
