#include "agentconn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frame.h"
#include "pbtext.h"
#include "text.h"

/* Two frames: after moving the part of a frame left at the end to the
 * front, a read always has room for at least one more whole frame. */
#define RBUF_CAP (2 * (VMF_FRAME_HDR + (size_t)VMF_AGENT_MAX_FRAME))
#define WQ_FIRST 4096u
#define POLL_MAX_MS 60000

struct vmf_agent_conn {
	int fd;
	bool not_sock;                /* a pipe or FIFO (tests): write, not send */
	int broken;                   /* errno of what ended it; 0 while usable */
	char broken_msg[VMF_ERROR_MSG_MAX];
	char what[128];
	uint64_t first_id, next_id;   /* ids sent: (first_id, next_id] */
	uint64_t unanswered;          /* of those, how many have no reply yet (at most) */
	unsigned strays;
	uint8_t *rbuf;
	size_t roff, rlen;
	size_t last_frame;
	uint8_t *wbuf;
	size_t wcap, woff, wlen;
	vmf_agent_event_fn on_event;
	void *event_arg;
	char last_error[300];
};

/* Ids start at a random point: replies left over from before a template
 * save (sent to another connection, maybe another host) then never match
 * an id of this one.  0 is what the agent uses when it cannot tell which
 * request a reply is for. */
static uint64_t
random_id_base(void)
{
	uint64_t v = 0;
	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = ((uint64_t)getpid() << 40) ^ ((uint64_t)vmf_now_ms() << 8);
	/* Room for 2^62 requests before wrapping towards 0. */
	return (v >> 2) | 1;
}

