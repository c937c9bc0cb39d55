/* vmfactory exec: a command in a handed-out VM.  The daemon is asked once
 * (Inspect) where the VM's agent is; from then on the CLI talks to the
 * agent directly through the client library, the daemon out of the data
 * path.  stdin is forwarded within the agent's window, output written to
 * ours before more is asked for: both directions are back-pressured.
 *
 * Exit status: the command's; 128+N when signal N ended it; 124 when it
 * timed out (--timeout); 127 no such command, 126 it could not be started
 * (cwd, user); 125 vmfactory could not run it (daemon, agent, permission)
 * or lost it (the agent's connection closed, the agent broke the protocol
 * or said nothing for --timeout plus EXEC_GRACE_MS, or the command did not
 * end within SIGNAL_GRACE_MS of a signal passed on); 2 a usage error.
 *
 * The guest may be hostile: whatever its agent sends, this command ends
 * within its --timeout and a grace, within a grace after a first signal,
 * and at once on a second one; its memory stays within the library's
 * bounds (common/agentconn.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"
#include "frame.h"

#define EXIT_EXEC_FAILED 125
#define EXIT_CANNOT_START 126
#define EXIT_NOT_FOUND 127
#define EXIT_TIMED_OUT 124
#define MAX_ENV 32
/* After --timeout, how long the agent may take to report the kill. */
#define EXEC_GRACE_MS 5000
/* After a signal passed on, how long the command may take to end. */
#define SIGNAL_GRACE_MS 10000

static int sig_pipe[2] = { -1, -1 };
static struct termios saved_tio;
static volatile sig_atomic_t raw_mode;
static volatile sig_atomic_t stops;      /* terminating signals received */

static void
restore_tty(void)
{
	if (raw_mode)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
	raw_mode = false;
}

/* The second SIGINT, SIGTERM, SIGHUP or SIGQUIT ends this command here,
 * whatever it is waiting for (a call to an agent that does not answer):
 * closing the connection, as the exit does, kills the command in the
 * guest.  The first is passed on to the command through the pipe. */
static void
on_signal(int sig)
{
	int e = errno;
	if (sig != SIGWINCH && ++stops >= 2) {
		static const char msg[] = "vmfactory: a second signal: leaving without the command's exit status "
					  "(it is killed in the guest)\n";
		if (raw_mode)
			tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
		if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0) {
			/* Nothing more to say it with. */
		}
		_exit(128 + sig);
	}
	unsigned char c = (unsigned char)sig;
	if (write(sig_pipe[1], &c, 1) < 0) {
		/* Full: the signals already queued say enough. */
	}
	errno = e;
}

static void
waiting(void *arg)
{
	fprintf(stderr, "vmfactory: VM %s: another client is using its agent port; waiting for it to finish\n",
		(const char *)arg);
}

static int
exec_fail(const struct vmf_error *e)
{
	restore_tty();
	print_error("%s", e->msg);
	return EXIT_EXEC_FAILED;
}

static int
ms_left(int64_t deadline)
{
	if (deadline < 0)
		return -1;
	int64_t left = deadline - vmf_now_ms();
	return left <= 0 ? 0 : left > 60000 ? 60000 : (int)left;
}

/* --user UID[:GID], numeric: the guest has no user database to ask. */
static int
parse_user(const char *v, struct vmf_exec_opts *o)
{
	char *end;
	errno = 0;
	unsigned long u = strtoul(v, &end, 10), g = u;
	if (errno || end == v || v[0] == '-' || u >= 4294967295ul)
		return -1;
	if (*end == ':') {
		const char *gs = end + 1;
		g = strtoul(gs, &end, 10);
		if (errno || end == gs || gs[0] == '-' || g >= 4294967295ul)
			return -1;
	}
	if (*end)
		return -1;
	o->set_user = 1;
	o->uid = (uint32_t)u;
	o->gid = (uint32_t)g;
	return 0;
}

