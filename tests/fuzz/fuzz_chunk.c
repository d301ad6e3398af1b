/* Fuzz target: a chunk file - its header, its slots and their sealed
 * chunks under the fixed test key (fuzz_common.h).  The input is a whole
 * stored file: it is opened read-only and every chunk present is read (at
 * most 64, as the daemon would: rk_cf_next_slot, rk_cf_read_chunk,
 * rk_cf_pread), then opened writable (recount of a dirty header) and
 * written over (a read-modify-write of a possibly corrupt chunk, a
 * truncation, a sync).  Any result is fine except a crash, a sanitizer
 * report or a read that claims success with bytes it did not produce. */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "rekeyfs/format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct fz_box box;
static uint8_t chunk[RK_CHUNK_MAX];
#define MAX_CHUNKS 64

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_quiet();
	fz_box_init(&box);
	return 0;
}

static void read_all(struct rk_cf *cf)
{
	uint64_t n = rk_cf_nchunks(cf), first = 0, per_key[RK_CF_MAX_KEYS];
	uint64_t idx = 0;
	int seen = 0;
	(void)rk_cf_missing(cf, &first, per_key);
	while (seen < MAX_CHUNKS && (idx = rk_cf_next_slot(cf, idx, n)) < n) {
		int key_idx = -2;
		uint32_t cs = rk_cf_chunk_size(cf);
		memset(chunk, 0xa5, cs);
		(void)rk_cf_chunk_keyidx(cf, idx, &key_idx);
		if (rk_cf_read_chunk(cf, idx, chunk, &key_idx) == 0 && (key_idx < -1 || key_idx >= RK_CF_MAX_KEYS))
			abort();
		idx++;
		seen++;
	}
	uint8_t buf[256];
	rk_cf_read_error_clear();
	ssize_t r = rk_cf_pread(cf, buf, sizeof(buf), 0);
	if (r > (ssize_t)sizeof(buf))
		abort();
	uint64_t ei;
	char cause[RK_CF_CAUSE_MAX];
	(void)rk_cf_read_error(&ei, cause, sizeof(cause));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rk_cf *cf = NULL;
	int fd = fz_memfd(data, size);
	if (rk_cf_open(fd, "/fuzz", box.kr, false, &cf) == 0) {
		read_all(cf);
		rk_cf_close(cf);
	}
	cf = NULL;
	if (rk_cf_open(fd, "/fuzz", box.kr, true, &cf) == 0) {
		uint8_t pat[64];
		memset(pat, 0x5a, sizeof(pat));
		uint64_t sz = rk_cf_size(cf);
		(void)rk_cf_pwrite(cf, pat, sizeof(pat), 100, box.key, RK_COMP_SNAPPY);
		if (sz > 0)
			(void)rk_cf_truncate(cf, (sz < 3 * (uint64_t)rk_cf_chunk_size(cf) ? sz : 3 * (uint64_t)rk_cf_chunk_size(cf)) / 2,
			                     box.key, RK_COMP_NONE);
		(void)rk_cf_sync(cf);
		read_all(cf);
		rk_cf_close(cf);
	}
	close(fd);
	return 0;
}
