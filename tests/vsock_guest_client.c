/* vmf-vsock-client: runs inside a test guest (tests/test_vsock_guest.c
 * appends it to the guest initrd) and drives the real vmf-agent over the
 * guest's own vsock, through vsock_loopback (CID 1).  Static, libc +
 * protobuf-c only, like the agent.
 *
 *   vmf-vsock-client PORT REFUSING_PORT AGENT_LOG
 *
 * PORT: an agent started with --vsock-allow-local.  Checks, each on a real
 * AF_VSOCK stream:
 *   1. a first connection answers Ping;
 *   2. a second connection, made while the first is still open, answers
 *      Ping, and the first still answers too (several at once: the
 *      daemon's and the owner's);
 *   2b. exec over vsock: `echo` runs, its output and then its exit
 *      arrive on the connection that started it;
 *   3. a third connection, after the second closed, answers GuestInfo with
 *      this guest's boot id, an online CPU count and the agent's version.
 * REFUSING_PORT: an agent with the default policy; a guest-local peer is
 * closed without an answer.
 * AGENT_LOG: the PORT agent's log.  Once it says the agent gave up on the
 * virtio-serial port (there is none) and serves vsock alone, a last
 * connection must still answer Ping: the agent of a Firecracker guest
 * outlives its port search.
 *
 * Prints one line "VMF-VSOCK-TEST: PASS ..." or "VMF-VSOCK-TEST: FAIL: why"
 * on stdout (the serial console), exit status 0 or 1. */
#include <errno.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.pb-c.h"
#include "frame.h"

/* The agents start alongside this client; how long to wait for them. */
#define CONNECT_WAIT_MS 30000
#define REPLY_WAIT_MS 10000

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int
fail(const char *fmt, ...)
{
	char buf[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printf("VMF-VSOCK-TEST: FAIL: %s\n", buf);
	fflush(stdout);
	return 1;
}

/* Connects to CID 1 (this guest, through vsock_loopback) at port, retrying
 * while nothing listens there yet (ECONNRESET) until the deadline. */
static int
connect_local(unsigned port, int64_t deadline, char *why, size_t n)
{
	for (;;) {
		int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			snprintf(why, n, "cannot create a vsock socket: %s", strerror(errno));
			return -1;
		}
		struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_LOCAL, .svm_port = port };
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		int e = errno;
		close(fd);
		if (vmf_now_ms() >= deadline) {
			snprintf(why, n, "vsock CID 1 port %u did not accept a connection within %d ms: %s", port,
				 CONNECT_WAIT_MS, strerror(e));
			return -1;
		}
		/* The agent is not listening yet. */
		poll(NULL, 0, 50);
	}
}

/* One request, one reply (checked for id and absence of an error). */
static Vmf__Agent__AgentReply *
call(int fd, Vmf__Agent__AgentRequest *req, uint64_t id, char *why, size_t n)
{
	req->protocol_version = AGENT_PROTOCOL_VERSION;
	req->id = id;
	uint8_t buf[256];
	size_t len = vmf__agent__agent_request__get_packed_size(req);
	if (len > sizeof(buf)) {
		snprintf(why, n, "request %llu does not fit the client's buffer", (unsigned long long)id);
		return NULL;
	}
	vmf__agent__agent_request__pack(req, buf);
	struct vmf_error e = {0};
	if (vmf_frame_write(fd, buf, len, vmf_now_ms() + REPLY_WAIT_MS, &e) < 0) {
		snprintf(why, n, "sending request %llu: %s", (unsigned long long)id, e.msg);
		return NULL;
	}
	uint8_t *in;
	size_t in_len;
	if (vmf_frame_read(fd, &in, &in_len, VMF_AGENT_MAX_FRAME, vmf_now_ms() + REPLY_WAIT_MS, &e) < 0) {
		snprintf(why, n, "reading the reply to request %llu: %s", (unsigned long long)id, e.msg);
		return NULL;
	}
	Vmf__Agent__AgentReply *r = vmf__agent__agent_reply__unpack(NULL, in_len, in);
	free(in);
	if (!r) {
		snprintf(why, n, "the reply to request %llu is not a valid agent reply", (unsigned long long)id);
		return NULL;
	}
	if (r->id != id || r->error_code != 0) {
		snprintf(why, n, "request %llu was answered with id %llu, error %d (%s)", (unsigned long long)id,
			 (unsigned long long)r->id, r->error_code, r->error_message ? r->error_message : "");
		vmf__agent__agent_reply__free_unpacked(r, NULL);
		return NULL;
	}
	return r;
}

