/* rekeyfs daemon - control-file replies and JSON building (reply.c), shared
 * by the control dispatcher, the walker and the fsck command. */
#ifndef REKEYFS_DAEMON_REPLY_H
#define REKEYFS_DAEMON_REPLY_H

#include <stddef.h>

struct rkd_jbuf {
	char *p;
	size_t len, cap;
	int err;
};
void rkd_jb_put(struct rkd_jbuf *b, const char *s, size_t n);
void rkd_jb_printf(struct rkd_jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* a JSON string literal */
void rkd_jb_str(struct rkd_jbuf *b, const char *s);
/* "ok MESSAGE\n" (ret 0) or "error MESSAGE\n" in *out (allocated): 0 or -ENOMEM */
int rkd_reply(char **out, size_t *len, int ret, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
