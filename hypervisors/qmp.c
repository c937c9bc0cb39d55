/* QMP transport: one JSON object per line over a unix stream.
 *
 * Calls are synchronous: at most one command of ours is in flight, so
 * replies are matched by the integer "id" we put on each command.  A command
 * that times out stays "abandoned" until its late reply shows up, so the
 * connection stays usable after a slow QEMU.  Anything that leaves the
 * stream in an unknown state (oversized or unparsable line, a reply we cannot
 * place, EOF, a half-sent command) marks the connection broken: every later
 * call fails at once with the first reason. */
#include "qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "sockaddr.h"

#define EVENT_QUEUE_MAX 64
#define ABANDONED_MAX 16
/* Characters of received content quoted in an error message. */
#define QUOTE_MAX 200
#define QUOTE_BUF (QUOTE_MAX + 40)
/* A line may end in "\r\n" (QEMU's own ending) on top of its content. */
#define LINE_BUF_MAX ((size_t)VMF_QMP_MAX_LINE + 2)
#define READ_CHUNK 65536
/* A buffer that grew for one large reply is given back past this size. */
#define BUF_KEEP (64u * 1024u)

struct vmf_qmp {
	int fd;
	bool broken;
	char broken_why[VMF_ERROR_MSG_MAX];
	char *buf;
	size_t len, cap;
	size_t scanned;               /* bytes of buf known to hold no '\n' */
	json_tokener *tok;
	json_object *events[EVENT_QUEUE_MAX]; /* ring, oldest at ev_head */
	unsigned ev_head, ev_count;
	unsigned long ev_dropped;
	int64_t next_id;
	int64_t abandoned[ABANDONED_MAX];
	unsigned n_abandoned;
	int major, minor, micro;
};

/* Printable excerpt of received bytes for error messages. */
static void
quote(const char *s, size_t n, char *out, size_t outn)
{
	size_t k = 0, i = 0;
	for (; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		if (c == '\n')
			strcpy(esc, "\\n");
		else if (c == '\r')
			strcpy(esc, "\\r");
		else if (c == '\t')
			strcpy(esc, "\\t");
		else if (c < 0x20 || c == 0x7f)
			snprintf(esc, sizeof(esc), "\\x%02x", c);
		else
			esc[0] = (char)c, esc[1] = '\0';
		size_t el = strlen(esc);
		if (k + el > QUOTE_MAX || k + el + 1 > outn)
			break;
		memcpy(out + k, esc, el);
		k += el;
	}
	out[k] = '\0';
	if (i < n)
		snprintf(out + k, outn - k, "... (%zu bytes)", n);
}

static void
quote_obj(json_object *o, char *out, size_t outn)
{
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	quote(s, strlen(s), out, outn);
}

/* Records why the stream can no longer be trusted; err must be set. */
static int
mark_broken(struct vmf_qmp *q, struct vmf_error *err)
{
	if (!q->broken) {
		q->broken = true;
		snprintf(q->broken_why, sizeof(q->broken_why), "%s", err->msg);
		log_debug("QMP connection unusable: %s", q->broken_why);
	}
	return err->code > 0 ? -err->code : -EIO;
}

static int
check_usable(struct vmf_qmp *q, struct vmf_error *err)
{
	if (q->broken)
		return vmf_err(err, EPIPE, "the QMP connection is unusable after an earlier error (%s)",
			       q->broken_why);
	return 0;
}

/* Waits until the socket is ready for events or the deadline passes (a
 * passed deadline still gets one non-blocking look). */
static int
wait_ready(struct vmf_qmp *q, short events, int64_t deadline, const char *what, struct vmf_error *err)
{
	for (;;) {
		struct pollfd p = { .fd = q->fd, .events = events };
		int r = poll(&p, 1, vmf_ms_left(deadline));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return vmf_err_sys(err, errno, "cannot poll the QMP socket");
		if (r > 0)
			return 0;
		if (vmf_ms_left(deadline) == 0)
			return vmf_err(err, ETIMEDOUT, "%s", what);
	}
}

