/* rekeyfs - journal internals shared by journal.c (writer, committer,
 * attached files), journal_replay.c (replay) and journal_mac.c (record
 * authentication, header encoding).  Not a public header. */
#ifndef REKEYFS_JOURNAL_INT_H
#define REKEYFS_JOURNAL_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <openssl/evp.h>

#include "rekeyfs/journal.h"
#include "rekeyfs/keys.h"

/* journal header (see journal.h) */
#define JHDR_SIZE 136
#define JHDR_MACOFF 104
#define JID_BYTES 16
#define JVERSION 3     /* written; replay also reads version 2 (no size records) */
#define JVERSION_MIN 2
/* records */
#define REC_HDR 64
#define REC_SUM 32
#define REC_SLOT 1
#define REC_TRUNC 2
#define REC_SIZE 3     /* version 3: the plaintext size an fsync made durable */
#define HANDLE_MAX 128
#define REC_V1_HDR 56
extern const uint8_t rk_jhdr_magic[4];
extern const uint8_t rk_jrec_magic[4];
extern const uint8_t rk_jrec_v1_magic[4];

/* ---- record authentication (journal_mac.c) ---------------------------------------
 * HMAC-SHA256 keyed by HKDF-SHA256(key material of the key the header names,
 * salt = journal id, info = "rekeyfs journal v2" || key fingerprint). */
struct jmac {
	EVP_MAC *mac;
	EVP_MAC_CTX *ctx;  /* initialised with the MAC key; re-initialised per message */
};
void jmac_free(struct jmac *m);
int jmac_init(struct jmac *m, const struct rk_key *k, const uint8_t id[JID_BYTES]);
/* MAC of the concatenated buffers into out (REC_SUM bytes). */
int jmac_compute(struct jmac *m, const struct iovec *iov, int n, uint8_t *out);
int jmac_verify(struct jmac *m, const uint8_t *buf, size_t len, const uint8_t *tag);
/* Encode the journal header (id, key) with its MAC. */
int jhdr_encode(struct jmac *m, const uint8_t id[JID_BYTES], const char *keyname, const uint8_t *fp,
                uint8_t *h);


/* ---- the journal's state (journal.c; the fsync path in journal_sync.c) ---------- */
#include <pthread.h>
#include <limits.h>
#include <uthash.h>
#include "rekeyfs/format.h"

/* An fsync journals at most this many directly written slots, and at most
 * JSYNC_MAX_BYTES of them; beyond, it fdatasyncs the data file instead. */
#define JDIRECT_MAX 64
#define JSYNC_MAX_BYTES (1u << 20)

struct rk_journal_file {
	struct rk_journal *j;
	struct rk_cf *cf;
	uint8_t file_id[RK_FILE_ID_BYTES];
	int handle_type;
	uint16_t handle_len;
	uint8_t handle[HANDLE_MAX];
	char path[PATH_MAX];
	unsigned npending;     /* queued entries of this file */
	bool dirty;            /* applied since the last checkpoint: its dup is in the dirty list */
	uint64_t size_gen;     /* journal generation of its last size record (UINT64_MAX: none) */
	/* slots written directly (holes filled, see j_write_slot) since the
	 * last fsync: an fsync journals them instead of syncing the data file
	 * (rk_journal_sync_file); past JDIRECT_MAX, direct_over */
	uint64_t direct[JDIRECT_MAX];
	unsigned ndirect;
	bool direct_over;
	bool cut_pending;      /* a truncation cut the stored file since the last fsync */
	struct rk_journal_file *prev, *next; /* live (attached) files */
	UT_hash_handle cfh;    /* in j->by_cf, keyed by the cf pointer (old by-cf API) */
};

/* A file id with a size record in the journal's current generation. */
struct jsized {
	uint8_t id[RK_FILE_ID_BYTES];
	UT_hash_handle hh;
};

struct jkey {
	struct rk_journal_file *jf;
	uint64_t idx;
};

