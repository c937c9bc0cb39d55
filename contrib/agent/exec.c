/* Exec sessions after their start (exec_spawn.c): output read within the
 * host's credit and while the connection's reply queue is below OUTQ_HIGH,
 * stdin buffered up to its window, so a process writing gigabytes blocks
 * on its pipe and nothing grows; the host's ExecInput, ExecWindow,
 * ExecSignal, ExecResize and ExecReset; the exit frame after all output.
 * A connection that ends kills the process groups it started. */
#include <errno.h>
#include <signal.h>
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
proc_find(const struct conn *c, uint64_t id)
{
	for (struct proc *p = procs; p; p = p->next)
		if (p->c == c && p->id == id)
			return p;
	return NULL;
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

/* Its processes are reaped (and freed) when they exit. */
void
exec_conn_gone(struct conn *c)
{
	for (struct proc *p = procs; p; p = p->next) {
		if (p->c != c)
			continue;
		proc_kill(p, SIGKILL);
		proc_close_fds(p);
		p->c = NULL;
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
	free(p);
	n_procs--;
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

void
exec_end_all(void)
{
	while (procs) {
		if (procs->pid > 0 && !procs->exited)
			while (waitpid(procs->pid, NULL, 0) < 0 && errno == EINTR)
				;
		proc_free(procs);
	}
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
	size_t want = p->credit[fd] < sizeof(chunk) ? (size_t)p->credit[fd] : sizeof(chunk);
	if (want == 0)
		return;
	ssize_t n = read(*fdp, chunk, want);
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
			p->in_ack += (uint32_t)p->inlen;
			p->inlen = 0;
			if (!p->tty)
				close_fd(&p->in_fd);
			return;
		}
		memmove(p->inbuf, p->inbuf + w, p->inlen - (size_t)w);
		p->inlen -= (size_t)w;
		p->in_ack += (uint32_t)w;
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
	if (!p->c) {
		if (p->exited)
			proc_free(p);
		return;
	}
	if (p->deadline && now >= p->deadline && !p->exited && !p->timed_out) {
		p->timed_out = true;
		proc_kill(p, SIGKILL);
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
	if (p->exited && p->out_fd < 0 && p->err_fd < 0) {
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
		if (p->c && p->deadline && !p->exited && !p->timed_out) {
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
		if (!p->c || !conn_accepts_output(p->c))
			continue;
		if (p->in_fd >= 0 && p->inlen > 0 && !p->tty) {
			pv[np] = (struct pollfd){ .fd = p->in_fd, .events = POLLOUT };
			role[np] = ROLE_STDIN, who[np++] = p;
		}
		short tty_out = p->tty && p->inlen > 0 && p->out_fd >= 0 ? POLLOUT : 0;
		if (p->out_fd >= 0 && (p->credit[1] > 0 || tty_out)) {
			pv[np] = (struct pollfd){ .fd = p->out_fd,
						  .events = (short)((p->credit[1] > 0 ? POLLIN : 0) | tty_out) };
			role[np] = ROLE_STDOUT, who[np++] = p;
		}
		if (p->err_fd >= 0 && p->credit[2] > 0) {
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
	if (!p->c)
		return;
	if (role == ROLE_STDIN || (role == ROLE_STDOUT && (re & POLLOUT)))
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
proc_of_call(struct agent_call *call, uint64_t id)
{
	struct proc *p = proc_find(call->conn, id);
	if (!p)
		reply_error(call, ESRCH, "no process with exec id %llu on this connection (it exited, or never started)",
			    (unsigned long long)id);
	return p;
}

/* Answered only when it fails. */
void
exec_input(struct agent_call *call)
{
	const Vmf__Agent__ExecInput *in = call->req->exec_input;
	struct proc *p = proc_of_call(call, in->exec_id);
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
	struct proc *p = proc_of_call(call, w->exec_id);
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
	struct proc *p = proc_of_call(call, s->exec_id);
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
	struct proc *p = proc_of_call(call, z->exec_id);
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
	reply_ack(call);
}
