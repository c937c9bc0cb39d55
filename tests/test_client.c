/* libvmfactory-client and the vmfactory CLI against a fake daemon: a thread
 * serving the control socket in a temp dir with scripted replies, good and
 * broken.  No QEMU, no real daemon. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "frame.h"
#include "testlib.h"
#include "text.h"
#include "util.h"

extern char **environ;

#define TPL_ID "5f1c0de0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c"
#define VM_READY "11111111-1111-4111-8111-111111111111"
#define VM_ASSIGNED "22222222-2222-4222-8222-222222222222"
#define ERR_MSG "no VM 33333333-3333-4333-8333-333333333333 in this daemon"
#define SERVE_MS 10000   /* the fake's per-read deadline */
#define CLI_MS 20000     /* a CLI run's deadline */

/* ---- the fake daemon ---- */

enum fake_mode {
	FAKE_NORMAL,     /* a well-behaved daemon */
	FAKE_ERROR,      /* every request fails with ENOENT + ERR_MSG */
	FAKE_OVERSIZE,   /* announces a 4 GiB reply, then sends nothing */
	FAKE_TRUNCATED,  /* announces 100 bytes, sends 10, closes */
	FAKE_CLOSE,      /* reads the request and closes */
	FAKE_GARBAGE,    /* a frame that is not a Reply */
	FAKE_NO_BODY,    /* success without the result */
	FAKE_SILENT,     /* reads the request and never answers */
	FAKE_REFUSE,     /* EACCES at accept, before reading, then closes */
	FAKE_HOSTILE,    /* NORMAL, every string it can carry a guest's worst */
};

/* What a guest (or a daemon older than the checks) could put in a string:
 * an OSC title, a screen clear, a fake line, C1 CSI, a bidi override,
 * invalid UTF-8. */
#define HOSTILE "x\x1b]0;owned\x07\x1b[2J\r\nvmfactory: fake\x7f\xc2\x9b" "31m\xe2\x80\xae" "gnp\xff"

struct fake {
	char *dir;
	char path[600];
	int lfd;
	int stop[2];
	pthread_t thread;
	enum fake_mode mode;
	int status_pid;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int nconn, nreq, nrefused;
	Vmf__Control__Request *last;
};

static struct fake F;

static void
send_reply(int fd, const Vmf__Control__Reply *r)
{
	size_t n = vmf__control__reply__get_packed_size(r);
	uint8_t *buf = malloc(n ? n : 1);
	vmf__control__reply__pack(r, buf);
	vmf_frame_write(fd, buf, n, vmf_now_ms() + SERVE_MS, NULL);
	free(buf);
}

static void
send_raw(int fd, const void *p, size_t n)
{
	vmf_write_full(fd, p, n, vmf_now_ms() + SERVE_MS, NULL);
}

/* Waits for the client to hang up, so that only the client's own checks
 * (length cap, deadline) can end its call. */
static void
drain_until_eof(int fd)
{
	char b[256];
	while (vmf_read_full(fd, b, 1, vmf_now_ms() + SERVE_MS, NULL) == 0)
		;
}

static void
fill_vm(Vmf__Control__VmInfo *v, const char *id, const char *state, int pid, const char *sandbox)
{
	v->id = (char *)id;
	v->state = (char *)state;
	v->pid = pid;
	v->vcpus = 1;
	v->memory_mib = 256;
	v->qmp_socket = "/run/vmf/vms/x/qmp.sock";
	v->agent_socket = "/run/vmf/vms/x/agent.sock";
	v->agent_transport = "unix";
	v->share_dir = "/run/vmf/vms/x/share";
	v->run_dir = "/run/vmf/vms/x";
	v->template_id = TPL_ID;
	v->sandbox_id = (char *)sandbox;
	v->share_link = "";
	v->sock_link = "";
	v->created_ns = vmf_realtime_ns() - 5000000000LL;
	v->pss_kib = 12345;
}

