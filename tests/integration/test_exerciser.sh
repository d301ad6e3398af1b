#!/bin/bash
# Seeded randomized exerciser (exerciser.py) on rekeyfs mounts with chunk sizes
# of 4, 64 and 1024 KiB (a fresh data directory each): thousands of mixed
# operations, every read compared with an in-memory shadow copy.  Then
# unmount, remount and compare every file with the shadow again, and decrypt
# every stored file offline with `rekeyctl cat`.
#
# Reproduce a failure: EXERCISER_SEED=<printed seed> make check TESTS=...
# Tune: EXERCISER_OPS (default 3000 per thread; 2/3 of it at 1024 KiB, or
# EXERCISER_OPS_LARGE), EXERCISER_SIZES ("4 64 1024").
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup

EX="$T_INTEG_DIR/exerciser.py"
SEED="${EXERCISER_SEED:-$(( ($(date +%s) ^ $$) % 1000000 ))}"
OPS="${EXERCISER_OPS:-3000}"
echo "exerciser seed: $SEED (EXERCISER_SEED=$SEED repeats this run)"

# a failure at one chunk size is reported and the other sizes still run;
# the test fails at the end
FAILED_SIZES=""
size_failed() {
	echo "FAIL: $*" >&2
	FAILED_SIZES="$FAILED_SIZES $ckb"
}

# one_size CKB: returns 1 after reporting a failure
one_size() {
	local ckb="$1" opts="" threads=1 n=0 f name ops="$OPS"
	DATA="$T_TMP/data$ckb"
	MNT="$T_TMP/mnt$ckb"
	SHADOW="$T_TMP/shadow$ckb"
	new_datadir "$DATA" "$ckb"
	# the 64 KiB round runs without the writeback cache: writes reach the
	# daemon as the application issued them; it also runs two threads
	if [ "$ckb" = 64 ]; then
		opts=no_writeback
		threads=2
	fi
	# 1 MiB chunks: every small write rewrites a whole chunk; fewer operations
	if [ "$ckb" -ge 1024 ]; then
		ops="${EXERCISER_OPS_LARGE:-$((OPS * 2 / 3))}"
	fi
	mount_fs "$DATA" "$MNT" "$opts"
	mkdir "$MNT/ex" || fail "mkdir on the mount"
	checking "exerciser, chunk $ckb KiB${opts:+, $opts}, $threads thread(s), $ops ops per thread"
	if ! python3 "$EX" run --dir "$MNT/ex" --shadow "$SHADOW" --seed "$SEED" --ops "$ops" --files 5 \
		--threads "$threads" --chunk-kb "$ckb"; then
		size_failed "exerciser found a mismatch at chunk size $ckb KiB (seed $SEED; see above)"
		umount_fs "$MNT"
		return 1
	fi
	umount_fs "$MNT"

	checking "after a remount every file matches the shadow (chunk $ckb KiB)"
	mount_fs "$DATA" "$MNT"
	if ! python3 "$EX" verify --dir "$MNT/ex" --shadow "$SHADOW"; then
		size_failed "files differ from the shadow after remount (chunk $ckb KiB, seed $SEED)"
		umount_fs "$MNT"
		return 1
	fi
	umount_fs "$MNT"

	checking "offline: every stored file is a chunk file and rekeyctl cat gives the shadow (chunk $ckb KiB)"
	for f in "$SHADOW"/*; do
		name="$(basename "$f")"
		if ! is_chunk_file "$DATA/ex/$name"; then
			size_failed "stored $name is not a chunk file"
			return 1
		fi
		if ! rekeyctl cat -d "$KEYS" "$DATA/ex/$name" >"$T_TMP/cat.out" 2>"$T_ERR"; then
			size_failed "rekeyctl cat $name failed (chunk $ckb KiB): $(head -c 500 "$T_ERR")"
			return 1
		fi
		if ! cmp -s "$T_TMP/cat.out" "$f"; then
			size_failed "rekeyctl cat $name differs from the shadow (chunk $ckb KiB, seed $SEED): $(cmp "$T_TMP/cat.out" "$f" 2>&1)"
			return 1
		fi
		n=$((n + 1))
	done
	[ $n -ge 5 ] || { size_failed "expected at least 5 files, found $n"; return 1; }
	ok "$n files"
	rm -rf "$SHADOW" "$DATA"
}

for ckb in ${EXERCISER_SIZES:-4 64 1024}; do
	one_size "$ckb"
done
if [ -n "$FAILED_SIZES" ]; then
	fail "the exerciser failed at chunk size(s)$FAILED_SIZES KiB; repeat with EXERCISER_SEED=$SEED"
fi
finish
