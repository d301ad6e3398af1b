/* rekeyfs - lock-rank checker (see include/rekeyfs/lockrank.h): per-thread
 * list of held locks; taking a lock whose rank is not above every held
 * lock's rank aborts with both locks named. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>

#include "rekeyfs/lockrank.h"

#define HELD_MAX 160 /* a file's 64 stripes, its rw_lock, inner locks; room to spare */

struct held {
	const void *lock;
	int rank;
	const char *name, *file;
	int line;
};

static __thread struct held held[HELD_MAX];
static __thread int nheld;

/* classes whose locks may be held together, taken in ascending address order */
static bool rank_ordered(int rank) { return rank == RK_RANK_STRIPE; }

static void die(const char *what, const void *lock, int rank, const char *name, const char *file, int line,
                const struct held *h)
{
	fprintf(stderr,
	        "rekeyfs: lock order violation: %s %s (rank %d, %p) at %s:%d while holding %s (rank %d, %p) taken at "
	        "%s:%d; see doc/architecture.md, Locking\n",
	        what, name, rank, lock, file, line, h ? h->name : "-", h ? h->rank : 0, h ? h->lock : NULL,
	        h ? h->file : "-", h ? h->line : 0);
	fflush(stderr);
	abort();
}

void rk_lockrank_acquire(const void *lock, int rank, const char *name, const char *file, int line)
{
	for (int i = 0; i < nheld; i++) {
		const struct held *h = &held[i];
		if (h->lock == lock)
			die("taking again", lock, rank, name, file, line, h);
		if (h->rank > rank || (h->rank == rank && !(rank_ordered(rank) && (const char *)h->lock < (const char *)lock)))
			die("taking", lock, rank, name, file, line, h);
	}
}

void rk_lockrank_acquired(const void *lock, int rank, const char *name, const char *file, int line)
{
	if (nheld == HELD_MAX) {
		fprintf(stderr, "rekeyfs: lock checker: more than %d locks held at %s:%d (%s)\n", HELD_MAX, file, line, name);
		abort();
	}
	held[nheld++] = (struct held){lock, rank, name, file, line};
}

void rk_lockrank_release(const void *lock, const char *name, const char *file, int line)
{
	for (int i = nheld - 1; i >= 0; i--) {
		if (held[i].lock == lock) {
			/* keep the rest in acquisition order for messages */
			for (int k = i; k + 1 < nheld; k++)
				held[k] = held[k + 1];
			nheld--;
			return;
		}
	}
	fprintf(stderr, "rekeyfs: lock checker: releasing %s (%p) at %s:%d, which this thread does not hold\n", name,
	        lock, file, line);
	fflush(stderr);
	abort();
}

int rk_lockrank_held(void) { return nheld; }

bool rk_lockrank_holds(const void *lock)
{
	for (int i = 0; i < nheld; i++)
		if (held[i].lock == lock)
			return true;
	return false;
}

void rk_assert_fail(const char *what, const char *file, int line)
{
	fprintf(stderr, "rekeyfs: invariant broken at %s:%d: %s\n", file, line, what);
	fflush(stderr);
	abort();
}
