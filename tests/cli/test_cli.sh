#!/bin/bash
# rekeyfs - end-to-end tests of rekeyctl on a data directory (no mount):
# createkey, key directory resolution and permissions, init, encrypt (sizes,
# sparse files, metadata, hard links, idempotence, crash safety at every
# crash point), cat, keys, alter, locking.
#
# Needs: rekeyctl on PATH (make check puts the build directory first).
# Root is used for the ownership check when available (skipped otherwise).
set -u

T_LIBDIR="${TEST_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}"
. "$T_LIBDIR/lib.sh"

need_rekeyctl
need_cmd cmp od dd awk stat flock truncate base64 md5sum du find
echo "using $(command -v rekeyctl) ($(rekeyctl --version 2>&1))"

make_tmpdir
unset REKEYFS_KEYDIR REKEYFS_CRASHPOINT
K="$T_TMP/keys"        # key directory
D="$T_TMP/data"        # data directory
O="$T_TMP/orig"        # plaintext originals
T_ALL="$T_TMP/all-output.log"
mkdir -p "$D" "$O"

# catto OUTFILE STORED [KEYDIR]: rekeyctl cat into OUTFILE, stderr in $T_ERR, status in $RC
catto() {
	rekeyctl cat -d "${3:-$K}" "$2" >"$1" 2>"$T_ERR"
	RC=$?
	cat "$T_ERR" >>"$T_ALL"
	: >"$T_OUT"
}

# key_field NAME FIELD: a column of `rekeyctl keys -d K D` output for key NAME
# (fields: 1 KEY 2 CIPHER 3 BITS 4 FINGERPRINT 5 STATE 6 KEY-FILE 7 CHUNKS 8 FILES 9 TARGET-OF)
key_field() {
	awk -v k="$1" -v f="$2" '$1 == k { print $f; exit }' "$T_OUT"
}

# ===========================================================================
# createkey
# ===========================================================================
checking "createkey AES/GCM/NoPadding 256 creates a 0600 key file in a new 0700 key directory"
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k1
assert_rc 0 "createkey k1"
assert_exists "$K/k1" "createkey k1"
assert_eq "$(stat -c %a "$K/k1")" 600 "mode of the key file"
assert_eq "$(stat -c %a "$K")" 700 "mode of the created key directory"
assert_out_has "fingerprint [0-9a-f]{32}" "createkey prints the fingerprint"
K1_FP=$(grep -Eo "fingerprint [0-9a-f]{32}" "$T_OUT" | awk '{print $2}')

checking "key file content is one line CIPHER:STRENGTH:BASE64 with a 256-bit key"
assert_eq "$(wc -l <"$K/k1" | tr -d ' ')" 1 "line count of the key file"
assert_file_has "$K/k1" '^AES/GCM/NoPadding:256:[A-Za-z0-9+/]{43}=$' "key file format"
assert_eq "$(cut -d: -f3 "$K/k1" | base64 -d | wc -c | tr -d ' ')" 32 "decoded key length (bytes)"

checking "createkey ChaCha20/Poly1305/NoPadding 256 and AES/GCM/NoPadding 128"
run rekeyctl createkey -d "$K" ChaCha20/Poly1305/NoPadding 256 k2
assert_rc 0 "createkey k2"
assert_file_has "$K/k2" '^ChaCha20/Poly1305/NoPadding:256:[A-Za-z0-9+/]{43}=$' "ChaCha20 key file format"
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 128 k128
assert_rc 0 "createkey k128"
assert_file_has "$K/k128" '^AES/GCM/NoPadding:128:[A-Za-z0-9+/]{22}==$' "AES-128 key file format"
assert_eq "$(cut -d: -f3 "$K/k128" | base64 -d | wc -c | tr -d ' ')" 16 "decoded AES-128 key length"
assert_ne "$(cut -d: -f3 "$K/k1")" "$(cut -d: -f3 "$K/k2")" "two keys have different material"