static void
reply_normal(int fd, const Vmf__Control__Request *req, bool hostile)
{
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	Vmf__Control__VmInfo vm = VMF__CONTROL__VM_INFO__INIT, vm2 = VMF__CONTROL__VM_INFO__INIT;
	if (req->protocol_version < VMF_CONTROL_PROTOCOL_VERSION_MIN ||
	    req->protocol_version > VMF_CONTROL_PROTOCOL_VERSION) {
		r.error_code = EPROTO;
		r.error_message = "protocol version is not supported";
		send_reply(fd, &r);
		return;
	}
	switch (req->body_case) {
	case VMF__CONTROL__REQUEST__BODY_STATUS: {
		Vmf__Control__StatusReply s = VMF__CONTROL__STATUS_REPLY__INIT;
		Vmf__Control__TemplateStatus t = VMF__CONTROL__TEMPLATE_STATUS__INIT, *ts[] = { &t };
		Vmf__Control__PoolStatus p = VMF__CONTROL__POOL_STATUS__INIT, *ps[] = { &p };
		Vmf__Control__StepLatency s1 = VMF__CONTROL__STEP_LATENCY__INIT, s2 = VMF__CONTROL__STEP_LATENCY__INIT;
		Vmf__Control__StepLatency *steps[] = { &s1, &s2 };
		Vmf__Control__VmInfo *vms[] = { &vm, &vm2 };
		char *caps[] = { "ignore-shared", "hotplug-memory" };
		t.id = TPL_ID, t.state = "ready", t.vcpus = 1, t.memory_mib = 256, t.max_vcpus = 4;
		t.max_memory_mib = 2048, t.memory_size = 268435456, t.state_size = 1048576;
		t.created_ns = vmf_realtime_ns(), t.error = "", t.n_capabilities = 2, t.capabilities = caps;
		p.template_id = TPL_ID, p.vcpus = 1, p.memory_mib = 256, p.target = 2, p.ready = 1;
		p.filling = 1, p.failed = 3, p.last_error = "clone failed: boom", p.share_memory = true;
		fill_vm(&vm, VM_READY, "ready", 4242, "");
		fill_vm(&vm2, VM_ASSIGNED, "assigned", 4343, hostile ? HOSTILE : "sb-1");
		if (hostile)
			p.last_error = t.error = vm2.hostname = vm2.share_link = HOSTILE;
		s1.step = "resume", s1.count = 8, s1.p50_ms = 1.5, s1.p99_ms = 3.0;
		s2.step = "total", s2.count = 8, s2.p50_ms = 12.5, s2.p99_ms = 40.25;
		pthread_mutex_lock(&F.mu);
		s.pid = F.status_pid;
		pthread_mutex_unlock(&F.mu);
		s.uptime_ms = 65000, s.socket = F.path;
		s.n_templates = 1, s.templates = ts, s.n_pools = 1, s.pools = ps, s.n_vms = 2, s.vms = vms;
		s.requests = 10, s.hits = 8, s.misses = 2, s.errors = 1;
		s.handout_p50_ms = 12.5, s.handout_p99_ms = 40.25, s.n_steps = 2, s.steps = steps;
		s.hypervisor = "qemu 7.2.0", s.accel = "tcg", s.n_capabilities = 2, s.capabilities = caps;
		r.body_case = VMF__CONTROL__REPLY__BODY_STATUS;
		r.status = &s;
		send_reply(fd, &r);
		return;
	}
	case VMF__CONTROL__REQUEST__BODY_GET_VM: {
		const Vmf__Control__GetVMRequest *g = req->get_vm;
		fill_vm(&vm, VM_ASSIGNED, "assigned", 4343, g->sandbox_id);
		vm.vcpus = g->vcpus;
		vm.memory_mib = g->memory_mib;
		vm.share_link = g->share_dir;
		vm.sock_link = g->sock_dir;
		r.body_case = VMF__CONTROL__REPLY__BODY_VM;
		r.vm = &vm;
		send_reply(fd, &r);
		return;
	}
	case VMF__CONTROL__REQUEST__BODY_INSPECT: {
		Vmf__Control__InspectReply ir = VMF__CONTROL__INSPECT_REPLY__INIT;
		Vmf__Control__GuestView g = VMF__CONTROL__GUEST_VIEW__INIT;
		char *ents[] = { hostile ? HOSTILE : "hello.txt", "data" };
		bool paused = strcmp(req->inspect->vm_id, VM_READY) == 0;
		fill_vm(&vm, req->inspect->vm_id, paused ? "ready" : "assigned", 4343, paused ? "" : "sb-1");
		if (hostile)
			vm.hostname = vm.boot_id = HOSTILE, g.hostname = g.agent_version = g.machine_id = HOSTILE,
			g.n_interfaces = 1, g.interfaces = ents;
		ir.vm = &vm;
		ir.host_realtime_ns = vmf_realtime_ns();
		if (paused) {
			ir.guest_error = "the VM is ready, its guest is paused";
		} else {
			g.online_cpus = 2, g.mem_total_kib = 500000, g.realtime_ns = ir.host_realtime_ns - 1000;
			g.random_hex = "00112233445566778899aabbccddeeff", g.boot_id = "b00t";
			g.n_share_entries = 2, g.share_entries = ents, g.uptime_ns = 7000000000ULL;
			g.agent_version = "vmf-agent 1";
			ir.guest = &g;
		}
		r.body_case = VMF__CONTROL__REPLY__BODY_INSPECT;
		r.inspect = &ir;
		send_reply(fd, &r);
		return;
	}
	case VMF__CONTROL__REQUEST__BODY_RELEASE_VM: {
		Vmf__Control__ReleaseReply rr = VMF__CONTROL__RELEASE_REPLY__INIT;
		rr.vm_id = req->release_vm->vm_id;
		r.body_case = VMF__CONTROL__REPLY__BODY_RELEASE;
		r.release = &rr;
		send_reply(fd, &r);
		return;
	}
	case VMF__CONTROL__REQUEST__BODY_DESTROY: {
		Vmf__Control__DestroyReply dr = VMF__CONTROL__DESTROY_REPLY__INIT;
		dr.stopped = 3;
		r.body_case = VMF__CONTROL__REPLY__BODY_DESTROY;
		r.destroy = &dr;
		/* Like the daemon: the socket is gone once destroy has replied. */
		unlink(F.path);
		send_reply(fd, &r);
		return;
	}
	default:
		r.error_code = EINVAL;
		r.error_message = "unknown request type";
		send_reply(fd, &r);
		return;
	}
}

/* Serves one connection; returns false when it must be closed. */
static bool
serve_one(int fd)
{
	uint8_t *buf;
	size_t len;
	if (vmf_frame_read(fd, &buf, &len, VMF_CLIENT_MAX_FRAME, vmf_now_ms() + SERVE_MS, NULL) < 0)
		return false;
	Vmf__Control__Request *req = vmf__control__request__unpack(NULL, len, buf);
	free(buf);
	if (!req)
		return false;
	pthread_mutex_lock(&F.mu);
	if (F.last)
		vmf__control__request__free_unpacked(F.last, NULL);
	F.last = req;
	F.nreq++;
	enum fake_mode mode = F.mode;
	pthread_mutex_unlock(&F.mu);

	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	static const uint8_t huge[] = { 0xff, 0xff, 0xff, 0xff };
	static const uint8_t cut[] = { 0, 0, 0, 100, 8, 1, 0x62, 2, 0x0a, 0, 1, 2, 3, 4 };
	static const uint8_t garbage[] = { 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff };
	switch (mode) {
	case FAKE_NORMAL:
	case FAKE_HOSTILE:
		if (mode == FAKE_HOSTILE && req->body_case == VMF__CONTROL__REQUEST__BODY_RELEASE_VM) {
			r.error_code = EIO;
			r.error_message = "the guest agent reports: " HOSTILE;
			send_reply(fd, &r);
			return true;
		}
		reply_normal(fd, req, mode == FAKE_HOSTILE);
		return true;
	case FAKE_ERROR:
		r.error_code = ENOENT;
		r.error_message = ERR_MSG;
		send_reply(fd, &r);
		return true;
	case FAKE_OVERSIZE:
		send_raw(fd, huge, sizeof(huge));
		drain_until_eof(fd);
		return false;
	case FAKE_TRUNCATED:
		send_raw(fd, cut, sizeof(cut));
		return false;
	case FAKE_CLOSE:
		return false;
	case FAKE_GARBAGE:
		send_raw(fd, garbage, sizeof(garbage));
		return true;
	case FAKE_NO_BODY:
		send_reply(fd, &r);
		return true;
	case FAKE_SILENT:
		drain_until_eof(fd);
		return false;
	case FAKE_REFUSE:
		return false;
	}
	return false;
}

