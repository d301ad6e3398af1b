/* rekeyfs daemon - the namespace operations: lookup, forget, getattr and
 * setattr, creating objects (create, mknod, mkdir, symlink, link), unlink,
 * rmdir, rename, readlink. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "file.h"
#include "inode.h"
#include "ops.h"
#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"

/* Names the daemon reserves in every directory: the state directory name
 * (the root's is the virtual .rekeyfs/, one below the root would pass for
 * it: rekeyctl and admins look for MOUNT/.../.rekeyfs/control) and the
 * temporaries of whole-file replacement. */
static bool reserved_name(fuse_ino_t parent, const char *name)
{
	(void)parent;
	return strcmp(name, RK_STATE_DIR) == 0 || rk_is_tmp_name(name);
}

/* ---- lookup -------------------------------------------------------------------------------- */
static int do_lookup(struct rkd_fs *fs, fuse_ino_t parent, const char *name, struct fuse_entry_param *e)
{
	struct rkd_inode *p = INO(fs, parent);
	memset(e, 0, sizeof(*e));
	e->attr_timeout = fs->o.attr_timeout;
	e->entry_timeout = fs->o.entry_timeout;
	if (p->virt == RKD_VDIR) {
		struct rkd_inode *v = strcmp(name, "status") == 0    ? &fs->vstatus
		                     : strcmp(name, "control") == 0 ? &fs->vcontrol
		                     : strcmp(name, "metrics") == 0 ? &fs->vmetrics
		                                                    : NULL;
		if (!v)
			return -ENOENT;
		e->ino = (fuse_ino_t)(uintptr_t)v;
		rkd_virt_attr(fs, v, &e->attr);
		e->attr_timeout = e->entry_timeout = 0;
		return 0;
	}
	if (p->virt != RKD_REAL)
		return -ENOTDIR;
	if (parent == FUSE_ROOT_ID && strcmp(name, RK_STATE_DIR) == 0) {
		e->ino = (fuse_ino_t)(uintptr_t)&fs->vdir;
		rkd_virt_attr(fs, &fs->vdir, &e->attr);
		return 0;
	}
	if (rk_is_tmp_name(name))
		return -ENOENT;
	if (strcmp(name, RK_STATE_DIR) == 0) {
		struct stat pst;
		if (fstatat(p->fd, name, &pst, AT_SYMLINK_NOFOLLOW) == 0)
			rkd_planted_state_dir(p);
		return -ENOENT;
	}
	struct stat st;
	struct rkd_inode *in;
	int ret = rkd_inode_lookup(fs, p->fd, name, p, &st, &in);
	if (ret < 0)
		return ret;
	ret = rkd_fix_size(fs, in, &st);
	if (ret < 0) {
		rkd_inode_unref(fs, in, 1);
		return ret;
	}
	e->ino = NODEID(fs, in);
	e->attr = st;
	return 0;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct rkd_fs *fs = FS(req);
	struct fuse_entry_param e;
	int ret = do_lookup(fs, parent, name, &e);
	if (ret == -ENOENT && INO(fs, parent)->virt == RKD_REAL) {
		/* a negative entry the kernel may cache for entry_timeout: the
		 * mount is the only writer of its data directory, and what it
		 * creates the kernel learns from the creating request (the names
		 * the daemon keeps hidden are never found) */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = fs->o.entry_timeout;
		fuse_reply_entry(req, &e);
	} else if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct rkd_fs *fs = FS(req);
	rkd_inode_unref(fs, INO(fs, ino), nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct rkd_fs *fs = FS(req);
	for (size_t i = 0; i < count; i++)
		rkd_inode_unref(fs, INO(fs, forgets[i].ino), forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct rkd_fs *fs = FS(req);
	struct stat st;
	(void)fi;
	int ret = rkd_get_attr(fs, INO(fs, ino), &st);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, fs->o.attr_timeout);
}
/* ---- creating objects ---------------------------------------------------------------------- */
/* Is gid the caller's group or one of its supplementary groups?  1 yes,
 * 0 no, -ENOMEM, or -EIO when the kernel cannot tell its groups. */
static int caller_in_group(fuse_req_t req, gid_t gid)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	gid_t small[64], *groups = small;
	int ret = ctx->gid == gid;
	int n = ret ? 0 : fuse_req_getgroups(req, 64, small);
	if (n > 64) {
		groups = calloc((size_t)n, sizeof(*groups));
		n = groups ? fuse_req_getgroups(req, n, groups) : -ENOMEM;
	}
	if (n < 0)
		ret = n == -ENOMEM ? n : -EIO;
	for (int i = 0; i < n && ret == 0; i++)
		ret = groups[i] == gid;
	if (groups != small)
		free(groups);
	return ret;
}

