#!/bin/bash
# A database at the mount root (issue #12 items 10 and 3): PostgreSQL's data
# directory is a rekeyfs data directory mounted over itself (DATADIR ==
# MOUNTPOINT, -o allow_other,default_permissions, the server runs as user
# postgres):
#   * the mount root lists no .rekeyfs (ls -a, find), so initdb accepts the
#     empty directory; the control directory stays reachable by name
#     (rekeyctl status MOUNT)
#   * the server starts on the mount (unix socket in a temp dir, no TCP),
#     rows are written, pg_basebackup (plain format, outside the mount)
#     succeeds and the backup holds no .rekeyfs, status or control file
#   * recovery after the daemon dies (rekeyfs(8) RECOVERY): kill -9 of the
#     daemon while a writer commits rows one by one; then exactly the
#     documented steps: stop the database, fusermount3 -uz, remount (the
#     journal is replayed), start the database: every row whose commit was
#     acknowledged is there, and the stored files are chunk files.
# Skips (77) without PostgreSQL unless CI=true (scripts/install-deps
# installs Debian's postgresql).
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd runuser pgrep
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ] || ! id postgres >/dev/null 2>&1; then
	[ "${CI:-}" = "true" ] && fail "PostgreSQL is not installed (/usr/lib/postgresql/*/bin, user postgres; CI=true: not skipping)"
	skip "PostgreSQL is not installed (scripts/install-deps installs it)"
fi
integ_setup
chmod 755 "$T_TMP" # user postgres must reach the mount, the socket and the backup

DATA="$T_TMP/pgdata"
SOCK="$T_TMP/sock"
BK="$T_TMP/basebackup"
PGLOG="$T_TMP/pglog"
PORT=$((50000 + $$ % 10000)) # only names the unix socket: no TCP (listen_addresses='')
mkdir -p "$SOCK" "$PGLOG"
chown postgres:postgres "$SOCK" "$PGLOG"
PMPID=""

as_pg() { runuser -u postgres -- "$@"; }
psql_() { as_pg "$PGBIN/psql" -X -q -h "$SOCK" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 -Atc "$1"; }
pg_start() {
	as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$PGLOG/server.log" -w -t 60 \
		-o "-c listen_addresses='' -c unix_socket_directories='$SOCK' -p $PORT -c fsync=on -c synchronous_commit=on -c max_wal_senders=4" \
		start >"$T_OUT" 2>&1 || fail "$1: pg_ctl start failed: $(cat "$T_OUT"); server log: $(tail -n 30 "$PGLOG/server.log")"
	PMPID="$(head -n 1 "$DATA/postmaster.pid")"
}
# the database is stopped before the daemon at exit (a busy mount would
# only be lazily unmounted)
pg_cleanup() {
	[ -n "$PMPID" ] || return 0
	kill -QUIT "$PMPID" 2>/dev/null
	for _ in $(seq 1 100); do kill -0 "$PMPID" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$PMPID" 2>/dev/null
}
T_CLEANUP_CMDS="pg_cleanup
$T_CLEANUP_CMDS"

checking "the data directory mounted over itself lists no .rekeyfs; initdb accepts it"
new_datadir "$DATA" 16
chown postgres:postgres "$DATA"
mount_fs "$DATA" "$DATA" allow_other,default_permissions
assert_eq "$(ls -A "$DATA" | wc -l)" 0 "entries listed in the empty mount root (ls -A: $(ls -A "$DATA" | tr '\n' ' '))"
assert_eq "$(find "$DATA" -mindepth 1 | wc -l)" 0 "entries found by find in the empty mount root"
run rekeyctl status "$DATA"
assert_rc 0 "rekeyctl status on the mount: .rekeyfs is reachable by name ($(cat "$T_ERR"))"
run as_pg "$PGBIN/initdb" -N -A trust -U postgres -D "$DATA"
assert_rc 0 "initdb on the mount root: $(tail -n 5 "$T_ERR")"
is_chunk_file "$DATA/PG_VERSION" && fail "PG_VERSION through the mount reads as a chunk file"
ok "initdb: $(grep -m1 'Success' "$T_OUT" | head -c 120)"

checking "the server runs on the mount; rows are written"
pg_start "first start"
psql_ "CREATE TABLE t(id int PRIMARY KEY, v text); INSERT INTO t SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 20000) i;" ||
	fail "psql insert failed"
assert_eq "$(psql_ 'SELECT count(*) FROM t')" 20000 "rows in t"

