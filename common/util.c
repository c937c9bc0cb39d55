#include "util.h"
#include "frame.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <sys/syscall.h>
#include <linux/openat2.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>
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

static int
rm_at(int parent, const char *name, const char *shown, struct vmf_error *err)
{
	struct stat st;
	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : vmf_err_sys(err, errno, "cannot stat %s", shown);
	if (!S_ISDIR(st.st_mode)) {
		if (unlinkat(parent, name, 0) < 0 && errno != ENOENT)
			return vmf_err_sys(err, errno, "cannot remove %s", shown);
		return 0;
	}
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot open %s", shown);
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return vmf_err_sys(err, errno, "cannot list %s", shown);
	}
	int r = 0;
	struct dirent *de;
	while (r == 0 && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		r = rm_at(dirfd(d), de->d_name, shown, err);
	}
	closedir(d);
	if (r == 0 && unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		return vmf_err_sys(err, errno, "cannot remove directory %s", shown);
	return r;
}

int
vmf_rm_rf(const char *path, struct vmf_error *err)
{
	return rm_at(AT_FDCWD, path, path, err);
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
	ssize_t n = pread(fd, buf + (start ? 3 : 0), want, start);
	close(fd);
	if (n <= 0) {
		buf[0] = '\0';
		return;
	}
	if (start)
		memcpy(buf, "...", 3);
	size_t end = (size_t)n + (start ? 3 : 0);
	buf[end] = '\0';
	/* Control characters from a serial console would garble a one-line error. */
	for (size_t i = 0; i < end; i++)
		if ((unsigned char)buf[i] < 0x20 && buf[i] != '\n')
			buf[i] = ' ';
}

size_t
vmf_escape(const char *in, size_t n, char *out, size_t outn, bool multiline)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];
		char esc[5];
		size_t el = 1;
		/* A console's "\r\n" is a line end. */
		if (c == '\r' && multiline && i + 1 < n && in[i + 1] == '\n')
			continue;
		if (c == '\\')
			memcpy(esc, "\\\\", el = 2);
		else if (c == '\n' && !multiline)
			memcpy(esc, "\\n", el = 2);
		else if (c == '\t')
			memcpy(esc, "\\t", el = 2);
		else if (c == '\n' || (c >= 0x20 && c < 0x7f))
			esc[0] = (char)c;
		else
			el = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", c);
		if (k + el + 1 > outn)
			break;
		memcpy(out + k, esc, el);
		k += el;
	}
	if (outn)
		out[k] = '\0';
	return k;
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
proc_field_kib(pid_t pid, const char *file, const char *key)
{
	char path[64], *buf = NULL;
	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
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
