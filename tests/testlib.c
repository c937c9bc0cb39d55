#include "testlib.h"

#include <stdbool.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"
#include "util.h"

static void sweep_test_dirs(void);
static const char *tmp_root(void);

/* Skips are lines in a file: with CK_FORK each test runs in a child. */
static void
skip_file(char *buf, size_t n)
{
	const char *runner = getenv("VMF_TEST_RUNNER");
	snprintf(buf, n, "%s/vmftest-skips-%s", tmp_root(), runner ? runner : "0");
}

/* "SKIP: reason" on stdout; the reason in buf. */
static void
say_skip(char *buf, size_t n, const char *fmt, va_list ap)
{
	vsnprintf(buf, n, fmt, ap);
	printf("SKIP: %s\n", buf);
	fflush(stdout);
}

void
vmf_test_skip(const char *fmt, ...)
{
	char reason[512], path[PATH_MAX];
	va_list ap;
	va_start(ap, fmt);
	say_skip(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	skip_file(path, sizeof(path));
	FILE *f = fopen(path, "a");
	if (!f) {
		perror(path);
		abort();   /* a skip that cannot be recorded would pass silently */
	}
	fprintf(f, "%s\n", reason);
	fclose(f);
}

static pid_t runner_pid;

/* meson's timeout (SIGTERM to the test's process group) or ^C would end
 * the runner without its sweep, and the daemons and VMs of the test in
 * flight (sessions of their own) would outlive it.  The runner spends its
 * life in check's waitpid, so sweeping from the handler interrupts no
 * allocation.  Forked children inherit the handler: they die of the signal
 * as they would have. */
static void
runner_signalled(int sig)
{
	if (getpid() == runner_pid)
		sweep_test_dirs();
	signal(sig, SIG_DFL);
	raise(sig);
}

int
vmf_test_run(Suite *s)
{
	char pid[16], path[PATH_MAX];
	runner_pid = getpid();
	signal(SIGTERM, runner_signalled);
	signal(SIGINT, runner_signalled);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("VMF_TEST_RUNNER", pid, 1);
	skip_file(path, sizeof(path));
	unlink(path);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr), ran = srunner_ntests_run(sr), skipped = 0;
	srunner_free(sr);
	FILE *f = fopen(path, "r");
	for (int ch; f && (ch = getc(f)) != EOF;)
		skipped += ch == '\n';
	if (f)
		fclose(f);
	unlink(path);
	sweep_test_dirs();
	if (failed)
		return EXIT_FAILURE;
	if (ran == 0) {
		const char *only = getenv("VMFACTORY_TEST");
		const char *rc = getenv("CK_RUN_CASE");
		fprintf(stderr, "no test ran (CK_RUN_CASE=%s, VMFACTORY_TEST=%s)\n", rc ? rc : "", only ? only : "");
		return only ? 77 : EXIT_FAILURE;
	}
	if (skipped) {
		/* Reported as a skip even where the others passed: a skip that
		 * counted as a pass would hide what did not run. */
		printf("SKIP: %d of %d tests skipped%s\n", skipped, ran,
		       skipped == ran ? "" : " (the others passed: give a test that may skip a case of its own, see "
					     "testlib.h)");
		return 77;
	}
	return EXIT_SUCCESS;
}

