/* rekeyfs unit tests - key files and the keyring. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/keys.h"

/* the fixture: an empty temporary directory; keys go to its keys/ (teardown:
 * whatever a test did, no key material may have reached a log message) */
static int setup(void **state)
{
	static const struct tu_fx_opts o = {0};
	return tu_fx_setup(state, &o);
}

static int teardown(void **state) { return tu_fx_teardown(state); }

static void key_path(const struct tu_fx *f, const char *name, char *out) { tu_path(out, "%s/%s", f->keydir, name); }

/* Decode base64 with OpenSSL; returns the byte count (padding removed). */
static int b64_decode(const char *b64, uint8_t *out)
{
	size_t n = strlen(b64);
	int dl = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)n);
	if (dl < 0)
		return dl;
	if (n >= 1 && b64[n - 1] == '=')
		dl--;
	if (n >= 2 && b64[n - 2] == '=')
		dl--;
	return dl;
}

static void check_created(struct tu_fx *f, const char *cipher, enum rk_cipher c, unsigned bits, const char *name)
{
	uint8_t fp[RK_FP_BYTES], fp2[RK_FP_BYTES], raw[64];
	char path[PATH_MAX], prefix[64];
	struct stat st;
	assert_int_equal(rk_key_create(f->keydir, cipher, bits, name, fp), 0);
	key_path(f, name, path);
	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);

	size_t len;
	char *text = tu_read_file(path, &len);
	assert_non_null(text);
	snprintf(prefix, sizeof(prefix), "%s:%u:", cipher, bits);
	assert_int_equal(strncmp(text, prefix, strlen(prefix)), 0);
	/* exactly one line ending in a newline */
	assert_true(len > strlen(prefix) + 1);
	assert_int_equal(text[len - 1], '\n');
	assert_null(memchr(text, '\n', len - 1));
	/* base64 of bits/8 bytes */
	char *b64 = text + strlen(prefix);
	text[len - 1] = '\0';
	assert_int_equal(strlen(b64), 4 * ((bits / 8 + 2) / 3));
	assert_int_equal(b64_decode(b64, raw), (int)(bits / 8));
	/* the returned fingerprint is the fingerprint of that key */
	assert_int_equal(rk_key_fingerprint(c, raw, bits / 8, fp2), 0);
	assert_memory_equal(fp, fp2, RK_FP_BYTES);
	free(text);

	/* it loads back with the same fingerprint */
	struct rk_key *k = NULL;
	assert_int_equal(rk_key_load(f->keydir, name, &k), 0);
	assert_non_null(k);
	assert_string_equal(k->name, name);
	assert_int_equal(k->cipher, c);
	assert_int_equal(k->bits, bits);
	assert_int_equal(k->keylen, bits / 8);
	assert_memory_equal(k->material, raw, bits / 8);
	assert_memory_equal(k->fp, fp, RK_FP_BYTES);
	assert_false(k->released);
	rk_key_free(k);
}

