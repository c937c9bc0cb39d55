/* Process, vsock and snapshot-file plumbing of the VMM drivers (see
 * vmm_proc.h). */
#include "vmm_proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "sockaddr.h"
#include "util.h"

#define PACK_MAGIC "VMFSNAP1"
#define NAME_MAX_LEN 255

static int
pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

int
vmf_vmm_spawn(const struct vmf_vmm_spawn *s, struct vmf_vmm_proc *p, struct vmf_error *err)
{
	memset(p, 0, sizeof(*p));
	p->pidfd = -1;
	int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull < 0)
		return vmf_err_sys(err, errno, "cannot open /dev/null");
	int logfd = -1;
	if (s->log_name) {
		int flags = O_WRONLY | O_CREAT | (s->log_truncate ? O_TRUNC : O_APPEND);
		logfd = vmf_open_beneath(s->log_dir, s->log_name, flags, 0600, err);
		if (logfd < 0) {
			close(devnull);
			return logfd;
		}
	}
	int out = logfd >= 0 ? logfd : s->out_fd, errfd = logfd >= 0 ? logfd : devnull;
	/* Formatted here: the child may only make async-signal-safe calls. */
	char msg[PATH_MAX + 48];
	int msg_len = snprintf(msg, sizeof(msg), "vmfactory: cannot execute %s\n", s->argv[0]);
	if (msg_len < 0 || (size_t)msg_len >= sizeof(msg))
		msg_len = (int)sizeof(msg) - 1;
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		/* Child: only async-signal-safe calls until exec. */
		if (s->die_with_parent) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(127); /* the parent is already gone */
		}
		setsid(); /* own session: a daemon restart must not take the VMM down */
		sigset_t all;
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		struct sigaction dfl = { .sa_handler = SIG_DFL };
		for (int sig = 1; sig < NSIG; sig++)
			sigaction(sig, &dfl, NULL);
		dup2(devnull, 0);
		dup2(out, 1);
		dup2(errfd, 2);
		if (s->cwd && chdir(s->cwd) < 0)
			_exit(127);
		syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */);
		for (size_t i = 0; i < s->n_keep; i++)
			fcntl(s->keep_fds[i], F_SETFD, 0);
		execvp(s->argv[0], s->argv);
		ssize_t ignored = write(2, msg, (size_t)msg_len);
		(void)ignored;
		_exit(127);
	}
	int e = errno;
	if (logfd >= 0)
		close(logfd);
	close(devnull);
	if (pid < 0)
		return vmf_err_sys(err, e, "cannot fork %s", s->argv[0]);
	p->pid = pid;
	p->child = true;
	p->pidfd = pidfd_open_(pid);
	p->start_ticks = vmf_proc_start_ticks(pid);
	return 0;
}

void
vmf_vmm_attach(struct vmf_vmm_proc *p, pid_t pid, uint64_t start_ticks)
{
	memset(p, 0, sizeof(*p));
	p->pid = pid;
	p->start_ticks = start_ticks;
	p->child = false;
	p->pidfd = pidfd_open_(pid);
	/* The pidfd follows the process it was opened on, which must still be
	 * the recorded one (not a reuse of its pid). */
	if (p->pidfd >= 0 && start_ticks && vmf_proc_start_ticks(pid) != start_ticks)
		p->exited = true;
}

bool
vmf_vmm_exited(struct vmf_vmm_proc *p)
{
	if (p->exited || p->pid <= 0)
		return true;
	if (p->child) {
		int st;
		pid_t r = waitpid(p->pid, &st, WNOHANG);
		if (r == p->pid) {
			p->wstatus = st;
			p->status_known = true;
		}
		if (r == p->pid || (r < 0 && errno == ECHILD))
			p->exited = true;
	} else if (p->pidfd >= 0) {
		/* Readable once every thread has exited.  /proc shows the leader a
		 * zombie as soon as it has exited, while the other threads may
		 * still run. */
		struct pollfd pf = { .fd = p->pidfd, .events = POLLIN };
		if (poll(&pf, 1, 0) > 0)
			p->exited = true;
	} else if (!vmf_proc_alive(p->pid, p->start_ticks)) {
		p->exited = true;
	}
	return p->exited;
}

