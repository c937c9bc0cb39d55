/* Integration: the QEMU driver and the guest agent on a real VM under TCG
 * (or KVM when usable). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "driver.h"
#include "frame.h"
#include "qemu.h"
#include "testlib.h"
#include "util.h"

#define BOOT_TIMEOUT_MS 180000

static char *tmp;
static char kernel[512], initrd[512];

static void
setup(void)
{
	const char *img = vmf_test_image_dir();
	ck_assert_msg(img != NULL, "guest image missing");
	snprintf(kernel, sizeof kernel, "%s/vmlinuz", img);
	snprintf(initrd, sizeof initrd, "%s/initrd.img", img);
	tmp = vmf_test_tmpdir("vmf-qemu");
}

static void
teardown(void)
{
	if (vmf_test_kill_qemu_under(tmp))
		fprintf(stderr, "teardown: killed QEMU processes left by a failed test\n");
	struct vmf_error e;
	vmf_rm_rf(tmp, &e);
	free(tmp);
}

static vmf_vm_config
config(const char *name, char *run_dir, size_t n)
{
	vmf_vm_config c = VMF__HV__VM_CONFIG__INIT;
	snprintf(run_dir, n, "%s/%s", tmp, name);
	static char id[VMF_UUID_STR], vmname[64];
	vmf_uuid_new(id);
	snprintf(vmname, sizeof vmname, "vmfactory-test-%s", name);
	c.id = id;
	c.name = vmname;
	c.run_dir = run_dir;
	c.kernel = kernel;
	c.initrd = initrd;
	c.cmdline = "console=ttyS0 panic=-1 quiet";
	c.vcpus = 1;
	c.max_vcpus = 2;
	c.memory_mib = 256;
	c.max_memory_mib = 1024;
	c.memory_slots = 4;
	return c;
}

static struct vmf_agent *
agent_for(struct vmf_vmm *vm)
{
	struct vmf_error e = {0};
	int fd = vmf_qemu_ops.agent_connect(vm, 5000, &e);
	ck_assert_msg(fd >= 0, "agent connect: %s", e.msg);
	return vmf_agent_new(fd);
}

static Vmf__Agent__GuestInfo *
guest_info(struct vmf_agent *a, Vmf__Agent__AgentReply **reply)
{
	struct vmf_error e = {0};
	ck_assert_msg(vmf_agent_guest_info(a, reply, 10000, &e) == 0, "GuestInfo: %s", e.msg);
	ck_assert_ptr_nonnull((*reply)->guest_info);
	return (*reply)->guest_info;
}

/* Waits until the process is gone, reaping through the driver. */
static bool
wait_dead(struct vmf_vmm *vm, int timeout_ms)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	int pfd = vmf_qemu_ops.watch_fd(vm);
	while (vmf_now_ms() < deadline) {
		if (!vmf_qemu_ops.alive(vm))
			return true;
		struct pollfd p = { .fd = pfd, .events = POLLIN };
		poll(&p, 1, 100);
	}
	return !vmf_qemu_ops.alive(vm);
}

