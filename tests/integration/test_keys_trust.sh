#!/bin/bash
# Issue #10 items 11-14: key directory trust, locked key memory in a detached
# daemon, no information leak or terminal injection, strict parsing.
#  - rekeyctl keys: a loose key directory is refused naming the fix; a key file
#    owned by another user is refused; a FIFO in the key directory does not
#    hang the listing (deadline) and is skipped with a warning; malformed key
#    files (+256, huge negative strength, '=' inside the base64, non-canonical
#    base64, CRLF) are refused, never listed as ok
#  - a detached daemon (no -f) has its key memory locked (VmLck > 0)
#  - .rekeyfs/status is not readable by an unprivileged user (allow_other)
#  - a file name with an escape sequence is printed escaped by rekeyctl fsck
#    (online and offline) and rekeyctl status
#  - the control file refuses a chunk size that wraps around and a negative
#    rate; the daemon refuses -o max_threads=-1 and walker_rate=-1
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd useradd userdel setpriv timeout mkfifo base64
integ_setup

ESC=$'\033'
# no_raw_ctl FILE MSG: FILE holds no ESC/BEL byte (a terminal would obey them)
no_raw_ctl() {
	if LC_ALL=C grep -q $'[\033\007]' "$1"; then
		fail "$2: raw control characters in the output: $(od -c "$1" | head -5)"
	fi
}

# ---- key directory trust (no mount) ----------------------------------------------------------
checking "a group/world-writable key directory is refused, naming the fix"
chmod 777 "$KEYS"
run rekeyctl keys -d "$KEYS"
assert_rc_nonzero "rekeyctl keys on a 0777 key directory"
assert_err_has "chmod go-w" "the message names the fix"
chmod 770 "$KEYS"
run rekeyctl keys -d "$KEYS"
assert_rc_nonzero "rekeyctl keys on a 0770 key directory"
chmod 700 "$KEYS"
run rekeyctl keys -d "$KEYS"
assert_rc 0 "rekeyctl keys on a 0700 key directory"
assert_out_has "^key1 .* ok \(file\)$" "key1 is listed"

checking "a key file owned by another user is refused"
cp -p "$KEYS/key1" "$KEYS/other"
chown 54321:54321 "$KEYS/other"
run rekeyctl keys -d "$KEYS"
assert_out_has "^other .*refused" "a key file of uid 54321 is refused"
assert_err_has "chown" "the message names the fix"
rm -f "$KEYS/other"

checking "a FIFO in the key directory does not hang rekeyctl keys (10 s deadline)"
mkfifo -m 600 "$KEYS/fifo"
run timeout 10 rekeyctl keys -d "$KEYS"
[ "$RC" -ne 124 ] || fail "rekeyctl keys hung on a FIFO in the key directory"
assert_rc 0 "rekeyctl keys with a FIFO in the key directory"
assert_out_has "^key1 .* ok \(file\)$" "the real keys are listed"
assert_err_has "fifo.*not a regular file" "the FIFO is reported"
run timeout 10 rekeyctl init -d "$KEYS" --key fifo "$T_TMP/fifo-data"
[ "$RC" -ne 124 ] || fail "rekeyctl init --key fifo hung"
assert_rc_nonzero "a FIFO is not a key"
rm -f "$KEYS/fifo"

checking "malformed key files are refused, never listed as ok"
B64="$(cut -d: -f3 "$KEYS/key1" | tr -d '\n')"
NONC="${B64:0:42}$(printf '%s' "${B64:42:1}" | tr 'AEIMQUYcgkosw048' 'BFJNRVZdhlptx159')="
LK="$T_TMP/lk"
mkdir -m 700 "$LK"
i=0
for content in "AES/GCM/NoPadding:+256:$B64" "AES/GCM/NoPadding:-18446744073709551360:$B64" \
	"AES/GCM/NoPadding:0256:$B64" "AES/GCM/NoPadding: 256:$B64" "AES/GCM/NoPadding:256:${B64:0:10}=${B64:11}" \
	"AES/GCM/NoPadding:256:$NONC" "AES/GCM/NoPadding:256:$B64"$'\r' "AES/GCM/NoPadding:256:$B64 " \
	"AES/GCM/NoPadding:256:$B64"$'\n'; do
	i=$((i + 1))
	printf '%s\n' "$content" >"$LK/bad$i"
	chmod 600 "$LK/bad$i"
done
run rekeyctl keys -d "$LK"
assert_rc 0 "rekeyctl keys on malformed files"
if grep -E "^bad[0-9]+ .* ok( \(.*\))?$" "$T_OUT"; then
	fail "malformed key files are listed as usable"
