/* rekeyfs unit tests - journal replay: genuine records (torn tail,
 * truncation record, wrong file id, handle versus path) and hostile
 * journals (paths escaping the data directory, symlinks, foreign handles,
 * slot layout violations, bad or foreign MACs, the old format).  A hostile
 * journal must leave every file outside the data directory byte-identical,
 * write nothing at all and name the cause. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/format.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/keys.h"

#define CS (64 * 1024)
#define SS (CS + RK_SLOT_OVERHEAD)

struct fx {
	struct tu_fx t; /* data initialised under ka (chunk CS, no compression); kb */
	char outside[PATH_MAX], victim[PATH_MAX];
	char file[PATH_MAX], jpath[PATH_MAX];
	uint8_t file_id[RK_FILE_ID_BYTES];
	uint8_t *victim_before;
	size_t victim_len;
};

/* ---- a test-side journal writer (the format of journal.h) ------------------------- */
struct jw {
	uint8_t *b;
	size_t len, cap;
	uint8_t mk[32];
	uint64_t seq;
};

static void jw_put(struct jw *w, const void *p, size_t n)
{
	if (n == 0)
		return;
	if (w->len + n > w->cap) {
		w->cap = (w->len + n) * 2;
		w->b = realloc(w->b, w->cap);
		assert_non_null(w->b);
	}
	memcpy(w->b + w->len, p, n);
	w->len += n;
}

static void hmac(const uint8_t *mk, const uint8_t *p, size_t n, uint8_t *out)
{
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX *c = EVP_MAC_CTX_new(mac);
	OSSL_PARAM mp[2] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
	                    OSSL_PARAM_construct_end()};
	size_t ol;
	assert_int_equal(EVP_MAC_init(c, mk, 32, mp), 1);
	assert_int_equal(EVP_MAC_update(c, p, n), 1);
	assert_int_equal(EVP_MAC_final(c, out, &ol, 32), 1);
	EVP_MAC_CTX_free(c);
	EVP_MAC_free(mac);
}

/* Start a journal whose header names `named` but whose MAC key comes from
 * `macfrom` (the same key for a genuine journal). */
static void jw_begin_v(struct jw *w, const struct rk_key *named, const struct rk_key *macfrom, uint16_t version);
static void jw_begin(struct jw *w, const struct rk_key *named, const struct rk_key *macfrom)
{
	jw_begin_v(w, named, macfrom, 2); /* version 2: what a previous release left must still replay */
}

static void jw_begin_v(struct jw *w, const struct rk_key *named, const struct rk_key *macfrom, uint16_t version)
{
	uint8_t h[136] = {0}, id[16], info[18 + RK_FP_BYTES];
	memset(w, 0, sizeof(*w));
	tu_fill_random(id, sizeof(id), 42);
	memcpy(info, "rekeyfs journal v2", 18);
	memcpy(info + 18, macfrom->fp, RK_FP_BYTES);
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *k = EVP_KDF_CTX_new(kdf);
	OSSL_PARAM p[5] = {
		OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, macfrom->material, macfrom->keylen),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, id, sizeof(id)),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, sizeof(info)),
		OSSL_PARAM_construct_end(),
	};
	assert_int_equal(EVP_KDF_derive(k, w->mk, 32, p), 1);
	EVP_KDF_CTX_free(k);
	EVP_KDF_free(kdf);
	memcpy(h, "RKJH", 4);
	rk_put16(h + 4, version);
	h[6] = (uint8_t)strlen(named->name);
	memcpy(h + 8, id, 16);
	memcpy(h + 24, named->fp, RK_FP_BYTES);
	memcpy(h + 40, named->name, strlen(named->name));
	hmac(w->mk, h, 104, h + 104);
	jw_put(w, h, sizeof(h));
}

/* Append a record; returns its offset in the journal. */
static size_t jw_rec(struct jw *w, int type, uint64_t a, uint32_t len, uint32_t old_end, const uint8_t *id,
                     int htype, const void *handle, uint16_t hlen, const char *path, const uint8_t *img,
                     uint64_t durable)
{
	size_t start = w->len;
	uint8_t h[64] = {0}, sum[32];
	uint16_t pl = (uint16_t)strlen(path);
	memcpy(h, "RKJ2", 4);
	h[4] = (uint8_t)type;
	rk_put64(h + 8, ++w->seq);
	rk_put64(h + 16, a);
	rk_put32(h + 24, len);
	rk_put32(h + 28, old_end);
	memcpy(h + 32, id, RK_FILE_ID_BYTES);
	rk_put32(h + 48, (uint32_t)htype);
	rk_put16(h + 52, hlen);
	rk_put16(h + 54, pl);
	rk_put64(h + 56, durable);
	jw_put(w, h, sizeof(h));
	jw_put(w, handle, hlen);
	jw_put(w, path, pl);
	if (type == 1)
		jw_put(w, img, len);
	hmac(w->mk, w->b + start, w->len - start, sum);
	jw_put(w, sum, sizeof(sum));
	return start;
}

