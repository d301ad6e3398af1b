/* rekeyfs - the rekey engine shared by the daemon's walker and the offline
 * `rekeyctl rekey` / `release-key`: which files and chunks to rekey, whole
 * file versus in place, the typed outcome of a file's rekey, the
 * .rekeyfs/walker checkpoint format, the key-release scan and its verdict,
 * and opening a data directory offline (lock, journal replay, verify).
 *
 * The daemon passes an access interface (struct rk_rekey_access) filled
 * with its shared open files and chunk locks; offline it is left empty
 * (NULL) and the engine opens the files itself, through the journal.
 * Progress and rate limiting are a callback: the library prints nothing. */
#ifndef REKEYFS_REKEY_H
#define REKEYFS_REKEY_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "datadir.h"
#include "format.h"
#include "journal.h"
#include "keys.h"
#include "sweep.h"
#include "walk.h"

/* ---- what to do with one stored file -------------------------------------------------------- */
struct rk_rekey_need {
	bool chunk;       /* a chunk file with a readable header */
	bool needs;       /* some chunk may sit under another key than the target */
	bool whole;       /* rekey it whole (a resealed copy renamed into place) */
	uint64_t nchunks; /* chunks per the header counts */
	uint64_t todo;    /* of which not under the target key */
	uint32_t chunk_size;
};

/* Header-only look at the stored file name in dirfd (one open, no
 * decryption).  A file gone meanwhile is no chunk file (0).  Whole-file
 * rekey is chosen (when whole_ok) if at least half the chunks move: it
 * writes every chunk once, in place writes each moved chunk twice (journal,
 * slot).  Returns 0, or a negative errno when the header cannot be read
 * (need->chunk then says whether the file looked like a chunk file). */
int rk_rekey_examine(int dirfd, const char *name, const char *rel, const struct rk_key *target, bool whole_ok,
                     struct rk_rekey_need *need);

/* one file's key references, for the release scan */
struct rk_key_refs {
	const char *name; /* in: the key asked about (rk_scan_key_refs) */
	bool chunk;       /* a chunk file: counts, malformed and h are set */
	bool unreadable;  /* its header (or shared state) cannot be read: it may hide chunks under the key */
	const char *note; /* appended to its name in the verdict, or NULL */
	uint64_t counts[RK_CF_MAX_KEYS];
	uint64_t malformed; /* unreadable slot headers */
	bool copy_names; /* a header copy on disk names the key (rk_cf_disk_copies_name) */
	struct rk_cf_header h;
	int err;          /* the scan stopped part way (one more chunk may be under the key) */
};

/* ---- access to the files: the daemon's shared open files, or none (offline) ------------------
 * h is the caller's per-file handle (from get); every callback may be NULL
 * except as noted.  With a NULL access the engine opens the file itself,
 * attaches it to the engine's journal and syncs it when done. */
struct rk_rekey_access {
	/* pin the file for the engine (-ENOENT: gone, nothing to do) */
	int (*get)(void *arg, const struct rk_walk_ent *e, void **h);
	void (*put)(void *arg, void *h);
	/* whole file: may it be replaced now (-EBUSY: it is open, go in place);
	 * commit renames the prepared copy into place (default rk_replace_commit) */
	int (*replace_begin)(void *arg, void *h);
	int (*replace_commit)(void *arg, void *h, struct rk_replace *r);
	/* in place: the file's shared rk_cf (1: not a writable chunk file, skip),
	 * exclusive access to one chunk, and the end (header counts to disk) */
	int (*open)(void *arg, void *h, struct rk_cf **cf);
	void (*lock)(void *arg, void *h, uint64_t idx);
	void (*unlock)(void *arg, void *h, uint64_t idx);
	int (*close)(void *arg, void *h, struct rk_cf *cf);
	/* release scan: read every slot's key reference of the file (see
	 * rk_release_scan); NULL: open the stored file directly */
	int (*key_refs)(void *arg, const struct rk_walk_ent *e, struct rk_key_refs *out);
	void *arg;
};

/* Rate limit, pause, progress: called after each chunk with its index idx
 * (the file's chunk idx is done: the position inside the file is
 * (idx + 1) * chunk size) and the bytes just rewritten (0 when the chunk
 * was already on target); h is the file's handle (NULL offline), whole is
 * true while a whole-file copy is built.  A negative return stops the file
 * with it (-ECANCELED: stop the sweep; -EBUSY during a whole-file copy: go
 * in place). */
typedef int (*rk_rekey_throttle_fn)(void *arg, void *h, bool whole, uint64_t idx, uint64_t bytes);

