#!/bin/bash
# Online key rotation, the operator's workflow end to end (issue #4):
#
#   1. rekeyctl createkey new_key (the old keys stay in place)
#   2. rekeyctl alter MOUNT/TABLE --key new_key while mounted: new writes are
#      sealed under new_key at once
#   3. reads of chunks under an old key return their data and rewrite the
#      chunk under new_key (lazy rekey)
#   4. rekeyctl rekey MOUNT starts a sweep; a second request while it runs is
#      a no-op that says so; rekeyctl status shows progress per table, rate,
#      lazy and walker counts, errors
#   5. release-key is refused while chunks remain, then succeeds; the
#      registry marks the keys released
#   6. unmount, move the old keys out of the key directory, remount: every
#      byte reads back identical
#
# The fixture: a data directory with the root table and three tables, files
# under one, two and three keys (written under key1, then key2, then key3 by
# altering the tables online between writes).  While the rate-limited sweep
# runs, a background python worker keeps files open, reads them (evicting the
# page cache so reads reach the daemon) and appends to and overwrites them,
# comparing every read with an in-memory shadow copy.
#
# Reproduce: ROTATION_SEED=<printed seed> (CRASH_SEED is accepted too).
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd diff cmp dd
integ_setup

SEED="${ROTATION_SEED:-${CRASH_SEED:-$(( ($(date +%s) ^ $$) % 1000000 ))}}"
echo "rotation seed: $SEED (ROTATION_SEED=$SEED repeats this run)"
CKB=16
CS=$((CKB * 1024))
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
SHADOW="$T_TMP/shadow"
WORK="$T_TMP/work.py"
OLD_KEYS="key1 key2 key3"
mkdir -p "$SHADOW" "$MNT"

# ---- helpers --------------------------------------------------------------------------------
# seeded content: gen NAME SIZE > file
gen() {
	python3 -c '
import random, sys
seed, name, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
r = random.Random("%d:%s" % (seed, name))
out = bytearray()
while len(out) < n:
    if r.random() < 0.5:
        out += r.randbytes(min(4096, n - len(out)))
    else:
        out += ("row %08d %s\n" % (r.randrange(10**8), " ".join(r.choice(["alpha","bravo","charlie","delta","echo"]) for _ in range(6)))).encode()
sys.stdout.buffer.write(bytes(out[:n]))' "$SEED" "$1" "$2"
}
# put_both REL OFFSET SIZE TAG: write seeded bytes at OFFSET through the mount and into the shadow
put_both() {
	gen "$4:$1" "$3" >"$T_TMP/patch" || fail "gen"
	dd if="$T_TMP/patch" of="$MNT/$1" bs=65536 oflag=seek_bytes seek="$2" conv=notrunc status=none ||
		fail "writing $3 bytes at $2 of $1 through the mount"
	dd if="$T_TMP/patch" of="$SHADOW/$1" bs=65536 oflag=seek_bytes seek="$2" conv=notrunc status=none || fail "shadow write"
}
# app_both REL SIZE TAG: append through the mount and to the shadow
app_both() {
	gen "$3:$1" "$2" >"$T_TMP/patch" || fail "gen"
	cat "$T_TMP/patch" >>"$MNT/$1" || fail "appending $2 bytes to $1 through the mount"
	cat "$T_TMP/patch" >>"$SHADOW/$1"
}
# compare_tree: every file of SHADOW equals MNT/same path, and MNT has no other files
compare_tree() {
	diff -r --exclude=.rekeyfs "$SHADOW" "$MNT" >"$T_TMP/diff.out" 2>&1 ||
		fail "$1: the mount differs from the shadow copy: $(head -c 1500 "$T_TMP/diff.out")"
}
alter_online() { # PATH KEY
	run rekeyctl alter "$1" --key "$2"
	assert_rc 0 "rekeyctl alter $1 --key $2 (online)"
	assert_out_has "new writes are sealed under $2" "alter $1 says where new writes go"
}
# ---- the fixture ------------------------------------------------------------------------------
checking "build the fixture: 3 tables + root, files under 1, 2 and 3 keys (written through the mount)"
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 128 key3
assert_rc 0 "createkey key3"
new_datadir "$DATA" $CKB key1
# no lazy rewrites and no walker while the history is written: chunks keep the
# key they were written under
mount_fs "$DATA" "$MNT" "lazy=off,walker=off"
mkdir -p "$MNT/ks/t1" "$MNT/ks/t2" "$MNT/ks2/t3" "$SHADOW/ks/t1" "$SHADOW/ks/t2" "$SHADOW/ks2/t3"
for t in ks/t1 ks/t2 ks2/t3; do alter_online "$MNT/$t" key1; done
# generation 1, everything under key1
declare -A SIZE=([r1.dat]=300000 [r2.txt]=200000 [ks/t1/a.dat]=400000 [ks/t1/b.txt]=500000
	[ks/t1/c.dat]=150000 [ks/t2/d.dat]=350000 [ks/t2/e.txt]=300000 [ks2/t3/g.dat]=250000
	[ks2/t3/h.dat]=600000 [ks2/t3/tiny]=100
	[cold1.dat]=500000 [ks/t1/cold2.dat]=500000 [ks/t2/cold3.txt]=500000 [ks2/t3/cold4.dat]=500000
	[ks/t1/cold5.dat]=500000 [ks/t2/cold6.dat]=500000 [ks2/t3/cold7.txt]=500000 [ks2/t3/cold8.dat]=500000)
