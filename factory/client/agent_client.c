/* libvmfactory-client: the guest agent of a handed-out VM, driven directly
 * (docs/protocol.md, "The guest agent").  Like client.c: libc,
 * libprotobuf-c and the framing code only.
 *
 * One connection carries requests with ids and, unsolicited (id 0), the
 * output, exits and stdin acknowledgements of its processes.  While a call
 * waits for its reply, the events that arrive first are kept in order for
 * vmf_client_agent_next_event; they are bounded by the output windows. */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"
#include "sockaddr.h"

#define RBUF_SIZE (VMF_FRAME_HDR + (size_t)VMF_AGENT_MAX_FRAME)
#define IN_CHUNK (32u * 1024u)
#define DEFAULT_WINDOW (256u * 1024u)
#define VSOCK_PORT 1024u
#define WAIT_NOTICE_MS 1000

struct exec_state {
	uint64_t id;
	size_t stdin_room;
	uint32_t window;
	uint32_t consumed[3];        /* output taken, credit not yet given back */
	struct exec_state *next;
};

struct pending {
	Vmf__Agent__AgentReply *rep;
	struct pending *next;
};

struct vmf_client_agent {
	int fd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	uint64_t next_id;
	uint8_t *rbuf;
	size_t rlen;
	uint32_t skip;
	uint8_t *wbuf;
	size_t wlen, wcap;
	struct exec_state *execs;
	struct pending *head, *tail;
	Vmf__Agent__AgentReply *last;          /* the event handed out last */
	uint64_t grant_id;                     /* its output, to credit back */
	int grant_fd;
	size_t grant_len;
};

static struct exec_state *
exec_find(const struct vmf_client_agent *a, uint64_t id)
{
	for (struct exec_state *e = a->execs; e; e = e->next)
		if (e->id == id)
			return e;
	return NULL;
}

static void
exec_forget(struct vmf_client_agent *a, uint64_t id)
{
	for (struct exec_state **pp = &a->execs; *pp; pp = &(*pp)->next)
		if ((*pp)->id == id) {
			struct exec_state *e = *pp;
			*pp = e->next;
			free(e);
			return;
		}
}

static int
queue_req(struct vmf_client_agent *a, Vmf__Agent__AgentRequest *req, struct vmf_error *err)
{
	req->protocol_version = AGENT_PROTOCOL_VERSION;
	if (!req->id)
		req->id = ++a->next_id;
	size_t n = vmf__agent__agent_request__get_packed_size(req);
	if (n > VMF_AGENT_MAX_FRAME)
		return vmf_err(err, EMSGSIZE, "agent request of %zu bytes exceeds the %u byte frame limit", n,
			       VMF_AGENT_MAX_FRAME);
	if (a->wlen + VMF_FRAME_HDR + n > a->wcap) {
		size_t cap = a->wcap ? a->wcap : 65536;
		while (cap < a->wlen + VMF_FRAME_HDR + n)
			cap *= 2;
		uint8_t *b = realloc(a->wbuf, cap);
		if (!b)
			return vmf_err(err, ENOMEM, "out of memory for a request to the agent on %s", a->path);
		a->wbuf = b;
		a->wcap = cap;
	}
	vmf_frame_put_len(a->wbuf + a->wlen, (uint32_t)n);
	vmf__agent__agent_request__pack(req, a->wbuf + a->wlen + VMF_FRAME_HDR);
	a->wlen += VMF_FRAME_HDR + n;
	return 0;
}

/* Writes queued frames until done or the deadline (vmf_now_ms() or before:
 * what fits without blocking).  1 when some remain. */
static int
flush_until(struct vmf_client_agent *a, int64_t deadline, struct vmf_error *err)
{
	size_t off = 0;
	int r = 0;
	while (off < a->wlen) {
		ssize_t w = send(a->fd, a->wbuf + off, a->wlen - off, MSG_NOSIGNAL);
		if (w > 0) {
			off += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno != EAGAIN) {
			r = errno == EPIPE || errno == ECONNRESET
				    ? vmf_err(err, EPIPE, "the agent on %s closed the connection", a->path)
				    : vmf_err_sys(err, errno, "writing to the agent on %s", a->path);
			break;
		}
		int64_t left = deadline < 0 ? 60000 : deadline - vmf_now_ms();
		if (left <= 0) {
			r = 1;
			break;
		}
		struct pollfd p = { .fd = a->fd, .events = POLLOUT };
		poll(&p, 1, left > 60000 ? 60000 : (int)left);
	}
	memmove(a->wbuf, a->wbuf + off, a->wlen - off);
	a->wlen -= off;
	return r;
}

