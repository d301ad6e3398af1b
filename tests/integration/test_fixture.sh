#!/bin/bash
# rekeyfs-fixture run (issue #12 item 11), as the README shows it:
#   * `build DIR --keys 3` then `run --keydir DIR/keys DIR/data DIR/mnt --
#     CMD` works although DIR/mnt does not exist (run creates it)
#   * by default run leaves the fixture unchanged: reading every file
#     (including files with chunks under old keys, which a default mount
#     rewrites lazily) keeps every stored file byte-identical (sha256 before
#     and after), and writes are refused
#   * run --writable allows writes (and they are stored)
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd sha256sum
make_tmpdir
at_exit 'rkfx_umount_all'
FX="$T_TMP/fx"
# stored_sums: sha256 of every stored file of the fixture's data directory
# (the daemon's lock and journal excepted)
stored_sums() {
	(cd "$FX/data" && find . -path ./.rekeyfs/lock -prune -o -path ./.rekeyfs/journal -prune -o -type f -print0 |
		LC_ALL=C sort -z | xargs -0 -r sha256sum)
}

checking "build a fixture with three keys (mixed files hold chunks under old keys)"
run "$FIXTURE" build "$FX" --keys 3 --chunk-kb 4
assert_rc 0 "rekeyfs-fixture build: $(cat "$T_ERR")"
. "$FX/fixture.conf"
[ -n "$FIXTURE_MIXED" ] || fail "the fixture has no file with chunks under two keys"
stored_sums >"$T_TMP/before"

checking "run creates its mount point; reading every file through it leaves every stored file byte-identical"
assert_not_exists "$FX/mnt" "the mount point before run"
run "$FIXTURE" run --keydir "$FX/keys" "$FX/data" "$FX/mnt" -- \
	sh -c 'cd "$REKEYFS_MNT" && sha256sum -c --quiet "$0" && cat ks1/t2/mixed.dat >/dev/null' "$FX/manifest.sha256"
assert_rc 0 "rekeyfs-fixture run (README form, missing mount point): $(tail -n 5 "$T_ERR")"
[ -d "$FX/mnt" ] || fail "run did not create the mount point"
rkfx_is_mounted "$FX/mnt" && fail "the fixture is still mounted after run"
stored_sums >"$T_TMP/after"
diff "$T_TMP/before" "$T_TMP/after" >"$T_OUT" || fail "reading through run changed stored files: $(head -n 6 "$T_OUT")"
ok "$(wc -l <"$T_TMP/after") stored files unchanged"

checking "by default writes are refused"
run "$FIXTURE" run --keydir "$FX/keys" "$FX/data" "$FX/mnt" -- sh -c 'echo new >"$REKEYFS_MNT/new.txt"'
assert_rc_nonzero "a write through a default run"
assert_not_exists "$FX/data/new.txt" "a file written through a default run"
stored_sums >"$T_TMP/after"
diff -q "$T_TMP/before" "$T_TMP/after" >/dev/null || fail "a refused write changed stored files"

checking "run --writable allows writes"
run "$FIXTURE" run --writable --keydir "$FX/keys" "$FX/data" "$FX/mnt" -- \
	sh -c 'echo new >"$REKEYFS_MNT/ks1/t1/new.txt" && cat "$REKEYFS_MNT/ks1/t1/new.txt"'
assert_rc 0 "a write through run --writable: $(tail -n 5 "$T_ERR")"
assert_out_has "^new$" "the new file reads back"
is_chunk_file "$FX/data/ks1/t1/new.txt" || fail "the file written through run --writable is not a stored chunk file"
run "$FIXTURE" --help
assert_out_has "--writable" "--help documents --writable"
finish
