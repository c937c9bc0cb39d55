/* Firecracker driver against the fake Firecracker (tests/fake_vmm.c), which
 * accepts only what the published API document 1.17.0-dev (81b38b9d)
 * allows.  The whole lifecycle runs on a real process: boot, agent vsock,
 * pause, template snapshot, clone by snapshot load, resume, memory hot-add,
 * refused vCPU hot-add, serialize/adopt, stop. */
#include "fake_vmm_util.h"

#include "catalog.h"
#include "template.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#include "frame.h"
#include "vmm_http.h"
#include "vmm_proc.h"
#include "factory.h"
#include "ops/getvm.h"

static const struct vmf_hv_ops *ops = &vmf_firecracker_ops;

START_TEST(registry)
{
	ck_assert_ptr_eq(vmf_hv_by_name("firecracker"), &vmf_firecracker_ops);
	ck_assert_ptr_eq(vmf_hv_by_kind(VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER), &vmf_firecracker_ops);
	unsigned caps = ops->capabilities(NULL);
	ck_assert(caps & VMF_CAP_TEMPLATE_SHARE);
	ck_assert(!(caps & VMF_CAP_CPU_HOTPLUG));
	ck_assert(!(caps & VMF_CAP_SHARE_DEVICE));
	ck_assert(!(caps & VMF_CAP_VMGENID));
}
END_TEST

/* GetVM's refusal of what the driver cannot do. */
START_TEST(getvm_caps)
{
	struct vmf_error err = {0};
	unsigned caps = ops->capabilities(NULL);
	ck_assert_int_eq(vmf_getvm_check_caps("firecracker", caps, 2, 256, 2, 384, &err), 0);
	ck_assert_int_eq(vmf_getvm_check_caps("firecracker", caps, 2, 256, 1, 256, &err), 0);
	ck_assert_int_eq(vmf_getvm_check_caps("firecracker", caps, 2, 256, 3, 256, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "vCPU hot-add is unsupported by firecracker (no cpu-hotplug capability)"),
		      "%s", err.msg);
	ck_assert_int_eq(vmf_getvm_check_caps("firecracker", caps & ~VMF_CAP_MEM_HOTPLUG, 2, 256, 2, 384, &err),
			 -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "memory hot-add is unsupported by firecracker (no memory-hotplug"), "%s",
		      err.msg);
	ck_assert_int_eq(vmf_getvm_check_caps("cloud-hypervisor", vmf_cloud_hypervisor_ops.capabilities(NULL),
					      1, 256, 4, 1024, &err), 0);
	ck_assert_int_eq(vmf_getvm_check_caps("qemu", vmf_qemu_ops.capabilities(NULL), 1, 256, 4, 1024, &err), 0);
}
END_TEST

/* No share device, no share: pools fill without MountShare and GetVM
 * refuses a share_dir instead of linking a directory the guest never sees. */
START_TEST(getvm_share)
{
	struct vmf_error err = {0};
	unsigned fc = ops->capabilities(NULL), ch = vmf_cloud_hypervisor_ops.capabilities(NULL);
	unsigned qemu = vmf_qemu_ops.capabilities(NULL);
	ck_assert_int_eq(vmf_getvm_check_share("firecracker", fc, "", "/run/s/sock", &err), 0);
	ck_assert_int_eq(vmf_getvm_check_share("firecracker", fc, NULL, "/run/s/sock", &err), 0);
	ck_assert_int_eq(vmf_getvm_check_share("cloud-hypervisor", ch, "", "/run/s/sock", &err), 0);
	ck_assert_int_eq(vmf_getvm_check_share("firecracker", fc, "/run/s/share", "/run/s/sock", &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "firecracker has no share device (no share-device capability)"), "%s", err.msg);
	ck_assert_int_eq(vmf_getvm_check_share("cloud-hypervisor", ch, "/run/s/share", "/run/s/sock", &err),
			 -ENOTSUP);
	ck_assert_int_eq(vmf_getvm_check_share("firecracker", fc, "", "", &err), -EINVAL);
	ck_assert_str_eq(err.msg, "sock_dir must be given");
	/* QEMU has the device: both paths, and different. */
	ck_assert_int_eq(vmf_getvm_check_share("qemu", qemu, "/run/s/share", "/run/s/sock", &err), 1);
	ck_assert_int_eq(vmf_getvm_check_share("qemu", qemu, "", "/run/s/sock", &err), -EINVAL);
	ck_assert_str_eq(err.msg, "share_dir and sock_dir must be given");
	ck_assert_int_eq(vmf_getvm_check_share("qemu", qemu, "/run/s/x", "/run/s/x", &err), -EINVAL);
	ck_assert_str_eq(err.msg, "share_dir and sock_dir must differ");
}
END_TEST

