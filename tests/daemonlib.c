/* End-to-end daemon tests: a private daemon (own socket, state and run dirs)
 * driven through the vmfactory CLI, real QEMU VMs under TCG.  What every
 * daemon test program shares: its dirs, running the CLI, reading status,
 * counting QEMU processes, raw connections, and the cleanup that leaves
 * nothing behind. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <signal.h>
#include <sys/wait.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

char *tmp;
char svc[600], sock[600], state[600], run[600], common_opts[2200], exe[600];
const char *fault;

bool
test_selected(const char *name)
{
	const char *only = getenv("VMFACTORY_TEST");
	if (!only)
		return true;
	size_t n = strlen(name);
	for (const char *p = only; (p = strstr(p, name)); p += n)
		if ((p == only || p[-1] == ' ' || p[-1] == ',') && (!p[n] || p[n] == ' ' || p[n] == ','))
			return true;
	return false;
}

void
setup(void)
{
	const char *img = vmf_test_image_dir();
	ck_assert_msg(img != NULL, "guest image missing");
	tmp = vmf_test_tmpdir("vmf-daemon");
	/* Sandbox paths go in tmp, the sandbox root; the daemon's own dirs
	 * beside it (a root may not contain them).  Its name starts with
	 * tmp's, so every sweep by tmp's name covers it. */
	snprintf(svc, sizeof svc, "%s-svc", tmp);
	ck_assert_int_eq(mkdir(svc, 0700), 0);
	snprintf(sock, sizeof sock, "%s/vmfactory.sock", tmp);
	snprintf(state, sizeof state, "%s/state", svc);
	snprintf(run, sizeof run, "%s/run", svc);
	setenv("VMFACTORY_SANDBOX_ROOTS", tmp, 1);
	const char *b = getenv("VMFACTORY_BUILDDIR");
	snprintf(exe, sizeof exe, "%s/vmfactory", b ? b : ".");
	snprintf(common_opts, sizeof common_opts, "--socket %s --state-dir %s --run-dir %s", sock, state, run);
	setenv("VMFACTORY_IMAGE_DIR", img, 1);
}

/* Runs `vmfactory ARGS`; returns the exit status, stdout in *out. */
int
vmf(char **out, const char *fmt, ...)
{
	char args[4096], cmd[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof args, fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof cmd, "%s%s%s%s %s %s 2>>%s/cli.err", fault ? "VMFACTORY_FAULT=" : "", fault ? fault : "",
		 fault ? " " : "", exe, args, common_opts, tmp);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	size_t r;
	while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
		n += r;
		if (n + 1 >= cap)
			buf = realloc(buf, cap *= 2);
	}
	buf[n] = '\0';
	int st = pclose(p);
	if (out)
		*out = buf;
	else
		free(buf);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

json_object *
vmf_json(const char *fmt, const char *arg)
{
	char *out;
	int rc = vmf(&out, fmt, arg);
	char errf[700], *err = NULL;
	snprintf(errf, sizeof errf, "%s/cli.err", tmp);
	vmf_read_file(errf, &err, NULL, 1 << 20, NULL);
	ck_assert_msg(rc == 0, "vmfactory %s %s exited %d: %s", fmt, arg, rc, err ? err : "");
	free(err);
	json_object *j = json_tokener_parse(out);
	ck_assert_msg(j != NULL, "not JSON: %s", out);
	free(out);
	return j;
}

json_object *
path(json_object *o, const char *a, const char *b)
{
	json_object *x = NULL, *y = NULL;
	ck_assert_msg(json_object_object_get_ex(o, a, &x), "missing key %s", a);
	if (!b)
		return x;
	ck_assert_msg(json_object_object_get_ex(x, b, &y), "missing key %s.%s", a, b);
	return y;
}

int
pool_ready(void)
{
	json_object *s = vmf_json("status -o json%s", "");
	json_object *pools = path(s, "pools", NULL);
	int ready = json_object_get_int(path(json_object_array_get_idx(pools, 0), "ready", NULL));
	json_object_put(s);
	return ready;
}

