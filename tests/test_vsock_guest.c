/* Integration: the guest agent's vsock listener in a real guest.
 *
 * This host has no /dev/vhost-vsock, so it cannot reach a guest's vsock
 * (and Firecracker / Cloud Hypervisor are not installed).  The test goes
 * inside the guest instead: to the image's initrd.img it appends a second
 * gzip cpio archive (the kernel unpacks them in order; later files replace
 * earlier ones) holding
 *   /init                    the real init's steps (file systems, every
 *                            module of /lib/modules/load), then two agents
 *                            and the client below, then poweroff;
 *   /sbin/vmf-agent          the agent of this build (not the image's);
 *   /sbin/vmf-vsock-client   tests/vsock_guest_client.c.
 * The client talks to the agents over the guest's vsock_loopback (CID 1):
 * Ping on two connections at once, exec of echo, GuestInfo on a
 * third, a refused guest-local peer on the default-policy agent, and Ping
 * again once the agent has given up on the (absent) virtio port.  It
 * prints one result line on the serial console, which this test waits for
 * with a deadline. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "qemu.h"
#include "testlib.h"
#include "util.h"

#define RESULT_TIMEOUT_MS 60000
#define EXIT_TIMEOUT_MS 10000
#define CONSOLE_MAX (512 * 1024)
#define AGENT_PORT 1024
#define REFUSING_PORT 1025

static char *tmp;
static pid_t qemu = -1;

static void
setup(void)
{
	tmp = vmf_test_tmpdir("vmf-vsock-guest");
}

static void
teardown(void)
{
	if (qemu > 0) {
		kill(qemu, SIGKILL);
		waitpid(qemu, NULL, 0);
		qemu = -1;
	}
	if (vmf_test_kill_qemu_under(tmp))
		fprintf(stderr, "teardown: killed QEMU processes left by a failed test\n");
	struct vmf_error e;
	vmf_rm_rf(tmp, &e);
	free(tmp);
}

static const char *
build_path(const char *rel)
{
	static char buf[2][600];
	static int k;
	const char *b = getenv("VMFACTORY_BUILDDIR");
	k ^= 1;
	snprintf(buf[k], sizeof buf[k], "%s/%s", b ? b : ".", rel);
	return buf[k];
}

static void
write_file(const char *path, const char *text, mode_t mode)
{
	struct vmf_error e = {0};
	ck_assert_msg(vmf_write_file_atomic(path, text, strlen(text), mode, &e) == 0, "%s", e.msg);
}

static void
run(const char *cmd)
{
	int st = system(cmd);
	ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "command failed (status %d): %s", st, cmd);
}

/* tmp/initrd.img: the image's initrd with the test archive appended. */
static void
make_initrd(const char *img, char *initrd, size_t n)
{
	char manifest[600], cmd[4096];
	snprintf(manifest, sizeof manifest, "%s/manifest", img);
	snprintf(cmd, sizeof cmd, "grep -q '^modules .*vsock_loopback' '%s'", manifest);
	ck_assert_msg(system(cmd) == 0,
		      "the guest image in %s has no vsock modules (its manifest lists no vsock_loopback): "
		      "rebuild it with contrib/image/build-image", img);

	char stage[600];
	snprintf(stage, sizeof stage, "%s/stage", tmp);
	snprintf(cmd, sizeof cmd, "mkdir -p '%s/sbin' && install -m 0755 '%s' '%s/sbin/vmf-agent' && "
		 "install -m 0755 '%s' '%s/sbin/vmf-vsock-client'",
		 stage, build_path("contrib/agent/vmf-agent"), stage, build_path("tests/vmf-vsock-client"), stage);
	run(cmd);
	char init[4096], path[700];
	/* The real init's steps (contrib/image/build-image), then the test;
	 * poweroff ends QEMU (-no-reboot) whatever the client printed. */
	snprintf(init, sizeof init,
		 "#!/bin/sh\n"
		 "mount -t proc proc /proc\n"
		 "mount -t sysfs sysfs /sys\n"
		 "mount -t devtmpfs devtmpfs /dev\n"
		 "for m in $(cat /lib/modules/load); do\n"
		 "\tinsmod \"/lib/modules/$m\" || echo \"init: insmod $m failed\"\n"
		 "done\n"
		 "mkdir -p /mnt/share\n"
		 "/sbin/vmf-agent --vsock-allow-local 2>&1 | /bin/busybox tee /tmp/agent.log &\n"
		 "/sbin/vmf-agent --vsock-port %d &\n"
		 "/sbin/vmf-vsock-client %d %d /tmp/agent.log\n"
		 "/bin/busybox poweroff -f\n",
		 REFUSING_PORT, AGENT_PORT, REFUSING_PORT);
	snprintf(path, sizeof path, "%s/init", stage);
	write_file(path, init, 0755);

	snprintf(initrd, n, "%s/initrd.img", tmp);
	snprintf(cmd, sizeof cmd, "cp '%s/initrd.img' '%s' && cd '%s' && "
		 "find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --quiet | gzip -n >> '%s'",
		 img, initrd, stage, initrd);
	run(cmd);
}

