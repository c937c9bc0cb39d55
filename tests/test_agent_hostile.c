/* The host side of the agent protocol (common/agentconn.c, under the
 * daemon's calls in hypervisors/agent.c and the client library's exec in
 * factory/client/agent_client.c) against a guest that does not play by the
 * rules: it floods, sends junk or replies for ids nobody asked for, trickles
 * a byte at a time, never answers, ignores its output window, or returns
 * strings with terminal escapes and invalid UTF-8.  A scripted peer thread
 * plays that guest; each case asserts the call ends within its deadline
 * (or at once, with a sentence), how little CPU it spent, and that the
 * strings that come out are valid UTF-8 and escaped where they are text.
 * (tests/test_hostile.c runs a hostile agent in a real guest.) */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "client.h"
#include "frame.h"
#include "testlib.h"
#include "text.h"
#include "util.h"

enum behavior {
	FLOOD_ZEROS,        /* cat /dev/zero: a zero-length frame every 4 bytes */
	WRONG_IDS,          /* well-formed Pongs for ids nobody sent */
	JUNK_FRAMES,        /* frames of the right size that do not decode */
	ENDLESS_FRAME,      /* a frame's header, then a byte a millisecond */
	SILENT,             /* reads, never writes */
	STALE_PONGS,        /* answers every Ping twice, then the request */
	HOSTILE_STRINGS,    /* answers with escapes and invalid UTF-8 */
	OUTPUT_FLOOD,       /* exec: output frames without waiting for credit */
	UNKNOWN_EXEC,       /* exec: output for a process nobody started */
	EXEC_THEN_ZEROS,    /* exec: started, then cat /dev/zero */
	TABLE_LIES,         /* process table: hostile strings, endless pages, wrong attach */
	FILE_LIES,          /* files: more data than asked, names not UTF-8, empty pages "with more" */
};

struct peer {
	enum behavior b;
	int fd, lfd;
	pthread_t thread;
	atomic_size_t written;
	char path[108];
};

#define PEER_MAX_MS 20000
#define EXEC_ID 7
#define WATCH_ID 5
#define WATCH_FRAME_EVENTS 10
#define WATCH_FLOOD_FRAMES 1000

static const char *const hostile =
	"ok\x1b]0;owned\x07\x1b[2J\r\nstate: assigned\xff\xfe\xc2\x9b" "31m\xe2\x80\xae" "gnp.exe";

static bool
peer_write(struct peer *p, const void *buf, size_t n)
{
	const uint8_t *b = buf;
	while (n) {
		ssize_t w = send(p->fd, b, n, MSG_NOSIGNAL);
		if (w <= 0)
			return false;
		atomic_fetch_add(&p->written, (size_t)w);
		b += w;
		n -= (size_t)w;
	}
	return true;
}

static bool
peer_reply(struct peer *p, Vmf__Agent__AgentReply *r)
{
	uint8_t buf[VMF_FRAME_HDR + VMF_AGENT_MAX_FRAME];
	size_t n = vmf__agent__agent_reply__pack(r, buf + VMF_FRAME_HDR);
	vmf_frame_put_len(buf, (uint32_t)n);
	return peer_write(p, buf, n + VMF_FRAME_HDR);
}

static Vmf__Agent__AgentRequest *
peer_read(struct peer *p, int timeout_ms)
{
	uint8_t *buf;
	size_t n;
	if (vmf_frame_read(p->fd, &buf, &n, VMF_AGENT_MAX_FRAME, vmf_now_ms() + timeout_ms, NULL) < 0)
		return NULL;
	Vmf__Agent__AgentRequest *r = vmf__agent__agent_request__unpack(NULL, n, buf);
	free(buf);
	return r;
}

static bool
peer_pong(struct peer *p, uint64_t id)
{
	Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
	Vmf__Agent__Ping pong = VMF__AGENT__PING__INIT;
	r.id = id;
	r.body_case = VMF__AGENT__AGENT_REPLY__BODY_PONG;
	r.pong = &pong;
	return peer_reply(p, &r);
}

/* The library's first request (ExecReset), answered. */
static bool
peer_ack_reset(struct peer *p)
{
	Vmf__Agent__AgentRequest *q = peer_read(p, 5000);
	if (!q)
		return false;
	Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
	Vmf__Agent__ExecAck ack = VMF__AGENT__EXEC_ACK__INIT;
	r.id = q->id;
	r.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK;
	r.exec_ack = &ack;
	vmf__agent__agent_request__free_unpacked(q, NULL);
	return peer_reply(p, &r);
}

