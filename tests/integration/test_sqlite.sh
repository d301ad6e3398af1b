#!/bin/bash
# SQLite (Debian's sqlite3) on a rekeyfs mount, journal_mode DELETE and WAL:
# a few thousand rows in several transactions (inserts, updates, deletes,
# rollbacks, a savepoint rollback, VACUUM), two concurrent writer processes
# (POSIX locks through the mount; WAL: the -shm file is mmapped), then
# unmount and remount: PRAGMA
# integrity_check says ok, and the row count, sums and the sha3 of the whole
# content equal what was computed before the unmount.  The stored database
# and journal files never show the plaintext.  WAL only: a writer killed
# right after COMMIT leaves an un-checkpointed WAL; after a remount SQLite
# recovers it and the committed rows are there.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd sqlite3
integ_setup

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16
MARK="PLAINTEXT-MARKER-0d9c1e"

# q DB SQL...: run SQL, fail the test on an error
q() {
	local db="$1"
	shift
	sqlite3 -batch -bail -cmd '.timeout 30000' "$db" "$@" 2>"$T_ERR" || fail "sqlite3 $(basename "$db") failed: $(cat "$T_ERR")"
}

# python's sqlite3: a writer that dies right after COMMIT (its WAL is not
# checkpointed) and the same checksum for reading it back
SQLPY="$T_TMP/sql.py"
cat >"$SQLPY" <<'EOF'
import hashlib, os, sqlite3, sys
def digest(c):
    h = hashlib.sha256()
    n = 0
    for row in c.execute("SELECT id, k, n, hex(v) FROM t ORDER BY id"):
        h.update(repr(row).encode())
        n += 1
    return "%d %s" % (n, h.hexdigest())
mode, db = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db, timeout=30, isolation_level=None)
if mode == "crash":
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("BEGIN")
    for i in range(300):
        c.execute("INSERT INTO t(k, n, v) VALUES (?, ?, randomblob(?))", ("crash-%d" % i, i, 50 + i * 13))
    c.execute("UPDATE t SET n = n + 1000 WHERE id % 5 = 1")
    c.execute("COMMIT")
    print(digest(c), flush=True)
    os._exit(0)   # no close: the WAL keeps the committed transaction
print(digest(c))
EOF

# content checksum: count, sums and sha3 of every row in id order
SUMQ="SELECT count(*), sum(n), sum(length(v)), hex(sha3_query('SELECT id, k, n, v FROM t ORDER BY id')) FROM t;"

