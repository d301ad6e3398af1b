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
#include "rekeyfs/sweep.h"
#include "rekeyfs/walk.h"

#define WALKER_FILE "walker"
#define LAZY_QUEUE 4096
#define MAX_ERRORS 16
#define MAX_TABLES 256

enum wstate { W_IDLE = 0, W_RUNNING = 1, W_PAUSED = 2 };
static const char *wstate_name[] = {"idle", "running", "paused"};

struct tstat {
	char path[RK_TABLE_PATH_MAX];
	uint64_t files_total, chunks_total, chunks_todo; /* pre-scan: chunks not on target (header counts) */
	uint64_t files_done, chunks_checked, chunks_rewritten, bytes_rewritten, chunks_failed;
	uint64_t chunks_done; /* chunks of the files visited so far (progress) */
};

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
	enum wstate state;
	atomic_bool stop;         /* set once at shutdown (also under lock, for cond waits) */
	bool request;             /* a sweep was asked for */
	bool resume_checkpoint;   /* continue the checkpointed sweep */
	char filter[MAX_TABLES][RK_TABLE_PATH_MAX];
	int nfilter;
	uint64_t sweep_id;
	time_t started, finished;
	char position[PATH_MAX];  /* last file finished (walk order) */
	struct tstat tables[MAX_TABLES];
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

/* ---- checkpoint ----------------------------------------------------------------------- */
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
	FILE *m = open_memstream(&buf, &len);
	if (!m) {
		ret = -ENOMEM;
		goto out;
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	fprintf(m, "# rekeyfs walker checkpoint: where a sweep resumes after a restart\n");
	fprintf(m, "state %s\nsweep %" PRIu64 "\nstarted %lld\nfinished %lld\n", wstate_name[w->state], w->sweep_id,
	        (long long)w->started, (long long)w->finished);
	fprintf(m, "filter");
	for (int i = 0; i < w->nfilter; i++)
		fprintf(m, " %s", w->filter[i]);
	fprintf(m, "\nposition %s\n", w->position[0] ? w->position : "-");
	for (int i = 0; i < w->ntables; i++) {
		struct tstat *t = &w->tables[i];
		fprintf(m,
		        "table %s files_done=%" PRIu64 " chunks_checked=%" PRIu64 " chunks_rewritten=%" PRIu64
		        " bytes_rewritten=%" PRIu64 " chunks_failed=%" PRIu64 "\n",
		        t->path, t->files_done, t->chunks_checked, t->chunks_rewritten, t->bytes_rewritten, t->chunks_failed);
	}
	w->last_save = time(NULL);
	rk_mutex_unlock(&w->lock);
	if (fclose(m) != 0 || !buf) {
		ret = -ENOMEM;
		goto out;
	}
	ret = rk_write_file_atomic(fs->dd->statefd, WALKER_FILE, buf, len, 0600);
	if (ret < 0)
		rk_warn("walker: cannot write the checkpoint %s/.rekeyfs/%s: %s", fs->datadir_real, WALKER_FILE,
		        rk_strerror(ret));
out:
	rk_mutex_unlock(&w->ckpt_lock);
	free(buf);
	return ret;
}

static struct tstat *tstat_for(struct rkd_walker *w, const char *path)
{
	for (int i = 0; i < w->ntables; i++)
		if (strcmp(w->tables[i].path, path) == 0)
			return &w->tables[i];
	if (w->ntables == MAX_TABLES)
		return &w->tables[0];
	struct tstat *t = &w->tables[w->ntables++];
	memset(t, 0, sizeof(*t));
	snprintf(t->path, sizeof(t->path), "%s", path);
	return t;
}

