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
