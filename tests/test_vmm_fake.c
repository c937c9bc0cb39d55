/* What the Firecracker and Cloud Hypervisor drivers share, tested once for
 * each against the fake VMM (tests/fake_vmm.c, which accepts only what the
 * published API documents allow): a refused or failing boot, a graceful
 * stop that does not come, a VMM that dies in a request or halfway through
 * an answer, the fake's own strictness, suspend and resume, a snapshot
 * into a template (refused, dying, from a running and a paused source, a
 * clone of it) and the same through the catalog.  VMFACTORY_VMM picks the
 * driver (tests/meson.build: one test per driver); what only one driver
 * does stays in test_firecracker.c and test_cloud_hypervisor.c. */
#include "fake_vmm_util.h"

#include <signal.h>

#include "vmm_http.h"
#include "vmm_rest.h"
#include "frame.h"

/* A driver and what differs in the fake's view of it. */
struct drv {
	const char *name;                     /* VMFACTORY_VMM */
	const struct vmf_hv_ops *ops;
	const struct vmf_rest_vmm *const *rest;
	const char *boot_req;                 /* the request that starts the guest */
	const char *snapshot_req, *load_req;  /* a snapshot's, and its load's */
	const char *save_log_fmt;             /* the logged save of a suspend, %s the snapshot dir */
	const char *missing_kernel;           /* boot's sentence for a kernel that is not there */
	bool shared;                          /* templates share memory (a memory file) */
	const char *method;                   /* ops->snapshot's res.method */
	/* A graceful stop that cannot work: "pause" (the guest ignores its
	 * key press), or the stop request refused (FAKE_VMM_FAIL_ON). */
	const char *ungraceful;
	const char *exit_log;                 /* what a graceful stop sends */
	struct { const char *method, *path, *body, *want; } strict[5];
	const char *violation;                /* what the fake logs of one of those */
	bool vcpu_hotplug;
	/* What only one driver's requests show: a resume's load (%s the
	 * snapshot dir, then the run dir), a template snapshot's memory file
	 * (%s); NULL: nothing to check. */
	const char *load_log_fmt, *snapshot_mem_fmt;
	/* The VM's hot-added MiB and its vCPUs as the VMM reports them. */
	int64_t (*hot_mib)(const char *sock);
	int64_t (*vcpus)(const char *sock);
	/* A disk across a suspend: its slot (the driver's disk_slot_fits),
	 * read-only or not, what the fake logs as the resume opens it (%u the
	 * slot, %s the file) and as it is detached (%u). */
	unsigned disk_slot;
	bool disk_ro;
	const char *disk_load_fmt, *disk_detach_fmt;
	const char *disk_link_fmt;   /* a link the load opened by, gone after (%s run dir, %u slot) */
};

static int64_t fc_hot_mib(const char *sock);
static int64_t ch_hot_mib(const char *sock);
static int64_t ch_vcpus(const char *sock);

