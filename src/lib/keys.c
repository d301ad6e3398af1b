/* rekeyfs - key files (CIPHER:STRENGTH:BASE64KEY, mode 0600) and the keyring. */
#include "config.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <uthash.h>

#include "rekeyfs/common.h"
#include "rekeyfs/keys.h"
#include "rekeyfs/lockrank.h"

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

int rk_key_create(const char *keydir, const char *cipher, unsigned bits, const char *name,
                  uint8_t fp_out[RK_FP_BYTES])
{
	enum rk_cipher c;
	const char *why;
	uint8_t *key = NULL;
	char *line = NULL;
	size_t keylen = bits / 8, linecap = 0;
	int ret, dfd = -1, fd = -1;

	if (rk_key_name_check(name) < 0) {
		rk_err("invalid key name '%s': use 1 to %d characters of letters, digits, '.', '_' or '-'", name,
		       RK_KEY_NAME_MAX);
		return -EINVAL;
	}
	if (rk_cipher_parse(cipher, &c, &why) < 0) {
		rk_err("cipher '%s' refused: %s", cipher, why);
		return -EINVAL;
	}
	if (rk_cipher_check_strength(c, bits, &why) < 0) {
		rk_err("strength %u refused: %s", bits, why);
		return -EINVAL;
	}
	ret = ensure_keydir(keydir);
	if (ret < 0) {
		rk_err("cannot create key directory %s: %s", keydir, strerror(-ret));
		return ret;
	}
	dfd = open(keydir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		ret = -errno;
		rk_err("cannot open key directory %s: %s", keydir, strerror(errno));
		goto out;
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
	/* write to a temporary name, then link it into place: never a partial key file,
	 * and never an overwrite of an existing one (linkat fails with EEXIST) */
	fd = openat(dfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		rk_err("cannot create key file in %s: %s", keydir, strerror(errno));
		goto out;
	}
	ret = rk_pwrite_full(fd, line, (size_t)n, 0);
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
	if (fp_out)
		ret = rk_key_fingerprint(c, key, keylen, fp_out);
out:
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	rk_secure_free(key, keylen);
	rk_secure_free(line, linecap);
	return ret;
}

int rk_key_load(const char *keydir, const char *name, struct rk_key **out)
{
	struct rk_key *k = NULL;
	char path[PATH_MAX];
	char *buf = NULL;
	size_t bufcap = 512;
	uint8_t *raw = NULL;
	int ret = 0, fd = -1;
	struct stat st;
	enum rk_cipher c;
	const char *why;

	*out = NULL;
	if (rk_key_name_check(name) < 0) {
		rk_err("invalid key name '%s'", name);
		return -EINVAL;
	}
	if (snprintf(path, sizeof(path), "%s/%s", keydir, name) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		ret = errno == ENOENT ? -ENOKEY : -errno;
		if (errno == ENOENT)
			rk_dbg("key '%s' not found: no file %s", name, path);
		else
			rk_err("cannot open key file %s: %s", path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rk_err("key file %s is not a regular file", path);
		ret = -EINVAL;
		goto out;
	}
	if (st.st_mode & 077) {
		rk_err("key file %s has mode %04o: it is accessible by group or others, so it is refused "
		       "(run: chmod 600 %s)", path, (unsigned)(st.st_mode & 07777), path);
		ret = -EPERM;
		goto out;
	}
	buf = rk_secure_alloc(bufcap);
	raw = rk_secure_alloc(bufcap);
	if (!buf || !raw) {
		ret = -ENOMEM;
		goto out;
	}
	ssize_t n = rk_pread_full(fd, buf, bufcap - 1, 0);
	if (n < 0) {
		ret = (int)n;
		rk_err("cannot read key file %s: %s", path, strerror(-ret));
		goto out;
	}
	if ((size_t)n == bufcap - 1) {
		/* longer than any key file: do not parse a prefix of it */
		rk_err("key file %s is malformed: expected one line CIPHER:STRENGTH:BASE64KEY", path);
		ret = -EINVAL;
		goto out;
	}
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	char *c1 = strchr(buf, ':');
	char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c1 || !c2 || strchr(buf, '\n')) {
		rk_err("key file %s is malformed: expected one line CIPHER:STRENGTH:BASE64KEY", path);
		ret = -EINVAL;
		goto out;
	}
	*c1 = '\0';
	*c2 = '\0';
	if (rk_cipher_parse(buf, &c, &why) < 0) {
		rk_err("key file %s: cipher '%s' %s", path, buf, why);
		ret = -EINVAL;
		goto out;
	}
	char *end;
	unsigned long bits = strtoul(c1 + 1, &end, 10);
	if (*end || rk_cipher_check_strength(c, (unsigned)bits, &why) < 0) {
		rk_err("key file %s: bad strength '%s'%s%s", path, c1 + 1, why ? ": " : "", why ? why : "");
		ret = -EINVAL;
		goto out;
	}
	size_t b64len = strlen(c2 + 1);
	int dl = EVP_DecodeBlock(raw, (unsigned char *)c2 + 1, (int)b64len);
	if (dl < 0 || b64len % 4) {
		rk_err("key file %s: key is not valid base64", path);
		ret = -EINVAL;
		goto out;
	}
	/* EVP_DecodeBlock counts padding bytes as output; remove them */
	if (b64len >= 1 && c2[b64len] == '=')
		dl--;
	if (b64len >= 2 && c2[b64len - 1] == '=')
		dl--;
	if ((unsigned long)dl * 8 != bits) {
		rk_err("key file %s: key is %d bits long but the file says %lu", path, dl * 8, bits);
		ret = -EINVAL;
		goto out;
	}
	k = calloc(1, sizeof(*k));
	if (!k) {
		ret = -ENOMEM;
		goto out;
	}
	snprintf(k->name, sizeof(k->name), "%s", name);
	k->cipher = c;
	k->bits = (unsigned)bits;
	k->keylen = (size_t)dl;
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
	if (fd >= 0)
		close(fd);
	rk_secure_free(buf, bufcap);
	rk_secure_free(raw, bufcap);
	rk_key_free(k);
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
	int ret;
	rk_mutex_lock(&kr->lock, RK_RANK_KEYRING);
	HASH_FIND_STR(kr->ents, name, e);
	if (!e) {
		e = calloc(1, sizeof(*e));
		if (!e) {
			rk_mutex_unlock(&kr->lock);
			return -ENOMEM;
		}
		snprintf(e->name, sizeof(e->name), "%s", name);
		e->err = rk_key_load(kr->dir, name, &e->key);
		HASH_ADD_STR(kr->ents, name, e);
	}
	if (e->released)
		ret = -EKEYREVOKED;
	else
		ret = e->err;
	*out = ret == 0 ? e->key : NULL;
	rk_mutex_unlock(&kr->lock);
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
	DIR *d = opendir(keydir);
	char **v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || rk_key_name_check(de->d_name) < 0)
			continue;
		if (strstr(de->d_name, ".tmp."))
			continue;
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
