/* rekeyfs - golden fixtures: the committed chunk files in tests/golden pin
 * chunk-file format version 1.
 *
 *  (a) every golden file decodes through the library to exactly the
 *      plaintext tests/golden_common.c describes, with the described header
 *      (version, chunk size, key table and per-key counts, chunk keys);
 *  (b) regenerating the set gives byte-identical files (pins the writer);
 *  (c) field-level checks on the raw bytes, and an independent decoder
 *      (OpenSSL + snappy directly, not the library) for a few chunks, so
 *      that the documented layout (format.h, rekeyfs(5)) is pinned too.
 *
 * The fixture directory is $TEST_SRCDIR/golden, else TEST_SRCDIR/golden
 * (compile-time). */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <snappy-c.h>

#include "rekeyfs/common.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"

#include "../golden_common.h"

#ifndef TEST_SRCDIR
#define TEST_SRCDIR "tests"
#endif

static char golden_dir[PATH_MAX]; /* .../tests/golden */
static char tmpdir[PATH_MAX];
static char keydir[PATH_MAX];     /* private copy of golden/keys, mode 0600 */
static struct rk_keyring *kr;
/* the set under test: format version gver in golden_subdir(gver) */
static int gver = 1;
#define GSUB golden_subdir(gver)

/* ---- small helpers ---------------------------------------------------------------- */
static void xpath(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void xpath(char *out, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(out, PATH_MAX, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= PATH_MAX)
		fail_msg("path too long: %s", fmt);
}

static uint8_t *read_whole(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0)
		fail_msg("cannot open %s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0)
		fail_msg("fstat %s: %s", path, strerror(errno));
	uint8_t *buf = malloc((size_t)st.st_size + 1);
	assert_non_null(buf);
	ssize_t n = rk_pread_full(fd, buf, (size_t)st.st_size, 0);
	close(fd);
	if (n != (ssize_t)st.st_size)
		fail_msg("short read of %s", path);
	buf[st.st_size] = 0;
	*len = (size_t)st.st_size;
	return buf;
}

static int rm_cb(const char *p, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return (type == FTW_DP || type == FTW_D || type == FTW_DNR) ? rmdir(p) : unlink(p);
}

static void rmrf(const char *path)
{
	struct stat st;
	if (path[0] && lstat(path, &st) == 0)
		nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* captured log lines (for the unsupported-version message) */
static char logbuf[8192];
static void log_capture(int level, const char *msg, void *arg)
{
	(void)level;
	(void)arg;
	size_t l = strlen(logbuf);
	snprintf(logbuf + l, sizeof(logbuf) - l, "%s\n", msg);
}

/* Names in a directory other than . and .., sorted; returns the count. */
static size_t list_dir(const char *dir, char names[][256], size_t max)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t n = 0;
	if (!d)
		fail_msg("cannot open directory %s: %s", dir, strerror(errno));
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n < max)
			snprintf(names[n], 256, "%s", de->d_name);
		n++;
	}
	closedir(d);
	return n;
}

