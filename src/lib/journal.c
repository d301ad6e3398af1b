/* rekeyfs - redo journal with group commit: the writer, the committer and
 * the attached files (see include/rekeyfs/journal.h; replay is
 * journal_replay.c). */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <uthash.h>

#include "rekeyfs/common.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/keys.h"
#include "rekeyfs/lockrank.h"
#include "journal_int.h"

/* ---- record encoding ------------------------------------------------------------ */
static void rec_header(uint8_t *h, int type, uint64_t seq, uint64_t a, uint32_t len, uint32_t old_end,
                       const struct rk_journal_file *jf, uint16_t pathlen, uint64_t durable)
{
	memset(h, 0, REC_HDR);
	memcpy(h, rk_jrec_magic, 4);
	h[4] = (uint8_t)type;
	rk_put64(h + 8, seq);
	rk_put64(h + 16, a);
	rk_put32(h + 24, len);
	rk_put32(h + 28, old_end);
	memcpy(h + 32, jf->file_id, RK_FILE_ID_BYTES);
	rk_put32(h + 48, (uint32_t)jf->handle_type);
	rk_put16(h + 52, jf->handle_len);
	rk_put16(h + 54, pathlen);
	rk_put64(h + 56, durable);
}

/* Append one record; caller holds j->lock.  Returns 0 or -errno. */
int jnl_rec_append(struct rk_journal *j, int type, uint64_t a, const uint8_t *img, uint32_t len, uint32_t old_end,
                      struct rk_journal_file *jf, uint64_t *seq_out)
{
	uint8_t hdr[REC_HDR], sum[REC_SUM];
	uint16_t pathlen = (uint16_t)strnlen(jf->path, PATH_MAX - 1);
	uint64_t seq = j->seq + 1;
	int ret;
	rec_header(hdr, type, seq, a, type == REC_SLOT ? len : 0, old_end, jf, pathlen, j->committed);
	RK_ASSERT(type == REC_SLOT || img == NULL);
	/* a fresh (empty) journal starts with its header */
	size_t hl = j->tail == 0 ? JHDR_SIZE : 0;
	struct iovec iov[6] = {
		{j->jhdr, hl}, {hdr, REC_HDR}, {jf->handle, jf->handle_len}, {jf->path, pathlen},
		{(void *)img, type == REC_SLOT ? len : 0}, {sum, REC_SUM},
	};
	ret = jmac_compute(&j->mac, iov + 1, 4, sum);
	if (ret < 0)
		return ret;
	size_t total = hl + REC_HDR + jf->handle_len + pathlen + (type == REC_SLOT ? len : 0) + REC_SUM;
	if (j->tail + total > j->fsize && (ret = jnl_grow(j, j->tail + total)) < 0)
		return ret;
	size_t done = 0;
	while (done < total) {
		/* advance the iovec past what was written */
		struct iovec v[6];
		int nv = 0;
		size_t skip = done;
		for (int i = 0; i < 6; i++) {
			if (skip >= iov[i].iov_len) {
				skip -= iov[i].iov_len;
				continue;
			}
			v[nv].iov_base = (uint8_t *)iov[i].iov_base + skip;
			v[nv].iov_len = iov[i].iov_len - skip;
			skip = 0;
			nv++;
		}
		ssize_t n = pwritev(j->fd, v, nv, (off_t)(j->tail + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			/* a partial record is never followed by an authentic one: the
			 * next append overwrites it from the same offset.  A partial
			 * journal header would make replay refuse the journal: zero it */
			if (j->tail == 0 && rk_pwrite_zeros(j->fd, 0, JHDR_SIZE) < 0)
				rk_warn("journal: cannot clear a partial journal header: %s", strerror(errno));
			return -e;
		}
		done += (size_t)n;
	}
	j->tail += total;
	j->seq = seq;
	j->st.records++;
	j->st.journal_bytes = j->tail;
	*seq_out = seq;
	return 0;
}

/* ---- arena ---------------------------------------------------------------------------- */
/* Reserve len contiguous bytes; caller holds the lock.  -EAGAIN when full. */
static int arena_alloc(struct rk_journal *j, size_t len, size_t *off, size_t *charge)
{
	if (len > j->asize)
		return -EFBIG;
	if (j->aused == 0) {
		j->ahead = j->atail = 0;
	}
	if (j->aused == 0 || j->ahead > j->atail) {
		if (j->asize - j->ahead >= len) {
			*off = j->ahead;
			*charge = len;
		} else if (j->atail > len || (j->aused == 0 && len <= j->asize)) {
			*off = 0;
			*charge = len + (j->asize - j->ahead); /* waste at the end */
		} else {
			return -EAGAIN;
		}
	} else if (j->ahead < j->atail && j->atail - j->ahead > len) {
		*off = j->ahead;
		*charge = len;
	} else {
		return -EAGAIN;
	}
	j->ahead = *off + len;
	j->aused += *charge;
	return 0;
}

static void arena_free(struct rk_journal *j, struct jent *e)
{
	if (e->hdr)
		return; /* holds no image */
	j->aused -= e->charge;
	j->atail = e->aoff + e->len;
	if (j->aused == 0)
		j->ahead = j->atail = 0;
}

/* ---- pending entries ------------------------------------------------------------------ */
/* Queue e last (applied in order after the commit); caller holds the lock. */
void jnl_queue_push(struct rk_journal *j, struct jent *e)
{
	if (j->qtail)
		j->qtail->next = e;
	else
		j->qhead = e;
	j->qtail = e;
	e->key.jf->npending++;
}

struct jent *jnl_ent_new(struct rk_journal *j)
{
	struct jent *e = j->freelist;
	if (e)
		j->freelist = e->next;
	else
		e = malloc(sizeof(*e));
	if (e)
		memset(e, 0, sizeof(*e));
	return e;
}

static void ent_unhash(struct rk_journal *j, struct jent *e)
{
	if (e->hashed) {
		HASH_DEL(j->hash, e);
		e->hashed = false;
	}
}

int jnl_add_dirty(struct rk_journal *j, struct rk_journal_file *jf)
{
	if (jf->dirty)
		return 0;
	if (j->ndirty == j->capdirty) {
		size_t nc = j->capdirty ? j->capdirty * 2 : 64;
		int *n = realloc(j->dirty_fds, nc * sizeof(*n));
		if (!n)
			return -ENOMEM;
		j->dirty_fds = n;
		j->capdirty = nc;
	}
	int fd = fcntl(rk_cf_fd(jf->cf), F_DUPFD_CLOEXEC, 3);
	if (fd < 0)
		return -errno;
	j->dirty_fds[j->ndirty++] = fd;
	jf->dirty = true;
	return 0;
}

static void sized_clear(struct rk_journal *j)
{
	struct jsized *z, *tmp;
	HASH_ITER(hh, j->sized, z, tmp)
	{
		HASH_DEL(j->sized, z);
		free(z);
	}
}

bool jnl_sized_has(struct rk_journal *j, const struct rk_journal_file *jf)
{
	struct jsized *z;
	HASH_FIND(hh, j->sized, jf->file_id, RK_FILE_ID_BYTES, z);
	return z != NULL;
}

/* Append a size record for jf (caller holds the lock) and remember its file id. */
int jnl_size_append(struct rk_journal *j, struct rk_journal_file *jf, uint64_t size, uint64_t *seq)
{
	if (!jnl_sized_has(j, jf)) {
		struct jsized *z = calloc(1, sizeof(*z));
		if (!z)
			return -ENOMEM;
		memcpy(z->id, jf->file_id, RK_FILE_ID_BYTES);
		HASH_ADD(hh, j->sized, id, RK_FILE_ID_BYTES, z);
	}
	jf->size_gen = j->generation;
	return jnl_rec_append(j, REC_SIZE, size, NULL, 0, rk_cf_slot_size(jf->cf), jf, seq);
}

/* Write the oldest committed entry in place; caller holds the lock (dropped
 * while writing).  Returns 1 if an entry was handled, 0 if none is ready. */
static int apply_one(struct rk_journal *j)
{
	while (j->applying)
		pthread_cond_wait(&j->changed, &j->lock);
	struct jent *e = j->qhead;
	if (!e || e->seq > j->committed)
		return 0;
	int ret = 0;
	if (!e->dead) {
		struct rk_journal_file *jf = e->key.jf;
		j->applying = e;
		rk_mutex_unlock(&j->lock);
		int fd = rk_cf_fd(jf->cf);
		if (e->hdr) {
			/* a size record: the header in place gets (at least) that size
			 * before a checkpoint syncs the file and empties the journal */
			rk_crashpoint("journal.size-apply");
			ret = rk_cf_flush(jf->cf);
		} else {
			struct rk_times t;
			rk_cf_times_save(jf->cf, &t); /* putting chunks in place is not a user write */
			ret = rk_pwrite_full(fd, j->arena + e->aoff, e->len, (off_t)e->off);
			if (ret == 0 && e->old_end > e->len)
				ret = rk_zero_range(fd, e->off + e->len, e->old_end - e->len);
			rk_cf_times_restore(jf->cf, &t);
		}
		rk_crashpoint("journal.applied");
		rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
		j->applying = NULL;
		if (ret < 0) {
			/* the journal holds the record: it stays pending and is retried; a
			 * crash meanwhile replays it */
			if (j->apply_error != ret)
				rk_err("%s: cannot write chunk at offset %" PRIu64 " in place: %s (kept in the journal and "
				       "retried)", jf->path, e->off, strerror(-ret));
			j->st.last_error = ret;
			j->apply_error = ret;
			pthread_cond_broadcast(&j->changed);
			return -1;
		}
		if (jnl_add_dirty(j, jf) < 0) {
			/* cannot remember to sync it: sync now */
			fdatasync(fd);
		}
		j->st.applied++;
		j->apply_error = 0;
	}
	ent_unhash(j, e);
	j->qhead = e->next;
	if (!j->qhead)
		j->qtail = NULL;
	e->key.jf->npending--;
	arena_free(j, e);
	e->next = j->freelist;
	j->freelist = e;
	pthread_cond_broadcast(&j->changed);
	return 1;
}

/* One fdatasync of the journal, covering every record appended before it.
 * Caller holds the lock (dropped during fdatasync) and no other commit is
 * in flight.  The first caller to see a failure reports it (j->error). */
static int commit_once(struct rk_journal *j, bool background)
{
	uint64_t target = j->seq;
	j->committing = true;
	rk_mutex_unlock(&j->lock);
	rk_crashpoint("journal.before-commit");
	int ret = fdatasync(j->fd) < 0 ? -errno : 0;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	j->committing = false;
	if (ret < 0) {
		rk_err("journal: fdatasync failed: %s", strerror(-ret));
		j->error = ret;
		j->commit_error = ret;
		j->st.last_error = ret;
	} else {
		j->commit_error = 0;
		if (target > j->committed)
			j->committed = target;
		j->st.commits++;
		if (background)
			j->st.background_commits++;
	}
	pthread_cond_broadcast(&j->changed);
	return ret;
}

/* Group commit: make every record appended so far durable, sharing a
 * commit another thread has in flight.  Caller holds the lock; background:
 * the committer thread's own commit (counted apart). */
static int commit_locked(struct rk_journal *j, bool background)
{
	uint64_t target = j->seq;
	while (j->committed < target) {
		if (j->committing) {
			pthread_cond_wait(&j->changed, &j->lock);
			continue;
		}
		int ret = commit_once(j, background);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static int checkpoint_locked(struct rk_journal *j)
{
	int ret = commit_locked(j, false);
	if (ret < 0)
		return ret;
	while (j->qhead) {
		int r = apply_one(j);
		if (r < 0)
			return j->st.last_error ? j->st.last_error : -EIO;
		if (r == 0) {
			ret = commit_locked(j, false);
			if (ret < 0)
				return ret;
		}
	}
	uint64_t tail = j->tail;
	int *fds = j->dirty_fds;
	size_t n = j->ndirty;
	j->dirty_fds = NULL;
	j->ndirty = j->capdirty = 0;
	/* files get re-added to the new list as they are applied again */
	for (struct rk_journal_file *f = j->files; f; f = f->next)
		f->dirty = false;
	rk_mutex_unlock(&j->lock);
	for (size_t i = 0; i < n; i++) {
		if (fdatasync(fds[i]) < 0 && ret == 0) {
			ret = -errno;
			rk_err("journal checkpoint: fdatasync of a data file failed: %s; the journal keeps its records "
			       "(replayed at the next mount)", strerror(-ret));
		}
		close(fds[i]);
	}
	free(fds);
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	/* a failed fdatasync may have dropped the pages it could not write
	 * (a retry then succeeds without them): the chunks put in place
	 * before it are durable only in the journal, which must not be
	 * emptied before a replay has redone them */
	if (ret < 0 && !j->sync_error)
		j->sync_error = ret;
	if (ret < 0)
		return ret;
	if (j->sync_error)
		return j->sync_error;
	if (j->tail == tail && !j->qhead && tail > 0) {
		/* empty the journal: a zeroed header holds nothing (the file keeps
		 * its length, so the next generation's records overwrite written
		 * blocks); the next generation authenticates under a new id */
		struct jmac m;
		uint8_t hdr[JHDR_SIZE];
		ret = jnl_new_generation_id(j, j->key, &m, hdr);
		if (ret < 0) {
			rk_err("journal: cannot derive the next journal id: %s", rk_strerror(ret));
			return ret;
		}
		rk_crashpoint("journal.before-truncate");
		if (rk_pwrite_zeros(j->fd, 0, JHDR_SIZE) < 0 || fdatasync(j->fd) < 0) {
			ret = -errno;
			rk_err("journal: cannot empty the journal: %s", strerror(-ret));
			jmac_free(&m);
			/* the records stay: their header must be back before a later
			 * commit makes records after them durable (best effort: the
			 * next commit's fdatasync covers it) */
			if (rk_pwrite_full(j->fd, j->jhdr, JHDR_SIZE, 0) < 0)
				rk_err("journal: cannot restore the journal header: %s", strerror(errno));
			return ret;
		}
		jmac_free(&j->mac);
		j->mac = m;
		memcpy(j->jhdr, hdr, JHDR_SIZE);
		j->tail = 0;
		j->generation++;
		sized_clear(j);
		j->st.checkpoints++;
		j->st.journal_bytes = 0;
	}
	return 0;
}

static void *committer(void *arg)
{
	struct rk_journal *j = arg;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	while (!j->stop) {
		if (j->seq == j->committed && !j->qhead && j->commit_want <= j->committed) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += (long)j->o.commit_interval_ms * 1000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&j->work, &j->lock, &ts);
			continue;
		}
		/* let writers batch up unless someone waits */
		if (j->commit_want <= j->committed && j->aused < j->asize / 2 && j->seq != j->committed) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += (long)j->o.commit_interval_ms * 1000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&j->work, &j->lock, &ts);
			if (j->stop)
				break;
		}
		if (commit_locked(j, true) < 0) {
			/* keep everything pending; try again later */
			rk_mutex_unlock(&j->lock);
			usleep(100000);
			rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
			continue;
		}
		int r;
		while ((r = apply_one(j)) == 1)
			;
		if (r < 0) {
			/* ENOSPC or EIO in place: the journal keeps the data; back off */
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 200000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&j->work, &j->lock, &ts);
			continue;
		}
		if (j->tail >= j->o.checkpoint_bytes && !j->qhead)
			checkpoint_locked(j);
	}
	rk_mutex_unlock(&j->lock);
	return NULL;
}

