/* rekeyctl rotate - the whole key rotation in one command: alter every table
 * whose target key is OLD (every table without --from) to NEW, rekey them,
 * wait, verify that no chunk slot names OLD any more, and with --release
 * retire OLD.  Online every step goes through the daemon's control file
 * (alter, rekey, fsck --key, release); offline through the library (policy,
 * rk_rekey_offline, rk_release_scan).  Each step is printed; running it
 * again after an interruption finishes the job (tables already on NEW are
 * swept again, a released OLD is reported as done). */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/keys.h"
#include "rekeyfs/rekey.h"

struct rot {
	const char *keydir, *from, *to;
	bool release;
	bool rewrap; /* --rewrap: rewrap the data keys (headers only) instead of resealing */
	bool reseal; /* --reseal: the default said explicitly */
	struct rkc_wait w;
	char **sweep; /* the tables to rekey: those whose target is NEW */
	int nsweep;
};

static void rot_free(struct rot *r)
{
	for (int i = 0; i < r->nsweep; i++)
		free(r->sweep[i]);
	free(r->sweep);
	r->sweep = NULL;
	r->nsweep = 0;
}

static int rot_add(struct rot *r, const char *path)
{
	char **ns = realloc(r->sweep, (size_t)(r->nsweep + 1) * sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	r->sweep = ns;
	r->sweep[r->nsweep] = strdup(path);
	return r->sweep[r->nsweep++] ? 0 : -ENOMEM;
}

/* FILE for the step lines: stderr when stdout carries JSON lines */
static FILE *rot_out(const struct rot *r) { return r->w.json ? stderr : stdout; }

/* ---- online ------------------------------------------------------------------------------------ */
/* the registry state of key name in the status ("released", ...), NULL when unknown */
static const char *key_state(const struct rkc_json *st, const char *name)
{
	const struct rkc_json *kl = rkc_json_get(st, "keys");
	for (size_t i = 0; kl && kl->type == RKC_J_ARR && i < kl->n; i++) {
		const char *n = rkc_json_str(kl->kids[i], "name");
		if (n && strcmp(n, name) == 0) {
			const char *s = rkc_json_str(kl->kids[i], "state");
			return s ? s : "unknown";
		}
	}
	return NULL;
}

static int online_alter_all(const char *root, struct rot *r, const struct rkc_json *st)
{
	const struct rkc_json *tl = rkc_json_get(st, "tables");
	int altered = 0, ret = 0;
	for (size_t i = 0; tl && tl->type == RKC_J_ARR && i < tl->n && ret == 0; i++) {
		const char *path = rkc_json_str(tl->kids[i], "path"), *key = rkc_json_str(tl->kids[i], "key");
		if (!path || !key || strpbrk(path, " \t\n"))
			continue;
		bool alter = r->from ? strcmp(key, r->from) == 0 : strcmp(key, r->to) != 0;
		if (alter) {
			char cmd[RK_TABLE_PATH_MAX + 128], *reply = NULL;
			snprintf(cmd, sizeof(cmd), "alter %s %s - -\n", path, r->to);
			int c = rkc_control(root, cmd, &reply);
			if (c == 0) {
				fprintf(rot_out(r), "alter: table %s: %s -> %s\n", rk_esc(path), rk_esc(key), rk_esc(r->to));
				free(reply);
				altered++;
			} else {
				ret = rkc_print_reply(c, reply);
			}
		}
		if (ret == 0 && (alter || strcmp(key, r->to) == 0))
			ret = rot_add(r, path);
	}
	if (ret == 0 && altered == 0)
		fprintf(rot_out(r), "alter: no table has %s%s as target key (already done)\n", r->from ? "" : "another key than ",
		        rk_esc(r->from ? r->from : r->to));
	return ret;
}

/* the daemon's fsck --key OLD: every chunk slot's key reference is read */
static int online_verify(const char *root, const struct rot *r)
{
	char cmd[128], *reply = NULL;
	int e = -1, n = 0;
	snprintf(cmd, sizeof(cmd), "fsck --key %s\n", r->from);
	int ret = rkc_control(root, cmd, &reply);
	if (ret == 0 && reply && sscanf(reply, "ok exit=%d%n", &e, &n) == 1 && e == 0) {
		fprintf(rot_out(r), "verify: no chunk of %s is under %s (the daemon read every chunk slot's key reference)\n",
		        rk_esc(root), rk_esc(r->from));
		free(reply);
		return 0;
	}
	const char *body = reply ? reply + n : "";
	rk_err("verify: %s still has data under %s (fsck --key %s exit %d):\n%s", root, r->from, r->from, e,
	       e >= 0 ? body : reply ? reply : "no answer");
	free(reply);
	return -EBUSY;
}

/* --rewrap online: the walker runs, and the daemon can unwrap with OLD and
 * wrap with NEW (both load, same cipher and strength) */
static int online_rewrap_check(const char *root, const struct rkc_json *st, const struct rot *r)
{
	const struct rkc_json *wk = rkc_json_get(st, "walker");
	const char *ws = wk ? rkc_json_str(wk, "state") : NULL;
	if (!ws || strcmp(ws, "off") == 0) {
		rk_err("rotate --rewrap: the walker of %s is off (mounted with -o walker=off): the online rewrap is the "
		       "walker's work; remount with the walker, or unmount and rotate the data directory", root);
		return -ENOTSUP;
	}
	char cmd[2 * RK_KEY_NAME_MAX + 32], *reply = NULL;
	snprintf(cmd, sizeof(cmd), "rewrap-check %s %s\n", r->from, r->to);
	int ret = rkc_control(root, cmd, &reply);
	if (ret == 0)
		free(reply);
	else
		ret = rkc_print_reply(ret, reply);
	return ret < 0 ? -EINVAL : 0;
}

static int rotate_online(const char *target, struct rot *r)
{
	char *root = NULL, *rel = NULL, *reply = NULL;
	struct rkc_json *st = NULL;
	int ret = rkc_mount_find(target, &root, &rel);
	if (ret == 0)
		ret = rkc_status_tree(root, &st);
	if (ret < 0) {
		rk_err("rotate: cannot read the status of %s: %s", target, rk_strerror(ret));
		goto out;
	}
	const char *fs = r->from ? key_state(st, r->from) : NULL;
	if (r->from && !fs) {
		rk_err("rotate: key '%s' is not in the key registry of %s (rekeyctl status --json %s lists the keys)", r->from,
		       root, root);
		ret = -ENOENT;
		goto out;
	}
	if (fs && strcmp(fs, "released") == 0) {
		fprintf(rot_out(r), "rotate: %s is already released on %s: nothing to do\n", rk_esc(r->from), rk_esc(root));
		goto out;
	}
	if (r->rewrap && (ret = online_rewrap_check(root, st, r)) < 0)
		goto out; /* before the alter: nothing changed */
	ret = online_alter_all(root, r, st);
	if (ret < 0)
		goto out;
	if (r->nsweep == 0) {
		fprintf(rot_out(r), "rekey: no table targets %s: nothing to sweep\n", rk_esc(r->to));
	} else if (r->rewrap) {
		char req[2 * RK_KEY_NAME_MAX + 16];
		snprintf(req, sizeof(req), "rewrap %s %s", r->from, r->to);
		fprintf(rot_out(r), "rewrap: %s%d table(s) of %s (headers only, by the daemon's walker)\n",
		        r->w.wait ? "waiting for " : "", r->nsweep, rk_esc(root));
		ret = rkc_online_sweep(root, req, r->sweep, r->nsweep, &r->w);
		if (ret < 0 || !r->w.wait)
			goto out;
	} else {
		fprintf(rot_out(r), "rekey: %s%d table(s) of %s\n", r->w.wait ? "sweeping and waiting for " : "sweeping ",
		        r->nsweep, rk_esc(root));
		ret = rkc_online_rekey(root, r->from ? r->sweep : NULL, r->from ? r->nsweep : 0, &r->w);
		if (ret < 0 || !r->w.wait)
			goto out;
	}
	if (!r->from)
		goto out;
	ret = online_verify(root, r);
	if (ret < 0 || !r->release)
		goto out;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "release %s\n", r->from);
	ret = rkc_control(root, cmd, &reply);
	if (ret == 0) {
		size_t n = strlen(reply);
		while (n && reply[n - 1] == '\n')
			reply[--n] = '\0';
		fprintf(rot_out(r), "release: %s\n", rk_esc(strncmp(reply, "ok ", 3) == 0 ? reply + 3 : reply));
		free(reply);
	} else {
		ret = rkc_print_reply(ret, reply);
	}
out:
	rkc_json_free(st);
	free(root);
	free(rel);
	return ret;
}

