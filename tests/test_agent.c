/* The guest agent protocol without a VM.
 *
 * "agent": the real vmf-agent binary in test mode (--fd) over a socketpair,
 * driven by the host client (hypervisors/agent.c) and by raw frames:
 * requests, validation, malformed, oversized and truncated frames.  Test
 * mode never touches the host: SetTime and Handout echo, ReseedRng and
 * NewIdentity only sample (a machine id only in a file given to it),
 * OnlineCpuMem and MountShare answer EPERM after validating; file requests
 * act below --files-root (the share dir here) as their "/".
 *
 * "listener": the same binary with --listen-fd on a unix socket listener,
 * the code that serves the guest's vsock port 1024: several connections
 * at once (a half-sent frame on one not disturbing another), the oldest
 * closed beyond the limit, a closed one not making the agent spin.
 *
 * "client": the host client against a scripted fake agent (a thread), for
 * what a real agent does not do on demand: stale and orphan replies, a
 * reply cut by a deadline, an oversized reply, a late first answer.
 * (tests/test_agent_hostile.c has the guests that flood, trickle or lie.) */
#include <errno.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "frame.h"
#include "testlib.h"
#include "text.h"
#include "util.h"

static pid_t pid = -1;
static int host_fd = -1;
static char *share;
static const char *machine_id_file;  /* --machine-id-file for the next start_agent */

static void
start_agent(void)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pid = vmf_test_fork();
	if (pid == 0) {
		/* Only its stream and stdio: with CK_FORK=no, check's own message
		 * file is open in this process and must not be inherited. */
		if (sv[1] == 3)
			fcntl(3, F_SETFD, 0);
		else
			dup2(sv[1], 3);
		syscall(SYS_close_range, 4U, ~0U, 0U);
		if (machine_id_file)
			execl(vmf_test_agent_path(), "vmf-agent", "--fd", "3", "--share-dir", share, "--files-root", share,
			      "--machine-id-file", machine_id_file, (char *)NULL);
		else
			execl(vmf_test_agent_path(), "vmf-agent", "--fd", "3", "--share-dir", share, "--files-root", share,
			      (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	host_fd = sv[0];
}

/* Waits for the agent to exit (EOF on its stream ends it); its status, or
 * -1 when it had to be killed at the deadline. */
static int
reap_agent(int timeout_ms)
{
	int st = -1, w = 0;
	int pfd = pidfd_open(pid, 0);
	if (pfd >= 0) {
		struct pollfd p = { .fd = pfd, .events = POLLIN };
		if (poll(&p, 1, timeout_ms) == 1)
			st = 0;
		close(pfd);
	} else {
		/* No pidfd (valgrind does not know the syscall): poll waitpid. */
		int64_t deadline = vmf_now_ms() + timeout_ms;
		pid_t r;
		while ((r = waitpid(pid, &w, WNOHANG)) == 0 && vmf_now_ms() < deadline)
			poll(NULL, 0, 10);
		if (r == pid) {
			pid = -1;
			return w;
		}
	}
	if (st < 0)
		kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &w, 0), pid);
	pid = -1;
	return st < 0 ? -1 : w;
}

static void
setup(void)
{
	share = vmf_test_tmpdir("vmf-agent-share");
	struct vmf_error e;
	char f[600];
	/* Names come back sorted. */
	snprintf(f, sizeof f, "%s/visible", share);
	ck_assert_int_eq(vmf_write_file_atomic(f, "x", 1, 0644, &e), 0);
	snprintf(f, sizeof f, "%s/another", share);
	ck_assert_int_eq(vmf_write_file_atomic(f, "y", 1, 0644, &e), 0);
	start_agent();
}

static void
teardown(void)
{
	if (host_fd >= 0)
		close(host_fd);
	host_fd = -1;
	if (pid > 0)
		reap_agent(2000);
	struct vmf_error e;
	vmf_rm_rf(share, &e);
	free(share);
}

static void
send_raw_request(uint64_t id, uint32_t version, Vmf__Agent__AgentRequest *req)
{
	req->protocol_version = version;
	req->id = id;
	uint8_t buf[1024];
	size_t n = vmf__agent__agent_request__pack(req, buf);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_frame_write(host_fd, buf, n, vmf_now_ms() + 1000, &e), 0);
}

static Vmf__Agent__AgentReply *
read_reply(void)
{
	uint8_t *buf;
	size_t n;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_frame_read(host_fd, &buf, &n, VMF_AGENT_MAX_FRAME, vmf_now_ms() + 5000, &e) == 0, "%s", e.msg);
	Vmf__Agent__AgentReply *r = vmf__agent__agent_reply__unpack(NULL, n, buf);
	free(buf);
	ck_assert_ptr_nonnull(r);
	return r;
}

static void
expect_error_reply(int code, uint64_t id)
{
	Vmf__Agent__AgentReply *r = read_reply();
	ck_assert_int_eq(r->error_code, code);
	ck_assert_uint_eq(r->id, id);
	ck_assert_ptr_nonnull(r->error_message);
	ck_assert_int_gt(strlen(r->error_message), 10);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
}

/* The agent still answers on the same stream. */
static void
assert_serving(void)
{
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	struct vmf_error e = {0};
	ck_assert_msg(vmf_agent_ping(a, 5000, &e) == 0, "agent stopped serving: %s", e.msg);
	vmf_agent_free(a);
}

START_TEST(ping_and_guest_info)
{
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	struct vmf_error e = {0};
	ck_assert_msg(vmf_agent_wait_ready(a, 5000, &e) == 0, "%s", e.msg);
	ck_assert_msg(vmf_agent_ping(a, 5000, &e) == 0, "%s", e.msg);
	Vmf__Agent__AgentReply *r, *r2;
	ck_assert_msg(vmf_agent_guest_info(a, &r, 5000, &e) == 0, "%s", e.msg);
	ck_assert_msg(vmf_agent_guest_info(a, &r2, 5000, &e) == 0, "%s", e.msg);
	Vmf__Agent__GuestInfo *g = r->guest_info;
	ck_assert_uint_ge(g->online_cpus, 1);
	ck_assert_uint_le(g->online_cpus, 4096);
	ck_assert_uint_gt(g->mem_total_kib, 16 * 1024);
	ck_assert_uint_gt(g->uptime_ns, 0);
	ck_assert_uint_gt(g->monotonic_ns, 0);
	ck_assert_uint_ge(g->uptime_ns + 1000000, g->monotonic_ns);
	ck_assert_int_lt(llabs(g->realtime_ns - vmf_realtime_ns()), 2000000000LL);
	ck_assert_uint_eq(strlen(g->boot_id), 36);
	ck_assert_uint_eq(g->random.len, 16);
	ck_assert_uint_eq(r2->guest_info->random.len, 16);
	ck_assert_int_ne(memcmp(g->random.data, r2->guest_info->random.data, 16), 0);
	ck_assert_uint_ge(r2->guest_info->monotonic_ns, g->monotonic_ns);
	ck_assert_uint_eq(g->n_share_entries, 2);
	ck_assert_str_eq(g->share_entries[0], "another");
	ck_assert_str_eq(g->share_entries[1], "visible");
	ck_assert_ptr_nonnull(strstr(g->agent_version, "vmf-agent"));
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	vmf__agent__agent_reply__free_unpacked(r2, NULL);
	vmf_agent_free(a);
}
END_TEST

