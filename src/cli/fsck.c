/* rekeyctl fsck - the coverage report with an fsck(8)-style exit status.
 * Offline it scans the data directory itself (journal replayed first,
 * refused while a daemon holds it); given a mount it asks the daemon, whose
 * counts include writes not yet on disk.  Both render with the library's
 * rk_fsck_render, so the output is the same.  Exit codes: rekeyfs/fsck.h. */
#include "config.h"

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/coverage.h"
#include "rekeyfs/fsck.h"

static const char usage_line[] =
	"rekeyctl fsck [-d KEYDIR] [--deep] [--json] [--key NAME] [--table T] [--verbose] DATADIR_OR_MOUNT...";

/* a typo in --key would answer "may be released": the key must be one the
 * data directory registered or one of the key directory's files */
static bool key_file_exists(const char *keydir, const char *name)
{
	char p[PATH_MAX];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", keydir, name);
	return stat(p, &st) == 0;
}

/* several targets: JSON reports as JSON Lines (one compact object each) */
static bool many;

/* the report; JSON gets the fleet fields (host, data_dir, mount, time) */
static int put_report(const char *body, size_t len, const struct rk_fsck_opts *fo, const char *data_dir,
                      const char *mount)
{
	if (fo->json && strchr(body, '{'))
		return rkc_fleet_print(stdout, body, data_dir, mount, many);
	if (fwrite(body, 1, len, stdout) != len || fflush(stdout) != 0)
		return -errno;
	return 0;
}

/* ---- offline ------------------------------------------------------------------------------- */
static void offline_progress(uint64_t done, uint64_t total, void *arg)
{
	struct rkc_progress *p = arg;
	p->total = total;
	if (done > p->done)
		rkc_progress_add(p, done - p->done);
}

static int fsck_offline(const char *target, const char *keydir, struct rk_fsck_opts *fo)
{
	char *root = NULL, *rel = NULL, *report = NULL;
	char tbuf[RK_TABLE_PATH_MAX], err[2048];
	struct rk_keyring *kr = NULL;
	struct rk_datadir *dd = NULL;
	struct rk_cov *cov = NULL;
	struct rkc_progress prog;
	size_t rlen = 0;
	int code = RK_FSCK_EXIT_OPERATIONAL;
	int ret = rk_datadir_find(target, &root, &rel);
	if (ret < 0) {
		rk_err("%s is not inside a rekeyfs data directory or mount (no .rekeyfs found in it or above it): %s", target,
		       rk_strerror(ret));
		goto out;
	}
	if (strcmp(rel, "/") != 0) {
		/* DATADIR/ks/t1 stands for --table /ks/t1 */
		if (fo->table) {
			rk_err("%s is inside the data directory %s: give the data directory with --table, or the table's "
			       "directory alone", target, root);
			code = RK_FSCK_EXIT_USAGE;
			goto out;
		}
		fo->table = rel;
	}
	ret = rk_keyring_new(keydir, &kr);
	if (ret < 0)
		goto out;
	ret = rkc_open_offline(root, RK_DD_SHARED, kr, &dd);
	if (ret < 0) {
		if (ret != -EBUSY && ret != -ENOTDIR) /* those are explained already */
			rk_err("fsck of %s: cannot open the data directory: %s", root, rk_strerror(ret));
		goto out;
	}
	if (rk_fsck_check_opts(dd, fo, tbuf, sizeof(tbuf), err, sizeof(err)) < 0) {
		rk_err("%s", err);
		code = RK_FSCK_EXIT_USAGE;
		goto out;
	}
	if (fo->key && !rk_registry_find(dd, fo->key) && !key_file_exists(keydir, fo->key)) {
		rk_err("--key %s: no key of that name in the key registry of %s nor in the key directory %s", fo->key, root,
		       keydir);
		code = RK_FSCK_EXIT_USAGE;
		goto out;
	}
	struct rk_cov_opts co;
	rk_fsck_scan_opts(fo, kr, &co);
	if (fo->deep) {
		rkc_progress_init(&prog, "fsck --deep", 0);
		co.progress = offline_progress;
		co.progress_arg = &prog;
	}
	/* every unreadable header, chunk and key ends up in the report: keep
	 * the format layer's per-chunk log lines off the terminal */
	int lvl = rk_log_get_level();
	rk_log_set_level(RK_LOG_ERR - 1);
	ret = rk_coverage_scan(dd, &co, &cov);
	rk_log_set_level(lvl);
	if (fo->deep)
		rkc_progress_done(&prog);
	if (ret < 0) {
		rk_err("fsck of %s failed: the scan stopped: %s", root, rk_strerror(ret));
		goto out;
	}
	ret = rk_fsck_render(cov, fo, &report, &rlen);
	if (ret < 0) {
		rk_err("fsck of %s: cannot build the report: %s", root, rk_strerror(ret));
		goto out;
	}
	if (put_report(report, rlen, fo, root, NULL) < 0) {
		rk_err("fsck of %s: cannot write the report: %s", root, strerror(errno));
		goto out;
	}
	code = rk_fsck_exit_code(cov);
out:
	free(report);
	rk_coverage_free(cov);
	rk_datadir_close(dd);
	rk_keyring_free(kr);
	free(root);
	free(rel);
	return code;
}

