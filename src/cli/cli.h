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
#include <time.h>

/* returned by commands for bad usage or arguments: exit status 2 */
#define RKC_USAGE (-100000)

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
int rkc_parse_common(int argc, char **argv, struct rkc_opts *o, const char *usage_line);
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
int rkc_offline_rekey(const char *dir, const char *keydir, char **tables, int ntables, bool quiet);
int rkc_cmd_rekey(int argc, char **argv);
int rkc_cmd_release(int argc, char **argv);

/* status.c */
/* -d KEYDIR, -q, --json (quiet and json may be NULL when not accepted) */
int rkc_parse_d(int argc, char **argv, const char **keydir, bool *quiet, bool *json);
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

#endif
