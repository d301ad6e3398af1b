/* rekeyfs daemon - the filesystem object: its setup (the data directory,
 * keys, policy, journal replay, the root and virtual inodes) and teardown,
 * the threads started after the mount, and the FUSE operations table
 * assembled from the operation families (names.c, data.c, dir.c, xattr.c). */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "encrypt.h"
#include "file.h"
#include "inode.h"
#include "ops.h"
#include "rekeyfs/common.h"

static int setup_virtual(struct rkd_fs *fs)
{
	struct rkd_inode *v[] = {&fs->vdir, &fs->vstatus, &fs->vcontrol, &fs->vmetrics};
	enum rkd_virt kinds[] = {RKD_VDIR, RKD_VSTATUS, RKD_VCONTROL, RKD_VMETRICS};
	for (int i = 0; i < 4; i++) {
		v[i]->virt = kinds[i];
		v[i]->fd = -1;
		v[i]->ino = (ino_t)(RK_VIRT_INO_STATEDIR + (unsigned)i);
		v[i]->type = i == 0 ? S_IFDIR : S_IFREG;
		v[i]->nlookup = 1;
		v[i]->hdr_kind = -1;
		pthread_mutex_init(&v[i]->lock, NULL);
		pthread_cond_init(&v[i]->closed, NULL);
	}
	return 0;
}

/* Open the data directory and its state; initialise it when key= is given
 * and it is not a data directory yet. */
static int open_datadir(struct rkd_fs *fs)
{
	struct stat sst;
	int ret;
	if (fs->o.key && fstatat(fs->rootfd, RK_STATE_DIR, &sst, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT)
		ret = -ENOTDIR; /* not a data directory yet: key= initialises it below */
	else
		ret = rk_datadir_openat(fs->rootfd, fs->datadir_real, RK_DD_EXCLUSIVE, &fs->dd);
	if (ret == -ENOTDIR && fs->o.key) {
		struct rk_key *key;
		ret = rk_key_load(rk_keyring_dir(fs->kr), fs->o.key, &key);
		if (ret < 0) {
			rk_err("cannot initialise %s: key '%s' cannot be loaded from %s: %s", fs->datadir, fs->o.key,
			       rk_keyring_dir(fs->kr), rk_strerror(ret));
			return ret;
		}
		ret = rk_datadir_init(fs->datadir_real, key, RK_CHUNK_DEFAULT, RK_COMP_SNAPPY);
		rk_key_free(key);
		if (ret < 0)
			return ret;
		rk_info("initialised %s as a rekeyfs data directory under key %s", fs->datadir, fs->o.key);
		rkd_report_plain(fs->rootfd, fs->datadir);
		ret = rk_datadir_openat(fs->rootfd, fs->datadir_real, RK_DD_EXCLUSIVE, &fs->dd);
	}
	if (ret < 0)
		return ret;
	rk_registry_apply_released(fs->dd, fs->kr);
	/* the key directory must still hold the keys the registry recorded */
	ret = rk_registry_verify(fs->dd, fs->kr);
	if (ret < 0) {
		rk_err("refusing to mount %s: %s", fs->datadir,
		       ret == -EKEYREJECTED ? "a key file does not match the data directory's key registry (see above)"
		                            : "a key file of the registry cannot be used (see above)");
		return ret;
	}
	/* a crash may have left chunk writes in the journal: redo them before
	 * anything reads the data */
	ret = rk_journal_replay(fs->dd, fs->kr, NULL);
	if (ret < 0) {
		rk_err("refusing to mount %s: the journal cannot be replayed: %s", fs->datadir, rk_strerror(ret));
		return ret;
	}
	for (size_t i = 0; i < fs->dd->ntables; i++) {
		struct rk_key *k;
		ret = rk_keyring_get(fs->kr, fs->dd->tables[i].key, &k);
		if (ret < 0) {
			rk_err("refusing to mount %s: table %s's target key '%s' cannot be used: %s (key directory %s)",
			       fs->datadir, fs->dd->tables[i].path, fs->dd->tables[i].key, rk_strerror(ret),
			       rk_keyring_dir(fs->kr));
			return ret;
		}
	}
	return 0;
}

/* The data directory and the key directory, opened before the mount. */
static int open_dirs(struct rkd_fs *fs)
{
	char *keydir_real = NULL;
	int ret;
	fs->datadir_real = realpath(fs->datadir, NULL);
	if (!fs->datadir_real) {
		ret = -errno;
		rk_err("data directory %s: %s", fs->datadir, strerror(-ret));
		goto out;
	}
	fs->datadir_len = strlen(fs->datadir_real);
	if (fs->datadir_len == 1)
		fs->datadir_len = 0; /* "/" */
	/* opened before the mount: DATADIR may be covered by it */
	fs->rootfd = open(fs->datadir_real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fs->rootfd < 0) {
		ret = -errno;
		rk_err("cannot open data directory %s: %s", fs->datadir, strerror(-ret));
		goto out;
	}
	/* absolute: the daemon changes to / when it detaches */
	keydir_real = realpath(rk_keydir_resolve(fs->o.keydir), NULL);
	if (!keydir_real) {
		ret = -errno;
		rk_err("key directory %s: %s", rk_keydir_resolve(fs->o.keydir), strerror(-ret));
		goto out;
	}
	ret = rk_keyring_new(keydir_real, &fs->kr);
	if (ret == 0)
		ret = open_datadir(fs);
out:
	free(keydir_real);
	return ret;
}

static void init_locks(struct rkd_fs *fs)
{
	pthread_mutex_init(&fs->itab_lock, NULL);
	{
		/* writer-preferring: a rekey's short rename is not starved by lookups
		 * (no path takes ns_lock recursively) */
		pthread_rwlockattr_t a;
		pthread_rwlockattr_init(&a);
		pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&fs->ns_lock, &a);
		pthread_rwlockattr_destroy(&a);
	}
	pthread_mutex_init(&fs->dirty_lock, NULL);
	pthread_mutex_init(&fs->szlock, NULL);
	pthread_mutex_init(&fs->dirs_lock, NULL);
	rkd_budget_init(&fs->budget);
	pthread_rwlock_init(&fs->policy_lock, NULL);
	atomic_store(&fs->policy_gen, 1);
}

