/* rekeyfs unit tests - format v2, wrapped data keys (rekeyfs(5), FORMAT V2):
 * the v2 header codec and its validation, round trips, v1 files still read
 * and written as v1, the v1 -> v2 conversion without rewriting a chunk, the
 * rewrap of an entry from one key to another (and what then reads with which
 * keys), and damaged wrapped keys (always an error, never other bytes). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"

#define KIB 1024u
#define CS (16 * KIB)
#define NCH 5

/* ka AES/GCM 256, kb ChaCha20/Poly1305 256, kc AES/GCM 128, kd AES/GCM 256 */
static int setup(void **state)
{
	static const struct tu_fx_opts o = {.keys = tu_fx_keys, .nkeys = 4, .keyring = true};
	return tu_fx_setup(state, &o);
}

static int teardown(void **state) { return tu_fx_teardown(state); }

/* ---- helpers --------------------------------------------------------------------- */
struct file {
	char path[PATH_MAX];
	int fd;
	struct rk_cf *cf;
};

static void fopen_kr(struct rk_keyring *kr, struct file *fl, bool writable)
{
	fl->fd = open(fl->path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	assert_true(fl->fd >= 0);
	int ret = rk_cf_open(fl->fd, fl->path, kr, writable, &fl->cf);
	if (ret < 0) {
		tu_log_dump();
		fail_msg("rk_cf_open(%s) = %s", fl->path, rk_strerror(ret));
	}
}

static void fclose_(struct file *fl)
{
	rk_cf_close(fl->cf);
	fl->cf = NULL;
	close(fl->fd);
	fl->fd = -1;
}

/* A file of NCH chunks of CS bytes (deterministic), chunks 0..2 under k1 and
 * (when k2) chunks 3..4 under k2, in format version; synced and closed. */
static uint8_t *make(struct tu_fx *f, struct file *fl, const char *name, int version, struct rk_key *k1,
                     struct rk_key *k2)
{
	uint8_t *data = tu_malloc(NCH * CS);
	tu_fill_random(data, NCH * CS, 77);
	memset(data + CS, 'x', CS / 2); /* a compressible chunk too */
	tu_path(fl->path, "%s/%s", f->dir, name);
	fl->fd = open(fl->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fl->fd >= 0);
	assert_int_equal(rk_cf_create_version(fl->fd, fl->path, f->kr, CS, RK_COMP_SNAPPY, k1, version, &fl->cf), 0);
	for (int i = 0; i < NCH; i++) {
		struct rk_key *k = k2 && i >= 3 ? k2 : k1;
		assert_int_equal(rk_cf_pwrite(fl->cf, data + (size_t)i * CS, CS, (uint64_t)i * CS, k, RK_COMP_SNAPPY), CS);
	}
	assert_int_equal(rk_cf_sync(fl->cf), 0);
	fclose_(fl);
	return data;
}

/* The whole plaintext reads back exactly. */
static void expect_content(struct rk_cf *cf, const uint8_t *data)
{
	uint8_t *buf = tu_malloc(NCH * CS);
	ssize_t n = rk_cf_pread(cf, buf, NCH * CS, 0);
	if (n != (ssize_t)(NCH * CS)) {
		tu_log_dump();
		fail_msg("pread = %zd", n);
	}
	assert_memory_equal(buf, data, NCH * CS);
	free(buf);
}

/* Reading chunk idx fails: -EIO, nothing returned, the cause contains want. */
static void expect_fail(struct rk_cf *cf, uint64_t idx, const char *want)
{
	uint8_t *buf = tu_malloc(CS);
	char cause[RK_CF_CAUSE_MAX] = "";
	uint64_t ridx = 0;
	memset(buf, 0xA5, CS);
	rk_cf_read_error_clear();
	ssize_t n = rk_cf_pread(cf, buf, CS, idx * CS);
	if (n != -EIO)
		fail_msg("chunk %" PRIu64 ": pread = %zd, expected -EIO", idx, n);
	assert_int_equal(rk_cf_read_error(&ridx, cause, sizeof(cause)), 0);
	assert_true(ridx == idx);
	if (want && !strstr(cause, want))
		fail_msg("chunk %" PRIu64 ": cause \"%s\" lacks \"%s\"", idx, cause, want);
	free(buf);
}

/* The stored bytes from the first slot to the end. */
static uint8_t *slots_of(const char *path, size_t *len)
{
	size_t n;
	char *all = tu_read_file(path, &n);
	assert_true(n > RK_HDR_AREA);
	*len = n - RK_HDR_AREA;
	uint8_t *s = tu_malloc(*len);
	memcpy(s, all + RK_HDR_AREA, *len);
	free(all);
	return s;
}

/* A key directory holding copies of only the named keys, and a keyring on it. */
static struct rk_keyring *keyring_with(struct tu_fx *f, const char *sub, const char *k1, const char *k2)
{
	char dir[PATH_MAX], from[PATH_MAX], to[PATH_MAX];
	struct rk_keyring *kr = NULL;
	const char *names[2] = {k1, k2};
	tu_path(dir, "%s/%s", f->dir, sub);
	assert_int_equal(mkdir(dir, 0700), 0);
	for (int i = 0; i < 2; i++) {
		if (!names[i])
			continue;
		size_t len;
		tu_path(from, "%s/%s", f->keydir, names[i]);
		tu_path(to, "%s/%s", dir, names[i]);
		char *c = tu_read_file(from, &len);
		tu_write_file(to, c, len, 0600);
		free(c);
	}
	assert_int_equal(rk_keyring_new(dir, &kr), 0);
	return kr;
}

/* Patch len bytes at off of both header copies, checksums recomputed. */
static void patch_both(const char *path, size_t off, const void *bytes, size_t len)
{
	uint8_t h[RK_HDR_COPY_SIZE];
	for (int c = 0; c < 2; c++) {
		tu_pread_path(path, h, sizeof(h), (off_t)c * RK_HDR_COPY_SIZE);
		memcpy(h + off, bytes, len);
		assert_int_equal(rk_sha256(h, RK_HDR_SUM_OFF, h + RK_HDR_SUM_OFF), 0);
		tu_pwrite_path(path, h, sizeof(h), (off_t)c * RK_HDR_COPY_SIZE);
	}
}

static void disk_header(const char *path, struct rk_cf_header *h)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_read_header(fd, path, h, NULL), 0);
	close(fd);
}

