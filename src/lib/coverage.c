/* rekeyfs - coverage scans over a data directory.
 *
 * Fast path: one open + pread(8 KiB) + one SHA-256 + close per file; the
 * per-key counts come from the header (invariant 2).  A header whose counts
 * are marked dirty is recounted from its slot headers.  Exact: every slot
 * header is read (the release question).  Deep: every chunk is
 * authenticated as well. */
#include "config.h"

#include <fcntl.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <uthash.h>

#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/coverage.h"
#include "rekeyfs/format.h"
#include "rekeyfs/walk.h"
#include "rekeyfs/lockrank.h"


/* ---- per-scan state ----------------------------------------------------------------------- */
/* key status cache: one keyring look-up per distinct (name, fingerprint) */
struct keycache {
	char name[RK_KEY_NAME_MAX + 1];
	uint8_t fp[RK_FP_BYTES];
	enum rk_cipher cipher;
	enum rk_cov_keystat st;
};

/* inodes with several names already counted (hard links, e.g. snapshots) */
struct seen {
	struct {
		dev_t dev;
		ino_t ino;
	} id;
	UT_hash_handle hh;
};

/* problems in the order they are found */
struct plist {
	struct rk_cov_problem *v;
	size_t n;
};

/* What one regular file contributes to its table and to the total. */
struct frec {
	bool plain, chunk, corrupt;
	struct rk_cf_header h;          /* key table and size */
	enum rk_cov_keystat st[RK_CF_MAX_KEYS];
	bool on[RK_CF_MAX_KEYS];        /* entry is the table's target key */
	uint64_t counts[RK_CF_MAX_KEYS];
	uint64_t bytes[RK_CF_MAX_KEYS];
	bool recounted, mismatch;
	bool copy_q;                    /* exact: a header copy on disk names the query key */
	uint64_t malformed, corrupt_chunks, verified;
};

/* The fast path in parallel: the walking thread opens each file (in walk
 * order) and queues it; workers read and verify the header area; the
 * walking thread adds the results in walk order, so the report does not
 * depend on timing. */
#define RING 256
#define MAX_WORKERS 8
#define BATCH 16
/* A file no larger than this is read whole by the header read anyway:
 * no fadvise call to keep readahead off it. */
#define SMALL_FILE (4 * RK_HDR_AREA)
enum { J_QUEUED = 1, J_RUNNING = 2, J_DONE = 3 };

struct job {
	char *rel;
	size_t ti;      /* table index */
	int fd;
	bool small;     /* at most SMALL_FILE bytes when the walk saw it */
	int ret;        /* 0, 1 vanished, or a negative errno that stops the scan */
	int state;
	struct frec f;
	struct plist pl;
};

struct scan;
struct pool {
	struct scan *s;
	pthread_mutex_t lock; /* rank RK_RANK_COVERAGE (88): the job ring and its counters */
	pthread_cond_t work, done;
	struct job *ring;
	uint64_t head, next, tail; /* filled / taken by a worker / added to the result */
	int idle;                  /* workers waiting for work */
	bool main_waiting;         /* the walking thread waits for a job to finish */
	bool stop;
	pthread_t thr[MAX_WORKERS];
	int nthr;
};

struct scan {
	struct rk_datadir *dd;
	const struct rk_cov_opts *o;
	struct rk_cov *c;
	bool prescan;          /* deep: first pass, summing plaintext sizes */
	struct seen *seen;
	struct keycache *kc;
	size_t nkc;
	struct plist pl;
	uint8_t *hdrbuf;       /* RK_HDR_AREA (walking thread) */
	uint8_t *chunkbuf;     /* deep: one chunk of plaintext */
	struct pool *pool;     /* fast path */
	int err;               /* first error of a worker */
};

static enum rk_cov_keystat key_status(struct scan *s, const char *name, const uint8_t *fp, enum rk_cipher cipher)
{
	for (size_t i = 0; i < s->nkc; i++)
		if (s->kc[i].cipher == cipher && strcmp(s->kc[i].name, name) == 0 &&
		    memcmp(s->kc[i].fp, fp, RK_FP_BYTES) == 0)
			return s->kc[i].st;
	enum rk_cov_keystat st = RK_COVK_UNCHECKED;
	bool released = false;
	for (size_t i = 0; i < s->dd->nkeys; i++)
		if (strcmp(s->dd->keys[i].name, name) == 0 && memcmp(s->dd->keys[i].fp, fp, RK_FP_BYTES) == 0 &&
		    s->dd->keys[i].state == RK_KS_RELEASED)
			released = true;
	if (released) {
		st = RK_COVK_RELEASED;
	} else if (s->o->kr) {
		struct rk_key *k = NULL;
		int r = rk_keyring_get(s->o->kr, name, &k);
		if (r == 0)
			st = memcmp(k->fp, fp, RK_FP_BYTES) == 0 && k->cipher == cipher ? RK_COVK_OK : RK_COVK_CHANGED;
		else if (r == -ENOKEY)
			st = RK_COVK_MISSING;
		else if (r == -EKEYREVOKED)
			st = RK_COVK_RELEASED;
		else
			st = RK_COVK_REFUSED;
	}
	struct keycache *nk = realloc(s->kc, (s->nkc + 1) * sizeof(*nk));
	if (nk) {
		s->kc = nk;
		struct keycache *e = &s->kc[s->nkc++];
		snprintf(e->name, sizeof(e->name), "%s", name);
		memcpy(e->fp, fp, RK_FP_BYTES);
		e->cipher = cipher;
		e->st = st;
	}
	return st;
}