/* QEMU processes whose command line mentions our run dir. */
int
count_qemu(void)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	int n = 0;
	while ((de = readdir(d))) {
		int pid = atoi(de->d_name);
		if (pid <= 0)
			continue;
		char p[64], *buf = NULL;
		size_t len;
		snprintf(p, sizeof p, "/proc/%d/cmdline", pid);
		if (vmf_read_file(p, &buf, &len, 1 << 20, NULL) < 0)
			continue;
		bool qemu = strstr(buf, "qemu-system") != NULL;
		for (size_t i = 0; i < len; i++)
			if (!buf[i])
				buf[i] = ' ';
		if (qemu && strstr(buf, run))
			n++;
		free(buf);
	}
	closedir(d);
	return n;
}

/* QEMU processes under our run dir, once the ones just stopped have
 * finished exiting (10 s at most: a QEMU still there then was leaked). */
int
qemu_gone(void)
{
	int64_t deadline = vmf_now_ms() + 10000;
	int n;
	while ((n = count_qemu()) > 0 && vmf_now_ms() < deadline)
		poll(NULL, 0, 50);
	return n;
}

/* No QEMU under our run dir may hold a file of the catalog: QEMU outlives
 * the daemon and must not keep its database open. */
void
assert_qemu_fds_clean(void)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	int checked = 0;
	while ((de = readdir(d))) {
		int pid = atoi(de->d_name);
		char p[64], *cmd = NULL;
		size_t len;
		snprintf(p, sizeof p, "/proc/%d/cmdline", pid);
		if (pid <= 0 || vmf_read_file(p, &cmd, &len, 1 << 20, NULL) < 0)
			continue;
		for (size_t i = 0; i < len; i++)
			if (!cmd[i])
				cmd[i] = ' ';
		bool ours = strstr(cmd, "qemu-system") && strstr(cmd, run);
		free(cmd);
		if (!ours)
			continue;
		snprintf(p, sizeof p, "/proc/%d/fd", pid);
		DIR *fds = opendir(p);
		struct dirent *f;
		while (fds && (f = readdir(fds))) {
			char lp[128], target[700];
			snprintf(lp, sizeof lp, "/proc/%d/fd/%s", pid, f->d_name);
			ssize_t n = readlink(lp, target, sizeof target - 1);
			if (n <= 0)
				continue;
			target[n] = 0;
			ck_assert_msg(!strstr(target, "/catalog/"), "QEMU pid %d holds %s", pid, target);
		}
		if (fds)
			closedir(fds);
		checked++;
	}
	closedir(d);
	ck_assert_int_gt(checked, 0);
}

void
do_get(struct got *g, const char *name, int cpus, int mem)
{
	snprintf(g->share, sizeof g->share, "%s/%s-share", tmp, name);
	snprintf(g->sockd, sizeof g->sockd, "%s/%s-sock", tmp, name);
	char *out;
	g->rc = vmf(&out, "get --cpus %d --memory %d --sandbox %s --share-dir %s --sock-dir %s --timeout 120 -o json",
		    cpus, mem, name, g->share, g->sockd);
	g->rec = g->rc == 0 ? json_tokener_parse(out) : NULL;
	free(out);
	if (g->rec)
		snprintf(g->id, sizeof g->id, "%s", json_object_get_string(path(g->rec, "id", NULL)));
}

char *
vm_sh(const char *id, const char *cmd)
{
	/* The CLI's options before "--": everything after it is the command's. */
	char line[4096];
	snprintf(line, sizeof line, "%s exec %s %s -- sh -c '%s' 2>>%s/cli.err", exe, id, common_opts, cmd, tmp);
	FILE *p = popen(line, "r");
	ck_assert_ptr_nonnull(p);
	char *out = calloc(1, 4096);
	size_t n = fread(out, 1, 4095, p);
	int st = pclose(p);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		char errf[700], *err = NULL;
		snprintf(errf, sizeof errf, "%s/cli.err", tmp);
		vmf_read_file(errf, &err, NULL, 1 << 20, NULL);
		ck_abort_msg("exec in %s: %s failed (status %d): %s", id, cmd, st, err ? err : "");
	}
	while (n && out[n - 1] == '\n')
		out[--n] = '\0';
	return out;
}

void *
get_thread(void *arg)
{
	struct got *g = arg;
	do_get(g, g->id, 1, 256);
	return NULL;
}

/* The first sanitizer report in a daemon log under dir (each daemon's
 * <state>/vmfactory.log, and the NAME.log a test gives start_foreground),
 * with some context, into msg; false when there is none. */
