#!/bin/bash
# rekeyctl rotate: the whole rotation in one command (issue 12, item 4).
#   - online: a tree with several tables (three under key1, one under key3);
#     `rotate --from key1 --to key2 --release --wait --progress-json MOUNT`
#     alters the key1 tables, sweeps, verifies, releases key1: fsck clean,
#     key1 released in status, the key3 table untouched (still key3, its
#     chunks still under key3), every file identical
#   - idempotent: run again it says key1 is released; a rotate interrupted
#     after its alter (no --wait) is finished by running it again
#   - offline: `rotate --from key3 --to key5 --release DATADIR`
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd md5sum python3
integ_setup
for k in key3 key4 key5; do
	run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 $k
	assert_rc 0 "createkey $k"
done

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16 key1
mkdir -p "$DATA/ks/t1" "$DATA/ks/t2" "$DATA/ks/t3"
run rekeyctl alter -d "$KEYS" "$DATA/ks/t3" --key key3
assert_rc 0 "alter t3 to key3"
run rekeyctl alter -d "$KEYS" "$DATA/ks/t1" --key key1
assert_rc 0 "alter t1"
run rekeyctl alter -d "$KEYS" "$DATA/ks/t2" --key key1
assert_rc 0 "alter t2"
mount_fs "$DATA" "$MNT"
for d in ks/t1 ks/t2 ks/t3 .; do
	for i in 1 2 3; do
		head -c $((100000 * i + 777)) /dev/urandom >"$MNT/$d/f$i" || fail "write $d/f$i"
	done
done
sync
(cd "$MNT" && find . -path ./.rekeyfs -prune -o -type f -print0 | sort -z | xargs -0 md5sum) >"$T_TMP/sums"
[ "$(wc -l <"$T_TMP/sums")" -eq 12 ] || fail "expected 12 files: $(cat "$T_TMP/sums")"
check_sums() {
	evict "$MNT"
	(cd "$MNT" && md5sum -c --quiet "$T_TMP/sums") >"$T_TMP/sums.out" 2>&1 ||
		fail "$1: files differ after the rotation: $(head -c 1500 "$T_TMP/sums.out")"
}

checking "online rotate --from key1 --to key2 --release --wait --progress-json: every step, exit 0"
run rekeyctl rotate --from key1 --to key2 --release --wait --progress-json "$MNT"
assert_rc 0 "rotate online (stderr: $(cat "$T_ERR"))"
for step in "alter: table /: key1 -> key2" "alter: table /ks/t1" "alter: table /ks/t2" "^rekey: " "^verify: no chunk" "^release: "; do
	assert_err_has "$step" "rotate prints the step /$step/"
done
assert_err_lacks "table /ks/t3" "the key3 table is not altered"
python3 - "$T_OUT" <<'PY' || fail "rotate --progress-json lines: $(head -c 2000 "$T_OUT")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert lines and lines[-1]["result"] == "complete" and lines[-1]["remaining_chunks"] == 0, lines[-1:]
assert all(0 <= l["percent"] <= 100 for l in lines)
PY

checking "after the rotation: key1 released, tables on key2, the key3 table untouched, fsck clean, files identical"
status "$MNT"
assert_eq "$(sget '[k["state"] for k in d["keys"] if k["name"] == "key1"][0]')" released "key1 state in status"
assert_eq "$(sget '{t["path"]: t["key"] for t in d["tables"]}["/ks/t3"]')" key3 "t3 target"
for t in / /ks/t1 /ks/t2; do
	assert_eq "$(sget "{t[\"path\"]: t[\"key\"] for t in d[\"tables\"]}[\"$t\"]")" key2 "$t target"
done
run rekeyctl fsck "$MNT"
assert_rc 0 "fsck after rotate: $(cat "$T_OUT")"
run rekeyctl fsck --key key3 "$MNT"
assert_rc 1 "key3 still holds t3's chunks (fsck --key key3)"
check_sums "online rotate"

checking "rotate again: key1 is already released, nothing to do (exit 0)"
run rekeyctl rotate --from key1 --to key2 --release --wait "$MNT"
assert_rc 0 "second rotate"
assert_out_has "already released" "says key1 is released"

checking "an interrupted rotate (alter done, no --wait) is finished by running it again"
run rekeyctl rotate --from key2 --to key4 "$MNT"
assert_rc 0 "rotate without --wait"
assert_out_has "alter: table /ks/t1" "the first run alters"
run rekeyctl rotate --from key2 --to key4 --release "$MNT"
assert_rc 0 "the second run finishes (stderr: $(cat "$T_ERR"))"
assert_out_has "no table has key2 as target key \(already done\)" "the second run has nothing to alter"
assert_out_has "^verify: no chunk" "the second run verifies"
assert_out_has "^release: " "the second run releases key2"
status "$MNT"
assert_eq "$(sget '[k["state"] for k in d["keys"] if k["name"] == "key2"][0]')" released "key2 state in status"
check_sums "second online rotate"

checking "offline rotate --from key3 --to key5 --release DATADIR"
umount_fs "$MNT"
run rekeyctl rotate -d "$KEYS" --from key3 --to key5 --release "$DATA"
assert_rc 0 "offline rotate (stderr: $(cat "$T_ERR"))"
assert_out_has "alter: table /ks/t3: key3 -> key5" "offline alter step"
assert_out_has "^verify: no chunk" "offline verify step"
assert_out_has "key 'key3' released" "offline release step"
run rekeyctl keys -d "$KEYS" "$DATA"
assert_rc 0 "keys"
assert_out_has "^key3 .* released" "key3 released in the registry"
run rekeyctl fsck -d "$KEYS" "$DATA"
assert_rc 0 "offline fsck after the offline rotate"
mount_fs "$DATA" "$MNT"
check_sums "offline rotate"
umount_fs "$MNT"
finish