int
vmf_test_skip_all(const char *fmt, ...)
{
	char reason[512];
	va_list ap;
	va_start(ap, fmt);
	say_skip(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	return 77;
}

bool
vmf_test_fault_build(void)
{
	const char *b = getenv("VMFACTORY_FAULT_BUILD");
	return b && !strcmp(b, "1");
}

struct vmf_wait
vmf_wait_start(int64_t ms)
{
	return (struct vmf_wait){ vmf_now_ms() + ms, 10 };
}

bool
vmf_wait_more(struct vmf_wait *w)
{
	int64_t left = w->deadline - vmf_now_ms();
	if (left <= 0)
		return false;
	poll(NULL, 0, (int)(left < w->step ? left : w->step));
	if (w->step < 100)
		w->step *= 2;
	return true;
}

bool
vmf_test_sanitizer_report(const char *dir, int depth, char *msg, size_t n)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	bool found = false;
	while (d && !found && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char p[PATH_MAX];
		snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
		size_t l = strlen(de->d_name);
		if (de->d_type == DT_DIR) {
			if (depth > 0)
				found = vmf_test_sanitizer_report(p, depth - 1, msg, n);
			continue;
		}
		if (de->d_type != DT_REG || l < 5 || (strcmp(de->d_name + l - 4, ".log") && strcmp(de->d_name + l - 4, ".err")))
			continue;
		char *log = NULL;
		if (vmf_read_file(p, &log, NULL, 256 << 20, NULL) < 0)
			continue;
		/* ASan, LSan and TSan reports name their sanitizer; UBSan's say
		 * "runtime error:". */
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

const char *
vmf_test_image_dir(void)
{
	const char *d = getenv("VMFACTORY_IMAGE_DIR");
	if (!d)
		d = "/var/cache/vmfactory/image";
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/vmlinuz", d);
	if (access(p, R_OK) != 0) {
		fprintf(stderr, "guest image missing: %s not readable; build it with contrib/image/build-image\n", p);
		return NULL;
	}
	return d;
}

/* Test dirs carry the test runner's pid (".rPID."), so the runner can
 * clear what its tests left: with CK_FORK a failed assertion ends the
 * test's process without its teardown, and daemons and VMs (in sessions
 * of their own) would outlive it. */
static const char *
tmp_root(void)
{
	const char *t = getenv("TMPDIR");
	return t && *t ? t : "/tmp";
}

char *
vmf_test_tmpdir(const char *prefix)
{
	const char *runner = getenv("VMF_TEST_RUNNER");
	char *p = NULL;
	if (asprintf(&p, "%s/%s.r%s.XXXXXX", tmp_root(), prefix, runner ? runner : "0") < 0 || !mkdtemp(p)) {
		perror("mkdtemp");
		abort();
	}
	return p;
}

static void
sweep_test_dirs(void)
{
	char tag[32];
	snprintf(tag, sizeof(tag), ".r%d.", (int)getpid());
	DIR *d = opendir(tmp_root());
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (!strstr(de->d_name, tag))
			continue;
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s/%s", tmp_root(), de->d_name);
		/* The daemon first (it would replace what is killed next), then
		 * its VMMs: QEMU, or the fake Firecracker of tests/fake_vmm.c. */
		int n = vmf_test_kill_under("vmfactory", dir) + vmf_test_kill_qemu_under(dir) +
			vmf_test_kill_under("fake_vmm", dir);
		if (n)
			fprintf(stderr, "test runner: killed %d processes a failed test left under %s\n", n, dir);
		/* The failed test's teardown did not scan its daemons' logs: a
		 * daemon that died of a sanitizer report says so here. */
		char report[2048];
		if (vmf_test_sanitizer_report(dir, 4, report, sizeof report))
			fprintf(stderr, "test runner: %s\n", report);
		/* Mounts a failed test left (lazy: nothing may hold them now). */
		char cmd[PATH_MAX + 128];
		snprintf(cmd, sizeof(cmd), "awk '$2 ~ \"^%s/\" {print $2}' /proc/mounts | xargs -r umount -l", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "test runner: could not unmount below %s\n", dir);
		struct vmf_error e;
		vmf_rm_rf(dir, &e);
	}
	if (d)
		closedir(d);
}

pid_t
vmf_test_fork(void)
{
	pid_t pid = fork();
	if (pid < 0)
		ck_abort_msg("fork: %s", strerror(errno));
	return pid;
}

int
vmf_test_dir_entries(const char *path)
{
	DIR *d = opendir(path);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
	closedir(d);
	return n;
}

const char *
vmf_test_src(const char *rel)
{
	static char buf[PATH_MAX];
	const char *s = getenv("VMFACTORY_SRCDIR");
	snprintf(buf, sizeof(buf), "%s/%s", s ? s : ".", rel);
	return buf;
}

static int
scan(const char *prog, const char *dir, bool kill_them)
{
	DIR *d = opendir("/proc");
	if (!d)
		return 0;
	struct dirent *de;
	int n = 0;
	while ((de = readdir(d))) {
		int pid = atoi(de->d_name);
		if (pid <= 0)
			continue;
		char p[64], buf[65536];
		snprintf(p, sizeof p, "/proc/%d/cmdline", pid);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		size_t len = fread(buf, 1, sizeof buf - 1, f);
		fclose(f);
		buf[len] = 0;
		bool match = strstr(buf, prog) != NULL;
		for (size_t i = 0; i < len; i++)
			if (!buf[i])
				buf[i] = ' ';
		if (match && strstr(buf, dir) && pid != getpid()) {
			n++;
			if (kill_them)
				kill(pid, SIGKILL);
		}
	}
	closedir(d);
	return n;
}

int
vmf_test_count_under(const char *prog, const char *dir)
{
	return scan(prog, dir, false);
}

int
vmf_test_kill_under(const char *prog, const char *dir)
{
	int n = scan(prog, dir, true);
	for (int i = 0; i < 100 && scan(prog, dir, false) > 0; i++)
		poll(NULL, 0, 50);
	return n;
}

const char *
vmf_test_agent_path(void)
{
	static char path[600];
	const char *a = getenv("VMFACTORY_AGENT"), *b = getenv("VMFACTORY_BUILDDIR");
	if (a && *a)
		return a;
	snprintf(path, sizeof path, "%s/contrib/agent/vmf-agent", b ? b : ".");
	return path;
}

pid_t
vmf_test_agent_listener(const char *sock_path, const char *share_dir)
{
	return vmf_test_agent_listener_with(sock_path, share_dir, NULL);
}

pid_t
vmf_test_agent_listener_with(const char *sock_path, const char *share_dir, const char *ledger)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(lfd, 0);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
	ck_assert_int_eq(listen(lfd, 4), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		if (lfd == 3)
			fcntl(3, F_SETFD, 0);
		else
			dup2(lfd, 3);
		syscall(SYS_close_range, 4U, ~0U, 0U);
		if (ledger)
			execl(vmf_test_agent_path(), "vmf-agent", "--listen-fd", "3", "--share-dir", share_dir,
			      "--exec-ledger", ledger, (char *)NULL);
		else
			execl(vmf_test_agent_path(), "vmf-agent", "--listen-fd", "3", "--share-dir", share_dir,
			      (char *)NULL);
		_exit(127);
	}
	close(lfd);
	return pid;
}

bool
vmf_test_under_valgrind(void)
{
	const char *p = getenv("LD_PRELOAD");
	return p && strstr(p, "vgpreload");
}

void
vmf_test_make_chain(const char *dir, unsigned depth, bool files)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ck_assert_msg(fd >= 0, "cannot open %s: %s", dir, strerror(errno));
	for (unsigned i = 0; i < depth; i++) {
		ck_assert_int_eq(mkdirat(fd, "d", 0755), 0);
		if (files && i % 1000 == 0) {
			int f = openat(fd, "f", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
			ck_assert_int_ge(f, 0);
			close(f);
		}
		int next = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		ck_assert_int_ge(next, 0);
		close(fd);
		fd = next;
	}
	close(fd);
}
