/* rekeyfs daemon - the walker's shared state, below walker.c (the sweeps),
 * walker_rewrap.c (the online rewrap) and walker_ctl.c (control, status):
 * the clock, the checkpoint write, the pacing between units of work (rate,
 * pause, stop) and the queueing of requests. */
#include "config.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "daemon.h"
#include "rekeyfs/common.h"
#include "rekeyfs/rekey.h"
#include "walker.h"

double rkd_walker_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait on w->cond (w->lock held) until woken or secs have passed. */
void rkd_walker_wait_secs(struct rkd_walker *w, double secs)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	if (secs > 3600)
		secs = 3600;
	double ns = (double)ts.tv_nsec + (secs - (double)(time_t)secs) * 1e9;
	ts.tv_sec += (time_t)secs + (time_t)(ns / 1e9);
	ts.tv_nsec = (long)(ns - (double)(time_t)(ns / 1e9) * 1e9);
	pthread_cond_timedwait(&w->cond, &w->lock, &ts);
}

/* ---- checkpoint (format: rekeyfs/rekey.h, rekeyfs(5)) -------------------------------------------
 * Written at every state change and at least once a second while a sweep
 * runs (from the throttle and after each file), so what status shows is at
 * most a second ahead of what a restart resumes from: the counters as
 * saved, from the file after `position` (the file being rekeyed is done
 * again). */
int rkd_walker_save(struct rkd_walker *w)
{
	struct rkd_fs *fs = w->fs;
	char *buf = NULL;
	size_t len = 0;
	int ret;
	rk_mutex_lock(&w->ckpt_lock, RK_RANK_CKPT_FILE);
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct rk_rekey_ckpt c = {.state = w->state,
	                          .sweep = w->sweep_id,
	                          .started = w->started,
	                          .finished = w->finished,
	                          .filter = w->filter,
	                          .nfilter = w->nfilter,
	                          .position = w->position,
	                          .tables = w->tables,
	                          .ntables = w->ntables,
	                          .finished_sweep = w->finished_sweep,
	                          .result = w->result,
	                          .remaining = w->remaining,
	                          .remaining_known = w->remaining_known,
	                          .rate = w->rate,
	                          .rate_set = w->rate_set,
	                          .queued = w->qfilter,
	                          .nqueued = w->nqfilter,
	                          .has_queued = w->queued};
	snprintf(c.reason, sizeof(c.reason), "%s", w->reason);
	c.rewrap = w->rewrap;
	c.qrewrap = w->qrewrap;
	memcpy(c.rewrap_from, w->rw_from, sizeof(c.rewrap_from));
	memcpy(c.rewrap_to, w->rw_to, sizeof(c.rewrap_to));
	memcpy(c.qrewrap_from, w->qrw_from, sizeof(c.qrewrap_from));
	memcpy(c.qrewrap_to, w->qrw_to, sizeof(c.qrewrap_to));
	if (w->resume_pending) /* not started yet: still the checkpointed state */
		c.state = w->start_paused ? W_PAUSED : W_RUNNING;
	ret = rk_rekey_ckpt_format(&c, &buf, &len);
	w->last_save = rkd_walker_now();
	rk_mutex_unlock(&w->lock);
	if (ret < 0)
		goto out;
	ret = rk_rekey_ckpt_write(fs->dd->statefd, buf, len);
	if (ret < 0)
		rk_warn("walker: cannot write the checkpoint %s/.rekeyfs/%s: %s", fs->datadir_real, RK_REKEY_CKPT_FILE,
		        rk_strerror(ret));
out:
	rk_mutex_unlock(&w->ckpt_lock);
	free(buf);
	return ret;
}

/* ---- pacing (w->lock held) ------------------------------------------------------------------ */
/* a rate sample at most once a second: the recent rate spans the ring */
static void sample_locked(struct rkd_walker *w, double now)
{
	int last = (w->sample_next + RATE_SAMPLES - 1) % RATE_SAMPLES;
	if (w->nsamples && now - w->samples[last].t < 1.0)
		return;
	w->samples[w->sample_next].t = now;
	w->samples[w->sample_next].bytes = w->sweep_bytes;
	w->sample_next = (w->sample_next + 1) % RATE_SAMPLES;
	if (w->nsamples < RATE_SAMPLES)
		w->nsamples++;
}

int rkd_walker_pace_locked(struct rkd_walker *w, uint64_t bytes)
{
	int ret = 0;
	w->sweep_bytes += bytes;
	w->tokens -= (double)bytes;
	for (;;) {
		double now = rkd_walker_now();
		sample_locked(w, now);
		if (atomic_load(&w->stop)) {
			ret = -ECANCELED;
			break;
		}
		if (w->state == W_PAUSED) {
			rkd_walker_wait_secs(w, 1.0);
			continue;
		}
		double el = now - ((double)w->last_refill.tv_sec + (double)w->last_refill.tv_nsec / 1e9);
		clock_gettime(CLOCK_MONOTONIC, &w->last_refill);
		if (!w->rate) {
			w->tokens = 0;
			break;
		}
		w->tokens = RK_MIN(w->tokens + el * (double)w->rate, (double)w->rate); /* at most one second of burst */
		if (w->tokens >= 0)
			break;
		rkd_walker_wait_secs(w, RK_MIN(-w->tokens / (double)w->rate, 1.0));
	}
	return ret;
}