/* A slot record with no handle. */
static size_t jw_slot(struct jw *w, const struct fx *f, uint64_t off, uint32_t len, const char *path)
{
	uint8_t *img = tu_malloc(len);
	tu_fill_random(img, len, off + len);
	size_t r = jw_rec(w, 1, off, len, 0, f->file_id, -1, NULL, 0, path, img, 0);
	free(img);
	return r;
}

static void jw_save(struct jw *w, const struct fx *f)
{
	tu_write_file(f->jpath, w->b, w->len, 0600);
	free(w->b);
	w->b = NULL;
}

/* ---- fixture ------------------------------------------------------------------------ */
/* A chunk file with 4 chunks of data at path, under key ka; its file id into id. */
static void make_chunk_file(struct fx *f, const char *path, uint8_t *id)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	struct rk_cf *cf;
	uint8_t *data = tu_malloc(CS);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_create(fd, path, f->t.kr, CS, RK_COMP_NONE, f->t.ka, &cf), 0);
	for (uint64_t i = 0; i < 4; i++) {
		tu_fill_random(data, CS, i + 1);
		assert_int_equal(rk_cf_pwrite(cf, data, CS, i * CS, f->t.ka, RK_COMP_NONE), CS);
	}
	assert_int_equal(rk_cf_sync(cf), 0);
	if (id)
		rk_cf_file_id(cf, id);
	rk_cf_close(cf);
	close(fd);
	free(data);
}

static int setup(void **state)
{
	static const struct tu_fx_opts o = {.keys = tu_fx_aes_keys, .nkeys = 2, .init_chunk = CS, .init_comp = RK_COMP_NONE};
	struct fx *f = tu_fx_new(sizeof(*f), &o);
	if (!f)
		return -1;
	tu_path(f->outside, "%s/outside", f->t.dir);
	tu_path(f->victim, "%s/outside/victim", f->t.dir);
	tu_path(f->file, "%s/data/t1", f->t.dir);
	tu_path(f->jpath, "%s/data/%s/%s", f->t.dir, RK_STATE_DIR, RK_JOURNAL_NAME);
	if (mkdir(f->outside, 0755) < 0)
		return -1;
	make_chunk_file(f, f->file, f->file_id);
	/* the victim: a chunk file outside the data directory with the same file
	 * id as t1 (a copy), so that only confinement protects it */
	size_t n;
	char *c = tu_read_file(f->file, &n);
	tu_write_file(f->victim, c, n, 0644);
	f->victim_before = (uint8_t *)c;
	f->victim_len = n;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	free(f->victim_before);
	tu_fx_free(f);
	return 0;
}

static struct rk_datadir *open_dd(struct fx *f)
{
	struct rk_datadir *dd = NULL;
	assert_int_equal(rk_datadir_open(f->t.data, RK_DD_EXCLUSIVE, &dd), 0);
	return dd;
}

static int replay(struct fx *f, uint64_t *n)
{
	struct rk_datadir *dd = open_dd(f);
	int ret = rk_journal_replay(dd, f->t.kr, n);
	rk_datadir_close(dd);
	return ret;
}

static void assert_victim_intact(struct fx *f)
{
	size_t n;
	char *c = tu_read_file(f->victim, &n);
	assert_int_equal(n, f->victim_len);
	assert_memory_equal(c, f->victim_before, n);
	free(c);
}

static void assert_same_file(const char *path, const char *before, size_t len)
{
	size_t n;
	char *c = tu_read_file(path, &n);
	assert_int_equal(n, len);
	assert_memory_equal(c, before, n);
	free(c);
}

/* A hostile journal: replay fails with want (or succeeds skipping it when
 * want is 0), the journal is kept on failure, nothing is written. */
static void expect_refused(struct fx *f, int want, const char *msg)
{
	size_t tlen, jlen;
	char *t1 = tu_read_file(f->file, &tlen);
	char *j = tu_read_file(f->jpath, &jlen);
	uint64_t n = 99;
	tu_log_clear();
	int ret = replay(f, &n);
	if (ret != want) {
		tu_log_dump();
		fail_msg("replay = %d, want %d", ret, want);
	}
	if (msg)
		tu_assert_logged(msg);
	assert_victim_intact(f);
	assert_same_file(f->file, t1, tlen);
	if (want < 0)
		assert_same_file(f->jpath, j, jlen); /* kept for the operator */
	else
		assert_int_equal(n, 0);
	free(t1);
	free(j);
}

/* ---- genuine journals --------------------------------------------------------------- */
static uint64_t slot_off(uint64_t i)
{
	return rk_slot_off(SS, i);
}

/* A genuine new image (SS bytes) of slot idx of t1: chunk idx rewritten
 * with data from seed in a copy of t1 (same file id). */
static void new_image(struct fx *f, uint64_t idx, uint64_t seed, uint8_t *img)
{
	char tmp[PATH_MAX];
	size_t n;
	struct rk_cf *cf;
	uint8_t *data = tu_malloc(CS);
	tu_path(tmp, "%s/img", f->t.dir);
	char *c = tu_read_file(f->file, &n);
	tu_write_file(tmp, c, n, 0600);
	free(c);
	int fd = open(tmp, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_open(fd, tmp, f->t.kr, true, &cf), 0);
	tu_fill_random(data, CS, seed);
	assert_int_equal(rk_cf_pwrite(cf, data, CS, idx * CS, f->t.ka, RK_COMP_NONE), CS);
	rk_cf_close(cf);
	tu_pread_path(tmp, img, SS, (off_t)slot_off(idx));
	close(fd);
	unlink(tmp);
	free(data);
}

