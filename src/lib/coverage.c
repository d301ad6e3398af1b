/* rekeyfs - coverage scans over a data directory. */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/coverage.h"
#include "rekeyfs/format.h"
#include "rekeyfs/walk.h"

struct scan {
	struct rk_datadir *dd;
	const struct rk_cov_opts *o;
	struct rk_cov *c;
	uint64_t bytes_done;
	int err;
};

static struct rk_cov_key *table_key(struct rk_cov_table *t, const char *name, const uint8_t *fp)
{
	for (size_t i = 0; i < t->nkeys; i++)
		if (strcmp(t->keys[i].name, name) == 0 && memcmp(t->keys[i].fp, fp, RK_FP_BYTES) == 0)
			return &t->keys[i];
	struct rk_cov_key *nk = realloc(t->keys, (t->nkeys + 1) * sizeof(*nk));
	if (!nk)
		return NULL;
	t->keys = nk;
	struct rk_cov_key *k = &t->keys[t->nkeys++];
	memset(k, 0, sizeof(*k));
	snprintf(k->name, sizeof(k->name), "%s", name);
	memcpy(k->fp, fp, RK_FP_BYTES);
	return k;
}

static int add_problem(struct rk_cov *c, enum rk_cov_problem_kind kind, const char *path, int64_t chunk,
                       const char *detail)
{
	struct rk_cov_problem *np = realloc(c->problems, (c->nproblems + 1) * sizeof(*np));
	if (!np)
		return -ENOMEM;
	c->problems = np;
	struct rk_cov_problem *p = &c->problems[c->nproblems++];
	p->kind = kind;
	p->path = strdup(path);
	p->chunk = chunk;
	p->detail = strdup(detail);
	return p->path && p->detail ? 0 : -ENOMEM;
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

static int scan_chunk_file(struct scan *s, struct rk_cov_table *t, const char *rel, int fd)
{
	struct rk_cf_header h;
	char msg[256];
	int ret = rk_cf_read_header(fd, rel, &h, NULL);
	if (ret < 0) {
		t->corrupt_files++;
		snprintf(msg, sizeof(msg), "%s", rk_strerror(ret));
		return add_problem(s->c, ret == -EPROTONOSUPPORT ? RK_COVP_UNSUPPORTED_VERSION
		                       : ret == -EUCLEAN        ? RK_COVP_CORRUPT_HEADER
		                                                : RK_COVP_IO,
		                   rel, -1, msg);
	}
	uint64_t counts[RK_CF_MAX_KEYS];
	for (int j = 0; j < RK_CF_MAX_KEYS; j++)
		counts[j] = h.keys[j].in_use ? h.keys[j].count : 0;
	if ((h.flags & RK_HF_COUNTS_DIRTY) || s->o->exact || s->o->deep) {
		struct rk_cf *cf;
		ret = rk_cf_open(fd, rel, s->o->kr, false, &cf);
		if (ret < 0)
			return add_problem(s->c, RK_COVP_IO, rel, -1, rk_strerror(ret));
		if (h.flags & RK_HF_COUNTS_DIRTY)
			t->recounted++;
		memset(counts, 0, sizeof(counts));
		uint64_t n = rk_cf_nchunks(cf);
		uint8_t *buf = s->o->deep ? rk_scratch(5, h.chunk_size) : NULL;
		for (uint64_t i = 0; i < n; i++) {
			int k;
			if (s->o->deep) {
				if (!buf) {
					rk_cf_close(cf);
					return -ENOMEM;
				}
				ret = rk_cf_read_chunk(cf, i, buf, &k);
				if (ret < 0) {
					int kk = -1;
					rk_cf_chunk_keyidx(cf, i, &kk);
					enum rk_cov_problem_kind kind = RK_COVP_CORRUPT_CHUNK;
					const char *what = "authentication failed";
					if (kk >= 0) {
						struct rk_key *key;
						int kr = s->o->kr ? rk_keyring_get(s->o->kr, h.keys[kk].name, &key) : -ENOKEY;
						if (kr == -ENOKEY) {
							kind = RK_COVP_KEY_MISSING;
							what = "sealed under a key missing from the key directory";
						} else if (kr == -EKEYREVOKED) {
							kind = RK_COVP_KEY_RELEASED;
							what = "sealed under a released key";
						} else if (kr == 0 && memcmp(key->fp, h.keys[kk].fp, RK_FP_BYTES) != 0) {
							kind = RK_COVP_KEY_CHANGED;
							what = "sealed under a key whose key file has changed";
						}
						snprintf(msg, sizeof(msg), "offset %" PRIu64 ": %s (key '%s')", i * h.chunk_size, what,
						         h.keys[kk].name);
					} else {
						snprintf(msg, sizeof(msg), "offset %" PRIu64 ": malformed slot", i * h.chunk_size);
					}
					ret = add_problem(s->c, kind, rel, (int64_t)i, msg);
					if (ret < 0)
						break;
					if (kk >= 0)
						counts[kk]++;
					continue;
				}
				s->bytes_done += h.chunk_size;
				if (s->o->progress)
					s->o->progress(s->bytes_done, s->o->progress_arg);
			} else {
				ret = rk_cf_chunk_keyidx(cf, i, &k);
				if (ret == -EUCLEAN) {
					snprintf(msg, sizeof(msg), "offset %" PRIu64 ": malformed slot header", i * h.chunk_size);
					ret = add_problem(s->c, RK_COVP_CORRUPT_CHUNK, rel, (int64_t)i, msg);
					if (ret < 0)
						break;
					continue;
				}
				if (ret < 0)
					break;
			}
			if (k >= 0)
				counts[k]++;
		}
		rk_cf_close(cf);
		if (ret < 0)
			return ret;
	}
	t->chunk_files++;
	t->bytes += h.size;
	bool off = false;
	for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
		if (!h.keys[j].in_use || counts[j] == 0)
			continue;
		struct rk_cov_key *k = table_key(t, h.keys[j].name, h.keys[j].fp);
		if (!k)
			return -ENOMEM;
		k->chunks += counts[j];
		k->files++;
		k->bytes += RK_MIN(counts[j] * h.chunk_size, h.size);
		t->chunks += counts[j];
		if (target_matches(s->dd, t->target, &h.keys[j]))
			t->chunks_on_target += counts[j];
		else
			off = true;
	}
	if (off) {
		t->files_off_target++;
		if (t->noff_target < s->o->max_names) {
			char **nn = realloc(t->off_target, (t->noff_target + 1) * sizeof(*nn));
			if (!nn)
				return -ENOMEM;
			t->off_target = nn;
			t->off_target[t->noff_target] = strdup(rel);
			if (!t->off_target[t->noff_target])
				return -ENOMEM;
			t->noff_target++;
		}
	}
	return 0;
}

