/* rekeyfs - the offline rewrap of a data directory (rekeyctl rotate
 * --rewrap, offline): every chunk file of the selected tables whose header
 * wraps a data key under OLD gets it rewrapped under NEW, header only
 * (rk_cf_rewrap_entry: both copies, each made durable).  A version 1 file is
 * converted to version 2 first (rk_cf_upgrade_v2, no chunk rewritten).
 * Idempotent: an entry already under NEW is left alone, so running it again
 * after an interruption (kill -9 included) finishes the job. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/format.h"
#include "rekeyfs/rekey.h"

struct orewrap {
	struct rk_datadir *dd;
	struct rk_keyring *kr;
	char (*tables)[RK_TABLE_PATH_MAX];
	int ntables;
	struct rk_key *old, *new;
	struct rk_rewrap_summary *sum;
};

/* Entries of h naming k (name and fingerprint). */
static int entries_of(const struct rk_cf_header *h, const struct rk_key *k, bool *which)
{
	int n = 0;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		which[j] = h->keys[j].in_use && strcmp(h->keys[j].name, k->name) == 0 &&
		           memcmp(h->keys[j].fp, k->fp, RK_FP_BYTES) == 0;
		n += which[j];
	}
	return n;
}

static int rewrap_one(struct orewrap *o, const struct rk_walk_ent *e)
{
	struct rk_cf *cf = NULL;
	struct rk_cf_header h;
	bool which[RK_CF_MAX_KEYS];
	int ret = 0;
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
		if (entries_of(&h, o->old, which) > 0) {
			if (h.version < RK_FORMAT_V2) {
				ret = rk_cf_upgrade_v2(cf);
				if (ret == 0)
					o->sum->upgraded++;
			}
			for (int j = 0; ret == 0 && j < RK_CF_MAX_KEYS; j++)
				if (which[j]) {
					ret = rk_cf_rewrap_entry(cf, j, o->old, o->new);
					if (ret == 0)
						o->sum->entries++;
				}
			if (ret == 0)
				o->sum->files++;
		}
	}
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
		o->sum->failed++;
		rk_err("%s: rewrap stopped: %s; the files before it are done. Fix the cause and run again", e->rel,
		       rk_strerror(ret));
		return ret;
	}
	rk_crashpoint("offline-rewrap.file-done");
	return 0;
}

int rk_rewrap_offline(struct rk_datadir *dd, struct rk_keyring *kr, char (*tables)[RK_TABLE_PATH_MAX], int ntables,
                      struct rk_key *old, struct rk_key *new, struct rk_rewrap_summary *sum)
{
	struct orewrap o = {.dd = dd, .kr = kr, .tables = tables, .ntables = ntables, .old = old, .new = new, .sum = sum};
	memset(sum, 0, sizeof(*sum));
	if (old->cipher != new->cipher || old->keylen != new->keylen) {
		rk_err("rewrap: key '%s' (%s, %zu bits) and key '%s' (%s, %zu bits) differ in cipher or strength: a rewrap "
		       "keeps the data keys, so the new key must have the old one's cipher and strength (a reseal, the "
		       "default rotation, has no such limit)",
		       old->name, rk_cipher_name(old->cipher), old->keylen * 8, new->name, rk_cipher_name(new->cipher),
		       new->keylen * 8);
		return -EINVAL;
	}
	return rk_walk(dd->dirfd, "/", orewrap_visit, &o);
}
