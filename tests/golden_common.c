/* rekeyfs - the golden fixture set (see golden_common.h). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "rekeyfs/common.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"

#include "golden_common.h"

/* ---- keys ------------------------------------------------------------------------ */
const struct golden_key golden_keys[] = {
	{"golden_aes256", "AES/GCM/NoPadding", RK_CIPHER_AES_GCM, 256,
	 {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
	  0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0}},
	{"golden_chacha20", "ChaCha20/Poly1305/NoPadding", RK_CIPHER_CHACHA20_POLY1305, 256,
	 {0xc0, 0xff, 0xee, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c,
	  0xde, 0xad, 0xbe, 0xef, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0}},
	{"golden_aes128", "AES/GCM/NoPadding", RK_CIPHER_AES_GCM, 128,
	 {0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c}},
};
const size_t golden_nkeys = RK_ARRAY_SIZE(golden_keys);

const struct golden_key *golden_key_find(const char *name)
{
	for (size_t i = 0; i < golden_nkeys; i++)
		if (strcmp(golden_keys[i].name, name) == 0)
			return &golden_keys[i];
	return NULL;
}

int golden_key_line(const struct golden_key *k, char *out, size_t outlen)
{
	char b64[4 * ((RK_MAX_KEY_BYTES + 2) / 3) + 1];
	EVP_EncodeBlock((unsigned char *)b64, k->material, (int)(k->bits / 8));
	int n = snprintf(out, outlen, "%s:%u:%s\n", k->cipher, k->bits, b64);
	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* ---- the fixture set -----------------------------------------------------------------
 * Keep this table stable: changing an entry changes the fixtures (regenerate
 * them and say why in the commit).  The seeded random stream (file ids,
 * nonces) is consumed in table order, so a new fixture goes at the end,
 * where it leaves the existing files byte-identical. */
#define K64 (64u * 1024u)
#define K16 (16u * 1024u)
#define K4 (4u * 1024u)
#define NONE_LIST {-1, -1, -1, -1}

const struct golden_file golden_files[] = {
	{.name = "empty", .what = "an empty file (header only)", .content = GC_TEXT, .size = 0, .seed = 1,
	 .chunk_size = K64, .comp = RK_COMP_SNAPPY, .method = GM_WHOLE, .key = "golden_aes256",
	 .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST,
	 .counts = {{"golden_aes256", 0}, {NULL, 0}}, .chunk0_comp = -1},
	{.name = "one-byte", .what = "a 1-byte file", .content = GC_TEXT, .size = 1, .seed = 2, .chunk_size = K64,
	 .comp = RK_COMP_SNAPPY, .method = GM_WHOLE, .key = "golden_aes256", .rekey_chunks = NONE_LIST,
	 .rewrite_chunks = NONE_LIST, .counts = {{"golden_aes256", 1}, {NULL, 0}}, .chunk0_comp = RK_COMP_NONE},
	{.name = "one-chunk.txt", .what = "exactly one 64 KiB chunk of text", .content = GC_TEXT, .size = K64,
	 .seed = 3, .chunk_size = K64, .comp = RK_COMP_SNAPPY, .method = GM_WHOLE, .key = "golden_aes256",
	 .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST, .counts = {{"golden_aes256", 1}, {NULL, 0}},
	 .chunk0_comp = RK_COMP_SNAPPY},
	{.name = "chunk-plus-one.txt", .what = "one 64 KiB chunk and one byte", .content = GC_TEXT,
	 .size = K64 + 1, .seed = 4, .chunk_size = K64, .comp = RK_COMP_SNAPPY, .method = GM_WHOLE,
	 .key = "golden_aes256", .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST,
	 .counts = {{"golden_aes256", 2}, {NULL, 0}}, .chunk0_comp = RK_COMP_SNAPPY},
	{.name = "chunks-4k.txt", .what = "six chunks of a 4 KiB-chunk table, the last partial", .content = GC_TEXT,
	 .size = 5 * K4 + 1234, .seed = 5, .chunk_size = K4, .comp = RK_COMP_SNAPPY, .method = GM_WHOLE,
	 .key = "golden_aes256", .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST,
	 .counts = {{"golden_aes256", 6}, {NULL, 0}}, .chunk0_comp = RK_COMP_SNAPPY},
	{.name = "sparse.bin", .what = "a sparse file: 16 KiB chunks, data only in chunk 5, size 8 chunks",
	 .content = GC_SPARSE, .size = 8 * K16, .seed = 6, .data_off = 5 * K16 + 100, .data_len = 1000,
	 .chunk_size = K16, .comp = RK_COMP_SNAPPY, .method = GM_SPARSE, .key = "golden_aes256",
	 .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST, .counts = {{"golden_aes256", 1}, {NULL, 0}},
	 .chunk0_comp = -1},
	{.name = "compressible.txt", .what = "text that snappy compresses, 64 KiB chunks", .content = GC_TEXT,
	 .size = 200000, .seed = 7, .chunk_size = K64, .comp = RK_COMP_SNAPPY, .method = GM_WHOLE,
	 .key = "golden_aes256", .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST,
	 .counts = {{"golden_aes256", 4}, {NULL, 0}}, .chunk0_comp = RK_COMP_SNAPPY},
	{.name = "incompressible.bin", .what = "random bytes: snappy does not help, stored raw",
	 .content = GC_RANDOM, .size = 150000, .seed = 8, .chunk_size = K64, .comp = RK_COMP_SNAPPY,
	 .method = GM_WHOLE, .key = "golden_aes256", .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST,
	 .counts = {{"golden_aes256", 3}, {NULL, 0}}, .chunk0_comp = RK_COMP_NONE},
	{.name = "uncompressed-table.txt", .what = "text in a table with compression=none (stored raw)",
	 .content = GC_TEXT, .size = 70000, .seed = 9, .chunk_size = K64, .comp = RK_COMP_NONE, .method = GM_WHOLE,
	 .key = "golden_aes256", .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST,
	 .counts = {{"golden_aes256", 2}, {NULL, 0}}, .chunk0_comp = RK_COMP_NONE},
	{.name = "appended.txt", .what = "text appended in 10000-byte writes (partial chunk rewrites)",
	 .content = GC_TEXT, .size = 100000, .seed = 10, .chunk_size = K64, .comp = RK_COMP_SNAPPY,
	 .method = GM_APPEND, .append_step = 10000, .key = "golden_aes256", .rekey_chunks = NONE_LIST,
	 .rewrite_chunks = NONE_LIST, .counts = {{"golden_aes256", 2}, {NULL, 0}}, .chunk0_comp = RK_COMP_SNAPPY},
	{.name = "two-keys.txt",
	 .what = "16 KiB chunks under golden_aes256; chunk 1 rekeyed and chunk 3 rewritten under golden_chacha20",
	 .content = GC_TEXT, .size = 4 * K16 + 500, .seed = 11, .chunk_size = K16, .comp = RK_COMP_SNAPPY,
	 .method = GM_TWO_KEYS, .key = "golden_aes256", .key2 = "golden_chacha20", .rekey_chunks = {1, -1, -1, -1},
	 .rewrite_chunks = {3, -1, -1, -1},
	 .counts = {{"golden_aes256", 3}, {"golden_chacha20", 2}, {NULL, 0}}, .chunk0_comp = RK_COMP_SNAPPY},
	{.name = "chacha20.txt", .what = "text under the ChaCha20-Poly1305 key", .content = GC_TEXT,
	 .size = 100000, .seed = 12, .chunk_size = K64, .comp = RK_COMP_SNAPPY, .method = GM_WHOLE,
	 .key = "golden_chacha20", .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST,
	 .counts = {{"golden_chacha20", 2}, {NULL, 0}}, .chunk0_comp = RK_COMP_SNAPPY},
	{.name = "aes128.bin", .what = "random bytes under the AES-128 key, 4 KiB chunks", .content = GC_RANDOM,
	 .size = 5000, .seed = 13, .chunk_size = K4, .comp = RK_COMP_SNAPPY, .method = GM_WHOLE,
	 .key = "golden_aes128", .rekey_chunks = NONE_LIST, .rewrite_chunks = NONE_LIST,
	 .counts = {{"golden_aes128", 2}, {NULL, 0}}, .chunk0_comp = RK_COMP_NONE},
};
const size_t golden_nfiles = RK_ARRAY_SIZE(golden_files);

const struct golden_file *golden_file_find(const char *name)
{
	for (size_t i = 0; i < golden_nfiles; i++)
		if (strcmp(golden_files[i].name, name) == 0)
			return &golden_files[i];
	return NULL;
}

/* ---- plaintext ------------------------------------------------------------------------ */
static uint64_t xorshift64s(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static void random_fill(uint8_t *p, size_t len, uint32_t seed)
{
	uint64_t s = ((uint64_t)seed + 1) * 0x9E3779B97F4A7C15ULL;
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = xorshift64s(&s);
		for (size_t j = 0; j < 8 && i + j < len; j++)
			p[i + j] = (uint8_t)(v >> (8 * j));
	}
}

static void text_fill(uint8_t *p, size_t len, uint32_t seed)
{
	static const char *const words[] = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
	                                    "golf", "hotel", "india", "juliett", "kilo", "lima"};
	char row[96];
	size_t done = 0;
	for (uint32_t i = 0; done < len; i++) {
		uint32_t v = (uint32_t)((i * 2654435761u) ^ (seed * 40503u));
		int n = snprintf(row, sizeof(row), "row %06u value %010u %s %s\n", i, v, words[v % 12],
		                 words[(v >> 8) % 12]);
		size_t take = RK_MIN((size_t)n, len - done);
		memcpy(p + done, row, take);
		done += take;
	}
}

