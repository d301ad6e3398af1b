/* rekeyctl internals shared between command modules. */
#ifndef REKEYCTL_CLI_H
#define REKEYCTL_CLI_H

#include "rekeyfs/datadir.h"
#include "rekeyfs/keys.h"

/* Exit codes (rekeyctl(8), EXIT STATUS). */
enum {
	RKC_EXIT_OK = 0,
	RKC_EXIT_FAIL = 1,  /* the operation failed (message printed) */
	RKC_EXIT_USAGE = 2, /* bad usage or arguments */
};

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* returned by commands for bad usage or arguments: exit status 2 */
#define RKC_USAGE (-100000)

/* the running command's name (for messages) */
extern const char *rkc_cmd_name;

/* common.c: exit codes, options, offline open, progress bar */
int rkc_exit_code(int err);

/* the options of the data directory commands */
struct rkc_opts {
	const char *keydir;
	const char *key;
	uint32_t chunk_kb;
	int comp;
	bool json, deep, verbose, quiet;
	const char *table;
};
int rkc_parse_common(int argc, char **argv, struct rkc_opts *o, const char *cmd, const char *allowed);
/* the command's key directory (journal replay when there is no keyring) */
void rkc_set_keydir(const char *keydir);

/* online.c: talking to a mounted daemon */
bool rkc_is_mount(const char *path);
int rkc_mount_find(const char *path, char **root, char **rel);
int rkc_control(const char *mnt, const char *cmd, char **reply);
int rkc_read_status(const char *mnt, char **json);
int rkc_online_alter(const char *target, const char *key, uint32_t chunk_kb, int comp);
/* print the daemon's reply (ok: stdout, error: stderr); frees it, returns ret */
int rkc_print_reply(int ret, char *reply);

/* admin.c: the data directory commands */
int rkc_cmd_createkey(int argc, char **argv);
int rkc_cmd_init(int argc, char **argv);
int rkc_cmd_alter(int argc, char **argv);
int rkc_cmd_keys(int argc, char **argv);
int rkc_cmd_encrypt(int argc, char **argv);
int rkc_cmd_cat(int argc, char **argv);
/* encrypt_online.c: rekeyctl encrypt MOUNT (the daemon converts) */
int rkc_cmd_encrypt_online(int argc, char **argv);

/* rekey_cmd.c: rekey and release-key, online and offline */
int rkc_offline_release(const char *dir, const char *name, FILE *out);
int rkc_cmd_rekey(int argc, char **argv);
int rkc_cmd_release(int argc, char **argv);
int rkc_cmd_mark_compromised(int argc, char **argv);
int rkc_cmd_unmark_compromised(int argc, char **argv);

/* status.c */
/* -d KEYDIR, -q, --json (quiet and json may be NULL when not accepted) */
int rkc_parse_d(int argc, char **argv, const char *cmd, const char **keydir, bool *quiet, bool *json);
int rkc_cmd_status(int argc, char **argv);
/* fsck.c: returns its own exit status (rekeyfs/fsck.h), never a negative errno */
int rkc_cmd_fsck(int argc, char **argv);

/* a progress bar on stderr when it is a terminal, silent otherwise */
struct rkc_progress {
	bool tty;
	uint64_t total, done;
	struct timespec t0, last;
	const char *what;
};
void rkc_progress_init(struct rkc_progress *p, const char *what, uint64_t total);
void rkc_progress_add(struct rkc_progress *p, uint64_t bytes);
void rkc_progress_done(struct rkc_progress *p);
/* seconds since a (CLOCK_MONOTONIC) */
double rkc_since(const struct timespec *a);
int rkc_open_offline(const char *dir, enum rk_dd_lock lock, struct rk_keyring *kr, struct rk_datadir **out);

