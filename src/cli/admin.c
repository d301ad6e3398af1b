/* rekeyctl - the data directory commands: createkey, init, alter, keys,
 * encrypt, cat. */
#include "config.h"

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/convert.h"
#include "rekeyfs/coverage.h"
#include "rekeyfs/fsck.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/format.h"
#include "rekeyfs/journal.h"
#include "rekeyfs/keys.h"
#include "rekeyfs/walk.h"
#include "cli.h"

/* ---- createkey ------------------------------------------------------------------ */
int rkc_cmd_createkey(int argc, char **argv)
{
	const char *keydir = NULL, *uri = NULL;
	char hex[2 * RK_FP_BYTES + 1];
	uint8_t fp[RK_FP_BYTES];
	int c, ret;
	static const struct option lo[] = {
		{"keydir", required_argument, NULL, 'd'}, {"pkcs11", required_argument, NULL, 'P'}, {0, 0, 0, 0}};
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:d:", lo, NULL)) != -1) {
		if (c == 'd')
			keydir = optarg;
		else if (c == 'P')
			uri = optarg;
		else
			return rkc_opt_refused("createkey", c, argv, lo);
	}
	if (uri) {
		/* a token key: generated in the token, the entry names it */
		if (argc - optind != 1) {
			rk_err("usage: rekeyctl createkey [-d KEYDIR] --pkcs11 'pkcs11:token=T;object=LABEL;type=secret-key"
			       "?module-path=/ABS/MODULE.so&pin-source=file:/ABS/PINFILE' NAME");
			return RKC_USAGE;
		}
		keydir = rk_keydir_resolve(keydir);
		ret = rk_key_create_pkcs11(keydir, uri, argv[optind], fp);
		if (ret == -EINVAL)
			return RKC_USAGE;
		if (ret < 0)
			return ret;
		rk_hex(hex, fp, RK_FP_BYTES);
		printf("created key %s (AES/GCM/NoPadding, 256 bits, in a PKCS#11 token) in %s, fingerprint %s\n",
		       rk_esc(argv[optind]), rk_esc(keydir), hex);
		return 0;
	}
	if (argc - optind != 3) {
		rk_err("usage: rekeyctl createkey [-d KEYDIR] CIPHER STRENGTH NAME   (e.g. AES/GCM/NoPadding 256 new_key)");
		return RKC_USAGE;
	}
	const char *cipher = argv[optind], *strength = argv[optind + 1], *name = argv[optind + 2];
	uint64_t bits64;
	if (rk_parse_u64(strength, 4096, &bits64) < 0) {
		rk_err("strength '%s' is not a number of bits (a plain decimal such as 256)", strength);
		return RKC_USAGE;
	}
	unsigned long bits = (unsigned long)bits64;
	keydir = rk_keydir_resolve(keydir);
	ret = rk_key_create(keydir, cipher, (unsigned)bits, name, fp);
	if (ret == -EINVAL)
		return RKC_USAGE; /* refused cipher, strength or name: the message says why */
	if (ret < 0)
		return ret;
	rk_hex(hex, fp, RK_FP_BYTES);
	printf("created key %s (%s, %lu bits) in %s, fingerprint %s\n", rk_esc(name), rk_esc(cipher), bits, rk_esc(keydir),
	       hex);
	return 0;
}

/* ---- init ------------------------------------------------------------------------------ */
int rkc_cmd_init(int argc, char **argv)
{
	static const char u[] = "rekeyctl init [-d KEYDIR] --key NAME [--chunk-kb N] [--compression snappy|none] DATADIR";
	struct rkc_opts o = {0};
	struct rk_key *key = NULL;
	int ret = rkc_parse_common(argc, argv, &o, "init", "dkcz");
	if (ret < 0)
		return ret;
	if (!o.key || argc - optind != 1) {
		rk_err("usage: %s", u);
		return RKC_USAGE;
	}
	const char *dir = argv[optind];
	ret = rk_key_load(o.keydir, o.key, &key);
	if (ret < 0) {
		if (ret == -ENOKEY)
			rk_err("key '%s' not found in %s; create it first: rekeyctl createkey -d %s AES/GCM/NoPadding 256 %s",
			       o.key, o.keydir, o.keydir, o.key);
		return ret;
	}
	uint32_t cs = o.chunk_kb ? o.chunk_kb * 1024 : RK_CHUNK_DEFAULT;
	ret = rk_datadir_init(dir, key, cs, o.comp >= 0 ? (enum rk_comp)o.comp : RK_COMP_SNAPPY);
	if (ret == 0)
		printf("initialised %s: root table / under key %s, %u KiB chunks, %s compression\n", rk_esc(dir), rk_esc(o.key),
		       cs / 1024,
		       rk_comp_name(o.comp >= 0 ? (enum rk_comp)o.comp : RK_COMP_SNAPPY));
	rk_key_free(key);
	return ret;
}

