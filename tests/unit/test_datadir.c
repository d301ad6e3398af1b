/* rekeyfs unit tests - data directory state: init, policy, registry, lock. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rekeyfs/walk.h"
#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/format.h"
#include "rekeyfs/keys.h"

static int setup(void **state)
{
	static const struct tu_fx_opts o = {.mkdata = true, .keys = tu_fx_keys, .nkeys = 2, .keyring = true};
	return tu_fx_setup(state, &o);
}

static int teardown(void **state) { return tu_fx_teardown(state); }

static void init_dd(struct tu_fx *f)
{
	int ret = rk_datadir_init(f->data, f->ka, 64 * 1024, RK_COMP_SNAPPY);
	if (ret) {
		tu_log_dump();
		fail_msg("rk_datadir_init = %d", ret);
	}
}

static struct rk_datadir *open_dd(struct tu_fx *f, enum rk_dd_lock lock)
{
	struct rk_datadir *dd = NULL;
	int ret = rk_datadir_open(f->data, lock, &dd);
	if (ret) {
		tu_log_dump();
		fail_msg("rk_datadir_open = %d", ret);
	}
	assert_non_null(dd);
	return dd;
}

static char *state_file(struct tu_fx *f, const char *name)
{
	char path[PATH_MAX];
	tu_path(path, "%s/.rekeyfs/%s", f->data, name);
	char *text = tu_read_file(path, NULL);
	if (!text)
		fail_msg("cannot read %s", path);
	return text;
}

static void test_init(void **state)
{
	struct tu_fx *f = *state;
	struct stat st;
	char path[PATH_MAX], hex[2 * RK_FP_BYTES + 1], line[512];
	init_dd(f);
	tu_path(path, "%s/.rekeyfs", f->data);
	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0700);

	char *fmt = state_file(f, "format");
	assert_string_equal(fmt, "rekeyfs-datadir 1\n");
	free(fmt);
	char *pol = state_file(f, "policy");
	assert_non_null(strstr(pol, "table / key=ka chunk_kb=64 compression=snappy\n"));
	free(pol);
	char *keys = state_file(f, "keys");
	rk_hex(hex, f->ka->fp, RK_FP_BYTES);
	snprintf(line, sizeof(line), "key ka cipher=AES/GCM/NoPadding bits=256 fp=%s state=active\n", hex);
	assert_non_null(strstr(keys, line));
	/* names and fingerprints only: never key material */
	char b64[128];
	assert_int_equal(tu_key_b64(f->keydir, "ka", b64, sizeof(b64)), 0);
	assert_null(strstr(keys, b64));
	free(keys);
	/* no temporaries left behind */
	tu_path(path, "%s/.rekeyfs", f->data);
	DIR *d = opendir(path);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d)))
		if (strstr(de->d_name, ".tmp."))
			fail_msg("temporary file %s left in .rekeyfs", de->d_name);
	closedir(d);

	struct rk_datadir *dd = open_dd(f, RK_DD_SHARED);
	assert_int_equal(dd->ntables, 1);
	assert_string_equal(dd->tables[0].path, "/");
	assert_string_equal(dd->tables[0].key, "ka");
	assert_int_equal(dd->tables[0].chunk_size, 64 * 1024);
	assert_int_equal(dd->tables[0].comp, RK_COMP_SNAPPY);
	assert_int_equal(dd->nkeys, 1);
	struct rk_regent *e = rk_registry_find(dd, "ka");
	assert_non_null(e);
	assert_int_equal(e->cipher, RK_CIPHER_AES_GCM);
	assert_int_equal(e->bits, 256);
	assert_memory_equal(e->fp, f->ka->fp, RK_FP_BYTES);
	assert_int_equal(e->state, RK_KS_ACTIVE);
	assert_null(rk_registry_find(dd, "kb"));
	rk_datadir_close(dd);

	/* a second init is refused and changes nothing */
	tu_log_clear();
	assert_int_equal(rk_datadir_init(f->data, f->kb, 4096, RK_COMP_NONE), -EEXIST);
	tu_assert_logged(f->data, "already");
	pol = state_file(f, "policy");
	assert_non_null(strstr(pol, "table / key=ka chunk_kb=64 compression=snappy\n"));
	assert_null(strstr(pol, "key=kb"));
	free(pol);
	/* a bad chunk size is refused before anything is created */
	char other[PATH_MAX];
	tu_path(other, "%s/other", f->dir);
	assert_int_equal(mkdir(other, 0755), 0);
	assert_int_equal(rk_datadir_init(other, f->ka, 3000, RK_COMP_NONE), -EINVAL);
	tu_path(path, "%s/.rekeyfs", other);
	assert_int_equal(stat(path, &st), -1);
	tu_path(path, "%s/missing", f->dir);
	assert_true(rk_datadir_init(path, f->ka, 4096, RK_COMP_NONE) < 0);
}

