/* rekeyfs - chunk-by-chunk rekey of a chunk file. */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "rekeyfs/common.h"
#include "rekeyfs/sweep.h"

int rk_sweep_file(struct rk_cf *cf, struct rk_key *target, const struct rk_sweep_cb *cb, uint64_t start_chunk,
                  struct rk_sweep_result *res)
{
	static const struct rk_sweep_cb none = {0};
	uint32_t cs = rk_cf_chunk_size(cf);
	int ret = 0;
	if (!cb)
		cb = &none;
	memset(res, 0, sizeof(*res));
	for (uint64_t i = start_chunk; i < rk_cf_nchunks(cf); i++) {
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
		if (r == -EUCLEAN || r == -ENOKEY || r == -EKEYREVOKED || r == -EKEYREJECTED) {
			/* unreadable chunk: it keeps its key; fsck reports it */
			res->chunks_failed++;
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
			r = cb->throttle(cb->arg, changed ? cs : 0);
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

int rk_scan_key_refs(struct rk_cf *cf, uint64_t counts[RK_CF_MAX_KEYS], uint64_t *malformed)
{
	memset(counts, 0, sizeof(uint64_t) * RK_CF_MAX_KEYS);
	if (malformed)
		*malformed = 0;
	uint64_t n = rk_cf_nchunks(cf);
	for (uint64_t i = 0; i < n; i++) {
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
