/* rekeyfs - the journal's fsync of one attached file: one group commit covers
 * the file's new slots and size (see rk_journal_sync_file in
 * include/rekeyfs/journal.h, doc/architecture.md "One flush per fsync"). */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "rekeyfs/common.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/lockrank.h"
#include "rekeyfs/scratch.h"
#include "journal_int.h"

/* ---- fsync of one attached file -------------------------------------------------------- */
/* The slow durable point: the data file and its header made durable with
 * one fdatasync; when the journal holds a size record of the file, its
 * current size is journaled as well, so that replay cannot give the
 * durable header an older size back.  Order: after a truncation cut the
 * file, the cut must reach the disk before any size record that reaches
 * past it (replay would otherwise extend the file over the old chunks
 * that an undone cut leaves in place): data first, then the size record.
 * Otherwise the size record's commit comes first, then the data. */
static int sync_file_slow(struct rk_journal_file *jf)
{
	struct rk_journal *j = jf->j;
	uint64_t seq, size = rk_cf_size(jf->cf);
	int ret = 0;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	j->st.fsyncs_in_place++;
	bool cut = jf->cut_pending;
	bool sized = j->tail > 0 && jnl_sized_has(j, jf);
	if (sized && !cut)
		ret = jnl_size_append(j, jf, size, &seq);
	rk_mutex_unlock(&j->lock);
	if (ret == 0)
		ret = rk_journal_commit(j);
	rk_crashpoint("journal.slow-committed");
	if (ret == 0)
		ret = rk_cf_sync_data(jf->cf);
	if (ret == 0 && sized && cut) {
		rk_crashpoint("journal.cut-synced");
		rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
		/* the size made durable in place, not any later one */
		ret = jnl_size_append(j, jf, size, &seq);
		rk_mutex_unlock(&j->lock);
		if (ret == 0)
			ret = rk_journal_commit(j);
	}
	if (ret == 0) {
		rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
		jf->ndirect = 0;
		jf->direct_over = false;
		jf->cut_pending = false;
		rk_mutex_unlock(&j->lock);
	}
	return ret;
}

int rk_journal_sync_file(struct rk_journal_file *jf)
{
	struct rk_journal *j = jf->j;
	struct rk_cf *cf = jf->cf;
	uint64_t idx[JDIRECT_MAX], size, dur_size, seq;
	uint32_t lens[JDIRECT_MAX];
	unsigned n = 0, nimg = 0;
	size_t bytes = 0;
	int ret = 0;
	uint32_t ss = rk_cf_slot_size(cf);
	bool known = rk_cf_dur_state(cf, &size, &dur_size);
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	j->st.fsyncs++;
	bool over = jf->direct_over || jf->cut_pending;
	/* a slot with a pending image is covered by its own record: skip it */
	for (unsigned i = 0; i < jf->ndirect; i++) {
		struct jkey k = {jf, jf->direct[i]};
		struct jent *e;
		HASH_FIND(hh, j->hash, &k, sizeof(k), e);
		if (!e && jf->direct[i] < rk_chunk_count(size, ss - RK_SLOT_OVERHEAD))
			idx[n++] = jf->direct[i];
	}
	rk_mutex_unlock(&j->lock);
	/* A file whose header was never made durable with its data since the
	 * open cannot be found by replay (it looks files up by the file id of
	 * their header), and a large batch is cheaper to sync in place */
	if (!known || over || (size_t)n * ss > JSYNC_MAX_BYTES)
		return sync_file_slow(jf);
	if (n == 0 && size == dur_size)
		return rk_journal_commit(j); /* everything is in the journal already */
	uint8_t *buf = rk_scratch(RK_SCR_JSYNC, (size_t)n * ss + 1);
	if (!buf)
		return -ENOMEM;
	/* no write to this file can run meanwhile (the caller excludes them):
	 * the slots read here are the ones the user's writes left */
	for (unsigned i = 0; i < n && ret == 0; i++) {
		ret = rk_cf_slot_image(cf, idx[i], buf + bytes, &lens[i]);
		bytes += lens[i];
	}
	if (ret < 0)
		return sync_file_slow(jf);
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	bytes = 0;
	for (unsigned i = 0; i < n && ret == 0; i++) {
		if (lens[i] == 0)
			continue;
		/* the record only: the image is in place already (replay redoes it) */
		ret = jnl_rec_append(j, REC_SLOT, rk_slot_off(ss, idx[i]), buf + bytes, lens[i], 0, jf, &seq);
		bytes += lens[i];
		nimg++;
	}
	struct jent *e = NULL;
	if (ret == 0 && size != dur_size) {
		e = jnl_ent_new(j);
		ret = e ? jnl_size_append(j, jf, size, &e->seq) : -ENOMEM;
		if (ret == 0) {
			/* applied after the commit: the header in place gets the size */
			e->hdr = true;
			e->key.jf = jf;
			e->key.idx = UINT64_MAX;
			jnl_queue_push(j, e);
		} else if (e) {
			e->next = j->freelist;
			j->freelist = e;
		}
	}
	if (nimg > 0) {
		/* the images were written in place directly: a checkpoint must sync
		 * the file before it empties the journal */
		if (ret == 0)
			ret = jnl_add_dirty(j, jf);
	}
	rk_mutex_unlock(&j->lock);
	if (ret < 0) {
		/* no room in the journal (ENOSPC...): the records appended so far
		 * are harmless (replay redoes what is in place); sync in place */
		rk_warn("%s: cannot journal an fsync (%s); syncing the file in place", jf->path, strerror(-ret));
		return sync_file_slow(jf);
	}
	rk_crashpoint("journal.fsync-appended");
	ret = rk_journal_commit(j);
	if (ret == 0) {
		rk_cf_set_dur_size(cf, size);
		rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
		jf->ndirect = 0;
		rk_mutex_unlock(&j->lock);
	}
	return ret;
}
