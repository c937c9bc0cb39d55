/* The hostile part of vmf-agent-hostile, a test build of the guest agent
 * (contrib/agent/ compiled with -DVMF_AGENT_HOSTILE and this file;
 * tests/meson.build).  No build of the real agent contains any of it, so
 * nothing on the host side can turn it on in production: it exists in a
 * guest only when a test puts this binary into its initrd.
 *
 * The agent serves as it always does; before it handles a request it asks
 * vmf_hostile_behavior() (an UnmountShare takes the share's mode file
 * away), and before it sends the reply, vmf_hostile_act() plays the
 * behavior.  The mode file is read for every request:
 * /mnt/share/.vmf-hostile (the VM's share: the test switches modes from
 * the host while the VM runs) or else /etc/vmf-hostile (the initrd: for
 * what happens before the share is mounted, such as a clone's warm-up).
 * Each line: PORT REQUEST BEHAVIOR, where PORT is "agent" (the owner's),
 * "vmf" (the daemon's) or "*", REQUEST is a request's field name in
 * proto/agent.proto ("ping", "guest_info", "new_identity", "handout",
 * "online_cpu_mem", "unmount_share", "exec_reset", "exec_start", ...) or
 * "any", and BEHAVIOR one of
 *   flood      write zeros as fast as the port takes them (cat /dev/zero)
 *   junk       frames of the right size that do not decode
 *   oversized  a frame announcing 4 GiB, then zeros
 *   wrong_ids  well-formed Pongs for ids nobody sent
 *   slow       the true reply, a byte every 200 ms
 *   silent     never reply again
 *   strings    the true reply, every string in it terminal escapes and
 *              invalid UTF-8 (the reply is sent; the agent serves on)
 * Every behavior but strings takes the connection over until its host
 * goes away (or VMF_HOSTILE_MAX_MS), then the agent exits, and the
 * guest's init starts it again, serving as before. */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agent.pb-c.h"
#include "frame.h"
#include "hostile_agent.h"

#define VMF_HOSTILE_MAX_MS 20000
#define SLOW_BYTE_MS 200

static const char *const mode_files[] = { "/mnt/share/.vmf-hostile", "/etc/vmf-hostile" };

static const char hostile_text[] =
	"x\x1b]0;owned\x07\x1b[2J\r\nvmfactory: fake\x7f\xc2\x9b" "31m\xe2\x80\xae" "gnp\xff\xfe";

static int64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *
request_name(const Vmf__Agent__AgentRequest *req)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field(&vmf__agent__agent_request__descriptor, (unsigned)req->body_case);
	return f ? f->name : "none";
}

/* The behavior the mode file names for this port and request ("" none). */
static void
find_behavior(const char *port, const char *request, char *out, size_t n)
{
	out[0] = '\0';
	for (size_t i = 0; i < sizeof(mode_files) / sizeof(mode_files[0]); i++) {
		FILE *f = fopen(mode_files[i], "re");
		if (!f)
			continue;
		char line[200], p[40], q[40], b[40];
		while (fgets(line, sizeof(line), f)) {
			if (sscanf(line, "%39s %39s %39s", p, q, b) != 3 || p[0] == '#')
				continue;
			if ((strcmp(p, "*") == 0 || strcmp(p, port) == 0) &&
			    (strcmp(q, "any") == 0 || strcmp(q, request) == 0)) {
				snprintf(out, n, "%s", b);
				break;
			}
		}
		fclose(f);
		return;
	}
}

/* False once the host is gone (or the time is up). */
static bool
host_there(int rfd, int wfd, int64_t end)
{
	if (now_ms() >= end)
		return false;
	struct pollfd p[2] = { { .fd = rfd, .events = POLLIN }, { .fd = wfd, .events = 0 } };
	if (poll(p, rfd == wfd ? 1 : 2, 0) < 0)
		return errno == EINTR;
	if ((p[0].revents | p[1].revents) & (POLLHUP | POLLERR))
		return false;
	if (p[0].revents & POLLIN) {
		/* What the host sends meanwhile is dropped; a port reads 0
		 * while its host is away. */
		char buf[4096];
		ssize_t k = read(rfd, buf, sizeof(buf));
		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
			return false;
	}
	return true;
}

