/* rekeyfs daemon - online rekey: the background walker (one sweep at a
 * time, requests queued behind it, rate limited, yielding to foreground
 * I/O, pausable, resumable from a checkpoint in DATADIR/.rekeyfs/walker)
 * and the lazy rewrite-on-read worker.  Control and status: walker_ctl.c. */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/rekey.h"
#include "rekeyfs/sweep.h"
#include "rekeyfs/walk.h"
#include "walker.h"

/* Record an error in the ring shown by status (takes w->lock: call without
 * it).  path: the file ("" or NULL: none); chunk: its chunk, or UINT64_MAX. */
static void add_error(struct rkd_walker *w, const char *path, uint64_t chunk, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void add_error(struct rkd_walker *w, const char *path, uint64_t chunk, const char *fmt, ...)
{
	char msg[sizeof(w->errors[0].cause)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (path && path[0] && chunk != UINT64_MAX)
		rk_err("walker: %s: chunk %" PRIu64 ": %s", path, chunk, msg);
	else if (path && path[0])
		rk_err("walker: %s: %s", path, msg);
	else
		rk_err("walker: %s", msg);
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct werr *e = &w->errors[w->error_next];
	e->time = time(NULL);
	snprintf(e->path, sizeof(e->path), "%s", path ? path : "");
	e->has_chunk = chunk != UINT64_MAX;
	e->chunk = e->has_chunk ? chunk : 0;
	memcpy(e->cause, msg, sizeof(msg));
	w->error_next = (w->error_next + 1) % MAX_ERRORS;
	if (w->nerrors < MAX_ERRORS)
		w->nerrors++;
	w->error_count++;
	rk_mutex_unlock(&w->lock);
}

static void load_checkpoint(struct rkd_walker *w)
{
	struct rk_rekey_ckpt c = {.filter = w->filter, .position = w->position, .tables = w->tables,
	                          .queued = w->qfilter};
	if (rk_rekey_ckpt_load(w->fs->dd->statefd, &c) < 0)
		return;
	w->sweep_id = c.sweep;
	w->started = c.started;
	w->finished = c.finished;
	w->nfilter = c.nfilter;
	w->ntables = c.ntables;
	w->finished_sweep = c.finished_sweep;
	w->result = c.result;
	w->remaining = c.remaining;
	w->remaining_known = c.remaining_known;
	snprintf(w->reason, sizeof(w->reason), "%s", c.reason);
	w->queued = c.has_queued;
	w->nqfilter = c.nqueued;
	w->rewrap = c.rewrap; /* an ended rewrap is shown as one until the next sweep */
	w->qrewrap = c.qrewrap && c.has_queued;
	memcpy(w->rw_from, c.rewrap_from, sizeof(w->rw_from));
	memcpy(w->rw_to, c.rewrap_to, sizeof(w->rw_to));
	memcpy(w->qrw_from, c.qrewrap_from, sizeof(w->qrw_from));
	memcpy(w->qrw_to, c.qrewrap_to, sizeof(w->qrw_to));
	if (c.rate_set && !w->fs->o.walker_rate_set) {
		w->rate = c.rate;
		w->rate_set = true;
		rk_info("walker: rate %" PRIu64 " bytes/s as set at run time before the restart", c.rate);
	} else if (c.rate_set) {
		rk_info("walker: -o walker_rate=%llu given at mount wins over the rate %" PRIu64 " set before the restart",
		        w->fs->o.walker_rate, c.rate);
	}
	if (c.resume) {
		w->resume_pending = true;
		w->start_paused = c.state == W_PAUSED;
		rk_info("walker: resuming sweep %" PRIu64 " after %s%s", w->sweep_id,
		        w->position[0] ? w->position : "the start", w->start_paused ? " (paused)" : "");
	}
}

/* ---- the engine's access to the daemon's files -------------------------------------------------
 * The rekey engine (rekeyfs/rekey.h) goes through the shared per-file state:
 * the inode, its shared rk_cf attached to the journal, and the chunk
 * stripes, so foreground I/O and the sweep never touch a chunk at once. */
struct wfile {
	struct rkd_inode *in;
	struct rkd_file *f;
	unsigned gen; /* open generation when a whole-file copy started */
};

static int wa_get(void *arg, const struct rk_walk_ent *e, void **h)
{
	struct rkd_walker *w = arg;
	struct wfile *wf = calloc(1, sizeof(*wf));
	if (!wf)
		return -ENOMEM;
	int ret = rkd_inode_at_path(w->fs, e->dirfd, e->name, e->rel, &wf->in);
	if (ret < 0) {
		free(wf);
		return ret;
	}
	*h = wf;
	return 0;
}

static void wa_put(void *arg, void *h)
{
	struct rkd_walker *w = arg;
	struct wfile *wf = h;
	rkd_inode_put(w->fs, wf->in);
	free(wf);
}

/* a whole-file rekey only of a file nobody has open */
static int wa_replace_begin(void *arg, void *h)
{
	struct wfile *wf = h;
	(void)arg;
	if (!S_ISREG(wf->in->type))
		return -EINVAL;
	rk_mutex_lock(&wf->in->lock, RK_RANK_INODE);
	bool busy = wf->in->of != NULL;
	wf->gen = atomic_load(&wf->in->open_gen);
	rk_mutex_unlock(&wf->in->lock);
	return busy ? -EBUSY : 0;
}

static int wa_replace_commit(void *arg, void *h, struct rk_replace *r)
{
	struct rkd_walker *w = arg;
	struct wfile *wf = h;
	return rkd_replace_commit(w->fs, wf->in, wf->gen, r);
}

static int wa_open(void *arg, void *h, struct rk_cf **cf)
{
	struct rkd_walker *w = arg;
	struct wfile *wf = h;
	int ret = rkd_file_get(w->fs, wf->in, &wf->f);
	if (ret < 0)
		return ret;
	if (!wf->f->chunk || !wf->f->rw) {
		rkd_file_put(w->fs, wf->in, wf->f);
		wf->f = NULL;
		return 1;
	}
	*cf = wf->f->cf;
	return 0;
}

static void wa_lock(void *arg, void *h, uint64_t idx)
{
	(void)arg;
	rkd_chunk_lock(((struct wfile *)h)->f, idx);
}

static void wa_unlock(void *arg, void *h, uint64_t idx)
{
	(void)arg;
	rkd_chunk_unlock(((struct wfile *)h)->f, idx);
}

static int wa_close(void *arg, void *h, struct rk_cf *cf)
{
	struct rkd_walker *w = arg;
	struct wfile *wf = h;
	/* header counts on disk */
	rk_rw_wrlock(&wf->f->rw_lock, RK_RANK_FILE_RW);
	int ret = rk_cf_flush(cf);
	rk_rw_unlock(&wf->f->rw_lock);
	rkd_file_put(w->fs, wf->in, wf->f);
	wf->f = NULL;
	return ret;
}

/* release scan: through the shared file state, so open files' pending
 * chunks count too */
int rkd_walker_key_refs(void *arg, const struct rk_walk_ent *e, struct rk_key_refs *out)
{
	struct rkd_fs *fs = arg;
	struct rkd_inode *in;
	struct rkd_file *f;
	int ret = rkd_inode_at_path(fs, e->dirfd, e->name, e->rel, &in);
	if (ret < 0)
		return ret;
	ret = rkd_file_get(fs, in, &f);
	if (ret < 0) {
		rkd_inode_put(fs, in);
		if (ret == -ENOENT)
			return ret;
		/* an unreadable header could hide chunks under the key: refuse */
		out->unreadable = true;
		out->note = "(unreadable header)";
		out->err = ret;
		return 0;
	}
	if (f->chunk) {
		out->chunk = true;
		rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW); /* no writes while the references are read */
		out->err = rk_scan_key_refs(f->cf, out->name, out->counts, &out->malformed);
		int r = out->name ? rk_cf_disk_copies_name(f->cf, out->name) : 0;
		if (r < 0 && out->err == 0)
			out->err = r;
		out->copy_names = r > 0;
		rk_cf_get_header(f->cf, &out->h);
		rk_rw_unlock(&f->rw_lock);
	}
	rkd_file_put(fs, in, f);
	rkd_inode_put(fs, in);
	return 0;
}

/* ---- progress and throttling (w->lock held) ------------------------------------------------------ */
/* the position inside the current file: chunk idx is done */
static void progress_locked(struct rkd_walker *w, uint64_t idx)
{
	uint64_t off = (idx + 1) * (uint64_t)w->cur_cs;
	if (w->cur_size && off > w->cur_size)
		off = w->cur_size;
	if (off > w->cur_off)
		w->cur_off = off;
	if (w->cur_table < 0 || w->cur_table >= w->ntables)
		return;
	struct rk_rekey_tstat *t = &w->tables[w->cur_table];
	uint64_t bd = w->cur_base_bytes + (idx + 1) * (uint64_t)w->cur_cs;
	uint64_t cd = w->cur_base_chunks + idx + 1;
	/* totals are extended (never exceeded) when a file grew since the pre-scan */
	if (bd > t->bytes_done)
		t->bytes_done = bd;
	if (cd > t->chunks_done)
		t->chunks_done = cd;
	if (t->bytes_done > t->bytes_total)
		t->bytes_total = t->bytes_done;
	if (t->chunks_done > t->chunks_total)
		t->chunks_total = t->chunks_done;
}

/* Rate limit, yield to foreground I/O, pause, progress; a whole-file copy
 * stops when the file is opened meanwhile (its writes go in place).  Never
 * sleeps blindly: it waits on w->cond with a deadline, and a new rate,
 * pause, resume or stop wakes it to recompute. */
static int wa_throttle(void *arg, void *h, bool whole, uint64_t idx, uint64_t bytes)
{
	struct rkd_walker *w = arg;
	struct rkd_fs *fs = w->fs;
	struct wfile *wf = h;
	int ret = 0;
	if (whole && atomic_load(&wf->in->open_gen) != wf->gen)
		return -EBUSY; /* opened meanwhile: its writes go in place */
	rkd_fg_yield(fs); /* a short pause while foreground requests are being served */
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	progress_locked(w, idx);
	ret = rkd_walker_pace_locked(w, bytes);
	bool save = ret == 0 && rkd_walker_now() - w->last_save >= 1.0;
	rk_mutex_unlock(&w->lock);
	if (save)
		rkd_walker_save(w); /* no lock held here: the engine calls between chunks */
	return ret;
}

/* ---- one sweep ------------------------------------------------------------------------------- */
struct walk_ctx {
	struct rkd_walker *w;
	struct rk_rekey_access acc;
	struct rk_rekey_engine eng;
	enum walk_mode mode;
	int pass; /* 0: the sweep; later passes catch files renamed behind the walker */
	char key_error[256]; /* a target key that cannot be used ("" if none) */
	uint64_t file_errors, unreadable_headers;
	struct rw_walk rw; /* a rewrap sweep's */
};

/* later passes meet the same unreadable chunks again: counted once, in pass 0 */
static void add_result(struct rkd_walker *w, struct rk_rekey_tstat *t, const struct rk_sweep_result *res, int pass)
{
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	t->chunks_checked += res->chunks_checked;
	t->chunks_rewritten += res->chunks_rewritten;
	t->bytes_rewritten += res->bytes_rewritten;
	if (pass == 0)
		t->chunks_failed += res->chunks_failed;
	rk_mutex_unlock(&w->lock);
	atomic_fetch_add(&w->walker_rewritten, res->chunks_rewritten);
}

/* Rekey one file, retrying while the file system has no room (the old
 * chunks stay readable meanwhile).  Returns 0, -ECANCELED or the error. */
static int rekey_one(struct walk_ctx *c, const struct rk_walk_ent *e, struct rk_rekey_tstat *t, struct rk_key *key,
                     const struct rk_rekey_need *need)
{
	struct rkd_walker *w = c->w;
	struct rk_rekey_file_result fr;
	int ret;
	for (;;) {
		ret = rk_rekey_file(&c->eng, e, key, need, &fr);
		if (fr.replaced || fr.visited)
			add_result(w, t, &fr.res, c->pass);
		if (fr.replaced)
			atomic_fetch_add(&w->files_replaced, 1);
		if (fr.visited && fr.res.chunks_failed && c->pass == 0)
			add_error(w, e->rel, fr.res.first_failed,
			          "%" PRIu64 " chunk(s) could not be read (%s) and keep their key (see fsck --deep)",
			          fr.res.chunks_failed, rk_strerror(fr.res.last_error ? fr.res.last_error : -EUCLEAN));
		if (fr.outcome != RK_RO_RETRY_NO_SPACE)
			break;
		/* the old chunks stay readable; retry this file once space is back */
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
		bool first = !w->waiting_space;
		w->waiting_space = true;
		rk_mutex_unlock(&w->lock);
		if (first)
			add_error(w, e->rel, UINT64_MAX,
			          "%s while rewriting; the old chunks stay in place, the sweep waits and retries",
			          strerror(-ret));
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
		if (!atomic_load(&w->stop))
			rkd_walker_wait_secs(w, 1.0); /* woken at once by stop */
		rk_mutex_unlock(&w->lock);
		if (atomic_load(&w->stop))
			return -ECANCELED;
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	w->waiting_space = false;
	rk_mutex_unlock(&w->lock);
	return ret;
}

/* the current file, for status (current_file / current_offset) */
static void set_current(struct rkd_walker *w, const char *rel, const struct rk_rekey_need *need, int tidx)
{
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	snprintf(w->cur_file, sizeof(w->cur_file), "%s", rel ? rel : "");
	w->cur_valid = rel != NULL;
	w->cur_off = 0;
	w->cur_cs = need ? need->chunk_size : 0;
	w->cur_size = need ? need->nchunks * (uint64_t)need->chunk_size : 0;
	w->cur_table = tidx;
	if (tidx >= 0) {
		w->cur_base_bytes = w->tables[tidx].bytes_done;
		w->cur_base_chunks = w->tables[tidx].chunks_done;
	}
	rk_mutex_unlock(&w->lock);
}

/* pre-scan and count: header counts of one file of a selected table */
static int visit_count(struct walk_ctx *c, const struct rk_walk_ent *e, const char *tpath, int ret,
                       const struct rk_rekey_need *need)
{
	struct rkd_walker *w = c->w;
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct rk_rekey_tstat *t = rk_rekey_tstat_for(w->tables, &w->ntables, tpath);
	if (c->mode == M_COUNT) {
		t->counted = true;
		if (ret < 0 && need->chunk)
			c->unreadable_headers++;
		else if (need->chunk)
			t->remaining += need->todo;
	} else if (need->chunk) {
		uint64_t bytes = need->nchunks * (uint64_t)need->chunk_size;
		t->files_total++;
		t->chunks_total += need->nchunks;
		t->bytes_total += bytes;
		t->chunks_todo += need->todo;
		t->bytes_todo += need->todo * (uint64_t)need->chunk_size;
		/* a resumed sweep: files before the checkpoint are done */
		if (w->position[0] && rk_walk_cmp(e->rel, w->position) <= 0) {
			t->chunks_done += need->nchunks;
			t->bytes_done += bytes;
		}
	}
	rk_mutex_unlock(&w->lock);
	return atomic_load(&w->stop) ? -ECANCELED : 0;
}

static int visit(const struct rk_walk_ent *e, void *arg)
{
	struct walk_ctx *c = arg;
	struct rkd_walker *w = c->w;
	struct rkd_fs *fs = w->fs;
	if (!S_ISREG(e->st->st_mode))
		return 0;
	if (rk_is_tmp_name(e->name)) {
		/* an interrupted whole-file rekey's (or conversion's) temporary */
		if (c->mode == M_REKEY && rk_tmp_cleanup(e->dirfd, e->name) == 1)
			rk_info("%s: removed an interrupted rekey's temporary file", e->rel);
		return 0;
	}
	if (c->mode == M_REKEY && w->position[0] && rk_walk_cmp(e->rel, w->position) <= 0)
		return 0; /* done before the checkpoint */
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	const struct rk_table *tab = rk_policy_lookup(fs->dd, e->rel);
	char tpath[RK_TABLE_PATH_MAX], kname[RK_KEY_NAME_MAX + 1];
	snprintf(tpath, sizeof(tpath), "%s", tab->path);
	snprintf(kname, sizeof(kname), "%s", tab->key);
	rk_rw_unlock(&fs->policy_lock);
	if (!rk_rekey_filter_has(w->filter, w->nfilter, tpath))
		return 0;
	if (w->rewrap) /* set by this thread only (start_locked) */
		return rkd_rewrap_visit(w, &c->rw, c->mode, c->pass, e, tpath);
	struct rk_key *key;
	int ret = rk_keyring_get(fs->kr, kname, &key);
	if (ret < 0) {
		if (!c->key_error[0]) {
			if (snprintf(c->key_error, sizeof(c->key_error), "table %s: target key '%s' cannot be used: %s", tpath,
			             kname, rk_strerror(ret)) >= (int)sizeof(c->key_error))
				c->key_error[sizeof(c->key_error) - 2] = '.'; /* cut short */
			add_error(w, e->rel, UINT64_MAX, "%s", c->key_error);
		}
		return 0;
	}
	struct rk_rekey_need need;
	ret = rk_rekey_examine(e->dirfd, e->name, e->rel, key, fs->o.whole_file, &need);
	if (c->mode != M_REKEY)
		return visit_count(c, e, tpath, ret, &need);
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct rk_rekey_tstat *t = rk_rekey_tstat_for(w->tables, &w->ntables, tpath);
	int tidx = (int)(t - w->tables);
	rk_mutex_unlock(&w->lock);
	set_current(w, e->rel, &need, c->pass == 0 && need.chunk ? tidx : -1);
	if (ret < 0) {
		c->file_errors++;
		add_error(w, e->rel, UINT64_MAX, "cannot read the header: %s", rk_strerror(ret));
	} else if (need.chunk && need.needs) {
		ret = rekey_one(c, e, t, key, &need);
		if (ret == -ECANCELED)
			return ret;
		if (ret < 0) {
			c->file_errors++;
			add_error(w, e->rel, UINT64_MAX, "%s", rk_strerror(ret));
		}
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	if (need.chunk && c->pass == 0) {
		/* the file is done: its chunks and bytes, the totals extended if it
		 * grew.  Progress inside the file may already have gone further than
		 * its header's count (a header the last fsync left COUNTS_DIRTY lags
		 * the chunks): done never goes back */
		t->files_done++;
		t->chunks_done = RK_MAX(t->chunks_done, w->cur_base_chunks + need.nchunks);
		t->bytes_done = RK_MAX(t->bytes_done, w->cur_base_bytes + need.nchunks * (uint64_t)need.chunk_size);
		t->files_total = RK_MAX(t->files_total, t->files_done);
		t->chunks_total = RK_MAX(t->chunks_total, t->chunks_done);
		t->bytes_total = RK_MAX(t->bytes_total, t->bytes_done);
	}
	w->cur_table = -1;
	snprintf(w->position, sizeof(w->position), "%s", e->rel);
	bool save = rkd_walker_now() - w->last_save >= 1.0;
	rk_mutex_unlock(&w->lock);
	if (save)
		rkd_walker_save(w);
	rk_crashpoint("walker.file-done");
	return atomic_load(&w->stop) ? -ECANCELED : 0;
}

/* Set up the next sweep (w->lock held): the checkpointed one, or the queued request. */
static void start_locked(struct rkd_walker *w, bool resumed)
{
	if (!resumed) {
		w->sweep_id++;
		if (w->nqfilter)
			memcpy(w->filter, w->qfilter, sizeof(w->filter[0]) * (size_t)w->nqfilter);
		w->nfilter = w->nqfilter;
		w->queued = false;
		w->nqfilter = 0;
		w->rewrap = w->qrewrap;
		memcpy(w->rw_from, w->qrw_from, sizeof(w->rw_from));
		memcpy(w->rw_to, w->qrw_to, sizeof(w->rw_to));
		w->qrewrap = false;
		w->started = time(NULL);
		w->position[0] = '\0';
		w->ntables = 0;
		w->nerrors = 0;
		w->error_next = 0;
	}
	/* totals are re-counted by the pre-scan; rewrite counters come from the checkpoint */
	for (int i = 0; i < w->ntables; i++) {
		struct rk_rekey_tstat *t = &w->tables[i];
		t->files_total = t->chunks_total = t->chunks_todo = t->chunks_done = 0;
		t->bytes_total = t->bytes_done = t->bytes_todo = t->remaining = 0;
		t->counted = false;
	}
	w->resume_pending = false;
	w->finished = 0;
	w->state = resumed && w->start_paused ? W_PAUSED : W_RUNNING;
	w->start_paused = false;
	w->sweep_bytes = 0;
	w->nsamples = w->sample_next = 0;
	clock_gettime(CLOCK_MONOTONIC, &w->last_refill);
	w->tokens = 0;
	w->cur_valid = false;
	w->cur_table = -1;
}

/* the walk's passes: until one rewrites nothing, or the cap */
static int run_passes(struct rkd_walker *w, struct walk_ctx *c, uint64_t sweep_id, bool *capped)
{
	int ret = 0;
	c->mode = M_REKEY;
	*capped = false;
	for (c->pass = 0;; c->pass++) {
		uint64_t before = atomic_load(&w->walker_rewritten) + atomic_load(&w->files_rewrapped);
		if (c->pass > 0) {
			rk_mutex_lock(&w->lock, RK_RANK_WALKER);
			w->position[0] = '\0';
			rk_mutex_unlock(&w->lock);
		}
		ret = rk_walk(w->fs->rootfd, "/", visit, c);
		if (ret < 0 || atomic_load(&w->walker_rewritten) + atomic_load(&w->files_rewrapped) == before)
			break;
		if (c->pass > 0)
			rk_info("walker: sweep %" PRIu64 " pass %d rekeyed files renamed or written during the sweep",
			        sweep_id, c->pass + 1);
		if (c->pass + 1 >= MAX_PASSES) {
			*capped = true;
			break;
		}
	}
	set_current(w, NULL, NULL, -1);
	return ret;
}

/* The sweep ended: count what is left, decide complete or incomplete. */
static void finish_sweep(struct rkd_walker *w, struct walk_ctx *c, uint64_t sweep_id, int ret, bool capped)
{
	struct rkd_fs *fs = w->fs;
	c->mode = M_COUNT;
	int rc = ret < 0 ? ret : rk_walk(fs->rootfd, "/", visit, c);
	char reason[256] = "";
	if (rc == -ECANCELED) {
		/* shut down during the count: the next mount walks (headers only) again */
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
		w->position[0] = '\0';
		rk_mutex_unlock(&w->lock);
		rkd_walker_save(w);
		rk_info("walker: sweep %" PRIu64 " interrupted while counting; it resumes at the next mount", sweep_id);
		return;
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	uint64_t rew = 0, failed = 0, remaining = 0;
	for (int i = 0; i < w->ntables; i++) {
		rew += w->tables[i].chunks_rewritten;
		failed += w->tables[i].chunks_failed;
		remaining += w->tables[i].remaining;
	}
	if (ret < 0)
		snprintf(reason, sizeof(reason), "the walk stopped: %s", rk_strerror(ret));
	else if (rc < 0)
		snprintf(reason, sizeof(reason), "the final count failed: %s", rk_strerror(rc));
	else if (capped)
		snprintf(reason, sizeof(reason), "gave up after %d passes that each still rewrote chunks", MAX_PASSES);
	else if (c->key_error[0])
		snprintf(reason, sizeof(reason), "%s", c->key_error);
	else if (failed)
		snprintf(reason, sizeof(reason), "%" PRIu64 " chunk(s) could not be read and keep their key (see fsck --deep)",
		         failed);
	else if (c->unreadable_headers || c->file_errors || c->rw.unreadable_headers || c->rw.file_errors)
		snprintf(reason, sizeof(reason), "%" PRIu64 " file(s) could not be %s (see errors)",
		         c->unreadable_headers + c->file_errors + c->rw.unreadable_headers + c->rw.file_errors,
		         w->rewrap ? "rewrapped" : "rekeyed");
	else if (remaining && w->rewrap)
		snprintf(reason, sizeof(reason), "%" PRIu64 " file(s) still wrap a data key under '%s'", remaining,
		         w->rw_from);
	else if (remaining)
		snprintf(reason, sizeof(reason), "%" PRIu64 " chunk(s) are still off their target key", remaining);
	bool complete = !reason[0];
	w->state = W_IDLE;
	w->finished = time(NULL);
	w->finished_sweep = sweep_id;
	w->result = complete ? RK_RR_COMPLETE : RK_RR_INCOMPLETE;
	w->remaining = remaining;
	w->remaining_known = ret == 0 && rc == 0;
	snprintf(w->reason, sizeof(w->reason), "%s", reason);
	w->position[0] = '\0';
	rk_mutex_unlock(&w->lock);
	/* the rewritten chunks are durable before the sweep counts as done */
	rk_journal_checkpoint(fs->j);
	rkd_walker_save(w);
	if (complete && w->rewrap) /* w->rewrap: written by this thread only */
		rk_info("walker: sweep %" PRIu64 " (rewrap %s -> %s) complete: %" PRIu64 " file(s) rewrapped in all, 0 "
		        "remaining", sweep_id, w->rw_from, w->rw_to, (uint64_t)atomic_load(&w->files_rewrapped));
	else if (complete)
		rk_info("walker: sweep %" PRIu64 " complete: %" PRIu64 " chunks rewritten, 0 remaining", sweep_id, rew);
	else
		rk_warn("walker: sweep %" PRIu64 " incomplete: %" PRIu64 " chunks rewritten, %" PRIu64
		        " remaining, %" PRIu64 " failed: %s",
		        sweep_id, rew, remaining, failed, reason);
}

static void run_sweep(struct rkd_walker *w, uint64_t sweep_id, bool resumed)
{
	struct rkd_fs *fs = w->fs;
	struct walk_ctx c = {.w = w, .rw = {.resumed_first = resumed}};
	c.acc = (struct rk_rekey_access){.get = wa_get, .put = wa_put, .replace_begin = wa_replace_begin,
	                                 .replace_commit = wa_replace_commit, .open = wa_open, .lock = wa_lock,
	                                 .unlock = wa_unlock, .close = wa_close, .arg = w};
	c.eng = (struct rk_rekey_engine){.kr = fs->kr, .acc = &c.acc, .throttle = wa_throttle, .throttle_arg = w};
	rkd_walker_save(w);
	if (w->rewrap)
		rk_info("walker: sweep %" PRIu64 " started%s: rewrap of the data keys wrapped under '%s' to '%s' (headers "
		        "only)", sweep_id, resumed ? " (resumed)" : "", w->rw_from, w->rw_to);
	else
		rk_info("walker: sweep %" PRIu64 " started%s", sweep_id, resumed ? " (resumed)" : "");

	c.mode = M_PRESCAN;
	int ret = rk_walk(fs->rootfd, "/", visit, &c);
	bool capped = false;
	if (ret != -ECANCELED) {
		/* chunks already rewritten before a restart count towards the total */
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
		for (int i = 0; i < w->ntables; i++) {
			w->tables[i].chunks_todo += w->tables[i].chunks_rewritten;
			w->tables[i].bytes_todo += w->tables[i].bytes_rewritten;
		}
		rk_mutex_unlock(&w->lock);
		c.key_error[0] = '\0'; /* reported again by the passes if still so */
		ret = run_passes(w, &c, sweep_id, &capped);
	}
	if (ret == -ECANCELED) {
		/* shutting down: the checkpoint says where to go on */
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
		char pos[PATH_MAX];
		snprintf(pos, sizeof(pos), "%s", w->position[0] ? w->position : "the start");
		rk_mutex_unlock(&w->lock);
		rkd_walker_save(w);
		rk_info("walker: sweep %" PRIu64 " interrupted at %s; it resumes at the next mount", sweep_id, pos);
		return;
	}
	if (ret < 0)
		add_error(w, NULL, UINT64_MAX, "sweep stopped: %s", rk_strerror(ret));
	finish_sweep(w, &c, sweep_id, ret, capped);
}

static void *walker_main(void *arg)
{
	struct rkd_walker *w = arg;
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	while (!atomic_load(&w->stop)) {
		if (!w->resume_pending && !w->queued) {
			pthread_cond_wait(&w->cond, &w->lock);
			continue;
		}
		/* set up under the lock: a request arriving now sees the sweep running */
		bool resumed = w->resume_pending;
		start_locked(w, resumed);
		uint64_t id = w->sweep_id;
		rk_mutex_unlock(&w->lock);
		run_sweep(w, id, resumed);
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	}
	rk_mutex_unlock(&w->lock);
	rk_crypto_thread_cleanup();
	return NULL;
}

/* ---- lazy rewrite on read ------------------------------------------------------------------ */
void rkd_lazy_hook(void *arg, struct rk_cf *cf, uint64_t idx, int key_idx)
{
	struct rkd_file *f = arg;
	struct rkd_inode *in = f->in;
	struct rkd_fs *fs = f->fs;
	struct rkd_walker *w = fs->w;
	(void)cf;
	if (!w)
		return;
	unsigned gen = atomic_load(&fs->policy_gen);
	int t = atomic_load(&f->target_idx);
	if (t < 0 || atomic_load(&f->target_gen) != gen) {
		struct rk_key *key;
		enum rk_comp comp;
		if (rkd_policy_for(fs, f, &key, &comp) < 0)
			return;
		t = rk_cf_key_entry(f->cf, key);
		/* two readers may race here; a stale pair only costs a
		 * recomputation or a needless queue entry (the worker re-checks) */
		atomic_store(&f->target_idx, t);
		atomic_store(&f->target_gen, gen);
	}
	if (key_idx == t)
		return;
	rk_mutex_lock(&w->qlock, RK_RANK_LAZYQ);
	if (w->qlen == LAZY_QUEUE) {
		rk_mutex_unlock(&w->qlock);
		atomic_fetch_add(&w->lazy_dropped, 1); /* the walker will get it */
		return;
	}
	/* hold the inode and the open file until the worker is done */
	rk_mutex_lock(&fs->itab_lock, RK_RANK_ITAB);
	in->nlookup++;
	rk_mutex_unlock(&fs->itab_lock);
	rkd_file_ref(in, f);
	struct lazy_ent *e = &w->q[(w->qhead + w->qlen) % LAZY_QUEUE];
	e->in = in;
	e->f = f;
	e->idx = idx;
	w->qlen++;
	atomic_fetch_add(&w->lazy_queued, 1);
	pthread_cond_signal(&w->qcond);
	rk_mutex_unlock(&w->qlock);
}

static void *lazy_main(void *arg)
{
	struct rkd_walker *w = arg;
	struct rkd_fs *fs = w->fs;
	rk_mutex_lock(&w->qlock, RK_RANK_LAZYQ);
	for (;;) {
		while (w->qlen == 0 && !atomic_load(&w->stop))
			pthread_cond_wait(&w->qcond, &w->qlock);
		if (w->qlen == 0 && atomic_load(&w->stop))
			break;
		struct lazy_ent e = w->q[w->qhead];
		w->qhead = (w->qhead + 1) % LAZY_QUEUE;
		w->qlen--;
		rk_mutex_unlock(&w->qlock);
		if (!atomic_load(&w->stop)) {
			struct rk_key *key;
			enum rk_comp comp;
			if (rkd_policy_for(fs, e.f, &key, &comp) == 0 && e.f->rw) {
				bool changed = false;
				rkd_chunk_lock(e.f, e.idx);
				int r = rk_cf_rekey_chunk(e.f->cf, e.idx, key, &changed);
				rkd_chunk_unlock(e.f, e.idx);
				if (r == 0 && changed)
					atomic_fetch_add(&w->lazy_rewritten, 1);
				else if (r < 0 && r != -EUCLEAN)
					rk_warn("%s: lazy rekey of chunk %" PRIu64 " failed: %s (the walker retries)",
					        rk_cf_path(e.f->cf), e.idx, rk_strerror(r));
			}
		}
		rkd_file_put(fs, e.in, e.f);
		rkd_inode_put(fs, e.in);
		rk_mutex_lock(&w->qlock, RK_RANK_LAZYQ);
	}
	rk_mutex_unlock(&w->qlock);
	rk_crypto_thread_cleanup();
	return NULL;
}

/* ---- lifecycle ----------------------------------------------------------------------------------- */
int rkd_walker_init(struct rkd_fs *fs)
{
	struct rkd_walker *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->fs = fs;
	w->rate = fs->o.walker_rate;
	w->cur_table = -1;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* deadlines immune to clock changes */
	pthread_mutex_init(&w->ckpt_lock, NULL);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&w->qlock, NULL);
	pthread_cond_init(&w->qcond, NULL);
	load_checkpoint(w);
	if (fs->o.rekey_on_mount && !w->resume_pending) {
		uint64_t id;
		char how[128];
		rkd_walker_request_locked(w, w->filter, 0, false, &id, how, sizeof(how)); /* no thread yet: no lock needed */
		rk_info("walker: rekey_on_mount: a full sweep (%s)", how);
	}
	fs->w = w;
	fs->lazy_hook = rkd_lazy_hook; /* registered before any file opens: the read hook of writable chunk files */
	if (pthread_create(&w->thr, NULL, walker_main, w) != 0 || pthread_create(&w->lazy_thr, NULL, lazy_main, w) != 0) {
		rk_err("cannot start the walker threads");
		return -EAGAIN;
	}
	return 0;
}

void rkd_walker_shutdown(struct rkd_fs *fs)
{
	struct rkd_walker *w = fs->w;
	if (!w)
		return;
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	atomic_store(&w->stop, true);
	pthread_cond_broadcast(&w->cond);
	rk_mutex_unlock(&w->lock);
	rk_mutex_lock(&w->qlock, RK_RANK_LAZYQ);
	pthread_cond_broadcast(&w->qcond);
	rk_mutex_unlock(&w->qlock);
	pthread_join(w->thr, NULL);
	pthread_join(w->lazy_thr, NULL);
	fs->w = NULL;
	pthread_mutex_destroy(&w->ckpt_lock);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->qlock);
	pthread_cond_destroy(&w->qcond);
	free(w);
}
