/* Cloud Hypervisor driver against the fake Cloud Hypervisor
 * (tests/fake_vmm.c), which accepts only what the published API document
 * (OpenAPI 3.0.1 at ae44c297) allows: vm.create, vm.boot, vm.pause,
 * vm.resume, vm.snapshot, vm.restore, vm.resize, vm.info, vmm.shutdown on a
 * real process. */
#include "fake_vmm_util.h"

#include <signal.h>

#include "catalog.h"
#include "frame.h"
#include "template.h"
#include "vmm_http.h"

static const struct vmf_hv_ops *ops = &vmf_cloud_hypervisor_ops;

START_TEST(registry)
{
	ck_assert_ptr_eq(vmf_hv_by_name("cloud-hypervisor"), &vmf_cloud_hypervisor_ops);
	ck_assert_ptr_eq(vmf_hv_by_kind(VMF__HV__HYPERVISOR_KIND__HV_CLOUD_HYPERVISOR), &vmf_cloud_hypervisor_ops);
	unsigned caps = ops->capabilities(NULL);
	ck_assert(caps & VMF_CAP_CPU_HOTPLUG);
	ck_assert(caps & VMF_CAP_MEM_HOTPLUG);
	ck_assert(caps & VMF_CAP_FULL_SNAPSHOT);
	/* Its restore copies memory: no sharing between clones. */
	ck_assert(!(caps & VMF_CAP_TEMPLATE_SHARE));
	ck_assert(!(caps & VMF_CAP_SHARE_DEVICE));
	struct vmf_hv_info info;
	struct vmf_error err = {0};
	setenv("FAKE_VMM_KIND", "ch", 1);
	ck_assert_int_eq(ops->probe(fv_fake, NULL, &info, &err), 0);
	unsetenv("FAKE_VMM_KIND");
	ck_assert_str_eq(info.version, "48.0-fake");
	ck_assert_uint_eq(info.caps, caps);
}
END_TEST

