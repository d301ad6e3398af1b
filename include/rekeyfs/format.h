/* rekeyfs - the chunk-file format (versions 1 and 2).  man/rekeyfs.5 is the
 * normative description; this header mirrors it.  Version 2 (wrapped data
 * keys) is version 1 plus the wrap table described after the v1 layout.
 *
 *   offset 0      header copy A (4096 bytes)
 *   offset 4096   header copy B (4096 bytes)
 *   offset 8192   slot 0, slot 1, ...  slot i at 8192 + i * slot_size
 *
 * slot_size = chunk_size + 64.  A slot holds a 32-byte slot header, the
 * sealed payload (stored_len bytes) and a 16-byte tag; the rest of the slot
 * is never written (a hole).  A slot whose 32-byte header is all zero is a
 * hole and reads as chunk_size zero bytes.
 *
 * Header copy (all integers little endian):
 *   0   8  magic 89 'R' 'K' 'F' 'S' 0d 0a 1a
 *   8   2  format version (1)
 *   10  2  header copy size (4096)
 *   12  4  flags (bit 0: COUNTS_DIRTY)
 *   16  8  seq: generation; the valid copy with the higher seq wins
 *   24 16  file id (random)
 *   40  4  chunk_size (plaintext bytes per chunk, power of two, 4 KiB..1 MiB)
 *   44  4  slot_size (chunk_size + 64)
 *   48  8  plaintext size of the file
 *   56  1  compression of the table when the file was created (informational)
 *   57  7  reserved, zero
 *   64 16 * 96  key table, entry j at 64 + 96*j:
 *          0 64 key file name, NUL padded (at most 63 bytes)
 *         64 16 key fingerprint
 *         80  1 cipher id (1 AES-GCM, 2 ChaCha20-Poly1305)
 *         81  1 entry flags (bit 0: in use)
 *         82  2 key strength in bits
 *         84  4 reserved, zero
 *         88  8 number of chunks sealed under this entry
 *   1600..4063 reserved, zero
 *   4064 32 SHA-256 of bytes 0..4063
 *
 * Slot header (32 bytes):
 *   0 4  slot magic 'R' 'K' 'C' '1'
 *   4 1  key index (entry of the header key table)
 *   5 1  payload compression (0 raw, 1 snappy)
 *   6 2  reserved, zero
 *   8 4  plain_len: plaintext bytes in this chunk (1..chunk_size)
 *   12 4 stored_len: payload bytes (compressed or raw) = ciphertext bytes
 *   16 12 nonce (random)
 *   28 4 reserved, zero
 * AEAD: key = HKDF-SHA256(master, salt = file id, info = "rekeyfs chunk key v1"),
 *       nonce = slot nonce, aad = file id || le64 chunk index || slot header[0..16).
 *
 * Version 2 (rekeyfs(5), FORMAT V2): the chunk key of entry j is a random
 * data key (DEK) wrapped under the entry's key (KEK).  Key table flags must
 * be 0 or 1; wrap table 1600 + 152*j (all zero for an unused entry):
 *     0  1 wrap method (1: key file KEK)
 *     1  1 DEK length (= strength / 8)
 *     2  1 history length (0..4)
 *     3  1 wrap flags (bit 0 HISTORY_OVERFLOW, bit 1 DERIVED)
 *     4  4 reserved, zero
 *     8 12 wrap nonce
 *    20 16 wrap tag
 *    36 48 wrapped DEK (DEK length bytes, rest zero)
 *    84 64 history: earlier KEK fingerprints, most recent first
 *   148  4 reserved, zero
 *   4032..4063 reserved, zero
 * KWK = HKDF-SHA256(KEK, salt = file id, info = "rekeyfs dek wrap v2");
 * wrap AAD = le16 version || file id || u8 j || key entry[0..84) ||
 *            wrap entry[0..8) || wrap entry[84..148)  (175 bytes).
 */
#ifndef REKEYFS_FORMAT_H
#define REKEYFS_FORMAT_H

#include <stdbool.h>
#include <string.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "compress.h"
#include "crypto.h"
#include "keys.h"
#include "scratch.h"

