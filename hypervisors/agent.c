/* Host side of the guest agent protocol. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frame.h"

/* While the guest has not opened its port yet (booting, or just resumed),
 * bytes we send wait in QEMU; a Ping sent then is answered late.  Retrying
 * every RETRY_MS bounds how stale an answer can be. */
#define RETRY_MS 250

struct vmf_agent {
	int fd;
	uint64_t next_id;
};

struct vmf_agent *
vmf_agent_new(int fd)
{
	if (fd < 0)
		return NULL;
	struct vmf_agent *a = calloc(1, sizeof(*a));
	if (!a) {
		close(fd);
		return NULL;
	}
	/* Non-blocking so that deadlines hold even for writes. */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	a->fd = fd;
	/* Ids from a random-ish base: replies from before a save/restore carry
	 * ids this connection never used. */
	a->next_id = ((uint64_t)getpid() << 32) ^ (uint64_t)vmf_now_ms();
	return a;
}

void
vmf_agent_free(struct vmf_agent *a)
{
	if (!a)
		return;
	close(a->fd);
	free(a);
}

int
vmf_agent_fd(const struct vmf_agent *a)
{
	return a->fd;
}

static int
send_req(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, int64_t deadline, struct vmf_error *err)
{
	req->protocol_version = AGENT_PROTOCOL_VERSION;
	req->id = ++a->next_id;
	size_t n = vmf__agent__agent_request__get_packed_size(req);
	if (n > AGENT_MAX_FRAME)
		return vmf_err(err, EMSGSIZE, "agent request of %zu bytes is too large", n);
	uint8_t buf[VMF_FRAME_HDR + AGENT_MAX_FRAME];
	vmf_frame_put_len(buf, (uint32_t)n);
	vmf__agent__agent_request__pack(req, buf + VMF_FRAME_HDR);
	return vmf_write_full(a->fd, buf, VMF_FRAME_HDR + n, deadline, err);
}

/* Reads replies until the one for id arrives. */
static int
recv_reply(struct vmf_agent *a, uint64_t id, Vmf__Agent__AgentReply **out, int64_t deadline,
	   struct vmf_error *err)
{
	for (;;) {
		uint8_t *buf;
		size_t n;
		int r = vmf_frame_read(a->fd, &buf, &n, AGENT_MAX_FRAME, deadline, err);
		if (r < 0)
			return r;
		Vmf__Agent__AgentReply *rep = vmf__agent__agent_reply__unpack(NULL, n, buf);
		free(buf);
		if (!rep)
			return vmf_err(err, EBADMSG, "the guest agent sent an undecodable reply of %zu bytes", n);
		if (rep->id == id) {
			*out = rep;
			return 0;
		}
		/* A reply to an earlier request (a retried Ping, or one sent before
		 * the template was saved). */
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
	}
}

static int
check_reply(Vmf__Agent__AgentReply *rep, Vmf__Agent__AgentReply__BodyCase want, struct vmf_error *err)
{
	if (rep->error_code)
		return vmf_err(err, rep->error_code, "the guest agent reports: %s",
			       rep->error_message && *rep->error_message ? rep->error_message : "unspecified error");
	if (rep->body_case != want)
		return vmf_err(err, EPROTO, "the guest agent answered with the wrong message type (%d, expected %d)",
			       (int)rep->body_case, (int)want);
	return 0;
}

static Vmf__Agent__AgentReply__BodyCase
expected(const Vmf__Agent__AgentRequest *req)
{
	switch (req->body_case) {
	case VMF__AGENT__AGENT_REQUEST__BODY_PING: return VMF__AGENT__AGENT_REPLY__BODY_PONG;
	case VMF__AGENT__AGENT_REQUEST__BODY_GUEST_INFO: return VMF__AGENT__AGENT_REPLY__BODY_GUEST_INFO;
	case VMF__AGENT__AGENT_REQUEST__BODY_ONLINE_CPU_MEM: return VMF__AGENT__AGENT_REPLY__BODY_ONLINE;
	case VMF__AGENT__AGENT_REQUEST__BODY_RESEED_RNG: return VMF__AGENT__AGENT_REPLY__BODY_RNG;
	case VMF__AGENT__AGENT_REQUEST__BODY_SET_TIME: return VMF__AGENT__AGENT_REPLY__BODY_TIME;
	case VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_SHARE: return VMF__AGENT__AGENT_REPLY__BODY_MOUNT;
	default: return VMF__AGENT__AGENT_REPLY__BODY__NOT_SET;
	}
}

int
vmf_agent_call(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, Vmf__Agent__AgentReply **reply,
	       int timeout_ms, struct vmf_error *err)
{
	*reply = NULL;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	int r = send_req(a, req, deadline, err);
	if (r < 0)
		return vmf_error_prefix(err, "guest agent");
	Vmf__Agent__AgentReply *rep = NULL;
	r = recv_reply(a, req->id, &rep, deadline, err);
	if (r < 0 || !rep)
		return vmf_error_prefix(err, "guest agent");
	r = check_reply(rep, expected(req), err);
	if (r < 0) {
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		return r;
	}
	*reply = rep;
	return 0;
}

