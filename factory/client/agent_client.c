/* libvmfactory-client: the guest agent of a handed-out VM, driven directly
 * (docs/protocol.md, "The guest agent").  Like client.c: libc,
 * libprotobuf-c and common/'s libc-only code; the connection itself is
 * common/agentconn.c, the daemon's too.
 *
 * One connection carries requests with ids and, unsolicited (id 0), the
 * output, exits and stdin acknowledgements of its processes.  While a call
 * waits for its reply, the events that arrive first are kept in order for
 * vmf_client_agent_next_event.  What is kept is bounded by what the
 * protocol lets the agent send: output within the credit each stream was
 * given, one exit per process, an error per request sent; an agent that
 * sends more than that fails the connection with a sentence. */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent_internal.h"
#include "agentconn.h"
#include "frame.h"
#include "sockaddr.h"
#include "text.h"

#define IN_CHUNK (32u * 1024u)
#define DEFAULT_WINDOW (256u * 1024u)
/* Above the agent's own stdin window (256 KiB): what it announces beyond
 * this is not believed. */
#define STDIN_WINDOW_MAX (1u << 20)
#define VSOCK_PORT 1024u
#define WAIT_NOTICE_MS 1000
/* Frames a previous client of the port may have left queued (the agent's
 * per-connection queue), dropped while our ExecReset is answered. */
#define PREVIOUS_BYTES_MAX (512u * 1024u)

struct exec_state {
	uint64_t id;
	size_t stdin_room;           /* window left for stdin */
	size_t stdin_window;
	uint32_t window;
	uint64_t credit[3];          /* output the agent may still send, by fd */
	uint32_t consumed[3];        /* output taken, credit not yet given back */
	bool exited;                 /* its exit arrived (it may wait in the queue) */
	struct exec_state *next;
};

/* A watch's events a call may keep while it waits: past them they are
 * counted as lost, so a guest that floods cannot grow the queue. */
#define WATCH_KEPT_MAX 16u
#define WATCHES_MAX 64u

struct watch_state {
	uint64_t id;
	unsigned kept;               /* its frames in the queue */
	uint64_t dropped;            /* events not kept, reported with the next */
	bool ended;
	bool stopping;               /* unwatched: what still comes of it is dropped */
	struct watch_state *next;
};

struct pending {
	Vmf__Agent__AgentReply *rep;
	struct pending *next;
};

