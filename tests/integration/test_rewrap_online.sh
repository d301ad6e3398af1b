#!/bin/bash
# rekeyctl rotate --rewrap on a MOUNT (issue 16, item 2, online half): the
# daemon's walker rewraps every data key wrapped under the old key to the
# new one, headers only, through the daemon's open files.
#   - refused before anything changes when NEW's cipher differs
#   - a mount with format 1 files (golden fixtures) and format 2 files in two
#     tables, two of them held open and written (with fsync) during the rewrap
#   - rate limited (walker_rate counts 8 KiB of headers per file), paused:
#     status shows paused and files_done stays; release-key of the old key is
#     refused meanwhile; resumed unlimited, --wait ends complete, every
#     --progress-json line parses (mode rewrap, files_done/files_total)
#   - afterwards: fsck finds no header wrapping a data key under the old key,
#     release-key is allowed, every byte reads back (also the files written
#     during the rewrap), and remounted with the old key's file gone
#   - kill -9 of the daemon in the middle of the walker's rewrap: between the
#     two header copies of a file (rewrap.first-copy), then again while the
#     resumed rewrap goes on (walker.rewrap-file-done); the next mount resumes
#     and finishes, every byte intact
# The offline half's kill -9 points (rewrap.first-copy,
# offline-rewrap.file-done) are tested by test_rewrap.sh.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd md5sum python3
integ_setup
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 key3
assert_rc 0 "createkey key3"
OLD=golden_aes256
cp "$TEST_SRCDIR/golden/keys/$OLD" "$KEYS/" && chmod 600 "$KEYS/$OLD" || fail "golden key"

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16 "$OLD"
mkdir -p "$DATA/ks/t1"
run rekeyctl alter -d "$KEYS" "$DATA/ks/t1" --key "$OLD"
assert_rc 0 "alter t1"
# format 1 files, as an older rekeyfs wrote them
for f in one-chunk.txt compressible.txt appended.txt empty; do
	cp "$TEST_SRCDIR/golden/files/$f" "$DATA/v1-$f" || fail "copy golden $f"
done
cp "$TEST_SRCDIR/golden/files/sparse.bin" "$DATA/ks/t1/v1-sparse.bin" || fail "copy golden sparse.bin"
mount_fs "$DATA" "$MNT"
python3 - "$MNT" <<'PY' || fail "writing the files"
import os, random, sys
r = random.Random(16)
for i in range(24):
    d = "ks/t1" if i % 2 else "."
    with open(os.path.join(sys.argv[1], d, "f%02d" % i), "wb") as f:
        f.write(r.randbytes(r.randrange(1, 60000)))
for n in ("w1", "w2"):
    with open(os.path.join(sys.argv[1], "ks/t1", n), "wb") as f:
        f.write(r.randbytes(40000))
PY
sums() { (cd "$MNT" && find . -path ./.rekeyfs -prune -o -type f ! -name 'w[12]' -print0 | sort -z | xargs -0 md5sum); }
sums >"$T_TMP/sums" || fail "checksums"
[ "$(wc -l <"$T_TMP/sums")" -eq 29 ] || fail "expected 29 files: $(cat "$T_TMP/sums")"
fsck_json() { # MOUNT_OR_DIR EXPR: EXPR on rekeyctl fsck --json (d)
	rekeyctl fsck -d "$KEYS" --json "$1" >"$T_TMP/fsck.json" 2>"$T_TMP/fsck.err"
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$T_TMP/fsck.json" "$2" ||
		fail "fsck --json $1: $(head -c 1500 "$T_TMP/fsck.json") $(cat "$T_TMP/fsck.err")"
}
wrapped_under() { fsck_json "$1" 'sum(k["wrapped_files"] for k in d["keys"] if k["name"] == "'"$2"'")'; }
x=$(wrapped_under "$MNT" "$OLD")
[ "$x" -ge 20 ] || fail "before: expected format 2 headers wrapping under $OLD, fsck says $x"

checking "rotate --rewrap to a key of another cipher is refused on a mount before anything changes"
run rekeyctl rotate -d "$KEYS" --rewrap --from "$OLD" --to key2 "$MNT"
assert_rc_nonzero "rewrap to ChaCha20"
assert_err_has "differ in cipher or strength" "says why"
status
[ "$(sget '" ".join(t["key"] for t in d["tables"])')" = "$OLD $OLD" ] || fail "a refused rewrap altered tables: $(sget 'd["tables"]')"
run rekeyctl rotate -d "$KEYS" --rewrap --reseal --from "$OLD" --to key3 "$MNT"
assert_rc_nonzero "--rewrap with --reseal"
assert_err_has "exclude each other" "says why"