/* Reads whatever is available into the buffer (at least one byte). */
static int
fill(struct vmf_qmp *q, int64_t deadline, const char *waiting_for, struct vmf_error *err)
{
	if (q->cap - q->len < READ_CHUNK / 4) {
		size_t cap = q->cap ? q->cap * 2 : 8192;
		if (cap < q->len + READ_CHUNK / 4)
			cap = q->len + READ_CHUNK;
		if (cap > LINE_BUF_MAX + 1)
			cap = LINE_BUF_MAX + 1;
		if (cap > q->cap) {
			char *nb = realloc(q->buf, cap);
			if (!nb)
				return vmf_err(err, ENOMEM, "out of memory for a QMP line of %zu bytes", cap);
			q->buf = nb;
			q->cap = cap;
		}
	}
	char what[160];
	snprintf(what, sizeof(what), "QEMU did not send %s in time", waiting_for);
	/* Without this a QEMU that never stops sending (an event storm) would
	 * keep the caller past its deadline; up to the deadline's own
	 * millisecond a read is still allowed, so that a zero timeout looks once. */
	if (deadline >= 0 && vmf_now_ms() > deadline)
		return vmf_err(err, ETIMEDOUT, "%s", what);
	for (;;) {
		int r = wait_ready(q, POLLIN, deadline, what, err);
		if (r < 0)
			return r;
		ssize_t n = read(q->fd, q->buf + q->len, q->cap - q->len);
		if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		/* QEMU exiting with our bytes unread resets instead of closing. */
		if (n == 0 || (n < 0 && errno == ECONNRESET)) {
			if (q->len == 0) {
				vmf_err(err, EPIPE, "QEMU closed the QMP connection while we waited for %s",
					waiting_for);
			} else {
				char shown[QUOTE_BUF];
				quote(q->buf, q->len, shown, sizeof(shown));
				vmf_err(err, EPIPE, "QEMU closed the QMP connection in the middle of a message "
					"(waiting for %s; received '%s')", waiting_for, shown);
			}
			return mark_broken(q, err);
		}
		if (n < 0) {
			vmf_err_sys(err, errno, "cannot read the QMP socket");
			return mark_broken(q, err);
		}
		q->len += (size_t)n;
		return 0;
	}
}

static void
consume(struct vmf_qmp *q, size_t n)
{
	memmove(q->buf, q->buf + n, q->len - n);
	q->len -= n;
	q->scanned = 0;
	if (q->cap > BUF_KEEP && q->len < BUF_KEEP / 2) {
		char *nb = realloc(q->buf, BUF_KEEP);
		if (nb) {
			q->buf = nb;
			q->cap = BUF_KEEP;
		}
	}
}

/* Parses line[0..n) (one line including its '\n'); *out is NULL for a
 * blank line. */
static int
parse_line(struct vmf_qmp *q, const char *line, size_t n, json_object **out, struct vmf_error *err)
{
	*out = NULL;
	size_t content = n;
	while (content > 0 && (line[content - 1] == '\n' || line[content - 1] == '\r' ||
			       line[content - 1] == ' ' || line[content - 1] == '\t'))
		content--;
	if (content == 0)
		return 0;
	char shown[QUOTE_BUF];
	if (memchr(line, '\0', content)) {
		quote(line, content, shown, sizeof(shown));
		vmf_err(err, EPROTO, "QEMU sent malformed JSON on QMP (a NUL byte): '%s'", shown);
		return mark_broken(q, err);
	}
	json_tokener_reset(q->tok);
	/* The '\n' goes to the tokener too, so that a bare number ends. */
	json_object *o = json_tokener_parse_ex(q->tok, line, (int)n);
	enum json_tokener_error jerr = json_tokener_get_error(q->tok);
	if (!o || jerr != json_tokener_success) {
		json_object_put(o);
		quote(line, content, shown, sizeof(shown));
		vmf_err(err, EPROTO, "QEMU sent malformed JSON on QMP (%s): '%s'",
			jerr == json_tokener_continue ? "incomplete document"
						      : json_tokener_error_desc(jerr), shown);
		return mark_broken(q, err);
	}
	size_t end = json_tokener_get_parse_end(q->tok);
	for (; end < n; end++) {
		if (line[end] != ' ' && line[end] != '\t' && line[end] != '\r' && line[end] != '\n')
			break;
	}
	if (end < n) {
		json_object_put(o);
		quote(line, content, shown, sizeof(shown));
		vmf_err(err, EPROTO, "QEMU sent more than one JSON document on a QMP line: '%s'", shown);
		return mark_broken(q, err);
	}
	if (!json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		quote(line, content, shown, sizeof(shown));
		vmf_err(err, EPROTO, "QEMU sent a QMP line that is not a JSON object: '%s'", shown);
		return mark_broken(q, err);
	}
	*out = o;
	return 0;
}

