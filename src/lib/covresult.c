/* rekeyfs - the results of a coverage scan: names of statuses and
 * problems, the exposure rule of a compromised key, queries, freeing.
 * (The scan itself: coverage.c.) */
#include "config.h"

#include <stdlib.h>

#include "rekeyfs/common.h"
#include "rekeyfs/coverage.h"
#include "rekeyfs/format.h"

const char *rk_cov_keystat_name(enum rk_cov_keystat s)
{
	static const char *const names[] = {[RK_COVK_OK] = "ok",           [RK_COVK_MISSING] = "missing",
	                                     [RK_COVK_RELEASED] = "released", [RK_COVK_CHANGED] = "changed",
	                                     [RK_COVK_REFUSED] = "refused"};
	return (unsigned)s < RK_ARRAY_SIZE(names) && names[s] ? names[s] : "unchecked";
}

const char *rk_cov_problem_name(enum rk_cov_problem_kind k)
{
	static const char *const names[] = {
		[RK_COVP_CORRUPT_HEADER] = "corrupt-header", [RK_COVP_UNSUPPORTED_VERSION] = "unsupported-version",
		[RK_COVP_IO] = "io-error",                   [RK_COVP_CORRUPT_CHUNK] = "corrupt-chunk",
		[RK_COVP_MALFORMED_SLOT] = "malformed-slot", [RK_COVP_MISSING_CHUNKS] = "missing-chunks",
		[RK_COVP_DAMAGED_HEADER_COPY] = "damaged-header-copy"};
	return (unsigned)k < RK_ARRAY_SIZE(names) && names[k] ? names[k] : "unknown";
}

bool rk_cov_entry_exposed(const struct rk_cf_header *h, const struct rk_cf_keyent *e, const uint8_t *fp)
{
	if (memcmp(e->fp, fp, RK_FP_BYTES) == 0)
		return true; /* wrapped under it now, or (v1) derived from it */
	if (h->version < RK_FORMAT_V2)
		return false;
	if (e->wflags & RK_WF_HIST_OVERFLOW)
		return true; /* earlier KEKs are unknown: conservatively exposed */
	for (int i = 0; i < e->hist_n && i < RK_WRAP_HIST; i++)
		if (memcmp(e->hist[i], fp, RK_FP_BYTES) == 0)
			return true;
	return false;
}

static void table_free(struct rk_cov_table *t, size_t nexp)
{
	for (size_t i = 0; t->exposed && i < nexp; i++) {
		for (size_t j = 0; j < t->exposed[i].nnames; j++)
			free(t->exposed[i].names[j]);
		free(t->exposed[i].names);
	}
	free(t->exposed);
	for (size_t i = 0; i < t->nkeys; i++) {
		for (size_t j = 0; j < t->keys[i].nnames; j++)
			free(t->keys[i].names[j]);
		free(t->keys[i].names);
	}
	free(t->keys);
	for (size_t i = 0; i < t->noff_target; i++)
		free(t->off_target[i]);
	free(t->off_target);
}

void rk_coverage_free(struct rk_cov *c)
{
	if (!c)
		return;
	if (c->tables)
		for (size_t i = 0; i < c->ntables; i++)
			table_free(&c->tables[i], c->nregistry);
	free(c->tables);
	table_free(&c->total, c->nregistry);
	for (size_t i = 0; i < c->nproblems; i++) {
		free(c->problems[i].path);
		free(c->problems[i].detail);
	}
	free(c->problems);
	for (size_t i = 0; i < c->query.nnames; i++)
		free(c->query.names[i]);
	free(c->query.names);
	free(c->registry);
	free(c->datadir);
	free(c->keydir);
	free(c);
}

/* summed over the tables (every file counted is in one table) */
uint64_t rk_cov_key_chunks(const struct rk_cov *c, const char *name)
{
	uint64_t n = 0;
	for (size_t t = 0; t < c->ntables; t++)
		for (size_t i = 0; i < c->tables[t].nkeys; i++)
			if (strcmp(c->tables[t].keys[i].name, name) == 0)
				n += c->tables[t].keys[i].chunks;
	return n;
}

uint64_t rk_cov_key_wrapped(const struct rk_cov *c, const char *name)
{
	uint64_t n = 0;
	for (size_t t = 0; t < c->ntables; t++)
		for (size_t i = 0; i < c->tables[t].nkeys; i++)
			if (strcmp(c->tables[t].keys[i].name, name) == 0)
				n += c->tables[t].keys[i].wrapped_files;
	return n;
}
