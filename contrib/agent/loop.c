/* The agent's one poll loop: host connections, the processes they start,
 * a listener's new connections, and signals (SIGCHLD reaps, SIGIO wakes a
 * port whose host came back).  Nothing in it sleeps on a timer. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>
#include <unistd.h>

#include "agent.h"

/* Accepts the next connection on a listening socket (non-blocking, close
 * on exec); -1 when there is none to take or it was refused.  A guest-local
 * vsock peer (CID 1, reached through vsock_loopback) is refused unless
 * --vsock-allow-local: the agent runs as root and only the host may drive
 * it. */
static int
accept_peer(int lfd)
{
	struct sockaddr_storage sa;
	socklen_t len = sizeof(sa);
	int fd = accept4(lfd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
			logmsg("accept: %s", strerror(errno));
		return -1;
	}
	if (sa.ss_family == AF_VSOCK) {
		const struct sockaddr_vm *vm = (const struct sockaddr_vm *)&sa;
		if (vm->svm_cid == VMADDR_CID_LOCAL && !agent_options.vsock_allow_local) {
			logmsg("refused a vsock connection from CID %u port %u: only the host may connect "
			       "(a guest-local peer needs --vsock-allow-local)", vm->svm_cid, vm->svm_port);
			close(fd);
			return -1;
		}
	}
	return fd;
}

static void
accept_new(int lfd)
{
	int fd = accept_peer(lfd);
	if (fd < 0)
		return;
	unsigned n = 0;
	struct conn *oldest = NULL;
	for (struct conn *c = conns; c; c = c->next)
		if (c->kind == CONN_ACCEPTED && !c->closed) {
			n++;
			oldest = c;   /* new connections go to the front */
		}
	/* After a snapshot restore the VMM resets its vsock connections and
	 * the host connects again; a stale one that was never reset is the
	 * oldest, and must not keep the new host out. */
	if (n >= CONNS_MAX && oldest) {
		logmsg("%u connections open: the oldest is closed for the new one", n);
		conn_ended(oldest);
	}
	if (!conn_add(CONN_ACCEPTED, fd, fd, "socket"))
		close(fd);
}

static int
poll_timeout(int64_t now)
{
	int64_t t = exec_next_timeout(now);
	if (stop_poweroff_pending())
		t = t < 0 || t > 20 ? 20 : t;
	return t > 60000 ? 60000 : (int)t;
}

/* The end of a test stream: its fd is the caller's, its processes were
 * killed (conn_ended) and are reaped here, so that a caller that serves
 * again (the fuzz target runs main over and over) starts clean. */
static void
serve_end(int sfd)
{
	while (conns) {
		conns->rfd = conns->wfd = -1;
		conn_free(conns);
	}
	exec_end_all();
	files_watch_end_all();
	close(sfd);
}

/* What a pollfd stands for; exec's own roles come after these. */
enum { POLL_CONN = -1, POLL_SIGNALS = -2, POLL_LISTENER = -3, POLL_WATCH = -4 };

/* One connection's poll events: bytes in, queued bytes out, its end. */
static bool
conn_poll_event(struct conn *c, short re)
{
	bool gone = false;
	if (re & POLLOUT)
		gone = conn_write_queued(c) < 0;
	if (!gone && (re & POLLIN) && c->ilen == 0) {
		ssize_t n = read(c->rfd, c->ibuf, sizeof(c->ibuf));
		if (n > 0)
			c->ilen = (size_t)n, c->ioff = 0;
		else if (n == 0 || (errno != EINTR && errno != EAGAIN))
			/* EOF (a port reads 0 while its host is away) or an
			 * error. */
			gone = true;
	} else if (!gone && (re & (POLLHUP | POLLERR)) && !(re & POLLIN)) {
		/* A port whose host went away polls POLLHUP, never POLLIN
		 * or POLLOUT. */
		gone = true;
	}
	return gone && conn_ended(c);
}