for f in "${!SIZE[@]}"; do
	gen "g1:$f" "${SIZE[$f]}" >"$SHADOW/$f"
	cp "$SHADOW/$f" "$MNT/$f" || fail "cp $f to the mount"
done
sync
# generation 2: the three tables move to key2; overwrites and appends
for t in ks/t1 ks/t2 ks2/t3; do alter_online "$MNT/$t" key2; done
for f in ks/t1/a.dat ks/t1/b.txt ks/t2/d.dat ks2/t3/g.dat; do put_both "$f" 50000 20000 g2; done
for f in ks/t1/a.dat ks/t2/e.txt ks2/t3/h.dat; do app_both "$f" 70000 g2; done
gen g2:n2 90000 >"$SHADOW/ks/t2/n2.dat"
cp "$SHADOW/ks/t2/n2.dat" "$MNT/ks/t2/n2.dat" || fail "cp n2.dat"
sync
# generation 3: two tables move to key3
for t in ks/t1 ks2/t3; do alter_online "$MNT/$t" key3; done
for f in ks/t1/a.dat ks/t1/b.txt; do put_both "$f" 200000 10000 g3; done
put_both ks2/t3/g.dat 100000 30000 g3
for f in ks/t1/a.dat ks/t1/c.dat; do app_both "$f" 40000 g3; done
sync
compare_tree "fixture"
umount_fs "$MNT"

scan --files
[ "$(scget 'd["problems"]')" = "[]" ] || fail "rkscan problems in the fixture: $(scget 'd["problems"]')"
N3=$(scget 'len([f for f,v in d["files"].items() if len(v["keys"]) == 3])')
N2=$(scget 'len([f for f,v in d["files"].items() if len(v["keys"]) == 2])')
[ "$N3" -ge 3 ] || fail "fixture: expected at least 3 files under three keys, got $N3: $(scget 'd["files"]')"
[ "$N2" -ge 3 ] || fail "fixture: expected at least 3 files under two keys, got $N2: $(scget 'd["files"]')"
for k in key1 key2 key3; do
	n=$(scget "d['keys'].get('$k',{}).get('chunks',0)")
	[ "$n" -gt 0 ] || fail "fixture: no chunk under $k"
done
ok "$N3 files under 3 keys, $N2 under 2 keys; chunks per key: $(scget '{k:v["chunks"] for k,v in d["keys"].items()}')"

checking "offline coverage (rekeyctl keys) of the fixture equals the deep scan"
run rekeyctl keys -d "$KEYS" "$DATA"
assert_rc 0 "rekeyctl keys"
cp "$T_OUT" "$T_TMP/keys.out"
python3 - "$T_TMP/keys.out" "$T_TMP/scan.json" <<'EOF' || fail "rekeyctl keys and rkscan disagree (see above)"
import json, sys
scan = json.load(open(sys.argv[2]))["keys"]
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) >= 8 and f[0] != "KEY" and f[6].isdigit():
        rows[f[0]] = (int(f[6]), int(f[7]))
bad = 0
for k in set(rows) | set(scan):
    want = (scan.get(k, {}).get("chunks", 0), scan.get(k, {}).get("files", 0))
    if rows.get(k, (0, 0)) != want:
        print("key %s: rekeyctl keys says chunks/files %s, the deep scan %s" % (k, rows.get(k), want))
        bad += 1