/* ---- writer hooks --------------------------------------------------------------------- */
static int j_write_slot(void *ctx, struct rk_cf *cf, uint64_t idx, const uint8_t *slot, size_t len, size_t old_end)
{
	struct rk_journal_file *jf = ctx;
	struct rk_journal *j = jf->j;
	uint64_t off = rk_slot_off(rk_cf_slot_size(cf), idx);
	int ret;
	if (old_end == 0) {
		/* a hole holds no data: write directly, header last; an fsync
		 * journals it or syncs the data file (rk_journal_sync_file) */
		ret = rk_cf_write_hole(cf, idx, slot, len);
		if (ret == 0) {
			rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
			bool known = false;
			for (unsigned i = 0; i < jf->ndirect && !known; i++)
				known = jf->direct[i] == idx;
			if (!known && jf->ndirect < JDIRECT_MAX)
				jf->direct[jf->ndirect++] = idx;
			else if (!known)
				jf->direct_over = true;
			rk_mutex_unlock(&j->lock);
		}
		return ret;
	}
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	size_t aoff = 0, charge = 0;
	while ((ret = arena_alloc(j, len, &aoff, &charge)) == -EAGAIN) {
		j->st.waits++;
		j->commit_want = j->seq;
		pthread_cond_signal(&j->work);
		pthread_cond_wait(&j->changed, &j->lock);
	}
	if (ret < 0)
		goto out;
	struct jent *e = jnl_ent_new(j);
	if (!e) {
		ret = -ENOMEM;
		goto unalloc;
	}
	memcpy(j->arena + aoff, slot, len);
	ret = jnl_rec_append(j, REC_SLOT, off, slot, (uint32_t)len, (uint32_t)old_end, jf, &e->seq);
	if (ret < 0) {
		e->next = j->freelist;
		j->freelist = e;
		goto unalloc;
	}
	rk_crashpoint("journal.appended");
	e->key.jf = jf;
	e->key.idx = idx;
	e->off = off;
	e->len = (uint32_t)len;
	e->old_end = (uint32_t)old_end;
	e->aoff = aoff;
	e->charge = charge;
	struct jent *prev;
	HASH_FIND(hh, j->hash, &e->key, sizeof(e->key), prev);
	if (prev) {
		/* the slot on disk still has prev's predecessor: clear up to the larger */
		if (prev->old_end > e->old_end)
			e->old_end = prev->old_end;
		prev->dead = true;
		ent_unhash(j, prev);
	}
	HASH_ADD(hh, j->hash, key, sizeof(e->key), e);
	e->hashed = true;
	jnl_queue_push(j, e);
	j->st.pending_bytes = j->aused;
	if (j->aused > j->asize / 2)
		pthread_cond_signal(&j->work);
	rk_mutex_unlock(&j->lock);
	return 0;
unalloc:
	/* undo the reservation: it is the newest, so the head moves back */
	j->aused -= charge;
	j->ahead = aoff;
	if (j->aused == 0)
		j->ahead = j->atail = 0;
out:
	rk_mutex_unlock(&j->lock);
	return ret;
}

