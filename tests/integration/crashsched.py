#!/usr/bin/env python3
"""crashsched.py - a fast kill -9 schedule for rekeyfs (issue 13, item 3).

usage: crashsched.py DATA MNT KEYS ROUNDS SEED [FULL_EVERY] [LOGDIR]

DATA is a fresh data directory (rekeyctl init --key key1, 4 KiB chunks), KEYS
holds key1 and key2.  Every round is one daemon lifetime:

  mount (REKEYFS_CRASHPOINT=name:N set for this daemon, or none)
  verify what the previous round touched (every FULL_EVERY rounds: every file
    and every directory listing, and - after a clean unmount - an offline
    rekeyctl fsck --deep)
  the round's work, until the daemon dies at its crash point or is sent
    kill -9 after a random delay (or, when neither happened while the work
    ran, kill -9 after the work: counted as a kill point, not as one that
    landed during the work)
  unmount the dead mount

Kinds of work: write (overwrites), append, truncate, rename (to a fresh name
or over another file), create, lazy (every table altered to the other key,
lazy=on, reads of every chunk in random order: lazy rewrites through the
journal), wholefile (alter + a sweep that rekeys closed files whole),
sweep (alter + an in-place sweep, whole_file=off), mixed (writers while a
sweep runs).

The shadow: what every file held when its last fsync returned.  A step (1..3
changes to one file, then fsync) that the kill interrupted may show any of
its intermediate versions, byte by byte (a byte of the file equals that byte
of one of the versions, the size is between the smallest and the largest);
a rename either happened or not.  Anything else - a byte no version had, an
acknowledged byte lost, a read error, a file missing or extra - is a loss.

Prints one line per round and at the end:
  kill points: N, during work: D, crash points reached: C, losses: L
Exit 1 when L > 0 or a check could not run.
"""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

DATA, MNT, KEYS = sys.argv[1], sys.argv[2], sys.argv[3]
ROUNDS, SEED = int(sys.argv[4]), int(sys.argv[5])
FULL_EVERY = int(sys.argv[6]) if len(sys.argv) > 6 else 25
LOGDIR = sys.argv[7] if len(sys.argv) > 7 else os.path.dirname(os.path.abspath(DATA))
TABLES = ["", "t1", "t2"]
CS = 4096
R = random.Random(SEED)
GONE = (errno.ENOTCONN, errno.ECONNABORTED)


class DaemonGone(Exception):
    def __init__(self, msg, rc):
        Exception.__init__(self, msg)
        self.rc = rc


class Loss(Exception):
    pass


def log(*a):
    print(*a, flush=True)