/* ---- offline ----------------------------------------------------------------------------------- */
static int offline_alter_all(const char *dir, struct rot *r)
{
	struct rk_datadir *dd = NULL;
	struct rk_key *key = NULL;
	int altered = 0;
	int ret = rkc_open_offline(dir, RK_DD_EXCLUSIVE, NULL, &dd);
	if (ret < 0)
		return ret;
	struct rk_regent *re = r->from ? rk_registry_find(dd, r->from) : NULL;
	if (r->from && !re) {
		rk_err("rotate: key '%s' is not in the key registry of %s (rekeyctl keys %s lists them)", r->from, dir, dir);
		ret = -ENOENT;
		goto out;
	}
	if (re && re->state == RK_KS_RELEASED) {
		fprintf(rot_out(r), "rotate: %s is already released in %s: nothing to do\n", rk_esc(r->from), rk_esc(dir));
		ret = 1;
		goto out;
	}
	ret = rk_key_load(r->keydir, r->to, &key);
	if (ret < 0) {
		rk_err("rotate: key '%s' cannot be loaded from %s: %s", r->to, r->keydir, rk_strerror(ret));
		goto out;
	}
	ret = rk_registry_add(dd, key);
	for (size_t i = 0; i < dd->ntables && ret == 0; i++) {
		char path[RK_TABLE_PATH_MAX], old[RK_KEY_NAME_MAX + 1];
		snprintf(path, sizeof(path), "%s", dd->tables[i].path);
		snprintf(old, sizeof(old), "%s", dd->tables[i].key);
		bool alter = r->from ? strcmp(old, r->from) == 0 : strcmp(old, r->to) != 0;
		if (alter) {
			ret = rk_policy_set(dd, path, r->to, 0, -1);
			if (ret == 0) {
				fprintf(rot_out(r), "alter: table %s: %s -> %s\n", rk_esc(path), rk_esc(old), rk_esc(r->to));
				altered++;
			}
		}
		if (ret == 0 && (alter || strcmp(old, r->to) == 0))
			ret = rot_add(r, path);
	}
	if (ret == 0)
		ret = rk_registry_save(dd);
	if (ret == 0)
		ret = rk_policy_save(dd);
	if (ret == 0 && altered == 0)
		fprintf(rot_out(r), "alter: no table has %s%s as target key (already done)\n", r->from ? "" : "another key than ",
		        rk_esc(r->from ? r->from : r->to));
out:
	rk_key_free(key);
	rk_datadir_close(dd);
	return ret;
}

