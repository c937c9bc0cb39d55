/* The host side of the guest agent protocol (common/agentconn.c, with the
 * daemon's calls in hypervisors/agent.c and the client library's exec in
 * factory/client/agent_client.c on top) against arbitrary bytes from "the
 * guest".  The first input byte picks the call; the rest is the reply
 * stream, then EOF.
 *   0-6   the daemon: Ping, GuestInfo, OnlineCpuMem, ReseedRng, SetTime,
 *         MountShare, the Ping loop of wait_ready
 *   7-10  the daemon: NewIdentity, a hand-out (send, recv), MountDisk, a
 *         command run to its exit (vmf_agent_run)
 *   11-12 the daemon: FlushDisks, Poweroff (a stop that loses nothing)
 *   13    the library: connect (ExecReset), ExecStart, then events (output
 *         consumed, credit given back), stdin, a signal, until the stream
 *         ends; then its file calls: stat, a listing, a read, a watch
 *         (its events), an unwatch
 *   14    the library's process table: connect, ExecList (its pages),
 *         ExecAttach by tag, then events as for 13
 * What every call must hold whatever it is sent: it returns (the input's
 * EOF or its 2 s deadline), frees what it allocated (LeakSanitizer), and
 * every string it hands out is valid UTF-8 (abort otherwise).
 *
 * Request ids start at a random value per connection, so no fixed input
 * could answer a call.  The peer therefore reads the first request and
 * renumbers: a reply frame that decodes with id k in 1..8 is re-sent with
 * the id of the k-th request from there on; every other byte (junk,
 * partial or oversized frames, other ids, exec events with id 0) goes out
 * unchanged.  Seeds: tests/fuzz/corpus/agent_frame, the real-* ones
 * recorded from the real agent (tests/fuzz/record_agent_frames.c). */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"
#include "client.h"
#include "frame.h"
#include "fuzz_peer.h"
#include "text.h"

#define TIMEOUT_MS 2000
#define RENUMBER_MAX 8
#define CALLS 15
#define LIBRARY_CALL 13

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
send_renumbered(struct fuzz_peer *p)
{
	uint8_t *req_buf = NULL;
	size_t req_len = 0;
	struct vmf_error err;
	if (vmf_frame_read(p->fd, &req_buf, &req_len, VMF_AGENT_MAX_FRAME, vmf_now_ms() + TIMEOUT_MS, &err) < 0)
		return;
	Vmf__Agent__AgentRequest *req = vmf__agent__agent_request__unpack(NULL, req_len, req_buf);
	free(req_buf);
	if (!req)
		abort(); /* the host sent something its own peer cannot read */
	uint64_t base = req->id;
	vmf__agent__agent_request__free_unpacked(req, NULL);

	const uint8_t *d = p->data;
	size_t left = p->len;
	static uint8_t out[VMF_FRAME_HDR + VMF_AGENT_MAX_FRAME];
	while (left >= VMF_FRAME_HDR) {
		uint32_t n = vmf_frame_get_len(d);
		if (n > VMF_AGENT_MAX_FRAME || n > left - VMF_FRAME_HDR)
			break;
		Vmf__Agent__AgentReply *rep = vmf__agent__agent_reply__unpack(NULL, n, d + VMF_FRAME_HDR);
		bool ok;
		if (rep && rep->id >= 1 && rep->id <= RENUMBER_MAX) {
			rep->id = base + rep->id - 1;
			size_t m = vmf__agent__agent_reply__get_packed_size(rep);
			ok = m <= VMF_AGENT_MAX_FRAME;
			if (ok) {
				vmf_frame_put_len(out, (uint32_t)m);
				vmf__agent__agent_reply__pack(rep, out + VMF_FRAME_HDR);
				ok = fuzz_peer_write(p, out, VMF_FRAME_HDR + m);
			}
		} else {
			ok = fuzz_peer_write(p, d, VMF_FRAME_HDR + n);
		}
		if (rep)
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
		if (!ok)
			return;
		d += VMF_FRAME_HDR + n;
		left -= VMF_FRAME_HDR + n;
	}
	fuzz_peer_write(p, d, left);
}

static void
must_be_text(const char *s)
{
	if (s && !vmf_utf8_valid(s, strlen(s)))
		abort();
}

/* Every string of a reply the daemon keeps. */
static void
check_strings(const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const char *base = (const char *)m;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)(base + f->quantifier_offset);
			void *const *v = *(void *const *const *)(base + f->offset);
			for (size_t k = 0; v && k < n; k++)
				if (f->type == PROTOBUF_C_TYPE_STRING)
					must_be_text(v[k]);
				else if (f->type == PROTOBUF_C_TYPE_MESSAGE)
					check_strings(v[k]);
			continue;
		}
		if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
		    *(const uint32_t *)(base + f->quantifier_offset) != f->id)
			continue;
		if (f->type == PROTOBUF_C_TYPE_STRING)
			must_be_text(*(char *const *)(base + f->offset));
		else if (f->type == PROTOBUF_C_TYPE_MESSAGE && *(void *const *)(base + f->offset))
			check_strings(*(const ProtobufCMessage *const *)(base + f->offset));
	}
}