static int
write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			struct pollfd pf = { .fd = fd, .events = POLLOUT };
			poll(&pf, 1, -1);
			continue;
		}
		if (w < 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int
cmd_exec(const struct cmd *cmd, struct args *a)
{
	const char *vm_id = a->pos[0];
	struct vmf_exec_opts o = {0};
	const char *env[MAX_ENV + 1];
	size_t nenv = 0;
	unsigned timeout = 0;
	if (num(a, "timeout", &timeout, cmd))
		return EXIT_USAGE;
	for (int i = 0; i < a->n; i++)
		if (!strcmp(a->names[i], "env")) {
			if (!strchr(a->vals[i], '=') || a->vals[i][0] == '=')
				return usage_error(cmd, "--env needs KEY=VALUE, got '%s'", a->vals[i]);
			env[nenv++] = a->vals[i];
		}
	env[nenv] = NULL;
	if (opt(a, "user") && parse_user(opt(a, "user"), &o) < 0)
		return usage_error(cmd, "--user needs UID or UID:GID (numbers), got '%s'", opt(a, "user"));
	o.argv = (const char *const *)a->pos + 1;
	o.env = nenv ? env : NULL;
	o.cwd = opt(a, "cwd");
	o.timeout_ms = timeout * 1000;
	o.tty = flag(a, "tty");
	if (o.tty) {
		struct winsize ws;
		if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 || ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0)
			o.rows = ws.ws_row, o.cols = ws.ws_col;
	}

	/* Where the agent is, from the daemon: it also decides whether this
	 * peer may see the VM at all. */
	struct vmf_client *c = NULL;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_connect(a->socket, &c, &e);
	if (rc == 0)
		rc = vmf_client_inspect(c, vm_id, &r, CALL_TIMEOUT_MS, &e);
	vmf_client_close(c);
	if (rc < 0)
		return exec_fail(&e);
	const Vmf__Control__VmInfo *vm = r->inspect->vm;
	if (strcmp(vm->state, "assigned") != 0) {
		vmf_err(&e, EINVAL, "VM %s is %s%s%s: exec runs in handed-out (assigned) VMs only", vm_id, vm->state,
			vm->exit ? ": " : "", vm->exit ? vm->exit->detail : "");
		vmf__control__reply__free_unpacked(r, NULL);
		return exec_fail(&e);
	}
	/* With --timeout, the whole exec has one deadline: the agent kills
	 * the command then and reports it; one that does not (a hostile or
	 * stuck guest) is given EXEC_GRACE_MS more, then this command ends. */
	int64_t deadline = timeout ? vmf_now_ms() + (int64_t)timeout * 1000 + EXEC_GRACE_MS : -1;
	struct vmf_client_agent *ag = NULL;
	/* Without a deadline: on a QEMU VM whose port another client holds,
	 * this one waits its turn (said after a second); ^C gives up. */
	rc = vmf_client_agent_connect(vm->agent_socket, vm->agent_transport, vm->agent_vsock_port, ms_left(deadline),
				      waiting, (void *)vm_id, &ag, &e);
	vmf__control__reply__free_unpacked(r, NULL);
	if (rc < 0)
		return exec_fail(&e);

	uint64_t id;
	rc = vmf_client_exec_start(ag, &o, &id, deadline < 0 ? CALL_TIMEOUT_MS : ms_left(deadline), &e);
	if (rc < 0) {
		vmf_client_agent_close(ag);
		print_error("%s", e.msg);
		if (rc == -E2BIG || rc == -EPROTO || rc == -EPIPE || rc == -ETIMEDOUT || rc == -ENOBUFS)
			return EXIT_EXEC_FAILED;
		return rc == -ENOENT && !strstr(e.msg, "directory") ? EXIT_NOT_FOUND : EXIT_CANNOT_START;
	}

	if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) == 0) {
		struct sigaction sa = { .sa_handler = on_signal };
		sigemptyset(&sa.sa_mask);
		sa.sa_flags = SA_RESTART;
		int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH };
		for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
			sigaction(sigs[i], &sa, NULL);
	}
	signal(SIGPIPE, SIG_IGN);
	if (o.tty && isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved_tio) == 0) {
		struct termios raw = saved_tio;
		cfmakeraw(&raw);
		if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) == 0)
			raw_mode = true;
	}

	static uint8_t buf[65536];
	bool stdin_open = true, out_gone[2] = { false, false };
	int status = EXIT_EXEC_FAILED;
	int64_t grace = -1;          /* a signal was passed on: the command ends by then */
	int first_sig = 0;
	for (;;) {
		/* What is buffered first, then wait for more. */
		struct vmf_exec_event ev;
		rc = vmf_client_agent_next_event(ag, &ev, 0, &e);
		if (rc < 0)
			break;
		if (ev.type == VMF_EXEC_EV_OUTPUT && ev.exec_id == id) {
			/* Blocking: a slow reader of ours holds the process back. */
			int fd = ev.fd == 2 ? STDERR_FILENO : STDOUT_FILENO;
			if (!out_gone[ev.fd == 2] && write_all(fd, ev.data, ev.len) < 0) {
				/* Ours is closed (`| head`): as for a local pipe,
				 * the writer gets SIGPIPE, once; what it still
				 * writes is dropped. */
				out_gone[ev.fd == 2] = true;
				if (ev.fd == 1)
					vmf_client_exec_signal(ag, id, SIGPIPE, &e);
			}
			continue;
		}
		if (ev.type == VMF_EXEC_EV_EXIT && ev.exec_id == id) {
			restore_tty();
			if (ev.timed_out) {
				fprintf(stderr, "vmfactory: %s timed out after %u s and was killed\n", o.argv[0], timeout);
				status = EXIT_TIMED_OUT;
			} else {
				status = ev.signal ? 128 + ev.signal : ev.exit_code;
			}
			break;
		}
		if (ev.type == VMF_EXEC_EV_ERROR) {
			/* stdin after the process closed it: not ours to report. */
			if (ev.error_code != ESRCH)
				print_error("the agent reports: %s", ev.message);
			continue;
		}
		if (ev.type != VMF_EXEC_EV_NONE)
			continue;
		int64_t now = vmf_now_ms();
		if (deadline >= 0 && now >= deadline) {
			vmf_err(&e, ETIMEDOUT, "VM %s: its agent did not report the end of %s within --timeout %u s and "
				"%d s more; giving up (closing the connection kills it in the guest)", vm_id, o.argv[0],
				timeout, EXEC_GRACE_MS / 1000);
			rc = -ETIMEDOUT;
			break;
		}
		if (grace >= 0 && now >= grace) {
			vmf_err(&e, ETIMEDOUT, "VM %s: %s did not end within %d s of signal %d; giving up (closing the "
				"connection kills it in the guest)", vm_id, o.argv[0], SIGNAL_GRACE_MS / 1000, first_sig);
			rc = -ETIMEDOUT;
			break;
		}
		int64_t until = grace >= 0 && (deadline < 0 || grace < deadline) ? grace : deadline;
		struct pollfd p[3];
		nfds_t np = 0;
		p[np++] = (struct pollfd){ .fd = vmf_client_agent_fd(ag), .events = POLLIN };
		if (vmf_client_agent_flush(ag, &e) > 0)
			p[0].events |= POLLOUT;
		int is = -1, ip = -1;
		if (stdin_open && vmf_client_exec_stdin_room(ag, id) > 0) {
			is = (int)np;
			p[np++] = (struct pollfd){ .fd = STDIN_FILENO, .events = POLLIN };
		}
		if (sig_pipe[0] >= 0) {
			ip = (int)np;
			p[np++] = (struct pollfd){ .fd = sig_pipe[0], .events = POLLIN };
		}
		if (poll(p, np, ms_left(until)) < 0 && errno != EINTR) {
			vmf_err_sys(&e, errno, "poll");
			rc = -1;
			break;
		}
		if (is >= 0 && p[is].revents) {
			size_t room = vmf_client_exec_stdin_room(ag, id);
			ssize_t n = read(STDIN_FILENO, buf, room < sizeof(buf) ? room : sizeof(buf));
			if (n > 0) {
				vmf_client_exec_input(ag, id, buf, (size_t)n, 0, &e);
			} else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
				vmf_client_exec_input(ag, id, NULL, 0, 1, &e);
				stdin_open = false;
			}
		}
		if (ip >= 0 && p[ip].revents) {
			unsigned char sig;
			while (read(sig_pipe[0], &sig, 1) == 1) {
				struct winsize ws;
				if (sig == SIGWINCH) {
					if (o.tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0)
						vmf_client_exec_resize(ag, id, ws.ws_row, ws.ws_col, &e);
					continue;
				}
				if (grace < 0) {
					grace = vmf_now_ms() + SIGNAL_GRACE_MS;
					first_sig = sig;
				}
				vmf_client_exec_signal(ag, id, sig, &e);
			}
		}
	}
	if (rc == -EPIPE)
		vmf_err(&e, EPIPE, "VM %s: the connection to its agent closed before %s ended (the VM stopped, was "
			"released or reset, or its agent restarted): its exit status is unknown", vm_id, o.argv[0]);
	else if (rc < 0 && rc != -ETIMEDOUT)
		vmf_error_prefix(&e, "VM %s", vm_id);
	restore_tty();
	vmf_client_agent_close(ag);
	if (rc < 0)
		return exec_fail(&e);
	return status;
}
