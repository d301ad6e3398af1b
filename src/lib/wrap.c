/* rekeyfs - format v2: per-file data keys (DEKs) wrapped by the key named in
 * each header key entry (KEK).  rekeyfs(5), FORMAT V2: the wrap, the unwrap,
 * a fresh DEK for a new entry, the rewrap of one entry from one KEK to
 * another (header only) and the in-place conversion of a v1 file. */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/format.h"
#include "rekeyfs/lockrank.h"

#include "format_int.h"

/* The wrap AAD of entry j of h (RK_WRAP_AAD_LEN bytes): le16 version ||
 * file id || u8 j || key entry bytes 0..83 || wrap entry bytes 0..7 || wrap
 * entry bytes 84..147, as rk_hdr_encode would write them. */
static void wrap_aad(const struct rk_cf_header *h, int j, uint8_t *aad)
{
	const struct rk_cf_keyent *e = &h->keys[j];
	uint8_t w[RK_HDR_WRAP_ENTRY];
	uint8_t *p = aad;
	rk_put16(p, h->version);
	p += 2;
	memcpy(p, h->file_id, RK_FILE_ID_BYTES);
	p += RK_FILE_ID_BYTES;
	*p++ = (uint8_t)j;
	memset(p, 0, 84);
	memcpy(p, e->name, strnlen(e->name, RK_KEY_NAME_MAX));
	memcpy(p + 64, e->fp, RK_FP_BYTES);
	p[80] = (uint8_t)e->cipher;
	p[81] = 1;
	rk_put16(p + 82, e->bits);
	p += 84;
	rk_wrap_entry_encode(e, w);
	memcpy(p, w, 8);
	p += 8;
	memcpy(p, w + 84, RK_WRAP_HIST * RK_FP_BYTES);
}

/* kek usable for entry e: material present, same fingerprint, cipher and
 * length as the entry says. */
static int kek_check(const struct rk_cf_keyent *e, const struct rk_key *kek)
{
	if (!kek->material || kek->released)
		return -EKEYREVOKED;
	if (CRYPTO_memcmp(kek->fp, e->fp, RK_FP_BYTES) != 0 || kek->cipher != e->cipher || kek->keylen != e->dek_len)
		return -EKEYREJECTED;
	return 0;
}

int rk_dek_wrap(struct rk_cf_header *h, int j, const struct rk_key *kek, const uint8_t *dek)
{
	struct rk_cf_keyent *e = &h->keys[j];
	uint8_t kwk[RK_MAX_KEY_BYTES], aad[RK_WRAP_AAD_LEN];
	int ret = kek_check(e, kek);
	if (ret == 0)
		ret = rk_derive_wrap_key(kek->material, kek->keylen, h->file_id, kwk, kek->keylen);
	if (ret == 0)
		ret = rk_random(e->wnonce, RK_NONCE_BYTES);
	if (ret == 0) {
		memset(e->wrapped, 0, sizeof(e->wrapped));
		wrap_aad(h, j, aad);
		ret = rk_aead_seal(e->cipher, kwk, kek->keylen, e->wnonce, aad, sizeof(aad), dek, e->dek_len, e->wrapped,
		                   e->wtag);
	}
	OPENSSL_cleanse(kwk, sizeof(kwk));
	return ret;
}

int rk_dek_unwrap(const struct rk_cf_header *h, int j, const struct rk_key *kek, uint8_t *dek)
{
	const struct rk_cf_keyent *e = &h->keys[j];
	uint8_t kwk[RK_MAX_KEY_BYTES], aad[RK_WRAP_AAD_LEN];
	int ret = h->version >= RK_FORMAT_V2 && e->in_use && e->wrap_method == RK_WRAP_METHOD_FILE ? 0 : -EINVAL;
	if (ret == 0)
		ret = kek_check(e, kek);
	if (ret == 0)
		ret = rk_derive_wrap_key(kek->material, kek->keylen, h->file_id, kwk, kek->keylen);
	if (ret == 0) {
		wrap_aad(h, j, aad);
		ret = rk_aead_open(e->cipher, kwk, kek->keylen, e->wnonce, aad, sizeof(aad), e->wrapped, e->dek_len,
		                   e->wtag, dek);
		if (ret < 0) {
			OPENSSL_cleanse(dek, e->dek_len);
			ret = -EBADMSG;
		}
	}
	OPENSSL_cleanse(kwk, sizeof(kwk));
	return ret;
}