static void
daemon_call(int call, struct vmf_agent *a)
{
	struct vmf_error err = {0};
	Vmf__Agent__AgentReply *rep = NULL;
	switch (call) {
	case 0:
		vmf_agent_ping(a, TIMEOUT_MS, &err);
		break;
	case 1:
		if (vmf_agent_guest_info(a, &rep, TIMEOUT_MS, &err) == 0) {
			check_strings(&rep->base);
			vmf__agent__agent_reply__free_unpacked(rep, NULL);
		}
		break;
	case 2: {
		uint32_t cpus;
		uint64_t kib;
		vmf_agent_online(a, 2, 512, &cpus, &kib, TIMEOUT_MS, &err);
		break;
	}
	case 3: {
		static const uint8_t entropy[32] = { 1, 2, 3 };
		uint8_t sample[16];
		vmf_agent_reseed(a, entropy, sizeof(entropy), sample, TIMEOUT_MS, &err);
		break;
	}
	case 4: {
		int64_t guest_ns;
		vmf_agent_set_time(a, 1700000000000000000, &guest_ns, TIMEOUT_MS, &err);
		break;
	}
	case 5:
		vmf_agent_mount_share(a, "share", TIMEOUT_MS, &err);
		break;
	case 6:
		vmf_agent_wait_ready(a, TIMEOUT_MS, &err);
		break;
	case 7: {
		struct vmf_agent_identity id;
		if (vmf_agent_new_identity(a, &id, TIMEOUT_MS, &err) == 0) {
			must_be_text(id.boot_id);
			must_be_text(id.machine_id);
		}
		break;
	}
	case 8: {
		struct vmf_agent_handout h;
		if (vmf_agent_send_handout(a, "sb-1", &h, TIMEOUT_MS, &err) == 0 &&
		    vmf_agent_recv_handout(a, &h, TIMEOUT_MS, &err) == 0) {
			must_be_text(h.hostname);
			must_be_text(h.boot_id);
			must_be_text(h.net_error);
		}
		break;
	}
	case 9: {
		char dev[64];
		if (vmf_agent_mount_disk(a, "vmf0", "/mnt/d", NULL, false, dev, sizeof(dev), TIMEOUT_MS, &err) == 0)
			must_be_text(dev);
		break;
	}
	case 10: {
		const char *argv[] = { "umount", "/mnt/share", NULL };
		int code;
		vmf_agent_run(a, argv, &code, TIMEOUT_MS, &err);
		break;
	}
	default: {
		struct vmf_agent_flush d[2] = { { .serial = "vmfd0", .path = "/mnt/a" },
						{ .serial = "vmfd1", .path = "/mnt/b" } };
		int r = call == 11 ? vmf_agent_flush_disks(a, VMF_AGENT_UNMOUNT, d, 2, TIMEOUT_MS, &err)
				   : vmf_agent_poweroff(a, d, 2, 500, TIMEOUT_MS, &err);
		for (int i = 0; r == 0 && i < 2; i++) {
			must_be_text(d[i].how);
			must_be_text(d[i].error);
		}
		break;
	}
	}
	must_be_text(err.msg);
}

/* The library's connect takes a path: a listening socket whose first
 * connection the peer's thread accepts. */
static char lpath[108];
static int lfd = -1;

/* libFuzzer ends a run through exit(): the socket's path goes with it,
 * not left in /tmp by every run. */
static void
listener_remove(void)
{
	unlink(lpath);
}

static int
listener(void)
{
	if (lfd >= 0)
		return lfd;
	snprintf(lpath, sizeof(lpath), "/tmp/vmf-fuzz-agent.%d.sock", (int)getpid());
	unlink(lpath);
	atexit(listener_remove);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", lpath);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 4) < 0)
		abort();
	return lfd;
}

/* Connections a run before left in the backlog (the library reconnects
 * when an attempt goes unanswered): closed, so that this run's input goes
 * to this run's connection. */
static void
drain_backlog(void)
{
	int c;
	while ((c = accept4(listener(), NULL, NULL, SOCK_CLOEXEC)) >= 0)
		close(c);
}

static void
entry_must_be_text(const struct vmf_file_entry *e)
{
	must_be_text(e->name);
	must_be_text(e->path);
	must_be_text(e->owner);
	must_be_text(e->group);
	must_be_text(e->symlink_target);
}

