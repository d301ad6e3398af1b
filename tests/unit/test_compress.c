/* rekeyfs unit tests - chunk payload compression. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/compress.h"

#define CHUNK (64 * 1024)

struct bufs {
	uint8_t *in, *out, *back;
	size_t cap;
};

static int setup(void **state)
{
	struct bufs *b = calloc(1, sizeof(*b));
	if (!b)
		return -1;
	b->cap = rk_comp_bound(CHUNK);
	b->in = tu_malloc(CHUNK);
	b->out = tu_malloc(b->cap);
	b->back = tu_malloc(CHUNK);
	tu_log_start();
	*state = b;
	return 0;
}

static int teardown(void **state)
{
	struct bufs *b = *state;
	tu_log_stop();
	free(b->in);
	free(b->out);
	free(b->back);
	free(b);
	return 0;
}

static void test_roundtrip_text(void **state)
{
	struct bufs *b = *state;
	static const size_t sizes[] = {1, 100, 4096, 4097, CHUNK - 1, CHUNK};
	for (size_t i = 0; i < RK_ARRAY_SIZE(sizes); i++) {
		size_t len = sizes[i], olen = 0;
		tu_fill_text(b->in, len, i);
		enum rk_comp used = rk_comp_chunk(RK_COMP_SNAPPY, b->in, len, b->out, &olen);
		if (len >= 4096) {
			/* compressible data is compressed and clearly smaller */
			assert_int_equal(used, RK_COMP_SNAPPY);
			assert_true(olen <= len - len / 8);
			assert_true(olen < len / 2);
		}
		assert_true(olen <= b->cap);
		memset(b->back, 0xAA, CHUNK);
		assert_int_equal(rk_decomp_chunk(used, b->out, olen, b->back, CHUNK, len), 0);
		assert_memory_equal(b->back, b->in, len);
	}
}

static void test_random_stored_raw(void **state)
{
	struct bufs *b = *state;
	static const size_t sizes[] = {1, 17, 4096, CHUNK};
	for (size_t i = 0; i < RK_ARRAY_SIZE(sizes); i++) {
		size_t len = sizes[i], olen = 0;
		tu_fill_random(b->in, len, 100 + i);
		enum rk_comp used = rk_comp_chunk(RK_COMP_SNAPPY, b->in, len, b->out, &olen);
		assert_int_equal(used, RK_COMP_NONE);
		assert_int_equal(olen, len);
		assert_memory_equal(b->out, b->in, len);
		assert_int_equal(rk_decomp_chunk(RK_COMP_NONE, b->out, olen, b->back, CHUNK, len), 0);
		assert_memory_equal(b->back, b->in, len);
	}
	/* compression that saves less than 1/8 is not worth it: 15/16 random, 1/16 text */
	tu_fill_random(b->in, CHUNK, 7);
	tu_fill_text(b->in + CHUNK - CHUNK / 16, CHUNK / 16, 7);
	size_t olen;
	assert_int_equal(rk_comp_chunk(RK_COMP_SNAPPY, b->in, CHUNK, b->out, &olen), RK_COMP_NONE);
	assert_int_equal(olen, CHUNK);
}

static void test_want_none_and_empty(void **state)
{
	struct bufs *b = *state;
	size_t olen = 1;
	tu_fill_text(b->in, CHUNK, 3);
	assert_int_equal(rk_comp_chunk(RK_COMP_NONE, b->in, CHUNK, b->out, &olen), RK_COMP_NONE);
	assert_int_equal(olen, CHUNK);
	assert_memory_equal(b->out, b->in, CHUNK);
	assert_int_equal(rk_comp_chunk(RK_COMP_SNAPPY, b->in, 0, b->out, &olen), RK_COMP_NONE);
	assert_int_equal(olen, 0);
	assert_int_equal(rk_decomp_chunk(RK_COMP_NONE, b->out, 0, b->back, CHUNK, 0), 0);
}