bool
vmf_vmm_exit_status(struct vmf_vmm_proc *p, struct vmf_vmm_exit *out)
{
	memset(out, 0, sizeof(*out));
	out->pid = p->pid;
	out->exit_code = -1;
	if (!vmf_vmm_exited(p))
		return false;
	if (p->status_known) {
		out->status_known = true;
		if (WIFEXITED(p->wstatus))
			out->exit_code = WEXITSTATUS(p->wstatus);
		else if (WIFSIGNALED(p->wstatus))
			out->signal = WTERMSIG(p->wstatus);
	}
	return true;
}

bool
vmf_vmm_wait_exit(struct vmf_vmm_proc *p, int64_t deadline_ms)
{
	for (;;) {
		if (vmf_vmm_exited(p))
			return true;
		int64_t left = deadline_ms - vmf_now_ms();
		if (left <= 0)
			return false;
		if (p->pidfd >= 0) {
			struct pollfd pf = { .fd = p->pidfd, .events = POLLIN };
			poll(&pf, 1, (int)(left > 1000 ? 1000 : left));
		} else {
			poll(NULL, 0, 10); /* no pidfd (old kernel): bounded re-check of /proc */
		}
	}
}

/* The logfmt key naming a process's VM; NULL without one. */
static const char *
vm_kv(char *buf, size_t n, const char *id)
{
	if (!id)
		return NULL;
	snprintf(buf, n, "vm=%s", id);
	return buf;
}

void
vmf_vmm_kill(struct vmf_vmm_proc *p, const char *what, const char *id)
{
	if (!vmf_vmm_exited(p))
		kill(p->pid, SIGKILL);
	char kv[96];
	if (!vmf_vmm_wait_exit(p, vmf_now_ms() + 5000))
		vmf_log_kv(VMF_LOG_ERROR, __func__, vm_kv(kv, sizeof(kv), id), "%s pid %d survived SIGKILL for 5 s",
			   what, (int)p->pid);
}

void
vmf_vmm_terminate(struct vmf_vmm_proc *p, int64_t deadline_ms, const char *what, const char *id)
{
	if (vmf_vmm_exited(p))
		return;
	kill(p->pid, SIGTERM);
	int64_t now = vmf_now_ms();
	if (vmf_vmm_wait_exit(p, now + (deadline_ms - now) / 2))
		return;
	char kv[96];
	vmf_log_kv(VMF_LOG_WARN, __func__, vm_kv(kv, sizeof(kv), id), "%s pid %d ignored SIGTERM; sending SIGKILL",
		   what, (int)p->pid);
	vmf_vmm_kill(p, what, id);
}

void
vmf_vmm_close(struct vmf_vmm_proc *p)
{
	if (p->pidfd >= 0)
		close(p->pidfd);
	p->pidfd = -1;
}

bool
vmf_vmm_cmdline_has(pid_t pid, const char *arg)
{
	char path[64], *buf = NULL;
	size_t len;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	if (vmf_read_file(path, &buf, &len, 1 << 20, NULL) < 0)
		return false;
	bool found = false;
	size_t al = strlen(arg);
	for (size_t off = 0; off < len && !found;) {
		const char *a = buf + off;
		size_t l = strnlen(a, len - off);
		found = (l == al && memcmp(a, arg, al) == 0) ||
			(l > al && a[l - al - 1] == '=' && memcmp(a + l - al, arg, al) == 0);
		off += l + 1;
	}
	free(buf);
	return found;
}

int
vmf_vmm_connect_unix(const char *path, struct vmf_error *err)
{
	struct sockaddr_un sa;
	int r = vmf_unix_addr(&sa, NULL, path, err);
	if (r < 0)
		return r;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		return vmf_err_sys(err, e, "cannot connect to %s", path);
	}
	return fd;
}

