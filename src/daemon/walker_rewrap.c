/* rekeyfs daemon - the online rewrap (rekeyctl rotate --rewrap MOUNT): a
 * sweep of the walker that, instead of resealing chunks, rewraps every data
 * key wrapped under FROM to TO in the headers of the selected tables
 * (rk_cf_rewrap_entry: both header copies, each made durable; a format 1
 * file is converted first, rk_cf_upgrade_v2).  It goes through the daemon's
 * shared open file (rkd_file_get), so a file open in the mount is rewrapped
 * in the very rk_cf its readers and writers use: the in-memory header and
 * the disk agree.  Same machinery as a reseal: walker_rate (here it counts
 * the header bytes written, RW_FILE_BYTES = 8 KiB per file rewrapped),
 * pause/resume, progress (files, and those 8 KiB per file as bytes),
 * checkpoint (the keys are in it: a restarted daemon resumes the rewrap
 * after the last file checkpointed as done; the files from there to the
 * first one still under FROM, among them the one a kill may have left with
 * one header copy under each key, get their two copies made equal). */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include "daemon.h"
#include "file.h"
#include "rekeyfs/common.h"
#include "rekeyfs/format.h"
#include "walker.h"

int rkd_rewrap_keys_check(struct rkd_fs *fs, const char *from, const char *to, char *why, size_t len)
{
	struct rk_key *old = NULL, *new = NULL;
	int ret = rk_keyring_get(fs->kr, from, &old);
	if (ret < 0) {
		snprintf(why, len, "key '%s' cannot be loaded: %s (a rewrap unwraps the data keys with the old key)", from,
		         rk_strerror(ret));
		return ret;
	}
	ret = rk_keyring_get(fs->kr, to, &new);
	if (ret < 0) {
		snprintf(why, len, "key '%s' cannot be loaded: %s", to, rk_strerror(ret));
		return ret;
	}
	return rk_rewrap_keys_fit(old, new, why, len);
}

/* the stored header (no daemon state): 1 a chunk file, 0 not one (or gone),
 * or an error; *copy_names (when given): a header copy on disk, the one in
 * use or the older one, names key old */
