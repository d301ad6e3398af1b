/* rekeyfs daemon - the FUSE operation families.  Each module fills in its
 * part of the low-level operations table; fs.c assembles it (rkd_fs_ops). */
#ifndef REKEYFS_DAEMON_OPS_H
#define REKEYFS_DAEMON_OPS_H

#include "daemon.h"

void rkd_names_ops(struct fuse_lowlevel_ops *ops); /* names.c: lookup, attributes, create, link, rename */
void rkd_data_ops(struct fuse_lowlevel_ops *ops);  /* data.c: open, read, write, fsync, fallocate */
void rkd_dir_ops(struct fuse_lowlevel_ops *ops);   /* dir.c: directories, statfs */
/* dir.c: close the directory handles the kernel never released (at destroy) */
void rkd_dirs_free(struct rkd_fs *fs);
void rkd_xattr_ops(struct fuse_lowlevel_ops *ops); /* xattr.c: extended attributes */
/* dir.c: a .rekeyfs below the root was seen in dir (reported once) */
void rkd_planted_state_dir(struct rkd_inode *dir);

#endif
