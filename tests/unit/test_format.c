/* rekeyfs unit tests - the chunk-file format: round trips, sparse files,
 * truncation, header counts, rekey, tamper detection, keys, versions,
 * crash leftovers. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/sweep.h"
#include "rekeyfs/compress.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"

#define KIB 1024u

/* the fixture: ka AES/GCM 256, kb ChaCha20/Poly1305 256, kc AES/GCM 128 */
static int setup(void **state)
{
	static const struct tu_fx_opts o = {.keys = tu_fx_keys, .nkeys = 3, .keyring = true};
	return tu_fx_setup(state, &o);
}

static int teardown(void **state) { return tu_fx_teardown(state); }

/* ---- helpers --------------------------------------------------------------------- */
struct file {
	char path[PATH_MAX];
	int fd;
	struct rk_cf *cf;
};

static void file_create(struct tu_fx *f, struct file *fl, const char *name, uint32_t cs, enum rk_comp comp,
                        struct rk_key *key)
{
	tu_path(fl->path, "%s/%s", f->dir, name);
	fl->fd = open(fl->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fl->fd >= 0);
	assert_int_equal(rk_cf_create(fl->fd, fl->path, f->kr, cs, comp, key, &fl->cf), 0);
	assert_non_null(fl->cf);
}

static int file_open_kr(struct rk_keyring *kr, struct file *fl, bool writable)
{
	fl->fd = open(fl->path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	assert_true(fl->fd >= 0);
	fl->cf = NULL;
	int ret = rk_cf_open(fl->fd, fl->path, kr, writable, &fl->cf);
	if (ret < 0) {
		assert_null(fl->cf);
		close(fl->fd);
		fl->fd = -1;
	}
	return ret;
}

static void file_open(struct tu_fx *f, struct file *fl, bool writable)
{
	int ret = file_open_kr(f->kr, fl, writable);
	if (ret != 0) {
		tu_log_dump();
		fail_msg("rk_cf_open(%s) = %d", fl->path, ret);
	}
}

/* Close without syncing (the in-memory state is simply forgotten). */
static void file_close(struct file *fl)
{
	rk_cf_close(fl->cf);
	fl->cf = NULL;
	if (fl->fd >= 0)
		close(fl->fd);
	fl->fd = -1;
}

static void file_sync_close(struct file *fl)
{
	assert_int_equal(rk_cf_sync(fl->cf), 0);
	file_close(fl);
}

static void file_reopen(struct tu_fx *f, struct file *fl, bool writable)
{
	file_sync_close(fl);
	file_open(f, fl, writable);
}

static int hdr_find(const struct rk_cf_header *h, const char *name)
{
	for (int j = 0; j < RK_CF_MAX_KEYS; j++)
		if (h->keys[j].in_use && strcmp(h->keys[j].name, name) == 0)
			return j;
	return -1;
}

/* Count of chunks under key name in the header, 0 if absent. */
static uint64_t hdr_count(const struct rk_cf_header *h, const char *name)
{
	int j = hdr_find(h, name);
	return j < 0 ? 0 : h->keys[j].count;
}

static uint64_t cf_count(struct rk_cf *cf, const char *name)
{
	struct rk_cf_header h;
	rk_cf_get_header(cf, &h);
	return hdr_count(&h, name);
}

static uint64_t disk_count(int fd, const char *path, const char *name, uint32_t *flags)
{
	struct rk_cf_header h;
	assert_int_equal(rk_cf_read_header(fd, path, &h, NULL), 0);
	if (flags)
		*flags = h.flags;
	return hdr_count(&h, name);
}

static void write_all(struct file *fl, const void *buf, size_t len, uint64_t off, struct rk_key *key, enum rk_comp comp)
{
	ssize_t n = rk_cf_pwrite(fl->cf, buf, len, off, key, comp);
	if (n != (ssize_t)len) {
		tu_log_dump();
		fail_msg("rk_cf_pwrite(%s, %zu at %" PRIu64 ") = %zd", fl->path, len, off, n);
	}
}

/* Compare the whole plaintext with want, in several read patterns. */
static void check_content(struct rk_cf *cf, const uint8_t *want, size_t len)
{
	uint32_t cs = rk_cf_chunk_size(cf);
	assert_int_equal(rk_cf_size(cf), len);
	uint8_t *buf = tu_malloc(len + 100);
	memset(buf, 0xEE, len + 100);
	ssize_t n = rk_cf_pread(cf, buf, len + 100, 0);
	if (n != (ssize_t)len) {
		tu_log_dump();
		fail_msg("pread of whole file: %zd, want %zu", n, len);
	}
	assert_memory_equal(buf, want, len);
	const size_t pieces[] = {4093, cs / 2 + 7, (size_t)cs + 3};
	for (size_t p = 0; p < RK_ARRAY_SIZE(pieces); p++) {
		memset(buf, 0xEE, len + 100);
		for (size_t off = 0; off < len;) {
			size_t k = RK_MIN(pieces[p], len - off);
			assert_int_equal(rk_cf_pread(cf, buf + off, pieces[p], off), (ssize_t)k);
			off += k;
		}
		assert_memory_equal(buf, want, len);
	}
	/* single bytes around every chunk boundary */
	for (uint64_t b = cs; b <= len + 1; b += cs) {
		for (uint64_t off = b - 1; off <= b; off++) {
			uint8_t c = 0xEE;
			ssize_t r = rk_cf_pread(cf, &c, 1, off);
			if (off < len) {
				assert_int_equal(r, 1);
				assert_int_equal(c, want[off]);
			} else {
				assert_int_equal(r, 0);
			}
		}
	}
	assert_int_equal(rk_cf_pread(cf, buf, 10, len), 0);
	assert_int_equal(rk_cf_pread(cf, buf, 10, len + 5), 0);
	if (len > 0)
		assert_int_equal(rk_cf_pread(cf, buf, 10, len - 1), 1);
	free(buf);
}

/* The 32-byte slot header of chunk idx, straight from the stored file. */
static void read_slot_hdr(int fd, uint32_t cs, uint64_t idx, uint8_t out[RK_SLOT_HDR])
{
	memset(out, 0, RK_SLOT_HDR);
	ssize_t n = rk_pread_full(fd, out, RK_SLOT_HDR, (off_t)rk_slot_off(cs + RK_SLOT_OVERHEAD, idx));
	assert_true(n >= 0);
}

static void fill(uint8_t *buf, size_t len, int kind, uint64_t seed)
{
	if (kind == 0)
		tu_fill_text(buf, len, seed);
	else
		tu_fill_random(buf, len, seed);
}

/* Rewrite both header copies' bytes [off, off+len) and recompute their
 * SHA-256 checksums (bytes 4064..4095 = SHA-256 of bytes 0..4063). */
static void patch_header_bytes(const char *path, int copy_mask, size_t off, const void *bytes, size_t len)
{
	uint8_t h[RK_HDR_COPY_SIZE];
	for (int c = 0; c < 2; c++) {
		if (!(copy_mask & (1 << c)))
			continue;
		tu_pread_path(path, h, sizeof(h), (off_t)c * RK_HDR_COPY_SIZE);
		memcpy(h + off, bytes, len);
		assert_int_equal(rk_sha256(h, 4064, h + 4064), 0);
		tu_pwrite_path(path, h, sizeof(h), (off_t)c * RK_HDR_COPY_SIZE);
	}
}

/* Write a decoded header, modified, as a newer generation into the copy
 * that is not current (what a crash between two header writes leaves). */
static void write_newer_header(const char *path, const struct rk_cf_header *h0, int which)
{
	uint8_t buf[RK_HDR_COPY_SIZE];
	struct rk_cf_header h = *h0;
	h.seq++;
	rk_hdr_encode(&h, buf);
	tu_pwrite_path(path, buf, sizeof(buf), (off_t)(1 - which) * RK_HDR_COPY_SIZE);
}

/* ---- round trips ------------------------------------------------------------------ */
static void roundtrip(struct tu_fx *f, uint32_t cs, enum rk_comp comp)
{
	const size_t sizes[] = {0, 1, cs - 1, cs, cs + 1, 3 * (size_t)cs + 17};
	for (int kind = 0; kind < 2; kind++) {
		for (size_t s = 0; s < RK_ARRAY_SIZE(sizes); s++) {
			size_t len = sizes[s];
			char name[64];
			struct file fl;
			uint8_t *data = tu_malloc(len);
			fill(data, len, kind, s + 1);
			snprintf(name, sizeof(name), "rt-%u-%d-%d-%zu", cs, (int)comp, kind, len);
			file_create(f, &fl, name, cs, comp, f->ka);
			if (len)
				write_all(&fl, data, len, 0, f->ka, comp);
			uint64_t nch = (len + cs - 1) / cs;
			assert_int_equal(rk_cf_nchunks(fl.cf), nch);
			assert_int_equal(cf_count(fl.cf, "ka"), nch);
			check_content(fl.cf, data, len);

			/* payload compression recorded in the slot header */
			if (len) {
				uint8_t sh[RK_SLOT_HDR];
				read_slot_hdr(fl.fd, cs, 0, sh);
				assert_memory_equal(sh, "RKC1", 4);
				assert_int_equal(sh[4], 0);
				bool expect_snappy = comp == RK_COMP_SNAPPY && kind == 0 && len >= 1024;
				assert_int_equal(sh[5], expect_snappy ? RK_COMP_SNAPPY : RK_COMP_NONE);
				assert_int_equal(rk_get32(sh + 8), RK_MIN(len, (size_t)cs));
				if (expect_snappy)
					assert_true(rk_get32(sh + 12) < rk_get32(sh + 8) / 2);
				else
					assert_int_equal(rk_get32(sh + 12), rk_get32(sh + 8));
				/* and the plaintext is not in the stored file */
				size_t slen;
				char *stored = tu_read_file(fl.path, &slen);
				assert_non_null(stored);
				if (len >= 64)
					assert_null(memmem(stored, slen, data, 64));
				free(stored);
			}

			/* reopen read-only and writable: same content */
			file_reopen(f, &fl, false);
			check_content(fl.cf, data, len);
			struct rk_cf_header h;
			rk_cf_get_header(fl.cf, &h);
			assert_int_equal(h.version, RK_FORMAT_VERSION);
			assert_int_equal(h.chunk_size, cs);
			assert_int_equal(h.slot_size, cs + RK_SLOT_OVERHEAD);
			assert_int_equal(h.size, len);
			assert_int_equal(h.compression, comp);
			assert_int_equal(h.flags & RK_HF_COUNTS_DIRTY, 0);
			assert_int_equal(hdr_count(&h, "ka"), nch);
			file_close(&fl);
			file_open(f, &fl, true);
			check_content(fl.cf, data, len);
			file_close(&fl);
			free(data);
		}
	}
}

static void test_roundtrip_4k_snappy(void **state) { roundtrip(*state, 4 * KIB, RK_COMP_SNAPPY); }
static void test_roundtrip_4k_none(void **state) { roundtrip(*state, 4 * KIB, RK_COMP_NONE); }
static void test_roundtrip_64k_snappy(void **state) { roundtrip(*state, 64 * KIB, RK_COMP_SNAPPY); }
static void test_roundtrip_64k_none(void **state) { roundtrip(*state, 64 * KIB, RK_COMP_NONE); }

static void test_roundtrip_ciphers_and_sizes(void **state)
{
	struct tu_fx *f = *state;
	/* every cipher, and the smallest, a middle and the largest chunk size */
	struct rk_key *keys[] = {f->ka, f->kb, f->kc};
	const uint32_t sizes[] = {RK_CHUNK_MIN, 128 * KIB, RK_CHUNK_MAX};
	for (size_t k = 0; k < RK_ARRAY_SIZE(keys); k++) {
		uint32_t cs = sizes[k];
		size_t len = 2 * (size_t)cs + 333;
		uint8_t *data = tu_malloc(len);
		fill(data, len, (int)(k % 2), k);
		char name[32];
		struct file fl;
		snprintf(name, sizeof(name), "cipher-%zu", k);
		file_create(f, &fl, name, cs, RK_COMP_SNAPPY, keys[k]);
		write_all(&fl, data, len, 0, keys[k], RK_COMP_SNAPPY);
		file_reopen(f, &fl, false);
		check_content(fl.cf, data, len);
		struct rk_cf_header h;
		rk_cf_get_header(fl.cf, &h);
		int j = hdr_find(&h, keys[k]->name);
		assert_true(j >= 0);
		assert_int_equal(h.keys[j].cipher, keys[k]->cipher);
		assert_int_equal(h.keys[j].bits, keys[k]->bits);
		assert_memory_equal(h.keys[j].fp, keys[k]->fp, RK_FP_BYTES);
		assert_int_equal(h.keys[j].count, 3);
		file_close(&fl);
		free(data);
	}
	/* invalid chunk sizes are refused */
	const uint32_t bad[] = {0, 1024, 3000, 4097, 6 * KIB, 2 * RK_CHUNK_MAX};
	for (size_t i = 0; i < RK_ARRAY_SIZE(bad); i++) {
		struct rk_cf *cf = NULL;
		char path[PATH_MAX];
		tu_path(path, "%s/bad", f->dir);
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		assert_true(fd >= 0);
		assert_int_equal(rk_cf_create(fd, path, f->kr, bad[i], RK_COMP_NONE, f->ka, &cf), -EINVAL);
		assert_null(cf);
		close(fd);
	}
}

/* Writing in small irregular pieces gives the same file as one write. */
static void test_piecewise_writes(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	size_t len = 5 * cs + 1234;
	uint8_t *data = tu_malloc(len);
	tu_fill_text(data, len, 9);
	struct file fl;
	file_create(f, &fl, "pieces", cs, RK_COMP_SNAPPY, f->ka);
	uint64_t st = 42;
	for (size_t off = 0; off < len;) {
		size_t want = (size_t)(tu_rand(&st) % 3000 + 1); /* RK_MIN evaluates twice */
		size_t n = RK_MIN(want, len - off);
		write_all(&fl, data + off, n, off, f->ka, RK_COMP_SNAPPY);
		off += n;
	}
	check_content(fl.cf, data, len);
	assert_int_equal(cf_count(fl.cf, "ka"), 6);
	file_reopen(f, &fl, true);
	check_content(fl.cf, data, len);
	file_close(&fl);
	free(data);
}

/* ---- arbitrary offsets against a model --------------------------------------------- */
static void test_random_ops_model(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const size_t maxlen = 12 * cs;
	uint8_t *model = tu_malloc(maxlen + 16 * KIB), *src = tu_malloc(16 * KIB);
	size_t size = 0;
	uint64_t st = 7;
	struct file fl;
	memset(model, 0, maxlen + 16 * KIB);
	file_create(f, &fl, "model", cs, RK_COMP_SNAPPY, f->ka);
	for (int op = 0; op < 400; op++) {
		uint64_t r = tu_rand(&st);
		switch (r % 8) {
		case 0: { /* truncate anywhere */
			size_t ns = (size_t)(tu_rand(&st) % (maxlen + 1));
			if (ns > size)
				memset(model + size, 0, ns - size);
			else
				memset(model + ns, 0, size - ns);
			assert_int_equal(rk_cf_truncate(fl.cf, ns, f->ka, RK_COMP_SNAPPY), 0);
			size = ns;
			break;
		}
		case 1: { /* append */
			size_t n = (size_t)(tu_rand(&st) % (2 * cs)) + 1;
			if (size + n > maxlen)
				break;
			fill(src, n, (int)(r >> 8) & 1, r);
			write_all(&fl, src, n, size, f->ka, RK_COMP_SNAPPY);
			memcpy(model + size, src, n);
			size += n;
			break;
		}
		default: { /* write at an arbitrary offset, maybe past the end (sparse) */
			size_t off = (size_t)(tu_rand(&st) % (maxlen - 1));
			size_t n = (size_t)(tu_rand(&st) % (3 * cs)) + 1;
			if (off + n > maxlen)
				n = maxlen - off;
			fill(src, n, (int)(r >> 8) & 1, r);
			write_all(&fl, src, n, off, f->ka, RK_COMP_SNAPPY);
			memcpy(model + off, src, n);
			if (off + n > size)
				size = off + n;
			break;
		}
		}
		assert_int_equal(rk_cf_size(fl.cf), size);
		if (op % 10 == 9) {
			uint8_t *buf = tu_malloc(size + 1);
			assert_int_equal(rk_cf_pread(fl.cf, buf, size + 1, 0), (ssize_t)size);
			if (memcmp(buf, model, size) != 0)
				fail_msg("content differs from the model after op %d", op);
			free(buf);
		}
		if (op % 50 == 49) {
			file_reopen(f, &fl, op % 100 == 99);
			if (op % 100 != 99)
				file_reopen(f, &fl, true);
			/* counts stay exact through all of it */
			uint64_t n = 0;
			for (uint64_t i = 0; i < rk_cf_nchunks(fl.cf); i++) {
				int k;
				assert_int_equal(rk_cf_chunk_keyidx(fl.cf, i, &k), 0);
				n += k >= 0;
			}
			assert_int_equal(cf_count(fl.cf, "ka"), n);
		}
	}
	check_content(fl.cf, model, size);
	file_sync_close(&fl);
	free(model);
	free(src);
}

static void test_overwrite_and_append(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	size_t len = 3 * cs;
	uint8_t *data = tu_malloc(len + cs), patch[100];
	tu_fill_random(data, len, 1);
	struct file fl;
	file_create(f, &fl, "ow", cs, RK_COMP_NONE, f->ka);
	write_all(&fl, data, len, 0, f->ka, RK_COMP_NONE);
	/* overwrite straddling the first chunk boundary */
	memset(patch, 'x', sizeof(patch));
	write_all(&fl, patch, sizeof(patch), cs - 50, f->ka, RK_COMP_NONE);
	memcpy(data + cs - 50, patch, sizeof(patch));
	/* overwrite one byte in the middle */
	write_all(&fl, "Z", 1, 2 * cs + 7, f->ka, RK_COMP_NONE);
	data[2 * cs + 7] = 'Z';
	check_content(fl.cf, data, len);
	/* append 1000 bytes, then 10 more */
	tu_fill_text(data + len, 1010, 2);
	write_all(&fl, data + len, 1000, len, f->ka, RK_COMP_NONE);
	write_all(&fl, data + len + 1000, 10, len + 1000, f->ka, RK_COMP_NONE);
	len += 1010;
	check_content(fl.cf, data, len);
	assert_int_equal(cf_count(fl.cf, "ka"), 4);
	file_reopen(f, &fl, false);
	check_content(fl.cf, data, len);
	file_close(&fl);
	free(data);
}

/* ---- sparse files ------------------------------------------------------------------- */
static void test_sparse(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 64 * KIB;
	uint8_t tail[100];
	tu_fill_random(tail, sizeof(tail), 3);
	struct file fl;
	file_create(f, &fl, "sparse", cs, RK_COMP_SNAPPY, f->ka);
	write_all(&fl, tail, sizeof(tail), 10 * (uint64_t)cs, f->ka, RK_COMP_SNAPPY);
	size_t size = 10 * (size_t)cs + sizeof(tail);
	uint8_t *want = calloc(1, size);
	assert_non_null(want);
	memcpy(want + 10 * (size_t)cs, tail, sizeof(tail));
	check_content(fl.cf, want, size);
	assert_int_equal(cf_count(fl.cf, "ka"), 1);
	for (uint64_t i = 0; i < 10; i++) {
		int k = 5;
		assert_int_equal(rk_cf_chunk_keyidx(fl.cf, i, &k), 0);
		assert_int_equal(k, -1);
		uint8_t *cb = tu_malloc(cs);
		memset(cb, 1, cs);
		assert_int_equal(rk_cf_read_chunk(fl.cf, i, cb, &k), 0);
		assert_int_equal(k, -1);
		assert_true(tu_all_zero(cb, cs));
		free(cb);
	}
	assert_int_equal(rk_cf_sync(fl.cf), 0);
	/* the stored file has holes: far less allocated than its length */
	struct stat st;
	assert_int_equal(fstat(fl.fd, &st), 0);
	assert_true((uint64_t)st.st_size > 10 * (uint64_t)cs);
	assert_true((uint64_t)st.st_blocks * 512 < (uint64_t)size / 8);
	file_reopen(f, &fl, false);
	check_content(fl.cf, want, size);
	file_close(&fl);
	free(want);
}

/* ---- truncation ------------------------------------------------------------------------ */
static void test_truncate(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	size_t len = 3 * cs + 17;
	uint8_t *data = tu_malloc(len), *want = calloc(1, len + cs);
	assert_non_null(want);
	tu_fill_text(data, len, 5);
	struct file fl;
	file_create(f, &fl, "trunc", cs, RK_COMP_SNAPPY, f->ka);
	write_all(&fl, data, len, 0, f->ka, RK_COMP_SNAPPY);

	/* down mid-chunk */
	size_t cut = cs + 100;
	assert_int_equal(rk_cf_truncate(fl.cf, cut, f->ka, RK_COMP_SNAPPY), 0);
	assert_int_equal(rk_cf_size(fl.cf), cut);
	check_content(fl.cf, data, cut);
	assert_int_equal(cf_count(fl.cf, "ka"), 2);
	assert_true((uint64_t)tu_file_size(fl.path) <= rk_slot_off(cs + RK_SLOT_OVERHEAD, 2));
	/* extend back with truncate: the cut bytes read as zeros, not the old data */
	assert_int_equal(rk_cf_truncate(fl.cf, len, f->ka, RK_COMP_SNAPPY), 0);
	memcpy(want, data, cut);
	check_content(fl.cf, want, len);
	file_reopen(f, &fl, true);
	check_content(fl.cf, want, len);
	assert_int_equal(cf_count(fl.cf, "ka"), 2);

	/* down again, then extend by writing past the end */
	cut = cs / 2;
	assert_int_equal(rk_cf_truncate(fl.cf, cut, f->ka, RK_COMP_SNAPPY), 0);
	memset(want + cut, 0, len - cut);
	write_all(&fl, "END", 3, 2 * cs + 5, f->ka, RK_COMP_SNAPPY);
	memcpy(want + 2 * cs + 5, "END", 3);
	check_content(fl.cf, want, 2 * cs + 8);
	assert_int_equal(cf_count(fl.cf, "ka"), 2); /* chunks 0 and 2; 1 is a hole */
	/* a write inside the partial last chunk past EOF: the gap is zeros */
	assert_int_equal(rk_cf_truncate(fl.cf, cs + 10, f->ka, RK_COMP_SNAPPY), 0);
	memset(want + cs + 10, 0, len - cs - 10);
	write_all(&fl, "xy", 2, cs + 20, f->ka, RK_COMP_SNAPPY);
	memcpy(want + cs + 20, "xy", 2);
	check_content(fl.cf, want, cs + 22);

	/* down to a chunk boundary */
	assert_int_equal(rk_cf_truncate(fl.cf, cs, f->ka, RK_COMP_SNAPPY), 0);
	check_content(fl.cf, want, cs);
	assert_int_equal(cf_count(fl.cf, "ka"), 1);
	assert_int_equal(rk_cf_truncate(fl.cf, 2 * cs, f->ka, RK_COMP_SNAPPY), 0);
	memset(want + cs, 0, cs);
	check_content(fl.cf, want, 2 * cs);

	/* to zero */
	assert_int_equal(rk_cf_truncate(fl.cf, 0, f->ka, RK_COMP_SNAPPY), 0);
	check_content(fl.cf, want, 0);
	assert_int_equal(cf_count(fl.cf, "ka"), 0);
	assert_int_equal(tu_file_size(fl.path), RK_HDR_AREA);
	file_reopen(f, &fl, true);
	assert_int_equal(rk_cf_size(fl.cf), 0);
	assert_int_equal(disk_count(fl.fd, fl.path, "ka", NULL), 0);
	/* and grow again from nothing */
	assert_int_equal(rk_cf_truncate(fl.cf, cs + 1, f->ka, RK_COMP_SNAPPY), 0);
	memset(want, 0, cs + 1);
	check_content(fl.cf, want, cs + 1);
	file_sync_close(&fl);
	free(data);
	free(want);
}

/* ---- compression saves disk ------------------------------------------------------------ */
static void test_compression_saves_disk(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 64 * KIB;
	const size_t len = 4 * KIB * KIB;
	uint8_t *data = tu_malloc(len);
	tu_fill_text(data, len, 11);
	struct file a, b;
	file_create(f, &a, "text-snappy", cs, RK_COMP_SNAPPY, f->ka);
	file_create(f, &b, "text-none", cs, RK_COMP_NONE, f->ka);
	for (size_t off = 0; off < len; off += cs) {
		write_all(&a, data + off, cs, off, f->ka, RK_COMP_SNAPPY);
		write_all(&b, data + off, cs, off, f->ka, RK_COMP_NONE);
	}
	assert_int_equal(rk_cf_sync(a.cf), 0);
	assert_int_equal(rk_cf_sync(b.cf), 0);
	uint64_t alloc_a = tu_file_alloc(a.fd), alloc_b = tu_file_alloc(b.fd);
	/* snappy: far fewer blocks than the plaintext; none: at least the plaintext */
	if (alloc_a >= len / 2)
		fail_msg("compressed file allocates %" PRIu64 " bytes for %zu of text", alloc_a, len);
	assert_true(alloc_b >= len);
	file_reopen(f, &a, false);
	check_content(a.cf, data, len);
	file_close(&a);
	file_close(&b);
	free(data);
}

/* ---- header counts ----------------------------------------------------------------------- */
static void test_header_counts(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const int nch = 8;
	size_t len = nch * (size_t)cs - 100;
	uint8_t *data = tu_malloc(len), *cb = tu_malloc(cs);
	tu_fill_text(data, len, 13);
	struct file fl;
	uint32_t flags;
	file_create(f, &fl, "counts", cs, RK_COMP_SNAPPY, f->ka);
	/* a new file's disk header already names its target key, counts dirty */
	assert_int_equal(disk_count(fl.fd, fl.path, "ka", &flags), 0);
	assert_true(flags & RK_HF_COUNTS_DIRTY);
	write_all(&fl, data, len, 0, f->ka, RK_COMP_SNAPPY);
	assert_int_equal(cf_count(fl.cf, "ka"), nch);
	assert_int_equal(cf_count(fl.cf, "kb"), 0);
	assert_int_equal(rk_cf_sync(fl.cf), 0);
	assert_int_equal(disk_count(fl.fd, fl.path, "ka", &flags), nch);
	assert_int_equal(flags & RK_HF_COUNTS_DIRTY, 0);

	/* rewrite chunks 1 and 3 under kb */
	for (int i = 1; i <= 3; i += 2) {
		assert_int_equal(rk_cf_write_chunk(fl.cf, (uint64_t)i, data + (size_t)i * cs, cs, f->kb, RK_COMP_SNAPPY), 0);
	}
	assert_int_equal(cf_count(fl.cf, "ka"), nch - 2);
	assert_int_equal(cf_count(fl.cf, "kb"), 2);
	/* before any sync, the disk header already names kb and is marked dirty
	 * (a crash now must not lose the fact that kb seals chunks) */
	struct rk_cf_header dh;
	assert_int_equal(rk_cf_read_header(fl.fd, fl.path, &dh, NULL), 0);
	assert_true(hdr_find(&dh, "kb") >= 0);
	assert_true(dh.flags & RK_HF_COUNTS_DIRTY);
	/* the slots record which entry sealed them */
	for (int i = 0; i < nch; i++) {
		int k;
		assert_int_equal(rk_cf_chunk_keyidx(fl.cf, (uint64_t)i, &k), 0);
		struct rk_cf_header h;
		rk_cf_get_header(fl.cf, &h);
		assert_string_equal(h.keys[k].name, (i == 1 || i == 3) ? "kb" : "ka");
		assert_int_equal(rk_cf_read_chunk(fl.cf, (uint64_t)i, cb, &k), 0);
		assert_string_equal(h.keys[k].name, (i == 1 || i == 3) ? "kb" : "ka");
	}
	/* rewriting under the same key leaves the counts alone */
	assert_int_equal(rk_cf_write_chunk(fl.cf, 1, data + cs, cs, f->kb, RK_COMP_SNAPPY), 0);
	assert_int_equal(cf_count(fl.cf, "kb"), 2);

	/* rekey everything under kb */
	int changed_n = 0;
	for (int i = 0; i < nch; i++) {
		bool changed;
		assert_int_equal(rk_cf_rekey_chunk(fl.cf, (uint64_t)i, f->kb, &changed), 0);
		assert_int_equal(changed, !(i == 1 || i == 3));
		changed_n += changed;
	}
	assert_int_equal(changed_n, nch - 2);
	assert_int_equal(cf_count(fl.cf, "ka"), 0);
	assert_int_equal(cf_count(fl.cf, "kb"), nch);
	/* past EOF nothing happens */
	bool changed = true;
	assert_int_equal(rk_cf_rekey_chunk(fl.cf, nch, f->ka, &changed), 0);
	assert_false(changed);
	/* one chunk back to ka, one to kc */
	assert_int_equal(rk_cf_rekey_chunk(fl.cf, 0, f->ka, &changed), 0);
	assert_true(changed);
	assert_int_equal(rk_cf_rekey_chunk(fl.cf, nch - 1, f->kc, &changed), 0);
	assert_true(changed);
	assert_int_equal(cf_count(fl.cf, "ka"), 1);
	assert_int_equal(cf_count(fl.cf, "kb"), nch - 2);
	assert_int_equal(cf_count(fl.cf, "kc"), 1);
	/* recount agrees */
	struct rk_cf_header before, after;
	rk_cf_get_header(fl.cf, &before);
	assert_int_equal(rk_cf_recount(fl.cf), 0);
	rk_cf_get_header(fl.cf, &after);
	for (int j = 0; j < RK_CF_MAX_KEYS; j++)
		assert_int_equal(before.keys[j].count, after.keys[j].count);
	check_content(fl.cf, data, len);

	/* sync, reopen: the disk header has them, COUNTS_DIRTY clear */
	file_sync_close(&fl);
	int fd = open(fl.path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_read_header(fd, fl.path, &dh, NULL), 0);
	assert_int_equal(dh.flags & RK_HF_COUNTS_DIRTY, 0);
	assert_int_equal(hdr_count(&dh, "ka"), 1);
	assert_int_equal(hdr_count(&dh, "kb"), nch - 2);
	assert_int_equal(hdr_count(&dh, "kc"), 1);
	close(fd);
	file_open(f, &fl, false);
	check_content(fl.cf, data, len);
	file_close(&fl);
	free(data);
	free(cb);
}

/* ---- rekey ---------------------------------------------------------------------------------- */
static void test_rekey_keeps_payload(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	size_t len = 4 * (size_t)cs + 500;
	uint8_t *data = tu_malloc(len);
	/* chunks 0,2,4 text (snappy), 1,3 random (raw) */
	for (int i = 0; i < 5; i++)
		fill(data + (size_t)i * cs, RK_MIN((size_t)cs, len - (size_t)i * cs), i & 1, (uint64_t)i);
	struct file fl;
	file_create(f, &fl, "rekey", cs, RK_COMP_SNAPPY, f->ka);
	write_all(&fl, data, len, 0, f->ka, RK_COMP_SNAPPY);
	assert_int_equal(rk_cf_sync(fl.cf), 0);
	uint8_t before[5][RK_SLOT_HDR], after[5][RK_SLOT_HDR];
	for (int i = 0; i < 5; i++)
		read_slot_hdr(fl.fd, cs, (uint64_t)i, before[i]);
	off_t size_before = tu_file_size(fl.path);
	for (int i = 0; i < 5; i++) {
		bool changed;
		assert_int_equal(rk_cf_rekey_chunk(fl.cf, (uint64_t)i, f->kb, &changed), 0);
		assert_true(changed);
	}
	struct rk_cf_header h;
	rk_cf_get_header(fl.cf, &h);
	int jb = hdr_find(&h, "kb");
	assert_true(jb > 0);
	for (int i = 0; i < 5; i++) {
		read_slot_hdr(fl.fd, cs, (uint64_t)i, after[i]);
		assert_int_equal(before[i][4], 0);
		assert_int_equal(after[i][4], jb);                       /* new key entry */
		assert_int_equal(after[i][5], before[i][5]);             /* same compression */
		assert_int_equal(after[i][5], (i & 1) ? RK_COMP_NONE : RK_COMP_SNAPPY);
		assert_memory_equal(after[i] + 8, before[i] + 8, 8);     /* same plain_len and stored_len */
		assert_memory_not_equal(after[i] + 16, before[i] + 16, RK_NONCE_BYTES); /* fresh nonce */
	}
	assert_int_equal(tu_file_size(fl.path), size_before);
	check_content(fl.cf, data, len);
	assert_int_equal(cf_count(fl.cf, "ka"), 0);
	assert_int_equal(cf_count(fl.cf, "kb"), 5);
	/* with ka released, everything still reads: nothing needs it */
	file_sync_close(&fl);
	assert_int_equal(rk_keyring_release(f->kr, "ka"), 0);
	file_open(f, &fl, false);
	check_content(fl.cf, data, len);
	file_close(&fl);
	free(data);
}

/* ---- tamper detection --------------------------------------------------------------------- */
/* A file of n chunks of random data, stored raw, synced; both header copies
 * valid and equal but for seq. */
static uint8_t *make_file(struct tu_fx *f, struct file *fl, const char *name, uint32_t cs, int n, enum rk_comp comp,
                          int kind)
{
	size_t len = (size_t)n * cs;
	uint8_t *data = tu_malloc(len);
	fill(data, len, kind, (uint64_t)n * 31 + cs);
	file_create(f, fl, name, cs, comp, f->ka);
	write_all(fl, data, len, 0, f->ka, comp);
	assert_int_equal(rk_cf_sync(fl->cf), 0);
	assert_int_equal(rk_cf_recount(fl->cf), 0);
	assert_int_equal(rk_cf_sync(fl->cf), 0);
	file_close(fl);
	return data;
}

static void expect_chunk_ok(struct rk_cf *cf, const uint8_t *data, uint64_t idx)
{
	uint32_t cs = rk_cf_chunk_size(cf);
	uint8_t *buf = tu_malloc(cs);
	ssize_t n = rk_cf_pread(cf, buf, cs, idx * cs);
	if (n != (ssize_t)cs) {
		tu_log_dump();
		fail_msg("chunk %" PRIu64 ": pread = %zd", idx, n);
	}
	assert_memory_equal(buf, data + idx * cs, cs);
	free(buf);
}

/* Reading chunk idx fails with EIO and a message naming file and chunk. */
static void expect_chunk_eio(struct rk_cf *cf, const char *path, uint64_t idx, const char *cause)
{
	uint32_t cs = rk_cf_chunk_size(cf);
	uint8_t *buf = tu_malloc(cs);
	char chunk[32];
	uint64_t ridx = UINT64_MAX;
	char rcause[RK_CF_CAUSE_MAX] = "";
	tu_log_clear();
	rk_cf_read_error_clear();
	assert_int_equal(rk_cf_read_error(&ridx, rcause, sizeof(rcause)), -ENOENT);
	ssize_t n = rk_cf_pread(cf, buf, cs, idx * cs);
	if (n != -EIO) {
		tu_log_dump();
		fail_msg("chunk %" PRIu64 " of %s: pread = %zd, expected -EIO", idx, path, n);
	}
	snprintf(chunk, sizeof(chunk), "chunk %" PRIu64, idx);
	if (cause)
		tu_assert_logged(path, chunk, cause);
	else
		tu_assert_logged(path, chunk);
	/* the thread's record (what the daemon lists in status) says the same */
	assert_int_equal(rk_cf_read_error(&ridx, rcause, sizeof(rcause)), 0);
	assert_int_equal(ridx, idx);
	if (cause && !strstr(rcause, cause))
		fail_msg("chunk %" PRIu64 " of %s: recorded cause '%s' lacks '%s'", idx, path, rcause, cause);
	assert_true(tu_log_find(path, chunk, rcause, (const char *)NULL) >= 0);
	/* also one byte in the middle of it */
	assert_int_equal(rk_cf_pread(cf, buf, 1, idx * cs + cs / 2), -EIO);
	int k;
	assert_int_equal(rk_cf_read_chunk(cf, idx, buf, &k), -EIO);
	free(buf);
}

static void test_header_copy_corruption(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "hdr", cs, 3, RK_COMP_NONE, 1);
	const size_t len = 3 * (size_t)cs;
	const off_t pos[] = {16, 24, 40, 44, 48, 56, 60, 64, 64 + 70, 64 + 80, 64 + 88, 64 + 96 + 5, 1000, 3000, 4063,
	                     4064, 4095};
	for (size_t p = 0; p < RK_ARRAY_SIZE(pos); p++) {
		for (int copy = 0; copy < 2; copy++) {
			tu_flip_bit(fl.path, (off_t)copy * RK_HDR_COPY_SIZE + pos[p], (int)(p % 8));
			file_open(f, &fl, false);
			check_content(fl.cf, data, len);
			struct rk_cf_header h;
			int which = -1;
			assert_int_equal(rk_cf_read_header(fl.fd, fl.path, &h, &which), 0);
			assert_int_equal(which, 1 - copy); /* the intact copy */
			assert_int_equal(hdr_count(&h, "ka"), 3);
			file_close(&fl);
			tu_flip_bit(fl.path, (off_t)copy * RK_HDR_COPY_SIZE + pos[p], (int)(p % 8));
		}
		/* both copies: refused with a message naming the file */
		tu_flip_bit(fl.path, pos[p], (int)(p % 8));
		tu_flip_bit(fl.path, RK_HDR_COPY_SIZE + pos[p], (int)((p + 3) % 8));
		tu_log_clear();
		assert_int_equal(file_open_kr(f->kr, &fl, false), -EUCLEAN);
		tu_assert_logged(fl.path, "header");
		assert_int_equal(file_open_kr(f->kr, &fl, true), -EUCLEAN);
		struct rk_cf_header h;
		int fd = open(fl.path, O_RDONLY);
		assert_int_equal(rk_cf_read_header(fd, fl.path, &h, NULL), -EUCLEAN);
		close(fd);
		tu_flip_bit(fl.path, pos[p], (int)(p % 8));
		tu_flip_bit(fl.path, RK_HDR_COPY_SIZE + pos[p], (int)((p + 3) % 8));
	}
	/* restored: fine again */
	file_open(f, &fl, true);
	check_content(fl.cf, data, len);
	file_close(&fl);
	free(data);
}

