/* rekeyfs daemon - read errors made visible (the counter, the ring of
 * recent errors for the status JSON, the per-file log rate limit) and the
 * log destination (-o log=FILE|stderr|syslog).  See ioerr.h. */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "inode.h"
#include "ioerr.h"
#include "rekeyfs/common.h"

struct ioerr_ent {
	time_t time;
	char *path;      /* "/dir/file" under the data directory (NULL: unknown) */
	bool has_chunk;  /* false: not about one chunk (JSON null) */
	uint64_t chunk;
	char cause[RK_CF_CAUSE_MAX];
};

/* log rate limit of one file (by a hash of its path) */
struct ioerr_rate {
	uint64_t hash;     /* 0: free */
	time_t start;      /* start of the window */
	unsigned logged;   /* lines logged in the window */
	uint64_t left_out; /* errors of the window not logged */
};
#define RATE_SLOTS 64

/* One daemon per process: the state is the module's.  ie_lock: rank
 * RK_RANK_IOERR (97, a leaf: nothing is taken under it, no I/O under it);
 * it guards every member of ie. */
static pthread_mutex_t ie_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	struct ioerr_ent recent[RKD_IOERR_RECENT]; /* ring: next is the oldest once full */
	unsigned next, n;
	struct ioerr_rate rate[RATE_SLOTS];
} ie;

static uint64_t path_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h ? h : 1;
}

/* May this file's error be logged now?  *left_out: errors of the file not
 * logged in its last window (told in the first line of the next one).
 * Under ie_lock. */
static bool rate_ok_locked(const char *path, time_t now, uint64_t *left_out)
{
	RK_ASSERT_HELD(&ie_lock);
	uint64_t h = path_hash(path);
	struct ioerr_rate *r = NULL, *oldest = &ie.rate[0];
	for (unsigned i = 0; i < RATE_SLOTS && !r; i++) {
		if (ie.rate[i].hash == h)
			r = &ie.rate[i];
		else if (ie.rate[i].start < oldest->start)
			oldest = &ie.rate[i];
	}
	*left_out = 0;
	if (!r) {
		r = oldest; /* a free slot (start 0) first, else the least recent file */
		memset(r, 0, sizeof(*r));
		r->hash = h;
		r->start = now;
	}
	if (now - r->start >= RKD_IOERR_LOG_WINDOW || now < r->start) {
		*left_out = r->left_out;
		r->start = now;
		r->logged = 0;
		r->left_out = 0;
	}
	if (r->logged < RKD_IOERR_LOG_BURST) {
		r->logged++;
		return true;
	}
	r->left_out++;
	return false;
}

static void record(struct rkd_fs *fs, struct rkd_inode *in, bool has_chunk, uint64_t chunk, const char *cause,
                   bool log)
{
	char *path = rkd_inode_rel(fs, in);
	char *kept = path ? strdup(path) : NULL; /* the ring's copy */
	const char *p = path ? path : "(path unknown: out of memory)";
	time_t now = time(NULL);
	uint64_t left_out = 0;
	bool do_log = false;

	atomic_fetch_add(&fs->st.read_errors, 1);
	rk_mutex_lock(&ie_lock, RK_RANK_IOERR);
	struct ioerr_ent *e = &ie.recent[ie.next];
	char *old = e->path;
	e->time = now;
	e->path = kept;
	e->has_chunk = has_chunk;
	e->chunk = chunk;
	snprintf(e->cause, sizeof(e->cause), "%s", cause);
	ie.next = (ie.next + 1) % RKD_IOERR_RECENT;
	if (ie.n < RKD_IOERR_RECENT)
		ie.n++;
	if (log)
		do_log = rate_ok_locked(p, now, &left_out);
	rk_mutex_unlock(&ie_lock);
	free(old);

	if (do_log) {
		char more[96] = "";
		if (left_out)
			snprintf(more, sizeof(more), " (and %" PRIu64 " earlier read errors of this file not logged)",
			         left_out);
		if (has_chunk)
			rk_err("read error: %s: chunk %" PRIu64 ": %s; the reader gets EIO%s", p, chunk, cause, more);
		else
			rk_err("read error: %s: %s; the reader gets EIO%s", p, cause, more);
	}
	free(path);
}

void rkd_ioerr_read(struct rkd_fs *fs, struct rkd_inode *in, int err)
{
	uint64_t idx;
	char cause[RK_CF_CAUSE_MAX];
	if (rk_cf_read_error(&idx, cause, sizeof(cause)) == 0)
		record(fs, in, true, idx, cause, true);
	else
		record(fs, in, false, 0, rk_strerror(err), true);
}