/* Next JSON object from QEMU. */
static int
read_msg(struct vmf_qmp *q, json_object **out, int64_t deadline, const char *waiting_for,
	 struct vmf_error *err)
{
	*out = NULL;
	size_t seen;
	const char *how;
	for (;;) {
		char *nl = q->len > q->scanned ? memchr(q->buf + q->scanned, '\n', q->len - q->scanned) : NULL;
		if (nl) {
			size_t n = (size_t)(nl - q->buf) + 1;
			size_t content = n - 1 - (n >= 2 && q->buf[n - 2] == '\r');
			if (content > VMF_QMP_MAX_LINE) {
				seen = content;
				how = "bytes";
				goto oversized;
			}
			int r = parse_line(q, q->buf, n, out, err);
			consume(q, n);
			if (r < 0)
				return r;
			if (*out) {
				if (vmf_log_get_level() <= VMF_LOG_DEBUG) {
					char shown[QUOTE_BUF];
					quote_obj(*out, shown, sizeof(shown));
					log_debug("QMP < %s", shown);
				}
				return 0;
			}
			continue;
		}
		q->scanned = q->len;
		if (q->len >= LINE_BUF_MAX) {
			seen = q->len;
			how = "bytes and no newline yet";
			goto oversized;
		}
		int r = fill(q, deadline, waiting_for, err);
		if (r < 0)
			return r;
	}
oversized:;
	char shown[QUOTE_BUF];
	quote(q->buf, 64, shown, sizeof(shown));
	vmf_err(err, EMSGSIZE, "QEMU sent a QMP line longer than the %u-byte limit (%zu %s, starting '%s')",
		VMF_QMP_MAX_LINE, seen, how, shown);
	return mark_broken(q, err);
}

static const char *
event_name(json_object *o)
{
	json_object *v;
	if (json_object_object_get_ex(o, "event", &v) && json_object_is_type(v, json_type_string))
		return json_object_get_string(v);
	return NULL;
}

static void
queue_event(struct vmf_qmp *q, json_object *ev)
{
	if (q->ev_count == EVENT_QUEUE_MAX) {
		json_object *old = q->events[q->ev_head];
		q->ev_dropped++;
		log_warn("QMP event queue full (%d events nobody waited for); dropping the oldest, %s "
			 "(%lu dropped so far)", EVENT_QUEUE_MAX, event_name(old), q->ev_dropped);
		json_object_put(old);
		q->ev_head = (q->ev_head + 1) % EVENT_QUEUE_MAX;
		q->ev_count--;
	}
	q->events[(q->ev_head + q->ev_count) % EVENT_QUEUE_MAX] = ev;
	q->ev_count++;
}

/* Removes and returns the oldest queued event named name, or NULL. */
static json_object *
dequeue_event(struct vmf_qmp *q, const char *name)
{
	for (unsigned i = 0; i < q->ev_count; i++) {
		json_object *ev = q->events[(q->ev_head + i) % EVENT_QUEUE_MAX];
		if (strcmp(event_name(ev), name) != 0)
			continue;
		/* Close the gap, keeping the others in arrival order. */
		for (unsigned j = i; j + 1 < q->ev_count; j++)
			q->events[(q->ev_head + j) % EVENT_QUEUE_MAX] =
				q->events[(q->ev_head + j + 1) % EVENT_QUEUE_MAX];
		q->ev_count--;
		return ev;
	}
	return NULL;
}

static bool
is_reply(json_object *o)
{
	return json_object_object_get_ex(o, "return", NULL) || json_object_object_get_ex(o, "error", NULL);
}

/* Drops the late reply to a timed-out command; false when id is not one. */
static bool
take_abandoned(struct vmf_qmp *q, json_object *id)
{
	if (!json_object_is_type(id, json_type_int))
		return false;
	int64_t v = json_object_get_int64(id);
	for (unsigned i = 0; i < q->n_abandoned; i++) {
		if (q->abandoned[i] != v)
			continue;
		q->abandoned[i] = q->abandoned[--q->n_abandoned];
		log_debug("QMP: dropping the late reply to timed-out command id %lld", (long long)v);
		return true;
	}
	return false;
}

