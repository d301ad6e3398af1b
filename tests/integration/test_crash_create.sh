#!/bin/bash
# Crash states of newly created files (issue 14, item 3: a create writes its
# first header without an fdatasync).
#   1. kill -9 of the daemon right after it created files: half of them were
#      written and fsynced, half only written (left in the kernel's writeback
#      cache or in the daemon).  After a remount every fsynced file is intact;
#      every other one is absent, empty, intact or a prefix of its bytes
#      (never an error, never other bytes), and each can be written again (no EIO forever).
#   2. crash point create.header-written: the daemon dies right after the
#      first header of a new file, before the reply.  The file reads as empty
#      and takes writes.
#   3. the states a power failure can leave of a file no one fsynced, made
#      offline from a created-and-written file: nothing (0 bytes), copy A
#      only (its creation), copy A torn (detected: EIO and a message, never
#      bytes), copy A intact with its slots.  None reads as other bytes.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd cmp truncate dd
integ_setup
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 8
N=16
PAYLOAD="$T_TMP/payload"
make_random "$PAYLOAD" 20000

cat >"$T_TMP/mk.py" <<'EOF'
import os, sys
mnt, payload, n = sys.argv[1], open(sys.argv[2], "rb").read(), int(sys.argv[3])
for i in range(n):
    # synced files first, then written-only ones; the size varies per file
    sync = i % 2 == 0
    fd = os.open(os.path.join(mnt, "f%02d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.write(fd, payload[: 3000 + 1000 * i])
    if sync:
        os.fsync(fd)
    os.close(fd)
    if sync:
        print("f%02d" % i, flush=True)
EOF
daemon_dead() { ! kill -0 "$1" 2>/dev/null || [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" = Z ]; }
# crashed_umount: the daemon is dead (status 137 expected); remove its mount
crashed_umount() {
	RKFX_QUIET=1 rkfx_umount "$MNT" >/dev/null 2>&1
	[ "$RKFX_WAIT_RC" = 137 ] || fail "the daemon's exit status is $RKFX_WAIT_RC, expected 137 (SIGKILL)"
	if rkfx_is_mounted "$MNT"; then
		fusermount3 -u -z "$MNT" 2>/dev/null
		rkfx_is_mounted "$MNT" && fail "the mount of the killed daemon cannot be removed"
	fi
}
# check_unsynced FILE N: absent, empty or a prefix of the first N payload bytes; then writable
check_unsynced() {
	local f="$1" n="$2"
	[ -e "$f" ] || return 0
	cat "$f" >"$T_TMP/got" 2>"$T_TMP/got.err" || { check_failed "$f: read failed: $(cat "$T_TMP/got.err")"; return; }
	local got
	got=$(stat -c %s "$T_TMP/got")
	if [ "$got" -gt 0 ]; then
		# what the kernel had sent before the kill: the file or a prefix of it
		[ "$got" -le "$n" ] && head -c "$got" "$PAYLOAD" | cmp -s - "$T_TMP/got" ||
			check_failed "$f: neither empty nor (a prefix of) its bytes ($got bytes)"
	fi
	printf 'again' >>"$f" 2>"$T_TMP/w.err" || check_failed "$f: not writable after the crash: $(cat "$T_TMP/w.err")"
}

# ---- 1. kill -9 right after the creates -------------------------------------
checking "kill -9 right after creating files (fsynced and not)"
mount_fs "$DATA" "$MNT"
DPID=$LAST_PID
python3 "$T_TMP/mk.py" "$MNT" "$PAYLOAD" "$N" >"$T_TMP/synced" || fail "creating the files failed"
kill -9 "$DPID"
crashed_umount
mount_fs "$DATA" "$MNT"
[ "$(wc -l <"$T_TMP/synced")" = $((N / 2)) ] || fail "expected $((N / 2)) fsynced files"
for ((i = 0; i < N; i++)); do
	f=$(printf 'f%02d' $i); n=$((3000 + 1000 * i))
	if grep -qx "$f" "$T_TMP/synced"; then
		head -c "$n" "$PAYLOAD" | cmp -s - "$MNT/$f" || check_failed "$f was fsynced but does not read back intact"
	else
		check_unsynced "$MNT/$f" "$n"
	fi
done
umount_fs "$MNT"
ok

# ---- 2. crash point right after the first header of a new file --------------
checking "crash point create.header-written"
export REKEYFS_CRASHPOINT=create.header-written:3
mount_fs "$DATA" "$MNT"
DPID=$LAST_PID
unset REKEYFS_CRASHPOINT
mkdir -p "$MNT/d" || fail "mkdir"
for i in 1 2 3; do
	printf 'x%.0s' $(seq 100) >"$MNT/d/new$i" 2>/dev/null || break
done
# the third create killed the daemon (the loop above ended on its error;
# the process may still be exiting)
wait_until 10 "the daemon did not reach the crash point" daemon_dead "$DPID"
crashed_umount
[ -e "$DATA/d/new3" ] || fail "the crash point left no file behind (it is after the header write)"
is_chunk_file "$DATA/d/new3" || fail "new3 is not a chunk file after the crash point"
cp "$DATA/d/new3" "$T_TMP/created" # the file as created: copy A only (part 3)
mount_fs "$DATA" "$MNT"
[ "$(stat -c %s "$MNT/d/new3")" = 0 ] || check_failed "new3 (header only) is not empty"
check_unsynced "$MNT/d/new3" 0
for i in 1 2; do
	[ "$(cat "$MNT/d/new$i")" = "$(printf 'x%.0s' $(seq 100))" ] || check_failed "new$i (closed before the crash) changed"
done
umount_fs "$MNT"
ok

# ---- 3. power-failure states of a file no one fsynced (made offline) --------
checking "states of an un-fsynced new file: nothing, copy A, torn copy A, copy A + slots"
mount_fs "$DATA" "$MNT"
head -c 9000 "$PAYLOAD" >"$MNT/orig" || fail "write"
umount_fs "$MNT"
HDR=4096
cp "$DATA/orig" "$T_TMP/orig.full"
cp "$T_TMP/orig.full" "$DATA/s_full"                   # copy A and the slots, copy B never written
dd if=/dev/zero of="$DATA/s_full" bs=$HDR seek=1 count=1 conv=notrunc status=none
: >"$DATA/s_none"                                       # the create's header never reached the disk
cp "$T_TMP/created" "$DATA/s_hdr"                       # header A only
cp "$T_TMP/created" "$DATA/s_torn"                      # header A torn after its first sector
dd if=/dev/zero of="$DATA/s_torn" bs=512 seek=1 count=7 conv=notrunc status=none
mount_fs "$DATA" "$MNT"
[ "$(stat -c %s "$MNT/s_none")" = 0 ] || check_failed "s_none is not empty"
[ "$(stat -c %s "$MNT/s_hdr")" = 0 ] || check_failed "s_hdr (copy A only) is not empty"
check_unsynced "$MNT/s_none" 0
check_unsynced "$MNT/s_hdr" 0
head -c 9000 "$PAYLOAD" | cmp -s - "$MNT/s_full" || check_failed "s_full (copy A + slots) does not read intact"
if cat "$MNT/s_torn" >"$T_TMP/torn" 2>/dev/null && [ -s "$T_TMP/torn" ]; then
	check_failed "s_torn (torn copy A) read as $(stat -c %s "$T_TMP/torn") bytes instead of failing"
fi
umount_fs "$MNT"
grep -q "s_torn.*corrupt chunk-file header" "$LAST_LOG" || check_failed "the torn header was not reported: $(tail -3 "$LAST_LOG")"
ok
finish
