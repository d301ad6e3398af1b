/* rekeyfs - committing a prepared whole-file replacement (a resealed copy
 * from the whole-file rekey, sweep.c, or a converted plain file,
 * convert.c): the original must be unchanged, then the copy is renamed over
 * it and the rename made durable. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/sweep.h"
#include "replace_int.h"

bool rk_stat_unchanged(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

int rk_replace_new(int dirfd, const char *name, const char *rel, struct rk_replace **out)
{
	struct rk_replace *r = calloc(1, sizeof(*r));
	*out = r;
	if (!r)
		return -ENOMEM;
	r->dirfd = dirfd;
	r->src = r->tmp = -1;
	r->name = strdup(name);
	r->rel = strdup(rel);
	if (!r->name || !r->rel)
		return -ENOMEM;
	/* O_NONBLOCK: a FIFO put in its place never blocks the open */
	r->src = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOATIME);
	if (r->src < 0 && errno == EPERM)
		r->src = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (r->src < 0)
		return -errno;
	if (fstat(r->src, &r->st) < 0)
		return -errno;
	return 0;
}

int rk_replace_commit(struct rk_replace *r, int *new_path_fd, struct stat *new_st)
{
	struct stat now;
	int pfd = -1, ret;
	if (new_path_fd)
		*new_path_fd = -1;
	if (fstatat(r->dirfd, r->name, &now, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? -EAGAIN : -errno;
	if (!rk_stat_unchanged(&now, &r->st))
		return -EAGAIN; /* written, renamed, re-created or chmod-ed meanwhile */
	if (new_path_fd || new_st) {
		pfd = openat(r->dirfd, r->tmpname, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (pfd < 0)
			return -errno;
		if (new_st && fstat(r->tmp, new_st) < 0) {
			ret = -errno;
			close(pfd);
			return ret;
		}
	}
	rk_crashpoint("replace.before-rename");
	if (renameat(r->dirfd, r->tmpname, r->dirfd, r->name) < 0) {
		ret = -errno;
		if (pfd >= 0)
			close(pfd);
		return ret;
	}
	r->committed = true;
	r->tmpname[0] = '\0';
	rk_crashpoint("replace.after-rename");
	if (new_path_fd)
		*new_path_fd = pfd;
	else if (pfd >= 0)
		close(pfd);
	return 0;
}

int rk_replace_end(struct rk_replace *r)
{
	int ret = 0;
	if (!r)
		return 0;
	if (r->committed) {
		ret = rk_fsync_dir(r->dirfd);
		if (ret < 0)
			rk_err("%s: cannot sync its directory after the rekey: %s", r->rel, strerror(-ret));
	} else if (r->tmpname[0]) {
		unlinkat(r->dirfd, r->tmpname, 0);
	}
	if (r->tmp >= 0)
		close(r->tmp);
	if (r->src >= 0)
		close(r->src);
	free(r->name);
	free(r->rel);
	free(r);
	return ret;
}