/* ---- setup: a private 0600 copy of the key files -------------------------------- */
static int group_setup(void **state)
{
	(void)state;
	const char *src = getenv("TEST_SRCDIR");
	if (!src || !*src)
		src = TEST_SRCDIR;
	if (snprintf(golden_dir, sizeof(golden_dir), "%s/golden", src) >= (int)sizeof(golden_dir))
		return -1;
	struct stat st;
	if (stat(golden_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "golden fixture directory %s not found (set TEST_SRCDIR to the source tests/ directory)\n",
		        golden_dir);
		return -1;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/rekeyfs-golden-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	if (snprintf(keydir, sizeof(keydir), "%s/keys", tmpdir) >= (int)sizeof(keydir) || mkdir(keydir, 0700) < 0)
		return -1;
	/* git keeps no modes but the executable bit: the committed key files are
	 * 0644, which the library (rightly) refuses.  Use a 0600 copy. */
	for (size_t i = 0; i < golden_nkeys; i++) {
		char from[PATH_MAX], to[PATH_MAX];
		if (snprintf(from, sizeof(from), "%s/keys/%s", golden_dir, golden_keys[i].name) >= (int)sizeof(from) ||
		    snprintf(to, sizeof(to), "%s/%s", keydir, golden_keys[i].name) >= (int)sizeof(to))
			return -1;
		int in = open(from, O_RDONLY | O_CLOEXEC);
		if (in < 0) {
			fprintf(stderr, "cannot open golden key file %s: %s\n", from, strerror(errno));
			return -1;
		}
		char buf[512];
		ssize_t n = read(in, buf, sizeof(buf));
		close(in);
		int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (n <= 0 || out < 0 || fchmod(out, 0600) < 0 || rk_pwrite_full(out, buf, (size_t)n, 0) < 0)
			return -1;
		close(out);
	}
	return rk_keyring_new(keydir, &kr) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	rk_keyring_free(kr);
	rmrf(tmpdir);
	return 0;
}

/* ---- independent definitions (OpenSSL directly, not the library) ---------------- */
static void ref_fingerprint(const struct golden_key *k, uint8_t fp[RK_FP_BYTES])
{
	static const char label[] = "rekeyfs key fingerprint v1";
	uint8_t msg[sizeof(label) + 1], mac[32];
	unsigned int maclen = sizeof(mac);
	memcpy(msg, label, sizeof(label) - 1);
	msg[sizeof(label) - 1] = (uint8_t)k->cipher_id;
	msg[sizeof(label)] = (uint8_t)(k->bits / 8);
	assert_non_null(HMAC(EVP_sha256(), k->material, (int)(k->bits / 8), msg, sizeof(msg), mac, &maclen));
	memcpy(fp, mac, RK_FP_BYTES);
}

static void ref_file_key(const struct golden_key *k, const uint8_t *file_id, uint8_t *out)
{
	static const char info[] = "rekeyfs chunk key v1";
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	assert_non_null(kdf);
	EVP_KDF_CTX *kctx = EVP_KDF_CTX_new(kdf);
	assert_non_null(kctx);
	OSSL_PARAM params[5], *p = params;
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)k->material, k->bits / 8);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)file_id, 16);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, sizeof(info) - 1);
	*p = OSSL_PARAM_construct_end();
	assert_int_equal(EVP_KDF_derive(kctx, out, k->bits / 8, params), 1);
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
}

/* Format v2: the DEK of key entry j of header copy h (the file's first
 * bytes), unwrapped with OpenSSL directly: KWK = HKDF-SHA256(KEK, salt =
 * file id, info "rekeyfs dek wrap v2"), AAD = version || file id || j ||
 * key entry[0..84) || wrap entry[0..8) || wrap entry[84..148). */
static void ref_unwrap(const struct golden_key *k, const uint8_t *h, int j, uint8_t *dek)
{
	static const char info[] = "rekeyfs dek wrap v2";
	const uint8_t *w = h + 1600 + 152 * j;
	uint8_t kwk[32], aad[175], *a = aad;
	size_t len = w[1];
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	assert_non_null(kdf);
	EVP_KDF_CTX *kctx = EVP_KDF_CTX_new(kdf);
	assert_non_null(kctx);
	OSSL_PARAM params[5], *p = params;
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)k->material, k->bits / 8);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)(h + 24), 16);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, sizeof(info) - 1);
	*p = OSSL_PARAM_construct_end();
	assert_int_equal(EVP_KDF_derive(kctx, kwk, k->bits / 8, params), 1);
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	memcpy(a, h + 8, 2);
	a += 2;
	memcpy(a, h + 24, 16);
	a += 16;
	*a++ = (uint8_t)j;
	memcpy(a, h + 64 + 96 * j, 84);
	a += 84;
	memcpy(a, w, 8);
	a += 8;
	memcpy(a, w + 84, 64);
	assert_int_equal(len, k->bits / 8);
	const EVP_CIPHER *c = k->cipher_id == RK_CIPHER_CHACHA20_POLY1305 ? EVP_chacha20_poly1305()
	                      : k->bits == 128                         ? EVP_aes_128_gcm()
	                                                               : EVP_aes_256_gcm();
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int l1 = 0, l2 = 0;
	assert_non_null(ctx);
	assert_int_equal(EVP_DecryptInit_ex(ctx, c, NULL, NULL, NULL), 1);
	assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL), 1);
	assert_int_equal(EVP_DecryptInit_ex(ctx, NULL, NULL, kwk, w + 8), 1);
	assert_int_equal(EVP_DecryptUpdate(ctx, NULL, &l1, aad, sizeof(aad)), 1);
	assert_int_equal(EVP_DecryptUpdate(ctx, dek, &l1, w + 36, (int)len), 1);
	assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, (void *)(w + 20)), 1);
	if (EVP_DecryptFinal_ex(ctx, dek + l1, &l2) != 1)
		fail_msg("key entry %d: independent unwrap of the data key failed (wrap key, nonce, AAD or tag layout "
		         "changed)",
		         j);
	EVP_CIPHER_CTX_free(ctx);
}

