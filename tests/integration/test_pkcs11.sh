#!/bin/bash
# PKCS#11 token keys (issue 16, item 4a), with a SoftHSM2 token made here:
#   - rekeyctl createkey --pkcs11 makes an AES-256 key in the token (never
#     extractable) and its entry; keys shows the provider
#   - data written under a file key (key1); offline rotate --rewrap to the
#     token key with --release: every byte reads back without key1's file
#     (the data keys are opened by the token)
#   - the token absent: reads fail with an error, never wrong bytes
#   - the token's key object replaced by another of the same label: the
#     mount and a rewrap are refused by key-change detection
#   - rewrap back to a file key (key3) with --release of the token key, then
#     an online reseal onto the token key (fresh data keys sealed in the
#     token by the daemon), each checked byte for byte
#   - a daemon that forks after loading the token key (no -f) reads
#   - refusals naming the entry and the cause: wrong PIN (the PIN never in
#     the log), loose pin file, pin-value in the URI, missing module, no
#     such object, key objects that are extractable, not sensitive, AES-128
#     or unable to sign (made by tests/p11_mkkey)
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd md5sum softhsm2-util
MODULE="${REKEYFS_P11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
if [ ! -f "$MODULE" ]; then
	[ "${CI:-}" = "true" ] && fail "SoftHSM2 module $MODULE is missing (CI=true: not skipping)"
	skip "SoftHSM2 module $MODULE is missing (apt-get install softhsm2)"
fi
integ_setup
run rekeyctl createkey -d "$KEYS" AES/GCM/NoPadding 256 key3
assert_rc 0 "createkey key3"

# the token: a SoftHSM2 configuration and token directory of our own
HSM="$T_TMP/hsm"
mkdir -m 0700 "$HSM" "$HSM/tokens" || fail "mkdir $HSM"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$HSM" >"$HSM/softhsm2.conf"
export SOFTHSM2_CONF="$HSM/softhsm2.conf"
PIN=73914682
init_token() {
	softhsm2-util --init-token --free --label rk --pin "$PIN" --so-pin 5678 >"$T_TMP/hsm.out" 2>&1 ||
		fail "softhsm2-util --init-token: $(cat "$T_TMP/hsm.out")"
}
init_token
printf '%s\n' "$PIN" >"$HSM/pin" && chmod 0600 "$HSM/pin"
URI="pkcs11:token=rk;object=kek1;type=secret-key?module-path=$MODULE&pin-source=file:$HSM/pin"

checking "createkey --pkcs11 makes the key in the token; keys shows the provider; a second of that label refused"
run rekeyctl createkey -d "$KEYS" --pkcs11 "$URI" tok
assert_rc 0 "createkey --pkcs11 (stderr: $(cat "$T_ERR"))"
[ "$(stat -c %a "$KEYS/tok")" = 600 ] || fail "entry mode $(stat -c %a "$KEYS/tok")"
head -1 "$KEYS/tok" | grep -qx "rekeyfs-pkcs11 1" || fail "entry: $(cat "$KEYS/tok")"
run rekeyctl keys -d "$KEYS"
assert_rc 0 "keys"
grep -Eq "^tok +AES/GCM/NoPadding +256 +[0-9a-f]{32} +ok \(pkcs11 pkcs11:token=rk;object=kek1;type=secret-key\)$" "$T_OUT" ||
	fail "tok not listed with its provider: $(cat "$T_OUT")"
FP="$(awk '$1 == "tok" {print $4}' "$T_OUT")"
! grep -q "$PIN" "$T_OUT" "$T_ERR" || fail "the PIN was printed"
run rekeyctl createkey -d "$KEYS" --pkcs11 "$URI" tok2
assert_rc_nonzero "a second key of label kek1"
assert_err_has "already holds a secret key of that label" "second key refused"
ok

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16 key1
mount_fs "$DATA" "$MNT"
for i in 1 2 3 4; do
	head -c $((40000 * i + 123)) /dev/urandom >"$MNT/f$i" || fail "write f$i"
