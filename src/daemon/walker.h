/* rekeyfs daemon - the walker's shared state: walker.c runs the sweeps, the
 * lazy rewrite and the throttle; walker_rewrap.c the online rewrap's visit;
 * walker_state.c the clock, the checkpoint write, pacing and the queueing
 * of requests; walker_ctl.c answers the control commands (rekey, rewrap,
 * pause, resume, rate, release) and builds the status JSON. */
#ifndef REKEYFS_DAEMON_WALKER_H
#define REKEYFS_DAEMON_WALKER_H

#include <limits.h>
#include <time.h>

#include "daemon.h"
#include "rekeyfs/rekey.h"

#define LAZY_QUEUE 4096
#define MAX_ERRORS 16
#define MAX_TABLES RK_REKEY_MAX_TABLES
#define RATE_SAMPLES 8       /* one per second at most: the recent rate spans the last ~5 s */
#define MAX_PASSES 1000      /* passes that still rewrite chunks before a sweep gives up */

/* the walker's run states are the checkpoint's (rekeyfs/rekey.h) */
#define W_IDLE RK_RS_IDLE
#define W_RUNNING RK_RS_RUNNING
#define W_PAUSED RK_RS_PAUSED

struct lazy_ent {
	struct rkd_inode *in;
	struct rkd_file *f;
	uint64_t idx;
};

struct werr {
	time_t time;
	char path[PATH_MAX]; /* "" when none */
	uint64_t chunk;
	bool has_chunk;
	char cause[512];
};

struct rkd_walker {
	struct rkd_fs *fs;
	pthread_t thr, lazy_thr;
	/* rank RK_RANK_CKPT_FILE (8): serializes checkpoint writes (file I/O);
	 * taken with no other lock held, then w->lock briefly for the snapshot */
	pthread_mutex_t ckpt_lock;
	/* rank RK_RANK_WALKER (78): every field below up to the lazy queue
	 * (state, requests, filter, counters, tables, position, error ring,
	 * waiting_space, rate, samples, last_save); never held across file
	 * I/O, a sweep or a wait on another lock's holder.  cond (CLOCK_MONOTONIC)
	 * is broadcast on every request, pause, resume, rate change and stop:
	 * the walker thread and the throttle wait on it with a deadline. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum rk_rekey_state state; /* W_IDLE between sweeps */
	atomic_bool stop;          /* set once at shutdown (also under lock, for cond waits) */
	bool resume_pending;       /* the checkpointed sweep continues (same id) */
	bool start_paused;         /* ... and it was paused */
	bool queued;               /* a request waits for the next sweep (id sweep_id + 1) */
	char qfilter[MAX_TABLES][RK_TABLE_PATH_MAX];
	int nqfilter;              /* 0: every table */
	char filter[MAX_TABLES][RK_TABLE_PATH_MAX];
	int nfilter;
	uint64_t sweep_id, finished_sweep;
	time_t started, finished;
	enum rk_rekey_result result; /* of finished_sweep */
	uint64_t remaining;
	bool remaining_known;
	char reason[256];
	char position[PATH_MAX];   /* last file finished (walk order) */
	struct rk_rekey_tstat tables[MAX_TABLES];
	int ntables;
	uint64_t rate;             /* bytes/s, 0 unlimited */
	bool rate_set;             /* set at run time (checkpointed) */
	double tokens;
	struct timespec last_refill;
	uint64_t sweep_bytes;      /* bytes rewritten by this sweep (what the rate limits) */
	struct {
		double t;
		uint64_t bytes;
	} samples[RATE_SAMPLES];
	int nsamples, sample_next;
	/* the file being rekeyed: current_file / current_offset */
	char cur_file[PATH_MAX];
	bool cur_valid;
	uint64_t cur_off, cur_size;
	uint32_t cur_cs;
	int cur_table;             /* index into tables counting progress (-1: a later pass) */
	uint64_t cur_base_bytes, cur_base_chunks;
	struct werr errors[MAX_ERRORS];
	int nerrors, error_next;
	uint64_t error_count;
	bool waiting_space;
	double last_save;          /* CLOCK_MONOTONIC seconds */
	/* an online rewrap (walker_rewrap.c): this sweep rewraps the data keys
	 * wrapped under rw_from to rw_to, headers only; written by the walker
	 * thread (start_locked) and the checkpoint load only.  qrewrap: the
	 * queued request is one (a reseal request merged into it makes it a
	 * reseal: a reseal does more) */
	bool rewrap, qrewrap;
	char rw_from[RK_KEY_NAME_MAX + 1], rw_to[RK_KEY_NAME_MAX + 1];
	char qrw_from[RK_KEY_NAME_MAX + 1], qrw_to[RK_KEY_NAME_MAX + 1];
	/* lazy queue: rank RK_RANK_LAZYQ (50), guards q, qhead, qlen; taken on
	 * the read path under a file's rw_lock and stripe, before inode locks */
	pthread_mutex_t qlock;
	pthread_cond_t qcond;
	struct lazy_ent q[LAZY_QUEUE];
	int qhead, qlen;
	atomic_uint_fast64_t lazy_rewritten, lazy_queued, lazy_dropped, walker_rewritten, files_replaced;
	atomic_uint_fast64_t files_rewrapped; /* files whose header a rewrap rewrote (data keys rewrapped) */
};

