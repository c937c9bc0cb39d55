/* vmf-agent: the guest side of proto/agent.proto.
 *
 * Runs in the guest initramfs, served on the guest's transports
 * (transport.c): two virtio-serial ports and, where the guest has vsock,
 * AF_VSOCK port 1024.  One poll loop (loop.c) serves the host connections
 * (conn.c), whose requests the table in dispatch.c hands to the room that
 * serves them: exec*.c, share.c, disks.c, nic.c, identity.c, online.c,
 * stop.c, guest_info.c.
 *
 * Test mode (--fd N or --stdio) serves an already-open stream on the host so
 * that unit tests run this very code; it never touches the host's clock, RNG,
 * CPUs, mounts, hostname or machine id: SetTime and Handout echo the
 * requested time (as --no-set-time does) and hostname, ReseedRng and
 * NewIdentity only validate and sample (NewIdentity makes up a boot id
 * without mounting it, and writes a machine id only to a
 * --machine-id-file given on the command line), OnlineCpuMem and MountShare
 * are refused with EPERM after validation.  --listen-fd N is the same test mode
 * for the listener code: it serves the connections of an already-listening
 * socket (a unit test's unix socket) exactly as the vsock child does, and
 * --port-fds R W for a port: a test plays its host coming and going (a
 * FIFO reads 0 without a writer, SIGIO when it is back).  In test mode exec
 * runs host processes as the test's user, with a ledger only when given one
 * (--exec-ledger). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

struct agent_options agent_options = {
	.share_dir = "/mnt/share",
	.machine_id_file = "/etc/machine-id",
};

/* The sanitizer stage's agent (contrib/agent/meson.build): a guest has no
 * symbolizer (addresses and the build id are reported; the build's binary
 * resolves them) and its console no terminal. */
#ifdef VMF_AGENT_LEAK_CHECK
const char *__asan_default_options(void);
const char *
__asan_default_options(void)
{
	return "symbolize=0:color=never";
}
const char *__ubsan_default_options(void);
const char *
__ubsan_default_options(void)
{
	return "symbolize=0:color=never:print_stacktrace=1";
}
#endif

static int
parse_fd(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < 0 || v > 65535)
		return -1;
	int fd = (int)v;
	return fcntl(fd, F_GETFD) < 0 ? -1 : fd;
}

static void
usage(void)
{
	fprintf(stderr,
		"usage: vmf-agent                  serve the virtio-serial ports '%s' and '" DAEMON_PORT_NAME "' and vsock port %u (in the guest)\n"
		"       vmf-agent --fd N           serve the open stream fd N (test mode)\n"
		"       vmf-agent --stdio          serve stdin/stdout (test mode)\n"
		"       vmf-agent --listen-fd N    serve the connections of the listening socket fd N, several at\n"
		"                                  once (test mode)\n"
		"       vmf-agent --port-fds R W   serve fds R (read) and W (write) as a virtio-serial port: a read\n"
		"                                  of 0 is its host away, SIGIO wakes (test mode)\n"
		"options: --share-dir PATH (default /mnt/share), --no-set-time, --no-exec, --version,\n"
		"         --machine-id-file PATH (default /etc/machine-id; in test mode written only when given),\n"
		"         --vsock-port N (0: no vsock), --vsock-allow-local (accept guest-local vsock peers),\n"
		"         --exec-ledger DIR (where started exec sessions are noted; default " EXEC_LEDGER_GUEST "\n"
		"         in the guest, none in test mode),\n"
		"         --files-root DIR (test mode: file requests only below DIR; none without it)\n",
		PORT_NAME, VSOCK_PORT_DEFAULT);
}