START_TEST(cold_boot_hotplug_pause_time_stop)
{
	char run[512];
	vmf_vm_config c = config("cold", run, sizeof run);
	struct vmf_vmm *vm = NULL;
	struct vmf_error e = {0};
	int64_t t0 = vmf_now_ms();
	ck_assert_msg(vmf_qemu_ops.boot(&c, &vm, &e) == 0, "boot: %s", e.msg);
	pid_t pid = vmf_qemu_ops.pid(vm);
	ck_assert_int_gt(pid, 0);
	struct vmf_agent *a = agent_for(vm);
	ck_assert_msg(vmf_agent_wait_ready(a, BOOT_TIMEOUT_MS, &e) == 0, "first Ping: %s", e.msg);
	printf("cold boot to first agent answer: %.2f s\n", (double)(vmf_now_ms() - t0) / 1000);

	Vmf__Agent__AgentReply *r1;
	Vmf__Agent__GuestInfo *g = guest_info(a, &r1);
	ck_assert_uint_eq(g->online_cpus, 1);
	uint64_t mem0 = g->mem_total_kib;
	vmf__agent__agent_reply__free_unpacked(r1, NULL);

	/* Hot-add 1 vCPU and 256 MiB; the agent onlines them. */
	ck_assert_msg(vmf_qemu_ops.hotplug_vcpus(vm, 2, &e) == 0, "cpu hot-add: %s", e.msg);
	ck_assert_msg(vmf_qemu_ops.hotplug_memory(vm, 256, &e) == 0, "memory hot-add: %s", e.msg);
	uint32_t cpus = 0;
	uint64_t kib = 0;
	/* The agent waits in the guest until the hot-added devices arrive. */
	ck_assert_msg(vmf_agent_online(a, 2, 512, &cpus, &kib, 30000, &e) == 0, "online: %s", e.msg);
	Vmf__Agent__AgentReply *r2;
	g = guest_info(a, &r2);
	printf("after hot-add: %u CPUs, MemTotal %llu KiB (was %llu)\n", g->online_cpus,
	       (unsigned long long)g->mem_total_kib, (unsigned long long)mem0);
	ck_assert_uint_eq(g->online_cpus, 2);
	ck_assert_uint_ge(g->mem_total_kib, mem0 + 200 * 1024);
	vmf__agent__agent_reply__free_unpacked(r2, NULL);

	/* Paused, the guest's clock does not run. */
	Vmf__Agent__AgentReply *r3;
	g = guest_info(a, &r3);
	uint64_t up_before = g->uptime_ns;
	vmf__agent__agent_reply__free_unpacked(r3, NULL);
	int64_t host_before = vmf_monotonic_ns();
	ck_assert_msg(vmf_qemu_ops.pause(vm, &e) == 0, "pause: %s", e.msg);
	/* The pause length is the quantity under test, not a wait for a condition. */
	poll(NULL, 0, 1500);
	ck_assert_msg(vmf_qemu_ops.resume(vm, &e) == 0, "resume: %s", e.msg);
	Vmf__Agent__AgentReply *r4;
	g = guest_info(a, &r4);
	int64_t host_elapsed = vmf_monotonic_ns() - host_before;
	int64_t guest_elapsed = (int64_t)(g->uptime_ns - up_before);
	printf("host %.2f s vs guest %.2f s across a 1.5 s pause\n", host_elapsed / 1e9, guest_elapsed / 1e9);
	ck_assert_int_lt(guest_elapsed, host_elapsed - 1000000000LL);
	vmf__agent__agent_reply__free_unpacked(r4, NULL);

	/* SetTime: push the guest clock an hour back, then set it to the host's. */
	int64_t guest_ns = 0;
	ck_assert_msg(vmf_agent_set_time(a, vmf_realtime_ns() - 3600LL * 1000000000, &guest_ns, 10000, &e) == 0,
		      "SetTime: %s", e.msg);
	ck_assert_int_gt(llabs(guest_ns - vmf_realtime_ns()), 3000LL * 1000000000);
	ck_assert_msg(vmf_agent_set_time(a, vmf_realtime_ns(), &guest_ns, 10000, &e) == 0, "SetTime: %s", e.msg);
	Vmf__Agent__AgentReply *r5;
	g = guest_info(a, &r5);
	int64_t skew = g->realtime_ns - vmf_realtime_ns();
	printf("guest clock skew after SetTime: %lld ms\n", (long long)(skew / 1000000));
	ck_assert_int_lt(llabs(skew), 1000000000LL);
	vmf__agent__agent_reply__free_unpacked(r5, NULL);
	vmf_agent_free(a);

	ck_assert_int_eq(vmf_qemu_ops.stop(vm, 10000, &e), 0);
	ck_assert(!vmf_qemu_ops.alive(vm));
	ck_assert_int_ne(kill(pid, 0) == 0 && vmf_proc_alive(pid, 0), 1);
	vmf_qemu_ops.release(vm);
}
END_TEST

