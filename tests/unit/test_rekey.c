/* rekeyfs unit tests - the rekey engine's decisions (rekeyfs/rekey.h): a
 * crafted data directory with files under the old and the new key, a
 * COUNTS_DIRTY header, a cut-short file, a corrupt chunk and a plain file.
 * Asserts which files are chosen, whole file versus in place, the typed
 * outcomes, that every chunk lock the engine takes through the access
 * interface is released, the checkpoint format, the release verdict and
 * the offline rekey. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/format.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/keys.h"
#include "rekeyfs/rekey.h"

#define CS (64 * 1024)
#define SS (CS + RK_SLOT_OVERHEAD)

struct fx {
	struct tu_fx t; /* data initialised under ka (chunk CS, no compression); kb */
	int rootfd;
};

/* A chunk file data/name with n chunks, chunk i under nold > i ? ka : kb. */
static void make_file(struct fx *f, const char *name, uint64_t n, uint64_t nold)
{
	char path[PATH_MAX];
	struct rk_cf *cf;
	uint8_t *data = tu_malloc(CS);
	tu_path(path, "%s/%s", f->t.data, name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_create(fd, path, f->t.kr, CS, RK_COMP_NONE, f->t.kb, &cf), 0);
	for (uint64_t i = 0; i < n; i++) {
		tu_fill_random(data, CS, i + 7);
		struct rk_key *k = i < nold ? f->t.ka : f->t.kb;
		assert_int_equal(rk_cf_pwrite(cf, data, CS, i * CS, k, RK_COMP_NONE), CS);
	}
	assert_int_equal(rk_cf_sync(cf), 0);
	rk_cf_close(cf);
	close(fd);
	free(data);
}

/* A file whose clean header says every chunk is on kb, then one chunk moved
 * to ka without the final sync: COUNTS_DIRTY stays set on disk. */
static void make_dirty_file(struct fx *f, const char *name)
{
	char path[PATH_MAX];
	struct rk_cf *cf;
	uint8_t *data = tu_malloc(CS);
	make_file(f, name, 4, 0);
	tu_path(path, "%s/%s", f->t.data, name);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(rk_cf_open(fd, path, f->t.kr, true, &cf), 0);
	tu_fill_random(data, CS, 99);
	assert_int_equal(rk_cf_pwrite(cf, data, CS, 0, f->t.ka, RK_COMP_NONE), CS);
	assert_true(rk_cf_disk_dirty(cf));
	rk_cf_close(cf);
	close(fd);
	free(data);
}