checking "online rewrap while two files are open and written: rate, pause, resume, progress JSON"
# the writer: overwrites and appends with fsync to w1 and w2, held open, until told to stop
python3 - "$MNT/ks/t1" "$T_TMP" <<'PY' &
import os, random, sys, time
d, tmp = sys.argv[1], sys.argv[2]
r = random.Random(7)
fds = {n: os.open(os.path.join(d, n), os.O_RDWR) for n in ("w1", "w2")}
shadow = {}
for n, fd in fds.items():
    shadow[n] = bytearray(os.pread(fd, 1 << 20, 0))
open(os.path.join(tmp, "writer.ready"), "w").close()
deadline = time.time() + 120
rounds = 0
while (not os.path.exists(os.path.join(tmp, "writer.stop")) or rounds < 10) and time.time() < deadline:
    for n, fd in fds.items():
        b = r.randbytes(r.randrange(1, 5000))
        off = r.randrange(0, len(shadow[n]) + 1)
        os.pwrite(fd, b, off)
        shadow[n][off:off + len(b)] = b
        os.fsync(fd)
    rounds += 1
    time.sleep(0.02)
for n, fd in fds.items():
    os.close(fd)
    open(os.path.join(tmp, "shadow." + n), "wb").write(shadow[n])
open(os.path.join(tmp, "writer.done"), "w").close()
PY
WRITER=$!
bg_register "$WRITER"
wait_until 30 "the writer did not open its files" test -e "$T_TMP/writer.ready"
run rekeyctl throttle "$MNT" 16K
assert_rc 0 "throttle 16K: two files a second"
rekeyctl rotate -d "$KEYS" --rewrap --from "$OLD" --to key3 --wait --progress-json "$MNT" >"$T_TMP/rot.json" 2>"$T_TMP/rot.err" &
ROT=$!
bg_register "$ROT"
_rewrap_started() {
	status
	WAIT_WHY=$(cat "$T_TMP/status.json")
	[ "$(sget 'd["walker"]["mode"] == "rewrap" and d["walker"]["state"] == "running" and d["walker"]["files_done"] >= 1')" = true ]
}
wait_until 30 "the online rewrap did not start" _rewrap_started
[ "$(sget 'd["walker"]["rewrap_from"] + " " + d["walker"]["rewrap_to"]')" = "$OLD key3" ] ||
	fail "status names the rewrap's keys: $(sget 'd["walker"]')"
run rekeyctl pause "$MNT"
assert_rc 0 "pause"
_paused() { status; WAIT_WHY=$(cat "$T_TMP/status.json"); [ "$(sget 'd["walker"]["state"]')" = paused ]; }
wait_until 10 "the rewrap did not pause" _paused
n1=$(sget 'd["walker"]["files_done"]')
t1=$(sget 'd["walker"]["files_total"]')
[ "$t1" -ge 29 ] || fail "files_total $t1 (expected the 31 files of both tables)"
[ "$n1" -lt "$t1" ] || fail "the rewrap ended before the pause ($n1 of $t1): the rate is not applied"
run rekeyctl status "$MNT"
assert_rc 0 "status"
assert_out_has "^rewrap: data keys wrapped under $OLD to key3 \(headers only\): [0-9]+/3[01] files done" "rekeyctl status shows the rewrap's progress"
run rekeyctl release-key -d "$KEYS" "$OLD" "$MNT"
assert_rc_nonzero "release-key of $OLD during the rewrap"
assert_err_has "refused" "release refused while headers wrap under $OLD"
sleep 1 # a paused sweep must not move (a check that can only miss, never fail wrongly)
status
[ "$(sget 'd["walker"]["files_done"]')" = "$n1" ] || fail "files_done moved while paused: $n1 -> $(sget 'd["walker"]["files_done"]')"
[ "$(sget 'd["walker"]["state"]')" = paused ] || fail "not paused any more"
run rekeyctl throttle "$MNT" 0
assert_rc 0 "throttle unlimited"
run rekeyctl resume "$MNT"
assert_rc 0 "resume"
wait_until 60 "rotate --rewrap --wait did not end" eval '! kill -0 $ROT 2>/dev/null'
wait "$ROT"
rc=$?
[ "$rc" -eq 0 ] || fail "rotate --rewrap --wait exit $rc: $(cat "$T_TMP/rot.err")"
grep -q "^verify: no chunk" "$T_TMP/rot.err" || fail "rotate did not verify: $(cat "$T_TMP/rot.err")"
python3 - "$T_TMP/rot.json" <<'PY' || fail "progress JSON: $(head -c 2000 "$T_TMP/rot.json")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) >= 2, lines
for l in lines:
    assert l["mode"] == "rewrap" and "files_done" in l and "files_total" in l, l