int
vmf_client_agent_flush(struct vmf_client_agent *a, struct vmf_error *err)
{
	return flush_until(a, 0, err);
}

/* The next frame: 1 and *out (NULL for one that does not decode), 0 at the
 * deadline.  Queued frames are written meanwhile: an agent that waits for
 * our stdin must not wait on us reading. */
static int
read_frame(struct vmf_client_agent *a, Vmf__Agent__AgentReply **out, int64_t deadline, struct vmf_error *err)
{
	*out = NULL;
	for (;;) {
		if (a->skip) {
			size_t k = a->rlen < a->skip ? a->rlen : a->skip;
			memmove(a->rbuf, a->rbuf + k, a->rlen - k);
			a->rlen -= k;
			a->skip -= (uint32_t)k;
		}
		if (!a->skip && a->rlen >= VMF_FRAME_HDR) {
			uint32_t n = vmf_frame_get_len(a->rbuf);
			if (n > VMF_AGENT_MAX_FRAME) {
				memmove(a->rbuf, a->rbuf + VMF_FRAME_HDR, a->rlen - VMF_FRAME_HDR);
				a->rlen -= VMF_FRAME_HDR;
				a->skip = n;
				continue;
			}
			if (a->rlen >= VMF_FRAME_HDR + n) {
				*out = vmf__agent__agent_reply__unpack(NULL, n, a->rbuf + VMF_FRAME_HDR);
				memmove(a->rbuf, a->rbuf + VMF_FRAME_HDR + n, a->rlen - VMF_FRAME_HDR - n);
				a->rlen -= VMF_FRAME_HDR + n;
				return 1;
			}
		}
		if (a->wlen) {
			int r = flush_until(a, 0, err);
			if (r < 0)
				return r;
		}
		ssize_t r = recv(a->fd, a->rbuf + a->rlen, RBUF_SIZE - a->rlen, 0);
		if (r > 0) {
			a->rlen += (size_t)r;
			continue;
		}
		if (r == 0)
			return vmf_err(err, EPIPE, "the agent on %s closed the connection (the VM stopped?)", a->path);
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return vmf_err_sys(err, errno, "reading from the agent on %s", a->path);
		int64_t left = deadline < 0 ? 60000 : deadline - vmf_now_ms();
		if (left <= 0)
			return 0;
		struct pollfd p = { .fd = a->fd, .events = (short)(POLLIN | (a->wlen ? POLLOUT : 0)) };
		if (poll(&p, 1, left > 60000 ? 60000 : (int)left) < 0 && errno != EINTR)
			return vmf_err_sys(err, errno, "poll on the agent connection %s", a->path);
	}
}

static void
keep(struct vmf_client_agent *a, Vmf__Agent__AgentReply *rep)
{
	struct pending *p = malloc(sizeof(*p));
	if (!p) {
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		return;
	}
	p->rep = rep;
	p->next = NULL;
	if (a->tail)
		a->tail->next = p;
	else
		a->head = p;
	a->tail = p;
}

