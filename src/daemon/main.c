/* rekeyfs - mount the plaintext view of a rekeyfs data directory.
 *
 *   rekeyfs [-f] [-d] [-o keydir=DIR,key=NAME,...] DATADIR MOUNTPOINT
 *
 * MOUNTPOINT may be DATADIR itself: the data directory is opened before the
 * mount covers it. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "rekeyfs/common.h"

#define OPT(t, f, v) {t, offsetof(struct rkd_fs, o.f), v}
static const struct fuse_opt rkd_optspec[] = {
	OPT("keydir=%s", keydir, 0),
	OPT("key=%s", key, 0),
	/* numbers are parsed strictly in opt_proc (fuse_opt's sscanf takes "-1"
	 * for an unsigned and wraps it) */
	FUSE_OPT_KEY("entry_timeout=", 'e'),
	FUSE_OPT_KEY("attr_timeout=", 'a'),
	OPT("writeback", writeback, 1),
	OPT("no_writeback", writeback, 0),
	FUSE_OPT_KEY("max_threads=", 't'),
	OPT("walker=on", walker, 1),
	OPT("walker=off", walker, 0),
	FUSE_OPT_KEY("walker_rate=", 'r'),
	OPT("rekey_on_mount", rekey_on_mount, 1),
	OPT("lazy=on", lazy, 1),
	OPT("lazy=off", lazy, 0),
	OPT("whole_file=on", whole_file, 1),
	OPT("whole_file=off", whole_file, 0),
	FUSE_OPT_KEY("read_ahead_kb=", 'k'),
	FUSE_OPT_KEY("max_open_per_user=", 'u'),
	FUSE_OPT_END,
};

static int nonopts;

/* a number of seconds: plain decimal with an optional fraction, 0 to a year */
static int parse_secs(const char *v, double *out)
{
	char *end;
	if (!(*v >= '0' && *v <= '9'))
		return -EINVAL;
	errno = 0;
	double d = strtod(v, &end);
	if (*end || errno || !(d >= 0.0 && d <= 31536000.0))
		return -EINVAL;
	*out = d;
	return 0;
}

static int opt_number(struct rkd_fs *fs, int key, const char *arg)
{
	const char *eq = strchr(arg, '=');
	const char *v = eq ? eq + 1 : "";
	uint64_t n = 0;
	int ret;
	switch (key) {
	case 'e':
		ret = parse_secs(v, &fs->o.entry_timeout);
		break;
	case 'a':
		ret = parse_secs(v, &fs->o.attr_timeout);
		break;
	case 't':
		ret = rk_parse_u64(v, 1024, &n);
		if (ret == 0 && n == 0)
			ret = -ERANGE;
		fs->o.max_threads = (int)n;
		break;
	case 'r':
		/* bytes per second; at most 1 TiB/s (no overflow in the limiter) */
		ret = rk_parse_u64(v, 1ULL << 40, &n);
		fs->o.walker_rate = n;
		break;
	case 'u':
		/* 0: a quarter of the descriptor limit */
		ret = rk_parse_u64(v, 1U << 24, &n);
		fs->o.max_open_per_user = (unsigned)n;
		break;
	default: /* 'k' */
		ret = rk_parse_u64(v, 1U << 20, &n); /* 1 GiB */
		fs->o.read_ahead_kb = (unsigned)n;
		break;
	}
	if (ret < 0)
		fprintf(stderr,
		        "rekeyfs: option %s: %s\n", arg,
		        key == 'e' || key == 'a' ? "use a number of seconds from 0 to 31536000"
		        : key == 't'             ? "use a plain decimal number from 1 to 1024"
		        : key == 'r'             ? "use a plain decimal number of bytes per second up to 1099511627776"
		        : key == 'u'             ? "use a plain decimal number of open files up to 16777216 (0: automatic)"
		                                 : "use a plain decimal number of KiB up to 1048576");
	return ret < 0 ? -1 : 0;
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct rkd_fs *fs = data;
	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT && nonopts++ == 0) {
		fs->datadir = strdup(arg);
		return 0; /* consumed: the next one is the mount point */
	}
	if (key == 'e' || key == 'a' || key == 't' || key == 'r' || key == 'k' || key == 'u')
		return opt_number(fs, key, arg);
	return 1;
}