/* what a walk of the sweep does: count before, rekey (or rewrap), count after */
enum walk_mode { M_PRESCAN, M_REKEY, M_COUNT };

/* one rewrap sweep's per-walk state (walker_rewrap.c) */
struct rw_walk {
	uint64_t file_errors, unreadable_headers;
	bool resumed_first; /* a resumed sweep before its first rewrap: header copies are made equal */
};

/* header bytes a rewrap writes per file (both copies): what walker_rate counts in a rewrap */
#define RW_FILE_BYTES ((uint64_t)RK_HDR_AREA)

/* seconds on CLOCK_MONOTONIC */
double rkd_walker_now(void);
/* Wait on w->cond (w->lock held) until woken or secs have passed. */
void rkd_walker_wait_secs(struct rkd_walker *w, double secs);
/* Write the walker's state as it is now (takes ckpt_lock then w->lock: call with no lock held). */
int rkd_walker_save(struct rkd_walker *w);
/* The release scan's per-file access (walker.c). */
int rkd_walker_key_refs(void *arg, const struct rk_walk_ent *e, struct rk_key_refs *out);
/* Queue a sweep of tables[n] (n == 0: every table) after the running one,
 * or start it when none runs; w->lock held.  With may_join, a request the
 * running sweep covers (it selects every table asked for) joins it.  *id
 * is the serving sweep and the reply text says how ("sweep N started",
 * "joins running sweep N", "queued as sweep N after sweep M", "joins
 * queued sweep N"). */
void rkd_walker_request_locked(struct rkd_walker *w, char (*tables)[RK_TABLE_PATH_MAX], int n, bool may_join,
                               uint64_t *id, char *how, size_t howlen);
/* A rewrap request (from -> to) of tables[n]; w->lock held.  Joins a running
 * sweep that covers it (a reseal does more) or a queued one (a queued reseal
 * absorbs it; a queued rewrap of other keys: -EBUSY), else queues it.  0 or
 * -EBUSY (how says why). */
int rkd_walker_rewrap_request_locked(struct rkd_walker *w, char (*tables)[RK_TABLE_PATH_MAX], int n, const char *from,
                                     const char *to, uint64_t *id, char *how, size_t howlen);
/* Rate, pause and stop between two units of work (w->lock held): bytes are
 * charged against walker_rate; waits on w->cond.  0 or -ECANCELED. */
int rkd_walker_pace_locked(struct rkd_walker *w, uint64_t bytes);
/* One file of a rewrap sweep, in the given walk (walker_rewrap.c); table tpath
 * is selected.  0, or -ECANCELED at shutdown. */
int rkd_rewrap_visit(struct rkd_walker *w, struct rw_walk *rw, enum walk_mode mode, int pass,
                     const struct rk_walk_ent *e, const char *tpath);
/* Can the daemon rewrap from -> to (both keys load, same cipher and strength)?
 * 0, or a negative errno with why[] said. */
int rkd_rewrap_keys_check(struct rkd_fs *fs, const char *from, const char *to, char *why, size_t len);
/* the contract's state word: idle, running, paused, finished, incomplete */
const char *rkd_walker_state_word(const struct rkd_walker *w);

#endif
