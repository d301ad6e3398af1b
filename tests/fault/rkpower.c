/*
 * rkpower.so: an LD_PRELOAD shim that records, for every write to a regular
 * file, what a power loss would take back: the old bytes of the range and the
 * old size.  tests/fault/rkpower-restore applies the records after the daemon
 * was killed (kill -9), which turns "the daemon died" into "the machine lost
 * power: every write not yet made durable by fsync/fdatasync is gone" (or,
 * in its second mode, "any subset of those writes reached the disk, page by
 * page").  Used by tests/integration/test_power_loss.sh and
 * scripts/power-loss.
 *
 * Environment:
 *   RKPOWER_DIR=DIR   enables the shim; the undo records go to
 *                     DIR/<st_dev>-<st_ino>.undo (one file per inode)
 *   RKPOWER_ROOT=DIR  only files whose path (readlink of /proc/self/fd/N)
 *                     lies under DIR are recorded (default: every regular
 *                     file; set it to the data directory so that logs, key
 *                     files and /sys attributes are left alone)
 *
 * Wrapped calls (and the aliases glibc exports): pwrite (pwrite64), pwritev
 * (pwritev64, pwritev2, pwritev64v2), write, writev, ftruncate
 * (ftruncate64), fallocate (fallocate64; PUNCH_HOLE, ZERO_RANGE, plain
 * allocation), copy_file_range (the destination), fsync, fdatasync, syncfs,
 * sync, and unlink/unlinkat/rename/renameat/renameat2 (only to forget the
 * records of an inode whose last name goes away, so that a reused inode
 * number never inherits them).
 *
 * Record (host byte order, appended with one writev before the write itself
 * is made, so a record whose write never happened restores bytes equal to
 * the file's own; a record cut short by the kill is ignored by the restore):
 *     u32 magic 0x55504b52 ("RKPU"), u32 kind (1 write, 2 truncate,
 *     3 fallocate), u64 old_size, u64 off, u64 len (the range the call
 *     changes), u64 nbytes (old bytes saved: [off, off + nbytes), the part
 *     of the range below old_size), nbytes bytes.
 *   Undo of a record: write the bytes back at off, truncate to old_size.
 *
 * Durability model:
 *   - fsync/fdatasync of an fd makes every write of its inode recorded
 *     before the call started durable: those records are dropped when the
 *     call returns 0 (records appended meanwhile by other threads stay,
 *     also when concurrent syncs of the inode end in any order);
 *     syncfs and sync drop every record.
 *   - Names are durable at once: creates, renames, unlinks and links are
 *     never undone (a real power loss can also lose a name whose directory
 *     was not fsynced; this harness does not simulate that).  A file
 *     created and never fsynced keeps its name and is restored to size 0.
 *   - Files opened with O_TRUNC, mmap writes and O_DIRECT are not
 *     recorded (the daemon uses none of them on its backing files).
 *
 * One mutex serializes every recorded call together with its record, so the
 * order of the records of one inode is the order of its writes.  errno is
 * preserved.  A record that cannot be written (undo directory missing, disk
 * full) aborts the process: the test must never pass on a missing record.
 * Non-regular files (/dev/fuse, pipes, sockets) pass straight
 * through.  Built without sanitizers; to preload into an ASan binary put the
 * ASan runtime first: LD_PRELOAD="$(libasan path) rkpower.so".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define RKPU_MAGIC 0x55504b52u
enum { K_WRITE = 1, K_TRUNC = 2, K_FALLOC = 3 };

struct rec {
	uint32_t magic, kind;
	uint64_t old_size, off, len, nbytes;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char undo_dir[1024];
static char root[PATH_MAX];
static size_t root_len;
static int enabled;
static uint8_t *buf; /* old bytes (under mu) */
static size_t buf_cap;

