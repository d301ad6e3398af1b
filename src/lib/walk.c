/* rekeyfs - sorted, symlink-safe tree walk. */
#include "config.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "rekeyfs/common.h"
#include "rekeyfs/datadir.h"
#include "rekeyfs/walk.h"

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The path from the data directory root, grown as the walk goes deeper: the
 * walk goes by directory fds, so no depth or total length is refused. */
struct relbuf {
	char *p;
	size_t cap;
};

static int walk_dir(int dfd, struct relbuf *rb, size_t rellen, rk_walk_fn fn, void *arg)
{
	DIR *d = fdopendir(dfd);
	char **names = NULL;
	size_t n = 0, cap = 0;
	int ret = 0;
	struct dirent *de;
	if (!d) {
		ret = -errno;
		close(dfd);
		return ret;
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (rellen == 0 && strcmp(de->d_name, RK_STATE_DIR) == 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **nn = realloc(names, cap * sizeof(*nn));
			if (!nn) {
				ret = -ENOMEM;
				goto out;
			}
			names = nn;
		}
		names[n] = strdup(de->d_name);
		if (!names[n]) {
			ret = -ENOMEM;
			goto out;
		}
		n++;
	}
	if (n)
		qsort(names, n, sizeof(*names), cmp_names);
	for (size_t i = 0; i < n && ret >= 0; i++) {
		struct stat st;
		size_t nl = strlen(names[i]);
		if (rellen + 1 + nl + 1 > rb->cap) {
			size_t nc = RK_MAX(rb->cap * 2, rellen + nl + 2);
			char *np = realloc(rb->p, nc);
			if (!np) {
				ret = -ENOMEM;
				break;
			}
			rb->p = np;
			rb->cap = nc;
		}
		char *rel = rb->p;
		if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno == ENOENT)
				continue; /* vanished meanwhile */
			ret = -errno;
			break;
		}
		rel[rellen] = '/';
		memcpy(rel + rellen + 1, names[i], nl + 1);
		struct rk_walk_ent e = {.rel = rel, .dirfd = dirfd(d), .name = names[i], .st = &st};
		int r = fn(&e, arg);
		if (r < 0) {
			ret = r;
			break;
		}
		if (S_ISDIR(st.st_mode) && r != 1) {
			int cfd = openat(dirfd(d), names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (cfd < 0) {
				if (errno == ENOENT)
					continue;
				ret = -errno;
				break;
			}
			ret = walk_dir(cfd, rb, rellen + 1 + nl, fn, arg);
		}
		rb->p[rellen] = '\0';
	}
out:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return ret;
}

/* Open the directory rel ("/a/b", normalised; "/" is rootfd itself) below
 * rootfd without following any symlink on the way (a path given by a user
 * or read from disk never leads outside the tree). */
static int open_dir_beneath(int rootfd, const char *rel)
{
	char tmp[PATH_MAX], *save = NULL;
	int dfd = openat(rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	snprintf(tmp, sizeof(tmp), "%s", rel);
	for (char *c = strtok_r(tmp, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		int nfd = openat(dfd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int e = errno;
		close(dfd);
		if (nfd < 0)
			return e == ELOOP ? -ENOTDIR : -e;
		dfd = nfd;
	}
	return dfd;
}

int rk_walk(int rootfd, const char *start, rk_walk_fn fn, void *arg)
{
	char norm[PATH_MAX];
	int ret = rk_table_path_norm(start, norm, sizeof(norm));
	if (ret < 0)
		return ret;
	struct relbuf rb = {.cap = PATH_MAX};
	rb.p = malloc(rb.cap);
	if (!rb.p)
		return -ENOMEM;
	int dfd = open_dir_beneath(rootfd, norm);
	if (strcmp(norm, "/") == 0)
		rb.p[0] = '\0';
	else
		snprintf(rb.p, rb.cap, "%s", norm);
	if (dfd < 0)
		ret = dfd;
	else
		ret = walk_dir(dfd, &rb, strlen(rb.p), fn, arg);
	free(rb.p);
	return ret;
}

int rk_walk_path(int rootfd, const char *path, rk_walk_fn fn, void *arg)
{
	char norm[PATH_MAX];
	struct stat st;
	int ret = rk_table_path_norm(path, norm, sizeof(norm));
	if (ret < 0)
		return ret;
	if (strcmp(norm, "/") == 0)
		return rk_walk(rootfd, "/", fn, arg);
	char *slash = strrchr(norm, '/');
	char parent[PATH_MAX];
	snprintf(parent, sizeof(parent), "%.*s", slash == norm ? 1 : (int)(slash - norm), norm);
	int pfd = open_dir_beneath(rootfd, parent);
	if (pfd < 0)
		return pfd;
	if (strcmp(parent, "/") == 0 && strcmp(slash + 1, RK_STATE_DIR) == 0)
		ret = -EPERM; /* the state directory is never walked */
	else if (fstatat(pfd, slash + 1, &st, AT_SYMLINK_NOFOLLOW) < 0)
		ret = -errno;
	else if (S_ISDIR(st.st_mode))
		ret = rk_walk(rootfd, norm, fn, arg);
	else {
		struct rk_walk_ent e = {.rel = norm, .dirfd = pfd, .name = slash + 1, .st = &st};
		ret = fn(&e, arg);
	}
	close(pfd);
	return ret;
}

int rk_walk_cmp(const char *a, const char *b)
{
	while (*a == '/' && *b == '/') {
		a++;
		b++;
		size_t la = strcspn(a, "/"), lb = strcspn(b, "/");
		int c = strncmp(a, b, RK_MIN(la, lb));
		if (c == 0 && la != lb)
			c = la < lb ? -1 : 1;
		if (c != 0)
			return c;
		a += la;
		b += lb;
	}
	if (!*a && !*b)
		return 0;
	return !*a ? -1 : 1; /* a directory comes before its contents */
}
