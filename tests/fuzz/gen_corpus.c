/* Make the seed corpus of the fuzz targets (scripts/fuzz-corpus runs it):
 * real headers, chunk files, journals, state files, key files, walker
 * checkpoints and control lines, made with the library itself in the same
 * sandbox the targets use (fuzz_common.h).  usage: gen_corpus OUTDIR
 * (OUTDIR/TARGET/NAME files; existing regress-* files are left alone). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/rekey.h"

static const char *outdir;
static struct fz_box box;

static void fail(const char *what, int r)
{
	fprintf(stderr, "gen_corpus: %s: %s\n", what, strerror(r < 0 ? -r : r));
	exit(1);
}

static void put(const char *target, const char *name, const void *p, size_t n)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", outdir, target);
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		fail(path, errno);
	snprintf(path, sizeof(path), "%s/%s/%s", outdir, target, name);
	int r = fz_write(path, p, n, 0644);
	if (r < 0)
		fail(path, r);
}

static void put_str(const char *target, const char *name, const char *s) { put(target, name, s, strlen(s)); }

static uint8_t *slurp(const char *path, size_t *n)
{
	uint8_t *p = fz_read(path, n);
	if (!p)
		fail(path, errno ? errno : EIO);
	return p;
}

/* a chunk file of nchunks chunks (a hole where mask has no bit), compressed or not */
static uint8_t *make_cf(const char *name, unsigned mask, unsigned nchunks, enum rk_comp comp, size_t *n)
{
	char path[PATH_MAX];
	struct rk_cf *cf;
	uint8_t chunk[FZ_CHUNK];
	snprintf(path, sizeof(path), "%s/%s", box.root, name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), r;
	if (fd < 0)
		fail(path, errno);
	if ((r = rk_cf_create(fd, name, box.kr, FZ_CHUNK, comp, box.key, &cf)) < 0)
		fail("rk_cf_create", r);
	for (unsigned i = 0; i < nchunks; i++) {
		if (!(mask & (1u << i)))
			continue;
		for (unsigned k = 0; k < FZ_CHUNK; k++)
			chunk[k] = comp == RK_COMP_SNAPPY ? (uint8_t)("rekeyfs "[k % 8]) : (uint8_t)(k * 13 + i);
		size_t len = i + 1 == nchunks ? FZ_CHUNK / 2 : FZ_CHUNK;
		if (rk_cf_pwrite(cf, chunk, len, (uint64_t)i * FZ_CHUNK, box.key, comp) != (ssize_t)len)
			fail("rk_cf_pwrite", EIO);
	}
	if ((r = rk_cf_truncate(cf, (uint64_t)(nchunks - 1) * FZ_CHUNK + FZ_CHUNK / 2, box.key, comp)) < 0)
		fail("rk_cf_truncate", r);
	if ((r = rk_cf_sync(cf)) < 0)
		fail("rk_cf_sync", r);
	rk_cf_close(cf);
	close(fd);
	return slurp(path, n);
}

static void gen_header_chunk(void)
{
	size_t n;
	uint8_t *p = make_cf("one", 1, 1, RK_COMP_SNAPPY, &n);
	put("chunk", "one-chunk-snappy", p, n);
	put("header", "valid", p, RK_HDR_AREA);
	uint8_t area[RK_HDR_AREA];
	memcpy(area, p, RK_HDR_AREA);
	memset(area, 0, RK_HDR_COPY_SIZE); /* torn copy A: copy B alone */
	put("header", "copy-b-only", area, sizeof(area));
	memcpy(area, p, RK_HDR_AREA);
	area[1] ^= 0x01; /* copy A's magic one bit off */
	put("header", "copy-a-damaged", area, sizeof(area));
	put("header", "short", p, 100);
	free(p);
	p = make_cf("holes", 5, 3, RK_COMP_NONE, &n);
	put("chunk", "hole-between", p, n);
	free(p);
}

