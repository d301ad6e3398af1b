#!/bin/bash
# A directory tree deeper than PATH_MAX below the data directory (issue #10
# item 9): files created at that depth through the mount are sealed under
# their table's key (the table comes from the daemon's parent chain, not from
# a path read back through /proc, which fails past PATH_MAX); a sweep rekeys
# them; fsck (online and offline) counts them and exits 0 when clean, and
# release-key of the old key succeeds after the sweep.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
integ_setup

DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
new_datadir "$DATA" 16
mkdir -p "$DATA/deep"
mount_fs "$DATA" "$MNT"

# deep OP ROOT: python with directory fds (no path is ever longer than one
# name): OP=make builds 24 levels of 200-character names under ROOT and
# writes files there; OP=check reads them back
deep() {
	run "$PY" - "$@" <<'EOF'
import os, sys
op, root = sys.argv[1], sys.argv[2]
LEVELS, NAME = 24, "d" * 196
def content(i):
    return (b"deep file %d " % i) * 7000
fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
total = len(root)
for lvl in range(LEVELS):
    name = "%s%03d" % (NAME, lvl)
    if op == "make":
        os.mkdir(name, dir_fd=fd)
    nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = nfd
    total += 1 + len(name)
assert total > 4096, total
for i in range(3):
    fname = "f%d.db" % i
    if op == "make":
        f = os.open(fname, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(f, content(i))
        os.fsync(f)
        os.close(f)
    elif op == "check":
        f = os.open(fname, os.O_RDONLY, dir_fd=fd)
        got = b""
        while True:
            b = os.read(f, 1 << 20)
            if not b:
                break
            got += b
        os.close(f)
        if got != content(i):
            sys.exit("%s at depth %d: %d bytes read, content differs" % (fname, LEVELS, len(got)))
print("depth %d, path length %d" % (LEVELS, total))
EOF
}

checking "a table with its own key; a tree deeper than PATH_MAX made in it through the mount"
run rekeyctl alter "$MNT/deep" --key key2
assert_rc 0 "alter MOUNT/deep --key key2"
deep make "$MNT/deep"
assert_rc 0 "building the deep tree through the mount ($(cat "$T_ERR"))"
cat "$T_OUT"
deep check "$MNT/deep"
assert_rc 0 "reading the deep files back ($(cat "$T_ERR"))"

checking "the deep files are chunk files sealed under the table's key (key2), none under the root's (key1)"
run rekeyctl fsck --json "$MNT"
FSCK_RC=$RC
cp "$T_OUT" "$T_TMP/fsck1.json"
[ "$FSCK_RC" -ne 8 ] || fail "online fsck cannot walk the deep tree (exit 8): $(cat "$T_ERR" "$T_OUT" | head -c 2000)"
python3 - "$T_TMP/fsck1.json" <<'EOF' || fail "fsck counts: $(head -c 3000 "$T_TMP/fsck1.json")"
import json, sys
d = json.load(open(sys.argv[1]))
tabs = {t["path"]: t for t in d["tables"]}
deep = tabs["/deep"]
keys = {k["name"]: k for k in deep["keys"]}
assert deep["chunk_files"] == 3, ("chunk files in /deep", deep["chunk_files"])
assert "key2" in keys and keys["key2"]["chunks"] > 0, ("no chunks under key2 in /deep", keys)
assert "key1" not in keys or keys["key1"]["chunks"] == 0, ("chunks under key1 in /deep", keys)
EOF

checking "the table goes back to key1: a sweep rekeys the deep files, fsck exits 0, key2 is released"
run rekeyctl alter "$MNT/deep" --key key1
assert_rc 0 "alter MOUNT/deep --key key1"
run rekeyctl fsck --key key2 "$MNT"
assert_rc_nonzero "fsck --key key2 before the sweep (the deep chunks still need it)"
run rekeyctl release-key key2 "$MNT"
assert_rc_nonzero "release-key key2 before the sweep"
run rekeyctl rekey "$MNT"
assert_rc 0 "rekey MOUNT ($(cat "$T_ERR"))"
sweep_done() {
	status
	WAIT_WHY=$(cat "$T_TMP/status.json")
	[ "$(sget 'd["walker"]["state"]')" = finished ] && [ "$(sget 'd["walker"]["sweep"]')" != 0 ]
}
wait_until 60 "the sweep did not finish within 60 s" sweep_done
errs=$(sget 'd["walker"]["error_count"]')
assert_eq "$errs" 0 "walker errors ($(cat "$T_TMP/status.json"))"
run rekeyctl fsck "$MNT"
assert_rc 0 "online fsck after the sweep ($(cat "$T_OUT" "$T_ERR" | head -c 2000))"
run rekeyctl release-key key2 "$MNT"
assert_rc 0 "release-key key2 after the sweep ($(cat "$T_OUT" "$T_ERR"))"
deep check "$MNT/deep"
assert_rc 0 "reading the deep files back after the sweep ($(cat "$T_ERR"))"
umount_fs "$MNT"

checking "offline: fsck counts the deep files and exits 0; rekey walks them"
run rekeyctl fsck --json -d "$KEYS" "$DATA"
assert_rc 0 "offline fsck ($(head -c 2000 "$T_OUT") $(cat "$T_ERR"))"
python3 - "$T_OUT" <<'EOF' || fail "offline fsck counts: $(head -c 3000 "$T_OUT")"
import json, sys
d = json.load(open(sys.argv[1]))
tabs = {t["path"]: t for t in d["tables"]}
assert tabs["/deep"]["chunk_files"] == 3, tabs["/deep"]
EOF
run rekeyctl rekey -d "$KEYS" "$DATA"
assert_rc 0 "offline rekey of a data directory with a deep tree ($(cat "$T_ERR"))"
finish