checking "createkey refuses to overwrite an existing key (exit 1, message, file unchanged)"
cp -p "$K/k1" "$T_TMP/k1.before"
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 k1
assert_rc 1 "createkey over an existing key"
assert_err_has "already exists" "overwrite refusal message"
assert_err_has "$K/k1" "overwrite refusal names the key file"
assert_same "$K/k1" "$T_TMP/k1.before" "existing key file"

for mode in AES/ECB/PKCS5Padding AES/CBC/PKCS5Padding AES/CBC/NoPadding; do
	checking "createkey $mode is refused (exit 2) because it is unauthenticated"
	run rekeyctl createkey -d "$K" "$mode" 256 weak
	assert_rc 2 "createkey $mode"
	assert_err_has "unauthenticated" "refusal of $mode explains why"
	assert_not_exists "$K/weak" "no key file for a refused cipher"
done

checking "createkey refuses a strength the cipher does not have (exit 2)"
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 192 weak
assert_rc 2 "createkey AES 192"
assert_err_has "128 or 256" "strength refusal message"
run rekeyctl createkey -d "$K" ChaCha20/Poly1305/NoPadding 128 weak
assert_rc 2 "createkey ChaCha20 128"
assert_not_exists "$K/weak" "no key file for a refused strength"

checking "createkey refuses a bad key name (exit 2)"
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 "../escape"
assert_rc 2 "createkey ../escape"
assert_not_exists "$T_TMP/escape" "no key file outside the key directory"

# ===========================================================================
# key directory resolution
# ===========================================================================
checking "\$REKEYFS_KEYDIR is used when -d is absent"
run_env REKEYFS_KEYDIR="$T_TMP/envkeys" -- rekeyctl createkey AES/GCM/NoPadding 256 envkey
assert_rc 0 "createkey with REKEYFS_KEYDIR"
assert_exists "$T_TMP/envkeys/envkey" "key created in \$REKEYFS_KEYDIR"
assert_not_exists "$K/envkey" "key not created in another directory"
run_env REKEYFS_KEYDIR="$K" -- rekeyctl keys
assert_rc 0 "keys with REKEYFS_KEYDIR"
assert_out_has "^k1 .*AES/GCM/NoPadding +256 +${K1_FP} +ok" "keys lists k1 from \$REKEYFS_KEYDIR with its fingerprint"
assert_out_has "^k2 " "keys lists k2"

checking "-d takes precedence over \$REKEYFS_KEYDIR"
run_env REKEYFS_KEYDIR="$T_TMP/envkeys" -- rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 dkey
assert_rc 0 "createkey -d with REKEYFS_KEYDIR set"
assert_exists "$K/dkey" "key created in the -d directory"
assert_not_exists "$T_TMP/envkeys/dkey" "key not created in \$REKEYFS_KEYDIR"

# ===========================================================================
# key file permissions
# ===========================================================================
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 loose
assert_rc 0 "createkey loose"
for m in 644 640 604 660; do
	checking "a key file with mode $m is refused, naming the file and chmod 600"
	chmod "$m" "$K/loose"
	mkdir -p "$T_TMP/loose-data"
	run rekeyctl init -d "$K" --key loose "$T_TMP/loose-data"
	assert_rc 1 "init with a mode $m key"
	assert_err_has "$K/loose" "refusal names the key file"
	assert_err_has "chmod 600" "refusal says how to fix it"
	assert_not_exists "$T_TMP/loose-data/.rekeyfs" "no data directory made with a refused key"
done
checking "keys lists a loose key file as refused"
run rekeyctl keys -d "$K"
assert_rc 0 "keys"
assert_out_has "^loose .*refused" "keys shows the loose key as refused"
chmod 600 "$K/loose"
run rekeyctl init -d "$K" --key loose "$T_TMP/loose-data"
assert_rc 0 "init once the key file is 0600"

