/* rekeyfs - format v2 header operations on an open chunk file: the rewrap
 * of one entry's data key from one key to another and the in-place
 * conversion of a version 1 file (rekeyfs(5), FORMAT V2: Rewrap, Converting
 * a version 1 file).  Header only: no chunk is read or written. */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/format.h"
#include "rekeyfs/lockrank.h"

#include "format_int.h"

/* Make the in-memory header durable in both copies, each synced, keeping
 * the disk's COUNTS_DIRTY state (a clean disk header means the in-memory
 * counts are the disk's: see prepare_count_change_locked).  Caller holds lock. */
static int commit_both_locked(struct rk_cf *cf, const char *crash1)
{
	bool dirty = cf->disk_dirty;
	int ret = 0;
	for (int i = 0; i < 2 && ret == 0; i++) {
		ret = cf_hdr_write_locked(cf, dirty);
		if (ret == 0 && fdatasync(cf->fd) < 0) {
			ret = -errno;
			rk_err("%s: cannot sync header: %s", cf->path, strerror(errno));
		}
		if (ret == 0 && i == 0)
			rk_crashpoint(crash1);
	}
	if (ret == 0 && !dirty)
		cf->copies_equal = true;
	return ret;
}

/* Entry j rewrapped from old to new in memory only (cf->hdr; no write).
 * On failure the entry is left as it was.  Caller holds cf->lock. */
static int rewrap_mem_locked(struct rk_cf *cf, int j, struct rk_key *old, struct rk_key *new)
{
	uint8_t dek[RK_MAX_KEY_BYTES];
	int ret = 0;
	struct rk_cf_keyent *e = &cf->hdr.keys[j], saved = *e;
	if (!cf->writable)
		ret = -EBADF;
	else if (cf->hdr.version < RK_FORMAT_V2 || !e->in_use)
		ret = -EINVAL;
	else if (strcmp(e->name, old->name) != 0 || memcmp(e->fp, old->fp, RK_FP_BYTES) != 0)
		ret = -ESTALE; /* the entry is not (or no longer) wrapped under old */
	else if (!new->material || new->released)
		ret = -EKEYREVOKED;
	else if (new->cipher != e->cipher || new->keylen != e->dek_len)
		ret = -EKEYREJECTED; /* a rewrap cannot change the chunk cipher or key length */
	if (ret == 0)
		ret = rk_dek_unwrap(&cf->hdr, j, old, dek);
	if (ret == 0) {
		if (e->hist_n == RK_WRAP_HIST)
			e->wflags |= RK_WF_HIST_OVERFLOW;
		memmove(e->hist[1], e->hist[0], (size_t)RK_FP_BYTES * (RK_WRAP_HIST - 1));
		memcpy(e->hist[0], old->fp, RK_FP_BYTES);
		if (e->hist_n < RK_WRAP_HIST)
			e->hist_n++;
		memset(e->name, 0, sizeof(e->name));
		snprintf(e->name, sizeof(e->name), "%s", new->name);
		memcpy(e->fp, new->fp, RK_FP_BYTES);
		e->bits = (uint16_t)(new->keylen * 8);
		ret = rk_dek_wrap(&cf->hdr, j, new, dek);
	}
	OPENSSL_cleanse(dek, sizeof(dek));
	if (ret == 0) {
		cf->hdr_changed = true;
		/* the DEK is unchanged: a cached one stays, now under new.  Until
		 * both copies are durable one copy on disk may still name old:
		 * both wrap the same DEK, so either reads */
		struct keyslot *s = &cf->ks[j];
		if (s->resolved && s->err == 0)
			s->key = new;
		else if (s->resolved)
			cf_ks_clear(s);
	} else {
		*e = saved;
	}
	return ret;
}

static void rewrap_err(const struct rk_cf *cf, int j, const struct rk_key *old, const struct rk_key *new, int ret)
{
	if (ret < 0 && ret != -ESTALE)
		rk_err("%s: cannot rewrap the data key of entry %d from key '%s' to '%s': %s", cf->path, j, old->name,
		       new->name, rk_strerror(ret));
}

