/* rekeyfs daemon - online encryption of plain files (encrypt.c). */
#ifndef REKEYFS_DAEMON_ENCRYPT_H
#define REKEYFS_DAEMON_ENCRYPT_H

#include <stddef.h>

#include "reply.h"

struct rkd_fs;

/* Start the job thread (fs->enc); at unmount stop it (a running job is
 * abandoned: converted files stay converted, the rest stay plain). */
int rkd_encrypt_init(struct rkd_fs *fs);
void rkd_encrypt_shutdown(struct rkd_fs *fs);
/* Control commands `encrypt [PATH...]` (paths %XX-encoded, relative to the
 * mount root; none: everything) and `encrypt-cancel`. */
int rkd_encrypt_control(struct rkd_fs *fs, const char *cmd, char *args, char **out, size_t *len);
/* The status JSON's "encrypt" member (with its trailing comma). */
void rkd_encrypt_json(struct rkd_fs *fs, struct rkd_jbuf *b);

#endif