/* Every single-bit flip in an encoded header copy is detected. */
static void test_header_encode_decode(void **state)
{
	(void)state;
	struct rk_cf_header h, d;
	uint8_t buf[RK_HDR_COPY_SIZE];
	memset(&h, 0, sizeof(h));
	h.version = RK_FORMAT_V1; /* the v1 layout (v2's wrap table: test_wrap.c) */
	h.flags = RK_HF_COUNTS_DIRTY;
	h.seq = 0x0102030405060708ull;
	tu_fill_random(h.file_id, RK_FILE_ID_BYTES, 1);
	h.chunk_size = 64 * KIB;
	h.slot_size = 64 * KIB + RK_SLOT_OVERHEAD;
	h.size = 123456789;
	h.compression = RK_COMP_SNAPPY;
	for (int j = 0; j < RK_CF_MAX_KEYS; j += 5) {
		h.keys[j].in_use = true;
		snprintf(h.keys[j].name, sizeof(h.keys[j].name), "key-%d-%s", j,
		         "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz0123");
		tu_fill_random(h.keys[j].fp, RK_FP_BYTES, (uint64_t)j);
		h.keys[j].cipher = j % 2 ? RK_CIPHER_CHACHA20_POLY1305 : RK_CIPHER_AES_GCM;
		h.keys[j].bits = 256;
		h.keys[j].count = 1000u + (uint64_t)j;
	}
	rk_hdr_encode(&h, buf);
	/* the documented layout */
	assert_memory_equal(buf, rk_magic, RK_MAGIC_LEN);
	assert_int_equal(rk_get16(buf + 8), 1);
	assert_int_equal(rk_get16(buf + 10), 4096);
	assert_int_equal(rk_get32(buf + 12), RK_HF_COUNTS_DIRTY);
	assert_int_equal(rk_get64(buf + 16), h.seq);
	assert_memory_equal(buf + 24, h.file_id, 16);
	assert_int_equal(rk_get32(buf + 40), 64 * KIB);
	assert_int_equal(rk_get32(buf + 44), 64 * KIB + 64);
	assert_int_equal(rk_get64(buf + 48), 123456789);
	assert_int_equal(buf[56], 1);
	const uint8_t *e5 = buf + 64 + 96 * 5;
	assert_string_equal((const char *)e5, h.keys[5].name);
	assert_memory_equal(e5 + 64, h.keys[5].fp, 16);
	assert_int_equal(e5[80], RK_CIPHER_CHACHA20_POLY1305);
	assert_int_equal(e5[81], 1);
	assert_int_equal(rk_get16(e5 + 82), 256);
	assert_int_equal(rk_get64(e5 + 88), 1005);
	uint8_t sum[32];
	rk_sha256(buf, 4064, sum);
	assert_memory_equal(buf + 4064, sum, 32);
	assert_true(tu_all_zero(buf + 1600, 4064 - 1600));

	assert_int_equal(rk_hdr_decode(buf, &d), 0);
	assert_int_equal(d.version, h.version);
	assert_int_equal(d.flags, h.flags);
	assert_int_equal(d.seq, h.seq);
	assert_memory_equal(d.file_id, h.file_id, 16);
	assert_int_equal(d.chunk_size, h.chunk_size);
	assert_int_equal(d.slot_size, h.slot_size);
	assert_int_equal(d.size, h.size);
	assert_int_equal(d.compression, h.compression);
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		assert_int_equal(d.keys[j].in_use, h.keys[j].in_use);
		if (!h.keys[j].in_use)
			continue;
		assert_string_equal(d.keys[j].name, h.keys[j].name);
		assert_memory_equal(d.keys[j].fp, h.keys[j].fp, RK_FP_BYTES);
		assert_int_equal(d.keys[j].cipher, h.keys[j].cipher);
		assert_int_equal(d.keys[j].bits, h.keys[j].bits);
		assert_int_equal(d.keys[j].count, h.keys[j].count);
	}
	for (size_t i = 0; i < RK_HDR_COPY_SIZE; i++) {
		int bit = (int)(i % 8);
		buf[i] ^= (uint8_t)(1 << bit);
		int r = rk_hdr_decode(buf, &d);
		if (i < RK_MAGIC_LEN)
			assert_int_equal(r, -ENOMSG);
		else if (i == 8)
			assert_int_equal(r, -EUCLEAN); /* version 0: no such version, damage */
		else if (i == 9)
			assert_int_equal(r, -EPROTONOSUPPORT);
		else if (r != -EUCLEAN)
			fail_msg("flip of bit %d at byte %zu: decode = %d", bit, i, r);
		buf[i] ^= (uint8_t)(1 << bit);
	}
	assert_int_equal(rk_hdr_decode(buf, &d), 0);
	/* inconsistent fields with a valid checksum are refused too */
	struct rk_cf_header bad = h;
	bad.slot_size = bad.chunk_size + 32;
	rk_hdr_encode(&bad, buf);
	assert_int_equal(rk_hdr_decode(buf, &d), -EUCLEAN);
	bad = h;
	bad.chunk_size = 3000;
	bad.slot_size = 3064;
	rk_hdr_encode(&bad, buf);
	assert_int_equal(rk_hdr_decode(buf, &d), -EUCLEAN);
	bad = h;
	bad.keys[0].cipher = (enum rk_cipher)9;
	rk_hdr_encode(&bad, buf);
	assert_int_equal(rk_hdr_decode(buf, &d), -EUCLEAN);
}

