#include "testlib.h"

#include <stdbool.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static void sweep_test_dirs(void);

int
vmf_test_run(Suite *s)
{
	char pid[16];
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("VMF_TEST_RUNNER", pid, 1);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	sweep_test_dirs();
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
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
		int n = vmf_test_kill_under("vmfactory", dir) + vmf_test_kill_qemu_under(dir);
		if (n)
			fprintf(stderr, "test runner: killed %d processes a failed test left under %s\n", n, dir);
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