struct vmf_client_agent {
	struct vmf_agent_conn *c;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct exec_state *execs;
	struct watch_state *watches;
	unsigned n_watches;
	struct vmf_file_event *fev;            /* the FILES event handed out last */
	size_t n_fev;
	struct pending *head, *tail;
	size_t previous_bytes;                 /* dropped while connecting */
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

static struct watch_state *
watch_find(const struct vmf_client_agent *a, uint64_t id)
{
	for (struct watch_state *w = a->watches; w; w = w->next)
		if (w->id == id)
			return w;
	return NULL;
}

int
agent_client_watch_add(struct vmf_client_agent *a, uint64_t id, struct vmf_error *err)
{
	if (watch_find(a, id))
		return vmf_err(err, EPROTO, "the agent on %s started watch %llu twice", a->path,
			       (unsigned long long)id);
	if (a->n_watches >= WATCHES_MAX)
		return vmf_err(err, EMFILE, "%u watches on the agent on %s already", a->n_watches, a->path);
	struct watch_state *w = calloc(1, sizeof(*w));
	if (!w)
		return vmf_err(err, ENOMEM, "out of memory for a watch on %s", a->path);
	w->id = id;
	w->next = a->watches;
	a->watches = w;
	a->n_watches++;
	return 0;
}

void
agent_client_watch_stopping(struct vmf_client_agent *a, uint64_t id)
{
	struct watch_state *w = watch_find(a, id);
	if (w)
		w->stopping = true;
}

void
agent_client_watch_forget(struct vmf_client_agent *a, uint64_t id)
{
	for (struct watch_state **pp = &a->watches; *pp; pp = &(*pp)->next)
		if ((*pp)->id == id) {
			struct watch_state *w = *pp;
			*pp = w->next;
			free(w);
			a->n_watches--;
			return;
		}
}

static void
fev_free(struct vmf_client_agent *a)
{
	for (size_t i = 0; i < a->n_fev; i++)
		free((char *)a->fev[i].name);
	free(a->fev);
	a->fev = NULL;
	a->n_fev = 0;
}

static int
keep(struct vmf_client_agent *a, Vmf__Agent__AgentReply *rep, struct vmf_error *err)
{
	struct pending *p = malloc(sizeof(*p));
	if (!p)
		return vmf_err(err, ENOMEM, "out of memory for an event of the agent on %s", a->path);
	p->rep = rep;
	p->next = NULL;
	if (a->tail)
		a->tail->next = p;
	else
		a->head = p;
	a->tail = p;
	return 1;
}

static void
drop_pending(struct vmf_client_agent *a)
{
	while (a->head) {
		struct pending *p = a->head;
		a->head = p->next;
		vmf__agent__agent_reply__free_unpacked(p->rep, NULL);
		free(p);
	}
	a->tail = NULL;
}

/* The frames that answer no call: kept for next_event when the protocol
 * allows them, checked against what it allows (agentconn.h). */
static int
on_frame(void *arg, Vmf__Agent__AgentReply *rep, struct vmf_error *err)
{
	struct vmf_client_agent *a = arg;
	struct exec_state *es;
	switch (rep->body_case) {
	case VMF__AGENT__AGENT_REPLY__BODY_EXEC_OUTPUT: {
		const Vmf__Agent__ExecOutput *o = rep->exec_output;
		if (rep->id || !(es = exec_find(a, o->exec_id)) || es->exited)
			return 0;
		if (o->fd != 1 && o->fd != 2)
			return vmf_err(err, EPROTO, "the agent on %s sent output for fd %u of exec %llu (only 1 and 2 "
				       "exist): the connection is closed", a->path, o->fd, (unsigned long long)o->exec_id);
		if (o->data.len > es->credit[o->fd])
			return vmf_err(err, EPROTO, "the agent on %s sent %zu bytes of output for exec %llu with %llu "
				       "bytes of window left: the connection is closed", a->path, o->data.len,
				       (unsigned long long)o->exec_id, (unsigned long long)es->credit[o->fd]);
		es->credit[o->fd] -= o->data.len;
		return keep(a, rep, err);
	}
	case VMF__AGENT__AGENT_REPLY__BODY_EXEC_EXIT: {
		const Vmf__Agent__ExecExit *x = rep->exec_exit;
		if (rep->id || !(es = exec_find(a, x->exec_id)) || es->exited)
			return 0;
		if (x->exit_code < -1 || x->exit_code > 255 || x->signal < 0 || x->signal > 64)
			return vmf_err(err, EPROTO, "the agent on %s reports exec %llu ended with exit code %d, signal "
				       "%d, which no process can: the connection is closed", a->path,
				       (unsigned long long)x->exec_id, x->exit_code, x->signal);
		es->exited = true;
		return keep(a, rep, err);
	}
	case VMF__AGENT__AGENT_REPLY__BODY_EXEC_WINDOW: {
		const Vmf__Agent__ExecWindow *w = rep->exec_window;
		if (rep->id || !(es = exec_find(a, w->exec_id)))
			return 0;
		if (w->stdin_bytes > es->stdin_window - es->stdin_room)
			return vmf_err(err, EPROTO, "the agent on %s acknowledged %llu bytes of stdin for exec %llu, "
				       "more than was sent: the connection is closed", a->path,
				       (unsigned long long)w->stdin_bytes, (unsigned long long)w->exec_id);
		es->stdin_room += w->stdin_bytes;
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		return 1;
	}
	case VMF__AGENT__AGENT_REPLY__BODY_FILE_EVENTS: {
		const Vmf__Agent__FileEvents *fe = rep->file_events;
		struct watch_state *w;
		if (rep->id || !(w = watch_find(a, fe->watch_id)) || w->ended)
			return 0;
		if (w->stopping) {
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
			return 1;
		}
		if (fe->ended) {
			w->ended = true;
		} else if (w->kept >= WATCH_KEPT_MAX) {
			w->dropped += fe->n_events + (uint64_t)fe->lost;
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
			return 1;
		}
		w->kept++;
		return keep(a, rep, err);
	}
	default:
		/* The error answer to a request that has none on success (stdin,
		 * credit): one per request sent at most. */
		if (rep->error_code && rep->id && vmf_agent_conn_claim(a->c, rep->id))
			return keep(a, rep, err);
		return 0;
	}
}

/* While our ExecReset is answered: what a client before us left queued
 * (its processes' output and exits) is dropped, up to what the agent can
 * have queued for a connection. */
static int
on_previous(void *arg, Vmf__Agent__AgentReply *rep, struct vmf_error *err)
{
	struct vmf_client_agent *a = arg;
	(void)err;
	bool exec_event = rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_EXEC_OUTPUT ||
			  rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_EXEC_EXIT ||
			  rep->body_case == VMF__AGENT__AGENT_REPLY__BODY_EXEC_WINDOW;
	if (rep->id || !exec_event)
		return 0;
	a->previous_bytes += vmf_agent_conn_last_frame_size(a->c);
	if (a->previous_bytes > PREVIOUS_BYTES_MAX)
		return 0;
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 1;
}

/* Sends req and waits for the reply with its id; other frames are kept. */
int
agent_client_call(struct vmf_client_agent *a, Vmf__Agent__AgentRequest *req, Vmf__Agent__AgentReply__BodyCase want,
     Vmf__Agent__AgentReply **out, int64_t deadline, struct vmf_error *err)
{
	*out = NULL;
	int r = vmf_agent_conn_queue(a->c, req, err);
	if (r < 0)
		return r;
	Vmf__Agent__AgentReply *rep;
	r = vmf_agent_conn_wait(a->c, req->id, &rep, deadline, err);
	if (r == -ETIMEDOUT)
		return vmf_err(err, ETIMEDOUT, "the agent on %s did not answer in time", a->path);
	if (r < 0)
		return r;
	if ((r = vmf_agent_reply_check(a->c, rep, want, "", err)) < 0) {
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		return r;
	}
	*out = rep;
	return 0;
}

int64_t
agent_client_deadline(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : vmf_now_ms() + timeout_ms;
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
		char shown[64];
		vmf_escape(line, shown, sizeof(shown), 0);
		close(fd);
		return vmf_err(err, ECONNREFUSED, "vsock port %u on %s: the VMM answered '%s'",
			       port ? port : VSOCK_PORT, path, shown);
	}
	return fd;
}

