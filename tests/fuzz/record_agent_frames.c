/* Records seeds for fuzz_agent_frame from real traffic: each of its calls
 * made against the real agent (this build's vmf-agent in its test mode:
 * --fd for the daemon's calls, --listen-fd for the library's exec), through
 * a tap that keeps what the agent sends.  The reply ids are turned into the
 * harness's numbering (the k-th request's reply: id k), and each seed is
 * the call's selector byte, then the frames as the agent sent them.
 *   record_agent_frames AGENT OUTDIR
 * writes OUTDIR/real-<call>.  The agent runs in test mode (nothing of the
 * host changes; exec runs echo as the caller); what it tells of the
 * recording host in a GuestInfo (hostname, boot and machine ids, NICs) is
 * replaced. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "client.h"
#include "frame.h"

static const char *agent_bin, *outdir;

struct tap {
	int host, agent;          /* our ends toward the host code and the agent */
	uint8_t *rec;             /* agent -> host */
	size_t len, cap;
	uint64_t first_id;        /* the host's first request */
	pthread_t thread;
};

static void
append(struct tap *t, const uint8_t *p, size_t n)
{
	if (t->len + n > t->cap) {
		t->cap = (t->len + n) * 2;
		t->rec = realloc(t->rec, t->cap);
	}
	memcpy(t->rec + t->len, p, n);
	t->len += n;
}

/* Forwards both ways until either end closes; the first request's id is
 * read from the first frame the host sends. */
static void *
tap_main(void *arg)
{
	struct tap *t = arg;
	uint8_t buf[65536], first[VMF_FRAME_HDR + VMF_AGENT_MAX_FRAME];
	size_t flen = 0;
	for (;;) {
		struct pollfd p[2] = { { .fd = t->host, .events = POLLIN }, { .fd = t->agent, .events = POLLIN } };
		if (poll(p, 2, 5000) <= 0)
			break;
		if (p[0].revents) {
			ssize_t n = read(t->host, buf, sizeof(buf));
			if (n <= 0)
				break;
			if (!t->first_id && flen + (size_t)n <= sizeof(first)) {
				memcpy(first + flen, buf, (size_t)n);
				flen += (size_t)n;
				if (flen >= VMF_FRAME_HDR && flen >= VMF_FRAME_HDR + vmf_frame_get_len(first)) {
					Vmf__Agent__AgentRequest *r = vmf__agent__agent_request__unpack(
						NULL, vmf_frame_get_len(first), first + VMF_FRAME_HDR);
					t->first_id = r ? r->id : 1;
					if (r)
						vmf__agent__agent_request__free_unpacked(r, NULL);
				}
			}
			if (write(t->agent, buf, (size_t)n) != n)
				break;
		}
		if (p[1].revents) {
			ssize_t n = read(t->agent, buf, sizeof(buf));
			if (n <= 0)
				break;
			append(t, buf, (size_t)n);
			if (write(t->host, buf, (size_t)n) != n)
				break;
		}
	}
	shutdown(t->host, SHUT_RDWR);
	shutdown(t->agent, SHUT_RDWR);
	return NULL;
}

