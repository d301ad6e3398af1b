#!/bin/bash
# rekeyfs - rekeyctl fsck: every report field and exit status on fixture
# trees with known contents, offline and through a mount.
#
#   ROT    fully rotated (every chunk on its table's target key)   exit 0
#   HALF   half rotated (table / still under key1)                 exit 1
#   CORR   the base tree (all on key1, clean headers) with a corrupt
#          header, a corrupt chunk and a malformed slot header     exit 4
#   HALFC  HALF with a corrupt chunk                               exit 1 fast, 5 deep
#   MISS   a table under key3, checked without key3's key file    exit 4
#   REL    key1 released, then a file restored from a backup       exit 5
#   STALE  HALF with a header whose counts lie (valid checksum)    --key must not trust it
#
# Exit status (rekeyctl(8), FSCK): bit flags 1 old-key chunks remain (with
# --key: the key may not be released), 4 corrupt or unreadable data; 8
# operational error, 16 usage error.
#
# Needs rekeyctl and python3; the online part needs root, /dev/fuse,
# fusermount3 and rekeyfs (skipped otherwise, a failure under CI=true);
# the terminal progress check needs script(1).
set -u

T_LIBDIR="${TEST_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}"
. "$T_LIBDIR/integration/integ.bash"

need_rekeyctl
need_cmd python3 cmp od dd awk cp
SCHEMA="$T_LIBDIR/fsck/check_schema.py"
echo "using $(command -v rekeyctl) ($(rekeyctl --version 2>&1))"

make_tmpdir
at_exit 'rkfx_umount_all'
unset REKEYFS_KEYDIR REKEYFS_CRASHPOINT
K="$T_TMP/keys"
T_ALL="$T_TMP/all-output.log"

# ---- helpers ------------------------------------------------------------------------------
# fsck ARGS...: rekeyctl fsck, output in $T_OUT/$T_ERR, status in $RC
fsck() { run rekeyctl fsck "$@"; }

# jget EXPR: evaluate a python expression on the JSON report in $T_OUT (as d)
jget() { json_get "$T_OUT" "$1" || fail "cannot evaluate $1 on the JSON report"; }

# jcheck EXPR EXPECTED MSG
jcheck() {
	assert_eq "$(jget "$1")" "$2" "$3 ($1)"
}

# schema_ok MSG: the JSON report in $T_OUT is valid rekeyfs-fsck/1
schema_ok() {
	python3 "$SCHEMA" "$T_OUT" >"$T_TMP/schema.out" 2>&1 ||
		fail "$1: the JSON report violates the schema: $(cat "$T_TMP/schema.out")"
}

# keyrow NAME FIELD: a field of the total key table (--json keys[])
keyrow() {
	jget "[k['$2'] for k in d['keys'] if k['name'] == '$1'][0]"
}

# table PATH FIELD: a field of one table (--json tables[])
table() {
	jget "[t['$2'] for t in d['tables'] if t['path'] == '$1'][0]"
}

# patch_counts FILE KEY N: set KEY's chunk count in both header copies of a
# chunk file to N and fix their checksums (a header that lies consistently)
patch_counts() {
	python3 - "$1" "$2" "$3" <<'EOF' || fail "cannot patch the header of $1"
import hashlib, struct, sys
path, key, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
data = bytearray(open(path, 'rb').read())
done = 0
for base in (0, 4096):
    if data[base:base + 8] != b'\x89RKFS\r\n\x1a':
        continue
    for j in range(16):
        e = base + 64 + 96 * j
        if data[e + 81] & 1 and data[e:e + 64].rstrip(b'\0') == key:
            data[e + 88:e + 96] = struct.pack('<Q', n)
            done += 1
    data[base + 4064:base + 4096] = hashlib.sha256(bytes(data[base:base + 4064])).digest()
if not done:
    sys.exit('key not in the header')
open(path, 'r+b').write(data[:8192])
EOF
}

# slot offset of chunk I (4 KiB chunks: slot size 4160)
slot() { echo $((8192 + $1 * 4160)); }

# ===========================================================================
# fixtures
# ===========================================================================
checking "building the fixtures (keys, a base tree under key1, rotations)"
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 256 key1
assert_rc 0 "createkey key1"
run rekeyctl createkey -d "$K" ChaCha20/Poly1305/NoPadding 256 key2
assert_rc 0 "createkey key2"
run rekeyctl createkey -d "$K" AES/GCM/NoPadding 128 key3
assert_rc 0 "createkey key3"