/* The library's ExecReset, then its ExecStart, answered with EXEC_ID. */
static bool
peer_exec_session(struct peer *p)
{
	Vmf__Agent__AgentRequest *q;
	Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
	if (!peer_ack_reset(p) || !(q = peer_read(p, 5000)))
		return false;
	Vmf__Agent__ExecStarted st = VMF__AGENT__EXEC_STARTED__INIT;
	st.exec_id = EXEC_ID;
	st.pid = 1234;
	st.stdin_window = 256 * 1024;
	r.id = q->id;
	r.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED;
	r.exec_started = &st;
	vmf__agent__agent_request__free_unpacked(q, NULL);
	return peer_reply(p, &r);
}

static void
peer_output(struct peer *p, uint64_t exec_id)
{
	static uint8_t data[32768];
	Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
	Vmf__Agent__ExecOutput o = VMF__AGENT__EXEC_OUTPUT__INIT;
	o.exec_id = exec_id;
	o.fd = 1;
	o.data.data = data;
	o.data.len = sizeof data;
	r.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_OUTPUT;
	r.exec_output = &o;
	for (int64_t end = vmf_now_ms() + PEER_MAX_MS; vmf_now_ms() < end;)
		if (!peer_reply(p, &r))
			return;
}

static void
peer_strings(struct peer *p, Vmf__Agent__AgentRequest *q)
{
	Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
	r.id = q->id;
	Vmf__Agent__GuestInfo gi = VMF__AGENT__GUEST_INFO__INIT;
	Vmf__Agent__Identity id = VMF__AGENT__IDENTITY__INIT;
	Vmf__Agent__HandoutResult ho = VMF__AGENT__HANDOUT_RESULT__INIT;
	Vmf__Agent__DiskMounted dm = VMF__AGENT__DISK_MOUNTED__INIT;
	static uint8_t rnd[16] = { 1, 2, 3 };
	char *list[2] = { (char *)hostile, "plain" };
	switch (q->body_case) {
	case VMF__AGENT__AGENT_REQUEST__BODY_GUEST_INFO:
		gi.hostname = gi.boot_id = gi.machine_id = gi.agent_version = (char *)hostile;
		gi.share_entries = gi.interfaces = list;
		gi.n_share_entries = gi.n_interfaces = 2;
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_GUEST_INFO;
		r.guest_info = &gi;
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_NEW_IDENTITY:
		id.random.data = rnd;
		id.random.len = 16;
		id.boot_id = (char *)hostile;
		id.machine_id = "";
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_IDENTITY;
		r.identity = &id;
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_HANDOUT:
		ho.hostname = ho.net_error = (char *)hostile;
		ho.boot_id = "not-a-uuid\x1b[2J";
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_HANDOUT;
		r.handout = &ho;
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_DISK:
		dm.device = "/dev/sda\x1b[2J";
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_DISK_MOUNTED;
		r.disk_mounted = &dm;
		break;
	default:
		r.error_code = EIO;
		r.error_message = (char *)hostile;
		break;
	}
	peer_reply(p, &r);
}

/* After the reset: ExecList first answered with hostile strings, then
 * with pages that never end (100 entries, more, forever); ExecAttach with
 * an exec id other than the one asked for, then with one already
 * attached. */
static void
peer_table(struct peer *p)
{
	Vmf__Agent__AgentRequest *q;
	if (!peer_ack_reset(p))
		return;
	static Vmf__Agent__ExecEntry ents[100];
	static Vmf__Agent__ExecEntry *ev[100];
	char *argv[2] = { (char *)hostile, "x" };
	for (int i = 0; i < 100; i++) {
		vmf__agent__exec_entry__init(&ents[i]);
		ents[i].exec_id = (uint64_t)i + 1;
		ents[i].pid = 100 + i;
		ents[i].tag = ents[i].cwd = (char *)hostile;
		ents[i].argv = argv;
		ents[i].n_argv = 2;
		ev[i] = &ents[i];
	}
	unsigned lists = 0, attaches = 0;
	while ((q = peer_read(p, 3000))) {
		Vmf__Agent__AgentReply rr = VMF__AGENT__AGENT_REPLY__INIT;
		Vmf__Agent__ExecTable t = VMF__AGENT__EXEC_TABLE__INIT;
		Vmf__Agent__ExecStarted st = VMF__AGENT__EXEC_STARTED__INIT;
		rr.id = q->id;
		if (q->body_case == VMF__AGENT__AGENT_REQUEST__BODY_EXEC_LIST) {
			t.entries = ev;
			t.n_entries = lists++ ? 100 : 2;
			t.more = lists > 1;
			rr.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_TABLE;
			rr.exec_table = &t;
		} else if (q->body_case == VMF__AGENT__AGENT_REQUEST__BODY_EXEC_ATTACH) {
			st.exec_id = attaches++ ? 5 : q->exec_attach->exec_id + 1;
			st.pid = 5;
			st.stdin_window = 4u << 30;
			rr.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED;
			rr.exec_started = &st;
		} else {
			rr.error_code = EIO;
			rr.error_message = "no";
		}
		vmf__agent__agent_request__free_unpacked(q, NULL);
		if (!peer_reply(p, &rr))
			return;
	}
}