static void copy_journal(const char *name)
{
	char jp[PATH_MAX];
	size_t n;
	snprintf(jp, sizeof(jp), "%s/.rekeyfs/%s", box.data, RK_JOURNAL_NAME);
	uint8_t *p = slurp(jp, &n);
	if (n <= 136)
		fail("journal holds no record", EINVAL);
	put("journal", name, p, n);
	free(p);
}

static void gen_journal(void)
{
	struct rk_datadir *dd;
	struct rk_journal *j;
	struct rk_cf *cf;
	char path[PATH_MAX];
	uint8_t chunk[FZ_CHUNK];
	int r;
	snprintf(path, sizeof(path), "%s/t1", box.data);
	for (int round = 0; round < 2; round++) {
		int fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			fail(path, errno);
		if ((r = rk_datadir_open(box.data, RK_DD_EXCLUSIVE, &dd)) < 0)
			fail("rk_datadir_open", r);
		if ((r = rk_journal_open(dd, box.kr, NULL, &j)) < 0)
			fail("rk_journal_open", r);
		if ((r = rk_cf_open(fd, "/t1", box.kr, true, &cf)) < 0 || (r = rk_journal_attach(j, cf, "/t1")) < 0)
			fail("open t1", r);
		memset(chunk, 0x42 + round, sizeof(chunk));
		if (round == 0)
			r = rk_cf_write_chunk(cf, 1, chunk, FZ_CHUNK, box.key, RK_COMP_NONE);
		else
			r = rk_cf_truncate(cf, FZ_CHUNK + 10, box.key, RK_COMP_NONE);
		if (r < 0 || (r = rk_journal_commit(j)) < 0)
			fail("write through the journal", r);
		copy_journal(round == 0 ? "slot-image" : "truncation");
		if ((r = rk_journal_detach(j, cf)) < 0 || (r = rk_cf_sync(cf)) < 0)
			fail("detach", r);
		rk_cf_close(cf);
		close(fd);
		if ((r = rk_journal_close(j)) < 0)
			fail("rk_journal_close", r);
		rk_datadir_close(dd);
		/* back as the targets have it */
		if (round == 0) {
			char cmd[PATH_MAX * 2];
			snprintf(cmd, sizeof(cmd), "rm -rf '%s'", box.data);
			if (system(cmd) != 0)
				fail("rm", EIO);
			fz_box_datadir(&box);
		}
	}
}

static void gen_datadir(void)
{
	char p1[PATH_MAX], p2[PATH_MAX];
	size_t n1, n2;
	snprintf(p1, sizeof(p1), "%s/.rekeyfs/policy", box.data);
	snprintf(p2, sizeof(p2), "%s/.rekeyfs/keys", box.data);
	uint8_t *a = slurp(p1, &n1), *b = slurp(p2, &n2);
	uint8_t *buf = malloc(n1 + n2 + 1);
	memcpy(buf, a, n1);
	buf[n1] = 0;
	memcpy(buf + n1 + 1, b, n2);
	put("datadir", "init", buf, n1 + 1 + n2);
	free(a);
	free(b);
	free(buf);
	static const char multi[] =
		"# tables\ntable / key=k1 chunk_kb=16 compression=snappy\n"
		"table /ks/t1 key=k2 chunk_kb=64 compression=none future=1\n"
		"table ks//t2/ key=k1 chunk_kb=1024\n"
		"\0"
		"key k1 cipher=AES/GCM/NoPadding bits=256 fp=00112233445566778899aabbccddeeff state=active\n"
		"key k2 cipher=ChaCha20/Poly1305/NoPadding bits=256 fp=ffeeddccbbaa99887766554433221100 state=released\n"
		"key k3 cipher=AES/GCM/NoPadding bits=128 fp=0102030405060708090a0b0c0d0e0f10 state=decrypt-only\n";
	put("datadir", "multi", multi, sizeof(multi) - 1);
}