START_TEST(kill9_is_reported_dead)
{
	char run[512];
	vmf_vm_config c = config("kill", run, sizeof run);
	struct vmf_vmm *vm = NULL;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_qemu_ops.boot(&c, &vm, &e) == 0, "boot: %s", e.msg);
	ck_assert(vmf_qemu_ops.alive(vm));
	ck_assert_int_eq(kill(vmf_qemu_ops.pid(vm), SIGKILL), 0);
	ck_assert_msg(wait_dead(vm, 5000), "QEMU killed with SIGKILL still reported alive");
	/* Stop on a dead VM is harmless. */
	ck_assert_int_eq(vmf_qemu_ops.stop(vm, 1000, &e), 0);
	vmf_qemu_ops.release(vm);
}
END_TEST

START_TEST(bad_kernel_and_bad_binary_fail_clearly)
{
	char run[512];
	vmf_vm_config c = config("bad", run, sizeof run);
	struct vmf_vmm *vm = NULL;
	struct vmf_error e = {0};
	c.kernel = "/nonexistent/vmlinuz";
	ck_assert_int_lt(vmf_qemu_ops.boot(&c, &vm, &e), 0);
	ck_assert_ptr_null(vm);
	ck_assert_msg(strstr(e.msg, "/nonexistent/vmlinuz") != NULL, "message: %s", e.msg);

	/* A kernel QEMU cannot load: the error quotes QEMU's own complaint. */
	c = config("bad2", run, sizeof run);
	char junk[600];
	snprintf(junk, sizeof junk, "%s/junk-kernel", tmp);
	ck_assert_int_eq(vmf_write_file_atomic(junk, "not a kernel", 12, 0600, &e), 0);
	c.kernel = junk;
	int r = vmf_qemu_ops.boot(&c, &vm, &e);
	if (r == 0) {
		/* Some QEMU versions accept the file and the guest dies instead. */
		ck_assert(wait_dead(vm, 30000) || vmf_qemu_ops.stop(vm, 1000, &e) == 0);
		vmf_qemu_ops.release(vm);
	} else {
		ck_assert_msg(strstr(e.msg, "QEMU") != NULL, "message: %s", e.msg);
		printf("bad kernel: %s\n", e.msg);
	}

	c = config("bad3", run, sizeof run);
	c.binary = "/nonexistent/qemu";
	ck_assert_int_lt(vmf_qemu_ops.boot(&c, &vm, &e), 0);
	printf("bad binary: %s\n", e.msg);
	ck_assert_msg(strstr(e.msg, "exited during start-up") != NULL, "message: %s", e.msg);
	ck_assert_msg(strstr(e.msg, "cannot execute") != NULL, "message: %s", e.msg);
}
END_TEST

START_TEST(probe_reports_version_and_accel)
{
	struct vmf_hv_info info;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_qemu_ops.probe(NULL, NULL, NULL, &info, &e) == 0, "probe: %s", e.msg);
	ck_assert_str_ne(info.version, "");
	ck_assert(strcmp(info.accel, "tcg") == 0 || strcmp(info.accel, "kvm") == 0);
	printf("QEMU %s, accel %s\n", info.version, info.accel);
	ck_assert_int_lt(vmf_qemu_ops.probe("/nonexistent/qemu", NULL, NULL, &info, &e), 0);
	ck_assert_ptr_nonnull(strstr(e.msg, "/nonexistent/qemu"));
}
END_TEST

/* The lines a wrapper QEMU wrote to its log: one per KVM probe run. */
static int
probe_runs(const char *log)
{
	char *buf = NULL;
	size_t len = 0;
	struct vmf_error e;
	if (vmf_read_file(log, &buf, &len, 1 << 16, &e) < 0)
		return 0;
	int n = 0;
	for (size_t i = 0; i < len; i++)
		n += buf[i] == '\n';
	free(buf);
	return n;
}

/* A QEMU binary at path that counts the KVM probes run through it. */
static void
make_wrapper(const char *path, const char *log)
{
	char script[1024];
	snprintf(script, sizeof script,
		 "#!/bin/sh\ncase \" $* \" in *\" -accel kvm \"*) echo probe >> '%s';; esac\n"
		 "exec qemu-system-x86_64 \"$@\"\n", log);
	struct vmf_error e;
	ck_assert_msg(vmf_write_file_atomic(path, script, strlen(script), 0755, &e) == 0, "%s", e.msg);
}

