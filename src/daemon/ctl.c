/* rekeyfs daemon - the virtual .rekeyfs/ directory: status (JSON) and the
 * control file.  A command is written to .rekeyfs/control; its reply is read
 * back from the same open file. */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "encrypt.h"
#include "ioerr.h"
#include "rekeyfs/common.h"

int rkd_status_json(struct rkd_fs *fs, char **out, size_t *len)
{
	struct rkd_jbuf b = {0};
	char hex[2 * RK_FP_BYTES + 1];
	rkd_jb_printf(&b, "{\n  \"schema\": \"rekeyfs-status/1\",\n  \"version\": ");
	rkd_jb_str(&b, PACKAGE_VERSION);
	rkd_jb_printf(&b, ",\n  \"format\": %d,\n  \"pid\": %ld,\n  \"datadir\": ", RK_FORMAT_VERSION, (long)getpid());
	rkd_jb_str(&b, fs->datadir_real);
	rkd_jb_printf(&b, ",\n  \"keydir\": ");
	rkd_jb_str(&b, rk_keyring_dir(fs->kr));
	rkd_jb_printf(&b, ",\n  \"started\": %lld,\n  \"uptime_s\": %lld,\n  \"writeback_cache\": %s,\n",
	          (long long)fs->started, (long long)(time(NULL) - fs->started), fs->o.writeback ? "true" : "false");
	rk_rw_rdlock(&fs->policy_lock, RK_RANK_POLICY);
	rkd_jb_printf(&b, "  \"tables\": [");
	for (size_t i = 0; i < fs->dd->ntables; i++) {
		const struct rk_table *t = &fs->dd->tables[i];
		rkd_jb_printf(&b, "%s\n    {\"path\": ", i ? "," : "");
		rkd_jb_str(&b, t->path);
		rkd_jb_printf(&b, ", \"key\": ");
		rkd_jb_str(&b, t->key);
		rkd_jb_printf(&b, ", \"chunk_kb\": %u, \"compression\": \"%s\"}", t->chunk_size / 1024, rk_comp_name(t->comp));
	}
	rkd_jb_printf(&b, "\n  ],\n  \"keys\": [");
	for (size_t i = 0; i < fs->dd->nkeys; i++) {
		const struct rk_regent *e = &fs->dd->keys[i];
		rk_hex(hex, e->fp, RK_FP_BYTES);
		rkd_jb_printf(&b, "%s\n    {\"name\": ", i ? "," : "");
		rkd_jb_str(&b, e->name);
		rkd_jb_printf(&b, ", \"cipher\": \"%s\", \"bits\": %u, \"fingerprint\": \"%s\", \"state\": \"%s\"}",
		          rk_cipher_name(e->cipher), e->bits, hex, rk_keystate_name(e->state));
	}
	rk_rw_unlock(&fs->policy_lock);
	rkd_jb_printf(&b, "\n  ],\n");
	rkd_walker_json(fs, &b);
	rkd_ioerr_json(fs, &b);
	rkd_encrypt_json(fs, &b);
	rkd_metrics_status_json(&b);
	struct rk_journal_stats js;
	rk_journal_get_stats(fs->j, &js);
	rkd_jb_printf(&b,
	          "  \"journal\": {\"records\": %" PRIu64 ", \"commits\": %" PRIu64 ", \"applied\": %" PRIu64
	          ", \"checkpoints\": %" PRIu64 ", \"pending_bytes\": %" PRIu64 ", \"journal_bytes\": %" PRIu64
	          ", \"waits\": %" PRIu64 ", \"fsyncs\": %" PRIu64 ", \"fsyncs_in_place\": %" PRIu64
	          ", \"background_commits\": %" PRIu64 ", \"last_error\": ",
	          js.records, js.commits, js.applied, js.checkpoints, js.pending_bytes, js.journal_bytes, js.waits,
	          js.fsyncs, js.fsyncs_in_place, js.background_commits);
	rkd_jb_str(&b, js.last_error ? strerror(-js.last_error) : "");
	rkd_jb_printf(&b,
	          "},\n  \"io\": {\"reads\": %" PRIu64 ", \"writes\": %" PRIu64 ", \"bytes_read\": %" PRIu64
	          ", \"bytes_written\": %" PRIu64 ", \"read_errors\": %" PRIu64 ", \"write_errors\": %" PRIu64 "}\n}\n",
	          (uint64_t)atomic_load(&fs->st.reads), (uint64_t)atomic_load(&fs->st.writes),
	          (uint64_t)atomic_load(&fs->st.bytes_read), (uint64_t)atomic_load(&fs->st.bytes_written),
	          (uint64_t)atomic_load(&fs->st.read_errors), (uint64_t)atomic_load(&fs->st.write_errors));
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*out = b.p;
	*len = b.len;
	return 0;
}

