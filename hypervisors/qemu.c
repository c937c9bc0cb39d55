/* QEMU driver: command line, process lifecycle, and the QMP commands behind
 * each driver op.  The QMP transport itself is qmp.c; spawning, waiting for
 * and killing the process, vmm_proc.c. */
#include "qemu.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "qmp.h"
#include "sockaddr.h"
#include "util.h"
#include "vmm_proc.h"

#define QMP_TIMEOUT_MS 10000
/* A TCG QEMU on a loaded 2-core host can take seconds to reach its main loop. */
#define START_TIMEOUT_MS 30000
#define MIGRATE_TIMEOUT_MS 120000
#define STATE_SCHEMA_VERSION 1

struct vmf_vmm {
	vmf_vm_config *cfg;
	struct vmf_vmm_proc proc;
	struct vmf_qmp *qmp;
	char qmp_path[PATH_MAX];      /* the daemon's monitor */
	char mon_path[PATH_MAX];      /* the sandbox's monitor */
	char agent_path[PATH_MAX];
	char vmf_agent_path[PATH_MAX];
	char serial_log[PATH_MAX];
	char stderr_log[PATH_MAX];
	unsigned vcpus;
	unsigned memory_mib;         /* base + hot-added */
	unsigned dimms;
	bool paused;
	/* What was hot-added, in order, for a QEMU that loads its saved state
	 * (vmf_qemu_append_hotplugged): each vCPU's -device value, each DIMM's
	 * MiB. */
	char **cpu_devs;
	size_t n_cpu_devs;
	uint32_t *dimm_mib;
	size_t n_dimm_mib;
};

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
static const char *
accel_for(const char *kernel)
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
static const char *
kvm_cpu(void)
{
	accel_for(NULL);
	return accel_probe.cpu ? accel_probe.cpu : "host";
}

/* ---- command line as data ---- */

struct argv_buf {
	char **v;
	size_t n, cap;
	bool oom;
};

static void
arg(struct argv_buf *a, const char *fmt, ...)
{
	if (a->oom)
		return;
	if (a->n + 2 > a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		char **nv = realloc(a->v, cap * sizeof(*nv));
		if (!nv) {
			a->oom = true;
			return;
		}
		a->v = nv;
		a->cap = cap;
	}
	va_list ap;
	va_start(ap, fmt);
	int r = vasprintf(&a->v[a->n], fmt, ap);
	va_end(ap);
	if (r < 0) {
		a->oom = true;
		return;
	}
	a->v[++a->n] = NULL;
}

void
vmf_qemu_free_argv(char **argv)
{
	if (!argv)
		return;
	for (char **p = argv; *p; p++)
		free(*p);
	free(argv);
}

/* QEMU option values are comma-separated: a comma in a path must be doubled. */
static int
check_optval(const char *what, const char *v, struct vmf_error *err)
{
	if (strchr(v, ','))
		return vmf_err(err, EINVAL, "%s '%s' contains a comma, which QEMU options cannot carry", what, v);
	if (v[0] != '/')
		return vmf_err(err, EINVAL, "%s '%s' is not an absolute path", what, v);
	return 0;
}

/* Disks: q35's root bus takes no PCI hot-plug, so the template carries a
 * virtio-scsi controller and a disk is a scsi-hd hot-plugged onto its bus
 * (vmfactory attach): SCSI hot-plug needs no PCI slot, and its unplug no
 * guest cooperation.  Before the 9p share, which only clones have: the
 * PCI addresses of template and clone must match. */
static void
append_disk_devices(struct argv_buf *a)
{
	arg(a, "-device");
	arg(a, "virtio-scsi-pci,id=" VMF_QEMU_SCSI_BUS);
}

/* The network block (issue 16): a virtio-net NIC whose backend is a port of
 * hub 0.  The hub is no device state, so the template and every clone have
 * the NIC, probed once at the template's boot, and a hand-out only plugs a
 * backend (tap or user-mode) into the hub with netdev_add: no PCI hot-plug,
 * no guest driver probe on the hand-out path (qemu_net_attach). */
static void
append_nic(struct argv_buf *a, const vmf_vm_config *cfg)
{
	if (!cfg->nic)
		return;
	arg(a, "-netdev");
	arg(a, "hubport,id=" VMF_QEMU_NIC_HUBPORT ",hubid=0");
	arg(a, "-device");
	arg(a, "virtio-net-pci,id=nic0,netdev=" VMF_QEMU_NIC_HUBPORT);
}

/* What a VM hot-added, on the command line of a VMM that must start with
 * it: the receiving side of a snapshot (share=on, the new template's files)
 * and a snapshot template's clones (share=off).  Ids, CPU slots and DIMM
 * addresses are the ones qemu_hotplug_vcpus and qemu_hotplug_memory give,
 * in the same order, so the migrated device state finds its devices. */
void
vmf_qemu_append_hotplugged(struct argv_buf *a, const vmf_vm_config *cfg, const char *accel)
{
	/* -smp N,maxcpus=M on q35 7.2: one socket, a core per vCPU. */
	const char *type = strcmp(accel, "kvm") == 0 ? "host-x86_64-cpu" : "qemu64-x86_64-cpu";
	for (unsigned k = cfg->vcpus; k < cfg->vcpus + cfg->hotplugged_vcpus; k++) {
		arg(a, "-device");
		arg(a, "%s,id=vcpu%u,socket-id=0,core-id=%u,thread-id=0", type, k, k);
	}
	const char *share = cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_TEMPLATE ? "on" : "off";
	for (size_t i = 0; i < cfg->n_dimms; i++) {
		const Vmf__Hv__HotDimm *dm = cfg->dimms[i];
		arg(a, "-object");
		if (dm->mem_path && *dm->mem_path)
			arg(a, "memory-backend-file,id=hotmem%zu,size=%uM,mem-path=%s,share=%s", i, dm->size_mib,
			    dm->mem_path, share);
		else
			arg(a, "memory-backend-ram,id=hotmem%zu,size=%uM", i, dm->size_mib);
		arg(a, "-device");
		if (dm->addr)
			arg(a, "pc-dimm,id=dimm%zu,memdev=hotmem%zu,addr=%llu", i, i, (unsigned long long)dm->addr);
		else
			arg(a, "pc-dimm,id=dimm%zu,memdev=hotmem%zu", i, i);
	}
}

int
vmf_qemu_build_argv(const vmf_vm_config *cfg, const struct vmf_qemu_fds *fds, char ***out,
		    struct vmf_error *err)
{
	*out = NULL;
	if (!cfg->id || !*cfg->id || !cfg->run_dir || !*cfg->run_dir)
		return vmf_err(err, EINVAL, "VM config lacks an id or run dir");
	if (!cfg->kernel || !*cfg->kernel)
		return vmf_err(err, EINVAL, "VM %s: no kernel configured", cfg->id);
	if (cfg->vcpus == 0 || cfg->memory_mib == 0)
		return vmf_err(err, EINVAL, "VM %s: vcpus and memory must be non-zero", cfg->id);
	unsigned maxcpus = cfg->max_vcpus > cfg->vcpus ? cfg->max_vcpus : cfg->vcpus;
	unsigned maxmem = cfg->max_memory_mib > cfg->memory_mib ? cfg->max_memory_mib : cfg->memory_mib;
	int r;
	if ((r = check_optval("kernel path", cfg->kernel, err)) < 0 ||
	    (cfg->initrd && *cfg->initrd && (r = check_optval("initrd path", cfg->initrd, err)) < 0) ||
	    (r = check_optval("run dir", cfg->run_dir, err)) < 0 ||
	    (cfg->share_dir && *cfg->share_dir && (r = check_optval("share dir", cfg->share_dir, err)) < 0))
		return r;
	bool file_mem = cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_TEMPLATE ||
			cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_CLONE_COW;
	if (file_mem && (!cfg->memory_file || (r = check_optval("memory file", cfg->memory_file, err)) < 0))
		return r < 0 ? r : vmf_err(err, EINVAL, "VM %s: memory mode needs a memory file", cfg->id);

