/* rekeyfs - data directory state: policy, key registry, lock. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/format.h"

const char *rk_keystate_name(enum rk_keystate s)
{
	switch (s) {
	case RK_KS_ACTIVE:
		return "active";
	case RK_KS_DECRYPT_ONLY:
		return "decrypt-only";
	case RK_KS_RELEASED:
		return "released";
	}
	return "unknown";
}

static int keystate_parse(const char *s, enum rk_keystate *out)
{
	if (strcmp(s, "active") == 0)
		*out = RK_KS_ACTIVE;
	else if (strcmp(s, "decrypt-only") == 0)
		*out = RK_KS_DECRYPT_ONLY;
	else if (strcmp(s, "released") == 0)
		*out = RK_KS_RELEASED;
	else
		return -EINVAL;
	return 0;
}

int rk_table_path_norm(const char *in, char *out, size_t outlen)
{
	size_t o = 0;
	const char *p = in;
	if (outlen < 2)
		return -ENAMETOOLONG;
	while (*p) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		const char *s = p;
		while (*p && *p != '/')
			p++;
		size_t n = (size_t)(p - s);
		if (n == 1 && s[0] == '.')
			continue;
		if ((n == 2 && s[0] == '.' && s[1] == '.') || (o == 0 && n == strlen(RK_STATE_DIR) &&
		                                               memcmp(s, RK_STATE_DIR, n) == 0))
			return -EINVAL;
		if (o + 1 + n + 1 > outlen)
			return -ENAMETOOLONG;
		out[o++] = '/';
		memcpy(out + o, s, n);
		o += n;
	}
	if (o == 0)
		out[o++] = '/';
	out[o] = '\0';
	return 0;
}

/* ---- parsing ------------------------------------------------------------------ */
static char *kv(char *tok, const char *k)
{
	size_t n = strlen(k);
	if (strncmp(tok, k, n) == 0 && tok[n] == '=')
		return tok + n + 1;
	return NULL;
}

static int parse_policy(struct rk_datadir *dd, char *text)
{
	char *save = NULL, *line;
	int lineno = 0;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		if (line[0] == '#' || line[0] == '\0')
			continue;
		char *s2 = NULL, *tok = strtok_r(line, " \t", &s2);
		if (!tok || strcmp(tok, "table") != 0)
			goto bad;
		char *path = strtok_r(NULL, " \t", &s2);
		if (!path)
			goto bad;
		struct rk_table t = {.chunk_size = RK_CHUNK_DEFAULT, .comp = RK_COMP_SNAPPY};
		if (rk_table_path_norm(path, t.path, sizeof(t.path)) < 0)
			goto bad;
		while ((tok = strtok_r(NULL, " \t", &s2))) {
			char *v;
			if ((v = kv(tok, "key"))) {
				if (rk_key_name_check(v) < 0)
					goto bad;
				snprintf(t.key, sizeof(t.key), "%s", v);
			} else if ((v = kv(tok, "chunk_kb"))) {
				char *end;
				unsigned long kb = strtoul(v, &end, 10);
				if (*end || kb > RK_CHUNK_MAX / 1024)
					goto bad;
				t.chunk_size = (uint32_t)(kb * 1024);
				if (t.chunk_size < RK_CHUNK_MIN || t.chunk_size > RK_CHUNK_MAX ||
				    (t.chunk_size & (t.chunk_size - 1)))
					goto bad;
			} else if ((v = kv(tok, "compression"))) {
				if (rk_comp_parse(v, &t.comp) < 0)
					goto bad;
			} /* unknown keys are ignored: later versions may add some */
		}
		if (!t.key[0])
			goto bad;
		struct rk_table *nt = realloc(dd->tables, (dd->ntables + 1) * sizeof(*nt));
		if (!nt)
			return -ENOMEM;
		dd->tables = nt;
		dd->tables[dd->ntables++] = t;
	}
	if (dd->ntables == 0 || strcmp(dd->tables[0].path, "/") != 0) {
		rk_err("%s/%s/policy: the root table '/' must be the first table", dd->path, RK_STATE_DIR);
		return -EINVAL;
	}
	return 0;