/* The library's ExecReset answered, then every file request with a lie. */
static void
peer_file_lies(struct peer *p)
{
	Vmf__Agent__AgentRequest *q;
	if (!peer_ack_reset(p))
		return;
	static uint8_t twenty[20];
	while ((q = peer_read(p, 3000))) {
		Vmf__Agent__AgentReply a = VMF__AGENT__AGENT_REPLY__INIT;
		Vmf__Agent__FileEntry e = VMF__AGENT__FILE_ENTRY__INIT;
		Vmf__Agent__FileEntries es = VMF__AGENT__FILE_ENTRIES__INIT;
		Vmf__Agent__FileData d = VMF__AGENT__FILE_DATA__INIT;
		Vmf__Agent__Ping pong = VMF__AGENT__PING__INIT;
		a.id = q->id;
		e.name = e.path = e.owner = e.group = e.symlink_target = (char *)hostile;
		e.type = 99;
		switch (q->body_case) {
		case VMF__AGENT__AGENT_REQUEST__BODY_FILE_STAT:
			a.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_ENTRY;
			a.file_entry = &e;
			break;
		case VMF__AGENT__AGENT_REQUEST__BODY_FILE_LIST:
			es.more = true;   /* and no entries: a caller paging on would never end */
			a.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_ENTRIES;
			a.file_entries = &es;
			break;
		case VMF__AGENT__AGENT_REQUEST__BODY_FILE_WATCH: {
			/* Started, then a flood of its events: names not UTF-8,
			 * a type nobody knows, more than anyone asked for. */
			Vmf__Agent__FileWatchStarted ws = VMF__AGENT__FILE_WATCH_STARTED__INIT;
			ws.watch_id = WATCH_ID;
			a.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_WATCH_STARTED;
			a.file_watch_started = &ws;
			peer_reply(p, &a);
			Vmf__Agent__FileEvent ev[WATCH_FRAME_EVENTS], *evp[WATCH_FRAME_EVENTS];
			for (int i = 0; i < WATCH_FRAME_EVENTS; i++) {
				vmf__agent__file_event__init(&ev[i]);
				ev[i].name = (char *)hostile;
				ev[i].type = i == 0 ? 99 : VMF__AGENT__FILE_EVENT_TYPE__FILE_EVENT_CREATE;
				evp[i] = &ev[i];
			}
			Vmf__Agent__FileEvents fe = VMF__AGENT__FILE_EVENTS__INIT;
			fe.watch_id = WATCH_ID;
			fe.events = evp;
			fe.n_events = WATCH_FRAME_EVENTS;
			Vmf__Agent__AgentReply f = VMF__AGENT__AGENT_REPLY__INIT;
			f.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_EVENTS;
			f.file_events = &fe;
			for (int k = 0; k < WATCH_FLOOD_FRAMES; k++)
				peer_reply(p, &f);
			fe.n_events = 0;
			fe.ended = true;
			fe.reason = (char *)hostile;
			peer_reply(p, &f);
			vmf__agent__agent_request__free_unpacked(q, NULL);
			continue;
		}
		case VMF__AGENT__AGENT_REQUEST__BODY_FILE_READ:
			d.data.data = twenty;
			d.data.len = sizeof twenty;
			a.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_DATA;
			a.file_data = &d;
			break;
		default:
			a.body_case = VMF__AGENT__AGENT_REPLY__BODY_PONG;   /* the wrong type */
			a.pong = &pong;
			break;
		}
		peer_reply(p, &a);
		vmf__agent__agent_request__free_unpacked(q, NULL);
	}
}