START_TEST(probe)
{
	struct vmf_hv_info info;
	struct vmf_error err = {0};
	ck_assert_int_eq(ops->probe(fv_fake, NULL, NULL, &info, &err), 0);
	ck_assert_str_eq(info.version, "1.17.0-dev");
	ck_assert(info.caps & VMF_CAP_MEM_HOTPLUG);
	setenv("FAKE_VMM_NO_HOTPLUG", "1", 1);
	ck_assert_int_eq(ops->probe(fv_fake, NULL, NULL, &info, &err), 0);
	ck_assert_str_eq(info.version, "1.10.0");
	ck_assert(!(info.caps & VMF_CAP_MEM_HOTPLUG));
	ck_assert_int_lt(ops->probe("/nonexistent/firecracker", NULL, NULL, &info, &err), 0);
	ck_assert_msg(strstr(err.msg, "firecracker"), "%s", err.msg);
}
END_TEST

START_TEST(lifecycle)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "tpl", 2, 4, 256, 512);
	t.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
	t.c.memory_file = t.mem;
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert(ops->alive(vm));
	ck_assert_int_gt(ops->pid(vm), 0);
	fv_assert_watch_fd(ops->watch_fd(vm));
	ck_assert(ops->capabilities(vm) & VMF_CAP_MEM_HOTPLUG);
	ck_assert(fv_log_has("PUT /machine-config {\"vcpu_count\":2,\"mem_size_mib\":256}"));
	ck_assert(fv_log_has("PUT /hotplug/memory {\"total_size_mib\":256}"));
	ck_assert(fv_log_has("PUT /actions {\"action_type\":\"InstanceStart\"}"));
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));
	fv_assert_named_sockets(ops, t.c.run_dir);

	/* Template: pause, Full snapshot; memory into the template's file. */
	ck_assert_msg(ops->pause(vm, &err) == 0, "%s", err.msg);
	int sfd = fv_open_state("tpl.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(ops->save_template(vm, sfd, false, &err) == 0, "%s", err.msg);
	close(sfd);
	struct stat st;
	ck_assert_int_eq(stat(t.mem, &st), 0);
	ck_assert_int_eq(st.st_size, 256 << 20);
	ck_assert(fv_log_has("\"snapshot_type\":\"Full\""));
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ck_assert(!ops->alive(vm));
	ops->release(vm);

	/* Clone: fresh process, snapshot load from the private File backend. */
	struct fv_cfg c;
	fv_config(&c, "clone1", 2, 4, 256, 512);
	c.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_CLONE_COW;
	c.c.memory_file = t.mem;
	c.c.incoming = true;
	sfd = fv_open_state("tpl.state", O_RDONLY);
	ck_assert_msg(ops->start_from_template(&c.c, sfd, &vm, &err) == 0, "%s", err.msg);
	close(sfd);
	char want[PATH_MAX * 2];
	snprintf(want, sizeof(want), "\"mem_backend\":{\"backend_type\":\"File\",\"backend_path\":\"%s\"}", t.mem);
	ck_assert_msg(fv_log_has(want), "no File backend load in the request log");
	snprintf(want, sizeof(want), "\"vsock_override\":{\"uds_path\":\"%s/vsock.sock\"}", c.run_dir);
	ck_assert_msg(fv_log_has(want), "the clone's vsock was not overridden");
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);
	fv_assert_echo(ops->agent_connect(vm, 5000, &err));

	/* Memory hot-add through virtio-mem; vCPU hot-add refused clearly. */
	ck_assert_msg(ops->hotplug_memory(vm, 128, &err) == 0, "%s", err.msg);
	ck_assert(fv_log_has("PATCH /hotplug/memory {\"requested_size_mib\":128}"));
	ck_assert_int_eq(ops->hotplug_memory(vm, 256, &err), -ENOSPC);
	ck_assert_int_eq(ops->hotplug_vcpus(vm, 2, &err), 0);
	ck_assert_int_eq(ops->hotplug_vcpus(vm, 3, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "vCPU hot-add is unsupported by firecracker"), "%s", err.msg);

	/* Restart recovery: serialize, adopt, drive the adopted handle. */
	vmf_hv_state *hs = NULL;
	ck_assert_int_eq(ops->serialize(vm, &hs, &err), 0);
	ck_assert_int_eq(hs->kind, VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER);
	ck_assert_int_eq(hs->memory_mib, 384);
	struct vmf_vmm *adopted = NULL;
	ck_assert_msg(ops->adopt(hs, &adopted, &err) == 0, "%s", err.msg);
	fv_expect_not_adopted(ops, hs, "pid %d is not the firecracker of VM clone1 (its command line lacks the "
			      "API socket ");
	vmf__hv__hypervisor_state__free_unpacked(hs, NULL);
	ck_assert_int_eq(ops->pid(adopted), ops->pid(vm));
	ck_assert_msg(ops->pause(adopted, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->pause(adopted, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "firecracker API PATCH /vm answered HTTP 400: Failed to pause"), "%s", err.msg);
	ck_assert_int_eq(ops->stop(adopted, 3000, &err), 0);
	ck_assert(!ops->alive(adopted));
	ops->release(adopted);
	ck_assert(!ops->alive(vm));
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

START_TEST(full_template)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "full", 1, 1, 128, 128);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert(!fv_log_has("/hotplug/memory"));
	int sfd = fv_open_state("full.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(ops->save_template(vm, sfd, true, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	struct fv_cfg c;
	fv_config(&c, "fullclone", 1, 1, 128, 128);
	c.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_FULL;
	c.c.incoming = true;
	sfd = fv_open_state("full.state", O_RDONLY);
	ck_assert_msg(ops->start_from_template(&c.c, sfd, &vm, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert_int_eq(ops->hotplug_memory(vm, 128, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "memory hot-add is unsupported by firecracker"), "%s", err.msg);
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

/* Resuming a running VM is refused by the VMM, not faked. */
START_TEST(resume_of_a_running_vm)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "err3", 1, 1, 128, 128);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->resume(vm, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "already Running"), "%s", err.msg);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

START_TEST(no_hotplug_version)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "old", 1, 1, 128, 512);
	setenv("FAKE_VMM_NO_HOTPLUG", "1", 1);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert(!(ops->capabilities(vm) & VMF_CAP_MEM_HOTPLUG));
	ck_assert_int_eq(ops->hotplug_memory(vm, 128, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "memory hot-add is unsupported by firecracker 1.10.0"), "%s", err.msg);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