	for (size_t i = 0; i < cfg->n_dimms; i++)
		if (cfg->dimms[i]->mem_path && *cfg->dimms[i]->mem_path &&
		    (r = check_optval("DIMM memory file", cfg->dimms[i]->mem_path, err)) < 0)
			return r;
	struct argv_buf a = {0};
	const char *accel = cfg->accel && *cfg->accel ? cfg->accel : accel_for(cfg->kernel);
	arg(&a, "%s", cfg->binary && *cfg->binary ? cfg->binary : VMF_QEMU_DEFAULT_BINARY);
	/* -name is how restart recovery recognises our processes. */
	arg(&a, "-name");
	arg(&a, "%s", cfg->name && *cfg->name ? cfg->name : cfg->id);
	arg(&a, "-nodefaults");
	arg(&a, "-no-user-config");
	arg(&a, "-display");
	arg(&a, "none");
	bool runas = cfg->runas && *cfg->runas;
	arg(&a, "-sandbox");
	arg(&a, runas ? VMF_QEMU_SANDBOX_RUNAS : VMF_QEMU_SANDBOX);
	arg(&a, "-machine");
	arg(&a, "%s,memory-backend=mem0", cfg->machine && *cfg->machine ? cfg->machine : "q35");
	arg(&a, "-accel");
	arg(&a, "%s", accel);
	if (strcmp(accel, "kvm") == 0) {
		arg(&a, "-cpu");
		arg(&a, "%s", kvm_cpu());
	}
	/* A guest reset (a reboot, or a panic under the guest's panic=-1) and
	 * a panic the guest reports through pvpanic: QEMU exits (stop), so the
	 * daemon sees the VM end with the reason in its last event, and no
	 * part of the VM runs on; or the guest reboots in place (keep) and the
	 * daemon sees the RESET event. */
	bool keep = cfg->on_guest_reset && strcmp(cfg->on_guest_reset, "keep") == 0;
	arg(&a, "-action");
	arg(&a, keep ? "reboot=reset,panic=none" : "reboot=shutdown,panic=shutdown");
	arg(&a, "-smp");
	arg(&a, "%u,maxcpus=%u", cfg->vcpus, maxcpus);
	arg(&a, "-m");
	if (maxmem > cfg->memory_mib)
		arg(&a, "%uM,slots=%u,maxmem=%uM", cfg->memory_mib,
		    cfg->memory_slots ? cfg->memory_slots : 8, maxmem);
	else
		arg(&a, "%uM", cfg->memory_mib);
	/* Template and clones map the same file: share=on while building so the
	 * file is the RAM, share=off in clones so their writes stay private. */
	arg(&a, "-object");
	if (file_mem)
		arg(&a, "memory-backend-file,id=mem0,size=%uM,mem-path=%s,share=%s", cfg->memory_mib,
		    cfg->memory_file,
		    cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_TEMPLATE ? "on" : "off");
	else
		arg(&a, "memory-backend-ram,id=mem0,size=%uM", cfg->memory_mib);
	arg(&a, "-kernel");
	arg(&a, "%s", cfg->kernel);
	if (cfg->initrd && *cfg->initrd) {
		arg(&a, "-initrd");
		arg(&a, "%s", cfg->initrd);
	}
	arg(&a, "-append");
	arg(&a, "%s", cfg->cmdline && *cfg->cmdline ? cfg->cmdline : "console=ttyS0 panic=-1");
	/* QEMU inherits listening sockets we created: we can connect before QEMU
	 * runs, with no window where the socket file does not exist yet. */
	arg(&a, "-chardev");
	arg(&a, "socket,id=qmp,fd=%d,server=on,wait=off", fds->qmp);
	arg(&a, "-mon");
	arg(&a, "chardev=qmp,mode=control");
	/* QEMU serves one client per monitor: the sandbox's runtime gets its
	 * own, so the daemon keeps stopping and inspecting the VM while the
	 * runtime is connected.  A monitor is no migrated device state, so
	 * clones of a template built without it get one too. */
	if (fds->mon >= 0) {
		arg(&a, "-chardev");
		arg(&a, "socket,id=mon1,fd=%d,server=on,wait=off", fds->mon);
		arg(&a, "-mon");
		arg(&a, "chardev=mon1,mode=control");
	}
	arg(&a, "-chardev");
	arg(&a, "file,id=serial0,path=%s/%s", cfg->run_dir, VMF_QEMU_SERIAL_LOG);
	arg(&a, "-serial");
	arg(&a, "chardev:serial0");
	/* Device order fixes PCI addresses: template and clone must match. */
	arg(&a, "-device");
	arg(&a, "virtio-serial-pci,id=vser0");
	arg(&a, "-chardev");
	arg(&a, "socket,id=agent,fd=%d,server=on,wait=off", fds->agent);
	arg(&a, "-device");
	arg(&a, "virtserialport,bus=vser0.0,chardev=agent,name=agent,id=" VMF_QEMU_AGENT_PORT);
	arg(&a, "-chardev");
	arg(&a, "socket,id=vmf,fd=%d,server=on,wait=off", fds->vmf_agent);
	arg(&a, "-device");
	arg(&a, "virtserialport,bus=vser0.0,chardev=vmf,name=vmf");
	arg(&a, "-object");
	arg(&a, "rng-random,id=rng0,filename=/dev/urandom");
	arg(&a, "-device");
	arg(&a, "virtio-rng-pci,rng=rng0");
	arg(&a, "-device");
	arg(&a, "vmgenid,id=vmgenid0,guid=%s", cfg->vmgenid && *cfg->vmgenid ? cfg->vmgenid : "auto");
	/* An ISA device (no PCI address): the guest's pvpanic driver reports
	 * a kernel panic through it (GUEST_PANICKED). */
	arg(&a, "-device");
	arg(&a, "pvpanic");
	append_disk_devices(&a);
	append_nic(&a, cfg);
	if (cfg->share_dir && *cfg->share_dir) {
		arg(&a, "-fsdev");
		arg(&a, "local,id=fs0,path=%s,security_model=none", cfg->share_dir);
		arg(&a, "-device");
		arg(&a, "virtio-9p-pci,id=share0,fsdev=fs0,mount_tag=" VMF_SHARE_TAG);
	}
	vmf_qemu_append_hotplugged(&a, cfg, accel);
	if (cfg->incoming) {
		/* -S keeps the clone paused after the state is loaded. */
		arg(&a, "-S");
		arg(&a, "-incoming");
		arg(&a, "defer");
	}
	if (runas) {
		/* QEMU opens its files (memory, serial log) as us, then drops to
		 * this user before the guest runs; the 9p share must be the
		 * user's own (the template code chowns it). */
		arg(&a, "-runas");
		arg(&a, "%s", cfg->runas);
	}
	if (a.oom) {
		vmf_qemu_free_argv(a.v);
		return vmf_err(err, ENOMEM, "out of memory building the QEMU command line");
	}
	*out = a.v;
	return 0;
}

/* ---- process handling ---- */

static int
listen_unix(const char *path, struct vmf_error *err)
{
	struct sockaddr_un sa;
	int r = vmf_unix_addr(&sa, NULL, path, err);
	if (r < 0)
		return r;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create socket %s", path);
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
		int e = errno;
		close(fd);
		return vmf_err_sys(err, e, "cannot listen on %s", path);
	}
	/* Only the daemon's user may talk to QEMU's monitor or the agent. */
	chmod(path, 0600);
	return fd;
}

/* Appends QEMU's stderr and the serial log tails: the usual reason a VM did
 * not come up is in one of them. */
static void
append_logs(struct vmf_vmm *vm, struct vmf_error *err)
{
	char tail[400];
	vmf_file_tail(vm->stderr_log, tail, sizeof(tail));
	if (tail[0])
		vmf_error_append(err, "; QEMU stderr: %s", tail);
	vmf_file_tail(vm->serial_log, tail, sizeof(tail));
	if (tail[0])
		vmf_error_append(err, "; serial log: %s", tail);
}

static void
vm_free(struct vmf_vmm *vm)
{
	if (!vm)
		return;
	if (vm->qmp)
		vmf_qmp_close(vm->qmp);
	vmf_vmm_close(&vm->proc);
	vmf_vm_config_free(vm->cfg);
	for (size_t i = 0; i < vm->n_cpu_devs; i++)
		free(vm->cpu_devs[i]);
	free(vm->cpu_devs);
	free(vm->dimm_mib);
	free(vm);
}

/* Copies what q says was hot-added into the handle. */
static int
take_hotplugged(struct vmf_vmm *vm, const Vmf__Hv__QemuState *q, struct vmf_error *err)
{
	if (q->n_cpu_devices && !(vm->cpu_devs = calloc(q->n_cpu_devices, sizeof(char *))))
		return vmf_err(err, ENOMEM, "out of memory for VM %s's hot-added vCPUs", vm->cfg->id);
	for (size_t i = 0; i < q->n_cpu_devices; i++) {
		if (!(vm->cpu_devs[i] = strdup(q->cpu_devices[i])))
			return vmf_err(err, ENOMEM, "out of memory for VM %s's hot-added vCPUs", vm->cfg->id);
		vm->n_cpu_devs++;
	}
	if (q->n_dimm_mib && !(vm->dimm_mib = calloc(q->n_dimm_mib, sizeof(uint32_t))))
		return vmf_err(err, ENOMEM, "out of memory for VM %s's hot-added DIMMs", vm->cfg->id);
	for (size_t i = 0; i < q->n_dimm_mib; i++)
		vm->dimm_mib[vm->n_dimm_mib++] = q->dimm_mib[i];
	return 0;
}

static struct vmf_vmm *
vm_new(const vmf_vm_config *cfg, struct vmf_error *err)
{
	struct vmf_vmm *vm = calloc(1, sizeof(*vm));
	if (!vm || !(vm->cfg = vmf_vm_config_dup(cfg))) {
		free(vm);
		vmf_err(err, ENOMEM, "out of memory for a VM handle");
		return NULL;
	}
	vm->proc.pidfd = -1;
	snprintf(vm->qmp_path, sizeof(vm->qmp_path), "%s/%s", cfg->run_dir, VMF_QEMU_DAEMON_QMP_SOCK);
	snprintf(vm->mon_path, sizeof(vm->mon_path), "%s/%s", cfg->run_dir, VMF_QEMU_QMP_SOCK);
	snprintf(vm->agent_path, sizeof(vm->agent_path), "%s/%s", cfg->run_dir, VMF_QEMU_AGENT_SOCK);
	snprintf(vm->vmf_agent_path, sizeof(vm->vmf_agent_path), "%s/%s", cfg->run_dir, VMF_QEMU_DAEMON_AGENT_SOCK);
	snprintf(vm->serial_log, sizeof(vm->serial_log), "%s/%s", cfg->run_dir, VMF_QEMU_SERIAL_LOG);
	snprintf(vm->stderr_log, sizeof(vm->stderr_log), "%s/%s", cfg->run_dir, VMF_QEMU_STDERR_LOG);
	vm->vcpus = cfg->vcpus + cfg->hotplugged_vcpus;
	vm->memory_mib = cfg->memory_mib;
	for (size_t i = 0; i < cfg->n_dimms; i++)
		vm->memory_mib += cfg->dimms[i]->size_mib;
	vm->dimms = (unsigned)cfg->n_dimms;
	return vm;
}

int
vmf_qemu_on_qmp(const vmf_vm_config *cfg, struct vmf_qmp *qmp, struct vmf_vmm **out, struct vmf_error *err)
{
	*out = vm_new(cfg, err);
	if (!*out)
		return -ENOMEM;
	(*out)->qmp = qmp;
	return 0;
}