static void usage(const char *prog)
{
	printf("usage: %s [options] DATADIR MOUNTPOINT\n\n"
	       "Mount the plaintext view of the rekeyfs data directory DATADIR on MOUNTPOINT\n"
	       "(which may be DATADIR itself).\n\n"
	       "rekeyfs options:\n"
	       "    -o keydir=DIR          key directory (default $REKEYFS_KEYDIR, else %s)\n"
	       "    -o key=NAME            target key of the root table when DATADIR is not yet\n"
	       "                           a rekeyfs data directory (it is initialised)\n"
	       "    -o writeback|no_writeback  kernel writeback cache (default on)\n"
	       "    -o entry_timeout=SECS  name lookup cache (default 1.0)\n"
	       "    -o attr_timeout=SECS   attribute cache (default 1.0)\n"
	       "    -o max_threads=N       worker threads (default 8)\n"
	       "    -o walker=on|off       background walker (default on; sweeps run when asked)\n"
	       "    -o walker_rate=BYTES   walker rate limit in bytes/s of rewritten chunks\n"
	       "                           (default 104857600; 0 = unlimited)\n"
	       "    -o rekey_on_mount      start a full sweep at mount\n"
	       "    -o lazy=on|off         rewrite chunks read under an old key (default on)\n"
	       "    -o whole_file=on|off   sweeps rekey closed files by writing a new copy and\n"
	       "                           renaming it into place (default on; off: in place,\n"
	       "                           through the journal, keeping inode numbers)\n"
	       "    -o read_ahead_kb=N     kernel read-ahead of the mount in KiB (default 4096;\n"
	       "                           0 leaves the kernel's 128)\n"
	       "    -o max_open_per_user=N open files and directories of one non-root user\n"
	       "                           (default: a quarter of the fd limit)\n\n"
	       "FUSE options:\n",
	       prog, RK_DEFAULT_KEYDIR);
	fuse_cmdline_help();
	fuse_lowlevel_help();
}

