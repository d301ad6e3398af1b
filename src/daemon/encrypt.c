/* rekeyfs daemon - online encryption of existing plain files (the `encrypt`
 * control command, `rekeyctl encrypt MOUNT [PATH...]`).
 *
 * One job at a time, run by its own thread: it counts the plain regular
 * files below the requested paths, then converts each closed one into a
 * chunk file under its table's target key with the whole-file replacement
 * the sweep uses (a synced chunk-file copy built beside it, given the
 * original's identity and renamed over it; the inode's descriptor moves to
 * the new file: rkd_replace_commit).  A file that is open (or opened or
 * changed while it is copied) is retried once a second until it is closed.
 * Requests made while a job runs are queued for the next job.  Nothing of a
 * job is checkpointed: after a restart, run the command again (converted
 * files are skipped). */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "encrypt.h"
#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/crypto.h"
#include "rekeyfs/walk.h"

#define ENC_MAX_PATHS 64      /* paths of one request or of the queue */
#define ENC_MAX_ERRORS 16     /* the newest errors shown by status */
#define ENC_MAX_WAITING 65536 /* open files remembered for a retry */
#define ENC_PATH_MAX 1024     /* paths kept for status (longer ones are cut) */

enum enc_state { ES_IDLE, ES_RUNNING, ES_WAITING, ES_FINISHED, ES_INCOMPLETE };
static const char *const enc_state_names[] = {"idle", "running", "waiting", "finished", "incomplete"};

struct enc_err {
	time_t time;
	char path[ENC_PATH_MAX];
	char cause[256];
};

struct rkd_encjob {
	struct rkd_fs *fs;
	pthread_t thr;
	bool thr_started;
	/* rank RK_RANK_ENCRYPT (79): every field below; held only to read or
	 * update them (never across file I/O or while taking another lock) */
	pthread_mutex_t lock;
	pthread_cond_t cond; /* CLOCK_MONOTONIC: new requests, cancel, stop */
	bool stop, cancel;
	char *queue[ENC_MAX_PATHS]; /* requested paths not started yet ("/" = all) */
	int nqueue;
	char *paths[ENC_MAX_PATHS]; /* the current (or last) job's paths */
	int npaths;
	uint64_t job;          /* id of the current or last job (0: none) */
	enum enc_state state;
	uint64_t files_total, files_done, files_skipped, files_failed, bytes_total, bytes_done;
	char current[ENC_PATH_MAX];
	time_t started, finished;
	char **waiting; /* open files to retry (rel paths) */
	size_t nwaiting, capwaiting;
	struct enc_err errors[ENC_MAX_ERRORS];
	int nerrors, error_next;
	uint64_t error_count;
};

/* ---- helpers ------------------------------------------------------------------------------------- */
static void enc_error(struct rkd_encjob *j, const char *path, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void enc_error(struct rkd_encjob *j, const char *path, int err, const char *fmt, ...)
{
	struct enc_err e = {.time = time(NULL)};
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e.cause, sizeof(e.cause), fmt, ap);
	va_end(ap);
	if (err)
		snprintf(e.cause + strlen(e.cause), sizeof(e.cause) - strlen(e.cause), "%s%s", e.cause[0] ? ": " : "",
		         rk_strerror(err));
	snprintf(e.path, sizeof(e.path), "%s", path ? path : "");
	rk_err("encrypt: %s%s%s", path ? rk_esc(path) : "", path ? ": " : "", e.cause);
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	j->errors[j->error_next] = e;
	j->error_next = (j->error_next + 1) % ENC_MAX_ERRORS;
	if (j->nerrors < ENC_MAX_ERRORS)
		j->nerrors++;
	j->error_count++;
	rk_mutex_unlock(&j->lock);
}

static bool enc_stopping(struct rkd_encjob *j)
{
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	bool s = j->stop || j->cancel;
	rk_mutex_unlock(&j->lock);
	return s;
}