static int
spawn(struct vmf_vmm *vm, struct vmf_error *err)
{
	const vmf_vm_config *cfg = vm->cfg;
	struct stat st;
	if (stat(cfg->kernel, &st) < 0)
		return vmf_err_sys(err, errno, "kernel %s cannot be used", cfg->kernel);
	if (cfg->initrd && *cfg->initrd && stat(cfg->initrd, &st) < 0)
		return vmf_err_sys(err, errno, "initrd %s cannot be used", cfg->initrd);
	if (vmf_mkdir_p(cfg->run_dir, 0700, err) < 0)
		return -err->code;
	int qmp_l = listen_unix(vm->qmp_path, err);
	if (qmp_l < 0)
		return qmp_l;
	int mon_l = listen_unix(vm->mon_path, err);
	int agent_l = mon_l < 0 ? mon_l : listen_unix(vm->agent_path, err);
	int vmf_l = agent_l < 0 ? agent_l : listen_unix(vm->vmf_agent_path, err);
	char **argv = NULL;
	int qmp_c = -1;
	const struct vmf_qemu_fds fds = { .qmp = qmp_l, .mon = mon_l, .agent = agent_l, .vmf_agent = vmf_l };
	/* A resume: what was hot-added after the VM started (on top of what
	 * its config already carries, a snapshot template's parts) must be on
	 * the command line too, as vmf_qemu_append_hotplugged writes it, with
	 * the ids the hot-adds gave (vcpuN and dimmN count on from the
	 * config's). */
	vmf_vm_config more;
	Vmf__Hv__HotDimm hot[VMF_SNAPSHOT_MAX_DIMMS], *hotp[VMF_SNAPSHOT_MAX_DIMMS];
	int r = vmf_l;
	if (r >= 0 && (vm->n_cpu_devs || vm->n_dimm_mib)) {
		if (cfg->n_dimms + vm->n_dimm_mib > VMF_SNAPSHOT_MAX_DIMMS)
			r = vmf_err(err, E2BIG, "VM %s has more than %d DIMMs", cfg->id, VMF_SNAPSHOT_MAX_DIMMS);
		more = *cfg;
		more.hotplugged_vcpus = cfg->hotplugged_vcpus + (uint32_t)vm->n_cpu_devs;
		size_t n = 0;
		for (size_t i = 0; r >= 0 && i < cfg->n_dimms; i++)
			hotp[n++] = cfg->dimms[i];
		for (size_t i = 0; r >= 0 && i < vm->n_dimm_mib; i++) {
			vmf__hv__hot_dimm__init(&hot[i]);
			hot[i].size_mib = vm->dimm_mib[i];
			hotp[n++] = &hot[i];
		}
		more.dimms = hotp;
		more.n_dimms = n;
		cfg = &more;
	}
	if (r >= 0)
		r = vmf_qemu_build_argv(cfg, &fds, &argv, err);
	cfg = vm->cfg;
	/* The QMP client connects before fork: the connection waits in the
	 * listen backlog until QEMU accepts it. */
	if (r == 0 && (qmp_c = vmf_vmm_connect_unix(vm->qmp_path, err)) < 0)
		r = qmp_c;
	if (r == 0 && vmf_log_get_level() <= VMF_LOG_DEBUG) {
		char line[4096] = "";
		for (char **p = argv; *p; p++) {
			strncat(line, *p, sizeof(line) - strlen(line) - 2);
			strncat(line, " ", sizeof(line) - strlen(line) - 1);
		}
		log_vm(VMF_LOG_DEBUG, cfg->id, "starting %s", line);
	}
	if (r == 0) {
		/* Besides stdio, QEMU inherits only its listening sockets. */
		const int keep[] = { qmp_l, mon_l, agent_l, vmf_l };
		struct vmf_vmm_spawn s = { .argv = argv, .log_dir = cfg->run_dir, .log_name = VMF_QEMU_STDERR_LOG,
					   .log_truncate = true, .keep_fds = keep, .n_keep = 4 };
		if ((r = vmf_vmm_spawn(&s, &vm->proc, err)) < 0)
			vmf_error_prefix(err, "QEMU for VM %s", cfg->id);
	}
	close(qmp_l);
	if (mon_l >= 0)
		close(mon_l);
	if (agent_l >= 0)
		close(agent_l);
	if (vmf_l >= 0)
		close(vmf_l);
	vmf_qemu_free_argv(argv);
	if (r < 0) {
		if (qmp_c >= 0)
			close(qmp_c);
		return r;
	}

	r = vmf_qmp_open_fd(qmp_c, START_TIMEOUT_MS, &vm->qmp, err);
	if (r < 0) {
		bool exited = vmf_vmm_wait_exit(&vm->proc, vmf_now_ms() + 200);
		vmf_error_prefix(err, "QEMU for VM %s %s", cfg->id,
				 exited ? "exited during start-up" : "did not answer on QMP");
		append_logs(vm, err);
		vmf_vmm_kill(&vm->proc, "QEMU", cfg->id);
		return r;
	}
	return 0;
}

static int
qmp_cmd(struct vmf_vmm *vm, const char *cmd, json_object *args, json_object **ret,
	struct vmf_error *err)
{
	if (!vm->qmp)
		return vmf_err(err, ENOTCONN, "VM %s has no QMP connection", vm->cfg->id);
	int r = vmf_qmp_command(vm->qmp, cmd, args, -1, ret, QMP_TIMEOUT_MS, err);
	if (r < 0) {
		vmf_error_prefix(err, "VM %s", vm->cfg->id);
		if (vmf_vmm_exited(&vm->proc))
			append_logs(vm, err);
	}
	return r;
}

static int
qemu_boot(const vmf_vm_config *cfg, struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	struct vmf_vmm *vm = vm_new(cfg, err);
	if (!vm)
		return -ENOMEM;
	int r = spawn(vm, err);
	if (r < 0) {
		vm_free(vm);
		return r;
	}
	vm->paused = cfg->incoming;
	log_vm(VMF_LOG_DEBUG, cfg->id, "QEMU pid %d started", (int)vm->proc.pid);
	*out = vm;
	return 0;
}

static int
set_capability(struct vmf_vmm *vm, const char *cap, bool on, struct vmf_error *err)
{
	json_object *caps = json_object_new_array();
	json_object *c = json_object_new_object();
	json_object_object_add(c, "capability", json_object_new_string(cap));
	json_object_object_add(c, "state", json_object_new_boolean(on));
	json_object_array_add(caps, c);
	json_object *args = json_object_new_object();
	json_object_object_add(args, "capabilities", caps);
	int r = qmp_cmd(vm, "migrate-set-capabilities", args, NULL, err);
	json_object_put(args);
	return r;
}

/* A string member of a QMP reply, "" when it is missing or no string (a
 * JSON null among them): what QEMU sends is checked before it is used. */
static const char *
member_str(json_object *o, const char *key)
{
	json_object *v;
	return json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, key, &v) &&
	       json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
}

/* x-ignore-shared is experimental: probe for it rather than assume it. */
static int
has_capability(struct vmf_vmm *vm, const char *cap, struct vmf_error *err)
{
	json_object *ret = NULL;
	int r = qmp_cmd(vm, "query-migrate-capabilities", NULL, &ret, err);
	if (r < 0)
		return r;
	int found = 0;
	size_t n = json_object_is_type(ret, json_type_array) ? json_object_array_length(ret) : 0;
	for (size_t i = 0; i < n; i++)
		if (strcmp(member_str(json_object_array_get_idx(ret, i), "capability"), cap) == 0)
			found = 1;
	json_object_put(ret);
	return found;
}

static int
pass_fd(struct vmf_vmm *vm, const char *name, int fd, struct vmf_error *err)
{
	json_object *args = json_object_new_object();
	json_object_object_add(args, "fdname", json_object_new_string(name));
	int r = vmf_qmp_command(vm->qmp, "getfd", args, fd, NULL, QMP_TIMEOUT_MS, err);
	json_object_put(args);
	if (r < 0)
		vmf_error_prefix(err, "VM %s: passing QEMU the file descriptor %s", vm->cfg->id, name);
	return r;
}

/* QEMU sends MIGRATION "completed" before its main loop leaves the
 * finish-migrate (source) or inmigrate (destination) run state, and a
 * `cont` in between fails ("Migration is not finalized yet"): wait for the
 * run state that follows. */
