/* rekeyfs daemon - control-file replies and JSON building: used by the
 * control dispatcher (ctl.c), the walker and the fsck command, none of which
 * needs the others for it. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reply.h"
#include "rekeyfs/common.h"

void rkd_jb_put(struct rkd_jbuf *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t nc = (b->cap + n + 1024) * 2;
		char *np = realloc(b->p, nc);
		if (!np) {
			b->err = -ENOMEM;
			return;
		}
		b->p = np;
		b->cap = nc;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void rkd_jb_printf(struct rkd_jbuf *b, const char *fmt, ...)
{
	char tmp[1024], *p = tmp;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(tmp)) {
		/* longer than the stack buffer: formatted again in full, never cut */
		p = malloc((size_t)n + 1);
		if (!p) {
			b->err = -ENOMEM;
			return;
		}
		va_start(ap, fmt);
		n = vsnprintf(p, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	if (n < 0)
		b->err = -EINVAL;
	else
		rkd_jb_put(b, p, (size_t)n);
	if (p != tmp)
		free(p);
}

/* a JSON string literal */
void rkd_jb_str(struct rkd_jbuf *b, const char *s)
{
	rkd_jb_put(b, "\"", 1);
	/* control characters, DEL and bytes that are not valid UTF-8 (file names
	 * are bytes) as \u00XX: the output stays valid JSON */
	while (*s) {
		unsigned char c = (unsigned char)*s;
		int n = rk_utf8_len((const unsigned char *)s);
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			rkd_jb_put(b, e, 2);
			s++;
		} else if (n == 0 || c < 0x20 || c == 0x7f) {
			char e[8];
			snprintf(e, sizeof(e), "\\u%04x", c);
			rkd_jb_put(b, e, 6);
			s++;
		} else {
			rkd_jb_put(b, s, (size_t)n);
			s += n;
		}
	}
	rkd_jb_put(b, "\"", 1);
}

int rkd_reply(char **out, size_t *len, int ret, const char *fmt, ...)
{
	char tmp[2048];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	n = (int)RK_MIN((size_t)n, sizeof(tmp) - 1);
	*out = malloc((size_t)n + 16);
	if (!*out)
		return -ENOMEM;
	*len = (size_t)snprintf(*out, (size_t)n + 16, "%s %s\n", ret == 0 ? "ok" : "error", tmp);
	return 0;
}
