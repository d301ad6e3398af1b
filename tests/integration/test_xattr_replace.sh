#!/bin/bash
# Whole-file replacement keeps every extended attribute (issue #10, item 5):
# `rekeyctl encrypt`, an offline `rekeyctl rekey` and the walker's whole-file
# rekey write a new file and rename it over the original; the attributes were
# copied through fixed buffers (an 8 KiB name list), so a file with more names
# lost ALL of them, POSIX ACLs included.  Here: 200 user.* attributes with
# long names and 1 KiB values plus an ACL (the data directory is on a tmpfs:
# ext4 holds only one block of attributes per inode); the full dump
# (getfattr -d -m- and getfacl) must be the same after each replacement.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd getfattr setfacl getfacl python3 mount umount
integ_setup
FS="$T_TMP/fs"
D="$FS/data"
M="$T_TMP/mnt"
mkdir -p "$FS"
mount -t tmpfs -o size=256m tmpfs "$FS" || skip "cannot mount a tmpfs"
at_exit "umount -l '$FS'"
FILES="a.dat b.bin"

dump() { # FILE: every attribute and the ACL, hex values
	(cd "$D" && getfattr -d -m- -e hex "$1" && getfacl -n "$1") 2>&1
}
same_attrs() { # WHAT
	local f
	for f in $FILES; do
		dump "$f" >"$T_TMP/$f.after"
		cmp -s "$T_TMP/$f.before" "$T_TMP/$f.after" ||
			fail "$1: the extended attributes of $f changed ($(diff "$T_TMP/$f.before" "$T_TMP/$f.after" | head -c 600))"
	done
}
replaced() { # WHAT: every file has a new backing inode
	local f
	for f in $FILES; do
		[ "$(stat -c %i "$D/$f")" != "${INO[$f]}" ] || fail "$1: $f was not replaced (same inode): not covered"
		INO[$f]=$(stat -c %i "$D/$f")
	done
}
declare -A INO

checking "set up: plain files with 200 user.* attributes (12 KiB of names, 200 KiB of values) and a POSIX ACL"
new_datadir "$D" 4 key1
make_text "$D/a.dat" 100000 1
make_random "$D/b.bin" 50000
for f in $FILES; do
	python3 - "$D/$f" <<'PY' || fail "setxattr on $f"
import os, sys
for i in range(200):
    os.setxattr(sys.argv[1], "user.attribute_%03d_%s" % (i, "n" * 40), (b"%03d" % i) * 341 + b"z")
PY
	setfacl -m u:1234:rw,g:2345:r "$D/$f" || fail "setfacl $f"
	dump "$f" >"$T_TMP/$f.before"
	grep -q "system.posix_acl_access" "$T_TMP/$f.before" || fail "no ACL on $f"
	[ "$(grep -c '^user\.attribute_' "$T_TMP/$f.before")" = 200 ] || fail "setup: not 200 attributes on $f"
	INO[$f]=$(stat -c %i "$D/$f")
	cp "$D/$f" "$T_TMP/$f.orig" || fail "cp $f"
done
ok "2 files"

checking "rekeyctl encrypt keeps every attribute and the ACL"
run rekeyctl encrypt -d "$KEYS" "$D"
assert_rc 0 "encrypt"
for f in $FILES; do is_chunk_file "$D/$f" || fail "$f is not a chunk file after encrypt"; done
replaced "encrypt"
same_attrs "encrypt"
ok "kept"

checking "offline rekeyctl rekey (whole-file replacement) keeps them"
run rekeyctl alter -d "$KEYS" "$D" --key key2
assert_rc 0 "alter to key2"
run rekeyctl rekey -d "$KEYS" "$D"
assert_rc 0 "offline rekey"
replaced "offline rekey"
same_attrs "offline rekey"
ok "kept"

checking "the walker's whole-file rekey keeps them"
run rekeyctl alter -d "$KEYS" "$D" --key key1
assert_rc 0 "alter to key1"
mount_fs "$D" "$M" "walker_rate=0"
r=$(ctl rekey)
echo "$r" | grep -q '^ok' || fail "rekey: $r"
wait_idle 60
st=$(status_get 'w["files_replaced"]')
[ "$st" = 2 ] || fail "the walker replaced $st files, expected 2"
for f in $FILES; do cmp -s "$T_TMP/$f.orig" "$M/$f" || fail "$f reads back differently"; done
umount_fs "$M"
replaced "walker"
same_attrs "walker"
run rekeyctl fsck --deep -d "$KEYS" "$D"
assert_rc 0 "deep fsck: every chunk authenticates, on target"
ok "kept"
finish
