/* Host connections: the frames a host sends parsed into requests, the
 * replies queued and written without blocking, and what the end of a
 * connection means for each kind. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"
#ifdef VMF_AGENT_HOSTILE
/* A test build only (tests/meson.build): never in the guest image. */
#include "hostile_agent.h"
#endif

/* The sanitizer stage's agent (contrib/agent/meson.build) never exits in a
 * guest, so LeakSanitizer's check at exit would never come; it checks
 * whenever a host leaves instead, reporting on stderr (the guest's
 * console, which the tests read) and going on. */
#ifdef VMF_AGENT_LEAK_CHECK
#include <sanitizer/lsan_interface.h>
#define leak_check() __lsan_do_recoverable_leak_check()
#else
#define leak_check() ((void)0)
#endif

struct conn *conns;

size_t
conn_queued(const struct conn *c)
{
	return c->olen - c->ooff;
}

bool
conn_accepts_output(const struct conn *c)
{
	return !c->away && !c->closed && conn_queued(c) < OUTQ_HIGH;
}

bool
conn_reply_pending(const void *which)
{
	for (struct conn *c = conns; c; c = c->next)
		if (c == which)
			return !c->closed && !c->away && conn_queued(c) > 0;
	return false;
}

static void
conn_reset(struct conn *c)
{
	exec_conn_gone(c);
	files_watch_conn_gone(c);
	free(c->body);
	c->body = NULL;
	c->hdr_len = 0;
	c->body_want = c->body_len = 0;
	c->discard = 0;
	c->olen = c->ooff = 0;
	c->osent = false;
	c->ilen = c->ioff = 0;
}

struct conn *
conn_add(enum conn_kind kind, int rfd, int wfd, const char *name)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (c)
		c->obuf = malloc(OUTQ_SIZE);
	if (!c || !c->obuf) {
		free(c);
		logmsg("out of memory for a connection");
		return NULL;
	}
	c->kind = kind;
	c->rfd = rfd;
	c->wfd = wfd;
	c->name = name;
	c->next = conns;
	conns = c;
	return c;
}