static int offline_verify(const char *dir, const struct rot *r)
{
	struct rk_datadir *dd = NULL;
	struct rk_release_verdict v;
	int ret = rkc_open_offline(dir, RK_DD_EXCLUSIVE, NULL, &dd);
	if (ret < 0)
		return ret;
	ret = rk_release_scan(dd->dirfd, r->from, NULL, &v);
	if (ret == 0 && rk_release_allowed(&v)) {
		fprintf(rot_out(r),
		        "verify: no chunk of %s is under %s and no header wraps a data key under it (every chunk slot's key "
		        "reference and every header was read)\n",
		        rk_esc(dir), rk_esc(r->from));
	} else if (ret == 0) {
		char list[RK_RELEASE_FIRST * PATH_MAX + 16];
		rk_release_list(&v, list, sizeof(list));
		rk_err("verify: %" PRIu64 " chunk(s) in %" PRIu64 " file(s) of %s are still under %s (%s); %" PRIu64
		       " format 2 header(s) wrap a data key under it",
		       v.chunks, v.files, dir, r->from, list, v.wrapped);
		ret = -EBUSY;
	} else {
		rk_err("verify: the scan of %s for %s failed: %s", dir, r->from, rk_strerror(ret));
	}
	rk_datadir_close(dd);
	return ret;
}

