#!/usr/bin/env python3
"""powerloss.py - power-loss rounds for rekeyfs (tests/integration/test_power_loss.sh,
scripts/power-loss).

usage: powerloss.py DATA MNT KEYS ROUNDS SEED LOGDIR [FULL_EVERY [MODES]]

Environment: RKPOWER_SHIM (tests/fault/rkpower.so), RKPOWER_RESTORE
(tests/fault/rkpower-restore), RKPOWER_ASAN (the ASan runtime to preload
first, or empty), RKPOWER_UNDO (the undo directory).

DATA is a fresh data directory (16 KiB chunks), KEYS holds its key.  The
daemon always runs under the shim (RKPOWER_ROOT=DATA).  Every round:

  mount (the journal replays what the last daemon left)
  verify the files the last round touched against the shadow (below), and
    that the mount works
  run two workloads at once (kinds below), SIGKILL the daemon after a
    random delay (seeded), fusermount3 -uz (the workers stop at their next
    call; a file a worker created in the bare directory under the mount
    after the lazy unmount is not counted and is removed before the next
    mount)
  rkpower-restore in the round's mode (MODES, comma-separated, taken in
    turn; default lost,prefix): lost = every write not fsynced is lost;
    prefix = of each file's unsynced writes a random prefix survives;
    pages = any subset survives, page by page (seeded with SEED and round)
  every FULL_EVERY rounds (and at the end): a clean mount, verify, a clean
    unmount and `rekeyctl fsck --deep` of DATA (must be clean); the clean mount
    verifies every file

Kinds: append (small appends + fdatasync to a new file: an SQLite rollback
journal, a new relation), wal (8 KiB overwrites + fdatasync in a
preallocated 16 MiB file: PostgreSQL WAL), small (create, write, fsync,
close many small files), trunc (truncate down and up, write, fsync), pair
(two writers fsyncing two files concurrently), sparse (writes across chunk
boundaries and far past EOF + fsync).

The shadow: per file, its content when its last fsync/fdatasync returned 0
(acked) and every change made since (ops, in order; the change in flight when
the daemon died counts too).  The rule checked after a power loss (rekeyfs(5)
durability: "every byte acknowledged by fsync reads back unchanged"): let the
versions be acked and the content after each op.  The file's size lies
between the smallest and the largest size of a version; each byte equals that
byte of a version that has it, or is zero where some version is shorter (a
size change reached the disk without the page).  In particular every
acknowledged byte that no later op touched reads back exactly, and a read
never fails.  A file whose create or unlink was interrupted may exist or not.

POWER_KINDS=k1,k2 limits the kinds (default: all).

A file of the encrypted table that lost its header (both copies) but not its
name - created, killed before its first fsync - is a plain file afterwards
(rekeyfs(5): a file without the magic is plain), and writes to it are stored
unencrypted.  Each full check lists such files (a NOTE line, "plain files: N"
in the summary); POWER_PLAIN=loss makes them a loss.
Prints one line per round and a summary "rounds: N, kills: K, losses: L";
exit 1 on any loss.
"""
import errno
import importlib.machinery
import importlib.util
import os
import random
import signal
import subprocess
import sys
import threading
import time

DATA, MNT, KEYS = sys.argv[1], sys.argv[2], sys.argv[3]
ROUNDS, SEED, LOGDIR = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
FULL_EVERY = int(sys.argv[7]) if len(sys.argv) > 7 else 5
MODES = (sys.argv[8] if len(sys.argv) > 8 else "lost,prefix").split(",")
MODE_ARGS = {"lost": [], "prefix": ["--keep-prefix"], "pages": ["--keep-random"]}
SHIM = os.environ["RKPOWER_SHIM"]
RESTORE = os.environ["RKPOWER_RESTORE"]
ASAN = os.environ.get("RKPOWER_ASAN", "")
UNDO = os.environ["RKPOWER_UNDO"]
RESTORE_MOD = importlib.util.module_from_spec(
    importlib.util.spec_from_loader("rkpower_restore", importlib.machinery.SourceFileLoader("rkpower_restore", RESTORE)))