START_TEST(set_time_and_reseed)
{
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	struct vmf_error e = {0};
	/* Test mode echoes instead of setting the host's clock. */
	int64_t want = 1700000000123456789LL, got = 0;
	ck_assert_msg(vmf_agent_set_time(a, want, &got, 5000, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(got, want);
	ck_assert_int_eq(vmf_agent_set_time(a, 0, &got, 5000, &e), -EINVAL);
	ck_assert_int_eq(vmf_agent_set_time(a, -5, &got, 5000, &e), -EINVAL);

	uint8_t ent[600], s1[16], s2[16];
	memset(ent, 0xa5, sizeof ent);
	for (size_t n = 0; n <= 15; n += 15) {
		ck_assert_int_eq(vmf_agent_reseed(a, ent, n, s1, 5000, &e), -EINVAL);
		ck_assert_msg(strstr(e.msg, "16 to 512") != NULL, "%s", e.msg);
	}
	ck_assert_int_eq(vmf_agent_reseed(a, ent, 513, s1, 5000, &e), -EINVAL);
	ck_assert_int_eq(vmf_agent_reseed(a, ent, sizeof ent, s1, 5000, &e), -EINVAL);
	ck_assert_msg(vmf_agent_reseed(a, ent, 16, s1, 5000, &e) == 0, "%s", e.msg);
	ck_assert_msg(vmf_agent_reseed(a, ent, 512, s2, 5000, &e) == 0, "%s", e.msg);
	ck_assert_int_ne(memcmp(s1, s2, 16), 0);
	vmf_agent_free(a);
}
END_TEST

START_TEST(new_identity_and_handout)
{
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	struct vmf_error e = {0};
	char host_before[256] = "", host_after[256] = "";
	gethostname(host_before, sizeof host_before);
	/* Each NewIdentity: a fresh sample and boot id; no machine id where
	 * none was given (test mode never touches the host's). */
	struct vmf_agent_identity i1, i2;
	ck_assert_msg(vmf_agent_new_identity(a, &i1, 5000, &e) == 0, "%s", e.msg);
	ck_assert_msg(vmf_agent_new_identity(a, &i2, 5000, &e) == 0, "%s", e.msg);
	ck_assert_uint_eq(strlen(i1.boot_id), 36);
	ck_assert_int_eq(i1.boot_id[14], '4');
	ck_assert_str_ne(i1.boot_id, i2.boot_id);
	ck_assert_int_ne(memcmp(i1.sample, i2.sample, 16), 0);
	ck_assert_str_eq(i1.machine_id, "");

	/* Handout, split: sent, then (after the host's resume) received; test
	 * mode echoes the time and hostname and sets neither. */
	struct vmf_agent_handout h;
	ck_assert_msg(vmf_agent_send_handout(a, "sb-1.x_y", &h, 5000, &e) == 0, "%s", e.msg);
	ck_assert_int_gt(h.host_sent_ns, 0);
	ck_assert_msg(vmf_agent_recv_handout(a, &h, 5000, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(h.guest_ns, h.host_sent_ns);
	ck_assert_int_ge(h.host_recv_ns, h.host_sent_ns);
	ck_assert_str_eq(h.hostname, "sb-1.x_y");
	ck_assert(vmf_agent_handout_clock_error_ms(&h) < 1000);
	/* With the SetTime that follows cont: its reply comes after the
	 * hand-out's, and the clock figures are its, not the hand-out's. */
	ck_assert_msg(vmf_agent_send_handout(a, "sb-2", &h, 5000, &e) == 0, "%s", e.msg);
	int64_t handout_ns = h.host_sent_ns;
	ck_assert_msg(vmf_agent_send_handout_time(a, &h, 5000, &e) == 0, "%s", e.msg);
	ck_assert_int_ne(h.time_id, 0);
	ck_assert_int_gt(h.host_sent_ns, handout_ns);
	ck_assert_msg(vmf_agent_recv_handout(a, &h, 5000, &e) == 0, "%s", e.msg);
	ck_assert_str_eq(h.hostname, "sb-2");
	ck_assert_int_eq(h.guest_ns, h.host_sent_ns);
	ck_assert_int_ge(h.host_recv_ns, h.host_sent_ns);
	ck_assert_msg(vmf_agent_ping(a, 5000, &e) == 0, "%s", e.msg);
	gethostname(host_after, sizeof host_after);
	ck_assert_str_eq(host_before, host_after);

	/* Bad hostnames are refused, and the stream stays in sync. */
	static const char *bad[] = { "-lead", "a b", "a/b", "x;reboot",
				     "0123456789012345678901234567890123456789012345678901234567890123x" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		ck_assert_int_eq(vmf_agent_send_handout(a, bad[i], &h, 5000, &e), 0);
		ck_assert_int_eq(vmf_agent_recv_handout(a, &h, 5000, &e), -EINVAL);
		ck_assert_msg(strstr(e.msg, "hostname") != NULL, "%s", e.msg);
	}
	ck_assert_msg(vmf_agent_ping(a, 5000, &e) == 0, "%s", e.msg);
	vmf_agent_free(a);

	/* Raw: entropy outside 16..512 bytes, a machine id not 16 bytes. */
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__NewIdentity ni = VMF__AGENT__NEW_IDENTITY__INIT;
	uint8_t ent[16] = { 1 };
	ni.entropy.data = ent;
	ni.entropy.len = 15;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_NEW_IDENTITY;
	req.new_identity = &ni;
	send_raw_request(77, AGENT_PROTOCOL_VERSION, &req);
	expect_error_reply(EINVAL, 77);
	ni.entropy.len = 16;
	ni.machine_id.data = ent;
	ni.machine_id.len = 8;
	send_raw_request(78, AGENT_PROTOCOL_VERSION, &req);
	expect_error_reply(EINVAL, 78);
}
END_TEST

/* Where the image has a machine id (here a scratch file given with
 * --machine-id-file), NewIdentity rewrites it from the host's bytes. */
START_TEST(new_identity_rewrites_an_existing_machine_id)
{
	char f[700];
	snprintf(f, sizeof f, "%s/machine-id", share);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_write_file_atomic(f, "uninitialized\n", 14, 0444, &e), 0);
	close(host_fd);
	host_fd = -1;
	reap_agent(2000);
	machine_id_file = f;
	start_agent();
	machine_id_file = NULL;
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	struct vmf_agent_identity i1, i2;
	ck_assert_msg(vmf_agent_new_identity(a, &i1, 5000, &e) == 0, "%s", e.msg);
	char *got = NULL;
	ck_assert_int_eq(vmf_read_file(f, &got, NULL, 100, &e), 0);
	ck_assert_uint_eq(strlen(i1.machine_id), 32);
	ck_assert_int_eq(i1.machine_id[12], '4');
	ck_assert_uint_eq(strspn(i1.machine_id, "0123456789abcdef"), 32);
	ck_assert_int_eq(strncmp(got, i1.machine_id, 32), 0);
	ck_assert_str_eq(got + 32, "\n");
	free(got);
	ck_assert_msg(vmf_agent_new_identity(a, &i2, 5000, &e) == 0, "%s", e.msg);
	ck_assert_str_ne(i1.machine_id, i2.machine_id);
	vmf_agent_free(a);
}
END_TEST

START_TEST(validation_and_test_mode_refusals)
{
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	struct vmf_error e = {0};
	static const char *bad[] = { "", "bad/tag", "a,trans=tcp", "..x y", "0123456789012345678901234567890123" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		ck_assert_int_eq(vmf_agent_mount_share(a, bad[i], 5000, &e), -EINVAL);
		ck_assert_ptr_nonnull(strstr(e.msg, "share tag"));
	}
	/* A valid tag reaches the mount step, which test mode refuses. */
	ck_assert_int_eq(vmf_agent_mount_share(a, "share", 5000, &e), -EPERM);
	/* Disks: the serial and file system type cannot smuggle paths or
	 * options; valid ones reach the wait, which test mode refuses. */
	static const char *bad_serial[] = { "", "../sda", "a b", "vmfd0,ro", "012345678901234567890" };
	for (size_t i = 0; i < sizeof bad_serial / sizeof bad_serial[0]; i++) {
		ck_assert_int_eq(vmf_agent_mount_disk(a, bad_serial[i], "/mnt/d", NULL, false, NULL, 0, 5000, &e), -EINVAL);
		ck_assert_msg(strstr(e.msg, "disk serial"), "%s", e.msg);
		ck_assert_int_eq(vmf_agent_unmount_disk(a, bad_serial[i], "/mnt/d", 5000, &e), -EINVAL);
	}
	ck_assert_int_eq(vmf_agent_mount_disk(a, "vmfd0", "/mnt/d", "ext4,errors=panic", false, NULL, 0, 5000, &e),
			 -EINVAL);
	ck_assert_msg(strstr(e.msg, "file system type"), "%s", e.msg);
	ck_assert_int_eq(vmf_agent_mount_disk(a, "vmfd0", "/mnt/d", "ext4", true, NULL, 0, 5000, &e), -EPERM);
	ck_assert_int_eq(vmf_agent_unmount_disk(a, "vmfd0", "/mnt/d", 5000, &e), -EPERM);
	uint32_t cpus;
	uint64_t kib;
	ck_assert_int_eq(vmf_agent_online(a, 2, 512, &cpus, &kib, 5000, &e), -EPERM);
	/* Flushing, freezing and powering off act on the guest as a whole:
	 * test mode, on a host, refuses them. */
	struct vmf_agent_flush fl = { .serial = "vmfd0", .path = "/mnt/d" };
	ck_assert_int_eq(vmf_agent_flush_disks(a, VMF_AGENT_UNMOUNT, &fl, 1, 5000, &e), -EPERM);
	ck_assert_int_eq(vmf_agent_flush_disks(a, VMF_AGENT_FREEZE, &fl, 1, 5000, &e), -EPERM);
	ck_assert_int_eq(vmf_agent_poweroff(a, &fl, 1, 100, 5000, &e), -EPERM);
	ck_assert(!fl.answered && !fl.done);

	/* A protocol version this agent does not speak. */
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	send_raw_request(7, 99, &req);
	expect_error_reply(EPROTO, 7);
	/* A request without a body (or of a type from a newer host). */
	Vmf__Agent__AgentRequest empty = VMF__AGENT__AGENT_REQUEST__INIT;
	send_raw_request(8, AGENT_PROTOCOL_VERSION, &empty);
	expect_error_reply(EOPNOTSUPP, 8);
	/* The host client refuses to send what it cannot check the reply of. */
	Vmf__Agent__AgentReply *rep;
	ck_assert_int_eq(vmf_agent_call(a, &empty, &rep, 1000, &e), -EINVAL);
	ck_assert_ptr_null(rep);
	ck_assert_msg(vmf_agent_ping(a, 5000, &e) == 0, "%s", e.msg);
	vmf_agent_free(a);
}
END_TEST

START_TEST(garbage_and_empty_frames)
{
	struct vmf_error e = {0};
	static const uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0x01 };
	ck_assert_int_eq(vmf_frame_write(host_fd, junk, sizeof junk, vmf_now_ms() + 1000, &e), 0);
	expect_error_reply(EBADMSG, 0);
	assert_serving();
	/* An empty frame decodes as a request with nothing set. */
	ck_assert_int_eq(vmf_frame_write(host_fd, NULL, 0, vmf_now_ms() + 1000, &e), 0);
	expect_error_reply(EPROTO, 0);
	assert_serving();
	/* Requests split into single bytes are reassembled. */
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.protocol_version = AGENT_PROTOCOL_VERSION;
	req.id = 99;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	uint8_t buf[64];
	size_t n = vmf__agent__agent_request__pack(&req, buf + 4);
	vmf_frame_put_len(buf, (uint32_t)n);
	for (size_t i = 0; i < n + 4; i++)
		ck_assert_int_eq(write(host_fd, buf + i, 1), 1);
	Vmf__Agent__AgentReply *r = read_reply();
	ck_assert_uint_eq(r->id, 99);
	ck_assert_int_eq(r->error_code, 0);
	ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_PONG);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
}
END_TEST

START_TEST(oversized_frames)
{
	struct vmf_error e = {0};
	/* A 4 GiB length prefix is refused before any payload arrives... */
	uint8_t h[4] = { 0xff, 0xff, 0xff, 0xff };
	ck_assert_int_eq(write(host_fd, h, 4), 4);
	expect_error_reply(EMSGSIZE, 0);
	/* ...and its payload is skipped as it streams in: the agent reads
	 * on, allocating nothing, until the host gives up on the stream. */
	uint8_t *chunk = calloc(1, 1 << 20);
	for (int i = 0; i < 8; i++)
		ck_assert_int_eq(vmf_write_full(host_fd, chunk, 1 << 20, vmf_now_ms() + 5000, &e), 0);
	close(host_fd);
	host_fd = -1;
	int st = reap_agent(5000);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "agent status %d", st);

	/* A frame one byte over the limit, sent whole, is skipped exactly and
	 * the next request is served. */
	start_agent();
	uint32_t big = VMF_AGENT_MAX_FRAME + 1;
	ck_assert_int_eq(vmf_frame_write(host_fd, chunk, big, vmf_now_ms() + 5000, &e), 0);
	free(chunk);
	expect_error_reply(EMSGSIZE, 0);
	assert_serving();
}
END_TEST

