/* rekeyfs - lock ranks: the written lock order (doc/architecture.md,
 * "Locking") checked at run time in debug and test builds.
 *
 * Every lock has a rank.  A thread may take a lock only if every lock it
 * already holds has a LOWER rank (acquire in ascending rank).  Two locks of the
 * same rank may be held together only for classes declared ordered
 * (RK_RANK_STRIPE: a file's chunk stripes, taken in ascending index order,
 * i.e. ascending address).  A trylock never waits, so it is not checked
 * against the held locks, but the lock it takes counts as held.
 *
 * With ./configure --enable-lock-checks (scripts/test builds) the wrappers
 * below check the order before they block and abort with a message naming
 * both locks; otherwise they are the plain pthread calls. */
#ifndef REKEYFS_LOCKRANK_H
#define REKEYFS_LOCKRANK_H

#include <pthread.h>
#include <stdbool.h>

/* Ranks, lowest first (acquire in this order).  Gaps leave room. */
enum rk_rank {
	RK_RANK_CKPT_FILE = 8,  /* daemon walker ckpt_lock: checkpoint file writes (I/O, no other lock held) */
	RK_RANK_FSCK = 10,      /* daemon fsck_lock: one control fsck at a time (held for its whole run) */
	RK_RANK_METRICS = 11,   /* daemon metrics cache lock: the cached coverage (held across a rescan) */
	RK_RANK_NS = 20,        /* daemon fs->ns_lock: names vs. whole-file replacement */
	RK_RANK_FILE_RW = 30,   /* daemon rkd_file.rw_lock: I/O (shared) vs. truncate/sync/extension */
	RK_RANK_STRIPE = 40,    /* daemon rkd_file.stripes[]: chunk locks, ascending index (ordered) */
	RK_RANK_FILE_POL = 45,  /* daemon rkd_file.pol_lock: the file's cached table policy */
	RK_RANK_LAZYQ = 50,     /* daemon walker qlock: the lazy rewrite queue */
	RK_RANK_INODE = 55,     /* daemon rkd_inode.lock: of (open file state), header cache */
	RK_RANK_ITAB = 60,      /* daemon fs->itab_lock: the inode table, nlookup, reclaim state */
	RK_RANK_POLICY = 65,    /* daemon fs->policy_lock: dd->tables, dd->keys (registry) */
	RK_RANK_DIRTY = 70,     /* daemon fs->dirty_lock: files to clean at unmount */
	RK_RANK_SIZE = 72,      /* daemon size-cache lock (szlock) */
	RK_RANK_VHANDLE = 75,   /* daemon rkd_handle.vlock: a virtual file's snapshot/reply */
	RK_RANK_WALKER = 78,    /* daemon walker lock: walker state, counters, error ring */
	RK_RANK_ENCRYPT = 79,   /* daemon encrypt job lock: queue, progress, error ring (encrypt.c) */
	RK_RANK_CF = 80,        /* library rk_cf.lock: in-memory header, key slots */
	RK_RANK_CF_TIMES = 82,  /* library rk_cf.times_lock: user-visible times vs. format-only writes */
	RK_RANK_JOURNAL = 85,   /* library rk_journal.lock */
	RK_RANK_COVERAGE = 88,  /* library coverage scan work queue */
	RK_RANK_COVSUM = 89,    /* daemon metrics summary lock: the coverage summary shown in status (leaf in practice) */
	RK_RANK_KEYRING = 90,   /* library rk_keyring.lock */
	RK_RANK_P11KEY = 92,    /* library p11.c token key lock: its session, around one token call (leaf but P11MOD) */
	RK_RANK_P11MOD = 93,    /* library p11.c module list lock: load and C_Initialize once per process (leaf) */
	RK_RANK_DET = 94,       /* library crypto det_lock */
	RK_RANK_DIRS = 95,      /* daemon fs->dirs_lock: the list of open directory handles (leaf) */
	RK_RANK_UCOUNT = 96,    /* daemon fs->budget.lock: open handles per user (leaf) */
	RK_RANK_IOERR = 97,     /* daemon ioerr ie_lock: recent read errors, log rate limit (leaf) */
	RK_RANK_SLAB = 98,      /* library secure slab lock (leaf) */
	RK_RANK_COMPPOOL = 99,  /* library compression helper pool lock (leaf; comppool.c) */
};

/* The checker (always compiled: the unit test drives it directly). */
void rk_lockrank_acquire(const void *lock, int rank, const char *name, const char *file, int line);
void rk_lockrank_acquired(const void *lock, int rank, const char *name, const char *file, int line);
void rk_lockrank_release(const void *lock, const char *name, const char *file, int line);
/* Number of locks the calling thread holds (tests). */
int rk_lockrank_held(void);
/* Does the calling thread hold lock (as recorded by the wrappers)? */
bool rk_lockrank_holds(const void *lock);
/* Report a broken invariant and abort. */
void rk_assert_fail(const char *what, const char *file, int line) __attribute__((noreturn));

#ifdef RK_LOCK_CHECKS
#define RK_LR_ACQ_(m, r) rk_lockrank_acquire((m), (r), #m, __FILE__, __LINE__)
#define RK_LR_GOT_(m, r) rk_lockrank_acquired((m), (r), #m, __FILE__, __LINE__)
#define RK_LR_REL_(m) rk_lockrank_release((m), #m, __FILE__, __LINE__)
#else
#define RK_LR_ACQ_(m, r) ((void)(r))
#define RK_LR_GOT_(m, r) ((void)(r))
#define RK_LR_REL_(m) ((void)0)
#endif

/* Runtime invariants, checked in --enable-lock-checks builds (all test
 * builds): RK_ASSERT(cond) aborts naming the condition when it is false;
 * RK_ASSERT_HELD(&lock) for "caller holds lock".  Compiled out otherwise
 * (the condition is not evaluated). */
#ifdef RK_LOCK_CHECKS
#define RK_ASSERT(cond) ((cond) ? (void)0 : rk_assert_fail(#cond, __FILE__, __LINE__))
#define RK_ASSERT_HELD(m) RK_ASSERT(rk_lockrank_holds(m))
#else
#define RK_ASSERT(cond) ((void)0)
#define RK_ASSERT_HELD(m) ((void)0)
#endif

#define rk_mutex_lock(m, r) (RK_LR_ACQ_(m, r), (void)pthread_mutex_lock(m), RK_LR_GOT_(m, r))
#define rk_mutex_unlock(m) (RK_LR_REL_(m), (void)pthread_mutex_unlock(m))
/* 0 when taken (then held), else the pthread error */
#define rk_mutex_trylock(m, r) rk_lockrank_try_(pthread_mutex_trylock(m), (m), (r), #m, __FILE__, __LINE__)
#define rk_rw_rdlock(l, r) (RK_LR_ACQ_(l, r), (void)pthread_rwlock_rdlock(l), RK_LR_GOT_(l, r))
#define rk_rw_wrlock(l, r) (RK_LR_ACQ_(l, r), (void)pthread_rwlock_wrlock(l), RK_LR_GOT_(l, r))
#define rk_rw_unlock(l) (RK_LR_REL_(l), (void)pthread_rwlock_unlock(l))

static inline int rk_lockrank_try_(int err, const void *lock, int rank, const char *name, const char *file, int line)
{
#ifdef RK_LOCK_CHECKS
	if (err == 0)
		rk_lockrank_acquired(lock, rank, name, file, line);
#else
	(void)lock, (void)rank, (void)name, (void)file, (void)line;
#endif
	return err;
}

#endif
