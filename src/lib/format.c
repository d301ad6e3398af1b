/* rekeyfs - the chunk-file format: headers, slots, sealing, byte access.
 * The layout is described in include/rekeyfs/format.h and man/rekeyfs.5. */
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
#include "rekeyfs/lockrank.h"

const uint8_t rk_magic[RK_MAGIC_LEN] = {0x89, 'R', 'K', 'F', 'S', 0x0d, 0x0a, 0x1a};
static const uint8_t slot_magic[4] = {'R', 'K', 'C', '1'};

/* ---- per-thread scratch buffers ------------------------------------------------ */
#define RK_NSCRATCH 6
struct scratch {
	uint8_t *p[RK_NSCRATCH];
	size_t len[RK_NSCRATCH];
};
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *arg)
{
	struct scratch *s = arg;
	for (int i = 0; i < RK_NSCRATCH; i++)
		free(s->p[i]);
	free(s);
}

static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

uint8_t *rk_scratch(int which, size_t len)
{
	pthread_once(&scratch_once, scratch_init);
	struct scratch *s = pthread_getspecific(scratch_key);
	if (!s) {
		s = calloc(1, sizeof(*s));
		if (!s)
			return NULL;
		pthread_setspecific(scratch_key, s);
	}
	if (s->len[which] < len) {
		/* grow in 64 KiB steps: after warm-up no request allocates */
		size_t want = (len + 65535) / 65536 * 65536;
		uint8_t *np = aligned_alloc(4096, (want + 4095) / 4096 * 4096);
		if (!np)
			return NULL;
		free(s->p[which]);
		s->p[which] = np;
		s->len[which] = want;
	}
	return s->p[which];
}

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
	}
	rk_sha256(buf, RK_HDR_SUM_OFF, buf + RK_HDR_SUM_OFF);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
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
	if (h->version != RK_FORMAT_VERSION)
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
	}
	return 0;
}

/* Does header copy buf (RK_HDR_COPY_SIZE bytes) identify a chunk file: the
 * magic, version 1, the copy size field, and a matching checksum? */
static bool copy_verifies(const uint8_t *buf)
{
	uint8_t sum[32];
	if (memcmp(buf, rk_magic, RK_MAGIC_LEN) != 0 || rk_get16(buf + 10) != RK_HDR_COPY_SIZE)
		return false;
	rk_sha256(buf, RK_HDR_SUM_OFF, sum);
	return CRYPTO_memcmp(sum, buf + RK_HDR_SUM_OFF, 32) == 0;
}

int rk_cf_probe_buf(const uint8_t *buf, size_t n)
{
	uint8_t copy[RK_HDR_COPY_SIZE];
	/* copy A starts with the magic: a chunk file, even when nothing else
	 * verifies (then its header is corrupt, never plain data) */
	if (n >= RK_MAGIC_LEN && memcmp(buf, rk_magic, RK_MAGIC_LEN) == 0)
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

int rk_cf_probe(int fd)
{
	uint8_t *buf = rk_scratch(5, RK_HDR_AREA);
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
	return rk_cf_probe_buf(buf, m > 0 ? (size_t)(RK_HDR_COPY_SIZE + m) : (size_t)n);
}

int rk_cf_read_header(int fd, const char *path, struct rk_cf_header *h, int *which)
{
	uint8_t *buf = rk_scratch(5, RK_HDR_AREA);
	struct rk_cf_header c[2];
	int r[2];
	if (!buf)
		return -ENOMEM;
	ssize_t n = rk_pread_full(fd, buf, RK_HDR_AREA, 0);
	if (n < 0) {
		rk_err("%s: cannot read header: %s", path, strerror((int)-n));
		return (int)n;
	}
	if (n < RK_HDR_AREA)
		memset(buf + n, 0, (size_t)(RK_HDR_AREA - n));
	for (int i = 0; i < 2; i++)
		r[i] = rk_hdr_decode(buf + i * RK_HDR_COPY_SIZE, &c[i]);
	int pick = -1;
	if (r[0] == 0 && r[1] == 0)
		pick = c[1].seq > c[0].seq ? 1 : 0;
	else if (r[0] == 0)
		pick = 0;
	else if (r[1] == 0)
		pick = 1;
	if (pick >= 0 && r[1 - pick] != 0 && !all_zero(buf + (1 - pick) * RK_HDR_COPY_SIZE, RK_HDR_COPY_SIZE)) {
		/* a crash while writing the other copy, or damage: this copy may be
		 * older than the last state written */
		rk_warn("%s: header copy %c is %s; using copy %c (generation %" PRIu64 ")", path, 'A' + (1 - pick),
		        r[1 - pick] == -EPROTONOSUPPORT ? "of an unknown version" : "corrupt or torn", 'A' + pick,
		        c[pick].seq);
	}
	if (pick >= 0) {
		*h = c[pick];
		if (which)
			*which = pick;
		return 0;
	}
	if (r[0] == -EPROTONOSUPPORT || r[1] == -EPROTONOSUPPORT) {
		unsigned v = r[0] == -EPROTONOSUPPORT ? c[0].version : c[1].version;
		rk_err("%s: chunk-file format version %u is not supported by this rekeyfs (it reads version %d); "
		       "use the rekeyfs release that wrote it", path, v, RK_FORMAT_VERSION);
		return -EPROTONOSUPPORT;
	}
	if (r[0] == -ENOMSG && r[1] == -ENOMSG)
		return -ENOMSG;
	rk_err("%s: corrupt chunk-file header: neither header copy passes its checksum", path);
	return -EUCLEAN;
}

uint64_t rk_cf_stored_len(uint32_t chunk_size, uint64_t size)
{
	if (size == 0)
		return RK_HDR_AREA;
	uint64_t n = (size + chunk_size - 1) / chunk_size;
	return rk_slot_off(chunk_size + RK_SLOT_OVERHEAD, n);
}

/* ---- open chunk files ----------------------------------------------------------------- */
struct keyslot {
	struct rk_key *key; /* keyring key, resolved on first use */
	int err;            /* resolution error (cached) */
	bool resolved;
	uint8_t *subkey;    /* secure memory, RK_MAX_KEY_BYTES */
};

struct rk_cf {
	int fd;
	char *path;
	struct rk_keyring *kr;
	bool writable;
	pthread_mutex_t lock;           /* rank RK_RANK_CF (80): header state, key slots */
	pthread_mutex_t times_lock;     /* rank RK_RANK_CF_TIMES (82): user-visible times vs. format-only writes */
	struct rk_cf_header hdr;         /* in-memory header: exact counts, current size */
	int cur_copy;                    /* copy holding the newest header on disk */
	bool hdr_changed;                /* in-memory header differs from disk */
	bool counts_changed;             /* counts changed since last clean sync */
	bool disk_dirty;                 /* disk header has COUNTS_DIRTY */
	bool disk_keys[RK_CF_MAX_KEYS];  /* entry present in the disk header */
	bool tail_ok;                    /* last partial chunk holds no bytes past EOF */
	bool copies_equal;               /* both header copies hold the current clean state */
	struct keyslot ks[RK_CF_MAX_KEYS];
	struct rk_cf_writer writer;
	rk_cf_read_hook read_hook;
	void *read_hook_arg;
	/* chunks of this file that did not compress in a row: past a few,
	 * compression is only retried now and then (database files are often
	 * compressed or encrypted already) */
	atomic_uint incompressible;
	atomic_uint comp_skips;
	/* bytes the last slot read used: sizes the next read (slots of a
	 * compressed file hold mostly hole; reading it costs zero-filling) */
	atomic_uint read_hint;
	/* writable files only: slots from first_fresh on lay past the stored
	 * file's end when it was opened (or created), so they are holes unless
	 * written since (bit set in fresh_bits, protected by lock).  Reading a
	 * hole to learn that it is one costs a read-ahead that zero-fills page
	 * cache pages; writes that arrive out of order (write-back) would pay it
	 * for every chunk.  Slots from fresh_limit on are not tracked. */
	atomic_uint_fast64_t first_fresh; /* read without the lock: see slot_fresh_hole */
	uint64_t fresh_limit;
	uint64_t *fresh_bits;
	size_t fresh_words;
	/* writable files only: slots below first_fresh written since the open
	 * (protected by lock).  With a journal a written slot may exist only as
	 * a pending image while the disk still has a hole there, so
	 * rk_cf_next_slot must not skip it.  NULL with low_untracked: too many
	 * slots to track, nothing below first_fresh is skipped. */
	uint64_t *low_bits;
	size_t low_words;
	bool low_untracked;
	/* a file cut short (see rk_cf_missing): slots [miss_from, miss_end) are
	 * not in the stored file although the clean header counted miss_count
	 * more chunks than were present (protected by lock) */
	uint64_t miss_from, miss_end, miss_count;
	uint64_t miss_per_key[RK_CF_MAX_KEYS];
};

#define RK_FRESH_MAX_WORDS (1u << 17) /* 1 MiB of bits: 8M slots */

/* Is slot idx a hole we know of without reading it? */
static bool slot_fresh_hole(struct rk_cf *cf, uint64_t idx)
{
	/* most reads are of slots that existed at open: no lock for them
	 * (first_fresh only moves down, by a truncation, which callers never run
	 * alongside reads of the same file) */
	if (!cf->writable || idx < atomic_load(&cf->first_fresh))
		return false;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	bool hole = false;
	if (idx >= cf->first_fresh && idx < cf->fresh_limit) {
		uint64_t b = idx - cf->first_fresh;
		hole = b / 64 >= cf->fresh_words || !(cf->fresh_bits[b / 64] & (1ULL << (b % 64)));
	}
	rk_mutex_unlock(&cf->lock);
	return hole;
}

/* Slot idx has been written.  Caller holds cf->lock. */
static void slot_mark_written_locked(struct rk_cf *cf, uint64_t idx)
{
	if (cf->writable && idx < cf->first_fresh && cf->low_bits && idx / 64 < cf->low_words)
		cf->low_bits[idx / 64] |= 1ULL << (idx % 64);
	if (!cf->writable || idx < cf->first_fresh || idx >= cf->fresh_limit)
		return;
	uint64_t b = idx - cf->first_fresh, w = b / 64;
	if (w >= cf->fresh_words) {
		size_t n = cf->fresh_words ? cf->fresh_words : 64;
		while (n <= w)
			n *= 2;
		uint64_t *nb = n <= RK_FRESH_MAX_WORDS ? realloc(cf->fresh_bits, n * sizeof(uint64_t)) : NULL;
		if (!nb) {
			cf->fresh_limit = idx; /* stop tracking here: read such slots */
			return;
		}
		memset(nb + cf->fresh_words, 0, (n - cf->fresh_words) * sizeof(uint64_t));
		cf->fresh_bits = nb;
		cf->fresh_words = n;
	}
	cf->fresh_bits[w] |= 1ULL << (b % 64);
}

/* Slots from first_dead on were cut off the stored file: holes again. */
static void slots_cut_locked(struct rk_cf *cf, uint64_t first_dead)
{
	/* slots cut off are no longer missing: a later extension makes holes */
	if (cf->miss_end > first_dead)
		cf->miss_end = RK_MAX(first_dead, cf->miss_from);
	if (first_dead <= cf->first_fresh) {
		cf->first_fresh = first_dead;
		if (cf->fresh_bits)
			memset(cf->fresh_bits, 0, cf->fresh_words * sizeof(uint64_t));
		return;
	}
	uint64_t b = first_dead - cf->first_fresh;
	for (uint64_t w = b / 64; w < cf->fresh_words; w++)
		cf->fresh_bits[w] &= w == b / 64 ? (1ULL << (b % 64)) - 1 : 0;
}

int rk_cf_fd(const struct rk_cf *cf) { return cf->fd; }
const char *rk_cf_path(const struct rk_cf *cf) { return cf->path; }
uint32_t rk_cf_chunk_size(const struct rk_cf *cf) { return cf->hdr.chunk_size; }

void rk_cf_set_path(struct rk_cf *cf, const char *path)
{
	char *np = strdup(path);
	if (!np)
		return;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	free(cf->path);
	cf->path = np;
	rk_mutex_unlock(&cf->lock);
}

uint64_t rk_cf_size(struct rk_cf *cf)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	uint64_t s = cf->hdr.size;
	rk_mutex_unlock(&cf->lock);
	return s;
}

