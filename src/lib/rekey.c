/* rekeyfs - the rekey engine: which files to rekey and how (whole file or
 * in place), the walker checkpoint, the key-release scan, and the offline
 * rekey and open.  Shared by the daemon's walker (through its access
 * interface: shared open files, chunk locks) and rekeyctl (offline). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/rekey.h"

static bool on_target(const struct rk_cf_keyent *k, const struct rk_key *target)
{
	return strcmp(k->name, target->name) == 0 && memcmp(k->fp, target->fp, RK_FP_BYTES) == 0;
}

/* ---- what to do with one file ------------------------------------------------------------------ */
int rk_rekey_examine(int dirfd, const char *name, const char *rel, const struct rk_key *target, bool whole_ok,
                     struct rk_rekey_need *need)
{
	struct rk_cf_header h;
	memset(need, 0, sizeof(*need));
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	int ret = rk_cf_probe(fd);
	if (ret == 1) {
		need->chunk = true;
		ret = rk_cf_read_header(fd, rel, &h, NULL);
		if (ret == 0) {
			need->chunk_size = h.chunk_size;
			bool stale_wrap = false;
			for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
				if (!h.keys[j].in_use)
					continue;
				need->nchunks += h.keys[j].count;
				if (!on_target(&h.keys[j], target) && h.keys[j].count > 0) {
					need->todo += h.keys[j].count;
					need->needs = true;
				}
				/* format 2: a data key wrapped under another key keeps that key
				 * from being released even with no chunk under it */
				stale_wrap |= h.version >= RK_FORMAT_V2 && !on_target(&h.keys[j], target);
			}
			/* an empty or all-holes file whose header wraps under another key:
			 * a fresh copy (no chunk to write) names only the target */
			bool empty = need->nchunks == 0 && !(h.flags & RK_HF_COUNTS_DIRTY);
			if (empty && stale_wrap) {
				need->needs = true;
				need->whole = whole_ok; /* else in place: rk_cf_reset_chunkless */
			}
			if (h.flags & RK_HF_COUNTS_DIRTY)
				need->needs = true; /* counts may be stale: look at every chunk */
			/* whole-file replacement writes every chunk once; in place writes
			 * each old-key chunk twice (journal, slot): replace when at
			 * least half the chunks need it */
			need->whole |= whole_ok && need->todo > 0 && need->todo * 2 >= need->nchunks;
		}
	}
	close(fd);
	return ret < 0 ? ret : 0;
}

/* ---- one file --------------------------------------------------------------------------------- */
struct file_ctx {
	const struct rk_rekey_engine *eng;
	void *h;
};

static void fc_lock(void *arg, uint64_t idx)
{
	struct file_ctx *c = arg;
	if (c->eng->acc && c->eng->acc->lock)
		c->eng->acc->lock(c->eng->acc->arg, c->h, idx);
}

static void fc_unlock(void *arg, uint64_t idx)
{
	struct file_ctx *c = arg;
	if (c->eng->acc && c->eng->acc->unlock)
		c->eng->acc->unlock(c->eng->acc->arg, c->h, idx);
}

static int fc_throttle_inplace(void *arg, uint64_t idx, uint64_t bytes)
{
	struct file_ctx *c = arg;
	return c->eng->throttle ? c->eng->throttle(c->eng->throttle_arg, c->h, false, idx, bytes) : 0;
}

static int fc_throttle_whole(void *arg, uint64_t idx, uint64_t bytes)
{
	struct file_ctx *c = arg;
	return c->eng->throttle ? c->eng->throttle(c->eng->throttle_arg, c->h, true, idx, bytes) : 0;
}

/* Whole-file rekey.  0 done; -ECANCELED stop; any other error: the file is
 * as it was, use the in-place path. */