static int setup_virtual(struct rkd_fs *fs)
{
	struct rkd_inode *v[] = {&fs->vdir, &fs->vstatus, &fs->vcontrol};
	enum rkd_virt kinds[] = {RKD_VDIR, RKD_VSTATUS, RKD_VCONTROL};
	for (int i = 0; i < 3; i++) {
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

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts copts = {0};
	struct fuse_loop_config *lcfg = NULL;
	struct rkd_fs *fs = calloc(1, sizeof(*fs));
	int ret = 1;
	bool start_failed = false; /* journal, walker or reclaimer did not start after the mount */

	rk_harden_process();
	if (!fs)
		return 1;
	fs->rootfd = -1;
	fs->root.fd = -1;
	fs->o.entry_timeout = 1.0;
	fs->o.attr_timeout = 1.0;
	fs->o.writeback = 1;
	fs->o.max_threads = 8;
	fs->o.walker = 1;
	fs->o.walker_rate = 100ULL << 20;
	fs->o.lazy = 1;
	fs->o.whole_file = 1;
	fs->o.read_ahead_kb = 4096;
	if (fuse_opt_parse(&args, fs, rkd_optspec, opt_proc) < 0)
		return 2;
	if (fuse_parse_cmdline(&args, &copts) != 0)
		return 2;
	if (copts.show_help) {
		usage(argv[0]);
		return 0;
	}
	if (copts.show_version) {
		printf("rekeyfs %s (chunk-file format %d)\n", PACKAGE_VERSION, RK_FORMAT_VERSION);
		fuse_lowlevel_version();
		return 0;
	}
	if (!fs->datadir || !copts.mountpoint) {
		fprintf(stderr, "usage: %s [options] DATADIR MOUNTPOINT (see %s --help)\n", argv[0], argv[0]);
		return 2;
	}
	if (copts.debug)
		rk_log_set_level(RK_LOG_DEBUG);
	fs->datadir_real = realpath(fs->datadir, NULL);
	if (!fs->datadir_real) {
		rk_err("data directory %s: %s", fs->datadir, strerror(errno));
		goto out;
	}
	fs->datadir_len = strlen(fs->datadir_real);
	if (fs->datadir_len == 1)
		fs->datadir_len = 0; /* "/" */
	/* opened before the mount: DATADIR may be covered by it */
	fs->rootfd = open(fs->datadir_real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fs->rootfd < 0) {
		rk_err("cannot open data directory %s: %s", fs->datadir, strerror(errno));
		goto out;
	}
	/* absolute: the daemon changes to / when it detaches */
	char *keydir_real = realpath(rk_keydir_resolve(fs->o.keydir), NULL);
	if (!keydir_real) {
		rk_err("key directory %s: %s", rk_keydir_resolve(fs->o.keydir), strerror(errno));
		goto out;
	}
	int kret = rk_keyring_new(keydir_real, &fs->kr);
	free(keydir_real);
	if (kret < 0)
		goto out;
	if (open_datadir(fs) < 0)
		goto out;

	fs->started = time(NULL);
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
	pthread_rwlock_init(&fs->policy_lock, NULL);
	atomic_store(&fs->policy_gen, 1);
	fs->root.fd = open(fs->datadir_real, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fs->root.fd < 0) {
		rk_err("cannot open data directory %s: %s", fs->datadir, strerror(errno));
		goto out;
	}
	struct stat rst;
	if (fstat(fs->root.fd, &rst) < 0)
		goto out;
	fs->root.dev = rst.st_dev;
	fs->root.ino = rst.st_ino;
	fs->root.type = S_IFDIR;
	fs->root.nlookup = 2;
	fs->root.hdr_kind = -1;
	pthread_mutex_init(&fs->root.lock, NULL);
	pthread_cond_init(&fs->root.closed, NULL);
	setup_virtual(fs);

	/* the kernel checks permissions against the attributes we report: without
	 * it, allow_other would let every user open every file */
	fuse_opt_add_arg(&args, "-odefault_permissions");
	char fsname[PATH_MAX + 32];
	snprintf(fsname, sizeof(fsname), "-ofsname=%s", fs->datadir_real);
	if (!strchr(fs->datadir_real, ','))
		fuse_opt_add_arg(&args, fsname);
	/* always: rekeyctl talks only to mounts of type fuse.rekeyfs */
	fuse_opt_add_arg(&args, "-osubtype=rekeyfs");

	fs->se = fuse_session_new(&args, &rkd_ops, sizeof(rkd_ops), fs);
	if (!fs->se)
		goto out;
	if (fuse_set_signal_handlers(fs->se) != 0)
		goto out_session;
	if (fuse_session_mount(fs->se, copts.mountpoint) != 0)
		goto out_signals;
	fuse_daemonize(copts.foreground);
	if (!copts.foreground)
		rk_log_to_syslog("rekeyfs");
	/* the keys were loaded before the fork of fuse_daemonize, and mlock()
	 * is not inherited: lock them in the process that holds them */
	int lret = rk_secure_relock();
	if (lret < 0)
		rk_warn("cannot lock key memory (%s): keys may be swapped out (raise RLIMIT_MEMLOCK)", strerror(-lret));
	/* threads start after the fork of fuse_daemonize */
	fs->mountpoint = realpath(copts.mountpoint, NULL);
	if (rk_journal_open(fs->dd, fs->kr, NULL, &fs->j) < 0 || (fs->o.walker && rkd_walker_init(fs) < 0) ||
	    rkd_reclaim_start(fs) < 0) {
		rk_err("%s: cannot start the journal or the walker; unmounting", fs->datadir);
		start_failed = true;
		goto out_unmount;
	}
	rkd_readahead_start(fs);
	if (copts.singlethread) {
		ret = fuse_session_loop(fs->se);
	} else {
		lcfg = fuse_loop_cfg_create();
		fuse_loop_cfg_set_clone_fd(lcfg, (unsigned)copts.clone_fd);
		fuse_loop_cfg_set_max_threads(lcfg, (unsigned)(fs->o.max_threads > 0 ? fs->o.max_threads : 8));
		fuse_loop_cfg_set_idle_threads(lcfg, (unsigned)(fs->o.max_threads > 0 ? fs->o.max_threads : 8));
		ret = fuse_session_loop_mt(fs->se, lcfg);
	}
out_unmount:
	rkd_readahead_stop(fs);
	rkd_reclaim_stop(fs);
	rkd_walker_shutdown(fs);
	fuse_session_unmount(fs->se);
	/* the loop returns the signal number when SIGTERM/SIGINT ended it: a clean stop */
	if (ret > 0)
		ret = 0;
	/* a start that failed after the mount is a failure, whatever the loop said */
	if (start_failed)
		ret = 1;
out_signals:
	fuse_remove_signal_handlers(fs->se);
out_session:
	fuse_session_destroy(fs->se);
out:
	if (lcfg)
		fuse_loop_cfg_destroy(lcfg);
	if (fs->j && rk_journal_close(fs->j) < 0) {
		rk_err("%s: the journal could not be emptied at unmount; it is replayed at the next mount",
		       fs->datadir);
		ret = 1;
	} else if (fs->j) {
		rkd_clean_dirty_headers(fs);
	}
	free(fs->dirty);
	rkd_inodes_free(fs);
	rkd_size_cache_free();
	if (fs->root.fd >= 0)
		close(fs->root.fd);
	rk_crypto_thread_cleanup();
	rk_datadir_close(fs->dd);
	rk_keyring_free(fs->kr);
	if (fs->rootfd >= 0)
		close(fs->rootfd);
	free(copts.mountpoint);
	fuse_opt_free_args(&args);
	free(fs->datadir_real);
	free(fs->mountpoint);
	free(fs->datadir);
	free(fs->o.keydir);
	free(fs->o.key);
	free(fs);
	return ret ? 1 : 0;
}