static void test_create_formats(void **state)
{
	struct tu_fx *f = *state;
	struct stat st;
	check_created(f, "AES/GCM/NoPadding", RK_CIPHER_AES_GCM, 256, "system_key");
	/* the key directory was created 0700 */
	assert_int_equal(stat(f->keydir, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
	check_created(f, "AES/GCM/NoPadding", RK_CIPHER_AES_GCM, 128, "k128");
	check_created(f, "ChaCha20/Poly1305/NoPadding", RK_CIPHER_CHACHA20_POLY1305, 256, "chacha.key-1");

	/* two keys are different */
	struct rk_key *a, *b;
	assert_int_equal(rk_key_load(f->keydir, "system_key", &a), 0);
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "other");
	assert_int_equal(rk_key_load(f->keydir, "other", &b), 0);
	assert_memory_not_equal(a->material, b->material, 32);
	assert_memory_not_equal(a->fp, b->fp, RK_FP_BYTES);
	rk_key_free(a);
	rk_key_free(b);

	/* nested missing parents are created too */
	char deep[PATH_MAX];
	tu_path(deep, "%s/x/y/keys", f->dir);
	tu_key_create(deep, "AES/GCM/NoPadding", 256, "k");
	assert_int_equal(stat(deep, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
}

static void test_create_refuses_overwrite(void **state)
{
	struct tu_fx *f = *state;
	char path[PATH_MAX];
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "k1");
	key_path(f, "k1", path);
	char *before = tu_read_file(path, NULL);
	assert_non_null(before);
	tu_log_clear();
	assert_int_equal(rk_key_create(f->keydir, "AES/GCM/NoPadding", 256, "k1", NULL), -EEXIST);
	tu_assert_logged("k1", "already exists");
	char *after = tu_read_file(path, NULL);
	assert_non_null(after);
	assert_string_equal(before, after);
	free(before);
	free(after);
	/* no temporary files left behind */
	char **names;
	size_t n;
	assert_int_equal(rk_keydir_list(f->keydir, &names, &n), 0);
	assert_int_equal(n, 1);
	free(names[0]);
	free(names);
}

static void test_create_refuses_bad_cipher(void **state)
{
	struct tu_fx *f = *state;
	char path[PATH_MAX];
	struct stat st;
	static const char *unauth[] = {"AES/ECB/PKCS5Padding", "AES/CBC/PKCS5Padding"};
	for (size_t i = 0; i < RK_ARRAY_SIZE(unauth); i++) {
		tu_log_clear();
		assert_int_equal(rk_key_create(f->keydir, unauth[i], 128, "bad", NULL), -EINVAL);
		tu_assert_logged(unauth[i], "unauthenticated");
		key_path(f, "bad", path);
		assert_int_equal(stat(path, &st), -1);
	}
	tu_log_clear();
	assert_int_equal(rk_key_create(f->keydir, "Blowfish", 128, "bad", NULL), -EINVAL);
	tu_assert_logged("Blowfish", "not a supported cipher");
	tu_log_clear();
	assert_int_equal(rk_key_create(f->keydir, "AES/GCM/NoPadding", 192, "bad", NULL), -EINVAL);
	tu_assert_logged("192", "128 or 256");
	assert_int_equal(rk_key_create(f->keydir, "ChaCha20/Poly1305/NoPadding", 128, "bad", NULL), -EINVAL);
	/* invalid names */
	static const char *badnames[] = {"", ".", "..", "a/b", "../evil", "sp ace",
	                                 "0123456789012345678901234567890123456789012345678901234567890123"};
	for (size_t i = 0; i < RK_ARRAY_SIZE(badnames); i++)
		assert_int_equal(rk_key_create(f->keydir, "AES/GCM/NoPadding", 256, badnames[i], NULL), -EINVAL);
	assert_int_equal(stat(path, &st), -1);
	char evil[PATH_MAX];
	tu_path(evil, "%s/evil", f->dir);
	assert_int_equal(stat(evil, &st), -1);
	/* 63 characters is fine */
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256,
	              "012345678901234567890123456789012345678901234567890123456789012");
}

static void test_load_loose_permissions(void **state)
{
	struct tu_fx *f = *state;
	char path[PATH_MAX];
	struct rk_key *k = (struct rk_key *)&k;
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "loose");
	key_path(f, "loose", path);
	static const mode_t bad[] = {0640, 0604, 0620, 0602, 0644, 0660, 0666, 0610};
	for (size_t i = 0; i < RK_ARRAY_SIZE(bad); i++) {
		char mode[16];
		assert_int_equal(chmod(path, bad[i]), 0);
		tu_log_clear();
		assert_int_equal(rk_key_load(f->keydir, "loose", &k), -EPERM);
		assert_null(k);
		snprintf(mode, sizeof(mode), "%04o", (unsigned)bad[i]);
		tu_assert_logged(path, "chmod 600", mode);
	}
	/* owner-only modes are fine */
	static const mode_t good[] = {0600, 0400};
	for (size_t i = 0; i < RK_ARRAY_SIZE(good); i++) {
		assert_int_equal(chmod(path, good[i]), 0);
		assert_int_equal(rk_key_load(f->keydir, "loose", &k), 0);
		rk_key_free(k);
	}
	/* and through a keyring */
	struct rk_keyring *kr;
	assert_int_equal(chmod(path, 0640), 0);
	assert_int_equal(rk_keyring_new(f->keydir, &kr), 0);
	assert_int_equal(rk_keyring_get(kr, "loose", &k), -EPERM);
	assert_null(k);
	rk_keyring_free(kr);
}

static void write_key(struct tu_fx *f, const char *name, const char *content)
{
	char path[PATH_MAX];
	mkdir(f->keydir, 0700);
	key_path(f, name, path);
	tu_write_file(path, content, strlen(content), 0600);
}

static void test_load_malformed(void **state)
{
	struct tu_fx *f = *state;
	char good[64], b64_128[64], line[256];
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "good");
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 128, "short");
	assert_int_equal(tu_key_b64(f->keydir, "good", good, sizeof(good)), 0);
	assert_int_equal(tu_key_b64(f->keydir, "short", b64_128, sizeof(b64_128)), 0);

	struct {
		const char *name;
		char content[1024];
	} cases[20];
	size_t n = 0;
#define CASE(nm, ...)                                                               \
	do {                                                                        \
		cases[n].name = nm;                                                 \
		snprintf(cases[n].content, sizeof(cases[n].content), __VA_ARGS__); \
		n++;                                                                \
	} while (0)
	CASE("empty", "%s", "");
	CASE("garbage", "this is not a key\n");
	CASE("nocolon2", "AES/GCM/NoPadding:256\n");
	CASE("twolines", "AES/GCM/NoPadding:256:%s\nAES/GCM/NoPadding:256:%s\n", good, good);
	CASE("badb64", "AES/GCM/NoPadding:256:%.40s!!!!\n", good);
	CASE("badb64len", "AES/GCM/NoPadding:256:%.43s\n", good);
	CASE("wronglen", "AES/GCM/NoPadding:256:%s\n", b64_128);   /* 128-bit key, file says 256 */
	CASE("wronglen2", "AES/GCM/NoPadding:128:%s\n", good);     /* 256-bit key, file says 128 */
	CASE("ecb", "AES/ECB/PKCS5Padding:256:%s\n", good);
	CASE("cbc", "AES/CBC/PKCS5Padding:256:%s\n", good);
	CASE("unknown", "Twofish/GCM/NoPadding:256:%s\n", good);
	CASE("strength", "AES/GCM/NoPadding:abc:%s\n", good);
	CASE("strength192", "AES/GCM/NoPadding:192:%s\n", good);
	CASE("chacha128", "ChaCha20/Poly1305/NoPadding:128:%s\n", b64_128);
	CASE("nokey", "AES/GCM/NoPadding:256:\n");
	CASE("longtail", "AES/GCM/NoPadding:256:%s%480s junk\n", good, "");