uint8_t *golden_plaintext(const struct golden_file *f)
{
	uint8_t *p = calloc(1, f->size ? (size_t)f->size : 1);
	if (!p)
		return NULL;
	switch (f->content) {
	case GC_TEXT:
		text_fill(p, (size_t)f->size, f->seed);
		break;
	case GC_RANDOM:
		random_fill(p, (size_t)f->size, f->seed);
		break;
	case GC_SPARSE:
		random_fill(p + f->data_off, (size_t)f->data_len, f->seed);
		break;
	}
	return p;
}

static bool in_list(const int64_t *l, uint64_t idx)
{
	for (int i = 0; i < GOLDEN_MAX_REWRITES && l[i] >= 0; i++)
		if ((uint64_t)l[i] == idx)
			return true;
	return false;
}

const char *golden_chunk_key(const struct golden_file *f, uint64_t idx)
{
	uint64_t cs = f->chunk_size, n = (f->size + cs - 1) / cs;
	if (idx >= n)
		return NULL;
	if (f->content == GC_SPARSE) {
		uint64_t s = idx * cs, e = s + cs;
		if (e <= f->data_off || s >= f->data_off + f->data_len)
			return NULL;
	}
	if (f->method == GM_TWO_KEYS && (in_list(f->rekey_chunks, idx) || in_list(f->rewrite_chunks, idx)))
		return f->key2;
	return f->key;
}

