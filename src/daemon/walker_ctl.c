/* rekeyfs daemon - the walker's control commands (rekey, rewrap, pause, resume,
 * rate, release) and its part of the status JSON (rekeyfs(8), STATUS). */
#include "config.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "daemon.h"
#include "rekeyfs/common.h"
#include "rekeyfs/metrics.h"
#include "rekeyfs/rekey.h"
#include "walker.h"

/* ---- key release ----------------------------------------------------------------------------- */
static void forget_in(struct rkd_file *f, void *arg) { rk_cf_forget_key(f->cf, (const char *)arg); }

static int release_key(struct rkd_fs *fs, const char *name, char **out, size_t *len)
{
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	struct rk_regent *re = rk_registry_find(fs->dd, name);
	enum rk_keystate st = re ? re->state : RK_KS_ACTIVE;
	const char *target_of = rk_release_targeted_by(fs->dd, name);
	char tbuf[RK_TABLE_PATH_MAX] = "";
	if (target_of)
		snprintf(tbuf, sizeof(tbuf), "%s", target_of);
	rk_rw_unlock(&fs->policy_lock);
	if (!re)
		return rkd_reply(out, len, -ENOENT, "key '%s' is not in this data directory's registry", name);
	if (st == RK_KS_RELEASED)
		return rkd_reply(out, len, 0, "key '%s' is already released", name);
	if (tbuf[0])
		return rkd_reply(out, len, -EBUSY,
		                 "release of '%s' refused: table %s still has it as target key; alter the table to the new "
		                 "key and rekey first",
		                 name, tbuf);
	/* header counts can be stale after a crash: read every chunk's key reference */
	rk_journal_commit(fs->j);
	struct rk_rekey_access acc = {.key_refs = rkd_walker_key_refs, .arg = fs};
	struct rk_release_verdict v;
	int ret = rk_release_scan(fs->rootfd, name, &acc, &v);
	if (ret < 0)
		return rkd_reply(out, len, ret, "release of '%s' refused: the scan failed: %s", name, rk_strerror(ret));
	if (!rk_release_allowed(&v)) {
		char list[RK_RELEASE_FIRST * PATH_MAX + 16];
		rk_release_list(&v, list, sizeof(list));
		return rkd_reply(out, len, -EBUSY,
		                 "release of '%s' refused: %" PRIu64 " chunk(s) in %" PRIu64 " file(s) are still under it (%s); %" PRIu64
		                 " format 2 header(s) wrap a data key under it; run 'rekeyctl rotate --rewrap' (headers) or "
		                 "'rekeyctl rekey' and wait for the sweep",
		                 name, v.chunks, v.files, list, v.wrapped);
	}
	/* the journal's records are authenticated under one key: not this one any more */
	char rootkey[RK_KEY_NAME_MAX + 1];
	struct rk_key *nk;
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	snprintf(rootkey, sizeof(rootkey), "%s", rk_policy_lookup(fs->dd, "/")->key);
	rk_rw_unlock(&fs->policy_lock);
	ret = rk_keyring_get(fs->kr, rootkey, &nk);
	if (ret == 0)
		ret = rk_journal_release_key(fs->j, name, nk);
	if (ret < 0)
		return rkd_reply(out, len, ret, "release of '%s' refused: the journal cannot move to key '%s': %s", name,
		                 rootkey, rk_strerror(ret));
	rk_rw_wrlock(&fs->policy_lock, RK_RANK_POLICY);
	re = rk_registry_find(fs->dd, name);
	if (re)
		re->state = RK_KS_RELEASED;
	ret = rk_registry_save(fs->dd);
	rk_rw_unlock(&fs->policy_lock);
	if (ret < 0)
		return rkd_reply(out, len, ret, "release of '%s': cannot save the registry: %s", name, rk_strerror(ret));
	rk_keyring_release(fs->kr, name);
	rkd_for_each_open(fs, forget_in, (void *)name);
	rk_info("key '%s' released: no chunk is under it; its material is wiped from memory", name);
	return rkd_reply(out, len, 0,
	                 "key '%s' released: 0 chunks under it; the daemon no longer holds it and the registry marks it "
	                 "released (the key file may now be moved away)",
	                 name);
}