/* Read slot i's bytes of path. */
static void read_slot(const char *path, uint64_t i, uint8_t *out, size_t len)
{
	tu_pread_path(path, out, len, (off_t)slot_off(i));
}

static void test_applies_and_torn_tail(void **state)
{
	struct fx *f = *state;
	struct jw w;
	uint8_t *img = tu_malloc(SS), *got = tu_malloc(SS), *before2 = tu_malloc(SS);
	jw_begin(&w, f->t.ka, f->t.ka);
	new_image(f, 1, 1001, img);
	jw_rec(&w, 1, slot_off(1), SS, 0, f->file_id, -1, NULL, 0, "/t1", img, 0);
	/* a torn last record: its tail never reached the disk */
	new_image(f, 2, 1002, got);
	size_t r2 = jw_rec(&w, 1, slot_off(2), SS, 0, f->file_id, -1, NULL, 0, "/t1", got, 0);
	w.len = r2 + 100;
	jw_save(&w, f);
	read_slot(f->file, 2, before2, SS);
	uint64_t n = 0;
	assert_int_equal(replay(f, &n), 0);
	assert_int_equal(n, 1);
	read_slot(f->file, 1, got, SS);
	assert_memory_equal(got, img, SS);
	read_slot(f->file, 2, got, SS);
	assert_memory_equal(before2, got, SS);
	assert_int_equal(tu_file_size(f->jpath), 0);
	tu_assert_logged("ignored");
	assert_victim_intact(f);
	free(img);
	free(got);
	free(before2);
}

static void test_truncation_record(void **state)
{
	struct fx *f = *state;
	struct jw w;
	uint8_t before[256], after[256];
	read_slot(f->file, 3, before, sizeof(before));
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_slot(&w, f, slot_off(3), 256, "/t1");
	/* the file was then cut to 2 slots: the record of slot 3 is dead */
	jw_rec(&w, 2, 2, 0, SS, f->file_id, -1, NULL, 0, "/t1", NULL, 1);
	jw_save(&w, f);
	uint64_t n = 9;
	assert_int_equal(replay(f, &n), 0);
	assert_int_equal(n, 0);
	read_slot(f->file, 3, after, sizeof(after));
	assert_memory_equal(before, after, sizeof(before));
}

/* Version 3: the last size record of a file gives its size, before the
 * writable open that would cut the chunks past the header's older size. */
static void test_size_record(void **state)
{
	struct fx *f = *state;
	struct jw w;
	struct rk_cf *cf;
	uint8_t before[256], after[256];
	read_slot(f->file, 3, before, sizeof(before));
	/* t1 holds 4 chunks; its header is made to say 1 chunk and a bit (an
	 * fsync journaled a larger size, the header in place never got it) */
	int fd = open(f->file, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_replay_set_size(fd, f->file, f->file_id, CS + 10), 0);
	close(fd);
	jw_begin_v(&w, f->t.ka, f->t.ka, 3);
	jw_rec(&w, 3, 2 * CS + 7, 0, SS, f->file_id, -1, NULL, 0, "/t1", NULL, 0);
	jw_rec(&w, 3, 3 * CS + 100, 0, SS, f->file_id, -1, NULL, 0, "/t1", NULL, 1);
	jw_save(&w, f);
	uint64_t n = 9;
	assert_int_equal(replay(f, &n), 0);
	fd = open(f->file, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_open(fd, f->file, f->t.kr, false, &cf), 0);
	assert_int_equal(rk_cf_size(cf), 3 * CS + 100);
	assert_false(rk_cf_disk_dirty(cf)); /* recounted and written clean */
	rk_cf_close(cf);
	close(fd);
	read_slot(f->file, 3, after, sizeof(after));
	assert_memory_equal(before, after, sizeof(before)); /* chunk 3 kept */
	assert_int_equal(tu_file_size(f->jpath), 0);
}

/* A size record naming another slot layout stops replay; in a version-2
 * journal a size record is not a record at all (the log ends there). */
static void test_size_record_refused(void **state)
{
	struct fx *f = *state;
	struct jw w;
	jw_begin_v(&w, f->t.ka, f->t.ka, 3);
	jw_rec(&w, 3, CS, 0, SS + 4096, f->file_id, -1, NULL, 0, "/t1", NULL, 0);
	jw_save(&w, f);
	expect_refused(f, -EINVAL, "slot layout");
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_rec(&w, 3, CS, 0, SS, f->file_id, -1, NULL, 0, "/t1", NULL, 0);
	jw_save(&w, f);
	expect_refused(f, 0, "ignored");
}

static void test_wrong_file_id(void **state)
{
	struct fx *f = *state;
	struct jw w;
	jw_begin(&w, f->t.ka, f->t.ka);
	f->file_id[0] ^= 1; /* another file that was deleted: t1 is not it */
	jw_slot(&w, f, slot_off(1), 128, "/t1");
	f->file_id[0] ^= 1;
	jw_save(&w, f);
	expect_refused(f, 0, "no longer exists");
}