bad:
	rk_err("%s/%s/policy: line %d is malformed", dd->path, RK_STATE_DIR, lineno);
	return -EINVAL;
}

static int parse_registry(struct rk_datadir *dd, char *text)
{
	char *save = NULL, *line;
	int lineno = 0;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		if (line[0] == '#' || line[0] == '\0')
			continue;
		char *s2 = NULL, *tok = strtok_r(line, " \t", &s2);
		if (!tok || strcmp(tok, "key") != 0)
			goto bad;
		char *name = strtok_r(NULL, " \t", &s2);
		if (!name || rk_key_name_check(name) < 0)
			goto bad;
		struct rk_regent e = {0};
		bool have_fp = false;
		snprintf(e.name, sizeof(e.name), "%s", name);
		while ((tok = strtok_r(NULL, " \t", &s2))) {
			char *v;
			const char *why;
			if ((v = kv(tok, "cipher"))) {
				if (rk_cipher_parse(v, &e.cipher, &why) < 0)
					goto bad;
			} else if ((v = kv(tok, "bits"))) {
				e.bits = (unsigned)strtoul(v, NULL, 10);
			} else if ((v = kv(tok, "fp"))) {
				if (rk_unhex(e.fp, RK_FP_BYTES, v) < 0)
					goto bad;
				have_fp = true;
			} else if ((v = kv(tok, "state"))) {
				if (keystate_parse(v, &e.state) < 0)
					goto bad;
			} else if ((v = kv(tok, "compromised"))) {
				if (strcmp(v, "yes") != 0 && strcmp(v, "no") != 0)
					goto bad;
				e.compromised = strcmp(v, "yes") == 0;
			}
		}
		if (!have_fp || e.cipher == RK_CIPHER_NONE)
			goto bad;
		struct rk_regent *nk = realloc(dd->keys, (dd->nkeys + 1) * sizeof(*nk));
		if (!nk)
			return -ENOMEM;
		dd->keys = nk;
		dd->keys[dd->nkeys++] = e;
	}
	return 0;
bad:
	rk_err("%s/%s/keys: line %d is malformed", dd->path, RK_STATE_DIR, lineno);
	return -EINVAL;
}

/* ---- saving ------------------------------------------------------------------------ */
struct sbuf {
	char *p;
	size_t len, cap;
	int err;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	if (b->err)
		return;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->err = -EINVAL;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t nc = (b->cap + (size_t)n + 256) * 2;
		char *np = realloc(b->p, nc);
		if (!np) {
			b->err = -ENOMEM;
			return;
		}
		b->p = np;
		b->cap = nc;
	}
}

int rk_policy_save(struct rk_datadir *dd)
{
	struct sbuf b = {0};
	sb_printf(&b, "# rekeyfs table policy (data directory format %d); edit with 'rekeyctl alter'\n",
	          RK_DATADIR_VERSION);
	for (size_t i = 0; i < dd->ntables; i++) {
		const struct rk_table *t = &dd->tables[i];
		sb_printf(&b, "table %s key=%s chunk_kb=%u compression=%s\n", t->path, t->key, t->chunk_size / 1024,
		          rk_comp_name(t->comp));
	}
	int ret = b.err ? b.err : rk_write_file_atomic(dd->statefd, "policy", b.p, b.len, 0644);
	free(b.p);
	if (ret < 0)
		rk_err("%s/%s/policy: cannot save: %s", dd->path, RK_STATE_DIR, strerror(-ret));
	return ret;
}

int rk_registry_save(struct rk_datadir *dd)
{
	struct sbuf b = {0};
	char hex[2 * RK_FP_BYTES + 1];
	sb_printf(&b, "# rekeyfs key registry (data directory format %d): names and fingerprints, never key material\n",
	          RK_DATADIR_VERSION);
	for (size_t i = 0; i < dd->nkeys; i++) {
		const struct rk_regent *e = &dd->keys[i];
		rk_hex(hex, e->fp, RK_FP_BYTES);
		sb_printf(&b, "key %s cipher=%s bits=%u fp=%s state=%s%s\n", e->name, rk_cipher_name(e->cipher), e->bits,
		          hex, rk_keystate_name(e->state), e->compromised ? " compromised=yes" : "");
	}
	int ret = b.err ? b.err : rk_write_file_atomic(dd->statefd, "keys", b.p, b.len, 0644);
	free(b.p);
	if (ret < 0)
		rk_err("%s/%s/keys: cannot save: %s", dd->path, RK_STATE_DIR, strerror(-ret));
	return ret;
}

