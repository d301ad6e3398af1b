/* rekeyfs unit tests - the coverage scan (src/lib/coverage.c) on a crafted
 * data directory: every count and every problem entry, in header-count,
 * exact and deep modes. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/coverage.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"

#define CS 4096u
#define SLOT (CS + RK_SLOT_OVERHEAD)

struct fx {
	struct tu_fx t; /* t.kr: the scan's keyring (kd's key file deleted) */
	struct rk_datadir *dd;
};

/* A chunk file at rel (under the data directory): chunk i sealed under
 * keys[i], then both header copies clean (rk_cf_sync_new). */
static void mkchunks(struct fx *f, struct rk_keyring *kr, const char *rel, const char *const *keys, size_t n)
{
	char path[PATH_MAX];
	uint8_t buf[CS];
	struct rk_cf *cf = NULL;
	struct rk_key *k0 = NULL;
	tu_path(path, "%s%s", f->t.data, rel);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(rk_keyring_get(kr, keys[0], &k0), 0);
	assert_int_equal(rk_cf_create(fd, path, kr, CS, RK_COMP_NONE, k0, &cf), 0);
	for (size_t i = 0; i < n; i++) {
		struct rk_key *k = NULL;
		assert_int_equal(rk_keyring_get(kr, keys[i], &k), 0);
		tu_fill_random(buf, CS, 1000 + i);
		assert_int_equal(rk_cf_pwrite(cf, buf, CS, i * CS, k, RK_COMP_NONE), (ssize_t)CS);
	}
	assert_int_equal(rk_cf_sync_new(cf), 0);
	rk_cf_close(cf);
	close(fd);
}

/* Rewrite both header copies of a chunk file with counts[0] as the first
 * entry's count and COUNTS_DIRTY set (a crash left the counts stale). */
static void make_dirty(struct fx *f, const char *rel, uint64_t count0)
{
	char path[PATH_MAX];
	uint8_t copy[RK_HDR_COPY_SIZE];
	struct rk_cf_header h;
	tu_path(path, "%s%s", f->t.data, rel);
	for (int c = 0; c < 2; c++) {
		tu_pread_path(path, copy, sizeof(copy), c * RK_HDR_COPY_SIZE);
		assert_int_equal(rk_hdr_decode(copy, &h), 0);
		assert_true(h.keys[0].in_use);
		h.keys[0].count = count0;
		h.flags |= RK_HF_COUNTS_DIRTY;
		rk_hdr_encode(&h, copy);
		tu_pwrite_path(path, copy, sizeof(copy), c * RK_HDR_COPY_SIZE);
	}
}

static void mkdir_data(struct fx *f, const char *rel)
{
	char path[PATH_MAX];
	tu_path(path, "%s%s", f->t.data, rel);
	assert_int_equal(mkdir(path, 0755), 0);
}

/* The crafted tree (chunk size 4 KiB everywhere; every chunk full):
 *   tables  /            key ka
 *           /db/t1       key kb
 *           /db/t1/sub   key ka  (nested in /db/t1)
 *   registry ka, kb active; kc released; kd active but its key file gone
 *   /a.dat          3 chunks ka
 *   /bad.dat        both header copies damaged (corrupt header)
 *   /cut.dat        4 chunks ka, clean header, stored file cut after 2 slots
 *   /damaged.dat    1 chunk ka, header copy A overwritten
 *   /dirty.dat      2 chunks ka, header dirty and claiming 7
 *   /link1.dat      1 chunk ka, hard link /link2.dat
 *   /miss.dat       1 chunk kd (missing key file)
 *   /mixed.dat      2 chunks ka + 1 chunk kb (off target)
 *   /plain.txt      plain file
 *   /rel.dat        1 chunk kc (released)
 *   /db/t1/x.dat    2 chunks kb, chunk 1's ciphertext altered (deep only)
 *   /db/t1/y.dat    1 chunk ka (off target)
 *   /db/t1/sub/z.dat 1 chunk ka
 */