# ===========================================================================
# init
# ===========================================================================
checking "init creates the data directory state"
# 64 KiB chunks: the offsets below are computed for them
run rekeyctl init -d "$K" --key k1 --chunk-kb 64 "$D"
assert_rc 0 "init"
assert_exists "$D/.rekeyfs" "init"
assert_out_has "k1" "init output names the key"

checking "a second init is refused"
run rekeyctl init -d "$K" --key k1 "$D"
assert_rc 1 "second init"
assert_err_has "already a rekeyfs data directory" "second init message"

checking "init with a key that does not exist gives the createkey hint"
mkdir -p "$T_TMP/nokey-data"
run rekeyctl init -d "$K" --key nosuchkey "$T_TMP/nokey-data"
assert_rc 1 "init with a missing key"
assert_err_has "nosuchkey" "message names the key"
assert_err_has "rekeyctl createkey" "message says how to create the key"
assert_not_exists "$T_TMP/nokey-data/.rekeyfs" "no data directory made without a key"

checking "commands on a directory that is not a data directory say how to init"
run rekeyctl encrypt -d "$K" "$T_TMP/nokey-data"
assert_rc_nonzero "encrypt on a plain directory"
assert_err_has "rekeyctl init" "message says how to init"

# ===========================================================================
# encrypt: sizes, cat round trip, sparse files, compression
# ===========================================================================
make_random "$O/s0" 0
make_text "$O/s1" 1 1
make_random "$O/s65535" 65535
make_text "$O/s65536" 65536 2
# the byte of its second chunk is not random: a zero byte (1 run in 256)
# makes that chunk all zero, and all-zero chunks stay holes
make_random "$O/s65537" 65536
printf 'R' >>"$O/s65537"
make_random "$O/r1m" $((1024 * 1024))
make_text "$O/t5m" $((5 * 1024 * 1024)) 3
# sparse 20 MiB: data in chunk 0, chunk 160 (10 MiB) and the very last byte
truncate -s $((20 * 1024 * 1024)) "$O/sparse20m"
make_random "$T_TMP/piece" 4096
dd if="$T_TMP/piece" of="$O/sparse20m" bs=4096 seek=0 conv=notrunc status=none
dd if="$T_TMP/piece" of="$O/sparse20m" bs=4096 seek=2560 conv=notrunc status=none
printf 'Z' | dd of="$O/sparse20m" bs=1 seek=$((20 * 1024 * 1024 - 1)) conv=notrunc status=none
# data, then 200000 zero bytes to the end (the conversion ends by growing the file)
make_random "$O/tailzero" 65536
truncate -s $((65536 + 200000)) "$O/tailzero"
SIZES="s0 s1 s65535 s65536 s65537 r1m t5m sparse20m tailzero"
NSIZES=9
# expected chunks: 0+1+1+1+2+16+80+3+1 (all-zero chunks stay holes)
EXP_CHUNKS=105
for f in $SIZES; do cp --sparse=always "$O/$f" "$D/$f"; done
sync
DU_T5M_BEFORE=$(du -k "$D/t5m" | cut -f1)

checking "encrypt converts plain files of sizes 0, 1, 65535, 65536, 65537, 1 MiB, 5 MiB, sparse 20 MiB, zero tail"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 0 "encrypt"
assert_out_has "^$NSIZES encrypted, 0 already chunk files, 0 skipped, 0 failed" "encrypt summary"
for f in $SIZES; do
	is_chunk_file "$D/$f" || fail "$D/$f is not a chunk file after encrypt"
	if cmp -s "$D/$f" "$O/$f" && [ -s "$O/$f" ]; then fail "$D/$f still holds the plaintext"; fi
done
ok "all $NSIZES are chunk files"

checking "rekeyctl cat gives byte-identical output for every size"
for f in $SIZES; do
	catto "$T_TMP/cat.out" "$D/$f"
	assert_rc 0 "cat $f"
	assert_same "$T_TMP/cat.out" "$O/$f" "cat $f"
done
ok "$NSIZES files identical through cat"

