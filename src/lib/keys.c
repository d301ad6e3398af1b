/* rekeyfs - key files (CIPHER:STRENGTH:BASE64KEY, mode 0600), key command
 * entries (a program prints the key) and the keyring. */
#include "config.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <uthash.h>

#include "rekeyfs/common.h"
#include "rekeyfs/keys.h"
#include "rekeyfs/lockrank.h"
#include "keycmd.h"
#include "p11.h"

int rk_key_name_check(const char *name)
{
	size_t n = strlen(name);
	/* no leading dot: hidden names are skipped when listing a key directory */
	if (n == 0 || n > RK_KEY_NAME_MAX || name[0] == '.')
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
		      c == '_' || c == '-'))
			return -EINVAL;
	}
	return 0;
}

const char *rk_keydir_resolve(const char *arg)
{
	if (arg && *arg)
		return arg;
	const char *env = getenv("REKEYFS_KEYDIR");
	if (env && *env)
		return env;
	return RK_DEFAULT_KEYDIR;
}

/* Owner and mode of one directory on the key directory's path (ssh's
 * StrictModes): owned by root or by us; the key directory itself writable by
 * nobody else; a parent writable by others only with the sticky bit (/tmp),
 * where others cannot rename or remove our entries. */
static int check_dir_trust(const char *dir, const char *keydir, bool is_keydir)
{
	struct stat st;
	uid_t me = geteuid();
	if (stat(dir, &st) < 0) {
		int e = errno;
		rk_err("key directory %s: cannot stat %s: %s", keydir, dir, strerror(e));
		return -e;
	}
	if (!S_ISDIR(st.st_mode)) {
		rk_err("key directory %s: %s is not a directory", keydir, dir);
		return -ENOTDIR;
	}
	if (st.st_uid != 0 && st.st_uid != me) {
		rk_err("key directory %s is refused: %s is owned by uid %u, not by root or by this process's "
		       "user (uid %u), who could replace the keys (run: chown %u %s)",
		       keydir, dir, (unsigned)st.st_uid, (unsigned)me, (unsigned)me, dir);
		return -EPERM;
	}
	if ((st.st_mode & 022) && (is_keydir || !(st.st_mode & S_ISVTX))) {
		rk_err("key directory %s is refused: %s has mode %04o, writable by group or others, who could "
		       "replace the keys (run: chmod go-w %s)",
		       keydir, dir, (unsigned)(st.st_mode & 07777), dir);
		return -EPERM;
	}
	return 0;
}

int rk_keydir_check(const char *keydir)
{
	char *real = realpath(keydir, NULL);
	int ret;
	if (!real) {
		ret = -errno;
		rk_err("key directory %s: %s", keydir, strerror(errno));
		return ret;
	}
	ret = check_dir_trust(real, keydir, true);
	/* and every directory above it, up to / */
	for (char *slash = strrchr(real, '/'); ret == 0 && slash; slash = strrchr(real, '/')) {
		if (slash == real) {
			if (real[1] == '\0')
				break;
			real[1] = '\0';
		} else {
			*slash = '\0';
		}
		ret = check_dir_trust(real, keydir, false);
	}
	free(real);
	return ret;
}

/* A key file: a regular file (not a symlink, FIFO, socket, device or
 * directory), owned by us or root, no group/other permission bits. */
static int check_key_stat(const struct stat *st, const char *path)
{
	uid_t me = geteuid();
	if (S_ISLNK(st->st_mode)) {
		rk_err("key file %s is a symbolic link: refused (put the key file itself in the key directory)", path);
		return -EPERM;
	}
	if (!S_ISREG(st->st_mode)) {
		rk_err("key file %s is not a regular file (%s): refused (remove it from the key directory)", path,
		       S_ISFIFO(st->st_mode)   ? "a FIFO"
		       : S_ISSOCK(st->st_mode) ? "a socket"
		       : S_ISDIR(st->st_mode)  ? "a directory"
		       : S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) ? "a device"
		                                                      : "not a file");
		return -EPERM;
	}
	if (st->st_uid != 0 && st->st_uid != me) {
		rk_err("key file %s is owned by uid %u, not by root or by this process's user (uid %u): refused "
		       "(run: chown %u %s)", path, (unsigned)st->st_uid, (unsigned)me, (unsigned)me, path);
		return -EPERM;
	}
	if (st->st_mode & 077) {
		rk_err("key file %s has mode %04o: it is accessible by group or others, so it is refused "
		       "(run: chmod 600 %s)", path, (unsigned)(st->st_mode & 07777), path);
		return -EPERM;
	}
	return 0;
}