#define RK_FORMAT_VERSION 2 /* written by rk_cf_create */
#define RK_FORMAT_V1 1
#define RK_FORMAT_V2 2
#define RK_MAGIC_LEN 8
extern const uint8_t rk_magic[RK_MAGIC_LEN];
#define RK_HDR_COPY_SIZE 4096
#define RK_HDR_AREA (2 * RK_HDR_COPY_SIZE)
#define RK_HDR_SUM_OFF 4064
#define RK_HDR_KEYS_OFF 64
#define RK_HDR_KEY_ENTRY 96
#define RK_CF_MAX_KEYS 16
#define RK_SLOT_HDR 32
#define RK_SLOT_OVERHEAD 64
#define RK_AAD_LEN (RK_FILE_ID_BYTES + 8 + 16)
#define RK_CHUNK_MIN 4096u
#define RK_CHUNK_MAX (1024u * 1024u)
#define RK_CHUNK_DEFAULT (16u * 1024u)

/* format v2: the wrap table */
#define RK_HDR_WRAP_OFF 1600
#define RK_HDR_WRAP_ENTRY 152
#define RK_WRAP_END (RK_HDR_WRAP_OFF + RK_CF_MAX_KEYS * RK_HDR_WRAP_ENTRY) /* 4032 */
#define RK_WRAP_METHOD_FILE 1
#define RK_WRAP_METHOD_PKCS11 2 /* sealed by a PKCS#11 token (CKM_AES_GCM): rekeyfs(5) */
#define RK_WRAP_HIST 4
#define RK_WRAP_CT_MAX 48
#define RK_WF_HIST_OVERFLOW 0x1u
#define RK_WF_DERIVED 0x2u
#define RK_WRAP_AAD_LEN (2 + RK_FILE_ID_BYTES + 1 + 84 + 8 + RK_WRAP_HIST * RK_FP_BYTES)

#define RK_HF_COUNTS_DIRTY 0x1u
/* Largest plaintext size the format addresses (2^62-1): a header claiming
 * more is invalid; growing a file past it fails with EFBIG. */
#define RK_SIZE_MAX ((uint64_t)INT64_MAX / 2)

struct rk_cf_keyent {
	bool in_use;
	char name[RK_KEY_NAME_MAX + 1];
	uint8_t fp[RK_FP_BYTES];
	enum rk_cipher cipher;
	uint16_t bits;
	uint64_t count;
	/* format v2 only (zero in v1): the wrapped data key */
	uint8_t wrap_method;
	uint8_t dek_len;
	uint8_t hist_n;
	uint8_t wflags;
	uint8_t wnonce[RK_NONCE_BYTES];
	uint8_t wtag[RK_TAG_BYTES];
	uint8_t wrapped[RK_WRAP_CT_MAX];
	uint8_t hist[RK_WRAP_HIST][RK_FP_BYTES];
};

struct rk_cf_header {
	uint16_t version;
	uint32_t flags;
	uint64_t seq;
	uint8_t file_id[RK_FILE_ID_BYTES];
	uint32_t chunk_size;
	uint32_t slot_size;
	uint64_t size;
	uint8_t compression;
	struct rk_cf_keyent keys[RK_CF_MAX_KEYS];
};

/* Encode a header copy into buf (RK_HDR_COPY_SIZE bytes), with checksum
 * (version 2: with the wrap table). */
void rk_hdr_encode(const struct rk_cf_header *h, uint8_t *buf);
/* Encode key entry e's wrap entry (RK_HDR_WRAP_ENTRY bytes) into w. */
void rk_wrap_entry_encode(const struct rk_cf_keyent *e, uint8_t *w);
/* Decode and verify one header copy.  0 ok; -ENOMSG no magic (plain data);
 * -EPROTONOSUPPORT unknown version (h->version set); -EUCLEAN bad checksum
 * or inconsistent fields. */
int rk_hdr_decode(const uint8_t *buf, struct rk_cf_header *h);
/* Does a header copy of the RK_HDR_AREA bytes area that verifies (the one in
 * use or the older one, which a damaged newer copy falls back to) have an
 * entry in use naming key name (any fingerprint)? */
bool rk_hdr_copies_name(const uint8_t *area, const char *name);

/* Is the stored file a chunk file?  The one rule (man/rekeyfs.5, "Chunk
 * file or plain file"): yes when copy A starts with the magic, or copy B
 * verifies (magic, copy size, checksum), or copy B has the magic and copy A's
 * first 8 bytes are zero or at most 2 bits off the magic, or both copies'
 * first 8 bytes are zero and slot 0 (offset 8192) starts with a plausible
 * slot header (a header lost by a crash).  A file that is
 * identified as a chunk file is never passed through as plain data, even
 * when its header is then found corrupt.  1 chunk file, 0 plain file,
 * negative errno on read error. */