static int names_add(char ***v, size_t *n, size_t max, const char *name)
{
	if (*n >= max)
		return 0;
	char **nv = realloc(*v, (*n + 1) * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	*v = nv;
	nv[*n] = strdup(name);
	if (!nv[*n])
		return -ENOMEM;
	(*n)++;
	return 0;
}

static struct rk_cov_key *table_key(struct rk_cov_table *t, const struct rk_cf_keyent *e, enum rk_cov_keystat st)
{
	for (size_t i = 0; i < t->nkeys; i++)
		if (strcmp(t->keys[i].name, e->name) == 0 && memcmp(t->keys[i].fp, e->fp, RK_FP_BYTES) == 0)
			return &t->keys[i];
	struct rk_cov_key *nk = realloc(t->keys, (t->nkeys + 1) * sizeof(*nk));
	if (!nk)
		return NULL;
	t->keys = nk;
	struct rk_cov_key *k = &t->keys[t->nkeys++];
	memset(k, 0, sizeof(*k));
	snprintf(k->name, sizeof(k->name), "%s", e->name);
	memcpy(k->fp, e->fp, RK_FP_BYTES);
	k->cipher = e->cipher;
	k->bits = e->bits;
	k->status = st;
	return k;
}

static int add_problem(struct plist *pl, enum rk_cov_problem_kind kind, const char *path, int64_t chunk,
                       int64_t offset, const char *detail)
{
	struct rk_cov_problem *np = realloc(pl->v, (pl->n + 1) * sizeof(*np));
	if (!np)
		return -ENOMEM;
	pl->v = np;
	struct rk_cov_problem *p = &pl->v[pl->n];
	p->kind = kind;
	p->path = strdup(path);
	p->chunk = chunk;
	p->offset = offset;
	p->detail = strdup(detail);
	if (!p->path || !p->detail) {
		free(p->path);
		free(p->detail);
		return -ENOMEM;
	}
	pl->n++;
	return 0;
}

static void plist_free(struct plist *pl)
{
	for (size_t i = 0; i < pl->n; i++) {
		free(pl->v[i].path);
		free(pl->v[i].detail);
	}
	free(pl->v);
	pl->v = NULL;
	pl->n = 0;
}

/* append src to dst (src is emptied) */
static int plist_move(struct plist *dst, struct plist *src)
{
	if (src->n == 0)
		return 0;
	struct rk_cov_problem *np = realloc(dst->v, (dst->n + src->n) * sizeof(*np));
	if (!np) {
		plist_free(src);
		return -ENOMEM;
	}
	dst->v = np;
	memcpy(dst->v + dst->n, src->v, src->n * sizeof(*np));
	dst->n += src->n;
	free(src->v);
	src->v = NULL;
	src->n = 0;
	return 0;
}

static bool target_matches(const struct rk_datadir *dd, const char *target, const struct rk_cf_keyent *e)
{
	if (strcmp(target, e->name) != 0)
		return false;
	for (size_t i = 0; i < dd->nkeys; i++)
		if (strcmp(dd->keys[i].name, target) == 0)
			return memcmp(dd->keys[i].fp, e->fp, RK_FP_BYTES) == 0;
	return true;
}


/* ---- one file ---------------------------------------------------------------------------- */
/* Add one file's record to a table (or the total). */
static int apply(struct scan *s, struct rk_cov_table *t, const char *rel, const struct frec *f)
{
	size_t max = s->o->max_names;
	int ret;
	t->files++;
	if (f->plain) {
		t->plain_files++;
		return 0;
	}
	if (f->corrupt) {
		t->corrupt_files++;
		return 0;
	}
	t->chunk_files++;
	t->bytes += f->h.size;
	t->recounted += f->recounted;
	t->count_mismatch += f->mismatch;
	t->malformed_chunks += f->malformed;
	t->corrupt_chunks += f->corrupt_chunks;
	t->chunks_verified += f->verified;
	bool off = false, unusable = false;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		if (!f->h.keys[j].in_use || f->counts[j] == 0)
			continue;
		struct rk_cov_key *k = table_key(t, &f->h.keys[j], f->st[j]);
		if (!k)
			return -ENOMEM;
		k->chunks += f->counts[j];
		k->files++;
		k->bytes += f->bytes[j];
		t->chunks += f->counts[j];
		if (f->on[j])
			t->chunks_on_target += f->counts[j];
		else
			off = true;
		if (!rk_cov_keystat_usable(f->st[j])) {
			unusable = true;
			t->chunks_unusable += f->counts[j];
			if ((ret = names_add(&k->names, &k->nnames, max, rel)) < 0)
				return ret;
		}
	}
	if (f->h.version >= RK_FORMAT_V2) {
		t->v2_files++;
		/* the wrap layer: every entry in use wraps a data key, chunks or not */
		for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
			if (!f->h.keys[j].in_use)
				continue;
			struct rk_cov_key *k = table_key(t, &f->h.keys[j], f->st[j]);
			if (!k)
				return -ENOMEM;
			k->wrapped_files++;
		}
	}
	for (size_t i = 0; t->exposed && i < s->dd->nkeys; i++) {
		if (!s->dd->keys[i].compromised)
			continue;
		uint64_t n = 0;
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			if (f->h.keys[j].in_use && f->counts[j] &&
			    rk_cov_entry_exposed(&f->h, &f->h.keys[j], s->dd->keys[i].fp))
				n += f->counts[j];
		if (n) {
			struct rk_cov_exposure *x = &t->exposed[i];
			x->chunks += n;
			x->files++;
			if ((ret = names_add(&x->names, &x->nnames, max, rel)) < 0)
				return ret;
		}
	}
	if (unusable)
		t->files_unusable++;
	if (off) {
		t->files_off_target++;
		if ((ret = names_add(&t->off_target, &t->noff_target, max, rel)) < 0)
			return ret;
	}
	return 0;
}