START_TEST(truncated_frame_then_close)
{
	uint8_t t[6] = { 0, 0, 0, 100, 1, 2 };
	ck_assert_int_eq(write(host_fd, t, sizeof t), (ssize_t)sizeof t);
	close(host_fd);
	host_fd = -1;
	int st = reap_agent(5000);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "agent status %d", st);
}
END_TEST

START_TEST(stale_replies_are_skipped)
{
	/* A request whose reply nobody reads (it timed out, or was sent before
	 * the template was saved) must not be taken for the next answer. */
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__GuestInfoRequest gi = VMF__AGENT__GUEST_INFO_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_GUEST_INFO;
	req.guest_info = &gi;
	send_raw_request(12345, AGENT_PROTOCOL_VERSION, &req);
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	struct vmf_error e = {0};
	ck_assert_msg(vmf_agent_ping(a, 5000, &e) == 0, "%s", e.msg);
	int64_t t = 0;
	ck_assert_msg(vmf_agent_set_time(a, 42, &t, 5000, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(t, 42);
	vmf_agent_free(a);
}
END_TEST

/* ---- files ---- */

/* One file request, its reply (the caller frees it). */
static Vmf__Agent__AgentReply *
file_call(Vmf__Agent__AgentRequest *req)
{
	static uint64_t id = 1000;
	req->protocol_version = AGENT_PROTOCOL_VERSION;
	req->id = ++id;
	size_t n = vmf__agent__agent_request__get_packed_size(req);
	uint8_t *buf = malloc(n);
	ck_assert_ptr_nonnull(buf);
	vmf__agent__agent_request__pack(req, buf);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_frame_write(host_fd, buf, n, vmf_now_ms() + 5000, &e), 0);
	free(buf);
	Vmf__Agent__AgentReply *r = read_reply();
	ck_assert_uint_eq(r->id, id);
	return r;
}

static Vmf__Agent__FileAccess as_root = VMF__AGENT__FILE_ACCESS__INIT;

static Vmf__Agent__AgentReply *
file_write(const char *path, uint64_t offset, const void *data, size_t len, bool truncate)
{
	Vmf__Agent__FileWrite w = VMF__AGENT__FILE_WRITE__INIT;
	w.access = &as_root;
	w.path = (char *)path;
	w.offset = offset;
	w.data.data = (uint8_t *)data;
	w.data.len = len;
	w.truncate = truncate;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_WRITE;
	req.file_write = &w;
	return file_call(&req);
}

static Vmf__Agent__AgentReply *
file_read(Vmf__Agent__FileAccess *as, const char *path, uint64_t offset, uint32_t length)
{
	Vmf__Agent__FileRead rd = VMF__AGENT__FILE_READ__INIT;
	rd.access = as;
	rd.path = (char *)path;
	rd.offset = offset;
	rd.length = length;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_READ;
	req.file_read = &rd;
	return file_call(&req);
}

/* Stat, List, Mkdir, Move or Remove (kind: the request's body case). */
static Vmf__Agent__AgentReply *
file_simple(int kind, const char *path, const char *dest, uint32_t depth, uint32_t skip)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__FileStat st = VMF__AGENT__FILE_STAT__INIT;
	Vmf__Agent__FileList ls = VMF__AGENT__FILE_LIST__INIT;
	Vmf__Agent__FileMkdir mk = VMF__AGENT__FILE_MKDIR__INIT;
	Vmf__Agent__FileMove mv = VMF__AGENT__FILE_MOVE__INIT;
	Vmf__Agent__FileRemove rm = VMF__AGENT__FILE_REMOVE__INIT;
	req.body_case = kind;
	switch (kind) {
	case VMF__AGENT__AGENT_REQUEST__BODY_FILE_STAT:
		st.path = (char *)path, st.access = &as_root, req.file_stat = &st;
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_FILE_LIST:
		ls.path = (char *)path, ls.depth = depth, ls.skip = skip, req.file_list = &ls;
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_FILE_MKDIR:
		mk.path = (char *)path, req.file_mkdir = &mk;
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_FILE_MOVE:
		mv.source = (char *)path, mv.destination = (char *)dest, req.file_move = &mv;
		break;
	default:
		rm.path = (char *)path, req.file_remove = &rm;
		break;
	}
	return file_call(&req);
}

