/* rekeyfs - coverage: which chunks are under which key, from headers alone
 * (fast path) or by reading every slot header / authenticating every chunk. */
#ifndef REKEYFS_COVERAGE_H
#define REKEYFS_COVERAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "datadir.h"
#include "keys.h"

struct rk_cov_key {
	char name[RK_KEY_NAME_MAX + 1];
	uint8_t fp[RK_FP_BYTES];
	uint64_t chunks;  /* chunks sealed under this key */
	uint64_t files;   /* chunk files with at least one such chunk */
	uint64_t bytes;   /* plaintext bytes of those chunks (upper bound at file ends) */
};

struct rk_cov_table {
	char path[RK_TABLE_PATH_MAX];
	char target[RK_KEY_NAME_MAX + 1];
	uint64_t files;          /* regular files */
	uint64_t chunk_files;
	uint64_t plain_files;
	uint64_t corrupt_files;  /* unreadable or corrupt headers */
	uint64_t recounted;      /* headers whose counts were stale (crash) and were recounted */
	uint64_t chunks;         /* chunks holding data */
	uint64_t chunks_on_target;
	uint64_t bytes;          /* plaintext bytes of chunk files */
	uint64_t files_off_target; /* chunk files with any chunk not under the target key */
	struct rk_cov_key *keys;
	size_t nkeys;
	char **off_target;       /* first names (rel paths) of such files */
	size_t noff_target;
};

enum rk_cov_problem_kind {
	RK_COVP_CORRUPT_HEADER = 1,
	RK_COVP_UNSUPPORTED_VERSION = 2,
	RK_COVP_IO = 3,
	RK_COVP_CORRUPT_CHUNK = 4,
	RK_COVP_KEY_MISSING = 5,
	RK_COVP_KEY_RELEASED = 6,
	RK_COVP_KEY_CHANGED = 7,
};

struct rk_cov_problem {
	enum rk_cov_problem_kind kind;
	char *path;      /* rel path */
	int64_t chunk;   /* -1 when not about one chunk */
	char *detail;
};

struct rk_cov {
	struct rk_cov_table *tables; /* one per policy table, same order */
	size_t ntables;
	struct rk_cov_table total;
	struct rk_cov_problem *problems;
	size_t nproblems;
};

struct rk_cov_opts {
	const char *table;     /* limit to this table (NULL: all) */
	size_t max_names;      /* off-target file names kept per table (0: none) */
	bool exact;            /* read every slot header instead of trusting header counts */
	bool deep;             /* authenticate every chunk (needs keyring) */
	struct rk_keyring *kr; /* for deep */
	/* progress callback for deep scans: bytes done so far */
	void (*progress)(uint64_t bytes_done, void *arg);
	void *progress_arg;
};

/* First pass of a deep scan needs the total: sum of plaintext sizes. */
int rk_coverage_scan(struct rk_datadir *dd, const struct rk_cov_opts *opts, struct rk_cov **out);
void rk_coverage_free(struct rk_cov *c);
/* Chunks under key NAME (any fingerprint) in the whole result. */
uint64_t rk_cov_key_chunks(const struct rk_cov *c, const char *name);

#endif
