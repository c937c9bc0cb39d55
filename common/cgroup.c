/* cgroups a VMM joins (see cgroup.h). */
#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "util.h"

#ifndef CGROUP_SUPER_MAGIC
#define CGROUP_SUPER_MAGIC 0x27e0eb
#endif
#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

int
vmf_cgroup_check_path(const char *path, struct vmf_error *err)
{
	size_t rl = strlen(VMF_CGROUP_ROOT), n = strlen(path);
	if (n >= VMF_CGROUP_PATH_MAX)
		return vmf_err(err, ENAMETOOLONG, "cgroup path is longer than %d bytes", VMF_CGROUP_PATH_MAX - 1);
	if (strncmp(path, VMF_CGROUP_ROOT "/", rl + 1) != 0 || n == rl + 1)
		return vmf_err(err, EINVAL, "cgroup '%s' is not a directory below %s", path, VMF_CGROUP_ROOT);
	for (const char *c = path + rl + 1; *c;) {
		size_t l = strcspn(c, "/");
		if (l == 0 || (l == 1 && c[0] == '.') || (l == 2 && c[0] == '.' && c[1] == '.'))
			return vmf_err(err, EINVAL, "cgroup '%s' has an empty, '.' or '..' component", path);
		c += l;
		if (*c == '/' && !c[1])
			break;   /* one trailing slash */
		if (*c)
			c++;
	}
	return 0;
}

/* path's directory, from the root one name at a time: O_NOFOLLOW on each
 * step resolves exactly one name and follows no link (the names were
 * checked: no "." or ".."). */
static int
walk(const char *path, struct vmf_error *err)
{
	int fd = open(VMF_CGROUP_ROOT, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot open %s", VMF_CGROUP_ROOT);
	char name[VMF_CGROUP_PATH_MAX];
	for (const char *c = path + strlen(VMF_CGROUP_ROOT) + 1; *c;) {
		size_t l = strcspn(c, "/");
		if (!l)
			break;
		snprintf(name, sizeof(name), "%.*s", (int)l, c);
		int next = openat(fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int e = errno;
		struct stat st;
		if (next < 0 && e == ENOTDIR && fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
			e = ELOOP;
		close(fd);
		if (next < 0)
			return vmf_err_sys(err, e, "cgroup %s: cannot open '%s'%s", path, name,
					   e == ELOOP ? " (a symbolic link is never followed)" : "");
		fd = next;
		c += l;
		if (*c)
			c++;
	}
	return fd;
}

int
vmf_cgroup_open(const char *path, uid_t peer, bool admin, struct vmf_error *err)
{
	int r = vmf_cgroup_check_path(path, err);
	if (r < 0)
		return r;
	int dir = walk(path, err);
	if (dir < 0)
		return dir;
	struct statfs sf;
	struct stat st;
	if (fstatfs(dir, &sf) < 0 || fstat(dir, &st) < 0) {
		r = vmf_err_sys(err, errno, "cgroup %s cannot be examined", path);
		goto out;
	}
	if (sf.f_type != CGROUP_SUPER_MAGIC && sf.f_type != CGROUP2_SUPER_MAGIC) {
		r = vmf_err(err, EINVAL, "%s is not a cgroup: it is not on a cgroup file system (v1 or v2)", path);
		goto out;
	}
	if (!admin && st.st_uid != peer) {
		r = vmf_err(err, EACCES, "cgroup %s is not yours: it belongs to uid %u (delegate it to uid %u first)",
			    path, (unsigned)st.st_uid, (unsigned)peer);
		goto out;
	}
	int procs = openat(dir, "cgroup.procs", O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
	if (procs < 0) {
		r = vmf_err_sys(err, errno, "cgroup %s: cannot open its cgroup.procs", path);
		goto out;
	}
	if (!admin && (fstat(procs, &st) < 0 || st.st_uid != peer || !(st.st_mode & S_IWUSR))) {
		close(procs);
		r = vmf_err(err, EACCES, "cgroup %s is not yours: its cgroup.procs is not writable by uid %u", path,
			    (unsigned)peer);
		goto out;
	}
	r = procs;
out:
	close(dir);
	return r;
}

int
vmf_cgroup_join(int procs_fd, const char *path, pid_t pid, struct vmf_error *err)
{
	char s[24];
	int n = snprintf(s, sizeof(s), "%d\n", (int)pid);
	if (pwrite(procs_fd, s, (size_t)n, 0) != n)
		return vmf_err_sys(err, errno, "cannot move pid %d into cgroup %s", (int)pid, path);
	return 0;
}

static bool
count_in(const char *file, uint64_t *n)
{
	char *buf = NULL;
	if (vmf_read_file(file, &buf, NULL, 8192, NULL) < 0)
		return false;
	const char *k = strstr(buf, "oom_kill ");
	bool ok = k && (k == buf || k[-1] == '\n') && sscanf(k + 9, "%" SCNu64, n) == 1;
	free(buf);
	return ok;
}

uint64_t
vmf_cgroup_oom_kills(const char *path)
{
	char f[VMF_CGROUP_PATH_MAX + 32];
	uint64_t n = 0;
	snprintf(f, sizeof(f), "%s/memory.events", path);
	if (count_in(f, &n))
		return n;
	snprintf(f, sizeof(f), "%s/memory.oom_control", path);
	return count_in(f, &n) ? n : 0;
}
