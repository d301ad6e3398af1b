/* rekeyctl - the command list and each command's help: `rekeyctl help`,
 * `rekeyctl help CMD`, `rekeyctl CMD --help` and `rekeyctl CMD -h` print
 * the same text (stdout, exit 0).  Every option a command takes is listed
 * here; rekeyctl(8) has the long form. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/keys.h"

#define KEYDIR_OPT "  -d, --keydir KEYDIR  key directory (else $REKEYFS_KEYDIR, else " RK_DEFAULT_KEYDIR "); must exist\n"
#define HELP_OPT "  -h, --help           this help\n"

struct help {
	const char *cmd, *usage, *summary, *options;
};

static const struct help helps[] = {
	{"createkey", "rekeyctl createkey [-d KEYDIR] CIPHER STRENGTH NAME | [-d KEYDIR] --pkcs11 URI NAME",
	 "create a new random key file, or a key in a PKCS#11 token and its entry",
	 "  -d, --keydir KEYDIR  key directory, created (mode 0700) when missing\n"
	 "  CIPHER               AES/GCM/NoPadding or ChaCha20/Poly1305/NoPadding\n"
	 "  STRENGTH             key bits: 128 or 256 (AES), 256 (ChaCha20)\n"
	 "      --pkcs11 URI     generate an AES-256 key (sensitive, not extractable) in the token the RFC 7512\n"
	 "                       URI names and write the entry NAME naming it; the URI needs object=LABEL,\n"
	 "                       module-path=/ABS/MODULE.so and pin-source=file:/ABS/PINFILE (mode 0600;\n"
	 "                       never pin-value), e.g. 'pkcs11:token=rk;object=kek1;type=secret-key?\n"
	 "                       module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/rekeyfs/pin'\n" HELP_OPT},
	{"init", "rekeyctl init [-d KEYDIR] --key NAME [--chunk-kb N] [--compression snappy|none] DATADIR",
	 "make DATADIR a rekeyfs data directory (its root table under key NAME)",
	 KEYDIR_OPT "  -k, --key NAME       target key of the root table (required)\n"
	            "  -c, --chunk-kb N     chunk size in KiB, a power of two from 4 to 1024 (default 64)\n"
	            "  -z, --compression C  snappy (default) or none\n" HELP_OPT},
	{"alter", "rekeyctl alter [-d KEYDIR] DATADIR_OR_MOUNT[/TABLE] --key NAME [--chunk-kb N] [--compression C]",
	 "set a table's target key, chunk size or compression (creates the table)",
	 KEYDIR_OPT "  -k, --key NAME       new target key of the table\n"
	            "  -c, --chunk-kb N     chunk size of new files in KiB (power of two, 4 to 1024)\n"
	            "  -z, --compression C  snappy or none, for new chunks\n" HELP_OPT},
	{"keys", "rekeyctl keys [-d KEYDIR] [--json] [DATADIR]",
	 "list the key directory, or DATADIR's keys with states and coverage",
	 KEYDIR_OPT "  -j, --json           JSON (schema rekeyfs-keys/1) with host, data_dir, mount, time\n" HELP_OPT},
	{"encrypt",
	 "rekeyctl encrypt [-d KEYDIR] [-q] DATADIR [PATH...]\n"
	 "       rekeyctl encrypt [--wait] [-q] MOUNT [PATH...]\n"
	 "       rekeyctl encrypt --cancel MOUNT",
	 "turn plain files into chunk files: offline (DATADIR unmounted) or online (the daemon of MOUNT converts "
	 "closed files, retries open ones)",
	 KEYDIR_OPT "  -q, --quiet          print only the summary of failures (online: no progress line)\n"
	            "  --wait               online: wait for the job; exit 0 when every plain file was converted,\n"
	            "                       1 when some stay plain\n"
	            "  --cancel             online: stop the running job, drop queued requests\n" HELP_OPT},
	{"cat", "rekeyctl cat [-d KEYDIR] FILE", "decrypt one stored file to stdout", KEYDIR_OPT HELP_OPT},
	{"rekey", "rekeyctl rekey [-d KEYDIR] [-q] [--wait] [--progress-json] DATADIR_OR_MOUNT [TABLE...]",
	 "rewrite chunks under their table's target key (every table, or the TABLEs)",
	 KEYDIR_OPT "  -q, --quiet          no progress bar, no summary lines\n"
	            "  -w, --wait           on a mount: wait until the serving sweep ends; exit 0 when every\n"
	            "                       chunk of the tables is on its target key, 1 otherwise\n"
	            "                       (offline rekey always waits: accepted, changes nothing)\n"
	            "  -j, --progress-json  one JSON object per line on stdout while waiting (see rekeyctl(8))\n" HELP_OPT},
	{"rotate",
	 "rekeyctl rotate [-d KEYDIR] [--from OLD] --to NEW [--rewrap | --reseal] [--release] [--wait] [--progress-json] "
	 "MOUNT_OR_DATADIR",
	 "alter every table under OLD (every table without --from) to NEW, rekey them, verify, release OLD",
	 KEYDIR_OPT "  -f, --from OLD       only tables whose target key is OLD (without it: every table)\n"
	            "  -t, --to NEW         the new target key (required)\n"
	            "  -r, --release        after a verified sweep, release OLD (implies --wait; needs --from)\n"
	            "  -W, --rewrap         rewrap the data keys under OLD to NEW, headers only, no chunk\n"
	            "                       rewritten (needs --from; NEW must have OLD's cipher and strength);\n"
	            "                       on a mount the daemon's walker does it (rate, pause, progress,\n"
	            "                       resumed after a restart); routine rotation, not for a leaked key\n"
	            "      --reseal         the default, said explicitly: re-encrypt every chunk under fresh\n"
	            "                       data keys (for a key that may have leaked); not with --rewrap\n"
	            "  -w, --wait           wait for the sweep and verify that no chunk is left under OLD\n"
	            "  -j, --progress-json  JSON progress lines on stdout while waiting\n"
	            "  -q, --quiet          no progress bar\n" HELP_OPT},
	{"status", "rekeyctl status [--json] [--refresh] MOUNT...",
	 "walker state, progress, rates, errors and the cached coverage of mounts",
	 "  -j, --json           the daemon's status JSON (schema rekeyfs-status/1) with host, data_dir, mount,\n"
	 "                       time first; several mounts: one object per line (JSON Lines)\n"
	 "  -r, --refresh        recount the coverage first (a headers-only scan by the daemon, as\n"
	 "                       metrics --refresh); without it the coverage shown is the last one counted\n" HELP_OPT},
	{"metrics", "rekeyctl metrics [--refresh] [--textfile FILE] MOUNT...",
	 "Prometheus text exposition of mounts (one exposition, series labelled by mount)",
	 "  -r, --refresh        rescan the daemons' cached coverage first\n"
	 "  -o, --textfile FILE  write FILE atomically (node exporter textfile collector)\n" HELP_OPT},
	{"pause", "rekeyctl pause MOUNT", "pause the mount's running sweep (takes effect within a second)", HELP_OPT},
	{"resume", "rekeyctl resume MOUNT", "resume a paused sweep", HELP_OPT},
	{"throttle", "rekeyctl throttle MOUNT RATE",
	 "set the walker's rate limit: N, NK/NM/NG or NKiB/NMiB/NGiB (1024), NKB/NMB/NGB (1000), 0 or unlimited",
	 HELP_OPT},
	{"release-key", "rekeyctl release-key [-d KEYDIR] NAME DATADIR_OR_MOUNT...",
	 "retire key NAME once no chunk is under it (every header and the slot headers of the files naming it are read)", KEYDIR_OPT HELP_OPT},
	{"mark-compromised", "rekeyctl mark-compromised [-d KEYDIR] NAME DATADIR_OR_MOUNT...",
	 "mark key NAME compromised: data keys it ever wrapped stay exposed until a reseal (not a rewrap)",
	 KEYDIR_OPT HELP_OPT},
	{"unmark-compromised", "rekeyctl unmark-compromised [-d KEYDIR] NAME DATADIR_OR_MOUNT...",
	 "clear a mark-compromised made by mistake", KEYDIR_OPT HELP_OPT},
	{"fsck", "rekeyctl fsck [-d KEYDIR] [--deep] [--json] [--key NAME] [--table T] [--verbose] DATADIR_OR_MOUNT...",
	 "coverage report; exit 0 clean, 1 chunks under old keys, 4 corrupt",
	 KEYDIR_OPT "  -D, --deep           decrypt every chunk (authenticates the data)\n"
	            "  -j, --json           the report as JSON (schema rekeyfs-fsck)\n"
	            "  -k, --key NAME       may NAME be released? (a key of the data directory's registry)\n"
	            "  -t, --table T        only table T (a table of the data directory)\n"
	            "  -v, --verbose        list every file, not only the first ones\n" HELP_OPT},
	{"help", "rekeyctl help [COMMAND]", "list the commands, or describe COMMAND", HELP_OPT},
};

static const struct help *help_find(const char *cmd)
{
	for (size_t i = 0; i < RK_ARRAY_SIZE(helps); i++)
		if (strcmp(helps[i].cmd, cmd) == 0)
			return &helps[i];
	return NULL;
}

void rkc_usage(FILE *f)
{
	fprintf(f, "usage: rekeyctl COMMAND [OPTIONS] ARGS\n\ncommands:\n");
	for (size_t i = 0; i < RK_ARRAY_SIZE(helps); i++)
		fprintf(f, "  %-12s %s\n", helps[i].cmd, helps[i].summary);
	fprintf(f, "\nrekeyctl help COMMAND (or rekeyctl COMMAND --help) describes a command and its options.\n"
	           "Key directory: -d KEYDIR, else $REKEYFS_KEYDIR, else %s.\nSee rekeyctl(8).\n",
	        RK_DEFAULT_KEYDIR);
}

const char *rkc_usage_line(const char *cmd)
{
	const struct help *h = help_find(cmd);
	return h ? h->usage : "rekeyctl COMMAND [OPTIONS] ARGS";
}

int rkc_help(const char *cmd)
{
	const struct help *h = help_find(cmd);
	if (!h) {
		rk_err("unknown command '%s' (rekeyctl help lists them)", cmd);
		return RKC_USAGE;
	}
	printf("usage: %s\n\n%s\n\noptions:\n%s\nSee rekeyctl(8).\n", h->usage, h->summary, h->options);
	return 0;
}

int rkc_cmd_help(int argc, char **argv)
{
	if (argc > 2) {
		rk_err("usage: %s", rkc_usage_line("help"));
		return RKC_USAGE;
	}
	if (argc == 2)
		return rkc_help(argv[1]);
	rkc_usage(stdout);
	return 0;
}

int rkc_bad_option(const char *cmd, const char *opt)
{
	rk_err("%s does not take the option %s; usage: %s (rekeyctl help %s)", cmd, opt, rkc_usage_line(cmd), cmd);
	return RKC_USAGE;
}

int rkc_check_keydir(const char *cmd, const char *keydir, bool given)
{
	struct stat st;
	if (!given || !keydir)
		return 0;
	if (stat(keydir, &st) < 0) {
		rk_err("%s: key directory %s: %s", cmd, keydir, strerror(errno));
		return RKC_USAGE;
	}
	if (!S_ISDIR(st.st_mode)) {
		rk_err("%s: key directory %s is not a directory", cmd, keydir);
		return RKC_USAGE;
	}
	return 0;
}