static void *
fake_main(void *arg)
{
	(void)arg;
	for (;;) {
		struct pollfd p[2] = { { .fd = F.lfd, .events = POLLIN }, { .fd = F.stop[0], .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		int fd = accept4(F.lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		pthread_mutex_lock(&F.mu);
		F.nconn++;
		enum fake_mode mode = F.mode;
		pthread_mutex_unlock(&F.mu);
		if (mode == FAKE_REFUSE) {
			Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
			r.error_code = EACCES;
			r.error_message = "permission denied: your user may not use this vmfactory daemon";
			send_reply(fd, &r);
		} else {
			while (serve_one(fd))
				;
		}
		close(fd);
		pthread_mutex_lock(&F.mu);
		F.nrefused += mode == FAKE_REFUSE;
		pthread_cond_broadcast(&F.cond);
		pthread_mutex_unlock(&F.mu);
	}
	return NULL;
}

static void
setup(void)
{
	memset(&F, 0, sizeof(F));
	F.dir = vmf_test_tmpdir("vmf-client");
	snprintf(F.path, sizeof(F.path), "%s/vmfactory.sock", F.dir);
	F.status_pid = (int)getpid();
	pthread_mutex_init(&F.mu, NULL);
	pthread_cond_init(&F.cond, NULL);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	ck_assert_uint_lt(strlen(F.path), sizeof(sa.sun_path));
	strcpy(sa.sun_path, F.path);
	F.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(F.lfd, 0);
	ck_assert_int_eq(bind(F.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(F.lfd, 16), 0);
	ck_assert_int_eq(pipe2(F.stop, O_CLOEXEC), 0);
	ck_assert_int_eq(pthread_create(&F.thread, NULL, fake_main, NULL), 0);
}

static void
teardown(void)
{
	ck_assert_int_eq(write(F.stop[1], "x", 1), 1);
	pthread_join(F.thread, NULL);
	close(F.stop[0]);
	close(F.stop[1]);
	close(F.lfd);
	if (F.last)
		vmf__control__request__free_unpacked(F.last, NULL);
	pthread_mutex_destroy(&F.mu);
	pthread_cond_destroy(&F.cond);
	vmf_rm_rf(F.dir, NULL);
	free(F.dir);
}

static void
set_mode(enum fake_mode m)
{
	pthread_mutex_lock(&F.mu);
	F.mode = m;
	pthread_mutex_unlock(&F.mu);
}

static struct vmf_client *
connect_fake(void)
{
	struct vmf_client *c = NULL;
	struct vmf_error e = {0};
	int r = vmf_client_connect(F.path, &c, &e);
	ck_assert_msg(r == 0, "connect: %s", e.msg);
	return c;
}

/* ---- the library ---- */

START_TEST(status_round_trip)
{
	struct vmf_client *c = connect_fake();
	struct vmf_error e = {0};
	Vmf__Control__Reply *r = NULL;
	ck_assert_int_eq(vmf_client_status(c, &r, 5000, &e), 0);
	ck_assert_int_eq(r->error_code, 0);
	Vmf__Control__StatusReply *s = r->status;
	ck_assert_ptr_nonnull(s);
	ck_assert_int_eq(s->pid, getpid());
	ck_assert_str_eq(s->socket, F.path);
	ck_assert_uint_eq(s->n_pools, 1);
	ck_assert_str_eq(s->pools[0]->template_id, TPL_ID);
	ck_assert_uint_eq(s->pools[0]->target, 2);
	ck_assert_uint_eq(s->n_vms, 2);
	ck_assert_str_eq(s->vms[1]->sandbox_id, "sb-1");
	ck_assert_uint_eq(s->n_steps, 2);
	ck_assert_double_eq(s->handout_p99_ms, 40.25);
	vmf__control__reply__free_unpacked(r, NULL);
	vmf_client_close(c);

	pthread_mutex_lock(&F.mu);
	/* Nothing in it needs more than version 1: an older daemon serves it. */
	ck_assert_uint_eq(F.last->protocol_version, VMF_CONTROL_PROTOCOL_VERSION_MIN);
	ck_assert_int_eq(F.last->body_case, VMF__CONTROL__REQUEST__BODY_STATUS);
	pthread_mutex_unlock(&F.mu);
}
END_TEST

START_TEST(several_requests_on_one_connection)
{
	struct vmf_client *c = connect_fake();
	struct vmf_error e = {0};
	Vmf__Control__Reply *r = NULL;
	ck_assert_int_eq(vmf_client_status(c, &r, 5000, &e), 0);
	vmf__control__reply__free_unpacked(r, NULL);
	ck_assert_int_eq(vmf_client_inspect(c, VM_ASSIGNED, &r, 5000, &e), 0);
	ck_assert_str_eq(r->inspect->vm->id, VM_ASSIGNED);
	ck_assert_uint_eq(r->inspect->guest->n_share_entries, 2);
	vmf__control__reply__free_unpacked(r, NULL);
	ck_assert_int_eq(vmf_client_release_vm(c, VM_ASSIGNED, 5000, &e), 0);

	Vmf__Control__GetVMRequest g = VMF__CONTROL__GET_VMREQUEST__INIT;
	g.vcpus = 2, g.memory_mib = 384, g.sandbox_id = "sb-2", g.share_dir = "/s/share", g.sock_dir = "/s/sock";
	ck_assert_int_eq(vmf_client_get_vm(c, &g, &r, 5000, &e), 0);
	ck_assert_uint_eq(r->vm->vcpus, 2);
	ck_assert_str_eq(r->vm->share_link, "/s/share");
	vmf__control__reply__free_unpacked(r, NULL);
	ck_assert_int_eq(vmf_client_destroy(c, 1, &r, 5000, &e), 0);
	ck_assert_uint_eq(r->destroy->stopped, 3);
	vmf__control__reply__free_unpacked(r, NULL);
	vmf_client_close(c);

	pthread_mutex_lock(&F.mu);
	ck_assert_int_eq(F.nreq, 5);
	ck_assert_int_eq(F.nconn, 1);
	ck_assert(F.last->destroy->all);
	pthread_mutex_unlock(&F.mu);
}
END_TEST

START_TEST(error_reply_carries_errno_and_message)
{
	set_mode(FAKE_ERROR);
	struct vmf_client *c = connect_fake();
	struct vmf_error e = {0};
	Vmf__Control__Reply *r = (Vmf__Control__Reply *)&e;
	ck_assert_int_eq(vmf_client_inspect(c, "33333333-3333-4333-8333-333333333333", &r, 5000, &e), -ENOENT);
	ck_assert_ptr_null(r);
	ck_assert_int_eq(e.code, ENOENT);
	ck_assert_str_eq(e.msg, ERR_MSG);
	/* The connection stays usable after a daemon-side error. */
	ck_assert_int_eq(vmf_client_release_vm(c, "x", 5000, &e), -ENOENT);
	/* err may be NULL: the code still comes back. */
	ck_assert_int_eq(vmf_client_status(c, &r, 5000, NULL), -ENOENT);
	vmf_client_close(c);
}
END_TEST

START_TEST(oversize_reply_refused_before_reading)
{
	set_mode(FAKE_OVERSIZE);
	struct vmf_client *c = connect_fake();
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	int64_t t0 = vmf_now_ms();
	/* The fake sends nothing after the 4-byte length and keeps the
	 * connection open: only the length check can end this call early. */
	ck_assert_int_eq(vmf_client_status(c, &r, 10000, &e), -EMSGSIZE);
	ck_assert_int_lt(vmf_now_ms() - t0, 5000);
	ck_assert_msg(strstr(e.msg, "4294967295 bytes") && strstr(e.msg, F.path), "%s", e.msg);
	vmf_client_close(c);
}
END_TEST

START_TEST(truncated_reply)
{
	set_mode(FAKE_TRUNCATED);
	struct vmf_client *c = connect_fake();
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	ck_assert_int_eq(vmf_client_status(c, &r, 5000, &e), -EPIPE);
	ck_assert_msg(strstr(e.msg, "in the middle of a 100-byte reply") && strstr(e.msg, F.path), "%s", e.msg);
	vmf_client_close(c);
}
END_TEST

START_TEST(daemon_closes_without_reply)
{
	set_mode(FAKE_CLOSE);
	struct vmf_client *c = connect_fake();
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	ck_assert_int_eq(vmf_client_status(c, &r, 5000, &e), -EPIPE);
	ck_assert_msg(strstr(e.msg, "closed the connection without replying"), "%s", e.msg);
	/* A second request on the dead connection fails, without SIGPIPE. */
	ck_assert_int_lt(vmf_client_status(c, &r, 5000, &e), 0);
	vmf_client_close(c);
}
END_TEST

START_TEST(undecodable_and_bodiless_replies)
{
	set_mode(FAKE_GARBAGE);
	struct vmf_client *c = connect_fake();
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	ck_assert_int_eq(vmf_client_status(c, &r, 5000, &e), -EBADMSG);
	ck_assert_msg(strstr(e.msg, "not a vmfactory reply"), "%s", e.msg);
	set_mode(FAKE_NO_BODY);
	ck_assert_int_eq(vmf_client_status(c, &r, 5000, &e), -EBADMSG);
	ck_assert_msg(strstr(e.msg, "answered Status without its result"), "%s", e.msg);
	ck_assert_ptr_null(r);
	/* The generic call hands such a reply over as it is. */
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__StatusRequest sr = VMF__CONTROL__STATUS_REQUEST__INIT;
	req.body_case = VMF__CONTROL__REQUEST__BODY_STATUS;
	req.status = &sr;
	ck_assert_int_eq(vmf_client_call(c, &req, &r, 5000, &e), 0);
	ck_assert_int_eq(r->body_case, VMF__CONTROL__REPLY__BODY__NOT_SET);
	vmf__control__reply__free_unpacked(r, NULL);
	vmf_client_close(c);
}
END_TEST

START_TEST(silent_daemon_times_out)
{
	set_mode(FAKE_SILENT);
	struct vmf_client *c = connect_fake();
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_client_status(c, &r, 200, &e), -ETIMEDOUT);
	int64_t took = vmf_now_ms() - t0;
	ck_assert_int_ge(took, 200);
	ck_assert_int_lt(took, 5000);
	ck_assert_msg(strstr(e.msg, "did not reply in time") && strstr(e.msg, F.path), "%s", e.msg);
	vmf_client_close(c);
}
END_TEST

START_TEST(refused_peer_learns_why)
{
	set_mode(FAKE_REFUSE);
	struct vmf_client *c = connect_fake();
	/* Let the fake reply and close before we write, as the daemon does
	 * with a peer it refuses: our write then fails, the reply is there. */
	int64_t deadline = vmf_now_ms() + SERVE_MS;
	pthread_mutex_lock(&F.mu);
	while (F.nrefused == 0 && vmf_now_ms() < deadline) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&F.cond, &F.mu, &ts);
	}
	ck_assert_int_eq(F.nrefused, 1);
	pthread_mutex_unlock(&F.mu);
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	ck_assert_int_eq(vmf_client_status(c, &r, 5000, &e), -EACCES);
	ck_assert_msg(strstr(e.msg, "permission denied"), "%s", e.msg);
	vmf_client_close(c);
}
END_TEST

START_TEST(no_daemon)
{
	struct vmf_client *c = NULL;
	struct vmf_error e = {0};
	char p[700];
	snprintf(p, sizeof(p), "%s/absent.sock", F.dir);
	ck_assert_int_eq(vmf_client_connect(p, &c, &e), -ENOENT);
	ck_assert_ptr_null(c);
	ck_assert_int_eq(e.code, ENOENT);
	ck_assert_msg(strstr(e.msg, "no vmfactory daemon is answering on") && strstr(e.msg, p), "%s", e.msg);

	/* A socket file nobody listens on: a daemon that died. */
	snprintf(p, sizeof(p), "%s/stale.sock", F.dir);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, p);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	ck_assert_int_eq(vmf_client_connect(p, &c, &e), -ECONNREFUSED);
	ck_assert_msg(strstr(e.msg, "no vmfactory daemon is answering on") && strstr(e.msg, p), "%s", e.msg);

	char longp[200];
	memset(longp, 'a', sizeof(longp) - 1);
	longp[0] = '/';
	longp[sizeof(longp) - 1] = '\0';
	ck_assert_int_eq(vmf_client_connect(longp, &c, &e), -ENAMETOOLONG);
}
END_TEST