#undef CASE
	for (size_t i = 0; i < n; i++) {
		struct rk_key *k = (struct rk_key *)&k;
		char path[PATH_MAX];
		write_key(f, cases[i].name, cases[i].content);
		key_path(f, cases[i].name, path);
		tu_log_clear();
		int ret = rk_key_load(f->keydir, cases[i].name, &k);
		if (ret != -EINVAL)
			fail_msg("key file '%s' loaded with %d, expected -EINVAL", cases[i].name, ret);
		assert_null(k);
		/* the message names the file */
		tu_assert_logged(path);
	}
	/* exactly one line with an optional single newline: CRLF and trailing
	 * blanks are refused (strict parsing, issue #10 item 14) */
	snprintf(line, sizeof(line), "AES/GCM/NoPadding:256:%s\r\n", good);
	write_key(f, "crlf", line);
	struct rk_key *k;
	assert_int_equal(rk_key_load(f->keydir, "crlf", &k), -EINVAL);
	snprintf(line, sizeof(line), "AES/GCM/NoPadding:256:%s", good);
	write_key(f, "nonl", line);
	assert_int_equal(rk_key_load(f->keydir, "nonl", &k), 0);
	rk_key_free(k);
}

/* Strict key file parsing: a plain decimal strength, canonical base64 with
 * '=' only as final padding, one line with at most one newline. */
static void test_load_strict(void **state)
{
	struct tu_fx *f = *state;
	char good[64], g128[64];
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "good");
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 128, "g128");
	assert_int_equal(tu_key_b64(f->keydir, "good", good, sizeof(good)), 0);
	assert_int_equal(tu_key_b64(f->keydir, "g128", g128, sizeof(g128)), 0);
	assert_int_equal(strlen(good), 44); /* 32 bytes: 43 characters and one '=' */
	assert_int_equal(strlen(g128), 24); /* 16 bytes: 22 characters and "==" */

	char eq_inside[64], eq_pad[64], nonc256[64], nonc128[64], noPad[64];
	snprintf(eq_inside, sizeof(eq_inside), "%s", good);
	eq_inside[10] = '=';
	/* '=' early, then the rest: OpenSSL's decoder would stop or count it */
	snprintf(eq_pad, sizeof(eq_pad), "%.40s====", good);
	/* unused low bits of the last character set: another text for the same key */
	snprintf(nonc256, sizeof(nonc256), "%s", good);
	nonc256[42] = (char)(nonc256[42] == 'A' ? 'B' : nonc256[42] == 'a' ? 'b' : nonc256[42]);
	{
		/* 256-bit key: 43rd character carries 2 bits of data and 4 unused bits;
		 * flip the lowest unused bit */
		static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
		int v = (int)(strchr(alpha, good[42]) - alpha);
		nonc256[42] = alpha[v ^ 1];
		v = (int)(strchr(alpha, g128[21]) - alpha);
		snprintf(nonc128, sizeof(nonc128), "%s", g128);
		nonc128[21] = alpha[v ^ 1];
	}
	snprintf(noPad, sizeof(noPad), "%.43s", good);

	struct {
		const char *name;
		char content[256];
	} cases[32];
	size_t n = 0;
#define CASE(nm, ...)                                                               \
	do {                                                                        \
		cases[n].name = nm;                                                 \
		snprintf(cases[n].content, sizeof(cases[n].content), __VA_ARGS__); \
		n++;                                                                \
	} while (0)
	CASE("plus", "AES/GCM/NoPadding:+256:%s\n", good);
	CASE("minus", "AES/GCM/NoPadding:-256:%s\n", good);
	/* strtoul wraps this to 256 */
	CASE("hugeneg", "AES/GCM/NoPadding:-18446744073709551360:%s\n", good);
	CASE("hugepos", "AES/GCM/NoPadding:18446744073709551872:%s\n", good);
	CASE("wrap32", "AES/GCM/NoPadding:4294967552:%s\n", good);
	CASE("lead0", "AES/GCM/NoPadding:0256:%s\n", good);
	CASE("space", "AES/GCM/NoPadding: 256:%s\n", good);
	CASE("space2", "AES/GCM/NoPadding:256 :%s\n", good);
	CASE("hex", "AES/GCM/NoPadding:0x100:%s\n", good);
	CASE("eqinside", "AES/GCM/NoPadding:256:%s\n", eq_inside);
	CASE("eqpad", "AES/GCM/NoPadding:256:%s\n", eq_pad);
	CASE("nocanon256", "AES/GCM/NoPadding:256:%s\n", nonc256);
	CASE("nocanon128", "AES/GCM/NoPadding:128:%s\n", nonc128);
	CASE("nopad", "AES/GCM/NoPadding:256:%s\n", noPad);
	CASE("extrapad", "AES/GCM/NoPadding:256:%s=\n", good);
	CASE("b64space", "AES/GCM/NoPadding:256:%.20s %s\n", good, good + 20);
	CASE("b64nl", "AES/GCM/NoPadding:256:%.20s\n%s\n", good, good + 20);
	CASE("lead_ws", " AES/GCM/NoPadding:256:%s\n", good);
	CASE("trail_ws", "AES/GCM/NoPadding:256:%s \n", good);
	CASE("two_nl", "AES/GCM/NoPadding:256:%s\n\n", good);
	CASE("colon3", "AES/GCM/NoPadding:256:%s:\n", good);
	CASE("cr", "AES/GCM/NoPadding:256:%s\r", good);
