/* Unit tests for common/: errors, framing, file helpers, id validation. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sched.h>
#include <unistd.h>

#include "error.h"
#include "frame.h"
#include "log.h"
#include "sockaddr.h"
#include "testlib.h"
#include "text.h"
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
	/* A log's bytes, NULs and all; UTF-8 text stays. */
	size_t n = vmf_escape_n(in, sizeof(in) - 1, out, sizeof(out), VMF_ESC_BACKSLASH);
	ck_assert_str_eq(out, "ok \\\\ \\t\\x1b[31m\xc3\xa9\\r\\nline\\x00x");
	ck_assert_uint_eq(n, strlen(out));
	/* Multiline: a console's "\r\n" is a newline, kept as one. */
	vmf_escape_n(in, sizeof(in) - 1, out, sizeof(out), VMF_ESC_NEWLINE | VMF_ESC_BACKSLASH);
	ck_assert_str_eq(out, "ok \\\\ \\t\\x1b[31m\xc3\xa9\nline\\x00x");
	/* Cut at a whole escape, marked, always terminated. */
	char small[6];
	vmf_escape_n("ab\x01" "cd", 5, small, sizeof(small), 0);
	ck_assert_str_eq(small, "ab...");
	vmf_escape_n("abcdefgh", 8, small, sizeof(small), 0);
	ck_assert_str_eq(small, "ab...");
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

/* ---- removing what a guest built ---- */

struct rm_arg {
	const char *path;
	int r;
	struct vmf_error e;
};

static void *
rm_thread(void *arg)
{
	struct rm_arg *a = arg;
	a->r = vmf_rm_rf(a->path, &a->e);
	return NULL;
}

/* A chain deeper than the fd limit allows and a small stack could hold
 * with a frame per level, a directory with many entries, symlinks out of
 * the tree and a directory the guest made unreadable: all removed, the
 * targets of the links untouched, no fd left open. */
START_TEST(rm_rf_any_depth_few_fds_small_stack)
{
	/* In memory where there is a tmpfs (a run dir's usual home): the
	 * removal's own cost, not a loaded disk's journal. */
	char *d = NULL;
	if (access("/dev/shm", W_OK) == 0) {
		d = strdup("/dev/shm/vmf-rmrf.XXXXXX");
		ck_assert_ptr_nonnull(mkdtemp(d));
	} else {
		d = vmf_test_tmpdir("vmf-rmrf");
	}
	char tree[600], victim[600], keep[700], p[700];
	struct vmf_error e = {0};
	snprintf(tree, sizeof tree, "%s/tree", d);
	snprintf(victim, sizeof victim, "%s/victim", d);
	snprintf(keep, sizeof keep, "%s/victim/keep", d);
	ck_assert_int_eq(mkdir(tree, 0700), 0);
	ck_assert_int_eq(mkdir(victim, 0700), 0);
	ck_assert_int_eq(vmf_write_file_atomic(keep, "k", 1, 0600, &e), 0);
	unsigned depth = vmf_test_under_valgrind() ? 3000 : 30000;
	snprintf(p, sizeof p, "%s/chain", tree);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	vmf_test_make_chain(p, depth, true);
	snprintf(p, sizeof p, "%s/wide", tree);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	for (unsigned i = 0; i < (vmf_test_under_valgrind() ? 500u : 5000u); i++) {
		char f[800];
		snprintf(f, sizeof f, "%s/wide/e%u", tree, i);
		if (i % 2)
			ck_assert_int_eq(mkdir(f, 0700), 0);
		else
			ck_assert_int_eq(symlink(i % 4 ? victim : keep, f), 0);
	}
	snprintf(p, sizeof p, "%s/wide/e1/shut", tree);
	ck_assert_int_eq(mkdir(p, 0), 0);
	/* Named like the removal's own spool entries. */
	snprintf(p, sizeof p, "%s/.vmf-rm-0", tree);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	snprintf(p, sizeof p, "%s/.vmf-rm-0/.vmf-rm-1", tree);
	ck_assert_int_eq(symlink(victim, p), 0);

	int fds = vmf_proc_fd_count(getpid());
	struct rlimit old, low = { 64, 0 };
	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
	low.rlim_max = old.rlim_max;
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 128 * 1024);
	struct rm_arg a = { .path = tree };
	pthread_t t;
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(pthread_create(&t, &at, rm_thread, &a), 0);
	pthread_join(t, NULL);
	int64_t ms = vmf_now_ms() - t0;
	setrlimit(RLIMIT_NOFILE, &old);
	pthread_attr_destroy(&at);
	ck_assert_msg(a.r == 0, "%s", a.e.msg);
	ck_assert_int_eq(access(tree, F_OK), -1);
	ck_assert_int_eq(access(keep, F_OK), 0);
	ck_assert_int_eq(vmf_proc_fd_count(getpid()), fds);
	printf("removed a %u-level chain and %u entries in %lld ms\n", depth, vmf_test_under_valgrind() ? 500u : 5000u,
	       (long long)ms);
	ck_assert_int_eq(vmf_rm_rf(d, &e), 0);
	free(d);
}
END_TEST

