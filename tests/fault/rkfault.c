/*
 * rkfault.so: an LD_PRELOAD shim that makes the backing filesystem fail on
 * demand, for the fault-injection tests (tests/integration/test_faults.sh)
 * and for debugging by hand.
 *
 * Wrapped calls (and the aliases glibc exports): pread (pread64), pwrite
 * (pwrite64, pwritev, pwritev64), write, fsync, fdatasync, rename (renameat,
 * renameat2), openat (open, open64, openat64), ftruncate (ftruncate64).
 * close, dup2 and dup3 are wrapped only to keep the fd -> path cache right.
 *
 * Rules, one a line (in $REKEYFS_FAULT, ';' or newline separated, read at
 * start; and in the file named by $REKEYFS_FAULT_CTL, re-read whenever it
 * is replaced: write a temporary and rename it over the file):
 *
 *     OP PATTERN N ERRNO [once|always]
 *
 *   OP       pread, pwrite, write, fsync, fdatasync, rename, openat,
 *            ftruncate, or '*' (any of them)
 *   PATTERN  '*' (any path), a glob (fnmatch, when it has * ? or [), else a
 *            substring of the path.  The path is the absolute path of the
 *            fd (readlink of /proc/self/fd/N, cached per fd until close,
 *            dup2/dup3 or a rename), or of the name given to openat/rename
 *            (either name of a rename matches)
 *   N        the rule counts its matching calls; the Nth fails
 *   ERRNO    EIO, ENOSPC, EDQUOT, EROFS, EFBIG, EBADF, EINTR or a number
 *   once     only the Nth call fails (default); always: the Nth and every
 *            later matching call fail
 *
 * Lines starting with '#' are comments.  A new rule set starts every count
 * from zero.  Each failure is appended to $REKEYFS_FAULT_LOG (when set) as
 * "fired OP ERRNO PATH", and each rule set loaded as "loaded N rules".
 *
 * Nothing happens unless a rule matches: without rules every call goes
 * straight to the next definition (libc, or the sanitizer's interceptor).
 * Built without sanitizers; to preload into an ASan binary put the ASan
 * runtime first: LD_PRELOAD="$(libasan path) rkfault.so" (see the test).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum op { OP_PREAD, OP_PWRITE, OP_WRITE, OP_FSYNC, OP_FDATASYNC, OP_RENAME, OP_OPENAT, OP_FTRUNCATE, OP_ANY, OP_N };
static const char *const op_names[OP_N] = { "pread", "pwrite", "write", "fsync", "fdatasync",
					    "rename", "openat", "ftruncate", "*" };

#define MAX_RULES 32
#define MAX_PAT 256
struct rule {
	enum op op;
	char pat[MAX_PAT];
	int glob;
	unsigned long n, count;
	int err;
	int always;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES];
static int nrules;
static int inited;
static const char *ctl_path;
static const char *log_path;
static struct stat ctl_st; /* the control file last loaded */
static int ctl_seen;
static __thread int in_shim; /* our own calls are not counted */

#define FD_CACHE 4096
static char *fd_path[FD_CACHE];

/* the real functions */
static ssize_t (*r_pread)(int, void *, size_t, off_t);
static ssize_t (*r_pread64)(int, void *, size_t, off_t);
static ssize_t (*r_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*r_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*r_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*r_pwritev64)(int, const struct iovec *, int, off_t);
static ssize_t (*r_write)(int, const void *, size_t);
static int (*r_fsync)(int);
static int (*r_fdatasync)(int);
static int (*r_rename)(const char *, const char *);
static int (*r_renameat)(int, const char *, int, const char *);
static int (*r_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*r_open)(const char *, int, ...);
static int (*r_open64)(const char *, int, ...);
static int (*r_openat)(int, const char *, int, ...);
static int (*r_openat64)(int, const char *, int, ...);
static int (*r_ftruncate)(int, off_t);
static int (*r_ftruncate64)(int, off_t);
static int (*r_close)(int);
static int (*r_dup2)(int, int);
static int (*r_dup3)(int, int, int);