/* Sends req and waits for the reply with its id; other frames are kept. */
static int
call(struct vmf_client_agent *a, Vmf__Agent__AgentRequest *req, Vmf__Agent__AgentReply__BodyCase want,
     Vmf__Agent__AgentReply **out, int timeout_ms, vmf_client_agent_wait_fn waiting, void *arg,
     struct vmf_error *err)
{
	*out = NULL;
	req->id = 0;
	int r = queue_req(a, req, err);
	if (r < 0)
		return r;
	int64_t start = vmf_now_ms(), deadline = timeout_ms < 0 ? -1 : start + timeout_ms;
	bool noticed = !waiting;
	for (;;) {
		int64_t until = deadline;
		if (!noticed && (until < 0 || until > start + WAIT_NOTICE_MS))
			until = start + WAIT_NOTICE_MS;
		Vmf__Agent__AgentReply *rep;
		r = read_frame(a, &rep, until, err);
		if (r < 0)
			return r;
		if (r == 0 && until != deadline) {
			noticed = true;
			waiting(arg);
			continue;
		}
		if (r == 0)
			return vmf_err(err, ETIMEDOUT, "the agent on %s did not answer within %d ms", a->path,
				       timeout_ms);
		if (!rep)
			continue;
		if (rep->id != req->id) {
			keep(a, rep);
			continue;
		}
		if (rep->error_code) {
			r = vmf_err(err, rep->error_code, "%s", rep->error_message && *rep->error_message
				    ? rep->error_message : "the guest agent reports an error without a message");
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
			return r;
		}
		if (rep->body_case != want) {
			int got = (int)rep->body_case;
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
			return vmf_err(err, EPROTO, "the agent on %s answered with message type %d, expected %d",
				       a->path, got, (int)want);
		}
		*out = rep;
		return 0;
	}
}

static int
connect_fd(const char *path, const char *transport, unsigned port, int64_t deadline, struct vmf_error *err)
{
	struct sockaddr_un sa;
	socklen_t salen;
	int r = vmf_unix_addr(&sa, &salen, path, err);
	if (r < 0)
		return r;
	bool hybrid = transport && strcmp(transport, "hybrid-vsock") == 0;
	if (transport && *transport && !hybrid && strcmp(transport, "unix") != 0)
		return vmf_err(err, EINVAL, "agent transport '%s' is not one this library knows (unix, hybrid-vsock)",
			       transport);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create a socket to reach %s", path);
	if (connect(fd, (struct sockaddr *)&sa, salen) < 0) {
		int e = errno;
		close(fd);
		if (e == EACCES)
			return vmf_err(err, e, "no permission to connect to the agent socket %s: the VM is not yours",
				       path);
		if (e == ENOENT || e == ECONNREFUSED)
			return vmf_err(err, e, "no agent is answering on %s (%s): the VM is not running", path,
				       strerror(e));
		return vmf_err_sys(err, e, "cannot connect to the agent socket %s", path);
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	if (!hybrid)
		return fd;
	char req[32], line[64];
	int n = snprintf(req, sizeof(req), "CONNECT %u\n", port ? port : VSOCK_PORT);
	struct vmf_error we;
	if (vmf_write_full(fd, req, (size_t)n, deadline, &we) < 0) {
		close(fd);
		return vmf_err(err, we.code, "vsock handshake on %s: %s", path, we.msg);
	}
	size_t len = 0;
	while (len + 1 < sizeof(line)) {
		/* Byte by byte: the agent's first frame may follow the line. */
		if (vmf_read_full(fd, line + len, 1, deadline, &we) < 0) {
			close(fd);
			return vmf_err(err, we.code, "vsock handshake on %s: %s", path, we.msg);
		}
		if (line[len] == '\n')
			break;
		len++;
	}
	line[len] = '\0';
	if (strncmp(line, "OK ", 3) != 0) {
		close(fd);
		return vmf_err(err, ECONNREFUSED, "vsock port %u on %s: the VMM answered '%.40s'",
			       port ? port : VSOCK_PORT, path, line);
	}
	return fd;
}

/* One connection, its ExecReset answered within attempt_ms (-1: until
 * deadline); -ETIMEDOUT when it was not. */
static int
connect_once(const char *path, const char *transport, unsigned vsock_port, int64_t deadline, int attempt_ms,
	     vmf_client_agent_wait_fn waiting, void *arg, struct vmf_client_agent **out, struct vmf_error *err)
{
	int fd = connect_fd(path, transport, vsock_port, deadline, err);
	if (fd < 0)
		return fd;
	struct vmf_client_agent *a = calloc(1, sizeof(*a));
	uint8_t *rbuf = malloc(RBUF_SIZE);
	if (!a || !rbuf) {
		free(a);
		free(rbuf);
		close(fd);
		return vmf_err(err, ENOMEM, "out of memory for a connection to %s", path);
	}
	a->fd = fd;
	a->rbuf = rbuf;
	snprintf(a->path, sizeof(a->path), "%s", path);
	/* Ids from a random point: a reply meant for an earlier client of the
	 * port never matches one of ours. */
	if (getrandom(&a->next_id, sizeof(a->next_id), GRND_NONBLOCK) != (ssize_t)sizeof(a->next_id))
		a->next_id = (uint64_t)vmf_now_ms() << 20;
	a->next_id = (a->next_id >> 2) | 1;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecReset rs = VMF__AGENT__EXEC_RESET__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESET;
	req.exec_reset = &rs;
	Vmf__Agent__AgentReply *rep;
	int left = deadline < 0 ? -1 : (int)(deadline - vmf_now_ms());
	if (left < 0 && deadline >= 0)
		left = 0;
	if (attempt_ms >= 0 && (left < 0 || attempt_ms < left))
		left = attempt_ms;
	int r = call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK, &rep, left, waiting, arg, err);
	if (r == -EOPNOTSUPP)
		r = vmf_err(err, EOPNOTSUPP, "the agent on %s does not support exec (an older guest image: "
			    "rebuild the image and its templates)", path);
	if (r < 0) {
		vmf_client_agent_close(a);
		return r;
	}
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	/* Frames read before our reset's answer belong to the client before us. */
	while (a->head) {
		struct pending *p = a->head;
		a->head = p->next;
		vmf__agent__agent_reply__free_unpacked(p->rep, NULL);
		free(p);
	}
	a->tail = NULL;
	*out = a;
	return 0;
}

