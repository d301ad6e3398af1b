/* rekeyctl - fleet fields: "host", "data_dir", "mount" and "time" at the top
 * of every JSON report (status, fsck, keys), so that the reports of N nodes
 * aggregate by concatenation; several reports (several mounts) are printed
 * as JSON Lines, one compact object per line (rekeyctl(8), JSON OUTPUT). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

void rkc_fleet_time(char *buf, size_t len)
{
	time_t t = time(NULL);
	struct tm tm;
	if (!gmtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, len, "1970-01-01T00:00:00Z");
}

void rkc_fleet_fields(FILE *f, const char *data_dir, const char *mount)
{
	char host[256], now[32];
	if (gethostname(host, sizeof(host)) < 0)
		snprintf(host, sizeof(host), "unknown");
	host[sizeof(host) - 1] = '\0';
	rkc_fleet_time(now, sizeof(now));
	fputs("\"host\": ", f);
	rkc_json_put_str(f, host);
	fputs(", \"data_dir\": ", f);
	if (data_dir)
		rkc_json_put_str(f, data_dir);
	else
		fputs("null", f);
	fputs(", \"mount\": ", f);
	if (mount)
		rkc_json_put_str(f, mount);
	else
		fputs("null", f);
	fprintf(f, ", \"time\": \"%s\"", now);
}

/* json without the white space outside strings */
static void put_compact(FILE *f, const char *s)
{
	bool in = false, esc = false;
	for (; *s; s++) {
		if (in) {
			fputc(*s, f);
			if (esc)
				esc = false;
			else if (*s == '\\')
				esc = true;
			else if (*s == '"')
				in = false;
		} else if (*s == '"') {
			in = true;
			fputc(*s, f);
		} else if (*s != ' ' && *s != '\n' && *s != '\t' && *s != '\r') {
			fputc(*s, f);
			if (*s == ':' || *s == ',')
				fputc(' ', f);
		}
	}
}

int rkc_fleet_print(FILE *f, const char *json, const char *data_dir, const char *mount, bool one_line)
{
	const char *open = strchr(json, '{');
	if (!open)
		return -EPROTO;
	const char *rest = open + 1;
	while (*rest == ' ' || *rest == '\n' || *rest == '\t')
		rest++;
	bool empty = *rest == '}';
	if (one_line) {
		fputc('{', f);
		rkc_fleet_fields(f, data_dir, mount);
		if (!empty)
			fputs(", ", f);
		put_compact(f, rest);
		fputc('\n', f);
	} else {
		fwrite(json, 1, (size_t)(open - json) + 1, f);
		fputs("\n  ", f);
		rkc_fleet_fields(f, data_dir, mount);
		fputs(empty ? "\n" : ",\n  ", f);
		fputs(rest, f);
		size_t n = strlen(rest);
		if (n == 0 || rest[n - 1] != '\n')
			fputc('\n', f);
	}
	return fflush(f) == 0 ? 0 : -errno;
}