/* ---- (a) decode through the library --------------------------------------------- */
static const char *entry_name(const struct rk_cf_header *h, int j)
{
	return j >= 0 && j < RK_CF_MAX_KEYS && h->keys[j].in_use ? h->keys[j].name : NULL;
}

static void check_header(const struct golden_file *f, const struct rk_cf_header *h)
{
	assert_int_equal(h->version, gver);
	assert_int_equal(h->chunk_size, f->chunk_size);
	assert_int_equal(h->slot_size, f->chunk_size + 64);
	assert_true(h->size == f->size);
	assert_int_equal(h->compression, (int)f->comp);
	if (h->flags & RK_HF_COUNTS_DIRTY)
		fail_msg("%s: the header's COUNTS_DIRTY flag is set (the generator syncs every fixture)", f->name);
	int nexp = 0;
	for (; f->counts[nexp].key; nexp++) {
		const struct rk_cf_keyent *e = &h->keys[nexp];
		const struct golden_key *gk = golden_key_find(f->counts[nexp].key);
		uint8_t fp[RK_FP_BYTES];
		assert_non_null(gk);
		if (!e->in_use || strcmp(e->name, f->counts[nexp].key) != 0)
			fail_msg("%s: key table entry %d is '%s', expected '%s'", f->name, nexp, e->in_use ? e->name : "(unused)",
			         f->counts[nexp].key);
		if (e->count != f->counts[nexp].count)
			fail_msg("%s: header counts %" PRIu64 " chunks under %s, expected %" PRIu64, f->name, e->count, e->name,
			         f->counts[nexp].count);
		ref_fingerprint(gk, fp);
		assert_memory_equal(e->fp, fp, RK_FP_BYTES);
		assert_int_equal(e->cipher, gk->cipher_id);
		assert_int_equal(e->bits, gk->bits);
		if (gver >= 2) {
			/* a fresh random DEK per entry, never rewrapped, not converted */
			assert_int_equal(e->wrap_method, RK_WRAP_METHOD_FILE);
			assert_int_equal(e->dek_len, gk->bits / 8);
			assert_int_equal(e->hist_n, 0);
			assert_int_equal(e->wflags, 0);
		} else {
			assert_int_equal(e->wrap_method, 0);
		}
	}
	for (int j = nexp; j < RK_CF_MAX_KEYS; j++)
		if (h->keys[j].in_use)
			fail_msg("%s: unexpected key table entry %d ('%s')", f->name, j, h->keys[j].name);
}

static void test_fixture_set_complete_set(void **state)
{
	(void)state;
	char names[64][256], dir[PATH_MAX];
	xpath(dir, "%s/%s", golden_dir, GSUB);
	size_t n = list_dir(dir, names, 64);
	for (size_t i = 0; i < n && i < 64; i++)
		if (!golden_file_find(names[i]))
			fail_msg("%s/%s is not described in tests/golden_common.c", dir, names[i]);
	assert_int_equal(n, golden_nfiles);
	xpath(dir, "%s/keys", golden_dir);
	n = list_dir(dir, names, 64);
	for (size_t i = 0; i < n && i < 64; i++)
		if (!golden_key_find(names[i]))
			fail_msg("%s/%s is not described in tests/golden_common.c", dir, names[i]);
	assert_int_equal(n, golden_nkeys);
}

/* The key files: exact content, and the library loads them as described. */
static void test_key_files(void **state)
{
	(void)state;
	for (size_t i = 0; i < golden_nkeys; i++) {
		const struct golden_key *gk = &golden_keys[i];
		char path[PATH_MAX], line[256];
		size_t len;
		xpath(path, "%s/keys/%s", golden_dir, gk->name);
		uint8_t *content = read_whole(path, &len);
		assert_int_equal(golden_key_line(gk, line, sizeof(line)), 0);
		assert_string_equal((char *)content, line);
		/* CIPHER:STRENGTH:BASE64 with one trailing newline */
		assert_int_equal(strncmp((char *)content, gk->cipher, strlen(gk->cipher)), 0);
		assert_int_equal(content[strlen(gk->cipher)], ':');
		assert_int_equal(content[len - 1], '\n');
		free(content);

		struct rk_key *k;
		assert_int_equal(rk_key_load(keydir, gk->name, &k), 0);
		assert_int_equal(k->cipher, gk->cipher_id);
		assert_int_equal(k->bits, gk->bits);
		assert_int_equal(k->keylen, gk->bits / 8);
		assert_memory_equal(k->material, gk->material, gk->bits / 8);
		uint8_t fp[RK_FP_BYTES];
		ref_fingerprint(gk, fp);
		assert_memory_equal(k->fp, fp, RK_FP_BYTES);
		rk_key_free(k);
	}
}