sys.exit(1 if bad else 0)
EOF
ok "identical"

# ---- the background worker (the cold*.dat files are left to the walker) --------------------------------------------------------------------
cat >"$WORK" <<'EOF'
# worker MNT SHADOW STOP STATE SEED REL...: keeps the files open; reads (page
# cache evicted first, so reads reach the daemon), appends (O_APPEND and
# pwrite at the end) and overwrites, comparing every read with a shadow copy.
import json, os, random, sys, threading, time
mnt, shadow, stop, state, seed = sys.argv[1:6]
rels = sys.argv[6:]
seed = int(seed)
stats = {"reads": 0, "read_bytes": 0, "appends": 0, "overwrites": 0, "fsyncs": 0, "ready": False}
lock = threading.Lock()
failed = []

def bump(k, n=1):
    with lock:
        stats[k] += n

def save_state():
    with lock:
        s = json.dumps(stats)
    with open(state + ".tmp", "w") as f:
        f.write(s)
    os.rename(state + ".tmp", state)

def content(r, n):
    if r.random() < 0.5:
        return r.randbytes(n)
    b = bytearray()
    while len(b) < n:
        b += b"append row %08d bravo charlie delta\n" % r.randrange(10**8)
    return bytes(b[:n])

def worker(tid, mine):
    r = random.Random(seed * 7919 + tid)
    files = []
    for rel in mine:
        with open(os.path.join(shadow, rel), "rb") as f:
            sh = bytearray(f.read())
        fd = os.open(os.path.join(mnt, rel), os.O_RDWR)
        afd = os.open(os.path.join(mnt, rel), os.O_WRONLY | os.O_APPEND)
        files.append([rel, fd, afd, sh])
    try:
        deadline = time.time() + 150
        while not os.path.exists(stop) and not failed and time.time() < deadline:
            rel, fd, afd, sh = f = r.choice(files)
            op = r.random()
            if op < 0.6:
                if r.random() < 0.7:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                off = r.randrange(0, len(sh) + 1)
                n = r.choice([1, 100, 4096, 16384, 40000, 100000])
                got = os.pread(fd, n, off)
                want = bytes(sh[off:off + n])
                if got != want:
                    i = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
                    failed.append("thread %d: read of %s at %d (%d bytes): got %d bytes, first difference at "
                                  "file offset %d" % (tid, rel, off, n, len(got), off + i))
                    break
                bump("reads")
                bump("read_bytes", len(got))
            elif op < 0.85:
                data = content(r, r.choice([1, 500, 5000, 16384, 30000]))
                if r.random() < 0.5:
                    os.write(afd, data)
                else:
                    os.pwrite(fd, data, len(sh))
                sh += data
                bump("appends")
            else:
                off = r.randrange(0, len(sh))
                data = content(r, r.choice([10, 3000, 20000]))
                os.pwrite(fd, data, off)
                end = off + len(data)
                if end > len(sh):
                    sh.extend(b"\0" * (end - len(sh)))
                sh[off:end] = data
                bump("overwrites")
            if r.random() < 0.05:
                os.fsync(fd)
                bump("fsyncs")
            if r.random() < 0.05:
                st = os.fstat(fd).st_size
                if st != len(sh):
                    failed.append("thread %d: %s has size %d, the shadow %d" % (tid, rel, st, len(sh)))
                    break
            time.sleep(r.random() * 0.01)
        # final whole-file check, then the shadow goes to disk for the test
        for rel, fd, afd, sh in files:
            os.fsync(fd)
            got = b""
            while True:
                b = os.pread(fd, 1 << 20, len(got))
                if not b:
                    break
                got += b
            if got != bytes(sh) and not failed:
                failed.append("thread %d: final read of %s differs from the shadow (%d vs %d bytes)" % (tid, rel, len(got), len(sh)))
            with open(os.path.join(shadow, rel), "wb") as f:
                f.write(sh)
    except OSError as e:
        failed.append("thread %d: %s" % (tid, e))
    finally:
        for rel, fd, afd, sh in files:
            os.close(fd)
            os.close(afd)

threads = [threading.Thread(target=worker, args=(t, rels[t::2])) for t in range(2)]
for t in threads:
    t.start()
stats["ready"] = True
while any(t.is_alive() for t in threads):
    save_state()
    time.sleep(0.1)
