/* rekeyfs - the fsck coverage report (text and JSON) and its exit status. */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "rekeyfs/common.h"
#include "rekeyfs/fsck.h"

/* ---- options ---------------------------------------------------------------------------- */
int rk_fsck_parse_words(char *args, struct rk_fsck_opts *fo, char *err, size_t errlen)
{
	char *save = NULL;
	memset(fo, 0, sizeof(*fo));
	for (char *w = strtok_r(args, " \t\n", &save); w; w = strtok_r(NULL, " \t\n", &save)) {
		if (strcmp(w, "--deep") == 0) {
			fo->deep = true;
		} else if (strcmp(w, "--json") == 0) {
			fo->json = true;
		} else if (strcmp(w, "--verbose") == 0) {
			fo->verbose = true;
		} else if (strcmp(w, "--key") == 0 || strcmp(w, "--table") == 0) {
			char *v = strtok_r(NULL, " \t\n", &save);
			if (!v) {
				snprintf(err, errlen, "%s needs a value", w);
				return -EINVAL;
			}
			if (w[2] == 'k')
				fo->key = v;
			else
				fo->table = v;
		} else {
			snprintf(err, errlen, "unknown fsck option '%s' (known: --deep --json --verbose --key NAME --table T)",
			         w);
			return -EINVAL;
		}
	}
	return 0;
}

int rk_fsck_check_opts(const struct rk_datadir *dd, struct rk_fsck_opts *fo, char *tbuf, size_t tlen, char *err,
                       size_t errlen)
{
	if (fo->key && rk_key_name_check(fo->key) < 0) {
		snprintf(err, errlen, "--key %s: not a valid key name (1 to 63 of A-Z a-z 0-9 . _ -)", fo->key);
		return -EINVAL;
	}
	if (fo->key && fo->table) {
		snprintf(err, errlen,
		         "--key answers for the whole data directory (a key is released everywhere at once); it cannot be "
		         "combined with --table");
		return -EINVAL;
	}
	if (!fo->table)
		return 0;
	if (rk_table_path_norm(fo->table, tbuf, tlen) < 0) {
		snprintf(err, errlen, "--table %s: not a valid table path", fo->table);
		return -EINVAL;
	}
	for (size_t i = 0; i < dd->ntables; i++)
		if (strcmp(dd->tables[i].path, tbuf) == 0) {
			fo->table = tbuf;
			return 0;
		}
	size_t n = (size_t)snprintf(err, errlen, "%s is not a table of this data directory (tables:", tbuf);
	for (size_t i = 0; i < dd->ntables && n < errlen; i++)
		n += (size_t)snprintf(err + n, errlen - n, " %s", dd->tables[i].path);
	if (n < errlen)
		snprintf(err + n, errlen - n, ")");
	return -EINVAL;
}

void rk_fsck_scan_opts(const struct rk_fsck_opts *fo, struct rk_keyring *kr, struct rk_cov_opts *co)
{
	memset(co, 0, sizeof(*co));
	co->table = fo->table;
	co->max_names = fo->verbose ? SIZE_MAX : RK_FSCK_NAMES;
	co->deep = fo->deep;
	/* release rests on every chunk's key reference, never on header counts */
	co->exact = fo->deep || fo->key;
	co->kr = kr;
	co->query_key = fo->key;
	/* a file whose header names no entry for the key holds no chunk
	 * under it (rk_cov_opts.exact_key_only): its slots are not read */
	co->exact_key_only = fo->key && !fo->deep;
}

/* ---- verdicts ------------------------------------------------------------------------------- */
/* Problems that leave a chunk's key unknown: an unreadable header, a
 * malformed slot header, a file that could not be read to its end. */
static uint64_t uncertain_refs(const struct rk_cov *c)
{
	uint64_t n = 0;
	for (size_t i = 0; i < c->nproblems; i++)
		if (c->problems[i].kind != RK_COVP_CORRUPT_CHUNK)
			n++;
	return n;
}

static size_t targets_of(const struct rk_cov *c, const char *name, const struct rk_cov_table **out, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; i < c->ntables; i++)
		if (strcmp(c->tables[i].target, name) == 0) {
			if (n < max)
				out[n] = &c->tables[i];
			n++;
		}
	return n;
}

bool rk_fsck_may_release(const struct rk_cov *c)
{
	const struct rk_cov_table *t;
	if (!c->has_query)
		return false;
	return targets_of(c, c->query.name, &t, 1) == 0 && c->query.chunks == 0 && c->query.wrapped_files == 0 &&
	       c->query.old_copies == 0 && uncertain_refs(c) == 0;
}

static bool corruption_found(const struct rk_cov *c)
{
	return c->nproblems > 0 || c->total.chunks_unusable > 0;
}

int rk_fsck_exit_code(const struct rk_cov *c)
{
	int code = RK_FSCK_EXIT_OK;
	if (c->has_query ? !rk_fsck_may_release(c) : c->total.chunks_on_target < c->total.chunks)
		code |= RK_FSCK_EXIT_OLD_KEYS;
	if (corruption_found(c))
		code |= RK_FSCK_EXIT_CORRUPT;
	return code;
}

/* ---- helpers -------------------------------------------------------------------------------------- */
static const char *human(char *buf, size_t len, uint64_t b)
{
	static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
	double v = (double)b;
	int i = 0;
	while (v >= 1024.0 && i < 6) {
		v /= 1024.0;
		i++;
	}
	if (i == 0)
		snprintf(buf, len, "%" PRIu64 " B", b);
	else
		snprintf(buf, len, "%.1f %s", v, u[i]);
	return buf;
}

