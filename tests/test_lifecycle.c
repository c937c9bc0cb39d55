/* End to end: races and lifetime of the daemon and its VMs.  A
 * private daemon per test, real QEMU under TCG,
 * pools of one VM.  The races are forced with pause fault points
 * (VMF_FAULT_PAUSE: the daemon's worker waits at the point until the test
 * has acted), so these tests need a build with -Dfault_injection=true and
 * skip (exit 77) without one. */
#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog.h"
#include "client.h"
#include "daemonlib.h"
#include "driver.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

#define WAIT_MS 120000

/* `vmfactory init ARGS` with VMFACTORY_FAULT=point for the daemon; pause
 * points report in and wait in tmp. */
static int
init_with_fault(const char *point, const char *args)
{
	setenv("VMFACTORY_FAULT_DIR", tmp, 1);
	fault = point;
	int rc = vmf(NULL, "init %s", args);
	fault = NULL;
	return rc;
}

static void
fault_file(char *p, size_t n, const char *point, const char *suffix)
{
	snprintf(p, n, "%s/%s.%s", tmp, point, suffix);
}

/* Waits until the daemon's worker stands at the pause point, then consumes
 * the report so that the next arrival can be seen. */
static void
wait_paused(const char *point)
{
	char p[700];
	fault_file(p, sizeof p, point, "paused");
	wait_until(access(p, F_OK) == 0, WAIT_MS, "the daemon never reached fault point %s", point);
	unlink(p);
}

static void
release_pause(const char *point)
{
	char p[700];
	fault_file(p, sizeof p, point, "go");
	ck_assert_int_eq(vmf_write_file_atomic(p, "", 0, 0600, NULL), 0);
}

static void
reset_pause(const char *point)
{
	char p[700];
	fault_file(p, sizeof p, point, "go");
	unlink(p);
	fault_file(p, sizeof p, point, "paused");
	unlink(p);
}

/* ---- raw requests: sent now, the reply read later ---- */

static void
send_request(int fd, Vmf__Control__Request *req)
{
	req->protocol_version = VMF_CONTROL_PROTOCOL_VERSION;
	size_t n = vmf__control__request__get_packed_size(req);
	uint8_t *buf = malloc(n);
	vmf__control__request__pack(req, buf);
	struct vmf_error e = {0};
	ck_assert_msg(vmf_frame_write(fd, buf, n, vmf_now_ms() + 5000, &e) == 0, "%s", e.msg);
	free(buf);
}

static int
send_get(const char *sandbox, char *share, char *sockd, size_t n)
{
	snprintf(share, n, "%s/%s-share", tmp, sandbox);
	snprintf(sockd, n, "%s/%s-sock", tmp, sandbox);
	int fd = raw_connect();
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__GetVMRequest g = VMF__CONTROL__GET_VMREQUEST__INIT;
	g.vcpus = 1;
	g.memory_mib = 256;
	g.sandbox_id = (char *)sandbox;
	g.share_dir = share;
	g.sock_dir = sockd;
	g.timeout_ms = WAIT_MS;
	req.body_case = VMF__CONTROL__REQUEST__BODY_GET_VM;
	req.get_vm = &g;
	send_request(fd, &req);
	return fd;
}

static int
send_inspect(const char *id)
{
	int fd = raw_connect();
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__InspectRequest i = VMF__CONTROL__INSPECT_REQUEST__INIT;
	i.vm_id = (char *)id;
	req.body_case = VMF__CONTROL__REQUEST__BODY_INSPECT;
	req.inspect = &i;
	send_request(fd, &req);
	return fd;
}

static int
send_destroy(bool all)
{
	int fd = raw_connect();
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__DestroyRequest dr = VMF__CONTROL__DESTROY_REQUEST__INIT;
	dr.all = all;
	req.body_case = VMF__CONTROL__REQUEST__BODY_DESTROY;
	req.destroy = &dr;
	send_request(fd, &req);
	return fd;
}

/* The reply on fd within ms; NULL when none came (EOF or timeout). */
static Vmf__Control__Reply *
reply_within(int fd, int ms)
{
	uint8_t *buf;
	size_t n;
	struct vmf_error e = {0};
	if (vmf_frame_read(fd, &buf, &n, 1 << 20, vmf_now_ms() + ms, &e) < 0) {
		printf("no reply: %s\n", e.msg);
		return NULL;
	}
	Vmf__Control__Reply *r = vmf__control__reply__unpack(NULL, n, buf);
	free(buf);
	ck_assert_ptr_nonnull(r);
	return r;
}

