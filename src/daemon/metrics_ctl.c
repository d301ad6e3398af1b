/* rekeyfs daemon - the virtual .rekeyfs/metrics file (Prometheus text
 * exposition, rendered by the library's rekeyfs/metrics.h) and the
 * "metrics-refresh" control command.
 *
 * Coverage (chunks and bytes per table and key, plain files, releasable
 * keys) comes from a headers-only coverage scan cached here, not from a
 * scan per scrape.  The cache is rescanned when it is read and:
 *   - none was made yet (first scrape after mount),
 *   - a sweep finished since (the walker's finished_sweep changed),
 *   - a table's policy changed (alter) since,
 *   - it is older than METRICS_MAX_AGE_RUNNING s while a sweep runs, or
 *     METRICS_MAX_AGE_IDLE s otherwise,
 *   - "metrics-refresh" asked for it (rekeyctl metrics --refresh), which
 *     rescans at once.
 * rekeyfs_coverage_timestamp_seconds says when the series were counted. */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "daemon.h"
#include "rekeyfs/common.h"
#include "rekeyfs/coverage.h"
#include "rekeyfs/metrics.h"
#include "walker.h"

#define METRICS_MAX_AGE_RUNNING 60.0
#define METRICS_MAX_AGE_IDLE 300.0

/* rank RK_RANK_METRICS (11): the cache below; held across a rescan (one at
 * a time), taken with no other lock held */
static pthread_mutex_t mlock = PTHREAD_MUTEX_INITIALIZER;
static struct rk_cov *mcov;
static double mcov_time, mcov_mono, mcov_scan_s;
static uint64_t mcov_sweep;
static unsigned mcov_gen;
static bool mcov_dirty;
/* rank RK_RANK_COVSUM (89): the summary of the cached coverage shown in
 * .rekeyfs/status, rendered after each rescan; held only to swap or copy
 * the string, so a status read never waits for a scan */
static pthread_mutex_t slock = PTHREAD_MUTEX_INITIALIZER;
static char *msummary;