#define RESOLVE(name) (r_##name ? r_##name : (*(void **)&r_##name = dlsym(RTLD_NEXT, #name), r_##name))

static int parse_errno(const char *s)
{
	static const struct {
		const char *name;
		int err;
	} tab[] = { { "EIO", EIO },     { "ENOSPC", ENOSPC }, { "EDQUOT", EDQUOT }, { "EROFS", EROFS },
		    { "EFBIG", EFBIG }, { "EBADF", EBADF },   { "EINTR", EINTR },   { "EAGAIN", EAGAIN } };
	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
		if (strcmp(s, tab[i].name) == 0)
			return tab[i].err;
	char *end;
	long v = strtol(s, &end, 10);
	return (*s && !*end && v > 0 && v < 4096) ? (int)v : 0;
}

static void log_line(const char *fmt, ...)
{
	if (!log_path)
		return;
	char buf[PATH_MAX + 128];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	int fd = RESOLVE(open)(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd >= 0) {
		(void)!RESOLVE(write)(fd, buf, (size_t)n);
		RESOLVE(close)(fd);
	}
}

/* parse rule text (lines or ';'-separated); replaces the rule set */
static void load_rules(const char *text)
{
	nrules = 0;
	char *copy = strdup(text);
	if (!copy)
		return;
	char *save = NULL;
	for (char *line = strtok_r(copy, "\n;", &save); line; line = strtok_r(NULL, "\n;", &save)) {
		char op[32], pat[MAX_PAT], err[32], mode[32] = "once";
		unsigned long n;
		while (*line == ' ' || *line == '\t')
			line++;
		if (*line == '#' || *line == '\0')
			continue;
		int k = sscanf(line, "%31s %255s %lu %31s %31s", op, pat, &n, err, mode);
		struct rule r = { .op = OP_N };
		for (int i = 0; i < OP_N; i++)
			if (strcmp(op, op_names[i]) == 0)
				r.op = (enum op)i;
		r.err = k >= 4 ? parse_errno(err) : 0;
		if (k < 4 || r.op == OP_N || n == 0 || r.err == 0 || nrules == MAX_RULES ||
		    (strcmp(mode, "once") != 0 && strcmp(mode, "always") != 0)) {
			log_line("bad rule: %s", line);
			continue;
		}
		memcpy(r.pat, pat, sizeof(r.pat));
		r.glob = strpbrk(pat, "*?[") != NULL;
		r.n = n;
		r.always = strcmp(mode, "always") == 0;
		rules[nrules++] = r;
	}
	free(copy);
	log_line("loaded %d rules", nrules);
}

/* with mu held: the environment at the first call, the control file when replaced */
static void refresh(void)
{
	if (!inited) {
		inited = 1;
		ctl_path = getenv("REKEYFS_FAULT_CTL");
		log_path = getenv("REKEYFS_FAULT_LOG");
		const char *env = getenv("REKEYFS_FAULT");
		if (env)
			load_rules(env);
	}
	if (!ctl_path)
		return;
	struct stat st;
	if (stat(ctl_path, &st) < 0)
		return;
	if (ctl_seen && st.st_ino == ctl_st.st_ino && st.st_size == ctl_st.st_size &&
	    st.st_mtim.tv_sec == ctl_st.st_mtim.tv_sec && st.st_mtim.tv_nsec == ctl_st.st_mtim.tv_nsec)
		return;
	int fd = RESOLVE(open)(ctl_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	char buf[8192];
	ssize_t n = RESOLVE(pread)(fd, buf, sizeof(buf) - 1, 0);
	RESOLVE(close)(fd);
	if (n < 0)
		return;
	buf[n] = '\0';
	ctl_st = st;
	ctl_seen = 1;
	load_rules(buf);
}

/* with mu held: the path of fd (cached), or NULL */
static const char *fd_name(int fd, char *buf, size_t len)
{
	if (fd >= 0 && fd < FD_CACHE && fd_path[fd])
		return fd_path[fd];
	char proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(proc, buf, len - 1);
	if (n < 0)
		return NULL;
	buf[n] = '\0';
	if (fd >= 0 && fd < FD_CACHE)
		fd_path[fd] = strdup(buf);
	return buf;
}

static void forget_fd(int fd)
{
	if (fd < 0 || fd >= FD_CACHE)
		return;
	pthread_mutex_lock(&mu);
	free(fd_path[fd]);
	fd_path[fd] = NULL;
	pthread_mutex_unlock(&mu);
}

static void forget_all(void)
{
	pthread_mutex_lock(&mu);
	for (int i = 0; i < FD_CACHE; i++) {
		free(fd_path[i]);
		fd_path[i] = NULL;
	}
	pthread_mutex_unlock(&mu);
}

/* with mu held: the name (dirfd, name) as an absolute path */
static const char *at_name(int dirfd, const char *name, char *buf, size_t len)
{
	if (!name)
		return NULL;
	if (name[0] == '/' || dirfd == AT_FDCWD) {
		if (name[0] == '/')
			return name;
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof(cwd)))
			return name;
		snprintf(buf, len, "%s/%s", cwd, name);
		return buf;
	}
	char dir[PATH_MAX];
	const char *d = fd_name(dirfd, dir, sizeof(dir));
	if (!d)
		return name;
	snprintf(buf, len, "%s/%s", d, name);
	return buf;
}