/* Writes what the port takes of buf; false once the host is gone. */
static bool
push(int rfd, int wfd, const uint8_t *buf, size_t n, int64_t end)
{
	while (n) {
		if (!host_there(rfd, wfd, end))
			return false;
		ssize_t w = send(wfd, buf, n, MSG_NOSIGNAL);
		if (w < 0 && errno == ENOTSOCK)
			w = write(wfd, buf, n);
		if (w > 0) {
			buf += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			return false;
		struct pollfd p = { .fd = wfd, .events = POLLOUT };
		poll(&p, 1, 100);
	}
	return true;
}

static size_t
pack_frame(Vmf__Agent__AgentReply *r, uint8_t *buf)
{
	size_t n = vmf__agent__agent_reply__pack(r, buf + VMF_FRAME_HDR);
	vmf_frame_put_len(buf, (uint32_t)n);
	return n + VMF_FRAME_HDR;
}

/* Every string of m (and of the messages in it) the hostile text. */
static void
poison(ProtobufCMessage *m, unsigned depth)
{
	if (!m || depth > 8)
		return;
	const ProtobufCMessageDescriptor *d = m->descriptor;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		char *base = (char *)m;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t *n = (size_t *)(base + f->quantifier_offset);
			void ***v = (void ***)(base + f->offset);
			if (f->type == PROTOBUF_C_TYPE_STRING && *v && *n) {
				/* A list of its own: the agent frees its own
				 * (the share's names) after the reply. */
				static char *list[16];
				for (size_t k = 0; k < 16; k++)
					list[k] = (char *)hostile_text;
				*v = (void **)list;
				*n = *n < 16 ? *n : 16;
			} else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
				for (size_t k = 0; *v && k < *n; k++)
					poison((*v)[k], depth + 1);
			}
			continue;
		}
		if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && *(uint32_t *)(base + f->quantifier_offset) != f->id)
			continue;
		if (f->type == PROTOBUF_C_TYPE_STRING)
			*(const char **)(base + f->offset) = hostile_text;
		else if (f->type == PROTOBUF_C_TYPE_MESSAGE)
			poison(*(ProtobufCMessage **)(base + f->offset), depth + 1);
	}
}

const char *
vmf_hostile_behavior(const char *port, const Vmf__Agent__AgentRequest *req)
{
	static char b[40];
	find_behavior(port, request_name(req), b, sizeof(b));
	return b[0] ? b : NULL;
}

bool
vmf_hostile_act(const char *b, const char *port, int rfd, int wfd, const Vmf__Agent__AgentRequest *req,
		Vmf__Agent__AgentReply *reply)
{
	if (strcmp(b, "strings") == 0) {
		poison(&reply->base, 0);
		return false;
	}
	fprintf(stderr, "vmf-agent-hostile: %s on port %s after %s\n", b, port, request_name(req));
	int64_t end = now_ms() + VMF_HOSTILE_MAX_MS;
	static uint8_t buf[VMF_FRAME_HDR + VMF_AGENT_MAX_FRAME];
	if (strcmp(b, "flood") == 0 || strcmp(b, "oversized") == 0) {
		static uint8_t zeros[65536];
		if (b[0] == 'o') {
			uint8_t h[VMF_FRAME_HDR];
			vmf_frame_put_len(h, 0xfffffff0u);
			push(rfd, wfd, h, sizeof(h), end);
		}
		while (push(rfd, wfd, zeros, sizeof(zeros), end))
			;
	} else if (strcmp(b, "junk") == 0) {
		uint8_t f[VMF_FRAME_HDR + 64];
		vmf_frame_put_len(f, 64);
		memset(f + VMF_FRAME_HDR, 0xff, 64);
		while (push(rfd, wfd, f, sizeof(f), end))
			;
	} else if (strcmp(b, "wrong_ids") == 0) {
		Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
		Vmf__Agent__Ping pong = VMF__AGENT__PING__INIT;
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_PONG;
		r.pong = &pong;
		for (r.id = req->id + 1000;; r.id += 7) {
			size_t n = pack_frame(&r, buf);
			if (!push(rfd, wfd, buf, n, end))
				break;
		}
	} else if (strcmp(b, "slow") == 0) {
		size_t n = vmf__agent__agent_reply__get_packed_size(reply) <= VMF_AGENT_MAX_FRAME ? pack_frame(reply, buf)
												     : 0;
		for (size_t i = 0; i < n && push(rfd, wfd, buf + i, 1, end); i++)
			for (int64_t t = now_ms() + SLOW_BYTE_MS; now_ms() < t && host_there(rfd, wfd, end);)
				poll(NULL, 0, 20);
		while (host_there(rfd, wfd, end))
			poll(NULL, 0, 50);
	} else {
		/* silent, or a behavior this build does not know: never a reply. */
		while (host_there(rfd, wfd, end))
			poll(NULL, 0, 50);
	}
	fprintf(stderr, "vmf-agent-hostile: %s on port %s over; exiting\n", b, port);
	return true;
}
