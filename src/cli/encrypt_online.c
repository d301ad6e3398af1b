/* rekeyctl encrypt MOUNT [PATH...]: online encryption of plain files through
 * the daemon's control file (the job itself runs in the daemon: encrypt.c),
 * optionally waiting for it with progress. */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "rekeyfs/common.h"

static const char usage_line[] = "rekeyctl encrypt [--wait] [-q] MOUNT [PATH...]   (or: rekeyctl encrypt --cancel MOUNT)";

/* The value of "key" inside the status JSON's "encrypt" object, as a number
 * (-1 when absent) or a string. */
static long long enc_num(const char *json, const char *key)
{
	char pat[64];
	const char *obj = strstr(json, "\"encrypt\": {");
	if (!obj)
		return -1;
	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	const char *p = strstr(obj, pat);
	if (!p)
		return -1;
	p += strlen(pat);
	char *end;
	long long v = strtoll(p, &end, 10);
	return end == p ? -1 : v;
}

static void enc_str(const char *json, const char *key, char *out, size_t len)
{
	char pat[64];
	const char *obj = strstr(json, "\"encrypt\": {");
	snprintf(out, len, "?");
	if (!obj)
		return;
	snprintf(pat, sizeof(pat), "\"%s\": \"", key);
	const char *p = strstr(obj, pat);
	if (!p)
		return;
	p += strlen(pat);
	size_t n = strcspn(p, "\"");
	snprintf(out, len, "%.*s", (int)RK_MIN(n, len - 1), p);
}

/* Poll the daemon's status until job id has ended; 0 when every plain file
 * was converted, -EAGAIN when some were not (printed), other errors. */
static int wait_job(const char *root, uint64_t id, bool quiet)
{
	bool tty = !quiet && isatty(STDERR_FILENO);
	int ret = 0;
	for (;;) {
		char *json = NULL;
		ret = rkc_read_status(root, &json);
		if (ret < 0) {
			rk_err("%s: cannot read the daemon's status while waiting (did it stop?): %s", root, rk_strerror(ret));
			return ret;
		}
		long long job = enc_num(json, "job");
		char state[32];
		enc_str(json, "state", state, sizeof(state));
		long long done = enc_num(json, "files_done"), total = enc_num(json, "files_total");
		long long bdone = enc_num(json, "bytes_done"), btotal = enc_num(json, "bytes_total");
		long long failed = enc_num(json, "files_failed"), skipped = enc_num(json, "files_skipped");
		long long waiting = enc_num(json, "files_waiting");
		bool ended = job > (long long)id ||
		             (job == (long long)id && (strcmp(state, "finished") == 0 || strcmp(state, "incomplete") == 0));
		free(json);
		if (job < 0) {
			rk_err("%s: the daemon's status has no encrypt job", root);
			return -EPROTO;
		}
		if (tty)
			fprintf(stderr, "\rencrypt job %" PRIu64 ": %s, %lld/%lld files, %.1f/%.1f MiB%s%s", id, state, done,
			        total, (double)bdone / 1048576.0, (double)btotal / 1048576.0,
			        waiting > 0 ? ", waiting for open files to be closed" : "", "\033[K");
		if (ended) {
			if (tty)
				fprintf(stderr, "\n");
			if (job > (long long)id) {
				printf("encrypt job %" PRIu64 " has ended (job %lld runs now); see rekeyctl status %s\n", id, job,
				       rk_esc(root));
				return 0;
			}
			printf("encrypt job %" PRIu64 " %s: %lld of %lld plain files converted, %lld failed, %lld skipped, "
			       "%lld still open\n", id, state, done, total, failed, skipped, waiting);
			return strcmp(state, "finished") == 0 ? 0 : -EAGAIN;
		}
		struct timespec ts = {0, 250000000L};
		nanosleep(&ts, NULL);
	}
	return ret;
}