static const struct drv drivers[] = {
	{
		.name = "firecracker", .ops = &vmf_firecracker_ops, .rest = &vmf_rest_firecracker,
		.boot_req = "PUT /actions", .snapshot_req = "PUT /snapshot/create", .load_req = "PUT /snapshot/load",
		.save_log_fmt = "PUT /snapshot/create {\"snapshot_type\":\"Full\",\"snapshot_path\":\"%s/vmstate\"",
		.missing_kernel = "PUT /boot-source answered HTTP 400: Invalid kernel path",
		.shared = true, .method = "firecracker-snapshot-create",
		.ungraceful = "pause", .exit_log = "{\"action_type\":\"SendCtrlAltDel\"}",
		.strict = {
			{ "PATCH", "/vm", "{\"state\":\"Paused\",\"bogus\":1}", "field 'bogus' is not in Vm" },
			{ "PATCH", "/vm", "{\"state\":\"Frozen\"}", "not one of Paused|Resumed" },
			{ "POST", "/vm", NULL, "method not allowed" },
			{ "PUT", "/snapshot/create", "{\"snapshot_path\":\"/x\"}", "required field 'mem_file_path'" },
			{ "GET", "/nope", NULL, NULL },
		},
		.violation = "GET /nope is not an endpoint",
		.load_log_fmt = "\"mem_backend\":{\"backend_type\":\"File\",\"backend_path\":\"%s/memory\"},"
				"\"resume_vm\":false,\"vsock_override\":{\"uds_path\":\"%s/vsock.sock\"}",
		.snapshot_mem_fmt = "\"mem_file_path\":\"%s\"",
		.hot_mib = fc_hot_mib,
		.disk_slot = 0, .disk_ro = false, .disk_load_fmt = "load opened drive vmfd%u %s",
		.disk_detach_fmt = "PATCH /drives/vmfd%u {\"drive_id\":\"vmfd%u\",\"path_on_host\":\"vmfd%u.empty\"}",
		.disk_link_fmt = "%s/vmfd%u.disk",
	},
	{
		.name = "cloud-hypervisor", .ops = &vmf_cloud_hypervisor_ops, .rest = &vmf_rest_cloud_hypervisor,
		.boot_req = "PUT /api/v1/vm.boot", .snapshot_req = "PUT /api/v1/vm.snapshot",
		.load_req = "PUT /api/v1/vm.restore",
		.save_log_fmt = "PUT /api/v1/vm.snapshot {\"destination_url\":\"file://%s\"}",
		.missing_kernel = "PUT /api/v1/vm.create answered HTTP 500: Error from API",
		.shared = false, .method = "cloud-hypervisor-vm.snapshot",
		.ungraceful = "PUT /api/v1/vmm.shutdown", .exit_log = "PUT /api/v1/vmm.shutdown",
		.strict = {
			{ "PUT", "/api/v1/vm.resize", "{\"desired_vcpus\":1,\"desired_cpus\":2}",
			  "field 'desired_cpus' is not in VmResize" },
			{ "PUT", "/api/v1/vm.restore", "{\"source_url\":\"file:///x\",\"memory_restore_mode\":\"Lazy\"}",
			  "not one of Copy|OnDemand" },
			{ "GET", "/api/v1/vm.pause", NULL, "method not allowed" },
			{ "PUT", "/api/v1/vm.resize", NULL, "request body (VmResize) is required" },
			{ NULL, NULL, NULL, NULL },
		},
		.vcpu_hotplug = true, .hot_mib = ch_hot_mib, .vcpus = ch_vcpus,
		.disk_slot = 2, .disk_ro = true, .disk_load_fmt = "restore opened disk vmfd%u %s",
		.disk_detach_fmt = "PUT /api/v1/vm.remove-device {\"id\":\"vmfd%u\"}",
	},
};

static const struct drv *d;
#define ops (d->ops)

/* The fake's API socket and what its info request says the VM's state is
 * ("Running", "Paused"). */
static void
api_sock(const char *run_dir, char *out, size_t n)
{
	snprintf(out, n, "%s/%s", run_dir, (*d->rest)->api_sock);
}

static const char *
vm_state(const char *run_dir, char *buf, size_t n)
{
	char sock[PATH_MAX], path[64];
	api_sock(run_dir, sock, sizeof(sock));
	snprintf(path, sizeof(path), "%s%s", (*d->rest)->api_prefix, (*d->rest)->info_path);
	json_object *o = NULL, *v;
	struct vmf_error err = {0};
	buf[0] = '\0';
	if (vmf_vmm_http(d->name, sock, "GET", path, NULL, &o, 5000, &err) >= 0 && json_object_object_get_ex(o, "state", &v))
		snprintf(buf, n, "%s", json_object_get_string(v));
	json_object_put(o);
	return buf;
}

static json_object *
get(const char *sock, const char *path)
{
	json_object *o = NULL;
	struct vmf_error err = {0};
	ck_assert_msg(vmf_vmm_http(d->name, sock, "GET", path, NULL, &o, 5000, &err) >= 0, "GET %s: %s", path, err.msg);
	return o;
}