/* An unanswered connection is replaced after 1 s, then 2, 4, ... until the
 * deadline.  An agent older than the fix for the virtio-serial port's late
 * open notice (docs/hypervisors.md) drops the answer to a new host's first
 * request now and then (a few connections in a hundred under TCG) and
 * serves the next connection; a port another client holds keeps ours in
 * its listen backlog either way, and a slow guest gets ever longer to
 * answer. */
int
vmf_client_agent_connect(const char *path, const char *transport, unsigned vsock_port, int timeout_ms,
			 vmf_client_agent_wait_fn waiting, void *arg, struct vmf_client_agent **out,
			 struct vmf_error *err)
{
	*out = NULL;
	if (!path || !*path)
		return vmf_err(err, EINVAL, "no agent socket path given");
	int64_t deadline = timeout_ms < 0 ? -1 : vmf_now_ms() + timeout_ms;
	int attempt_ms = 1000;
	for (;;) {
		int r = connect_once(path, transport, vsock_port, deadline, attempt_ms, NULL, NULL, out, err);
		if (r != -ETIMEDOUT)
			return r;
		/* The notice is said once. */
		if (waiting)
			waiting(arg);
		waiting = NULL;
		if (deadline >= 0 && vmf_now_ms() >= deadline)
			return vmf_err(err, EBUSY, "the agent on %s did not answer within %d ms: another client "
				       "holds the VM's agent port, or the guest is not running", path, timeout_ms);
		attempt_ms = attempt_ms < (1 << 20) ? attempt_ms * 2 : attempt_ms;
	}
}

void
vmf_client_agent_close(struct vmf_client_agent *a)
{
	if (!a)
		return;
	close(a->fd);
	while (a->execs)
		exec_forget(a, a->execs->id);
	while (a->head) {
		struct pending *p = a->head;
		a->head = p->next;
		vmf__agent__agent_reply__free_unpacked(p->rep, NULL);
		free(p);
	}
	if (a->last)
		vmf__agent__agent_reply__free_unpacked(a->last, NULL);
	free(a->rbuf);
	free(a->wbuf);
	free(a);
}

int
vmf_client_agent_fd(const struct vmf_client_agent *a)
{
	return a->fd;
}

int
vmf_client_agent_ping(struct vmf_client_agent *a, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	Vmf__Agent__AgentReply *rep;
	int r = call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_PONG, &rep, timeout_ms, NULL, NULL, err);
	if (r == 0)
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

static size_t
count(const char *const *v)
{
	size_t n = 0;
	while (v && v[n])
		n++;
	return n;
}

