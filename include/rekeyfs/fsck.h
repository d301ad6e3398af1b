/* rekeyfs - the fsck coverage report: scan options, the exit status and the
 * rendering (text and JSON, schema "rekeyfs-fsck/1").  The CLI (offline)
 * and the daemon (online, control command "fsck") both call these, so their
 * output is the same.  rekeyctl(8), section FSCK, documents the report. */
#ifndef REKEYFS_FSCK_H
#define REKEYFS_FSCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "coverage.h"
#include "datadir.h"

#define RK_FSCK_SCHEMA "rekeyfs-fsck/1"

/* Exit status, bit flags in the style of fsck(8): 1 and 4 may be combined
 * (5); 8 and 16 come alone (no report). */
#define RK_FSCK_EXIT_OK 0          /* every chunk on its table's target key, nothing corrupt */
#define RK_FSCK_EXIT_OLD_KEYS 1    /* chunks remain under old keys; --key: NAME may not be released */
#define RK_FSCK_EXIT_CORRUPT 4     /* corrupt or unreadable data (headers, chunks, keys the data needs) */
#define RK_FSCK_EXIT_OPERATIONAL 8 /* the check could not run (data directory, daemon, I/O, memory) */
#define RK_FSCK_EXIT_USAGE 16      /* bad options or operands */

/* File names listed per list without --verbose. */
#define RK_FSCK_NAMES 5

struct rk_fsck_opts {
	bool deep, json, verbose;
	const char *key;   /* --key NAME: may NAME be released? */
	const char *table; /* --table T, normalised (NULL: every table) */
};

/* Parse the words of "fsck [--deep] [--json] [--verbose] [--key NAME]
 * [--table T]" (args is modified; fo points into it).  -EINVAL with a
 * message in err for bad usage. */
int rk_fsck_parse_words(char *args, struct rk_fsck_opts *fo, char *err, size_t errlen);
/* Check fo against a data directory: --table names a table (normalised
 * into tbuf, fo->table set to it), --key is a valid name and is not
 * combined with --table.  -EINVAL with a message in err. */
int rk_fsck_check_opts(const struct rk_datadir *dd, struct rk_fsck_opts *fo, char *tbuf, size_t tlen, char *err,
                       size_t errlen);
/* Coverage scan options for an fsck (kr: the key directory or the daemon's
 * keyring; access/progress stay for the caller to add). */
void rk_fsck_scan_opts(const struct rk_fsck_opts *fo, struct rk_keyring *kr, struct rk_cov_opts *co);

/* The answer to --key: true when the key may be released. */
bool rk_fsck_may_release(const struct rk_cov *c);
/* One line per key the registry marks compromised: the chunks of table t
 * (or the total) sealed under data keys it ever wrapped, and that only a
 * reseal clears them; each line starts with ind. */
void rk_fsck_exposure_text(FILE *f, const struct rk_cov *c, const struct rk_cov_table *t, const char *ind);
/* Exit status of a finished scan (RK_FSCK_EXIT_* bits). */
int rk_fsck_exit_code(const struct rk_cov *c);
/* Render the report (text, or JSON with fo->json); *out is allocated. */
int rk_fsck_render(const struct rk_cov *c, const struct rk_fsck_opts *fo, char **out, size_t *len);

#endif