done
: >"$MNT/empty"
sync
(cd "$MNT" && md5sum f1 f2 f3 f4 empty) >"$T_TMP/sums"
umount_fs "$MNT"
check_sums() {
	mount_fs "$DATA" "$MNT" "lazy=off,walker=off"
	(cd "$MNT" && md5sum -c --quiet "$T_TMP/sums") >"$T_TMP/sums.out" 2>&1 ||
		fail "$1: files differ: $(head -c 1500 "$T_TMP/sums.out")"
	umount_fs "$MNT"
}
# wrap_methods: the wrap method of every in-use key entry of every file
# (rekeyfs(5): format 2 header, 16 wrap entries from byte 1600, 152 bytes each)
wrap_methods() {
	python3 - "$DATA" <<'PY'
import os, sys
ms = set()
for d, _, fs in os.walk(sys.argv[1]):
    if "/.rekeyfs" in d + "/":
        continue
    for f in fs:
        b = open(os.path.join(d, f), "rb").read(4096)
        for j in range(16):
            m = b[1600 + 152 * j]
            if m:
                ms.add(m)
print(" ".join(str(m) for m in sorted(ms)))
PY
}

checking "offline rotate --rewrap key1 -> tok --release: every byte reads back without key1's file"
run rekeyctl rotate -d "$KEYS" --rewrap --from key1 --to tok --release "$DATA"
assert_rc 0 "rewrap key1 -> tok (stderr: $(cat "$T_ERR"))"
[ "$(wrap_methods)" = 2 ] || fail "wrap methods after the rewrap: '$(wrap_methods)' (expected 2, the token's)"
mv "$KEYS/key1" "$T_TMP/key1.gone"
check_sums "after the rewrap to tok"
ok

checking "the token absent: a read fails with an error, never wrong bytes"
run rekeyctl alter -d "$KEYS" "$DATA" --key key3
assert_rc 0 "alter / --key key3 (stderr: $(cat "$T_ERR"))"
mv "$HSM/tokens" "$HSM/tokens.away" && mkdir -m 0700 "$HSM/tokens"
# the table's key (key3) loads: the mount comes up; tok is missing
mount_fs "$DATA" "$MNT" "lazy=off,walker=off"
if head -c 4096 "$MNT/f1" >"$T_TMP/f1.absent" 2>"$T_TMP/read.err"; then
	umount_fs "$MNT"
	fail "f1 read with the token absent ($(wc -c <"$T_TMP/f1.absent") bytes)"
fi
[ ! -s "$T_TMP/f1.absent" ] || fail "bytes returned with the token absent"
umount_fs "$MNT"
grep -q "no token matches" "$LAST_LOG" || fail "the log does not say the token is absent: $(tail -5 "$LAST_LOG")"
rm -rf "$HSM/tokens" && mv "$HSM/tokens.away" "$HSM/tokens"
ok

checking "the token's key replaced by another of the same label: mount and rewrap refused (key-change detection)"
cp -a "$HSM/tokens" "$HSM/tokens.orig"
softhsm2-util --delete-token --token rk >"$T_TMP/hsm.out" 2>&1 || fail "delete-token: $(cat "$T_TMP/hsm.out")"
init_token
mkdir -m 0700 "$T_TMP/keys2"
run rekeyctl createkey -d "$T_TMP/keys2" --pkcs11 "$URI" tok
assert_rc 0 "createkey of the replacement (stderr: $(cat "$T_ERR"))"
FP2="$(rekeyctl keys -d "$KEYS" | awk '$1 == "tok" {print $4}')"
[ -n "$FP2" ] && [ "$FP2" != "$FP" ] || fail "the replaced key's fingerprint '$FP2' (was $FP)"
run rekeyctl keys -d "$KEYS" "$DATA"
grep -Eq "^tok .* CHANGED " "$T_OUT" || fail "keys DATADIR does not show tok as CHANGED: $(cat "$T_OUT")"
find "$DATA" -path "$DATA/.rekeyfs" -prune -o -type f -print0 | sort -z | xargs -0 md5sum >"$T_TMP/stored.before"
run rekeyctl rotate -d "$KEYS" --rewrap --from tok --to key3 "$DATA"
assert_rc_nonzero "rewrap under a replaced token key"
assert_err_has "does not match the fingerprint recorded for key 'tok'" "changed key named"
find "$DATA" -path "$DATA/.rekeyfs" -prune -o -type f -print0 | sort -z | xargs -0 md5sum >"$T_TMP/stored.after"
cmp -s "$T_TMP/stored.before" "$T_TMP/stored.after" || fail "files changed under a replaced key"
if rkfx_mount "$DATA" "$MNT" "$KEYS" "" "$T_TMP/changed.log" 2>/dev/null; then
	umount_fs "$MNT"
	fail "mounted with a replaced token key"