int
vmf_client_exec_start(struct vmf_client_agent *a, const struct vmf_exec_opts *o, uint64_t *exec_id,
		      int timeout_ms, struct vmf_error *err)
{
	*exec_id = 0;
	if (!o->argv || !o->argv[0])
		return vmf_err(err, EINVAL, "exec needs a command: argv is empty");
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecStart x = VMF__AGENT__EXEC_START__INIT;
	x.n_argv = count(o->argv);
	x.argv = (char **)o->argv;
	x.n_env = count(o->env);
	x.env = (char **)o->env;
	x.cwd = (char *)(o->cwd ? o->cwd : "");
	x.set_user = o->set_user != 0;
	x.uid = o->uid;
	x.gid = o->gid;
	x.tty = o->tty != 0;
	x.rows = o->rows;
	x.cols = o->cols;
	x.timeout_ms = o->timeout_ms;
	x.output_window = o->output_window;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START;
	req.exec_start = &x;
	/* The frame limit is the guest's argument limit: said as such, before
	 * anything is sent. */
	size_t n = vmf__agent__agent_request__get_packed_size(&req) + 16;
	if (n > VMF_AGENT_MAX_FRAME)
		return vmf_err(err, E2BIG, "argument list too long: the command's arguments and environment take "
			       "%zu bytes, the agent takes at most %u", n, VMF_AGENT_MAX_FRAME - 16);
	struct exec_state *es = calloc(1, sizeof(*es));
	if (!es)
		return vmf_err(err, ENOMEM, "out of memory for an exec");
	Vmf__Agent__AgentReply *rep;
	int r = call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED, &rep, timeout_ms, NULL, NULL, err);
	if (r < 0) {
		free(es);
		return r;
	}
	es->id = rep->exec_started->exec_id;
	es->stdin_room = rep->exec_started->stdin_window;
	es->window = o->output_window ? o->output_window : DEFAULT_WINDOW;
	es->next = a->execs;
	a->execs = es;
	*exec_id = es->id;
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 0;
}

/* Gives back the credit of the output handed out last.  In batches of a
 * quarter window: one frame per chunk would double the traffic. */
static int
grant_last(struct vmf_client_agent *a, struct vmf_error *err)
{
	if (!a->grant_len)
		return 0;
	struct exec_state *es = exec_find(a, a->grant_id);
	size_t len = a->grant_len;
	a->grant_len = 0;
	if (!es)
		return 0;
	es->consumed[a->grant_fd] += (uint32_t)len;
	if (es->consumed[a->grant_fd] < es->window / 4)
		return 0;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecWindow w = VMF__AGENT__EXEC_WINDOW__INIT;
	w.exec_id = es->id;
	w.stdout_bytes = es->consumed[1];
	w.stderr_bytes = es->consumed[2];
	es->consumed[1] = es->consumed[2] = 0;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_WINDOW;
	req.exec_window = &w;
	return queue_req(a, &req, err);
}

/* Turns a frame into an event: 1 when *ev is one for the caller. */
static int
deliver(struct vmf_client_agent *a, Vmf__Agent__AgentReply *rep, struct vmf_exec_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	switch (rep->body_case) {
	case VMF__AGENT__AGENT_REPLY__BODY_EXEC_OUTPUT: {
		Vmf__Agent__ExecOutput *o = rep->exec_output;
		ev->type = VMF_EXEC_EV_OUTPUT;
		ev->exec_id = o->exec_id;
		ev->fd = o->fd == 2 ? 2 : 1;
		ev->data = o->data.data;
		ev->len = o->data.len;
		a->grant_id = o->exec_id;
		a->grant_fd = ev->fd;
		a->grant_len = o->data.len;
		return 1;
	}
	case VMF__AGENT__AGENT_REPLY__BODY_EXEC_EXIT: {
		Vmf__Agent__ExecExit *x = rep->exec_exit;
		ev->type = VMF_EXEC_EV_EXIT;
		ev->exec_id = x->exec_id;
		ev->exit_code = x->exit_code;
		ev->signal = x->signal;
		ev->timed_out = x->timed_out;
		exec_forget(a, x->exec_id);
		return 1;
	}
	case VMF__AGENT__AGENT_REPLY__BODY_EXEC_WINDOW: {
		struct exec_state *es = exec_find(a, rep->exec_window->exec_id);
		if (es)
			es->stdin_room += rep->exec_window->stdin_bytes;
		return 0;
	}
	default:
		if (!rep->error_code)
			return 0;   /* an ack, or a stale reply */
		ev->type = VMF_EXEC_EV_ERROR;
		ev->error_code = rep->error_code;
		snprintf(ev->message, sizeof(ev->message), "%s", rep->error_message ? rep->error_message : "");
		return 1;
	}
}

