/* rekeyfs unit tests - the slot arithmetic of the chunk-file layout
 * (include/rekeyfs/format.h) and the per-thread scratch slots
 * (include/rekeyfs/scratch.h). */
#include "config.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "rekeyfs/format.h"
#include "rekeyfs/scratch.h"

#define CS 4096u
#define SS (CS + RK_SLOT_OVERHEAD)

static void test_slot_offsets(void **state)
{
	(void)state;
	assert_int_equal(SS, 4160);
	assert_int_equal(rk_slot_off(SS, 0), 8192);
	assert_int_equal(rk_slot_off(SS, 1), 8192 + 4160);
	/* large indices do not overflow 32 bits */
	assert_true(rk_slot_off(RK_CHUNK_MAX + RK_SLOT_OVERHEAD, 1ULL << 40) ==
	            8192 + (1ULL << 40) * (uint64_t)(RK_CHUNK_MAX + RK_SLOT_OVERHEAD));
}

static void test_chunk_counts(void **state)
{
	(void)state;
	assert_int_equal(rk_chunk_count(0, CS), 0);
	assert_int_equal(rk_chunk_count(1, CS), 1);
	assert_int_equal(rk_chunk_count(CS, CS), 1);
	assert_int_equal(rk_chunk_count(CS + 1, CS), 2);
	assert_int_equal(rk_chunk_plain_len(0, CS, 0), 0);
	assert_int_equal(rk_chunk_plain_len(10, CS, 0), 10);
	assert_int_equal(rk_chunk_plain_len(CS, CS, 0), CS);
	assert_int_equal(rk_chunk_plain_len(CS, CS, 1), 0);
	assert_int_equal(rk_chunk_plain_len(2 * CS + 7, CS, 1), CS);
	assert_int_equal(rk_chunk_plain_len(2 * CS + 7, CS, 2), 7);
	assert_int_equal(rk_chunk_plain_len(2 * CS + 7, CS, 3), 0);
}

static void test_stored_len(void **state)
{
	(void)state;
	assert_int_equal(rk_cf_stored_len(CS, 0), RK_HDR_AREA);
	assert_int_equal(rk_cf_stored_len(CS, 1), 8192 + SS);
	assert_int_equal(rk_cf_stored_len(CS, CS), 8192 + SS);
	assert_int_equal(rk_cf_stored_len(CS, CS + 1), 8192 + 2 * SS);
}

static void test_slots_reached(void **state)
{
	(void)state;
	/* slots a stored file reaches into, and slots whose header it holds */
	assert_int_equal(rk_slots_reached(0, SS), 0);
	assert_int_equal(rk_slots_reached(RK_HDR_AREA, SS), 0);
	assert_int_equal(rk_slots_reached(RK_HDR_AREA + 1, SS), 1);
	assert_int_equal(rk_slots_reached(RK_HDR_AREA + SS, SS), 1);
	assert_int_equal(rk_slots_reached(RK_HDR_AREA + SS + 1, SS), 2);
	assert_int_equal(rk_slots_with_header(RK_HDR_AREA, SS), 0);
	assert_int_equal(rk_slots_with_header(RK_HDR_AREA + RK_SLOT_HDR - 1, SS), 0);
	assert_int_equal(rk_slots_with_header(RK_HDR_AREA + RK_SLOT_HDR, SS), 1);
	assert_int_equal(rk_slots_with_header(RK_HDR_AREA + SS, SS), 1);
	assert_int_equal(rk_slots_with_header(RK_HDR_AREA + SS + RK_SLOT_HDR, SS), 2);
	/* a file cut to the stored length of a size reaches exactly its chunks */
	for (uint64_t size = 0; size < 5 * CS; size += 997)
		assert_int_equal(rk_slots_reached(rk_cf_stored_len(CS, size), SS), rk_chunk_count(size, CS));
}

static void test_scratch_slots(void **state)
{
	(void)state;
	assert_int_equal(rk_scratch_size(1), RK_SCRATCH_STEP);
	assert_int_equal(rk_scratch_size(RK_SCRATCH_STEP), RK_SCRATCH_STEP);
	assert_int_equal(rk_scratch_size(RK_SCRATCH_STEP + 1), 2 * RK_SCRATCH_STEP);
	uint8_t *p[RK_SCR_COUNT];
	for (int i = 0; i < RK_SCR_COUNT; i++) {
		p[i] = rk_scratch((enum rk_scratch_slot)i, 100);
		assert_non_null(p[i]);
		assert_int_equal((uintptr_t)p[i] % RK_SCRATCH_ALIGN, 0);
		memset(p[i], i + 1, 100);
		for (int j = 0; j < i; j++)
			assert_ptr_not_equal(p[i], p[j]);
	}
	/* same size again: the same buffer, content kept */
	for (int i = 0; i < RK_SCR_COUNT; i++) {
		assert_ptr_equal(rk_scratch((enum rk_scratch_slot)i, RK_SCRATCH_STEP), p[i]);
		assert_int_equal(p[i][99], i + 1);
	}
	assert_non_null(rk_scratch(RK_SCR_CHUNK, RK_SCRATCH_STEP + 1));
	assert_null(rk_scratch(RK_SCR_COUNT, 1));
	struct rk_thread_state *s = rk_thread_state_peek();
	assert_non_null(s);
	assert_int_equal(s->len[RK_SCR_CHUNK], 2 * RK_SCRATCH_STEP);
	rk_thread_state_free();
	assert_null(rk_thread_state_peek());
}

static void *other_thread(void *arg)
{
	return rk_scratch(RK_SCR_SLOT_IN, 10) == arg ? (void *)1 : NULL;
}

static void test_scratch_per_thread(void **state)
{
	(void)state;
	uint8_t *mine = rk_scratch(RK_SCR_SLOT_IN, 10);
	pthread_t t;
	void *same = (void *)1;
	assert_non_null(mine);
	assert_int_equal(pthread_create(&t, NULL, other_thread, mine), 0);
	assert_int_equal(pthread_join(t, &same), 0);
	assert_null(same);
	rk_thread_state_free();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_slot_offsets),  cmocka_unit_test(test_chunk_counts),
		cmocka_unit_test(test_stored_len),    cmocka_unit_test(test_slots_reached),
		cmocka_unit_test(test_scratch_slots), cmocka_unit_test(test_scratch_per_thread),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
