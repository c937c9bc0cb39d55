/* Host side of the guest agent protocol (proto/agent.proto).
 *
 * Replies are read through a buffer owned by the connection, so a deadline
 * that expires in the middle of a frame leaves the stream in sync for the
 * next call, and an oversized frame from the guest is skipped, not fatal. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frame.h"
#include "util.h"

/* While the guest has not opened its port (booting, agent restarting),
 * what we send waits in QEMU's socket buffer or is lost with a dying agent;
 * a fresh Ping every RETRY_MS bounds how long either can delay readiness. */
#define RETRY_MS 250
#define RBUF_SIZE (VMF_FRAME_HDR + (size_t)VMF_AGENT_MAX_FRAME)

struct vmf_agent {
	int fd;
	uint64_t next_id;
	uint8_t *rbuf;
	size_t rlen;
	uint32_t skip;                   /* bytes of an oversized frame to drop */
	char last_error[200];            /* an id-0 error reply, for diagnosis */
};

/* Ids start at a random point: replies left over from before a template
 * save (sent to another connection, maybe another daemon) then never match
 * an id of this connection.  0 is what the agent uses when it cannot tell
 * which request a reply is for. */
static uint64_t
random_id_base(void)
{
	uint64_t v = 0;
	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = ((uint64_t)getpid() << 40) ^ ((uint64_t)vmf_now_ms() << 8);
	/* Room for 2^62 requests before wrapping towards 0. */
	return (v >> 2) | 1;
}

struct vmf_agent *
vmf_agent_new(int fd)
{
	if (fd < 0)
		return NULL;
	struct vmf_agent *a = calloc(1, sizeof(*a));
	uint8_t *rbuf = malloc(RBUF_SIZE);
	if (!a || !rbuf) {
		free(a);
		free(rbuf);
		close(fd);
		return NULL;
	}
	/* Non-blocking so that deadlines hold for writes too. */
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	a->fd = fd;
	a->rbuf = rbuf;
	a->next_id = random_id_base();
	return a;
}

void
vmf_agent_free(struct vmf_agent *a)
{
	if (!a)
		return;
	close(a->fd);
	free(a->rbuf);
	free(a);
}

/* Like vmf_write_full, but a closed channel is EPIPE, never SIGPIPE: the
 * caller (daemon, test, tool) need not ignore the signal. */
static int
write_all(int fd, const uint8_t *p, size_t n, int64_t deadline, struct vmf_error *err)
{
	bool sock = true;
	while (n > 0) {
		ssize_t w = sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
		if (w < 0 && errno == ENOTSOCK && sock) {
			sock = false;
			continue;
		}
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EPIPE)
			return vmf_err(err, EPIPE, "the agent channel was closed by QEMU");
		if (w < 0 && errno != EAGAIN)
			return vmf_err_sys(err, errno, "writing to the agent channel");
		int64_t left = deadline - vmf_now_ms();
		if (left <= 0)
			return vmf_err(err, ETIMEDOUT, "timed out sending to the guest agent");
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		if (poll(&pf, 1, left > 60000 ? 60000 : (int)left) < 0 && errno != EINTR)
			return vmf_err_sys(err, errno, "poll on the agent channel");
	}
	return 0;
}

static int
send_req(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, int64_t deadline, struct vmf_error *err)
{
	req->protocol_version = AGENT_PROTOCOL_VERSION;
	req->id = ++a->next_id;
	size_t n = vmf__agent__agent_request__get_packed_size(req);
	if (n > VMF_AGENT_MAX_FRAME)
		return vmf_err(err, EMSGSIZE, "agent request of %zu bytes exceeds the %u byte frame limit", n,
			       VMF_AGENT_MAX_FRAME);
	uint8_t buf[VMF_FRAME_HDR + VMF_AGENT_MAX_FRAME];
	vmf_frame_put_len(buf, (uint32_t)n);
	vmf__agent__agent_request__pack(req, buf + VMF_FRAME_HDR);
	/* Once the first byte is out the frame must go out whole, or the
	 * agent's parser would be left mid-frame: the deadline holds only
	 * until then. */
	int r = write_all(a->fd, buf, 1, deadline, err);
	if (r < 0)
		return r;
	int64_t grace = vmf_now_ms() + 5000;
	return write_all(a->fd, buf + 1, VMF_FRAME_HDR + n - 1, deadline > grace ? deadline : grace, err);
}

