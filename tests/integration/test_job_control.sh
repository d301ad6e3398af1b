#!/bin/bash
# Job control of the walker (issue 12, items 1, 3, 5, 10):
#   - rates take units (-o walker_rate= and the control command `rate`);
#     anything else is refused with a message naming the value
#   - progress moves inside one large file during a whole-file rewrite at a
#     low rate (current_offset grows between two status reads)
#   - a rekey for table B while a sweep of table A runs is queued (the reply
#     names the serving sweep) and served: B ends with 0 chunks off target
#   - pause stops bytes_done, resume moves it; at 1 byte/s the sweep is
#     stuck, `rate 0` lets it finish within seconds (the old throttle slept
#     for the whole chunk: over an hour), unmount while throttled at 1 B/s
#     is quick
#   - an alter of a table while a sweep runs queues a sweep of it
#   - the run-time rate, a pause and a queued request survive a remount; an
#     explicit -o walker_rate= wins
#   - a corrupt chunk: result incomplete, remaining_chunks > 0, a reason,
#     percent < 100, an errors entry naming the file and the chunk
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
M=$MNT
CS=4096
new_datadir "$DATA" 4
# w EXPR: EXPR on the walker object of $M/.rekeyfs/status (JSON out: true, null, [...])
w() {
	python3 -c 'import json,sys; w=json.load(open(sys.argv[1]))["walker"]; r=eval(sys.argv[2]); print(r if isinstance(r, str) else json.dumps(r))' \
		"$M/.rekeyfs/status" "$1"
}

checking "walker_rate= takes units at mount; a bad value is refused naming it"
mkdir -p "$MNT"
run rekeyfs -o "keydir=$KEYS,walker_rate=100X" "$DATA" "$MNT"
assert_rc_nonzero "mount with walker_rate=100X"
assert_err_has "walker_rate=100X" "the refusal names the value"
mountpoint -q "$MNT" && fail "mounted despite walker_rate=100X"
mount_fs "$DATA" "$MNT" "walker_rate=64KiB"
assert_eq "$(w 'w["rate_limit"]')" 65536 "rate_limit after walker_rate=64KiB"
ok "walker_rate=64KiB is 65536 bytes/s; $(head -c 150 "$T_ERR")"

checking "the rate command takes units and refuses anything else"
for r in "100M:104857600" "1GB:1000000000" "3K:3072" "unlimited:0" "0:0"; do
	reply=$(ctl "rate ${r%%:*}")
	case "$reply" in "ok walker "*", rate ${r#*:} bytes/s"*) ;; *) fail "rate ${r%%:*}: $reply" ;; esac
done
for r in "1.5M" "-1" "100 M" "1TB" "10x" ""; do
	reply=$(ctl "rate $r")
	case "$reply" in "error rate '${r%% *}'"*) ;; *) fail "rate '$r' was not refused: $reply" ;; esac
done
assert_eq "$(w 'w["rate_limit"]')" 0 "rate_limit after the refused values"
ok "$(ctl 'rate 1.5M')"

# /a: one 4 MiB file (1024 chunks), /b: four small files; both move to key2
mkdir -p "$MNT/a" "$MNT/b"
head -c 4M /dev/urandom >"$MNT/a/big" || fail "write /a/big"
for i in 1 2 3 4; do head -c 64K /dev/urandom >"$MNT/b/f$i" || fail "write /b/f$i"; done
cp "$MNT/a/big" "$T_TMP/big.exp"
sync
for t in a b; do
	run rekeyctl alter "$MNT/$t" --key key2
	assert_rc 0 "alter /$t --key key2"
done