static int setup(void **state)
{
	static const struct tu_fx_opts o = {.keys = tu_fx_keys, .nkeys = 4, .init_chunk = CS, .init_comp = RK_COMP_NONE};
	struct fx *f = tu_fx_new(sizeof(*f), &o);
	if (!f)
		return -1;
	/* the fixture's keyring builds the tree; the scan gets a fresh one */
	struct rk_keyring *kr = f->t.kr;
	struct rk_key *k = NULL;
	f->t.kr = NULL;
	f->t.ka = f->t.kb = f->t.kc = f->t.kd = NULL;
	struct rk_datadir *dd = NULL;
	assert_int_equal(rk_datadir_open(f->t.data, RK_DD_EXCLUSIVE, &dd), 0);
	static const char *const regkeys[] = {"kb", "kc", "kd"};
	for (size_t i = 0; i < RK_ARRAY_SIZE(regkeys); i++) {
		assert_int_equal(rk_keyring_get(kr, regkeys[i], &k), 0);
		assert_int_equal(rk_registry_add(dd, k), 0);
	}
	assert_int_equal(rk_policy_set(dd, "/db/t1", "kb", CS, RK_COMP_NONE), 0);
	assert_int_equal(rk_policy_set(dd, "/db/t1/sub", "ka", CS, RK_COMP_NONE), 0);
	assert_int_equal(rk_policy_save(dd), 0);

	static const char *const ka3[] = {"ka", "ka", "ka"}, *const ka4[] = {"ka", "ka", "ka", "ka"};
	static const char *const mixed[] = {"ka", "ka", "kb"}, *const kb2[] = {"kb", "kb"};
	static const char *const kc1[] = {"kc"}, *const kd1[] = {"kd"};
	char path[PATH_MAX], path2[PATH_MAX];
	mkchunks(f, kr, "/a.dat", ka3, 3);
	mkchunks(f, kr, "/bad.dat", ka3, 1);
	mkchunks(f, kr, "/cut.dat", ka4, 4);
	mkchunks(f, kr, "/damaged.dat", ka3, 1);
	mkchunks(f, kr, "/dirty.dat", ka3, 2);
	mkchunks(f, kr, "/link1.dat", ka3, 1);
	mkchunks(f, kr, "/miss.dat", kd1, 1);
	mkchunks(f, kr, "/mixed.dat", mixed, 3);
	mkchunks(f, kr, "/rel.dat", kc1, 1);
	tu_path(path, "%s/plain.txt", f->t.data);
	tu_write_file(path, "just some plain text\n", 21, 0644);
	mkdir_data(f, "/db");
	mkdir_data(f, "/db/t1");
	mkdir_data(f, "/db/t1/sub");
	mkchunks(f, kr, "/db/t1/x.dat", kb2, 2);
	mkchunks(f, kr, "/db/t1/y.dat", ka3, 1);
	mkchunks(f, kr, "/db/t1/sub/z.dat", ka3, 1);

	/* hard link: one file, two names */
	tu_path(path, "%s/link1.dat", f->t.data);
	tu_path(path2, "%s/link2.dat", f->t.data);
	assert_int_equal(link(path, path2), 0);
	/* both header copies fail their checksum */
	tu_path(path, "%s/bad.dat", f->t.data);
	tu_flip_bit(path, 100, 3);
	tu_flip_bit(path, RK_HDR_COPY_SIZE + 100, 3);
	/* cut short: slots 2 and 3 are gone, the clean header still counts 4 */
	tu_path(path, "%s/cut.dat", f->t.data);
	assert_int_equal(truncate(path, (off_t)rk_slot_off(SLOT, 2)), 0);
	/* copy A overwritten (no magic, not zero); copy B verifies */
	uint8_t junk[RK_HDR_COPY_SIZE];
	memset(junk, 0xa5, sizeof(junk));
	tu_path(path, "%s/damaged.dat", f->t.data);
	tu_pwrite_path(path, junk, sizeof(junk), 0);
	make_dirty(f, "/dirty.dat", 7);
	/* x.dat chunk 1: one ciphertext bit (the slot header stays intact) */
	tu_path(path, "%s/db/t1/x.dat", f->t.data);
	tu_flip_bit(path, (off_t)rk_slot_off(SLOT, 1) + RK_SLOT_HDR + 10, 0);

	/* kc released; kd's key file removed */
	rk_registry_find(dd, "kc")->state = RK_KS_RELEASED;
	assert_int_equal(rk_registry_save(dd), 0);
	rk_datadir_close(dd);
	rk_keyring_free(kr);
	tu_path(path, "%s/kd", f->t.keydir);
	assert_int_equal(unlink(path), 0);

	assert_int_equal(rk_keyring_new(f->t.keydir, &f->t.kr), 0);
	assert_int_equal(rk_datadir_open(f->t.data, RK_DD_SHARED, &f->dd), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	rk_datadir_close(f->dd);
	tu_fx_free(f);
	return 0;
}

/* ---- expectations ---------------------------------------------------------------------- */
struct xkey {
	const char *name;
	enum rk_cov_keystat status;
	uint64_t chunks, files, bytes;
	const char *names[3]; /* expected names (NULL-terminated) */
};

struct xtab {
	const char *path, *target;
	uint64_t files, extra_links, chunk_files, plain_files, corrupt_files, recounted, count_mismatch;
	uint64_t chunks, chunks_on_target, bytes, files_off_target, chunks_unusable, files_unusable;
	uint64_t malformed_chunks, corrupt_chunks, chunks_verified;
	const char *off_target[5];
	struct xkey keys[5];
};

static void check_names(char **v, size_t n, const char *const *want, const char *what)
{
	size_t i = 0;
	for (; want[i]; i++) {
		if (i >= n)
			fail_msg("%s: name %zu missing (want %s)", what, i, want[i]);
		assert_string_equal(v[i], want[i]);
	}
	if (n != i)
		fail_msg("%s: %zu names, want %zu", what, n, i);
}

#define EQ(field) \
	do { \
		if (t->field != x->field) \
			fail_msg("table %s: " #field " = %llu, want %llu", x->path, (unsigned long long)t->field, \
			         (unsigned long long)x->field); \
	} while (0)

static void check_table(const struct rk_cov_table *t, const struct xtab *x)
{
	assert_string_equal(t->path, x->path);
	assert_string_equal(t->target, x->target);
	EQ(files);
	EQ(extra_links);
	EQ(chunk_files);
	EQ(plain_files);
	EQ(corrupt_files);
	EQ(recounted);
	EQ(count_mismatch);
	EQ(chunks);
	EQ(chunks_on_target);
	EQ(bytes);
	EQ(files_off_target);
	EQ(chunks_unusable);
	EQ(files_unusable);
	EQ(malformed_chunks);
	EQ(corrupt_chunks);
	EQ(chunks_verified);
	check_names(t->off_target, t->noff_target, x->off_target, "off target");
	size_t nk = 0;
	while (x->keys[nk].name)
		nk++;
	if (t->nkeys != nk)
		fail_msg("table %s: %zu keys, want %zu", x->path, t->nkeys, nk);
	for (size_t i = 0; i < nk; i++) {
		const struct rk_cov_key *k = &t->keys[i];
		const struct xkey *xk = &x->keys[i];
		assert_string_equal(k->name, xk->name);
		if (k->status != xk->status || k->chunks != xk->chunks || k->files != xk->files || k->bytes != xk->bytes)
			fail_msg("table %s key %s: status %s chunks %llu files %llu bytes %llu, want %s %llu %llu %llu", x->path,
			         k->name, rk_cov_keystat_name(k->status), (unsigned long long)k->chunks,
			         (unsigned long long)k->files, (unsigned long long)k->bytes, rk_cov_keystat_name(xk->status),
			         (unsigned long long)xk->chunks, (unsigned long long)xk->files, (unsigned long long)xk->bytes);
		check_names(k->names, k->nnames, xk->names, k->name);
	}
}

struct xprob {
	enum rk_cov_problem_kind kind;
	const char *path;
	int64_t chunk, offset;
	const char *detail;
};

static void check_problems(const struct rk_cov *c, const struct xprob *x, size_t n)
{
	for (size_t i = 0; i < c->nproblems && i < n; i++) {
		const struct rk_cov_problem *p = &c->problems[i];
		if (p->kind != x[i].kind || strcmp(p->path, x[i].path) != 0 || p->chunk != x[i].chunk ||
		    p->offset != x[i].offset || strcmp(p->detail, x[i].detail) != 0)
			fail_msg("problem %zu: %s %s chunk %lld offset %lld: %s\nwant %s %s chunk %lld offset %lld: %s", i,
			         rk_cov_problem_name(p->kind), p->path, (long long)p->chunk, (long long)p->offset, p->detail,
			         rk_cov_problem_name(x[i].kind), x[i].path, (long long)x[i].chunk, (long long)x[i].offset,
			         x[i].detail);
	}
	if (c->nproblems != n)
		fail_msg("%zu problems, want %zu", c->nproblems, n);
}

#define K(b) ((uint64_t)(b) * CS)
static const char DAMAGED_A[] =
	"header copy A is overwritten (no chunk-file magic); the file is read from copy B, which verifies";
static const char CORRUPT_HDR[] = "neither header copy passes its checksum: the file's chunks cannot be read";
static const char CUT[] = "2 chunks missing from chunk 2 on: the stored file ends at byte 16512 (cut short) but its "
                          "clean header counts them";
static const char BADAUTH[] = "authentication failed under key 'kb' (the chunk was altered, damaged, or moved from "
                              "another file or offset)";

/* The root table in every mode: exact/deep only add count_mismatch (cut.dat)
 * and, deep, the verified chunks. */
static struct xtab root_table(bool exact, bool deep, bool kr)
{
	struct xtab x = {
		.path = "/", .target = "ka",
		.files = 10, .extra_links = 1, .chunk_files = 8, .plain_files = 1, .corrupt_files = 1,
		.recounted = 1, .count_mismatch = exact,
		/* a 3 + mixed 3 + link 1 + dirty 2 + damaged 1 + cut 4 + rel 1 + miss 1 */
		.chunks = 16, .chunks_on_target = 13,
		.bytes = K(3 + 3 + 1 + 2 + 1 + 4 + 1 + 1),
		.files_off_target = 3, .chunks_unusable = kr ? 2 : 1, .files_unusable = kr ? 2 : 1,
		/* deep: a 3, dirty 2, cut 2 (the slots present), damaged 1, link 1, mixed 3 */
		.chunks_verified = deep ? 12 : 0,
		.off_target = {"/miss.dat", "/mixed.dat", "/rel.dat", NULL},
		.keys = {
			{"ka", kr ? RK_COVK_OK : RK_COVK_UNCHECKED, 13, 6, K(13), {NULL}},
			{"kd", kr ? RK_COVK_MISSING : RK_COVK_UNCHECKED, 1, 1, K(1), {kr ? "/miss.dat" : NULL, NULL}},
			{"kb", kr ? RK_COVK_OK : RK_COVK_UNCHECKED, 1, 1, K(1), {NULL}},
			{"kc", RK_COVK_RELEASED, 1, 1, K(1), {"/rel.dat", NULL}},
		},
	};
	return x;
}

static struct xtab t1_table(bool deep, bool kr)
{
	struct xtab x = {
		.path = "/db/t1", .target = "kb",
		.files = 2, .chunk_files = 2, .chunks = 3, .chunks_on_target = 2, .bytes = K(3),
		.files_off_target = 1,
		.corrupt_chunks = deep ? 1 : 0, .chunks_verified = deep ? 2 : 0,
		.off_target = {"/db/t1/y.dat", NULL},
		.keys = {{"kb", kr ? RK_COVK_OK : RK_COVK_UNCHECKED, 2, 1, K(2), {NULL}},
		         {"ka", kr ? RK_COVK_OK : RK_COVK_UNCHECKED, 1, 1, K(1), {NULL}}},
	};
	return x;
}

static struct xtab sub_table(bool deep, bool kr)
{
	struct xtab x = {
		.path = "/db/t1/sub", .target = "ka",
		.files = 1, .chunk_files = 1, .chunks = 1, .chunks_on_target = 1, .bytes = K(1),
		.chunks_verified = deep ? 1 : 0,
		.off_target = {NULL},
		.keys = {{"ka", kr ? RK_COVK_OK : RK_COVK_UNCHECKED, 1, 1, K(1), {NULL}}},
	};
	return x;
}

static struct xtab total_table(bool exact, bool deep, bool kr)
{
	struct xtab x = root_table(exact, deep, kr);
	struct xtab t1 = t1_table(deep, kr), sub = sub_table(deep, kr);
	x.path = "(all)";
	x.target = "";
	x.files += t1.files + sub.files;
	x.chunk_files += t1.chunk_files + sub.chunk_files;
	x.chunks += t1.chunks + sub.chunks;
	/* y.dat's ka chunk is off the t1 target; z.dat's is on the sub target */
	x.chunks_on_target += t1.chunks_on_target + sub.chunks_on_target;
	x.bytes += t1.bytes + sub.bytes;
	x.files_off_target += t1.files_off_target;
	x.corrupt_chunks += t1.corrupt_chunks;
	x.chunks_verified += t1.chunks_verified + sub.chunks_verified;
	/* walk order: /db/t1/y.dat comes before /miss.dat */
	static const char *const off[] = {"/db/t1/y.dat", "/miss.dat", "/mixed.dat", "/rel.dat", NULL};
	memcpy(x.off_target, off, sizeof(off));
	/* keys in the order first met: ka (a.dat), kb (x.dat), kd, kc */
	struct xkey keys[5] = {
		{"ka", kr ? RK_COVK_OK : RK_COVK_UNCHECKED, 13 + 1 + 1, 6 + 1 + 1, K(15), {NULL}},
		{"kb", kr ? RK_COVK_OK : RK_COVK_UNCHECKED, 1 + 2, 1 + 1, K(3), {NULL}},
		{"kd", kr ? RK_COVK_MISSING : RK_COVK_UNCHECKED, 1, 1, K(1), {kr ? "/miss.dat" : NULL, NULL}},
		{"kc", RK_COVK_RELEASED, 1, 1, K(1), {"/rel.dat", NULL}},
		{NULL, 0, 0, 0, 0, {NULL}},
	};
	memcpy(x.keys, keys, sizeof(keys));
	return x;
}

static struct rk_cov *scan(struct fx *f, struct rk_cov_opts *o)
{
	struct rk_cov *c = NULL;
	int ret = rk_coverage_scan(f->dd, o, &c);
	if (ret) {
		tu_log_dump();
		fail_msg("rk_coverage_scan = %d", ret);
	}
	assert_non_null(c);
	return c;
}

static void check_registry(const struct rk_cov *c, bool kr)
{
	static const char *const names[] = {"ka", "kb", "kc", "kd"};
	assert_int_equal(c->nregistry, 4);
	for (size_t i = 0; i < 4; i++) {
		assert_string_equal(c->registry[i].name, names[i]);
		assert_int_equal(c->registry[i].state, i == 2 ? RK_KS_RELEASED : RK_KS_ACTIVE);
	}
	assert_int_equal(c->registry[0].file, kr ? RK_COVK_OK : RK_COVK_UNCHECKED);
	assert_int_equal(c->registry[1].file, kr ? RK_COVK_OK : RK_COVK_UNCHECKED);
	assert_int_equal(c->registry[2].file, RK_COVK_RELEASED);
	assert_int_equal(c->registry[3].file, kr ? RK_COVK_MISSING : RK_COVK_UNCHECKED);
	assert_int_equal(c->registry[1].cipher, RK_CIPHER_CHACHA20_POLY1305);
	assert_int_equal(c->registry[2].bits, 128);
}

static void check_all(const struct rk_cov *c, bool exact, bool deep, bool kr)
{
	assert_int_equal(c->exact, exact);
	assert_int_equal(c->deep, deep);
	assert_int_equal(c->ntables, 3);
	struct xtab x = root_table(exact, deep, kr);
	check_table(&c->tables[0], &x);
	x = t1_table(deep, kr);
	check_table(&c->tables[1], &x);
	x = sub_table(deep, kr);
	check_table(&c->tables[2], &x);
	x = total_table(exact, deep, kr);
	check_table(&c->total, &x);
	check_registry(c, kr);
	assert_string_equal(c->table_filter, "");
}

static void test_headers(void **state)
{
	struct fx *f = *state;
	struct rk_cov_opts o = {.max_names = SIZE_MAX, .kr = f->t.kr};
	struct rk_cov *c = scan(f, &o);
	check_all(c, false, false, true);
	assert_string_equal(c->datadir, f->t.data);
	assert_string_equal(c->keydir, f->t.keydir);
	/* headers only: the cut-short file is trusted, x.dat's altered chunk unseen */
	const struct xprob want[] = {
		{RK_COVP_CORRUPT_HEADER, "/bad.dat", -1, -1, CORRUPT_HDR},
		{RK_COVP_DAMAGED_HEADER_COPY, "/damaged.dat", -1, -1, DAMAGED_A},
	};
	check_problems(c, want, RK_ARRAY_SIZE(want));
	assert_false(c->has_query);
	assert_int_equal(rk_cov_key_chunks(c, "ka"), 13 + 1 + 1);
	assert_int_equal(rk_cov_key_chunks(c, "kb"), 1 + 2);
	assert_int_equal(rk_cov_key_chunks(c, "kc"), 1);
	assert_int_equal(rk_cov_key_chunks(c, "nope"), 0);
	rk_coverage_free(c);
}

/* Without a keyring nothing is checked but what the registry says. */
static void test_headers_no_keyring(void **state)
{
	struct fx *f = *state;
	struct rk_cov_opts o = {.max_names = SIZE_MAX};
	struct rk_cov *c = scan(f, &o);
	check_all(c, false, false, false);
	assert_null(c->keydir);
	assert_int_equal(c->nproblems, 2);
	rk_coverage_free(c);
}

static void test_exact(void **state)
{
	struct fx *f = *state;
	struct rk_cov_opts o = {.max_names = SIZE_MAX, .kr = f->t.kr, .exact = true, .query_key = "kc"};
	struct rk_cov *c = scan(f, &o);
	check_all(c, true, false, true);
	const struct xprob want[] = {
		{RK_COVP_CORRUPT_HEADER, "/bad.dat", -1, -1, CORRUPT_HDR},
		{RK_COVP_MISSING_CHUNKS, "/cut.dat", 2, 2 * CS, CUT},
		{RK_COVP_DAMAGED_HEADER_COPY, "/damaged.dat", -1, -1, DAMAGED_A},
	};
	check_problems(c, want, RK_ARRAY_SIZE(want));
	assert_true(c->has_query);
	assert_string_equal(c->query.name, "kc");
	assert_int_equal(c->query.chunks, 1);
	assert_int_equal(c->query.files, 1);
	assert_int_equal(c->query.nnames, 1);
	assert_string_equal(c->query.names[0], "/rel.dat");
	rk_coverage_free(c);
}

static uint64_t last_done, last_total, ncalls;
static void progress(uint64_t done, uint64_t total, void *arg)
{
	(void)arg;
	assert_true(done >= last_done);
	assert_true(done <= total);
	last_done = done;
	last_total = total;
	ncalls++;
}

static void test_deep(void **state)
{
	struct fx *f = *state;
	struct rk_cov_opts o = {.max_names = SIZE_MAX, .kr = f->t.kr, .deep = true, .progress = progress};
	last_done = last_total = ncalls = 0;
	struct rk_cov *c = scan(f, &o);
	check_all(c, true, true, true);
	const struct xprob want[] = {
		{RK_COVP_CORRUPT_HEADER, "/bad.dat", -1, -1, CORRUPT_HDR},
		{RK_COVP_MISSING_CHUNKS, "/cut.dat", 2, 2 * CS, CUT},
		{RK_COVP_DAMAGED_HEADER_COPY, "/damaged.dat", -1, -1, DAMAGED_A},
		{RK_COVP_CORRUPT_CHUNK, "/db/t1/x.dat", 1, CS, BADAUTH},
	};
	check_problems(c, want, RK_ARRAY_SIZE(want));
	/* plaintext sizes of every readable chunk file, the hard link once */
	uint64_t total = K(16 + 3 + 1);
	assert_int_equal(c->deep_total, total);
	assert_int_equal(c->deep_done, total);
	assert_int_equal(last_total, total);
	assert_int_equal(last_done, total);
	assert_true(ncalls > 1);
	rk_coverage_free(c);
}

/* One table: only its files; max_names caps every list. */
static void test_table_filter(void **state)
{
	struct fx *f = *state;
	struct rk_cov_opts o = {.max_names = 0, .kr = f->t.kr, .table = "/db/t1"};
	struct rk_cov *c = scan(f, &o);
	assert_string_equal(c->table_filter, "/db/t1");
	assert_int_equal(c->tables[0].files, 0);
	assert_int_equal(c->tables[2].files, 0);
	struct xtab x = t1_table(false, true);
	x.off_target[0] = NULL;
	check_table(&c->tables[1], &x);
	x.path = "(all)";
	x.target = "";
	check_table(&c->total, &x);
	assert_int_equal(c->nproblems, 0);
	rk_coverage_free(c);

	/* a table whose directory does not exist yet: no files, no error */
	assert_int_equal(rk_policy_set(f->dd, "/db/t2", "kb", CS, RK_COMP_NONE), 0);
	o.table = "/db/t2";
	c = scan(f, &o);
	assert_int_equal(c->total.files, 0);
	rk_coverage_free(c);
}

/* The exposure rule of a compromised key (rekeyfs(5), FORMAT V2: Room for
 * key providers and compromised keys). */
static void test_exposed_rule(void **state)
{
	(void)state;
	struct rk_cf_header h;
	uint8_t bad[RK_FP_BYTES], other[RK_FP_BYTES], third[RK_FP_BYTES];
	memset(bad, 0xb1, sizeof(bad));
	memset(other, 0x07, sizeof(other));
	memset(third, 0x33, sizeof(third));
	memset(&h, 0, sizeof(h));
	struct rk_cf_keyent *e = &h.keys[0];
	e->in_use = true;
	/* version 1: exposed only when its (deriving) key is the compromised one */
	h.version = RK_FORMAT_V1;
	memcpy(e->fp, bad, RK_FP_BYTES);
	assert_true(rk_cov_entry_exposed(&h, e, bad));
	memcpy(e->fp, other, RK_FP_BYTES);
	assert_false(rk_cov_entry_exposed(&h, e, bad));
	/* version 2: current KEK */
	h.version = RK_FORMAT_V2;
	memcpy(e->fp, bad, RK_FP_BYTES);
	assert_true(rk_cov_entry_exposed(&h, e, bad));
	/* rewrapped away: the compromised KEK is in the history, still exposed */
	memcpy(e->fp, other, RK_FP_BYTES);
	memcpy(e->hist[0], third, RK_FP_BYTES);
	memcpy(e->hist[1], bad, RK_FP_BYTES);
	e->hist_n = 2;
	assert_true(rk_cov_entry_exposed(&h, e, bad));
	/* a fingerprint past the history length does not count */
	e->hist_n = 1;
	assert_false(rk_cov_entry_exposed(&h, e, bad));
	/* overflowed history: earlier KEKs unknown, conservatively exposed */
	e->wflags = RK_WF_HIST_OVERFLOW;
	assert_true(rk_cov_entry_exposed(&h, e, bad));
	/* a fresh DEK (reseal): empty history, another KEK */
	e->wflags = 0;
	e->hist_n = 0;
	memset(e->hist, 0, sizeof(e->hist));
	assert_false(rk_cov_entry_exposed(&h, e, bad));
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_headers), T(test_headers_no_keyring), T(test_exact), T(test_deep), T(test_table_filter),
		cmocka_unit_test(test_exposed_rule),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