struct connect_args {
	const char *path, *transport;
	unsigned vsock_port;
};

/* One connection, its ExecReset answered before until. */
static int
connect_once(void *arg, int64_t until, void **out, struct vmf_error *err)
{
	const struct connect_args *ca = arg;
	int fd = connect_fd(ca->path, ca->transport, ca->vsock_port, until, err);
	if (fd < 0)
		return fd;
	struct vmf_client_agent *a = calloc(1, sizeof(*a));
	char what[sizeof(a->path) + 16];
	snprintf(what, sizeof(what), "the agent on %s", ca->path);
	if (!a || !(a->c = vmf_agent_conn_new(fd, what))) {
		if (!a)
			close(fd);
		free(a);
		return vmf_err(err, ENOMEM, "out of memory for a connection to %s", ca->path);
	}
	snprintf(a->path, sizeof(a->path), "%s", ca->path);
	vmf_agent_conn_set_events(a->c, on_previous, a);
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecReset rs = VMF__AGENT__EXEC_RESET__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESET;
	req.exec_reset = &rs;
	Vmf__Agent__AgentReply *rep;
	int r = agent_client_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK, &rep, until, err);
	if (r == -EOPNOTSUPP)
		r = vmf_err(err, EOPNOTSUPP, "the agent on %s does not support exec (an older guest image: "
			    "rebuild the image and its templates)", ca->path);
	if (r < 0) {
		vmf_client_agent_close(a);
		return r;
	}
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	/* Frames before our reset's answer belong to the client before us. */
	vmf_agent_conn_set_events(a->c, on_frame, a);
	*out = a;
	return 0;
}

/* An unanswered connection is replaced after 1 s, then 2, 4 and every 8 s
 * (agentconn.h) until the deadline.  An agent older than the fix for the
 * virtio-serial port's late open notice (docs/hypervisors.md) drops the
 * answer to a new host's first request now and then (a few connections
 * in a hundred under TCG) and serves the next connection; a port another
 * client holds keeps ours in its listen backlog either way. */
