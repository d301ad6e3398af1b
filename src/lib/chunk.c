/* rekeyfs - sealing and opening the chunks of an open chunk file: subkeys,
 * AAD, reading, writing, rekeying and copying one chunk. */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/comppool.h"
#include "rekeyfs/format.h"
#include "rekeyfs/lockrank.h"

#include "format_int.h"

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
			if (cf->hdr.version >= RK_FORMAT_V2) {
				/* v2: the entry's DEK, unwrapped under its KEK */
				err = rk_dek_unwrap(&cf->hdr, j, k, s->subkey);
				if (err == -EBADMSG)
					rk_err("%s: the wrapped data key of key entry %d (key '%s') does not authenticate: the "
					       "header was altered or damaged; the chunks sealed under it cannot be read",
					       cf->path, j, e->name);
			} else if (k->p11) {
				/* a version 1 entry naming a token key: never written by
				 * rekeyfs (keyent_for_locked converts the file first); its
				 * host secret is no key to derive chunk keys from */
				rk_err("%s: key entry %d names PKCS#11 token key '%s' in a format 1 header: refused", cf->path, j,
				       e->name);
				err = -EKEYREJECTED;
			} else {
				err = rk_derive_file_key(k->cipher, k->material, k->keylen, cf->hdr.file_id, s->subkey,
				                         k->keylen);
			}
			if (err < 0)
				OPENSSL_cleanse(s->subkey, RK_MAX_KEY_BYTES);
			if (err < 0 && err != -EBADMSG && err != -EKEYREJECTED && err != -EKEYREVOKED)
				return err; /* transient (memory): not cached */
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
	case -EBADMSG:
		return "but the data key wrapped under it in the header does not authenticate (header altered or damaged)";
	case -ETIMEDOUT:
		return "whose PKCS#11 token did not answer in time (REKEYFS_P11_TIMEOUT)";
	default:
		return "which cannot be loaded";
	}
}

/* The calling thread's last chunk read failure (rk_cf_read_error): set by
 * chunk_fail, cleared by rk_cf_read_error_clear.  Per thread, no lock. */
static __thread struct {
	bool set;
	uint64_t idx;
	char cause[RK_CF_CAUSE_MAX];
} last_fail;

void rk_cf_read_error_clear(void) { last_fail.set = false; }

int rk_cf_read_error(uint64_t *idx, char *cause, size_t len)
{
	if (!last_fail.set)
		return -ENOENT;
	*idx = last_fail.idx;
	if (cause && len)
		snprintf(cause, len, "%s", last_fail.cause);
	return 0;
}

/* A read of chunk idx failed: note the cause for rk_cf_read_error and, when
 * log, log "PATH: chunk N (offset X): CAUSE".  Called with no lock held. */
static void chunk_fail(struct rk_cf *cf, uint64_t idx, bool log, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void chunk_fail(struct rk_cf *cf, uint64_t idx, bool log, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_fail.cause, sizeof(last_fail.cause), fmt, ap);
	va_end(ap);
	last_fail.idx = idx;
	last_fail.set = true;
	if (log)
		rk_err("%s: chunk %" PRIu64 " (offset %" PRIu64 "): %s", cf->path, idx, idx * cf->hdr.chunk_size,
		       last_fail.cause);
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
	uint8_t *pay = rk_scratch(RK_SCR_PAYLOAD, cf->hdr.slot_size);
	const char *why = NULL;
	char kname[RK_KEY_NAME_MAX + 1] = "";
	struct rk_key *key;
	const uint8_t *subkey;
	int ret;
	if (!pay)
		return -ENOMEM;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	ret = cf_slot_parse(cf, &cf->hdr, slot, (size_t)n, sh, &why);
	if (ret == 0)
		ret = ks_resolve_locked(cf, sh->key_idx, &key, &subkey);
	if (ret < 0 && ret != -EUCLEAN)
		snprintf(kname, sizeof(kname), "%s", cf->hdr.keys[sh->key_idx].name);
	rk_mutex_unlock(&cf->lock);
	if (ret == 1)
		return 1;
	if (ret == -EUCLEAN) {
		chunk_fail(cf, idx, log_errors, "corrupt: %s", why);
		return -EUCLEAN;
	}
	if (ret < 0) {
		chunk_fail(cf, idx, log_errors, "sealed under key '%s' %s", kname, key_err_text(ret));
		return ret;
	}
	uint8_t aad[RK_AAD_LEN];
	build_aad(aad, cf->hdr.file_id, idx, slot);
	uint8_t *dst = rawbuf && sh->comp == RK_COMP_NONE ? rawbuf : pay;
	ret = rk_aead_open(key->cipher, subkey, key->keylen, sh->nonce, aad, sizeof(aad), slot + RK_SLOT_HDR,
	                   sh->stored_len, slot + RK_SLOT_HDR + sh->stored_len, dst);
	if (ret < 0) {
		chunk_fail(cf, idx, log_errors,
		           "corrupt: authentication failed under key '%s' (the chunk was altered, moved from another "
		           "file or offset, or damaged)",
		           key->name);
		return -EUCLEAN;
	}
	*payload = dst;
	return 0;
}