/* Decode dir/files/NAME of fixture f through the library and compare it
 * with the description. */
static void decode_one(const char *dir, const struct golden_file *f)
{
	char path[PATH_MAX];
	struct rk_cf *cf = NULL;
	struct rk_cf_header h;
	int which = -1;
	xpath(path, "%s/%s/%s", dir, GSUB, f->name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail_msg("cannot open %s: %s", path, strerror(errno));
	assert_int_equal(rk_cf_probe(fd), 1);
	assert_int_equal(rk_cf_read_header(fd, path, &h, &which), 0);
	check_header(f, &h);
	int ret = rk_cf_open(fd, path, kr, false, &cf);
	if (ret < 0)
		fail_msg("%s: rk_cf_open: %s", f->name, rk_strerror(ret));
	rk_cf_get_header(cf, &h);
	check_header(f, &h);
	assert_true(rk_cf_size(cf) == f->size);

	/* the whole plaintext in one read */
	uint8_t *want = golden_plaintext(f);
	uint8_t *got = malloc((size_t)f->size + 1);
	assert_non_null(want);
	assert_non_null(got);
	ssize_t n = rk_cf_pread(cf, got, (size_t)f->size, 0);
	if (n != (ssize_t)f->size)
		fail_msg("%s: rk_cf_pread returned %zd, expected %" PRIu64, f->name, n, f->size);
	for (uint64_t i = 0; i < f->size; i++)
		if (got[i] != want[i])
			fail_msg("%s: plaintext differs at offset %" PRIu64 " (chunk %" PRIu64 "): got 0x%02x, want 0x%02x",
			         f->name, i, i / f->chunk_size, got[i], want[i]);
	/* random access: odd-sized reads at unaligned offsets, and past the end */
	for (uint64_t off = 0; off < f->size; off += 7919) {
		size_t len = (size_t)RK_MIN((uint64_t)5003, f->size - off);
		assert_int_equal(rk_cf_pread(cf, got, 5003, off), (ssize_t)len);
		if (memcmp(got, want + off, len) != 0)
			fail_msg("%s: a %zu-byte read at offset %" PRIu64 " differs", f->name, len, off);
	}
	assert_int_equal(rk_cf_pread(cf, got, 1, f->size), 0);

	/* every chunk is under the described key (or a hole), and the per-key
	 * counts in the header agree with the slots */
	uint64_t nchunks = (f->size + f->chunk_size - 1) / f->chunk_size, counts[RK_CF_MAX_KEYS] = {0};
	uint8_t *cbuf = malloc(f->chunk_size);
	assert_non_null(cbuf);
	assert_true(rk_cf_nchunks(cf) == nchunks);
	for (uint64_t i = 0; i < nchunks; i++) {
		int k = -2, k2 = -2;
		assert_int_equal(rk_cf_read_chunk(cf, i, cbuf, &k), 0);
		assert_int_equal(rk_cf_chunk_keyidx(cf, i, &k2), 0);
		assert_int_equal(k, k2);
		const char *exp = golden_chunk_key(f, i), *gotk = entry_name(&h, k);
		if (!exp != !gotk || (exp && strcmp(exp, gotk) != 0))
			fail_msg("%s: chunk %" PRIu64 " is under %s, expected %s", f->name, i, gotk ? gotk : "(hole)",
			         exp ? exp : "(hole)");
		if (k >= 0)
			counts[k]++;
	}
	for (int j = 0; j < RK_CF_MAX_KEYS; j++)
		if (h.keys[j].in_use && h.keys[j].count != counts[j])
			fail_msg("%s: header count for %s is %" PRIu64 " but %" PRIu64 " slots name it", f->name,
			         h.keys[j].name, h.keys[j].count, counts[j]);
	free(cbuf);
	free(want);
	free(got);
	rk_cf_close(cf);
	close(fd);
}

static void test_decode_all_set(void **state)
{
	(void)state;
	for (size_t i = 0; i < golden_nfiles; i++)
		decode_one(golden_dir, &golden_files[i]);
}

/* ---- (b) regeneration is byte-identical --------------------------------------------- */
static void describe_offset(const struct golden_file *f, uint64_t off, char *out, size_t len)
{
	uint64_t slot = f->chunk_size + 64;
	if (off < 4096)
		snprintf(out, len, "header copy A, byte %" PRIu64, off);
	else if (off < 8192)
		snprintf(out, len, "header copy B, byte %" PRIu64, off - 4096);
	else
		snprintf(out, len, "slot %" PRIu64 ", byte %" PRIu64 "%s", (off - 8192) / slot, (off - 8192) % slot,
		         (off - 8192) % slot < 32 ? " (slot header)" : " (sealed payload or tag)");
}

static void test_regenerate_identical_set(void **state)
{
	(void)state;
	char out[PATH_MAX], a[PATH_MAX], b[PATH_MAX], where[128];
	xpath(out, "%s/regen", tmpdir);
	int ret = golden_generate(out);
	if (ret < 0)
		fail_msg("golden_generate(%s): %s", out, rk_strerror(ret));
	/* what the library writes now must match the description (a clearer
	 * message than a byte difference) ... */
	for (size_t i = 0; i < golden_nfiles; i++)
		decode_one(out, &golden_files[i]);
	/* ... and be byte-identical to the committed fixtures */
	for (size_t i = 0; i < golden_nkeys; i++) {
		size_t la, lb;
		xpath(a, "%s/keys/%s", golden_dir, golden_keys[i].name);
		xpath(b, "%s/keys/%s", out, golden_keys[i].name);
		uint8_t *ca = read_whole(a, &la), *cb = read_whole(b, &lb);
		if (la != lb || memcmp(ca, cb, la) != 0)
			fail_msg("regenerated key file %s differs from %s", b, a);
		struct stat st;
		assert_int_equal(stat(b, &st), 0);
		assert_int_equal(st.st_mode & 07777, 0600);
		free(ca);
		free(cb);
	}
	int bad = 0;
	for (size_t i = 0; i < golden_nfiles; i++) {
		const struct golden_file *f = &golden_files[i];
		size_t la, lb;
		xpath(a, "%s/%s/%s", golden_dir, GSUB, f->name);
		xpath(b, "%s/%s/%s", out, GSUB, f->name);
		uint8_t *ca = read_whole(a, &la), *cb = read_whole(b, &lb);
		size_t m = RK_MIN(la, lb), d = 0;
		while (d < m && ca[d] == cb[d])
			d++;
		if (d < m || la != lb) {
			describe_offset(f, d, where, sizeof(where));
			print_error("golden file %s: regenerated file differs: golden %zu bytes, regenerated %zu bytes, "
			            "first difference at offset %zu (%s)\n",
			            f->name, la, lb, d, where);
			bad++;
		}
		free(ca);
		free(cb);
	}
	if (bad)
		fail_msg("%d golden file(s) differ from what the library writes now.  Either the chunk-file format or "
		         "the writer changed by accident (fix it), or this is an intended format change: then bump the "
		         "format version, regenerate with `tests/gen_golden tests/golden` and explain it in the commit.  "
		         "(If only snappy-compressed slot payloads differ, the installed snappy library's output "
		         "changed.)",
		         bad);
}

/* ---- (c) the raw layout -------------------------------------------------------------- */
static void check_header_copy(const struct golden_file *f, const uint8_t *p, int copy, uint64_t *seq)
{
	static const uint8_t magic[8] = {0x89, 0x52, 0x4B, 0x46, 0x53, 0x0D, 0x0A, 0x1A};
	uint8_t sum[32];
	unsigned int sl = sizeof(sum);
	assert_memory_equal(p, magic, 8);
	assert_int_equal(rk_get16(p + 8), gver);      /* format version */
	assert_int_equal(rk_get16(p + 10), 4096);     /* header copy size */
	*seq = rk_get64(p + 16);
	assert_int_equal(rk_get32(p + 40), f->chunk_size);
	assert_int_equal(rk_get32(p + 44), f->chunk_size + 64);
	assert_int_equal(p[56], (int)f->comp);
	for (int i = 57; i < 64; i++)
		assert_int_equal(p[i], 0);
	/* v1: 1600..4063 reserved; v2: the wrap table (check_key_entries), then 4032..4063 */
	for (int i = gver >= 2 ? 4032 : 1600; i < 4064; i++)
		if (p[i])
			fail_msg("%s: header copy %c: reserved byte %d is not zero", f->name, 'A' + copy, i);
	/* checksum: SHA-256 of bytes 0..4063 */
	assert_int_equal(EVP_Digest(p, 4064, sum, &sl, EVP_sha256(), NULL), 1);
	if (memcmp(sum, p + 4064, 32) != 0)
		fail_msg("%s: header copy %c: SHA-256 at 4064 does not match bytes 0..4063", f->name, 'A' + copy);
}

static void check_key_entries(const struct golden_file *f, const uint8_t *p)
{
	int j = 0;
	for (; f->counts[j].key; j++) {
		const uint8_t *e = p + 64 + 96 * j;
		const struct golden_key *gk = golden_key_find(f->counts[j].key);
		uint8_t fp[RK_FP_BYTES], name[64] = {0};
		memcpy(name, gk->name, strlen(gk->name));
		assert_memory_equal(e, name, 64); /* name, NUL padded */
		ref_fingerprint(gk, fp);
		assert_memory_equal(e + 64, fp, 16);
		assert_int_equal(e[80], gk->cipher_id);
		assert_int_equal(e[81], 1); /* in use */
		assert_int_equal(rk_get16(e + 82), gk->bits);
		assert_int_equal(rk_get32(e + 84), 0);
		assert_true(rk_get64(e + 88) == f->counts[j].count);
		if (gver >= 2) {
			/* wrap entry j at 1600 + 152 * j (rekeyfs(5), FORMAT V2) */
			const uint8_t *w = p + 1600 + 152 * j;
			assert_int_equal(w[0], 1);            /* method: key file KEK */
			assert_int_equal(w[1], gk->bits / 8); /* DEK length */
			assert_int_equal(w[2], 0);            /* history length */
			assert_int_equal(w[3], 0);            /* flags */
			assert_int_equal(rk_get32(w + 4), 0);
			for (int i = 36 + w[1]; i < 152; i++)
				if (w[i])
					fail_msg("%s: wrap entry %d: byte %d is not zero", f->name, j, i);
		}
	}
	for (; j < 16; j++) {
		const uint8_t *e = p + 64 + 96 * j;
		for (int i = 0; i < 96; i++)
			assert_int_equal(e[i], 0);
		if (gver >= 2)
			for (int i = 0; i < 152; i++)
				assert_int_equal(p[1600 + 152 * j + i], 0);
	}
}

struct slot {
	int key_idx, comp;
	uint32_t plain_len, stored_len;
	const uint8_t *hdr, *nonce, *ct, *tag;
};

static bool parse_slot(const struct golden_file *f, const uint8_t *file, size_t flen, uint64_t idx, struct slot *s)
{
	uint64_t off = 8192 + idx * (uint64_t)(f->chunk_size + 64);
	static const uint8_t zero[32];
	if (off >= flen || (off + 32 <= flen && memcmp(file + off, zero, 32) == 0))
		return false; /* hole */
	const uint8_t *p = file + off;
	assert_true(off + 32 <= flen);
	if (memcmp(p, "RKC1", 4) != 0)
		fail_msg("%s: slot %" PRIu64 " at offset %" PRIu64 " does not begin with 'RKC1'", f->name, idx, off);
	s->hdr = p;
	s->key_idx = p[4];
	s->comp = p[5];
	assert_int_equal(rk_get16(p + 6), 0);
	s->plain_len = rk_get32(p + 8);
	s->stored_len = rk_get32(p + 12);
	s->nonce = p + 16;
	assert_int_equal(rk_get32(p + 28), 0);
	s->ct = p + 32;
	s->tag = p + 32 + s->stored_len;
	assert_true(off + 32 + s->stored_len + 16 <= flen);
	assert_true(s->plain_len >= 1 && s->plain_len <= f->chunk_size);
	if (s->comp == 0)
		assert_int_equal(s->stored_len, s->plain_len);
	return true;
}

/* Decrypt slot idx of f with OpenSSL and snappy directly and compare it
 * with the described plaintext. */
static void ref_decrypt(const struct golden_file *f, const uint8_t *file, size_t flen, uint64_t idx,
                        const char *keyname, const uint8_t *plain)
{
	struct slot s;
	uint8_t subkey[32], aad[16 + 8 + 16];
	const struct golden_key *gk = golden_key_find(keyname);
	assert_non_null(gk);
	assert_true(parse_slot(f, file, flen, idx, &s));
	/* the slot names the key by its entry in the header key table */
	assert_memory_equal(file + 64 + 96 * s.key_idx, gk->name, strlen(gk->name) + 1);
	if (gver >= 2)
		ref_unwrap(gk, file, s.key_idx, subkey); /* v2: the wrapped DEK */
	else
		ref_file_key(gk, file + 24, subkey); /* file id at offset 24 of the header */
	memcpy(aad, file + 24, 16);
	rk_put64(aad + 16, idx);
	memcpy(aad + 24, s.hdr, 16);

	const EVP_CIPHER *c = gk->cipher_id == RK_CIPHER_CHACHA20_POLY1305 ? EVP_chacha20_poly1305()
	                      : gk->bits == 128                         ? EVP_aes_128_gcm()
	                                                                : EVP_aes_256_gcm();
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	uint8_t *pay = malloc(s.stored_len + 16), *out = malloc(f->chunk_size);
	int l1 = 0, l2 = 0;
	assert_non_null(ctx);
	assert_non_null(pay);
	assert_non_null(out);
	assert_int_equal(EVP_DecryptInit_ex(ctx, c, NULL, NULL, NULL), 1);
	assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL), 1);
	assert_int_equal(EVP_DecryptInit_ex(ctx, NULL, NULL, subkey, s.nonce), 1);
	assert_int_equal(EVP_DecryptUpdate(ctx, NULL, &l1, aad, sizeof(aad)), 1);
	assert_int_equal(EVP_DecryptUpdate(ctx, pay, &l1, s.ct, (int)s.stored_len), 1);
	assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, (void *)s.tag), 1);
	if (EVP_DecryptFinal_ex(ctx, pay + l1, &l2) != 1)
		fail_msg("%s: chunk %" PRIu64 ": independent AEAD check failed (key, nonce, aad or tag layout changed)",
		         f->name, idx);
	EVP_CIPHER_CTX_free(ctx);
	size_t olen = f->chunk_size;
	if (s.comp == 1) {
		assert_int_equal(snappy_uncompress((const char *)pay, s.stored_len, (char *)out, &olen), SNAPPY_OK);
		assert_int_equal(olen, s.plain_len);
	} else {
		assert_int_equal(s.comp, 0);
		memcpy(out, pay, s.stored_len);
	}
	uint64_t start = idx * f->chunk_size;
	uint64_t expect_len = RK_MIN((uint64_t)f->chunk_size, f->size - start);
	/* a chunk's plaintext may end before the chunk does (sparse file grown
	 * by truncate): the rest reads as zeros */
	assert_true(s.plain_len <= expect_len);
	assert_memory_equal(out, plain + start, s.plain_len);
	for (uint64_t i = start + s.plain_len; i < start + expect_len; i++)
		assert_int_equal(plain[i], 0);
	free(pay);
	free(out);
}

