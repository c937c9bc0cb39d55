/* Unit tests for common/: errors, framing, file helpers, id validation. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "frame.h"
#include "sockaddr.h"
#include "testlib.h"
#include "util.h"

START_TEST(error_prefix_keeps_cause)
{
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_err(&e, ENOENT, "kernel %s is missing", "/x"), -ENOENT);
	ck_assert_int_eq(vmf_error_prefix(&e, "booting vm %s", "abc"), -ENOENT);
	ck_assert_str_eq(e.msg, "booting vm abc: kernel /x is missing");
	ck_assert_int_eq(vmf_err(&e, 0, "x"), -EIO);
}
END_TEST

START_TEST(frame_roundtrip_and_limits)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_frame_write(sv[0], "hello", 5, vmf_now_ms() + 1000, &e), 0);
	uint8_t *buf;
	size_t n;
	ck_assert_int_eq(vmf_frame_read(sv[1], &buf, &n, 16, vmf_now_ms() + 1000, &e), 0);
	ck_assert_uint_eq(n, 5);
	ck_assert_mem_eq(buf, "hello", 5);
	free(buf);

	/* A 4 GiB length prefix is refused before any allocation. */
	uint8_t h[4] = {0xff, 0xff, 0xff, 0xff};
	ck_assert_int_eq(write(sv[0], h, 4), 4);
	ck_assert_int_eq(vmf_frame_read(sv[1], &buf, &n, 1 << 20, vmf_now_ms() + 1000, &e), -EMSGSIZE);
	ck_assert_ptr_null(buf);

	/* A truncated frame times out rather than hanging. */
	vmf_frame_put_len(h, 10);
	ck_assert_int_eq(write(sv[0], h, 4), 4);
	ck_assert_int_eq(write(sv[0], "abc", 3), 3);
	ck_assert_int_eq(vmf_frame_read(sv[1], &buf, &n, 100, vmf_now_ms() + 100, &e), -ETIMEDOUT);

	close(sv[0]);
	ck_assert_int_eq(vmf_frame_read(sv[1], &buf, &n, 100, vmf_now_ms() + 1000, &e), -EPIPE);
	close(sv[1]);
}
END_TEST

/* vmf_unix_addr: the longest path that fits is taken whole with its NUL
 * counted; one byte more is refused, never cut; the vmf_read_fd reader
 * config.c uses stops at its limit. */
START_TEST(unix_addr_and_read_fd)
{
	struct sockaddr_un sa;
	socklen_t len = 0;
	struct vmf_error e = {0};
	char p[sizeof(sa.sun_path) + 1];
	memset(p, 'x', sizeof(p) - 1);
	p[0] = '/';
	p[sizeof(sa.sun_path) - 1] = '\0';
	ck_assert_int_eq(vmf_unix_addr(&sa, &len, p, &e), 0);
	ck_assert_int_eq(sa.sun_family, AF_UNIX);
	ck_assert_str_eq(sa.sun_path, p);
	ck_assert_uint_eq(len, offsetof(struct sockaddr_un, sun_path) + sizeof(sa.sun_path));
	p[sizeof(sa.sun_path) - 1] = 'x';
	p[sizeof(sa.sun_path)] = '\0';
	ck_assert_int_eq(vmf_unix_addr(&sa, &len, p, &e), -ENAMETOOLONG);
	ck_assert_ptr_nonnull(strstr(e.msg, "longer than 107 bytes"));
	ck_assert_int_eq(vmf_unix_addr(&sa, NULL, "", NULL), -EINVAL);

	int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	char *buf;
	size_t n;
	ck_assert_int_eq(vmf_read_fd(fd, "/dev/zero", &buf, &n, 10000, &e), -EFBIG);
	close(fd);
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ck_assert_int_eq(vmf_read_fd(fd, "/dev/null", &buf, &n, 10000, &e), 0);
	ck_assert_uint_eq(n, 0);
	ck_assert_str_eq(buf, "");
	free(buf);
	close(fd);
}
END_TEST

START_TEST(atomic_write_and_rm_rf_do_not_follow_symlinks)
{
	char *d = vmf_test_tmpdir("vmf-common");
	char p[512], victim[512], link[512], sub[512];
	struct vmf_error e = {0};
	snprintf(p, sizeof p, "%s/a/b/c", d);
	ck_assert_int_eq(vmf_mkdir_p(p, 0700, &e), 0);
	snprintf(p, sizeof p, "%s/a/file", d);
	ck_assert_int_eq(vmf_write_file_atomic(p, "data", 4, 0600, &e), 0);
	char *buf;
	size_t n;
	ck_assert_int_eq(vmf_read_file(p, &buf, &n, 100, &e), 0);
	ck_assert_str_eq(buf, "data");
	free(buf);

	/* A symlink inside the tree pointing outside: rm_rf removes the link only. */
	snprintf(victim, sizeof victim, "%s/victim", d);
	ck_assert_int_eq(mkdir(victim, 0700), 0);
	snprintf(sub, sizeof sub, "%s/victim/keep", d);
	ck_assert_int_eq(vmf_write_file_atomic(sub, "k", 1, 0600, &e), 0);
	snprintf(link, sizeof link, "%s/a/b/link", d);
	ck_assert_int_eq(symlink(victim, link), 0);
	snprintf(p, sizeof p, "%s/a", d);
	ck_assert_int_eq(vmf_rm_rf(p, &e), 0);
	ck_assert_int_eq(access(p, F_OK), -1);
	ck_assert_int_eq(access(sub, F_OK), 0);
	ck_assert_int_eq(vmf_rm_rf(d, &e), 0);
	free(d);
}
END_TEST