assert any(l["state"] == "paused" for l in lines), "no paused line"
assert lines[-1]["result"] == "complete" and lines[-1]["files_done"] >= 29, lines[-1]
PY
touch "$T_TMP/writer.stop"
wait_until 60 "the writer did not finish" test -e "$T_TMP/writer.done"
status
[ "$(sget 'd["walker"]["result"] + " " + str(d["walker"]["files_rewrapped"] >= 29)')" = "complete True" ] ||
	fail "status after the rewrap: $(sget 'd["walker"]')"

checking "after the rewrap: no header wraps under $OLD, release allowed, every byte intact"
x=$(wrapped_under "$MNT" "$OLD")
assert_eq "$x" 0 "headers wrapping a data key under $OLD after the rewrap"
run rekeyctl release-key -d "$KEYS" "$OLD" "$MNT"
assert_rc 0 "release-key $OLD after the rewrap: $(cat "$T_ERR")"
evict "$MNT"
(cd "$MNT" && md5sum -c --quiet "$T_TMP/sums") >"$T_TMP/sums.out" 2>&1 || fail "files differ: $(head -c 1500 "$T_TMP/sums.out")"
for n in w1 w2; do cmp "$MNT/ks/t1/$n" "$T_TMP/shadow.$n" || fail "$n written during the rewrap differs"; done
umount_fs "$MNT"
mv "$KEYS/$OLD" "$T_TMP/old.away" || fail "moving $OLD away"
mount_fs "$DATA" "$MNT"
(cd "$MNT" && md5sum -c --quiet "$T_TMP/sums") >"$T_TMP/sums.out" 2>&1 || fail "without $OLD: $(head -c 1500 "$T_TMP/sums.out")"
for n in w1 w2; do cmp "$MNT/ks/t1/$n" "$T_TMP/shadow.$n" || fail "$n differs without $OLD"; done
umount_fs "$MNT"

checking "kill -9 during the walker's rewrap (between a file's header copies, then between files): it resumes and finishes"
D2="$T_TMP/d2"
MNT="$T_TMP/m2"
new_datadir "$D2" 16 key1
mount_fs "$D2" "$MNT"
python3 -c '
import os, random, sys
r = random.Random(2)
for i in range(20):
    open(os.path.join(sys.argv[1], "g%02d" % i), "wb").write(r.randbytes(r.randrange(1, 40000)))' "$MNT" || fail "writing"
sums >"$T_TMP/sums2" || fail "checksums"
umount_fs "$MNT"
export REKEYFS_CRASHPOINT="rewrap.first-copy:4"
mount_fs "$D2" "$MNT"
unset REKEYFS_CRASHPOINT
run rekeyctl rotate -d "$KEYS" --rewrap --from key1 --to key3 "$MNT"
assert_rc 0 "rotate --rewrap (no wait): $(cat "$T_ERR")"
crashed_at "rewrap.first-copy:4"
grep -q "crash point rewrap.first-copy reached" "$LAST_LOG" || fail "the daemon died elsewhere: $(tail -5 "$LAST_LOG")"
export REKEYFS_CRASHPOINT="walker.rewrap-file-done:3"
mount_fs "$D2" "$MNT"
unset REKEYFS_CRASHPOINT
crashed_at "walker.rewrap-file-done:3"
grep -q "resuming sweep" "$LAST_LOG" || fail "the second mount did not resume the rewrap: $(tail -5 "$LAST_LOG")"
mount_fs "$D2" "$MNT"
wait_idle 60 "the resumed rewrap"
[ "$(sget 'd["walker"]["mode"] + " " + d["walker"]["result"]')" = "rewrap complete" ] ||
	fail "after the resume: $(sget 'd["walker"]')"
grep -q "resuming sweep" "$LAST_LOG" || fail "the third mount did not resume the rewrap"
(cd "$MNT" && md5sum -c --quiet "$T_TMP/sums2") >"$T_TMP/sums.out" 2>&1 || fail "after the kills: $(head -c 1500 "$T_TMP/sums.out")"
x=$(wrapped_under "$MNT" key1)
assert_eq "$x" 0 "headers wrapping under key1 after the resumed rewrap"
run rekeyctl rotate -d "$KEYS" --rewrap --from key1 --to key3 --release "$MNT"
assert_rc 0 "rotate --rewrap --release again after the resumed rewrap: $(cat "$T_ERR")"
assert_out_has "^release: key 'key1' released" "the online rotate --rewrap --release releases key1"
umount_fs "$MNT"
run rekeyctl fsck -d "$KEYS" "$D2"
assert_rc 0 "offline fsck after the resumed rewrap: $(cat "$T_OUT")"
finish