START_TEST(lifecycle)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "tpl", 2, 4, 256, 512);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert(ops->alive(vm));
	fv_assert_watch_fd(ops->watch_fd(vm));
	ck_assert(fv_log_has("\"cpus\":{\"boot_vcpus\":2,\"max_vcpus\":4}"));
	ck_assert(fv_log_has("\"memory\":{\"size\":268435456,\"hotplug_size\":268435456}"));
	ck_assert(fv_log_has("PUT /api/v1/vm.boot"));
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));
	fv_assert_named_sockets(ops, t.c.run_dir);

	/* A shared template is refused truthfully; a full one works. */
	ck_assert_int_eq(ops->pause(vm, &err), 0);
	int sfd = fv_open_state("tpl.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_int_eq(ops->save_template(vm, sfd, false, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "unsupported by cloud-hypervisor"), "%s", err.msg);
	ck_assert_msg(ops->save_template(vm, sfd, true, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ck_assert(!ops->alive(vm));
	ops->release(vm);

	struct fv_cfg c;
	fv_config(&c, "clone1", 2, 4, 256, 512);
	c.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_CLONE_COW;
	c.c.memory_file = t.mem;
	c.c.incoming = true;
	sfd = fv_open_state("tpl.state", O_RDONLY);
	ck_assert_int_eq(ops->start_from_template(&c.c, sfd, &vm, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "unsupported by cloud-hypervisor (template-share)"), "%s", err.msg);
	c.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_FULL;
	c.c.memory_file = (char *)"";
	ck_assert_msg(ops->start_from_template(&c.c, sfd, &vm, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert(fv_log_has("\"memory_restore_mode\":\"Copy\",\"resume\":false"));
	/* The clone has its own vsock socket (config rewritten before restore). */
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));

	ck_assert_msg(ops->hotplug_vcpus(vm, 4, &err) == 0, "%s", err.msg);
	ck_assert(fv_log_has("PUT /api/v1/vm.resize {\"desired_vcpus\":4}"));
	ck_assert_int_eq(ops->hotplug_vcpus(vm, 5, &err), -ENOSPC);
	ck_assert_msg(ops->hotplug_memory(vm, 128, &err) == 0, "%s", err.msg);
	ck_assert(fv_log_has("PUT /api/v1/vm.resize {\"desired_ram\":402653184}"));

	/* A disk: the daemon's open descriptor through /proc, its serial and
	 * id from the slot; removed by id, a second removal no error. */
	char dpath[] = "/tmp/vmf-ch-disk.XXXXXX";
	int dfd = mkstemp(dpath);
	ck_assert_int_ge(dfd, 0);
	struct vmf_disk_spec ds = { .slot = 3, .fd = dfd, .read_only = true, .format = "raw", .serial = "vmfd3",
				    .backing_fd = -1 };
	ck_assert_msg(ops->attach_disk(vm, &ds, &err) == 0, "%s", err.msg);
	char want[160];
	snprintf(want, sizeof want, "PUT /api/v1/vm.add-disk {\"path\":\"/proc/%d/fd/%d\",\"readonly\":true,"
		 "\"id\":\"vmfd3\",\"serial\":\"vmfd3\",\"image_type\":\"Raw\"}", (int)getpid(), dfd);
	ck_assert_msg(fv_log_has(want), "no %s", want);
	ck_assert_int_lt(ops->attach_disk(vm, &ds, &err), 0);
	ck_assert_msg(strstr(err.msg, "identifier vmfd3 is in use"), "%s", err.msg);
	ck_assert_msg(ops->detach_disk(vm, 3, &err) == 0, "%s", err.msg);
	ck_assert(fv_log_has("PUT /api/v1/vm.remove-device {\"id\":\"vmfd3\"}"));
	ck_assert_msg(ops->detach_disk(vm, 3, &err) == 0, "%s", err.msg);
	close(dfd);
	unlink(dpath);

	vmf_hv_state *hs = NULL;
	ck_assert_int_eq(ops->serialize(vm, &hs, &err), 0);
	ck_assert_int_eq(hs->vcpus, 4);
	struct vmf_vmm *adopted = NULL;
	ck_assert_msg(ops->adopt(hs, &adopted, &err) == 0, "%s", err.msg);
	fv_expect_not_adopted(ops, hs, "pid %d is not the cloud-hypervisor of VM clone1 (its command line lacks "
			      "the API socket ");
	vmf__hv__hypervisor_state__free_unpacked(hs, NULL);
	ck_assert(fv_log_has("GET /api/v1/vm.info"));
	ck_assert_msg(ops->pause(adopted, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->pause(adopted, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "cloud-hypervisor API PUT /api/v1/vm.pause answered HTTP 405: Error from "
			     "API: The VM could not be paused"), "%s", err.msg);
	ck_assert_int_eq(ops->stop(adopted, 3000, &err), 0);
	ck_assert(fv_log_has("PUT /api/v1/vmm.shutdown"));
	ck_assert(!ops->alive(adopted));
	ops->release(adopted);
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

START_TEST(error_reply)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "err", 1, 1, 128, 128);
	t.c.kernel = (char *)"/nonexistent/vmlinuz";
	struct vmf_vmm *vm = NULL;
	ck_assert_int_eq(ops->boot(&t.c, &vm, &err), -EIO);
	ck_assert_msg(strstr(err.msg, "PUT /api/v1/vm.create answered HTTP 500: Error from API"), "%s", err.msg);
	ck_assert_int_eq(fv_kill_left("err"), 0);
	fv_config(&t, "err2", 1, 1, 128, 128);
	setenv("FAKE_VMM_FAIL_ON", "PUT /api/v1/vm.boot", 1);
	ck_assert_int_eq(ops->boot(&t.c, &vm, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "vm.boot answered HTTP 400: Injected failure"), "%s", err.msg);
	unsetenv("FAKE_VMM_FAIL_ON");
	fv_config(&t, "err3", 1, 1, 128, 128);
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->hotplug_vcpus(vm, 2, &err), -ENOSPC);
	ck_assert_int_eq(ops->hotplug_memory(vm, 128, &err), -ENOSPC);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

START_TEST(dies_mid_request)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "dies", 1, 2, 128, 256);
	struct vmf_vmm *vm = NULL;
	/* The fake reads its controls at start. */
	setenv("FAKE_VMM_DIE_ON", "PUT /api/v1/vm.resize", 1);
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->hotplug_vcpus(vm, 2, &err), -ECONNRESET);
	ck_assert_msg(strstr(err.msg, "vm.resize") && strstr(err.msg, "mid-request"), "%s", err.msg);
	int64_t deadline = vmf_now_ms() + 5000;
	while (ops->alive(vm) && vmf_now_ms() < deadline)
		poll(NULL, 0, 10);
	ck_assert(!ops->alive(vm));
	ck_assert_int_lt(ops->pause(vm, &err), 0);
	ck_assert_msg(strstr(err.msg, "cloud-hypervisor exited"), "%s", err.msg);
	ck_assert_int_eq(ops->stop(vm, 1000, &err), 0);
	ops->release(vm);
}
END_TEST

