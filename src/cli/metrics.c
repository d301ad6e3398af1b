/* rekeyctl metrics - the Prometheus text exposition of one or more mounts:
 * each mount's .rekeyfs/metrics (every series labelled mount="...") merged
 * into one exposition, plus rekeyfs_up{mount} (1: the daemon answered).
 * --textfile FILE writes it atomically (a temporary file in FILE's
 * directory, then rename) for the node exporter's textfile collector;
 * --refresh rescans the daemons' cached coverage first. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "rekeyfs/common.h"
#include "rekeyfs/metrics.h"

static const char usage[] = "rekeyctl metrics [--refresh] [--textfile FILE] MOUNT...";

/* FILE through FILE.tmp.PID: the collector never reads half a file */
static int write_atomic(const char *path, const char *text, size_t len)
{
	char tmp[PATH_MAX];
	int ret = 0;
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= sizeof(tmp))
		return -ENAMETOOLONG;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -errno;
	size_t off = 0;
	while (off < len && ret == 0) {
		ssize_t n = write(fd, text + off, len - off);
		if (n < 0 && errno != EINTR)
			ret = -errno;
		else if (n > 0)
			off += (size_t)n;
	}
	if (ret == 0 && fchmod(fd, 0644) < 0) /* whatever the umask: the exporter's user reads it */
		ret = -errno;
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (close(fd) < 0 && ret == 0)
		ret = -errno;
	if (ret == 0 && rename(tmp, path) < 0)
		ret = -errno;
	if (ret < 0)
		unlink(tmp);
	return ret;
}

/* one mount's exposition (allocated) or NULL with the reason printed */
static char *mount_text(const char *target, bool refresh, char **mount)
{
	char *root = NULL, *rel = NULL, *text = NULL, *reply = NULL;
	*mount = NULL;
	if (rkc_mount_find(target, &root, &rel) < 0) {
		rk_err("%s is not on a rekeyfs mount (no fuse.rekeyfs mount with the daemon's .rekeyfs/control holds it)",
		       target);
		*mount = realpath(target, NULL);
		if (!*mount)
			*mount = strdup(target);
		goto out;
	}
	*mount = strdup(root);
	if (refresh) {
		int r = rkc_control(root, "metrics-refresh\n", &reply);
		if (r < 0) {
			rkc_print_reply(r, reply);
			reply = NULL;
			goto out;
		}
	}
	int r = rkc_read_virt(root, "metrics", RK_VIRT_INO_STATEDIR + 3, &text);
	if (r < 0) {
		rk_err("cannot read %s/.rekeyfs/metrics: %s%s", root, strerror(-r),
		       r == -ENOENT ? " (a daemon older than rekeyctl? restart it)" : "");
		text = NULL;
	}
out:
	free(reply);
	free(root);
	free(rel);
	return text;
}

int rkc_cmd_metrics(int argc, char **argv)
{
	static const struct option lo[] = {{"refresh", no_argument, NULL, 'r'},
	                                   {"textfile", required_argument, NULL, 'o'},
	                                   {"help", no_argument, NULL, 'h'},
	                                   {0, 0, 0, 0}};
	const char *textfile = NULL;
	bool refresh = false;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":ro:h", lo, NULL)) != -1) {
		switch (c) {
		case 'r':
			refresh = true;
			break;
		case 'o':
			textfile = optarg;
			break;
		case 'h':
			return rkc_help("metrics") == 0 ? 0 : RKC_USAGE;
		default:
			return rkc_opt_refused("metrics", c, argv, lo);
		}
	}
	int n = argc - optind;
	if (n < 1) {
		rk_err("usage: %s", usage);
		return RKC_USAGE;
	}
	/* texts[0]: rekeyfs_up of every mount; then each mount's exposition */
	char **texts = calloc((size_t)n + 1, sizeof(*texts));
	char *up = NULL, *merged = NULL;
	size_t uplen = 0, mlen = 0;
	int ret = 0, failed = 0;
	FILE *uf = texts ? open_memstream(&up, &uplen) : NULL;
	if (!uf) {
		free(texts);
		return -ENOMEM;
	}
	fputs("# HELP rekeyfs_up 1 when the mount's daemon answered rekeyctl metrics, 0 otherwise.\n"
	      "# TYPE rekeyfs_up gauge\n",
	      uf);
	for (int i = 0; i < n; i++) {
		char *mount = NULL;
		texts[i + 1] = mount_text(argv[optind + i], refresh, &mount);
		size_t el = rk_metrics_escape(mount, NULL, 0);
		char *esc = malloc(el + 1);
		if (esc) {
			rk_metrics_escape(mount, esc, el + 1);
			fprintf(uf, "rekeyfs_up{mount=\"%s\"} %d\n", esc, texts[i + 1] ? 1 : 0);
		}
		free(esc);
		free(mount);
		if (!texts[i + 1])
			failed++;
	}
	if (fclose(uf) != 0) {
		ret = -ENOMEM;
		goto out;
	}
	texts[0] = up;
	up = NULL;
	ret = rk_metrics_merge((const char *const *)texts, (size_t)n + 1, &merged, &mlen);
	if (ret < 0) {
		rk_err("cannot merge the expositions: %s", rk_strerror(ret));
		goto out;
	}
	if (textfile) {
		ret = write_atomic(textfile, merged, mlen);
		if (ret < 0)
			rk_err("cannot write %s: %s", textfile, strerror(-ret));
	} else if (fwrite(merged, 1, mlen, stdout) != mlen || fflush(stdout) != 0) {
		ret = -errno;
	}
	if (ret == 0 && failed)
		ret = -EIO; /* the others are written; rekeyfs_up says which failed */
out:
	for (int i = 0; i <= n; i++)
		free(texts[i]);
	free(texts);
	free(up);
	free(merged);
	return ret;
}
