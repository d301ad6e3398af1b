/* rekeyfs - byte-level access to an open chunk file: pread, pwrite and
 * truncate as whole-chunk read-modify-write. */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rekeyfs/common.h"
#include "rekeyfs/format.h"
#include "rekeyfs/lockrank.h"

#include "format_int.h"


/* Make sure the partial last chunk holds no plaintext past EOF before the
 * file grows (after a crash it might).  */
static int fix_tail(struct rk_cf *cf, struct rk_key *key, enum rk_comp comp)
{
	if (cf->tail_ok)
		return 0;
	uint32_t cs = cf->hdr.chunk_size;
	uint64_t size = rk_cf_size(cf);
	if (size % cs == 0) {
		cf->tail_ok = true;
		return 0;
	}
	uint64_t idx = size / cs;
	uint8_t p[RK_SLOT_HDR];
	ssize_t n = cf_slot_pread(cf, idx, p, sizeof(p));
	if (n < 0)
		return (int)n;
	if (n == RK_SLOT_HDR && !all_zero(p, RK_SLOT_HDR) && rk_get32(p + 8) > size % cs) {
		uint8_t *buf = rk_scratch(RK_SCR_CHUNK, cs);
		int k;
		if (!buf)
			return -ENOMEM;
		int ret = rk_cf_read_chunk(cf, idx, buf, &k); /* masks past EOF */
		if (ret < 0)
			return ret;
		ret = rk_cf_write_chunk(cf, idx, buf, (uint32_t)(size % cs), key, comp);
		if (ret < 0)
			return ret;
	}
	cf->tail_ok = true;
	return 0;
}

ssize_t rk_cf_pread(struct rk_cf *cf, void *buf, size_t len, uint64_t off)
{
	uint32_t cs = cf->hdr.chunk_size;
	uint64_t size = rk_cf_size(cf);
	uint8_t *cb = rk_scratch(RK_SCR_CHUNK, cs);
	size_t done = 0;
	int k;
	if (!cb)
		return -ENOMEM;
	if (off >= size)
		return 0;
	len = (size_t)RK_MIN((uint64_t)len, size - off);
	while (done < len) {
		uint64_t pos = off + done, idx = pos / cs;
		uint32_t in = (uint32_t)(pos % cs);
		size_t n = RK_MIN((size_t)(cs - in), len - done);
		int ret;
		if (in == 0 && n == cs)
			ret = rk_cf_read_chunk(cf, idx, (uint8_t *)buf + done, &k);
		else {
			ret = rk_cf_read_chunk(cf, idx, cb, &k);
			if (ret == 0)
				memcpy((uint8_t *)buf + done, cb + in, n);
		}
		/* never a short read over a bad chunk: a caller (the kernel) would
		 * take the missing tail as zeros */
		if (ret < 0)
			return ret;
		done += n;
	}
	return (ssize_t)done;
}

ssize_t rk_cf_pwrite(struct rk_cf *cf, const void *buf, size_t len, uint64_t off, struct rk_key *key,
                     enum rk_comp comp)
{
	uint32_t cs = cf->hdr.chunk_size;
	uint8_t *cb = rk_scratch(RK_SCR_CHUNK, cs);
	size_t done = 0;
	int ret = 0, k;
	if (!cb)
		return -ENOMEM;
	if (len == 0)
		return 0;
	if (off > RK_SIZE_MAX || len > RK_SIZE_MAX - off)
		return -EFBIG;
	uint64_t size = rk_cf_size(cf);
	if (off + len > size) {
		ret = fix_tail(cf, key, comp);
		if (ret < 0)
			return ret;
	}
	while (done < len) {
		uint64_t pos = off + done, idx = pos / cs;
		uint32_t in = (uint32_t)(pos % cs);
		size_t n = RK_MIN((size_t)(cs - in), len - done);
		size = rk_cf_size(cf);
		uint64_t valid = rk_chunk_plain_len(size, cs, idx);
		if (in == 0 && len - done >= 2 * (size_t)cs) {
			/* a run of whole chunks: compressed ahead on the helper pool */
			uint64_t nfull = (len - done) / cs;
			int64_t w = cf_write_chunks(cf, idx, (const uint8_t *)buf + done, nfull, key, comp, &ret);
			done += (size_t)w * cs;
			if (ret < 0)
				break;
			continue;
		} else if (in == 0 && n == cs) {
			ret = rk_cf_write_chunk(cf, idx, (const uint8_t *)buf + done, cs, key, comp);
		} else {
			if (valid > 0)
				ret = rk_cf_read_chunk(cf, idx, cb, &k);
			else
				memset(cb, 0, cs);
			if (ret == 0) {
				memcpy(cb + in, (const uint8_t *)buf + done, n);
				uint32_t plen = (uint32_t)RK_MAX(valid, (uint64_t)in + n);
				ret = rk_cf_write_chunk(cf, idx, cb, plen, key, comp);
			}
		}
		if (ret < 0)
			break;
		done += n;
		rk_mutex_lock(&cf->lock, RK_RANK_CF);
		if (pos + n > cf->hdr.size) {
			cf->hdr.size = pos + n;
			cf->hdr_changed = true;
		}
		rk_mutex_unlock(&cf->lock);
	}
	if (done > 0)
		return (ssize_t)done;
	return ret;
}

