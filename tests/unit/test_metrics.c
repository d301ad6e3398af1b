/* Unit tests of the Prometheus renderer (rekeyfs/metrics.h): label value
 * escaping, every family with HELP and TYPE once before its samples, the
 * coverage families from a coverage result, releasable keys, absent
 * samples, and the merge of several mounts' expositions. */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rekeyfs/metrics.h"

static void test_escape(void **state)
{
	(void)state;
	char out[64];
	size_t n = rk_metrics_escape("a\"b\\c\nd", out, sizeof(out));
	assert_string_equal(out, "a\\\"b\\\\c\\nd");
	assert_int_equal(n, strlen("a\\\"b\\\\c\\nd"));
	/* the length needed, whatever fits; always terminated */
	char small[4];
	assert_int_equal(rk_metrics_escape("\"\"\"", small, sizeof(small)), 6);
	assert_int_equal(strlen(small), 3);
	assert_int_equal(rk_metrics_escape("plain /ks/t1", NULL, 0), 12);
	assert_int_equal(rk_metrics_escape(NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "");
}

/* a coverage result: tables / (target k2: 10 under k1, 5 under k2) and
 * /ks/t"2 (target k2: 7 under k2, 2 under "ghost", a key no registry knows);
 * registry k1, k2, k3 (k3: no chunk anywhere) */
struct fake {
	struct rk_cov c;
	struct rk_cov_table t[2];
	struct rk_cov_key k[4];
	struct rk_cov_regkey r[3];
};

static void fake_init(struct fake *f)
{
	memset(f, 0, sizeof(*f));
	snprintf(f->t[0].path, sizeof(f->t[0].path), "/");
	snprintf(f->t[0].target, sizeof(f->t[0].target), "k2");
	snprintf(f->t[1].path, sizeof(f->t[1].path), "/ks/t\"2");
	snprintf(f->t[1].target, sizeof(f->t[1].target), "k2");
	f->t[0].plain_files = 3;
	const char *names[] = {"k1", "k2", "k2", "ghost"};
	uint64_t chunks[] = {10, 5, 7, 2};
	for (int i = 0; i < 4; i++) {
		snprintf(f->k[i].name, sizeof(f->k[i].name), "%s", names[i]);
		f->k[i].chunks = chunks[i];
		f->k[i].bytes = chunks[i] * 65536;
	}
	f->t[0].keys = &f->k[0];
	f->t[0].nkeys = 2;
	f->t[1].keys = &f->k[2];
	f->t[1].nkeys = 2;
	for (int i = 0; i < 3; i++)
		snprintf(f->r[i].name, sizeof(f->r[i].name), "k%d", i + 1);
	f->c.tables = f->t;
	f->c.ntables = 2;
	f->c.registry = f->r;
	f->c.nregistry = 3;
}

static void src_init(struct rk_metrics_src *s, const struct rk_cov *c, const char *mount)
{
	memset(s, 0, sizeof(*s));
	s->version = "9.9";
	s->mount = mount;
	s->data_dir = "/data";
	s->key_dir = "/keys";
	s->sweep_state = "running";
	s->sweep_bytes_done = 100;
	s->sweep_bytes_total = 400;
	s->eta_known = true;
	s->eta_seconds = 3;
	s->read_errors = 4;
	s->cov = c;
	s->cov_time = 1700000000.7;
	s->cov_scan_seconds = 0.25;
}

static int count(const char *text, const char *needle)
{
	int n = 0;
	for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

/* every sample line belongs to the family of the TYPE line before it; every
 * family has HELP then TYPE once, before its samples */
static void check_structure(const char *text)
{
	char fam[256] = "";
	char *copy = strdup(text), *save = NULL;
	assert_non_null(copy);
	for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if (strncmp(l, "# HELP ", 7) == 0) {
			size_t n = strcspn(l + 7, " ");
			char needle[300];
			snprintf(fam, sizeof(fam), "%.*s", (int)n, l + 7);
			snprintf(needle, sizeof(needle), "# HELP %s ", fam);
			assert_int_equal(count(text, needle), 1);
			snprintf(needle, sizeof(needle), "# TYPE %s ", fam);
			assert_int_equal(count(text, needle), 1);
			char *t = strtok_r(NULL, "\n", &save);
			assert_non_null(t);
			assert_true(strncmp(t, needle, strlen(needle)) == 0);
			assert_true(strstr(t, " gauge") || strstr(t, " counter"));
			continue;
		}
		assert_true(l[0] != '#');
		assert_true(fam[0] != '\0');
		size_t n = strcspn(l, "{ ");
		assert_int_equal(n, strlen(fam));
		assert_memory_equal(l, fam, n);
	}
	free(copy);
}

static void test_render(void **state)
{
	(void)state;
	struct fake f;
	struct rk_metrics_src s;
	char *out = NULL;
	size_t len = 0;
	fake_init(&f);
	src_init(&s, &f.c, "/mnt/a \"b\"\\c\nd");
	assert_int_equal(rk_metrics_render(&s, &out, &len), 0);
	assert_int_equal(len, strlen(out));
	check_structure(out);
	const char *m = "mount=\"/mnt/a \\\"b\\\"\\\\c\\nd\"";
	char want[512];
#define HAS(...)                                                                                                       \
	do {                                                                                                               \
		snprintf(want, sizeof(want), __VA_ARGS__);                                                                     \
		if (!strstr(out, want))                                                                                        \
			fail_msg("missing line: %s\n%s", want, out);                                                               \
	} while (0)
	HAS("rekeyfs_chunks{%s,table=\"/\",key=\"k1\"} 10\n", m);
	HAS("rekeyfs_chunks{%s,table=\"/ks/t\\\"2\",key=\"ghost\"} 2\n", m);
	HAS("rekeyfs_bytes{%s,table=\"/\",key=\"k2\"} 327680\n", m);
	HAS("rekeyfs_plain_files{%s,table=\"/\"} 3\n", m);
	HAS("rekeyfs_key_releasable{%s,key=\"k1\"} 0\n", m);
	HAS("rekeyfs_key_releasable{%s,key=\"k2\"} 0\n", m);
	HAS("rekeyfs_key_releasable{%s,key=\"k3\"} 1\n", m);
	HAS("rekeyfs_key_releasable{%s,key=\"ghost\"} 0\n", m);
	HAS("rekeyfs_sweep_state{%s,state=\"running\"} 1\n", m);
	HAS("rekeyfs_sweep_state{%s,state=\"idle\"} 0\n", m);
	HAS("rekeyfs_sweep_eta_seconds{%s} 3\n", m);
	HAS("rekeyfs_sweep_total_bytes{%s} 400\n", m);
	HAS("rekeyfs_read_errors_total{%s} 4\n", m);
	HAS("rekeyfs_coverage_timestamp_seconds{%s} 1700000000\n", m);
	HAS("rekeyfs_coverage_scan_seconds{%s} 0.250\n", m);
	HAS("rekeyfs_build_info{%s,version=\"9.9\"} 1\n", m);
	HAS("rekeyfs_mount_info{%s,data_dir=\"/data\",key_dir=\"/keys\"} 1\n", m);
	HAS("# TYPE rekeyfs_journal_commits_total counter\n");
	HAS("# TYPE rekeyfs_chunks gauge\n");
	assert_int_equal(count(out, "rekeyfs_sweep_state{"), 6);
	assert_int_equal(count(out, "key=\"ghost\"} 0"), 1); /* listed once */
	assert_null(strstr(out, "\nd\""));                     /* no raw newline inside a label */
	free(out);

	/* no coverage yet, no ETA, no mount label */
	src_init(&s, NULL, NULL);
	s.eta_known = false;
	s.sweep_state = "idle";
	assert_int_equal(rk_metrics_render(&s, &out, &len), 0);
	check_structure(out);
	assert_non_null(strstr(out, "# TYPE rekeyfs_chunks gauge\n# HELP rekeyfs_bytes "));
	assert_null(strstr(out, "rekeyfs_sweep_eta_seconds{"));
	assert_null(strstr(out, "rekeyfs_coverage_timestamp_seconds{"));
	assert_non_null(strstr(out, "rekeyfs_sweep_state{state=\"idle\"} 1\n"));
	assert_non_null(strstr(out, "rekeyfs_read_errors_total{} 4\n"));
	free(out);
#undef HAS
}

static void test_merge(void **state)
{
	(void)state;
	struct fake f;
	struct rk_metrics_src s;
	char *a = NULL, *b = NULL, *out = NULL;
	size_t len;
	fake_init(&f);
	src_init(&s, &f.c, "/m1");
	assert_int_equal(rk_metrics_render(&s, &a, &len), 0);
	src_init(&s, &f.c, "/m2");
	assert_int_equal(rk_metrics_render(&s, &b, &len), 0);
	const char *up = "# HELP rekeyfs_up x\n# TYPE rekeyfs_up gauge\n# a comment\nrekeyfs_up{mount=\"/m1\"} 1\n"
	                 "rekeyfs_up{mount=\"/m2\"} 0";
	const char *texts[] = {up, a, b};
	assert_int_equal(rk_metrics_merge(texts, 3, &out, &len), 0);
	assert_int_equal(len, strlen(out));
	check_structure(out);
	assert_int_equal(strncmp(out, "# HELP rekeyfs_up x\n# TYPE rekeyfs_up gauge\nrekeyfs_up{mount=\"/m1\"} 1\n"
	                              "rekeyfs_up{mount=\"/m2\"} 0\n# HELP rekeyfs_build_info ",
	                         strlen("# HELP rekeyfs_up x\n# TYPE rekeyfs_up gauge\nrekeyfs_up{mount=\"/m1\"} 1\n"
	                                "rekeyfs_up{mount=\"/m2\"} 0\n# HELP rekeyfs_build_info ")),
	                 0);
	assert_null(strstr(out, "# a comment"));
	/* the samples of one family together, first mount first */
	char *c1 = strstr(out, "rekeyfs_chunks{mount=\"/m1\",table=\"/\",key=\"k1\"} 10\n");
	char *c2 = strstr(out, "rekeyfs_chunks{mount=\"/m2\",table=\"/\",key=\"k1\"} 10\n");
	char *bytes = strstr(out, "# HELP rekeyfs_bytes ");
	assert_non_null(c1);
	assert_non_null(c2);
	assert_true(c1 < c2 && c2 < bytes);
	assert_int_equal(count(out, "# HELP rekeyfs_chunks "), 1);
	assert_int_equal(count(out, "rekeyfs_chunks{"), 8);
	free(out);
	/* a sample line with no metric name is refused */
	const char *bad[] = {"{mount=\"x\"} 1\n"};
	out = NULL;
	assert_int_equal(rk_metrics_merge(bad, 1, &out, &len), -EINVAL);
	assert_null(out);
	/* nothing to merge: empty text */
	assert_int_equal(rk_metrics_merge(NULL, 0, &out, &len), 0);
	assert_string_equal(out, "");
	free(out);
	free(a);
	free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_escape),
		cmocka_unit_test(test_render),
		cmocka_unit_test(test_merge),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