static void
consume(struct vmf_agent *a, size_t n)
{
	memmove(a->rbuf, a->rbuf + n, a->rlen - n);
	a->rlen -= n;
}

/* Next complete reply frame, unpacked; NULL *out for a frame that does not
 * decode (counted as junk, not fatal).  Partial frames stay buffered. */
static int
recv_reply(struct vmf_agent *a, Vmf__Agent__AgentReply **out, int64_t deadline, struct vmf_error *err)
{
	*out = NULL;
	for (;;) {
		if (a->skip) {
			size_t k = a->rlen < a->skip ? a->rlen : a->skip;
			consume(a, k);
			a->skip -= (uint32_t)k;
		}
		if (!a->skip && a->rlen >= VMF_FRAME_HDR) {
			uint32_t n = vmf_frame_get_len(a->rbuf);
			if (n > VMF_AGENT_MAX_FRAME) {
				consume(a, VMF_FRAME_HDR);
				a->skip = n;
				return vmf_err(err, EMSGSIZE,
					       "the guest agent sent a frame of %u bytes (limit %u); skipping it", n,
					       VMF_AGENT_MAX_FRAME);
			}
			if (a->rlen >= VMF_FRAME_HDR + n) {
				*out = vmf__agent__agent_reply__unpack(NULL, n, a->rbuf + VMF_FRAME_HDR);
				consume(a, VMF_FRAME_HDR + n);
				return 0;
			}
		}
		size_t room = RBUF_SIZE - a->rlen;
		ssize_t r = read(a->fd, a->rbuf + a->rlen, room);
		if (r > 0) {
			a->rlen += (size_t)r;
			continue;
		}
		if (r == 0)
			return vmf_err(err, EPIPE, "the agent channel was closed by QEMU");
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return vmf_err_sys(err, errno, "reading from the agent channel");
		int64_t left = deadline - vmf_now_ms();
		if (left <= 0)
			return vmf_err(err, ETIMEDOUT, "timed out waiting for the guest agent");
		struct pollfd p = { .fd = a->fd, .events = POLLIN };
		if (poll(&p, 1, left > 60000 ? 60000 : (int)left) < 0 && errno != EINTR)
			return vmf_err_sys(err, errno, "poll on the agent channel");
	}
}

/* Notes an error reply the agent could not tie to a request (id 0): it
 * explains a later timeout, but is never taken as the answer to a call. */
static void
note_orphan(struct vmf_agent *a, const Vmf__Agent__AgentReply *rep)
{
	if (rep->id == 0 && rep->error_code)
		snprintf(a->last_error, sizeof(a->last_error), "%s (errno %d)",
			 rep->error_message ? rep->error_message : "", rep->error_code);
}

/* Reads replies until the one for id arrives; others are stale. */
static int
wait_reply(struct vmf_agent *a, uint64_t id, Vmf__Agent__AgentReply **out, int64_t deadline,
	   struct vmf_error *err)
{
	for (;;) {
		Vmf__Agent__AgentReply *rep;
		int r = recv_reply(a, &rep, deadline, err);
		if (r == -EMSGSIZE)
			continue;
		if (r == -ETIMEDOUT && a->last_error[0])
			vmf_error_append(err, "; earlier the agent reported: %s", a->last_error);
		if (r < 0)
			return r;
		if (!rep)
			continue;
		if (rep->id == id) {
			*out = rep;
			return 0;
		}
		note_orphan(a, rep);
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
	}
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
	case VMF__AGENT__AGENT_REQUEST__BODY_UNMOUNT_SHARE: return VMF__AGENT__AGENT_REPLY__BODY_MOUNT;
	case VMF__AGENT__AGENT_REQUEST__BODY_NEW_IDENTITY: return VMF__AGENT__AGENT_REPLY__BODY_IDENTITY;
	case VMF__AGENT__AGENT_REQUEST__BODY_HANDOUT: return VMF__AGENT__AGENT_REPLY__BODY_HANDOUT;
	case VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_DISK: return VMF__AGENT__AGENT_REPLY__BODY_DISK_MOUNTED;
	case VMF__AGENT__AGENT_REQUEST__BODY_UNMOUNT_DISK: return VMF__AGENT__AGENT_REPLY__BODY_DISK_UNMOUNTED;
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START: return VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED;
	case VMF__AGENT__AGENT_REQUEST__BODY_FLUSH_DISKS: return VMF__AGENT__AGENT_REPLY__BODY_DISKS_FLUSHED;
	case VMF__AGENT__AGENT_REQUEST__BODY_POWEROFF: return VMF__AGENT__AGENT_REPLY__BODY_POWERING_OFF;
	default: return VMF__AGENT__AGENT_REPLY__BODY__NOT_SET;
	}
}

