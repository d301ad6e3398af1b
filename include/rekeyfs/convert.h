/* rekeyfs - crash-safe conversion of a plain stored file into a chunk file:
 * the chunk file is built under a reserved temporary name in the same
 * directory, synced, given the original's owner, mode, xattrs and times, and
 * renamed over the original.  After a crash the file is wholly plain or
 * wholly converted; the temporary is removed by the next run. */
#ifndef REKEYFS_CONVERT_H
#define REKEYFS_CONVERT_H

#include <stdbool.h>
#include <sys/stat.h>

#include "datadir.h"
#include "format.h"
#include "keys.h"
#include "sweep.h"

/* Names starting with this prefix are reserved for temporaries. */
#define RK_TMP_PREFIX ".rekeyfs-tmp."

bool rk_is_tmp_name(const char *name);
/* Remove an interrupted conversion's temporary (only if it is a chunk file
 * or empty).  1 removed, 0 left alone. */
int rk_tmp_cleanup(int dirfd, const char *name);
/* Create a new temporary (mode 0600) in dirfd; name gets its name (len >= 40).
 * Returns its read-write fd or a negative errno. */
int rk_tmp_create(int dirfd, char *name, size_t len);
/* Give tmp the owner, mode, extended attributes and access/modification
 * times of the original (src, whose stat is st).  Every extended attribute
 * (ACLs included) is copied whatever their number and size; if one cannot be,
 * a negative errno (message names the file and the attribute): the caller
 * must not replace the original. */
int rk_copy_identity(int src, int tmp, const struct stat *st, const char *rel);
/* Same file (dev, ino) with the same size, mtime and ctime. */
bool rk_stat_unchanged(const struct stat *a, const struct stat *b);

/* Convert dirfd/name (rel: path from the data directory root, for messages
 * and policy).  Returns 0 converted, 1 already a chunk file (skipped),
 * 2 skipped for a reason that was logged (hard links, not a regular file),
 * or a negative errno. */
int rk_convert_file(struct rk_datadir *dd, struct rk_keyring *kr, int dirfd, const char *name, const char *rel);

/* The first half of a conversion, for a caller that commits it itself (the
 * daemon, which swaps its inode over to the new file): build the chunk-file
 * copy of the plain file dirfd/name under key (chunk_size, comp) as a synced
 * temporary with the original's identity.  cb->throttle (may be NULL) gets
 * the chunk index and its plaintext bytes after each chunk; a negative return stops.  Returns 0
 * prepared (commit with rk_replace_commit, which refuses if the original
 * changed since), 1 already a chunk file, 2 skipped (not a regular file,
 * hard links: logged) or a negative errno.  Whatever the result, call
 * rk_replace_end(*out). */
int rk_convert_prepare(int dirfd, const char *name, const char *rel, struct rk_keyring *kr, struct rk_key *key,
                       uint32_t chunk_size, enum rk_comp comp, const struct rk_replace_cb *cb, struct rk_replace **out);
#endif