/* ---- the daemon's view ---- */

/* State, pid and PSS of VM id in status; false when status does not list
 * it.  A VM whose exit the daemon has seen shows no PSS. */
static bool
vm_status(const char *id, char *state, size_t n, int *pid, long long *pss_kib)
{
	json_object *s = vmf_json("status -o json%s", "");
	json_object *vms = path(s, "vms", NULL);
	bool found = false;
	for (size_t i = 0; i < json_object_array_length(vms) && !found; i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (strcmp(json_object_get_string(path(v, "id", NULL)), id))
			continue;
		found = true;
		if (state)
			snprintf(state, n, "%s", json_object_get_string(path(v, "state", NULL)));
		if (pid)
			*pid = json_object_get_int(path(v, "pid", NULL));
		if (pss_kib)
			*pss_kib = json_object_get_int64(path(v, "pss_kib", NULL));
	}
	json_object_put(s);
	return found;
}

static bool
vm_state(const char *id, char *state, size_t n, int *pid)
{
	return vm_status(id, state, n, pid, NULL);
}

/* The daemon has seen VM id's process exit. */
static bool
exit_seen(const char *id)
{
	long long pss = -1;
	return vm_status(id, NULL, 0, NULL, &pss) && pss == 0;
}

static void
wait_vm_state(const char *id, const char *want)
{
	char st[32] = "";
	wait_until(vm_state(id, st, sizeof st, NULL) && !strcmp(st, want), 30000, "VM %s is %s after 30 s, expected %s",
		   id, st[0] ? st : "not listed", want);
}

/* The end of a test whose VM a went gone: its record is still there for the
 * runtime, release removes it, and nothing is left running. */
static void
release_gone_and_destroy_all(struct got *a)
{
	wait_vm_state(a->id, "gone");
	ck_assert_int_eq(vmf(NULL, "release %s", a->id), 0);
	json_object_put(a->rec);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}

static void
wait_pool_ready(int n)
{
	wait_until(pool_ready() == n, WAIT_MS, "the pool has not %d ready VMs", n);
}


static void
wait_daemon_gone(int pid)
{
	wait_until(kill(pid, 0) != 0 && access(sock, F_OK) != 0, WAIT_MS, "daemon pid %d still runs (or left its socket)",
		   pid);
}

/* Until the daemon has seen the signal: a release of an unknown VM fails
 * with ENOENT before, ESHUTDOWN after. */
static void
wait_shutting_down(void)
{
	char unknown[VMF_UUID_STR];
	vmf_uuid_new(unknown);
	int code = 0;
	struct vmf_wait w = vmf_wait_start(30000);
	while (code != ESHUTDOWN && vmf_wait_more(&w)) {
		int fd = raw_connect();
		Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
		Vmf__Control__ReleaseVMRequest rr = VMF__CONTROL__RELEASE_VMREQUEST__INIT;
		rr.vm_id = unknown;
		req.body_case = VMF__CONTROL__REQUEST__BODY_RELEASE_VM;
		req.release_vm = &rr;
		send_request(fd, &req);
		Vmf__Control__Reply *r = reply_within(fd, 10000);
		close(fd);
		code = r ? r->error_code : -1;
		if (r)
			vmf__control__reply__free_unpacked(r, NULL);
	}
	ck_assert_msg(code == ESHUTDOWN, "the daemon does not refuse work after SIGTERM (last answer %d)", code);
}

/* The VM's QEMU from a GetVM reply. */
static int
vm_pid(const Vmf__Control__Reply *r)
{
	ck_assert_ptr_nonnull(r->vm);
	return r->vm->pid;
}

static void
kill_and_wait(int pid)
{
	ck_assert_int_gt(pid, 0);
	ck_assert_int_eq(kill(pid, SIGKILL), 0);
	wait_until(!vmf_proc_alive(pid, 0), 10000, "pid %d survived SIGKILL", pid);
}

/* ---- item 8: destroy ---- */

/* A destroy without --all keeps assigned and gone VMs; it used to wait for
 * every VM to be assigned, so a gone one made it hang. */
