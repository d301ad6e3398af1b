#!/bin/bash
# Coverage and release for both key layers, and compromised keys (issue 16,
# item 3), offline except where noted:
#   - release of a key is refused while a format 2 header wraps a data key
#     under it even though no chunk is sealed under it (an empty and an
#     all-holes file), naming a file; fsck --key --json agrees; allowed
#     after rotate --rewrap
#   - mark-compromised (offline): fsck text/JSON and keys report the
#     exposed chunks; a rewrap does not clear them; release of the
#     compromised key is allowed once nothing needs it, and the exposure
#     stays reported; a reseal clears it; unmark-compromised clears the mark
#   - through a mount: mark-compromised via the control file, the metrics
#     (rekeyfs_exposed_chunks, rekeyfs_wrapped_files) pass promtool
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd python3 promtool
integ_setup
for k in key3 key4 key5; do
	run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 $k
	assert_rc 0 "createkey $k"
done
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16 key1
mount_fs "$DATA" "$MNT"
: >"$MNT/empty" || fail "create empty"
truncate -s 1M "$MNT/holes" || fail "create holes"
umount_fs "$MNT"
fsck_json() { # fsck_json PYEXPR ARGS...: evaluate PYEXPR on d = fsck --json
	local expr=$1
	shift
	rekeyctl fsck -d "$KEYS" --json "$@" "$DATA" >"$T_TMP/fsck.json" 2>"$T_TMP/fsck.err"
	python3 "$TEST_SRCDIR/fsck/check_schema.py" "$T_TMP/fsck.json" >"$T_TMP/schema.out" 2>&1 ||
		fail "fsck --json $* does not pass check_schema.py: $(cat "$T_TMP/schema.out")"
	python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($expr)" "$T_TMP/fsck.json"
}

checking "release refused while format 2 headers wrap a data key under key1 with no chunk under it"
run rekeyctl alter -d "$KEYS" "$DATA" --key key3
assert_rc 0 "alter / to key3"
run rekeyctl release-key -d "$KEYS" key1 "$DATA"
assert_rc_nonzero "release of key1 with wrapped data keys"
assert_err_has "refused: 0 chunk\(s\) in 2 file\(s\) are still under it \(/[a-z]+ \(no chunk: its header wraps a data key under it\)" "names a file"
assert_err_has "2 format 2 header\(s\) wrap a data key under it" "counts the headers"
q=$(fsck_json '"%s %s %s" % (d["key_query"]["may_release"], d["key_query"]["chunks"], d["key_query"]["wrapped_files"])' --key key1)
assert_eq "False 0 2" "$q" "fsck --key key1 --json: may_release chunks wrapped_files"
w=$(fsck_json '[k["wrapped_files"] for k in d["tables"][0]["keys"] if k["name"] == "key1"]')
assert_eq "[2]" "$w" "the wrap layer of table / under key1"
run rekeyctl fsck -d "$KEYS" --key key1 "$DATA"
assert_out_has "key key1 may NOT be released: no chunk is under it, but 2 format 2 headers wrap a data key under it" "fsck text answer"

checking "after rotate --rewrap the release of key1 is allowed"
run rekeyctl rotate -d "$KEYS" --rewrap --from key1 --to key3 --release "$DATA"
assert_rc 0 "rotate --rewrap --release (stderr: $(cat "$T_ERR"))"
assert_out_has "key 'key1' released" "released"

checking "mark-compromised offline: fsck, JSON and keys report the exposed chunks"
mount_fs "$DATA" "$MNT"
for i in 1 2 3; do head -c $((40000 * i)) /dev/urandom >"$MNT/f$i" || fail "write f$i"; done
umount_fs "$MNT"
run rekeyctl mark-compromised -d "$KEYS" key3 "$DATA"
assert_rc 0 "mark-compromised key3 (stderr: $(cat "$T_ERR"))"
grep -Eq "^key key3 .* compromised=yes$" "$DATA/.rekeyfs/keys" || fail "registry: $(cat "$DATA/.rekeyfs/keys")"
run rekeyctl mark-compromised -d "$KEYS" nosuchkey "$DATA"
assert_rc_nonzero "mark-compromised of an unknown key"
N=$(fsck_json 'd["total"]["chunks"]')
[ "$N" -gt 0 ] || fail "no chunks: $N"
x=$(fsck_json '"%s %s %s" % (d["total"]["exposed"][0]["key"], d["total"]["exposed"][0]["chunks"], d["total"]["exposed"][0]["files"])')
assert_eq "key3 $N 3" "$x" "JSON total.exposed"
x=$(fsck_json '[(k["compromised"], k["exposed_chunks"]) for k in d["keys"] if k["name"] == "key3"]')
assert_eq "[(True, $N)]" "$x" "JSON keys[key3]"
run rekeyctl fsck -d "$KEYS" "$DATA"
assert_out_has "^key key3 is marked compromised: $N chunks in 3 files are sealed under data keys it wrapped; a rewrap does not clear them; run rotate without --rewrap" "fsck text verdict"
run rekeyctl keys -d "$KEYS" "$DATA"
assert_out_has "^key key3 is marked compromised: $N chunks in 3 files" "keys"
rekeyctl keys -d "$KEYS" --json "$DATA" >"$T_TMP/keys.json" || fail "keys --json"
x=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print([(k["compromised"], k["exposed_chunks"], k["exposed_files"]) for k in d["keys"] if k["name"] == "key3"])' "$T_TMP/keys.json")
assert_eq "$x" "[(True, $N, 3)]" "keys --json: key3 compromised with its exposure"