static int init_root(struct rkd_fs *fs)
{
	struct stat rst;
	int ret = 0;
	fs->root.fd = open(fs->datadir_real, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fs->root.fd < 0) {
		ret = -errno;
		rk_err("cannot open data directory %s: %s", fs->datadir, strerror(-ret));
		goto out;
	}
	if (fstat(fs->root.fd, &rst) < 0) {
		ret = -errno;
		goto out;
	}
	fs->root.dev = rst.st_dev;
	fs->root.ino = rst.st_ino;
	fs->root.type = S_IFDIR;
	fs->root.nlookup = 2;
	fs->root.hdr_kind = -1;
	pthread_mutex_init(&fs->root.lock, NULL);
	pthread_cond_init(&fs->root.closed, NULL);
	setup_virtual(fs);
out:
	return ret;
}

int rkd_fs_init(struct rkd_fs *fs)
{
	init_locks(fs);
	int ret = open_dirs(fs);
	if (ret == 0) {
		fs->started = time(NULL);
		ret = init_root(fs);
	}
	return ret;
}

int rkd_fs_start(struct rkd_fs *fs)
{
	int ret = 0;
	/* the fd budget before the walker: rkd_reclaim_start sets the bounds
	 * that every inode lookup reads (the walker's first ones included) */
	if (rk_journal_open(fs->dd, fs->kr, NULL, &fs->j) < 0 || rkd_reclaim_start(fs) < 0 ||
	    (fs->o.walker && rkd_walker_init(fs) < 0) || rkd_encrypt_init(fs) < 0) {
		rk_err("%s: cannot start the journal or the walker; unmounting", fs->datadir);
		ret = -EAGAIN;
	} else {
		rkd_readahead_start(fs);
	}
	return ret;
}

void rkd_fs_stop(struct rkd_fs *fs)
{
	rkd_readahead_stop(fs);
	rkd_reclaim_stop(fs);
	rkd_encrypt_shutdown(fs);
	rkd_walker_shutdown(fs);
}

/* At exit: forget every inode the kernel still had (it has unmounted). */
static void inodes_free(struct rkd_fs *fs)
{
	struct rkd_inode *in, *tmp;
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	HASH_ITER(hh, fs->inodes, in, tmp)
	{
		HASH_DELETE(hh, fs->inodes, in);
		if (in->of)
			rkd_file_free(in->of);
		close(in->fd);
		free(in->name);
		free(in->wrel);
		pthread_mutex_destroy(&in->lock);
		pthread_cond_destroy(&in->closed);
		free(in);
	}
	rk_mutex_unlock(&fs->itab_lock);
}

int rkd_fs_destroy(struct rkd_fs *fs)
{
	int ret = 0;
	if (fs->j && rk_journal_close(fs->j) < 0) {
		rk_err("%s: the journal could not be emptied at unmount; it is replayed at the next mount",
		       fs->datadir);
		ret = -EIO;
	} else if (fs->j) {
		rkd_clean_dirty_headers(fs);
	}
	free(fs->dirty);
	rkd_metrics_free();
	rkd_dirs_free(fs);
	inodes_free(fs);
	rkd_budget_destroy(&fs->budget);
	rkd_size_cache_free(fs);
	if (fs->root.fd >= 0)
		close(fs->root.fd);
	rk_crypto_thread_cleanup();
	rk_datadir_close(fs->dd);
	rk_keyring_free(fs->kr);
	if (fs->rootfd >= 0)
		close(fs->rootfd);
	free(fs->datadir_real);
	free(fs->mountpoint);
	free(fs->datadir);
	free(fs->o.keydir);
	free(fs->o.key);
	free(fs);
	return ret;
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

void rkd_fs_ops(struct fuse_lowlevel_ops *ops)
{
	memset(ops, 0, sizeof(*ops));
	ops->init = op_init;
	ops->destroy = op_destroy;
	rkd_names_ops(ops);
	rkd_data_ops(ops);
	rkd_dir_ops(ops);
	rkd_xattr_ops(ops);
}