/* Firecracker's virtio-mem device. */
static int64_t
fc_hot_mib(const char *sock)
{
	json_object *o = get(sock, "/hotplug/memory"), *v;
	int64_t n = json_object_object_get_ex(o, "requested_size_mib", &v) ? json_object_get_int64(v) : -1;
	json_object_put(o);
	return n;
}

/* Cloud Hypervisor's vm.info config. */
static int64_t
ch_config(const char *sock, const char *section, const char *key)
{
	json_object *o = get(sock, "/api/v1/vm.info"), *c, *x, *v;
	int64_t n = json_object_object_get_ex(o, "config", &c) && json_object_object_get_ex(c, section, &x) &&
		    json_object_object_get_ex(x, key, &v) ? json_object_get_int64(v) : -1;
	json_object_put(o);
	return n;
}

static int64_t
ch_hot_mib(const char *sock)
{
	int64_t b = ch_config(sock, "memory", "hotplugged_size");
	return b < 0 ? b : b >> 20;
}

static int64_t
ch_vcpus(const char *sock)
{
	return ch_config(sock, "cpus", "boot_vcpus");
}

/* A template config: a memory file for a driver whose templates share it. */
static unsigned
max_vcpus(void)
{
	return d->vcpu_hotplug ? 2 : 1;
}

static void
tpl_config(struct fv_cfg *t, const char *id)
{
	fv_config(t, id, 1, max_vcpus(), 128, 128);
	if (d->shared) {
		t->c.memory_mode = VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
		t->c.memory_file = t->mem;
	}
}

static void
clone_config(struct fv_cfg *c, const char *id, const char *mem)
{
	fv_config(c, id, 1, max_vcpus(), 128, 128);
	c->c.memory_mode = d->shared ? VMF__HV__MEMORY_MODE__MEM_CLONE_COW : VMF__HV__MEMORY_MODE__MEM_FULL;
	c->c.memory_file = d->shared ? (char *)mem : (char *)"";
	c->c.incoming = true;
}

/* A boot refused by the VMM, a user the driver cannot run it as, a binary
 * that cannot run, a kernel that is not there: sentences, no process. */
START_TEST(boot_errors)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	struct vmf_vmm *vm = NULL;
	fv_config(&t, "err", 1, 1, 128, 128);
	setenv("FAKE_VMM_FAIL_ON", d->boot_req, 1);
	ck_assert_int_eq(ops->boot(&t.c, &vm, &err), -EINVAL);
	unsetenv("FAKE_VMM_FAIL_ON");
	ck_assert_ptr_null(vm);
	char want[200];
	snprintf(want, sizeof(want), "%s answered HTTP 400: Injected failure", d->boot_req);
	ck_assert_msg(strstr(err.msg, want), "%s", err.msg);
	fv_config(&t, "runas", 1, 1, 128, 128);
	t.c.runas = (char *)"nobody";
	ck_assert_int_eq(ops->boot(&t.c, &vm, &err), -ENOTSUP);
	snprintf(want, sizeof(want), "unsupported by %s", d->name);
	ck_assert_msg(strstr(err.msg, want), "%s", err.msg);
	fv_config(&t, "nobin", 1, 1, 128, 128);
	t.c.binary = (char *)"/nonexistent/vmm";
	ck_assert_int_lt(ops->boot(&t.c, &vm, &err), 0);
	ck_assert_msg(strstr(err.msg, "exited before its API socket") && strstr(err.msg, "cannot execute /nonexistent/vmm"),
		      "%s", err.msg);
	fv_config(&t, "nokernel", 1, 1, 128, 128);
	t.c.kernel = (char *)"/nonexistent/vmlinuz";
	ck_assert_int_lt(ops->boot(&t.c, &vm, &err), 0);
	ck_assert_msg(strstr(err.msg, d->missing_kernel), "%s", err.msg);
	ck_assert_int_eq(fv_kill_left("err") + fv_kill_left("nobin") + fv_kill_left("nokernel"), 0);
	fv_assert_no_violations();
}
END_TEST