START_TEST(open_beneath_refuses_planted_symlinks)
{
	char *dir = vmf_test_tmpdir("vmf-beneath");
	char link[600], target[600];
	snprintf(link, sizeof link, "%s/qemu.log", dir);
	snprintf(target, sizeof target, "%s-outside", dir);
	ck_assert_int_eq(symlink(target, link), 0);
	struct vmf_error e = {0};
	int fd = vmf_open_beneath(dir, "qemu.log", O_WRONLY | O_CREAT | O_TRUNC, 0600, &e);
	ck_assert_int_lt(fd, 0);
	ck_assert_msg(strstr(e.msg, "symlink") != NULL, "%s", e.msg);
	ck_assert_int_ne(access(target, F_OK), 0);
	ck_assert_int_lt(vmf_open_beneath(dir, "../escape", O_WRONLY | O_CREAT, 0600, &e), 0);
	ck_assert_int_eq(e.code, EINVAL);
	fd = vmf_open_beneath(dir, "plain", O_WRONLY | O_CREAT | O_EXCL, 0600, &e);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
	close(fd);
	ck_assert_int_eq(vmf_rm_rf(dir, &e), 0);
	free(dir);
}
END_TEST

START_TEST(id_validation)
{
	ck_assert(vmf_valid_sandbox_id("a"));
	ck_assert(vmf_valid_sandbox_id("sandbox-1_x.y"));
	ck_assert(!vmf_valid_sandbox_id(""));
	ck_assert(!vmf_valid_sandbox_id("../etc"));
	ck_assert(!vmf_valid_sandbox_id(".hidden"));
	ck_assert(!vmf_valid_sandbox_id("a/b"));
	char longid[70];
	memset(longid, 'a', 65);
	longid[65] = 0;
	ck_assert(!vmf_valid_sandbox_id(longid));
	longid[64] = 0;
	ck_assert(vmf_valid_sandbox_id(longid));
	char u[VMF_UUID_STR];
	vmf_uuid_new(u);
	ck_assert(vmf_valid_uuid(u));
	ck_assert(!vmf_valid_uuid("../../../../etc/passwd-000000000000"));
	char hex[VMF_SHA256_HEX];
	vmf_sha256_hex("abc", 3, hex);
	ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	ck_assert(vmf_valid_template_id(hex));
}
END_TEST

START_TEST(escape_guest_text)
{
	char out[64];
	const char in[] = "ok \\ \t\x1b[31m\xc3\xa9\r\nline\0x";
	size_t n = vmf_escape(in, sizeof(in) - 1, out, sizeof(out), false);
	ck_assert_str_eq(out, "ok \\\\ \\t\\x1b[31m\\xc3\\xa9\\x0d\\nline\\x00x");
	ck_assert_uint_eq(n, strlen(out));
	/* Multiline: a console's "\r\n" is a newline, kept as one. */
	vmf_escape(in, sizeof(in) - 1, out, sizeof(out), true);
	ck_assert_str_eq(out, "ok \\\\ \\t\\x1b[31m\\xc3\\xa9\nline\\x00x");
	/* Cut at a whole escape, always terminated. */
	char small[6];
	vmf_escape("ab\x01" "cd", 5, small, sizeof(small), false);
	ck_assert_str_eq(small, "ab");
	vmf_escape("abcdefgh", 8, small, sizeof(small), false);
	ck_assert_str_eq(small, "abcde");
}
END_TEST

START_TEST(proc_helpers)
{
	ck_assert(vmf_proc_alive(getpid(), vmf_proc_start_ticks(getpid())));
	ck_assert(!vmf_proc_alive(getpid(), vmf_proc_start_ticks(getpid()) + 1));
	ck_assert_uint_gt(vmf_proc_pss_kib(getpid()), 0);
	ck_assert_int_gt(vmf_proc_fd_count(getpid()), 2);
}
END_TEST

struct ticks_arg {
	pid_t pid;
	int wrong;
};

static void *
read_ticks(void *arg)
{
	struct ticks_arg *a = arg;
	uint64_t want = vmf_proc_start_ticks(a->pid);
	for (int i = 0; i < 20000; i++)
		a->wrong += vmf_proc_start_ticks(a->pid) != want;
	return NULL;
}

/* The daemon's workers check their VMs' start times at the same time: a
 * wrong one makes a running QEMU look gone. */
START_TEST(proc_start_ticks_from_threads)
{
	struct ticks_arg args[4];
	pthread_t t[4];
	for (int i = 0; i < 4; i++) {
		args[i] = (struct ticks_arg){ .pid = i % 2 ? 1 : getpid() };
		ck_assert_int_eq(pthread_create(&t[i], NULL, read_ticks, &args[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		ck_assert_int_eq(args[i].wrong, 0);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("common");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, error_prefix_keeps_cause);
	tcase_add_test(tc, frame_roundtrip_and_limits);
	tcase_add_test(tc, unix_addr_and_read_fd);
	tcase_add_test(tc, atomic_write_and_rm_rf_do_not_follow_symlinks);
	tcase_add_test(tc, open_beneath_refuses_planted_symlinks);
	tcase_add_test(tc, id_validation);
	tcase_add_test(tc, escape_guest_text);
	tcase_add_test(tc, proc_helpers);
	tcase_add_test(tc, proc_start_ticks_from_threads);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
