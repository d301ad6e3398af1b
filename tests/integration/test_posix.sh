#!/bin/bash
# POSIX semantics of a rekeyfs mount, side by side with a plain directory.
#
# Every operation of the design brief's "Mount" section runs in MNT/<set> and
# in a plain directory PLAIN/<set> (same commands, relative paths); exit
# status, stdout and stderr must be identical, and after each operation the
# two trees must have the same names, types, modes, link counts, owners,
# sizes, symlink targets and content (read with a cold page cache).  The
# operations run twice: with the kernel writeback cache (default) and with
# -o no_writeback,attr_timeout=0,entry_timeout=0 (every stat, lookup and
# write reaches the daemon).  Between the rounds the file system is
# remounted and the trees compared again with a cold cache; at the end every
# stored file is decrypted offline with rekeyctl cat.  Mount-only checks:
# stored files are chunk files (magic, bigger than the plaintext), a plain
# file that was already in DATADIR stays plain, the real .rekeyfs is hidden
# behind the virtual one (status is JSON), reserved temp names are refused,
# statfs, a write survives close() and an immediate reopen, explicitly set
# mtimes survive later header writes.  VERBOSE=1 shows each operation's
# output on the mount.
set -u
. "${TEST_SRCDIR:-$(dirname "$0")/..}/integration/integ.bash"
need_fuse
need_cmd setfattr getfattr flock mkfifo df
integ_setup

CKB=16 # small chunks: writes span chunks cheaply
CS=$((CKB * 1024))
DATA="$T_TMP/data"
MNT="$T_TMP/mnt"
PLAIN="$T_TMP/plain"
SRC="$T_TMP/src"
OPS="$T_TMP/ops.py"
mkdir -p "$PLAIN" "$SRC" "$MNT"
new_datadir "$DATA" $CKB
make_random "$SRC/rand" $((10 * CS + 1234))
make_text "$SRC/text" $((3 * CS + 77)) 3

cat >"$OPS" <<'EOF'
import ctypes, errno, fcntl, hashlib, os, sys, time

def en(e):
    return errno.errorcode.get(e.errno, str(e.errno))

def attempt(fn, *a):
    try:
        r = fn(*a)
        print("ok" if r is None else r)
    except OSError as e:
        print(en(e))

libc = ctypes.CDLL(None, use_errno=True)
def renameat2(old, new, flags):
    AT_FDCWD = -100
    r = libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

