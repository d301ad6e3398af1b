/* rekeyfs daemon - the FUSE low-level operations.
 *
 * Every inode holds an O_PATH fd on its backing object.  An open regular
 * file has one rkd_file shared by all its handles: one read-write backing fd
 * and, for chunk files, one rk_cf.  Reads and writes take the file's rwlock
 * shared and lock the chunk stripes they touch (readers shared, writers
 * exclusive); truncation, extension and fsync take the file lock exclusively. */
#include "config.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/sweep.h"

#define PROCPATH(buf, fd) snprintf((buf), sizeof(buf), "/proc/self/fd/%d", (fd))

static struct rkd_fs *FS(fuse_req_t req) { return fuse_req_userdata(req); }

static struct rkd_inode *INO(struct rkd_fs *fs, fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return &fs->root;
	return (struct rkd_inode *)(uintptr_t)ino;
}

static fuse_ino_t NODEID(struct rkd_fs *fs, struct rkd_inode *in)
{
	return in == &fs->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)in;
}

/* Map library errors to what a filesystem caller can see. */
static int ferr(int neg)
{
	switch (-neg) {
	case EUCLEAN:
	case ENOKEY:
	case EKEYREVOKED:
	case EKEYREJECTED:
	case EPROTONOSUPPORT:
	case EBADMSG:
		return EIO;
	default:
		return neg < 0 ? -neg : EIO;
	}
}

static struct rkd_inode *itab_find(struct rkd_fs *fs, dev_t dev, ino_t ino);

/* Names the daemon reserves in every directory: the state directory name
 * (the root's is the virtual .rekeyfs/, one below the root would pass for
 * it: rekeyctl and admins look for MOUNT/.../.rekeyfs/control) and the
 * temporaries of whole-file replacement. */
static bool reserved_name(fuse_ino_t parent, const char *name)
{
	(void)parent;
	return strcmp(name, RK_STATE_DIR) == 0 || rk_is_tmp_name(name);
}

/* A .rekeyfs below the root in the data directory: never shown, reported
 * once per directory (someone planted it, or a data directory was copied
 * into a table). */
static void planted_state_dir(struct rkd_inode *dir)
{
	if (!atomic_exchange(&dir->planted_logged, true))
		rk_warn("a directory named %s below the data directory root is hidden (directory inode %ju): only the "
		        "root's state directory is rekeyfs's; remove it from the data directory",
		        RK_STATE_DIR, (uintmax_t)dir->ino);
}

/* Path of an inode from the data directory ("/a/b"), allocated.  Built from
 * the daemon's own parent chain: the name and parent under which the kernel
 * last looked up each inode (kept in step by rename), so it has no length
 * limit and does not depend on how /proc shows the backing tree.  When the
 * chain is broken (an inode the kernel never looked up, an ancestor
 * forgotten), the path the walker found it at, then /proc/self/fd.  Returns
 * NULL only when out of memory. */
static char *inode_rel(struct rkd_fs *fs, struct rkd_inode *in)
{
	char *out = NULL;
	if (in == &fs->root)
		return strdup("/");
	/* the chain, built backwards into a growing buffer */
	size_t cap = 256, pos = cap - 1;
	char *buf = malloc(cap);
	if (!buf)
		return NULL;
	buf[pos] = '\0';
	bool complete = false;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	struct rkd_inode *cur = in;
	for (unsigned depth = 0; depth < 65536 && cur && cur->name; depth++) {
		size_t nl = strlen(cur->name);
		while (pos < nl + 1) {
			char *nb = malloc(cap * 2);
			if (!nb) {
				rk_mutex_unlock(&fs->itab_lock);
				free(buf);
				return NULL;
			}
			memcpy(nb + cap, buf, cap);
			free(buf);
			buf = nb;
			pos += cap;
			cap *= 2;
		}
		pos -= nl;
		memcpy(buf + pos, cur->name, nl);
		buf[--pos] = '/';
		if (cur->pdev == fs->root.dev && cur->pino == fs->root.ino) {
			complete = true;
			break;
		}
		cur = itab_find(fs, cur->pdev, cur->pino);
	}
	if (!complete && in->wrel)
		out = strdup(in->wrel);
	rk_mutex_unlock(&fs->itab_lock);
	if (complete) {
		out = strdup(buf + pos);
		free(buf);
		return out;
	}
	free(buf);
	if (out)
		return out;
	char pp[64], link[PATH_MAX];
	PROCPATH(pp, in->fd);
	ssize_t n = readlink(pp, link, sizeof(link) - 1);
	if (n < 0)
		return strdup("?");
	link[n] = '\0';
	char *del = strstr(link, " (deleted)");
	if (del && del[10] == '\0')
		*del = '\0';
	if (strncmp(link, fs->datadir_real, fs->datadir_len) == 0 &&
	    (link[fs->datadir_len] == '/' || link[fs->datadir_len] == '\0'))
		return strdup(link[fs->datadir_len] ? link + fs->datadir_len : "/");
	return strdup(link);
}

/* ---- inode table ------------------------------------------------------------------- */
struct ikey {
	dev_t dev;
	ino_t ino;
};
_Static_assert(offsetof(struct rkd_inode, ino) == offsetof(struct rkd_inode, dev) + sizeof(dev_t) &&
                   sizeof(struct ikey) == sizeof(dev_t) + sizeof(ino_t),
               "the inode hash key must be the adjacent dev and ino members");

static struct rkd_inode *itab_find(struct rkd_fs *fs, dev_t dev, ino_t ino)
{
	struct rkd_inode *in;
	struct ikey k = {dev, ino};
	HASH_FIND(hh, fs->inodes, &k, sizeof(k), in);
	return in;
}

static void set_where(struct rkd_inode *in, const struct rkd_inode *parent, const char *name)
{
	if (!parent || !name)
		return;
	if (in->name && strcmp(in->name, name) == 0 && in->pdev == parent->dev && in->pino == parent->ino)
		return;
	char *n = strdup(name);
	if (!n)
		return;
	free(in->name);
	in->name = n;
	in->pdev = parent->dev;
	in->pino = parent->ino;
}

/* The inode for st, nlookup+1; a new inode adopts fd as its fd (*adopted)
 * and, with lock_new, is returned with its lock held (taken under itab_lock
 * before the inode is in the table: nobody can hold or wait for it, so this
 * does not invert the usual order in->lock before itab_lock); else the
 * caller keeps fd.
 * parent/name: where it was looked up (NULL when unknown). */
static struct rkd_inode *inode_get_ex(struct rkd_fs *fs, int fd, const struct stat *st, const struct rkd_inode *parent,
                                      const char *name, bool lock_new, bool *adopted)
{
	struct rkd_inode *in;
	*adopted = false;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	in = itab_find(fs, st->st_dev, st->st_ino);
	if (in) {
		in->nlookup++;
		set_where(in, parent, name);
		rk_mutex_unlock(&fs->itab_lock);
		return in;
	}
	in = calloc(1, sizeof(*in));
	if (!in) {
		rk_mutex_unlock(&fs->itab_lock);
		return NULL;
	}
	*adopted = true;
	in->fd = fd;
	in->dev = st->st_dev;
	in->ino = st->st_ino;
	in->type = st->st_mode & S_IFMT;
	in->nlookup = 1;
	in->hdr_kind = -1;
	pthread_mutex_init(&in->lock, NULL);
	pthread_cond_init(&in->closed, NULL);
	set_where(in, parent, name);
	if (lock_new)
		rk_mutex_trylock(&in->lock, RK_RANK_INODE); /* new, not yet in the table: cannot fail or wait */
	/* key: the adjacent (dev, ino) members, laid out like struct ikey */
	HASH_ADD(hh, fs->inodes, dev, sizeof(struct ikey), in);
	if (++fs->ninodes > fs->inode_high && fs->reclaim_started)
		pthread_cond_signal(&fs->reclaim_cond);
	rk_mutex_unlock(&fs->itab_lock);
	return in;
}

/* Take ownership of fd (O_PATH): return the inode for st, nlookup+1. */
static struct rkd_inode *inode_get_at(struct rkd_fs *fs, int fd, const struct stat *st, const struct rkd_inode *parent,
                                      const char *name)
{
	bool adopted;
	struct rkd_inode *in = inode_get_ex(fs, fd, st, parent, name, false, &adopted);
	if (!adopted)
		close(fd);
	return in;
}

static void inode_unref(struct rkd_fs *fs, struct rkd_inode *in, uint64_t n)
{
	if (in->virt != RKD_REAL || in == &fs->root)
		return;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	if (n > in->nlookup)
		n = in->nlookup;
	in->nlookup -= n;
	if (in->nlookup == 0) {
		HASH_DELETE(hh, fs->inodes, in);
		fs->ninodes--;
		rk_mutex_unlock(&fs->itab_lock);
		close(in->fd);
		free(in->name);
		free(in->wrel);
		pthread_mutex_destroy(&in->lock);
		pthread_cond_destroy(&in->closed);
		free(in);
		return;
	}
	rk_mutex_unlock(&fs->itab_lock);
}