save_state()
if failed:
    print("worker: MISMATCH: " + "; ".join(failed))
    sys.exit(1)
print("worker: %(reads)d reads (%(read_bytes)d bytes), %(appends)d appends, %(overwrites)d overwrites, %(fsyncs)d fsyncs, all reads matched" % stats)
EOF

# ---- 1. a new key, the old ones stay ---------------------------------------------------------------
checking "step 1: rekeyctl createkey -d KEYDIR AES/GCM/NoPadding 256 new_key; the old keys stay"
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 new_key
assert_rc 0 "createkey new_key"
[ "$(stat -c %a "$KEYS/new_key")" = 600 ] || fail "new_key has mode $(stat -c %a "$KEYS/new_key"), expected 600"
for k in $OLD_KEYS; do assert_exists "$KEYS/$k" "old key $k stays in the key directory"; done

# the walker's rate: the chunks of the cold files (which only the walker
# reads) at about 16 s: long enough that the status polls below see it
# running several times even on a slow (sanitizer) build
TODO=$(json_get "$T_TMP/scan.json" 'sum(sum(v["keys"].values()) for f,v in d["files"].items() if "/cold" in f)')
RATE=$((TODO * CS / 16))
mount_fs "$DATA" "$MNT" "walker_rate=$RATE"
DPID=$LAST_PID
DLOG=$LAST_LOG

# ---- 2. alter online --------------------------------------------------------------------------------
checking "step 2: rekeyctl alter MOUNT/TABLE --key new_key for every table, while mounted"
for t in ks/t1 ks/t2 ks2/t3; do alter_online "$MNT/$t" new_key; done
alter_online "$MNT" new_key
status
for t in / /ks/t1 /ks/t2 /ks2/t3; do
	k=$(sget "[t['key'] for t in d['tables'] if t['path'] == '$t']")
	assert_eq "$k" "[\"new_key\"]" "status: target key of table $t"
done
assert_eq "$(sget '[k["state"] for k in d["keys"] if k["name"] == "new_key"]')" '["active"]' "status: new_key registered active"

checking "step 2: from now on writes are sealed under new_key (new files and appends, every table)"
for t in "" ks/t1/ ks/t2/ ks2/t3/; do
	gen "new:$t" 70000 >"$SHADOW/${t}new.dat"
	cp "$SHADOW/${t}new.dat" "$MNT/${t}new.dat" || fail "cp new.dat"
done
app_both ks2/t3/tiny 40000 app
sync
sleep 0.3
scan --files
for t in "" ks/t1/ ks/t2/ ks2/t3/; do
	k=$(scget "d['files']['/${t}new.dat']['keys']")
	assert_eq "$k" '{"new_key": 5}' "chunks of /${t}new.dat written after alter"
done
# tiny: 100 bytes under key1 (the partial chunk 0 is rewritten by the append) + 40000 appended
k=$(scget "d['files']['/ks2/t3/tiny']['keys']")
assert_eq "$k" '{"new_key": 3}' "chunks of /ks2/t3/tiny after an append"
ok "new chunks are under new_key"

# ---- 3. lazy rekey on read ----------------------------------------------------------------------------
checking "step 3: a read of chunks under an old key returns the data and rewrites them under new_key (lazy)"
status
assert_eq "$(sget 'd["walker"]["state"]')" idle "walker state before any sweep"
LAZY0=$(sget 'd["walker"]["chunks_rewritten_lazy"]')
evict
cmp -s "$MNT/r2.txt" "$SHADOW/r2.txt" || fail "reading r2.txt (under key1) through the mount: data differs from the shadow"
NR2=$(( (SIZE[r2.txt] + CS - 1) / CS ))
r2_rekeyed() {
	scan --files
	local k
	k=$(scget "d['files']['/r2.txt']['keys']")
	WAIT_WHY="slot keys: $k"
	[ "$k" = "{\"new_key\": $NR2}" ]
}
wait_until 10 "after reading r2.txt its chunks are not rewritten under new_key within 10 s" r2_rekeyed
status
LAZY1=$(sget 'd["walker"]["chunks_rewritten_lazy"]')
[ $((LAZY1 - LAZY0)) -ge "$NR2" ] ||
	fail "status chunks_rewritten_lazy went from $LAZY0 to $LAZY1, expected at least $NR2 more (r2.txt's chunks)"