/* ---- the codec ------------------------------------------------------------------- */
static void fill_v2(struct rk_cf_header *h)
{
	memset(h, 0, sizeof(*h));
	h->version = RK_FORMAT_V2;
	h->seq = 9;
	tu_fill_random(h->file_id, RK_FILE_ID_BYTES, 3);
	h->chunk_size = CS;
	h->slot_size = CS + RK_SLOT_OVERHEAD;
	h->size = 12345;
	for (int j = 0; j < RK_CF_MAX_KEYS; j += 3) {
		struct rk_cf_keyent *e = &h->keys[j];
		e->in_use = true;
		snprintf(e->name, sizeof(e->name), "key%d", j);
		tu_fill_random(e->fp, RK_FP_BYTES, (uint64_t)j + 10);
		e->cipher = j % 2 ? RK_CIPHER_CHACHA20_POLY1305 : RK_CIPHER_AES_GCM;
		e->bits = j == 6 ? 128 : 256;
		e->count = (uint64_t)j * 1000 + 1;
		e->wrap_method = RK_WRAP_METHOD_FILE;
		e->dek_len = (uint8_t)(e->bits / 8);
		e->hist_n = (uint8_t)(j % 5);
		e->wflags = j == 12 ? RK_WF_DERIVED : 0;
		tu_fill_random(e->wnonce, sizeof(e->wnonce), (uint64_t)j + 20);
		tu_fill_random(e->wtag, sizeof(e->wtag), (uint64_t)j + 30);
		tu_fill_random(e->wrapped, e->dek_len, (uint64_t)j + 40);
		for (int i = 0; i < e->hist_n; i++)
			tu_fill_random(e->hist[i], RK_FP_BYTES, (uint64_t)(j * 7 + i));
	}
}