/* ---- attributes ------------------------------------------------------------------------ */
static void virt_attr(struct rkd_fs *fs, struct rkd_inode *in, struct stat *st)
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
	} else if (in->virt == RKD_VSTATUS) {
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
struct szent {
	struct ikey k;
	off_t stsize;
	struct timespec mtime;
	int kind;
	uint64_t size;
	UT_hash_handle hh;
};
static pthread_mutex_t szlock = PTHREAD_MUTEX_INITIALIZER; /* rank RK_RANK_SIZE (72): the size cache */
static struct szent *sztab;
static unsigned szcount;

static bool ts_eq(struct timespec a, struct timespec b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }

static bool size_cache_get(const struct stat *st, int *kind, uint64_t *size)
{
	struct ikey k = {st->st_dev, st->st_ino};
	struct szent *e;
	bool hit = false;
	rk_mutex_lock(&szlock, RK_RANK_SIZE);
	HASH_FIND(hh, sztab, &k, sizeof(k), e);
	/* not the ctime: the kernel's write-back cache sets times (SETATTR) when
	 * it evicts an inode, and chmod/chown/xattrs change it; none of these
	 * changes the plaintext size, which only changes through an open file
	 * of this daemon (whose close refreshes the entry) */
	if (e && e->stsize == st->st_size && ts_eq(e->mtime, st->st_mtim)) {
		*kind = e->kind;
		*size = e->size;
		hit = true;
	}
	rk_mutex_unlock(&szlock);
	return hit;
}

static void size_cache_put(const struct stat *st, int kind, uint64_t size)
{
	struct ikey k = {st->st_dev, st->st_ino};
	struct szent *e, *tmp;
	rk_mutex_lock(&szlock, RK_RANK_SIZE);
	HASH_FIND(hh, sztab, &k, sizeof(k), e);
	if (!e) {
		if (szcount >= SIZE_CACHE_MAX) {
			HASH_ITER(hh, sztab, e, tmp)
			{
				HASH_DEL(sztab, e);
				free(e);
			}
			szcount = 0;
		}
		e = calloc(1, sizeof(*e));
		if (!e) {
			rk_mutex_unlock(&szlock);
			return;
		}
		e->k = k;
		HASH_ADD(hh, sztab, k, sizeof(e->k), e);
		szcount++;
	}
	e->stsize = st->st_size;
	e->mtime = st->st_mtim;
	e->kind = kind;
	e->size = size;
	rk_mutex_unlock(&szlock);
}

void rkd_size_cache_free(void)
{
	struct szent *e, *tmp;
	rk_mutex_lock(&szlock, RK_RANK_SIZE);
	HASH_ITER(hh, sztab, e, tmp)
	{
		HASH_DEL(sztab, e);
		free(e);
	}
	szcount = 0;
	rk_mutex_unlock(&szlock);
}

/* Replace st_size of a regular file by its plaintext size. */
static int fix_size(struct rkd_fs *fs, struct rkd_inode *in, struct stat *st)
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
	if (size_cache_get(st, &ckind, &csize)) {
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
		char *rel = inode_rel(fs, in);
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
	size_cache_put(st, kind, size);
	st->st_size = (off_t)size;
out:
	if (fd >= 0)
		close(fd);
	rk_mutex_unlock(&in->lock);
	return ret;
}

static int get_attr(struct rkd_fs *fs, struct rkd_inode *in, struct stat *st)
{
	if (in->virt != RKD_REAL) {
		virt_attr(fs, in, st);
		return 0;
	}
	if (fstatat(in->fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return fix_size(fs, in, st);
}

/* ---- lookup -------------------------------------------------------------------------------- */
/* The inode of dirfd/name (nlookup+1) and its stat.  Under ns_lock (shared):
 * a whole-file rekey cannot swap the file between the open and the inode
 * table lookup. */
static int inode_lookup(struct rkd_fs *fs, int dirfd, const char *name, const struct rkd_inode *parent,
                        struct stat *st, struct rkd_inode **out)
{
	int ret = 0;
	rk_rw_rdlock(&fs->ns_lock, RK_RANK_NS);
	int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || fstatat(fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
		ret = -errno;
		if (fd >= 0)
			close(fd);
	} else {
		*out = inode_get_at(fs, fd, st, parent, name);
		ret = *out ? 0 : -ENOMEM;
	}
	rk_rw_unlock(&fs->ns_lock);
	return ret;
}

static int do_lookup(struct rkd_fs *fs, fuse_ino_t parent, const char *name, struct fuse_entry_param *e)
{
	struct rkd_inode *p = INO(fs, parent);
	memset(e, 0, sizeof(*e));
	e->attr_timeout = fs->o.attr_timeout;
	e->entry_timeout = fs->o.entry_timeout;
	if (p->virt == RKD_VDIR) {
		struct rkd_inode *v = strcmp(name, "status") == 0 ? &fs->vstatus : strcmp(name, "control") == 0 ? &fs->vcontrol : NULL;
		if (!v)
			return -ENOENT;
		e->ino = (fuse_ino_t)(uintptr_t)v;
		virt_attr(fs, v, &e->attr);
		e->attr_timeout = e->entry_timeout = 0;
		return 0;
	}
	if (p->virt != RKD_REAL)
		return -ENOTDIR;
	if (parent == FUSE_ROOT_ID && strcmp(name, RK_STATE_DIR) == 0) {
		e->ino = (fuse_ino_t)(uintptr_t)&fs->vdir;
		virt_attr(fs, &fs->vdir, &e->attr);
		return 0;
	}
	if (rk_is_tmp_name(name))
		return -ENOENT;
	if (strcmp(name, RK_STATE_DIR) == 0) {
		struct stat pst;
		if (fstatat(p->fd, name, &pst, AT_SYMLINK_NOFOLLOW) == 0)
			planted_state_dir(p);
		return -ENOENT;
	}
	struct stat st;
	struct rkd_inode *in;
	int ret = inode_lookup(fs, p->fd, name, p, &st, &in);
	if (ret < 0)
		return ret;
	ret = fix_size(fs, in, &st);
	if (ret < 0) {
		inode_unref(fs, in, 1);
		return ret;
	}
	e->ino = NODEID(fs, in);
	e->attr = st;
	return 0;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	int ret = do_lookup(FS(req), parent, name, &e);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct rkd_fs *fs = FS(req);
	inode_unref(fs, INO(fs, ino), nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct rkd_fs *fs = FS(req);
	for (size_t i = 0; i < count; i++)
		inode_unref(fs, INO(fs, forgets[i].ino), forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct stat st;
	(void)fi;
	int ret = get_attr(fs, INO(fs, ino), &st);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, fs->o.attr_timeout);
}

/* ---- open files ------------------------------------------------------------------------------ */

int rkd_policy_for(struct rkd_fs *fs, struct rkd_file *f, struct rk_key **key, enum rk_comp *comp)
{
	char name[RK_KEY_NAME_MAX + 1];
	unsigned gen = atomic_load(&fs->policy_gen);
	rk_mutex_lock(&f->pol_lock, RK_RANK_FILE_POL);
	if (f->policy_gen != gen || !f->key[0]) {
		/* renames and policy changes bump the generation: find where the
		 * file lives now and which table that is */
		char *rel = inode_rel(fs, f->in);
		if (!rel) {
			rk_mutex_unlock(&f->pol_lock);
			return -ENOMEM;
		}
		if (f->cf) {
			rk_cf_set_path(f->cf, rel);
			if (f->rw)
				rk_journal_repath(fs->j, f->cf, rel);
		}
		rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
		const struct rk_table *t = rk_policy_lookup(fs->dd, rel);
		snprintf(f->key, sizeof(f->key), "%s", t->key);
		f->comp = t->comp;
		rk_rw_unlock(&fs->policy_lock);
		free(rel);
		f->policy_gen = gen;
	}
	snprintf(name, sizeof(name), "%s", f->key);
	*comp = f->comp;
	rk_mutex_unlock(&f->pol_lock);
	int ret = rk_keyring_get(fs->kr, name, key);
	if (ret < 0)
		rk_err("%s: cannot seal under the table's target key '%s': %s", f->cf ? rk_cf_path(f->cf) : "?", name,
		       rk_strerror(ret));
	return ret;
}

/* Refresh the file's path (for policy and messages) after a rename. */
static void file_repath(struct rkd_fs *fs, struct rkd_inode *in)
{
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	char *rel = in->of && in->of->cf ? inode_rel(fs, in) : NULL;
	if (rel) {
		rk_cf_set_path(in->of->cf, rel);
		if (in->of->rw)
			rk_journal_repath(fs->j, in->of->cf, rel);
		free(rel);
	}
	rk_mutex_unlock(&in->lock);
}

static void file_free(struct rkd_file *f)
{
	if (!f)
		return;
	rk_cf_close(f->cf);
	if (f->fd >= 0 && !f->fd_shared)
		close(f->fd);
	pthread_rwlock_destroy(&f->rw_lock);
	for (int i = 0; i < RKD_CHUNK_STRIPES; i++)
		pthread_rwlock_destroy(&f->stripes[i]);
	pthread_mutex_destroy(&f->pol_lock);
	free(f);
}

static struct rkd_file *file_alloc(void)
{
	struct rkd_file *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->fd = -1;
	pthread_rwlock_init(&f->rw_lock, NULL);
	for (int i = 0; i < RKD_CHUNK_STRIPES; i++)
		pthread_rwlock_init(&f->stripes[i], NULL);
	pthread_mutex_init(&f->pol_lock, NULL);
	return f;
}

/* ---- one descriptor per open file -------------------------------------------------------
 * An open file's read-write fd takes over the inode's fd number: dup3 over
 * the O_PATH fd, atomic for other threads using in->fd (they see the same
 * inode through either), and the O_PATH fd comes back when the file is
 * closed.  So an open file costs one descriptor, not two.  Both under
 * in->lock. */
static void fd_share(struct rkd_inode *in, struct rkd_file *f)
{
	if (f->fd_shared || dup3(f->fd, in->fd, O_CLOEXEC) < 0)
		return; /* two descriptors for this one */
	close(f->fd);
	f->fd = in->fd;
	f->fd_shared = true;
}

static void fd_unshare(struct rkd_inode *in, struct rkd_file *f)
{
	if (!f->fd_shared)
		return;
	char pp[64];
	PROCPATH(pp, in->fd);
	int pfd = open(pp, O_PATH | O_CLOEXEC);
	if (pfd >= 0) {
		dup3(pfd, in->fd, O_CLOEXEC);
		close(pfd);
	} /* else the inode keeps the read-write fd: it serves as its O_PATH fd */
	f->fd = -1;
	f->fd_shared = false;
}

/* Open (or share) the inode's file state.  fd_new: a freshly created backing
 * fd that is already a chunk file (cf_new), or -1. */
static int file_get(struct rkd_fs *fs, struct rkd_inode *in, struct rkd_file **out)
{
	char pp[64], *rel = NULL;
	int ret = 0;
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	/* a file being closed is flushed and detached first: one rk_cf per file */
	while (in->of && in->of->closing)
		pthread_cond_wait(&in->closed, &in->lock);
	if (in->of) {
		in->of->refs++;
		*out = in->of;
		rk_mutex_unlock(&in->lock);
		return 0;
	}
	struct rkd_file *f = file_alloc();
	if (!f) {
		ret = -ENOMEM;
		goto out;
	}
	atomic_fetch_add(&in->open_gen, 1); /* a whole-file rekey in progress gives up */
	PROCPATH(pp, in->fd);
	f->fd = open(pp, O_RDWR | O_CLOEXEC);
	f->rw = true;
	if (f->fd < 0 && (errno == EROFS || errno == EACCES || errno == ETXTBSY || errno == EPERM)) {
		f->fd = open(pp, O_RDONLY | O_CLOEXEC);
		f->rw = false;
	}
	if (f->fd < 0) {
		ret = -errno;
		goto out;
	}
	fd_share(in, f);
	ret = rk_cf_probe(f->fd);
	if (ret < 0)
		goto out;
	f->chunk = ret == 1;
	ret = 0;
	if (f->chunk) {
		rel = inode_rel(fs, in);
		if (!rel) {
			ret = -ENOMEM;
			goto out;
		}
		ret = rk_cf_open(f->fd, rel, fs->kr, f->rw, &f->cf);
		if (ret < 0) {
			rk_err("%s: cannot open chunk file: %s", rel, rk_strerror(ret));
			goto out;
		}
		if (f->rw) {
			ret = rk_journal_attach(fs->j, f->cf, rel);
			if (ret < 0)
				goto out;
			if (fs->o.lazy)
				rk_cf_set_read_hook(f->cf, rkd_lazy_hook, f);
		}
		f->target_idx = -1;
	}
	f->refs = 1;
	f->in = in;
	f->fs = fs;
	in->of = f;
	*out = f;
	f = NULL;
out:
	free(rel);
	if (f)
		fd_unshare(in, f);
	file_free(f);
	rk_mutex_unlock(&in->lock);
	return ret;
}

static void remember_dirty(struct rkd_fs *fs, struct rkd_file *f)
{
	struct {
		struct file_handle fh;
		unsigned char buf[128];
	} h;
	int mount_id;
	h.fh.handle_bytes = sizeof(h.buf);
	if (name_to_handle_at(f->fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) < 0)
		return; /* counts stay dirty; readers recount them */
	rk_mutex_lock(&fs->dirty_lock, RK_RANK_DIRTY);
	/* bounded (RKD_DIRTY_MAX entries): past it a header stays marked, and
	 * whoever reads its counts recounts them from the slots */
	if (fs->ndirty == fs->capdirty && fs->capdirty < RKD_DIRTY_MAX) {
		size_t nc = fs->capdirty ? fs->capdirty * 2 : 256;
		struct rkd_dirty *n = realloc(fs->dirty, nc * sizeof(*n));
		if (n) {
			fs->dirty = n;
			fs->capdirty = nc;
		}
	}
	if (fs->ndirty < fs->capdirty) {
		struct rkd_dirty *d = &fs->dirty[fs->ndirty++];
		rk_cf_file_id(f->cf, d->file_id);
		d->handle_type = h.fh.handle_type;
		d->handle_len = h.fh.handle_bytes;
		memcpy(d->handle, h.fh.f_handle, h.fh.handle_bytes);
	}
	rk_mutex_unlock(&fs->dirty_lock);
}

/* ---- open handles per user -----------------------------------------------------------------
 * Every open handle costs the daemon descriptors: a file's is shared by its
 * handles and is its inode's, a directory's DIR is one more.  A non-root user
 * may hold open_per_user handles (a directory counts 2), EMFILE past it, and
 * all non-root users together open_nonroot_max, ENFILE past it: the rest of
 * the descriptor limit is root's reserve (and the walker's, the journal's,
 * and the inodes the kernel knows).  Root is not counted.  ucount_lock
 * guards ucounts, open_nonroot and the two bounds; rank RK_RANK_UCOUNT (96,
 * a leaf: nothing is taken under it). */
struct ucount {
	uid_t uid;
	size_t n;
	UT_hash_handle hh;
};
static pthread_mutex_t ucount_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ucount *ucounts;
static size_t open_nonroot, open_nonroot_max = SIZE_MAX, open_per_user = SIZE_MAX;

/* Charge uid for a handle of cost n: 0, or -EMFILE / -ENFILE / -ENOMEM. */
static int handle_charge(uid_t uid, size_t n)
{
	struct ucount *u;
	int ret = 0;
	if (uid == 0)
		return 0;
	rk_mutex_lock(&ucount_lock, RK_RANK_UCOUNT);
	HASH_FIND(hh, ucounts, &uid, sizeof(uid), u);
	if (u && u->n + n > open_per_user) {
		ret = -EMFILE;
		goto out;
	}
	if (open_nonroot + n > open_nonroot_max) {
		ret = -ENFILE;
		goto out;
	}
	if (!u) {
		u = calloc(1, sizeof(*u));
		if (!u) {
			ret = -ENOMEM;
			goto out;
		}
		u->uid = uid;
		HASH_ADD(hh, ucounts, uid, sizeof(u->uid), u);
	}
	u->n += n;
	open_nonroot += n;
out:
	rk_mutex_unlock(&ucount_lock);
	if (ret == -EMFILE || ret == -ENFILE)
		rk_dbg("uid %u: open refused (%s): %zu handles per user, %zu for all users but root", (unsigned)uid,
		       strerror(-ret), open_per_user, open_nonroot_max);
	return ret;
}

static void handle_refund(uid_t uid, size_t n)
{
	struct ucount *u;
	if (uid == 0 || uid == RKD_UNCHARGED)
		return;
	rk_mutex_lock(&ucount_lock, RK_RANK_UCOUNT);
	HASH_FIND(hh, ucounts, &uid, sizeof(uid), u);
	if (u) {
		u->n -= RK_MIN(n, u->n);
		open_nonroot -= RK_MIN(n, open_nonroot);
		if (u->n == 0) {
			HASH_DEL(ucounts, u);
			free(u);
		}
	}
	rk_mutex_unlock(&ucount_lock);
}

/* ---- fd budget ---------------------------------------------------------------------------
 * Every inode the kernel knows holds an O_PATH fd.  When they near the fd
 * limit, ask the kernel to drop idle dentries of files nobody has open; it
 * then sends FORGET and the fds close as usual.  Nothing here closes an fd a
 * request might be using. */
struct victim {
	fuse_ino_t parent;
	char *name;
};

static void *reclaimer(void *arg)
{
	struct rkd_fs *fs = arg;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	while (!fs->reclaim_stop) {
		if (fs->ninodes <= fs->inode_high) {
			pthread_cond_wait(&fs->reclaim_cond, &fs->itab_lock);
			continue;
		}
		size_t want = fs->ninodes - fs->inode_low, n = 0;
		struct victim *v = calloc(want, sizeof(*v));
		if (!v)
			break;
		struct rkd_inode *in, *tmp;
		HASH_ITER(hh, fs->inodes, in, tmp)
		{
			if (n == want)
				break;
			if (in->virt != RKD_REAL || !in->name || rk_mutex_trylock(&in->lock, RK_RANK_INODE) != 0)
				continue;
			bool idle = !in->of;
			rk_mutex_unlock(&in->lock);
			if (!idle)
				continue;
			struct rkd_inode *p = in->pdev == fs->root.dev && in->pino == fs->root.ino
			                          ? &fs->root
			                          : itab_find(fs, in->pdev, in->pino);
			if (!p)
				continue;
			v[n].parent = NODEID(fs, p);
			v[n].name = strdup(in->name);
			if (v[n].name)
				n++;
		}
		rk_mutex_unlock(&fs->itab_lock);
		size_t dropped = 0;
		for (size_t i = 0; i < n; i++) {
			if (fuse_lowlevel_notify_inval_entry(fs->se, v[i].parent, v[i].name, strlen(v[i].name)) == 0)
				dropped++;
			free(v[i].name);
		}
		free(v);
		rk_dbg("fd budget: asked the kernel to drop %zu idle entries", dropped);
		/* let the forgets arrive before looking again */
		struct timespec ts = {0, 200000000L};
		nanosleep(&ts, NULL);
		rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	}
	rk_mutex_unlock(&fs->itab_lock);
	return NULL;
}

int rkd_reclaim_start(struct rkd_fs *fs)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max; /* as many fds as we may have */
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	size_t limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (size_t)rl.rlim_cur
	                                                                                   : 1048576;
	/* leave room for open files, journal, walker and libfuse */
	size_t reserve = RK_MAX(limit / 4, (size_t)256);
	fs->inode_high = limit > reserve ? limit - reserve : limit / 2;
	fs->inode_low = fs->inode_high * 3 / 4;
	/* open handles of non-root users: a quarter of the limit each (or
	 * max_open_per_user), half of it for all of them; the rest is root's */
	rk_mutex_lock(&ucount_lock, RK_RANK_UCOUNT);
	open_per_user = fs->o.max_open_per_user ? fs->o.max_open_per_user : RK_MAX(limit / 4, (size_t)16);
	open_nonroot_max = limit / 2;
	rk_mutex_unlock(&ucount_lock);
	pthread_cond_init(&fs->reclaim_cond, NULL);
	if (pthread_create(&fs->reclaim_thr, NULL, reclaimer, fs) != 0)
		return -EAGAIN;
	fs->reclaim_started = true;
	rk_info("fd budget: limit %zu; known inodes reclaimed above %zu; open files and directories: %zu per "
	        "non-root user, %zu for all non-root users, the rest kept for root",
	        limit, fs->inode_high, open_per_user, open_nonroot_max);
	return 0;
}

void rkd_reclaim_stop(struct rkd_fs *fs)
{
	if (!fs->reclaim_started)
		return;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	fs->reclaim_stop = true;
	pthread_cond_signal(&fs->reclaim_cond);
	rk_mutex_unlock(&fs->itab_lock);
	pthread_join(fs->reclaim_thr, NULL);
	fs->reclaim_started = false;
}

/* At exit: forget every inode the kernel still had (it has unmounted). */
void rkd_inodes_free(struct rkd_fs *fs)
{
	struct rkd_inode *in, *tmp;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	HASH_ITER(hh, fs->inodes, in, tmp)
	{
		HASH_DELETE(hh, fs->inodes, in);
		if (in->of)
			file_free(in->of);
		close(in->fd);
		free(in->name);
		free(in->wrel);
		pthread_mutex_destroy(&in->lock);
		pthread_cond_destroy(&in->closed);
		free(in);
	}
	rk_mutex_unlock(&fs->itab_lock);
}

void rkd_clean_dirty_headers(struct rkd_fs *fs)
{
	size_t cleaned = 0;
	rk_mutex_lock(&fs->dirty_lock, RK_RANK_DIRTY);
	for (size_t i = 0; i < fs->ndirty; i++) {
		struct rkd_dirty *d = &fs->dirty[i];
		struct {
			struct file_handle fh;
			unsigned char buf[128];
		} h;
		h.fh.handle_bytes = d->handle_len;
		h.fh.handle_type = d->handle_type;
		memcpy(h.fh.f_handle, d->handle, d->handle_len);
		int fd = open_by_handle_at(fs->rootfd, &h.fh, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue; /* deleted since */
		struct rk_cf *cf;
		/* a writable open of a dirty header recounts from the slots; the sync
		 * makes the data durable and writes the exact counts as clean */
		if (rk_cf_open(fd, "(closed file)", fs->kr, true, &cf) == 0) {
			uint8_t id[RK_FILE_ID_BYTES];
			rk_cf_file_id(cf, id);
			if (memcmp(id, d->file_id, sizeof(id)) == 0 && rk_cf_sync(cf) == 0 && !rk_cf_disk_dirty(cf))
				cleaned++;
			rk_cf_close(cf);
		}
		close(fd);
	}
	fs->ndirty = 0;
	rk_mutex_unlock(&fs->dirty_lock);
	if (cleaned)
		rk_info("header counts made exact and durable for %zu files", cleaned);
}

static void file_put(struct rkd_fs *fs, struct rkd_inode *in, struct rkd_file *f)
{
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	if (--f->refs > 0) {
		rk_mutex_unlock(&in->lock);
		return;
	}
	/* stays registered (closing) until its header is written and its
	 * journaled chunks are in place: an open meanwhile waits for it */
	f->closing = true;
	rk_mutex_unlock(&in->lock);
	bool keep = false;
	if (f->chunk && f->rw) {
		int ret = rk_cf_flush(f->cf);
		if (ret < 0)
			rk_err("%s: header write at close failed: %s", rk_cf_path(f->cf), strerror(-ret));
		if (rk_cf_disk_dirty(f->cf))
			remember_dirty(fs, f);
		ret = rk_journal_detach(fs->j, f->cf);
		if (ret < 0) {
			/* the journal still needs this file's fd to put chunks in place:
			 * keep it open (the data is safe in the journal) */
			rk_err("%s: pending chunk writes cannot be applied yet (%s); the file stays open in the daemon "
			       "until they can", rk_cf_path(f->cf), strerror(-ret));
			keep = true;
		}
	}
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	if (keep) {
		/* back to an open file without handles: reused by the next open */
		f->closing = false;
	} else {
		/* remember the closed file's plaintext size with the stored file's
		 * attributes as they are now: a later stat needs no header read */
		struct stat cst;
		if (f->chunk && fstat(f->fd, &cst) == 0)
			size_cache_put(&cst, 1, rk_cf_size(f->cf));
		fd_unshare(in, f);
		in->of = NULL;
		in->hdr_kind = -1; /* re-read the header next time */
	}
	pthread_cond_broadcast(&in->closed);
	rk_mutex_unlock(&in->lock);
	if (!keep)
		file_free(f);
}

/* ---- chunk stripe locks ----------------------------------------------------------------------- */
static uint64_t stripe_mask(struct rkd_file *f, uint64_t off, size_t len)
{
	uint32_t cs = rk_cf_chunk_size(f->cf);
	if (len == 0)
		len = 1;
	uint64_t first = off / cs, last = (off + len - 1) / cs;
	if (last - first + 1 >= RKD_CHUNK_STRIPES)
		return ~0ULL;
	uint64_t m = 0;
	for (uint64_t i = first; i <= last; i++)
		m |= 1ULL << (i % RKD_CHUNK_STRIPES);
	return m;
}

static void stripes_lock(struct rkd_file *f, uint64_t m, bool excl)
{
	for (int i = 0; i < RKD_CHUNK_STRIPES; i++)
		if (m & (1ULL << i)) {
			if (excl)
				rk_rw_wrlock(&f->stripes[i], RK_RANK_STRIPE);
			else
				rk_rw_rdlock(&f->stripes[i], RK_RANK_STRIPE);
		}
}

static void stripes_unlock(struct rkd_file *f, uint64_t m)
{
	for (int i = RKD_CHUNK_STRIPES - 1; i >= 0; i--)
		if (m & (1ULL << i))
			rk_rw_unlock(&f->stripes[i]);
}

/* ---- handles ---------------------------------------------------------------------------------- */
static struct rkd_handle *handle_new(struct rkd_inode *in, struct rkd_file *f, int flags)
{
	struct rkd_handle *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->in = in;
	h->f = f;
	h->flags = flags;
	h->uid = RKD_UNCHARGED;
	pthread_mutex_init(&h->vlock, NULL);
	return h;
}

static void handle_free(struct rkd_handle *h)
{
	if (!h)
		return;
	free(h->vbuf);
	pthread_mutex_destroy(&h->vlock);
	free(h);
}

static int truncate_file(struct rkd_fs *fs, struct rkd_file *f, uint64_t size)
{
	int ret;
	if (!f->rw)
		return -EROFS;
	if (!f->chunk)
		return ftruncate(f->fd, (off_t)size) < 0 ? -errno : 0;
	struct rk_key *key;
	enum rk_comp comp;
	ret = rkd_policy_for(fs, f, &key, &comp);
	if (ret < 0)
		return ret;
	rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
	ret = rk_cf_truncate(f->cf, size, key, comp);
	rk_rw_unlock(&f->rw_lock);
	return ret;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino);
	struct rkd_file *f = NULL;
	struct rkd_handle *h;
	int ret;

	if (in->virt == RKD_VSTATUS || in->virt == RKD_VCONTROL) {
		/* both name files of every user: root (or the daemon's user) only,
		 * whatever the kernel's permission check said */
		const struct fuse_ctx *cx = fuse_req_ctx(req);
		if (cx->uid != 0 && cx->uid != geteuid()) {
			fuse_reply_err(req, EACCES);
			return;
		}
		h = handle_new(in, NULL, fi->flags);
		if (!h) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		if (in->virt == RKD_VSTATUS) {
			ret = rkd_status_json(fs, &h->vbuf, &h->vlen);
			if (ret < 0) {
				handle_free(h);
				fuse_reply_err(req, -ret);
				return;
			}
		}
		fi->fh = (uint64_t)(uintptr_t)h;
		fi->direct_io = 1;
		fi->nonseekable = 0;
		fuse_reply_open(req, fi);
		return;
	}
	if (in->virt != RKD_REAL || !S_ISREG(in->type)) {
		fuse_reply_err(req, in->type == S_IFDIR ? EISDIR : EINVAL);
		return;
	}
	uid_t uid = fuse_req_ctx(req)->uid;
	ret = handle_charge(uid, 1);
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	ret = file_get(fs, in, &f);
	if (ret < 0) {
		handle_refund(uid, 1);
		fuse_reply_err(req, ferr(ret));
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY && !f->rw) {
		file_put(fs, in, f);
		handle_refund(uid, 1);
		fuse_reply_err(req, EROFS);
		return;
	}
	if (fi->flags & O_TRUNC) {
		ret = truncate_file(fs, f, 0);
		if (ret < 0) {
			file_put(fs, in, f);
			handle_refund(uid, 1);
			fuse_reply_err(req, ferr(ret));
			return;
		}
	}
	h = handle_new(in, f, fi->flags);
	if (!h) {
		file_put(fs, in, f);
		handle_refund(uid, 1);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	h->uid = uid;
	fi->fh = (uint64_t)(uintptr_t)h;
	/* we are the only way to this data: the page cache stays valid */
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	(void)ino;
	if (h->f)
		file_put(fs, h->in, h->f);
	handle_refund(h->uid, 1);
	handle_free(h);
	fuse_reply_err(req, 0);
}

/* No flush handler: the kernel then stops sending FLUSH on close (one round
 * trip less per close; with the write-back cache it still writes dirty pages
 * back and reports their errors at close).  The header is written when the
 * last handle is released, and made durable by fsync. */
static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	struct rkd_file *f = h->f;
	int ret = 0;
	(void)ino;
	if (!f) {
		fuse_reply_err(req, 0);
		return;
	}
	if (f->chunk && f->rw) {
		/* the journal holds rewritten chunks not yet in place: durable first */
		rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
		ret = rk_journal_commit(fs->j);
		if (ret == 0)
			ret = rk_cf_sync(f->cf);
		rk_rw_unlock(&f->rw_lock);
	} else if ((datasync ? fdatasync(f->fd) : fsync(f->fd)) < 0) {
		ret = -errno;
	}
	fuse_reply_err(req, ret < 0 ? ferr(ret) : 0);
}

static void fg_begin(struct rkd_fs *fs)
{
	struct timespec ts;
	atomic_fetch_add(&fs->st.inflight, 1);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	atomic_store(&fs->st.last_fg_ns, (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec);
}

static void fg_end(struct rkd_fs *fs) { atomic_fetch_sub(&fs->st.inflight, 1); }

/* per-thread reply buffer: no allocation per request after warm-up; freed
 * when the worker thread exits */
struct tbuf {
	uint8_t *p;
	size_t len;
};
static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;

static void tbuf_free(void *arg)
{
	struct tbuf *t = arg;
	free(t->p);
	free(t);
	rk_crypto_thread_cleanup();
}

static void tbuf_init(void) { pthread_key_create(&tbuf_key, tbuf_free); }

static uint8_t *thread_buf(size_t len)
{
	pthread_once(&tbuf_once, tbuf_init);
	struct tbuf *t = pthread_getspecific(tbuf_key);
	if (!t) {
		t = calloc(1, sizeof(*t));
		if (!t)
			return NULL;
		pthread_setspecific(tbuf_key, t);
	}
	if (t->len < len) {
		size_t want = (len + 65535) / 65536 * 65536;
		uint8_t *n = realloc(t->p, want);
		if (!n)
			return NULL;
		t->p = n;
		t->len = want;
	}
	return t->p;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	struct rkd_file *f = h->f;
	(void)ino;
	if (!f) {
		char *copy = NULL;
		size_t n = 0;
		rk_mutex_lock(&h->vlock, RK_RANK_VHANDLE);
		/* a control reply reads from where the command ended (shell style:
		 * exec 3<>control; echo cmd >&3; cat <&3) or from offset 0 (pread) */
		if (h->in->virt == RKD_VCONTROL && (uint64_t)off >= h->vbase)
			off -= (off_t)h->vbase;
		if ((size_t)off < h->vlen) {
			n = RK_MIN(size, h->vlen - (size_t)off);
			copy = malloc(n);
			if (copy)
				memcpy(copy, h->vbuf + off, n);
		}
		rk_mutex_unlock(&h->vlock);
		/* replied after the unlock: once the kernel has the reply it may
		 * release (and free) the handle and its lock */
		if (n && !copy)
			fuse_reply_err(req, ENOMEM);
		else
			fuse_reply_buf(req, copy, n);
		free(copy);
		return;
	}
	atomic_fetch_add(&fs->st.reads, 1);
	if (!f->chunk) {
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = f->fd;
		bv.buf[0].pos = off;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
		return;
	}
	uint8_t *buf = thread_buf(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fg_begin(fs);
	rk_rw_rdlock(&f->rw_lock, RK_RANK_FILE_RW);
	uint64_t m = stripe_mask(f, (uint64_t)off, size);
	stripes_lock(f, m, false);
	ssize_t n = rk_cf_pread(f->cf, buf, size, (uint64_t)off);
	stripes_unlock(f, m);
	rk_rw_unlock(&f->rw_lock);
	fg_end(fs);
	if (n < 0) {
		atomic_fetch_add(&fs->st.read_errors, 1);
		fuse_reply_err(req, ferr((int)n));
		return;
	}
	atomic_fetch_add(&fs->st.bytes_read, (uint64_t)n);
	fuse_reply_buf(req, (const char *)buf, (size_t)n);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	struct rkd_file *f = h->f;
	(void)ino;
	if (!f) {
		if (h->in->virt != RKD_VCONTROL) {
			fuse_reply_err(req, EACCES);
			return;
		}
		char *cmd = strndup(buf, size), *reply = NULL;
		size_t rlen = 0;
		if (!cmd) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		int ret = rkd_control(fs, cmd, &reply, &rlen);
		free(cmd);
		rk_mutex_lock(&h->vlock, RK_RANK_VHANDLE);
		free(h->vbuf);
		h->vbuf = reply;
		h->vlen = rlen;
		h->vbase = (uint64_t)off + size;
		rk_mutex_unlock(&h->vlock);
		if (ret < 0)
			fuse_reply_err(req, -ret);
		else
			fuse_reply_write(req, size);
		return;
	}
	atomic_fetch_add(&fs->st.writes, 1);
	if (!f->rw) {
		fuse_reply_err(req, EBADF);
		return;
	}
	bool append = (h->flags & O_APPEND) && !fs->o.writeback;
	if (!f->chunk) {
		if (append) {
			struct stat st;
			if (fstat(f->fd, &st) < 0) {
				fuse_reply_err(req, errno);
				return;
			}
			off = st.st_size;
		}
		ssize_t n = pwrite(f->fd, buf, size, off);
		if (n < 0)
			fuse_reply_err(req, errno);
		else
			fuse_reply_write(req, (size_t)n);
		return;
	}
	struct rk_key *key;
	enum rk_comp comp;
	int ret = rkd_policy_for(fs, f, &key, &comp);
	if (ret < 0) {
		atomic_fetch_add(&fs->st.write_errors, 1);
		fuse_reply_err(req, EIO);
		return;
	}
	fg_begin(fs);
	/* writes that extend the file (or append) hold the file lock exclusively */
	bool excl = append || (uint64_t)off + size > rk_cf_size(f->cf);
	if (excl)
		rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
	else
		rk_rw_rdlock(&f->rw_lock, RK_RANK_FILE_RW);
	if (!excl && (uint64_t)off + size > rk_cf_size(f->cf)) {
		/* grew meanwhile: retake exclusively */
		rk_rw_unlock(&f->rw_lock);
		rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
		excl = true;
	}
	if (append)
		off = (off_t)rk_cf_size(f->cf);
	uint64_t m = stripe_mask(f, (uint64_t)off, size);
	stripes_lock(f, m, true);
	ssize_t n = rk_cf_pwrite(f->cf, buf, size, (uint64_t)off, key, comp);
	stripes_unlock(f, m);
	rk_rw_unlock(&f->rw_lock);
	fg_end(fs);
	if (n < 0) {
		atomic_fetch_add(&fs->st.write_errors, 1);
		fuse_reply_err(req, ferr((int)n));
		return;
	}
	if (!fs->o.writeback) {
		/* journaled overwrites do not touch the stored file now, and format
		 * writes keep its times: the user's write sets mtime here (with the
		 * writeback cache the kernel sends it) */
		struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
		futimens(f->fd, ts);
	}
	atomic_fetch_add(&fs->st.bytes_written, (uint64_t)n);
	fuse_reply_write(req, (size_t)n);
}

/* ---- creating objects ---------------------------------------------------------------------- */
/* Give a new object the caller's identity (and a setgid directory's group). */
static void set_owner(struct rkd_inode *parent, int dirfd, const char *name, const struct fuse_ctx *ctx, bool isdir)
{
	struct stat pst;
	gid_t gid = ctx->gid;
	if (fstatat(parent->fd, "", &pst, AT_EMPTY_PATH) == 0 && (pst.st_mode & S_ISGID)) {
		gid = pst.st_gid;
		if (isdir) {
			struct stat st;
			if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && !(st.st_mode & S_ISGID)) {
				char pp[64];
				int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
				if (fd >= 0) {
					PROCPATH(pp, fd);
					chmod(pp, (st.st_mode & 07777) | S_ISGID);
					close(fd);
				}
			}
		}
	}
	/* name "": dirfd is the new object itself (not a name someone could swap) */
	if (fchownat(dirfd, name, ctx->uid, gid, name[0] ? AT_SYMLINK_NOFOLLOW : AT_EMPTY_PATH) < 0)
		rk_warn("cannot set owner %u:%u: %s", (unsigned)ctx->uid, (unsigned)gid, strerror(errno));
}

/* Errors that say the daemon or the system ran out of something: they reach
 * the caller as they are (never EIO, which says the data is bad). */
static bool resource_err(int neg)
{
	return neg == -EMFILE || neg == -ENFILE || neg == -ENOMEM || neg == -ENOSPC || neg == -EDQUOT;
}

/* May the caller open the existing file st (O_PATH fd pfd) with flags?  The
 * kernel checked nothing (its lookup was negative), so check here with the
 * caller's credentials: mode bits against its uid, gid and supplementary
 * groups (uid 0 passes, as with default_permissions).  Returns 0, -EACCES,
 * or -EEXIST when mode bits cannot tell (a POSIX access ACL): the kernel then
 * drops its negative entry and the caller's retry looks the file up, which
 * checks the ACL. */
static int caller_may_open(fuse_req_t req, int pfd, const struct stat *st, int flags)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	gid_t small[64], *groups = small;
	int ret = 0;
	if (ctx->uid == 0)
		return 0;
	char pp[64];
	PROCPATH(pp, pfd);
	if (getxattr(pp, "system.posix_acl_access", NULL, 0) >= 0)
		return -EEXIST;
	mode_t need = 0;
	int acc = flags & O_ACCMODE;
	if (acc == O_RDONLY || acc == O_RDWR)
		need |= 4;
	if (acc == O_WRONLY || acc == O_RDWR || (flags & O_TRUNC))
		need |= 2;
	mode_t bits;
	if (ctx->uid == st->st_uid) {
		bits = (st->st_mode >> 6) & 7;
	} else {
		bool member = ctx->gid == st->st_gid;
		int n = member ? 0 : fuse_req_getgroups(req, 64, small);
		if (n > 64) {
			groups = calloc((size_t)n, sizeof(*groups));
			if (!groups) {
				ret = -ENOMEM;
				goto out;
			}
			n = fuse_req_getgroups(req, n, groups);
		}
		if (n < 0) {
			ret = -EEXIST; /* groups unknown: let the kernel's lookup decide */
			goto out;
		}
		for (int i = 0; i < n && !member; i++)
			member = groups[i] == st->st_gid;
		bits = member ? (st->st_mode >> 3) & 7 : st->st_mode & 7;
	}
	if ((bits & need) != need)
		ret = -EACCES;
out:
	if (groups != small)
		free(groups);
	return ret;
}

/* CREATE without O_EXCL found name existing (it appeared after the kernel's
 * negative lookup, by another route: the data directory, a restore).  Open
 * it only if the caller may, never as the daemon on their behalf. */
static int open_existing(fuse_req_t req, struct rkd_inode *parent, const char *name, int flags)
{
	struct stat st;
	int fd = -1, ret;
	int pfd = openat(parent->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (pfd < 0) {
		ret = errno == ENOENT ? -EEXIST : -errno; /* gone again: the caller retries */
		goto out;
	}
	if (fstat(pfd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EEXIST; /* a directory, symlink, device: the kernel's lookup handles it */
		goto out;
	}
	ret = caller_may_open(req, pfd, &st, flags);
	if (ret < 0)
		goto out;
	char pp[64];
	PROCPATH(pp, pfd);
	fd = open(pp, O_RDWR | O_CLOEXEC); /* the inode just checked, not the name again */
	ret = fd < 0 ? -errno : fd;
out:
	if (pfd >= 0)
		close(pfd);
	return ret;
}

/* Create an empty chunk file at parent/name under the table policy.  Returns
 * the open backing fd (O_RDWR) and its path in *relout (allocated).  Without
 * excl an existing file is opened if the caller may (flags: its open flags). */
static int create_chunk_file(struct rkd_fs *fs, fuse_req_t req, struct rkd_inode *parent, const char *name,
                             mode_t mode, bool excl, int flags, bool *created, struct rk_cf **cfout, char **relout)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	char *prel = NULL, *rel = NULL;
	int ret;
	*relout = NULL;
	int fd = openat(parent->fd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	*created = fd >= 0;
	if (fd < 0) {
		if (errno != EEXIST || excl)
			return -errno;
		return open_existing(req, parent, name, flags);
	}
	set_owner(parent, fd, "", ctx, false);
	prel = inode_rel(fs, parent);
	if (!prel || asprintf(&rel, "%s/%s", strcmp(prel, "/") ? prel : "", name) < 0) {
		free(prel);
		unlinkat(parent->fd, name, 0);
		close(fd);
		return -ENOMEM;
	}
	free(prel);
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	const struct rk_table *t = rk_policy_lookup(fs->dd, rel);
	char keyname[RK_KEY_NAME_MAX + 1];
	snprintf(keyname, sizeof(keyname), "%s", t->key);
	uint32_t cs = t->chunk_size;
	enum rk_comp comp = t->comp;
	rk_rw_unlock(&fs->policy_lock);
	struct rk_key *key;
	struct rk_cf *cf;
	ret = rk_keyring_get(fs->kr, keyname, &key);
	if (ret == 0)
		ret = rk_cf_create(fd, rel, fs->kr, cs, comp, key, &cf);
	if (ret < 0) {
		rk_err("%s: cannot create chunk file under key '%s': %s", rel, keyname, rk_strerror(ret));
		unlinkat(parent->fd, name, 0);
		close(fd);
		free(rel);
		return resource_err(ret) ? ret : -EIO;
	}
	if (cfout)
		*cfout = cf; /* the caller keeps it: the new file's open state */
	else
		rk_cf_close(cf);
	*relout = rel;
	return fd;
}

/* A file we just created and hold open (fd, cf) becomes the inode's open
 * state directly: no reopen, no second header read.  Returns the inode
 * (nlookup+1) in *inout with its file (refs 1) in *fout, or a negative errno
 * (fd and cf closed). */
static int install_created(struct rkd_fs *fs, struct rkd_inode *p, const char *name, int fd, struct rk_cf *cf,
                           const char *rel, struct stat *st, struct rkd_file **fout, struct rkd_inode **inout)
{
	struct rkd_file *f = NULL;
	int ret;
	bool adopted;
	/* the inode of the fd we created, not whatever the name holds by now;
	 * a new inode takes fd as its fd: one descriptor for the open file */
	if (fstat(fd, st) < 0) {
		ret = -errno;
		goto fail;
	}
	struct rkd_inode *in = inode_get_ex(fs, fd, st, p, name, true, &adopted);
	if (!in) {
		ret = -ENOMEM;
		goto fail;
	}
	if (!adopted)
		rk_mutex_lock(&in->lock, RK_RANK_INODE);
	if (adopted && !(f = file_alloc())) {
		rk_mutex_unlock(&in->lock);
		rk_cf_close(cf);
		inode_unref(fs, in, 1); /* closes fd, the inode's */
		return -ENOMEM;
	}
	if (!adopted && (in->of || !(f = file_alloc()))) {
		/* someone opened it meanwhile: share theirs */
		rk_mutex_unlock(&in->lock);
		rk_cf_close(cf);
		close(fd);
		ret = file_get(fs, in, fout);
		if (ret < 0) {
			inode_unref(fs, in, 1);
			return ret;
		}
		st->st_size = (off_t)((*fout)->chunk ? rk_cf_size((*fout)->cf) : (uint64_t)st->st_size);
		*inout = in;
		return 0;
	}
	f->fd = fd;
	f->fd_shared = adopted;
	f->rw = true;
	f->chunk = true;
	f->cf = cf;
	f->refs = 1;
	f->in = in;
	f->fs = fs;
	f->target_idx = -1;
	ret = rk_journal_attach(fs->j, cf, rel);
	if (ret == 0) {
		if (fs->o.lazy)
			rk_cf_set_read_hook(cf, rkd_lazy_hook, f);
		in->of = f;
		rk_mutex_unlock(&in->lock);
		st->st_size = 0;
		*fout = f;
		*inout = in;
		return 0;
	}
	fd_unshare(in, f);
	rk_mutex_unlock(&in->lock);
	file_free(f); /* closes fd (unless it is the inode's) and cf */
	inode_unref(fs, in, 1);
	return ret;
fail:
	rk_cf_close(cf);
	close(fd);
	return ret;
}

static int entry_for(struct rkd_fs *fs, struct rkd_inode *parent, const char *name, struct fuse_entry_param *e)
{
	return do_lookup(fs, NODEID(fs, parent), name, e);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *p = INO(fs, parent);
	struct fuse_entry_param e;
	struct rkd_file *f = NULL;
	struct rkd_inode *in = NULL;
	struct rkd_handle *h = NULL;
	struct rk_cf *ncf = NULL;
	char *rel = NULL;
	uid_t uid = fuse_req_ctx(req)->uid;
	bool created, charged = false;
	int ret, fd = -1;
	if (p->virt != RKD_REAL || reserved_name(parent, name)) {
		ret = -EPERM;
		goto out;
	}
	ret = handle_charge(uid, 1);
	if (ret < 0)
		goto out;
	charged = true;
	memset(&e, 0, sizeof(e));
	fd = create_chunk_file(fs, req, p, name, mode & 07777, fi->flags & O_EXCL, fi->flags, &created, &ncf, &rel);
	if (fd < 0) {
		ret = fd;
		fd = -1;
		goto out;
	}
	if (created) {
		ret = install_created(fs, p, name, fd, ncf, rel, &e.attr, &f, &in);
		fd = -1; /* taken (or closed) */
		if (ret < 0) {
			in = NULL;
			goto out;
		}
	} else {
		/* the inode open_existing checked, not whatever the name holds now */
		char pp[64];
		PROCPATH(pp, fd);
		int pfd = open(pp, O_PATH | O_CLOEXEC);
		if (pfd < 0 || fstat(pfd, &e.attr) < 0) {
			ret = -errno;
			if (pfd >= 0)
				close(pfd);
			goto out;
		}
		in = inode_get_at(fs, pfd, &e.attr, p, name);
		if (!in) {
			ret = -ENOMEM;
			goto out;
		}
		close(fd);
		fd = -1;
		ret = file_get(fs, in, &f);
		if (ret == 0 && (fi->flags & O_TRUNC))
			ret = truncate_file(fs, f, 0);
		if (ret < 0)
			goto out;
	}
	e.ino = NODEID(fs, in);
	e.attr_timeout = fs->o.attr_timeout;
	e.entry_timeout = fs->o.entry_timeout;
	h = handle_new(in, f, fi->flags);
	if (!h) {
		ret = -ENOMEM;
		goto out;
	}
	h->uid = uid;
	if (f->chunk)
		e.attr.st_size = (off_t)rk_cf_size(f->cf);
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->keep_cache = 1;
	ret = 0;
out:
	free(rel);
	if (fd >= 0)
		close(fd);
	if (ret < 0) {
		if (f)
			file_put(fs, in, f);
		if (in)
			inode_unref(fs, in, 1);
		if (charged)
			handle_refund(uid, 1);
		fuse_reply_err(req, ferr(ret)); /* EMFILE, ENFILE, ENOMEM as such */
		return;
	}
	fuse_reply_create(req, &e, fi);
}

static void reply_new_entry(fuse_req_t req, struct rkd_fs *fs, struct rkd_inode *p, const char *name)
{
	struct fuse_entry_param e;
	int ret = entry_for(fs, p, name, &e);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_entry(req, &e);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *p = INO(fs, parent);
	if (p->virt != RKD_REAL || reserved_name(parent, name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (S_ISREG(mode)) {
		bool created;
		char *rel = NULL;
		int fd = create_chunk_file(fs, req, p, name, mode & 07777, true, 0, &created, NULL, &rel);
		if (fd < 0) {
			fuse_reply_err(req, ferr(fd));
			return;
		}
		free(rel);
		close(fd);
	} else {
		if (mknodat(p->fd, name, mode, rdev) < 0) {
			fuse_reply_err(req, errno);
			return;
		}
		set_owner(p, p->fd, name, fuse_req_ctx(req), false);
	}
	reply_new_entry(req, fs, p, name);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *p = INO(fs, parent);
	if (p->virt != RKD_REAL || reserved_name(parent, name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (mkdirat(p->fd, name, mode) < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	set_owner(p, p->fd, name, fuse_req_ctx(req), true);
	reply_new_entry(req, fs, p, name);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *p = INO(fs, parent);
	if (p->virt != RKD_REAL || reserved_name(parent, name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (symlinkat(link, p->fd, name) < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	set_owner(p, p->fd, name, fuse_req_ctx(req), false);
	reply_new_entry(req, fs, p, name);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino), *p = INO(fs, newparent);
	char pp[64];
	if (in->virt != RKD_REAL || p->virt != RKD_REAL || reserved_name(newparent, newname)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	PROCPATH(pp, in->fd);
	rk_rw_rdlock(&fs->ns_lock, RK_RANK_NS);
	int r = linkat(AT_FDCWD, pp, p->fd, newname, AT_SYMLINK_FOLLOW) < 0 ? errno : 0;
	rk_rw_unlock(&fs->ns_lock);
	if (r) {
		fuse_reply_err(req, r);
		return;
	}
	reply_new_entry(req, fs, p, newname);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *p = INO(fs, parent);
	if (p->virt != RKD_REAL || reserved_name(parent, name)) {
		fuse_reply_err(req, p->virt != RKD_REAL ? EPERM : ENOENT);
		return;
	}
	rk_rw_rdlock(&fs->ns_lock, RK_RANK_NS);
	int r = unlinkat(p->fd, name, 0) < 0 ? errno : 0;
	rk_rw_unlock(&fs->ns_lock);
	fuse_reply_err(req, r);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *p = INO(fs, parent);
	if (p->virt != RKD_REAL || reserved_name(parent, name)) {
		fuse_reply_err(req, p->virt != RKD_REAL ? EPERM : EBUSY);
		return;
	}
	fuse_reply_err(req, unlinkat(p->fd, name, AT_REMOVEDIR) < 0 ? errno : 0);
}

/* parent/name is where an object now lives after a rename: keep its place in
 * the parent chain and its open file's path in step. */
static void renamed(struct rkd_fs *fs, struct rkd_inode *parent, const char *name)
{
	int fd = openat(parent->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0)
		return;
	if (fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0) {
		rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
		struct rkd_inode *in = itab_find(fs, st.st_dev, st.st_ino);
		if (in) {
			in->nlookup++;
			set_where(in, parent, name); /* the parent chain (paths, tables) */
		}
		rk_mutex_unlock(&fs->itab_lock);
		if (in) {
			file_repath(fs, in);
			inode_unref(fs, in, 1);
		}
	}
	close(fd);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
                      unsigned int flags)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *p = INO(fs, parent), *np = INO(fs, newparent);
	if (p->virt != RKD_REAL || np->virt != RKD_REAL || reserved_name(parent, name) ||
	    reserved_name(newparent, newname)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	rk_rw_rdlock(&fs->ns_lock, RK_RANK_NS);
	int r = renameat2(p->fd, name, np->fd, newname, flags) < 0 ? errno : 0;
	rk_rw_unlock(&fs->ns_lock);
	if (r) {
		fuse_reply_err(req, r);
		return;
	}
	/* the moved object may now belong to another table; open files re-read
	 * their path (messages) and policy lazily */
	renamed(fs, np, newname);
	if (flags & RENAME_EXCHANGE)
		renamed(fs, p, name);
	atomic_fetch_add(&fs->policy_gen, 1);
	fuse_reply_err(req, 0);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino);
	char buf[PATH_MAX + 1];
	ssize_t n = readlinkat(in->fd, "", buf, sizeof(buf) - 1);
	if (n < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	buf[n] = '\0';
	fuse_reply_readlink(req, buf);
}

static void setattr_impl(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid, struct fuse_file_info *fi);

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	/* a whole-file rekey does not copy the identity of a file while it changes */
	rk_rw_rdlock(&fs->ns_lock, RK_RANK_NS);
	setattr_impl(req, ino, attr, valid, fi);
	rk_rw_unlock(&fs->ns_lock);
}

static void setattr_impl(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino);
	char pp[64];
	int ret = 0;
	if (in->virt != RKD_REAL) {
		fuse_reply_err(req, EPERM);
		return;
	}
	PROCPATH(pp, in->fd);
	if (valid & FUSE_SET_ATTR_MODE) {
		if (S_ISLNK(in->type)) {
			ret = -EOPNOTSUPP;
			goto out;
		}
		if (chmod(pp, attr->st_mode & 07777) < 0) {
			ret = -errno;
			goto out;
		}
	}
	if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		if (fchownat(in->fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
			ret = -errno;
			goto out;
		}
	}
	if (valid & FUSE_SET_ATTR_SIZE) {
		struct rkd_file *f = NULL;
		if (!S_ISREG(in->type)) {
			ret = -EINVAL;
			goto out;
		}
		if (fi && fi->fh) {
			f = ((struct rkd_handle *)(uintptr_t)fi->fh)->f;
			ret = f ? truncate_file(fs, f, (uint64_t)attr->st_size) : -EINVAL;
		} else {
			ret = file_get(fs, in, &f);
			if (ret == 0) {
				ret = truncate_file(fs, f, (uint64_t)attr->st_size);
				file_put(fs, in, f);
			}
		}
		if (ret < 0)
			goto out;
	}
	if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
		if (valid & FUSE_SET_ATTR_ATIME_NOW)
			ts[0].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_ATIME)
			ts[0] = attr->st_atim;
		if (valid & FUSE_SET_ATTR_MTIME_NOW)
			ts[1].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_MTIME)
			ts[1] = attr->st_mtim;
		if (S_ISLNK(in->type)) {
			/* utimensat cannot take an O_PATH fd for a symlink: ignore like many FUSE fs */
		} else {
			/* an open chunk file's format-only writes keep the times: set them
			 * under the same lock so that none of those writes undoes them */
			rk_mutex_lock(&in->lock, RK_RANK_INODE);
			struct rk_cf *cf = in->of && in->of->chunk ? in->of->cf : NULL;
			if (cf)
				rk_cf_times_lock(cf);
			int r = utimensat(AT_FDCWD, pp, ts, 0);
			int e = errno;
			if (cf)
				rk_cf_times_unlock(cf);
			rk_mutex_unlock(&in->lock);
			if (r < 0) {
				ret = -e;
				goto out;
			}
		}
	}
out:
	if (ret < 0) {
		fuse_reply_err(req, ferr(ret));
		return;
	}
	struct stat st;
	ret = get_attr(fs, in, &st);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, fs->o.attr_timeout);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_handle *h = (struct rkd_handle *)(uintptr_t)fi->fh;
	struct rkd_file *f = h->f;
	(void)ino;
	if (!f || !f->rw) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (!f->chunk) {
		fuse_reply_err(req, fallocate(f->fd, mode, offset, length) < 0 ? errno : 0);
		return;
	}
	/* chunk files: only size extension (space is not reserved: chunks are
	 * written when data arrives) */
	if (mode & ~FALLOC_FL_KEEP_SIZE) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	int ret = 0;
	if (!(mode & FALLOC_FL_KEEP_SIZE) && (uint64_t)(offset + length) > rk_cf_size(f->cf))
		ret = truncate_file(fs, f, (uint64_t)(offset + length));
	fuse_reply_err(req, ret < 0 ? ferr(ret) : 0);
}

/* ---- directories ------------------------------------------------------------------------------ */
struct rkd_dir {
	DIR *dp;
	bool virt;
	int vpos;
	bool root;
	struct rkd_inode *in; /* the directory (held by the kernel while open) */
	uid_t uid;            /* opener, charged 2 (its DIR fd and its inode's) */
};

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino);
	struct rkd_dir *d = calloc(1, sizeof(*d));
	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (in->virt == RKD_VDIR) {
		d->virt = true;
	} else {
		d->uid = fuse_req_ctx(req)->uid;
		int ret = handle_charge(d->uid, 2);
		if (ret < 0) {
			free(d);
			fuse_reply_err(req, -ret);
			return;
		}
		int fd = openat(in->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0 || !(d->dp = fdopendir(fd))) {
			int e = errno;
			if (fd >= 0)
				close(fd);
			handle_refund(d->uid, 2);
			free(d);
			fuse_reply_err(req, e);
			return;
		}
		d->root = ino == FUSE_ROOT_ID;
		d->in = in;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	fi->cache_readdir = 0;
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_dir *d = (struct rkd_dir *)(uintptr_t)fi->fh;
	char *buf = malloc(size);
	size_t pos = 0;
	(void)ino;
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (d->virt) {
		static const char *names[] = {".", "..", "status", "control"};
		const ino_t inos[] = {fs->vdir.ino, fs->root.ino, fs->vstatus.ino, fs->vcontrol.ino};
		for (off_t i = off; i < 4; i++) {
			struct stat st = {0};
			st.st_mode = i < 2 ? S_IFDIR : S_IFREG;
			st.st_ino = inos[i];
			size_t n = fuse_add_direntry(req, buf + pos, size - pos, names[i], &st, i + 1);
			if (n > size - pos)
				break;
			pos += n;
		}
		fuse_reply_buf(req, buf, pos);
		free(buf);
		return;
	}
	/* offsets: telldir cookies; the virtual .rekeyfs entry of the root is
	 * emitted right after "." using the reserved cookie -1 handling below */
	seekdir(d->dp, off);
	for (;;) {
		errno = 0;
		struct dirent *de = readdir(d->dp);
		if (!de) {
			if (errno) {
				free(buf);
				fuse_reply_err(req, errno);
				return;
			}
			break;
		}
		if (rk_is_tmp_name(de->d_name))
			continue;
		struct stat st = {0};
		st.st_ino = de->d_ino;
		st.st_mode = (mode_t)DTTOIF(de->d_type);
		if (!d->root && strcmp(de->d_name, RK_STATE_DIR) == 0) {
			planted_state_dir(d->in);
			continue;
		}
		if (d->root && strcmp(de->d_name, RK_STATE_DIR) == 0) {
			/* the real state directory never shows: this name is the virtual one */
			st.st_ino = fs->vdir.ino;
			st.st_mode = S_IFDIR;
		}
		size_t n = fuse_add_direntry(req, buf + pos, size - pos, de->d_name, &st, telldir(d->dp));
		if (n > size - pos) {
			seekdir(d->dp, off);
			break;
		}
		pos += n;
		off = telldir(d->dp);
	}
	fuse_reply_buf(req, buf, pos);
	free(buf);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct rkd_dir *d = (struct rkd_dir *)(uintptr_t)fi->fh;
	(void)ino;
	if (d->dp) {
		closedir(d->dp);
		handle_refund(d->uid, 2);
	}
	free(d);
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct rkd_dir *d = (struct rkd_dir *)(uintptr_t)fi->fh;
	(void)ino;
	(void)datasync;
	if (!d->dp) {
		fuse_reply_err(req, 0);
		return;
	}
	fuse_reply_err(req, fsync(dirfd(d->dp)) < 0 ? errno : 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct rkd_fs *fs = FS(req);
	struct statvfs sv;
	(void)ino;
	if (fstatvfs(fs->rootfd, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

/* ---- extended attributes ------------------------------------------------------------------- */
static bool xattr_ok(struct rkd_inode *in)
{
	return in->virt == RKD_REAL && !S_ISLNK(in->type);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino);
	char pp[64];
	if (!xattr_ok(in)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	PROCPATH(pp, in->fd);
	rk_rw_rdlock(&fs->ns_lock, RK_RANK_NS);
	int r = setxattr(pp, name, value, size, flags) < 0 ? errno : 0;
	rk_rw_unlock(&fs->ns_lock);
	fuse_reply_err(req, r);
}

/* getxattr (name) or listxattr (name NULL) of a path: a size query when size
 * is 0, else the value in a reply buffer */
static void reply_sized(fuse_req_t req, size_t size, const char *path, const char *name)
{
	char *buf = NULL;
	if (size && !(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ssize_t n = name ? getxattr(path, name, buf, size) : listxattr(path, buf, size);
	if (n < 0)
		fuse_reply_err(req, errno);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino);
	char pp[64];
	if (!xattr_ok(in)) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	PROCPATH(pp, in->fd);
	reply_sized(req, size, pp, name);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino);
	char pp[64];
	if (!xattr_ok(in)) {
		if (size == 0)
			fuse_reply_xattr(req, 0);
		else
			fuse_reply_buf(req, NULL, 0);
		return;
	}
	PROCPATH(pp, in->fd);
	reply_sized(req, size, pp, NULL);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct rkd_fs *fs = FS(req);
	struct rkd_inode *in = INO(fs, ino);
	char pp[64];
	if (!xattr_ok(in)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	PROCPATH(pp, in->fd);
	rk_rw_rdlock(&fs->ns_lock, RK_RANK_NS);
	int r = removexattr(pp, name) < 0 ? errno : 0;
	rk_rw_unlock(&fs->ns_lock);
	fuse_reply_err(req, r);
}

/* ---- for the walker ---------------------------------------------------------------------------- */
int rkd_replace_commit(struct rkd_fs *fs, struct rkd_inode *in, unsigned gen, struct rk_replace *r)
{
	struct stat nst;
	int pfd = -1, ret = -EBUSY;
	rk_rw_wrlock(&fs->ns_lock, RK_RANK_NS);
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	if (!in->of && atomic_load(&in->open_gen) == gen)
		ret = rk_replace_commit(r, &pfd, &nst);
	if (ret == 0) {
		/* same fd number, new file: users of in->fd in other threads see the
		 * old or the new file, never an unrelated one */
		if (dup3(pfd, in->fd, O_CLOEXEC) < 0) {
			rk_warn("cannot move inode fd %d to the rekeyed file: %s", in->fd, strerror(errno));
			in->fd = pfd; /* the old fd stays open (never reused) */
			pfd = -1;
		}
		rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
		HASH_DELETE(hh, fs->inodes, in);
		in->dev = nst.st_dev;
		in->ino = nst.st_ino;
		HASH_ADD(hh, fs->inodes, dev, sizeof(struct ikey), in);
		rk_mutex_unlock(&fs->itab_lock);
		in->hdr_kind = -1;
	}
	rk_mutex_unlock(&in->lock);
	rk_rw_unlock(&fs->ns_lock);
	if (pfd >= 0)
		close(pfd);
	return ret;
}

int rkd_inode_at(struct rkd_fs *fs, int dirfd, const char *name, struct rkd_inode **out)
{
	struct stat st;
	return inode_lookup(fs, dirfd, name, NULL, &st, out);
}

int rkd_inode_at_path(struct rkd_fs *fs, int dirfd, const char *name, const char *rel, struct rkd_inode **out)
{
	int ret = rkd_inode_at(fs, dirfd, name, out);
	if (ret < 0 || !rel)
		return ret;
	/* for an inode the kernel never looked up (no parent chain): where the
	 * walk found it, whatever its depth */
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	if (!(*out)->name && (!(*out)->wrel || strcmp((*out)->wrel, rel) != 0)) {
		char *n = strdup(rel);
		if (n) {
			free((*out)->wrel);
			(*out)->wrel = n;
		}
	}
	rk_mutex_unlock(&fs->itab_lock);
	return 0;
}

void rkd_inode_put(struct rkd_fs *fs, struct rkd_inode *in) { inode_unref(fs, in, 1); }
int rkd_file_get(struct rkd_fs *fs, struct rkd_inode *in, struct rkd_file **out) { return file_get(fs, in, out); }
void rkd_file_put(struct rkd_fs *fs, struct rkd_inode *in, struct rkd_file *f) { file_put(fs, in, f); }

void rkd_file_ref(struct rkd_inode *in, struct rkd_file *f)
{
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	f->refs++;
	rk_mutex_unlock(&in->lock);
}

void rkd_chunk_lock(struct rkd_file *f, uint64_t idx)
{
	rk_rw_rdlock(&f->rw_lock, RK_RANK_FILE_RW);
	rk_rw_wrlock(&f->stripes[idx % RKD_CHUNK_STRIPES], RK_RANK_STRIPE);
}

void rkd_chunk_unlock(struct rkd_file *f, uint64_t idx)
{
	rk_rw_unlock(&f->stripes[idx % RKD_CHUNK_STRIPES]);
	rk_rw_unlock(&f->rw_lock);
}

void rkd_for_each_open(struct rkd_fs *fs, void (*fn)(struct rkd_file *f, void *arg), void *arg)
{
	/* Lock order: an inode's lock ranks below the inode table lock
	 * (rkd_replace_commit re-hashes the inode under itab_lock while holding
	 * in->lock), so no inode lock is ever waited for under itab_lock: pin
	 * every inode (nlookup+1) under the table lock, drop it, then visit each
	 * under its own lock only; fn runs with no daemon lock held, on a
	 * reference to the open file. */
	struct rkd_inode *in, *tmp, **pins;
	size_t n = 0;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	pins = malloc((fs->ninodes ? fs->ninodes : 1) * sizeof(*pins));
	if (pins) {
		HASH_ITER(hh, fs->inodes, in, tmp)
		{
			if (in->virt != RKD_REAL || in == &fs->root || n == fs->ninodes)
				continue;
			in->nlookup++;
			pins[n++] = in;
		}
	}
	rk_mutex_unlock(&fs->itab_lock);
	if (!pins) {
		rk_err("cannot visit the open files: out of memory");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		struct rkd_file *f = NULL;
		in = pins[i];
		rk_mutex_lock(&in->lock, RK_RANK_INODE);
		/* a file being closed is flushed and detached first (as file_get) */
		while (in->of && in->of->closing)
			pthread_cond_wait(&in->closed, &in->lock);
		if (in->of && in->of->chunk) {
			f = in->of;
			f->refs++;
		}
		rk_mutex_unlock(&in->lock);
		if (f) {
			fn(f, arg);
			file_put(fs, in, f);
		}
		inode_unref(fs, in, 1);
	}
	free(pins);
}

/* ---- init ------------------------------------------------------------------------------------ */
static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct rkd_fs *fs = userdata;
	if (fs->o.writeback && (conn->capable & FUSE_CAP_WRITEBACK_CACHE))
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
	else
		fs->o.writeback = 0;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
	/* locks are handled by the kernel locally (one host, one mount) */
	conn->want &= ~(unsigned)(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
	conn->max_readahead = RK_MIN(conn->max_readahead, 1u << 20);
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	rk_info("mounted %s (writeback cache %s, max_write %u, max_readahead %u)", fs->datadir,
	        fs->o.writeback ? "on" : "off", conn->max_write, conn->max_readahead);
	atomic_store(&fs->initialized, true);
}

static void op_destroy(void *userdata)
{
	struct rkd_fs *fs = userdata;
	rk_info("unmounting %s", fs->datadir);
}

const struct fuse_lowlevel_ops rkd_ops = {
	.init = op_init,
	.destroy = op_destroy,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsyncdir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.create = op_create,
	.fallocate = op_fallocate,
};

/* ---- kernel read-ahead ---------------------------------------------------------------------------- */
/* "major:minor" of the rekeyfs mount on mnt (the last one: the top of an
 * over-mount), from /proc/self/mountinfo. */
static int mount_devnum(const char *mnt, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096];
	int found = -ENOENT;
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char majmin[32], point[PATH_MAX], *sep = strstr(line, " - ");
		if (!sep || sscanf(line, "%*u %*u %31s %*s %4095s", majmin, point) != 2)
			continue;
		if (strcmp(point, mnt) != 0 || strncmp(sep + 3, "fuse.rekeyfs ", 13) != 0)
			continue;
		snprintf(out, len, "%s", majmin);
		found = 0;
	}
	fclose(f);
	return found;
}

static void *readahead_main(void *arg)
{
	struct rkd_fs *fs = arg;
	char dev[32], path[96], cur[32];
	for (int i = 0; i < 100 && !atomic_load(&fs->initialized) && !atomic_load(&fs->ra_stop); i++)
		usleep(50000);
	if (!fs->mountpoint || mount_devnum(fs->mountpoint, dev, sizeof(dev)) < 0) {
		rk_dbg("read-ahead: mount of %s not found in mountinfo; left as it is", fs->datadir);
		return NULL;
	}
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	/* the kernel lowers the value when it processes the INIT reply, right
	 * after op_init: set it, and again if that came later */
	for (int i = 0; i < 5 && !atomic_load(&fs->ra_stop); i++) {
		usleep(100000);
		char want[32];
		int n = snprintf(want, sizeof(want), "%u\n", fs->o.read_ahead_kb);
		int fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			rk_dbg("read-ahead: cannot open %s: %s; left as it is", path, strerror(errno));
			return NULL;
		}
		ssize_t r = pread(fd, cur, sizeof(cur) - 1, 0);
		cur[r > 0 ? r : 0] = '\0';
		if (strcmp(cur, want) != 0 && pwrite(fd, want, (size_t)n, 0) != n)
			rk_dbg("read-ahead: cannot write %s: %s", path, strerror(errno));
		close(fd);
	}
	rk_dbg("read-ahead of %s (%s): %u KiB", fs->datadir, dev, fs->o.read_ahead_kb);
	return NULL;
}

void rkd_readahead_start(struct rkd_fs *fs)
{
	if (fs->o.read_ahead_kb && pthread_create(&fs->ra_thr, NULL, readahead_main, fs) == 0)
		fs->ra_started = true;
}

void rkd_readahead_stop(struct rkd_fs *fs)
{
	if (!fs->ra_started)
		return;
	atomic_store(&fs->ra_stop, true);
	pthread_join(fs->ra_thr, NULL);
	fs->ra_started = false;
}