/* The walking thread: key status, target, the release question, then the
 * table and the total. */
static int finish_file(struct scan *s, size_t ti, const char *rel, struct frec *f)
{
	const struct rk_table *tab = &s->dd->tables[ti];
	const char *q = s->o->query_key;
	uint64_t nq = 0;
	bool wq = false, named = false;
	int ret;
	if (f->chunk) {
		uint64_t all = f->malformed;
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			all += f->h.keys[j].in_use ? f->counts[j] : 0;
		for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
			const struct rk_cf_keyent *e = &f->h.keys[j];
			if (!e->in_use)
				continue;
			f->st[j] = key_status(s, e->name, e->fp, e->cipher);
			f->on[j] = target_matches(s->dd, tab->key, e);
			if (q && strcmp(e->name, q) == 0) {
				nq += f->counts[j];
				named = true;
			}
			wq |= q && rk_release_wrap_blocks(&f->h, j, q, all);
		}
	}
	s->c->query.named_files += named;
	/* the older copy names it (a rewrap cut between the copies): a damaged
	 * newer copy falls back to it, which then needs the key */
	bool oq = f->chunk && !named && f->copy_q;
	s->c->query.old_copies += oq;
	if (nq || wq || oq) {
		s->c->query.chunks += nq;
		s->c->query.wrapped_files += wq;
		s->c->query.files += nq > 0;
		if ((ret = names_add(&s->c->query.names, &s->c->query.nnames, s->o->max_names, rel)) < 0)
			return ret;
	}
	ret = apply(s, &s->c->tables[ti], rel, f);
	if (ret == 0)
		ret = apply(s, &s->c->total, rel, f);
	return ret;
}

/* Header problem of a chunk file: recorded, the file counts as corrupt. */
static int header_problem(struct plist *pl, struct frec *f, const char *rel, int err, unsigned version)
{
	char msg[256];
	enum rk_cov_problem_kind kind = RK_COVP_IO;
	f->corrupt = true;
	if (err == -EPROTONOSUPPORT) {
		kind = RK_COVP_UNSUPPORTED_VERSION;
		snprintf(msg, sizeof(msg),
		         "chunk-file format version %u is not supported (this rekeyfs reads versions %d and %d)",
		         version, RK_FORMAT_V1, RK_FORMAT_V2);
	} else if (err == -EUCLEAN) {
		kind = RK_COVP_CORRUPT_HEADER;
		snprintf(msg, sizeof(msg), "neither header copy passes its checksum: the file's chunks cannot be read");
	} else {
		snprintf(msg, sizeof(msg), "cannot read the file: %s", rk_strerror(err));
	}
	return add_problem(pl, kind, rel, -1, -1, msg);
}

/* Decode the header area already read (n bytes): 0 ok, 1 plain file,
 * negative as rk_cf_read_header.  The copy claiming the higher seq is
 * verified first, so a clean file costs one SHA-256.  *damaged gets the
 * copy (0 A, 1 B) that was overwritten while the other verifies, or -1. */