/* ---- alter ------------------------------------------------------------------------------ */
int rkc_cmd_alter(int argc, char **argv)
{
	static const char u[] = "rekeyctl alter [-d KEYDIR] DATADIR[/TABLE] --key NAME [--chunk-kb N] [--compression C]";
	struct rkc_opts o = {0};
	struct rk_datadir *dd = NULL;
	struct rk_key *key = NULL;
	char *root = NULL, *rel = NULL;
	int ret = rkc_parse_common(argc, argv, &o, "alter", "dkcz");
	if (ret < 0)
		return ret;
	if (argc - optind != 1 || (!o.key && !o.chunk_kb && o.comp < 0)) {
		rk_err("usage: %s", u);
		return RKC_USAGE;
	}
	const char *target = argv[optind];
	if (rkc_is_mount(target))
		return rkc_online_alter(target, o.key, o.chunk_kb, o.comp);
	ret = rk_datadir_find(target, &root, &rel);
	if (ret < 0) {
		rk_err("%s is not inside a rekeyfs data directory or mount (no .rekeyfs found above it)", target);
		goto out;
	}
	ret = rkc_open_offline(root, RK_DD_EXCLUSIVE, NULL, &dd);
	if (ret < 0)
		goto out;
	if (o.key) {
		ret = rk_key_load(o.keydir, o.key, &key);
		if (ret < 0) {
			if (ret == -ENOKEY)
				rk_err("key '%s' not found in %s", o.key, o.keydir);
			goto out;
		}
		ret = rk_registry_add(dd, key);
		if (ret < 0)
			goto out;
	}
	ret = rk_policy_set(dd, rel, o.key, o.chunk_kb * 1024, o.comp);
	if (ret < 0)
		goto out;
	ret = rk_registry_save(dd);
	if (ret == 0)
		ret = rk_policy_save(dd);
	if (ret == 0) {
		const struct rk_table *t = rk_policy_lookup(dd, rel);
		printf("table %s of %s: key=%s chunk_kb=%u compression=%s\n", rk_esc(t->path), rk_esc(root), rk_esc(t->key),
		       t->chunk_size / 1024,
		       rk_comp_name(t->comp));
		if (o.key)
			printf("new writes are sealed under %s; existing chunks keep their key until rekeyed "
			       "(rekeyctl rekey, or the walker of a mount)\n", rk_esc(o.key));
	}
out:
	rk_key_free(key);
	rk_datadir_close(dd);
	free(root);
	free(rel);
	return ret;
}

/* ---- keys -------------------------------------------------------------------------------- */
static const char *keyfile_status(const char *keydir, const char *name, const uint8_t *fp)
{
	struct rk_key *k;
	rk_log_mute(true); /* the status column says it */
	int r = rk_key_load(keydir, name, &k);
	rk_log_mute(false);
	if (r == -ENOKEY)
		return "missing";
	if (r == -EPERM)
		return "refused";
	if (r < 0)
		return "unreadable";
	const char *s = fp && memcmp(fp, k->fp, RK_FP_BYTES) != 0 ? "CHANGED" : "ok";
	rk_key_free(k);
	return s;
}

