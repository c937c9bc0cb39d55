/* systemd notification: datagrams reach $NOTIFY_SOCKET (a path or an
 * abstract name), and the variable is gone from the environment after
 * init so that QEMU children do not inherit it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sdnotify.h"
#include "testlib.h"
#include "util.h"

static int
listen_dgram(const char *name, bool abstract)
{
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", name);
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name) + !abstract);
	if (abstract)
		a.sun_path[0] = '\0';
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, len), 0);
	struct timeval tv = { 2, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static void
expect(int fd, const char *want)
{
	char buf[1100];
	ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
	ck_assert_int_gt(n, 0);
	buf[n] = '\0';
	ck_assert_str_eq(buf, want);
}

START_TEST(path_socket)
{
	char *dir = vmf_test_tmpdir("vmf-sdn");
	char path[200];
	snprintf(path, sizeof(path), "%s/notify", dir);
	int fd = listen_dgram(path, false);
	setenv("NOTIFY_SOCKET", path, 1);
	ck_assert(vmf_sd_notify_init());
	ck_assert_ptr_null(getenv("NOTIFY_SOCKET"));
	vmf_sd_notify("READY=1\nSTATUS=ready on %s", "/run/x.sock");
	expect(fd, "READY=1\nSTATUS=ready on /run/x.sock");
	close(fd);
	vmf_rm_rf(dir, NULL);
	free(dir);
}
END_TEST

START_TEST(abstract_socket)
{
	char name[64];
	snprintf(name, sizeof(name), "@vmf-test-notify-%d", (int)getpid());
	int fd = listen_dgram(name, true);
	setenv("NOTIFY_SOCKET", name, 1);
	ck_assert(vmf_sd_notify_init());
	vmf_sd_notify("STOPPING=1");
	expect(fd, "STOPPING=1");
	close(fd);
}
END_TEST

START_TEST(no_socket)
{
	unsetenv("NOTIFY_SOCKET");
	ck_assert(!vmf_sd_notify_init());
	vmf_sd_notify("READY=1");    /* a no-op */
	setenv("NOTIFY_SOCKET", "relative/path", 1);
	ck_assert(!vmf_sd_notify_init());
	ck_assert_ptr_null(getenv("NOTIFY_SOCKET"));
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("sdnotify");
	TCase *t = tcase_create("sdnotify");
	tcase_add_test(t, path_socket);
	tcase_add_test(t, abstract_socket);
	tcase_add_test(t, no_socket);
	suite_add_tcase(s, t);
	return vmf_test_run(s);
}
