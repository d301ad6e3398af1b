/* Fuzz target: the arguments of control-file commands.  rkd_control (the
 * daemon's command dispatcher, src/daemon/ctl.c) needs a mounted daemon
 * (FUSE, a walker thread) and is not linked here; this target fuzzes the
 * library parsers it hands every argument to, each against a reference:
 *   rk_parse_u64      (CHUNK_KB of alter, numbers)   strict decimal
 *   rk_parse_rate     (rate RATE)                     bounded
 *   rk_table_path_norm (alter TABLE, rekey/encrypt paths) canonical, idempotent
 *   rk_key_name_check (alter TABLE KEY, release KEY)  1..63 of [A-Za-z0-9._-], no leading dot
 *   rk_pct_decode / rk_pct_encode (encrypt PATH...)  strict %XX, round trip
 * The input is split as rkd_control splits a command line (one line, words
 * separated by spaces and tabs); every word goes through every parser. */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_quiet();
	return 0;
}

static int hexv(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static void check_u64(const char *w)
{
	uint64_t v = 0, max = 1 << 20;
	int r = rk_parse_u64(w, UINT64_MAX, &v);
	size_t n = strlen(w);
	bool digits = n > 0 && strspn(w, "0123456789") == n && !(n > 1 && w[0] == '0');
	bool fits = digits && (n < 20 || (n == 20 && strcmp(w, "18446744073709551615") <= 0));
	if ((r == 0) != fits || (r < 0 && r != -EINVAL && r != -ERANGE) || (r == -ERANGE) != (digits && !fits))
		abort();
	if (r == 0 && v != strtoull(w, NULL, 10))
		abort();
	r = rk_parse_u64(w, max, &v);
	if (r == 0 && v > max)
		abort();
}

static void check_rate(const char *w)
{
	uint64_t v = 0;
	int r = rk_parse_rate(w, &v);
	if (r == 0 && v > RK_RATE_MAX)
		abort();
	if (r < 0 && r != -EINVAL && r != -ERANGE)
		abort();
}

static void check_norm(const char *w)
{
	char out[RK_TABLE_PATH_MAX], again[RK_TABLE_PATH_MAX];
	if (rk_table_path_norm(w, out, sizeof(out)) < 0)
		return;
	size_t n = strlen(out);
	if (out[0] != '/' || strstr(out, "//") || (n > 1 && out[n - 1] == '/') || strstr(out, "/./") ||
	    strstr(out, "/../") || (n >= 3 && strcmp(out + n - 3, "/..") == 0) || (n >= 2 && strcmp(out + n - 2, "/.") == 0) ||
	    (strncmp(out, "/.rekeyfs", 9) == 0 && (out[9] == '\0' || out[9] == '/')))
		abort();
	if (rk_table_path_norm(out, again, sizeof(again)) != 0 || strcmp(out, again) != 0)
		abort(); /* idempotent */
}

static void check_keyname(const char *w)
{
	size_t n = strlen(w);
	bool ok = n >= 1 && n <= RK_KEY_NAME_MAX &&
	          strspn(w, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n &&
	          w[0] != '.';
	if ((rk_key_name_check(w) == 0) != ok)
		abort();
}

static void check_pct(const char *w)
{
	size_t n = strlen(w);
	char *a = malloc(n + 1), *ref = malloc(n + 1), *enc = malloc(3 * n + 1);
	if (!a || !ref || !enc)
		abort();
	memcpy(a, w, n + 1);
	/* the reference: %XX with two hex digits, never NUL */
	size_t o = 0;
	bool ok = true;
	for (size_t i = 0; i < n && ok; i++) {
		if (w[i] != '%') {
			ref[o++] = w[i];
			continue;
		}
		int hi = i + 1 < n ? hexv(w[i + 1]) : -1, lo = hi >= 0 && i + 2 < n ? hexv(w[i + 2]) : -1;
		if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
			ok = false;
		else
			ref[o++] = (char)(hi * 16 + lo);
		i += 2;
	}
	ref[o] = '\0';
	int r = rk_pct_decode(a);
	if ((r == 0) != ok || (ok && strcmp(a, ref) != 0))
		abort();
	/* round trip of the raw word */
	if (rk_pct_encode(w, enc, 3 * n + 1) != 0 || strpbrk(enc, " \t\n"))
		abort();
	if (rk_pct_decode(enc) != 0 || strcmp(enc, w) != 0)
		abort();
	free(a);
	free(ref);
	free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *line = malloc(size + 1);
	if (!line)
		abort();
	memcpy(line, data, size);
	line[size] = '\0';
	/* every parser on the whole input (a word may carry anything but NUL) */
	check_u64(line);
	check_rate(line);
	check_norm(line);
	check_keyname(line);
	check_pct(line);
	char *save = NULL;
	for (char *w = strtok_r(line, " \t\n", &save); w; w = strtok_r(NULL, " \t\n", &save)) {
		check_u64(w);
		check_rate(w);
		check_norm(w);
		check_keyname(w);
		check_pct(w);
	}
	free(line);
	return 0;
}