/* percent on target, rounded down to 0.1 so that 100.0 means every chunk */
static void percent(char *buf, size_t len, uint64_t on, uint64_t total)
{
	uint64_t pm = total ? (uint64_t)((long double)on * 1000.0L / (long double)total) : 1000;
	if (pm > 1000)
		pm = 1000;
	if (total && on < total && pm == 1000)
		pm = 999;
	snprintf(buf, len, "%" PRIu64 ".%" PRIu64, pm / 10, pm % 10);
}

static const char *plural(uint64_t n, const char *one, const char *many) { return n == 1 ? one : many; }

/* A JSON string.  File names are bytes: a byte that is not part of valid
 * UTF-8 is written as \u00XX (its Latin-1 reading), so the output stays
 * valid JSON. */
static void jstr(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	fputc('"', f);
	while (*p) {
		int n = rk_utf8_len(p);
		if (n == 0) {
			fprintf(f, "\\u%04x", *p++);
		} else if (*p == '"' || *p == '\\') {
			fprintf(f, "\\%c", *p++);
		} else if (*p < 0x20 || *p == 0x7f) {
			fprintf(f, "\\u%04x", *p++);
		} else {
			fwrite(p, 1, (size_t)n, f);
			p += n;
		}
	}
	fputc('"', f);
}

static void jnames(FILE *f, char *const *v, size_t n)
{
	fputc('[', f);
	for (size_t i = 0; i < n; i++) {
		if (i)
			fputs(", ", f);
		jstr(f, v[i]);
	}
	fputc(']', f);
}

/* "a, b, c" then ", ... (N more; --verbose lists all)" */
static void tnames(FILE *f, char *const *v, size_t n, uint64_t total)
{
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s%s", i ? ", " : "", rk_esc(v[i]));
	if (total > n)
		fprintf(f, "%s... (%" PRIu64 " more; --verbose lists all)", n ? ", " : "", total - n);
}

/* One row of the key table: a registry key and/or a key named by data. */
struct krow {
	char name[RK_KEY_NAME_MAX + 1];
	uint8_t fp[RK_FP_BYTES];
	enum rk_cipher cipher;
	unsigned bits;
	const char *registry; /* registry state, or "unregistered" */
	bool registered;
	enum rk_cov_keystat file;
	const struct rk_cov_key *data; /* NULL: no chunk under it */
};

static int key_rows(const struct rk_cov *c, struct krow **out, size_t *n)
{
	struct krow *v = calloc(c->nregistry + c->total.nkeys + 1, sizeof(*v));
	size_t k = 0;
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < c->nregistry; i++) {
		const struct rk_cov_regkey *r = &c->registry[i];
		struct krow *w = &v[k++];
		snprintf(w->name, sizeof(w->name), "%s", r->name);
		memcpy(w->fp, r->fp, RK_FP_BYTES);
		w->cipher = r->cipher;
		w->bits = r->bits;
		w->registry = rk_keystate_name(r->state);
		w->registered = true;
		w->file = r->file;
		for (size_t j = 0; j < c->total.nkeys; j++)
			if (strcmp(c->total.keys[j].name, r->name) == 0 && memcmp(c->total.keys[j].fp, r->fp, RK_FP_BYTES) == 0)
				w->data = &c->total.keys[j];
	}
	for (size_t j = 0; j < c->total.nkeys; j++) {
		const struct rk_cov_key *d = &c->total.keys[j];
		bool known = false;
		for (size_t i = 0; i < k; i++)
			if (v[i].data == d)
				known = true;
		if (known)
			continue;
		struct krow *w = &v[k++];
		snprintf(w->name, sizeof(w->name), "%s", d->name);
		memcpy(w->fp, d->fp, RK_FP_BYTES);
		w->cipher = d->cipher;
		w->bits = d->bits;
		w->registry = "unregistered";
		w->file = d->status;
		w->data = d;
	}
	*out = v;
	*n = k;
	return 0;
}

static const char *mode_name(const struct rk_cov *c) { return c->deep ? "deep" : c->exact ? "exact" : "headers"; }

static const char *mode_text(const struct rk_cov *c)
{
	return c->deep       ? "every chunk authenticated"
	       : c->key_only ? "every slot header read of the files whose header names the key"
	       : c->exact    ? "every slot header read"
	                     : "header counts";
}