static bool
find_report(const char *dir, int depth, char *msg, size_t n)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	bool found = false;
	while (d && !found && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char p[PATH_MAX];
		snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
		size_t l = strlen(de->d_name);
		if (de->d_type == DT_DIR && depth > 0) {
			found = find_report(p, depth - 1, msg, n);
			continue;
		}
		if (de->d_type != DT_REG || l < 4 || strcmp(de->d_name + l - 4, ".log"))
			continue;
		char *log = NULL;
		if (vmf_read_file(p, &log, NULL, 64 << 20, NULL) < 0)
			continue;
		const char *hit = strstr(log, "Sanitizer");
		if (!hit)
			hit = strstr(log, "runtime error:");
		if (hit) {
			const char *from = hit - log > 200 ? hit - 200 : log;
			snprintf(msg, n, "%s has a sanitizer report: %.1500s", p, from);
			found = true;
		}
		free(log);
	}
	if (d)
		closedir(d);
	return found;
}

/* The daemons' stderr (a sanitizer's reports included) is their log. */
void
assert_daemon_log_clean(void)
{
	static char msg[2000];
	ck_assert_msg(!find_report(tmp, 4, msg, sizeof msg), "%s", msg);
}

int
daemon_pid(void)
{
	json_object *s = vmf_json("status -o json%s", "");
	int pid = json_object_get_int(path(s, "daemon", "pid"));
	json_object_put(s);
	return pid;
}

/* Pids of the VMs in status with the given state, sorted, as a string. */
void
pids_in_state(const char *want, char *out, size_t n)
{
	json_object *s = vmf_json("status -o json%s", "");
	json_object *vms = path(s, "vms", NULL);
	int pids[64], k = 0;
	for (size_t i = 0; i < json_object_array_length(vms) && k < 64; i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (!strcmp(json_object_get_string(path(v, "state", NULL)), want))
			pids[k++] = json_object_get_int(path(v, "pid", NULL));
	}
	json_object_put(s);
	for (int i = 1; i < k; i++)
		for (int j = i; j > 0 && pids[j - 1] > pids[j]; j--) {
			int t = pids[j];
			pids[j] = pids[j - 1];
			pids[j - 1] = t;
		}
	out[0] = 0;
	for (int i = 0; i < k; i++)
		snprintf(out + strlen(out), n - strlen(out), "%d ", pids[i]);
}

const char *
vm_listed_state(const char *id)
{
	static char st[32];
	st[0] = '\0';
	json_object *s = vmf_json("status -o json%s", "");
	json_object *vms = path(s, "vms", NULL);
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (!strcmp(json_object_get_string(path(v, "id", NULL)), id))
			snprintf(st, sizeof st, "%s", json_object_get_string(path(v, "state", NULL)));
	}
	json_object_put(s);
	return st;
}

int
vm_count(void)
{
	json_object *s = vmf_json("status -o json%s", "");
	int n = (int)json_object_array_length(path(s, "vms", NULL));
	json_object_put(s);
	return n;
}

void
kill_daemon_hard(void)
{
	int pid = daemon_pid();
	ck_assert_int_eq(kill(pid, SIGKILL), 0);
	int64_t deadline = vmf_now_ms() + 10000;
	while (kill(pid, 0) == 0 && vmf_now_ms() < deadline)
		poll(NULL, 0, 20);
}

void
use_dirs(const char *sub)
{
	snprintf(sock, sizeof sock, "%s/%s.sock", tmp, sub);
	snprintf(state, sizeof state, "%s/%s/state", svc, sub);
	snprintf(run, sizeof run, "%s/%s/run", svc, sub);
	snprintf(common_opts, sizeof common_opts, "--socket %s --state-dir %s --run-dir %s", sock, state, run);
}

/* A raw connection to the daemon, for what the client library never sends. */
int
raw_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	return fd;
}

/* Reads a reply frame; returns its error_code, or -1 on EOF. */
int
raw_reply(int fd)
{
	uint8_t *buf;
	size_t n;
	struct vmf_error e = {0};
	if (vmf_frame_read(fd, &buf, &n, 1 << 20, vmf_now_ms() + 5000, &e) < 0)
		return -1;
	Vmf__Control__Reply *r = vmf__control__reply__unpack(NULL, n, buf);
	free(buf);
	ck_assert_ptr_nonnull(r);
	int code = r->error_code;
	vmf__control__reply__free_unpacked(r, NULL);
	return code;
}

