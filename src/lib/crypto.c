/* rekeyfs - AEAD sealing, HKDF and randomness on OpenSSL EVP. */
#include "config.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "rekeyfs/common.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/scratch.h"
#include "rekeyfs/lockrank.h"

int rk_cipher_parse(const char *name, enum rk_cipher *c, const char **why)
{
	static const char unauth[] =
		"is an unauthenticated mode: rekeyfs only seals with authenticated encryption "
		"(AES/GCM/NoPadding or ChaCha20/Poly1305/NoPadding), so that a changed or moved chunk "
		"is detected instead of read back as wrong bytes";
	*why = NULL;
	if (strcmp(name, "AES/GCM/NoPadding") == 0) {
		*c = RK_CIPHER_AES_GCM;
		return 0;
	}
	if (strcmp(name, "ChaCha20/Poly1305/NoPadding") == 0) {
		*c = RK_CIPHER_CHACHA20_POLY1305;
		return 0;
	}
	if (strstr(name, "/ECB/") || strstr(name, "/CBC/") || strstr(name, "/CTR/") || strstr(name, "/CFB/") ||
	    strstr(name, "/OFB/")) {
		*why = unauth;
		return -EINVAL;
	}
	*why = "is not a supported cipher (use AES/GCM/NoPadding with 128 or 256, or "
	       "ChaCha20/Poly1305/NoPadding with 256)";
	return -EINVAL;
}

const char *rk_cipher_name(enum rk_cipher c)
{
	switch (c) {
	case RK_CIPHER_AES_GCM:
		return "AES/GCM/NoPadding";
	case RK_CIPHER_CHACHA20_POLY1305:
		return "ChaCha20/Poly1305/NoPadding";
	default:
		return "unknown";
	}
}

int rk_cipher_check_strength(enum rk_cipher c, unsigned bits, const char **why)
{
	*why = NULL;
	if (c == RK_CIPHER_AES_GCM && (bits == 128 || bits == 256))
		return 0;
	if (c == RK_CIPHER_CHACHA20_POLY1305 && bits == 256)
		return 0;
	*why = c == RK_CIPHER_AES_GCM ? "AES/GCM/NoPadding takes a strength of 128 or 256 bits"
	                              : "ChaCha20/Poly1305/NoPadding takes a strength of 256 bits";
	return -EINVAL;
}

static const EVP_CIPHER *evp_cipher(enum rk_cipher c, size_t keylen)
{
	switch (c) {
	case RK_CIPHER_AES_GCM:
		return keylen == 16 ? EVP_aes_128_gcm() : keylen == 32 ? EVP_aes_256_gcm() : NULL;
	case RK_CIPHER_CHACHA20_POLY1305:
		return keylen == 32 ? EVP_chacha20_poly1305() : NULL;
	default:
		return NULL;
	}
}

/* ---- randomness -------------------------------------------------------------- */
static pthread_mutex_t det_lock = PTHREAD_MUTEX_INITIALIZER; /* rank RK_RANK_DET (94): det_* state */
static bool det_on;
static uint8_t det_seed[32];
static uint64_t det_counter;

void rk_random_set_seed(const char *seed)
{
	rk_mutex_lock(&det_lock, RK_RANK_DET);
	if (seed) {
		rk_sha256(seed, strlen(seed), det_seed);
		det_counter = 0;
		det_on = true;
	} else {
		det_on = false;
	}
	rk_mutex_unlock(&det_lock);
}

int rk_random(void *buf, size_t len)
{
	int ret = 0;
	rk_mutex_lock(&det_lock, RK_RANK_DET);
	if (det_on) {
		uint8_t *p = buf;
		while (len > 0) {
			uint8_t in[40], out[32];
			memcpy(in, det_seed, 32);
			rk_put64(in + 32, det_counter++);
			rk_sha256(in, sizeof(in), out);
			size_t n = RK_MIN(len, sizeof(out));
			memcpy(p, out, n);
			p += n;
			len -= n;
		}
	} else if (RAND_bytes(buf, (int)len) != 1) {
		rk_err("the random number generator failed");
		ret = -EIO;
	}
	rk_mutex_unlock(&det_lock);
	return ret;
}

