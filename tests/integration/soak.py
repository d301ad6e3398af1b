#!/usr/bin/env python3
"""soak.py - the load soak of rekeyfs (issue 13, item 4).

usage: soak.py MNT KEYS PID SECONDS SEED

On a fresh mount (tables /, /t1, /t2 under key1; /t3 is written under key3
and then altered to key1 but never swept or read: its chunks stay under key3)
for SECONDS:
  8 workers: 4 writers of their own files (overwrites, appends, truncates,
    renames, and the write-a-temporary-then-rename-over pattern, fsync),
    2 writers of two shared files (under a lock per file: overwrites,
    appends, truncates, fsync), 2 readers (verify the stable files chunk by
    chunk, read the shared files while they change)
  sweeps back to back: /t1 and /t2 altered to the other key of key1/key2,
    rekey /t1 /t2, wait for it, again (/ keeps key1; /t3 is left alone)
  an admin loop: rekeyctl fsck MNT (status 0 or 1: old keys), rekeyctl status
    MNT, rekeyctl release-key key3 MNT (must be refused: /t3 has chunks)
Then: every file equals its shadow, a final sweep of every table, rekeyctl
fsck --deep MNT is clean (status 0), the daemon's open descriptors are back
to their count before the workload (after the caches were dropped), and peak
RSS (VmHWM).  Prints one line "soak: ..." with the figures; exit 1 on failure.
"""
import json
import os
import random
import subprocess
import sys
import threading
import time

MNT, KEYS, PID, SECS, SEED = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
RSS_LIMIT_KB = int(os.environ.get("SOAK_RSS_LIMIT_KB", 64 * 1024))
FD_SLACK = int(os.environ.get("SOAK_FD_SLACK", 0))
CS = 4096
FAIL = []
STOP = threading.Event()
OPS = {}
LOCK = threading.Lock()


def fail(msg):
    with LOCK:
        FAIL.append(msg)
    STOP.set()


def count(what, n=1):
    with LOCK:
        OPS[what] = OPS.get(what, 0) + n


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
    if not out.startswith("ok"):
        raise RuntimeError("control %r: %s" % (cmd, out.strip()))
    return out


def status():
    with open(os.path.join(MNT, ".rekeyfs/status")) as f:
        return json.load(f)


def walker_idle():
    w = status()["walker"]
    return w["state"] in ("idle", "finished", "incomplete") and not w.get("queued")


def wait_idle(secs, what):
    deadline = time.time() + secs
    while not walker_idle():
        if time.time() > deadline:
            raise RuntimeError("%s: the sweep did not end within %d s: %s" % (what, secs, status()["walker"]))
        time.sleep(0.05)


def fds():
    return sorted(os.listdir("/proc/%d/fd" % PID), key=int)


def fd_targets():
    out = []
    for fd in fds():
        try:
            out.append("%s->%s" % (fd, os.readlink("/proc/%d/fd/%s" % (PID, fd))))
        except OSError:
            pass
    return out