assert_eq "$(sget 'd["walker"]["state"]')" idle "walker state: the rewrite was lazy, not a sweep"
cmp -s "$MNT/r2.txt" "$SHADOW/r2.txt" || fail "r2.txt differs after its lazy rekey"
evict
cmp -s "$MNT/r2.txt" "$SHADOW/r2.txt" || fail "r2.txt differs after its lazy rekey (cold cache)"
ok "$NR2 chunks of r2.txt rewritten lazily; status counts $LAZY1"

# ---- 4. the sweep, with files open and being read and appended ----------------------------------------------
WFILES="r1.dat ks/t1/a.dat ks/t1/b.txt ks/t1/c.dat ks/t2/d.dat ks/t2/e.txt ks2/t3/g.dat ks2/t3/h.dat"
evict
python3 "$WORK" "$MNT" "$SHADOW" "$T_TMP/stop" "$T_TMP/wstate.json" "$SEED" $WFILES >"$T_TMP/worker.out" 2>&1 &
WPID=$!
bg_register $WPID
worker_reading() {
	[ -f "$T_TMP/wstate.json" ] && [ "$(json_get "$T_TMP/wstate.json" 'd["reads"]')" -gt 5 ] && return 0
	kill -0 $WPID 2>/dev/null || fail "the worker ended early: $(cat "$T_TMP/worker.out")"
	return 1
}
wait_until 10 "the worker did not start reading within 10 s" worker_reading

checking "step 4: rekeyctl rekey MOUNT starts a sweep; a second request while it runs is a no-op that says so"
status
SWEEP0=$(sget 'd["walker"]["sweep"]')
run rekeyctl rekey "$MNT"
assert_rc 0 "rekeyctl rekey $MNT"
assert_out_has "sweep $((SWEEP0 + 1)) started" "first rekey starts sweep $((SWEEP0 + 1))"
sleep 0.3
run rekeyctl rekey "$MNT"
assert_rc 0 "second rekeyctl rekey while a sweep runs"
assert_out_has "joins running sweep $((SWEEP0 + 1))" "the second rekey says it joins the running sweep"
status
assert_eq "$(sget 'd["walker"]["sweep"]')" "$((SWEEP0 + 1))" "sweep number after the second request (no new sweep)"
assert_eq "$(sget 'd["walker"]["state"]')" running "walker state after the second request"
STARTED=$(sget 'd["walker"]["started"]')
W0=$(json_get "$T_TMP/wstate.json" 'd["reads"] + d["appends"] + d["overwrites"]')
ok "second request: $(head -c 200 "$T_OUT")"

checking "step 5 (during the sweep): release-key of an old key is refused with the counts that remain"
run rekeyctl release-key -d "$KEYS" key1 "$MNT"
assert_rc_nonzero "release-key key1 while the sweep runs"
grep -Eq "refused: [1-9][0-9]* chunk\(s\) in [1-9][0-9]* file\(s\) are still under it" "$T_ERR" ||
	fail "release-key key1 refusal does not give the counts that remain: $(cat "$T_ERR" "$T_OUT")"
ok "$(head -c 300 "$T_ERR")"

checking "step 4: status while the sweep runs: per-table progress only grows, rate within the limit, no errors"
python3 - "$MNT" "$RATE" "$T_TMP/polls.json" <<'EOF' || fail "status during the sweep (see above)"
import json, subprocess, sys, time
mnt, rate, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
polls, last, bad = [], {}, []
deadline = time.time() + 70
while time.time() < deadline:
    p = subprocess.run(["rekeyctl", "status", "--json", mnt], capture_output=True, text=True)
    if p.returncode != 0:
        print("rekeyctl status failed: " + p.stderr); sys.exit(1)
    d = json.loads(p.stdout)
    w = d["walker"]
    polls.append(w)
    for t in w["tables"]:
        for k in ("percent", "chunks_rewritten", "files_done"):
            if t[k] < last.get((t["path"], k), 0):
                bad.append("table %s: %s went down from %s to %s" % (t["path"], k, last[(t["path"], k)], t[k]))
            last[(t["path"], k)] = t[k]
    if w["chunks_rewritten_walker"] < last.get("walker", 0):
        bad.append("chunks_rewritten_walker went down")
    last["walker"] = w["chunks_rewritten_walker"]
    if w["state"] in ("finished", "incomplete"):
        break
    time.sleep(0.4)
json.dump(polls, open(out, "w"))
running = [w for w in polls if w["state"] == "running"]
if polls[-1]["state"] != "finished":
    bad.append("the sweep did not finish within 70 s")
