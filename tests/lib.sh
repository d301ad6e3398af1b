# rekeyfs shell test helpers.  Source from a test script:
#
#   . "${TEST_SRCDIR:-$(dirname "$0")/..}/lib.sh"
#
# Tests run with bash and `set -u`; binaries are found on PATH (make check
# puts the build directory first) and TEST_SRCDIR / TOP_BUILDDIR are exported
# by the Makefile.  Exit status: 0 pass, 1 fail, 77 skip (automake).

# ---- reporting -------------------------------------------------------------
T_NAME="$(basename "$0")"
T_CHECKS=0

# fail MSG...: print the failure (and any captured output) and exit 1.
fail() {
	echo "FAIL: $*" >&2
	if [ -n "${T_OUT:-}" ] && [ -s "$T_OUT" ]; then
		echo "----- stdout of the last command:" >&2
		head -c 4000 "$T_OUT" >&2
	fi
	if [ -n "${T_ERR:-}" ] && [ -s "$T_ERR" ]; then
		echo "----- stderr of the last command:" >&2
		head -c 4000 "$T_ERR" >&2
	fi
	exit 1
}

# skip MSG...: the whole test is skipped (exit 77).
skip() {
	echo "SKIP: $*"
	exit 77
}

# checking MSG...: say what is about to be checked.
checking() {
	T_CHECKS=$((T_CHECKS + 1))
	echo "check $T_CHECKS: $*"
}

# ok MSG...: report a passed check (optional, for detail).
ok() {
	echo "  ok: $*"
}

note() {
	echo "  note: $*"
}

# ---- temporary directory with cleanup -----------------------------------------
# make_tmpdir: create $T_TMP and arrange for it (and registered background
# processes) to be cleaned up on exit.
T_TMP=""
T_BG_PIDS=""
T_CLEANUP_CMDS=""

_t_cleanup() {
	local rc=$?
	local pid
	for pid in $T_BG_PIDS; do
		kill "$pid" 2>/dev/null
	done
	for pid in $T_BG_PIDS; do
		wait "$pid" 2>/dev/null
	done
	if [ -n "$T_CLEANUP_CMDS" ]; then
		eval "$T_CLEANUP_CMDS"
	fi
	if [ -n "$T_TMP" ] && [ -d "$T_TMP" ] && [ -z "${KEEP_TMP:-}" ]; then
		chmod -R u+rwX "$T_TMP" 2>/dev/null
		rm -rf "$T_TMP"
	elif [ -n "$T_TMP" ] && [ -d "$T_TMP" ]; then
		echo "(KEEP_TMP set: kept $T_TMP)" >&2
	fi
	exit "$rc"
}

