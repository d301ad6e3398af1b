/* rekeyfs daemon internals: the shared types and what the walker, the
 * control commands and main() use.  Module map (doc/architecture.md):
 *   fs.c        the filesystem object: rkd_fs_init/start/stop/destroy, the ops table
 *   inode.c     the inode table, the descriptor budget (inode.h)
 *   file.c      the shared open-file state: files, handles, stripes, dirty list (file.h)
 *   attr.c      attributes and the closed-file size cache (file.h)
 *   data.c, names.c, dir.c, xattr.c   the FUSE operation families (ops.h)
 *   readahead.c the kernel read-ahead tuner
 *   reply.c     control-file replies and JSON helpers (reply.h)
 *   ctl.c       the virtual .rekeyfs/ directory: status and the control dispatcher
 *   walker.c    sweeps, lazy rekey, key release;  fsck_ctl.c  the fsck command
 *   encrypt.c   online encryption of plain files (the encrypt command) */
#ifndef REKEYFS_DAEMON_H
#define REKEYFS_DAEMON_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include <uthash.h>

#include "rekeyfs/datadir.h"
#include "rekeyfs/format.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/keys.h"
#include "rekeyfs/lockrank.h"

#include "reply.h"

#define RKD_CHUNK_STRIPES 64

enum rkd_virt { RKD_REAL = 0, RKD_VDIR = 1, RKD_VSTATUS = 2, RKD_VCONTROL = 3, RKD_VMETRICS = 4 };

struct rkd_file; /* open state shared by all handles of an inode */

struct rkd_inode {
	int fd;              /* O_PATH fd of the backing object */
	dev_t dev;
	ino_t ino;
	mode_t type;         /* S_IFMT bits */
	enum rkd_virt virt;
	uint64_t nlookup;    /* protected by fs->itab_lock */
	/* rank RK_RANK_INODE (55): guards of (and its refs, closing), hdr_*
	 * (header cache); taken before fs->itab_lock and never waited for under
	 * it (the reclaimer only trylocks it).  name, pdev, pino: itab_lock */
	pthread_mutex_t lock;
	pthread_cond_t closed; /* of finished closing */
	struct rkd_file *of;
	atomic_uint open_gen; /* bumped whenever of is created (whole-file rekey check) */
	/* where the kernel last looked it up (for invalidation when fds run short) */
	dev_t pdev;
	ino_t pino;
	char *name;
	char *wrel;          /* path the walker found it at (kernel never looked it up) */
	atomic_bool planted_logged; /* a .rekeyfs in this directory was reported */
	/* cache of a closed chunk file's plaintext size, valid while the backing
	 * file's size and mtime are unchanged (hdr_*) */
	int hdr_kind;        /* -1 unknown, 0 plain, 1 chunk */
	uint64_t hdr_size;
	struct timespec hdr_mtime;
	off_t hdr_stsize;
	UT_hash_handle hh;
};

struct rkd_fs;

struct rkd_file {
	struct rkd_fs *fs;
	struct rkd_inode *in; /* the inode (held by the kernel's lookup while open) */
	int fd;               /* read-write (or read-only) fd on the backing file */
	bool fd_shared;       /* fd is the inode's fd number (one descriptor per open file) */
	bool rw;
	int refs;             /* open handles */
	bool closing;         /* last handle gone; being flushed and detached */
	bool pins_inode;      /* kept open for the journal: holds one lookup of its inode */
	bool chunk;           /* chunk file (else plain pass-through) */
	struct rk_cf *cf;
	struct rk_journal_file *jf; /* the journal's handle while attached (rw chunk files) */
	/* rank RK_RANK_FILE_RW (30): shared for read/write; exclusive for
	 * truncate, sync, extension, key-reference scans */
	pthread_rwlock_t rw_lock;
	/* rank RK_RANK_STRIPE (40), after rw_lock: chunk idx is guarded by
	 * stripes[idx % RKD_CHUNK_STRIPES]; several taken in ascending index */
	pthread_rwlock_t stripes[RKD_CHUNK_STRIPES];
	/* rank RK_RANK_FILE_POL (45): guards policy_gen, key, comp (the table
	 * policy as of policy_gen); fs->policy_lock is taken under it */
	pthread_mutex_t pol_lock;
	unsigned policy_gen;
	char key[RK_KEY_NAME_MAX + 1];
	enum rk_comp comp;
	/* lazy rekey: header entry of the target key, as of target_gen (both
	 * atomics, read and written by any reader thread; a stale pair only
	 * costs a recomputation) */
	atomic_uint target_gen;
	atomic_int target_idx;
};

