/* rekeyfs - write the golden fixture set (tests/golden_common.c describes it).
 *
 *   tests/gen_golden OUTDIR      (from a build directory)
 *
 * writes the key files into OUTDIR/keys (mode 0600) and the fixtures into
 * OUTDIR/files and OUTDIR/files-v2.  The committed set lives in tests/golden/ of the source
 * tree; regenerating it is a format change (see tests/golden/README). */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "rekeyfs/common.h"

#include "golden_common.h"

int main(int argc, char **argv)
{
	if (argc != 2 || argv[1][0] == '-') {
		fprintf(stderr, "usage: %s OUTDIR\n"
		                "writes the golden fixture set (OUTDIR/keys, OUTDIR/files, OUTDIR/files-v2); see tests/golden/README\n",
		        argv[0]);
		return 2;
	}
	int ret = golden_generate(argv[1]);
	if (ret < 0) {
		fprintf(stderr, "%s: generating the golden fixtures into %s failed: %s\n", argv[0], argv[1],
		        rk_strerror(ret));
		return 1;
	}
	printf("wrote %zu key files to %s/keys and %zu fixtures each to %s/files (format 1) and %s/files-v2 (format 2)\n",
	       golden_nkeys, argv[1], golden_nfiles, argv[1], argv[1]);
	return 0;
}