/* keys --json: one key of the key directory (k NULL: refused, r why) */
static void keyfile_json(const char *name, const struct rk_key *k, int r, bool first)
{
	char hex[2 * RK_FP_BYTES + 1];
	printf("%s\n    {\"name\": ", first ? "" : ",");
	rkc_json_put_str(stdout, name);
	if (k) {
		rk_hex(hex, k->fp, RK_FP_BYTES);
		char prov[2200];
		printf(", \"cipher\": \"%s\", \"bits\": %u, \"fingerprint\": \"%s\", \"key_file\": \"ok\", "
		       "\"provider\": ", rk_cipher_name(k->cipher), k->bits, hex);
		rkc_json_put_str(stdout, rk_key_provider(k, prov, sizeof(prov)));
		printf("}");
	} else {
		printf(", \"cipher\": null, \"bits\": null, \"fingerprint\": null, \"key_file\": ");
		rkc_json_put_str(stdout, r == -EPERM ? "refused" : rk_strerror(r));
		printf("}");
	}
}

/* The two layers of key `name` in a coverage result: files whose headers
 * wrap a data key under it, and (marked compromised) the data sealed under
 * data keys it ever wrapped. */
struct keylayers {
	uint64_t wrapped_files;
	bool compromised;
	struct rk_cov_exposure exposed;
};

static struct keylayers key_layers(const struct rk_cov *cov, const char *name)
{
	struct keylayers l = {0};
	for (size_t j = 0; j < cov->total.nkeys; j++)
		if (strcmp(cov->total.keys[j].name, name) == 0)
			l.wrapped_files += cov->total.keys[j].wrapped_files;
	for (size_t r = 0; r < cov->nregistry; r++)
		if (strcmp(cov->registry[r].name, name) == 0 && cov->registry[r].compromised) {
			l.compromised = true;
			if (cov->total.exposed) {
				l.exposed.chunks += cov->total.exposed[r].chunks;
				l.exposed.files += cov->total.exposed[r].files;
			}
		}
	return l;
}

static void datakey_json(const char *name, const char *cipher, int bits, const uint8_t *fp, const char *state,
                         const char *file, uint64_t chunks, uint64_t files, const struct rk_datadir *dd,
                         const struct rk_cov *cov, bool first)
{
	struct keylayers l = key_layers(cov, name);
	char hex[2 * RK_FP_BYTES + 1];
	rk_hex(hex, fp, RK_FP_BYTES);
	printf("%s\n    {\"name\": ", first ? "" : ",");
	rkc_json_put_str(stdout, name);
	printf(", \"cipher\": ");
	rkc_json_put_str(stdout, cipher);
	if (bits >= 0)
		printf(", \"bits\": %d", bits);
	else
		printf(", \"bits\": null");
	printf(", \"fingerprint\": \"%s\", \"state\": \"%s\", \"key_file\": ", hex, state);
	rkc_json_put_str(stdout, file);
	printf(", \"chunks\": %" PRIu64 ", \"files\": %" PRIu64 ", \"target_of\": [", chunks, files);
	bool t1 = true;
	for (size_t t = 0; t < dd->ntables; t++)
		if (strcmp(dd->tables[t].key, name) == 0) {
			printf("%s", t1 ? "" : ", ");
			rkc_json_put_str(stdout, dd->tables[t].path);
			t1 = false;
		}
	printf("], \"wrapped_files\": %" PRIu64 ", \"compromised\": %s, \"exposed_chunks\": %" PRIu64
	       ", \"exposed_files\": %" PRIu64 "}",
	       l.wrapped_files, l.compromised ? "true" : "false", l.exposed.chunks, l.exposed.files);
}