struct rk_rekey_engine {
	struct rk_keyring *kr;
	struct rk_journal *j;                /* offline: files are attached to it */
	const struct rk_rekey_access *acc;   /* NULL offline */
	rk_rekey_throttle_fn throttle;       /* may be NULL */
	void *throttle_arg;
};

struct rk_rekey_file_result {
	struct rk_sweep_result res; /* chunks checked / rewritten / failed */
	bool replaced;              /* rekeyed whole */
	bool visited;               /* it was a writable chunk file and was rekeyed */
	enum rk_rekey_outcome outcome;
};

/* Rekey one file (need from rk_rekey_examine) to target: whole when
 * need->whole and possible, else chunk by chunk in place.  Returns 0 or a
 * negative errno; out->outcome classifies it (rk_rekey_classify, and
 * SKIPPED_UNREADABLE when chunks had to be left under their key). */
int rk_rekey_file(const struct rk_rekey_engine *eng, const struct rk_walk_ent *e, struct rk_key *target,
                  const struct rk_rekey_need *need, struct rk_rekey_file_result *out);

/* ---- the .rekeyfs/walker checkpoint (format in rekeyfs(5); older files still load) ------------ */
#define RK_REKEY_CKPT_FILE "walker"
#define RK_REKEY_MAX_TABLES 256

enum rk_rekey_state { RK_RS_IDLE = 0, RK_RS_RUNNING = 1, RK_RS_PAUSED = 2, RK_RS_DONE = 3 };
const char *rk_rekey_state_name(enum rk_rekey_state s);

/* one table's progress in a sweep (the first five counters are checkpointed) */
struct rk_rekey_tstat {
	char path[RK_TABLE_PATH_MAX];
	uint64_t files_total, chunks_total, chunks_todo; /* pre-scan: chunks not on target (header counts) */
	uint64_t files_done, chunks_checked, chunks_rewritten, bytes_rewritten, chunks_failed;
	uint64_t chunks_done; /* chunks of the files visited so far (progress) */
	uint64_t bytes_total, bytes_done; /* stored chunk bytes of those chunks (chunks x chunk size) */
	uint64_t bytes_todo;  /* bytes of the chunks_todo */
	uint64_t remaining;   /* chunks not on the target key when the sweep ended (if counted) */
	bool counted;         /* remaining is known (checkpointed as remaining=N) */
};

/* how the last sweep that ended ended */
enum rk_rekey_result { RK_RR_NONE = 0, RK_RR_COMPLETE = 1, RK_RR_INCOMPLETE = 2 };
const char *rk_rekey_result_name(enum rk_rekey_result r); /* NULL for RK_RR_NONE */

/* A view of a sweep's state (the arrays belong to the caller). */
struct rk_rekey_ckpt {
	enum rk_rekey_state state;
	uint64_t sweep;
	time_t started, finished;
	char (*filter)[RK_TABLE_PATH_MAX];
	int nfilter;
	char *position; /* PATH_MAX bytes; "" at the start */
	struct rk_rekey_tstat *tables;
	int ntables;
	bool resume; /* load: the checkpointed sweep was running or paused */
	/* since format 2 of the file (older checkpoints: 0 / none / unknown) */
	uint64_t finished_sweep;   /* the last sweep that ended (0: none) */
	enum rk_rekey_result result; /* of finished_sweep */
	uint64_t remaining;        /* its chunks off target, when remaining_known */
	bool remaining_known;
	char reason[256];          /* why it is incomplete ("" otherwise) */
	uint64_t rate;             /* the walker rate set at run time, when rate_set */
	bool rate_set;
	bool has_queued;           /* a request waits for the next sweep: its tables */
	char (*queued)[RK_TABLE_PATH_MAX]; /* RK_REKEY_MAX_TABLES entries, or NULL to ignore */
	int nqueued;               /* 0: every table */
	/* an online rewrap (rekeyctl rotate --rewrap): the sweep rewraps the data
	 * keys wrapped under from to to, headers only ("" / false: a reseal) */
	bool rewrap;
	char rewrap_from[RK_KEY_NAME_MAX + 1], rewrap_to[RK_KEY_NAME_MAX + 1];
	bool qrewrap;              /* the queued request is a rewrap */
	char qrewrap_from[RK_KEY_NAME_MAX + 1], qrewrap_to[RK_KEY_NAME_MAX + 1];
};

/* The checkpoint text of c (allocated, *len bytes). */
int rk_rekey_ckpt_format(const struct rk_rekey_ckpt *c, char **text, size_t *len);
/* Write text atomically as DATADIR/.rekeyfs/walker. */
int rk_rekey_ckpt_write(int statefd, const char *text, size_t len);
/* Read the checkpoint into c (filter, position and tables must point at
 * RK_REKEY_MAX_TABLES / PATH_MAX sized arrays, or be NULL to ignore them).
 * -ENOENT when there is none. */