static int visit(const struct rk_walk_ent *e, void *arg)
{
	struct scan *s = arg;
	if (!S_ISREG(e->st->st_mode))
		return 0;
	const struct rk_table *tab = rk_policy_lookup(s->dd, e->rel);
	size_t ti = (size_t)(tab - s->dd->tables);
	struct rk_cov_table *t = &s->c->tables[ti];
	if (s->o->table && strcmp(s->o->table, tab->path) != 0)
		return 0;
	t->files++;
	int fd = openat(e->dirfd, e->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
	if (fd < 0 && errno == EPERM)
		fd = openat(e->dirfd, e->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		t->corrupt_files++;
		return add_problem(s->c, RK_COVP_IO, e->rel, -1, strerror(errno));
	}
	int ret = rk_cf_probe(fd);
	if (ret == 0)
		t->plain_files++;
	else if (ret == 1)
		ret = scan_chunk_file(s, t, e->rel, fd);
	else
		ret = add_problem(s->c, RK_COVP_IO, e->rel, -1, rk_strerror(ret));
	close(fd);
	return ret;
}

static void sum_into(struct rk_cov_table *tot, const struct rk_cov_table *t)
{
	tot->files += t->files;
	tot->chunk_files += t->chunk_files;
	tot->plain_files += t->plain_files;
	tot->corrupt_files += t->corrupt_files;
	tot->recounted += t->recounted;
	tot->chunks += t->chunks;
	tot->chunks_on_target += t->chunks_on_target;
	tot->bytes += t->bytes;
	tot->files_off_target += t->files_off_target;
	for (size_t i = 0; i < t->nkeys; i++) {
		struct rk_cov_key *k = table_key(tot, t->keys[i].name, t->keys[i].fp);
		if (!k)
			return;
		k->chunks += t->keys[i].chunks;
		k->files += t->keys[i].files;
		k->bytes += t->keys[i].bytes;
	}
}

int rk_coverage_scan(struct rk_datadir *dd, const struct rk_cov_opts *opts, struct rk_cov **out)
{
	struct rk_cov_opts defo = {0};
	struct rk_cov *c = calloc(1, sizeof(*c));
	int ret;
	if (!c)
		return -ENOMEM;
	if (!opts)
		opts = &defo;
	c->ntables = dd->ntables;
	c->tables = calloc(dd->ntables, sizeof(*c->tables));
	if (!c->tables) {
		free(c);
		return -ENOMEM;
	}
	for (size_t i = 0; i < dd->ntables; i++) {
		snprintf(c->tables[i].path, sizeof(c->tables[i].path), "%s", dd->tables[i].path);
		snprintf(c->tables[i].target, sizeof(c->tables[i].target), "%s", dd->tables[i].key);
	}
	snprintf(c->total.path, sizeof(c->total.path), "(all)");
	struct scan s = {.dd = dd, .o = opts, .c = c};
	ret = rk_walk(dd->dirfd, opts->table ? opts->table : "/", visit, &s);
	if (ret < 0) {
		rk_coverage_free(c);
		return ret;
	}
	for (size_t i = 0; i < c->ntables; i++)
		sum_into(&c->total, &c->tables[i]);
	*out = c;
	return 0;
}

static void table_free(struct rk_cov_table *t)
{
	free(t->keys);
	for (size_t i = 0; i < t->noff_target; i++)
		free(t->off_target[i]);
	free(t->off_target);
}

void rk_coverage_free(struct rk_cov *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->ntables; i++)
		table_free(&c->tables[i]);
	free(c->tables);
	table_free(&c->total);
	for (size_t i = 0; i < c->nproblems; i++) {
		free(c->problems[i].path);
		free(c->problems[i].detail);
	}
	free(c->problems);
	free(c);
}

uint64_t rk_cov_key_chunks(const struct rk_cov *c, const char *name)
{
	uint64_t n = 0;
	for (size_t i = 0; i < c->total.nkeys; i++)
		if (strcmp(c->total.keys[i].name, name) == 0)
			n += c->total.keys[i].chunks;
	return n;
}