uint64_t rk_cf_nchunks(struct rk_cf *cf)
{
	uint64_t s = rk_cf_size(cf);
	return (s + cf->hdr.chunk_size - 1) / cf->hdr.chunk_size;
}

bool rk_cf_disk_dirty(struct rk_cf *cf)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	bool d = cf->disk_dirty || cf->counts_changed;
	rk_mutex_unlock(&cf->lock);
	return d;
}

void rk_cf_get_header(struct rk_cf *cf, struct rk_cf_header *out)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	*out = cf->hdr;
	rk_mutex_unlock(&cf->lock);
}

int rk_zero_range(int fd, uint64_t off, uint64_t len)
{
	static const uint8_t zeros[4096];
	uint64_t end = off + len;
	uint64_t a = (off + 4095) / 4096 * 4096, b = end / 4096 * 4096;
	if (a < b) {
		if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a, (off_t)(b - a)) < 0) {
			a = b = end; /* no hole punching here: write zeros throughout */
		}
	} else {
		a = b = end;
	}
	for (uint64_t p = off; p < a;) {
		size_t n = (size_t)RK_MIN((uint64_t)sizeof(zeros), a - p);
		int ret = rk_pwrite_full(fd, zeros, n, (off_t)p);
		if (ret < 0)
			return ret;
		p += n;
	}
	for (uint64_t p = b; p < end;) {
		size_t n = (size_t)RK_MIN((uint64_t)sizeof(zeros), end - p);
		int ret = rk_pwrite_full(fd, zeros, n, (off_t)p);
		if (ret < 0)
			return ret;
		p += n;
	}
	return 0;
}

int rk_write_slot_direct(int fd, uint64_t off, const uint8_t *slot, size_t len)
{
	int ret = rk_pwrite_full(fd, slot + RK_SLOT_HDR, len - RK_SLOT_HDR, (off_t)(off + RK_SLOT_HDR));
	if (ret == 0) {
		rk_crashpoint("slot.payload-written");
		ret = rk_pwrite_full(fd, slot, RK_SLOT_HDR, (off_t)off);
	}
	return ret;
}

static int default_write_slot(void *ctx, struct rk_cf *cf, uint64_t idx, const uint8_t *slot, size_t len,
                              size_t old_end)
{
	(void)ctx;
	uint64_t off = rk_slot_off(cf->hdr.slot_size, idx);
	int ret = old_end == 0 ? rk_write_slot_direct(cf->fd, off, slot, len)
	                       : rk_pwrite_full(cf->fd, slot, len, (off_t)off);
	if (ret == 0 && old_end > len)
		ret = rk_zero_range(cf->fd, off + len, old_end - len);
	return ret;
}

static const struct rk_cf_writer default_writer = {default_write_slot, NULL, NULL, NULL};

void rk_cf_file_id(const struct rk_cf *cf, uint8_t out[RK_FILE_ID_BYTES])
{
	memcpy(out, cf->hdr.file_id, RK_FILE_ID_BYTES);
}

uint32_t rk_cf_slot_size(const struct rk_cf *cf) { return cf->hdr.slot_size; }

static ssize_t slot_pread(struct rk_cf *cf, uint64_t idx, uint8_t *buf, size_t len);

/* Read the used part of slot idx into buf (slot_size bytes of room): a
 * first read sized from the previous slot of this file, then the rest of
 * the sealed chunk if it is longer.  Returns the bytes read (a hole or a
 * short file gives fewer than the slot header). */
static ssize_t slot_read_used(struct rk_cf *cf, uint64_t idx, uint8_t *buf)
{
	size_t ss = cf->hdr.slot_size;
	if (cf->writer.read_slot) {
		ssize_t n = cf->writer.read_slot(cf->writer.ctx, cf, idx, buf, ss);
		if (n != -ENOENT)
			return n;
	}
	if (slot_fresh_hole(cf, idx))
		return 0;
	size_t hint = atomic_load(&cf->read_hint);
	size_t first = hint ? RK_MIN(ss, (hint + 4095) / 4096 * 4096) : ss;
	uint64_t off = rk_slot_off(ss, idx);
	ssize_t n = rk_pread_full(cf->fd, buf, first, (off_t)off);
	if (n < (ssize_t)first || n < RK_SLOT_HDR || all_zero(buf, RK_SLOT_HDR))
		return n; /* end of file, or a hole */
	uint32_t stored = rk_get32(buf + 12);
	size_t need = stored <= cf->hdr.chunk_size ? RK_SLOT_HDR + (size_t)stored + RK_TAG_BYTES : ss;
	if (need > (size_t)n) {
		ssize_t m = rk_pread_full(cf->fd, buf + n, need - (size_t)n, (off_t)(off + (uint64_t)n));
		if (m < 0)
			return m;
		n += m;
	}
	atomic_store(&cf->read_hint, (unsigned)need);
	return n;
}