int rk_sha256(const void *buf, size_t len, uint8_t out[32])
{
	unsigned int olen = 32;
	return EVP_Digest(buf, len, out, &olen, EVP_sha256(), NULL) == 1 ? 0 : -EIO;
}

/* ---- key derivation ----------------------------------------------------------- */
int rk_key_fingerprint(enum rk_cipher c, const uint8_t *key, size_t keylen, uint8_t fp[RK_FP_BYTES])
{
	static const char label[] = "rekeyfs key fingerprint v1";
	/* message: the label without its NUL, then the cipher id, then the key length */
	uint8_t msg[sizeof(label) - 1 + 2], mac[32];
	unsigned int maclen = sizeof(mac);
	memcpy(msg, label, sizeof(label) - 1);
	msg[sizeof(label) - 1] = (uint8_t)c;
	msg[sizeof(label)] = (uint8_t)keylen;
	if (!HMAC(EVP_sha256(), key, (int)keylen, msg, sizeof(msg), mac, &maclen))
		return -EIO;
	memcpy(fp, mac, RK_FP_BYTES);
	OPENSSL_cleanse(mac, sizeof(mac));
	return 0;
}

static int hkdf_file(const char *info, size_t infolen, const uint8_t *key, size_t keylen,
                     const uint8_t file_id[RK_FILE_ID_BYTES], uint8_t *out, size_t outlen);

int rk_derive_file_key(enum rk_cipher c, const uint8_t *key, size_t keylen,
                       const uint8_t file_id[RK_FILE_ID_BYTES], uint8_t *out, size_t outlen)
{
	static const char info[] = "rekeyfs chunk key v1";
	(void)c;
	return hkdf_file(info, sizeof(info) - 1, key, keylen, file_id, out, outlen);
}

int rk_derive_wrap_key(const uint8_t *kek, size_t keklen, const uint8_t file_id[RK_FILE_ID_BYTES], uint8_t *out,
                       size_t outlen)
{
	static const char info[] = "rekeyfs dek wrap v2";
	return hkdf_file(info, sizeof(info) - 1, kek, keklen, file_id, out, outlen);
}

static int hkdf_file(const char *info, size_t infolen, const uint8_t *key, size_t keylen,
                     const uint8_t file_id[RK_FILE_ID_BYTES], uint8_t *out, size_t outlen)
{
	int ret = -EIO;
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kctx = NULL;
	OSSL_PARAM params[5], *p = params;

	if (!kdf)
		goto out;
	kctx = EVP_KDF_CTX_new(kdf);
	if (!kctx)
		goto out;
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, keylen);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)file_id, RK_FILE_ID_BYTES);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
	*p = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(kctx, out, outlen, params) == 1)
		ret = 0;
out:
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return ret;
}

/* ---- AEAD ------------------------------------------------------------------------
 * One encrypt and one decrypt context per thread and cipher, reused: only
 * key and nonce are set per chunk, so no allocation on the hot path. */
struct thread_ctxs {
	EVP_CIPHER_CTX *ctx[3][2]; /* [cipher-ish slot][0 enc, 1 dec] */
	const EVP_CIPHER *cur[3][2];
};

static void ctxs_free(void *p)
{
	struct thread_ctxs *t = p;
	if (!t)
		return;
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 2; j++)
			EVP_CIPHER_CTX_free(t->ctx[i][j]);
	free(t);
}

/* The contexts live in the thread's rk_thread_state (scratch.h), freed with
 * it at thread exit. */
void rk_crypto_thread_cleanup(void)
{
	struct rk_thread_state *s = rk_thread_state_peek();
	if (s) {
		ctxs_free(s->crypto);
		s->crypto = NULL;
	}
}

static EVP_CIPHER_CTX *get_ctx(const EVP_CIPHER *ciph, int slot, int dec, bool *fresh)
{
	struct rk_thread_state *s = rk_thread_state();
	if (!s)
		return NULL;
	struct thread_ctxs *t = s->crypto;
	if (!t) {
		t = calloc(1, sizeof(*t));
		if (!t)
			return NULL;
		s->crypto = t;
		s->crypto_free = ctxs_free;
	}
	if (!t->ctx[slot][dec]) {
		t->ctx[slot][dec] = EVP_CIPHER_CTX_new();
		if (!t->ctx[slot][dec])
			return NULL;
	}
	*fresh = t->cur[slot][dec] != ciph;
	t->cur[slot][dec] = ciph;
	return t->ctx[slot][dec];
}

