/* rekeyfs - coverage: which chunks are under which key, from headers alone
 * (fast path), by reading every slot header (exact) or by authenticating
 * every chunk (deep).  The result feeds `rekeyctl keys` and the fsck report
 * (fsck.h), offline and inside the daemon. */
#ifndef REKEYFS_COVERAGE_H
#define REKEYFS_COVERAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "datadir.h"
#include "format.h"
#include "keys.h"

struct rk_walk_ent;

/* Can the chunks sealed under a key (name + fingerprint from a header) be
 * opened with the key directory / daemon the scan was given? */
enum rk_cov_keystat {
	RK_COVK_UNCHECKED = 0, /* no keyring given to the scan */
	RK_COVK_OK = 1,        /* key file present with that fingerprint and cipher */
	RK_COVK_MISSING = 2,   /* no key file of that name in the key directory */
	RK_COVK_RELEASED = 3,  /* released (registry or daemon): its material is gone */
	RK_COVK_CHANGED = 4,   /* the key file of that name has another fingerprint or cipher */
	RK_COVK_REFUSED = 5,   /* key file refused: loose permissions, malformed, unreadable */
};
const char *rk_cov_keystat_name(enum rk_cov_keystat s);
/* OK or UNCHECKED: not a problem by itself. */
static inline bool rk_cov_keystat_usable(enum rk_cov_keystat s)
{
	return s == RK_COVK_OK || s == RK_COVK_UNCHECKED;
}

struct rk_cov_key {
	char name[RK_KEY_NAME_MAX + 1];
	uint8_t fp[RK_FP_BYTES];
	enum rk_cipher cipher;
	unsigned bits;
	enum rk_cov_keystat status;
	uint64_t chunks;  /* chunks sealed under this key */
	uint64_t files;   /* chunk files with at least one such chunk */
	uint64_t bytes;   /* plaintext bytes of those chunks (exact/deep: exact;
	                     headers only: chunks x chunk size, capped at the file size) */
	char **names;     /* status not usable: first files (rel paths) with such chunks */
	size_t nnames;
	/* the wrap layer (format 2): files whose header wraps a data key under
	 * this key (name and fingerprint), whether or not a chunk is sealed
	 * under that data key; version 1 files have no wrap layer */
	uint64_t wrapped_files;
};

/* Data sealed under data keys a compromised key ever wrapped (its
 * fingerprint is the entry's, or in the entry's history, or the history
 * overflowed), or under a version 1 subkey derived from it: one per
 * registry key (rk_cov.registry order); zero for keys not compromised. */
struct rk_cov_exposure {
	uint64_t chunks;
	uint64_t files;
	char **names;     /* first such files */
	size_t nnames;
};

struct rk_cov_table {
	char path[RK_TABLE_PATH_MAX];
	char target[RK_KEY_NAME_MAX + 1];
	uint32_t chunk_size;     /* policy chunk size (new files) */
	uint64_t files;          /* regular files (a file with several hard links once) */
	uint64_t extra_links;    /* further names of files already counted (hard links) */
	uint64_t chunk_files;
	uint64_t plain_files;
	uint64_t corrupt_files;  /* unreadable, corrupt or unsupported headers */
	uint64_t recounted;      /* headers whose counts were marked dirty (crash, open file) and were recounted */
	uint64_t count_mismatch; /* exact/deep: clean headers whose counts differ from the slot references */
	uint64_t chunks;         /* chunks holding data */
	uint64_t chunks_on_target;
	uint64_t bytes;          /* plaintext bytes of chunk files */
	uint64_t files_off_target; /* chunk files with any chunk not under the target key */
	uint64_t chunks_unusable;  /* chunks under a key that is missing, released, changed or refused */
	uint64_t files_unusable;
	uint64_t malformed_chunks; /* exact/deep: unreadable slot headers (their key is unknown) */
	uint64_t corrupt_chunks;   /* deep: chunks that fail authentication */
	uint64_t chunks_verified;  /* deep: chunks that authenticated */
	struct rk_cov_key *keys;
	size_t nkeys;
	char **off_target;       /* first names (rel paths) of files off target */
	size_t noff_target;
	uint64_t v2_files;       /* chunk files of format 2 (with a wrap layer) */
	struct rk_cov_exposure *exposed; /* rk_cov.nregistry entries */
};

enum rk_cov_problem_kind {
	RK_COVP_CORRUPT_HEADER = 1,      /* neither header copy verifies */
	RK_COVP_UNSUPPORTED_VERSION = 2, /* a format version this rekeyfs does not read */
	RK_COVP_IO = 3,                  /* the file cannot be opened or read */
	RK_COVP_CORRUPT_CHUNK = 4,       /* deep: the chunk fails authentication */
	RK_COVP_MALFORMED_SLOT = 5,      /* exact/deep: the slot header is malformed */
	RK_COVP_MISSING_CHUNKS = 6,      /* exact/deep: a clean header counts chunks the slots lack (cut short) */
	RK_COVP_DAMAGED_HEADER_COPY = 7, /* one header copy verifies, the other is overwritten */
};
const char *rk_cov_problem_name(enum rk_cov_problem_kind k);