static ssize_t j_read_slot(void *ctx, struct rk_cf *cf, uint64_t idx, uint8_t *buf, size_t len)
{
	struct rk_journal_file *jf = ctx;
	struct rk_journal *j = jf->j;
	struct jkey k = {jf, idx};
	struct jent *e;
	ssize_t n = -ENOENT;
	(void)cf;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	if (jf->npending) {
		HASH_FIND(hh, j->hash, &k, sizeof(k), e);
		if (e) {
			n = (ssize_t)RK_MIN(len, (size_t)e->len);
			memcpy(buf, j->arena + e->aoff, (size_t)n);
		}
	}
	rk_mutex_unlock(&j->lock);
	return n;
}

static int j_truncated(void *ctx, struct rk_cf *cf, uint64_t first_dead)
{
	struct rk_journal_file *jf = ctx;
	struct rk_journal *j = jf->j;
	uint64_t seq, size = rk_cf_size(cf); /* the new size (set before the cut) */
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	/* an entry being written in place right now must land before the cut */
	while (j->applying && j->applying->key.jf == jf && j->applying->key.idx >= first_dead)
		pthread_cond_wait(&j->changed, &j->lock);
	for (struct jent *e = j->qhead; e; e = e->next) {
		if (e->key.jf == jf && !e->hdr && e->key.idx >= first_dead && !e->dead) {
			e->dead = true;
			ent_unhash(j, e);
		}
	}
	unsigned keep = 0;
	for (unsigned i = 0; i < jf->ndirect; i++)
		if (jf->direct[i] < first_dead)
			jf->direct[keep++] = jf->direct[i];
	jf->ndirect = keep;
	/* The new size is recorded and durable before the stored file is cut
	 * (the caller cuts after this returns): a cut that reaches the disk
	 * without it would leave an older size (in place, or in an earlier size
	 * record) over chunks that are gone.  The size record goes first: a
	 * durable truncation record then always has its size before it.
	 * Records of this generation may hold the dead slots, made through
	 * this handle or an earlier open of the file (another handle, same
	 * file id): the truncation record makes replay skip them. */
	bool recs = j->tail > 0;
	int ret = jnl_size_append(j, jf, size, &seq);
	if (ret == 0) {
		if (recs)
			ret = jnl_rec_append(j, REC_TRUNC, first_dead, NULL, 0, rk_cf_slot_size(cf), jf, &seq);
	}
	/* the cut itself is not in the journal: the next fsync syncs the file
	 * (a later size record over the cut slots needs them gone on disk), and
	 * a checkpoint syncs it (the header in place has the new size) before
	 * the journal is emptied */
	jf->cut_pending = true;
	if (ret == 0)
		ret = jnl_add_dirty(j, jf);
	rk_mutex_unlock(&j->lock);
	if (ret == 0) {
		ret = rk_journal_commit(j);
		if (ret == 0)
			rk_cf_set_dur_size(cf, size);
	}
	return ret;
}