static int path_match(const struct rule *r, const char *p)
{
	if (strcmp(r->pat, "*") == 0)
		return 1;
	if (!p)
		return 0;
	return r->glob ? fnmatch(r->pat, p, 0) == 0 : strstr(p, r->pat) != NULL;
}

/*
 * Does this call fail?  Returns the errno to fail with, or 0.  The paths
 * are given either as an fd (path1 == NULL, fd >= 0) or as up to two
 * (dirfd, name) pairs.
 */
static int fault(enum op op, int fd, int d1, const char *n1, int d2, const char *n2)
{
	if (in_shim)
		return 0;
	in_shim = 1;
	int err = 0;
	pthread_mutex_lock(&mu);
	refresh();
	if (nrules > 0) {
		char b1[PATH_MAX * 2], b2[PATH_MAX * 2];
		const char *p1 = NULL, *p2 = NULL;
		int resolved = 0;
		for (int i = 0; i < nrules && !err; i++) {
			struct rule *r = &rules[i];
			if (r->op != op && r->op != OP_ANY)
				continue;
			if (!resolved && strcmp(r->pat, "*") != 0) {
				resolved = 1;
				if (n1) {
					p1 = at_name(d1, n1, b1, sizeof(b1));
					p2 = n2 ? at_name(d2, n2, b2, sizeof(b2)) : NULL;
				} else {
					p1 = fd_name(fd, b1, sizeof(b1));
				}
			}
			if (!path_match(r, p1) && !(p2 && path_match(r, p2)))
				continue;
			r->count++;
			if (r->count == r->n || (r->always && r->count > r->n)) {
				err = r->err;
				log_line("fired %s %s %s", op_names[op], strerror(err),
					 p1 ? p1 : (n1 ? n1 : "?"));
			}
		}
	}
	pthread_mutex_unlock(&mu);
	in_shim = 0;
	return err;
}

