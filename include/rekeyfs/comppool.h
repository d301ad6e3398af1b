/* rekeyfs - compressing the chunks of one large write on more than one core.
 *
 * A write of n whole chunks is a job: the chunks are compressed in order by
 * the calling thread and by the helper threads of a small process-wide pool,
 * while the caller seals and writes them one by one, in chunk order (so the
 * order of the slot writes, and with it every crash guarantee, is that of a
 * single-threaded write).  Helpers run at most RK_CJOB_WIN chunks ahead of
 * the chunk being written (a ring of compressed payloads).  One job at a time
 * gets helpers; a job started while another has them is compressed by its
 * own thread alone.  The pool's lock (RK_RANK_COMPPOOL) is a leaf: nothing
 * is taken while it is held, and a helper holds no other lock. */
#ifndef REKEYFS_COMPPOOL_H
#define REKEYFS_COMPPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compress.h"

#define RK_CJOB_WIN 8

/* Compress in[0..len) into out (capacity of the job's cap): the method used
 * and *outlen as rk_comp_chunk.  Called from any thread, concurrently. */
typedef enum rk_comp (*rk_cjob_fn)(void *arg, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen);

struct rk_cjob {
	/* set by the caller before rk_cjob_start */
	const uint8_t *in; /* n chunks of cs bytes, back to back */
	uint32_t cs;
	uint64_t n;
	rk_cjob_fn fn;
	void *arg;
	bool solo; /* compress on the calling thread only (nothing to gain from
	            * helpers: e.g. the data is being stored raw) */
	/* private (pool lock while attached) */
	uint8_t *ring;
	size_t cap;
	unsigned win;
	bool attached, waiting;
	unsigned active;
	uint64_t next, limit, consumed;
	uint64_t ready[RK_CJOB_WIN]; /* chunk index + 1 held by each ring slot, 0: none */
	size_t clen[RK_CJOB_WIN];
	enum rk_comp used[RK_CJOB_WIN];
};

/* Number of helper threads: n >= 0, or -1 for automatic (one fewer than the
 * online CPUs, at most 3).  Takes effect for jobs started afterwards; helpers
 * are started on first use.  Returns 0 or a negative errno. */
int rk_comp_pool_set_threads(int n);
/* Stop and join the helpers (they are started again on next use). */
void rk_comp_pool_shutdown(void);
/* Chunks compressed by helper threads since the start (tests, status). */
uint64_t rk_comp_pool_helped(void);

/* Start job j (its fields in, cs, n, fn, arg set; n >= 1).  The ring of
 * compressed payloads is the calling thread's RK_SCR_BATCH scratch buffer.
 * 0, or -ENOMEM. */
int rk_cjob_start(struct rk_cjob *j);
/* Chunk i (in order: 0, 1, ...) compressed: the payload, its length and
 * method.  Compresses other chunks of the job while it waits.  The payload
 * stays valid until rk_cjob_done(j, i). */
const uint8_t *rk_cjob_get(struct rk_cjob *j, uint64_t i, size_t *clen, enum rk_comp *used);
/* Chunk i has been consumed: its ring slot may take another chunk. */
void rk_cjob_done(struct rk_cjob *j, uint64_t i);
/* End job j (also early, after an error): no chunk is claimed any more and
 * the helpers working on it have finished when this returns. */
void rk_cjob_finish(struct rk_cjob *j);

#endif