/* The file calls take what they asked for and hand out text. */
static void
library_files(struct vmf_client_agent *ag)
{
	struct vmf_error err = {0};
	struct vmf_file_entry e;
	if (vmf_client_file_stat(ag, NULL, "/x", &e, TIMEOUT_MS, &err) == 0) {
		entry_must_be_text(&e);
		vmf_client_file_entry_free(&e);
	}
	struct vmf_file_entry *v;
	size_t n;
	int more;
	if (vmf_client_file_list(ag, NULL, "/", 2, 0, &v, &n, &more, TIMEOUT_MS, &err) == 0) {
		for (size_t i = 0; i < n; i++) {
			entry_must_be_text(&v[i]);
			vmf_client_file_entry_free(&v[i]);
		}
		free(v);
	}
	uint8_t buf[64];
	size_t got;
	uint64_t size;
	int eof;
	if (vmf_client_file_read(ag, NULL, "/x", 0, buf, sizeof(buf), &got, &size, &eof, TIMEOUT_MS, &err) == 0 &&
	    got > sizeof(buf))
		abort();
	must_be_text(err.msg);
	/* A watch: its events' names are text, a flood of them stays
	 * bounded (the library counts what it does not keep). */
	uint64_t wid;
	if (vmf_client_file_watch(ag, NULL, "/", 1, &wid, TIMEOUT_MS, &err) == 0) {
		struct vmf_exec_event ev;
		for (int i = 0; i < 64; i++) {
			if (vmf_client_agent_next_event(ag, &ev, 50, &err) < 0 || ev.type == VMF_EXEC_EV_NONE)
				break;
			for (size_t k = 0; ev.type == VMF_EXEC_EV_FILES && k < ev.n_files; k++) {
				must_be_text(ev.files[k].name);
				if (ev.files[k].type < VMF_FILE_EV_CREATE || ev.files[k].type > VMF_FILE_EV_CHMOD)
					abort();
			}
			must_be_text(ev.message);
		}
		vmf_client_file_unwatch(ag, wid, TIMEOUT_MS, &err);
	}
	must_be_text(err.msg);
}

static void
library_session(bool table)
{
	struct vmf_client_agent *ag = NULL;
	struct vmf_error err = {0};
	if (vmf_client_agent_connect(lpath, "unix", 0, TIMEOUT_MS, NULL, NULL, &ag, &err) < 0) {
		must_be_text(err.msg);
		return;
	}
	const char *argv[] = { "cat", NULL };
	struct vmf_exec_opts o = { .argv = argv, .output_window = 65536 };
	uint64_t id = 0;
	int started;
	if (table) {
		struct vmf_exec_entry *v;
		size_t n;
		if (vmf_client_exec_list(ag, &v, &n, TIMEOUT_MS, &err) == 0) {
			if (n > 256)
				abort();
			for (size_t i = 0; i < n; i++) {
				must_be_text(v[i].tag);
				must_be_text(v[i].cmd);
				must_be_text(v[i].cwd);
			}
			free(v);
		}
		must_be_text(err.msg);
		started = vmf_client_exec_attach(ag, 0, 0, "t", 65536, &id, NULL, TIMEOUT_MS, &err);
	} else {
		started = vmf_client_exec_start(ag, &o, &id, TIMEOUT_MS, &err);
	}
	if (started == 0) {
		vmf_client_exec_input(ag, id, "in", 2, 1, &err);
		vmf_client_exec_signal(ag, id, SIGTERM, &err);
		int64_t end = vmf_now_ms() + TIMEOUT_MS;
		for (;;) {
			struct vmf_exec_event ev;
			if (vmf_client_agent_next_event(ag, &ev, 200, &err) < 0 || vmf_now_ms() > end)
				break;
			if (ev.type == VMF_EXEC_EV_ERROR)
				must_be_text(ev.message);
			if (ev.type == VMF_EXEC_EV_EXIT && ev.exec_id == id)
				break;
		}
	}
	must_be_text(err.msg);
	library_files(ag);
	vmf_client_agent_close(ag);
}

/* The peer of the library's connection: accepts it, then as for the
 * daemon's. */
static void
accept_then_send(struct fuzz_peer *p)
{
	struct pollfd pf = { .fd = listener(), .events = POLLIN };
	int c = poll(&pf, 1, TIMEOUT_MS) == 1 ? accept4(listener(), NULL, NULL, SOCK_CLOEXEC) : -1;
	if (c < 0)
		return;
	int fl = fcntl(c, F_GETFL);
	fcntl(c, F_SETFL, fl & ~O_NONBLOCK);
	int pair_end = p->fd;
	p->fd = c;
	send_renumbered(p);
	shutdown(c, SHUT_WR);
	char sink[4096];
	while (read(c, sink, sizeof(sink)) > 0)
		;
	close(c);
	p->fd = pair_end;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int call = data[0] % CALLS;
	struct fuzz_peer p = { .data = data + 1, .len = size - 1,
			       .send = call >= LIBRARY_CALL ? accept_then_send : send_renumbered };
	if (call >= LIBRARY_CALL)
		drain_backlog();
	int fd;
	if (fuzz_peer_start(&p, &fd) < 0)
		abort();
	if (call >= LIBRARY_CALL) {
		close(fd);
		library_session(call == LIBRARY_CALL + 1);
	} else {
		struct vmf_agent *a = vmf_agent_new(fd);
		if (!a)
			abort();
		daemon_call(call, a);
		vmf_agent_free(a);
	}
	fuzz_peer_join(&p);
	return 0;
}
