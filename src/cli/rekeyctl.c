/* rekeyctl - the administrator's tool for rekeyfs data directories: parses
 * the command line and dispatches to the command modules. */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"
#include "cli.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: rekeyctl COMMAND [OPTIONS] ARGS\n"
	        "\n"
	        "commands:\n"
	        "  createkey [-d KEYDIR] CIPHER STRENGTH NAME   create a new random key file\n"
	        "  init [-d KEYDIR] --key NAME [--chunk-kb N] [--compression snappy|none] DATADIR\n"
	        "  alter [-d KEYDIR] DATADIR_OR_MOUNT[/TABLE] --key NAME [--chunk-kb N] [--compression C]\n"
	        "  keys [-d KEYDIR] [DATADIR]                    list keys, fingerprints, states, coverage\n"
	        "  encrypt [-d KEYDIR] DATADIR [PATH...]        turn plain files into chunk files\n"
	        "  cat [-d KEYDIR] FILE                         decrypt one stored file to stdout\n"
	        "  rekey [-d KEYDIR] [-q] DATADIR_OR_MOUNT [TABLE...]  rewrite chunks under their table's target key\n"
	        "  status [--json] MOUNT                        walker state, progress, rates, errors\n"
	        "  release-key [-d KEYDIR] NAME DATADIR_OR_MOUNT...   retire a key no chunk is under\n"
	        "  fsck [-d KEYDIR] [--deep] [--json] [--key NAME] [--table T] [--verbose] DATADIR_OR_MOUNT\n"
	        "                                               coverage report; exit 0 clean, 1 old keys, 4 corrupt\n"
	        "\n"
	        "Key directory: -d KEYDIR, else $REKEYFS_KEYDIR, else %s.\n"
	        "See rekeyctl(8).\n",
	        RK_DEFAULT_KEYDIR);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = {
		{"createkey", rkc_cmd_createkey}, {"init", rkc_cmd_init}, {"alter", rkc_cmd_alter},
		{"keys", rkc_cmd_keys},           {"encrypt", rkc_cmd_encrypt}, {"cat", rkc_cmd_cat},
		{"rekey", rkc_cmd_rekey},     {"status", rkc_cmd_status}, {"release-key", rkc_cmd_release},
		{"fsck", rkc_cmd_fsck},
	};
	rk_harden_process();
	/* the tree walk holds one directory fd per level: a deep tree needs them */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (argc < 2) {
		usage(stderr);
		return RKC_EXIT_USAGE;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("rekeyctl %s (chunk-file format %d)\n", PACKAGE_VERSION, RK_FORMAT_VERSION);
		return 0;
	}
	for (size_t i = 0; i < RK_ARRAY_SIZE(cmds); i++) {
		if (strcmp(argv[1], cmds[i].name) == 0) {
			optind = 1;
			int ret = cmds[i].fn(argc - 1, argv + 1);
			return ret > 0 ? ret : rkc_exit_code(ret);
		}
	}
	rk_err("unknown command '%s'", argv[1]);
	usage(stderr);
	return RKC_EXIT_USAGE;
}
