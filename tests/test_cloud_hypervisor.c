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
	ck_assert_int_eq(ops->probe(fv_fake, NULL, NULL, &info, &err), 0);
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

/* Beyond the VM's maxima the driver refuses to resize. */
START_TEST(resize_beyond_max)
{
	struct vmf_error err = {0};
	struct fv_cfg t;
	fv_config(&t, "err3", 1, 1, 128, 128);
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(ops->boot(&t.c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->hotplug_vcpus(vm, 2, &err), -ENOSPC);
	ck_assert_int_eq(ops->hotplug_memory(vm, 128, &err), -ENOSPC);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	fv_assert_no_violations();
}
END_TEST

START_TEST(dies_in_resize)
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
	wait_until(!ops->alive(vm), 5000, "cloud-hypervisor outlived its death mid-request");
	ck_assert_int_lt(ops->pause(vm, &err), 0);
	ck_assert_msg(strstr(err.msg, "cloud-hypervisor exited"), "%s", err.msg);
	ck_assert_int_eq(ops->stop(vm, 1000, &err), 0);
	ops->release(vm);
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
	tcase_add_test(tc, resize_beyond_max);
	tcase_add_test(tc, dies_in_resize);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	return vmf_test_run(suite());
}