#undef CASE
	for (size_t i = 0; i < n; i++) {
		struct rk_key *k = (struct rk_key *)&k;
		char path[PATH_MAX];
		write_key(f, cases[i].name, cases[i].content);
		key_path(f, cases[i].name, path);
		tu_log_clear();
		int ret = rk_key_load(f->keydir, cases[i].name, &k);
		if (ret != -EINVAL)
			fail_msg("key file '%s' (%s) loaded with %d, expected -EINVAL", cases[i].name, cases[i].content, ret);
		assert_null(k);
		tu_assert_logged(path);
	}
	/* a NUL byte inside the line */
	{
		char line[128], path[PATH_MAX];
		int l = snprintf(line, sizeof(line), "AES/GCM/NoPadding:256:%s\n", good);
		line[5] = '\0';
		key_path(f, "nul", path);
		tu_write_file(path, line, (size_t)l, 0600);
		struct rk_key *k = (struct rk_key *)&k;
		assert_int_equal(rk_key_load(f->keydir, "nul", &k), -EINVAL);
		assert_null(k);
	}
	/* the messages say what is wrong */
	tu_log_clear();
	struct rk_key *k;
	assert_int_equal(rk_key_load(f->keydir, "plus", &k), -EINVAL);
	tu_assert_logged("strength", "plain decimal");
	assert_int_equal(rk_key_load(f->keydir, "eqinside", &k), -EINVAL);
	tu_assert_logged("base64", "padding");
	/* canonical files load, with or without the newline */
	assert_int_equal(rk_key_load(f->keydir, "good", &k), 0);
	rk_key_free(k);
	assert_int_equal(rk_key_load(f->keydir, "g128", &k), 0);
	assert_int_equal(k->bits, 128);
	rk_key_free(k);
}