/* Read a slot (or its first len bytes): a pending newer image if the writer
 * has one, else the disk. */
static ssize_t slot_pread(struct rk_cf *cf, uint64_t idx, uint8_t *buf, size_t len)
{
	if (cf->writer.read_slot) {
		ssize_t n = cf->writer.read_slot(cf->writer.ctx, cf, idx, buf, len);
		if (n != -ENOENT)
			return n;
	}
	if (slot_fresh_hole(cf, idx))
		return 0;
	return rk_pread_full(cf->fd, buf, len, (off_t)rk_slot_off(cf->hdr.slot_size, idx));
}

void rk_cf_get_writer(const struct rk_cf *cf, struct rk_cf_writer *w) { *w = cf->writer; }

void rk_cf_set_read_hook(struct rk_cf *cf, rk_cf_read_hook fn, void *arg)
{
	cf->read_hook = fn;
	cf->read_hook_arg = arg;
}

int rk_cf_key_entry(struct rk_cf *cf, const struct rk_key *key)
{
	int found = -1;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	for (int j = 0; j < RK_CF_MAX_KEYS && found < 0; j++) {
		const struct rk_cf_keyent *e = &cf->hdr.keys[j];
		if (e->in_use && strcmp(e->name, key->name) == 0 && memcmp(e->fp, key->fp, RK_FP_BYTES) == 0)
			found = j;
	}
	rk_mutex_unlock(&cf->lock);
	return found;
}

void rk_cf_set_writer(struct rk_cf *cf, const struct rk_cf_writer *w)
{
	cf->writer = w ? *w : default_writer;
}

static struct rk_cf *cf_alloc(int fd, const char *path, struct rk_keyring *kr, bool writable)
{
	struct rk_cf *cf = calloc(1, sizeof(*cf));
	if (!cf)
		return NULL;
	cf->path = strdup(path);
	if (!cf->path) {
		free(cf);
		return NULL;
	}
	cf->fd = fd;
	cf->kr = kr;
	cf->writable = writable;
	pthread_mutex_init(&cf->lock, NULL);
	pthread_mutex_init(&cf->times_lock, NULL);
	cf->writer = default_writer;
	cf->fresh_limit = UINT64_MAX;
	return cf;
}

static void ks_clear(struct keyslot *s)
{
	if (s->subkey)
		rk_secure_free(s->subkey, RK_MAX_KEY_BYTES);
	memset(s, 0, sizeof(*s));
}

void rk_cf_close(struct rk_cf *cf)
{
	if (!cf)
		return;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++)
		ks_clear(&cf->ks[j]);
	pthread_mutex_destroy(&cf->lock);
	pthread_mutex_destroy(&cf->times_lock);
	free(cf->fresh_bits);
	free(cf->low_bits);
	free(cf->path);
	free(cf);
}

void rk_cf_forget_key(struct rk_cf *cf, const char *name)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		struct keyslot *s = &cf->ks[j];
		if (!cf->hdr.keys[j].in_use || strcmp(cf->hdr.keys[j].name, name) != 0)
			continue;
		/* wipe the derived key but keep its page mapped until close (a reader
		 * that holds the pointer fails authentication instead of touching
		 * unmapped memory); the next use resolves the key again, which a
		 * released key refuses */
		if (s->subkey)
			OPENSSL_cleanse(s->subkey, RK_MAX_KEY_BYTES);
		s->resolved = false;
		s->err = 0;
		s->key = NULL;
	}
	rk_mutex_unlock(&cf->lock);
}

static int hdr_write_times_kept(struct rk_cf *cf, bool dirty);

void rk_cf_times_lock(struct rk_cf *cf) { rk_mutex_lock(&cf->times_lock, RK_RANK_CF_TIMES); }
void rk_cf_times_unlock(struct rk_cf *cf) { rk_mutex_unlock(&cf->times_lock); }

void rk_cf_times_save(struct rk_cf *cf, struct rk_times *t)
{
	struct stat st;
	rk_mutex_lock(&cf->times_lock, RK_RANK_CF_TIMES);
	t->ok = fstat(cf->fd, &st) == 0;
	if (t->ok) {
		t->ts[0] = st.st_atim;
		t->ts[1] = st.st_mtim;
	}
}

void rk_cf_times_restore(struct rk_cf *cf, struct rk_times *t)
{
	struct stat st;
	if (t->ok && fstat(cf->fd, &st) == 0 &&
	    (st.st_mtim.tv_sec != t->ts[1].tv_sec || st.st_mtim.tv_nsec != t->ts[1].tv_nsec ||
	     st.st_atim.tv_sec != t->ts[0].tv_sec || st.st_atim.tv_nsec != t->ts[0].tv_nsec))
		(void)futimens(cf->fd, t->ts);
	rk_mutex_unlock(&cf->times_lock);
}

/* Write the in-memory header to the older copy.  Caller holds cf->lock. */
static int hdr_write_locked(struct rk_cf *cf, bool dirty)
{
	struct rk_times t;
	rk_cf_times_save(cf, &t);
	int ret = hdr_write_times_kept(cf, dirty);
	rk_cf_times_restore(cf, &t);
	return ret;
}

static int hdr_write_times_kept(struct rk_cf *cf, bool dirty)
{
	uint8_t buf[RK_HDR_COPY_SIZE] __attribute__((aligned(64)));
	struct rk_cf_header h = cf->hdr;
	h.seq = cf->hdr.seq + 1;
	h.flags = dirty ? (h.flags | RK_HF_COUNTS_DIRTY) : (h.flags & ~RK_HF_COUNTS_DIRTY);
	rk_hdr_encode(&h, buf);
	int target = 1 - cf->cur_copy;
	int ret = rk_pwrite_full(cf->fd, buf, sizeof(buf), (off_t)target * RK_HDR_COPY_SIZE);
	if (ret < 0) {
		rk_err("%s: cannot write header: %s", cf->path, strerror(-ret));
		return ret;
	}
	cf->hdr.seq = h.seq;
	cf->hdr.flags = h.flags;
	cf->cur_copy = target;
	cf->disk_dirty = dirty;
	cf->hdr_changed = false;
	cf->copies_equal = false;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++)
		cf->disk_keys[j] = cf->hdr.keys[j].in_use;
	return 0;
}

int rk_cf_create(int fd, const char *path, struct rk_keyring *kr, uint32_t chunk_size, enum rk_comp comp,
                 struct rk_key *key, struct rk_cf **out)
{
	int ret;
	if (chunk_size < RK_CHUNK_MIN || chunk_size > RK_CHUNK_MAX || (chunk_size & (chunk_size - 1)))
		return -EINVAL;
	struct rk_cf *cf = cf_alloc(fd, path, kr, true);
	if (!cf)
		return -ENOMEM;
	cf->hdr.version = RK_FORMAT_VERSION;
	cf->hdr.chunk_size = chunk_size;
	cf->hdr.slot_size = chunk_size + RK_SLOT_OVERHEAD;
	cf->hdr.compression = (uint8_t)comp;
	cf->hdr.seq = 0;
	cf->cur_copy = 1; /* first write goes to copy A */
	ret = rk_random(cf->hdr.file_id, RK_FILE_ID_BYTES);
	if (ret < 0)
		goto fail;
	if (key) {
		struct rk_cf_keyent *e = &cf->hdr.keys[0];
		e->in_use = true;
		snprintf(e->name, sizeof(e->name), "%s", key->name);
		memcpy(e->fp, key->fp, RK_FP_BYTES);
		e->cipher = key->cipher;
		e->bits = (uint16_t)key->bits;
	}
	cf->tail_ok = true;
	ret = hdr_write_locked(cf, true);
	if (ret < 0)
		goto fail;
	*out = cf;
	return 0;
fail:
	rk_cf_close(cf);
	return ret;
}

static int cf_recount_locked(struct rk_cf *cf);
static int find_missing(struct rk_cf *cf);

