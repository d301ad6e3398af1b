#!/bin/bash
# Backups and snapshots (issue #12 item 9; rekeyfs(8) BACKUPS):
#   (a) an encrypted backup of a data directory mounted over itself, taken
#       while mounted: a non-recursive bind mount of the parent directory
#       (made private) shows the stored files under the FUSE mount; tar of
#       DATADIR minus .rekeyfs/lock and .rekeyfs/journal; restored elsewhere
#       it reads back identical, offline (rekeyctl cat) and mounted
#   (b) hard-linked snapshot files inside a table: the sweep rekeys the one
#       stored file in place, both names see the rekeyed chunks, the links
#       stay one inode
#   (c) an old backup (made before a rotation and the release of the old
#       key) reads back whole with the old key directory (-o keydir=,
#       rekeyctl cat -d), and not with the current one
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd tar mount umount sha256sum
integ_setup
SEED="${BACKUP_SEED:-$(( ($(date +%s) ^ $$) % 1000000 ))}"
echo "seed: $SEED (BACKUP_SEED=$SEED repeats the file contents)"

PARENT="$T_TMP/db"
DATA="$PARENT/data"
RAWP="$T_TMP/raw"        # the bind mount of PARENT: RAWP/data = stored files
ORIG="$T_TMP/orig"
mkdir -p "$ORIG/ks/t1" "$ORIG/ks/t2" "$RAWP"

# wait_sweep SECS: the walker's sweep (number >= 1) is no longer running
_swept() {
	status "$DATA"
	WAIT_WHY="$(sget 'd["walker"]["state"]') sweep $(sget 'd["walker"]["sweep"]')"
	case "$(sget 'd["walker"]["state"]')" in running | paused) return 1 ;; esac
	[ "$(sget 'd["walker"]["sweep"]')" -ge 1 ]
}
wait_sweep() { wait_until "$1" "the sweep did not end within $1 s" _swept; }
# tree_sums DIR: sha256 of every file (relative paths), .rekeyfs excluded
tree_sums() { (cd "$1" && find . -path ./.rekeyfs -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum); }

checking "set up: DATADIR mounted over itself, two tables, files under key1"
new_datadir "$DATA" 16 key1
mount_fs "$DATA" "$DATA"
for t in ks/t1 ks/t2; do
	mkdir -p "$DATA/$t"
	run rekeyctl alter "$DATA/$t" --key key1
	assert_rc 0 "alter $t"
done
n=0
for rel in top.dat ks/t1/a.dat ks/t1/b.txt ks/t2/c.dat; do
	n=$((n + 1))
	case $rel in
	*.txt) make_text "$ORIG/$rel" $((150000 + n * 20000)) $n ;;
	*) seeded_random "$ORIG/$rel" $((150000 + n * 20000)) "$rel" ;;
	esac
	cp "$ORIG/$rel" "$DATA/$rel" || fail "cp $rel"
done
sync

checking "(a) the stored files under the over-mount: a non-recursive bind mount of the parent, made private"
mount --bind "$PARENT" "$RAWP" || fail "mount --bind $PARENT $RAWP"
at_exit "umount '$RAWP' 2>/dev/null || umount -l '$RAWP' 2>/dev/null"
mount --make-private "$RAWP" || fail "mount --make-private $RAWP"
RAW="$RAWP/data"
[ -f "$RAW/.rekeyfs/format" ] || fail "the bind mount does not show the stored data directory: $(ls -a "$RAW" | tr '\n' ' ')"
is_chunk_file "$RAW/ks/t1/a.dat" || fail "RAW/ks/t1/a.dat is not a chunk file (the bind mount shows the FUSE mount?)"
assert_same "$DATA/ks/t1/a.dat" "$ORIG/ks/t1/a.dat" "plaintext through the mount"

checking "(a) the encrypted backup, taken while mounted, restores elsewhere and reads back identical"
cp -a "$KEYS" "$T_TMP/oldkeys" # the key directory as it is at backup time (for (c))
tar -C "$RAW" --exclude=./.rekeyfs/lock --exclude=./.rekeyfs/journal --exclude='.rekeyfs-tmp.*' \
	-cf "$T_TMP/backup.tar" . || fail "tar of the stored files"
