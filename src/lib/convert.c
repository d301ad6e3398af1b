/* rekeyfs - crash-safe whole-file conversion. */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/format.h"
#include "rekeyfs/sweep.h"
#include "replace_int.h"

bool rk_is_tmp_name(const char *name) { return strncmp(name, RK_TMP_PREFIX, strlen(RK_TMP_PREFIX)) == 0; }

int rk_tmp_cleanup(int dirfd, const char *name)
{
	struct stat st;
	if (!rk_is_tmp_name(name))
		return 0;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return 0;
	int removable = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_size == 0 || rk_cf_probe(fd) == 1);
	close(fd);
	if (removable && unlinkat(dirfd, name, 0) == 0)
		return 1;
	return 0;
}

/* The name list of fd's extended attributes, whatever its size (sized by a
 * query, retried when it grew meanwhile).  *out (malloc'ed, may be NULL when
 * *len is 0) or a negative errno; no support for xattrs is an empty list. */
static int xattr_list(int fd, char **out, size_t *len)
{
	char *buf = NULL;
	int ret = -ERANGE;
	*out = NULL;
	*len = 0;
	for (int tries = 0; tries < 16 && ret == -ERANGE; tries++) {
		ssize_t n = flistxattr(fd, NULL, 0);
		if (n < 0) {
			ret = errno == ENOTSUP ? 0 : -errno;
			break;
		}
		if (n == 0) {
			ret = 0;
			break;
		}
		char *nb = realloc(buf, (size_t)n);
		if (!nb) {
			ret = -ENOMEM;
			break;
		}
		buf = nb;
		ssize_t m = flistxattr(fd, buf, (size_t)n);
		if (m < 0) {
			ret = -errno; /* ERANGE: it grew since the query, ask again */
			continue;
		}
		*out = buf;
		*len = (size_t)m;
		buf = NULL;
		ret = 0;
	}
	free(buf);
	return ret;
}

/* One attribute's value, whatever its size.  -ENODATA: removed meanwhile. */
static int xattr_get(int fd, const char *name, char **out, size_t *len)
{
	char *buf = NULL;
	int ret = -ERANGE;
	*out = NULL;
	*len = 0;
	for (int tries = 0; tries < 16 && ret == -ERANGE; tries++) {
		ssize_t n = fgetxattr(fd, name, NULL, 0);
		if (n < 0) {
			ret = -errno;
			break;
		}
		char *nb = realloc(buf, n ? (size_t)n : 1);
		if (!nb) {
			ret = -ENOMEM;
			break;
		}
		buf = nb;
		ssize_t m = n ? fgetxattr(fd, name, buf, (size_t)n) : 0;
		if (m < 0) {
			ret = -errno;
			continue;
		}
		*out = buf;
		*len = (size_t)m;
		buf = NULL;
		ret = 0;
	}
	free(buf);
	return ret;
}

/* Copy every extended attribute (ACLs included: system.posix_acl_*) of from
 * to to, whatever their number and size.  An attribute that cannot be read or
 * written fails the copy, naming the file and the attribute: the caller then
 * refuses to replace the file (a replacement must not lose any). */
static int copy_xattrs(int from, int to, const char *rel)
{
	char *list = NULL, *val = NULL;
	size_t n = 0, vlen;
	int ret = xattr_list(from, &list, &n);
	if (ret < 0) {
		rk_err("%s: cannot list the extended attributes: %s; the file is not replaced", rel, rk_strerror(ret));
		goto out;
	}
	for (size_t off = 0; off < n;) {
		const char *p = list + off;
		size_t nl = strnlen(p, n - off);
		if (nl == n - off) {
			ret = -EINVAL; /* an unterminated last name */
			rk_err("%s: malformed extended attribute list; the file is not replaced", rel);
			goto out;
		}
		off += nl + 1;
		if (nl == 0)
			continue;
		free(val);
		val = NULL;
		ret = xattr_get(from, p, &val, &vlen);
		if (ret == -ENODATA) {
			ret = 0; /* removed since the list was read: nothing to copy */
			continue;
		}
		if (ret < 0) {
			rk_err("%s: cannot read extended attribute %s: %s; the file is not replaced", rel, p,
			       rk_strerror(ret));
			goto out;
		}
		if (fsetxattr(to, p, val, vlen, 0) < 0) {
			ret = -errno;
			rk_err("%s: cannot copy extended attribute %s (%zu bytes): %s; the file is not replaced", rel, p, vlen,
			       rk_strerror(ret));
			goto out;
		}
	}
	ret = 0;
out:
	free(val);
	free(list);
	return ret;
}

int rk_tmp_create(int dirfd, char *name, size_t len)
{
	uint8_t rnd[8];
	char hex[17];
	for (int tries = 0; tries < 8; tries++) {
		if (rk_random(rnd, sizeof(rnd)) < 0)
			return -EIO;
		rk_hex(hex, rnd, sizeof(rnd));
		snprintf(name, len, "%s%s", RK_TMP_PREFIX, hex);
		int fd = openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd >= 0 || errno != EEXIST)
			return fd >= 0 ? fd : -errno;
	}
	return -EEXIST;
}

int rk_copy_identity(int src, int tmp, const struct stat *st, const char *rel)
{
	struct timespec ts[2] = {st->st_atim, st->st_mtim};
	if (fchown(tmp, st->st_uid, st->st_gid) < 0 && errno != EPERM)
		return -errno;
	if (fchmod(tmp, st->st_mode & 07777) < 0)
		return -errno;
	int ret = copy_xattrs(src, tmp, rel);
	if (ret < 0)
		return ret;
	if (futimens(tmp, ts) < 0)
		return -errno;
	return 0;
}