checking "a rewrap does not clear the exposure; release of the compromised key keeps it reported"
run rekeyctl rotate -d "$KEYS" --rewrap --from key3 --to key4 --release "$DATA"
assert_rc 0 "rotate --rewrap key3 -> key4 --release (stderr: $(cat "$T_ERR"))"
run rekeyctl fsck -d "$KEYS" "$DATA"
assert_out_has "^key key3 is marked compromised: $N chunks in 3 files are sealed under data keys it wrapped \(the key is released, the exposure stays\)" "still exposed after the rewrap and the release"

checking "a reseal clears the exposure"
run rekeyctl rotate -d "$KEYS" --from key4 --to key5 "$DATA"
assert_rc 0 "rotate key4 -> key5 (reseal; stderr: $(cat "$T_ERR"))"
x=$(fsck_json 'd["total"]["exposed"][0]["chunks"]')
assert_eq "0" "$x" "exposed chunks after the reseal"
run rekeyctl fsck -d "$KEYS" "$DATA"
assert_out_has "^key key3 is marked compromised: no chunk is sealed under a data key it wrapped" "fsck after the reseal"

checking "through a mount: mark-compromised via the control file, metrics pass promtool"
mount_fs "$DATA" "$MNT"
run rekeyctl mark-compromised -d "$KEYS" key5 "$MNT"
assert_rc 0 "mark-compromised key5 through the mount (stderr: $(cat "$T_ERR"))"
assert_out_has "key 'key5' marked compromised" "the daemon's reply"
grep -Eq "^key key5 .* compromised=yes$" "$DATA/.rekeyfs/keys" || fail "registry: $(cat "$DATA/.rekeyfs/keys")"
rekeyctl metrics --refresh "$MNT" >"$T_TMP/m.prom" || fail "rekeyctl metrics --refresh"
promtool check metrics <"$T_TMP/m.prom" >"$T_TMP/promtool.out" 2>&1 ||
	fail "promtool check metrics: $(cat "$T_TMP/promtool.out")"
grep -Eq '^rekeyfs_exposed_chunks\{.*table="/".*key="key5".*\} '"$N"'$' "$T_TMP/m.prom" ||
	fail "no rekeyfs_exposed_chunks for key5 = $N: $(grep exposed "$T_TMP/m.prom")"
grep -Eq '^rekeyfs_wrapped_files\{.*table="/".*key="key5".*\} 5$' "$T_TMP/m.prom" ||
	fail "no rekeyfs_wrapped_files for key5 = 5: $(grep wrapped "$T_TMP/m.prom")"
grep -Eq '^rekeyfs_key_compromised\{.*key="key3".*\} 1$' "$T_TMP/m.prom" || fail "key3 not compromised in metrics"

checking "status shows the same coverage: wrapped files and exposure per table and key, text and JSON"
run rekeyctl status --json "$MNT"
assert_rc 0 "status --json"
python3 - "$T_OUT" "$N" >"$T_TMP/st.check" 2>&1 <<'PY' || fail "status JSON coverage: $(cat "$T_TMP/st.check")"
import json, sys
d = json.load(open(sys.argv[1])); n = int(sys.argv[2])
c = d["coverage"]
assert c is not None, "no coverage after metrics --refresh"
t = [x for x in c["tables"] if x["path"] == "/"][0]
k5 = [k for k in t["keys"] if k["key"] == "key5"][0]
assert k5["wrapped_files"] == 5, k5
e = [x for x in t["exposed"] if x["key"] == "key5"]
assert e and e[0]["chunks"] == n, t["exposed"]
r = {k["key"]: k for k in c["keys"]}
assert r["key5"]["compromised"] is True and r["key5"]["exposed_chunks"] == n and r["key5"]["unused"] is False, r["key5"]
assert r["key3"]["compromised"] is True, r["key3"]
PY
run rekeyctl status --refresh "$MNT"
assert_rc 0 "status --refresh (stderr: $(cat "$T_ERR"))"
assert_out_has "^coverage: counted " "coverage section"
assert_out_has "^    key key5 .* data keys wrapped under it in 5 file\\(s\\)$" "per-table wrapped files"
assert_out_has "^    EXPOSED by compromised key key5: $N chunk\\(s\\)" "per-table exposure"
assert_out_has "^  key key5 .*COMPROMISED: $N chunk\\(s\\)" "per-key exposure"
run rekeyctl unmark-compromised -d "$KEYS" key5 "$MNT"
assert_rc 0 "unmark-compromised key5 through the mount"
umount_fs "$MNT"
grep -Eq "^key key5 .* compromised=yes$" "$DATA/.rekeyfs/keys" && fail "key5 still marked: $(cat "$DATA/.rekeyfs/keys")"