static double now_clock(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void flush_open(struct rkd_file *f, void *arg)
{
	(void)arg;
	if (f->rw && f->cf) {
		int r = rk_cf_flush(f->cf);
		if (r < 0)
			rk_warn("metrics: %s: header write failed: %s", rk_cf_path(f->cf), rk_strerror(r));
	}
}

/* the finished sweep and whether one runs (0, false with the walker off) */
static void walker_sweep(struct rkd_fs *fs, uint64_t *finished, bool *running)
{
	*finished = 0;
	*running = false;
	if (!fs->w)
		return;
	rk_mutex_lock(&fs->w->lock, RK_RANK_WALKER);
	*finished = fs->w->finished_sweep;
	*running = fs->w->state != W_IDLE;
	rk_mutex_unlock(&fs->w->lock);
}

/* The "coverage" object of the status JSON from cov: per table and key the
 * chunks and the files wrapping a data key under it; per registry key the
 * totals, the compromised mark, the exposed chunks and files, and whether
 * nothing counted needs it any more (the releasable gauge of the metrics). */
static char *summary_json(const struct rk_cov *c, double when, double scan_s, uint64_t sweep)
{
	struct rkd_jbuf b = {0};
	rkd_jb_printf(&b, "{\"counted_at\": %.3f, \"scan_seconds\": %.3f, \"after_sweep\": %" PRIu64 ", \"tables\": [",
	              when, scan_s, sweep);
	for (size_t i = 0; i < c->ntables; i++) {
		const struct rk_cov_table *t = &c->tables[i];
		rkd_jb_printf(&b, "%s\n      {\"path\": ", i ? "," : "");
		rkd_jb_str(&b, t->path);
		rkd_jb_printf(&b, ", \"target\": ");
		rkd_jb_str(&b, t->target);
		rkd_jb_printf(&b,
		              ", \"chunk_files\": %" PRIu64 ", \"v2_files\": %" PRIu64 ", \"chunks\": %" PRIu64
		              ", \"chunks_on_target\": %" PRIu64 ", \"files_off_target\": %" PRIu64 ", \"keys\": [",
		              t->chunk_files, t->v2_files, t->chunks, t->chunks_on_target, t->files_off_target);
		for (size_t k = 0; k < t->nkeys; k++) {
			rkd_jb_printf(&b, "%s{\"key\": ", k ? ", " : "");
			rkd_jb_str(&b, t->keys[k].name);
			rkd_jb_printf(&b, ", \"chunks\": %" PRIu64 ", \"files\": %" PRIu64 ", \"wrapped_files\": %" PRIu64 "}",
			              t->keys[k].chunks, t->keys[k].files, t->keys[k].wrapped_files);
		}
		rkd_jb_printf(&b, "], \"exposed\": [");
		bool first = true;
		for (size_t r = 0; t->exposed && r < c->nregistry; r++) {
			if (!c->registry[r].compromised)
				continue;
			rkd_jb_printf(&b, "%s{\"key\": ", first ? "" : ", ");
			rkd_jb_str(&b, c->registry[r].name);
			rkd_jb_printf(&b, ", \"chunks\": %" PRIu64 ", \"files\": %" PRIu64 "}", t->exposed[r].chunks,
			              t->exposed[r].files);
			first = false;
		}
		rkd_jb_printf(&b, "]}");
	}
	rkd_jb_printf(&b, "\n    ], \"keys\": [");
	for (size_t r = 0; r < c->nregistry; r++) {
		const struct rk_cov_regkey *k = &c->registry[r];
		uint64_t chunks = rk_cov_key_chunks(c, k->name), wrapped = rk_cov_key_wrapped(c, k->name);
		const struct rk_cov_exposure *x = c->total.exposed ? &c->total.exposed[r] : NULL;
		rkd_jb_printf(&b, "%s\n      {\"key\": ", r ? "," : "");
		rkd_jb_str(&b, k->name);
		rkd_jb_printf(&b,
		              ", \"state\": \"%s\", \"chunks\": %" PRIu64 ", \"wrapped_files\": %" PRIu64
		              ", \"compromised\": %s, \"exposed_chunks\": %" PRIu64 ", \"exposed_files\": %" PRIu64
		              ", \"unused\": %s}",
		              rk_keystate_name(k->state), chunks, wrapped, k->compromised ? "true" : "false",
		              x && k->compromised ? x->chunks : 0, x && k->compromised ? x->files : 0,
		              chunks == 0 && wrapped == 0 ? "true" : "false");
	}
	rkd_jb_printf(&b, "\n    ]}");
	if (b.err) {
		free(b.p);
		return NULL;
	}
	return b.p;
}

/* rescan (mlock held) */
static int rescan(struct rkd_fs *fs)
{
	struct rk_datadir snap;
	struct rk_cov *cov = NULL;
	int ret;
	uint64_t fin;
	bool running;
	walker_sweep(fs, &fin, &running);
	unsigned gen = atomic_load(&fs->policy_gen);
	ret = rkd_policy_snapshot(fs, &snap);
	if (ret < 0)
		goto out;
	/* pending journal images in place and open files' header counts on
	 * disk, so that the headers-only scan counts what was written */
	ret = rk_journal_checkpoint(fs->j);
	if (ret < 0)
		rk_warn("metrics: journal checkpoint failed: %s; chunks written since the last commit may not be counted",
		        rk_strerror(ret));
	rkd_for_each_open(fs, flush_open, NULL);
	double t0 = now_clock(CLOCK_MONOTONIC);
	ret = rk_coverage_scan(&snap, NULL, &cov);
	if (ret < 0) {
		rk_warn("metrics: coverage scan of %s failed: %s", fs->datadir_real, rk_strerror(ret));
		goto out;
	}
	cov->online = true;
	rk_coverage_free(mcov);
	mcov = cov;
	mcov_mono = now_clock(CLOCK_MONOTONIC);
	mcov_scan_s = mcov_mono - t0;
	mcov_time = now_clock(CLOCK_REALTIME);
	mcov_sweep = fin;
	mcov_gen = gen;
	mcov_dirty = false;
	char *sum = summary_json(cov, mcov_time, mcov_scan_s, fin);
	rk_mutex_lock(&slock, RK_RANK_COVSUM);
	free(msummary);
	msummary = sum; /* NULL (out of memory): status shows no counts */
	rk_mutex_unlock(&slock);
	ret = 0;
out:
	rkd_policy_snapshot_free(&snap);
	return ret;
}

/* mlock held */
static bool stale(struct rkd_fs *fs)
{
	uint64_t fin;
	bool running;
	if (!mcov || mcov_dirty)
		return true;
	walker_sweep(fs, &fin, &running);
	if (fin != mcov_sweep || atomic_load(&fs->policy_gen) != mcov_gen)
		return true;
	return now_clock(CLOCK_MONOTONIC) - mcov_mono > (running ? METRICS_MAX_AGE_RUNNING : METRICS_MAX_AGE_IDLE);
}

int rkd_metrics_text(struct rkd_fs *fs, char **out, size_t *len)
{
	struct rk_metrics_src s;
	struct rk_journal_stats js;
	memset(&s, 0, sizeof(s));
	s.version = PACKAGE_VERSION;
	s.mount = fs->mountpoint ? fs->mountpoint : "";
	s.data_dir = fs->datadir_real;
	s.key_dir = rk_keyring_dir(fs->kr);
	rkd_walker_metrics(fs, &s);
	s.read_errors = (uint64_t)atomic_load(&fs->st.read_errors);
	s.write_errors = (uint64_t)atomic_load(&fs->st.write_errors);
	rk_journal_get_stats(fs->j, &js);
	s.j_commits = js.commits;
	s.j_fsyncs = js.fsyncs;
	s.j_fsyncs_in_place = js.fsyncs_in_place;
	s.j_checkpoints = js.checkpoints;
	rk_mutex_lock(&mlock, RK_RANK_METRICS);
	if (stale(fs))
		rescan(fs); /* on failure the older counts (or none) are shown; logged */
	s.cov = mcov;
	s.cov_time = mcov_time;
	s.cov_scan_seconds = mcov_scan_s;
	int ret = rk_metrics_render(&s, out, len);
	rk_mutex_unlock(&mlock);
	return ret;
}

int rkd_metrics_control(struct rkd_fs *fs, const char *cmd, char *args, char **out, size_t *len)
{
	(void)cmd;
	if (args && args[strspn(args, " \t")])
		return rkd_reply(out, len, -EINVAL, "usage: metrics-refresh");
	rk_mutex_lock(&mlock, RK_RANK_METRICS);
	mcov_dirty = true;
	int ret = rescan(fs);
	uint64_t chunks = mcov ? mcov->total.chunks : 0;
	double secs = mcov_scan_s;
	rk_mutex_unlock(&mlock);
	if (ret < 0)
		return rkd_reply(out, len, ret, "metrics-refresh: the coverage scan failed: %s", rk_strerror(ret));
	return rkd_reply(out, len, 0, "coverage refreshed: %" PRIu64 " chunks counted in %.3f s", chunks, secs);
}

void rkd_metrics_status_json(struct rkd_jbuf *b)
{
	rk_mutex_lock(&slock, RK_RANK_COVSUM);
	rkd_jb_printf(b, "  \"coverage\": %s,\n", msummary ? msummary : "null");
	rk_mutex_unlock(&slock);
}

void rkd_metrics_free(void)
{
	rk_mutex_lock(&mlock, RK_RANK_METRICS);
	rk_coverage_free(mcov);
	mcov = NULL;
	rk_mutex_unlock(&mlock);
	rk_mutex_lock(&slock, RK_RANK_COVSUM);
	free(msummary);
	msummary = NULL;
	rk_mutex_unlock(&slock);
}