/* ---- public API ------------------------------------------------------------------------- */
int rk_journal_attach_file(struct rk_journal *j, struct rk_cf *cf, const char *rel, struct rk_journal_file **out)
{
	struct rk_journal_file *jf = calloc(1, sizeof(*jf));
	*out = NULL;
	if (!jf)
		return -ENOMEM;
	jf->j = j;
	jf->cf = cf;
	rk_cf_file_id(cf, jf->file_id);
	snprintf(jf->path, sizeof(jf->path), "%s", rel);
	struct {
		struct file_handle fh;
		uint8_t buf[HANDLE_MAX];
	} h;
	int mount_id;
	h.fh.handle_bytes = HANDLE_MAX;
	if (name_to_handle_at(rk_cf_fd(cf), "", &h.fh, &mount_id, AT_EMPTY_PATH) == 0 && h.fh.handle_bytes <= HANDLE_MAX) {
		jf->handle_type = h.fh.handle_type;
		jf->handle_len = (uint16_t)h.fh.handle_bytes;
		memcpy(jf->handle, h.fh.f_handle, h.fh.handle_bytes);
	} else {
		jf->handle_type = -1;
		jf->handle_len = 0;
	}
	jf->size_gen = UINT64_MAX;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	jf->next = j->files;
	if (j->files)
		j->files->prev = jf;
	j->files = jf;
	HASH_ADD_KEYPTR(cfh, j->by_cf, &jf->cf, sizeof(jf->cf), jf);
	rk_mutex_unlock(&j->lock);
	struct rk_cf_writer w = {j_write_slot, j_read_slot, j_truncated, jf};
	rk_cf_set_writer(cf, &w);
	*out = jf;
	return 0;
}