static void test_parse_u64(void **state)
{
	(void)state;
	uint64_t v = 77;
	assert_int_equal(rk_parse_u64("0", 10, &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(rk_parse_u64("1024", 1024, &v), 0);
	assert_int_equal(v, 1024);
	assert_int_equal(rk_parse_u64("18446744073709551615", UINT64_MAX, &v), 0);
	assert_true(v == UINT64_MAX);
	v = 77;
	assert_int_equal(rk_parse_u64("1025", 1024, &v), -ERANGE);
	assert_int_equal(rk_parse_u64("18446744073709551616", UINT64_MAX, &v), -ERANGE);
	assert_int_equal(rk_parse_u64("99999999999999999999999", UINT64_MAX, &v), -ERANGE);
	static const char *bad[] = {"", "-1", "+1", " 1", "1 ", "01", "00", "1k", "0x10", "1.0", "\t1", "1\n", NULL};
	for (int i = 0; bad[i]; i++)
		assert_int_equal(rk_parse_u64(bad[i], UINT64_MAX, &v), -EINVAL);
	assert_int_equal(rk_parse_u64(NULL, 1, &v), -EINVAL);
	assert_int_equal(v, 77); /* untouched on failure */
}

static void test_escape_ctl(void **state)
{
	(void)state;
	char out[64];
	assert_string_equal(rk_escape_ctl(out, sizeof(out), "plain/name.db"), "plain/name.db");
	assert_string_equal(rk_escape_ctl(out, sizeof(out), "a\033]0;pwned\007b"), "a\\x1b]0;pwned\\x07b");
	assert_string_equal(rk_escape_ctl(out, sizeof(out), "nl\nTAB\tdel\177"), "nl\\x0aTAB\\x09del\\x7f");
	assert_string_equal(rk_escape_ctl(out, sizeof(out), "back\\slash"), "back\\\\slash");
	/* valid UTF-8 is kept; C1 controls (U+009B, the 8-bit CSI) and invalid bytes are not */
	assert_string_equal(rk_escape_ctl(out, sizeof(out), "caf\xc3\xa9"), "caf\xc3\xa9");
	assert_string_equal(rk_escape_ctl(out, sizeof(out), "x\xc2\x9b" "2J"), "x\\xc2\\x9b2J");
	assert_string_equal(rk_escape_ctl(out, sizeof(out), "lat1\xe9"), "lat1\\xe9");
	assert_string_equal(rk_escape_ctl(out, sizeof(out), "\x9b"), "\\x9b");
	/* truncation never leaves half an escape and says so */
	char small[8];
	rk_escape_ctl(small, sizeof(small), "\033\033\033\033");
	assert_true(strlen(small) < sizeof(small));
	assert_non_null(strstr(small, "..."));
	assert_null(strchr(small, 033));
	/* the cut looks only at bytes it wrote: a buffer full of UTF-8
	 * continuation bytes (what was there before) loses nothing that fits */
	memset(small, 0x80, sizeof(small));
	assert_string_equal(rk_escape_ctl(small, sizeof(small), "abcd\033"), "abcd...");
	/* rk_esc: several at once, and rk_log escapes every message */
	const char *a = rk_esc("\033a"), *b = rk_esc("\033b");
	assert_string_equal(a, "\\x1ba");
	assert_string_equal(b, "\\x1bb");
	tu_log_clear();
	rk_err("file %s", "evil\033[2Jname");
	tu_assert_logged("file evil\\x1b[2Jname");
	tu_log_assert_absent("\033");
}

/* Key directory trust, as ssh's StrictModes: owner and mode of the key
 * directory (and the directories above it), owner, mode and type of each key
 * file; a FIFO is never opened blocking. */
static void test_keydir_trust(void **state)
{
	struct tu_fx *f = *state;
	struct rk_key *k = NULL;
	char **names = NULL;
	size_t n = 0;
	char path[PATH_MAX];
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "ok");
	assert_int_equal(rk_keydir_check(f->keydir), 0);

	/* a group- or world-writable key directory is refused, naming the fix */
	static const mode_t loose[] = {0770, 0777, 0722, 0730, 01777};
	for (size_t i = 0; i < RK_ARRAY_SIZE(loose); i++) {
		assert_int_equal(chmod(f->keydir, loose[i]), 0);
		tu_log_clear();
		k = (struct rk_key *)&k;
		assert_int_equal(rk_key_load(f->keydir, "ok", &k), -EPERM);
		assert_null(k);
		tu_assert_logged(f->keydir, "chmod go-w");
		assert_int_equal(rk_keydir_list(f->keydir, &names, &n), -EPERM);
		assert_int_equal(rk_key_create(f->keydir, "AES/GCM/NoPadding", 256, "new", NULL), -EPERM);
	}
	/* readable by others is fine: only names are visible */
	assert_int_equal(chmod(f->keydir, 0755), 0);
	assert_int_equal(rk_key_load(f->keydir, "ok", &k), 0);
	rk_key_free(k);

	/* a writable parent without the sticky bit is refused; with it (/tmp) fine */
	assert_int_equal(chmod(f->dir, 0777), 0);
	tu_log_clear();
	assert_int_equal(rk_key_load(f->keydir, "ok", &k), -EPERM);
	tu_assert_logged(f->dir, "chmod go-w");
	assert_int_equal(chmod(f->dir, 01777), 0);
	assert_int_equal(rk_key_load(f->keydir, "ok", &k), 0);
	rk_key_free(k);
	assert_int_equal(chmod(f->dir, 0700), 0);

	if (geteuid() == 0) {
		/* owned by another user: refused (the daemon's user or root only) */
		key_path(f, "ok", path);
		assert_int_equal(chown(path, 54321, 54321), 0);
		tu_log_clear();
		assert_int_equal(rk_key_load(f->keydir, "ok", &k), -EPERM);
		tu_assert_logged(path, "uid 54321", "chown");
		assert_int_equal(chown(path, 0, 0), 0);
		assert_int_equal(rk_key_load(f->keydir, "ok", &k), 0);
		rk_key_free(k);
		assert_int_equal(chown(f->keydir, 54321, 54321), 0);
		tu_log_clear();
		assert_int_equal(rk_key_load(f->keydir, "ok", &k), -EPERM);
		tu_assert_logged(f->keydir, "uid 54321", "chown");
		assert_int_equal(chown(f->keydir, 0, 0), 0);
	}

	/* a FIFO, a socket-like special file, a directory, a symlink: never opened
	 * blocking.  In a child with a deadline: a hang fails the test. */
	key_path(f, "fifo", path);
	assert_int_equal(mkfifo(path, 0600), 0);
	key_path(f, "sub", path);
	assert_int_equal(mkdir(path, 0700), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct rk_key *ck = NULL;
		char **cn = NULL;
		size_t cnt = 0;
		int code = 0;
		if (rk_key_load(f->keydir, "fifo", &ck) != -EPERM)
			code |= 1;
		if (rk_keydir_list(f->keydir, &cn, &cnt) != 0 || cnt != 1 || strcmp(cn[0], "ok") != 0)
			code |= 2;
		for (size_t i = 0; i < cnt; i++)
			free(cn[i]);
		free(cn);
		struct rk_keyring *kr;
		if (rk_keyring_new(f->keydir, &kr) == 0) {
			if (rk_keyring_get(kr, "fifo", &ck) != -EPERM)
				code |= 4;
			rk_keyring_free(kr);
		}
		_exit(code);
	}
	int st = 0;
	pid_t w = 0;
	/* a hang detector, not a speed limit: the child needs milliseconds, but
	 * 60 s leaves room for valgrind or a loaded machine */
	for (int i = 0; i < 6000 && (w = waitpid(pid, &st, WNOHANG)) == 0; i++)
		usleep(10000);
	if (w == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		key_path(f, "fifo", path);
		unlink(path); /* the teardown reads every key file: it must not meet the FIFO */
		fail_msg("loading or listing a key directory with a FIFO hung");
	}
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) != 0) {
		key_path(f, "fifo", path);
		unlink(path);
		fail_msg("FIFO handling failed (child code %d: 1 load, 2 list, 4 keyring)", WEXITSTATUS(st));
	}
	/* the messages, in this process */
	tu_log_clear();
	assert_int_equal(rk_key_load(f->keydir, "fifo", &k), -EPERM);
	tu_assert_logged("fifo", "not a regular file", "FIFO");
	assert_int_equal(rk_keydir_list(f->keydir, &names, &n), 0);
	tu_assert_logged("fifo", "skipped");
	assert_int_equal(n, 1);
	free(names[0]);
	free(names);
	assert_int_equal(rk_key_load(f->keydir, "sub", &k), -EPERM);
	/* (the teardown reads every key file: no FIFO left for it) */
	key_path(f, "fifo", path);
	unlink(path);
}