static int decode_area(int fd, uint8_t *buf, ssize_t n, struct rk_cf_header *h, unsigned *version, int *damaged)
{
	*damaged = -1;
	/* the one rule of rk_cf_probe */
	int p = rk_cf_probe_more(fd, buf, n > 0 ? (size_t)n : 0);
	if (p < 0)
		return p;
	if (p != 1)
		return 1;
	if (n < RK_HDR_AREA)
		memset(buf + n, 0, (size_t)(RK_HDR_AREA - n));
	struct rk_hdr_sel sel;
	int ret = rk_hdr_select(buf, false, h, &sel);
	if (ret == -EPROTONOSUPPORT)
		*version = sel.version;
	if (ret < 0)
		return ret == -EPROTONOSUPPORT ? ret : -EUCLEAN;
	*damaged = rk_hdr_damaged_copy(buf, sel.which);
	return 0;
}

/* One header copy verifies, the other was overwritten: corruption (the
 * file stays readable from the good copy). */
static int damaged_problem(struct plist *pl, const char *rel, int damaged)
{
	char msg[256];
	snprintf(msg, sizeof(msg),
	         "header copy %c is overwritten (no chunk-file magic); the file is read from copy %c, which verifies",
	         'A' + damaged, 'A' + (1 - damaged));
	return add_problem(pl, RK_COVP_DAMAGED_HEADER_COPY, rel, -1, -1, msg);
}

static void progress_add(struct scan *s, uint64_t bytes)
{
	s->c->deep_done += bytes;
	if (s->o->progress)
		s->o->progress(s->c->deep_done, s->c->deep_total, s->o->progress_arg);
}

/* Go through every slot of a chunk file: exact and deep scans, and headers
 * whose counts are marked dirty.  e is needed only with shared access
 * (exact/deep, walking thread); workers pass NULL. */
static int scan_slots(struct scan *s, const struct rk_walk_ent *e, int fd, const char *rel, struct frec *f,
                      struct plist *pl, uint8_t *chunkbuf)
{
	const struct rk_cov_opts *o = s->o;
	struct rk_cf *cf = NULL;
	void *token = NULL;
	bool shared = e && o->access && (o->exact || o->deep);
	char msg[512];
	int ret = shared ? o->access->open(o->access->arg, e, &cf, &token) : rk_cf_open(fd, rel, o->kr, false, &cf);
	if (ret == -ENOENT)
		return 1; /* vanished meanwhile */
	if (ret < 0)
		return header_problem(pl, f, rel, ret, f->h.version);
	/* the open file's header is authoritative (the daemon's in-memory counts) */
	rk_cf_get_header(cf, &f->h);
	uint64_t hdr_counts[RK_CF_MAX_KEYS];
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		hdr_counts[j] = f->h.keys[j].in_use ? f->h.keys[j].count : 0;
		f->counts[j] = f->bytes[j] = 0;
		/* deep (walking thread only): chunks under an unusable key are counted, not opened */
		f->st[j] = o->deep && f->h.keys[j].in_use
		               ? key_status(s, f->h.keys[j].name, f->h.keys[j].fp, f->h.keys[j].cipher)
		               : RK_COVK_UNCHECKED;
	}
	uint32_t cs = f->h.chunk_size;
	uint64_t size = f->h.size, n = rk_chunk_count(size, cs);
	uint64_t prev = 0; /* deep progress: chunks up to here are accounted for */
	/* holes are skipped: the cost follows the slots that exist */
	for (uint64_t i = rk_cf_next_slot(cf, 0, n); i < n; i = rk_cf_next_slot(cf, i + 1, n)) {
		uint64_t valid = RK_MIN((uint64_t)cs, size - i * cs);
		if (o->deep && chunkbuf && i > prev)
			progress_add(s, (i - prev) * (uint64_t)cs); /* skipped holes */
		prev = i + 1;
		int k = -1, r2 = 0, kk;
		if (shared && o->access->lock)
			o->access->lock(token, i);
		int r = rk_cf_chunk_keyidx(cf, i, &k);
		bool auth = o->deep && chunkbuf && r == 0 && k >= 0 && rk_cov_keystat_usable(f->st[k]);
		if (auth)
			r2 = rk_cf_read_chunk(cf, i, chunkbuf, &kk);
		if (shared && o->access->unlock)
			o->access->unlock(token, i);
		if (r == -EUCLEAN) {
			f->malformed++;
			snprintf(msg, sizeof(msg), "malformed slot header: the chunk cannot be read and its key is unknown");
			ret = add_problem(pl, RK_COVP_MALFORMED_SLOT, rel, (int64_t)i, (int64_t)(i * cs), msg);
		} else if (r < 0) {
			snprintf(msg, sizeof(msg), "read error: %s (the rest of the file was not checked)", rk_strerror(r));
			ret = add_problem(pl, RK_COVP_IO, rel, (int64_t)i, (int64_t)(i * cs), msg);
			if (ret == 0)
				ret = 1;
		} else if (k >= 0) {
			f->counts[k]++;
			f->bytes[k] += valid;
			if (auth && r2 == -ENOMEM) {
				ret = r2;
			} else if (auth && r2 < 0) {
				f->corrupt_chunks++;
				snprintf(msg, sizeof(msg),
				         "authentication failed under key '%s' (the chunk was altered, damaged, or moved from another "
				         "file or offset)",
				         f->h.keys[k].name);
				ret = add_problem(pl, RK_COVP_CORRUPT_CHUNK, rel, (int64_t)i, (int64_t)(i * cs), msg);
			} else if (auth) {
				f->verified++;
			}
		}
		if (o->deep && chunkbuf)
			progress_add(s, valid);
		if (ret != 0)
			break;
	}
	if (ret == 0 && o->deep && chunkbuf && n > prev)
		progress_add(s, RK_MIN((n - prev) * (uint64_t)cs, size - prev * cs));
	if (ret == 1)
		ret = 0;
	if (ret == 0 && !(f->h.flags & RK_HF_COUNTS_DIRTY) && f->malformed == 0)
		f->mismatch = memcmp(hdr_counts, f->counts, sizeof(hdr_counts)) != 0;
	if (ret == 0 && !(f->h.flags & RK_HF_COUNTS_DIRTY)) {
		/* a clean header counts exactly: chunks it counts that no slot
		 * holds are lost (file cut short, slots zeroed), and still need
		 * their key as far as anyone can tell */
		uint64_t lost = 0, first = 0, total_missing = rk_cf_missing(cf, &first, NULL);
		int64_t at = total_missing ? (int64_t)first : -1;
		for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
			if (hdr_counts[j] <= f->counts[j])
				continue;
			uint64_t d = hdr_counts[j] - f->counts[j];
			if (f->malformed >= d) /* malformed slots may be them */
				continue;
			lost += d;
			f->counts[j] += d;
			f->bytes[j] += RK_MIN(d * cs, size);
		}
		if (lost) {
			struct stat st;
			uint64_t end = fstat(rk_cf_fd(cf), &st) == 0 ? (uint64_t)st.st_size : 0;
			if (at >= 0)
				snprintf(msg, sizeof(msg),
				         "%" PRIu64 " chunk%s missing from chunk %" PRId64 " on: the stored file ends at byte %" PRIu64
				         " (cut short) but its clean header counts %s",
				         lost, lost == 1 ? "" : "s", at, end, lost == 1 ? "it" : "them");
			else
				snprintf(msg, sizeof(msg),
				         "%" PRIu64 " chunk%s missing: the clean header counts more chunks than the slots hold "
				         "(slots zeroed or punched)",
				         lost, lost == 1 ? "" : "s");
			ret = add_problem(pl, RK_COVP_MISSING_CHUNKS, rel, at, at >= 0 ? at * (int64_t)cs : -1, msg);
		}
	}
	if (shared)
		o->access->close(o->access->arg, token);
	else
		rk_cf_close(cf);
	return ret;
}