static int resolve_table_key(struct rk_datadir *dd, struct rk_keyring *kr, const char *rel,
                             const struct rk_table **tab, struct rk_key **key)
{
	*tab = rk_policy_lookup(dd, rel);
	int ret = rk_keyring_get(kr, (*tab)->key, key);
	if (ret < 0) {
		rk_err("%s: cannot use target key '%s' of table %s: %s (key directory %s)", rel, (*tab)->key,
		       (*tab)->path, rk_strerror(ret), rk_keyring_dir(kr));
		return ret;
	}
	struct rk_regent *re = rk_registry_find(dd, (*tab)->key);
	if (re && memcmp(re->fp, (*key)->fp, RK_FP_BYTES) != 0) {
		rk_err("key file %s/%s does not match the fingerprint recorded in %s for key '%s'; refusing to seal "
		       "data under it", rk_keyring_dir(kr), (*tab)->key, dd->path, (*tab)->key);
		return -EKEYREJECTED;
	}
	return 0;
}

int rk_convert_prepare(int dirfd, const char *name, const char *rel, struct rk_keyring *kr, struct rk_key *key,
                       uint32_t chunk_size, enum rk_comp comp, const struct rk_replace_cb *cb, struct rk_replace **out)
{
	struct rk_cf *cf = NULL;
	uint8_t *buf = NULL;
	int ret;
	struct rk_replace *r;
	ret = rk_replace_new(dirfd, name, rel, &r);
	*out = r;
	if (ret < 0) {
		rk_err("%s: cannot open: %s", rel, rk_strerror(ret));
		return ret;
	}
	if (!S_ISREG(r->st.st_mode))
		return 2;
	ret = rk_cf_probe(r->src);
	if (ret != 0)
		return ret; /* 1: already a chunk file; or the probe's error */
	if (r->st.st_nlink > 1) {
		rk_warn("%s has %ju hard links; not converted (replacing it would split the links). Copy it to a "
		        "single-link file first, or write it anew through a rekeyfs mount", rel, (uintmax_t)r->st.st_nlink);
		return 2;
	}
	r->tmp = rk_tmp_create(dirfd, r->tmpname, sizeof(r->tmpname));
	if (r->tmp < 0) {
		ret = r->tmp;
		r->tmpname[0] = '\0';
		rk_err("%s: cannot create temporary file: %s", rel, strerror(-ret));
		return ret;
	}
	rk_crashpoint("convert.tmp-created");
	ret = rk_cf_create(r->tmp, rel, kr, chunk_size, comp, key, &cf);
	if (ret < 0)
		goto out;
	buf = malloc(chunk_size);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint64_t off = 0; off < (uint64_t)r->st.st_size; off += chunk_size) {
		ssize_t n = rk_pread_full(r->src, buf, chunk_size, (off_t)off);
		if (n < 0) {
			ret = (int)n;
			rk_err("%s: read error at offset %" PRIu64 ": %s", rel, off, strerror(-ret));
			goto out;
		}
		if (n == 0)
			break;
		bool zero = true;
		for (ssize_t i = 0; i < n && zero; i++)
			zero = buf[i] == 0;
		if (!zero) { /* holes stay holes */
			ssize_t w = rk_cf_pwrite(cf, buf, (size_t)n, off, key, comp);
			if (w < 0) {
				ret = (int)w;
				goto out;
			}
			rk_crashpoint("convert.chunk-written");
		}
		if (cb && cb->throttle) {
			ret = cb->throttle(cb->arg, off / chunk_size, (uint64_t)n);
			if (ret < 0)
				goto out;
		}
	}
	ret = rk_cf_truncate(cf, (uint64_t)r->st.st_size, key, comp);
	if (ret == 0)
		ret = rk_cf_sync(cf);
	if (ret < 0)
		goto out;
	rk_crashpoint("convert.synced");
	ret = rk_copy_identity(r->src, r->tmp, &r->st, rel);
	if (ret == 0 && fsync(r->tmp) < 0)
		ret = -errno;
out:
	rk_cf_close(cf);
	free(buf);
	return ret;
}

int rk_convert_file(struct rk_datadir *dd, struct rk_keyring *kr, int dirfd, const char *name, const char *rel)
{
	const struct rk_table *tab;
	struct rk_key *key;
	struct rk_replace *r = NULL;
	struct stat st;
	/* what needs no key first: a file that is skipped needs none */
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		int e = errno;
		rk_err("%s: cannot open: %s", rel, strerror(e));
		return -e;
	}
	if (!S_ISREG(st.st_mode))
		return 2;
	/* already a chunk file (no key needed for that) */
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		rk_err("%s: cannot open: %s", rel, strerror(e));
		return -e;
	}
	int ret = rk_cf_probe(fd);
	close(fd);
	if (ret != 0)
		return ret;
	ret = resolve_table_key(dd, kr, rel, &tab, &key);
	if (ret < 0)
		return ret;
	ret = rk_convert_prepare(dirfd, name, rel, kr, key, tab->chunk_size, tab->comp, NULL, &r);
	if (ret == 0) {
		rk_crashpoint("convert.before-rename");
		ret = rk_replace_commit(r, NULL, NULL);
		if (ret == 0)
			rk_crashpoint("convert.after-rename");
		if (ret == -EAGAIN)
			rk_err("%s changed while it was being converted (is a database writing to it?); left as it was. Stop "
			       "the writer, or let it write through a rekeyfs mount", rel);
		else if (ret < 0)
			rk_err("%s: cannot replace with the converted file: %s", rel, strerror(-ret));
	}
	int r2 = rk_replace_end(r);
	return ret == 0 ? r2 : ret;
}
