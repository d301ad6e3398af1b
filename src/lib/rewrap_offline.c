/* rekeyfs - the offline rewrap of a data directory (rekeyctl rotate
 * --rewrap, offline): every chunk file of the selected tables whose header
 * wraps a data key under OLD gets it rewrapped under NEW, header only
 * (rk_cf_rewrap_stage, then both header copies of a batch of files, each
 * copy made durable by one syncfs for the whole batch).  A version 1 file is
 * converted to version 2 first (rk_cf_upgrade_v2, no chunk rewritten).
 * Idempotent: an entry already under NEW is left alone, so running it again
 * after an interruption (kill -9 included) finishes the job. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/format.h"
#include "rekeyfs/rekey.h"

/* Files rewrapped in memory and waiting for their header copies: a batch
 * is made durable with two syncfs calls instead of two fdatasyncs a file
 * (the ext4 journal commits once per batch, not twice per file). */
#define OREWRAP_BATCH 512

struct pending {
	int fd;
	struct rk_cf *cf;
	uint64_t entries;
	dev_t dev;
	ino_t ino;
};

struct orewrap {
	struct rk_datadir *dd;
	struct rk_keyring *kr;
	char (*tables)[RK_TABLE_PATH_MAX];
	int ntables;
	struct rk_key *old, *new;
	struct rk_rewrap_summary *sum;
	struct pending *batch; /* cap entries */
	int n, cap;
};

/* syncfs makes one file system durable: once for each file system the
 * batch's files are on (a table may be a mount point of its own) */
static int sync_data(struct orewrap *o)
{
	int ret = 0;
	for (int i = 0; i < o->n && ret == 0; i++) {
		bool seen = false;
		for (int k = 0; k < i && !seen; k++)
			seen = o->batch[k].dev == o->batch[i].dev;
		if (!seen && syncfs(o->batch[i].fd) < 0) {
			ret = -errno;
			rk_err("%s: cannot sync its file system: %s", rk_cf_path(o->batch[i].cf), strerror(errno));
		}
	}
	return ret;
}

/* Make the batch durable: copy 0 of every header, sync, copy 1, sync; then
 * close.  The first error is returned, after every file is closed. */
static int flush(struct orewrap *o)
{
	int ret = 0;
	for (int i = 0; i < o->n && ret == 0; i++)
		ret = rk_cf_hdr_write_copy(o->batch[i].cf, 0);
	if (ret == 0 && o->n > 0)
		ret = sync_data(o);
	if (ret == 0 && o->n > 0)
		rk_crashpoint("rewrap.first-copy");
	for (int i = 0; i < o->n && ret == 0; i++) {
		ret = rk_cf_hdr_write_copy(o->batch[i].cf, 1);
		if (ret == 0)
			rk_crashpoint("offline-rewrap.file-done");
	}
	if (ret == 0 && o->n > 0)
		ret = sync_data(o);
	for (int i = 0; i < o->n; i++) {
		if (ret == 0) {
			o->sum->files++;
			o->sum->entries += o->batch[i].entries;
		}
		rk_cf_close(o->batch[i].cf);
		close(o->batch[i].fd);
	}
	o->n = 0;
	return ret;
}

/* Open e, convert it to format 2 if it is format 1 (synced on its own: a
 * rare path) and stage the rewrap of its entries under old; a staged file
 * joins the batch, which is flushed when full. */