static void gen_keyfile(void)
{
	char kp[PATH_MAX];
	size_t n;
	snprintf(kp, sizeof(kp), "%s/%s", box.keydir, FZ_KEY);
	uint8_t *p = slurp(kp, &n);
	put("keyfile", "aes256", p, n);
	free(p);
	int r;
	if ((r = rk_key_create(box.keydir, "ChaCha20/Poly1305/NoPadding", 256, "cc", NULL)) < 0 ||
	    (r = rk_key_create(box.keydir, "AES/GCM/NoPadding", 128, "a128", NULL)) < 0)
		fail("rk_key_create", r);
	snprintf(kp, sizeof(kp), "%s/cc", box.keydir);
	p = slurp(kp, &n);
	put("keyfile", "chacha256", p, n);
	free(p);
	snprintf(kp, sizeof(kp), "%s/a128", box.keydir);
	p = slurp(kp, &n);
	put("keyfile", "aes128", p, n);
	free(p);
}

static void gen_ckpt(void)
{
	static char filter[2][RK_TABLE_PATH_MAX] = {"/ks/t1", "/ks/t2"}, queued[1][RK_TABLE_PATH_MAX] = {"/"};
	static char position[PATH_MAX] = "/ks/t1/file 7";
	static struct rk_rekey_tstat tables[2] = {{.path = "/ks/t1", .files_done = 3, .chunks_checked = 100,
	                                           .chunks_rewritten = 40, .bytes_rewritten = 655360, .remaining = 2,
	                                           .counted = true},
	                                          {.path = "/ks/t2", .chunks_failed = 1}};
	struct rk_rekey_ckpt c = {.state = RK_RS_PAUSED, .sweep = 4, .started = 1700000000, .finished = 0,
	                          .filter = filter, .nfilter = 2, .position = position, .tables = tables, .ntables = 2,
	                          .finished_sweep = 3, .result = RK_RR_INCOMPLETE, .remaining = 5,
	                          .remaining_known = true, .reason = "chunk 3 of /ks/t1/x: corrupt", .rate = 10485760,
	                          .rate_set = true, .has_queued = true, .queued = queued, .nqueued = 1};
	char *text;
	size_t len;
	if (rk_rekey_ckpt_format(&c, &text, &len) < 0)
		fail("ckpt format", ENOMEM);
	put("ckpt", "paused", text, len);
	free(text);
	struct rk_rekey_ckpt d = {.state = RK_RS_DONE, .sweep = 1, .started = 1, .finished = 2, .position = position,
	                          .finished_sweep = 1, .result = RK_RR_COMPLETE};
	position[0] = '\0';
	if (rk_rekey_ckpt_format(&d, &text, &len) < 0)
		fail("ckpt format", ENOMEM);
	put("ckpt", "done", text, len);
	free(text);
}

static void gen_control(void)
{
	put_str("control", "alter", "alter /ks/t1 k1 64 snappy\n");
	put_str("control", "alter-dash", "alter ks/t2/ - - none");
	put_str("control", "rate", "rate 10MiB");
	put_str("control", "rekey", "rekey /ks/t1 /ks/./t2");
	put_str("control", "release", "release k1");
	put_str("control", "encrypt", "encrypt /a%20b /c%25d /e%09f");
	put_str("control", "numbers", "0 18446744073709551615 18446744073709551616 007 1k 1GB unlimited");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: gen_corpus OUTDIR\n");
		return 2;
	}
	outdir = argv[1];
	fz_quiet();
	fz_box_init(&box);
	fz_box_datadir(&box);
	gen_header_chunk();
	gen_datadir();
	gen_journal();
	gen_keyfile();
	gen_ckpt();
	gen_control();
	char cmd[PATH_MAX + 32];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", box.root);
	rk_keyring_free(box.kr);
	return system(cmd) == 0 ? 0 : 1;
}