/* docs/protocol.md shows a Status request frame; it must be the bytes this
 * library sends. */
START_TEST(documented_status_frame)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__StatusRequest sr = VMF__CONTROL__STATUS_REQUEST__INIT;
	req.protocol_version = VMF_CONTROL_PROTOCOL_VERSION_MIN;
	req.body_case = VMF__CONTROL__REQUEST__BODY_STATUS;
	req.status = &sr;
	uint8_t frame[64];
	size_t n = vmf__control__request__get_packed_size(&req);
	ck_assert_uint_le(n + 4, sizeof(frame));
	vmf_frame_put_len(frame, (uint32_t)n);
	vmf__control__request__pack(&req, frame + 4);
	char hex[200] = "";
	for (size_t i = 0; i < n + 4; i++)
		snprintf(hex + strlen(hex), sizeof(hex) - strlen(hex), "%s%02x", i ? " " : "", frame[i]);
	ck_assert_str_eq(hex, "00 00 00 04 08 01 6a 00");
	char *doc = NULL;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_read_file(vmf_test_src("docs/protocol.md"), &doc, NULL, 1 << 20, &e) == 0, "%s", e.msg);
	ck_assert_msg(strstr(doc, hex), "docs/protocol.md does not show the Status frame %s", hex);
	free(doc);
}
END_TEST

/* ---- the CLI, end to end ---- */

struct run {
	int rc;
	char *out, *err;
};

static void
run_free(struct run *r)
{
	free(r->out);
	free(r->err);
}

/* Runs the vmfactory binary with args (NULL-terminated) and extra
 * environment entries (NULL-terminated, may be NULL), within CLI_MS. */