static void test_corrupt_snappy(void **state)
{
	struct bufs *b = *state;
	size_t olen;
	tu_fill_text(b->in, CHUNK, 4);
	assert_int_equal(rk_comp_chunk(RK_COMP_SNAPPY, b->in, CHUNK, b->out, &olen), RK_COMP_SNAPPY);

	/* the length preamble says another size */
	uint8_t *bad = tu_malloc(b->cap);
	memcpy(bad, b->out, olen);
	bad[0] ^= 0x01;
	assert_int_equal(rk_decomp_chunk(RK_COMP_SNAPPY, bad, olen, b->back, CHUNK, CHUNK), -EUCLEAN);
	/* truncated payload */
	assert_int_equal(rk_decomp_chunk(RK_COMP_SNAPPY, b->out, olen - 7, b->back, CHUNK, CHUNK), -EUCLEAN);
	assert_int_equal(rk_decomp_chunk(RK_COMP_SNAPPY, b->out, 0, b->back, CHUNK, CHUNK), -EUCLEAN);
	/* random garbage */
	tu_fill_random(bad, olen, 5);
	assert_int_equal(rk_decomp_chunk(RK_COMP_SNAPPY, bad, olen, b->back, CHUNK, CHUNK), -EUCLEAN);
	/* a copy element pointing before the start of the output */
	static const uint8_t backref[] = {0x08, 0x01 | (4 << 2), 0x40}; /* len 8, copy-1 of 8 bytes at offset 64 */
	assert_int_equal(rk_decomp_chunk(RK_COMP_SNAPPY, backref, sizeof(backref), b->back, CHUNK, 8), -EUCLEAN);
	/* an unknown method */
	assert_int_equal(rk_decomp_chunk((enum rk_comp)7, b->out, olen, b->back, CHUNK, CHUNK), -EUCLEAN);
	free(bad);
}

static void test_wrong_expected_length(void **state)
{
	struct bufs *b = *state;
	size_t olen;
	tu_fill_text(b->in, CHUNK, 6);
	assert_int_equal(rk_comp_chunk(RK_COMP_SNAPPY, b->in, CHUNK, b->out, &olen), RK_COMP_SNAPPY);
	assert_int_equal(rk_decomp_chunk(RK_COMP_SNAPPY, b->out, olen, b->back, CHUNK, CHUNK - 1), -EUCLEAN);
	assert_int_equal(rk_decomp_chunk(RK_COMP_SNAPPY, b->out, olen, b->back, CHUNK, 100), -EUCLEAN);
	/* output capacity too small is refused, not overrun */
	assert_int_equal(rk_decomp_chunk(RK_COMP_SNAPPY, b->out, olen, b->back, CHUNK / 2, CHUNK), -EUCLEAN);
	assert_int_equal(rk_decomp_chunk(RK_COMP_SNAPPY, b->out, olen, b->back, CHUNK, CHUNK), 0);
	/* raw payloads too */
	assert_int_equal(rk_decomp_chunk(RK_COMP_NONE, b->in, 1000, b->back, CHUNK, 999), -EUCLEAN);
	assert_int_equal(rk_decomp_chunk(RK_COMP_NONE, b->in, 1000, b->back, CHUNK, 1001), -EUCLEAN);
	assert_int_equal(rk_decomp_chunk(RK_COMP_NONE, b->in, 1000, b->back, 999, 1000), -EUCLEAN);
	assert_int_equal(rk_decomp_chunk(RK_COMP_NONE, b->in, 1000, b->back, 1000, 1000), 0);
	assert_memory_equal(b->back, b->in, 1000);
}

static void test_names(void **state)
{
	(void)state;
	enum rk_comp c = RK_COMP_NONE;
	assert_int_equal(rk_comp_parse("snappy", &c), 0);
	assert_int_equal(c, RK_COMP_SNAPPY);
	assert_int_equal(rk_comp_parse("none", &c), 0);
	assert_int_equal(c, RK_COMP_NONE);
	assert_int_equal(rk_comp_parse("lz4", &c), -EINVAL);
	assert_int_equal(rk_comp_parse("", &c), -EINVAL);
	assert_int_equal(rk_comp_parse("Snappy", &c), -EINVAL);
	assert_string_equal(rk_comp_name(RK_COMP_SNAPPY), "snappy");
	assert_string_equal(rk_comp_name(RK_COMP_NONE), "none");
	assert_true(rk_comp_bound(CHUNK) >= CHUNK);
	assert_true(rk_comp_bound(1) >= 1);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_roundtrip_text),     T(test_random_stored_raw),    T(test_want_none_and_empty),
		T(test_corrupt_snappy),     T(test_wrong_expected_length), T(test_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