RESTORE_MOD.__spec__.loader.exec_module(RESTORE_MOD)
CS = 16384
WAL_SIZE = 16 << 20
PAGE = 4096
R = random.Random(SEED)


class Loss(Exception):
    pass


def log(*a):
    print(*a, flush=True)


def fuse_mounts():
    n = 0
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fs = line.split()
            if fs[4] == MNT and fs[fs.index("-") + 1].startswith("fuse"):
                n += 1
    return n


class Daemon:
    seq = 0

    def __init__(self):
        Daemon.seq += 1
        self.log = os.path.join(LOGDIR, "power-daemon.%d.log" % (Daemon.seq % 3))
        env = dict(os.environ)
        env["LD_PRELOAD"] = (ASAN + " " + SHIM).strip()
        env["RKPOWER_DIR"] = UNDO
        env["RKPOWER_ROOT"] = DATA
        before = fuse_mounts()
        if not before:   # what a worker created in the bare directory after the lazy unmount
            for n in os.listdir(MNT):
                subprocess.run(["rm", "-rf", os.path.join(MNT, n)])
        with open(self.log, "w") as lf:
            self.p = subprocess.Popen(["rekeyfs", "-f", "-o", "keydir=%s,lazy=off,walker=off" % KEYS, DATA, MNT],
                                      stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, env=env)
        deadline = time.time() + 60
        while fuse_mounts() <= before:
            if self.p.poll() is not None:
                subprocess.run(["fusermount3", "-u", "-z", MNT], stderr=subprocess.DEVNULL)
                raise Loss("rekeyfs exited with %s before mounting: %s" % (self.p.returncode, self.tail()))
            if time.time() > deadline:
                self.p.kill()
                self.p.wait()
                raise Loss("mount timeout: %s" % self.tail())
            time.sleep(0.005)
        global MNT_DEV
        MNT_DEV = os.stat(MNT).st_dev
        STOP.clear()

    def tail(self):
        try:
            with open(self.log) as f:
                return " | ".join(f.read().splitlines()[-8:])
        except OSError:
            return ""

    def kill9(self):
        STOP.set()   # the workers stop at their next call
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        rc = self.p.wait(timeout=60)
        subprocess.run(["fusermount3", "-u", "-z", MNT], stderr=subprocess.DEVNULL)
        if fuse_mounts():
            raise Loss("the mount of the killed daemon cannot be removed")
        return rc

    def umount_clean(self):
        deadline = time.time() + 30
        while subprocess.run(["fusermount3", "-u", MNT], stderr=subprocess.DEVNULL).returncode != 0:
            if time.time() > deadline:
                raise Loss("cannot unmount %s" % MNT)
            time.sleep(0.05)
        rc = self.p.wait(timeout=60)
        if rc != 0:
            raise Loss("the daemon ended with status %d: %s" % (rc, self.tail()))


# ---- the shadow ----------------------------------------------------------------------------
class Shadow:
    """one file: acked content and the ops since (("w", off, bytes) or ("t", size))"""

    def __init__(self, maybe_absent=False):
        self.acked = bytearray()
        self.ops = []
        self.maybe_absent = maybe_absent   # its create may not have happened
        self.maybe_gone = False            # its unlink may have happened
        self.gone = False
        self.dirty = True                  # touched since its last check

    def op(self, o):
        self.dirty = True
        self.ops.append(o)

    def current(self):
        c = bytearray(self.acked)
        for o in self.ops:
            apply(c, o)
        return c

    def ack(self):
        self.acked = self.current()
        self.dirty = True
        self.ops = []
        self.maybe_absent = False


