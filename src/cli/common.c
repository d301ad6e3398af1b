/* rekeyctl - helpers shared by the command modules: exit codes, the
 * common options, opening a data directory offline, the progress bar. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/rekey.h"

/* exit codes shared by all commands (see rekeyctl(8)) */
int rkc_exit_code(int err)
{
	if (err == 0)
		return RKC_EXIT_OK;
	if (err == RKC_USAGE)
		return RKC_EXIT_USAGE;
	return RKC_EXIT_FAIL;
}

/* ---- common option parsing for datadir commands ------------------------------- */
/* An option getopt_long returned that CMD refuses: c is '?' (unknown),
 * ':' (missing value) or a known option CMD does not take; the message
 * names it as typed ("-x", "--name") or as "-c (--long)". */
int rkc_opt_refused(const char *cmd, int c, char **argv, const struct option *lo)
{
	char buf[128];
	const char *name = argv[optind - 1];
	if (c == '?' || c == ':') {
		if (optopt && optopt != '?') {
			const char *ln = NULL;
			for (const struct option *o = lo; o && o->name; o++)
				if (o->val == optopt)
					ln = o->name;
			if (ln)
				snprintf(buf, sizeof(buf), "-%c (--%s)", optopt, ln);
			else
				snprintf(buf, sizeof(buf), "-%c", optopt);
			name = buf;
		}
		if (c == ':') {
			rk_err("%s: option %s needs a value; usage: %s", cmd, name, rkc_usage_line(cmd));
			return RKC_USAGE;
		}
		return rkc_bad_option(cmd, name);
	}
	for (const struct option *o = lo; o && o->name; o++)
		if (o->val == c) {
			snprintf(buf, sizeof(buf), "-%c (--%s)", c, o->name);
			name = buf;
		}
	return rkc_bad_option(cmd, name);
}

/* allowed: the short names of the options CMD takes (d k c z j D v q t) */
int rkc_parse_common(int argc, char **argv, struct rkc_opts *o, const char *cmd, const char *allowed)
{
	int c;
	static const struct option lo[] = {{"keydir", required_argument, NULL, 'd'},
	                                   {"key", required_argument, NULL, 'k'},
	                                   {"chunk-kb", required_argument, NULL, 'c'},
	                                   {"compression", required_argument, NULL, 'z'},
	                                   {"json", no_argument, NULL, 'j'},
	                                   {"deep", no_argument, NULL, 'D'},
	                                   {"verbose", no_argument, NULL, 'v'},
	                                   {"quiet", no_argument, NULL, 'q'},
	                                   {"table", required_argument, NULL, 't'},
	                                   {"help", no_argument, NULL, 'h'},
	                                   {0, 0, 0, 0}};
	o->comp = -1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":d:k:c:z:jDvqt:h", lo, NULL)) != -1) {
		if (c == 'h')
			exit(rkc_help(cmd) == 0 ? 0 : RKC_EXIT_USAGE);
		if (c == '?' || c == ':' || !strchr(allowed, c))
			return rkc_opt_refused(cmd, c, argv, lo);
		switch (c) {
		case 'd':
			o->keydir = optarg;
			break;
		case 'k':
			o->key = optarg;
			break;
		case 'c': {
			uint64_t v;
			if (rk_parse_u64(optarg, 1024, &v) < 0 || v < 4 || (v & (v - 1))) {
				rk_err("--chunk-kb %s: use a power of two from 4 to 1024", optarg);
				return RKC_USAGE;
			}
			o->chunk_kb = (uint32_t)v;
			break;
		}
		case 'z': {
			enum rk_comp z;
			if (rk_comp_parse(optarg, &z) < 0) {
				rk_err("--compression %s: use snappy or none", optarg);
				return RKC_USAGE;
			}
			o->comp = (int)z;
			break;
		}
		case 'j':
			o->json = true;
			break;
		case 'D':
			o->deep = true;
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'q':
			o->quiet = true;
			break;
		default: /* 't' */
			o->table = optarg;
			break;
		}
	}
	bool given = o->keydir != NULL;
	o->keydir = rk_keydir_resolve(o->keydir);
	if (rkc_check_keydir(cmd, o->keydir, given) < 0)
		return RKC_USAGE;
	rkc_set_keydir(o->keydir);
	return 0;
}