/* ---- the release question ------------------------------------------------------------------ */
static void query_line(FILE *f, const struct rk_cov *c)
{
	const struct rk_cov_query *q = &c->query;
	const struct rk_cov_table *t[8];
	size_t nt = targets_of(c, q->name, t, 8);
	const struct rk_cov_regkey *reg = NULL;
	for (size_t i = 0; i < c->nregistry; i++)
		if (strcmp(c->registry[i].name, q->name) == 0)
			reg = &c->registry[i];
	uint64_t unc = uncertain_refs(c);
	if (nt) {
		fprintf(f, "key %s may NOT be released: it is the target key of table%s ", rk_esc(q->name),
		        nt > 1 ? "s" : "");
		for (size_t i = 0; i < RK_MIN(nt, (size_t)8); i++)
			fprintf(f, "%s%s", i ? ", " : "", rk_esc(t[i]->path));
		fprintf(f, "%s (alter %s to another key and rekey first)\n", nt > 8 ? ", ..." : "", nt > 1 ? "them" : "it");
	} else if (q->chunks) {
		fprintf(f, "key %s may NOT be released: %s%" PRIu64 " %s in %" PRIu64 " %s %s still under it: ", rk_esc(q->name),
		        reg && reg->state == RK_KS_RELEASED ? "it is already released, but " : "", q->chunks,
		        plural(q->chunks, "chunk", "chunks"), q->files, plural(q->files, "file", "files"),
		        plural(q->chunks, "is", "are"));
		tnames(f, q->names, q->nnames, q->files);
		fprintf(f, "%s\n", reg && reg->state == RK_KS_RELEASED
		                       ? " (restored from a backup? read it with rekeyctl cat and the old key file, then "
		                         "write it again through the mount)"
		                       : " (rekey first)");
	} else if (q->wrapped_files) {
		fprintf(f,
		        "key %s may NOT be released: no chunk is under it, but %" PRIu64 " format 2 %s %s a data key under it: ",
		        rk_esc(q->name), q->wrapped_files, plural(q->wrapped_files, "header", "headers"),
		        plural(q->wrapped_files, "wraps", "wrap"));
		tnames(f, q->names, q->nnames, q->wrapped_files);
		fprintf(f, " (rotate --rewrap or rekey first)\n");
	} else if (q->old_copies) {
		fprintf(f,
		        "key %s may NOT be released: no chunk is under it, but in %" PRIu64 " %s the older header copy still "
		        "wraps a data key under it (a rewrap was cut between the two copies): ",
		        rk_esc(q->name), q->old_copies, plural(q->old_copies, "file", "files"));
		tnames(f, q->names, q->nnames, q->old_copies);
		fprintf(f, " (run rotate --rewrap again)\n");
	} else if (unc) {
		fprintf(f,
		        "key %s may NOT be released: no readable chunk is under it, but %" PRIu64
		        " unreadable %s could hide chunks under it (see rekeyctl fsck)\n",
		        rk_esc(q->name), unc, plural(unc, "header or slot header", "headers or slot headers"));
	} else if (reg && reg->state == RK_KS_RELEASED) {
		fprintf(f, "key %s is already released, and no chunk is under it\n", rk_esc(q->name));
	} else if (!reg) {
		fprintf(f,
		        "key %s may be released: no chunk is under it (every header read; the slot headers of the %" PRIu64
		        " %s naming it read); it is not in this data directory's key registry\n",
		        rk_esc(q->name), q->named_files, plural(q->named_files, "file", "files"));
	} else {
		fprintf(f,
		        "key %s may be released: no chunk is under it (the headers of %" PRIu64
		        " chunk %s read; a chunk is only ever under a key its file's header names, and the slot headers "
		        "of the %" PRIu64 " %s naming it were read)\n",
		        rk_esc(q->name), c->total.chunk_files, plural(c->total.chunk_files, "file", "files"), q->named_files,
		        plural(q->named_files, "file", "files"));
	}
}

static void jkey(FILE *f, const char *ind, const char *name, bool first);
/* ---- compromised keys ---------------------------------------------------------------------------------- */
void rk_fsck_exposure_text(FILE *f, const struct rk_cov *c, const struct rk_cov_table *t, const char *ind)
{
	for (size_t i = 0; t->exposed && i < c->nregistry; i++) {
		const struct rk_cov_regkey *r = &c->registry[i];
		const struct rk_cov_exposure *x = &t->exposed[i];
		if (!r->compromised)
			continue;
		if (x->chunks == 0) {
			fprintf(f, "%skey %s is marked compromised: no chunk is sealed under a data key it wrapped%s\n", ind,
			        rk_esc(r->name), r->state == RK_KS_RELEASED ? " (the key is released)" : "");
			continue;
		}
		fprintf(f,
		        "%skey %s is marked compromised: %" PRIu64 " %s in %" PRIu64 " %s %s sealed under data keys it wrapped"
		        "%s; a rewrap does not clear them; run rotate without --rewrap: ",
		        ind, rk_esc(r->name), x->chunks, plural(x->chunks, "chunk", "chunks"), x->files,
		        plural(x->files, "file", "files"), plural(x->chunks, "is", "are"),
		        r->state == RK_KS_RELEASED ? " (the key is released, the exposure stays)" : "");
		tnames(f, x->names, x->nnames, x->files);
		fputc('\n', f);
	}
}

static void json_exposure(FILE *f, const struct rk_cov *c, const struct rk_cov_table *t, const char *ind)
{
	char hex[2 * RK_FP_BYTES + 1];
	size_t n = 0;
	jkey(f, ind, "exposed", false);
	fputc('[', f);
	for (size_t i = 0; t->exposed && i < c->nregistry; i++) {
		const struct rk_cov_regkey *r = &c->registry[i];
		const struct rk_cov_exposure *x = &t->exposed[i];
		if (!r->compromised)
			continue;
		rk_hex(hex, r->fp, RK_FP_BYTES);
		fprintf(f, "%s\n%s    {\"key\": ", n++ ? "," : "", ind);
		jstr(f, r->name);
		fprintf(f, ", \"fingerprint\": \"%s\", \"chunks\": %" PRIu64 ", \"files\": %" PRIu64 ", \"file_names\": ",
		        hex, x->chunks, x->files);
		jnames(f, x->names, x->nnames);
		fputc('}', f);
	}
	if (n)
		fprintf(f, "\n%s  ", ind);
	fputc(']', f);
}

