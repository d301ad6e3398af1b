/* rekeyfs unit tests - shared helpers. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/keys.h"

/* ---- temporary directories ------------------------------------------------------ */
void tu_mkdtemp(char *out)
{
	snprintf(out, PATH_MAX, "/tmp/rekeyfs-test-XXXXXX");
	if (!mkdtemp(out))
		fail_msg("mkdtemp: %s", strerror(errno));
}

static int rm_cb(const char *p, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (type == FTW_DP || type == FTW_D || type == FTW_DNR)
		return rmdir(p) < 0 ? -1 : 0;
	return unlink(p) < 0 ? -1 : 0;
}

int tu_rmrf(const char *path)
{
	struct stat st;
	if (!path || !*path)
		return 0;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS) < 0)
		return -errno;
	return 0;
}

void tu_path(char *out, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(out, PATH_MAX, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= PATH_MAX)
		fail_msg("path too long");
}

/* ---- the common fixture ------------------------------------------------------------- */
int tu_fx_init(struct tu_fx *f, const struct tu_fx_opts *o)
{
	struct rk_key **slot[] = {&f->ka, &f->kb, &f->kc, &f->kd};
	if (o->nkeys > RK_ARRAY_SIZE(slot))
		fail_msg("tu_fx_init: at most %zu keys", RK_ARRAY_SIZE(slot));
	tu_mkdtemp(f->dir);
	tu_path(f->keydir, "%s/keys", f->dir);
	tu_path(f->data, "%s/data", f->dir);
	if ((o->mkdata || o->init_chunk) && mkdir(f->data, 0755) < 0)
		return -1;
	tu_log_start();
	for (size_t i = 0; i < o->nkeys; i++)
		tu_key_create(f->keydir, o->keys[i].cipher, o->keys[i].bits, o->keys[i].name);
	if (o->keyring || o->init_chunk) {
		if (rk_keyring_new(f->keydir, &f->kr))
			return -1;
		for (size_t i = 0; i < o->nkeys; i++)
			if (rk_keyring_get(f->kr, o->keys[i].name, slot[i]))
				return -1;
	}
	if (o->init_chunk && (!f->ka || rk_datadir_init(f->data, f->ka, o->init_chunk, o->init_comp)))
		return -1;
	return 0;
}

void tu_fx_fini(struct tu_fx *f)
{
	tu_log_assert_no_key_material(f->keydir);
	tu_log_stop();
	rk_keyring_free(f->kr);
	f->kr = NULL;
	tu_rmrf(f->dir);
}

const struct tu_fx_key tu_fx_keys[4] = {{"AES/GCM/NoPadding", 256, "ka"},
                                        {"ChaCha20/Poly1305/NoPadding", 256, "kb"},
                                        {"AES/GCM/NoPadding", 128, "kc"},
                                        {"AES/GCM/NoPadding", 256, "kd"}};
const struct tu_fx_key tu_fx_aes_keys[2] = {{"AES/GCM/NoPadding", 256, "ka"}, {"AES/GCM/NoPadding", 256, "kb"}};

void *tu_fx_new(size_t size, const struct tu_fx_opts *o)
{
	struct tu_fx *f = size >= sizeof(*f) ? calloc(1, size) : NULL;
	if (f && tu_fx_init(f, o) < 0) {
		free(f);
		f = NULL;
	}
	return f;
}

void tu_fx_free(void *fx)
{
	tu_fx_fini(fx);
	free(fx);
}

int tu_fx_setup(void **state, const struct tu_fx_opts *o)
{
	*state = tu_fx_new(sizeof(struct tu_fx), o);
	return *state ? 0 : -1;
}

int tu_fx_teardown(void **state)
{
	tu_fx_free(*state);
	return 0;
}

/* ---- keys --------------------------------------------------------------------------- */
void tu_key_create(const char *keydir, const char *cipher, unsigned bits, const char *name)
{
	int ret = rk_key_create(keydir, cipher, bits, name, NULL);
	if (ret != 0)
		fail_msg("rk_key_create(%s, %s, %u, %s) = %d", keydir, cipher, bits, name, ret);
}