int rk_rewrap_keys_fit(const struct rk_key *old, const struct rk_key *new, char *why, size_t len)
{
	if (old->cipher == new->cipher && old->keylen == new->keylen)
		return 0;
	snprintf(why, len,
	         "key '%s' (%s, %zu bits) and key '%s' (%s, %zu bits) differ in cipher or strength; a rewrap keeps the "
	         "data keys, so it needs the same cipher and strength (rotate without --rewrap reseals instead)",
	         old->name, rk_cipher_name(old->cipher), old->keylen * 8, new->name, rk_cipher_name(new->cipher),
	         new->keylen * 8);
	return -EINVAL;
}

int rk_hdr_entries_under(const struct rk_cf_header *h, const struct rk_key *k, bool which[RK_CF_MAX_KEYS])
{
	int n = 0;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		which[j] = h->keys[j].in_use && strcmp(h->keys[j].name, k->name) == 0 &&
		           memcmp(h->keys[j].fp, k->fp, RK_FP_BYTES) == 0;
		n += which[j];
	}
	return n;
}

int rk_cf_rewrap_entry(struct rk_cf *cf, int j, struct rk_key *old, struct rk_key *new)
{
	int ret = 0;
	if (j < 0 || j >= RK_CF_MAX_KEYS)
		return -EINVAL;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	ret = rewrap_mem_locked(cf, j, old, new);
	if (ret == 0)
		ret = commit_both_locked(cf, "rewrap.first-copy");
	rk_mutex_unlock(&cf->lock);
	rewrap_err(cf, j, old, new, ret);
	return ret;
}

int rk_cf_rewrap_stage(struct rk_cf *cf, int j, struct rk_key *old, struct rk_key *new)
{
	int ret = 0;
	if (j < 0 || j >= RK_CF_MAX_KEYS)
		return -EINVAL;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	ret = rewrap_mem_locked(cf, j, old, new);
	rk_mutex_unlock(&cf->lock);
	rewrap_err(cf, j, old, new, ret);
	return ret;
}

int rk_cf_hdr_write_copy(struct rk_cf *cf, int i)
{
	int ret = 0;
	if (i < 0 || i > 1)
		return -EINVAL;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	bool dirty = cf->disk_dirty;
	if (!cf->writable)
		ret = -EBADF;
	else if (i == 0 && !cf->hdr_changed)
		goto unlock; /* nothing staged */
	else
		ret = cf_hdr_write_locked(cf, dirty);
	if (ret == 0 && i == 1 && !dirty)
		cf->copies_equal = true;
unlock:
	rk_mutex_unlock(&cf->lock);
	return ret;
}

int cf_upgrade_v2_locked(struct rk_cf *cf)
{
	struct rk_cf_header h = cf->hdr;
	uint8_t dek[RK_MAX_KEY_BYTES];
	int ret = 0;
	struct rk_key *k = NULL;
	RK_ASSERT_HELD(&cf->lock);
	if (cf->hdr.version >= RK_FORMAT_V2)
		return 0; /* nothing to do */
	h.version = RK_FORMAT_V2;
	for (int j = 0; ret == 0 && j < RK_CF_MAX_KEYS; j++) {
		struct rk_cf_keyent *e = &h.keys[j];
		if (!e->in_use)
			continue;
		ret = cf->kr ? rk_keyring_get(cf->kr, e->name, &k) : -ENOKEY;
		if (ret == 0 && (CRYPTO_memcmp(k->fp, e->fp, RK_FP_BYTES) != 0 || k->cipher != e->cipher || k->p11))
			ret = -EKEYREJECTED; /* a token key never had a v1 subkey (rk_key.p11) */
		if (ret == 0) {
			/* the DEK is the v1 subkey: every chunk keeps opening as it is */
			e->wrap_method = RK_WRAP_METHOD_FILE;
			e->dek_len = (uint8_t)k->keylen;
			e->bits = (uint16_t)(k->keylen * 8);
			e->hist_n = 0;
			e->wflags = RK_WF_DERIVED;
			ret = rk_derive_file_key(k->cipher, k->material, k->keylen, h.file_id, dek, k->keylen);
		}
		if (ret == 0)
			ret = rk_dek_wrap(&h, j, k, dek);
		OPENSSL_cleanse(dek, sizeof(dek));
		if (ret < 0)
			rk_err("%s: cannot convert to format 2: key entry %d ('%s'): %s", cf->path, j, e->name,
			       rk_strerror(ret));
	}
	if (ret == 0) {
		/* cached subkeys stay: each is its entry's DEK now */
		cf->hdr = h;
		cf->hdr_changed = true;
	}
	return ret;
}

