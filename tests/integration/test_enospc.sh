#!/bin/bash
# ENOSPC during an online sweep (issue #4): the data directory lives on a
# small tmpfs that is filled up (a filler file next to the data directory)
# after the tables were altered to a new key.  A sweep started now cannot
# journal its rewrites:
#   - status shows the error and waiting_for_space, the sweep keeps running
#   - the old chunks stay in place and every file reads back identical
#     (the reads' lazy rewrites fail too, the reads must not)
# Then the filler is deleted: the same sweep goes on by itself and finishes;
# every chunk is under the new key (deep scan), every file identical, a clean
# unmount, rekeyctl cat authenticates every stored file.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd mount umount df cmp
integ_setup

SEED="${ENOSPC_SEED:-${CRASH_SEED:-$(( ($(date +%s) ^ $$) % 1000000 ))}}"
echo "seed: $SEED (ENOSPC_SEED=$SEED repeats the file contents)"

FS="$T_TMP/fs"
DATA="$FS/data"
MNT="$T_TMP/mnt"
ORIG="$T_TMP/orig"
mkdir -p "$FS" "$MNT" "$ORIG/t1" "$ORIG/t2"
mount -t tmpfs -o size=24m,mode=0755 rekeyfs-enospc "$FS" || fail "cannot mount a 24 MiB tmpfs on $FS"
at_exit "umount '$FS' 2>/dev/null || umount -l '$FS' 2>/dev/null"

compare_all() { # WHAT
	local f rel
	for f in $(cd "$ORIG" && find . -type f | sort); do
		rel="${f#./}"
		cmp -s "$MNT/$rel" "$ORIG/$rel" || fail "$1: $rel does not read back identical ($(cmp "$MNT/$rel" "$ORIG/$rel" 2>&1 | head -1))"
	done
}
avail() { df -B1 --output=avail "$FS" | tail -1 | tr -d ' '; }

checking "a data directory on a 24 MiB tmpfs with 10 MB of files under key1 in 3 tables"
new_datadir "$DATA" 16 key1
mount_fs "$DATA" "$MNT" "walker_rate=0"
mkdir -p "$MNT/t1" "$MNT/t2"
for t in t1 t2; do
	run rekeyctl alter "$MNT/$t" --key key1
	assert_rc 0 "alter /$t"
done
n=0
for rel in r1.dat r2.txt t1/a.dat t1/b.dat t1/c.txt t2/d.dat t2/e.dat t2/f.txt; do
	n=$((n + 1))
	case $rel in
	*.txt) make_text "$ORIG/$rel" $((900000 + n * 77777)) $n ;;
	*) seeded_random "$ORIG/$rel" $((1000000 + n * 77777)) "$rel" ;;
	esac
	cp "$ORIG/$rel" "$MNT/$rel" || fail "cp $rel"
done
sync
compare_all "before the rotation"
scan --files
K1=$(scget 'd["keys"]["key1"]["chunks"]')
ok "$K1 chunks under key1; $(avail) bytes free on the tmpfs"

checking "alter every table to key2, then fill the tmpfs (a filler file beside the data directory)"
for t in "" /t1 /t2; do
	run rekeyctl alter "$MNT$t" --key key2
	assert_rc 0 "alter $MNT$t --key key2"
done
dd if=/dev/zero of="$FS/filler" bs=1M status=none 2>/dev/null
dd if=/dev/zero of="$FS/filler2" bs=4k status=none 2>/dev/null
[ "$(avail)" -lt 4096 ] || fail "the tmpfs still has $(avail) bytes free"
ok "$(du -sb "$FS/filler" | cut -f1) bytes of filler, $(avail) bytes free"

checking "rekey with no space: status shows the error and waiting_for_space; the sweep keeps running"
run rekeyctl rekey "$MNT"
assert_rc 0 "rekeyctl rekey with the file system full"
SWEEP=$(sed -n 's/^sweep \([0-9]*\) started.*/\1/p' "$T_OUT")
[ -n "$SWEEP" ] || fail "rekeyctl rekey did not say which sweep started: $(cat "$T_OUT")"
waiting_for_space() {
	status
	WAIT_WHY=$(sget 'd["walker"]')
	[ "$(sget 'd["walker"]["waiting_for_space"]')" = true ] && return 0
	if [ "$(sget 'd["walker"]["state"] in ("finished", "incomplete")')" = true ]; then
		fail "the sweep finished although the file system is full: $WAIT_WHY"
	fi
	return 1
}
wait_until 15 "status does not show waiting_for_space within 15 s" waiting_for_space
assert_eq "$(sget 'd["walker"]["state"]')" running "walker state while waiting for space"
sget 'd["walker"]["errors"]' | grep -q "No space left on device" ||
	fail "status errors do not name ENOSPC: $(sget 'd["walker"]["errors"]')"
