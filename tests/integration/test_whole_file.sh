#!/bin/bash
# Whole-file rekey: a sweep rekeys a closed file by writing a resealed copy
# under a temporary name and renaming it over the original (one write per
# chunk instead of two).  Checked here:
#   - closed files are replaced (a new backing inode) and keep their bytes,
#     size, holes, owner, mode, extended attributes and times
#   - a hard-linked file, a file held open, and every file with
#     -o whole_file=off are rekeyed in place (the backing inode stays)
#   - the mount's view of a replaced file stays live: reads and appends
#     through a path looked up before the sweep reach the new file
#   - a workload that opens, appends, renames, chmods and unlinks files
#     while a slow sweep runs loses nothing and resurrects nothing
#   - no temporary is left behind; offline, every chunk authenticates and
#     sits under the new key
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd cmp stat find
integ_setup
D="$T_TMP/data"
M="$T_TMP/mnt"
E="$T_TMP/exp"
mkdir -p "$E"

sweep() { # run a sweep of everything and wait for it
	local r
	r=$(ctl rekey)
	echo "$r" | grep -q '^ok' || fail "rekey: $r"
	wait_idle 60
}
ino() { stat -c %i "$D/$1"; }
ident() { # the identity the mount shows: mode uid gid size mtime xattr
	local x
	x=$(python3 -c 'import os,sys
try: print(os.getxattr(sys.argv[1], "user.rk").decode())
except OSError: print("-")' "$M/$1")
	echo "$(stat -c '%a %u %g %s %y' "$M/$1") $x"
}
no_temporaries() {
	local t
	t=$(find "$D" -name '.rekeyfs-tmp.*')
	[ -z "$t" ] || fail "temporaries left behind: $t"
}

checking "set up: 16 KiB chunks, files under key1 (text, random, sparse, tiny, empty, hard-linked, one to hold open)"
new_datadir "$D" 16 key1
mount_fs "$D" "$M" ""
make_text "$E/a.txt" 300000 1
make_random "$E/b.bin" 200000
python3 - "$E/sparse.dat" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    f.write(b"head" * 1000)
    f.seek(1 << 20)
    f.write(b"middle" * 1000)
    f.seek(3 << 20)
    f.write(b"tail" * 100)
PY
printf 'tiny\n' >"$E/tiny"
: >"$E/empty"
make_random "$E/hard.dat" 100000
make_text "$E/held.dat" 150000 2
for f in a.txt b.bin tiny empty hard.dat held.dat; do cp "$E/$f" "$M/$f" || fail "cp $f"; done
cp --sparse=always "$E/sparse.dat" "$M/sparse.dat" || fail "cp sparse.dat"
ln "$M/hard.dat" "$M/hard.link" || fail "ln"
chmod 640 "$M/a.txt" && chown 1234:2345 "$M/b.bin" && chmod 4755 "$M/tiny" || fail "chmod/chown"
python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.rk", b"kept")' "$M/a.txt" || fail "setxattr"
touch -m -d '2020-01-02 03:04:05.123456789' "$M/a.txt" "$M/sparse.dat" || fail "touch"
sync
for f in a.txt b.bin sparse.dat tiny empty hard.dat held.dat; do echo "$f $(ident "$f")"; done >"$T_TMP/ident.before"
sparse_blocks=$(stat -c %b "$D/sparse.dat")
umount_fs "$M"
run rekeyctl alter -d "$KEYS" "$D" --key key2
assert_rc 0 "alter to key2"
declare -A INO
for f in a.txt b.bin sparse.dat tiny empty hard.dat held.dat; do INO[$f]=$(ino "$f"); done
ok "7 files, stored under key1; the table now targets key2"

checking "a sweep replaces the closed files, and rekeys the hard-linked and the open file in place"
mount_fs "$D" "$M" "walker_rate=0"
# looked up (and cached by the kernel) before the sweep
head -c 10 "$M/a.txt" >/dev/null
python3 - "$M/held.dat" "$T_TMP/held.go" "$T_TMP/held.ready" <<'PY' &
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
open(sys.argv[3], "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
os.close(fd)
PY
HOLDER=$!
bg_register "$HOLDER"
# the file is open before the sweep starts (no sleep hoping it is)
wait_until 30 "the holder did not open held.dat within 30 s" test -e "$T_TMP/held.ready"
sweep
replaced=$(status_get 'w["files_replaced"]')
# the empty file too: its format 2 header wraps a data key under key1,
# which would keep key1 from being released (rk_release_wrap_blocks)
[ "$replaced" = 5 ] || fail "files_replaced is $replaced, expected 5 (a.txt b.bin sparse.dat tiny empty)"
for f in a.txt b.bin sparse.dat tiny empty; do
	[ "$(ino "$f")" != "${INO[$f]}" ] || fail "$f kept its backing inode: not replaced"
done
for f in hard.dat held.dat; do
	[ "$(ino "$f")" = "${INO[$f]}" ] || fail "$f got a new backing inode (it must be rekeyed in place)"
done
[ "$(ino hard.dat)" = "$(ino hard.link)" ] || fail "the hard links were split"
no_temporaries
ok "5 replaced (the empty file's header too); hard-linked and held open files kept their inodes"

checking "replaced files keep bytes, size, holes, owner, mode, xattrs and times"
for f in a.txt b.bin sparse.dat tiny empty hard.dat held.dat; do
	cmp "$M/$f" "$E/$f" || fail "$f differs after the sweep"
done
for f in a.txt b.bin sparse.dat tiny empty hard.dat held.dat; do echo "$f $(ident "$f")"; done >"$T_TMP/ident.after"
diff "$T_TMP/ident.before" "$T_TMP/ident.after" >&2 || fail "identity changed by the sweep (diff above)"
nb=$(stat -c %b "$D/sparse.dat")
[ "$nb" -le $((sparse_blocks + 16)) ] || fail "sparse.dat lost its holes: $sparse_blocks -> $nb blocks"
ok "identical"

checking "the kernel's inode follows the replacement: appends through the mount reach the new file"
printf 'appended after the sweep\n' >>"$M/a.txt" || fail "append"
printf 'appended after the sweep\n' >>"$E/a.txt"
cmp "$M/a.txt" "$E/a.txt" || fail "a.txt after the append"
touch "$T_TMP/held.go"
wait "$HOLDER" || fail "the holder failed"
bg_forget "$HOLDER"
umount_fs "$M"
run rekeyctl cat -d "$KEYS" "$D/a.txt"
assert_rc 0 "rekeyctl cat a.txt"
cmp <(rekeyctl cat -d "$KEYS" "$D/a.txt") "$E/a.txt" || fail "the append did not reach the stored file"
run rekeyctl fsck --deep -d "$KEYS" "$D"
assert_rc 0 "fsck --deep after the sweep (every chunk authenticates, all under key2)"
no_temporaries
ok "append stored; fsck --deep clean, 100% on key2"

checking "-o whole_file=off rekeys in place: every backing inode stays"
run rekeyctl alter -d "$KEYS" "$D" --key key1
assert_rc 0 "alter to key1"
for f in a.txt b.bin sparse.dat tiny; do INO[$f]=$(ino "$f"); done
mount_fs "$D" "$M" "walker_rate=0,whole_file=off"
sweep
[ "$(status_get 'w["files_replaced"]')" = 0 ] || fail "files replaced with whole_file=off"
[ "$(status_get 'w["chunks_rewritten_walker"]')" -gt 0 ] || fail "nothing rewritten with whole_file=off"
for f in a.txt b.bin sparse.dat tiny; do
	[ "$(ino "$f")" = "${INO[$f]}" ] || fail "$f got a new inode with whole_file=off"
	cmp "$M/$f" "$E/$f" || fail "$f differs after the in-place sweep"
done
umount_fs "$M"
run rekeyctl fsck -d "$KEYS" "$D"
assert_rc 0 "fsck after the in-place sweep"
ok "in place"

checking "a workload renames, unlinks, chmods, appends and opens files while a slow sweep replaces them"
mount_fs "$D" "$M" "walker_rate=0"
mkdir -p "$M/w" "$T_TMP/wsh"
for i in $(seq 40); do
	make_random "$T_TMP/wsh/f$i" $((20000 + i * 3000))
	cp "$T_TMP/wsh/f$i" "$M/w/f$i" || fail "cp w/f$i"
done
umount_fs "$M"
run rekeyctl alter -d "$KEYS" "$D" --key key2
assert_rc 0 "alter to key2"
# slow: about 2 files a second, so the workload meets files being copied
mount_fs "$D" "$M" "walker_rate=150000,lazy=off"
r=$(ctl rekey)
echo "$r" | grep -q '^ok' || fail "rekey: $r"
python3 - "$M/w" "$T_TMP/wsh" "$M/.rekeyfs/status" <<'PY' || fail "workload"
import json, os, random, sys, time
mnt, sh, status = sys.argv[1:4]
r = random.Random(7)
names = sorted(os.listdir(sh))
ops = 0
deadline = time.time() + 25
def idle():
    return json.load(open(status))["walker"]["state"] in ("idle", "finished", "incomplete")
while time.time() < deadline and not idle():
    if not names:
        break
    n = r.choice(names)
    op = r.randrange(6)
    if op == 0:      # append
        data = os.urandom(r.randrange(1, 9000))
        with open(os.path.join(mnt, n), "ab") as f:
            f.write(data)
        with open(os.path.join(sh, n), "ab") as f:
            f.write(data)
    elif op == 1:    # rename
        m = "r%d_%s" % (ops, n.split("_")[-1])
        os.rename(os.path.join(mnt, n), os.path.join(mnt, m))
        os.rename(os.path.join(sh, n), os.path.join(sh, m))
        names[names.index(n)] = m
    elif op == 2 and len(names) > 20:  # unlink
        os.unlink(os.path.join(mnt, n))
        os.unlink(os.path.join(sh, n))
        names.remove(n)
    elif op == 3:    # chmod
        mode = r.choice([0o600, 0o640, 0o644])
        os.chmod(os.path.join(mnt, n), mode)
        os.chmod(os.path.join(sh, n), mode)
    else:            # read and compare
        with open(os.path.join(mnt, n), "rb") as f:
            got = f.read()
        with open(os.path.join(sh, n), "rb") as f:
            want = f.read()
        if got != want:
            sys.exit("%s differs from its shadow (%d vs %d bytes)" % (n, len(got), len(want)))
    ops += 1
    time.sleep(r.random() * 0.03)
print("workload: %d operations" % ops)
PY
wait_idle 120
python3 - "$M/w" "$T_TMP/wsh" <<'PY' || fail "after the sweep the files differ from the workload's shadow"
import os, stat, sys
mnt, sh = sys.argv[1:3]
a, b = sorted(os.listdir(mnt)), sorted(os.listdir(sh))
if a != b:
    sys.exit("names differ: only in the mount %s, only in the shadow %s" % (sorted(set(a) - set(b)), sorted(set(b) - set(a))))
for n in a:
    x, y = os.stat(os.path.join(mnt, n)), os.stat(os.path.join(sh, n))
    if stat.S_IMODE(x.st_mode) != stat.S_IMODE(y.st_mode):
        sys.exit("%s: mode %o, expected %o" % (n, stat.S_IMODE(x.st_mode), stat.S_IMODE(y.st_mode)))
    if open(os.path.join(mnt, n), "rb").read() != open(os.path.join(sh, n), "rb").read():
        sys.exit("%s: content differs" % n)
print("%d files identical" % len(a))
PY
note "files replaced: $(status_get 'w["files_replaced"]'), walker chunks: $(status_get 'w["chunks_rewritten_walker"]'), lazy: $(status_get 'w["chunks_rewritten_lazy"]')"
umount_fs "$M"
no_temporaries
run rekeyctl fsck --deep -d "$KEYS" "$D"
assert_rc 0 "fsck --deep after the concurrent sweep"
ok "names, modes and bytes as the workload left them; fsck --deep clean"
finish