/* ---- open/init ------------------------------------------------------------------------ */
void rk_datadir_close(struct rk_datadir *dd)
{
	if (!dd)
		return;
	if (dd->lockfd >= 0) {
		/* forget our pid: a later "in use" message must not name a process
		 * that has exited (or a pid reused by an unrelated process) */
		if (dd->lock_exclusive && ftruncate(dd->lockfd, 0) < 0)
			rk_dbg("%s: cannot clear %s/lock: %s", dd->path, RK_STATE_DIR, strerror(errno));
		close(dd->lockfd);
	}
	if (dd->statefd >= 0)
		close(dd->statefd);
	if (dd->dirfd >= 0)
		close(dd->dirfd);
	free(dd->tables);
	free(dd->keys);
	free(dd->path);
	free(dd);
}

/* The lock file's "PID\n[mount PATH\n]" (an old one has the pid alone). */
static void lock_parse(int fd, long *pid, char *mnt, size_t mntlen)
{
	char buf[PATH_MAX + 64];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	*pid = 0;
	if (mntlen)
		mnt[0] = '\0';
	if (n <= 0)
		return;
	buf[n] = '\0';
	char *end;
	long p = strtol(buf, &end, 10);
	if (end == buf || (*end != '\n' && *end != '\0') || p <= 0)
		return;
	*pid = p;
	if (*end == '\n' && strncmp(end + 1, "mount /", 7) == 0) {
		char *m = end + 7, *nl = strchr(m, '\n');
		if (nl && (size_t)(nl - m) < mntlen) {
			memcpy(mnt, m, (size_t)(nl - m));
			mnt[nl - m] = '\0';
		}
	}
}

/* Is path (as recorded in the lock) a mount point of a rekeyfs file system
 * now?  (/proc/self/mountinfo; octal escapes of the mount point undone) */
static bool rekeyfs_mounted_at(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	bool found = false;
	if (!f)
		return false;
	while (!found && getline(&line, &cap, f) > 0) {
		char *sep = strstr(line, " - "), *save = NULL, *point = NULL;
		if (!sep)
			continue;
		*sep = '\0';
		char *tok = strtok_r(line, " ", &save);
		for (int i = 0; tok && i < 4; i++) /* id parent maj:min root point */
			tok = strtok_r(NULL, " ", &save);
		point = tok;
		char *fstype = strtok_r(sep + 3, " ", &save);
		if (!point || !fstype || strcmp(fstype, "fuse.rekeyfs") != 0)
			continue;
		char *o = point;
		for (char *i = point; *i; i++) {
			if (i[0] == '\\' && i[1] >= '0' && i[1] <= '3' && i[2] >= '0' && i[2] <= '7' && i[3] >= '0' && i[3] <= '7') {
				*o++ = (char)((i[1] - '0') * 64 + (i[2] - '0') * 8 + (i[3] - '0'));
				i += 3;
			} else {
				*o++ = *i;
			}
		}
		*o = '\0';
		found = strcmp(point, path) == 0;
	}
	free(line);
	fclose(f);
	return found;
}

int rk_datadir_lock_record(struct rk_datadir *dd, const char *mountpoint)
{
	char buf[PATH_MAX + 64];
	if (dd->lockfd < 0 || !dd->lock_exclusive)
		return -EINVAL;
	int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (mountpoint && mountpoint[0] == '/' && !strchr(mountpoint, '\n') && strlen(mountpoint) < PATH_MAX)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "mount %s\n", mountpoint);
	if (ftruncate(dd->lockfd, 0) < 0)
		return -errno;
	ssize_t w = rk_pwrite_full(dd->lockfd, buf, (size_t)n, 0);
	return w < 0 ? (int)w : 0;
}

