/* rekeyfs unit tests - small helpers of src/lib/common.c: rk_parse_rate
 * (the walker rate of -o walker_rate= and the control command `rate`). */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rekeyfs/common.h"

static void expect_rate(const char *s, uint64_t want)
{
	uint64_t v = 12345;
	int ret = rk_parse_rate(s, &v);
	if (ret != 0 || v != want)
		fail_msg("rk_parse_rate(\"%s\") = %d, %llu; want 0, %llu", s, ret, (unsigned long long)v,
		         (unsigned long long)want);
}

static void expect_refused(const char *s, int err)
{
	uint64_t v = 12345;
	int ret = rk_parse_rate(s, &v);
	if (ret != err || v != 12345)
		fail_msg("rk_parse_rate(\"%s\") = %d (value %llu); want %d, value untouched", s ? s : "(null)", ret,
		         (unsigned long long)v, err);
}

static void test_rate_units(void **state)
{
	(void)state;
	expect_rate("0", 0);
	expect_rate("unlimited", 0);
	expect_rate("UNLIMITED", 0);
	expect_rate("1", 1);
	expect_rate("100", 100);
	expect_rate("100M", 100ULL << 20); /* not 100 bytes/s */
	expect_rate("100m", 100ULL << 20);
	expect_rate("64K", 64ULL << 10);
	expect_rate("64KiB", 64ULL << 10);
	expect_rate("64kib", 64ULL << 10);
	expect_rate("3MiB", 3ULL << 20);
	expect_rate("2G", 2ULL << 30);
	expect_rate("2GiB", 2ULL << 30);
	expect_rate("1KB", 1000);
	expect_rate("5MB", 5000000);
	expect_rate("1GB", 1000000000ULL);
	expect_rate("1gb", 1000000000ULL);
	expect_rate("1024G", 1ULL << 40); /* the limit itself */
	expect_rate("1099511627776", 1ULL << 40);
}

static void test_rate_refused(void **state)
{
	(void)state;
	const char *bad[] = {"", " ", "M", "KiB", "-1", "+1", " 1", "1 ", "1 M", "1.5M", "0x10", "010", "1MM",
	                     "1Mi", "1MiBs", "1T", "1TB", "1iB", "1b", "1B", "unlimit", "unlimited ", "1e6", "1,000",
	                     "١", "100M\n", "1K1"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(bad[i], -EINVAL);
	expect_refused(NULL, -EINVAL);
	/* beyond 1 TiB/s, and values that would wrap around */
	expect_refused("1099511627777", -ERANGE);
	expect_refused("1025G", -ERANGE);
	expect_refused("1100GB", -ERANGE);
	expect_refused("18446744073709551616", -ERANGE); /* beyond 64 bits */
	expect_refused("18446744073709551615K", -ERANGE);
	expect_refused("123456789012345678901234567890", -EINVAL); /* more digits than any number has */
	expect_refused("17179869184G", -ERANGE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rate_units),
		cmocka_unit_test(test_rate_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