static int
check_reply(Vmf__Agent__AgentReply *rep, Vmf__Agent__AgentReply__BodyCase want, struct vmf_error *err)
{
	if (rep->error_code)
		return vmf_err(err, rep->error_code, "the guest agent reports: %s",
			       rep->error_message && *rep->error_message ? rep->error_message : "unspecified error");
	if (rep->body_case != want)
		return vmf_err(err, EPROTO, "the guest agent answered with message type %d, expected %d",
			       (int)rep->body_case, (int)want);
	return 0;
}

int
vmf_agent_send(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, int timeout_ms, struct vmf_error *err)
{
	if (expected(req) == VMF__AGENT__AGENT_REPLY__BODY__NOT_SET)
		return vmf_err(err, EINVAL, "guest agent: request type %d is not one this host knows",
			       (int)req->body_case);
	a->last_error[0] = '\0';
	int r = send_req(a, req, vmf_now_ms() + timeout_ms, err);
	return r < 0 ? vmf_error_prefix(err, "guest agent") : 0;
}

int
vmf_agent_recv(struct vmf_agent *a, const Vmf__Agent__AgentRequest *req, Vmf__Agent__AgentReply **reply,
	       int timeout_ms, struct vmf_error *err)
{
	*reply = NULL;
	Vmf__Agent__AgentReply *rep = NULL;
	int r = wait_reply(a, req->id, &rep, vmf_now_ms() + timeout_ms, err);
	if (r < 0)
		return vmf_error_prefix(err, "guest agent");
	if ((r = check_reply(rep, expected(req), err)) < 0) {
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		return r;
	}
	*reply = rep;
	return 0;
}

int
vmf_agent_call(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, Vmf__Agent__AgentReply **reply,
	       int timeout_ms, struct vmf_error *err)
{
	*reply = NULL;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	int r = vmf_agent_send(a, req, timeout_ms, err);
	if (r < 0)
		return r;
	int64_t left = deadline - vmf_now_ms();
	return vmf_agent_recv(a, req, reply, left > 0 ? (int)left : 0, err);
}

static int
call_simple(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, int timeout_ms, struct vmf_error *err)
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
	return call_simple(a, &req, timeout_ms, err);
}

int
vmf_agent_open(vmf_agent_connect_fn connect, struct vmf_vmm *vm, int timeout_ms, struct vmf_agent **out,
	       struct vmf_error *err)
{
	*out = NULL;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	/* Longer than the client's first 1 s: a clone just continued under
	 * load may take that long to run its agent at all. */
	int attempt_ms = 2000;
	for (;;) {
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0)
			left = 1;
		int fd = connect(vm, left, err);
		if (fd < 0)
			return fd;
		struct vmf_agent *a = vmf_agent_new(fd);
		if (!a)
			return vmf_err(err, ENOMEM, "out of memory for the agent channel");
		left = (int)(deadline - vmf_now_ms());
		bool last = left <= attempt_ms;
		int r = vmf_agent_wait_ready(a, last ? (left > 0 ? left : 1) : attempt_ms, err);
		if (r == 0) {
			*out = a;
			return 0;
		}
		vmf_agent_free(a);
		if (r != -ETIMEDOUT || last)
			return r;
		attempt_ms *= 2;
	}
}

