/* rekeyfs - an open chunk file (rk_cf): the object and its accessors, the
 * slot map (fresh holes, cut-short files), slot reads through the writer,
 * slot-header parsing, header writes, create/open, slot iteration, recount
 * and sync.  Sealing and opening chunks is chunk.c; byte access rmw.c. */
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

#include "format_int.h"

const uint8_t rk_slot_magic[4] = {'R', 'K', 'C', '1'};

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
void cf_slot_mark_written_locked(struct rk_cf *cf, uint64_t idx)
{
	RK_ASSERT_HELD(&cf->lock);
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
void cf_slots_cut_locked(struct rk_cf *cf, uint64_t first_dead)
{
	RK_ASSERT_HELD(&cf->lock);
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
	char **r = realloc(cf->retired, (cf->nretired + 1) * sizeof(*r));
	if (r) {
		cf->retired = r;
		cf->retired[cf->nretired++] = atomic_exchange(&cf->path, np);
	} else {
		free(np); /* keep the old path: a stale name in messages, never a freed one */
	}
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
	return rk_chunk_count(s, cf->hdr.chunk_size);
}

bool rk_cf_names_key(struct rk_cf *cf, const char *name)
{
	bool found = false;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	for (int j = 0; j < RK_CF_MAX_KEYS && !found; j++)
		found = cf->hdr.keys[j].in_use && strcmp(cf->hdr.keys[j].name, name) == 0;
	rk_mutex_unlock(&cf->lock);
	return found;
}

int rk_cf_disk_copies_name(struct rk_cf *cf, const char *name)
{
	uint8_t *area = malloc(RK_HDR_AREA);
	if (!area)
		return -ENOMEM;
	ssize_t n = rk_pread_full(cf->fd, area, RK_HDR_AREA, 0);
	int ret = n < 0 ? (int)n : 0;
	if (n >= 0 && n < RK_HDR_AREA)
		memset(area + n, 0, (size_t)(RK_HDR_AREA - n));
	if (ret == 0)
		ret = rk_hdr_copies_name(area, name) ? 1 : 0;
	free(area);
	return ret;
}

int rk_cf_stage_rewrite(struct rk_cf *cf)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	int ret = cf->writable ? 0 : -EBADF;
	if (ret == 0)
		cf->hdr_changed = true;
	rk_mutex_unlock(&cf->lock);
	return ret;
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
	uint64_t end = off + len;
	uint64_t a = (off + 4095) / 4096 * 4096, b = end / 4096 * 4096;
	if (a < b) {
		if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a, (off_t)(b - a)) < 0) {
			a = b = end; /* no hole punching here: write zeros throughout */
		}
	} else {
		a = b = end;
	}
	int ret = rk_pwrite_zeros(fd, off, a);
	return ret < 0 ? ret : rk_pwrite_zeros(fd, b, end);
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

int rk_cf_write_hole(struct rk_cf *cf, uint64_t idx, const uint8_t *slot, size_t len)
{
	return rk_write_slot_direct(cf->fd, rk_slot_off(cf->hdr.slot_size, idx), slot, len);
}

static int default_write_slot(void *ctx, struct rk_cf *cf, uint64_t idx, const uint8_t *slot, size_t len,
                              size_t old_end)
{
	(void)ctx;
	uint64_t off = rk_slot_off(cf->hdr.slot_size, idx);
	int ret = old_end == 0 ? rk_cf_write_hole(cf, idx, slot, len) : rk_pwrite_full(cf->fd, slot, len, (off_t)off);
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

/* Read the used part of slot idx into buf (slot_size bytes of room): a
 * first read sized from the previous slot of this file, then the rest of
 * the sealed chunk if it is longer.  Returns the bytes read (a hole or a
 * short file gives fewer than the slot header). */
ssize_t cf_slot_read_used(struct rk_cf *cf, uint64_t idx, uint8_t *buf)
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
ssize_t cf_slot_pread(struct rk_cf *cf, uint64_t idx, uint8_t *buf, size_t len)
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
	/* given once, never swapped while the file is shared (reads see it
	 * without a lock); NULL removes it when nobody else uses the file */
	RK_ASSERT(!fn || !cf->read_hook);
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
	/* given once, never swapped for another while the file is shared */
	RK_ASSERT(!w || !cf->writer_set);
	cf->writer = w ? *w : default_writer;
	cf->writer_set = w != NULL;
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

void cf_ks_clear(struct keyslot *s)
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
		cf_ks_clear(&cf->ks[j]);
	pthread_mutex_destroy(&cf->lock);
	pthread_mutex_destroy(&cf->times_lock);
	free(cf->fresh_bits);
	free(cf->low_bits);
	for (size_t i = 0; i < cf->nretired; i++)
		free(cf->retired[i]);
	free(cf->retired);
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
int cf_hdr_write_locked(struct rk_cf *cf, bool dirty)
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
	return rk_cf_create_version(fd, path, kr, chunk_size, comp, key, RK_FORMAT_VERSION, out);
}