/* mlock() is not inherited by fork(): a process that loaded keys before
 * detaching must lock them again (rk_secure_relock). */
static long vmlck_kb(void)
{
	FILE *fp = fopen("/proc/self/status", "r"); /* st_size 0: read it line by line */
	char line[256];
	long v = -1;
	while (fp && fgets(line, sizeof(line), fp))
		if (strncmp(line, "VmLck:", 6) == 0)
			v = strtol(line + 6, NULL, 10);
	if (fp)
		fclose(fp);
	return v;
}

static void test_secure_relock_after_fork(void **state)
{
	(void)state;
	void *p = rk_secure_alloc(32);
	assert_non_null(p);
	if (vmlck_kb() <= 0) {
		rk_secure_free(p, 32);
		skip(); /* RLIMIT_MEMLOCK forbids locking here */
	}
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int code = 0;
		if (vmlck_kb() != 0)
			code |= 1; /* the kernel did not clear the lock: nothing to prove */
		if (rk_secure_relock() != 0)
			code |= 2;
		if (vmlck_kb() <= 0)
			code |= 4;
		_exit(code);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) != 0)
		fail_msg("relock after fork failed (child code %d)", WEXITSTATUS(st));
	rk_secure_free(p, 32);
}

static void test_load_missing(void **state)
{
	struct tu_fx *f = *state;
	struct rk_key *k = (struct rk_key *)&k;
	assert_int_equal(rk_key_load(f->keydir, "nope", &k), -ENOKEY);
	assert_null(k);
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "present");
	assert_int_equal(rk_key_load(f->keydir, "nope", &k), -ENOKEY);
	assert_int_equal(rk_key_load(f->keydir, "../keys/present", &k), -EINVAL);
	/* a directory or a symlink is not a key file */
	char path[PATH_MAX], target[PATH_MAX];
	key_path(f, "adir", path);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_true(rk_key_load(f->keydir, "adir", &k) < 0);
	key_path(f, "link", path);
	key_path(f, "present", target);
	assert_int_equal(symlink(target, path), 0);
	assert_true(rk_key_load(f->keydir, "link", &k) < 0);
	assert_null(k);
}

static void test_keyring(void **state)
{
	struct tu_fx *f = *state;
	struct rk_keyring *kr;
	struct rk_key *k1 = NULL, *k1b = NULL, *k2 = NULL, *kx = (struct rk_key *)&kx;
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "k1");
	tu_key_create(f->keydir, "ChaCha20/Poly1305/NoPadding", 256, "k2");
	assert_int_equal(rk_keyring_new(f->keydir, &kr), 0);
	assert_string_equal(rk_keyring_dir(kr), f->keydir);

	assert_int_equal(rk_keyring_get(kr, "k1", &k1), 0);
	assert_non_null(k1);
	assert_non_null(k1->material);
	assert_int_equal(rk_keyring_get(kr, "k1", &k1b), 0);
	assert_ptr_equal(k1, k1b); /* cached */
	assert_int_equal(rk_keyring_get(kr, "k2", &k2), 0);
	assert_int_equal(k2->cipher, RK_CIPHER_CHACHA20_POLY1305);

	/* release: material wiped (zeroed in place; the page stays mapped until the
	 * keyring is freed, so a concurrent reader cannot fault); later gets refuse */
	assert_int_equal(rk_keyring_release(kr, "k1"), 0);
	for (size_t i = 0; i < k1->keylen; i++)
		assert_int_equal(k1->material[i], 0);
	assert_true(k1->released);
	assert_string_equal(k1->name, "k1"); /* name and fingerprint stay for messages */
	assert_int_equal(rk_keyring_get(kr, "k1", &kx), -EKEYREVOKED);
	assert_null(kx);
	/* reload does not bring a released key back */
	rk_keyring_reload(kr);
	kx = (struct rk_key *)&kx;
	assert_int_equal(rk_keyring_get(kr, "k1", &kx), -EKEYREVOKED);
	assert_null(kx);
	/* the other key is untouched */
	assert_non_null(k2->material);
	assert_int_equal(rk_keyring_get(kr, "k2", &kx), 0);
	assert_ptr_equal(kx, k2);

	/* releasing a key never loaded */
	assert_int_equal(rk_keyring_release(kr, "never_loaded"), 0);
	assert_int_equal(rk_keyring_get(kr, "never_loaded", &kx), -EKEYREVOKED);

	/* a missing key is cached as missing until reload */
	assert_int_equal(rk_keyring_get(kr, "late", &kx), -ENOKEY);
	assert_null(kx);
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "late");
	assert_int_equal(rk_keyring_get(kr, "late", &kx), -ENOKEY);
	rk_keyring_reload(kr);
	assert_int_equal(rk_keyring_get(kr, "late", &kx), 0);
	assert_non_null(kx);
	assert_non_null(kx->material);
	rk_keyring_free(kr);
}