fi
assert_eq "$(grep -c '^bad' "$T_OUT")" "$i" "every malformed file is listed (as unusable)"

checking "rekeyctl refuses loose numbers: createkey +256, --chunk-kb +64"
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding +256 plus
assert_rc 2 "createkey with strength +256"
assert_not_exists "$KEYS/plus" "no key file for a loose strength"
mkdir -p "$T_TMP/d64"
run rekeyctl init -d "$KEYS" --key key1 --chunk-kb +64 "$T_TMP/d64"
assert_rc 2 "init --chunk-kb +64"

# ---- a detached daemon locks its keys ----------------------------------------------------------
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16
checking "a detached daemon (no -f) has its key memory locked (VmLck > 0)"
mkdir -p "$MNT"
run rekeyfs -o "keydir=$KEYS" "$DATA" "$MNT"
at_exit "fusermount3 -u '$MNT' 2>/dev/null || true"
assert_rc 0 "detached mount"
for _ in $(seq 100); do
	rkfx_is_mounted "$MNT" && [ -r "$MNT/.rekeyfs/status" ] && break
	sleep 0.1
done
rkfx_is_mounted "$MNT" || fail "the detached daemon did not mount"
DPID="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$MNT/.rekeyfs/status")"
echo data >"$MNT/f" || fail "write through the detached mount"
LCK="$(awk '/^VmLck:/ {print $2}' "/proc/$DPID/status")"
echo "daemon $DPID VmLck $LCK kB"
if grep -q __asan_init "$(command -v rekeyfs)"; then
	note "AddressSanitizer build: its mlock() interceptor locks nothing, VmLck not checked"
else
	[ "${LCK:-0}" -gt 0 ] || fail "the detached daemon's key memory is not locked (VmLck ${LCK:-?} kB)"
fi
fusermount3 -u "$MNT" || fail "unmount the detached daemon"
for _ in $(seq 200); do
	kill -0 "$DPID" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$DPID" 2>/dev/null && fail "the detached daemon did not exit after unmount"

# ---- numbers on the daemon's command line --------------------------------------------------------
for o in max_threads=-1 walker_rate=-1 read_ahead_kb=4294967297 entry_timeout=-1 walker_rate=1e3; do
	checking "rekeyfs refuses -o $o"
	run timeout 20 rekeyfs -o "keydir=$KEYS,$o" "$DATA" "$MNT"
	if rkfx_is_mounted "$MNT"; then
		fusermount3 -u "$MNT"
		fail "rekeyfs mounted with -o $o"
	fi
	assert_rc_nonzero "rekeyfs -o $o"
	assert_err_has "${o%%=*}" "the message names the option"
done

# ---- release-key leaves no copy of the key or of its per-file subkeys -----------------------------
checking "after release-key the daemon's memory holds neither the key nor a per-file subkey derived from it"
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 key3
assert_rc 0 "createkey key3"
DATA3="$T_TMP/data3"
new_datadir "$DATA3" 16 key3
mount_fs "$DATA3" "$MNT" whole_file=on
head -c 200000 /dev/urandom >"$T_TMP/g.orig"
cp "$T_TMP/g.orig" "$MNT/g" || fail "write g"
sync
drop_caches
cmp -s "$T_TMP/g.orig" "$MNT/g" || fail "read g back"
FILEID="$(od -An -tx1 -j24 -N16 "$DATA3/g" | tr -d ' \n')"
run rekeyctl alter "$MNT" --key key1
assert_rc 0 "alter / to key1"
run rekeyctl rekey "$MNT"
assert_rc 0 "rekey"
released=0
for _ in $(seq 300); do
	run rekeyctl release-key key3 "$MNT"
	if [ "$RC" -eq 0 ]; then released=1; break; fi
	sleep 0.2
done
[ "$released" -eq 1 ] || fail "release-key key3 never succeeded: $(cat "$T_ERR")"
cmp -s "$T_TMP/g.orig" "$MNT/g" || fail "g after the rekey"
"$PY" - "$LAST_PID" "$KEYS/key3" "$FILEID" >"$T_OUT" 2>"$T_ERR" <<'EOF'
import base64, hashlib, hmac, re, sys
pid, keyfile, fileid = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
key = base64.b64decode(open(keyfile).read().strip().split(":")[2])
prk = hmac.new(fileid, key, hashlib.sha256).digest()               # HKDF-Extract(salt = file id)
sub = hmac.new(prk, b"rekeyfs chunk key v1" + b"\x01", hashlib.sha256).digest()[: len(key)]
needles = {"key": key, "subkey": sub}
found = {}
with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
    for line in maps:
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
        lo, hi, perms = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
        if perms[0] != "r" or "[vvar]" in line or "[vsyscall]" in line:
            continue
        if hi - lo > (1 << 30):
            continue  # sanitizer shadow memory: reserved, not heap
        off, tail = lo, b""
        while off < hi:
            try:
                mem.seek(off)
                data = tail + mem.read(min(hi - off, 16 << 20))
            except OSError:
                break
            for n, v in needles.items():
                if v in data:
                    found.setdefault(n, []).append(line.strip())
            tail = data[-64:]
            off += 16 << 20