/* ---- text ------------------------------------------------------------------------------------------------ */
static void text_keys_of_table(FILE *f, const struct rk_cov_table *t, const struct rk_cov *c)
{
	int w = 3;
	char b[32];
	for (size_t i = 0; i < t->nkeys; i++)
		w = RK_MAX(w, (int)strlen(t->keys[i].name));
	fprintf(f, "    %-*s  %-9s  %10s  %10s  %8s  %8s\n", w, "KEY", "KEY FILE", "CHUNKS", "BYTES", "FILES", "WRAPPED");
	for (size_t i = 0; i < t->nkeys; i++) {
		const struct rk_cov_key *k = &t->keys[i];
		bool target = false;
		for (size_t j = 0; j < c->nregistry; j++)
			if (strcmp(c->registry[j].name, t->target) == 0)
				target = strcmp(k->name, t->target) == 0 && memcmp(k->fp, c->registry[j].fp, RK_FP_BYTES) == 0;
		char wb[24] = "-"; /* no format 2 file: no wrap layer */
		if (t->v2_files)
			snprintf(wb, sizeof(wb), "%" PRIu64, k->wrapped_files);
		fprintf(f, "    %-*s  %-9s  %10" PRIu64 "  %10s  %8" PRIu64 "  %8s  %s\n", w, rk_esc(k->name),
		        rk_cov_keystat_name(k->status), k->chunks, human(b, sizeof(b), k->bytes), k->files, wb,
		        target ? "target" : "old key");
	}
}

static void text_counts(FILE *f, const struct rk_cov_table *t, const struct rk_cov *c, const char *what)
{
	char b[32], p[16];
	fprintf(f,
	        "  files   %" PRIu64 ": %" PRIu64 " chunk %s, %" PRIu64 " plain, %" PRIu64
	        " with a corrupt or unreadable header",
	        t->files, t->chunk_files, plural(t->chunk_files, "file", "files"), t->plain_files, t->corrupt_files);
	if (t->extra_links)
		fprintf(f, "; %" PRIu64 " more hard-link %s not counted again", t->extra_links,
		        plural(t->extra_links, "name", "names"));
	fputc('\n', f);
	percent(p, sizeof(p), t->chunks_on_target, t->chunks);
	fprintf(f, "  chunks  %" PRIu64 " (%s of plaintext in chunk files), %s%% on %s\n", t->chunks,
	        human(b, sizeof(b), t->bytes), p, what);
	if (c->exact || t->recounted) {
		fprintf(f, "  checks  ");
		if (c->deep)
			fprintf(f, "%" PRIu64 " %s authenticated, %" PRIu64 " corrupt, ", t->chunks_verified,
			        plural(t->chunks_verified, "chunk", "chunks"), t->corrupt_chunks);
		if (c->exact)
			fprintf(f, "%" PRIu64 " malformed slot %s, ", t->malformed_chunks,
			        plural(t->malformed_chunks, "header", "headers"));
		fprintf(f, "%" PRIu64 " dirty %s recounted", t->recounted, plural(t->recounted, "header", "headers"));
		if (c->exact)
			fprintf(f, ", %" PRIu64 " clean %s with wrong counts", t->count_mismatch,
			        plural(t->count_mismatch, "header", "headers"));
		fputc('\n', f);
	}
}

static void text_table(FILE *f, const struct rk_cov_table *t, const struct rk_cov *c)
{
	fprintf(f, "table %s  (target key %s, %u KiB chunks)\n", rk_esc(t->path), rk_esc(t->target), t->chunk_size / 1024);
	if (t->files == 0 && t->extra_links == 0) {
		fprintf(f, "  no files\n\n");
		return;
	}
	text_counts(f, t, c, "the target key");
	if (t->nkeys)
		text_keys_of_table(f, t, c);
	if (t->files_off_target) {
		fprintf(f, "  %" PRIu64 " %s with chunks under an old key: ", t->files_off_target,
		        plural(t->files_off_target, "file", "files"));
		tnames(f, t->off_target, t->noff_target, t->files_off_target);
		fputc('\n', f);
	}
	rk_fsck_exposure_text(f, c, t, "  ");
	fputc('\n', f);
}