int rk_datadir_lock_holder(const char *dir, long *pid, char *mnt, size_t mntlen)
{
	char p[PATH_MAX];
	int ret;
	*pid = 0;
	if (mntlen)
		mnt[0] = '\0';
	snprintf(p, sizeof(p), "%s/%s/lock", dir, RK_STATE_DIR);
	int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
		flock(fd, LOCK_UN);
		ret = 0;
	} else if (errno == EWOULDBLOCK) {
		lock_parse(fd, pid, mnt, mntlen);
		ret = 1;
	} else {
		ret = -errno;
	}
	close(fd);
	return ret;
}

static int take_lock(struct rk_datadir *dd, enum rk_dd_lock lock)
{
	dd->lockfd = openat(dd->statefd, "lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (dd->lockfd < 0) {
		/* read-only media: shared readers may go on without the lock file */
		if (lock == RK_DD_SHARED && (errno == EROFS || errno == EACCES)) {
			dd->lockfd = openat(dd->statefd, "lock", O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
			if (dd->lockfd < 0)
				return 0;
		} else {
			int e = errno;
			rk_err("%s: cannot open %s/lock: %s", dd->path, RK_STATE_DIR, strerror(e));
			return -e;
		}
	}
	if (lock == RK_DD_NOLOCK)
		return 0;
	/* a daemon that was just unmounted still empties its journal and cleans
	 * headers before it lets go: wait a little (REKEYFS_LOCK_WAIT seconds,
	 * default 10) before calling the directory busy */
	const char *ws = getenv("REKEYFS_LOCK_WAIT");
	long wait_ms = (ws && *ws ? strtol(ws, NULL, 10) : 10) * 1000;
	int r;
	for (long waited = 0;; waited += 100) {
		r = flock(dd->lockfd, (lock == RK_DD_EXCLUSIVE ? LOCK_EX : LOCK_SH) | LOCK_NB);
		if (r == 0 || errno != EWOULDBLOCK || waited >= wait_ms)
			break;
		if (waited == 0) {
			/* a daemon whose mount is still there is not finishing: no wait */
			long hpid;
			char hmnt[PATH_MAX];
			lock_parse(dd->lockfd, &hpid, hmnt, sizeof(hmnt));
			if (hmnt[0] && rekeyfs_mounted_at(hmnt)) {
				errno = EWOULDBLOCK;
				break;
			}
		}
		if (waited == 1000)
			rk_info("%s is held by another process; waiting up to %ld s for it to finish", dd->path,
			        wait_ms / 1000);
		struct timespec ts = {0, 100000000L};
		nanosleep(&ts, NULL);
	}
	if (r < 0) {
		int e = errno;
		if (e == EWOULDBLOCK) {
			long pid = 0;
			char mnt[PATH_MAX] = "";
			lock_parse(dd->lockfd, &pid, mnt, sizeof(mnt));
			char pidbuf[32] = "unknown";
			if (pid > 0)
				snprintf(pidbuf, sizeof(pidbuf), "%ld", pid);
			if (mnt[0])
				rk_err("%s is mounted at %s by pid %s; use rekeyctl COMMAND ... %s (alter, rekey, status, "
				       "release-key, fsck take the mount point), or unmount it first",
				       dd->path, mnt, pidbuf, mnt);
			else
				rk_err("%s is in use by a rekeyfs daemon or another rekeyctl (pid %s): run the command against "
				       "the mount point if it takes one (alter, rekey, status, release-key, fsck), or unmount "
				       "first", dd->path, pidbuf);
			return -EBUSY;
		}
		rk_err("%s: cannot lock %s/lock: %s", dd->path, RK_STATE_DIR, strerror(e));
		return -e;
	}
	if (lock == RK_DD_EXCLUSIVE) {
		char pidbuf[32];
		dd->lock_exclusive = true;
		int n = snprintf(pidbuf, sizeof(pidbuf), "%ld\n", (long)getpid());
		if (ftruncate(dd->lockfd, 0) == 0)
			(void)rk_pwrite_full(dd->lockfd, pidbuf, (size_t)n, 0);
	}
	return 0;
}

int rk_datadir_openat(int dirfd, const char *path, enum rk_dd_lock lock, struct rk_datadir **out)
{
	struct rk_datadir *dd = calloc(1, sizeof(*dd));
	char *text = NULL;
	int ret;
	if (!dd)
		return -ENOMEM;
	dd->dirfd = dd->statefd = dd->lockfd = -1;
	dd->path = strdup(path);
	if (!dd->path) {
		ret = -ENOMEM;
		goto fail;
	}
	dd->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
	if (dd->dirfd < 0) {
		ret = -errno;
		goto fail;
	}
	dd->statefd = openat(dd->dirfd, RK_STATE_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dd->statefd < 0) {
		ret = -errno;
		if (errno == ENOENT) {
			rk_err("%s is not a rekeyfs data directory (no %s/); create one with: rekeyctl init -d KEYDIR "
			       "--key NAME %s", path, RK_STATE_DIR, path);
			ret = -ENOTDIR;
		} else {
			rk_err("%s: cannot open %s: %s", path, RK_STATE_DIR, strerror(errno));
		}
		goto fail;
	}
	struct stat sst;
	const char *why = NULL;
	if (fstat(dd->statefd, &sst) < 0) {
		ret = -errno;
		rk_err("%s: cannot stat %s: %s", path, RK_STATE_DIR, strerror(errno));
		goto fail;
	}
	ret = rk_statedir_check(&sst, &why);
	if (ret < 0) {
		rk_err("%s/%s is not a state directory rekeyfs trusts: %s", path, RK_STATE_DIR, why);
		goto fail;
	}
	ret = rk_read_small_file(dd->statefd, "format", &text, NULL, 4096);
	if (ret < 0) {
		rk_err("%s: cannot read %s/format: %s", path, RK_STATE_DIR, strerror(-ret));
		goto fail;
	}
	unsigned ver = 0;
	if (sscanf(text, "rekeyfs-datadir %u", &ver) != 1) {
		rk_err("%s: %s/format is malformed", path, RK_STATE_DIR);
		ret = -EINVAL;
		goto fail;
	}
	if (ver != RK_DATADIR_VERSION) {
		rk_err("%s: data directory format %u is not supported by this rekeyfs (it reads %d)", path, ver,
		       RK_DATADIR_VERSION);
		ret = -EPROTONOSUPPORT;
		goto fail;
	}
	free(text);
	text = NULL;
	ret = take_lock(dd, lock);
	if (ret < 0)
		goto fail;
	ret = rk_read_small_file(dd->statefd, "policy", &text, NULL, 16 << 20);
	if (ret < 0) {
		rk_err("%s: cannot read %s/policy: %s", path, RK_STATE_DIR, strerror(-ret));
		goto fail;
	}
	ret = parse_policy(dd, text);
	if (ret < 0)
		goto fail;
	free(text);
	text = NULL;
	ret = rk_read_small_file(dd->statefd, "keys", &text, NULL, 16 << 20);
	if (ret < 0) {
		rk_err("%s: cannot read %s/keys: %s", path, RK_STATE_DIR, strerror(-ret));
		goto fail;
	}
	ret = parse_registry(dd, text);
	if (ret < 0)
		goto fail;
	free(text);
	*out = dd;
	return 0;
fail:
	free(text);
	rk_datadir_close(dd);
	return ret;
}

int rk_datadir_open(const char *path, enum rk_dd_lock lock, struct rk_datadir **out)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		rk_err("cannot open data directory %s: %s", path, strerror(e));
		return -e;
	}
	int ret = rk_datadir_openat(fd, path, lock, out);
	close(fd);
	return ret;
}