def apply(c, o):
    if o[0] == "w":
        _, off, data = o
        if len(c) < off:
            c.extend(bytes(off - len(c)))
        c[off:off + len(data)] = data
    else:
        size = o[1]
        if len(c) < size:
            c.extend(bytes(size - len(c)))
        del c[size:]


FILES = {}          # rel -> Shadow
FLOCK = threading.Lock()


def check_file(rel, sh, got):
    """the rule of the module doc; returns None or a description of the loss"""
    sizes = [len(sh.acked)]
    c = bytearray(sh.acked)
    for o in sh.ops:
        apply(c, o)
        sizes.append(len(c))
    if not (min(sizes) <= len(got) <= max(sizes)):
        return "size %d not in [%d, %d] (acked %d, %d unacked ops)" % (len(got), min(sizes), max(sizes),
                                                                        len(sh.acked), len(sh.ops))
    minsize = min(sizes)
    bad_pages = []
    for p in range(0, (len(got) + PAGE - 1) // PAGE):
        a, b = p * PAGE, min((p + 1) * PAGE, len(got))
        if b <= len(sh.acked) and got[a:b] == sh.acked[a:b]:
            continue
        bad_pages.append(p)
    if not bad_pages:
        return None
    # replay the versions of the pages that differ from acked
    vers = {p: [] for p in bad_pages}
    c = bytearray(sh.acked)

    def snap():
        for p in bad_pages:
            a = p * PAGE
            vers[p].append(bytes(c[a:a + PAGE]))
    snap()
    for o in sh.ops:
        apply(c, o)
        snap()
    for p in bad_pages:
        a, b = p * PAGE, min((p + 1) * PAGE, len(got))
        for i in range(a, b):
            g = got[i]
            if g == 0 and i >= minsize:
                continue
            if any(len(v) > i - a and v[i - a] == g for v in vers[p]):
                continue
            acked = sh.acked[i] if i < len(sh.acked) else None
            return ("byte %d reads %d: no version has it (acked: %s; %d unacked ops since the last fsync: %s)" %
                    (i, g, acked, len(sh.ops), describe(sh.ops)))
    return None


def describe(ops):
    out = []
    for o in ops[-6:]:
        out.append("write %d+%d" % (o[1], len(o[2])) if o[0] == "w" else "truncate %d" % o[1])
    return ", ".join(out)


def verify(tag, full=False):
    """check the files touched since their last check (full: every file)"""
    losses = []
    with FLOCK:
        items = list(FILES.items())
    for rel, sh in items:
        if not (full or sh.dirty or sh.maybe_gone):
            continue
        p = os.path.join(MNT, rel)
        try:
            with open(p, "rb") as f:
                got = f.read()
        except FileNotFoundError:
            if sh.gone or sh.maybe_gone or sh.maybe_absent:
                sh.gone = True
                continue
            losses.append("%s: missing" % rel)
            continue
        except OSError as e:
            losses.append("%s: read error %s" % (rel, errno.errorcode.get(e.errno, e.errno)))
            continue
        if sh.gone:
            losses.append("%s: unlinked, but it is back" % rel)
            continue
        why = check_file(rel, sh, got)
        if why:
            losses.append("%s: %s" % (rel, why))
            continue
        # what survived is now the file's content: the new baseline
        sh.acked = bytearray(got)
        sh.ops = []
        sh.maybe_absent = sh.maybe_gone = sh.dirty = False
    with FLOCK:
        for rel in [r for r, s in FILES.items() if s.gone]:
            del FILES[rel]
    # the mount works: write, fsync, read back
    p = os.path.join(MNT, "probe")
    data = random.Random("%s:%s" % (SEED, tag)).randbytes(5000)
    try:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        os.close(fd)
        with open(p, "rb") as f:
            if f.read() != data:
                losses.append("probe: a write after the remount reads back wrong")
        os.unlink(p)
    except OSError as e:
        losses.append("probe: the mount does not work after the remount: %s" % e)
    return losses


# ---- workloads -----------------------------------------------------------------------------------
class Gone(Exception):
    pass


STOP = threading.Event()   # the daemon is being killed
MNT_DEV = None             # st_dev of the FUSE mount


def guard(fn, *a):
    if STOP.is_set():
        raise Gone("stopped")
    try:
        return fn(*a)
    except OSError as e:
        raise Gone(e)


def shadow(rel, maybe_absent=False):
    with FLOCK:
        sh = FILES.get(rel)
        if sh is None:
            sh = FILES[rel] = Shadow(maybe_absent)
        return sh


def create(rel):
    sh = shadow(rel, maybe_absent=True)
    guard(os.makedirs, os.path.dirname(os.path.join(MNT, rel)), 0o755, True)
    fd = guard(os.open, os.path.join(MNT, rel), os.O_RDWR | os.O_CREAT, 0o644)
    if os.fstat(fd).st_dev != MNT_DEV:
        # the lazy unmount came first: this is the bare directory under the mount
        os.close(fd)
        raise Gone("the mount is gone")
    sh.maybe_absent = False
    return fd, sh


def wr(fd, sh, off, data):
    sh.op(("w", off, bytes(data)))
    n = guard(os.pwrite, fd, data, off)
    if n != len(data):
        raise Gone("short write")


def trunc(fd, sh, size):
    sh.op(("t", size))
    guard(os.ftruncate, fd, size)


def sync(fd, sh, data_only):
    guard(os.fdatasync if data_only else os.fsync, fd)
    sh.ack()


def w_append(r, rnd, stats):
    # the previous round's journal is deleted, a new one appended to
    old = "a/journal-%d" % (rnd - 1)
    if old in FILES:
        FILES[old].maybe_gone = True
        guard(os.unlink, os.path.join(MNT, old))
        FILES[old].gone = True
    fd, sh = create("a/journal-%d" % rnd)
    off = 0
    while True:
        data = r.randbytes(r.randrange(10, 700))
        wr(fd, sh, off, data)
        off += len(data)
        sync(fd, sh, True)
        stats["acks"] += 1


def w_wal(r, rnd, stats):
    fd, sh = create("wal")
    pos = r.randrange(WAL_SIZE // 8192) * 8192
    while True:
        wr(fd, sh, pos, r.randbytes(8192))
        sync(fd, sh, True)
        stats["acks"] += 1
        pos = (pos + 8192) % WAL_SIZE if r.random() < 0.8 else r.randrange(WAL_SIZE // 8192) * 8192


def w_small(r, rnd, stats):
    i = 0
    while True:
        fd, sh = create("small/f-%d-%d" % (rnd, i))
        wr(fd, sh, 0, r.randbytes(r.randrange(1, 6000)))
        sync(fd, sh, False)
        guard(os.close, fd)
        stats["acks"] += 1
        i += 1


def w_trunc(r, rnd, stats):
    fd, sh = create("trunc")
    while True:
        size = len(sh.current())
        trunc(fd, sh, r.randrange(0, size + 1) if size else 0)
        trunc(fd, sh, r.randrange(0, 3 * CS))
        if r.random() < 0.7:
            wr(fd, sh, r.randrange(0, 3 * CS), r.randbytes(r.randrange(1, CS)))
        sync(fd, sh, r.random() < 0.5)
        stats["acks"] += 1


def w_pair(r, rnd, stats):
    rs = [random.Random(r.random()) for _ in range(2)]
    errs = []

    def one(k):
        try:
            fd, sh = create("pair/e%d" % k)
            while True:
                wr(fd, sh, rs[k].randrange(0, 1 << 20), rs[k].randbytes(rs[k].randrange(1, 3 * PAGE)))
                sync(fd, sh, k == 0)
                stats["acks"] += 1
        except Gone as e:
            errs.append(e)
    t = threading.Thread(target=one, args=(1,), daemon=True)
    t.start()
    one(0)
    t.join()
    raise errs[0]


def w_sparse(r, rnd, stats):
    fd, sh = create("sparse")
    while True:
        size = len(sh.current())
        if r.random() < 0.3:
            off = size + r.randrange(CS, 64 * CS)   # far past EOF
            if off > 32 << 20:
                trunc(fd, sh, r.randrange(0, 4 * CS))
                off = r.randrange(0, 4 * CS)
        else:
            k = r.randrange(1, max(2, size // CS + 2))
            off = max(0, k * CS - r.randrange(1, 2000))   # across a chunk boundary
        wr(fd, sh, off, r.randbytes(r.randrange(100, CS + 3000)))
        sync(fd, sh, r.random() < 0.5)
        stats["acks"] += 1


KINDS = {"append": w_append, "wal": w_wal, "small": w_small, "trunc": w_trunc, "pair": w_pair,
         "sparse": w_sparse}


# POWER_KINDS=k1,k2,...: only these kinds (default: all)
KIND_LIST = sorted(os.environ.get("POWER_KINDS", "").split(",") if os.environ.get("POWER_KINDS") else KINDS)


def setup():
    """the preallocated WAL file, fsynced"""
    fd, sh = create("wal")
    r = random.Random("%d:wal" % SEED)
    for off in range(0, WAL_SIZE, 1 << 20):
        wr(fd, sh, off, r.randbytes(1 << 20))
    sync(fd, sh, False)
    os.close(fd)


def stuck():
    """where this process's threads wait (kernel stacks), and who holds /dev/fuse"""
    out = []
    for tid in sorted(os.listdir("/proc/self/task")):
        try:
            with open("/proc/self/task/%s/wchan" % tid) as f:
                w = f.read()
            with open("/proc/self/task/%s/syscall" % tid) as f:
                sc = f.read().split()[0]
            with open("/proc/self/task/%s/stack" % tid) as f:
                st = " < ".join(x.split()[-1] for x in f.read().splitlines()[:6])
        except OSError:
            continue
        out.append("thread %s: syscall %s, wchan %s, stack %s" % (tid, sc, w, st))
    holders = subprocess.run(["sh", "-c", "ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c /dev/fuse"],
                             capture_output=True, text=True).stdout.strip()
    return "; ".join(out) + "; fds open on /dev/fuse: " + holders


def restore(rnd):
    if os.environ.get("RKPOWER_KEEP"):   # debugging: the state before the restore
        keep = os.path.join(LOGDIR, "before-restore")
        subprocess.run(["rm", "-rf", keep])
        os.makedirs(keep)
        subprocess.run(["cp", "-a", DATA, UNDO, keep])
    mode = MODES[(rnd - 1) % len(MODES)]
    cmd = [RESTORE] + MODE_ARGS[mode]
    if MODE_ARGS[mode]:
        cmd.append(str(SEED * 1000 + rnd))
    try:   # in this process (no interpreter start per round)
        line = RESTORE_MOD.main(cmd[1:] + [UNDO, DATA])
    except SystemExit as e:
        raise Loss("rkpower-restore %s failed: %s" % (" ".join(cmd[1:]), e))
    return line.replace("rkpower-restore: ", "")


MAGIC = b"\x89RKFS\r\n\x1a"
PLAIN = set()       # files of the (encrypted) table that became plain files


def fsck():
    """rekeyctl fsck --deep must be clean; returns the files it counts as plain"""
    fs = subprocess.run(["rekeyctl", "fsck", "--deep", "-d", KEYS, DATA], capture_output=True, text=True)
    if fs.returncode != 0:
        raise Loss("rekeyctl fsck --deep: status %d: %s %s" % (fs.returncode, fs.stdout[-800:], fs.stderr[-800:]))
    lines = fs.stdout.splitlines()
    nplain = 0
    if "total" in lines:
        tot = lines[lines.index("total") + 1]
        if " plain" in tot:
            nplain = int(tot.split(" plain")[0].split()[-1])
    # which ones: no magic in either header copy (rk_cf_probe, roughly)
    names = []
    for dp, dns, fns in os.walk(DATA):
        dns[:] = [x for x in dns if x != ".rekeyfs"]
        for n in fns:
            with open(os.path.join(dp, n), "rb") as f:
                a = f.read(8)
                f.seek(4096)
                b = f.read(8)
            if a != MAGIC and b != MAGIC:
                names.append(os.path.relpath(os.path.join(dp, n), DATA))
    if nplain or names:
        PLAIN.update(names)
        msg = ("%d files of the encrypted table are plain files now (fsck: %d plain): %s" %
               (len(names), nplain, ", ".join(sorted(names)[:8])))
        if os.environ.get("POWER_PLAIN") == "loss":
            raise Loss(msg)
        log("NOTE: " + msg)


def main():
    t0 = time.time()
    stats = {"kills": 0, "acks": 0, "losses": 0, "fsck": 0, "undone": 0}
    os.makedirs(UNDO, exist_ok=True)
    d = Daemon()
    setup()
    d.umount_clean()
    losses = []
    for rnd in range(1, ROUNDS + 1):
        t1 = time.time()
        d = Daemon()
        t2 = time.time()
        losses = verify(rnd)
        t3 = time.time()
        if losses:
            break
        kinds = R.sample(KIND_LIST, min(2, len(KIND_LIST)))
        delay = R.uniform(0.02, 0.6)
        acks0 = stats["acks"]
        errs = []

        def run(kind, seed):
            try:
                KINDS[kind](random.Random(seed), rnd, stats)
            except (Gone, OSError) as e:   # the daemon was killed
                errs.append((kind, Gone(e)))
            except Exception as e:   # a bug of the driver
                errs.append((kind, e))
                raise
        ts = [threading.Thread(target=run, args=(k, R.random()), daemon=True) for k in kinds]
        for t in ts:
            t.start()
        time.sleep(delay)
        d.kill9()
        for t in ts:
            t.join(60)
            if t.is_alive():
                raise Loss("a worker hangs after the kill: %s" % stuck())
        stats["kills"] += 1
        bad = [(k, e) for k, e in errs if not isinstance(e, Gone)]
        if bad:
            raise Loss("driver error in %s: %r" % bad[0])
        t4 = time.time()
        how = restore(rnd)
        stats["undone"] += int(how.split(" records undone")[0].split()[-1])
        t5 = time.time()
        extra = ""
        if rnd % FULL_EVERY == 0 or rnd == ROUNDS:
            d = Daemon()
            losses = verify("full%d" % rnd, True)
            if losses:
                break
            d.umount_clean()
            fsck()
            stats["fsck"] += 1
            extra = "; verify + fsck --deep clean"
        log("round %d: %s, kill -9 after %d ms, %d fsyncs acknowledged; %s%s [mount %.2f s, verify %.2f s, "
            "work+kill %.2f s, restore %.2f s, full %.2f s]" %
            (rnd, "+".join(kinds), delay * 1000, stats["acks"] - acks0, how, extra, t2 - t1, t3 - t2, t4 - t3,
             t5 - t4, time.time() - t5))
    for l in losses:
        log("LOSS: " + l)
    if losses:
        d.kill9()
    stats["losses"] = len(losses)
    log("rounds: %d, kills: %d, fsyncs acknowledged: %d, writes undone: %d, fsck --deep: %d, plain files: %d, "
        "losses: %d; %.0f s" % (ROUNDS, stats["kills"], stats["acks"], stats["undone"], stats["fsck"], len(PLAIN),
                                stats["losses"], time.time() - t0))
    return 1 if losses else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Loss as e:
        log("LOSS: %s" % e)
        log("rounds: %d, losses: 1 (seed %d)" % (ROUNDS, SEED))
        sys.exit(1)