int rk_cf_open(int fd, const char *path, struct rk_keyring *kr, bool writable, struct rk_cf **out)
{
	int ret, which;
	struct rk_cf *cf = cf_alloc(fd, path, kr, writable);
	if (!cf)
		return -ENOMEM;
	ret = rk_cf_read_header(fd, path, &cf->hdr, &which);
	if (ret < 0)
		goto fail;
	cf->cur_copy = which;
	cf->disk_dirty = cf->hdr.flags & RK_HF_COUNTS_DIRTY;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++)
		cf->disk_keys[j] = cf->hdr.keys[j].in_use;
	if (writable) {
		/* Cleanup after a crash: no slot data may live past EOF, or a later
		 * extension would expose it. */
		struct stat st;
		uint64_t want = rk_cf_stored_len(cf->hdr.chunk_size, cf->hdr.size);
		if (fstat(fd, &st) == 0 && (uint64_t)st.st_size > want) {
			rk_info("%s: removing %" PRIu64 " stale bytes past the end of the file (left by a crash)", path,
			        (uint64_t)st.st_size - want);
			if (ftruncate(fd, (off_t)want) < 0) {
				ret = -errno;
				rk_err("%s: cannot trim stale data: %s", path, strerror(errno));
				goto fail;
			}
			st.st_size = (off_t)want;
		}
		if (fstat(fd, &st) == 0) {
			uint64_t end = (uint64_t)st.st_size;
			cf->first_fresh = end <= RK_HDR_AREA ? 0 : (end - RK_HDR_AREA + cf->hdr.slot_size - 1) / cf->hdr.slot_size;
		} else {
			cf->fresh_limit = 0; /* unknown: read every slot */
		}
		if (cf->first_fresh > 0 && cf->fresh_limit > 0) {
			size_t words = (size_t)RK_MIN(cf->first_fresh / 64 + 1, (uint64_t)RK_FRESH_MAX_WORDS + 1);
			cf->low_bits = words <= RK_FRESH_MAX_WORDS ? calloc(words, sizeof(uint64_t)) : NULL;
			cf->low_words = cf->low_bits ? words : 0;
			cf->low_untracked = !cf->low_bits;
		} else if (cf->fresh_limit == 0) {
			cf->low_untracked = true;
		}
		if (cf->disk_dirty) {
			/* exact counts in memory; the disk header stays marked dirty
			 * (readers recount it) until the next rk_cf_sync makes it clean:
			 * no fdatasync on the open path */
			rk_mutex_lock(&cf->lock, RK_RANK_CF);
			ret = cf_recount_locked(cf);
			rk_mutex_unlock(&cf->lock);
			if (ret < 0)
				goto fail;
		}
	}
	if (!cf->disk_dirty) {
		ret = find_missing(cf);
		if (ret < 0)
			goto fail;
	}
	*out = cf;
	return 0;
fail:
	rk_cf_close(cf);
	return ret;
}

/* Resolve header entry j to a usable subkey.  Caller holds cf->lock. */
static int ks_resolve_locked(struct rk_cf *cf, int j, struct rk_key **keyp, const uint8_t **subkey)
{
	struct keyslot *s = &cf->ks[j];
	struct rk_cf_keyent *e = &cf->hdr.keys[j];
	if (!s->resolved) {
		struct rk_key *k = NULL;
		int err = cf->kr ? rk_keyring_get(cf->kr, e->name, &k) : -ENOKEY;
		if (err == 0 && CRYPTO_memcmp(k->fp, e->fp, RK_FP_BYTES) != 0)
			err = -EKEYREJECTED;
		if (err == 0 && k->cipher != e->cipher)
			err = -EKEYREJECTED;
		if (err == 0) {
			if (!s->subkey)
				s->subkey = rk_secure_alloc(RK_MAX_KEY_BYTES);
			if (!s->subkey)
				return -ENOMEM;
			err = rk_derive_file_key(k->cipher, k->material, k->keylen, cf->hdr.file_id, s->subkey, k->keylen);
			if (err < 0) {
				OPENSSL_cleanse(s->subkey, RK_MAX_KEY_BYTES);
				return err;
			}
		}
		s->key = err == 0 ? k : NULL;
		s->err = err;
		s->resolved = true;
	}
	if (s->err == 0 && (!s->key->material || s->key->released)) {
		/* released since we derived the subkey */
		if (s->subkey)
			OPENSSL_cleanse(s->subkey, RK_MAX_KEY_BYTES);
		s->key = NULL;
		s->err = -EKEYREVOKED;
	}
	if (s->err)
		return s->err;
	*keyp = s->key;
	*subkey = s->subkey;
	return 0;
}

static const char *key_err_text(int err)
{
	switch (err) {
	case -ENOKEY:
		return "which is not in the key directory";
	case -EKEYREVOKED:
		return "which has been released";
	case -EKEYREJECTED:
		return "but the key file of that name has different content (fingerprint mismatch)";
	case -EPERM:
		return "whose key file is refused (loose permissions)";
	default:
		return "which cannot be loaded";
	}
}

/* Parsed slot header */
struct slothdr {
	int key_idx;
	uint8_t comp;
	uint32_t plain_len;
	uint32_t stored_len;
	const uint8_t *nonce;
};

/* 1 hole, 0 parsed, -EUCLEAN malformed (cause in *why) */
static int slot_parse(const struct rk_cf *cf, const struct rk_cf_header *h, const uint8_t *p, size_t avail,
                      struct slothdr *s, const char **why)
{
	if (avail == 0 || (avail >= RK_SLOT_HDR && all_zero(p, RK_SLOT_HDR)) || (avail < RK_SLOT_HDR && all_zero(p, avail)))
		return 1;
	(void)cf;
	if (avail < RK_SLOT_HDR) {
		*why = "slot is truncated";
		return -EUCLEAN;
	}
	if (memcmp(p, slot_magic, 4) != 0) {
		*why = "slot header has no chunk magic";
		return -EUCLEAN;
	}
	s->key_idx = p[4];
	s->comp = p[5];
	s->plain_len = rk_get32(p + 8);
	s->stored_len = rk_get32(p + 12);
	s->nonce = p + 16;
	if (s->key_idx >= RK_CF_MAX_KEYS || !h->keys[s->key_idx].in_use) {
		*why = "slot names a key entry the header does not have";
		return -EUCLEAN;
	}
	if (s->comp > RK_COMP_SNAPPY || s->plain_len == 0 || s->plain_len > h->chunk_size ||
	    s->stored_len > h->chunk_size || (s->comp == RK_COMP_NONE && s->stored_len != s->plain_len)) {
		*why = "slot header fields are out of range";
		return -EUCLEAN;
	}
	if ((size_t)RK_SLOT_HDR + s->stored_len + RK_TAG_BYTES > avail) {
		*why = "sealed chunk is truncated";
		return -EUCLEAN;
	}
	return 0;
}

static void build_aad(uint8_t aad[RK_AAD_LEN], const uint8_t *file_id, uint64_t idx, const uint8_t *slothdr)
{
	memcpy(aad, file_id, RK_FILE_ID_BYTES);
	rk_put64(aad + RK_FILE_ID_BYTES, idx);
	memcpy(aad + RK_FILE_ID_BYTES + 8, slothdr, 16);
}

/* Authenticate the slot of chunk idx, whose bytes (n of them, fewer for a
 * hole or a short file) are in slot.  On success the payload (compressed or
 * raw plaintext) is in *payload: rawbuf for a raw chunk when given, else
 * scratch 1.  Returns 1 for a hole. */
static int slot_open_from(struct rk_cf *cf, uint64_t idx, const uint8_t *slot, ssize_t n, struct slothdr *sh,
                          uint8_t **payload, uint8_t *rawbuf, bool log_errors)
{
	uint8_t *pay = rk_scratch(1, cf->hdr.slot_size);
	const char *why = NULL;
	char kname[RK_KEY_NAME_MAX + 1] = "";
	struct rk_key *key;
	const uint8_t *subkey;
	uint32_t cs = cf->hdr.chunk_size; /* chunk size and file id never change */
	int ret;
	if (!pay)
		return -ENOMEM;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	ret = slot_parse(cf, &cf->hdr, slot, (size_t)n, sh, &why);
	if (ret == 0)
		ret = ks_resolve_locked(cf, sh->key_idx, &key, &subkey);
	if (ret < 0 && ret != -EUCLEAN)
		snprintf(kname, sizeof(kname), "%s", cf->hdr.keys[sh->key_idx].name);
	rk_mutex_unlock(&cf->lock);
	if (ret == 1)
		return 1;
	if (ret == -EUCLEAN) {
		if (log_errors)
			rk_err("%s: chunk %" PRIu64 " (offset %" PRIu64 "): corrupt: %s", cf->path, idx, idx * cs, why);
		return -EUCLEAN;
	}
	if (ret < 0) {
		if (log_errors)
			rk_err("%s: chunk %" PRIu64 " (offset %" PRIu64 ") is sealed under key '%s' %s", cf->path, idx,
			       idx * cs, kname, key_err_text(ret));
		return ret;
	}
	uint8_t aad[RK_AAD_LEN];
	build_aad(aad, cf->hdr.file_id, idx, slot);
	uint8_t *dst = rawbuf && sh->comp == RK_COMP_NONE ? rawbuf : pay;
	ret = rk_aead_open(key->cipher, subkey, key->keylen, sh->nonce, aad, sizeof(aad), slot + RK_SLOT_HDR,
	                   sh->stored_len, slot + RK_SLOT_HDR + sh->stored_len, dst);
	if (ret < 0) {
		if (log_errors)
			rk_err("%s: chunk %" PRIu64 " (offset %" PRIu64 "): corrupt: authentication failed under key '%s' "
			       "(the chunk was altered, moved from another file or offset, or damaged)",
			       cf->path, idx, idx * cs, key->name);
		return -EUCLEAN;
	}
	*payload = dst;
	return 0;
}