int
vmf_client_agent_connect(const char *path, const char *transport, unsigned vsock_port, int timeout_ms,
			 vmf_client_agent_wait_fn waiting, void *arg, struct vmf_client_agent **out,
			 struct vmf_error *err)
{
	*out = NULL;
	if (!path || !*path)
		return vmf_err(err, EINVAL, "no agent socket path given");
	struct connect_args ca = { path, transport, vsock_port };
	void *a = NULL;
	int r = vmf_agent_conn_retry(connect_once, &ca, WAIT_NOTICE_MS, agent_client_deadline(timeout_ms), waiting, arg, &a,
				     err);
	if (r == -ETIMEDOUT)
		return vmf_err(err, EBUSY, "the agent on %s did not answer within %d ms: another client holds the "
			       "VM's agent port, or the guest is not running", path, timeout_ms);
	*out = a;
	return r;
}

void
vmf_client_agent_close(struct vmf_client_agent *a)
{
	if (!a)
		return;
	vmf_agent_conn_free(a->c);
	while (a->execs)
		exec_forget(a, a->execs->id);
	while (a->watches)
		agent_client_watch_forget(a, a->watches->id);
	fev_free(a);
	drop_pending(a);
	if (a->last)
		vmf__agent__agent_reply__free_unpacked(a->last, NULL);
	free(a);
}

int
vmf_client_agent_fd(const struct vmf_client_agent *a)
{
	return vmf_agent_conn_fd(a->c);
}

int
vmf_client_agent_flush(struct vmf_client_agent *a, struct vmf_error *err)
{
	return vmf_agent_conn_flush(a->c, 0, err);
}

int
vmf_client_agent_ping(struct vmf_client_agent *a, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	Vmf__Agent__AgentReply *rep;
	int r = agent_client_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_PONG, &rep, agent_client_deadline(timeout_ms), err);
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

/* A call answered with ExecStarted (start, attach): the exec's state from
 * then on.  An id the connection serves already is the agent's lie. */