fi
grep -q "does not match the fingerprint recorded for key 'tok'" "$T_TMP/changed.log" ||
	fail "mount refusal does not name the changed key: $(tail -5 "$T_TMP/changed.log")"
rm -rf "$HSM/tokens" && mv "$HSM/tokens.orig" "$HSM/tokens"
ok

checking "offline rotate --rewrap tok -> key3 --release: every byte reads back without the token entry"
run rekeyctl rotate -d "$KEYS" --rewrap --from tok --to key3 --release "$DATA"
assert_rc 0 "rewrap tok -> key3 (stderr: $(cat "$T_ERR"))"
[ "$(wrap_methods)" = 1 ] || fail "wrap methods after the rewrap back: '$(wrap_methods)' (expected 1)"
mv "$KEYS/tok" "$T_TMP/tok.gone"
check_sums "after the rewrap to key3"
ok

checking "online reseal key3 -> tok2 (a new token key) --release: data keys sealed by the token in the daemon"
run rekeyctl createkey -d "$KEYS" --pkcs11 "${URI/object=kek1/object=kek2}" tok2
assert_rc 0 "createkey tok2 (stderr: $(cat "$T_ERR"))"
mount_fs "$DATA" "$MNT"
run rekeyctl rotate -d "$KEYS" --from key3 --to tok2 --release --wait "$MNT"
assert_rc 0 "rotate key3 -> tok2 (stderr: $(cat "$T_ERR"))"
umount_fs "$MNT"
[ "$(wrap_methods)" = 2 ] || fail "wrap methods after the reseal: '$(wrap_methods)' (expected 2)"
mv "$KEYS/key3" "$T_TMP/key3.gone"
check_sums "after the reseal to tok2"
ok

checking "a format 1 file written under a token key becomes format 2 first: the token key never derives a v1 subkey"
cp "$TEST_SRCDIR/golden/keys/golden_aes256" "$KEYS/" && chmod 600 "$KEYS/golden_aes256" || fail "golden key"
D1="$T_TMP/d1"
M1="$T_TMP/m1"
mkdir -p "$D1" "$M1"
run rekeyctl init -d "$KEYS" --key golden_aes256 "$D1"
assert_rc 0 "init d1"
cp "$TEST_SRCDIR/golden/files/one-chunk.txt" "$D1/v1.txt" || fail "copy the golden file"
run rekeyctl alter -d "$KEYS" "$D1" --key tok2
assert_rc 0 "alter d1 to tok2"
v1hdr() { python3 -c 'import sys; b=open(sys.argv[1],"rb").read(4096); print(b[8] | b[9] << 8, sorted({b[1600+152*j] for j in range(16)} - {0}))' "$1"; }
[ "$(v1hdr "$D1/v1.txt")" = "1 []" ] || fail "the golden file is not format 1: $(v1hdr "$D1/v1.txt")"
mount_fs "$D1" "$M1" "lazy=off,walker=off"
md5sum <"$M1/v1.txt" >"$T_TMP/v1.before" || fail "read the format 1 file"
printf 'appended under the token key\n' >>"$M1/v1.txt" || fail "append to the format 1 file"
sync
{ head -c 65536 "$M1/v1.txt" | md5sum; } >"$T_TMP/v1.after"
diff "$T_TMP/v1.before" "$T_TMP/v1.after" >/dev/null || fail "the old chunk changed after the append"
[ "$(tail -c 29 "$M1/v1.txt")" = "appended under the token key" ] || fail "the appended bytes: $(tail -c 29 "$M1/v1.txt" | od -c | head -3)"
umount_fs "$M1"
# version 2, the old entry wrapped by the file method (its v1 subkey), the new one by the token
[ "$(v1hdr "$D1/v1.txt")" = "2 [1, 2]" ] ||
	fail "after a write under tok2 the header is '$(v1hdr "$D1/v1.txt")' (expected version 2, wrap methods [1, 2])"