# ---- mounting ---------------------------------------------------------------------------------------
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

    def __init__(self, opts, crashpoint=None):
        Daemon.seq += 1
        self.log = os.path.join(LOGDIR, "sched-daemon.%d.log" % (Daemon.seq % 4))
        env = dict(os.environ)
        env.pop("REKEYFS_CRASHPOINT", None)
        if crashpoint:
            env["REKEYFS_CRASHPOINT"] = crashpoint
        before = fuse_mounts()
        with open(self.log, "w") as lf:
            self.p = subprocess.Popen(["rekeyfs", "-f", "-o", "keydir=%s,%s" % (KEYS, opts), DATA, MNT],
                                      stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, env=env)
        deadline = time.time() + 30
        while fuse_mounts() <= before:
            if self.p.poll() is not None:
                if fuse_mounts() > before:   # it died right after mounting
                    subprocess.run(["fusermount3", "-u", "-z", MNT], stderr=subprocess.DEVNULL)
                raise DaemonGone("rekeyfs exited with %s before mounting: %s" % (self.p.returncode, self.tail()),
                                 self.p.returncode)
            if time.time() > deadline:
                self.p.kill()
                self.p.wait()
                raise Loss("mount timeout: %s" % self.tail())
            time.sleep(0.005)

    def tail(self):
        try:
            with open(self.log) as f:
                return " | ".join(f.read().splitlines()[-6:])
        except OSError:
            return ""

    def alive(self):
        return self.p.poll() is None

    def dying(self, secs=3):
        """True when the daemon is dead or dies within secs (an I/O error came from its death)"""
        t_end = time.time() + secs
        while self.alive() and time.time() < t_end:
            time.sleep(0.01)
        return not self.alive()

    def kill9(self):
        if self.alive():
            self.p.send_signal(signal.SIGKILL)

    def reap_dead(self):
        """the daemon is dead (or is being killed): remove its mount"""
        rc = self.p.wait(timeout=30)
        if subprocess.run(["fusermount3", "-u", MNT], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", MNT], stderr=subprocess.DEVNULL)
        if fuse_mounts():
            raise Loss("the mount of the killed daemon cannot be removed")
        return rc

    def umount_clean(self):
        deadline = time.time() + 20
        while subprocess.run(["fusermount3", "-u", MNT], stderr=subprocess.DEVNULL).returncode != 0:
            if time.time() > deadline:
                raise Loss("cannot unmount %s" % MNT)
            time.sleep(0.05)
        rc = self.p.wait(timeout=30)
        if rc != 0:
            raise Loss("the daemon ended with status %d: %s" % (rc, self.tail()))


def ctl(cmd):
    fd = os.open(os.path.join(MNT, ".rekeyfs/control"), os.O_RDWR)
    try:
        os.write(fd, (cmd + "\n").encode())
        out = b""
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            out += b
    finally:
        os.close(fd)
    out = out.decode(errors="replace")
    if not out:
        raise OSError(errno.ENOTCONN, "no reply from the control file")
    if not out.startswith("ok"):
        raise Loss("control %r: %s" % (cmd, out.strip()))
    return out


def walker_state():
    try:
        with open(os.path.join(MNT, ".rekeyfs/status")) as f:
            w = json.load(f)["walker"]
    except OSError as e:
        if e.errno in GONE:
            return "gone", []
        raise
    except ValueError:
        return "gone", []
    return w["state"], w.get("queued", [])


# ---- the shadow -------------------------------------------------------------------------------------
ACKED = {}      # rel -> bytes: content as of the last fsync (or rename) that returned
INFLIGHT = []   # a step the kill may have interrupted: ("data", rel, [versions]) or ("rename", src, dst, before)
TOUCHED = set()
FRESH = [0]


def table_of(rel):
    return rel.split("/")[0] if "/" in rel else ""


def gen(n, text):
    if text:
        s = ("%08x alpha bravo charlie delta %d\n" % (R.randrange(1 << 32), n)) * (n // 30 + 1)
        return s.encode()[:n]
    return R.randbytes(n)


def step_data(rel, changes):
    """changes: list of functions bytes -> bytes, applied through the mount, then fsync"""
    versions = [ACKED[rel]]
    for ch in changes:
        versions.append(ch(versions[-1]))
    INFLIGHT[:] = [("data", rel, versions)]
    TOUCHED.add(rel)
    fd = os.open(os.path.join(MNT, rel), os.O_WRONLY)
    try:
        for i, ch in enumerate(changes):
            old, new = versions[i], versions[i + 1]
            if ch is trunc:
                os.ftruncate(fd, len(new))
            else:
                # write the bytes that differ (one range)
                lo = next((j for j in range(min(len(old), len(new))) if old[j] != new[j]), min(len(old), len(new)))
                hi = len(new)
                while hi > lo and hi <= len(old) and old[hi - 1] == new[hi - 1]:
                    hi -= 1
                if hi > lo:
                    if os.pwrite(fd, new[lo:hi], lo) != hi - lo:
                        raise OSError(errno.EIO, "short write on %s" % rel)
        os.fsync(fd)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    ACKED[rel] = versions[-1]
    INFLIGHT[:] = []


def overwrite(data):
    if not data:
        return gen(R.randint(1, 3 * CS), R.random() < 0.5)
    off = R.randrange(len(data))
    n = R.choice([1, 100, CS - 1, CS, CS + 1, 2 * CS + 17])
    return data[:off] + gen(n, R.random() < 0.5) + data[off + n:]


def append(data):
    return data + gen(R.choice([1, 7, 100, 1000, CS, 5000, 2 * CS]), R.random() < 0.5)


def trunc(data):
    if R.random() < 0.6 or not data:
        n = R.randrange(len(data) + 1) if data else 0
        return data[:n]
    return data + b"\0" * R.choice([1, CS, 3 * CS + 5])


def do_rename():
    src = R.choice(sorted(ACKED))
    t = table_of(src)
    others = [r for r in ACKED if table_of(r) == t and r != src]
    if others and len(ACKED) > 9 and R.random() < 0.4:
        dst = R.choice(others)
    else:
        FRESH[0] += 1
        dst = (t + "/" if t else "") + "n%d.dat" % FRESH[0]
    before = {src: ACKED[src], dst: ACKED.get(dst)}
    INFLIGHT[:] = [("rename", src, dst, before)]
    TOUCHED.update([src, dst])
    os.rename(os.path.join(MNT, src), os.path.join(MNT, dst))
    ACKED[dst] = ACKED.pop(src)
    INFLIGHT[:] = []
    dfd = os.open(os.path.join(MNT, t), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    except OSError as e:
        if e.errno in GONE:
            raise
    finally:
        os.close(dfd)


def do_create():
    t = R.choice(TABLES)
    FRESH[0] += 1
    rel = (t + "/" if t else "") + "c%d.dat" % FRESH[0]
    data = gen(R.randint(0, 5 * CS), R.random() < 0.5)
    INFLIGHT[:] = [("data", rel, [None, b"", data])]
    TOUCHED.add(rel)
    fd = os.open(os.path.join(MNT, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    ACKED[rel] = data
    INFLIGHT[:] = []


def mutate_step(kind):
    if kind == "mixed":
        kind = R.choice(["write", "append", "truncate", "rename", "create"])
    if kind == "rename":
        do_rename()
    elif kind == "create":
        if len(ACKED) > 24:
            do_rename()
        else:
            do_create()
    else:
        rel = R.choice(sorted(ACKED))
        f = {"write": overwrite, "append": append, "truncate": trunc}[kind]
        step_data(rel, [f for _ in range(R.randint(1, 3))])


# ---- verification -----------------------------------------------------------------------------------
def read_file(rel):
    with open(os.path.join(MNT, rel), "rb") as f:
        fd = f.fileno()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return f.read()


def listing(t):
    return sorted(n for n in os.listdir(os.path.join(MNT, t)) if n not in ("t1", "t2", ".rekeyfs") and
                  not n.startswith(".rekeyfs-tmp"))


def fits(got, versions):
    """got is one of the versions, byte by byte (None: the file does not exist)"""
    real = [v for v in versions if v is not None]
    if got is None:
        return None in versions
    if not real:
        return False
    if any(got == v for v in real):
        return True
    if not (min(map(len, real)) <= len(got) <= max(map(len, real))):
        return False
    for i in range(len(got)):
        b = got[i]
        if not any((v[i] if i < len(v) else 0) == b for v in real):
            return False
    return True


def verify(full):
    """check the mount against the shadow; resolves the in-flight step; raises Loss"""
    if INFLIGHT:
        st = INFLIGHT[0]
        if st[0] == "data":
            rel, versions = st[1], st[2]
            try:
                got = read_file(rel)
            except FileNotFoundError:
                got = None
            if not fits(got, versions):
                raise Loss("%s: interrupted step: the file is none of its versions (%s bytes; versions %s)" %
                           (rel, None if got is None else len(got), [None if v is None else len(v) for v in versions]))
            if got is None:
                ACKED.pop(rel, None)
            else:
                ACKED[rel] = got
        else:
            _, src, dst, before = st
            try:
                os.stat(os.path.join(MNT, src))
                s_ok = True
            except FileNotFoundError:
                s_ok = False
            if s_ok:   # not renamed: both as before
                ACKED[src] = before[src]
                if before[dst] is None:
                    ACKED.pop(dst, None)
                else:
                    ACKED[dst] = before[dst]
            else:
                ACKED[dst] = before[src]
                ACKED.pop(src, None)
        INFLIGHT[:] = []
    rels = sorted(ACKED) if full else sorted(r for r in TOUCHED if r in ACKED)
    for rel in rels:
        try:
            got = read_file(rel)
        except OSError as e:
            if e.errno in GONE:
                raise
            raise Loss("%s: cannot read: %s" % (rel, e))
        if got != ACKED[rel]:
            want = ACKED[rel]
            i = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
            raise Loss("%s: differs from what was acknowledged at offset %d (%d vs %d bytes)" % (rel, i, len(got), len(want)))
    tabs = TABLES if full else sorted({table_of(r) for r in TOUCHED})
    for t in tabs:
        want = sorted(r.split("/")[-1] for r in ACKED if table_of(r) == t)
        have = listing(t)
        if have != want:
            raise Loss("table /%s: files %s, acknowledged %s" % (t, have, want))
    TOUCHED.clear()


# ---- the schedule -----------------------------------------------------------------------------------
POINTS = {
    "write": ["journal.appended", "journal.applied", "journal.before-commit", "journal.before-truncate",
              "slot.payload-written", "*"],
    "sweep": ["sweep.chunk-rekeyed", "journal.appended", "journal.applied", "journal.before-commit",
              "walker.file-done", "*"],
    "wholefile": ["replace.chunk-copied", "replace.synced", "replace.before-rename", "replace.after-rename",
                  "walker.file-done", "*"],
    "lazy": ["journal.appended", "journal.applied", "journal.before-commit", "*"],
}
KINDS = ["write", "append", "truncate", "rename", "create", "lazy", "wholefile", "sweep", "mixed"]


def plan(i):
    kind = KINDS[i % len(KINDS)] if i < len(KINDS) else R.choice(KINDS)
    pts = POINTS.get(kind, POINTS["write"])
    if kind in ("rename", "create"):
        pts = ["journal.*", "*"]
    if kind == "mixed":
        pts = POINTS["sweep"] + POINTS["wholefile"]
    if R.random() < 0.6:
        name = R.choice(pts)
        hi = {"journal.before-truncate": 3, "replace.synced": 4, "replace.before-rename": 4,
              "replace.after-rename": 4, "walker.file-done": 6, "journal.before-commit": 6}.get(name, 40)
        return kind, "%s:%d" % (name, R.randint(1, hi)), 0
    return kind, None, R.randint(2, 250) / 1000.0


def main():
    stats = {"kills": 0, "during": 0, "crashpoints": 0, "not_reached": 0, "losses": 0, "deep": 0, "mounts": 0}
    key = ["key1"]
    # ---- initial data ----
    d = Daemon("lazy=off,walker=off")
    for t in ("t1", "t2"):
        os.mkdir(os.path.join(MNT, t))
    for t in TABLES:
        ctl("alter /%s key1" % t)
    for t in TABLES:
        for j in range(3):
            rel = (t + "/" if t else "") + "f%d.dat" % j
            data = gen(R.randint(2 * CS, 10 * CS), j % 2 == 1)
            with open(os.path.join(MNT, rel), "wb") as f:
                f.write(data)
                os.fsync(f.fileno())
            ACKED[rel] = data
    verify(True)
    d.umount_clean()
    t0 = time.time()
    for i in range(ROUNDS):
        kind, point, delay = plan(i)
        full = (i + 1) % FULL_EVERY == 0 or i == ROUNDS - 1
        wf = "on" if kind in ("wholefile", "mixed") else "off"
        lazy = "on" if kind == "lazy" else "off"
        opts = "lazy=%s,whole_file=%s,walker_rate=%d" % (lazy, wf, R.choice([0, 300000, 1500000]))
        how = point or "kill -9 after %d ms" % (delay * 1000)
        stats["mounts"] += 1
        during = False
        died = None
        try:
            d = Daemon(opts, point)
        except DaemonGone as e:
            # the crash point came in the daemon's start (the journal replay); no mount to remove
            if e.rc != -signal.SIGKILL:
                log("round %d: %s" % (i + 1, e))
                stats["losses"] += 1
                break
            stats["kills"] += 1
            stats["crashpoints"] += 1
            stats["during"] += 1
            log("round %d (%s, %s): killed during the mount (journal replay)" % (i + 1, kind, how))
            continue
        stop_ev = None
        th_ref = [None]
        try:
            verify(False)
            other = "key2" if key[0] == "key1" else "key1"
            # ---- the work ----
            stop = stop_ev = threading.Event()
            busy = [False]
            err = []

            def worker():
                try:
                    n = 0
                    while not stop.is_set() and n < (150 if kind in ("rename", "create") else 40):
                        busy[0] = True
                        if kind == "lazy":
                            rels = sorted(ACKED)
                            work = [(r, o) for r in rels for o in range(0, len(ACKED[r]), CS)]
                            R.shuffle(work)
                            fds = {r: os.open(os.path.join(MNT, r), os.O_RDONLY) for r in rels}
                            try:
                                for r in rels:
                                    os.posix_fadvise(fds[r], 0, 0, os.POSIX_FADV_RANDOM)
                                    os.posix_fadvise(fds[r], 0, 0, os.POSIX_FADV_DONTNEED)
                                for r, o in work:
                                    if stop.is_set():
                                        break
                                    got = os.pread(fds[r], CS, o)
                                    want = ACKED[r][o:o + CS]
                                    if got != want:
                                        if len(got) < len(want) and want.startswith(got):
                                            raise OSError(errno.EIO, "short read of %s at %d" % (r, o))
                                        raise Loss("lazy read of %s at %d differs from the shadow" % (r, o))
                            finally:
                                for fd in fds.values():
                                    try:
                                        os.close(fd)
                                    except OSError:
                                        pass
                            n = 40
                        else:
                            mutate_step(kind)
                            n += 1
                        busy[0] = False
                except OSError as e:
                    # an error is fine only when the daemon was killed
                    if not d.dying():
                        err.append("%s: %s" % (kind, e))
                except Loss as e:
                    err.append(str(e))

            swept = False
            if kind in ("lazy", "wholefile", "sweep", "mixed"):
                for t in TABLES:
                    ctl("alter /%s %s" % (t, other))
                key[0] = other
            if kind in ("wholefile", "sweep", "mixed"):
                ctl("rekey")
                swept = True
            th = None
            if kind not in ("wholefile", "sweep"):
                th = th_ref[0] = threading.Thread(target=worker)
                th.start()
            t_start = time.time()
            deadline = t_start + (delay if point is None else 15)
            while d.alive() and time.time() < deadline:
                if point is not None:
                    work_over = (th is None or not th.is_alive())
                    if work_over and swept:
                        st, q = walker_state()
                        work_over = st in ("idle", "finished", "incomplete") and not q
                    if work_over:
                        break
                time.sleep(0.002)
            if d.alive():
                running = (th is not None and th.is_alive() and busy[0])
                if not running and swept:
                    try:
                        st, q = walker_state()
                        running = st == "running" or bool(q)
                    except OSError:
                        running = False
                if point is not None:
                    stats["not_reached"] += 1
                    running = False
                d.kill9()
                during = running
            else:
                stats["crashpoints"] += 1
                during = True
            stop.set()
            if th:
                th.join(30)
                if th.is_alive():
                    raise Loss("the worker hangs after the kill")
            if err:
                raise Loss("while the daemon ran: %s" % err[0])
        except OSError as e:
            if not d.dying():
                log("round %d (%s, %s): error while the daemon runs: %s" % (i + 1, kind, how, e))
                stats["losses"] += 1
                d.kill9()
                d.reap_dead()
                break
            if stop_ev is not None:
                stop_ev.set()
            if th_ref[0] is not None:
                th_ref[0].join(30)
            # the crash point came during the verification (a lazy rewrite or the resumed sweep)
            stats["crashpoints"] += 1
            during = True
            died = "before the round's work: verification reads, alter, or the resumed sweep"
        except Loss as e:
            stats["losses"] += 1
            log("round %d (%s, %s): LOSS: %s" % (i + 1, kind, how, e))
            d.kill9()
            d.reap_dead()
            break
        rc = d.reap_dead()
        if rc != -signal.SIGKILL:
            stats["losses"] += 1
            log("round %d (%s, %s): the daemon ended with %s, not SIGKILL: %s" % (i + 1, kind, how, rc, d.tail()))
            break
        stats["kills"] += 1
        stats["during"] += during
        extra = ""
        if full:
            # remount, check every file and listing, unmount cleanly, rekeyctl fsck --deep offline
            try:
                for _ in range(5):
                    d = Daemon("lazy=off")
                    try:
                        verify(True)
                        break
                    except OSError as e:
                        if e.errno not in GONE:
                            raise
                        d.reap_dead()  # (cannot happen: no crash point set)
                d.umount_clean()
                fs = subprocess.run(["rekeyctl", "fsck", "--deep", "-d", KEYS, DATA], capture_output=True, text=True)
                # 0, or 1: chunks remain under old keys (sweeps were interrupted); 4: corrupt, 8: could not run
                if fs.returncode not in (0, 1) or "no corruption found" not in fs.stdout:
                    raise Loss("rekeyctl fsck --deep: status %d: %s %s" % (fs.returncode, fs.stdout[-800:], fs.stderr[-800:]))
                stats["deep"] += 1
                extra = "; full check + fsck --deep clean"
            except (Loss, OSError) as e:
                stats["losses"] += 1
                log("round %d full check: LOSS: %s" % (i + 1, e))
                if fuse_mounts():
                    d.kill9()
                    d.reap_dead()
                break
        log("round %d (%s, %s): killed%s%s%s" % (i + 1, kind, how, " during the work" if during else "",
                                                 " (%s)" % died if died else "", extra))
    log("kill points: %d, during work: %d, crash points reached: %d, not reached: %d, full checks (fsck --deep): %d, "
        "losses: %d, files: %d; %.0f s" % (stats["kills"], stats["during"], stats["crashpoints"], stats["not_reached"],
                                           stats["deep"], stats["losses"], len(ACKED), time.time() - t0))
    sys.exit(1 if stats["losses"] else 0)


main()
