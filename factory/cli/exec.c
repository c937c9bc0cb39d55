/* vmfactory exec: a command in a handed-out VM.  The daemon is asked once
 * (Inspect) where the VM's agent is; from then on the CLI talks to the
 * agent directly through the client library, the daemon out of the data
 * path.  stdin is forwarded within the agent's window, output written to
 * ours before more is asked for: both directions are back-pressured.
 *
 * Exit status: the command's; 128+N when signal N ended it; 124 when it
 * timed out (--timeout); 127 no such command, 126 it could not be started
 * (cwd, user); 125 vmfactory could not run it (daemon, agent, permission);
 * 2 a usage error. */
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

static int sig_pipe[2] = { -1, -1 };
static struct termios saved_tio;
static bool raw_mode;

static void
restore_tty(void)
{
	if (raw_mode)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
	raw_mode = false;
}

static void
on_signal(int sig)
{
	int e = errno;
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
	fprintf(stderr, "vmfactory: %s\n", e->msg);
	return EXIT_EXEC_FAILED;
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
	struct vmf_client_agent *ag = NULL;
	/* No deadline: on a QEMU VM whose port another client holds, this one
	 * waits its turn (said after a second); ^C gives up. */
	rc = vmf_client_agent_connect(vm->agent_socket, vm->agent_transport, vm->agent_vsock_port, -1, waiting,
				      (void *)vm_id, &ag, &e);
	vmf__control__reply__free_unpacked(r, NULL);
	if (rc < 0)
		return exec_fail(&e);

	uint64_t id;
	rc = vmf_client_exec_start(ag, &o, &id, CALL_TIMEOUT_MS, &e);
	if (rc < 0) {
		vmf_client_agent_close(ag);
		fprintf(stderr, "vmfactory: %s\n", e.msg);
		if (rc == -E2BIG)
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
				fprintf(stderr, "vmfactory: the agent reports: %s\n", ev.message);
			continue;
		}
		if (ev.type != VMF_EXEC_EV_NONE)
			continue;
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
		if (poll(p, np, -1) < 0 && errno != EINTR) {
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
			unsigned char s;
			while (read(sig_pipe[0], &s, 1) == 1) {
				struct winsize ws;
				if (s == SIGWINCH && o.tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0)
					vmf_client_exec_resize(ag, id, ws.ws_row, ws.ws_col, &e);
				else if (s != SIGWINCH)
					vmf_client_exec_signal(ag, id, s, &e);
			}
		}
	}
	restore_tty();
	vmf_client_agent_close(ag);
	if (rc < 0)
		return exec_fail(&e);
	return status;
}