/* A stop whose graceful request does not end the VMM, SIGTERM ignored:
 * SIGKILL within the timeout.  A VMM that does exit gracefully was asked. */
START_TEST(stop_escalates)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "stubborn", 1, 1, 128, 128);
	setenv("FAKE_VMM_IGNORE_TERM", "1", 1);
	bool pause = !strcmp(d->ungraceful, "pause");
	if (!pause)
		setenv("FAKE_VMM_FAIL_ON", d->ungraceful, 1);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	unsetenv("FAKE_VMM_IGNORE_TERM");
	unsetenv("FAKE_VMM_FAIL_ON");
	if (pause)
		ck_assert_int_eq(ops->pause(vm, &err), 0);
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(ops->stop(vm, 2000, &err), 0);
	ck_assert(!ops->alive(vm));
	ck_assert_int_lt(vmf_now_ms() - t0, 2000 + 5000);
	ops->release(vm);
	fv_config(&t, "polite", 1, 1, 128, 128);
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ck_assert(!ops->alive(vm));
	ck_assert(fv_log_has(d->exit_log));
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

/* The VMM dies reading the template snapshot request: ECONNRESET, the VM
 * gone.  The VMM dies halfway through answering a clone's load: the clone
 * fails cleanly, no process left. */
START_TEST(dies_mid_request)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	tpl_config(&t, "dies");
	struct vmf_vmm *vm = NULL;
	setenv("FAKE_VMM_DIE_ON", d->snapshot_req, 1);
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	unsetenv("FAKE_VMM_DIE_ON");
	ck_assert_int_eq(ops->pause(vm, &err), 0);
	int sfd = fv_open_state("dies.state", O_RDWR | O_CREAT | O_TRUNC);
	int r = ops->save_template(vm, sfd, !d->shared, &err);
	close(sfd);
	ck_assert_int_eq(r, -ECONNRESET);
	ck_assert_msg(strstr(err.msg, d->snapshot_req) && strstr(err.msg, "mid-request"), "%s", err.msg);
	wait_until(!ops->alive(vm), 5000, "the VMM that died is alive");
	ck_assert_int_lt(ops->pause(vm, &err), 0);
	char want[64];
	snprintf(want, sizeof(want), "%s exited", d->name);
	ck_assert_msg(strstr(err.msg, want), "%s", err.msg);
	ck_assert_int_eq(ops->stop(vm, 1000, &err), 0);
	ops->release(vm);

	setenv("FAKE_VMM_CUT_ON", d->load_req, 1);
	tpl_config(&t, "cut");
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->pause(vm, &err), 0);
	sfd = fv_open_state("cut.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(ops->save_template(vm, sfd, !d->shared, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	struct fv_cfg c;
	clone_config(&c, "cutclone", t.mem);
	ck_assert_int_eq(lseek(sfd, 0, SEEK_SET), 0);
	vm = NULL;
	r = ops->start_from_template(&c.c, sfd, &vm, &err);
	close(sfd);
	unsetenv("FAKE_VMM_CUT_ON");
	ck_assert_int_eq(r, -ECONNRESET);
	ck_assert_ptr_null(vm);
	ck_assert_msg(strstr(err.msg, d->load_req), "%s", err.msg);
	ck_assert_int_eq(fv_kill_left("cutclone"), 0);
}
END_TEST

