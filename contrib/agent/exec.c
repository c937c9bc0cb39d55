/* Exec sessions after their start (exec_spawn.c): output read within the
 * host's credit and while the connection's reply queue is below OUTQ_HIGH,
 * stdin buffered up to its window, so a process writing gigabytes blocks
 * on its pipe and nothing grows; the host's ExecInput, ExecWindow,
 * ExecSignal, ExecResize and ExecReset; the exit frame after all output.
 * A connection that ends kills the process groups it started, but for the
 * kept ones (ExecStart.keep): those are detached, their output read and
 * held (the last HELD_MAX bytes per stream, so a detached process never
 * blocks on its pipe and nothing grows), their exit kept in the table
 * until a connection attaches (ExecAttach) or the table needs the room. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exec.h"

static struct proc *procs;
static uint64_t next_exec_id;
static unsigned n_procs;

/* Roles of a process's fds in the poll loop (loop.c's are negative). */
enum { ROLE_STDIN = 1, ROLE_STDOUT = 2, ROLE_STDERR = 3 };

unsigned
exec_count(void)
{
	return n_procs;
}

uint64_t
exec_adopt(struct proc *p)
{
	p->id = ++next_exec_id;
	p->next = procs;
	procs = p;
	n_procs++;
	return p->id;
}

void
close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static struct proc *
proc_find(const struct conn *c, uint64_t id, bool kept_too)
{
	for (struct proc *p = procs; p; p = p->next)
		if (p->id == id && (p->c == c || (kept_too && p->keep)))
			return p;
	return NULL;
}

static bool
proc_drained(const struct proc *p)
{
	return p->out_fd < 0 && p->err_fd < 0 && !p->held_len[1] && !p->held_len[2];
}

static void
proc_close_fds(struct proc *p)
{
	if (p->in_fd == p->out_fd)
		p->in_fd = -1;   /* a tty's one fd, closed once */
	close_fd(&p->in_fd);
	close_fd(&p->out_fd);
	close_fd(&p->err_fd);
}

/* Its whole process group: a shell's children go with it.  Only while it is
 * unreaped, so the pid cannot belong to someone else. */
static void
proc_kill(struct proc *p, int sig)
{
	if (p->pid > 0 && !p->exited && kill(-p->pid, sig) < 0)
		kill(p->pid, sig);
}

/* Its processes are reaped (and freed) when they exit; the kept ones are
 * detached, and what the host had not acknowledged of their stdin is
 * nobody's to hear of. */
void
exec_conn_gone(struct conn *c)
{
	for (struct proc *p = procs; p; p = p->next) {
		if (p->c != c)
			continue;
		p->c = NULL;
		p->in_ack = 0;
		p->in_orphan = p->inlen;
		if (p->keep)
			continue;
		proc_kill(p, SIGKILL);
		proc_close_fds(p);
	}
}