/* alter TABLE KEY [CHUNK_KB|-] [COMPRESSION|-] */
/* compromised NAME / uncompromised NAME: the registry records it (rekeyctl mark-compromised) */
static int ctl_compromised(struct rkd_fs *fs, char *args, bool on, char **out, size_t *len)
{
	char *save = NULL, *name = strtok_r(args, " \t", &save);
	if (!name || strtok_r(NULL, " \t", &save) || rk_key_name_check(name) < 0)
		return rkd_reply(out, len, -EINVAL, "usage: %s NAME", on ? "compromised" : "uncompromised");
	rk_rw_wrlock(&fs->policy_lock, RK_RANK_POLICY);
	int ret = rk_registry_mark_compromised(fs->dd, name, on);
	rk_rw_unlock(&fs->policy_lock);
	if (ret == -ENOENT)
		return rkd_reply(out, len, ret, "key '%s' is not in this data directory's registry", name);
	if (ret < 0)
		return rkd_reply(out, len, ret, "cannot save the registry: %s", rk_strerror(ret));
	if (ret == 1)
		return rkd_reply(out, len, 0, "key '%s' is %s marked compromised", name, on ? "already" : "not");
	rk_info("key '%s' %s", name, on ? "marked compromised" : "no longer marked compromised");
	return rkd_reply(out, len, 0,
	                 on ? "key '%s' marked compromised: data keys it ever wrapped count as exposed until a reseal "
	                      "(rotate without --rewrap); see rekeyctl fsck"
	                    : "key '%s' is no longer marked compromised",
	                 name);
}

static int ctl_alter(struct rkd_fs *fs, char *args, char **out, size_t *len)
{
	char *save = NULL;
	char *table = strtok_r(args, " \t", &save);
	char *keyname = strtok_r(NULL, " \t", &save);
	char *ckb = strtok_r(NULL, " \t", &save);
	char *cz = strtok_r(NULL, " \t", &save);
	struct rk_key *key = NULL;
	int comp = -1;
	uint32_t chunk = 0;
	if (!table || !keyname)
		return rkd_reply(out, len, -EINVAL, "usage: alter TABLE KEY|- [CHUNK_KB|-] [snappy|none|-]");
	if (ckb && strcmp(ckb, "-") != 0) {
		/* range-checked before the multiplication: no wrap-around */
		uint64_t kb;
		if (rk_parse_u64(ckb, RK_CHUNK_MAX / 1024, &kb) < 0 || kb < RK_CHUNK_MIN / 1024 || (kb & (kb - 1)))
			return rkd_reply(out, len, -EINVAL, "chunk size '%s': use a power of two from %u to %u KiB (plain decimal)",
			             ckb, RK_CHUNK_MIN / 1024, RK_CHUNK_MAX / 1024);
		chunk = (uint32_t)kb * 1024;
	}
	if (strtok_r(NULL, " \t", &save))
		return rkd_reply(out, len, -EINVAL, "usage: alter TABLE KEY|- [CHUNK_KB|-] [snappy|none|-] (too many arguments)");
	if (cz && strcmp(cz, "-") != 0) {
		enum rk_comp z;
		if (rk_comp_parse(cz, &z) < 0)
			return rkd_reply(out, len, -EINVAL, "compression %s: use snappy or none", cz);
		comp = (int)z;
	}
	bool setkey = strcmp(keyname, "-") != 0;
	if (setkey) {
		rk_keyring_reload(fs->kr);
		int r = rk_keyring_get(fs->kr, keyname, &key);
		if (r < 0)
			return rkd_reply(out, len, r, "key '%s' cannot be used: %s (key directory %s)", keyname, rk_strerror(r),
			             rk_keyring_dir(fs->kr));
	}
	rk_rw_wrlock(&fs->policy_lock, RK_RANK_POLICY);
	int r = 0;
	if (setkey)
		r = rk_registry_add(fs->dd, key);
	if (r == 0)
		r = rk_policy_set(fs->dd, table, setkey ? keyname : NULL, chunk, comp);
	if (r == 0 && setkey)
		r = rk_registry_save(fs->dd);
	if (r == 0)
		r = rk_policy_save(fs->dd);
	char tpath[RK_TABLE_PATH_MAX + 128] = "", tname[RK_TABLE_PATH_MAX] = "";
	if (r == 0) {
		const struct rk_table *t = rk_policy_lookup(fs->dd, table);
		snprintf(tname, sizeof(tname), "%s", t->path);
		snprintf(tpath, sizeof(tpath), "%s key=%s chunk_kb=%u compression=%s", t->path, t->key, t->chunk_size / 1024,
		         rk_comp_name(t->comp));
	}
	rk_rw_unlock(&fs->policy_lock);
	if (r < 0)
		return rkd_reply(out, len, r, "alter %s failed: %s", table, rk_strerror(r));
	atomic_fetch_add(&fs->policy_gen, 1);
	rk_info("table %s altered: %s", table, tpath);
	/* a new target key while a sweep runs: a sweep of the table is queued after it */
	char how[160] = "";
	if (setkey)
		rkd_walker_altered(fs, tname, how, sizeof(how));
	return rkd_reply(out, len, 0, "table %s%s%s", tpath, how[0] ? "; a sweep is running: " : "", how);
}

