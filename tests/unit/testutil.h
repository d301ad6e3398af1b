/* rekeyfs unit tests - shared helpers (temp directories, key directories,
 * log capture, file surgery, deterministic data). */
#ifndef REKEYFS_TESTUTIL_H
#define REKEYFS_TESTUTIL_H

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <setjmp.h>
#include <cmocka.h>

#include "rekeyfs/compress.h"

struct rk_keyring;
struct rk_key;

/* ---- temporary directories ---------------------------------------------- */
/* Create a fresh directory /tmp/rekeyfs-test-XXXXXX; the path goes to out
 * (PATH_MAX bytes).  Fails the test on error. */
void tu_mkdtemp(char *out);
/* Remove a path recursively (files, directories, symlinks; not following
 * symlinks).  Missing paths are fine.  Returns 0 or -errno. */
int tu_rmrf(const char *path);
/* snprintf into a PATH_MAX buffer, failing the test on truncation. */
void tu_path(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- the common fixture ------------------------------------------------------
 * A fresh temporary directory dir with the key directory dir/keys, and,
 * as asked: the data directory dir/data (created, and initialised under the
 * first key), keys created in the key directory, a keyring on it with the
 * keys looked up (ka, kb, kc, kd in the order given), and the log captured
 * (tu_log_start).  Teardown fails the test if key material reached the log,
 * stops the capture, frees the keyring and removes dir. */
struct tu_fx {
	char dir[PATH_MAX];
	char keydir[PATH_MAX]; /* dir/keys */
	char data[PATH_MAX];   /* dir/data (exists only with mkdata or init_chunk) */
	struct rk_keyring *kr; /* NULL without keyring (a test may set its own: freed at teardown) */
	struct rk_key *ka, *kb, *kc, *kd;
};
struct tu_fx_key {
	const char *cipher;
	unsigned bits;
	const char *name;
};
struct tu_fx_opts {
	bool mkdata;                 /* mkdir dir/data */
	const struct tu_fx_key *keys; /* created in keydir, in this order (at most 4) */
	size_t nkeys;
	bool keyring;                /* open kr and look up the keys into ka.. */
	uint32_t init_chunk;         /* nonzero: rk_datadir_init(data, ka, init_chunk, init_comp) */
	enum rk_comp init_comp;
};
/* The usual keys: ka AES/GCM 256, kb ChaCha20/Poly1305 256, kc AES/GCM 128,
 * kd AES/GCM 256 (take the first n); and two AES/GCM 256 keys ka, kb. */
extern const struct tu_fx_key tu_fx_keys[4];
extern const struct tu_fx_key tu_fx_aes_keys[2];
/* Set up f (zeroed): 0, or -1 (a cmocka setup then fails). */
int tu_fx_init(struct tu_fx *f, const struct tu_fx_opts *o);
void tu_fx_fini(struct tu_fx *f);
/* A test's own fixture struct of size bytes whose FIRST member is a struct
 * tu_fx: allocated zeroed and set up (NULL on failure); tu_fx_free runs
 * tu_fx_fini and frees it. */
void *tu_fx_new(size_t size, const struct tu_fx_opts *o);
void tu_fx_free(void *fx);
/* cmocka setup/teardown of a fixture that is a bare struct tu_fx */
int tu_fx_setup(void **state, const struct tu_fx_opts *o);
int tu_fx_teardown(void **state);

/* ---- keys ------------------------------------------------------------------ */
/* rk_key_create and assert success. */
void tu_key_create(const char *keydir, const char *cipher, unsigned bits, const char *name);
/* The BASE64 part of a key file (no newline), into out (cap bytes); 0 or -errno. */
int tu_key_b64(const char *keydir, const char *name, char *out, size_t cap);

/* ---- log capture ------------------------------------------------------------- */
/* Start capturing every rk_log message (all levels) in memory; clears any
 * previous capture. */
void tu_log_start(void);
/* Stop capturing (restores the default stderr logging) and forget messages. */
void tu_log_stop(void);
void tu_log_clear(void);
size_t tu_log_count(void);
const char *tu_log_msg(size_t i);
int tu_log_level(size_t i);
/* Index of the first captured message containing every one of the given
 * substrings (NULL-terminated list), or -1.  Matching is case-sensitive. */
int tu_log_find(const char *first, ...) __attribute__((sentinel));
/* Print the captured messages to stderr (debugging a failing test). */
void tu_log_dump(void);
/* Fail the test if any captured message contains needle. */
void tu_log_assert_absent(const char *needle);
/* Fail the test if any captured message contains the base64 key material of
 * any key file in keydir (or its hex encoding). */
void tu_log_assert_no_key_material(const char *keydir);

/* Assert that a message containing all the strings was logged (prints the
 * log on failure). */
#define tu_assert_logged(...)                                                   \
	do {                                                                    \
		if (tu_log_find(__VA_ARGS__, (const char *)NULL) < 0) {         \
			tu_log_dump();                                          \
			fail_msg("expected log message not found: %s", #__VA_ARGS__); \
		}                                                               \
	} while (0)

/* ---- file surgery ------------------------------------------------------------ */
/* Flip bit `bit` (0..7) of the byte at off in the file at path. */
void tu_flip_bit(const char *path, off_t off, int bit);
/* Flip a bit using an open fd. */
void tu_flip_bit_fd(int fd, off_t off, int bit);
void tu_pwrite_path(const char *path, const void *buf, size_t len, off_t off);
void tu_pread_path(const char *path, void *buf, size_t len, off_t off);
/* Create (truncate) a file with the given content and mode. */
void tu_write_file(const char *path, const void *buf, size_t len, mode_t mode);
/* Read a whole file into a malloc'ed NUL-terminated buffer (len may be NULL). */
char *tu_read_file(const char *path, size_t *len);
off_t tu_file_size(const char *path);
/* Allocated bytes (st_blocks * 512). */
uint64_t tu_file_alloc(int fd);

/* ---- data ---------------------------------------------------------------------- */
/* Deterministic pseudo-random bytes (xorshift64*), incompressible. */
void tu_fill_random(void *buf, size_t len, uint64_t seed);
/* Compressible text: repeated database-like rows. */
void tu_fill_text(void *buf, size_t len, uint64_t seed);
/* Deterministic PRNG for test decisions. */
uint64_t tu_rand(uint64_t *state);
bool tu_all_zero(const void *buf, size_t len);
/* Allocate and fail the test on NULL. */
void *tu_malloc(size_t len);

#endif