/* The accelerator probe's answer is kept in the state dir per QEMU binary:
 * the same binary again is not probed, another one is, and a file that is
 * not a cache entry is probed over. */
START_TEST(probe_is_kept_per_binary)
{
	unsetenv("VMFACTORY_ACCEL");
	char state[600], log[600], w1[600], w2[600], cache[700];
	snprintf(state, sizeof state, "%s/state", tmp);
	snprintf(log, sizeof log, "%s/probes.log", tmp);
	snprintf(w1, sizeof w1, "%s/qemu-a", tmp);
	snprintf(w2, sizeof w2, "%s/qemu-b", tmp);
	snprintf(cache, sizeof cache, "%s/accel-probe", state);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_mkdir_p(state, 0700, &e), 0);
	make_wrapper(w1, log);
	make_wrapper(w2, log);
	/* Where /dev/kvm does not open, the probe runs no QEMU: the kept
	 * answer is still checked, the runs are not counted. */
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	bool counted = kvm >= 0;
	if (kvm >= 0)
		close(kvm);
	struct vmf_hv_info info;
	ck_assert_msg(vmf_qemu_ops.probe(w1, kernel, state, &info, &e) == 0, "probe: %s", e.msg);
	int runs = probe_runs(log);
	printf("first probe: %s (%s), %d KVM runs\n", info.accel, info.accel_why, runs);
	ck_assert(!info.accel_cached);
	ck_assert_str_ne(info.accel_why, "");
	ck_assert(!counted || runs > 0);
	ck_assert_int_eq(access(cache, R_OK), 0);
	char first[8];
	snprintf(first, sizeof first, "%s", info.accel);

	ck_assert_msg(vmf_qemu_ops.probe(w1, kernel, state, &info, &e) == 0, "probe: %s", e.msg);
	ck_assert_msg(info.accel_cached, "same binary probed again: %s", info.accel_why);
	ck_assert_int_eq(probe_runs(log), runs);
	ck_assert_str_eq(info.accel, first);

	ck_assert_msg(vmf_qemu_ops.probe(w2, kernel, state, &info, &e) == 0, "probe: %s", e.msg);
	ck_assert_msg(!info.accel_cached, "another binary took the first one's answer");
	ck_assert(!counted || probe_runs(log) > runs);
	runs = probe_runs(log);
	ck_assert_msg(vmf_qemu_ops.probe(w2, kernel, state, &info, &e) == 0, "probe: %s", e.msg);
	ck_assert(info.accel_cached);
	ck_assert_int_eq(probe_runs(log), runs);

	/* This key's entry with an answer the code never writes: probed over. */
	char *kept = NULL, entry[8192];
	size_t len;
	ck_assert_int_eq(vmf_read_file(cache, &kept, &len, sizeof entry / 2, &e), 0);
	char *answer = strstr(kept, "\naccel ");
	ck_assert_ptr_nonnull(answer);
	int n = snprintf(entry, sizeof entry, "%.*saccel kvm\ncpu -\nwhy \x1b[2J\n", (int)(answer + 1 - kept), kept);
	free(kept);
	ck_assert_int_eq(vmf_write_file_atomic(cache, entry, (size_t)n, 0644, &e), 0);
	ck_assert_msg(vmf_qemu_ops.probe(w2, kernel, state, &info, &e) == 0, "probe: %s", e.msg);
	ck_assert_msg(!info.accel_cached, "an entry with an unknown answer was taken: %s %s", info.accel,
		      info.accel_why);
	ck_assert(!counted || probe_runs(log) > runs);
	ck_assert_str_eq(info.accel, first);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("qemu");
	TCase *tc = tcase_create("lifecycle");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, probe_reports_version_and_accel);
	tcase_add_test(tc, probe_is_kept_per_binary);
	tcase_add_test(tc, bad_kernel_and_bad_binary_fail_clearly);
	tcase_add_test(tc, kill9_is_reported_dead);
	tcase_add_test(tc, cold_boot_hotplug_pause_time_stop);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