static ssize_t (*r_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*r_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*r_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*r_pwritev64)(int, const struct iovec *, int, off_t);
static ssize_t (*r_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*r_pwritev64v2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*r_write)(int, const void *, size_t);
static ssize_t (*r_writev)(int, const struct iovec *, int);
static int (*r_ftruncate)(int, off_t);
static int (*r_ftruncate64)(int, off_t);
static int (*r_fallocate)(int, int, off_t, off_t);
static int (*r_fallocate64)(int, int, off_t, off_t);
static ssize_t (*r_copy_file_range)(int, off_t *, int, off_t *, size_t, unsigned int);
static int (*r_fsync)(int);
static int (*r_fdatasync)(int);
static int (*r_syncfs)(int);
static void (*r_sync)(void);
static int (*r_unlink)(const char *);
static int (*r_unlinkat)(int, const char *, int);
static int (*r_rename)(const char *, const char *);
static int (*r_renameat)(int, const char *, int, const char *);
static int (*r_renameat2)(int, const char *, int, const char *, unsigned int);
static ssize_t (*r_pread)(int, void *, size_t, off_t);
static int (*r_open)(const char *, int, ...);
static int (*r_close)(int);

#define RESOLVE(name) (r_##name ? r_##name : (*(void **)&r_##name = dlsym(RTLD_NEXT, #name), r_##name))

static void init(void)
{
	const char *d = getenv("RKPOWER_DIR");
	if (!d || !*d || strlen(d) >= sizeof(undo_dir) - 64)
		return;
	strcpy(undo_dir, d);
	const char *r = getenv("RKPOWER_ROOT");
	if (r && *r) {
		if (!realpath(r, root))
			return; /* a root that does not exist: stay disabled rather than record everything */
		root_len = strlen(root);
		while (root_len > 1 && root[root_len - 1] == '/')
			root[--root_len] = 0;
	}
	enabled = 1;
}

static int on(void)
{
	pthread_once(&once, init);
	return enabled;
}

static void undo_path(char *p, size_t n, dev_t dev, ino_t ino)
{
	snprintf(p, n, "%s/%llu-%llu.undo", undo_dir, (unsigned long long)dev, (unsigned long long)ino);
}

/* fd is a recorded file: regular, linked, under the root; fills *st */
static int tracked(int fd, struct stat *st)
{
	if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode) || st->st_nlink == 0)
		return 0;
	if (!root_len)
		return 1;
	char lp[64], p[PATH_MAX];
	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(lp, p, sizeof(p) - 1);
	if (n <= 0)
		return 0;
	p[n] = 0;
	return strncmp(p, root, root_len) == 0 && (p[root_len] == '/' || p[root_len] == 0);
}

static int grow(size_t n)
{
	if (n <= buf_cap)
		return 0;
	uint8_t *nb = realloc(buf, n);
	if (!nb)
		return -1;
	buf = nb;
	buf_cap = n;
	return 0;
}

/* append one record for fd (under mu): the range [off, off + len) and the
 * size change the call is about to make */