static void test_chunk_bitflips(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const uint32_t ss = cs + RK_SLOT_OVERHEAD;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "flip", cs, 4, RK_COMP_NONE, 1);
	file_open(f, &fl, false);
	for (int i = 0; i < 4; i++)
		expect_chunk_ok(fl.cf, data, (uint64_t)i);
	off_t slot2 = (off_t)rk_slot_off(ss, 2);
	/* ciphertext */
	tu_flip_bit(fl.path, slot2 + RK_SLOT_HDR + 100, 3);
	expect_chunk_eio(fl.cf, fl.path, 2, "authentication failed");
	/* the other chunks are fine */
	expect_chunk_ok(fl.cf, data, 0);
	expect_chunk_ok(fl.cf, data, 1);
	expect_chunk_ok(fl.cf, data, 3);
	/* a read spanning the bad chunk fails as a whole: never a short read, which
	 * a caller (the kernel) would complete with zeros */
	uint8_t *buf = tu_malloc(3 * cs);
	assert_int_equal(rk_cf_pread(fl.cf, buf, 3 * cs, cs), -EIO);
	assert_int_equal(rk_cf_pread(fl.cf, buf, cs, cs), (ssize_t)cs);
	assert_memory_equal(buf, data + cs, cs);
	assert_int_equal(rk_cf_pread(fl.cf, buf, 3 * cs, 2 * cs + 5), -EIO);
	free(buf);
	tu_flip_bit(fl.path, slot2 + RK_SLOT_HDR + 100, 3);
	expect_chunk_ok(fl.cf, data, 2);

	/* every bit of the authenticated slot header and nonce, and samples of
	 * ciphertext and tag */
	for (off_t o = 0; o < RK_SLOT_HDR + cs + RK_TAG_BYTES; o++) {
		if (o >= 28 && o < RK_SLOT_HDR) /* reserved, outside the AAD */
			continue;
		if (o >= RK_SLOT_HDR && o < RK_SLOT_HDR + cs && o % 509 != 0)
			continue;
		for (int bit = 0; bit < 8; bit++) {
			if (o >= RK_SLOT_HDR && bit != (int)(o % 8))
				continue;
			tu_flip_bit(fl.path, slot2 + o, bit);
			expect_chunk_eio(fl.cf, fl.path, 2, NULL);
			tu_flip_bit(fl.path, slot2 + o, bit);
		}
	}
	expect_chunk_ok(fl.cf, data, 2);
	file_close(&fl);
	free(data);
}

