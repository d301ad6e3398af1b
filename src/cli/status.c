/* rekeyctl status - the walker's state, progress and errors of a mount. */
#include "config.h"

#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "rekeyfs/common.h"

/* A tiny extraction of "key": value pairs from the daemon's JSON, for the
 * human-readable status (the JSON itself is printed with --json). */
static const char *jfind(const char *json, const char *key, char *out, size_t len)
{
	char pat[128];
	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	const char *p = strstr(json, pat);
	if (!p) {
		snprintf(out, len, "?");
		return out;
	}
	p += strlen(pat);
	size_t n = 0;
	if (*p == '"') {
		/* undo the JSON escapes (rk_esc below escapes for the terminal) */
		p++;
		while (*p && *p != '"' && n < len - 1) {
			if (*p != '\\') {
				out[n++] = *p++;
				continue;
			}
			p++;
			unsigned v;
			if (*p == 'u' && isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2]) &&
			    isxdigit((unsigned char)p[3]) && isxdigit((unsigned char)p[4]) && sscanf(p + 1, "%4x", &v) == 1 &&
			    v >= 1 && v < 0x80) {
				out[n++] = (char)v;
				p += 5;
			} else if (*p == 'n' || *p == 't' || *p == 'r') {
				out[n++] = *p == 'n' ? '\n' : *p == 't' ? '\t' : '\r';
				p++;
			} else if (*p) {
				out[n++] = *p++; /* \" \\ \/ */
			}
		}
	} else {
		while (*p && *p != ',' && *p != '}' && *p != '\n' && n < len - 1)
			out[n++] = *p++;
	}
	out[n] = '\0';
	/* a string from the daemon: printed for a human, so escaped */
	return rk_esc(out);
}

int rkc_cmd_status(int argc, char **argv)
{
	bool json = false;
	int pr = rkc_parse_d(argc, argv, "status", NULL, NULL, &json);
	if (pr < 0)
		return pr;
	if (argc - optind != 1) {
		rk_err("usage: rekeyctl status [--json] MOUNT");
		return RKC_USAGE;
	}
	char *root = NULL, *rel = NULL, *js = NULL;
	int ret = rkc_mount_find(argv[optind], &root, &rel);
	if (ret < 0) {
		rk_err("%s is not on a rekeyfs mount (no fuse.rekeyfs mount with the daemon's .rekeyfs/control holds "
		       "it); status needs a mounted daemon",
		       argv[optind]);
		return -ENOENT;
	}
	ret = rkc_read_status(root, &js);
	if (ret < 0) {
		rk_err("cannot read %s/.rekeyfs/status: %s", root, strerror(-ret));
		goto out;
	}
	if (json) {
		fputs(js, stdout);
		goto out;
	}
	char a[256], b[256], c[256], d[256], e[256];
	const char *w = strstr(js, "\"walker\"");
	printf("mount %s (data directory %s, daemon pid %s)\n", rk_esc(root), jfind(js, "datadir", a, sizeof(a)),
	       jfind(js, "pid", b, sizeof(b)));
	if (w) {
		printf("walker: %s, sweep %s, rate %s B/s (limit %s), position %s\n", jfind(w, "state", a, sizeof(a)),
		       jfind(w, "sweep", b, sizeof(b)), jfind(w, "rate_bytes_per_s", c, sizeof(c)),
		       jfind(w, "rate_limit", d, sizeof(d)), jfind(w, "position", e, sizeof(e)));
		printf("chunks rewritten: %s by the walker, %s lazily on read; errors: %s\n",
		       jfind(w, "chunks_rewritten_walker", a, sizeof(a)), jfind(w, "chunks_rewritten_lazy", b, sizeof(b)),
		       jfind(w, "error_count", c, sizeof(c)));
		const char *t = strstr(w, "\"tables\"");
		while (t && (t = strstr(t, "{\"path\": "))) {
			char f[64];
			printf("  table %-24s %6s%%  %s/%s chunks rewritten, %s/%s files\n", jfind(t, "path", a, sizeof(a)),
			       jfind(t, "percent", b, sizeof(b)), jfind(t, "chunks_rewritten", c, sizeof(c)),
			       jfind(t, "chunks_to_rewrite", d, sizeof(d)), jfind(t, "files_done", e, sizeof(e)),
			       jfind(t, "files_total", f, sizeof(f)));
			t++;
		}
		const char *errs = strstr(w, "\"errors\": [");
		if (errs && errs[11] != ']') {
			const char *end = strchr(errs, ']');
			char *list = strndup(errs + 11, end ? (size_t)(end - errs - 11) : 0);
			printf("recent errors: %s\n", list ? rk_esc(list) : "?");
			free(list);
		}
	}
out:
	free(js);
	free(root);
	free(rel);
	return ret;
}
