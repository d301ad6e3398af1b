#!/bin/bash
# Read errors are visible (issue 12, item 6):
#  - a chunk whose stored bytes were altered: reading it through the mount
#    gives EIO; status read_errors.count (the same number as io.read_errors)
#    counts it and read_errors.recent names the file, the chunk and the cause;
#  - a chunk under a key that is missing from the key directory: EIO, listed
#    with the key's name in the cause;
#  - a file whose header cannot be read: EIO at open, listed with chunk null;
#  - -o log=FILE gets the daemon's lines (mount, the read error, unmount),
#    mode 0600; a reader that scans the bad chunk again and again is counted
#    every time but logged at most 3 times per file and minute;
#  - -o log=SYMLINK and -o log=DIRECTORY are refused: the daemon does not start;
#  - -o log=stderr keeps the daemon's stderr after it detaches (no -f): a
#    chunk lost to a cut-short file is logged there.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup

CS=4096
SS=$((CS + 64)) # slot size: chunk + slot overhead
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
EXP="$T_TMP/expected"
LOG="$T_TMP/rekeyfs.log"
mkdir -p "$MNT" "$EXP"
new_datadir "$DATA" 4
mkdir -p "$DATA/t"
run rekeyctl alter -d "$KEYS" "$DATA/t" --key key2
assert_rc 0 "alter /t --key key2"

make_random "$EXP/a.dat" $((4 * CS))
make_random "$EXP/b.dat" $((2 * CS))
make_random "$EXP/c.dat" $((2 * CS))
make_random "$EXP/d.dat" $((3 * CS))
mount_fs "$DATA" "$MNT"
cp "$EXP/a.dat" "$EXP/c.dat" "$EXP/d.dat" "$MNT/" || fail "writing through the mount"
cp "$EXP/b.dat" "$MNT/t/" || fail "writing through the mount"
umount_fs "$MNT"
for f in a.dat c.dat t/b.dat; do
	is_chunk_file "$DATA/$f" || fail "$f is not a chunk file"
done

# the damage: chunk 2 of a.dat altered; t/b.dat's key (key2) leaves the key
# directory (its table now targets key1, so the mount comes up); both header
# copies of c.dat altered
flip_byte "$DATA/a.dat" $((8192 + 2 * SS + 100))
run rekeyctl alter -d "$KEYS" "$DATA/t" --key key1
assert_rc 0 "alter /t --key key1"
mkdir -p "$T_TMP/keys.away"
mv "$KEYS/key2" "$T_TMP/keys.away/key2" || fail "moving key2 away"
flip_byte "$DATA/c.dat" 50
flip_byte "$DATA/c.dat" $((4096 + 50))
truncate -s $((8192 + SS)) "$DATA/d.dat" || fail "cutting d.dat short" # slots 1 and 2 lost

# ---- -o log= refusals --------------------------------------------------------------------------------
# refused WHAT OPTS: the daemon must not start
refused() {
	if RKFX_QUIET=1 RKFX_TIMEOUT=15 rkfx_mount "$DATA" "$MNT" "$KEYS" "$2" "$T_ERR"; then
		rkfx_umount "$MNT"
		fail "$1: the mount succeeded; it must be refused"
	fi
	rkfx_is_mounted "$MNT" && fail "$1: something is mounted on $MNT after a refused mount"
	echo "  daemon said: $(head -c 400 "$T_ERR" | tr '\n' ' ')"
}
checking "-o log=SYMLINK is refused, and the link's target is not created"
ln -s "$T_TMP/target.log" "$T_TMP/link.log"
refused "log=symlink" "log=$T_TMP/link.log"
assert_err_has "link\\.log.*symbolic link" "the refusal names the file and the cause"
assert_not_exists "$T_TMP/target.log" "the symlink's target"
checking "-o log=DIRECTORY is refused"
refused "log=directory" "log=$T_TMP/keys.away"
assert_err_has "not a regular file" "the refusal says why"

# ---- the errors, listed and logged -------------------------------------------------------------------
mount_fs "$DATA" "$MNT" "log=$LOG"
checking "-o log=FILE: the file is created with mode 0600 and gets the mount line"
assert_exists "$LOG" "the log file"
assert_eq "$(stat -c %a "$LOG")" 600 "mode of the log file"
wait_until 10 "the log file does not get the mount line: $(cat "$LOG")" grep -q "mounted $DATA" "$LOG"
echo "a line of the operator's" >>"$LOG"

checking "no read error yet: read_errors.count 0, recent []"
status "$MNT"
assert_eq "$(sget 'd["read_errors"]["count"]')" 0 "read_errors.count before any error"
assert_eq "$(sget 'd["read_errors"]["recent"]')" "[]" "read_errors.recent before any error"

checking "a corrupt chunk: EIO for it only; status lists file, chunk 2 and the cause"
run dd if="$MNT/a.dat" of="$T_TMP/chunk2" bs=$CS skip=2 count=1 iflag=direct
assert_rc_nonzero "dd of the corrupt chunk"
assert_err_has "Input/output error" "dd of chunk 2 reports EIO"
run dd if="$MNT/a.dat" of="$T_TMP/chunk0" bs=$CS count=2 status=none
assert_rc 0 "dd of chunks 0 and 1"
status "$MNT"
n=$(sget 'd["read_errors"]["count"]')
[ "$n" -ge 1 ] || fail "read_errors.count is $n after a failed read"
assert_eq "$(sget 'd["io"]["read_errors"]')" "$n" "io.read_errors matches read_errors.count"
assert_eq "$(sget '[e["chunk"] for e in d["read_errors"]["recent"] if e["path"] == "/a.dat"][0]')" 2 \
	"the chunk of the /a.dat entry ($(sget 'd["read_errors"]'))"
