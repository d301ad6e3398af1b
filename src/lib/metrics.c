/* rekeyfs - Prometheus metrics: one mount's text exposition (version 0.0.4)
 * from the daemon's counters and cached coverage, and the merge of several
 * mounts' expositions (rekeyctl metrics MOUNT...).  See rekeyfs(8), METRICS. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rekeyfs/metrics.h"

const char *const rk_metrics_sweep_states[] = {"idle", "running", "paused", "finished", "incomplete", "off", NULL};

struct mbuf {
	char *p;
	size_t len, cap;
	int err;
};

static void mb_grow(struct mbuf *b, size_t need)
{
	if (b->err || b->len + need + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + need + 1)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p) {
		b->err = -ENOMEM;
		return;
	}
	b->p = p;
	b->cap = cap;
}

static void mb_put(struct mbuf *b, const char *s, size_t n)
{
	mb_grow(b, n);
	if (b->err)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void __attribute__((format(printf, 2, 3))) mb_printf(struct mbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->err = b->err ? b->err : -EINVAL;
		return;
	}
	mb_grow(b, (size_t)n);
	if (b->err)
		return;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

size_t rk_metrics_escape(const char *in, char *out, size_t outlen)
{
	size_t n = 0;
	for (const char *s = in ? in : ""; *s; s++) {
		char e[3] = {*s, 0, 0};
		if (*s == '\\' || *s == '"')
			e[0] = '\\', e[1] = *s;
		else if (*s == '\n')
			e[0] = '\\', e[1] = 'n';
		for (int i = 0; e[i]; i++, n++)
			if (outlen && n < outlen - 1)
				out[n] = e[i];
	}
	if (outlen)
		out[n < outlen - 1 ? n : outlen - 1] = '\0';
	return n;
}

/* a label: ,name="escaped" (the leading comma unless first) */
static void mb_label(struct mbuf *b, bool first, const char *name, const char *value)
{
	mb_printf(b, "%s%s=\"", first ? "" : ",", name);
	const char *v = value ? value : "";
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			mb_printf(b, "\\%c", *v);
		else if (*v == '\n')
			mb_put(b, "\\n", 2);
		else
			mb_put(b, v, 1);
	}
	mb_put(b, "\"", 1);
}