int rk_journal_detach_file(struct rk_journal_file *jf)
{
	int ret = 0;
	if (!jf)
		return 0;
	struct rk_journal *j = jf->j;
	struct rk_cf *cf = jf->cf;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	/* this file's entries must be in place before its fd goes away */
	/* j->error is kept for the next committing caller (fsync): only a commit
	 * failing now, or an in-place write, stops the wait */
	while (jf->npending > 0 && !j->commit_error && !j->apply_error) {
		if (j->commit_want < j->seq)
			j->commit_want = j->seq;
		pthread_cond_signal(&j->work);
		pthread_cond_wait(&j->changed, &j->lock);
	}
	if (jf->npending > 0) {
		/* cannot make them durable: keep the file attached (the caller keeps
		 * the fd open) and report */
		ret = j->commit_error ? j->commit_error : j->apply_error ? j->apply_error : -EIO;
		rk_mutex_unlock(&j->lock);
		return ret;
	}
	if (jf->prev)
		jf->prev->next = jf->next;
	else
		j->files = jf->next;
	if (jf->next)
		jf->next->prev = jf->prev;
	HASH_DELETE(cfh, j->by_cf, jf);
	rk_mutex_unlock(&j->lock);
	rk_cf_set_writer(cf, NULL);
	free(jf);
	return 0;
}