/* The fake itself refuses what the document does not allow. */
START_TEST(fake_is_strict)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "strict", 1, 1, 128, 128);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	char sock[PATH_MAX];
	api_sock(t.run_dir, sock, sizeof(sock));
	for (size_t i = 0; i < sizeof(d->strict) / sizeof(d->strict[0]) && d->strict[i].method; i++)
		fv_expect_refused(d->name, sock, d->strict[i].method, d->strict[i].path, d->strict[i].body,
				  d->strict[i].want);
	if (d->violation) {
		char *text = NULL;
		ck_assert_int_eq(vmf_read_file(fv_violations, &text, NULL, 1 << 20, NULL), 0);
		ck_assert_msg(strstr(text, d->violation), "%s", text);
		free(text);
	}
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
}
END_TEST

/* Suspend: the whole VM saved into the stream (its snapshot made in the
 * run dir, then removed); resume: back, paused, with its hot-added memory,
 * its own vsock.  A refused save leaves the VM resumable and no files. */
START_TEST(suspend_resume)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "stpl", 1, d->vcpu_hotplug ? 2 : 1, 128, 256);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	if (d->vcpu_hotplug)
		ck_assert_msg(ops->hotplug_vcpus(vm, 2, &err) == 0, "%s", err.msg);
	ck_assert_msg(ops->hotplug_memory(vm, 64, &err) == 0, "%s", err.msg);
	char snapdir[PATH_MAX], want[PATH_MAX * 2], st[32], sock[PATH_MAX];
	api_sock(t.run_dir, sock, sizeof(sock));
	snprintf(snapdir, sizeof(snapdir), "%s/snapshot", t.run_dir);
	int sfd = fv_open_state("s.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(ops->save_state(vm, sfd, &err) == 0, "%s", err.msg);
	ck_assert_int_ne(access(snapdir, F_OK), 0);
	snprintf(want, sizeof(want), d->save_log_fmt, snapdir);
	ck_assert_msg(fv_log_has(want), "no snapshot into the run dir (%s)", want);
	vmf_hv_state *hs = NULL;
	ck_assert_int_eq(ops->serialize(vm, &hs, &err), 0);
	ck_assert(hs->paused);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	ck_assert_int_eq(lseek(sfd, 0, SEEK_SET), 0);
	ck_assert_msg(ops->restore_state(hs, sfd, &vm, &err) == 0, "%s", err.msg);
	close(sfd);
	if (d->load_log_fmt) {
		snprintf(want, sizeof(want), d->load_log_fmt, snapdir, t.run_dir);
		ck_assert_msg(fv_log_has(want), "no load of the saved memory with the VM's vsock (%s)", want);
	}
	ck_assert_str_eq(vm_state(t.run_dir, st, sizeof(st)), "Paused");
	ck_assert_int_eq(d->hot_mib(sock), 64);
	if (d->vcpus)
		ck_assert_int_eq(d->vcpus(sock), 2);
	vmf_hv_state *hs2 = NULL;
	ck_assert_int_eq(ops->serialize(vm, &hs2, &err), 0);
	ck_assert(hs2->paused);
	ck_assert_int_eq(hs2->memory_mib, 192);
	ck_assert_int_eq(hs2->vcpus, d->vcpu_hotplug ? 2 : 1);
	vmf__hv__hypervisor_state__free_unpacked(hs2, NULL);
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);

	/* A VMM dying in the load leaves no process. */
	sfd = fv_open_state("s.state", O_RDONLY);
	setenv("FAKE_VMM_DIE_ON", d->load_req, 1);
	vm = NULL;
	ck_assert_int_lt(ops->restore_state(hs, sfd, &vm, &err), 0);
	unsetenv("FAKE_VMM_DIE_ON");
	ck_assert_ptr_null(vm);
	ck_assert_msg(strstr(err.msg, "resuming VM stpl"), "%s", err.msg);
	close(sfd);
	ck_assert_int_eq(fv_kill_left("stpl"), 0);
	vmf__hv__hypervisor_state__free_unpacked(hs, NULL);

	struct fv_cfg f;
	fv_config(&f, "sfail", 1, 1, 128, 128);
	setenv("FAKE_VMM_FAIL_ON", d->snapshot_req, 1);
	ck_assert_msg(ops->boot(&f.c, &vm, &err) == 0, "%s", err.msg);
	unsetenv("FAKE_VMM_FAIL_ON");
	sfd = fv_open_state("f.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_int_eq(ops->save_state(vm, sfd, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "suspending VM sfail") && strstr(err.msg, "Injected failure"), "%s", err.msg);
	close(sfd);
	snprintf(want, sizeof(want), "%s/snapshot", f.run_dir);
	ck_assert_int_ne(access(want, F_OK), 0);
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

/* Suspend of a VM with a disk: a restarted daemon's handle learns the disk
 * from the VMM; the resume must be given the saved VM's disks (sentences,
 * no process otherwise), and the VMM opens the file through the
 * descriptor the daemon reopened.  No template snapshot while the disk is
 * attached; once detached, one. */
START_TEST(suspend_with_disk)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "sdisk", 1, 1, 128, 128);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	char disk[PATH_MAX], real[PATH_MAX], want[PATH_MAX * 2];
	snprintf(disk, sizeof(disk), "%s/sdisk.img", fv_dir);
	ck_assert(vmf_write_file_atomic(disk, "data", 4, 0600, NULL) == 0);
	ck_assert_ptr_nonnull(realpath(disk, real));
	int mode = (d->disk_ro ? O_RDONLY : O_RDWR) | O_CLOEXEC;
	int fd = open(disk, mode);
	ck_assert_int_ge(fd, 0);
	char serial[VMF_DISK_SERIAL_MAX + 1];
	vmf_disk_serial(d->disk_slot, serial);
	struct vmf_disk_spec ds = { .slot = d->disk_slot, .fd = fd, .read_only = d->disk_ro, .format = "raw",
				    .serial = serial, .backing_fd = -1 };
	ck_assert_msg(ops->attach_disk(vm, &ds, &err) == 0, "%s", err.msg);
	vm = fv_readopt(ops, vm);
	struct fv_cfg to;
	tpl_config(&to, "sdisk-to");
	snprintf(to.mem, sizeof(to.mem), "%s/sdisk-to.mem", fv_dir);
	struct vmf_snapshot_to dest = { .cfg = &to.c };
	struct vmf_snapshot_result res = {0};
	int sfd = fv_open_state("sd.tpl", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_int_eq(ops->snapshot(vm, &dest, sfd, &res, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "with a disk attached is unsupported"), "%s", err.msg);
	close(sfd);
	vmf_hv_state *hs = NULL;
	sfd = fv_suspend(ops, vm, "sd.state", &hs);
	/* The daemon's descriptor dies with the suspend; the resume reopens
	 * the file under another number. */
	int fd2 = open(disk, mode);
	ck_assert_int_ge(fd2, 0);
	close(fd);

	vm = NULL;
	ck_assert_int_eq(lseek(sfd, 0, SEEK_SET), 0);
	ck_assert_int_eq(ops->restore_state(hs, sfd, &vm, &err), -EINVAL);
	ck_assert_ptr_null(vm);
	snprintf(want, sizeof(want), "the saved VM had disk vmfd%u attached, which the resume was not given",
		 d->disk_slot);
	ck_assert_msg(strstr(err.msg, want), "%s", err.msg);
	struct vmf_disk_spec d2 = ds;
	d2.fd = fd2;
	d2.slot = d->disk_slot + 1;
	struct vmf_restore_parts parts = { .disks = &d2, .n_disks = 1 };
	ck_assert_int_eq(lseek(sfd, 0, SEEK_SET), 0);
	ck_assert_int_eq(ops->restore_state_with(hs, sfd, &parts, &vm, &err), -EINVAL);
	snprintf(want, sizeof(want), "disk vmfd%u is given for the resume, but the saved VM had no disk in that slot",
		 d->disk_slot + 1);
	ck_assert_msg(strstr(err.msg, want), "%s", err.msg);
	ck_assert_int_eq(fv_kill_left("sdisk"), 0);

	d2.slot = d->disk_slot;
	ck_assert_int_eq(lseek(sfd, 0, SEEK_SET), 0);
	ck_assert_msg(ops->restore_state_with(hs, sfd, &parts, &vm, &err) == 0, "%s", err.msg);
	close(sfd);
	snprintf(want, sizeof(want), d->disk_load_fmt, d->disk_slot, real);
	ck_assert_msg(fv_log_has(want), "the resume did not open the disk file (%s)", want);
	if (d->disk_link_fmt) {
		snprintf(want, sizeof(want), d->disk_link_fmt, t.run_dir, d->disk_slot);
		ck_assert_int_ne(access(want, F_OK), 0);
	}
	close(fd2);
	sfd = fv_open_state("sd.tpl", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_int_eq(ops->snapshot(vm, &dest, sfd, &res, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "with a disk attached is unsupported"), "%s", err.msg);
	ck_assert_msg(ops->detach_disk(vm, d->disk_slot, &err) == 0, "%s", err.msg);
	snprintf(want, sizeof(want), d->disk_detach_fmt, d->disk_slot, d->disk_slot, d->disk_slot);
	ck_assert_msg(fv_log_has(want), "no detach (%s)", want);
	ck_assert_msg(ops->snapshot(vm, &dest, sfd, &res, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	vmf__hv__hypervisor_state__free_unpacked(hs, NULL);
	fv_assert_no_violations();
}
END_TEST

/* Snapshot into a template: refused and dying requests are errors, leave
 * no memory file and (refused) the source running; from a running source
 * it runs on, from a paused one it stays paused; a clone of it starts. */
START_TEST(snapshot_into_template)
{
	struct vmf_error err = {0};
	struct fv_cfg t, to;
	tpl_config(&t, "ptpl");
	fv_config(&to, "newtpl", 1, max_vcpus(), 128, 128);
	snprintf(to.mem, sizeof(to.mem), "%s/new.mem", fv_dir);
	to.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
	to.c.memory_file = to.mem;
	struct vmf_snapshot_to dst = { .cfg = &to.c };
	struct vmf_snapshot_result res = {0};
	char st[32];
	const char *envs[] = { "FAKE_VMM_FAIL_ON", "FAKE_VMM_DIE_ON" };
	for (int i = 0; i < 2; i++) {
		struct fv_cfg f;
		char id[16];
		snprintf(id, sizeof(id), "pfail%d", i);
		fv_config(&f, id, 1, 1, 128, 128);
		setenv(envs[i], d->snapshot_req, 1);
		struct vmf_vmm *fvm = NULL;
		ck_assert_msg(ops->boot(&f.c, &fvm, &err) == 0, "%s", err.msg);
		unsetenv(envs[i]);
		int sfd = fv_open_state("p.state", O_RDWR | O_CREAT | O_TRUNC);
		memset(&res, 0, sizeof(res));
		ck_assert_int_lt(ops->snapshot(fvm, &dst, sfd, &res, &err), 0);
		close(sfd);
		ck_assert_str_eq(res.method, d->method);
		ck_assert_int_ne(access(to.mem, F_OK), 0);
		if (i == 0) {
			ck_assert_msg(strstr(err.msg, "Injected failure"), "%s", err.msg);
			ck_assert_str_eq(vm_state(f.run_dir, st, sizeof(st)), "Running");
		}
		ck_assert_int_eq(ops->stop(fvm, 3000, &err), 0);
		ops->release(fvm);
	}

	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	if (d->vcpu_hotplug)
		ck_assert_msg(ops->hotplug_vcpus(vm, 2, &err) == 0, "%s", err.msg);
	int sfd = fv_open_state("p.state", O_RDWR | O_CREAT | O_TRUNC);
	memset(&res, 0, sizeof(res));
	ck_assert_msg(ops->snapshot(vm, &dst, sfd, &res, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert_str_eq(res.method, d->method);
	ck_assert_str_eq(vm_state(t.run_dir, st, sizeof(st)), "Running");
	if (d->snapshot_mem_fmt) {
		char want[PATH_MAX + 64];
		snprintf(want, sizeof(want), d->snapshot_mem_fmt, to.mem);
		ck_assert_msg(fv_log_has(want), "the memory did not go to the new template's file");
	}
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));
	ck_assert_msg(ops->pause(vm, &err) == 0, "%s", err.msg);
	sfd = fv_open_state("p2.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(ops->snapshot(vm, &dst, sfd, &res, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert_str_eq(vm_state(t.run_dir, st, sizeof(st)), "Paused");
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);

	struct fv_cfg c;
	clone_config(&c, "pclone", to.mem);
	struct vmf_vmm *cl = NULL;
	sfd = fv_open_state("p.state", O_RDONLY);
	ck_assert_msg(ops->start_from_template(&c.c, sfd, &cl, &err) == 0, "%s", err.msg);
	close(sfd);
	if (d->vcpus) {
		char csock[PATH_MAX];
		api_sock(c.run_dir, csock, sizeof(csock));
		ck_assert_int_eq(d->vcpus(csock), 2);
	}
	ck_assert_msg(ops->resume(cl, &err) == 0, "%s", err.msg);
	fv_assert_echo(ops->agent_connect(cl, 5000, &err));
	ck_assert_int_eq(ops->stop(cl, 3000, &err), 0);
	ops->release(cl);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

/* The template side (vmf_template_snapshot, the daemon's snapshot work):
 * a template whose memory is the VMM's, and a clone of it through
 * vmf_template_clone. */
static void
snapshot_checks(const Vmf__Catalog__TemplateRecord *rec, const char *crun)
{
	if (d->shared) {
		ck_assert_int_eq(rec->memory_size, 128 << 20);
	} else {
		ck_assert_str_eq(rec->memory_file, "");
		ck_assert_int_gt(rec->state_size, 0);
	}
	if (d->vcpus) {
		char sock[PATH_MAX];
		api_sock(crun, sock, sizeof(sock));
		ck_assert_int_eq(d->vcpus(sock), 2);   /* the source's hot-added vCPU */
	}
}

START_TEST(snapshot_through_catalog)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	tpl_config(&t, "src");
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	if (d->vcpu_hotplug)
		ck_assert_msg(ops->hotplug_vcpus(vm, 2, &err) == 0, "%s", err.msg);
	Vmf__Catalog__TemplateSpec spec = VMF__CATALOG__TEMPLATE_SPEC__INIT;
	spec.hypervisor = ops->kind;
	spec.cmdline = (char *)"console=ttyS0";
	spec.vcpus = 1;
	spec.max_vcpus = max_vcpus();
	spec.memory_mib = spec.max_memory_mib = 128;
	spec.full_memory = !d->shared;
	fv_snapshot_through_catalog(ops, vm, &t, &spec, d->method, vm_state, snapshot_checks);
}
END_TEST

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const char *only = getenv("VMFACTORY_VMM");
	for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++)
		if (only && !strcmp(only, drivers[i].name))
			d = &drivers[i];
	if (!d) {
		fprintf(stderr, "VMFACTORY_VMM names no driver: firecracker or cloud-hypervisor\n");
		return EXIT_FAILURE;
	}
	Suite *s = suite_create(d->name);
	TCase *tc = tcase_create("fake");
	tcase_add_unchecked_fixture(tc, fv_root_setup, fv_root_teardown);
	tcase_add_checked_fixture(tc, fv_setup, fv_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, boot_errors);
	tcase_add_test(tc, stop_escalates);
	tcase_add_test(tc, dies_mid_request);
	tcase_add_test(tc, fake_is_strict);
	tcase_add_test(tc, suspend_resume);
	tcase_add_test(tc, suspend_with_disk);
	tcase_add_test(tc, snapshot_into_template);
	tcase_add_test(tc, snapshot_through_catalog);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
