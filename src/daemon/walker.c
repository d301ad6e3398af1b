/* rekeyfs daemon - online rekey: the background walker (one sweep at a
 * time, rate limited, yielding to foreground I/O, pausable, resumable from a
 * checkpoint in DATADIR/.rekeyfs/walker), the lazy rewrite-on-read worker and
 * the guarded key release. */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
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

#define LAZY_QUEUE 4096
#define MAX_ERRORS 16
#define MAX_TABLES RK_REKEY_MAX_TABLES

/* the walker's states are the checkpoint's (rekeyfs/rekey.h) */
#define W_IDLE RK_RS_IDLE
#define W_RUNNING RK_RS_RUNNING
#define W_PAUSED RK_RS_PAUSED
#define wstate_name(s) rk_rekey_state_name(s)

struct lazy_ent {
	struct rkd_inode *in;
	struct rkd_file *f;
	uint64_t idx;
};

struct rkd_walker {
	struct rkd_fs *fs;
	pthread_t thr, lazy_thr;
	/* rank RK_RANK_CKPT_FILE (8): serializes checkpoint writes (file I/O);
	 * taken with no other lock held, then w->lock briefly for the snapshot */
	pthread_mutex_t ckpt_lock;
	/* rank RK_RANK_WALKER (78): every field below up to the lazy queue
	 * (state, request, filter, counters, tables, position, error ring,
	 * waiting_space, rate, last_save); never held across file I/O, a
	 * sweep or a wait on another lock's holder */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum rk_rekey_state state;
	atomic_bool stop;         /* set once at shutdown (also under lock, for cond waits) */
	bool request;             /* a sweep was asked for */
	bool resume_checkpoint;   /* continue the checkpointed sweep */
	char filter[MAX_TABLES][RK_TABLE_PATH_MAX];
	int nfilter;
	uint64_t sweep_id;
	time_t started, finished;
	char position[PATH_MAX];  /* last file finished (walk order) */
	struct rk_rekey_tstat tables[MAX_TABLES];
	int ntables;
	uint64_t rate;            /* bytes/s, 0 unlimited */
	double tokens;
	struct timespec last_refill;
	uint64_t sweep_bytes;
	struct timespec sweep_t0;
	char errors[MAX_ERRORS][512];
	int nerrors, error_next;
	uint64_t error_count;
	bool waiting_space;
	time_t last_save;
	/* lazy queue: rank RK_RANK_LAZYQ (50), guards q, qhead, qlen; taken on
	 * the read path under a file's rw_lock and stripe, before inode locks */
	pthread_mutex_t qlock;
	pthread_cond_t qcond;
	struct lazy_ent q[LAZY_QUEUE];
	int qhead, qlen;
	atomic_uint_fast64_t lazy_rewritten, lazy_queued, lazy_dropped, walker_rewritten, files_replaced;
};

