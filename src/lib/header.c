/* rekeyfs - the chunk-file header codec (pure): encoding, checksum, decoding,
 * the plain/chunk probe and the selection of the current header copy. */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/format.h"

#include "format_int.h"

const uint8_t rk_magic[RK_MAGIC_LEN] = {0x89, 'R', 'K', 'F', 'S', 0x0d, 0x0a, 0x1a};

/* ---- header encoding -------------------------------------------------------------- */
void rk_hdr_encode(const struct rk_cf_header *h, uint8_t *buf)
{
	memset(buf, 0, RK_HDR_COPY_SIZE);
	memcpy(buf, rk_magic, RK_MAGIC_LEN);
	rk_put16(buf + 8, h->version);
	rk_put16(buf + 10, RK_HDR_COPY_SIZE);
	rk_put32(buf + 12, h->flags);
	rk_put64(buf + 16, h->seq);
	memcpy(buf + 24, h->file_id, RK_FILE_ID_BYTES);
	rk_put32(buf + 40, h->chunk_size);
	rk_put32(buf + 44, h->slot_size);
	rk_put64(buf + 48, h->size);
	buf[56] = h->compression;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		const struct rk_cf_keyent *e = &h->keys[j];
		uint8_t *p = buf + RK_HDR_KEYS_OFF + RK_HDR_KEY_ENTRY * j;
		if (!e->in_use)
			continue;
		memcpy(p, e->name, strnlen(e->name, RK_KEY_NAME_MAX));
		memcpy(p + 64, e->fp, RK_FP_BYTES);
		p[80] = (uint8_t)e->cipher;
		p[81] = 1;
		rk_put16(p + 82, e->bits);
		rk_put64(p + 88, e->count);
		if (h->version >= RK_FORMAT_V2)
			rk_wrap_entry_encode(e, buf + RK_HDR_WRAP_OFF + RK_HDR_WRAP_ENTRY * j);
	}
	rk_sha256(buf, RK_HDR_SUM_OFF, buf + RK_HDR_SUM_OFF);
}

void rk_wrap_entry_encode(const struct rk_cf_keyent *e, uint8_t *w)
{
	memset(w, 0, RK_HDR_WRAP_ENTRY);
	w[0] = e->wrap_method;
	w[1] = e->dek_len;
	w[2] = e->hist_n;
	w[3] = e->wflags;
	memcpy(w + 8, e->wnonce, RK_NONCE_BYTES);
	memcpy(w + 20, e->wtag, RK_TAG_BYTES);
	memcpy(w + 36, e->wrapped, RK_MIN((size_t)e->dek_len, (size_t)RK_WRAP_CT_MAX));
	for (int i = 0; i < e->hist_n && i < RK_WRAP_HIST; i++)
		memcpy(w + 84 + RK_FP_BYTES * i, e->hist[i], RK_FP_BYTES);
}

/* Are n bytes (at most a header copy) zero?  memcmp against zeros: the
 * v2 checks look at up to 2.5 KiB per copy, on every header decode (the
 * fsck fast path decodes one copy per file). */
static const uint8_t zeros[RK_HDR_COPY_SIZE];
static bool zero_run(const uint8_t *p, size_t n)
{
	return memcmp(p, zeros, n) == 0;
}