static void test_snappy_chunk_bitflips(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const uint32_t ss = cs + RK_SLOT_OVERHEAD;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "flip-snappy", cs, 3, RK_COMP_SNAPPY, 0);
	file_open(f, &fl, false);
	uint8_t sh[RK_SLOT_HDR];
	read_slot_hdr(fl.fd, cs, 1, sh);
	assert_int_equal(sh[5], RK_COMP_SNAPPY);
	uint32_t stored = rk_get32(sh + 12);
	off_t slot1 = (off_t)rk_slot_off(ss, 1);
	for (off_t o = 0; o < RK_SLOT_HDR + stored + RK_TAG_BYTES; o += 3) {
		if (o >= 28 && o < RK_SLOT_HDR)
			continue;
		tu_flip_bit(fl.path, slot1 + o, (int)(o % 8));
		expect_chunk_eio(fl.cf, fl.path, 1, NULL);
		tu_flip_bit(fl.path, slot1 + o, (int)(o % 8));
	}
	expect_chunk_ok(fl.cf, data, 0);
	expect_chunk_ok(fl.cf, data, 1);
	expect_chunk_ok(fl.cf, data, 2);
	file_close(&fl);
	free(data);
}

static void test_swapped_slots(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const uint32_t ss = cs + RK_SLOT_OVERHEAD;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "swap", cs, 4, RK_COMP_NONE, 1);
	uint8_t *s1 = tu_malloc(ss), *s2 = tu_malloc(ss);
	tu_pread_path(fl.path, s1, ss, (off_t)rk_slot_off(ss, 1));
	tu_pread_path(fl.path, s2, ss, (off_t)rk_slot_off(ss, 2));
	tu_pwrite_path(fl.path, s2, ss, (off_t)rk_slot_off(ss, 1));
	tu_pwrite_path(fl.path, s1, ss, (off_t)rk_slot_off(ss, 2));
	file_open(f, &fl, false);
	expect_chunk_eio(fl.cf, fl.path, 1, "authentication failed");
	expect_chunk_eio(fl.cf, fl.path, 2, "authentication failed");
	expect_chunk_ok(fl.cf, data, 0);
	expect_chunk_ok(fl.cf, data, 3);
	file_close(&fl);
	/* a duplicated slot (chunk 0 copied over chunk 3) fails as well */
	tu_pread_path(fl.path, s1, ss, (off_t)rk_slot_off(ss, 0));
	tu_pwrite_path(fl.path, s1, ss, (off_t)rk_slot_off(ss, 3));
	file_open(f, &fl, false);
	expect_chunk_eio(fl.cf, fl.path, 3, NULL);
	expect_chunk_ok(fl.cf, data, 0);
	file_close(&fl);
	free(s1);
	free(s2);
	free(data);
}

static void test_slot_from_other_file(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const uint32_t ss = cs + RK_SLOT_OVERHEAD;
	struct file x, y;
	uint8_t *dx = make_file(f, &x, "x", cs, 3, RK_COMP_NONE, 1);
	uint8_t *dy = make_file(f, &y, "y", cs, 3, RK_COMP_SNAPPY, 0);
	uint8_t *s = tu_malloc(ss);
	tu_pread_path(y.path, s, ss, (off_t)rk_slot_off(ss, 1));
	tu_pwrite_path(x.path, s, ss, (off_t)rk_slot_off(ss, 1));
	file_open(f, &x, false);
	expect_chunk_eio(x.cf, x.path, 1, "authentication failed");
	expect_chunk_ok(x.cf, dx, 0);
	expect_chunk_ok(x.cf, dx, 2);
	file_close(&x);
	/* y itself is untouched */
	file_open(f, &y, false);
	check_content(y.cf, dy, 3 * (size_t)cs);
	file_close(&y);
	free(s);
	free(dx);
	free(dy);
}

static void test_slot_key_index(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const uint32_t ss = cs + RK_SLOT_OVERHEAD;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "keyidx", cs, 3, RK_COMP_NONE, 1);
	/* chunk 1 under kb: entry 1 */
	file_open(f, &fl, true);
	assert_int_equal(rk_cf_write_chunk(fl.cf, 1, data + cs, cs, f->kb, RK_COMP_NONE), 0);
	file_sync_close(&fl);
	uint8_t b;
	off_t kpos0 = (off_t)rk_slot_off(ss, 0) + 4;
	tu_pread_path(fl.path, &b, 1, kpos0);
	assert_int_equal(b, 0);
	tu_pread_path(fl.path, &b, 1, (off_t)rk_slot_off(ss, 1) + 4);
	assert_int_equal(b, 1);
	const uint8_t bad[] = {1, 2, 15, 16, 200};
	for (size_t i = 0; i < RK_ARRAY_SIZE(bad); i++) {
		tu_pwrite_path(fl.path, &bad[i], 1, kpos0);
		file_open(f, &fl, false);
		expect_chunk_eio(fl.cf, fl.path, 0, NULL);
		expect_chunk_ok(fl.cf, data, 1);
		expect_chunk_ok(fl.cf, data, 2);
		file_close(&fl);
	}
	b = 0;
	tu_pwrite_path(fl.path, &b, 1, kpos0);

	/* Entry 2 := a duplicate of entry 0 (same key).  Pointing the slot at it
	 * keeps key and subkey identical: only the AAD (slot header) catches it. */
	uint8_t ent[RK_HDR_KEY_ENTRY], went[RK_HDR_WRAP_ENTRY];
	tu_pread_path(fl.path, ent, sizeof(ent), RK_HDR_KEYS_OFF);
	tu_pread_path(fl.path, went, sizeof(went), RK_HDR_WRAP_OFF);
	patch_header_bytes(fl.path, 3, RK_HDR_KEYS_OFF + 2 * RK_HDR_KEY_ENTRY, ent, sizeof(ent));
	/* format v2: the wrapped data key too (its AAD binds entry 0) */
	patch_header_bytes(fl.path, 3, RK_HDR_WRAP_OFF + 2 * RK_HDR_WRAP_ENTRY, went, sizeof(went));
	file_open(f, &fl, false);
	expect_chunk_ok(fl.cf, data, 0);
	file_close(&fl);
	b = 2;
	tu_pwrite_path(fl.path, &b, 1, kpos0);
	file_open(f, &fl, false);
	/* v2: the copied DEK does not even open as entry 2's */
	expect_chunk_eio(fl.cf, fl.path, 0, "does not authenticate");
	expect_chunk_ok(fl.cf, data, 2);
	file_close(&fl);
	/* likewise the reserved header bytes 6..7 are authenticated */
	b = 0;
	tu_pwrite_path(fl.path, &b, 1, kpos0);
	b = 0x80;
	tu_pwrite_path(fl.path, &b, 1, (off_t)rk_slot_off(ss, 0) + 6);
	file_open(f, &fl, false);
	expect_chunk_eio(fl.cf, fl.path, 0, NULL);
	file_close(&fl);
	free(data);
}

static void test_truncated_stored_file(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const uint32_t ss = cs + RK_SLOT_OVERHEAD;
	const off_t cuts[] = {RK_SLOT_HDR + 100, RK_SLOT_HDR + cs + RK_TAG_BYTES - 1, RK_SLOT_HDR + cs, 20, 4};
	for (size_t c = 0; c < RK_ARRAY_SIZE(cuts); c++) {
		struct file fl;
		char name[32];
		snprintf(name, sizeof(name), "cut%zu", c);
		uint8_t *data = make_file(f, &fl, name, cs, 3, RK_COMP_NONE, 1);
		assert_int_equal(truncate(fl.path, (off_t)rk_slot_off(ss, 2) + cuts[c]), 0);
		for (int w = 0; w < 2; w++) {
			file_open(f, &fl, w == 1);
			assert_int_equal(rk_cf_size(fl.cf), 3 * (size_t)cs);
			expect_chunk_eio(fl.cf, fl.path, 2, "truncated");
			expect_chunk_ok(fl.cf, data, 0);
			expect_chunk_ok(fl.cf, data, 1);
			/* a whole-file read fails (never a short read); the good prefix reads */
			uint8_t *buf = tu_malloc(3 * cs);
			assert_int_equal(rk_cf_pread(fl.cf, buf, 3 * cs, 0), -EIO);
			assert_int_equal(rk_cf_pread(fl.cf, buf, 2 * cs, 0), (ssize_t)(2 * cs));
			assert_memory_equal(buf, data, 2 * cs);
			free(buf);
			file_close(&fl);
		}
		/* a file truncated inside the header area */
		assert_int_equal(truncate(fl.path, RK_HDR_COPY_SIZE + 100), 0);
		int r = file_open_kr(f->kr, &fl, false);
		if (r == 0) {
			/* the older copy A alone is valid and its clean counts name
			 * chunks whose slots are gone: they fail, never read as zeros */
			uint8_t *buf = tu_malloc(3 * cs);
			ssize_t n = rk_cf_pread(fl.cf, buf, 3 * cs, 0);
			assert_int_equal(n, -EIO);
			free(buf);
			file_close(&fl);
		} else {
			assert_int_equal(r, -EUCLEAN);
		}
		free(data);
	}
}

/* ---- keys ------------------------------------------------------------------------------- */
static void test_wrong_key_content(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "kw");
	struct rk_key *kw;
	assert_int_equal(rk_keyring_get(f->kr, "kw", &kw), 0);
	size_t len = 2 * (size_t)cs;
	uint8_t *data = tu_malloc(len);
	tu_fill_text(data, len, 1);
	file_create(f, &fl, "wk", cs, RK_COMP_SNAPPY, kw);
	write_all(&fl, data, len, 0, kw, RK_COMP_SNAPPY);
	file_sync_close(&fl);

	/* the key file is replaced by another key of the same name */
	char kp[PATH_MAX], saved[PATH_MAX];
	tu_path(kp, "%s/kw", f->keydir);
	tu_path(saved, "%s/kw.saved", f->dir);
	assert_int_equal(rename(kp, saved), 0);
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "kw");
	struct rk_keyring *kr2;
	assert_int_equal(rk_keyring_new(f->keydir, &kr2), 0);
	assert_int_equal(file_open_kr(kr2, &fl, false), 0);
	expect_chunk_eio(fl.cf, fl.path, 0, "fingerprint");
	tu_assert_logged(fl.path, "kw", "different content");
	expect_chunk_eio(fl.cf, fl.path, 1, "fingerprint");
	file_close(&fl);
	rk_keyring_free(kr2);

	/* the original key file back: readable again */
	assert_int_equal(unlink(kp), 0);
	assert_int_equal(rename(saved, kp), 0);
	assert_int_equal(rk_keyring_new(f->keydir, &kr2), 0);
	assert_int_equal(file_open_kr(kr2, &fl, false), 0);
	check_content(fl.cf, data, len);
	file_close(&fl);
	rk_keyring_free(kr2);
	free(data);
}

static void test_missing_key(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "mk", cs, 2, RK_COMP_NONE, 1);
	char other[PATH_MAX];
	tu_path(other, "%s/otherkeys", f->dir);
	tu_key_create(other, "AES/GCM/NoPadding", 256, "kb");
	struct rk_keyring *kr2;
	assert_int_equal(rk_keyring_new(other, &kr2), 0);
	assert_int_equal(file_open_kr(kr2, &fl, false), 0);
	expect_chunk_eio(fl.cf, fl.path, 0, "not in the key directory");
	tu_assert_logged(fl.path, "'ka'", "not in the key directory");
	expect_chunk_eio(fl.cf, fl.path, 1, "not in the key directory");
	/* the header can still be read without any key */
	struct rk_cf_header h;
	assert_int_equal(rk_cf_read_header(fl.fd, fl.path, &h, NULL), 0);
	assert_int_equal(hdr_count(&h, "ka"), 2);
	int k;
	assert_int_equal(rk_cf_chunk_keyidx(fl.cf, 1, &k), 0);
	assert_int_equal(k, 0);
	file_close(&fl);
	rk_keyring_free(kr2);
	free(data);
}

static void test_released_key(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "rel", cs, 3, RK_COMP_NONE, 1);
	file_open(f, &fl, true);
	/* chunk 2 under kb, so one chunk survives the release */
	assert_int_equal(rk_cf_rekey_chunk(fl.cf, 2, f->kb, &(bool){false}), 0);
	check_content(fl.cf, data, 3 * (size_t)cs); /* subkeys derived and cached */
	assert_int_equal(rk_keyring_release(f->kr, "ka"), 0);
	assert_true(f->ka->released);
	for (size_t i = 0; i < f->ka->keylen; i++)
		assert_int_equal(f->ka->material[i], 0);
	expect_chunk_eio(fl.cf, fl.path, 0, "released");
	tu_assert_logged(fl.path, "'ka'", "released");
	expect_chunk_ok(fl.cf, data, 2);
	/* no new chunk can be sealed under it */
	tu_log_clear();
	assert_true(rk_cf_write_chunk(fl.cf, 1, data, cs, f->ka, RK_COMP_NONE) < 0);
	tu_assert_logged("ka", "released");
	assert_int_equal(rk_cf_pwrite(fl.cf, data, 10, 3 * cs, f->ka, RK_COMP_NONE), -EKEYREVOKED);
	/* rekeying a chunk away from a released key cannot read it */
	bool changed = true;
	assert_true(rk_cf_rekey_chunk(fl.cf, 1, f->kb, &changed) < 0);
	assert_false(changed);
	file_sync_close(&fl);
	/* a fresh open says the same, also after its cached subkeys are dropped */
	file_open(f, &fl, false);
	expect_chunk_eio(fl.cf, fl.path, 1, "released");
	rk_cf_forget_key(fl.cf, "ka");
	expect_chunk_eio(fl.cf, fl.path, 0, "released");
	expect_chunk_ok(fl.cf, data, 2);
	file_close(&fl);
	free(data);
}

/* ---- versions and probing ------------------------------------------------------------------ */
static void test_unknown_version(void **state)
{
	struct tu_fx *f = *state;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "v3", 4 * KIB, 2, RK_COMP_NONE, 1);
	uint8_t v[2];
	rk_put16(v, 3);
	patch_header_bytes(fl.path, 3, 8, v, 2);
	tu_log_clear();
	assert_int_equal(file_open_kr(f->kr, &fl, false), -EPROTONOSUPPORT);
	tu_assert_logged(fl.path, "version 3");
	assert_int_equal(file_open_kr(f->kr, &fl, true), -EPROTONOSUPPORT);
	int fd = open(fl.path, O_RDONLY);
	struct rk_cf_header h;
	assert_int_equal(rk_cf_read_header(fd, fl.path, &h, NULL), -EPROTONOSUPPORT);
	/* still recognised as a chunk file, not passed through as plain data */
	assert_int_equal(rk_cf_probe(fd), 1);
	close(fd);
	/* its own version (2) back: fine */
	rk_put16(v, RK_FORMAT_VERSION);
	patch_header_bytes(fl.path, 3, 8, v, 2);
	file_open(f, &fl, false);
	check_content(fl.cf, data, 2 * 4 * KIB);
	file_close(&fl);
	/* a large version number is stated as is */
	rk_put16(v, 513);
	patch_header_bytes(fl.path, 3, 8, v, 2);
	tu_log_clear();
	assert_int_equal(file_open_kr(f->kr, &fl, false), -EPROTONOSUPPORT);
	tu_assert_logged("version 513");
	free(data);
}