static void test_keydir_list(void **state)
{
	struct tu_fx *f = *state;
	char **names = NULL;
	size_t n = 99;
	char path[PATH_MAX];
	static const char *create[] = {"zeta", "alpha", "Mid", "beta.1", "beta", "a_b-c"};
	for (size_t i = 0; i < RK_ARRAY_SIZE(create); i++)
		tu_key_create(f->keydir, "AES/GCM/NoPadding", 128, create[i]);
	/* hidden files, temporaries and invalid names are not keys */
	tu_path(path, "%s/.hidden", f->keydir);
	tu_write_file(path, "x", 1, 0600);
	tu_path(path, "%s/zeta.tmp.abcdef", f->keydir);
	tu_write_file(path, "x", 1, 0600);
	tu_path(path, "%s/has space", f->keydir);
	tu_write_file(path, "x", 1, 0600);
	assert_int_equal(rk_keydir_list(f->keydir, &names, &n), 0);
	static const char *want[] = {"Mid", "a_b-c", "alpha", "beta", "beta.1", "zeta"};
	assert_int_equal(n, RK_ARRAY_SIZE(want));
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(names[i], want[i]);
		free(names[i]);
	}
	free(names);
	/* empty and missing directories */
	char empty[PATH_MAX];
	tu_path(empty, "%s/empty", f->dir);
	assert_int_equal(mkdir(empty, 0700), 0);
	assert_int_equal(rk_keydir_list(empty, &names, &n), 0);
	assert_int_equal(n, 0);
	free(names);
	tu_path(empty, "%s/missing", f->dir);
	assert_int_equal(rk_keydir_list(empty, &names, &n), -ENOENT);
}

static void test_name_check_and_resolve(void **state)
{
	(void)state;
	assert_int_equal(rk_key_name_check("system_key"), 0);
	assert_int_equal(rk_key_name_check("a.b-c_D9"), 0);
	assert_int_equal(rk_key_name_check(""), -EINVAL);
	assert_int_equal(rk_key_name_check("."), -EINVAL);
	assert_int_equal(rk_key_name_check(".."), -EINVAL);
	assert_int_equal(rk_key_name_check("a/b"), -EINVAL);
	assert_int_equal(rk_key_name_check("a:b"), -EINVAL);
	assert_int_equal(rk_key_name_check("a\nb"), -EINVAL);

	const char *old = getenv("REKEYFS_KEYDIR");
	char *saved = old ? strdup(old) : NULL;
	setenv("REKEYFS_KEYDIR", "/from/env", 1);
	assert_string_equal(rk_keydir_resolve("/explicit"), "/explicit");
	assert_string_equal(rk_keydir_resolve(NULL), "/from/env");
	assert_string_equal(rk_keydir_resolve(""), "/from/env");
	unsetenv("REKEYFS_KEYDIR");
	assert_string_equal(rk_keydir_resolve(NULL), RK_DEFAULT_KEYDIR);
	if (saved) {
		setenv("REKEYFS_KEYDIR", saved, 1);
		free(saved);
	}
}

/* Key material never reaches a message, even in the paths that log the most. */
static void test_no_key_material_in_logs(void **state)
{
	struct tu_fx *f = *state;
	char b64[128], path[PATH_MAX], line[256];
	struct rk_key *k;
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "secret");
	assert_int_equal(tu_key_b64(f->keydir, "secret", b64, sizeof(b64)), 0);
	key_path(f, "secret", path);
	/* loose permissions, malformed variants, overwrite attempts, wrong strength */
	assert_int_equal(chmod(path, 0644), 0);
	assert_int_equal(rk_key_load(f->keydir, "secret", &k), -EPERM);
	snprintf(line, sizeof(line), "AES/GCM/NoPadding:128:%s\n", b64);
	write_key(f, "wrong_len", line);
	assert_int_equal(rk_key_load(f->keydir, "wrong_len", &k), -EINVAL);
	snprintf(line, sizeof(line), "AES/ECB/PKCS5Padding:256:%s\n", b64);
	write_key(f, "ecb", line);
	assert_int_equal(rk_key_load(f->keydir, "ecb", &k), -EINVAL);
	snprintf(line, sizeof(line), "AES/GCM/NoPadding:25x:%s\n", b64);
	write_key(f, "strength", line);
	assert_int_equal(rk_key_load(f->keydir, "strength", &k), -EINVAL);
	snprintf(line, sizeof(line), "AES/GCM/NoPadding:256:%s\nmore\n", b64);
	write_key(f, "two", line);
	assert_int_equal(rk_key_load(f->keydir, "two", &k), -EINVAL);
	assert_int_equal(rk_key_create(f->keydir, "AES/GCM/NoPadding", 256, "secret", NULL), -EEXIST);
	assert_true(tu_log_count() >= 5);
	tu_log_assert_absent(b64);
	b64[20] = '\0';
	tu_log_assert_absent(b64);
	/* (the teardown checks every key file of the directory again) */
}

/* ---- key command entries ---------------------------------------------------------- */
static void cmd_entry(const char *kd, const char *name, const char *prog, const char *extra)
{
	char path[PATH_MAX], text[2 * PATH_MAX];
	int n = snprintf(text, sizeof(text), "rekeyfs-key-command 1\nprogram %s\n%s", prog, extra);
	tu_path(path, "%s/%s", kd, name);
	tu_write_file(path, text, (size_t)n, 0600);
}

static void cmd_prog(const char *path, const char *script) { tu_write_file(path, script, strlen(script), 0755); }

/* A command entry's key is the key its program prints (same fingerprint and
 * material as the key file it cats); a timeout or a failure leaves no child
 * behind in this (long-lived) process, and no key in the log. */