static int
wait_runstate_settled(struct vmf_vmm *vm, int64_t deadline, struct vmf_error *err)
{
	for (;;) {
		json_object *ret = NULL;
		int r = qmp_cmd(vm, "query-status", NULL, &ret, err);
		if (r < 0)
			return r;
		char s[32];
		snprintf(s, sizeof(s), "%s", member_str(ret, "status"));
		bool settled = strcmp(s, "finish-migrate") != 0 && strcmp(s, "inmigrate") != 0;
		json_object_put(ret);
		if (settled)
			return 0;
		if (vmf_now_ms() >= deadline)
			return vmf_err(err, ETIMEDOUT, "VM %s: QEMU stayed in run state %s after its migration "
				       "completed", vm->cfg->id, s);
		struct timespec ts = { 0, 2 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

/* Waits for the MIGRATION event to reach a final state. */
static int
wait_migration(struct vmf_vmm *vm, const char *what, struct vmf_error *err)
{
	int64_t deadline = vmf_now_ms() + MIGRATE_TIMEOUT_MS;
	for (;;) {
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0)
			return vmf_err(err, ETIMEDOUT, "VM %s: %s did not finish within %d s", vm->cfg->id,
				       what, MIGRATE_TIMEOUT_MS / 1000);
		json_object *data = NULL;
		int r = vmf_qmp_wait_event(vm->qmp, "MIGRATION", &data, left, err);
		if (r < 0) {
			vmf_error_prefix(err, "VM %s: %s", vm->cfg->id, what);
			append_logs(vm, err);
			return r;
		}
		const char *s = member_str(data, "status");
		if (strcmp(s, "completed") == 0) {
			json_object_put(data);
			return wait_runstate_settled(vm, deadline, err);
		}
		if (strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0) {
			/* s is data's: the sentence first. */
			r = vmf_err(err, EIO, "VM %s: %s %s", vm->cfg->id, what, s);
			json_object_put(data);
			append_logs(vm, err);
			return r;
		}
		json_object_put(data);
	}
}

static int
qemu_save_template(struct vmf_vmm *vm, int state_fd, bool full, struct vmf_error *err)
{
	int r;
	if (!vm->paused && (r = qmp_cmd(vm, "stop", NULL, NULL, err)) < 0)
		return r;
	vm->paused = true;
	if ((r = set_capability(vm, "events", true, err)) < 0)
		return r;
	if (!full) {
		r = has_capability(vm, "x-ignore-shared", err);
		if (r < 0)
			return r;
		if (r == 0)
			return vmf_err(err, ENOTSUP, "QEMU for VM %s lacks the x-ignore-shared migration "
				       "capability needed for shared templates", vm->cfg->id);
		if ((r = set_capability(vm, "x-ignore-shared", true, err)) < 0)
			return r;
	}
	if ((r = pass_fd(vm, "vmfstate", state_fd, err)) < 0)
		return r;
	json_object *args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string("fd:vmfstate"));
	r = qmp_cmd(vm, "migrate", args, NULL, err);
	json_object_put(args);
	if (r < 0)
		return r;
	return wait_migration(vm, "saving the template state", err);
}

static int qemu_stop(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err);

/* The DIMMs qemu_hotplug_memory added, by their index (dimmN): size and
 * the address the guest knows them at. */
static int
query_dimms(struct vmf_vmm *vm, struct vmf_snapshot_result *res, struct vmf_error *err)
{
	res->n_dimms = 0;
	if (vm->dimms == 0)
		return 0;
	if (vm->dimms > VMF_SNAPSHOT_MAX_DIMMS)
		return vmf_err(err, ENOTSUP, "VM %s has %u DIMMs; a snapshot takes at most %d", vm->cfg->id,
			       vm->dimms, VMF_SNAPSHOT_MAX_DIMMS);
	json_object *ret = NULL;
	int r = qmp_cmd(vm, "query-memory-devices", NULL, &ret, err);
	if (r < 0)
		return r;
	size_t n = json_object_is_type(ret, json_type_array) ? json_object_array_length(ret) : 0;
	for (size_t i = 0; i < n; i++) {
		json_object *dev = json_object_array_get_idx(ret, i), *data, *size, *addr;
		unsigned k;
		if (!json_object_is_type(dev, json_type_object) || !json_object_object_get_ex(dev, "data", &data) ||
		    sscanf(member_str(data, "id"), "dimm%u", &k) != 1 || k >= vm->dimms ||
		    !json_object_object_get_ex(data, "size", &size) || !json_object_object_get_ex(data, "addr", &addr))
			continue;
		res->dimms[k].size_mib = (unsigned)((uint64_t)json_object_get_int64(size) >> 20);
		res->dimms[k].addr = (uint64_t)json_object_get_int64(addr);
		res->n_dimms = res->n_dimms > k + 1 ? res->n_dimms : k + 1;
	}
	json_object_put(ret);
	for (unsigned k = 0; k < vm->dimms; k++)
		if (k >= res->n_dimms || res->dimms[k].size_mib == 0)
			return vmf_err(err, EPROTO, "VM %s: query-memory-devices does not list DIMM dimm%u", vm->cfg->id, k);
	return 0;
}

static int
set_bandwidth(struct vmf_vmm *vm, struct vmf_error *err)
{
	/* QEMU 7.2 limits migration to 32 MiB/s by default: a local copy of a
	 * paused VM should run at memory speed. */
	json_object *args = json_object_new_object();
	json_object_object_add(args, "max-bandwidth", json_object_new_int64(INT64_C(1) << 40));
	int r = qmp_cmd(vm, "migrate-set-parameters", args, NULL, err);
	json_object_put(args);
	return r;
}

/* QEMU 7.2 has no mapped-ram: a clone's RAM is a private copy-on-write
 * mapping that x-ignore-shared cannot skip.  So the paused VM migrates
 * into a fresh QEMU whose RAM (and DIMMs) are the new template's files,
 * mapped share=on; the VM runs again as soon as the copy completes, and
 * the receiver is then saved as a template build is. */
static int
qemu_snapshot(struct vmf_vmm *vm, const struct vmf_snapshot_to *to, int state_fd,
	      struct vmf_snapshot_result *res, struct vmf_error *err)
{
	res->method = "qemu-migrate-to-shared";
	res->paused_ms = 0;
	const vmf_vm_config *tc = to->cfg;
	if (tc->memory_mode != VMF__HV__MEMORY_MODE__MEM_TEMPLATE || !tc->memory_file || !*tc->memory_file ||
	    !tc->incoming)
		return vmf_err(err, EINVAL, "VM %s: a snapshot's receiver needs a template memory file and "
			       "incoming", vm->cfg->id);
	int r = query_dimms(vm, res, err);
	if (r < 0)
		return r;
	res->hotplugged_vcpus = vm->vcpus - vm->cfg->vcpus;
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", tc->memory_file);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = '\0';
	Vmf__Hv__HotDimm dimms[VMF_SNAPSHOT_MAX_DIMMS], *dimmp[VMF_SNAPSHOT_MAX_DIMMS];
	for (unsigned k = 0; k < res->n_dimms; k++) {
		snprintf(res->dimms[k].path, sizeof(res->dimms[k].path), "%s/dimm%u", dir, k);
		vmf__hv__hot_dimm__init(&dimms[k]);
		dimms[k].size_mib = res->dimms[k].size_mib;
		dimms[k].addr = res->dimms[k].addr;
		dimms[k].mem_path = res->dimms[k].path;
		dimmp[k] = &dimms[k];
	}
	vmf_vm_config rcfg = *tc;
	/* Its base shape is the VM's template's, whatever the caller filled. */
	rcfg.vcpus = vm->cfg->vcpus;
	rcfg.max_vcpus = vm->cfg->max_vcpus;
	rcfg.memory_mib = vm->cfg->memory_mib;
	rcfg.max_memory_mib = vm->cfg->max_memory_mib;
	rcfg.memory_slots = vm->cfg->memory_slots;
	rcfg.hotplugged_vcpus = res->hotplugged_vcpus;
	rcfg.n_dimms = res->n_dimms;
	rcfg.dimms = dimmp;
	struct vmf_vmm *rcv = NULL;
	if ((r = qemu_boot(&rcfg, &rcv, err)) < 0)
		return vmf_error_prefix(err, "VM %s: starting the snapshot's receiving QEMU", vm->cfg->id);
	int sp[2] = { -1, -1 };
	bool was_running = !vm->paused, stopped = false;
	int64_t t0 = 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
		r = vmf_err_sys(err, errno, "VM %s: cannot create the migration socket pair", vm->cfg->id);
		goto out;
	}
	json_object *args;
	if ((r = set_capability(rcv, "events", true, err)) < 0 || (r = pass_fd(rcv, "vmfsnap", sp[1], err)) < 0)
		goto out;
	/* Only the two QEMUs may hold the ends: a receiver that dies must
	 * fail the sender at once (EPIPE), not leave it writing into a
	 * buffer we keep open while the VM stands still. */
	close(sp[1]);
	sp[1] = -1;
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string("fd:vmfsnap"));
	r = qmp_cmd(rcv, "migrate-incoming", args, NULL, err);
	json_object_put(args);
	if (r < 0)
		goto out;
	/* The VM's own RAM is private, so it would be sent either way; off, the
	 * stream matches the receiver's default. */
	if ((r = set_capability(vm, "events", true, err)) < 0 || (r = set_capability(vm, "x-ignore-shared", false, err)) < 0 ||
	    (r = set_bandwidth(vm, err)) < 0 || (r = pass_fd(vm, "vmfsnap", sp[0], err)) < 0)
		goto out;
	close(sp[0]);
	sp[0] = -1;
	t0 = vmf_now_ms();
	if (was_running) {
		if ((r = qmp_cmd(vm, "stop", NULL, NULL, err)) < 0)
			goto out;
		stopped = true;
	}
	VMF_FAULT("snapshot-paused");
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string("fd:vmfsnap"));
	r = qmp_cmd(vm, "migrate", args, NULL, err);
	json_object_put(args);
	if (r == 0 && (r = wait_migration(vm, "copying its state into the snapshot", err)) < 0) {
		/* The receiver usually says why. */
		char tail[400];
		vmf_file_tail(rcv->stderr_log, tail, sizeof(tail));
		if (tail[0])
			vmf_error_append(err, "; receiving QEMU: %s", tail);
	}
	if (r == 0)
		r = wait_migration(rcv, "receiving the snapshot", err);
	if (r < 0)
		goto out;
	/* Running again before the template is saved: the copy is all it waits for. */
	if (stopped) {
		r = qmp_cmd(vm, "cont", NULL, NULL, err);
		stopped = false;
		res->paused_ms = (uint64_t)(vmf_now_ms() - t0);
		if (r < 0)
			goto out;
	}
	/* A daemon killed here leaves a receiving QEMU and a half-made
	 * template, both of which restart recovery removes. */
	VMF_FAULT("snapshot-received");
	rcv->paused = true;
	r = qemu_save_template(rcv, state_fd, false, err);
out:
	if (stopped) {
		struct vmf_error e2;
		if (qmp_cmd(vm, "cont", NULL, NULL, &e2) < 0)
			log_vm(VMF_LOG_WARN, vm->cfg->id, "cannot resume after a failed snapshot: %s", e2.msg);
		res->paused_ms = (uint64_t)(vmf_now_ms() - t0);
	}
	if (sp[0] >= 0)
		close(sp[0]);
	if (sp[1] >= 0)
		close(sp[1]);
	struct vmf_error ignored;
	qemu_stop(rcv, 10000, &ignored);
	vm_free(rcv);
	return r;
}