static void *
peer_main(void *arg)
{
	struct peer *p = arg;
	if (p->lfd >= 0 && (p->fd = accept(p->lfd, NULL, NULL)) < 0)
		return NULL;
	int64_t end = vmf_now_ms() + PEER_MAX_MS;
	Vmf__Agent__AgentRequest *q = NULL;
	switch (p->b) {
	case FLOOD_ZEROS: {
		static const uint8_t zeros[65536];
		while (vmf_now_ms() < end && peer_write(p, zeros, sizeof zeros))
			;
		break;
	}
	case WRONG_IDS:
		for (uint64_t id = 1000; vmf_now_ms() < end && peer_pong(p, id); id += 7)
			;
		break;
	case JUNK_FRAMES: {
		uint8_t f[VMF_FRAME_HDR + 64];
		vmf_frame_put_len(f, 64);
		memset(f + VMF_FRAME_HDR, 0xff, 64);
		while (vmf_now_ms() < end && peer_write(p, f, sizeof f))
			;
		break;
	}
	case ENDLESS_FRAME: {
		uint8_t h[VMF_FRAME_HDR];
		vmf_frame_put_len(h, 60000);
		peer_write(p, h, sizeof h);
		for (int i = 0; i < 60000 && vmf_now_ms() < end && peer_write(p, "x", 1); i++)
			poll(NULL, 0, 1);
		break;
	}
	case SILENT:
		break;
	case STALE_PONGS:
		/* An agent that starts late finds the host's Pings queued and
		 * answers each; then the next request. */
		while ((q = peer_read(p, 3000))) {
			bool ping = q->body_case == VMF__AGENT__AGENT_REQUEST__BODY_PING;
			if (!ping) {
				Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
				Vmf__Agent__TimeResult t = VMF__AGENT__TIME_RESULT__INIT;
				t.realtime_ns = 42;
				r.id = q->id;
				r.body_case = VMF__AGENT__AGENT_REPLY__BODY_TIME;
				r.time = &t;
				peer_reply(p, &r);
			} else {
				peer_pong(p, q->id);
			}
			vmf__agent__agent_request__free_unpacked(q, NULL);
		}
		return NULL;
	case HOSTILE_STRINGS:
		while ((q = peer_read(p, 3000))) {
			peer_strings(p, q);
			vmf__agent__agent_request__free_unpacked(q, NULL);
		}
		return NULL;
	case OUTPUT_FLOOD:
		if (peer_exec_session(p))
			peer_output(p, EXEC_ID);
		break;
	case UNKNOWN_EXEC:
		if (peer_exec_session(p))
			peer_output(p, EXEC_ID + 1);
		break;
	case TABLE_LIES:
		peer_table(p);
		return NULL;
	case FILE_LIES:
		peer_file_lies(p);
		return NULL;
	case EXEC_THEN_ZEROS:
		if (peer_exec_session(p)) {
			static const uint8_t zeros[65536];
			while (vmf_now_ms() < end && peer_write(p, zeros, sizeof zeros))
				;
		}
		break;
	}
	/* Until the host hangs up (or the script's time is up). */
	char c[4096];
	struct pollfd pf = { .fd = p->fd, .events = POLLIN };
	while (vmf_now_ms() < end && poll(&pf, 1, 100) >= 0)
		if ((pf.revents & (POLLIN | POLLHUP)) && read(p->fd, c, sizeof c) <= 0)
			break;
	return NULL;
}

/* A peer on a socketpair: the host end for vmf_agent_new. */
static int
peer_pair(struct peer *p, enum behavior b)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	p->b = b;
	p->fd = sv[1];
	p->lfd = -1;
	atomic_init(&p->written, 0);
	ck_assert_int_eq(pthread_create(&p->thread, NULL, peer_main, p), 0);
	return sv[0];
}

/* A peer on a listening unix socket, for the library's connect. */
static void
peer_listen(struct peer *p, enum behavior b, const char *dir)
{
	snprintf(p->path, sizeof p->path, "%s/agent.sock", dir);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", p->path);
	p->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(p->lfd, 0);
	ck_assert_int_eq(bind(p->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
	ck_assert_int_eq(listen(p->lfd, 4), 0);
	p->b = b;
	p->fd = -1;
	atomic_init(&p->written, 0);
	ck_assert_int_eq(pthread_create(&p->thread, NULL, peer_main, p), 0);
}

static void
peer_join(struct peer *p)
{
	pthread_join(p->thread, NULL);
	if (p->fd >= 0)
		close(p->fd);
	if (p->lfd >= 0) {
		close(p->lfd);
		unlink(p->path);
	}
}

static int64_t
cpu_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Valgrind runs everything tens of times slower: CPU and time bounds are
 * checked without it (the unit stage runs these tests in both). */
static int
slack(int ms)
{
	return vmf_test_under_valgrind() ? ms * 20 : ms;
}

/* ---- the daemon's calls ---- */

static void
expect_fast_failure(enum behavior b, const char *words)
{
	struct peer p;
	struct vmf_agent *a = vmf_agent_new(peer_pair(&p, b));
	struct vmf_error e = {0};
	int64_t t0 = vmf_now_ms(), c0 = cpu_ms();
	int r = vmf_agent_ping(a, 10000, &e);
	int64_t ms = vmf_now_ms() - t0, cpu = cpu_ms() - c0;
	ck_assert_msg(r == -EPROTO && strstr(e.msg, words), "%d: %s", r, e.msg);
	ck_assert_msg(ms < slack(1000), "the call took %lld ms", (long long)ms);
	ck_assert_msg(cpu < slack(200), "the call spent %lld ms of CPU", (long long)cpu);
	/* What was read is bounded by the read buffer, whatever was sent. */
	vmf_agent_free(a);
	peer_join(&p);
	ck_assert_msg(atomic_load(&p.written) < (4u << 20), "the guest got %zu bytes in",
		      atomic_load(&p.written));
	printf("%s: failed after %lld ms, %lld ms CPU: %s\n", words, (long long)ms, (long long)cpu, e.msg);
}

START_TEST(flood_of_zeros_ends_the_call_at_once)
{
	expect_fast_failure(FLOOD_ZEROS, "answer nothing asked");
}
END_TEST

START_TEST(replies_for_wrong_ids_end_the_call)
{
	expect_fast_failure(WRONG_IDS, "answer nothing asked");
}
END_TEST

START_TEST(junk_frames_end_the_call)
{
	expect_fast_failure(JUNK_FRAMES, "answer nothing asked");
}
END_TEST

/* A frame that never completes, a byte a millisecond: the deadline holds
 * though every read returns data. */
START_TEST(trickle_is_cut_at_the_deadline)
{
	struct peer p;
	struct vmf_agent *a = vmf_agent_new(peer_pair(&p, ENDLESS_FRAME));
	struct vmf_error e = {0};
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_agent_ping(a, 500, &e), -ETIMEDOUT);
	int64_t ms = vmf_now_ms() - t0;
	ck_assert_msg(ms >= 450 && ms < slack(900), "timed out after %lld ms", (long long)ms);
	vmf_agent_free(a);
	peer_join(&p);
}
END_TEST

START_TEST(silence_is_cut_at_the_deadline)
{
	struct peer p;
	struct vmf_agent *a = vmf_agent_new(peer_pair(&p, SILENT));
	struct vmf_error e = {0};
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_agent_ping(a, 400, &e), -ETIMEDOUT);
	ck_assert_int_lt(vmf_now_ms() - t0, slack(800));
	t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_agent_wait_ready(a, 700, &e), -ETIMEDOUT);
	ck_assert_int_lt(vmf_now_ms() - t0, slack(1200));
	vmf_agent_free(a);
	peer_join(&p);
}
END_TEST