static struct run
cli_env(const char *const *env_extra, const char *const *args)
{
	const char *b = getenv("VMFACTORY_BUILDDIR");
	char exe[700], outp[700], errp[700];
	snprintf(exe, sizeof(exe), "%s/vmfactory", b ? b : ".");
	snprintf(outp, sizeof(outp), "%s/cli.out", F.dir);
	snprintf(errp, sizeof(errp), "%s/cli.err", F.dir);
	const char *argv[64] = { exe };
	int n = 1;
	for (; args[n - 1]; n++) {
		ck_assert_int_lt(n, 63);
		argv[n] = args[n - 1];
	}
	argv[n] = NULL;
	/* posix_spawn, not fork: a child forked while the fake's thread holds
	 * a lock (the sanitizers' allocators) could hang before its exec. */
	const char *envp[256];
	int ne = 0;
	for (char **e = environ; *e && ne < 200; e++)
		if (strncmp(*e, "VMFACTORY_SOCKET=", 17) && strncmp(*e, "VMFACTORY_STATE_DIR=", 20) &&
		    strncmp(*e, "VMFACTORY_RUN_DIR=", 18))
			envp[ne++] = *e;
	for (int i = 0; env_extra && env_extra[i]; i++)
		envp[ne++] = env_extra[i];
	envp[ne] = NULL;
	int ofd = open(outp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int efd = open(errp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert(ofd >= 0 && efd >= 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, ofd, 1);
	posix_spawn_file_actions_adddup2(&fa, efd, 2);
	pid_t pid;
	int sr = posix_spawn(&pid, exe, &fa, NULL, (char *const *)argv, (char *const *)envp);
	posix_spawn_file_actions_destroy(&fa);
	close(ofd);
	close(efd);
	ck_assert_msg(sr == 0, "cannot run %s (set VMFACTORY_BUILDDIR): %s", exe, strerror(sr));
	int st = 0;
	int64_t deadline = vmf_now_ms() + CLI_MS;
	pid_t w;
	while ((w = waitpid(pid, &st, WNOHANG)) == 0 && vmf_now_ms() < deadline)
		poll(NULL, 0, 5);
	if (w == 0) {
		char statp[64], stat[512] = "", *errs = NULL;
		snprintf(statp, sizeof(statp), "/proc/%d/stat", (int)pid);
		vmf_file_tail(statp, stat, sizeof(stat));
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		vmf_read_file(errp, &errs, NULL, 1 << 20, NULL);
		ck_abort_msg("vmfactory %s did not finish within %d ms (%s); stderr: %s", args[0], CLI_MS, stat,
			     errs ? errs : "");
	}
	struct run r = { .rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st) };
	ck_assert_int_eq(vmf_read_file(outp, &r.out, NULL, 1 << 20, NULL), 0);
	ck_assert_int_eq(vmf_read_file(errp, &r.err, NULL, 1 << 20, NULL), 0);
	return r;
}

#define CLI(...) cli_env(NULL, (const char *const[]){ __VA_ARGS__, NULL })

static json_object *
jget(json_object *o, const char *dotted)
{
	char buf[200];
	snprintf(buf, sizeof(buf), "%s", dotted);
	json_object *cur = o;
	for (char *save, *k = strtok_r(buf, ".", &save); k; k = strtok_r(NULL, ".", &save)) {
		json_object *next = NULL;
		if (json_object_is_type(cur, json_type_array))
			next = json_object_array_get_idx(cur, (size_t)atoi(k));
		else
			json_object_object_get_ex(cur, k, &next);
		ck_assert_msg(next != NULL, "JSON has no %s", dotted);
		cur = next;
	}
	return cur;
}

static void
has_keys(json_object *o, const char *prefix, const char *const *keys)
{
	char k[200];
	for (int i = 0; keys[i]; i++) {
		snprintf(k, sizeof(k), "%s%s", prefix, keys[i]);
		jget(o, k);
	}
}

static const char *const VM_KEYS[] = { "id", "pid", "vcpus", "memory_mib", "qmp_socket", "agent_socket",
				       "agent_transport", "agent_vsock_port",
				       "share_dir", "run_dir", "template_id", "state", "sandbox_id",
				       "share_link", "sock_link", "pool", NULL };

START_TEST(cli_status_json)
{
	struct run r = CLI("status", "-o", "json", "--socket", F.path);
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	json_object *j = json_tokener_parse(r.out);
	ck_assert_msg(j != NULL, "not JSON: %s", r.out);
	has_keys(j, "daemon.", (const char *const[]){ "pid", "uptime_ms", "socket", "hypervisor", "accel",
						      "capabilities", NULL });
	ck_assert_int_eq(json_object_get_int(jget(j, "daemon.pid")), getpid());
	ck_assert_str_eq(json_object_get_string(jget(j, "daemon.socket")), F.path);
	ck_assert_str_eq(json_object_get_string(jget(j, "daemon.capabilities.1")), "hotplug-memory");
	ck_assert_str_eq(json_object_get_string(jget(j, "templates.0.id")), TPL_ID);
	has_keys(j, "pools.0.", (const char *const[]){ "name", "template_id", "vcpus", "memory_mib", "target", "ready",
						       "filling", "failed", "last_error", "share_memory", NULL });
	ck_assert_str_eq(json_object_get_string(jget(j, "pools.0.template_id")), TPL_ID);
	ck_assert_int_eq(json_object_get_int(jget(j, "pools.0.target")), 2);
	ck_assert_int_eq(json_object_get_int(jget(j, "pools.0.ready")), 1);
	ck_assert_int_eq(json_object_get_int(jget(j, "pools.0.failed")), 3);
	ck_assert_str_eq(json_object_get_string(jget(j, "pools.0.last_error")), "clone failed: boom");
	ck_assert(json_object_get_boolean(jget(j, "pools.0.share_memory")));
	ck_assert_uint_eq(json_object_array_length(jget(j, "vms")), 2);
	has_keys(j, "vms.1.", VM_KEYS);
	has_keys(j, "vms.1.", (const char *const[]){ "age_s", "pss_kib", NULL });
	ck_assert_str_eq(json_object_get_string(jget(j, "vms.1.state")), "assigned");
	ck_assert_int_eq(json_object_get_int(jget(j, "vms.1.pid")), 4343);
	ck_assert_str_eq(json_object_get_string(jget(j, "vms.1.sandbox_id")), "sb-1");
	int64_t age = json_object_get_int64(jget(j, "vms.0.age_s"));
	ck_assert_msg(age >= 4 && age <= 60, "age_s %lld", (long long)age);
	ck_assert_int_eq(json_object_get_int(jget(j, "vms.0.pss_kib")), 12345);
	ck_assert_int_eq(json_object_get_int(jget(j, "counters.requests")), 10);
	ck_assert_int_eq(json_object_get_int(jget(j, "counters.hits")), 8);
	ck_assert_int_eq(json_object_get_int(jget(j, "counters.misses")), 2);
	ck_assert_int_eq(json_object_get_int(jget(j, "counters.errors")), 1);
	ck_assert_double_eq(json_object_get_double(jget(j, "latency.handout_p99_ms")), 40.25);
	ck_assert_str_eq(json_object_get_string(jget(j, "latency.steps.0.step")), "resume");
	has_keys(j, "latency.steps.1.", (const char *const[]){ "step", "count", "p50_ms", "p99_ms", NULL });
	json_object_put(j);
	run_free(&r);
}
END_TEST

START_TEST(cli_status_human_and_env)
{
	char env[700];
	snprintf(env, sizeof(env), "VMFACTORY_SOCKET=%s", F.path);
	struct run r = cli_env((const char *const[]){ env, NULL }, (const char *const[]){ "status", NULL });
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	ck_assert_msg(strstr(r.out, "pid ") && strstr(r.out, F.path), "%s", r.out);
	ck_assert_msg(strstr(r.out, VM_ASSIGNED) && strstr(r.out, "sb-1"), "%s", r.out);
	ck_assert_msg(strstr(r.out, "clone failed: boom"), "pool's last error missing: %s", r.out);
	ck_assert_msg(strstr(r.out, "resume"), "per-step latency missing: %s", r.out);
	run_free(&r);
}
END_TEST

START_TEST(cli_status_without_daemon_exits_3)
{
	char p[700];
	snprintf(p, sizeof(p), "%s/absent.sock", F.dir);
	struct run r = CLI("status", "--socket", p);
	ck_assert_int_eq(r.rc, 3);
	ck_assert_str_eq(r.out, "");
	ck_assert_msg(strstr(r.err, "no vmfactory daemon is answering") && strstr(r.err, p), "%s", r.err);
	run_free(&r);
	/* A daemon that answers "no" is running: not 3. */
	set_mode(FAKE_REFUSE);
	r = CLI("status", "--socket", F.path);
	ck_assert_int_eq(r.rc, 1);
	ck_assert_msg(strstr(r.err, "permission denied"), "%s", r.err);
	run_free(&r);
}
END_TEST

START_TEST(cli_get_marshals_only)
{
	struct run r = CLI("get", "--cpus", "2", "--memory", "512", "--sandbox", "sb-9", "--share-dir", "/sb/share",
			   "--sock-dir", "/sb/sock", "--timeout", "7", "-o", "json", "--socket", F.path);
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	json_object *j = json_tokener_parse(r.out);
	ck_assert_msg(j != NULL, "not JSON: %s", r.out);
	has_keys(j, "", VM_KEYS);
	ck_assert_int_eq(json_object_get_int(jget(j, "vcpus")), 2);
	ck_assert_int_eq(json_object_get_int(jget(j, "memory_mib")), 512);
	ck_assert_str_eq(json_object_get_string(jget(j, "sandbox_id")), "sb-9");
	ck_assert_str_eq(json_object_get_string(jget(j, "share_link")), "/sb/share");
	json_object_put(j);
	run_free(&r);
	pthread_mutex_lock(&F.mu);
	const Vmf__Control__GetVMRequest *g = F.last->get_vm;
	ck_assert_ptr_nonnull(g);
	ck_assert_uint_eq(F.last->protocol_version, 1);
	ck_assert_uint_eq(g->vcpus, 2);
	ck_assert_uint_eq(g->memory_mib, 512);
	ck_assert_str_eq(g->sandbox_id, "sb-9");
	ck_assert_str_eq(g->share_dir, "/sb/share");
	ck_assert_str_eq(g->sock_dir, "/sb/sock");
	ck_assert_uint_eq(g->timeout_ms, 7000);
	ck_assert_str_eq(g->pool, "");
	pthread_mutex_unlock(&F.mu);

	/* Naming a pool needs version 2: a version-1 daemon, which would
	 * ignore the name and might hand out a VM that shares memory, refuses
	 * the request instead. */
	r = CLI("get", "--cpus", "2", "--memory", "512", "--sandbox", "sb-9", "--share-dir", "/sb/share",
		"--sock-dir", "/sb/sock", "--pool", "private", "--socket", F.path);
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	run_free(&r);
	pthread_mutex_lock(&F.mu);
	ck_assert_uint_eq(F.last->protocol_version, 2);
	ck_assert_str_eq(F.last->get_vm->pool, "private");
	pthread_mutex_unlock(&F.mu);

	/* A lease needs version 5: a daemon that ignored it would never end
	 * the VM. */
	r = CLI("get", "--cpus", "2", "--memory", "512", "--sandbox", "sb-9", "--share-dir", "/sb/share",
		"--sock-dir", "/sb/sock", "--ttl", "30", "--on-expiry", "suspend", "--socket", F.path);
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	run_free(&r);
	pthread_mutex_lock(&F.mu);
	ck_assert_uint_eq(F.last->protocol_version, 5);
	ck_assert_uint_eq(F.last->get_vm->ttl_s, 30);
	ck_assert_str_eq(F.last->get_vm->on_expiry, "suspend");
	pthread_mutex_unlock(&F.mu);

	/* The daemon validates: nonsense still reaches it. */
	r = CLI("get", "--cpus", "0", "--memory", "1", "--sandbox", "../x", "--share-dir", "rel", "--sock-dir", "rel",
		"--socket", F.path);
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	run_free(&r);
	pthread_mutex_lock(&F.mu);
	ck_assert_str_eq(F.last->get_vm->sandbox_id, "../x");
	ck_assert_int_eq(F.nreq, 4);
	pthread_mutex_unlock(&F.mu);
}
END_TEST

START_TEST(cli_daemon_error_printed_once)
{
	set_mode(FAKE_ERROR);
	struct run r = CLI("release", "33333333-3333-4333-8333-333333333333", "--socket", F.path);
	ck_assert_int_eq(r.rc, 1);
	ck_assert_str_eq(r.out, "");
	ck_assert_str_eq(r.err, "vmfactory: " ERR_MSG "\n");
	run_free(&r);
}
END_TEST

START_TEST(cli_inspect_json)
{
	struct run r = CLI("inspect", VM_ASSIGNED, "-o", "json", "--socket", F.path);
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	json_object *j = json_tokener_parse(r.out);
	ck_assert_msg(j != NULL, "not JSON: %s", r.out);
	has_keys(j, "guest.", (const char *const[]){ "online_cpus", "mem_total_kib", "realtime_ns", "random_hex",
						     "boot_id", "share_entries", "uptime_ns", "agent_version", NULL });
	has_keys(j, "vm.", VM_KEYS);
	jget(j, "host_realtime_ns");
	ck_assert_int_eq(json_object_get_int(jget(j, "guest.online_cpus")), 2);
	ck_assert_str_eq(json_object_get_string(jget(j, "guest.share_entries.0")), "hello.txt");
	ck_assert_str_eq(json_object_get_string(jget(j, "vm.id")), VM_ASSIGNED);
	json_object_put(j);
	run_free(&r);

	r = CLI("inspect", VM_READY, "-o", "json", "--socket", F.path);
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	j = json_tokener_parse(r.out);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(json_object_get_string(jget(j, "guest_error")), "the VM is ready, its guest is paused");
	json_object_put(j);
	run_free(&r);

	/* exec asks Inspect first: a pooled VM is refused with a sentence, and
	 * an assigned one whose agent socket does not exist says so. */
	r = CLI("exec", VM_READY, "--socket", F.path, "--", "true");
	ck_assert_int_eq(r.rc, 125);
	ck_assert_msg(strstr(r.err, "is ready: exec runs in handed-out"), "%s", r.err);
	run_free(&r);
	r = CLI("exec", VM_ASSIGNED, "--socket", F.path, "--", "true");
	ck_assert_int_eq(r.rc, 125);
	ck_assert_msg(strstr(r.err, "/run/vmf/vms/x/agent.sock") && strstr(r.err, "not running"), "%s", r.err);
	run_free(&r);
}
END_TEST

/* Whatever strings the daemon's replies carry, the CLI shows no control
 * byte (newlines between its own lines aside), no C1 control, no direction
 * override and no invalid UTF-8, in human output, JSON and errors alike;
 * JSON still round-trips the text. */
static void
assert_terminal_safe(const char *what, const char *s)
{
	size_t n = strlen(s);
	ck_assert_msg(vmf_utf8_valid(s, n), "%s is not valid UTF-8: %s", what, s);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		ck_assert_msg((c >= 0x20 && c != 0x7f) || c == '\n', "%s has byte 0x%02x at %zu: %s", what, c, i, s);
	}
	ck_assert_msg(!strstr(s, "\xc2\x9b") && !strstr(s, "\xe2\x80\xae"), "%s has a C1 or bidi control: %s", what, s);
	ck_assert_msg(!strstr(s, "\nvmfactory: fake"), "%s has a line the guest made: %s", what, s);
}

