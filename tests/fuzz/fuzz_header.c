/* Fuzz target: the chunk-file header - both copies, the plain-or-chunk
 * probe (rk_cf_probe_buf / rk_cf_probe), copy selection (rk_hdr_select),
 * decoding (rk_hdr_decode), damage detection and rk_cf_read_header on a
 * file.  A header that decodes must encode back to a copy that decodes to
 * the same fields (format 2: the wrap table too; seed corpus/header/v2-*). */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "rekeyfs/format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_quiet();
	return 0;
}

static void roundtrip(const struct rk_cf_header *h)
{
	uint8_t buf[RK_HDR_COPY_SIZE];
	struct rk_cf_header h2;
	rk_hdr_encode(h, buf);
	if (rk_hdr_decode(buf, &h2) != 0)
		abort(); /* a header that decoded must encode to a valid copy */
	if (h2.version != h->version || h2.flags != h->flags || h2.seq != h->seq || h2.size != h->size ||
	    h2.chunk_size != h->chunk_size || h2.slot_size != h->slot_size || h2.compression != h->compression ||
	    memcmp(h2.file_id, h->file_id, RK_FILE_ID_BYTES) != 0)
		abort();
	for (int i = 0; i < RK_CF_MAX_KEYS; i++) {
		const struct rk_cf_keyent *a = &h->keys[i], *b = &h2.keys[i];
		if (a->in_use != b->in_use || (a->in_use && (strcmp(a->name, b->name) != 0 || a->count != b->count ||
		                                              a->cipher != b->cipher || a->bits != b->bits ||
		                                              memcmp(a->fp, b->fp, RK_FP_BYTES) != 0)))
			abort();
		/* format 2: the wrap entry (zero in format 1) */
		if (a->in_use && (a->wrap_method != b->wrap_method || a->dek_len != b->dek_len || a->hist_n != b->hist_n ||
		                  a->wflags != b->wflags || memcmp(a->wnonce, b->wnonce, RK_NONCE_BYTES) != 0 ||
		                  memcmp(a->wtag, b->wtag, RK_TAG_BYTES) != 0 ||
		                  memcmp(a->wrapped, b->wrapped, RK_WRAP_CT_MAX) != 0 ||
		                  memcmp(a->hist, b->hist, sizeof(a->hist)) != 0))
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t area[RK_HDR_AREA];
	struct rk_cf_header h;
	struct rk_hdr_sel sel;
	size_t n = size < RK_HDR_AREA ? size : RK_HDR_AREA;
	int probe = rk_cf_probe_buf(data, n);
	if (probe < 0 || probe > 1)
		abort();
	memset(area, 0, sizeof(area));
	memcpy(area, data, n);
	for (int i = 0; i < 2; i++) {
		memset(&h, 0, sizeof(h));
		if (rk_hdr_decode(area + i * RK_HDR_COPY_SIZE, &h) == 0)
			roundtrip(&h);
	}
	for (int other = 0; other < 2; other++) {
		memset(&h, 0, sizeof(h));
		memset(&sel, 0, sizeof(sel));
		int r = rk_hdr_select(area, other, &h, &sel);
		if (r == 0) {
			if (sel.which != 0 && sel.which != 1)
				abort();
			roundtrip(&h);
			(void)rk_hdr_damaged_copy(area, sel.which);
		}
	}
	/* the same bytes as a stored file */
	int fd = fz_memfd(data, size);
	int which = -1;
	int pf = rk_cf_probe(fd);
	if (pf != probe)
		abort(); /* one rule: the buffer and the file must agree */
	memset(&h, 0, sizeof(h));
	if (rk_cf_read_header(fd, "/fuzz", &h, &which) == 0)
		roundtrip(&h);
	close(fd);
	return 0;
}