static void layout_one(const struct golden_file *f)
{
	char path[PATH_MAX];
	size_t flen;
	uint64_t seq[2];
	xpath(path, "%s/%s/%s", golden_dir, GSUB, f->name);
	uint8_t *p = read_whole(path, &flen);
	assert_true(flen >= 8192);
	check_header_copy(f, p, 0, &seq[0]);
	check_header_copy(f, p + 4096, 1, &seq[1]);
	assert_true(seq[0] != seq[1]);
	const uint8_t *cur = seq[1] > seq[0] ? p + 4096 : p;
	assert_int_equal(rk_get32(cur + 12), 0); /* flags: counts clean */
	assert_true(rk_get64(cur + 48) == f->size);
	check_key_entries(f, cur);

	/* slots: slot i at 8192 + i * (chunk_size + 64), holes all zero */
	uint64_t n = (f->size + f->chunk_size - 1) / f->chunk_size, last_end = 8192;
	for (uint64_t i = 0; i < n; i++) {
		struct slot s;
		bool data = parse_slot(f, p, flen, i, &s);
		const char *k = golden_chunk_key(f, i);
		if (data != (k != NULL))
			fail_msg("%s: slot %" PRIu64 " is %s, expected %s", f->name, i, data ? "data" : "a hole",
			         k ? "data" : "a hole");
		if (!data)
			continue;
		assert_true(s.key_idx < 16);
		assert_string_equal((const char *)cur + 64 + 96 * s.key_idx, k);
		if (i == 0)
			assert_int_equal(s.comp, f->chunk0_comp);
		last_end = 8192 + i * (uint64_t)(f->chunk_size + 64) + 32 + s.stored_len + 16;
	}
	if (n == 0)
		assert_int_equal(f->chunk0_comp, -1);
	/* the unused rest of a slot is never written: the stored file ends with
	 * the last slot's tag */
	if (f->method == GM_WHOLE || f->method == GM_SPARSE)
		if (flen != last_end)
			fail_msg("%s: stored length %zu, expected %" PRIu64 " (end of the last sealed chunk)", f->name, flen,
			         last_end);
	free(p);
}