static void text_key_table(FILE *f, const struct rk_cov *c, const struct krow *rows, size_t n)
{
	int w = 3, wc = 6;
	char b[32], hex[2 * RK_FP_BYTES + 1], cb[48];
	for (size_t i = 0; i < n; i++) {
		w = RK_MAX(w, (int)strlen(rows[i].name));
		snprintf(cb, sizeof(cb), "%s %u", rk_cipher_name(rows[i].cipher), rows[i].bits);
		wc = RK_MAX(wc, (int)strlen(cb));
	}
	fprintf(f, "  %-*s  %-32s  %-*s  %-12s  %-9s  %10s  %10s  %8s  %8s  %s\n", w, "KEY", "FINGERPRINT", wc, "CIPHER",
	        "REGISTRY", "KEY FILE", "CHUNKS", "BYTES", "FILES", "WRAPPED", "TARGET OF");
	for (size_t i = 0; i < n; i++) {
		const struct krow *r = &rows[i];
		rk_hex(hex, r->fp, RK_FP_BYTES);
		snprintf(cb, sizeof(cb), "%s %u", rk_cipher_name(r->cipher), r->bits);
		char wb[24] = "-";
		if (c->total.v2_files)
			snprintf(wb, sizeof(wb), "%" PRIu64, r->data ? r->data->wrapped_files : 0);
		fprintf(f, "  %-*s  %-32s  %-*s  %-12s  %-9s  %10" PRIu64 "  %10s  %8" PRIu64 "  %8s  ", w, rk_esc(r->name), hex,
		        wc, cb, r->registry, rk_cov_keystat_name(r->file), r->data ? r->data->chunks : 0,
		        human(b, sizeof(b), r->data ? r->data->bytes : 0), r->data ? r->data->files : 0, wb);
		size_t nt = 0;
		if (r->registered)
			for (size_t t = 0; t < c->ntables; t++)
				if (strcmp(c->tables[t].target, r->name) == 0)
					fprintf(f, "%s%s", nt++ ? "," : "", rk_esc(c->tables[t].path));
		fprintf(f, "%s\n", nt ? "" : "-");
	}
}

/* Keys the data needs but that cannot be used. */
static void text_unusable_keys(FILE *f, const struct rk_cov *c)
{
	char b[32];
	size_t nbad = 0;
	for (size_t i = 0; i < c->total.nkeys; i++)
		nbad += !rk_cov_keystat_usable(c->total.keys[i].status);
	if (nbad) {
		fprintf(f, "\nkeys the data needs that cannot be used (%zu):\n", nbad);
		for (size_t i = 0; i < c->total.nkeys; i++) {
			const struct rk_cov_key *k = &c->total.keys[i];
			if (rk_cov_keystat_usable(k->status))
				continue;
			char hex[2 * RK_FP_BYTES + 1];
			rk_hex(hex, k->fp, RK_FP_BYTES);
			const char *why = k->status == RK_COVK_MISSING    ? "missing from the key directory"
			                  : k->status == RK_COVK_RELEASED ? "released: its material is gone"
			                  : k->status == RK_COVK_CHANGED  ? "the key file of that name holds another key"
			                                                   : "its key file is refused or unreadable";
			fprintf(f, "  %s (fingerprint %s): %s; %" PRIu64 " %s (%s) in %" PRIu64 " %s cannot be read: ",
			        rk_esc(k->name), hex,
			        why, k->chunks, plural(k->chunks, "chunk", "chunks"), human(b, sizeof(b), k->bytes), k->files,
			        plural(k->files, "file", "files"));
			tnames(f, k->names, k->nnames, k->files);
			fputc('\n', f);
		}
	}
}

/* The problems found, one a line. */
static void text_problems(FILE *f, const struct rk_cov *c)
{
	if (c->nproblems) {
		fprintf(f, "\nproblems (%zu):\n", c->nproblems);
		for (size_t i = 0; i < c->nproblems; i++) {
			const struct rk_cov_problem *p = &c->problems[i];
			if (p->chunk >= 0)
				fprintf(f, "  %s: chunk %" PRId64 " (offset %" PRId64 "): %s: %s\n", rk_esc(p->path), p->chunk,
				        p->offset, rk_cov_problem_name(p->kind), rk_esc(p->detail));
			else
				fprintf(f, "  %s: %s: %s\n", rk_esc(p->path), rk_cov_problem_name(p->kind), rk_esc(p->detail));
		}
	}
}

/* The verdict on the rotation. */
static void text_rotation(FILE *f, const struct rk_cov *c)
{
	const struct rk_cov_table *tot = &c->total;
	uint64_t uncounted = uncertain_refs(c);
	if (tot->chunks_on_target == tot->chunks && uncounted == 0) {
		fprintf(f, "rotation complete: every chunk is on its table's target key\n");
	} else if (tot->chunks_on_target == tot->chunks) {
		fprintf(f,
		        "every readable chunk is on its table's target key, but %" PRIu64 " unreadable %s could hide "
		        "chunks under other keys (see the problems above)\n",
		        uncounted, plural(uncounted, "header or slot header", "headers or slot headers"));
	} else {
		uint64_t old = tot->chunks - tot->chunks_on_target;
		fprintf(f, "%" PRIu64 " %s in %" PRIu64 " %s still under old keys: ", old, plural(old, "chunk", "chunks"),
		        tot->files_off_target, plural(tot->files_off_target, "file", "files"));
		tnames(f, tot->off_target, tot->noff_target, tot->files_off_target);
		fprintf(f, "\n  (rekeyctl rekey rewrites them under their table's target key)\n");
	}
}

