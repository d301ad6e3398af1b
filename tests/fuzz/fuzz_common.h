/* rekeyfs fuzz targets - shared sandbox (tests/fuzz/README.md).
 *
 * Every target that needs files works in a private directory made once per
 * process under $TMPDIR: a key directory holding one fixed test key
 * ("fuzzkey", AES/GCM/NoPadding 256, constant material: never a real key),
 * and, for the targets that need one, a data directory initialised under it
 * with one chunk file /t1 whose file id is fixed (so that a seed journal made
 * by tests/fuzz/gen_corpus.c names the same file in every run). */
#ifndef REKEYFS_FUZZ_COMMON_H
#define REKEYFS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"

#define FZ_KEY "fuzzkey"
#define FZ_CHUNK 4096u
#define FZ_T1_CHUNKS 3

struct fz_box {
	char root[4096];   /* the sandbox */
	char keydir[4096]; /* root/keys (0700) holding FZ_KEY */
	char data[4096];   /* root/data (a data directory, after fz_box_datadir) */
	struct rk_keyring *kr;
	struct rk_key *key;
};

/* The fixed file id of /t1. */
extern const uint8_t fz_file_id[RK_FILE_ID_BYTES];

/* Silence rk_log (messages are still formatted: their code is exercised). */
void fz_quiet(void);
/* Make the sandbox and its key directory and keyring; aborts on failure. */
void fz_box_init(struct fz_box *b);
/* Initialise b->data as a data directory (root table under FZ_KEY, chunk
 * FZ_CHUNK, no compression) holding /t1: FZ_T1_CHUNKS chunks of a fixed
 * pattern under file id fz_file_id.  Aborts on failure. */
void fz_box_datadir(struct fz_box *b);
/* Write a whole file (O_TRUNC, mode); 0 or -errno. */
int fz_write(const char *path, const void *p, size_t n, unsigned mode);
/* Read a whole file into a malloc()ed buffer; NULL on error. */
uint8_t *fz_read(const char *path, size_t *n);
/* A memfd holding data[0..n); aborts on failure. */
int fz_memfd(const uint8_t *data, size_t n);

#endif
