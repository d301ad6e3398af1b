/* rekeyfs - logging, secure memory and small I/O helpers. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/lockrank.h"

static int log_level = RK_LOG_INFO;
static int log_syslog;
static rk_log_fn log_handler;
static void *log_handler_arg;

void rk_log_to_syslog(const char *ident)
{
	openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
	log_syslog = 1;
}

void rk_log_set_level(int level) { log_level = level; }
int rk_log_get_level(void) { return log_level; }

void rk_log_set_handler(rk_log_fn fn, void *arg)
{
	log_handler = fn;
	log_handler_arg = arg;
}

void rk_log(int level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (level > log_level && !log_handler)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (log_handler) {
		log_handler(level, msg, log_handler_arg);
		return;
	}
	if (log_syslog) {
		syslog(level, "%s", msg);
		return;
	}
	const char *tag = level <= RK_LOG_ERR ? "error: " : level == RK_LOG_WARN ? "warning: " : "";
	fprintf(stderr, "%s: %s%s\n", program_invocation_short_name, tag, msg);
}

/* ---- secure memory -------------------------------------------------------- */
static size_t page_round(size_t len)
{
	long ps = sysconf(_SC_PAGESIZE);
	size_t p = ps > 0 ? (size_t)ps : 4096;
	return (len + p - 1) / p * p;
}

/* Small secrets (keys, derived subkeys: at most 64 bytes) come from a slab
 * of locked, undumpable pages, so that opening a file costs no mmap/mlock;
 * slots are wiped when freed and the pages stay mapped. */
#define SLAB_SLOT 64
static pthread_mutex_t slab_lock = PTHREAD_MUTEX_INITIALIZER; /* rank RK_RANK_SLAB (98, leaf): the slab */
static void *slab_free;

static void *slab_alloc(void)
{
	rk_mutex_lock(&slab_lock, RK_RANK_SLAB);
	if (!slab_free) {
		size_t plen = page_round(1);
		uint8_t *p = mmap(NULL, plen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			rk_mutex_unlock(&slab_lock);
			return NULL;
		}
		(void)madvise(p, plen, MADV_DONTDUMP);
		(void)mlock(p, plen);
		for (size_t off = 0; off + SLAB_SLOT <= plen; off += SLAB_SLOT) {
			*(void **)(p + off) = slab_free;
			slab_free = p + off;
		}
	}
	void *r = slab_free;
	slab_free = *(void **)r;
	rk_mutex_unlock(&slab_lock);
	memset(r, 0, SLAB_SLOT);
	return r;
}

static void slab_release(void *p)
{
	OPENSSL_cleanse(p, SLAB_SLOT);
	rk_mutex_lock(&slab_lock, RK_RANK_SLAB);
	*(void **)p = slab_free;
	slab_free = p;
	rk_mutex_unlock(&slab_lock);
}

void *rk_secure_alloc(size_t len)
{
	if (len <= SLAB_SLOT)
		return slab_alloc();
	size_t plen = page_round(len ? len : 1);
	void *p = mmap(NULL, plen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	(void)madvise(p, plen, MADV_DONTDUMP);
	(void)mlock(p, plen); /* best effort: RLIMIT_MEMLOCK may forbid it */
	return p;
}

void rk_secure_free(void *p, size_t len)
{
	if (!p)
		return;
	if (len <= SLAB_SLOT) {
		slab_release(p);
		return;
	}
	size_t plen = page_round(len ? len : 1);
	OPENSSL_cleanse(p, plen);
	(void)munlock(p, plen);
	munmap(p, plen);
}

void rk_harden_process(void)
{
	struct rlimit rl = {0, 0};
	(void)setrlimit(RLIMIT_CORE, &rl);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

/* ---- crash points ------------------------------------------------------------ */
#include <signal.h>
#include <stdatomic.h>
static pthread_once_t crash_once = PTHREAD_ONCE_INIT;
static char crash_name[128];
static long crash_target = 1;
static atomic_long crash_hits;

static void crash_init(void)
{
	const char *env = getenv("REKEYFS_CRASHPOINT");
	if (!env || !*env)
		return;
	snprintf(crash_name, sizeof(crash_name), "%s", env);
	char *colon = strrchr(crash_name, ':');
	if (colon) {
		*colon = '\0';
		crash_target = strtol(colon + 1, NULL, 10);
		if (crash_target < 1)
			crash_target = 1;
	}
}

void rk_crashpoint(const char *name)
{
	pthread_once(&crash_once, crash_init);
	if (!crash_name[0])
		return;
	size_t n = strlen(crash_name);
	bool match = (n > 0 && crash_name[n - 1] == '*') ? strncmp(name, crash_name, n - 1) == 0
	                                                 : strcmp(name, crash_name) == 0;
	if (match && atomic_fetch_add(&crash_hits, 1) + 1 == crash_target) {
		fprintf(stderr, "crash point %s reached: killing process %ld\n", name, (long)getpid());
		kill(getpid(), SIGKILL);
		pause();
	}
}

/* ---- I/O helpers ------------------------------------------------------------ */
ssize_t rk_pread_full(int fd, void *buf, size_t len, off_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

int rk_pwrite_full(int fd, const void *buf, size_t len, off_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = pwrite(fd, (const char *)buf + done, len - done, off + (off_t)done);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		done += (size_t)n;
	}
	return 0;
}

int rk_read_small_file(int dirfd, const char *name, char **out, size_t *len, size_t max)
{
	int ret = 0;
	char *buf = NULL;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EINVAL;
		goto out;
	}
	if ((size_t)st.st_size > max) {
		ret = -EFBIG;
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	ssize_t n = rk_pread_full(fd, buf, (size_t)st.st_size, 0);
	if (n < 0) {
		ret = (int)n;
		goto out;
	}
	buf[n] = '\0';
	*out = buf;
	if (len)
		*len = (size_t)n;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return ret;
}

int rk_fsync_dir(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int ret = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return ret;
}

int rk_write_file_atomic(int dirfd, const char *name, const void *buf, size_t len, mode_t mode)
{
	char tmp[PATH_MAX];
	int ret, fd;
	uint8_t rnd[6];
	char hex[13];

	if (rk_random(rnd, sizeof(rnd)) < 0)
		return -EIO;
	rk_hex(hex, rnd, sizeof(rnd));
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%s", name, hex) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return -errno;
	ret = rk_pwrite_full(fd, buf, len, 0);
	if (ret == 0 && fchmod(fd, mode) < 0)
		ret = -errno;
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (close(fd) < 0 && ret == 0)
		ret = -errno;
	if (ret == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		ret = -errno;
	if (ret < 0) {
		unlinkat(dirfd, tmp, 0);
		return ret;
	}
	return rk_fsync_dir(dirfd);
}

void rk_hex(char *out, const uint8_t *in, size_t len)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int rk_unhex(uint8_t *out, size_t outlen, const char *in)
{
	if (strlen(in) != 2 * outlen)
		return -EINVAL;
	for (size_t i = 0; i < outlen; i++) {
		int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

const char *rk_strerror(int neg_errno)
{
	switch (-neg_errno) {
	case EUCLEAN:
		return "corrupt data (authentication or checksum failed)";
	case ENOKEY:
		return "key not found in the key directory";
	case EKEYREVOKED:
		return "key has been released";
	case EKEYREJECTED:
		return "key file content does not match its recorded fingerprint";
	case EPROTONOSUPPORT:
		return "unsupported format version";
	case ENOMSG:
		return "not a rekeyfs chunk file";
	default:
		return strerror(-neg_errno);
	}
}