struct jent {
	struct jkey key;
	uint64_t off;         /* slot offset in the stored file */
	uint32_t len;
	uint32_t old_end;
	size_t aoff;          /* image position in the arena */
	size_t charge;        /* arena bytes this entry accounts for (with wrap waste) */
	uint64_t seq;
	bool dead;            /* superseded or truncated away: not applied */
	bool hdr;             /* a size record: applying it writes the file's header in place (no image) */
	bool hashed;
	UT_hash_handle hh;
	struct jent *next;
};

struct rk_journal {
	struct rk_datadir *dd;
	int fd;
	struct rk_journal_opts o;
	pthread_mutex_t lock; /* rank RK_RANK_JOURNAL (85): everything below (doc/architecture.md, Locking) */
	pthread_cond_t work;     /* committer wake-up */
	pthread_cond_t changed;  /* space freed, commits done, entries applied */
	uint64_t tail;           /* end of this generation's records */
	uint64_t fsize;          /* the journal file's length: written (zero or stale) bytes
	                          * records overwrite, so a commit is a data-only fdatasync */
	bool committing;         /* a thread is in the journal's fdatasync (lock dropped) */
	uint64_t seq;            /* last sequence number handed out */
	uint64_t committed;      /* records with seq <= committed are durable */
	uint64_t commit_want;    /* a caller waits for this seq to be durable */
	int error;               /* commit error not yet reported to a committing caller (reported once) */
	int commit_error;        /* the last commit failed (cleared by a success: the committer retries) */
	int sync_error;          /* a data file's fdatasync failed at a checkpoint: the records are
	                          * the only durable copy, the journal is not emptied in this mount */
	int apply_error;         /* last in-place write failed (cleared by a success) */
	uint8_t *arena;
	size_t asize, ahead, atail, aused;
	struct jent *hash;
	struct jent *qhead, *qtail;
	struct jent *freelist;
	int *dirty_fds;
	size_t ndirty, capdirty;
	struct jent *applying;   /* being written in place (lock dropped) */
	uint64_t generation;     /* bumped each time the journal is emptied */
	struct rk_journal_file *files;     /* attached files */
	struct rk_journal_file *by_cf;     /* the same, by their rk_cf (hash) */
	/* file ids with a size record in this generation (whatever open wrote
	 * it): a later durable header of the file must be recorded too, or
	 * replay would give it the older size back; emptied with the journal */
	struct jsized *sized;
	bool stop;
	pthread_t thr;
	struct rk_journal_stats st;
	struct jmac mac;         /* record MACs (under lock) */
	uint8_t jhdr[JHDR_SIZE]; /* header written before the first record of each generation (under lock) */
	char keyname[RK_KEY_NAME_MAX + 1]; /* the key the MAC key comes from (under lock) */
	struct rk_key *key;      /* a copy of that key (secure memory): each generation's
	                          * journal id gets its MAC key from it (under lock) */
};


/* The journal file grows in steps of at most this many bytes (zeros written,
 * so later records overwrite allocated blocks). */
#define JGROW_MIN (1u << 20)
#define JGROW_MAX (8u << 20)

/* journal_space.c: grow the journal file to at least need bytes (caller
 * holds j->lock); a new journal id with its MAC key (from k) and encoded
 * header for the next generation.  0 or -errno. */
int jnl_grow(struct rk_journal *j, uint64_t need);
int jnl_new_generation_id(struct rk_journal *j, const struct rk_key *k, struct jmac *m, uint8_t *hdr);

/* journal.c internals used by journal_sync.c; callers hold j->lock */
int jnl_rec_append(struct rk_journal *j, int type, uint64_t a, const uint8_t *img, uint32_t len, uint32_t old_end,
                   struct rk_journal_file *jf, uint64_t *seq_out);
void jnl_queue_push(struct rk_journal *j, struct jent *e);
struct jent *jnl_ent_new(struct rk_journal *j);
int jnl_add_dirty(struct rk_journal *j, struct rk_journal_file *jf);
bool jnl_sized_has(struct rk_journal *j, const struct rk_journal_file *jf);
int jnl_size_append(struct rk_journal *j, struct rk_journal_file *jf, uint64_t size, uint64_t *seq);

#endif