int rk_cf_probe(int fd);
/* The same rule on the first n bytes of a stored file, already read
 * (n < RK_PROBE_AREA: the file is that short; the last rule, both copies'
 * magic fields zero and slot 0 holding a plausible slot header, looks at
 * slot 0's header only when n >= RK_PROBE_AREA).  rk_cf_probe_more: the
 * same, n at most RK_HDR_AREA, reading slot 0's header from fd when the
 * last rule needs it (rare: both magic fields zero). */
#define RK_PROBE_AREA (RK_HDR_AREA + RK_SLOT_HDR)
int rk_cf_probe_buf(const uint8_t *buf, size_t n);
int rk_cf_probe_more(int fd, const uint8_t *buf, size_t n);
/* Read the current header (the valid copy with the higher seq) without any
 * key.  *which gets 0 (copy A) or 1 (copy B) if non-NULL.  Errors as
 * rk_hdr_decode; -EUCLEAN when neither copy verifies.  path is for messages. */
int rk_cf_read_header(int fd, const char *path, struct rk_cf_header *h, int *which);

/* The current header copy of a header area already read (RK_HDR_AREA
 * bytes; bytes past the end of a short file zero).  The copy claiming the
 * higher seq is decoded first (a tie goes to copy A); the other copy is
 * decoded only when the first fails or check_other is set.  Returns 0 with
 * *h and sel->which (0 copy A, 1 copy B); else -EPROTONOSUPPORT (a copy of
 * an unknown version, sel->version set), -ENOMSG (no copy has the magic) or
 * -EUCLEAN.  sel->err[i] is copy i's rk_hdr_decode result (1: not decoded). */
struct rk_hdr_sel {
	int which;
	int err[2];
	unsigned version;
};
int rk_hdr_select(const uint8_t *area, bool check_other, struct rk_cf_header *h, struct rk_hdr_sel *sel);
/* With copy `which` of area in use (it verifies): the other copy when it
 * was overwritten (damage, not a torn or older copy: no magic and not all
 * zero, or copy A all zero), else -1. */
int rk_hdr_damaged_copy(const uint8_t *area, int which);

/* ---- slot arithmetic: every offset, index and count of the layout ---------
 * (tests/unit/test_slots.c) */
/* Offset of slot idx in the stored file. */
static inline uint64_t rk_slot_off(uint32_t slot_size, uint64_t idx)
{
	return (uint64_t)RK_HDR_AREA + idx * (uint64_t)slot_size;
}
/* Chunks (slots) a plaintext size needs. */
static inline uint64_t rk_chunk_count(uint64_t size, uint32_t chunk_size)
{
	return (size + chunk_size - 1) / chunk_size;
}
/* Plaintext bytes of chunk idx in a file of that size (0 past the end). */
static inline uint64_t rk_chunk_plain_len(uint64_t size, uint32_t chunk_size, uint64_t idx)
{
	uint64_t start = idx * chunk_size;
	if (start >= size)
		return 0;
	return size - start < chunk_size ? size - start : chunk_size;
}
/* Slots a stored file of length len reaches into (the last one perhaps
 * only partly): slots from this index on are past its end. */
static inline uint64_t rk_slots_reached(uint64_t len, uint32_t slot_size)
{
	return len <= RK_HDR_AREA ? 0 : (len - RK_HDR_AREA + slot_size - 1) / slot_size;
}
/* Slots whose 32-byte slot header lies wholly in a stored file of length len. */
static inline uint64_t rk_slots_with_header(uint64_t len, uint32_t slot_size)
{
	return len < RK_HDR_AREA + RK_SLOT_HDR ? 0 : (len - RK_HDR_AREA - RK_SLOT_HDR) / slot_size + 1;
}
/* Stored (backing) file length needed for a plaintext size. */
uint64_t rk_cf_stored_len(uint32_t chunk_size, uint64_t size);

/* ---- an open chunk file ---------------------------------------------------
 * rk_cf does not own the fd.  Calls on different chunks may run in parallel
 * from several threads; the caller serialises calls on the same chunk (the
 * daemon's chunk locks).  Header state is protected internally. */
struct rk_cf;

