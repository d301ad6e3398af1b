/* rekeyfs - chunk-file internals shared by the files of the format layer
 * (chunkfile.c, chunk.c, rmw.c, header.c).  Not a public header: nothing
 * outside the format layer includes it. */
#ifndef REKEYFS_FORMAT_INT_H
#define REKEYFS_FORMAT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "rekeyfs/format.h"

extern const uint8_t rk_slot_magic[4];

static inline bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* ---- open chunk files ----------------------------------------------------------------- */
struct keyslot {
	struct rk_key *key; /* keyring key, resolved on first use */
	int err;            /* resolution error (cached) */
	bool resolved;
	uint8_t *subkey;    /* secure memory, RK_MAX_KEY_BYTES: the chunk key (v1 derived subkey, v2 unwrapped DEK) */
};

struct rk_cf {
	int fd;
	/* the path for messages: owned by the rk_cf.  A rename replaces it
	 * (rk_cf_set_path, under lock) and retires the old string instead of
	 * freeing it, so a pointer another thread read stays valid until
	 * rk_cf_close; atomic so that readers need no lock. */
	char *_Atomic path;
	char **retired;                  /* old paths, freed at close (protected by lock) */
	size_t nretired;
	struct rk_keyring *kr;
	bool writable;
	pthread_mutex_t lock;           /* rank RK_RANK_CF (80): header state, key slots */
	pthread_mutex_t times_lock;     /* rank RK_RANK_CF_TIMES (82): user-visible times vs. format-only writes */
	struct rk_cf_header hdr;         /* in-memory header: exact counts, current size */
	int cur_copy;                    /* copy holding the newest header on disk */
	bool hdr_changed;                /* in-memory header differs from disk */
	bool counts_changed;             /* counts changed since last clean sync */
	bool disk_dirty;                 /* disk header has COUNTS_DIRTY */
	bool disk_keys[RK_CF_MAX_KEYS];  /* entry present in the disk header */
	bool tail_ok;                    /* last partial chunk holds no bytes past EOF */
	bool copies_equal;               /* both header copies hold the current clean state */
	struct keyslot ks[RK_CF_MAX_KEYS];
	struct rk_cf_writer writer;
	bool writer_set; /* a writer other than the default is installed (set once) */
	rk_cf_read_hook read_hook;
	void *read_hook_arg;
	/* chunks of this file that did not compress in a row: past a few,
	 * compression is only retried now and then (database files are often
	 * compressed or encrypted already) */
	atomic_uint incompressible;
	atomic_uint comp_skips;
	/* bytes the last slot read used: sizes the next read (slots of a
	 * compressed file hold mostly hole; reading it costs zero-filling) */
	atomic_uint read_hint;
	/* writable files only: slots from first_fresh on lay past the stored
	 * file's end when it was opened (or created), so they are holes unless
	 * written since (bit set in fresh_bits, protected by lock).  Reading a
	 * hole to learn that it is one costs a read-ahead that zero-fills page
	 * cache pages; writes that arrive out of order (write-back) would pay it
	 * for every chunk.  Slots from fresh_limit on are not tracked. */
	atomic_uint_fast64_t first_fresh; /* read without the lock: see slot_fresh_hole */
	uint64_t fresh_limit;
	uint64_t *fresh_bits;
	size_t fresh_words;
	/* writable files only: slots below first_fresh written since the open
	 * (protected by lock).  With a journal a written slot may exist only as
	 * a pending image while the disk still has a hole there, so
	 * rk_cf_next_slot must not skip it.  NULL with low_untracked: too many
	 * slots to track, nothing below first_fresh is skipped. */
	uint64_t *low_bits;
	size_t low_words;
	bool low_untracked;
	/* a file cut short (see rk_cf_missing): slots [miss_from, miss_end) are
	 * not in the stored file although the clean header counted miss_count
	 * more chunks than were present (protected by lock) */
	uint64_t miss_from, miss_end, miss_count;
	uint64_t miss_per_key[RK_CF_MAX_KEYS];
	/* writable files: what an fsync must still make durable (protected by
	 * lock).  dur_known: the data and a header were made durable together
	 * (fdatasync) since the open, and dur_size is the plaintext size that
	 * is durable since then, in place or in the journal (rk_cf_sync_data,
	 * rk_cf_set_dur_size; the journal's fsync, rk_journal_sync_file). */
	bool dur_known;
	uint64_t dur_size;
};

#define RK_FRESH_MAX_WORDS (1u << 17) /* 1 MiB of bits: 8M slots */

/* Parsed slot header */
struct slothdr {
	int key_idx;
	uint8_t comp;
	uint32_t plain_len;
	uint32_t stored_len;
	const uint8_t *nonce;
};


/* ---- chunkfile.c: the object, its slot map and slot reads -------------------------- */
/* Slot idx has been written.  Caller holds cf->lock. */
void cf_slot_mark_written_locked(struct rk_cf *cf, uint64_t idx);
/* Slots from first_dead on were cut off the stored file.  Caller holds cf->lock. */
void cf_slots_cut_locked(struct rk_cf *cf, uint64_t first_dead);
/* Read the used part of slot idx (slot_size bytes of room); see chunkfile.c. */
ssize_t cf_slot_read_used(struct rk_cf *cf, uint64_t idx, uint8_t *buf);
/* Read a slot (or its first len bytes): a pending image, else the disk. */
ssize_t cf_slot_pread(struct rk_cf *cf, uint64_t idx, uint8_t *buf, size_t len);
void cf_ks_clear(struct keyslot *s);
/* Write the in-memory header to the older copy.  Caller holds cf->lock. */
int cf_hdr_write_locked(struct rk_cf *cf, bool dirty);
/* 1 hole, 0 parsed, -EUCLEAN malformed (cause in *why) */
int cf_slot_parse(const struct rk_cf *cf, const struct rk_cf_header *h, const uint8_t *p, size_t avail,
                  struct slothdr *sh, const char **why);
/* Key entry from a slot header already read (n bytes of it in p). */
int cf_keyidx_of(struct rk_cf *cf, const uint8_t *p, ssize_t n, int *key_idx);
/* Is slot idx one that a cut-short file lost (and not written since)? */
bool cf_slot_missing(struct rk_cf *cf, uint64_t idx);

/* ---- wrap.c: format v2 data keys ------------------------------------------------------ */
/* A fresh random DEK for entry j (just added for key, a v2 header): into the
 * key slot (resolved), wrapped into the in-memory entry.  Caller holds cf->lock
 * (or owns an unshared cf). */
int cf_new_dek_locked(struct rk_cf *cf, int j, struct rk_key *key);
/* Convert the in-memory header of a version 1 file to version 2 (rewrap.c;
 * every entry's v1 subkey wrapped as its DEK, flag DERIVED; not written:
 * hdr_changed set).  0 when already version 2.  Caller holds cf->lock. */
int cf_upgrade_v2_locked(struct rk_cf *cf);

/* ---- chunk.c: sealing and opening chunks ----------------------------------------- */
/* Key entry the slot of idx holds now (-1: hole or past EOF) and how many
 * bytes of it are in use. */
int cf_current_slot(struct rk_cf *cf, uint64_t idx, int *k, size_t *old_end);
/* Write n whole chunks pt[0..n*cs) as chunks idx.. in order, growing the
 * size after each one; their compression runs ahead on the helper pool
 * (comppool.h).  Returns how many were written; *err 0 or the error that
 * stopped it. */
int64_t cf_write_chunks(struct rk_cf *cf, uint64_t idx, const uint8_t *pt, uint64_t n, struct rk_key *key,
                        enum rk_comp comp, int *err);

#endif
