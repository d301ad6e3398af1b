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

int rkc_exit_code(int err);
int rkc_open_offline(const char *dir, enum rk_dd_lock lock, struct rk_keyring *kr, struct rk_datadir **out);

#endif