/* How a sealed slot image reaches the disk.  The default writes in place
 * (pwrite) and is used for files nobody else can see (conversion temporaries,
 * offline tools on new files); the daemon installs its redo journal so that a
 * slot that may hold durable data is replaced crash-safely.
 *   write_slot: store len bytes of slot image for chunk idx; old_end is how
 *     many bytes the slot held before (0: a hole), bytes past len up to
 *     old_end must end up zero (no stale ciphertext stays behind).
 *   read_slot (optional): copy a newer-than-disk image of slot idx into buf
 *     (at most len bytes) and return its length, or -ENOENT if none.
 *   truncated (optional): slots >= first_dead no longer exist. */
struct rk_cf_writer {
	int (*write_slot)(void *ctx, struct rk_cf *cf, uint64_t idx, const uint8_t *slot, size_t len, size_t old_end);
	ssize_t (*read_slot)(void *ctx, struct rk_cf *cf, uint64_t idx, uint8_t *buf, size_t len);
	int (*truncated)(void *ctx, struct rk_cf *cf, uint64_t first_dead);
	void *ctx;
};

/* Write a slot image into a hole: payload and tag first, the 32-byte slot
 * header last.  A process killed in between leaves the slot header zero,
 * i.e. the hole it was (slot headers sit at 64-byte aligned offsets, so the
 * header write never spans two pages and is never torn by a kill). */
int rk_write_slot_direct(int fd, uint64_t off, const uint8_t *slot, size_t len);
/* The same for slot idx of an open chunk file: what every writer does with
 * a slot that was a hole (old_end 0), the in-place default and the journal
 * alike: a hole holds no data, so nothing needs journaling. */
int rk_cf_write_hole(struct rk_cf *cf, uint64_t idx, const uint8_t *slot, size_t len);
/* Zero [off, off+len) of fd: punch whole blocks, write zeros at the edges. */
int rk_zero_range(int fd, uint64_t off, uint64_t len);
/* The stored file's access and modification times are the user's: writes
 * that only maintain the format (headers, journal applies, rekeys) keep
 * them.  Setting times on an open chunk file takes this lock so that such a
 * write cannot undo them. */
void rk_cf_times_lock(struct rk_cf *cf);
void rk_cf_times_unlock(struct rk_cf *cf);
struct rk_times {
	struct timespec ts[2];
	bool ok;
};
/* Save the times (takes the times lock) / restore them (releases it). */
void rk_cf_times_save(struct rk_cf *cf, struct rk_times *t);
void rk_cf_times_restore(struct rk_cf *cf, struct rk_times *t);
/* File id of an open chunk file. */
void rk_cf_file_id(const struct rk_cf *cf, uint8_t out[RK_FILE_ID_BYTES]);
uint32_t rk_cf_slot_size(const struct rk_cf *cf);

/* Initialise an empty stored file (length 0) as a chunk file whose key
 * table already names key (the table's target key), so that the first chunk
 * writes need no extra header sync.  The header is written (COUNTS_DIRTY set
 * until the first rk_cf_sync) but not fsynced. */
int rk_cf_create(int fd, const char *path, struct rk_keyring *kr, uint32_t chunk_size,
                 enum rk_comp comp, struct rk_key *key, struct rk_cf **out);
/* The same, writing format `version` (RK_FORMAT_V1: the golden fixtures and
 * tests of v1 files; RK_FORMAT_V2: what rk_cf_create writes). */
int rk_cf_create_version(int fd, const char *path, struct rk_keyring *kr, uint32_t chunk_size, enum rk_comp comp,
                         struct rk_key *key, int version, struct rk_cf **out);

/* ---- format v2: wrapped data keys (wrap.c; rekeyfs(5), FORMAT V2) ---------
 * Wrap dek (entry j's dek_len bytes) under kek into entry j of h (fresh
 * nonce); the entry's name, fingerprint, cipher, strength, method, lengths,
 * flags and history must be set first (they are bound by the AAD).  0, or
 * -EKEYREVOKED / -EKEYREJECTED (kek released, or not the entry's key). */
int rk_dek_wrap(struct rk_cf_header *h, int j, const struct rk_key *kek, const uint8_t *dek);
/* The wrap layer's part of the release rule (one rule for release-key, the
 * daemon's release, rotate's verify and fsck --key): a format 2 header
 * whose entry j names the key being released blocks the release when the
 * file holds no chunk at all (an empty or all-holes file: nothing but a
 * rewrap or a rekey ever changes its key table).  A zero-count entry left
 * in a file whose chunks were resealed in place under another key does not
 * block: every slot reference was read, no chunk needs the key (rekeyfs(5),
 * FORMAT V2). */
