/* Sandbox paths: a GetVM request names two paths the daemon (often root)
 * turns into symlinks, so where it may write is confined to configured
 * roots, reached without following links, in directories the requester
 * owns.  And the VM's owner, only it, is given access to the VM's sockets
 * and share.  Everything here runs on worker threads: a path on a hung
 * mount blocks a worker, never the event loop. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/posix_acl.h>
#include <linux/posix_acl_xattr.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "log.h"
#include "sandbox.h"
#include "util.h"

bool vmf_sandbox_test_no_openat2;

/* ---- roots ---- */

/* path without "//", "/./" or a trailing "/"; refuses "." and ".." as
 * components and relative paths.  Lexical on purpose: what the path names
 * is checked when it is opened, without following links. */
static int
normalize(const char *what, const char *in, char *out, size_t n, struct vmf_error *err)
{
	if (in[0] != '/')
		return vmf_err(err, EINVAL, "%s %s is not an absolute path", what, in);
	size_t o = 0;
	for (const char *s = in; *s;) {
		while (*s == '/')
			s++;
		if (!*s)
			break;
		const char *e = strchrnul(s, '/');
		size_t l = (size_t)(e - s);
		if ((l == 1 && s[0] == '.') || (l == 2 && s[0] == '.' && s[1] == '.'))
			return vmf_err(err, EINVAL, "%s %s has a '%.*s' component; refused", what, in, (int)l, s);
		if (o + 1 + l + 1 > n)
			return vmf_err(err, ENAMETOOLONG, "%s %.80s... is too long", what, in);
		out[o++] = '/';
		memcpy(out + o, s, l);
		o += l;
		s = e;
	}
	if (o == 0)
		out[o++] = '/';
	out[o] = '\0';
	return 0;
}

/* a is b or lies beneath it (both normalized). */
static bool
beneath(const char *a, const char *b)
{
	size_t lb = strlen(b);
	if (strcmp(b, "/") == 0)
		return true;
	return strncmp(a, b, lb) == 0 && (a[lb] == '\0' || a[lb] == '/');
}