/* Read the slot of chunk idx and authenticate it (see slot_open_from). */
static int slot_read_open(struct rk_cf *cf, uint64_t idx, struct slothdr *sh, uint8_t **payload, uint8_t *rawbuf,
                          bool log_errors)
{
	uint8_t *slot = rk_scratch(0, cf->hdr.slot_size);
	if (!slot)
		return -ENOMEM;
	ssize_t n = slot_read_used(cf, idx, slot);
	if (n < 0) {
		rk_err("%s: chunk %" PRIu64 ": read error: %s", cf->path, idx, strerror((int)-n));
		return (int)n;
	}
	return slot_open_from(cf, idx, slot, n, sh, payload, rawbuf, log_errors);
}

static uint64_t valid_in_chunk(uint64_t size, uint32_t cs, uint64_t idx)
{
	uint64_t start = idx * cs;
	if (start >= size)
		return 0;
	return RK_MIN((uint64_t)cs, size - start);
}

/* Is slot idx one that a cut-short file lost (and not written since)? */
static bool slot_missing(struct rk_cf *cf, uint64_t idx)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	bool m = idx >= cf->miss_from && idx < cf->miss_end;
	rk_mutex_unlock(&cf->lock);
	return m;
}

int rk_cf_read_chunk(struct rk_cf *cf, uint64_t idx, uint8_t *out, int *key_idx)
{
	uint32_t cs = cf->hdr.chunk_size;
	uint64_t valid = valid_in_chunk(rk_cf_size(cf), cs, idx);
	struct slothdr sh;
	uint8_t *payload;
	int ret;

	*key_idx = -1;
	if (valid == 0) {
		memset(out, 0, cs);
		return 0;
	}
	ret = slot_read_open(cf, idx, &sh, &payload, out, true);
	if (ret == 1 && slot_missing(cf, idx)) {
		rk_err("%s: chunk %" PRIu64 " (offset %" PRIu64 "): missing: the stored file was cut short before "
		       "its slot, but the header counts a chunk there",
		       cf->path, idx, idx * cs);
		return -EIO;
	}
	if (ret == 1) {
		memset(out, 0, cs);
		return 0;
	}
	if (ret < 0)
		return ret == -ENOMEM ? ret : -EIO;
	if (sh.comp == RK_COMP_SNAPPY) {
		ret = rk_decomp_chunk(RK_COMP_SNAPPY, payload, sh.stored_len, out, cs, sh.plain_len);
		if (ret < 0) {
			rk_err("%s: chunk %" PRIu64 " (offset %" PRIu64 "): corrupt: payload does not decompress", cf->path,
			       idx, idx * cs);
			return -EIO;
		}
	}
	/* bytes past the chunk's plaintext and past end of file read as zero */
	uint64_t keep = RK_MIN((uint64_t)sh.plain_len, valid);
	memset(out + keep, 0, cs - keep);
	*key_idx = sh.key_idx;
	if (cf->read_hook)
		cf->read_hook(cf->read_hook_arg, cf, idx, sh.key_idx);
	return 0;
}

/* Key entry from a slot header already read (n bytes of it in p). */
static int keyidx_of(struct rk_cf *cf, const uint8_t *p, ssize_t n, int *key_idx)
{
	struct slothdr sh;
	const char *why = NULL;
	/* only the header is read: a stored length past the slot is checked by avail */
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	int ret = slot_parse(cf, &cf->hdr, p, (size_t)n, &sh, &why);
	rk_mutex_unlock(&cf->lock);
	if (ret == -EUCLEAN && n == RK_SLOT_HDR && why && strcmp(why, "sealed chunk is truncated") == 0)
		ret = 0;
	if (ret == 1) {
		*key_idx = -1;
		return 0;
	}
	if (ret < 0)
		return ret;
	*key_idx = sh.key_idx;
	return 0;
}

int rk_cf_chunk_keyidx(struct rk_cf *cf, uint64_t idx, int *key_idx)
{
	uint8_t p[RK_SLOT_HDR];
	ssize_t n = slot_pread(cf, idx, p, sizeof(p));
	if (n < 0)
		return (int)n;
	int ret = keyidx_of(cf, p, n, key_idx);
	if (ret == 0 && *key_idx < 0 && n == 0 && slot_missing(cf, idx))
		ret = -ENODATA;
	return ret;
}

/* Find or add the header entry for key.  Caller holds cf->lock. */
static int keyent_for_locked(struct rk_cf *cf, struct rk_key *key)
{
	int free_j = -1;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		struct rk_cf_keyent *e = &cf->hdr.keys[j];
		if (e->in_use && strcmp(e->name, key->name) == 0 && memcmp(e->fp, key->fp, RK_FP_BYTES) == 0)
			return j;
		if (!e->in_use && free_j < 0 && !cf->disk_keys[j])
			free_j = j;
	}
	if (free_j < 0) {
		/* reuse an entry whose count is exactly zero */
		for (int j = 0; j < RK_CF_MAX_KEYS && free_j < 0; j++)
			if (cf->hdr.keys[j].in_use && cf->hdr.keys[j].count == 0 && !cf->counts_changed && !cf->disk_dirty)
				free_j = j;
		if (free_j < 0) {
			rk_err("%s: the header key table is full (%d keys); rekey the file to free entries", cf->path,
			       RK_CF_MAX_KEYS);
			return -ENOSPC;
		}
		ks_clear(&cf->ks[free_j]);
		cf->disk_keys[free_j] = false;
	}
	struct rk_cf_keyent *e = &cf->hdr.keys[free_j];
	memset(e, 0, sizeof(*e));
	e->in_use = true;
	snprintf(e->name, sizeof(e->name), "%s", key->name);
	memcpy(e->fp, key->fp, RK_FP_BYTES);
	e->cipher = key->cipher;
	e->bits = (uint16_t)key->bits;
	cf->hdr_changed = true;
	return free_j;
}

/* Before a slot write that moves a chunk from key entry `from` (-1: hole) to
 * `to`: make sure the disk header names `to` and is marked COUNTS_DIRTY, and
 * that this is durable before the slot can reach the disk.  Caller holds lock. */
static int prepare_count_change_locked(struct rk_cf *cf, int to)
{
	if (cf->disk_keys[to] && cf->disk_dirty)
		return 0;
	int ret = hdr_write_locked(cf, true);
	if (ret < 0)
		return ret;
	if (fdatasync(cf->fd) < 0) {
		ret = -errno;
		rk_err("%s: cannot sync header: %s", cf->path, strerror(errno));
		return ret;
	}
	return 0;
}

/* Seal payload (already compressed as comp) as chunk idx and hand the slot
 * to the writer.  old_key: entry the slot held before (-1 hole). */