static void test_probe(void **state)
{
	struct tu_fx *f = *state;
	char path[PATH_MAX];
	struct {
		const char *name;
		const char *content;
		size_t len;
	} plain[] = {
		{"text", "hello world, this is a plain text file\n", 39},
		{"empty", "", 0},
		{"three", "abc", 3},
		{"magic3", "\x89RK", 3},
		{"magic7", "\x89RKFS\r\n", 7},
		{"magic7+", "\x89RKFS\r\n\x1b and then plain text that goes on for a while", 50},
	};
	for (size_t i = 0; i < RK_ARRAY_SIZE(plain); i++) {
		tu_path(path, "%s/%s", f->dir, plain[i].name);
		tu_write_file(path, plain[i].content, plain[i].len, 0644);
		int fd = open(path, O_RDONLY);
		assert_true(fd >= 0);
		assert_int_equal(rk_cf_probe(fd), 0);
		struct rk_cf *cf = NULL;
		assert_int_equal(rk_cf_open(fd, path, f->kr, false, &cf), -ENOMSG);
		assert_null(cf);
		close(fd);
	}
	/* a large plain file */
	uint8_t *big = tu_malloc(3 * RK_HDR_COPY_SIZE);
	tu_fill_random(big, 3 * RK_HDR_COPY_SIZE, 1);
	big[0] = 'x';
	tu_path(path, "%s/big", f->dir);
	tu_write_file(path, big, 3 * RK_HDR_COPY_SIZE, 0644);
	int fd = open(path, O_RDONLY);
	assert_int_equal(rk_cf_probe(fd), 0);
	close(fd);
	free(big);

	struct file fl;
	uint8_t *data = make_file(f, &fl, "cf", 4 * KIB, 1, RK_COMP_NONE, 1);
	fd = open(fl.path, O_RDONLY);
	assert_int_equal(rk_cf_probe(fd), 1);
	close(fd);
	/* an empty chunk file (header only) */
	struct file e;
	file_create(f, &e, "cf-empty", 4 * KIB, RK_COMP_NONE, f->ka);
	assert_int_equal(rk_cf_probe(e.fd), 1);
	file_close(&e);
	/* a bit flipped in copy A's magic: still a chunk file (copy B says so),
	 * never passed through as plain data */
	for (int bit = 0; bit < 64; bit += 7) {
		tu_flip_bit(fl.path, bit / 8, bit % 8);
		fd = open(fl.path, O_RDONLY);
		assert_int_equal(rk_cf_probe(fd), 1);
		close(fd);
		file_open(f, &fl, false);
		check_content(fl.cf, data, 4 * KIB);
		file_close(&fl);
		tu_flip_bit(fl.path, bit / 8, bit % 8);
	}
	/* a file whose copy B verifies is a chunk file whatever copy A holds
	 * (one rule: a verifying header copy is never plain data) */
	{
		uint8_t *img = tu_malloc(2 * RK_HDR_COPY_SIZE);
		tu_pread_path(fl.path, img + RK_HDR_COPY_SIZE, RK_HDR_COPY_SIZE, 0);
		tu_fill_text(img, RK_HDR_COPY_SIZE, 3);
		tu_path(path, "%s/archive", f->dir);
		tu_write_file(path, img, 2 * RK_HDR_COPY_SIZE, 0644);
		fd = open(path, O_RDONLY);
		assert_int_equal(rk_cf_probe(fd), 1);
		close(fd);
		/* copy B with the magic but failing its checksum, copy A text: plain */
		img[RK_HDR_COPY_SIZE + 100] ^= 1;
		tu_write_file(path, img, 2 * RK_HDR_COPY_SIZE, 0644);
		fd = open(path, O_RDONLY);
		assert_int_equal(rk_cf_probe(fd), 0);
		close(fd);
		free(img);
	}
	/* copy A torn (zeros) while copy B holds the header: still a chunk file */
	uint8_t zero[RK_HDR_COPY_SIZE] = {0};
	tu_pwrite_path(fl.path, zero, sizeof(zero), 0);
	fd = open(fl.path, O_RDONLY);
	assert_int_equal(rk_cf_probe(fd), 1);
	close(fd);
	file_open(f, &fl, false);
	check_content(fl.cf, data, 4 * KIB);
	file_close(&fl);
	/* both copies lost (zeros: a crash before the header reached the disk)
	 * while slot 0 holds a chunk: a chunk file whose header is gone, never
	 * plain data (which would read as zeros and ciphertext) */
	tu_pwrite_path(fl.path, zero, sizeof(zero), RK_HDR_COPY_SIZE);
	fd = open(fl.path, O_RDONLY);
	assert_int_equal(rk_cf_probe(fd), 1);
	struct rk_cf *lost = NULL;
	tu_log_clear();
	assert_int_equal(rk_cf_open(fd, fl.path, f->kr, false, &lost), -EUCLEAN);
	assert_null(lost);
	tu_assert_logged("header is gone");
	uint8_t area[RK_PROBE_AREA];
	assert_int_equal(rk_pread_full(fd, area, sizeof(area), 0), (ssize_t)sizeof(area));
	assert_int_equal(rk_cf_probe_buf(area, sizeof(area)), 1);
	assert_int_equal(rk_cf_probe_buf(area, RK_HDR_AREA), 0); /* slot 0 not given: not looked at */
	assert_int_equal(rk_cf_probe_more(fd, area, RK_HDR_AREA), 1);
	close(fd);
	/* a plain file with zeros in both places is plain unless slot 0 holds a
	 * slot header as a writer leaves it: its magic alone is not enough */
	{
		uint8_t *img = tu_malloc(RK_HDR_AREA + 4096);
		memset(img, 0, RK_HDR_AREA);
		tu_fill_random(img + RK_HDR_AREA, 4096, 7);
		tu_path(path, "%s/zeros-then-data", f->dir);
		tu_write_file(path, img, RK_HDR_AREA + 4096, 0644);
		fd = open(path, O_RDONLY);
		assert_int_equal(rk_cf_probe(fd), 0);
		close(fd);
		memcpy(img + RK_HDR_AREA, area + RK_HDR_AREA, RK_SLOT_HDR); /* a real slot header */
		img[RK_HDR_AREA + 6] = 1;                                    /* reserved byte not zero */
		tu_write_file(path, img, RK_HDR_AREA + 4096, 0644);
		fd = open(path, O_RDONLY);
		assert_int_equal(rk_cf_probe(fd), 0);
		close(fd);
		img[RK_HDR_AREA + 6] = 0;
		tu_write_file(path, img, RK_HDR_AREA + 4096, 0644);
		fd = open(path, O_RDONLY);
		assert_int_equal(rk_cf_probe(fd), 1);
		close(fd);
		/* cut inside slot 0's header: too short for a chunk */
		tu_write_file(path, img, RK_HDR_AREA + 16, 0644);
		fd = open(path, O_RDONLY);
		assert_int_equal(rk_cf_probe(fd), 0);
		close(fd);
		free(img);
	}
	free(data);
}

/* ---- crash leftovers ---------------------------------------------------------------------- */
static void test_dirty_counts_recounted(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "dirty", cs, 5, RK_COMP_NONE, 1);
	/* chunk 4 under kb */
	file_open(f, &fl, true);
	assert_int_equal(rk_cf_write_chunk(fl.cf, 4, data + 4 * cs, cs, f->kb, RK_COMP_NONE), 0);
	file_sync_close(&fl);

	/* a crash left a newer header with wrong counts and COUNTS_DIRTY set */
	struct rk_cf_header h;
	int which, fd = open(fl.path, O_RDONLY);
	assert_int_equal(rk_cf_read_header(fd, fl.path, &h, &which), 0);
	close(fd);
	assert_int_equal(hdr_count(&h, "ka"), 4);
	assert_int_equal(hdr_count(&h, "kb"), 1);
	h.flags |= RK_HF_COUNTS_DIRTY;
	h.keys[hdr_find(&h, "ka")].count = 99;
	h.keys[hdr_find(&h, "kb")].count = 0;
	write_newer_header(fl.path, &h, which);

	/* read-only: reported as stored, and the file is not modified */
	size_t l0, l1;
	char *before = tu_read_file(fl.path, &l0);
	file_open(f, &fl, false);
	assert_int_equal(cf_count(fl.cf, "ka"), 99);
	check_content(fl.cf, data, 5 * (size_t)cs);
	file_close(&fl);
	char *after = tu_read_file(fl.path, &l1);
	assert_int_equal(l0, l1);
	assert_memory_equal(before, after, l0);
	free(before);
	free(after);

	/* writable: recounted exactly in memory; the disk header stays marked
	 * dirty (no fdatasync on the open path) until a sync makes it exact and
	 * clean */
	file_open(f, &fl, true);
	assert_int_equal(cf_count(fl.cf, "ka"), 4);
	assert_int_equal(cf_count(fl.cf, "kb"), 1);
	uint32_t flags;
	disk_count(fl.fd, fl.path, "ka", &flags);
	assert_int_not_equal(flags & RK_HF_COUNTS_DIRTY, 0);
	assert_true(rk_cf_disk_dirty(fl.cf));
	assert_int_equal(rk_cf_sync(fl.cf), 0);
	assert_int_equal(disk_count(fl.fd, fl.path, "ka", &flags), 4);
	assert_int_equal(disk_count(fl.fd, fl.path, "kb", NULL), 1);
	assert_int_equal(flags & RK_HF_COUNTS_DIRTY, 0);
	assert_false(rk_cf_disk_dirty(fl.cf));
	check_content(fl.cf, data, 5 * (size_t)cs);
	file_close(&fl);
	free(data);
}

static void stale_case(struct tu_fx *f, int variant)
{
	const uint32_t cs = 4 * KIB;
	struct file fl;
	char name[32];
	snprintf(name, sizeof(name), "stale%d", variant);
	uint8_t *data = make_file(f, &fl, name, cs, 4, RK_COMP_SNAPPY, 0);
	size_t full = 4 * (size_t)cs;
	/* a crash inside a truncate to cs+10: the new header is on disk, the
	 * stored data is not cut yet (slot 1 still holds a whole chunk) */
	struct rk_cf_header h;
	int which, fd = open(fl.path, O_RDONLY);
	assert_int_equal(rk_cf_read_header(fd, fl.path, &h, &which), 0);
	close(fd);
	h.size = cs + 10;
	h.flags |= RK_HF_COUNTS_DIRTY;
	write_newer_header(fl.path, &h, which);
	assert_true(tu_file_size(fl.path) > (off_t)rk_slot_off(cs + RK_SLOT_OVERHEAD, 3));

	/* read-only open: the stale bytes are masked, also in whole-chunk reads */
	file_open(f, &fl, false);
	check_content(fl.cf, data, cs + 10);
	{
		uint8_t *cb = tu_malloc(cs);
		int k = -1;
		memset(cb, 0xEE, cs);
		assert_int_equal(rk_cf_read_chunk(fl.cf, 1, cb, &k), 0);
		assert_int_equal(k, 0);
		assert_memory_equal(cb, data + cs, 10);
		assert_true(tu_all_zero(cb + 10, cs - 10));
		assert_int_equal(rk_cf_read_chunk(fl.cf, 2, cb, &k), 0);
		assert_int_equal(k, -1);
		assert_true(tu_all_zero(cb, cs));
		free(cb);
	}
	file_close(&fl);

	/* writable open trims the stored file and recounts */
	file_open(f, &fl, true);
	assert_int_equal(tu_file_size(fl.path), (off_t)rk_cf_stored_len(cs, cs + 10));
	assert_int_equal(cf_count(fl.cf, "ka"), 2);
	check_content(fl.cf, data, cs + 10);
	uint8_t *want = calloc(1, full);
	assert_non_null(want);
	memcpy(want, data, cs + 10);
	/* extending the file never brings the old bytes back */
	switch (variant) {
	case 0:
		assert_int_equal(rk_cf_truncate(fl.cf, full, f->ka, RK_COMP_SNAPPY), 0);
		break;
	case 1:
		write_all(&fl, "!", 1, full - 1, f->ka, RK_COMP_SNAPPY);
		want[full - 1] = '!';
		break;
	default:
		write_all(&fl, "mid", 3, cs + 100, f->ka, RK_COMP_SNAPPY);
		memcpy(want + cs + 100, "mid", 3);
		full = cs + 103;
		break;
	}
	check_content(fl.cf, want, full);
	file_reopen(f, &fl, false);
	check_content(fl.cf, want, full);
	file_close(&fl);
	free(want);
	free(data);
}

static void test_stale_data_trimmed(void **state)
{
	for (int v = 0; v < 3; v++)
		stale_case(*state, v);
}

/* A crash after a slot write but before the header grew: the slot lies past
 * EOF; the writable open cuts it and it never reappears. */
static void test_stale_slot_past_eof(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "stale-slot", cs, 2, RK_COMP_NONE, 1);
	/* forge: slot 5 sealed by this file under ka (written through a scratch
	 * copy of the file whose header says it is bigger) */
	file_open(f, &fl, true);
	uint8_t *junk = tu_malloc(cs);
	tu_fill_random(junk, cs, 77);
	assert_int_equal(rk_cf_write_chunk(fl.cf, 5, junk, cs, f->ka, RK_COMP_NONE), 0);
	/* (size unchanged: chunk 5 is past EOF) - close without syncing */
	file_close(&fl);
	assert_true(tu_file_size(fl.path) > (off_t)rk_cf_stored_len(cs, 2 * cs));
	file_open(f, &fl, true);
	assert_int_equal(tu_file_size(fl.path), (off_t)rk_cf_stored_len(cs, 2 * cs));
	assert_int_equal(rk_cf_truncate(fl.cf, 6 * cs, f->ka, RK_COMP_NONE), 0);
	uint8_t *want = calloc(1, 6 * cs);
	assert_non_null(want);
	memcpy(want, data, 2 * cs);
	check_content(fl.cf, want, 6 * (size_t)cs);
	assert_int_equal(cf_count(fl.cf, "ka"), 2);
	file_sync_close(&fl);
	free(want);
	free(junk);
	free(data);
}

/* ---- nonces and file ids ------------------------------------------------------------------ */
static void test_nonces_and_file_ids(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file a, b;
	uint8_t buf[100];
	tu_fill_random(buf, sizeof(buf), 1);
	file_create(f, &a, "na", cs, RK_COMP_NONE, f->ka);
	file_create(f, &b, "nb", cs, RK_COMP_NONE, f->ka);
	struct rk_cf_header ha, hb;
	rk_cf_get_header(a.cf, &ha);
	rk_cf_get_header(b.cf, &hb);
	assert_memory_not_equal(ha.file_id, hb.file_id, RK_FILE_ID_BYTES);
	/* the same plaintext written twice at the same place: new nonce, new ciphertext */
	uint8_t s1[RK_SLOT_HDR + 100], s2[RK_SLOT_HDR + 100], s3[RK_SLOT_HDR + 100];
	write_all(&a, buf, sizeof(buf), 0, f->ka, RK_COMP_NONE);
	tu_pread_path(a.path, s1, sizeof(s1), RK_HDR_AREA);
	write_all(&a, buf, sizeof(buf), 0, f->ka, RK_COMP_NONE);
	tu_pread_path(a.path, s2, sizeof(s2), RK_HDR_AREA);
	write_all(&b, buf, sizeof(buf), 0, f->ka, RK_COMP_NONE);
	tu_pread_path(b.path, s3, sizeof(s3), RK_HDR_AREA);
	assert_memory_equal(s1, s2, 16); /* same slot header fields */
	assert_memory_not_equal(s1 + 16, s2 + 16, RK_NONCE_BYTES);
	assert_memory_not_equal(s1 + RK_SLOT_HDR, s2 + RK_SLOT_HDR, 100);
	assert_memory_not_equal(s1 + RK_SLOT_HDR, s3 + RK_SLOT_HDR, 100);
	assert_memory_not_equal(s1 + RK_SLOT_HDR, buf, 100);
	file_close(&a);
	file_close(&b);
}