/* ---- online ------------------------------------------------------------------------------- */
struct online_call {
	const char *root, *cmd;
	char *reply;
	int ret;
	atomic_bool done;
};

static void *online_thread(void *arg)
{
	struct online_call *oc = arg;
	oc->ret = rkc_control(oc->root, oc->cmd, &oc->reply);
	atomic_store(&oc->done, true);
	return NULL;
}

/* A deep check inside the daemon: its progress is polled through a second
 * control handle ("fsck-progress") while the first waits for the report. */
static void online_with_progress(struct online_call *oc)
{
	pthread_t thr;
	struct rkc_progress prog;
	if (pthread_create(&thr, NULL, online_thread, oc) != 0) {
		online_thread(oc);
		return;
	}
	rkc_progress_init(&prog, "fsck --deep", 0);
	for (bool last = false; !last;) {
		last = atomic_load(&oc->done); /* one more poll after the end: the final counts */
		if (!last) {
			struct timespec ts = {0, 200 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		char *r = NULL, state[16];
		uint64_t done, total;
		int lvl = rk_log_get_level();
		rk_log_set_level(RK_LOG_ERR - 1);
		int pr = rkc_control(oc->root, "fsck-progress\n", &r);
		rk_log_set_level(lvl);
		if (pr == 0 && r &&
		    sscanf(r, "ok %15s done=%" SCNu64 " total=%" SCNu64, state, &done, &total) == 3 &&
		    (last || strcmp(state, "running") == 0)) {
			prog.total = total;
			if (done > prog.done)
				rkc_progress_add(&prog, done - prog.done);
		}
		free(r);
	}
	pthread_join(thr, NULL);
	rkc_progress_done(&prog);
}

static int fsck_online(const char *target, struct rk_fsck_opts *fo)
{
	char *root = NULL, *rel = NULL;
	char cmd[RK_TABLE_PATH_MAX + 256];
	int code = RK_FSCK_EXIT_OPERATIONAL;
	struct online_call oc = {0};
	if (rkc_mount_find(target, &root, &rel) < 0) {
		rk_err("%s: cannot find its rekeyfs mount", target);
		goto out;
	}
	if (strcmp(rel, "/") != 0) {
		if (fo->table) {
			rk_err("%s is inside the mount %s: give the mount point with --table, or the table's directory alone",
			       target, root);
			code = RK_FSCK_EXIT_USAGE;
			goto out;
		}
		fo->table = rel;
	}
	if (fo->key) {
		struct rkc_json *st = NULL;
		bool known = false;
		if (rkc_status_tree(root, &st) == 0) {
			const struct rkc_json *kl = rkc_json_get(st, "keys");
			for (size_t i = 0; kl && kl->type == RKC_J_ARR && i < kl->n && !known; i++) {
				const char *n = rkc_json_str(kl->kids[i], "name");
				known = n && strcmp(n, fo->key) == 0;
			}
			const char *kd = rkc_json_str(st, "keydir");
			known = known || !kd || key_file_exists(kd, fo->key);
			if (!known)
				rk_err("--key %s: no key of that name in the key registry of %s nor in the daemon's key directory %s",
				       fo->key, root, kd);
		} else {
			known = true; /* the daemon's own answer follows */
		}
		rkc_json_free(st);
		if (!known) {
			code = RK_FSCK_EXIT_USAGE;
			goto out;
		}
	}
	if (fo->table && strpbrk(fo->table, " \t\n")) {
		rk_err("--table '%s': table paths with white space cannot be sent to the daemon", fo->table);
		code = RK_FSCK_EXIT_USAGE;
		goto out;
	}
	snprintf(cmd, sizeof(cmd), "fsck%s%s%s%s%s%s%s\n", fo->deep ? " --deep" : "", fo->json ? " --json" : "",
	         fo->verbose ? " --verbose" : "", fo->key ? " --key " : "", fo->key ? fo->key : "",
	         fo->table ? " --table " : "", fo->table ? fo->table : "");
	/* writes still in the kernel's writeback cache are sent to the daemon
	 * first.  Best effort: without a FUSE syncfs handler (libfuse 3.14 has none)
	 * the kernel does not wait for them to be processed.  A write that
	 * arrives later can only move chunks to a target key, so the report
	 * errs on the side of old keys. */
	int mfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (mfd < 0 || syncfs(mfd) < 0)
		rk_warn("%s: cannot sync the mount (%s): writes still cached by the kernel may not be counted", root,
		        strerror(errno));
	if (mfd >= 0)
		close(mfd);
	oc.root = root;
	oc.cmd = cmd;
	if (fo->deep && isatty(STDERR_FILENO))
		online_with_progress(&oc);
	else
		online_thread(&oc);
	char *reply = oc.reply;
	if (!reply) {
		rk_err("fsck through %s: no answer from the daemon: %s", root, rk_strerror(oc.ret));
		goto out;
	}
	int n = 0, e = -1;
	if (oc.ret == 0 && sscanf(reply, "ok exit=%d%n", &e, &n) == 1 && e >= 0) {
		const char *body = reply + n;
		if (*body == '\n')
			body++;
		size_t bl = strlen(body);
		char *dd = NULL;
		if (fo->json) {
			struct rkc_json *st = NULL;
			if (rkc_status_tree(root, &st) == 0 && rkc_json_str(st, "datadir"))
				dd = strdup(rkc_json_str(st, "datadir"));
			rkc_json_free(st);
		}
		int pr = put_report(body, bl, fo, dd, root);
		free(dd);
		if (pr < 0) {
			rk_err("fsck: cannot write the report: %s", strerror(errno));
			goto out;
		}
		code = e;
		goto out;
	}
	/* "error exit=N message" (N: 8 or 16), or another error reply */
	size_t rl = strlen(reply);
	while (rl && reply[rl - 1] == '\n')
		reply[--rl] = '\0';
	const char *msg = strncmp(reply, "error ", 6) == 0 ? reply + 6 : reply;
	if (sscanf(msg, "exit=%d%n", &e, &n) == 1 && (e == RK_FSCK_EXIT_USAGE || e == RK_FSCK_EXIT_OPERATIONAL)) {
		code = e;
		msg += n;
		while (*msg == ' ')
			msg++;
	}
	rk_err("fsck through %s: %s", root, msg);
out:
	free(oc.reply);
	free(root);
	free(rel);
	return code;
}

/* ---- the command --------------------------------------------------------------------------- */
int rkc_cmd_fsck(int argc, char **argv)
{
	static const struct option lo[] = {{"keydir", required_argument, NULL, 'd'},
	                                   {"deep", no_argument, NULL, 'D'},
	                                   {"json", no_argument, NULL, 'j'},
	                                   {"key", required_argument, NULL, 'k'},
	                                   {"table", required_argument, NULL, 't'},
	                                   {"verbose", no_argument, NULL, 'v'},
	                                   {"help", no_argument, NULL, 'h'},
	                                   {0, 0, 0, 0}};
	struct rk_fsck_opts fo = {0};
	const char *keydir = NULL;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":d:k:t:Djvh", lo, NULL)) != -1) {
		switch (c) {
		case 'd':
			keydir = optarg;
			break;
		case 'D':
			fo.deep = true;
			break;
		case 'j':
			fo.json = true;
			break;
		case 'k':
			fo.key = optarg;
			break;
		case 't':
			fo.table = optarg;
			break;
		case 'v':
			fo.verbose = true;
			break;
		case 'h':
			return rkc_help("fsck") == 0 ? 0 : RK_FSCK_EXIT_USAGE;
		default:
			rkc_opt_refused("fsck", c, argv, lo);
			return RK_FSCK_EXIT_USAGE;
		}
	}
	if (rkc_check_keydir("fsck", rk_keydir_resolve(keydir), keydir != NULL) < 0)
		return RK_FSCK_EXIT_USAGE;
	if (argc - optind < 1) {
		rk_err("usage: %s", usage_line);
		return RK_FSCK_EXIT_USAGE;
	}
	if (fo.key && rk_key_name_check(fo.key) < 0) {
		rk_err("--key %s: not a valid key name (1 to 63 of A-Z a-z 0-9 . _ -)", fo.key);
		return RK_FSCK_EXIT_USAGE;
	}
	if (fo.key && fo.table) {
		rk_err("--key answers for the whole data directory (a key is released everywhere at once); it cannot be "
		       "combined with --table");
		return RK_FSCK_EXIT_USAGE;
	}
	/* several targets (a node's mounts): one report each, in order, the
	 * exit status the OR of theirs */
	many = argc - optind > 1;
	const char *table = fo.table;
	int code = 0;
	for (int i = optind; i < argc; i++) {
		const char *target = argv[i];
		fo.table = table; /* a target inside a mount sets its own */
		if (many && !fo.json && i > optind)
			putchar('\n');
		if (rkc_is_mount(target)) {
			code |= fsck_online(target, &fo);
			continue;
		}
		/* the report names the key directory: absolute, as the daemon's */
		char *abs = realpath(rk_keydir_resolve(keydir), NULL);
		code |= fsck_offline(target, abs ? abs : rk_keydir_resolve(keydir), &fo);
		free(abs);
	}
	return code;
}