static void load_checkpoint(struct rkd_walker *w)
{
	char *text = NULL;
	if (rk_read_small_file(w->fs->dd->statefd, WALKER_FILE, &text, NULL, 1 << 20) < 0)
		return;
	char *save = NULL;
	bool running = false;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char word[32], rest[PATH_MAX];
		rest[0] = '\0'; /* a bare "filter" line (all tables) has no rest */
		if (line[0] == '#' || sscanf(line, "%31s %4095[^\n]", word, rest) < 1)
			continue;
		if (strcmp(word, "state") == 0)
			running = strcmp(rest, "running") == 0 || strcmp(rest, "paused") == 0;
		else if (strcmp(word, "sweep") == 0)
			w->sweep_id = strtoull(rest, NULL, 10);
		else if (strcmp(word, "started") == 0)
			w->started = (time_t)strtoll(rest, NULL, 10);
		else if (strcmp(word, "finished") == 0)
			w->finished = (time_t)strtoll(rest, NULL, 10);
		else if (strcmp(word, "position") == 0)
			snprintf(w->position, sizeof(w->position), "%s", strcmp(rest, "-") ? rest : "");
		else if (strcmp(word, "filter") == 0) {
			char *s2 = NULL;
			for (char *t = strtok_r(rest, " ", &s2); t && w->nfilter < MAX_TABLES; t = strtok_r(NULL, " ", &s2))
				snprintf(w->filter[w->nfilter++], RK_TABLE_PATH_MAX, "%s", t);
		} else if (strcmp(word, "table") == 0) {
			char path[RK_TABLE_PATH_MAX];
			struct tstat tmp = {0};
			if (sscanf(rest,
			           "%1023s files_done=%" SCNu64 " chunks_checked=%" SCNu64 " chunks_rewritten=%" SCNu64
			           " bytes_rewritten=%" SCNu64 " chunks_failed=%" SCNu64,
			           path, &tmp.files_done, &tmp.chunks_checked, &tmp.chunks_rewritten, &tmp.bytes_rewritten,
			           &tmp.chunks_failed) >= 1) {
				struct tstat *t = tstat_for(w, path);
				t->files_done = tmp.files_done;
				t->chunks_checked = tmp.chunks_checked;
				t->chunks_rewritten = tmp.chunks_rewritten;
				t->bytes_rewritten = tmp.bytes_rewritten;
				t->chunks_failed = tmp.chunks_failed;
			}
		}
	}
	free(text);
	if (running) {
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

struct sweep_ctx {
	struct rkd_walker *w;
	struct rkd_file *f;
};

static void cb_lock(void *arg, uint64_t idx) { rkd_chunk_lock(((struct sweep_ctx *)arg)->f, idx); }
static void cb_unlock(void *arg, uint64_t idx) { rkd_chunk_unlock(((struct sweep_ctx *)arg)->f, idx); }

static int cb_throttle(void *arg, uint64_t bytes)
{
	struct sweep_ctx *c = arg;
	struct rkd_walker *w = c->w;
	struct rkd_fs *fs = w->fs;
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
	bool prescan;
	int pass; /* 0: the sweep; later passes catch files renamed behind the walker */
	int err;
};

static bool in_filter(struct rkd_walker *w, const char *tpath)
{
	if (w->nfilter == 0)
		return true;
	for (int i = 0; i < w->nfilter; i++)
		if (strcmp(w->filter[i], tpath) == 0)
			return true;
	return false;
}

/* Header-only look at a stored file: is it a chunk file, and does any chunk
 * sit under a key other than target? */
static int header_needs(int dirfd, const char *name, const char *rel, const struct rk_key *target, bool *chunk,
                        bool *needs, uint64_t *nchunks, uint64_t *todo)
{
	struct rk_cf_header h;
	*chunk = *needs = false;
	*nchunks = *todo = 0;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	int ret = rk_cf_probe(fd);
	if (ret == 1) {
		*chunk = true;
		ret = rk_cf_read_header(fd, rel, &h, NULL);
		if (ret == 0) {
			for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
				if (!h.keys[j].in_use)
					continue;
				*nchunks += h.keys[j].count;
				bool on = strcmp(h.keys[j].name, target->name) == 0 &&
				          memcmp(h.keys[j].fp, target->fp, RK_FP_BYTES) == 0;
				if (!on && h.keys[j].count > 0) {
					*todo += h.keys[j].count;
					*needs = true;
				}
			}
			if (h.flags & RK_HF_COUNTS_DIRTY)
				*needs = true; /* counts may be stale: look at every chunk */
		}
	}
	close(fd);
	return ret < 0 ? ret : 0;
}