static void record(int fd, const struct stat *st, int kind, uint64_t off, uint64_t len)
{
	uint64_t size = (uint64_t)st->st_size;
	struct rec r = { RKPU_MAGIC, (uint32_t)kind, size, off, len, 0 };
	if (off < size)
		r.nbytes = (len < size - off) ? len : size - off;
	if (r.nbytes && grow(r.nbytes) < 0)
		abort(); /* a record we cannot write would make the test lie */
	size_t got = 0;
	while (got < r.nbytes) {
		ssize_t n = RESOLVE(pread)(fd, buf + got, r.nbytes - got, (off_t)(off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			abort();
		got += (size_t)n;
	}
	char p[PATH_MAX];
	undo_path(p, sizeof(p), st->st_dev, st->st_ino);
	int ufd = RESOLVE(open)(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (ufd < 0)
		abort();
	struct iovec v[2] = { { &r, sizeof(r) }, { buf, r.nbytes } };
	ssize_t want = (ssize_t)(sizeof(r) + r.nbytes);
	if (RESOLVE(writev)(ufd, v, r.nbytes ? 2 : 1) != want)
		abort();
	RESOLVE(close)(ufd);
}

static uint64_t iov_len(const struct iovec *iov, int cnt)
{
	uint64_t t = 0;
	for (int i = 0; i < cnt; i++)
		t += iov[i].iov_len;
	return t;
}

/* the offset a write() / writev() will use */
static uint64_t cur_off(int fd, const struct stat *st)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && (fl & O_APPEND))
		return (uint64_t)st->st_size;
	off_t o = lseek(fd, 0, SEEK_CUR);
	return o < 0 ? 0 : (uint64_t)o;
}

/* BEGIN/END bracket a recorded call: lock, record when the fd is tracked */
/* Only recorded files take the lock: a write to /dev/fuse (a reply, or a
 * notification that may wait for the kernel) never waits for it. */
#define BEGIN(fd, kind, OFF, LEN)                                                        \
	int saved = errno;                                                               \
	int locked = 0;                                                                  \
	struct stat st_;                                                                 \
	if (on() && tracked(fd, &st_)) {                                                 \
		pthread_mutex_lock(&mu);                                                 \
		locked = 1;                                                              \
		if (fstat(fd, &st_) == 0) { /* the size, now that writes are ordered */ \
			struct stat *st = &st_;                                          \
			(void)st;                                                        \
			record(fd, &st_, kind, (OFF), (LEN));                            \
		}                                                                        \
	}                                                                                \
	errno = saved;
#define END()                                             \
	do {                                              \
		if (locked) {                             \
			int e_ = errno;                   \
			pthread_mutex_unlock(&mu);        \
			errno = e_;                       \
		}                                         \
	} while (0)

static ssize_t do_pwritev(ssize_t (*f)(int, const struct iovec *, int, off_t), int fd, const struct iovec *iov,
			  int cnt, off_t off)
{
	BEGIN(fd, K_WRITE, (uint64_t)off, iov_len(iov, cnt));
	ssize_t n = f(fd, iov, cnt, off);
	END();
	return n;
}

ssize_t pwrite(int fd, const void *b, size_t n, off_t off)
{
	BEGIN(fd, K_WRITE, (uint64_t)off, n);
	ssize_t r = RESOLVE(pwrite)(fd, b, n, off);
	END();
	return r;
}

ssize_t pwrite64(int fd, const void *b, size_t n, off_t off)
{
	BEGIN(fd, K_WRITE, (uint64_t)off, n);
	ssize_t r = RESOLVE(pwrite64)(fd, b, n, off);
	END();
	return r;
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	return do_pwritev(RESOLVE(pwritev), fd, iov, cnt, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
	return do_pwritev(RESOLVE(pwritev64), fd, iov, cnt, off);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	BEGIN(fd, K_WRITE, off == -1 ? cur_off(fd, st) : (uint64_t)off, iov_len(iov, cnt));
	ssize_t r = RESOLVE(pwritev2)(fd, iov, cnt, off, flags);
	END();
	return r;
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	BEGIN(fd, K_WRITE, off == -1 ? cur_off(fd, st) : (uint64_t)off, iov_len(iov, cnt));
	ssize_t r = RESOLVE(pwritev64v2)(fd, iov, cnt, off, flags);
	END();
	return r;
}

ssize_t write(int fd, const void *b, size_t n)
{
	BEGIN(fd, K_WRITE, cur_off(fd, st), n);
	ssize_t r = RESOLVE(write)(fd, b, n);
	END();
	return r;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	BEGIN(fd, K_WRITE, cur_off(fd, st), iov_len(iov, cnt));
	ssize_t r = RESOLVE(writev)(fd, iov, cnt);
	END();
	return r;
}

/* a truncate changes [min(old, new), max(old, new)) */
#define TRUNC_OFF(len) ((uint64_t)(len) < (uint64_t)st->st_size ? (uint64_t)(len) : (uint64_t)st->st_size)
#define TRUNC_LEN(len)                                                                   \
	((uint64_t)(len) < (uint64_t)st->st_size ? (uint64_t)st->st_size - (uint64_t)(len) \
						 : (uint64_t)(len) - (uint64_t)st->st_size)

int ftruncate(int fd, off_t len)
{
	BEGIN(fd, K_TRUNC, TRUNC_OFF(len), TRUNC_LEN(len));
	int r = RESOLVE(ftruncate)(fd, len);
	END();
	return r;
}

int ftruncate64(int fd, off_t len)
{
	BEGIN(fd, K_TRUNC, TRUNC_OFF(len), TRUNC_LEN(len));
	int r = RESOLVE(ftruncate64)(fd, len);
	END();
	return r;
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
	BEGIN(fd, K_FALLOC, (uint64_t)off, (uint64_t)len);
	int r = RESOLVE(fallocate)(fd, mode, off, len);
	END();
	return r;
}

int fallocate64(int fd, int mode, off_t off, off_t len)
{
	BEGIN(fd, K_FALLOC, (uint64_t)off, (uint64_t)len);
	int r = RESOLVE(fallocate64)(fd, mode, off, len);
	END();
	return r;
}

ssize_t copy_file_range(int in, off_t *in_off, int out, off_t *out_off, size_t n, unsigned int flags)
{
	BEGIN(out, K_WRITE, out_off ? (uint64_t)*out_off : cur_off(out, st), n);
	ssize_t r = RESOLVE(copy_file_range)(in, in_off, out, out_off, n, flags);
	END();
	return r;
}

/* ---- durability --------------------------------------------------------------------- */

/* Concurrent syncs of one inode: a sync drops the records made before it
 * started, by their offset in the undo file, but an earlier sync may have
 * cut a prefix off the file meanwhile.  So offsets are logical: the bytes
 * ever dropped from the inode's undo file (dropped[], per inode, under mu)
 * plus the offset in the file as it is now. */
#define NDROP 16384
static struct drop {
	dev_t dev;
	ino_t ino;
	off_t dropped;
	int used;
} drops[NDROP];

static off_t *dropped_of(dev_t dev, ino_t ino)
{
	size_t h = ((size_t)ino * 2654435761u + (size_t)dev) % NDROP;
	for (size_t i = 0; i < NDROP; i++, h = (h + 1) % NDROP) {
		struct drop *d = &drops[h];
		if (d->used && d->dev == dev && d->ino == ino)
			return &d->dropped;
		if (!d->used) {
			d->used = 1;
			d->dev = dev;
			d->ino = ino;
			d->dropped = 0;
			return &d->dropped;
		}
	}
	abort(); /* more inodes than a test makes */
}

static off_t undo_size(const char *p)
{
	struct stat us;
	return stat(p, &us) == 0 ? us.st_size : 0;
}

/* the records of the inode up to logical offset upto are durable (under mu):
 * drop them, keep the records appended after the sync started */
static void drop_prefix(const char *p, dev_t dev, ino_t ino, off_t upto)
{
	off_t *dropped = dropped_of(dev, ino);
	off_t cut = upto - *dropped, size = undo_size(p);
	if (cut <= 0 || size == 0)
		return;
	if (size <= cut) {
		RESOLVE(unlink)(p);
		*dropped += size;
		return;
	}
	char tmp[PATH_MAX + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", p);
	int in = RESOLVE(open)(p, O_RDONLY | O_CLOEXEC);
	int out = RESOLVE(open)(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (in < 0 || out < 0)
		abort();
	size_t rest = (size_t)(size - cut);
	if (grow(rest) < 0)
		abort();
	size_t got = 0;
	while (got < rest) {
		ssize_t n = RESOLVE(pread)(in, buf + got, rest - got, cut + (off_t)got);
		if (n <= 0)
			abort();
		got += (size_t)n;
	}
	if (RESOLVE(write)(out, buf, rest) != (ssize_t)rest)
		abort();
	RESOLVE(close)(in);
	RESOLVE(close)(out);
	if (RESOLVE(rename)(tmp, p) < 0)
		abort();
	*dropped += cut;
}

static int do_sync(int (*f)(int), int fd)
{
	int saved = errno;
	char p[PATH_MAX];
	off_t upto = -1;
	struct stat st;
	if (on() && tracked(fd, &st)) {
		pthread_mutex_lock(&mu);
		undo_path(p, sizeof(p), st.st_dev, st.st_ino);
		upto = *dropped_of(st.st_dev, st.st_ino) + undo_size(p);
		pthread_mutex_unlock(&mu);
	}
	errno = saved;
	int r = f(fd);
	if (r == 0 && upto > 0) {
		int e = errno;
		pthread_mutex_lock(&mu);
		drop_prefix(p, st.st_dev, st.st_ino, upto);
		pthread_mutex_unlock(&mu);
		errno = e;
	}
	return r;
}

int fsync(int fd)
{
	return do_sync(RESOLVE(fsync), fd);
}

int fdatasync(int fd)
{
	return do_sync(RESOLVE(fdatasync), fd);
}

#include <dirent.h>
/* every record is durable (under mu) */
static void drop_all(void)
{
	DIR *d = opendir(undo_dir);
	if (!d)
		return;
	struct dirent *e;
	char p[PATH_MAX];
	size_t n;
	while ((e = readdir(d))) {
		n = strlen(e->d_name);
		if (n > 5 && strcmp(e->d_name + n - 5, ".undo") == 0) {
			snprintf(p, sizeof(p), "%s/%s", undo_dir, e->d_name);
			unsigned long long dev, ino;
			off_t size = undo_size(p);
			if (sscanf(e->d_name, "%llu-%llu.undo", &dev, &ino) == 2 && size)
				*dropped_of((dev_t)dev, (ino_t)ino) += size;
			RESOLVE(unlink)(p);
		}
	}
	closedir(d);
}

int syncfs(int fd)
{
	int r = RESOLVE(syncfs)(fd);
	if (r == 0 && on()) {
		int e = errno;
		pthread_mutex_lock(&mu);
		drop_all();
		pthread_mutex_unlock(&mu);
		errno = e;
	}
	return r;
}

void sync(void)
{
	int e = errno;
	RESOLVE(sync)();
	if (on()) {
		pthread_mutex_lock(&mu);
		drop_all();
		pthread_mutex_unlock(&mu);
	}
	errno = e;
}

/* ---- names: forget the records of an inode whose last link goes away ------------ */
static void forget(int dirfd, const char *name)
{
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1) {
		char p[PATH_MAX];
		undo_path(p, sizeof(p), st.st_dev, st.st_ino);
		off_t size = undo_size(p);
		if (size) {
			RESOLVE(unlink)(p);
			*dropped_of(st.st_dev, st.st_ino) += size; /* offsets stay monotonic */
		}
	}
}

#define NAME_BEGIN(dirfd, name)                   \
	int saved = errno, locked = 0;            \
	if (on()) {                               \
		pthread_mutex_lock(&mu);          \
		locked = 1;                       \
		forget(dirfd, name);              \
	}                                         \
	errno = saved;

int unlink(const char *path)
{
	NAME_BEGIN(AT_FDCWD, path);
	int r = RESOLVE(unlink)(path);
	END();
	return r;
}

int unlinkat(int dirfd, const char *name, int flags)
{
	int saved = errno, locked = 0;
	if (on() && !(flags & AT_REMOVEDIR)) {
		pthread_mutex_lock(&mu);
		locked = 1;
		forget(dirfd, name);
	}
	errno = saved;
	int r = RESOLVE(unlinkat)(dirfd, name, flags);
	END();
	return r;
}

int rename(const char *from, const char *to)
{
	NAME_BEGIN(AT_FDCWD, to);
	int r = RESOLVE(rename)(from, to);
	END();
	return r;
}

int renameat(int fd1, const char *from, int fd2, const char *to)
{
	NAME_BEGIN(fd2, to);
	int r = RESOLVE(renameat)(fd1, from, fd2, to);
	END();
	return r;
}

int renameat2(int fd1, const char *from, int fd2, const char *to, unsigned int flags)
{
	int saved = errno, locked = 0;
	if (on() && !(flags & (RENAME_EXCHANGE | RENAME_NOREPLACE))) {
		pthread_mutex_lock(&mu);
		locked = 1;
		forget(fd2, to);
	}
	errno = saved;
	int r = RESOLVE(renameat2)(fd1, from, fd2, to, flags);
	END();
	return r;
}
