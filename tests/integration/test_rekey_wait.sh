#!/bin/bash
# rekeyctl job control on a mount (issue 12, items 2 and 7):
#   - throttle takes units (and refuses a bad rate naming it), pause and
#     resume print the daemon's reply and act: status says paused, the
#     --progress-json lines of a waiting `rekey --wait` say paused too
#   - rekey --wait --progress-json exits 0 when the sweep is complete, with
#     a final JSON line (result, remaining_chunks, reason)
#   - a sweep that gives up (a corrupt chunk): exit 1 with the remaining count
#   - the daemon going away while rekey --wait waits: exit 1 with a message
#   - refusals on a mount: unknown table (rekey), unknown key (fsck --key,
#     release-key)
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
M=$MNT
CS=4096
new_datadir "$DATA" 4
mount_fs "$DATA" "$MNT" "walker_rate=0"
mkdir -p "$MNT/a" "$MNT/b" || fail "mkdir"
head -c 1048576 /dev/urandom >"$MNT/a/f1" || fail "write a/f1"
head -c 65536 /dev/urandom >"$MNT/b/f2" || fail "write b/f2"
sync
for t in a b; do
	run rekeyctl alter "$MNT/$t" --key key2
	assert_rc 0 "alter /$t online"
done
# wstate: the walker's state word
wstate() { status "$MNT"; sget 'd["walker"]["state"]'; }

checking "throttle takes units and refuses a bad rate, naming it"
run rekeyctl throttle "$MNT" 10X
assert_rc 2 "throttle 10X"
assert_err_has "'10X' is not a rate" "the refusal names the rate"
run rekeyctl throttle "$MNT" 64KiB
assert_rc 0 "throttle 64KiB: $(cat "$T_ERR")"
status "$MNT"
assert_eq "$(sget 'd["walker"]["rate_limit"]')" 65536 "rate_limit after throttle 64KiB"

checking "refusals on a mount: unknown table, unknown key"
run rekeyctl rekey "$MNT" /nope
assert_rc 1 "rekey MOUNT /nope"
assert_err_has "/nope is not a table" "names the table"
run rekeyctl fsck --key nope "$MNT"
assert_rc 16 "fsck --key nope MOUNT"
assert_err_has "--key nope" "names the key"
run rekeyctl release-key nope "$MNT"
assert_rc 1 "release-key nope MOUNT"
assert_err_has "'nope'" "names the key"

checking "rekey --wait --progress-json with pause and resume: paused in status and in the JSON lines, exit 0"
rekeyctl rekey --wait --progress-json "$MNT" /a >"$T_TMP/wait.json" 2>"$T_TMP/wait.err" &
WPID=$!
bg_register $WPID
_running() { [ "$(wstate)" = running ]; }
wait_until 10 "the sweep did not start" _running
run rekeyctl pause "$MNT"
assert_rc 0 "pause"
assert_out_has "paused" "pause prints the daemon's reply"
_paused() { [ "$(wstate)" = paused ]; }
wait_until 5 "status does not say paused" _paused
_json_paused() { grep -q '"state": "paused"' "$T_TMP/wait.json"; }
wait_until 10 "no progress JSON line says paused: $(tail -2 "$T_TMP/wait.json")" _json_paused
run rekeyctl resume "$MNT"
assert_rc 0 "resume"
assert_out_has "running|resum" "resume prints the daemon's reply"
run rekeyctl throttle "$MNT" unlimited
assert_rc 0 "throttle unlimited"
_done() { ! kill -0 $WPID 2>/dev/null; }
wait_until 30 "rekey --wait did not return after the sweep" _done
wait $WPID
RC=$?
bg_forget $WPID
assert_rc 0 "rekey --wait (stderr: $(cat "$T_TMP/wait.err"))"
python3 - "$T_TMP/wait.json" <<'PY' || fail "JSON lines: $(head -c 2000 "$T_TMP/wait.json")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert len(lines) >= 2, lines
for l in lines[:-1]:
    assert "result" not in l and 0 <= l["percent"] < 100, l
    assert l["chunks_total"] is None or l["chunks_done"] <= l["chunks_total"], l
last = lines[-1]
assert (last["result"], last["remaining_chunks"], last["reason"]) == ("complete", 0, None), last
assert last["sweep"] == lines[0]["sweep"] > 0, last
PY

checking "a sweep that gives up (a corrupt chunk): rekey --wait exits 1 with the remaining count"
umount_fs "$MNT"
flip_byte "$DATA/b/f2" $((8192 + 3 * (CS + 64) + 40))
# /b targets key2 since the online alter; its chunks are still under key1
mount_fs "$DATA" "$MNT" "walker_rate=0"
run rekeyctl rekey --wait --progress-json "$MNT" /b
assert_rc 1 "rekey --wait of a table with a corrupt chunk"
assert_err_has "ended incomplete: [1-9][0-9]* chunk\(s\)" "the remaining count is printed"
python3 - "$T_OUT" <<'PY' || fail "final JSON line: $(tail -1 "$T_OUT")"
import json, sys
last = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
assert last["result"] == "incomplete" and last["remaining_chunks"] > 0 and last["reason"], last
PY

checking "rekey --wait on a terminal: a progress bar with percent, bytes, rate and ETA on stderr"
run rekeyctl alter "$MNT/a" --key key1
assert_rc 0 "alter /a back to key1"
run rekeyctl throttle "$MNT" 512KiB
assert_rc 0 "throttle 512KiB"
python3 - "$T_TMP/tty.out" rekeyctl rekey --wait "$MNT" /a <<'PY' || fail "rekey --wait on a pty failed: $(tr '\r' '\n' <"$T_TMP/tty.out" | tail -5)"
import os, pty, sys
out = open(sys.argv[1], "wb")
def rd(fd):
    b = os.read(fd, 4096)
    out.write(b)
    return b
st = pty.spawn(sys.argv[2:], rd)
sys.exit(os.waitstatus_to_exitcode(st))
PY
tr '\r' '\n' <"$T_TMP/tty.out" | grep -Eq '^rekey \[[#.]{20}\] +[0-9.]+%  [0-9.]+/[0-9.]+ MiB  [0-9.]+ MiB/s  ETA ' ||
	fail "no progress bar line: $(tr '\r' '\n' <"$T_TMP/tty.out" | head -5)"

checking "the daemon goes away while rekey --wait waits: exit 1 with a message"
run rekeyctl alter "$MNT/a" --key key2
assert_rc 0 "alter /a to key2 again"
run rekeyctl throttle "$MNT" 1
assert_rc 0 "throttle 1"
rekeyctl rekey --wait "$MNT" /a >"$T_TMP/gone.out" 2>"$T_TMP/gone.err" &
WPID=$!
bg_register $WPID
wait_until 10 "the sweep did not start" _running
umount_fs "$MNT"
wait_until 10 "rekey --wait did not notice the daemon went away" _done
wait $WPID
RC=$?
bg_forget $WPID
assert_rc 1 "rekey --wait after the unmount"
grep -q "went away" "$T_TMP/gone.err" || fail "no 'went away' message: $(cat "$T_TMP/gone.err")"
finish
