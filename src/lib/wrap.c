/* rekeyfs - format v2: per-file data keys (DEKs) wrapped by the key named in
 * each header key entry (KEK).  rekeyfs(5), FORMAT V2: the wrap, the unwrap
 * and a fresh DEK for a new entry (the header operations built on them, the
 * rewrap and the conversion, are in rewrap.c). */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/format.h"
#include "rekeyfs/lockrank.h"

#include "format_int.h"
#include "p11.h"

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
 * length as the entry says.  (A token key's material is its host secret:
 * present until released, never used to wrap.) */
static int kek_check(const struct rk_cf_keyent *e, const struct rk_key *kek)
{
	if (!kek->material || kek->released)
		return -EKEYREVOKED;
	if (CRYPTO_memcmp(kek->fp, e->fp, RK_FP_BYTES) != 0 || kek->cipher != e->cipher || kek->keylen != e->dek_len)
		return -EKEYREJECTED;
	return 0;
}

/* The wrap method of a KEK: a token key wraps in its token. */
static uint8_t kek_method(const struct rk_key *kek)
{
	return kek->p11 ? RK_WRAP_METHOD_PKCS11 : RK_WRAP_METHOD_FILE;
}

int rk_dek_wrap(struct rk_cf_header *h, int j, const struct rk_key *kek, const uint8_t *dek)
{
	struct rk_cf_keyent *e = &h->keys[j];
	uint8_t kwk[RK_MAX_KEY_BYTES], aad[RK_WRAP_AAD_LEN];
	int ret = kek_check(e, kek);
	if (ret == 0 && kek->p11 && e->cipher != RK_CIPHER_AES_GCM)
		ret = -EKEYREJECTED; /* the token seals with AES-GCM only */
	if (ret == 0)
		ret = rk_random(e->wnonce, RK_NONCE_BYTES);
	if (ret == 0) {
		/* the method is bound by the AAD: set before it is made */
		e->wrap_method = kek_method(kek);
		memset(e->wrapped, 0, sizeof(e->wrapped));
		wrap_aad(h, j, aad);
	}
	if (ret == 0 && kek->p11) {
		ret = rk_p11_seal(kek->p11, e->wnonce, aad, sizeof(aad), dek, e->dek_len, e->wrapped, e->wtag);
	} else if (ret == 0) {
		ret = rk_derive_wrap_key(kek->material, kek->keylen, h->file_id, kwk, kek->keylen);
		if (ret == 0)
			ret = rk_aead_seal(e->cipher, kwk, kek->keylen, e->wnonce, aad, sizeof(aad), dek, e->dek_len,
			                   e->wrapped, e->wtag);
	}
	OPENSSL_cleanse(kwk, sizeof(kwk));
	return ret;
}

int rk_dek_unwrap(const struct rk_cf_header *h, int j, const struct rk_key *kek, uint8_t *dek)
{
	const struct rk_cf_keyent *e = &h->keys[j];
	uint8_t kwk[RK_MAX_KEY_BYTES], aad[RK_WRAP_AAD_LEN];
	int ret = h->version >= RK_FORMAT_V2 && e->in_use &&
	                  (e->wrap_method == RK_WRAP_METHOD_FILE || e->wrap_method == RK_WRAP_METHOD_PKCS11)
	              ? 0
	              : -EINVAL;
	if (ret == 0)
		ret = kek_check(e, kek);
	if (ret == 0 && e->wrap_method != kek_method(kek))
		ret = -EKEYREJECTED; /* a file key never opens a token's wrap, nor the reverse */
	if (ret == 0) {
		wrap_aad(h, j, aad);
		if (kek->p11) {
			ret = rk_p11_open(kek->p11, e->wnonce, aad, sizeof(aad), e->wrapped, e->dek_len, e->wtag, dek);
		} else {
			ret = rk_derive_wrap_key(kek->material, kek->keylen, h->file_id, kwk, kek->keylen);
			if (ret == 0 && rk_aead_open(e->cipher, kwk, kek->keylen, e->wnonce, aad, sizeof(aad), e->wrapped,
			                             e->dek_len, e->wtag, dek) < 0)
				ret = -EBADMSG;
		}
		if (ret < 0)
			OPENSSL_cleanse(dek, e->dek_len);
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