static void test_open_not_datadir(void **state)
{
	struct tu_fx *f = *state;
	struct rk_datadir *dd = NULL;
	tu_log_clear();
	assert_int_equal(rk_datadir_open(f->data, RK_DD_SHARED, &dd), -ENOTDIR);
	assert_null(dd);
	tu_assert_logged(f->data, "not a rekeyfs data directory", "rekeyctl init");
	assert_int_equal(rk_datadir_open(f->data, RK_DD_EXCLUSIVE, &dd), -ENOTDIR);
	/* a missing directory */
	char path[PATH_MAX];
	tu_path(path, "%s/nope", f->dir);
	assert_int_equal(rk_datadir_open(path, RK_DD_SHARED, &dd), -ENOENT);
	/* an unknown data directory format */
	init_dd(f);
	tu_path(path, "%s/.rekeyfs/format", f->data);
	tu_write_file(path, "rekeyfs-datadir 7\n", 18, 0644);
	tu_log_clear();
	assert_int_equal(rk_datadir_open(f->data, RK_DD_SHARED, &dd), -EPROTONOSUPPORT);
	tu_assert_logged("format 7");
	tu_write_file(path, "garbage\n", 8, 0644);
	assert_int_equal(rk_datadir_open(f->data, RK_DD_SHARED, &dd), -EINVAL);
}