int rkd_control(struct rkd_fs *fs, const char *cmdline, char **out, size_t *len)
{
	char buf[4096];
	snprintf(buf, sizeof(buf), "%s", cmdline);
	/* one command per write: a second line is refused, not run as arguments */
	char *nl = strchr(buf, '\n');
	if (nl && nl[1] != '\0')
		return rkd_reply(out, len, -EINVAL, "one command per write, please");
	size_t n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	char *save = NULL;
	char *cmd = strtok_r(buf, " \t", &save);
	char *rest = save ? save : (char *)"";
	if (!cmd)
		return rkd_reply(out, len, -EINVAL, "empty command");
	if (strcmp(cmd, "alter") == 0)
		return ctl_alter(fs, rest, out, len);
	if (strcmp(cmd, "reload-keys") == 0) {
		rk_keyring_reload(fs->kr);
		return rkd_reply(out, len, 0, "key directory will be re-read on next use");
	}
	if (strcmp(cmd, "compromised") == 0 || strcmp(cmd, "uncompromised") == 0)
		return ctl_compromised(fs, rest, strcmp(cmd, "compromised") == 0, out, len);
	if (strcmp(cmd, "ping") == 0)
		return rkd_reply(out, len, 0, "pong pid %ld", (long)getpid());
	if (strcmp(cmd, "rekey") == 0 || strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0 ||
	    strcmp(cmd, "rate") == 0 || strcmp(cmd, "release") == 0 || strcmp(cmd, "scan") == 0 ||
	    strcmp(cmd, "rewrap") == 0 || strcmp(cmd, "rewrap-check") == 0)
		return rkd_walker_control(fs, cmd, rest, out, len);
	if (strcmp(cmd, "encrypt") == 0 || strcmp(cmd, "encrypt-cancel") == 0)
		return rkd_encrypt_control(fs, cmd, rest, out, len);
	if (strcmp(cmd, "fsck") == 0 || strcmp(cmd, "fsck-progress") == 0)
		return rkd_fsck_control(fs, cmd, rest, out, len);
	if (strcmp(cmd, "metrics-refresh") == 0)
		return rkd_metrics_control(fs, cmd, rest, out, len);
	return rkd_reply(out, len, -EINVAL,
	             "unknown command '%s' (known: alter, rekey, pause, resume, rate, release, compromised, uncompromised, encrypt, encrypt-cancel, fsck, metrics-refresh, reload-keys, ping)",
	             cmd);
}
