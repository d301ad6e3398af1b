/* rekeyfs - rekeying chunk files chunk by chunk (the walker's and the
 * offline rekey's shared engine), and key-reference scans for release. */
#ifndef REKEYFS_SWEEP_H
#define REKEYFS_SWEEP_H

#include <stdint.h>

#include "format.h"

struct rk_sweep_cb {
	/* exclusive access to one chunk while it is resealed (may be NULL) */
	void (*lock)(void *arg, uint64_t idx);
	void (*unlock)(void *arg, uint64_t idx);
	/* called after each chunk with the bytes just processed: rate limit,
	 * yield to foreground I/O; a negative return stops the sweep of this
	 * file (pause, shutdown) with that error */
	int (*throttle)(void *arg, uint64_t bytes);
	void *arg;
};

struct rk_sweep_result {
	uint64_t chunks_checked;
	uint64_t chunks_rewritten;
	uint64_t bytes_rewritten;  /* plaintext bytes covered by rewritten chunks */
	uint64_t chunks_failed;    /* corrupt or key missing: left as they are */
	uint64_t next_chunk;       /* where a stopped sweep of this file resumes */
	int last_error;
};

/* Reseal every chunk of cf from start_chunk on that is not under target.
 * Chunks that cannot be read (corrupt, key missing) are counted and left
 * alone (logged by the format layer); write errors (ENOSPC, EIO) stop the
 * file with that error and leave the old chunk in place. */
int rk_sweep_file(struct rk_cf *cf, struct rk_key *target, const struct rk_sweep_cb *cb, uint64_t start_chunk,
                  struct rk_sweep_result *res);

/* Count chunks per header key entry by reading every slot's key reference
 * (no decryption).  malformed gets the number of unreadable slot headers. */
int rk_scan_key_refs(struct rk_cf *cf, uint64_t counts[RK_CF_MAX_KEYS], uint64_t *malformed);

#endif