assert_eq "$(sget '"authentication failed" in [e["cause"] for e in d["read_errors"]["recent"] if e["path"] == "/a.dat"][0]')" \
	true "the cause of the /a.dat entry"
t=$(sget '[e["time"] for e in d["read_errors"]["recent"] if e["path"] == "/a.dat"][0]')
[ $(($(date +%s) - t)) -lt 600 ] || fail "the entry's time $t is not now"
ok "$(sget '[e for e in d["read_errors"]["recent"] if e["path"] == "/a.dat"][0]')"

checking "the log file names the file, the chunk and the cause"
grep -E "read error: /a\\.dat: chunk 2: corrupt: authentication failed" "$LOG" >/dev/null ||
	fail "the log file lacks the read error: $(cat "$LOG")"
grep -q "a\\.dat" "$LAST_LOG" && fail "the read error went to stderr too, not only to the log file"
ok "$(grep 'a\.dat' "$LOG" | head -1)"

checking "a chunk under a key missing from the key directory: EIO, listed with the key's name"
run cat "$MNT/t/b.dat"
assert_rc_nonzero "cat of a file under a missing key"
assert_err_has "Input/output error" "EIO for a missing key"
status "$MNT"
assert_eq "$(sget '[e["chunk"] for e in d["read_errors"]["recent"] if e["path"] == "/t/b.dat"][0]')" 0 \
	"the chunk of the /t/b.dat entry ($(sget 'd["read_errors"]'))"
cause=$(sget '[e["cause"] for e in d["read_errors"]["recent"] if e["path"] == "/t/b.dat"][0]')
case "$cause" in
*"key 'key2'"*"not in the key directory"*) ok "$cause" ;;
*) fail "the cause of the /t/b.dat entry does not name key2 and why: $cause" ;;
esac

checking "a file whose header cannot be read: EIO, listed with chunk null"
run cat "$MNT/c.dat"
assert_rc_nonzero "cat of a file with both header copies corrupt"
assert_err_has "Input/output error" "EIO for a corrupt header"
status "$MNT"
assert_eq "$(sget '[e["chunk"] for e in d["read_errors"]["recent"] if e["path"] == "/c.dat"][0]')" null \
	"the chunk of the /c.dat entry ($(sget 'd["read_errors"]'))"
assert_eq "$(sget 'd["io"]["read_errors"] == d["read_errors"]["count"]')" true "io.read_errors matches read_errors.count"

checking "a reader scanning the bad chunk 20 times: every EIO counted, at most 3 log lines for the file"
before=$(sget 'd["read_errors"]["count"]')
for _ in $(seq 20); do
	dd if="$MNT/a.dat" of=/dev/null bs=$CS skip=2 count=1 iflag=direct status=none 2>/dev/null &&
		fail "a read of the corrupt chunk succeeded"
done
status "$MNT"
after=$(sget 'd["read_errors"]["count"]')
[ $((after - before)) -ge 20 ] || fail "read_errors.count went from $before to $after after 20 failed reads"
lines=$(grep -c "read error: /a\\.dat" "$LOG")
[ "$lines" -le 3 ] || fail "$lines log lines for /a.dat: the log is not rate-limited"
assert_eq "$(sget 'len(d["read_errors"]["recent"])')" 16 "recent keeps the newest 16"
ok "count $before -> $after, $lines log lines for /a.dat"
kill -0 "$LAST_PID" 2>/dev/null || fail "the daemon died"

checking "the other files read fine, and the unmount line reaches the log file"
head -c $((2 * CS)) "$EXP/a.dat" >"$T_TMP/a.head"
head -c $((2 * CS)) "$MNT/a.dat" | cmp -s - "$T_TMP/a.head" || fail "the good chunks of a.dat"
umount_fs "$MNT"
grep -q "unmounting $DATA" "$LOG" || fail "the log file lacks the unmount line: $(cat "$LOG")"
grep -q "a line of the operator's" "$LOG" || fail "the log file was truncated, not appended to"

# ---- -o log=stderr, detached -------------------------------------------------------------------------
checking "-o log=stderr without -f: the detached daemon's lines reach the stderr it was started with"
rekeyfs -o "keydir=$KEYS,log=stderr" "$DATA" "$MNT" 2>"$T_TMP/detached.err" ||
	fail "rekeyfs (detached) failed: $(cat "$T_TMP/detached.err")"
at_exit "fusermount3 -u '$MNT' 2>/dev/null"
status "$MNT"
dpid=$(sget 'd["pid"]')
run dd if="$MNT/d.dat" of="$T_TMP/d1" bs=$CS skip=1 count=1 iflag=direct
assert_err_has "Input/output error" "EIO for a chunk lost to the cut"
status "$MNT"
assert_eq "$(sget '[e["cause"][:8] for e in d["read_errors"]["recent"] if e["path"] == "/d.dat"][0]')" "missing:" \
	"the cause of the /d.dat entry ($(sget 'd["read_errors"]'))"
wait_until 10 "the detached daemon's stderr lacks the read error: $(cat "$T_TMP/detached.err")" \
	grep -q "read error: /d\.dat: chunk 1: missing" "$T_TMP/detached.err"
ok "$(grep 'd\.dat' "$T_TMP/detached.err" | head -1)"
fusermount3 -u "$MNT" || fail "unmounting the detached daemon"
wait_until 15 "the detached daemon (pid $dpid) did not exit" eval "! kill -0 $dpid 2>/dev/null"
grep -q "unmounting $DATA" "$T_TMP/detached.err" || fail "the detached daemon's stderr lacks the unmount line"
grep -Eq "Sanitizer|runtime error" "$T_TMP/detached.err" && fail "sanitizer report: $(cat "$T_TMP/detached.err")"
mv "$T_TMP/keys.away/key2" "$KEYS/key2"
finish