START_TEST(destroy_finishes_with_a_gone_vm)
{
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	struct got a = {0};
	do_get(&a, "gone-a", 1, 256);
	ck_assert_int_eq(a.rc, 0);
	kill_and_wait(json_object_get_int(path(a.rec, "pid", NULL)));
	wait_vm_state(a.id, "gone");
	int dpid = daemon_pid();

	struct vmf_client *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_client_connect(sock, &c, &e), 0);
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_destroy(c, 0, &r, 60000, &e);
	vmf_client_close(c);
	ck_assert_msg(rc == 0, "destroy with a gone VM: %s", e.msg);
	vmf__control__reply__free_unpacked(r, NULL);
	wait_daemon_gone(dpid);
	ck_assert_int_eq(qemu_gone(), 0);

	/* The gone VM's record was kept, for its runtime to see and release. */
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	release_gone_and_destroy_all(&a);
}
END_TEST

/* A destroy that arrives while a hand-out is in flight: without --all the
 * hand-out completes and its VM is kept like any assigned one; with --all
 * the client is told ESHUTDOWN and the VM is stopped.  Either way both
 * requests get their reply. */
START_TEST(destroy_waits_for_a_handout_in_flight)
{
	ck_assert_int_eq(init_with_fault("handout-pause", "--pool 1 --wait"), 0);
	char share[700], sockd[700];
	int gfd = send_get("race-keep", share, sockd, sizeof share);
	wait_paused("handout-pause");
	wait_pool_ready(1);
	int dpid = daemon_pid();
	int dfd = send_destroy(false);
	/* The destroy has stopped the pooled VM: the hand-out's completion is
	 * the last thing it waits for.  Status answers meanwhile. */
	wait_until(vm_count() == 1, 60000, "the destroy did not stop the pooled VM");
	release_pause("handout-pause");
	Vmf__Control__Reply *g = reply_within(gfd, 60000);
	ck_assert_msg(g != NULL, "the GetVM racing a destroy got no reply");
	ck_assert_msg(g->error_code == 0, "GetVM failed: %s", g->error_message);
	ck_assert_str_eq(g->vm->state, "assigned");
	char id[64];
	snprintf(id, sizeof id, "%s", g->vm->id);
	int kept = vm_pid(g);
	vmf__control__reply__free_unpacked(g, NULL);
	Vmf__Control__Reply *d = reply_within(dfd, 60000);
	ck_assert_msg(d != NULL, "the destroy racing a hand-out got no reply");
	ck_assert_int_eq(d->error_code, 0);
	vmf__control__reply__free_unpacked(d, NULL);
	close(gfd);
	close(dfd);
	wait_daemon_gone(dpid);
	ck_assert(vmf_proc_alive(kept, 0));   /* handed out, so kept */
	ck_assert_int_eq(count_qemu(), 1);
	char target[700];
	ck_assert_int_gt(readlink(share, target, sizeof target), 0);

	/* With --all: the hand-out fails, its VM and links go. */
	reset_pause("handout-pause");
	ck_assert_int_eq(init_with_fault("handout-pause", "--pool 1 --wait"), 0);
	wait_vm_state(id, "assigned");
	gfd = send_get("race-all", share, sockd, sizeof share);
	wait_paused("handout-pause");
	dpid = daemon_pid();
	dfd = send_destroy(true);
	release_pause("handout-pause");
	g = reply_within(gfd, 60000);
	ck_assert_msg(g != NULL, "the GetVM racing a destroy --all got no reply");
	printf("GetVM racing destroy --all: %d %s\n", g->error_code, g->error_message);
	ck_assert_int_eq(g->error_code, ESHUTDOWN);
	vmf__control__reply__free_unpacked(g, NULL);
	d = reply_within(dfd, 60000);
	ck_assert_msg(d != NULL, "the destroy --all racing a hand-out got no reply");
	ck_assert_int_eq(d->error_code, 0);
	ck_assert_uint_eq(d->destroy->stopped, 3);   /* the pooled, the kept and the raced VM */
	vmf__control__reply__free_unpacked(d, NULL);
	close(gfd);
	close(dfd);
	wait_daemon_gone(dpid);
	ck_assert_int_eq(qemu_gone(), 0);
	ck_assert_int_ne(access(share, F_OK), 0);
	ck_assert_int_ne(access(sockd, F_OK), 0);
}
END_TEST

/* A destroy --all that arrives during an inspect: the inspect gets its
 * reply, then its VM is stopped and the destroy replies. */
