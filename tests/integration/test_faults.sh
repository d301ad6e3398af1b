#!/bin/bash
# Injected faults (issue 13, item 2): the daemon runs under the LD_PRELOAD
# shim tests/fault/rkfault.so, which fails chosen calls on the backing
# filesystem with EIO or ENOSPC (rules in a control file the test replaces
# while the daemon runs).  Faults during:
#   - foreground writes: the journal append (pwrite), the journal commit
#     (fdatasync), the in-place slot and header writes, the data file's
#     fdatasync, ENOSPC on every write to the file;
#   - a lazy rewrite (a read of a chunk under an old key);
#   - a whole-file rekey (the temporary's writes, its rename);
#   - an in-place sweep (journal appends and commits).
# After each: the writer got the error (or, for background work, status
# lists it and the work is done once the fault is gone), nothing acknowledged
# by fsync is lost (a shadow copy of what fsync acknowledged, compared through
# the mount, after a remount and offline with rekeyctl cat), nothing readable
# becomes unreadable, a read of another file works during the fault, and at
# the end rekeyctl fsck --deep is clean and the header counts equal the slots.
#
# CI runs the short form (about 25 s on an idle 2-CPU machine); the long form
# adds a failing rename of a whole-file rekey and failing in-place writes of
# a sweep:  FAULT_ALL=1 make check TESTS=tests/integration/test_faults.sh
# (FAULT_SEED=N repeats the data, FAULT_HOLD=N holds the last fault longer).
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd cmp ldd
integ_setup
T0=$SECONDS
checking() { T_CHECKS=$((T_CHECKS + 1)); echo "check $T_CHECKS: $* [at $((SECONDS - T0)) s]"; }

SHIM="${TOP_BUILDDIR:-$(cd "$T_INTEG_DIR/../.." && pwd)}/tests/fault/rkfault.so"
[ -f "$SHIM" ] || fail "the fault shim $SHIM is not built (make check builds it)"
SEED="${FAULT_SEED:-$(( ($(date +%s) ^ $$) % 1000000 ))}"
echo "seed: $SEED (FAULT_SEED=$SEED repeats the data)"

D="$T_TMP/data"
DATA="$D" # for scan
M="$T_TMP/mnt"
SH="$T_TMP/shadow" # what fsync acknowledged
CTL="$T_TMP/fault.ctl"
FLOG="$T_TMP/fault.log"
mkdir -p "$SH" "$T_TMP/bin"
: >"$CTL"
: >"$FLOG"

# the daemon under the shim: a wrapper that rkfx_mount runs (REKEYFS_BIN_DIR).
# An ASan daemon needs its runtime first in the preload list.
REAL=$(command -v rekeyfs)
ASAN_RT=$(ldd "$REAL" | awk '/libasan/ {print $3; exit}')
cat >"$T_TMP/bin/rekeyfs" <<EOF
#!/bin/bash
export LD_PRELOAD="${ASAN_RT:+$ASAN_RT }$SHIM"
export REKEYFS_FAULT_CTL="$CTL" REKEYFS_FAULT_LOG="$FLOG"
exec "$REAL" "\$@"
EOF
chmod +x "$T_TMP/bin/rekeyfs"
ln -s "$(command -v rekeyctl)" "$T_TMP/bin/rekeyctl"
export REKEYFS_BIN_DIR="$T_TMP/bin"

# fault RULES...: replace the rule set (a rename: the shim re-reads the file
# at its next call); no argument clears it
fault() {
	printf '%s\n' "$@" >"$CTL.tmp" && mv -f "$CTL.tmp" "$CTL" || fail "cannot write $CTL"
}
fired() { grep -c '^fired' "$FLOG"; }

# wr REL OFF LEN TAG: write LEN seeded bytes at OFF through the mount, fsync,
# close; prints ok or the error; on ok the shadow gets the bytes
WR="$T_TMP/wr.py"
cat >"$WR" <<'PY'
import errno, os, random, sys
mnt, sh, rel, off, ln, tag = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
data = random.Random(tag).randbytes(ln)
res = "ok"
try:
    fd = os.open(os.path.join(mnt, rel), os.O_RDWR | os.O_CREAT, 0o644)
except OSError as e:
    print("open " + errno.errorcode[e.errno]); sys.exit(0)