static inline bool rk_release_wrap_blocks(const struct rk_cf_header *h, int j, const char *name,
                                          uint64_t file_chunks)
{
	return h->version >= RK_FORMAT_V2 && h->keys[j].in_use && strcmp(h->keys[j].name, name) == 0 &&
	       file_chunks == 0;
}
/* Open entry j's wrapped DEK under kek into dek (dek_len bytes).  -EBADMSG
 * when it does not authenticate (damaged, or another key of that name and
 * fingerprint); -EINVAL when h is not v2 or the entry unused; as rk_dek_wrap. */
int rk_dek_unwrap(const struct rk_cf_header *h, int j, const struct rk_key *kek, uint8_t *dek);
/* Rewrap the DEK of entry j (a v2 file opened writable) from old to new:
 * the entry then names new, old's fingerprint joins its history, and both
 * header copies are written and made durable (the older one first: a crash
 * leaves a valid copy under old or under new).  No chunk is touched; an
 * open file's cached DEK stays.  -ESTALE when entry j does not name old;
 * -EKEYREJECTED when new's cipher or length differ from the entry's;
 * -EBADMSG when the DEK does not open under old. */
int rk_cf_rewrap_entry(struct rk_cf *cf, int j, struct rk_key *old, struct rk_key *new);
/* The same rewrap in two halves, for a caller that makes many files durable
 * with one sync (the offline rewrap: rk_rewrap_offline): stage entry j's
 * rewrap in memory only, then write header copy 0 of every staged file,
 * make them durable (syncfs), write copy 1, make them durable again.  A
 * crash between the two leaves each file one complete copy (old or new):
 * both wrap the same DEK.  rk_cf_hdr_write_copy(cf, 0) writes nothing when
 * nothing is staged. */
int rk_cf_rewrap_stage(struct rk_cf *cf, int j, struct rk_key *old, struct rk_key *new);
/* May the data keys wrapped under old be rewrapped under new?  A rewrap
 * keeps the data keys, so new must have old's cipher and key length: 0, or
 * -EINVAL with the reason (naming both keys) in why. */
int rk_rewrap_keys_fit(const struct rk_key *old, const struct rk_key *new, char *why, size_t len);
/* Which entries of h wrap a data key under k (name and fingerprint): which[j]
 * set for each; returns how many. */
int rk_hdr_entries_under(const struct rk_cf_header *h, const struct rk_key *k, bool which[RK_CF_MAX_KEYS]);
int rk_cf_hdr_write_copy(struct rk_cf *cf, int i);
/* Convert a v1 file (opened writable) to v2 in place: every entry's DEK is
 * its v1 derived subkey, wrapped under the same key with flag DERIVED, so no
 * chunk is rewritten; both copies written and synced.  Every key the header
 * names must be in the keyring.  0 (also when already v2) or an error. */
int rk_cf_upgrade_v2(struct rk_cf *cf);
/* A v2 file (opened writable) with no chunk at all (empty or all holes,
 * by the live counts): every entry that does not name target is dropped,
 * or (when none names target) the first becomes target's with a fresh data
 * key; both copies written and synced.  So a key leaves the header of a
 * file that a rekey cannot replace (hard links, held open) and its release
 * is no longer blocked (rk_release_wrap_blocks).  0 when there is nothing
 * to do (v1, chunks present, only target). */
int rk_cf_reset_chunkless(struct rk_cf *cf, struct rk_key *target);
/* Format version of the open file's header. */
int rk_cf_header_version(struct rk_cf *cf);

/* Drop cached subkeys derived from the named key (after release). */
void rk_cf_forget_key(struct rk_cf *cf, const char *name);
/* Open an existing chunk file.  Errors: as rk_cf_read_header; -ENOMSG if it
 * is not a chunk file.  A header whose COUNTS_DIRTY flag is set (crash) is
 * recounted from the slot headers when the file is opened writable. */
int rk_cf_open(int fd, const char *path, struct rk_keyring *kr, bool writable, struct rk_cf **out);
/* Forget the in-memory state (does not write; call rk_cf_sync first). */
void rk_cf_close(struct rk_cf *cf);