checking "plaintext does not appear in the stored files"
grep -q "row 0000100 value" "$D/t5m" && fail "the text file's rows are readable in the stored file"
ok "no plaintext rows in the stored text file"

checking "compressible data takes less space after encryption (du)"
sync
DU_T5M_AFTER=$(du -k "$D/t5m" | cut -f1)
echo "  du: 5 MiB text file: ${DU_T5M_BEFORE} KiB plain, ${DU_T5M_AFTER} KiB encrypted"
[ "$DU_T5M_AFTER" -lt "$DU_T5M_BEFORE" ] ||
	fail "compressible file uses ${DU_T5M_AFTER} KiB after encryption, ${DU_T5M_BEFORE} KiB before"

checking "a sparse file stays sparse"
DU_SPARSE=$(du -k "$D/sparse20m" | cut -f1)
echo "  du: sparse 20 MiB file: ${DU_SPARSE} KiB encrypted"
[ "$DU_SPARSE" -lt 1024 ] || fail "the encrypted sparse 20 MiB file uses ${DU_SPARSE} KiB"

checking "encrypt twice is idempotent (already chunk files, stored bytes unchanged)"
(cd "$D" && md5sum $SIZES) >"$T_TMP/sums.before"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 0 "second encrypt"
assert_out_has "^0 encrypted, $NSIZES already chunk files" "second encrypt summary"
(cd "$D" && md5sum $SIZES) >"$T_TMP/sums.after"
assert_same "$T_TMP/sums.after" "$T_TMP/sums.before" "stored files after a second encrypt"

checking "keys -d K DATADIR lists k1 active with its chunk counts"
run rekeyctl keys -d "$K" "$D"
assert_rc 0 "keys"
assert_eq "$(key_field k1 5)" active "state of k1"
assert_eq "$(key_field k1 6)" ok "key file status of k1"
assert_eq "$(key_field k1 4)" "$K1_FP" "fingerprint of k1"
assert_eq "$(key_field k1 7)" "$EXP_CHUNKS" "chunks under k1"
assert_eq "$(key_field k1 8)" $((NSIZES - 1)) "files with chunks under k1 (the empty file has none)"
assert_eq "$(key_field k1 9)" "/" "k1 is the target of the root table"
assert_out_has "^$NSIZES files: $NSIZES chunk files, 0 plain" "keys summary"

# ===========================================================================
# encrypt keeps ownership, mode, times and xattrs
# ===========================================================================
make_text "$O/meta.txt" 100000 4
cp "$O/meta.txt" "$D/meta.txt"
chmod 0640 "$D/meta.txt"
HAVE_ROOT=0
if [ "$(id -u)" -eq 0 ]; then
	HAVE_ROOT=1
	chown 1234:2345 "$D/meta.txt" || fail "chown"
fi
touch -m -d '2001-02-03 04:05:06.123456789 UTC' "$D/meta.txt"
HAVE_XATTR=0
if command -v setfattr >/dev/null 2>&1 && setfattr -n user.rekeyfs.test -v "hello xattr" "$D/meta.txt" 2>/dev/null; then
	HAVE_XATTR=1
fi
META_BEFORE=$(stat -c '%u:%g %a %y' "$D/meta.txt")

checking "encrypt of one PATH keeps owner, mode, mtime and a user.* xattr"
run rekeyctl encrypt -d "$K" "$D" meta.txt
assert_rc 0 "encrypt meta.txt"
assert_out_has "^1 encrypted" "encrypt of one path"
is_chunk_file "$D/meta.txt" || fail "meta.txt was not converted"
assert_eq "$(stat -c '%u:%g %a %y' "$D/meta.txt")" "$META_BEFORE" "owner, mode and mtime after encrypt"
[ $HAVE_ROOT = 1 ] && ok "owner 1234:2345 kept" || note "not root: ownership change not tested"
if [ $HAVE_XATTR = 1 ]; then
	assert_eq "$(getfattr --only-values -n user.rekeyfs.test "$D/meta.txt" 2>/dev/null)" "hello xattr" "user xattr after encrypt"
	ok "xattr kept"