static void test_keycmd(void **state)
{
	struct tu_fx *f = *state;
	char kd[PATH_MAX], bin[PATH_MAX], prog[PATH_MAX], text[2 * PATH_MAX], b64[128];
	struct rk_key *k = NULL, *kf = NULL;
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "src");
	assert_int_equal(tu_key_b64(f->keydir, "src", b64, sizeof(b64)), 0);
	tu_path(kd, "%s/cmdkeys", f->dir);
	tu_path(bin, "%s/bin", f->dir);
	assert_int_equal(mkdir(kd, 0700), 0);
	assert_int_equal(mkdir(bin, 0755), 0);

	tu_path(prog, "%s/cat.sh", bin);
	snprintf(text, sizeof(text), "#!/bin/sh\n[ \"$REKEYFS_KEY_NAME\" = ok ] || exit 9\nexec cat %s/src\n", f->keydir);
	cmd_prog(prog, text);
	cmd_entry(kd, "ok", prog, "");
	assert_int_equal(rk_key_load(kd, "ok", &k), 0);
	assert_int_equal(rk_key_load(f->keydir, "src", &kf), 0);
	assert_memory_equal(k->fp, kf->fp, RK_FP_BYTES);
	assert_int_equal(k->keylen, kf->keylen);
	assert_memory_equal(k->material, kf->material, k->keylen);
	assert_string_equal(k->name, "ok");
	rk_key_free(k);
	rk_key_free(kf);
	k = NULL;
	assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
	assert_int_equal(errno, ECHILD);

	/* non-zero exit: stderr logged, the key printed on stdout never */
	tu_path(prog, "%s/fail.sh", bin);
	snprintf(text, sizeof(text), "#!/bin/sh\ncat %s/src\necho token expired >&2\nexit 3\n", f->keydir);
	cmd_prog(prog, text);
	cmd_entry(kd, "fail", prog, "");
	tu_log_clear();
	assert_int_equal(rk_key_load(kd, "fail", &k), -EIO);
	assert_null(k);
	tu_assert_logged("exited with status 3", "token expired");

	/* timeout: killed and reaped */
	tu_path(prog, "%s/slow.sh", bin);
	cmd_prog(prog, "#!/bin/sh\nexec sleep 100\n");
	cmd_entry(kd, "slow", prog, "timeout 1\n");
	tu_log_clear();
	assert_int_equal(rk_key_load(kd, "slow", &k), -ETIMEDOUT);
	tu_assert_logged("timeout of 1 s");
	assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
	assert_int_equal(errno, ECHILD);

	/* malformed entries */
	cmd_entry(kd, "rel", "bin/cat.sh", "");
	assert_int_equal(rk_key_load(kd, "rel", &k), -EINVAL);
	cmd_entry(kd, "two", prog, "program /bin/true\n");
	assert_int_equal(rk_key_load(kd, "two", &k), -EINVAL);
	cmd_entry(kd, "noprog", "", "");
	assert_int_equal(rk_key_load(kd, "noprog", &k), -EINVAL);
	tu_log_assert_absent(b64);
}

/* A slow key command does not hold the keyring: while its program runs
 * (it waits for a file the test creates only afterwards), another key is
 * found.  With the keyring locked during the load, the second get would
 * wait for the first one's timeout and find it done. */
struct slow_get {
	struct rk_keyring *kr;
	int ret;
	atomic_bool done;
};

static void *slow_get_thread(void *arg)
{
	struct slow_get *g = arg;
	struct rk_key *k;
	g->ret = rk_keyring_get(g->kr, "slow", &k);
	atomic_store(&g->done, true);
	return NULL;
}

static void test_keycmd_no_keyring_stall(void **state)
{
	struct tu_fx *f = *state;
	char kd[PATH_MAX], prog[PATH_MAX], text[4 * PATH_MAX], started[PATH_MAX], go[PATH_MAX];
	struct rk_key *k;
	struct slow_get g = {0};
	pthread_t th;
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "src");
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "fast");
	tu_path(kd, "%s/keys", f->dir);
	tu_path(prog, "%s/wait.sh", f->dir);
	tu_path(started, "%s/started", f->dir);
	tu_path(go, "%s/go", f->dir);
	snprintf(text, sizeof(text), "#!/bin/sh\n: >%s\nwhile [ ! -e %s ]; do sleep 0.02; done\nexec cat %s/src\n", started,
	         go, f->keydir);
	cmd_prog(prog, text);
	cmd_entry(kd, "slow", prog, "timeout 20\n");
	assert_int_equal(rk_keyring_new(kd, &g.kr), 0);
	assert_int_equal(pthread_create(&th, NULL, slow_get_thread, &g), 0);
	for (int i = 0; i < 2000 && access(started, F_OK) != 0; i++) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	assert_int_equal(access(started, F_OK), 0);
	assert_int_equal(rk_keyring_get(g.kr, "fast", &k), 0);
	assert_false(atomic_load(&g.done));
	tu_write_file(go, "", 0, 0600);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(g.ret, 0);
	assert_int_equal(rk_keyring_get(g.kr, "slow", &k), 0);
	rk_keyring_free(g.kr);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_create_formats),        T(test_create_refuses_overwrite), T(test_create_refuses_bad_cipher),
		T(test_load_loose_permissions), T(test_load_malformed),          T(test_load_missing),
		T(test_keyring),               T(test_keydir_list),              T(test_name_check_and_resolve),
		T(test_no_key_material_in_logs), T(test_load_strict),           T(test_parse_u64),
		T(test_escape_ctl),            T(test_keydir_trust),              T(test_secure_relock_after_fork),
		T(test_keycmd), T(test_keycmd_no_keyring_stall),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
