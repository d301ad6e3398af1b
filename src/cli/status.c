/* rekeyctl status - the walker's state, progress and errors of a mount. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "rekeyfs/common.h"

/* ---- the text form of the status (the JSON is printed as is with --json) ---- */
/* a number field, or "-" when null or missing */
static const char *num(const struct rkc_json *o, const char *key, char *buf, size_t len)
{
	double v;
	if (!rkc_json_num(o, key, &v))
		return "-";
	snprintf(buf, len, "%.0f", v);
	return buf;
}

static const char *mib(const struct rkc_json *o, const char *key, char *buf, size_t len)
{
	double v;
	if (!rkc_json_num(o, key, &v))
		return "-";
	snprintf(buf, len, "%.1f MiB", v / 1048576.0);
	return buf;
}

static const char *str(const struct rkc_json *o, const char *key)
{
	const char *s = rkc_json_str(o, key);
	return s ? rk_esc(s) : "-";
}

static const char *when(const struct rkc_json *o, const char *key, char *buf, size_t len)
{
	double v;
	if (!rkc_json_num(o, key, &v))
		return "-";
	time_t t = (time_t)v;
	struct tm tm;
	if (!localtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm) == 0)
		return "-";
	return buf;
}

/* An online rewrap (rotate --rewrap): its keys and progress in files (the
 * sweep's byte counts are header bytes, 8 KiB per file; its remaining count
 * is files still wrapping a data key under the old key).  Kept apart from
 * print_walker. */
static void print_rewrap(const struct rkc_json *w)
{
	const char *mode = rkc_json_str(w, "mode");
	if (!mode || strcmp(mode, "rewrap") != 0)
		return;
	char b0[64], b1[64], b2[64], b3[64];
	printf("rewrap: data keys wrapped under %s to %s (headers only): %s/%s files done, %s rewrapped, %s "
	       "remaining\n",
	       str(w, "rewrap_from"), str(w, "rewrap_to"), num(w, "files_done", b0, sizeof(b0)),
	       num(w, "files_total", b1, sizeof(b1)), num(w, "files_rewrapped", b2, sizeof(b2)),
	       num(w, "remaining_chunks", b3, sizeof(b3)));
}

static void print_walker(const struct rkc_json *w)
{
	char bf[10][64];
#define B(i) bf[i], sizeof(bf[i])
	double rl = 0;
	rkc_json_num(w, "rate_limit", &rl);
	printf("walker: %s, sweep %s (last finished: %s), rate %s B/s, limit %s\n", str(w, "state"),
	       num(w, "sweep", B(1)), num(w, "finished_sweep", B(2)),
	       num(w, "rate_bytes_per_s", B(3)), rl > 0 ? num(w, "rate_limit", B(4)) : "unlimited");
	print_rewrap(w);
	printf("progress: %s of %s, %s/%s chunks (%s failed), %s/%s files, ETA %s s\n", mib(w, "bytes_done", B(5)),
	       mib(w, "bytes_total", B(6)), num(w, "chunks_done", B(7)),
	       num(w, "chunks_total", B(8)), num(w, "chunks_failed", B(9)), num(w, "files_done", B(0)),
	       num(w, "files_total", B(1)), num(w, "eta_s", B(2)));
	if (rkc_json_str(w, "current_file"))
		printf("current file: %s at byte %s\n", str(w, "current_file"), num(w, "current_offset", B(3)));
	printf("started %s, finished %s; result %s, remaining chunks %s%s%s\n", when(w, "started", B(4)),
	       when(w, "finished", B(5)), str(w, "result"), num(w, "remaining_chunks", B(6)),
	       rkc_json_str(w, "reason") ? ": " : "", rkc_json_str(w, "reason") ? str(w, "reason") : "");
	const struct rkc_json *q = rkc_json_get(w, "queued");
	for (size_t i = 0; q && q->type == RKC_J_ARR && i < q->n; i++)
		printf("queued: sweep %s\n", num(q->kids[i], "sweep", B(7)));
	printf("chunks rewritten: %s by the walker, %s lazily on read; files replaced whole: %s; errors: %s\n",
	       num(w, "chunks_rewritten_walker", B(8)), num(w, "chunks_rewritten_lazy", B(9)),
	       num(w, "files_replaced", B(0)), num(w, "error_count", B(1)));
	const struct rkc_json *t = rkc_json_get(w, "tables");
	for (size_t i = 0; t && t->type == RKC_J_ARR && i < t->n; i++) {
		const struct rkc_json *x = t->kids[i];
		double pct = 0;
		rkc_json_num(x, "percent", &pct);
		printf("  table %-24s %5.1f%%  %s/%s chunks rewritten, %s/%s files; %s, %s/%s chunks, %s failed, %s remaining\n",
		       str(x, "path"), pct, num(x, "chunks_rewritten", B(2)), num(x, "chunks_to_rewrite", B(3)),
		       num(x, "files_done", B(6)), num(x, "files_total", B(7)), str(x, "state"), num(x, "chunks_done", B(8)),
		       num(x, "chunks_total", B(9)), num(x, "chunks_failed", B(4)), num(x, "remaining_chunks", B(5)));
	}
	/* one line, as before: "recent errors: TIME PATH chunk N: CAUSE; ..." */
	const struct rkc_json *errs = rkc_json_get(w, "errors");
	for (size_t i = 0; errs && errs->type == RKC_J_ARR && i < errs->n; i++) {
		const struct rkc_json *x = errs->kids[i];
		printf("%s%s %s chunk %s: %s", i ? "; " : "recent errors: ", when(x, "time", B(8)), str(x, "path"),
		       num(x, "chunk", B(9)), str(x, "cause"));
	}
	if (errs && errs->type == RKC_J_ARR && errs->n)
		putchar('\n');
#undef B
}