/* keys without DATADIR: the key files of the key directory */
static int keys_of_keydir(const struct rkc_opts *o)
{
	char hex[2 * RK_FP_BYTES + 1];
	int ret;
	char **names;
	size_t n;
	ret = rk_keydir_list(o->keydir, &names, &n);
	if (ret < 0) {
		rk_err("cannot list key directory %s: %s", o->keydir, strerror(-ret));
		return ret;
	}
	if (o->json) {
		printf("{\n  ");
		rkc_fleet_fields(stdout, NULL, NULL);
		printf(",\n  \"schema\": \"rekeyfs-keys/1\", \"key_dir\": ");
		rkc_json_put_str(stdout, o->keydir);
		printf(",\n  \"keys\": [");
	} else {
		printf("%-20s %-28s %5s  %-32s  %s\n", "KEY", "CIPHER", "BITS", "FINGERPRINT", "KEY FILE");
	}
	for (size_t i = 0; i < n; i++) {
		struct rk_key *k;
		int lvl = rk_log_get_level();
		rk_log_set_level(RK_LOG_ERR); /* say why a key file is refused */
		int r = rk_key_load(o->keydir, names[i], &k);
		rk_log_set_level(lvl);
		if (o->json) {
			keyfile_json(names[i], r == 0 ? k : NULL, r, i == 0);
			if (r == 0)
				rk_key_free(k);
		} else if (r == 0) {
			char prov[2200];
			rk_hex(hex, k->fp, RK_FP_BYTES);
			printf("%-20s %-28s %5u  %-32s  ok (%s)\n", rk_esc(k->name), rk_cipher_name(k->cipher), k->bits, hex,
			       rk_esc(rk_key_provider(k, prov, sizeof(prov))));
			rk_key_free(k);
		} else {
			printf("%-20s %-28s %5s  %-32s  %s\n", rk_esc(names[i]), "?", "?", "?",
			       r == -EPERM ? "refused: not a private key file of this user (chmod 600; see the "
			                     "message on stderr)"
			                   : rk_strerror(r));
		}
		free(names[i]);
	}
	free(names);
	if (o->json)
		printf("%s]\n}\n", n ? "\n  " : "");
	return 0;
}

