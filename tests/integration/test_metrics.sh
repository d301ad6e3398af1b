#!/bin/bash
# Prometheus metrics and fleet output (issue 15, items 1 and 3):
#   - .rekeyfs/metrics of a mount with two tables and two keys passes
#     `promtool check metrics` before, during (paused sweep) and after a
#     rotation; its coverage equals `rekeyctl fsck --json` and its sweep
#     figures `rekeyctl status --json`; key1 becomes releasable after the
#     sweep without --refresh (the daemon's coverage cache follows sweeps)
#   - `rekeyctl metrics MNT MNT2` is one valid exposition covering both
#     mounts; a mount that does not answer gives rekeyfs_up 0 and exit != 0
#   - the shipped timer's service command (ExecStart of
#     contrib/systemd/rekeyfs-metrics@.service) writes a textfile that
#     Debian's node exporter serves over loopback
#   - contrib/prometheus rules: promtool check rules + test rules;
#     contrib/grafana/rekeyfs.json parses and names only exported metrics
#   - status/fsck/keys --json carry host, data_dir, mount, time; several
#     mounts give one JSON object per line, one per mount
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd promtool prometheus-node-exporter curl
integ_setup
CONTRIB="$(cd "$TEST_SRCDIR/../contrib" && pwd)"
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
DATA2="$T_TMP/data2"
MNT2="$T_TMP/mnt2"
M="$MNT"