# base: table / and /ks/t1, 4 KiB chunks, everything under key1
#   /a.db 10000 B (3 chunks)  /empty.db 0 B  /legacy.txt 100 B (stays plain)
#   /many/f1.db .. f7.db 100 B each (1 chunk)
#   /ks/t1/b.db 20480 B (5 chunks)  /ks/t1/c.db 1 B (1 chunk)
B="$T_TMP/base"
O="$T_TMP/orig"
mkdir -p "$B/ks/t1" "$B/many" "$O"
run rekeyctl init -d "$K" --key key1 --chunk-kb 4 "$B"
assert_rc 0 "init base"
run rekeyctl alter -d "$K" "$B/ks/t1" --key key1
assert_rc 0 "alter base/ks/t1"
make_text "$B/a.db" 10000 1
: >"$B/empty.db"
make_text "$B/legacy.txt" 100 2
for i in 1 2 3 4 5 6 7; do make_text "$B/many/f$i.db" 100 $((10 + i)); done
make_text "$B/ks/t1/b.db" 20480 3
printf x >"$B/ks/t1/c.db"
cp -a "$B/a.db" "$O/a.db"
cp -a "$B/ks/t1/b.db" "$O/b.db"
run rekeyctl encrypt -q -d "$K" "$B" a.db empty.db many ks/t1
assert_rc 0 "encrypt base"
is_chunk_file "$B/a.db" || fail "base/a.db is not a chunk file"
is_chunk_file "$B/legacy.txt" && fail "base/legacy.txt must stay plain"

# ROT: every table altered to key2 and rekeyed
ROT="$T_TMP/rot"
cp -a "$B" "$ROT"
run rekeyctl alter -d "$K" "$ROT" --key key2
assert_rc 0 "alter rot"
run rekeyctl alter -d "$K" "$ROT/ks/t1" --key key2
assert_rc 0 "alter rot/ks/t1"
run rekeyctl rekey -q -d "$K" "$ROT"
assert_rc 0 "rekey rot"

# HALF: both tables altered to key2, only /ks/t1 rekeyed
HALF="$T_TMP/half"
cp -a "$B" "$HALF"
run rekeyctl alter -d "$K" "$HALF" --key key2
assert_rc 0 "alter half"
run rekeyctl alter -d "$K" "$HALF/ks/t1" --key key2
assert_rc 0 "alter half/ks/t1"
run rekeyctl rekey -q -d "$K" "$HALF" /ks/t1
assert_rc 0 "rekey half /ks/t1"
ok "fixtures built"

# ===========================================================================
# the fully rotated tree
# ===========================================================================
checking "ROT: exit 0, every count as built, 100% on target, no problems"
fsck -d "$K" --json "$ROT"
assert_rc 0 "fsck rot"
schema_ok "fsck --json rot"
jcheck "d['schema']" "rekeyfs-fsck/1" "schema name"
jcheck "d['source']" offline "source"
jcheck "d['mode']" headers "mode of the fast path"
jcheck "d['exit']" 0 "exit in the report"
jcheck "d['rotation_complete']" true "rotation_complete"
jcheck "d['corruption_found']" false "corruption_found"
jcheck "d['total']['files']" 12 "total files"
jcheck "d['total']['chunk_files']" 11 "total chunk files"
jcheck "d['total']['plain_files']" 1 "total plain files"
jcheck "d['total']['corrupt_files']" 0 "total corrupt headers"
jcheck "d['total']['chunks']" 16 "total chunks"
jcheck "d['total']['bytes']" 31181 "total plaintext bytes"
jcheck "d['total']['percent_on_target']" 100.0 "total percent on target"
jcheck "d['total']['files_off_target']" 0 "files off target"
jcheck "len(d['problems'])" 0 "problems"
jcheck "[t['path'] for t in d['tables']]" '["/", "/ks/t1"]' "tables"
assert_eq "$(table / files)" 10 "table / files"
assert_eq "$(table / chunk_files)" 9 "table / chunk files"
assert_eq "$(table / plain_files)" 1 "table / plain files"
assert_eq "$(table / chunks)" 10 "table / chunks"
assert_eq "$(table / bytes)" 10700 "table / bytes"
assert_eq "$(table /ks/t1 files)" 2 "table /ks/t1 files"
assert_eq "$(table /ks/t1 chunks)" 6 "table /ks/t1 chunks"
assert_eq "$(table /ks/t1 bytes)" 20481 "table /ks/t1 bytes"
assert_eq "$(table /ks/t1 target)" key2 "table /ks/t1 target"
jcheck "[(k['name'], k['chunks'], k['bytes'], k['files'], k['target']) for k in d['tables'][1]['keys']]" \
	'[["key2", 6, 20481, 2, true]]' "keys of /ks/t1"
assert_eq "$(keyrow key1 chunks)" 0 "key1 chunks"
assert_eq "$(keyrow key2 chunks)" 16 "key2 chunks"
assert_eq "$(keyrow key2 bytes)" 31181 "key2 bytes"
assert_eq "$(keyrow key2 cipher)" ChaCha20/Poly1305/NoPadding "key2 cipher"
assert_eq "$(keyrow key2 target_of)" '["/", "/ks/t1"]' "key2 target of"
assert_eq "$(keyrow key1 registry)" active "key1 registry state"
assert_eq "$(keyrow key2 key_file)" ok "key2 key file"

