/* rekeyctl status - the walker's state, progress and errors of a mount. */
#include "config.h"

#include <errno.h>
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

/* the cached coverage: per table and key the chunks and the files wrapping
 * a data key under it (format 2), per registry key the totals and, for a
 * key marked compromised, what only a reseal clears */
static void print_coverage(const struct rkc_json *c)
{
	char bf[8][64];
#define B(i) bf[i], sizeof(bf[i])
	if (!c || c->type != RKC_J_OBJ) {
		printf("coverage: not counted yet (rekeyctl status --refresh counts it)\n");
		return;
	}
	double scan = 0;
	rkc_json_num(c, "scan_seconds", &scan);
	printf("coverage: counted %s in %.1f s (rekeyctl status --refresh recounts)\n", when(c, "counted_at", B(0)), scan);
	const struct rkc_json *t = rkc_json_get(c, "tables");
	for (size_t i = 0; t && t->type == RKC_J_ARR && i < t->n; i++) {
		const struct rkc_json *x = t->kids[i];
		printf("  table %s (target %s): %s chunk(s), %s on target; %s file(s) off target\n", str(x, "path"),
		       str(x, "target"), num(x, "chunks", B(1)), num(x, "chunks_on_target", B(2)),
		       num(x, "files_off_target", B(3)));
		const struct rkc_json *k = rkc_json_get(x, "keys");
		for (size_t j = 0; k && k->type == RKC_J_ARR && j < k->n; j++)
			printf("    key %-20s %s chunk(s) in %s file(s); data keys wrapped under it in %s file(s)\n",
			       str(k->kids[j], "key"), num(k->kids[j], "chunks", B(4)), num(k->kids[j], "files", B(5)),
			       num(k->kids[j], "wrapped_files", B(6)));
		const struct rkc_json *e = rkc_json_get(x, "exposed");
		for (size_t j = 0; e && e->type == RKC_J_ARR && j < e->n; j++)
			printf("    EXPOSED by compromised key %s: %s chunk(s) in %s file(s) (only a reseal clears them)\n",
			       str(e->kids[j], "key"), num(e->kids[j], "chunks", B(4)), num(e->kids[j], "files", B(5)));
	}
	const struct rkc_json *k = rkc_json_get(c, "keys");
	for (size_t j = 0; k && k->type == RKC_J_ARR && j < k->n; j++) {
		const struct rkc_json *x = k->kids[j];
		const struct rkc_json *comp = rkc_json_get(x, "compromised"), *unused = rkc_json_get(x, "unused");
		bool is_comp = comp && comp->type == RKC_J_BOOL && comp->num != 0;
		bool is_unused = unused && unused->type == RKC_J_BOOL && unused->num != 0;
		printf("  key %-22s %s: %s chunk(s), %s file(s) wrapping under it%s", str(x, "key"), str(x, "state"),
		       num(x, "chunks", B(1)), num(x, "wrapped_files", B(2)), is_unused ? "; nothing counted needs it" : "");
		if (is_comp)
			printf("; COMPROMISED: %s chunk(s) in %s file(s) exposed", num(x, "exposed_chunks", B(3)),
			       num(x, "exposed_files", B(4)));
		putchar('\n');
	}
#undef B
}

/* one mount: its text form, or its JSON (with the fleet fields; one line when several mounts) */
static int status_one(const char *target, bool json, bool one_line, bool refresh)
{
	char *root = NULL, *rel = NULL, *js = NULL, *reply = NULL;
	int ret = rkc_mount_find(target, &root, &rel);
	if (ret < 0) {
		rk_err("%s is not on a rekeyfs mount (no fuse.rekeyfs mount with the daemon's .rekeyfs/control holds "
		       "it); status needs a mounted daemon",
		       target);
		return -ENOENT;
	}
	if (refresh) {
		ret = rkc_control(root, "metrics-refresh\n", &reply);
		if (ret < 0) {
			rkc_print_reply(ret, reply); /* frees reply */
			reply = NULL;
			goto out;
		}
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
	print_coverage(rkc_json_get(st, "coverage"));
	rkc_json_free(st);
out:
	fflush(stdout);
	free(reply);
	free(js);
	free(root);
	free(rel);
	return ret;
}

int rkc_cmd_status(int argc, char **argv)
{
	static const struct option lo[] = {{"json", no_argument, NULL, 'j'},
	                                   {"refresh", no_argument, NULL, 'r'},
	                                   {"help", no_argument, NULL, 'h'},
	                                   {0, 0, 0, 0}};
	bool json = false, refresh = false;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":jrh", lo, NULL)) != -1) {
		if (c == 'h')
			exit(rkc_help("status") == 0 ? 0 : RKC_EXIT_USAGE);
		else if (c == 'j')
			json = true;
		else if (c == 'r')
			refresh = true;
		else
			return rkc_opt_refused("status", c, argv, lo);
	}
	if (argc - optind < 1) {
		rk_err("usage: rekeyctl status [--json] [--refresh] MOUNT...");
		return RKC_USAGE;
	}
	/* several mounts: each one's report (JSON Lines with --json); the
	 * first failure is the exit status, the other mounts are still shown */
	int ret = 0, n = argc - optind;
	for (int i = optind; i < argc; i++) {
		if (!json && n > 1 && i > optind)
			putchar('\n');
		int r = status_one(argv[i], json, n > 1, refresh);
		if (r < 0 && ret == 0)
			ret = r;
	}
	return ret;
}
