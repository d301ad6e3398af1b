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

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = {
		{"createkey", rkc_cmd_createkey}, {"init", rkc_cmd_init}, {"alter", rkc_cmd_alter},
		{"keys", rkc_cmd_keys},           {"encrypt", rkc_cmd_encrypt}, {"cat", rkc_cmd_cat},
		{"rekey", rkc_cmd_rekey},     {"status", rkc_cmd_status}, {"release-key", rkc_cmd_release},
		{"mark-compromised", rkc_cmd_mark_compromised}, {"unmark-compromised", rkc_cmd_unmark_compromised},
		{"fsck", rkc_cmd_fsck},           {"pause", rkc_cmd_pause},     {"resume", rkc_cmd_resume},
		{"throttle", rkc_cmd_throttle},   {"rotate", rkc_cmd_rotate},   {"metrics", rkc_cmd_metrics}, {"help", rkc_cmd_help},
	};
	rk_harden_process();
	/* the tree walk holds one directory fd per level: a deep tree needs them */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (argc < 2) {
		rkc_usage(stderr);
		return RKC_EXIT_USAGE;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		rkc_usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("rekeyctl %s (chunk-file format %d)\n", PACKAGE_VERSION, RK_FORMAT_VERSION);
		return 0;
	}
	for (size_t i = 0; i < RK_ARRAY_SIZE(cmds); i++) {
		if (strcmp(argv[1], cmds[i].name) == 0) {
			rkc_cmd_name = cmds[i].name;
			/* CMD --help / CMD -h anywhere before "--": the command's help */
			for (int a = 2; a < argc && strcmp(argv[a], "--") != 0; a++)
				if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0)
					return rkc_help(cmds[i].name) == 0 ? 0 : RKC_EXIT_USAGE;
			optind = 1;
			int ret = cmds[i].fn(argc - 1, argv + 1);
			return ret > 0 ? ret : rkc_exit_code(ret);
		}
	}
	rk_err("unknown command '%s'", argv[1]);
	rkc_usage(stderr);
	return RKC_EXIT_USAGE;
}