int tu_key_b64(const char *keydir, const char *name, char *out, size_t cap)
{
	char path[PATH_MAX];
	tu_path(path, "%s/%s", keydir, name);
	size_t len;
	char *text = tu_read_file(path, &len);
	if (!text)
		return -errno;
	char *c = strrchr(text, ':');
	int ret = -EINVAL;
	if (c) {
		c++;
		size_t n = strcspn(c, "\r\n");
		if (n + 1 <= cap) {
			memcpy(out, c, n);
			out[n] = '\0';
			ret = 0;
		} else {
			ret = -ENAMETOOLONG;
		}
	}
	free(text);
	return ret;
}

/* ---- log capture ---------------------------------------------------------------------- */
struct logmsg {
	int level;
	char *msg;
};
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static struct logmsg *logv;
static size_t logn, logcap;

static void log_cb(int level, const char *msg, void *arg)
{
	(void)arg;
	pthread_mutex_lock(&log_lock);
	if (logn == logcap) {
		size_t nc = logcap ? 2 * logcap : 64;
		struct logmsg *nv = realloc(logv, nc * sizeof(*nv));
		if (!nv) {
			pthread_mutex_unlock(&log_lock);
			return;
		}
		logv = nv;
		logcap = nc;
	}
	logv[logn].level = level;
	logv[logn].msg = strdup(msg);
	if (logv[logn].msg)
		logn++;
	pthread_mutex_unlock(&log_lock);
	if (getenv("TU_LOG_VERBOSE"))
		fprintf(stderr, "[log %d] %s\n", level, msg);
}

void tu_log_clear(void)
{
	pthread_mutex_lock(&log_lock);
	for (size_t i = 0; i < logn; i++)
		free(logv[i].msg);
	logn = 0;
	pthread_mutex_unlock(&log_lock);
}

void tu_log_start(void)
{
	tu_log_clear();
	rk_log_set_handler(log_cb, NULL);
}

void tu_log_stop(void)
{
	rk_log_set_handler(NULL, NULL);
	tu_log_clear();
	pthread_mutex_lock(&log_lock);
	free(logv);
	logv = NULL;
	logcap = 0;
	pthread_mutex_unlock(&log_lock);
}

size_t tu_log_count(void) { return logn; }
const char *tu_log_msg(size_t i) { return i < logn ? logv[i].msg : NULL; }
int tu_log_level(size_t i) { return i < logn ? logv[i].level : -1; }

int tu_log_find(const char *first, ...)
{
	for (size_t i = 0; i < logn; i++) {
		va_list ap;
		bool ok = true;
		va_start(ap, first);
		for (const char *s = first; s; s = va_arg(ap, const char *)) {
			if (!strstr(logv[i].msg, s)) {
				ok = false;
				break;
			}
		}
		va_end(ap);
		if (ok)
			return (int)i;
	}
	return -1;
}

void tu_log_dump(void)
{
	fprintf(stderr, "---- %zu captured log messages ----\n", logn);
	for (size_t i = 0; i < logn; i++)
		fprintf(stderr, "  [%d] %s\n", logv[i].level, logv[i].msg);
}

void tu_log_assert_absent(const char *needle)
{
	for (size_t i = 0; i < logn; i++)
		if (strstr(logv[i].msg, needle))
			fail_msg("log message %zu leaks a secret: %s", i, logv[i].msg);
}

void tu_log_assert_no_key_material(const char *keydir)
{
	DIR *d = opendir(keydir);
	struct dirent *de;
	if (!d)
		return;
	while ((de = readdir(d))) {
		char b64[256];
		if (de->d_name[0] == '.')
			continue;
		if (tu_key_b64(keydir, de->d_name, b64, sizeof(b64)) < 0 || strlen(b64) < 16)
			continue;
		tu_log_assert_absent(b64);
		/* also a long enough prefix of it: partial leaks count */
		b64[16] = '\0';
		tu_log_assert_absent(b64);
	}
	closedir(d);
}

