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
#include "ioerr.h"
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
	FUSE_OPT_KEY("log=", 'l'),
	OPT("nonempty", nonempty, 1),
	FUSE_OPT_END,
};

static int nonopts;
static char *log_dest; /* -o log=DEST (ioerr.c) */

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
		/* bytes per second with units (rk_parse_rate); at most 1 TiB/s */
		ret = rk_parse_rate(v, &n);
		fs->o.walker_rate = n;
		fs->o.walker_rate_set = 1;
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
		        : key == 'r'             ? "use N, NK/NM/NG or NKiB/NMiB/NGiB (x1024), NKB/NMB/NGB (x1000), 0 or unlimited (bytes/s, at most 1TiB)"
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
	if (key == 'l') {
		free(log_dest);
		log_dest = strdup(arg + strlen("log="));
		return log_dest ? 0 : -1;
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
	       "    -o walker_rate=RATE    walker rate limit of rewritten chunks per second: 100M, 64KiB, 1GB, 0 = unlimited\n"
	       "                           (default 104857600; 0 = unlimited)\n"
	       "    -o rekey_on_mount      start a full sweep at mount\n"
	       "    -o lazy=on|off         rewrite chunks read under an old key (default on)\n"
	       "    -o whole_file=on|off   sweeps rekey closed files by writing a new copy and\n"
	       "                           renaming it into place (default on; off: in place,\n"
	       "                           through the journal, keeping inode numbers)\n"
	       "    -o read_ahead_kb=N     kernel read-ahead of the mount in KiB (default 4096;\n"
	       "                           0 leaves the kernel's 128)\n"
	       "    -o max_open_per_user=N open files and directories of one non-root user\n"
	       "                           (default: a quarter of the fd limit)\n"
	       "    -o log=FILE|stderr|syslog  where the log goes once mounted (default: syslog\n"
	       "                           when detached, stderr with -f)\n"
	       "    -o nonempty            mount over a non-empty directory other than DATADIR\n"
	       "                           (refused without it: the mount would hide its files)\n\n"
	       "FUSE options:\n",
	       prog, RK_DEFAULT_KEYDIR);
	fuse_cmdline_help();
	fuse_lowlevel_help();
}

static void opts_default(struct rkd_fs *fs)
{
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
}

/* Mount options of every rekeyfs mount. */
static void add_mount_args(struct rkd_fs *fs, struct fuse_args *args)
{
	/* the kernel checks permissions against the attributes we report: without
	 * it, allow_other would let every user open every file */
	fuse_opt_add_arg(args, "-odefault_permissions");
	char fsname[PATH_MAX + 32];
	snprintf(fsname, sizeof(fsname), "-ofsname=%s", fs->datadir_real);
	if (!strchr(fs->datadir_real, ','))
		fuse_opt_add_arg(args, fsname);
	/* always: rekeyctl talks only to mounts of type fuse.rekeyfs */
	fuse_opt_add_arg(args, "-osubtype=rekeyfs");
}

/* before anything is opened or initialised (startup.c) */
static int startup_checks(struct rkd_fs *fs, const char *mountpoint)
{
	char *dr = realpath(fs->datadir, NULL);
	int ret = 0;
	if (dr) {
		ret = rkd_check_not_served(dr);
		if (ret == 0)
			ret = rkd_check_mountpoint(dr, mountpoint, fs->o.nonempty);
	}
	free(dr);
	return ret;
}

static int run_loop(struct rkd_fs *fs, const struct fuse_cmdline_opts *copts, struct fuse_loop_config **lcfg)
{
	if (copts->singlethread)
		return fuse_session_loop(fs->se);
	*lcfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_clone_fd(*lcfg, (unsigned)copts->clone_fd);
	fuse_loop_cfg_set_max_threads(*lcfg, (unsigned)(fs->o.max_threads > 0 ? fs->o.max_threads : 8));
	fuse_loop_cfg_set_idle_threads(*lcfg, (unsigned)(fs->o.max_threads > 0 ? fs->o.max_threads : 8));
	return fuse_session_loop_mt(fs->se, *lcfg);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts copts = {0};
	struct fuse_loop_config *lcfg = NULL;
	struct fuse_lowlevel_ops ops;
	struct rkd_fs *fs = calloc(1, sizeof(*fs));
	int ret = 1;
	bool start_failed = false; /* journal, walker or reclaimer did not start after the mount */

	rk_harden_process();
	if (!fs)
		return 1;
	opts_default(fs);
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
	if (rkd_log_prepare(log_dest) < 0)
		return 2;
	if (startup_checks(fs, copts.mountpoint) < 0)
		goto out;
	if (rkd_fs_init(fs) < 0)
		goto out;

	add_mount_args(fs, &args);
	rkd_fs_ops(&ops);
	fs->se = fuse_session_new(&args, &ops, sizeof(ops), fs);
	if (!fs->se)
		goto out;
	if (fuse_set_signal_handlers(fs->se) != 0)
		goto out_session;
	{
		/* recorded before the mount (and again after the fork below): a
		 * rekeyctl that sees the mount also finds its mount point here */
		char *mp = realpath(copts.mountpoint, NULL);
		if (mp)
			(void)rk_datadir_lock_record(fs->dd, mp);
		free(mp);
	}
	if (fuse_session_mount(fs->se, copts.mountpoint) != 0)
		goto out_signals;
	fuse_daemonize(copts.foreground);
	rkd_log_start(copts.foreground);
	/* the keys were loaded before the fork of fuse_daemonize, and mlock()
	 * is not inherited: lock them in the process that holds them */
	int lret = rk_secure_relock();
	if (lret < 0)
		rk_warn("cannot lock key memory (%s): keys may be swapped out (raise RLIMIT_MEMLOCK)", strerror(-lret));
	/* threads start after the fork of fuse_daemonize */
	fs->mountpoint = realpath(copts.mountpoint, NULL);
	/* the lock names this process (after the fork) and the mount point:
	 * rekeyctl and a second rekeyfs say where the data directory is mounted */
	if (rk_datadir_lock_record(fs->dd, fs->mountpoint) < 0)
		rk_warn("%s: cannot record the mount point in %s/lock", fs->datadir, RK_STATE_DIR);
	if (rkd_fs_start(fs) < 0) {
		start_failed = true;
		goto out_unmount;
	}
	ret = run_loop(fs, &copts, &lcfg);
out_unmount:
	rkd_fs_stop(fs);
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
	if (rkd_fs_destroy(fs) < 0)
		ret = 1;
	free(copts.mountpoint);
	fuse_opt_free_args(&args);
	return ret ? 1 : 0;
}
