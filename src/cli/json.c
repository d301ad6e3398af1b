/* rekeyctl - a small JSON reader for the daemon's status: parses the whole
 * text into a tree (objects, arrays, strings, numbers, true/false/null) so
 * the job commands read fields by name instead of searching the text.
 * Untrusted input: depth, lengths and escapes are checked; a malformed
 * document is refused as a whole. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define JDEPTH_MAX 32

struct jp {
	const char *p;
	int depth;
};

static void skip_ws(struct jp *j)
{
	while (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')
		j->p++;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* a string: escapes undone; \u outside ASCII becomes '?' (only names and
 * messages are read, never compared in that range) */
static int parse_str(struct jp *j, char **out)
{
	size_t cap = 32, n = 0;
	char *s = malloc(cap);
	if (!s)
		return -ENOMEM;
	j->p++; /* opening quote */
	for (;;) {
		char c = *j->p++;
		if (c == '\0' || (unsigned char)c < 0x20) {
			free(s);
			return -EINVAL;
		}
		if (c == '"')
			break;
		if (c == '\\') {
			char e = *j->p++;
			switch (e) {
			case 'n': c = '\n'; break;
			case 't': c = '\t'; break;
			case 'r': c = '\r'; break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case '"': case '\\': case '/': c = e; break;
			case 'u': {
				int v = 0;
				for (int i = 0; i < 4; i++) {
					int h = hexval(j->p[i]);
					if (h < 0) {
						free(s);
						return -EINVAL;
					}
					v = v * 16 + h;
				}
				j->p += 4;
				c = v >= 1 && v < 0x80 ? (char)v : '?';
				break;
			}
			default:
				free(s);
				return -EINVAL;
			}
		}
		if (n + 2 > cap) {
			char *ns = realloc(s, cap * 2);
			if (!ns) {
				free(s);
				return -ENOMEM;
			}
			s = ns;
			cap *= 2;
		}
		s[n++] = c;
	}
	s[n] = '\0';
	*out = s;
	return 0;
}

static int parse_val(struct jp *j, struct rkc_json **out);

static int add_kid(struct rkc_json *v, struct rkc_json *kid)
{
	if (v->n == v->cap) {
		size_t nc = v->cap ? v->cap * 2 : 8;
		struct rkc_json **nk = realloc(v->kids, nc * sizeof(*nk));
		if (!nk)
			return -ENOMEM;
		v->kids = nk;
		v->cap = nc;
	}
	v->kids[v->n++] = kid;
	return 0;
}

static int parse_container(struct jp *j, struct rkc_json *v)
{
	char close = v->type == RKC_J_OBJ ? '}' : ']';
	j->p++;
	skip_ws(j);
	if (*j->p == close) {
		j->p++;
		return 0;
	}
	for (;;) {
		char *key = NULL;
		struct rkc_json *kid = NULL;
		skip_ws(j);
		if (v->type == RKC_J_OBJ) {
			if (*j->p != '"' || parse_str(j, &key) < 0)
				return -EINVAL;
			skip_ws(j);
			if (*j->p++ != ':') {
				free(key);
				return -EINVAL;
			}
		}
		int r = parse_val(j, &kid);
		if (r < 0) {
			free(key);
			return r;
		}
		kid->key = key;
		if (add_kid(v, kid) < 0) {
			rkc_json_free(kid);
			return -ENOMEM;
		}
		skip_ws(j);
		if (*j->p == ',') {
			j->p++;
			continue;
		}
		if (*j->p == close) {
			j->p++;
			return 0;
		}
		return -EINVAL;
	}
}

static int parse_val(struct jp *j, struct rkc_json **out)
{
	struct rkc_json *v = calloc(1, sizeof(*v));
	int r = 0;
	if (!v)
		return -ENOMEM;
	skip_ws(j);
	if (++j->depth > JDEPTH_MAX) {
		r = -EINVAL;
	} else if (*j->p == '{' || *j->p == '[') {
		v->type = *j->p == '{' ? RKC_J_OBJ : RKC_J_ARR;
		r = parse_container(j, v);
	} else if (*j->p == '"') {
		v->type = RKC_J_STR;
		r = parse_str(j, &v->s);
	} else if (strncmp(j->p, "true", 4) == 0 || strncmp(j->p, "false", 5) == 0) {
		v->type = RKC_J_BOOL;
		v->num = j->p[0] == 't';
		j->p += j->p[0] == 't' ? 4 : 5;
	} else if (strncmp(j->p, "null", 4) == 0) {
		v->type = RKC_J_NULL;
		j->p += 4;
	} else if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9')) {
		char *end;
		v->type = RKC_J_NUM;
		v->num = strtod(j->p, &end);
		r = end == j->p ? -EINVAL : 0;
		j->p = end;
	} else {
		r = -EINVAL;
	}
	j->depth--;
	if (r < 0) {
		rkc_json_free(v);
		return r;
	}
	*out = v;
	return 0;
}

int rkc_json_parse(const char *text, struct rkc_json **out)
{
	struct jp j = {text, 0};
	int r = parse_val(&j, out);
	if (r == 0) {
		skip_ws(&j);
		if (*j.p != '\0') {
			rkc_json_free(*out);
			*out = NULL;
			r = -EINVAL;
		}
	}
	return r;
}

void rkc_json_free(struct rkc_json *v)
{
	if (!v)
		return;
	for (size_t i = 0; i < v->n; i++)
		rkc_json_free(v->kids[i]);
	free(v->kids);
	free(v->key);
	free(v->s);
	free(v);
}

const struct rkc_json *rkc_json_get(const struct rkc_json *obj, const char *key)
{
	if (!obj || obj->type != RKC_J_OBJ)
		return NULL;
	for (size_t i = 0; i < obj->n; i++)
		if (strcmp(obj->kids[i]->key, key) == 0)
			return obj->kids[i];
	return NULL;
}

bool rkc_json_num(const struct rkc_json *obj, const char *key, double *out)
{
	const struct rkc_json *v = rkc_json_get(obj, key);
	if (!v || v->type != RKC_J_NUM)
		return false;
	*out = v->num;
	return true;
}

const char *rkc_json_str(const struct rkc_json *obj, const char *key)
{
	const struct rkc_json *v = rkc_json_get(obj, key);
	return v && v->type == RKC_J_STR ? v->s : NULL;
}

/* JSON string for output (quotes included) */
void rkc_json_put_str(FILE *f, const char *s)
{
	if (!s) {
		fputs("null", f);
		return;
	}
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}