/* ---- control ----------------------------------------------------------------------------------- */
/* the tables of a rekey request: normalised, each a table of the policy */
static int parse_tables(struct rkd_fs *fs, char *args, char (*tables)[RK_TABLE_PATH_MAX], int *n, char **out,
                        size_t *len)
{
	char unknown[1024] = "";
	size_t ul = 0;
	char *save = NULL;
	*n = 0;
	for (char *t = strtok_r(args, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
		char norm[RK_TABLE_PATH_MAX];
		if (rk_table_path_norm(t, norm, sizeof(norm)) < 0)
			return rkd_reply(out, len, -EINVAL, "invalid table '%s' (a table is a path such as /ks1/t1)", t);
		if (*n == MAX_TABLES)
			return rkd_reply(out, len, -E2BIG, "too many tables in one request (at most %d)", MAX_TABLES);
		rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
		const struct rk_table *tab = rk_policy_lookup(fs->dd, norm);
		bool known = tab && strcmp(tab->path, norm) == 0;
		rk_rw_unlock(&fs->policy_lock);
		if (!known) {
			ul += (size_t)snprintf(unknown + ul, ul < sizeof(unknown) ? sizeof(unknown) - ul : 0, "%s%s",
			                       ul ? ", " : "", norm);
			ul = RK_MIN(ul, sizeof(unknown) - 1);
			continue;
		}
		if (!rk_rekey_filter_has(tables, *n, norm) || *n == 0)
			snprintf(tables[(*n)++], RK_TABLE_PATH_MAX, "%s", norm);
	}
	if (unknown[0])
		return rkd_reply(out, len, -ENOENT,
		                 "unknown table(s) %s: not a table of this data directory's policy (see rekeyctl status)",
		                 unknown);
	return 1;
}

/* the rekey request of a table whose target key an alter changed (ctl.c);
 * *how says what happened ("" when no sweep runs: nothing queued) */
void rkd_walker_altered(struct rkd_fs *fs, const char *table, char *how, size_t howlen)
{
	struct rkd_walker *w = fs->w;
	how[0] = '\0';
	if (!w)
		return;
	char t[1][RK_TABLE_PATH_MAX];
	snprintf(t[0], sizeof(t[0]), "%s", table);
	uint64_t id;
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	bool busy = w->state != W_IDLE || w->resume_pending || w->queued;
	if (busy)
		rkd_walker_request_locked(w, t, 1, false, &id, how, howlen); /* the target changed: a new sweep */
	rk_mutex_unlock(&w->lock);
	if (busy)
		rkd_walker_save(w);
}

/* rewrap FROM TO [TABLE...]: an online rewrap sweep of the tables (every
 * table without one); rewrap-check FROM TO: only whether the keys allow it */
static int rewrap_control(struct rkd_fs *fs, bool check_only, char *args, char **out, size_t *len)
{
	struct rkd_walker *w = fs->w;
	char *save = NULL, why[512];
	char *from = strtok_r(args, " \t", &save), *to = strtok_r(NULL, " \t", &save);
	char *rest = save ? save : (char *)"";
	if (!from || !to || rk_key_name_check(from) < 0 || rk_key_name_check(to) < 0 || strcmp(from, to) == 0)
		return rkd_reply(out, len, -EINVAL, "usage: rewrap OLD NEW [TABLE...] (two different key names)");
	int ret = rkd_rewrap_keys_check(fs, from, to, why, sizeof(why));
	if (ret < 0)
		return rkd_reply(out, len, ret, "rewrap from '%s' to '%s' refused: %s", from, to, why);
	if (check_only)
		return rkd_reply(out, len, 0, "rewrap from '%s' to '%s' possible", from, to);
	char(*tables)[RK_TABLE_PATH_MAX] = calloc(MAX_TABLES, sizeof(*tables));
	int n;
	if (!tables)
		return rkd_reply(out, len, -ENOMEM, "rewrap: out of memory");
	int pr = parse_tables(fs, rest, tables, &n, out, len);
	if (pr > 0) {
		uint64_t id;
		char how[256];
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
		ret = rkd_walker_rewrap_request_locked(w, tables, n, from, to, &id, how, sizeof(how));
		rk_mutex_unlock(&w->lock);
		if (ret == 0)
			rkd_walker_save(w);
		pr = ret < 0 ? rkd_reply(out, len, ret, "rewrap refused: %s", how) : rkd_reply(out, len, 0, "%s", how);
	}
	free(tables);
	return pr;
}

int rkd_walker_control(struct rkd_fs *fs, const char *cmd, char *args, char **out, size_t *len)
{
	struct rkd_walker *w = fs->w;
	if (strcmp(cmd, "release") == 0) {
		char *save = NULL, *name = strtok_r(args, " \t", &save);
		if (!name || rk_key_name_check(name) < 0)
			return rkd_reply(out, len, -EINVAL, "usage: release KEY");
		return release_key(fs, name, out, len);
	}
	if (!w)
		return rkd_reply(out, len, -ENOTSUP, "the walker is off (mounted with -o walker=off)");
	if (strcmp(cmd, "rewrap") == 0 || strcmp(cmd, "rewrap-check") == 0)
		return rewrap_control(fs, strcmp(cmd, "rewrap-check") == 0, args, out, len);
	if (strcmp(cmd, "rekey") == 0 || strcmp(cmd, "scan") == 0) {
		char(*tables)[RK_TABLE_PATH_MAX] = calloc(MAX_TABLES, sizeof(*tables));
		int n;
		if (!tables)
			return rkd_reply(out, len, -ENOMEM, "rekey: out of memory");
		int pr = parse_tables(fs, args, tables, &n, out, len);
		if (pr > 0) {
			uint64_t id;
			char how[160];
			rk_mutex_lock(&w->lock, RK_RANK_WALKER);
			rkd_walker_request_locked(w, tables, n, true, &id, how, sizeof(how));
			rk_mutex_unlock(&w->lock);
			rkd_walker_save(w);
			pr = rkd_reply(out, len, 0, "%s", how);
		}
		free(tables);
		return pr;
	}
	uint64_t r = 0;
	if (strcmp(cmd, "rate") == 0) {
		char *save = NULL, *a = strtok_r(args, " \t", &save);
		if (!a || strtok_r(NULL, " \t", &save) || rk_parse_rate(a, &r) < 0)
			return rkd_reply(out, len, -EINVAL,
			                 "rate '%s': use N, NK/NM/NG or NKiB/NMiB/NGiB (x1024), NKB/NMB/NGB (x1000), 0 or "
			                 "unlimited; at most 1TiB/s",
			                 a ? a : "");
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	if (strcmp(cmd, "pause") == 0) {
		if (w->state == W_RUNNING)
			w->state = W_PAUSED;
		else if (w->resume_pending)
			w->start_paused = true;
	} else if (strcmp(cmd, "resume") == 0) {
		if (w->state == W_PAUSED)
			w->state = W_RUNNING;
		w->start_paused = false;
	} else {
		w->rate = r;
		w->rate_set = true;
	}
	pthread_cond_broadcast(&w->cond); /* the throttle recomputes at once */
	const char *stn = rkd_walker_state_word(w);
	uint64_t rate = w->rate;
	rk_mutex_unlock(&w->lock);
	rkd_walker_save(w); /* outside the walker lock: file I/O */
	return rkd_reply(out, len, 0, "walker %s, rate %" PRIu64 " bytes/s%s", stn, rate, rate ? "" : " (unlimited)");
}

/* ---- status ------------------------------------------------------------------------------------- */
static void jb_u64_or_null(struct rkd_jbuf *b, bool known, uint64_t v)
{
	if (known)
		rkd_jb_printf(b, "%" PRIu64, v);
	else
		rkd_jb_printf(b, "null");
}

static void jb_str_or_null(struct rkd_jbuf *b, const char *s)
{
	if (s)
		rkd_jb_str(b, s);
	else
		rkd_jb_printf(b, "null");
}

static void jb_tables_list(struct rkd_jbuf *b, char (*t)[RK_TABLE_PATH_MAX], int n)
{
	rkd_jb_printf(b, "[");
	for (int i = 0; i < n; i++) {
		rkd_jb_printf(b, "%s", i ? ", " : "");
		rkd_jb_str(b, t[i]);
	}
	rkd_jb_printf(b, "]");
}

/* the recent rate of rewritten bytes: from the oldest sample of the last ~5 s */
static double recent_rate(const struct rkd_walker *w, double now)
{
	if (w->state == W_IDLE || w->nsamples == 0)
		return 0;
	int pick = -1;
	for (int i = 0; i < w->nsamples; i++) {
		int k = (w->sample_next - w->nsamples + i + RATE_SAMPLES) % RATE_SAMPLES;
		if (now - w->samples[k].t <= 5.5) {
			pick = k;
			break;
		}
	}
	if (pick < 0) /* nothing for a while: the rate since the newest sample */
		pick = (w->sample_next + RATE_SAMPLES - 1) % RATE_SAMPLES;
	double dt = now - w->samples[pick].t;
	return dt >= 0.5 ? (double)(w->sweep_bytes - w->samples[pick].bytes) / dt : 0;
}

/* one table: its progress never reaches 100% while chunks failed or remain */
static void table_json(const struct rkd_walker *w, const struct rk_rekey_tstat *t, struct rkd_jbuf *b, bool first)
{
	bool running = w->state != W_IDLE;
	bool done = t->counted && t->remaining == 0 && t->chunks_failed == 0;
	double pct = t->chunks_total ? 100.0 * (double)t->chunks_done / (double)t->chunks_total : 0.0;
	if (w->rewrap) /* a rewrap's progress is in files */
		pct = t->files_total ? 100.0 * (double)t->files_done / (double)t->files_total : 0.0;
	if (done && !running)
		pct = 100.0;
	else if (pct > 99.9)
		pct = 99.9;
	const char *st = running ? rkd_walker_state_word(w) : !t->counted ? "idle" : done ? "finished" : "incomplete";
	rkd_jb_printf(b, "%s\n      {\"path\": ", first ? "" : ",");
	rkd_jb_str(b, t->path);
	rkd_jb_printf(b,
	              ", \"state\": \"%s\", \"files_total\": %" PRIu64 ", \"files_done\": %" PRIu64
	              ", \"chunks_total\": %" PRIu64 ", \"chunks_done\": %" PRIu64 ", \"bytes_total\": %" PRIu64
	              ", \"bytes_done\": %" PRIu64,
	              st, t->files_total, t->files_done, t->chunks_total, t->chunks_done, t->bytes_total, t->bytes_done);
	rkd_jb_printf(b,
	              ", \"chunks_to_rewrite\": %" PRIu64 ", \"chunks_rewritten\": %" PRIu64
	              ", \"bytes_rewritten\": %" PRIu64 ", \"chunks_failed\": %" PRIu64 ", \"remaining_chunks\": ",
	              t->chunks_todo, t->chunks_rewritten, t->bytes_rewritten, t->chunks_failed);
	jb_u64_or_null(b, t->counted && !running, t->remaining);
	rkd_jb_printf(b, ", \"percent\": %.1f}", pct);
}

static void errors_json(const struct rkd_walker *w, struct rkd_jbuf *b)
{
	rkd_jb_printf(b, ",\n    \"errors\": [");
	for (int i = 0; w && i < w->nerrors; i++) {
		const struct werr *e = &w->errors[(w->error_next - w->nerrors + i + MAX_ERRORS) % MAX_ERRORS];
		rkd_jb_printf(b, "%s\n      {\"time\": %lld, \"path\": ", i ? "," : "", (long long)e->time);
		jb_str_or_null(b, e->path[0] ? e->path : NULL);
		rkd_jb_printf(b, ", \"chunk\": ");
		jb_u64_or_null(b, e->has_chunk, e->chunk);
		rkd_jb_printf(b, ", \"cause\": ");
		rkd_jb_str(b, e->cause);
		rkd_jb_printf(b, "}");
	}
	rkd_jb_printf(b, "%s]\n  },\n", w && w->nerrors ? "\n    " : "");
}

/* the walker mounted with -o walker=off: every field, none known */
static void off_json(struct rkd_jbuf *b)
{
	rkd_jb_printf(b, "  \"walker\": {\"state\": \"off\", \"sweep\": 0, \"finished_sweep\": null, \"queued\": [], "
	                 "\"selected_tables\": [],\n    \"mode\": \"reseal\", \"rewrap_from\": null, \"rewrap_to\": null, "
	                 "\"files_rewrapped\": 0,\n    \"bytes_done\": 0, \"bytes_total\": 0, \"chunks_done\": 0, "
	                 "\"chunks_total\": 0, \"files_done\": 0, \"files_total\": 0, \"chunks_failed\": 0,\n");
	rkd_jb_printf(b, "    \"current_file\": null, \"current_offset\": null, \"position\": null, "
	                 "\"rate_bytes_per_s\": 0, \"rate_limit\": 0, \"eta_s\": null, \"started\": null, "
	                 "\"finished\": null,\n    \"result\": null, \"remaining_chunks\": null, \"reason\": null, "
	                 "\"waiting_for_space\": false,\n");
	rkd_jb_printf(b, "    \"chunks_rewritten_walker\": 0, \"chunks_rewritten_lazy\": 0, \"files_replaced\": 0, "
	                 "\"lazy_queued\": 0, \"lazy_dropped\": 0, \"error_count\": 0,\n    \"tables\": []");
	errors_json(NULL, b);
}

static void head_json(const struct rkd_walker *w, struct rkd_jbuf *b)
{
	rkd_jb_printf(b, "  \"walker\": {\"state\": \"%s\", \"sweep\": %" PRIu64 ", \"finished_sweep\": ",
	              rkd_walker_state_word(w), w->sweep_id);
	jb_u64_or_null(b, w->finished_sweep != 0, w->finished_sweep);
	rkd_jb_printf(b, ", \"queued\": [");
	if (w->queued) {
		rkd_jb_printf(b, "{\"sweep\": %" PRIu64 ", \"tables\": ", w->sweep_id + 1);
		jb_tables_list(b, (char(*)[RK_TABLE_PATH_MAX])w->qfilter, w->nqfilter);
		rkd_jb_printf(b, "}");
	}
	rkd_jb_printf(b, "], \"selected_tables\": ");
	jb_tables_list(b, (char(*)[RK_TABLE_PATH_MAX])w->filter, w->nfilter);
	/* the sweep's kind: a reseal (chunks) or a rewrap (headers: files) */
	rkd_jb_printf(b, ",\n    \"mode\": \"%s\", \"rewrap_from\": ", w->rewrap ? "rewrap" : "reseal");
	jb_str_or_null(b, w->rewrap ? w->rw_from : NULL);
	rkd_jb_printf(b, ", \"rewrap_to\": ");
	jb_str_or_null(b, w->rewrap ? w->rw_to : NULL);
	rkd_jb_printf(b, ", \"files_rewrapped\": %" PRIu64, (uint64_t)atomic_load(&w->files_rewrapped));
}

void rkd_walker_json(struct rkd_fs *fs, struct rkd_jbuf *b)
{
	struct rkd_walker *w = fs->w;
	if (!w) {
		off_json(b);
		return;
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	bool running = w->state != W_IDLE;
	uint64_t bd = 0, bt = 0, cd = 0, ct = 0, fd = 0, ft = 0, failed = 0, todo = 0, rew = 0;
	for (int i = 0; i < w->ntables; i++) {
		const struct rk_rekey_tstat *t = &w->tables[i];
		bd += t->bytes_done, bt += t->bytes_total, cd += t->chunks_done, ct += t->chunks_total;
		fd += t->files_done, ft += t->files_total, failed += t->chunks_failed;
		todo += t->bytes_todo, rew += t->bytes_rewritten;
	}
	double rate = recent_rate(w, rkd_walker_now());
	head_json(w, b);
	rkd_jb_printf(b,
	              ",\n    \"bytes_done\": %" PRIu64 ", \"bytes_total\": %" PRIu64 ", \"chunks_done\": %" PRIu64
	              ", \"chunks_total\": %" PRIu64 ", \"files_done\": %" PRIu64 ", \"files_total\": %" PRIu64
	              ", \"chunks_failed\": %" PRIu64 ",\n    \"current_file\": ",
	              bd, bt, cd, ct, fd, ft, failed);
	jb_str_or_null(b, running && w->cur_valid ? w->cur_file : NULL);
	rkd_jb_printf(b, ", \"current_offset\": ");
	jb_u64_or_null(b, running && w->cur_valid, w->cur_off);
	rkd_jb_printf(b, ", \"position\": ");
	jb_str_or_null(b, running && w->position[0] ? w->position : NULL);
	rkd_jb_printf(b, ", \"rate_bytes_per_s\": %.0f, \"rate_limit\": %" PRIu64 ", \"eta_s\": ", rate, w->rate);
	if (running && rate >= 1.0)
		rkd_jb_printf(b, "%.0f", (double)(todo > rew ? todo - rew : 0) / rate);
	else
		rkd_jb_printf(b, "%s", running && todo <= rew ? "0" : "null");
	rkd_jb_printf(b, ", \"started\": ");
	jb_u64_or_null(b, w->started != 0, (uint64_t)w->started);
	rkd_jb_printf(b, ", \"finished\": ");
	jb_u64_or_null(b, !running && w->finished != 0, (uint64_t)w->finished);
	rkd_jb_printf(b, ",\n    \"result\": ");
	jb_str_or_null(b, rk_rekey_result_name(w->result));
	rkd_jb_printf(b, ", \"remaining_chunks\": ");
	jb_u64_or_null(b, w->finished_sweep != 0 && w->remaining_known, w->remaining);
	rkd_jb_printf(b, ", \"reason\": ");
	jb_str_or_null(b, w->result == RK_RR_INCOMPLETE ? w->reason : NULL);
	rkd_jb_printf(b,
	              ", \"waiting_for_space\": %s,\n    \"chunks_rewritten_walker\": %" PRIu64
	              ", \"chunks_rewritten_lazy\": %" PRIu64 ", \"files_replaced\": %" PRIu64
	              ", \"lazy_queued\": %" PRIu64 ", \"lazy_dropped\": %" PRIu64 ", \"error_count\": %" PRIu64
	              ",\n    \"tables\": [",
	              w->waiting_space ? "true" : "false", (uint64_t)atomic_load(&w->walker_rewritten),
	              (uint64_t)atomic_load(&w->lazy_rewritten), (uint64_t)atomic_load(&w->files_replaced),
	              (uint64_t)atomic_load(&w->lazy_queued), (uint64_t)atomic_load(&w->lazy_dropped), w->error_count);
	for (int i = 0; i < w->ntables; i++)
		table_json(w, &w->tables[i], b, i == 0);
	rkd_jb_printf(b, "%s]", w->ntables ? "\n    " : "");
	errors_json(w, b);
	rk_mutex_unlock(&w->lock);
}

/* ---- metrics ------------------------------------------------------------------------------------ */
/* the same numbers as the status JSON's walker part (bytes, ETA, state) */
void rkd_walker_metrics(struct rkd_fs *fs, struct rk_metrics_src *s)
{
	struct rkd_walker *w = fs->w;
	if (!w) {
		s->sweep_state = "off";
		return;
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	bool running = w->state != W_IDLE;
	uint64_t bd = 0, bt = 0, todo = 0, rew = 0;
	for (int i = 0; i < w->ntables; i++) {
		bd += w->tables[i].bytes_done, bt += w->tables[i].bytes_total;
		todo += w->tables[i].bytes_todo, rew += w->tables[i].bytes_rewritten;
	}
	double rate = recent_rate(w, rkd_walker_now());
	s->sweep_state = rkd_walker_state_word(w);
	s->sweep_bytes_done = bd;
	s->sweep_bytes_total = bt;
	s->eta_known = running && (rate >= 1.0 || todo <= rew);
	s->eta_seconds = running && rate >= 1.0 ? (double)(todo > rew ? todo - rew : 0) / rate : 0;
	if (s->eta_known) /* whole seconds, as in the status */
		s->eta_seconds = (double)(uint64_t)(s->eta_seconds + 0.5);
	s->lazy_dropped = (uint64_t)atomic_load(&w->lazy_dropped);
	s->chunks_rewritten_walker = (uint64_t)atomic_load(&w->walker_rewritten);
	s->chunks_rewritten_lazy = (uint64_t)atomic_load(&w->lazy_rewritten);
	rk_mutex_unlock(&w->lock);
}