/* Record an error in the ring shown by status (takes w->lock: call without it). */
static void add_error(struct rkd_walker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_error(struct rkd_walker *w, const char *fmt, ...)
{
	char msg[sizeof(w->errors[0])];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	rk_err("walker: %s", msg);
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	memcpy(w->errors[w->error_next], msg, sizeof(msg));
	w->error_next = (w->error_next + 1) % MAX_ERRORS;
	if (w->nerrors < MAX_ERRORS)
		w->nerrors++;
	w->error_count++;
	rk_mutex_unlock(&w->lock);
}

/* ---- checkpoint (format: rekeyfs/rekey.h) ------------------------------------------------ */
/* Write the walker's state as it is now.  Called with no lock held: the
 * text is built under w->lock, the file written outside it (ckpt_lock keeps
 * writers in order, so the newest snapshot is the one left on disk). */
static int save_checkpoint(struct rkd_walker *w)
{
	struct rkd_fs *fs = w->fs;
	char *buf = NULL;
	size_t len = 0;
	int ret;
	rk_mutex_lock(&w->ckpt_lock, RK_RANK_CKPT_FILE);
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct rk_rekey_ckpt c = {w->state,    w->sweep_id, w->started, w->finished, w->filter,
	                          w->nfilter,  w->position, w->tables,  w->ntables,  false};
	ret = rk_rekey_ckpt_format(&c, &buf, &len);
	w->last_save = time(NULL);
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

static void load_checkpoint(struct rkd_walker *w)
{
	struct rk_rekey_ckpt c = {.filter = w->filter, .position = w->position, .tables = w->tables};
	if (rk_rekey_ckpt_load(w->fs->dd->statefd, &c) < 0)
		return;
	w->sweep_id = c.sweep;
	w->started = c.started;
	w->finished = c.finished;
	w->nfilter = c.nfilter;
	w->ntables = c.ntables;
	if (c.resume) {
		w->resume_checkpoint = true;
		w->request = true;
		rk_info("walker: resuming sweep %" PRIu64 " after %s", w->sweep_id,
		        w->position[0] ? w->position : "the start");
	}
}

/* ---- path order -------------------------------------------------------------------------
 * The walk visits names sorted per directory, depth first: compare paths
 * component by component to know whether a file comes before the checkpoint. */
/* ---- throttling ------------------------------------------------------------------------------ */
static void sleep_ms(double ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6)};
	nanosleep(&ts, NULL);
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
static int wa_key_refs(void *arg, const struct rk_walk_ent *e, struct rk_key_refs *out)
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
		out->err = rk_scan_key_refs(f->cf, out->counts, &out->malformed);
		rk_cf_get_header(f->cf, &out->h);
		rk_rw_unlock(&f->rw_lock);
	}
	rkd_file_put(fs, in, f);
	rkd_inode_put(fs, in);
	return 0;
}

/* Rate limit, yield to foreground I/O, pause; a whole-file copy stops when
 * the file is opened meanwhile (its writes go in place). */
static int wa_throttle(void *arg, void *h, bool whole, uint64_t bytes)
{
	struct rkd_walker *w = arg;
	struct rkd_fs *fs = w->fs;
	struct wfile *wf = h;
	if (whole && atomic_load(&wf->in->open_gen) != wf->gen)
		return -EBUSY; /* opened meanwhile: its writes go in place */
	/* yield to foreground I/O: a short pause while requests are being served */
	for (int i = 0; i < 4; i++) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t now = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
		if (atomic_load(&fs->st.inflight) == 0 && now - atomic_load(&fs->st.last_fg_ns) > 2000000ULL)
			break;
		sleep_ms(0.5);
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	w->sweep_bytes += bytes;
	uint64_t rate = w->rate;
	while (w->state == W_PAUSED && !atomic_load(&w->stop))
		pthread_cond_wait(&w->cond, &w->lock);
	rk_mutex_unlock(&w->lock);
	if (atomic_load(&w->stop))
		return -ECANCELED;
	if (rate && bytes) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		double el = (double)(ts.tv_sec - w->last_refill.tv_sec) + (double)(ts.tv_nsec - w->last_refill.tv_nsec) / 1e9;
		w->last_refill = ts;
		w->tokens = RK_MIN(w->tokens + el * (double)rate, (double)rate); /* at most one second of burst */
		w->tokens -= (double)bytes;
		if (w->tokens < 0)
			sleep_ms(-w->tokens / (double)rate * 1000.0);
	}
	return 0;
}

/* ---- one sweep ------------------------------------------------------------------------------- */
struct walk_ctx {
	struct rkd_walker *w;
	struct rk_rekey_access acc;
	struct rk_rekey_engine eng;
	bool prescan;
	int pass; /* 0: the sweep; later passes catch files renamed behind the walker */
	int err;
};

