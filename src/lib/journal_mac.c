/* rekeyfs - journal record authentication (HMAC-SHA256 under a key derived
 * from a key file) and the journal header encoding. */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <uthash.h>

#include "rekeyfs/common.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/keys.h"
#include "journal_int.h"

const uint8_t rk_jhdr_magic[4] = {'R', 'K', 'J', 'H'};
const uint8_t rk_jrec_magic[4] = {'R', 'K', 'J', '2'};
const uint8_t rk_jrec_v1_magic[4] = {'R', 'K', 'J', '1'};

/* ---- record authentication ----------------------------------------------------------
 * HMAC-SHA256 keyed by HKDF-SHA256(key material of the key the header names,
 * salt = journal id, info = "rekeyfs journal v2" || key fingerprint). */
void jmac_free(struct jmac *m)
{
	EVP_MAC_CTX_free(m->ctx);
	EVP_MAC_free(m->mac);
	m->ctx = NULL;
	m->mac = NULL;
}

int jmac_init(struct jmac *m, const struct rk_key *k, const uint8_t id[JID_BYTES])
{
	static const char info_s[] = "rekeyfs journal v2";
	uint8_t info[sizeof(info_s) - 1 + RK_FP_BYTES], mk[32];
	int ret = -EIO;
	EVP_KDF *kdf = NULL;
	EVP_KDF_CTX *kctx = NULL;
	OSSL_PARAM params[5], *p = params;
	memset(m, 0, sizeof(*m));
	if (!k->material || k->released) {
		ret = -EKEYREVOKED;
		goto out;
	}
	memcpy(info, info_s, sizeof(info_s) - 1);
	memcpy(info + sizeof(info_s) - 1, k->fp, RK_FP_BYTES);
	kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	if (!kctx)
		goto out;
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, k->material, k->keylen);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)id, JID_BYTES);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, sizeof(info));
	*p = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(kctx, mk, sizeof(mk), params) != 1)
		goto out;
	m->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	m->ctx = m->mac ? EVP_MAC_CTX_new(m->mac) : NULL;
	if (!m->ctx)
		goto out;
	OSSL_PARAM mp[2] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
	                    OSSL_PARAM_construct_end()};
	if (EVP_MAC_init(m->ctx, mk, sizeof(mk), mp) != 1)
		goto out;
	ret = 0;
out:
	OPENSSL_cleanse(mk, sizeof(mk));
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	if (ret < 0)
		jmac_free(m);
	return ret;
}

/* MAC of the concatenated buffers into out (REC_SUM bytes). */
int jmac_compute(struct jmac *m, const struct iovec *iov, int n, uint8_t *out)
{
	size_t ol = 0;
	if (EVP_MAC_init(m->ctx, NULL, 0, NULL) != 1)
		return -EIO;
	for (int i = 0; i < n; i++)
		if (iov[i].iov_len && EVP_MAC_update(m->ctx, iov[i].iov_base, iov[i].iov_len) != 1)
			return -EIO;
	if (EVP_MAC_final(m->ctx, out, &ol, REC_SUM) != 1 || ol != REC_SUM)
		return -EIO;
	return 0;
}

int jmac_verify(struct jmac *m, const uint8_t *buf, size_t len, const uint8_t *tag)
{
	uint8_t t[REC_SUM];
	struct iovec v = {(void *)buf, len};
	int ret = jmac_compute(m, &v, 1, t);
	if (ret == 0 && CRYPTO_memcmp(t, tag, REC_SUM) != 0)
		ret = -EBADMSG;
	return ret;
}

/* Encode the journal header (id, key) with its MAC. */
int jhdr_encode(struct jmac *m, const uint8_t id[JID_BYTES], const char *keyname, const uint8_t *fp,
                       uint8_t *h)
{
	size_t nl = strlen(keyname);
	memset(h, 0, JHDR_SIZE);
	memcpy(h, rk_jhdr_magic, 4);
	rk_put16(h + 4, JVERSION);
	h[6] = (uint8_t)nl;
	memcpy(h + 8, id, JID_BYTES);
	memcpy(h + 24, fp, RK_FP_BYTES);
	memcpy(h + 40, keyname, nl);
	struct iovec v = {h, JHDR_MACOFF};
	return jmac_compute(m, &v, 1, h + JHDR_MACOFF);
}