static void test_policy(void **state)
{
	struct tu_fx *f = *state;
	init_dd(f);
	struct rk_datadir *dd = open_dd(f, RK_DD_EXCLUSIVE);
	assert_int_equal(rk_policy_set(dd, "ks/t1/", "kb", 0, -1), 0);
	assert_int_equal(rk_policy_set(dd, "/ks/t1/sub", NULL, 4096, RK_COMP_NONE), 0);
	assert_int_equal(rk_policy_set(dd, "/ks/t10", "ka", 16384, -1), 0);
	assert_int_equal(dd->ntables, 4);

	const struct rk_table *t;
	t = rk_policy_lookup(dd, "/ks/t1/x");
	assert_string_equal(t->path, "/ks/t1");
	assert_string_equal(t->key, "kb");
	assert_int_equal(t->chunk_size, 64 * 1024); /* inherited from the root table */
	assert_int_equal(t->comp, RK_COMP_SNAPPY);
	assert_string_equal(rk_policy_lookup(dd, "/ks/t1")->path, "/ks/t1");
	assert_string_equal(rk_policy_lookup(dd, "/ks/t10")->path, "/ks/t10");
	assert_string_equal(rk_policy_lookup(dd, "/ks/t10/data.db")->path, "/ks/t10");
	assert_string_equal(rk_policy_lookup(dd, "/ks/t100/x")->path, "/");
	assert_string_equal(rk_policy_lookup(dd, "/ks/t")->path, "/");
	assert_string_equal(rk_policy_lookup(dd, "/ks")->path, "/");
	assert_string_equal(rk_policy_lookup(dd, "/other/file")->path, "/");
	assert_string_equal(rk_policy_lookup(dd, "/")->path, "/");
	/* the longest prefix wins, and a nested table inherits its parent's key */
	t = rk_policy_lookup(dd, "/ks/t1/sub/deeper/file");
	assert_string_equal(t->path, "/ks/t1/sub");
	assert_string_equal(t->key, "kb");
	assert_int_equal(t->chunk_size, 4096);
	assert_int_equal(t->comp, RK_COMP_NONE);
	assert_string_equal(rk_policy_lookup(dd, "/ks/t1/subway")->path, "/ks/t1");

	/* update in place */
	assert_int_equal(rk_policy_set(dd, "/ks/t1", "ka", 0, -1), 0);
	assert_int_equal(dd->ntables, 4);
	assert_string_equal(rk_policy_lookup(dd, "/ks/t1/x")->key, "ka");
	assert_int_equal(rk_policy_set(dd, "/", "kb", 0, -1), 0);
	assert_string_equal(rk_policy_lookup(dd, "/x")->key, "kb");
	/* bad input */
	assert_int_equal(rk_policy_set(dd, "/a/../b", "ka", 0, -1), -EINVAL);
	assert_int_equal(rk_policy_set(dd, "/.rekeyfs", "ka", 0, -1), -EINVAL);
	assert_int_equal(rk_policy_set(dd, "/x", "ka", 5000, -1), -EINVAL);
	assert_int_equal(rk_policy_set(dd, "/x", "bad key", 0, -1), -EINVAL);
	assert_int_equal(rk_policy_set(dd, "/x", "", 0, -1), -EINVAL);
	assert_int_equal(rk_policy_set(dd, "/ks/t1", "a\nb", 0, -1), -EINVAL);
	/* the policy file is one table per line with blank-separated fields:
	 * a table path with blanks would be read back as another table */
	static const char *blanks[] = {"/ks/my table", "/ks/t1\ntable / key=kb", "/ks/t\t1", "/ks/t1\r"};
	for (size_t i = 0; i < RK_ARRAY_SIZE(blanks); i++)
		assert_int_equal(rk_policy_set(dd, blanks[i], "kb", 0, -1), -EINVAL);
	assert_string_equal(rk_policy_lookup(dd, "/ks/t1/x")->key, "ka");
	assert_int_equal(dd->ntables, 4);

	/* saved and read back */
	assert_int_equal(rk_policy_save(dd), 0);
	rk_datadir_close(dd);
	dd = open_dd(f, RK_DD_SHARED);
	assert_int_equal(dd->ntables, 4);
	assert_string_equal(dd->tables[0].path, "/");
	assert_string_equal(dd->tables[0].key, "kb");
	t = rk_policy_lookup(dd, "/ks/t1/sub/f");
	assert_string_equal(t->path, "/ks/t1/sub");
	assert_int_equal(t->chunk_size, 4096);
	assert_int_equal(t->comp, RK_COMP_NONE);
	t = rk_policy_lookup(dd, "/ks/t10/f");
	assert_string_equal(t->key, "ka");
	assert_int_equal(t->chunk_size, 16384);
	assert_string_equal(rk_policy_lookup(dd, "/ks/t1/f")->key, "ka");
	rk_datadir_close(dd);
}

static void test_policy_malformed(void **state)
{
	struct tu_fx *f = *state;
	char path[PATH_MAX];
	struct rk_datadir *dd = NULL;
	init_dd(f);
	tu_path(path, "%s/.rekeyfs/policy", f->data);
	static const char *bad[] = {
		"table /ks key=ka\n",                                   /* no root table */
		"table / chunk_kb=64\n",                                 /* no key */
		"table / key=ka chunk_kb=3\n",                           /* bad chunk size */
		"table / key=ka compression=zip\n",                      /* bad compression */
		"table / key=ka\ntable /../x key=ka\n",                  /* bad path */
		"tabel / key=ka\n",                                      /* unknown line */
		"",                                                      /* empty */
	};
	for (size_t i = 0; i < RK_ARRAY_SIZE(bad); i++) {
		tu_write_file(path, bad[i], strlen(bad[i]), 0644);
		tu_log_clear();
		int ret = rk_datadir_open(f->data, RK_DD_SHARED, &dd);
		if (ret != -EINVAL)
			fail_msg("policy %zu (%s) opened with %d", i, bad[i], ret);
		tu_assert_logged("policy");
	}
	/* comments, blank lines and unknown options are fine */
	const char *ok = "# comment\n\ntable / key=ka chunk_kb=8 compression=none future=1\n";
	tu_write_file(path, ok, strlen(ok), 0644);
	dd = open_dd(f, RK_DD_SHARED);
	assert_int_equal(dd->tables[0].chunk_size, 8192);
	rk_datadir_close(dd);
}