static bool
ping(int fd, uint64_t id, char *why, size_t n)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping p = VMF__AGENT__PING__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &p;
	Vmf__Agent__AgentReply *r = call(fd, &req, id, why, n);
	if (!r)
		return false;
	bool ok = r->body_case == VMF__AGENT__AGENT_REPLY__BODY_PONG;
	if (!ok)
		snprintf(why, n, "Ping %llu was answered with body %d, not a Pong", (unsigned long long)id,
			 (int)r->body_case);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	return ok;
}

/* ExecStart of `echo vsock-exec`, then frames until its exit: the output
 * first, then exit status 0. */
static bool
exec_echo(int fd, uint64_t id, char *why, size_t n)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecStart x = VMF__AGENT__EXEC_START__INIT;
	char *argv[] = { "echo", "vsock-exec" };
	x.n_argv = 2;
	x.argv = argv;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START;
	req.exec_start = &x;
	Vmf__Agent__AgentReply *r = call(fd, &req, id, why, n);
	if (!r)
		return false;
	if (r->body_case != VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED) {
		snprintf(why, n, "ExecStart was answered with body %d", (int)r->body_case);
		vmf__agent__agent_reply__free_unpacked(r, NULL);
		return false;
	}
	uint64_t exec_id = r->exec_started->exec_id;
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	char out[64] = "";
	for (;;) {
		uint8_t *in;
		size_t len;
		struct vmf_error e = {0};
		if (vmf_frame_read(fd, &in, &len, VMF_AGENT_MAX_FRAME, vmf_now_ms() + REPLY_WAIT_MS, &e) < 0) {
			snprintf(why, n, "waiting for the output of exec %llu: %s", (unsigned long long)exec_id, e.msg);
			return false;
		}
		r = vmf__agent__agent_reply__unpack(NULL, len, in);
		free(in);
		if (!r)
			continue;
		bool done = false, ok = true;
		if (r->body_case == VMF__AGENT__AGENT_REPLY__BODY_EXEC_OUTPUT && r->exec_output->exec_id == exec_id) {
			size_t k = strlen(out);
			snprintf(out + k, sizeof(out) - k, "%.*s", (int)r->exec_output->data.len,
				 (const char *)r->exec_output->data.data);
		} else if (r->body_case == VMF__AGENT__AGENT_REPLY__BODY_EXEC_EXIT && r->exec_exit->exec_id == exec_id) {
			done = true;
			ok = r->exec_exit->exit_code == 0 && strcmp(out, "vsock-exec\n") == 0;
			if (!ok)
				snprintf(why, n, "exec ended with status %d, signal %d, output '%s'",
					 r->exec_exit->exit_code, r->exec_exit->signal, out);
		}
		vmf__agent__agent_reply__free_unpacked(r, NULL);
		if (done)
			return ok;
	}
}

/* True when the peer closed fd (EOF or reset) before the deadline, with
 * no byte of a reply. */
static bool
closed_by_peer(int fd, int timeout_ms, char *why, size_t n)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	for (;;) {
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0) {
			snprintf(why, n, "still open after %d ms", timeout_ms);
			return false;
		}
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, left) != 1)
			continue;
		char c;
		ssize_t r = read(fd, &c, 1);
		if (r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE)))
			return true;
		if (r > 0) {
			snprintf(why, n, "the agent sent data instead of closing");
			return false;
		}
		if (errno != EINTR && errno != EAGAIN) {
			snprintf(why, n, "read: %s", strerror(errno));
			return false;
		}
	}
}

/* Waits until the file contains text (the agent writes its log as it
 * goes); false at the deadline. */
static bool
wait_for_text(const char *path, const char *text, int timeout_ms)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	static char buf[16384];
	for (;;) {
		FILE *f = fopen(path, "re");
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
		if (f)
			fclose(f);
		buf[n] = '\0';
		if (strstr(buf, text))
			return true;
		if (vmf_now_ms() >= deadline)
			return false;
		/* Nothing to wait on for a file being appended to. */
		poll(NULL, 0, 100);
	}
}