else
	if [ "${CI:-}" = true ]; then fail "user xattrs are not supported on $T_TMP"; fi
	note "user xattrs not supported here: xattr preservation not tested"
fi
catto "$T_TMP/cat.out" "$D/meta.txt"
assert_rc 0 "cat meta.txt"
assert_same "$T_TMP/cat.out" "$O/meta.txt" "cat meta.txt"

# ===========================================================================
# hard links
# ===========================================================================
checking "a plain file with 2 hard links is skipped with a message"
make_text "$O/hl1" 30000 5
cp "$O/hl1" "$D/hl1"
ln "$D/hl1" "$D/hl2"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 0 "encrypt with a hard-linked file"
assert_err_has "hl1 has 2 hard links" "hard link message"
assert_out_has "2 skipped" "encrypt summary counts both names as skipped"
assert_same "$D/hl1" "$O/hl1" "hard-linked file left plain"
assert_eq "$(stat -c %h "$D/hl1")" 2 "link count"
assert_eq "$(stat -c %i "$D/hl1")" "$(stat -c %i "$D/hl2")" "both names still one inode"

# ===========================================================================
# cat of a plain file
# ===========================================================================
checking "cat of a plain (non-chunk) file prints it unchanged"
catto "$T_TMP/cat.out" "$D/hl1"
assert_rc 0 "cat plain file"
assert_same "$T_TMP/cat.out" "$O/hl1" "cat of a plain file"
printf 'abc' >"$T_TMP/tiny"
catto "$T_TMP/cat.out" "$T_TMP/tiny"
assert_rc 0 "cat of a 3-byte plain file"
assert_same "$T_TMP/cat.out" "$T_TMP/tiny" "cat of a 3-byte plain file"
catto "$T_TMP/cat.out" "$O/r1m"
assert_rc 0 "cat of a plain file outside the data directory"
assert_same "$T_TMP/cat.out" "$O/r1m" "cat of a plain 1 MiB file"

# ===========================================================================
# alter a subtree to a second key
# ===========================================================================
mkdir -p "$D/ks/t2"
make_text "$O/a.dat" 200000 6
cp "$O/a.dat" "$D/ks/t2/a.dat"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 0 "encrypt ks/t2/a.dat under k1"

checking "alter DATADIR/ks/t2 --key k2 sets the table's target key"
run rekeyctl alter -d "$K" "$D/ks/t2" --key k2
assert_rc 0 "alter"
assert_out_has "table /ks/t2 .*key=k2" "alter output"
make_random "$O/b.dat" 300000
cp "$O/b.dat" "$D/ks/t2/b.dat"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 0 "encrypt ks/t2/b.dat"
assert_out_has "^1 encrypted" "only the new file is encrypted"

checking "keys shows chunks under both keys"
run rekeyctl keys -d "$K" "$D"
assert_rc 0 "keys"
# k1: 104 + meta.txt (2) + a.dat (4); k2: b.dat (5)
assert_eq "$(key_field k1 7)" $((EXP_CHUNKS + 2 + 4)) "chunks under k1"
assert_eq "$(key_field k2 7)" 5 "chunks under k2"
assert_eq "$(key_field k2 8)" 1 "files under k2"
assert_eq "$(key_field k2 5)" active "state of k2"
assert_eq "$(key_field k2 9)" "/ks/t2" "k2 is the target of /ks/t2"
for f in a.dat b.dat; do
	catto "$T_TMP/cat.out" "$D/ks/t2/$f"
	assert_rc 0 "cat ks/t2/$f"
	assert_same "$T_TMP/cat.out" "$O/$f" "cat ks/t2/$f"
done