static int
qemu_start_from_template(const vmf_vm_config *cfg, int state_fd, struct vmf_vmm **out,
			 struct vmf_error *err)
{
	*out = NULL;
	if (!cfg->incoming)
		return vmf_err(err, EINVAL, "VM %s: a clone config must set incoming", cfg->id);
	struct vmf_vmm *vm;
	int r = qemu_boot(cfg, &vm, err);
	if (r < 0)
		return r;
	bool full = cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_FULL;
	if ((r = set_capability(vm, "events", true, err)) < 0)
		goto fail;
	if (!full && (r = set_capability(vm, "x-ignore-shared", true, err)) < 0)
		goto fail;
	if ((r = pass_fd(vm, "vmfstate", state_fd, err)) < 0)
		goto fail;
	json_object *args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string("fd:vmfstate"));
	r = qmp_cmd(vm, "migrate-incoming", args, NULL, err);
	json_object_put(args);
	if (r < 0 || (r = wait_migration(vm, "loading the template state", err)) < 0)
		goto fail;
	vm->paused = true;
	*out = vm;
	return 0;
fail:
	vmf_vmm_kill(&vm->proc, "QEMU", cfg->id);
	vm_free(vm);
	return r;
}

/* Suspend: every byte of guest RAM into the stream.  A clone loaded its
 * template with x-ignore-shared, which QEMU keeps set: cleared here so that
 * the stream is the plain format the resuming QEMU reads (the clone's RAM,
 * a share=off mapping, was never skipped by it anyway). */
static int
qemu_save_state(struct vmf_vmm *vm, int state_fd, struct vmf_error *err)
{
	if (vm->n_cpu_devs != vm->vcpus - vm->cfg->vcpus - vm->cfg->hotplugged_vcpus ||
	    vm->n_dimm_mib != vm->dimms - vm->cfg->n_dimms)
		return vmf_err(err, ENOTSUP, "VM %s was grown by a vmfactory that did not record its hot-added "
			       "devices, which a resuming QEMU needs: it cannot be suspended", vm->cfg->id);
	int r;
	if (!vm->paused && (r = qmp_cmd(vm, "stop", NULL, NULL, err)) < 0)
		return r;
	vm->paused = true;
	if ((r = set_capability(vm, "events", true, err)) < 0 || (r = has_capability(vm, "x-ignore-shared", err)) < 0)
		return r;
	if (r == 1 && (r = set_capability(vm, "x-ignore-shared", false, err)) < 0)
		return r;
	/* QEMU's default limit (128 MiB/s) would make the save of a paused VM
	 * wait on a rate, not on the disk. */
	json_object *p = json_object_new_object();
	json_object_object_add(p, "max-bandwidth", json_object_new_int64(INT64_C(1) << 40));
	r = qmp_cmd(vm, "migrate-set-parameters", p, NULL, err);
	json_object_put(p);
	if (r < 0 || (r = pass_fd(vm, "vmfstate", state_fd, err)) < 0)
		return r;
	json_object *args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string("fd:vmfstate"));
	r = qmp_cmd(vm, "migrate", args, NULL, err);
	json_object_put(args);
	if (r < 0)
		return r;
	return wait_migration(vm, "saving its state", err);
}

/* Resume: a QEMU with the saved VM's config (same sockets, template memory
 * file mapped share=off as before) and its hot-added vCPUs and DIMMs on
 * the command line, loading the whole state. */
static int qemu_attach_disk(struct vmf_vmm *vm, const struct vmf_disk_spec *d, struct vmf_error *err);
static int qemu_net_attach(struct vmf_vmm *vm, const struct vmf_net_backend *nb, struct vmf_error *err);

/* The disks go in before migrate-incoming: the stream's scsi-hd state
 * needs its devices (their ids, bus addresses and serials derive from the
 * slot, as at the attach); so does user-mode networking, whose slirp
 * state is a section of the stream (a tap has none).  Nodes added while QEMU waits for the stream
 * open inactive and are activated when it is loaded; the source flushed
 * and inactivated its own when it stopped and completed the save. */
static int
qemu_restore_state_with(const vmf_hv_state *st, int state_fd, const struct vmf_restore_parts *parts,
			struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	if (st->schema_version != STATE_SCHEMA_VERSION || !st->config || !st->qemu)
		return vmf_err(err, EINVAL, "saved hypervisor state has schema %u, expected %u", st->schema_version,
			       STATE_SCHEMA_VERSION);
	vmf_vm_config *cfg = vmf_vm_config_dup(st->config);
	if (!cfg)
		return vmf_err(err, ENOMEM, "out of memory for a VM config");
	cfg->incoming = true;
	struct vmf_vmm *vm = vm_new(cfg, err);
	vmf_vm_config_free(cfg);
	if (!vm)
		return -ENOMEM;
	int r = take_hotplugged(vm, st->qemu, err);
	if (r == 0 && (vm->n_cpu_devs + vm->cfg->vcpus + vm->cfg->hotplugged_vcpus != st->vcpus ||
			 vm->n_dimm_mib + vm->cfg->n_dimms != st->qemu->dimm_count))
		r = vmf_err(err, EINVAL, "VM %s: its saved state records %u vCPUs and %u DIMMs but names %zu "
			    "hot-added vCPUs and %zu DIMMs", vm->cfg->id, st->vcpus, st->qemu->dimm_count,
			    vm->n_cpu_devs, vm->n_dimm_mib);
	if (r < 0) {
		vm_free(vm);
		return r;
	}
	vm->vcpus = st->vcpus;
	vm->memory_mib = st->memory_mib;
	vm->dimms = st->qemu->dimm_count;
	if ((r = spawn(vm, err)) < 0) {
		vm_free(vm);
		return r;
	}
	vm->paused = true;
	log_vm(VMF_LOG_DEBUG, vm->cfg->id, "QEMU pid %d started to resume", (int)vm->proc.pid);
	if ((r = set_capability(vm, "events", true, err)) < 0 || (r = pass_fd(vm, "vmfstate", state_fd, err)) < 0)
		goto fail;
	for (size_t i = 0; parts && i < parts->n_disks; i++)
		if ((r = qemu_attach_disk(vm, &parts->disks[i], err)) < 0) {
			vmf_error_prefix(err, "giving the resuming QEMU its disk in slot %u", parts->disks[i].slot);
			goto fail;
		}
	if (parts && parts->net && (r = qemu_net_attach(vm, parts->net, err)) < 0)
		goto fail;
	json_object *args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string("fd:vmfstate"));
	r = qmp_cmd(vm, "migrate-incoming", args, NULL, err);
	json_object_put(args);
	if (r < 0 || (r = wait_migration(vm, "loading its saved state", err)) < 0)
		goto fail;
	*out = vm;
	return 0;
fail:
	vmf_vmm_kill(&vm->proc, "QEMU", vm->cfg->id);
	vm_free(vm);
	return r;
}

static int
qemu_restore_state(const vmf_hv_state *st, int state_fd, struct vmf_vmm **out, struct vmf_error *err)
{
	return qemu_restore_state_with(st, state_fd, NULL, out, err);
}

static int
qemu_pause(struct vmf_vmm *vm, struct vmf_error *err)
{
	int r = qmp_cmd(vm, "stop", NULL, NULL, err);
	if (r == 0)
		vm->paused = true;
	return r;
}

static int
qemu_resume(struct vmf_vmm *vm, struct vmf_error *err)
{
	int r = qmp_cmd(vm, "cont", NULL, NULL, err);
	if (r == 0)
		vm->paused = false;
	return r;
}

static int
netdev_add(struct vmf_vmm *vm, json_object *args, struct vmf_error *err)
{
	int r = qmp_cmd(vm, "netdev_add", args, NULL, err);
	json_object_put(args);
	return r;
}

/* Plugs the hand-out's backend into the NIC's hub: a tap (its fd passed
 * with getfd; the tap lives in the sandbox's namespace) or user-mode
 * networking with the forwards. */
static int
qemu_net_attach(struct vmf_vmm *vm, const struct vmf_net_backend *nb, struct vmf_error *err)
{
	if (!vm->cfg->nic)
		return vmf_err(err, ENOTSUP, "VM %s has no NIC: its template was built with nic = no",
			       vm->cfg->id);
	json_object *args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string(VMF_QEMU_NET_BACKEND));
	if (nb->tap_fd >= 0) {
		int r = pass_fd(vm, "nettap", nb->tap_fd, err);
		if (r < 0) {
			json_object_put(args);
			return r;
		}
		json_object_object_add(args, "type", json_object_new_string("tap"));
		json_object_object_add(args, "fd", json_object_new_string("nettap"));
	} else {
		json_object_object_add(args, "type", json_object_new_string("user"));
		json_object_object_add(args, "restrict", json_object_new_boolean(!nb->outbound));
		if (nb->n_hostfwd) {
			json_object *fw = json_object_new_array();
			for (size_t i = 0; i < nb->n_hostfwd; i++) {
				json_object *o = json_object_new_object();
				json_object_object_add(o, "str", json_object_new_string(nb->hostfwd[i]));
				json_object_array_add(fw, o);
			}
			json_object_object_add(args, "hostfwd", fw);
		}
	}
	int r = netdev_add(vm, args, err);
	if (r < 0)
		return r;
	args = json_object_new_object();
	json_object_object_add(args, "type", json_object_new_string("hubport"));
	json_object_object_add(args, "id", json_object_new_string(VMF_QEMU_NET_BACKEND "hub"));
	json_object_object_add(args, "hubid", json_object_new_int(0));
	json_object_object_add(args, "netdev", json_object_new_string(VMF_QEMU_NET_BACKEND));
	return netdev_add(vm, args, err);
}