static void test_v2_codec(void **state)
{
	(void)state;
	struct rk_cf_header h, d;
	uint8_t buf[RK_HDR_COPY_SIZE], bad[RK_HDR_COPY_SIZE];
	fill_v2(&h);
	rk_hdr_encode(&h, buf);
	assert_int_equal(rk_get16(buf + 8), 2);
	assert_int_equal(rk_hdr_decode(buf, &d), 0);
	assert_int_equal(d.version, 2);
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		const struct rk_cf_keyent *a = &h.keys[j], *b = &d.keys[j];
		assert_int_equal(a->in_use, b->in_use);
		if (!a->in_use)
			continue;
		assert_string_equal(a->name, b->name);
		assert_int_equal(a->wrap_method, b->wrap_method);
		assert_int_equal(a->dek_len, b->dek_len);
		assert_int_equal(a->hist_n, b->hist_n);
		assert_int_equal(a->wflags, b->wflags);
		assert_memory_equal(a->wnonce, b->wnonce, RK_NONCE_BYTES);
		assert_memory_equal(a->wtag, b->wtag, RK_TAG_BYTES);
		assert_memory_equal(a->wrapped, b->wrapped, RK_WRAP_CT_MAX);
		assert_memory_equal(a->hist, b->hist, sizeof(a->hist));
		/* the documented place: wrap entry j at 1600 + 152 * j */
		const uint8_t *w = buf + 1600 + 152 * j;
		assert_int_equal(w[0], 1);
		assert_int_equal(w[1], a->dek_len);
		assert_memory_equal(w + 8, a->wnonce, 12);
		assert_memory_equal(w + 20, a->wtag, 16);
		assert_memory_equal(w + 36, a->wrapped, a->dek_len);
	}
	/* every invalid field of a v2 wrap entry makes the copy invalid (the
	 * checksum recomputed: a crafted header, not a damaged one) */
	static const struct {
		int off;   /* within wrap entry 0 (or absolute when >= 4000) */
		uint8_t v;
		const char *what;
	} cases[] = {
		{0, 0, "method 0"},       {0, 3, "method 3 (reserved)"}, {1, 16, "DEK length not strength/8"},
		{1, 24, "DEK length 24"}, {2, 5, "history length 5"},    {3, 0x04, "reserved flag bit"},
		{3, 0x01, "overflow without a full history"},           {5, 1, "reserved bytes 4..7"},
		{36 + 32, 1, "bytes past the DEK"}, {84 + 16 * 0 + 0, 0, "(history of entry 0: none)"},
		{150, 1, "reserved 148..151"}, {4040, 1, "reserved 4032..4063"},
	};
	for (size_t i = 0; i < RK_ARRAY_SIZE(cases); i++) {
		if (cases[i].off == 84)
			continue;
		memcpy(bad, buf, sizeof(bad));
		bad[cases[i].off >= 4000 ? cases[i].off : 1600 + cases[i].off] = cases[i].v;
		rk_sha256(bad, RK_HDR_SUM_OFF, bad + RK_HDR_SUM_OFF);
		if (rk_hdr_decode(bad, &d) != -EUCLEAN)
			fail_msg("v2 header with %s decoded", cases[i].what);
	}
	/* a history fingerprint past the history length (entry 3 has 3) */
	memcpy(bad, buf, sizeof(bad));
	bad[1600 + 152 * 3 + 84 + 16 * 3] = 1;
	rk_sha256(bad, RK_HDR_SUM_OFF, bad + RK_HDR_SUM_OFF);
	assert_int_equal(rk_hdr_decode(bad, &d), -EUCLEAN);
	/* an unused entry's wrap entry must be zero; its key flags 0 or 1 */
	memcpy(bad, buf, sizeof(bad));
	bad[1600 + 152 * 1 + 10] = 1;
	rk_sha256(bad, RK_HDR_SUM_OFF, bad + RK_HDR_SUM_OFF);
	assert_int_equal(rk_hdr_decode(bad, &d), -EUCLEAN);
	memcpy(bad, buf, sizeof(bad));
	bad[64 + 96 * 0 + 81] = 3;
	rk_sha256(bad, RK_HDR_SUM_OFF, bad + RK_HDR_SUM_OFF);
	assert_int_equal(rk_hdr_decode(bad, &d), -EUCLEAN);
	/* ChaCha20 with a 16-byte DEK */
	fill_v2(&h);
	h.keys[3].bits = 128;
	h.keys[3].dek_len = 16;
	rk_hdr_encode(&h, bad);
	assert_int_equal(rk_hdr_decode(bad, &d), -EUCLEAN);
	/* version 3 is still unknown */
	memcpy(bad, buf, sizeof(bad));
	rk_put16(bad + 8, 3);
	rk_sha256(bad, RK_HDR_SUM_OFF, bad + RK_HDR_SUM_OFF);
	assert_int_equal(rk_hdr_decode(bad, &d), -EPROTONOSUPPORT);
	/* the v1 reader is unchanged: the same bytes as version 1 ignore the
	 * area past the key table, as version 1 always did */
	memcpy(bad, buf, sizeof(bad));
	rk_put16(bad + 8, 1);
	rk_sha256(bad, RK_HDR_SUM_OFF, bad + RK_HDR_SUM_OFF);
	assert_int_equal(rk_hdr_decode(bad, &d), 0);
	assert_int_equal(d.keys[0].wrap_method, 0);
}