cmd, a = sys.argv[1], sys.argv[2:]
if cmd == "excl":           # O_CREAT|O_EXCL on PATH
    def f():
        fd = os.open(a[0], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        os.write(fd, b"exclusive\n")
        os.close(fd)
    attempt(f)
elif cmd == "oappend":      # O_APPEND: a write after lseek(0) still appends
    fd = os.open(a[0], os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    n = os.write(fd, a[1].encode())
    print("wrote", n, "pos", os.lseek(fd, 0, os.SEEK_CUR), "size", os.fstat(fd).st_size)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"<second append>")
    os.close(fd)
elif cmd == "otrunc":       # O_TRUNC on an existing file, then a short write
    fd = os.open(a[0], os.O_WRONLY | os.O_TRUNC)
    print("size after open", os.fstat(fd).st_size)
    os.write(fd, b"short")
    os.close(fd)
elif cmd == "creat_trunc":  # O_CREAT|O_TRUNC of an existing file (the create path)
    fd = os.open(a[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    print("size after open", os.fstat(fd).st_size)
    os.write(fd, b"re-created")
    os.close(fd)
elif cmd == "rename":
    attempt(os.rename, a[0], a[1])
elif cmd == "renameat2":    # OLD NEW noreplace|exchange
    attempt(renameat2, a[0], a[1], {"noreplace": 1, "exchange": 2}[a[2]])
elif cmd == "rmdir":
    attempt(os.rmdir, a[0])
elif cmd == "mkdir":
    attempt(os.mkdir, a[0])
elif cmd == "unlink":
    attempt(os.unlink, a[0])
elif cmd == "unlink_open":  # keep using a file after its last name is gone
    fd = os.open(a[0], os.O_RDWR)
    size = os.fstat(fd).st_size
    before = hashlib.sha256(os.pread(fd, size, 0)).hexdigest()
    os.unlink(a[0])
    print("exists", os.path.exists(a[0]))
    st = os.fstat(fd)
    print("nlink", st.st_nlink, "size", st.st_size)
    print("same content", hashlib.sha256(os.pread(fd, size + 10, 0)).hexdigest() == before)
    os.pwrite(fd, b"written after unlink", size + 100)
    os.fsync(fd)
    print("read back", os.pread(fd, 20, size + 100), "size", os.fstat(fd).st_size)
    print("hole", os.pread(fd, 100, size) == bytes(100))
    os.close(fd)
elif cmd == "link_write":   # write through one name, read through the other
    fa = os.open(a[0], os.O_RDWR)
    fb = os.open(a[1], os.O_RDONLY)
    os.pwrite(fa, b"THROUGH-THE-FIRST-NAME", int(a[2]))
    os.fsync(fa)
    print(os.pread(fb, 22, int(a[2])))
    print("nlink", os.fstat(fb).st_nlink, "same inode", os.fstat(fa).st_ino == os.fstat(fb).st_ino)
    os.close(fa)
    os.close(fb)
elif cmd == "fsync":
    fd = os.open(a[0], os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"durable bytes", int(a[1]))
    os.fsync(fd)
    os.pwrite(fd, b"data-only sync", int(a[1]) + 20)
    os.fdatasync(fd)
    print("synced", os.fstat(fd).st_size)
    os.close(fd)
elif cmd == "lockf":        # POSIX record locks between two processes
    fd = os.open(a[0], os.O_RDWR)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        cfd = os.open(a[0], os.O_RDWR)
        fcntl.lockf(cfd, fcntl.LOCK_EX, 100, 0)   # bytes 0..99
        os.write(w1, b"L")
        os.read(r2, 1)
        fcntl.lockf(cfd, fcntl.LOCK_UN, 100, 0)
        os.write(w1, b"U")
        os.read(r2, 1)
        os._exit(0)
    os.read(r1, 1)
    for start, ln in ((50, 10), (100, 100)):
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, ln, start)
            print("range", start, ln, "acquired")
            fcntl.lockf(fd, fcntl.LOCK_UN, ln, start)
        except OSError as e:
            print("range", start, ln, "blocked", e.errno in (errno.EAGAIN, errno.EACCES))
    os.write(w2, b"x")
    os.read(r1, 1)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
        print("after unlock acquired")
    except OSError as e:
        print("after unlock", en(e))
    os.write(w2, b"x")
    os.waitpid(pid, 0)
    os.close(fd)
elif cmd == "pread":        # PATH OFF LEN: sha256 of the bytes read
    fd = os.open(a[0], os.O_RDONLY)
    b = os.pread(fd, int(a[2]), int(a[1]))
    print(len(b), hashlib.sha256(b).hexdigest())
    os.close(fd)
elif cmd == "reopen_rmw":   # DIR N CS: write, close, reopen at once, write the same chunk
    d, n, cs = a[0], int(a[1]), int(a[2])
    for it in range(n):
        p = os.path.join(d, "r%02d" % it)
        fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
        os.pwrite(fd, b"x" * (cs + cs // 5), 0)
        os.close(fd)
        fd = os.open(p, os.O_RDWR)
        os.pwrite(fd, b"A" * 65, cs // 5)
        os.close(fd)
        fd = os.open(p, os.O_RDWR)
        os.pwrite(fd, b"B" * (cs // 2), cs * 3 // 4)
        os.close(fd)
elif cmd == "reopen_check":  # DIR CS: the files written by reopen_rmw
    d, cs, bad = a[0], int(a[1]), []
    exp = bytearray(b"x" * (cs + cs // 5))
    exp[cs // 5:cs // 5 + 65] = b"A" * 65
    exp[cs * 3 // 4:cs * 3 // 4 + cs // 2] = b"B" * (cs // 2)
    names = sorted(os.listdir(d))
    for name in names:
        with open(os.path.join(d, name), "rb") as f:
            if f.read() != bytes(exp):
                bad.append(name)
    print("%d of %d files lost a write%s" % (len(bad), len(names), (": " + " ".join(bad[:5])) if bad else ""))
    sys.exit(1 if bad else 0)
elif cmd == "evict":        # DIR: drop the (clean: sync first) cached pages of every file
    for root, dirs, files in os.walk(a[0]):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.isfile(p) or os.path.islink(p):
                continue
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue        # e.g. mode 000
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
elif cmd == "mtime_keep":   # DIR SRC: timestamps set explicitly, then close / fsync
    d, T = a[0], 981173106123456789
    p = os.path.join(d, "mt-futimens")
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    os.write(fd, b"x" * 100000)
    os.utime(fd, ns=(T, T))            # like tar, rsync -t, cp -p: data, then times
    os.close(fd)
    p = os.path.join(d, "mt-fsync")
    with open(p, "wb") as f:
        f.write(b"y" * 1000)
    os.utime(p, ns=(T, T))
    fd = os.open(p, os.O_RDONLY)       # fsync of an unchanged file
    os.fsync(fd)
    os.close(fd)
elif cmd == "mtime_ns":
    st = os.stat(a[0], follow_symlinks=False)
    print(st.st_mtime_ns)
elif cmd == "create_modes":  # UMASK: files, directories, FIFOs created with modes under that umask
    os.umask(int(a[0], 8))
    for m in (0o620, 0o666, 0o4777, 0o2775, 0o6755, 0o1777):
        n = "f%o" % m
        os.close(os.open(n, os.O_CREAT | os.O_EXCL | os.O_WRONLY, m))
        d = "d%o" % m
        os.mkdir(d, m)
        q = "q%o" % m
        os.mkfifo(q, m & 0o777)
        print(n, "%o" % (os.stat(n).st_mode & 0o7777), d, "%o" % (os.stat(d).st_mode & 0o7777),
              q, "%o" % (os.stat(q).st_mode & 0o7777))
elif cmd == "deep":          # DEPTH: nested 200-byte names; a file created, written, read, renamed at the bottom
    top = os.getcwd()
    n = 0
    for i in range(int(a[0])):
        name = ("%03d" % i) * 66 + "dd"
        os.mkdir(name)
        os.chdir(name)
        n += len(name) + 1
    for f in ("f1", "f2"):
        with open(f, "w") as fh:
            fh.write("deep %d\n" % n)
    os.rename("f1", "f3")
    with open("f3") as fh:
        print(len(fh.read()), n + 3 >= 4096)
    os.chdir(top)
    # one relative path string just under PATH_MAX from the top
    rel, k = "", 0
    while len(rel) + 201 + 3 < 4095:
        rel += ("%03d" % k) * 66 + "dd/"
        k += 1
    rel += "f4"
    with open(rel, "w") as fh:
        fh.write("x")
    print(len(rel), os.stat(rel).st_size)
else:
    sys.exit("unknown op " + cmd)
EOF

# ---- comparing a directory on the mount with a plain one -----------------------
# tree_sig DIR: one line per object (type, mode, links, owner, size for files
# and symlinks, link target) and the sha256 of every regular file
tree_sig() {
	(
		cd "$1" || exit 1
		find . -mindepth 1 \( -type f -printf '%p f %m %n %U:%G %s\n' \) -o \
			\( -type l -printf '%p l -> %l %U:%G\n' \) -o \
			\( -type d -printf '%p d %m %n %U:%G\n' \) -o -printf '%p %y %m %n %U:%G\n' | LC_ALL=C sort
		find . -type f -print0 | LC_ALL=C sort -z | xargs -r -0 sha256sum
	)
}

# compare_trees WHAT: the working sets on the mount and in PLAIN
compare_trees() {
	# the mount's side is read with a cold page cache: the bytes come from
	# the daemon, not from what the kernel cached while writing
	sync
	python3 "$OPS" evict "$MW" || fail "evicting the page cache of $MW"
	tree_sig "$MW" >"$T_TMP/sig.m" 2>&1
	tree_sig "$PW" >"$T_TMP/sig.p" 2>&1
	if ! cmp -s "$T_TMP/sig.m" "$T_TMP/sig.p"; then
		echo "--- tree differences after '$1' (< mount, > plain):" >&2
		diff "$T_TMP/sig.m" "$T_TMP/sig.p" | head -40 >&2
		fail "$1: the mount and the plain directory differ"
	fi
}

# settle_wrap: while the close/reopen race is present (REOPEN_BUG),
# every command of a snippet on the mount is followed by a short pause, so
# that the daemon has finished closing a file before the next command opens
# it again; the rest of the test then still checks everything else.
settle_wrap() {
	[ -n "${REOPEN_BUG:-}" ] || return 0
	local c
	for c in dd cp cat truncate python3 tail head mv ln touch chmod chown chgrp setfattr getfattr \
		stat wc cmp od sha256sum flock rm mkdir rmdir mkfifo readlink ls; do
		eval "$c() { command $c \"\$@\"; local r=\$?; sleep 0.1; return \$r; }"
	done
}

# both WHAT SNIPPET: run the shell SNIPPET (relative paths) in the working
# directory on the mount and in the plain one; same status, stdout, stderr
# and resulting tree (VERBOSE=1 prints the mount's output)
both() {
	local what="$1" snip="$2" rm rp
	checking "$what"
	(cd "$MW" && settle_wrap && eval "$snip") >"$T_TMP/m.out" 2>"$T_TMP/m.err" </dev/null
	rm=$?
	# close/reopen race: the daemon may still be closing the snippet's files
	[ -n "${REOPEN_BUG:-}" ] && sleep 0.1
	(cd "$PW" && eval "$snip") >"$T_TMP/p.out" 2>"$T_TMP/p.err" </dev/null
	rp=$?
	if [ $rm -ne $rp ]; then
		echo "--- stderr on the mount:" >&2
		head -20 "$T_TMP/m.err" >&2
		fail "$what: exit status $rm on the mount, $rp on a plain directory"
	fi
	if ! cmp -s "$T_TMP/m.out" "$T_TMP/p.out"; then
		diff "$T_TMP/m.out" "$T_TMP/p.out" | head -30 >&2
		fail "$what: output differs (< mount, > plain)"
	fi
	if ! cmp -s "$T_TMP/m.err" "$T_TMP/p.err"; then
		diff "$T_TMP/m.err" "$T_TMP/p.err" | head -30 >&2
		fail "$what: error output differs (< mount, > plain)"
	fi
	if [ -n "${VERBOSE:-}" ]; then
		sed 's/^/    | /' "$T_TMP/m.out" "$T_TMP/m.err"
	fi
	compare_trees "$what"
}

# stored FILE (relative to the working set): the backing file in DATADIR
stored() { echo "$DATA/$SET/$1"; }

assert_chunk_file() {
	is_chunk_file "$(stored "$1")" || fail "$SET/$1: the stored file is not a chunk file (no magic 89 52 4B 46 53)"
}

# ---- the operations ---------------------------------------------------------------------------------
posix_ops() {
	MW="$MNT/$SET"
	PW="$PLAIN/$SET"
	mkdir -p "$MW" "$PW"
	echo "=== operations in $SET ($1)"

	both "create and read a small file" 'echo hello >small && cat small && printf "" >empty && cat empty'
	assert_chunk_file small
	assert_chunk_file empty
	checking "stat shows the plaintext size, the stored file is bigger and starts with the magic"
	assert_eq "$(stat -c %s "$MW/small")" 6 "size of small on the mount"
	[ "$(stat -c %s "$(stored small)")" -gt 6 ] || fail "stored size of small is not bigger than 6"
	[ "$(head -c 5 "$(stored small)" | od -An -tx1 | tr -d ' \n')" = "89524b4653" ] ||
		fail "stored small does not start with 89 52 4B 46 53"

	both "write a file of several chunks plus a partial one" "cp '$SRC/rand' big && cp '$SRC/text' text && cmp big '$SRC/rand' && wc -c <big"
	assert_chunk_file big
	[ "$(stat -c %s "$(stored big)")" -gt "$(stat -c %s "$MW/big")" ] || fail "stored big is not bigger than its plaintext"
	both "read at offsets (inside a chunk, across a boundary, past EOF)" \
		"dd if=big bs=1 skip=100 count=50 status=none | od -An -tx1; dd if=big bs=1000 skip=16 count=3 status=none | sha256sum; \
		 dd if=big bs=$CS skip=10 status=none | wc -c; dd if=big bs=$CS skip=20 status=none | wc -c; \
		 python3 '$OPS' pread big $((CS - 7)) 20; python3 '$OPS' pread big $((10 * CS + 1000)) 5000"
	both "write at an offset inside a chunk (dd conv=notrunc seek=)" \
		"dd if='$SRC/text' of=big bs=1 count=300 seek=5000 conv=notrunc status=none"
	both "write spanning chunk boundaries" \
		"dd if='$SRC/text' of=big bs=1000 count=40 skip=2 seek=15 conv=notrunc status=none && \
		 dd if='$SRC/rand' of=big bs=1 count=100 seek=$((2 * CS - 50)) conv=notrunc status=none"
	both "partial chunk at the end: write inside and across the last chunk" \
		"dd if='$SRC/text' of=big bs=1 count=1000 seek=$((10 * CS + 200)) conv=notrunc status=none && stat -c %s big"
	both "write extending the file from inside its last chunk" \
		"dd if='$SRC/rand' of=big bs=1 count=5000 seek=$((10 * CS + 1000)) conv=notrunc status=none && stat -c %s big"
	both "append with >>" "cat '$SRC/text' >>text && echo line >>small && stat -c %s text small"
	both "O_APPEND writes land at the end even after lseek(0)" "python3 '$OPS' oappend text 'appended-by-python' && tail -c 60 text"
	both "hole by truncate -s (extend)" "truncate -s $((5 * CS + 3)) sparse && stat -c %s sparse && od -An -tx1 sparse | sort -u"
	both "write past EOF leaves a hole (dd seek past the end)" \
		"echo head >sparse2 && dd if='$SRC/text' of=sparse2 bs=1 count=10 seek=$((7 * CS + 5)) conv=notrunc status=none && \
		 stat -c %s sparse2 && python3 '$OPS' pread sparse2 5 $((7 * CS))"
	both "truncate down to inside a chunk" "truncate -s $((3 * CS + 500)) big && stat -c %s big && tail -c 100 big | sha256sum"
	both "truncate up again: the cut-off bytes read back as zeros" \
		"truncate -s $((6 * CS)) big && python3 '$OPS' pread big $((3 * CS + 500)) $((3 * CS - 500)) && \
		 dd if=big bs=1 skip=$((3 * CS + 400)) count=200 status=none | od -An -tx1 | tail -3"
	both "truncate to zero and write again" "cp big big.keep && truncate -s 0 big.keep && stat -c %s big.keep && echo again >>big.keep && cat big.keep"
	both "O_TRUNC: shell > on an existing file" "cp '$SRC/text' tr1 && echo replaced >tr1 && cat tr1 && stat -c %s tr1"
	both "O_TRUNC through open(O_WRONLY|O_TRUNC)" "cp '$SRC/rand' tr2 && python3 '$OPS' otrunc tr2 && cat tr2 && stat -c %s tr2"
	both "O_CREAT|O_TRUNC on an existing file" "cp '$SRC/text' tr3 && python3 '$OPS' creat_trunc tr3 && cat tr3"
	both "O_EXCL create of an existing file gives EEXIST" "python3 '$OPS' excl excl1 && python3 '$OPS' excl excl1 && python3 '$OPS' excl small && cat excl1"
	both "directories: mkdir -p, nested files, ls" "mkdir -p d1/d2/d3 && echo x >d1/d2/d3/f && mkdir d1/empty && ls -la d1 | awk '{print \$1, \$NF}' | grep -v total"
	both "rmdir of a non-empty directory fails (ENOTEMPTY), of an empty one works" \
		"python3 '$OPS' rmdir d1/d2; rmdir d1/d2 2>&1; echo rc=\$?; python3 '$OPS' rmdir d1/empty; python3 '$OPS' mkdir d1"
	both "rename a file over an existing file" "cp '$SRC/text' r1 && echo old >r2 && mv -f r1 r2 && cmp r2 '$SRC/text' && ls r1 2>&1; true"
	both "rename a directory over an empty directory, over a non-empty one, file over directory" \
		"mkdir -p rd1/sub rd2 rd3/x && python3 '$OPS' rename rd1 rd2 && ls rd2 && python3 '$OPS' rename rd2 rd3; \
		 python3 '$OPS' rename small rd3; python3 '$OPS' rename rd3 small"
	both "rename across directories and back" "mv text d1/d2/text.moved && cat d1/d2/text.moved | wc -c && mv d1/d2/text.moved text"
	both "RENAME_NOREPLACE over an existing file gives EEXIST, to a new name works" \
		"echo a >n1 && echo b >n2 && python3 '$OPS' renameat2 n1 n2 noreplace && python3 '$OPS' renameat2 n1 n3 noreplace && cat n2 n3"
	both "RENAME_EXCHANGE swaps two files (and a file with a directory)" \
		"echo first >x1 && cp '$SRC/text' x2 && python3 '$OPS' renameat2 x1 x2 exchange && cat x2 && wc -c <x1 && \
		 mkdir xd && python3 '$OPS' renameat2 x1 xd exchange && ls -d xd x1 && python3 '$OPS' renameat2 n9 x1 exchange"
	both "unlink of an open file: it stays readable and writable" "cp '$SRC/rand' gone && python3 '$OPS' unlink_open gone; ls gone 2>&1; true"
	both "hard links: ln, nlink 2, shared content, writes seen through the other name" \
		"cp '$SRC/text' h1 && ln h1 h2 && stat -c '%h %s' h1 h2 && cmp h1 h2 && python3 '$OPS' link_write h2 h1 $((CS - 10)) && cmp h1 h2 && \
		 echo more >>h1 && cmp h1 h2 && rm h1 && stat -c %h h2 && cmp h2 h2"
	assert_chunk_file h2
	both "symlinks: ln -s, readlink, follow, dangling, to a directory" \
		"ln -s h2 s1 && readlink s1 && cat s1 | wc -c && ln -s nowhere s2 && readlink s2 && cat s2 2>&1; \
		 ln -s d1/d2 s3 && ls s3/ && stat -L -c %F s3"
	both "mkfifo" "mkfifo -m 640 fifo && stat -c '%F %a' fifo"
	both "chmod" "chmod 640 h2 && chmod 2755 d1 && chmod 000 excl1 && stat -c '%a' h2 d1 excl1 && chmod 644 excl1"
	both "chown to a test uid/gid" "chown 12345:23456 h2 && chown 12346 n2 && chgrp 23457 d1 && stat -c '%u:%g' h2 n2 d1 && chown -h 4242:4242 s1 && stat -c '%u:%g' s1"
	checking "the stored file of a chowned file is owned by the test uid in DATADIR"
	assert_eq "$(stat -c %u:%g "$(stored h2)")" "12345:23456" "owner of the stored h2"
	both "create modes under umask 022 and 0: the caller's umask once, setuid/setgid kept" \
		"mkdir um22 um0 && (cd um22 && python3 '$OPS' create_modes 022) && (cd um0 && python3 '$OPS' create_modes 0)"
	both "setgid directory: a new directory inherits setgid and the group, a new file the group" \
		"mkdir sgd && chgrp 23456 sgd && chmod 2775 sgd && mkdir sgd/sub && echo x >sgd/f && python3 '$OPS' create_modes 022 >/dev/null; \
		 stat -c '%a %g' sgd/sub sgd/f"
	both "timestamps of a symlink itself (touch -h)" \
		"ln -s h2 ts1 && touch -h -d '2003-04-05 06:07:08' ts1 && stat -c '%y' ts1 && python3 '$OPS' mtime_ns ts1"
	both "a file whose path below the data directory is longer than PATH_MAX" \
		"mkdir deep && cd deep && python3 '$OPS' deep 21 && cd .. && rm -rf deep"
	both "touch -d sets mtime and atime (utimens)" \
		"touch -d '2001-02-03 04:05:06.123456789' h2 && stat -c '%y' h2 && touch -a -d '2002-03-04 05:06:07' h2 && stat -c '%x' h2 && \
		 touch -d '1999-12-31 23:59:59' d1 && stat -c %y d1 && python3 '$OPS' mtime_ns h2"
	checking "mtime survives a write-free reopen"
	assert_eq "$(stat -c %Y "$MW/h2")" "$(stat -c %Y "$PW/h2")" "mtime of h2"
	both "xattrs: setfattr/getfattr user.test, list, remove, missing" \
		"setfattr -n user.test -v hello h2 && getfattr -n user.test --only-values h2; echo; setfattr -n user.other -v 0x00ff h2 && \
		 getfattr -d -m '^user\\.' h2 | sort; setfattr -x user.test h2 && getfattr -n user.test h2 2>&1; echo rc=\$?; \
		 setfattr -n user.dir -v d d1 && getfattr --only-values -n user.dir d1; echo"
	both "fsync and fdatasync" "python3 '$OPS' fsync fs1 $((2 * CS - 5)) && wc -c <fs1"
	both "flock: a second non-blocking flock fails while another process holds it" \
		"echo l >lk && (flock lk -c 'touch held; sleep 1.5' &) ; i=0; while [ ! -e held ] && [ \$i -lt 100 ]; do sleep 0.05; i=\$((i+1)); done; \
		 flock -n lk true; echo nb=\$?; flock -w 10 lk true; echo waited=\$?; rm -f held"
	both "POSIX record locks (fcntl lockf) between two processes" "cp '$SRC/text' plk && python3 '$OPS' lockf plk"
	both "unlink, then create the same name" "rm n2 && echo new >n2 && cat n2 && rm -f n3 xd x2 && rmdir x1 && ls n3 x1 2>&1; true"

	checking "every regular file created in $SET is a chunk file in DATADIR"
	local f n=0
	while IFS= read -r -d '' f; do
		is_chunk_file "$f" || fail "$f was created through the mount but is not a chunk file"
		n=$((n + 1))
	done < <(find "$DATA/$SET" -type f -print0)
	[ $n -ge 10 ] || fail "expected at least 10 stored files in $DATA/$SET, found $n"
	ok "$n stored files are chunk files"
}

REOPEN_BUG=""
# check_mtimes DIR WHEN: timestamps set explicitly (futimens after writing,
# utimens then fsync, cp -p) must stay, also when the daemon writes headers
# or applies journaled chunks later (a failure does not stop the test)
MTIME_BUG=""
make_mtimes() {
	mkdir -p "$1"
	python3 "$OPS" mtime_keep "$1" || fail "mtime_keep failed"
	cp -p "$SRC/text" "$1/mt-cp-p" || fail "cp -p to the mount"
}
check_mtimes() {
	checking "timestamps set explicitly survive close, fsync and cp -p ($2)"
	local got want
	got="$(stat -c %Y "$1/mt-futimens" "$1/mt-fsync" "$1/mt-cp-p" | tr '\n' ' ')"
	want="981173106 981173106 $(stat -c %Y "$SRC/text") "
	if [ "$got" != "$want" ]; then
		[ -n "$MTIME_BUG" ] && note "mtimes still wrong ($2): $got"
		[ -n "$MTIME_BUG" ] || check_failed "an mtime set with utimens was replaced when the daemon later wrote the chunk-file header or applied the journal (close after futimens, fsync of an unchanged file, cp -p): mtimes $got, expected $want ($2)"
		MTIME_BUG=1
	fi
}

# ---- round 1: writeback cache --------------------------------------------------------------------------
# a plain file already in DATADIR (written before the first mount)
make_text "$DATA/legacy.txt" 5000 9
cp "$DATA/legacy.txt" "$T_TMP/legacy.expected"
mount_fs "$DATA" "$MNT"
# A write, close(), an immediate reopen and a write to the same chunk: FUSE
# sends RELEASE asynchronously, so the reopen can race with the daemon's
# close of the old file state (a bug fs.c file_put once had).  Not side by
# side: a lost write here fails the test, but the other checks go on, with
# a pause after every operation so that they still tell something.
checking "a write survives close() and an immediate reopen that rewrites the same chunk"
mkdir -p "$MNT/reopen"
python3 "$OPS" reopen_rmw "$MNT/reopen" 40 $CS || fail "reopen_rmw failed"
drop_caches
if ! python3 "$OPS" reopen_check "$MNT/reopen" $CS >"$T_OUT" 2>&1; then
	check_failed "write lost after close() + immediate reopen + write to the same chunk ($(cat "$T_OUT")): the next OPEN must wait until the RELEASE of the old file state has written its header and journaled chunks (fs.c file_put)"
	REOPEN_BUG=1
fi

SET=wb
posix_ops "writeback cache"

checking "a plain file that was in DATADIR reads through and stays plain after writes"
assert_same "$MNT/legacy.txt" "$T_TMP/legacy.expected" "read of the plain legacy.txt"
echo "appended through the mount" >>"$MNT/legacy.txt"
echo "appended through the mount" >>"$T_TMP/legacy.expected"
printf 'PATCH' | dd of="$MNT/legacy.txt" bs=1 seek=100 conv=notrunc status=none
printf 'PATCH' | dd of="$T_TMP/legacy.expected" bs=1 seek=100 conv=notrunc status=none
assert_same "$MNT/legacy.txt" "$T_TMP/legacy.expected" "plain legacy.txt after writes through the mount"
drop_caches
is_chunk_file "$DATA/legacy.txt" && fail "legacy.txt became a chunk file; a plain file must pass through"
assert_same "$DATA/legacy.txt" "$T_TMP/legacy.expected" "the stored plain legacy.txt"
assert_eq "$(stat -c %s "$MNT/legacy.txt")" "$(stat -c %s "$DATA/legacy.txt")" "size of the plain file"

checking "the real .rekeyfs is hidden; the virtual one is reachable by name only and shows status and control"
ls -a "$MNT" >"$T_OUT"
assert_eq "$(grep -c '^\.rekeyfs' "$T_OUT")" 0 "number of .rekeyfs* entries listed in the mount root (ls -a: $(tr '\n' ' ' <"$T_OUT"))"
find "$MNT" -maxdepth 1 >"$T_OUT"
grep -q '/\.rekeyfs' "$T_OUT" && fail "find MNT lists the control directory: $(tr '\n' ' ' <"$T_OUT")"
tar -C "$MNT" -cf - . | tar -tf - >"$T_OUT"
grep -q 'rekeyfs' "$T_OUT" && fail "tar of the mount root holds the control directory: $(grep rekeyfs "$T_OUT" | head -3)"
[ "$(stat -c %F "$MNT/.rekeyfs")" = directory ] || fail "stat MNT/.rekeyfs by name fails"
assert_eq "$(ls -a "$MNT/.rekeyfs" | LC_ALL=C sort | tr '\n' ' ')" ". .. control metrics status " "ls -a MNT/.rekeyfs"
for real in "$DATA"/.rekeyfs/*; do
	n="$(basename "$real")"
	[ -e "$MNT/.rekeyfs/$n" ] && fail "the real state file .rekeyfs/$n shows through the mount"
done
[ -d "$MNT/.rekeyfs" ] || fail ".rekeyfs is not a directory on the mount"
run python3 -m json.tool "$MNT/.rekeyfs/status"
assert_rc 0 "MNT/.rekeyfs/status is JSON (python3 -m json.tool)"
run sh -c "cat '$MNT/.rekeyfs/status' | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[\"datadir\"])'"
assert_rc 0 "status parsed"
assert_out_has "^$(realpath "$DATA")\$" "status names the data directory"
run sh -c "echo hi >'$MNT/.rekeyfs/newfile'"
assert_rc_nonzero "creating a file in the virtual .rekeyfs"

checking "names with the reserved temp prefix .rekeyfs-tmp. are refused"
run sh -c "echo x >'$MNT/.rekeyfs-tmp.x'"
assert_rc_nonzero "creating .rekeyfs-tmp.x through the mount"
run mkdir "$MNT/wb/.rekeyfs-tmp.dir"
assert_rc_nonzero "mkdir .rekeyfs-tmp.dir through the mount"
run mv "$MNT/wb/small" "$MNT/wb/.rekeyfs-tmp.y"
assert_rc_nonzero "rename to .rekeyfs-tmp.y through the mount"
[ -e "$DATA/.rekeyfs-tmp.x" ] && fail ".rekeyfs-tmp.x was created in DATADIR"
[ -e "$DATA/wb/.rekeyfs-tmp.dir" ] && fail ".rekeyfs-tmp.dir was created in DATADIR"
[ -e "$MNT/wb/small" ] || fail "small vanished after a refused rename"

make_mtimes "$MNT/mtimes-wb"
check_mtimes "$MNT/mtimes-wb" "writeback cache"

checking "statfs: df works and matches the backing file system"
run df -P "$MNT"
assert_rc 0 "df on the mount"
assert_eq "$(stat -f -c '%b %S' "$MNT")" "$(stat -f -c '%b %S' "$DATA")" "total blocks and block size of the mount vs DATADIR"
umount_fs "$MNT"

# ---- round 2: remount without writeback cache --------------------------------------------------------
# no attribute or name caching either: sizes and modes come from the daemon
mount_fs "$DATA" "$MNT" no_writeback,attr_timeout=0,entry_timeout=0
checking "after a remount the first set reads back unchanged (cold cache)"
MW="$MNT/wb"
PW="$PLAIN/wb"
compare_trees "remount"
assert_same "$MNT/legacy.txt" "$T_TMP/legacy.expected" "plain legacy.txt after remount"
checking "after a remount the close/reopen files hold both writes"
if ! python3 "$OPS" reopen_check "$MNT/reopen" $CS >"$T_OUT" 2>&1; then
	[ -n "${REOPEN_BUG:-}" ] || check_failed "write lost after close() + immediate reopen, seen only after a remount ($(cat "$T_OUT"))"
fi
check_mtimes "$MNT/mtimes-wb" "after a remount"
make_mtimes "$MNT/mtimes-nowb"
check_mtimes "$MNT/mtimes-nowb" "no_writeback, attr_timeout=0"
SET=nowb
posix_ops "no_writeback"
umount_fs "$MNT"

# ---- round 3: remount, every set once more, and offline ----------------------------------------------
mount_fs "$DATA" "$MNT"
for SET in wb nowb; do
	checking "after the last remount set $SET is unchanged"
	MW="$MNT/$SET"
	PW="$PLAIN/$SET"
	compare_trees "remount ($SET)"
done
check_mtimes "$MNT/mtimes-nowb" "after the last remount"
umount_fs "$MNT"
checking "rekeyctl cat of every stored chunk file gives the plaintext"
n=0
while IFS= read -r -d '' f; do
	rel="${f#"$DATA"/}"
	rekeyctl cat -d "$KEYS" "$f" >"$T_TMP/cat.out" 2>"$T_ERR" || fail "rekeyctl cat $rel failed"
	cmp -s "$T_TMP/cat.out" "$PLAIN/$rel" || fail "rekeyctl cat $rel differs from the plain copy"
	n=$((n + 1))
done < <(find "$DATA/wb" "$DATA/nowb" -type f -print0)
ok "$n files"
finish