int
vmf_vmm_wait_socket(struct vmf_vmm_proc *p, const char *vmm, const char *path, int timeout_ms,
		    struct vmf_error *err)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	for (;;) {
		struct vmf_error e;
		int fd = vmf_vmm_connect_unix(path, &e);
		if (fd >= 0) {
			close(fd);
			return 0;
		}
		if (e.code == ENAMETOOLONG)
			return vmf_err(err, e.code, "%s", e.msg);
		if (vmf_vmm_exited(p))
			return vmf_err(err, ECHILD, "%s pid %d exited before its API socket %s answered",
				       vmm, (int)p->pid, path);
		if (vmf_now_ms() >= deadline)
			return vmf_err(err, ETIMEDOUT, "%s pid %d: API socket %s did not answer within %d ms",
				       vmm, (int)p->pid, path, timeout_ms);
		if (p->pidfd >= 0) {
			struct pollfd pf = { .fd = p->pidfd, .events = POLLIN };
			poll(&pf, 1, 10);
		} else {
			poll(NULL, 0, 10);
		}
	}
}

/* Reads one line ending in '\n' before deadline; returns its length. */
static int
read_line(int fd, char *line, size_t max, int64_t deadline)
{
	size_t n = 0;
	while (n + 1 < max) {
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		int pr = poll(&pf, 1, left);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0)
			return -ETIMEDOUT;
		ssize_t r = read(fd, line + n, 1); /* byte by byte: never read past the line */
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? -ECONNRESET : -errno;
		if (line[n] == '\n') {
			line[n] = '\0';
			return (int)n;
		}
		n++;
	}
	return -EPROTO;
}

int
vmf_vmm_vsock_connect(const char *uds, unsigned port, int timeout_ms, struct vmf_error *err)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	char last[160] = "no attempt made";
	for (;;) {
		struct vmf_error e;
		int fd = vmf_vmm_connect_unix(uds, &e);
		if (fd >= 0) {
			char req[32], line[64];
			int n = snprintf(req, sizeof(req), "CONNECT %u\n", port);
			int r = write(fd, req, (size_t)n) == n ? read_line(fd, line, sizeof(line), deadline) : -errno;
			if (r >= 0 && strncmp(line, "OK ", 3) == 0)
				return fd;
			if (r >= 0)
				snprintf(last, sizeof(last), "the VMM answered '%.40s'", line);
			else
				snprintf(last, sizeof(last), "%s", strerror(-r));
			close(fd);
		} else {
			snprintf(last, sizeof(last), "%s", e.msg);
			if (e.code == ENAMETOOLONG)
				return vmf_err(err, e.code, "%s", e.msg);
		}
		if (vmf_now_ms() >= deadline)
			return vmf_err(err, ETIMEDOUT, "vsock %s port %u did not accept a connection within "
				       "%d ms: %s", uds, port, timeout_ms, last);
		poll(NULL, 0, 50);
	}
}

/* ---- state stream ---- */

static int
write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static int
read_all(int fd, void *p, size_t n)
{
	char *c = p;
	while (n) {
		ssize_t r = read(fd, c, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EPIPE;
		c += r;
		n -= (size_t)r;
	}
	return 0;
}

#define COPY_BUF (1 << 16)

static int
copy_n(int in, int out, uint64_t n)
{
	char *buf = malloc(COPY_BUF);
	if (!buf)
		return -ENOMEM;
	int r = 0;
	while (n && r == 0) {
		size_t k = n > COPY_BUF ? COPY_BUF : (size_t)n;
		r = read_all(in, buf, k);
		if (r == 0)
			r = write_all(out, buf, k);
		n -= k;
	}
	free(buf);
	return r;
}

static int
pack_one(int fd, const char *dir, const char *name, struct vmf_error *err)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int in = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (in < 0 || fstat(in, &st) < 0) {
		int e = errno;
		if (in >= 0)
			close(in);
		return vmf_err_sys(err, e, "cannot read snapshot file %s", path);
	}
	uint32_t nl = (uint32_t)strlen(name);
	uint64_t size = (uint64_t)st.st_size;
	int r = write_all(fd, &nl, sizeof(nl));
	if (r == 0)
		r = write_all(fd, name, nl);
	if (r == 0)
		r = write_all(fd, &size, sizeof(size));
	if (r == 0)
		r = copy_n(in, fd, size);
	close(in);
	if (r < 0)
		return vmf_err_sys(err, -r, "cannot copy snapshot file %s into the state stream", path);
	return 0;
}