[ "$(sget 'd["walker"]["error_count"]')" -ge 1 ] || fail "status error_count is 0"
run rekeyctl status "$MNT"
assert_rc 0 "rekeyctl status"
assert_out_has "recent errors: .*No space left on device" "human status shows the error"
ok "$(sget 'd["walker"]["errors"]' | head -c 300)"

checking "while the disk is full the old chunks stay in place and every file reads back identical"
evict
compare_all "disk full"
sleep 2
evict
compare_all "disk full, after lazy rewrites were attempted"
status
assert_eq "$(sget 'd["walker"]["waiting_for_space"]')" true "still waiting for space"
assert_eq "$(sget 'd["io"]["read_errors"]')" 0 "status read_errors"
scan --files
assert_eq "$(scget 'd["problems"]')" "[]" "rkscan problems while the disk is full"
# what was rewritten before the space ran out (nothing, or a few chunks) plus key1's rest is everything
assert_eq "$(scget 'd["chunks"]')" "$K1" "chunks in all (key1 and key2) while the disk is full"
[ "$(scget 'd["keys"]["key1"]["chunks"]')" -gt 0 ] || fail "no chunk left under key1 although nothing could be journaled"
ok "$(scget '{k: v["chunks"] for k, v in d["keys"].items()}')"

checking "space freed: the same sweep goes on by itself and finishes; everything is under key2"
rm -f "$FS/filler" "$FS/filler2"
wait_idle 40 "space freed"
assert_eq "$(sget 'd["walker"]["sweep"]')" "$SWEEP" "sweep number (the same sweep finished)"
assert_eq "$(sget 'd["walker"]["waiting_for_space"]')" false "waiting_for_space after the sweep"
[ "$(sget 'd["walker"]["finished"]')" -gt 0 ] || fail "the sweep has no finish time"
bad=$(sget '[(t["path"], t["percent"]) for t in d["walker"]["tables"] if t["percent"] != 100.0]')
[ "$bad" = "[]" ] || known_bug "BUG: the sweep finished but status shows tables below 100%: $bad"
sleep 0.3
scan --files
assert_eq "$(scget "d['keys'].get('key1',{}).get('chunks',0)")" 0 "chunks under key1 after the sweep"
assert_eq "$(scget 'd["keys"]["key2"]["chunks"]')" "$K1" "chunks under key2 after the sweep"
assert_eq "$(scget 'd["problems"]')" "[]" "rkscan problems"
compare_all "after the sweep"
evict
compare_all "after the sweep (cold cache)"
umount_fs "$MNT"

checking "offline: every stored file authenticates (rekeyctl cat) and equals the original; coverage equals the deep scan"
for f in $(cd "$ORIG" && find . -type f | sort); do
	rel="${f#./}"
	rekeyctl cat -d "$KEYS" "$DATA/$rel" >"$T_TMP/cat.out" 2>"$T_TMP/cat.err" || fail "rekeyctl cat $rel: $(cat "$T_TMP/cat.err")"
	cmp -s "$T_TMP/cat.out" "$ORIG/$rel" || fail "rekeyctl cat $rel differs from the original"
done
run rekeyctl keys -d "$KEYS" "$DATA"
assert_rc 0 "rekeyctl keys"
grep -Eq "^key1 +.* 0 +0 " "$T_OUT" || fail "rekeyctl keys: key1 still has chunks: $(cat "$T_OUT")"
grep -Eq "^key2 +.* $K1 +8 " "$T_OUT" || fail "rekeyctl keys: key2 does not have $K1 chunks in 8 files: $(cat "$T_OUT")"
scan --files
assert_eq "$(scget 'd["count_mismatch"]')" "[]" "header counts vs slots after a clean unmount"
ok "$K1 chunks under key2"
finish
