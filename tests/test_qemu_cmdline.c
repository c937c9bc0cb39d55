/* The QEMU command line is data: check it without starting QEMU. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "qemu.h"
#include "testlib.h"

static vmf_vm_config
base_cfg(void)
{
	vmf_vm_config c = VMF__HV__VM_CONFIG__INIT;
	c.id = "11111111-2222-3333-4444-555555555555";
	c.name = "vmfactory-11111111-2222-3333-4444-555555555555";
	c.run_dir = "/run/vmf/vms/x";
	c.kernel = "/img/vmlinuz";
	c.initrd = "/img/initrd.img";
	c.cmdline = "console=ttyS0 panic=-1";
	c.vcpus = 1;
	c.max_vcpus = 4;
	c.memory_mib = 256;
	c.max_memory_mib = 2048;
	c.memory_slots = 4;
	c.accel = "tcg";
	return c;
}

/* Index of the argument following opt whose value starts with prefix, or -1. */
static int
find(char **argv, const char *opt, const char *prefix)
{
	for (int i = 0; argv[i] && argv[i + 1]; i++)
		if (strcmp(argv[i], opt) == 0 && strncmp(argv[i + 1], prefix, strlen(prefix)) == 0)
			return i + 1;
	return -1;
}

static bool
has(char **argv, const char *a)
{
	for (int i = 0; argv[i]; i++)
		if (strcmp(argv[i], a) == 0)
			return true;
	return false;
}

/* A template build's descriptors: no sandbox monitor. */
static const struct vmf_qemu_fds fds3 = { .qmp = 3, .mon = -1, .agent = 4, .vmf_agent = 5 };

START_TEST(cold_boot_line)
{
	vmf_vm_config c = base_cfg();
	char **argv;
	struct vmf_error e = {0};
	const struct vmf_qemu_fds fds = { .qmp = 7, .mon = 10, .agent = 8, .vmf_agent = 9 };
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds, &argv, &e), 0);
	ck_assert_str_eq(argv[0], "qemu-system-x86_64");
	ck_assert_int_ge(find(argv, "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"), 0);
	ck_assert_int_ge(find(argv, "-machine", "q35,memory-backend=mem0"), 0);
	ck_assert_int_ge(find(argv, "-accel", "tcg"), 0);
	ck_assert_int_ge(find(argv, "-smp", "1,maxcpus=4"), 0);
	ck_assert_int_ge(find(argv, "-m", "256M,slots=4,maxmem=2048M"), 0);
	ck_assert_int_ge(find(argv, "-object", "memory-backend-ram,id=mem0,size=256M"), 0);
	ck_assert_int_ge(find(argv, "-chardev", "socket,id=qmp,fd=7,server=on,wait=off"), 0);
	ck_assert_int_ge(find(argv, "-chardev", "socket,id=agent,fd=8,server=on,wait=off"), 0);
	/* The sandbox's own monitor beside the daemon's. */
	ck_assert_int_ge(find(argv, "-chardev", "socket,id=mon1,fd=10,server=on,wait=off"), 0);
	ck_assert_int_ge(find(argv, "-mon", "chardev=mon1,mode=control"), 0);
	ck_assert_int_ge(find(argv, "-mon", "chardev=qmp,mode=control"), 0);
	ck_assert_int_ge(find(argv, "-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent"), 0);
	/* The daemon's private agent port beside the owner's. */
	ck_assert_int_ge(find(argv, "-chardev", "socket,id=vmf,fd=9,server=on,wait=off"), 0);
	ck_assert_int_ge(find(argv, "-device", "virtserialport,bus=vser0.0,chardev=vmf,name=vmf"), 0);
	ck_assert_int_ge(find(argv, "-device", "virtio-rng-pci"), 0);
	ck_assert_int_ge(find(argv, "-device", "vmgenid,id=vmgenid0,guid=auto"), 0);
	ck_assert_int_ge(find(argv, "-chardev", "file,id=serial0,path=/run/vmf/vms/x/serial.log"), 0);
	ck_assert_int_ge(find(argv, "-name", c.name), 0);
	ck_assert(!has(argv, "-incoming"));
	ck_assert(!has(argv, "-S"));
	ck_assert_int_lt(find(argv, "-fsdev", "local"), 0);
	/* A guest reset or panic ends QEMU (on_guest_reset stop, the
	 * default); the owner's agent port has an id (a kept VM's is plugged
	 * again); the guest reports panics through pvpanic. */
	ck_assert_int_ge(find(argv, "-action", "reboot=shutdown,panic=shutdown"), 0);
	ck_assert_int_ge(find(argv, "-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent,id=" VMF_QEMU_AGENT_PORT), 0);
	ck_assert_int_ge(find(argv, "-device", "pvpanic"), 0);
	vmf_qemu_free_argv(argv);
	c.on_guest_reset = "keep";
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds, &argv, &e), 0);
	ck_assert_int_ge(find(argv, "-action", "reboot=reset,panic=none"), 0);
	vmf_qemu_free_argv(argv);
}
END_TEST