def vm(field):
    with open("/proc/%d/status" % PID) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def gen(r, n):
    if r.random() < 0.5:
        return r.randbytes(n)
    return (("%08x row alpha bravo charlie\n" % r.randrange(1 << 32)) * (n // 30 + 1)).encode()[:n]


SHADOW = {}  # rel -> bytes (files of the writers; updated under LOCK or by their only owner)


def private_writer(i):
    r = random.Random(SEED * 100 + i)
    t = ["", "t1", "t2", "t1"][i]
    base = (t + "/" if t else "") + "w%d" % i
    rel = base + ".dat"
    try:
        while not STOP.is_set():
            k = r.random()
            if k < 0.1:
                # rename away and back
                os.rename(os.path.join(MNT, rel), os.path.join(MNT, base + ".alt"))
                with LOCK:
                    SHADOW[base + ".alt"] = SHADOW.pop(rel)
                os.rename(os.path.join(MNT, base + ".alt"), os.path.join(MNT, rel))
                with LOCK:
                    SHADOW[rel] = SHADOW.pop(base + ".alt")
                count("renames", 2)
            elif k < 0.2:
                # a database's pattern: write a temporary, fsync, rename over
                data = gen(r, r.randint(0, 6 * CS))
                tmp = os.path.join(MNT, base + ".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, os.path.join(MNT, rel))
                with LOCK:
                    SHADOW[rel] = data
                count("renames")
                count("writes")
                count("fsyncs")
            else:
                fd = os.open(os.path.join(MNT, rel), os.O_WRONLY)
                try:
                    for _ in range(r.randint(1, 4)):
                        write_op(fd, r, rel)
                    if r.random() < 0.5:
                        os.fsync(fd)
                        count("fsyncs")
                finally:
                    os.close(fd)
    except Exception as e:
        fail("writer %d: %r" % (i, e))


def write_op(fd, r, rel):
    with LOCK:
        old = SHADOW[rel]
    k = r.random()
    if k < 0.45 or not old:
        off = r.randrange(len(old) + 1)
        seg = gen(r, r.choice([1, 100, CS, CS + 1, 3 * CS]))
        new = old[:off] + seg + old[off + len(seg):]
        if os.pwrite(fd, seg, off) != len(seg):
            raise RuntimeError("short write")
        count("overwrites")
    elif k < 0.8:
        seg = gen(r, r.choice([7, 1000, CS, 2 * CS + 3]))
        new = old + seg
        if os.pwrite(fd, seg, len(old)) != len(seg):
            raise RuntimeError("short write")
        count("appends")
    else:
        n = r.randrange(len(old) + 1)
        new = old[:n]
        os.ftruncate(fd, n)
        count("truncates")
    with LOCK:
        SHADOW[rel] = new


SHARED_LOCKS = {"t1/shared0.dat": threading.Lock(), "t2/shared1.dat": threading.Lock()}


def shared_writer(i):
    r = random.Random(SEED * 100 + 10 + i)
    try:
        while not STOP.is_set():
            rel = r.choice(sorted(SHARED_LOCKS))
            with SHARED_LOCKS[rel]:
                fd = os.open(os.path.join(MNT, rel), os.O_WRONLY)
                try:
                    write_op(fd, r, rel)
                    # the shared files stay below 256 KiB
                    with LOCK:
                        big = len(SHADOW[rel]) > 256 * 1024
                    if big:
                        os.ftruncate(fd, 64 * 1024)
                        with LOCK:
                            SHADOW[rel] = SHADOW[rel][:64 * 1024]
                    if r.random() < 0.5:
                        os.fsync(fd)
                        count("fsyncs")
                finally:
                    os.close(fd)
            time.sleep(0.001)
    except Exception as e:
        fail("shared writer %d: %r" % (i, e))


STABLE = {}


def reader(i):
    r = random.Random(SEED * 100 + 20 + i)
    try:
        while not STOP.is_set():
            # (not /t3: a read of a chunk under an old key schedules its lazy rewrite)
            rel = r.choice(sorted(x for x in STABLE if not x.startswith("t3/")))
            want = STABLE[rel]
            fd = os.open(os.path.join(MNT, rel), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                offs = list(range(0, len(want), CS))
                r.shuffle(offs)
                for o in offs[:16]:
                    if os.pread(fd, CS, o) != want[o:o + CS]:
                        raise RuntimeError("%s at %d differs from the shadow" % (rel, o))
                    count("reads")
            finally:
                os.close(fd)
            # and a shared file while it changes (no check of its bytes: it moves)
            srel = r.choice(sorted(SHARED_LOCKS))
            with open(os.path.join(MNT, srel), "rb") as f:
                f.read()
                count("reads")
    except Exception as e:
        fail("reader %d: %r" % (i, e))


def sweeper():
    key = "key1"
    try:
        while not STOP.is_set():
            key = "key2" if key == "key1" else "key1"
            for t in ("/t1", "/t2"):
                ctl("alter %s %s" % (t, key))
            # (a table filter is a prefix: "/" would sweep /t3 too)
            ctl("rekey /t1 /t2")
            count("sweeps")
            deadline = time.time() + 120
            while not STOP.is_set() and not walker_idle():
                if time.time() > deadline:
                    raise RuntimeError("a sweep did not end within 120 s: %s" % status()["walker"])
                time.sleep(0.05)
    except Exception as e:
        fail("sweeper: %r" % (e,))


def admin():
    try:
        while not STOP.is_set():
            p = subprocess.run(["rekeyctl", "fsck", MNT] if not os.environ.get("SOAK_NO_FSCK") else ["true"],
                               capture_output=True, text=True, timeout=120)
            if p.returncode not in (0, 1):
                raise RuntimeError("rekeyctl fsck %s: status %d: %s %s" % (MNT, p.returncode, p.stdout[-500:], p.stderr[-500:]))
            count("admin fsck")
            p = subprocess.run(["rekeyctl", "status", MNT], capture_output=True, text=True, timeout=120)
            if p.returncode != 0:
                raise RuntimeError("rekeyctl status: status %d: %s" % (p.returncode, p.stderr[-500:]))
            count("admin status")
            p = subprocess.run(["rekeyctl", "release-key", "-d", KEYS, "key3", MNT], capture_output=True, text=True,
                               timeout=120)
            if p.returncode == 0 or "refused" not in p.stdout + p.stderr:
                raise RuntimeError("rekeyctl release-key key3 while /t3 has chunks under it: status %d: %s %s" %
                                   (p.returncode, p.stdout[-500:], p.stderr[-500:]))
            count("admin release-key refused")
    except Exception as e:
        fail("admin: %r" % (e,))


def check_all(what):
    for rel, want in sorted(list(SHADOW.items()) + list(STABLE.items())):
        with open(os.path.join(MNT, rel), "rb") as f:
            got = f.read()
        if got != want:
            i = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
            raise RuntimeError("%s: %s differs from the shadow at offset %d (%d vs %d bytes)" % (what, rel, i, len(got), len(want)))
    for t in ("", "t1", "t2", "t3"):
        have = sorted(n for n in os.listdir(os.path.join(MNT, t)) if n not in ("t1", "t2", "t3", ".rekeyfs"))
        want = sorted(r.split("/")[-1] for r in list(SHADOW) + list(STABLE) if (r.split("/")[0] if "/" in r else "") == t)
        if have != want:
            raise RuntimeError("%s: /%s has %s, the shadow %s" % (what, t, have, want))


def settle_fds(target, secs):
    """drop the caches until the daemon's descriptors are back to target (FORGETs are asynchronous)"""
    deadline = time.time() + secs
    while True:
        drop_caches()
        n = len(fds())
        if n <= target or time.time() > deadline:
            return n
        time.sleep(0.2)


def give_up():
    """the daemon stopped answering: SIGKILL it (its pending requests fail, the blocked threads
    return) and exit.  (No stack dump from here: a fork of this process with threads blocked in
    the mount can block too; see the report in the test log for how to take one with gdb.)"""
    os.kill(PID, 9)
    os._exit(1)


def watchdog():
    print("soak: FAILED: the soak did not end %d s after its time (daemon deadlock?); operations: %s; errors: %s" %
          (240, OPS, FAIL), flush=True)
    give_up()


def main():
    wd = threading.Timer(SECS + 240, watchdog)
    wd.daemon = True
    wd.start()
    r = random.Random(SEED)
    for t in ("t1", "t2", "t3"):
        os.mkdir(os.path.join(MNT, t))
    for t in ("/", "/t1", "/t2"):
        ctl("alter %s key1" % t)
    ctl("alter /t3 key3")
    for rel, n in [("s0.dat", 40 * CS), ("t1/s1.dat", 25 * CS), ("t2/s2.dat", 60 * CS + 17), ("t3/old0.dat", 8 * CS),
                   ("t3/old1.dat", 3 * CS)]:
        data = gen(r, n)
        with open(os.path.join(MNT, rel), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())   # sealed now, under the table's key of now
        STABLE[rel] = data
    for rel in ["w0.dat", "t1/w1.dat", "t2/w2.dat", "t1/w3.dat", "t1/shared0.dat", "t2/shared1.dat"]:
        data = gen(r, r.randint(CS, 20 * CS))
        with open(os.path.join(MNT, rel), "wb") as f:
            f.write(data)
        SHADOW[rel] = data
    ctl("alter /t3 key1")   # /t3 keeps its key3 chunks: never swept, never read
    os.sync()
    fd_start = settle_fds(0, 2)
    fd_start_list = fd_targets()
    threads = [threading.Thread(target=private_writer, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=shared_writer, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=sweeper), threading.Thread(target=admin)]
    t0 = time.time()
    for th in threads:
        th.start()
    while not STOP.is_set() and time.time() - t0 < SECS:
        time.sleep(0.1)
    STOP.set()
    deadline = time.time() + 30
    for th in threads:
        th.join(max(0.1, deadline - time.time()))
    stuck = [th.name for th in threads if th.is_alive()]
    if stuck:
        # a thread blocked in a request the daemon never answers cannot be
        # joined: report and leave (the test unmounts and kills the daemon)
        print("soak: FAILED: %d of %d workers still blocked in the mount 30 s after the end (daemon deadlock?); "
              "operations: %s; errors: %s" % (len(stuck), len(threads), OPS, FAIL), flush=True)
        give_up()
    elapsed = time.time() - t0
    try:
        if FAIL:
            raise RuntimeError("; ".join(FAIL))
        wait_idle(120, "the last sweep of the soak")
        check_all("after the soak")
        # a final sweep of every table (also /t3): then fsck --deep must be clean
        for t in ("/", "/t1", "/t2", "/t3"):
            ctl("alter %s key2" % t)
        ctl("rekey")
        wait_idle(120, "the final sweep")
        p = subprocess.run(["rekeyctl", "fsck", "--deep", MNT], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError("rekeyctl fsck --deep %s: status %d: %s %s" % (MNT, p.returncode, p.stdout[-800:], p.stderr[-800:]))
        drop_caches()
        check_all("after the final sweep (caches dropped)")
        fd_end = settle_fds(fd_start + FD_SLACK, 10)
        hwm = vm("VmHWM")
        print("soak: %.0f s, operations: %s; daemon descriptors: %d before the workload, %d after it (caches dropped); "
              "peak RSS (VmHWM) %d KiB, RSS now %d KiB" %
              (elapsed, ", ".join("%s %d" % kv for kv in sorted(OPS.items())), fd_start, fd_end, hwm, vm("VmRSS")))
        if fd_end > fd_start + FD_SLACK:
            extra = sorted(set(fd_targets()) - set(fd_start_list))
            raise RuntimeError("the daemon holds %d descriptors, %d before the workload (slack %d); new: %s" %
                               (fd_end, fd_start, FD_SLACK, extra[:20]))
        if hwm >= RSS_LIMIT_KB:
            raise RuntimeError("peak RSS %d KiB, the limit is %d KiB" % (hwm, RSS_LIMIT_KB))
        if not OPS.get("sweeps") or not OPS.get("admin release-key refused"):
            raise RuntimeError("the sweeps or the admin loop did not run: %s" % OPS)
    except Exception as e:
        print("soak: FAILED after %.0f s (operations: %s): %s" % (elapsed, OPS, e))
        sys.exit(1)


main()