/* Give a new object (type: its S_IFMT) the caller's identity and the mode
 * the caller asked for, exactly as the host file system would: the kernel
 * has applied the caller's umask to mode already, so the daemon's own umask
 * must not apply a second time; the ownership change clears setuid/setgid,
 * so the mode is set after it; in a setgid directory the group is the
 * directory's, a new directory inherits the setgid bit, and a new file
 * keeps setgid only if the caller is in that group (or is root). */
static void set_owner(fuse_req_t req, struct rkd_inode *parent, int dirfd, const char *name, mode_t type, mode_t mode)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct stat pst;
	gid_t gid = ctx->gid;
	bool sgid_dir = fstatat(parent->fd, "", &pst, AT_EMPTY_PATH) == 0 && (pst.st_mode & S_ISGID);
	if (sgid_dir)
		gid = pst.st_gid;
	/* name "": dirfd is the new object itself (not a name someone could swap) */
	if (fchownat(dirfd, name, ctx->uid, gid, name[0] ? AT_SYMLINK_NOFOLLOW : AT_EMPTY_PATH) < 0)
		rk_warn("cannot set owner %u:%u: %s", (unsigned)ctx->uid, (unsigned)gid, strerror(errno));
	if (S_ISLNK(type))
		return; /* a symlink has no mode of its own */
	mode_t want = mode & 07777;
	if (S_ISDIR(type) && sgid_dir)
		want |= S_ISGID;
	else if (!S_ISDIR(type) && (want & S_ISGID) && ctx->uid != 0 && caller_in_group(req, gid) != 1)
		want &= ~(mode_t)S_ISGID;
	int fd = name[0] ? openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC) : dirfd;
	char pp[64];
	if (fd >= 0) {
		PROCPATH(pp, fd);
		if (chmod(pp, want) < 0)
			rk_warn("cannot set mode %04o: %s", (unsigned)want, strerror(errno));
		if (fd != dirfd)
			close(fd);
	}
}

/* Does the regular file st, just created by the daemon, already have what
 * set_owner would give it?  Its uid and gid are the caller's (then the
 * directory's setgid group, if any, is the caller's group too, and the
 * caller is in it, so setgid stays) and its permission bits are mode. */