/* Ports (virtio-serial): a host that goes away resets the port's state and
 * kills its processes; while every port's host is away the agent sleeps on
 * SIGIO (sigio true: the caller blocked it and armed O_ASYNC).  SIGCHLD,
 * through the same signalfd, reaps exec processes.  The listener is polled
 * only for POLLIN, so an idle agent costs nothing. */
int
agent_serve(int lfd, bool sigio)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	if (sigio)
		sigaddset(&set, SIGIO);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		logmsg("signalfd: %s", strerror(errno));
		return 1;
	}
	for (;;) {
		int64_t now = vmf_now_ms();
		stop_poweroff_when_answered(now);
		for (struct conn *c = conns, *nx; c; c = nx) {
			nx = c->next;
			if (c->closed) {
				conn_free(c);
				continue;
			}
			/* Parse what is buffered before waiting for more. */
			if (c->ioff < c->ilen)
				c->ioff += conn_parse_input(c, c->ibuf + c->ioff, c->ilen - c->ioff);
			if (c->ioff == c->ilen)
				c->ioff = c->ilen = 0;
		}
		exec_progress(now);
		files_watch_progress();

		size_t cap = 2 + CONNS_MAX + 2 + exec_poll_count() + files_watch_poll_count();
		for (struct conn *c = conns; c; c = c->next)
			cap++;
		struct pollfd pv[cap];
		void *who[cap];
		int role[cap];
		nfds_t np = 0;
		pv[np] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		role[np] = POLL_SIGNALS, who[np++] = NULL;
		if (lfd >= 0) {
			pv[np] = (struct pollfd){ .fd = lfd, .events = POLLIN };
			role[np] = POLL_LISTENER, who[np++] = NULL;
		}
		for (struct conn *c = conns; c; c = c->next) {
			if (c->away || c->closed || c->rfd < 0)
				continue;
			short ev = 0;
			if (c->ilen == 0 && conn_accepts_output(c))
				ev |= POLLIN;
			if (conn_queued(c) > 0)
				ev |= POLLOUT;
			/* A read and a write fd (--stdio) are polled apart. */
			if (c->wfd != c->rfd && (ev & POLLOUT)) {
				pv[np] = (struct pollfd){ .fd = c->wfd, .events = POLLOUT };
				role[np] = POLL_CONN, who[np++] = c;
				ev &= (short)~POLLOUT;
			}
			pv[np] = (struct pollfd){ .fd = c->rfd, .events = ev };
			role[np] = POLL_CONN, who[np++] = c;
		}
		np = exec_poll_add(pv, who, role, np);
		np = files_watch_poll_add(pv, who, role, POLL_WATCH, np);
		if (poll(pv, np, poll_timeout(now)) < 0) {
			if (errno == EINTR)
				continue;
			logmsg("poll: %s", strerror(errno));
			return 1;
		}
		bool sig = false, ended = false;
		for (nfds_t i = 0; i < np; i++) {
			short re = pv[i].revents;
			if (!re)
				continue;
			if (role[i] == POLL_SIGNALS) {
				sig = true;
			} else if (role[i] == POLL_LISTENER) {
				accept_new(lfd);
			} else if (role[i] == POLL_CONN) {
				struct conn *c = who[i];
				if (!c->away && !c->closed)
					ended = conn_poll_event(c, re) || ended;
			} else if (role[i] == POLL_WATCH) {
				files_watch_poll_event(who[i]);
			} else {
				exec_poll_event(who[i], role[i], re);
			}
		}
		if (ended) {
			serve_end(sfd);
			return 0;
		}
		if (sig) {
			/* Drained after the ports were looked at: a host that
			 * came back since poll() returned leaves its SIGIO here,
			 * and any later one wakes the next poll(). */
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				;
			for (struct conn *c = conns; c; c = c->next)
				c->away = false;
			exec_reap();
		}
	}
}