/* ---- requests ------------------------------------------------------------------------------- */
/* does the sweep of filter[nfilter] select every one of tables[n] (n == 0: every table)? */
static bool covers(char (*filter)[RK_TABLE_PATH_MAX], int nfilter, char (*tables)[RK_TABLE_PATH_MAX], int n)
{
	if (nfilter == 0)
		return true;
	if (n == 0)
		return false;
	for (int i = 0; i < n; i++)
		if (!rk_rekey_filter_has(filter, nfilter, tables[i]))
			return false;
	return true;
}

/* merge tables[n] into the queued request's (every table, 0, absorbs the others) */
static void merge_queued_locked(struct rkd_walker *w, char (*tables)[RK_TABLE_PATH_MAX], int n)
{
	if (w->nqfilter != 0 && n == 0)
		w->nqfilter = 0;
	else if (w->nqfilter != 0)
		for (int i = 0; i < n; i++)
			if (!rk_rekey_filter_has(w->qfilter, w->nqfilter, tables[i]) && w->nqfilter < MAX_TABLES)
				snprintf(w->qfilter[w->nqfilter++], RK_TABLE_PATH_MAX, "%s", tables[i]);
}

/* queue a new request (none is queued) */
static void queue_locked(struct rkd_walker *w, char (*tables)[RK_TABLE_PATH_MAX], int n, bool busy, uint64_t *id,
                         char *how, size_t howlen)
{
	w->queued = true;
	w->nqfilter = n;
	if (n)
		memcpy(w->qfilter, tables, sizeof(tables[0]) * (size_t)n);
	if (busy)
		snprintf(how, howlen, "queued as sweep %" PRIu64 " after sweep %" PRIu64, *id, w->sweep_id);
	else
		snprintf(how, howlen, "sweep %" PRIu64 " started", *id);
}

void rkd_walker_request_locked(struct rkd_walker *w, char (*tables)[RK_TABLE_PATH_MAX], int n, bool may_join,
                               uint64_t *id, char *how, size_t howlen)
{
	bool busy = w->state != W_IDLE || w->resume_pending;
	*id = w->sweep_id + 1;
	if (busy && may_join && !w->rewrap && covers(w->filter, w->nfilter, tables, n)) {
		/* the running sweep selects every table asked for and ends only
		 * when a pass rewrites nothing: it serves the request (a running
		 * rewrap does not: it rewrites no chunk) */
		*id = w->sweep_id;
		snprintf(how, howlen, "joins running sweep %" PRIu64, *id);
	} else if (w->queued) {
		/* join it; a queued rewrap becomes a reseal of both requests' tables:
		 * a reseal does what the rewrap would (no data key left under its
		 * old key in the tables it selects) and more */
		merge_queued_locked(w, tables, n);
		snprintf(how, howlen, "joins queued sweep %" PRIu64 "%s", *id,
		         w->qrewrap ? " (a rewrap, now a reseal of its tables too)" : "");
		w->qrewrap = false;
	} else {
		w->qrewrap = false;
		queue_locked(w, tables, n, busy, id, how, howlen);
	}
	pthread_cond_broadcast(&w->cond);
}

int rkd_walker_rewrap_request_locked(struct rkd_walker *w, char (*tables)[RK_TABLE_PATH_MAX], int n, const char *from,
                                     const char *to, uint64_t *id, char *how, size_t howlen)
{
	bool busy = w->state != W_IDLE || w->resume_pending;
	bool same = w->rewrap && strcmp(w->rw_from, from) == 0 && strcmp(w->rw_to, to) == 0;
	bool qsame = w->qrewrap && strcmp(w->qrw_from, from) == 0 && strcmp(w->qrw_to, to) == 0;
	*id = w->sweep_id + 1;
	if (busy && (same || !w->rewrap) && covers(w->filter, w->nfilter, tables, n)) {
		/* the running rewrap of the same keys, or a reseal (it does more) */
		*id = w->sweep_id;
		snprintf(how, howlen, "joins running sweep %" PRIu64 "%s", *id, w->rewrap ? "" : " (a reseal)");
	} else if (w->queued && w->qrewrap && !qsame) {
		snprintf(how, howlen, "queued sweep %" PRIu64 " rewraps from '%s' to '%s': wait for it first", *id,
		         w->qrw_from, w->qrw_to);
		return -EBUSY;
	} else if (w->queued) {
		merge_queued_locked(w, tables, n);
		snprintf(how, howlen, "joins queued sweep %" PRIu64 "%s", *id, w->qrewrap ? "" : " (a reseal)");
	} else {
		w->qrewrap = true;
		snprintf(w->qrw_from, sizeof(w->qrw_from), "%s", from);
		snprintf(w->qrw_to, sizeof(w->qrw_to), "%s", to);
		queue_locked(w, tables, n, busy, id, how, howlen);
	}
	pthread_cond_broadcast(&w->cond);
	return 0;
}

const char *rkd_walker_state_word(const struct rkd_walker *w)
{
	if (w->state == W_RUNNING)
		return "running";
	if (w->state == W_PAUSED)
		return "paused";
	return w->result == RK_RR_COMPLETE ? "finished" : w->result == RK_RR_INCOMPLETE ? "incomplete" : "idle";
}
