#include "util.h"
#include "frame.h"
#include "text.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <sys/syscall.h>
#include <linux/openat2.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <uuid/uuid.h>

int64_t
vmf_realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t
vmf_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int
vmf_strlcpy(char *dst, const char *src, size_t n, struct vmf_error *err)
{
	size_t l = strlen(src);
	if (l >= n)
		return vmf_err(err, ENAMETOOLONG, "'%.64s...' is longer than %zu bytes", src, n - 1);
	memcpy(dst, src, l + 1);
	return 0;
}

int
vmf_mkdir_p(const char *path, mode_t mode, struct vmf_error *err)
{
	char buf[PATH_MAX];
	if (vmf_strlcpy(buf, path, sizeof(buf), err) < 0)
		return -ENAMETOOLONG;
	for (char *p = buf + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return vmf_err_sys(err, errno, "cannot create directory %s", buf);
		struct stat st;
		if (lstat(buf, &st) < 0)
			return vmf_err_sys(err, errno, "cannot stat %s", buf);
		/* A symlinked ancestor is tolerated only above the last component
		 * (e.g. /var/run -> /run); the directory itself must be real. */
		if (c == '\0' && !S_ISDIR(st.st_mode))
			return vmf_err(err, ENOTDIR, "%s exists and is not a directory", buf);
		*p = c;
		if (c == '\0')
			break;
		while (p[1] == '/')
			p++;
		if (p[1] == '\0')
			break;
	}
	return 0;
}

int
vmf_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode,
		      struct vmf_error *err)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp))
		return vmf_err(err, ENAMETOOLONG, "path %s is too long", path);
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create %s", tmp);
	int r = vmf_write_full(fd, data, len, -1, err);
	if (r == 0 && fchmod(fd, mode) < 0)
		r = vmf_err_sys(err, errno, "cannot chmod %s", tmp);
	if (r == 0 && fsync(fd) < 0)
		r = vmf_err_sys(err, errno, "cannot fsync %s", tmp);
	if (close(fd) < 0 && r == 0)
		r = vmf_err_sys(err, errno, "cannot close %s", tmp);
	if (r == 0 && rename(tmp, path) < 0)
		r = vmf_err_sys(err, errno, "cannot rename %s to %s", tmp, path);
	if (r < 0) {
		unlink(tmp);
		return vmf_error_prefix(err, "writing %s", path);
	}
	vmf_strlcpy(dir, path, sizeof(dir), NULL);
	char *slash = strrchr(dir, '/');
	if (slash) {
		if (slash == dir)
			slash[1] = '\0';
		else
			*slash = '\0';
		return vmf_fsync_dir(dir, err);
	}
	return vmf_fsync_dir(".", err);
}

int
vmf_fsync_dir(const char *dir, struct vmf_error *err)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot open directory %s", dir);
	int r = fsync(fd);
	int e = errno;
	close(fd);
	if (r < 0)
		return vmf_err_sys(err, e, "cannot fsync directory %s", dir);
	return 0;
}