# ===========================================================================
# missing key, corrupt chunk
# ===========================================================================
checking "cat of a file whose key file is missing fails naming the key"
mv "$K/k2" "$T_TMP/k2.away"
catto "$T_TMP/cat.out" "$D/ks/t2/b.dat"
mv "$T_TMP/k2.away" "$K/k2"
assert_rc_nonzero "cat without the key"
assert_err_has "'k2'" "message names the key"
assert_err_has "not in the key directory" "message says the key is missing"
[ -s "$T_TMP/cat.out" ] && fail "cat without the key printed $(stat -c %s "$T_TMP/cat.out") bytes"
ok "nothing printed"

checking "a key file whose content changed (same name, new key) is refused with an explanation"
mv "$K/k2" "$T_TMP/k2.saved"
run rekeyctl createkey -d "$K" ChaCha20/Poly1305/NoPadding 256 k2
assert_rc 0 "createkey k2 again (an accident)"
make_text "$O/c.dat" 50000 11
cp "$O/c.dat" "$D/ks/t2/c.dat"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 1 "encrypt with a changed key file"
assert_err_has "$K/k2 does not match the fingerprint" "message names the changed key file"
assert_err_has "never reuse a name" "message explains how to rotate"
assert_same "$D/ks/t2/c.dat" "$O/c.dat" "nothing converted with a changed key"
run rekeyctl keys -d "$K" "$D"
assert_eq "$(key_field k2 6)" CHANGED "keys shows the key file as changed"
catto "$T_TMP/cat.out" "$D/ks/t2/b.dat"
assert_rc_nonzero "cat with a changed key file"
assert_err_has "'k2' but the key file of that name has different content" "cat names the changed key"
[ -s "$T_TMP/cat.out" ] && fail "cat with a changed key printed bytes"
mv -f "$T_TMP/k2.saved" "$K/k2"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 0 "encrypt once the key file is restored"
is_chunk_file "$D/ks/t2/c.dat" || fail "c.dat not converted after restoring k2"
catto "$T_TMP/cat.out" "$D/ks/t2/c.dat"
assert_same "$T_TMP/cat.out" "$O/c.dat" "cat c.dat"

make_text "$O/corrupt.dat" 150000 7
cp "$O/corrupt.dat" "$D/corrupt.dat"
run rekeyctl encrypt -d "$K" "$D" corrupt.dat
assert_rc 0 "encrypt corrupt.dat"
cp -p "$D/corrupt.dat" "$T_TMP/corrupt.good"

checking "a corrupted chunk 0 makes cat fail naming the file and chunk 0"
flip_byte "$D/corrupt.dat" $((8192 + 100))
catto "$T_TMP/cat.out" "$D/corrupt.dat"
assert_rc_nonzero "cat of a corrupted chunk"
assert_err_has "corrupt.dat: chunk 0 " "message names the file and chunk 0"
[ -s "$T_TMP/cat.out" ] && fail "cat printed bytes of a corrupt chunk"
ok "no bytes printed"

checking "a corrupted chunk 1 makes cat stop after exactly the good chunk 0"
cp -p "$T_TMP/corrupt.good" "$D/corrupt.dat"
flip_byte "$D/corrupt.dat" $((8192 + 65600 + 100))
catto "$T_TMP/cat.out" "$D/corrupt.dat"
assert_rc_nonzero "cat with a corrupted chunk 1"
assert_err_has "corrupt.dat: chunk 1 " "message names the file and chunk 1"
assert_eq "$(stat -c %s "$T_TMP/cat.out")" 65536 "bytes printed before the corrupt chunk"
head -c 65536 "$O/corrupt.dat" >"$T_TMP/corrupt.head"
assert_same "$T_TMP/cat.out" "$T_TMP/corrupt.head" "bytes printed before the corrupt chunk"
cp -p "$T_TMP/corrupt.good" "$D/corrupt.dat"

