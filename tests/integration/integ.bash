# Shared helpers of the FUSE integration tests (sourced by
# tests/integration/test_*.sh; not a test itself).
#
#   . "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
#
# Provides lib.sh (fail, assert_*, make_tmpdir, ...), the rkfx_* functions of
# scripts/rekeyfs-fixture and:
#   need_fuse            root, /dev/fuse, fusermount3 (skip, or fail when CI=true)
#   integ_setup          temp dir, unmount-at-exit, key directory $KEYS with key1, key2
#   mount_fs D M [OPTS]  mount (fails the test when it does not come up)
#   umount_fs M          unmount; fails the test when the daemon did not exit 0
#   known_bug MSG        report a known daemon bug: the test goes on and FAILS at finish
#   check_failed MSG     a failed check that lets the test go on; FAILS at finish
#   finish               exit 1 if known_bug or check_failed was called, else 0
#   drop_caches          write back and forget every cached page (global)
#   evict [DIR]          write back and drop the cached pages of DIR's files ($MNT)
#   status [MNT]         rekeyctl status --json of MNT ($MNT, else $M) to $T_TMP/status.json
#   sget EXPR            json_get on $T_TMP/status.json
#   scan [ARGS]          rkscan.py ARGS of $DATA to $T_TMP/scan.json
#   scget EXPR           json_get on $T_TMP/scan.json
#   wait_idle SECS [WHAT] poll status until no sweep runs or is queued (fail after SECS)
#   wait_sweep SECS N [WHAT] poll status until sweep N ended (finished_sweep >= N)
#   status_get EXPR      EXPR on the walker object w of $M/.rekeyfs/status
#                        (under timeout -s KILL $STATUS_TIMEOUT when set)
#   ctl CMD              one command on $M/.rekeyfs/control; prints the reply
#   seeded_random FILE BYTES TAG  reproducible incompressible bytes ($SEED:TAG)

T_INTEG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${TEST_SRCDIR:=$(cd "$T_INTEG_DIR/.." && pwd)}"
export TEST_SRCDIR
# shellcheck source=../lib.sh
. "$TEST_SRCDIR/lib.sh"
FIXTURE="$(cd "$TEST_SRCDIR/../scripts" && pwd)/rekeyfs-fixture"
# shellcheck source=../../scripts/rekeyfs-fixture
. "$FIXTURE"

PY="$(command -v python3 || true)"
T_KNOWN_BUGS=0

need_fuse() {
	need_root
	if [ ! -c /dev/fuse ]; then
		if [ "${CI:-}" = "true" ]; then
			fail "/dev/fuse is missing (CI=true: not skipping)"
		fi
		skip "/dev/fuse is missing"
	fi
	need_cmd fusermount3 findmnt mountpoint rekeyfs rekeyctl python3
}

integ_setup() {
	make_tmpdir
	at_exit 'rkfx_umount_all'
	KEYS="$T_TMP/keys"
	run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 key1
	assert_rc 0 "createkey key1"
	run rekeyctl createkey -d "$KEYS" ChaCha20/Poly1305/NoPadding 256 key2
	assert_rc 0 "createkey key2"
}

# new_datadir DIR [CHUNK_KB] [KEY]: rekeyctl init
new_datadir() {
	mkdir -p "$1" || fail "mkdir $1"
	run rekeyctl init -d "$KEYS" --key "${3:-key1}" --chunk-kb "${2:-64}" "$1"
	assert_rc 0 "rekeyctl init $1"
}

# mount_fs DATADIR MNT [OPTS]: the daemon's log goes to $T_TMP/daemon.N.log
# ($LAST_LOG); $LAST_PID is its pid.
T_MOUNTS=0
mount_fs() {
	T_MOUNTS=$((T_MOUNTS + 1))
	LAST_LOG="$T_TMP/daemon.$T_MOUNTS.log"
	mkdir -p "$2"
	rkfx_mount "$1" "$2" "$KEYS" "${3:-}" "$LAST_LOG" || fail "cannot mount $1 on $2 (log above)"
	LAST_PID=$RKFX_LAST_PID
}

umount_fs() {
	rkfx_umount "$1"
	local rc=$?
	[ $rc -eq 0 ] || fail "unmounting $1: the daemon did not end cleanly (status $rc, log above)"
}

# crashed_at POINT: wait (30 s at most) for the daemon $LAST_PID, mounted
# with REKEYFS_CRASHPOINT=POINT, to die there; then drop its mount at $MNT.
_daemon_gone() { ! kill -0 "$DPID" 2>/dev/null || [ "$(ps -o stat= -p "$DPID" 2>/dev/null | cut -c1)" = Z ]; }
crashed_at() {
	DPID=$LAST_PID
	wait_until 30 "the crash point $1 was not reached" _daemon_gone
	RKFX_QUIET=1 rkfx_umount "$MNT" >/dev/null 2>&1
	if rkfx_is_mounted "$MNT"; then fusermount3 -u -z "$MNT" 2>/dev/null; fi
}

