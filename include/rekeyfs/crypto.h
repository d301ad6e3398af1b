/* rekeyfs - authenticated encryption, key derivation and randomness (OpenSSL EVP). */
#ifndef REKEYFS_CRYPTO_H
#define REKEYFS_CRYPTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum rk_cipher {
	RK_CIPHER_NONE = 0,
	RK_CIPHER_AES_GCM = 1,        /* "AES/GCM/NoPadding", 128 or 256 bit */
	RK_CIPHER_CHACHA20_POLY1305 = 2, /* "ChaCha20/Poly1305/NoPadding", 256 bit */
};

#define RK_MAX_KEY_BYTES 32
#define RK_NONCE_BYTES 12
#define RK_TAG_BYTES 16
#define RK_FP_BYTES 16    /* key fingerprint length */
#define RK_FILE_ID_BYTES 16

/* Parse "AES/GCM/NoPadding" etc.  Returns 0 and sets *c, or -EINVAL with
 * *why pointing at a static explanation (unauthenticated modes, unknown). */
int rk_cipher_parse(const char *name, enum rk_cipher *c, const char **why);
const char *rk_cipher_name(enum rk_cipher c);
/* 0 if STRENGTH (bits) is valid for the cipher, else -EINVAL with *why. */
int rk_cipher_check_strength(enum rk_cipher c, unsigned bits, const char **why);

/* Fill buf with cryptographically secure random bytes (RAND_bytes).  Tests
 * can make it deterministic (golden fixtures) with rk_random_set_seed(). */
int rk_random(void *buf, size_t len);
/* Deterministic stream for golden fixtures only: seed != NULL switches to a
 * SHA-256 counter-mode stream from the seed; NULL restores RAND_bytes. */
void rk_random_set_seed(const char *seed);

/* Fingerprint of a key: first 16 bytes of HMAC-SHA256(key, "rekeyfs key
 * fingerprint v1" || cipher id || key length).  One-way: never reveals the key. */
int rk_key_fingerprint(enum rk_cipher c, const uint8_t *key, size_t keylen, uint8_t fp[RK_FP_BYTES]);

/* Per-file subkey: HKDF-SHA256(ikm = master key, salt = file id,
 * info = "rekeyfs chunk key v1"), output the cipher's key length. */
int rk_derive_file_key(enum rk_cipher c, const uint8_t *key, size_t keylen,
                       const uint8_t file_id[RK_FILE_ID_BYTES], uint8_t *out, size_t outlen);

/* Format v2 wrapping key of a KEK: HKDF-SHA256(ikm = KEK, salt = file id,
 * info = "rekeyfs dek wrap v2"), outlen bytes (the KEK's length). */
int rk_derive_wrap_key(const uint8_t *kek, size_t keklen, const uint8_t file_id[RK_FILE_ID_BYTES], uint8_t *out,
                       size_t outlen);

/* Seal: ct = AEAD(key, nonce, aad, pt); writes len bytes of ct and a 16-byte tag.
 * ct may equal pt (in place).  Contexts are cached per thread. */
int rk_aead_seal(enum rk_cipher c, const uint8_t *key, size_t keylen,
                 const uint8_t nonce[RK_NONCE_BYTES], const uint8_t *aad, size_t aadlen,
                 const uint8_t *pt, size_t len, uint8_t *ct, uint8_t tag[RK_TAG_BYTES]);
/* Open: returns 0, or -EBADMSG when authentication fails. */
int rk_aead_open(enum rk_cipher c, const uint8_t *key, size_t keylen,
                 const uint8_t nonce[RK_NONCE_BYTES], const uint8_t *aad, size_t aadlen,
                 const uint8_t *ct, size_t len, const uint8_t tag[RK_TAG_BYTES], uint8_t *pt);

/* SHA-256 of a buffer (header checksums). */
int rk_sha256(const void *buf, size_t len, uint8_t out[32]);

/* Free the calling thread's cached cipher contexts (thread exit). */
void rk_crypto_thread_cleanup(void);

#endif