#define STAT VMF__AGENT__AGENT_REQUEST__BODY_FILE_STAT
#define LIST VMF__AGENT__AGENT_REQUEST__BODY_FILE_LIST
#define MKDIR VMF__AGENT__AGENT_REQUEST__BODY_FILE_MKDIR
#define MOVE VMF__AGENT__AGENT_REQUEST__BODY_FILE_MOVE
#define REMOVE VMF__AGENT__AGENT_REQUEST__BODY_FILE_REMOVE

static void
expect_file_error(Vmf__Agent__AgentReply *r, int code, const char *words)
{
	ck_assert_msg(r->error_code == code, "error %d (%s), expected %d", r->error_code,
		      r->error_message ? r->error_message : "", code);
	ck_assert_msg(strstr(r->error_message, words), "'%s' lacks '%s'", r->error_message, words);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
}

static void
expect_file_ok(Vmf__Agent__AgentReply *r)
{
	ck_assert_msg(r->error_code == 0, "%s", r->error_message);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
}

START_TEST(files_write_read_list_move_remove)
{
	char path[700], dir[700], moved[700];
	/* 100 KiB in three chunks, read back in 48 KiB ones. */
	size_t total = 100 * 1024;
	uint8_t *data = malloc(total), *back = calloc(1, total);
	for (size_t i = 0; i < total; i++)
		data[i] = (uint8_t)(i * 7 + i / 251);
	snprintf(path, sizeof path, "/data.bin");
	for (size_t off = 0; off < total; off += 48 * 1024) {
		size_t k = total - off < 48 * 1024 ? total - off : 48 * 1024;
		Vmf__Agent__AgentReply *r = file_write(path, off, data + off, k, off == 0);
		ck_assert_msg(r->error_code == 0, "%s", r->error_message);
		ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_FILE_ENTRY);
		ck_assert_uint_eq(r->file_entry->size, off + k);
		vmf__agent__agent_reply__free_unpacked(r, NULL);
	}
	size_t got = 0;
	for (bool eof = false; !eof;) {
		Vmf__Agent__AgentReply *r = file_read(&as_root, path, got, 48 * 1024);
		ck_assert_msg(r->error_code == 0, "%s", r->error_message);
		ck_assert_uint_eq(r->file_data->size, total);
		ck_assert_uint_le(got + r->file_data->data.len, total);
		memcpy(back + got, r->file_data->data.data, r->file_data->data.len);
		got += r->file_data->data.len;
		eof = r->file_data->eof;
		vmf__agent__agent_reply__free_unpacked(r, NULL);
	}
	ck_assert_uint_eq(got, total);
	ck_assert(memcmp(data, back, total) == 0);
	/* A chunk above the bound is refused whole. */
	expect_file_error(file_write(path, 0, data, 48 * 1024 + 1, true), EINVAL, "at most");
	expect_file_error(file_read(&as_root, path, 0, 48 * 1024 + 1), EINVAL, "at most");
	/* A rewrite truncates. */
	Vmf__Agent__AgentReply *r = file_write(path, 0, "short", 5, true);
	ck_assert_uint_eq(r->file_entry->size, 5);
	ck_assert_str_eq(r->file_entry->name, "data.bin");
	ck_assert_int_eq(r->file_entry->type, VMF__AGENT__FILE_TYPE__FILE_TYPE_FILE);
	vmf__agent__agent_reply__free_unpacked(r, NULL);

	/* mkdir with parents; again: not created; over a file: ENOTDIR. */
	snprintf(dir, sizeof dir, "/a/b/c");
	r = file_simple(MKDIR, dir, NULL, 0, 0);
	ck_assert_msg(r->error_code == 0, "%s", r->error_message);
	ck_assert(r->file_mkdir->created);
	ck_assert_int_eq(r->file_mkdir->entry->type, VMF__AGENT__FILE_TYPE__FILE_TYPE_DIRECTORY);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	r = file_simple(MKDIR, dir, NULL, 0, 0);
	ck_assert(r->error_code == 0 && !r->file_mkdir->created);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	expect_file_error(file_simple(MKDIR, path, NULL, 0, 0), ENOTDIR, "not a directory");

	/* 600 files: pages in name order, none twice, none lost. */
	char many[700];
	snprintf(many, sizeof many, "/a/many");
	expect_file_ok(file_simple(MKDIR, many, NULL, 0, 0));
	for (int i = 0; i < 600; i++) {
		char f[800];
		snprintf(f, sizeof f, "%s%s/f%03d", share, many, i);
		int fd = open(f, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
		ck_assert_int_ge(fd, 0);
		close(fd);
	}
	uint32_t seen = 0, pages = 0;
	for (bool more = true; more; pages++) {
		r = file_simple(LIST, many, NULL, 1, seen);
		ck_assert_msg(r->error_code == 0, "%s", r->error_message);
		ck_assert_uint_gt(r->file_entries->n_entries, 0);
		for (size_t i = 0; i < r->file_entries->n_entries; i++) {
			char want[16];
			snprintf(want, sizeof want, "f%03u", seen + (unsigned)i);
			ck_assert_str_eq(r->file_entries->entries[i]->name, want);
		}
		seen += (uint32_t)r->file_entries->n_entries;
		more = r->file_entries->more;
		vmf__agent__agent_reply__free_unpacked(r, NULL);
	}
	ck_assert_uint_eq(seen, 600);
	ck_assert_uint_ge(pages, 2);
	/* Depth: 1 lists a's own entries, 3 reaches c. */
	snprintf(dir, sizeof dir, "/a");
	r = file_simple(LIST, dir, NULL, 1, 0);
	ck_assert_uint_eq(r->file_entries->n_entries, 2);
	ck_assert_str_eq(r->file_entries->entries[0]->name, "b");
	ck_assert_str_eq(r->file_entries->entries[1]->name, "many");
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	r = file_simple(LIST, dir, NULL, 3, 0);
	ck_assert(r->error_code == 0 && r->file_entries->n_entries >= 3);
	ck_assert_str_eq(r->file_entries->entries[1]->name, "c");
	ck_assert_str_eq(r->file_entries->entries[1]->path, "/a/b/c");
	vmf__agent__agent_reply__free_unpacked(r, NULL);

	/* Move, then the source is gone. */
	snprintf(moved, sizeof moved, "/a/b/moved.bin");
	r = file_simple(MOVE, path, moved, 0, 0);
	ck_assert_msg(r->error_code == 0, "%s", r->error_message);
	ck_assert_str_eq(r->file_entry->path, moved);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	expect_file_error(file_simple(STAT, path, NULL, 0, 0), ENOENT, "cannot stat");

	/* A tree holding a symlink to a file outside it: the link goes, the
	 * file it names stays. */
	char keep[700], link[700], host_dir[700];
	snprintf(keep, sizeof keep, "%s/keep", share);
	snprintf(link, sizeof link, "%s/a/b/c/link", share);
	ck_assert_int_eq(symlink(keep, link), 0);
	expect_file_ok(file_write("/keep", 0, "kept", 4, true));
	r = file_simple(REMOVE, dir, NULL, 0, 0);
	ck_assert_msg(r->error_code == 0, "%s", r->error_message);
	ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_FILE_REMOVED);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	snprintf(host_dir, sizeof host_dir, "%s/a", share);
	ck_assert_int_eq(access(host_dir, F_OK), -1);
	ck_assert_int_eq(access(keep, F_OK), 0);
	expect_file_error(file_simple(REMOVE, dir, NULL, 0, 0), ENOENT, "cannot remove");
	free(data);
	free(back);
	assert_serving();
}
END_TEST