static void test_handle_versus_path(void **state)
{
	struct fx *f = *state;
	struct {
		struct file_handle fh;
		uint8_t buf[128];
	} h;
	int mid;
	char moved[PATH_MAX];
	uint8_t *img = tu_malloc(SS), *got = tu_malloc(SS);
	h.fh.handle_bytes = 128;
	if (name_to_handle_at(AT_FDCWD, f->file, &h.fh, &mid, 0) < 0 || geteuid() != 0)
		skip(); /* open_by_handle_at needs CAP_DAC_READ_SEARCH */
	/* written as /t1, renamed to /t1.moved before the crash: the handle finds it */
	new_image(f, 0, 2001, img);
	tu_path(moved, "%s/data/t1.moved", f->t.dir);
	assert_int_equal(rename(f->file, moved), 0);
	struct jw w;
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_rec(&w, 1, slot_off(0), SS, 0, f->file_id, h.fh.handle_type, h.fh.f_handle, (uint16_t)h.fh.handle_bytes,
	       "/t1", img, 0);
	jw_save(&w, f);
	uint64_t n = 0;
	assert_int_equal(replay(f, &n), 0);
	assert_int_equal(n, 1);
	read_slot(moved, 0, got, SS);
	assert_memory_equal(got, img, SS);
	/* a stale handle (the file was copied to a new inode): the path is used */
	size_t len;
	char *c = tu_read_file(moved, &len);
	unlink(moved);
	tu_write_file(f->file, c, len, 0644);
	free(c);
	new_image(f, 0, 2002, img);
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_rec(&w, 1, slot_off(0), SS, 0, f->file_id, h.fh.handle_type, h.fh.f_handle, (uint16_t)h.fh.handle_bytes,
	       "/t1", img, 0);
	jw_save(&w, f);
	assert_int_equal(replay(f, &n), 0);
	assert_int_equal(n, 1);
	read_slot(f->file, 0, got, SS);
	assert_memory_equal(got, img, SS);
	free(img);
	free(got);
}

/* The attach handle: the caller keeps it; detach through it puts the
 * pending slots in place and restores the in-place writer; the by-cf calls
 * find the same file and leave other attached files alone. */
static void test_attach_handle(void **state)
{
	struct fx *f = *state;
	struct rk_datadir *dd = open_dd(f);
	struct rk_journal *j;
	struct rk_cf *cf, *cf2;
	struct rk_journal_file *jf, *jf2;
	uint8_t *data = tu_malloc(CS), *got = tu_malloc(SS);
	int fd = open(f->file, O_RDWR | O_CLOEXEC), fd2 = open(f->file, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0 && fd2 >= 0);
	assert_int_equal(rk_journal_open(dd, f->t.kr, NULL, &j), 0);
	assert_int_equal(rk_cf_open(fd, "/t1", f->t.kr, true, &cf), 0);
	assert_int_equal(rk_cf_open(fd2, "/t1", f->t.kr, true, &cf2), 0);
	assert_int_equal(rk_journal_attach_file(j, cf, "/t1", &jf), 0);
	assert_non_null(jf);
	assert_int_equal(rk_journal_attach_file(j, cf2, "/t1", &jf2), 0);
	assert_ptr_not_equal(jf, jf2);
	struct rk_cf_writer w;
	rk_cf_get_writer(cf, &w);
	assert_ptr_equal(w.ctx, jf);
	rk_journal_repath_file(jf, "/t1-renamed");
	rk_journal_repath(j, cf, "/t1"); /* by cf: the same file */
	tu_fill_random(data, CS, 7);
	assert_int_equal(rk_cf_write_chunk(cf, 0, data, CS, f->t.ka, RK_COMP_NONE), 0);
	/* a pending image is served to reads through the handle's writer */
	uint8_t *pt = tu_malloc(CS);
	int k;
	assert_int_equal(rk_cf_read_chunk(cf, 0, pt, &k), 0);
	assert_memory_equal(pt, data, CS);
	assert_int_equal(rk_journal_detach_file(jf), 0);
	rk_cf_get_writer(cf, &w);
	assert_null(w.ctx); /* the in-place default again */
	read_slot(f->file, 0, got, SS);
	assert_int_equal(rk_get32(got + 8), CS); /* in place: the slot's plain_len */
	assert_int_equal(rk_journal_detach(j, cf), 0); /* no longer attached: nothing */
	rk_cf_get_writer(cf2, &w);
	assert_ptr_equal(w.ctx, jf2); /* the other file is still attached */
	assert_int_equal(rk_journal_detach(j, cf2), 0);
	rk_cf_get_writer(cf2, &w);
	assert_null(w.ctx);
	assert_int_equal(rk_journal_detach_file(NULL), 0);
	rk_cf_close(cf);
	rk_cf_close(cf2);
	close(fd);
	close(fd2);
	assert_int_equal(rk_journal_close(j), 0);
	rk_datadir_close(dd);
	free(pt);
	free(data);
	free(got);
}