static int
qemu_hotplug_vcpus(struct vmf_vmm *vm, unsigned total, struct vmf_error *err)
{
	if (total <= vm->vcpus)
		return 0;
	json_object *ret = NULL;
	int r = qmp_cmd(vm, "query-hotpluggable-cpus", NULL, &ret, err);
	if (r < 0)
		return r;
	if (!json_object_is_type(ret, json_type_array)) {
		json_object_put(ret);
		return vmf_err(err, EPROTO, "VM %s: query-hotpluggable-cpus returned no list", vm->cfg->id);
	}
	size_t n = json_object_array_length(ret);
	/* QEMU lists slots from the highest id down; plug in ascending order so
	 * the guest numbers them as it would at boot. */
	for (size_t k = n; k-- > 0 && vm->vcpus < total;) {
		json_object *slot = json_object_array_get_idx(ret, k), *type, *props, *path;
		if (json_object_is_type(slot, json_type_object) && json_object_object_get_ex(slot, "qom-path", &path))
			continue; /* already present */
		if (!json_object_is_type(slot, json_type_object) || !json_object_object_get_ex(slot, "type", &type) ||
		    !json_object_is_type(type, json_type_string) || !json_object_object_get_ex(slot, "props", &props) ||
		    !json_object_is_type(props, json_type_object)) {
			r = vmf_err(err, EPROTO, "VM %s: query-hotpluggable-cpus returned a slot without "
				    "a type name and props", vm->cfg->id);
			break;
		}
		json_object *args = json_object_new_object();
		json_object_object_add(args, "driver", json_object_get(type));
		char id[32], dev[256];
		snprintf(id, sizeof(id), "vcpu%u", vm->vcpus);
		json_object_object_add(args, "id", json_object_new_string(id));
		int len = snprintf(dev, sizeof(dev), "%s,id=%s", json_object_get_string(type), id);
		json_object_object_foreach(props, key, val) {
			json_object_object_add(args, key, json_object_get(val));
			if (len > 0 && (size_t)len < sizeof(dev))
				len += snprintf(dev + len, sizeof(dev) - (size_t)len, ",%s=%s", key,
						json_object_get_string(val));
		}
		char **devs = realloc(vm->cpu_devs, (vm->n_cpu_devs + 1) * sizeof(char *));
		if (devs)
			vm->cpu_devs = devs;
		if (!devs || len < 0 || (size_t)len >= sizeof(dev) || !(devs[vm->n_cpu_devs] = strdup(dev))) {
			json_object_put(args);
			r = vmf_err(err, ENOMEM, "VM %s: out of memory recording a hot-added vCPU", vm->cfg->id);
			break;
		}
		r = qmp_cmd(vm, "device_add", args, NULL, err);
		json_object_put(args);
		if (r < 0) {
			free(devs[vm->n_cpu_devs]);
			break;
		}
		vm->n_cpu_devs++;
		vm->vcpus++;
	}
	json_object_put(ret);
	if (r == 0 && vm->vcpus < total)
		r = vmf_err(err, ENOSPC, "VM %s: only %u vCPUs can be plugged, %u requested "
			    "(max_vcpus of the template)", vm->cfg->id, vm->vcpus, total);
	return r;
}

static int
qemu_hotplug_memory(struct vmf_vmm *vm, unsigned add_mib, struct vmf_error *err)
{
	if (add_mib == 0)
		return 0;
	int r = vmf_hotplug_mem_check(vm->cfg, vm->memory_mib, add_mib, err);
	if (r < 0)
		return r;
	uint32_t *sizes = realloc(vm->dimm_mib, (vm->n_dimm_mib + 1) * sizeof(uint32_t));
	if (!sizes)
		return vmf_err(err, ENOMEM, "VM %s: out of memory recording a hot-added DIMM", vm->cfg->id);
	vm->dimm_mib = sizes;
	char mem[32], dimm[32];
	snprintf(mem, sizeof(mem), "hotmem%u", vm->dimms);
	snprintf(dimm, sizeof(dimm), "dimm%u", vm->dimms);
	json_object *args = json_object_new_object();
	json_object_object_add(args, "qom-type", json_object_new_string("memory-backend-ram"));
	json_object_object_add(args, "id", json_object_new_string(mem));
	json_object_object_add(args, "size", json_object_new_int64((int64_t)add_mib << 20));
	r = qmp_cmd(vm, "object-add", args, NULL, err);
	json_object_put(args);
	if (r < 0)
		return r;
	args = json_object_new_object();
	json_object_object_add(args, "driver", json_object_new_string("pc-dimm"));
	json_object_object_add(args, "id", json_object_new_string(dimm));
	json_object_object_add(args, "memdev", json_object_new_string(mem));
	r = qmp_cmd(vm, "device_add", args, NULL, err);
	json_object_put(args);
	if (r < 0) {
		/* Leave no orphan backend that would block the next attempt's id. */
		args = json_object_new_object();
		json_object_object_add(args, "id", json_object_new_string(mem));
		struct vmf_error ignored;
		qmp_cmd(vm, "object-del", args, NULL, &ignored);
		json_object_put(args);
		return r;
	}
	vm->dimm_mib[vm->n_dimm_mib++] = add_mib;
	vm->dimms++;
	vm->memory_mib += add_mib;
	return 0;
}

static int
qemu_stop(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err)
{
	(void)err;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	if (!vmf_vmm_exited(&vm->proc)) {
		/* quit is QEMU's clean exit; a guest shutdown would need the
		 * guest's cooperation, which a pooled or broken VM may not give. */
		struct vmf_error ignored;
		if (vm->qmp)
			vmf_qmp_command(vm->qmp, "quit", NULL, -1, NULL, timeout_ms / 3 + 1, &ignored);
		if (!vmf_vmm_wait_exit(&vm->proc, vmf_now_ms() + timeout_ms / 3 + 1))
			vmf_vmm_terminate(&vm->proc, deadline, "QEMU", vm->cfg->id);
	}
	if (vm->qmp) {
		vmf_qmp_close(vm->qmp);
		vm->qmp = NULL;
	}
	unlink(vm->qmp_path);
	unlink(vm->mon_path);
	unlink(vm->agent_path);
	unlink(vm->vmf_agent_path);
	return 0;
}

static bool
qemu_alive(struct vmf_vmm *vm)
{
	/* Reaps a dead child here so it is not left a zombie. */
	return !vmf_vmm_exited(&vm->proc);
}

static pid_t
qemu_pid(const struct vmf_vmm *vm)
{
	return vm->proc.pid;
}

static unsigned
qemu_capabilities(const struct vmf_vmm *vm)
{
	(void)vm;
	return VMF_CAP_TEMPLATE_SHARE | VMF_CAP_CPU_HOTPLUG | VMF_CAP_MEM_HOTPLUG |
	       VMF_CAP_SHARE_DEVICE | VMF_CAP_VMGENID | VMF_CAP_FULL_SNAPSHOT;
}

static int
qemu_agent_connect(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err)
{
	(void)timeout_ms; /* the listening socket exists for the VM's whole life */
	/* The daemon's own port: the owner's may be held by the sandbox. */
	int fd = vmf_vmm_connect_unix(vm->vmf_agent_path, err);
	/* A VM adopted from a daemon before the private port has only one. */
	if (fd == -ENOENT)
		fd = vmf_vmm_connect_unix(vm->agent_path, err);
	if (fd < 0)
		vmf_error_prefix(err, "VM %s: agent channel", vm->cfg->id);
	return fd;
}

static int
qemu_watch_fd(struct vmf_vmm *vm)
{
	return vm->proc.pidfd;
}

/* QEMU's last word on a guest that ended or reset, from the events queued
 * on the daemon's monitor: SHUTDOWN's reason, GUEST_PANICKED. */