/* --rewrap: the data keys wrapped under OLD rewrapped under NEW, headers
 * only, in the tables now on NEW (rk_rewrap_offline) */
static int offline_rewrap(const char *dir, struct rot *r)
{
	struct rk_keyring *kr = NULL;
	struct rk_datadir *dd = NULL;
	struct rk_key *old = NULL, *new = NULL;
	struct rk_rewrap_summary sum = {0};
	char(*tables)[RK_TABLE_PATH_MAX] = calloc((size_t)r->nsweep, sizeof(*tables));
	int ret = tables ? rk_keyring_new(r->keydir, &kr) : -ENOMEM;
	if (ret == 0)
		ret = rk_open_offline(dir, RK_DD_EXCLUSIVE, kr, r->keydir, true, &dd);
	if (ret == 0 && (ret = rk_keyring_get(kr, r->from, &old)) < 0)
		rk_err("rotate --rewrap: key '%s' cannot be loaded from %s: %s (a rewrap needs the old key)", r->from,
		       r->keydir, rk_strerror(ret));
	if (ret == 0)
		ret = rk_keyring_get(kr, r->to, &new);
	for (int i = 0; ret == 0 && i < r->nsweep; i++)
		snprintf(tables[i], sizeof(tables[i]), "%s", r->sweep[i]);
	if (ret == 0)
		ret = rk_rewrap_offline(dd, kr, tables, r->nsweep, old, new, &sum);
	if (ret == 0)
		fprintf(rot_out(r),
		        "rewrap: %" PRIu64 " file(s), %" PRIu64 " data key(s) rewrapped from %s to %s (%" PRIu64
		        " converted from format 1, %" PRIu64 " with an older header copy left under %s by a cut run written "
		        "again); no chunk rewritten\n",
		        sum.files, sum.entries, rk_esc(r->from), rk_esc(r->to), sum.upgraded, sum.repaired, rk_esc(r->from));
	rk_datadir_close(dd);
	rk_keyring_free(kr);
	free(tables);
	return ret;
}

static int rotate_offline(const char *dir, struct rot *r)
{
	int ret = rkc_refuse_mounted(dir, "rotate");
	if (ret < 0)
		return ret;
	if (r->rewrap) {
		/* before the alter: a rewrap keeps the data keys, so NEW must fit them */
		struct rk_key *ko = NULL, *kn = NULL;
		ret = rk_key_load(r->keydir, r->from, &ko);
		if (ret == 0)
			ret = rk_key_load(r->keydir, r->to, &kn);
		if (ret < 0)
			rk_err("rotate --rewrap: keys '%s' and '%s' must both be in %s: %s", r->from, r->to, r->keydir,
			       rk_strerror(ret));
		else {
			char why[512];
			ret = rk_rewrap_keys_fit(ko, kn, why, sizeof(why));
			if (ret < 0)
				rk_err("rotate --rewrap: %s", why);
		}
		rk_key_free(ko);
		rk_key_free(kn);
		if (ret < 0)
			return ret;
	}
	ret = offline_alter_all(dir, r);
	if (ret != 0)
		return ret > 0 ? 0 : ret;
	if (r->nsweep == 0) {
		fprintf(rot_out(r), "rekey: no table targets %s: nothing to sweep\n", rk_esc(r->to));
	} else if (r->rewrap) {
		fprintf(rot_out(r), "rewrap: %d table(s) of %s (headers only)\n", r->nsweep, rk_esc(dir));
		ret = offline_rewrap(dir, r);
		if (ret < 0)
			return ret;
	} else {
		fprintf(rot_out(r), "rekey: %d table(s) of %s (offline: the command waits)\n", r->nsweep, rk_esc(dir));
		ret = rkc_offline_rekey_w(dir, r->keydir, r->from ? r->sweep : NULL, r->from ? r->nsweep : 0, &r->w);
		if (ret < 0)
			return ret;
	}
	if (!r->from)
		return 0;
	ret = offline_verify(dir, r);
	if (ret == 0 && r->release) {
		fprintf(rot_out(r), "release: ");
		ret = rkc_offline_release(dir, r->from, rot_out(r));
	}
	return ret;
}

