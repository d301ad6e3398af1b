#!/usr/bin/env python3
"""Seeded randomized file exerciser for rekeyfs (or any file system).

    exerciser.py run    --dir DIR --shadow SHADOW [--seed S] [--ops N]
                        [--files K] [--threads T] [--chunk-kb C]
    exerciser.py verify --dir DIR --shadow SHADOW

run: K files per thread in DIR get N mixed operations per thread: pwrite at
random offsets and sizes (biased to chunk boundaries, spanning chunks, past
EOF leaving holes), pread, truncate up and down (by fd and by path), append
(O_APPEND), rename (to a new name and over another file, keeping an open
descriptor of the replaced file: unlink-while-open), fsync/fdatasync,
close/reopen (sometimes with O_TRUNC), stat size, whole-file reads through a
fresh descriptor, page cache eviction (fdatasync + POSIX_FADV_DONTNEED, so
that later reads reach the file system instead of the kernel's cache).  Every read is compared with an in-memory shadow copy.  At
the end every file is read back whole, and the shadow copies are written to
SHADOW/ (one file per name) for `verify` and for offline comparisons.

verify: DIR must hold exactly the files of SHADOW with the same content.

The seed is printed; EXERCISER_SEED (or --seed) makes a run reproducible
(with --threads 1 the operation sequence is fully deterministic; with more
threads each thread's sequence is, the interleaving is not).  On a mismatch
it prints the seed, thread, operation index, the operation, the first
differing offset and a hex excerpt, then exits 1.
"""
import argparse
import errno
import hashlib
import os
import random
import sys
import threading
import time

FAILED = threading.Event()


class Mismatch(Exception):
    pass


def hexdump(b, n=32):
    return b[:n].hex(" ") + (" ..." if len(b) > n else "")


def first_diff(a, b):
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return i
    return min(len(a), len(b))