int
main(int argc, char **argv)
{
	int rfd = -1, wfd = -1, lfd = -1, port_rfd = -1, port_wfd = -1;
	unsigned vsock_port = VSOCK_PORT_DEFAULT;
	agent_options.vsock_allow_local = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--fd") && i + 1 < argc) {
			rfd = wfd = parse_fd(argv[++i]);
			if (rfd < 0) {
				fprintf(stderr, "vmf-agent: --fd %s is not an open file descriptor\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--stdio")) {
			rfd = STDIN_FILENO;
			wfd = STDOUT_FILENO;
		} else if (!strcmp(argv[i], "--port-fds") && i + 2 < argc) {
			port_rfd = parse_fd(argv[++i]);
			port_wfd = parse_fd(argv[++i]);
			if (port_rfd < 0 || port_wfd < 0) {
				fprintf(stderr, "vmf-agent: --port-fds %s %s: not two open file descriptors\n", argv[i - 1],
					argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--listen-fd") && i + 1 < argc) {
			lfd = parse_fd(argv[++i]);
			if (lfd < 0) {
				fprintf(stderr, "vmf-agent: --listen-fd %s is not an open file descriptor\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--vsock-port") && i + 1 < argc) {
			char *end;
			unsigned long v = strtoul(argv[++i], &end, 10);
			if (!isdigit((unsigned char)argv[i][0]) || *end != '\0' || v > 0xfffffffeul) {
				fprintf(stderr, "vmf-agent: --vsock-port %s is not a port number (0 to 4294967294)\n",
					argv[i]);
				return 2;
			}
			vsock_port = (unsigned)v;
		} else if (!strcmp(argv[i], "--vsock-allow-local")) {
			agent_options.vsock_allow_local = true;
		} else if (!strcmp(argv[i], "--share-dir") && i + 1 < argc) {
			agent_options.share_dir = argv[++i];
		} else if (!strcmp(argv[i], "--no-exec")) {
			agent_options.no_exec = true;
		} else if (!strcmp(argv[i], "--machine-id-file") && i + 1 < argc) {
			agent_options.machine_id_file = argv[++i];
			agent_options.machine_id_given = true;
		} else if (!strcmp(argv[i], "--no-set-time")) {
			agent_options.no_set_time = true;
		} else if (!strcmp(argv[i], "--files-root") && i + 1 < argc) {
			agent_options.files_root = argv[++i];
		} else if (!strcmp(argv[i], "--exec-ledger") && i + 1 < argc) {
			agent_options.exec_ledger = argv[++i];
		} else if (!strcmp(argv[i], "--version")) {
			puts(AGENT_VERSION);
			return 0;
		} else {
			usage();
			return 2;
		}
	}
	/* A vanished host must not kill the agent. */
	signal(SIGPIPE, SIG_IGN);
	if ((rfd >= 0) + (lfd >= 0) + (port_rfd >= 0) > 1) {
		fprintf(stderr, "vmf-agent: --fd/--stdio, --listen-fd and --port-fds exclude each other\n");
		return 2;
	}
	bool guest = rfd < 0 && lfd < 0 && port_rfd < 0;
	if (guest && !agent_options.exec_ledger) {
		const char *ledger = EXEC_LEDGER_GUEST;
		if ((mkdir("/run", 0755) < 0 && errno != EEXIST) || (mkdir("/run/vmf-agent", 0700) < 0 && errno != EEXIST) ||
		    (mkdir(ledger, 0700) < 0 && errno != EEXIST))
			logmsg("exec ledger %s: %s; processes of an agent that dies will not be killed", ledger,
			       strerror(errno));
		else
			agent_options.exec_ledger = ledger;
	}
	/* What the previous agent started goes before anything is served. */
	exec_ledger_sweep();
	if (rfd >= 0) {
		agent_options.test_mode = agent_options.no_set_time = true;
		fcntl(rfd, F_SETFL, fcntl(rfd, F_GETFL) | O_NONBLOCK);
		if (wfd != rfd)
			fcntl(wfd, F_SETFL, fcntl(wfd, F_GETFL) | O_NONBLOCK);
		if (!conn_add(CONN_STREAM, rfd, wfd, "stream"))
			return 1;
		return agent_serve(-1, false);
	}
	if (port_rfd >= 0) {
		/* A port's host coming and going, played by the test: reads
		 * of 0 while it is away, SIGIO when it is back. */
		agent_options.test_mode = agent_options.no_set_time = true;
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGIO);
		sigprocmask(SIG_BLOCK, &set, NULL);
		if (transport_add_port(port_rfd, port_wfd, PORT_NAME, "--port-fds") < 0)
			return 1;
		return agent_serve(-1, true);
	}
	if (lfd >= 0) {
		agent_options.test_mode = agent_options.no_set_time = true;
		fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
		return agent_serve(lfd, false);
	}
	nic_all_up();
	/* Before looking for the port, so that no uevent is missed. */
	uevent_open();
	/* vsock first: a Firecracker or Cloud Hypervisor guest has no virtio
	 * port, and its host must not wait for the port search to give up. */
	pid_t vsock_pid = -1;
	if (vsock_port > 0) {
		int vfd = transport_vsock_listen(vsock_port);
		if (vfd >= 0)
			vsock_pid = transport_vsock_serve(vfd, vsock_port);
	}
	int rc = transport_serve_ports();
	if (vsock_pid < 0)
		return rc;
	/* No virtio-serial port (or it failed): vsock alone serves the host.
	 * The agent lives as long as that server does, so init's restart
	 * loop sees a vsock server that died. */
	uevent_close();
	logmsg("serving vsock port %u only", vsock_port);
	int st = 0;
	while (waitpid(vsock_pid, &st, 0) < 0 && errno == EINTR)
		;
	logmsg("the vsock server exited (%s %d)", WIFEXITED(st) ? "status" : "signal",
	       WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	return 1;
}