/* ---- the header key table ------------------------------------------------------------------ */
static void test_key_table_full(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const int nk = RK_CF_MAX_KEYS + 1;
	struct rk_key *keys[RK_CF_MAX_KEYS + 1];
	for (int i = 0; i < nk; i++) {
		char name[16];
		snprintf(name, sizeof(name), "t%02d", i);
		tu_key_create(f->keydir, "AES/GCM/NoPadding", 128, name);
		assert_int_equal(rk_keyring_get(f->kr, name, &keys[i]), 0);
	}
	uint8_t *data = tu_malloc((size_t)RK_CF_MAX_KEYS * cs);
	tu_fill_text(data, (size_t)RK_CF_MAX_KEYS * cs, 4);
	struct file fl;
	file_create(f, &fl, "full", cs, RK_COMP_SNAPPY, keys[0]);
	write_all(&fl, data, (size_t)RK_CF_MAX_KEYS * cs, 0, keys[0], RK_COMP_SNAPPY);
	for (int i = 1; i < RK_CF_MAX_KEYS; i++)
		assert_int_equal(rk_cf_write_chunk(fl.cf, (uint64_t)i, data + (size_t)i * cs, cs, keys[i], RK_COMP_SNAPPY), 0);
	for (int i = 0; i < RK_CF_MAX_KEYS; i++)
		assert_int_equal(cf_count(fl.cf, keys[i]->name), 1);
	/* a 17th key does not fit while every entry seals a chunk */
	tu_log_clear();
	assert_int_equal(rk_cf_write_chunk(fl.cf, 0, data, cs, keys[RK_CF_MAX_KEYS], RK_COMP_SNAPPY), -ENOSPC);
	tu_assert_logged(fl.path, "key table is full");
	check_content(fl.cf, data, (size_t)RK_CF_MAX_KEYS * cs); /* nothing was damaged */
	/* rekey everything to t00; once the counts are clean, a free entry is reused */
	for (int i = 1; i < RK_CF_MAX_KEYS; i++) {
		bool changed;
		assert_int_equal(rk_cf_rekey_chunk(fl.cf, (uint64_t)i, keys[0], &changed), 0);
		assert_true(changed);
	}
	assert_int_equal(rk_cf_sync(fl.cf), 0);
	assert_int_equal(rk_cf_write_chunk(fl.cf, 3, data + 3 * cs, cs, keys[RK_CF_MAX_KEYS], RK_COMP_SNAPPY), 0);
	assert_int_equal(cf_count(fl.cf, "t16"), 1);
	assert_int_equal(cf_count(fl.cf, "t00"), RK_CF_MAX_KEYS - 1);
	/* the disk header names the new key before its chunk can be found */
	struct rk_cf_header dh;
	assert_int_equal(rk_cf_read_header(fl.fd, fl.path, &dh, NULL), 0);
	assert_true(hdr_find(&dh, "t16") >= 0);
	file_reopen(f, &fl, true);
	check_content(fl.cf, data, (size_t)RK_CF_MAX_KEYS * cs);
	assert_int_equal(cf_count(fl.cf, "t16"), 1);
	assert_int_equal(cf_count(fl.cf, "t00"), RK_CF_MAX_KEYS - 1);
	file_close(&fl);
	free(data);
}

static void test_api_edges(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	uint8_t *buf = tu_malloc(cs + 1);
	tu_fill_random(buf, cs + 1, 1);
	file_create(f, &fl, "edges", cs, RK_COMP_NONE, f->ka);
	assert_int_equal(rk_cf_chunk_size(fl.cf), cs);
	assert_int_equal(rk_cf_slot_size(fl.cf), cs + RK_SLOT_OVERHEAD);
	assert_int_equal(rk_cf_fd(fl.cf), fl.fd);
	assert_string_equal(rk_cf_path(fl.cf), fl.path);
	rk_cf_set_path(fl.cf, "/renamed/path");
	assert_string_equal(rk_cf_path(fl.cf), "/renamed/path");
	rk_cf_set_path(fl.cf, fl.path);
	uint8_t id[RK_FILE_ID_BYTES];
	struct rk_cf_header h;
	rk_cf_file_id(fl.cf, id);
	rk_cf_get_header(fl.cf, &h);
	assert_memory_equal(id, h.file_id, RK_FILE_ID_BYTES);
	assert_false(tu_all_zero(id, RK_FILE_ID_BYTES));
	/* empty writes, bad chunk lengths, absurd sizes */
	assert_int_equal(rk_cf_pwrite(fl.cf, buf, 0, 100, f->ka, RK_COMP_NONE), 0);
	assert_int_equal(rk_cf_size(fl.cf), 0);
	assert_int_equal(rk_cf_write_chunk(fl.cf, 0, buf, 0, f->ka, RK_COMP_NONE), -EINVAL);
	assert_int_equal(rk_cf_write_chunk(fl.cf, 0, buf, cs + 1, f->ka, RK_COMP_NONE), -EINVAL);
	assert_int_equal(rk_cf_pwrite(fl.cf, buf, 10, (uint64_t)INT64_MAX / 2, f->ka, RK_COMP_NONE), -EFBIG);
	assert_int_equal(rk_cf_truncate(fl.cf, (uint64_t)INT64_MAX, f->ka, RK_COMP_NONE), -EFBIG);
	assert_int_equal(rk_cf_size(fl.cf), 0);
	assert_int_equal(rk_cf_nchunks(fl.cf), 0);
	/* stored lengths */
	assert_int_equal(rk_cf_stored_len(cs, 0), RK_HDR_AREA);
	assert_int_equal(rk_cf_stored_len(cs, 1), RK_HDR_AREA + cs + RK_SLOT_OVERHEAD);
	assert_int_equal(rk_cf_stored_len(cs, cs), RK_HDR_AREA + cs + RK_SLOT_OVERHEAD);
	assert_int_equal(rk_cf_stored_len(cs, cs + 1), RK_HDR_AREA + 2 * (cs + RK_SLOT_OVERHEAD));
	assert_int_equal(rk_slot_off(cs + RK_SLOT_OVERHEAD, 3), RK_HDR_AREA + 3 * (cs + RK_SLOT_OVERHEAD));
	/* a whole-chunk read of a hole and past EOF */
	int k = 7;
	assert_int_equal(rk_cf_read_chunk(fl.cf, 5, buf, &k), 0);
	assert_int_equal(k, -1);
	assert_true(tu_all_zero(buf, cs));
	/* forgetting a key's subkeys and reading again works */
	write_all(&fl, "hello", 5, 0, f->ka, RK_COMP_NONE);
	rk_cf_forget_key(fl.cf, "ka");
	check_content(fl.cf, (const uint8_t *)"hello", 5);
	file_close(&fl);
	free(buf);
}

/* ---- slot rewrites leave no stale ciphertext ------------------------------------------------ */
static void test_rewrite_clears_stale_tail(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const uint32_t ss = cs + RK_SLOT_OVERHEAD;
	uint8_t *rnd = tu_malloc(cs), *txt = tu_malloc(cs), *raw = tu_malloc(ss);
	tu_fill_random(rnd, cs, 1);
	tu_fill_text(txt, cs, 1);
	struct file fl;
	file_create(f, &fl, "shrink", cs, RK_COMP_SNAPPY, f->ka);
	write_all(&fl, rnd, cs, 0, f->ka, RK_COMP_SNAPPY);
	write_all(&fl, rnd, cs, cs, f->ka, RK_COMP_SNAPPY);
	uint8_t sh[RK_SLOT_HDR];
	read_slot_hdr(fl.fd, cs, 0, sh);
	size_t used0 = RK_SLOT_HDR + rk_get32(sh + 12) + RK_TAG_BYTES;
	assert_int_equal(used0, RK_SLOT_HDR + cs + RK_TAG_BYTES);
	/* the same chunk rewritten with compressible data: a shorter slot */
	write_all(&fl, txt, cs, 0, f->ka, RK_COMP_SNAPPY);
	read_slot_hdr(fl.fd, cs, 0, sh);
	assert_int_equal(sh[5], RK_COMP_SNAPPY);
	size_t used1 = RK_SLOT_HDR + rk_get32(sh + 12) + RK_TAG_BYTES;
	assert_true(used1 < used0 / 2);
	tu_pread_path(fl.path, raw, ss, (off_t)rk_slot_off(ss, 0));
	/* the old ciphertext past the new end is gone */
	assert_true(tu_all_zero(raw + used1, ss - used1));
	uint8_t *want = tu_malloc(2 * cs);
	memcpy(want, txt, cs);
	memcpy(want + cs, rnd, cs);
	check_content(fl.cf, want, 2 * cs);
	/* and a slot whose header was torn to zeros (data behind it) is
	 * cleared as a whole when rewritten */
	uint8_t zero[RK_SLOT_HDR] = {0};
	tu_pwrite_path(fl.path, zero, sizeof(zero), (off_t)rk_slot_off(ss, 1));
	write_all(&fl, txt, 100, cs, f->ka, RK_COMP_SNAPPY);
	read_slot_hdr(fl.fd, cs, 1, sh);
	used1 = RK_SLOT_HDR + rk_get32(sh + 12) + RK_TAG_BYTES;
	tu_pread_path(fl.path, raw, used1, (off_t)rk_slot_off(ss, 1));
	assert_true(tu_file_size(fl.path) <= (off_t)rk_slot_off(ss, 1) + (off_t)ss);
	if (tu_file_size(fl.path) > (off_t)rk_slot_off(ss, 1) + (off_t)used1) {
		size_t rest = (size_t)(tu_file_size(fl.path) - (off_t)rk_slot_off(ss, 1)) - used1;
		uint8_t *tail = tu_malloc(rest);
		tu_pread_path(fl.path, tail, rest, (off_t)rk_slot_off(ss, 1) + (off_t)used1);
		assert_true(tu_all_zero(tail, rest));
		free(tail);
	}
	memcpy(want + cs, txt, 100);
	memset(want + cs + 100, 0, cs - 100);
	check_content(fl.cf, want, 2 * cs);
	free(want);
	free(rnd);
	free(txt);
	free(raw);
	file_close(&fl);
}

/* ---- writer hooks (the daemon's journal plugs in here) ----------------------------------- */
struct rec_writer {
	struct rk_cf_writer def;
	bool pending_mode;
	int nwrites, ntrunc;
	uint64_t last_idx, first_dead;
	size_t last_len, last_old_end;
	uint8_t *pending[8];
	size_t pending_len[8];
};

static int rec_write(void *ctx, struct rk_cf *cf, uint64_t idx, const uint8_t *slot, size_t len, size_t old_end)
{
	struct rec_writer *w = ctx;
	w->nwrites++;
	w->last_idx = idx;
	w->last_len = len;
	w->last_old_end = old_end;
	if (!w->pending_mode)
		return w->def.write_slot(w->def.ctx, cf, idx, slot, len, old_end);
	if (idx >= 8)
		return -EIO;
	free(w->pending[idx]);
	w->pending[idx] = tu_malloc(len);
	memcpy(w->pending[idx], slot, len);
	w->pending_len[idx] = len;
	return 0;
}

static ssize_t rec_read(void *ctx, struct rk_cf *cf, uint64_t idx, uint8_t *buf, size_t len)
{
	struct rec_writer *w = ctx;
	(void)cf;
	if (idx >= 8 || !w->pending[idx])
		return -ENOENT;
	size_t n = RK_MIN(len, w->pending_len[idx]);
	memcpy(buf, w->pending[idx], n);
	/* the rest of the slot reads as the hole it is */
	if (len > n)
		memset(buf + n, 0, len - n);
	return (ssize_t)len;
}

static int rec_trunc(void *ctx, struct rk_cf *cf, uint64_t first_dead)
{
	struct rec_writer *w = ctx;
	(void)cf;
	w->ntrunc++;
	w->first_dead = first_dead;
	for (uint64_t i = first_dead; i < 8; i++) {
		free(w->pending[i]);
		w->pending[i] = NULL;
	}
	return 0;
}

static void test_writer_hooks(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const size_t full = RK_SLOT_HDR + cs + RK_TAG_BYTES;
	struct rec_writer w;
	memset(&w, 0, sizeof(w));
	uint8_t *a = tu_malloc(2 * cs), *b = tu_malloc(2 * cs);
	tu_fill_random(a, 2 * cs, 1);
	tu_fill_random(b, 2 * cs, 2);
	struct file fl;
	file_create(f, &fl, "hooks", cs, RK_COMP_NONE, f->ka);
	rk_cf_get_writer(fl.cf, &w.def);
	assert_non_null(w.def.write_slot);
	struct rk_cf_writer mine = {rec_write, rec_read, rec_trunc, &w};
	rk_cf_set_writer(fl.cf, &mine);

	/* a first write goes into a hole */
	write_all(&fl, a, cs, 0, f->ka, RK_COMP_NONE);
	assert_int_equal(w.nwrites, 1);
	assert_int_equal(w.last_idx, 0);
	assert_int_equal(w.last_len, full);
	assert_int_equal(w.last_old_end, 0);
	/* an overwrite knows how much the slot held */
	write_all(&fl, b, 100, 0, f->ka, RK_COMP_NONE);
	memcpy(a, b, 100);
	assert_int_equal(w.nwrites, 2);
	assert_int_equal(w.last_old_end, full);
	bool changed;
	assert_int_equal(rk_cf_rekey_chunk(fl.cf, 0, f->kb, &changed), 0);
	assert_true(changed);
	assert_int_equal(w.nwrites, 3);
	assert_int_equal(w.last_old_end, full);
	write_all(&fl, a + cs, cs, cs, f->ka, RK_COMP_NONE);
	assert_int_equal(w.last_idx, 1);
	assert_int_equal(w.last_old_end, 0);
	check_content(fl.cf, a, 2 * cs);

	/* pending images: reads see them before they reach the disk */
	w.pending_mode = true;
	write_all(&fl, b, 2 * cs, 0, f->ka, RK_COMP_NONE);
	assert_int_equal(w.nwrites, 6);
	check_content(fl.cf, b, 2 * cs);
	int k;
	assert_int_equal(rk_cf_chunk_keyidx(fl.cf, 0, &k), 0);
	struct rk_cf_header h;
	rk_cf_get_header(fl.cf, &h);
	assert_string_equal(h.keys[k].name, "ka"); /* the pending image's key, not kb on disk */
	assert_int_equal(rk_cf_sync(fl.cf), 0);
	struct file other = fl;
	file_open(f, &other, false);
	check_content(other.cf, a, 2 * cs); /* the disk still holds the old data */
	file_close(&other);

	/* truncation tells the writer which slots died */
	assert_int_equal(rk_cf_truncate(fl.cf, cs + 10, f->ka, RK_COMP_NONE), 0);
	assert_int_equal(w.ntrunc, 1);
	assert_int_equal(w.first_dead, 2); /* a partial chunk 1 survives */
	assert_int_equal(rk_cf_truncate(fl.cf, 10, f->ka, RK_COMP_NONE), 0);
	assert_int_equal(w.ntrunc, 2);
	assert_int_equal(w.first_dead, 1);
	assert_int_equal(rk_cf_truncate(fl.cf, 3 * cs, f->ka, RK_COMP_NONE), 0);
	assert_int_equal(w.ntrunc, 2); /* growing kills nothing */
	uint8_t *want = calloc(1, 3 * cs);
	assert_non_null(want);
	memcpy(want, b, 10);
	check_content(fl.cf, want, 3 * cs);
	free(want);

	/* back to the default writer */
	rk_cf_set_writer(fl.cf, NULL);
	w.pending_mode = false;
	file_close(&fl);
	for (int i = 0; i < 8; i++)
		free(w.pending[i]);
	free(a);
	free(b);
}

/* ---- threads: different chunks in parallel ------------------------------------------------- */
struct thr {
	struct tu_fx *f;
	struct rk_cf *cf;
	const uint8_t *data;
	uint32_t cs;
	int first, n, err;
};