/* Strict key file content: exactly CIPHER:STRENGTH:BASE64 with an optional
 * single trailing newline; STRENGTH a plain decimal allowed for CIPHER;
 * BASE64 canonical (padding only at the end, unused bits zero) and exactly
 * STRENGTH/8 bytes.  raw receives the key (rawcap >= 64). */
static int parse_key_text(char *buf, size_t n, const char *path, bool echo, enum rk_cipher *cp, unsigned *bitsp,
                          uint8_t *raw, size_t rawcap, size_t *keylenp)
{
	static const char malformed[] = "expected one line CIPHER:STRENGTH:BASE64KEY";
	const char *why;
	uint64_t bits;
	char *check = NULL;
	size_t checkcap = 0;
	int ret = -EINVAL;

	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	if (memchr(buf, '\0', n) || strchr(buf, '\n')) {
		rk_err("key file %s is malformed: %s (one line, no NUL byte)", path, malformed);
		goto out;
	}
	char *c1 = strchr(buf, ':');
	char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c1 || !c2 || strchr(c2 + 1, ':')) {
		rk_err("key file %s is malformed: %s", path, malformed);
		goto out;
	}
	*c1 = '\0';
	*c2 = '\0';
	if (rk_cipher_parse(buf, cp, &why) < 0) {
		rk_err("key file %s: cipher '%s' %s", path, echo ? rk_esc(buf) : "(not shown)", why);
		goto out;
	}
	int pr = rk_parse_u64(c1 + 1, 4096, &bits);
	if (pr < 0 || rk_cipher_check_strength(*cp, (unsigned)bits, &why) < 0) {
		rk_err("key file %s: bad strength '%s': %s", path, echo ? rk_esc(c1 + 1) : "(not shown)",
		       pr < 0 ? "write it as a plain decimal number of bits (no sign, space or leading zero)" : why);
		goto out;
	}
	size_t keylen = (size_t)bits / 8, elen = 4 * ((keylen + 2) / 3);
	const char *b64 = c2 + 1;
	size_t b64len = strlen(b64);
	size_t pad = keylen % 3 == 0 ? 0 : 3 - keylen % 3;
	bool ok = b64len == elen && keylen <= rawcap;
	for (size_t i = 0; ok && i < b64len; i++) {
		unsigned char ch = (unsigned char)b64[i];
		bool alpha = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
		             ch == '+' || ch == '/';
		ok = i >= b64len - pad ? ch == '=' : alpha;
	}
	if (!ok) {
		rk_err("key file %s: the key is not canonical base64 of %zu bytes (%zu characters, '=' only as final "
		       "padding)", path, keylen, elen);
		goto out;
	}
	if (EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)b64len) != (int)(keylen + pad)) {
		rk_err("key file %s: key is not valid base64", path);
		goto out;
	}
	/* canonical: encoding the key again gives the same text (no stray
	 * low bits in the last character) */
	checkcap = elen + 1;
	check = rk_secure_alloc(checkcap);
	if (!check) {
		ret = -ENOMEM;
		goto out;
	}
	if (EVP_EncodeBlock((unsigned char *)check, raw, (int)keylen) != (int)elen || CRYPTO_memcmp(check, b64, elen)) {
		rk_err("key file %s: the key is not canonical base64 (unused bits of the last character are set)", path);
		goto out;
	}
	*bitsp = (unsigned)bits;
	*keylenp = keylen;
	ret = 0;
out:
	rk_secure_free(check, checkcap);
	return ret;
}