if len(running) < 3:
    bad.append("the sweep was seen running in only %d status polls (rate limit not effective?)" % len(running))
late = [w for w in running if w["rate_bytes_per_s"] > 0]
if not late:
    bad.append("status never showed a rate while the sweep ran")
for w in late[2:]:
    if w["rate_bytes_per_s"] > 2 * rate:
        bad.append("status rate %s B/s is more than twice the limit %d" % (w["rate_bytes_per_s"], rate))
        break
if any(w["rate_limit"] != rate for w in polls):
    bad.append("status rate_limit is not the walker_rate option %d" % rate)
if not any(0 < t["percent"] < 100 for w in running for t in w["tables"]):
    bad.append("no status poll showed a table in progress (0 < percent < 100)")
for b in bad:
    print("FAIL: " + b)
print("status: %d polls, %d while running" % (len(polls), len(running)))
sys.exit(1 if bad else 0)
EOF
status
cp "$T_TMP/status.json" "$T_TMP/status.final.json"
W1=$(json_get "$T_TMP/wstate.json" 'd["reads"] + d["appends"] + d["overwrites"]')
[ $((W1 - W0)) -ge 20 ] || fail "the worker did only $((W1 - W0)) operations while the sweep ran"
ok "the worker did $((W1 - W0)) operations while the sweep ran"

checking "step 4: the finished sweep: every table at 100%, walker and lazy counts, no errors"
assert_eq "$(sget 'd["walker"]["state"]')" finished "walker state after the sweep"
assert_eq "$(sget 'd["walker"]["sweep"]')" "$((SWEEP0 + 1))" "sweep number"
[ "$(sget 'd["walker"]["finished"]')" -ge "$STARTED" ] || fail "status finished < started: $(sget 'd["walker"]')"
assert_eq "$(sget 'd["walker"]["errors"]')" "[]" "status errors after the sweep"
assert_eq "$(sget 'd["walker"]["error_count"]')" 0 "status error_count"
assert_eq "$(sget 'd["walker"]["waiting_for_space"]')" false "status waiting_for_space"
assert_eq "$(sget 'sorted(t["path"] for t in d["walker"]["tables"])')" '["/", "/ks/t1", "/ks/t2", "/ks2/t3"]' \
	"status lists every table"
[ "$(sget 'd["walker"]["chunks_rewritten_walker"]')" -gt 0 ] || fail "chunks_rewritten_walker is 0"
[ "$(sget 'd["walker"]["chunks_rewritten_lazy"]')" -gt "$LAZY1" ] ||
	fail "no chunk was rewritten lazily while the worker read during the sweep (chunks_rewritten_lazy $(sget 'd["walker"]["chunks_rewritten_lazy"]'))"
bad=$(sget '[(t["path"], t["percent"], t["chunks_rewritten"], t["chunks_to_rewrite"]) for t in d["walker"]["tables"] if t["percent"] != 100.0]')
# (chunks rewritten lazily while the sweep runs are chunks the walker no longer
# has to do: a finished sweep must still say 100%)
[ "$bad" = "[]" ] || known_bug "BUG: the sweep finished but status shows tables below 100% (path, percent, chunks_rewritten, chunks_to_rewrite): $bad"
WSUM=$(sget 'sum(t["chunks_rewritten"] for t in d["walker"]["tables"])')
assert_eq "$WSUM" "$(sget 'd["walker"]["chunks_rewritten_walker"]')" "sum of per-table chunks_rewritten vs chunks_rewritten_walker"
run rekeyctl status "$MNT"
assert_rc 0 "rekeyctl status (human)"
assert_out_has "walker: finished" "human status: walker state"
assert_out_has "by the walker, [0-9]+ lazily on read" "human status: lazy and walker counts"
assert_out_has "table /ks/t1 +[0-9.]+%  [0-9]+/[0-9]+ chunks rewritten, 6/6 files" "human status: per-table progress"
ok "walker $(sget 'd["walker"]["chunks_rewritten_walker"]') chunks, lazy $(sget 'd["walker"]["chunks_rewritten_lazy"]') chunks"

checking "no chunk is left under an old key (deep scan of the data directory, before anything reads the cold files)"
sleep 0.3
scan --files
for k in $OLD_KEYS; do
	n=$(scget "d['keys'].get('$k',{}).get('chunks',0)")
	[ "$n" = 0 ] || fail "$n chunk(s) still under $k after the sweep: $(scget "{f:v for f,v in d['files'].items() if '$k' in v['keys']}")"