/* Decode and validate wrap entry w of key entry e (in use, v2): 0 or -EUCLEAN. */
static int wrap_entry_decode(const uint8_t *w, struct rk_cf_keyent *e)
{
	e->wrap_method = w[0];
	e->dek_len = w[1];
	e->hist_n = w[2];
	e->wflags = w[3];
	memcpy(e->wnonce, w + 8, RK_NONCE_BYTES);
	memcpy(e->wtag, w + 20, RK_TAG_BYTES);
	memcpy(e->wrapped, w + 36, RK_WRAP_CT_MAX);
	if ((e->wrap_method != RK_WRAP_METHOD_FILE &&
	     (e->wrap_method != RK_WRAP_METHOD_PKCS11 || e->cipher != RK_CIPHER_AES_GCM)) ||
	    (e->dek_len != 16 && e->dek_len != 32) ||
	    e->dek_len * 8u != e->bits || (e->cipher == RK_CIPHER_CHACHA20_POLY1305 && e->dek_len != 32) ||
	    e->hist_n > RK_WRAP_HIST || (e->wflags & ~(RK_WF_HIST_OVERFLOW | RK_WF_DERIVED)) ||
	    ((e->wflags & RK_WF_HIST_OVERFLOW) && e->hist_n != RK_WRAP_HIST) || !zero_run(w + 4, 4) ||
	    !zero_run(w + 36 + e->dek_len, RK_WRAP_CT_MAX - e->dek_len) ||
	    !zero_run(w + 84 + RK_FP_BYTES * e->hist_n, (size_t)RK_FP_BYTES * (RK_WRAP_HIST - e->hist_n)) ||
	    !zero_run(w + 148, 4))
		return -EUCLEAN;
	for (int i = 0; i < e->hist_n; i++)
		memcpy(e->hist[i], w + 84 + RK_FP_BYTES * i, RK_FP_BYTES);
	return 0;
}


int rk_hdr_decode(const uint8_t *buf, struct rk_cf_header *h)
{
	uint8_t sum[32];
	memset(h, 0, sizeof(*h));
	if (memcmp(buf, rk_magic, RK_MAGIC_LEN) != 0)
		return -ENOMSG;
	h->version = rk_get16(buf + 8);
	if (h->version == 0)
		return -EUCLEAN; /* no such version: a damaged or cut-short copy */
	if (h->version != RK_FORMAT_V1 && h->version != RK_FORMAT_V2)
		return -EPROTONOSUPPORT;
	rk_sha256(buf, RK_HDR_SUM_OFF, sum);
	if (CRYPTO_memcmp(sum, buf + RK_HDR_SUM_OFF, 32) != 0)
		return -EUCLEAN;
	if (rk_get16(buf + 10) != RK_HDR_COPY_SIZE)
		return -EUCLEAN;
	h->flags = rk_get32(buf + 12);
	h->seq = rk_get64(buf + 16);
	memcpy(h->file_id, buf + 24, RK_FILE_ID_BYTES);
	h->chunk_size = rk_get32(buf + 40);
	h->slot_size = rk_get32(buf + 44);
	h->size = rk_get64(buf + 48);
	h->compression = buf[56];
	if (h->chunk_size < RK_CHUNK_MIN || h->chunk_size > RK_CHUNK_MAX || (h->chunk_size & (h->chunk_size - 1)) ||
	    h->slot_size != h->chunk_size + RK_SLOT_OVERHEAD || h->compression > RK_COMP_SNAPPY ||
	    h->size > RK_SIZE_MAX)
		return -EUCLEAN;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		struct rk_cf_keyent *e = &h->keys[j];
		const uint8_t *p = buf + RK_HDR_KEYS_OFF + RK_HDR_KEY_ENTRY * j;
		const uint8_t *w = buf + RK_HDR_WRAP_OFF + RK_HDR_WRAP_ENTRY * j;
		if (h->version >= RK_FORMAT_V2 && (p[81] > 1 || (!(p[81] & 1) && !zero_run(w, RK_HDR_WRAP_ENTRY))))
			return -EUCLEAN;
		if (!(p[81] & 1))
			continue;
		e->in_use = true;
		memcpy(e->name, p, 64);
		e->name[RK_KEY_NAME_MAX] = '\0';
		memcpy(e->fp, p + 64, RK_FP_BYTES);
		e->cipher = (enum rk_cipher)p[80];
		e->bits = rk_get16(p + 82);
		e->count = rk_get64(p + 88);
		if (e->name[0] == '\0' || (e->cipher != RK_CIPHER_AES_GCM && e->cipher != RK_CIPHER_CHACHA20_POLY1305))
			return -EUCLEAN;
		/* v2: the name NUL padded exactly (the wrap AAD binds those bytes) */
		size_t nl = strnlen((const char *)p, 64);
		if (h->version >= RK_FORMAT_V2 && (nl > RK_KEY_NAME_MAX || !zero_run(p + nl, 64 - nl) ||
		                                   wrap_entry_decode(w, e) < 0))
			return -EUCLEAN;
	}
	if (h->version >= RK_FORMAT_V2 && !zero_run(buf + RK_WRAP_END, RK_HDR_SUM_OFF - RK_WRAP_END))
		return -EUCLEAN;
	return 0;
}