int
vmf_read_fd(int fd, const char *path, char **out, size_t *len, size_t max, struct vmf_error *err)
{
	*out = NULL;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory reading %s", path);
	for (;;) {
		if (n == cap) {
			if (cap >= max) {
				free(buf);
				return vmf_err(err, EFBIG, "%s is larger than %zu bytes", path, max);
			}
			cap = cap * 2 > max ? max : cap * 2;
			char *nb = realloc(buf, cap + 1);
			if (!nb) {
				free(buf);
				return vmf_err(err, ENOMEM, "out of memory reading %s", path);
			}
			buf = nb;
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			free(buf);
			return vmf_err_sys(err, e, "cannot read %s", path);
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	buf[n] = '\0';
	*out = buf;
	if (len)
		*len = n;
	return 0;
}

int
vmf_read_file(const char *path, char **out, size_t *len, size_t max, struct vmf_error *err)
{
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot open %s", path);
	int r = vmf_read_fd(fd, path, out, len, max, err);
	close(fd);
	return r;
}

/* ---- tree removal ----
 *
 * A VM's run dir holds its share, which the guest fills as it likes: a
 * chain of directories deeper than the fd table or the stack, millions of
 * entries, symlinks to anywhere.  So the tree is emptied in place with two
 * directories open at a time and no recursion: each directory found below
 * the top is emptied of its files, its subdirectories are renamed up into
 * the top under a fresh name (".vmf-rm-N", RENAME_NOREPLACE), and it is
 * removed; the renamed ones are taken in turn.  Every entry is renamed at
 * most once, so the work is linear in the number of entries at any depth.
 * Nothing is followed: entries are looked at with AT_SYMLINK_NOFOLLOW and
 * opened with O_NOFOLLOW, and a symlink is unlinked.  A mount point (a
 * directory whose st_dev differs from the top's, or that statx marks as a
 * mount root, which catches bind mounts) is never entered: it and what
 * holds it stay, and the removal fails with a sentence naming it. */

#define SPOOL_PREFIX ".vmf-rm-"

struct rm_state {
	int top;
	const char *path;
	dev_t dev;
	uint64_t spooled, taken;     /* spool names made, and processed */
	int code;                    /* the first failure, kept in err */
	struct vmf_error *err;
	int64_t deadline;            /* vmf_now_ms(); -1: none */
	unsigned ops;
	bool late;
};

/* Past the deadline (looked at every 64 entries). */
static bool
rm_late(struct rm_state *s)
{
	if (s->deadline >= 0 && !s->late && (++s->ops & 63) == 0 && vmf_now_ms() >= s->deadline)
		s->late = true;
	return s->late;
}

static void
rm_failed(struct rm_state *s, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
rm_failed(struct rm_state *s, int code, const char *fmt, ...)
{
	if (s->code)
		return;
	s->code = code ? code : EIO;
	if (!s->err)
		return;
	char what[700];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	vmf_err(s->err, s->code, "cannot remove everything in %s: %s", s->path, what);
}

/* The type of dir/name and whether it is another mount (or a mount's
 * root): 0, or -errno. */
static int
rm_stat(const struct rm_state *s, int dir, const char *name, bool *is_dir, bool *mount)
{
	struct statx sx;
	if (statx(dir, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_TYPE, &sx) < 0)
		return -errno;
	*is_dir = S_ISDIR(sx.stx_mode);
	*mount = *is_dir && (makedev(sx.stx_dev_major, sx.stx_dev_minor) != s->dev ||
			     ((sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
			      (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT)));
	return 0;
}

static void
spool_name(uint64_t n, char buf[40])
{
	snprintf(buf, 40, SPOOL_PREFIX "%llu", (unsigned long long)n);
}

/* Moves dir/name up into the top under the next spool name. */
static int
rm_spool(struct rm_state *s, int dir, const char *name)
{
	for (int tries = 0; tries < 1000; tries++) {
		char to[40];
		spool_name(s->spooled++, to);
		if (renameat2(dir, name, s->top, to, RENAME_NOREPLACE) == 0)
			return 0;
		if (errno == EINVAL) {
			/* A file system without RENAME_NOREPLACE: the top is
			 * ours, and a name free now stays free. */
			struct stat st;
			if (fstatat(s->top, to, &st, AT_SYMLINK_NOFOLLOW) == 0)
				continue;
			if (renameat(dir, name, s->top, to) == 0)
				return 0;
		}
		if (errno != EEXIST)
			return -errno;
	}
	return -EEXIST;
}

static int
rm_unlink(int dir, const char *name, int flags)
{
	if (unlinkat(dir, name, flags) == 0 || errno == ENOENT)
		return 0;
	if (errno != EACCES && errno != EPERM)
		return -errno;
	/* A directory the guest made unwritable (through 9p, as QEMU's
	 * user): ours to open up again, when we are not root. */
	int e = errno;
	if (fchmod(dir, S_IRWXU) < 0)
		return -e;
	return unlinkat(dir, name, flags) == 0 || errno == ENOENT ? 0 : -errno;
}

/* Removes dir/name (dir: the top, or a directory being emptied).  A
 * non-empty directory is emptied one level: files unlinked, directories
 * removed when empty, else moved up into the top for later. */
static void
rm_entry(struct rm_state *s, int dir, const char *name, const char *shown)
{
	bool is_dir, mount;
	int r = rm_stat(s, dir, name, &is_dir, &mount);
	if (r == -ENOENT)
		return;
	if (r < 0) {
		rm_failed(s, -r, "cannot look at %s: %s", shown, strerror(-r));
		return;
	}
	if (!is_dir) {
		if ((r = rm_unlink(dir, name, 0)) < 0)
			rm_failed(s, -r, "cannot remove %s: %s", shown, strerror(-r));
		return;
	}
	if (mount) {
		rm_failed(s, EBUSY, "%s is a mount point: nothing below it is removed", shown);
		return;
	}
	if ((r = rm_unlink(dir, name, AT_REMOVEDIR)) == 0)
		return;
	if (r != -ENOTEMPTY && r != -EEXIST) {
		rm_failed(s, -r, "cannot remove directory %s: %s", shown, strerror(-r));
		return;
	}
	int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == EACCES && fchmodat(dir, name, S_IRWXU, AT_SYMLINK_NOFOLLOW) == 0)
		fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		/* Replaced by a symlink or a file since: one more look. */
		if (errno == ELOOP || errno == ENOTDIR)
			r = rm_unlink(dir, name, 0);
		else
			r = -errno;
		if (r < 0)
			rm_failed(s, -r, "cannot open %s: %s", shown, strerror(-r));
		return;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_dev != s->dev) {
		/* A mount put there between the look and the open. */
		close(fd);
		rm_failed(s, EBUSY, "%s is a mount point: nothing below it is removed", shown);
		return;
	}
	DIR *d = fdopendir(fd);
	if (!d) {
		r = errno;
		close(fd);
		rm_failed(s, r, "cannot list %s: %s", shown, strerror(r));
		return;
	}
	struct dirent *de;
	errno = 0;
	while (!rm_late(s) && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		bool sub_dir = false, sub_mount = false;
		/* Not a directory by the listing's word: no mount point can
		 * be entered through it, so no look first. */
		r = de->d_type != DT_DIR && de->d_type != DT_UNKNOWN ? 0 : rm_stat(s, fd, de->d_name, &sub_dir, &sub_mount);
		if (r == -ENOENT)
			continue;
		if (r == 0 && !sub_dir)
			r = rm_unlink(fd, de->d_name, 0);
		else if (r == 0 && sub_mount)
			r = -EBUSY;
		else if (r == 0 && rm_unlink(fd, de->d_name, AT_REMOVEDIR) < 0)
			r = rm_spool(s, fd, de->d_name);
		if (r < 0)
			rm_failed(s, -r, r == -EBUSY ? "%s/%s is a mount point: nothing below it is removed"
				  : "cannot remove %s/%s: %s", shown, de->d_name, strerror(-r));
		errno = 0;
	}
	if (errno && !s->late)
		rm_failed(s, errno, "cannot list %s: %s", shown, strerror(errno));
	closedir(d);
	if (s->late)
		return;
	if ((r = rm_unlink(dir, name, AT_REMOVEDIR)) < 0 && !s->code)
		rm_failed(s, -r, "cannot remove directory %s: %s", shown, strerror(-r));
}

/* A mount at or below the directory open as fd, from /proc/self/mountinfo:
 * its mount point in at (size n), true when there is one.  Checked before
 * anything is touched, so that a tree holding a mount is left exactly as
 * it was (its owner unmounts it by that path, then the removal is tried
 * again); the checks during the removal catch one mounted meanwhile. */
static bool
mount_below(int fd, char *at, size_t n)
{
	char self[64], canon[PATH_MAX];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
	ssize_t k = readlink(self, canon, sizeof(canon) - 1);
	if (k <= 0)
		return false;
	canon[k] = '\0';
	size_t cl = (size_t)k;
	char *info = NULL;
	if (vmf_read_file("/proc/self/mountinfo", &info, NULL, 64u << 20, NULL) < 0)
		return false;
	bool found = false;
	for (char *line = info, *next; line && *line && !found; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		/* Field 5 is the mount point, with blanks and backslashes as
		 * octal escapes. */
		char *f = line;
		for (int i = 0; i < 4 && f; i++)
			f = strchr(f, ' ') ? strchr(f, ' ') + 1 : NULL;
		if (!f)
			continue;
		char mp[PATH_MAX];
		size_t m = 0;
		for (; *f && *f != ' ' && m + 1 < sizeof(mp); f++) {
			if (f[0] == '\\' && f[1] >= '0' && f[1] <= '3' && f[2] >= '0' && f[2] <= '7' && f[3] >= '0' &&
			    f[3] <= '7') {
				mp[m++] = (char)((f[1] - '0') * 64 + (f[2] - '0') * 8 + (f[3] - '0'));
				f += 3;
			} else {
				mp[m++] = *f;
			}
		}
		mp[m] = '\0';
		if (strncmp(mp, canon, cl) == 0 && (mp[cl] == '/' || (mp[cl] == '\0' && cl > 1))) {
			snprintf(at, n, "%s", mp);
			found = true;
		}
	}
	free(info);
	return found;
}

int
vmf_rm_rf(const char *path, struct vmf_error *err)
{
	return vmf_rm_rf_until(path, -1, err);
}

int
vmf_rm_rf_until(const char *path, int64_t deadline_ms, struct vmf_error *err)
{
	int top = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (top < 0) {
		if (errno == ENOENT)
			return 0;
		if (errno != ELOOP && errno != ENOTDIR)
			return vmf_err_sys(err, errno, "cannot open %s", path);
		/* A file, or a symlink: removed, never followed. */
		if (unlink(path) < 0 && errno != ENOENT)
			return vmf_err_sys(err, errno, "cannot remove %s", path);
		return 0;
	}
	struct statx sx;
	if (statx(top, "", AT_EMPTY_PATH, STATX_TYPE, &sx) < 0) {
		int e = errno;
		close(top);
		return vmf_err_sys(err, e, "cannot look at %s", path);
	}
	char mnt[PATH_MAX];
	if ((sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT)) {
		close(top);
		return vmf_err(err, EBUSY, "%s is a mount point: not removed", path);
	}
	if (mount_below(top, mnt, sizeof(mnt))) {
		close(top);
		return vmf_err(err, EBUSY, "%s holds a mount at %s: nothing is removed until it is unmounted", path, mnt);
	}
	struct rm_state s = { .top = top, .path = path, .dev = makedev(sx.stx_dev_major, sx.stx_dev_minor),
			      .err = err, .deadline = deadline_ms };
	DIR *d = fdopendir(dup(top));
	if (!d) {
		int e = errno;
		close(top);
		return vmf_err_sys(err, e, "cannot list %s", path);
	}
	struct dirent *de;
	errno = 0;
	while (!rm_late(&s) && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char shown[PATH_MAX + 300];
		snprintf(shown, sizeof(shown), "%s/%s", path, de->d_name);
		rm_entry(&s, top, de->d_name, shown);
		errno = 0;
	}
	if (errno)
		rm_failed(&s, errno, "cannot list %s: %s", path, strerror(errno));
	closedir(d);
	/* What was moved up, in order; each may move more up. */
	while (s.taken < s.spooled && !rm_late(&s)) {
		char name[40], shown[PATH_MAX + 60];
		spool_name(s.taken++, name);
		snprintf(shown, sizeof(shown), "%s/%s (moved up from below)", path, name);
		rm_entry(&s, top, name, shown);
	}
	close(top);
	if (s.code)
		return -s.code;
	/* Cut short: what is left (the spool names among it) is taken by the
	 * next call's pass over the top. */
	if (s.late)
		return 1;
	if (rmdir(path) < 0 && errno != ENOENT)
		return vmf_err_sys(err, errno, "cannot remove directory %s", path);
	return 0;
}

void
vmf_hex(const uint8_t *in, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[in[i] >> 4];
		out[2 * i + 1] = d[in[i] & 15];
	}
	out[2 * n] = '\0';
}

void
vmf_sha256_hex(const void *data, size_t len, char hex[VMF_SHA256_HEX])
{
	uint8_t md[32];
	unsigned int mdlen = 0;
	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	vmf_hex(md, 32, hex);
}

int
vmf_sha256_file(const char *path, char hex[VMF_SHA256_HEX], struct vmf_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot open %s", path);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(ctx);
		close(fd);
		return vmf_err(err, ENOMEM, "cannot set up SHA-256 for %s", path);
	}
	static __thread uint8_t buf[1 << 16];
	int r = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = vmf_err_sys(err, errno, "cannot read %s", path);
			break;
		}
		if (n == 0)
			break;
		EVP_DigestUpdate(ctx, buf, (size_t)n);
	}
	uint8_t md[32];
	unsigned int mdlen = 0;
	if (r == 0) {
		EVP_DigestFinal_ex(ctx, md, &mdlen);
		vmf_hex(md, 32, hex);
	}
	EVP_MD_CTX_free(ctx);
	close(fd);
	return r;
}