/* Wait up to ms for a stop or cancel (which end it at once). */
static void enc_wait(struct rkd_encjob *j, long ms)
{
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += ms / 1000;
	dl.tv_nsec += (ms % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	while (!j->stop && !j->cancel)
		if (pthread_cond_timedwait(&j->cond, &j->lock, &dl) == ETIMEDOUT)
			break;
	rk_mutex_unlock(&j->lock);
}

static int add_waiting(struct rkd_encjob *j, const char *rel)
{
	int ret = 0;
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	for (size_t i = 0; i < j->nwaiting; i++)
		if (strcmp(j->waiting[i], rel) == 0)
			goto out;
	if (j->nwaiting == ENC_MAX_WAITING) {
		ret = -ENOSPC;
		goto out;
	}
	if (j->nwaiting == j->capwaiting) {
		size_t nc = j->capwaiting ? j->capwaiting * 2 : 64;
		char **nw = realloc(j->waiting, nc * sizeof(*nw));
		if (!nw) {
			ret = -ENOMEM;
			goto out;
		}
		j->waiting = nw;
		j->capwaiting = nc;
	}
	j->waiting[j->nwaiting] = strdup(rel);
	if (!j->waiting[j->nwaiting])
		ret = -ENOMEM;
	else
		j->nwaiting++;
out:
	rk_mutex_unlock(&j->lock);
	return ret;
}

/* ---- one file ------------------------------------------------------------------------------------- */
struct enc_file {
	struct rkd_encjob *j;
	struct rkd_inode *in;
	unsigned gen;
	bool counting; /* the first pass: count plain files and bytes only */
};

/* After each chunk of the copy: give up when the file was opened meanwhile
 * (its writes go to the original), stop on cancel, yield to foreground I/O. */
static int enc_throttle(void *arg, uint64_t idx, uint64_t bytes)
{
	(void)idx;
	struct enc_file *ef = arg;
	struct rkd_encjob *j = ef->j;
	struct rkd_fs *fs = j->fs;
	if (atomic_load(&ef->in->open_gen) != ef->gen)
		return -EBUSY;
	rkd_fg_yield(fs);
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	j->bytes_done += bytes;
	bool stop = j->stop || j->cancel;
	rk_mutex_unlock(&j->lock);
	return stop ? -ECANCELED : 0;
}

/* The target key of the table holding rel, checked against the registry. */
static int enc_key_for(struct rkd_fs *fs, const char *rel, struct rk_key **key, uint32_t *chunk, enum rk_comp *comp,
                       char *kname, size_t klen)
{
	uint8_t fp[RK_FP_BYTES];
	bool have_fp = false;
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	const struct rk_table *t = rk_policy_lookup(fs->dd, rel);
	snprintf(kname, klen, "%s", t->key);
	*chunk = t->chunk_size;
	*comp = t->comp;
	const struct rk_regent *re = rk_registry_find(fs->dd, t->key);
	if (re) {
		memcpy(fp, re->fp, RK_FP_BYTES);
		have_fp = true;
	}
	rk_rw_unlock(&fs->policy_lock);
	int ret = rk_keyring_get(fs->kr, kname, key);
	if (ret == 0 && have_fp && memcmp(fp, (*key)->fp, RK_FP_BYTES) != 0)
		ret = -EKEYREJECTED;
	return ret;
}

/* Convert one closed plain file: 0 done (or nothing to do), 1 busy (retry
 * later), or a negative errno (recorded). */
static int enc_convert(struct enc_file *ef, const struct rk_walk_ent *e)
{
	struct rkd_encjob *j = ef->j;
	struct rkd_fs *fs = j->fs;
	struct rk_key *key;
	struct rk_replace *r = NULL;
	uint32_t chunk;
	enum rk_comp comp;
	char kname[RK_KEY_NAME_MAX + 1];
	int ret = enc_key_for(fs, e->rel, &key, &chunk, &comp, kname, sizeof(kname));
	if (ret < 0) {
		enc_error(j, e->rel, ret, "target key '%s' cannot be used", kname);
		return ret;
	}
	rk_mutex_lock(&ef->in->lock, RK_RANK_INODE);
	bool busy = ef->in->of != NULL;
	ef->gen = atomic_load(&ef->in->open_gen);
	rk_mutex_unlock(&ef->in->lock);
	if (busy)
		return 1;
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	snprintf(j->current, sizeof(j->current), "%s", e->rel);
	rk_mutex_unlock(&j->lock);
	struct rk_replace_cb cb = {enc_throttle, ef};
	ret = rk_convert_prepare(e->dirfd, e->name, e->rel, fs->kr, key, chunk, comp, &cb, &r);
	if (ret == 0)
		ret = rkd_replace_commit(fs, ef->in, ef->gen, r);
	int end = rk_replace_end(r);
	if (ret == 0 && end < 0)
		ret = end;
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	j->current[0] = '\0';
	if (ret == 0)
		j->files_done++;
	else if (ret == 1)
		j->files_done++; /* a chunk file by now (written through the mount meanwhile) */
	else if (ret == 2)
		j->files_skipped++;
	rk_mutex_unlock(&j->lock);
	if (ret == 0)
		rk_info("encrypt: %s is now a chunk file under key '%s'", rk_esc(e->rel), kname);
	if (ret == 2)
		enc_error(j, e->rel, 0, "not converted (hard links or not a regular file; see the log)");
	if (ret == -EBUSY || ret == -EAGAIN)
		return 1; /* opened or changed meanwhile: retry once it is closed */
	if (ret < 0 && ret != -ECANCELED) {
		rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
		j->files_failed++;
		rk_mutex_unlock(&j->lock);
		enc_error(j, e->rel, ret, "conversion failed; the file stays plain");
	}
	return ret < 0 ? ret : 0;
}

static int enc_visit(const struct rk_walk_ent *e, void *arg)
{
	struct enc_file *ef = arg;
	struct rkd_encjob *j = ef->j;
	struct rkd_fs *fs = j->fs;
	int ret = 0;
	if (enc_stopping(j))
		return -ECANCELED;
	if (!S_ISREG(e->st->st_mode) || rk_is_tmp_name(e->name))
		return 0;
	/* a plain file?  (the probe reads the header area only) */
	int fd = openat(e->dirfd, e->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : (enc_error(j, e->rel, errno, "cannot open"), 0);
	int probe = rk_cf_probe(fd);
	close(fd);
	if (probe < 0) {
		enc_error(j, e->rel, probe, "cannot tell whether it is a chunk file");
		return 0;
	}
	if (probe == 1)
		return 0;
	if (ef->counting) {
		rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
		j->files_total++;
		j->bytes_total += (uint64_t)e->st->st_size;
		rk_mutex_unlock(&j->lock);
		return 0;
	}
	ret = rkd_inode_at_path(fs, e->dirfd, e->name, e->rel, &ef->in);
	if (ret < 0)
		return ret == -ENOENT ? 0 : (enc_error(j, e->rel, ret, "cannot look it up"), 0);
	ret = enc_convert(ef, e);
	rkd_inode_put(fs, ef->in);
	ef->in = NULL;
	if (ret == 1) {
		int r = add_waiting(j, e->rel);
		if (r < 0)
			enc_error(j, e->rel, r, "open, and cannot be remembered for a retry");
		ret = 0;
	}
	return ret == -ECANCELED ? ret : 0;
}

/* ---- the job -------------------------------------------------------------------------------------- */
static void enc_run(struct rkd_encjob *j)
{
	struct rkd_fs *fs = j->fs;
	struct enc_file ef = {.j = j, .counting = true};
	int ret = 0;
	for (int pass = 0; pass < 2 && ret != -ECANCELED; pass++) {
		ef.counting = pass == 0;
		for (int i = 0; i < j->npaths && ret != -ECANCELED; i++) {
			ret = rk_walk_path(fs->rootfd, j->paths[i], enc_visit, &ef);
			if (ret < 0 && ret != -ECANCELED && pass == 0)
				enc_error(j, j->paths[i], ret, "cannot walk it");
		}
	}
	/* files that were open: once a second until they are closed */
	for (;;) {
		rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
		char **w = j->waiting;
		size_t n = j->nwaiting;
		j->waiting = NULL;
		j->nwaiting = j->capwaiting = 0;
		if (n && !j->stop && !j->cancel)
			j->state = ES_WAITING;
		bool stop = j->stop || j->cancel;
		rk_mutex_unlock(&j->lock);
		for (size_t i = 0; i < n; i++) {
			if (!stop) {
				int r = rk_walk_path(fs->rootfd, w[i], enc_visit, &ef);
				if (r == -ECANCELED)
					stop = true;
				/* gone or renamed: nothing left to convert under that name */
			}
			free(w[i]);
		}
		free(w);
		if (stop || n == 0)
			break;
		enc_wait(j, 1000);
		rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
		bool again = j->nwaiting > 0;
		rk_mutex_unlock(&j->lock);
		if (!again)
			break;
	}
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	bool interrupted = j->stop || j->cancel;
	j->cancel = false;
	j->finished = time(NULL);
	j->current[0] = '\0';
	j->state = (j->files_failed || j->files_skipped || j->nwaiting || interrupted) ? ES_INCOMPLETE : ES_FINISHED;
	uint64_t id = j->job, done = j->files_done, total = j->files_total, failed = j->files_failed,
	         skipped = j->files_skipped, waiting = j->nwaiting;
	for (size_t i = 0; i < j->nwaiting; i++)
		free(j->waiting[i]);
	j->nwaiting = 0;
	rk_mutex_unlock(&j->lock);
	rk_info("encrypt: job %" PRIu64 " %s: %" PRIu64 " of %" PRIu64 " plain files converted, %" PRIu64
	        " failed, %" PRIu64 " skipped, %" PRIu64 " still open",
	        id, interrupted ? "cancelled" : "finished", done, total, failed, skipped, waiting);
}

static void *enc_main(void *arg)
{
	struct rkd_encjob *j = arg;
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	while (!j->stop) {
		if (j->nqueue == 0) {
			pthread_cond_wait(&j->cond, &j->lock);
			continue;
		}
		/* every queued request becomes one job */
		for (int i = 0; i < j->npaths; i++)
			free(j->paths[i]);
		memcpy(j->paths, j->queue, sizeof(j->queue));
		j->npaths = j->nqueue;
		j->nqueue = 0;
		j->job++;
		j->state = ES_RUNNING;
		j->cancel = false;
		j->files_total = j->files_done = j->files_skipped = j->files_failed = 0;
		j->bytes_total = j->bytes_done = 0;
		j->nerrors = j->error_next = 0;
		j->started = time(NULL);
		j->finished = 0;
		rk_mutex_unlock(&j->lock);
		enc_run(j);
		rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	}
	rk_mutex_unlock(&j->lock);
	rk_crypto_thread_cleanup();
	return NULL;
}

/* ---- control and status --------------------------------------------------------------------------- */
static bool queue_has(struct rkd_encjob *j, const char *p)
{
	for (int i = 0; i < j->nqueue; i++)
		if (strcmp(j->queue[i], p) == 0 || strcmp(j->queue[i], "/") == 0)
			return true;
	return false;
}

int rkd_encrypt_control(struct rkd_fs *fs, const char *cmd, char *args, char **out, size_t *len)
{
	struct rkd_encjob *j = fs->enc;
	char *norm[ENC_MAX_PATHS];
	int n = 0, ret = 0;
	if (!j)
		return rkd_reply(out, len, -ENOTSUP, "online encryption is not running");
	if (strcmp(cmd, "encrypt-cancel") == 0) {
		rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
		bool running = j->state == ES_RUNNING || j->state == ES_WAITING;
		for (int i = 0; i < j->nqueue; i++)
			free(j->queue[i]);
		j->nqueue = 0;
		if (running)
			j->cancel = true;
		pthread_cond_broadcast(&j->cond);
		uint64_t id = j->job;
		rk_mutex_unlock(&j->lock);
		return running ? rkd_reply(out, len, 0, "encrypt job %" PRIu64 " cancelled", id)
		               : rkd_reply(out, len, 0, "no encrypt job is running");
	}
	char *save = NULL;
	for (char *t = strtok_r(args, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
		char buf[PATH_MAX];
		if (n == ENC_MAX_PATHS) {
			ret = rkd_reply(out, len, -E2BIG, "at most %d paths per request", ENC_MAX_PATHS);
			goto out;
		}
		if (rk_pct_decode(t) < 0 || rk_table_path_norm(t, buf, sizeof(buf)) < 0) {
			ret = rkd_reply(out, len, -EINVAL, "invalid path '%s' (relative to the mount, no '..', not .rekeyfs)",
			                rk_esc(t));
			goto out;
		}
		struct stat st;
		if (strcmp(buf, "/") != 0 && fstatat(fs->rootfd, buf + 1, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			ret = rkd_reply(out, len, -errno, "%s: %s", rk_esc(buf), strerror(errno));
			goto out;
		}
		if (!(norm[n] = strdup(buf))) {
			ret = -ENOMEM;
			goto out;
		}
		n++;
	}
	if (n == 0 && !(norm[n++] = strdup("/"))) {
		n = 0;
		ret = -ENOMEM;
		goto out;
	}
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	bool busy = j->state == ES_RUNNING || j->state == ES_WAITING || j->nqueue > 0;
	bool joined = j->nqueue > 0;
	int added = 0;
	for (int i = 0; i < n; i++) {
		if (queue_has(j, norm[i]))
			continue;
		if (j->nqueue == ENC_MAX_PATHS) {
			/* a full queue becomes "everything" */
			for (int k = 0; k < j->nqueue; k++)
				free(j->queue[k]);
			j->queue[0] = strdup("/");
			j->nqueue = j->queue[0] ? 1 : 0;
			break;
		}
		j->queue[j->nqueue++] = norm[i];
		norm[i] = NULL;
		added++;
	}
	uint64_t id = j->job + 1, cur = j->job;
	bool waiting = j->state == ES_RUNNING || j->state == ES_WAITING;
	pthread_cond_broadcast(&j->cond);
	rk_mutex_unlock(&j->lock);
	if (!busy)
		ret = rkd_reply(out, len, 0, "encrypt job %" PRIu64 " started", id);
	else if (waiting && !joined)
		ret = rkd_reply(out, len, 0, "queued as encrypt job %" PRIu64 " after job %" PRIu64, id, cur);
	else
		ret = rkd_reply(out, len, 0, "joins queued encrypt job %" PRIu64 "%s", id, added ? "" : " (already asked for)");
out:
	for (int i = 0; i < n; i++)
		free(norm[i]);
	return ret;
}

void rkd_encrypt_json(struct rkd_fs *fs, struct rkd_jbuf *b)
{
	struct rkd_encjob *j = fs->enc;
	if (!j) {
		rkd_jb_printf(b, "  \"encrypt\": null,\n");
		return;
	}
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	rkd_jb_printf(b, "  \"encrypt\": {\"state\": \"%s\", \"job\": %" PRIu64 ", \"paths\": [", enc_state_names[j->state],
	              j->job);
	for (int i = 0; i < j->npaths; i++) {
		rkd_jb_printf(b, "%s", i ? ", " : "");
		rkd_jb_str(b, j->paths[i]);
	}
	rkd_jb_printf(b, "], \"queued\": [");
	for (int i = 0; i < j->nqueue; i++) {
		rkd_jb_printf(b, "%s", i ? ", " : "");
		rkd_jb_str(b, j->queue[i]);
	}
	rkd_jb_printf(b,
	              "],\n    \"files_total\": %" PRIu64 ", \"files_done\": %" PRIu64 ", \"files_skipped\": %" PRIu64
	              ", \"files_failed\": %" PRIu64 ", \"files_waiting\": %zu, \"bytes_total\": %" PRIu64
	              ", \"bytes_done\": %" PRIu64 ", \"current_file\": ",
	              RK_MAX(j->files_total, j->files_done + j->files_skipped + j->files_failed), j->files_done,
	              j->files_skipped, j->files_failed, j->nwaiting,
	              RK_MAX(j->bytes_total, j->bytes_done), j->bytes_done);
	if (j->current[0])
		rkd_jb_str(b, j->current);
	else
		rkd_jb_printf(b, "null");
	if (j->started)
		rkd_jb_printf(b, ", \"started\": %lld", (long long)j->started);
	else
		rkd_jb_printf(b, ", \"started\": null");
	if (j->finished)
		rkd_jb_printf(b, ", \"finished\": %lld", (long long)j->finished);
	else
		rkd_jb_printf(b, ", \"finished\": null");
	rkd_jb_printf(b, ",\n    \"waiting\": [");
	for (size_t i = 0; i < j->nwaiting && i < 16; i++) {
		rkd_jb_printf(b, "%s", i ? ", " : "");
		rkd_jb_str(b, j->waiting[i]);
	}
	rkd_jb_printf(b, "], \"error_count\": %" PRIu64 ", \"errors\": [", j->error_count);
	for (int i = 0; i < j->nerrors; i++) {
		const struct enc_err *e = &j->errors[(j->error_next - j->nerrors + i + ENC_MAX_ERRORS) % ENC_MAX_ERRORS];
		rkd_jb_printf(b, "%s{\"time\": %lld, \"path\": ", i ? ", " : "", (long long)e->time);
		rkd_jb_str(b, e->path);
		rkd_jb_printf(b, ", \"cause\": ");
		rkd_jb_str(b, e->cause);
		rkd_jb_printf(b, "}");
	}
	rkd_jb_printf(b, "]},\n");
	rk_mutex_unlock(&j->lock);
}

/* ---- lifecycle ------------------------------------------------------------------------------------ */
int rkd_encrypt_init(struct rkd_fs *fs)
{
	pthread_condattr_t ca;
	struct rkd_encjob *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->fs = fs;
	pthread_mutex_init(&j->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->cond, &ca);
	pthread_condattr_destroy(&ca);
	fs->enc = j;
	if (pthread_create(&j->thr, NULL, enc_main, j) != 0) {
		rk_err("cannot start the encrypt thread");
		return -EAGAIN;
	}
	j->thr_started = true;
	return 0;
}

void rkd_encrypt_shutdown(struct rkd_fs *fs)
{
	struct rkd_encjob *j = fs->enc;
	if (!j)
		return;
	rk_mutex_lock(&j->lock, RK_RANK_ENCRYPT);
	j->stop = true;
	pthread_cond_broadcast(&j->cond);
	rk_mutex_unlock(&j->lock);
	if (j->thr_started)
		pthread_join(j->thr, NULL);
	fs->enc = NULL;
	for (int i = 0; i < j->nqueue; i++)
		free(j->queue[i]);
	for (int i = 0; i < j->npaths; i++)
		free(j->paths[i]);
	for (size_t i = 0; i < j->nwaiting; i++)
		free(j->waiting[i]);
	free(j->waiting);
	pthread_mutex_destroy(&j->lock);
	pthread_cond_destroy(&j->cond);
	free(j);
}