struct rkd_handle {
	struct rkd_inode *in;
	struct rkd_file *f;
	int flags;
	uid_t uid;            /* opener, charged for the handle (RKD_UNCHARGED: not) */
	/* virtual files: a snapshot for reads, a reply after a control write */
	char *vbuf;
	size_t vlen;
	uint64_t vbase; /* control: file offset where the last command ended */
	pthread_mutex_t vlock; /* rank RK_RANK_VHANDLE (75): vbuf, vlen, vbase */
};

struct rkd_opts {
	char *keydir;
	char *key;
	double entry_timeout;
	double attr_timeout;
	int writeback;
	int max_threads;
	int walker;            /* background walker on (default) or off */
	unsigned long long walker_rate; /* bytes/s of rewritten chunks, 0 = unlimited */
	int walker_rate_set;   /* -o walker_rate= was given (wins over a checkpointed rate) */
	int rekey_on_mount;    /* start a full sweep at mount */
	int lazy;              /* rewrite on read (default on) */
	int whole_file;        /* rekey closed files by whole-file replacement (default on) */
	unsigned read_ahead_kb; /* kernel read-ahead of the mount (0: leave the kernel's) */
	unsigned max_open_per_user; /* open handles of one non-root user (0: fd limit / 4) */
	int nonempty;          /* mount over a non-empty directory (startup.c) */
};
#define RKD_UNCHARGED ((uid_t)-1)

struct rkd_stats {
	atomic_uint_fast64_t reads, writes, bytes_read, bytes_written;
	atomic_uint_fast64_t read_errors, write_errors;
	atomic_int inflight;            /* foreground data requests being served */
	atomic_uint_fast64_t last_fg_ns; /* CLOCK_MONOTONIC of the last foreground request */
};

struct rkd_walker;
struct rkd_dir;

#define RKD_DIRTY_MAX 16384u /* files remembered for cleaning at unmount (2.5 MiB) */
struct rkd_dirty {
	uint8_t file_id[16];
	int handle_type;
	unsigned handle_len;
	unsigned char handle[128];
};

struct rkd_szent; /* attr.c: an entry of the closed-file size cache */


/* Open handles per non-root user (inode.c): a user may hold per_user handles
 * (a directory counts 2), all non-root users together nonroot_max; root is
 * not counted.  lock: rank RK_RANK_UCOUNT (96, a leaf: nothing is taken
 * under it); it guards every field here. */
struct rkd_ucount;
struct rkd_budget {
	pthread_mutex_t lock;
	struct rkd_ucount *users; /* by uid */
	size_t nonroot;           /* handles of all non-root users */
	size_t nonroot_max, per_user;
};