static void family(struct mbuf *b, const char *name, const char *type, const char *help)
{
	mb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* NAME{mount="M"[,l1="v1"[,l2="v2"]]} VALUE */
static void sample(struct mbuf *b, const struct rk_metrics_src *s, const char *name, const char *l1,
                   const char *v1, const char *l2, const char *v2, double value)
{
	mb_printf(b, "%s{", name);
	bool first = true;
	if (s->mount) {
		mb_label(b, first, "mount", s->mount);
		first = false;
	}
	if (l1) {
		mb_label(b, first, l1, v1);
		first = false;
	}
	if (l2)
		mb_label(b, first, l2, v2);
	if (value != value)
		mb_printf(b, "} NaN\n");
	else if (value >= 0 && value < 1e18 && value == (double)(uint64_t)value)
		mb_printf(b, "} %.0f\n", value);
	else
		mb_printf(b, "} %.3f\n", value);
}

static void scalar(struct mbuf *b, const struct rk_metrics_src *s, const char *name, const char *type,
                   const char *help, double value)
{
	family(b, name, type, help);
	sample(b, s, name, NULL, NULL, NULL, NULL, value);
}

/* the wrap layer and compromised keys */
static void wrap_layer(struct mbuf *b, const struct rk_metrics_src *s)
{
	const struct rk_cov *c = s->cov;
	family(b, "rekeyfs_wrapped_files", "gauge",
	       "Format 2 files whose header wraps a data key under the key, by table and key (cached coverage).");
	for (size_t i = 0; c && i < c->ntables; i++)
		for (size_t k = 0; k < c->tables[i].nkeys; k++)
			if (c->tables[i].v2_files)
				sample(b, s, "rekeyfs_wrapped_files", "table", c->tables[i].path, "key", c->tables[i].keys[k].name,
				       (double)c->tables[i].keys[k].wrapped_files);
	family(b, "rekeyfs_key_compromised", "gauge", "1 when the key registry marks the key compromised.");
	for (size_t r = 0; c && r < c->nregistry; r++)
		sample(b, s, "rekeyfs_key_compromised", "key", c->registry[r].name, NULL, NULL, c->registry[r].compromised);
	family(b, "rekeyfs_exposed_chunks", "gauge",
	       "Chunks sealed under data keys a compromised key ever wrapped, by table and compromised key; only a reseal "
	       "clears them (cached coverage).");
	for (size_t i = 0; c && i < c->ntables; i++)
		for (size_t r = 0; c->tables[i].exposed && r < c->nregistry; r++)
			if (c->registry[r].compromised)
				sample(b, s, "rekeyfs_exposed_chunks", "table", c->tables[i].path, "key", c->registry[r].name,
				       (double)c->tables[i].exposed[r].chunks);
	family(b, "rekeyfs_exposed_files", "gauge",
	       "Files holding such chunks, by table and compromised key (cached coverage).");
	for (size_t i = 0; c && i < c->ntables; i++)
		for (size_t r = 0; c->tables[i].exposed && r < c->nregistry; r++)
			if (c->registry[r].compromised)
				sample(b, s, "rekeyfs_exposed_files", "table", c->tables[i].path, "key", c->registry[r].name,
				       (double)c->tables[i].exposed[r].files);
}

static void coverage(struct mbuf *b, const struct rk_metrics_src *s)
{
	const struct rk_cov *c = s->cov;
	family(b, "rekeyfs_chunks", "gauge", "Chunks holding data, by table and the key they are sealed under (cached coverage).");
	for (size_t i = 0; c && i < c->ntables; i++)
		for (size_t k = 0; k < c->tables[i].nkeys; k++)
			sample(b, s, "rekeyfs_chunks", "table", c->tables[i].path, "key", c->tables[i].keys[k].name,
			       (double)c->tables[i].keys[k].chunks);
	family(b, "rekeyfs_bytes", "gauge", "Plaintext bytes of those chunks, by table and key (cached coverage).");
	for (size_t i = 0; c && i < c->ntables; i++)
		for (size_t k = 0; k < c->tables[i].nkeys; k++)
			sample(b, s, "rekeyfs_bytes", "table", c->tables[i].path, "key", c->tables[i].keys[k].name,
			       (double)c->tables[i].keys[k].bytes);
	family(b, "rekeyfs_plain_files", "gauge", "Regular files of a table that are not encrypted (cached coverage).");
	for (size_t i = 0; c && i < c->ntables; i++)
		sample(b, s, "rekeyfs_plain_files", "table", c->tables[i].path, NULL, NULL, (double)c->tables[i].plain_files);
	family(b, "rekeyfs_table_target_info", "gauge", "The key new chunks of a table are sealed under (value 1).");
	for (size_t i = 0; c && i < c->ntables; i++)
		sample(b, s, "rekeyfs_table_target_info", "table", c->tables[i].path, "key", c->tables[i].target, 1);
	family(b, "rekeyfs_key_releasable", "gauge",
	       "1 when no chunk anywhere in the data directory is under the key and no header wraps a data key under it "
	       "(cached coverage).");
	for (size_t r = 0; c && r < c->nregistry; r++)
		sample(b, s, "rekeyfs_key_releasable", "key", c->registry[r].name, NULL, NULL,
		       rk_cov_key_chunks(c, c->registry[r].name) == 0 && rk_cov_key_wrapped(c, c->registry[r].name) == 0 ? 1 : 0);
	/* keys found in data but not in the registry */
	for (size_t i = 0; c && i < c->ntables; i++)
		for (size_t k = 0; k < c->tables[i].nkeys; k++) {
			const char *name = c->tables[i].keys[k].name;
			bool seen = false;
			for (size_t r = 0; r < c->nregistry && !seen; r++)
				seen = strcmp(c->registry[r].name, name) == 0;
			for (size_t j = 0; j <= i && !seen; j++)
				for (size_t m = 0; m < (j < i ? c->tables[j].nkeys : k) && !seen; m++)
					seen = strcmp(c->tables[j].keys[m].name, name) == 0;
			if (!seen)
				sample(b, s, "rekeyfs_key_releasable", "key", name, NULL, NULL, 0);
		}
	wrap_layer(b, s);
	family(b, "rekeyfs_coverage_timestamp_seconds", "gauge",
	       "Unix time of the coverage scan the per-key series come from (absent: none yet).");
	if (c)
		sample(b, s, "rekeyfs_coverage_timestamp_seconds", NULL, NULL, NULL, NULL, (double)(uint64_t)s->cov_time);
	family(b, "rekeyfs_coverage_scan_seconds", "gauge", "How long that coverage scan took.");
	if (c)
		sample(b, s, "rekeyfs_coverage_scan_seconds", NULL, NULL, NULL, NULL, s->cov_scan_seconds);
}

int rk_metrics_render(const struct rk_metrics_src *s, char **out, size_t *len)
{
	struct mbuf b = {0};
	family(&b, "rekeyfs_build_info", "gauge", "The rekeyfs version serving the mount (value 1).");
	sample(&b, s, "rekeyfs_build_info", "version", s->version, NULL, NULL, 1);
	family(&b, "rekeyfs_mount_info", "gauge", "The data directory and key directory of the mount (value 1).");
	mb_printf(&b, "rekeyfs_mount_info{");
	bool first = true;
	if (s->mount) {
		mb_label(&b, true, "mount", s->mount);
		first = false;
	}
	mb_label(&b, first, "data_dir", s->data_dir);
	mb_label(&b, false, "key_dir", s->key_dir);
	mb_printf(&b, "} 1\n");
	coverage(&b, s);
	family(&b, "rekeyfs_sweep_state", "gauge", "The walker's state: 1 for the current one, 0 for the others.");
	for (int i = 0; rk_metrics_sweep_states[i]; i++)
		sample(&b, s, "rekeyfs_sweep_state", "state", rk_metrics_sweep_states[i], NULL, NULL,
		       s->sweep_state && strcmp(s->sweep_state, rk_metrics_sweep_states[i]) == 0 ? 1 : 0);
	scalar(&b, s, "rekeyfs_sweep_bytes_done", "gauge", "Plaintext bytes the current or last sweep has walked.",
	       (double)s->sweep_bytes_done);
	scalar(&b, s, "rekeyfs_sweep_total_bytes", "gauge",
	       "Plaintext bytes the current or last sweep walks in all.",
	       (double)s->sweep_bytes_total);
	family(&b, "rekeyfs_sweep_eta_seconds", "gauge",
	       "Estimated seconds until the running sweep ends (absent when unknown or idle).");
	if (s->eta_known)
		sample(&b, s, "rekeyfs_sweep_eta_seconds", NULL, NULL, NULL, NULL, s->eta_seconds);
	family(&b, "rekeyfs_chunks_rewritten_total", "counter", "Chunks re-sealed under their table's key since mount.");
	sample(&b, s, "rekeyfs_chunks_rewritten_total", "by", "walker", NULL, NULL, (double)s->chunks_rewritten_walker);
	sample(&b, s, "rekeyfs_chunks_rewritten_total", "by", "lazy", NULL, NULL, (double)s->chunks_rewritten_lazy);
	scalar(&b, s, "rekeyfs_lazy_queue_dropped_total", "counter",
	       "Lazy rewrite-on-read requests dropped because the queue was full.", (double)s->lazy_dropped);
	scalar(&b, s, "rekeyfs_read_errors_total", "counter", "Reads answered with an error (EIO) since mount.",
	       (double)s->read_errors);
	scalar(&b, s, "rekeyfs_write_errors_total", "counter", "Writes answered with an error since mount.",
	       (double)s->write_errors);
	scalar(&b, s, "rekeyfs_journal_commits_total", "counter", "Journal commits since mount.", (double)s->j_commits);
	scalar(&b, s, "rekeyfs_journal_fsyncs_total", "counter", "Journal fsyncs since mount.", (double)s->j_fsyncs);
	scalar(&b, s, "rekeyfs_journal_fsyncs_in_place_total", "counter",
	       "fsync requests served in place, without a journal commit, since mount.", (double)s->j_fsyncs_in_place);
	scalar(&b, s, "rekeyfs_journal_checkpoints_total", "counter", "Journal checkpoints since mount.",
	       (double)s->j_checkpoints);
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*out = b.p;
	*len = b.len;
	return 0;
}

/* ---- merge ---------------------------------------------------------------------------------- */
struct fam {
	char name[256];
	char *help, *type; /* whole lines, without the newline */
	struct mbuf samples;
};

static struct fam *fam_get(struct fam **fams, size_t *n, size_t *cap, const char *name, size_t nlen)
{
	if (nlen == 0 || nlen >= sizeof((*fams)->name))
		return NULL;
	for (size_t i = 0; i < *n; i++)
		if (strlen((*fams)[i].name) == nlen && memcmp((*fams)[i].name, name, nlen) == 0)
			return &(*fams)[i];
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 32;
		struct fam *f = realloc(*fams, nc * sizeof(*f));
		if (!f)
			return NULL;
		*fams = f;
		*cap = nc;
	}
	struct fam *f = &(*fams)[(*n)++];
	memset(f, 0, sizeof(*f));
	memcpy(f->name, name, nlen);
	return f;
}