int rkc_cmd_encrypt_online(int argc, char **argv)
{
	static const struct option lo[] = {{"wait", no_argument, NULL, 'w'},       {"cancel", no_argument, NULL, 'C'},
	                                   {"quiet", no_argument, NULL, 'q'},      {"help", no_argument, NULL, 'h'},
	                                   {"keydir", required_argument, NULL, 'd'}, {0, 0, 0, 0}};
	bool wait = false, cancel = false, quiet = false;
	char *root = NULL, *rel = NULL, *reply = NULL;
	size_t cap = 64, n;
	char *cmd = NULL;
	int c, ret = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "qhd:", lo, NULL)) != -1) {
		switch (c) {
		case 'd':
			break; /* accepted as offline: online, the daemon's key directory is the one used */
		case 'w':
			wait = true;
			break;
		case 'C':
			cancel = true;
			break;
		case 'q':
			quiet = true;
			break;
		case 'h':
			return rkc_help("encrypt");
		default:
			rk_err("usage: %s", usage_line);
			return RKC_USAGE;
		}
	}
	if (argc - optind < 1 || (cancel && (wait || argc - optind > 1))) {
		rk_err("usage: %s", usage_line);
		return RKC_USAGE;
	}
	ret = rkc_mount_find(argv[optind], &root, &rel);
	if (ret < 0) {
		rk_err("%s: not a rekeyfs mount", argv[optind]);
		goto out;
	}
	if (cancel) {
		ret = rkc_print_reply(rkc_control(root, "encrypt-cancel\n", &reply), reply);
		reply = NULL;
		goto out;
	}
	cmd = malloc(cap);
	if (!cmd) {
		ret = -ENOMEM;
		goto out;
	}
	n = (size_t)snprintf(cmd, cap, "encrypt");
	/* no PATH: everything below MOUNT; a PATH is relative to the current
	 * directory (or absolute) and must be inside the same mount */
	for (int i = optind + (argc - optind > 1 ? 1 : 0); i < argc; i++) {
		char *proot = NULL, *prel = NULL, enc[PATH_MAX * 3 + 1];
		ret = rkc_mount_find(argv[i], &proot, &prel);
		if (ret == 0 && strcmp(proot, root) != 0)
			ret = -EXDEV;
		if (ret == 0)
			ret = rk_pct_encode(prel[0] ? prel : "/", enc, sizeof(enc));
		free(proot);
		free(prel);
		if (ret < 0) {
			rk_err("%s: not inside the mount %s: %s", argv[i], root, rk_strerror(ret));
			goto out;
		}
		size_t need = n + strlen(enc) + 3;
		if (need > 3500) {
			rk_err("too many paths for one request: give fewer (or a directory holding them)");
			ret = -E2BIG;
			goto out;
		}
		if (need > cap) {
			char *nc = realloc(cmd, need * 2);
			if (!nc) {
				ret = -ENOMEM;
				goto out;
			}
			cmd = nc;
			cap = need * 2;
		}
		n += (size_t)snprintf(cmd + n, cap - n, " %s", enc);
	}
	snprintf(cmd + n, cap - n, "\n");
	ret = rkc_control(root, cmd, &reply);
	uint64_t id = 0;
	const char *j = reply ? strstr(reply, "encrypt job ") : NULL;
	if (ret == 0 && j)
		id = strtoull(j + strlen("encrypt job "), NULL, 10);
	ret = rkc_print_reply(ret, reply);
	reply = NULL;
	if (ret < 0)
		goto out;
	if (!wait) {
		if (!quiet)
			printf("watch it with: rekeyctl status %s\n", rk_esc(root));
		goto out;
	}
	if (!id) {
		rk_err("%s: the daemon's reply names no encrypt job", root);
		ret = -EPROTO;
		goto out;
	}
	ret = wait_job(root, id, quiet);
	if (ret == -EAGAIN)
		ret = RKC_EXIT_FAIL;
out:
	free(cmd);
	free(reply);
	free(root);
	free(rel);
	return ret;
}