int rk_datadir_init(const char *path, const struct rk_key *key, uint32_t chunk_size, enum rk_comp comp)
{
	int dfd = -1, ret;
	struct rk_datadir *dd = NULL;
	if (chunk_size < RK_CHUNK_MIN || chunk_size > RK_CHUNK_MAX || (chunk_size & (chunk_size - 1))) {
		rk_err("chunk size %u KiB is invalid: use a power of two from 4 to 1024", chunk_size / 1024);
		return -EINVAL;
	}
	dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		ret = -errno;
		rk_err("cannot open data directory %s: %s", path, strerror(errno));
		return ret;
	}
	if (mkdirat(dfd, RK_STATE_DIR, 0700) < 0) {
		ret = -errno;
		if (errno == EEXIST)
			rk_err("%s is already a rekeyfs data directory (%s/ exists); use 'rekeyctl alter' to change "
			       "its policy", path, RK_STATE_DIR);
		else
			rk_err("%s: cannot create %s: %s", path, RK_STATE_DIR, strerror(errno));
		goto out;
	}
	int sfd = openat(dfd, RK_STATE_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0) {
		ret = -errno;
		goto out;
	}
	char pol[512];
	int n = snprintf(pol, sizeof(pol),
	                 "# rekeyfs table policy (data directory format %d); edit with 'rekeyctl alter'\n"
	                 "table / key=%s chunk_kb=%u compression=%s\n",
	                 RK_DATADIR_VERSION, key->name, chunk_size / 1024, rk_comp_name(comp));
	ret = rk_write_file_atomic(sfd, "policy", pol, (size_t)n, 0644);
	if (ret == 0)
		ret = rk_write_file_atomic(sfd, "keys", "", 0, 0644);
	/* format last: a half-made state directory is not a data directory */
	if (ret == 0) {
		n = snprintf(pol, sizeof(pol), "rekeyfs-datadir %d\n", RK_DATADIR_VERSION);
		ret = rk_write_file_atomic(sfd, "format", pol, (size_t)n, 0644);
	}
	close(sfd);
	if (ret < 0) {
		rk_err("%s: cannot write %s: %s", path, RK_STATE_DIR, strerror(-ret));
		goto out;
	}
	rk_fsync_dir(dfd);
	ret = rk_datadir_openat(dfd, path, RK_DD_EXCLUSIVE, &dd);
	if (ret < 0)
		goto out;
	ret = rk_registry_add(dd, key);
	if (ret == 0)
		ret = rk_registry_save(dd);