/* Sorts one received object: events are queued (*mine stays NULL), late
 * replies dropped, the reply to our command id `want` (0: none pending)
 * returned in *mine; anything else breaks the connection. */
static int
dispatch(struct vmf_qmp *q, json_object *o, int64_t want, json_object **mine, struct vmf_error *err)
{
	char shown[QUOTE_BUF];
	*mine = NULL;
	if (json_object_object_get_ex(o, "event", NULL)) {
		if (!event_name(o)) {
			quote_obj(o, shown, sizeof(shown));
			json_object_put(o);
			vmf_err(err, EPROTO, "QEMU sent a QMP event without a name: '%s'", shown);
			return mark_broken(q, err);
		}
		queue_event(q, o);
		return 0;
	}
	if (!is_reply(o)) {
		quote_obj(o, shown, sizeof(shown));
		json_object_put(o);
		vmf_err(err, EPROTO, "QEMU sent a QMP message that is neither a reply nor an event: '%s'", shown);
		return mark_broken(q, err);
	}
	json_object *id = NULL;
	if (json_object_object_get_ex(o, "id", &id)) {
		if (want && json_object_is_type(id, json_type_int) && json_object_get_int64(id) == want) {
			*mine = o;
			return 0;
		}
		if (take_abandoned(q, id)) {
			json_object_put(o);
			return 0;
		}
	} else if (want && q->n_abandoned == 0) {
		/* QEMU leaves out the id only when it could not parse the command
		 * (so could not read the id); with one command in flight it is ours. */
		*mine = o;
		return 0;
	}
	bool had_id = id != NULL;
	quote_obj(o, shown, sizeof(shown));
	json_object_put(o);
	if (!had_id && want)
		vmf_err(err, EPROTO, "QEMU sent a QMP reply without an id while %u commands await replies: '%s'",
			q->n_abandoned + 1, shown);
	else
		vmf_err(err, EPROTO, "QEMU sent a QMP reply to nothing we asked: '%s'", shown);
	return mark_broken(q, err);
}

/* Sends all of line, with pass_fd (if >= 0) on its first byte. */
static int
send_line(struct vmf_qmp *q, const char *cmd, const char *line, size_t n, int pass_fd,
	  int64_t deadline, struct vmf_error *err)
{
	size_t off = 0;
	int r;
	char what[160];
	snprintf(what, sizeof(what), "QEMU did not take the %s command in time (QMP socket full)", cmd);
	while (off < n) {
		r = wait_ready(q, POLLOUT, deadline, what, err);
		if (r < 0)
			goto fail;
		struct iovec iov = { .iov_base = (char *)line + off, .iov_len = n - off };
		union {
			char buf[CMSG_SPACE(sizeof(int))];
			struct cmsghdr align;
		} cmsg;
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		if (pass_fd >= 0 && off == 0) {
			memset(&cmsg, 0, sizeof(cmsg));
			m.msg_control = cmsg.buf;
			m.msg_controllen = sizeof(cmsg.buf);
			struct cmsghdr *c = CMSG_FIRSTHDR(&m);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
		}
		ssize_t w = sendmsg(q->fd, &m, MSG_NOSIGNAL);
		if (w < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) {
			vmf_err(err, EPIPE, "QEMU closed the QMP connection before taking the %s command", cmd);
			return mark_broken(q, err);
		}
		if (w < 0) {
			r = vmf_err_sys(err, errno, "cannot send the %s command on QMP", cmd);
			goto fail;
		}
		off += (size_t)w;
	}
	return 0;
fail:
	/* Nothing sent: the stream is intact and the caller may retry. */
	if (off == 0)
		return r;
	vmf_error_append(err, " after %zu of %zu bytes", off, n);
	return mark_broken(q, err);
}

static int
command_reply(const char *cmd, json_object *reply, json_object **ret, struct vmf_error *err)
{
	json_object *v;
	int r;
	if (json_object_object_get_ex(reply, "error", &v)) {
		json_object *cls = NULL, *desc = NULL;
		if (json_object_is_type(v, json_type_object)) {
			json_object_object_get_ex(v, "class", &cls);
			json_object_object_get_ex(v, "desc", &desc);
		}
		if (cls && desc) {
			r = vmf_err(err, EIO, "QEMU refused %s: %s: %s", cmd, json_object_get_string(cls),
				    json_object_get_string(desc));
		} else {
			char shown[QUOTE_BUF];
			quote_obj(v, shown, sizeof(shown));
			r = vmf_err(err, EIO, "QEMU refused %s: %s", cmd, shown);
		}
		json_object_put(reply);
		return r;
	}
	json_object_object_get_ex(reply, "return", &v);
	if (ret)
		*ret = json_object_get(v);
	json_object_put(reply);
	return 0;
}