for mode in DELETE WAL; do
	DB="$MNT/db/test-$mode.db"
	mount_fs "$DATA" "$MNT"
	mkdir -p "$MNT/db"
	checking "journal_mode=$mode: create and fill in transactions, with rollbacks"
	assert_eq "$(q "$DB" "PRAGMA journal_mode=$mode;")" "$(echo "$mode" | tr A-Z a-z)" "journal_mode"
	q "$DB" "PRAGMA cache_size=20;
		CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, n INTEGER, v BLOB);
		CREATE INDEX t_n ON t(n);
		BEGIN;
		WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000)
		INSERT INTO t(k, n, v) SELECT 'key-' || i, i * 7 % 1000, randomblob(100 + (i * 37) % 3000) FROM c;
		COMMIT;
		CREATE TABLE m(v TEXT); INSERT INTO m VALUES ('$MARK');"
	assert_eq "$(q "$DB" "SELECT count(*) FROM t;")" 2000 "rows after the first transaction"
	q "$DB" "PRAGMA cache_size=20;
		BEGIN; UPDATE t SET n = n + 1, v = randomblob(500) WHERE id % 3 = 0; COMMIT;
		BEGIN; DELETE FROM t WHERE id % 10 = 0; UPDATE t SET n = -1; INSERT INTO t(k, n) VALUES ('rolled-back', 1); ROLLBACK;"
	assert_eq "$(q "$DB" "SELECT count(*), sum(n = -1), sum(k = 'rolled-back') FROM t;")" "2000|0|0" "state after ROLLBACK"
	q "$DB" "PRAGMA cache_size=20;
		BEGIN;
		WITH RECURSIVE c(i) AS (SELECT 2001 UNION ALL SELECT i + 1 FROM c WHERE i < 3500)
		INSERT INTO t(k, n, v) SELECT 'key-' || i, i % 13, zeroblob(i % 5000) FROM c;
		DELETE FROM t WHERE id % 7 = 0;
		COMMIT;
		SAVEPOINT sp; DELETE FROM t; ROLLBACK TO sp; RELEASE sp;
		BEGIN; UPDATE t SET v = randomblob(2000) WHERE id % 11 = 0; COMMIT;"
	before_vacuum="$(q "$DB" "$SUMQ")"
	q "$DB" "VACUUM;"
	assert_eq "$(q "$DB" "$SUMQ")" "$before_vacuum" "content after VACUUM"

	checking "journal_mode=$mode: two concurrent writer processes (locks through the mount)"
	rows0="$(q "$DB" "SELECT count(*) FROM t;")"
	for w in 1 2; do
		{
			echo ".timeout 30000"
			for j in $(seq 1 60); do
				echo "BEGIN IMMEDIATE;"
				for r in 1 2 3 4 5; do
					echo "INSERT INTO t(k, n, v) VALUES ('w$w-$j-$r', $w, randomblob(300));"
				done
				echo "COMMIT;"
			done
		} >"$T_TMP/writer$w.sql"
		sqlite3 -batch -bail "$DB" <"$T_TMP/writer$w.sql" >"$T_TMP/writer$w.out" 2>&1 &
		eval "wpid$w=\$!"
	done
	# shellcheck disable=SC2154 # set by the eval above
	wait "$wpid1" || fail "writer 1 failed: $(cat "$T_TMP/writer1.out")"
	# shellcheck disable=SC2154
	wait "$wpid2" || fail "writer 2 failed: $(cat "$T_TMP/writer2.out")"
	assert_eq "$(q "$DB" "SELECT count(*) FROM t;")" "$((rows0 + 600))" "rows after the concurrent writers"
	assert_eq "$(q "$DB" "PRAGMA integrity_check;")" ok "integrity_check before unmount"
	expected="$(q "$DB" "$SUMQ")"
	ok "checksum before unmount: $expected"
	umount_fs "$MNT"

	checking "journal_mode=$mode: the stored files are chunk files without the plaintext"
	for f in "$DATA"/db/test-"$mode".db*; do
		is_chunk_file "$f" || fail "stored $(basename "$f") is not a chunk file"
		if grep -q "$MARK" "$f"; then fail "stored $(basename "$f") contains the plaintext marker"; fi
	done
	run sqlite3 "$DATA/db/test-$mode.db" "SELECT count(*) FROM t;"
	assert_rc_nonzero "sqlite3 on the stored (encrypted) file"

	checking "journal_mode=$mode: after a remount integrity_check is ok and the content is unchanged"
	mount_fs "$DATA" "$MNT"
	assert_eq "$(q "$DB" "PRAGMA integrity_check;")" ok "integrity_check after remount"
	assert_eq "$(q "$DB" "$SUMQ")" "$expected" "checksum after remount"
	assert_eq "$(q "$DB" "SELECT v FROM m;")" "$MARK" "marker row"
	assert_eq "$(q "$DB" "PRAGMA journal_mode;")" "$(echo "$mode" | tr A-Z a-z)" "journal_mode after remount"
	if [ "$mode" = WAL ]; then
		checking "journal_mode=WAL: a writer killed after COMMIT leaves a WAL that is recovered after a remount"
		python3 "$SQLPY" crash "$DB" >"$T_TMP/crash.out" 2>"$T_ERR" || fail "the crashing writer failed: $(cat "$T_ERR")"
		expected_py="$(cat "$T_TMP/crash.out")"
		[ -s "$MNT/db/test-WAL.db-wal" ] || fail "no WAL file left behind by the killed writer"
		umount_fs "$MNT"
		is_chunk_file "$DATA/db/test-WAL.db-wal" || fail "the stored WAL is not a chunk file"
		mount_fs "$DATA" "$MNT"
		assert_eq "$(python3 "$SQLPY" sum "$DB" 2>"$T_ERR")" "$expected_py" "content after WAL recovery"
		assert_eq "$(q "$DB" "PRAGMA integrity_check;")" ok "integrity_check after WAL recovery"
	fi
	umount_fs "$MNT"
done
finish