int rkc_cmd_keys(int argc, char **argv)
{
	static const char u[] = "rekeyctl keys [-d KEYDIR] [--json] [DATADIR]";
	struct rkc_opts o = {0};
	struct rk_datadir *dd = NULL;
	struct rk_cov *cov = NULL;
	char hex[2 * RK_FP_BYTES + 1];
	int ret = rkc_parse_common(argc, argv, &o, "keys", "dj");
	if (ret < 0)
		return ret;
	if (argc - optind > 1) {
		rk_err("usage: %s", u);
		return RKC_USAGE;
	}
	if (argc - optind == 0)
		return keys_of_keydir(&o);
	const char *dir = argv[optind];
	ret = rkc_open_offline(dir, RK_DD_SHARED, NULL, &dd);
	if (ret < 0)
		return ret;
	ret = rk_coverage_scan(dd, NULL, &cov);
	if (ret < 0) {
		rk_err("%s: coverage scan failed: %s", dir, rk_strerror(ret));
		goto out;
	}
	if (o.json) {
		char *real = realpath(dir, NULL);
		printf("{\n  ");
		rkc_fleet_fields(stdout, real ? real : dir, NULL);
		free(real);
		printf(",\n  \"schema\": \"rekeyfs-keys/1\", \"key_dir\": ");
		rkc_json_put_str(stdout, o.keydir);
		printf(",\n  \"keys\": [");
	} else {
		printf("%-20s %-28s %5s  %-32s  %-12s %-13s %10s %8s  %s\n", "KEY", "CIPHER", "BITS", "FINGERPRINT", "STATE",
		       "KEY FILE", "CHUNKS", "FILES", "TARGET OF");
	}
	bool first = true;
	for (size_t i = 0; i < dd->nkeys; i++) {
		const struct rk_regent *e = &dd->keys[i];
		uint64_t chunks = 0, files = 0;
		for (size_t j = 0; j < cov->total.nkeys; j++)
			if (strcmp(cov->total.keys[j].name, e->name) == 0) {
				chunks += cov->total.keys[j].chunks;
				files += cov->total.keys[j].files;
			}
		char targets[256] = "";
		size_t tl = 0;
		for (size_t t = 0; t < dd->ntables; t++)
			if (strcmp(dd->tables[t].key, e->name) == 0 && tl < sizeof(targets) - 1)
				tl += (size_t)snprintf(targets + tl, sizeof(targets) - tl, "%s%s", tl ? "," : "", dd->tables[t].path);
		const char *kfs = e->state == RK_KS_RELEASED ? "-" : keyfile_status(o.keydir, e->name, e->fp);
		if (o.json) {
			datakey_json(e->name, rk_cipher_name(e->cipher), (int)e->bits, e->fp, rk_keystate_name(e->state), kfs,
			             chunks, files, dd, cov, first);
			first = false;
			continue;
		}
		rk_hex(hex, e->fp, RK_FP_BYTES);
		printf("%-20s %-28s %5u  %-32s  %-12s %-13s %10" PRIu64 " %8" PRIu64 "  %s\n", rk_esc(e->name),
		       rk_cipher_name(e->cipher), e->bits, hex, rk_keystate_name(e->state),
		       e->state == RK_KS_RELEASED ? "-" : keyfile_status(o.keydir, e->name, e->fp), chunks, files,
		       targets[0] ? rk_esc(targets) : "-");
	}
	/* keys named by data but unknown to the registry (restored backups) */
	for (size_t j = 0; j < cov->total.nkeys; j++) {
		if (rk_registry_find(dd, cov->total.keys[j].name))
			continue;
		if (o.json) {
			datakey_json(cov->total.keys[j].name, NULL, -1, cov->total.keys[j].fp, "unregistered",
			             keyfile_status(o.keydir, cov->total.keys[j].name, cov->total.keys[j].fp),
			             cov->total.keys[j].chunks, cov->total.keys[j].files, dd, cov, first);
			first = false;
			continue;
		}
		rk_hex(hex, cov->total.keys[j].fp, RK_FP_BYTES);
		printf("%-20s %-28s %5s  %-32s  %-12s %-13s %10" PRIu64 " %8" PRIu64 "  %s\n", rk_esc(cov->total.keys[j].name), "?",
		       "?", hex, "unregistered", keyfile_status(o.keydir, cov->total.keys[j].name, cov->total.keys[j].fp),
		       cov->total.keys[j].chunks, cov->total.keys[j].files, "-");
	}
	if (o.json) {
		printf("%s],\n  \"files\": %" PRIu64 ", \"chunk_files\": %" PRIu64 ", \"plain_files\": %" PRIu64
		       ", \"unreadable_files\": %" PRIu64 ", \"chunks\": %" PRIu64 ", \"chunks_on_target\": %" PRIu64 "\n}\n",
		       first ? "" : "\n  ", cov->total.files, cov->total.chunk_files, cov->total.plain_files,
		       cov->total.corrupt_files, cov->total.chunks, cov->total.chunks_on_target);
		goto out;
	}
	printf("\n%" PRIu64 " files: %" PRIu64 " chunk files, %" PRIu64 " plain, %" PRIu64 " unreadable; %" PRIu64
	       " chunks, %.1f%% on their table's target key\n",
	       cov->total.files, cov->total.chunk_files, cov->total.plain_files, cov->total.corrupt_files,
	       cov->total.chunks, cov->total.chunks ? 100.0 * (double)cov->total.chunks_on_target / (double)cov->total.chunks : 100.0);
	rk_fsck_exposure_text(stdout, cov, &cov->total, "");
out:
	rk_coverage_free(cov);
	rk_datadir_close(dd);
	return ret;
}

/* ---- encrypt ------------------------------------------------------------------------------ */
struct enc_state {
	struct rk_datadir *dd;
	struct rk_keyring *kr;
	uint64_t converted, skipped, already, failed;
	bool quiet;
};

static int enc_visit(const struct rk_walk_ent *e, void *arg)
{
	struct enc_state *s = arg;
	if (rk_is_tmp_name(e->name)) {
		if (rk_tmp_cleanup(e->dirfd, e->name) == 1 && !s->quiet)
			printf("removed %s (temporary of an interrupted run)\n", rk_esc(e->rel));
		return 0;
	}
	if (!S_ISREG(e->st->st_mode))
		return 0;
	int r = rk_convert_file(s->dd, s->kr, e->dirfd, e->name, e->rel);
	if (r == 0) {
		s->converted++;
		if (!s->quiet)
			printf("encrypted %s (%jd bytes)\n", rk_esc(e->rel), (intmax_t)e->st->st_size);
	} else if (r == 1) {
		s->already++;
	} else if (r == 2) {
		s->skipped++;
	} else {
		s->failed++;
		if (r == -ENOKEY || r == -EKEYREJECTED || r == -EPERM || r == -ENOSPC)
			return r; /* the same will fail for every file */
	}
	return 0;
}