/* The verdict on corruption. */
static void text_corruption(FILE *f, const struct rk_cov *c)
{
	const struct rk_cov_table *tot = &c->total;
	if (!corruption_found(c)) {
		fprintf(f, "no corruption found (%s)\n",
		        c->deep ? "every chunk authenticated"
		                : "headers verified; rekeyctl fsck --deep also authenticates every chunk");
	} else {
		uint64_t hdr = 0, chunk = 0, slot = 0, io = 0, miss = 0, copy = 0;
		for (size_t i = 0; i < c->nproblems; i++) {
			switch (c->problems[i].kind) {
			case RK_COVP_CORRUPT_HEADER:
			case RK_COVP_UNSUPPORTED_VERSION:
				hdr++;
				break;
			case RK_COVP_CORRUPT_CHUNK:
				chunk++;
				break;
			case RK_COVP_MALFORMED_SLOT:
				slot++;
				break;
			case RK_COVP_MISSING_CHUNKS:
				miss++;
				break;
			case RK_COVP_DAMAGED_HEADER_COPY:
				copy++;
				break;
			default:
				io++;
			}
		}
		fprintf(f, "corrupt or unreadable data found:");
		const char *sep = " ";
		if (hdr) {
			fprintf(f, "%s%" PRIu64 " corrupt or unsupported %s", sep, hdr, plural(hdr, "header", "headers"));
			sep = ", ";
		}
		if (chunk) {
			fprintf(f, "%s%" PRIu64 " corrupt %s", sep, chunk, plural(chunk, "chunk", "chunks"));
			sep = ", ";
		}
		if (slot) {
			fprintf(f, "%s%" PRIu64 " malformed slot %s", sep, slot, plural(slot, "header", "headers"));
			sep = ", ";
		}
		if (miss) {
			fprintf(f, "%s%" PRIu64 " %s with missing chunks", sep, miss, plural(miss, "file", "files"));
			sep = ", ";
		}
		if (copy) {
			fprintf(f, "%s%" PRIu64 " overwritten header %s", sep, copy, plural(copy, "copy", "copies"));
			sep = ", ";
		}
		if (io) {
			fprintf(f, "%s%" PRIu64 " read %s", sep, io, plural(io, "error", "errors"));
			sep = ", ";
		}
		if (tot->chunks_unusable)
			fprintf(f, "%s%" PRIu64 " %s under keys that cannot be used", sep, tot->chunks_unusable,
			        plural(tot->chunks_unusable, "chunk", "chunks"));
		fputc('\n', f);
	}
}

/* The exit status and what it means. */
static void text_exit(FILE *f, const struct rk_cov *c)
{
	int code = rk_fsck_exit_code(c);
	fprintf(f, "exit status %d", code);
	if (code == 0)
		fprintf(f, " (clean)");
	else
		fprintf(f, " (%s%s%s)", code & RK_FSCK_EXIT_OLD_KEYS ? "1: old-key chunks remain" : "",
		        code == (RK_FSCK_EXIT_OLD_KEYS | RK_FSCK_EXIT_CORRUPT) ? " + " : "",
		        code & RK_FSCK_EXIT_CORRUPT ? "4: corruption or unreadable data" : "");
	fputc('\n', f);
}

static void text_report(FILE *f, const struct rk_cov *c)
{
	struct krow *rows = NULL;
	size_t nrows = 0;
	fprintf(f, "rekeyfs fsck of %s (%s; %s", rk_esc(c->datadir), c->online ? "online, through the daemon" : "offline",
	        mode_text(c));
	if (c->keydir)
		fprintf(f, "; key directory %s", rk_esc(c->keydir));
	fprintf(f, ")\n\n");
	bool one = c->table_filter[0] != '\0';
	for (size_t i = 0; i < c->ntables; i++)
		if (!one || strcmp(c->tables[i].path, c->table_filter) == 0)
			text_table(f, &c->tables[i], c);
	fprintf(f, "%s\n", one ? "total (this table)" : "total");
	text_counts(f, &c->total, c, "their table's target key");
	if (key_rows(c, &rows, &nrows) == 0 && nrows) {
		fputc('\n', f);
		text_key_table(f, c, rows, nrows);
	}
	free(rows);

	text_unusable_keys(f, c);
	text_problems(f, c);
	/* verdict */
	fputc('\n', f);
	text_rotation(f, c);
	rk_fsck_exposure_text(f, c, &c->total, "");
	text_corruption(f, c);
	text_exit(f, c);
}

/* ---- JSON ------------------------------------------------------------------------------------------ */
/* ",\n<ind>  "name": " then the value */
static void jkey(FILE *f, const char *ind, const char *name, bool first)
{
	fprintf(f, "%s\n%s  \"%s\": ", first ? "" : ",", ind, name);
}

static void ju64(FILE *f, const char *ind, const char *name, uint64_t v)
{
	jkey(f, ind, name, false);
	fprintf(f, "%" PRIu64, v);
}

/* a counter only some scan modes count: null when not counted */
static void ju64_if(FILE *f, const char *ind, const char *name, bool counted, uint64_t v)
{
	jkey(f, ind, name, false);
	if (counted)
		fprintf(f, "%" PRIu64, v);
	else
		fputs("null", f);
}