void
vmf_file_tail(const char *path, char *buf, size_t max)
{
	buf[0] = '\0';
	if (max < 8)
		return;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	off_t size = lseek(fd, 0, SEEK_END);
	size_t want = max - 4;
	off_t start = size > (off_t)want ? size - (off_t)want : 0;
	char *raw = malloc(want + 1), *esc = malloc(4 * want + 8);
	ssize_t n = raw && esc ? pread(fd, raw, want, start) : -1;
	close(fd);
	if (n <= 0) {
		free(raw);
		free(esc);
		return;
	}
	raw[n] = '\0';
	/* A serial console is the guest's to write: its lines escaped (a
	 * terminal, a log and a protobuf string all see this), the line
	 * breaks kept for reading; then the end that fits. */
	size_t e = 0;
	for (char *line = raw, *next; line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		e += vmf_escape(line, esc + e, 4 * want + 8 - e - 1, 0);
		if (next)
			esc[e++] = '\n';
		esc[e] = '\0';
	}
	const char *from = esc;
	bool cut = start > 0;
	if (e > want) {
		/* At a line's start if there is one, else at a character's:
		 * what is left is text, valid UTF-8 whatever the cut. */
		from = esc + (e - want);
		const char *nl = strchr(from, '\n');
		if (nl && nl + 1 < esc + e)
			from = nl + 1;
		else
			while ((*from & 0xc0) == 0x80)
				from++;
		cut = true;
	}
	snprintf(buf, max, "%s%s", cut ? "..." : "", from);
	free(raw);
	free(esc);
}