int
vmf_qmp_command(struct vmf_qmp *q, const char *cmd, json_object *args, int pass_fd, json_object **ret,
		int timeout_ms, struct vmf_error *err)
{
	struct vmf_error local;
	if (!err)
		err = &local; /* the code still decides what happens to the stream */
	if (ret)
		*ret = NULL;
	int r = check_usable(q, err);
	if (r < 0)
		return r;
	if (args && !json_object_is_type(args, json_type_object))
		return vmf_err(err, EINVAL, "QMP arguments of %s must be a JSON object", cmd);
	int64_t deadline = vmf_deadline_after(timeout_ms);
	int64_t id = ++q->next_id;
	json_object *c = json_object_new_object();
	if (!c)
		return vmf_err(err, ENOMEM, "out of memory for the QMP command %s", cmd);
	json_object_object_add(c, "execute", json_object_new_string(cmd));
	if (args)
		json_object_object_add(c, "arguments", json_object_get(args));
	json_object_object_add(c, "id", json_object_new_int64(id));
	size_t n = 0;
	const char *s = json_object_to_json_string_length(c, JSON_C_TO_STRING_PLAIN, &n);
	char *line = s ? malloc(n + 2) : NULL;
	if (line) {
		memcpy(line, s, n);
		log_debug("QMP > %.*s%s", (int)(n > 300 ? 300 : n), line, n > 300 ? "..." : "");
		line[n++] = '\n';
		line[n] = '\0';
	}
	json_object_put(c);
	if (!line)
		return vmf_err(err, ENOMEM, "out of memory for the QMP command %s", cmd);
	r = send_line(q, cmd, line, n, pass_fd, deadline, err);
	free(line);
	if (r < 0)
		return r;

	char waiting_for[128];
	snprintf(waiting_for, sizeof(waiting_for), "the reply to %s", cmd);
	for (;;) {
		json_object *o, *mine;
		r = read_msg(q, &o, deadline, waiting_for, err);
		if (r == -ETIMEDOUT && !q->broken) {
			if (q->n_abandoned == ABANDONED_MAX) {
				vmf_err(err, ETIMEDOUT, "QEMU did not answer %s within %d ms, and %d earlier "
					"commands are still unanswered", cmd, timeout_ms, ABANDONED_MAX);
				return mark_broken(q, err);
			}
			q->abandoned[q->n_abandoned++] = id;
			return vmf_err(err, ETIMEDOUT, "QEMU did not answer %s within %d ms", cmd, timeout_ms);
		}
		if (r < 0)
			return r;
		r = dispatch(q, o, id, &mine, err);
		if (r < 0)
			return r;
		if (mine)
			return command_reply(cmd, mine, ret, err);
	}
}

int
vmf_qmp_wait_event(struct vmf_qmp *q, const char *event, json_object **data, int timeout_ms,
		   struct vmf_error *err)
{
	struct vmf_error local;
	if (!err)
		err = &local;
	if (data)
		*data = NULL;
	int64_t deadline = vmf_deadline_after(timeout_ms);
	char waiting_for[128];
	snprintf(waiting_for, sizeof(waiting_for), "the %s event", event);
	for (;;) {
		json_object *ev = dequeue_event(q, event);
		if (ev) {
			json_object *d;
			if (data && json_object_object_get_ex(ev, "data", &d))
				*data = json_object_get(d);
			json_object_put(ev);
			return 0;
		}
		int r = check_usable(q, err);
		if (r < 0)
			return r;
		json_object *o, *mine;
		r = read_msg(q, &o, deadline, waiting_for, err);
		if (r == -ETIMEDOUT && !q->broken)
			return vmf_err(err, ETIMEDOUT, "QEMU did not send the %s event within %d ms", event,
				       timeout_ms);
		if (r < 0)
			return r;
		r = dispatch(q, o, 0, &mine, err);
		if (r < 0)
			return r;
	}
}

