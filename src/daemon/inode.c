/* rekeyfs daemon - the inode table and the descriptor budget.
 *
 * Every inode the kernel knows holds an O_PATH fd on its backing object; the
 * table is a hash by (dev, ino) and the FUSE node id is the inode pointer.
 * A file's path is built from the daemon's own parent chain.  Open handles
 * are charged to their non-root user, and a reclaimer keeps the known
 * inodes' fds below the process's fd limit. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "inode.h"
#include "rekeyfs/common.h"
#include "rekeyfs/sweep.h"

/* Path of an inode from the data directory ("/a/b"), allocated.  Built from
 * the daemon's own parent chain: the name and parent under which the kernel
 * last looked up each inode (kept in step by rename), so it has no length
 * limit and does not depend on how /proc shows the backing tree.  When the
 * chain is broken (an inode the kernel never looked up, an ancestor
 * forgotten), the path the walker found it at, then /proc/self/fd.  Returns
 * NULL only when out of memory. */
char *rkd_inode_rel(struct rkd_fs *fs, struct rkd_inode *in)
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
		cur = rkd_itab_find(fs, cur->pdev, cur->pino);
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
_Static_assert(offsetof(struct rkd_inode, ino) == offsetof(struct rkd_inode, dev) + sizeof(dev_t) &&
                   sizeof(struct ikey) == sizeof(dev_t) + sizeof(ino_t),
               "the inode hash key must be the adjacent dev and ino members");

struct rkd_inode *rkd_itab_find(struct rkd_fs *fs, dev_t dev, ino_t ino)
{
	struct rkd_inode *in;
	struct ikey k = {dev, ino};
	HASH_FIND(hh, fs->inodes, &k, sizeof(k), in);
	return in;
}