void
vmf_uuid_new(char out[VMF_UUID_STR])
{
	uuid_t u;
	uuid_generate_random(u);
	uuid_unparse_lower(u, out);
}

bool
vmf_valid_uuid(const char *s)
{
	if (!s || strlen(s) != 36)
		return false;
	for (int i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i])) {
			return false;
		}
	}
	return true;
}

bool
vmf_valid_pool_name(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > 32)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
			return false;
	return true;
}

bool
vmf_valid_sandbox_id(const char *s)
{
	if (!s || !isalnum((unsigned char)s[0]))
		return false;
	size_t n = strlen(s);
	if (n > 64)
		return false;
	for (size_t i = 1; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!isalnum(c) && c != '_' && c != '.' && c != '-')
			return false;
	}
	return true;
}

bool
vmf_valid_template_id(const char *s)
{
	if (!s || strlen(s) != 64)
		return false;
	for (int i = 0; i < 64; i++)
		if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i]))
			return false;
	return true;
}

uint64_t
vmf_proc_start_ticks(pid_t pid)
{
	char path[64], *buf = NULL;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (vmf_read_file(path, &buf, NULL, 8192, NULL) < 0)
		return 0;
	/* comm may contain spaces and parentheses: fields start after the last ')'. */
	char *p = strrchr(buf, ')');
	uint64_t ticks = 0;
	if (p) {
		int field = 2;
		/* strtok_r: worker threads check their VMs at the same time. */
		char *save = NULL;
		for (char *tok = strtok_r(p + 1, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
			if (++field == 22) {
				ticks = strtoull(tok, NULL, 10);
				break;
			}
		}
	}
	free(buf);
	return ticks;
}

bool
vmf_proc_alive(pid_t pid, uint64_t ticks)
{
	if (pid <= 0)
		return false;
	char path[64], *buf = NULL;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (vmf_read_file(path, &buf, NULL, 8192, NULL) < 0)
		return false;
	char *p = strrchr(buf, ')');
	bool zombie = p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
	free(buf);
	if (zombie)
		return false;
	return ticks == 0 || vmf_proc_start_ticks(pid) == ticks;
}

static uint64_t
file_field_kib(const char *path, const char *key)
{
	char *buf = NULL;
	if (vmf_read_file(path, &buf, NULL, 1 << 20, NULL) < 0)
		return 0;
	uint64_t v = 0;
	size_t kl = strlen(key);
	for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		if (strncmp(line, key, kl) == 0) {
			v = strtoull(line + kl, NULL, 10);
			break;
		}
	}
	free(buf);
	return v;
}

