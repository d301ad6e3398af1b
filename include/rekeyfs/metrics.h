/* rekeyfs - Prometheus metrics: the text exposition format (version 0.0.4)
 * of a mount's state, rendered from the daemon's counters and its cached
 * coverage (coverage.h), and the merge of several mounts' expositions into
 * one (each family's HELP and TYPE once, its samples together). */
#ifndef REKEYFS_METRICS_H
#define REKEYFS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coverage.h"

/* What one mount's exposition is rendered from (strings may be NULL). */
struct rk_metrics_src {
	const char *version;    /* build: rekeyfs_build_info{version} */
	const char *mount;      /* label mount="..." on every series */
	const char *data_dir;   /* rekeyfs_mount_info{data_dir} */
	const char *key_dir;
	const char *sweep_state; /* idle, running, paused, finished, incomplete, off */
	uint64_t sweep_bytes_done, sweep_bytes_total;
	bool eta_known;
	double eta_seconds;
	uint64_t lazy_dropped, read_errors, write_errors;
	uint64_t chunks_rewritten_walker, chunks_rewritten_lazy;
	uint64_t j_commits, j_fsyncs, j_fsyncs_in_place, j_checkpoints;
	/* coverage: NULL when not known (no scan could run) */
	const struct rk_cov *cov;
	double cov_time;          /* unix time of the scan */
	double cov_scan_seconds;  /* how long it took */
};

/* The sweep states rekeyfs_sweep_state{state} enumerates (one is 1). */
extern const char *const rk_metrics_sweep_states[];

/* Escape a label value (backslash, double quote, newline) into out; returns
 * the length the escaped text needs (like snprintf; out always terminated
 * when outlen > 0). */
size_t rk_metrics_escape(const char *in, char *out, size_t outlen);

/* Render one mount's exposition (allocated, NUL-terminated). 0 or -ENOMEM. */
int rk_metrics_render(const struct rk_metrics_src *s, char **out, size_t *len);

/* Merge n expositions into one: the families in order of first
 * appearance, each with its first HELP and TYPE and then every text's
 * samples of it.  Comment lines other than HELP and TYPE are dropped.
 * 0, -ENOMEM, or -EINVAL for a sample line with no metric name. */
int rk_metrics_merge(const char *const *texts, size_t n, char **out, size_t *len);

#endif