/* json.c: a small JSON reader for the daemon's status */
enum rkc_jtype { RKC_J_NULL, RKC_J_BOOL, RKC_J_NUM, RKC_J_STR, RKC_J_ARR, RKC_J_OBJ };
struct rkc_json {
	enum rkc_jtype type;
	char *key; /* member name inside an object */
	char *s;   /* RKC_J_STR */
	double num; /* RKC_J_NUM, RKC_J_BOOL (0/1) */
	struct rkc_json **kids; /* RKC_J_ARR, RKC_J_OBJ */
	size_t n, cap;
};
int rkc_json_parse(const char *text, struct rkc_json **out);
void rkc_json_free(struct rkc_json *v);
const struct rkc_json *rkc_json_get(const struct rkc_json *obj, const char *key);
bool rkc_json_num(const struct rkc_json *obj, const char *key, double *out);
const char *rkc_json_str(const struct rkc_json *obj, const char *key);
void rkc_json_put_str(FILE *f, const char *s);

/* fleet.c: "host", "data_dir", "mount", "time" first in a JSON report;
 * one_line: compacted to one line (JSON Lines, several mounts) */
void rkc_fleet_time(char *buf, size_t len);
void rkc_fleet_fields(FILE *f, const char *data_dir, const char *mount);
int rkc_fleet_print(FILE *f, const char *json, const char *data_dir, const char *mount, bool one_line);
/* metrics.c: rekeyctl metrics [--refresh] [--textfile FILE] MOUNT... */
int rkc_cmd_metrics(int argc, char **argv);
int rkc_read_virt(const char *mnt, const char *name, uint64_t ino, char **text);

/* help.c: per-command help (rekeyctl CMD --help, rekeyctl help CMD) */
void rkc_usage(FILE *f);
/* 0 when CMD is known (help printed to stdout), RKC_USAGE otherwise */
int rkc_help(const char *cmd);
int rkc_cmd_help(int argc, char **argv);
/* the one-line usage of CMD (for messages) */
const char *rkc_usage_line(const char *cmd);
/* "CMD does not take OPTION" / unknown option message; returns RKC_USAGE */
int rkc_bad_option(const char *cmd, const char *opt);
struct option;
int rkc_opt_refused(const char *cmd, int c, char **argv, const struct option *lo);
/* refuse a -d KEYDIR that does not exist (0 or RKC_USAGE) */
int rkc_check_keydir(const char *cmd, const char *keydir, bool given);

/* online.c: an offline command on a mounted data directory */
/* 0 when DIR is not mounted; -EBUSY with "DIR is mounted at M by pid N;
 * use rekeyctl CMD ... M" printed otherwise */
int rkc_refuse_mounted(const char *dir, const char *cmd);
/* the daemon's status of mount root, parsed */
int rkc_status_tree(const char *root, struct rkc_json **out);

/* job.c: pause, resume, throttle, online rekey and waiting for a sweep */
int rkc_cmd_pause(int argc, char **argv);
int rkc_cmd_resume(int argc, char **argv);
int rkc_cmd_throttle(int argc, char **argv);
struct rkc_wait {
	bool wait, json, quiet;
};
/* send "rekey TABLE..." to the daemon of root; with w->wait wait for the
 * serving sweep; returns 0 when complete, -EAGAIN when incomplete */
int rkc_online_rekey(const char *root, char **tables, int ntables, const struct rkc_wait *w);
/* the same with another request: "rekey", or "rewrap OLD NEW" (an online rewrap) */
int rkc_online_sweep(const char *root, const char *request, char **tables, int ntables, const struct rkc_wait *w);
/* check that every table exists in the mount's policy (status "tables") */
int rkc_online_tables_check(const struct rkc_json *st, char **tables, int ntables);
/* one --progress-json line (rekeyctl(8) documents the fields) */
struct rkc_pjson {
	uint64_t sweep; /* 0: none (offline) */
	const char *state, *current_file, *result, *reason;
	double bytes_done, bytes_total, chunks_done, chunks_total, percent, rate, eta, remaining;
	bool has_chunks, has_eta, has_remaining, final;
	const char *mode; /* online: "reseal" or "rewrap", with files_done / files_total; NULL offline */
	double files_done, files_total;
};
void rkc_progress_json(const struct rkc_pjson *p);
int rkc_offline_rekey_w(const char *dir, const char *keydir, char **tables, int ntables, const struct rkc_wait *w);

/* rotate.c */
int rkc_cmd_rotate(int argc, char **argv);

#endif
