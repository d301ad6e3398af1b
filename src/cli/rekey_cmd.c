/* rekeyctl rekey and release-key: online through the daemon's control file,
 * offline through the library's rekey engine (rekeyfs/rekey.h); this file
 * parses the arguments and prints. */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/rekey.h"

/* ---- offline rekey ---------------------------------------------------------------------------- */
struct oprog {
	struct rkc_progress prog;
	bool quiet, json;
	time_t last_json;
};

static void op_resumed(void *arg, const char *position)
{
	struct oprog *p = arg;
	if (!p->quiet)
		fprintf(p->json ? stderr : stdout, "resuming an interrupted sweep after %s\n",
		        position[0] ? rk_esc(position) : "the start");
}

static void op_start(void *arg, uint64_t total)
{
	struct oprog *p = arg;
	rkc_progress_init(&p->prog, "rekey", total);
	if (p->quiet || p->json)
		p->prog.tty = false;
}

/* the JSON line of the offline engine: bytes only (it reports no chunk
 * counts nor file names), null for what it does not know */
static void op_json(struct oprog *p, bool final, const char *result, const char *reason, bool has_rem, uint64_t rem)
{
	double el = rkc_since(&p->prog.t0), rate = el > 0 ? (double)p->prog.done / el : 0;
	double done = (double)p->prog.done, total = (double)p->prog.total;
	double pct = total > 0 ? 100.0 * done / total : final ? 100.0 : 0;
	if (pct > 100)
		pct = 100;
	if (!final && pct > 99.9)
		pct = 99.9;
	struct rkc_pjson j = {.state = final ? (result && strcmp(result, "complete") == 0 ? "finished" : "incomplete")
	                                     : "running",
	                      .bytes_done = done, .bytes_total = total, .percent = pct, .rate = rate,
	                      .has_eta = !final && rate > 0 && total >= done, .eta = rate > 0 ? (total - done) / rate : 0,
	                      .final = final, .result = result, .reason = reason, .has_remaining = has_rem,
	                      .remaining = (double)rem};
	rkc_progress_json(&j);
	p->last_json = time(NULL);
}

static void op_add(void *arg, uint64_t bytes)
{
	struct oprog *p = arg;
	rkc_progress_add(&p->prog, bytes);
	if (p->json && time(NULL) != p->last_json)
		op_json(p, false, NULL, NULL, false, 0);
}

int rkc_offline_rekey_w(const char *dir, const char *keydir, char **tables, int ntables, const struct rkc_wait *w)
{
	struct rk_keyring *kr = NULL;
	struct rk_datadir *dd = NULL;
	struct oprog p = {.quiet = w->quiet, .json = w->json};
	struct rk_rekey_progress prog = {op_resumed, op_start, op_add, &p};
	struct rk_rekey_summary sum = {0};
	char(*norm)[RK_TABLE_PATH_MAX] = NULL;
	FILE *out = w->json ? stderr : stdout;
	rkc_progress_init(&p.prog, "rekey", 0);
	p.prog.tty = false;
	int ret = rkc_refuse_mounted(dir, "rekey");
	if (ret < 0)
		return ret;
	ret = rk_keyring_new(keydir, &kr);
	if (ret < 0)
		return ret;
	ret = rk_open_offline(dir, RK_DD_EXCLUSIVE, kr, keydir, true, &dd);
	if (ret < 0)
		goto out;
	norm = calloc((size_t)(ntables ? ntables : 1), sizeof(*norm));
	if (!norm) {
		ret = -ENOMEM;
		goto out;
	}
	for (int i = 0; i < ntables; i++) {
		if (rk_table_path_norm(tables[i], norm[i], sizeof(norm[i])) < 0) {
			rk_err("rekey: invalid table '%s'", tables[i]);
			ret = RKC_USAGE;
			goto out;
		}
		const struct rk_table *tb = rk_policy_lookup(dd, norm[i]);
		if (!tb || strcmp(tb->path, norm[i]) != 0) {
			char list[2048] = "";
			size_t n = 0;
			for (size_t t = 0; t < dd->ntables && n < sizeof(list); t++)
				n += (size_t)snprintf(list + n, sizeof(list) - n, " %s", dd->tables[t].path);
			rk_err("rekey: %s is not a table of %s (tables:%s); create one with rekeyctl alter", norm[i], dir, list);
			ret = -ENOENT;
			goto out;
		}
	}
	ret = rk_rekey_offline(dd, kr, norm, ntables, &prog, &sum);
	rkc_progress_done(&p.prog);
	if (ret == 0) {
		double el = rkc_since(&p.prog.t0);
		if (!w->quiet)
			fprintf(out, "rekeyed %" PRIu64 " chunks in %" PRIu64 " files (%.1f MiB in %.1fs)\n", sum.rewritten,
			        sum.files, (double)p.prog.done / 1048576.0, el);
		if (sum.failed) {
			rk_err("%" PRIu64 " chunks could not be read and keep their old key; run 'rekeyctl fsck --deep %s'",
			       sum.failed, dir);
			ret = -EIO;
		}
	}
	if (w->json)
		op_json(&p, true, ret == 0 ? "complete" : "incomplete",
		        ret == 0 ? NULL : sum.failed ? "chunks could not be read (rekeyctl fsck --deep)" : rk_strerror(ret),
		        ret == 0 || sum.failed, sum.failed);
out:
	free(norm);
	rk_datadir_close(dd);
	rk_keyring_free(kr);
	return ret;
}

