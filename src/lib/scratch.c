/* rekeyfs - per-thread state: named scratch buffers and the cipher context
 * cache, one object per thread (see include/rekeyfs/scratch.h). */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>

#include "rekeyfs/scratch.h"

static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;

static void state_free(void *arg)
{
	struct rk_thread_state *s = arg;
	if (!s)
		return;
	for (int i = 0; i < RK_SCR_COUNT; i++)
		free(s->buf[i]);
	if (s->crypto && s->crypto_free)
		s->crypto_free(s->crypto);
	free(s);
}

static void state_init(void) { pthread_key_create(&state_key, state_free); }

struct rk_thread_state *rk_thread_state_peek(void)
{
	pthread_once(&state_once, state_init);
	return pthread_getspecific(state_key);
}

struct rk_thread_state *rk_thread_state(void)
{
	struct rk_thread_state *s = rk_thread_state_peek();
	if (!s) {
		s = calloc(1, sizeof(*s));
		if (!s)
			return NULL;
		pthread_setspecific(state_key, s);
	}
	return s;
}

void rk_thread_state_free(void)
{
	struct rk_thread_state *s = rk_thread_state_peek();
	if (s) {
		pthread_setspecific(state_key, NULL);
		state_free(s);
	}
}

uint8_t *rk_scratch(enum rk_scratch_slot which, size_t len)
{
	struct rk_thread_state *s = rk_thread_state();
	if (!s || (unsigned)which >= RK_SCR_COUNT)
		return NULL;
	if (s->len[which] < len) {
		/* grow in 64 KiB steps: after warm-up no request allocates */
		size_t want = rk_scratch_size(len);
		uint8_t *np = aligned_alloc(RK_SCRATCH_ALIGN, (want + RK_SCRATCH_ALIGN - 1) / RK_SCRATCH_ALIGN * RK_SCRATCH_ALIGN);
		if (!np)
			return NULL;
		free(s->buf[which]);
		s->buf[which] = np;
		s->len[which] = want;
	}
	return s->buf[which];
}