checking "the status JSON has the schema id and every contract field"
status
assert_eq "$(sget 'd["schema"]')" "rekeyfs-status/1" "schema"
missing=$(sget '[k for k in ["state","sweep","finished_sweep","queued","selected_tables","bytes_done","bytes_total","chunks_done","chunks_total","files_done","files_total","chunks_failed","current_file","current_offset","rate_bytes_per_s","rate_limit","eta_s","started","finished","result","remaining_chunks","reason","waiting_for_space","chunks_rewritten_walker","chunks_rewritten_lazy","files_replaced","lazy_queued","lazy_dropped","error_count","tables","errors"] if k not in d["walker"]]')
assert_eq "$missing" "[]" "walker fields missing"
assert_eq "$(sget 'd["walker"]["state"]')" idle "state before any sweep"
ok "schema $(sget 'd["schema"]'), $(sget 'len(d["walker"])') walker fields"

checking "progress moves inside one large file during a whole-file rewrite at 256 KiB/s"
ctl "rate 256K" >/dev/null
reply=$(ctl "rekey /a")
case "$reply" in "ok sweep 1 started"*) ;; *) fail "rekey /a: $reply" ;; esac
_in_big() { WAIT_WHY=$(w 'w'); [ "$(w 'w["current_file"] == "/a/big" and (w["current_offset"] or 0) > 0')" = true ]; }
wait_until 10 "the sweep does not show a position inside /a/big" _in_big
o1=$(w 'w["current_offset"]')
_moved() { o2=$(w 'w["current_offset"] or 0'); WAIT_WHY="offset $o1 -> $o2"; [ "$o2" -gt "$o1" ] && [ "$(w 'w["current_file"]')" = /a/big ]; }
wait_until 5 "current_offset does not move inside /a/big" _moved
# the checkpoint is written at least once a second while the sweep runs,
# also in the middle of one large file
c1=$(stat -c %.9Y "$DATA/.rekeyfs/walker")
_ckpt() { c2=$(stat -c %.9Y "$DATA/.rekeyfs/walker"); WAIT_WHY="mtime $c1"; [ "$c2" != "$c1" ]; }
wait_until 4 "the checkpoint was not rewritten during the whole-file rewrite" _ckpt
status
echo "status during the whole-file rewrite: $(sget 'dict((k, d["walker"][k]) for k in ("state","current_file","current_offset","bytes_done","bytes_total","rate_bytes_per_s","rate_limit","eta_s"))')"
assert_eq "$(sget 'd["walker"]["bytes_total"]')" $((4 << 20)) "bytes_total of the sweep (fixed at the pre-scan)"
assert_eq "$(sget 'd["walker"]["tables"][0]["percent"] < 100')" true "percent while running"
ok "current_offset $o1 -> $o2 inside /a/big"
# from here sweep 1 is held at 1 byte/s (moved on only by the resume check
# below, at 64 KiB/s, and ended by "rate 0"): the queue and pause checks
# must see it running however slow or fast the machine is (at 256 KiB/s it
# could end before them on a loaded machine)
ctl "rate 1" >/dev/null

checking "a rekey of /b while sweep 1 runs is queued and says so; an unknown table is refused"
reply=$(ctl "rekey /b")
case "$reply" in "ok queued as sweep 2 after sweep 1"*) ;; *) fail "rekey /b during sweep 1: $reply" ;; esac
reply2=$(ctl "rekey /b")
case "$reply2" in "ok joins queued sweep 2"*) ;; *) fail "second rekey /b: $reply2" ;; esac
assert_eq "$(w 'w["queued"]')" '[{"sweep": 2, "tables": ["/b"]}]' "queued requests"
reply3=$(ctl "rekey /nope /b")
case "$reply3" in "error unknown table(s) /nope"*) ;; *) fail "rekey /nope: $reply3" ;; esac
ok "$reply / $reply2 / $reply3"

