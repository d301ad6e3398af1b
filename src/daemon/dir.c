/* rekeyfs daemon - the directory operations: opendir, readdir (no
 * .rekeyfs is ever listed: the real state directory never shows and the
 * root's virtual .rekeyfs is reachable by name only), releasedir, fsyncdir,
 * and statfs. */
#include "config.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "inode.h"
#include "ops.h"
#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"

/* A .rekeyfs below the root in the data directory: never shown, reported
 * once per directory (someone planted it, or a data directory was copied
 * into a table). */
void rkd_planted_state_dir(struct rkd_inode *dir)
{
	if (!atomic_exchange(&dir->planted_logged, true))
		rk_warn("a directory named %s below the data directory root is hidden (directory inode %ju): only the "
		        "root's state directory is rekeyfs's; remove it from the data directory",
		        RK_STATE_DIR, (uintmax_t)dir->ino);
}
/* ---- directories ------------------------------------------------------------------------------ */
struct rkd_dir {
	DIR *dp;
	bool virt;
	int vpos;
	bool root;
	struct rkd_inode *in; /* the directory (held by the kernel while open) */
	uid_t uid;            /* opener, charged 2 (its DIR fd and its inode's) */
	struct rkd_dir *prev, *next; /* fs->dirs, under fs->dirs_lock */
};

static void dirs_link(struct rkd_fs *fs, struct rkd_dir *d)
{
	rk_mutex_lock(&fs->dirs_lock, RK_RANK_DIRS);
	d->prev = NULL;
	d->next = fs->dirs;
	if (fs->dirs)
		fs->dirs->prev = d;
	fs->dirs = d;
	rk_mutex_unlock(&fs->dirs_lock);
}

static void dirs_unlink(struct rkd_fs *fs, struct rkd_dir *d)
{
	rk_mutex_lock(&fs->dirs_lock, RK_RANK_DIRS);
	if (d->prev)
		d->prev->next = d->next;
	else
		fs->dirs = d->next;
	if (d->next)
		d->next->prev = d->prev;
	rk_mutex_unlock(&fs->dirs_lock);
}

void rkd_dirs_free(struct rkd_fs *fs)
{
	rk_mutex_lock(&fs->dirs_lock, RK_RANK_DIRS);
	struct rkd_dir *d = fs->dirs;
	fs->dirs = NULL;
	rk_mutex_unlock(&fs->dirs_lock);
	while (d) {
		struct rkd_dir *next = d->next;
		if (d->dp)
			closedir(d->dp);
		free(d);
		d = next;
	}
}

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
		int ret = rkd_handle_charge(fs, d->uid, 2);
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
			rkd_handle_refund(fs, d->uid, 2);
			free(d);
			fuse_reply_err(req, e);
			return;
		}
		d->root = ino == FUSE_ROOT_ID;
		d->in = in;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	fi->cache_readdir = 0;
	dirs_link(fs, d);
	if (fuse_reply_open(req, fi) == -ENOENT) {
		/* the opener was interrupted: no RELEASEDIR will come */
		dirs_unlink(fs, d);
		if (d->dp) {
			closedir(d->dp);
			rkd_handle_refund(fs, d->uid, 2);
		}
		free(d);
	}
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
		static const char *names[] = {".", "..", "status", "control", "metrics"};
		const ino_t inos[] = {fs->vdir.ino, fs->root.ino, fs->vstatus.ino, fs->vcontrol.ino, fs->vmetrics.ino};
		for (off_t i = off; i < 5; i++) {
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
	/* offsets: telldir cookies.  No .rekeyfs is listed: the root's is the
	 * virtual control directory, reachable by name (lookup) for rekeyctl
	 * but never listed, so that a database's initdb sees an empty
	 * directory and tools that walk the tree (tar, rsync, pg_basebackup)
	 * neither copy the daemon's status nor trip over the root-only control
	 * file; one below the root was planted and stays hidden. */
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
		if (strcmp(de->d_name, RK_STATE_DIR) == 0) {
			if (!d->root)
				rkd_planted_state_dir(d->in);
			continue;
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
	dirs_unlink(FS(req), d);
	if (d->dp) {
		closedir(d->dp);
		rkd_handle_refund(FS(req), d->uid, 2);
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

void rkd_dir_ops(struct fuse_lowlevel_ops *ops)
{
	ops->opendir = op_opendir;
	ops->readdir = op_readdir;
	ops->releasedir = op_releasedir;
	ops->fsyncdir = op_fsyncdir;
	ops->statfs = op_statfs;
}