/* After each operation the context is keyed again with zeros: the cipher
 * context (OpenSSL heap memory: the AES key schedule, the GHASH key, the
 * ChaCha20 key) then holds no copy of a subkey between operations, so a
 * released key leaves no copy in an idle thread's context. */
static const uint8_t zero_key[32];

static void ctx_scrub(EVP_CIPHER_CTX *ctx, int dec)
{
	if (dec)
		(void)EVP_DecryptInit_ex(ctx, NULL, NULL, zero_key, NULL);
	else
		(void)EVP_EncryptInit_ex(ctx, NULL, NULL, zero_key, NULL);
}

static int ctx_slot(enum rk_cipher c, size_t keylen)
{
	if (c == RK_CIPHER_CHACHA20_POLY1305)
		return 2;
	return keylen == 16 ? 0 : 1;
}

int rk_aead_seal(enum rk_cipher c, const uint8_t *key, size_t keylen, const uint8_t nonce[RK_NONCE_BYTES],
                 const uint8_t *aad, size_t aadlen, const uint8_t *pt, size_t len, uint8_t *ct,
                 uint8_t tag[RK_TAG_BYTES])
{
	const EVP_CIPHER *ciph = evp_cipher(c, keylen);
	bool fresh;
	int outl;
	if (!ciph)
		return -EINVAL;
	EVP_CIPHER_CTX *ctx = get_ctx(ciph, ctx_slot(c, keylen), 0, &fresh);
	if (!ctx)
		return -ENOMEM;
	if (fresh && EVP_EncryptInit_ex(ctx, ciph, NULL, NULL, NULL) != 1)
		goto fail;
	if (EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
		goto fail;
	if (aadlen && EVP_EncryptUpdate(ctx, NULL, &outl, aad, (int)aadlen) != 1)
		goto fail;
	if (len && EVP_EncryptUpdate(ctx, ct, &outl, pt, (int)len) != 1)
		goto fail;
	if (EVP_EncryptFinal_ex(ctx, ct + len, &outl) != 1)
		goto fail;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, RK_TAG_BYTES, tag) != 1)
		goto fail;
	ctx_scrub(ctx, 0);
	return 0;
fail:
	/* force a full re-initialisation next time */
	EVP_CIPHER_CTX_reset(ctx);
	get_ctx(NULL, ctx_slot(c, keylen), 0, &fresh);
	return -EIO;
}

int rk_aead_open(enum rk_cipher c, const uint8_t *key, size_t keylen, const uint8_t nonce[RK_NONCE_BYTES],
                 const uint8_t *aad, size_t aadlen, const uint8_t *ct, size_t len, const uint8_t tag[RK_TAG_BYTES],
                 uint8_t *pt)
{
	const EVP_CIPHER *ciph = evp_cipher(c, keylen);
	bool fresh;
	int outl;
	if (!ciph)
		return -EINVAL;
	EVP_CIPHER_CTX *ctx = get_ctx(ciph, ctx_slot(c, keylen), 1, &fresh);
	if (!ctx)
		return -ENOMEM;
	if (fresh && EVP_DecryptInit_ex(ctx, ciph, NULL, NULL, NULL) != 1)
		goto fail;
	if (EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) != 1)
		goto fail;
	if (aadlen && EVP_DecryptUpdate(ctx, NULL, &outl, aad, (int)aadlen) != 1)
		goto fail;
	if (len && EVP_DecryptUpdate(ctx, pt, &outl, ct, (int)len) != 1)
		goto fail;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, RK_TAG_BYTES, (void *)tag) != 1)
		goto fail;
	if (EVP_DecryptFinal_ex(ctx, pt + len, &outl) != 1) {
		ctx_scrub(ctx, 1);
		return -EBADMSG;
	}
	ctx_scrub(ctx, 1);
	return 0;
fail:
	EVP_CIPHER_CTX_reset(ctx);
	get_ctx(NULL, ctx_slot(c, keylen), 1, &fresh);
	return -EIO;
}