out:
	rk_datadir_close(dd);
	if (dfd >= 0)
		close(dfd);
	return ret;
}

static bool type_ok(const char *p, mode_t type)
{
	struct stat st;
	return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == type;
}

static int find_up(const char *path, const char *marker, bool (*ok)(const char *p, mode_t type), mode_t type,
                   int notfound, char **root, char **rel)
{
	char buf[PATH_MAX];
	char *real = realpath(path, NULL);
	int ret = notfound;
	if (!real) {
		/* the last component (a new table directory) may not exist yet */
		char tmp[PATH_MAX];
		if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
			return -ENAMETOOLONG;
		char *slash = strrchr(tmp, '/');
		if (!slash)
			return -ENOENT;
		*slash = '\0';
		char *parent = realpath(slash == tmp ? "/" : tmp, NULL);
		if (!parent)
			return -errno;
		int n = snprintf(buf, sizeof(buf), "%s/%s", strcmp(parent, "/") ? parent : "", slash + 1);
		free(parent);
		if (n >= (int)sizeof(buf))
			return -ENAMETOOLONG;
		real = strdup(buf);
		if (!real)
			return -ENOMEM;
	}
	char *cur = strdup(real);
	if (!cur) {
		free(real);
		return -ENOMEM;
	}
	for (;;) {
		snprintf(buf, sizeof(buf), "%s/%s", strcmp(cur, "/") ? cur : "", marker);
		if (ok(buf, type)) {
			size_t n = strcmp(cur, "/") ? strlen(cur) : 0;
			*root = strdup(cur);
			*rel = strdup(real[n] ? real + n : "/");
			ret = (*root && *rel) ? 0 : -ENOMEM;
			break;
		}
		if (strcmp(cur, "/") == 0)
			break;
		char *slash = strrchr(cur, '/');
		if (slash == cur)
			cur[1] = '\0';
		else
			*slash = '\0';
	}
	free(cur);
	free(real);
	return ret;
}

int rk_path_find_up(const char *path, const char *marker, mode_t type, int notfound, char **root, char **rel)
{
	return find_up(path, marker, type_ok, type, notfound, root, rel);
}

