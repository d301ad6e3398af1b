/* rekeyfs - deterministic walk of a data directory tree (sorted by name,
 * never following symlinks, skipping the root .rekeyfs state directory). */
#ifndef REKEYFS_WALK_H
#define REKEYFS_WALK_H

#include <sys/stat.h>

struct rk_walk_ent {
	const char *rel;      /* path from the data directory root, "/a/b" */
	int dirfd;            /* directory containing the entry */
	const char *name;     /* entry name within dirfd */
	const struct stat *st;
};

/* Called for every entry (directories before their contents).  Return <0
 * to stop the walk with that error, 1 to skip a directory's contents. */
typedef int (*rk_walk_fn)(const struct rk_walk_ent *e, void *arg);

/* Order of two paths ("/a/b") in the walk: <0, 0 or >0.  Names sort per
 * directory and a directory comes before its contents, so this is not
 * strcmp ("/a/b" comes before "/a.x"). */
int rk_walk_cmp(const char *a, const char *b);

/* Walk the subtree start ("/" or "/ks/t1") of the tree at rootfd.  No
 * symlink is followed, on the way to start either. */
int rk_walk(int rootfd, const char *start, rk_walk_fn fn, void *arg);
/* Like rk_walk, but path may also name a single non-directory entry (fn is
 * called for it alone).  -ENOENT when it does not exist, -ENOTDIR when a
 * component on the way is not a directory (or is a symlink), -EPERM for the
 * root's state directory. */
int rk_walk_path(int rootfd, const char *path, rk_walk_fn fn, void *arg);

#endif
