/* Fuzz target: the walker checkpoint (DATADIR/.rekeyfs/walker, read by
 * rk_rekey_ckpt_load when the daemon starts).  What loads must format
 * (rk_rekey_ckpt_format) to a text that loads back to the same text: a
 * checkpoint the daemon writes after a restart says what it read. */
#include "config.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "rekeyfs/rekey.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct fz_box box;
static char ckpt_path[4200];
static int statefd = -1;

struct ck {
	struct rk_rekey_ckpt c;
	char filter[RK_REKEY_MAX_TABLES][RK_TABLE_PATH_MAX];
	char queued[RK_REKEY_MAX_TABLES][RK_TABLE_PATH_MAX];
	char position[PATH_MAX];
	struct rk_rekey_tstat tables[RK_REKEY_MAX_TABLES];
};
static struct ck a, b;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_quiet();
	fz_box_init(&box);
	statefd = open(box.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (statefd < 0)
		abort();
	snprintf(ckpt_path, sizeof(ckpt_path), "%s/%s", box.root, RK_REKEY_CKPT_FILE);
	return 0;
}

static int load(struct ck *k, char **text, size_t *len)
{
	memset(&k->c, 0, sizeof(k->c));
	k->c.filter = k->filter;
	k->c.queued = k->queued;
	k->c.position = k->position;
	k->c.tables = k->tables;
	k->position[0] = '\0';
	int r = rk_rekey_ckpt_load(statefd, &k->c);
	if (r < 0)
		return r;
	if (k->c.nfilter < 0 || k->c.nfilter > RK_REKEY_MAX_TABLES || k->c.ntables < 0 ||
	    k->c.ntables > RK_REKEY_MAX_TABLES || k->c.nqueued < 0 || k->c.nqueued > RK_REKEY_MAX_TABLES ||
	    strnlen(k->position, PATH_MAX) == PATH_MAX || strnlen(k->c.reason, sizeof(k->c.reason)) == sizeof(k->c.reason))
		abort();
	if (rk_rekey_ckpt_format(&k->c, text, len) < 0)
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *t1 = NULL, *t2 = NULL;
	size_t n1 = 0, n2 = 0;
	if (fz_write(ckpt_path, data, size, 0600) < 0)
		abort();
	if (load(&a, &t1, &n1) < 0)
		return 0;
	if (rk_rekey_ckpt_write(statefd, t1, n1) < 0 || load(&b, &t2, &n2) < 0)
		abort();
	if (n1 != n2 || memcmp(t1, t2, n1) != 0) {
		fprintf(stderr, "checkpoint does not round-trip:\n--- first\n%.*s--- second\n%.*s", (int)n1, t1, (int)n2, t2);
		abort();
	}
	free(t1);
	free(t2);
	return 0;
}