static int disk_header(const struct rk_walk_ent *e, struct rk_cf_header *h, const char *old, bool *copy_names)
{
	uint8_t area[RK_HDR_AREA];
	if (copy_names)
		*copy_names = false;
	int fd = openat(e->dirfd, e->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	int ret = rk_cf_probe(fd);
	if (ret == 1) {
		ret = rk_cf_read_header(fd, e->rel, h, NULL);
		if (ret == 0)
			ret = 1;
	}
	if (ret == 1 && copy_names) {
		ssize_t n = rk_pread_full(fd, area, RK_HDR_AREA, 0);
		if (n < 0)
			ret = (int)n;
		else {
			memset(area + n, 0, (size_t)(RK_HDR_AREA - n));
			*copy_names = rk_hdr_copies_name(area, old);
		}
	}
	close(fd);
	return ret;
}

/* Rewrap one file through the daemon's shared open file.  *did: a data key
 * was rewrapped.  equalize: make both header copies equal (the file a
 * restart interrupted may have one copy under each key); stale: a header
 * copy on disk names old (equalized when the shared header no longer does). */
static int rewrap_file(struct rkd_fs *fs, const struct rk_walk_ent *e, struct rk_key *old, struct rk_key *new,
                       bool equalize, bool stale, bool *did, bool *chunk)
{
	struct rkd_inode *in;
	struct rkd_file *f;
	struct rk_cf_header h;
	bool which[RK_CF_MAX_KEYS];
	*did = *chunk = false;
	int ret = rkd_inode_at_path(fs, e->dirfd, e->name, e->rel, &in);
	if (ret < 0)
		return ret == -ENOENT ? 0 : ret; /* gone meanwhile */
	ret = rkd_file_get(fs, in, &f);
	if (ret < 0) {
		rkd_inode_put(fs, in);
		return ret == -ENOENT ? 0 : ret;
	}
	int n = 0;
	*chunk = f->chunk;
	if (f->chunk) {
		rk_cf_get_header(f->cf, &h);
		n = rk_hdr_entries_under(&h, old, which);
	}
	if (n > 0 && !f->rw)
		ret = -EROFS;
	if (ret == 0 && n > 0 && h.version < RK_FORMAT_V2)
		ret = rk_cf_upgrade_v2(f->cf); /* the v1 subkey becomes the data key: no chunk rewritten */
	for (int j = 0; ret == 0 && n > 0 && j < RK_CF_MAX_KEYS; j++) {
		if (!which[j])
			continue;
		ret = rk_cf_rewrap_entry(f->cf, j, old, new);
		if (ret == -ESTALE)
			ret = 0; /* no longer under old (dropped by a truncate meanwhile) */
		else if (ret == 0)
			*did = true;
	}
	/* a disk copy still names old while the shared header does not (a cut
	 * or failed commit): both copies written again */
	if (ret == 0 && f->chunk && f->rw && (equalize || (stale && n == 0))) {
		/* both copies as the in-memory header: the older one first, synced */
		rk_rw_wrlock(&f->rw_lock, RK_RANK_FILE_RW);
		ret = rk_cf_stage_rewrite(f->cf);
		if (ret == 0)
			ret = rk_cf_sync(f->cf);
		rk_rw_unlock(&f->rw_lock);
	}
	rkd_file_put(fs, in, f);
	rkd_inode_put(fs, in);
	return ret;
}

/* the keys of this rewrap (the keyring keeps them loaded) */
static int rewrap_keys(struct rkd_walker *w, struct rk_key **old, struct rk_key **new)
{
	int ret = rk_keyring_get(w->fs->kr, w->rw_from, old);
	if (ret == 0)
		ret = rk_keyring_get(w->fs->kr, w->rw_to, new);
	return ret;
}

/* pre-scan and final count: header reads only */
static int visit_count(struct rkd_walker *w, struct rw_walk *rw, enum walk_mode mode, const struct rk_walk_ent *e,
                       const char *tpath, struct rk_key *old)
{
	struct rk_cf_header h;
	bool which[RK_CF_MAX_KEYS];
	int r = disk_header(e, &h, NULL, NULL);
	if (r == 0)
		return 0;
	int n = r > 0 ? rk_hdr_entries_under(&h, old, which) : 0;
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct rk_rekey_tstat *t = rk_rekey_tstat_for(w->tables, &w->ntables, tpath);
	if (mode == M_COUNT) {
		t->counted = true;
		if (r < 0)
			rw->unreadable_headers++;
		else
			t->remaining += n > 0;
	} else {
		t->files_total++;
		t->bytes_total += RW_FILE_BYTES;
		t->bytes_todo += n > 0 ? RW_FILE_BYTES : 0;
		if (w->position[0] && rk_walk_cmp(e->rel, w->position) <= 0)
			t->bytes_done += RW_FILE_BYTES; /* a resumed rewrap: done before the checkpoint */
	}
	rk_mutex_unlock(&w->lock);
	return atomic_load(&w->stop) ? -ECANCELED : 0;
}

/* add an error to the ring shown by status (w->lock taken) */
static void rw_error(struct rkd_walker *w, const char *rel, int err)
{
	rk_err("walker: %s: rewrap from '%s' to '%s' failed: %s", rel, w->rw_from, w->rw_to, rk_strerror(err));
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct werr *x = &w->errors[w->error_next];
	x->time = time(NULL);
	snprintf(x->path, sizeof(x->path), "%s", rel);
	x->has_chunk = false;
	x->chunk = 0;
	snprintf(x->cause, sizeof(x->cause), "rewrap from '%s' to '%s': %s", w->rw_from, w->rw_to, rk_strerror(err));
	w->error_next = (w->error_next + 1) % MAX_ERRORS;
	if (w->nerrors < MAX_ERRORS)
		w->nerrors++;
	w->error_count++;
	rk_mutex_unlock(&w->lock);
}

int rkd_rewrap_visit(struct rkd_walker *w, struct rw_walk *rw, enum walk_mode mode, int pass,
                     const struct rk_walk_ent *e, const char *tpath)
{
	struct rkd_fs *fs = w->fs;
	struct rk_key *old, *new;
	int ret = rewrap_keys(w, &old, &new);
	if (ret < 0) {
		/* the sweep ends incomplete, the error said once */
		if (mode != M_PRESCAN && rw->file_errors++ == 0)
			rw_error(w, e->rel, ret);
		return 0;
	}
	if (mode != M_REKEY)
		return visit_count(w, rw, mode, e, tpath, old);
	rkd_fg_yield(fs); /* a short pause while foreground requests are being served */
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	snprintf(w->cur_file, sizeof(w->cur_file), "%s", e->rel);
	w->cur_valid = true;
	w->cur_off = w->cur_size = 0;
	w->cur_table = -1;
	ret = rkd_walker_pace_locked(w, 0); /* paused: wait here, between files */
	rk_mutex_unlock(&w->lock);
	if (ret < 0)
		return ret;
	bool did = false, chunk = false, copy_names = false;
	struct rk_cf_header dh;
	int r = disk_header(e, &dh, old->name, &copy_names);
	if (r > 0 && !copy_names && !rw->resumed_first)
		chunk = true; /* done (a later pass, a file created under NEW): no open, no header write */
	else if (r != 0)
		/* an older header copy still naming old (a rewrap cut between a
		 * file's two copies, or a failed second copy): both written again */
		ret = rewrap_file(fs, e, old, new, rw->resumed_first, copy_names, &did, &chunk);
	if (did)
		rw->resumed_first = false; /* the file a restart interrupted comes before the first one still to do */
	if (ret < 0) {
		rw->file_errors++;
		rw_error(w, e->rel, ret);
	}
	if (did)
		atomic_fetch_add(&w->files_rewrapped, 1);
	rk_mutex_lock(&w->lock, RK_RANK_WALKER);
	struct rk_rekey_tstat *t = rk_rekey_tstat_for(w->tables, &w->ntables, tpath);
	if (did)
		t->bytes_rewritten += RW_FILE_BYTES;
	if (pass == 0 && (chunk || ret < 0)) { /* the pre-scan counted chunk files only */
		t->files_done++;
		t->bytes_done += RW_FILE_BYTES;
		t->files_total = RK_MAX(t->files_total, t->files_done);
		t->bytes_total = RK_MAX(t->bytes_total, t->bytes_done);
	}
	snprintf(w->position, sizeof(w->position), "%s", e->rel);
	ret = did ? rkd_walker_pace_locked(w, RW_FILE_BYTES) : 0; /* walker_rate: header bytes written */
	bool save = rkd_walker_now() - w->last_save >= 1.0;
	rk_mutex_unlock(&w->lock);
	if (save)
		rkd_walker_save(w);
	rk_crashpoint("walker.rewrap-file-done");
	return ret < 0 || atomic_load(&w->stop) ? -ECANCELED : 0;
}