START_TEST(destroy_waits_for_an_inspect_in_flight)
{
	ck_assert_int_eq(init_with_fault("inspect-pause", "--pool 1 --wait"), 0);
	struct got a = {0};
	do_get(&a, "inspected", 1, 256);
	ck_assert_int_eq(a.rc, 0);
	int ifd = send_inspect(a.id);
	wait_paused("inspect-pause");
	int dpid = daemon_pid();
	int dfd = send_destroy(true);
	release_pause("inspect-pause");
	Vmf__Control__Reply *i = reply_within(ifd, 60000);
	ck_assert_msg(i != NULL, "the inspect racing a destroy got no reply");
	ck_assert_int_eq(i->error_code, 0);
	ck_assert_ptr_nonnull(i->inspect);
	vmf__control__reply__free_unpacked(i, NULL);
	Vmf__Control__Reply *d = reply_within(dfd, 60000);
	ck_assert_msg(d != NULL, "the destroy racing an inspect got no reply");
	ck_assert_int_eq(d->error_code, 0);
	vmf__control__reply__free_unpacked(d, NULL);
	close(ifd);
	close(dfd);
	wait_daemon_gone(dpid);
	ck_assert_int_eq(qemu_gone(), 0);
	ck_assert_int_ne(access(a.share, F_OK), 0);
	json_object_put(a.rec);
}
END_TEST

/* ---- item 9: SIGTERM ---- */

/* SIGTERM while two hand-outs are in flight (their VMs already recorded
 * assigned): new requests get ESHUTDOWN, the connected client gets its VM,
 * the VM of the client that left is stopped, and only then does the daemon
 * exit.  The assigned and the pooled VM keep running for the next daemon. */