static int ensure_keydir(const char *keydir)
{
	struct stat st;
	if (stat(keydir, &st) == 0)
		return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	if (errno != ENOENT)
		return -errno;
	/* create missing parents too (like mkdir -p), the last one 0700 */
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s", keydir) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Write the entry KEYDIR/NAME (text, n bytes; mode 0600): to a temporary
 * name, then linked into place: never a partial entry, never an overwrite
 * of an existing one (linkat fails with EEXIST). */
static int write_entry(const char *keydir, const char *name, const char *text, size_t n)
{
	int ret = ensure_keydir(keydir), dfd = -1, fd = -1;
	if (ret < 0) {
		rk_err("cannot create key directory %s: %s", keydir, strerror(-ret));
		return ret;
	}
	ret = rk_keydir_check(keydir);
	if (ret < 0)
		return ret;
	dfd = open(keydir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		ret = -errno;
		rk_err("cannot open key directory %s: %s", keydir, strerror(errno));
		goto out;
	}
	fd = openat(dfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		rk_err("cannot create key file in %s: %s", keydir, strerror(errno));
		goto out;
	}
	ret = rk_pwrite_full(fd, text, n, 0);
	if (ret == 0 && fchmod(fd, 0600) < 0)
		ret = -errno;
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (ret < 0) {
		rk_err("cannot write key file %s/%s: %s", keydir, name, strerror(-ret));
		goto out;
	}
	char procpath[64];
	snprintf(procpath, sizeof(procpath), "/proc/self/fd/%d", fd);
	if (linkat(AT_FDCWD, procpath, dfd, name, AT_SYMLINK_FOLLOW) < 0) {
		ret = -errno;
		if (errno == EEXIST)
			rk_err("key file %s/%s already exists; refusing to overwrite it (a key still needed to "
			       "read data must never be replaced; pick a new name)", keydir, name);
		else
			rk_err("cannot create key file %s/%s: %s", keydir, name, strerror(errno));
		goto out;
	}
	rk_fsync_dir(dfd);
out:
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	return ret;
}

static int check_new_name(const char *name)
{
	if (rk_key_name_check(name) < 0) {
		rk_err("invalid key name '%s': use 1 to %d characters of letters, digits, '.', '_' or '-'", rk_esc(name),
		       RK_KEY_NAME_MAX);
		return -EINVAL;
	}
	return 0;
}

int rk_key_create(const char *keydir, const char *cipher, unsigned bits, const char *name,
                  uint8_t fp_out[RK_FP_BYTES])
{
	enum rk_cipher c;
	const char *why;
	uint8_t *key = NULL;
	char *line = NULL;
	size_t keylen = bits / 8, linecap = 0;
	int ret = check_new_name(name);

	if (ret < 0)
		return ret;
	if (rk_cipher_parse(cipher, &c, &why) < 0) {
		rk_err("cipher '%s' refused: %s", cipher, why);
		return -EINVAL;
	}
	if (rk_cipher_check_strength(c, bits, &why) < 0) {
		rk_err("strength %u refused: %s", bits, why);
		return -EINVAL;
	}
	key = rk_secure_alloc(keylen);
	linecap = 64 + 4 * ((keylen + 2) / 3) + 2;
	line = rk_secure_alloc(linecap);
	if (!key || !line) {
		ret = -ENOMEM;
		goto out;
	}
	ret = rk_random(key, keylen);
	if (ret < 0)
		goto out;
	int n = snprintf(line, linecap, "%s:%u:", rk_cipher_name(c), bits);
	n += EVP_EncodeBlock((unsigned char *)line + n, key, (int)keylen);
	line[n++] = '\n';
	ret = write_entry(keydir, name, line, (size_t)n);
	if (ret == 0 && fp_out)
		ret = rk_key_fingerprint(c, key, keylen, fp_out);
out:
	rk_secure_free(key, keylen);
	rk_secure_free(line, linecap);
	return ret;
}

int rk_key_create_pkcs11(const char *keydir, const char *uri, const char *name, uint8_t fp_out[RK_FP_BYTES])
{
	char path[PATH_MAX], entry[4096];
	struct stat st;
	struct rk_key *k = NULL;
	int ret = check_new_name(name);
	if (ret == 0 && snprintf(path, sizeof(path), "%s/%s", keydir, name) >= (int)sizeof(path))
		ret = -ENAMETOOLONG;
	if (ret == 0 && lstat(path, &st) == 0) {
		rk_err("key file %s already exists; refusing to overwrite it (pick a new name)", path);
		ret = -EEXIST;
	}
	if (ret == 0)
		ret = rk_p11_generate(uri, entry, sizeof(entry));
	if (ret == 0)
		ret = write_entry(keydir, name, entry, strlen(entry));
	if (ret == 0)
		ret = rk_key_load(keydir, name, &k);
	if (ret == 0 && fp_out)
		memcpy(fp_out, k->fp, RK_FP_BYTES);
	rk_key_free(k);
	OPENSSL_cleanse(entry, sizeof(entry));
	return ret;
}

const char *rk_key_provider(const struct rk_key *k, char *buf, size_t cap)
{
	if (k->p11)
		snprintf(buf, cap, "pkcs11 %s", rk_p11_uri(k->p11));
	else
		snprintf(buf, cap, "file");
	return buf;
}

/* Open the key file path (in keydir) for reading: never a FIFO, socket or
 * device, never through a link, loose modes refused.  *fd gets it. */
static int key_file_open(const char *keydir, const char *name, const char *path, int *fd)
{
	struct stat st, lst;
	int ret;
	*fd = -1;
	if (lstat(path, &lst) < 0) {
		ret = errno == ENOENT ? -ENOKEY : -errno;
		if (errno == ENOENT)
			rk_dbg("key '%s' not found: no file %s", name, path);
		else
			rk_err("cannot open key file %s: %s", path, strerror(errno));
		return ret;
	}
	ret = rk_keydir_check(keydir);
	if (ret < 0)
		return ret;
	/* never open a FIFO, socket or device: refused before any open, and the
	 * open itself cannot block (O_NONBLOCK) nor follow a link */
	ret = check_key_stat(&lst, path);
	if (ret < 0)
		return ret;
	*fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (*fd < 0) {
		ret = errno == ENOENT ? -ENOKEY : -errno;
		rk_err("cannot open key file %s: %s", path, strerror(errno));
		return ret;
	}
	if (fstat(*fd, &st) < 0)
		return -errno;
	return check_key_stat(&st, path);
}

/* Read the whole key file into buf (bufcap bytes, NUL terminated); *n
 * gets its length.  A file that fills buf is longer than any key file. */
static int key_file_read(int fd, const char *path, char *buf, size_t bufcap, size_t *len)
{
	ssize_t n = rk_pread_full(fd, buf, bufcap - 1, 0);
	if (n < 0) {
		rk_err("cannot read key file %s: %s", path, strerror((int)-n));
		return (int)n;
	}
	if ((size_t)n == bufcap - 1) {
		/* longer than any key file: do not parse a prefix of it */
		rk_err("key file %s is malformed: expected one line CIPHER:STRENGTH:BASE64KEY", path);
		return -EINVAL;
	}
	buf[n] = '\0';
	*len = (size_t)n;
	return 0;
}

/* A key named name with the material raw[0..keylen) (copied into secure
 * memory) and its fingerprint. */
static int key_new(const char *name, enum rk_cipher c, unsigned bits, const uint8_t *raw, size_t keylen,
                   struct rk_key **out)
{
	int ret;
	struct rk_key *k = calloc(1, sizeof(*k));
	*out = NULL;
	if (!k)
		return -ENOMEM;
	snprintf(k->name, sizeof(k->name), "%s", name);
	k->cipher = c;
	k->bits = bits;
	k->keylen = keylen;
	k->material = rk_secure_alloc(k->keylen);
	if (!k->material) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(k->material, raw, k->keylen);
	ret = rk_key_fingerprint(c, k->material, k->keylen, k->fp);
	if (ret == 0) {
		*out = k;
		k = NULL;
	}
out:
	rk_key_free(k);
	return ret;
}

/* A key command entry: its program's output parsed as a key line (never
 * echoed, not even a field of it: a misbehaving program may print its key
 * in any shape). */
static int keycmd_load(char *buf, size_t n, const char *path, const char *name, enum rk_cipher *c, unsigned *bits,
                       uint8_t *raw, size_t rawcap, size_t *keylen)
{
	char *out = rk_secure_alloc(RK_KEYCMD_OUT_CAP);
	char what[2 * PATH_MAX + 64];
	size_t olen = 0;
	int ret = out ? rk_keycmd_output(buf, n, path, name, out, &olen, what, sizeof(what)) : -ENOMEM;
	if (ret == 0)
		ret = parse_key_text(out, olen, what, false, c, bits, raw, rawcap, keylen);
	rk_secure_free(out, RK_KEYCMD_OUT_CAP);
	return ret;
}

int rk_key_load(const char *keydir, const char *name, struct rk_key **out)
{
	char path[PATH_MAX];
	char *buf = NULL;
	size_t bufcap = 4096, keylen = 0, n = 0; /* a key line, or a key command entry */
	uint8_t *raw = NULL;
	int ret = 0, fd = -1;
	enum rk_cipher c;
	unsigned bits = 0;
	struct rk_p11key *p11 = NULL;

	*out = NULL;
	if (rk_key_name_check(name) < 0) {
		rk_err("invalid key name '%s'", rk_esc(name));
		return -EINVAL;
	}
	if (snprintf(path, sizeof(path), "%s/%s", keydir, name) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	ret = key_file_open(keydir, name, path, &fd);
	if (ret < 0)
		goto out;
	buf = rk_secure_alloc(bufcap);
	raw = rk_secure_alloc(bufcap);
	if (!buf || !raw) {
		ret = -ENOMEM;
		goto out;
	}
	ret = key_file_read(fd, path, buf, bufcap, &n);
	if (ret < 0)
		goto out;
	if (rk_p11_is_entry(buf, n)) {
		/* a token key: AES-256-GCM, its material the host secret */
		ret = rk_p11_load(buf, n, path, name, raw, &p11);
		c = RK_CIPHER_AES_GCM;
		bits = 256;
		keylen = RK_P11_SECRET_BYTES;
	} else if (rk_keycmd_is_entry(buf, n))
		ret = keycmd_load(buf, n, path, name, &c, &bits, raw, bufcap, &keylen);
	else
		ret = parse_key_text(buf, n, path, true, &c, &bits, raw, bufcap, &keylen);
	if (ret < 0)
		goto out;
	ret = key_new(name, c, bits, raw, keylen, out);
	if (ret == 0) {
		(*out)->p11 = p11;
		p11 = NULL;
	}
out:
	rk_p11_unref(p11);
	if (fd >= 0)
		close(fd);
	rk_secure_free(buf, bufcap);
	rk_secure_free(raw, bufcap);
	return ret;
}

int rk_key_dup(const struct rk_key *k, struct rk_key **out)
{
	*out = NULL;
	if (!k->material || k->released)
		return -EKEYREVOKED;
	int ret = key_new(k->name, k->cipher, k->bits, k->material, k->keylen, out);
	if (ret == 0)
		(*out)->p11 = rk_p11_ref(k->p11);
	return ret;
}

void rk_key_wipe(struct rk_key *k)
{
	/* zero the material but keep the page mapped until rk_key_free: another
	 * thread may be deriving from it right now */
	if (k && k->material) {
		OPENSSL_cleanse(k->material, k->keylen);
		k->released = true;
	}
}

void rk_key_free(struct rk_key *k)
{
	if (!k)
		return;
	if (k->material)
		rk_secure_free(k->material, k->keylen);
	rk_p11_unref(k->p11);
	free(k);
}

/* ---- keyring ---------------------------------------------------------------------- */
struct kr_ent {
	char name[RK_KEY_NAME_MAX + 1];
	struct rk_key *key; /* NULL: load failed with err */
	int err;
	bool released;
	UT_hash_handle hh;
};

struct rk_keyring {
	char *dir;
	pthread_mutex_t lock; /* rank RK_RANK_KEYRING (90): ents */
	struct kr_ent *ents;
};

int rk_keyring_new(const char *keydir, struct rk_keyring **out)
{
	struct rk_keyring *kr = calloc(1, sizeof(*kr));
	if (!kr)
		return -ENOMEM;
	kr->dir = strdup(keydir);
	if (!kr->dir) {
		free(kr);
		return -ENOMEM;
	}
	pthread_mutex_init(&kr->lock, NULL);
	*out = kr;
	return 0;
}

void rk_keyring_free(struct rk_keyring *kr)
{
	struct kr_ent *e, *tmp;
	if (!kr)
		return;
	HASH_ITER(hh, kr->ents, e, tmp)
	{
		HASH_DEL(kr->ents, e);
		rk_key_free(e->key);
		free(e);
	}
	pthread_mutex_destroy(&kr->lock);
	free(kr->dir);
	free(kr);
}

const char *rk_keyring_dir(const struct rk_keyring *kr) { return kr->dir; }

int rk_keyring_get(struct rk_keyring *kr, const char *name, struct rk_key **out)
{
	struct kr_ent *e;
	struct rk_key *k = NULL;
	int ret, err = 0;
	rk_mutex_lock(&kr->lock, RK_RANK_KEYRING);
	HASH_FIND_STR(kr->ents, name, e);
	rk_mutex_unlock(&kr->lock);
	/* loaded without the keyring lock: a key command entry's program may
	 * take up to its timeout, and other keys must not wait for it */
	if (!e)
		err = rk_key_load(kr->dir, name, &k);
	rk_mutex_lock(&kr->lock, RK_RANK_KEYRING);
	HASH_FIND_STR(kr->ents, name, e);
	if (!e) {
		/* first to finish: ours is the entry (a thread that loaded the
		 * same name meanwhile drops its copy below) */
		e = calloc(1, sizeof(*e));
		if (e) {
			snprintf(e->name, sizeof(e->name), "%s", name);
			e->key = k;
			e->err = err;
			k = NULL;
			HASH_ADD_STR(kr->ents, name, e);
		}
	}
	if (!e)
		ret = -ENOMEM;
	else if (e->released)
		ret = -EKEYREVOKED;
	else
		ret = e->err;
	*out = ret == 0 ? e->key : NULL;
	rk_mutex_unlock(&kr->lock);
	rk_key_free(k);
	return ret;
}

int rk_keyring_release(struct rk_keyring *kr, const char *name)
{
	struct kr_ent *e;
	rk_mutex_lock(&kr->lock, RK_RANK_KEYRING);
	HASH_FIND_STR(kr->ents, name, e);
	if (!e) {
		e = calloc(1, sizeof(*e));
		if (!e) {
			rk_mutex_unlock(&kr->lock);
			return -ENOMEM;
		}
		snprintf(e->name, sizeof(e->name), "%s", name);
		e->err = -EKEYREVOKED;
		HASH_ADD_STR(kr->ents, name, e);
	}
	e->released = true;
	if (e->key) {
		rk_key_wipe(e->key);
		e->key->released = true;
	}
	rk_mutex_unlock(&kr->lock);
	return 0;
}

void rk_keyring_reload(struct rk_keyring *kr)
{
	struct kr_ent *e, *tmp;
	rk_mutex_lock(&kr->lock, RK_RANK_KEYRING);
	HASH_ITER(hh, kr->ents, e, tmp)
	{
		if (!e->key && !e->released) {
			HASH_DEL(kr->ents, e);
			free(e);
		}
	}
	rk_mutex_unlock(&kr->lock);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int rk_keydir_list(const char *keydir, char ***names, size_t *count)
{
	char **v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int ret = rk_keydir_check(keydir);
	if (ret < 0)
		return ret;
	DIR *d = opendir(keydir);
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || rk_key_name_check(de->d_name) < 0)
			continue;
		if (strstr(de->d_name, ".tmp."))
			continue;
		/* FIFOs, sockets, devices, directories and symlinks are not key
		 * files: skipped here, never opened */
		struct stat st;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* removed meanwhile */
		if (!S_ISREG(st.st_mode)) {
			rk_warn("%s/%s is not a regular file: skipped (a key directory holds only key files)", keydir,
			        rk_esc(de->d_name));
			continue;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			char **nv = realloc(v, cap * sizeof(*v));
			if (!nv)
				goto nomem;
			v = nv;
		}
		v[n] = strdup(de->d_name);
		if (!v[n])
			goto nomem;
		n++;
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof(*v), cmp_str);
	*names = v;
	*count = n;
	return 0;
nomem:
	closedir(d);
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
	return -ENOMEM;
}