int rk_statedir_check(const struct stat *st, const char **why)
{
	if (S_ISLNK(st->st_mode)) {
		*why = "it is a symbolic link";
		return -ELOOP;
	}
	if (!S_ISDIR(st->st_mode)) {
		*why = "it is not a directory";
		return -ENOTDIR;
	}
	if (st->st_uid != 0 && st->st_uid != geteuid()) {
		*why = "it is owned by another user (a state directory is root's)";
		return -EPERM;
	}
	if (st->st_mode & (S_IWGRP | S_IWOTH)) {
		*why = "it is writable by group or others";
		return -EPERM;
	}
	return 0;
}

/* A .rekeyfs found walking up: a trusted state directory, or reported and
 * passed over (a user can make one in a directory they own). */
static bool statedir_ok(const char *p, mode_t type)
{
	struct stat st;
	const char *why;
	(void)type;
	if (lstat(p, &st) < 0)
		return false;
	if (rk_statedir_check(&st, &why) == 0)
		return true;
	rk_warn("ignoring %s: %s; it is not a data directory's state", p, why);
	return false;
}

/* The data directory above path: the nearest ancestor whose .rekeyfs is a
 * state directory rekeyfs trusts (rk_statedir_check, never through a
 * symlink). */
int rk_datadir_find(const char *path, char **root, char **rel)
{
	return find_up(path, RK_STATE_DIR, statedir_ok, 0, -ENOTDIR, root, rel);
}

/* ---- policy --------------------------------------------------------------------------- */
const struct rk_table *rk_policy_lookup(const struct rk_datadir *dd, const char *rel)
{
	const struct rk_table *best = &dd->tables[0];
	size_t bestlen = 1;
	for (size_t i = 1; i < dd->ntables; i++) {
		const struct rk_table *t = &dd->tables[i];
		size_t n = strlen(t->path);
		if (n > bestlen && strncmp(rel, t->path, n) == 0 && (rel[n] == '/' || rel[n] == '\0')) {
			best = t;
			bestlen = n;
		}
	}
	return best;
}

int rk_policy_set(struct rk_datadir *dd, const char *table, const char *key, uint32_t chunk_size, int comp)
{
	char norm[RK_TABLE_PATH_MAX];
	int ret = rk_table_path_norm(table, norm, sizeof(norm));
	if (ret < 0) {
		rk_err("invalid table path '%s'", table);
		return ret;
	}
	/* the policy file holds one table per line with blank-separated fields */
	for (const char *c = norm; *c; c++) {
		if ((unsigned char)*c <= ' ' || *c == 0x7f) {
			rk_err("invalid table path '%s': a table path cannot contain blanks or control characters", table);
			return -EINVAL;
		}
	}
	if (key && rk_key_name_check(key) < 0) {
		rk_err("invalid key name '%s'", key);
		return -EINVAL;
	}
	if (chunk_size && (chunk_size < RK_CHUNK_MIN || chunk_size > RK_CHUNK_MAX || (chunk_size & (chunk_size - 1)))) {
		rk_err("chunk size %u KiB is invalid: use a power of two from 4 to 1024", chunk_size / 1024);
		return -EINVAL;
	}
	for (size_t i = 0; i < dd->ntables; i++) {
		struct rk_table *t = &dd->tables[i];
		if (strcmp(t->path, norm) == 0) {
			if (key)
				snprintf(t->key, sizeof(t->key), "%s", key);
			if (chunk_size)
				t->chunk_size = chunk_size;
			if (comp >= 0)
				t->comp = (enum rk_comp)comp;
			return 0;
		}
	}
	const struct rk_table *parent = rk_policy_lookup(dd, norm);
	struct rk_table t = *parent;
	snprintf(t.path, sizeof(t.path), "%s", norm);
	if (key)
		snprintf(t.key, sizeof(t.key), "%s", key);
	if (chunk_size)
		t.chunk_size = chunk_size;
	if (comp >= 0)
		t.comp = (enum rk_comp)comp;
	struct rk_table *nt = realloc(dd->tables, (dd->ntables + 1) * sizeof(*nt));
	if (!nt)
		return -ENOMEM;
	dd->tables = nt;
	dd->tables[dd->ntables++] = t;
	return 0;
}