static void test_layout_set(void **state)
{
	(void)state;
	for (size_t i = 0; i < golden_nfiles; i++)
		layout_one(&golden_files[i]);
	/* the documented anchors, spelled out once */
	char path[PATH_MAX];
	size_t flen;
	xpath(path, "%s/%s/%s", golden_dir, GSUB, "one-chunk.txt");
	uint8_t *p = read_whole(path, &flen);
	const uint8_t head[10] = {0x89, 0x52, 0x4B, 0x46, 0x53, 0x0D, 0x0A, 0x1A, (uint8_t)gver, 0x00};
	assert_memory_equal(p, head, sizeof(head));
	assert_memory_equal(p + 8192, "RKC1", 4);
	free(p);
}

static void test_independent_decrypt_set(void **state)
{
	(void)state;
	static const struct {
		const char *file;
		uint64_t chunk;
		const char *key;
	} cases[] = {
		{"incompressible.bin", 0, "golden_aes256"}, /* AES-256-GCM, raw */
		{"incompressible.bin", 2, "golden_aes256"}, /* partial last chunk */
		{"one-chunk.txt", 0, "golden_aes256"},      /* snappy */
		{"chacha20.txt", 1, "golden_chacha20"},     /* ChaCha20-Poly1305 */
		{"aes128.bin", 1, "golden_aes128"},         /* AES-128-GCM */
		{"two-keys.txt", 0, "golden_aes256"},       /* key entry 0 */
		{"two-keys.txt", 1, "golden_chacha20"},     /* rekeyed: key entry 1 */
		{"two-keys.txt", 3, "golden_chacha20"},     /* rewritten */
		{"sparse.bin", 5, "golden_aes256"},         /* the only data chunk of a sparse file */
		{"one-byte", 0, "golden_aes256"},
	};
	for (size_t i = 0; i < RK_ARRAY_SIZE(cases); i++) {
		const struct golden_file *f = golden_file_find(cases[i].file);
		char path[PATH_MAX];
		size_t flen;
		assert_non_null(f);
		xpath(path, "%s/%s/%s", golden_dir, GSUB, f->name);
		uint8_t *p = read_whole(path, &flen), *plain = golden_plaintext(f);
		assert_non_null(plain);
		ref_decrypt(f, p, flen, cases[i].chunk, cases[i].key, plain);
		free(p);
		free(plain);
	}
}

