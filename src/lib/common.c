/* rekeyfs - logging, secure memory and small I/O helpers. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/lockrank.h"

static int log_level = RK_LOG_INFO;
static int log_syslog;
static int log_fd = -1; /* rk_log_to_fd: lines go to this descriptor */
static bool log_stamp;
static rk_log_fn log_handler;
static void *log_handler_arg;

void rk_log_to_syslog(const char *ident)
{
	openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
	log_syslog = 1;
	log_fd = -1;
}

void rk_log_to_fd(int fd, bool stamp)
{
	log_fd = fd;
	log_stamp = stamp;
	log_syslog = 0;
}

/* one line, one write(): lines of several threads never interleave in a
 * file opened O_APPEND */
static void log_write_fd(const char *tag, const char *msg)
{
	char line[1200], when[32] = "";
	int n;
	if (log_stamp) {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		n = snprintf(line, sizeof(line), "%s %s[%ld]: %s%s\n", when, program_invocation_short_name,
		             (long)getpid(), tag, msg);
	} else {
		n = snprintf(line, sizeof(line), "%s: %s%s\n", program_invocation_short_name, tag, msg);
	}
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line)) {
		n = (int)sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	while (write(log_fd, line, (size_t)n) < 0 && errno == EINTR)
		;
}

void rk_log_set_level(int level) { log_level = level; }
int rk_log_get_level(void) { return log_level; }

/* muted by this thread only (rk_log_mute): other threads keep logging */
static __thread int log_muted;
void rk_log_mute(bool on) { log_muted += on ? 1 : -1; }

void rk_log_set_handler(rk_log_fn fn, void *arg)
{
	log_handler = fn;
	log_handler_arg = arg;
}

