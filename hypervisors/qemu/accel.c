/* Which accelerator QEMU runs a guest with here, and with which -cpu
 * model: a probe boots the guest kernel under KVM before trusting it. */
#include "qemu_vm.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "util.h"
#include "vmm_proc.h"

/* KVM CPU models, best first.  Nested KVM (a VM host that exposes
 * /dev/kvm) can refuse MSRs that -cpu host asks for: QEMU 7.2 then aborts
 * with "failed to set MSR 0x10a" (IA32_ARCH_CAPABILITIES), seen on these
 * machines.  Without that MSR the guest merely assumes it needs every
 * speculation mitigation. */
static const char *const kvm_cpu_models[] = { "host", "host,-arch-capabilities" };

static struct {
	pthread_mutex_t lock;
	bool probed;
	const char *accel;
	const char *cpu;
} accel_probe = { PTHREAD_MUTEX_INITIALIZER, false, "tcg", NULL };

/* Whether QEMU really runs a guest with KVM and this CPU model.  Opening
 * /dev/kvm proves little: on these machines a nested /dev/kvm runs
 * SeaBIOS and the kernel's 16-bit setup, then hangs entering long mode.  So
 * the probe boots the guest kernel until it prints its banner (a working
 * KVM gets there in well under a second); without a kernel it only checks
 * that a vCPU starts. */
static bool
kvm_runs(const char *cpu, const char *kernel)
{
	int out[2];
	if (pipe2(out, O_CLOEXEC) < 0)
		return false;
	char *argv[32];
	int n = 0;
	argv[n++] = (char *)VMF_QEMU_DEFAULT_BINARY;
	const char *common[] = { "-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35",
				 "-accel", "kvm", "-m", "128", "-cpu", cpu, "-no-reboot" };
	for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++)
		argv[n++] = (char *)common[i];
	if (kernel && *kernel) {
		argv[n++] = "-kernel";
		argv[n++] = (char *)kernel;
		argv[n++] = "-append";
		argv[n++] = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1";
		argv[n++] = "-serial";
		argv[n++] = "stdio";
	} else {
		/* SeaBIOS's banner on its debug port. */
		argv[n++] = "-chardev";
		argv[n++] = "stdio,id=dbg";
		argv[n++] = "-device";
		argv[n++] = "isa-debugcon,iobase=0x402,chardev=dbg";
	}
	argv[n] = NULL;
	/* A probe QEMU on a KVM that hangs runs forever: it must not outlive us
	 * if we are killed while we wait for it. */
	struct vmf_vmm_spawn s = { .argv = argv, .out_fd = out[1], .die_with_parent = true };
	struct vmf_vmm_proc p;
	int spawned = vmf_vmm_spawn(&s, &p, NULL);
	close(out[1]);
	if (spawned < 0) {
		close(out[0]);
		return false;
	}
	const char *want = kernel && *kernel ? "Linux version" : "SeaBIOS";
	char buf[8192];
	size_t len = 0;
	bool ok = false;
	int64_t deadline = vmf_now_ms() + 3000;
	while (!ok && len < sizeof(buf) - 1) {
		int64_t left = deadline - vmf_now_ms();
		struct pollfd pfd = { .fd = out[0], .events = POLLIN };
		if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
			break;
		ssize_t r = read(out[0], buf + len, sizeof(buf) - 1 - len);
		if (r <= 0)
			break;
		len += (size_t)r;
		buf[len] = '\0';
		ok = strstr(buf, want) != NULL;
	}
	close(out[0]);
	vmf_vmm_kill(&p, "KVM probe QEMU", NULL);
	vmf_vmm_close(&p);
	return ok;
}

static void
probe_accel(const char *kernel)
{
	const char *forced = getenv("VMFACTORY_ACCEL");
	if (forced && strcmp(forced, "tcg") == 0)
		return;
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return;
	close(fd);
	for (size_t i = 0; i < sizeof(kvm_cpu_models) / sizeof(kvm_cpu_models[0]); i++) {
		if (kvm_runs(kvm_cpu_models[i], kernel)) {
			accel_probe.accel = "kvm";
			accel_probe.cpu = kvm_cpu_models[i];
			if (i > 0)
				log_info("KVM runs the guest with -cpu %s (not with -cpu host)", kvm_cpu_models[i]);
			return;
		}
	}
	log_warn("/dev/kvm is present but QEMU cannot boot a guest with it; using tcg");
}

/* "kvm" when QEMU boots a guest with /dev/kvm, else "tcg".  Probed once per
 * process, on the first kernel asked about (ops->probe passes the daemon's),
 * else $VMFACTORY_IMAGE_DIR/vmlinuz.  VMFACTORY_ACCEL=tcg skips KVM. */
const char *
qemu_accel_for(const char *kernel)
{
	pthread_mutex_lock(&accel_probe.lock);
	if (!accel_probe.probed) {
		char img[PATH_MAX] = "";
		const char *dir = getenv("VMFACTORY_IMAGE_DIR");
		if ((!kernel || !*kernel) && dir && *dir) {
			snprintf(img, sizeof(img), "%s/vmlinuz", dir);
			kernel = access(img, R_OK) == 0 ? img : NULL;
		}
		probe_accel(kernel);
		accel_probe.probed = true;
	}
	const char *a = accel_probe.accel;
	pthread_mutex_unlock(&accel_probe.lock);
	return a;
}

/* The -cpu model that the probe found working with KVM. */
const char *
qemu_kvm_cpu(void)
{
	qemu_accel_for(NULL);
	return accel_probe.cpu ? accel_probe.cpu : "host";
}
