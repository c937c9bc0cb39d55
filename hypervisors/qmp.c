/* QMP transport: one JSON object per line over a unix stream. */
#include "qmp.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"

#define EVENT_QUEUE_MAX 64
#define QUOTE_MAX 200

struct vmf_qmp {
	int fd;
	bool broken;
	char *buf;            /* bytes read but not yet consumed */
	size_t len, cap;
	json_object *events[EVENT_QUEUE_MAX];
	unsigned nevents;
	uint64_t next_id;
	int major, minor, micro;
};

static void
quote(const char *s, size_t n, char *out, size_t outn)
{
	size_t k = 0;
	for (size_t i = 0; i < n && k + 4 < outn; i++)
		out[k++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	if (n > outn - 4 && k + 3 < outn)
		out[k++] = '.', out[k++] = '.', out[k++] = '.';
	out[k] = '\0';
}

static int
broken(struct vmf_qmp *q, struct vmf_error *err, int code, const char *fmt, const char *detail)
{
	q->broken = true;
	return vmf_err(err, code, fmt, detail);
}

/* Reads until a full line is buffered; returns its parsed object. */
static int
read_line(struct vmf_qmp *q, json_object **out, int64_t deadline, struct vmf_error *err)
{
	*out = NULL;
	for (;;) {
		char *nl = q->len ? memchr(q->buf, '\n', q->len) : NULL;
		if (nl) {
			size_t n = (size_t)(nl - q->buf);
			json_tokener *tok = json_tokener_new();
			json_object *o = tok ? json_tokener_parse_ex(tok, q->buf, (int)n) : NULL;
			bool complete = tok && json_tokener_get_error(tok) == json_tokener_success;
			json_tokener_free(tok);
			char shown[QUOTE_MAX + 8];
			quote(q->buf, n, shown, sizeof(shown));
			memmove(q->buf, nl + 1, q->len - n - 1);
			q->len -= n + 1;
			if (!o || !complete) {
				json_object_put(o);
				return broken(q, err, EPROTO, "QEMU sent malformed JSON on QMP: '%s'", shown);
			}
			if (!json_object_is_type(o, json_type_object)) {
				json_object_put(o);
				return broken(q, err, EPROTO, "QEMU sent a QMP line that is not a JSON object: '%s'", shown);
			}
			*out = o;
			return 0;
		}
		if (q->len >= VMF_QMP_MAX_LINE) {
			char n[32];
			snprintf(n, sizeof(n), "%zu", q->len);
			return broken(q, err, EMSGSIZE, "QEMU sent a QMP line longer than %s bytes", n);
		}
		if (q->cap - q->len < 4096) {
			size_t cap = q->cap ? q->cap * 2 : 8192;
			if (cap > VMF_QMP_MAX_LINE + 4096)
				cap = VMF_QMP_MAX_LINE + 4096;
			char *nb = realloc(q->buf, cap);
			if (!nb)
				return vmf_err(err, ENOMEM, "out of memory reading QMP");
			q->buf = nb;
			q->cap = cap;
		}
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0)
			return vmf_err(err, ETIMEDOUT, "QEMU did not answer on QMP in time");
		struct pollfd p = { .fd = q->fd, .events = POLLIN };
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return vmf_err_sys(err, errno, "poll on QMP");
		if (r == 0)
			continue;
		ssize_t n = read(q->fd, q->buf + q->len, q->cap - q->len);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return broken(q, err, errno, "reading QMP: %s", strerror(errno));
		if (n == 0)
			return broken(q, err, EPIPE, "QEMU closed the QMP connection%s", q->len ? " mid-reply" : "");
		q->len += (size_t)n;
	}
}

static void
queue_event(struct vmf_qmp *q, json_object *ev)
{
	if (q->nevents == EVENT_QUEUE_MAX) {
		json_object *name;
		json_object_object_get_ex(q->events[0], "event", &name);
		log_warn("QMP event queue full; dropping %s", json_object_get_string(name));
		json_object_put(q->events[0]);
		memmove(q->events, q->events + 1, (EVENT_QUEUE_MAX - 1) * sizeof(q->events[0]));
		q->nevents--;
	}
	q->events[q->nevents++] = ev;
}