void rk_journal_repath_file(struct rk_journal_file *jf, const char *rel)
{
	if (!jf)
		return;
	rk_mutex_lock(&jf->j->lock, RK_RANK_JOURNAL);
	snprintf(jf->path, sizeof(jf->path), "%s", rel);
	rk_mutex_unlock(&jf->j->lock);
}

/* ---- the same by chunk file (the handle looked up in the journal's list) ---- */
int rk_journal_attach(struct rk_journal *j, struct rk_cf *cf, const char *rel)
{
	struct rk_journal_file *jf;
	return rk_journal_attach_file(j, cf, rel, &jf);
}

static struct rk_journal_file *jfile_of(struct rk_journal *j, struct rk_cf *cf)
{
	struct rk_journal_file *jf;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	HASH_FIND(cfh, j->by_cf, &cf, sizeof(cf), jf);
	rk_mutex_unlock(&j->lock);
	return jf;
}

int rk_journal_detach(struct rk_journal *j, struct rk_cf *cf)
{
	return rk_journal_detach_file(jfile_of(j, cf));
}

void rk_journal_repath(struct rk_journal *j, struct rk_cf *cf, const char *rel)
{
	rk_journal_repath_file(jfile_of(j, cf), rel);
}

int rk_journal_commit(struct rk_journal *j)
{
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	uint64_t target = j->seq;
	int ret = 0;
	while (j->committed < target) {
		if (j->error) {
			ret = j->error;
			j->error = 0; /* reported once; the committer retries */
			break;
		}
		if (j->committing) {
			/* a commit is in flight: it may cover target; if not, the
			 * next round makes one */
			pthread_cond_wait(&j->changed, &j->lock);
			continue;
		}
		/* no commit in flight: make it here, without a hand-off to the
		 * committer thread and back (two wake-ups per fsync) */
		ret = commit_once(j, false);
		if (ret < 0) {
			j->error = 0; /* reported to this caller */
			break;
		}
	}
	/* what is now durable is applied in place by the committer */
	if (j->qhead)
		pthread_cond_signal(&j->work);
	rk_mutex_unlock(&j->lock);
	return ret;
}