struct rk_cov_problem {
	enum rk_cov_problem_kind kind;
	char *path;      /* rel path */
	int64_t chunk;   /* -1 when not about one chunk */
	int64_t offset;  /* plaintext offset of the chunk, -1 when not about one chunk */
	char *detail;    /* the cause */
};

/* A key as the data directory's registry records it. */
struct rk_cov_regkey {
	char name[RK_KEY_NAME_MAX + 1];
	uint8_t fp[RK_FP_BYTES];
	enum rk_cipher cipher;
	unsigned bits;
	enum rk_keystate state;
	enum rk_cov_keystat file; /* its key file, as the scan's keyring sees it */
	bool compromised;         /* marked compromised (rekeyctl mark-compromised) */
};

/* The release question for one key (opts->query_key), from an exact scan. */
struct rk_cov_query {
	char name[RK_KEY_NAME_MAX + 1];
	uint64_t chunks;  /* chunks whose slot names this key (any fingerprint) */
	uint64_t files;
	char **names;     /* first such files */
	size_t nnames;
	uint64_t wrapped_files; /* files without chunks whose format 2 header wraps a data key under it (rk_release_wrap_blocks) */
	uint64_t named_files;   /* chunk files whose header has an entry naming it (their slot headers were read) */
	uint64_t old_copies;    /* files whose header in use names it not, but whose older copy does (a cut rewrap) */
};

struct rk_cov {
	struct rk_cov_table *tables; /* one per policy table, same order */
	size_t ntables;
	struct rk_cov_table total;
	struct rk_cov_problem *problems;
	size_t nproblems;
	/* context for the report */
	char *datadir;       /* data directory as given */
	char *keydir;        /* key directory of the keyring, NULL without one */
	bool online;         /* set by the daemon: counts include its pending writes */
	bool key_only;       /* exact for the query key only (rk_cov_opts.exact_key_only) */
	bool exact, deep;    /* how chunks were counted */
	char table_filter[RK_TABLE_PATH_MAX]; /* "" when every table was scanned */
	uint64_t deep_total; /* deep: plaintext bytes to authenticate (sum of file sizes) */
	uint64_t deep_done;
	struct rk_cov_regkey *registry;
	size_t nregistry;
	bool has_query;
	struct rk_cov_query query;
};

/* How exact and deep scans reach the chunks of a chunk file.  Without it the
 * stored file is opened read-only; the daemon supplies its shared open-file
 * state so that chunks being rewritten are read consistently (pending
 * journal images, chunk locks). */
struct rk_cov_access {
	/* 0 with *cf and *token set; -ENOMSG: not a chunk file (any more) */
	int (*open)(void *arg, const struct rk_walk_ent *e, struct rk_cf **cf, void **token);
	void (*close)(void *arg, void *token);
	void (*lock)(void *token, uint64_t idx);
	void (*unlock)(void *token, uint64_t idx);
	void *arg;
};

struct rk_cov_opts {
	const char *table;     /* limit to this table, normalised path (NULL: all) */
	size_t max_names;      /* file names kept per list (0: none; SIZE_MAX: all) */
	bool exact;            /* read every slot header instead of trusting header counts */
	bool deep;             /* authenticate every chunk (implies exact; needs kr) */
	struct rk_keyring *kr; /* key status of every key named by data; deep reads */
	const char *query_key; /* count chunks under this key name exactly (needs exact) */
	/* exact with query_key, not deep: read the slot headers only of the
	 * files whose header names query_key or has dirty counts; the others
	 * cannot hold a chunk under it and are counted from their headers */
	bool exact_key_only;
	const struct rk_cov_access *access; /* exact/deep chunk access (NULL: read-only open) */
	/* deep scans: a headers-only pass first sums the plaintext total; then
	 * called as chunks are authenticated (from the scanning thread) */
	void (*progress)(uint64_t bytes_done, uint64_t bytes_total, void *arg);
	void *progress_arg;
};

/* Scan the data directory dd (dd->dirfd, its tables and registry).
 * Unreadable files and chunks are recorded as problems, not errors; the
 * return value is negative only when the scan itself could not run. */
int rk_coverage_scan(struct rk_datadir *dd, const struct rk_cov_opts *opts, struct rk_cov **out);
void rk_coverage_free(struct rk_cov *c);
/* Does a header's key entry's data key count as exposed by a key of
 * fingerprint fp marked compromised (rekeyfs(5), FORMAT V2)? */
bool rk_cov_entry_exposed(const struct rk_cf_header *h, const struct rk_cf_keyent *e, const uint8_t *fp);
/* Chunks under key NAME (any fingerprint) in the whole result. */
uint64_t rk_cov_key_chunks(const struct rk_cov *c, const char *name);
/* Format 2 files whose header wraps a data key under key NAME (any
 * fingerprint) in the whole result. */
uint64_t rk_cov_key_wrapped(const struct rk_cov *c, const char *name);

#endif