/* The daemon's own writer: records it appends replay after a crash. */
static void test_writer_roundtrip(void **state)
{
	struct fx *f = *state;
	struct rk_datadir *dd = open_dd(f);
	struct rk_journal *j;
	struct rk_cf *cf;
	uint8_t *data = tu_malloc(CS), *got = tu_malloc(SS);
	int fd = open(f->file, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_journal_open(dd, f->t.kr, NULL, &j), 0);
	assert_int_equal(rk_cf_open(fd, "/t1", f->t.kr, true, &cf), 0);
	assert_int_equal(rk_journal_attach(j, cf, "/t1"), 0);
	tu_fill_random(data, CS, 99);
	assert_int_equal(rk_cf_write_chunk(cf, 1, data, CS, f->t.ka, RK_COMP_NONE), 0);
	assert_int_equal(rk_journal_commit(j), 0);
	size_t jlen;
	char *jcopy = tu_read_file(f->jpath, &jlen); /* as a crash would leave it */
	if (jlen <= 136) {
		tu_log_dump();
		fail_msg("journal after a committed write: %zu bytes", jlen);
	}
	char slot_new[SS];
	assert_int_equal(rk_journal_detach(j, cf), 0);
	read_slot(f->file, 1, (uint8_t *)slot_new, SS);
	assert_int_equal(rk_cf_sync(cf), 0);
	rk_cf_close(cf);
	close(fd);
	assert_int_equal(rk_journal_close(j), 0);
	rk_datadir_close(dd);
	/* the old slot back in place, the journal back: replay redoes the write */
	memset(got, 0, SS);
	tu_pwrite_path(f->file, got, SS, (off_t)slot_off(1));
	tu_write_file(f->jpath, jcopy, jlen, 0600);
	uint64_t n = 0;
	assert_int_equal(replay(f, &n), 0);
	assert_int_equal(n, 1);
	read_slot(f->file, 1, got, SS);
	assert_memory_equal(got, slot_new, SS);
	/* and under another key directory (key missing) it refuses */
	tu_write_file(f->jpath, jcopy, jlen, 0600);
	struct rk_keyring *empty;
	char ek[PATH_MAX];
	tu_path(ek, "%s/nokeys", f->t.dir);
	assert_int_equal(mkdir(ek, 0700), 0);
	assert_int_equal(rk_keyring_new(ek, &empty), 0);
	dd = open_dd(f);
	tu_log_clear();
	assert_int_equal(rk_journal_replay(dd, empty, &n), -ENOKEY);
	tu_assert_logged("'ka'", "not available");
	rk_datadir_close(dd);
	rk_keyring_free(empty);
	free(jcopy);
	free(data);
	free(got);
}

/* Releasing the key the journal's records are authenticated under empties
 * the journal and moves it to the next key: a crash afterwards replays
 * with only the new key. */
static void test_release_key(void **state)
{
	struct fx *f = *state;
	struct rk_datadir *dd = open_dd(f);
	struct rk_journal *j;
	struct rk_cf *cf;
	uint8_t *data = tu_malloc(CS);
	int fd = open(f->file, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_journal_open(dd, f->t.kr, NULL, &j), 0);
	assert_int_equal(rk_cf_open(fd, "/t1", f->t.kr, true, &cf), 0);
	assert_int_equal(rk_journal_attach(j, cf, "/t1"), 0);
	tu_fill_random(data, CS, 5);
	assert_int_equal(rk_cf_write_chunk(cf, 1, data, CS, f->t.ka, RK_COMP_NONE), 0);
	assert_int_equal(rk_journal_commit(j), 0);
	assert_true(tu_file_size(f->jpath) > 136);
	assert_int_equal(rk_journal_release_key(j, "kb", f->t.ka), 0); /* not its key: nothing to do */
	assert_true(tu_file_size(f->jpath) > 136);
	assert_int_equal(rk_journal_release_key(j, "ka", f->t.kb), 0);
	assert_int_equal(tu_file_size(f->jpath), 0);
	tu_fill_random(data, CS, 6);
	assert_int_equal(rk_cf_write_chunk(cf, 2, data, CS, f->t.ka, RK_COMP_NONE), 0);
	assert_int_equal(rk_journal_commit(j), 0);
	size_t jlen;
	char *jcopy = tu_read_file(f->jpath, &jlen);
	assert_true(jlen > 136);
	assert_memory_equal(jcopy + 40, "kb", 3);
	assert_int_equal(rk_journal_detach(j, cf), 0);
	assert_int_equal(rk_cf_sync(cf), 0);
	rk_cf_close(cf);
	close(fd);
	assert_int_equal(rk_journal_close(j), 0);
	rk_datadir_close(dd);
	/* ka released: the journal replays under kb alone */
	assert_int_equal(rk_keyring_release(f->t.kr, "ka"), 0);
	tu_write_file(f->jpath, jcopy, jlen, 0600);
	uint64_t n = 0;
	assert_int_equal(replay(f, &n), 0);
	assert_int_equal(n, 1);
	free(jcopy);
	free(data);
}