/* ---- file surgery ----------------------------------------------------------------------- */
void tu_flip_bit_fd(int fd, off_t off, int bit)
{
	uint8_t b;
	if (pread(fd, &b, 1, off) != 1)
		fail_msg("flip: cannot read byte at %lld", (long long)off);
	b ^= (uint8_t)(1u << bit);
	if (pwrite(fd, &b, 1, off) != 1)
		fail_msg("flip: cannot write byte at %lld", (long long)off);
}

void tu_flip_bit(const char *path, off_t off, int bit)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		fail_msg("open %s: %s", path, strerror(errno));
	tu_flip_bit_fd(fd, off, bit);
	close(fd);
}

void tu_pwrite_path(const char *path, const void *buf, size_t len, off_t off)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		fail_msg("open %s: %s", path, strerror(errno));
	if (rk_pwrite_full(fd, buf, len, off) != 0)
		fail_msg("pwrite %s failed", path);
	close(fd);
}

void tu_pread_path(const char *path, void *buf, size_t len, off_t off)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail_msg("open %s: %s", path, strerror(errno));
	ssize_t n = rk_pread_full(fd, buf, len, off);
	if (n != (ssize_t)len)
		fail_msg("pread %s: short read (%zd of %zu)", path, n, len);
	close(fd);
}

void tu_write_file(const char *path, const void *buf, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		fail_msg("create %s: %s", path, strerror(errno));
	if (len && rk_pwrite_full(fd, buf, len, 0) != 0)
		fail_msg("write %s failed", path);
	if (fchmod(fd, mode) < 0)
		fail_msg("chmod %s: %s", path, strerror(errno));
	close(fd);
}

char *tu_read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return NULL;
	}
	char *buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return NULL;
	}
	ssize_t n = rk_pread_full(fd, buf, (size_t)st.st_size, 0);
	close(fd);
	if (n < 0) {
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	if (len)
		*len = (size_t)n;
	return buf;
}

off_t tu_file_size(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0)
		fail_msg("stat %s: %s", path, strerror(errno));
	return st.st_size;
}

uint64_t tu_file_alloc(int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		fail_msg("fstat: %s", strerror(errno));
	return (uint64_t)st.st_blocks * 512;
}

/* ---- data ----------------------------------------------------------------------------- */
uint64_t tu_rand(uint64_t *state)
{
	uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545f4914f6cdd1dull;
}

void tu_fill_random(void *buf, size_t len, uint64_t seed)
{
	uint64_t st = seed * 0x9e3779b97f4a7c15ull + 1;
	uint8_t *p = buf;
	while (len >= 8) {
		uint64_t v = tu_rand(&st);
		memcpy(p, &v, 8);
		p += 8;
		len -= 8;
	}
	if (len) {
		uint64_t v = tu_rand(&st);
		memcpy(p, &v, len);
	}
}

void tu_fill_text(void *buf, size_t len, uint64_t seed)
{
	static const char *names[] = {"alice", "bob", "carol", "dave", "erin", "frank"};
	char row[128];
	uint8_t *p = buf;
	uint64_t i = seed * 1000;
	while (len > 0) {
		int n = snprintf(row, sizeof(row), "row %08llu | name=%-6s | city=Springfield | balance=%6llu.00 |\n",
		                 (unsigned long long)i, names[i % 6], (unsigned long long)(i * 37 % 100000));
		size_t k = RK_MIN((size_t)n, len);
		memcpy(p, row, k);
		p += k;
		len -= k;
		i++;
	}
}

bool tu_all_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

void *tu_malloc(size_t len)
{
	void *p = malloc(len ? len : 1);
	if (!p)
		fail_msg("out of memory (%zu bytes)", len);
	return p;
}