void rk_log(int level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if ((level > log_level || log_muted > 0) && !log_handler)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* messages name files and keys read from disk: never let a control
	 * character reach a terminal or the system log */
	char raw[sizeof(msg)];
	memcpy(raw, msg, sizeof(msg));
	rk_escape_ctl(msg, sizeof(msg), raw);
	if (log_handler) {
		log_handler(level, msg, log_handler_arg);
		return;
	}
	if (log_syslog) {
		syslog(level, "%s", msg);
		return;
	}
	const char *tag = level <= RK_LOG_ERR ? "error: " : level == RK_LOG_WARN ? "warning: " : "";
	if (log_fd >= 0) {
		log_write_fd(tag, msg);
		return;
	}
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
static pthread_mutex_t slab_lock = PTHREAD_MUTEX_INITIALIZER; /* rank RK_RANK_SLAB (98, leaf): the slab (slab_free and the list of slab pages) */
static void *slab_free;
static void **slab_pages;
static size_t slab_npages, slab_cap;

static void *slab_alloc(void)
{
	rk_mutex_lock(&slab_lock, RK_RANK_SLAB);
	if (!slab_free) {
		size_t plen = page_round(1);
		if (slab_npages == slab_cap) {
			size_t nc = slab_cap ? slab_cap * 2 : 16;
			void **np = realloc(slab_pages, nc * sizeof(*np));
			if (!np) {
				rk_mutex_unlock(&slab_lock);
				return NULL;
			}
			slab_pages = np;
			slab_cap = nc;
		}
		uint8_t *p = mmap(NULL, plen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			rk_mutex_unlock(&slab_lock);
			return NULL;
		}
		(void)madvise(p, plen, MADV_DONTDUMP);
		(void)mlock(p, plen);
		slab_pages[slab_npages++] = p;
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

int rk_secure_relock(void)
{
	int ret = 0;
	size_t plen = page_round(1);
	rk_mutex_lock(&slab_lock, RK_RANK_SLAB);
	for (size_t i = 0; i < slab_npages; i++) {
		(void)madvise(slab_pages[i], plen, MADV_DONTDUMP);
		if (mlock(slab_pages[i], plen) < 0 && ret == 0)
			ret = -errno;
	}
	rk_mutex_unlock(&slab_lock);
	return ret;
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

int rk_pwrite_zeros(int fd, uint64_t from, uint64_t to)
{
	static const uint8_t zeros[64 * 1024];
	while (from < to) {
		size_t n = (size_t)RK_MIN((uint64_t)sizeof(zeros), to - from);
		int ret = rk_pwrite_full(fd, zeros, n, (off_t)from);
		if (ret < 0)
			return ret;
		from += n;
	}
	return 0;
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
	/* O_NONBLOCK: a FIFO put in place of a small state file is refused
	 * below (not a regular file), never waited on */
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
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

int rk_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int rk_pct_encode(const char *in, char *out, size_t len)
{
	static const char hx[] = "0123456789ABCDEF";
	size_t o = 0;
	int ret = 0;
	if (len == 0)
		return -ENAMETOOLONG;
	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		bool enc = *p <= 0x20 || *p == '%' || *p == 0x7f;
		if (o + (enc ? 3 : 1) + 1 > len) {
			ret = -ENAMETOOLONG;
			break;
		}
		if (enc) {
			out[o++] = '%';
			out[o++] = hx[*p >> 4];
			out[o++] = hx[*p & 15];
		} else {
			out[o++] = (char)*p;
		}
	}
	out[o] = '\0';
	return ret;
}

int rk_pct_decode(char *s)
{
	char *o = s;
	int ret = 0;
	for (const char *i = s; *i; i++) {
		if (*i != '%') {
			*o++ = *i;
			continue;
		}
		/* exactly two hex digits: no sign, space or "0x" (sscanf's %2x
		 * took "%-1", "% 1" and "%1g" and skipped a byte) */
		int hi = rk_hexval(i[1]), lo = hi < 0 ? -1 : rk_hexval(i[2]);
		if (hi < 0 || lo < 0 || (hi | lo) == 0) {
			ret = -EINVAL;
			break;
		}
		*o++ = (char)(hi << 4 | lo);
		i += 2;
	}
	*o = '\0';
	return ret;
}

int rk_unhex(uint8_t *out, size_t outlen, const char *in)
{
	if (strlen(in) != 2 * outlen)
		return -EINVAL;
	for (size_t i = 0; i < outlen; i++) {
		int hi = rk_hexval(in[2 * i]), lo = rk_hexval(in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int rk_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	if (!s || !*s)
		return -EINVAL;
	if (s[0] == '0' && s[1] != '\0')
		return -EINVAL; /* no leading zeros: "010" is not ten (nor eight) */
	/* the whole string is checked before its value: "99999999999999999999x"
	 * is not a number (-EINVAL), not a number too large (found by
	 * tests/fuzz/fuzz_control.c) */
	for (const char *p = s; *p; p++)
		if (*p < '0' || *p > '9')
			return -EINVAL; /* no sign, no space, no suffix */
	for (const char *p = s; *p; p++) {
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	if (v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

int rk_parse_rate(const char *s, uint64_t *bytes_per_s)
{
	static const struct {
		const char *sfx;
		uint64_t mul;
	} units[] = {{"", 1},          {"k", 1ULL << 10},    {"m", 1ULL << 20},    {"g", 1ULL << 30},
	             {"kib", 1ULL << 10}, {"mib", 1ULL << 20}, {"gib", 1ULL << 30}, {"kb", 1000ULL},
	             {"mb", 1000000ULL},  {"gb", 1000000000ULL}};
	char num[24];
	size_t n = 0;
	uint64_t v, mul = 0;
	int ret = -EINVAL;
	if (!s)
		goto out;
	if (strcasecmp(s, "unlimited") == 0) {
		*bytes_per_s = 0;
		ret = 0;
		goto out;
	}
	while (s[n] >= '0' && s[n] <= '9')
		n++;
	if (n == 0 || n >= sizeof(num))
		goto out; /* no digits, or more than any rate has */
	memcpy(num, s, n);
	num[n] = '\0';
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcasecmp(s + n, units[i].sfx) == 0)
			mul = units[i].mul;
	if (mul == 0)
		goto out; /* unknown suffix, trailing junk */
	ret = rk_parse_u64(num, RK_RATE_MAX, &v);
	if (ret < 0)
		goto out;
	if (v > RK_RATE_MAX / mul) {
		ret = -ERANGE;
		goto out;
	}
	*bytes_per_s = v * mul;
out:
	return ret;
}

int rk_utf8_len(const unsigned char *p)
{
	int n = p[0] < 0x80 ? 1 : (p[0] & 0xe0) == 0xc0 ? 2 : (p[0] & 0xf0) == 0xe0 ? 3 : (p[0] & 0xf8) == 0xf0 ? 4 : 0;
	if (n == 0 || (n == 2 && p[0] < 0xc2) || (n == 4 && p[0] > 0xf4))
		return 0;
	for (int i = 1; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	if ((n == 3 && p[0] == 0xe0 && p[1] < 0xa0) || (n == 3 && p[0] == 0xed && p[1] >= 0xa0) ||
	    (n == 4 && p[0] == 0xf0 && p[1] < 0x90) || (n == 4 && p[0] == 0xf4 && p[1] >= 0x90))
		return 0; /* overlong, surrogate, beyond U+10FFFF */
	return n;
}

char *rk_escape_ctl(char *out, size_t outlen, const char *in)
{
	static const char digits[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)(in ? in : "(null)");
	size_t o = 0;
	if (outlen == 0)
		return out;
	while (*p) {
		char e[16];
		size_t n;
		int l = rk_utf8_len(p);
		/* C0 controls, DEL, C1 controls (U+0080..U+009F, which some terminals
		 * obey as CSI/OSC) and bytes that are not valid UTF-8: \xHH */
		if (l == 0 || *p < 0x20 || *p == 0x7f || (l == 2 && p[0] == 0xc2 && p[1] < 0xa0)) {
			int cnt = l == 2 ? 2 : 1;
			n = 0;
			for (int i = 0; i < cnt; i++) {
				e[n++] = '\\';
				e[n++] = 'x';
				e[n++] = digits[p[i] >> 4];
				e[n++] = digits[p[i] & 15];
			}
			l = cnt;
		} else if (*p == '\\') {
			e[0] = e[1] = '\\';
			n = 2;
		} else {
			memcpy(e, p, (size_t)l);
			n = (size_t)l;
		}
		if (o + n + 1 > outlen) {
			/* truncated: mark it, never cut an escape or a character in two */
			const char *mark = "...";
			size_t written = o;
			while (o > 0 && o + 4 > outlen)
				o--;
			/* out[o] is looked at only when it was written: past that it
			 * is the caller's uninitialised buffer (valgrind, scripts/valgrind) */
			while (o > 0 && o < written && ((unsigned char)out[o] & 0xc0) == 0x80)
				o--;
			if (o + 4 <= outlen) {
				memcpy(out + o, mark, 3);
				o += 3;
			}
			break;
		}
		memcpy(out + o, e, n);
		o += n;
		p += l;
	}
	out[o] = '\0';
	return out;
}

/* a small ring of per-thread buffers so that one printf may escape several
 * strings */
#define ESC_RING 8
static __thread char *esc_ring[ESC_RING];
static __thread unsigned esc_next;
static pthread_key_t esc_key;
static pthread_once_t esc_once = PTHREAD_ONCE_INIT;

static void esc_free(void *p)
{
	char **ring = p;
	for (int i = 0; i < ESC_RING; i++) {
		free(ring[i]);
		ring[i] = NULL;
	}
}

static void esc_key_init(void) { (void)pthread_key_create(&esc_key, esc_free); }

const char *rk_esc(const char *s)
{
	static const char fallback[] = "(out of memory)";
	pthread_once(&esc_once, esc_key_init);
	unsigned i = esc_next++ % ESC_RING;
	if (!esc_ring[i]) {
		esc_ring[i] = malloc(RK_ESC_MAX);
		if (!esc_ring[i])
			return fallback;
		(void)pthread_setspecific(esc_key, esc_ring);
	}
	return rk_escape_ctl(esc_ring[i], RK_ESC_MAX, s);
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

int rk_dirs_trusted(const char *file, char *why, size_t len)
{
	struct stat st;
	uid_t me = geteuid();
	char dir[PATH_MAX];
	int ret = 0;
	snprintf(dir, sizeof(dir), "%s", file);
	for (char *slash = strrchr(dir, '/'); ret == 0 && slash; slash = strrchr(dir, '/')) {
		if (slash == dir) {
			if (dir[1] == '\0')
				break;
			dir[1] = '\0';
		} else {
			*slash = '\0';
		}
		if (stat(dir, &st) < 0) {
			ret = -errno;
			snprintf(why, len, "cannot stat directory %s: %s", dir, strerror(-ret));
		} else if (st.st_uid != 0 && st.st_uid != me) {
			snprintf(why, len, "directory %s is owned by uid %u, not by root or by this process's user (run: chown %u %s)",
			         dir, (unsigned)st.st_uid, (unsigned)me, dir);
			ret = -EPERM;
		} else if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX)) {
			snprintf(why, len,
			         "directory %s has mode %04o, writable by group or others, who could replace it (run: chmod go-w %s)",
			         dir, (unsigned)(st.st_mode & 07777), dir);
			ret = -EPERM;
		}
	}
	return ret;
}
