/* rekeyfs - journal internals shared by journal.c (writer, committer,
 * attached files), journal_replay.c (replay) and journal_mac.c (record
 * authentication, header encoding).  Not a public header. */
#ifndef REKEYFS_JOURNAL_INT_H
#define REKEYFS_JOURNAL_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <openssl/evp.h>

#include "rekeyfs/journal.h"
#include "rekeyfs/keys.h"

/* journal header (see journal.h) */
#define JHDR_SIZE 136
#define JHDR_MACOFF 104
#define JID_BYTES 16
#define JVERSION 3     /* written; replay also reads version 2 (no size records) */
#define JVERSION_MIN 2
/* records */
#define REC_HDR 64
#define REC_SUM 32
#define REC_SLOT 1
#define REC_TRUNC 2
#define REC_SIZE 3     /* version 3: the plaintext size an fsync made durable */
#define HANDLE_MAX 128
#define REC_V1_HDR 56
extern const uint8_t rk_jhdr_magic[4];
extern const uint8_t rk_jrec_magic[4];
extern const uint8_t rk_jrec_v1_magic[4];

/* ---- record authentication (journal_mac.c) ---------------------------------------
 * HMAC-SHA256 keyed by HKDF-SHA256(key material of the key the header names,
 * salt = journal id, info = "rekeyfs journal v2" || key fingerprint). */
struct jmac {
	EVP_MAC *mac;
	EVP_MAC_CTX *ctx;  /* initialised with the MAC key; re-initialised per message */
};
void jmac_free(struct jmac *m);
int jmac_init(struct jmac *m, const struct rk_key *k, const uint8_t id[JID_BYTES]);
/* MAC of the concatenated buffers into out (REC_SUM bytes). */
int jmac_compute(struct jmac *m, const struct iovec *iov, int n, uint8_t *out);
int jmac_verify(struct jmac *m, const uint8_t *buf, size_t len, const uint8_t *tag);
/* Encode the journal header (id, key) with its MAC. */
int jhdr_encode(struct jmac *m, const uint8_t id[JID_BYTES], const char *keyname, const uint8_t *fp,
                uint8_t *h);

#endif