/* ---- offline release ------------------------------------------------------------------------- */
int rkc_offline_release(const char *dir, const char *name, FILE *out)
{
	struct rk_datadir *dd = NULL;
	int ret = rkc_open_offline(dir, RK_DD_EXCLUSIVE, NULL, &dd);
	if (ret < 0)
		return ret;
	struct rk_regent *re = rk_registry_find(dd, name);
	if (!re) {
		rk_err("%s: key '%s' is not in this data directory's registry", dir, name);
		ret = -ENOENT;
		goto out;
	}
	if (re->state == RK_KS_RELEASED) {
		fprintf(out, "%s: key '%s' is already released\n", rk_esc(dir), rk_esc(name));
		goto out;
	}
	const char *target_of = rk_release_targeted_by(dd, name);
	if (target_of) {
		rk_err("%s: release of '%s' refused: table %s still has it as target key; alter the table and rekey "
		       "first", dir, name, target_of);
		ret = -EBUSY;
		goto out;
	}
	struct rk_release_verdict v;
	ret = rk_release_scan(dd->dirfd, name, NULL, &v);
	if (ret < 0)
		goto out;
	if (!rk_release_allowed(&v)) {
		char list[RK_RELEASE_FIRST * PATH_MAX + 16];
		rk_release_list(&v, list, sizeof(list));
		rk_err("%s: release of '%s' refused: %" PRIu64 " chunk(s) in %" PRIu64 " file(s) are still under it (%s); %" PRIu64
		       " format 2 header(s) wrap a data key under it; run 'rekeyctl rotate --rewrap' or 'rekeyctl rekey %s' "
		       "first",
		       dir, name, v.chunks, v.files, list, v.wrapped, dir);
		ret = -EBUSY;
		goto out;
	}
	re->state = RK_KS_RELEASED;
	ret = rk_registry_save(dd);
	if (ret == 0)
		fprintf(out, "%s: key '%s' released: 0 chunks under it (every chunk's key reference was read); the key file may "
		       "now be moved away\n", rk_esc(dir), rk_esc(name));
out:
	rk_datadir_close(dd);
	return ret;
}

/* ---- commands ---------------------------------------------------------------------------------- */
int rkc_cmd_rekey(int argc, char **argv)
{
	static const struct option lo[] = {{"keydir", required_argument, NULL, 'd'},
	                                   {"quiet", no_argument, NULL, 'q'},
	                                   {"wait", no_argument, NULL, 'w'},
	                                   {"progress-json", no_argument, NULL, 'j'},
	                                   {"help", no_argument, NULL, 'h'},
	                                   {0, 0, 0, 0}};
	const char *keydir = NULL;
	struct rkc_wait w = {0};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":d:qwjh", lo, NULL)) != -1) {
		if (c == 'd')
			keydir = optarg;
		else if (c == 'q')
			w.quiet = true;
		else if (c == 'w')
			w.wait = true;
		else if (c == 'j')
			w.json = true;
		else if (c == 'h')
			return rkc_help("rekey");
		else
			return rkc_opt_refused("rekey", c, argv, lo);
	}
	if (argc - optind < 1) {
		rk_err("usage: %s", rkc_usage_line("rekey"));
		return RKC_USAGE;
	}
	if (rkc_check_keydir("rekey", rk_keydir_resolve(keydir), keydir != NULL) < 0)
		return RKC_USAGE;
	keydir = rk_keydir_resolve(keydir);
	rkc_set_keydir(keydir);
	const char *target = argv[optind];
	if (rkc_is_mount(target)) {
		char *root = NULL, *rel = NULL;
		int ret = rkc_mount_find(target, &root, &rel);
		if (ret == 0)
			ret = rkc_online_rekey(root, argv + optind + 1, argc - optind - 1, &w);
		free(root);
		free(rel);
		return ret;
	}
	return rkc_offline_rekey_w(target, keydir, argv + optind + 1, argc - optind - 1, &w);
}