void
conn_free(struct conn *c)
{
	conn_reset(c);
	for (struct conn **pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	if (c->rfd >= 0)
		close(c->rfd);
	if (c->wfd >= 0 && c->wfd != c->rfd)
		close(c->wfd);
	free(c->obuf);
	free(c);
}

/* A reply too large for a frame is replaced by an error with its id. */
void
conn_queue_reply(struct conn *c, Vmf__Agent__AgentReply *r)
{
	size_t n = vmf__agent__agent_reply__get_packed_size(r);
	Vmf__Agent__AgentReply too_large = VMF__AGENT__AGENT_REPLY__INIT;
	char msg[80];
	if (n > VMF_AGENT_MAX_FRAME) {
		snprintf(msg, sizeof(msg), "reply of %zu bytes exceeds the frame limit", n);
		too_large.id = r->id;
		too_large.error_code = EMSGSIZE;
		too_large.error_message = msg;
		r = &too_large;
		n = vmf__agent__agent_reply__get_packed_size(r);
	}
	if (c->away || c->closed)
		return;
	if (c->olen + VMF_FRAME_HDR + n > OUTQ_SIZE && c->ooff > 0) {
		memmove(c->obuf, c->obuf + c->ooff, c->olen - c->ooff);
		c->olen -= c->ooff;
		c->ooff = 0;
	}
	if (c->olen + VMF_FRAME_HDR + n > OUTQ_SIZE) {
		logmsg("reply to request %llu dropped: the reply queue is full", (unsigned long long)r->id);
		return;
	}
	vmf_frame_put_len(c->obuf + c->olen, (uint32_t)n);
	vmf__agent__agent_reply__pack(r, c->obuf + c->olen + VMF_FRAME_HDR);
	c->olen += VMF_FRAME_HDR + n;
}

static void frame_error(struct conn *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* An error about a frame itself, before it had a request id. */
static void
frame_error(struct conn *c, int code, const char *fmt, ...)
{
	char msg[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
	r.error_code = code;
	r.error_message = msg;
	conn_queue_reply(c, &r);
}

/* A whole frame is in: its request run and answered. */
static void
frame_complete(struct conn *c)
{
	Vmf__Agent__AgentRequest *req = vmf__agent__agent_request__unpack(NULL, c->body_len, c->body);
	if (!req) {
		frame_error(c, EBADMSG, "request frame of %u bytes is not a valid agent request", c->body_len);
	} else {
		struct agent_call call = { .conn = c, .req = req, .reply = VMF__AGENT__AGENT_REPLY__INIT };
#ifdef VMF_AGENT_HOSTILE
		const char *hostile = vmf_hostile_behavior(c->name, req);
#endif
		dispatch_request(&call);
		if (!call.no_reply) {
#ifdef VMF_AGENT_HOSTILE
			if (hostile && vmf_hostile_act(hostile, c->name, c->rfd, c->wfd, req, &call.reply))
				exit(3);
#endif
			conn_queue_reply(c, &call.reply);
		}
		reply_body_free(&call);
		vmf__agent__agent_request__free_unpacked(req, NULL);
	}
	free(c->body);
	c->body = NULL;
	c->hdr_len = 0;
	c->body_len = c->body_want = 0;
}

size_t
conn_parse_input(struct conn *c, const uint8_t *p, size_t n)
{
	size_t used = 0;
	while (used < n && conn_accepts_output(c)) {
		if (c->discard) {
			size_t k = n - used < c->discard ? n - used : c->discard;
			c->discard -= (uint32_t)k;
			used += k;
			continue;
		}
		if (!c->body) {
			c->hdr[c->hdr_len++] = p[used++];
			if (c->hdr_len < VMF_FRAME_HDR)
				continue;
			uint32_t len = vmf_frame_get_len(c->hdr);
			c->hdr_len = 0;
			if (len > VMF_AGENT_MAX_FRAME) {
				frame_error(c, EMSGSIZE, "frame of %u bytes exceeds the limit of %u bytes", len,
					    VMF_AGENT_MAX_FRAME);
				/* Skip its payload as it streams in, without
				 * allocating; a reconnect also ends it. */
				c->discard = len;
				continue;
			}
			c->body = malloc(len ? len : 1);
			if (!c->body) {
				frame_error(c, ENOMEM, "out of memory for a %u byte request", len);
				c->discard = len;
				continue;
			}
			c->body_want = len;
			c->body_len = 0;
			if (len == 0)
				frame_complete(c);
			continue;
		}
		size_t k = c->body_want - c->body_len;
		if (k > n - used)
			k = n - used;
		memcpy(c->body + c->body_len, p + used, k);
		c->body_len += (uint32_t)k;
		used += k;
		if (c->body_len == c->body_want)
			frame_complete(c);
	}
	return used;
}

int
conn_write_queued(struct conn *c)
{
	while (c->ooff < c->olen) {
		ssize_t w = c->kind == CONN_ACCEPTED
				    ? send(c->wfd, c->obuf + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL)
				    : write(c->wfd, c->obuf + c->ooff, c->olen - c->ooff);
		if (w > 0) {
			c->ooff += (size_t)w;
			c->osent = true;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			return 0;
		return -1;
	}
	c->olen = c->ooff = 0;
	c->osent = false;
	return 0;
}

/* A port's end is only what the guest kernel believes now, and it learns
 * of a new host connection late: virtio_console reads a host's bytes in
 * the virtqueue interrupt but its VIRTIO_CONSOLE_PORT_OPEN in a
 * workqueue, so a new host's first request can be read and answered
 * while the port still says the host is away (writes EAGAIN, reads 0).
 * Dropping that answer here left the host waiting for good (a few
 * connections in a hundred under TCG).  So a port keeps its replies when
 * none of their bytes went out: they reach that host once the port opens
 * (SIGIO), or, when the host did leave, the next one, which skips replies
 * that are not its own by id (a client's ExecReset answer, the daemon's
 * Ping).  Replies a host got part of are dropped with it, so the next
 * host starts at a frame. */
bool
conn_ended(struct conn *c)
{
	size_t keep = c->kind == CONN_PORT && !c->osent ? c->olen : 0;
	conn_reset(c);
	leak_check();
	c->olen = keep;
	if (c->kind == CONN_PORT)
		c->away = true;
	else
		c->closed = true;
	return c->kind == CONN_STREAM;
}
