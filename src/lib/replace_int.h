/* rekeyfs library internals: the prepared whole-file replacement shared by
 * the whole-file rekey (sweep.c) and the conversion of a plain file
 * (convert.c); commit and end are sweep.c's rk_replace_commit/_end. */
#ifndef REKEYFS_REPLACE_INT_H
#define REKEYFS_REPLACE_INT_H

#include <stdbool.h>
#include <sys/stat.h>

struct rk_replace {
	int dirfd;          /* the directory of the original and the temporary */
	char *name, *rel;   /* the original's name in dirfd; its path for messages */
	char tmpname[64];   /* the temporary ("" once renamed or removed) */
	int src, tmp;       /* the original (read-only) and the temporary */
	struct stat st;     /* the original when prepared: commit refuses if it changed */
	bool committed;
};

/* A new replacement of dirfd/name: the original opened read-only (never
 * following a link; O_NOATIME where allowed) and its stat taken.  *out is
 * set whenever it could be allocated (free it with rk_replace_end). */
int rk_replace_new(int dirfd, const char *name, const char *rel, struct rk_replace **out);

#endif