/* Does header copy buf (RK_HDR_COPY_SIZE bytes) identify a chunk file: the
 * magic, the copy size field, and a matching checksum? */
static bool copy_verifies(const uint8_t *buf)
{
	uint8_t sum[32];
	if (memcmp(buf, rk_magic, RK_MAGIC_LEN) != 0 || rk_get16(buf + 10) != RK_HDR_COPY_SIZE)
		return false;
	rk_sha256(buf, RK_HDR_SUM_OFF, sum);
	return CRYPTO_memcmp(sum, buf + RK_HDR_SUM_OFF, 32) == 0;
}

/* Is s (RK_SLOT_HDR bytes) a slot header as a writer leaves it: the slot
 * magic, a key index of the table, a known compression, both reserved
 * fields zero, plausible lengths? */
static bool slot_hdr_plausible(const uint8_t *s)
{
	uint32_t plain = rk_get32(s + 8), stored = rk_get32(s + 12);
	return memcmp(s, "RKC1", 4) == 0 && s[4] < RK_CF_MAX_KEYS && s[5] <= 1 && s[6] == 0 && s[7] == 0 &&
	       plain >= 1 && plain <= RK_CHUNK_MAX && stored >= 1 && stored <= RK_CHUNK_MAX && all_zero(s + 28, 4);
}

/* Both header copies' magic fields are zero (bytes past n count as zero)
 * and the file reaches past slot 0's header: the last rule may apply. */
static bool headers_gone(const uint8_t *buf, size_t n)
{
	uint8_t a[RK_MAGIC_LEN] = {0}, b[RK_MAGIC_LEN] = {0};
	memcpy(a, buf, RK_MIN(n, (size_t)RK_MAGIC_LEN));
	if (n > RK_HDR_COPY_SIZE)
		memcpy(b, buf + RK_HDR_COPY_SIZE, RK_MIN(n - RK_HDR_COPY_SIZE, (size_t)RK_MAGIC_LEN));
	return all_zero(a, RK_MAGIC_LEN) && all_zero(b, RK_MAGIC_LEN);
}

int rk_cf_probe_buf(const uint8_t *buf, size_t n)
{
	uint8_t copy[RK_HDR_COPY_SIZE];
	/* copy A starts with the magic: a chunk file, even when nothing else
	 * verifies (then its header is corrupt, never plain data) */
	if (n >= RK_MAGIC_LEN && memcmp(buf, rk_magic, RK_MAGIC_LEN) == 0)
		return 1;
	/* both copies lost (zeros: a crash before the header reached the disk)
	 * while slot 0 holds a chunk: a chunk file whose header is gone,
	 * unreadable, never plain data (zeros and ciphertext) */
	if (n >= RK_PROBE_AREA && headers_gone(buf, n) && slot_hdr_plausible(buf + RK_HDR_AREA))
		return 1;
	if (n < RK_HDR_COPY_SIZE + RK_MAGIC_LEN || memcmp(buf + RK_HDR_COPY_SIZE, rk_magic, RK_MAGIC_LEN) != 0)
		return 0;
	/* copy B has the magic.  A chunk file when it verifies (whatever copy A
	 * holds: damaged, overwritten, torn), or when copy A is zero (torn) or
	 * its magic is at most 2 bits off (damaged) */
	size_t have = RK_MIN(n - RK_HDR_COPY_SIZE, (size_t)RK_HDR_COPY_SIZE);
	memcpy(copy, buf + RK_HDR_COPY_SIZE, have);
	memset(copy + have, 0, sizeof(copy) - have); /* bytes past the end read as zero */
	if (copy_verifies(copy))
		return 1;
	int flipped = 0;
	for (int i = 0; i < RK_MAGIC_LEN; i++)
		flipped += __builtin_popcount((unsigned)(buf[i] ^ rk_magic[i]));
	return all_zero(buf, RK_MAGIC_LEN) || flipped <= 2 ? 1 : 0;
}

