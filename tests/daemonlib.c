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
#include <sys/inotify.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
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

/* A sanitized guest agent (the ASan stage's test image) reports on the
 * guest's console: serial.log in its VM's run dir, which goes with the VM
 * at its release.  While VMFACTORY_KEEP_CONSOLES is set, a thread
 * hard-links every serial.log that appears below svc into svc/consoles, so
 * that the report outlives its VM and cleanup() finds it. */
static pthread_t keeper;
static int keeper_stop[2] = { -1, -1 };
static bool keeper_on;

struct watch {
	int wd, depth;
	char path[PATH_MAX];
};

static void
keep_one(const char *dir, const char *name)
{
	static int n;
	char from[PATH_MAX], to[PATH_MAX];
	snprintf(from, sizeof from, "%s/%s", dir, name);
	snprintf(to, sizeof to, "%s/consoles/%d-%s", svc, ++n, name);
	if (link(from, to) < 0 && errno != ENOENT)
		fprintf(stderr, "keep_consoles: link %s: %s\n", from, strerror(errno));
}

static void keep_watch(int in, struct watch *w, int *nw, const char *dir, int depth);

static void
keep_entry(int in, struct watch *w, int *nw, const char *dir, const char *name, bool is_dir, int depth)
{
	if (is_dir && depth > 0 && strcmp(name, "consoles")) {
		char p[PATH_MAX];
		snprintf(p, sizeof p, "%s/%s", dir, name);
		keep_watch(in, w, nw, p, depth - 1);
	} else if (!is_dir && !strcmp(name, "serial.log")) {
		keep_one(dir, name);
	}
}