tar -tf "$T_TMP/backup.tar" >"$T_OUT"
grep -q '^\./\.rekeyfs/format$' "$T_OUT" || fail "the backup lacks .rekeyfs/format"
grep -q 'rekeyfs/lock\|rekeyfs/journal' "$T_OUT" && fail "the backup holds the lock or the journal"
REST="$T_TMP/restored"
mkdir -p "$REST" && tar -C "$REST" -xf "$T_TMP/backup.tar" || fail "restore of the backup"
is_chunk_file "$REST/ks/t2/c.dat" || fail "the restored c.dat is not a chunk file: the backup is not encrypted"
for rel in top.dat ks/t1/a.dat ks/t1/b.txt ks/t2/c.dat; do
	rekeyctl cat -d "$KEYS" "$REST/$rel" >"$T_TMP/cat.out" 2>"$T_ERR" || fail "rekeyctl cat of the restored $rel: $(cat "$T_ERR")"
	assert_same "$T_TMP/cat.out" "$ORIG/$rel" "offline read of the restored $rel"
done
mount_fs "$REST" "$T_TMP/rmnt"
assert_eq "$(tree_sums "$T_TMP/rmnt")" "$(tree_sums "$ORIG")" "the restored backup mounted: every file"
umount_fs "$T_TMP/rmnt"

checking "(b) hard-linked snapshot files in a table are rekeyed with the live file (one inode, both names)"
mkdir -p "$DATA/ks/t1/snapshots/s1"
ln "$DATA/ks/t1/a.dat" "$DATA/ks/t1/snapshots/s1/a.dat" || fail "hard link through the mount"
INO=$(stat -c %i "$RAW/ks/t1/a.dat")
assert_eq "$(stat -c %i:%h "$RAW/ks/t1/snapshots/s1/a.dat")" "$INO:2" "stored inode and link count of the snapshot"
run rekeyctl alter "$DATA" --key key2
assert_rc 0 "alter / --key key2"
for t in ks/t1 ks/t2; do
	run rekeyctl alter "$DATA/$t" --key key2
	assert_rc 0 "alter $t --key key2"
done
run rekeyctl rekey "$DATA"
assert_rc 0 "rekeyctl rekey: $(cat "$T_ERR")"
wait_sweep 40
assert_eq "$(stat -c %i:%h "$RAW/ks/t1/a.dat")" "$INO:2" "inode and link count of a.dat after the sweep"
assert_eq "$(stat -c %i "$RAW/ks/t1/snapshots/s1/a.dat")" "$INO" "the snapshot name is still the same stored file"
run rekeyctl fsck --key key1 "$DATA"
assert_rc 0 "fsck --key key1 after the sweep: no chunk under key1 ($(tail -n 3 "$T_OUT"))"
evict "$DATA"
assert_same "$DATA/ks/t1/snapshots/s1/a.dat" "$ORIG/ks/t1/a.dat" "the snapshot through the mount after the sweep"
assert_same "$DATA/ks/t1/a.dat" "$ORIG/ks/t1/a.dat" "the live file after the sweep"
ok "one stored file, $(stat -c %h "$RAW/ks/t1/a.dat") names, rekeyed to key2"

checking "(c) release key1, move its key file away: an old backup reads whole with the old key directory"
rm -rf "$DATA/ks/t1/snapshots"
run rekeyctl release-key -d "$KEYS" key1 "$DATA"
assert_rc 0 "release-key key1: $(cat "$T_ERR")"
mv "$KEYS/key1" "$T_TMP/key1.moved" || fail "mv key1"
umount_fs "$DATA"
OLD="$T_TMP/oldbackup"
mkdir -p "$OLD" && tar -C "$OLD" -xf "$T_TMP/backup.tar" || fail "restore of the old backup"
run rekeyctl cat -d "$KEYS" "$OLD/ks/t1/a.dat"
assert_rc_nonzero "rekeyctl cat of the old backup with the current key directory (key1 gone)"
for rel in top.dat ks/t1/a.dat ks/t1/b.txt ks/t2/c.dat; do
	rekeyctl cat -d "$T_TMP/oldkeys" "$OLD/$rel" >"$T_TMP/cat.out" 2>"$T_ERR" ||
		fail "rekeyctl cat -d OLDKEYS of the old backup's $rel: $(cat "$T_ERR")"
	assert_same "$T_TMP/cat.out" "$ORIG/$rel" "offline read of the old backup's $rel with the old keys"
done
KEYS_NOW="$KEYS"
KEYS="$T_TMP/oldkeys"
mount_fs "$OLD" "$OLD" "ro,walker=off,lazy=off"
KEYS="$KEYS_NOW"
assert_eq "$(tree_sums "$OLD")" "$(tree_sums "$ORIG")" "the old backup mounted with the old key directory: every file"
umount_fs "$OLD"
mount_fs "$DATA" "$DATA"
assert_eq "$(tree_sums "$DATA")" "$(tree_sums "$ORIG")" "the live data without key1"
umount_fs "$DATA"
finish