/* -d KEYDIR, -q, --json for release-key and status (quiet and json NULL
 * when CMD does not take them) */
int rkc_parse_d(int argc, char **argv, const char *cmd, const char **keydir, bool *quiet, bool *json)
{
	static const struct option lo[] = {{"keydir", required_argument, NULL, 'd'},
	                                   {"quiet", no_argument, NULL, 'q'},
	                                   {"json", no_argument, NULL, 'j'},
	                                   {"help", no_argument, NULL, 'h'},
	                                   {0, 0, 0, 0}};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":d:qjh", lo, NULL)) != -1) {
		if (c == 'h')
			exit(rkc_help(cmd) == 0 ? 0 : RKC_EXIT_USAGE);
		if (c == 'd' && keydir)
			*keydir = optarg;
		else if (c == 'q' && quiet)
			*quiet = true;
		else if (c == 'j' && json)
			*json = true;
		else
			return rkc_opt_refused(cmd, c, argv, lo);
	}
	if (keydir) {
		bool given = *keydir != NULL;
		*keydir = rk_keydir_resolve(*keydir);
		if (rkc_check_keydir(cmd, *keydir, given) < 0)
			return RKC_USAGE;
	}
	return 0;
}

/* the key directory of the running command (journal replay when the
 * caller has no keyring) */
static const char *cli_keydir;
const char *rkc_cmd_name = "rekeyctl";

void rkc_set_keydir(const char *keydir) { cli_keydir = keydir; }

/* Open a data directory for an offline command: refuses while a daemon
 * holds it, replays the journal first (authenticated with a key from kr,
 * or from the command's key directory when kr is NULL).  The library's
 * rk_open_offline does it. */
int rkc_open_offline(const char *dir, enum rk_dd_lock lock, struct rk_keyring *kr, struct rk_datadir **out)
{
	int ret = rkc_refuse_mounted(dir, rkc_cmd_name);
	if (ret < 0)
		return ret;
	return rk_open_offline(dir, lock, kr, cli_keydir, false, out);
}

/* ---- progress bar ------------------------------------------------------------------------ */
double rkc_since(const struct timespec *a)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - a->tv_sec) + (double)(now.tv_nsec - a->tv_nsec) / 1e9;
}

void rkc_progress_init(struct rkc_progress *p, const char *what, uint64_t total)
{
	memset(p, 0, sizeof(*p));
	p->tty = isatty(STDERR_FILENO);
	p->total = total;
	p->what = what;
	clock_gettime(CLOCK_MONOTONIC, &p->t0);
	p->last = p->t0;
}

void rkc_progress_add(struct rkc_progress *p, uint64_t bytes)
{
	p->done += bytes;
	if (!p->tty || rkc_since(&p->last) < 0.2)
		return;
	clock_gettime(CLOCK_MONOTONIC, &p->last);
	double el = rkc_since(&p->t0), rate = el > 0 ? (double)p->done / el : 0;
	double pct = p->total ? 100.0 * (double)p->done / (double)p->total : 0;
	if (pct > 100)
		pct = 100;
	double left = rate > 0 && p->total > p->done ? (double)(p->total - p->done) / rate : 0;
	int bars = (int)(pct / 5);
	char bar[21];
	for (int i = 0; i < 20; i++)
		bar[i] = i < bars ? '#' : '.';
	bar[20] = '\0';
	fprintf(stderr, "\r%s [%s] %5.1f%%  %8.1f MiB  %7.1f MiB/s  %4.0fs left ", p->what, bar, pct,
	        (double)p->done / 1048576.0, rate / 1048576.0, left);
	fflush(stderr);
}

void rkc_progress_done(struct rkc_progress *p)
{
	if (p->tty) {
		p->last.tv_sec = 0;
		rkc_progress_add(p, 0);
		fputc('\n', stderr);
	}
}

