/* Host side of the guest agent protocol (proto/agent.proto): the daemon's
 * typed calls over one connection (common/agentconn.c, shared with the
 * client library, bounds what a hostile guest can make it read, buffer or
 * spend).  Strings a guest returns are validated here (ids as UUIDs and
 * hex, device names) or escaped (its error messages, hostname and NIC
 * error) before anything of the daemon's keeps or prints them. */
#include "agent.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "agentconn.h"
#include "frame.h"
#include "pbtext.h"
#include "text.h"
#include "util.h"

/* While the guest has not opened its port (booting, agent restarting),
 * what we send waits in QEMU's socket buffer or is lost with a dying agent;
 * a fresh Ping every RETRY_MS bounds how long either can delay readiness. */
#define RETRY_MS 250
/* Output of a command run with vmf_agent_run: the agent's two initial
 * windows (nothing is ever granted back); more is a guest ignoring them. */
#define RUN_OUTPUT_MAX (2u * 256u * 1024u)

struct vmf_agent {
	struct vmf_agent_conn *c;
};

static int64_t
deadline_in(int timeout_ms)
{
	return vmf_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
}

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
	if (!(a->c = vmf_agent_conn_new(fd, "the guest agent"))) {
		free(a);
		return NULL;
	}
	return a;
}