bool
closed_by_peer(int fd)
{
	char c;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 5000) == 1 && read(fd, &c, 1) == 0;
}

/* Starts `vmfactory init --foreground` with its own socket and state dir in
 * the background (its stderr in LOG); returns its pid. */
pid_t
start_foreground(const char *socket, const char *state_dir, const char *log, const char *extra)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "exec %s init --foreground --socket %s --state-dir %s --run-dir %s %s 2>%s", exe,
		 socket, state_dir, run, extra, log);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* The first pool of the daemon on socket, via the client library: its
 * failure count and last error; -1 when the daemon does not answer. */
int
pool_failures(const char *socket, char *last_error, size_t n)
{
	struct vmf_client *c;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r = NULL;
	if (vmf_client_connect(socket, &c, &e) < 0)
		return -1;
	int rc = vmf_client_status(c, &r, 5000, &e);
	vmf_client_close(c);
	if (rc < 0)
		return -1;
	int failed = -1;
	if (r->status && r->status->n_pools > 0) {
		failed = (int)r->status->pools[0]->failed;
		snprintf(last_error, n, "%s", r->status->pools[0]->last_error ? r->status->pools[0]->last_error : "");
	}
	vmf__control__reply__free_unpacked(r, NULL);
	return failed;
}

void
stop_daemon(pid_t pid)
{
	kill(pid, SIGTERM);
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
}

/* Whatever a test left behind must not outlive it.  (When an assertion
 * fails, CK_FORK skips teardown; the runner sweeps instead: testlib.c.) */
/* Detaches every mount below dir, the deepest first; how many. */
static int
unmount_under(const char *dir)
{
	int total = 0;
	for (int round = 0; round < 8; round++) {
		char *mi = NULL;
		if (vmf_read_file("/proc/self/mountinfo", &mi, NULL, 1 << 22, NULL) < 0)
			return total;
		int n = 0;
		size_t l = strlen(dir);
		for (char *line = strtok(mi, "\n"); line; line = strtok(NULL, "\n")) {
			char mp[PATH_MAX];
			if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && !strncmp(mp, dir, l) && mp[l] == '/' &&
			    umount2(mp, MNT_DETACH) == 0)
				n++;
		}
		free(mi);
		total += n;
		if (n == 0)
			break;
	}
	return total;
}

void
cleanup(void)
{
	if (!tmp)
		return;
	vmf(NULL, "destroy --all");
	/* A daemon's last reports (a race or a leak at exit) come as it exits. */
	int64_t deadline = vmf_now_ms() + 20000;
	while (vmf_test_count_under("vmfactory", tmp) > 0 && vmf_now_ms() < deadline)
		poll(NULL, 0, 50);
	/* The daemon first: it would replace the VMs killed next. */
	fault = NULL;
	if (vmf_test_kill_under("vmfactory", tmp))
		fprintf(stderr, "teardown: killed a daemon left by a failed test\n");
	if (vmf_test_kill_qemu_under(tmp))
		fprintf(stderr, "teardown: killed QEMU processes left by a failed test\n");
	/* A fake Firecracker's template build never ends (no guest agent), so
	 * the daemon killed above may leave its VMM: after the daemon, or a
	 * build started meanwhile would outlive the test. */
	vmf_test_kill_under("fake_vmm", tmp);
	/* A test's own mounts, and VM shares' (each a tmpfs) whose daemon was
	 * killed with them: never removed through. */
	int n = unmount_under(svc);
	if (n)
		fprintf(stderr, "teardown: unmounted %d file system%s left under %s\n", n, n == 1 ? "" : "s", svc);
	/* Every daemon test checks its daemons' logs, whatever it ran. */
	static char msg[2000];
	bool report = find_report(tmp, 4, msg, sizeof msg);
	struct vmf_error e;
	vmf_rm_rf(svc, &e);
	vmf_rm_rf(tmp, &e);
	free(tmp);
	tmp = NULL;
	ck_assert_msg(!report, "%s", msg);
}