START_TEST(files_refusals_and_bounds)
{
	char fifo[700], secret[700];
	/* A FIFO is never opened for I/O: nothing blocks the agent. */
	snprintf(fifo, sizeof fifo, "%s/fifo", share);
	ck_assert_int_eq(mkfifo(fifo, 0666), 0);
	expect_file_error(file_read(&as_root, "/fifo", 0, 10), EINVAL, "not a regular file");
	expect_file_error(file_write("/fifo", 0, "x", 1, true), EINVAL, "not a regular file");
	expect_file_error(file_read(&as_root, "/", 0, 10), EISDIR, "not a regular file");
	/* Paths: relative, with "..", and the test root is the agent's "/":
	 * the host's own files are out of reach. */
	expect_file_error(file_read(&as_root, "relative/file", 0, 10), EINVAL, "absolute path");
	expect_file_error(file_read(&as_root, "/etc/passwd", 0, 10), ENOENT, "cannot open '/etc/passwd'");
	expect_file_error(file_simple(REMOVE, "/../x", NULL, 0, 0), EPERM, "--files-root");
	expect_file_error(file_simple(REMOVE, "/", NULL, 0, 0), EBUSY, "not removed");
	expect_file_error(file_simple(LIST, "/", NULL, 17, 0), EINVAL, "depth");
	/* The requested user: (uid_t)-1 is no user; a real one meets the
	 * guest's permissions, not the agent's root. */
	Vmf__Agent__FileAccess bad = VMF__AGENT__FILE_ACCESS__INIT, nobody = VMF__AGENT__FILE_ACCESS__INIT;
	bad.set_user = true, bad.uid = UINT32_MAX, bad.gid = 0;
	nobody.set_user = true, nobody.uid = 65534, nobody.gid = 65534;
	snprintf(secret, sizeof secret, "%s/secret", share);
	expect_file_ok(file_write("/secret", 0, "s", 1, true));
	ck_assert_int_eq(chmod(secret, 0600), 0);
	expect_file_error(file_read(&bad, "/secret", 0, 10), EINVAL, "not a valid id");
	if (geteuid() == 0) {
		/* The test root is 0700 (mkdtemp): nobody cannot even reach it. */
		ck_assert_int_eq(chmod(share, 0755), 0);
		expect_file_error(file_read(&nobody, "/secret", 0, 10), EACCES, "cannot open");
		/* The agent is itself again after: root reads it. */
		expect_file_ok(file_read(&as_root, "/secret", 0, 10));
	} else {
		/* A test agent that is not root cannot take on another user. */
		expect_file_error(file_read(&nobody, "/secret", 0, 10), EPERM, "cannot act as user id 65534");
	}
	assert_serving();
}
END_TEST

/* ---- watches ---- */

/* Events seen on the stream so far ("c:name", "w:name", "r:name",
 * "m:name" for a rename away), the lost count, and whether the watch
 * ended. */
struct seen {
	char log[64 * 1024];
	size_t events;
	uint64_t lost;
	bool ended;
	char reason[200];
};

static void
seen_take(struct seen *sn, uint64_t wid, const Vmf__Agent__FileEvents *fe)
{
	ck_assert_uint_eq(fe->watch_id, wid);
	static const char tag[] = "?cwrmx";
	for (size_t i = 0; i < fe->n_events; i++) {
		int t = fe->events[i]->type;
		ck_assert(t >= 1 && t <= 5);
		size_t at = strlen(sn->log);
		if (at + strlen(fe->events[i]->name) + 4 >= sizeof(sn->log))
			at = 0;   /* the latest events are what a test waits for */
		if (at + strlen(fe->events[i]->name) + 4 < sizeof(sn->log))
			snprintf(sn->log + at, sizeof(sn->log) - at, "%c:%s\n", tag[t], fe->events[i]->name);
	}
	sn->events += fe->n_events;
	sn->lost += fe->lost;
	if (fe->ended) {
		sn->ended = true;
		snprintf(sn->reason, sizeof(sn->reason), "%s", fe->reason);
	}
}

/* Sends a watch request; its reply, the events read before it kept in sn. */
static Vmf__Agent__AgentReply *
watch_call(Vmf__Agent__AgentRequest *req, struct seen *sn, uint64_t wid)
{
	static uint64_t id = 5000;
	req->protocol_version = AGENT_PROTOCOL_VERSION;
	req->id = ++id;
	size_t n = vmf__agent__agent_request__get_packed_size(req);
	uint8_t buf[n];
	vmf__agent__agent_request__pack(req, buf);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_frame_write(host_fd, buf, n, vmf_now_ms() + 5000, &e), 0);
	for (;;) {
		Vmf__Agent__AgentReply *r = read_reply();
		if (r->id == id)
			return r;
		ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_FILE_EVENTS);
		seen_take(sn, wid, r->file_events);
		vmf__agent__agent_reply__free_unpacked(r, NULL);
	}
}

static Vmf__Agent__AgentReply *
watch_start(Vmf__Agent__FileAccess *as, const char *path, bool recursive)
{
	Vmf__Agent__FileWatch w = VMF__AGENT__FILE_WATCH__INIT;
	w.access = as, w.path = (char *)path, w.recursive = recursive;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_WATCH;
	req.file_watch = &w;
	struct seen none = {0};
	Vmf__Agent__AgentReply *r = watch_call(&req, &none, 0);
	ck_assert_uint_eq(none.events, 0);
	return r;
}

static uint64_t
watch_ok(Vmf__Agent__FileAccess *as, const char *path, bool recursive)
{
	Vmf__Agent__AgentReply *r = watch_start(as, path, recursive);
	ck_assert_msg(r->error_code == 0, "watch %s: %s", path, r->error_message);
	ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_FILE_WATCH_STARTED);
	uint64_t wid = r->file_watch_started->watch_id;
	ck_assert_uint_gt(wid, 0);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	return wid;
}

static Vmf__Agent__AgentReply *
unwatch(uint64_t wid, struct seen *sn)
{
	Vmf__Agent__FileUnwatch u = VMF__AGENT__FILE_UNWATCH__INIT;
	u.watch_id = wid;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_UNWATCH;
	req.file_unwatch = &u;
	return watch_call(&req, sn, wid);
}

/* Reads events until the log holds want (or the watch ended, when want is
 * NULL). */
static void
seen_wait(struct seen *sn, uint64_t wid, const char *want)
{
	int64_t deadline = vmf_now_ms() + 10000;
	while (want ? !strstr(sn->log, want) : !sn->ended) {
		int left = (int)(deadline - vmf_now_ms());
		struct pollfd p = { .fd = host_fd, .events = POLLIN };
		ck_assert_msg(left > 0 && poll(&p, 1, left) == 1, "no '%s' in the events seen (the last of them):\n%s",
			      want ? want : "end", sn->log + (strlen(sn->log) > 600 ? strlen(sn->log) - 600 : 0));
		Vmf__Agent__AgentReply *r = read_reply();
		ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_FILE_EVENTS);
		seen_take(sn, wid, r->file_events);
		vmf__agent__agent_reply__free_unpacked(r, NULL);
	}
}

static void
host_file(const char *rel, const char *data)
{
	char p[700];
	snprintf(p, sizeof p, "%s/%s", share, rel);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	if (data)
		ck_assert_int_eq(write(fd, data, strlen(data)), (ssize_t)strlen(data));
	close(fd);
}