int
vmf_vmm_pack(int fd, const char *dir, const char *const *names, struct vmf_error *err)
{
	int r = write_all(fd, PACK_MAGIC, 8);
	if (r < 0)
		return vmf_err_sys(err, -r, "cannot write the state stream");
	if (names) {
		for (; *names && r == 0; names++)
			r = pack_one(fd, dir, *names, err);
	} else {
		DIR *d = opendir(dir);
		if (!d)
			return vmf_err_sys(err, errno, "cannot list snapshot directory %s", dir);
		struct dirent *de;
		while (r == 0 && (de = readdir(d))) {
			if (de->d_type != DT_REG)
				continue;
			r = pack_one(fd, dir, de->d_name, err);
		}
		closedir(d);
	}
	if (r < 0)
		return r;
	uint32_t end = 0;
	if ((r = write_all(fd, &end, sizeof(end))) < 0)
		return vmf_err_sys(err, -r, "cannot write the state stream");
	return 0;
}

int
vmf_vmm_unpack(int fd, const char *dir, struct vmf_error *err)
{
	char magic[8];
	int r = read_all(fd, magic, sizeof(magic));
	if (r < 0 || memcmp(magic, PACK_MAGIC, 8) != 0)
		return vmf_err(err, EPROTO, "the state stream is not a vmfactory VMM snapshot (bad magic)");
	if (vmf_mkdir_p(dir, 0700, err) < 0)
		return -err->code;
	for (;;) {
		uint32_t nl;
		char name[NAME_MAX_LEN + 1];
		uint64_t size;
		if ((r = read_all(fd, &nl, sizeof(nl))) < 0)
			return vmf_err_sys(err, -r, "truncated state stream");
		if (nl == 0)
			return 0;
		if (nl > NAME_MAX_LEN)
			return vmf_err(err, EPROTO, "state stream names a file of %u bytes", nl);
		if ((r = read_all(fd, name, nl)) < 0 || (r = read_all(fd, &size, sizeof(size))) < 0)
			return vmf_err_sys(err, -r, "truncated state stream");
		name[nl] = '\0';
		if (strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
			return vmf_err(err, EPROTO, "state stream holds a bad file name '%s'", name);
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (out < 0)
			return vmf_err_sys(err, errno, "cannot create %s", path);
		r = copy_n(fd, out, size);
		close(out);
		if (r < 0)
			return vmf_err_sys(err, -r, "cannot restore %s from the state stream", path);
	}
}

int
vmf_vmm_probe_version(const char *bin, const char *what, const char *package, const char *marker,
		      const char *stop, char *version, size_t n, struct vmf_error *err)
{
	version[0] = '\0';
	if (strchr(bin, '\''))
		return vmf_err(err, EINVAL, "%s binary path %s contains a quote", what, bin);
	char cmd[PATH_MAX + 32];
	snprintf(cmd, sizeof(cmd), "'%s' --version 2>/dev/null", bin);
	FILE *p = popen(cmd, "re");
	if (!p)
		return vmf_err_sys(err, errno, "cannot run %s", bin);
	char line[256] = "";
	char *got = fgets(line, sizeof(line), p);
	int st = pclose(p);
	const char *v = got ? strstr(line, marker) : NULL;
	if (!v || st != 0)
		return vmf_err(err, ENOENT, "%s binary %s did not report a version (is %s installed?)", what, bin,
			       package ? package : "it");
	v += strlen(marker);
	size_t len = strcspn(v, stop);
	if (len >= n)
		len = n - 1;
	memcpy(version, v, len);
	version[len] = '\0';
	return 0;
}