static size_t name_len(const char *s, size_t max)
{
	size_t i = 0;
	while (i < max && s[i] != ' ' && s[i] != '{' && s[i] != '\t')
		i++;
	return i;
}

int rk_metrics_merge(const char *const *texts, size_t n, char **out, size_t *len)
{
	struct fam *fams = NULL;
	size_t nf = 0, cap = 0;
	int ret = 0;
	for (size_t t = 0; t < n && ret == 0; t++) {
		for (const char *l = texts[t]; l && *l && ret == 0;) {
			const char *e = strchr(l, '\n');
			size_t ll = e ? (size_t)(e - l) : strlen(l);
			const char *next = e ? e + 1 : l + ll;
			if (ll == 0) {
				l = next;
				continue;
			}
			bool help = ll > 7 && memcmp(l, "# HELP ", 7) == 0;
			bool type = ll > 7 && memcmp(l, "# TYPE ", 7) == 0;
			if (l[0] == '#' && !help && !type) {
				l = next;
				continue;
			}
			const char *nm = help || type ? l + 7 : l;
			size_t nl = name_len(nm, ll - (size_t)(nm - l));
			if (nl == 0) {
				ret = -EINVAL;
				break;
			}
			struct fam *f = fam_get(&fams, &nf, &cap, nm, nl);
			if (!f) {
				ret = nl >= sizeof(fams->name) ? -EINVAL : -ENOMEM;
				break;
			}
			if (help || type) {
				char **slot = help ? &f->help : &f->type;
				if (!*slot && !(*slot = strndup(l, ll)))
					ret = -ENOMEM;
			} else {
				mb_put(&f->samples, l, ll);
				mb_put(&f->samples, "\n", 1);
				if (f->samples.err)
					ret = f->samples.err;
			}
			l = next;
		}
	}
	struct mbuf b = {0};
	mb_put(&b, "", 0);
	for (size_t i = 0; i < nf && ret == 0; i++) {
		if (fams[i].help)
			mb_printf(&b, "%s\n", fams[i].help);
		if (fams[i].type)
			mb_printf(&b, "%s\n", fams[i].type);
		if (fams[i].samples.len)
			mb_put(&b, fams[i].samples.p, fams[i].samples.len);
	}
	if (ret == 0)
		ret = b.err;
	for (size_t i = 0; i < nf; i++) {
		free(fams[i].help);
		free(fams[i].type);
		free(fams[i].samples.p);
	}
	free(fams);
	if (ret < 0) {
		free(b.p);
		return ret;
	}
	*out = b.p;
	*len = b.len;
	return 0;
}