static void json_table(FILE *f, const struct rk_cov_table *t, const struct rk_cov *c, bool total, const char *ind)
{
	char p[16], hex[2 * RK_FP_BYTES + 1];
	percent(p, sizeof(p), t->chunks_on_target, t->chunks);
	fputc('{', f);
	jkey(f, ind, "path", true);
	total ? (void)fputs("null", f) : jstr(f, t->path);
	jkey(f, ind, "target", false);
	total ? (void)fputs("null", f) : jstr(f, t->target);
	ju64_if(f, ind, "chunk_size", !total, t->chunk_size);
	ju64(f, ind, "files", t->files);
	ju64(f, ind, "chunk_files", t->chunk_files);
	ju64(f, ind, "plain_files", t->plain_files);
	ju64(f, ind, "corrupt_files", t->corrupt_files);
	ju64(f, ind, "extra_links", t->extra_links);
	ju64(f, ind, "chunks", t->chunks);
	ju64(f, ind, "chunks_on_target", t->chunks_on_target);
	ju64(f, ind, "chunks_off_target", t->chunks - t->chunks_on_target);
	jkey(f, ind, "percent_on_target", false);
	fputs(p, f);
	ju64(f, ind, "bytes", t->bytes);
	ju64(f, ind, "files_off_target", t->files_off_target);
	jkey(f, ind, "off_target_files", false);
	jnames(f, t->off_target, t->noff_target);
	jkey(f, ind, "off_target_files_complete", false);
	fputs(t->noff_target == t->files_off_target ? "true" : "false", f);
	ju64(f, ind, "chunks_unusable", t->chunks_unusable);
	ju64(f, ind, "files_unusable", t->files_unusable);
	ju64(f, ind, "recounted", t->recounted);
	ju64_if(f, ind, "malformed_chunks", c->exact, t->malformed_chunks);
	ju64_if(f, ind, "count_mismatch", c->exact, t->count_mismatch);
	ju64_if(f, ind, "corrupt_chunks", c->deep, t->corrupt_chunks);
	ju64_if(f, ind, "chunks_verified", c->deep, t->chunks_verified);
	ju64(f, ind, "v2_files", t->v2_files);
	json_exposure(f, c, t, ind);
	/* the keys this table's data is sealed under */
	jkey(f, ind, "keys", false);
	fputc('[', f);
	for (size_t i = 0; i < t->nkeys; i++) {
		const struct rk_cov_key *k = &t->keys[i];
		bool target = false;
		if (!total)
			for (size_t j = 0; j < c->nregistry; j++)
				if (strcmp(c->registry[j].name, t->target) == 0)
					target = strcmp(k->name, t->target) == 0 && memcmp(k->fp, c->registry[j].fp, RK_FP_BYTES) == 0;
		rk_hex(hex, k->fp, RK_FP_BYTES);
		fprintf(f, "%s\n%s    {\"name\": ", i ? "," : "", ind);
		jstr(f, k->name);
		fprintf(f,
		        ", \"fingerprint\": \"%s\", \"key_file\": \"%s\", \"target\": %s, \"chunks\": %" PRIu64
		        ", \"bytes\": %" PRIu64 ", \"files\": %" PRIu64 ", \"wrapped_files\": %" PRIu64 "}",
		        hex, rk_cov_keystat_name(k->status), total ? "null" : target ? "true" : "false", k->chunks, k->bytes,
		        k->files, k->wrapped_files);
	}
	if (t->nkeys)
		fprintf(f, "\n%s  ", ind);
	fputc(']', f);
	static const struct {
		const char *field;
		enum rk_cov_keystat st;
	} lists[] = {{"keys_missing", RK_COVK_MISSING},
	             {"keys_released", RK_COVK_RELEASED},
	             {"keys_changed", RK_COVK_CHANGED},
	             {"keys_refused", RK_COVK_REFUSED}};
	for (size_t l = 0; l < RK_ARRAY_SIZE(lists); l++) {
		jkey(f, ind, lists[l].field, false);
		fputc('[', f);
		size_t n = 0;
		for (size_t i = 0; i < t->nkeys; i++)
			if (t->keys[i].status == lists[l].st) {
				fprintf(f, "%s", n++ ? ", " : "");
				jstr(f, t->keys[i].name);
			}
		fputc(']', f);
	}
	fprintf(f, "\n%s}", ind);
}