/* one mount: its text form, or its JSON (with the fleet fields; one line when several mounts) */
static int status_one(const char *target, bool json, bool one_line)
{
	char *root = NULL, *rel = NULL, *js = NULL;
	int ret = rkc_mount_find(target, &root, &rel);
	if (ret < 0) {
		rk_err("%s is not on a rekeyfs mount (no fuse.rekeyfs mount with the daemon's .rekeyfs/control holds "
		       "it); status needs a mounted daemon",
		       target);
		return -ENOENT;
	}
	ret = rkc_read_status(root, &js);
	if (ret < 0) {
		rk_err("cannot read %s/.rekeyfs/status: %s", root, strerror(-ret));
		goto out;
	}
	struct rkc_json *st = NULL;
	if (rkc_json_parse(js, &st) < 0) {
		rk_err("%s/.rekeyfs/status is not valid JSON (a daemon of another version?); see rekeyctl status --json", root);
		ret = -EPROTO;
		goto out;
	}
	if (json) {
		ret = rkc_fleet_print(stdout, js, rkc_json_str(st, "datadir"), root, one_line);
		rkc_json_free(st);
		goto out;
	}
	char pid[32];
	printf("mount %s (data directory %s, daemon pid %s)\n", rk_esc(root), str(st, "datadir"),
	       num(st, "pid", pid, sizeof(pid)));
	const struct rkc_json *w = rkc_json_get(st, "walker");
	if (w)
		print_walker(w);
	const struct rkc_json *re = rkc_json_get(st, "read_errors");
	if (re) {
		char n[32], c[32];
		printf("read errors (EIO returned to readers since mount): %s\n", num(re, "count", n, sizeof(n)));
		const struct rkc_json *l = rkc_json_get(re, "recent");
		for (size_t i = 0; l && l->type == RKC_J_ARR && i < l->n; i++)
			printf("  read error %s chunk %s: %s\n", str(l->kids[i], "path"), num(l->kids[i], "chunk", c, sizeof(c)),
			       str(l->kids[i], "cause"));
	}
	rkc_json_free(st);
out:
	fflush(stdout);
	free(js);
	free(root);
	free(rel);
	return ret;
}

int rkc_cmd_status(int argc, char **argv)
{
	bool json = false;
	int pr = rkc_parse_d(argc, argv, "status", NULL, NULL, &json);
	if (pr < 0)
		return pr;
	if (argc - optind < 1) {
		rk_err("usage: rekeyctl status [--json] MOUNT...");
		return RKC_USAGE;
	}
	/* several mounts: each one's report (JSON Lines with --json); the
	 * first failure is the exit status, the other mounts are still shown */
	int ret = 0, n = argc - optind;
	for (int i = optind; i < argc; i++) {
		if (!json && n > 1 && i > optind)
			putchar('\n');
		int r = status_one(argv[i], json, n > 1);
		if (r < 0 && ret == 0)
			ret = r;
	}
	return ret;
}