void
setup_fake_firecracker(char *cfg, size_t cfg_n, char *fake, size_t fake_n)
{
	setup();
	const char *b = getenv("VMFACTORY_BUILDDIR");
	snprintf(fake, fake_n, "%s/tests/fake_vmm", b ? b : ".");
	ck_assert_msg(access(fake, X_OK) == 0, "fake VMM %s missing", fake);
	snprintf(cfg, cfg_n, "%s/vmfactory.conf", tmp);
	FILE *f = fopen(cfg, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "[hypervisor]\ntype = firecracker\nbinary = %s\n[guest]\nimage_dir = %s\n[pool one]\nsize = 1\n",
		fake, getenv("VMFACTORY_IMAGE_DIR"));
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_int_eq(mkdir(state, 0700), 0);
}

bool
daemon_answers(void)
{
	struct vmf_client *c;
	struct vmf_error e = {0};
	if (vmf_client_connect(sock, &c, &e) < 0)
		return false;
	Vmf__Control__Reply *r = NULL;
	bool ok = vmf_client_status(c, &r, 5000, &e) == 0;
	if (r)
		vmf__control__reply__free_unpacked(r, NULL);
	vmf_client_close(c);
	return ok;
}

/* A free TCP port on 127.0.0.1 (bound, then released). */
int
free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t n = sizeof sa;
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &n), 0);
	close(fd);
	return ntohs(sa.sin_port);
}

/* GET http://127.0.0.1:port/path; the whole response (headers too). */
char *
http_get(int port, const char *pathq)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	char req[256];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", pathq);
	ck_assert_int_eq(write(fd, req, n), n);
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);
	ssize_t r;
	while ((r = read(fd, buf + len, cap - len - 1)) > 0)
		len += (size_t)r;
	buf[len] = 0;
	close(fd);
	return buf;
}

struct tenant_users tu;
static pid_t tenant_main_pid;

static int
sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int
sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Only in the process that made them: Check runs each test in a child that
 * exits through exit(), atexit handlers and all. */
void
tenant_users_remove(void)
{
	if (getpid() != tenant_main_pid || !tu.group[0])
		return;
	sh("userdel %s >/dev/null 2>&1", tu.a);
	sh("userdel %s >/dev/null 2>&1", tu.b);
	sh("groupdel %s >/dev/null 2>&1", tu.group);
	tu.group[0] = '\0';
}

static void
tenant_on_signal(int sig)
{
	tenant_users_remove();
	signal(sig, SIG_DFL);
	raise(sig);
}

const char *
tenant_users_make(const char *prefix)
{
	if (geteuid() != 0)
		return "creating users needs root";
	if (access("/usr/sbin/useradd", X_OK) != 0 || access("/usr/sbin/groupadd", X_OK) != 0)
		return "useradd/groupadd are not installed";
	int pid = (int)getpid();
	tenant_main_pid = getpid();
	snprintf(tu.group, sizeof tu.group, "%s%dg", prefix, pid);
	snprintf(tu.a, sizeof tu.a, "%s%da", prefix, pid);
	snprintf(tu.b, sizeof tu.b, "%s%db", prefix, pid);
	atexit(tenant_users_remove);
	signal(SIGTERM, tenant_on_signal);
	signal(SIGINT, tenant_on_signal);
	if (sh("groupadd %s", tu.group) != 0)
		return "groupadd failed";
	if (sh("useradd -M -N -g %s -s /usr/sbin/nologin %s", tu.group, tu.a) != 0 ||
	    sh("useradd -M -N -g %s -s /usr/sbin/nologin %s", tu.group, tu.b) != 0)
		return "useradd failed";
	/* getpwnam's result is overwritten by the next call. */
	struct passwd *pw = getpwnam(tu.a);
	if (!pw)
		return "the new users are not found through NSS";
	tu.uid_a = pw->pw_uid;
	if (!(pw = getpwnam(tu.b)))
		return "the new users are not found through NSS";
	tu.uid_b = pw->pw_uid;
	struct group *gr = getgrnam(tu.group);
	if (!gr)
		return "the new group is not found through NSS";
	tu.gid = gr->gr_gid;
	return NULL;
}

void
host_cat(const char *img, const char *file, char *out, size_t n)
{
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "PATH=$PATH:/sbin:/usr/sbin debugfs -R 'cat %s' %s 2>/dev/null", file, img);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	size_t got = fread(out, 1, n - 1, p);
	out[got] = 0;
	pclose(p);
}