static void *thr_main(void *arg)
{
	struct thr *t = arg;
	for (int i = t->first; i < t->first + t->n && !t->err; i++) {
		if (rk_cf_pwrite(t->cf, t->data + (size_t)i * t->cs, t->cs, (uint64_t)i * t->cs, t->f->ka, RK_COMP_SNAPPY) !=
		    (ssize_t)t->cs)
			t->err = 1;
	}
	for (int i = t->first; i < t->first + t->n && !t->err; i++) {
		bool changed;
		if (rk_cf_rekey_chunk(t->cf, (uint64_t)i, i % 3 ? t->f->kb : t->f->kc, &changed) != 0 || !changed)
			t->err = 2;
	}
	rk_crypto_thread_cleanup();
	return NULL;
}

/* Incompressible data makes the writer stop trying snappy for a while, but
 * compressible data that follows is compressed again (and every byte reads
 * back either way). */
static void test_adaptive_compression(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const int nrand = 24, ntext = 64;
	struct file fl;
	file_create(f, &fl, "adaptive", cs, RK_COMP_SNAPPY, f->ka);
	size_t len = (size_t)(nrand + ntext) * cs;
	uint8_t *data = tu_malloc(len);
	tu_fill_random(data, (size_t)nrand * cs, 9);
	for (size_t i = (size_t)nrand * cs; i < len; i++)
		data[i] = (uint8_t)("row 000123 value alpha beta gamma\n"[i % 34]);
	for (int c = 0; c < nrand + ntext; c++)
		write_all(&fl, data + (size_t)c * cs, cs, (uint64_t)c * cs, f->ka, RK_COMP_SNAPPY);
	check_content(fl.cf, data, len);
	int comp_text = 0, comp_rand = 0;
	for (int c = 0; c < nrand + ntext; c++) {
		uint8_t h[RK_SLOT_HDR];
		assert_int_equal(pread(fl.fd, h, sizeof(h), (off_t)rk_slot_off(cs + RK_SLOT_OVERHEAD, (uint64_t)c)),
		                 (ssize_t)sizeof(h));
		if (h[5] == RK_COMP_SNAPPY)
			(c < nrand ? &comp_rand : &comp_text)[0]++;
	}
	assert_int_equal(comp_rand, 0);
	/* at most one retry period passes before compression is back */
	if (comp_text < ntext - 16)
		fail_msg("only %d of %d compressible chunks were compressed after incompressible ones", comp_text, ntext);
	file_sync_close(&fl);
	free(data);
}

static void test_parallel_chunks(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const int nthr = 4, per = 16;
	size_t len = (size_t)nthr * per * cs;
	uint8_t *data = tu_malloc(len);
	tu_fill_text(data, len, 3);
	struct file fl;
	file_create(f, &fl, "par", cs, RK_COMP_SNAPPY, f->ka);
	/* size first, so the threads write inside the file */
	assert_int_equal(rk_cf_truncate(fl.cf, len, f->ka, RK_COMP_SNAPPY), 0);
	pthread_t th[4];
	struct thr t[4];
	for (int i = 0; i < nthr; i++) {
		t[i] = (struct thr){f, fl.cf, data, cs, i * per, per, 0};
		assert_int_equal(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
	}
	for (int i = 0; i < nthr; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(t[i].err, 0);
	}
	check_content(fl.cf, data, len);
	int nkc = 0;
	for (int i = 0; i < nthr * per; i++)
		nkc += i % 3 == 0;
	assert_int_equal(cf_count(fl.cf, "ka"), 0);
	assert_int_equal(cf_count(fl.cf, "kc"), nkc);
	assert_int_equal(cf_count(fl.cf, "kb"), nthr * per - nkc);
	file_reopen(f, &fl, false);
	check_content(fl.cf, data, len);
	assert_int_equal(cf_count(fl.cf, "kb"), nthr * per - nkc);
	file_close(&fl);
	free(data);
}

/* Writes past the end arrive out of order (the kernel's write-back does
 * that); slots past the stored end are known holes without reading them,
 * until written, cut by a truncation or past a reopen. */
static void test_out_of_order_extension(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	size_t len = 8 * (size_t)cs;
	uint8_t *model = tu_malloc(len), *chunk = tu_malloc(cs);
	memset(model, 0, len);
	struct file fl;
	file_create(f, &fl, "ooo", cs, RK_COMP_SNAPPY, f->ka);
	const int order[] = {3, 1};
	for (int i = 0; i < 2; i++) {
		fill(chunk, cs, order[i] & 1, (uint64_t)order[i]);
		write_all(&fl, chunk, cs, (uint64_t)order[i] * cs, f->ka, RK_COMP_SNAPPY);
		memcpy(model + (size_t)order[i] * cs, chunk, cs);
	}
	check_content(fl.cf, model, 4 * (size_t)cs);
	assert_int_equal(cf_count(fl.cf, "ka"), 2);
	/* cut in the middle of chunk 1, then write chunk 3 again: 2 is a hole */
	assert_int_equal(rk_cf_truncate(fl.cf, cs + cs / 2, f->ka, RK_COMP_SNAPPY), 0);
	memset(model + cs + cs / 2, 0, len - cs - cs / 2);
	fill(chunk, cs, 0, 33);
	write_all(&fl, chunk, cs, 3 * (uint64_t)cs, f->ka, RK_COMP_SNAPPY);
	memcpy(model + 3 * (size_t)cs, chunk, cs);
	check_content(fl.cf, model, 4 * (size_t)cs);
	assert_int_equal(cf_count(fl.cf, "ka"), 2);
	/* reopened writable: what is on disk is read, new slots are holes */
	file_reopen(f, &fl, true);
	const int order2[] = {7, 5, 2};
	for (int i = 0; i < 3; i++) {
		fill(chunk, cs, 1, 100 + (uint64_t)order2[i]);
		write_all(&fl, chunk, cs, (uint64_t)order2[i] * cs, f->ka, RK_COMP_SNAPPY);
		memcpy(model + (size_t)order2[i] * cs, chunk, cs);
	}
	check_content(fl.cf, model, len);
	assert_int_equal(cf_count(fl.cf, "ka"), 5);
	file_reopen(f, &fl, false);
	check_content(fl.cf, model, len);
	assert_int_equal(rk_cf_recount(fl.cf), 0);
	assert_int_equal(cf_count(fl.cf, "ka"), 5);
	file_close(&fl);
	free(chunk);
	free(model);
}

/* ---- whole-file rekey ------------------------------------------------------------------------ */
static int count_tmp(const char *dir)
{
	int n = 0;
	DIR *d = opendir(dir);
	assert_non_null(d);
	for (struct dirent *de; (de = readdir(d));)
		n += rk_is_tmp_name(de->d_name);
	closedir(d);
	return n;
}

/* chunks 0,1 text under ka, 2 a hole, 3 random under kb, 4 text under kc
 * (the target), then a hole, then a partial chunk 6 under ka */
static uint8_t *mixed_file(struct tu_fx *f, struct file *fl, const char *name, uint32_t cs, size_t *lenp)
{
	size_t len = 6 * (size_t)cs + 777;
	uint8_t *data = tu_malloc(len);
	memset(data, 0, len);
	fill(data, 2 * (size_t)cs, 0, 1);
	fill(data + 3 * (size_t)cs, cs, 1, 2);
	fill(data + 4 * (size_t)cs, cs, 0, 3);
	fill(data + 6 * (size_t)cs, 777, 0, 4);
	file_create(f, fl, name, cs, RK_COMP_SNAPPY, f->ka);
	write_all(fl, data, 2 * (size_t)cs, 0, f->ka, RK_COMP_SNAPPY);
	write_all(fl, data + 3 * (size_t)cs, cs, 3 * (uint64_t)cs, f->kb, RK_COMP_SNAPPY);
	write_all(fl, data + 4 * (size_t)cs, cs, 4 * (uint64_t)cs, f->kc, RK_COMP_SNAPPY);
	write_all(fl, data + 6 * (size_t)cs, 777, 6 * (uint64_t)cs, f->ka, RK_COMP_SNAPPY);
	file_sync_close(fl);
	*lenp = len;
	return data;
}

static int dir_fd(struct tu_fx *f)
{
	int d = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(d >= 0);
	return d;
}

static void test_replace_whole_file(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	size_t len;
	uint8_t *data = mixed_file(f, &fl, "whole", cs, &len);
	uint8_t before[7][RK_SLOT_HDR];
	int fd = open(fl.path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	for (int i = 0; i < 7; i++)
		read_slot_hdr(fd, cs, (uint64_t)i, before[i]);
	struct rk_cf_header h0;
	assert_int_equal(rk_cf_read_header(fd, fl.path, &h0, NULL), 0);
	close(fd);
	assert_int_equal(chmod(fl.path, 0640), 0);
	struct timespec ts[2] = {{1000000000, 123456789}, {1200000000, 987654321}};
	assert_int_equal(utimensat(AT_FDCWD, fl.path, ts, 0), 0);
	struct stat st0, st1;
	assert_int_equal(stat(fl.path, &st0), 0);

	int d = dir_fd(f);
	struct rk_replace *r;
	struct rk_sweep_result res;
	int ret = rk_replace_prepare(d, "whole", "/whole", f->kr, f->kc, NULL, &res, &r);
	if (ret != 0)
		tu_log_dump();
	assert_int_equal(ret, 0);
	assert_int_equal(count_tmp(f->dir), 1);
	struct stat nst;
	int pfd;
	assert_int_equal(rk_replace_commit(r, &pfd, &nst), 0);
	assert_int_equal(rk_replace_end(r), 0);
	assert_true(pfd >= 0);
	close(pfd);
	close(d);
	assert_int_equal(count_tmp(f->dir), 0);
	assert_int_equal(res.chunks_checked, 7);
	assert_int_equal(res.chunks_rewritten, 4); /* 0, 1, 3, 6; 4 was on kc already */

	/* a new inode with the original's identity */
	assert_int_equal(stat(fl.path, &st1), 0);
	assert_int_equal(st1.st_ino, nst.st_ino);
	assert_int_not_equal(st1.st_ino, st0.st_ino);
	assert_int_equal(st1.st_mode, st0.st_mode);
	assert_int_equal(st1.st_size, st0.st_size);
	assert_int_equal(st1.st_mtim.tv_sec, ts[1].tv_sec);
	assert_int_equal(st1.st_mtim.tv_nsec, ts[1].tv_nsec);
	assert_int_equal(st1.st_atim.tv_sec, ts[0].tv_sec);

	/* same plaintext and holes; every chunk under kc; compression kept; a
	 * fresh file id; a clean header with exact counts */
	file_open(f, &fl, false);
	check_content(fl.cf, data, len);
	struct rk_cf_header h;
	rk_cf_get_header(fl.cf, &h);
	assert_memory_not_equal(h.file_id, h0.file_id, RK_FILE_ID_BYTES);
	assert_int_equal(h.flags & RK_HF_COUNTS_DIRTY, 0);
	assert_int_equal(hdr_count(&h, "kc"), 5);
	assert_int_equal(hdr_count(&h, "ka"), 0);
	assert_int_equal(hdr_count(&h, "kb"), 0);
	int jc = hdr_find(&h, "kc");
	for (int i = 0; i < 7; i++) {
		uint8_t now[RK_SLOT_HDR];
		read_slot_hdr(fl.fd, cs, (uint64_t)i, now);
		if (i == 2 || i == 5) {
			assert_true(tu_all_zero(now, RK_SLOT_HDR)); /* still a hole */
			continue;
		}
		assert_int_equal(now[4], jc);
		assert_int_equal(now[5], before[i][5]);
		assert_memory_equal(now + 8, before[i] + 8, 8);
	}
	file_close(&fl);
	/* none of the old keys is needed any more */
	assert_int_equal(rk_keyring_release(f->kr, "ka"), 0);
	assert_int_equal(rk_keyring_release(f->kr, "kb"), 0);
	file_open(f, &fl, false);
	check_content(fl.cf, data, len);
	file_close(&fl);
	free(data);
}

static int cancel_after_two(void *arg, uint64_t idx, uint64_t bytes)
{
	int *n = arg;
	(void)bytes;
	assert_int_equal(idx, (uint64_t)*n); /* chunks in order, each reported once */
	return ++*n > 2 ? -ECANCELED : 0;
}

static void expect_untouched(struct tu_fx *f, struct file *fl, const struct stat *st0, const uint8_t *data, size_t len)
{
	struct stat st;
	assert_int_equal(stat(fl->path, &st), 0);
	assert_int_equal(st.st_ino, st0->st_ino);
	assert_int_equal(count_tmp(f->dir), 0);
	file_open(f, fl, false);
	check_content(fl->cf, data, len);
	file_close(fl);
}

static void test_replace_refusals(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	size_t len;
	uint8_t *data = mixed_file(f, &fl, "ref", cs, &len);
	struct stat st0;
	assert_int_equal(stat(fl.path, &st0), 0);
	int d = dir_fd(f);
	struct rk_replace *r;
	struct rk_sweep_result res;
	char lnk[PATH_MAX];

	/* hard links: a new inode would split them */
	tu_path(lnk, "%s/ref.link", f->dir);
	assert_int_equal(link(fl.path, lnk), 0);
	assert_int_equal(rk_replace_prepare(d, "ref", "/ref", f->kr, f->kc, NULL, &res, &r), -EMLINK);
	assert_int_equal(rk_replace_end(r), 0);
	assert_int_equal(unlink(lnk), 0);
	assert_int_equal(stat(fl.path, &st0), 0);
	expect_untouched(f, &fl, &st0, data, len);

	/* the original changes between prepare and commit */
	assert_int_equal(rk_replace_prepare(d, "ref", "/ref", f->kr, f->kc, NULL, &res, &r), 0);
	struct timespec ts[2] = {{UTIME_OMIT, 0}, {1300000000, 0}};
	assert_int_equal(utimensat(AT_FDCWD, fl.path, ts, 0), 0);
	assert_int_equal(rk_replace_commit(r, NULL, NULL), -EAGAIN);
	assert_int_equal(rk_replace_end(r), 0);
	assert_int_equal(stat(fl.path, &st0), 0);
	expect_untouched(f, &fl, &st0, data, len);

	/* renamed away between prepare and commit: not resurrected */
	char moved[PATH_MAX];
	tu_path(moved, "%s/ref.moved", f->dir);
	assert_int_equal(rk_replace_prepare(d, "ref", "/ref", f->kr, f->kc, NULL, &res, &r), 0);
	assert_int_equal(rename(fl.path, moved), 0);
	assert_int_equal(rk_replace_commit(r, NULL, NULL), -EAGAIN);
	assert_int_equal(rk_replace_end(r), 0);
	assert_int_equal(access(fl.path, F_OK), -1);
	assert_int_equal(rename(moved, fl.path), 0);
	expect_untouched(f, &fl, &st0, data, len);

	/* stopped by the throttle callback */
	int calls = 0;
	struct rk_replace_cb cb = {cancel_after_two, &calls};
	assert_int_equal(rk_replace_prepare(d, "ref", "/ref", f->kr, f->kc, &cb, &res, &r), -ECANCELED);
	assert_int_equal(rk_replace_end(r), 0);
	expect_untouched(f, &fl, &st0, data, len);

	/* a corrupt chunk: refused (the in-place sweep keeps such chunks) */
	tu_flip_bit(fl.path, (off_t)rk_slot_off(cs + RK_SLOT_OVERHEAD, 3) + RK_SLOT_HDR + 10, 2);
	assert_int_equal(rk_replace_prepare(d, "ref", "/ref", f->kr, f->kc, NULL, &res, &r), -EUCLEAN);
	assert_int_equal(rk_replace_end(r), 0);
	assert_int_equal(count_tmp(f->dir), 0);
	struct stat st;
	assert_int_equal(stat(fl.path, &st), 0);
	assert_int_equal(st.st_ino, st0.st_ino);

	/* a missing key: refused too */
	tu_flip_bit(fl.path, (off_t)rk_slot_off(cs + RK_SLOT_OVERHEAD, 3) + RK_SLOT_HDR + 10, 2);
	assert_int_equal(rk_keyring_release(f->kr, "kb"), 0);
	int ret = rk_replace_prepare(d, "ref", "/ref", f->kr, f->kc, NULL, &res, &r);
	assert_true(ret == -EKEYREVOKED || ret == -ENOKEY);
	assert_int_equal(rk_replace_end(r), 0);
	assert_int_equal(count_tmp(f->dir), 0);
	close(d);
	free(data);
}

/* ---- issue #10: damaged first block, cut-short files, huge sparse files ---------------- */
static void expect_probe(const char *path, int want)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_probe(fd), want);
	close(fd);
}