int
vmf_sandbox_policy_init(struct vmf_sandbox_policy *p, const char *roots, const char *state_dir,
			const char *run_dir, struct vmf_error *err)
{
	memset(p, 0, sizeof(*p));
	p->daemon_uid = geteuid();
	char vms[PATH_MAX];
	snprintf(vms, sizeof(vms), "%s/vms", run_dir);
	int r;
	if ((r = normalize("state dir", state_dir, p->forbidden[0], sizeof(p->forbidden[0]), err)) < 0 ||
	    (r = normalize("run dir", vms, p->forbidden[1], sizeof(p->forbidden[1]), err)) < 0)
		return r;
	char list[VMF_MAX_SANDBOX_ROOTS * VMF_SANDBOX_ROOT_MAX];
	if (roots && *roots)
		r = vmf_strlcpy(list, roots, sizeof(list), err);
	else
		r = snprintf(list, sizeof(list), "%s/sandboxes:%s", run_dir, VMF_KATA_SANDBOX_ROOTS) < 0 ? -EINVAL : 0;
	if (r < 0)
		return vmf_error_prefix(err, "sandbox roots");
	char *save = NULL;
	for (char *tok = strtok_r(list, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
		if (p->n_roots == VMF_MAX_SANDBOX_ROOTS)
			return vmf_err(err, EINVAL, "more than %d sandbox roots", VMF_MAX_SANDBOX_ROOTS);
		char *root = p->roots[p->n_roots];
		if ((r = normalize("sandbox root", tok, root, VMF_SANDBOX_ROOT_MAX, err)) < 0)
			return r;
		for (int i = 0; i < 2; i++)
			if (beneath(root, p->forbidden[i]) || beneath(p->forbidden[i], root))
				return vmf_err(err, EINVAL, "sandbox root %s %s the daemon's %s %s: links there could "
					       "reach the daemon's own files; choose a directory apart from it", root,
					       strcmp(root, p->forbidden[i]) == 0 ? "is" : beneath(root, p->forbidden[i])
					       ? "lies inside" : "contains", i ? "VM dir" : "state dir", p->forbidden[i]);
		p->n_roots++;
	}
	if (p->n_roots == 0)
		return vmf_err(err, EINVAL, "no sandbox root given");
	return 0;
}

/* ---- confined opening ---- */

static int
open_how(int dfd, const char *path, uint64_t resolve)
{
	if (vmf_sandbox_test_no_openat2)
		return (errno = ENOSYS, -1);
	struct open_how how = { .flags = O_PATH | O_DIRECTORY | O_CLOEXEC, .resolve = resolve };
	return (int)syscall(SYS_openat2, dfd, path, &how, sizeof(how));
}

/* Component by component from dfd, each step O_NOFOLLOW of a single name:
 * no symlink (magic links included) is followed and, as ".." is refused
 * before, nothing is resolved outside dfd: what openat2 with
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS gives. */
static int
walk(int dfd, const char *rel)
{
	int fd = dup(dfd);
	char buf[PATH_MAX];
	snprintf(buf, sizeof(buf), "%s", rel);
	char *save = NULL;
	for (char *c = strtok_r(buf, "/", &save); fd >= 0 && c; c = strtok_r(NULL, "/", &save)) {
		int next = openat(fd, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0) {
			/* O_PATH|O_NOFOLLOW on a symlink opens the link itself,
			 * which O_DIRECTORY refuses with ENOTDIR: say ELOOP. */
			int e = errno;
			struct stat st;
			if (e == ENOTDIR && fstatat(fd, c, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
				e = ELOOP;
			close(fd);
			errno = e;
			return -1;
		}
		close(fd);
		fd = next;
	}
	return fd;
}

static int
open_root(const char *root)
{
	int fd = open_how(AT_FDCWD, root, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
	if (fd < 0 && (errno == ENOSYS || errno == EPERM)) {
		int top = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (top < 0)
			return -1;
		fd = walk(top, root + 1);
		int e = errno;
		close(top);
		errno = e;
	}
	return fd;
}

int
vmf_sandbox_open_parent(const struct vmf_sandbox_policy *p, const char *path, uid_t peer, char *name,
			size_t nlen, struct vmf_error *err)
{
	char norm[PATH_MAX];
	int r = normalize("path", path, norm, sizeof(norm), err);
	if (r < 0)
		return r;
	char *slash = strrchr(norm, '/');
	if (!slash[1])
		return vmf_err(err, EINVAL, "%s does not name a directory entry", path);
	if (vmf_strlcpy(name, slash + 1, nlen, err) < 0)
		return -ENAMETOOLONG;
	if (slash == norm)
		slash[1] = '\0';
	else
		*slash = '\0';
	/* norm is now the parent. */
	for (int i = 0; i < 2; i++)
		if (beneath(norm, p->forbidden[i]))
			return vmf_err(err, EACCES, "%s lies inside the daemon's own %s; refused", path,
				       i ? "VM dir" : "state dir");
	const char *root = NULL;
	for (unsigned i = 0; i < p->n_roots; i++)
		if (beneath(norm, p->roots[i]) && (!root || strlen(p->roots[i]) > strlen(root)))
			root = p->roots[i];
	if (!root) {
		char list[VMF_MAX_SANDBOX_ROOTS * (VMF_SANDBOX_ROOT_MAX + 2)] = "";
		for (unsigned i = 0; i < p->n_roots; i++)
			snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "", p->roots[i]);
		return vmf_err(err, EACCES, "%s is not beneath a sandbox root (%s); refused", path, list);
	}
	int rfd = open_root(root);
	if (rfd < 0) {
		int e = errno;
		return vmf_err_sys(err, e, "cannot open sandbox root %s%s", root,
				   e == ELOOP ? " (a symlink stands in its path)" : "");
	}
	const char *rel = norm + strlen(root);
	while (*rel == '/')
		rel++;
	int fd;
	if (!*rel)
		fd = rfd;
	else {
		fd = open_how(rfd, rel, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
		if (fd < 0 && (errno == ENOSYS || errno == EPERM))
			fd = walk(rfd, rel);
		int e = errno;
		close(rfd);
		if (fd < 0) {
			if (e == ELOOP || e == EXDEV)
				return vmf_err(err, ELOOP, "the parent directory of %s goes through a symlink; refused", path);
			return vmf_err_sys(err, e, "cannot open the parent directory of %s", path);
		}
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		r = vmf_err_sys(err, errno, "cannot examine the parent directory of %s", path);
		close(fd);
		return r;
	}
	if (peer != 0 && peer != p->daemon_uid && st.st_uid != peer) {
		close(fd);
		return vmf_err(err, EACCES, "the parent directory of %s belongs to uid %u, not to the requesting "
			       "uid %u; refused", path, (unsigned)st.st_uid, (unsigned)peer);
	}
	return fd;
}

int
vmf_sandbox_check_path(const struct vmf_sandbox_policy *p, const char *what, const char *path, uid_t peer,
		       struct vmf_error *err)
{
	/* Test builds: a path on a hung mount, which must hold up nobody but
	 * this request. */
	if (VMF_FAULT_ERR("sandbox-path-hang"))
		sleep(3);
	char name[NAME_MAX + 1];
	int pfd = vmf_sandbox_open_parent(p, path, peer, name, sizeof(name), err);
	if (pfd < 0)
		return vmf_error_prefix(err, "%s", what);
	struct stat st;
	int r = 0;
	if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno != ENOENT)
			r = vmf_err_sys(err, errno, "%s %s cannot be examined", what, path);
	} else if (S_ISDIR(st.st_mode)) {
		int dfd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		DIR *dir = dfd >= 0 ? fdopendir(dfd) : NULL;
		if (!dir) {
			if (dfd >= 0)
				close(dfd);
			r = vmf_err_sys(err, errno, "%s %s cannot be listed", what, path);
		} else {
			struct dirent *de;
			while ((de = readdir(dir)))
				if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
					break;
			if (de)
				r = vmf_err(err, ENOTEMPTY, "%s %s is a directory that is not empty; refused",
					    what, path);
			closedir(dir);
		}
	} else if (!S_ISLNK(st.st_mode)) {
		r = vmf_err(err, EEXIST, "%s %s exists and is neither an empty directory nor a symlink; "
			    "refused", what, path);
	}
	close(pfd);
	return r;
}

int
vmf_sandbox_install_link(const struct vmf_sandbox_policy *p, const char *what, const char *path,
			 const char *target, uid_t peer, struct vmf_error *err)
{
	char name[NAME_MAX + 1];
	int pfd = vmf_sandbox_open_parent(p, path, peer, name, sizeof(name), err);
	if (pfd < 0)
		return vmf_error_prefix(err, "%s", what);
	struct stat st;
	int r = 0;
	if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		/* AT_REMOVEDIR removes only an empty directory: a directory filled
		 * since validation fails here instead of losing its contents. */
		if (S_ISLNK(st.st_mode))
			r = unlinkat(pfd, name, 0);
		else if (S_ISDIR(st.st_mode))
			r = unlinkat(pfd, name, AT_REMOVEDIR);
		else
			r = (errno = EEXIST, -1);
		if (r < 0)
			r = vmf_err_sys(err, errno, "%s %s cannot be replaced", what, path);
	}
	if (r == 0 && symlinkat(target, pfd, name) < 0)
		r = vmf_err_sys(err, errno, "cannot create the %s symlink %s", what, path);
	close(pfd);
	return r;
}

int
vmf_sandbox_unlink_if_points_to(const struct vmf_sandbox_policy *p, const char *link, const char *target,
				uid_t owner, struct vmf_error *err)
{
	if (!link || !*link)
		return 0;
	char name[NAME_MAX + 1], buf[PATH_MAX];
	int pfd = vmf_sandbox_open_parent(p, link, owner, name, sizeof(name), err);
	if (pfd == -ENOENT)
		return 0;   /* the runtime removed the sandbox dir, link and all */
	if (pfd < 0)
		return vmf_error_prefix(err, "link %s left in place", link);
	ssize_t n = readlinkat(pfd, name, buf, sizeof(buf) - 1);
	int r = 0;
	if (n > 0) {
		buf[n] = '\0';
		if (strcmp(buf, target) == 0 && unlinkat(pfd, name, 0) < 0)
			r = vmf_err_sys(err, errno, "cannot remove link %s", link);
	}
	close(pfd);
	return r;
}

/* ---- access for the VM's owner ---- */

struct acl_entry {
	uint16_t tag, perm;
	uint32_t id;
};

/* Sets an access (or default) ACL on the object fd refers to: the owner,
 * group and other entries from its mode, plus named users.  The mask is
 * what the named users get, so the group class gains nothing. */
static int
set_acl(int fd, bool is_default, mode_t mode, const uid_t *uids, const unsigned *perms, size_t n)
{
	struct {
		struct posix_acl_xattr_header h;
		struct posix_acl_xattr_entry e[8];
	} __attribute__((packed)) x;
	size_t k = 0;
	unsigned mask = 0;
	x.h.a_version = POSIX_ACL_XATTR_VERSION;
	x.e[k++] = (struct posix_acl_xattr_entry){ ACL_USER_OBJ, (mode >> 6) & 7, ACL_UNDEFINED_ID };
	for (size_t i = 0; i < n && i < 4; i++) {
		/* Entries sorted by tag, then id, as the kernel requires. */
		size_t at = k;
		while (at > 1 && x.e[at - 1].e_id > uids[i])
			at--;
		memmove(&x.e[at + 1], &x.e[at], (k - at) * sizeof(x.e[0]));
		x.e[at] = (struct posix_acl_xattr_entry){ ACL_USER, (uint16_t)perms[i], (uint32_t)uids[i] };
		k++;
		mask |= perms[i];
	}
	x.e[k++] = (struct posix_acl_xattr_entry){ ACL_GROUP_OBJ, (mode >> 3) & 7, ACL_UNDEFINED_ID };
	x.e[k++] = (struct posix_acl_xattr_entry){ ACL_MASK, (uint16_t)(mask | ((mode >> 3) & 7)), ACL_UNDEFINED_ID };
	x.e[k++] = (struct posix_acl_xattr_entry){ ACL_OTHER, mode & 7, ACL_UNDEFINED_ID };
	const char *xname = is_default ? "system.posix_acl_default" : "system.posix_acl_access";
	size_t len = sizeof(x.h) + k * sizeof(x.e[0]);
	/* An O_PATH descriptor (a socket cannot be opened otherwise) takes no
	 * fsetxattr; its /proc/self/fd link names the very inode. */
	char proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	return setxattr(proc, xname, &x, len, 0);
}

static bool
granted_name(const char *name, const char *const *socks, size_t nsocks, const char *share_name)
{
	if (share_name && strcmp(name, share_name) == 0)
		return true;
	for (size_t i = 0; i < nsocks; i++)
		if (strcmp(name, socks[i]) == 0)
			return true;
	return false;
}

int
vmf_sandbox_grant(const char *run_dir, const char *const *socks, size_t nsocks, const char *share_dir,
		  uid_t uid, uid_t runas_uid, struct vmf_error *err)
{
	int dfd = open(run_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return vmf_err_sys(err, errno, "cannot open VM dir %s", run_dir);
	const char *share_name = NULL;
	size_t rl = strlen(run_dir);
	if (share_dir && strncmp(share_dir, run_dir, rl) == 0 && share_dir[rl] == '/' && !strchr(share_dir + rl + 1, '/'))
		share_name = share_dir + rl + 1;
	int r = 0;
	/* First close what is not granted: the search right given below
	 * must reach the sockets and the share only. */
	DIR *dir = fdopendir(dup(dfd));
	struct dirent *de;
	while (dir && r == 0 && (de = readdir(dir))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
		    granted_name(de->d_name, socks, nsocks, share_name))
			continue;
		int fd = openat(dfd, de->d_name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) < 0) {
			if (fd >= 0)
				close(fd);
			continue;   /* gone meanwhile */
		}
		char proc[64];
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		if (!S_ISLNK(st.st_mode) && (st.st_mode & 077) && chmod(proc, st.st_mode & 07700) < 0)
			r = vmf_err_sys(err, errno, "cannot close %s/%s to others", run_dir, de->d_name);
		close(fd);
	}
	if (dir)
		closedir(dir);
	else
		r = vmf_err_sys(err, errno, "cannot list VM dir %s", run_dir);
	struct stat st;
	unsigned rw = 6, rwx = 7, x = 1;
	if (r == 0 && (fstat(dfd, &st) < 0 || set_acl(dfd, false, st.st_mode, &uid, &x, 1) < 0))
		r = vmf_err_sys(err, errno, "cannot give uid %u search access to %s%s", (unsigned)uid, run_dir,
				errno == EOPNOTSUPP ? " (its file system has no POSIX ACLs)" : "");
	for (size_t i = 0; r == 0 && i < nsocks; i++) {
		int fd = openat(dfd, socks[i], O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 && errno == ENOENT)
			continue;   /* this driver has no such socket */
		int e = 0;
		if (fd < 0 || fstat(fd, &st) < 0)
			e = errno;
		else if (!S_ISSOCK(st.st_mode))
			e = ENOTSOCK;
		else if (set_acl(fd, false, st.st_mode, &uid, &rw, 1) < 0)
			e = errno;
		if (e)
			r = vmf_err_sys(err, e, "cannot give uid %u access to socket %s/%s", (unsigned)uid, run_dir,
					socks[i]);
		if (fd >= 0)
			close(fd);
	}
	if (r == 0 && share_name) {
		int fd = openat(dfd, share_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		uid_t who[2] = { uid, runas_uid };
		unsigned perm[2] = { rwx, rwx };
		size_t n = runas_uid != (uid_t)-1 && runas_uid != uid ? 2 : 1;
		/* The default ACL: what the guest (through 9p) or the owner
		 * creates in the share stays usable by both sides. */
		if (fd < 0 || fstat(fd, &st) < 0 || set_acl(fd, false, st.st_mode, &uid, &rwx, 1) < 0 ||
		    set_acl(fd, true, 0700, who, perm, n) < 0)
			r = vmf_err_sys(err, errno, "cannot give uid %u access to share %s", (unsigned)uid, share_dir);
		if (fd >= 0)
			close(fd);
	}
	close(dfd);
	return r;
}