/* The journal file is reused: a checkpoint zeroes its header and keeps its
 * length (later records overwrite written blocks, so a commit is a
 * data-only fdatasync), and each generation authenticates under a new
 * journal id.  A crash that kept the next generation's header but not its
 * first record (the stale records of the previous generation follow the
 * header, at the very offsets records are read from) must replay nothing:
 * those records are applied and synced already, and the file may have newer
 * bytes since. */
static void test_reused_journal(void **state)
{
	struct fx *f = *state;
	struct rk_datadir *dd = open_dd(f);
	struct rk_journal *j;
	struct rk_cf *cf;
	uint8_t *data = tu_malloc(CS), *got = tu_malloc(SS), *zero = tu_malloc(SS);
	memset(zero, 0, SS);
	int fd = open(f->file, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_journal_open(dd, f->t.kr, NULL, &j), 0);
	assert_int_equal(rk_cf_open(fd, "/t1", f->t.kr, true, &cf), 0);
	assert_int_equal(rk_journal_attach(j, cf, "/t1"), 0);
	/* generation 1: slots 1 and 3 */
	tu_fill_random(data, CS, 31);
	assert_int_equal(rk_cf_write_chunk(cf, 1, data, CS, f->t.ka, RK_COMP_NONE), 0);
	tu_fill_random(data, CS, 33);
	assert_int_equal(rk_cf_write_chunk(cf, 3, data, CS, f->t.ka, RK_COMP_NONE), 0);
	assert_int_equal(rk_journal_commit(j), 0);
	size_t len1;
	char *j1 = tu_read_file(f->jpath, &len1);
	/* grown by zeros in whole steps, past what the records need */
	assert_true(len1 >= (1u << 20) && len1 % 4096 == 0);
	assert_int_equal(rk_journal_checkpoint(j), 0);
	size_t len0;
	char *j0 = tu_read_file(f->jpath, &len0);
	assert_int_equal(len0, len1); /* emptied, not cut */
	assert_memory_equal(j0, "\0\0\0\0", 4);
	assert_memory_equal(j0 + 136, j1 + 136, len1 - 136); /* the blocks are reused as they are */
	/* generation 2: slot 2 only */
	tu_fill_random(data, CS, 32);
	assert_int_equal(rk_cf_write_chunk(cf, 2, data, CS, f->t.ka, RK_COMP_NONE), 0);
	assert_int_equal(rk_journal_commit(j), 0);
	size_t len2;
	char *j2 = tu_read_file(f->jpath, &len2);
	assert_int_equal(len2, len1); /* overwritten in place: no growth */
	assert_memory_equal(j2, "RKJH", 4);
	assert_memory_not_equal(j2 + 8, j1 + 8, 16); /* a new journal id */
	assert_int_equal(rk_journal_detach(j, cf), 0);
	assert_int_equal(rk_cf_sync(cf), 0);
	rk_cf_close(cf);
	close(fd);
	assert_int_equal(rk_journal_close(j), 0);
	assert_int_equal(tu_file_size(f->jpath), 0); /* a clean unmount cuts it */
	rk_datadir_close(dd);

	/* (a) the whole of generation 2 survived: only slot 2 is redone, the
	 * stale slot-3 record of generation 1 after it is not */
	tu_pwrite_path(f->file, zero, SS, (off_t)slot_off(2));
	tu_pwrite_path(f->file, zero, SS, (off_t)slot_off(3));
	tu_write_file(f->jpath, j2, len2, 0600);
	uint64_t n = 99;
	tu_log_clear();
	assert_int_equal(replay(f, &n), 0);
	assert_int_equal(n, 1);
	read_slot(f->file, 3, got, SS);
	assert_memory_equal(got, zero, SS);
	tu_assert_logged("ignored");
	assert_int_equal(tu_file_size(f->jpath), 0);
	/* (b) generation 2's header survived, its first record did not */
	memcpy(j1, j2, 136);
	tu_pwrite_path(f->file, zero, SS, (off_t)slot_off(1));
	tu_write_file(f->jpath, j1, len1, 0600);
	n = 99;
	assert_int_equal(replay(f, &n), 0);
	assert_int_equal(n, 0);
	read_slot(f->file, 1, got, SS);
	assert_memory_equal(got, zero, SS);
	read_slot(f->file, 3, got, SS);
	assert_memory_equal(got, zero, SS);
	/* (c) a crash right after a checkpoint: the zeroed journal is cut, with
	 * no key needed */
	tu_write_file(f->jpath, j0, len0, 0600);
	n = 99;
	assert_int_equal(replay(f, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(tu_file_size(f->jpath), 0);
	free(j0);
	free(j1);
	free(j2);
	free(data);
	free(got);
	free(zero);
}

/* A truncation through a file opened after the journal's last emptying
 * must be recorded even when the records of the slots it cuts were made
 * through an earlier open of the file (another journal handle): replay
 * would otherwise write those old images over what was written in place
 * after the cut. */
static void test_truncation_across_opens(void **state)
{
	struct fx *f = *state;
	struct rk_datadir *dd = open_dd(f);
	struct rk_journal *j;
	struct rk_cf *cf;
	uint8_t *old = tu_malloc(CS), *fresh = tu_malloc(CS), *got = tu_malloc(CS), *slot_new = tu_malloc(SS);
	assert_int_equal(rk_journal_open(dd, f->t.kr, NULL, &j), 0);
	/* a later generation (the first one hides the bug: a new handle starts
	 * with generation 0) */
	int fd = open(f->file, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_open(fd, "/t1", f->t.kr, true, &cf), 0);
	assert_int_equal(rk_journal_attach(j, cf, "/t1"), 0);
	tu_fill_random(old, CS, 41);
	assert_int_equal(rk_cf_write_chunk(cf, 1, old, CS, f->t.ka, RK_COMP_NONE), 0);
	assert_int_equal(rk_journal_commit(j), 0);
	assert_int_equal(rk_journal_checkpoint(j), 0);
	/* first open: slot 2 rewritten through the journal */
	assert_int_equal(rk_cf_write_chunk(cf, 2, old, CS, f->t.ka, RK_COMP_NONE), 0);
	assert_int_equal(rk_journal_commit(j), 0);
	assert_int_equal(rk_journal_detach(j, cf), 0);
	assert_int_equal(rk_cf_sync(cf), 0);
	rk_cf_close(cf);
	close(fd);
	/* second open: cut to one chunk, grow back, slot 2 written again (a
	 * hole now: in place), synced */
	fd = open(f->file, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_open(fd, "/t1", f->t.kr, true, &cf), 0);
	struct rk_journal_file *jf;
	assert_int_equal(rk_journal_attach_file(j, cf, "/t1", &jf), 0);
	assert_int_equal(rk_cf_truncate(cf, CS, f->t.ka, RK_COMP_NONE), 0);
	tu_fill_random(fresh, CS, 42);
	assert_int_equal(rk_cf_pwrite(cf, fresh, CS, 2 * CS, f->t.ka, RK_COMP_NONE), CS);
	assert_int_equal(rk_journal_sync_file(jf), 0); /* the fsync: acknowledged */
	size_t jlen, flen;
	char *jcopy = tu_read_file(f->jpath, &jlen); /* as a crash would leave it */
	char *fnew = tu_read_file(f->file, &flen);
	assert_true(flen > slot_off(2));
	assert_int_equal(rk_journal_detach_file(jf), 0);
	assert_int_equal(rk_cf_sync(cf), 0);
	rk_cf_close(cf);
	close(fd);
	assert_int_equal(rk_journal_close(j), 0);
	rk_datadir_close(dd);
	tu_write_file(f->jpath, jcopy, jlen, 0600);
	uint64_t n = 0;
	assert_int_equal(replay(f, &n), 0);
	size_t glen;
	char *fgot = tu_read_file(f->file, &glen);
	/* slot 2 as written after the cut, not the image journaled before it */
	assert_true(glen >= flen);
	assert_memory_equal(fgot + slot_off(2), fnew + slot_off(2), flen - slot_off(2));
	free(fgot);
	free(fnew);
	free(jcopy);
	free(old);
	free(fresh);
	free(got);
	free(slot_new);
}

/* ---- hostile journals ------------------------------------------------------------------ */
static void test_dotdot_path(void **state)
{
	struct fx *f = *state;
	struct jw w;
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_slot(&w, f, slot_off(1), 128, "/../outside/victim");
	jw_save(&w, f);
	expect_refused(f, -EINVAL, "not a path strictly beneath");
}

static void test_absolute_paths(void **state)
{
	struct fx *f = *state;
	const char *bad[] = {"outside/victim", "//outside/victim", "/./t1", "/t1/", "/.rekeyfs/journal"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct jw w;
		jw_begin(&w, f->t.ka, f->t.ka);
		jw_slot(&w, f, slot_off(1), 128, bad[i]);
		jw_save(&w, f);
		expect_refused(f, -EINVAL, "not a path strictly beneath");
	}
	/* and one good record before a bad one: nothing at all is written */
	struct jw w;
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_slot(&w, f, slot_off(1), 128, "/t1");
	jw_slot(&w, f, slot_off(1), 128, "/../outside/victim");
	jw_save(&w, f);
	expect_refused(f, -EINVAL, "nothing is replayed");
}

static void test_symlink_dir(void **state)
{
	struct fx *f = *state;
	char l[PATH_MAX];
	tu_path(l, "%s/data/lnk", f->t.dir);
	assert_int_equal(symlink(f->outside, l), 0);
	struct jw w;
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_slot(&w, f, slot_off(1), 128, "/lnk/victim");
	jw_save(&w, f);
	expect_refused(f, -ELOOP, "symlink");
}

static void test_symlink_file(void **state)
{
	struct fx *f = *state;
	char l[PATH_MAX];
	tu_path(l, "%s/data/vlink", f->t.dir);
	assert_int_equal(symlink(f->victim, l), 0);
	struct jw w;
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_slot(&w, f, slot_off(1), 128, "/vlink");
	jw_save(&w, f);
	expect_refused(f, -ELOOP, "symlink");
	/* not a regular file: never opened for writing */
	tu_path(l, "%s/data/fifo", f->t.dir);
	assert_int_equal(mkfifo(l, 0600), 0);
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_slot(&w, f, slot_off(1), 128, "/fifo");
	jw_save(&w, f);
	expect_refused(f, -ELOOP, "not a regular file");
}

static void test_foreign_handle(void **state)
{
	struct fx *f = *state;
	struct {
		struct file_handle fh;
		uint8_t buf[128];
	} h;
	int mid;
	uint8_t img[128];
	h.fh.handle_bytes = 128;
	if (name_to_handle_at(AT_FDCWD, f->victim, &h.fh, &mid, 0) < 0)
		skip();
	struct jw w;
	jw_begin(&w, f->t.ka, f->t.ka);
	tu_fill_random(img, sizeof(img), 5);
	jw_rec(&w, 1, slot_off(1), sizeof(img), 0, f->file_id, h.fh.handle_type, h.fh.f_handle,
	       (uint16_t)h.fh.handle_bytes, "/gone", img, 0);
	jw_save(&w, f);
	if (geteuid() != 0)
		skip(); /* open_by_handle_at needs CAP_DAC_READ_SEARCH */
	expect_refused(f, 0, "outside the data directory");
}

static void test_misaligned_offset(void **state)
{
	struct fx *f = *state;
	struct jw w;
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_slot(&w, f, slot_off(1) + 64, 128, "/t1");
	jw_save(&w, f);
	expect_refused(f, -EINVAL, "not one slot");
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_slot(&w, f, 0, 128, "/t1"); /* the header area */
	jw_save(&w, f);
	expect_refused(f, -EINVAL, "not one slot");
}

static void test_oversized_length(void **state)
{
	struct fx *f = *state;
	struct jw w;
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_slot(&w, f, slot_off(1), SS + 1, "/t1");
	jw_save(&w, f);
	expect_refused(f, -EINVAL, "not one slot");
	uint8_t img[64] = {0};
	jw_begin(&w, f->t.ka, f->t.ka);
	jw_rec(&w, 1, slot_off(1), sizeof(img), SS * 2, f->file_id, -1, NULL, 0, "/t1", img, 0);
	jw_save(&w, f);
	expect_refused(f, -EINVAL, "not one slot");
}

static void test_bad_mac(void **state)
{
	struct fx *f = *state;
	struct jw w;
	/* a damaged record followed by one stating it was durable: refused */
	jw_begin(&w, f->t.ka, f->t.ka);
	size_t r1 = jw_slot(&w, f, slot_off(1), 128, "/t1");
	jw_rec(&w, 2, 9, 0, SS, f->file_id, -1, NULL, 0, "/t1", NULL, 1);
	w.b[r1 + 64 + 3 + 10] ^= 1; /* a byte of the image */
	jw_save(&w, f);
	expect_refused(f, -EBADMSG, "damaged or forged");
	/* a damaged last record: the torn tail, ignored */
	jw_begin(&w, f->t.ka, f->t.ka);
	r1 = jw_slot(&w, f, slot_off(1), 128, "/t1");
	w.b[r1 + 64 + 3 + 10] ^= 1;
	jw_save(&w, f);
	expect_refused(f, 0, "ignored");
}

static void test_wrong_key(void **state)
{
	struct fx *f = *state;
	struct jw w;
	/* names ka but MACed with kb: the header does not authenticate */
	jw_begin(&w, f->t.ka, f->t.kb);
	jw_slot(&w, f, slot_off(1), 128, "/t1");
	jw_save(&w, f);
	expect_refused(f, -EBADMSG, "does not authenticate");
	/* names a key that is not in the key directory */
	struct rk_key fake = *f->t.kb;
	snprintf(fake.name, sizeof(fake.name), "nosuchkey");
	jw_begin(&w, &fake, f->t.kb);
	jw_slot(&w, f, slot_off(1), 128, "/t1");
	jw_save(&w, f);
	expect_refused(f, -ENOKEY, "'nosuchkey'");
}

static void test_old_format(void **state)
{
	struct fx *f = *state;
	uint8_t rec[56 + 32 + 300] = {0};
	memcpy(rec, "RKJ1", 4);
	rec[4] = 1;
	tu_write_file(f->jpath, rec, sizeof(rec), 0600);
	expect_refused(f, -EPROTONOSUPPORT, "version-1 journal");
	/* a version-1 journal without a complete record held nothing: emptied */
	tu_write_file(f->jpath, rec, 40, 0600);
	assert_int_equal(replay(f, NULL), 0);
	assert_int_equal(tu_file_size(f->jpath), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_applies_and_torn_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncation_record, setup, teardown),
		cmocka_unit_test_setup_teardown(test_size_record, setup, teardown),
		cmocka_unit_test_setup_teardown(test_size_record_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_file_id, setup, teardown),
		cmocka_unit_test_setup_teardown(test_handle_versus_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writer_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_attach_handle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_release_key, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reused_journal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncation_across_opens, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dotdot_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_absolute_paths, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_dir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreign_handle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_misaligned_offset, setup, teardown),
		cmocka_unit_test_setup_teardown(test_oversized_length, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_mac, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_key, setup, teardown),
		cmocka_unit_test_setup_teardown(test_old_format, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