/* Everything about one open stored file that needs no walk entry: read the
 * header area and count its chunks (fast path; dirty counts are recounted).
 * Runs in workers.  0, or 1 when the file vanished, or a negative errno. */
/* Chunk counts of a clean header, trusted (the headers-only path). */
static void counts_from_header(struct frec *f)
{
	uint32_t cs = f->h.chunk_size;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		if (!f->h.keys[j].in_use)
			continue;
		f->counts[j] = f->h.keys[j].count;
		f->bytes[j] = RK_MIN(f->counts[j] * cs, f->h.size);
	}
}

/* Does an entry in use of h name key q (any fingerprint)?  A slot is sealed
 * under the key of the entry its key index names, and an entry reaches the
 * disk before any chunk sealed under it: a file whose header names no
 * entry for q holds no chunk under q, whatever its slots say (a slot naming
 * an unused entry is malformed, under no key). */
static bool names_key(const struct rk_cf_header *h, const char *q)
{
	for (int j = 0; q && j < RK_CF_MAX_KEYS; j++)
		if (h->keys[j].in_use && strcmp(h->keys[j].name, q) == 0)
			return true;
	return !q;
}

static int read_file(struct scan *s, int fd, bool small, const char *rel, uint8_t *buf, struct frec *f,
                     struct plist *pl)
{
	/* only the 8 KiB header area is wanted: no readahead of chunk data */
	if (!small)
		posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
	ssize_t n = rk_pread_full(fd, buf, RK_HDR_AREA, 0);
	if (n < 0)
		return header_problem(pl, f, rel, (int)n, 0);
	unsigned version = 0;
	int damaged;
	int r = decode_area(fd, buf, n, &f->h, &version, &damaged);
	if (r == 1) {
		f->plain = true;
		return 0;
	}
	if (r < 0)
		return header_problem(pl, f, rel, r, version);
	if (damaged >= 0) {
		int ret = damaged_problem(pl, rel, damaged);
		if (ret < 0)
			return ret;
	}
	if (f->h.flags & RK_HF_COUNTS_DIRTY) {
		f->recounted = true;
		int ret = scan_slots(s, NULL, fd, rel, f, pl, NULL);
		if (ret != 0 || f->corrupt)
			return ret;
	} else {
		counts_from_header(f);
	}
	f->chunk = true;
	return 0;
}