int rk_journal_release_key(struct rk_journal *j, const char *name, const struct rk_key *next)
{
	struct jmac m;
	struct rk_key *nk = NULL;
	uint8_t hdr[JHDR_SIZE];
	int ret = 0, tries = 0;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	if (strcmp(j->keyname, name) != 0)
		goto out;
	if (strcmp(next->name, name) == 0) {
		ret = -EBUSY;
		goto out;
	}
	ret = rk_key_dup(next, &nk);
	if (ret < 0)
		goto out;
	ret = jnl_new_generation_id(j, next, &m, hdr);
	if (ret < 0)
		goto out;
	/* empty the journal: records made under the old key must not outlive it */
	do {
		ret = checkpoint_locked(j);
	} while (ret == 0 && j->tail > 0 && ++tries < 16);
	if (ret == 0 && j->tail > 0)
		ret = -EBUSY;
	/* the stale records of earlier generations were made under the old
	 * key: cut them off with it (as a clean unmount does) */
	if (ret == 0 && j->fsize > 0) {
		if (ftruncate(j->fd, 0) < 0 || fsync(j->fd) < 0)
			ret = -errno;
		else
			j->fsize = 0;
	}
	if (ret < 0) {
		jmac_free(&m);
		goto out;
	}
	/* the next record starts a journal under the new key */
	jmac_free(&j->mac);
	j->mac = m;
	memcpy(j->jhdr, hdr, JHDR_SIZE);
	snprintf(j->keyname, sizeof(j->keyname), "%s", next->name);
	rk_key_free(j->key); /* the released key's copy: wiped */
	j->key = nk;
	nk = NULL;
	rk_info("%s: the journal now authenticates its records under key '%s' (was '%s')", j->dd->path, next->name,
	        name);
out:
	rk_mutex_unlock(&j->lock);
	rk_key_free(nk);
	return ret;
}

int rk_journal_checkpoint(struct rk_journal *j)
{
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	int ret = checkpoint_locked(j);
	rk_mutex_unlock(&j->lock);
	return ret;
}

void rk_journal_get_stats(struct rk_journal *j, struct rk_journal_stats *st)
{
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	*st = j->st;
	st->pending_bytes = j->aused;
	st->journal_bytes = j->tail;
	rk_mutex_unlock(&j->lock);
}

/* The key the journal's MAC key is derived from: the root table's target key. */
static int journal_key(struct rk_datadir *dd, struct rk_keyring *kr, struct rk_key **k)
{
	const struct rk_table *t = rk_policy_lookup(dd, "/");
	int ret;
	if (!t || !kr) {
		rk_err("%s: cannot start the journal: no root table key to authenticate its records", dd->path);
		return -ENOKEY;
	}
	ret = rk_keyring_get(kr, t->key, k);
	if (ret < 0)
		rk_err("%s: cannot start the journal: the root table's key '%s' cannot be used: %s (key directory %s)",
		       dd->path, t->key, rk_strerror(ret), rk_keyring_dir(kr));
	return ret;
}