/* Late answers to the caller's own requests are not strays: an agent that
 * comes up to find a hundred Pings queued answers each, and the next call
 * still gets its reply behind them. */
START_TEST(late_replies_to_own_requests_are_not_strays)
{
	struct peer p;
	struct vmf_agent *a = vmf_agent_new(peer_pair(&p, STALE_PONGS));
	struct vmf_error e = {0};
	for (int i = 0; i < 100; i++) {
		/* Each Ping is given up at once: its answer arrives late. */
		int r = vmf_agent_ping(a, 0, &e);
		ck_assert_msg(r == 0 || r == -ETIMEDOUT, "%s", e.msg);
	}
	int64_t t = 0;
	ck_assert_msg(vmf_agent_set_time(a, 42, &t, 5000, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(t, 42);
	vmf_agent_free(a);
	peer_join(&p);
}
END_TEST

/* A hostile agent's reconnects are bounded: attempts of 2 s, then the
 * rest of the deadline; each connection a silent one. */
static int connects;
static struct peer silent_peers[8];

static int
silent_connect(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err)
{
	(void)vm;
	(void)timeout_ms;
	(void)err;
	return peer_pair(&silent_peers[connects++], SILENT);
}

START_TEST(reconnects_are_bounded)
{
	struct vmf_agent *a = NULL;
	struct vmf_error e = {0};
	connects = 0;
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_agent_open(silent_connect, NULL, 3000, &a, &e), -ETIMEDOUT);
	int64_t ms = vmf_now_ms() - t0;
	ck_assert_msg(ms >= 2900 && ms < 3600, "gave up after %lld ms", (long long)ms);
	ck_assert_int_eq(connects, 2);
	for (int i = 0; i < connects; i++)
		peer_join(&silent_peers[i]);
}
END_TEST

static void
assert_text(const char *what, const char *s)
{
	ck_assert_msg(s && vmf_utf8_valid(s, strlen(s)), "%s is not valid UTF-8", what);
	for (const unsigned char *c = (const unsigned char *)s; *c; c++)
		ck_assert_msg(*c >= 0x20 && *c != 0x7f, "%s has control byte 0x%02x: %s", what, *c, s);
	ck_assert_msg(!strstr(s, "\xc2\x9b") && !strstr(s, "\xe2\x80\xae"), "%s has a C1 or bidi control", what);
}

START_TEST(guest_strings_come_out_valid_and_escaped)
{
	struct peer p;
	struct vmf_agent *a = vmf_agent_new(peer_pair(&p, HOSTILE_STRINGS));
	struct vmf_error e = {0};
	/* The guest's view of itself (inspect): text, escaped; what is plain
	 * stays as it was. */
	Vmf__Agent__AgentReply *rep = NULL;
	ck_assert_msg(vmf_agent_guest_info(a, &rep, 5000, &e) == 0, "%s", e.msg);
	const Vmf__Agent__GuestInfo *gi = rep->guest_info;
	const char *fields[] = { gi->hostname, gi->boot_id, gi->machine_id, gi->agent_version,
				 gi->share_entries[0], gi->interfaces[0] };
	for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
		assert_text("a guest info field", fields[i]);
	ck_assert_ptr_nonnull(strstr(gi->hostname, "\\x1b]0;owned\\x07"));
	ck_assert_str_eq(gi->share_entries[1], "plain");
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	/* Messages: escaped. */
	ck_assert_int_eq(vmf_agent_ping(a, 5000, &e), -EIO);
	assert_text("an error reply", e.msg);
	ck_assert_msg(strstr(e.msg, "\\x1b]0;owned\\x07") && strstr(e.msg, "\\r\\n") && strstr(e.msg, "\\u202e") &&
		      strstr(e.msg, "\xef\xbf\xbd"), "%s", e.msg);
	/* Kept values: validated. */
	struct vmf_agent_identity id;
	ck_assert_int_eq(vmf_agent_new_identity(a, &id, 5000, &e), -EPROTO);
	assert_text("a boot id refusal", e.msg);
	struct vmf_agent_handout ho;
	ck_assert_msg(vmf_agent_send_handout(a, "sb1", &ho, 5000, &e) == 0, "%s", e.msg);
	ck_assert_msg(vmf_agent_recv_handout(a, &ho, 5000, &e) == 0, "%s", e.msg);
	assert_text("the hand-out's hostname", ho.hostname);
	assert_text("the hand-out's NIC error", ho.net_error);
	assert_text("the hand-out's boot id", ho.boot_id);
	char dev[64];
	ck_assert_int_eq(vmf_agent_mount_disk(a, "s1", NULL, NULL, false, dev, sizeof dev, 5000, &e), -EPROTO);
	assert_text("a device refusal", e.msg);
	vmf_agent_free(a);
	peer_join(&p);
}
END_TEST

/* ---- the library's exec ---- */

static char *dir;

static void
lib_setup(void)
{
	dir = vmf_test_tmpdir("vmf-agent-hostile");
}

static void
lib_teardown(void)
{
	struct vmf_error e;
	vmf_rm_rf(dir, &e);
	free(dir);
}

static long
maxrss_kib(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

/* Connects and starts a process, then signals it: while the library waits
 * for the acknowledgement, what the guest sends instead is kept for
 * next_event only as far as the protocol allows.  How long until the
 * connection failed, and its sentence. */
static int
exec_until_failure(enum behavior b, struct vmf_error *e, int64_t *ms)
{
	struct peer p;
	peer_listen(&p, b, dir);
	struct vmf_client_agent *a = NULL;
	ck_assert_msg(vmf_client_agent_connect(p.path, "unix", 0, 5000, NULL, NULL, &a, e) == 0, "%s", e->msg);
	const char *argv[] = { "cat", NULL };
	struct vmf_exec_opts o = { .argv = argv };
	uint64_t id;
	ck_assert_msg(vmf_client_exec_start(a, &o, &id, 5000, e) == 0, "%s", e->msg);
	ck_assert_uint_eq(id, EXEC_ID);
	int64_t t0 = vmf_now_ms();
	int r = vmf_client_exec_signal(a, id, SIGTERM, e);
	*ms = vmf_now_ms() - t0;
	vmf_client_agent_close(a);
	peer_join(&p);
	return r;
}

/* The connection fails fast over what the guest sent (a sentence with
 * words in it), the library's memory staying flat. */
static void
exec_fails(enum behavior b, const char *words)
{
	struct vmf_error e = {0};
	int64_t ms;
	long rss0 = maxrss_kib();
	int r = exec_until_failure(b, &e, &ms);
	ck_assert_msg(r == -EPROTO && strstr(e.msg, words), "%d: %s", r, e.msg);
	ck_assert_msg(ms < slack(2000), "took %lld ms", (long long)ms);
	if (!vmf_test_under_valgrind())
		ck_assert_msg(maxrss_kib() - rss0 < 16 * 1024, "RSS grew by %ld KiB", maxrss_kib() - rss0);
}

/* 256 KiB of credit, never given back while the call waits. */
START_TEST(exec_output_beyond_the_window_ends_the_connection)
{
	exec_fails(OUTPUT_FLOOD, "window");
}
END_TEST

START_TEST(exec_output_for_no_process_ends_the_connection)
{
	exec_fails(UNKNOWN_EXEC, "answer nothing asked");
}
END_TEST

START_TEST(exec_flood_of_zeros_ends_the_connection)
{
	exec_fails(EXEC_THEN_ZEROS, "answer nothing asked");
}
END_TEST

/* connect against a flood fails at once (no reconnect for a broken
 * agent); against silence, its attempts are bounded by its deadline. */
START_TEST(exec_connect_to_a_flood_or_silence)
{
	struct peer p;
	struct vmf_client_agent *a = NULL;
	struct vmf_error e = {0};
	peer_listen(&p, FLOOD_ZEROS, dir);
	int64_t t0 = vmf_now_ms();
	int r = vmf_client_agent_connect(p.path, "unix", 0, 10000, NULL, NULL, &a, &e);
	ck_assert_msg(r == -EPROTO && strstr(e.msg, "answer nothing asked"), "%d: %s", r, e.msg);
	ck_assert_int_lt(vmf_now_ms() - t0, slack(1000));
	peer_join(&p);

	peer_listen(&p, SILENT, dir);
	t0 = vmf_now_ms();
	r = vmf_client_agent_connect(p.path, "unix", 0, 2500, NULL, NULL, &a, &e);
	int64_t ms = vmf_now_ms() - t0;
	ck_assert_msg(r == -EBUSY, "%d: %s", r, e.msg);
	ck_assert_msg(ms >= 2400 && ms < 3500, "gave up after %lld ms", (long long)ms);
	/* The listener's backlog holds the reconnects; the peer thread gets the first. */
	shutdown(p.lfd, SHUT_RDWR);
	peer_join(&p);
}
END_TEST

/* The process table's answers are the guest's: strings come out escaped,
 * a table longer than the agent's limit (pages without end) and an attach
 * answered for another process (or one attached already) fail with
 * sentences, fast, memory flat. */
START_TEST(process_table_lies_are_refused)
{
	struct peer p;
	peer_listen(&p, TABLE_LIES, dir);
	struct vmf_client_agent *a = NULL;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_client_agent_connect(p.path, "unix", 0, 5000, NULL, NULL, &a, &e) == 0, "%s", e.msg);
	struct vmf_exec_entry *v;
	size_t n;
	ck_assert_msg(vmf_client_exec_list(a, &v, &n, 5000, &e) == 0, "%s", e.msg);
	ck_assert_uint_eq(n, 2);
	for (size_t i = 0; i < n; i++) {
		ck_assert_msg(!strchr(v[i].tag, 0x1b) && !strchr(v[i].cmd, 0x1b) && !strchr(v[i].cwd, 0x1b),
			      "raw escape in %s / %s / %s", v[i].tag, v[i].cmd, v[i].cwd);
		ck_assert_msg(vmf_utf8_valid(v[i].cmd, strlen(v[i].cmd)), "%s", v[i].cmd);
	}
	free(v);
	long rss0 = maxrss_kib();
	int64_t t0 = vmf_now_ms();
	int r = vmf_client_exec_list(a, &v, &n, 5000, &e);
	ck_assert_msg(r == -EPROTO && strstr(e.msg, "more than its table holds"), "%d: %s", r, e.msg);
	ck_assert_msg(vmf_now_ms() - t0 < slack(2000), "took %lld ms", (long long)(vmf_now_ms() - t0));
	if (!vmf_test_under_valgrind())
		ck_assert_msg(maxrss_kib() - rss0 < 16 * 1024, "RSS grew by %ld KiB", maxrss_kib() - rss0);
	uint64_t got;
	r = vmf_client_exec_attach(a, 9, 0, NULL, 0, &got, NULL, 5000, &e);
	ck_assert_msg(r == -EPROTO && strstr(e.msg, "when 9 was asked for"), "%d: %s", r, e.msg);
	ck_assert_msg(vmf_client_exec_attach(a, 0, 5, NULL, 0, &got, NULL, 5000, &e) == 0, "%s", e.msg);
	ck_assert_uint_eq(got, 5);
	/* Its stdin window is what the library believes at most. */
	ck_assert_uint_le(vmf_client_exec_stdin_room(a, 5), 1u << 20);
	r = vmf_client_exec_attach(a, 0, 5, NULL, 0, &got, NULL, 5000, &e);
	ck_assert_msg(r == -EPROTO && strstr(e.msg, "one this connection has already"), "%d: %s", r, e.msg);
	vmf_client_agent_close(a);
	peer_join(&p);
}
END_TEST

/* The file calls take from a guest only what they asked for: more data
 * than asked fails the call, an empty page that claims more ends the
 * listing, a type out of range is "other", the strings come out valid
 * UTF-8, and a reply of the wrong type is refused. */
START_TEST(file_replies_that_lie)
{
	struct peer p;
	peer_listen(&p, FILE_LIES, dir);
	struct vmf_client_agent *a = NULL;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_client_agent_connect(p.path, "unix", 0, 5000, NULL, NULL, &a, &e) == 0, "%s", e.msg);
	struct vmf_file_entry fe;
	ck_assert_msg(vmf_client_file_stat(a, NULL, "/x", &fe, 5000, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(fe.type, VMF_FILE_OTHER);
	const char *strs[] = { fe.name, fe.path, fe.owner, fe.group, fe.symlink_target };
	for (size_t i = 0; i < 5; i++)
		ck_assert_msg(vmf_utf8_valid(strs[i], strlen(strs[i])), "string %zu is not valid UTF-8", i);
	vmf_client_file_entry_free(&fe);
	struct vmf_file_entry *list;
	size_t n;
	int more = 1;
	ck_assert_msg(vmf_client_file_list(a, NULL, "/", 1, 0, &list, &n, &more, 5000, &e) == 0, "%s", e.msg);
	ck_assert(n == 0 && !more);
	free(list);
	char buf[10];
	size_t got;
	uint64_t size;
	int eof;
	int r = vmf_client_file_read(a, NULL, "/x", 0, buf, sizeof buf, &got, &size, &eof, 5000, &e);
	ck_assert_msg(r == -EPROTO && strstr(e.msg, "answered a read of 10 bytes with 20"), "%d: %s", r, e.msg);
	ck_assert_uint_eq(got, 0);
	r = vmf_client_file_remove(a, NULL, "/x", 5000, &e);
	ck_assert_msg(r == -EPROTO && strstr(e.msg, "message type"), "%d: %s", r, e.msg);
	/* A watch flooded while the next call waits: the library keeps a
	 * bounded number of its frames and counts the rest, every event it
	 * hands out has a known type and a valid name, none is unaccounted. */
	uint64_t wid;
	ck_assert_msg(vmf_client_file_watch(a, NULL, "/", 1, &wid, 5000, &e) == 0, "%s", e.msg);
	ck_assert_uint_eq(wid, WATCH_ID);
	struct vmf_file_entry fe2;
	ck_assert_msg(vmf_client_file_stat(a, NULL, "/x", &fe2, 10000, &e) == 0, "%s", e.msg);
	vmf_client_file_entry_free(&fe2);
	uint64_t named = 0, lost = 0, frames = 0;
	bool ended = false;
	while (!ended) {
		struct vmf_exec_event ev;
		ck_assert_msg(vmf_client_agent_next_event(a, &ev, 5000, &e) == 0, "%s", e.msg);
		ck_assert_int_eq(ev.type, VMF_EXEC_EV_FILES);
		ck_assert_uint_eq(ev.exec_id, WATCH_ID);
		frames++;
		for (size_t i = 0; i < ev.n_files; i++) {
			ck_assert_int_eq(ev.files[i].type, VMF_FILE_EV_CREATE);
			ck_assert(vmf_utf8_valid(ev.files[i].name, strlen(ev.files[i].name)));
		}
		named += ev.n_files;
		lost += ev.lost;
		ended = ev.ended;
		if (ended)
			ck_assert(vmf_utf8_valid(ev.message, strlen(ev.message)) && !strchr(ev.message, '\x1b'));
	}
	ck_assert_msg(frames <= 17, "%llu frames kept", (unsigned long long)frames);
	ck_assert_uint_eq(named + lost, (uint64_t)WATCH_FLOOD_FRAMES * WATCH_FRAME_EVENTS);
	ck_assert_uint_gt(lost, 0);
	vmf_client_agent_close(a);
	peer_join(&p);
}
END_TEST

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	Suite *s = suite_create("agent_hostile");
	TCase *tc = tcase_create("daemon");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, flood_of_zeros_ends_the_call_at_once);
	tcase_add_test(tc, replies_for_wrong_ids_end_the_call);
	tcase_add_test(tc, junk_frames_end_the_call);
	tcase_add_test(tc, trickle_is_cut_at_the_deadline);
	tcase_add_test(tc, silence_is_cut_at_the_deadline);
	tcase_add_test(tc, late_replies_to_own_requests_are_not_strays);
	tcase_add_test(tc, reconnects_are_bounded);
	tcase_add_test(tc, guest_strings_come_out_valid_and_escaped);
	suite_add_tcase(s, tc);
	TCase *tl = tcase_create("library");
	tcase_set_timeout(tl, 120);
	tcase_add_checked_fixture(tl, lib_setup, lib_teardown);
	tcase_add_test(tl, exec_output_beyond_the_window_ends_the_connection);
	tcase_add_test(tl, exec_output_for_no_process_ends_the_connection);
	tcase_add_test(tl, exec_flood_of_zeros_ends_the_connection);
	tcase_add_test(tl, exec_connect_to_a_flood_or_silence);
	tcase_add_test(tl, process_table_lies_are_refused);
	tcase_add_test(tl, file_replies_that_lie);
	suite_add_tcase(s, tl);
	return vmf_test_run(s);
}