/* The writer and the read hook are given once, right after rk_cf_open or
 * rk_cf_create and before the file is shared with other threads (the
 * journal's rk_journal_attach_file installs itself), and reset (w NULL: the
 * in-place default) only when no other thread uses the file any more:
 * calls read them without a lock. */
void rk_cf_set_writer(struct rk_cf *cf, const struct rk_cf_writer *w);
void rk_cf_get_writer(const struct rk_cf *cf, struct rk_cf_writer *w);
/* Called after every successful chunk read with the chunk's key entry (the
 * daemon schedules lazy rekeys from it).  Must not block. */
typedef void (*rk_cf_read_hook)(void *arg, struct rk_cf *cf, uint64_t idx, int key_idx);
void rk_cf_set_read_hook(struct rk_cf *cf, rk_cf_read_hook fn, void *arg);
/* Header entry naming key (same name and fingerprint), or -1. */
int rk_cf_key_entry(struct rk_cf *cf, const struct rk_key *key);
int rk_cf_fd(const struct rk_cf *cf);
/* The path used in messages, owned by the rk_cf: valid until rk_cf_close
 * (a rename's old path is kept until then, never freed under a reader). */
const char *rk_cf_path(const struct rk_cf *cf);
/* Update the path used in messages (after a rename); the string is copied. */
void rk_cf_set_path(struct rk_cf *cf, const char *path);
uint64_t rk_cf_size(struct rk_cf *cf);
uint32_t rk_cf_chunk_size(const struct rk_cf *cf);
void rk_cf_get_header(struct rk_cf *cf, struct rk_cf_header *out);
uint64_t rk_cf_nchunks(struct rk_cf *cf);
/* The header on disk has COUNTS_DIRTY set (a sync would clean it). */
bool rk_cf_disk_dirty(struct rk_cf *cf);
/* Does an entry in use of the in-memory header name key name (any
 * fingerprint)? */
bool rk_cf_names_key(struct rk_cf *cf, const char *name);
/* Does a header copy on disk (either, rk_hdr_copies_name) name key name?
 * 1 yes, 0 no, or a negative errno (read error). */
int rk_cf_disk_copies_name(struct rk_cf *cf, const char *name);
/* Have both header copies written again from the in-memory header by the
 * next rk_cf_hdr_write_copy(cf, 0) and (cf, 1): the offline rewrap's
 * repair of a file a crash left with one copy under the old key. */
int rk_cf_stage_rewrite(struct rk_cf *cf);

/* Read chunk idx into out (chunk_size bytes; bytes past the chunk's
 * plaintext, or past end of file, are zero).  *key_idx gets the sealing key
 * entry, or -1 for a hole.  -EIO (logged, naming file, chunk and cause) when
 * the chunk is corrupt or its key is missing, released or changed. */
int rk_cf_read_chunk(struct rk_cf *cf, uint64_t idx, uint8_t *out, int *key_idx);
/* The calling thread's last failed chunk read (corrupt or missing chunk,
 * key missing, released or changed, read error): rk_cf_read_error_clear()
 * before a read (rk_cf_pread ...), rk_cf_read_error() after it gives the
 * chunk index and the cause (e.g. "corrupt: authentication failed under key
 * 'k1' (...)", "sealed under key 'k1' which has been released"; names keys,
 * never key material): 0, or -ENOENT when no chunk read failed since the
 * clear.  Per thread, no lock; set whether or not the failure was logged. */
#define RK_CF_CAUSE_MAX 256
void rk_cf_read_error_clear(void);
int rk_cf_read_error(uint64_t *idx, char *cause, size_t len);
/* Seal plaintext pt[0..len) as chunk idx under key.  Adds key to the header
 * table when needed.  Does not change the file size. */
int rk_cf_write_chunk(struct rk_cf *cf, uint64_t idx, const uint8_t *pt, uint32_t len,
                      struct rk_key *key, enum rk_comp comp);
/* Re-seal chunk idx under key without recompressing.  *changed tells
 * whether anything was rewritten (false: hole, beyond EOF or already under key). */
int rk_cf_rekey_chunk(struct rk_cf *cf, uint64_t idx, struct rk_key *key, bool *changed);
/* Whole-file rekey: reseal chunk idx of src into the same slot of dst (a new
 * chunk file of the same chunk size that nobody else can see yet) under key,
 * keeping its compression.  *src_key gets the chunk's key entry in src, or
 * -1 for a hole or a chunk past EOF (nothing written).
 * A chunk that cannot be read gives -EUCLEAN (corrupt) or the key error
 * (-ENOKEY, -EKEYREVOKED, -EKEYREJECTED), not logged. */
