/* rekeyfs - rekeying chunk files chunk by chunk (the walker's and the
 * offline rekey's shared engine), and key-reference scans for release. */
#ifndef REKEYFS_SWEEP_H
#define REKEYFS_SWEEP_H

#include <stdint.h>
#include <sys/stat.h>

#include "format.h"

/* The typed outcome of rekeying a chunk or a file, from its error code. */
enum rk_rekey_outcome {
	RK_RO_DONE = 0,           /* rekeyed (or nothing to do) */
	RK_RO_SKIPPED_UNREADABLE, /* corrupt, or its key is missing / released / changed: left as it is */
	RK_RO_RETRY_NO_SPACE,     /* ENOSPC, EDQUOT, EIO while writing: the old data stays; retry later */
	RK_RO_CHANGED,            /* opened, written or renamed behind our back (whole file): go in place */
	RK_RO_STOPPED,            /* the throttle stopped it (pause, shutdown) */
	RK_RO_FAILED,             /* anything else */
};
enum rk_rekey_outcome rk_rekey_classify(int err);

struct rk_sweep_cb {
	/* exclusive access to one chunk while it is resealed (may be NULL) */
	void (*lock)(void *arg, uint64_t idx);
	void (*unlock)(void *arg, uint64_t idx);
	/* called after each chunk with the bytes just processed: rate limit,
	 * yield to foreground I/O; a negative return stops the sweep of this
	 * file (pause, shutdown) with that error; idx is the chunk just done */
	int (*throttle)(void *arg, uint64_t idx, uint64_t bytes);
	void *arg;
};

struct rk_sweep_result {
	uint64_t chunks_checked;
	uint64_t chunks_rewritten;
	uint64_t bytes_rewritten;  /* plaintext bytes covered by rewritten chunks */
	uint64_t chunks_failed;    /* corrupt or key missing: left as they are */
	uint64_t next_chunk;       /* where a stopped sweep of this file resumes */
	uint64_t first_failed;     /* the first failed chunk's index (when chunks_failed; UINT64_MAX: a lost tail) */
	int last_error;
};

/* Reseal every chunk of cf from start_chunk on that is not under target.
 * Chunks that cannot be read (corrupt, key missing) are counted and left
 * alone (logged by the format layer); write errors (ENOSPC, EIO) stop the
 * file with that error and leave the old chunk in place. */
int rk_sweep_file(struct rk_cf *cf, struct rk_key *target, const struct rk_sweep_cb *cb, uint64_t start_chunk,
                  struct rk_sweep_result *res);

/* ---- whole-file rekey ------------------------------------------------------
 * For a chunk file nobody has open: every chunk is resealed into a new chunk
 * file built under a reserved temporary name in the same directory (a fresh
 * file id, the same plaintext, compression and holes), which is synced and
 * given the original's owner, mode, extended attributes and times, then
 * renamed over the original.  Each chunk is read once and written once (the
 * in-place path writes it twice: redo journal, then in place).  After a
 * crash the file is wholly old or wholly new; a left-over temporary is
 * removed by the next sweep, encrypt or rekey.
 *
 *   prepare: build and sync the new file.  -EMLINK the file has hard links;
 *     -ENOSPC not enough free space for a second copy (checked first);
 *     -EUCLEAN / key errors: a chunk cannot be read (use rk_sweep_file, which
 *     leaves such chunks alone); -ECANCELED from the throttle callback.
 *     Whatever the result, call rk_replace_end.
 *   commit: check that the original is unchanged since prepare (same inode,
 *     size, mtime, ctime: -EAGAIN otherwise) and rename the new file over it.
 *     The caller holds whatever keeps others from changing or renaming the
 *     file meanwhile.  new_path_fd (may be NULL) gets an O_PATH fd of the
 *     new file, and new_st its stat.
 *   end: after a commit, make the rename durable (fsync of the directory);
 *     otherwise remove the temporary.  Frees r. */
struct rk_replace;
struct rk_replace_cb {
	int (*throttle)(void *arg, uint64_t idx, uint64_t bytes); /* as in rk_sweep_cb */
	void *arg;
};
int rk_replace_prepare(int dirfd, const char *name, const char *rel, struct rk_keyring *kr, struct rk_key *target,
                       const struct rk_replace_cb *cb, struct rk_sweep_result *res, struct rk_replace **out);
int rk_replace_commit(struct rk_replace *r, int *new_path_fd, struct stat *new_st);
int rk_replace_end(struct rk_replace *r);

/* Count chunks per header key entry by reading every slot's key reference
 * (no decryption).  malformed gets the number of unreadable slot headers.
 * With name, a file whose in-memory header has no entry naming that key
 * is not read (all zero): a slot is under the key of the entry its key
 * index names, and an entry is in the header (on disk too) before any chunk
 * is sealed under it, so no slot of such a file is under the key. */
int rk_scan_key_refs(struct rk_cf *cf, const char *name, uint64_t counts[RK_CF_MAX_KEYS], uint64_t *malformed);

#endif