/* In a mount namespace of its own (the host's stays as it was), a tmpfs
 * and a bind mount below the tree: the removal touches nothing while they
 * are there (their owner unmounts them by the paths they have), says which
 * mount is in the way, and removes everything once they are gone.  Exit
 * status of the child: 0, or the check that failed. */
static int
mount_child(const char *d)
{
	char tree[600], m[700], b[700], src[700], f[800];
	if (unshare(CLONE_NEWNS) < 0 || mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0)
		return 77;
	snprintf(tree, sizeof tree, "%s/vm", d);
	snprintf(m, sizeof m, "%s/vm/share/a/m", d);
	snprintf(b, sizeof b, "%s/vm/b", d);
	snprintf(src, sizeof src, "%s/src", d);
	struct vmf_error e = {0};
	if (vmf_mkdir_p(m, 0700, &e) < 0 || vmf_mkdir_p(b, 0700, &e) < 0 || vmf_mkdir_p(src, 0700, &e) < 0)
		return 1;
	snprintf(f, sizeof f, "%s/vm/share/a/deep/er", d);
	if (vmf_mkdir_p(f, 0700, &e) < 0)
		return 1;
	if (mount("tmpfs", m, "tmpfs", 0, "size=1m") < 0 || mount(src, b, "none", MS_BIND, NULL) < 0)
		return 77;
	snprintf(f, sizeof f, "%s/inside", m);
	if (vmf_write_file_atomic(f, "x", 1, 0600, &e) < 0)
		return 2;
	snprintf(f, sizeof f, "%s/kept", src);
	if (vmf_write_file_atomic(f, "x", 1, 0600, &e) < 0)
		return 3;
	if (vmf_rm_rf(tree, &e) != -EBUSY || !strstr(e.msg, "holds a mount"))
		return 4;
	snprintf(f, sizeof f, "%s/inside", m);
	if (access(f, F_OK) != 0)
		return 5;
	snprintf(f, sizeof f, "%s/vm/share/a/deep/er", d);
	if (access(f, F_OK) != 0)
		return 6;
	/* The top itself a mount point: refused whole. */
	if (vmf_rm_rf(m, &e) != -EBUSY)
		return 7;
	if (umount(m) < 0 || umount(b) < 0)
		return 8;
	if (vmf_rm_rf(tree, &e) < 0 || access(tree, F_OK) == 0)
		return 9;
	snprintf(f, sizeof f, "%s/kept", src);
	return access(f, F_OK) == 0 ? 0 : 10;
}

START_TEST(rm_rf_never_enters_a_mount)
{
	if (geteuid() != 0) {
		vmf_test_skip("mounting a tmpfs needs root");
		return;
	}
	char *d = vmf_test_tmpdir("vmf-rmrf-mnt");
	pid_t pid = vmf_test_fork();
	if (pid == 0)
		_exit(mount_child(d));
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_rm_rf(d, &e), 0);
	free(d);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
		vmf_test_skip("no mount namespace or tmpfs here");
		return;
	}
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "check %d failed", WEXITSTATUS(st));
}
END_TEST

/* ---- guest text ---- */