int rk_cf_copy_chunk(struct rk_cf *src, struct rk_cf *dst, uint64_t idx, struct rk_key *key, int *src_key);
/* Key entry of chunk idx from its slot header alone (no decryption): -1 for
 * a hole.  -EUCLEAN when the slot header is malformed, -ENODATA when the
 * slot is missing (see rk_cf_missing). */
int rk_cf_chunk_keyidx(struct rk_cf *cf, uint64_t idx, int *key_idx);

/* Byte-level access built on the chunk calls (read-modify-write). */
ssize_t rk_cf_pread(struct rk_cf *cf, void *buf, size_t len, uint64_t off);
ssize_t rk_cf_pwrite(struct rk_cf *cf, const void *buf, size_t len, uint64_t off, struct rk_key *key,
                     enum rk_comp comp);
int rk_cf_truncate(struct rk_cf *cf, uint64_t size, struct rk_key *key, enum rk_comp comp);

/* The first slot >= idx that may hold a chunk (below end), or end when none
 * does: holes of the stored file (SEEK_DATA), slots past its end and slots
 * known missing are skipped, slots written since the open are not.  Loops
 * over a file's chunks step with it, so their cost follows the chunks that
 * exist, not the plaintext size (a sparse 2 EiB file has 2^49 slots). */
uint64_t rk_cf_next_slot(struct rk_cf *cf, uint64_t idx, uint64_t end);
/* Chunks missing from a file cut short: the header was clean (exact counts)
 * when the file was opened, but fewer chunks were present in the stored file
 * than it counts.  Returns how many are missing (0: none); *first gets the
 * first slot that is not present (reads from it on give EIO, they give
 * -ENODATA from rk_cf_chunk_keyidx) and per_key[] (optional) the chunks
 * missing under each key entry. */
uint64_t rk_cf_missing(struct rk_cf *cf, uint64_t *first, uint64_t per_key[RK_CF_MAX_KEYS]);

/* Recount per-key chunk counts from the slot headers (exact). */
int rk_cf_recount(struct rk_cf *cf);
/* Write the header if it changed since the last write (counts may be marked
 * dirty).  Does not fsync. */
int rk_cf_flush(struct rk_cf *cf);
/* Make everything durable: fdatasync the data, then write a clean header
 * (exact counts, COUNTS_DIRTY clear) and fdatasync again. */
int rk_cf_sync(struct rk_cf *cf);

/* The durable point of the journal's fsync (rk_journal_sync_file): write the
 * header if it changed (keeping COUNTS_DIRTY if the disk header has it) and
 * fdatasync once: the data and the header with the current size are then
 * durable.  Unlike rk_cf_sync it does not clean the header (one flush, not
 * two). */
int rk_cf_sync_data(struct rk_cf *cf);
/* true when a durable point (rk_cf_sync_data, rk_cf_sync) was reached since
 * the open; *size gets the plaintext size now, *dur_size the size that is
 * durable (in place or in the journal). */
bool rk_cf_dur_state(struct rk_cf *cf, uint64_t *size, uint64_t *dur_size);
/* The journal made size durable (a size record was committed). */
void rk_cf_set_dur_size(struct rk_cf *cf, uint64_t size);
/* The sealed image of slot idx as the stored file holds it (buf: room for
 * a slot): *len its length, 0 when the slot holds no image (a hole, cut
 * off, or malformed).  No lock: the caller keeps writers of the slot out. */
int rk_cf_slot_image(struct rk_cf *cf, uint64_t idx, uint8_t *buf, uint32_t *len);
/* Journal replay: set the plaintext size recorded in the header of the
 * stored file fd (which must carry file id `id`) to size, in the older
 * copy with seq + 1 and COUNTS_DIRTY set (the caller recounts and syncs). */
int rk_cf_replay_set_size(int fd, const char *path, const uint8_t id[RK_FILE_ID_BYTES], uint64_t size);

/* rk_cf_sync for a file nobody else can see yet (a temporary that is renamed
 * into place afterwards): both header copies clean with the exact counts,
 * then one fdatasync. */
int rk_cf_sync_new(struct rk_cf *cf);

#endif