/* ---- writing ------------------------------------------------------------------------ */
static int mkdir_p1(const char *path, mode_t mode)
{
	if (mkdir(path, mode) == 0 || errno == EEXIST)
		return 0;
	int e = errno;
	fprintf(stderr, "golden: cannot create %s: %s\n", path, strerror(e));
	return -e;
}

int golden_write_keys(const char *keydir)
{
	char path[PATH_MAX], line[256];
	int ret = mkdir_p1(keydir, 0700);
	if (ret < 0)
		return ret;
	for (size_t i = 0; i < golden_nkeys; i++) {
		const struct golden_key *k = &golden_keys[i];
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", keydir, k->name) >= sizeof(path))
			return -ENAMETOOLONG;
		ret = golden_key_line(k, line, sizeof(line));
		if (ret < 0)
			return ret;
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0 || fchmod(fd, 0600) < 0 || rk_pwrite_full(fd, line, strlen(line), 0) < 0) {
			ret = -errno;
			fprintf(stderr, "golden: cannot write key file %s: %s\n", path, strerror(errno));
			if (fd >= 0)
				close(fd);
			return ret;
		}
		close(fd);
	}
	return 0;
}

static int write_fixture(const struct golden_file *f, const char *path, struct rk_keyring *kr, int version)
{
	struct rk_key *key = NULL, *key2 = NULL;
	struct rk_cf *cf = NULL;
	uint8_t *pt = NULL;
	int ret, fd;
	const char *step = "create";

	ret = rk_keyring_get(kr, f->key, &key);
	if (ret == 0 && f->key2)
		ret = rk_keyring_get(kr, f->key2, &key2);
	if (ret < 0) {
		fprintf(stderr, "golden: %s: cannot load key: %s\n", f->name, rk_strerror(ret));
		return ret;
	}
	pt = golden_plaintext(f);
	if (!pt)
		return -ENOMEM;
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) {
		ret = -errno;
		fprintf(stderr, "golden: cannot create %s: %s\n", path, strerror(errno));
		free(pt);
		return ret;
	}
	ret = rk_cf_create_version(fd, path, kr, f->chunk_size, f->comp, key, version, &cf);
	if (ret < 0)
		goto out;
	switch (f->method) {
	case GM_WHOLE:
	case GM_TWO_KEYS:
		step = "pwrite";
		if (f->size > 0) {
			ssize_t w = rk_cf_pwrite(cf, pt, (size_t)f->size, 0, key, f->comp);
			ret = w < 0 ? (int)w : (uint64_t)w != f->size ? -EIO : 0;
		}
		break;
	case GM_APPEND:
		step = "append";
		for (uint64_t off = 0; off < f->size && ret == 0; off += f->append_step) {
			size_t n = (size_t)RK_MIN((uint64_t)f->append_step, f->size - off);
			ssize_t w = rk_cf_pwrite(cf, pt + off, n, off, key, f->comp);
			ret = w < 0 ? (int)w : (size_t)w != n ? -EIO : 0;
		}
		break;
	case GM_SPARSE: {
		step = "sparse pwrite";
		ssize_t w = rk_cf_pwrite(cf, pt + f->data_off, (size_t)f->data_len, f->data_off, key, f->comp);
		ret = w < 0 ? (int)w : (uint64_t)w != f->data_len ? -EIO : 0;
		if (ret == 0) {
			step = "truncate";
			ret = rk_cf_truncate(cf, f->size, key, f->comp);
		}
		break;
	}
	}
	if (ret < 0)
		goto out;
	if (f->method == GM_TWO_KEYS) {
		/* a clean point under one key first, as a real rotation would find it */
		step = "sync";
		ret = rk_cf_sync(cf);
		for (int i = 0; ret == 0 && i < GOLDEN_MAX_REWRITES && f->rekey_chunks[i] >= 0; i++) {
			bool changed = false;
			step = "rekey_chunk";
			ret = rk_cf_rekey_chunk(cf, (uint64_t)f->rekey_chunks[i], key2, &changed);
			if (ret == 0 && !changed)
				ret = -EINVAL;
		}
		for (int i = 0; ret == 0 && i < GOLDEN_MAX_REWRITES && f->rewrite_chunks[i] >= 0; i++) {
			uint64_t idx = (uint64_t)f->rewrite_chunks[i], off = idx * f->chunk_size;
			uint32_t n = (uint32_t)RK_MIN((uint64_t)f->chunk_size, f->size - off);
			step = "write_chunk";
			ret = rk_cf_write_chunk(cf, idx, pt + off, n, key2, f->comp);
		}
		if (ret < 0)
			goto out;
	}
	step = "sync";
	ret = rk_cf_sync(cf);