static void test_table_path_norm(void **state)
{
	(void)state;
	char out[RK_TABLE_PATH_MAX];
	static const struct {
		const char *in, *want;
	} good[] = {
		{"ks/t1/", "/ks/t1"}, {"/ks/t1", "/ks/t1"}, {"//ks//./t1//", "/ks/t1"}, {"", "/"},     {"/", "/"},
		{".", "/"},           {"./a", "/a"},        {"/a/.rekeyfs", "/a/.rekeyfs"}, {"...", "/..."}, {"..a", "/..a"},
		{"/.rekeyfsx", "/.rekeyfsx"},
	};
	for (size_t i = 0; i < RK_ARRAY_SIZE(good); i++) {
		assert_int_equal(rk_table_path_norm(good[i].in, out, sizeof(out)), 0);
		assert_string_equal(out, good[i].want);
	}
	static const char *bad[] = {"..", "/..", "../x", "/a/..", "a/../b", "/a/b/../../..", ".rekeyfs", "/.rekeyfs",
	                            "/.rekeyfs/x", "./.rekeyfs", "//.rekeyfs/"};
	for (size_t i = 0; i < RK_ARRAY_SIZE(bad); i++) {
		if (rk_table_path_norm(bad[i], out, sizeof(out)) != -EINVAL)
			fail_msg("'%s' accepted as '%s'", bad[i], out);
	}
	char small[6];
	assert_int_equal(rk_table_path_norm("/abcdefgh", small, sizeof(small)), -ENAMETOOLONG);
	assert_int_equal(rk_table_path_norm("/abcd", small, sizeof(small)), 0);
	assert_string_equal(small, "/abcd");
}

static void test_registry(void **state)
{
	struct tu_fx *f = *state;
	init_dd(f);
	struct rk_datadir *dd = open_dd(f, RK_DD_EXCLUSIVE);
	assert_int_equal(rk_registry_add(dd, f->kb), 0);
	assert_int_equal(rk_registry_add(dd, f->kb), 0); /* idempotent */
	assert_int_equal(rk_registry_add(dd, f->ka), 0);
	assert_int_equal(dd->nkeys, 2);
	rk_registry_find(dd, "ka")->state = RK_KS_DECRYPT_ONLY;
	assert_int_equal(rk_registry_save(dd), 0);
	rk_datadir_close(dd);

	dd = open_dd(f, RK_DD_SHARED);
	assert_int_equal(dd->nkeys, 2);
	struct rk_regent *e = rk_registry_find(dd, "kb");
	assert_non_null(e);
	assert_int_equal(e->cipher, RK_CIPHER_CHACHA20_POLY1305);
	assert_int_equal(e->bits, 256);
	assert_memory_equal(e->fp, f->kb->fp, RK_FP_BYTES);
	assert_int_equal(e->state, RK_KS_ACTIVE);
	e = rk_registry_find(dd, "ka");
	assert_non_null(e);
	assert_int_equal(e->state, RK_KS_DECRYPT_ONLY);
	assert_memory_equal(e->fp, f->ka->fp, RK_FP_BYTES);
	assert_int_equal(rk_registry_verify(dd, f->kr), 0);
	rk_datadir_close(dd);

	/* a key of the same name with another fingerprint is rejected */
	char other[PATH_MAX];
	tu_path(other, "%s/otherkeys", f->dir);
	tu_key_create(other, "AES/GCM/NoPadding", 256, "ka");
	struct rk_key *fake;
	assert_int_equal(rk_key_load(other, "ka", &fake), 0);
	assert_memory_not_equal(fake->fp, f->ka->fp, RK_FP_BYTES);
	dd = open_dd(f, RK_DD_EXCLUSIVE);
	tu_log_clear();
	assert_int_equal(rk_registry_add(dd, fake), -EKEYREJECTED);
	tu_assert_logged("'ka'", "fingerprint");
	assert_memory_equal(rk_registry_find(dd, "ka")->fp, f->ka->fp, RK_FP_BYTES);
	assert_int_equal(dd->nkeys, 2);
	/* a released key cannot come back */
	rk_registry_find(dd, "kb")->state = RK_KS_RELEASED;
	assert_int_equal(rk_registry_add(dd, f->kb), -EKEYREVOKED);
	rk_key_free(fake);
	rk_datadir_close(dd);

	/* released keys stay released across a restart, key file or not */
	dd = open_dd(f, RK_DD_EXCLUSIVE);
	rk_registry_find(dd, "ka")->state = RK_KS_RELEASED;
	assert_int_equal(rk_registry_save(dd), 0);
	rk_datadir_close(dd);
	dd = open_dd(f, RK_DD_SHARED);
	assert_int_equal(rk_registry_find(dd, "ka")->state, RK_KS_RELEASED);
	struct rk_keyring *kr2;
	struct rk_key *k;
	assert_int_equal(rk_keyring_new(f->keydir, &kr2), 0);
	rk_registry_apply_released(dd, kr2);
	assert_int_equal(rk_keyring_get(kr2, "ka", &k), -EKEYREVOKED);
	assert_int_equal(rk_keyring_get(kr2, "kb", &k), 0);
	assert_non_null(k->material);
	rk_keyring_free(kr2);
	rk_datadir_close(dd);

	/* a malformed registry is refused */
	char path[PATH_MAX];
	struct rk_datadir *bad = NULL;
	tu_path(path, "%s/.rekeyfs/keys", f->data);
	tu_write_file(path, "key ka cipher=AES/GCM/NoPadding bits=256 fp=zz state=active\n", 60, 0644);
	tu_log_clear();
	assert_int_equal(rk_datadir_open(f->data, RK_DD_SHARED, &bad), -EINVAL);
	tu_assert_logged("keys", "malformed");
}

