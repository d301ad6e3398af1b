#!/bin/bash
# scripts/demo (issue #12 item 11) runs to the end in a temporary work area
# with the binaries under test (--bin-dir: no install-deps, no build, the
# repository's build directory is left alone): a completed rotation (sweep,
# fsck, release, remount without the old key, the old backup read with the
# old key); its exit status is 0 and the final fsck says the rotation is
# complete.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd xxd tar mount umount
make_tmpdir
DEMO="$(cd "$TEST_SRCDIR/../scripts" && pwd)/demo"
BIN="${TOP_BUILDDIR:-$(dirname "$(command -v rekeyfs)")}"
# the demo's own cleanup unmounts; this is for a demo killed half way
at_exit "for m in '$T_TMP/work/old-backup' '$T_TMP/work/db/data' '$T_TMP/work/raw'; do umount -l \"\$m\" 2>/dev/null; done; true"

checking "scripts/demo --bin-dir BUILD --workdir TMP ends with a completed rotation"
timeout -s KILL 120 "$DEMO" --bin-dir "$BIN" --workdir "$T_TMP/work" >"$T_OUT" 2>"$T_ERR"
RC=$?
sed 's/\x1b\[[0-9;]*m//g' "$T_OUT" >"$T_TMP/demo.out"
cp "$T_TMP/demo.out" "$T_OUT"
[ $RC -eq 0 ] || fail "scripts/demo exited $RC: $(tail -n 25 "$T_OUT") $(tail -n 15 "$T_ERR") $(tail -n 20 "$T_TMP/work/daemon.log" 2>/dev/null)"
assert_out_has "^demo finished: rotated to new_key" "the demo's last line"
last_fsck="$(awk '/^\$ rekeyctl fsck/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$T_OUT")"
grep -q "rotation complete: every chunk is on its table's target key" <<<"$last_fsck" ||
	fail "the demo's final fsck does not say the rotation is complete: $last_fsck"
assert_out_has "key 'system_key' released" "the demo releases the old key"
assert_out_has "old backup reads back byte-identical with the old key directory" "the old backup is read"
for m in old-backup db/data raw; do
	mountpoint -q "$T_TMP/work/$m" && fail "the demo left $m mounted"
done
ok "$(grep -c '^\$ ' "$T_OUT") commands shown"
finish