class Worker:
    def __init__(self, args, tid, seed):
        self.args = args
        self.tid = tid
        self.seed = seed
        self.rng = random.Random(seed * 1000003 + tid)
        self.cs = args.chunk_kb * 1024
        self.maxsize = max(4 * self.cs, 512 * 1024)
        self.dir = args.dir
        self.names = {}      # name -> bytearray shadow
        self.fds = {}        # name -> open fd (O_RDWR)
        self.orphans = []    # (fd, shadow) of files unlinked while open
        self.serial = 0
        self.log = []        # the last operations, for failure reports
        self.hist = {}       # name -> its last operations (follows renames)
        self.opidx = -1
        self.counts = {}

    # ---- helpers ---------------------------------------------------------------------------
    def path(self, name):
        return os.path.join(self.dir, name)

    def new_name(self):
        self.serial += 1
        return "t%d-f%03d" % (self.tid, self.serial)

    def note(self, s, name=None):
        self.log.append("#%d %s" % (self.opidx, s))
        if len(self.log) > 12:
            del self.log[0]
        if name is not None:
            h = self.hist.setdefault(name, [])
            h.append("#%d %s" % (self.opidx, s))
            if len(h) > 60:
                del h[0]

    def fail(self, what, name, off, expected, actual):
        d = first_diff(expected, actual)
        msg = [
            "EXERCISER MISMATCH: seed=%d thread=%d op=%d (reproduce: EXERCISER_SEED=%d)" % (self.seed, self.tid, self.opidx, self.seed),
            "  operation: %s on %s at offset %d" % (what, name, off),
            "  expected %d bytes, got %d bytes; first difference at byte %d of the read (file offset %d, chunk %d)"
            % (len(expected), len(actual), d, off + d, (off + d) // self.cs),
            "  expected: %s" % hexdump(bytes(expected[d:d + 32])),
            "  actual:   %s" % hexdump(bytes(actual[d:d + 32])),
        ]
        nz = sum(1 for i in range(len(actual)) if i < len(expected) and actual[i] != expected[i])
        msg.append("  %d differing bytes in the overlap" % nz)
        msg.append("  last operations:")
        msg += ["    " + l for l in self.log]
        if name in self.hist:
            msg.append("  history of %s (last %d operations on it):" % (name, len(self.hist[name])))
            msg += ["    " + l for l in self.hist[name]]
        raise Mismatch("\n".join(msg))

    def data(self, n):
        kind = self.rng.random()
        if kind < 0.45:
            return self.rng.randbytes(n)
        if kind < 0.6:
            return bytes(n)          # zeros: compress well, look like holes
        word = ("t%d-op%d-" % (self.tid, self.opidx)).encode()
        return (word * (n // len(word) + 1))[:n]

    def offset(self, size):
        r = self.rng.random()
        if r < 0.35:                 # near a chunk boundary
            k = self.rng.randrange(0, max(1, (size + 2 * self.cs) // self.cs) + 1)
            return max(0, k * self.cs + self.rng.randrange(-40, 40))
        if r < 0.5:                  # past EOF: a hole
            return size + self.rng.randrange(0, 2 * self.cs)
        return self.rng.randrange(0, max(1, size + 1))

    def length(self):
        r = self.rng.random()
        if r < 0.4:
            return self.rng.randrange(1, 200)
        if r < 0.8:
            return self.rng.randrange(1, self.cs + 1)
        if r < 0.95:
            return self.rng.randrange(self.cs, 2 * self.cs + 100)
        return self.rng.randrange(2 * self.cs, 3 * self.cs + 1000)

    def fd(self, name):
        if name not in self.fds:
            self.fds[name] = os.open(self.path(name), os.O_RDWR)
        return self.fds[name]

    @staticmethod
    def pwrite_shadow(sh, data, off):
        end = off + len(data)
        if end > len(sh):
            sh.extend(bytes(end - len(sh)))
        sh[off:end] = data

    def check_read(self, what, name, fd, sh, off, n):
        got = os.pread(fd, n, off)
        exp = bytes(sh[off:off + n])
        if got != exp:
            self.fail(what, name, off, exp, got)

    def read_whole(self, name, sh, what):
        with open(self.path(name), "rb") as f:
            got = f.read()
        if got != bytes(sh):
            self.fail(what, name, 0, bytes(sh), got)

    # ---- operations ------------------------------------------------------------------------
    def op_pwrite(self, name, sh):
        off = self.offset(len(sh))
        n = self.length()
        if off + n > self.maxsize:
            off = self.rng.randrange(0, max(1, self.maxsize - n))
        data = self.data(n)
        self.note("pwrite %s off=%d len=%d" % (name, off, n), name)
        w = os.pwrite(self.fd(name), data, off)
        if w != n:
            raise Mismatch("short write %d of %d at op %d (seed %d)" % (w, n, self.opidx, self.seed))
        self.pwrite_shadow(sh, data, off)

    def op_pread(self, name, sh):
        off = self.offset(len(sh))
        n = self.length()
        self.note("pread %s off=%d len=%d" % (name, off, n), name)
        self.check_read("pread", name, self.fd(name), sh, off, n)

    def op_truncate(self, name, sh):
        r = self.rng.random()
        if r < 0.45:
            size = self.rng.randrange(0, len(sh) + 1)                 # down
        elif r < 0.55:
            size = (self.rng.randrange(0, len(sh) // self.cs + 1)) * self.cs   # to a boundary
        else:
            size = min(self.maxsize, len(sh) + self.rng.randrange(1, 2 * self.cs))  # up
        by_path = self.rng.random() < 0.3
        self.note("truncate %s %d -> %d (%s)" % (name, len(sh), size, "path" if by_path else "fd"), name)
        if by_path:
            os.truncate(self.path(name), size)
        else:
            os.ftruncate(self.fd(name), size)
        if size < len(sh):
            del sh[size:]
        else:
            sh.extend(bytes(size - len(sh)))
        # the bytes around the new end
        lo = max(0, size - 100)
        self.check_read("read after truncate", name, self.fd(name), sh, lo, 300)

    def op_append(self, name, sh):
        n = self.length() if self.rng.random() < 0.5 else self.rng.randrange(1, 300)
        if len(sh) + n > self.maxsize:
            return self.op_truncate(name, sh)
        data = self.data(n)
        self.note("append %s len=%d at %d" % (name, n, len(sh)), name)
        afd = os.open(self.path(name), os.O_WRONLY | os.O_APPEND)
        try:
            os.lseek(afd, 0, os.SEEK_SET)
            os.write(afd, data)
        finally:
            os.close(afd)
        sh.extend(data)

    def op_rename(self, name, sh):
        others = [x for x in self.names if x != name]
        if others and self.rng.random() < 0.4:
            target = self.rng.choice(others)
            self.note("rename %s over %s" % (name, target), name)
            self.hist[target] = self.hist.pop(name, [])
            # the replaced file stays readable through its open descriptor
            if target in self.fds:
                self.orphans.append((self.fds.pop(target), self.names[target]))
            os.rename(self.path(name), self.path(target))
            self.names[target] = self.names.pop(name)
            if name in self.fds:
                self.fds[target] = self.fds.pop(name)
            # keep the number of files: a new empty one
            nn = self.new_name()
            os.close(os.open(self.path(nn), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644))
            self.names[nn] = bytearray()
        else:
            nn = self.new_name()
            self.note("rename %s -> %s" % (name, nn), name)
            self.hist[nn] = self.hist.pop(name, [])
            os.rename(self.path(name), self.path(nn))
            self.names[nn] = self.names.pop(name)
            if name in self.fds:
                self.fds[nn] = self.fds.pop(name)

    def op_sync(self, name, sh):
        ds = self.rng.random() < 0.5
        self.note("%s %s" % ("fdatasync" if ds else "fsync", name), name)
        (os.fdatasync if ds else os.fsync)(self.fd(name))

    def op_reopen(self, name, sh):
        if name in self.fds:
            os.close(self.fds.pop(name))
        trunc = self.rng.random() < 0.08
        self.note("close/reopen %s%s" % (name, " O_TRUNC" if trunc else ""), name)
        self.fds[name] = os.open(self.path(name), os.O_RDWR | (os.O_TRUNC if trunc else 0))
        if trunc:
            del sh[:]

    def op_stat(self, name, sh):
        self.note("stat %s" % name, name)
        st = os.stat(self.path(name))
        if st.st_size != len(sh):
            raise Mismatch("EXERCISER MISMATCH: seed=%d thread=%d op=%d: stat %s size %d, expected %d\n  last operations:\n    %s"
                           % (self.seed, self.tid, self.opidx, name, st.st_size, len(sh), "\n    ".join(self.log)))

    def op_readall(self, name, sh):
        self.note("read whole %s (fresh descriptor)" % name, name)
        self.read_whole(name, sh, "whole-file read")

    def op_orphan(self, name, sh):
        if not self.orphans:
            return self.op_pread(name, sh)
        i = self.rng.randrange(len(self.orphans))
        fd, osh = self.orphans[i]
        r = self.rng.random()
        if r < 0.3:
            self.note("close unlinked file %d" % i)
            os.close(fd)
            del self.orphans[i]
        elif r < 0.6:
            off = self.rng.randrange(0, len(osh) + 10)
            data = self.data(self.rng.randrange(1, 500))
            self.note("pwrite unlinked file %d off=%d len=%d" % (i, off, len(data)))
            os.pwrite(fd, data, off)
            self.pwrite_shadow(osh, data, off)
        else:
            off = self.offset(len(osh))
            n = self.length()
            self.note("pread unlinked file %d off=%d len=%d" % (i, off, n))
            self.check_read("pread of an unlinked open file", "(unlinked %d)" % i, fd, osh, off, n)

    def op_evict(self, name, sh):
        # write back and drop the file's cached pages: the next reads come
        # from the file system itself, not from the kernel's page cache
        self.note("evict page cache of %s" % name, name)
        fd = self.fd(name)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    OPS = [
        ("pwrite", 30), ("pread", 24), ("truncate", 7), ("append", 8), ("rename", 4),
        ("sync", 5), ("reopen", 8), ("stat", 5), ("readall", 4), ("orphan", 5), ("evict", 5),
    ]

    def run(self):
        for _ in range(self.args.files):
            n = self.new_name()
            os.close(os.open(self.path(n), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644))
            self.names[n] = bytearray()
        ops = [o for o, w in self.OPS for _ in range(w)]
        for self.opidx in range(self.args.ops):
            if FAILED.is_set():
                return
            op = self.rng.choice(ops)
            name = self.rng.choice(sorted(self.names))
            self.counts[op] = self.counts.get(op, 0) + 1
            getattr(self, "op_" + op)(name, self.names[name])
        # final: close everything and read every file back whole
        self.opidx = self.args.ops
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        for i, (fd, osh) in enumerate(self.orphans):
            self.check_read("final read of an unlinked open file", "(unlinked %d)" % i, fd, osh, 0, len(osh) + 1)
            os.close(fd)
        self.orphans = []
        for name in sorted(self.names):
            self.note("final whole read %s" % name)
            self.read_whole(name, self.names[name], "final whole-file read")


def cmd_run(args):
    seed = args.seed
    if seed is None:
        seed = int(os.environ.get("EXERCISER_SEED") or (int(time.time() * 1000) ^ os.getpid()) % 1000000007)
    print("exerciser: seed %d (set EXERCISER_SEED=%d to repeat), %d ops x %d threads, %d files each, chunk %d KiB, dir %s"
          % (seed, seed, args.ops, args.threads, args.files, args.chunk_kb, args.dir), flush=True)
    workers = [Worker(args, t, seed) for t in range(args.threads)]
    errors = []

    def body(w):
        try:
            w.run()
        except Mismatch as e:
            errors.append(str(e))
            FAILED.set()
        except OSError as e:
            errors.append("EXERCISER ERROR: seed=%d thread=%d op=%d: %s\n  last operations:\n    %s"
                          % (w.seed, w.tid, w.opidx, e, "\n    ".join(w.log)))
            FAILED.set()

    t0 = time.time()
    if args.threads == 1:
        body(workers[0])
    else:
        ts = [threading.Thread(target=body, args=(w,)) for w in workers]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        return 1
    os.makedirs(args.shadow, exist_ok=True)
    total = 0
    for w in workers:
        for name, sh in w.names.items():
            with open(os.path.join(args.shadow, name), "wb") as f:
                f.write(sh)
            total += len(sh)
    counts = {}
    for w in workers:
        for k, v in w.counts.items():
            counts[k] = counts.get(k, 0) + v
    print("exerciser: ok in %.1fs; %s; %d files, %d bytes" % (time.time() - t0,
          ", ".join("%s %d" % kv for kv in sorted(counts.items())), sum(len(w.names) for w in workers), total))
    return 0


def cmd_verify(args):
    want = sorted(os.listdir(args.shadow))
    have = sorted(x for x in os.listdir(args.dir))
    bad = 0
    if want != have:
        print("EXERCISER VERIFY: file names differ: missing %s, unexpected %s"
              % (sorted(set(want) - set(have)), sorted(set(have) - set(want))), file=sys.stderr)
        bad += 1
    for name in want:
        with open(os.path.join(args.shadow, name), "rb") as f:
            exp = f.read()
        try:
            with open(os.path.join(args.dir, name), "rb") as f:
                got = f.read()
        except OSError as e:
            print("EXERCISER VERIFY: %s: %s" % (name, e), file=sys.stderr)
            bad += 1
            continue
        if got != exp:
            d = first_diff(exp, got)
            print("EXERCISER VERIFY: %s differs: expected %d bytes, got %d; first difference at offset %d\n  expected: %s\n  actual:   %s"
                  % (name, len(exp), len(got), d, hexdump(exp[d:d + 32]), hexdump(got[d:d + 32])), file=sys.stderr)
            bad += 1
    if bad:
        return 1
    print("exerciser verify: %d files match" % len(want))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["run", "verify"])
    p.add_argument("--dir", required=True)
    p.add_argument("--shadow", required=True)
    p.add_argument("--seed", type=int)
    p.add_argument("--ops", type=int, default=3000)
    p.add_argument("--files", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-kb", type=int, default=64)
    args = p.parse_args()
    return cmd_run(args) if args.mode == "run" else cmd_verify(args)


if __name__ == "__main__":
    sys.exit(main())