static int seal_and_write(struct rk_cf *cf, uint64_t idx, const uint8_t *payload, uint32_t stored_len,
                          uint32_t plain_len, enum rk_comp comp, struct rk_key *key, int old_key, size_t old_end)
{
	uint8_t *slot = rk_scratch(3, cf->hdr.slot_size);
	const uint8_t *subkey;
	struct rk_key *rkey;
	uint8_t aad[RK_AAD_LEN];
	int ret, j;
	if (!slot)
		return -ENOMEM;
	if (!key->material || key->released) {
		rk_err("%s: cannot seal chunk %" PRIu64 " under key '%s': the key has been released", cf->path, idx,
		       key->name);
		return -EKEYREVOKED;
	}
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	if (cf->miss_end > cf->miss_from) {
		/* a write would make the header dirty, and a dirty header's counts
		 * are recounted from the slots: the lost chunks would turn into
		 * holes (zeros).  Restore the file, or truncate the lost part away. */
		rk_mutex_unlock(&cf->lock);
		rk_err("%s: cannot write chunk %" PRIu64 ": the stored file was cut short (chunks from %" PRIu64
		       " are missing); restore it or truncate it",
		       cf->path, idx, cf->miss_from);
		return -EUCLEAN;
	}
	j = keyent_for_locked(cf, key);
	if (j < 0) {
		ret = j;
		goto unlock;
	}
	ret = ks_resolve_locked(cf, j, &rkey, &subkey);
	if (ret < 0) {
		rk_err("%s: cannot seal chunk %" PRIu64 " under key '%s': %s", cf->path, idx, key->name,
		       rk_strerror(ret));
		goto unlock;
	}
	if (old_key != j) {
		ret = prepare_count_change_locked(cf, j);
		if (ret < 0)
			goto unlock;
	}
	rk_mutex_unlock(&cf->lock);

	memset(slot, 0, RK_SLOT_HDR);
	memcpy(slot, slot_magic, 4);
	slot[4] = (uint8_t)j;
	slot[5] = (uint8_t)comp;
	rk_put32(slot + 8, plain_len);
	rk_put32(slot + 12, stored_len);
	ret = rk_random(slot + 16, RK_NONCE_BYTES);
	if (ret < 0)
		return ret;
	build_aad(aad, cf->hdr.file_id, idx, slot);
	ret = rk_aead_seal(rkey->cipher, subkey, rkey->keylen, slot + 16, aad, sizeof(aad), payload, stored_len,
	                   slot + RK_SLOT_HDR, slot + RK_SLOT_HDR + stored_len);
	if (ret < 0)
		return ret;
	/* before the write: a failed write may leave bytes in the slot */
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	slot_mark_written_locked(cf, idx);
	rk_mutex_unlock(&cf->lock);
	ret = cf->writer.write_slot(cf->writer.ctx, cf, idx, slot, RK_SLOT_HDR + stored_len + RK_TAG_BYTES, old_end);
	if (ret < 0) {
		rk_err("%s: cannot write chunk %" PRIu64 " (offset %" PRIu64 "): %s; the previous content stays in place",
		       cf->path, idx, idx * cf->hdr.chunk_size, strerror(-ret));
		return ret;
	}
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	if (old_key != j) {
		if (old_key >= 0 && cf->hdr.keys[old_key].count > 0)
			cf->hdr.keys[old_key].count--;
		cf->hdr.keys[j].count++;
		cf->counts_changed = true;
		cf->hdr_changed = true;
	}
	ret = 0;
unlock:
	rk_mutex_unlock(&cf->lock);
	return ret;
}

/* Key entry the slot of idx holds now (-1: hole or past EOF) and how many
 * bytes of the slot are in use (0 for a hole). */
static int current_slot(struct rk_cf *cf, uint64_t idx, int *k, size_t *old_end)
{
	uint8_t p[RK_SLOT_HDR];
	*k = -1;
	*old_end = 0;
	if (valid_in_chunk(rk_cf_size(cf), cf->hdr.chunk_size, idx) == 0)
		return 0; /* past EOF: whatever is there is stale and gets replaced */
	ssize_t n = slot_pread(cf, idx, p, sizeof(p));
	if (n < 0)
		return (int)n;
	if (n < RK_SLOT_HDR || all_zero(p, RK_SLOT_HDR)) {
		/* a hole, or a torn slot: clear what follows when rewriting */
		*old_end = n > 0 ? cf->hdr.slot_size : 0;
		return 0;
	}
	*old_end = cf->hdr.slot_size; /* unknown contents: clear the whole slot */
	int ret = keyidx_of(cf, p, n, k);
	if (ret == -EUCLEAN) {
		/* a malformed slot holds no countable key: it is replaced */
		*k = -1;
		return 0;
	}
	if (ret < 0)
		return ret;
	uint32_t stored = rk_get32(p + 12);
	if (stored <= cf->hdr.chunk_size)
		*old_end = RK_SLOT_HDR + stored + RK_TAG_BYTES;
	return 0;
}

int rk_cf_write_chunk(struct rk_cf *cf, uint64_t idx, const uint8_t *pt, uint32_t len, struct rk_key *key,
                      enum rk_comp comp)
{
	uint8_t *cbuf = rk_scratch(2, rk_comp_bound(cf->hdr.chunk_size));
	size_t clen;
	int old, ret;
	size_t old_end;
	if (!cbuf)
		return -ENOMEM;
	if (len == 0 || len > cf->hdr.chunk_size)
		return -EINVAL;
	ret = current_slot(cf, idx, &old, &old_end);
	if (ret < 0)
		return ret;
	enum rk_comp want = comp;
	if (want == RK_COMP_SNAPPY && atomic_load(&cf->incompressible) >= 8 &&
	    atomic_fetch_add(&cf->comp_skips, 1) % 16 != 15)
		want = RK_COMP_NONE; /* retried every 16th chunk */
	enum rk_comp used = rk_comp_chunk(want, pt, len, cbuf, &clen);
	if (want == RK_COMP_SNAPPY) {
		if (used == RK_COMP_SNAPPY)
			atomic_store(&cf->incompressible, 0);
		else
			atomic_fetch_add(&cf->incompressible, 1);
	}
	return seal_and_write(cf, idx, cbuf, (uint32_t)clen, len, used, key, old, old_end);
}

int rk_cf_rekey_chunk(struct rk_cf *cf, uint64_t idx, struct rk_key *key, bool *changed)
{
	struct slothdr sh;
	uint8_t *payload;
	uint8_t *copy = rk_scratch(2, cf->hdr.slot_size);
	int ret;
	*changed = false;
	if (!copy)
		return -ENOMEM;
	if (valid_in_chunk(rk_cf_size(cf), cf->hdr.chunk_size, idx) == 0)
		return 0;
	ret = slot_read_open(cf, idx, &sh, &payload, NULL, true);
	if (ret == 1)
		return 0;
	if (ret < 0)
		return ret;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	const struct rk_cf_keyent *e = &cf->hdr.keys[sh.key_idx];
	bool same = strcmp(e->name, key->name) == 0 && memcmp(e->fp, key->fp, RK_FP_BYTES) == 0;
	rk_mutex_unlock(&cf->lock);
	if (same)
		return 0;
	/* the payload lives in scratch 1, which sealing does not use; copy anyway
	 * so that the writer may read chunks */
	memcpy(copy, payload, sh.stored_len);
	ret = seal_and_write(cf, idx, copy, sh.stored_len, sh.plain_len, (enum rk_comp)sh.comp, key, sh.key_idx,
	                     RK_SLOT_HDR + sh.stored_len + RK_TAG_BYTES);
	if (ret == 0)
		*changed = true;
	return ret;
}

int rk_cf_copy_chunk(struct rk_cf *src, struct rk_cf *dst, uint64_t idx, struct rk_key *key, int *src_key)
{
	struct slothdr sh;
	uint8_t *payload;
	*src_key = -1;
	if (dst->hdr.chunk_size != src->hdr.chunk_size)
		return -EINVAL;
	if (valid_in_chunk(rk_cf_size(src), src->hdr.chunk_size, idx) == 0)
		return 0;
	int ret = slot_read_open(src, idx, &sh, &payload, NULL, false);
	if (ret == 1)
		return 0;
	if (ret < 0)
		return ret;
	/* the payload is in scratch 1, which sealing does not use */
	ret = seal_and_write(dst, idx, payload, sh.stored_len, sh.plain_len, (enum rk_comp)sh.comp, key, -1, 0);
	if (ret == 0)
		*src_key = sh.key_idx;
	return ret;
}

/* Make sure the partial last chunk holds no plaintext past EOF before the
 * file grows (after a crash it might).  */