checking "the schema checker rejects a report with a missing field, a wrong type or a broken invariant"
cp "$T_OUT" "$T_TMP/good.json"
for mutation in "del d['total']['chunk_files']" "d['tables'][0]['chunks'] = '10'" "d['exit'] = 1" \
	"d['total']['chunks_on_target'] -= 1" "d['keys'][0]['surprise'] = 1"; do
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); exec(sys.argv[2]); json.dump(d, open(sys.argv[3], "w"))' \
		"$T_TMP/good.json" "$mutation" "$T_TMP/bad.json" || fail "cannot mutate the report"
	if python3 "$SCHEMA" "$T_TMP/bad.json" >/dev/null 2>&1; then
		fail "check_schema.py accepted a report after: $mutation"
	fi
done
ok "5 mutations rejected"

checking "ROT text: per-table blocks, key table, verdict lines, exit status line"
fsck -d "$K" "$ROT"
assert_rc 0 "fsck rot (text)"
assert_out_has "^table /  \(target key key2, 4 KiB chunks\)" "block of table /"
assert_out_has "^table /ks/t1  \(target key key2" "block of table /ks/t1"
assert_out_has "^  files   12: 11 chunk files, 1 plain, 0 with a corrupt or unreadable header" "total files line"
assert_out_has "^  chunks  16 \(30\.5 KiB of plaintext in chunk files\), 100\.0% on their table's target key" \
	"total chunks line"
assert_out_has "^  key2 +[0-9a-f]{32} +ChaCha20/Poly1305/NoPadding 256 +active +ok +16 +30\.5 KiB +10 +[0-9]+ +/,/ks/t1$" \
	"key table row of key2"
assert_out_has "^rotation complete: every chunk is on its table's target key$" "verdict"
assert_out_has "^no corruption found" "corruption verdict"
assert_out_has "^exit status 0 \(clean\)$" "exit status line"

checking "hard links (a snapshot) count once; conversion temporaries are not data"
LINK="$T_TMP/link"
cp -a "$ROT" "$LINK"
mkdir -p "$LINK/snap"
ln "$LINK/a.db" "$LINK/snap/a.db" || fail "ln"
cp -a "$LINK/ks/t1/b.db" "$LINK/.rekeyfs-tmp.a.db.123"
fsck -d "$K" --json "$LINK"
assert_rc 0 "fsck link"
schema_ok "fsck --json link"
jcheck "d['total']['files']" 12 "files (the second name is not a second file)"
jcheck "d['total']['extra_links']" 1 "extra hard-link names"
jcheck "d['total']['chunks']" 16 "chunks (not counted twice)"

checking "ROT --deep: every chunk authenticated, no progress output when stderr is not a terminal"
fsck -d "$K" --deep --json "$ROT"
assert_rc 0 "fsck --deep rot"
schema_ok "fsck --deep --json rot"
jcheck "d['mode']" deep "mode"
jcheck "d['total']['chunks_verified']" 16 "chunks authenticated"
jcheck "d['total']['corrupt_chunks']" 0 "corrupt chunks"
jcheck "d['deep_bytes']" 31181 "plaintext total of the deep check"
[ -s "$T_ERR" ] && fail "fsck --deep wrote to stderr while it is not a terminal: $(head -c 300 "$T_ERR")"
ok "quiet when stderr is not a terminal"

checking "ROT --key key1: may be released (exit 0), from an exact scan"
fsck -d "$K" --key key1 "$ROT"
assert_rc 0 "fsck --key key1 rot"
assert_eq "$(wc -l <"$T_OUT" | tr -d ' ')" 1 "the answer is one line"
assert_out_has "^key key1 may be released: no chunk is under it" "answer"
fsck -d "$K" --key key1 --json "$ROT"
schema_ok "fsck --key --json rot"
jcheck "d['mode']" exact "--key reads every slot header"
jcheck "d['key_query']['may_release']" true "may_release"
jcheck "d['key_query']['chunks']" 0 "chunks under key1"

checking "ROT --key key2: the target key may not be released (exit 1)"
fsck -d "$K" --key key2 "$ROT"
assert_rc 1 "fsck --key key2 rot"
assert_out_has "^key key2 may NOT be released: it is the target key of tables /, /ks/t1" "answer"

# ===========================================================================
# the half-rotated tree
# ===========================================================================
checking "HALF: exit 1, old-key chunks per table and in total, first files by name"
fsck -d "$K" --json "$HALF"
assert_rc 1 "fsck half"
schema_ok "fsck --json half"
jcheck "d['exit']" 1 "exit in the report"
jcheck "d['rotation_complete']" false "rotation_complete"
assert_eq "$(table / chunks_on_target)" 0 "table / chunks on target"
assert_eq "$(table / chunks_off_target)" 10 "table / chunks off target"
assert_eq "$(table / percent_on_target)" 0.0 "table / percent"
assert_eq "$(table / files_off_target)" 8 "table / files off target"
assert_eq "$(table /ks/t1 percent_on_target)" 100.0 "table /ks/t1 percent"
jcheck "d['total']['percent_on_target']" 37.5 "total percent (6 of 16)"
jcheck "d['total']['off_target_files']" '["/a.db", "/many/f1.db", "/many/f2.db", "/many/f3.db", "/many/f4.db"]' \
	"first off-target files, walk order"