int rk_cf_create_version(int fd, const char *path, struct rk_keyring *kr, uint32_t chunk_size, enum rk_comp comp,
                         struct rk_key *key, int version, struct rk_cf **out)
{
	int ret;
	if (chunk_size < RK_CHUNK_MIN || chunk_size > RK_CHUNK_MAX || (chunk_size & (chunk_size - 1)) ||
	    (version != RK_FORMAT_V1 && version != RK_FORMAT_V2) || (version == RK_FORMAT_V1 && key && key->p11))
		return -EINVAL; /* a token key has no v1 subkey */
	if (key && (!key->material || key->released))
		return -EKEYREVOKED;
	struct rk_cf *cf = cf_alloc(fd, path, kr, true);
	if (!cf)
		return -ENOMEM;
	cf->hdr.version = (uint16_t)version;
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
		if (version >= RK_FORMAT_V2) {
			ret = cf_new_dek_locked(cf, 0, key); /* not shared yet: no lock needed */
			if (ret < 0)
				goto fail;
		}
	}
	cf->tail_ok = true;
	/* the times stay the creation's: the kernel (write-back cache) owns
	 * mtime and flushes its own only when a write changes it, so the new
	 * file must not show a newer one than the create gave (not locked: the
	 * rk_cf is not shared yet).  Not fsynced: until the first fsync the
	 * file may come back absent or empty after a crash (rekeyfs(5),
	 * WRITING). */
	ret = cf_hdr_write_locked(cf, true);
	if (ret < 0)
		goto fail;
	rk_crashpoint("create.header-written");
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
			cf->first_fresh = rk_slots_reached(end, cf->hdr.slot_size);
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

/* 1 hole, 0 parsed, -EUCLEAN malformed (cause in *why) */
int cf_slot_parse(const struct rk_cf *cf, const struct rk_cf_header *h, const uint8_t *p, size_t avail,
                      struct slothdr *s, const char **why)
{
	if (avail == 0 || (avail >= RK_SLOT_HDR && all_zero(p, RK_SLOT_HDR)) || (avail < RK_SLOT_HDR && all_zero(p, avail)))
		return 1;
	(void)cf;
	if (avail < RK_SLOT_HDR) {
		*why = "slot is truncated";
		return -EUCLEAN;
	}
	if (memcmp(p, rk_slot_magic, 4) != 0) {
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

/* Is slot idx one that a cut-short file lost (and not written since)? */
bool cf_slot_missing(struct rk_cf *cf, uint64_t idx)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	bool m = idx >= cf->miss_from && idx < cf->miss_end;
	rk_mutex_unlock(&cf->lock);
	return m;
}

/* Key entry from a slot header already read (n bytes of it in p). */
int cf_keyidx_of(struct rk_cf *cf, const uint8_t *p, ssize_t n, int *key_idx)
{
	struct slothdr sh;
	const char *why = NULL;
	/* only the header is read: a stored length past the slot is checked by avail */
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	int ret = cf_slot_parse(cf, &cf->hdr, p, (size_t)n, &sh, &why);
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
	ssize_t n = cf_slot_pread(cf, idx, p, sizeof(p));
	if (n < 0)
		return (int)n;
	int ret = cf_keyidx_of(cf, p, n, key_idx);
	if (ret == 0 && *key_idx < 0 && n == 0 && cf_slot_missing(cf, idx))
		ret = -ENODATA;
	return ret;
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
	uint64_t n = rk_cf_nchunks(cf);
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
	uint64_t e = rk_slots_with_header(end, cf->hdr.slot_size);
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
	uint64_t n = rk_chunk_count(cf->hdr.size, cf->hdr.chunk_size);
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
		ret = cf_hdr_write_locked(cf, cf->disk_dirty || cf->counts_changed);
	rk_mutex_unlock(&cf->lock);
	return ret;
}

int rk_cf_sync_new(struct rk_cf *cf)
{
	int ret;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	cf->counts_changed = false;
	ret = cf_hdr_write_locked(cf, false);
	if (ret == 0)
		ret = cf_hdr_write_locked(cf, false);
	if (ret == 0)
		cf->copies_equal = true;
	rk_mutex_unlock(&cf->lock);
	if (ret == 0 && fdatasync(cf->fd) < 0) {
		ret = -errno;
		rk_err("%s: fdatasync failed: %s", cf->path, strerror(errno));
	}
	return ret;
}

int rk_cf_sync_data(struct rk_cf *cf)
{
	int ret = 0;
	uint64_t size;
	if (!cf->writable)
		return 0;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	size = cf->hdr.size;
	/* the header keeps COUNTS_DIRTY when it has it: cleaning it would need a
	 * second flush (rk_cf_sync); readers recount a dirty header */
	if (cf->hdr_changed)
		ret = cf_hdr_write_locked(cf, cf->disk_dirty || cf->counts_changed);
	rk_mutex_unlock(&cf->lock);
	if (ret == 0 && fdatasync(cf->fd) < 0) {
		ret = -errno;
		rk_err("%s: fdatasync failed: %s", cf->path, strerror(errno));
	}
	if (ret == 0) {
		rk_mutex_lock(&cf->lock, RK_RANK_CF);
		cf->dur_known = true;
		cf->dur_size = size;
		rk_mutex_unlock(&cf->lock);
	}
	return ret;
}

bool rk_cf_dur_state(struct rk_cf *cf, uint64_t *size, uint64_t *dur_size)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	bool known = cf->dur_known;
	*size = cf->hdr.size;
	*dur_size = cf->dur_size;
	rk_mutex_unlock(&cf->lock);
	return known;
}

