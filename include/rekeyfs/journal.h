/* rekeyfs - the redo journal: crash-safe in-place replacement of sealed
 * chunks.
 *
 * A write that replaces a slot holding data appends a record (the whole new
 * slot image, the file's identity and the slot offset) to
 * DATADIR/.rekeyfs/journal and keeps the image in memory as "pending"; reads
 * see the pending image.  A committer makes the journal durable with one
 * fdatasync for many records (group commit) and only then writes the images
 * in place.  A checkpoint fdatasyncs the data files and empties the journal.
 * After a crash, rk_journal_replay() writes every complete record again
 * (idempotent) before anything reads the data directory.
 *
 * Record layout (little endian), followed by a 32-byte SHA-256 of all
 * preceding record bytes:
 *   0  4  magic "RKJ1"
 *   4  1  type: 1 slot image, 2 truncation
 *   5  3  reserved, zero
 *   8  8  sequence number
 *   16 8  type 1: byte offset of the slot in the stored file
 *         type 2: first slot index that no longer exists
 *   24 4  type 1: image length; type 2: zero
 *   28 4  type 1: bytes of the slot in use before (zeroed past the image)
 *   32 16 file id (from the chunk file's header)
 *   48 4  file handle type (name_to_handle_at), or -1 when none
 *   52 2  file handle length
 *   54 2  path length (path relative to the data directory, "/a/b")
 *   56 ... handle bytes, path bytes, image bytes
 */
#ifndef REKEYFS_JOURNAL_H
#define REKEYFS_JOURNAL_H

#include <stdint.h>

#include "datadir.h"
#include "format.h"

#define RK_JOURNAL_NAME "journal"

struct rk_journal;

struct rk_journal_opts {
	size_t mem_limit;          /* bytes of pending images held in memory (default 16 MiB) */
	unsigned commit_interval_ms; /* group commit period (default 20 ms) */
	uint64_t checkpoint_bytes; /* journal size that triggers a checkpoint (default 64 MiB) */
};

/* Replay the journal of a data directory (caller holds the exclusive lock):
 * apply every complete record, sync the touched files, recount their
 * headers, empty the journal.  *applied gets the number of records written
 * (may be NULL).  0 when there was nothing to do. */
int rk_journal_replay(struct rk_datadir *dd, uint64_t *applied);

/* Open the (replayed, empty) journal of a data directory and start its
 * committer thread. */
int rk_journal_open(struct rk_datadir *dd, const struct rk_journal_opts *o, struct rk_journal **out);
/* Apply and sync everything, empty the journal, stop the committer. */
int rk_journal_close(struct rk_journal *j);

/* Route a chunk file's slot writes through the journal.  rel: its path from
 * the data directory root. */
int rk_journal_attach(struct rk_journal *j, struct rk_cf *cf, const char *rel);
/* Apply this file's pending slots and forget it (before rk_cf_close). */
int rk_journal_detach(struct rk_journal *j, struct rk_cf *cf);
/* Update the path recorded for a file (after rename). */
void rk_journal_repath(struct rk_journal *j, struct rk_cf *cf, const char *rel);
/* Make every record appended so far durable (fsync path). */
int rk_journal_commit(struct rk_journal *j);
/* Commit, apply everything pending, sync data files, empty the journal. */
int rk_journal_checkpoint(struct rk_journal *j);

struct rk_journal_stats {
	uint64_t records, commits, applied, checkpoints, pending_bytes, journal_bytes, waits;
	int last_error;
};
void rk_journal_get_stats(struct rk_journal *j, struct rk_journal_stats *st);

#endif