/* ---- files ------------------------------------------------------------------------ */
static void test_v2_round_trip(void **state)
{
	struct tu_fx *f = *state;
	struct file fl;
	struct rk_cf_header h;
	uint8_t dek[RK_MAX_KEY_BYTES], derived[RK_MAX_KEY_BYTES];
	uint8_t *data = make(f, &fl, "v2", RK_FORMAT_VERSION, f->ka, f->kb);
	assert_int_equal(RK_FORMAT_VERSION, 2); /* new files are v2 */
	disk_header(fl.path, &h);
	assert_int_equal(h.version, 2);
	assert_true(h.keys[0].in_use && h.keys[1].in_use);
	assert_int_equal(h.keys[0].dek_len, 32);
	assert_int_equal(h.keys[1].dek_len, 32);
	assert_int_equal(h.keys[0].count, 3);
	assert_int_equal(h.keys[1].count, 2);
	/* both copies are v2 */
	uint8_t v[2];
	tu_pread_path(fl.path, v, 2, 8);
	assert_int_equal(rk_get16(v), 2);
	tu_pread_path(fl.path, v, 2, RK_HDR_COPY_SIZE + 8);
	assert_int_equal(rk_get16(v), 2);
	/* the DEK is random: not the v1 derived subkey, and per entry */
	assert_int_equal(rk_dek_unwrap(&h, 0, f->ka, dek), 0);
	assert_int_equal(rk_derive_file_key(f->ka->cipher, f->ka->material, f->ka->keylen, h.file_id, derived, 32), 0);
	assert_memory_not_equal(dek, derived, 32);
	/* another key cannot open it */
	assert_int_equal(rk_dek_unwrap(&h, 0, f->kd, dek), -EKEYREJECTED);
	fopen_kr(f->kr, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	/* written again: still v2, a third key gets its own entry and DEK */
	fopen_kr(f->kr, &fl, true);
	assert_int_equal(rk_cf_write_chunk(fl.cf, 4, data + 4 * CS, CS, f->kc, RK_COMP_NONE), 0);
	assert_int_equal(rk_cf_sync(fl.cf), 0);
	fclose_(&fl);
	disk_header(fl.path, &h);
	assert_int_equal(h.version, 2);
	assert_int_equal(h.keys[2].dek_len, 16);
	assert_int_equal(h.keys[2].count, 1);
	fopen_kr(f->kr, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	free(data);
}

static void test_v1_still_v1(void **state)
{
	struct tu_fx *f = *state;
	struct file fl;
	struct rk_cf_header h;
	uint8_t *data = make(f, &fl, "v1", RK_FORMAT_V1, f->ka, f->kb);
	disk_header(fl.path, &h);
	assert_int_equal(h.version, 1);
	assert_int_equal(h.keys[1].wrap_method, 0);
	/* the v1 layout: nothing past the key table */
	uint8_t *hb = tu_malloc(RK_HDR_COPY_SIZE);
	tu_pread_path(fl.path, hb, RK_HDR_COPY_SIZE, 0);
	for (int i = 1600; i < RK_HDR_SUM_OFF; i++)
		assert_int_equal(hb[i], 0);
	free(hb);
	fopen_kr(f->kr, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	/* written under a third key: a v1 entry, the file stays v1 */
	fopen_kr(f->kr, &fl, true);
	assert_int_equal(rk_cf_write_chunk(fl.cf, 0, data, CS, f->kc, RK_COMP_NONE), 0);
	assert_int_equal(rk_cf_sync(fl.cf), 0);
	fclose_(&fl);
	disk_header(fl.path, &h);
	assert_int_equal(h.version, 1);
	assert_int_equal(h.keys[2].wrap_method, 0);
	fopen_kr(f->kr, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	free(data);
}

static void test_upgrade_keeps_chunks(void **state)
{
	struct tu_fx *f = *state;
	struct file fl;
	struct rk_cf_header h;
	size_t l0, l1;
	uint8_t dek[RK_MAX_KEY_BYTES], derived[RK_MAX_KEY_BYTES];
	uint8_t *data = make(f, &fl, "up", RK_FORMAT_V1, f->ka, f->kb);
	uint8_t *before = slots_of(fl.path, &l0);
	/* a keyring lacking kb: refused, the file stays v1 and readable */
	struct rk_keyring *only_a = keyring_with(f, "only-a", "ka", NULL);
	fopen_kr(only_a, &fl, true);
	tu_log_clear();
	assert_int_not_equal(rk_cf_upgrade_v2(fl.cf), 0);
	tu_assert_logged(fl.path, "kb");
	fclose_(&fl);
	rk_keyring_free(only_a);
	disk_header(fl.path, &h);
	assert_int_equal(h.version, 1);

	fopen_kr(f->kr, &fl, true);
	assert_int_equal(rk_cf_upgrade_v2(fl.cf), 0);
	assert_int_equal(rk_cf_header_version(fl.cf), 2);
	expect_content(fl.cf, data); /* the open file reads on */
	assert_int_equal(rk_cf_upgrade_v2(fl.cf), 0); /* twice: nothing to do */
	fclose_(&fl);
	/* no chunk rewritten: every slot byte unchanged */
	uint8_t *after = slots_of(fl.path, &l1);
	assert_int_equal(l0, l1);
	assert_memory_equal(before, after, l0);
	/* both copies v2 (no valid v1 copy left behind), entries DERIVED */
	uint8_t v[2];
	tu_pread_path(fl.path, v, 2, 8);
	assert_int_equal(rk_get16(v), 2);
	tu_pread_path(fl.path, v, 2, RK_HDR_COPY_SIZE + 8);
	assert_int_equal(rk_get16(v), 2);
	disk_header(fl.path, &h);
	for (int j = 0; j < 2; j++) {
		struct rk_key *k = j == 0 ? f->ka : f->kb;
		assert_int_equal(h.keys[j].wflags, RK_WF_DERIVED);
		assert_int_equal(rk_dek_unwrap(&h, j, k, dek), 0);
		assert_int_equal(rk_derive_file_key(k->cipher, k->material, k->keylen, h.file_id, derived, k->keylen), 0);
		assert_memory_equal(dek, derived, k->keylen);
	}
	fopen_kr(f->kr, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	free(before);
	free(after);
	free(data);
}

static void test_rewrap(void **state)
{
	struct tu_fx *f = *state;
	struct file fl;
	struct rk_cf_header h, h0;
	size_t l0, l1;
	uint8_t *data = make(f, &fl, "rw", RK_FORMAT_VERSION, f->ka, NULL);
	uint8_t *before = slots_of(fl.path, &l0);
	disk_header(fl.path, &h0);

	fopen_kr(f->kr, &fl, true);
	expect_content(fl.cf, data); /* DEK cached under ka */
	/* refusals: not the entry's key; another cipher; another length */
	assert_int_equal(rk_cf_rewrap_entry(fl.cf, 0, f->kd, f->ka), -ESTALE);
	assert_int_equal(rk_cf_rewrap_entry(fl.cf, 0, f->ka, f->kb), -EKEYREJECTED);
	assert_int_equal(rk_cf_rewrap_entry(fl.cf, 0, f->ka, f->kc), -EKEYREJECTED);
	assert_int_equal(rk_cf_rewrap_entry(fl.cf, 1, f->ka, f->kd), -EINVAL);
	assert_int_equal(rk_cf_rewrap_entry(fl.cf, 0, f->ka, f->kd), 0);
	/* the open file reads on, also once ka is released */
	assert_int_equal(rk_keyring_release(f->kr, "ka"), 0);
	rk_cf_forget_key(fl.cf, "ka");
	expect_content(fl.cf, data);
	fclose_(&fl);

	/* header only: every slot byte unchanged, the entry names kd, ka in history */
	uint8_t *after = slots_of(fl.path, &l1);
	assert_int_equal(l0, l1);
	assert_memory_equal(before, after, l0);
	disk_header(fl.path, &h);
	assert_string_equal(h.keys[0].name, "kd");
	assert_memory_equal(h.keys[0].fp, f->kd->fp, RK_FP_BYTES);
	assert_int_equal(h.keys[0].hist_n, 1);
	assert_memory_equal(h.keys[0].hist[0], h0.keys[0].fp, RK_FP_BYTES);
	assert_int_equal(h.keys[0].count, NCH);
	assert_true(h.seq >= h0.seq + 2); /* both copies rewritten */
	/* neither copy still names ka */
	uint8_t name[4];
	tu_pread_path(fl.path, name, 3, RK_HDR_KEYS_OFF);
	assert_memory_equal(name, "kd", 3);
	tu_pread_path(fl.path, name, 3, RK_HDR_COPY_SIZE + RK_HDR_KEYS_OFF);
	assert_memory_equal(name, "kd", 3);

	/* only the new key present: reads */
	struct rk_keyring *only_d = keyring_with(f, "only-d", "kd", NULL);
	fopen_kr(only_d, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	rk_keyring_free(only_d);
	/* only the old key present: an error naming the key, no bytes */
	struct rk_keyring *only_a = keyring_with(f, "only-a", "ka", NULL);
	fopen_kr(only_a, &fl, false);
	expect_fail(fl.cf, 0, "'kd'");
	fclose_(&fl);
	/* a header edited back to name ka (checksum fixed): the DEK does not
	 * open under ka (the AAD binds the key's name and fingerprint) */
	uint8_t ent[RK_HDR_KEY_ENTRY];
	memset(ent, 0, sizeof(ent));
	memcpy(ent, "ka", 2);
	memcpy(ent + 64, f->ka->fp, RK_FP_BYTES);
	patch_both(fl.path, RK_HDR_KEYS_OFF, ent, 80);
	fopen_kr(only_a, &fl, false);
	tu_log_clear();
	expect_fail(fl.cf, 0, "does not authenticate");
	tu_assert_logged(fl.path, "entry 0", "does not authenticate");
	fclose_(&fl);
	rk_keyring_free(only_a);
	free(before);
	free(after);
	free(data);
}

/* Rewrapped back and forth: the history keeps the 4 latest, then overflows. */
static void test_rewrap_history(void **state)
{
	struct tu_fx *f = *state;
	struct file fl;
	struct rk_cf_header h;
	uint8_t *data = make(f, &fl, "hist", RK_FORMAT_VERSION, f->ka, NULL);
	fopen_kr(f->kr, &fl, true);
	for (int i = 0; i < 5; i++) {
		struct rk_key *from = i % 2 ? f->kd : f->ka, *to = i % 2 ? f->ka : f->kd;
		assert_int_equal(rk_cf_rewrap_entry(fl.cf, 0, from, to), 0);
		rk_cf_get_header(fl.cf, &h);
		assert_int_equal(h.keys[0].hist_n, i + 1 > 4 ? 4 : i + 1);
		assert_int_equal(!!(h.keys[0].wflags & RK_WF_HIST_OVERFLOW), i + 1 > 4);
		assert_memory_equal(h.keys[0].hist[0], from->fp, RK_FP_BYTES);
	}
	fclose_(&fl);
	disk_header(fl.path, &h);
	assert_string_equal(h.keys[0].name, "kd");
	assert_int_equal(h.keys[0].wflags, RK_WF_HIST_OVERFLOW);
	fopen_kr(f->kr, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	free(data);
}

/* Killed between the two header copies of a rewrap: the file reads (the
 * newer copy names the new key; the older still the old one). */
static void test_rewrap_crash_between_copies(void **state)
{
	struct tu_fx *f = *state;
	struct file fl;
	struct rk_cf_header h;
	uint8_t *data = make(f, &fl, "crash", RK_FORMAT_VERSION, f->ka, NULL);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* crash points are read once per process: a fresh one */
		setenv("REKEYFS_CRASHPOINT", "rewrap.first-copy", 1);
		execl("/proc/self/exe", "test_wrap", "--rewrap-child", f->keydir, fl.path, (char *)NULL);
		_exit(5);
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
		fail_msg("the child was not killed at the crash point (status 0x%x)", st);
	int fd = open(fl.path, O_RDONLY | O_CLOEXEC);
	uint8_t area[RK_HDR_AREA];
	struct rk_cf_header c[2];
	assert_int_equal(rk_pread_full(fd, area, sizeof(area), 0), (ssize_t)sizeof(area));
	close(fd);
	assert_int_equal(rk_hdr_decode(area, &c[0]), 0);
	assert_int_equal(rk_hdr_decode(area + RK_HDR_COPY_SIZE, &c[1]), 0);
	int newer = c[1].seq > c[0].seq ? 1 : 0;
	assert_string_equal(c[newer].keys[0].name, "kd");
	assert_string_equal(c[1 - newer].keys[0].name, "ka");
	disk_header(fl.path, &h);
	assert_string_equal(h.keys[0].name, "kd");
	fopen_kr(f->kr, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	/* only the new key: reads (the current copy) */
	struct rk_keyring *only_d = keyring_with(f, "only-d", "kd", NULL);
	fopen_kr(only_d, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	rk_keyring_free(only_d);
	free(data);
}

/* A flipped bit anywhere in entry 0's wrapped DEK, nonce or tag (header
 * checksum fixed, as an attacker would) is an error for that entry's
 * chunks, never other bytes; chunks under another entry still read.  The
 * rest of the wrap entry and the key entry: the copy is invalid, or the
 * key is not found or rejected, or the DEK does not authenticate. */
static void test_wrap_bit_flips(void **state)
{
	struct tu_fx *f = *state;
	struct file fl;
	uint8_t *data = make(f, &fl, "flip", RK_FORMAT_VERSION, f->ka, f->kb);
	uint8_t w[RK_HDR_WRAP_ENTRY], e[RK_HDR_KEY_ENTRY], t[RK_HDR_WRAP_ENTRY];
	const size_t woff = RK_HDR_WRAP_OFF, koff = RK_HDR_KEYS_OFF;
	tu_pread_path(fl.path, w, sizeof(w), (off_t)woff);
	tu_pread_path(fl.path, e, sizeof(e), (off_t)koff);
	uint8_t *buf = tu_malloc(CS);
	int flips = 0;
	/* nonce 8..19, tag 20..35, wrapped DEK 36..67: every bit */
	for (int i = 8; i < 36 + 32; i++) {
		for (int b = 0; b < 8; b++) {
			memcpy(t, w, sizeof(t));
			t[i] ^= (uint8_t)(1u << b);
			patch_both(fl.path, woff, t, sizeof(t));
			fopen_kr(f->kr, &fl, false);
			expect_fail(fl.cf, 0, "does not authenticate");
			int k = -2;
			assert_int_equal(rk_cf_read_chunk(fl.cf, 3, buf, &k), 0); /* entry 1 intact */
			assert_memory_equal(buf, data + 3 * CS, CS);
			fclose_(&fl);
			flips++;
		}
	}
	assert_int_equal(flips, 60 * 8);
	/* the rest of the wrap entry and the bound part of the key entry: one bit
	 * per byte; the file must not read chunk 0 */
	for (int i = 0; i < RK_HDR_WRAP_ENTRY + 84; i++) {
		bool in_w = i < RK_HDR_WRAP_ENTRY;
		int at = in_w ? i : i - RK_HDR_WRAP_ENTRY;
		if (in_w && at >= 8 && at < 68)
			continue; /* done above */
		uint8_t *src = in_w ? w : e;
		size_t len = in_w ? sizeof(w) : sizeof(e);
		memcpy(t, src, len);
		t[at] ^= (uint8_t)(1u << (i % 8));
		patch_both(fl.path, in_w ? woff : koff, t, len);
		int fd = open(fl.path, O_RDONLY | O_CLOEXEC);
		struct rk_cf *cf = NULL;
		int r = rk_cf_open(fd, fl.path, f->kr, false, &cf);
		if (r == 0) {
			memset(buf, 0, CS);
			ssize_t n = rk_cf_pread(cf, buf, CS, 0);
			if (n != -EIO)
				fail_msg("%s byte %d flipped: chunk 0 read returned %zd", in_w ? "wrap entry" : "key entry", at, n);
			rk_cf_close(cf);
		} else {
			assert_int_equal(r, -EUCLEAN);
		}
		close(fd);
		patch_both(fl.path, in_w ? woff : koff, src, len);
	}
	/* restored: reads again */
	patch_both(fl.path, woff, w, sizeof(w));
	fopen_kr(f->kr, &fl, false);
	expect_content(fl.cf, data);
	fclose_(&fl);
	free(buf);
	free(data);
}

/* A DEK moved into another file's header (same key, checksum fixed) does
 * not open there: the AAD binds the file id. */
static void test_wrap_bound_to_file(void **state)
{
	struct tu_fx *f = *state;
	struct file a, b;
	uint8_t *da = make(f, &a, "a", RK_FORMAT_VERSION, f->ka, NULL);
	uint8_t *db = make(f, &b, "b", RK_FORMAT_VERSION, f->ka, NULL);
	uint8_t w[RK_HDR_WRAP_ENTRY];
	tu_pread_path(a.path, w, sizeof(w), RK_HDR_WRAP_OFF);
	patch_both(b.path, RK_HDR_WRAP_OFF, w, sizeof(w));
	fopen_kr(f->kr, &b, false);
	expect_fail(b.cf, 0, "does not authenticate");
	fclose_(&b);
	fopen_kr(f->kr, &a, false);
	expect_content(a.cf, da);
	fclose_(&a);
	free(da);
	free(db);
}

/* The child of test_rewrap_crash_between_copies: rewrap ka -> kd of the
 * file, with REKEYFS_CRASHPOINT set by the parent. */
static int rewrap_child(const char *keydir, const char *path)
{
	struct rk_keyring *kr = NULL;
	struct rk_key *ka = NULL, *kd = NULL;
	struct rk_cf *cf = NULL;
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 || rk_keyring_new(keydir, &kr) < 0 || rk_keyring_get(kr, "ka", &ka) < 0 ||
	    rk_keyring_get(kr, "kd", &kd) < 0 || rk_cf_open(fd, path, kr, true, &cf) < 0)
		return 6;
	int r = rk_cf_rewrap_entry(cf, 0, ka, kd);
	return r == 0 ? 3 : 4; /* not reached when the crash point works */
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "--rewrap-child") == 0)
		return rewrap_child(argv[2], argv[3]);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_v2_codec),
		T(test_v2_round_trip),
		T(test_v1_still_v1),
		T(test_upgrade_keeps_chunks),
		T(test_rewrap),
		T(test_rewrap_history),
		T(test_rewrap_crash_between_copies),
		T(test_wrap_bit_flips),
		T(test_wrap_bound_to_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