START_TEST(files_watch_events_recursion_and_refusals)
{
	char p[700], q[700];
	snprintf(p, sizeof p, "%s/w", share);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	snprintf(p, sizeof p, "%s/w/old", share);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	uint64_t wid = watch_ok(&as_root, "/w", true);
	struct seen sn = {0};
	host_file("w/a.txt", "hello");
	seen_wait(&sn, wid, "c:a.txt\n");
	seen_wait(&sn, wid, "w:a.txt\n");
	/* Below it: a directory there at the start, and one made after. */
	host_file("w/old/in-old", NULL);
	seen_wait(&sn, wid, "c:old/in-old\n");
	snprintf(p, sizeof p, "%s/w/new", share);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	seen_wait(&sn, wid, "c:new\n");
	host_file("w/new/in-new", "x");
	seen_wait(&sn, wid, "c:new/in-new\n");
	snprintf(p, sizeof p, "%s/w/a.txt", share);
	snprintf(q, sizeof q, "%s/w/b.txt", share);
	ck_assert_int_eq(rename(p, q), 0);
	seen_wait(&sn, wid, "m:a.txt\n");
	seen_wait(&sn, wid, "c:b.txt\n");
	ck_assert_int_eq(chmod(q, 0600), 0);
	seen_wait(&sn, wid, "x:b.txt\n");
	ck_assert_int_eq(unlink(q), 0);
	seen_wait(&sn, wid, "r:b.txt\n");
	ck_assert_uint_eq(sn.lost, 0);
	/* Stopped: its id is gone, nothing more comes. */
	Vmf__Agent__AgentReply *r = unwatch(wid, &sn);
	ck_assert_int_eq(r->error_code, 0);
	ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_FILE_UNWATCHED);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	r = unwatch(wid, &sn);
	expect_file_error(r, ENOENT, "no watch");

	/* The watched directory removed: the watch ends, saying so. */
	snprintf(p, sizeof p, "%s/gone", share);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	struct seen sg = {0};
	uint64_t gid = watch_ok(&as_root, "/gone", false);
	ck_assert_int_eq(rmdir(p), 0);
	seen_wait(&sg, gid, NULL);
	ck_assert_ptr_nonnull(strstr(sg.reason, "removed"));
	expect_file_error(unwatch(gid, &sg), ENOENT, "no watch");

	/* Refusals: a file, a missing path, a relative one, "..". */
	expect_file_error(watch_start(&as_root, "/w/new/in-new", false), ENOTDIR, "not a directory");
	expect_file_error(watch_start(&as_root, "/missing", false), ENOENT, "cannot watch '/missing'");
	expect_file_error(watch_start(&as_root, "w", false), EINVAL, "absolute path");
	expect_file_error(watch_start(&as_root, "/../etc", false), EPERM, "--files-root");
	/* As the requested user: the guest's permissions decide. */
	if (geteuid() == 0) {
		Vmf__Agent__FileAccess nobody = VMF__AGENT__FILE_ACCESS__INIT;
		nobody.set_user = true, nobody.uid = 65534, nobody.gid = 65534;
		ck_assert_int_eq(chmod(share, 0755), 0);
		snprintf(p, sizeof p, "%s/private", share);
		ck_assert_int_eq(mkdir(p, 0700), 0);
		expect_file_error(watch_start(&nobody, "/private", false), EACCES, "cannot watch '/private'");
	}
	/* At most 8 per connection; one stopped makes room. */
	uint64_t ids[8];
	for (int i = 0; i < 8; i++)
		ids[i] = watch_ok(&as_root, "/w", false);
	expect_file_error(watch_start(&as_root, "/w", false), EMFILE, "at most 8");
	struct seen sx = {0};
	expect_file_ok(unwatch(ids[3], &sx));
	ids[3] = watch_ok(&as_root, "/w", false);
	for (int i = 0; i < 8; i++)
		expect_file_ok(unwatch(ids[i], &sx));
	assert_serving();
}
END_TEST

/* A host that reads nothing: the watch's queue stays bounded, the excess
 * is reported as lost, and the watch goes on after. */
START_TEST(files_watch_queue_overflow_is_counted)
{
	char p[700];
	snprintf(p, sizeof p, "%s/flood", share);
	ck_assert_int_eq(mkdir(p, 0755), 0);
	uint64_t wid = watch_ok(&as_root, "/flood", false);
	/* Long names fill the connection's buffers (socket, the agent's
	 * reply queue) well before the files run out. */
	enum { FILES = 6000 };
	char name[240];
	memset(name, 'n', sizeof name);
	for (int i = 0; i < FILES; i++) {
		snprintf(name + 200, sizeof name - 200, "%05d", i);
		char rel[260];
		snprintf(rel, sizeof rel, "flood/%s", name);
		host_file(rel, NULL);
	}
	/* Events made while the queue is still full are lost too: a new file
	 * each round until one comes through (the queue drained). */
	struct seen sn = {0};
	bool through = false;
	for (int k = 0; !through && k < 20; k++) {
		char rel[64], want[64];
		snprintf(rel, sizeof rel, "flood/after-%d", k);
		snprintf(want, sizeof want, "c:after-%d\n", k);
		host_file(rel, NULL);
		int64_t until = vmf_now_ms() + 3000;
		struct pollfd pf = { .fd = host_fd, .events = POLLIN };
		while (!(through = strstr(sn.log, want) != NULL) && vmf_now_ms() < until &&
		       poll(&pf, 1, (int)(until - vmf_now_ms())) == 1) {
			Vmf__Agent__AgentReply *r = read_reply();
			ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_FILE_EVENTS);
			seen_take(&sn, wid, r->file_events);
			vmf__agent__agent_reply__free_unpacked(r, NULL);
		}
	}
	ck_assert_msg(through, "no event came through after the flood");
	ck_assert_msg(sn.lost > 0, "no event counted lost: %zu events seen", sn.events);
	ck_assert_uint_lt(sn.events, FILES);
	/* Still watching, nothing lost while the host keeps up. */
	uint64_t lost = sn.lost;
	host_file("flood/later", NULL);
	seen_wait(&sn, wid, "c:later\n");
	ck_assert_uint_eq(sn.lost, lost);
	expect_file_ok(unwatch(wid, &sn));
	assert_serving();
}
END_TEST

/* ---- the listener mode (vsock's serving code on a unix socket) ---- */

static char *lis_dir;
static struct sockaddr_un lis_addr;

static void
listener_setup(void)
{
	share = vmf_test_tmpdir("vmf-agent-share");
	lis_dir = vmf_test_tmpdir("vmf-agent-lis");
	lis_addr.sun_family = AF_UNIX;
	snprintf(lis_addr.sun_path, sizeof lis_addr.sun_path, "%s/agent.sock", lis_dir);
	pid = vmf_test_agent_listener(lis_addr.sun_path, share);
}

static void
listener_teardown(void)
{
	if (pid > 0) {
		/* Listener mode serves until killed. */
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		pid = -1;
	}
	struct vmf_error e;
	vmf_rm_rf(share, &e);
	vmf_rm_rf(lis_dir, &e);
	free(share);
	free(lis_dir);
}

/* The listening socket exists before the agent starts: connect succeeds
 * at once (the backlog holds it until the agent accepts). */
static int
lis_connect(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_msg(connect(fd, (struct sockaddr *)&lis_addr, sizeof lis_addr) == 0, "connect: %s",
		      strerror(errno));
	return fd;
}

static int
ping_on(int fd, struct vmf_error *e)
{
	struct vmf_agent *a = vmf_agent_new(dup(fd));
	int r = vmf_agent_ping(a, 5000, e);
	vmf_agent_free(a);
	return r;
}

/* True when the agent closed its end of fd before the deadline. */
static bool
closed_by_agent(int fd, int timeout_ms)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	char c;
	for (;;) {
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0)
			return false;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, left) == 1) {
			ssize_t n = read(fd, &c, 1);
			return n == 0 || (n < 0 && errno == ECONNRESET);
		}
	}
}

static long
agent_cpu_ticks(void)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* Fields 14 and 15 (utime, stime) follow the ")" of the command name. */
	const char *p = strrchr(buf, ')');
	ck_assert_ptr_nonnull(p);
	long ut = 0, st = 0;
	ck_assert_int_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &ut, &st), 2);
	return ut + st;
}

START_TEST(listener_serves_several_connections_at_once)
{
	struct vmf_error e = {0};
	int a = lis_connect();
	ck_assert_msg(ping_on(a, &e) == 0, "first connection: %s", e.msg);
	/* Half a frame on the first connection does not disturb the second. */
	uint8_t half[6] = { 0, 0, 0, 100, 1, 2 };
	ck_assert_int_eq(write(a, half, sizeof half), (ssize_t)sizeof half);
	int b = lis_connect();
	ck_assert_msg(ping_on(b, &e) == 0, "second connection (beside the first): %s", e.msg);
	Vmf__Agent__AgentReply *r;
	struct vmf_agent *ag = vmf_agent_new(dup(b));
	ck_assert_msg(vmf_agent_guest_info(ag, &r, 5000, &e) == 0, "%s", e.msg);
	ck_assert_ptr_nonnull(strstr(r->guest_info->agent_version, "vmf-agent"));
	ck_assert_uint_eq(r->guest_info->n_share_entries, 0);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	vmf_agent_free(ag);
	/* The first is still served: the rest of its frame (garbage, answered
	 * with an error of id 0), then a Ping. */
	uint8_t rest[98] = { 0xff };
	ck_assert_int_eq(write(a, rest, sizeof rest), (ssize_t)sizeof rest);
	ck_assert_msg(ping_on(a, &e) == 0, "first connection, after the second came: %s", e.msg);
	close(a);
	close(b);
}
END_TEST