static void
last_event(struct vmf_vmm *vm, struct vmf_vmm_exit *out)
{
	json_object *data = NULL, *v;
	struct vmf_error ignored;
	if (vmf_qmp_wait_event(vm->qmp, "GUEST_PANICKED", NULL, 0, &ignored) == 0) {
		snprintf(out->guest_event, sizeof(out->guest_event), "guest-panic");
		snprintf(out->event, sizeof(out->event), "GUEST_PANICKED");
	}
	if (vmf_qmp_wait_event(vm->qmp, "SHUTDOWN", &data, 0, &ignored) < 0)
		return;
	const char *reason = json_object_object_get_ex(data, "reason", &v) && json_object_is_type(v, json_type_string)
				     ? json_object_get_string(v) : "";
	/* QEMU names its reasons in a fixed vocabulary: anything else is not
	 * taken as one. */
	static const char *const known[][2] = {
		{ "guest-panic", "guest-panic" }, { "guest-reset", "guest-reset" },
		{ "guest-shutdown", "guest-poweroff" }, { "host-qmp-quit", "quit" },
		{ "host-signal", "host-signal" },
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (strcmp(reason, known[i][0]) == 0) {
			if (!out->guest_event[0])
				snprintf(out->guest_event, sizeof(out->guest_event), "%s", known[i][1]);
			snprintf(out->event, sizeof(out->event), "%sSHUTDOWN %s", out->event[0] ? "GUEST_PANICKED, " : "",
				 reason);
		}
	json_object_put(data);
}

static int
qemu_exit_info(struct vmf_vmm *vm, struct vmf_vmm_exit *out)
{
	if (!vmf_vmm_exit_status(&vm->proc, out)) {
		snprintf(out->serial_log, sizeof(out->serial_log), "%s", vm->serial_log);
		return -EBUSY;
	}
	if (vm->qmp) {
		/* Whatever QEMU wrote before it exited waits in the socket. */
		vmf_qmp_poll_events(vm->qmp, 256, 5);
		last_event(vm, out);
	}
	snprintf(out->serial_log, sizeof(out->serial_log), "%s", vm->serial_log);
	return 0;
}

static int
qemu_event_fd(struct vmf_vmm *vm)
{
	return vm->qmp ? vmf_qmp_fd(vm->qmp) : -1;
}

static int
qemu_poll_events(struct vmf_vmm *vm, struct vmf_vmm_events *ev)
{
	memset(ev, 0, sizeof(*ev));
	if (!vm->qmp)
		return -EPIPE;
	vmf_qmp_poll_events(vm->qmp, 64, 0);
	json_object *data = NULL, *g;
	struct vmf_error ignored;
	while (vmf_qmp_wait_event(vm->qmp, "GUEST_PANICKED", NULL, 0, &ignored) == 0)
		ev->panics++;
	while (vmf_qmp_wait_event(vm->qmp, "RESET", &data, 0, &ignored) == 0) {
		/* guest: false is a reset the host asked for (system_reset). */
		if (!json_object_object_get_ex(data, "guest", &g) || json_object_get_boolean(g))
			ev->resets++;
		json_object_put(data);
		data = NULL;
	}
	/* Unusable once QEMU closed it: the events it left were taken above. */
	return vmf_qmp_usable(vm->qmp) ? 0 : -EPIPE;
}

/* The owner's agent connection cannot be closed from QEMU's side while its
 * port uses it (7.2: "Chardev user does not support chardev hotswap"): the
 * port is unplugged (no guest cooperation on the virtio-serial bus), its
 * chardev removed, which closes the client's connection, and both made
 * again on a new listening socket at the same path. */
static int
qemu_agent_reset(struct vmf_vmm *vm, struct vmf_error *err)
{
	json_object *args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string(VMF_QEMU_AGENT_PORT));
	int r = qmp_cmd(vm, "device_del", args, NULL, err);
	json_object_put(args);
	if (r < 0)
		return r;
	for (int64_t deadline = vmf_now_ms() + QMP_TIMEOUT_MS;;) {
		json_object *data = NULL, *id;
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0 || (r = vmf_qmp_wait_event(vm->qmp, "DEVICE_DELETED", &data, left, err)) < 0)
			return vmf_error_prefix(err, "VM %s: unplugging the agent port", vm->cfg->id);
		bool ours = json_object_object_get_ex(data, "device", &id) &&
			    strcmp(json_object_get_string(id), VMF_QEMU_AGENT_PORT) == 0;
		json_object_put(data);
		if (ours)
			break;
	}
	args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string("agent"));
	r = qmp_cmd(vm, "chardev-remove", args, NULL, err);
	json_object_put(args);
	int lfd = r < 0 ? r : listen_unix(vm->agent_path, err);
	if (lfd < 0)
		return lfd;
	r = pass_fd(vm, "vmfagentl", lfd, err);
	close(lfd);
	if (r < 0)
		return r;
	json_object *addr = json_object_new_object(), *data = json_object_new_object();
	json_object_object_add(data, "str", json_object_new_string("vmfagentl"));
	json_object_object_add(addr, "type", json_object_new_string("fd"));
	json_object_object_add(addr, "data", data);
	json_object *sock = json_object_new_object();
	json_object_object_add(sock, "addr", addr);
	json_object_object_add(sock, "server", json_object_new_boolean(true));
	json_object_object_add(sock, "wait", json_object_new_boolean(false));
	json_object *backend = json_object_new_object();
	json_object_object_add(backend, "type", json_object_new_string("socket"));
	json_object_object_add(backend, "data", sock);
	args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string("agent"));
	json_object_object_add(args, "backend", backend);
	r = qmp_cmd(vm, "chardev-add", args, NULL, err);
	json_object_put(args);
	if (r < 0)
		return r;
	json_object *dev = json_object_new_object();
	json_object_object_add(dev, "driver", json_object_new_string("virtserialport"));
	json_object_object_add(dev, "bus", json_object_new_string("vser0.0"));
	json_object_object_add(dev, "chardev", json_object_new_string("agent"));
	json_object_object_add(dev, "name", json_object_new_string("agent"));
	json_object_object_add(dev, "id", json_object_new_string(VMF_QEMU_AGENT_PORT));
	r = qmp_cmd(vm, "device_add", dev, NULL, err);
	json_object_put(dev);
	return r;
}

static int
qemu_serialize(const struct vmf_vmm *vm, vmf_hv_state **out, struct vmf_error *err)
{
	*out = NULL;
	vmf_hv_state *st = malloc(sizeof(*st));
	Vmf__Hv__QemuState *q = malloc(sizeof(*q));
	vmf_vm_config *cfg = vmf_vm_config_dup(vm->cfg);
	char *paths[5] = { strdup(vm->qmp_path), strdup(vm->agent_path), strdup(vm->serial_log),
			   strdup(vm->stderr_log), strdup("") };
	bool ok = st && q && cfg;
	for (int i = 0; i < 5; i++)
		ok = ok && paths[i];
	if (!ok) {
		free(st);
		free(q);
		vmf_vm_config_free(cfg);
		for (int i = 0; i < 5; i++)
			free(paths[i]);
		return vmf_err(err, ENOMEM, "out of memory serializing VM %s", vm->cfg->id);
	}
	vmf__hv__hypervisor_state__init(st);
	vmf__hv__qemu_state__init(q);
	q->qmp_socket = paths[0];
	q->agent_socket = paths[1];
	q->serial_log = paths[2];
	q->stderr_log = paths[3];
	q->pidfile = paths[4];
	q->dimm_count = vm->dimms;
	q->hotplugged_cpus = vm->vcpus - vm->cfg->vcpus;
	q->hotplugged_mem_mib = vm->memory_mib - vm->cfg->memory_mib;
	/* Owned by st (free_unpacked frees each): copies. */
	if (vm->n_cpu_devs && (q->cpu_devices = calloc(vm->n_cpu_devs, sizeof(char *))))
		for (size_t i = 0; i < vm->n_cpu_devs && (q->cpu_devices[i] = strdup(vm->cpu_devs[i])); i++)
			q->n_cpu_devices++;
	if (vm->n_dimm_mib && (q->dimm_mib = malloc(vm->n_dimm_mib * sizeof(uint32_t)))) {
		memcpy(q->dimm_mib, vm->dimm_mib, vm->n_dimm_mib * sizeof(uint32_t));
		q->n_dimm_mib = vm->n_dimm_mib;
	}
	st->schema_version = STATE_SCHEMA_VERSION;
	st->kind = VMF__HV__HYPERVISOR_KIND__HV_QEMU;
	st->pid = qemu_pid(vm);
	st->start_time_ticks = vm->proc.start_ticks;
	st->config = cfg;
	st->qemu = q;
	st->vcpus = vm->vcpus;
	st->memory_mib = vm->memory_mib;
	st->paused = vm->paused;
	*out = st;
	if (q->n_cpu_devices != vm->n_cpu_devs || q->n_dimm_mib != vm->n_dimm_mib) {
		vmf__hv__hypervisor_state__free_unpacked(st, NULL);
		*out = NULL;
		return vmf_err(err, ENOMEM, "out of memory serializing VM %s", vm->cfg->id);
	}
	return 0;
}

/* The process must still carry our -name: pid reuse by an unrelated program
 * must never make us adopt (and later kill) it. */
static bool
cmdline_has_name(pid_t pid, const char *name)
{
	char path[64], *buf = NULL;
	size_t len;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	if (vmf_read_file(path, &buf, &len, 1 << 20, NULL) < 0)
		return false;
	bool found = false;
	for (size_t off = 0; off < len && !found;) {
		const char *a = buf + off;
		size_t l = strlen(a);
		if (strcmp(a, "-name") == 0 && off + l + 1 < len)
			found = strcmp(buf + off + l + 1, name) == 0;
		off += l + 1;
	}
	free(buf);
	return found;
}

static int
qemu_adopt(const vmf_hv_state *st, struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	if (st->schema_version != STATE_SCHEMA_VERSION || !st->config || !st->qemu)
		return vmf_err(err, EINVAL, "hypervisor state has schema %u, expected %u",
			       st->schema_version, STATE_SCHEMA_VERSION);
	const char *id = st->config->id;
	if (!vmf_proc_alive(st->pid, st->start_time_ticks))
		return vmf_err(err, ESRCH, "QEMU pid %d of VM %s is gone", (int)st->pid, id);
	const char *name = st->config->name && *st->config->name ? st->config->name : id;
	if (!cmdline_has_name(st->pid, name))
		return vmf_err(err, ESRCH, "pid %d is not the QEMU of VM %s (no -name %s)", (int)st->pid, id, name);
	struct vmf_vmm *vm = vm_new(st->config, err);
	if (!vm)
		return -ENOMEM;
	vmf_vmm_attach(&vm->proc, st->pid, st->start_time_ticks);
	vm->vcpus = st->vcpus;
	vm->memory_mib = st->memory_mib;
	vm->dimms = st->qemu->dimm_count;
	vm->paused = st->paused;
	if (take_hotplugged(vm, st->qemu, err) < 0) {
		vm_free(vm);
		return -err->code;
	}
	/* The record names the daemon's monitor: qmp.sock for a VM started
	 * before the sandbox got its own monitor, which then has no other. */
	if (st->qemu->qmp_socket && *st->qemu->qmp_socket)
		snprintf(vm->qmp_path, sizeof(vm->qmp_path), "%s", st->qemu->qmp_socket);
	/* Our QMP socket exists for the VM's whole life: a missing one will not
	 * appear, so do not let the connect wait for it. */
	struct stat sst;
	int r = stat(vm->qmp_path, &sst) < 0 ? vmf_err_sys(err, errno, "QMP socket %s is gone", vm->qmp_path)
					      : vmf_qmp_connect(vm->qmp_path, QMP_TIMEOUT_MS, &vm->qmp, err);
	if (r < 0) {
		vmf_error_prefix(err, "adopting VM %s", id);
		vm_free(vm);
		return r;
	}
	/* The recorded run state may be stale (crash between cont and record). */
	json_object *ret = NULL, *running;
	if (qmp_cmd(vm, "query-status", NULL, &ret, NULL) == 0 &&
	    json_object_object_get_ex(ret, "running", &running))
		vm->paused = !json_object_get_boolean(running);
	json_object_put(ret);
	*out = vm;
	return 0;
}

