/* rekeyctl - job control of a mount's walker: pause, resume, throttle, and
 * the online rekey that waits for its sweep (progress bar on a terminal,
 * JSON lines with --progress-json; the status contract is documented in
 * rekeyctl(8) and rekeyfs(8)).  The offline rekey's JSON lines come from
 * the engine's progress callbacks (rekey_cmd.c). */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"

/* ---- pause, resume, throttle ---------------------------------------------------------------- */
/* the mount root of MOUNT, or a message and -ENOENT */
static int need_mount(const char *cmd, const char *target, char **root)
{
	char *rel = NULL;
	int ret = rkc_mount_find(target, root, &rel);
	free(rel);
	if (ret < 0)
		rk_err("%s: %s is not a rekeyfs mount (no fuse.rekeyfs mount with the daemon's .rekeyfs/control holds "
		       "it); %s talks to a mounted daemon", cmd, target, cmd);
	return ret < 0 ? -ENOENT : 0;
}

static int simple_ctl(int argc, char **argv, const char *cmd, int nargs)
{
	char *root = NULL, *reply = NULL, line[256];
	int ret = rkc_parse_d(argc, argv, cmd, NULL, NULL, NULL);
	if (ret < 0)
		return ret;
	if (argc - optind != nargs) {
		rk_err("usage: %s", rkc_usage_line(cmd));
		return RKC_USAGE;
	}
	const char *arg = nargs > 1 ? argv[optind + 1] : NULL;
	uint64_t rate;
	if (arg && (strlen(arg) > 64 || rk_parse_rate(arg, &rate) < 0)) {
		rk_err("%s: '%s' is not a rate: use N, NK/NM/NG or NKiB/NMiB/NGiB (powers of 1024), NKB/NMB/NGB (powers "
		       "of 1000), 0 or unlimited", cmd, arg);
		return RKC_USAGE;
	}
	ret = need_mount(cmd, argv[optind], &root);
	if (ret < 0)
		return ret;
	if (arg)
		snprintf(line, sizeof(line), "rate %s\n", arg);
	else
		snprintf(line, sizeof(line), "%s\n", cmd);
	ret = rkc_control(root, line, &reply);
	ret = rkc_print_reply(ret, reply);
	free(root);
	return ret;
}

int rkc_cmd_pause(int argc, char **argv) { return simple_ctl(argc, argv, "pause", 1); }
int rkc_cmd_resume(int argc, char **argv) { return simple_ctl(argc, argv, "resume", 1); }
int rkc_cmd_throttle(int argc, char **argv) { return simple_ctl(argc, argv, "throttle", 2); }

/* ---- progress of a sweep --------------------------------------------------------------------- */
struct sweep_view {
	const char *state, *current_file, *result, *reason, *mode, *rewrap_from;
	double sweep, finished_sweep, bytes_done, bytes_total, chunks_done, chunks_total, rate, eta, remaining;
	double files_done, files_total;
	bool has_finished, has_eta, has_remaining;
};

static void view_of(const struct rkc_json *w, struct sweep_view *v)
{
	memset(v, 0, sizeof(*v));
	v->state = rkc_json_str(w, "state");
	v->current_file = rkc_json_str(w, "current_file");
	v->result = rkc_json_str(w, "result");
	v->reason = rkc_json_str(w, "reason");
	v->mode = rkc_json_str(w, "mode"); /* "rewrap" or "reseal" (NULL: an older daemon, a reseal) */
	v->rewrap_from = rkc_json_str(w, "rewrap_from");
	rkc_json_num(w, "files_done", &v->files_done);
	rkc_json_num(w, "files_total", &v->files_total);
	rkc_json_num(w, "sweep", &v->sweep);
	v->has_finished = rkc_json_num(w, "finished_sweep", &v->finished_sweep);
	rkc_json_num(w, "bytes_done", &v->bytes_done);
	rkc_json_num(w, "bytes_total", &v->bytes_total);
	rkc_json_num(w, "chunks_done", &v->chunks_done);
	rkc_json_num(w, "chunks_total", &v->chunks_total);
	rkc_json_num(w, "rate_bytes_per_s", &v->rate);
	v->has_eta = rkc_json_num(w, "eta_s", &v->eta);
	v->has_remaining = rkc_json_num(w, "remaining_chunks", &v->remaining);
}