mount_fs "$D1" "$M1" "lazy=off,walker=off"
[ "$(tail -c 29 "$M1/v1.txt")" = "appended under the token key" ] || fail "the appended bytes after a remount"
umount_fs "$M1"
ok

checking "a token that stops answering does not stop the mount: file-key reads go on, token reads fail after the deadline"
STALL="$T_TMP/stall"
SHIM="$TOP_BUILDDIR/tests/p11_stall.so"
[ -f "$SHIM" ] || fail "$SHIM is missing (make check builds it)"
run rekeyctl createkey -d "$KEYS" --pkcs11 "pkcs11:token=rk;object=kekS;type=secret-key?module-path=$SHIM&pin-source=file:$HSM/pin" tokS
assert_rc 0 "createkey tokS through the stalling module (stderr: $(cat "$T_ERR"))"
D2="$T_TMP/d2"
M2="$T_TMP/m2"
mkdir -p "$D2/ks/t"
run rekeyctl init -d "$KEYS" --key tokS "$D2"
assert_rc 0 "init d2 under tokS"
run rekeyctl alter -d "$KEYS" "$D2/ks/t" --key golden_aes256
assert_rc 0 "a table of d2 under a file key"
mount_fs "$D2" "$M2" "lazy=off,walker=off"
for i in $(seq 12); do head -c 5000 /dev/urandom >"$M2/tf$i" || fail "write tf$i"; done
head -c 5000 /dev/urandom >"$M2/ks/t/ff" || fail "write ff"
md5sum "$M2/tf1" | cut -d' ' -f1 >"$T_TMP/tf1.sum"
umount_fs "$M2"
export P11_STALL_FILE="$STALL" REKEYFS_P11_TIMEOUT=2
mount_fs "$D2" "$M2" "lazy=off,walker=off"
touch "$STALL"
for i in $(seq 12); do
	( cat "$M2/tf$i" >/dev/null 2>&1; echo $? >"$T_TMP/tok.rc.$i" ) &
done
run timeout 8 cat "$M2/ks/t/ff"
assert_rc 0 "a file under a file key reads while the token stalls (124: the mount hung)"
run timeout 8 stat "$M2/ks/t/ff"
assert_rc 0 "stat while the token stalls"
tok_readers_done() { [ "$(ls "$T_TMP"/tok.rc.* 2>/dev/null | wc -l)" -eq 12 ]; }
wait_until 30 "the readers of token-key files did not end while the token stalls" tok_readers_done
for i in $(seq 12); do
	[ "$(cat "$T_TMP/tok.rc.$i")" != 0 ] || fail "tf$i read while the token stalled: it must fail, not wait or return bytes"
done
grep -q "whose PKCS#11 token did not answer in time" "$LAST_LOG" || fail "the daemon's log does not say the token stalled: $(grep -i -m5 "pkcs\|token" "$LAST_LOG")"
rm -f "$STALL"
tok_back() { [ "$(md5sum <"$M2/tf1" 2>/dev/null | cut -d' ' -f1)" = "$(cat "$T_TMP/tf1.sum")" ]; }
wait_until 30 "tf1 does not read back once the token answers again" tok_back
umount_fs "$M2"
unset P11_STALL_FILE REKEYFS_P11_TIMEOUT
ok