make_tmpdir() {
	T_TMP="$(mktemp -d "${TMPDIR:-/tmp}/rekeyfs-${T_NAME%.sh}.XXXXXX")" || fail "mktemp -d failed"
	T_OUT="$T_TMP/.out"
	T_ERR="$T_TMP/.err"
	trap _t_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# bg_register PID: kill this background process on exit.
bg_register() {
	T_BG_PIDS="$T_BG_PIDS $1"
}

# bg_forget PID: it has been ended by the test.
bg_forget() {
	local p new=""
	for p in $T_BG_PIDS; do
		[ "$p" = "$1" ] || new="$new $p"
	done
	T_BG_PIDS="$new"
}

# at_exit CMD: run CMD (a shell string) on exit, before the temp dir goes.
at_exit() {
	T_CLEANUP_CMDS="$T_CLEANUP_CMDS
$1"
}

# ---- running commands -----------------------------------------------------------
# run CMD ARGS...: run a command, stdout to $T_OUT, stderr to $T_ERR, exit
# status in $RC.  Never fails by itself.
RC=0
# When T_ALL is set, every run's output is also appended to it (tests grep
# it at the end, e.g. for key material that must never be printed).
run() {
	# (the outer redirection silences bash's "Killed" report for crash tests)
	{ "$@" >"$T_OUT" 2>"$T_ERR"; } 2>/dev/null
	RC=$?
	_t_collect
	return 0
}

_t_collect() {
	if [ -n "${T_ALL:-}" ]; then
		cat "$T_OUT" "$T_ERR" >>"$T_ALL" 2>/dev/null
	fi
}

# run_env VAR=VALUE... -- CMD ARGS...: like run, with extra environment.
run_env() {
	local envs=()
	while [ $# -gt 0 ] && [ "$1" != "--" ]; do
		envs+=("$1")
		shift
	done
	shift
	{ env "${envs[@]}" "$@" >"$T_OUT" 2>"$T_ERR"; } 2>/dev/null
	RC=$?
	_t_collect
	return 0
}

# ---- assertions -------------------------------------------------------------------
# assert_rc EXPECTED MSG: the last run's exit status.
assert_rc() {
	[ "$RC" -eq "$1" ] || fail "$2: exit status $RC, expected $1"
}

# assert_rc_nonzero MSG
assert_rc_nonzero() {
	[ "$RC" -ne 0 ] || fail "$1: exit status 0, expected a failure"
}

# assert_eq ACTUAL EXPECTED MSG
assert_eq() {
	[ "$1" = "$2" ] || fail "$3: got '$1', expected '$2'"
}

# assert_ne ACTUAL UNEXPECTED MSG
assert_ne() {
	[ "$1" != "$2" ] || fail "$3: got '$1'"
}

# assert_out_has PATTERN MSG / assert_err_has PATTERN MSG: grep -E in the
# last run's stdout / stderr.
assert_out_has() {
	grep -Eq -- "$1" "$T_OUT" || fail "$2: stdout does not match /$1/"
}
assert_err_has() {
	grep -Eq -- "$1" "$T_ERR" || fail "$2: stderr does not match /$1/"
}
assert_err_lacks() {
	if grep -Eq -- "$1" "$T_ERR"; then fail "$2: stderr matches /$1/"; fi
}

# assert_file_has FILE PATTERN MSG
assert_file_has() {
	grep -Eq -- "$2" "$1" || fail "$3: $1 does not match /$2/"
}

# assert_same FILE1 FILE2 MSG: byte-identical.
assert_same() {
	cmp -s -- "$1" "$2" || fail "$3: $1 and $2 differ ($(cmp -- "$1" "$2" 2>&1 | head -1))"
}

assert_exists() {
	[ -e "$1" ] || fail "$2: $1 does not exist"
}
assert_not_exists() {
	[ ! -e "$1" ] || fail "$2: $1 exists"
}

# ---- environment --------------------------------------------------------------------
# need_root: skip (77) unless root; under CI=true a missing privilege is a failure.
need_root() {
	if [ "$(id -u)" -ne 0 ]; then
		if [ "${CI:-}" = "true" ]; then
			fail "this test needs root (CI=true: not skipping)"
		fi
		skip "this test needs root"
	fi
}

# need_cmd CMD...: skip (77) when a tool is missing (fail under CI=true).
need_cmd() {
	local c
	for c in "$@"; do
		if ! command -v "$c" >/dev/null 2>&1; then
			if [ "${CI:-}" = "true" ]; then
				fail "required tool '$c' is not installed (CI=true: not skipping)"
			fi
			skip "required tool '$c' is not installed"
		fi
	done
}

# need_rekeyctl: rekeyctl is on PATH (fail otherwise: the build is missing)
need_rekeyctl() {
	command -v rekeyctl >/dev/null 2>&1 ||
		fail "rekeyctl is not on PATH (run through make check, or put the build directory first on PATH)"
}

# is_chunk_file FILE: true when FILE starts with the chunk-file magic
# (89 52 4B 46 53 0D 0A 1A).
is_chunk_file() {
	[ "$(head -c 8 -- "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = "89524b46530d0a1a" ]
}

# flip_byte FILE OFFSET: invert every bit of the byte at OFFSET, in place.
flip_byte() {
	local v
	v=$(od -An -tu1 -j "$2" -N 1 -- "$1" | tr -d ' \n')
	[ -n "$v" ] || fail "flip_byte: $1 has no byte at offset $2"
	printf "$(printf '\\%03o' $((255 - v)))" | dd of="$1" bs=1 seek="$2" count=1 conv=notrunc status=none ||
		fail "flip_byte: cannot write $1"
}

# make_text FILE BYTES [SEED]: compressible, database-like text rows.
make_text() {
	local seed="${3:-1}"
	awk -v seed="$seed" -v n="$2" 'BEGIN {
		split("alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima", w, " ");
		total = 0;
		for (i = 0; total < n; i++) {
			v = (i * 7919 + seed * 104729) % 1000003;
			line = sprintf("row %07d value %07d %s %s\n", i, v, w[v % 12 + 1], w[int(v / 12) % 12 + 1]);
			printf "%s", line;
			total += length(line);
		}
	}' | head -c "$2" >"$1"
}

# make_random FILE BYTES: incompressible bytes.
make_random() {
	head -c "$2" /dev/urandom >"$1"
}

# ---- JSON ------------------------------------------------------------------
# json_get FILE EXPR: evaluate the python expression EXPR on the JSON document
# in FILE (as d); strings print as they are, anything else as JSON (true,
# null, [..], {..}).
json_get() {
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); r=eval(sys.argv[2]); print(r if isinstance(r, str) else json.dumps(r))' "$1" "$2"
}

# ---- waiting ---------------------------------------------------------------
# wait_until SECS MSG CMD...: run CMD every 0.2 s until it succeeds; fail with
# MSG when SECS seconds pass first.  CMD may set WAIT_WHY to the state it saw
# (added to the failure message).
wait_until() {
	local secs="$1" msg="$2" deadline=$((SECONDS + $1))
	shift 2
	WAIT_WHY=
	until "$@"; do
		[ $SECONDS -lt $deadline ] || fail "$msg${WAIT_WHY:+: $WAIT_WHY}"
		sleep 0.2
	done
}
