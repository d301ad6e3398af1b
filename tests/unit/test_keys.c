/* rekeyfs unit tests - key files and the keyring. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/keys.h"

struct fx {
	char dir[PATH_MAX];
	char keydir[PATH_MAX];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	tu_mkdtemp(f->dir);
	tu_path(f->keydir, "%s/keys", f->dir);
	tu_log_start();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	/* whatever a test did, no key material may have reached a log message */
	tu_log_assert_no_key_material(f->keydir);
	tu_log_stop();
	tu_rmrf(f->dir);
	free(f);
	return 0;
}

static void key_path(const struct fx *f, const char *name, char *out) { tu_path(out, "%s/%s", f->keydir, name); }

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

static void check_created(struct fx *f, const char *cipher, enum rk_cipher c, unsigned bits, const char *name)
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
	struct fx *f = *state;
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
	struct fx *f = *state;
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
	struct fx *f = *state;
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
	struct fx *f = *state;
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

static void write_key(struct fx *f, const char *name, const char *content)
{
	char path[PATH_MAX];
	mkdir(f->keydir, 0700);
	key_path(f, name, path);
	tu_write_file(path, content, strlen(content), 0600);
}

static void test_load_malformed(void **state)
{
	struct fx *f = *state;
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
	/* the good key with CRLF and trailing blanks is tolerated */
	snprintf(line, sizeof(line), "AES/GCM/NoPadding:256:%s\r\n", good);
	write_key(f, "crlf", line);
	struct rk_key *k;
	assert_int_equal(rk_key_load(f->keydir, "crlf", &k), 0);
	rk_key_free(k);
}

static void test_load_missing(void **state)
{
	struct fx *f = *state;
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
	struct fx *f = *state;
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
	struct fx *f = *state;
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
	struct fx *f = *state;
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

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_create_formats),        T(test_create_refuses_overwrite), T(test_create_refuses_bad_cipher),
		T(test_load_loose_permissions), T(test_load_malformed),          T(test_load_missing),
		T(test_keyring),               T(test_keydir_list),              T(test_name_check_and_resolve),
		T(test_no_key_material_in_logs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
