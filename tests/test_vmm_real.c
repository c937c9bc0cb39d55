/* Integration: the Firecracker and Cloud Hypervisor drivers against the real
 * binaries with the guest image.  Runs only where the binary is on PATH and
 * /dev/kvm can be opened read-write; otherwise the driver is skipped with
 * the reason printed, and the program exits 77 (meson: skipped).  meson
 * runs each driver as a test of its own (VMFACTORY_VMM names it).
 *
 * What runs for real: probe, boot, pause, template snapshot, clone
 * (snapshot load / restore), resume, memory resize, stop.  The guest agent
 * over vsock is not exercised: the guest image's agent listens on
 * virtio-serial only (docs/hypervisors.md). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver.h"
#include "testlib.h"
#include "util.h"

static const char *kvm_reason(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? "/dev/kvm does not exist" : "/dev/kvm cannot be opened read-write";
	close(fd);
	return NULL;
}

static bool
in_path(const char *bin)
{
	const char *path = getenv("PATH");
	char *copy = strdup(path ? path : "/usr/bin:/bin"), *save = NULL;
	bool found = false;
	for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
		char p[PATH_MAX];
		snprintf(p, sizeof(p), "%s/%s", d, bin);
		found = access(p, X_OK) == 0;
	}
	free(copy);
	return found;
}

static const struct vmf_hv_ops *cur;
static char *tmp;
static char kernel[PATH_MAX], initrd[PATH_MAX];

static void
setup(void)
{
	const char *img = vmf_test_image_dir();
	ck_assert_msg(img != NULL, "guest image missing");
	snprintf(kernel, sizeof kernel, "%s/vmlinuz", img);
	snprintf(initrd, sizeof initrd, "%s/initrd.img", img);
	tmp = vmf_test_tmpdir("vmf-vmmreal");
}

static void
teardown(void)
{
	vmf_test_kill_under(cur->name, tmp);
	vmf_rm_rf(tmp, NULL);
	free(tmp);
}

static void
config(vmf_vm_config *c, const char *name, char *run_dir, char *mem)
{
	vmf__hv__vm_config__init(c);
	snprintf(run_dir, PATH_MAX, "%s/%s", tmp, name);
	snprintf(mem, PATH_MAX, "%s/template.mem", tmp);
	c->id = (char *)name;
	c->name = (char *)name;
	c->run_dir = run_dir;
	c->kernel = kernel;
	c->initrd = initrd;
	c->cmdline = (char *)"console=ttyS0 reboot=k panic=-1 quiet";
	c->vcpus = 1;
	c->max_vcpus = 2;
	c->memory_mib = 256;
	c->max_memory_mib = 512;
	c->memory_file = (char *)"";
}

START_TEST(lifecycle)
{
	struct vmf_error err = {0};
	struct vmf_hv_info info;
	ck_assert_msg(cur->probe(NULL, NULL, NULL, &info, &err) == 0, "%s", err.msg);
	fprintf(stderr, "%s %s\n", cur->name, info.version);
	bool share = info.caps & VMF_CAP_TEMPLATE_SHARE;
	char run[PATH_MAX], mem[PATH_MAX], state[PATH_MAX];
	vmf_vm_config c;
	config(&c, "tpl", run, mem);
	if (share) {
		c.memory_mode = VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
		c.memory_file = mem;
	}
	struct vmf_vmm *vm = NULL;
	ck_assert_msg(cur->boot(&c, &vm, &err) == 0, "%s", err.msg);
	ck_assert_msg(cur->pause(vm, &err) == 0, "%s", err.msg);
	snprintf(state, sizeof(state), "%s/state", tmp);
	int fd = open(state, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_msg(cur->save_template(vm, fd, !share, &err) == 0, "%s", err.msg);
	close(fd);
	ck_assert_int_eq(cur->stop(vm, 10000, &err), 0);
	cur->release(vm);
	config(&c, "clone", run, mem);
	c.incoming = true;
	c.memory_mode = share ? VMF__HV__MEMORY_MODE__MEM_CLONE_COW : VMF__HV__MEMORY_MODE__MEM_FULL;
	c.memory_file = share ? mem : (char *)"";
	fd = open(state, O_RDONLY | O_CLOEXEC);
	ck_assert_msg(cur->start_from_template(&c, fd, &vm, &err) == 0, "%s", err.msg);
	close(fd);
	ck_assert_msg(cur->resume(vm, &err) == 0, "%s", err.msg);
	if (cur->capabilities(vm) & VMF_CAP_MEM_HOTPLUG)
		ck_assert_msg(cur->hotplug_memory(vm, 128, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(cur->stop(vm, 10000, &err), 0);
	ck_assert(!cur->alive(vm));
	cur->release(vm);
}
END_TEST

int
main(void)
{
	/* One driver per meson test (VMFACTORY_VMM, tests/meson.build), so
	 * that one that runs is not hidden behind one that skips. */
	const struct vmf_hv_ops *drivers[] = { &vmf_firecracker_ops, &vmf_cloud_hypervisor_ops };
	const char *only = getenv("VMFACTORY_VMM");
	const char *kvm = kvm_reason();
	int ran = 0, failed = 0, skipped = 0;
	for (size_t i = 0; i < 2; i++) {
		cur = drivers[i];
		if (only && strcmp(only, cur->name))
			continue;
		if (!in_path(cur->name) || kvm) {
			vmf_test_skip_all("%s integration: %s", cur->name,
					  !in_path(cur->name) ? "binary not found on PATH" : kvm);
			skipped++;
			continue;
		}
		Suite *s = suite_create(cur->name);
		TCase *tc = tcase_create("real");
		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_set_timeout(tc, 300);
		tcase_add_test(tc, lifecycle);
		suite_add_tcase(s, tc);
		ran++;
		failed |= vmf_test_run(s) != EXIT_SUCCESS;
	}
	if (failed)
		return EXIT_FAILURE;
	if (!ran && !skipped) {
		fprintf(stderr, "no driver named %s\n", only);
		return EXIT_FAILURE;
	}
	return skipped ? 77 : EXIT_SUCCESS;
}