/* ---- the command ----------------------------------------------------------------------------- */
int rkc_cmd_rotate(int argc, char **argv)
{
	static const struct option lo[] = {{"keydir", required_argument, NULL, 'd'},
	                                   {"from", required_argument, NULL, 'f'},
	                                   {"to", required_argument, NULL, 't'},
	                                   {"release", no_argument, NULL, 'r'},
	                                   {"wait", no_argument, NULL, 'w'},
	                                   {"progress-json", no_argument, NULL, 'j'},
	                                   {"quiet", no_argument, NULL, 'q'},
	                                   {"rewrap", no_argument, NULL, 'W'},
	                                   {"reseal", no_argument, NULL, 'S'},
	                                   {"help", no_argument, NULL, 'h'},
	                                   {0, 0, 0, 0}};
	struct rot r = {0};
	const char *keydir = NULL;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":d:f:t:rwjqWh", lo, NULL)) != -1) {
		switch (c) {
		case 'd': keydir = optarg; break;
		case 'f': r.from = optarg; break;
		case 't': r.to = optarg; break;
		case 'r': r.release = true; break;
		case 'w': r.w.wait = true; break;
		case 'j': r.w.json = true; break;
		case 'q': r.w.quiet = true; break;
		case 'W': r.rewrap = true; break;
		case 'S': r.reseal = true; break;
		case 'h': return rkc_help("rotate");
		default:
			return rkc_opt_refused("rotate", c, argv, lo);
		}
	}
	if (argc - optind != 1 || !r.to) {
		rk_err("usage: %s", rkc_usage_line("rotate"));
		return RKC_USAGE;
	}
	if (rk_key_name_check(r.to) < 0 || (r.from && rk_key_name_check(r.from) < 0)) {
		rk_err("rotate: '%s' is not a key name (1 to 63 of A-Z a-z 0-9 . _ -)",
		       rk_key_name_check(r.to) < 0 ? r.to : r.from);
		return RKC_USAGE;
	}
	if (r.from && strcmp(r.from, r.to) == 0) {
		rk_err("rotate: --from and --to name the same key '%s'", r.to);
		return RKC_USAGE;
	}
	if (r.release && !r.from) {
		rk_err("rotate: --release needs --from OLD (the key to release)");
		return RKC_USAGE;
	}
	if (r.rewrap && r.reseal) {
		rk_err("rotate: --rewrap and --reseal exclude each other: --rewrap rewraps the data keys (headers only), "
		       "--reseal (the default) re-encrypts every chunk under fresh data keys; run one, then the other if "
		       "you need both");
		return RKC_USAGE;
	}
	if (r.rewrap && !r.from) {
		rk_err("rotate: --rewrap needs --from OLD (the key the data keys are wrapped under now)");
		return RKC_USAGE;
	}
	if (r.release)
		r.w.wait = true;
	if (rkc_check_keydir("rotate", rk_keydir_resolve(keydir), keydir != NULL) < 0)
		return RKC_USAGE;
	r.keydir = rk_keydir_resolve(keydir);
	rkc_set_keydir(r.keydir);
	const char *target = argv[optind];
	int ret = rkc_is_mount(target) ? rotate_online(target, &r) : rotate_offline(target, &r);
	rot_free(&r);
	return ret;
}
