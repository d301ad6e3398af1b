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
 * The journal starts with a header (written with the first record after
 * the journal was empty), then records, all little endian:
 *   header, 136 bytes:
 *   0  4  magic "RKJH"        4  2  version (2)
 *   6  1  key name length     7  1  reserved, zero
 *   8  16 journal id (random per daemon or tool run)
 *   24 16 fingerprint of the key named below
 *   40 64 key name (the root table's target key when the journal was
 *         opened), zero padded
 *   104 32 HMAC-SHA256 of bytes 0..103
 * The MAC key is HKDF-SHA256(key material, salt = journal id, info =
 * "rekeyfs journal v2" || fingerprint).  Each record is followed by the
 * HMAC-SHA256 of all its preceding bytes under that MAC key:
 *   0  4  magic "RKJ2"
 *   4  1  type: 1 slot image, 2 truncation
 *   5  3  reserved, zero
 *   8  8  sequence number (increasing)
 *   16 8  type 1: byte offset of the slot in the stored file
 *         type 2: first slot index that no longer exists
 *   24 4  type 1: image length; type 2: zero
 *   28 4  type 1: bytes of the slot in use before (zeroed past the image)
 *         type 2: the file's slot size
 *   32 16 file id (from the chunk file's header)
 *   48 4  file handle type (name_to_handle_at), or -1 when none
 *   52 2  file handle length
 *   54 2  path length (path relative to the data directory, "/a/b")
 *   56 8  durable: every record with a sequence number up to this one was
 *         durable (fdatasync'ed) when this record was appended
 *   64 ... handle bytes, path bytes, image bytes
 * Replay rules: see man/rekeyfs.5, section JOURNAL.
 */
#ifndef REKEYFS_JOURNAL_H
#define REKEYFS_JOURNAL_H

#include <stdint.h>

#include "datadir.h"
#include "format.h"
#include "keys.h"

#define RK_JOURNAL_NAME "journal"

struct rk_journal;

struct rk_journal_opts {
	size_t mem_limit;          /* bytes of pending images held in memory (default 16 MiB) */
	unsigned commit_interval_ms; /* group commit period (default 20 ms) */
	uint64_t checkpoint_bytes; /* journal size that triggers a checkpoint (default 64 MiB) */
};

/* Replay the journal of a data directory (caller holds the exclusive lock):
 * authenticate it with the key its header names (from kr), check every
 * record's target (strictly beneath the data directory, a regular chunk
 * file with the record's file id, one slot of its layout), then apply the
 * records, sync the touched files, recount their headers, empty the
 * journal.  Nothing is written when any check fails (the journal is kept
 * and the error logged, naming the journal and the cause).  *applied gets
 * the number of records written (may be NULL).  0 when there was nothing
 * to do. */
int rk_journal_replay(struct rk_datadir *dd, struct rk_keyring *kr, uint64_t *applied);
/* 1 when the journal holds something (a replay is due), 0 when empty or
 * absent, -errno; *bytes (may be NULL) gets its size.  Reads nothing. */
int rk_journal_pending(struct rk_datadir *dd, uint64_t *bytes);

/* Open the (replayed, empty) journal of a data directory and start its
 * committer thread.  Its records are authenticated with a key derived from
 * the root table's target key (taken from kr). */
int rk_journal_open(struct rk_datadir *dd, struct rk_keyring *kr, const struct rk_journal_opts *o,
                    struct rk_journal **out);
/* Apply and sync everything, empty the journal, stop the committer. */
int rk_journal_close(struct rk_journal *j);

/* A chunk file attached to the journal: the handle attach returns and the
 * caller keeps until detach.  The journal owns the handle and its copy of
 * the file's path (read and written under the journal's lock only). */
struct rk_journal_file;
/* Route a chunk file's slot writes through the journal: installs the
 * journal as cf's writer (rk_cf_set_writer), so call it after rk_cf_open
 * and before the file is shared with other threads.  rel: its path from the
 * data directory root (copied).  *out gets the handle. */
int rk_journal_attach_file(struct rk_journal *j, struct rk_cf *cf, const char *rel, struct rk_journal_file **out);
/* Apply this file's pending slots and forget it (before rk_cf_close, when
 * no other thread uses the file).  On error the file stays attached and
 * the handle valid (its pending slots still need the fd).  NULL: nothing. */
int rk_journal_detach_file(struct rk_journal_file *jf);
/* Update the path recorded for a file (after rename). */
void rk_journal_repath_file(struct rk_journal_file *jf, const char *rel);
/* The same for callers that do not keep the handle (tests): the file is
 * found by its rk_cf in the journal's list of attached files.  The daemon
 * and the rekey engine keep the handle. */
int rk_journal_attach(struct rk_journal *j, struct rk_cf *cf, const char *rel);
int rk_journal_detach(struct rk_journal *j, struct rk_cf *cf);
void rk_journal_repath(struct rk_journal *j, struct rk_cf *cf, const char *rel);
/* Make every record appended so far durable. */
int rk_journal_commit(struct rk_journal *j);
/* fsync/fdatasync of an attached file: make every write acknowledged so far
 * durable with one group commit of the journal in the common case: the
 * slots it wrote directly (holes it filled) are appended to the journal as
 * records, and so is its plaintext size when that changed (a size record,
 * applied by writing the header in place after the commit); the journal's
 * fdatasync then covers the file.  The data file itself is fdatasync'ed
 * (with its header) instead when that was never done since the open (the
 * replay finds files by their header's file id), when more than 64 slots or
 * 1 MiB were written directly, or when the journal refuses the records.
 * The caller keeps every writer of the file out meanwhile. */
int rk_journal_sync_file(struct rk_journal_file *jf);
/* Commit, apply everything pending, sync data files, empty the journal. */
int rk_journal_checkpoint(struct rk_journal *j);
/* Before key name is released: when the journal's records are authenticated
 * under it, empty the journal and authenticate the next records under next
 * (the root table's target key).  0 when the journal no longer needs name. */
int rk_journal_release_key(struct rk_journal *j, const char *name, const struct rk_key *next);

struct rk_journal_stats {
	uint64_t records, commits, applied, checkpoints, pending_bytes, journal_bytes, waits;
	/* rk_journal_sync_file calls, and those that synced the data file
	 * instead of journaling (first fsync after an open, large batches) */
	uint64_t fsyncs, fsyncs_in_place;
	/* commits the committer thread made on its own (records no fsync was
	 * waiting for yet, every commit interval); the others are fsyncs' */
	uint64_t background_commits;
	int last_error;
};
void rk_journal_get_stats(struct rk_journal *j, struct rk_journal_stats *st);

#endif
