/* Fuzz target: the data directory's state files - the table policy and
 * the key registry (datadir.c), read by rk_datadir_open from a sandbox
 * data directory.  The input is the policy, then a NUL byte, then the
 * registry (no NUL: the registry is empty).  What opens must save and open
 * again to the same tables and keys (rk_policy_save, rk_registry_save), and
 * every table must be found by rk_policy_lookup. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "rekeyfs/datadir.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct fz_box box;
static char pol_path[4200], keys_path[4200];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_quiet();
	fz_box_init(&box);
	fz_box_datadir(&box);
	snprintf(pol_path, sizeof(pol_path), "%s/.rekeyfs/policy", box.data);
	snprintf(keys_path, sizeof(keys_path), "%s/.rekeyfs/keys", box.data);
	return 0;
}

static void same(const struct rk_datadir *a, const struct rk_datadir *b)
{
	if (a->ntables != b->ntables || a->nkeys != b->nkeys)
		abort();
	for (size_t i = 0; i < a->ntables; i++) {
		const struct rk_table *x = &a->tables[i], *y = &b->tables[i];
		if (strcmp(x->path, y->path) || strcmp(x->key, y->key) || x->chunk_size != y->chunk_size || x->comp != y->comp)
			abort();
	}
	for (size_t i = 0; i < a->nkeys; i++) {
		const struct rk_regent *x = &a->keys[i], *y = &b->keys[i];
		if (strcmp(x->name, y->name) || x->cipher != y->cipher || x->bits != y->bits || x->state != y->state ||
		    memcmp(x->fp, y->fp, RK_FP_BYTES))
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rk_datadir *dd = NULL, *dd2 = NULL;
	const uint8_t *nul = memchr(data, 0, size);
	size_t plen = nul ? (size_t)(nul - data) : size;
	if (fz_write(pol_path, data, plen, 0644) < 0 ||
	    fz_write(keys_path, nul ? nul + 1 : data, nul ? size - plen - 1 : 0, 0644) < 0)
		abort();
	if (rk_datadir_open(box.data, RK_DD_EXCLUSIVE, &dd) < 0)
		return 0;
	for (size_t i = 0; i < dd->ntables; i++) {
		const struct rk_table *t = rk_policy_lookup(dd, dd->tables[i].path);
		if (!t || strcmp(t->path, dd->tables[i].path) != 0)
			abort();
	}
	if (!rk_policy_lookup(dd, "/some/file"))
		abort(); /* the root table covers everything */
	if (rk_policy_save(dd) < 0 || rk_registry_save(dd) < 0)
		abort();
	if (rk_datadir_open(box.data, RK_DD_NOLOCK, &dd2) < 0)
		abort(); /* what it saved must open */
	same(dd, dd2);
	rk_datadir_close(dd2);
	rk_datadir_close(dd);
	return 0;
}