struct rkd_fs {
	struct rkd_budget budget; /* open handles per user (see struct rkd_budget) */
	struct rkd_opts o;
	char *datadir;        /* as given */
	char *datadir_real;   /* realpath, used to turn /proc/self/fd links into table paths */
	size_t datadir_len;
	int rootfd;
	struct rk_datadir *dd;
	struct rk_keyring *kr;
	struct rk_journal *j;
	/* rank RK_RANK_POLICY (65): dd->tables and dd->keys (policy, registry) */
	pthread_rwlock_t policy_lock;
	atomic_uint policy_gen;
	/* shared by lookups and operations that change names or a closed file's
	 * identity (unlink, rename, link, setattr, xattrs); exclusive while a
	 * whole-file rekey renames the new file into place.  Rank RK_RANK_NS
	 * (20): taken before any file or inode lock */
	pthread_rwlock_t ns_lock;
	/* rank RK_RANK_ITAB (60): inodes, ninodes, every nlookup, an inode's
	 * hash key (dev, ino), reclaim_stop; taken after an inode's lock, never
	 * before one (walks pin inodes and drop it first: rkd_for_each_open) */
	pthread_mutex_t itab_lock;
	struct rkd_inode *inodes;     /* by (dev, ino) */
	size_t ninodes;               /* each holds one O_PATH fd */
	size_t inode_high, inode_low; /* reclaim above high, down to low (fd limit) */
	pthread_t reclaim_thr;
	pthread_cond_t reclaim_cond;
	bool reclaim_stop, reclaim_started;
	struct rkd_inode root;
	struct rkd_inode vdir, vstatus, vcontrol, vmetrics;
	struct rkd_stats st;
	struct rkd_walker *w;
	struct rkd_encjob *enc; /* online encrypt job (encrypt.c), NULL when not running */
	/* open directory handles (dir.c): a RELEASEDIR that races the unmount's
	 * DESTROY never arrives, so rkd_dirs_free closes what is left.
	 * dirs_lock: rank RK_RANK_DIRS (95, a leaf), guards the list links */
	pthread_mutex_t dirs_lock;
	struct rkd_dir *dirs;
	/* the lazy-rekey read hook, registered by the walker (rkd_walker_init)
	 * before any file opens, read-only after: installed on every writable
	 * chunk file when o.lazy is on */
	rk_cf_read_hook lazy_hook;
	/* plaintext sizes of closed files (attr.c) */
	pthread_mutex_t szlock; /* rank RK_RANK_SIZE (72): sztab, szcount */
	struct rkd_szent *sztab;
	unsigned szcount;
	/* files closed with COUNTS_DIRTY headers, cleaned (recount + sync) at
	 * unmount so that a clean unmount leaves exact header counts */
	pthread_mutex_t dirty_lock; /* rank RK_RANK_DIRTY (70): dirty, ndirty, capdirty */
	struct rkd_dirty *dirty;
	size_t ndirty, capdirty;
	time_t started;
	struct fuse_session *se;
	char *mountpoint;
	atomic_bool initialized; /* the kernel's INIT has been answered */
	pthread_t ra_thr;
	bool ra_started;
	atomic_bool ra_stop;
};

/* fs.c: the filesystem object.  init: open the data directory (fs->datadir,
 * fs->o parsed), its keys, policy and journal replay, the root and virtual
 * inodes; start (after the mount and the fork): journal, walker, fd budget,
 * read-ahead; stop: their threads; destroy: everything, fs included (0, or
 * -EIO when the journal could not be emptied: it is replayed at next mount). */
int rkd_fs_init(struct rkd_fs *fs);
void rkd_fs_ops(struct fuse_lowlevel_ops *ops);
int rkd_fs_start(struct rkd_fs *fs);
void rkd_fs_stop(struct rkd_fs *fs);
int rkd_fs_destroy(struct rkd_fs *fs);

/* ctl.c: the virtual .rekeyfs directory */
int rkd_status_json(struct rkd_fs *fs, char **out, size_t *len);
int rkd_control(struct rkd_fs *fs, const char *cmd, char **reply, size_t *rlen);
/* Background work (sweep, encrypt) after each chunk: a short pause (at most
 * 2 ms) while foreground requests are being served (fs.c). */
void rkd_fg_yield(struct rkd_fs *fs);

/* inode.c and file.c: used by the operations, the walker and fsck_ctl.c */
int rkd_policy_for(struct rkd_fs *fs, struct rkd_file *f, struct rk_key **key, enum rk_comp *comp);
/* The inode of dirfd/name, shared with the kernel's view (nlookup+1). */
int rkd_inode_at(struct rkd_fs *fs, int dirfd, const char *name, struct rkd_inode **out);
/* The same, noting rel (the walk's path) for an inode without a parent chain. */
int rkd_inode_at_path(struct rkd_fs *fs, int dirfd, const char *name, const char *rel, struct rkd_inode **out);
void rkd_inode_put(struct rkd_fs *fs, struct rkd_inode *in);
/* Finish a whole-file rekey of in (prepared while no handle was open and
 * open_gen was gen): rename the new file into place unless the file was
 * opened meanwhile (-EBUSY) or changed (-EAGAIN), and point in at it. */