void rkd_set_where(struct rkd_inode *in, const struct rkd_inode *parent, const char *name)
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
struct rkd_inode *rkd_inode_get_ex(struct rkd_fs *fs, int fd, const struct stat *st, const struct rkd_inode *parent,
                                   const char *name, bool lock_new, bool *adopted)
{
	struct rkd_inode *in;
	*adopted = false;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	in = rkd_itab_find(fs, st->st_dev, st->st_ino);
	if (in) {
		in->nlookup++;
		rkd_set_where(in, parent, name);
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
	rkd_set_where(in, parent, name);
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
struct rkd_inode *rkd_inode_get_at(struct rkd_fs *fs, int fd, const struct stat *st, const struct rkd_inode *parent,
                                   const char *name)
{
	bool adopted;
	struct rkd_inode *in = rkd_inode_get_ex(fs, fd, st, parent, name, false, &adopted);
	if (!adopted)
		close(fd);
	return in;
}

void rkd_inode_ref(struct rkd_fs *fs, struct rkd_inode *in)
{
	if (in->virt != RKD_REAL || in == &fs->root)
		return;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	RK_ASSERT(in->nlookup > 0);
	in->nlookup++;
	rk_mutex_unlock(&fs->itab_lock);
}

void rkd_inode_unref(struct rkd_fs *fs, struct rkd_inode *in, uint64_t n)
{
	if (in->virt != RKD_REAL || in == &fs->root)
		return;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	/* the kernel never forgets more lookups than it was given */
	RK_ASSERT(n <= in->nlookup);
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
/* ---- open handles per user -----------------------------------------------------------------
 * Every open handle costs the daemon descriptors: a file's is shared by its
 * handles and is its inode's, a directory's DIR is one more.  A non-root user
 * may hold fs->budget.per_user handles (a directory counts 2), EMFILE past it, and
 * all non-root users together fs->budget.nonroot_max, ENFILE past it: the rest of
 * the descriptor limit is root's reserve (and the walker's, the journal's,
 * and the inodes the kernel knows).  Root is not counted.  fs->budget.lock
 * guards the per-user counts, the non-root total and the two bounds; rank RK_RANK_UCOUNT (96,
 * a leaf: nothing is taken under it). */
struct rkd_ucount {
	uid_t uid;
	size_t n;
	UT_hash_handle hh;
};

void rkd_budget_init(struct rkd_budget *b)
{
	pthread_mutex_init(&b->lock, NULL);
	b->users = NULL;
	b->nonroot = 0;
	b->nonroot_max = b->per_user = SIZE_MAX;
}

void rkd_budget_destroy(struct rkd_budget *b)
{
	struct rkd_ucount *u, *tmp;
	HASH_ITER(hh, b->users, u, tmp) {
		HASH_DEL(b->users, u);
		free(u);
	}
	pthread_mutex_destroy(&b->lock);
}

/* Charge uid for a handle of cost n: 0, or -EMFILE / -ENFILE / -ENOMEM. */
int rkd_handle_charge(struct rkd_fs *fs, uid_t uid, size_t n)
{
	struct rkd_budget *b = &fs->budget;
	struct rkd_ucount *u;
	int ret = 0;
	if (uid == 0)
		return 0;
	rk_mutex_lock(&fs->budget.lock, RK_RANK_UCOUNT);
	HASH_FIND(hh, b->users, &uid, sizeof(uid), u);
	if (u && u->n + n > fs->budget.per_user) {
		ret = -EMFILE;
		goto out;
	}
	if (fs->budget.nonroot + n > fs->budget.nonroot_max) {
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
		HASH_ADD(hh, b->users, uid, sizeof(u->uid), u);
	}
	u->n += n;
	fs->budget.nonroot += n;
out:
	rk_mutex_unlock(&fs->budget.lock);
	if (ret == -EMFILE || ret == -ENFILE)
		rk_dbg("uid %u: open refused (%s): %zu handles per user, %zu for all users but root", (unsigned)uid,
		       strerror(-ret), fs->budget.per_user, fs->budget.nonroot_max);
	return ret;
}

void rkd_handle_refund(struct rkd_fs *fs, uid_t uid, size_t n)
{
	struct rkd_budget *b = &fs->budget;
	struct rkd_ucount *u;
	if (uid == 0 || uid == RKD_UNCHARGED)
		return;
	rk_mutex_lock(&fs->budget.lock, RK_RANK_UCOUNT);
	HASH_FIND(hh, b->users, &uid, sizeof(uid), u);
	if (u) {
		u->n -= RK_MIN(n, u->n);
		fs->budget.nonroot -= RK_MIN(n, fs->budget.nonroot);
		if (u->n == 0) {
			HASH_DEL(b->users, u);
			free(u);
		}
	}
	rk_mutex_unlock(&fs->budget.lock);
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
			                          : rkd_itab_find(fs, in->pdev, in->pino);
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
	rk_mutex_lock(&fs->budget.lock, RK_RANK_UCOUNT);
	fs->budget.per_user = fs->o.max_open_per_user ? fs->o.max_open_per_user : RK_MAX(limit / 4, (size_t)16);
	fs->budget.nonroot_max = limit / 2;
	rk_mutex_unlock(&fs->budget.lock);
	pthread_cond_init(&fs->reclaim_cond, NULL);
	if (pthread_create(&fs->reclaim_thr, NULL, reclaimer, fs) != 0)
		return -EAGAIN;
	fs->reclaim_started = true;
	rk_info("fd budget: limit %zu; known inodes reclaimed above %zu; open files and directories: %zu per "
	        "non-root user, %zu for all non-root users, the rest kept for root",
	        limit, fs->inode_high, fs->budget.per_user, fs->budget.nonroot_max);
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
	return rkd_inode_lookup(fs, dirfd, name, NULL, &st, out);
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

void rkd_inode_put(struct rkd_fs *fs, struct rkd_inode *in) { rkd_inode_unref(fs, in, 1); }

/* The inode of dirfd/name (nlookup+1) and its stat.  Under ns_lock (shared):
 * a whole-file rekey cannot swap the file between the open and the inode
 * table lookup. */
int rkd_inode_lookup(struct rkd_fs *fs, int dirfd, const char *name, const struct rkd_inode *parent,
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
		*out = rkd_inode_get_at(fs, fd, st, parent, name);
		ret = *out ? 0 : -ENOMEM;
	}
	rk_rw_unlock(&fs->ns_lock);
	return ret;
}

/* ---- background work -------------------------------------------------------------------------- */
void rkd_fg_yield(struct rkd_fs *fs)
{
	for (int i = 0; i < 4; i++) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t now = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
		if (atomic_load(&fs->st.inflight) == 0 && now - atomic_load(&fs->st.last_fg_ns) > 2000000ULL)
			break;
		struct timespec half = {0, 500000};
		nanosleep(&half, NULL);
	}
}
