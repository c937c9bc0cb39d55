#include "testlib.h"

#include <limits.h>
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