/* After a snapshot restore the VMM resets its vsock connections and the
 * host connects again; one that was never reset must not keep the host
 * out: beyond the limit (16) the oldest is closed. */
START_TEST(listener_closes_the_oldest_beyond_the_limit)
{
	struct vmf_error e = {0};
	int fds[17];
	for (int i = 0; i < 17; i++) {
		fds[i] = lis_connect();
		ck_assert_msg(ping_on(fds[i], &e) == 0, "connection %d: %s", i + 1, e.msg);
	}
	ck_assert_msg(closed_by_agent(fds[0], 5000), "the oldest connection was not closed");
	ck_assert_msg(ping_on(fds[1], &e) == 0, "the second oldest: %s", e.msg);
	for (int i = 0; i < 17; i++)
		close(fds[i]);
}
END_TEST

START_TEST(listener_serves_the_next_connection_after_one_ends)
{
	struct vmf_error e = {0};
	for (int i = 0; i < 3; i++) {
		int fd = lis_connect();
		ck_assert_msg(ping_on(fd, &e) == 0, "connection %d: %s", i + 1, e.msg);
		if (i == 1) {
			/* Ends mid-frame: the next connection starts clean. */
			uint8_t t[5] = { 0, 0, 0, 50, 9 };
			ck_assert_int_eq(write(fd, t, sizeof t), (ssize_t)sizeof t);
		}
		close(fd);
	}
	/* With no connection left the agent waits in poll() on the listener
	 * only: no spinning on the closed peer.  The idle time is the
	 * quantity under test. */
	long t0 = agent_cpu_ticks();
	poll(NULL, 0, 500);
	long used = agent_cpu_ticks() - t0;
	ck_assert_msg(used <= 5, "the idle agent used %ld clock ticks in 0.5 s", used);
	int fd = lis_connect();
	ck_assert_msg(ping_on(fd, &e) == 0, "connection after idling: %s", e.msg);
	close(fd);
}
END_TEST

START_TEST(listener_option_errors)
{
	/* Refused combinations and values, before anything is served. */
	static const char *const bad[][4] = {
		{ "--listen-fd", "999", NULL },
		{ "--listen-fd", "0", "--stdio", NULL },
		{ "--vsock-port", "x1", NULL },
		{ "--vsock-port", "4294967295", NULL },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		pid_t c = vmf_test_fork();
		if (c == 0) {
			int dn = open("/dev/null", O_RDWR);
			dup2(dn, 2);
			char *argv[6] = { "vmf-agent" };
			for (int k = 0; k < 4 && bad[i][k]; k++)
				argv[k + 1] = (char *)bad[i][k];
			execv(vmf_test_agent_path(), argv);
			_exit(127);
		}
		int st;
		ck_assert_int_eq(waitpid(c, &st, 0), c);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 2, "case %zu: status %d", i, st);
	}
}
END_TEST

/* ---- the host client against a scripted fake agent ---- */

enum script { SCRIPT_CUT_REPLY, SCRIPT_OVERSIZED_REPLY, SCRIPT_ORPHAN_ERROR, SCRIPT_LATE_START, SCRIPT_HOSTILE_FLUSH };

struct fake {
	int fd;
	enum script script;
	pthread_t thread;
};

static Vmf__Agent__AgentRequest *
fake_read(int fd)
{
	uint8_t *buf;
	size_t n;
	if (vmf_frame_read(fd, &buf, &n, VMF_AGENT_MAX_FRAME, vmf_now_ms() + 10000, NULL) < 0)
		return NULL;
	Vmf__Agent__AgentRequest *r = vmf__agent__agent_request__unpack(NULL, n, buf);
	free(buf);
	return r;
}

/* A framed reply: pong for id, or an error when code != 0. */
static size_t
fake_reply(uint8_t *out, uint64_t id, int code, const char *msg)
{
	Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
	Vmf__Agent__Ping pong = VMF__AGENT__PING__INIT;
	r.id = id;
	if (code) {
		r.error_code = code;
		r.error_message = (char *)msg;
	} else {
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_PONG;
		r.pong = &pong;
	}
	size_t n = vmf__agent__agent_reply__pack(&r, out + 4);
	vmf_frame_put_len(out, (uint32_t)n);
	return n + 4;
}

static void *
fake_main(void *arg)
{
	struct fake *f = arg;
	uint8_t buf[512];
	Vmf__Agent__AgentRequest *q1, *q2;
	size_t n;
	switch (f->script) {
	case SCRIPT_CUT_REPLY:
		/* Half a reply, then nothing until the client has given up
		 * and sent its next request; then the rest and the answer. */
		q1 = fake_read(f->fd);
		n = fake_reply(buf, q1->id, 0, NULL);
		vmf_write_full(f->fd, buf, 3, -1, NULL);
		q2 = fake_read(f->fd);
		vmf_write_full(f->fd, buf + 3, n - 3, -1, NULL);
		n = fake_reply(buf, q2->id, 0, NULL);
		vmf_write_full(f->fd, buf, n, -1, NULL);
		vmf__agent__agent_request__free_unpacked(q1, NULL);
		vmf__agent__agent_request__free_unpacked(q2, NULL);
		break;
	case SCRIPT_OVERSIZED_REPLY: {
		q1 = fake_read(f->fd);
		size_t big = 3 * VMF_AGENT_MAX_FRAME;
		uint8_t *junk = calloc(1, big + 4);
		vmf_frame_put_len(junk, (uint32_t)big);
		vmf_write_full(f->fd, junk, big + 4, -1, NULL);
		free(junk);
		n = fake_reply(buf, q1->id, 0, NULL);
		vmf_write_full(f->fd, buf, n, -1, NULL);
		vmf__agent__agent_request__free_unpacked(q1, NULL);
		break;
	}
	case SCRIPT_ORPHAN_ERROR:
		/* What the agent says to a frame it cannot parse: id 0. */
		q1 = fake_read(f->fd);
		n = fake_reply(buf, 0, EBADMSG, "request frame is not a valid agent request");
		vmf_write_full(f->fd, buf, n, -1, NULL);
		q2 = fake_read(f->fd);   /* waits for the client to hang up */
		vmf__agent__agent_request__free_unpacked(q1, NULL);
		if (q2)
			vmf__agent__agent_request__free_unpacked(q2, NULL);
		break;
	case SCRIPT_HOSTILE_FLUSH: {
		/* A guest's answer to a flush of vmfd0 (/mnt/a), vmfd1 (/mnt/b)
		 * and vmfd2 (/mnt/c): it claims vmfd0 done, fails vmfd1 with a
		 * long message of control bytes and non-ASCII, names vmfd2 at
		 * another path, and adds disks nobody asked about. */
		q1 = fake_read(f->fd);
		Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
		Vmf__Agent__DisksFlushed df = VMF__AGENT__DISKS_FLUSHED__INIT;
		enum { N = 40 };
		Vmf__Agent__DiskFlushed d[N], *dp[N];
		static char nasty[3000];
		for (size_t k = 0; k < sizeof(nasty) - 1; k++)
			nasty[k] = (char)(k % 3 == 0 ? '\x1b' : k % 3 == 1 ? '\xc3' : 'x');
		for (int k = 0; k < N; k++) {
			vmf__agent__disk_flushed__init(&d[k]);
			d[k].serial = "vmfd9";
			d[k].path = "/mnt/z";
			d[k].how = "unmounted";
			dp[k] = &d[k];
		}
		d[0].serial = "vmfd0", d[0].path = "/mnt/a";
		d[1].serial = "vmfd1", d[1].path = "/mnt/b", d[1].how = "", d[1].error_code = EIO;
		d[1].error_message = nasty;
		d[2].serial = "vmfd2", d[2].path = "/etc";
		df.disks = dp;
		df.n_disks = N;
		r.id = q1->id;
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_DISKS_FLUSHED;
		r.disks_flushed = &df;
		uint8_t *out = malloc(VMF_AGENT_MAX_FRAME + 4);
		size_t m = vmf__agent__agent_reply__pack(&r, out + 4);
		vmf_frame_put_len(out, (uint32_t)m);
		vmf_write_full(f->fd, out, m + 4, -1, NULL);
		free(out);
		vmf__agent__agent_request__free_unpacked(q1, NULL);
		break;
	}
	case SCRIPT_LATE_START:
		/* An agent that starts after the host's first Pings: those are
		 * lost with the old agent; only a retried Ping is answered. */
		for (int i = 0; i < 2; i++) {
			q1 = fake_read(f->fd);
			vmf__agent__agent_request__free_unpacked(q1, NULL);
		}
		q1 = fake_read(f->fd);
		n = fake_reply(buf, q1->id, 0, NULL);
		vmf_write_full(f->fd, buf, n, -1, NULL);
		vmf__agent__agent_request__free_unpacked(q1, NULL);
		break;
	}
	return NULL;
}