/* percent of the sweep: bytes when known, else chunks; never 100 before the end */
static double view_percent(const struct sweep_view *v, bool ended)
{
	double p = 0;
	if (v->bytes_total > 0)
		p = 100.0 * v->bytes_done / v->bytes_total;
	else if (v->chunks_total > 0)
		p = 100.0 * v->chunks_done / v->chunks_total;
	else if (ended)
		p = 100.0;
	if (p > 100.0)
		p = 100.0;
	if (!ended && p > 99.9)
		p = 99.9;
	return p;
}

static void put_num_or_null(const char *key, bool has, double v)
{
	if (has)
		printf(", \"%s\": %.0f", key, v);
	else
		printf(", \"%s\": null", key);
}

/* one --progress-json line: the same fields online and offline (null when
 * unknown); a final line adds result, remaining_chunks and reason */
void rkc_progress_json(const struct rkc_pjson *p)
{
	printf("{\"time\": %lld", (long long)time(NULL));
	put_num_or_null("sweep", p->sweep > 0, (double)p->sweep);
	printf(", \"state\": ");
	rkc_json_put_str(stdout, p->state);
	printf(", \"bytes_done\": %.0f, \"bytes_total\": %.0f", p->bytes_done, p->bytes_total);
	put_num_or_null("chunks_done", p->has_chunks, p->chunks_done);
	put_num_or_null("chunks_total", p->has_chunks, p->chunks_total);
	printf(", \"percent\": %.1f, \"rate_bytes_per_s\": %.0f", p->percent, p->rate);
	put_num_or_null("eta_s", p->has_eta, p->eta);
	printf(", \"current_file\": ");
	rkc_json_put_str(stdout, p->current_file);
	if (p->mode) { /* online: the sweep's kind, and its files (what a rewrap's progress counts) */
		printf(", \"mode\": ");
		rkc_json_put_str(stdout, p->mode);
		printf(", \"files_done\": %.0f, \"files_total\": %.0f", p->files_done, p->files_total);
	}
	if (p->final) {
		printf(", \"result\": ");
		rkc_json_put_str(stdout, p->result);
		put_num_or_null("remaining_chunks", p->has_remaining, p->remaining);
		printf(", \"reason\": ");
		rkc_json_put_str(stdout, p->reason);
	}
	printf("}\n");
	fflush(stdout);
}

static void bar_draw(const char *what, double pct, double done, double total, double rate, bool has_eta, double eta)
{
	char bar[21];
	int bars = (int)(pct / 5);
	for (int i = 0; i < 20; i++)
		bar[i] = i < bars ? '#' : '.';
	bar[20] = '\0';
	char etas[32] = "--";
	if (has_eta)
		snprintf(etas, sizeof(etas), "%.0fs", eta);
	fprintf(stderr, "\r%s [%s] %5.1f%%  %.1f/%.1f MiB  %.1f MiB/s  ETA %s   ", what, bar, pct, done / 1048576.0,
	        total / 1048576.0, rate / 1048576.0, etas);
	fflush(stderr);
}

/* ---- online rekey ------------------------------------------------------------------------------ */
/* the serving sweep id in the daemon's reply ("sweep N"), 0 when none */
static uint64_t reply_sweep(const char *reply)
{
	const char *p = strstr(reply, "sweep ");
	while (p) {
		char *end;
		unsigned long long v = strtoull(p + 6, &end, 10);
		if (end != p + 6)
			return v;
		p = strstr(p + 1, "sweep ");
	}
	return 0;
}

int rkc_online_tables_check(const struct rkc_json *st, char **tables, int ntables)
{
	const struct rkc_json *tl = rkc_json_get(st, "tables");
	int ret = 0;
	for (int i = 0; i < ntables && ret == 0; i++) {
		char norm[RK_TABLE_PATH_MAX];
		bool found = false;
		if (rk_table_path_norm(tables[i], norm, sizeof(norm)) < 0) {
			rk_err("rekey: invalid table '%s' (a table is a path from the mount root, such as /ks/t1)", tables[i]);
			return RKC_USAGE;
		}
		for (size_t j = 0; tl && tl->type == RKC_J_ARR && j < tl->n && !found; j++) {
			const char *p = rkc_json_str(tl->kids[j], "path");
			found = p && strcmp(p, norm) == 0;
		}
		if (!found) {
			char list[2048] = "";
			size_t n = 0;
			for (size_t j = 0; tl && tl->type == RKC_J_ARR && j < tl->n && n < sizeof(list); j++) {
				const char *p = rkc_json_str(tl->kids[j], "path");
				n += (size_t)snprintf(list + n, sizeof(list) - n, " %s", p ? p : "?");
			}
			rk_err("rekey: %s is not a table of this mount (tables:%s); create one with rekeyctl alter", norm, list);
			ret = -ENOENT;
		}
	}
	return ret;
}