void rk_cf_set_dur_size(struct rk_cf *cf, uint64_t size)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	cf->dur_size = size;
	rk_mutex_unlock(&cf->lock);
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
		ret = cf_hdr_write_locked(cf, false);
		if (ret == 0 && fdatasync(cf->fd) < 0) {
			ret = -errno;
			rk_err("%s: fdatasync failed: %s", cf->path, strerror(errno));
		}
		/* the other copy gets the same state: a copy damaged later then
		 * falls back to an identical header, not to an older one */
		if (ret == 0) {
			cf->counts_changed = false;
			ret = cf_hdr_write_locked(cf, false);
			if (ret == 0)
				cf->copies_equal = true;
		}
	}
	if (ret == 0) {
		cf->dur_known = true;
		cf->dur_size = cf->hdr.size;
	}
	rk_mutex_unlock(&cf->lock);
	return ret;
}

int rk_cf_replay_set_size(int fd, const char *path, const uint8_t id[RK_FILE_ID_BYTES], uint64_t size)
{
	uint8_t buf[RK_HDR_COPY_SIZE] __attribute__((aligned(64)));
	struct rk_cf_header h;
	int which, ret;
	if (size > RK_SIZE_MAX)
		return -EFBIG;
	ret = rk_cf_read_header(fd, path, &h, &which);
	if (ret < 0)
		return ret;
	if (memcmp(h.file_id, id, RK_FILE_ID_BYTES) != 0)
		return -ESTALE;
	if (h.size == size)
		return 0;
	h.size = size;
	h.seq++;
	h.flags |= RK_HF_COUNTS_DIRTY; /* the caller recounts from the slots */
	rk_hdr_encode(&h, buf);
	ret = rk_pwrite_full(fd, buf, sizeof(buf), (off_t)(1 - which) * RK_HDR_COPY_SIZE);
	if (ret < 0)
		rk_err("%s: cannot write header: %s", path, strerror(-ret));
	return ret;
}

int rk_cf_slot_image(struct rk_cf *cf, uint64_t idx, uint8_t *buf, uint32_t *len)
{
	uint32_t ss = cf->hdr.slot_size, cs = cf->hdr.chunk_size;
	off_t off = (off_t)rk_slot_off(ss, idx);
	*len = 0;
	ssize_t n = rk_pread_full(cf->fd, buf, RK_SLOT_HDR, off);
	if (n < 0)
		return (int)n;
	if (n < RK_SLOT_HDR || memcmp(buf, rk_slot_magic, 4) != 0)
		return 0;
	uint32_t stored = rk_get32(buf + 12);
	if (stored > cs)
		return 0;
	uint32_t want = RK_SLOT_HDR + stored + RK_TAG_BYTES;
	n = rk_pread_full(cf->fd, buf, want, off);
	if (n < 0)
		return (int)n;
	if ((uint32_t)n == want)
		*len = want;
	return 0;
}