int rk_cf_probe_more(int fd, const uint8_t *buf, size_t n)
{
	int r = rk_cf_probe_buf(buf, n);
	uint8_t s[RK_SLOT_HDR];
	if (r != 0 || n != RK_HDR_AREA || !headers_gone(buf, n))
		return r;
	/* the rare case (a plain file starting with zeros in both places, or a
	 * chunk file that lost its header): one more small read */
	ssize_t m = rk_pread_full(fd, s, sizeof(s), RK_HDR_AREA);
	if (m < 0)
		return (int)m;
	return m == (ssize_t)sizeof(s) && slot_hdr_plausible(s) ? 1 : 0;
}

int rk_cf_probe(int fd)
{
	uint8_t *buf = rk_scratch(RK_SCR_HDR, RK_HDR_AREA);
	if (!buf)
		return -ENOMEM;
	ssize_t n = rk_pread_full(fd, buf, RK_MAGIC_LEN, 0);
	if (n < 0)
		return (int)n;
	if (n == RK_MAGIC_LEN && memcmp(buf, rk_magic, RK_MAGIC_LEN) == 0)
		return 1; /* the common case: one 8-byte read */
	if (n < RK_MAGIC_LEN)
		memset(buf + n, 0, (size_t)(RK_MAGIC_LEN - n));
	ssize_t m = rk_pread_full(fd, buf + RK_HDR_COPY_SIZE, RK_HDR_COPY_SIZE, RK_HDR_COPY_SIZE);
	if (m < 0)
		return (int)m;
	/* a file shorter than copy B's magic: only copy A's magic could count */
	size_t have = m > 0 ? (size_t)(RK_HDR_COPY_SIZE + m) : (size_t)n;
	/* only copy A's magic and copy B were read: the rest of copy A is not
	 * looked at by the rule */
	return rk_cf_probe_more(fd, buf, have);
}

int rk_hdr_select(const uint8_t *area, bool check_other, struct rk_cf_header *h, struct rk_hdr_sel *sel)
{
	struct rk_cf_header c[2];
	int first = rk_get64(area + RK_HDR_COPY_SIZE + 16) > rk_get64(area + 16) ? 1 : 0;
	sel->which = -1;
	sel->err[0] = sel->err[1] = 1;
	sel->version = 0;
	sel->err[first] = rk_hdr_decode(area + first * RK_HDR_COPY_SIZE, &c[first]);
	if (sel->err[first] != 0 || check_other)
		sel->err[1 - first] = rk_hdr_decode(area + (1 - first) * RK_HDR_COPY_SIZE, &c[1 - first]);
	/* both verify: the higher seq (the claims were the seqs) */
	if (sel->err[first] == 0)
		sel->which = first;
	else if (sel->err[1 - first] == 0)
		sel->which = 1 - first;
	if (sel->which >= 0) {
		*h = c[sel->which];
		return 0;
	}
	if (sel->err[0] == -EPROTONOSUPPORT || sel->err[1] == -EPROTONOSUPPORT) {
		sel->version = sel->err[0] == -EPROTONOSUPPORT ? c[0].version : c[1].version;
		return -EPROTONOSUPPORT;
	}
	if (sel->err[0] == -ENOMSG && sel->err[1] == -ENOMSG)
		return -ENOMSG;
	return -EUCLEAN;
}