/* Watches dir, then looks at what it holds already (made before the watch). */
static void
keep_watch(int in, struct watch *w, int *nw, const char *dir, int depth)
{
	if (*nw >= 4096)
		return;
	int wd = inotify_add_watch(in, dir, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
	if (wd < 0)
		return;
	w[*nw].wd = wd;
	w[*nw].depth = depth;
	snprintf(w[*nw].path, sizeof w[*nw].path, "%s", dir);
	(*nw)++;
	DIR *d = opendir(dir);
	struct dirent *de;
	while (d && (de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			keep_entry(in, w, nw, dir, de->d_name, de->d_type == DT_DIR, depth);
	if (d)
		closedir(d);
}

static void *
keeper_main(void *arg)
{
	int in = (int)(intptr_t)arg, nw = 0;
	static struct watch w[4096];
	keep_watch(in, w, &nw, svc, 4);
	for (;;) {
		struct pollfd p[2] = { { in, POLLIN, 0 }, { keeper_stop[0], POLLIN, 0 } };
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
		ssize_t len = read(in, buf, sizeof buf);
		for (ssize_t off = 0; len > 0 && off < len;) {
			struct inotify_event *ev = (struct inotify_event *)(buf + off);
			off += (ssize_t)sizeof *ev + ev->len;
			for (int i = 0; ev->len && i < nw; i++)
				if (w[i].wd == ev->wd) {
					keep_entry(in, w, &nw, w[i].path, ev->name, ev->mask & IN_ISDIR, w[i].depth);
					break;
				}
		}
	}
	close(in);
	return NULL;
}

static void
keep_consoles(void)
{
	const char *on = getenv("VMFACTORY_KEEP_CONSOLES");
	if (!on || strcmp(on, "1"))
		return;
	char d[700];
	snprintf(d, sizeof d, "%s/consoles", svc);
	ck_assert_int_eq(mkdir(d, 0700), 0);
	int in = inotify_init1(IN_CLOEXEC);
	ck_assert_int_ge(in, 0);
	ck_assert_int_eq(pipe2(keeper_stop, O_CLOEXEC), 0);
	ck_assert_int_eq(pthread_create(&keeper, NULL, keeper_main, (void *)(intptr_t)in), 0);
	keeper_on = true;
}

static void
keep_consoles_stop(void)
{
	if (!keeper_on)
		return;
	keeper_on = false;
	(void)!write(keeper_stop[1], "x", 1);
	pthread_join(keeper, NULL);
	close(keeper_stop[0]);
	close(keeper_stop[1]);
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
	keep_consoles();
}

/* The stderr of this thread's last vmf() (threads run the CLI side by side). */
static _Thread_local char last_err[16384];

const char *
cli_stderr(void)
{
	return last_err;
}

/* A CLI's stderr from efd (closed) into last_err, and kept whole in
 * $tmp/cli.err: the sanitizer scan reads it (a CLI's leak report too). */
static void
keep_cli_err(int efd)
{
	ssize_t el = pread(efd, last_err, sizeof last_err - 1, 0);
	last_err[el > 0 ? el : 0] = '\0';
	close(efd);
	char logp[700];
	snprintf(logp, sizeof logp, "%s/cli.err", tmp);
	int lfd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (lfd >= 0) {
		(void)!write(lfd, last_err, strlen(last_err));
		close(lfd);
	}
}

/* Runs `vmfactory ARGS`; returns the exit status, stdout in *out, stderr in
 * last_err and appended to tmp/cli.err. */
int
vmf(char **out, const char *fmt, ...)
{
	char args[4096], cmd[8192], errp[700];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof args, fmt, ap);
	va_end(ap);
	snprintf(errp, sizeof errp, "%s/cli.XXXXXX", tmp);
	int efd = mkostemp(errp, O_CLOEXEC);
	ck_assert_int_ge(efd, 0);
	snprintf(cmd, sizeof cmd, "%s%s%s%s %s %s 2>%s", fault ? "VMFACTORY_FAULT=" : "", fault ? fault : "",
		 fault ? " " : "", exe, args, common_opts, errp);
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
	keep_cli_err(efd);
	unlink(errp);
	if (out)
		*out = buf;
	else
		free(buf);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

void
vmf_refused(const char *words, const char *fmt, ...)
{
	char args[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof args, fmt, ap);
	va_end(ap);
	int rc = vmf(NULL, "%s", args);
	ck_assert_msg(rc == 1, "vmfactory %s: exit %d, not a refusal (1): %s", args, rc, last_err);
	assert_words(last_err, words, args);
}

void
assert_words(const char *text, const char *words, const char *what)
{
	char w[1024];
	snprintf(w, sizeof w, "%s", words);
	for (char *save = NULL, *t = strtok_r(w, "|", &save); t; t = strtok_r(NULL, "|", &save))
		ck_assert_msg(strstr(text, t), "%s: the error lacks '%s': %s", what, t, text);
}

json_object *
vmf_json(const char *fmt, const char *arg)
{
	char *out;
	int rc = vmf(&out, fmt, arg);
	ck_assert_msg(rc == 0, "vmfactory %s %s exited %d: %s", fmt, arg, rc, last_err);
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
	int n;
	poll_until((n = count_qemu()) == 0, 10000);
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

/* Every daemon a test starts logs below tmp or svc: the state dirs
 * (<svc>/state, <svc>/SUB/state of use_dirs()) hold vmfactory.log, a
 * foreground daemon's log is where the test put it (in tmp), the CLI's
 * stderr is tmp/cli.err, and the guests' consoles are kept in svc/consoles
 * (keep_consoles()).  The first report found, into msg. */
static bool
find_report(char *msg, size_t n)
{
	return vmf_test_sanitizer_report(tmp, 4, msg, n) || vmf_test_sanitizer_report(svc, 4, msg, n);
}

/* The daemons' stderr (a sanitizer's reports included) is their log. */
void
assert_daemon_log_clean(void)
{
	static char msg[2000];
	ck_assert_msg(!find_report(msg, sizeof msg), "%s", msg);
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
vm_of_sandbox(const char *sandbox, char *state, size_t n)
{
	json_object *s = vmf_json("status -o json%s", "");
	json_object *vms = path(s, "vms", NULL);
	state[0] = '\0';
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (!strcmp(json_object_get_string(path(v, "sandbox_id", NULL)), sandbox))
			snprintf(state, n, "%s", json_object_get_string(path(v, "state", NULL)));
	}
	json_object_put(s);
}

void
fault_gate(const char *name, const char *value)
{
	char p[700];
	struct vmf_error e = {0};
	snprintf(p, sizeof p, "%s/gate-%s", run, name);
	ck_assert_msg(vmf_write_file_atomic(p, value, strlen(value), 0600, &e) == 0, "%s", e.msg);
}

void
kill_daemon_hard(void)
{
	int pid = daemon_pid();
	ck_assert_int_eq(kill(pid, SIGKILL), 0);
	poll_until(kill(pid, 0) != 0, 10000);
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
	poll_until(vmf_test_count_under("vmfactory", tmp) == 0, 20000);
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
	keep_consoles_stop();
	bool report = find_report(msg, sizeof msg);
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
	const char *lacks = guest_image_lacks(mods);
	if (lacks) {
		const char *img = vmf_test_image_dir();
		snprintf(why, sizeof why, "the guest image %s lacks %s; rebuild it with contrib/image/build-image",
			 img ? img : "(none)", lacks);
		return why;
	}
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

/* ---- acting as a tenant ---- */

int
as_tenant(uid_t uid, tenant_fn fn, const void *arg, char *msg, size_t n)
{
	int p[2];
	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		close(p[0]);
		char m[2048] = "";
		int rc = -EPERM;
		if (become_tenant(uid))
			rc = fn(arg, m, sizeof m);
		else
			snprintf(m, sizeof m, "cannot become uid %u: %s", (unsigned)uid, strerror(errno));
		ssize_t w = write(p[1], &rc, sizeof rc);
		w += write(p[1], m, strlen(m) + 1);
		_exit(w > 0 ? 0 : 1);
	}
	close(p[1]);
	int rc = -EIO;
	if (read(p[0], &rc, sizeof rc) != (ssize_t)sizeof rc)
		rc = -EIO;
	size_t got = 0;
	ssize_t r;
	char *out = n ? msg : NULL;
	while (out && got < n - 1 && (r = read(p[0], out + got, n - 1 - got)) > 0)
		got += (size_t)r;
	if (out)
		out[got] = '\0';
	close(p[0]);
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child acting as uid %u died (status %d)",
		      (unsigned)uid, st);
	return rc;
}

struct call_arg {
	tenant_call_fn fn;
	const void *arg;
};

static int
call_in_child(const void *arg, char *msg, size_t n)
{
	const struct call_arg *a = arg;
	struct vmf_client *c;
	struct vmf_error e = {0};
	int rc = vmf_client_connect(sock, &c, &e);
	if (rc == 0) {
		rc = a->fn(c, a->arg, msg, n, &e);
		vmf_client_close(c);
	}
	if (rc < 0)
		snprintf(msg, n, "%s", e.msg);
	return rc;
}

int
call_as(uid_t uid, tenant_call_fn fn, const void *arg, char *msg, size_t n)
{
	struct call_arg a = { fn, arg };
	return as_tenant(uid, call_in_child, &a, msg, n);
}

/* The requests, for call_as().  A reply freed here; what a test needs of
 * it goes into out. */
static int
reply_done(int rc, Vmf__Control__Reply *r)
{
	if (r)
		vmf__control__reply__free_unpacked(r, NULL);
	return rc;
}

int
req_get(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_get_vm(c, arg, &r, 300000, e);
	if (rc == 0)
		snprintf(out, n, "%s %u", r->vm->id, r->vm->owner_uid);
	return reply_done(rc, r);
}

int
req_release(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	(void)out, (void)n;
	return vmf_client_release_vm(c, arg, 120000, e);
}

int
req_inspect(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_inspect(c, arg, &r, 120000, e);
	if (rc == 0)
		snprintf(out, n, "%s", r->inspect->vm->sandbox_id);
	return reply_done(rc, r);
}

int
req_status(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	(void)arg;
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_status(c, &r, 30000, e);
	if (rc == 0) {
		out[0] = '\0';
		for (size_t i = 0; i < r->status->n_vms; i++)
			snprintf(out + strlen(out), n - strlen(out), "%s ", r->status->vms[i]->id);
		snprintf(out + strlen(out), n - strlen(out), "ready=%u",
			 r->status->n_pools ? r->status->pools[0]->ready : 0);
	}
	return reply_done(rc, r);
}

int
req_destroy(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	(void)arg, (void)out, (void)n;
	Vmf__Control__Reply *r = NULL;
	return reply_done(vmf_client_destroy(c, 0, &r, 120000, e), r);
}

int
req_suspend(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	(void)out, (void)n;
	Vmf__Control__Reply *r = NULL;
	return reply_done(vmf_client_suspend_vm(c, arg, &r, 300000, e), r);
}

int
req_resume(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	(void)out, (void)n;
	Vmf__Control__Reply *r = NULL;
	return reply_done(vmf_client_resume_vm(c, arg, &r, 300000, e), r);
}

int
req_attach(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_attach(c, arg, &r, 120000, e);
	if (rc == 0 && r->disk)
		snprintf(out, n, "%s", r->disk->guest_path ? r->disk->guest_path : "");
	return reply_done(rc, r);
}

int
req_detach(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	(void)out, (void)n;
	const char *const *a = arg;
	Vmf__Control__Reply *r = NULL;
	return reply_done(vmf_client_detach(c, a[0], a[1], &r, 120000, e), r);
}

int
req_snapshot(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	const char *const *a = arg;
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_snapshot(c, a[0], a[1], &r, 300000, e);
	if (rc == 0 && r->snapshot)
		snprintf(out, n, "%s", r->snapshot->template_id);
	return reply_done(rc, r);
}

void
tenant_dir(const char *user, uid_t uid, char *dir, size_t n)
{
	snprintf(dir, n, "%s/%s", tmp, user);
	ck_assert_msg(mkdir(dir, 0755) == 0, "mkdir %s: %s", dir, strerror(errno));
	ck_assert_msg(chown(dir, uid, tu.gid) == 0, "chown %s: %s", dir, strerror(errno));
}

int
get_into(uid_t uid, const char *share, const char *sockd, const char *sandbox, unsigned timeout_ms, char *msg,
	 size_t n)
{
	Vmf__Control__GetVMRequest req = VMF__CONTROL__GET_VMREQUEST__INIT;
	req.vcpus = 1;
	req.memory_mib = 256;
	req.sandbox_id = (char *)sandbox;
	req.share_dir = (char *)share;
	req.sock_dir = (char *)sockd;
	req.timeout_ms = timeout_ms;
	return call_as(uid, req_get, &req, msg, n);
}

int
tenant_get(uid_t uid, const char *dir, const char *sandbox, char *id, size_t n)
{
	char share[700], sockd[700], msg[1100];
	snprintf(share, sizeof share, "%s/share", dir);
	snprintf(sockd, sizeof sockd, "%s/sock", dir);
	int rc = get_into(uid, share, sockd, sandbox, 120000, msg, sizeof msg);
	if (rc == 0)
		msg[strcspn(msg, " ")] = '\0';
	snprintf(id, n, "%s", msg);
	return rc;
}

void
assert_refused(int rc, const char *msg, int err, const char *words, const char *what)
{
	ck_assert_msg(rc == -err, "%s: %d (%s), not refused with %s", what, rc, msg, strerror(err));
	assert_words(msg, words, what);
}

int
vmf_as(uid_t uid, char **out, const char *fmt, ...)
{
	char args[4096], cmd[8192], errp[700];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof args, fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof cmd, "exec %s %s %s", exe, args, common_opts);
	snprintf(errp, sizeof errp, "%s/cli.XXXXXX", tmp);
	int efd = mkostemp(errp, O_CLOEXEC);
	ck_assert_int_ge(efd, 0);
	unlink(errp);
	int o[2];
	ck_assert_int_eq(pipe2(o, O_CLOEXEC), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		dup2(o[1], 1);
		dup2(efd, 2);
		if (fault)
			setenv("VMFACTORY_FAULT", fault, 1);
		if (!become_tenant(uid))
			_exit(99);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(98);
	}
	close(o[1]);
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	ssize_t r;
	while ((r = read(o[0], buf + n, cap - n - 1)) > 0)
		if ((n += (size_t)r) + 1 >= cap)
			buf = realloc(buf, cap *= 2);
	buf[n] = '\0';
	close(o[0]);
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	keep_cli_err(efd);
	if (out)
		*out = buf;
	else
		free(buf);
	ck_assert_msg(!WIFEXITED(st) || WEXITSTATUS(st) != 99, "cannot become uid %u", (unsigned)uid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

void
as_user(uid_t uid, act_fn fn, const void *arg, struct act *out)
{
	memset(out, 0, sizeof *out);
	out->rc = as_tenant(uid, fn, arg, out->msg, sizeof out->msg);
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
		return "a manifest listing its modules";
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
	if (vmf(NULL, "init --pool 1 --group %s %s --wait --timeout 600", tu.group, extra) != 0)
		ck_abort_msg("the daemon did not start: %s", last_err);
}