static uint64_t
proc_field_kib(pid_t pid, const char *file, const char *key)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
	return file_field_kib(path, key);
}

uint64_t
vmf_host_mem_available_mib(void)
{
	return file_field_kib("/proc/meminfo", "MemAvailable:") / 1024;
}

unsigned
vmf_host_cpus(void)
{
	/* The CPUs this process may run on (a cpuset may confine it), not
	 * every CPU online. */
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return (unsigned)CPU_COUNT(&set);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (unsigned)n : 1;
}

uint64_t
vmf_proc_pss_kib(pid_t pid)
{
	return proc_field_kib(pid, "smaps_rollup", "Pss:");
}

uint64_t
vmf_proc_rss_kib(pid_t pid)
{
	return proc_field_kib(pid, "status", "VmRSS:");
}

int
vmf_proc_fd_count(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

#ifdef VMF_FAULT_INJECTION
void
vmf_fault_point(const char *name)
{
	const char *want = getenv("VMFACTORY_FAULT");
	if (want && strcmp(want, name) == 0) {
		fprintf(stderr, "vmfactory: fault injection: killing myself at %s\n", name);
		kill(getpid(), SIGKILL);
	}
}

bool
vmf_fault_active(const char *name)
{
	const char *want = getenv("VMFACTORY_FAULT");
	return want && strcmp(want, name) == 0;
}

void
vmf_fault_pause(const char *name)
{
	const char *dir = getenv("VMFACTORY_FAULT_DIR");
	if (!vmf_fault_active(name) || !dir || !*dir)
		return;
	char paused[PATH_MAX], go[PATH_MAX];
	snprintf(paused, sizeof(paused), "%s/%s.paused", dir, name);
	snprintf(go, sizeof(go), "%s/%s.go", dir, name);
	/* An empty marker: the test only waits for it to exist. */
	int fd = open(paused, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	close(fd);
	fprintf(stderr, "vmfactory: fault injection: paused at %s until %s exists\n", name, go);
	int64_t deadline = vmf_now_ms() + 120000;
	while (access(go, F_OK) != 0 && vmf_now_ms() < deadline)
		poll(NULL, 0, 20);
}
#endif

int
vmf_open_beneath(const char *dir, const char *name, int flags, mode_t mode, struct vmf_error *err)
{
	if (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return vmf_err(err, EINVAL, "'%s' is not a plain file name", name);
	int dfd = open(dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return vmf_err_sys(err, errno, "cannot open directory %s", dir);
	struct open_how how = {
		.flags = (uint64_t)(flags | O_CLOEXEC),
		.mode = (flags & O_CREAT) ? mode : 0,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
	};
	int fd = (int)syscall(SYS_openat2, dfd, name, &how, sizeof(how));
	if (fd < 0 && (errno == ENOSYS || errno == EPERM))
		fd = openat(dfd, name, flags | O_CLOEXEC | O_NOFOLLOW, mode);
	int e = errno;
	close(dfd);
	if (fd < 0)
		return vmf_err_sys(err, e, "cannot open %s/%s%s", dir, name, e == ELOOP || e == EXDEV ?
				   " (a symlink stands there)" : "");
	return fd;
}

int
vmf_lock_state_dir(const char *state_dir, struct vmf_error *err)
{
	int fd = vmf_open_beneath(state_dir, "daemon.lock", O_RDWR | O_CREAT, 0600, err);
	if (fd < 0)
		return fd;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		close(fd);
		if (e == EWOULDBLOCK)
			return vmf_err(err, EWOULDBLOCK, "%s/daemon.lock is held by another vmfactory process (a daemon "
				       "on this state dir, or a template command)", state_dir);
		return vmf_err_sys(err, e, "cannot lock %s/daemon.lock", state_dir);
	}
	return fd;
}
