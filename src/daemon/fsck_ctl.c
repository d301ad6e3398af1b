/* rekeyfs daemon - the "fsck" control command: the coverage report of the
 * mounted data directory, rendered by the same library code as the offline
 * `rekeyctl fsck`.
 *
 *   fsck [--deep] [--json] [--verbose] [--key NAME] [--table T]
 *     -> "ok exit=N\n" followed by the report (N: RK_FSCK_EXIT_* bits), or
 *        "error exit=N message" (N: 16 usage, 8 operational)
 *   fsck-progress
 *     -> "ok running done=BYTES total=BYTES" while a deep check runs, else
 *        "ok idle done=BYTES total=BYTES" (the last deep check)
 *
 * Pending writes count: the journal is checkpointed and the headers of open
 * files are written before the scan; exact and deep scans read chunks
 * through the shared open-file state (pending journal images, chunk locks),
 * as the guarded release does. */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon.h"
#include "rekeyfs/common.h"
#include "rekeyfs/coverage.h"
#include "rekeyfs/fsck.h"
#include "rekeyfs/walk.h"

/* one fsck at a time (rank RK_RANK_FSCK, 10: the lowest, held for the whole
 * run, taken by trylock); its progress is readable by other control requests */
static pthread_mutex_t fsck_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool fsck_running;
static atomic_uint_fast64_t fsck_done, fsck_total;

struct shared_file {
	struct rkd_inode *in;
	struct rkd_file *f;
};

static int acc_open(void *arg, const struct rk_walk_ent *e, struct rk_cf **cf, void **token)
{
	struct rkd_fs *fs = arg;
	struct rkd_inode *in;
	struct rkd_file *f;
	struct shared_file *sf = malloc(sizeof(*sf));
	if (!sf)
		return -ENOMEM;
	int ret = rkd_inode_at(fs, e->dirfd, e->name, &in);
	if (ret < 0) {
		free(sf);
		return ret;
	}
	ret = rkd_file_get(fs, in, &f);
	if (ret < 0) {
		rkd_inode_put(fs, in);
		free(sf);
		return ret;
	}
	if (!f->chunk || !f->cf) {
		rkd_file_put(fs, in, f);
		rkd_inode_put(fs, in);
		free(sf);
		return -ENOMSG;
	}
	sf->in = in;
	sf->f = f;
	*cf = f->cf;
	*token = sf;
	return 0;
}

static void acc_close(void *arg, void *token)
{
	struct rkd_fs *fs = arg;
	struct shared_file *sf = token;
	rkd_file_put(fs, sf->in, sf->f);
	rkd_inode_put(fs, sf->in);
	free(sf);
}

static void acc_lock(void *token, uint64_t idx) { rkd_chunk_lock(((struct shared_file *)token)->f, idx); }
static void acc_unlock(void *token, uint64_t idx) { rkd_chunk_unlock(((struct shared_file *)token)->f, idx); }

static void progress(uint64_t done, uint64_t total, void *arg)
{
	(void)arg;
	atomic_store(&fsck_total, total);
	atomic_store(&fsck_done, done);
}

/* headers of open files on disk, so that the header-only pass sees their counts */
static void flush_open(struct rkd_file *f, void *arg)
{
	(void)arg;
	if (f->rw && f->cf) {
		int r = rk_cf_flush(f->cf);
		if (r < 0)
			rk_warn("fsck: %s: header write failed: %s", rk_cf_path(f->cf), rk_strerror(r));
	}
}

int rkd_policy_snapshot(struct rkd_fs *fs, struct rk_datadir *snap)
{
	memset(snap, 0, sizeof(*snap));
	snap->path = fs->datadir_real;
	snap->dirfd = fs->rootfd;
	snap->statefd = snap->lockfd = -1;
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	snap->ntables = fs->dd->ntables;
	snap->nkeys = fs->dd->nkeys;
	snap->tables = malloc((snap->ntables ? snap->ntables : 1) * sizeof(*snap->tables));
	snap->keys = malloc((snap->nkeys ? snap->nkeys : 1) * sizeof(*snap->keys));
	if (snap->tables && snap->keys) {
		memcpy(snap->tables, fs->dd->tables, snap->ntables * sizeof(*snap->tables));
		memcpy(snap->keys, fs->dd->keys, snap->nkeys * sizeof(*snap->keys));
	}
	rk_rw_unlock(&fs->policy_lock);
	return snap->tables && snap->keys ? 0 : -ENOMEM;
}

void rkd_policy_snapshot_free(struct rk_datadir *snap)
{
	free(snap->tables);
	free(snap->keys);
	snap->tables = NULL;
	snap->keys = NULL;
}