START_TEST(stop_escalates)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "stubborn", 1, 1, 128, 128);
	setenv("FAKE_VMM_IGNORE_TERM", "1", 1);
	/* vmm.shutdown refused, SIGTERM ignored: only SIGKILL ends it. */
	setenv("FAKE_VMM_FAIL_ON", "PUT /api/v1/vmm.shutdown", 1);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(ops->stop(vm, 2000, &err), 0);
	ck_assert(!ops->alive(vm));
	ck_assert_int_lt(vmf_now_ms() - t0, 2000 + 5000);
	ck_assert(fv_log_has("PUT /api/v1/vmm.shutdown"));
	ops->release(vm);
}
END_TEST

START_TEST(fake_is_strict)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "strict", 1, 1, 128, 128);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	char sock[PATH_MAX];
	snprintf(sock, sizeof(sock), "%s/ch.sock", t.run_dir);
	const char *ch = "cloud-hypervisor";
	fv_expect_refused(ch, sock, "PUT", "/api/v1/vm.resize", "{\"desired_vcpus\":1,\"desired_cpus\":2}",
			  "field 'desired_cpus' is not in VmResize");
	fv_expect_refused(ch, sock, "PUT", "/api/v1/vm.restore",
			  "{\"source_url\":\"file:///x\",\"memory_restore_mode\":\"Lazy\"}", "not one of Copy|OnDemand");
	fv_expect_refused(ch, sock, "GET", "/api/v1/vm.pause", NULL, "method not allowed");
	fv_expect_refused(ch, sock, "PUT", "/api/v1/vm.resize", NULL, "request body (VmResize) is required");
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
}
END_TEST

/* vm.info of the fake: the state and the config's cpus/memory. */
static void
ch_info(const char *run_dir, char *state, size_t n, int64_t *vcpus, int64_t *hotplugged)
{
	char sock[PATH_MAX];
	snprintf(sock, sizeof(sock), "%s/ch.sock", run_dir);
	json_object *o = NULL, *v, *c, *x;
	struct vmf_error err = {0};
	state[0] = '\0';
	*vcpus = *hotplugged = -1;
	if (vmf_vmm_http("cloud-hypervisor", sock, "GET", "/api/v1/vm.info", NULL, &o, 5000, &err) < 0)
		return;
	if (json_object_object_get_ex(o, "state", &v))
		snprintf(state, n, "%s", json_object_get_string(v));
	if (json_object_object_get_ex(o, "config", &c)) {
		if (json_object_object_get_ex(c, "cpus", &x) && json_object_object_get_ex(x, "boot_vcpus", &v))
			*vcpus = json_object_get_int64(v);
		if (json_object_object_get_ex(c, "memory", &x) && json_object_object_get_ex(x, "hotplugged_size", &v))
			*hotplugged = json_object_get_int64(v);
	}
	json_object_put(o);
}

/* Suspend and resume (issue 18): vm.snapshot into the stream, vm.restore
 * of it with the VM's own sockets; the resized vCPUs and memory return. */