struct replace_ctx {
	struct sweep_ctx c;
	struct rkd_inode *in;
	unsigned gen;
};

static int cb_replace_throttle(void *arg, uint64_t bytes)
{
	struct replace_ctx *r = arg;
	if (atomic_load(&r->in->open_gen) != r->gen)
		return -EBUSY; /* opened meanwhile: its writes go in place */
	return cb_throttle(&r->c, bytes);
}

static void add_result(struct rkd_walker *w, struct tstat *t, const struct rk_sweep_result *res)
{
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	t->chunks_checked += res->chunks_checked;
	t->chunks_rewritten += res->chunks_rewritten;
	t->bytes_rewritten += res->bytes_rewritten;
	t->chunks_failed += res->chunks_failed;
	rk_mutex_unlock(&w->lock);
	atomic_fetch_add(&w->walker_rewritten, res->chunks_rewritten);
}

/* Whole-file rekey of a file nobody has open.  0 done; -ECANCELED stop;
 * any other error: the file is as it was, use the in-place path. */
static int replace_one_file(struct rkd_walker *w, const struct rk_walk_ent *e, struct tstat *t, struct rk_key *key,
                            struct rkd_inode *in)
{
	struct rkd_fs *fs = w->fs;
	struct replace_ctx rc = {{w, NULL}, in, 0};
	rk_mutex_lock(&in->lock, RK_RANK_INODE);
	bool busy = in->of != NULL;
	rc.gen = atomic_load(&in->open_gen);
	rk_mutex_unlock(&in->lock);
	if (busy)
		return -EBUSY;
	struct rk_replace_cb cb = {cb_replace_throttle, &rc};
	struct rk_sweep_result res;
	struct rk_replace *r;
	int ret = rk_replace_prepare(e->dirfd, e->name, e->rel, fs->kr, key, &cb, &res, &r);
	if (ret == 0)
		ret = rkd_replace_commit(fs, in, rc.gen, r);
	int r2 = rk_replace_end(r);
	if (ret == 0) {
		add_result(w, t, &res);
		atomic_fetch_add(&w->files_replaced, 1);
		ret = r2;
	}
	return ret;
}