static int
qemu_probe(const char *binary, const char *kernel, struct vmf_hv_info *info, struct vmf_error *err)
{
	memset(info, 0, sizeof(*info));
	const char *bin = binary && *binary ? binary : VMF_QEMU_DEFAULT_BINARY;
	/* "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)" */
	int r = vmf_vmm_probe_version(bin, "QEMU", "qemu-system-x86", "version ", " \n(", info->version,
				      sizeof(info->version), err);
	if (r < 0)
		return r;
	snprintf(info->accel, sizeof(info->accel), "%s", accel_for(kernel));
	info->caps = qemu_capabilities(NULL);
	return 0;
}

/* ---- disks ---- */

/* A disk in slot N: fd set 100+N, nodes vmfdN-file (the file) and vmfdN
 * (its format), device vmfdN on scsi0 target N.  A copy-on-write disk adds
 * vmfdN-base-file and vmfdN-base (the read-only base, fd set 200+N).
 * Derived from the slot, so a restarted daemon finds them. */
#define DISK_FDSET(slot) (100 + (slot))
#define DISK_BASE_FDSET(slot) (200 + (slot))

static int
disk_add_fd(struct vmf_vmm *vm, unsigned fdset, int fd, struct vmf_error *err)
{
	json_object *args = json_object_new_object();
	json_object_object_add(args, "fdset-id", json_object_new_int((int)fdset));
	int r = vmf_qmp_command(vm->qmp, "add-fd", args, fd, NULL, QMP_TIMEOUT_MS, err);
	json_object_put(args);
	if (r < 0)
		vmf_error_prefix(err, "VM %s: passing the disk's file", vm->cfg->id);
	return r;
}

/* Best effort: what a failed or finished step left behind. */
static void
disk_quiet(struct vmf_vmm *vm, const char *cmd, const char *key, json_object *val)
{
	struct vmf_error e = {0};
	json_object *args = json_object_new_object();
	json_object_object_add(args, key, val);
	if (vm->qmp)
		vmf_qmp_command(vm->qmp, cmd, args, -1, NULL, QMP_TIMEOUT_MS, &e);
	json_object_put(args);
}

static void
disk_del_node(struct vmf_vmm *vm, const char *node)
{
	disk_quiet(vm, "blockdev-del", "node-name", json_object_new_string(node));
}

static void
disk_remove_fdset(struct vmf_vmm *vm, unsigned fdset)
{
	disk_quiet(vm, "remove-fd", "fdset-id", json_object_new_int((int)fdset));
}

/* A file node over /dev/fdset/N and a format node over it. */
static int
disk_add_nodes(struct vmf_vmm *vm, const char *node, unsigned fdset, const char *format, bool ro,
	       const char *backing, struct vmf_error *err)
{
	char file_node[40], fname[40];
	snprintf(file_node, sizeof(file_node), "%s-file", node);
	snprintf(fname, sizeof(fname), "/dev/fdset/%u", fdset);
	json_object *f = json_object_new_object();
	json_object_object_add(f, "driver", json_object_new_string("file"));
	json_object_object_add(f, "node-name", json_object_new_string(file_node));
	json_object_object_add(f, "filename", json_object_new_string(fname));
	json_object_object_add(f, "read-only", json_object_new_boolean(ro));
	int r = qmp_cmd(vm, "blockdev-add", f, NULL, err);
	json_object_put(f);
	if (r < 0)
		return r;
	json_object *fmt = json_object_new_object();
	json_object_object_add(fmt, "driver", json_object_new_string(format));
	json_object_object_add(fmt, "node-name", json_object_new_string(node));
	json_object_object_add(fmt, "file", json_object_new_string(file_node));
	json_object_object_add(fmt, "read-only", json_object_new_boolean(ro));
	/* qcow2: the backing file named in the image is never opened; the base
	 * is ours (or none). */
	if (strcmp(format, "qcow2") == 0)
		json_object_object_add(fmt, "backing", backing ? json_object_new_string(backing) : NULL);
	r = qmp_cmd(vm, "blockdev-add", fmt, NULL, err);
	json_object_put(fmt);
	if (r < 0)
		disk_del_node(vm, file_node);
	return r;
}

static void
disk_del_nodes(struct vmf_vmm *vm, const char *node)
{
	char file_node[40];
	snprintf(file_node, sizeof(file_node), "%s-file", node);
	disk_del_node(vm, node);
	disk_del_node(vm, file_node);
}

static int
qemu_attach_disk(struct vmf_vmm *vm, const struct vmf_disk_spec *d, struct vmf_error *err)
{
	if (!vm->qmp)
		return vmf_err(err, ENOTCONN, "VM %s has no QMP connection", vm->cfg->id);
	if (d->slot >= VMF_DISK_SLOTS)
		return vmf_err(err, EINVAL, "VM %s: disk slot %u out of range", vm->cfg->id, d->slot);
	char node[24], base[32];
	snprintf(node, sizeof(node), "vmfd%u", d->slot);
	snprintf(base, sizeof(base), "vmfd%u-base", d->slot);
	bool cow = d->backing_fd >= 0;
	int r;
	if (cow) {
		if ((r = disk_add_fd(vm, DISK_BASE_FDSET(d->slot), d->backing_fd, err)) < 0)
			return r;
		r = disk_add_nodes(vm, base, DISK_BASE_FDSET(d->slot), d->backing_format, true, NULL, err);
		disk_remove_fdset(vm, DISK_BASE_FDSET(d->slot));
		if (r < 0)
			return r;
	}
	if ((r = disk_add_fd(vm, DISK_FDSET(d->slot), d->fd, err)) < 0)
		goto fail_base;
	/* QEMU dups the set's fd when the file node opens /dev/fdset/N; the
	 * set's own copy is removed at once: nothing kept that QEMU would
	 * hand out again. */
	r = disk_add_nodes(vm, node, DISK_FDSET(d->slot), d->format, d->read_only, cow ? base : NULL, err);
	disk_remove_fdset(vm, DISK_FDSET(d->slot));
	if (r < 0)
		goto fail_base;
	json_object *dev = json_object_new_object();
	json_object_object_add(dev, "driver", json_object_new_string("scsi-hd"));
	json_object_object_add(dev, "id", json_object_new_string(node));
	json_object_object_add(dev, "bus", json_object_new_string(VMF_QEMU_SCSI_BUS ".0"));
	json_object_object_add(dev, "drive", json_object_new_string(node));
	json_object_object_add(dev, "serial", json_object_new_string(d->serial));
	json_object_object_add(dev, "channel", json_object_new_int(0));
	json_object_object_add(dev, "scsi-id", json_object_new_int((int)d->slot));
	json_object_object_add(dev, "lun", json_object_new_int(0));
	r = qmp_cmd(vm, "device_add", dev, NULL, err);
	json_object_put(dev);
	if (r < 0) {
		disk_del_nodes(vm, node);
		goto fail_base;
	}
	return 0;
fail_base:
	if (cow)
		disk_del_nodes(vm, base);
	return r;
}

static int
qemu_detach_disk(struct vmf_vmm *vm, unsigned slot, struct vmf_error *err)
{
	if (!vm->qmp)
		return vmf_err(err, ENOTCONN, "VM %s has no QMP connection", vm->cfg->id);
	char node[24], base[32];
	snprintf(node, sizeof(node), "vmfd%u", slot);
	snprintf(base, sizeof(base), "vmfd%u-base", slot);
	json_object *args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string(node));
	struct vmf_error e = {0};
	int r = vmf_qmp_command(vm->qmp, "device_del", args, -1, NULL, QMP_TIMEOUT_MS, &e);
	json_object_put(args);
	/* A SCSI unplug needs nothing from the guest: the device is gone when
	 * DEVICE_DELETED comes, and only then may its nodes go. */
	for (int64_t deadline = vmf_now_ms() + QMP_TIMEOUT_MS; r == 0;) {
		json_object *data = NULL;
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0 || vmf_qmp_wait_event(vm->qmp, "DEVICE_DELETED", &data, left, &e) < 0) {
			*err = e;
			return vmf_error_prefix(err, "VM %s: detaching disk %s", vm->cfg->id, node);
		}
		bool ours = strcmp(member_str(data, "device"), node) == 0;
		json_object_put(data);
		if (ours)
			break;
	}
	if (r < 0 && !strstr(e.msg, "not found")) {
		*err = e;
		return r;
	}
	disk_del_nodes(vm, node);
	disk_del_nodes(vm, base);
	return 0;
}

static void
qemu_release(struct vmf_vmm *vm)
{
	vm_free(vm);
}

const struct vmf_hv_ops vmf_qemu_ops = {
	.name = "qemu",
	.kind = VMF__HV__HYPERVISOR_KIND__HV_QEMU,
	.control_socket = VMF_QEMU_DAEMON_QMP_SOCK,
	.sandbox_control_socket = VMF_QEMU_QMP_SOCK,
	.agent_socket = VMF_QEMU_AGENT_SOCK,
	.agent_transport = "unix",
	.probe = qemu_probe,
	.boot = qemu_boot,
	.start_from_template = qemu_start_from_template,
	.save_template = qemu_save_template,
	.snapshot = qemu_snapshot,
	.save_state = qemu_save_state,
	.restore_state = qemu_restore_state,
	.restore_state_with = qemu_restore_state_with,
	.pause = qemu_pause,
	.resume = qemu_resume,
	.hotplug_vcpus = qemu_hotplug_vcpus,
	.hotplug_memory = qemu_hotplug_memory,
	.net_attach = qemu_net_attach,
	.stop = qemu_stop,
	.alive = qemu_alive,
	.pid = qemu_pid,
	.capabilities = qemu_capabilities,
	.agent_connect = qemu_agent_connect,
	.watch_fd = qemu_watch_fd,
	.exit_info = qemu_exit_info,
	.event_fd = qemu_event_fd,
	.poll_events = qemu_poll_events,
	.agent_reset = qemu_agent_reset,
	.panic_device = "pvpanic",
	.serialize = qemu_serialize,
	.adopt = qemu_adopt,
	.attach_disk = qemu_attach_disk,
	.detach_disk = qemu_detach_disk,
	.parses_image_header = true,
	.release = qemu_release,
};