static int
read_boot_id(char *buf, size_t n)
{
	FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
	if (!f || !fgets(buf, (int)n, f)) {
		if (f)
			fclose(f);
		return -1;
	}
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

int
main(int argc, char **argv)
{
	char why[400];
	/* A refusing agent's reset must fail a write, not kill the client. */
	signal(SIGPIPE, SIG_IGN);
	if (argc != 4)
		return fail("usage: vmf-vsock-client PORT REFUSING_PORT AGENT_LOG");
	unsigned port = (unsigned)strtoul(argv[1], NULL, 10);
	unsigned refusing = (unsigned)strtoul(argv[2], NULL, 10);
	int64_t deadline = vmf_now_ms() + CONNECT_WAIT_MS;

	/* 1. First connection. */
	int a = connect_local(port, deadline, why, sizeof(why));
	if (a < 0)
		return fail("connection 1: %s", why);
	if (!ping(a, 1, why, sizeof(why)))
		return fail("connection 1: %s", why);

	/* 2. A second connection while the first is open: both served. */
	int b = connect_local(port, deadline, why, sizeof(why));
	if (b < 0)
		return fail("connection 2: %s", why);
	if (!ping(b, 2, why, sizeof(why)))
		return fail("connection 2 (beside connection 1): %s", why);
	if (!ping(a, 6, why, sizeof(why)))
		return fail("connection 1 after connection 2 was accepted: %s", why);
	/* 2b. exec over vsock. */
	if (!exec_echo(b, 7, why, sizeof(why)))
		return fail("exec over vsock: %s", why);
	close(a);
	close(b);

	/* 3. After connection 2 closed, a third one answers GuestInfo about
	 * this very guest. */
	int c = connect_local(port, deadline, why, sizeof(why));
	if (c < 0)
		return fail("connection 3: %s", why);
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__GuestInfoRequest gi = VMF__AGENT__GUEST_INFO_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_GUEST_INFO;
	req.guest_info = &gi;
	Vmf__Agent__AgentReply *r = call(c, &req, 3, why, sizeof(why));
	if (!r)
		return fail("connection 3: GuestInfo: %s", why);
	char boot_id[64];
	if (read_boot_id(boot_id, sizeof(boot_id)) < 0)
		return fail("cannot read this guest's boot id");
	const Vmf__Agent__GuestInfo *g = r->guest_info;
	if (r->body_case != VMF__AGENT__AGENT_REPLY__BODY_GUEST_INFO || !g)
		return fail("GuestInfo was answered with body %d", (int)r->body_case);
	if (!g->boot_id || strcmp(g->boot_id, boot_id) != 0)
		return fail("GuestInfo boot id '%s' is not this guest's '%s'", g->boot_id ? g->boot_id : "",
			    boot_id);
	if (g->online_cpus < 1 || g->mem_total_kib < 16 * 1024 || g->random.len != 16)
		return fail("GuestInfo is implausible: %u CPUs, %llu KiB, %zu random bytes", g->online_cpus,
			    (unsigned long long)g->mem_total_kib, g->random.len);
	if (!g->agent_version || !strstr(g->agent_version, "vmf-agent"))
		return fail("GuestInfo agent version '%s' does not name vmf-agent",
			    g->agent_version ? g->agent_version : "");
	char version[64];
	snprintf(version, sizeof(version), "%s", g->agent_version);
	unsigned cpus = g->online_cpus;
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	close(c);

	/* 4. The default policy closes a guest-local peer unanswered. */
	int d = connect_local(refusing, deadline, why, sizeof(why));
	if (d < 0)
		return fail("refusing agent: %s", why);
	/* The Ping's write may already find the stream reset: that is a
	 * refusal too.  An answer is not. */
	if (ping(d, 4, why, sizeof(why)))
		return fail("the default-policy agent on port %u answered a guest-local peer", refusing);
	if (!closed_by_peer(d, REPLY_WAIT_MS, why, sizeof(why)))
		return fail("a guest-local peer of the default-policy agent on port %u was not refused: %s",
			    refusing, why);
	close(d);

	/* 5. Still served once the agent has given up on the virtio port. */
	char only[64];
	snprintf(only, sizeof(only), "serving vsock port %u only", port);
	if (!wait_for_text(argv[3], only, CONNECT_WAIT_MS))
		return fail("the agent's log %s does not say '%s' within %d ms", argv[3], only, CONNECT_WAIT_MS);
	int f = connect_local(port, vmf_now_ms() + CONNECT_WAIT_MS, why, sizeof(why));
	if (f < 0)
		return fail("connection 5 (vsock only): %s", why);
	if (!ping(f, 5, why, sizeof(why)))
		return fail("connection 5 (vsock only): %s", why);
	close(f);

	printf("VMF-VSOCK-TEST: PASS (port %u: Ping on 2 connections at once, exec of echo; GuestInfo "
	       "on a 3rd: boot id %s, %u CPUs, %s; port %u refused a guest-local peer; Ping after the "
	       "agent gave up on the virtio port)\n",
	       port, boot_id, cpus, version, refusing);
	fflush(stdout);
	return 0;
}