/* Starts QEMU with the serial console on a pipe; returns its read end. */
static int
start_qemu(const char *kernel, const char *initrd)
{
	int pfd[2];
	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	qemu = vmf_test_fork();
	if (qemu == 0) {
		int dn = open("/dev/null", O_RDONLY);
		dup2(dn, 0);
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		execlp(VMF_QEMU_DEFAULT_BINARY, VMF_QEMU_DEFAULT_BINARY, "-accel", "tcg", "-m", "256", "-smp", "1",
		       "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
		       "-device", "virtio-rng-pci", "-kernel", kernel, "-initrd", initrd, "-append",
		       "console=ttyS0 panic=-1 quiet", (char *)NULL);
		dprintf(1, "cannot execute %s: %s\n", VMF_QEMU_DEFAULT_BINARY, strerror(errno));
		_exit(127);
	}
	close(pfd[1]);
	return pfd[0];
}

/* Reads the console until a result line is complete, QEMU closes it, or
 * the deadline; returns the console text (NUL-terminated). */
static char *
read_console(int fd, int timeout_ms, bool *timed_out)
{
	char *buf = malloc(CONSOLE_MAX + 1);
	ck_assert_ptr_nonnull(buf);
	size_t len = 0;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	*timed_out = false;
	for (;;) {
		buf[len] = '\0';
		const char *res = strstr(buf, "VMF-VSOCK-TEST: ");
		if (res && strchr(res, '\n'))
			break;
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0) {
			*timed_out = true;
			break;
		}
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		if (len == CONSOLE_MAX)
			break;
		ssize_t n = read(fd, buf + len, CONSOLE_MAX - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	return buf;
}

/* Reads (and drops) console output until QEMU closes it or the deadline;
 * true when it was closed. */
static bool
drain_console(int fd, int timeout_ms)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	char junk[4096];
	for (;;) {
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0)
			return false;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, left) <= 0)
			continue;
		ssize_t n = read(fd, junk, sizeof junk);
		if (n == 0 || (n < 0 && errno != EINTR))
			return true;
	}
}

/* Waits for QEMU to exit (the guest powers off) until the deadline, then
 * kills it; true when it exited on its own. */
static bool
reap_qemu(int timeout_ms)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	bool exited = false;
	for (;;) {
		pid_t r = waitpid(qemu, NULL, WNOHANG);
		if (r == qemu) {
			exited = true;
			break;
		}
		if (vmf_now_ms() >= deadline)
			break;
		poll(NULL, 0, 50);
	}
	if (!exited) {
		kill(qemu, SIGKILL);
		waitpid(qemu, NULL, 0);
	}
	qemu = -1;
	return exited;
}

START_TEST(agent_serves_vsock_in_a_real_guest)
{
	const char *img = vmf_test_image_dir();
	ck_assert_msg(img != NULL, "guest image missing");
	char kernel[600], initrd[700];
	snprintf(kernel, sizeof kernel, "%s/vmlinuz", img);
	make_initrd(img, initrd, sizeof initrd);

	int64_t t0 = vmf_now_ms();
	int fd = start_qemu(kernel, initrd);
	bool timed_out;
	char *console = read_console(fd, RESULT_TIMEOUT_MS, &timed_out);
	int64_t took = vmf_now_ms() - t0;
	/* The guest powers off after its result: QEMU's end closes the pipe. */
	bool closed = drain_console(fd, EXIT_TIMEOUT_MS);
	close(fd);
	bool powered_off = reap_qemu(closed ? EXIT_TIMEOUT_MS : 0);

	const char *res = strstr(console, "VMF-VSOCK-TEST: ");
	bool pass = res && strncmp(res, "VMF-VSOCK-TEST: PASS", 20) == 0;
	bool refused_logged = strstr(console, "refused a vsock connection from CID 1") != NULL;
	bool banner = strstr(console, "serving vsock port 1024") != NULL;
	if (!pass || !refused_logged || !banner || !powered_off)
		fprintf(stderr, "---- guest console ----\n%s\n---- end of guest console ----\n", console);
	ck_assert_msg(!timed_out || res, "no result line on the guest console within %d ms (console above)",
		      RESULT_TIMEOUT_MS);
	ck_assert_msg(res != NULL, "the guest ended without a result line (console above)");
	ck_assert_msg(pass, "the in-guest vsock client failed (console above)");
	ck_assert_msg(banner, "the agent did not announce its vsock listener on port 1024 (console above)");
	ck_assert_msg(refused_logged, "the default-policy agent did not log refusing the local peer (console above)");
	ck_assert_msg(powered_off, "QEMU did not exit within %d ms of the result (console above)", EXIT_TIMEOUT_MS);
	const char *eol = strchr(res, '\n');
	if (eol > res && eol[-1] == '\r')
		eol--;
	printf("%.*s\nboot to result: %.1f s\n", (int)(eol - res), res, (double)took / 1000);
	free(console);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("vsock_guest");
	TCase *tc = tcase_create("vsock_guest");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, agent_serves_vsock_in_a_real_guest);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
