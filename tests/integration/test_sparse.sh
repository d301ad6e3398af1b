#!/bin/bash
# A huge sparse file costs what it stores (issue #10, item 7):
#  - truncate -s 2E / 1P on new files through the mount works (the header
#    stays COUNTS_DIRTY until unmount); the largest size the format
#    addresses (2^62-1) works, one more byte is EFBIG (truncate and write);
#  - opening the 2E file again from a dozen processes at once finishes
#    within a deadline while another file keeps being served;
#  - unmount completes; offline fsck (also --deep), keys and a rekey finish
#    within a deadline and count the chunk that exists.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd truncate
integ_setup

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
EXP="$T_TMP/expected"
mkdir -p "$MNT" "$EXP"
new_datadir "$DATA" 4
make_random "$EXP/c.dat" 200000
MAX=$(((1 << 62) - 1))
DEADLINE=60

# within SECS CMD...: like run, but the test fails when CMD has not ended
# after SECS seconds (a process stuck in a FUSE request ignores signals; the
# cleanup at exit kills the daemon, which ends it)
within() {
	local secs="$1" p end
	shift
	{ "$@" >"$T_OUT" 2>"$T_ERR"; } 2>/dev/null &
	p=$!
	end=$((SECONDS + secs))
	while kill -0 "$p" 2>/dev/null; do
		[ $SECONDS -lt $end ] || fail "'$*' did not end within ${secs}s"
		sleep 0.2
	done
	wait "$p"
	RC=$?
}

mount_fs "$DATA" "$MNT"
cp "$EXP/c.dat" "$MNT/" || fail "writing c.dat"

checking "truncate -s 2E, 1P and the largest addressable size through the mount"
for s in 2E 1P $MAX; do
	within $DEADLINE truncate -s "$s" "$MNT/s.$s"
	assert_rc 0 "truncate -s $s"
done
assert_eq "$(stat -c %s "$MNT/s.2E")" $((1 << 61)) "size of s.2E"
assert_eq "$(stat -c %s "$MNT/s.$MAX")" "$MAX" "size of s.$MAX"
printf 'data' >"$T_TMP/data4"
within $DEADLINE dd if="$T_TMP/data4" of="$MNT/s.2E" bs=1 seek=1048576 conv=notrunc status=none
assert_rc 0 "a write into s.2E"

checking "one byte past the largest addressable size is EFBIG (truncate, write)"
within $DEADLINE truncate -s $((MAX + 1)) "$MNT/s.big"
assert_rc_nonzero "truncate -s 2^62"
assert_err_has "File too large" "EFBIG for 2^62"
within $DEADLINE truncate -s $((MAX + 1)) "$MNT/s.$MAX"
assert_rc_nonzero "truncate -s 2^62 of an existing file"
assert_err_has "File too large" "EFBIG for 2^62 (existing file)"
assert_eq "$(stat -c %s "$MNT/s.$MAX")" "$MAX" "size after the refused truncate"
within $DEADLINE dd if=/dev/zero of="$MNT/s.$MAX" bs=1 count=2 seek=$((MAX - 1)) conv=notrunc status=none
assert_rc_nonzero "a write across 2^62"

checking "a dozen concurrent opens of the 2E file finish while c.dat keeps being served"
drop_caches
pids=()
for i in $(seq 12); do
	dd if="$MNT/s.2E" of=/dev/null bs=4096 count=1 skip=256 status=none &
	pids+=($!)
done
served=0
end=$((SECONDS + DEADLINE))
while [ $SECONDS -lt $end ]; do
	within 10 cmp "$MNT/c.dat" "$EXP/c.dat"
	assert_rc 0 "c.dat while the 2E file is being opened"
	served=$((served + 1))
	alive=0
	for p in "${pids[@]}"; do
		kill -0 "$p" 2>/dev/null && alive=1
	done
	[ $alive -eq 0 ] && break
	sleep 0.2
done
for p in "${pids[@]}"; do
	kill -0 "$p" 2>/dev/null && fail "an open of s.2E did not end within ${DEADLINE}s"
done
for p in "${pids[@]}"; do
	wait "$p" || fail "an open/read of s.2E failed (status $?)"
done
ok "12 opens done; c.dat served $served times meanwhile"
within $DEADLINE dd if="$MNT/s.2E" bs=1 skip=1048576 count=4 status=none
assert_eq "$(cat "$T_OUT")" "data" "the chunk written into s.2E"

checking "unmount completes (the fixture's deadline: RKFX_TIMEOUT, then the daemon is killed)"
umount_fs "$MNT"

checking "offline fsck, fsck --deep, keys and rekey finish and count the chunk that exists"
within $DEADLINE rekeyctl fsck -d "$KEYS" "$DATA"
assert_rc 0 "fsck"
within $DEADLINE rekeyctl fsck -d "$KEYS" --deep "$DATA"
assert_rc 0 "fsck --deep"
within $DEADLINE rekeyctl keys -d "$KEYS" "$DATA"
assert_rc 0 "keys"
within $DEADLINE rekeyctl alter -d "$KEYS" "$DATA" --key key2
assert_rc 0 "alter --key key2"
within $DEADLINE rekeyctl rekey -d "$KEYS" "$DATA"
assert_rc 0 "rekey"
within $DEADLINE rekeyctl release-key -d "$KEYS" key1 "$DATA"
assert_rc 0 "release-key key1 after the rekey"
mount_fs "$DATA" "$MNT"
within $DEADLINE dd if="$MNT/s.2E" bs=1 skip=1048576 count=4 status=none
assert_eq "$(cat "$T_OUT")" "data" "s.2E after the rekey"
assert_same "$MNT/c.dat" "$EXP/c.dat" "c.dat after the rekey"
umount_fs "$MNT"
finish