checking "pg_basebackup (plain, outside the mount) succeeds and holds no .rekeyfs, status or control file"
mkdir -p "$BK" && chown postgres:postgres "$BK" && chmod 700 "$BK"
run as_pg "$PGBIN/pg_basebackup" -h "$SOCK" -p "$PORT" -U postgres -D "$BK" -Fp -X fetch -c fast
assert_rc 0 "pg_basebackup: $(tail -n 5 "$T_ERR")"
find "$BK" \( -name '.rekeyfs*' -o -name status -o -name control \) >"$T_OUT"
[ -s "$T_OUT" ] && fail "the base backup holds daemon files: $(head -n 5 "$T_OUT" | tr '\n' ' ')"
grep -rlq '"walker"' "$BK" 2>/dev/null && fail "a file of the base backup holds the daemon's status JSON"
[ -f "$BK/PG_VERSION" ] && [ -f "$BK/backup_label" ] || fail "the base backup lacks PG_VERSION or backup_label: $(ls "$BK" | tr '\n' ' ')"
ok "base backup: $(du -sk "$BK" | cut -f1) KiB, $(find "$BK" -type f | wc -l) files"

checking "kill -9 of the daemon under a committing writer, then the RECOVERY steps of rekeyfs(8)"
ACK="$T_TMP/acked"
: >"$ACK"
(
	i=0
	while [ $i -lt 100000 ]; do
		i=$((i + 1))
		timeout -s KILL 10 runuser -u postgres -- "$PGBIN/psql" -X -q -h "$SOCK" -p "$PORT" -d postgres \
			-v ON_ERROR_STOP=1 -Atc "INSERT INTO t VALUES ($((100000 + i)), 'row $i')" >/dev/null 2>&1 || exit 0
		echo "$((100000 + i))" >>"$ACK"
	done
) &
WPID=$!
bg_register "$WPID"
wait_until 20 "the writer acknowledged no 30 rows" sh -c "[ \$(wc -l <'$ACK') -ge 30 ]"
PGKIDS="$(pgrep -P "$PMPID" | tr '\n' ' ')"
kill -KILL "$LAST_PID"
wait "$LAST_PID" 2>/dev/null
# the writer stops at its first failed commit
# (our child: a zombie until waited for)
gone() { local st; st="$(ps -o stat= -p "$1" 2>/dev/null)"; [ -z "$st" ] || [ "${st:0:1}" = Z ]; }
wait_until 30 "the writer did not stop after the daemon died" gone "$WPID"
wait "$WPID" 2>/dev/null
bg_forget "$WPID"
NACK=$(wc -l <"$ACK")
ok "$NACK commits acknowledged before the daemon died"
# 1. stop the database (the data directory answers ENOTCONN: pg_ctl cannot
#    read postmaster.pid, so signal the postmaster: immediate shutdown)
kill -QUIT "$PMPID" 2>/dev/null
wait_until 20 "the postmaster $PMPID did not exit after SIGQUIT" sh -c "! kill -0 $PMPID 2>/dev/null"
for p in $PGKIDS; do
	wait_until 20 "postgres process $p did not exit" sh -c "! kill -0 $p 2>/dev/null"
done
PMPID=""
# 2. detach the dead mount
fusermount3 -uz "$DATA" || fail "fusermount3 -uz $DATA"
# (the test's own bookkeeping of the dead daemon)
rkfx_forget "$(realpath "$DATA")"
# 3. remount: the daemon replays the journal
mount_fs "$DATA" "$DATA" allow_other,default_permissions
# 4. start the database: its own crash recovery runs
pg_start "start after the daemon died"
psql_ "SELECT id FROM t WHERE id > 100000" | sort -n >"$T_TMP/have" || fail "select after recovery"
comm -23 <(sort -n "$ACK") "$T_TMP/have" >"$T_TMP/lost"
[ -s "$T_TMP/lost" ] && fail "$(wc -l <"$T_TMP/lost") acknowledged row(s) are missing after recovery (of $NACK): $(head -n 5 "$T_TMP/lost" | tr '\n' ' ')"
assert_eq "$(psql_ 'SELECT count(*) FROM t WHERE id <= 20000')" 20000 "rows of the first load after recovery"
grep -q "database system was interrupted\|database system was not properly shut down\|redo done" "$PGLOG/server.log" ||
	note "the server log does not mention crash recovery"
ok "all $NACK acknowledged commits are there ($(wc -l <"$T_TMP/have") rows after the kill)"

checking "the database stops cleanly; the stored files are chunk files"
as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >"$T_OUT" 2>&1 || fail "pg_ctl stop: $(cat "$T_OUT")"
PMPID=""
umount_fs "$DATA"
is_chunk_file "$DATA/PG_VERSION" || fail "the stored PG_VERSION is not a chunk file"
finish