/* one poll: 1 ended, 0 still running, negative: the daemon is gone */
static int poll_once(const char *root, uint64_t id, const struct rkc_wait *w, struct sweep_view *v,
                     struct rkc_json **keep, time_t *last_json)
{
	struct rkc_json *st = NULL;
	int lvl = rk_log_get_level();
	rk_log_set_level(RK_LOG_ERR - 1);
	int ret = rkc_status_tree(root, &st);
	rk_log_set_level(lvl);
	if (ret < 0)
		return ret;
	const struct rkc_json *wk = rkc_json_get(st, "walker");
	if (!wk) {
		rkc_json_free(st);
		return -EPROTO;
	}
	view_of(wk, v);
	bool ended = v->has_finished && v->finished_sweep >= (double)id;
	bool ours = v->sweep >= (double)id;
	if (v->state && strcmp(v->state, "off") == 0) {
		rkc_json_free(st);
		return -ENOTSUP;
	}
	double pct = ours ? view_percent(v, ended) : 0;
	if (v->bytes_total <= 0 && v->chunks_total <= 0)
		v->has_eta = false; /* the totals are not known yet */
	if (w->json && !ended && time(NULL) != *last_json) {
		struct rkc_pjson p = {.sweep = id, .state = ours ? v->state : "queued", .bytes_done = ours ? v->bytes_done : 0,
		                      .bytes_total = ours ? v->bytes_total : 0, .has_chunks = true,
		                      .chunks_done = ours ? v->chunks_done : 0, .chunks_total = ours ? v->chunks_total : 0,
		                      .percent = pct, .rate = ours ? v->rate : 0, .has_eta = ours && v->has_eta, .eta = v->eta,
		                      .current_file = ours ? v->current_file : NULL, .mode = v->mode ? v->mode : "reseal",
		                      .files_done = ours ? v->files_done : 0, .files_total = ours ? v->files_total : 0};
		rkc_progress_json(&p);
		*last_json = time(NULL);
	}
	if (!w->json && !w->quiet && isatty(STDERR_FILENO))
		bar_draw(!ours ? "queued" : v->mode && strcmp(v->mode, "rewrap") == 0 ? "rewrap" : "rekey", pct, ours ? v->bytes_done : 0, ours ? v->bytes_total : 0,
		         ours ? v->rate : 0, ours && v->has_eta, v->eta);
	rkc_json_free(*keep);
	*keep = st; /* the strings of v point into it */
	return ended ? 1 : 0;
}

