/* rekeyfs daemon - the extended attribute operations (passed through to the
 * backing object; none on the virtual files or symlinks). */
#include "config.h"

#include <stdlib.h>
#include <sys/xattr.h>

#include "inode.h"
#include "ops.h"

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

void rkd_xattr_ops(struct fuse_lowlevel_ops *ops)
{
	ops->setxattr = op_setxattr;
	ops->getxattr = op_getxattr;
	ops->listxattr = op_listxattr;
	ops->removexattr = op_removexattr;
}