try:
    os.pwrite(fd, data, off)
    os.fsync(fd)
except OSError as e:
    res = errno.errorcode[e.errno]
try:
    os.close(fd)
except OSError as e:
    if res == "ok":
        res = "close " + errno.errorcode[e.errno]
if res == "ok":
    p = os.path.join(sh, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "r+b" if os.path.exists(p) else "w+b") as f:
        f.seek(off); f.write(data)
print(res)
PY
wr() { python3 "$WR" "$M" "$SH" "$1" "$2" "$3" "$SEED:$4"; }

# same_all WHAT: every shadow file reads back identical through the mount
# (cold: the kernel's pages dropped first)
same_all() {
	local f
	evict "$M"
	for f in $(cd "$SH" && find . -type f | sort); do
		f=${f#./}
		cmp -s "$M/$f" "$SH/$f" || fail "$1: $f does not read back as acknowledged ($(cmp "$M/$f" "$SH/$f" 2>&1 | head -1))"
	done
}
# serving: another file reads back (the daemon keeps serving)
serving() {
	python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)' "$M/other.dat"
	cmp -s "$M/other.dat" "$SH/other.dat" || fail "$1: another file (other.dat) does not read back while the fault is set"
}

# inject WHAT MUST_ERR REL OFF LEN RULES...: set RULES, write, clear; the fault
# must fire; MUST_ERR=1: the writer must see the error; then the same write
# again without a fault must be acknowledged, and everything reads back
inject() {
	local what="$1" must="$2" rel="$3" off="$4" len="$5" before res
	shift 5
	checking "$what ($*)"
	before=$(fired)
	fault "$@"
	res=$(wr "$rel" "$off" "$len" "$what")
	serving "$what"
	fault
	[ "$(fired)" -gt "$before" ] || fail "$what: the fault did not fire (shim log: $(tail -3 "$FLOG"))"
	if [ "$must" = 1 ] && [ "$res" = ok ]; then
		check_failed "$what: the writer was not told: fsync returned success after $(grep -c '^fired' "$FLOG") fault(s) ($(tail -1 "$FLOG"))"
	fi
	ok "writer saw: $res; $(tail -1 "$FLOG")"
	res=$(wr "$rel" "$off" "$len" "$what")
	[ "$res" = ok ] || fail "$what: the same write without a fault failed: $res (daemon log: $(tail -5 "$LAST_LOG"))"
	same_all "$what"
}

CS=4096
checking "set up: 4 KiB chunks, a table /t, files under key1, the daemon under the fault shim"
new_datadir "$D" 4 key1
mkdir -p "$D/t"
run rekeyctl alter -d "$KEYS" "$D/t" --key key1
assert_rc 0 "alter /t"
mount_fs "$D" "$M" "walker_rate=0"
grep -q "rkfault" "/proc/$LAST_PID/maps" || fail "the daemon does not have the shim loaded"
[ "$(wr other.dat 0 $((5 * CS)) other)" = ok ] || fail "writing other.dat"
[ "$(wr fg.dat 0 $((8 * CS)) fg0)" = ok ] || fail "writing fg.dat"
for i in 1 2 3 4 5 6; do
	[ "$(wr "t/w$i.dat" 0 $((6 * CS + i * 100)) "w$i")" = ok ] || fail "writing t/w$i.dat"
done
same_all "set up"
ok "$(grep -c loaded "$FLOG") rule load(s) so far"

# ---- foreground writes --------------------------------------------------------------------------
inject "journal append fails (EIO)" 1 fg.dat $((2 * CS + 10)) 3000 "pwrite .rekeyfs/journal 1 EIO once"
inject "journal commit fails (fdatasync EIO)" 1 fg.dat $((CS - 100)) 5000 "fdatasync .rekeyfs/journal 1 EIO once"
inject "journal append fails (ENOSPC)" 1 fg.dat $((5 * CS)) $((2 * CS)) "pwrite .rekeyfs/journal 1 ENOSPC once"
inject "in-place slot write fails (EIO; the record stays in the journal)" 0 fg.dat 100 200 "pwrite /fg.dat 1 EIO once"
inject "data file fdatasync fails (EIO)" 0 fg.dat $((3 * CS)) 100 "fdatasync /fg.dat 1 EIO once"
inject "every write to the file fails for a while (ENOSPC: slots and header)" 0 fg.dat $((8 * CS)) $((3 * CS)) \
	"pwrite /fg.dat 1 ENOSPC always" "fdatasync /fg.dat 1 ENOSPC always"
