/* rekeyfs - chunk-by-chunk rekey of a chunk file. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/sweep.h"
#include "replace_int.h"

enum rk_rekey_outcome rk_rekey_classify(int err)
{
	switch (err) {
	case 0:
		return RK_RO_DONE;
	case -EUCLEAN:
	case -ENOKEY:
	case -EKEYREVOKED:
	case -EKEYREJECTED:
		return RK_RO_SKIPPED_UNREADABLE;
	case -ENOSPC:
	case -EDQUOT:
	case -EIO:
		return RK_RO_RETRY_NO_SPACE;
	case -EAGAIN:
	case -EBUSY:
		return RK_RO_CHANGED;
	case -ECANCELED:
		return RK_RO_STOPPED;
	default:
		return RK_RO_FAILED;
	}
}

int rk_sweep_file(struct rk_cf *cf, struct rk_key *target, const struct rk_sweep_cb *cb, uint64_t start_chunk,
                  struct rk_sweep_result *res)
{
	static const struct rk_sweep_cb none = {0};
	uint32_t cs = rk_cf_chunk_size(cf);
	int ret = 0;
	if (!cb)
		cb = &none;
	memset(res, 0, sizeof(*res));
	/* holes are skipped (a sparse file costs what it stores); chunks a
	 * cut-short file lost cannot be resealed: they count as failed */
	uint64_t missing = rk_cf_missing(cf, NULL, NULL);
	if (missing && start_chunk == 0) {
		res->chunks_failed += missing;
		res->first_failed = UINT64_MAX;
		res->last_error = -EUCLEAN;
	}
	for (uint64_t i = rk_cf_next_slot(cf, start_chunk, rk_cf_nchunks(cf)); i < rk_cf_nchunks(cf);
	     i = rk_cf_next_slot(cf, i + 1, rk_cf_nchunks(cf))) {
		bool changed = false;
		int k;
		res->next_chunk = i;
		if (cb->lock)
			cb->lock(cb->arg, i);
		/* cheap check first: the slot's key reference */
		int r = rk_cf_chunk_keyidx(cf, i, &k);
		if (r == 0 && k >= 0) {
			struct rk_cf_header h;
			rk_cf_get_header(cf, &h);
			bool on_target = strcmp(h.keys[k].name, target->name) == 0 &&
			                 memcmp(h.keys[k].fp, target->fp, RK_FP_BYTES) == 0;
			if (!on_target)
				r = rk_cf_rekey_chunk(cf, i, target, &changed);
		}
		if (cb->unlock)
			cb->unlock(cb->arg, i);
		res->chunks_checked++;
		if (rk_rekey_classify(r) == RK_RO_SKIPPED_UNREADABLE) {
			/* unreadable chunk: it keeps its key; fsck reports it */
			if (res->chunks_failed++ == 0)
				res->first_failed = i;
			res->last_error = r;
			continue;
		}
		if (r < 0) {
			res->last_error = r;
			ret = r;
			break;
		}
		if (changed) {
			rk_crashpoint("sweep.chunk-rekeyed");
			res->chunks_rewritten++;
			res->bytes_rewritten += cs;
		}
		if (cb->throttle) {
			r = cb->throttle(cb->arg, i, changed ? cs : 0);
			if (r < 0) {
				res->next_chunk = i + 1;
				return r;
			}
		}
	}
	if (ret == 0)
		res->next_chunk = rk_cf_nchunks(cf);
	return ret;
}

int rk_scan_key_refs(struct rk_cf *cf, const char *name, uint64_t counts[RK_CF_MAX_KEYS], uint64_t *malformed)
{
	memset(counts, 0, sizeof(uint64_t) * RK_CF_MAX_KEYS);
	if (malformed)
		*malformed = 0;
	if (name && !rk_cf_names_key(cf, name))
		return 0; /* no entry names it: no slot can be under it */
	uint64_t n = rk_cf_nchunks(cf);
	/* chunks a cut-short file lost still need the keys its clean header
	 * counted them under */
	uint64_t lost[RK_CF_MAX_KEYS];
	if (rk_cf_missing(cf, NULL, lost))
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			counts[j] += lost[j];
	for (uint64_t i = rk_cf_next_slot(cf, 0, n); i < n; i = rk_cf_next_slot(cf, i + 1, n)) {
		int k;
		int r = rk_cf_chunk_keyidx(cf, i, &k);
		if (r == -EUCLEAN) {
			if (malformed)
				(*malformed)++;
			continue;
		}
		if (r < 0)
			return r;
		if (k >= 0)
			counts[k]++;
	}
	return 0;
}

/* ---- whole-file rekey ------------------------------------------------------------------------- */
#define RK_STREAM_WINDOW (8ULL << 20)


static int tmp_write_slot(void *ctx, struct rk_cf *cf, uint64_t idx, const uint8_t *slot, size_t len, size_t old_end)
{
	(void)ctx;
	(void)old_end; /* 0: every slot of the new file starts as a hole */
	return rk_pwrite_full(rk_cf_fd(cf), slot, len, (off_t)rk_slot_off(rk_cf_slot_size(cf), idx));
}