int rk_rekey_ckpt_load(int statefd, struct rk_rekey_ckpt *c);
/* The entry for table path in tables[*n] (added if new; tables[0] when full). */
struct rk_rekey_tstat *rk_rekey_tstat_for(struct rk_rekey_tstat *tables, int *n, const char *path);
/* Is tpath one of filter (an empty filter selects every table)? */
bool rk_rekey_filter_has(char (*filter)[RK_TABLE_PATH_MAX], int nfilter, const char *tpath);

/* ---- key release: is any chunk still under a key? ---------------------------------------------- */
#define RK_RELEASE_FIRST 4
struct rk_release_verdict {
	uint64_t chunks, files, malformed;
	uint64_t wrapped; /* format 2 files whose header wraps a data key under it (with or without chunks) */
	char first[RK_RELEASE_FIRST][PATH_MAX]; /* the first files holding it */
	int nfirst;
	int err; /* an open file that could not be read (counted as holding it) */
};

/* The first table that still has name as its target key (its path), or
 * NULL: a key a table targets is never released.  The caller keeps the
 * policy from changing meanwhile. */
const char *rk_release_targeted_by(const struct rk_datadir *dd, const char *name);
/* Walk the tree at rootfd reading every chunk's key reference (no
 * decryption; header counts can be stale after a crash) and every header's
 * key table: a format 2 entry naming the key wraps a data key under it even
 * when no chunk is sealed under that data key.  An unreadable header or
 * slot counts as a chunk under the key.  rk_release_allowed() tells. */
int rk_release_scan(int rootfd, const char *name, const struct rk_rekey_access *acc, struct rk_release_verdict *v);
/* The release verdict, one rule: no chunk references the key and no
 * header wraps a data key under it. */
static inline bool rk_release_allowed(const struct rk_release_verdict *v)
{
	return v->chunks == 0 && v->wrapped == 0;
}
/* "a, b, c" of the first files, with ", ..." when there are more */
void rk_release_list(const struct rk_release_verdict *v, char *buf, size_t len);

/* ---- offline ------------------------------------------------------------------------------------- */
/* Open a data directory for an offline command: takes the lock (refuses
 * while a daemon holds it), replays a leftover journal before anything
 * reads the directory (authenticated with a key from kr, or from keydir
 * when kr is NULL), and with verify checks the key registry against kr. */
int rk_open_offline(const char *dir, enum rk_dd_lock lock, struct rk_keyring *kr, const char *keydir, bool verify,
                    struct rk_datadir **out);

/* The offline rekey of the data directory dd (opened with rk_open_offline,
 * exclusive) to every table's target key, or only tables[ntables] (already
 * normalised), resuming an interrupted sweep from the checkpoint.  Stops at
 * the first file that cannot be rekeyed (logged; the checkpoint resumes
 * there).  Every callback may be NULL. */
struct rk_rekey_progress {
	void (*resumed)(void *arg, const char *position); /* "" for the start */
	void (*start)(void *arg, uint64_t total_bytes);   /* after the pre-scan */
	void (*add)(void *arg, uint64_t bytes);           /* after each chunk */
	void *arg;
};
struct rk_rekey_summary {
	uint64_t rewritten, files, failed;
};
int rk_rekey_offline(struct rk_datadir *dd, struct rk_keyring *kr, char (*tables)[RK_TABLE_PATH_MAX], int ntables,
                     const struct rk_rekey_progress *prog, struct rk_rekey_summary *sum);

/* The offline rewrap (rekeyctl rotate --rewrap): in dd (opened with
 * rk_open_offline, exclusive), every chunk file of tables[ntables] (every
 * table when ntables is 0) whose header names old gets those entries'
 * data keys rewrapped under new, header only (a version 1 file converted
 * to version 2 first).  new must have old's cipher and strength (-EINVAL).
 * Stops at the first file that fails (logged); running it again goes on
 * (entries already under new are left alone). */
struct rk_rewrap_summary {
	uint64_t files, entries, upgraded, failed;
	uint64_t repaired; /* files whose older header copy still named OLD (a cut run): both copies rewritten */
};
int rk_rewrap_offline(struct rk_datadir *dd, struct rk_keyring *kr, char (*tables)[RK_TABLE_PATH_MAX], int ntables,
                      struct rk_key *old, struct rk_key *new, struct rk_rewrap_summary *sum);

#endif
