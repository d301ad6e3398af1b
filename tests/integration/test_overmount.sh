#!/bin/bash
# Mount a data directory over itself (rekeyfs DATADIR DATADIR), the way a
# database keeps its configured path.  The data directory comes from
# `rekeyfs-fixture build` (chunks under two keys, a plain legacy file), and
# the first mount goes through `rekeyfs-fixture run` (so this also tests the
# fixture).  Through the over-mount every file reads as its plaintext,
# written files and a SQLite database are chunk files once unmounted, the
# database keeps its path and content across remounts, and the real
# .rekeyfs never shows.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd sqlite3 sha256sum
integ_setup

FX="$T_TMP/fx"
checking "rekeyfs-fixture build makes a data directory with chunks under two keys"
run "$FIXTURE" build "$FX" --files 8 --keys 2 --chunk-kb 16 --seed 7
assert_rc 0 "rekeyfs-fixture build"
DATA="$FX/data"
KEYS="$FX/keys" # mount_fs uses $KEYS
[ "$(stat -c %a "$FX/keys/key1")" = 600 ] || fail "fixture key file mode is not 600"
# shellcheck source=/dev/null
. "$FX/fixture.conf"
[ -n "$FIXTURE_MIXED" ] || fail "the fixture has no file with chunks under two keys"
run rekeyctl keys -d "$KEYS" "$DATA"
assert_rc 0 "rekeyctl keys on the fixture"
for k in key1 key2; do
	grep -E "^$k " "$T_OUT" | awk '{exit !($(NF-2) > 0)}' || fail "$k holds no chunks in the fixture: $(cat "$T_OUT")"
done
# keys with chunks in a stored file, from its header (see man/rekeyfs.5:
# key table at 64 + 96*j: name[64], ..., flags at 81 (bit 0 in use), count at 88)
header_keys() {
	python3 - "$1" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read(8192)
best = max((d[:4096], d[4096:]), key=lambda h: struct.unpack_from("<Q", h, 16)[0])
out = []
for j in range(16):
    e = best[64 + 96 * j: 64 + 96 * (j + 1)]
    if e[81] & 1 and struct.unpack_from("<Q", e, 88)[0] > 0:
        out.append(e[:64].rstrip(b"\0").decode())
print(" ".join(sorted(out)))
EOF
}
for f in $FIXTURE_MIXED; do
	assert_eq "$(header_keys "$DATA/$f")" "key1 key2" "keys with chunks in the fixture's mixed file $f"
done
run "$FIXTURE" verify --offline "$FX"
assert_rc 0 "rekeyfs-fixture verify --offline"
REAL="$(realpath "$DATA")"

checking "over-mount with rekeyfs-fixture run: plaintext through DATADIR, new files, a database"
cat >"$T_TMP/phase1.sh" <<EOF
set -eu
M="\$REKEYFS_MNT"
[ "\$(findmnt -rn -o FSTYPE --mountpoint "$REAL" | tail -n 1)" = fuse.rekeyfs ] || { echo "DATADIR is not covered by rekeyfs"; exit 1; }
cd "\$M"
sha256sum -c --quiet "$FX/manifest.sha256"
[ "\$(ls -a .rekeyfs | LC_ALL=C sort | tr '\n' ' ')" = ". .. control metrics status " ] || { echo "wrong .rekeyfs: \$(ls -a .rekeyfs)"; exit 1; }
python3 -c 'import json,sys; d=json.load(open(".rekeyfs/status")); sys.exit(d["datadir"] != sys.argv[1])' "$REAL" || { echo "status datadir"; exit 1; }
head -c 100000 /dev/urandom >"$T_TMP/new.expected"
cp "$T_TMP/new.expected" new.bin
mkdir -p db
sqlite3 -batch -bail db/app.db "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);
  WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000)
  INSERT INTO kv SELECT i, 'value-' || i || '-' || hex(randomblob(20)) FROM c;"
sqlite3 -batch db/app.db "SELECT count(*), hex(sha3_query('SELECT * FROM kv')) FROM kv;" >"$T_TMP/db.sum"
cmp new.bin "$T_TMP/new.expected"
cat ks1/t2/mixed.dat >/dev/null
EOF
run "$FIXTURE" run --writable --keydir "$KEYS" --log "$T_TMP/run.log" "$DATA" "$DATA" -- bash "$T_TMP/phase1.sh"
assert_rc 0 "rekeyfs-fixture run over DATADIR (log: $(tail -5 "$T_TMP/run.log" 2>/dev/null))"
rkfx_is_mounted "$DATA" && fail "DATADIR is still mounted after rekeyfs-fixture run"