static int rekey_whole(struct file_ctx *c, const struct rk_walk_ent *e, struct rk_key *target,
                       struct rk_sweep_result *res)
{
	const struct rk_rekey_access *acc = c->eng->acc;
	int ret = acc && acc->replace_begin ? acc->replace_begin(acc->arg, c->h) : 0;
	if (ret < 0)
		return ret;
	struct rk_replace_cb cb = {fc_throttle_whole, c};
	struct rk_replace *r;
	ret = rk_replace_prepare(e->dirfd, e->name, e->rel, c->eng->kr, target, &cb, res, &r);
	if (ret == 0)
		ret = acc && acc->replace_commit ? acc->replace_commit(acc->arg, c->h, r) : rk_replace_commit(r, NULL, NULL);
	int r2 = rk_replace_end(r);
	return ret == 0 ? r2 : ret;
}

/* offline: the engine's own rk_cf, attached to the journal */
struct own_file {
	int fd;
	struct rk_cf *cf;
	struct rk_journal_file *jf; /* the journal's handle while attached */
};

static int own_open(const struct rk_rekey_engine *eng, const struct rk_walk_ent *e, struct own_file *o)
{
	o->cf = NULL;
	o->jf = NULL;
	o->fd = openat(e->dirfd, e->name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (o->fd < 0)
		return errno == ENOENT ? 1 : -errno;
	int ret = rk_cf_open(o->fd, e->rel, eng->kr, true, &o->cf);
	if (ret == 0 && eng->j) {
		ret = rk_journal_attach_file(eng->j, o->cf, e->rel, &o->jf);
		if (ret < 0) {
			rk_cf_close(o->cf);
			o->cf = NULL;
		}
	}
	if (ret < 0) {
		close(o->fd);
		o->fd = -1;
	}
	return ret;
}

static int own_close(const struct rk_rekey_engine *eng, struct own_file *o)
{
	int r3 = rk_journal_detach_file(o->jf); /* NULL (no journal): nothing */
	/* chunks in place: make them durable and the header counts exact and
	 * clean, so the fast fsck path trusts them */
	int r2 = r3 == 0 ? rk_cf_sync(o->cf) : rk_cf_flush(o->cf);
	if (r3 == 0) {
		rk_cf_close(o->cf);
		close(o->fd);
	}
	/* else: the journal still needs the fd; leak it, the journal keeps the data */
	return r3 ? r3 : r2;
}

static int rekey_in_place(struct file_ctx *c, const struct rk_walk_ent *e, struct rk_key *target,
                          struct rk_rekey_file_result *out)
{
	const struct rk_rekey_access *acc = c->eng->acc;
	struct own_file own = {-1, NULL, NULL};
	struct rk_cf *cf = NULL;
	int ret = acc && acc->open ? acc->open(acc->arg, c->h, &cf) : own_open(c->eng, e, &own);
	if (ret == 1 || ret == -ENOENT)
		return 0; /* gone, or not a writable chunk file */
	if (ret < 0)
		return ret;
	if (!cf)
		cf = own.cf;
	struct rk_sweep_cb cb = {fc_lock, fc_unlock, fc_throttle_inplace, c};
	ret = rk_sweep_file(cf, target, &cb, 0, &out->res);
	if (ret == 0)
		ret = rk_cf_reset_chunkless(cf, target); /* an empty file's header names only target */
	out->visited = true;
	int r2 = acc && acc->open ? (acc->close ? acc->close(acc->arg, c->h, cf) : 0) : own_close(c->eng, &own);
	return ret == 0 ? r2 : ret;
}

int rk_rekey_file(const struct rk_rekey_engine *eng, const struct rk_walk_ent *e, struct rk_key *target,
                  const struct rk_rekey_need *need, struct rk_rekey_file_result *out)
{
	const struct rk_rekey_access *acc = eng->acc;
	struct file_ctx c = {eng, NULL};
	int ret = 0;
	memset(out, 0, sizeof(*out));
	if (acc && acc->get) {
		ret = acc->get(acc->arg, e, &c.h);
		if (ret < 0) {
			ret = ret == -ENOENT ? 0 : ret;
			goto out;
		}
	}
	if (need->whole) {
		struct rk_sweep_result res;
		ret = rekey_whole(&c, e, target, &res);
		if (ret == 0) {
			out->res = res;
			out->replaced = true;
		}
		if (ret == 0 || ret == -ECANCELED)
			goto put;
		/* opened or changed meanwhile, hard links, no room for a copy, an
		 * unreadable chunk: chunk by chunk, in place */
	}
	ret = rekey_in_place(&c, e, target, out);
put:
	if (acc && acc->get && acc->put)
		acc->put(acc->arg, c.h);
out:
	out->outcome = rk_rekey_classify(ret);
	if (ret == 0 && out->res.chunks_failed)
		out->outcome = RK_RO_SKIPPED_UNREADABLE;
	return ret;
}

/* ---- checkpoint ---------------------------------------------------------------------------------- */
static const char *const state_names[] = {"idle", "running", "paused", "done"};

const char *rk_rekey_state_name(enum rk_rekey_state s)
{
	return (unsigned)s < sizeof(state_names) / sizeof(state_names[0]) ? state_names[s] : "idle";
}

const char *rk_rekey_result_name(enum rk_rekey_result r)
{
	return r == RK_RR_COMPLETE ? "complete" : r == RK_RR_INCOMPLETE ? "incomplete" : NULL;
}

/* the reason on one line, printable */
/* A checkpointed reason is one line of text: control characters become
 * spaces, leading and trailing spaces go (the line parser skips them: a
 * reason must read back as it was written; "  \x01" was written as "   "
 * and read back as none, found by tests/fuzz/fuzz_ckpt.c).  Used on load
 * and on format. */
static void ckpt_reason_clean(char *out, size_t len, const char *s)
{
	size_t o = 0;
	if (len == 0)
		return;
	for (; s && *s && o + 1 < len; s++)
		out[o++] = (unsigned char)*s < 0x20 || *s == 0x7f ? ' ' : *s;
	out[o] = '\0';
	while (o > 0 && out[o - 1] == ' ')
		out[--o] = '\0';
	size_t lead = strspn(out, " ");
	if (lead)
		memmove(out, out + lead, o - lead + 1);
}

static void ckpt_reason(FILE *m, const char *s)
{
	char r[sizeof(((struct rk_rekey_ckpt *)0)->reason)];
	ckpt_reason_clean(r, sizeof(r), s);
	fputs(r[0] ? r : "-", m);
}

int rk_rekey_ckpt_format(const struct rk_rekey_ckpt *c, char **text, size_t *len)
{
	char *buf = NULL;
	size_t n = 0;
	*text = NULL;
	*len = 0;
	FILE *m = open_memstream(&buf, &n);
	if (!m)
		return -ENOMEM;
	fprintf(m, "# rekeyfs walker checkpoint: where a sweep resumes after a restart\n");
	fprintf(m, "state %s\nsweep %" PRIu64 "\nstarted %lld\nfinished %lld\n", rk_rekey_state_name(c->state), c->sweep,
	        (long long)c->started, (long long)c->finished);
	fprintf(m, "filter");
	for (int i = 0; i < c->nfilter; i++)
		fprintf(m, " %s", c->filter[i]);
	fprintf(m, "\nposition %s\n", c->position && c->position[0] ? c->position : "-");
	/* format 2: the last sweep's outcome and the rate set at run time */
	const char *res = rk_rekey_result_name(c->result);
	fprintf(m, "finished_sweep %" PRIu64 "\nresult %s\n", c->finished_sweep, res ? res : "-");
	if (c->remaining_known)
		fprintf(m, "remaining %" PRIu64 "\n", c->remaining);
	else
		fprintf(m, "remaining -\n");
	fprintf(m, "reason ");
	ckpt_reason(m, c->reason);
	fputc('\n', m);
	if (c->rate_set)
		fprintf(m, "rate %" PRIu64 "\n", c->rate);
	if (c->has_queued) {
		fprintf(m, "queued");
		for (int i = 0; i < c->nqueued; i++)
			fprintf(m, " %s", c->queued[i]);
		fputc('\n', m);
	}
	/* an online rewrap: the keys of the sweep and of the queued request */
	if (c->rewrap)
		fprintf(m, "rewrap %s %s\n", c->rewrap_from, c->rewrap_to);
	if (c->has_queued && c->qrewrap)
		fprintf(m, "queued_rewrap %s %s\n", c->qrewrap_from, c->qrewrap_to);
	for (int i = 0; i < c->ntables; i++) {
		const struct rk_rekey_tstat *t = &c->tables[i];
		fprintf(m,
		        "table %s files_done=%" PRIu64 " chunks_checked=%" PRIu64 " chunks_rewritten=%" PRIu64
		        " bytes_rewritten=%" PRIu64 " chunks_failed=%" PRIu64,
		        t->path, t->files_done, t->chunks_checked, t->chunks_rewritten, t->bytes_rewritten, t->chunks_failed);
		if (t->counted)
			fprintf(m, " remaining=%" PRIu64, t->remaining);
		fputc('\n', m);
	}
	if (fclose(m) != 0 || !buf) {
		free(buf);
		return -ENOMEM;
	}
	*text = buf;
	*len = n;
	return 0;
}

int rk_rekey_ckpt_write(int statefd, const char *text, size_t len)
{
	return rk_write_file_atomic(statefd, RK_REKEY_CKPT_FILE, text, len, 0600);
}

struct rk_rekey_tstat *rk_rekey_tstat_for(struct rk_rekey_tstat *tables, int *n, const char *path)
{
	for (int i = 0; i < *n; i++)
		if (strcmp(tables[i].path, path) == 0)
			return &tables[i];
	if (*n == RK_REKEY_MAX_TABLES)
		return &tables[0];
	struct rk_rekey_tstat *t = &tables[(*n)++];
	memset(t, 0, sizeof(*t));
	snprintf(t->path, sizeof(t->path), "%s", path);
	return t;
}

bool rk_rekey_filter_has(char (*filter)[RK_TABLE_PATH_MAX], int nfilter, const char *tpath)
{
	if (nfilter == 0)
		return true;
	for (int i = 0; i < nfilter; i++)
		if (strcmp(filter[i], tpath) == 0)
			return true;
	return false;
}

static void ckpt_table_line(struct rk_rekey_ckpt *c, const char *rest)
{
	char path[RK_TABLE_PATH_MAX];
	struct rk_rekey_tstat tmp = {0};
	if (!c->tables)
		return;
	if (sscanf(rest,
	           "%1023s files_done=%" SCNu64 " chunks_checked=%" SCNu64 " chunks_rewritten=%" SCNu64
	           " bytes_rewritten=%" SCNu64 " chunks_failed=%" SCNu64,
	           path, &tmp.files_done, &tmp.chunks_checked, &tmp.chunks_rewritten, &tmp.bytes_rewritten,
	           &tmp.chunks_failed) >= 1) {
		struct rk_rekey_tstat *t = rk_rekey_tstat_for(c->tables, &c->ntables, path);
		t->files_done = tmp.files_done;
		t->chunks_checked = tmp.chunks_checked;
		t->chunks_rewritten = tmp.chunks_rewritten;
		t->bytes_rewritten = tmp.bytes_rewritten;
		t->chunks_failed = tmp.chunks_failed;
		const char *r = strstr(rest, " remaining=");
		uint64_t v;
		char num[24];
		if (r && sscanf(r, " remaining=%23[0-9]", num) == 1 && rk_parse_u64(num, UINT64_MAX, &v) == 0) {
			t->remaining = v;
			t->counted = true;
		}
	}
}

/* the lines format 2 added; a value that does not parse is ignored (unknown) */
static void ckpt_line2(struct rk_rekey_ckpt *c, const char *word, char *rest)
{
	uint64_t v;
	if (strcmp(word, "finished_sweep") == 0) {
		if (rk_parse_u64(rest, UINT64_MAX, &v) == 0)
			c->finished_sweep = v;
	} else if (strcmp(word, "result") == 0) {
		c->result = strcmp(rest, "complete") == 0     ? RK_RR_COMPLETE
		            : strcmp(rest, "incomplete") == 0 ? RK_RR_INCOMPLETE
		                                              : RK_RR_NONE;
	} else if (strcmp(word, "remaining") == 0) {
		c->remaining_known = rk_parse_u64(rest, UINT64_MAX, &v) == 0;
		c->remaining = c->remaining_known ? v : 0;
	} else if (strcmp(word, "reason") == 0) {
		ckpt_reason_clean(c->reason, sizeof(c->reason), strcmp(rest, "-") ? rest : "");
	} else if (strcmp(word, "queued") == 0 && c->queued) {
		char *s2 = NULL;
		c->has_queued = true;
		for (char *t = strtok_r(rest, " ", &s2); t && c->nqueued < RK_REKEY_MAX_TABLES; t = strtok_r(NULL, " ", &s2))
			snprintf(c->queued[c->nqueued++], RK_TABLE_PATH_MAX, "%s", t);
	} else if (strcmp(word, "rewrap") == 0 || strcmp(word, "queued_rewrap") == 0) {
		/* two key names; anything else: not a rewrap (a reseal, which does more) */
		char from[RK_KEY_NAME_MAX + 2], to[RK_KEY_NAME_MAX + 2];
		bool q = word[0] == 'q';
		bool ok = sscanf(rest, "%64s %64s", from, to) == 2 && rk_key_name_check(from) == 0 &&
		          rk_key_name_check(to) == 0 && strcmp(from, to) != 0;
		*(q ? &c->qrewrap : &c->rewrap) = ok;
		if (ok) { /* checked: at most RK_KEY_NAME_MAX characters each */
			memcpy(q ? c->qrewrap_from : c->rewrap_from, from, strlen(from) + 1);
			memcpy(q ? c->qrewrap_to : c->rewrap_to, to, strlen(to) + 1);
		}
	} else if (strcmp(word, "rate") == 0) {
		c->rate_set = rk_parse_u64(rest, RK_RATE_MAX, &v) == 0;
		c->rate = c->rate_set ? v : 0;
	}
}

static void ckpt_line(struct rk_rekey_ckpt *c, char *line)
{
	char word[32], rest[PATH_MAX];
	rest[0] = '\0'; /* a bare "filter" line (all tables) has no rest */
	if (line[0] == '#' || sscanf(line, "%31s %4095[^\n]", word, rest) < 1)
		return;
	if (strcmp(word, "state") == 0) {
		c->state = RK_RS_IDLE;
		for (int s = RK_RS_RUNNING; s <= RK_RS_DONE; s++)
			if (strcmp(rest, state_names[s]) == 0)
				c->state = (enum rk_rekey_state)s;
		c->resume = c->state == RK_RS_RUNNING || c->state == RK_RS_PAUSED;
	} else if (strcmp(word, "sweep") == 0) {
		c->sweep = strtoull(rest, NULL, 10);
	} else if (strcmp(word, "started") == 0) {
		c->started = (time_t)strtoll(rest, NULL, 10);
	} else if (strcmp(word, "finished") == 0) {
		c->finished = (time_t)strtoll(rest, NULL, 10);
	} else if (strcmp(word, "position") == 0) {
		if (c->position)
			snprintf(c->position, PATH_MAX, "%s", strcmp(rest, "-") ? rest : "");
	} else if (strcmp(word, "filter") == 0) {
		char *s2 = NULL;
		if (!c->filter)
			return;
		for (char *t = strtok_r(rest, " ", &s2); t && c->nfilter < RK_REKEY_MAX_TABLES; t = strtok_r(NULL, " ", &s2))
			snprintf(c->filter[c->nfilter++], RK_TABLE_PATH_MAX, "%s", t);
	} else if (strcmp(word, "table") == 0) {
		ckpt_table_line(c, rest);
	} else {
		ckpt_line2(c, word, rest);
	}
}

int rk_rekey_ckpt_load(int statefd, struct rk_rekey_ckpt *c)
{
	char *text = NULL;
	int ret = rk_read_small_file(statefd, RK_REKEY_CKPT_FILE, &text, NULL, 1 << 20);
	if (ret < 0)
		return ret;
	char *save = NULL;
	c->resume = false;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		ckpt_line(c, line);
	free(text);
	return 0;
}

/* ---- key release ------------------------------------------------------------------------------------ */
/* offline: open the stored file itself */
static int own_key_refs(const struct rk_walk_ent *e, struct rk_key_refs *out)
{
	int fd = openat(e->dirfd, e->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (rk_cf_probe(fd) == 1) {
		struct rk_cf *cf;
		out->chunk = true;
		if (rk_cf_open(fd, e->rel, NULL, false, &cf) < 0) {
			out->unreadable = true; /* could hide chunks under the key */
		} else {
			rk_cf_get_header(cf, &out->h);
			out->err = rk_scan_key_refs(cf, out->name, out->counts, &out->malformed);
			int r = out->name ? rk_cf_disk_copies_name(cf, out->name) : 0;
			if (r < 0 && out->err == 0)
				out->err = r;
			out->copy_names = r > 0;
			rk_cf_close(cf);
		}
	}
	close(fd);
	return 0;
}

struct rel_ctx {
	const char *name;
	const struct rk_rekey_access *acc;
	struct rk_release_verdict *v;
};

static int rel_visit(const struct rk_walk_ent *e, void *arg)
{
	struct rel_ctx *c = arg;
	struct rk_release_verdict *v = c->v;
	struct rk_key_refs refs;
	if (!S_ISREG(e->st->st_mode))
		return 0;
	memset(&refs, 0, sizeof(refs));
	refs.name = c->name;
	int ret = c->acc && c->acc->key_refs ? c->acc->key_refs(c->acc->arg, e, &refs) : own_key_refs(e, &refs);
	if (ret < 0)
		return ret == -ENOENT ? 0 : ret;
	uint64_t n = 0;
	bool wraps = false, names_now = false, stale = false;
	if (refs.unreadable) {
		n = 1;
	} else if (refs.chunk) {
		uint64_t all = refs.malformed;
		for (int j = 0; j < RK_CF_MAX_KEYS; j++)
			all += refs.counts[j];
		for (int j = 0; j < RK_CF_MAX_KEYS; j++) {
			if (refs.h.keys[j].in_use && strcmp(refs.h.keys[j].name, c->name) == 0) {
				n += refs.counts[j];
				names_now = true;
			}
			wraps |= rk_release_wrap_blocks(&refs.h, j, c->name, all);
		}
		/* the header in use names no entry for the key, but the older copy
		 * on disk does (a rewrap cut between the two copies): that copy is
		 * what a damaged newer copy falls back to, so it needs the key */
		stale = !names_now && refs.copy_names;
		/* a malformed slot header might be a chunk under the key: count it */
		n += refs.malformed;
		v->malformed += refs.malformed;
		if (refs.err < 0)
			n++;
	}
	if (refs.err < 0 && refs.unreadable)
		v->err = refs.err;
	if (n || wraps || stale) {
		const char *note = refs.note ? refs.note
		                   : n       ? NULL
		                   : wraps   ? "(no chunk: its header wraps a data key under it)"
		                             : "(its older header copy still wraps a data key under it: run rotate --rewrap again)";
		v->chunks += n;
		v->wrapped += wraps || stale;
		v->files++;
		if (v->nfirst < RK_RELEASE_FIRST)
			snprintf(v->first[v->nfirst++], PATH_MAX, "%s%s%s", e->rel, note ? " " : "", note ? note : "");
	}
	return 0;
}

const char *rk_release_targeted_by(const struct rk_datadir *dd, const char *name)
{
	for (size_t i = 0; i < dd->ntables; i++)
		if (strcmp(dd->tables[i].key, name) == 0)
			return dd->tables[i].path;
	return NULL;
}

int rk_release_scan(int rootfd, const char *name, const struct rk_rekey_access *acc, struct rk_release_verdict *v)
{
	struct rel_ctx c = {name, acc, v};
	memset(v, 0, sizeof(*v));
	return rk_walk(rootfd, "/", rel_visit, &c);
}

void rk_release_list(const struct rk_release_verdict *v, char *buf, size_t len)
{
	size_t l = 0;
	if (!len)
		return;
	buf[0] = '\0';
	for (int i = 0; i < v->nfirst && l < len - 1; i++)
		l += (size_t)snprintf(buf + l, len - l, "%s%s", i ? ", " : "", v->first[i]);
	if (v->files > (uint64_t)v->nfirst && l < len - 1)
		snprintf(buf + l, len - l, ", ...");
}

/* ---- offline --------------------------------------------------------------------------------------- */
int rk_open_offline(const char *dir, enum rk_dd_lock lock, struct rk_keyring *kr, const char *keydir, bool verify,
                    struct rk_datadir **out)
{
	struct rk_keyring *tmpkr = NULL;
	int ret = rk_datadir_open(dir, lock, out);
	if (ret < 0)
		return ret;
	if (kr)
		rk_registry_apply_released(*out, kr);
	/* a journal left by a crash is replayed before anything reads the data */
	if (rk_journal_pending(*out, NULL) > 0) {
		if (lock != RK_DD_EXCLUSIVE) {
			rk_datadir_close(*out);
			*out = NULL;
			ret = rk_datadir_open(dir, RK_DD_EXCLUSIVE, out);
			if (ret < 0)
				return ret;
		}
		if (!kr) {
			ret = rk_keyring_new(rk_keydir_resolve(keydir), &tmpkr);
			if (ret < 0)
				goto out;
			rk_registry_apply_released(*out, tmpkr);
		}
		uint64_t n;
		ret = rk_journal_replay(*out, kr ? kr : tmpkr, &n);
	}
	if (ret == 0 && verify && kr)
		ret = rk_registry_verify(*out, kr);
out:
	rk_keyring_free(tmpkr);
	if (ret < 0) {
		rk_datadir_close(*out);
		*out = NULL;
	}
	return ret;
}

struct orekey {
	struct rk_datadir *dd;
	struct rk_rekey_engine eng;
	char (*tables)[RK_TABLE_PATH_MAX];
	int ntables;
	bool prescan;
	uint64_t todo_bytes;
	char position[PATH_MAX];
	time_t last_save;
	const struct rk_rekey_progress *prog;
	struct rk_rekey_summary *sum;
	struct rk_rekey_ckpt prev; /* the checkpoint found: its sweep id and run-time rate are kept */
};

static int save_offline_checkpoint(struct orekey *o, enum rk_rekey_state state)
{
	struct rk_rekey_ckpt c = {.state = state, .started = time(NULL), .filter = o->tables, .nfilter = o->ntables,
	                          .position = o->position, .sweep = o->prev.sweep, .rate = o->prev.rate,
	                          .rate_set = o->prev.rate_set};
	char *text;
	size_t len;
	int ret = rk_rekey_ckpt_format(&c, &text, &len);
	o->last_save = time(NULL);
	if (ret == 0)
		ret = rk_rekey_ckpt_write(o->dd->statefd, text, len);
	free(text);
	return ret;
}

static int o_throttle(void *arg, void *h, bool whole, uint64_t idx, uint64_t bytes)
{
	struct orekey *o = arg;
	(void)h;
	(void)whole;
	(void)idx;
	if (o->prog && o->prog->add)
		o->prog->add(o->prog->arg, bytes);
	return 0;
}

static int orekey_visit(const struct rk_walk_ent *e, void *arg)
{
	struct orekey *o = arg;
	if (!S_ISREG(e->st->st_mode))
		return 0;
	if (rk_is_tmp_name(e->name)) {
		/* an interrupted whole-file rekey's (or conversion's) temporary */
		if (!o->prescan && rk_tmp_cleanup(e->dirfd, e->name) == 1)
			rk_info("%s: removed an interrupted rekey's temporary file", e->rel);
		return 0;
	}
	if (!o->prescan && o->position[0] && rk_walk_cmp(e->rel, o->position) <= 0)
		return 0;
	const struct rk_table *t = rk_policy_lookup(o->dd, e->rel);
	if (!rk_rekey_filter_has(o->tables, o->ntables, t->path))
		return 0;
	struct rk_key *key;
	int ret = rk_keyring_get(o->eng.kr, t->key, &key);
	if (ret < 0) {
		rk_err("table %s: target key '%s' cannot be used: %s (key directory %s)", t->path, t->key, rk_strerror(ret),
		       rk_keyring_dir(o->eng.kr));
		return ret;
	}
	struct rk_rekey_need need;
	if (rk_rekey_examine(e->dirfd, e->name, e->rel, key, true, &need) < 0 || !need.chunk)
		return 0;
	if (o->prescan) {
		o->todo_bytes += need.todo * need.chunk_size;
		return 0;
	}
	if (need.needs) {
		struct rk_rekey_file_result fr;
		ret = rk_rekey_file(&o->eng, e, key, &need, &fr);
		o->sum->rewritten += fr.res.chunks_rewritten;
		o->sum->failed += fr.res.chunks_failed;
		if (ret < 0) {
			rk_err("%s: rekey stopped: %s; the old chunks stay in place. Fix the cause and run again: it resumes "
			       "here", e->rel, rk_strerror(ret));
			return ret;
		}
		if (fr.replaced || fr.visited)
			o->sum->files++;
	}
	snprintf(o->position, sizeof(o->position), "%s", e->rel);
	if (time(NULL) != o->last_save)
		save_offline_checkpoint(o, RK_RS_RUNNING);
	rk_crashpoint("offline-rekey.file-done");
	return 0;
}

int rk_rekey_offline(struct rk_datadir *dd, struct rk_keyring *kr, char (*tables)[RK_TABLE_PATH_MAX], int ntables,
                     const struct rk_rekey_progress *prog, struct rk_rekey_summary *sum)
{
	struct orekey o = {.dd = dd, .tables = tables, .ntables = ntables, .prog = prog, .sum = sum};
	struct rk_rekey_ckpt ck = {.position = o.position};
	memset(sum, 0, sizeof(*sum));
	o.eng.kr = kr;
	o.eng.throttle = o_throttle;
	o.eng.throttle_arg = &o;
	/* resume an interrupted offline (or daemon) sweep */
	int lr = rk_rekey_ckpt_load(dd->statefd, &ck);
	if (lr == 0) {
		o.prev.sweep = ck.sweep;
		o.prev.rate = ck.rate;
		o.prev.rate_set = ck.rate_set;
	}
	if (lr == 0 && ck.resume) {
		if (prog && prog->resumed)
			prog->resumed(prog->arg, o.position);
	} else {
		o.position[0] = '\0';
	}
	int ret = rk_journal_open(dd, kr, NULL, &o.eng.j);
	if (ret < 0)
		return ret;
	o.prescan = true;
	ret = rk_walk(dd->dirfd, "/", orekey_visit, &o);
	if (ret == 0) {
		o.prescan = false;
		if (prog && prog->start)
			prog->start(prog->arg, o.todo_bytes);
		save_offline_checkpoint(&o, RK_RS_RUNNING);
		ret = rk_walk(dd->dirfd, "/", orekey_visit, &o);
	}
	int r2 = rk_journal_close(o.eng.j);
	if (ret == 0)
		ret = r2;
	if (ret == 0) {
		o.position[0] = '\0';
		save_offline_checkpoint(&o, RK_RS_DONE);
	}
	return ret;
}