START_TEST(sigterm_finishes_handouts_in_flight)
{
	ck_assert_int_eq(init_with_fault("handout-pause", "--pool 1 --wait"), 0);
	char share[700], sockd[700], share2[700], sockd2[700];
	int kept_fd = send_get("term-kept", share, sockd, sizeof share);
	wait_paused("handout-pause");
	wait_pool_ready(1);
	int left_fd = send_get("term-left", share2, sockd2, sizeof share2);
	wait_paused("handout-pause");
	wait_pool_ready(1);
	ck_assert_int_eq(count_qemu(), 3);
	int dpid = daemon_pid();
	ck_assert_int_eq(kill(dpid, SIGTERM), 0);
	wait_shutting_down();
	/* No new work while shutting down; status still answers. */
	char s3[700], k3[700];
	int late_fd = send_get("term-late", s3, k3, sizeof s3);
	Vmf__Control__Reply *late = reply_within(late_fd, 30000);
	ck_assert_msg(late != NULL, "a GetVM during shutdown got no reply");
	ck_assert_int_eq(late->error_code, ESHUTDOWN);
	vmf__control__reply__free_unpacked(late, NULL);
	close(late_fd);
	ck_assert(daemon_answers());
	close(left_fd);                 /* this client gives up */
	release_pause("handout-pause");

	Vmf__Control__Reply *g = reply_within(kept_fd, 60000);
	ck_assert_msg(g != NULL, "the GetVM in flight at SIGTERM got no reply");
	ck_assert_msg(g->error_code == 0, "GetVM failed: %s", g->error_message);
	char id[64];
	snprintf(id, sizeof id, "%s", g->vm->id);
	int kept = vm_pid(g);
	vmf__control__reply__free_unpacked(g, NULL);
	close(kept_fd);
	wait_daemon_gone(dpid);
	/* The abandoned VM was stopped before the exit, its links removed. */
	ck_assert(vmf_proc_alive(kept, 0));
	ck_assert_int_eq(count_qemu(), 2);
	ck_assert_int_ne(access(share2, F_OK), 0);

	/* The next daemon adopts the assigned and the pooled VM. */
	reset_pause("handout-pause");
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	wait_vm_state(id, "assigned");
	ck_assert_int_eq(vm_count(), 2);
	ck_assert_int_eq(count_qemu(), 2);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

/* ---- item 11: a VM of another driver ---- */

/* A recorded VM of a driver other than the configured one (a Firecracker
 * VM, here the fake VMM, under a QEMU daemon) is adopted with its own
 * driver and stays manageable: status, inspect and release go through it. */
START_TEST(foreign_driver_vm_is_adopted_and_managed)
{
	const char *b = getenv("VMFACTORY_BUILDDIR");
	char fake[700], bin[700], kernel[700], vmdir[700], rundir[700], share[760];
	snprintf(fake, sizeof fake, "%s/tests/fake_vmm", b ? b : ".");
	ck_assert_msg(access(fake, X_OK) == 0, "fake VMM %s missing", fake);
	/* Named so that the test runner's sweep finds it after a failure. */
	snprintf(bin, sizeof bin, "%s/vmfactory-fake-firecracker", tmp);
	ck_assert_int_eq(symlink(fake, bin), 0);
	snprintf(kernel, sizeof kernel, "%s/fake-vmlinuz", tmp);
	ck_assert_int_eq(vmf_write_file_atomic(kernel, "kernel", 6, 0600, NULL), 0);
	char id[VMF_UUID_STR];
	vmf_uuid_new(id);
	snprintf(vmdir, sizeof vmdir, "%s/vms", run);
	snprintf(rundir, sizeof rundir, "%s/%s", vmdir, id);
	snprintf(share, sizeof share, "%s/share", rundir);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_mkdir_p(share, 0700, &e), 0);

	vmf_vm_config cfg = VMF__HV__VM_CONFIG__INIT;
	char name[64];
	snprintf(name, sizeof name, "vmfactory-%s", id);
	cfg.id = id;
	cfg.name = name;
	cfg.run_dir = rundir;
	cfg.kernel = kernel;
	cfg.initrd = (char *)"";
	cfg.cmdline = (char *)"console=ttyS0";
	cfg.vcpus = 1;
	cfg.max_vcpus = 1;
	cfg.memory_mib = 128;
	cfg.max_memory_mib = 128;
	cfg.binary = bin;
	cfg.memory_file = (char *)"";
	const struct vmf_hv_ops *fc = &vmf_firecracker_ops;
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(fc->boot(&cfg, &vm, &e) == 0, "%s", e.msg);
	pid_t fpid = fc->pid(vm);
	vmf_hv_state *hs = NULL;
	ck_assert_msg(fc->serialize(vm, &hs, &e) == 0, "%s", e.msg);
	fc->release(vm);   /* the process runs on, as after a daemon restart */

	struct vmf_catalog *cat;
	ck_assert_msg(vmf_catalog_open(state, &cat, &e) == 0, "%s", e.msg);
	ck_assert_msg(vmf_catalog_open_runtime(cat, run, &e) == 0, "%s", e.msg);
	Vmf__Catalog__VmRecord rec = VMF__CATALOG__VM_RECORD__INIT;
	rec.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	rec.id = id;
	rec.template_id = (char *)"0000000000000000000000000000000000000000000000000000000000000000";
	rec.state = VMF__CATALOG__VM_STATE__VM_ASSIGNED;
	rec.hv = hs;
	rec.sandbox_id = (char *)"foreign";
	rec.share_link = (char *)"";
	rec.sock_link = (char *)"";
	rec.run_dir = rundir;
	rec.share_dir = share;
	rec.vcpus = 1;
	rec.memory_mib = 128;
	rec.created_ns = vmf_realtime_ns();
	rec.assigned_ns = rec.created_ns;
	ck_assert_msg(vmf_catalog_vm_put(cat, &rec, &e) == 0, "%s", e.msg);
	vmf_catalog_close(cat);
	vmf__hv__hypervisor_state__free_unpacked(hs, NULL);

	ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	char st[32] = "";
	int pid = 0;
	ck_assert(vm_state(id, st, sizeof st, &pid));
	printf("foreign VM: %s, pid %d (fake firecracker pid %d)\n", st, pid, (int)fpid);
	ck_assert_str_eq(st, "assigned");
	ck_assert_int_eq(pid, fpid);
	ck_assert(vmf_proc_alive(fpid, 0));
	/* Inspect reaches the VM through its own driver (the fake's vsock
	 * echoes, so the guest view fails; the host view is there). */
	json_object *i = vmf_json("inspect %s -o json", id);
	ck_assert_int_eq(json_object_get_int(path(i, "vm", "pid")), fpid);
	json_object_put(i);
	ck_assert_int_eq(vmf(NULL, "release %s", id), 0);
	int status;
	wait_until(waitpid(fpid, &status, WNOHANG) == fpid, 10000, "release left the fake firecracker (pid %d) running",
		   (int)fpid);
	ck_assert(!vm_state(id, NULL, 0, NULL));
	ck_assert_int_ne(access(rundir, F_OK), 0);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

/* ---- item 12: dead VMs ---- */

/* Without a pidfd (forced by the no-pidfd fault) the tick notices exits:
 * a pooled VM is replaced, an assigned one becomes gone. */
START_TEST(exits_are_noticed_without_pidfd)
{
	ck_assert_int_eq(init_with_fault("no-pidfd", "--pool 1 --wait"), 0);
	struct got a = {0};
	do_get(&a, "nopidfd", 1, 256);
	ck_assert_int_eq(a.rc, 0);
	wait_pool_ready(1);
	char pooled[64];
	pids_in_state("ready", pooled, sizeof pooled);
	int ppid = atoi(pooled);
	kill_and_wait(ppid);
	char now[64] = "";
	poll_until((pids_in_state("ready", now, sizeof now), atoi(now) > 0 && atoi(now) != ppid), 60000);
	printf("pooled VM pid %d killed; ready now: %s\n", ppid, now);
	ck_assert_msg(atoi(now) > 0 && atoi(now) != ppid, "the dead pooled VM (pid %d) was not replaced", ppid);

	kill_and_wait(json_object_get_int(path(a.rec, "pid", NULL)));
	release_gone_and_destroy_all(&a);
}
END_TEST

/* A VM that dies while an inspect holds it becomes gone once the inspect
 * completes (its watch fired while the job owned it). */
START_TEST(vm_dying_during_inspect_becomes_gone)
{
	ck_assert_int_eq(init_with_fault("inspect-pause", "--pool 1 --wait"), 0);
	struct got a = {0};
	do_get(&a, "dies", 1, 256);
	ck_assert_int_eq(a.rc, 0);
	int ifd = send_inspect(a.id);
	wait_paused("inspect-pause");
	kill_and_wait(json_object_get_int(path(a.rec, "pid", NULL)));
	/* The exit seen while the inspect holds the VM: the case that hung. */
	wait_until(exit_seen(a.id), 30000, "the daemon did not see VM %s exit", a.id);
	release_pause("inspect-pause");
	Vmf__Control__Reply *i = reply_within(ifd, 60000);
	ck_assert_ptr_nonnull(i);
	ck_assert_int_eq(i->error_code, 0);
	ck_assert_ptr_null(i->inspect->guest);
	printf("inspect of a VM that died: %s\n", i->inspect->guest_error);
	vmf__control__reply__free_unpacked(i, NULL);
	close(ifd);
	release_gone_and_destroy_all(&a);
}
END_TEST

/* ---- item 13: recovery that cannot read the catalog ---- */

START_TEST(unreadable_catalog_stops_recovery_and_kills_nothing)
{
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	struct got a = {0};
	do_get(&a, "survives", 1, 256);
	ck_assert_int_eq(a.rc, 0);
	wait_pool_ready(1);
	int apid = json_object_get_int(path(a.rec, "pid", NULL));
	char pooled[64];
	pids_in_state("ready", pooled, sizeof pooled);
	int ppid = atoi(pooled);
	kill_daemon_hard();

	int rc = init_with_fault("catalog-vm-list", "--pool 1 --wait");
	printf("init with an unreadable catalog: exit %d: %s\n", rc, cli_stderr());
	ck_assert_int_eq(rc, 1);
	assert_words(cli_stderr(), "recovery cannot read the VM records|damaged", "init with an unreadable catalog");
	ck_assert(!daemon_answers());
	ck_assert_msg(vmf_proc_alive(apid, 0), "the assigned VM's QEMU (pid %d) was killed", apid);
	ck_assert_msg(vmf_proc_alive(ppid, 0), "the pooled VM's QEMU (pid %d) was killed", ppid);

	/* Readable again: both are adopted. */
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	wait_vm_state(a.id, "assigned");
	ck_assert_int_eq(count_qemu(), 2);
	json_object_put(a.rec);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

static void
lc_cleanup(void)
{
	unsetenv("VMFACTORY_FAULT_DIR");
	if (tmp)
		vmf_test_kill_under("fake_vmm", tmp);
	cleanup();
}

int
main(void)
{
	/* Most races here are forced with fault points. */
	if (!vmf_test_fault_build())
		return vmf_test_skip_all("this build has no fault points (-Dfault_injection=true)");
	Suite *s = suite_create("lifecycle");
	TCase *tc = tcase_create("lifecycle");
	tcase_add_checked_fixture(tc, setup, lc_cleanup);
	tcase_set_timeout(tc, 900);
	ADD_TEST(tc, destroy_finishes_with_a_gone_vm);
	ADD_TEST(tc, destroy_waits_for_a_handout_in_flight);
	ADD_TEST(tc, destroy_waits_for_an_inspect_in_flight);
	ADD_TEST(tc, sigterm_finishes_handouts_in_flight);
	ADD_TEST(tc, foreign_driver_vm_is_adopted_and_managed);
	ADD_TEST(tc, exits_are_noticed_without_pidfd);
	ADD_TEST(tc, vm_dying_during_inspect_becomes_gone);
	ADD_TEST(tc, unreadable_catalog_stops_recovery_and_kills_nothing);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