/* ---- registry ------------------------------------------------------------------------ */
struct rk_regent *rk_registry_find(struct rk_datadir *dd, const char *name)
{
	for (size_t i = 0; i < dd->nkeys; i++)
		if (strcmp(dd->keys[i].name, name) == 0)
			return &dd->keys[i];
	return NULL;
}

static void explain_changed_key(const char *keydir, const char *name, const char *where)
{
	rk_err("key file %s%s%s does not match the fingerprint recorded for key '%s' in %s: the key file was "
	       "probably overwritten or regenerated by accident. Data sealed under the recorded key cannot be read "
	       "with this one. Restore the original key file (from a backup of the key directory); to rotate keys, "
	       "never reuse a name: create a new key (rekeyctl createkey ... NEW_NAME), point the table at it "
	       "(rekeyctl alter ... --key NEW_NAME), rekey, then release the old one",
	       keydir ? keydir : "", keydir ? "/" : "", name, name, where);
}

int rk_registry_add(struct rk_datadir *dd, const struct rk_key *key)
{
	struct rk_regent *e = rk_registry_find(dd, key->name);
	if (e) {
		if (CRYPTO_memcmp(e->fp, key->fp, RK_FP_BYTES) != 0) {
			explain_changed_key(NULL, key->name, dd->path);
			return -EKEYREJECTED;
		}
		if (e->state == RK_KS_RELEASED) {
			rk_err("key '%s' was released from %s; a released key cannot become a target again", key->name,
			       dd->path);
			return -EKEYREVOKED;
		}
		return 0;
	}
	struct rk_regent *nk = realloc(dd->keys, (dd->nkeys + 1) * sizeof(*nk));
	if (!nk)
		return -ENOMEM;
	dd->keys = nk;
	e = &dd->keys[dd->nkeys++];
	memset(e, 0, sizeof(*e));
	snprintf(e->name, sizeof(e->name), "%s", key->name);
	e->cipher = key->cipher;
	e->bits = key->bits;
	memcpy(e->fp, key->fp, RK_FP_BYTES);
	e->state = RK_KS_ACTIVE;
	return 0;
}

int rk_registry_verify(struct rk_datadir *dd, struct rk_keyring *kr)
{
	int ret = 0;
	for (size_t i = 0; i < dd->nkeys; i++) {
		struct rk_regent *e = &dd->keys[i];
		struct rk_key *k;
		if (e->state == RK_KS_RELEASED)
			continue;
		int r = rk_keyring_get(kr, e->name, &k);
		if (r == -ENOKEY)
			continue; /* missing keys are reported where data needs them */
		if (r < 0) {
			ret = ret ? ret : r;
			continue;
		}
		if (CRYPTO_memcmp(k->fp, e->fp, RK_FP_BYTES) != 0 || k->cipher != e->cipher) {
			explain_changed_key(rk_keyring_dir(kr), e->name, dd->path);
			ret = -EKEYREJECTED;
		}
	}
	return ret;
}

void rk_registry_apply_released(struct rk_datadir *dd, struct rk_keyring *kr)
{
	for (size_t i = 0; i < dd->nkeys; i++)
		if (dd->keys[i].state == RK_KS_RELEASED)
			rk_keyring_release(kr, dd->keys[i].name);
}

int rk_registry_mark_compromised(struct rk_datadir *dd, const char *name, bool on)
{
	struct rk_regent *e = rk_registry_find(dd, name);
	int ret = 0;
	if (!e)
		ret = -ENOENT;
	else if (e->compromised == on)
		ret = 1;
	if (ret == 0) {
		e->compromised = on;
		ret = rk_registry_save(dd);
		if (ret < 0)
			e->compromised = !on;
	}
	return ret;
}

bool rk_registry_fp_compromised(const struct rk_datadir *dd, const uint8_t *fp)
{
	for (size_t i = 0; i < dd->nkeys; i++)
		if (dd->keys[i].compromised && memcmp(dd->keys[i].fp, fp, RK_FP_BYTES) == 0)
			return true;
	return false;
}