static void
proc_free(struct proc *p)
{
	for (struct proc **pp = &procs; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	proc_close_fds(p);
	free(p->inbuf);
	for (char **v = p->argv; v && *v; v++)
		free(*v);
	free(p->argv);
	free(p->cwd);
	free(p->held[1]);
	free(p->held[2]);
	free(p);
	n_procs--;
}

bool
exec_evict_one(void)
{
	struct proc *oldest = NULL;
	for (struct proc *p = procs; p; p = p->next)
		if (!p->c && p->exited && proc_drained(p))
			oldest = p;
	if (oldest)
		proc_free(oldest);
	return oldest != NULL;
}

bool
exec_tag_taken(const char *tag)
{
	for (struct proc *p = procs; p; p = p->next)
		if (!strcmp(p->tag, tag) && !(p->exited && !p->c && proc_drained(p)))
			return true;
	return false;
}

/* Output of a detached process: the last HELD_MAX bytes are kept. */
_Static_assert(OUT_CHUNK < HELD_MAX, "a chunk fits the held buffer");
static void
hold_output(struct proc *p, int fd, const uint8_t *data, size_t n)
{
	if (!p->held[fd] && !(p->held[fd] = malloc(HELD_MAX))) {
		p->dropped += n;
		return;
	}
	/* n is at most a chunk, below HELD_MAX. */
	if (p->held_len[fd] + n > HELD_MAX) {
		size_t drop = p->held_len[fd] + n - HELD_MAX;
		memmove(p->held[fd], p->held[fd] + drop, p->held_len[fd] - drop);
		p->held_len[fd] -= drop;
		p->dropped += drop;
	}
	memcpy(p->held[fd] + p->held_len[fd], data, n);
	p->held_len[fd] += n;
}

/* Only the exec processes' own pids: the vsock server is a child of the
 * agent too.  Until it is reaped a process's pid, and with it its group
 * id, cannot be reused: proc_kill relies on that. */
void
exec_reap(void)
{
	for (struct proc *p = procs; p; p = p->next) {
		if (p->pid <= 0 || p->exited)
			continue;
		int st;
		pid_t r = waitpid(p->pid, &st, WNOHANG);
		if (r == p->pid || (r < 0 && errno == ECHILD))
			exec_ledger_remove(p->pid, p->ticks);
		if (r == p->pid) {
			p->exited = true;
			p->status = st;
		} else if (r < 0 && errno == ECHILD) {
			p->exited = true;
			p->status = 0;
		}
	}
}

static char **sandbox_env;
static void strv_free(char **v);

/* The agent ends: kept processes too (nothing outlives the agent that
 * started it), and a caller that serves again starts clean. */
void
exec_end_all(void)
{
	while (procs) {
		proc_kill(procs, SIGKILL);
		if (procs->pid > 0 && !procs->exited)
			while (waitpid(procs->pid, NULL, 0) < 0 && errno == EINTR)
				;
		proc_free(procs);
	}
	strv_free(sandbox_env);
	sandbox_env = NULL;
}

static void
send_output(struct proc *p, int fd, const uint8_t *data, size_t n)
{
	Vmf__Agent__ExecOutput o = VMF__AGENT__EXEC_OUTPUT__INIT;
	o.exec_id = p->id;
	o.fd = (uint32_t)fd;
	o.data.data = (uint8_t *)data;
	o.data.len = n;
	Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
	r.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_OUTPUT;
	r.exec_output = &o;
	conn_queue_reply(p->c, &r);
}

/* Reads one chunk of a process's output within its credit.  After the
 * process exited, an empty pipe is its end: what its descendants write
 * later is not waited for (a pty waits for EIO instead, since its output
 * may still be on its way through the line discipline). */
static void
read_output(struct proc *p, int *fdp, int fd)
{
	static uint8_t chunk[OUT_CHUNK];
	size_t want = !p->c ? sizeof(chunk) : p->credit[fd] < sizeof(chunk) ? (size_t)p->credit[fd] : sizeof(chunk);
	if (want == 0)
		return;
	ssize_t n = read(*fdp, chunk, want);
	if (n > 0 && !p->c) {
		hold_output(p, fd, chunk, (size_t)n);
		return;
	}
	if (n > 0) {
		p->credit[fd] -= (uint64_t)n;
		send_output(p, fd, chunk, (size_t)n);
		return;
	}
	if (n < 0 && errno == EINTR)
		return;
	if (n < 0 && errno == EAGAIN && !(p->exited && !p->tty))
		return;
	/* EOF, EIO (a pty whose other side is closed) or drained after exit. */
	if (p->tty && fdp == &p->out_fd && p->in_fd == p->out_fd)
		p->in_fd = -1;
	close_fd(fdp);
}

/* Acknowledges n bytes of stdin written or dropped, but for those of a
 * connection that is gone. */
static void
stdin_done(struct proc *p, size_t n)
{
	size_t o = n < p->in_orphan ? n : p->in_orphan;
	p->in_orphan -= o;
	p->in_ack += (uint32_t)(n - o);
}

static void
write_input(struct proc *p)
{
	while (p->inlen > 0 && p->in_fd >= 0) {
		ssize_t w = write(p->in_fd, p->inbuf, p->inlen);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			return;
		if (w < 0) {
			/* EPIPE: it closed its stdin; what was sent is dropped. */
			stdin_done(p, p->inlen);
			p->inlen = 0;
			if (!p->tty)
				close_fd(&p->in_fd);
			return;
		}
		memmove(p->inbuf, p->inbuf + w, p->inlen - (size_t)w);
		p->inlen -= (size_t)w;
		stdin_done(p, (size_t)w);
	}
}

static void
send_exit(struct proc *p)
{
	Vmf__Agent__ExecExit e = VMF__AGENT__EXEC_EXIT__INIT;
	e.exec_id = p->id;
	if (WIFSIGNALED(p->status)) {
		e.exit_code = -1;
		e.signal = WTERMSIG(p->status);
	} else {
		e.exit_code = WEXITSTATUS(p->status);
	}
	e.timed_out = p->timed_out;
	Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
	r.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_EXIT;
	r.exec_exit = &e;
	conn_queue_reply(p->c, &r);
}

/* Everything that moves a process along without an fd event: stdin
 * acknowledgements, a closed stdin, the timeout, its exit frame. */
static void
proc_progress(struct proc *p, int64_t now)
{
	if (p->deadline && now >= p->deadline && !p->exited && !p->timed_out && (p->c || p->keep)) {
		p->timed_out = true;
		proc_kill(p, SIGKILL);
	}
	if (!p->c) {
		p->in_ack = 0;
		/* A kept one's exit waits in the table for an attach. */
		if (p->exited && !p->keep)
			proc_free(p);
		return;
	}
	if (p->in_close && p->inlen == 0 && p->in_fd >= 0) {
		if (p->tty) {
			/* A pty has no half-close: EOF is ^D at a line start. */
			static const uint8_t eot = 4;
			if (write(p->in_fd, &eot, 1) == 1)
				p->in_close = false;
		} else {
			close_fd(&p->in_fd);
		}
	}
	if (!conn_accepts_output(p->c))
		return;
	/* What was held while detached goes first, within the credit. */
	for (int fd = 1; fd <= 2; fd++)
		while (p->held_len[fd] && p->credit[fd] && conn_accepts_output(p->c)) {
			size_t k = p->held_len[fd] < OUT_CHUNK ? p->held_len[fd] : OUT_CHUNK;
			if (k > p->credit[fd])
				k = (size_t)p->credit[fd];
			send_output(p, fd, p->held[fd], k);
			p->credit[fd] -= k;
			memmove(p->held[fd], p->held[fd] + k, p->held_len[fd] - k);
			p->held_len[fd] -= k;
		}
	if (!conn_accepts_output(p->c))
		return;
	if (p->in_ack && (p->in_ack >= STDIN_WINDOW / 4 || p->inlen == 0)) {
		Vmf__Agent__ExecWindow w = VMF__AGENT__EXEC_WINDOW__INIT;
		w.exec_id = p->id;
		w.stdin_bytes = p->in_ack;
		Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_WINDOW;
		r.exec_window = &w;
		conn_queue_reply(p->c, &r);
		p->in_ack = 0;
	}
	/* The exit frame follows all output: both streams at their end. */
	if (p->exited && proc_drained(p)) {
		send_exit(p);
		proc_free(p);
	}
}

void
exec_progress(int64_t now)
{
	for (struct proc *p = procs, *nx; p; p = nx) {
		nx = p->next;
		proc_progress(p, now);
	}
}

int64_t
exec_next_timeout(int64_t now)
{
	int64_t t = -1;
	for (struct proc *p = procs; p; p = p->next)
		if ((p->c || p->keep) && p->deadline && !p->exited && !p->timed_out) {
			int64_t left = p->deadline > now ? p->deadline - now : 0;
			if (t < 0 || left < t)
				t = left;
		}
	return t;
}

size_t
exec_poll_count(void)
{
	return 3 * (size_t)n_procs;
}

nfds_t
exec_poll_add(struct pollfd *pv, void **who, int *role, nfds_t np)
{
	for (struct proc *p = procs; p; p = p->next) {
		if (!p->c && p->keep) {
			/* Detached: read whatever comes, into the held buffers;
			 * stdin it was sent before goes in. */
			if (p->in_fd >= 0 && p->inlen > 0 && !p->tty) {
				pv[np] = (struct pollfd){ .fd = p->in_fd, .events = POLLOUT };
				role[np] = ROLE_STDIN, who[np++] = p;
			}
			if (p->out_fd >= 0) {
				pv[np] = (struct pollfd){ .fd = p->out_fd, .events = POLLIN };
				role[np] = ROLE_STDOUT, who[np++] = p;
			}
			if (p->err_fd >= 0) {
				pv[np] = (struct pollfd){ .fd = p->err_fd, .events = POLLIN };
				role[np] = ROLE_STDERR, who[np++] = p;
			}
			continue;
		}
		if (!p->c || !conn_accepts_output(p->c))
			continue;
		if (p->in_fd >= 0 && p->inlen > 0 && !p->tty) {
			pv[np] = (struct pollfd){ .fd = p->in_fd, .events = POLLOUT };
			role[np] = ROLE_STDIN, who[np++] = p;
		}
		short tty_out = p->tty && p->inlen > 0 && p->out_fd >= 0 ? POLLOUT : 0;
		bool out_in = p->credit[1] > 0 && !p->held_len[1];
		if (p->out_fd >= 0 && (out_in || tty_out)) {
			pv[np] = (struct pollfd){ .fd = p->out_fd,
						  .events = (short)((out_in ? POLLIN : 0) | tty_out) };
			role[np] = ROLE_STDOUT, who[np++] = p;
		}
		if (p->err_fd >= 0 && p->credit[2] > 0 && !p->held_len[2]) {
			pv[np] = (struct pollfd){ .fd = p->err_fd, .events = POLLIN };
			role[np] = ROLE_STDERR, who[np++] = p;
		}
	}
	return np;
}

void
exec_poll_event(void *who, int role, short re)
{
	struct proc *p = who;
	if (!p->c && !p->keep)
		return;
	if ((role == ROLE_STDIN || (role == ROLE_STDOUT && (re & POLLOUT))))
		write_input(p);
	if (role == ROLE_STDOUT && (re & (POLLIN | POLLHUP | POLLERR)) && p->out_fd >= 0)
		read_output(p, &p->out_fd, 1);
	if (role == ROLE_STDERR && p->err_fd >= 0)
		read_output(p, &p->err_fd, 2);
}

static void
reply_ack(struct agent_call *call)
{
	Vmf__Agent__ExecAck *ack = reply_body(call, sizeof(*ack), NULL);
	if (!ack)
		return;
	vmf__agent__exec_ack__init(ack);
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK;
	call->reply.exec_ack = ack;
}

/* The process a request names, on the requesting connection only. */
static struct proc *
proc_of_call(struct agent_call *call, uint64_t id, bool kept_too)
{
	struct proc *p = proc_find(call->conn, id, kept_too);
	if (!p)
		reply_error(call, ESRCH, "no process with exec id %llu on this connection%s (it exited, or never "
			    "started)", (unsigned long long)id, kept_too ? " or kept" : "");
	return p;
}

/* Answered only when it fails. */
void
exec_input(struct agent_call *call)
{
	const Vmf__Agent__ExecInput *in = call->req->exec_input;
	struct proc *p = proc_of_call(call, in->exec_id, false);
	if (!p)
		return;
	if (in->data.len > STDIN_WINDOW - p->inlen) {
		reply_error(call, ENOBUFS, "stdin data of %zu bytes for exec %llu exceeds its window (%zu bytes free)",
			    in->data.len, (unsigned long long)in->exec_id, STDIN_WINDOW - p->inlen);
		return;
	}
	if (p->in_fd < 0 || p->in_close) {
		/* Its stdin is closed: acknowledged, dropped. */
		p->in_ack += (uint32_t)in->data.len;
	} else if (in->data.len) {
		/* (An EOF alone has no data: no memcpy from NULL.) */
		memcpy(p->inbuf + p->inlen, in->data.data, in->data.len);
		p->inlen += in->data.len;
	}
	if (in->close)
		p->in_close = true;
	call->no_reply = true;
}

/* Answered only when it fails. */
void
exec_window(struct agent_call *call)
{
	const Vmf__Agent__ExecWindow *w = call->req->exec_window;
	struct proc *p = proc_of_call(call, w->exec_id, false);
	if (!p)
		return;
	p->credit[1] += w->stdout_bytes;
	p->credit[2] += w->stderr_bytes;
	call->no_reply = true;
}

void
exec_signal(struct agent_call *call)
{
	const Vmf__Agent__ExecSignal *s = call->req->exec_signal;
	struct proc *p = proc_of_call(call, s->exec_id, true);
	if (!p)
		return;
	if (s->signal < 1 || s->signal > 64) {
		reply_error(call, EINVAL, "signal %d is not a signal number (1 to 64)", s->signal);
		return;
	}
	proc_kill(p, s->signal);
	reply_ack(call);
}

void
exec_resize(struct agent_call *call)
{
	const Vmf__Agent__ExecResize *z = call->req->exec_resize;
	unsigned long long id = (unsigned long long)z->exec_id;
	struct proc *p = proc_of_call(call, z->exec_id, true);
	if (!p)
		return;
	struct winsize ws = { .ws_row = (unsigned short)z->rows, .ws_col = (unsigned short)z->cols };
	if (!p->tty || p->out_fd < 0) {
		reply_error(call, ENOTTY, "exec %llu has no terminal to resize", id);
		return;
	}
	if (z->rows > 0xffff || z->cols > 0xffff || ioctl(p->out_fd, TIOCSWINSZ, &ws) < 0) {
		reply_error(call, EINVAL, "cannot resize the terminal of exec %llu to %ux%u", id, z->rows, z->cols);
		return;
	}
	reply_ack(call);
}

void
exec_reset(struct agent_call *call)
{
	exec_conn_gone(call->conn);
	files_watch_conn_gone(call->conn);
	reply_ack(call);
}

/* ---- the process table: the sandbox environment, list, attach ---- */

static char *const no_env[] = { NULL };

char *const *
exec_sandbox_env(void)
{
	return sandbox_env ? sandbox_env : no_env;
}

static void
strv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

void
exec_set_env(struct agent_call *call)
{
	const Vmf__Agent__ExecSetEnv *x = call->req->exec_set_env;
	size_t bytes = 0;
	if (x->n_env > SANDBOX_ENV_MAX) {
		reply_error(call, E2BIG, "%zu sandbox environment entries (at most %u)", x->n_env, SANDBOX_ENV_MAX);
		return;
	}
	for (size_t i = 0; i < x->n_env; i++) {
		const char *eq = strchr(x->env[i], '=');
		if (!eq || eq == x->env[i]) {
			reply_error(call, EINVAL, "sandbox environment entry '%.60s' is not KEY=VALUE", x->env[i]);
			return;
		}
		bytes += strlen(x->env[i]) + 1;
	}
	if (bytes > SANDBOX_ENV_BYTES) {
		reply_error(call, E2BIG, "the sandbox environment takes %zu bytes (at most %u)", bytes,
			    SANDBOX_ENV_BYTES);
		return;
	}
	char **v = calloc(x->n_env + 1, sizeof(char *));
	for (size_t i = 0; v && i < x->n_env; i++)
		if (!(v[i] = strdup(x->env[i]))) {
			strv_free(v);
			v = NULL;
		}
	if (!v) {
		reply_error(call, ENOMEM, "out of memory for the sandbox environment");
		return;
	}
	strv_free(sandbox_env);
	sandbox_env = v;
	reply_ack(call);
}

static void
table_release(void *body)
{
	Vmf__Agent__ExecTable *t = body;
	for (size_t i = 0; i < t->n_entries; i++)
		free(t->entries[i]);
	free(t->entries);
}

/* A reply frame's room for entries: the frame limit less the envelope's. */
#define TABLE_BYTES ((size_t)VMF_AGENT_MAX_FRAME - 1024)

void
exec_list(struct agent_call *call)
{
	uint32_t skip = call->req->exec_list->skip;
	Vmf__Agent__ExecTable *t = reply_body(call, sizeof(*t), table_release);
	if (!t)
		return;
	vmf__agent__exec_table__init(t);
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_TABLE;
	call->reply.exec_table = t;
	if (!(t->entries = calloc(n_procs ? n_procs : 1, sizeof(*t->entries)))) {
		reply_error(call, ENOMEM, "out of memory for the process table");
		return;
	}
	size_t bytes = 0, i = 0;
	for (struct proc *p = procs; p; p = p->next, i++) {
		if (i < skip)
			continue;
		Vmf__Agent__ExecEntry *e = calloc(1, sizeof(*e));
		if (!e) {
			reply_error(call, ENOMEM, "out of memory for the process table");
			return;
		}
		vmf__agent__exec_entry__init(e);
		e->exec_id = p->id;
		e->pid = p->pid;
		e->tag = p->tag;
		for (e->n_argv = 0; p->argv && p->argv[e->n_argv]; e->n_argv++)
			;
		e->argv = p->argv;
		e->cwd = p->cwd ? p->cwd : "";
		e->tty = p->tty;
		e->keep = p->keep;
		e->attached = p->c != NULL;
		e->exited = p->exited;
		if (p->exited && WIFSIGNALED(p->status)) {
			e->exit_code = -1;
			e->signal = WTERMSIG(p->status);
		} else if (p->exited) {
			e->exit_code = WEXITSTATUS(p->status);
		}
		e->dropped = p->dropped;
		size_t sz = vmf__agent__exec_entry__get_packed_size(e) + 8;
		if (bytes + sz > TABLE_BYTES && t->n_entries) {
			free(e);
			t->more = true;
			break;
		}
		bytes += sz;
		t->entries[t->n_entries++] = e;
	}
}

void
exec_attach(struct agent_call *call)
{
	const Vmf__Agent__ExecAttach *x = call->req->exec_attach;
	int given = (x->exec_id != 0) + (x->pid != 0) + (x->tag[0] != 0);
	if (given != 1) {
		reply_error(call, EINVAL, "ExecAttach names a process by exactly one of exec id, pid or tag (%d given)",
			    given);
		return;
	}
	if (x->output_window > OUTPUT_WINDOW_MAX) {
		reply_error(call, EINVAL, "output window of %u bytes exceeds the limit of %u", x->output_window,
			    OUTPUT_WINDOW_MAX);
		return;
	}
	struct proc *p = procs;
	for (; p; p = p->next)
		if ((x->exec_id && p->id == x->exec_id) || (x->pid && p->pid == x->pid) ||
		    (x->tag[0] && !strcmp(p->tag, x->tag)))
			break;
	char what[TAG_MAX + 40];
	if (x->tag[0])
		snprintf(what, sizeof(what), "tag '%s'", x->tag);
	else if (x->pid)
		snprintf(what, sizeof(what), "pid %d", x->pid);
	else
		snprintf(what, sizeof(what), "exec id %llu", (unsigned long long)x->exec_id);
	if (!p || (!p->keep && p->c != call->conn)) {
		reply_error(call, ESRCH, "no kept process with %s (it was not started with keep, or its exit was "
			    "collected)", what);
		return;
	}
	if (p->c) {
		reply_error(call, p->c == call->conn ? EALREADY : EBUSY, "the process with %s is attached to %s "
			    "connection", what, p->c == call->conn ? "this" : "another");
		return;
	}
	Vmf__Agent__ExecStarted *started = reply_body(call, sizeof(*started), NULL);
	if (!started)
		return;
	p->c = call->conn;
	uint32_t win = x->output_window ? x->output_window : OUTPUT_WINDOW_DEFAULT;
	p->credit[1] = p->credit[2] = win;
	vmf__agent__exec_started__init(started);
	started->exec_id = p->id;
	started->pid = p->pid;
	started->stdin_window = (uint32_t)(STDIN_WINDOW - p->inlen);
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED;
	call->reply.exec_started = started;
}