START_TEST(cli_shows_no_guest_text_raw)
{
	set_mode(FAKE_HOSTILE);
	const char *const cmds[][8] = {
		{ "inspect", VM_ASSIGNED, "--socket", F.path, NULL },
		{ "inspect", VM_ASSIGNED, "-o", "json", "--socket", F.path, NULL },
		{ "status", "--socket", F.path, NULL },
		{ "status", "-o", "json", "--socket", F.path, NULL },
		{ "release", VM_ASSIGNED, "--socket", F.path, NULL },
	};
	for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
		struct run r = cli_env(NULL, cmds[i]);
		assert_terminal_safe("stdout", r.out);
		assert_terminal_safe("stderr", r.err);
		if (i == 1) {
			json_object *j = json_tokener_parse(r.out);
			ck_assert_msg(j != NULL, "not JSON: %s", r.out);
			/* The daemon's string, U+FFFD for its invalid byte. */
			ck_assert_str_eq(json_object_get_string(jget(j, "guest.hostname")),
					 "x\x1b]0;owned\x07\x1b[2J\r\nvmfactory: fake\x7f\xc2\x9b" "31m\xe2\x80\xae" "gnp\xef\xbf\xbd");
			json_object_put(j);
		}
		if (i == 0)
			ck_assert_msg(strstr(r.out, "guest host:   x\\x1b]0;owned\\x07\\x1b[2J\\r\\nvmfactory: fake"),
				      "%s", r.out);
		if (i == 4)
			ck_assert_msg(r.rc == 1 && strstr(r.err, "reports: x\\x1b]0;owned"), "%d: %s", r.rc, r.err);
		run_free(&r);
	}
}
END_TEST