inject "a new file's creation fails (openat EIO)" 1 new.dat 0 1000 "openat /new.dat 1 EIO once"
[ "$(wr fg.dat $((11 * CS)) 777 ext)" = ok ] || fail "extending fg.dat after the faults"
same_all "after the foreground faults"

checking "a data file's fdatasync fails at a journal checkpoint (online fsck): the journal keeps its records until a replay"
[ "$(wr fg.dat $((6 * CS + 5)) 5000 ckpt)" = ok ] || fail "writing fg.dat before the checkpoint fault"
before=$(fired)
fault "fdatasync /fg.dat 1 EIO once"
run rekeyctl fsck "$M"
fault
[ "$(fired)" -gt "$before" ] || fail "checkpoint fault: it did not fire"
grep -q "journal checkpoint: fdatasync of a data file failed" "$LAST_LOG" ||
	fail "checkpoint fault: the fault did not hit the checkpoint: $(tail -3 "$LAST_LOG")"
run rekeyctl fsck "$M" # a second checkpoint, the fault gone
serving "after the checkpoint fault"
jsize=$(stat -c %s "$D/.rekeyfs/journal")
# the pages the failed fdatasync could not write may be gone (a later
# fdatasync succeeds without them): only the journal has those chunks now
[ "$jsize" -gt 0 ] || check_failed "the journal was emptied by the next checkpoint although a data file's fdatasync failed"
rkfx_umount "$M"
rc=$?
ok "the journal keeps $jsize bytes; daemon exit status $rc at unmount ($(tail -1 "$LAST_LOG"))"
mount_fs "$D" "$M" "walker_rate=0"
same_all "after the replay of the kept journal"

# ---- lazy rewrite ------------------------------------------------------------------------------
checking "lazy rewrite under a fault: the table moves to key2, reads of key1 chunks rewrite them; the journal fails"
run rekeyctl alter "$M/t" --key key2
assert_rc 0 "alter /t --key key2"
before=$(fired)
fault "pwrite .rekeyfs/journal 1 EIO always" "fdatasync .rekeyfs/journal 1 EIO always"
evict "$M"
for f in t/w1.dat t/w2.dat; do
	cmp -s "$M/$f" "$SH/$f" || fail "lazy rewrite under EIO: $f does not read back (a failed rewrite must not fail the read)"
done
serving "lazy rewrite"
fault
ok "reads fine; shim fired $(( $(fired) - before )) time(s)"
same_all "after the failed lazy rewrites"