static int
simple(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentReply *rep = NULL;
	int r = vmf_agent_call(a, req, &rep, timeout_ms, err);
	if (r == 0)
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

int
vmf_agent_ping(struct vmf_agent *a, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	return simple(a, &req, timeout_ms, err);
}

int
vmf_agent_wait_ready(struct vmf_agent *a, int timeout_ms, struct vmf_error *err)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	uint64_t first = a->next_id + 1;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	for (;;) {
		int64_t now = vmf_now_ms();
		if (now >= deadline)
			return vmf_err(err, ETIMEDOUT, "the guest agent did not answer within %d ms", timeout_ms);
		int64_t until = now + RETRY_MS < deadline ? now + RETRY_MS : deadline;
		int r = send_req(a, &req, until, err);
		if (r < 0 && r != -ETIMEDOUT)
			return vmf_error_prefix(err, "guest agent");
		/* Any of our Pings answered means the agent is serving. */
		for (;;) {
			uint8_t *buf;
			size_t n;
			r = vmf_frame_read(a->fd, &buf, &n, AGENT_MAX_FRAME, until, err);
			if (r == -ETIMEDOUT)
				break;
			if (r < 0)
				return vmf_error_prefix(err, "guest agent");
			Vmf__Agent__AgentReply *rep = vmf__agent__agent_reply__unpack(NULL, n, buf);
			free(buf);
			bool ours = rep && rep->id >= first && rep->id <= a->next_id &&
				    rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_PONG;
			if (rep)
				vmf__agent__agent_reply__free_unpacked(rep, NULL);
			if (ours)
				return 0;
		}
	}
}

int
vmf_agent_guest_info(struct vmf_agent *a, Vmf__Agent__AgentReply **reply, int timeout_ms,
		     struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__GuestInfoRequest gi = VMF__AGENT__GUEST_INFO_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_GUEST_INFO;
	req.guest_info = &gi;
	return vmf_agent_call(a, &req, reply, timeout_ms, err);
}

int
vmf_agent_online(struct vmf_agent *a, uint32_t want_cpus, uint32_t want_mem_mib, uint32_t *online_cpus,
		 uint64_t *mem_total_kib, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__OnlineCpuMem o = VMF__AGENT__ONLINE_CPU_MEM__INIT;
	o.want_cpus = want_cpus;
	o.want_mem_mib = want_mem_mib;
	/* Leave the guest time to answer before our own deadline. */
	o.timeout_ms = timeout_ms > 500 ? (uint32_t)(timeout_ms - 250) : (uint32_t)timeout_ms / 2;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_ONLINE_CPU_MEM;
	req.online_cpu_mem = &o;
	Vmf__Agent__AgentReply *rep;
	int r = vmf_agent_call(a, &req, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	*online_cpus = rep->online->online_cpus;
	*mem_total_kib = rep->online->mem_total_kib;
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 0;
}

int
vmf_agent_reseed(struct vmf_agent *a, const uint8_t *entropy, size_t n, uint8_t sample[16], int timeout_ms,
		 struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ReseedRng rs = VMF__AGENT__RESEED_RNG__INIT;
	rs.entropy.data = (uint8_t *)entropy;
	rs.entropy.len = n;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_RESEED_RNG;
	req.reseed_rng = &rs;
	Vmf__Agent__AgentReply *rep;
	int r = vmf_agent_call(a, &req, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	if (rep->rng->random.len != 16) {
		r = vmf_err(err, EPROTO, "the guest agent returned %zu random bytes, expected 16", rep->rng->random.len);
	} else {
		static const uint8_t zero[16];
		memcpy(sample, rep->rng->random.data, 16);
		if (memcmp(sample, zero, 16) == 0)
			r = vmf_err(err, EIO, "the guest's random sample after reseeding is all zeros");
	}
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

int
vmf_agent_set_time(struct vmf_agent *a, int64_t realtime_ns, int64_t *guest_ns, int timeout_ms,
		   struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__SetTime st = VMF__AGENT__SET_TIME__INIT;
	st.realtime_ns = realtime_ns;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_SET_TIME;
	req.set_time = &st;
	Vmf__Agent__AgentReply *rep;
	int r = vmf_agent_call(a, &req, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	if (guest_ns)
		*guest_ns = rep->time->realtime_ns;
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 0;
}

int
vmf_agent_mount_share(struct vmf_agent *a, const char *tag, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__MountShare m = VMF__AGENT__MOUNT_SHARE__INIT;
	m.tag = (char *)tag;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_SHARE;
	req.mount_share = &m;
	return simple(a, &req, timeout_ms, err);
}