/* A later format version is refused with a clear message. */
static void test_unknown_version_refused(void **state)
{
	(void)state;
	char src[PATH_MAX], dst[PATH_MAX];
	size_t len;
	struct rk_cf_header h;
	struct rk_cf *cf = NULL;
	xpath(src, "%s/files/one-chunk.txt", golden_dir);
	xpath(dst, "%s/version3", tmpdir);
	uint8_t *p = read_whole(src, &len);
	rk_put16(p + 8, 3);
	rk_put16(p + 4096 + 8, 3);
	int fd = open(dst, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(rk_pwrite_full(fd, p, len, 0), 0);
	logbuf[0] = '\0';
	rk_log_set_handler(log_capture, NULL);
	assert_int_equal(rk_cf_probe(fd), 1);
	int r1 = rk_cf_read_header(fd, dst, &h, NULL);
	int r2 = rk_cf_open(fd, dst, kr, false, &cf);
	rk_log_set_handler(NULL, NULL);
	assert_int_equal(r1, -EPROTONOSUPPORT);
	assert_int_equal(r2, -EPROTONOSUPPORT);
	assert_null(cf);
	if (!strstr(logbuf, "version 3") || !strstr(logbuf, dst))
		fail_msg("the message for an unknown version should name the file and the version; got: %s", logbuf);
	close(fd);
	free(p);
}

static void test_fixture_set_complete(void **state)
{
	for (gver = 1; gver <= 2; gver++)
		test_fixture_set_complete_set(state);
	gver = 1;
}

static void test_decode_all(void **state)
{
	for (gver = 1; gver <= 2; gver++)
		test_decode_all_set(state);
	gver = 1;
}

static void test_layout(void **state)
{
	for (gver = 1; gver <= 2; gver++)
		test_layout_set(state);
	gver = 1;
}

static void test_independent_decrypt(void **state)
{
	for (gver = 1; gver <= 2; gver++)
		test_independent_decrypt_set(state);
	gver = 1;
}

static void test_regenerate_identical(void **state)
{
	for (gver = 1; gver <= 2; gver++)
		test_regenerate_identical_set(state);
	gver = 1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixture_set_complete),
		cmocka_unit_test(test_key_files),
		cmocka_unit_test(test_decode_all),
		cmocka_unit_test(test_layout),
		cmocka_unit_test(test_independent_decrypt),
		cmocka_unit_test(test_unknown_version_refused),
		cmocka_unit_test(test_regenerate_identical),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