int cf_new_dek_locked(struct rk_cf *cf, int j, struct rk_key *key)
{
	struct keyslot *s = &cf->ks[j];
	struct rk_cf_keyent *e = &cf->hdr.keys[j];
	int ret = 0;
	if (!s->subkey)
		s->subkey = rk_secure_alloc(RK_MAX_KEY_BYTES);
	if (!s->subkey)
		return -ENOMEM;
	e->wrap_method = RK_WRAP_METHOD_FILE;
	e->dek_len = (uint8_t)key->keylen;
	e->bits = (uint16_t)(key->keylen * 8);
	e->hist_n = 0;
	e->wflags = 0;
	memset(e->hist, 0, sizeof(e->hist));
	ret = rk_random(s->subkey, key->keylen);
	if (ret == 0)
		ret = rk_dek_wrap(&cf->hdr, j, key, s->subkey);
	if (ret < 0) {
		OPENSSL_cleanse(s->subkey, RK_MAX_KEY_BYTES);
		s->resolved = false;
		s->key = NULL;
		s->err = 0;
		rk_err("%s: cannot make a data key for key '%s': %s", cf->path, key->name, rk_strerror(ret));
		return ret;
	}
	s->key = key;
	s->err = 0;
	s->resolved = true;
	return 0;
}

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

int rk_cf_rewrap_entry(struct rk_cf *cf, int j, struct rk_key *old, struct rk_key *new)
{
	uint8_t dek[RK_MAX_KEY_BYTES];
	int ret = 0;
	if (j < 0 || j >= RK_CF_MAX_KEYS)
		return -EINVAL;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
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
		ret = commit_both_locked(cf, "rewrap.first-copy");
	} else {
		*e = saved;
	}
	if (ret == 0) {
		/* the DEK is unchanged: a cached one stays, now under new */
		struct keyslot *s = &cf->ks[j];
		if (s->resolved && s->err == 0)
			s->key = new;
		else if (s->resolved)
			cf_ks_clear(s);
	}
	/* a failed commit leaves the in-memory entry naming new while one copy
	 * on disk may still name old: both wrap the same DEK, so either reads */
	rk_mutex_unlock(&cf->lock);
	if (ret < 0 && ret != -ESTALE)
		rk_err("%s: cannot rewrap the data key of entry %d from key '%s' to '%s': %s", cf->path, j, old->name,
		       new->name, rk_strerror(ret));
	return ret;
}

int rk_cf_upgrade_v2(struct rk_cf *cf)
{
	struct rk_cf_header h;
	uint8_t dek[RK_MAX_KEY_BYTES];
	int ret = 0, j = 0;
	struct rk_key *k = NULL;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	if (!cf->writable)
		ret = -EBADF;
	else if (cf->hdr.version >= RK_FORMAT_V2)
		goto unlock; /* nothing to do */
	h = cf->hdr;
	h.version = RK_FORMAT_V2;
	for (j = 0; ret == 0 && j < RK_CF_MAX_KEYS; j++) {
		struct rk_cf_keyent *e = &h.keys[j];
		if (!e->in_use)
			continue;
		ret = cf->kr ? rk_keyring_get(cf->kr, e->name, &k) : -ENOKEY;
		if (ret == 0 && (CRYPTO_memcmp(k->fp, e->fp, RK_FP_BYTES) != 0 || k->cipher != e->cipher))
			ret = -EKEYREJECTED;
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
		cf->hdr = h;
		cf->hdr_changed = true;
		ret = commit_both_locked(cf, "upgrade.first-copy");
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