jcheck "d['total']['off_target_files_complete']" false "the list is cut without --verbose"
assert_eq "$(keyrow key1 chunks)" 10 "key1 chunks"
assert_eq "$(keyrow key1 files)" 8 "key1 files"
assert_eq "$(keyrow key1 bytes)" 10700 "key1 bytes"
assert_eq "$(keyrow key2 chunks)" 6 "key2 chunks"

checking "HALF text: verdict names the first files, --verbose lists all"
fsck -d "$K" "$HALF"
assert_rc 1 "fsck half (text)"
assert_out_has "^10 chunks in 8 files still under old keys: /a\.db, /many/f1\.db, /many/f2\.db, /many/f3\.db, /many/f4\.db, \.\.\. \(3 more; --verbose lists all\)$" \
	"verdict"
assert_out_has "^  8 files with chunks under an old key: /a\.db," "table block list"
assert_out_has "^    key1 +ok +10 +10\.4 KiB +8 +[0-9-]+  old key$" "per-table key row"
assert_out_has "^exit status 1 \(1: old-key chunks remain\)$" "exit status line"
fsck -d "$K" --verbose "$HALF"
assert_rc 1 "fsck --verbose half"
assert_out_has "still under old keys: /a\.db, /many/f1\.db, /many/f2\.db, /many/f3\.db, /many/f4\.db, /many/f5\.db, /many/f6\.db, /many/f7\.db$" \
	"--verbose lists every file"
fsck -d "$K" --verbose --json "$HALF"
schema_ok "fsck --verbose --json half"
jcheck "len(d['total']['off_target_files'])" 8 "--verbose JSON lists every file"

checking "HALF --key key1: may NOT be released (exit 1), names the files"
fsck -d "$K" --key key1 "$HALF"
assert_rc 1 "fsck --key key1 half"
assert_out_has "^key key1 may NOT be released: 10 chunks in 8 files are still under it: /a\.db, " "answer"

checking "--table and DATADIR/TABLE limit the report to one table"
fsck -d "$K" --json --table /ks/t1 "$HALF"
assert_rc 0 "fsck --table /ks/t1 half (that table is rotated)"
schema_ok "fsck --table --json"
jcheck "d['table_filter']" /ks/t1 "table_filter"
jcheck "[t['path'] for t in d['tables']]" '["/ks/t1"]' "only that table"
jcheck "d['total']['chunks']" 6 "total of that table"
fsck -d "$K" "$HALF/ks/t1"
assert_rc 0 "fsck DATADIR/ks/t1"
assert_out_has "^total \(this table\)" "report of one table"
fsck -d "$K" --table / "$HALF"
assert_rc 1 "fsck --table / half"

# ===========================================================================
# corruption
# ===========================================================================
CORR="$T_TMP/corr"
cp -a "$B" "$CORR" # written by encrypt: clean headers, so the fast path reads headers only
flip_byte "$CORR/a.db" 200                       # both header copies
flip_byte "$CORR/a.db" $((4096 + 200))
flip_byte "$CORR/ks/t1/b.db" $(($(slot 2) + 40))  # sealed payload of chunk 2
flip_byte "$CORR/ks/t1/c.db" "$(slot 0)"          # slot magic of chunk 0

checking "CORR fast path: the corrupt header is found (exit 4), its file named"
fsck -d "$K" --json "$CORR"
assert_rc 4 "fsck corr"
schema_ok "fsck --json corr"
jcheck "d['corruption_found']" true "corruption_found"
jcheck "d['total']['corrupt_files']" 1 "corrupt headers"
assert_eq "$(table / corrupt_files)" 1 "corrupt header counted in its table"
jcheck "[(p['kind'], p['path'], p['chunk']) for p in d['problems']]" '[["corrupt-header", "/a.db", null]]' \
	"problem list of the fast path"
jcheck "d['total']['chunks']" 13 "chunks of readable headers"
fsck -d "$K" "$CORR"
assert_rc 4 "fsck corr (text)"
assert_out_has "^  /a\.db: corrupt-header: neither header copy passes its checksum" "problem line"
assert_out_has "^corrupt or unreadable data found: 1 corrupt or unsupported header$" "verdict"
assert_out_has "^every readable chunk is on its table's target key, but 1 unreadable" "rotation verdict is qualified"
assert_out_has "^exit status 4 \(4: corruption or unreadable data\)$" "exit status line"