/* The recorded frames, renumbered, behind the selector byte. */
static void
save(struct tap *t, int call, const char *name)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/real-%s", outdir, name);
	FILE *f = fopen(path, "w");
	if (!f) {
		perror(path);
		exit(1);
	}
	fputc(call, f);
	static uint8_t out[VMF_FRAME_HDR + VMF_AGENT_MAX_FRAME];
	for (size_t off = 0; off + VMF_FRAME_HDR <= t->len;) {
		uint32_t n = vmf_frame_get_len(t->rec + off);
		if (off + VMF_FRAME_HDR + n > t->len)
			break;
		Vmf__Agent__AgentReply *r = vmf__agent__agent_reply__unpack(NULL, n, t->rec + off + VMF_FRAME_HDR);
		/* The agent in test mode tells the recording host's names: the
		 * seeds keep the shape, not them. */
		static char *nics[] = { "eth0 52:54:00:12:34:56 up 10.0.2.15/24" };
		char *hn = NULL, *mid = NULL, *bid = NULL, **ifs = NULL;
		size_t nifs = 0;
		if (r && r->body_case == VMF__AGENT__AGENT_REPLY__BODY_GUEST_INFO) {
			Vmf__Agent__GuestInfo *g = r->guest_info;
			hn = g->hostname, mid = g->machine_id, bid = g->boot_id, ifs = g->interfaces;
			nifs = g->n_interfaces;
			g->hostname = "guest", g->machine_id = "", g->boot_id = "8b2c7e0a-3f1d-4c5e-9a6b-0d1e2f3a4b5c";
			g->interfaces = nics, g->n_interfaces = 1;
		}
		if (r && r->id >= t->first_id && r->id < t->first_id + 8) {
			r->id = r->id - t->first_id + 1;
			size_t m = vmf__agent__agent_reply__pack(r, out + VMF_FRAME_HDR);
			vmf_frame_put_len(out, (uint32_t)m);
			fwrite(out, 1, VMF_FRAME_HDR + m, f);
		} else if (r && r->body_case == VMF__AGENT__AGENT_REPLY__BODY_GUEST_INFO) {
			size_t m = vmf__agent__agent_reply__pack(r, out + VMF_FRAME_HDR);
			vmf_frame_put_len(out, (uint32_t)m);
			fwrite(out, 1, VMF_FRAME_HDR + m, f);
		} else {
			fwrite(t->rec + off, 1, VMF_FRAME_HDR + n, f);
		}
		if (hn) {
			Vmf__Agent__GuestInfo *g = r->guest_info;
			g->hostname = hn, g->machine_id = mid, g->boot_id = bid, g->interfaces = ifs;
			g->n_interfaces = nifs;
		}
		if (r)
			vmf__agent__agent_reply__free_unpacked(r, NULL);
		off += VMF_FRAME_HDR + n;
	}
	fclose(f);
	printf("%s: %zu bytes from the agent\n", path, t->len);
}