const char *
tenant_image_check(const char *const *mods, const char *prefix)
{
	static char why[900];
	const char *img = vmf_test_image_dir();
	char manifest[700], *m = NULL;
	snprintf(manifest, sizeof manifest, "%s/manifest", img ? img : "");
	if (!img || vmf_read_file(manifest, &m, NULL, 1 << 20, NULL) < 0) {
		snprintf(why, sizeof why, "the guest image %s has no manifest", img ? img : "(none)");
		return why;
	}
	for (; *mods; mods++)
		if (!strstr(m, *mods)) {
			snprintf(why, sizeof why, "the guest image %s lacks the module %s; rebuild it with "
				 "contrib/image/build-image", img, *mods);
			free(m);
			return why;
		}
	free(m);
	const char *t = tenant_users_make(prefix);
	if (t)
		tenant_users_remove();
	return t;
}

bool
become_tenant(uid_t uid)
{
	return setgroups(1, &tu.gid) == 0 && setgid(tu.gid) == 0 && setuid(uid) == 0;
}

void
as_user(uid_t uid, act_fn fn, const void *arg, struct act *out)
{
	int p[2];
	ck_assert_int_eq(pipe(p), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		close(p[0]);
		char msg[1100] = "";
		int rc = -EPERM;
		if (become_tenant(uid))
			rc = fn(arg, msg, sizeof msg);
		else
			snprintf(msg, sizeof msg, "cannot become uid %u: %s", (unsigned)uid, strerror(errno));
		ssize_t w = write(p[1], &rc, sizeof rc);
		w += write(p[1], msg, strlen(msg) + 1);
		_exit(w > 0 ? 0 : 1);
	}
	close(p[1]);
	memset(out, 0, sizeof *out);
	out->rc = -EIO;
	ssize_t n = read(p[0], &out->rc, sizeof out->rc);
	size_t got = 0;
	while (n > 0 && got < sizeof out->msg - 1 && (n = read(p[0], out->msg + got, sizeof out->msg - 1 - got)) > 0)
		got += (size_t)n;
	close(p[0]);
	int st;
	waitpid(pid, &st, 0);
}

int
tenant_sh(uid_t uid, const char *script, char *out, size_t n)
{
	int p[2];
	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		dup2(p[1], 1);
		dup2(p[1], 2);
		if (!become_tenant(uid))
			_exit(99);
		execl("/bin/sh", "sh", "-c", script, (char *)NULL);
		_exit(98);
	}
	close(p[1]);
	size_t got = 0;
	ssize_t r;
	while (got < n - 1 && (r = read(p[0], out + got, n - 1 - got)) > 0)
		got += (size_t)r;
	out[got] = '\0';
	char sink[512];
	while (read(p[0], sink, sizeof sink) > 0)
		;
	close(p[0]);
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int
tenant_vmf(uid_t uid, char *out, size_t n, const char *fmt, ...)
{
	char args[3000], script[6000];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof args, fmt, ap);
	va_end(ap);
	snprintf(script, sizeof script, "exec %s %s %s", exe, args, common_opts);
	return tenant_sh(uid, script, out, n);
}

const char *
guest_image_lacks(const char *const *modules)
{
	const char *img = vmf_test_image_dir();
	char manifest[700], *m = NULL;
	snprintf(manifest, sizeof manifest, "%s/manifest", img ? img : "/nonexistent");
	if (!img || vmf_read_file(manifest, &m, NULL, 1 << 20, NULL) < 0)
		return "a guest image";
	const char *missing = NULL;
	for (size_t i = 0; modules[i] && !missing; i++)
		if (!strstr(m, modules[i]))
			missing = modules[i];
	free(m);
	return missing;
}

int failures;

void
check(bool ok, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs(ok ? "ok:   " : "FAIL: ", stdout);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	va_end(ap);
	fflush(stdout);
	failures += !ok;
}

void
start_tenant_daemon(const char *extra)
{
	if (vmf(NULL, "init --pool 1 --group %s %s --wait --timeout 600", tu.group, extra) != 0) {
		char errf[700], *err = NULL;
		snprintf(errf, sizeof errf, "%s/cli.err", tmp);
		vmf_read_file(errf, &err, NULL, 1 << 20, NULL);
		ck_abort_msg("the daemon did not start: %s", err ? err : "");
	}
}
