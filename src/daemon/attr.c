/* rekeyfs daemon - attributes: the virtual files' attributes and the
 * plaintext size of regular files (from the open file, the inode's header
 * cache, the closed-file size cache, or a header read). */
#include "config.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "file.h"
#include "inode.h"
#include "rekeyfs/common.h"

/* ---- attributes ------------------------------------------------------------------------ */
void rkd_virt_attr(struct rkd_fs *fs, struct rkd_inode *in, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = in->ino;
	st->st_uid = 0;
	st->st_gid = 0;
	st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = fs->started;
	st->st_blksize = 4096;
	if (in->virt == RKD_VDIR) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else if (in->virt == RKD_VSTATUS || in->virt == RKD_VMETRICS) {
		/* root only, like the control file: the status names files (the
		 * walker's position, its errors) inside other users' private
		 * directories */
		st->st_mode = S_IFREG | 0400;
		st->st_nlink = 1;
	} else {
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
	}
}
/* ---- plaintext sizes of closed files ------------------------------------------------------
 * A stat of a file the kernel has forgotten would open it and read its
 * header; closed files' sizes are remembered here, keyed by (dev, ino) and
 * valid only while the stored file's size, mtime and ctime are unchanged
 * (any write changes ctime).  Bounded: cleared when it grows too large. */
#define SIZE_CACHE_MAX 65536 /* about 6 MiB of entries */
struct rkd_szent {
	struct ikey k;
	off_t stsize;
	struct timespec mtime;
	int kind;
	uint64_t size;
	UT_hash_handle hh;
};
/* the cache is fs->sztab (fs->szcount entries) under fs->szlock */

static bool ts_eq(struct timespec a, struct timespec b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }

static bool size_cache_get(struct rkd_fs *fs, const struct stat *st, int *kind, uint64_t *size)
{
	struct ikey k = {st->st_dev, st->st_ino};
	struct rkd_szent *e;
	bool hit = false;
	rk_mutex_lock(&fs->szlock, RK_RANK_SIZE);
	HASH_FIND(hh, fs->sztab, &k, sizeof(k), e);
	/* not the ctime: the kernel's write-back cache sets times (SETATTR) when
	 * it evicts an inode, and chmod/chown/xattrs change it; none of these
	 * changes the plaintext size, which only changes through an open file
	 * of this daemon (whose close refreshes the entry) */
	if (e && e->stsize == st->st_size && ts_eq(e->mtime, st->st_mtim)) {
		*kind = e->kind;
		*size = e->size;
		hit = true;
	}
	rk_mutex_unlock(&fs->szlock);
	return hit;
}

void rkd_size_cache_put(struct rkd_fs *fs, const struct stat *st, int kind, uint64_t size)
{
	struct ikey k = {st->st_dev, st->st_ino};
	struct rkd_szent *e, *tmp;
	rk_mutex_lock(&fs->szlock, RK_RANK_SIZE);
	HASH_FIND(hh, fs->sztab, &k, sizeof(k), e);
	if (!e) {
		if (fs->szcount >= SIZE_CACHE_MAX) {
			HASH_ITER(hh, fs->sztab, e, tmp)
			{
				HASH_DEL(fs->sztab, e);
				free(e);
			}
			fs->szcount = 0;
		}
		e = calloc(1, sizeof(*e));
		if (!e) {
			rk_mutex_unlock(&fs->szlock);
			return;
		}
		e->k = k;
		HASH_ADD(hh, fs->sztab, k, sizeof(e->k), e);
		fs->szcount++;
	}
	e->stsize = st->st_size;
	e->mtime = st->st_mtim;
	e->kind = kind;
	e->size = size;
	rk_mutex_unlock(&fs->szlock);
}

void rkd_size_cache_free(struct rkd_fs *fs)
{
	struct rkd_szent *e, *tmp;
	rk_mutex_lock(&fs->szlock, RK_RANK_SIZE);
	HASH_ITER(hh, fs->sztab, e, tmp)
	{
		HASH_DEL(fs->sztab, e);
		free(e);
	}
	fs->szcount = 0;
	rk_mutex_unlock(&fs->szlock);
}

/* Replace st_size of a regular file by its plaintext size. */
int rkd_fix_size(struct rkd_fs *fs, struct rkd_inode *in, struct stat *st)
{
	if (!S_ISREG(st->st_mode))
		return 0;
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	if (in->of) {
		if (in->of->chunk)
			st->st_size = (off_t)rk_cf_size(in->of->cf);
		rk_mutex_unlock(&in->lock);
		return 0;
	}
	if (in->hdr_kind >= 0 && in->hdr_stsize == st->st_size && ts_eq(in->hdr_mtime, st->st_mtim)) {
		if (in->hdr_kind == 1)
			st->st_size = (off_t)in->hdr_size;
		rk_mutex_unlock(&in->lock);
		return 0;
	}
	int ckind;
	uint64_t csize;
	if (size_cache_get(fs, st, &ckind, &csize)) {
		in->hdr_kind = ckind;
		in->hdr_size = csize;
		in->hdr_stsize = st->st_size;
		in->hdr_mtime = st->st_mtim;
		if (ckind == 1)
			st->st_size = (off_t)csize;
		rk_mutex_unlock(&in->lock);
		return 0;
	}
	char pp[64];
	PROCPATH(pp, in->fd);
	int fd = open(pp, O_RDONLY | O_CLOEXEC | O_NOATIME);
	if (fd < 0 && errno == EPERM)
		fd = open(pp, O_RDONLY | O_CLOEXEC);
	int ret = 0;
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	int kind = rk_cf_probe(fd);
	if (kind < 0) {
		ret = kind;
		goto out;
	}
	uint64_t size = (uint64_t)st->st_size;
	if (kind == 1) {
		struct rk_cf_header h;
		char *rel = rkd_inode_rel(fs, in);
		ret = rk_cf_read_header(fd, rel ? rel : "?", &h, NULL);
		free(rel);
		if (ret < 0) {
			/* unreadable header: show the stored size, reads will fail with EIO */
			ret = 0;
			goto out;
		}
		size = h.size;
	}
	in->hdr_kind = kind;
	in->hdr_size = size;
	in->hdr_stsize = st->st_size;
	in->hdr_mtime = st->st_mtim;
	rkd_size_cache_put(fs, st, kind, size);
	st->st_size = (off_t)size;
out:
	if (fd >= 0)
		close(fd);
	rk_mutex_unlock(&in->lock);
	return ret;
}

int rkd_get_attr(struct rkd_fs *fs, struct rkd_inode *in, struct stat *st)
{
	if (in->virt != RKD_REAL) {
		rkd_virt_attr(fs, in, st);
		return 0;
	}
	if (fstatat(in->fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return rkd_fix_size(fs, in, st);
}