static int
send_line(struct vmf_qmp *q, const char *s, int pass_fd, int64_t deadline, struct vmf_error *err)
{
	size_t n = strlen(s);
	size_t off = 0;
	if (pass_fd >= 0) {
		/* The fd travels with the first byte of the command. */
		struct iovec iov = { .iov_base = (void *)s, .iov_len = n };
		char cbuf[CMSG_SPACE(sizeof(int))];
		memset(cbuf, 0, sizeof(cbuf));
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				    .msg_controllen = sizeof(cbuf) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
		ssize_t w;
		do
			w = sendmsg(q->fd, &m, MSG_NOSIGNAL);
		while (w < 0 && errno == EINTR);
		if (w < 0)
			return broken(q, err, errno, "sending to QMP: %s", strerror(errno));
		off = (size_t)w;
	}
	if (off < n && vmf_write_full(q->fd, s + off, n - off, deadline, err) < 0) {
		q->broken = true;
		return vmf_error_prefix(err, "sending to QMP");
	}
	return 0;
}

int
vmf_qmp_command(struct vmf_qmp *q, const char *cmd, json_object *args, int pass_fd, json_object **ret,
		int timeout_ms, struct vmf_error *err)
{
	if (ret)
		*ret = NULL;
	if (q->broken)
		return vmf_err(err, EPIPE, "QMP connection is broken");
	int64_t deadline = vmf_now_ms() + timeout_ms;
	uint64_t id = ++q->next_id;
	json_object *c = json_object_new_object();
	json_object_object_add(c, "execute", json_object_new_string(cmd));
	if (args)
		json_object_object_add(c, "arguments", json_object_get(args));
	json_object_object_add(c, "id", json_object_new_int64((int64_t)id));
	char *line = NULL;
	if (asprintf(&line, "%s\n", json_object_to_json_string_ext(c, JSON_C_TO_STRING_PLAIN)) < 0)
		line = NULL;
	json_object_put(c);
	if (!line)
		return vmf_err(err, ENOMEM, "out of memory for a QMP command");
	int r = send_line(q, line, pass_fd, deadline, err);
	free(line);
	if (r < 0)
		return r;
	for (;;) {
		json_object *o;
		r = read_line(q, &o, deadline, err);
		if (r < 0)
			return vmf_error_prefix(err, "QMP %s", cmd);
		json_object *v;
		if (json_object_object_get_ex(o, "event", &v)) {
			queue_event(q, o);
			continue;
		}
		json_object *rid;
		if (!json_object_object_get_ex(o, "id", &rid) || (uint64_t)json_object_get_int64(rid) != id) {
			char shown[QUOTE_MAX + 8];
			const char *s = json_object_to_json_string(o);
			quote(s, strlen(s), shown, sizeof(shown));
			json_object_put(o);
			/* A late reply to a command that timed out: skip it. */
			if (rid)
				continue;
			return broken(q, err, EPROTO, "QEMU sent a QMP reply to nothing: '%s'", shown);
		}
		if (json_object_object_get_ex(o, "error", &v)) {
			json_object *cls = NULL, *desc = NULL;
			json_object_object_get_ex(v, "class", &cls);
			json_object_object_get_ex(v, "desc", &desc);
			r = vmf_err(err, EIO, "QEMU refused %s: %s: %s", cmd, cls ? json_object_get_string(cls) : "?",
				    desc ? json_object_get_string(desc) : "?");
			json_object_put(o);
			return r;
		}
		if (json_object_object_get_ex(o, "return", &v)) {
			if (ret)
				*ret = json_object_get(v);
			json_object_put(o);
			return 0;
		}
		json_object_put(o);
		return broken(q, err, EPROTO, "QEMU's reply to %s has neither return nor error", cmd);
	}
}