static int fix_tail(struct rk_cf *cf, struct rk_key *key, enum rk_comp comp)
{
	if (cf->tail_ok)
		return 0;
	uint32_t cs = cf->hdr.chunk_size;
	uint64_t size = rk_cf_size(cf);
	if (size % cs == 0) {
		cf->tail_ok = true;
		return 0;
	}
	uint64_t idx = size / cs;
	uint8_t p[RK_SLOT_HDR];
	ssize_t n = slot_pread(cf, idx, p, sizeof(p));
	if (n < 0)
		return (int)n;
	if (n == RK_SLOT_HDR && !all_zero(p, RK_SLOT_HDR) && rk_get32(p + 8) > size % cs) {
		uint8_t *buf = rk_scratch(4, cs);
		int k;
		if (!buf)
			return -ENOMEM;
		int ret = rk_cf_read_chunk(cf, idx, buf, &k); /* masks past EOF */
		if (ret < 0)
			return ret;
		ret = rk_cf_write_chunk(cf, idx, buf, (uint32_t)(size % cs), key, comp);
		if (ret < 0)
			return ret;
	}
	cf->tail_ok = true;
	return 0;
}

ssize_t rk_cf_pread(struct rk_cf *cf, void *buf, size_t len, uint64_t off)
{
	uint32_t cs = cf->hdr.chunk_size;
	uint64_t size = rk_cf_size(cf);
	uint8_t *cb = rk_scratch(4, cs);
	size_t done = 0;
	int k;
	if (!cb)
		return -ENOMEM;
	if (off >= size)
		return 0;
	len = (size_t)RK_MIN((uint64_t)len, size - off);
	while (done < len) {
		uint64_t pos = off + done, idx = pos / cs;
		uint32_t in = (uint32_t)(pos % cs);
		size_t n = RK_MIN((size_t)(cs - in), len - done);
		int ret;
		if (in == 0 && n == cs)
			ret = rk_cf_read_chunk(cf, idx, (uint8_t *)buf + done, &k);
		else {
			ret = rk_cf_read_chunk(cf, idx, cb, &k);
			if (ret == 0)
				memcpy((uint8_t *)buf + done, cb + in, n);
		}
		/* never a short read over a bad chunk: a caller (the kernel) would
		 * take the missing tail as zeros */
		if (ret < 0)
			return ret;
		done += n;
	}
	return (ssize_t)done;
}

ssize_t rk_cf_pwrite(struct rk_cf *cf, const void *buf, size_t len, uint64_t off, struct rk_key *key,
                     enum rk_comp comp)
{
	uint32_t cs = cf->hdr.chunk_size;
	uint8_t *cb = rk_scratch(4, cs);
	size_t done = 0;
	int ret = 0, k;
	if (!cb)
		return -ENOMEM;
	if (len == 0)
		return 0;
	if (off > RK_SIZE_MAX || len > RK_SIZE_MAX - off)
		return -EFBIG;
	uint64_t size = rk_cf_size(cf);
	if (off + len > size) {
		ret = fix_tail(cf, key, comp);
		if (ret < 0)
			return ret;
	}
	while (done < len) {
		uint64_t pos = off + done, idx = pos / cs;
		uint32_t in = (uint32_t)(pos % cs);
		size_t n = RK_MIN((size_t)(cs - in), len - done);
		size = rk_cf_size(cf);
		uint64_t valid = valid_in_chunk(size, cs, idx);
		if (in == 0 && n == cs) {
			ret = rk_cf_write_chunk(cf, idx, (const uint8_t *)buf + done, cs, key, comp);
		} else {
			if (valid > 0)
				ret = rk_cf_read_chunk(cf, idx, cb, &k);
			else
				memset(cb, 0, cs);
			if (ret == 0) {
				memcpy(cb + in, (const uint8_t *)buf + done, n);
				uint32_t plen = (uint32_t)RK_MAX(valid, (uint64_t)in + n);
				ret = rk_cf_write_chunk(cf, idx, cb, plen, key, comp);
			}
		}
		if (ret < 0)
			break;
		done += n;
		rk_mutex_lock(&cf->lock, RK_RANK_CF);
		if (pos + n > cf->hdr.size) {
			cf->hdr.size = pos + n;
			cf->hdr_changed = true;
		}
		rk_mutex_unlock(&cf->lock);
	}
	if (done > 0)
		return (ssize_t)done;
	return ret;
}

int rk_cf_truncate(struct rk_cf *cf, uint64_t size, struct rk_key *key, enum rk_comp comp)
{
	uint32_t cs = cf->hdr.chunk_size;
	uint64_t old = rk_cf_size(cf);
	int ret = 0, k;
	if (size > RK_SIZE_MAX)
		return -EFBIG;
	if (size == old)
		return 0;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	if (size < old && (size + cs - 1) / cs <= cf->miss_from && cf->miss_end > cf->miss_from) {
		/* every chunk a cut-short file lost is cut off: out of the count */
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			cf->hdr.keys[j].count -= RK_MIN(cf->hdr.keys[j].count, cf->miss_per_key[j]);
		cf->miss_end = cf->miss_from;
		cf->miss_count = 0;
		cf->counts_changed = true;
		cf->hdr_changed = true;
	}
	rk_mutex_unlock(&cf->lock);
	if (size > old) {
		ret = fix_tail(cf, key, comp);
		if (ret < 0)
			return ret;
	} else if (size % cs) {
		/* the new last chunk keeps only its first size % cs bytes */
		uint64_t idx = size / cs;
		uint8_t *cb = rk_scratch(4, cs);
		int cur;
		size_t cur_end;
		if (!cb)
			return -ENOMEM;
		ret = current_slot(cf, idx, &cur, &cur_end);
		if (ret < 0)
			return ret;
		if (cur >= 0) {
			ret = rk_cf_read_chunk(cf, idx, cb, &k);
			if (ret < 0)
				return ret;
			ret = rk_cf_write_chunk(cf, idx, cb, (uint32_t)(size % cs), key, comp);
			if (ret < 0)
				return ret;
		}
	}
	/* chunks wholly past the new end leave the count */
	if (size < old) {
		uint64_t first = (size + cs - 1) / cs, last = (old + cs - 1) / cs;
		for (uint64_t i = rk_cf_next_slot(cf, first, last); i < last; i = rk_cf_next_slot(cf, i + 1, last)) {
			int cur;
			ret = rk_cf_chunk_keyidx(cf, i, &cur);
			if (ret < 0)
				cur = -1;
			if (cur >= 0) {
				rk_mutex_lock(&cf->lock, RK_RANK_CF);
				if (cf->hdr.keys[cur].count > 0)
					cf->hdr.keys[cur].count--;
				cf->counts_changed = true;
				rk_mutex_unlock(&cf->lock);
			}
		}
	}
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	cf->hdr.size = size;
	cf->hdr_changed = true;
	/* the header with the new size goes first, then the stored data is cut:
	 * a crash in between leaves stale slots past EOF, trimmed at next open */
	ret = hdr_write_locked(cf, cf->disk_dirty || cf->counts_changed);
	rk_mutex_unlock(&cf->lock);
	if (ret < 0)
		return ret;
	if (size < old && cf->writer.truncated) {
		ret = cf->writer.truncated(cf->writer.ctx, cf, (size + cs - 1) / cs);
		if (ret < 0)
			return ret;
	}
	if (size < old) {
		uint64_t want = rk_cf_stored_len(cs, size);
		if (size % cs) {
			/* keep the whole slot of the last chunk, cut the rest */
			want = rk_slot_off(cf->hdr.slot_size, size / cs + 1);
		}
		if (ftruncate(cf->fd, (off_t)want) < 0) {
			ret = -errno;
			rk_err("%s: cannot truncate stored file: %s", cf->path, strerror(errno));
			return ret;
		}
		rk_mutex_lock(&cf->lock, RK_RANK_CF);
		slots_cut_locked(cf, want <= RK_HDR_AREA ? 0 : (want - RK_HDR_AREA + cf->hdr.slot_size - 1) / cf->hdr.slot_size);
		rk_mutex_unlock(&cf->lock);
	}
	cf->tail_ok = true;
	return 0;
}

/* The slot holding the first data of the stored file at or after slot idx
 * (holes skipped with SEEK_DATA), or end when there is none. */
static uint64_t disk_next_slot(struct rk_cf *cf, uint64_t idx, uint64_t end)
{
	uint64_t ss = cf->hdr.slot_size;
	uint64_t off = rk_slot_off(cf->hdr.slot_size, idx);
	if (off > (uint64_t)INT64_MAX)
		return end;
	off_t d = lseek(cf->fd, (off_t)off, SEEK_DATA);
	if (d < 0)
		return errno == ENXIO ? end : idx; /* ENXIO: no data from there on */
	if ((uint64_t)d < RK_HDR_AREA)
		return idx;
	uint64_t j = ((uint64_t)d - RK_HDR_AREA) / ss;
	return RK_MIN(RK_MAX(j, idx), end);
}