static void test_registry_verify_changed_key(void **state)
{
	struct tu_fx *f = *state;
	init_dd(f);
	struct rk_datadir *dd = open_dd(f, RK_DD_EXCLUSIVE);
	assert_int_equal(rk_registry_add(dd, f->kb), 0);
	assert_int_equal(rk_registry_save(dd), 0);
	assert_int_equal(rk_registry_verify(dd, f->kr), 0);

	/* the key file ka is regenerated by accident */
	char kp[PATH_MAX];
	tu_path(kp, "%s/ka", f->keydir);
	assert_int_equal(unlink(kp), 0);
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "ka");
	struct rk_keyring *kr2;
	assert_int_equal(rk_keyring_new(f->keydir, &kr2), 0);
	tu_log_clear();
	assert_int_equal(rk_registry_verify(dd, kr2), -EKEYREJECTED);
	tu_assert_logged(kp, "'ka'", "fingerprint", "overwritten", "rotate");
	assert_int_equal(tu_log_find("'kb'", (const char *)NULL), -1); /* kb is fine */
	rk_keyring_free(kr2);

	/* a missing key file is not a mismatch (reported where data needs it) */
	assert_int_equal(unlink(kp), 0);
	assert_int_equal(rk_keyring_new(f->keydir, &kr2), 0);
	assert_int_equal(rk_registry_verify(dd, kr2), 0);
	rk_keyring_free(kr2);
	/* a released key is not checked */
	tu_key_create(f->keydir, "AES/GCM/NoPadding", 256, "ka");
	rk_registry_find(dd, "ka")->state = RK_KS_RELEASED;
	assert_int_equal(rk_keyring_new(f->keydir, &kr2), 0);
	assert_int_equal(rk_registry_verify(dd, kr2), 0);
	rk_keyring_free(kr2);
	rk_datadir_close(dd);
}