done
assert_eq "$(scget 'list(d["keys"])')" '["new_key"]' "keys with chunks after the sweep"
assert_eq "$(scget 'd["problems"]')" "[]" "rkscan problems"

checking "the worker's reads all matched; it stops; the mount equals the shadow copy"
touch "$T_TMP/stop"
wait $WPID
wrc=$?
bg_forget $WPID
cat "$T_TMP/worker.out"
[ $wrc -eq 0 ] || fail "the worker failed (status $wrc): $(cat "$T_TMP/worker.out")"
compare_tree "after the sweep"
evict
compare_tree "after the sweep (cold cache)"
ok "identical"

# ---- 5. release --------------------------------------------------------------------------------------------
checking "step 5: release-key of new_key (a target) is refused; the old keys are released"
run rekeyctl release-key -d "$KEYS" new_key "$MNT"
assert_rc_nonzero "release-key new_key (target of every table)"
for k in $OLD_KEYS; do
	run rekeyctl release-key -d "$KEYS" "$k" "$MNT"
	assert_rc 0 "release-key $k after the sweep"
	assert_out_has "released" "release-key $k says released"
done
status
for k in $OLD_KEYS; do
	assert_eq "$(sget "[k['state'] for k in d['keys'] if k['name'] == '$k']")" '["released"]' "status: state of $k"
done
grep -q "key 'key1' released" "$DLOG" || fail "the daemon log does not record the release of key1"
compare_tree "after the release"
umount_fs "$MNT"

checking "offline after the release: rekeyctl keys shows the old keys released with no chunks; it equals the deep scan"
run rekeyctl keys -d "$KEYS" "$DATA"
assert_rc 0 "rekeyctl keys"
cp "$T_OUT" "$T_TMP/keys.out"
for k in $OLD_KEYS; do
	grep -Eq "^$k +.* released +[^ ]+ +0 +0 " "$T_TMP/keys.out" || fail "rekeyctl keys: $k is not released with 0 chunks: $(cat "$T_TMP/keys.out")"
done
scan --files
assert_eq "$(scget 'd["dirty"]')" "[]" "headers marked COUNTS_DIRTY after a clean unmount"
assert_eq "$(scget 'd["count_mismatch"]')" "[]" "files whose header counts differ from their slots"
NK=$(scget 'd["keys"]["new_key"]["chunks"]')
grep -Eq "^new_key +.* active +ok +$NK +" "$T_TMP/keys.out" ||
	fail "rekeyctl keys: new_key does not have the deep scan's $NK chunks: $(cat "$T_TMP/keys.out")"
ok "new_key: $NK chunks"

# ---- 6. without the old keys -------------------------------------------------------------------------------------
checking "step 6: old keys moved out of the key directory, remount: every byte reads back identical"
mkdir -p "$T_TMP/oldkeys"
for k in $OLD_KEYS; do mv "$KEYS/$k" "$T_TMP/oldkeys/" || fail "mv $k"; done
mount_fs "$DATA" "$MNT"
compare_tree "remount without the old keys"
evict
compare_tree "remount without the old keys (cold cache)"
umount_fs "$MNT"
if grep -Ei "error|corrupt|cannot" "$LAST_LOG" >/dev/null; then
	fail "the daemon logged errors while reading without the old keys: $(grep -Ei 'error|corrupt|cannot' "$LAST_LOG" | head -5)"
fi
ok "identical"

checking "offline: rekeyctl cat of every stored file (without the old keys) authenticates and equals the shadow"
n=0
while IFS= read -r -d '' f; do
	rel="${f#"$SHADOW"/}"
	is_chunk_file "$DATA/$rel" || fail "stored $rel is not a chunk file"
	rekeyctl cat -d "$KEYS" "$DATA/$rel" >"$T_TMP/cat.out" 2>"$T_TMP/cat.err" ||
		fail "rekeyctl cat $rel failed: $(cat "$T_TMP/cat.err")"
	cmp -s "$T_TMP/cat.out" "$f" || fail "rekeyctl cat $rel differs from the shadow"
	n=$((n + 1))
done < <(find "$SHADOW" -type f -print0)
[ $n -ge 15 ] || fail "expected at least 15 files, found $n"
ok "$n files"
finish