/* Read the slot of chunk idx and authenticate it (see slot_open_from). */
static int slot_read_open(struct rk_cf *cf, uint64_t idx, struct slothdr *sh, uint8_t **payload, uint8_t *rawbuf,
                          bool log_errors)
{
	uint8_t *slot = rk_scratch(RK_SCR_SLOT_IN, cf->hdr.slot_size);
	if (!slot)
		return -ENOMEM;
	ssize_t n = cf_slot_read_used(cf, idx, slot);
	if (n < 0) {
		chunk_fail(cf, idx, true, "read error: %s", strerror((int)-n));
		return (int)n;
	}
	return slot_open_from(cf, idx, slot, n, sh, payload, rawbuf, log_errors);
}

int rk_cf_read_chunk(struct rk_cf *cf, uint64_t idx, uint8_t *out, int *key_idx)
{
	uint32_t cs = cf->hdr.chunk_size;
	uint64_t valid = rk_chunk_plain_len(rk_cf_size(cf), cs, idx);
	struct slothdr sh;
	uint8_t *payload;
	int ret;

	*key_idx = -1;
	if (valid == 0) {
		memset(out, 0, cs);
		return 0;
	}
	ret = slot_read_open(cf, idx, &sh, &payload, out, true);
	if (ret == 1 && cf_slot_missing(cf, idx)) {
		chunk_fail(cf, idx, true,
		           "missing: the stored file was cut short before its slot, but the header counts a chunk there");
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
			chunk_fail(cf, idx, true, "corrupt: payload does not decompress");
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

/* Find or add the header entry for key.  Caller holds cf->lock. */
static int keyent_for_locked(struct rk_cf *cf, struct rk_key *key)
{
	RK_ASSERT_HELD(&cf->lock);
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
		cf_ks_clear(&cf->ks[free_j]);
		cf->disk_keys[free_j] = false;
	}
	if (cf->hdr.version < RK_FORMAT_V2 && key->p11) {
		/* a token key never derives a v1 subkey (the KEK stays in the
		 * token): the file becomes version 2 first, its chunks unchanged,
		 * and the new entry gets a data key wrapped by the token */
		int ret = cf_upgrade_v2_locked(cf);
		if (ret < 0) {
			rk_err("%s: cannot add key '%s' (a PKCS#11 token key) to this format 1 file: its conversion to format 2 "
			       "failed: %s",
			       cf->path, key->name, rk_strerror(ret));
			return ret;
		}
	}
	struct rk_cf_keyent *e = &cf->hdr.keys[free_j];
	memset(e, 0, sizeof(*e));
	e->in_use = true;
	snprintf(e->name, sizeof(e->name), "%s", key->name);
	memcpy(e->fp, key->fp, RK_FP_BYTES);
	e->cipher = key->cipher;
	e->bits = (uint16_t)key->bits;
	if (cf->hdr.version >= RK_FORMAT_V2) {
		/* a fresh data key, wrapped under key (v1 files keep v1 entries) */
		int ret = cf_new_dek_locked(cf, free_j, key);
		if (ret < 0) {
			memset(e, 0, sizeof(*e));
			return ret;
		}
	}
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
	int ret = cf_hdr_write_locked(cf, true);
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
	uint8_t *slot = rk_scratch(RK_SCR_SLOT_OUT, cf->hdr.slot_size);
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
	memcpy(slot, rk_slot_magic, 4);
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
	cf_slot_mark_written_locked(cf, idx);
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
int cf_current_slot(struct rk_cf *cf, uint64_t idx, int *k, size_t *old_end)
{
	uint8_t p[RK_SLOT_HDR];
	*k = -1;
	*old_end = 0;
	if (rk_chunk_plain_len(rk_cf_size(cf), cf->hdr.chunk_size, idx) == 0)
		return 0; /* past EOF: whatever is there is stale and gets replaced */
	ssize_t n = cf_slot_pread(cf, idx, p, sizeof(p));
	if (n < 0)
		return (int)n;
	if (n < RK_SLOT_HDR || all_zero(p, RK_SLOT_HDR)) {
		/* a hole, or a torn slot: clear what follows when rewriting */
		*old_end = n > 0 ? cf->hdr.slot_size : 0;
		return 0;
	}
	*old_end = cf->hdr.slot_size; /* unknown contents: clear the whole slot */
	int ret = cf_keyidx_of(cf, p, n, k);
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

/* Compress one chunk for cf under the table's method, with the file's
 * incompressible-run estimator: after 8 chunks in a row that did not save
 * 1/8, only every 16th chunk is tried.  Any thread (atomics only). */
static enum rk_comp cf_compress(struct rk_cf *cf, enum rk_comp comp, const uint8_t *pt, size_t len, uint8_t *out,
                                size_t *outlen)
{
	enum rk_comp want = comp;
	if (want == RK_COMP_SNAPPY && atomic_load(&cf->incompressible) >= 8 &&
	    atomic_fetch_add(&cf->comp_skips, 1) % 16 != 15)
		want = RK_COMP_NONE; /* retried every 16th chunk */
	enum rk_comp used = rk_comp_chunk(want, pt, len, out, outlen);
	if (want == RK_COMP_SNAPPY) {
		if (used == RK_COMP_SNAPPY)
			atomic_store(&cf->incompressible, 0);
		else
			atomic_fetch_add(&cf->incompressible, 1);
	}
	return used;
}

int rk_cf_write_chunk(struct rk_cf *cf, uint64_t idx, const uint8_t *pt, uint32_t len, struct rk_key *key,
                      enum rk_comp comp)
{
	uint8_t *cbuf = rk_scratch(RK_SCR_COMP, rk_comp_bound(cf->hdr.chunk_size));
	size_t clen;
	int old, ret;
	size_t old_end;
	if (!cbuf)
		return -ENOMEM;
	if (len == 0 || len > cf->hdr.chunk_size)
		return -EINVAL;
	ret = cf_current_slot(cf, idx, &old, &old_end);
	if (ret < 0)
		return ret;
	enum rk_comp used = cf_compress(cf, comp, pt, len, cbuf, &clen);
	return seal_and_write(cf, idx, cbuf, (uint32_t)clen, len, used, key, old, old_end);
}

struct cjob_arg {
	struct rk_cf *cf;
	enum rk_comp comp;
};

static enum rk_comp cjob_compress(void *arg, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen)
{
	struct cjob_arg *a = arg;
	return cf_compress(a->cf, a->comp, in, len, out, outlen);
}

int64_t cf_write_chunks(struct rk_cf *cf, uint64_t idx, const uint8_t *pt, uint64_t n, struct rk_key *key,
                        enum rk_comp comp, int *err)
{
	uint32_t cs = cf->hdr.chunk_size;
	struct cjob_arg a = {cf, comp};
	/* helpers only for data being compressed: a chunk stored raw costs a
	 * copy, less than handing it to another thread */
	bool solo = comp != RK_COMP_SNAPPY || atomic_load(&cf->incompressible) >= 8;
	struct rk_cjob j = {.in = pt, .cs = cs, .n = n, .fn = cjob_compress, .arg = &a, .solo = solo};
	uint64_t i = 0;
	int ret = n ? rk_cjob_start(&j) : 0;
	for (; ret == 0 && i < n; i++) {
		int old;
		size_t old_end, clen;
		enum rk_comp used;
		/* the slot's current state first, as the single-chunk write does */
		ret = cf_current_slot(cf, idx + i, &old, &old_end);
		if (ret < 0)
			break;
		const uint8_t *payload = rk_cjob_get(&j, i, &clen, &used);
		ret = seal_and_write(cf, idx + i, payload, (uint32_t)clen, cs, used, key, old, old_end);
		rk_cjob_done(&j, i);
		if (ret < 0)
			break;
		rk_mutex_lock(&cf->lock, RK_RANK_CF);
		if ((idx + i + 1) * cs > cf->hdr.size) {
			cf->hdr.size = (idx + i + 1) * cs;
			cf->hdr_changed = true;
		}
		rk_mutex_unlock(&cf->lock);
	}
	if (n)
		rk_cjob_finish(&j);
	*err = ret;
	return (int64_t)i;
}

int rk_cf_rekey_chunk(struct rk_cf *cf, uint64_t idx, struct rk_key *key, bool *changed)
{
	struct slothdr sh;
	uint8_t *payload;
	uint8_t *copy = rk_scratch(RK_SCR_COMP, cf->hdr.slot_size);
	int ret;
	*changed = false;
	if (!copy)
		return -ENOMEM;
	if (rk_chunk_plain_len(rk_cf_size(cf), cf->hdr.chunk_size, idx) == 0)
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
	if (rk_chunk_plain_len(rk_cf_size(src), src->hdr.chunk_size, idx) == 0)
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