checking "unmark-compromised offline clears the mark and the report"
run rekeyctl unmark-compromised -d "$KEYS" key3 "$DATA"
assert_rc 0 "unmark-compromised key3"
run rekeyctl fsck -d "$KEYS" "$DATA"
if grep -q "marked compromised" "$T_OUT"; then fail "fsck still reports a compromised key: $(cat "$T_OUT")"; fi

checking "format 1 files (golden fixtures): no wrap layer, release and exposure by their chunks as before"
cp "$TEST_SRCDIR/golden/keys/golden_aes256" "$KEYS/" && chmod 600 "$KEYS/golden_aes256" || fail "golden key"
V1="$T_TMP/v1"
new_datadir "$V1" 16 golden_aes256
cp "$TEST_SRCDIR/golden/files/one-chunk.txt" "$TEST_SRCDIR/golden/files/empty" "$V1/" || fail "copy golden files"
run rekeyctl fsck -d "$KEYS" "$V1"
assert_rc 0 "fsck of the format 1 files: $(cat "$T_OUT")"
assert_out_has "^    golden_aes256 +ok +1 +.* +1 +-  target$" "no wrap layer: WRAPPED is -"
DATA=$V1
x=$(fsck_json '"%s %s" % (d["total"]["v2_files"], [k["wrapped_files"] for k in d["keys"]])')
assert_eq "0 [0]" "$x" "JSON: no format 2 file, nothing wrapped"
run rekeyctl alter -d "$KEYS" "$V1" --key key5
assert_rc 0 "alter the format 1 directory to key5"
run rekeyctl release-key -d "$KEYS" golden_aes256 "$V1"
assert_rc_nonzero "release with a format 1 chunk under the key"
assert_err_has "refused: 1 chunk\(s\) in 1 file\(s\) are still under it \(/one-chunk.txt\); 0 format 2 header" "the format 1 empty file does not block"
run rekeyctl mark-compromised -d "$KEYS" golden_aes256 "$V1"
assert_rc 0 "mark-compromised golden_aes256"
run rekeyctl fsck -d "$KEYS" "$V1"
assert_out_has "^key golden_aes256 is marked compromised: 1 chunk in 1 file is sealed under data keys it wrapped" "format 1 chunks are exposed (derived subkeys)"

checking "online: empty files a rekey cannot replace (hard links, held open) do not keep the old key forever"
# the sweep rekeys them in place; their headers must stop wrapping under
# key4, or rotate --release refuses for ever (found on 2026-11-29)
D2="$T_TMP/d2"
M2="$T_TMP/m2"
new_datadir "$D2" 16 key4
mount_fs "$D2" "$M2"
: >"$M2/e" && ln "$M2/e" "$M2/e.link" || fail "hard-linked empty file"
truncate -s 1M "$M2/h" && ln "$M2/h" "$M2/h.link" || fail "hard-linked all-holes file"
: >"$M2/held" || fail "held empty file"
printf 'data\n' >"$M2/d" && ln "$M2/d" "$M2/d.link" || fail "hard-linked file with data"
python3 - "$M2/held" "$T_TMP/held.ready" "$T_TMP/held.go" <<'PY' &
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
open(sys.argv[2], "w").close()
deadline = time.time() + 120
while not os.path.exists(sys.argv[3]) and time.time() < deadline:
    time.sleep(0.05)
os.close(fd)
PY
HOLDER=$!
bg_register "$HOLDER"
wait_until 30 "the holder did not open the file within 30 s" test -e "$T_TMP/held.ready"
run rekeyctl rotate -d "$KEYS" --from key4 --to key5 --release "$M2"
assert_rc 0 "rotate --release with hard-linked and held empty files (stderr: $(cat "$T_ERR"))"
assert_out_has "key 'key4' released" "key4 released"
touch "$T_TMP/held.go"
wait "$HOLDER" || fail "the holder failed"
bg_forget "$HOLDER"
[ "$(stat -c %s "$M2/e") $(stat -c %s "$M2/h") $(stat -c %s "$M2/held")" = "0 1048576 0" ] || fail "sizes changed"
cmp "$M2/h" <(head -c 1048576 /dev/zero) || fail "the all-holes file does not read as zeros"
[ "$(cat "$M2/d.link")" = data ] || fail "the file with data"
[ "$(stat -c %i "$D2/e")" = "$(stat -c %i "$D2/e.link")" ] || fail "the hard links were split"
umount_fs "$M2"
run rekeyctl fsck -d "$KEYS" --key key4 "$D2"
assert_out_has "^key key4 is already released, and no chunk is under it$" "no chunk and no header under key4 any more"
finish