# ===========================================================================
# locking
# ===========================================================================
checking "commands refuse a data directory locked by another process"
# the holder: a process that flock()s the lock file exclusively, as the
# daemon does, then sleeps holding it (fd 9 survives the exec)
(
	exec 9>>"$D/.rekeyfs/lock"
	flock -x 9 || exit 1
	exec sleep 60
) &
HOLDER=$!
bg_register $HOLDER
for _ in $(seq 1 100); do
	flock -n "$D/.rekeyfs/lock" true 2>/dev/null || break
	sleep 0.05
done
flock -n "$D/.rekeyfs/lock" true 2>/dev/null && fail "the background holder did not take the lock"
make_text "$O/late.txt" 10000 8
cp "$O/late.txt" "$D/late.txt"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 1 "encrypt on a locked data directory"
assert_err_has "in use" "message says the data directory is in use"
LOCKPID=$(grep -Eo 'pid [0-9]+' "$T_ERR" | head -1 | cut -d' ' -f2)
if [ -n "$LOCKPID" ] && [ ! -d "/proc/$LOCKPID" ]; then
	fail "the message names pid $LOCKPID as the holder, but no such process runs (stale pid in the lock file)"
fi
assert_same "$D/late.txt" "$O/late.txt" "nothing converted while locked"
run rekeyctl keys -d "$K" "$D"
assert_rc 1 "keys on a locked data directory"
assert_err_has "in use" "keys: message says the data directory is in use"
run rekeyctl alter -d "$K" "$D/ks/t2" --key k1
assert_rc 1 "alter on a locked data directory"
assert_err_has "in use" "alter: message says the data directory is in use"
kill "$HOLDER" 2>/dev/null
wait "$HOLDER" 2>/dev/null
bg_forget $HOLDER
checking "the same command works once the lock is released"
run rekeyctl encrypt -d "$K" "$D"
assert_rc 0 "encrypt after the lock holder ended"
is_chunk_file "$D/late.txt" || fail "late.txt not converted after the lock was released"

# ===========================================================================
# crash safety of encrypt
# ===========================================================================
# A data directory with 16 KiB chunks and a few multi-chunk files.  Files are
# converted in name order: a-small (2 chunks), b-text (7), c-random (13),
# d/sub-text (5).
CR_FILES="a-small b-text c-random d/sub-text"
crash_setup() {
	local dir="$1"
	rm -rf "$dir"
	mkdir -p "$dir/d"
	run rekeyctl init -d "$K" --key k1 --chunk-kb 16 "$dir"
	assert_rc 0 "init $dir"
	if [ ! -d "$T_TMP/crash-orig" ]; then
		mkdir -p "$T_TMP/crash-orig/d"
		make_random "$T_TMP/crash-orig/a-small" 20000
		make_text "$T_TMP/crash-orig/b-text" 100000 9
		make_random "$T_TMP/crash-orig/c-random" 200000
		make_text "$T_TMP/crash-orig/d/sub-text" 70000 10
	fi
	local f
	for f in $CR_FILES; do cp "$T_TMP/crash-orig/$f" "$dir/$f"; done
}

# crash_check DIR: every file is whole plain or a chunk file that decrypts
# to the original; nothing else besides temporaries.  Prints "plain N chunk M".
crash_check() {
	local dir="$1" f plain=0 conv=0
	for f in $CR_FILES; do
		[ -f "$dir/$f" ] || fail "$f is missing after the crash"
		if is_chunk_file "$dir/$f"; then
			catto "$T_TMP/cat.out" "$dir/$f"
			[ "$RC" -eq 0 ] || fail "$f: chunk file left by the crash does not decrypt: $(cat "$T_ERR")"
			assert_same "$T_TMP/cat.out" "$T_TMP/crash-orig/$f" "$f (chunk file after the crash)"
			conv=$((conv + 1))
		else
			assert_same "$dir/$f" "$T_TMP/crash-orig/$f" "$f (plain file after the crash)"
			plain=$((plain + 1))
		fi
	done
	local extra
	extra=$(cd "$dir" && find . -path ./.rekeyfs -prune -o -type f -print | sed 's|^\./||' |
		grep -v -x -e a-small -e b-text -e c-random -e d/sub-text | grep -v '\.rekeyfs-tmp\.')
	[ -z "$extra" ] || fail "unexpected files after the crash: $extra"
	CR_PLAIN=$plain
	CR_CONV=$conv
}