int
vmf_qmp_poll_events(struct vmf_qmp *q, unsigned max, int timeout_ms)
{
	int n = 0;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	for (unsigned i = 0; i < max && !q->broken; i++) {
		struct vmf_error err;
		json_object *o, *mine;
		/* Whatever is buffered, then one look (or a wait of timeout_ms). */
		if (read_msg(q, &o, deadline, "events", &err) < 0)
			break;
		bool ev = json_object_object_get_ex(o, "event", NULL);
		if (dispatch(q, o, 0, &mine, &err) < 0)
			break;
		n += ev;
	}
	return n;
}

int
vmf_qmp_fd(const struct vmf_qmp *q)
{
	return q->fd;
}

bool
vmf_qmp_usable(const struct vmf_qmp *q)
{
	return !q->broken;
}

static int
read_greeting(struct vmf_qmp *q, int64_t deadline, struct vmf_error *err)
{
	json_object *g, *qmp, *ver, *qemu, *x;
	int r = read_msg(q, &g, deadline, "the QMP greeting", err);
	if (r < 0)
		return r;
	if (!json_object_object_get_ex(g, "QMP", &qmp) || !json_object_is_type(qmp, json_type_object)) {
		char shown[QUOTE_BUF];
		quote_obj(g, shown, sizeof(shown));
		json_object_put(g);
		vmf_err(err, EPROTO, "expected QEMU's QMP greeting, received '%s'", shown);
		return mark_broken(q, err);
	}
	if (json_object_object_get_ex(qmp, "version", &ver) && json_object_object_get_ex(ver, "qemu", &qemu) &&
	    json_object_object_get_ex(qemu, "major", &x)) {
		q->major = json_object_get_int(x);
		if (json_object_object_get_ex(qemu, "minor", &x))
			q->minor = json_object_get_int(x);
		if (json_object_object_get_ex(qemu, "micro", &x))
			q->micro = json_object_get_int(x);
		log_debug("QMP greeting from QEMU %d.%d.%d", q->major, q->minor, q->micro);
	} else {
		/* Only informational: a peer that speaks QMP is usable without it. */
		char shown[QUOTE_BUF];
		quote_obj(g, shown, sizeof(shown));
		log_warn("QMP greeting without a QEMU version: %s", shown);
	}
	json_object_put(g);
	return 0;
}

/* Takes ownership of fd, also on failure. */
int
vmf_qmp_open_fd(int fd, int timeout_ms, struct vmf_qmp **out, struct vmf_error *err)
{
	struct vmf_error local;
	if (!err)
		err = &local;
	*out = NULL;
	int64_t deadline = vmf_deadline_after(timeout_ms);
	struct vmf_qmp *q = calloc(1, sizeof(*q));
	if (!q) {
		close(fd);
		return vmf_err(err, ENOMEM, "out of memory for a QMP connection");
	}
	q->fd = fd;
	q->tok = json_tokener_new();
	if (!q->tok) {
		vmf_qmp_close(q);
		return vmf_err(err, ENOMEM, "out of memory for a QMP connection");
	}
	/* Non-blocking, so that a stalled QEMU cannot hold a write past the
	 * deadline. */
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		int r = vmf_err_sys(err, errno, "cannot make the QMP socket non-blocking");
		vmf_qmp_close(q);
		return r;
	}
	int r = read_greeting(q, deadline, err);
	if (r == 0)
		r = vmf_qmp_command(q, "qmp_capabilities", NULL, -1, NULL, vmf_ms_left(deadline), err);
	if (r < 0) {
		vmf_qmp_close(q);
		return vmf_error_prefix(err, "QMP handshake");
	}
	*out = q;
	return 0;
}

void
vmf_qmp_version(const struct vmf_qmp *q, int *major, int *minor, int *micro)
{
	*major = q->major;
	*minor = q->minor;
	*micro = q->micro;
}

void
vmf_qmp_close(struct vmf_qmp *q)
{
	if (!q)
		return;
	if (q->fd >= 0)
		close(q->fd);
	for (unsigned i = 0; i < q->ev_count; i++)
		json_object_put(q->events[(q->ev_head + i) % EVENT_QUEUE_MAX]);
	if (q->tok)
		json_tokener_free(q->tok);
	free(q->buf);
	free(q);
}
