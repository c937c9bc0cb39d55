/* Host side of the guest agent protocol (hypervisors/agent.c) against
 * arbitrary replies from "the guest".  The first input byte picks the call
 * (Ping, GuestInfo, OnlineCpuMem, ReseedRng, SetTime, MountShare, or the
 * Ping loop of wait_ready); the rest is the reply stream, then EOF.
 *
 * Request ids start at a random value per connection, so no fixed input
 * could ever answer a call.  The peer therefore reads the first request and
 * renumbers: a reply frame that decodes with id k in 1..8 is re-sent with
 * the id of the k-th request from there on; every other byte (junk, partial
 * or oversized frames, other ids) goes out unchanged. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "frame.h"
#include "fuzz_peer.h"

#define TIMEOUT_MS 2000
#define RENUMBER_MAX 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
send_renumbered(struct fuzz_peer *p)
{
	uint8_t *req_buf = NULL;
	size_t req_len = 0;
	struct vmf_error err;
	if (vmf_frame_read(p->fd, &req_buf, &req_len, VMF_AGENT_MAX_FRAME, vmf_now_ms() + TIMEOUT_MS, &err) < 0)
		return;
	Vmf__Agent__AgentRequest *req = vmf__agent__agent_request__unpack(NULL, req_len, req_buf);
	free(req_buf);
	if (!req)
		abort(); /* the host sent something its own peer cannot read */
	uint64_t base = req->id;
	vmf__agent__agent_request__free_unpacked(req, NULL);

	const uint8_t *d = p->data;
	size_t left = p->len;
	static uint8_t out[VMF_FRAME_HDR + VMF_AGENT_MAX_FRAME];
	while (left >= VMF_FRAME_HDR) {
		uint32_t n = vmf_frame_get_len(d);
		if (n > VMF_AGENT_MAX_FRAME || n > left - VMF_FRAME_HDR)
			break;
		Vmf__Agent__AgentReply *rep = vmf__agent__agent_reply__unpack(NULL, n, d + VMF_FRAME_HDR);
		bool ok;
		if (rep && rep->id >= 1 && rep->id <= RENUMBER_MAX) {
			rep->id = base + rep->id - 1;
			size_t m = vmf__agent__agent_reply__get_packed_size(rep);
			ok = m <= VMF_AGENT_MAX_FRAME;
			if (ok) {
				vmf_frame_put_len(out, (uint32_t)m);
				vmf__agent__agent_reply__pack(rep, out + VMF_FRAME_HDR);
				ok = fuzz_peer_write(p, out, VMF_FRAME_HDR + m);
			}
		} else {
			ok = fuzz_peer_write(p, d, VMF_FRAME_HDR + n);
		}
		if (rep)
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
		if (!ok)
			return;
		d += VMF_FRAME_HDR + n;
		left -= VMF_FRAME_HDR + n;
	}
	fuzz_peer_write(p, d, left);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	struct fuzz_peer p = { .data = data + 1, .len = size - 1, .send = send_renumbered };
	int fd;
	if (fuzz_peer_start(&p, &fd) < 0)
		abort();
	struct vmf_agent *a = vmf_agent_new(fd);
	if (!a)
		abort();
	struct vmf_error err;
	Vmf__Agent__AgentReply *rep = NULL;
	switch (data[0] % 7) {
	case 0:
		vmf_agent_ping(a, TIMEOUT_MS, &err);
		break;
	case 1:
		if (vmf_agent_guest_info(a, &rep, TIMEOUT_MS, &err) == 0)
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
		break;
	case 2: {
		uint32_t cpus;
		uint64_t kib;
		vmf_agent_online(a, 2, 512, &cpus, &kib, TIMEOUT_MS, &err);
		break;
	}
	case 3: {
		static const uint8_t entropy[32] = { 1, 2, 3 };
		uint8_t sample[16];
		vmf_agent_reseed(a, entropy, sizeof(entropy), sample, TIMEOUT_MS, &err);
		break;
	}
	case 4: {
		int64_t guest_ns;
		vmf_agent_set_time(a, 1700000000000000000, &guest_ns, TIMEOUT_MS, &err);
		break;
	}
	case 5:
		vmf_agent_mount_share(a, "share", TIMEOUT_MS, &err);
		break;
	default:
		vmf_agent_wait_ready(a, TIMEOUT_MS, &err);
		break;
	}
	vmf_agent_free(a);
	fuzz_peer_join(&p);
	return 0;
}