int
vmf_agent_wait_ready(struct vmf_agent *a, int timeout_ms, struct vmf_error *err)
{
	int64_t start = vmf_now_ms(), deadline = start + timeout_ms;
	uint64_t first = a->next_id + 1;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	a->last_error[0] = '\0';
	unsigned sent = 0;
	for (;;) {
		int64_t now = vmf_now_ms();
		if (now >= deadline) {
			vmf_err(err, ETIMEDOUT, "guest agent: no answer to %u Pings within %d ms", sent, timeout_ms);
			if (a->last_error[0])
				vmf_error_append(err, "; the agent reported: %s", a->last_error);
			return -ETIMEDOUT;
		}
		int64_t until = now + RETRY_MS < deadline ? now + RETRY_MS : deadline;
		int r = send_req(a, &req, until, err);
		if (r < 0 && r != -ETIMEDOUT)
			return vmf_error_prefix(err, "guest agent");
		sent += r == 0;
		/* Any of our Pings answered means the agent is serving. */
		for (;;) {
			Vmf__Agent__AgentReply *rep;
			r = recv_reply(a, &rep, until, err);
			if (r == -ETIMEDOUT)
				break;
			if (r == -EMSGSIZE)
				continue;
			if (r < 0)
				return vmf_error_prefix(err, "guest agent");
			if (!rep)
				continue;
			bool ours = rep->id >= first && rep->id <= a->next_id &&
				    rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_PONG;
			note_orphan(a, rep);
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
	/* The guest gives up waiting first, so that its partial result
	 * reaches us before our own deadline. */
	o.timeout_ms = timeout_ms > 500 ? (uint32_t)(timeout_ms - 250) : (uint32_t)timeout_ms / 2;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_ONLINE_CPU_MEM;
	req.online_cpu_mem = &o;
	Vmf__Agent__AgentReply *rep;
	int r = vmf_agent_call(a, &req, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	if (online_cpus)
		*online_cpus = rep->online->online_cpus;
	if (mem_total_kib)
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
		r = vmf_err(err, EPROTO, "the guest agent returned %zu random bytes, expected 16",
			    rep->rng->random.len);
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
	return call_simple(a, &req, timeout_ms, err);
}

int
vmf_agent_unmount_share(struct vmf_agent *a, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__UnmountShare u = VMF__AGENT__UNMOUNT_SHARE__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_UNMOUNT_SHARE;
	req.unmount_share = &u;
	return call_simple(a, &req, timeout_ms, err);
}

int
vmf_agent_new_identity(struct vmf_agent *a, struct vmf_agent_identity *out, int timeout_ms, struct vmf_error *err)
{
	uint8_t entropy[64], mid[16];
	if (getrandom(entropy, sizeof(entropy), 0) != (ssize_t)sizeof(entropy) ||
	    getrandom(mid, sizeof(mid), 0) != (ssize_t)sizeof(mid))
		return vmf_err_sys(err, errno, "cannot draw host entropy for a clone's identity");
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__NewIdentity ni = VMF__AGENT__NEW_IDENTITY__INIT;
	ni.entropy.data = entropy;
	ni.entropy.len = sizeof(entropy);
	ni.machine_id.data = mid;
	ni.machine_id.len = sizeof(mid);
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_NEW_IDENTITY;
	req.new_identity = &ni;
	Vmf__Agent__AgentReply *rep;
	int r = vmf_agent_call(a, &req, &rep, timeout_ms, err);
	explicit_bzero(entropy, sizeof(entropy));
	if (r == -EOPNOTSUPP)
		vmf_error_append(err, " (an agent older than this host: rebuild the guest image with this build's "
				 "agent, contrib/image/build-image)");
	if (r < 0)
		return r;
	const Vmf__Agent__Identity *id = rep->identity;
	static const uint8_t zero[16];
	if (id->random.len != 16)
		r = vmf_err(err, EPROTO, "the guest agent returned %zu random bytes, expected 16", id->random.len);
	else if (memcmp(id->random.data, zero, 16) == 0)
		r = vmf_err(err, EIO, "the guest's random sample after reseeding is all zeros");
	else if (!id->boot_id || strlen(id->boot_id) != 36)
		r = vmf_err(err, EPROTO, "the guest agent returned boot id '%.40s', not a UUID",
			    id->boot_id ? id->boot_id : "");
	if (r == 0) {
		memcpy(out->sample, id->random.data, 16);
		snprintf(out->boot_id, sizeof(out->boot_id), "%s", id->boot_id);
		snprintf(out->machine_id, sizeof(out->machine_id), "%s", id->machine_id ? id->machine_id : "");
	}
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

int
vmf_agent_send_handout(struct vmf_agent *a, const char *hostname, struct vmf_agent_handout *h, int timeout_ms,
		       struct vmf_error *err)
{
	return vmf_agent_send_handout_net(a, hostname, NULL, h, timeout_ms, err);
}

int
vmf_agent_send_handout_net(struct vmf_agent *a, const char *hostname, const struct vmf_guest_net *net,
			   struct vmf_agent_handout *h, int timeout_ms, struct vmf_error *err)
{
	memset(h, 0, sizeof(*h));
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Handout ho = VMF__AGENT__HANDOUT__INIT;
	ho.hostname = (char *)(hostname ? hostname : "");
	char *addrs[8], *dns[4];
	if (net) {
		ho.net_mac.data = (uint8_t *)net->mac;
		ho.net_mac.len = 6;
		for (unsigned i = 0; i < net->n_addrs && i < 8; i++)
			addrs[i] = (char *)net->addrs[i];
		ho.net_addrs = addrs;
		ho.n_net_addrs = net->n_addrs;
		ho.net_gateway = (char *)net->gateway;
		for (unsigned i = 0; i < net->n_dns && i < 4; i++)
			dns[i] = (char *)net->dns[i];
		ho.net_dns = dns;
		ho.n_net_dns = net->n_dns;
	}
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_HANDOUT;
	req.handout = &ho;
	/* As late as possible: the guest sets exactly this. */
	ho.realtime_ns = h->host_sent_ns = vmf_realtime_ns();
	int r = vmf_agent_send(a, &req, timeout_ms, err);
	h->id = req.id;
	return r;
}

int
vmf_agent_recv_handout(struct vmf_agent *a, struct vmf_agent_handout *h, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_HANDOUT;
	req.id = h->id;
	Vmf__Agent__AgentReply *rep;
	int r = vmf_agent_recv(a, &req, &rep, timeout_ms, err);
	h->host_recv_ns = vmf_realtime_ns();
	if (r == -EOPNOTSUPP)
		vmf_error_append(err, " (an agent older than this host: rebuild the guest image with this build's "
				 "agent, contrib/image/build-image)");
	if (r < 0)
		return r;
	const Vmf__Agent__HandoutResult *res = rep->handout;
	h->guest_ns = res->realtime_ns;
	snprintf(h->hostname, sizeof(h->hostname), "%s", res->hostname ? res->hostname : "");
	snprintf(h->boot_id, sizeof(h->boot_id), "%s", res->boot_id ? res->boot_id : "");
	snprintf(h->net_error, sizeof(h->net_error), "%s", res->net_error ? res->net_error : "");
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 0;
}

double
vmf_agent_handout_clock_error_ms(const struct vmf_agent_handout *h)
{
	return (double)llabs(h->guest_ns - h->host_recv_ns) / 1e6;
}

int
vmf_agent_mount_disk(struct vmf_agent *a, const char *serial, const char *path, const char *fstype, bool read_only,
		     char *device, size_t device_n, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__MountDisk m = VMF__AGENT__MOUNT_DISK__INIT;
	m.serial = (char *)serial;
	m.path = (char *)(path ? path : "");
	m.fstype = (char *)(fstype ? fstype : "");
	m.read_only = read_only;
	/* The guest's own wait ends first: its error says what it saw. */
	m.timeout_ms = timeout_ms > 2000 ? (uint32_t)timeout_ms - 1000 : (uint32_t)timeout_ms;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_DISK;
	req.mount_disk = &m;
	Vmf__Agent__AgentReply *rep;
	int r = vmf_agent_call(a, &req, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	if (rep->body_case != VMF__AGENT__AGENT_REPLY__BODY_DISK_MOUNTED) {
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		return vmf_err(err, EPROTO, "agent answered MountDisk with reply type %d", (int)rep->body_case);
	}
	if (device)
		snprintf(device, device_n, "%s", rep->disk_mounted->device ? rep->disk_mounted->device : "");
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 0;
}

int
vmf_agent_unmount_disk(struct vmf_agent *a, const char *serial, const char *path, int timeout_ms,
		       struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__UnmountDisk u = VMF__AGENT__UNMOUNT_DISK__INIT;
	u.serial = (char *)serial;
	u.path = (char *)(path ? path : "");
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_UNMOUNT_DISK;
	req.unmount_disk = &u;
	return call_simple(a, &req, timeout_ms, err);
}

int
vmf_agent_run(struct vmf_agent *a, const char *const *argv, int *exit_code, int timeout_ms, struct vmf_error *err)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	size_t n = 0;
	while (argv[n])
		n++;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecStart x = VMF__AGENT__EXEC_START__INIT;
	x.n_argv = n;
	x.argv = (char **)argv;
	x.timeout_ms = (uint32_t)timeout_ms;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START;
	req.exec_start = &x;
	Vmf__Agent__AgentReply *rep = NULL;
	int r = vmf_agent_call(a, &req, &rep, timeout_ms, err);
	if (r < 0)
		return vmf_error_prefix(err, "running %s in the guest", argv[0]);
	uint64_t exec_id = rep->exec_started->exec_id;
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	/* Its output (a line at most for the commands run here) fits the
	 * agent's initial window, so only the exit matters. */
	for (;;) {
		if ((r = wait_reply(a, 0, &rep, deadline, err)) < 0)
			return vmf_error_prefix(err, "running %s in the guest", argv[0]);
		bool done = rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_EXEC_EXIT &&
			    rep->exec_exit->exec_id == exec_id;
		if (done)
			*exit_code = rep->exec_exit->exit_code;
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		if (done)
			return 0;
	}
}

/* The guest's word on each disk asked about, matched by serial and path:
 * entries for disks not asked about, and any beyond them, are ignored, and
 * a disk the guest does not mention stays not done. */
static void
take_flushed(const Vmf__Agent__DisksFlushed *res, struct vmf_agent_flush *disks, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct vmf_agent_flush *d = &disks[i];
		for (size_t k = 0; res && k < res->n_disks && k < VMF_AGENT_FLUSH_MAX; k++) {
			const Vmf__Agent__DiskFlushed *o = res->disks[k];
			if (!o->serial || strcmp(o->serial, d->serial) != 0 || !o->path || strcmp(o->path, d->path) != 0)
				continue;
			d->answered = true;
			d->error_code = o->error_code;
			d->done = o->error_code == 0 && o->how && *o->how;
			vmf_escape(o->how ? o->how : "", strlen(o->how ? o->how : ""), d->how, sizeof(d->how), false);
			const char *m = o->error_message ? o->error_message : "";
			vmf_escape(m, strlen(m), d->error, sizeof(d->error), false);
			break;
		}
	}
}

static int
flush_call(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, Vmf__Agent__FlushDisk **fd, struct vmf_agent_flush *disks,
	   size_t n, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__FlushDisk one[VMF_AGENT_FLUSH_MAX];
	if (n > VMF_AGENT_FLUSH_MAX)
		return vmf_err(err, E2BIG, "%zu disks to flush; at most %d", n, VMF_AGENT_FLUSH_MAX);
	for (size_t i = 0; i < n; i++) {
		vmf__agent__flush_disk__init(&one[i]);
		one[i].serial = disks[i].serial;
		one[i].path = disks[i].path;
		fd[i] = &one[i];
		disks[i].answered = disks[i].done = false;
		disks[i].error_code = 0;
		disks[i].how[0] = disks[i].error[0] = '\0';
	}
	Vmf__Agent__AgentReply *rep = NULL;
	int r = vmf_agent_call(a, req, &rep, timeout_ms, err);
	if (r == -EOPNOTSUPP)
		vmf_error_append(err, " (an agent older than this host: rebuild the guest image with this build's "
				 "agent, contrib/image/build-image)");
	if (r < 0)
		return r;
	take_flushed(rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_DISKS_FLUSHED ? rep->disks_flushed
										  : rep->powering_off, disks, n);
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 0;
}

int
vmf_agent_flush_disks(struct vmf_agent *a, enum vmf_agent_flush_mode mode, struct vmf_agent_flush *disks, size_t n,
		      int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__FlushDisks f = VMF__AGENT__FLUSH_DISKS__INIT;
	Vmf__Agent__FlushDisk *fd[VMF_AGENT_FLUSH_MAX];
	f.mode = mode == VMF_AGENT_FREEZE ? VMF__AGENT__FLUSH_MODE__FLUSH_FREEZE
		 : mode == VMF_AGENT_THAW ? VMF__AGENT__FLUSH_MODE__FLUSH_THAW : VMF__AGENT__FLUSH_MODE__FLUSH_UNMOUNT;
	f.disks = fd;
	f.n_disks = n;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FLUSH_DISKS;
	req.flush_disks = &f;
	return flush_call(a, &req, fd, disks, n, timeout_ms, err);
}

int
vmf_agent_poweroff(struct vmf_agent *a, struct vmf_agent_flush *disks, size_t n, unsigned grace_ms, int timeout_ms,
		   struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Poweroff p = VMF__AGENT__POWEROFF__INIT;
	Vmf__Agent__FlushDisk *fd[VMF_AGENT_FLUSH_MAX];
	p.disks = fd;
	p.n_disks = n;
	p.grace_ms = grace_ms;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_POWEROFF;
	req.poweroff = &p;
	return flush_call(a, &req, fd, disks, n, timeout_ms, err);
}
