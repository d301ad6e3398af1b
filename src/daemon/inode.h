/* rekeyfs daemon - the inode table and the descriptor budget (inode.c).
 * Internal to the daemon's operation modules; the walker-facing part
 * (rkd_inode_at, rkd_inode_put, rkd_replace_commit) is in daemon.h. */
#ifndef REKEYFS_DAEMON_INODE_H
#define REKEYFS_DAEMON_INODE_H

#include <errno.h>
#include <stdio.h>

#include "daemon.h"

#define PROCPATH(buf, fd) snprintf((buf), sizeof(buf), "/proc/self/fd/%d", (fd))

static inline struct rkd_fs *FS(fuse_req_t req) { return fuse_req_userdata(req); }

static inline struct rkd_inode *INO(struct rkd_fs *fs, fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return &fs->root;
	return (struct rkd_inode *)(uintptr_t)ino;
}

static inline fuse_ino_t NODEID(struct rkd_fs *fs, struct rkd_inode *in)
{
	return in == &fs->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)in;
}

/* Map library errors to what a filesystem caller can see. */
static inline int ferr(int neg)
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

/* the inode hash key: the adjacent (dev, ino) members of struct rkd_inode */
struct ikey {
	dev_t dev;
	ino_t ino;
};

/* Path of an inode from the data directory ("/a/b"), allocated (NULL only
 * when out of memory). */
char *rkd_inode_rel(struct rkd_fs *fs, struct rkd_inode *in);
/* under fs->itab_lock */
struct rkd_inode *rkd_itab_find(struct rkd_fs *fs, dev_t dev, ino_t ino);
/* under fs->itab_lock: note where in was looked up */
void rkd_set_where(struct rkd_inode *in, const struct rkd_inode *parent, const char *name);
struct rkd_inode *rkd_inode_get_ex(struct rkd_fs *fs, int fd, const struct stat *st, const struct rkd_inode *parent,
                                   const char *name, bool lock_new, bool *adopted);
struct rkd_inode *rkd_inode_get_at(struct rkd_fs *fs, int fd, const struct stat *st, const struct rkd_inode *parent,
                                   const char *name);
void rkd_inode_unref(struct rkd_fs *fs, struct rkd_inode *in, uint64_t n);
/* one more lookup of in (the caller holds one) */
void rkd_inode_ref(struct rkd_fs *fs, struct rkd_inode *in);
int rkd_inode_lookup(struct rkd_fs *fs, int dirfd, const char *name, const struct rkd_inode *parent,
                     struct stat *st, struct rkd_inode **out);
/* open handles per non-root user: 0, or -EMFILE / -ENFILE / -ENOMEM */
int rkd_handle_charge(struct rkd_fs *fs, uid_t uid, size_t n);
void rkd_handle_refund(struct rkd_fs *fs, uid_t uid, size_t n);
void rkd_budget_init(struct rkd_budget *b);
void rkd_budget_destroy(struct rkd_budget *b);
/* Keep the O_PATH fds of known inodes below the process's fd limit: ask the
 * kernel to drop idle dentries (it then forgets their inodes). */
int rkd_reclaim_start(struct rkd_fs *fs);
void rkd_reclaim_stop(struct rkd_fs *fs);

#endif
