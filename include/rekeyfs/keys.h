/* rekeyfs - key files and the in-memory keyring.
 *
 * A key file holds one line "CIPHER:STRENGTH:BASE64KEY\n", mode 0600, named
 * by its file name inside a key directory.  Files readable or writable by
 * group or others are refused, as ssh refuses a loose private key; so are
 * key files owned by another user than root or the effective user, and
 * anything that is not a regular file (never opened: no FIFO can block).
 *
 * A key file whose first line is "rekeyfs-key-command 1" is a key command
 * entry: it names a program (absolute path, trusted owner and modes up to /)
 * run without a shell, with a minimal environment, no inherited fds and a
 * timeout; its stdout is the key line.  One whose first line is
 * "rekeyfs-pkcs11 1" names an AES-256 key in a PKCS#11 token (p11.c): the
 * key stays in the token, which wraps the data keys.  rk_key_load handles
 * all three, so every caller (daemon, reload-keys, rekeyctl) gets them;
 * see rekeyfs(5). */
#ifndef REKEYFS_KEYS_H
#define REKEYFS_KEYS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "crypto.h"

#define RK_KEY_NAME_MAX 63
#define RK_DEFAULT_KEYDIR "/etc/rekeyfs/keys"

struct rk_key {
	char name[RK_KEY_NAME_MAX + 1];
	enum rk_cipher cipher;
	unsigned bits;
	uint8_t fp[RK_FP_BYTES];
	uint8_t *material;    /* secure memory, keylen bytes; NULL once wiped */
	size_t keylen;
	bool released;        /* wiped after release-key */
	/* A PKCS#11 token key (rekeyfs-pkcs11 entry): the KEK stays in the
	 * token, data keys are wrapped by it (RK_WRAP_METHOD_PKCS11); material
	 * is then its host secret (CMAC of fixed labels made by the token),
	 * which gives the fingerprint and the journal key, never a wrap.
	 * NULL for a key file or key command entry. */
	struct rk_p11key *p11;
};

/* 0 if name is a valid key name: 1..63 chars of [A-Za-z0-9._-], not starting
 * with a dot (hidden names are skipped when a key directory is listed). */
int rk_key_name_check(const char *name);

/* Resolve the key directory: explicit arg, else $REKEYFS_KEYDIR, else default. */
const char *rk_keydir_resolve(const char *arg);

/* Trust of a key directory (as ssh's StrictModes): the directory must be
 * owned by root or the effective user and not writable by group or others;
 * each directory above it owned by root or the effective user and not
 * writable by group or others unless sticky (/tmp).  -EPERM (message names
 * the directory and the chmod/chown that fixes it), or the stat error. */
int rk_keydir_check(const char *keydir);

/* Create a new random key file KEYDIR/NAME (O_EXCL, 0600).  Creates KEYDIR
 * (0700) if missing.  -EEXIST if the key exists; -EINVAL for bad cipher or
 * strength (message logged explaining why). */
int rk_key_create(const char *keydir, const char *cipher, unsigned bits, const char *name,
                  uint8_t fp_out[RK_FP_BYTES]);

/* Create a token key: generate an AES-256 key on the PKCS#11 token the RFC
 * 7512 uri names (object=LABEL, module-path=, pin-source=file:) and write
 * the entry KEYDIR/NAME (O_EXCL, 0600) naming it; then load it (every check)
 * for its fingerprint.  -EEXIST if the entry or a key of that label on the
 * token exists. */
int rk_key_create_pkcs11(const char *keydir, const char *uri, const char *name, uint8_t fp_out[RK_FP_BYTES]);
/* The provider of k for display: "file", or "pkcs11 URI" (no query). */
const char *rk_key_provider(const struct rk_key *k, char *buf, size_t cap);

/* Load KEYDIR/NAME.  -ENOKEY missing, -EPERM loose permissions (of the
 * entry, or of a command entry's program or its directories), -EINVAL
 * malformed (entry or program output), -ETIMEDOUT a command that did not
 * finish in time, -EIO one that failed or a token error, -EACCES a wrong
 * token PIN; a message naming the file and cause
 * is logged.  *out is
 * allocated; free with rk_key_free. */
int rk_key_load(const char *keydir, const char *name, struct rk_key **out);
void rk_key_free(struct rk_key *k);
/* A copy of k (its material in secure memory of its own): -EKEYREVOKED
 * once k was wiped. */
int rk_key_dup(const struct rk_key *k, struct rk_key **out);
/* Wipe key material now (release); the struct stays for its name/fp. */
void rk_key_wipe(struct rk_key *k);

/* A keyring: keys by name, loaded lazily from a key directory.  Thread safe. */
struct rk_keyring;
int rk_keyring_new(const char *keydir, struct rk_keyring **out);
void rk_keyring_free(struct rk_keyring *kr);
const char *rk_keyring_dir(const struct rk_keyring *kr);
/* Find (loading on first use) the key called name.  Returns 0 with *out set,
 * or the load error.  A negative result is cached until rk_keyring_reload. */
int rk_keyring_get(struct rk_keyring *kr, const char *name, struct rk_key **out);
/* Mark a key released: wipe its material; later gets return -EKEYREVOKED. */
int rk_keyring_release(struct rk_keyring *kr, const char *name);
/* Forget cached failures so that a key added to the directory is found. */
void rk_keyring_reload(struct rk_keyring *kr);

/* Enumerate key file names in a key directory (sorted; the directory must
 * pass rk_keydir_check; entries that are not regular files are skipped with
 * a warning, never opened).  Caller frees
 * names[i] and names. */
int rk_keydir_list(const char *keydir, char ***names, size_t *count);

#endif
