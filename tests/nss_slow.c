/* LD_PRELOAD for tests/test_control_limits.c: getgrouplist() that takes
 * $VMF_TEST_SLOW_NSS_MS first, as an LDAP or sssd lookup that hangs would.
 * The daemon must keep serving meanwhile (its peer check runs NSS on a
 * worker thread).  With $VMF_TEST_SLOW_NSS_MARK, a file named after the
 * user is made in that dir as the lookup starts: the test waits for it
 * instead of guessing how long the daemon takes to get there. */
#include <dlfcn.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int
getgrouplist(const char *user, gid_t group, gid_t *groups, int *ngroups)
{
	int (*real)(const char *, gid_t, gid_t *, int *) =
		(int (*)(const char *, gid_t, gid_t *, int *))dlsym(RTLD_NEXT, "getgrouplist");
	const char *ms = getenv("VMF_TEST_SLOW_NSS_MS"), *mark = getenv("VMF_TEST_SLOW_NSS_MARK");
	if (mark) {
		char p[PATH_MAX];
		snprintf(p, sizeof p, "%s/%s", mark, user);
		int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		if (fd >= 0)
			close(fd);
	}
	if (ms) {
		long n = atol(ms);
		struct timespec ts = { n / 1000, (n % 1000) * 1000000L };
		while (nanosleep(&ts, &ts) != 0)
			;
	}
	return real ? real(user, group, groups, ngroups) : -1;
}