START_TEST(escape_and_utf8)
{
	char out[256];
	/* Plain text, UTF-8 letters and paths pass as they are. */
	vmf_escape("caf\xc3\xa9 /run/x-1.sock", out, sizeof out, 0);
	ck_assert_str_eq(out, "caf\xc3\xa9 /run/x-1.sock");
	ck_assert(vmf_text_is_safe("caf\xc3\xa9"));
	/* Terminal controls, invalid bytes, C1 and bidi characters do not. */
	vmf_escape("a\x1b]0;x\x07\r\n\t\x7f\xff\xc2\x9b\xe2\x80\xae" "b\\\"", out, sizeof out, 0);
	ck_assert_str_eq(out, "a\\x1b]0;x\\x07\\r\\n\\t\\x7f\\xff\\u009b\\u202eb\\\"");
	ck_assert(!vmf_text_is_safe("a\x1b"));
	vmf_escape("b\\\"", out, sizeof out, VMF_ESC_BACKSLASH | VMF_ESC_QUOTE);
	ck_assert_str_eq(out, "b\\\\\\\"");
	/* Overlong forms and surrogates are not UTF-8. */
	vmf_escape("\xc0\xaf\xed\xa0\x80", out, sizeof out, 0);
	ck_assert_str_eq(out, "\\xc0\\xaf\\xed\\xa0\\x80");
	/* An escape is never cut; what does not fit ends in "...". */
	vmf_escape("abc\x1b\x1b\x1b", out, 10, 0);
	ck_assert_str_eq(out, "abc...");
	ck_assert_uint_eq(vmf_escape("\x1b\x1b", out, 1, 0), 0);
	/* Invalid UTF-8 made valid, whole characters kept. */
	ck_assert_uint_eq(vmf_utf8_fix("a\xff" "b\xe2\x82", 5, out, sizeof out), 11);
	ck_assert_str_eq(out, "a\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd");
	ck_assert(vmf_utf8_valid(out, strlen(out)));
	ck_assert_uint_eq(vmf_utf8_valid_len("ab\xe2\x82\xac\xe2\x82", 7), 5);
	vmf_utf8_fix("\xe2\x82\xac\xe2\x82\xac", 6, out, 5);
	ck_assert_str_eq(out, "\xe2\x82\xac");
}
END_TEST

/* Every control byte of a message becomes an escape in the log line: one
 * line, nothing a terminal acts on. */
START_TEST(log_lines_escape_control_bytes)
{
	char *d = vmf_test_tmpdir("vmf-log");
	char path[600];
	snprintf(path, sizeof path, "%s/log", d);
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	fflush(stderr);
	int saved = dup(2);
	dup2(fd, 2);
	vmf_log_set_level(VMF_LOG_INFO);
	log_info("hostname '%s'", "x\x1b]0;owned\x07\x1b[2J\nlevel=error msg=fake\xc2\x9b\xff\"\\");
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	close(fd);
	char *log = NULL;
	size_t n;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_read_file(path, &log, &n, 1 << 16, &e), 0);
	ck_assert_msg(n > 0 && log[n - 1] == '\n' && strchr(log, '\n') == log + n - 1, "not one line: %s", log);
	for (size_t i = 0; i + 1 < n; i++)
		ck_assert_msg((unsigned char)log[i] >= 0x20 && log[i] != 0x7f, "byte %zu is 0x%02x: %s", i,
			      (unsigned char)log[i], log);
	ck_assert(vmf_utf8_valid(log, n));
	ck_assert_msg(strstr(log, "x\\x1b]0;owned\\x07\\x1b[2J\\nlevel=error msg=fake\\u009b\\xff\\\"\\\\"), "%s", log);
	free(log);
	ck_assert_int_eq(vmf_rm_rf(d, &e), 0);
	free(d);
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
	tcase_add_test(tc, rm_rf_any_depth_few_fds_small_stack);
	tcase_add_test(tc, escape_and_utf8);
	tcase_add_test(tc, log_lines_escape_control_bytes);
	suite_add_tcase(s, tc);
	/* Root only (a mount namespace of its own): its own meson test. */
	TCase *tm = tcase_create("mounts");
	tcase_add_test(tm, rm_rf_never_enters_a_mount);
	tcase_set_tags(tm, VMF_TEST_OWN_CASE);
	suite_add_tcase(s, tm);
	return vmf_test_run(s);
}