void rkd_ioerr_open(struct rkd_fs *fs, struct rkd_inode *in, int err)
{
	char cause[RK_CF_CAUSE_MAX];
	snprintf(cause, sizeof(cause), "cannot open the chunk file: %s", rk_strerror(err));
	record(fs, in, false, 0, cause, false);
}

void rkd_ioerr_json(struct rkd_fs *fs, struct rkd_jbuf *b)
{
	rk_mutex_lock(&ie_lock, RK_RANK_IOERR);
	rkd_jb_printf(b, "  \"read_errors\": {\"count\": %" PRIu64 ", \"recent\": [",
	              (uint64_t)atomic_load(&fs->st.read_errors));
	for (unsigned i = 0; i < ie.n; i++) {
		/* oldest first */
		const struct ioerr_ent *e = &ie.recent[(ie.next + RKD_IOERR_RECENT - ie.n + i) % RKD_IOERR_RECENT];
		rkd_jb_printf(b, "%s\n    {\"time\": %lld, \"path\": ", i ? "," : "", (long long)e->time);
		if (e->path)
			rkd_jb_str(b, e->path);
		else
			rkd_jb_printf(b, "null");
		if (e->has_chunk)
			rkd_jb_printf(b, ", \"chunk\": %" PRIu64 ", \"cause\": ", e->chunk);
		else
			rkd_jb_printf(b, ", \"chunk\": null, \"cause\": ");
		rkd_jb_str(b, e->cause);
		rkd_jb_printf(b, "}");
	}
	rkd_jb_printf(b, "%s]},\n", ie.n ? "\n  " : "");
	rk_mutex_unlock(&ie_lock);
}

/* ---- the log destination ---------------------------------------------------- */
enum log_mode { LOG_DEFAULT, LOG_STDERR, LOG_SYSLOG, LOG_FILE };
static enum log_mode log_mode;
static int log_fd = -1;

static int open_log_file(const char *path)
{
	struct stat st;
	int fd = -1, ret = 0;
	const char *why = NULL;
	if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
		why = "it is a symbolic link (refused: name the file itself)";
		ret = -ELOOP;
	} else if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		why = "it is not a regular file (refused)";
		ret = -EINVAL;
	}
	if (ret == 0) {
		/* O_NOFOLLOW and the fstat close the race with the lstat */
		fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK, 0600);
		if (fd < 0) {
			ret = -errno;
			why = ret == -ELOOP ? "it is a symbolic link (refused: name the file itself)" : strerror(-ret);
		} else if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
			why = "it is not a regular file (refused)";
			ret = -EINVAL;
		} else if (fcntl(fd, F_SETFL, O_APPEND) < 0) { /* blocking writes from here on */
			ret = -errno;
			why = strerror(-ret);
		}
	}
	if (ret < 0) {
		fprintf(stderr, "rekeyfs: option log=%s: cannot log to %s: %s\n", path, path, why);
		if (fd >= 0)
			close(fd);
		return ret;
	}
	log_fd = fd;
	return 0;
}

int rkd_log_prepare(const char *dest)
{
	if (!dest)
		return 0;
	if (strcmp(dest, "syslog") == 0) {
		log_mode = LOG_SYSLOG;
		return 0;
	}
	if (strcmp(dest, "stderr") == 0) {
		/* a copy that the detach (stderr to /dev/null) leaves alone */
		log_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
		if (log_fd < 0) {
			int ret = -errno;
			fprintf(stderr, "rekeyfs: option log=stderr: %s\n", strerror(-ret));
			return ret;
		}
		log_mode = LOG_STDERR;
		return 0;
	}
	if (!*dest) {
		fprintf(stderr, "rekeyfs: option log=: use log=FILE, log=stderr or log=syslog\n");
		return -EINVAL;
	}
	int ret = open_log_file(dest);
	if (ret == 0)
		log_mode = LOG_FILE;
	return ret;
}

void rkd_log_start(bool foreground)
{
	switch (log_mode) {
	case LOG_FILE:
		rk_log_to_fd(log_fd, true);
		break;
	case LOG_STDERR:
		rk_log_to_fd(log_fd, false);
		break;
	case LOG_SYSLOG:
		rk_log_to_syslog("rekeyfs");
		break;
	default: /* as before the option existed */
		if (!foreground)
			rk_log_to_syslog("rekeyfs");
		break;
	}
}
