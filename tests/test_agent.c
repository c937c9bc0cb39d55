/* The real guest agent binary, in test mode over a socketpair: framing,
 * malformed and oversized frames, stale replies, request validation. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

static pid_t pid;
static int host_fd;
static char *share;

static void
setup(void)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	share = vmf_test_tmpdir("vmf-agent-share");
	char f[600];
	struct vmf_error e;
	snprintf(f, sizeof f, "%s/visible", share);
	vmf_write_file_atomic(f, "x", 1, 0644, &e);
	char agent[600];
	const char *b = getenv("VMFACTORY_BUILDDIR");
	snprintf(agent, sizeof agent, "%s/contrib/vmf-agent", b ? b : ".");
	pid = fork();
	if (pid == 0) {
		dup2(sv[1], 3);
		execl(agent, "vmf-agent", "--fd", "3", "--share-dir", share, (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	host_fd = sv[0];
}

static void
teardown(void)
{
	close(host_fd);
	int st;
	/* EOF on its stream ends a test-mode agent. */
	for (int i = 0; i < 100 && waitpid(pid, &st, WNOHANG) == 0; i++)
		poll(NULL, 0, 20);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	struct vmf_error e;
	vmf_rm_rf(share, &e);
	free(share);
}

/* Reads one raw reply frame. */
static Vmf__Agent__AgentReply *
read_reply(void)
{
	uint8_t *buf;
	size_t n;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_frame_read(host_fd, &buf, &n, AGENT_MAX_FRAME, vmf_now_ms() + 5000, &e) == 0, "%s", e.msg);
	Vmf__Agent__AgentReply *r = vmf__agent__agent_reply__unpack(NULL, n, buf);
	free(buf);
	ck_assert_ptr_nonnull(r);
	return r;
}

START_TEST(ping_and_guest_info)
{
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	struct vmf_error e = {0};
	ck_assert_msg(vmf_agent_wait_ready(a, 5000, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(vmf_agent_ping(a, 5000, &e), 0);
	Vmf__Agent__AgentReply *r;
	ck_assert_msg(vmf_agent_guest_info(a, &r, 5000, &e) == 0, "%s", e.msg);
	Vmf__Agent__GuestInfo *g = r->guest_info;
	ck_assert_uint_ge(g->online_cpus, 1);
	ck_assert_uint_gt(g->mem_total_kib, 0);
	ck_assert_uint_eq(g->random.len, 16);
	ck_assert_int_lt(llabs(g->realtime_ns - vmf_realtime_ns()), 1000000000LL);
	ck_assert_uint_eq(g->n_share_entries, 1);
	ck_assert_str_eq(g->share_entries[0], "visible");
	ck_assert_ptr_nonnull(strstr(g->agent_version, "vmf-agent"));
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	vmf_agent_free(a);
}
END_TEST

START_TEST(bad_requests_get_error_replies)
{
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	struct vmf_error e = {0};
	uint8_t ent[8] = {0}, sample[16];
	/* Too little entropy is refused by the agent, with its reason. */
	ck_assert_int_eq(vmf_agent_reseed(a, ent, sizeof ent, sample, 5000, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "16 to 512"));
	/* Test mode never touches the host's clock or mounts. */
	ck_assert_int_eq(vmf_agent_set_time(a, 1, NULL, 5000, &e), -EPERM);
	ck_assert_int_eq(vmf_agent_mount_share(a, "bad/tag", 5000, &e), -EINVAL);
	/* An unknown protocol version. */
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.protocol_version = 99;
	req.id = 7;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	uint8_t buf[64];
	size_t n = vmf__agent__agent_request__pack(&req, buf);
	ck_assert_int_eq(vmf_frame_write(host_fd, buf, n, vmf_now_ms() + 1000, &e), 0);
	Vmf__Agent__AgentReply *r = read_reply();
	ck_assert_int_eq(r->error_code, EPROTO);
	ck_assert_uint_eq(r->id, 7);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	ck_assert_int_eq(vmf_agent_ping(a, 5000, &e), 0);
	vmf_agent_free(a);
}
END_TEST

START_TEST(malformed_and_oversized_frames_keep_the_agent_serving)
{
	struct vmf_error e = {0};
	/* Garbage that is not a protobuf request. */
	static const uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0x01 };
	ck_assert_int_eq(vmf_frame_write(host_fd, junk, sizeof junk, vmf_now_ms() + 1000, &e), 0);
	Vmf__Agent__AgentReply *r = read_reply();
	ck_assert_int_eq(r->error_code, EBADMSG);
	vmf__agent__agent_reply__free_unpacked(r, NULL);

	/* A 4 GiB length prefix: refused at once, its payload skipped. */
	uint8_t h[4] = { 0xff, 0xff, 0xff, 0xff };
	ck_assert_int_eq(write(host_fd, h, 4), 4);
	r = read_reply();
	ck_assert_int_eq(r->error_code, EMSGSIZE);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	/* The agent now discards what follows; a fresh stream after a
	 * reconnect is the host's way back.  A just-over-limit frame, sent
	 * whole, is skipped exactly and the next request is served. */
	teardown();
	setup();
	uint32_t big = AGENT_MAX_FRAME + 1;
	uint8_t *payload = calloc(1, big);
	ck_assert_int_eq(vmf_frame_write(host_fd, payload, big, vmf_now_ms() + 5000, &e), 0);
	free(payload);
	r = read_reply();
	ck_assert_int_eq(r->error_code, EMSGSIZE);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	ck_assert_msg(vmf_agent_ping(a, 5000, &e) == 0, "%s", e.msg);

	/* A truncated frame followed by the peer closing: no crash, clean exit. */
	vmf_agent_free(a);
	uint8_t t[6] = { 0, 0, 0, 100, 1, 2 };
	ck_assert_int_eq(write(host_fd, t, sizeof t), (ssize_t)sizeof t);
	close(host_fd);
	host_fd = -1;
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	host_fd = socket(AF_UNIX, SOCK_STREAM, 0); /* for teardown */
}
END_TEST

START_TEST(stale_replies_are_skipped)
{
	struct vmf_error e = {0};
	/* A request whose reply the host never reads (it timed out, or came from
	 * before a template save) must not be taken for the next answer. */
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__GuestInfoRequest gi = VMF__AGENT__GUEST_INFO_REQUEST__INIT;
	req.protocol_version = AGENT_PROTOCOL_VERSION;
	req.id = 12345;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_GUEST_INFO;
	req.guest_info = &gi;
	uint8_t buf[64];
	size_t n = vmf__agent__agent_request__pack(&req, buf);
	ck_assert_int_eq(vmf_frame_write(host_fd, buf, n, vmf_now_ms() + 1000, &e), 0);
	struct vmf_agent *a = vmf_agent_new(dup(host_fd));
	ck_assert_msg(vmf_agent_ping(a, 5000, &e) == 0, "%s", e.msg);
	vmf_agent_free(a);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("agent");
	TCase *tc = tcase_create("framing");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, ping_and_guest_info);
	tcase_add_test(tc, bad_requests_get_error_replies);
	tcase_add_test(tc, malformed_and_oversized_frames_keep_the_agent_serving);
	tcase_add_test(tc, stale_replies_are_skipped);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
