/* Fuzz target: journal records and their replay.  The input is the
 * journal of a sandbox data directory (fuzz_common.h: /t1 under the fixed
 * key and file id); every run puts /t1 back as it was, writes the input as
 * .rekeyfs/journal and replays it (rk_journal_replay: header and record
 * MACs, targets, slot layout).  A copy of /t1 outside the data directory
 * (same file id, reachable by a path with "..", a symlink or a file handle
 * only) must stay byte-identical whatever the journal says. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/journal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct fz_box box;
static uint8_t *t1;
static size_t t1_len;
static char t1_path[4200], j_path[4200], victim[4200], link_path[4200];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_quiet();
	fz_box_init(&box);
	fz_box_datadir(&box);
	snprintf(t1_path, sizeof(t1_path), "%s/t1", box.data);
	snprintf(j_path, sizeof(j_path), "%s/.rekeyfs/%s", box.data, RK_JOURNAL_NAME);
	snprintf(victim, sizeof(victim), "%s/victim", box.root);
	snprintf(link_path, sizeof(link_path), "%s/link", box.data);
	t1 = fz_read(t1_path, &t1_len);
	if (!t1 || fz_write(victim, t1, t1_len, 0600) < 0 || symlink(victim, link_path) < 0)
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rk_datadir *dd = NULL;
	uint64_t applied = 0;
	if (fz_write(t1_path, t1, t1_len, 0600) < 0 || fz_write(j_path, data, size, 0600) < 0)
		abort();
	if (rk_datadir_open(box.data, RK_DD_EXCLUSIVE, &dd) < 0)
		abort();
	(void)rk_journal_pending(dd, NULL);
	(void)rk_journal_replay(dd, box.kr, &applied);
	rk_datadir_close(dd);
	size_t vn = 0;
	uint8_t *v = fz_read(victim, &vn);
	if (!v || vn != t1_len || memcmp(v, t1, vn) != 0)
		abort(); /* a journal wrote outside the data directory */
	free(v);
	return 0;
}