# prom FILE EXPR...: each EXPR (python) on the samples of exposition FILE,
# one result a line: s(NAME, **labels) is the value of the one matching
# series (None: none), sel(NAME, **labels) the values of all; J(PATH) a JSON
# file, fk(PATH, TABLE, KEY) the chunks of TABLE under KEY in an fsck report
prom() {
	python3 - "$@" <<'PYEOF'
import re, sys
samples = []
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    if not line or line.startswith("#"):
        continue
    m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
    if not m:
        sys.exit("unparsable sample line: %r" % line)
    labels = dict((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                  for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
    samples.append((m.group(1), labels, float(m.group(4))))
def sel(name, **kw):
    return [v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in kw.items())]
def s(name, **kw):
    r = sel(name, **kw)
    if len(r) > 1:
        sys.exit("%d series match %s %s" % (len(r), name, kw))
    return r[0] if r else None
import json
def J(path):
    return json.load(open(path))
def fk(path, table, key):
    return sum(k["chunks"] for t in J(path)["tables"] if t["path"] == table for k in t["keys"] if k["name"] == key)
for e in sys.argv[2:]:
    r = eval(e)
    print(r if isinstance(r, str) else repr(r))
PYEOF
}
# check_prom FILE MSG EXPR...: every EXPR must be True (one python run)
check_prom() {
	local f="$1" msg="$2" got i=0 e
	shift 2
	got=$(prom "$f" "$@") || fail "$msg: cannot evaluate on $f: $got"
	for e in "$@"; do
		i=$((i + 1))
		[ "$(sed -n "${i}p" <<<"$got")" = True ] ||
			fail "$msg: $e is $(sed -n "${i}p" <<<"$got") ($(grep -c . "$f") lines in $f)"
	done
	ok "$msg"
}
promcheck() {
	checking "promtool check metrics: $2"
	promtool check metrics <"$1" >"$T_TMP/promtool.out" 2>&1 ||
		fail "promtool check metrics ($2): $(cat "$T_TMP/promtool.out")"
	ok
}

# ---- a mount with two tables (/ under key1, /ks/t2 under key2) and a second mount ----
new_datadir "$DATA" 16 key1
mkdir -p "$DATA/ks/t2"
run rekeyctl alter -d "$KEYS" "$DATA/ks/t2" --key key2
assert_rc 0 "alter /ks/t2 to key2"
mount_fs "$DATA" "$MNT" "walker_rate=16384" # a sweep of 100 s: paused long before it ends
mkdir -p "$MNT/ks/t1"
head -c 1000000 /dev/urandom >"$MNT/ks/t1/a" || fail "write a"
head -c 600000 /dev/urandom >"$MNT/ks/t2/b" || fail "write b"
printf 'label "quote" \\ backslash\n' >"$MNT/ks/t1/c"
new_datadir "$DATA2" 16 key2
mount_fs "$DATA2" "$MNT2"
echo x >"$MNT2/f" || fail "write $MNT2/f"

checking "the metrics file is listed in .rekeyfs and root's only"
ls "$MNT/.rekeyfs" | grep -qx metrics || fail "ls $MNT/.rekeyfs: $(ls "$MNT/.rekeyfs")"
[ "$(stat -c %a "$MNT/.rekeyfs/metrics")" = 400 ] || fail "mode $(stat -c %a "$MNT/.rekeyfs/metrics")"
ok

# ---- before the rotation ----
cat "$MNT/.rekeyfs/metrics" >"$T_TMP/m0.prom" || fail "cannot read $MNT/.rekeyfs/metrics"
promcheck "$T_TMP/m0.prom" "before the rotation"
rekeyctl fsck --json "$MNT" >"$T_TMP/fsck0.json" || fail "fsck --json $MNT"
status "$MNT"
checking "coverage before the rotation equals fsck --json, status's version and data directory"
F0="$T_TMP/fsck0.json"
ST="$T_TMP/status.json"
check_prom "$T_TMP/m0.prom" "coverage and status figures before the rotation" \
	"fk('$F0', '/', 'key1') > 0 and fk('$F0', '/ks/t2', 'key2') > 0" \
	"s('rekeyfs_chunks', table='/', key='key1', mount='$MNT') == fk('$F0', '/', 'key1')" \
	"s('rekeyfs_chunks', table='/ks/t2', key='key2', mount='$MNT') == fk('$F0', '/ks/t2', 'key2')" \
	"len(sel('rekeyfs_chunks')) == 2" \
	"s('rekeyfs_key_releasable', key='key1') == 0 and s('rekeyfs_key_releasable', key='key2') == 0" \
	"s('rekeyfs_sweep_state', state='idle') == 1 and sum(sel('rekeyfs_sweep_state')) == 1" \
	"s('rekeyfs_plain_files', table='/') == 0 and s('rekeyfs_plain_files', table='/ks/t2') == 0" \
	"s('rekeyfs_build_info', version=J('$ST')['version']) == 1" \
	"s('rekeyfs_mount_info', data_dir=J('$ST')['datadir'], mount='$MNT') == 1" \
	"s('rekeyfs_bytes', table='/ks/t2', key='key2') == 600000" \
	"s('rekeyfs_read_errors_total') == J('$ST')['io']['read_errors']"
for f in rekeyfs_lazy_queue_dropped_total rekeyfs_read_errors_total rekeyfs_write_errors_total \
	rekeyfs_journal_commits_total rekeyfs_journal_fsyncs_total rekeyfs_journal_fsyncs_in_place_total \
	rekeyfs_journal_checkpoints_total rekeyfs_sweep_bytes_done rekeyfs_sweep_total_bytes; do
	grep -q "^# TYPE $f " "$T_TMP/m0.prom" || fail "no family $f"
	grep -q "^$f{mount=\"$MNT\"} [0-9]" "$T_TMP/m0.prom" || fail "no sample of $f"
done
ok

# ---- during the rotation: the sweep paused, so that every figure holds still ----
run rekeyctl alter "$MNT" --key key2
assert_rc 0 "alter / to key2"
run rekeyctl rekey "$MNT"
assert_rc 0 "rekey"
run rekeyctl pause "$MNT"
assert_rc 0 "pause"
_paused_and_equal() {
	status "$MNT"
	cat "$MNT/.rekeyfs/metrics" >"$T_TMP/m1.prom"
	WAIT_WHY="status $(sget '"%s %s/%s" % (d["walker"]["state"], d["walker"]["bytes_done"], d["walker"]["bytes_total"])'); metrics $(grep -E '^rekeyfs_sweep_(bytes|total)' "$T_TMP/m1.prom" | tr '\n' ' ')"
	[ "$(prom "$T_TMP/m1.prom" "J('$ST')['walker']['state'] == 'paused' and s('rekeyfs_sweep_state', state='paused') == 1 and s('rekeyfs_sweep_bytes_done') == J('$ST')['walker']['bytes_done'] and s('rekeyfs_sweep_total_bytes') == J('$ST')['walker']['bytes_total']")" = True ]
}
checking "during the rotation (paused) the sweep figures equal status --json"
wait_until 30 "metrics and status of the paused sweep do not agree" _paused_and_equal
check_prom "$T_TMP/m1.prom" "sweep total" "s('rekeyfs_sweep_total_bytes') > 0"
promcheck "$T_TMP/m1.prom" "during the rotation"
checking "rekeyctl metrics --refresh: coverage equals fsck --json during the rotation"
rekeyctl metrics --refresh "$MNT" >"$T_TMP/m2.prom" || fail "rekeyctl metrics --refresh"
rekeyctl fsck --json "$MNT" >"$T_TMP/fsck1.json"
F1="$T_TMP/fsck1.json"
check_prom "$T_TMP/m2.prom" "chunks of / under key1 and key2" \
	"(s('rekeyfs_chunks', table='/', key='key1') or 0) == fk('$F1', '/', 'key1')" \
	"(s('rekeyfs_chunks', table='/', key='key2') or 0) == fk('$F1', '/', 'key2')"

# ---- after: key1 releasable, without --refresh ----
run rekeyctl throttle "$MNT" 0
run rekeyctl resume "$MNT"
assert_rc 0 "resume"
wait_idle 120 "the rotation"
cat "$MNT/.rekeyfs/metrics" >"$T_TMP/m3.prom"
promcheck "$T_TMP/m3.prom" "after the rotation"
rekeyctl fsck --json "$MNT" >"$T_TMP/fsck2.json"
status "$MNT"
checking "after the sweep: key1 releasable, coverage equals fsck --json, figures equal status --json"
F2="$T_TMP/fsck2.json"
check_prom "$T_TMP/m3.prom" "after the sweep" \
	"s('rekeyfs_key_releasable', key='key1') == 1 and s('rekeyfs_key_releasable', key='key2') == 0" \
	"s('rekeyfs_chunks', table='/', key='key1') is None and fk('$F2', '/', 'key1') == 0" \
	"s('rekeyfs_chunks', table='/', key='key2') == fk('$F2', '/', 'key2')" \
	"s('rekeyfs_sweep_state', state=J('$ST')['walker']['state']) == 1" \
	"s('rekeyfs_chunks_rewritten_total', by='walker') == J('$ST')['walker']['chunks_rewritten_walker']" \
	"set(l['key'] for n, l, v in samples if n == 'rekeyfs_key_releasable') == set(k['name'] for k in J('$ST')['keys'])"
checking "metrics-refresh on the control file"
ctl "metrics-refresh" | grep -q "^ok coverage refreshed: " || fail "metrics-refresh: $(ctl metrics-refresh)"
ok

# ---- several mounts: one exposition ----
rekeyctl metrics "$MNT" "$MNT2" >"$T_TMP/all.prom" || fail "rekeyctl metrics $MNT $MNT2"
promcheck "$T_TMP/all.prom" "two mounts"
checking "rekeyctl metrics MNT MNT2 covers both mounts, each family once"
check_prom "$T_TMP/all.prom" "both mounts" \
	"s('rekeyfs_up', mount='$MNT') == 1 and s('rekeyfs_build_info', mount='$MNT') == 1" \
	"s('rekeyfs_up', mount='$MNT2') == 1 and s('rekeyfs_build_info', mount='$MNT2') == 1" \
	"s('rekeyfs_chunks', mount='$MNT2', table='/', key='key2') == 1" \
	"s('rekeyfs_chunks', mount='$MNT', table='/', key='key2') == fk('$F2', '/', 'key2')"
[ "$(grep -c '^# HELP rekeyfs_chunks ' "$T_TMP/all.prom")" = 1 ] || fail "HELP rekeyfs_chunks is not once"
ok
checking "a mount that does not answer: rekeyfs_up 0, the others written, exit status 1"
mkdir -p "$T_TMP/notmounted"
run rekeyctl metrics "$MNT" "$T_TMP/notmounted"
assert_rc 1 "metrics with a directory that is not a mount"
cp "$T_OUT" "$T_TMP/part.prom"
check_prom "$T_TMP/part.prom" "partial" \
	"s('rekeyfs_up', mount='$T_TMP/notmounted') == 0 and s('rekeyfs_up', mount='$MNT') == 1" \
	"s('rekeyfs_build_info', mount='$MNT') == 1"

# ---- the shipped timer's command and the node exporter's textfile collector ----
UNIT="$TOP_BUILDDIR/contrib/systemd/rekeyfs-metrics@.service" # made from rekeyfs-metrics@.service.in
TIMER="$CONTRIB/systemd/rekeyfs-metrics@.timer"
checking "the timer runs the service every 15-30 s"
every=$(sed -n 's/^OnUnitActiveSec=\([0-9]*\)s$/\1/p' "$TIMER")
[ -n "$every" ] && [ "$every" -ge 15 ] && [ "$every" -le 30 ] || fail "OnUnitActiveSec in $TIMER: '$every'"
ok
exec_start=$(sed -n 's/^ExecStart=//p' "$UNIT")
checking "the unit's command is rekeyctl metrics --textfile into the node exporter's directory"
sbin=$(sed -n 's/^sbindir = //p' "$TOP_BUILDDIR/Makefile" | head -1)
prefix=$(sed -n 's/^prefix = //p' "$TOP_BUILDDIR/Makefile" | head -1)
sbin=${sbin//\$\{exec_prefix\}/$prefix}
[ "$exec_start" = "$sbin/rekeyctl metrics --textfile \${TEXTFILE_DIR}/rekeyfs-%i.prom %f" ] ||
	fail "ExecStart of $UNIT: $exec_start (sbindir $sbin)"
grep -qx 'Environment=TEXTFILE_DIR=/var/lib/prometheus/node-exporter' "$UNIT" || fail "TEXTFILE_DIR of $UNIT"
ok
TXT="$T_TMP/textfile"
mkdir -p "$TXT"
inst=$(python3 -c 'import sys; p=sys.argv[1].strip("/"); print("".join(c if c.isalnum() or c in "_." else ("-" if c == "/" else "\\x%02x" % ord(c)) for c in p))' "$MNT")
cmd=${exec_start//$sbin\/rekeyctl/$(command -v rekeyctl)}
cmd=${cmd//\$\{TEXTFILE_DIR\}/$TXT}
cmd=${cmd//%i/$inst}
cmd=${cmd//%f/$MNT}
# shellcheck disable=SC2086 # the unit's words, as systemd splits them (no quoting in it)
run $cmd
assert_rc 0 "the unit's command: $cmd"
assert_exists "$TXT/rekeyfs-$inst.prom"
checking "the textfile is mode 644 and no temporary file is left"
[ "$(stat -c %a "$TXT/rekeyfs-$inst.prom")" = 644 ] || fail "mode $(stat -c %a "$TXT/rekeyfs-$inst.prom")"
[ "$(ls "$TXT" | wc -l)" = 1 ] || fail "files in $TXT: $(ls "$TXT")"
ok
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
prometheus-node-exporter --web.listen-address="127.0.0.1:$PORT" --collector.disable-defaults --collector.textfile \
	--collector.textfile.directory="$TXT" >"$T_TMP/node-exporter.log" 2>&1 &
NE_PID=$!
bg_register $NE_PID
_scraped() {
	curl -sf "http://127.0.0.1:$PORT/metrics" >"$T_TMP/scrape.prom" 2>/dev/null
}
wait_until 30 "the node exporter does not answer on 127.0.0.1:$PORT ($(tail -3 "$T_TMP/node-exporter.log"))" _scraped
checking "the node exporter serves the textfile's rekeyfs_ series over loopback"
check_prom "$T_TMP/scrape.prom" "via the exporter" \
	"s('node_textfile_scrape_error') == 0" \
	"s('rekeyfs_key_releasable', mount='$MNT', key='key1') == 1" \
	"s('rekeyfs_chunks', mount='$MNT', table='/', key='key2') == fk('$F2', '/', 'key2')" \
	"s('rekeyfs_up', mount='$MNT') == 1"
kill "$NE_PID" 2>/dev/null
wait "$NE_PID" 2>/dev/null
bg_forget $NE_PID

# ---- alert rules and dashboard ----
checking "promtool check rules and test rules accept the shipped rules"
( cd "$CONTRIB/prometheus" && promtool check rules rekeyfs.rules.yml && promtool test rules rekeyfs.rules.test.yml ) \
	>"$T_TMP/rules.out" 2>&1 || fail "promtool: $(cat "$T_TMP/rules.out")"
ok
checking "the Grafana dashboard parses and its queries name only exported metrics"
python3 - "$CONTRIB/grafana/rekeyfs.json" "$T_TMP/all.prom" <<'PYEOF' || fail "grafana dashboard (above)"
import json, re, sys
d = json.load(open(sys.argv[1]))
families = set(re.findall(r'^# TYPE (\S+) ', open(sys.argv[2]).read(), re.M))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
exprs += [v.get("query", "") for v in d.get("templating", {}).get("list", []) if v.get("type") == "query"]
if len(exprs) < 8:
    sys.exit("only %d queries" % len(exprs))
used = set(n for e in exprs for n in re.findall(r'\b(rekeyfs_[a-z_]+)\b', e))
missing = used - families
if missing:
    sys.exit("queries name metrics that do not exist: %s" % sorted(missing))
for f in ("rekeyfs_chunks", "rekeyfs_sweep_bytes_done", "rekeyfs_sweep_eta_seconds", "rekeyfs_read_errors_total",
          "rekeyfs_journal_commits_total"):
    if f not in used:
        sys.exit("no panel shows %s" % f)
PYEOF
ok

# ---- fleet fields and several mounts in status, fsck, keys ----
# fleet FILE MNT DATADIR: the object in FILE carries the fleet fields
fleet() {
	json_get "$1" 'd["host"] == "'"$(hostname)"'" and d["mount"] == '"$2"' and d["data_dir"] == '"$3"' and __import__("re").fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["time"]) is not None'
}
checking "status --json (one mount) is the status with the fleet fields"
rekeyctl status --json "$MNT" >"$T_TMP/st1.json" || fail "status --json"
[ "$(fleet "$T_TMP/st1.json" "'$MNT'" "'$DATA'")" = true ] || fail "fleet fields: $(head -3 "$T_TMP/st1.json")"
[ "$(json_get "$T_TMP/st1.json" 'd["schema"]')" = rekeyfs-status/1 ] || fail "schema"
ok
# lines FILE N: N lines, each a JSON object; line I to FILE.I
lines() {
	[ "$(wc -l <"$1")" = "$2" ] || fail "$1: $(wc -l <"$1") lines, not $2: $(head -c 600 "$1")"
	local i
	for i in $(seq 1 "$2"); do sed -n "${i}p" "$1" >"$1.$i"; done
}
for c in status fsck; do
	checking "$c --json MNT MNT2: one object per line, one per mount, with the fleet fields"
	rekeyctl $c --json "$MNT" "$MNT2" >"$T_TMP/$c.jsonl"
	lines "$T_TMP/$c.jsonl" 2
	[ "$(fleet "$T_TMP/$c.jsonl.1" "'$MNT'" "'$DATA'")" = true ] || fail "$c line 1: $(head -c 300 "$T_TMP/$c.jsonl.1")"
	[ "$(fleet "$T_TMP/$c.jsonl.2" "'$MNT2'" "'$DATA2'")" = true ] || fail "$c line 2: $(head -c 300 "$T_TMP/$c.jsonl.2")"
	ok
done
checking "fsck --json MNT MNT2 keeps each report (fsck's own fields)"
[ "$(json_get "$T_TMP/fsck.jsonl.1" 'd["schema"] == "rekeyfs-fsck/1" and d["datadir"] == "'"$DATA"'"')" = true ] ||
	fail "fsck line 1"
ok
checking "status MNT MNT2 (text) reports both mounts"
run rekeyctl status "$MNT" "$MNT2"
assert_rc 0 "status MNT MNT2"
grep -q "^mount $MNT " "$T_OUT" && grep -q "^mount $MNT2 " "$T_OUT" || fail "status text: $(cat "$T_OUT")"
ok
umount_fs "$MNT2"
checking "keys --json DATADIR (offline) and of the key directory carry the fleet fields"
rekeyctl keys --json -d "$KEYS" "$DATA2" >"$T_TMP/keys.json" || fail "keys --json $DATA2"
[ "$(fleet "$T_TMP/keys.json" None "'$DATA2'")" = true ] || fail "keys fleet fields: $(head -c 400 "$T_TMP/keys.json")"
[ "$(json_get "$T_TMP/keys.json" '[(k["name"], k["chunks"], k["target_of"]) for k in d["keys"]] == [("key2", 1, ["/"])]')" = true ] ||
	fail "keys: $(cat "$T_TMP/keys.json")"
rekeyctl keys --json -d "$KEYS" >"$T_TMP/keydir.json" || fail "keys --json (key directory)"
[ "$(json_get "$T_TMP/keydir.json" 'sorted(k["name"] for k in d["keys"]) == ["key1", "key2"] and d["key_dir"] == "'"$KEYS"'" and "host" in d')" = true ] ||
	fail "keys of the key directory: $(cat "$T_TMP/keydir.json")"
ok
umount_fs "$MNT"
finish