int rk_hdr_damaged_copy(const uint8_t *area, int which)
{
	/* the copy in use verifies.  The other one is damage, not a torn write,
	 * when it lacks the magic and is not all zero, or when it is copy A and
	 * zero (copy A is written first, at creation; only copy B may be
	 * missing).  A torn or older copy keeps the magic. */
	const uint8_t *o = area + (1 - which) * RK_HDR_COPY_SIZE;
	bool zero = all_zero(o, RK_HDR_COPY_SIZE);
	if (memcmp(o, rk_magic, RK_MAGIC_LEN) != 0 && (!zero || which == 1))
		return 1 - which;
	return -1;
}

bool rk_hdr_copies_name(const uint8_t *area, const char *name)
{
	struct rk_cf_header h;
	for (int c = 0; c < 2; c++) {
		if (rk_hdr_decode(area + c * RK_HDR_COPY_SIZE, &h) != 0)
			continue;
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			if (h.keys[j].in_use && strcmp(h.keys[j].name, name) == 0)
				return true;
	}
	return false;
}

int rk_cf_read_header(int fd, const char *path, struct rk_cf_header *h, int *which)
{
	uint8_t *buf = rk_scratch(RK_SCR_HDR, RK_HDR_AREA);
	struct rk_hdr_sel sel;
	if (!buf)
		return -ENOMEM;
	ssize_t n = rk_pread_full(fd, buf, RK_HDR_AREA, 0);
	if (n < 0) {
		rk_err("%s: cannot read header: %s", path, strerror((int)-n));
		return (int)n;
	}
	if (n < RK_HDR_AREA)
		memset(buf + n, 0, (size_t)(RK_HDR_AREA - n));
	int ret = rk_hdr_select(buf, true, h, &sel);
	int pick = sel.which;
	if (ret == 0 && sel.err[1 - pick] != 0 && !all_zero(buf + (1 - pick) * RK_HDR_COPY_SIZE, RK_HDR_COPY_SIZE)) {
		/* a crash while writing the other copy, or damage: this copy may be
		 * older than the last state written */
		rk_warn("%s: header copy %c is %s; using copy %c (generation %" PRIu64 ")", path, 'A' + (1 - pick),
		        sel.err[1 - pick] == -EPROTONOSUPPORT ? "of an unknown version" : "corrupt or torn", 'A' + pick,
		        h->seq);
	}
	if (ret == 0) {
		if (which)
			*which = pick;
		return 0;
	}
	if (ret == -EPROTONOSUPPORT) {
		rk_err("%s: chunk-file format version %u is not supported by this rekeyfs (it reads versions %d and %d); "
		       "use the rekeyfs release that wrote it", path, sel.version, RK_FORMAT_V1, RK_FORMAT_V2);
		return -EPROTONOSUPPORT;
	}
	if (ret == -ENOMSG && n == RK_HDR_AREA && rk_cf_probe_more(fd, buf, RK_HDR_AREA) == 1) {
		rk_err("%s: the chunk-file header is gone (both copies zero, as a crash before it reached the disk "
		       "leaves them) while slot 0 holds a chunk: the file's chunks cannot be read", path);
		return -EUCLEAN;
	}
	if (ret == -ENOMSG)
		return -ENOMSG;
	rk_err("%s: corrupt chunk-file header: neither header copy passes its checksum", path);
	return -EUCLEAN;
}

uint64_t rk_cf_stored_len(uint32_t chunk_size, uint64_t size)
{
	if (size == 0)
		return RK_HDR_AREA;
	return rk_slot_off(chunk_size + RK_SLOT_OVERHEAD, rk_chunk_count(size, chunk_size));
}