/* First set bit of bits (words long) in [from, to), or to. */
static uint64_t next_bit(const uint64_t *bits, size_t words, uint64_t from, uint64_t to)
{
	for (uint64_t b = from; b < to && b / 64 < words;) {
		uint64_t w = bits[b / 64] >> (b % 64);
		if (w)
			return RK_MIN(b + (uint64_t)__builtin_ctzll(w), to);
		b = (b / 64 + 1) * 64;
	}
	return to;
}

uint64_t rk_cf_next_slot(struct rk_cf *cf, uint64_t idx, uint64_t end)
{
	while (idx < end) {
		rk_mutex_lock(&cf->lock, RK_RANK_CF);
		if (idx >= cf->miss_from && idx < cf->miss_end)
			idx = cf->miss_end; /* missing: reported by rk_cf_missing, nothing to read */
		rk_mutex_unlock(&cf->lock);
		if (idx >= end)
			break;
		uint64_t cand = disk_next_slot(cf, idx, end);
		if (cand > idx && cf->writer.read_slot) {
			/* a slot written since the open may be a pending image over a
			 * hole: only slots known unwritten are skipped */
			rk_mutex_lock(&cf->lock, RK_RANK_CF);
			uint64_t ff = cf->first_fresh;
			if (idx < ff) {
				if (cf->low_untracked)
					cand = idx;
				else {
					uint64_t to = RK_MIN(cand, ff);
					uint64_t b = next_bit(cf->low_bits, cf->low_words, idx, to);
					cand = b < to ? b : cand; /* none written below: the disk decides */
				}
			}
			uint64_t from = RK_MAX(idx, ff);
			if (from < cand && from < cf->fresh_limit) {
				uint64_t to = RK_MIN(cand, cf->fresh_limit);
				uint64_t b = next_bit(cf->fresh_bits, cf->fresh_words, from - ff, to - ff) + ff;
				/* untracked from fresh_limit on: the disk decides */
				cand = b < to ? b : cand;
			}
			rk_mutex_unlock(&cf->lock);
		}
		rk_mutex_lock(&cf->lock, RK_RANK_CF);
		bool missing = cand >= cf->miss_from && cand < cf->miss_end;
		rk_mutex_unlock(&cf->lock);
		if (!missing)
			return cand;
		idx = cand;
	}
	return end;
}

uint64_t rk_cf_missing(struct rk_cf *cf, uint64_t *first, uint64_t per_key[RK_CF_MAX_KEYS])
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	uint64_t n = cf->miss_end > cf->miss_from ? cf->miss_count : 0;
	if (first)
		*first = cf->miss_from;
	if (per_key)
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			per_key[j] = n ? cf->miss_per_key[j] : 0;
	rk_mutex_unlock(&cf->lock);
	return n;
}

/* A clean header counts its chunks exactly.  When the stored file ends
 * before the last slot's header (a sparse tail, or a file cut short) and
 * fewer chunks are present than counted, the slots past the end are missing
 * chunks, not holes.  Costs nothing unless the tail is absent; then one slot
 * header read per data extent slot (holes skipped). */
static int find_missing(struct rk_cf *cf)
{
	struct stat st;
	uint64_t total = 0, present = 0, counts[RK_CF_MAX_KEYS] = {0};
	uint64_t ss = cf->hdr.slot_size, n = rk_cf_nchunks(cf);
	int ret = 0;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++)
		total += cf->hdr.keys[j].in_use ? cf->hdr.keys[j].count : 0;
	if (total == 0 || n == 0)
		goto out;
	if (fstat(cf->fd, &st) < 0) {
		ret = -errno;
		rk_err("%s: cannot stat stored file: %s", cf->path, strerror(errno));
		goto out;
	}
	uint64_t end = (uint64_t)st.st_size;
	/* first slot whose 32-byte header is not wholly in the stored file */
	uint64_t e = end < RK_HDR_AREA + RK_SLOT_HDR ? 0 : (end - RK_HDR_AREA - RK_SLOT_HDR) / ss + 1;
	if (e >= n)
		goto out;
	for (uint64_t i = rk_cf_next_slot(cf, 0, e); i < e; i = rk_cf_next_slot(cf, i + 1, e)) {
		int k;
		ret = rk_cf_chunk_keyidx(cf, i, &k);
		if (ret == -EUCLEAN) {
			ret = 0;
			present++; /* a chunk whose key is unknown; reported when read */
			continue;
		}
		if (ret < 0)
			goto out;
		if (k >= 0) {
			counts[k]++;
			present++;
		}
	}
	if (present >= total)
		goto out;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	cf->miss_from = e;
	cf->miss_end = n;
	cf->miss_count = total - present;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++)
		cf->miss_per_key[j] =
		    cf->hdr.keys[j].in_use && cf->hdr.keys[j].count > counts[j] ? cf->hdr.keys[j].count - counts[j] : 0;
	rk_mutex_unlock(&cf->lock);
	rk_warn("%s: the stored file is cut short: it ends at byte %" PRIu64 " (in or before chunk %" PRIu64
	        ") but its clean header counts %" PRIu64 " chunks and only %" PRIu64
	        " are present; chunks from %" PRIu64 " on read as errors",
	        cf->path, end, e, total, present, e);
out:
	return ret;
}

static int cf_recount_locked(struct rk_cf *cf)
{
	uint64_t counts[RK_CF_MAX_KEYS] = {0};
	uint64_t n = (cf->hdr.size + cf->hdr.chunk_size - 1) / cf->hdr.chunk_size;
	rk_mutex_unlock(&cf->lock);
	/* holes are skipped: the cost follows the slots that exist */
	for (uint64_t i = rk_cf_next_slot(cf, 0, n); i < n; i = rk_cf_next_slot(cf, i + 1, n)) {
		int k, ret = rk_cf_chunk_keyidx(cf, i, &k);
		if (ret == -EUCLEAN) {
			rk_warn("%s: chunk %" PRIu64 " has a malformed slot header; not counted", cf->path, i);
			continue;
		}
		if (ret < 0) {
			rk_mutex_lock(&cf->lock, RK_RANK_CF);
			return ret;
		}
		if (k >= 0)
			counts[k]++;
	}
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		if (cf->hdr.keys[j].in_use && cf->hdr.keys[j].count != counts[j]) {
			cf->hdr.keys[j].count = counts[j];
			cf->hdr_changed = true;
		}
	}
	cf->counts_changed = true; /* the disk header is stale until the next sync */
	return 0;
}

int rk_cf_recount(struct rk_cf *cf)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	int ret = cf_recount_locked(cf);
	rk_mutex_unlock(&cf->lock);
	return ret;
}

int rk_cf_flush(struct rk_cf *cf)
{
	int ret = 0;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	if (cf->hdr_changed)
		ret = hdr_write_locked(cf, cf->disk_dirty || cf->counts_changed);
	rk_mutex_unlock(&cf->lock);
	return ret;
}

int rk_cf_sync_new(struct rk_cf *cf)
{
	int ret;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	cf->counts_changed = false;
	ret = hdr_write_locked(cf, false);
	if (ret == 0)
		ret = hdr_write_locked(cf, false);
	if (ret == 0)
		cf->copies_equal = true;
	rk_mutex_unlock(&cf->lock);
	if (ret == 0 && fdatasync(cf->fd) < 0) {
		ret = -errno;
		rk_err("%s: fdatasync failed: %s", cf->path, strerror(errno));
	}
	return ret;
}

int rk_cf_sync(struct rk_cf *cf)
{
	int ret = 0;
	if (!cf->writable)
		return 0; /* nothing of ours to make durable */
	if (fdatasync(cf->fd) < 0) {
		ret = -errno;
		rk_err("%s: fdatasync failed: %s", cf->path, strerror(errno));
		return ret;
	}
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	if (cf->hdr_changed || cf->disk_dirty || cf->counts_changed || !cf->copies_equal) {
		ret = hdr_write_locked(cf, false);
		if (ret == 0 && fdatasync(cf->fd) < 0) {
			ret = -errno;
			rk_err("%s: fdatasync failed: %s", cf->path, strerror(errno));
		}
		/* the other copy gets the same state: a copy damaged later then
		 * falls back to an identical header, not to an older one */
		if (ret == 0) {
			cf->counts_changed = false;
			ret = hdr_write_locked(cf, false);
			if (ret == 0)
				cf->copies_equal = true;
		}
	}
	rk_mutex_unlock(&cf->lock);
	return ret;
}