static void add_result(struct rkd_walker *w, struct rk_rekey_tstat *t, const struct rk_sweep_result *res)
{
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	t->chunks_checked += res->chunks_checked;
	t->chunks_rewritten += res->chunks_rewritten;
	t->bytes_rewritten += res->bytes_rewritten;
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
			add_result(w, t, &fr.res);
		if (fr.replaced)
			atomic_fetch_add(&w->files_replaced, 1);
		if (fr.visited && fr.res.chunks_failed)
			add_error(w, "%s: %" PRIu64 " chunk(s) could not be read and keep their key (see fsck --deep)", e->rel,
			          fr.res.chunks_failed);
		if (fr.outcome != RK_RO_RETRY_NO_SPACE)
			break;
		/* the old chunks stay readable; retry this file once space is back */
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
		bool first = !w->waiting_space;
		w->waiting_space = true;
		rk_mutex_unlock(&w->lock);
		if (first)
			add_error(w, "%s: %s while rewriting; the old chunks stay in place, the sweep waits and retries", e->rel,
			          strerror(-ret));
		if (atomic_load(&w->stop))
			return -ECANCELED;
		sleep_ms(1000);
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	w->waiting_space = false;
	rk_mutex_unlock(&w->lock);
	return ret;
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
		if (!c->prescan && rk_tmp_cleanup(e->dirfd, e->name) == 1)
			rk_info("%s: removed an interrupted rekey's temporary file", e->rel);
		return 0;
	}
	if (!c->prescan && w->position[0] && rk_walk_cmp(e->rel, w->position) <= 0)
		return 0; /* done before the checkpoint */
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	const struct rk_table *tab = rk_policy_lookup(fs->dd, e->rel);
	char tpath[RK_TABLE_PATH_MAX], kname[RK_KEY_NAME_MAX + 1];
	snprintf(tpath, sizeof(tpath), "%s", tab->path);
	snprintf(kname, sizeof(kname), "%s", tab->key);
	rk_rw_unlock(&fs->policy_lock);
	if (!rk_rekey_filter_has(w->filter, w->nfilter, tpath))
		return 0;
	struct rk_key *key;
	int ret = rk_keyring_get(fs->kr, kname, &key);
	if (ret < 0) {
		add_error(w, "table %s: target key '%s' cannot be used: %s", tpath, kname, rk_strerror(ret));
		return 0;
	}
	struct rk_rekey_need need;
	ret = rk_rekey_examine(e->dirfd, e->name, e->rel, key, fs->o.whole_file, &need);
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct rk_rekey_tstat *t = rk_rekey_tstat_for(w->tables, &w->ntables, tpath);
	if (c->prescan) {
		if (need.chunk) {
			t->files_total++;
			t->chunks_total += need.nchunks;
			t->chunks_todo += need.todo;
			/* a resumed sweep: files before the checkpoint are done */
			if (w->position[0] && rk_walk_cmp(e->rel, w->position) <= 0)
				t->chunks_done += need.nchunks;
		}
		rk_mutex_unlock(&w->lock);
		return atomic_load(&w->stop) ? -ECANCELED : 0;
	}
	rk_mutex_unlock(&w->lock);
	if (ret < 0) {
		add_error(w, "%s: cannot read the header: %s", e->rel, rk_strerror(ret));
	} else if (need.chunk && need.needs) {
		ret = rekey_one(c, e, t, key, &need);
		if (ret == -ECANCELED)
			return ret;
		if (ret < 0)
			add_error(w, "%s: %s", e->rel, rk_strerror(ret));
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	if (need.chunk && c->pass == 0) {
		t->files_done++;
		t->chunks_done += need.nchunks;
	}
	snprintf(w->position, sizeof(w->position), "%s", e->rel);
	bool save = time(NULL) != w->last_save;
	rk_mutex_unlock(&w->lock);
	if (save)
		save_checkpoint(w);
	rk_crashpoint("walker.file-done");
	return atomic_load(&w->stop) ? -ECANCELED : 0;
}

