/* Fuzz target: key files (rk_key_load: CIPHER:STRENGTH:BASE64KEY, one
 * line, canonical base64; key command entries are skipped: they execute a
 * program).  A key that loads must have the length its
 * strength says and must load again to the same fingerprint. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "rekeyfs/keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct fz_box box;
static char kpath[4200];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_quiet();
	fz_box_init(&box);
	snprintf(kpath, sizeof(kpath), "%s/k", box.keydir);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rk_key *k = NULL, *k2 = NULL;
	/* a key command entry runs the program it names: never from fuzzed
	 * input (libFuzzer finds the magic line through its memcmp hooks) */
	static const char cmd_magic[] = "rekeyfs-key-command";
	if (size >= sizeof(cmd_magic) - 1 && memcmp(data, cmd_magic, sizeof(cmd_magic) - 1) == 0)
		return 0;
	if (fz_write(kpath, data, size, 0600) < 0)
		abort();
	if (rk_key_load(box.keydir, "k", &k) == 0) {
		if (!k->material || k->keylen != k->bits / 8 || k->keylen == 0)
			abort();
		if (rk_key_load(box.keydir, "k", &k2) != 0 || memcmp(k->fp, k2->fp, RK_FP_BYTES) != 0)
			abort();
		rk_key_wipe(k);
	}
	rk_key_free(k);
	rk_key_free(k2);
	return 0;
}
