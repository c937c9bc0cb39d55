/* LD_PRELOAD for tests/test_control_limits.c: getgrouplist() that takes
 * $VMF_TEST_SLOW_NSS_MS first, as an LDAP or sssd lookup that hangs would.
 * The daemon must keep serving meanwhile (its peer check runs NSS on a
 * worker thread). */
#include <dlfcn.h>
#include <grp.h>
#include <stdlib.h>
#include <time.h>

int
getgrouplist(const char *user, gid_t group, gid_t *groups, int *ngroups)
{
	int (*real)(const char *, gid_t, gid_t *, int *) =
		(int (*)(const char *, gid_t, gid_t *, int *))dlsym(RTLD_NEXT, "getgrouplist");
	const char *ms = getenv("VMF_TEST_SLOW_NSS_MS");
	if (ms) {
		long n = atol(ms);
		struct timespec ts = { n / 1000, (n % 1000) * 1000000L };
		while (nanosleep(&ts, &ts) != 0)
			;
	}
	return real ? real(user, group, groups, ngroups) : -1;
}