checking "after unmount the files written through the over-mount are chunk files"
is_chunk_file "$DATA/new.bin" || fail "new.bin is not a chunk file"
is_chunk_file "$DATA/db/app.db" || fail "db/app.db is not a chunk file"
cmp -s "$DATA/new.bin" "$T_TMP/new.expected" && fail "new.bin is stored in plaintext"
[ -f "$DATA/.rekeyfs/policy" ] || fail "the real .rekeyfs state is missing after the over-mount"
run rekeyctl cat -d "$KEYS" "$DATA/new.bin"
assert_rc 0 "rekeyctl cat new.bin"
cmp -s "$T_OUT" "$T_TMP/new.expected" || fail "rekeyctl cat new.bin differs"
is_chunk_file "$DATA/legacy/plain.txt" && fail "the plain legacy file became a chunk file"
run "$FIXTURE" verify --offline "$FX"
assert_rc 0 "fixture files after the over-mount"

checking "the database keeps its path: remount over DATADIR and open the same path"
mount_fs "$DATA" "$DATA"
run sqlite3 -batch "$DATA/db/app.db" "SELECT count(*), hex(sha3_query('SELECT * FROM kv')) FROM kv;"
assert_rc 0 "sqlite3 on DATADIR/db/app.db through the over-mount"
assert_same "$T_OUT" "$T_TMP/db.sum" "database content after remount"
run sqlite3 -batch "$DATA/db/app.db" "PRAGMA integrity_check;"
assert_out_has "^ok$" "integrity_check through the over-mount"
assert_same "$DATA/new.bin" "$T_TMP/new.expected" "new.bin through the over-mount"
run "$FIXTURE" verify "$FX" "$DATA"
assert_rc 0 "fixture files through the over-mount"
checking "the real .rekeyfs is hidden under the over-mount"
[ -e "$DATA/.rekeyfs/policy" ] && fail "the real .rekeyfs/policy shows through the over-mount"
[ -e "$DATA/.rekeyfs/status" ] || fail "no virtual .rekeyfs/status on the over-mount"
umount_fs "$DATA"

checking "rekeyfs-fixture mount/umount subcommands over DATADIR"
REKEYFS_FIXTURE_STATE="$T_TMP" run "$FIXTURE" mount --keydir "$KEYS" "$DATA" "$DATA"
assert_rc 0 "rekeyfs-fixture mount"
rkfx_is_mounted "$DATA" || fail "not mounted after rekeyfs-fixture mount"
assert_same "$DATA/new.bin" "$T_TMP/new.expected" "new.bin via fixture mount"
REKEYFS_FIXTURE_STATE="$T_TMP" run "$FIXTURE" umount "$DATA"
assert_rc 0 "rekeyfs-fixture umount"
rkfx_is_mounted "$DATA" && fail "still mounted after rekeyfs-fixture umount"

checking "rekeyfs-fixture run: a failing command's status is passed on and the mount is removed"
run "$FIXTURE" run --keydir "$KEYS" "$DATA" "$DATA" -- sh -c 'exit 3'
assert_rc 3 "status of a failing command"
rkfx_is_mounted "$DATA" && fail "still mounted after a failing command"
run "$FIXTURE" run --keydir "$T_TMP/nokeys" "$DATA" "$DATA" -- true
assert_rc 125 "status when the mount fails"
assert_err_has "rekeyfs daemon log" "the daemon log is printed when the mount fails"

checking "the kernel read-ahead of the mount is raised (default 4096 KiB, read_ahead_kb=N)"
ra_of() { # MOUNTPOINT: read_ahead_kb of its bdi, once the daemon has set it
	local dev
	dev=$(findmnt -n -o MAJ:MIN -T "$1" | tail -1 | tr -d ' ')
	cat "/sys/class/bdi/$dev/read_ahead_kb"
}
ra_wait() { # MOUNTPOINT WANT
	local got
	for _ in $(seq 30); do
		got=$(ra_of "$1")
		[ "$got" = "$2" ] && return 0
		sleep 0.1
	done
	fail "read_ahead_kb of $1 is $got, expected $2"
}
mount_fs "$DATA" "$DATA" ""
ra_wait "$DATA" 4096
umount_fs "$DATA"
mount_fs "$DATA" "$DATA" "read_ahead_kb=512"
ra_wait "$DATA" 512
cmp "$DATA/new.bin" "$T_TMP/new.expected" || fail "new.bin with read_ahead_kb=512"
umount_fs "$DATA"
ok "4096 by default, 512 when asked"
finish
