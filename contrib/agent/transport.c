/* The guest's transports: the virtio-serial ports "agent" (the VM owner's:
 * what a handed-out VM's agent_socket reaches) and "vmf" (the daemon's
 * private one: warm-up, hand-out, inspect), so that neither holds the
 * other out of a QEMU chardev that serves one host connection at a time;
 * and AF_VSOCK port 1024 for Firecracker and Cloud Hypervisor guests, which
 * have no virtio-serial port (their hosts connect through hybrid vsock,
 * "CONNECT 1024").
 *
 * A port's host comes and goes (template save, clone restore, daemon
 * restart): while it is away the port polls POLLHUP at once, so polling it
 * would spin.  Instead the agent blocks on a signalfd for SIGIO, which
 * virtio_console sends to the owner of an O_ASYNC port on every host
 * connect/disconnect (and on incoming data).  No timers, no sleeps: a
 * resumed clone whose host socket is new answers within milliseconds.
 *
 * The vsock listener is served by a child process with the same poll loop,
 * up to CONNS_MAX connections at once (the daemon's and the owner's).
 * After a snapshot restore the VMM resets its vsock connections: the stale
 * ones read EOF or ECONNRESET and are dropped, and one that is never reset
 * is the oldest, closed when a connection beyond the limit arrives.  The
 * child dies with the agent (PR_SET_PDEATHSIG), so init's restart loop
 * restarts both.  Guest-local vsock peers (CID 1, through vsock_loopback)
 * are refused unless --vsock-allow-local: only the host may drive a root
 * agent. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"

/* How long to wait at boot for virtio_console to announce the port, and
 * then for the daemon's port, announced with it. */
#define PORT_WAIT_MS 10000
#define DAEMON_PORT_WAIT_MS 2000
/* How long a new agent retries a vsock port still held by the listener of
 * the agent it replaces (that one dies with its parent, asynchronously). */
#define VSOCK_BIND_RETRY_MS 2000

static int
find_port(const char *want, char *dev, size_t n)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *de;
	int r = -1;
	while (d && (de = readdir(d))) {
		char path[300], name[64];
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", de->d_name);
		if (read_small(path, name, sizeof(name)) == 0 && strcmp(name, want) == 0) {
			snprintf(dev, n, "/dev/%s", de->d_name);
			r = 0;
			break;
		}
	}
	if (d)
		closedir(d);
	return r;
}

/* Serves rfd/wfd as a port.  SIGIO on host connect/disconnect is what
 * ends a wait while the host is away (see the top of this file). */
int
transport_add_port(int rfd, int wfd, const char *name, const char *what)
{
	if (fcntl(rfd, F_SETOWN, getpid()) < 0 || fcntl(rfd, F_SETFL, fcntl(rfd, F_GETFL) | O_ASYNC | O_NONBLOCK) < 0 ||
	    (wfd != rfd && fcntl(wfd, F_SETFL, fcntl(wfd, F_GETFL) | O_NONBLOCK) < 0)) {
		logmsg("cannot enable SIGIO on %s: %s", what, strerror(errno));
		return -1;
	}
	return conn_add(CONN_PORT, rfd, wfd, name) ? 0 : -1;
}

static int
open_port(const char *dev, const char *name)
{
	int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		logmsg("cannot open %s: %s", dev, strerror(errno));
		return -1;
	}
	if (transport_add_port(fd, fd, name, dev) < 0) {
		close(fd);
		return -1;
	}
	logmsg("%s serving port '%s' on %s", AGENT_VERSION, name, dev);
	return 0;
}

/* Serves the owner's port ("agent") and the daemon's ("vmf").  The ports'
 * names arrive from the host after the driver probes; the kernel announces
 * each with a uevent ("change" on the port).  The daemon's port comes with
 * the owner's in every VM this agent's hosts start; a VM without it (an
 * older command line) is served on "agent" alone. */
int
transport_serve_ports(void)
{
	char dev[300], dev2[300];
	int64_t deadline = vmf_now_ms() + PORT_WAIT_MS;
	while (find_port(PORT_NAME, dev, sizeof(dev)) < 0) {
		if (!uevent_wait(deadline)) {
			logmsg("no virtio-serial port named '%s' after %d ms", PORT_NAME, PORT_WAIT_MS);
			return 1;
		}
		uevent_drain();
	}
	int64_t deadline2 = vmf_now_ms() + DAEMON_PORT_WAIT_MS;
	bool have2;
	while (!(have2 = find_port(DAEMON_PORT_NAME, dev2, sizeof(dev2)) == 0) && uevent_wait(deadline2))
		uevent_drain();
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGIO);
	sigprocmask(SIG_BLOCK, &set, NULL);
	if (open_port(dev, PORT_NAME) < 0 || (have2 && open_port(dev2, DAEMON_PORT_NAME) < 0))
		return 1;
	if (!have2)
		logmsg("no virtio-serial port named '%s': the daemon shares '%s'", DAEMON_PORT_NAME, PORT_NAME);
	return agent_serve(-1, true);
}

/* A listening vsock socket on VMADDR_CID_ANY:port, or -1 when the guest has
 * no AF_VSOCK (or it fails: logged). */
int
transport_vsock_listen(unsigned port)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		if (errno == EAFNOSUPPORT)
			logmsg("vsock is not served: this guest has no AF_VSOCK (the vsock module is not loaded)");
		else
			logmsg("vsock is not served: cannot create a vsock socket: %s", strerror(errno));
		return -1;
	}
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int64_t deadline = vmf_now_ms() + VSOCK_BIND_RETRY_MS;
	int r;
	while ((r = bind(fd, (struct sockaddr *)&sa, sizeof(sa))) < 0 && errno == EADDRINUSE &&
	       vmf_now_ms() < deadline)
		poll(NULL, 0, 50);
	if (r < 0 || listen(fd, 4) < 0) {
		logmsg("vsock is not served: cannot %s vsock port %u: %s", r < 0 ? "bind" : "listen on", port,
		       strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Serves the vsock listener in a child process, so that neither transport
 * can block or wake the other (an OnlineCpuMem on one waits up to a minute)
 * and the virtio-serial path above stays as it was.  Returns the child's
 * pid, or -1. */
pid_t
transport_vsock_serve(int lfd, unsigned port)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		logmsg("vsock is not served: fork: %s", strerror(errno));
		close(lfd);
		return -1;
	}
	if (pid > 0) {
		close(lfd);
		return pid;
	}
	/* It dies with the agent: init restarts the whole agent, and the new
	 * one's listener needs the port. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(1);
	/* Its own uevent socket: two processes draining one would steal each
	 * other's events. */
	uevent_close();
	uevent_open();
	logmsg("%s serving vsock port %u", AGENT_VERSION, port);
	_exit(agent_serve(lfd, false));
}