static bool owner_is_callers(fuse_req_t req, const struct stat *st, mode_t mode)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	return st->st_uid == ctx->uid && st->st_gid == ctx->gid && (st->st_mode & 07777) == (mode & 07777);
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
		int member = caller_in_group(req, st->st_gid);
		if (member < 0)
			return member == -ENOMEM ? member : -EEXIST; /* groups unknown: the kernel's lookup decides */
		bits = member ? (st->st_mode >> 3) & 7 : st->st_mode & 7;
	}
	if ((bits & need) != need)
		ret = -EACCES;
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
                             mode_t mode, bool excl, int flags, bool *created, struct rk_cf **cfout, char **relout,
                             struct stat *stout)
{
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
	prel = rkd_inode_rel(fs, parent);
	if (!prel || asprintf(&rel, "%s/%s", strcmp(prel, "/") ? prel : "", name) < 0) {
		free(prel);
		unlinkat(parent->fd, name, 0);
		close(fd);
		return -ENOMEM;
	}
	free(prel);
	struct rk_cf *cf;
	ret = rkd_cf_create_policy(fs, fd, rel, &cf);
	if (ret < 0) {
		unlinkat(parent->fd, name, 0);
		close(fd);
		free(rel);
		return resource_err(ret) ? ret : -EIO;
	}
	/* after the header write: st is the new file as it stays (size, times)
	 * and serves the reply; owner and mode are changed only when the host
	 * did not already give the file the caller's (a caller with the
	 * daemon's ids, the common case, costs no chown, chmod or parent stat) */
	struct stat st;
	ret = fstat(fd, &st) < 0 ? -errno : 0;
	if (ret == 0 && !owner_is_callers(req, &st, mode)) {
		set_owner(req, parent, fd, "", S_IFREG, mode);
		ret = fstat(fd, &st) < 0 ? -errno : 0;
	}
	if (ret < 0) {
		rk_cf_close(cf);
		unlinkat(parent->fd, name, 0);
		close(fd);
		free(rel);
		return ret;
	}
	if (stout)
		*stout = st;
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
	/* the inode of the fd we created (st: its fstat after the header
	 * write), not whatever the name holds by now; a new inode takes fd as
	 * its fd: one descriptor for the open file */
	struct rkd_inode *in = rkd_inode_get_ex(fs, fd, st, p, name, true, &adopted);
	if (!in) {
		ret = -ENOMEM;
		goto fail;
	}
	if (!adopted)
		rk_mutex_lock(&in->lock, RK_RANK_INODE);
	if (adopted && !(f = rkd_file_alloc())) {
		rk_mutex_unlock(&in->lock);
		rk_cf_close(cf);
		rkd_inode_unref(fs, in, 1); /* closes fd, the inode's */
		return -ENOMEM;
	}
	if (!adopted && (in->of || !(f = rkd_file_alloc()))) {
		/* someone opened it meanwhile: share theirs */
		rk_mutex_unlock(&in->lock);
		rk_cf_close(cf);
		close(fd);
		ret = rkd_file_get_for(fs, in, true, fout);
		if (ret < 0) {
			rkd_inode_unref(fs, in, 1);
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
	ret = rk_journal_attach_file(fs->j, cf, rel, &f->jf);
	if (ret == 0) {
		if (fs->o.lazy && fs->lazy_hook)
			rk_cf_set_read_hook(cf, fs->lazy_hook, f);
		in->of = f;
		rk_mutex_unlock(&in->lock);
		st->st_size = 0;
		*fout = f;
		*inout = in;
		return 0;
	}
	rkd_fd_unshare(in, f);
	rk_mutex_unlock(&in->lock);
	rkd_file_free(f); /* closes fd (unless it is the inode's) and cf */
	rkd_inode_unref(fs, in, 1);
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
	ret = rkd_handle_charge(fs, uid, 1);
	if (ret < 0)
		goto out;
	charged = true;
	memset(&e, 0, sizeof(e));
	fd = create_chunk_file(fs, req, p, name, mode & 07777, fi->flags & O_EXCL, fi->flags, &created, &ncf, &rel,
	                       &e.attr);
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
		in = rkd_inode_get_at(fs, pfd, &e.attr, p, name);
		if (!in) {
			ret = -ENOMEM;
			goto out;
		}
		close(fd);
		fd = -1;
		ret = rkd_file_get_for(fs, in, (fi->flags & O_ACCMODE) != O_RDONLY, &f);
		if (ret == 0 && (fi->flags & O_TRUNC))
			ret = rkd_truncate_file(fs, f, 0);
		if (ret < 0)
			goto out;
	}
	e.ino = NODEID(fs, in);
	e.attr_timeout = fs->o.attr_timeout;
	e.entry_timeout = fs->o.entry_timeout;
	h = rkd_handle_new(in, f, fi->flags);
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
			rkd_file_put(fs, in, f);
		if (in)
			rkd_inode_unref(fs, in, 1);
		if (charged)
			rkd_handle_refund(fs, uid, 1);
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
		int fd = create_chunk_file(fs, req, p, name, mode & 07777, true, 0, &created, NULL, &rel, NULL);
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
		set_owner(req, p, p->fd, name, mode & S_IFMT, mode);
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
	set_owner(req, p, p->fd, name, S_IFDIR, mode);
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
	set_owner(req, p, p->fd, name, S_IFLNK, 0);
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
		struct rkd_inode *in = rkd_itab_find(fs, st.st_dev, st.st_ino);
		if (in) {
			in->nlookup++;
			rkd_set_where(in, parent, name); /* the parent chain (paths, tables) */
		}
		rk_mutex_unlock(&fs->itab_lock);
		if (in) {
			rkd_file_repath(fs, in);
			rkd_inode_unref(fs, in, 1);
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
			ret = f ? rkd_truncate_file(fs, f, (uint64_t)attr->st_size) : -EINVAL;
		} else {
			ret = rkd_file_get_for(fs, in, true, &f);
			if (ret == 0) {
				ret = rkd_truncate_file(fs, f, (uint64_t)attr->st_size);
				rkd_file_put(fs, in, f);
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
			/* the symlink itself, by its O_PATH fd (AT_EMPTY_PATH: Linux 5.8) */
			if (utimensat(in->fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
				ret = -errno;
				goto out;
			}
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
	ret = rkd_get_attr(fs, in, &st);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, fs->o.attr_timeout);
}

void rkd_names_ops(struct fuse_lowlevel_ops *ops)
{
	ops->lookup = op_lookup;
	ops->forget = op_forget;
	ops->forget_multi = op_forget_multi;
	ops->getattr = op_getattr;
	ops->setattr = op_setattr;
	ops->readlink = op_readlink;
	ops->mknod = op_mknod;
	ops->mkdir = op_mkdir;
	ops->unlink = op_unlink;
	ops->rmdir = op_rmdir;
	ops->symlink = op_symlink;
	ops->rename = op_rename;
	ops->link = op_link;
	ops->create = op_create;
}
