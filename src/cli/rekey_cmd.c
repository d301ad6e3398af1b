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

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/rekey.h"

/* ---- offline rekey ---------------------------------------------------------------------------- */
struct oprog {
	struct rkc_progress prog;
	bool quiet;
};

static void op_resumed(void *arg, const char *position)
{
	struct oprog *p = arg;
	if (!p->quiet)
		printf("resuming an interrupted sweep after %s\n", position[0] ? rk_esc(position) : "the start");
}

static void op_start(void *arg, uint64_t total)
{
	struct oprog *p = arg;
	rkc_progress_init(&p->prog, "rekey", total);
	if (p->quiet)
		p->prog.tty = false;
}

static void op_add(void *arg, uint64_t bytes)
{
	struct oprog *p = arg;
	rkc_progress_add(&p->prog, bytes);
}

int rkc_offline_rekey(const char *dir, const char *keydir, char **tables, int ntables, bool quiet)
{
	struct rk_keyring *kr = NULL;
	struct rk_datadir *dd = NULL;
	struct oprog p = {.quiet = quiet};
	struct rk_rekey_progress prog = {op_resumed, op_start, op_add, &p};
	struct rk_rekey_summary sum;
	char(*norm)[RK_TABLE_PATH_MAX] = NULL;
	rkc_progress_init(&p.prog, "rekey", 0);
	p.prog.tty = false;
	int ret = rk_keyring_new(keydir, &kr);
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
			rk_err("invalid table '%s'", tables[i]);
			ret = -EINVAL;
			goto out;
		}
	}
	ret = rk_rekey_offline(dd, kr, norm, ntables, &prog, &sum);
	rkc_progress_done(&p.prog);
	if (ret == 0) {
		double el = rkc_since(&p.prog.t0);
		printf("rekeyed %" PRIu64 " chunks in %" PRIu64 " files (%.1f MiB in %.1fs)\n", sum.rewritten, sum.files,
		       (double)p.prog.done / 1048576.0, el);
		if (sum.failed) {
			rk_err("%" PRIu64 " chunks could not be read and keep their old key; run 'rekeyctl fsck --deep %s'",
			       sum.failed, dir);
			ret = -EIO;
		}
	}
out:
	free(norm);
	rk_datadir_close(dd);
	rk_keyring_free(kr);
	return ret;
}

/* ---- offline release ------------------------------------------------------------------------- */
static int offline_release(const char *dir, const char *name)
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
		printf("%s: key '%s' is already released\n", rk_esc(dir), rk_esc(name));
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
	if (v.chunks) {
		char list[RK_RELEASE_FIRST * PATH_MAX + 16];
		rk_release_list(&v, list, sizeof(list));
		rk_err("%s: release of '%s' refused: %" PRIu64 " chunk(s) in %" PRIu64
		       " file(s) are still under it (%s); run 'rekeyctl rekey %s' first",
		       dir, name, v.chunks, v.files, list, dir);
		ret = -EBUSY;
		goto out;
	}
	re->state = RK_KS_RELEASED;
	ret = rk_registry_save(dd);
	if (ret == 0)
		printf("%s: key '%s' released: 0 chunks under it (every chunk's key reference was read); the key file may "
		       "now be moved away\n", rk_esc(dir), rk_esc(name));
out:
	rk_datadir_close(dd);
	return ret;
}

/* ---- commands ---------------------------------------------------------------------------------- */
int rkc_cmd_rekey(int argc, char **argv)
{
	const char *keydir = NULL;
	bool quiet = false;
	if (rkc_parse_d(argc, argv, &keydir, &quiet, NULL) < 0 || argc - optind < 1) {
		rk_err("usage: rekeyctl rekey [-d KEYDIR] [-q] DATADIR_OR_MOUNT [TABLE...]");
		return RKC_USAGE;
	}
	const char *target = argv[optind];
	if (rkc_is_mount(target)) {
		char *root = NULL, *rel = NULL, *reply = NULL, cmd[8192];
		rkc_mount_find(target, &root, &rel);
		size_t n = (size_t)snprintf(cmd, sizeof(cmd), "rekey");
		for (int i = optind + 1; i < argc && n < sizeof(cmd) - 1; i++)
			n += (size_t)snprintf(cmd + n, sizeof(cmd) - n, " %s", argv[i]);
		snprintf(cmd + n, sizeof(cmd) - n, "\n");
		int ret = rkc_control(root, cmd, &reply);
		ret = rkc_print_reply(ret, reply);
		if (ret == 0)
			printf("watch it with: rekeyctl status %s\n", rk_esc(root));
		free(root);
		free(rel);
		return ret;
	}
	return rkc_offline_rekey(target, keydir, argv + optind + 1, argc - optind - 1, quiet);
}

int rkc_cmd_release(int argc, char **argv)
{
	const char *keydir = NULL;
	if (rkc_parse_d(argc, argv, &keydir, NULL, NULL) < 0 || argc - optind < 2) {
		rk_err("usage: rekeyctl release-key [-d KEYDIR] NAME DATADIR_OR_MOUNT...");
		return RKC_USAGE;
	}
	const char *name = argv[optind];
	int ret = 0;
	for (int i = optind + 1; i < argc; i++) {
		int r;
		if (rkc_is_mount(argv[i])) {
			char *root = NULL, *rel = NULL, *reply = NULL, cmd[256];
			rkc_mount_find(argv[i], &root, &rel);
			snprintf(cmd, sizeof(cmd), "release %s\n", name);
			r = rkc_control(root, cmd, &reply);
			r = rkc_print_reply(r, reply);
			free(root);
			free(rel);
		} else {
			r = offline_release(argv[i], name);
		}
		if (r < 0 && ret == 0)
			ret = r;
	}
	return ret;
}