static pid_t
start_agent(int fd, const char *mode)
{
	pid_t pid = fork();
	if (pid == 0) {
		if (fd == 3)
			fcntl(3, F_SETFD, 0);
		else
			dup2(fd, 3);
		for (int i = 4; i < 1024; i++)
			close(i);
		int dn = open("/dev/null", O_WRONLY);
		dup2(dn, 2);
		execl(agent_bin, "vmf-agent", mode, "3", "--share-dir", outdir, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* A daemon call (fuzz_agent_frame's selector call) against the agent in
 * --fd mode. */
static void
record_daemon(int call, const char *name)
{
	int a[2], h[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, h) < 0)
		exit(1);
	pid_t pid = start_agent(a[1], "--fd");
	close(a[1]);
	struct tap t = { .host = h[1], .agent = a[0] };
	pthread_create(&t.thread, NULL, tap_main, &t);
	struct vmf_agent *ag = vmf_agent_new(h[0]);
	struct vmf_error e = {0};
	Vmf__Agent__AgentReply *rep = NULL;
	switch (call) {
	case 0: vmf_agent_ping(ag, 5000, &e); break;
	case 1:
		if (vmf_agent_guest_info(ag, &rep, 5000, &e) == 0)
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
		break;
	case 2: { uint32_t c; uint64_t k; vmf_agent_online(ag, 2, 512, &c, &k, 5000, &e); break; }
	case 3: { uint8_t ent[32] = { 9 }, s[16]; vmf_agent_reseed(ag, ent, sizeof(ent), s, 5000, &e); break; }
	case 4: { int64_t g; vmf_agent_set_time(ag, 1700000000000000000, &g, 5000, &e); break; }
	case 5: vmf_agent_mount_share(ag, "share", 5000, &e); break;
	case 6: vmf_agent_wait_ready(ag, 5000, &e); break;
	case 7: { struct vmf_agent_identity id; vmf_agent_new_identity(ag, &id, 5000, &e); break; }
	case 8: {
		struct vmf_agent_handout ho;
		if (vmf_agent_send_handout(ag, "sb-1", &ho, 5000, &e) == 0)
			vmf_agent_recv_handout(ag, &ho, 5000, &e);
		break;
	}
	case 9: { char d[64]; vmf_agent_mount_disk(ag, "vmf0", "/mnt/d", NULL, false, d, sizeof(d), 3000, &e); break; }
	case 10: {
		const char *argv[] = { "echo", "seed", NULL };
		int code;
		vmf_agent_run(ag, argv, &code, 5000, &e);
		break;
	}
	default: {
		struct vmf_agent_flush d[2] = { { .serial = "vmfd0", .path = "/mnt/a" },
						{ .serial = "vmfd1", .path = "/mnt/b" } };
		if (call == 11)
			vmf_agent_flush_disks(ag, VMF_AGENT_UNMOUNT, d, 2, 5000, &e);
		else
			vmf_agent_poweroff(ag, d, 2, 500, 5000, &e);
		break;
	}
	}
	vmf_agent_free(ag);
	pthread_join(t.thread, NULL);
	close(t.host);
	close(t.agent);
	waitpid(pid, NULL, 0);
	save(&t, call, name);
	free(t.rec);
}

/* The library's exec session (selector 13) against the agent in
 * --listen-fd mode, through a tap on a socket of its own. */
static void
record_library(void)
{
	char apath[600], tpath[600];
	snprintf(apath, sizeof(apath), "%s/.agent.sock", outdir);
	snprintf(tpath, sizeof(tpath), "%s/.tap.sock", outdir);
	unlink(apath);
	unlink(tpath);
	struct sockaddr_un sa = { .sun_family = AF_UNIX }, st = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", apath);
	snprintf(st.sun_path, sizeof(st.sun_path), "%s", tpath);
	int al = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), tl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (bind(al, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(al, 4) < 0 ||
	    bind(tl, (struct sockaddr *)&st, sizeof(st)) < 0 || listen(tl, 4) < 0)
		exit(1);
	pid_t pid = start_agent(al, "--listen-fd");
	close(al);
	int toagent = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(toagent, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		exit(1);
	struct tap t = { .agent = toagent, .host = -1 };
	struct vmf_client_agent *ag = NULL;
	struct vmf_error e = {0};
	/* The library connects to the tap's socket; the tap takes it once the
	 * library is waiting for its ExecReset's answer. */
	pid_t c = fork();
	if (c == 0) {
		int h = accept(tl, NULL, NULL);
		t.host = h;
		tap_main(&t);
		save(&t, 13, "exec");
		_exit(0);
	}
	close(tl);
	if (vmf_client_agent_connect(tpath, "unix", 0, 5000, NULL, NULL, &ag, &e) == 0) {
		const char *argv[] = { "sh", "-c", "cat; echo out; echo err >&2; exit 3", NULL };
		struct vmf_exec_opts o = { .argv = argv, .output_window = 65536 };
		uint64_t id;
		if (vmf_client_exec_start(ag, &o, &id, 5000, &e) == 0) {
			vmf_client_exec_input(ag, id, "in\n", 3, 1, &e);
			for (;;) {
				struct vmf_exec_event ev;
				if (vmf_client_agent_next_event(ag, &ev, 5000, &e) < 0 || ev.type == VMF_EXEC_EV_NONE ||
				    ev.type == VMF_EXEC_EV_EXIT)
					break;
			}
			vmf_client_exec_signal(ag, id, SIGTERM, &e);
		}
		vmf_client_agent_close(ag);
	}
	if (e.msg[0])
		fprintf(stderr, "library session: %s\n", e.msg);
	close(toagent);
	waitpid(c, NULL, 0);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	unlink(apath);
	unlink(tpath);
}

int
main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: record_agent_frames AGENT OUTDIR\n");
		return 2;
	}
	agent_bin = argv[1];
	outdir = argv[2];
	signal(SIGPIPE, SIG_IGN);
	static const char *const names[] = { "ping", "guest_info", "online", "reseed", "set_time", "mount_share",
					     "wait_ready", "new_identity", "handout", "mount_disk", "run", "flush",
					     "poweroff" };
	for (int call = 0; call < 13; call++)
		record_daemon(call, names[call]);
	record_library();
	return 0;
}