static void run_sweep(struct rkd_walker *w)
{
	struct rkd_fs *fs = w->fs;
	struct walk_ctx c = {.w = w};
	c.acc = (struct rk_rekey_access){.get = wa_get, .put = wa_put, .replace_begin = wa_replace_begin,
	                                 .replace_commit = wa_replace_commit, .open = wa_open, .lock = wa_lock,
	                                 .unlock = wa_unlock, .close = wa_close, .arg = w};
	c.eng = (struct rk_rekey_engine){.kr = fs->kr, .acc = &c.acc, .throttle = wa_throttle, .throttle_arg = w};
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	if (!w->resume_checkpoint) {
		w->sweep_id++;
		w->started = time(NULL);
		w->position[0] = '\0';
		w->ntables = 0;
		w->nerrors = 0;
		w->error_next = 0;
	} else {
		/* totals are re-counted below; progress counters come from the checkpoint */
		for (int i = 0; i < w->ntables; i++) {
			w->tables[i].files_total = w->tables[i].chunks_total = w->tables[i].chunks_todo = 0;
			w->tables[i].chunks_done = 0;
		}
	}
	w->finished = 0;
	w->state = W_RUNNING;
	w->sweep_bytes = 0;
	clock_gettime(CLOCK_MONOTONIC, &w->sweep_t0);
	clock_gettime(CLOCK_MONOTONIC, &w->last_refill);
	w->tokens = 0;
	uint64_t sweep_id = w->sweep_id;
	bool resumed = w->resume_checkpoint;
	rk_mutex_unlock(&w->lock);
	save_checkpoint(w);
	rk_info("walker: sweep %" PRIu64 " started%s", sweep_id, resumed ? " (resumed)" : "");

	c.prescan = true;
	int ret = rk_walk(fs->rootfd, "/", visit, &c);
	if (ret != -ECANCELED) {
		/* chunks already rewritten before a restart count towards the total */
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
		for (int i = 0; i < w->ntables; i++)
			w->tables[i].chunks_todo += w->tables[i].chunks_rewritten;
		rk_mutex_unlock(&w->lock);
		c.prescan = false;
		/* a file renamed behind the walker's position while it ran has not
		 * been visited: walk again (headers only where nothing is left to
		 * do) until a pass rewrites nothing */
		for (c.pass = 0; ret != -ECANCELED && c.pass < 16; c.pass++) {
			uint64_t before = atomic_load(&w->walker_rewritten);
			if (c.pass > 0) {
				rk_mutex_lock(&w->lock, RK_RANK_WALKER);
				w->position[0] = '\0';
				rk_mutex_unlock(&w->lock);
			}
			ret = rk_walk(fs->rootfd, "/", visit, &c);
			if (atomic_load(&w->walker_rewritten) == before)
				break;
			if (c.pass > 0)
				rk_info("walker: sweep %" PRIu64 " pass %d rekeyed files renamed during the sweep", sweep_id,
				        c.pass + 1);
		}
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	w->resume_checkpoint = false;
	if (ret == -ECANCELED) {
		/* shutting down: the checkpoint says where to go on */
		char pos[PATH_MAX];
		snprintf(pos, sizeof(pos), "%s", w->position[0] ? w->position : "the start");
		rk_mutex_unlock(&w->lock);
		save_checkpoint(w);
		rk_info("walker: sweep %" PRIu64 " interrupted at %s; it resumes at the next mount", sweep_id, pos);
		return;
	}
	rk_mutex_unlock(&w->lock);
	if (ret < 0)
		add_error(w, "sweep stopped: %s", rk_strerror(ret));
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	w->state = W_IDLE;
	w->finished = time(NULL);
	w->position[0] = '\0';
	uint64_t rew = 0;
	for (int i = 0; i < w->ntables; i++)
		rew += w->tables[i].chunks_rewritten;
	rk_mutex_unlock(&w->lock);
	save_checkpoint(w);
	rk_info("walker: sweep %" PRIu64 " finished: %" PRIu64 " chunks rewritten", sweep_id, rew);
	/* the rewritten chunks are durable before the sweep counts as done */
	rk_journal_checkpoint(fs->j);
}

static void *walker_main(void *arg)
{
	struct rkd_walker *w = arg;
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	while (!atomic_load(&w->stop)) {
		if (!w->request) {
			pthread_cond_wait(&w->cond, &w->lock);
			continue;
		}
		w->request = false;
		rk_mutex_unlock(&w->lock);
		run_sweep(w);
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
	struct rk_rekey_access acc = {.key_refs = wa_key_refs, .arg = fs};
	struct rk_release_verdict v;
	int ret = rk_release_scan(fs->rootfd, name, &acc, &v);
	if (ret < 0)
		return rkd_reply(out, len, ret, "release of '%s' refused: the scan failed: %s", name, rk_strerror(ret));
	if (v.chunks) {
		char list[RK_RELEASE_FIRST * PATH_MAX + 16];
		rk_release_list(&v, list, sizeof(list));
		return rkd_reply(out, len, -EBUSY,
		                 "release of '%s' refused: %" PRIu64 " chunk(s) in %" PRIu64
		                 " file(s) are still under it (%s); run 'rekeyctl rekey' and wait for the sweep",
		                 name, v.chunks, v.files, list);
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

/* ---- control and status ---------------------------------------------------------------------- */
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
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	int ret = 0;
	bool do_save = false;
	if (strcmp(cmd, "rekey") == 0 || strcmp(cmd, "scan") == 0) {
		if (w->state != W_IDLE || w->request) {
			char pos[PATH_MAX];
			snprintf(pos, sizeof(pos), "%s", w->position[0] ? w->position : "the start");
			uint64_t id = w->sweep_id;
			const char *stn = wstate_name(w->state);
			rk_mutex_unlock(&w->lock);
			return rkd_reply(out, len, 0, "a sweep is already running (sweep %" PRIu64 ", %s, at %s); nothing to do",
			                 id, stn, pos);
		}
		w->nfilter = 0;
		char *save = NULL;
		for (char *t = strtok_r(args, " \t", &save); t && w->nfilter < MAX_TABLES; t = strtok_r(NULL, " \t", &save)) {
			char norm[RK_TABLE_PATH_MAX];
			if (rk_table_path_norm(t, norm, sizeof(norm)) < 0) {
				rk_mutex_unlock(&w->lock);
				return rkd_reply(out, len, -EINVAL, "invalid table '%s'", t);
			}
			snprintf(w->filter[w->nfilter++], RK_TABLE_PATH_MAX, "%s", norm);
		}
		w->request = true;
		w->resume_checkpoint = false;
		pthread_cond_broadcast(&w->cond);
		uint64_t id = w->sweep_id + 1;
		rk_mutex_unlock(&w->lock);
		return rkd_reply(out, len, 0, "sweep %" PRIu64 " started", id);
	} else if (strcmp(cmd, "pause") == 0) {
		if (w->state == W_RUNNING)
			w->state = W_PAUSED;
		do_save = true;
	} else if (strcmp(cmd, "resume") == 0) {
		if (w->state == W_PAUSED)
			w->state = W_RUNNING;
		pthread_cond_broadcast(&w->cond);
		do_save = true;
	} else if (strcmp(cmd, "rate") == 0) {
		/* strict decimal, bounded: no sign, no wrap-around, no trailing junk */
		uint64_t r;
		if (rk_parse_u64(args ? args : "", 1ULL << 40, &r) < 0) {
			rk_mutex_unlock(&w->lock);
			return rkd_reply(out, len, -EINVAL,
			                 "usage: rate BYTES_PER_SECOND (plain decimal up to 1099511627776; 0 = unlimited)");
		}
		w->rate = r;
	}
	const char *stn = wstate_name(w->state);
	uint64_t rate = w->rate;
	rk_mutex_unlock(&w->lock);
	if (do_save)
		save_checkpoint(w); /* outside the walker lock: file I/O */
	return rkd_reply(out, len, ret, "walker %s, rate %" PRIu64 " bytes/s", stn, rate);
}

void rkd_walker_json(struct rkd_fs *fs, struct rkd_jbuf *b)
{
	struct rkd_walker *w = fs->w;
	if (!w) {
		rkd_jb_printf(b, "  \"walker\": {\"state\": \"off\"},\n");
		return;
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	double el = (double)(ts.tv_sec - w->sweep_t0.tv_sec) + (double)(ts.tv_nsec - w->sweep_t0.tv_nsec) / 1e9;
	double bps = w->state != W_IDLE && el > 0 ? (double)w->sweep_bytes / el : 0;
	rkd_jb_printf(b,
	              "  \"walker\": {\"state\": \"%s\", \"sweep\": %" PRIu64 ", \"started\": %lld, \"finished\": %lld, "
	              "\"rate_limit\": %" PRIu64 ", \"rate_bytes_per_s\": %.0f, \"waiting_for_space\": %s, \"position\": ",
	              wstate_name(w->state), w->sweep_id, (long long)w->started, (long long)w->finished, w->rate, bps,
	              w->waiting_space ? "true" : "false");
	rkd_jb_str(b, w->position);
	rkd_jb_printf(b, ",\n    \"chunks_rewritten_walker\": %" PRIu64 ", \"chunks_rewritten_lazy\": %" PRIu64
	                 ", \"files_replaced\": %" PRIu64 ", \"lazy_queued\": %" PRIu64 ", \"lazy_dropped\": %" PRIu64
	                 ", \"error_count\": %" PRIu64 ",\n    \"tables\": [",
	              (uint64_t)atomic_load(&w->walker_rewritten), (uint64_t)atomic_load(&w->lazy_rewritten),
	              (uint64_t)atomic_load(&w->files_replaced),
	              (uint64_t)atomic_load(&w->lazy_queued), (uint64_t)atomic_load(&w->lazy_dropped), w->error_count);
	for (int i = 0; i < w->ntables; i++) {
		struct rk_rekey_tstat *t = &w->tables[i];
		/* progress through the table's chunks (visited, whether rewritten or
		 * already on target); a finished sweep is complete */
		double pct = w->state == W_IDLE ? 100.0
		             : t->chunks_total ? 100.0 * (double)t->chunks_done / (double)t->chunks_total
		                               : (t->files_total ? 100.0 * (double)t->files_done / (double)t->files_total : 0.0);
		if (pct > 100.0)
			pct = 100.0;
		rkd_jb_printf(b, "%s\n      {\"path\": ", i ? "," : "");
		rkd_jb_str(b, t->path);
		rkd_jb_printf(b,
		              ", \"files_total\": %" PRIu64 ", \"files_done\": %" PRIu64 ", \"chunks_total\": %" PRIu64
		              ", \"chunks_to_rewrite\": %" PRIu64 ", \"chunks_rewritten\": %" PRIu64
		              ", \"bytes_rewritten\": %" PRIu64 ", \"chunks_failed\": %" PRIu64 ", \"percent\": %.1f}",
		              t->files_total, t->files_done, t->chunks_total, t->chunks_todo, t->chunks_rewritten,
		              t->bytes_rewritten, t->chunks_failed, pct);
	}
	rkd_jb_printf(b, "\n    ],\n    \"errors\": [");
	for (int i = 0; i < w->nerrors; i++) {
		int k = (w->error_next - w->nerrors + i + MAX_ERRORS) % MAX_ERRORS;
		rkd_jb_printf(b, "%s", i ? ", " : "");
		rkd_jb_str(b, w->errors[k]);
	}
	rkd_jb_printf(b, "]\n  },\n");
	rk_mutex_unlock(&w->lock);
}

/* ---- lifecycle ----------------------------------------------------------------------------------- */
int rkd_walker_init(struct rkd_fs *fs)
{
	struct rkd_walker *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->fs = fs;
	w->rate = fs->o.walker_rate;
	pthread_mutex_init(&w->ckpt_lock, NULL);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	pthread_mutex_init(&w->qlock, NULL);
	pthread_cond_init(&w->qcond, NULL);
	load_checkpoint(w);
	if (fs->o.rekey_on_mount && !w->request) {
		w->request = true;
		rk_info("walker: rekey_on_mount: a full sweep starts now");
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