checking "CORR --deep: the corrupt chunk and the malformed slot by file, chunk and offset"
fsck -d "$K" --deep --json "$CORR"
assert_rc 4 "fsck --deep corr"
schema_ok "fsck --deep --json corr"
jcheck "[(p['kind'], p['path'], p['chunk'], p['offset']) for p in d['problems']]" \
	'[["corrupt-header", "/a.db", null, null], ["corrupt-chunk", "/ks/t1/b.db", 2, 8192], ["malformed-slot", "/ks/t1/c.db", 0, 0]]' \
	"problems in walk order"
assert_eq "$(table /ks/t1 corrupt_chunks)" 1 "corrupt chunks of /ks/t1"
assert_eq "$(table /ks/t1 malformed_chunks)" 1 "malformed slot headers of /ks/t1"
jcheck "d['total']['chunks_verified']" 11 "chunks authenticated (13 counted - 1 corrupt - 1 malformed)"
fsck -d "$K" --deep "$CORR"
assert_out_has "^  /ks/t1/b\.db: chunk 2 \(offset 8192\): corrupt-chunk: authentication failed under key 'key1'" \
	"corrupt chunk line"
assert_out_has "^  /ks/t1/c\.db: chunk 0 \(offset 0\): malformed-slot: " "malformed slot line"

checking "CORR --key key2: unreadable headers could hide chunks: may NOT be released (exit 1+4)"
fsck -d "$K" --key key2 "$CORR"
assert_rc 5 "fsck --key key2 corr"
# a.db's header is unreadable (it could name key2); c.db's malformed slot
# cannot be under key2: its header names key1 only
assert_out_has "^key key2 may NOT be released: no readable chunk is under it, but 1 unreadable" "answer"

checking "--key reads the slots of a file whose header names the key: its only chunk's malformed slot blocks"
ROTK="$T_TMP/rotk"
cp -a "$ROT" "$ROTK"
cp -a "$B/ks/t1/c.db" "$ROTK/ks/t1/c.db" # one chunk under key1, in a tree otherwise all under key2
fsck -d "$K" --key key1 "$ROTK"
assert_rc 1 "fsck --key key1 rotk"
assert_out_has "^key key1 may NOT be released: 1 chunk in 1 file is still under it" "the chunk under key1"
flip_byte "$ROTK/ks/t1/c.db" "$(slot 0)"
fsck -d "$K" --key key1 "$ROTK"
assert_rc 5 "fsck --key key1 rotk, slot damaged"
assert_out_has "^key key1 may NOT be released: no readable chunk is under it, but 1 unreadable" "answer"

checking "HALFC: a corrupt chunk in a half-rotated tree: fast exit 1, deep exit 5 (1 and 4)"
HALFC="$T_TMP/halfc"
cp -a "$HALF" "$HALFC"
flip_byte "$HALFC/ks/t1/b.db" $(($(slot 1) + 40))
fsck -d "$K" "$HALFC"
assert_rc 1 "fsck halfc (headers only cannot see chunk damage)"
fsck -d "$K" --deep --json "$HALFC"
assert_rc 5 "fsck --deep halfc"
schema_ok "fsck --deep --json halfc"
jcheck "d['exit']" 5 "exit in the report"
fsck -d "$K" --deep "$HALFC"
assert_out_has "^exit status 5 \(1: old-key chunks remain \+ 4: corruption or unreadable data\)$" "exit status line"

# ===========================================================================
# a missing key
# ===========================================================================
checking "MISS: chunks under a key missing from the key directory (exit 4), named per table"
MISS="$T_TMP/miss"
cp -a "$ROT" "$MISS"
mkdir -p "$MISS/t3"
make_text "$MISS/t3/m.db" 5000 9
run rekeyctl alter -d "$K" "$MISS/t3" --key key3
assert_rc 0 "alter miss/t3"
run rekeyctl encrypt -q -d "$K" "$MISS" t3
assert_rc 0 "encrypt miss/t3"
K2="$T_TMP/keys-without-key3"
cp -a "$K" "$K2"
rm -f "$K2/key3"
fsck -d "$K" "$MISS"
assert_rc 0 "fsck miss with every key"
fsck -d "$K2" --json "$MISS"
assert_rc 4 "fsck miss without key3"
schema_ok "fsck --json miss"
assert_eq "$(table /t3 keys_missing)" '["key3"]' "keys_missing of /t3"
assert_eq "$(table / keys_missing)" '[]' "keys_missing of /"
assert_eq "$(table /t3 chunks_unusable)" 2 "chunks under the missing key"
assert_eq "$(keyrow key3 key_file)" missing "key3 key file"
assert_eq "$(keyrow key3 unusable_files)" '["/t3/m.db"]' "files under the missing key"
jcheck "d['rotation_complete']" true "on target, yet unreadable"
fsck -d "$K2" "$MISS"
assert_rc 4 "fsck miss without key3 (text)"
assert_out_has "^  key3 \(fingerprint [0-9a-f]{32}\): missing from the key directory; 2 chunks \(4\.9 KiB\) in 1 file cannot be read: /t3/m\.db$" \
	"missing key line"
