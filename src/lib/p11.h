/* rekeyfs - PKCS#11 token keys (p11.c), for the key module (keys.c) and
 * the wrap (wrap.c).  A key directory entry whose first line is
 * "rekeyfs-pkcs11 1" names, by an RFC 7512 URI, an AES-256 secret key on a
 * token that never leaves it: data keys are sealed and opened by the token
 * (CKM_AES_GCM).  See rekeyfs(5), "PKCS#11 token entries". */
#ifndef REKEYFS_P11_H
#define REKEYFS_P11_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rekeyfs/crypto.h"

#define RK_P11_MAGIC "rekeyfs-pkcs11 1"
/* the host secret of a token key (rk_key.material): two CMAC blocks */
#define RK_P11_SECRET_BYTES 32

struct rk_p11key;

/* Is the entry text (n bytes) a PKCS#11 token entry? */
bool rk_p11_is_entry(const char *buf, size_t n);
/* Open the token key of the entry text buf (n bytes; entry file path; key
 * name): module, token, login, object, its attributes checked; secret
 * (RK_P11_SECRET_BYTES) gets its host secret (CMAC of fixed labels, made by
 * the token: the fingerprint and the journal key derive from it).  0 or a
 * negative errno (-ENOKEY no such object, -EACCES wrong PIN, -EPERM loose
 * permissions or an unsafe key, -EINVAL malformed, -EIO token error), the
 * cause logged naming the entry. */
int rk_p11_load(const char *buf, size_t n, const char *path, const char *name, uint8_t *secret,
                struct rk_p11key **out);
/* Another reference to pk / drop one (the session closes with the last). */
struct rk_p11key *rk_p11_ref(struct rk_p11key *pk);
void rk_p11_unref(struct rk_p11key *pk);
/* The entry's URI without its query (for `rekeyctl keys`; never the PIN). */
const char *rk_p11_uri(const struct rk_p11key *pk);

/* AES-GCM in the token: ct and tag (RK_TAG_BYTES) of pt (len <= 48) under
 * nonce (RK_NONCE_BYTES) and aad.  0, or -EIO (token error, logged). */
int rk_p11_seal(struct rk_p11key *pk, const uint8_t *nonce, const uint8_t *aad, size_t aadlen, const uint8_t *pt,
                size_t len, uint8_t *ct, uint8_t *tag);
/* Open: 0, -EBADMSG (does not authenticate), -EIO (token error, logged). */
int rk_p11_open(struct rk_p11key *pk, const uint8_t *nonce, const uint8_t *aad, size_t aadlen, const uint8_t *ct,
                size_t len, const uint8_t *tag, uint8_t *pt);

/* Generate an AES-256 secret key on the token named by uri (label from
 * the URI's object attribute; CKA_TOKEN, private, sensitive, not
 * extractable, encrypt, decrypt, sign for the CMAC) and put the text of
 * its key directory entry in entry (entrycap bytes).  -EEXIST if the token
 * holds a secret key of that label; the cause logged. */
int rk_p11_generate(const char *uri, char *entry, size_t entrycap);

#endif