struct vmf_agent_conn *
vmf_agent_conn_new(int fd, const char *what)
{
	if (fd < 0)
		return NULL;
	struct vmf_agent_conn *c = calloc(1, sizeof(*c));
	uint8_t *rbuf = malloc(RBUF_CAP);
	if (!c || !rbuf) {
		free(c);
		free(rbuf);
		close(fd);
		return NULL;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	c->fd = fd;
	c->rbuf = rbuf;
	c->first_id = c->next_id = random_id_base();
	snprintf(c->what, sizeof(c->what), "%s", what && *what ? what : "the guest agent");
	return c;
}

void
vmf_agent_conn_free(struct vmf_agent_conn *c)
{
	if (!c)
		return;
	close(c->fd);
	free(c->rbuf);
	free(c->wbuf);
	free(c);
}

int
vmf_agent_conn_fd(const struct vmf_agent_conn *c)
{
	return c->fd;
}

const char *
vmf_agent_conn_what(const struct vmf_agent_conn *c)
{
	return c->what;
}

void
vmf_agent_conn_set_events(struct vmf_agent_conn *c, vmf_agent_event_fn fn, void *arg)
{
	c->on_event = fn;
	c->event_arg = arg;
}

const char *
vmf_agent_conn_last_error(const struct vmf_agent_conn *c)
{
	return c->last_error;
}

void
vmf_agent_conn_clear_last_error(struct vmf_agent_conn *c)
{
	c->last_error[0] = '\0';
}

size_t
vmf_agent_conn_last_frame_size(const struct vmf_agent_conn *c)
{
	return c->last_frame;
}

int
vmf_agent_conn_fail(struct vmf_agent_conn *c, struct vmf_error *err)
{
	int code = err && err->code > 0 ? err->code : EIO;
	if (!c->broken) {
		c->broken = code;
		snprintf(c->broken_msg, sizeof(c->broken_msg), "%s", err ? err->msg : "the connection failed");
		/* The guest sees the end now, not when the owner frees it. */
		shutdown(c->fd, SHUT_RDWR);
	}
	return -code;
}

static int
broken(struct vmf_agent_conn *c, struct vmf_error *err)
{
	return vmf_err(err, c->broken, "%s", c->broken_msg);
}

static int
fail(struct vmf_agent_conn *c, struct vmf_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int
fail(struct vmf_agent_conn *c, struct vmf_error *err, int code, const char *fmt, ...)
{
	struct vmf_error e = { .code = code };
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
	va_end(ap);
	vmf_agent_conn_fail(c, &e);
	if (err)
		*err = e;
	return -code;
}

/* ---- writing ---- */

int
vmf_agent_conn_queue(struct vmf_agent_conn *c, Vmf__Agent__AgentRequest *req, struct vmf_error *err)
{
	if (c->broken)
		return broken(c, err);
	req->protocol_version = AGENT_PROTOCOL_VERSION;
	req->id = c->next_id + 1;
	size_t n = vmf__agent__agent_request__get_packed_size(req);
	if (n > VMF_AGENT_MAX_FRAME)
		return vmf_err(err, EMSGSIZE, "a request of %zu bytes for %s exceeds the %u byte frame limit", n, c->what,
			       VMF_AGENT_MAX_FRAME);
	size_t need = VMF_FRAME_HDR + n;
	if (c->wlen - c->woff + need > VMF_AGENT_WQ_MAX)
		return vmf_err(err, ENOBUFS, "%s does not read what is sent to it: %zu bytes are queued already",
			       c->what, c->wlen - c->woff);
	if (c->wlen + need > c->wcap && c->woff > 0) {
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		c->wlen -= c->woff;
		c->woff = 0;
	}
	if (c->wlen + need > c->wcap) {
		size_t cap = c->wcap ? c->wcap : WQ_FIRST;
		while (cap < c->wlen + need)
			cap *= 2;
		uint8_t *b = realloc(c->wbuf, cap);
		if (!b)
			return vmf_err(err, ENOMEM, "out of memory for a request to %s", c->what);
		c->wbuf = b;
		c->wcap = cap;
	}
	vmf_frame_put_len(c->wbuf + c->wlen, (uint32_t)n);
	vmf__agent__agent_request__pack(req, c->wbuf + c->wlen + VMF_FRAME_HDR);
	c->wlen += need;
	c->next_id = req->id;
	c->unanswered++;
	return 0;
}

static ssize_t
write_some(struct vmf_agent_conn *c, const uint8_t *p, size_t n)
{
	if (!c->not_sock) {
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
		if (w >= 0 || errno != ENOTSOCK)
			return w;
		c->not_sock = true;
	}
	return write(c->fd, p, n);
}

/* What can be written now; 0 all, 1 some left (EAGAIN). */
static int
write_now(struct vmf_agent_conn *c, struct vmf_error *err)
{
	while (c->woff < c->wlen) {
		ssize_t w = write_some(c, c->wbuf + c->woff, c->wlen - c->woff);
		if (w > 0) {
			c->woff += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 1;
		if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
			return fail(c, err, EPIPE, "%s closed the connection", c->what);
		return fail(c, err, w < 0 ? errno : EIO, "writing to %s: %s", c->what,
			    strerror(w < 0 ? errno : EIO));
	}
	c->woff = c->wlen = 0;
	return 0;
}

static int
poll_ms(int64_t deadline)
{
	if (deadline < 0)
		return POLL_MAX_MS;
	int64_t left = deadline - vmf_now_ms();
	return left <= 0 ? 0 : left > POLL_MAX_MS ? POLL_MAX_MS : (int)left;
}

int
vmf_agent_conn_flush(struct vmf_agent_conn *c, int64_t deadline, struct vmf_error *err)
{
	if (c->broken)
		return broken(c, err);
	for (;;) {
		int r = write_now(c, err);
		if (r <= 0)
			return r;
		if (deadline >= 0 && vmf_now_ms() >= deadline)
			return 1;
		struct pollfd p = { .fd = c->fd, .events = POLLOUT };
		if (poll(&p, 1, poll_ms(deadline)) < 0 && errno != EINTR)
			return fail(c, err, errno, "poll on the connection to %s: %s", c->what, strerror(errno));
	}
}

int
vmf_agent_conn_send(struct vmf_agent_conn *c, Vmf__Agent__AgentRequest *req, int64_t deadline,
		    struct vmf_error *err)
{
	int r = vmf_agent_conn_queue(c, req, err);
	if (r < 0)
		return r;
	r = vmf_agent_conn_flush(c, deadline, err);
	if (r > 0)
		return vmf_err(err, ETIMEDOUT, "timed out sending to %s", c->what);
	return r;
}

/* ---- reading ---- */

int
vmf_agent_conn_recv(struct vmf_agent_conn *c, Vmf__Agent__AgentReply **out, int64_t deadline,
		    struct vmf_error *err)
{
	*out = NULL;
	if (c->broken)
		return broken(c, err);
	bool tried = false;
	for (;;) {
		size_t avail = c->rlen - c->roff;
		size_t need = VMF_FRAME_HDR;
		if (avail >= VMF_FRAME_HDR) {
			uint32_t n = vmf_frame_get_len(c->rbuf + c->roff);
			if (n > VMF_AGENT_MAX_FRAME)
				return fail(c, err, EPROTO,
					    "%s sent a frame of %u bytes, above the protocol's limit of %u: the "
					    "connection is closed", c->what, n, VMF_AGENT_MAX_FRAME);
			need += n;
			if (avail >= need) {
				Vmf__Agent__AgentReply *rep =
					vmf__agent__agent_reply__unpack(NULL, n, c->rbuf + c->roff + VMF_FRAME_HDR);
				c->roff += need;
				if (c->roff == c->rlen)
					c->roff = c->rlen = 0;
				c->last_frame = need;
				if (rep)
					vmf_pb_fix_utf8(&rep->base);
				*out = rep;
				return 1;
			}
		}
		if (c->roff == c->rlen) {
			c->roff = c->rlen = 0;
		} else if (c->roff + need > RBUF_CAP) {
			/* At most one partial frame moves, and the read after it
			 * has room for a whole frame: each byte moves once. */
			memmove(c->rbuf, c->rbuf + c->roff, avail);
			c->roff = 0;
			c->rlen = avail;
		}
		if (c->woff < c->wlen && write_now(c, err) < 0)
			return -c->broken;
		/* Before every read but the first: a guest that keeps sending
		 * cannot hold the call past its deadline. */
		if (tried && deadline >= 0 && vmf_now_ms() >= deadline)
			return 0;
		tried = true;
		ssize_t r = read(c->fd, c->rbuf + c->rlen, RBUF_CAP - c->rlen);
		if (r > 0) {
			c->rlen += (size_t)r;
			continue;
		}
		if (r == 0)
			return fail(c, err, EPIPE, "%s closed the connection", c->what);
		if (errno == EINTR)
			continue;
		if (errno == ECONNRESET)
			return fail(c, err, EPIPE, "%s closed the connection", c->what);
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return fail(c, err, errno, "reading from %s: %s", c->what, strerror(errno));
		if (deadline >= 0 && vmf_now_ms() >= deadline)
			return 0;
		struct pollfd p = { .fd = c->fd, .events = (short)(POLLIN | (c->woff < c->wlen ? POLLOUT : 0)) };
		if (poll(&p, 1, poll_ms(deadline)) < 0 && errno != EINTR)
			return fail(c, err, errno, "poll on the connection to %s: %s", c->what, strerror(errno));
	}
}

void
vmf_agent_conn_begin(struct vmf_agent_conn *c)
{
	c->strays = 0;
}

bool
vmf_agent_conn_claim(struct vmf_agent_conn *c, uint64_t id)
{
	/* (first_id, next_id], wrapping as unsigned arithmetic does. */
	if (id - c->first_id - 1 >= c->next_id - c->first_id || !c->unanswered)
		return false;
	c->unanswered--;
	return true;
}

static void
note_orphan(struct vmf_agent_conn *c, const Vmf__Agent__AgentReply *rep)
{
	if (rep->id != 0 || !rep->error_code)
		return;
	char msg[220];
	vmf_escape(rep->error_message, msg, sizeof(msg), 0);
	snprintf(c->last_error, sizeof(c->last_error), "%s (errno %d)", msg, rep->error_code);
}

int
vmf_agent_conn_other(struct vmf_agent_conn *c, Vmf__Agent__AgentReply *rep, struct vmf_error *err)
{
	if (rep && c->on_event) {
		int r = c->on_event(c->event_arg, rep, err);
		if (r < 0) {
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
			return vmf_agent_conn_fail(c, err);
		}
		if (r > 0)
			return 0;
	}
	if (rep && rep->id != 0 && vmf_agent_conn_claim(c, rep->id)) {
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		return 0;
	}
	if (rep) {
		note_orphan(c, rep);
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
	}
	if (++c->strays < VMF_AGENT_STRAY_MAX)
		return 0;
	return fail(c, err, EPROTO, "%s sent %u frames that answer nothing asked of it (a flooding or broken "
		    "agent): the connection is closed", c->what, c->strays);
}

static int
timed_out(struct vmf_agent_conn *c, struct vmf_error *err)
{
	vmf_err(err, ETIMEDOUT, "timed out waiting for %s", c->what);
	if (c->last_error[0])
		vmf_error_append(err, "; earlier it reported: %s", c->last_error);
	return -ETIMEDOUT;
}

int
vmf_agent_conn_wait(struct vmf_agent_conn *c, uint64_t id, Vmf__Agent__AgentReply **out, int64_t deadline,
		    struct vmf_error *err)
{
	*out = NULL;
	vmf_agent_conn_begin(c);
	for (;;) {
		Vmf__Agent__AgentReply *rep;
		int r = vmf_agent_conn_recv(c, &rep, deadline, err);
		if (r < 0)
			return r;
		if (r == 0)
			return timed_out(c, err);
		if (rep && rep->id == id) {
			if (c->unanswered)
				c->unanswered--;
			*out = rep;
			return 0;
		}
		if ((r = vmf_agent_conn_other(c, rep, err)) < 0)
			return r;
		if (deadline >= 0 && vmf_now_ms() >= deadline)
			return timed_out(c, err);
	}
}

int
vmf_agent_reply_check(const struct vmf_agent_conn *c, const Vmf__Agent__AgentReply *rep,
		      Vmf__Agent__AgentReply__BodyCase want, const char *prefix, struct vmf_error *err)
{
	if (rep->error_code) {
		char msg[600];
		vmf_escape(rep->error_message && *rep->error_message ? rep->error_message : "an error without a message",
			   msg, sizeof(msg), 0);
		/* An errno, or the guest is making one up. */
		int code = rep->error_code > 0 && rep->error_code < 4096 ? rep->error_code : EPROTO;
		return vmf_err(err, code, "%s%s", prefix ? prefix : "", msg);
	}
	if (want != VMF__AGENT__AGENT_REPLY__BODY__NOT_SET && rep->body_case != want)
		return vmf_err(err, EPROTO, "%s answered with message type %d, expected %d", c->what,
			       (int)rep->body_case, (int)want);
	return 0;
}

/* ---- reconnecting ---- */

int
vmf_agent_conn_retry(vmf_agent_attempt_fn attempt, void *arg, int first_ms, int64_t deadline,
		     void (*waiting)(void *), void *warg, void **out, struct vmf_error *err)
{
	*out = NULL;
	int attempt_ms = first_ms > 0 ? first_ms : 1000;
	for (;;) {
		int64_t until = vmf_now_ms() + attempt_ms;
		bool last = deadline >= 0 && until >= deadline;
		int r = attempt(arg, last ? deadline : until, out, err);
		if (r != -ETIMEDOUT || last)
			return r;
		if (waiting)
			waiting(warg);
		waiting = NULL;
		attempt_ms = attempt_ms * 2 > VMF_AGENT_ATTEMPT_MAX_MS ? VMF_AGENT_ATTEMPT_MAX_MS : attempt_ms * 2;
	}
}