assert_out_has "2 chunks under keys that cannot be used" "verdict"

# ===========================================================================
# a released key found in a restored file
# ===========================================================================
checking "REL: key1 released after rotation; fsck --key key1 says already released (exit 0)"
REL="$T_TMP/rel"
cp -a "$B" "$REL"
cp -a "$REL/a.db" "$T_TMP/a.db.backup"   # a backup taken under key1
run rekeyctl alter -d "$K" "$REL" --key key2
run rekeyctl alter -d "$K" "$REL/ks/t1" --key key2
run rekeyctl rekey -q -d "$K" "$REL"
assert_rc 0 "rekey rel"
run rekeyctl release-key -d "$K" key1 "$REL"
assert_rc 0 "release-key key1"
fsck -d "$K" --key key1 "$REL"
assert_rc 0 "fsck --key key1 after release"
assert_out_has "^key key1 is already released, and no chunk is under it$" "answer"
fsck -d "$K" "$REL"
assert_rc 0 "fsck rel before the restore"

checking "REL: a file restored from the backup is found under the released key (exit 5), file named"
cp -a "$T_TMP/a.db.backup" "$REL/restored.db"
fsck -d "$K" --json "$REL"
assert_rc 5 "fsck rel after the restore"
schema_ok "fsck --json rel"
assert_eq "$(table / keys_released)" '["key1"]' "keys_released of /"
assert_eq "$(keyrow key1 registry)" released "key1 registry state"
assert_eq "$(keyrow key1 key_file)" released "key1 status"
assert_eq "$(keyrow key1 chunks)" 3 "chunks under the released key"
assert_eq "$(keyrow key1 unusable_files)" '["/restored.db"]' "the restored file"
jcheck "d['total']['off_target_files']" '["/restored.db"]' "off target"
fsck -d "$K" "$REL"
assert_out_has "^  key1 \(fingerprint [0-9a-f]{32}\): released: its material is gone; 3 chunks \(9\.8 KiB\) in 1 file cannot be read: /restored\.db$" \
	"released key line"
fsck -d "$K" --key key1 "$REL"
assert_rc 5 "fsck --key key1 after the restore"
assert_out_has "^key key1 may NOT be released: it is already released, but 3 chunks in 1 file are still under it: /restored\.db" \
	"answer"

# ===========================================================================
# release rests on every chunk's key reference, not header counts
# ===========================================================================
checking "STALE: a header whose counts lie: headers-only trusts it, --key reads the slots"
STALE="$T_TMP/stale"
cp -a "$HALF" "$STALE"
patch_counts "$STALE/a.db" key1 0
fsck -d "$K" --json "$STALE"
assert_rc 1 "fsck stale"
assert_eq "$(keyrow key1 chunks)" 7 "headers-only count (the lie)"
fsck -d "$K" --key key1 --json "$STALE"
assert_rc 1 "fsck --key key1 stale"
schema_ok "fsck --key --json stale"
jcheck "d['key_query']['chunks']" 10 "exact count from the slot headers"
jcheck "d['key_query']['file_names'][0]" /a.db "the lying file is named"
jcheck "d['total']['count_mismatch']" 1 "headers whose counts differ from the slots"

# ===========================================================================
# usage and operational errors
# ===========================================================================
checking "usage errors exit 16"
for args in "" "--bogus $ROT" "--key key1 --table /ks/t1 $ROT" "--table /nope $ROT" "--key bad/name $ROT" \
	"$ROT/many"; do
	# shellcheck disable=SC2086
	fsck -d "$K" $args
	assert_rc 16 "fsck $args"
	[ -s "$T_ERR" ] || fail "fsck $args: no message"
done
# several data directories (a node's): one report each, the exit status the OR of theirs
fsck -d "$K" --json "$ROT"
r1=$RC
fsck -d "$K" --json "$HALF"
r2=$RC
fsck -d "$K" --json "$ROT" "$HALF"
assert_rc $((r1 | r2)) "fsck ROT HALF: the OR of $r1 and $r2"
[ "$(grep -c '^{"host": ' "$T_OUT")" = 2 ] || fail "fsck --json ROT HALF: not two JSON lines: $(head -c 500 "$T_OUT")"
fsck --help
assert_rc 0 "fsck --help"

checking "operational errors exit 8"
mkdir -p "$T_TMP/notdata"
fsck -d "$K" "$T_TMP/notdata"
assert_rc 8 "fsck on a directory that is no data directory"
assert_err_has "not inside a rekeyfs data directory" "message"