static int
started_call(struct vmf_client_agent *a, Vmf__Agent__AgentRequest *req, uint32_t window, uint64_t *exec_id,
	     int *pid, int timeout_ms, struct vmf_error *err)
{
	struct exec_state *es = calloc(1, sizeof(*es));
	if (!es)
		return vmf_err(err, ENOMEM, "out of memory for an exec");
	Vmf__Agent__AgentReply *rep;
	int r = agent_client_call(a, req, VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED, &rep,
				  agent_client_deadline(timeout_ms), err);
	if (r < 0) {
		free(es);
		return r;
	}
	const Vmf__Agent__ExecStarted *st = rep->exec_started;
	if (st->exec_id == 0 || exec_find(a, st->exec_id)) {
		r = vmf_err(err, EPROTO, "the agent on %s answered with exec id %llu, %s", a->path,
			    (unsigned long long)st->exec_id, st->exec_id ? "one this connection has already" : "no id");
		free(es);
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		return r;
	}
	es->id = st->exec_id;
	es->stdin_window = es->stdin_room = st->stdin_window < STDIN_WINDOW_MAX ? st->stdin_window : STDIN_WINDOW_MAX;
	es->window = window ? window : DEFAULT_WINDOW;
	es->credit[1] = es->credit[2] = es->window;
	es->next = a->execs;
	a->execs = es;
	*exec_id = es->id;
	if (pid)
		*pid = st->pid;
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 0;
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
	x.keep = o->keep != 0;
	x.tag = (char *)(o->tag ? o->tag : "");
	x.user = (char *)(o->user ? o->user : "");
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START;
	req.exec_start = &x;
	/* The frame limit is the guest's argument limit: said as such, before
	 * anything is sent. */
	size_t n = vmf__agent__agent_request__get_packed_size(&req) + 16;
	if (n > VMF_AGENT_MAX_FRAME)
		return vmf_err(err, E2BIG, "argument list too long: the command's arguments and environment take "
			       "%zu bytes, the agent takes at most %u", n, VMF_AGENT_MAX_FRAME - 16);
	return started_call(a, &req, o->output_window, exec_id, NULL, timeout_ms, err);
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
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_WINDOW;
	req.exec_window = &w;
	int r = vmf_agent_conn_queue(a->c, &req, err);
	if (r < 0)
		return r;
	es->credit[1] += es->consumed[1];
	es->credit[2] += es->consumed[2];
	es->consumed[1] = es->consumed[2] = 0;
	return 0;
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
	case VMF__AGENT__AGENT_REPLY__BODY_FILE_EVENTS: {
		const Vmf__Agent__FileEvents *fe = rep->file_events;
		struct watch_state *w = watch_find(a, fe->watch_id);
		if (!w || w->stopping)
			return 0;   /* unwatched while it waited */
		w->kept--;
		ev->type = VMF_EXEC_EV_FILES;
		ev->exec_id = fe->watch_id;
		ev->lost = fe->lost + w->dropped;
		w->dropped = 0;
		ev->ended = fe->ended;
		if (fe->ended) {
			vmf_escape(fe->reason, ev->message, sizeof(ev->message), 0);
			agent_client_watch_forget(a, fe->watch_id);
		}
		a->fev = calloc(fe->n_events ? fe->n_events : 1, sizeof(*a->fev));
		for (size_t i = 0; a->fev && i < fe->n_events; i++) {
			const Vmf__Agent__FileEvent *e = fe->events[i];
			char *name = e->type >= 1 && e->type <= 5 ? agent_client_guest_string(e->name) : NULL;
			if (!name) {
				ev->lost++;   /* no type we know, or no memory */
				continue;
			}
			a->fev[a->n_fev++] = (struct vmf_file_event){ name, (enum vmf_file_event_type)e->type };
		}
		if (!a->fev)
			ev->lost += fe->n_events;
		ev->files = a->fev;
		ev->n_files = a->n_fev;
		return 1;
	}
	default:
		if (!rep->error_code)
			return 0;
		ev->type = VMF_EXEC_EV_ERROR;
		ev->error_code = rep->error_code;
		vmf_escape(rep->error_message, ev->message, sizeof(ev->message), 0);
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
	fev_free(a);
	int r = grant_last(a, err);
	if (r < 0)
		return r;
	int64_t deadline = agent_client_deadline(timeout_ms);
	vmf_agent_conn_begin(a->c);
	for (;;) {
		Vmf__Agent__AgentReply *rep = NULL;
		if (a->head) {
			struct pending *p = a->head;
			a->head = p->next;
			if (!a->head)
				a->tail = NULL;
			rep = p->rep;
			free(p);
			if (deliver(a, rep, ev)) {
				a->last = rep;
				return 0;
			}
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
			continue;
		}
		r = vmf_agent_conn_recv(a->c, &rep, deadline, err);
		if (r <= 0)
			return r;
		/* Events are kept by on_frame, then delivered from the queue. */
		if ((r = vmf_agent_conn_other(a->c, rep, err)) < 0)
			return r;
		if (!a->head && deadline >= 0 && vmf_now_ms() >= deadline)
			return 0;
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
		int r = vmf_agent_conn_queue(a->c, &req, err);
		if (r < 0)
			return off ? (long)off : r;
		es->stdin_room -= k;
		off += k;
	} while (off < take);
	return (long)take;
}