tmp_count() {
	find "$1" -name '.rekeyfs-tmp.*' | wc -l | tr -d ' '
}

# point, then expected converted files at the crash, and whether a temporary
# must be left behind
for spec in \
	"convert.tmp-created 0 tmp" \
	"convert.tmp-created:3 2 tmp" \
	"convert.chunk-written:1 0 tmp" \
	"convert.chunk-written:2 0 tmp" \
	"convert.chunk-written:5 1 tmp" \
	"convert.synced 0 tmp" \
	"convert.before-rename 0 tmp" \
	"convert.before-rename:4 3 tmp" \
	"convert.after-rename 1 none" \
	"convert.after-rename:2 2 none"; do
	set -- $spec
	point=$1 want_conv=$2 want_tmp=$3
	CD="$T_TMP/crash-data"
	crash_setup "$CD"
	checking "encrypt killed at crash point $point leaves every file whole (plain or decrypting)"
	run_env REKEYFS_CRASHPOINT="$point" -- rekeyctl encrypt -d "$K" "$CD"
	assert_rc 137 "encrypt with REKEYFS_CRASHPOINT=$point (must be killed by SIGKILL)"
	assert_err_has "crash point ${point%%:*} reached" "the crash point was reached"
	crash_check "$CD"
	echo "  after the crash: $CR_CONV converted, $CR_PLAIN plain, $(tmp_count "$CD") temporaries"
	assert_eq "$CR_CONV" "$want_conv" "files converted when killed at $point"
	if [ "$want_tmp" = tmp ]; then
		[ "$(tmp_count "$CD")" -ge 1 ] || fail "no temporary left by a crash at $point (the crash point moved?)"
	else
		assert_eq "$(tmp_count "$CD")" 0 "temporaries after a crash at $point"
	fi
	checking "encrypt after the crash at $point converts everything and removes temporaries"
	run rekeyctl encrypt -d "$K" "$CD"
	assert_rc 0 "encrypt after the crash at $point"
	if [ "$want_tmp" = tmp ]; then
		assert_out_has "^removed .*\.rekeyfs-tmp\..* \(temporary of an interrupted run\)" "the temporary is reported removed"
	fi
	assert_out_has "^$((4 - want_conv)) encrypted, ${want_conv} already chunk files, 0 skipped, 0 failed" \
		"encrypt summary after the crash at $point"
	assert_eq "$(tmp_count "$CD")" 0 "temporaries left after the second encrypt"
	crash_check "$CD"
	assert_eq "$CR_CONV" 4 "files converted after the second encrypt"
	run rekeyctl keys -d "$K" "$CD"
	assert_rc 0 "keys after the crash at $point"
	# 16 KiB chunks: 2 + 7 + 13 + 5
	assert_eq "$(key_field k1 7)" 27 "chunks under k1 after recovery from $point"
	assert_eq "$(key_field k1 8)" 4 "files under k1 after recovery from $point"
done

# ===========================================================================
# key material never printed
# ===========================================================================
checking "no command printed key material"
for kf in "$K"/*; do
	b64=$(cut -d: -f3 "$kf")
	hex=$(printf '%s' "$b64" | base64 -d | od -An -tx1 | tr -d ' \n')
	grep -qF -- "$b64" "$T_ALL" && fail "the base64 key of $(basename "$kf") appears in rekeyctl output"
	grep -qiF -- "$hex" "$T_ALL" && fail "the hex key of $(basename "$kf") appears in rekeyctl output"
done
ok "none of $(ls "$K" | wc -l) keys appears in $(wc -c <"$T_ALL") bytes of output"

echo "PASS: $T_CHECKS checks"
exit 0
