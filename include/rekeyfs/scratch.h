/* rekeyfs - per-thread state: scratch buffers with named slots and the
 * thread's cipher contexts (crypto.c), in one object per thread, freed when
 * the thread exits.  Nothing here is shared between threads, so nothing
 * here takes a lock. */
#ifndef REKEYFS_SCRATCH_H
#define REKEYFS_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

/* The scratch buffers of a thread.  Two buffers that one call needs at the
 * same time must be different slots; a slot's content is lost when it is
 * asked for again with a larger length. */
enum rk_scratch_slot {
	RK_SCR_SLOT_IN = 0,  /* a sealed slot image read from disk or a pending journal image */
	RK_SCR_PAYLOAD = 1,  /* an opened (decrypted) payload, before decompression */
	RK_SCR_COMP = 2,     /* a compressed payload to seal; a slot copy to reseal (rekey) */
	RK_SCR_SLOT_OUT = 3, /* a sealed slot image to write */
	RK_SCR_CHUNK = 4,    /* one chunk of plaintext (byte-level read-modify-write) */
	RK_SCR_HDR = 5,      /* the 8 KiB header area (probe, header read) */
	RK_SCR_REPLY = 6,    /* a program's reply buffer (the daemon's read replies) */
	RK_SCR_JSYNC = 7,    /* slot images an fsync journals (rk_journal_sync_file) */
	RK_SCR_BATCH = 8,    /* the ring of compressed payloads of a multi-chunk write (comppool.h) */
	RK_SCR_COUNT
};

/* Scratch buffers grow in steps of RK_SCRATCH_STEP bytes (after warm-up no
 * request allocates) and are aligned to RK_SCRATCH_ALIGN. */
#define RK_SCRATCH_STEP 65536u
#define RK_SCRATCH_ALIGN 4096u
/* Size of the buffer allocated for a request of len bytes. */
static inline size_t rk_scratch_size(size_t len)
{
	return (len + RK_SCRATCH_STEP - 1) / RK_SCRATCH_STEP * RK_SCRATCH_STEP;
}

struct rk_thread_state {
	uint8_t *buf[RK_SCR_COUNT];
	size_t len[RK_SCR_COUNT];
	/* the cipher context cache of crypto.c (opaque here) and its destructor */
	void *crypto;
	void (*crypto_free)(void *);
};

/* The calling thread's state, created on first use (NULL: out of memory). */
struct rk_thread_state *rk_thread_state(void);
/* The calling thread's state if it has one, else NULL (never creates). */
struct rk_thread_state *rk_thread_state_peek(void);
/* Free the calling thread's state now (it is freed at thread exit anyway). */
void rk_thread_state_free(void);

/* Scratch buffer `which` of the calling thread, at least len bytes; never
 * freed on the hot path.  NULL when out of memory. */
uint8_t *rk_scratch(enum rk_scratch_slot which, size_t len);

#endif