START_TEST(template_and_clone_lines)
{
	vmf_vm_config c = base_cfg();
	c.memory_mode = VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
	c.memory_file = "/var/lib/vmf/templates/abc/memory";
	c.share_dir = "/run/vmf/vms/x/share";
	char **argv;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), 0);
	ck_assert_int_ge(find(argv, "-object",
		"memory-backend-file,id=mem0,size=256M,mem-path=/var/lib/vmf/templates/abc/memory,share=on"), 0);
	ck_assert_int_ge(find(argv, "-fsdev", "local,id=fs0,path=/run/vmf/vms/x/share,security_model=none"), 0);
	ck_assert_int_ge(find(argv, "-device", "virtio-9p-pci,id=share0,fsdev=fs0,mount_tag=" VMF_SHARE_TAG), 0);
	/* The disks' controller (vmfactory attach), before the share, which
	 * only clones have: template and clone PCI addresses must match. */
	int scsi = find(argv, "-device", "virtio-scsi-pci,id=" VMF_QEMU_SCSI_BUS);
	ck_assert_int_ge(scsi, 0);
	ck_assert_int_lt(scsi, find(argv, "-device", "virtio-9p-pci"));
	vmf_qemu_free_argv(argv);
	c.share_dir = "";
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), 0);
	ck_assert_int_ge(find(argv, "-device", "virtio-scsi-pci,id=" VMF_QEMU_SCSI_BUS), 0);
	vmf_qemu_free_argv(argv);
	c.share_dir = "/run/vmf/vms/x/share";

	c.memory_mode = VMF__HV__MEMORY_MODE__MEM_CLONE_COW;
	c.incoming = true;
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), 0);
	ck_assert_int_ge(find(argv, "-object", "memory-backend-file,id=mem0,size=256M,mem-path=/var/lib/vmf/templates/abc/memory,share=off"), 0);
	ck_assert_int_ge(find(argv, "-incoming", "defer"), 0);
	ck_assert(has(argv, "-S"));
	vmf_qemu_free_argv(argv);

	/* Full-memory clones carry RAM in the stream: private anonymous RAM. */
	c.memory_mode = VMF__HV__MEMORY_MODE__MEM_FULL;
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), 0);
	ck_assert_int_ge(find(argv, "-object", "memory-backend-ram,id=mem0,size=256M"), 0);
	vmf_qemu_free_argv(argv);
}
END_TEST

/* <run_dir (VMF_RUN_DIR_MAX at most)>/vms/<uuid>/NAME must fit sun_path
 * (107 bytes): a longer name made clones fail under long test dirs. */
/* vmf_qemu_append_hotplugged: a snapshot's receiver (share=on) and its
 * clones (share=off) start with the VM's hot-added vCPUs and DIMMs, with
 * the ids, slots and addresses hot-add gave them; none without. */