# ---- sweeps ------------------------------------------------------------------------------------
# sweep_fault WHAT RULES...: /t moves to the other key ($NEXT), rekey /t under RULES; status
# must list the error (a whole-file rekey that cannot make its copy falls
# back to rekeying in place: no error then, WANT_ERR=0); then without the
# fault a sweep puts every chunk of /t under $NEXT
sweep_fault() {
	local what="$1" before r errs
	shift
	checking "$what ($*)"
	NEXT=$([ "$CUR" = key1 ] && echo key2 || echo key1)
	CUR=$NEXT
	run rekeyctl alter "$M/t" --key "$NEXT"
	assert_rc 0 "alter /t --key $NEXT"
	before=$(fired)
	fault "$@"
	r=$(ctl "rekey /t")
	echo "$r" | grep -q '^ok' || fail "$what: rekey: $r"
	wait_until 60 "$what: the fault did not fire" eval '[ "$(fired)" -gt "$before" ]'
	serving "$what"
	if [ "${HOLD:-0}" -gt 0 ]; then
		# an "always" fault: held until it failed HOLD calls, then lifted
		wait_until 60 "$what: the fault did not fire $HOLD times" eval '[ "$(fired)" -ge $((before + HOLD)) ]'
		fault
	fi
	wait_idle 60 "$what"
	errs=$(sget 'd["walker"]["errors"]')
	[ "$WANT_ERR" = 0 ] || [ "$(sget 'd["walker"]["error_count"]')" -ge 1 ] || check_failed "$what: status lists no error after the sweep hit the fault: $(sget 'd["walker"]')"
	ok "state $(sget 'd["walker"]["state"]'), $(sget 'd["walker"]["files_replaced"]') file(s) replaced; errors: $(echo "$errs" | head -c 200)"
	fault
	same_all "$what (after the failed sweep)"
	r=$(ctl "rekey /t")
	echo "$r" | grep -q '^ok' || fail "$what: rekey without the fault: $r"
	wait_idle 60 "$what (again)"
	assert_eq "$(sget 'd["walker"]["result"]') $(sget 'd["walker"]["remaining_chunks"]')" "complete 0" "$what: the sweep's result"
	same_all "$what (after the sweep)"
}
# sweeps_mount OPTS: remount with OPTS (after an offline check of the last group)
sweeps_mount() {
	umount_fs "$M"
	scan --files
	assert_eq "$(scget 'd["problems"]')" "[]" "rkscan problems"
	assert_eq "$(scget 'd["count_mismatch"]')" "[]" "header counts vs slots"
	[ -z "$NEXT" ] || assert_eq "$(scget "[p for p, f in d['files'].items() if p.startswith('t/') and {k for k, n in f['keys'].items() if n} - {'$NEXT'}]")" "[]" \
		"files of /t with chunks off $NEXT"
	mount_fs "$D" "$M" "walker_rate=0,lazy=off${1:+,$1}"
}
NEXT="" CUR=key2 # (/t targets key2; after the lazy rewrites its files are mixed)
sweeps_mount whole_file=on
WANT_ERR=0
sweep_fault "whole-file rekey: the temporary's writes fail (ENOSPC)" "pwrite .rekeyfs-tmp 1 ENOSPC always"
if [ -n "${FAULT_ALL:-}" ]; then
	sweep_fault "whole-file rekey: the rename fails (EIO)" "rename .rekeyfs-tmp 1 EIO always"
fi
sweeps_mount whole_file=off
WANT_ERR=1
sweep_fault "in-place sweep: journal appends fail (EIO)" "pwrite .rekeyfs/journal 2 EIO once"
# a failed journal commit is retried by the journal's committer: the
# walker's writes were journaled and are not failed (WANT_ERR=0)
WANT_ERR=0
sweep_fault "in-place sweep: journal commit fails (EIO)" "fdatasync .rekeyfs/journal 1 EIO once"
# the in-place writes of journaled chunks and headers fail: the journal keeps
# the chunks and retries (logged, not a walker error: WANT_ERR=0)
if [ -n "${FAULT_ALL:-}" ]; then
	WANT_ERR=0
	sweep_fault "in-place sweep: the files' slot and header writes fail (ENOSPC)" "pwrite /t/w 3 ENOSPC once" "pwrite /t/w5 1 ENOSPC once"
fi
# held: files stay open in the daemon for their pending chunks while the
# walker lets go of their inodes (regression: the inode's fd, which the
# journal writes through, was closed and reused by another file)
WANT_ERR=0 HOLD=${FAULT_HOLD:-12}
sweep_fault "in-place sweep: every write to /t's files fails for a while (EIO)" "pwrite /t/w 2 EIO always"
HOLD=0
sweeps_mount ""

# ---- the end: remount, offline checks ------------------------------------------------------------
checking "remount: everything acknowledged reads back; offline every file authenticates; fsck --deep is clean"
same_all "after a remount"
umount_fs "$M"
for f in $(cd "$SH" && find . -type f | sort); do
	f=${f#./}
	rekeyctl cat -d "$KEYS" "$D/$f" >"$T_TMP/cat.out" 2>"$T_TMP/cat.err" || fail "rekeyctl cat $f: $(cat "$T_TMP/cat.err")"
	cmp -s "$T_TMP/cat.out" "$SH/$f" || fail "rekeyctl cat $f differs from what was acknowledged"
done
run rekeyctl fsck --deep -d "$KEYS" "$D"
assert_rc 0 "rekeyctl fsck --deep"
scan --files
assert_eq "$(scget 'd["problems"]')" "[]" "rkscan problems"
assert_eq "$(scget 'd["count_mismatch"]')" "[]" "header counts vs slots"
ok "$(fired) faults injected in all, $((SECONDS - T0)) s"
finish
