/* rekeyfs - the golden fixture set: a deterministic description shared by
 * the generator (tests/gen_golden) and the test (tests/unit/test_golden).
 *
 * The fixtures pin chunk-file format versions 1 and 2: tests/golden/files/
 * (version 1) and tests/golden/files-v2/ (version 2) hold what the library
 * wrote for the description below, with the deterministic random stream
 * seeded with GOLDEN_SEED and GOLDEN_SEED_V2 (file ids, nonces, data keys).  Regenerating
 * must give byte-identical files; a difference is a format (or writer)
 * change.  See tests/golden/README. */
#ifndef REKEYFS_GOLDEN_COMMON_H
#define REKEYFS_GOLDEN_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "rekeyfs/compress.h"
#include "rekeyfs/crypto.h"

#define GOLDEN_SEED "rekeyfs golden v1"
#define GOLDEN_SEED_V2 "rekeyfs golden v2" /* the format 2 set (files-v2/) */
#define GOLDEN_MAX_KEYS 3      /* keys a fixture's header may name */
#define GOLDEN_MAX_REWRITES 4  /* chunks rewritten under a second key */

/* The fixed test keys (never use these bytes for anything real). */
struct golden_key {
	const char *name;        /* key file name */
	const char *cipher;      /* as written in the key file */
	enum rk_cipher cipher_id;
	unsigned bits;
	uint8_t material[RK_MAX_KEY_BYTES]; /* first bits/8 bytes used */
};

extern const struct golden_key golden_keys[];
extern const size_t golden_nkeys;
const struct golden_key *golden_key_find(const char *name);
/* The key file line "CIPHER:STRENGTH:BASE64KEY\n" (NUL terminated) into out. */
int golden_key_line(const struct golden_key *k, char *out, size_t outlen);

/* How a fixture's plaintext is made. */
enum golden_content {
	GC_TEXT = 1,   /* rows "row NNNNNN value VVVVVVVVVV ...\n", cut at size */
	GC_RANDOM = 2, /* seeded pseudo-random bytes (incompressible) */
	GC_SPARSE = 3, /* zeros, except seeded random bytes in [data_off, data_off + data_len) */
};

/* How a fixture is written through the library API. */
enum golden_method {
	GM_WHOLE = 1,    /* one rk_cf_pwrite of the whole plaintext */
	GM_APPEND = 2,   /* rk_cf_pwrite in append_step pieces (read-modify-write of partial chunks) */
	GM_SPARSE = 3,   /* rk_cf_pwrite of the data region only, then rk_cf_truncate to size */
	GM_TWO_KEYS = 4, /* GM_WHOLE under key, then rekey_chunks moved to key2 with
	                  * rk_cf_rekey_chunk and rewrite_chunks resealed under key2 with
	                  * rk_cf_write_chunk (same plaintext) */
};

struct golden_count {
	const char *key; /* NULL ends the list */
	uint64_t count;
};

struct golden_file {
	const char *name;     /* file name under files/ */
	const char *what;     /* one-line description (messages, README) */
	enum golden_content content;
	uint64_t size;        /* plaintext size */
	uint32_t seed;        /* for GC_RANDOM / GC_SPARSE / GC_TEXT values */
	uint64_t data_off, data_len; /* GC_SPARSE */
	uint32_t chunk_size;
	enum rk_comp comp;    /* the table's compression */
	enum golden_method method;
	uint32_t append_step; /* GM_APPEND */
	const char *key;      /* target key: the file is created under it */
	const char *key2;     /* GM_TWO_KEYS */
	int64_t rekey_chunks[GOLDEN_MAX_REWRITES];   /* -1 terminated */
	int64_t rewrite_chunks[GOLDEN_MAX_REWRITES]; /* -1 terminated */
	/* expected header key table: entries in use, in order, with counts */
	struct golden_count counts[GOLDEN_MAX_KEYS + 1];
	/* stored payload compression of chunk 0 (0 raw, 1 snappy; -1: hole or empty) */
	int chunk0_comp;
};

extern const struct golden_file golden_files[];
extern const size_t golden_nfiles;
const struct golden_file *golden_file_find(const char *name);

/* The plaintext of f: a malloc()ed buffer of f->size bytes (at least 1
 * byte allocated).  NULL on allocation failure. */
uint8_t *golden_plaintext(const struct golden_file *f);

/* The key chunk idx is expected under (NULL: a hole). */
const char *golden_chunk_key(const struct golden_file *f, uint64_t idx);

/* Write the key files into keydir (created 0700 if missing), mode 0600. */
int golden_write_keys(const char *keydir);

/* The directory of a version's set under the golden directory: "files"
 * (version 1) or "files-v2". */
const char *golden_subdir(int version);

/* Generate the whole fixture set into outdir: outdir/keys/, outdir/files/
 * and outdir/files-v2/ (created if missing; existing fixtures are replaced).  Seeds
 * the library's random stream with GOLDEN_SEED first and restores real
 * randomness afterwards.  0, or a negative errno with a message on stderr. */
int golden_generate(const char *outdir);

#endif
