#!/bin/bash
# Online encryption of existing plain files (rekeyctl encrypt MOUNT): the
# daemon converts closed plain files to chunk files under their table's key
# while the mount serves them; an open file waits until it is closed; files it
# cannot convert (hard links) make the job "incomplete"; the bytes read
# through the mount never change; progress and errors are in status.
set -u
. "$TEST_SRCDIR/integration/integ.bash"
need_fuse
integ_setup
D="$T_TMP/data"; M="$T_TMP/mnt"; SEED=encrypt-online
mkdir -p "$D/t1/sub" "$D/t2"
# plain files written before rekeyfs ever saw the directory
seeded_random "$D/t1/a.db" 1048576 a
seeded_random "$D/t1/sub/b.db" 3145728 b
printf 'rows\n%.0s' $(seq 2000) >"$D/t1/with space.log"
: >"$D/t1/empty"
truncate -s 2M "$D/t1/sparse"; printf 'tail' >>"$D/t1/sparse"
seeded_random "$D/t2/held.db" 524288 h
seeded_random "$D/t2/linked" 65536 l
ln "$D/t2/linked" "$D/t2/linked.2"
(cd "$D" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$T_TMP/sums"
run rekeyctl init -d "$KEYS" --key key1 --chunk-kb 16 "$D"
assert_rc 0 "init over plain files"
run rekeyctl alter -d "$KEYS" "$D/t2" --key key2
assert_rc 0 "alter t2 to key2"
mount_fs "$D" "$M"

check_sums() { # every file reads back as it was, through the mount
	evict "$M"
	(cd "$M" && sha256sum --quiet -c "$T_TMP/sums") || fail "$1: a file reads back changed through the mount"
}
check_sums "before encrypt"

# refusals: a path outside the mount, a path that does not exist
run rekeyctl encrypt "$M" /etc/passwd
assert_rc_nonzero "encrypt of a path outside the mount"
run rekeyctl encrypt "$M" "$M/nope"
assert_rc_nonzero "encrypt of a missing path"

# t1 only, with --wait: every plain file there converted, exit 0
run timeout -s KILL 60 rekeyctl encrypt --wait "$M" "$M/t1"
assert_rc 0 "encrypt --wait t1"
assert_out_has "encrypt job 1 finished: 5 of 5 plain files converted" "job 1 summary"
for f in a.db sub/b.db "with space.log" empty sparse; do
	is_chunk_file "$D/t1/$f" || fail "t1/$f is not a chunk file after encrypt"
done
is_chunk_file "$D/t2/held.db" && fail "t2/held.db was converted though only t1 was asked for"
check_sums "after encrypting t1"

# t2 with one file held open: the job waits for it, then converts it
exec 5<"$M/t2/held.db"
run rekeyctl encrypt "$M" "$M/t2"
assert_rc 0 "encrypt t2"
assert_out_has "encrypt job 2 started" "reply names the job"
waiting_for_held() {
	status
	WAIT_WHY="$(sget 'd["encrypt"]["state"]') waiting=$(sget 'd["encrypt"]["waiting"]')"
	[ "$(sget 'd["encrypt"]["state"]')" = waiting ] && [ "$(sget '"/t2/held.db" in d["encrypt"]["waiting"]')" = true ]
}
wait_until 30 "the job does not wait for the open file" waiting_for_held
is_chunk_file "$D/t2/held.db" && fail "an open file was converted under its reader"
head -c 4096 <&5 >/dev/null || fail "reading the held file"
exec 5<&-
job_ended() {
	status
	WAIT_WHY=$(sget 'd["encrypt"]["state"]')
	case "$WAIT_WHY" in finished | incomplete) return 0 ;; esac
	return 1
}
wait_until 30 "the job did not end after the file was closed" job_ended
is_chunk_file "$D/t2/held.db" || fail "t2/held.db not converted once closed"
# the hard-linked file is not converted (a new inode would split the links)
assert_eq "$(sget 'd["encrypt"]["state"]')" incomplete "job 2 state with a hard-linked file"
assert_eq "$(sget 'd["encrypt"]["files_skipped"]')" 2 "job 2 skipped files (two names of one inode)"
[ "$(sget 'any(e["path"] == "/t2/linked" for e in d["encrypt"]["errors"])')" = true ] ||
	fail "status errors do not name /t2/linked: $(sget 'd["encrypt"]["errors"]')"
is_chunk_file "$D/t2/linked" && fail "a hard-linked file was converted"
check_sums "after encrypting t2"

# --wait exits 1 when files stay plain, and says how many
run timeout -s KILL 60 rekeyctl encrypt --wait "$M"
assert_rc 1 "encrypt --wait with hard-linked files left"
assert_out_has "incomplete" "summary says incomplete"

umount_fs "$M"
# offline coverage agrees: only the hard-linked inode is plain, under the right keys
run rekeyctl fsck -d "$KEYS" --json "$D"
cp "$T_OUT" "$T_TMP/fsck.json"
assert_eq "$(json_get "$T_TMP/fsck.json" "d['total']['plain_files']")" 1 "plain files after encrypt (the hard-linked inode)"
assert_eq "$(json_get "$T_TMP/fsck.json" "d['total']['chunks_off_target']")" 0 "chunks off target"
(cd "$D" && sha256sum --quiet -c "$T_TMP/sums" 2>/dev/null) && fail "the stored files did not change"
mount_fs "$D" "$M"
check_sums "after remount"
umount_fs "$M"
finish