int rk_cf_upgrade_v2(struct rk_cf *cf)
{
	int ret = 0;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	if (!cf->writable)
		ret = -EBADF;
	else if (cf->hdr.version < RK_FORMAT_V2) {
		ret = cf_upgrade_v2_locked(cf);
		if (ret == 0)
			ret = commit_both_locked(cf, "upgrade.first-copy");
	}
	rk_mutex_unlock(&cf->lock);
	return ret;
}

int rk_cf_reset_chunkless(struct rk_cf *cf, struct rk_key *target)
{
	int ret = 0, tj = -1;
	bool changed[RK_CF_MAX_KEYS] = {false}, any = false;
	uint64_t chunks = 0;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	if (!cf->writable || cf->hdr.version < RK_FORMAT_V2)
		goto unlock;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		const struct rk_cf_keyent *e = &cf->hdr.keys[j];
		if (!e->in_use)
			continue;
		chunks += e->count; /* the live counts: a writer adds under this lock */
		if (strcmp(e->name, target->name) == 0 && memcmp(e->fp, target->fp, RK_FP_BYTES) == 0)
			tj = j;
	}
	if (chunks > 0)
		goto unlock; /* entries with no chunk in a file with chunks do not block a release */
	struct rk_cf_header saved = cf->hdr;
	for (int j = 0; ret == 0 && j < RK_CF_MAX_KEYS; j++) {
		struct rk_cf_keyent *e = &cf->hdr.keys[j];
		if (!e->in_use || j == tj)
			continue;
		/* no slot names entry j (no chunk at all): no reader uses its key */
		cf_ks_clear(&cf->ks[j]);
		changed[j] = any = true;
		if (tj >= 0) {
			memset(e, 0, sizeof(*e)); /* no slot names it: dropped */
			continue;
		}
		/* the first other entry becomes the target's, with a fresh data key */
		memset(e, 0, sizeof(*e));
		e->in_use = true;
		snprintf(e->name, sizeof(e->name), "%s", target->name);
		memcpy(e->fp, target->fp, RK_FP_BYTES);
		e->cipher = target->cipher;
		ret = cf_new_dek_locked(cf, j, target);
		tj = j;
	}
	if (ret == 0 && any) {
		cf->hdr_changed = true;
		ret = commit_both_locked(cf, "rewrap.first-copy");
	}
	if (ret < 0) {
		/* a failed commit may have left one copy with the new entries: both
		 * copies then name only keys whose entries open (old or new) */
		cf->hdr = saved;
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			if (changed[j])
				cf_ks_clear(&cf->ks[j]); /* resolved again from the header on use */
		rk_err("%s: cannot give the header of this chunkless file a data key under '%s': %s", cf->path,
		       target->name, rk_strerror(ret));
	}
unlock:
	rk_mutex_unlock(&cf->lock);
	return ret;
}

int rk_cf_header_version(struct rk_cf *cf)
{
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	int v = cf->hdr.version;
	rk_mutex_unlock(&cf->lock);
	return v;
}
