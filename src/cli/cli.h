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

int rkc_exit_code(int err);

/* online.c: talking to a mounted daemon */
bool rkc_is_mount(const char *path);
int rkc_mount_find(const char *path, char **root, char **rel);
int rkc_control(const char *mnt, const char *cmd, char **reply);
int rkc_read_status(const char *mnt, char **json);
int rkc_online_alter(const char *target, const char *key, uint32_t chunk_kb, int comp);
int rkc_offline_rekey(const char *dir, const char *keydir, char **tables, int ntables, bool quiet);
int rkc_cmd_rekey(int argc, char **argv);
int rkc_cmd_release(int argc, char **argv);
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
int rkc_open_offline(const char *dir, enum rk_dd_lock lock, struct rk_keyring *kr, struct rk_datadir **out);

#endif