START_TEST(cli_release_and_destroy)
{
	struct run r = CLI("release", VM_ASSIGNED, "--socket", F.path);
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	pthread_mutex_lock(&F.mu);
	ck_assert_str_eq(F.last->release_vm->vm_id, VM_ASSIGNED);
	pthread_mutex_unlock(&F.mu);
	run_free(&r);

	/* destroy waits for the daemon's pid to go: give it one that has. */
	pid_t gone;
	char *true_argv[] = { "true", NULL };
	ck_assert_int_eq(posix_spawnp(&gone, "true", NULL, NULL, true_argv, environ), 0);
	waitpid(gone, NULL, 0);
	pthread_mutex_lock(&F.mu);
	F.status_pid = (int)gone;
	pthread_mutex_unlock(&F.mu);
	r = CLI("destroy", "--all", "--socket", F.path);
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	ck_assert_msg(strstr(r.out, "stopped 3 VMs"), "%s", r.out);
	pthread_mutex_lock(&F.mu);
	ck_assert_int_eq(F.last->body_case, VMF__CONTROL__REQUEST__BODY_DESTROY);
	ck_assert(F.last->destroy->all);
	pthread_mutex_unlock(&F.mu);
	run_free(&r);
}
END_TEST

/* A daemon that fails to start: the background init must report its
 * error (found in the log once the daemon process is gone) and exit 1.
 * The missing kernel fails the daemon before any QEMU starts. */
START_TEST(cli_init_failure_reported)
{
	char sock[700], state[700], run[700], logp[760];
	snprintf(sock, sizeof(sock), "%s/init.sock", F.dir);
	snprintf(state, sizeof(state), "%s/state", F.dir);
	snprintf(run, sizeof(run), "%s/run", F.dir);
	snprintf(logp, sizeof(logp), "%s/vmfactory.log", state);
	for (int fg = 0; fg < 2; fg++) {
		struct run r = CLI("init", "--pool", "1", "--image-dir", "/nonexistent-vmf-image", "--socket", sock,
				   "--state-dir", state, "--run-dir", run, fg ? "--foreground" : "--wait");
		ck_assert_msg(r.rc == 1, "init%s exit %d: %s", fg ? " --foreground" : "", r.rc, r.err);
		ck_assert_msg(strncmp(r.err, "vmfactory: ", 11) == 0 && strstr(r.err, "/nonexistent-vmf-image"),
			      "%s", r.err);
		if (!fg) {
			/* One line: the daemon's error, printed once. */
			ck_assert_msg(strchr(r.err, '\n') == r.err + strlen(r.err) - 1, "%s", r.err);
			ck_assert_int_eq(access(logp, F_OK), 0);
		}
		run_free(&r);
	}
	struct run r = CLI("init", "--socket", sock, "--state-dir", state, "--run-dir", run);
	ck_assert_int_eq(r.rc, 2);
	ck_assert_msg(strstr(r.err, "--pool"), "%s", r.err);
	run_free(&r);
}
END_TEST