/* ---- the worker pool (fast path) ----------------------------------------------------------------- */
/* buf: the calling thread's RK_HDR_AREA buffer */
static void job_run(struct scan *s, struct job *j, uint8_t *buf)
{
	memset(&j->f, 0, sizeof(j->f));
	j->ret = buf ? read_file(s, j->fd, j->small, j->rel, buf, &j->f, &j->pl) : -ENOMEM;
	close(j->fd);
	j->fd = -1;
}

static void *worker_main(void *arg)
{
	struct pool *p = arg;
	uint8_t *buf = malloc(RK_HDR_AREA);
	rk_mutex_lock(&p->lock, RK_RANK_COVERAGE);
	while (!p->stop) {
		if (p->next == p->head) {
			p->idle++;
			pthread_cond_wait(&p->work, &p->lock);
			p->idle--;
			continue;
		}
		/* a few jobs at a time: less locking per file */
		uint64_t first = p->next, n = RK_MIN(p->head - p->next, (uint64_t)BATCH);
		p->next += n;
		for (uint64_t i = first; i < first + n; i++)
			p->ring[i % RING].state = J_RUNNING;
		rk_mutex_unlock(&p->lock);
		for (uint64_t i = first; i < first + n; i++)
			job_run(p->s, &p->ring[i % RING], buf);
		rk_mutex_lock(&p->lock, RK_RANK_COVERAGE);
		for (uint64_t i = first; i < first + n; i++)
			p->ring[i % RING].state = J_DONE;
		if (p->main_waiting)
			pthread_cond_signal(&p->done);
	}
	rk_mutex_unlock(&p->lock);
	free(buf);
	rk_crypto_thread_cleanup();
	return NULL;
}

/* Add finished jobs to the result in order until fewer than `keep` are
 * queued; the walking thread runs jobs no worker has taken yet.  Called
 * with p->lock held. */
static int pool_drain(struct pool *p, uint64_t keep)
{
	struct scan *s = p->s;
	int ret = 0;
	while (p->head - p->tail > keep) {
		struct job *j = &p->ring[p->tail % RING];
		if (j->state == J_QUEUED && p->next == p->tail) {
			p->next++;
			j->state = J_RUNNING;
			rk_mutex_unlock(&p->lock);
			job_run(s, j, s->hdrbuf);
			rk_mutex_lock(&p->lock, RK_RANK_COVERAGE);
			j->state = J_DONE;
		}
		if (j->state != J_DONE) {
			p->main_waiting = true;
			pthread_cond_wait(&p->done, &p->lock);
			p->main_waiting = false;
			continue;
		}
		rk_mutex_unlock(&p->lock);
		int r = j->ret < 0 ? j->ret : plist_move(&s->pl, &j->pl);
		if (r == 0 && j->ret == 0)
			r = finish_file(s, j->ti, j->rel, &j->f);
		plist_free(&j->pl);
		free(j->rel);
		j->rel = NULL;
		if (r < 0 && ret == 0)
			ret = r;
		rk_mutex_lock(&p->lock, RK_RANK_COVERAGE);
		j->state = 0;
		p->tail++;
	}
	return ret;
}

static int pool_submit(struct pool *p, size_t ti, const char *rel, int fd, bool small)
{
	char *r = strdup(rel);
	if (!r) {
		close(fd);
		return -ENOMEM;
	}
	rk_mutex_lock(&p->lock, RK_RANK_COVERAGE);
	/* a full ring is drained to half: the walking thread waits for the
	 * workers (or runs their jobs) once per RING / 2 files, not per file */
	int ret = p->head - p->tail >= RING ? pool_drain(p, RING / 2) : 0;
	struct job *j = &p->ring[p->head % RING];
	j->rel = r;
	j->ti = ti;
	j->fd = fd;
	j->small = small;
	j->state = J_QUEUED;
	p->head++;
	if (p->idle && p->head - p->next >= BATCH)
		pthread_cond_signal(&p->work);
	rk_mutex_unlock(&p->lock);
	return ret;
}

static int pool_start(struct scan *s)
{
	struct pool *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->ring = calloc(RING, sizeof(*p->ring));
	if (!p->ring) {
		free(p);
		return -ENOMEM;
	}
	p->s = s;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->work, NULL);
	pthread_cond_init(&p->done, NULL);
	/* more workers than cores: with cold caches the scan waits for the disk,
	 * and 8 reads in flight made 100,000 cold headers 4x faster than 1 */
	for (int i = 0; i < MAX_WORKERS; i++)
		if (pthread_create(&p->thr[p->nthr], NULL, worker_main, p) == 0)
			p->nthr++;
	s->pool = p; /* with no worker, the walking thread runs every job itself */
	return 0;
}