static void test_damaged_first_block(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	uint8_t *data = make_file(f, &fl, "dmg", cs, 3, RK_COMP_NONE, 1);
	size_t len = (size_t)tu_file_size(fl.path);
	uint8_t *orig = tu_malloc(len);
	tu_pread_path(fl.path, orig, len, 0);
	uint8_t junk[RK_HDR_COPY_SIZE];
	tu_fill_random(junk, sizeof(junk), 7);
	junk[0] = 'X'; /* not the magic's first byte */
	/* copy A overwritten (first 8 bytes, the whole block), copy B intact:
	 * a chunk file read from copy B, never the raw stored bytes */
	const size_t spans[] = {8, RK_HDR_COPY_SIZE};
	for (size_t i = 0; i < RK_ARRAY_SIZE(spans); i++) {
		tu_pwrite_path(fl.path, junk, spans[i], 0);
		expect_probe(fl.path, 1);
		for (int w = 0; w < 2; w++) {
			file_open(f, &fl, w == 1);
			check_content(fl.cf, data, 3 * cs);
			file_close(&fl);
		}
		tu_pwrite_path(fl.path, orig, RK_HDR_COPY_SIZE, 0);
	}
	/* copy B overwritten, copy A intact */
	tu_pwrite_path(fl.path, junk, RK_HDR_COPY_SIZE, RK_HDR_COPY_SIZE);
	expect_probe(fl.path, 1);
	file_open(f, &fl, false);
	check_content(fl.cf, data, 3 * cs);
	file_close(&fl);
	tu_pwrite_path(fl.path, orig, len, 0);
	/* both copies damaged, the file starts with the magic: corrupt, not plain */
	tu_flip_bit(fl.path, 50, 1);
	tu_flip_bit(fl.path, RK_HDR_COPY_SIZE + 50, 1);
	expect_probe(fl.path, 1);
	assert_int_equal(file_open_kr(f->kr, &fl, false), -EUCLEAN);
	assert_int_equal(file_open_kr(f->kr, &fl, true), -EUCLEAN);
	tu_pwrite_path(fl.path, orig, len, 0);
	/* a file cut inside the header area that starts with the magic */
	const off_t shorts[] = {8, 100, RK_HDR_COPY_SIZE - 1};
	for (size_t i = 0; i < RK_ARRAY_SIZE(shorts); i++) {
		assert_int_equal(truncate(fl.path, shorts[i]), 0);
		expect_probe(fl.path, 1);
		assert_int_equal(file_open_kr(f->kr, &fl, false), -EUCLEAN);
		tu_pwrite_path(fl.path, orig, len, 0);
	}
	/* the buffer form agrees, including on short inputs */
	assert_int_equal(rk_cf_probe_buf(orig, 8), 1);
	assert_int_equal(rk_cf_probe_buf(orig, 7), 0);
	assert_int_equal(rk_cf_probe_buf(junk, sizeof(junk)), 0);
	memcpy(orig, junk, RK_HDR_COPY_SIZE);
	assert_int_equal(rk_cf_probe_buf(orig, RK_HDR_AREA), 1);
	/* copy B present only in part (the file is that short): never verifies */
	assert_int_equal(rk_cf_probe_buf(orig, RK_HDR_COPY_SIZE + 100), 0);
	free(orig);
	free(data);
}

static void test_cut_short(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	const uint32_t ss = cs + RK_SLOT_OVERHEAD;
	/* where the stored file is cut, and the first chunk that is lost */
	const struct {
		uint64_t at;
		uint64_t first;
	} cuts[] = {
	    {RK_HDR_AREA, 0},                                  /* before every slot */
	    {RK_HDR_AREA + 2 * (uint64_t)ss, 2},               /* exactly at a slot boundary */
	    {RK_HDR_AREA + 2 * (uint64_t)ss + 10, 2},          /* inside slot 2's header */
	    {RK_HDR_AREA + 2 * (uint64_t)ss + RK_SLOT_HDR + 100, 2}, /* inside slot 2's payload */
	};
	for (size_t c = 0; c < RK_ARRAY_SIZE(cuts); c++) {
		struct file fl;
		char name[32];
		snprintf(name, sizeof(name), "short%zu", c);
		uint8_t *data = make_file(f, &fl, name, cs, 5, RK_COMP_NONE, 1);
		assert_int_equal(truncate(fl.path, (off_t)cuts[c].at), 0);
		for (int w = 0; w < 2; w++) {
			file_open(f, &fl, w == 1);
			assert_int_equal(rk_cf_size(fl.cf), 5 * (size_t)cs);
			for (uint64_t i = 0; i < cuts[c].first; i++)
				expect_chunk_ok(fl.cf, data, i);
			/* chunks wholly past the new end: EIO, never zeros */
			for (uint64_t i = cuts[c].first + 1; i < 5; i++) {
				expect_chunk_eio(fl.cf, fl.path, i, "missing");
				int k;
				assert_int_equal(rk_cf_chunk_keyidx(fl.cf, i, &k), -ENODATA);
			}
			expect_chunk_eio(fl.cf, fl.path, cuts[c].first, NULL);
			uint64_t first, per[RK_CF_MAX_KEYS];
			uint64_t lost = rk_cf_missing(fl.cf, &first, per);
			assert_true(lost >= 5 - cuts[c].first - 1 && lost <= 5 - cuts[c].first);
			/* the release scan counts the lost chunks under their key */
			uint64_t counts[RK_CF_MAX_KEYS], malformed;
			assert_int_equal(rk_scan_key_refs(fl.cf, NULL, counts, &malformed), 0);
			assert_int_equal(counts[0] + malformed, 5);
			file_close(&fl);
		}
		/* cut away through the file (truncate): the rest reads again */
		file_open(f, &fl, true);
		assert_int_equal(rk_cf_truncate(fl.cf, cuts[c].first * cs, f->ka, RK_COMP_NONE), 0);
		assert_int_equal(rk_cf_missing(fl.cf, NULL, NULL), 0);
		file_reopen(f, &fl, true);
		assert_int_equal(rk_cf_missing(fl.cf, NULL, NULL), 0);
		struct rk_cf_header h;
		rk_cf_get_header(fl.cf, &h);
		assert_int_equal(hdr_count(&h, "ka"), cuts[c].first);
		assert_int_equal(rk_cf_truncate(fl.cf, 5 * cs, f->ka, RK_COMP_NONE), 0);
		uint8_t *buf = tu_malloc(5 * cs);
		assert_int_equal(rk_cf_pread(fl.cf, buf, 5 * cs, 0), (ssize_t)(5 * cs));
		assert_memory_equal(buf, data, cuts[c].first * cs);
		assert_true(tu_all_zero(buf + cuts[c].first * cs, (5 - cuts[c].first) * cs));
		free(buf);
		file_sync_close(&fl);
		free(data);
	}
	/* a legitimately sparse tail (clean counts match) reads as zeros */
	struct file sp;
	uint8_t *data = make_file(f, &sp, "sparse-tail", cs, 2, RK_COMP_NONE, 1);
	file_open(f, &sp, true);
	assert_int_equal(rk_cf_truncate(sp.cf, 5 * cs, f->ka, RK_COMP_NONE), 0);
	file_sync_close(&sp);
	file_open(f, &sp, false);
	assert_int_equal(rk_cf_missing(sp.cf, NULL, NULL), 0);
	uint8_t *buf = tu_malloc(5 * cs);
	assert_int_equal(rk_cf_pread(sp.cf, buf, 5 * cs, 0), (ssize_t)(5 * cs));
	assert_memory_equal(buf, data, 2 * cs);
	assert_true(tu_all_zero(buf + 2 * cs, 3 * cs));
	free(buf);
	file_close(&sp);
	free(data);
}

static void test_huge_sparse(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	struct file fl;
	const uint64_t sizes[] = {1ULL << 61 /* 2 EiB */, 1ULL << 50 /* 1 PiB */, RK_SIZE_MAX};
	alarm(60); /* each step below costs what is stored, not 2^49 slot reads */
	for (size_t i = 0; i < RK_ARRAY_SIZE(sizes); i++) {
		file_create(f, &fl, "huge", cs, RK_COMP_NONE, f->ka);
		uint8_t chunk[4096];
		tu_fill_text(chunk, sizeof(chunk), 3);
		write_all(&fl, chunk, sizeof(chunk), 1 << 20, f->ka, RK_COMP_NONE);
		assert_int_equal(rk_cf_truncate(fl.cf, sizes[i], f->ka, RK_COMP_NONE), 0);
		assert_int_equal(rk_cf_flush(fl.cf), 0);
		file_close(&fl); /* the header stays COUNTS_DIRTY */
		/* a writable open recounts */
		file_open(f, &fl, true);
		assert_int_equal(rk_cf_size(fl.cf), sizes[i]);
		struct rk_cf_header h;
		rk_cf_get_header(fl.cf, &h);
		assert_int_equal(hdr_count(&h, "ka"), 1);
		uint64_t counts[RK_CF_MAX_KEYS], malformed;
		assert_int_equal(rk_scan_key_refs(fl.cf, NULL, counts, &malformed), 0);
		assert_int_equal(counts[0], 1);
		struct rk_sweep_result res;
		assert_int_equal(rk_sweep_file(fl.cf, f->kb, NULL, 0, &res), 0);
		assert_int_equal(res.chunks_rewritten, 1);
		assert_int_equal(rk_cf_next_slot(fl.cf, 257, rk_cf_nchunks(fl.cf)), rk_cf_nchunks(fl.cf));
		/* past what the format addresses: EFBIG */
		assert_int_equal(rk_cf_truncate(fl.cf, RK_SIZE_MAX + 1, f->ka, RK_COMP_NONE), -EFBIG);
		assert_int_equal(rk_cf_pwrite(fl.cf, chunk, 100, RK_SIZE_MAX - 10, f->ka, RK_COMP_NONE), -EFBIG);
		assert_int_equal(rk_cf_pwrite(fl.cf, chunk, 100, UINT64_MAX - 10, f->ka, RK_COMP_NONE), -EFBIG);
		/* and back down: the count follows the chunks that exist */
		assert_int_equal(rk_cf_truncate(fl.cf, 0, f->ka, RK_COMP_NONE), 0);
		file_sync_close(&fl);
	}
	alarm(0);
	/* a header claiming more than the format addresses is invalid */
	struct rk_cf_header h = {0};
	uint8_t buf[RK_HDR_COPY_SIZE], pad[RK_HDR_COPY_SIZE];
	h.version = RK_FORMAT_VERSION;
	h.chunk_size = cs;
	h.slot_size = cs + RK_SLOT_OVERHEAD;
	h.size = RK_SIZE_MAX;
	rk_hdr_encode(&h, buf);
	assert_int_equal(rk_hdr_decode(buf, &h), 0);
	h.size = RK_SIZE_MAX + 1;
	rk_hdr_encode(&h, buf);
	assert_int_equal(rk_hdr_decode(buf, &h), -EUCLEAN);
	(void)pad;
}

/* A slot whose image is pending in the writer (the daemon's journal) while
 * the disk still has a hole there is never skipped by the hole-skipping
 * loops: below and above the stored end at open. */
static void test_next_slot_pending(void **state)
{
	struct tu_fx *f = *state;
	const uint32_t cs = 4 * KIB;
	uint8_t chunk[4 * KIB];
	tu_fill_random(chunk, sizeof(chunk), 9);
	struct file fl;
	file_create(f, &fl, "pend", cs, RK_COMP_NONE, f->ka);
	write_all(&fl, chunk, cs, 0, f->ka, RK_COMP_NONE);
	write_all(&fl, chunk, cs, 6 * (uint64_t)cs, f->ka, RK_COMP_NONE);
	file_sync_close(&fl);
	file_open(f, &fl, true);
	uint64_t n = rk_cf_nchunks(fl.cf);
	assert_int_equal(n, 7);
	/* only slots 0 and 6 hold data (slots 1..5 are holes of the stored file) */
	assert_int_equal(rk_cf_next_slot(fl.cf, 0, n), 0);
	uint64_t j = rk_cf_next_slot(fl.cf, 1, n);
	assert_true(j <= 6);
	struct rec_writer w;
	memset(&w, 0, sizeof(w));
	rk_cf_get_writer(fl.cf, &w.def);
	struct rk_cf_writer mine = {rec_write, rec_read, rec_trunc, &w};
	rk_cf_set_writer(fl.cf, &mine);
	w.pending_mode = true;
	write_all(&fl, chunk, cs, 3 * (uint64_t)cs, f->ka, RK_COMP_NONE); /* below the stored end */
	assert_true(rk_cf_next_slot(fl.cf, 1, n) <= 3);
	assert_true(rk_cf_next_slot(fl.cf, 4, n) <= 6);
	write_all(&fl, chunk, cs, 7 * (uint64_t)cs, f->ka, RK_COMP_NONE); /* past it */
	n = rk_cf_nchunks(fl.cf);
	assert_int_equal(rk_cf_next_slot(fl.cf, 7, n), 7);
	uint64_t counts[RK_CF_MAX_KEYS], malformed;
	assert_int_equal(rk_scan_key_refs(fl.cf, NULL, counts, &malformed), 0);
	assert_int_equal(counts[0], 4);
	rk_cf_set_writer(fl.cf, NULL);
	for (int i = 0; i < 8; i++)
		free(w.pending[i]);
	file_close(&fl);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_roundtrip_4k_snappy),
		T(test_roundtrip_4k_none),
		T(test_roundtrip_64k_snappy),
		T(test_roundtrip_64k_none),
		T(test_roundtrip_ciphers_and_sizes),
		T(test_piecewise_writes),
		T(test_random_ops_model),
		T(test_overwrite_and_append),
		T(test_sparse),
		T(test_truncate),
		T(test_compression_saves_disk),
		T(test_header_counts),
		T(test_rekey_keeps_payload),
		T(test_header_copy_corruption),
		T(test_header_encode_decode),
		T(test_chunk_bitflips),
		T(test_snappy_chunk_bitflips),
		T(test_swapped_slots),
		T(test_slot_from_other_file),
		T(test_slot_key_index),
		T(test_truncated_stored_file),
		T(test_wrong_key_content),
		T(test_missing_key),
		T(test_released_key),
		T(test_unknown_version),
		T(test_probe),
		T(test_dirty_counts_recounted),
		T(test_stale_data_trimmed),
		T(test_stale_slot_past_eof),
		T(test_nonces_and_file_ids),
		T(test_key_table_full),
		T(test_api_edges),
		T(test_rewrite_clears_stale_tail),
		T(test_writer_hooks),
		T(test_parallel_chunks),
		T(test_adaptive_compression),
		T(test_out_of_order_extension),
		T(test_replace_whole_file),
		T(test_replace_refusals),
		T(test_damaged_first_block),
		T(test_cut_short),
		T(test_huge_sparse),
		T(test_next_slot_pending),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