static int setup(void **state)
{
	static const struct tu_fx_opts o = {.keys = tu_fx_aes_keys, .nkeys = 2, .init_chunk = CS, .init_comp = RK_COMP_NONE};
	struct fx *f = tu_fx_new(sizeof(*f), &o);
	char path[PATH_MAX];
	if (!f)
		return -1;
	make_file(f, "all_old", 4, 4);     /* every chunk moves: whole file */
	make_file(f, "few_old", 8, 1);     /* one of eight moves: in place */
	make_file(f, "half_old", 4, 2);    /* half: whole file */
	make_file(f, "on_target", 4, 0);   /* nothing to do */
	make_dirty_file(f, "dirty");       /* counts say nothing, but dirty */
	make_file(f, "cut", 4, 4);         /* cut short after two slots */
	tu_path(path, "%s/cut", f->t.data);
	assert_int_equal(truncate(path, (off_t)rk_slot_off(SS, 2)), 0);
	make_file(f, "corrupt", 4, 4);     /* chunk 1 does not authenticate */
	tu_path(path, "%s/corrupt", f->t.data);
	tu_flip_bit(path, (off_t)rk_slot_off(SS, 1) + RK_SLOT_OVERHEAD + 100, 3);
	tu_path(path, "%s/plain", f->t.data);
	tu_write_file(path, "just text\n", 10, 0644);
	f->rootfd = open(f->t.data, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (f->rootfd < 0)
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	close(f->rootfd);
	tu_fx_free(f);
	return 0;
}

static struct rk_rekey_need examine(struct fx *f, const char *name, bool whole_ok)
{
	struct rk_rekey_need n;
	char rel[PATH_MAX];
	tu_path(rel, "/%s", name);
	assert_int_equal(rk_rekey_examine(f->rootfd, name, rel, f->t.kb, whole_ok, &n), 0);
	return n;
}

/* ---- which files, and how ------------------------------------------------------------------ */
static void test_examine(void **state)
{
	struct fx *f = *state;
	struct rk_rekey_need n = examine(f, "all_old", true);
	assert_true(n.chunk && n.needs && n.whole);
	assert_int_equal(n.nchunks, 4);
	assert_int_equal(n.todo, 4);
	assert_int_equal(n.chunk_size, CS);
	n = examine(f, "all_old", false); /* -o whole_file=off */
	assert_true(n.needs && !n.whole);
	n = examine(f, "half_old", true);
	assert_true(n.needs && n.whole);
	assert_int_equal(n.todo, 2);
	n = examine(f, "few_old", true);
	assert_true(n.needs && !n.whole);
	assert_int_equal(n.nchunks, 8);
	assert_int_equal(n.todo, 1);
	n = examine(f, "on_target", true);
	assert_true(n.chunk && !n.needs && !n.whole);
	n = examine(f, "dirty", true);
	assert_true(n.chunk && n.needs); /* stale counts: every chunk is looked at */
	n = examine(f, "plain", true);
	assert_false(n.chunk || n.needs);
	n = examine(f, "gone", true); /* removed meanwhile: nothing */
	assert_false(n.chunk || n.needs);
}

static void test_classify(void **state)
{
	(void)state;
	assert_int_equal(rk_rekey_classify(0), RK_RO_DONE);
	assert_int_equal(rk_rekey_classify(-EUCLEAN), RK_RO_SKIPPED_UNREADABLE);
	assert_int_equal(rk_rekey_classify(-ENOKEY), RK_RO_SKIPPED_UNREADABLE);
	assert_int_equal(rk_rekey_classify(-EKEYREVOKED), RK_RO_SKIPPED_UNREADABLE);
	assert_int_equal(rk_rekey_classify(-EKEYREJECTED), RK_RO_SKIPPED_UNREADABLE);
	assert_int_equal(rk_rekey_classify(-ENOSPC), RK_RO_RETRY_NO_SPACE);
	assert_int_equal(rk_rekey_classify(-EDQUOT), RK_RO_RETRY_NO_SPACE);
	assert_int_equal(rk_rekey_classify(-EIO), RK_RO_RETRY_NO_SPACE);
	assert_int_equal(rk_rekey_classify(-EAGAIN), RK_RO_CHANGED);
	assert_int_equal(rk_rekey_classify(-EBUSY), RK_RO_CHANGED);
	assert_int_equal(rk_rekey_classify(-ECANCELED), RK_RO_STOPPED);
	assert_int_equal(rk_rekey_classify(-EPERM), RK_RO_FAILED);
}

/* ---- the access interface, counted --------------------------------------------------------- */
#define MAXIDX 64
struct counted {
	struct fx *f;
	int gets, puts, opens, closes, begins, commits;
	int locks, unlocks;
	int held[MAXIDX];   /* per chunk: 1 while locked */
	int nheld, max_held;
	int commit_ret;     /* != 0: the file "changed behind us" at commit */
};

struct handle {
	const struct rk_walk_ent *e;
	int fd;
	struct rk_cf *cf;
};

static int c_get(void *arg, const struct rk_walk_ent *e, void **h)
{
	struct counted *c = arg;
	struct handle *hd = calloc(1, sizeof(*hd));
	assert_non_null(hd);
	hd->e = e;
	hd->fd = -1;
	c->gets++;
	*h = hd;
	return 0;
}

static void c_put(void *arg, void *h)
{
	struct counted *c = arg;
	struct handle *hd = h;
	assert_int_equal(hd->fd, -1); /* closed before it is let go */
	c->puts++;
	free(h);
}

static int c_begin(void *arg, void *h)
{
	(void)h;
	((struct counted *)arg)->begins++;
	return 0;
}

static int c_commit(void *arg, void *h, struct rk_replace *r)
{
	struct counted *c = arg;
	(void)h;
	c->commits++;
	if (c->commit_ret)
		return c->commit_ret;
	return rk_replace_commit(r, NULL, NULL);
}

static int c_open(void *arg, void *h, struct rk_cf **cf)
{
	struct counted *c = arg;
	struct handle *hd = h;
	hd->fd = openat(hd->e->dirfd, hd->e->name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	assert_true(hd->fd >= 0);
	int ret = rk_cf_open(hd->fd, hd->e->rel, c->f->t.kr, true, &hd->cf);
	if (ret < 0) {
		close(hd->fd);
		hd->fd = -1;
		return ret;
	}
	c->opens++;
	*cf = hd->cf;
	return 0;
}

static void c_lock(void *arg, void *h, uint64_t idx)
{
	struct counted *c = arg;
	(void)h;
	assert_true(idx < MAXIDX);
	assert_int_equal(c->held[idx], 0); /* never taken twice */
	c->held[idx] = 1;
	c->locks++;
	if (++c->nheld > c->max_held)
		c->max_held = c->nheld;
}

static void c_unlock(void *arg, void *h, uint64_t idx)
{
	struct counted *c = arg;
	(void)h;
	assert_true(idx < MAXIDX);
	assert_int_equal(c->held[idx], 1); /* released only when held */
	c->held[idx] = 0;
	c->unlocks++;
	c->nheld--;
}

static int c_close(void *arg, void *h, struct rk_cf *cf)
{
	struct counted *c = arg;
	struct handle *hd = h;
	assert_ptr_equal(cf, hd->cf);
	int ret = rk_cf_sync(cf);
	rk_cf_close(cf);
	close(hd->fd);
	hd->fd = -1;
	c->closes++;
	return ret;
}

static int rekey_counted(struct fx *f, struct counted *c, const char *name, bool whole_ok,
                         struct rk_rekey_file_result *out)
{
	struct rk_rekey_access acc = {.get = c_get, .put = c_put, .replace_begin = c_begin, .replace_commit = c_commit,
	                              .open = c_open, .lock = c_lock, .unlock = c_unlock, .close = c_close, .arg = c};
	struct rk_rekey_engine eng = {.kr = f->t.kr, .acc = &acc};
	char rel[PATH_MAX];
	struct stat st;
	tu_path(rel, "/%s", name);
	assert_int_equal(fstatat(f->rootfd, name, &st, AT_SYMLINK_NOFOLLOW), 0);
	struct rk_walk_ent e = {rel, f->rootfd, name, &st};
	struct rk_rekey_need need = examine(f, name, whole_ok);
	c->f = f;
	int ret = rk_rekey_file(&eng, &e, f->t.kb, &need, out);
	/* every chunk lock taken is released, every file let go */
	assert_int_equal(c->locks, c->unlocks);
	assert_int_equal(c->nheld, 0);
	assert_int_equal(c->gets, c->puts);
	assert_int_equal(c->opens, c->closes);
	return ret;
}

static void assert_all_on_target(struct fx *f, const char *name)
{
	struct rk_rekey_need n = examine(f, name, true);
	assert_true(n.chunk);
	assert_false(n.needs);
	assert_int_equal(n.todo, 0);
}

static void test_whole_file(void **state)
{
	struct fx *f = *state;
	struct counted c = {0};
	struct rk_rekey_file_result r;
	struct stat before, after;
	assert_int_equal(fstatat(f->rootfd, "all_old", &before, 0), 0);
	assert_int_equal(rekey_counted(f, &c, "all_old", true, &r), 0);
	assert_true(r.replaced);
	assert_false(r.visited);
	assert_int_equal(r.outcome, RK_RO_DONE);
	assert_int_equal(r.res.chunks_rewritten, 4);
	assert_int_equal(c.begins, 1);
	assert_int_equal(c.commits, 1);
	assert_int_equal(c.locks, 0); /* a copy nobody sees: no chunk locks */
	assert_int_equal(c.opens, 0);
	assert_int_equal(fstatat(f->rootfd, "all_old", &after, 0), 0);
	assert_true(before.st_ino != after.st_ino); /* renamed into place */
	assert_all_on_target(f, "all_old");
}

static void test_in_place(void **state)
{
	struct fx *f = *state;
	struct counted c = {0};
	struct rk_rekey_file_result r;
	assert_int_equal(rekey_counted(f, &c, "few_old", true, &r), 0);
	assert_false(r.replaced);
	assert_true(r.visited);
	assert_int_equal(r.outcome, RK_RO_DONE);
	assert_int_equal(r.res.chunks_checked, 8);
	assert_int_equal(r.res.chunks_rewritten, 1);
	assert_int_equal(c.begins, 0);
	assert_int_equal(c.locks, 8); /* one lock per chunk looked at */
	assert_int_equal(c.max_held, 1);
	assert_all_on_target(f, "few_old");

	/* whole file off: in place even when every chunk moves */
	memset(&c, 0, sizeof(c));
	assert_int_equal(rekey_counted(f, &c, "half_old", false, &r), 0);
	assert_true(r.visited && !r.replaced);
	assert_int_equal(r.res.chunks_rewritten, 2);
	assert_int_equal(c.locks, 4);
	assert_all_on_target(f, "half_old");

	/* dirty counts: every chunk is checked, the moved one rekeyed */
	memset(&c, 0, sizeof(c));
	assert_int_equal(rekey_counted(f, &c, "dirty", true, &r), 0);
	assert_true(r.visited);
	assert_int_equal(r.res.chunks_rewritten, 1);
	assert_all_on_target(f, "dirty");
}

static void test_changed_behind_us(void **state)
{
	struct fx *f = *state;
	struct counted c = {.commit_ret = -EAGAIN};
	struct rk_rekey_file_result r;
	struct stat before, after;
	assert_int_equal(fstatat(f->rootfd, "half_old", &before, 0), 0);
	assert_int_equal(rk_rekey_classify(c.commit_ret), RK_RO_CHANGED);
	assert_int_equal(rekey_counted(f, &c, "half_old", true, &r), 0);
	/* the copy is dropped, the file rekeyed in place instead */
	assert_int_equal(c.commits, 1);
	assert_false(r.replaced);
	assert_true(r.visited);
	assert_int_equal(r.outcome, RK_RO_DONE);
	assert_int_equal(r.res.chunks_rewritten, 2);
	assert_int_equal(c.locks, 4);
	assert_int_equal(fstatat(f->rootfd, "half_old", &after, 0), 0);
	assert_true(before.st_ino == after.st_ino);
	assert_all_on_target(f, "half_old");
}

static void test_unreadable(void **state)
{
	struct fx *f = *state;
	struct counted c = {0};
	struct rk_rekey_file_result r;
	/* a cut-short file: no whole-file copy (it would turn lost chunks into
	 * zeros), and in place the format refuses to write (a dirty header
	 * would lose the count of the lost chunks): every chunk keeps its key */
	assert_true(examine(f, "cut", true).whole);
	assert_int_equal(rekey_counted(f, &c, "cut", true, &r), 0);
	assert_int_equal(c.commits, 0);
	assert_false(r.replaced);
	assert_true(r.visited);
	assert_int_equal(r.outcome, RK_RO_SKIPPED_UNREADABLE);
	assert_int_equal(r.res.chunks_failed, 4);
	assert_int_equal(r.res.chunks_rewritten, 0);
	assert_int_equal(c.locks, 2); /* the two stored chunks were looked at */
	assert_int_equal(examine(f, "cut", true).todo, 4);

	/* a corrupt chunk: left under its key, the others move */
	memset(&c, 0, sizeof(c));
	assert_int_equal(rekey_counted(f, &c, "corrupt", true, &r), 0);
	assert_false(r.replaced);
	assert_int_equal(r.outcome, RK_RO_SKIPPED_UNREADABLE);
	assert_int_equal(r.res.chunks_failed, 1);
	assert_int_equal(r.res.chunks_rewritten, 3);
	assert_int_equal(c.locks, 4);
	struct rk_rekey_need n = examine(f, "corrupt", true);
	assert_int_equal(n.todo, 1);
}

/* ---- checkpoint ------------------------------------------------------------------------------ */
static void test_checkpoint(void **state)
{
	struct fx *f = *state;
	struct rk_datadir *dd;
	char filter[RK_REKEY_MAX_TABLES][RK_TABLE_PATH_MAX] = {{0}};
	char position[PATH_MAX] = "/ks/t1/file";
	struct rk_rekey_tstat *tables = calloc(RK_REKEY_MAX_TABLES, sizeof(*tables));
	int nt = 0;
	assert_non_null(tables);
	snprintf(filter[0], RK_TABLE_PATH_MAX, "/ks/t1");
	snprintf(filter[1], RK_TABLE_PATH_MAX, "/ks/t2");
	struct rk_rekey_tstat *t = rk_rekey_tstat_for(tables, &nt, "/ks/t1");
	t->files_done = 3;
	t->chunks_checked = 10;
	t->chunks_rewritten = 7;
	t->bytes_rewritten = 7 * CS;
	t->chunks_failed = 1;
	assert_ptr_equal(rk_rekey_tstat_for(tables, &nt, "/ks/t1"), t);
	assert_int_equal(nt, 1);
	struct rk_rekey_ckpt c = {.state = RK_RS_PAUSED, .sweep = 5, .started = 1000, .filter = filter, .nfilter = 2,
	                          .position = position, .tables = tables, .ntables = nt};
	char *text;
	size_t len;
	assert_int_equal(rk_rekey_ckpt_format(&c, &text, &len), 0);
	static const char want[] = "# rekeyfs walker checkpoint: where a sweep resumes after a restart\n"
	                           "state paused\nsweep 5\nstarted 1000\nfinished 0\nfilter /ks/t1 /ks/t2\n"
	                           "position /ks/t1/file\n"
	                           "finished_sweep 0\nresult -\nremaining -\nreason -\n"
	                           "table /ks/t1 files_done=3 chunks_checked=10 chunks_rewritten=7 "
	                           "bytes_rewritten=458752 chunks_failed=1\n";
	assert_string_equal(text, want);
	assert_int_equal(len, strlen(want));
	assert_int_equal(rk_datadir_open(f->t.data, RK_DD_EXCLUSIVE, &dd), 0);
	assert_int_equal(rk_rekey_ckpt_write(dd->statefd, text, len), 0);
	free(text);

	char f2[RK_REKEY_MAX_TABLES][RK_TABLE_PATH_MAX];
	char p2[PATH_MAX] = "";
	struct rk_rekey_tstat *t2 = calloc(RK_REKEY_MAX_TABLES, sizeof(*t2));
	assert_non_null(t2);
	struct rk_rekey_ckpt l = {.filter = f2, .position = p2, .tables = t2};
	assert_int_equal(rk_rekey_ckpt_load(dd->statefd, &l), 0);
	assert_true(l.resume);
	assert_int_equal(l.state, RK_RS_PAUSED);
	assert_int_equal(l.sweep, 5);
	assert_int_equal(l.started, 1000);
	assert_int_equal(l.nfilter, 2);
	assert_string_equal(f2[1], "/ks/t2");
	assert_string_equal(p2, "/ks/t1/file");
	assert_int_equal(l.ntables, 1);
	assert_string_equal(t2[0].path, "/ks/t1");
	assert_int_equal(t2[0].chunks_rewritten, 7);
	assert_int_equal(t2[0].bytes_rewritten, 7 * CS);
	assert_int_equal(t2[0].chunks_failed, 1);
	assert_true(rk_rekey_filter_has(f2, 2, "/ks/t2"));
	assert_false(rk_rekey_filter_has(f2, 2, "/"));
	assert_true(rk_rekey_filter_has(f2, 0, "/"));

	/* a finished sweep does not resume; a bare filter line is every table */
	static const char done[] = "state done\nsweep 0\nfilter\nposition -\n";
	assert_int_equal(rk_write_file_atomic(dd->statefd, RK_REKEY_CKPT_FILE, done, strlen(done), 0600), 0);
	struct rk_rekey_ckpt d = {.filter = f2, .position = p2};
	assert_int_equal(rk_rekey_ckpt_load(dd->statefd, &d), 0);
	assert_false(d.resume);
	assert_int_equal(d.nfilter, 0);
	assert_string_equal(p2, "");
	/* a format-1 file (no outcome lines): no result, no rate, nothing queued */
	assert_int_equal(d.finished_sweep, 0);
	assert_int_equal(d.result, RK_RR_NONE);
	assert_false(d.remaining_known);
	assert_false(d.rate_set);
	assert_false(d.has_queued);
	assert_string_equal(d.reason, "");

	/* format 2: the last sweep's outcome, the run-time rate, a queued request */
	char q[RK_REKEY_MAX_TABLES][RK_TABLE_PATH_MAX] = {{0}};
	snprintf(q[0], RK_TABLE_PATH_MAX, "/ks/t2");
	t->counted = true;
	t->remaining = 4;
	struct rk_rekey_ckpt c2 = {.state = RK_RS_IDLE, .sweep = 6, .filter = filter, .position = position,
	                           .tables = tables, .ntables = nt, .finished_sweep = 6, .result = RK_RR_INCOMPLETE,
	                           .remaining = 4, .remaining_known = true, .rate = 65536, .rate_set = true,
	                           .has_queued = true, .queued = q, .nqueued = 1};
	snprintf(c2.reason, sizeof(c2.reason), "1 chunk(s)\ncould not be read");
	assert_int_equal(rk_rekey_ckpt_format(&c2, &text, &len), 0);
	assert_non_null(strstr(text, "\nreason 1 chunk(s) could not be read\n")); /* one line, whatever the text */
	assert_non_null(strstr(text, " chunks_failed=1 remaining=4\n"));
	assert_int_equal(rk_rekey_ckpt_write(dd->statefd, text, len), 0);
	free(text);
	char q2[RK_REKEY_MAX_TABLES][RK_TABLE_PATH_MAX];
	memset(t2, 0, RK_REKEY_MAX_TABLES * sizeof(*t2));
	struct rk_rekey_ckpt e = {.filter = f2, .position = p2, .tables = t2, .queued = q2};
	assert_int_equal(rk_rekey_ckpt_load(dd->statefd, &e), 0);
	assert_false(e.resume);
	assert_int_equal(e.finished_sweep, 6);
	assert_int_equal(e.result, RK_RR_INCOMPLETE);
	assert_string_equal(rk_rekey_result_name(e.result), "incomplete");
	assert_true(e.remaining_known);
	assert_int_equal(e.remaining, 4);
	assert_string_equal(e.reason, "1 chunk(s) could not be read");
	assert_true(e.rate_set);
	assert_int_equal(e.rate, 65536);
	assert_true(e.has_queued);
	assert_int_equal(e.nqueued, 1);
	assert_string_equal(q2[0], "/ks/t2");
	assert_true(t2[0].counted);
	assert_int_equal(t2[0].remaining, 4);
	rk_datadir_close(dd);
	free(tables);
	free(t2);
}

/* ---- release scan and offline rekey ---------------------------------------------------------- */
static void test_release_and_offline(void **state)
{
	struct fx *f = *state;
	struct rk_release_verdict v;
	char list[RK_RELEASE_FIRST * PATH_MAX + 16];
	/* before: ka is under most files */
	assert_int_equal(rk_release_scan(f->rootfd, "ka", NULL, &v), 0);
	assert_int_equal(v.chunks, 4 + 1 + 2 + 1 + 4 + 4);
	assert_int_equal(v.files, 6);
	assert_int_equal(v.nfirst, RK_RELEASE_FIRST);
	rk_release_list(&v, list, sizeof(list));
	assert_string_equal(list, "/all_old, /corrupt, /cut, /dirty, ...");
	assert_int_equal(rk_release_scan(f->rootfd, "nope", NULL, &v), 0);
	assert_int_equal(v.chunks, 0);

	/* the offline rekey of the root table to kb */
	struct rk_datadir *dd;
	assert_int_equal(rk_open_offline(f->t.data, RK_DD_EXCLUSIVE, f->t.kr, f->t.keydir, true, &dd), 0);
	assert_int_equal(rk_registry_add(dd, f->t.kb), 0);
	assert_int_equal(rk_policy_set(dd, "/", "kb", 0, -1), 0);
	assert_int_equal(rk_registry_save(dd), 0);
	assert_int_equal(rk_policy_save(dd), 0);
	struct rk_rekey_summary sum;
	assert_int_equal(rk_rekey_offline(dd, f->t.kr, NULL, 0, NULL, &sum), 0);
	/* all_old 4, few_old 1, half_old 2, dirty 1, cut 0 (4 fail), corrupt 3 (1 fails) */
	assert_int_equal(sum.rewritten, 4 + 1 + 2 + 1 + 0 + 3);
	assert_int_equal(sum.failed, 4 + 1);
	assert_int_equal(sum.files, 6); /* files with something to do, rekeyed or not */
	char p[PATH_MAX] = "";
	struct rk_rekey_ckpt c = {.position = p};
	assert_int_equal(rk_rekey_ckpt_load(dd->statefd, &c), 0);
	assert_int_equal(c.state, RK_RS_DONE);
	assert_false(c.resume);
	rk_datadir_close(dd);
	for (const char *const *n = (const char *const[]){"all_old", "few_old", "half_old", "dirty", "on_target", NULL};
	     *n; n++)
		assert_all_on_target(f, *n);

	/* after: only what cannot be read still holds ka */
	assert_int_equal(rk_release_scan(f->rootfd, "ka", NULL, &v), 0);
	assert_int_equal(v.chunks, 4 + 1); /* the cut file's, the corrupt chunk */
	assert_int_equal(v.files, 2);
	rk_release_list(&v, list, sizeof(list));
	assert_string_equal(list, "/corrupt, /cut");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_examine, setup, teardown),
		cmocka_unit_test(test_classify),
		cmocka_unit_test_setup_teardown(test_whole_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_in_place, setup, teardown),
		cmocka_unit_test_setup_teardown(test_changed_behind_us, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unreadable, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checkpoint, setup, teardown),
		cmocka_unit_test_setup_teardown(test_release_and_offline, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