START_TEST(suspend_resume)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "s", 1, 2, 128, 256);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_msg(ops->hotplug_vcpus(vm, 2, &err) == 0, "%s", err.msg);
	ck_assert_msg(ops->hotplug_memory(vm, 64, &err) == 0, "%s", err.msg);
	int sfd = fv_open_state("s.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(ops->save_state(vm, sfd, &err) == 0, "%s", err.msg);
	char want[PATH_MAX * 2], st[32];
	snprintf(want, sizeof(want), "PUT /api/v1/vm.snapshot {\"destination_url\":\"file://%s/snapshot\"}", t.run_dir);
	ck_assert_msg(fv_log_has(want), "no vm.snapshot into the run dir");
	vmf_hv_state *hs = NULL;
	ck_assert_int_eq(ops->serialize(vm, &hs, &err), 0);
	ck_assert(hs->paused);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	ck_assert_int_eq(lseek(sfd, 0, SEEK_SET), 0);
	ck_assert_msg(ops->restore_state(hs, sfd, &vm, &err) == 0, "%s", err.msg);
	close(sfd);
	int64_t vcpus, hot;
	ch_info(t.run_dir, st, sizeof(st), &vcpus, &hot);
	ck_assert_str_eq(st, "Paused");
	ck_assert_int_eq(vcpus, 2);
	ck_assert_int_eq(hot, 64 << 20);
	vmf_hv_state *hs2 = NULL;
	ck_assert_int_eq(ops->serialize(vm, &hs2, &err), 0);
	ck_assert(hs2->paused);
	ck_assert_int_eq(hs2->vcpus, 2);
	ck_assert_int_eq(hs2->memory_mib, 192);
	vmf__hv__hypervisor_state__free_unpacked(hs2, NULL);
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	vmf__hv__hypervisor_state__free_unpacked(hs, NULL);

	/* A refused save: the VM stays paused and resumable, nothing left. */
	struct fv_cfg f;
	fv_config(&f, "sfail", 1, 1, 128, 128);
	setenv("FAKE_VMM_FAIL_ON", "PUT /api/v1/vm.snapshot", 1);
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

/* Suspend of a VM with a disk: the saved config.json names the attach's
 * /proc/<daemon>/fd/N, dead after the suspend; the resume rewrites each
 * disk's path (by id vmfdN) to the descriptor the daemon reopened. */
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
	int fd = open(disk, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	struct vmf_disk_spec d = { .slot = 2, .fd = fd, .read_only = true, .format = "raw", .serial = "vmfd2",
				   .backing_fd = -1 };
	ck_assert_msg(ops->attach_disk(vm, &d, &err) == 0, "%s", err.msg);
	/* A restarted daemon's handle learns the disk from the VMM. */
	vm = fv_readopt(ops, vm);
	struct vmf_snapshot_to dest = { .cfg = &t.c };
	struct vmf_snapshot_result res = {0};
	int sfd = fv_open_state("sd.tpl", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_int_eq(ops->snapshot(vm, &dest, sfd, &res, &err), -ENOTSUP);
	close(sfd);
		vmf_hv_state *hs = NULL;
	sfd = fv_suspend(ops, vm, "sd.state", &hs);
	/* The daemon's descriptor dies with the suspend; the resume reopens
	 * the file under another number. */
	int fd2 = open(disk, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd2, 0);
	close(fd);

	/* The disks given must be the saved VM's: sentences, no process. */
	vm = NULL;
	ck_assert_int_eq(lseek(sfd, 0, SEEK_SET), 0);
	ck_assert_int_eq(ops->restore_state(hs, sfd, &vm, &err), -EINVAL);
	ck_assert_ptr_null(vm);
	ck_assert_msg(strstr(err.msg, "the saved VM had disk vmfd2 attached, which the resume was not given"), "%s",
		      err.msg);
	struct vmf_disk_spec d2[2] = { d, d };
	d2[0].fd = d2[1].fd = fd2;
	d2[1].slot = 3;
	struct vmf_restore_parts parts = { .disks = d2, .n_disks = 2 };
	ck_assert_int_eq(lseek(sfd, 0, SEEK_SET), 0);
	ck_assert_int_eq(ops->restore_state_with(hs, sfd, &parts, &vm, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "disk vmfd3 is given for the resume, but the saved VM had no disk in that slot"),
		      "%s", err.msg);
	ck_assert_int_eq(fv_kill_left("sdisk"), 0);

	parts.n_disks = 1;
	ck_assert_int_eq(lseek(sfd, 0, SEEK_SET), 0);
	ck_assert_msg(ops->restore_state_with(hs, sfd, &parts, &vm, &err) == 0, "%s", err.msg);
	close(sfd);
	snprintf(want, sizeof(want), "restore opened disk vmfd2 %s", real);
	ck_assert_msg(fv_log_has(want), "the restore did not open the disk file");
	close(fd2);
	/* The handle knows the disk: no template snapshot of it, and it
	 * detaches. */
	sfd = fv_open_state("sd.tpl", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_int_eq(ops->snapshot(vm, &dest, sfd, &res, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "with a disk attached is unsupported"), "%s", err.msg);
	ck_assert_msg(ops->detach_disk(vm, 2, &err) == 0, "%s", err.msg);
	ck_assert(fv_log_has("PUT /api/v1/vm.remove-device {\"id\":\"vmfd2\"}"));
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

/* Snapshot into a template (issue 18): a full-memory template from
 * vm.snapshot; the source runs again; a clone starts from it. */
START_TEST(snapshot_into_template)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "p", 1, 2, 128, 128);
	struct vmf_vmm *vm = NULL;
	char st[32];
	int64_t vcpus, hot;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_msg(ops->hotplug_vcpus(vm, 2, &err) == 0, "%s", err.msg);
	struct fv_cfg to;
	fv_config(&to, "newtpl", 1, 2, 128, 128);
	to.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
	to.c.memory_file = to.mem;
	struct vmf_snapshot_to dst = { .cfg = &to.c };
	struct vmf_snapshot_result res = {0};
	int sfd = fv_open_state("p.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(ops->snapshot(vm, &dst, sfd, &res, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert_str_eq(res.method, "cloud-hypervisor-vm.snapshot");
	ch_info(t.run_dir, st, sizeof(st), &vcpus, &hot);
	ck_assert_str_eq(st, "Running");
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);

	struct fv_cfg c;
	fv_config(&c, "pclone", 1, 2, 128, 128);
	c.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_FULL;
	c.c.incoming = true;
	sfd = fv_open_state("p.state", O_RDONLY);
	ck_assert_msg(ops->start_from_template(&c.c, sfd, &vm, &err) == 0, "%s", err.msg);
	close(sfd);
	ch_info(c.run_dir, st, sizeof(st), &vcpus, &hot);
	ck_assert_str_eq(st, "Paused");
	ck_assert_int_eq(vcpus, 2);
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);

	/* Refused and dying snapshot requests: errors; a refused one leaves
	 * the source running and no snapshot directory. */
	const char *envs[] = { "FAKE_VMM_FAIL_ON", "FAKE_VMM_DIE_ON" };
	for (int i = 0; i < 2; i++) {
		struct fv_cfg f;
		char id[16], dir[PATH_MAX];
		snprintf(id, sizeof(id), "pfail%d", i);
		fv_config(&f, id, 1, 1, 128, 128);
		setenv(envs[i], "PUT /api/v1/vm.snapshot", 1);
		ck_assert_msg(ops->boot(&f.c, &vm, &err) == 0, "%s", err.msg);
		unsetenv(envs[i]);
		sfd = fv_open_state("pf.state", O_RDWR | O_CREAT | O_TRUNC);
		ck_assert_int_lt(ops->snapshot(vm, &dst, sfd, &res, &err), 0);
		close(sfd);
		snprintf(dir, sizeof(dir), "%s/snapshot", f.run_dir);
		ck_assert_int_ne(access(dir, F_OK), 0);
		if (i == 0) {
			ch_info(f.run_dir, st, sizeof(st), &vcpus, &hot);
			ck_assert_str_eq(st, "Running");
		}
		ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
		ops->release(vm);
	}
	fv_assert_no_violations();
}
END_TEST

/* The template side (vmf_template_snapshot, the daemon's snapshot work):
 * a Cloud Hypervisor VM of a full-memory template becomes a full-memory
 * template (no memory file) from which vmf_template_clone starts a clone. */
static const char *
ch_state(const char *run_dir, char *buf, size_t n)
{
	int64_t vcpus, hot;
	ch_info(run_dir, buf, n, &vcpus, &hot);
	return buf;
}

/* A full-memory record, and the clone has the source's hot-added vCPU. */
static void
ch_snapshot_checks(const Vmf__Catalog__TemplateRecord *rec, const char *crun)
{
	ck_assert_str_eq(rec->memory_file, "");
	ck_assert_int_gt(rec->state_size, 0);
	char st[32];
	int64_t vcpus, hot;
	ch_info(crun, st, sizeof(st), &vcpus, &hot);
	ck_assert_int_eq(vcpus, 2);
}

START_TEST(snapshot_through_catalog)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "src", 1, 2, 128, 128);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_msg(ops->hotplug_vcpus(vm, 2, &err) == 0, "%s", err.msg);
	Vmf__Catalog__TemplateSpec spec = VMF__CATALOG__TEMPLATE_SPEC__INIT;
	spec.hypervisor = ops->kind;
	spec.cmdline = (char *)"console=ttyS0";
	spec.vcpus = 1;
	spec.max_vcpus = 2;
	spec.memory_mib = spec.max_memory_mib = 128;
	spec.full_memory = true;
	fv_snapshot_through_catalog(ops, vm, &t, &spec, "cloud-hypervisor-vm.snapshot", ch_state, ch_snapshot_checks);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("cloud_hypervisor");
	TCase *tc = tcase_create("fake");
	tcase_add_unchecked_fixture(tc, fv_root_setup, fv_root_teardown);
	tcase_add_checked_fixture(tc, fv_setup, fv_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, registry);
	tcase_add_test(tc, lifecycle);
	tcase_add_test(tc, error_reply);
	tcase_add_test(tc, dies_mid_request);
	tcase_add_test(tc, stop_escalates);
	tcase_add_test(tc, fake_is_strict);
	tcase_add_test(tc, suspend_resume);
	tcase_add_test(tc, suspend_with_disk);
	tcase_add_test(tc, snapshot_into_template);
	tcase_add_test(tc, snapshot_through_catalog);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	return vmf_test_run(suite());
}