static int rewrap_one(struct orewrap *o, const struct rk_walk_ent *e)
{
	struct rk_cf *cf = NULL;
	struct rk_cf_header h;
	bool which[RK_CF_MAX_KEYS];
	uint64_t entries = 0;
	bool repair = false;
	int ret = 0;
	/* another name of a file already staged in this batch: its header on
	 * disk is not written yet, so it would be staged twice */
	for (int i = 0; e->st->st_nlink > 1 && i < o->n; i++)
		if (o->batch[i].dev == e->st->st_dev && o->batch[i].ino == e->st->st_ino)
			return 0;
	int fd = openat(e->dirfd, e->name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		rk_err("%s: cannot open: %s", e->rel, strerror(errno));
		return ret;
	}
	int probe = rk_cf_probe(fd);
	if (probe <= 0) {
		close(fd);
		return probe; /* a plain file: nothing wrapped */
	}
	ret = rk_cf_open(fd, e->rel, o->kr, true, &cf);
	if (ret == 0) {
		rk_cf_get_header(cf, &h);
		if (rk_hdr_entries_under(&h, o->old, which) > 0) {
			if (h.version < RK_FORMAT_V2) {
				ret = rk_cf_upgrade_v2(cf);
				if (ret == 0)
					o->sum->upgraded++;
			}
			for (int j = 0; ret == 0 && j < RK_CF_MAX_KEYS; j++)
				if (which[j]) {
					ret = rk_cf_rewrap_stage(cf, j, o->old, o->new);
					entries += ret == 0;
				}
		} else if ((ret = rk_cf_disk_copies_name(cf, o->old->name)) > 0) {
			/* the copy in use is done, the older one still names old (a
			 * run cut between a file's two copies): both written again */
			ret = rk_cf_stage_rewrite(cf);
			repair = ret == 0;
			o->sum->repaired += repair;
		}
	}
	if (ret == 0 && (entries > 0 || repair)) {
		o->batch[o->n++] =
			(struct pending){.fd = fd, .cf = cf, .entries = entries, .dev = e->st->st_dev, .ino = e->st->st_ino};
		return o->n == o->cap ? flush(o) : 0;
	}
	/* nothing staged, or a failure: the header on disk is untouched (a
	 * staged entry that is not written changes nothing on disk) */
	rk_cf_close(cf);
	close(fd);
	return ret;
}

static int orewrap_visit(const struct rk_walk_ent *e, void *arg)
{
	struct orewrap *o = arg;
	if (!S_ISREG(e->st->st_mode) || rk_is_tmp_name(e->name))
		return 0;
	const struct rk_table *t = rk_policy_lookup(o->dd, e->rel);
	if (!rk_rekey_filter_has(o->tables, o->ntables, t->path))
		return 0;
	int ret = rewrap_one(o, e);
	if (ret < 0) {
		(void)flush(o); /* the files staged before this one */
		o->sum->failed++;
		rk_err("%s: rewrap stopped: %s; the files before it are done. Fix the cause and run again", e->rel,
		       rk_strerror(ret));
		return ret;
	}
	return 0;
}

int rk_rewrap_offline(struct rk_datadir *dd, struct rk_keyring *kr, char (*tables)[RK_TABLE_PATH_MAX], int ntables,
                      struct rk_key *old, struct rk_key *new, struct rk_rewrap_summary *sum)
{
	struct orewrap o = {.dd = dd, .kr = kr, .tables = tables, .ntables = ntables, .old = old, .new = new, .sum = sum};
	memset(sum, 0, sizeof(*sum));
	char why[512];
	if (rk_rewrap_keys_fit(old, new, why, sizeof(why)) < 0) {
		rk_err("rewrap: %s", why);
		return -EINVAL;
	}
	/* crash tests set a smaller batch to stop with files on both sides */
	const char *env = getenv("REKEYFS_REWRAP_BATCH");
	long cap = env ? strtol(env, NULL, 10) : OREWRAP_BATCH;
	o.cap = cap >= 1 && cap <= OREWRAP_BATCH ? (int)cap : OREWRAP_BATCH;
	o.batch = calloc((size_t)o.cap, sizeof(*o.batch));
	if (!o.batch)
		return -ENOMEM;
	int ret = rk_walk(dd->dirfd, "/", orewrap_visit, &o);
	int fret = flush(&o);
	free(o.batch); /* what was staged before a failure is still done */
	if (ret == 0 && fret < 0) {
		sum->failed++;
		rk_err("rewrap stopped: the last batch of headers could not be made durable; run again");
	}
	return ret < 0 ? ret : fret;
}