static void test_lock(void **state)
{
	struct tu_fx *f = *state;
	char pid[32];
	init_dd(f);
	snprintf(pid, sizeof(pid), "pid %ld", (long)getpid());
	struct rk_datadir *ex = open_dd(f, RK_DD_EXCLUSIVE), *other = NULL;
	/* a second exclusive open (another open file description) is refused */
	tu_log_clear();
	assert_int_equal(rk_datadir_open(f->data, RK_DD_EXCLUSIVE, &other), -EBUSY);
	assert_null(other);
	tu_assert_logged(f->data, pid);
	/* so is a shared one */
	tu_log_clear();
	assert_int_equal(rk_datadir_open(f->data, RK_DD_SHARED, &other), -EBUSY);
	tu_assert_logged(f->data, "in use");
	/* the lock file names the holder */
	char lockpath[PATH_MAX];
	tu_path(lockpath, "%s/.rekeyfs/lock", f->data);
	char *text = tu_read_file(lockpath, NULL);
	assert_non_null(text);
	assert_int_equal(atol(text), (long)getpid());
	free(text);
	/* status readers may look */
	other = open_dd(f, RK_DD_NOLOCK);
	rk_datadir_close(other);
	rk_datadir_close(ex);
	/* and forgets it on close: a later message must not name an exited process */
	assert_int_equal(tu_file_size(lockpath), 0);

	/* released: shared readers coexist, and keep a writer out */
	struct rk_datadir *s1 = open_dd(f, RK_DD_SHARED), *s2 = open_dd(f, RK_DD_SHARED);
	assert_int_equal(rk_datadir_open(f->data, RK_DD_EXCLUSIVE, &other), -EBUSY);
	rk_datadir_close(s1);
	assert_int_equal(rk_datadir_open(f->data, RK_DD_EXCLUSIVE, &other), -EBUSY);
	rk_datadir_close(s2);
	ex = open_dd(f, RK_DD_EXCLUSIVE);
	rk_datadir_close(ex);

	/* openat with an already-open directory fd behaves the same */
	int dfd = open(f->data, O_RDONLY | O_DIRECTORY);
	assert_true(dfd >= 0);
	assert_int_equal(rk_datadir_openat(dfd, f->data, RK_DD_EXCLUSIVE, &ex), 0);
	assert_int_equal(rk_datadir_openat(dfd, f->data, RK_DD_EXCLUSIVE, &other), -EBUSY);
	rk_datadir_close(ex);
	close(dfd);
}

static void test_find(void **state)
{
	struct tu_fx *f = *state;
	char nested[PATH_MAX], path[PATH_MAX], real[PATH_MAX];
	char *root = NULL, *rel = NULL;
	init_dd(f);
	assert_non_null(realpath(f->data, real));
	tu_path(nested, "%s/ks/t1/sub", f->data);
	tu_path(path, "%s/ks", f->data);
	assert_int_equal(mkdir(path, 0755), 0);
	tu_path(path, "%s/ks/t1", f->data);
	assert_int_equal(mkdir(path, 0755), 0);
	assert_int_equal(mkdir(nested, 0755), 0);

	assert_int_equal(rk_datadir_find(nested, &root, &rel), 0);
	assert_string_equal(root, real);
	assert_string_equal(rel, "/ks/t1/sub");
	free(root);
	free(rel);
	/* the root itself */
	assert_int_equal(rk_datadir_find(f->data, &root, &rel), 0);
	assert_string_equal(root, real);
	assert_string_equal(rel, "/");
	free(root);
	free(rel);
	/* a table directory that does not exist yet */
	tu_path(path, "%s/ks/t1/newtable", f->data);
	assert_int_equal(rk_datadir_find(path, &root, &rel), 0);
	assert_string_equal(root, real);
	assert_string_equal(rel, "/ks/t1/newtable");
	free(root);
	free(rel);
	/* through a symlink and a relative-looking path with dots */
	tu_path(path, "%s/link", f->dir);
	assert_int_equal(symlink(nested, path), 0);
	assert_int_equal(rk_datadir_find(path, &root, &rel), 0);
	assert_string_equal(root, real);
	assert_string_equal(rel, "/ks/t1/sub");
	free(root);
	free(rel);
	tu_path(path, "%s/ks/t1/../t1/./sub", f->data);
	assert_int_equal(rk_datadir_find(path, &root, &rel), 0);
	assert_string_equal(rel, "/ks/t1/sub");
	free(root);
	free(rel);
	/* outside any data directory */
	tu_path(path, "%s/keys", f->dir);
	root = rel = NULL;
	assert_int_equal(rk_datadir_find(path, &root, &rel), -ENOTDIR);
	assert_null(root);
}

