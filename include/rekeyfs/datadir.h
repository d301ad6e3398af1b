/* rekeyfs - the data directory's state under .rekeyfs/: table policy, key
 * registry, the daemon lock.  Files are small text files replaced atomically.
 *
 *   .rekeyfs/format    "rekeyfs-datadir 1"
 *   .rekeyfs/policy    one line per table: table PATH key=NAME chunk_kb=N compression=C
 *   .rekeyfs/keys      one line per key:  key NAME cipher=C bits=N fp=HEX state=S
 *   .rekeyfs/lock      flock()ed: exclusively by the daemon, shared by readers
 *   .rekeyfs/journal   redo journal (see journal.h)
 */
#ifndef REKEYFS_DATADIR_H
#define REKEYFS_DATADIR_H

#include <sys/stat.h>
#include <stdbool.h>
#include <stdint.h>

#include "compress.h"
#include "crypto.h"
#include "keys.h"

#define RK_STATE_DIR ".rekeyfs"
/* Inode numbers of the daemon's virtual MOUNT/.rekeyfs/, status and control:
 * rekeyctl talks only to a control file with these on a rekeyfs mount. */
#define RK_VIRT_INO_STATEDIR 0xFFFFFFFFFFFF0000ULL
#define RK_VIRT_INO_CONTROL (RK_VIRT_INO_STATEDIR + 2)
/* Is st (of a data directory's .rekeyfs) a state directory rekeyfs trusts: a
 * real directory owned by root or by us, writable by nobody else?  0, or a
 * negative errno with *why set to the reason. */
int rk_statedir_check(const struct stat *st, const char **why);
#define RK_DATADIR_VERSION 1
#define RK_TABLE_PATH_MAX 1024

struct rk_table {
	char path[RK_TABLE_PATH_MAX]; /* "/" for the root table, else "/ks/table" */
	char key[RK_KEY_NAME_MAX + 1];
	uint32_t chunk_size;
	enum rk_comp comp;
};

enum rk_keystate { RK_KS_ACTIVE = 0, RK_KS_DECRYPT_ONLY = 1, RK_KS_RELEASED = 2 };

struct rk_regent {
	char name[RK_KEY_NAME_MAX + 1];
	enum rk_cipher cipher;
	unsigned bits;
	uint8_t fp[RK_FP_BYTES];
	enum rk_keystate state;
	/* marked compromised (rekeyctl mark-compromised): a rewrap does not
	 * protect data keys it ever wrapped; only a reseal does (rekeyfs(5)) */
	bool compromised;
};

struct rk_datadir {
	char *path;      /* as given */
	int dirfd;       /* the data directory */
	int statefd;     /* .rekeyfs */
	int lockfd;      /* .rekeyfs/lock, flock()ed */
	bool lock_exclusive; /* we hold the lock exclusively (and wrote our pid into it) */
	struct rk_table *tables;
	size_t ntables;
	struct rk_regent *keys;
	size_t nkeys;
};

enum rk_dd_lock {
	RK_DD_SHARED = 1,    /* readers: refused while a daemon or writer holds it */
	RK_DD_EXCLUSIVE = 2, /* daemon and offline writers */
	RK_DD_NOLOCK = 3,    /* status readers that tolerate a running daemon */
};

const char *rk_keystate_name(enum rk_keystate s);

/* Create .rekeyfs in path with a root table under key.  -EEXIST if already. */
int rk_datadir_init(const char *path, const struct rk_key *key, uint32_t chunk_size, enum rk_comp comp);
/* Open a data directory: state files parsed, lock taken.  -ENOTDIR not a
 * rekeyfs data directory (message says how to init); -EBUSY held by a daemon
 * (message names its pid). */
int rk_datadir_open(const char *path, enum rk_dd_lock lock, struct rk_datadir **out);
/* Open with an already-open directory fd (the daemon, mounting over itself). */
int rk_datadir_openat(int dirfd, const char *path, enum rk_dd_lock lock, struct rk_datadir **out);
void rk_datadir_close(struct rk_datadir *dd);
/* The lock file's content: "PID\n" (every version), then "mount PATH\n"
 * once a daemon has mounted the directory.  rk_datadir_lock_record
 * rewrites it with the calling process's pid (the daemon after it forked)
 * and its mount point; dd must hold the lock exclusively. */
int rk_datadir_lock_record(struct rk_datadir *dd, const char *mountpoint);
/* Who holds the lock of data directory dir (not taking it): 1 with *pid
 * (0: unknown) and mnt (the recorded mount point, "" when none) when a
 * process holds it exclusively, 0 when nobody does, or a negative errno. */
int rk_datadir_lock_holder(const char *dir, long *pid, char *mnt, size_t mntlen);
/* Find the data directory that contains path: walk up to the nearest
 * directory holding .rekeyfs.  *root and *rel (table path, "/..." form) are
 * allocated. */
int rk_datadir_find(const char *path, char **root, char **rel);
/* Walk up from path (whose last component need not exist yet) to the
 * nearest directory D holding D/marker of the given type (S_IFDIR or
 * S_IFREG).  *root = D, *rel = the rest of path ("/" for D itself), both
 * allocated.  notfound is returned when there is none. */
int rk_path_find_up(const char *path, const char *marker, mode_t type, int notfound, char **root, char **rel);

int rk_policy_save(struct rk_datadir *dd);
int rk_registry_save(struct rk_datadir *dd);
/* The table whose path is the longest prefix of rel ("/a/b/file"). */
const struct rk_table *rk_policy_lookup(const struct rk_datadir *dd, const char *rel);
/* Normalise a table path ("ks/t1/" -> "/ks/t1").  -EINVAL for "..", ".rekeyfs". */
int rk_table_path_norm(const char *in, char *out, size_t outlen);
/* Set (or add) a table.  chunk_size 0 / comp -1 mean "inherit from parent table". */
int rk_policy_set(struct rk_datadir *dd, const char *table, const char *key, uint32_t chunk_size, int comp);

struct rk_regent *rk_registry_find(struct rk_datadir *dd, const char *name);
/* Add a key (state active) or check that its fingerprint matches the record.
 * -EKEYREJECTED with an explanation if a key of that name had another
 * fingerprint. */
int rk_registry_add(struct rk_datadir *dd, const struct rk_key *key);
/* Check every key the registry knows (not released) against the key
 * directory: a changed fingerprint is -EKEYREJECTED (mount must stop). */
int rk_registry_verify(struct rk_datadir *dd, struct rk_keyring *kr);
/* Keys the registry marks released are never loaded again, even if their
 * key file is still in the key directory: a chunk found under one is
 * reported as sealed under a released key. */
void rk_registry_apply_released(struct rk_datadir *dd, struct rk_keyring *kr);
/* Mark (or, with on false, unmark) key NAME compromised and save the
 * registry (atomic replace, like every registry write).  -ENOENT when the
 * registry does not know the key; 1 when it already was in that state. */
int rk_registry_mark_compromised(struct rk_datadir *dd, const char *name, bool on);
/* Is a header fingerprint a compromised key of the registry? */
bool rk_registry_fp_compromised(const struct rk_datadir *dd, const uint8_t *fp);

#endif