checking "pause stops bytes_done, resume moves it"
# moving again (64 KiB/s: more than 2 MiB of /a/big are left, half a minute)
ctl "rate 64K" >/dev/null
b0=$(w 'w["bytes_done"]')
_moving0() { b=$(w 'w["bytes_done"]'); WAIT_WHY="bytes_done $b0 -> $b"; [ "$b" -gt "$b0" ]; }
wait_until 10 "bytes_done does not move at 64 KiB/s" _moving0
reply=$(ctl pause)
case "$reply" in "ok walker paused"*) ;; *) fail "pause: $reply" ;; esac
# a chunk being copied when pause arrived ends: wait until nothing moves
_settled() { x=$(w 'w["bytes_done"]'); sleep 0.3; y=$(w 'w["bytes_done"]'); WAIT_WHY="bytes_done $x -> $y"; [ "$x" = "$y" ]; }
wait_until 10 "bytes_done does not settle after pause" _settled
b1=$(w 'w["bytes_done"]')
sleep 1.5
assert_eq "$(w 'w["state"]')" paused "state after pause"
assert_eq "$(w 'w["bytes_done"]')" "$b1" "bytes_done while paused"
ctl resume >/dev/null
_moving() { b2=$(w 'w["bytes_done"]'); WAIT_WHY="bytes_done $b1 -> $b2"; [ "$b2" -gt "$b1" ]; }
wait_until 10 "bytes_done does not move after resume" _moving
ctl "rate 1" >/dev/null
ok "paused at $b1 bytes, resumed to $b2"

checking "at 1 byte/s the sweep is stuck; rate 0 lets it finish within seconds"
ctl "rate 1" >/dev/null
sleep 0.5
b1=$(w 'w["bytes_done"]')
sleep 1.5
b2=$(w 'w["bytes_done"]')
[ "$b2" -le $((b1 + CS)) ] || fail "at 1 byte/s bytes_done moved from $b1 to $b2"
t0=$SECONDS
ctl "rate 0" >/dev/null
wait_sweep 10 1 "rate 0 after rate 1"
assert_eq "$(w 'w["result"]')" complete "result of sweep 1"
ok "sweep 1 ended $((SECONDS - t0)) s after rate 0"

checking "the queued sweep 2 serves /b: 0 chunks off target"
wait_sweep 20 2 "queued sweep 2"
status
assert_eq "$(sget 'd["walker"]["result"]')" complete "result of sweep 2"
assert_eq "$(sget 'd["walker"]["selected_tables"]')" '["/b"]' "tables of sweep 2"
assert_eq "$(sget '[(t["path"], t["remaining_chunks"], t["percent"], t["state"]) for t in d["walker"]["tables"]]')" \
	'[["/b", 0, 100.0, "finished"]]' "per-table result of sweep 2"
assert_eq "$(sget 'd["walker"]["remaining_chunks"]')" 0 "remaining_chunks"
assert_eq "$(sget 'd["walker"]["state"]')" finished "state after the sweeps"
cmp -s "$MNT/a/big" "$T_TMP/big.exp" || fail "/a/big differs after the rewrite"
sync
scan
assert_eq "$(scget "d['keys'].get('key1',{}).get('chunks',0)")" 0 "chunks under key1 (independent scan)"
ok "sweep 2: $(sget 'd["walker"]["tables"]' | head -c 200)"

checking "an alter of /b while sweep 3 runs queues a sweep of /b; unmount while throttled at 1 byte/s is quick"
run rekeyctl alter "$MNT/a" --key key1
assert_rc 0 "alter /a back to key1"
ctl "rate 1" >/dev/null
reply=$(ctl "rekey /a")
case "$reply" in "ok sweep 3 started"*) ;; *) fail "rekey /a: $reply" ;; esac
_stuck() { WAIT_WHY=$(w 'w'); [ "$(w 'w["current_file"] == "/a/big"')" = true ]; }
wait_until 10 "sweep 3 does not reach /a/big" _stuck
reply=$(ctl "alter /b key1")
case "$reply" in "ok table /b key=key1 "*"a sweep is running: queued as sweep 4 after sweep 3"*) ;; *) fail "alter /b during sweep 3: $reply" ;; esac
t0=$SECONDS
RKFX_TIMEOUT=10 umount_fs "$MNT"
[ $((SECONDS - t0)) -le 8 ] || fail "unmount took $((SECONDS - t0)) s"
ok "unmounted in $((SECONDS - t0)) s while throttled"