static void json_report(FILE *f, const struct rk_cov *c, const struct rk_fsck_opts *fo)
{
	char hex[2 * RK_FP_BYTES + 1];
	struct krow *rows = NULL;
	size_t nrows = 0;
	int code = rk_fsck_exit_code(c);
	fprintf(f, "{\n  \"schema\": \"%s\",\n  \"datadir\": ", RK_FSCK_SCHEMA);
	jstr(f, c->datadir);
	fprintf(f, ",\n  \"keydir\": ");
	c->keydir ? jstr(f, c->keydir) : (void)fputs("null", f);
	fprintf(f, ",\n  \"source\": \"%s\",\n  \"mode\": \"%s\",\n  \"table_filter\": ", c->online ? "daemon" : "offline",
	        mode_name(c));
	c->table_filter[0] ? jstr(f, c->table_filter) : (void)fputs("null", f);
	fprintf(f, ",\n  \"verbose\": %s,\n  \"exit\": %d,\n  \"rotation_complete\": %s,\n  \"corruption_found\": %s",
	        fo->verbose ? "true" : "false", code, c->total.chunks_on_target == c->total.chunks ? "true" : "false",
	        corruption_found(c) ? "true" : "false");
	fprintf(f, ",\n  \"deep_bytes\": ");
	c->deep ? fprintf(f, "%" PRIu64, c->deep_total) : fprintf(f, "null");
	fprintf(f, ",\n  \"tables\": [");
	bool one = c->table_filter[0] != '\0';
	size_t nt = 0;
	for (size_t i = 0; i < c->ntables; i++) {
		if (one && strcmp(c->tables[i].path, c->table_filter) != 0)
			continue;
		fprintf(f, "%s\n    ", nt++ ? "," : "");
		json_table(f, &c->tables[i], c, false, "    ");
	}
	fprintf(f, "\n  ],\n  \"total\": ");
	json_table(f, &c->total, c, true, "  ");
	fprintf(f, ",\n  \"keys\": [");
	if (key_rows(c, &rows, &nrows) < 0)
		nrows = 0;
	for (size_t i = 0; i < nrows; i++) {
		const struct krow *r = &rows[i];
		rk_hex(hex, r->fp, RK_FP_BYTES);
		fprintf(f, "%s\n    {\"name\": ", i ? "," : "");
		jstr(f, r->name);
		fprintf(f,
		        ", \"fingerprint\": \"%s\", \"cipher\": \"%s\", \"bits\": %u, \"registry\": \"%s\""
		        ", \"key_file\": \"%s\"",
		        hex, rk_cipher_name(r->cipher), r->bits, r->registry, rk_cov_keystat_name(r->file));
		fprintf(f, ", \"target_of\": [");
		size_t n = 0;
		if (r->registered)
			for (size_t t = 0; t < c->ntables; t++)
				if (strcmp(c->tables[t].target, r->name) == 0) {
					fprintf(f, "%s", n++ ? ", " : "");
					jstr(f, c->tables[t].path);
				}
		const struct rk_cov_exposure *x = NULL;
		for (size_t j = 0; r->registered && j < c->nregistry; j++)
			if (c->registry[j].compromised && strcmp(c->registry[j].name, r->name) == 0 &&
			    memcmp(c->registry[j].fp, r->fp, RK_FP_BYTES) == 0)
				x = &c->total.exposed[j];
		fprintf(f, "], \"compromised\": %s, \"exposed_chunks\": %" PRIu64 ", \"exposed_files\": %" PRIu64,
		        x ? "true" : "false", x ? x->chunks : 0, x ? x->files : 0);
		fprintf(f,
		        ", \"wrapped_files\": %" PRIu64 ", \"chunks\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"files\": %" PRIu64
		        ", \"unusable_files\": ",
		        r->data ? r->data->wrapped_files : 0, r->data ? r->data->chunks : 0, r->data ? r->data->bytes : 0,
		        r->data ? r->data->files : 0);
		if (r->data)
			jnames(f, r->data->names, r->data->nnames);
		else
			fputs("[]", f);
		fputc('}', f);
	}
	free(rows);
	fprintf(f, "%s],\n  \"problems\": [", nrows ? "\n  " : "");
	for (size_t i = 0; i < c->nproblems; i++) {
		const struct rk_cov_problem *p = &c->problems[i];
		fprintf(f, "%s\n    {\"kind\": \"%s\", \"path\": ", i ? "," : "", rk_cov_problem_name(p->kind));
		jstr(f, p->path);
		if (p->chunk >= 0)
			fprintf(f, ", \"chunk\": %" PRId64 ", \"offset\": %" PRId64 ", \"detail\": ", p->chunk, p->offset);
		else
			fprintf(f, ", \"chunk\": null, \"offset\": null, \"detail\": ");
		jstr(f, p->detail);
		fputc('}', f);
	}
	fprintf(f, "%s],\n  \"key_query\": ", c->nproblems ? "\n  " : "");
	if (!c->has_query) {
		fputs("null", f);
	} else {
		const struct rk_cov_query *q = &c->query;
		const struct rk_cov_regkey *reg = NULL;
		for (size_t i = 0; i < c->nregistry; i++)
			if (strcmp(c->registry[i].name, q->name) == 0)
				reg = &c->registry[i];
		fprintf(f, "{\n    \"name\": ");
		jstr(f, q->name);
		fprintf(f, ",\n    \"may_release\": %s,\n    \"registry\": \"%s\",\n    \"target_of\": [",
		        rk_fsck_may_release(c) ? "true" : "false", reg ? rk_keystate_name(reg->state) : "unregistered");
		size_t n = 0;
		for (size_t t = 0; t < c->ntables; t++)
			if (strcmp(c->tables[t].target, q->name) == 0) {
				fprintf(f, "%s", n++ ? ", " : "");
				jstr(f, c->tables[t].path);
			}
		fprintf(f,
		        "],\n    \"chunks\": %" PRIu64 ",\n    \"files\": %" PRIu64 ",\n    \"wrapped_files\": %" PRIu64
		        ",\n    \"old_header_copies\": %" PRIu64 ",\n    \"file_names\": ",
		        q->chunks, q->files, q->wrapped_files, q->old_copies);
		jnames(f, q->names, q->nnames);
		fprintf(f, ",\n    \"uncertain\": %" PRIu64 ",\n    \"answer\": ", uncertain_refs(c));
		char *line = NULL;
		size_t ll = 0;
		FILE *m = open_memstream(&line, &ll);
		if (m) {
			query_line(m, c);
			fclose(m);
		}
		if (line && ll && line[ll - 1] == '\n')
			line[ll - 1] = '\0';
		jstr(f, line ? line : "");
		free(line);
		fprintf(f, "\n  }");
	}
	fprintf(f, "\n}\n");
}

int rk_fsck_render(const struct rk_cov *c, const struct rk_fsck_opts *fo, char **out, size_t *len)
{
	char *buf = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&buf, &n);
	if (!f)
		return -ENOMEM;
	if (fo->json)
		json_report(f, c, fo);
	else if (c->has_query)
		query_line(f, c);
	else
		text_report(f, c);
	if (ferror(f)) {
		fclose(f);
		free(buf);
		return -ENOMEM;
	}
	if (fclose(f) != 0) {
		free(buf);
		return -ENOMEM;
	}
	*out = buf;
	*len = n;
	return 0;
}