int
vmf_qmp_wait_event(struct vmf_qmp *q, const char *event, json_object **data, int timeout_ms,
		   struct vmf_error *err)
{
	if (data)
		*data = NULL;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	for (;;) {
		for (unsigned i = 0; i < q->nevents; i++) {
			json_object *name;
			json_object_object_get_ex(q->events[i], "event", &name);
			if (strcmp(json_object_get_string(name), event) != 0)
				continue;
			json_object *ev = q->events[i], *d;
			memmove(q->events + i, q->events + i + 1, (q->nevents - i - 1) * sizeof(q->events[0]));
			q->nevents--;
			if (data && json_object_object_get_ex(ev, "data", &d))
				*data = json_object_get(d);
			json_object_put(ev);
			return 0;
		}
		if (q->broken)
			return vmf_err(err, EPIPE, "QMP connection is broken");
		json_object *o;
		int r = read_line(q, &o, deadline, err);
		if (r < 0)
			return vmf_error_prefix(err, "waiting for QMP event %s", event);
		json_object *v;
		if (json_object_object_get_ex(o, "event", &v))
			queue_event(q, o);
		else
			json_object_put(o); /* a late reply to a timed-out command */
	}
}

int
vmf_qmp_open_fd(int fd, int timeout_ms, struct vmf_qmp **out, struct vmf_error *err)
{
	*out = NULL;
	struct vmf_qmp *q = calloc(1, sizeof(*q));
	if (!q) {
		close(fd);
		return vmf_err(err, ENOMEM, "out of memory for QMP");
	}
	q->fd = fd;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	json_object *greeting;
	int r = read_line(q, &greeting, deadline, err);
	if (r < 0) {
		vmf_qmp_close(q);
		return vmf_error_prefix(err, "reading the QMP greeting");
	}
	json_object *qmp, *ver, *qemu, *x;
	if (!json_object_object_get_ex(greeting, "QMP", &qmp)) {
		json_object_put(greeting);
		vmf_qmp_close(q);
		return vmf_err(err, EPROTO, "the peer's first QMP line is not a greeting");
	}
	if (json_object_object_get_ex(qmp, "version", &ver) && json_object_object_get_ex(ver, "qemu", &qemu)) {
		if (json_object_object_get_ex(qemu, "major", &x))
			q->major = json_object_get_int(x);
		if (json_object_object_get_ex(qemu, "minor", &x))
			q->minor = json_object_get_int(x);
		if (json_object_object_get_ex(qemu, "micro", &x))
			q->micro = json_object_get_int(x);
	}
	json_object_put(greeting);
	int left = (int)(deadline - vmf_now_ms());
	r = vmf_qmp_command(q, "qmp_capabilities", NULL, -1, NULL, left > 0 ? left : 1, err);
	if (r < 0) {
		vmf_qmp_close(q);
		return r;
	}
	*out = q;
	return 0;
}

int
vmf_qmp_connect(const char *path, int timeout_ms, struct vmf_qmp **out, struct vmf_error *err)
{
	*out = NULL;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return vmf_err(err, ENAMETOOLONG, "QMP socket path %s is too long", path);
	strcpy(sa.sun_path, path);
	int64_t deadline = vmf_now_ms() + timeout_ms;
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return vmf_err_sys(err, errno, "cannot create a socket");
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			int left = (int)(deadline - vmf_now_ms());
			return vmf_qmp_open_fd(fd, left > 0 ? left : 1, out, err);
		}
		int e = errno;
		close(fd);
		/* Our VMs' sockets exist for their whole life (created before QEMU
		 * starts); a missing one will not appear, so do not wait for it. */
		if (e != ECONNREFUSED && e != EAGAIN)
			return vmf_err_sys(err, e, "cannot connect to QMP socket %s", path);
		if (vmf_now_ms() >= deadline)
			return vmf_err_sys(err, e, "cannot connect to QMP socket %s", path);
		poll(NULL, 0, 20);
	}
}

void
vmf_qmp_version(const struct vmf_qmp *q, int *major, int *minor, int *micro)
{
	*major = q->major;
	*minor = q->minor;
	*micro = q->micro;
}

int
vmf_qmp_fd(const struct vmf_qmp *q)
{
	return q->fd;
}

void
vmf_qmp_close(struct vmf_qmp *q)
{
	if (!q)
		return;
	if (q->fd >= 0)
		close(q->fd);
	for (unsigned i = 0; i < q->nevents; i++)
		json_object_put(q->events[i]);
	free(q->buf);
	free(q);
}