/* Run an admin command on each data directory or mount argv[first..]: a
 * mount gets the control command cmd, a data directory offline(dir, name). */
static int each_target(int argc, char **argv, int first, const char *cmd, int (*offline)(const char *, const char *),
                       const char *name)
{
	int ret = 0;
	for (int i = first; i < argc; i++) {
		int r;
		if (rkc_is_mount(argv[i])) {
			char *root = NULL, *rel = NULL, *reply = NULL;
			rkc_mount_find(argv[i], &root, &rel);
			r = rkc_control(root, cmd, &reply);
			r = rkc_print_reply(r, reply);
			free(root);
			free(rel);
		} else {
			r = offline(argv[i], name);
		}
		if (r < 0 && ret == 0)
			ret = r;
	}
	return ret;
}

static int offline_release(const char *dir, const char *name) { return rkc_offline_release(dir, name, stdout); }

int rkc_cmd_release(int argc, char **argv)
{
	const char *keydir = NULL;
	int pr = rkc_parse_d(argc, argv, "release-key", &keydir, NULL, NULL);
	if (pr < 0)
		return pr;
	rkc_set_keydir(keydir);
	if (argc - optind < 2) {
		rk_err("usage: rekeyctl release-key [-d KEYDIR] NAME DATADIR_OR_MOUNT...");
		return RKC_USAGE;
	}
	const char *name = argv[optind];
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "release %s\n", name);
	return each_target(argc, argv, optind + 1, cmd, offline_release, name);
}


/* ---- mark-compromised / unmark-compromised ------------------------------------------------------ */
static int offline_mark(const char *dir, const char *name, bool on)
{
	struct rk_datadir *dd = NULL;
	int ret = rkc_open_offline(dir, RK_DD_EXCLUSIVE, NULL, &dd);
	if (ret < 0)
		return ret;
	ret = rk_registry_mark_compromised(dd, name, on);
	if (ret == -ENOENT)
		rk_err("%s: key '%s' is not in this data directory's registry", dir, name);
	else if (ret == 1)
		printf("%s: key '%s' is %s marked compromised\n", rk_esc(dir), rk_esc(name), on ? "already" : "not");
	else if (ret == 0 && on)
		printf("%s: key '%s' marked compromised: data keys it ever wrapped count as exposed until a reseal (rotate "
		       "without --rewrap); see rekeyctl fsck\n",
		       rk_esc(dir), rk_esc(name));
	else if (ret == 0)
		printf("%s: key '%s' is no longer marked compromised\n", rk_esc(dir), rk_esc(name));
	rk_datadir_close(dd);
	return ret < 0 ? ret : 0;
}

static int offline_mark_on(const char *dir, const char *name) { return offline_mark(dir, name, true); }
static int offline_mark_off(const char *dir, const char *name) { return offline_mark(dir, name, false); }

static int cmd_mark(int argc, char **argv, const char *cmdname, bool on)
{
	const char *keydir = NULL;
	int pr = rkc_parse_d(argc, argv, cmdname, &keydir, NULL, NULL);
	if (pr < 0)
		return pr;
	rkc_set_keydir(keydir);
	if (argc - optind < 2) {
		rk_err("usage: %s", rkc_usage_line(cmdname));
		return RKC_USAGE;
	}
	const char *name = argv[optind];
	if (rk_key_name_check(name) < 0) {
		rk_err("%s: invalid key name '%s'", cmdname, name);
		return RKC_USAGE;
	}
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "%s %s\n", on ? "compromised" : "uncompromised", name);
	return each_target(argc, argv, optind + 1, cmd, on ? offline_mark_on : offline_mark_off, name);
}

int rkc_cmd_mark_compromised(int argc, char **argv) { return cmd_mark(argc, argv, "mark-compromised", true); }
int rkc_cmd_unmark_compromised(int argc, char **argv) { return cmd_mark(argc, argv, "unmark-compromised", false); }