static int run_fsck(struct rkd_fs *fs, char *args, char **out, size_t *len)
{
	struct rk_fsck_opts fo;
	struct rk_datadir snap;
	struct rk_cov *cov = NULL;
	char err[2048], tbuf[RK_TABLE_PATH_MAX];
	char *report = NULL;
	size_t rlen = 0;
	int ret;
	if (rk_fsck_parse_words(args, &fo, err, sizeof(err)) < 0)
		return rkd_reply(out, len, -EINVAL, "exit=%d %s", RK_FSCK_EXIT_USAGE, err);

	/* a private copy of the policy and registry: alter and release go on meanwhile */
	if (rkd_policy_snapshot(fs, &snap) < 0) {
		ret = rkd_reply(out, len, -ENOMEM, "exit=%d out of memory", RK_FSCK_EXIT_OPERATIONAL);
		goto done;
	}
	if (rk_fsck_check_opts(&snap, &fo, tbuf, sizeof(tbuf), err, sizeof(err)) < 0) {
		ret = rkd_reply(out, len, -EINVAL, "exit=%d %s", RK_FSCK_EXIT_USAGE, err);
		goto done;
	}

	/* everything written so far is on disk: pending journal images in
	 * place, headers of open files current */
	ret = rk_journal_checkpoint(fs->j);
	if (ret < 0)
		rk_warn("fsck: journal checkpoint failed: %s; chunks written since the last commit may not be counted",
		        rk_strerror(ret));
	rkd_for_each_open(fs, flush_open, NULL);
	rk_keyring_reload(fs->kr); /* a key file added since it was last looked for is found */

	struct rk_cov_opts co;
	struct rk_cov_access acc = {acc_open, acc_close, acc_lock, acc_unlock, fs};
	rk_fsck_scan_opts(&fo, fs->kr, &co);
	if (co.exact || co.deep)
		co.access = &acc;
	co.progress = progress;
	atomic_store(&fsck_done, 0);
	atomic_store(&fsck_total, 0);
	atomic_store(&fsck_running, fo.deep);
	rk_info("fsck started (%s%s%s%s)", fo.deep ? "deep" : fo.key ? "exact" : "headers", fo.table ? ", table " : "",
	        fo.table ? fo.table : "", fo.key ? ", release question" : "");
	ret = rk_coverage_scan(&snap, &co, &cov);
	atomic_store(&fsck_running, false);
	if (ret < 0) {
		rk_err("fsck of %s failed: %s", fs->datadir_real, rk_strerror(ret));
		ret = rkd_reply(out, len, ret, "exit=%d fsck of %s failed: the scan stopped: %s", RK_FSCK_EXIT_OPERATIONAL,
		                fs->datadir_real, rk_strerror(ret));
		goto done;
	}
	cov->online = true;
	ret = rk_fsck_render(cov, &fo, &report, &rlen);
	if (ret < 0) {
		ret = rkd_reply(out, len, ret, "exit=%d cannot build the report: %s", RK_FSCK_EXIT_OPERATIONAL,
		                rk_strerror(ret));
		goto done;
	}
	int code = rk_fsck_exit_code(cov);
	rk_info("fsck finished: exit status %d, %" PRIu64 " chunks, %" PRIu64 " on target, %zu problems", code,
	        cov->total.chunks, cov->total.chunks_on_target, cov->nproblems);
	*out = malloc(rlen + 32);
	if (!*out) {
		ret = -ENOMEM;
		goto done;
	}
	*len = (size_t)snprintf(*out, 32, "ok exit=%d\n", code);
	memcpy(*out + *len, report, rlen + 1);
	*len += rlen;
	ret = 0;
done:
	free(report);
	rk_coverage_free(cov);
	rkd_policy_snapshot_free(&snap);
	return ret;
}

int rkd_fsck_control(struct rkd_fs *fs, const char *cmd, char *args, char **out, size_t *len)
{
	if (strcmp(cmd, "fsck-progress") == 0) {
		/* idle: the counts of the last deep check */
		return rkd_reply(out, len, 0, "%s done=%" PRIu64 " total=%" PRIu64,
		                 atomic_load(&fsck_running) ? "running" : "idle", (uint64_t)atomic_load(&fsck_done),
		                 (uint64_t)atomic_load(&fsck_total));
	}
	if (rk_mutex_trylock(&fsck_lock, RK_RANK_FSCK) != 0)
		return rkd_reply(out, len, -EBUSY, "exit=%d an fsck is already running in this daemon; try again when it "
		                                   "has finished",
		                 RK_FSCK_EXIT_OPERATIONAL);
	int ret = run_fsck(fs, args, out, len);
	rk_mutex_unlock(&fsck_lock);
	return ret;
}