known_bug() {
	T_KNOWN_BUGS=$((T_KNOWN_BUGS + 1))
	echo "KNOWN BUG: $*" >&2
}

# check_failed MSG: a failed check that does not stop the test (it goes on
# and fails at finish)
T_LATE_FAILS=0
check_failed() {
	T_LATE_FAILS=$((T_LATE_FAILS + 1))
	echo "FAIL (test goes on): $*" >&2
}

finish() {
	if [ "$T_KNOWN_BUGS" -gt 0 ] || [ "$T_LATE_FAILS" -gt 0 ]; then
		echo "FAIL: $T_KNOWN_BUGS known daemon bug(s) and $T_LATE_FAILS failed check(s) reported above" >&2
		exit 1
	fi
	echo "PASS: $T_NAME ($T_CHECKS checks)"
	exit 0
}

# drop_caches: write back and forget cached pages, so the next reads come
# from the daemon (FUSE keeps file pages cached: keep_cache)
drop_caches() {
	sync
	echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
}

# evict [DIR]: write back and drop the kernel's cached pages of every file of
# the mount (fsync + POSIX_FADV_DONTNEED per file, no global sync), so that the
# next reads reach the daemon
evict() {
	python3 - "${1:-$MNT}" <<'PYEOF'
import os, sys
for dp, dn, fn in os.walk(sys.argv[1]):
    dn[:] = [d for d in dn if d != ".rekeyfs"]
    for f in fn:
        fd = os.open(os.path.join(dp, f), os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            pass
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PYEOF
}

# ---- daemon status and control ------------------------------------------------
# status [MNT]: the daemon's status JSON (rekeyctl status --json) to
# $T_TMP/status.json; fails the test when the command fails or prints invalid JSON
status() {
	local m="${1:-${MNT:-$M}}"
	rekeyctl status --json "$m" >"$T_TMP/status.json" 2>"$T_TMP/status.err" ||
		fail "rekeyctl status --json $m failed: $(cat "$T_TMP/status.err")"
	python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$T_TMP/status.json" 2>/dev/null ||
		fail "rekeyctl status --json printed invalid JSON: $(head -c 2000 "$T_TMP/status.json")"
}
sget() { json_get "$T_TMP/status.json" "$1"; }

# wait_idle SECS [WHAT]: poll status until no sweep runs or waits (walker
# state idle, finished or incomplete, nothing queued)
_walker_idle() {
	status
	WAIT_WHY=$(cat "$T_TMP/status.json")
	[ "$(sget 'd["walker"]["state"] in ("idle", "finished", "incomplete") and d["walker"]["queued"] == []')" = true ]
}
wait_idle() {
	wait_until "$1" "${2:+$2: }the sweep did not finish within $1 s" _walker_idle
}
# wait_sweep SECS N [WHAT]: poll status until sweep N ended (finished_sweep >= N)
_walker_swept() {
	status
	WAIT_WHY=$(cat "$T_TMP/status.json")
	[ "$(sget '(d["walker"]["finished_sweep"] or 0) >= '"$WAIT_SWEEP")" = true ]
}
wait_sweep() {
	WAIT_SWEEP=$2
	wait_until "$1" "${3:+$3: }sweep $2 did not end within $1 s" _walker_swept
}

# status_get EXPR: EXPR on the walker object (w) of the mount's status file
# $M/.rekeyfs/status, read directly (no rekeyctl)
status_get() {
	${STATUS_TIMEOUT:+timeout -s KILL "$STATUS_TIMEOUT"} python3 -c \
		'import json,sys; w=json.load(open(sys.argv[1]))["walker"]; print(eval(sys.argv[2]))' \
		"$M/.rekeyfs/status" "$1"
}

# ctl CMD: send one command to $M/.rekeyfs/control and print the reply
ctl() { exec 3<>"$M/.rekeyfs/control"; printf '%s\n' "$1" >&3; cat <&3; exec 3>&-; }

# ---- offline scans ---------------------------------------------------------------
RKSCAN="$T_INTEG_DIR/rkscan.py"
# scan [ARGS]: rkscan.py (an independent deep scan) of $DATA to $T_TMP/scan.json
scan() {
	python3 "$RKSCAN" "$@" "$DATA" >"$T_TMP/scan.json" 2>"$T_TMP/scan.err" || fail "rkscan failed: $(cat "$T_TMP/scan.err")"
}
scget() { json_get "$T_TMP/scan.json" "$1"; }

# seeded_random FILE BYTES TAG: incompressible, reproducible bytes
seeded_random() {
	python3 -c 'import random,sys; sys.stdout.buffer.write(random.Random(sys.argv[2]).randbytes(int(sys.argv[1])))' "$2" "$SEED:$3" >"$1"
}