START_TEST(cli_usage_errors_exit_2)
{
	struct run r = CLI("frobnicate");
	ck_assert_int_eq(r.rc, 2);
	ck_assert_msg(strstr(r.err, "unknown command 'frobnicate'") && strstr(r.err, "usage: vmfactory"), "%s", r.err);
	ck_assert_msg(strstr(r.err, "status") && strstr(r.err, "inspect"), "usage lacks the commands: %s", r.err);
	run_free(&r);

	r = CLI("status", "--frobnicate", "--socket", F.path);
	ck_assert_int_eq(r.rc, 2);
	ck_assert_msg(strstr(r.err, "usage: vmfactory status"), "%s", r.err);
	run_free(&r);

	r = CLI("get", "--cpus", "two", "--socket", F.path);
	ck_assert_int_eq(r.rc, 2);
	ck_assert_msg(strstr(r.err, "--cpus") && strstr(r.err, "usage: vmfactory get"), "%s", r.err);
	run_free(&r);

	r = CLI("inspect", "--socket", F.path);
	ck_assert_int_eq(r.rc, 2);
	run_free(&r);

	r = CLI("status", "-o", "yaml", "--socket", F.path);
	ck_assert_int_eq(r.rc, 2);
	run_free(&r);

	/* exec: its options are checked before the daemon is asked. */
	r = CLI("exec", VM_ASSIGNED, "--env", "NOVALUE", "--socket", F.path, "--", "true");
	ck_assert_int_eq(r.rc, 2);
	ck_assert_msg(strstr(r.err, "--env needs KEY=VALUE"), "%s", r.err);
	run_free(&r);
	r = CLI("exec", VM_ASSIGNED, "--user", "root", "--socket", F.path, "--", "true");
	ck_assert_int_eq(r.rc, 2);
	ck_assert_msg(strstr(r.err, "--user needs UID"), "%s", r.err);
	run_free(&r);
	r = CLI("exec", VM_ASSIGNED, "--socket", F.path);
	ck_assert_int_eq(r.rc, 2);
	run_free(&r);

	pthread_mutex_lock(&F.mu);
	ck_assert_int_eq(F.nreq, 0);
	pthread_mutex_unlock(&F.mu);
}
END_TEST

START_TEST(cli_help_lists_every_command)
{
	static const char *const expected[] = { "init", "status", "get", "inspect", "release", "destroy",
						"template build", "template list", "template rm", "template gc",
						"help", NULL };
	struct run r = CLI("help");
	ck_assert_msg(r.rc == 0, "exit %d: %s", r.rc, r.err);
	char *help = r.out;
	r.out = NULL;
	run_free(&r);
	/* Every listed command has a working `help CMD`; every command the
	 * issue names is listed. */
	char *list = strstr(help, "commands:\n");
	ck_assert_ptr_nonnull(list);
	int listed = 0;
	for (char *line = strchr(list, '\n') + 1; *line == ' '; line = strchr(line, '\n') + 1) {
		char name[64];
		const char *s = line + strspn(line, " ");
		const char *end = strstr(s, "  ");
		ck_assert_ptr_nonnull(end);
		snprintf(name, sizeof(name), "%.*s", (int)(end - s), s);
		char word1[64], word2[64] = "";
		ck_assert_int_ge(sscanf(name, "%63s %63s", word1, word2), 1);
		r = word2[0] ? CLI("help", word1, word2) : CLI("help", word1);
		ck_assert_msg(r.rc == 0, "help %s: exit %d", name, r.rc);
		char want[100];
		snprintf(want, sizeof(want), "usage: vmfactory %s", name);
		ck_assert_msg(strstr(r.out, want), "help %s: %s", name, r.out);
		run_free(&r);
		listed++;
	}
	for (int i = 0; expected[i]; i++) {
		char want[80];
		snprintf(want, sizeof(want), "  %s  ", expected[i]);
		ck_assert_msg(strstr(help, want), "help does not list %s:\n%s", expected[i], help);
	}
	ck_assert_int_ge(listed, 11);
	free(help);

	r = CLI("--help");
	ck_assert_int_eq(r.rc, 0);
	ck_assert_msg(strstr(r.out, "usage: vmfactory"), "%s", r.out);
	run_free(&r);
	r = CLI("get", "--help");
	ck_assert_int_eq(r.rc, 0);
	ck_assert_msg(strstr(r.out, "usage: vmfactory get --cpus N"), "%s", r.out);
	run_free(&r);
}
END_TEST

int
main(void)
{
	/* A daemon that closes on us must be an error, not a death. */
	signal(SIGPIPE, SIG_DFL);
	Suite *s = suite_create("client");
	TCase *lib = tcase_create("library");
	tcase_add_checked_fixture(lib, setup, teardown);
	tcase_add_test(lib, status_round_trip);
	tcase_add_test(lib, several_requests_on_one_connection);
	tcase_add_test(lib, error_reply_carries_errno_and_message);
	tcase_add_test(lib, oversize_reply_refused_before_reading);
	tcase_add_test(lib, truncated_reply);
	tcase_add_test(lib, daemon_closes_without_reply);
	tcase_add_test(lib, undecodable_and_bodiless_replies);
	tcase_add_test(lib, silent_daemon_times_out);
	tcase_add_test(lib, refused_peer_learns_why);
	tcase_add_test(lib, no_daemon);
	tcase_add_test(lib, documented_status_frame);
	suite_add_tcase(s, lib);
	TCase *cli = tcase_create("cli");
	tcase_add_checked_fixture(cli, setup, teardown);
	tcase_set_timeout(cli, 120);
	tcase_add_test(cli, cli_status_json);
	tcase_add_test(cli, cli_status_human_and_env);
	tcase_add_test(cli, cli_status_without_daemon_exits_3);
	tcase_add_test(cli, cli_get_marshals_only);
	tcase_add_test(cli, cli_daemon_error_printed_once);
	tcase_add_test(cli, cli_inspect_json);
	tcase_add_test(cli, cli_shows_no_guest_text_raw);
	tcase_add_test(cli, cli_release_and_destroy);
	tcase_add_test(cli, cli_init_failure_reported);
	tcase_add_test(cli, cli_usage_errors_exit_2);
	tcase_add_test(cli, cli_help_lists_every_command);
	suite_add_tcase(s, cli);
	return vmf_test_run(s);
}
