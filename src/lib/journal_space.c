/* rekeyfs - the journal file's space: it keeps its length while open (grown
 * by writing zeros, so that records overwrite written blocks and a commit is
 * a data-only fdatasync), and each generation gets a new journal id (see
 * doc/architecture.md, "A reused journal file"). */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/journal.h"
#include "journal_int.h"

/* Make the journal file at least need bytes long, by writing zeros (not
 * fallocate: unwritten extents would make the first commit over them a
 * metadata commit again), in steps that double up to JGROW_MAX.  The next
 * commit's fdatasync makes the new length durable; records written later
 * over these blocks commit with a data-only fdatasync.  Caller holds
 * j->lock.  0 or -errno (the file is cut back to its old length). */
int jnl_grow(struct rk_journal *j, uint64_t need)
{
	uint64_t step = RK_MIN(RK_MAX(j->fsize, (uint64_t)JGROW_MIN), (uint64_t)JGROW_MAX);
	uint64_t want = (RK_MAX(need, j->fsize + step) + 4095) & ~(uint64_t)4095;
	int ret = rk_pwrite_zeros(j->fd, j->fsize, want);
	if (ret == -ENOSPC && want > need) {
		/* nearly full: only what the record needs */
		want = (need + 4095) & ~(uint64_t)4095;
		if (ftruncate(j->fd, (off_t)j->fsize) == 0)
			ret = rk_pwrite_zeros(j->fd, j->fsize, want);
	}
	if (ret < 0) {
		if (ftruncate(j->fd, (off_t)j->fsize) < 0)
			rk_warn("journal: cannot cut back a failed extension: %s", strerror(errno));
		return ret;
	}
	j->fsize = want;
	return 0;
}

/* A fresh journal id and its MAC key and header, for the next generation
 * (records of an older generation never authenticate under it, so a reused
 * journal file's stale bytes end the log at replay). */
int jnl_new_generation_id(struct rk_journal *j, const struct rk_key *k, struct jmac *m, uint8_t *hdr)
{
	uint8_t id[JID_BYTES];
	int ret = rk_random(id, sizeof(id));
	if (ret == 0)
		ret = jmac_init(m, k, id);
	if (ret == 0 && (ret = jhdr_encode(m, id, k->name, k->fp, hdr)) < 0)
		jmac_free(m);
	(void)j;
	return ret;
}