int rk_journal_open(struct rk_datadir *dd, struct rk_keyring *kr, const struct rk_journal_opts *o,
                    struct rk_journal **out)
{
	struct rk_journal *j = calloc(1, sizeof(*j));
	struct rk_key *k;
	uint8_t id[JID_BYTES];
	int ret;
	if (!j)
		return -ENOMEM;
	j->fd = -1;
	j->dd = dd;
	j->o.mem_limit = o && o->mem_limit ? o->mem_limit : 16u << 20;
	j->o.commit_interval_ms = o && o->commit_interval_ms ? o->commit_interval_ms : 20;
	j->o.checkpoint_bytes = o && o->checkpoint_bytes ? o->checkpoint_bytes : 64u << 20;
	j->asize = RK_MAX(j->o.mem_limit, (size_t)(2 * (RK_CHUNK_MAX + RK_SLOT_OVERHEAD)));
	j->arena = malloc(j->asize);
	if (!j->arena) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = journal_key(dd, kr, &k);
	if (ret < 0)
		goto fail;
	ret = rk_random(id, sizeof(id));
	if (ret == 0)
		ret = jmac_init(&j->mac, k, id);
	if (ret == 0)
		ret = jhdr_encode(&j->mac, id, k->name, k->fp, j->jhdr);
	if (ret < 0) {
		rk_err("%s: cannot derive the journal key from key '%s': %s", dd->path, k->name, rk_strerror(ret));
		goto fail;
	}
	snprintf(j->keyname, sizeof(j->keyname), "%s", k->name);
	ret = rk_key_dup(k, &j->key);
	if (ret < 0)
		goto fail;
	j->fd = openat(dd->statefd, RK_JOURNAL_NAME, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (j->fd < 0) {
		ret = -errno;
		rk_err("%s: cannot open %s/%s: %s", dd->path, RK_STATE_DIR, RK_JOURNAL_NAME, strerror(errno));
		goto fail;
	}
	struct stat st;
	uint8_t magic[4] = {0};
	if (fstat(j->fd, &st) < 0) {
		ret = -errno;
		goto fail;
	}
	if (st.st_size > 0 && (st.st_size < JHDR_SIZE || rk_pread_full(j->fd, magic, 4, 0) != 4 ||
	                       memcmp(magic, "\0\0\0\0", 4) != 0)) {
		/* must have been replayed: refuse to append after unknown records */
		rk_err("%s: the journal is not empty; it must be replayed first", dd->path);
		ret = -EUCLEAN;
		goto fail;
	}
	/* a zeroed header holds nothing: the file's blocks are reused */
	j->fsize = (uint64_t)st.st_size;
	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->work, NULL);
	pthread_cond_init(&j->changed, NULL);
	ret = pthread_create(&j->thr, NULL, committer, j);
	if (ret) {
		ret = -ret;
		pthread_cond_destroy(&j->work);
		pthread_cond_destroy(&j->changed);
		pthread_mutex_destroy(&j->lock);
		goto fail;
	}
	*out = j;
	return 0;
fail:
	if (j->fd >= 0)
		sized_clear(j);
	close(j->fd);
	rk_key_free(j->key);
	jmac_free(&j->mac);
	free(j->arena);
	free(j);
	return ret;
}

int rk_journal_close(struct rk_journal *j)
{
	if (!j)
		return 0;
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	j->stop = true;
	pthread_cond_broadcast(&j->work);
	rk_mutex_unlock(&j->lock);
	pthread_join(j->thr, NULL);
	rk_mutex_lock(&j->lock, RK_RANK_JOURNAL);
	int ret = checkpoint_locked(j);
	/* emptied: a clean unmount leaves no journal bytes (the next mount
	 * grows it again) */
	if (ret == 0 && j->tail == 0 && j->fsize > 0) {
		if (ftruncate(j->fd, 0) < 0 || fsync(j->fd) < 0)
			rk_warn("%s: cannot cut the emptied journal: %s", j->dd->path, strerror(errno));
		else
			j->fsize = 0;
	}
	rk_mutex_unlock(&j->lock);
	for (size_t i = 0; i < j->ndirty; i++)
		close(j->dirty_fds[i]);
	free(j->dirty_fds);
	/* files still attached (never closed before unmount): detach them */
	while (j->files) {
		struct rk_journal_file *jf = j->files;
		j->files = jf->next;
		HASH_DELETE(cfh, j->by_cf, jf);
		rk_cf_set_writer(jf->cf, NULL);
		free(jf);
	}
	struct jent *e, *tmp;
	HASH_ITER(hh, j->hash, e, tmp)
	{
		HASH_DEL(j->hash, e);
	}
	while (j->qhead) {
		e = j->qhead;
		j->qhead = e->next;
		free(e);
	}
	while (j->freelist) {
		e = j->freelist;
		j->freelist = e->next;
		free(e);
	}
	close(j->fd);
	rk_key_free(j->key);
	jmac_free(&j->mac);
	free(j->arena);
	pthread_cond_destroy(&j->work);
	pthread_cond_destroy(&j->changed);
	pthread_mutex_destroy(&j->lock);
	free(j);
	return ret;
}