# ===========================================================================
# a backup copy elsewhere, with only the key directory
# ===========================================================================
checking "a cp -a copy of a data directory: cat and fsck with only -d KEYDIR"
mkdir -p "$T_TMP/elsewhere"
cp -a "$HALF" "$T_TMP/elsewhere/backup"
BK="$T_TMP/elsewhere/backup"
rekeyctl cat -d "$K" "$BK/a.db" >"$T_TMP/a.cat" 2>"$T_ERR" || fail "cat backup/a.db"
assert_same "$T_TMP/a.cat" "$O/a.db" "backup a.db (key1)"
rekeyctl cat -d "$K" "$BK/ks/t1/b.db" >"$T_TMP/b.cat" 2>"$T_ERR" || fail "cat backup/ks/t1/b.db"
assert_same "$T_TMP/b.cat" "$O/b.db" "backup b.db (key2)"
fsck -d "$K" --json "$HALF"
cp "$T_OUT" "$T_TMP/half.json"
fsck -d "$K" --json "$BK"
assert_rc 1 "fsck of the backup copy"
schema_ok "fsck --json backup"
python3 - "$T_TMP/half.json" "$T_OUT" <<'EOF' || fail "the backup's report differs from the original's"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for d in (a, b):
    for k in ('datadir', 'data_dir', 'time'):  # where and when (the fleet fields)
        del d[k]
if a != b:
    sys.exit('reports differ')
EOF
ok "same report as the original"
K1ONLY="$T_TMP/keys-key1-only"
mkdir -p "$K1ONLY"
cp -a "$K/key1" "$K1ONLY/"
fsck -d "$K1ONLY" --json "$BK"
assert_rc 5 "fsck of the backup with a key directory lacking key2"
assert_eq "$(keyrow key2 key_file)" missing "key2 status"

# ===========================================================================
# the progress bar on a terminal
# ===========================================================================
if command -v script >/dev/null 2>&1; then
	checking "--deep on a terminal shows a progress bar (percent, bytes, rate, time left)"
	script -qec "rekeyctl fsck -d '$K' --deep '$ROT' >/dev/null" "$T_TMP/tty.log" >/dev/null 2>&1
	assert_file_has "$T_TMP/tty.log" 'fsck --deep \[#+\] +100\.0%  +[0-9.]+ MiB +[0-9.]+ MiB/s +[0-9]+s left' \
		"progress bar"
else
	note "script(1) missing: terminal progress bar not checked"
fi

# ===========================================================================
# through a mount
# ===========================================================================
fuse_ok=true
if [ "$(id -u)" -ne 0 ] || [ ! -c /dev/fuse ] || ! command -v fusermount3 >/dev/null 2>&1 ||
	! command -v rekeyfs >/dev/null 2>&1; then
	[ "${CI:-}" = "true" ] && fail "the online part needs root, /dev/fuse, fusermount3 and rekeyfs (CI=true: not skipping)"
	fuse_ok=false
	note "online part skipped: needs root, /dev/fuse, fusermount3 and rekeyfs"
fi

if $fuse_ok; then
	KEYS="$K" # for integ.bash's mount_fs
	M="$T_TMP/mnt"
	H2="$T_TMP/half2"
	cp -a "$HALF" "$H2"

	checking "online: the daemon's report equals the offline one (only 'source' differs), exit 1"
	fsck -d "$K" --json "$H2"
	cp "$T_OUT" "$T_TMP/h2-offline.json"
	fsck -d "$K" "$H2"
	cp "$T_OUT" "$T_TMP/h2-offline.txt"
	# no_writeback: a write(2) returns once the daemon has it (with the
	# kernel's writeback cache it may still be on its way; see rekeyctl(8))
	mount_fs "$H2" "$M" walker=off,lazy=off,no_writeback
	fsck --json "$M"
	assert_rc 1 "fsck through the mount"
	schema_ok "fsck --json through the mount"
	jcheck "d['source']" daemon "source"
	python3 - "$T_TMP/h2-offline.json" "$T_OUT" <<'EOF' || fail "online and offline reports differ"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a.pop('source') == 'offline' and b.pop('source') == 'daemon'
# the fleet fields: the same data directory; mount null offline, the mount online
assert a.pop('data_dir') == b.pop('data_dir') and a.pop('mount') is None and b.pop('mount') is not None
a.pop('time'); b.pop('time')
if a != b:
    for k in a:
        if a[k] != b.get(k):
            print('field %s: offline %r, online %r' % (k, a[k], b.get(k)))
    sys.exit(1)
EOF
	fsck "$M"
	assert_rc 1 "fsck through the mount (text)"
	diff <(tail -n +2 "$T_TMP/h2-offline.txt") <(tail -n +2 "$T_OUT") >"$T_TMP/diff.out" ||
		fail "the text reports differ beyond the first line: $(head -20 "$T_TMP/diff.out")"
	assert_out_has "^rekeyfs fsck of .*\(online, through the daemon; header counts" "first line"
	ok "same text after the first line"

	checking "online: the data directory is refused offline while the daemon holds it (exit 8)"
	fsck -d "$K" "$H2"
	assert_rc 8 "offline fsck of a mounted data directory"
	assert_err_has "is mounted at .* by pid [0-9]+; use rekeyctl fsck" "message names the mount and the pid"

	checking "online: writes not yet on disk count (an overwrite and an append to /a.db, sealed under key2)"
	# a.db (10000 B, 3 chunks under key1): chunk 0 overwritten; 8192 B appended
	# rewrite the partial chunk 2 and add chunks 3 and 4: key1 keeps chunk 1 only
	# The append stays open during the check: no close (FUSE flush) has
	# written its header; the daemon must, before it counts.
	dd if="$O/a.db" of="$M/a.db" bs=4096 count=1 conv=notrunc status=none || fail "write through the mount"
	# (a separate process that never forks holds it: any close of a copy of
	# the descriptor, even by exec, would make FUSE flush the header)
	python3 - "$M/a.db" "$O/b.db" "$T_TMP/append.ready" "$T_TMP/append.done" <<'EOF2' &