void
vmf_agent_free(struct vmf_agent *a)
{
	if (!a)
		return;
	vmf_agent_conn_free(a->c);
	free(a);
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

int
vmf_agent_send(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, int timeout_ms, struct vmf_error *err)
{
	if (expected(req) == VMF__AGENT__AGENT_REPLY__BODY__NOT_SET)
		return vmf_err(err, EINVAL, "guest agent: request type %d is not one this host knows",
			       (int)req->body_case);
	vmf_agent_conn_clear_last_error(a->c);
	return vmf_agent_conn_send(a->c, req, deadline_in(timeout_ms), err);
}

int
vmf_agent_recv(struct vmf_agent *a, const Vmf__Agent__AgentRequest *req, Vmf__Agent__AgentReply **reply,
	       int timeout_ms, struct vmf_error *err)
{
	*reply = NULL;
	Vmf__Agent__AgentReply *rep = NULL;
	int r = vmf_agent_conn_wait(a->c, req->id, &rep, deadline_in(timeout_ms), err);
	if (r < 0)
		return r;
	if ((r = vmf_agent_reply_check(a->c, rep, expected(req), "the guest agent reports: ", err)) < 0) {
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
	int64_t deadline = deadline_in(timeout_ms);
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

struct open_attempt {
	vmf_agent_connect_fn connect;
	struct vmf_vmm *vm;
};

static int
open_once(void *arg, int64_t until, void **out, struct vmf_error *err)
{
	struct open_attempt *o = arg;
	int64_t left = until - vmf_now_ms();
	int fd = o->connect(o->vm, left > 0 ? (int)left : 1, err);
	if (fd < 0)
		return fd;
	struct vmf_agent *a = vmf_agent_new(fd);
	if (!a)
		return vmf_err(err, ENOMEM, "out of memory for the agent channel");
	left = until - vmf_now_ms();
	int r = vmf_agent_wait_ready(a, left > 0 ? (int)left : 1, err);
	if (r < 0) {
		vmf_agent_free(a);
		return r;
	}
	*out = a;
	return 0;
}

int
vmf_agent_open(vmf_agent_connect_fn connect, struct vmf_vmm *vm, int timeout_ms, struct vmf_agent **out,
	       struct vmf_error *err)
{
	*out = NULL;
	struct open_attempt o = { connect, vm };
	void *a = NULL;
	/* Longer than the client's first 1 s: a clone just continued under
	 * load may take that long to run its agent at all. */
	int r = vmf_agent_conn_retry(open_once, &o, 2000, deadline_in(timeout_ms), NULL, NULL, &a, err);
	*out = a;
	return r;
}

int
vmf_agent_wait_ready(struct vmf_agent *a, int timeout_ms, struct vmf_error *err)
{
	struct vmf_agent_conn *c = a->c;
	int64_t deadline = deadline_in(timeout_ms);
	uint64_t first = 0, last = 0;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	vmf_agent_conn_clear_last_error(c);
	vmf_agent_conn_begin(c);
	unsigned sent = 0;
	for (;;) {
		int64_t now = vmf_now_ms();
		if (now >= deadline) {
			vmf_err(err, ETIMEDOUT, "guest agent: no answer to %u Pings within %d ms", sent, timeout_ms);
			if (*vmf_agent_conn_last_error(c))
				vmf_error_append(err, "; the agent reported: %s", vmf_agent_conn_last_error(c));
			return -ETIMEDOUT;
		}
		int64_t until = now + RETRY_MS < deadline ? now + RETRY_MS : deadline;
		/* A Ping not written by then stays queued and goes out first
		 * next time: the channel never sees half a frame. */
		int r = vmf_agent_conn_queue(c, &req, err);
		if (r == 0)
			r = vmf_agent_conn_flush(c, until, err);
		if (r < 0)
			return r;
		sent++;
		last = req.id;
		if (!first)
			first = last;
		/* Any of our Pings answered means the agent is serving. */
		for (;;) {
			Vmf__Agent__AgentReply *rep;
			r = vmf_agent_conn_recv(c, &rep, until, err);
			if (r < 0)
				return r;
			if (r == 0)
				break;
			if (rep && rep->id >= first && rep->id <= last && !rep->error_code &&
			    rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_PONG) {
				vmf_agent_conn_claim(c, rep->id);
				vmf__agent__agent_reply__free_unpacked(rep, NULL);
				return 0;
			}
			if ((r = vmf_agent_conn_other(c, rep, err)) < 0)
				return r;
			if (vmf_now_ms() >= until)
				break;
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
	int r = vmf_agent_call(a, &req, reply, timeout_ms, err);
	/* All of it is shown (inspect), none of it used. */
	if (r == 0)
		vmf_pb_escape_strings(&(*reply)->base);
	return r;
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

/* A guest string for an error message. */
static const char *
shown(const char *s, char *buf, size_t n)
{
	vmf_escape(s, buf, n, 0);
	return buf;
}

/* /etc/machine-id: 32 lower-case hex digits. */
static bool
valid_machine_id(const char *s)
{
	if (strlen(s) != 32)
		return false;
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			return false;
	return true;
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
	char esc[80];
	if (id->random.len != 16)
		r = vmf_err(err, EPROTO, "the guest agent returned %zu random bytes, expected 16", id->random.len);
	else if (memcmp(id->random.data, zero, 16) == 0)
		r = vmf_err(err, EIO, "the guest's random sample after reseeding is all zeros");
	else if (!vmf_valid_uuid(id->boot_id))
		r = vmf_err(err, EPROTO, "the guest agent returned boot id '%s', not a UUID",
			    shown(id->boot_id, esc, sizeof(esc)));
	else if (id->machine_id && *id->machine_id && !valid_machine_id(id->machine_id))
		r = vmf_err(err, EPROTO, "the guest agent returned machine id '%s', not 32 hex digits",
			    shown(id->machine_id, esc, sizeof(esc)));
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

/* Sends req with the host's realtime in *realtime_ns, taken as late as
 * possible: the guest sets exactly this. */
static int
send_clock(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, int64_t *realtime_ns, struct vmf_agent_handout *h,
	   uint64_t *id, int timeout_ms, struct vmf_error *err)
{
	*realtime_ns = h->host_sent_ns = vmf_realtime_ns();
	int r = vmf_agent_send(a, req, timeout_ms, err);
	*id = req->id;
	return r;
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
	return send_clock(a, &req, &ho.realtime_ns, h, &h->id, timeout_ms, err);
}

int
vmf_agent_send_handout_time(struct vmf_agent *a, struct vmf_agent_handout *h, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__SetTime st = VMF__AGENT__SET_TIME__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_SET_TIME;
	req.set_time = &st;
	return send_clock(a, &req, &st.realtime_ns, h, &h->time_id, timeout_ms, err);
}

/* The SetTime's reply: the agent answers in order, so it follows the
 * hand-out's. */
static int
recv_handout_time(struct vmf_agent *a, struct vmf_agent_handout *h, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_SET_TIME;
	req.id = h->time_id;
	Vmf__Agent__AgentReply *rep;
	int r = vmf_agent_recv(a, &req, &rep, timeout_ms, err);
	h->host_recv_ns = vmf_realtime_ns();
	if (r < 0)
		return r;
	h->guest_ns = rep->time->realtime_ns;
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 0;
}

int
vmf_agent_recv_handout(struct vmf_agent *a, struct vmf_agent_handout *h, int timeout_ms, struct vmf_error *err)
{
	int64_t deadline = deadline_in(timeout_ms);
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
	/* Kept and compared by the caller, shown in its errors: a hostname
	 * that is no sandbox id (which is what the hand-out set) and a boot id
	 * that is no UUID arrive escaped and never match. */
	const char *hn = res->hostname ? res->hostname : "";
	if (!*hn || vmf_valid_sandbox_id(hn))
		snprintf(h->hostname, sizeof(h->hostname), "%s", hn);
	else
		vmf_escape(hn, h->hostname, sizeof(h->hostname), VMF_ESC_BACKSLASH);
	const char *bi = res->boot_id ? res->boot_id : "";
	if (!*bi || vmf_valid_uuid(bi))
		snprintf(h->boot_id, sizeof(h->boot_id), "%s", bi);
	else
		vmf_escape(bi, h->boot_id, sizeof(h->boot_id), VMF_ESC_BACKSLASH);
	vmf_escape(res->net_error, h->net_error, sizeof(h->net_error), 0);
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	if (!h->time_id)
		return 0;
	int64_t left = deadline - vmf_now_ms();
	return recv_handout_time(a, h, left > 0 ? (int)left : 0, err);
}

double
vmf_agent_handout_clock_error_ms(const struct vmf_agent_handout *h)
{
	return (double)llabs(h->guest_ns - h->host_recv_ns) / 1e6;
}

/* What the agent may name a block device by: /dev/ and 1 to 31 letters
 * and digits (sda, vdb, nvme0n1). */
static bool
valid_device(const char *d)
{
	if (strncmp(d, "/dev/", 5) != 0)
		return false;
	size_t n = strlen(d + 5);
	if (n == 0 || n > 31)
		return false;
	for (const char *p = d + 5; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
			return false;
	return true;
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
	const char *dev = rep->disk_mounted->device ? rep->disk_mounted->device : "";
	if (!valid_device(dev)) {
		char shown[80];
		vmf_escape(dev, shown, sizeof(shown), 0);
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		return vmf_err(err, EPROTO, "the guest agent names the disk's device '%s', not a /dev/NAME of letters "
			       "and digits", shown);
	}
	if (device)
		snprintf(device, device_n, "%s", dev);
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

struct run_events {
	uint64_t exec_id;
	size_t output;
	bool done;
	int exit_code;
};

/* The process's output (dropped) and exit; nothing else is its. */
static int
run_event(void *arg, Vmf__Agent__AgentReply *rep, struct vmf_error *err)
{
	struct run_events *ev = arg;
	if (rep->id != 0)
		return 0;
	if (rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_EXEC_OUTPUT && rep->exec_output->exec_id == ev->exec_id) {
		ev->output += rep->exec_output->data.len;
		if (ev->output > RUN_OUTPUT_MAX)
			return vmf_err(err, EPROTO, "the guest agent sent more output than the %u bytes of window it was "
				       "given: the connection is closed", RUN_OUTPUT_MAX);
	} else if (rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_EXEC_EXIT && rep->exec_exit->exec_id == ev->exec_id) {
		ev->done = true;
		ev->exit_code = rep->exec_exit->exit_code;
	} else {
		return 0;
	}
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 1;
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
	 * agent's initial windows, so only the exit matters. */
	struct run_events ev = { .exec_id = exec_id };
	vmf_agent_conn_set_events(a->c, run_event, &ev);
	vmf_agent_conn_begin(a->c);
	while (r == 0 && !ev.done) {
		r = vmf_agent_conn_recv(a->c, &rep, deadline, err);
		if (r == 0)
			r = vmf_err(err, ETIMEDOUT, "timed out waiting for the guest agent to report the end of %s",
				    argv[0]);
		else if (r > 0)
			r = vmf_agent_conn_other(a->c, rep, err);
	}
	vmf_agent_conn_set_events(a->c, NULL, NULL);
	if (r < 0)
		return vmf_error_prefix(err, "running %s in the guest", argv[0]);
	*exit_code = ev.exit_code;
	return 0;
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
			vmf_escape(o->how, d->how, sizeof(d->how), VMF_ESC_BACKSLASH);
			vmf_escape(o->error_message, d->error, sizeof(d->error), VMF_ESC_BACKSLASH);
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