/* The walk's order (checkpoints compare paths with it): per directory by
 * name, a directory before its contents; agrees with the real walk. */
struct order {
	char paths[16][64];
	int n;
};

static int collect(const struct rk_walk_ent *e, void *arg)
{
	struct order *o = arg;
	if (o->n < 16)
		snprintf(o->paths[o->n++], sizeof(o->paths[0]), "%s", e->rel);
	return 0;
}

static void test_walk_order(void **state)
{
	struct tu_fx *f = *state;
	assert_true(rk_walk_cmp("/a/b", "/a.x") < 0); /* strcmp says the opposite */
	assert_true(rk_walk_cmp("/a", "/a/b") < 0);
	assert_true(rk_walk_cmp("/a/b", "/a") > 0);
	assert_int_equal(rk_walk_cmp("/a/b", "/a/b"), 0);
	assert_true(rk_walk_cmp("/ab", "/a/z") > 0);
	assert_true(rk_walk_cmp("/a/z", "/b") < 0);
	const char *mk[] = {"a", "a.x", "a/b", "a/b/c", "ab", "b"};
	char p[512];
	for (size_t i = 0; i < sizeof(mk) / sizeof(mk[0]); i++) {
		tu_path(p, "%s/%s", f->dir, mk[i]);
		if (strcmp(mk[i], "a.x") == 0 || strcmp(mk[i], "ab") == 0 || strcmp(mk[i], "a/b/c") == 0)
			tu_write_file(p, "x", 1, 0644);
		else
			assert_int_equal(mkdir(p, 0755), 0);
	}
	int dfd = open(f->dir, O_RDONLY | O_DIRECTORY);
	assert_true(dfd >= 0);
	struct order o = {.n = 0};
	assert_int_equal(rk_walk(dfd, "/", collect, &o), 0);
	close(dfd);
	assert_true(o.n >= 6);
	for (int i = 1; i < o.n; i++)
		if (rk_walk_cmp(o.paths[i - 1], o.paths[i]) >= 0)
			fail_msg("walk visited %s before %s, but rk_walk_cmp orders them the other way", o.paths[i - 1],
			         o.paths[i]);
}

/* A tree deeper than PATH_MAX: the walk goes by directory fds and hands
 * every entry its whole path, whatever its length (it used to stop with
 * ENAMETOOLONG). */
struct deep {
	size_t files, maxlen;
	char last[64];
};

static int deep_visit(const struct rk_walk_ent *e, void *arg)
{
	struct deep *d = arg;
	size_t n = strlen(e->rel);
	if (n > d->maxlen)
		d->maxlen = n;
	if (S_ISREG(e->st->st_mode)) {
		d->files++;
		/* the name is the entry's, in its own directory */
		if (faccessat(e->dirfd, e->name, F_OK, AT_SYMLINK_NOFOLLOW) != 0)
			return -errno;
		snprintf(d->last, sizeof(d->last), "%s", e->rel + n - strlen(e->name));
	}
	return 0;
}