out:
	if (ret < 0)
		fprintf(stderr, "golden: %s: %s failed: %s\n", f->name, step, rk_strerror(ret));
	rk_cf_close(cf);
	close(fd);
	free(pt);
	return ret;
}

const char *golden_subdir(int version)
{
	return version == 1 ? "files" : "files-v2";
}

/* One set: outdir/files (version 1, seed GOLDEN_SEED) or outdir/files-v2
 * (version 2, seed GOLDEN_SEED_V2). */
static int generate_set(const char *outdir, struct rk_keyring *kr, int version)
{
	char filedir[PATH_MAX], path[PATH_MAX];
	int ret;
	if ((size_t)snprintf(filedir, sizeof(filedir), "%s/%s", outdir, golden_subdir(version)) >= sizeof(filedir))
		return -ENAMETOOLONG;
	ret = mkdir_p1(filedir, 0755);
	if (ret < 0)
		return ret;
	rk_random_set_seed(version == 1 ? GOLDEN_SEED : GOLDEN_SEED_V2);
	for (size_t i = 0; i < golden_nfiles && ret == 0; i++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", filedir, golden_files[i].name) >= sizeof(path)) {
			ret = -ENAMETOOLONG;
			break;
		}
		ret = write_fixture(&golden_files[i], path, kr, version);
	}
	rk_random_set_seed(NULL);
	return ret;
}

int golden_generate(const char *outdir)
{
	char keydir[PATH_MAX];
	struct rk_keyring *kr = NULL;
	int ret;

	if ((size_t)snprintf(keydir, sizeof(keydir), "%s/keys", outdir) >= sizeof(keydir))
		return -ENAMETOOLONG;
	ret = mkdir_p1(outdir, 0755);
	if (ret == 0)
		ret = golden_write_keys(keydir);
	if (ret < 0)
		return ret;
	ret = rk_keyring_new(keydir, &kr);
	if (ret < 0)
		return ret;
	ret = generate_set(outdir, kr, 1);
	if (ret == 0)
		ret = generate_set(outdir, kr, 2);
	rk_keyring_free(kr);
	return ret;
}