#define FAIL_IF(e)              \
	do {                    \
		int e_ = (e);   \
		if (e_) {       \
			errno = e_; \
			return -1;  \
		}               \
	} while (0)

ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
	FAIL_IF(fault(OP_PREAD, fd, 0, NULL, 0, NULL));
	return RESOLVE(pread)(fd, buf, len, off);
}
ssize_t pread64(int fd, void *buf, size_t len, off_t off)
{
	FAIL_IF(fault(OP_PREAD, fd, 0, NULL, 0, NULL));
	return RESOLVE(pread64)(fd, buf, len, off);
}
ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
	FAIL_IF(fault(OP_PWRITE, fd, 0, NULL, 0, NULL));
	return RESOLVE(pwrite)(fd, buf, len, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
	FAIL_IF(fault(OP_PWRITE, fd, 0, NULL, 0, NULL));
	return RESOLVE(pwrite64)(fd, buf, len, off);
}
ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	FAIL_IF(fault(OP_PWRITE, fd, 0, NULL, 0, NULL));
	return RESOLVE(pwritev)(fd, iov, n, off);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off)
{
	FAIL_IF(fault(OP_PWRITE, fd, 0, NULL, 0, NULL));
	return RESOLVE(pwritev64)(fd, iov, n, off);
}
ssize_t write(int fd, const void *buf, size_t len)
{
	/* stdout/stderr (the daemon's log) are never failed */
	if (fd > 2)
		FAIL_IF(fault(OP_WRITE, fd, 0, NULL, 0, NULL));
	return RESOLVE(write)(fd, buf, len);
}
int fsync(int fd)
{
	FAIL_IF(fault(OP_FSYNC, fd, 0, NULL, 0, NULL));
	return RESOLVE(fsync)(fd);
}
int fdatasync(int fd)
{
	FAIL_IF(fault(OP_FDATASYNC, fd, 0, NULL, 0, NULL));
	return RESOLVE(fdatasync)(fd);
}
int ftruncate(int fd, off_t len)
{
	FAIL_IF(fault(OP_FTRUNCATE, fd, 0, NULL, 0, NULL));
	return RESOLVE(ftruncate)(fd, len);
}
int ftruncate64(int fd, off_t len)
{
	FAIL_IF(fault(OP_FTRUNCATE, fd, 0, NULL, 0, NULL));
	return RESOLVE(ftruncate64)(fd, len);
}
int rename(const char *a, const char *b)
{
	FAIL_IF(fault(OP_RENAME, -1, AT_FDCWD, a, AT_FDCWD, b));
	int ret = RESOLVE(rename)(a, b);
	if (ret == 0)
		forget_all();
	return ret;
}
int renameat(int da, const char *a, int db, const char *b)
{
	FAIL_IF(fault(OP_RENAME, -1, da, a, db, b));
	int ret = RESOLVE(renameat)(da, a, db, b);
	if (ret == 0)
		forget_all();
	return ret;
}
int renameat2(int da, const char *a, int db, const char *b, unsigned int flags)
{
	FAIL_IF(fault(OP_RENAME, -1, da, a, db, b));
	int ret = RESOLVE(renameat2)(da, a, db, b, flags);
	if (ret == 0)
		forget_all();
	return ret;
}

static mode_t mode_arg(int flags, va_list ap)
{
	return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, unsigned int) : 0;
}
int open(const char *p, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t m = mode_arg(flags, ap);
	va_end(ap);
	FAIL_IF(fault(OP_OPENAT, -1, AT_FDCWD, p, 0, NULL));
	int fd = RESOLVE(open)(p, flags, m);
	forget_fd(fd);
	return fd;
}
int open64(const char *p, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t m = mode_arg(flags, ap);
	va_end(ap);
	FAIL_IF(fault(OP_OPENAT, -1, AT_FDCWD, p, 0, NULL));
	int fd = RESOLVE(open64)(p, flags, m);
	forget_fd(fd);
	return fd;
}
int openat(int d, const char *p, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t m = mode_arg(flags, ap);
	va_end(ap);
	FAIL_IF(fault(OP_OPENAT, -1, d, p, 0, NULL));
	int fd = RESOLVE(openat)(d, p, flags, m);
	forget_fd(fd);
	return fd;
}
int openat64(int d, const char *p, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t m = mode_arg(flags, ap);
	va_end(ap);
	FAIL_IF(fault(OP_OPENAT, -1, d, p, 0, NULL));
	int fd = RESOLVE(openat64)(d, p, flags, m);
	forget_fd(fd);
	return fd;
}
int close(int fd)
{
	forget_fd(fd);
	return RESOLVE(close)(fd);
}
int dup2(int a, int b)
{
	int ret = RESOLVE(dup2)(a, b);
	if (ret >= 0)
		forget_fd(ret);
	return ret;
}
int dup3(int a, int b, int flags)
{
	int ret = RESOLVE(dup3)(a, b, flags);
	if (ret >= 0)
		forget_fd(ret);
	return ret;
}