int rkc_cmd_encrypt(int argc, char **argv)
{
	static const char u[] = "rekeyctl encrypt [-d KEYDIR] [-q] DATADIR [PATH...]  (online: rekeyctl encrypt [--wait] "
	                        "MOUNT [PATH...])";
	struct rkc_opts o = {0};
	struct rk_keyring *kr = NULL;
	struct enc_state s = {0};
	/* a mount (the first operand) or --wait/--cancel: the daemon converts */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--wait") == 0 || strcmp(argv[i], "--cancel") == 0)
			return rkc_cmd_encrypt_online(argc, argv);
		if (strcmp(argv[i], "-d") == 0 || strcmp(argv[i], "--keydir") == 0) {
			i++;
			continue;
		}
		if (argv[i][0] != '-') {
			if (rkc_is_mount(argv[i]))
				return rkc_cmd_encrypt_online(argc, argv);
			break;
		}
	}
	int ret = rkc_parse_common(argc, argv, &o, "encrypt", "dq");
	if (ret < 0)
		return ret;
	if (argc - optind < 1) {
		rk_err("usage: %s", u);
		return RKC_USAGE;
	}
	const char *dir = argv[optind];
	ret = rk_keyring_new(o.keydir, &kr);
	if (ret < 0)
		return ret;
	ret = rkc_open_offline(dir, RK_DD_EXCLUSIVE, kr, &s.dd);
	if (ret < 0)
		goto out;
	ret = rk_registry_verify(s.dd, kr);
	if (ret < 0)
		goto out;
	s.kr = kr;
	s.quiet = o.quiet;
	if (argc - optind == 1) {
		ret = rk_walk(s.dd->dirfd, "/", enc_visit, &s);
	} else {
		for (int i = optind + 1; i < argc && ret >= 0; i++) {
			char *root = NULL, *rel = NULL;
			char full[4096];
			/* PATH is relative to DATADIR unless absolute */
			if (argv[i][0] == '/')
				snprintf(full, sizeof(full), "%s", argv[i]);
			else
				snprintf(full, sizeof(full), "%s/%s", dir, argv[i]);
			ret = rk_datadir_find(full, &root, &rel);
			if (ret < 0) {
				rk_err("%s: not inside data directory %s", argv[i], dir);
				break;
			}
			struct stat st;
			if (fstatat(s.dd->dirfd, rel + 1, &st, AT_SYMLINK_NOFOLLOW) < 0) {
				ret = -errno;
				rk_err("%s: %s", full, strerror(errno));
			} else if (S_ISDIR(st.st_mode)) {
				ret = rk_walk(s.dd->dirfd, rel, enc_visit, &s);
			} else {
				char *slash = strrchr(rel, '/');
				char parent[4096];
				snprintf(parent, sizeof(parent), "%.*s", (int)(slash - rel), rel);
				int pfd = parent[0] ? openat(s.dd->dirfd, parent + 1, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
				                    : openat(s.dd->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
				if (pfd < 0) {
					ret = -errno;
				} else {
					struct rk_walk_ent e = {.rel = rel, .dirfd = pfd, .name = slash + 1, .st = &st};
					ret = enc_visit(&e, &s);
					close(pfd);
				}
			}
			free(root);
			free(rel);
		}
	}
	if (!o.quiet || s.failed)
		printf("%" PRIu64 " encrypted, %" PRIu64 " already chunk files, %" PRIu64 " skipped, %" PRIu64 " failed\n",
		       s.converted, s.already, s.skipped, s.failed);
	if (ret == 0 && s.failed)
		ret = -EIO;
out:
	rk_datadir_close(s.dd);
	rk_keyring_free(kr);
	return ret;
}

/* ---- cat ----------------------------------------------------------------------------------- */
int rkc_cmd_cat(int argc, char **argv)
{
	static const char u[] = "rekeyctl cat [-d KEYDIR] FILE";
	struct rkc_opts o = {0};
	struct rk_keyring *kr = NULL;
	struct rk_cf *cf = NULL;
	uint8_t *buf = NULL;
	int fd = -1;
	int ret = rkc_parse_common(argc, argv, &o, "cat", "d");
	if (ret < 0)
		return ret;
	if (argc - optind != 1) {
		rk_err("usage: %s", u);
		return RKC_USAGE;
	}
	const char *path = argv[optind];
	/* inside a data directory whose journal holds chunk writes from a crash,
	 * the file on disk may be older than what was acknowledged: refuse.  cat
	 * only reads (a restored backup is never replayed as a side effect). */
	char *root = NULL, *rel = NULL;
	if (rk_datadir_find(path, &root, &rel) == 0) {
		char jpath[4096];
		struct stat jst;
		snprintf(jpath, sizeof(jpath), "%s/%s/%s", root, RK_STATE_DIR, RK_JOURNAL_NAME);
		if (lstat(jpath, &jst) == 0 && (jst.st_size > 0 || !S_ISREG(jst.st_mode))) {
			rk_err("%s: the data directory %s has a pending journal (%s, %jd bytes) from an interrupted daemon "
			       "or tool; its files may be older than what was written. cat changes nothing: replay the "
			       "journal first (mount the data directory, or run rekeyctl fsck %s), then read again",
			       path, root, jpath, (intmax_t)jst.st_size, root);
			free(root);
			free(rel);
			return -EUCLEAN;
		}
	}
	free(root);
	free(rel);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		rk_err("cannot open %s: %s", path, strerror(errno));
		return ret;
	}
	ret = rk_cf_probe(fd);
	if (ret < 0)
		goto out;
	size_t bufsz = 1 << 20;
	buf = malloc(bufsz);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	if (ret == 0) {
		/* a plain file passes through untouched */
		for (off_t off = 0;;) {
			ssize_t n = rk_pread_full(fd, buf, bufsz, off);
			if (n < 0) {
				ret = (int)n;
				goto out;
			}
			if (n == 0)
				break;
			if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n) {
				ret = -EIO;
				goto out;
			}
			off += n;
		}
		ret = 0;
		goto out;
	}
	ret = rk_keyring_new(o.keydir, &kr);
	if (ret < 0)
		goto out;
	{
		/* keys released in the file's data directory stay released */
		char *r2 = NULL, *l2 = NULL;
		struct rk_datadir *dd2 = NULL;
		if (rk_datadir_find(path, &r2, &l2) == 0 && rk_datadir_open(r2, RK_DD_NOLOCK, &dd2) == 0) {
			rk_registry_apply_released(dd2, kr);
			rk_datadir_close(dd2);
		}
		free(r2);
		free(l2);
	}
	ret = rk_cf_open(fd, path, kr, false, &cf);
	if (ret < 0) {
		if (ret != -EUCLEAN && ret != -EPROTONOSUPPORT)
			rk_err("%s: %s", path, rk_strerror(ret));
		goto out;
	}
	uint64_t size = rk_cf_size(cf);
	/* chunk by chunk: everything before a bad chunk is printed, then the error */
	size_t step = rk_cf_chunk_size(cf);
	for (uint64_t off = 0; off < size;) {
		ssize_t n = rk_cf_pread(cf, buf, RK_MIN(step, bufsz), off);
		if (n < 0) {
			ret = (int)n;
			rk_err("%s: cannot decrypt at offset %" PRIu64 " (see the message above); output stopped there", path,
			       off);
			goto out;
		}
		if (n == 0)
			break;
		if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n) {
			ret = -EIO;
			goto out;
		}
		off += (uint64_t)n;
	}
	ret = 0;
out:
	if (fflush(stdout) != 0 && ret == 0)
		ret = -EIO;
	rk_cf_close(cf);
	rk_keyring_free(kr);
	free(buf);
	if (fd >= 0)
		close(fd);
	return ret;
}