int rk_cf_truncate(struct rk_cf *cf, uint64_t size, struct rk_key *key, enum rk_comp comp)
{
	uint32_t cs = cf->hdr.chunk_size;
	uint64_t old = rk_cf_size(cf);
	int ret = 0, k;
	if (size > RK_SIZE_MAX)
		return -EFBIG;
	if (size == old)
		return 0;
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	if (size < old && rk_chunk_count(size, cs) <= cf->miss_from && cf->miss_end > cf->miss_from) {
		/* every chunk a cut-short file lost is cut off: out of the count */
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			cf->hdr.keys[j].count -= RK_MIN(cf->hdr.keys[j].count, cf->miss_per_key[j]);
		cf->miss_end = cf->miss_from;
		cf->miss_count = 0;
		cf->counts_changed = true;
		cf->hdr_changed = true;
	}
	rk_mutex_unlock(&cf->lock);
	if (size > old) {
		ret = fix_tail(cf, key, comp);
		if (ret < 0)
			return ret;
	} else if (size % cs) {
		/* the new last chunk keeps only its first size % cs bytes */
		uint64_t idx = size / cs;
		uint8_t *cb = rk_scratch(RK_SCR_CHUNK, cs);
		int cur;
		size_t cur_end;
		if (!cb)
			return -ENOMEM;
		ret = cf_current_slot(cf, idx, &cur, &cur_end);
		if (ret < 0)
			return ret;
		if (cur >= 0) {
			ret = rk_cf_read_chunk(cf, idx, cb, &k);
			if (ret < 0)
				return ret;
			ret = rk_cf_write_chunk(cf, idx, cb, (uint32_t)(size % cs), key, comp);
			if (ret < 0)
				return ret;
		}
	}
	/* chunks wholly past the new end leave the count */
	if (size < old) {
		uint64_t first = rk_chunk_count(size, cs), last = rk_chunk_count(old, cs);
		for (uint64_t i = rk_cf_next_slot(cf, first, last); i < last; i = rk_cf_next_slot(cf, i + 1, last)) {
			int cur;
			ret = rk_cf_chunk_keyidx(cf, i, &cur);
			if (ret < 0)
				cur = -1;
			if (cur >= 0) {
				rk_mutex_lock(&cf->lock, RK_RANK_CF);
				if (cf->hdr.keys[cur].count > 0)
					cf->hdr.keys[cur].count--;
				cf->counts_changed = true;
				rk_mutex_unlock(&cf->lock);
			}
		}
	}
	rk_mutex_lock(&cf->lock, RK_RANK_CF);
	cf->hdr.size = size;
	cf->hdr_changed = true;
	/* the header with the new size goes first, then the stored data is cut:
	 * a crash in between leaves stale slots past EOF, trimmed at next open */
	ret = cf_hdr_write_locked(cf, cf->disk_dirty || cf->counts_changed);
	rk_mutex_unlock(&cf->lock);
	if (ret < 0)
		return ret;
	if (size < old && cf->writer.truncated) {
		ret = cf->writer.truncated(cf->writer.ctx, cf, rk_chunk_count(size, cs));
		if (ret < 0)
			return ret;
	}
	if (size < old) {
		uint64_t want = rk_cf_stored_len(cs, size);
		if (size % cs) {
			/* keep the whole slot of the last chunk, cut the rest */
			want = rk_slot_off(cf->hdr.slot_size, size / cs + 1);
		}
		if (ftruncate(cf->fd, (off_t)want) < 0) {
			ret = -errno;
			rk_err("%s: cannot truncate stored file: %s", cf->path, strerror(errno));
			return ret;
		}
		rk_mutex_lock(&cf->lock, RK_RANK_CF);
		cf_slots_cut_locked(cf, rk_slots_reached(want, cf->hdr.slot_size));
		rk_mutex_unlock(&cf->lock);
	}
	cf->tail_ok = true;
	return 0;
}