print("scanned daemon", pid, "found:", found)
sys.exit(1 if found else 0)
EOF
RC=$?
cat "$T_OUT" "$T_ERR"
assert_rc 0 "no copy of key3 or of g's subkey left in the daemon after release-key"
umount_fs "$MNT"

# ---- status, names with escape sequences, control parsing ----------------------------------------
U="rkkt$$"
useradd -M -U -s /bin/sh "$U" >"$T_OUT" 2>"$T_ERR" || fail "useradd $U failed: $(cat "$T_ERR")"
at_exit "userdel '$U' >/dev/null 2>&1 || true"
chmod 755 "$T_TMP"
mount_fs "$DATA" "$MNT" allow_other,default_permissions
chmod 755 "$MNT"
mkdir -m 700 "$MNT/private"
EVIL="$MNT/private/evil${ESC}]0;pwned$(printf '\007')${ESC}[2Jname.db"
echo "secret data" >"$EVIL" || fail "create a file with an escape sequence in its name"

checking "an unprivileged user cannot read .rekeyfs/status (it names files of every user)"
setpriv --reuid="$(id -u "$U")" --regid="$(id -g "$U")" --clear-groups -- cat "$MNT/.rekeyfs/status" >"$T_OUT" 2>"$T_ERR"
RC=$?
assert_rc_nonzero "the user reads the status file"
[ -s "$T_OUT" ] && fail "the user got status content: $(head -c 200 "$T_OUT")"
run cat "$MNT/.rekeyfs/status"
assert_rc 0 "root reads the status file"

# control: python writes one command and reads the reply on the same open file
ctl() {
	"$PY" - "$MNT/.rekeyfs/control" "$1" >"$T_OUT" 2>"$T_ERR" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.write(fd, (sys.argv[2] + "\n").encode())
print(os.read(fd, 65536).decode(errors="replace"), end="")
EOF
	RC=$?
}
checking "the control file refuses a chunk size that wraps around, and other loose numbers"
for cmd in "alter / - 4194308" "alter / - 4294967300" "alter / - -4" "alter / - +64" "alter / - 064" "alter / - 64k" \
	"rate -1" "rate 1x" "rate 18446744073709551617"; do
	ctl "$cmd"
	assert_rc 0 "control write ($cmd)"
	assert_out_has "^error " "'$cmd' is refused"
done
ctl "alter / - 64"
assert_out_has "^ok .*chunk_kb=64" "a valid chunk size is accepted"
ctl "alter / - 16"

checking "rekeyctl fsck and status print a file name with an escape sequence escaped"
ctl "alter / key2"
assert_out_has "^ok " "alter / to key2"
run rekeyctl fsck --verbose "$MNT"
cat "$T_OUT"
grep -Fq 'evil\x1b]0;pwned\x07\x1b[2Jname.db' "$T_OUT" || fail "online fsck does not show the escaped name"
no_raw_ctl "$T_OUT" "rekeyctl fsck (online)"
run rekeyctl fsck --json --verbose "$MNT"
grep -Fq 'evil\u001b]0;pwned\u0007\u001b[2Jname.db' "$T_OUT" || fail "fsck --json does not escape by JSON rules"
no_raw_ctl "$T_OUT" "rekeyctl fsck --json"
run rekeyctl status "$MNT"
no_raw_ctl "$T_OUT" "rekeyctl status"
umount_fs "$MNT"
run rekeyctl fsck -d "$KEYS" --verbose "$DATA"
grep -Fq 'evil\x1b]0;pwned\x07\x1b[2Jname.db' "$T_OUT" || fail "offline fsck does not show the escaped name"
no_raw_ctl "$T_OUT" "rekeyctl fsck (offline)"
no_raw_ctl "$T_ERR" "rekeyctl fsck (offline) messages"
run rekeyctl encrypt -d "$KEYS" "$DATA"
no_raw_ctl "$T_OUT" "rekeyctl encrypt"
no_raw_ctl "$T_ERR" "rekeyctl encrypt messages"

finish