int
vmf_client_agent_next_event(struct vmf_client_agent *a, struct vmf_exec_event *ev, int timeout_ms,
			    struct vmf_error *err)
{
	memset(ev, 0, sizeof(*ev));
	if (a->last) {
		vmf__agent__agent_reply__free_unpacked(a->last, NULL);
		a->last = NULL;
	}
	int r = grant_last(a, err);
	if (r < 0)
		return r;
	int64_t deadline = timeout_ms < 0 ? -1 : vmf_now_ms() + timeout_ms;
	for (;;) {
		Vmf__Agent__AgentReply *rep = NULL;
		if (a->head) {
			struct pending *p = a->head;
			a->head = p->next;
			if (!a->head)
				a->tail = NULL;
			rep = p->rep;
			free(p);
		} else {
			r = read_frame(a, &rep, deadline, err);
			if (r <= 0)
				return r;
			if (!rep)
				continue;
		}
		if (deliver(a, rep, ev)) {
			a->last = rep;
			return 0;
		}
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
	}
}

size_t
vmf_client_exec_stdin_room(const struct vmf_client_agent *a, uint64_t exec_id)
{
	const struct exec_state *es = exec_find(a, exec_id);
	return es ? es->stdin_room : 0;
}

long
vmf_client_exec_input(struct vmf_client_agent *a, uint64_t exec_id, const void *data, size_t n, int eof,
		      struct vmf_error *err)
{
	struct exec_state *es = exec_find(a, exec_id);
	if (!es)
		return vmf_err(err, ESRCH, "exec %llu is not running on this connection", (unsigned long long)exec_id);
	size_t take = n < es->stdin_room ? n : es->stdin_room;
	size_t off = 0;
	do {
		size_t k = take - off < IN_CHUNK ? take - off : IN_CHUNK;
		Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
		Vmf__Agent__ExecInput in = VMF__AGENT__EXEC_INPUT__INIT;
		in.exec_id = exec_id;
		/* No pointer arithmetic on NULL: stdin's end comes with no data. */
		in.data.data = k ? (uint8_t *)data + off : NULL;
		in.data.len = k;
		in.close = eof && off + k == n;
		if (k == 0 && !in.close)
			break;
		req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_INPUT;
		req.exec_input = &in;
		int r = queue_req(a, &req, err);
		if (r < 0)
			return r;
		off += k;
	} while (off < take);
	es->stdin_room -= take;
	return (long)take;
}

static int
ack_call(struct vmf_client_agent *a, Vmf__Agent__AgentRequest *req, struct vmf_error *err)
{
	Vmf__Agent__AgentReply *rep;
	int r = call(a, req, VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK, &rep, 10000, NULL, NULL, err);
	if (r == 0)
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

int
vmf_client_exec_signal(struct vmf_client_agent *a, uint64_t exec_id, int sig, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecSignal s = VMF__AGENT__EXEC_SIGNAL__INIT;
	s.exec_id = exec_id;
	s.signal = sig;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_SIGNAL;
	req.exec_signal = &s;
	return ack_call(a, &req, err);
}

int
vmf_client_exec_resize(struct vmf_client_agent *a, uint64_t exec_id, unsigned rows, unsigned cols,
		       struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecResize z = VMF__AGENT__EXEC_RESIZE__INIT;
	z.exec_id = exec_id;
	z.rows = rows;
	z.cols = cols;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESIZE;
	req.exec_resize = &z;
	return ack_call(a, &req, err);
}