/* Disks: placeholder drives made at boot, swapped by PATCH to
 * the daemon's descriptor and back; clones of the template have them. */
START_TEST(disks)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "dtpl", 1, 1, 128, 128);
	t.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
	t.c.memory_file = t.mem;
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert(fv_log_has("PUT /drives/vmfd0 {\"drive_id\":\"vmfd0\",\"is_root_device\":false,\"is_read_only\":false,"
			     "\"path_on_host\":\"vmfd0.empty\"}"));
	ck_assert(fv_log_has("PUT /drives/vmfd3 {\"drive_id\":\"vmfd3\",\"is_root_device\":false,\"is_read_only\":true,"
			     "\"path_on_host\":\"vmfd3.empty\"}"));
	ck_assert_msg(ops->pause(vm, &err) == 0, "%s", err.msg);
	int sfd = fv_open_state("d.state", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(ops->save_template(vm, sfd, false, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);

	/* The clone loads a snapshot naming the placeholders: its own run dir
	 * has them (the load fails if not, as Firecracker's does). */
	struct fv_cfg c;
	fv_config(&c, "dclone", 1, 1, 128, 128);
	c.c.memory_mode = VMF__HV__MEMORY_MODE__MEM_CLONE_COW;
	c.c.memory_file = t.mem;
	c.c.incoming = true;
	sfd = fv_open_state("d.state", O_RDONLY);
	ck_assert_msg(ops->start_from_template(&c.c, sfd, &vm, &err) == 0, "%s", err.msg);
	close(sfd);
	ck_assert_msg(ops->resume(vm, &err) == 0, "%s", err.msg);

	ck_assert(ops->disk_slot_fits && ops->disk_device);
	ck_assert(ops->disk_slot_fits(0, false) && ops->disk_slot_fits(1, false) && !ops->disk_slot_fits(2, false));
	ck_assert(ops->disk_slot_fits(2, true) && ops->disk_slot_fits(3, true) && !ops->disk_slot_fits(0, true));
	ck_assert(!ops->disk_slot_fits(4, false) && !ops->disk_slot_fits(4, true));

	char disk[PATH_MAX], want[PATH_MAX * 2];
	snprintf(disk, sizeof(disk), "%s/disk.img", fv_dir);
	ck_assert(vmf_write_file_atomic(disk, "data", 4, 0600, NULL) == 0);
	int fd = open(disk, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	char serial[VMF_DISK_SERIAL_MAX + 1];
	vmf_disk_serial(1, serial);
	struct vmf_disk_spec d = { .slot = 1, .fd = fd, .format = "raw", .serial = serial, .backing_fd = -1 };
	ck_assert_msg(ops->attach_disk(vm, &d, &err) == 0, "%s", err.msg);
	/* Through the link vmfd1.disk to the descriptor, gone once opened. */
	ck_assert(fv_log_has("PATCH /drives/vmfd1 {\"drive_id\":\"vmfd1\",\"path_on_host\":\"vmfd1.disk\"}"));
	snprintf(want, sizeof(want), "%s/vmfd1.disk", c.run_dir);
	ck_assert_int_ne(access(want, F_OK), 0);

	ck_assert_msg(ops->detach_disk(vm, 1, &err) == 0, "%s", err.msg);
	ck_assert(fv_log_has("PATCH /drives/vmfd1 {\"drive_id\":\"vmfd1\",\"path_on_host\":\"vmfd1.empty\"}"));
	ck_assert_int_eq(ops->detach_disk(vm, 9, &err), 0);

	/* Bad input: sentences, nothing sent. */
	d.read_only = true;
	ck_assert_int_eq(ops->attach_disk(vm, &d, &err), -EINVAL);
	ck_assert_msg(strstr(err.msg, "slot vmfd1 is read-write, the disk is read-only"), "%s", err.msg);
	d.read_only = false;
	d.slot = 5;
	ck_assert_int_eq(ops->attach_disk(vm, &d, &err), -ENOSPC);
	ck_assert_msg(strstr(err.msg, "firecracker has 4 disk slots"), "%s", err.msg);
	d.slot = 0;
	d.backing_fd = fd;
	ck_assert_int_eq(ops->attach_disk(vm, &d, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "firecracker takes no copy-on-write disk"), "%s", err.msg);
	d.backing_fd = -1;
	d.format = "qcow2";
	ck_assert_int_eq(ops->attach_disk(vm, &d, &err), -ENOTSUP);
	ck_assert_msg(strstr(err.msg, "only raw disks"), "%s", err.msg);
	close(fd);

	/* The fake is as strict as Firecracker: no drive added after boot, no
	 * PATCH of a drive that does not exist. */
	char sock[PATH_MAX];
	snprintf(sock, sizeof(sock), "%s/firecracker.sock", c.run_dir);
	fv_expect_refused("firecracker", sock, "PUT", "/drives/vmfd9",
			  "{\"drive_id\":\"vmfd9\",\"is_root_device\":false,\"is_read_only\":false,\"path_on_host\":\"vmfd0.empty\"}",
			  "not supported after starting the microVM");
	fv_expect_refused("firecracker", sock, "PATCH", "/drives/vmfd9",
			  "{\"drive_id\":\"vmfd9\",\"path_on_host\":\"vmfd0.empty\"}", "Invalid block device ID: vmfd9");
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

/* The placeholder drives shape a template: they are in the spec's device
 * list, so changing them gives a new template id. */
START_TEST(drives_in_template_spec)
{
	struct vmf_error err = {0};
	struct vmf_hv_info info = { .version = "1.17.0", .accel = "kvm" };
	struct vmf_image img = {0};
	struct vmf_template_params p = { .ops = ops, .vcpus = 1, .max_vcpus = 1, .memory_mib = 128,
					 .max_memory_mib = 128 };
	Vmf__Catalog__TemplateSpec *spec = NULL, *qspec = NULL;
	char id[VMF_SHA256_HEX], qid[VMF_SHA256_HEX];
	ck_assert_msg(vmf_template_spec_new(&p, &info, &img, &spec, id, &err) == 0, "%s", err.msg);
	bool has = false;
	for (size_t i = 0; i < spec->n_devices; i++)
		has = has || strcmp(spec->devices[i], ops->disk_device) == 0;
	ck_assert_msg(has, "the template spec does not name the placeholder drives");
	ck_assert(strstr(ops->disk_device, "vmfd0-1-rw,vmfd2-3-ro"));
	/* QEMU's spec is unchanged (its template ids stay). */
	p.ops = &vmf_qemu_ops;
	ck_assert_int_eq(vmf_template_spec_new(&p, &info, &img, &qspec, qid, &err), 0);
	has = false;
	for (size_t i = 0; i < qspec->n_devices; i++)
		has = has || strcmp(qspec->devices[i], "virtio-scsi:disks") == 0;
	ck_assert(has);
	vmf_template_spec_free(spec);
	vmf_template_spec_free(qspec);
}
END_TEST

/* The state stream carries snapshot files; a hostile stream cannot write
 * outside the directory it is unpacked into. */
START_TEST(state_stream)
{
	struct vmf_error err = {0};
	char src[PATH_MAX], dst[PATH_MAX], p[PATH_MAX];
	snprintf(src, sizeof(src), "%s/src", fv_dir);
	snprintf(dst, sizeof(dst), "%s/dst", fv_dir);
	ck_assert_int_eq(vmf_mkdir_p(src, 0700, &err), 0);
	snprintf(p, sizeof(p), "%s/a", src);
	ck_assert_int_eq(vmf_write_file_atomic(p, "alpha", 5, 0600, &err), 0);
	snprintf(p, sizeof(p), "%s/b", src);
	ck_assert_int_eq(vmf_write_file_atomic(p, "", 0, 0600, &err), 0);
	int fd = fv_open_state("stream", O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(vmf_vmm_pack(fd, src, NULL, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
	ck_assert_msg(vmf_vmm_unpack(fd, dst, &err) == 0, "%s", err.msg);
	char *text = NULL;
	size_t len;
	snprintf(p, sizeof(p), "%s/a", dst);
	ck_assert_int_eq(vmf_read_file(p, &text, &len, 100, &err), 0);
	ck_assert_uint_eq(len, 5);
	ck_assert(memcmp(text, "alpha", 5) == 0);
	free(text);
	snprintf(p, sizeof(p), "%s/b", dst);
	ck_assert_int_eq(access(p, F_OK), 0);
	/* Truncated stream. */
	ck_assert_int_eq(ftruncate(fd, 20), 0);
	ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
	ck_assert_int_lt(vmf_vmm_unpack(fd, dst, &err), 0);
	/* A name with a slash. */
	ck_assert_int_eq(ftruncate(fd, 0), 0);
	ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
	uint32_t nl = 4;
	uint64_t size = 1;
	ck_assert_int_eq(write(fd, "VMFSNAP1", 8), 8);
	ck_assert_int_eq(write(fd, &nl, 4), 4);
	ck_assert_int_eq(write(fd, "../x", 4), 4);
	ck_assert_int_eq(write(fd, &size, 8), 8);
	ck_assert_int_eq(write(fd, "x", 1), 1);
	ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
	ck_assert_int_eq(vmf_vmm_unpack(fd, dst, &err), -EPROTO);
	ck_assert_msg(strstr(err.msg, "bad file name '../x'"), "%s", err.msg);
	/* Not a stream at all. */
	ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
	ck_assert_int_eq(write(fd, "QEVM", 4), 4);
	ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
	ck_assert_int_eq(vmf_vmm_unpack(fd, dst, &err), -EPROTO);
	close(fd);
}
END_TEST

static void *
linger(void *arg)
{
	(void)arg;
	poll(NULL, 0, 2000);
	return NULL;
}

/* A VMM we did not start (adopted after a daemon restart) has exited once
 * all its threads have: its main thread alone is not enough, although
 * /proc then shows the process a zombie. */
START_TEST(adopted_process_exits_with_its_last_thread)
{
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	pid_t c = vmf_test_fork();
	if (c == 0) {
		pid_t g = fork();
		if (g == 0) {
			pthread_t t;
			if (pthread_create(&t, NULL, linger, NULL) == 0)
				pthread_exit(NULL);
			_exit(1);
		}
		_exit(write(fds[1], &g, sizeof(g)) == sizeof(g) ? 0 : 1);
	}
	pid_t g = -1;
	ck_assert_int_eq(read(fds[0], &g, sizeof(g)), sizeof(g));
	ck_assert_int_eq(waitpid(c, NULL, 0), c);
	close(fds[0]);
	close(fds[1]);
	uint64_t ticks = vmf_proc_start_ticks(g);
	ck_assert_uint_ne(ticks, 0);
	wait_until(!vmf_proc_alive(g, ticks), 1500, "the main thread of pid %d did not exit", (int)g);
	struct vmf_vmm_proc p;
	vmf_vmm_attach(&p, g, ticks);
	ck_assert(!p.child);
	/* Without a pidfd (valgrind does not know pidfd_open) /proc is all
	 * there is to go by. */
	if (p.pidfd >= 0)
		ck_assert(!vmf_vmm_exited(&p)); /* its other thread still runs */
	ck_assert(vmf_vmm_wait_exit(&p, vmf_now_ms() + 10000));
	vmf_vmm_close(&p);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("firecracker");
	TCase *tc = tcase_create("fake");
	tcase_add_unchecked_fixture(tc, fv_root_setup, fv_root_teardown);
	tcase_add_checked_fixture(tc, fv_setup, fv_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, registry);
	tcase_add_test(tc, getvm_caps);
	tcase_add_test(tc, getvm_share);
	tcase_add_test(tc, probe);
	tcase_add_test(tc, lifecycle);
	tcase_add_test(tc, full_template);
	tcase_add_test(tc, resume_of_a_running_vm);
	tcase_add_test(tc, no_hotplug_version);
	tcase_add_test(tc, state_stream);
	tcase_add_test(tc, disks);
	tcase_add_test(tc, drives_in_template_spec);
	tcase_add_test(tc, adopted_process_exits_with_its_last_thread);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	return vmf_test_run(suite());
}
