/* rekeyfs daemon - read errors made visible, and the log destination
 * (ioerr.c).
 *
 * Every error the daemon returns to a reader (a read of a corrupt, forged or
 * missing chunk, a chunk under a missing or released key, an open whose
 * header cannot be read) is counted (status io.read_errors and
 * read_errors.count are the same counter), the newest RKD_IOERR_RECENT are
 * kept for the status JSON with path, chunk and cause, and it is logged at
 * most RKD_IOERR_LOG_BURST times per file and minute (a scanning reader
 * cannot flood the log; the next line says how many were left out). */
#ifndef REKEYFS_DAEMON_IOERR_H
#define REKEYFS_DAEMON_IOERR_H

#include <stdbool.h>

#include "daemon.h"

#define RKD_IOERR_RECENT 16    /* entries of read_errors.recent */
#define RKD_IOERR_LOG_BURST 3  /* log lines per file and window */
#define RKD_IOERR_LOG_WINDOW 60 /* seconds */

/* A read of `in` is answered with err (negative errno).  Chunk and cause
 * come from the calling thread's library record (rk_cf_read_error: call
 * rk_cf_read_error_clear before the read); without one the cause is err's
 * text and the chunk null.  Takes the ioerr lock (a leaf): call it with no
 * lock held. */
void rkd_ioerr_read(struct rkd_fs *fs, struct rkd_inode *in, int err);
/* An open of `in` is answered with err because the file's header cannot be
 * read (already logged where it was found: counted and listed only). */
void rkd_ioerr_open(struct rkd_fs *fs, struct rkd_inode *in, int err);
/* The status JSON's top-level member, with its trailing ",\n":
 *   "read_errors": {"count": N, "recent": [{"time", "path", "chunk", "cause"}]} */
void rkd_ioerr_json(struct rkd_fs *fs, struct rkd_jbuf *b);

/* -o log=DEST: "stderr", "syslog", or a file.  rkd_log_prepare validates
 * DEST and opens the file (O_APPEND, mode 0600, refused when it is a
 * symbolic link or not a regular file) before the daemon detaches, printing
 * the reason to stderr on failure (-errno); rkd_log_start switches the log
 * to it once detached (without -o log: syslog when detached, else stderr). */
int rkd_log_prepare(const char *dest);
void rkd_log_start(bool foreground);

#endif