static int
ack_call(struct vmf_client_agent *a, Vmf__Agent__AgentRequest *req, struct vmf_error *err)
{
	Vmf__Agent__AgentReply *rep;
	int r = agent_client_call(a, req, VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK, &rep, agent_client_deadline(10000), err);
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

int
vmf_client_agent_set_env(struct vmf_client_agent *a, const char *const *env, int timeout_ms,
			 struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecSetEnv x = VMF__AGENT__EXEC_SET_ENV__INIT;
	x.n_env = count(env);
	x.env = (char **)env;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_SET_ENV;
	req.exec_set_env = &x;
	if (vmf__agent__agent_request__get_packed_size(&req) + 16 > VMF_AGENT_MAX_FRAME)
		return vmf_err(err, E2BIG, "the sandbox environment does not fit one agent frame (%u bytes)",
			       VMF_AGENT_MAX_FRAME - 16);
	Vmf__Agent__AgentReply *rep;
	int r = agent_client_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK, &rep, agent_client_deadline(timeout_ms), err);
	if (r == 0)
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

/* The agent's table holds at most this many (its PROCS_MAX). */
#define TABLE_MAX 256u

static void
entry_from(struct vmf_exec_entry *d, const Vmf__Agent__ExecEntry *e)
{
	memset(d, 0, sizeof(*d));
	d->exec_id = e->exec_id;
	d->pid = e->pid;
	vmf_escape(e->tag, d->tag, sizeof(d->tag), 0);
	size_t off = 0;
	for (size_t i = 0; i < e->n_argv && off + 2 < sizeof(d->cmd); i++) {
		if (i)
			d->cmd[off++] = ' ';
		vmf_escape(e->argv[i], d->cmd + off, sizeof(d->cmd) - off, 0);
		off += strlen(d->cmd + off);
	}
	off = 0;
	for (size_t i = 0; i < e->n_argv; i++) {
		char one[sizeof(d->args)];
		vmf_escape(e->argv[i], one, sizeof(one), 0);
		size_t k = strlen(one) + 1;
		if (off + k > sizeof(d->args))
			break;
		memcpy(d->args + off, one, k);
		off += k;
		d->nargs++;
	}
	vmf_escape(e->cwd, d->cwd, sizeof(d->cwd), 0);
	d->tty = e->tty;
	d->keep = e->keep;
	d->attached = e->attached;
	d->exited = e->exited;
	d->exit_code = e->exit_code;
	d->signal = e->signal;
	d->dropped = e->dropped;
}

int
vmf_client_exec_list(struct vmf_client_agent *a, struct vmf_exec_entry **out, size_t *n, int timeout_ms,
		     struct vmf_error *err)
{
	*out = NULL;
	*n = 0;
	struct vmf_exec_entry *v = calloc(TABLE_MAX, sizeof(*v));
	if (!v)
		return vmf_err(err, ENOMEM, "out of memory for the process table");
	int64_t deadline = agent_client_deadline(timeout_ms);
	size_t have = 0;
	for (;;) {
		Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
		Vmf__Agent__ExecList x = VMF__AGENT__EXEC_LIST__INIT;
		x.skip = (uint32_t)have;
		req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_LIST;
		req.exec_list = &x;
		Vmf__Agent__AgentReply *rep;
		int r = agent_client_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_EXEC_TABLE, &rep, deadline, err);
		if (r < 0) {
			free(v);
			return r;
		}
		const Vmf__Agent__ExecTable *t = rep->exec_table;
		if (t->n_entries > TABLE_MAX - have || (t->more && t->n_entries == 0)) {
			r = vmf_err(err, EPROTO, "the agent on %s lists %s processes, more than its table holds (%u)",
				    a->path, t->more ? "ever more" : "too many", TABLE_MAX);
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
			free(v);
			return r;
		}
		for (size_t i = 0; i < t->n_entries; i++)
			entry_from(&v[have++], t->entries[i]);
		bool more = t->more;
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
		if (!more)
			break;
	}
	*out = v;
	*n = have;
	return 0;
}

int
vmf_client_exec_attach(struct vmf_client_agent *a, uint64_t exec_id, int pid, const char *tag,
		       uint32_t output_window, uint64_t *out_id, int *out_pid, int timeout_ms,
		       struct vmf_error *err)
{
	*out_id = 0;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecAttach x = VMF__AGENT__EXEC_ATTACH__INIT;
	x.exec_id = exec_id;
	x.pid = pid;
	x.tag = (char *)(tag ? tag : "");
	x.output_window = output_window;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_ATTACH;
	req.exec_attach = &x;
	if (strlen(x.tag) > 64)
		return vmf_err(err, EINVAL, "a process tag has at most 64 bytes");
	int r = started_call(a, &req, output_window, out_id, out_pid, timeout_ms, err);
	if (r == 0 && exec_id && *out_id != exec_id) {
		r = vmf_err(err, EPROTO, "the agent on %s attached exec %llu when %llu was asked for", a->path,
			    (unsigned long long)*out_id, (unsigned long long)exec_id);
		exec_forget(a, *out_id);
		*out_id = 0;
	}
	return r;
}