checking "the run-time rate, a pause and the queued request survive a remount; an explicit walker_rate= wins"
grep -qx "rate 1" "$DATA/.rekeyfs/walker" || fail "checkpoint lacks the rate: $(cat "$DATA/.rekeyfs/walker")"
mount_fs "$DATA" "$MNT"
assert_eq "$(w 'w["rate_limit"]')" 1 "rate_limit after the remount (set at run time)"
assert_eq "$(w '(w["state"], w["sweep"], w["queued"])')" '["running", 3, [{"sweep": 4, "tables": ["/b"]}]]' \
	"the interrupted sweep resumed, the queued request kept"
ctl pause >/dev/null
umount_fs "$MNT"
mount_fs "$DATA" "$MNT" "walker_rate=unlimited"
assert_eq "$(w 'w["rate_limit"]')" 0 "rate_limit with walker_rate=unlimited at mount"
assert_eq "$(w 'w["state"]')" paused "state after a remount of a paused sweep"
ctl resume >/dev/null
wait_sweep 20 4 "resumed sweep 3, then the queued sweep 4"
assert_eq "$(w '(w["result"], w["selected_tables"], w["state"])')" '["complete", ["/b"], "finished"]' "sweep 4"
ok "rate 1, the pause and the queued sweep came back after the remount; walker_rate=unlimited won"

checking "a corrupt chunk: result incomplete, remaining_chunks, reason, percent < 100, an error naming it"
umount_fs "$MNT"
# chunk 3 of /b/f2: flip a byte of its sealed payload
flip_byte "$DATA/b/f2" $((8192 + 3 * (CS + 64) + 40))
rekeyctl alter -d "$KEYS" "$DATA/b" --key key2 >/dev/null || fail "alter /b offline"
mount_fs "$DATA" "$MNT" "walker_rate=0"
reply=$(ctl "rekey /b")
case "$reply" in "ok sweep 5 started"*) ;; *) fail "rekey /b: $reply" ;; esac
wait_sweep 20 5 "sweep 5"
status
assert_eq "$(sget 'd["walker"]["result"]')" incomplete "result with a corrupt chunk"
assert_eq "$(sget 'd["walker"]["state"]')" incomplete "state word"
assert_eq "$(sget 'd["walker"]["remaining_chunks"] > 0')" true "remaining_chunks > 0"
assert_eq "$(sget 'd["walker"]["chunks_failed"]')" 1 "chunks_failed"
assert_eq "$(sget 'd["walker"]["reason"] is not None')" true "a reason"
assert_eq "$(sget 'd["walker"]["tables"][0]["percent"] < 100')" true "percent below 100"
assert_eq "$(sget '[(e["path"], e["chunk"]) for e in d["walker"]["errors"] if e["path"] == "/b/f2"][:1]')" '[["/b/f2", 3]]' \
	"an errors entry with the file and the chunk"
grep -q "walker: sweep 5 incomplete: .* remaining" "$LAST_LOG" || fail "no 'sweep 5 incomplete' log line"
ok "reason: $(sget 'd["walker"]["reason"]')"

checking "the outcome survives a remount"
umount_fs "$MNT"
mount_fs "$DATA" "$MNT" "walker_rate=0"
status
assert_eq "$(sget '(d["walker"]["finished_sweep"], d["walker"]["result"], d["walker"]["remaining_chunks"] > 0, d["walker"]["state"])')" \
	'[5, "incomplete", true, "incomplete"]' "status after the remount"
cp "$T_TMP/status.json" "$T_TMP/status.json.on"
umount_fs "$MNT"
ok "sweep 5 still incomplete after the remount"

checking "walker=off: state off, every field still there"
mount_fs "$DATA" "$MNT" "walker=off"
status
assert_eq "$(sget 'd["walker"]["state"]')" off "state with walker=off"
assert_eq "$(sget 'sorted(d["walker"])')" "$(json_get "$T_TMP/status.json.on" 'sorted(d["walker"])')" "walker fields with walker=off"
umount_fs "$MNT"
ok "$(sget 'len(d["walker"])') fields"
finish