int rk_replace_prepare(int dirfd, const char *name, const char *rel, struct rk_keyring *kr, struct rk_key *target,
                       const struct rk_replace_cb *cb, struct rk_sweep_result *res, struct rk_replace **out)
{
	struct rk_cf *in = NULL, *outcf = NULL;
	struct rk_cf_header h;
	struct statvfs vfs;
	int ret;
	memset(res, 0, sizeof(*res));
	struct rk_replace *r;
	ret = rk_replace_new(dirfd, name, rel, &r);
	*out = r;
	if (ret < 0)
		return ret;
	if (!S_ISREG(r->st.st_mode))
		return -EINVAL;
	if (r->st.st_nlink > 1)
		return -EMLINK; /* a new inode would split the links */
	/* room for a second copy, with a margin: otherwise the in-place path,
	 * which needs no extra space, is the better choice */
	if (fstatvfs(r->src, &vfs) == 0 &&
	    (uint64_t)vfs.f_bavail * vfs.f_frsize < (uint64_t)r->st.st_blocks * 512 + 64 * 1024 * 1024)
		return -ENOSPC;
	ret = rk_cf_open(r->src, rel, kr, false, &in);
	if (ret < 0)
		goto out;
	rk_cf_get_header(in, &h);
	r->tmp = rk_tmp_create(dirfd, r->tmpname, sizeof(r->tmpname));
	if (r->tmp < 0) {
		ret = r->tmp;
		r->tmpname[0] = '\0';
		rk_err("%s: cannot create a temporary file for the rekey: %s", rel, strerror(-ret));
		goto out;
	}
	ret = rk_cf_create(r->tmp, rel, kr, h.chunk_size, (enum rk_comp)h.compression, target, &outcf);
	if (ret == 0)
		ret = rk_cf_truncate(outcf, h.size, target, (enum rk_comp)h.compression);
	if (ret < 0)
		goto out;
	/* nobody sees the temporary before the rename: one pwrite per slot, no
	 * header-last ordering */
	static const struct rk_cf_writer whole = {tmp_write_slot, NULL, NULL, NULL};
	rk_cf_set_writer(outcf, &whole);
	uint64_t n = rk_cf_nchunks(in);
	uint64_t flushed = 0; /* stored bytes of both files handed to write-back / dropped */
	if (rk_cf_missing(in, NULL, NULL)) {
		/* the copy would turn the lost chunks into holes (zeros) */
		rk_err("%s: chunks are missing (the stored file was cut short); not replaced", rel);
		ret = -EUCLEAN;
		res->last_error = ret;
		goto out;
	}
	for (uint64_t i = rk_cf_next_slot(in, 0, n); i < n; i = rk_cf_next_slot(in, i + 1, n)) {
		int k = -1;
		uint64_t end = rk_slot_off(h.slot_size, i);
		if (end - flushed >= 2 * RK_STREAM_WINDOW) {
			/* streaming: start write-back of the last window, wait for the one
			 * before and drop both files' pages there, so that a sweep neither
			 * floods the page cache (the database's) nor leaves one long
			 * fsync for the end */
			uint64_t a = flushed, b = flushed + RK_STREAM_WINDOW;
			(void)sync_file_range(r->tmp, (off_t)b, RK_STREAM_WINDOW, SYNC_FILE_RANGE_WRITE);
			(void)sync_file_range(r->tmp, (off_t)a, RK_STREAM_WINDOW,
			                      SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
			(void)posix_fadvise(r->tmp, (off_t)a, RK_STREAM_WINDOW, POSIX_FADV_DONTNEED);
			(void)posix_fadvise(r->src, (off_t)a, RK_STREAM_WINDOW, POSIX_FADV_DONTNEED);
			flushed = b;
		}
		ret = rk_cf_copy_chunk(in, outcf, i, target, &k);
		res->chunks_checked++;
		if (ret < 0) {
			res->last_error = ret;
			goto out;
		}
		bool moved = k >= 0 && !(strcmp(h.keys[k].name, target->name) == 0 &&
		                         memcmp(h.keys[k].fp, target->fp, RK_FP_BYTES) == 0);
		if (moved) {
			res->chunks_rewritten++;
			res->bytes_rewritten += h.chunk_size;
		}
		rk_crashpoint("replace.chunk-copied");
		if (cb && cb->throttle) {
			ret = cb->throttle(cb->arg, i, moved ? h.chunk_size : 0);
			if (ret < 0)
				goto out;
		}
	}
	/* a sparse tail stays sparse, but the stored length is the original's */
	uint64_t want = RK_MIN((uint64_t)r->st.st_size, rk_cf_stored_len(h.chunk_size, h.size));
	if (ftruncate(r->tmp, (off_t)want) < 0) {
		ret = -errno;
		goto out;
	}
	ret = rk_copy_identity(r->src, r->tmp, &r->st, rel);
	if (ret == 0)
		ret = rk_cf_sync_new(outcf); /* writes headers only: the times stay */
	if (ret < 0)
		goto out;
	rk_crashpoint("replace.synced");
	res->next_chunk = n;
out:
	if (ret < 0 && ret != -ECANCELED && ret != -EBUSY && rk_rekey_classify(ret) != RK_RO_SKIPPED_UNREADABLE)
		rk_err("%s: whole-file rekey failed: %s; the file stays as it was", rel, rk_strerror(ret));
	rk_cf_close(outcf);
	rk_cf_close(in);
	return ret;
}