START_TEST(hot_added_parts_on_the_command_line)
{
	vmf_vm_config c = base_cfg();
	char **argv;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), 0);
	ck_assert_int_lt(find(argv, "-device", "pc-dimm"), 0);
	ck_assert_int_lt(find(argv, "-device", "qemu64-x86_64-cpu"), 0);
	vmf_qemu_free_argv(argv);

	Vmf__Hv__HotDimm d0 = VMF__HV__HOT_DIMM__INIT, d1 = VMF__HV__HOT_DIMM__INIT, *dp[] = { &d0, &d1 };
	d0.size_mib = 128, d0.addr = 4294967296ull, d0.mem_path = "/state/templates/t/dimm0";
	d1.size_mib = 256, d1.addr = 4429185024ull, d1.mem_path = "/state/templates/t/dimm1";
	c.hotplugged_vcpus = 2;
	c.n_dimms = 2;
	c.dimms = dp;
	c.memory_mode = VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
	c.memory_file = "/state/templates/t/memory";
	c.incoming = true;
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), 0);
	ck_assert_int_ge(find(argv, "-device", "qemu64-x86_64-cpu,id=vcpu1,socket-id=0,core-id=1,thread-id=0"), 0);
	ck_assert_int_ge(find(argv, "-device", "qemu64-x86_64-cpu,id=vcpu2,socket-id=0,core-id=2,thread-id=0"), 0);
	ck_assert_int_lt(find(argv, "-device", "qemu64-x86_64-cpu,id=vcpu3"), 0);
	ck_assert_int_ge(find(argv, "-object", "memory-backend-file,id=hotmem0,size=128M,mem-path=/state/templates/t/dimm0,share=on"), 0);
	ck_assert_int_ge(find(argv, "-device", "pc-dimm,id=dimm1,memdev=hotmem1,addr=4429185024"), 0);
	vmf_qemu_free_argv(argv);
	c.memory_mode = VMF__HV__MEMORY_MODE__MEM_CLONE_COW;
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), 0);
	ck_assert_int_ge(find(argv, "-object", "memory-backend-file,id=hotmem1,size=256M,mem-path=/state/templates/t/dimm1,share=off"), 0);
	vmf_qemu_free_argv(argv);
	/* A DIMM file path QEMU could not carry is refused. */
	d1.mem_path = "/state/a,b/dimm1";
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "DIMM memory file"));
}
END_TEST

START_TEST(socket_names_fit_a_run_dir_at_its_limit)
{
	const char *names[] = { VMF_QEMU_DAEMON_AGENT_SOCK, VMF_QEMU_SERIAL_LOG, NULL };
	for (const char *const *n = names; *n; n++)
		ck_assert_msg(strlen(*n) <= VMF_SOCK_NAME_MAX, "%s does not fit below a run dir of %d characters", *n,
			      VMF_RUN_DIR_MAX);
	const char *drivers[] = { "qemu", "firecracker", "cloud-hypervisor" };
	for (int i = 0; i < 3; i++) {
		const struct vmf_hv_ops *o = vmf_hv_by_name(drivers[i]);
		if (!o)
			continue;
		const char *socks[] = { o->control_socket, o->sandbox_control_socket, o->agent_socket };
		for (int k = 0; k < 3; k++)
			ck_assert_msg(strlen(socks[k]) <= VMF_SOCK_NAME_MAX, "%s's %s does not fit below a run dir of "
				      "%d characters", o->name, socks[k], VMF_RUN_DIR_MAX);
		ck_assert_int_eq(VMF_RUN_DIR_MAX + (int)strlen("/vms/") + 36 + 1 + VMF_SOCK_NAME_MAX, 107);
	}
}
END_TEST

START_TEST(bad_configs_are_refused_clearly)
{
	char **argv;
	struct vmf_error e = {0};
	vmf_vm_config c = base_cfg();
	c.kernel = "/img/vm,linuz";
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "contains a comma"));
	c = base_cfg();
	c.share_dir = "relative/share";
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "not an absolute path"));
	c = base_cfg();
	c.memory_mode = VMF__HV__MEMORY_MODE__MEM_CLONE_COW;
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "memory file"));
	c = base_cfg();
	c.vcpus = 0;
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), -EINVAL);
	c = base_cfg();
	c.max_memory_mib = 256;
	ck_assert_int_eq(vmf_qemu_build_argv(&c, &fds3, &argv, &e), 0);
	ck_assert_int_ge(find(argv, "-m", "256M"), 0);
	ck_assert_int_lt(find(argv, "-m", "256M,"), 0);
	vmf_qemu_free_argv(argv);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("qemu_cmdline");
	TCase *tc = tcase_create("argv");
	tcase_add_test(tc, cold_boot_line);
	tcase_add_test(tc, template_and_clone_lines);
	tcase_add_test(tc, bad_configs_are_refused_clearly);
	tcase_add_test(tc, socket_names_fit_a_run_dir_at_its_limit);
	tcase_add_test(tc, hot_added_parts_on_the_command_line);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