static int sweep_one_file(struct rkd_walker *w, const struct rk_walk_ent *e, struct tstat *t, struct rk_key *key,
                          bool whole)
{
	struct rkd_fs *fs = w->fs;
	struct rkd_inode *in;
	struct rkd_file *f;
	int ret = rkd_inode_at_path(fs, e->dirfd, e->name, e->rel, &in);
	if (ret < 0)
		return ret == -ENOENT ? 0 : ret;
	if (whole && S_ISREG(in->type)) {
		ret = replace_one_file(w, e, t, key, in);
		if (ret == 0 || ret == -ECANCELED) {
			rkd_inode_put(fs, in);
			return ret;
		}
		/* opened or changed meanwhile, hard links, no room for a copy, an
		 * unreadable chunk: chunk by chunk, in place */
	}
	ret = rkd_file_get(fs, in, &f);
	if (ret < 0) {
		rkd_inode_put(fs, in);
		return ret == -ENOENT ? 0 : ret;
	}
	if (!f->chunk || !f->rw) {
		rkd_file_put(fs, in, f);
		rkd_inode_put(fs, in);
		return 0;
	}
	struct sweep_ctx c = {w, f};
	struct rk_sweep_cb cb = {cb_lock, cb_unlock, cb_throttle, &c};
	struct rk_sweep_result res;
	ret = rk_sweep_file(f->cf, key, &cb, 0, &res);
	add_result(w, t, &res);
	if (res.chunks_failed)
		add_error(w, "%s: %" PRIu64 " chunk(s) could not be read and keep their key (see fsck --deep)", e->rel,
		          res.chunks_failed);
	/* header counts on disk */
	rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
	int r2 = rk_cf_flush(f->cf);
	rk_rw_unlock(&f->rw_lock);
	if (ret == 0)
		ret = r2;
	rkd_file_put(fs, in, f);
	rkd_inode_put(fs, in);
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
	if (!in_filter(w, tpath))
		return 0;
	struct rk_key *key;
	int ret = rk_keyring_get(fs->kr, kname, &key);
	if (ret < 0) {
		add_error(w, "table %s: target key '%s' cannot be used: %s", tpath, kname, rk_strerror(ret));
		return 0;
	}
	bool chunk, needs;
	uint64_t nchunks, todo;
	ret = header_needs(e->dirfd, e->name, e->rel, key, &chunk, &needs, &nchunks, &todo);
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct tstat *t = tstat_for(w, tpath);
	if (c->prescan) {
		if (chunk) {
			t->files_total++;
			t->chunks_total += nchunks;
			t->chunks_todo += todo;
			/* a resumed sweep: files before the checkpoint are done */
			if (w->position[0] && rk_walk_cmp(e->rel, w->position) <= 0)
				t->chunks_done += nchunks;
		}
		rk_mutex_unlock(&w->lock);
		return atomic_load(&w->stop) ? -ECANCELED : 0;
	}
	rk_mutex_unlock(&w->lock);
	if (ret < 0) {
		add_error(w, "%s: cannot read the header: %s", e->rel, rk_strerror(ret));
	} else if (chunk && needs) {
		for (;;) {
			/* whole-file replacement writes every chunk once; in place writes
			 * each old-key chunk twice (journal, slot): replace when at
			 * least half the chunks need it */
			bool whole = fs->o.whole_file && todo > 0 && todo * 2 >= nchunks;
			ret = sweep_one_file(w, e, t, key, whole);
			if (ret == -ENOSPC || ret == -EDQUOT || ret == -EIO) {
				/* the old chunks stay readable; retry this file once space is back */
				rk_mutex_lock(&w->lock, RK_RANK_WALKER);
				bool first = !w->waiting_space;
				w->waiting_space = true;
				rk_mutex_unlock(&w->lock);
				if (first)
					add_error(w, "%s: %s while rewriting; the old chunks stay in place, the sweep waits and "
					             "retries", e->rel, strerror(-ret));
				if (atomic_load(&w->stop))
					return -ECANCELED;
				sleep_ms(1000);
				continue;
			}
			break;
		}
		rk_mutex_lock(&w->lock, RK_RANK_WALKER);
		w->waiting_space = false;
		rk_mutex_unlock(&w->lock);
		if (ret == -ECANCELED)
			return ret;
		if (ret < 0)
			add_error(w, "%s: %s", e->rel, rk_strerror(ret));
	}
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	if (chunk && c->pass == 0) {
		t->files_done++;
		t->chunks_done += nchunks;
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
struct rel_ctx {
	struct rkd_fs *fs;
	const char *name;
	uint64_t chunks, files, malformed;
	char first[4][PATH_MAX];
	int nfirst;
	int err;
};

static int rel_visit(const struct rk_walk_ent *e, void *arg)
{
	struct rel_ctx *c = arg;
	struct rkd_fs *fs = c->fs;
	if (!S_ISREG(e->st->st_mode))
		return 0;
	struct rkd_inode *in;
	struct rkd_file *f;
	/* through the shared file state: open files' pending chunks count too */
	int ret = rkd_inode_at_path(fs, e->dirfd, e->name, e->rel, &in);
	if (ret < 0)
		return ret == -ENOENT ? 0 : ret;
	ret = rkd_file_get(fs, in, &f);
	if (ret < 0) {
		rkd_inode_put(fs, in);
		if (ret == -ENOENT)
			return 0;
		c->err = ret;
		/* an unreadable header could hide chunks under the key: refuse */
		c->chunks++;
		c->files++;
		if (c->nfirst < 4)
			snprintf(c->first[c->nfirst++], PATH_MAX, "%s (unreadable header)", e->rel);
		return 0;
	}
	if (f->chunk) {
		uint64_t counts[RK_CF_MAX_KEYS], malformed;
		struct rk_cf_header h;
		rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW); /* no writes while the references are read */
		ret = rk_scan_key_refs(f->cf, counts, &malformed);
		rk_cf_get_header(f->cf, &h);
		rk_rw_unlock(&f->rw_lock);
		uint64_t n = 0;
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			if (h.keys[j].in_use && strcmp(h.keys[j].name, c->name) == 0)
				n += counts[j];
		/* a malformed slot header might be a chunk under the key: count it */
		n += malformed;
		c->malformed += malformed;
		if (ret < 0)
			n++;
		if (n) {
			c->chunks += n;
			c->files++;
			if (c->nfirst < 4)
				snprintf(c->first[c->nfirst++], PATH_MAX, "%s", e->rel);
		}
	}
	rkd_file_put(fs, in, f);
	rkd_inode_put(fs, in);
	return 0;
}

static void forget_in(struct rkd_file *f, void *arg) { rk_cf_forget_key(f->cf, (const char *)arg); }

static int release_key(struct rkd_fs *fs, const char *name, char **out, size_t *len)
{
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	struct rk_regent *re = rk_registry_find(fs->dd, name);
	enum rk_keystate st = re ? re->state : RK_KS_ACTIVE;
	const char *target_of = NULL;
	for (size_t i = 0; i < fs->dd->ntables; i++)
		if (strcmp(fs->dd->tables[i].key, name) == 0)
			target_of = fs->dd->tables[i].path;
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
	struct rel_ctx c = {.fs = fs, .name = name};
	int ret = rk_walk(fs->rootfd, "/", rel_visit, &c);
	if (ret < 0)
		return rkd_reply(out, len, ret, "release of '%s' refused: the scan failed: %s", name, rk_strerror(ret));
	if (c.chunks) {
		char list[4 * PATH_MAX + 16] = "";
		size_t l = 0;
		for (int i = 0; i < c.nfirst && l < sizeof(list) - 1; i++)
			l += (size_t)snprintf(list + l, sizeof(list) - l, "%s%s", i ? ", " : "", c.first[i]);
		return rkd_reply(out, len, -EBUSY,
		                 "release of '%s' refused: %" PRIu64 " chunk(s) in %" PRIu64
		                 " file(s) are still under it (%s%s); run 'rekeyctl rekey' and wait for the sweep",
		                 name, c.chunks, c.files, list, c.files > (uint64_t)c.nfirst ? ", ..." : "");
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
			const char *stn = wstate_name[w->state];
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
	const char *stn = wstate_name[w->state];
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
	              wstate_name[w->state], w->sweep_id, (long long)w->started, (long long)w->finished, w->rate, bps,
	              w->waiting_space ? "true" : "false");
	rkd_jb_str(b, w->position);
	rkd_jb_printf(b, ",\n    \"chunks_rewritten_walker\": %" PRIu64 ", \"chunks_rewritten_lazy\": %" PRIu64
	                 ", \"files_replaced\": %" PRIu64 ", \"lazy_queued\": %" PRIu64 ", \"lazy_dropped\": %" PRIu64
	                 ", \"error_count\": %" PRIu64 ",\n    \"tables\": [",
	              (uint64_t)atomic_load(&w->walker_rewritten), (uint64_t)atomic_load(&w->lazy_rewritten),
	              (uint64_t)atomic_load(&w->files_replaced),
	              (uint64_t)atomic_load(&w->lazy_queued), (uint64_t)atomic_load(&w->lazy_dropped), w->error_count);
	for (int i = 0; i < w->ntables; i++) {
		struct tstat *t = &w->tables[i];
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