checking "a daemon that forks after loading the token key (no -f) opens the data keys in its own process"
BIN_RKFS="$(rkfx_bin rekeyfs)" || fail "no rekeyfs"
mkdir -p "$MNT"
"$BIN_RKFS" -o "keydir=$KEYS,lazy=off,walker=off" "$DATA" "$MNT" >"$T_TMP/bg.log" 2>&1 ||
	fail "rekeyfs (daemonized) failed: $(tail -5 "$T_TMP/bg.log")"
at_exit "fusermount3 -u '$MNT' 2>/dev/null"
forked_ok() { mountpoint -q "$MNT"; }
wait_until 20 "the daemonized mount did not come up" forked_ok
(cd "$MNT" && md5sum -c --quiet "$T_TMP/sums") >"$T_TMP/sums.out" 2>&1 ||
	fail "daemonized: files differ: $(head -c 1500 "$T_TMP/sums.out")"
DPID_BG="$(pgrep -f "rekeyfs -o keydir=$KEYS" | head -1)"
fusermount3 -u "$MNT" || fail "fusermount3 -u $MNT"
bg_gone() { [ -z "$DPID_BG" ] || ! kill -0 "$DPID_BG" 2>/dev/null; }
wait_until 20 "the daemonized rekeyfs ($DPID_BG) did not exit" bg_gone
ok

checking "refusals name the entry and the cause (wrong PIN, loose pin file, pin-value, module, object, unsafe key objects)"
refused() { # refused CASE WHY URI [PINMODE]: rekeyctl keys names the entry and WHY
	local c="$1" why="$2" d="$T_TMP/r/$1"
	mkdir -p -m 0700 "$d"
	printf 'rekeyfs-pkcs11 1\n%s\n' "$3" >"$d/k" && chmod 0600 "$d/k"
	run rekeyctl keys -d "$d"
	assert_rc 0 "keys -d $d"
	grep -Eq "^k +\? " "$T_OUT" || fail "$c: key k not refused: $(cat "$T_OUT")"
	assert_err_has "$d/k" "$c: the message names the entry"
	assert_err_has "$why" "$c: the cause"
	! grep -q "$PIN" "$T_ERR" "$T_OUT" || fail "$c: the PIN reached the output"
}
printf '1111\n' >"$HSM/badpin" && chmod 0600 "$HSM/badpin"
cp "$HSM/pin" "$HSM/looseapin" && chmod 0644 "$HSM/looseapin"
U2="${URI/object=kek1/object=kek2}"
refused wrong_pin "wrong PIN" "${U2/file:$HSM\/pin/file:$HSM/badpin}"
refused loose_pin "has mode 0644" "${U2/file:$HSM\/pin/file:$HSM/looseapin}"
refused pin_value "holds pin-value: refused" "${U2/pin-source=file:$HSM\/pin/pin-value=$PIN}"
refused no_module "the module /nonexistent/p11.so" "${U2/module-path=$MODULE/module-path=/nonexistent/p11.so}"
refused no_object "no secret key on the token matches" "${U2/object=kek2/object=nosuch}"
mkdir -m 0777 "$T_TMP/opendir" && cp "$MODULE" "$T_TMP/opendir/p11.so" || fail "a module in an open directory"
refused open_module_dir "directory $T_TMP/opendir has mode 0777, writable by group or others" \
	"${U2/module-path=$MODULE/module-path=$T_TMP/opendir/p11.so}"
MK="$TOP_BUILDDIR/tests/p11_mkkey"
[ -x "$MK" ] || fail "$MK missing (built by make check)"
for kind in extractable insensitive aes128 nosign; do
	"$MK" "$MODULE" rk "$HSM/pin" "bad-$kind" "$kind" || fail "p11_mkkey $kind"
done
refused extractable "is refused: it is extractable" "${U2/object=kek2/object=bad-extractable}"
refused insensitive "is refused: it is not sensitive" "${U2/object=kek2/object=bad-insensitive}"
refused aes128 "is refused: it is not an AES-256 key" "${U2/object=kek2/object=bad-aes128}"
refused nosign "is refused: it cannot sign" "${U2/object=kek2/object=bad-nosign}"
ok
finish
