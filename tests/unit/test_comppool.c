/* rekeyfs unit tests - the compression helper pool (comppool.h): payloads
 * come back in order and intact, helpers really compress in parallel with
 * the caller, a job without helpers, an early finish, and two jobs at once. */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/comppool.h"
#include "rekeyfs/compress.h"

#define CS (16 * 1024)
#define N 48

/* chunk i: text, except every 5th chunk random (stored raw) */
static uint8_t *make_input(uint64_t seed)
{
	uint8_t *in = tu_malloc((size_t)N * CS);
	for (size_t i = 0; i < N; i++) {
		if (i % 5 == 4)
			tu_fill_random(in + i * CS, CS, seed + i);
		else
			tu_fill_text(in + i * CS, CS, seed + i);
	}
	return in;
}

struct ctr {
	pthread_mutex_t m;
	pthread_cond_t c;
	pthread_t first;
	int threads;       /* distinct threads seen (1 or 2) */
	bool gate;         /* the first call waits until a second thread calls */
	atomic_uint calls; /* chunks compressed */
};

static enum rk_comp fn_plain(void *arg, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen)
{
	struct ctr *c = arg;
	atomic_fetch_add(&c->calls, 1);
	return rk_comp_chunk(RK_COMP_SNAPPY, in, len, out, outlen);
}

/* The first call blocks until a call from another thread arrives (60 s
 * deadline): completes only if two threads compress at the same time. */
static enum rk_comp fn_gate(void *arg, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen)
{
	struct ctr *c = arg;
	pthread_mutex_lock(&c->m);
	if (c->threads == 0) {
		c->threads = 1;
		c->first = pthread_self();
		struct timespec dl;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += 60;
		while (c->threads < 2)
			if (pthread_cond_timedwait(&c->c, &c->m, &dl) == ETIMEDOUT)
				break;
	} else if (c->threads == 1 && !pthread_equal(c->first, pthread_self())) {
		c->threads = 2;
		pthread_cond_broadcast(&c->c);
	}
	pthread_mutex_unlock(&c->m);
	return fn_plain(arg, in, len, out, outlen);
}

/* Run a job over in (N chunks), checking every payload against the input;
 * stop after `upto` chunks (N: all). */
static void run_job(const uint8_t *in, rk_cjob_fn fn, struct ctr *c, uint64_t upto)
{
	struct rk_cjob j = {.in = in, .cs = CS, .n = N, .fn = fn, .arg = c};
	uint8_t *back = tu_malloc(CS);
	assert_int_equal(rk_cjob_start(&j), 0);
	for (uint64_t i = 0; i < upto; i++) {
		size_t clen;
		enum rk_comp used;
		const uint8_t *p = rk_cjob_get(&j, i, &clen, &used);
		if (i % 5 == 4) {
			assert_int_equal(used, RK_COMP_NONE);
		} else {
			assert_int_equal(used, RK_COMP_SNAPPY);
			assert_true(clen <= CS - CS / 8);
		}
		assert_int_equal(rk_decomp_chunk(used, p, clen, back, CS, CS), 0);
		assert_memory_equal(back, in + i * CS, CS);
		rk_cjob_done(&j, i);
	}
	rk_cjob_finish(&j);
	free(back);
}

static void ctr_init(struct ctr *c)
{
	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->m, NULL);
	pthread_cond_init(&c->c, NULL);
}

static void test_parallel(void **state)
{
	(void)state;
	uint8_t *in = make_input(1);
	struct ctr c;
	ctr_init(&c);
	assert_int_equal(rk_comp_pool_set_threads(2), 0);
	uint64_t h0 = rk_comp_pool_helped();
	run_job(in, fn_gate, &c, N);
	/* two threads were inside the compressor at once */
	assert_int_equal(c.threads, 2);
	assert_int_equal(atomic_load(&c.calls), N);
	assert_true(rk_comp_pool_helped() > h0);
	rk_comp_pool_shutdown();
	free(in);
}

static void test_no_helpers(void **state)
{
	(void)state;
	uint8_t *in = make_input(2);
	struct ctr c;
	ctr_init(&c);
	assert_int_equal(rk_comp_pool_set_threads(0), 0);
	uint64_t h0 = rk_comp_pool_helped();
	run_job(in, fn_plain, &c, N);
	assert_int_equal(rk_comp_pool_helped(), h0);
	assert_int_equal(atomic_load(&c.calls), N);
	/* a solo job (data stored raw) never gets helpers */
	assert_int_equal(rk_comp_pool_set_threads(2), 0);
	struct rk_cjob j = {.in = in, .cs = CS, .n = N, .fn = fn_plain, .arg = &c, .solo = true};
	assert_int_equal(rk_cjob_start(&j), 0);
	for (uint64_t i = 0; i < N; i++) {
		size_t clen;
		enum rk_comp used;
		(void)rk_cjob_get(&j, i, &clen, &used);
		rk_cjob_done(&j, i);
	}
	rk_cjob_finish(&j);
	assert_int_equal(rk_comp_pool_helped(), h0);
	assert_int_equal(atomic_load(&c.calls), 2 * N);
	rk_comp_pool_shutdown();
	assert_int_equal(rk_comp_pool_set_threads(-1), 0);
	free(in);
}

static void test_early_finish(void **state)
{
	(void)state;
	uint8_t *in = make_input(3);
	struct ctr c;
	ctr_init(&c);
	assert_int_equal(rk_comp_pool_set_threads(3), 0);
	for (int r = 0; r < 20; r++) {
		atomic_store(&c.calls, 0);
		run_job(in, fn_plain, &c, 3);
		/* helpers never run past the ring: at most RK_CJOB_WIN ahead */
		assert_true(atomic_load(&c.calls) >= 3);
		assert_true(atomic_load(&c.calls) <= 3 + RK_CJOB_WIN);
	}
	/* a one-chunk job and a job of zero consumed chunks */
	struct rk_cjob j = {.in = in, .cs = CS, .n = 1, .fn = fn_plain, .arg = &c};
	assert_int_equal(rk_cjob_start(&j), 0);
	rk_cjob_finish(&j);
	rk_comp_pool_shutdown();
	free(in);
}

struct th {
	const uint8_t *in;
	struct ctr c;
};

static void *job_thread(void *arg)
{
	struct th *t = arg;
	for (int r = 0; r < 10; r++)
		run_job(t->in, fn_plain, &t->c, N);
	return NULL;
}

static void test_two_jobs(void **state)
{
	(void)state;
	struct th t[2];
	pthread_t tid[2];
	assert_int_equal(rk_comp_pool_set_threads(2), 0);
	for (int i = 0; i < 2; i++) {
		t[i].in = make_input(10 + (uint64_t)i);
		ctr_init(&t[i].c);
		assert_int_equal(pthread_create(&tid[i], NULL, job_thread, &t[i]), 0);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(tid[i], NULL);
		assert_int_equal(atomic_load(&t[i].c.calls), 10 * N);
		free((void *)t[i].in);
	}
	rk_comp_pool_shutdown();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parallel),
		cmocka_unit_test(test_no_helpers),
		cmocka_unit_test(test_early_finish),
		cmocka_unit_test(test_two_jobs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
