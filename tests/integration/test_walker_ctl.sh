#!/bin/bash
# The walker's controls: -o rekey_on_mount starts a sweep at mount (Alfresco's
# bootstrap re-encryption), "pause" stops it making progress and "resume" lets
# it finish; a detached daemon logs to syslog.
set -u
. "$TEST_SRCDIR/integration/integ.bash"
need_root
need_cmd fusermount3
make_tmpdir
T=$T_TMP; K="$T/keys"; D="$T/data"; M="$T/mnt"
mkdir -p "$D" "$M"
rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k1 >/dev/null || fail "createkey k1"
rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k2 >/dev/null || fail "createkey k2"
rekeyctl init -d "$K" --key k1 "$D" >/dev/null || fail "init"
daemon_pid() { pgrep -f "rekeyfs .*keydir=$K" | head -1; }
unmount_wait() {
	local pid; pid=$(daemon_pid)
	mountpoint -q "$M" && fusermount3 -u "$M"
	for _ in $(seq 100); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
	fail "daemon $pid did not exit after unmount"
}
at_exit 'mountpoint -q "$M" && fusermount3 -uz "$M"; [ -n "${LOGPID:-}" ] && kill $LOGPID; [ -n "${OURLOG:-}" ] && rm -f /dev/log'

# data under k1, then the table points at k2 (offline)
rekeyfs -o "keydir=$K" "$D" "$M" || fail "mount"
# 24 files of 4 chunks: at 256 KiB/s the walker finishes about one a second
for i in $(seq 24); do head -c 256K /dev/urandom > "$M/f$i" || fail "write f$i"; cp "$M/f$i" "$T/f$i.exp"; done
unmount_wait
rekeyctl alter -d "$K" "$D" --key k2 >/dev/null || fail "alter"

# a syslog listener when no syslog daemon owns /dev/log
if [ ! -e /dev/log ]; then
	python3 - "$T/syslog.txt" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/dev/log")
with open(sys.argv[1], "ab", buffering=0) as f:
    while True:
        f.write(s.recv(65536) + b"\n")
PY
	LOGPID=$!; OURLOG=1
	for _ in $(seq 50); do [ -S /dev/log ] && break; sleep 0.1; done
fi

walker() { status_get '"%s %s" % (w["state"], w["chunks_rewritten_walker"])'; } # state, chunks rewritten by the walker

# detached, sweeping at mount, slowly (256 KiB/s: 6 MiB would take ~24 s)
rekeyfs -o "keydir=$K,rekey_on_mount,walker_rate=262144" "$D" "$M" || fail "mount with rekey_on_mount"
for _ in $(seq 100); do read -r st n < <(walker); [ "$st" = running ] && [ "$n" -gt 0 ] && break; sleep 0.1; done
[ "$st" = running ] && [ "$n" -gt 0 ] || fail "rekey_on_mount: walker is '$st' with $n chunks rewritten after 10 s"
echo "ok: rekey_on_mount started a sweep ($n chunks rewritten so far)"

reply=$(ctl pause); echo "$reply" | grep -q "^ok walker paused" || fail "pause: $reply"
sleep 0.5; read -r st n1 < <(walker); sleep 2.5; read -r st2 n2 < <(walker)
[ "$st2" = paused ] || fail "after pause the walker is '$st2'"
[ "$n1" = "$n2" ] || fail "paused walker kept rewriting chunks ($n1 -> $n2)"
echo "ok: pause holds the sweep at $n2 chunks"

reply=$(ctl resume); echo "$reply" | grep -q "^ok walker running" || fail "resume: $reply"
ctl "rate 0" >/dev/null
for _ in $(seq 300); do read -r st n < <(walker); [ "$st" = finished ] && break; sleep 0.2; done
[ "$st" = finished ] || fail "the resumed sweep did not finish (walker '$st', $n chunks)"
[ "$n" -gt "$n2" ] || fail "resume did not rewrite anything ($n2 -> $n)"
for i in $(seq 24); do cmp -s "$M/f$i" "$T/f$i.exp" || fail "f$i differs after the sweep"; done
echo "ok: resume finished the sweep; data identical"
unmount_wait

out=$(rekeyctl keys -d "$K" "$D") || fail "keys"
echo "$out" | awk '$1=="k1" {exit !($(NF-2)==0)}' || fail "chunks left under k1: $out"
echo "ok: no chunk left under k1"

if [ -n "${OURLOG:-}" ]; then
	grep -a -q "rekeyfs\[[0-9]*\]: mounted" "$T/syslog.txt" || fail "no 'mounted' line in syslog: $(head -c 500 "$T/syslog.txt")"
	grep -a -q "walker: sweep .* complete" "$T/syslog.txt" || fail "no sweep-finished line in syslog"
	echo "ok: the detached daemon logs to syslog"
else
	echo "note: /dev/log belongs to a syslog daemon here; the syslog check ran only where it is free"
fi
echo "PASS: test_walker_ctl"
