#include "testlib.h"

#include <stdbool.h>

#include <dirent.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int
vmf_test_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_ENV);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
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

char *
vmf_test_tmpdir(const char *prefix)
{
	const char *t = getenv("TMPDIR");
	char *p = NULL;
	if (asprintf(&p, "%s/%s.XXXXXX", t ? t : "/tmp", prefix) < 0 || !mkdtemp(p)) {
		perror("mkdtemp");
		abort();
	}
	return p;
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
vmf_test_kill_under(const char *prog, const char *dir)
{
	int n = scan(prog, dir, true);
	for (int i = 0; i < 100 && scan(prog, dir, false) > 0; i++)
		poll(NULL, 0, 50);
	return n;
}