/* Drain (when ok) and stop. */
static int pool_finish(struct scan *s, bool ok)
{
	struct pool *p = s->pool;
	int ret = 0;
	if (!p)
		return 0;
	rk_mutex_lock(&p->lock, RK_RANK_COVERAGE);
	if (ok)
		ret = pool_drain(p, 0);
	p->stop = true;
	pthread_cond_broadcast(&p->work);
	rk_mutex_unlock(&p->lock);
	for (int i = 0; i < p->nthr; i++)
		pthread_join(p->thr[i], NULL);
	for (uint64_t i = p->tail; i < p->head; i++) {
		struct job *j = &p->ring[i % RING];
		if (j->fd >= 0 && j->state == J_QUEUED)
			close(j->fd);
		plist_free(&j->pl);
		free(j->rel);
	}
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->work);
	pthread_cond_destroy(&p->done);
	free(p->ring);
	free(p);
	s->pool = NULL;
	return ret;
}

/* ---- the walk --------------------------------------------------------------------------------- */
static int open_entry(const struct rk_walk_ent *e)
{
	int fd = openat(e->dirfd, e->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
	if (fd < 0 && errno == EPERM)
		fd = openat(e->dirfd, e->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static int visit(const struct rk_walk_ent *e, void *arg)
{
	struct scan *s = arg;
	const struct rk_cov_opts *o = s->o;
	int ret = 0;
	if (!S_ISREG(e->st->st_mode) || rk_is_tmp_name(e->name))
		return 0; /* conversion temporaries are not data (the mount hides them) */
	const struct rk_table *tab = rk_policy_lookup(s->dd, e->rel);
	if (o->table && strcmp(o->table, tab->path) != 0)
		return 0;
	size_t ti = (size_t)(tab - s->dd->tables);
	if (e->st->st_nlink > 1) {
		struct seen *sn, key;
		memset(&key, 0, sizeof(key));
		key.id.dev = e->st->st_dev;
		key.id.ino = e->st->st_ino;
		HASH_FIND(hh, s->seen, &key.id, sizeof(key.id), sn);
		if (sn) {
			if (!s->prescan) {
				s->c->tables[ti].extra_links++;
				s->c->total.extra_links++;
			}
			return 0;
		}
		if (!(sn = calloc(1, sizeof(*sn))))
			return -ENOMEM;
		sn->id = key.id;
		HASH_ADD(hh, s->seen, id, sizeof(sn->id), sn);
	}
	int fd = open_entry(e);
	if (fd == -EMFILE && s->pool) {
		/* many files queued: finish them and try again */
		rk_mutex_lock(&s->pool->lock, RK_RANK_COVERAGE);
		ret = pool_drain(s->pool, 0);
		rk_mutex_unlock(&s->pool->lock);
		if (ret < 0)
			return ret;
		fd = open_entry(e);
	}
	if (fd == -ENOENT)
		return 0; /* vanished meanwhile */
	if (s->prescan) {
		struct rk_cf_header h;
		unsigned v;
		int dmg;
		if (fd >= 0) {
			ssize_t n = rk_pread_full(fd, s->hdrbuf, RK_HDR_AREA, 0);
			if (n >= 0 && decode_area(fd, s->hdrbuf, n, &h, &v, &dmg) == 0)
				s->c->deep_total += h.size;
			close(fd);
		}
		return 0;
	}
	if (fd >= 0 && s->pool)
		return pool_submit(s->pool, ti, e->rel, fd, e->st->st_size <= SMALL_FILE);

	struct frec *f = calloc(1, sizeof(*f));
	if (!f) {
		if (fd >= 0)
			close(fd);
		return -ENOMEM;
	}
	if (fd < 0) {
		ret = header_problem(&s->pl, f, e->rel, fd, 0);
	} else if (!o->exact && !o->deep) {
		ret = read_file(s, fd, e->st->st_size <= SMALL_FILE, e->rel, s->hdrbuf, f, &s->pl);
	} else {
		/* exact/deep, in the walking thread: the daemon's shared file state
		 * needs the walk entry */
		posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
		ssize_t n = rk_pread_full(fd, s->hdrbuf, RK_HDR_AREA, 0);
		unsigned version = 0;
		int damaged = -1;
		int r = n < 0 ? (int)n : decode_area(fd, s->hdrbuf, n, &f->h, &version, &damaged);
		if (r == 1) {
			f->plain = true;
		} else if (r < 0) {
			ret = header_problem(&s->pl, f, e->rel, r, version);
		} else {
			f->recounted = (f->h.flags & RK_HF_COUNTS_DIRTY) != 0;
			f->copy_q = o->query_key && rk_hdr_copies_name(s->hdrbuf, o->query_key);
			ret = damaged >= 0 ? damaged_problem(&s->pl, e->rel, damaged) : 0;
			if (ret == 0 && !f->recounted && o->exact_key_only && !o->deep && !names_key(&f->h, o->query_key))
				counts_from_header(f);
			else if (ret == 0)
				ret = scan_slots(s, e, fd, e->rel, f, &s->pl, s->chunkbuf);
			if (ret == 0 && !f->corrupt)
				f->chunk = true;
		}
	}
	if (ret == 0)
		ret = finish_file(s, ti, e->rel, f);
	else if (ret == 1)
		ret = 0; /* vanished */
	if (fd >= 0)
		close(fd);
	free(f);
	return ret;
}

static void seen_free(struct scan *s)
{
	struct seen *sn, *tmp;
	HASH_ITER(hh, s->seen, sn, tmp)
	{
		HASH_DEL(s->seen, sn);
		free(sn);
	}
}

int rk_coverage_scan(struct rk_datadir *dd, const struct rk_cov_opts *opts, struct rk_cov **out)
{
	struct rk_cov_opts defo = {0};
	struct scan s = {.dd = dd};
	int ret = -ENOMEM;
	struct rk_cov *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	if (!opts)
		opts = &defo;
	s.o = opts;
	s.c = c;
	c->ntables = dd->ntables;
	c->tables = calloc(dd->ntables ? dd->ntables : 1, sizeof(*c->tables));
	c->registry = calloc(dd->nkeys ? dd->nkeys : 1, sizeof(*c->registry));
	c->datadir = strdup(dd->path ? dd->path : "");
	s.hdrbuf = malloc(RK_HDR_AREA);
	if (!c->tables || !c->registry || !c->datadir || !s.hdrbuf)
		goto fail;
	if (opts->kr && !(c->keydir = strdup(rk_keyring_dir(opts->kr))))
		goto fail;
	if (opts->deep && !(s.chunkbuf = malloc(RK_CHUNK_MAX)))
		goto fail;
	c->exact = opts->exact || opts->deep;
	c->key_only = c->exact && !opts->deep && opts->exact_key_only && opts->query_key;
	c->deep = opts->deep;
	if (opts->table)
		snprintf(c->table_filter, sizeof(c->table_filter), "%s", opts->table);
	for (size_t i = 0; i < dd->ntables; i++)
		if (!(c->tables[i].exposed = calloc(dd->nkeys ? dd->nkeys : 1, sizeof(struct rk_cov_exposure))))
			goto fail;
	if (!(c->total.exposed = calloc(dd->nkeys ? dd->nkeys : 1, sizeof(struct rk_cov_exposure))))
		goto fail;
	for (size_t i = 0; i < dd->ntables; i++) {
		snprintf(c->tables[i].path, sizeof(c->tables[i].path), "%s", dd->tables[i].path);
		snprintf(c->tables[i].target, sizeof(c->tables[i].target), "%s", dd->tables[i].key);
		c->tables[i].chunk_size = dd->tables[i].chunk_size;
	}
	snprintf(c->total.path, sizeof(c->total.path), "(all)");
	c->nregistry = dd->nkeys;
	for (size_t i = 0; i < dd->nkeys; i++) {
		struct rk_cov_regkey *r = &c->registry[i];
		snprintf(r->name, sizeof(r->name), "%s", dd->keys[i].name);
		memcpy(r->fp, dd->keys[i].fp, RK_FP_BYTES);
		r->cipher = dd->keys[i].cipher;
		r->bits = dd->keys[i].bits;
		r->state = dd->keys[i].state;
		r->compromised = dd->keys[i].compromised;
		r->file = key_status(&s, r->name, r->fp, r->cipher);
	}
	if (opts->query_key) {
		c->has_query = true;
		snprintf(c->query.name, sizeof(c->query.name), "%s", opts->query_key);
	}
	const char *start = opts->table ? opts->table : "/";
	if (opts->deep) {
		s.prescan = true;
		ret = rk_walk(dd->dirfd, start, visit, &s);
		s.prescan = false;
		seen_free(&s);
		if (ret < 0 && !(ret == -ENOENT && opts->table))
			goto fail;
		if (opts->progress)
			opts->progress(0, c->deep_total, opts->progress_arg);
	}
	if (!c->exact && (ret = pool_start(&s)) < 0)
		goto fail;
	ret = rk_walk(dd->dirfd, start, visit, &s);
	if (ret == -ENOENT && opts->table)
		ret = 0; /* the table's directory does not exist (yet): no files */
	int r2 = pool_finish(&s, ret == 0);
	if (ret == 0)
		ret = r2;
	if (ret < 0)
		goto fail;
	c->problems = s.pl.v;
	c->nproblems = s.pl.n;
	s.pl.v = NULL;
	seen_free(&s);
	free(s.kc);
	free(s.hdrbuf);
	free(s.chunkbuf);
	*out = c;
	return 0;
fail:
	pool_finish(&s, false);
	plist_free(&s.pl);
	seen_free(&s);
	free(s.kc);
	free(s.hdrbuf);
	free(s.chunkbuf);
	rk_coverage_free(c);
	return ret;
}
