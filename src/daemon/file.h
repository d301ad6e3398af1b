/* rekeyfs daemon - the shared open-file state (file.c) and attributes
 * (attr.c).  Internal to the daemon's operation modules; the walker-facing
 * part (rkd_file_get/put/ref, rkd_chunk_lock, rkd_for_each_open,
 * rkd_policy_for) is in daemon.h. */
#ifndef REKEYFS_DAEMON_FILE_H
#define REKEYFS_DAEMON_FILE_H

#include "daemon.h"

/* file.c */
struct rkd_file *rkd_file_alloc(void);
void rkd_file_free(struct rkd_file *f);
/* under in->lock: give the inode back its O_PATH fd */
void rkd_fd_unshare(struct rkd_inode *in, struct rkd_file *f);
/* Refresh the file's path (for policy and messages) after a rename. */
void rkd_file_repath(struct rkd_fs *fs, struct rkd_inode *in);
int rkd_truncate_file(struct rkd_fs *fs, struct rkd_file *f, uint64_t size);
/* Make the empty stored file fd (path rel) a chunk file under its table's
 * policy (chunk size, compression, target key): rk_cf_create, error logged
 * naming the file and the key. */
int rkd_cf_create_policy(struct rkd_fs *fs, int fd, const char *rel, struct rk_cf **out);
uint64_t rkd_stripe_mask(struct rkd_file *f, uint64_t off, size_t len);
void rkd_stripes_lock(struct rkd_file *f, uint64_t m, bool excl);
void rkd_stripes_unlock(struct rkd_file *f, uint64_t m);
struct rkd_handle *rkd_handle_new(struct rkd_inode *in, struct rkd_file *f, int flags);
void rkd_handle_free(struct rkd_handle *h);
/* Clean the headers of files closed with dirty counts (no FUSE requests may
 * run: at unmount). */
void rkd_clean_dirty_headers(struct rkd_fs *fs);

/* attr.c */
void rkd_virt_attr(struct rkd_fs *fs, struct rkd_inode *in, struct stat *st);
/* Replace st_size of a regular file by its plaintext size. */
int rkd_fix_size(struct rkd_fs *fs, struct rkd_inode *in, struct stat *st);
int rkd_get_attr(struct rkd_fs *fs, struct rkd_inode *in, struct stat *st);
void rkd_size_cache_put(struct rkd_fs *fs, const struct stat *st, int kind, uint64_t size);
void rkd_size_cache_free(struct rkd_fs *fs);

#endif
