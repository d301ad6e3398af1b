#!/bin/bash
# rekeyfs - journal replay never writes outside the data directory, and
# `rekeyctl cat` never replays (a restored backup is read, not modified).
#
# A forged .rekeyfs/journal (old unauthenticated format, and the current
# authenticated one forged with the real key) whose record names a chunk
# file outside the data directory (through "..", or a symlink): `rekeyctl
# cat` must refuse and change no file; the offline replay (`rekeyctl fsck`)
# must refuse with a message and leave the outside file byte-identical.
#
# Needs: rekeyctl on PATH, python3.  Root (offline tools replay as root).
set -u

T_LIBDIR="${TEST_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}"
. "$T_LIBDIR/lib.sh"

need_rekeyctl
need_root
need_cmd python3 md5sum find cmp
echo "using $(command -v rekeyctl)"

make_tmpdir
unset REKEYFS_KEYDIR REKEYFS_CRASHPOINT
K="$T_TMP/keys"
D="$T_TMP/data"
OUT="$T_TMP/outside"
mkdir -p "$D/db" "$OUT"

run rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k1
assert_rc 0 "createkey"
run rekeyctl init -d "$K" --key k1 "$D"
assert_rc 0 "init"
make_random "$D/db/t1" 300000
cp "$D/db/t1" "$T_TMP/t1.plain"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 0 "encrypt: $(cat "$T_ERR")"
is_chunk_file "$D/db/t1" || fail "t1 was not encrypted"
# the victim: a chunk file outside the data directory with t1's file id
cp "$D/db/t1" "$OUT/victim"

# forge KIND PATH: write .rekeyfs/journal with one slot record for PATH
# (slot 0, 100 bytes of 0x41) in format KIND (v1: unauthenticated, v2:
# authenticated with k1, as only someone holding the key could)
forge() {
	python3 - "$1" "$2" "$D/db/t1" "$D/.rekeyfs/journal" "$K/k1" <<'PY'
import sys, struct, hashlib, hmac, base64
kind, path, chunk, jpath, keyfile = sys.argv[1:]
with open(chunk, "rb") as f:
    fid = f.read(4096)[24:40]
img = b"A" * 100
p = path.encode()
if kind == "v1":
    h = b"RKJ1" + bytes([1, 0, 0, 0]) + struct.pack("<QQII", 1, 8192, len(img), 0) + fid + struct.pack("<IHH", 0xffffffff, 0, len(p))
    rec = h + p + img
    data = rec + hashlib.sha256(rec).digest()
else:
    mat = base64.b64decode(open(keyfile).read().strip().split(":")[2])
    # the key's fingerprint, as rekeyctl keys prints it
    import subprocess
    fp = None
    out = subprocess.run(["rekeyctl", "keys", "-d", keyfile.rsplit("/", 1)[0]], capture_output=True, text=True).stdout
    for line in out.split("\n"):
        f = line.split()
        if f and f[0] == "k1":
            fp = bytes.fromhex(f[3])
    jid = bytes(range(16))
    prk = hmac.new(jid, mat, hashlib.sha256).digest()
    mk = hmac.new(prk, b"rekeyfs journal v2" + fp + b"\x01", hashlib.sha256).digest()
    hdr = b"RKJH" + struct.pack("<HBx", 2, 2) + jid + fp + b"k1".ljust(64, b"\0")
    hdr += hmac.new(mk, hdr, hashlib.sha256).digest()
    h = b"RKJ2" + bytes([1, 0, 0, 0]) + struct.pack("<QQII", 1, 8192, len(img), 0) + fid
    h += struct.pack("<IHHQ", 0xffffffff, 0, len(p), 0)
    rec = h + p + img
    data = hdr + rec + hmac.new(mk, rec, hashlib.sha256).digest()
open(jpath, "wb").write(data)
PY
}

# sums FILE: md5 of every file of the keys, the data directory and outside
sums() {
	(cd "$T_TMP" && find keys data outside -type f -print0 | sort -z | xargs -0 md5sum) >"$1"
}

checking "rekeyctl cat on a tree with a pending (forged) journal changes no file and refuses"
for kind in v1 v2; do
	forge $kind "/../outside/victim"
	sums "$T_TMP/sums.before"
	rekeyctl cat -d "$K" "$D/db/t1" >"$T_TMP/cat.out" 2>"$T_TMP/cat.err"
	RC=$?
	sums "$T_TMP/sums.after"
	cmp -s "$T_TMP/sums.before" "$T_TMP/sums.after" ||
		fail "$kind: rekeyctl cat modified files: $(diff "$T_TMP/sums.before" "$T_TMP/sums.after")"
	[ $RC -ne 0 ] || fail "$kind: rekeyctl cat read the file around a pending journal without saying so"
	grep -q "pending journal" "$T_TMP/cat.err" || fail "$kind: rekeyctl cat: no clear message: $(cat "$T_TMP/cat.err")"
done
ok

checking "offline replay of a journal naming ../outside/victim refuses and leaves it byte-identical"
for kind in v1 v2; do
	forge $kind "/../outside/victim"
	cp "$OUT/victim" "$T_TMP/victim.before"
	run rekeyctl fsck -d "$K" "$D"
	cmp -s "$OUT/victim" "$T_TMP/victim.before" || fail "$kind: the journal replay wrote to $OUT/victim"
	[ $RC -ne 0 ] || fail "$kind: rekeyctl fsck accepted a forged journal"
	if [ $kind = v1 ]; then
		assert_err_has "version-1 journal" "$kind: fsck"
	else
		assert_err_has "not a path strictly beneath" "$kind: fsck"
	fi
	[ -s "$D/.rekeyfs/journal" ] || fail "$kind: the refused journal was not kept for the operator"
done
ok

checking "offline replay through a symlinked directory refuses and leaves the target byte-identical"
ln -s "$OUT" "$D/lnk"
forge v2 "/lnk/victim"
run rekeyctl fsck -d "$K" "$D"
cmp -s "$OUT/victim" "$T_TMP/victim.before" || fail "the journal replay wrote through a symlink"
[ $RC -ne 0 ] || fail "rekeyctl fsck accepted a journal record through a symlink"
assert_err_has "symlink" "fsck"
rm -f "$D/lnk" "$D/.rekeyfs/journal"
ok

checking "t1 still reads back intact"
run rekeyctl cat -d "$K" "$D/db/t1"
assert_rc 0 "cat: $(cat "$T_ERR")"
cmp -s "$T_OUT" "$T_TMP/t1.plain" || fail "t1 does not read back as written"
ok