/* wait for sweep id of root: 0 complete, -EAGAIN incomplete, else an error */
static int wait_sweep(const char *root, uint64_t id, const struct rkc_wait *w)
{
	struct sweep_view v;
	struct rkc_json *keep = NULL;
	time_t last_json = 0;
	int r;
	while ((r = poll_once(root, id, w, &v, &keep, &last_json)) == 0) {
		struct timespec ts = {0, 250 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (!w->json && !w->quiet && isatty(STDERR_FILENO))
		fputc('\n', stderr);
	if (r < 0) {
		if (r == -ENOTSUP)
			rk_err("the walker of %s is off (mounted with -o walker=off): sweep %" PRIu64 " will not run", root, id);
		else
			rk_err("the daemon of %s went away while waiting for sweep %" PRIu64 " (%s): the sweep did not finish; "
			       "remount and run the command again", root, id, rk_strerror(r));
		rkc_json_free(keep);
		return r == -ENOTSUP ? r : -ENOTCONN;
	}
	bool complete = v.result && strcmp(v.result, "complete") == 0;
	if (w->json) {
		struct rkc_pjson p = {.sweep = id, .state = v.state, .bytes_done = v.bytes_done, .bytes_total = v.bytes_total,
		                      .has_chunks = true, .chunks_done = v.chunks_done, .chunks_total = v.chunks_total,
		                      .percent = view_percent(&v, true), .rate = v.rate, .has_eta = false,
		                      .current_file = NULL, .final = true, .result = v.result ? v.result : "unknown",
		                      .has_remaining = v.has_remaining, .remaining = v.remaining, .reason = v.reason,
		                      .mode = v.mode ? v.mode : "reseal", .files_done = v.files_done,
		                      .files_total = v.files_total};
		rkc_progress_json(&p);
	}
	bool rewrap = v.mode && strcmp(v.mode, "rewrap") == 0;
	if (complete && rewrap) {
		if (!w->quiet)
			fprintf(w->json ? stderr : stdout,
			        "sweep %" PRIu64 " complete: no header of the selected tables wraps a data key under %s (%.0f "
			        "file(s) visited)\n", id, rk_esc(v.rewrap_from ? v.rewrap_from : "?"), v.files_done);
	} else if (complete) {
		if (!w->quiet)
			fprintf(w->json ? stderr : stdout,
			        "sweep %" PRIu64 " complete: every chunk of the selected tables is on its target key\n", id);
	} else if (rewrap) {
		char rem[32] = "an unknown number of";
		if (v.has_remaining)
			snprintf(rem, sizeof(rem), "%.0f", v.remaining);
		rk_err("sweep %" PRIu64 " (rewrap) of %s ended %s: %s file(s) of the selected tables still wrap a data key "
		       "under %s%s%s", id, root, v.result ? v.result : "without a result", rem,
		       v.rewrap_from ? v.rewrap_from : "the old key", v.reason ? ": " : "", v.reason ? v.reason : "");
	} else {
		char rem[32] = "an unknown number of";
		if (v.has_remaining)
			snprintf(rem, sizeof(rem), "%.0f", v.remaining);
		rk_err("sweep %" PRIu64 " of %s ended %s: %s chunk(s) of the selected tables are not on their target key%s%s",
		       id, root, v.result ? v.result : "without a result", rem, v.reason ? ": " : "",
		       v.reason ? v.reason : "");
	}
	rkc_json_free(keep);
	return complete ? 0 : -EAGAIN;
}

int rkc_online_rekey(const char *root, char **tables, int ntables, const struct rkc_wait *w)
{
	return rkc_online_sweep(root, "rekey", tables, ntables, w);
}

int rkc_online_sweep(const char *root, const char *request, char **tables, int ntables, const struct rkc_wait *w)
{
	char *reply = NULL, cmd[8192];
	struct rkc_json *st = NULL;
	int ret = rkc_status_tree(root, &st);
	if (ret == 0)
		ret = rkc_online_tables_check(st, tables, ntables);
	else
		rk_err("cannot read %s/.rekeyfs/status: %s", root, rk_strerror(ret));
	rkc_json_free(st);
	if (ret < 0)
		return ret;
	size_t n = (size_t)snprintf(cmd, sizeof(cmd), "%s", request);
	for (int i = 0; i < ntables; i++) {
		if (strpbrk(tables[i], " \t\n") || n + strlen(tables[i]) + 3 > sizeof(cmd)) {
			rk_err("rekey: table '%s' cannot be sent to the daemon (white space, or too many tables)", tables[i]);
			return RKC_USAGE;
		}
		n += (size_t)snprintf(cmd + n, sizeof(cmd) - n, " %s", tables[i]);
	}
	snprintf(cmd + n, sizeof(cmd) - n, "\n");
	ret = rkc_control(root, cmd, &reply);
	uint64_t id = ret == 0 && reply ? reply_sweep(reply) : 0;
	if (w->json && ret == 0) {
		/* stdout carries JSON lines alone: the reply goes to stderr */
		size_t rl = strlen(reply);
		while (rl && reply[rl - 1] == '\n')
			reply[--rl] = '\0';
		fprintf(stderr, "%s\n", rk_esc(reply + (strncmp(reply, "ok ", 3) == 0 ? 3 : 0)));
		free(reply);
	} else {
		ret = rkc_print_reply(ret, reply);
	}
	if (ret < 0)
		return ret;
	if (!w->wait) {
		if (!w->quiet && !w->json)
			printf("watch it with: rekeyctl status %s (or wait: rekeyctl rekey --wait)\n", rk_esc(root));
		return 0;
	}
	if (id == 0) {
		rk_err("the daemon of %s did not say which sweep serves the request: cannot wait for it (a daemon older "
		       "than this rekeyctl?)", root);
		return -EPROTO;
	}
	return wait_sweep(root, id, w);
}