struct rk_replace;
int rkd_replace_commit(struct rkd_fs *fs, struct rkd_inode *in, unsigned gen, struct rk_replace *r);
int rkd_file_get(struct rkd_fs *fs, struct rkd_inode *in, struct rkd_file **out);
/* The same for an open that may write (wr): an empty plain stored file is
 * then made an empty chunk file first (its table's policy). */
int rkd_file_get_for(struct rkd_fs *fs, struct rkd_inode *in, bool wr, struct rkd_file **out);
void rkd_file_put(struct rkd_fs *fs, struct rkd_inode *in, struct rkd_file *f);
/* Take a reference on an open file from inside a request that holds one. */
void rkd_file_ref(struct rkd_inode *in, struct rkd_file *f);
void rkd_chunk_lock(struct rkd_file *f, uint64_t idx);
void rkd_chunk_unlock(struct rkd_file *f, uint64_t idx);
/* Call fn for every open chunk file.  fn runs with no daemon lock held, on a
 * reference to the file (it may take the file's locks). */
void rkd_for_each_open(struct rkd_fs *fs, void (*fn)(struct rkd_file *f, void *arg), void *arg);

/* readahead.c: set the kernel read-ahead of the mount (fs->o.read_ahead_kb)
 * once INIT is done: the kernel caps FUSE read-ahead at the bdi's default
 * (128 KiB). */
void rkd_readahead_start(struct rkd_fs *fs);
void rkd_readahead_stop(struct rkd_fs *fs);

/* walker.c: background sweeps, lazy rekey, key release */
int rkd_walker_init(struct rkd_fs *fs);
void rkd_walker_shutdown(struct rkd_fs *fs);
void rkd_lazy_hook(void *arg, struct rk_cf *cf, uint64_t idx, int key_idx);
int rkd_walker_control(struct rkd_fs *fs, const char *cmd, char *args, char **out, size_t *len);
void rkd_walker_json(struct rkd_fs *fs, struct rkd_jbuf *b);
/* alter changed table's target key: queue a sweep of it if one runs (*how: the text, "" if not) */
void rkd_walker_altered(struct rkd_fs *fs, const char *table, char *how, size_t howlen);

/* fsck_ctl.c: the "fsck" and "fsck-progress" control commands */
int rkd_fsck_control(struct rkd_fs *fs, const char *cmd, char *args, char **out, size_t *len);
/* fsck_ctl.c: a private copy of the data directory's policy and key registry
 * for a scan (alter and release go on meanwhile): 0 or -ENOMEM; free with
 * rkd_policy_snapshot_free (also after a failure). */
int rkd_policy_snapshot(struct rkd_fs *fs, struct rk_datadir *snap);
void rkd_policy_snapshot_free(struct rk_datadir *snap);
/* metrics_ctl.c: .rekeyfs/metrics (Prometheus text) from the cached
 * coverage; "metrics-refresh" rescans it; rkd_metrics_free at unmount */
int rkd_metrics_text(struct rkd_fs *fs, char **out, size_t *len);
int rkd_metrics_control(struct rkd_fs *fs, const char *cmd, char *args, char **out, size_t *len);
void rkd_metrics_free(void);
/* metrics_ctl.c: the "coverage" member of the status JSON: a summary of
 * the cached coverage (null before the first scan); never scans */
struct rkd_jbuf;
void rkd_metrics_status_json(struct rkd_jbuf *b);
struct rk_metrics_src;
/* walker_ctl.c: the walker's part of the metrics (takes the walker lock) */
void rkd_walker_metrics(struct rkd_fs *fs, struct rk_metrics_src *s);

/* startup.c: checks before the mount */
int rkd_check_not_served(const char *datadir);
int rkd_check_mountpoint(const char *datadir_real, const char *mountpoint, bool nonempty);
void rkd_report_plain(int rootfd, const char *datadir);

#endif
