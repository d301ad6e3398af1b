/* rekeyfs - the compression helper pool (see rekeyfs/comppool.h). */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/comppool.h"
#include "rekeyfs/lockrank.h"
#include "rekeyfs/scratch.h"

#define POOL_MAX 3

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work; /* helpers: a job was attached or its window moved */
	pthread_cond_t done; /* callers: a chunk is ready, or a helper left a job */
	int want;            /* helpers wanted (-1: automatic) */
	int running;         /* helper threads started */
	unsigned idle;       /* helpers waiting on work */
	bool stop;
	struct rk_cjob *cur; /* the job that has helpers, or NULL */
	pthread_t tid[POOL_MAX];
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, -1, 0, 0, false, NULL, {0}};

static atomic_uint_fast64_t helped;

uint64_t rk_comp_pool_helped(void) { return atomic_load(&helped); }

static int auto_threads(void)
{
	long c = sysconf(_SC_NPROCESSORS_ONLN);
	if (c < 2)
		return 0;
	return (int)RK_MIN(c - 1, (long)POOL_MAX);
}

/* Can a chunk of j be claimed now?  Pool lock held. */
static bool claimable(const struct rk_cjob *j)
{
	return j->next < j->limit && j->next < j->consumed + j->win;
}

/* Compress chunk k of j (claimed; no lock held) and publish it. */
static void compress_one(struct rk_cjob *j, uint64_t k, bool helper)
{
	unsigned s = (unsigned)(k % j->win);
	size_t clen = 0;
	enum rk_comp used = j->fn(j->arg, j->in + k * j->cs, j->cs, j->ring + s * j->cap, &clen);
	rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
	j->clen[s] = clen;
	j->used[s] = used;
	j->ready[s] = k + 1;
	if (helper) {
		j->active--;
		if (j->waiting)
			pthread_cond_broadcast(&pool.done);
	}
	rk_mutex_unlock(&pool.lock);
}

static void *helper_main(void *arg)
{
	(void)arg;
	rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
	while (!pool.stop) {
		struct rk_cjob *j = pool.cur;
		if (j && claimable(j)) {
			uint64_t k = j->next++;
			j->active++;
			rk_mutex_unlock(&pool.lock);
			compress_one(j, k, true);
			atomic_fetch_add(&helped, 1);
			rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
			continue;
		}
		pool.idle++;
		pthread_cond_wait(&pool.work, &pool.lock);
		pool.idle--;
	}
	rk_mutex_unlock(&pool.lock);
	return NULL;
}

/* Start helpers up to the wanted number.  Pool lock held. */
static void pool_grow_locked(void)
{
	int want = pool.want < 0 ? auto_threads() : RK_MIN(pool.want, POOL_MAX);
	while (pool.running < want && !pool.stop) {
		pthread_attr_t a;
		int err = pthread_attr_init(&a);
		if (err == 0) {
			pthread_attr_setstacksize(&a, 256 * 1024);
			err = pthread_create(&pool.tid[pool.running], &a, helper_main, NULL);
			pthread_attr_destroy(&a);
		}
		if (err) {
			rk_warn("compression helper thread not started: %s", strerror(err));
			pool.want = pool.running; /* do not retry on every write */
			break;
		}
		pool.running++;
	}
}

int rk_comp_pool_set_threads(int n)
{
	if (n < -1)
		return -EINVAL;
	if (n > POOL_MAX)
		n = POOL_MAX;
	int ret = 0;
	rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
	pool.want = n;
	bool shrink = pool.running > (n < 0 ? auto_threads() : n);
	rk_mutex_unlock(&pool.lock);
	if (shrink)
		rk_comp_pool_shutdown();
	return ret;
}

void rk_comp_pool_shutdown(void)
{
	rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
	int n = pool.running;
	pool.stop = true;
	pthread_cond_broadcast(&pool.work);
	rk_mutex_unlock(&pool.lock);
	for (int i = 0; i < n; i++)
		pthread_join(pool.tid[i], NULL);
	rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
	pool.running = 0;
	pool.stop = false;
	rk_mutex_unlock(&pool.lock);
}

int rk_cjob_start(struct rk_cjob *j)
{
	size_t cap = rk_comp_bound(j->cs);
	unsigned win = (unsigned)RK_MIN((uint64_t)RK_CJOB_WIN, j->n);
	/* at most about 512 KiB of ring per writing thread (8 slots of 16 KiB
	 * chunks, 6 of 64 KiB, 2 of 1 MiB) */
	while (win > 2 && (size_t)win * cap > 512 * 1024)
		win--;
	j->ring = rk_scratch(RK_SCR_BATCH, (size_t)win * cap);
	if (!j->ring)
		return -ENOMEM;
	j->cap = cap;
	j->win = win;
	j->attached = j->waiting = false;
	j->active = 0;
	j->next = j->consumed = 0;
	j->limit = j->n;
	memset(j->ready, 0, sizeof(j->ready));
	if (j->n < 2 || j->solo)
		return 0;
	rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
	pool_grow_locked();
	if (pool.running > 0 && !pool.cur) {
		pool.cur = j;
		j->attached = true;
		if (pool.idle)
			pthread_cond_broadcast(&pool.work);
	}
	rk_mutex_unlock(&pool.lock);
	return 0;
}

const uint8_t *rk_cjob_get(struct rk_cjob *j, uint64_t i, size_t *clen, enum rk_comp *used)
{
	unsigned s = (unsigned)(i % j->win);
	if (!j->attached) {
		/* alone: chunk i is compressed now, into its slot */
		j->used[s] = j->fn(j->arg, j->in + i * j->cs, j->cs, j->ring + s * j->cap, &j->clen[s]);
		j->ready[s] = i + 1;
		j->next = i + 1;
	} else {
		rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
		while (j->ready[s] != i + 1) {
			if (claimable(j)) {
				/* help: compress the next unclaimed chunk ourselves */
				uint64_t k = j->next++;
				rk_mutex_unlock(&pool.lock);
				compress_one(j, k, false);
				rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
				continue;
			}
			j->waiting = true;
			pthread_cond_wait(&pool.done, &pool.lock);
			j->waiting = false;
		}
		rk_mutex_unlock(&pool.lock);
	}
	*clen = j->clen[s];
	*used = j->used[s];
	return j->ring + s * j->cap;
}

void rk_cjob_done(struct rk_cjob *j, uint64_t i)
{
	if (!j->attached) {
		j->consumed = i + 1;
		return;
	}
	rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
	j->consumed = i + 1;
	if (pool.idle && claimable(j))
		pthread_cond_signal(&pool.work);
	rk_mutex_unlock(&pool.lock);
}

void rk_cjob_finish(struct rk_cjob *j)
{
	if (!j->attached)
		return;
	rk_mutex_lock(&pool.lock, RK_RANK_COMPPOOL);
	j->limit = j->next; /* nothing more is claimed */
	if (pool.cur == j)
		pool.cur = NULL;
	while (j->active > 0) {
		j->waiting = true;
		pthread_cond_wait(&pool.done, &pool.lock);
	}
	j->waiting = false;
	j->attached = false;
	rk_mutex_unlock(&pool.lock);
}