static struct vmf_agent *
fake_start(struct fake *f, enum script s)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	f->fd = sv[1];
	f->script = s;
	ck_assert_int_eq(pthread_create(&f->thread, NULL, fake_main, f), 0);
	return vmf_agent_new(sv[0]);
}

static void
fake_stop(struct fake *f, struct vmf_agent *a)
{
	vmf_agent_free(a);
	pthread_join(f->thread, NULL);
	close(f->fd);
}

START_TEST(reply_cut_by_a_deadline_keeps_the_stream_in_sync)
{
	struct fake f;
	struct vmf_agent *a = fake_start(&f, SCRIPT_CUT_REPLY);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_agent_ping(a, 300, &e), -ETIMEDOUT);
	ck_assert_msg(vmf_agent_ping(a, 5000, &e) == 0, "%s", e.msg);
	fake_stop(&f, a);
}
END_TEST

/* The agent never sends a frame above the limit: one that does is broken
 * or hostile, and skipping it could mean reading 4 GiB.  The connection
 * ends at its header, with a sentence, and stays failed. */
START_TEST(oversized_reply_ends_the_connection)
{
	struct fake f;
	struct vmf_agent *a = fake_start(&f, SCRIPT_OVERSIZED_REPLY);
	struct vmf_error e = {0};
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_agent_ping(a, 5000, &e), -EPROTO);
	ck_assert_int_lt(vmf_now_ms() - t0, 2000);
	ck_assert_msg(strstr(e.msg, "196608 bytes") && strstr(e.msg, "limit"), "%s", e.msg);
	ck_assert_int_eq(vmf_agent_ping(a, 5000, &e), -EPROTO);
	fake_stop(&f, a);
}
END_TEST

START_TEST(orphan_error_explains_a_timeout)
{
	struct fake f;
	struct vmf_agent *a = fake_start(&f, SCRIPT_ORPHAN_ERROR);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_agent_ping(a, 300, &e), -ETIMEDOUT);
	ck_assert_msg(strstr(e.msg, "not a valid agent request") != NULL, "%s", e.msg);
	fake_stop(&f, a);
}
END_TEST

START_TEST(wait_ready_retries_until_answered)
{
	struct fake f;
	struct vmf_agent *a = fake_start(&f, SCRIPT_LATE_START);
	struct vmf_error e = {0};
	int64_t t0 = vmf_now_ms();
	ck_assert_msg(vmf_agent_wait_ready(a, 5000, &e) == 0, "%s", e.msg);
	/* Two unanswered rounds of 250 ms, then the third Ping. */
	ck_assert_int_ge(vmf_now_ms() - t0, 400);
	ck_assert_int_lt(vmf_now_ms() - t0, 2000);
	fake_stop(&f, a);
}
END_TEST

START_TEST(wait_ready_times_out)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct vmf_agent *a = vmf_agent_new(sv[0]);
	struct vmf_error e = {0};
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_agent_wait_ready(a, 600, &e), -ETIMEDOUT);
	ck_assert_int_lt(vmf_now_ms() - t0, 1500);
	ck_assert_ptr_nonnull(strstr(e.msg, "Pings"));
	vmf_agent_free(a);
	close(sv[1]);
	/* The peer closing is an error at once (and no SIGPIPE), not a wait
	 * to the deadline. */
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	a = vmf_agent_new(sv[0]);
	close(sv[1]);
	t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_agent_wait_ready(a, 5000, &e), -EPIPE);
	ck_assert_int_lt(vmf_now_ms() - t0, 1000);
	vmf_agent_free(a);
}
END_TEST

START_TEST(hostile_flush_reply_is_bounded)
{
	struct fake f;
	struct vmf_agent *a = fake_start(&f, SCRIPT_HOSTILE_FLUSH);
	struct vmf_error e = {0};
	struct vmf_agent_flush d[3] = {
		{ .serial = "vmfd0", .path = "/mnt/a" }, { .serial = "vmfd1", .path = "/mnt/b" },
		{ .serial = "vmfd2", .path = "/mnt/c" },
	};
	ck_assert_msg(vmf_agent_flush_disks(a, VMF_AGENT_UNMOUNT, d, 3, 5000, &e) == 0, "%s", e.msg);
	/* Only what was asked, matched by serial and path, counts. */
	ck_assert(d[0].answered && d[0].done);
	ck_assert_str_eq(d[0].how, "unmounted");
	ck_assert(d[1].answered && !d[1].done && d[1].error_code == EIO);
	ck_assert(!d[2].answered && !d[2].done);
	/* The guest's text: bounded, valid UTF-8 (its stray byte a U+FFFD)
	 * and escaped: no control byte. */
	size_t n = strlen(d[1].error);
	ck_assert(n > 0 && n < sizeof(d[1].error));
	ck_assert(vmf_utf8_valid(d[1].error, n));
	for (size_t k = 0; k < n; k++)
		ck_assert_msg((unsigned char)d[1].error[k] >= 0x20 && d[1].error[k] != 0x7f,
			      "byte %zu of the error is 0x%02x", k, (unsigned char)d[1].error[k]);
	ck_assert_ptr_nonnull(strstr(d[1].error, "\\x1b\xef\xbf\xbdx"));
	fake_stop(&f, a);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("agent");
	TCase *tc = tcase_create("agent");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, ping_and_guest_info);
	tcase_add_test(tc, set_time_and_reseed);
	tcase_add_test(tc, new_identity_and_handout);
	tcase_add_test(tc, new_identity_rewrites_an_existing_machine_id);
	tcase_add_test(tc, validation_and_test_mode_refusals);
	tcase_add_test(tc, garbage_and_empty_frames);
	tcase_add_test(tc, oversized_frames);
	tcase_add_test(tc, truncated_frame_then_close);
	tcase_add_test(tc, stale_replies_are_skipped);
	tcase_add_test(tc, files_write_read_list_move_remove);
	tcase_add_test(tc, files_refusals_and_bounds);
	tcase_add_test(tc, files_watch_events_recursion_and_refusals);
	tcase_add_test(tc, files_watch_queue_overflow_is_counted);
	suite_add_tcase(s, tc);
	TCase *tcl = tcase_create("listener");
	tcase_add_checked_fixture(tcl, listener_setup, listener_teardown);
	tcase_add_test(tcl, listener_serves_several_connections_at_once);
	tcase_add_test(tcl, listener_closes_the_oldest_beyond_the_limit);
	tcase_add_test(tcl, listener_serves_the_next_connection_after_one_ends);
	tcase_add_test(tcl, listener_option_errors);
	suite_add_tcase(s, tcl);
	TCase *tcc = tcase_create("client");
	tcase_add_test(tcc, reply_cut_by_a_deadline_keeps_the_stream_in_sync);
	tcase_add_test(tcc, oversized_reply_ends_the_connection);
	tcase_add_test(tcc, orphan_error_explains_a_timeout);
	tcase_add_test(tcc, wait_ready_retries_until_answered);
	tcase_add_test(tcc, wait_ready_times_out);
	tcase_add_test(tcc, hostile_flush_reply_is_bounded);
	suite_add_tcase(s, tcc);
	return vmf_test_run(s);
}