static void test_walk_deep(void **state)
{
	struct tu_fx *f = *state;
	char name[201];
	memset(name, 'd', 200);
	name[200] = '\0';
	int dfd = open(f->data, O_RDONLY | O_DIRECTORY);
	assert_true(dfd >= 0);
	int root = dup(dfd);
	for (int i = 0; i < 30; i++) { /* 30 * 201 > PATH_MAX */
		assert_int_equal(mkdirat(dfd, name, 0755), 0);
		int n = openat(dfd, name, O_RDONLY | O_DIRECTORY);
		assert_true(n >= 0);
		close(dfd);
		dfd = n;
	}
	int fd = openat(dfd, "deep.db", O_CREAT | O_WRONLY, 0644);
	assert_true(fd >= 0);
	close(fd);
	close(dfd);
	struct deep d = {0, 0, ""};
	assert_int_equal(rk_walk(root, "/", deep_visit, &d), 0);
	assert_int_equal(d.files, 1);
	assert_true(d.maxlen > PATH_MAX);
	assert_int_equal(d.maxlen, 30 * 201 + strlen("/deep.db"));
	assert_string_equal(d.last, "deep.db");
	/* remove it by fds too (tu_rmrf goes by paths) */
	dfd = dup(root);
	for (int i = 0; i < 30; i++) {
		int n = openat(dfd, name, O_RDONLY | O_DIRECTORY);
		close(dfd);
		dfd = n;
	}
	assert_int_equal(unlinkat(dfd, "deep.db", 0), 0);
	close(dfd);
	for (int depth = 29; depth >= 0; depth--) {
		dfd = dup(root);
		for (int i = 0; i < depth; i++) {
			int n = openat(dfd, name, O_RDONLY | O_DIRECTORY);
			close(dfd);
			dfd = n;
		}
		assert_int_equal(unlinkat(dfd, name, AT_REMOVEDIR), 0);
		close(dfd);
	}
	close(root);
}

/* Only a real, root's (or our), not group/world-writable .rekeyfs is a state
 * directory: a planted one, a symlink or a loose one is passed over when
 * finding the data directory, and refused when opening it. */
static void test_find_untrusted_state(void **state)
{
	struct tu_fx *f = *state;
	char path[PATH_MAX], sd[PATH_MAX], real[PATH_MAX];
	char *root = NULL, *rel = NULL;
	init_dd(f);
	assert_non_null(realpath(f->data, real));
	tu_path(path, "%s/t1", f->data);
	assert_int_equal(mkdir(path, 0755), 0);
	/* a symlink to the root's state directory */
	tu_path(sd, "%s/t1/.rekeyfs", f->data);
	assert_int_equal(symlink("../.rekeyfs", sd), 0);
	assert_int_equal(rk_datadir_find(path, &root, &rel), 0);
	assert_string_equal(root, real);
	assert_string_equal(rel, "/t1");
	free(root);
	free(rel);
	struct rk_datadir *dd = NULL;
	assert_true(rk_datadir_open(path, RK_DD_NOLOCK, &dd) < 0);
	assert_null(dd);
	assert_int_equal(unlink(sd), 0);
	/* a group-writable copy */
	assert_int_equal(mkdir(sd, 0770), 0);
	assert_int_equal(chmod(sd, 0770), 0);
	assert_int_equal(rk_datadir_find(path, &root, &rel), 0);
	assert_string_equal(root, real);
	assert_string_equal(rel, "/t1");
	free(root);
	free(rel);
	assert_true(rk_datadir_open(path, RK_DD_NOLOCK, &dd) < 0);
	/* another user's (only root can make one to test with) */
	if (geteuid() == 0) {
		assert_int_equal(chmod(sd, 0700), 0);
		assert_int_equal(chown(sd, 65534, 65534), 0);
		assert_int_equal(rk_datadir_find(path, &root, &rel), 0);
		assert_string_equal(root, real);
		free(root);
		free(rel);
	}
	struct stat st;
	const char *why = NULL;
	assert_int_equal(lstat(f->data, &st), 0);
	st.st_mode = S_IFDIR | 0700;
	st.st_uid = 0;
	assert_int_equal(rk_statedir_check(&st, &why), 0);
	st.st_mode = S_IFDIR | 0702;
	assert_int_equal(rk_statedir_check(&st, &why), -EPERM);
	st.st_mode = S_IFLNK | 0777;
	assert_int_equal(rk_statedir_check(&st, &why), -ELOOP);
	/* the real one is still trusted */
	dd = open_dd(f, RK_DD_NOLOCK);
	rk_datadir_close(dd);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_init),     T(test_open_not_datadir), T(test_policy),
		T(test_policy_malformed), T(test_table_path_norm), T(test_registry),
		T(test_registry_verify_changed_key), T(test_lock), T(test_find), T(test_walk_order),
		T(test_walk_deep), T(test_find_untrusted_state),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