import os, sys, time
f = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
os.write(f, open(sys.argv[2], 'rb').read(8192))
open(sys.argv[3], 'w').close()
for _ in range(600):
    if os.path.exists(sys.argv[4]):
        break
    time.sleep(0.05)
os.close(f)
EOF2
	holder=$!
	bg_register $holder
	for _ in $(seq 1 200); do [ -e "$T_TMP/append.ready" ] && break; sleep 0.05; done
	[ -e "$T_TMP/append.ready" ] || fail "the append through the mount did not happen"
	fsck --json "$M"
	touch "$T_TMP/append.done"
	wait $holder
	bg_forget $holder
	assert_rc 1 "fsck after the writes"
	assert_eq "$(keyrow key1 chunks)" 8 "key1 chunks after the writes (a.db 1 + many 7)"
	assert_eq "$(keyrow key2 chunks)" 10 "key2 chunks after the writes (a.db 4 + ks/t1 6)"
	jcheck "d['total']['bytes']" 39373 "plaintext bytes after the append"
	jcheck "d['total']['files_off_target']" 8 "a.db still has an old chunk"
	fsck --key key1 --json "$M"
	assert_rc 1 "fsck --key key1 through the mount"
	jcheck "d['key_query']['chunks']" 8 "exact count through the daemon"

	checking "online: --deep, --table / MOUNT/TABLE, usage errors from the daemon (exit 16)"
	fsck --deep --json "$M"
	assert_rc 1 "fsck --deep through the mount"
	schema_ok "fsck --deep --json through the mount"
	jcheck "d['total']['chunks_verified']" 18 "chunks authenticated by the daemon"
	fsck "$M/ks/t1"
	assert_rc 0 "fsck MOUNT/ks/t1"
	assert_out_has "^total \(this table\)" "one table"
	fsck --table /nope "$M"
	assert_rc 16 "fsck --table /nope through the mount"
	assert_err_has "not a table" "message from the daemon"
	fsck --key key2 "$M"
	assert_rc 1 "the target key through the mount"
	if command -v script >/dev/null 2>&1; then
		script -qec "rekeyctl fsck --deep '$M' >/dev/null" "$T_TMP/tty2.log" >/dev/null 2>&1
		assert_file_has "$T_TMP/tty2.log" 'fsck --deep \[#+\] +100\.0%' "progress bar of an online deep check"
	fi
	umount_fs "$M"

	checking "after unmount, offline sees what the daemon counted"
	fsck -d "$K" --json "$H2"
	assert_rc 1 "offline after the writes"
	assert_eq "$(keyrow key1 chunks)" 8 "key1 chunks on disk"
	assert_eq "$(keyrow key2 chunks)" 10 "key2 chunks on disk"
	jcheck "d['total']['bytes']" 39373 "plaintext bytes on disk"

	checking "online: a walker sweep finishes the rotation: exit 0, then key1 may be released"
	mount_fs "$H2" "$M"
	run rekeyctl rekey "$M"
	assert_rc 0 "rekey through the mount"
	for _ in $(seq 1 100); do
		fsck "$M"
		[ "$RC" -eq 0 ] && break
		sleep 0.2
	done
	assert_rc 0 "fsck through the mount after the sweep"
	assert_out_has "^rotation complete" "verdict"
	fsck --key key1 "$M"
	assert_rc 0 "fsck --key key1 after the sweep"
	umount_fs "$M"

	checking "online: corruption through the mount (deep): same problems as offline, exit 4"
	C2="$T_TMP/corr2"
	cp -a "$CORR" "$C2"
	fsck -d "$K" --deep --json "$C2"
	cp "$T_OUT" "$T_TMP/c2-offline.json"
	mount_fs "$C2" "$M" walker=off,lazy=off
	fsck --deep --json "$M"
	assert_rc 4 "fsck --deep of a corrupt tree through the mount"
	schema_ok "fsck --deep --json corrupt, online"
	python3 - "$T_TMP/c2-offline.json" "$T_OUT" <<'EOF' || fail "online and offline problems differ"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
if a['problems'] != b['problems']:
    sys.exit('offline %r\nonline %r' % (a['problems'], b['problems']))
EOF
	umount_fs "$M"
fi

echo "PASS: $T_CHECKS checks"
exit 0
