/* The QEMU command line as data, built from a VmConfig (tested without
 * starting QEMU: tests/test_qemu_cmdline.c).  Device order fixes PCI
 * addresses, which a template and its clones must share. */
#include "qemu_vm.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void
qemu_arg(struct argv_buf *a, const char *fmt, ...)
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
	const char *accel = cfg->accel && *cfg->accel ? cfg->accel : qemu_accel_for(cfg->kernel);
	qemu_arg(&a, "%s", cfg->binary && *cfg->binary ? cfg->binary : VMF_QEMU_DEFAULT_BINARY);
	/* -name is how restart recovery recognises our processes. */
	qemu_arg(&a, "-name");
	qemu_arg(&a, "%s", cfg->name && *cfg->name ? cfg->name : cfg->id);
	qemu_arg(&a, "-nodefaults");
	qemu_arg(&a, "-no-user-config");
	qemu_arg(&a, "-display");
	qemu_arg(&a, "none");
	bool runas = cfg->runas && *cfg->runas;
	qemu_arg(&a, "-sandbox");
	qemu_arg(&a, runas ? VMF_QEMU_SANDBOX_RUNAS : VMF_QEMU_SANDBOX);
	qemu_arg(&a, "-machine");
	qemu_arg(&a, "%s,memory-backend=mem0", cfg->machine && *cfg->machine ? cfg->machine : "q35");
	qemu_arg(&a, "-accel");
	qemu_arg(&a, "%s", accel);
	if (strcmp(accel, "kvm") == 0) {
		qemu_arg(&a, "-cpu");
		qemu_arg(&a, "%s", qemu_kvm_cpu());
	}
	/* A guest reset (a reboot, or a panic under the guest's panic=-1) and
	 * a panic the guest reports through pvpanic: QEMU exits (stop), so the
	 * daemon sees the VM end with the reason in its last event, and no
	 * part of the VM runs on; or the guest reboots in place (keep) and the
	 * daemon sees the RESET event. */
	bool keep = cfg->on_guest_reset && strcmp(cfg->on_guest_reset, "keep") == 0;
	qemu_arg(&a, "-action");
	qemu_arg(&a, keep ? "reboot=reset,panic=none" : "reboot=shutdown,panic=shutdown");
	qemu_arg(&a, "-smp");
	qemu_arg(&a, "%u,maxcpus=%u", cfg->vcpus, maxcpus);
	qemu_arg(&a, "-m");
	if (maxmem > cfg->memory_mib)
		qemu_arg(&a, "%uM,slots=%u,maxmem=%uM", cfg->memory_mib,
		    cfg->memory_slots ? cfg->memory_slots : 8, maxmem);
	else
		qemu_arg(&a, "%uM", cfg->memory_mib);
	/* Template and clones map the same file: share=on while building so the
	 * file is the RAM, share=off in clones so their writes stay private. */
	qemu_arg(&a, "-object");
	if (file_mem)
		qemu_arg(&a, "memory-backend-file,id=mem0,size=%uM,mem-path=%s,share=%s", cfg->memory_mib,
		    cfg->memory_file,
		    cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_TEMPLATE ? "on" : "off");
	else
		qemu_arg(&a, "memory-backend-ram,id=mem0,size=%uM", cfg->memory_mib);
	qemu_arg(&a, "-kernel");
	qemu_arg(&a, "%s", cfg->kernel);
	if (cfg->initrd && *cfg->initrd) {
		qemu_arg(&a, "-initrd");
		qemu_arg(&a, "%s", cfg->initrd);
	}
	qemu_arg(&a, "-append");
	qemu_arg(&a, "%s", cfg->cmdline && *cfg->cmdline ? cfg->cmdline : "console=ttyS0 panic=-1");
	/* QEMU inherits listening sockets we created: we can connect before QEMU
	 * runs, with no window where the socket file does not exist yet. */
	qemu_arg(&a, "-chardev");
	qemu_arg(&a, "socket,id=qmp,fd=%d,server=on,wait=off", fds->qmp);
	qemu_arg(&a, "-mon");
	qemu_arg(&a, "chardev=qmp,mode=control");
	/* QEMU serves one client per monitor: the sandbox's runtime gets its
	 * own, so the daemon keeps stopping and inspecting the VM while the
	 * runtime is connected.  A monitor is no migrated device state, so
	 * clones of a template built without it get one too. */
	if (fds->mon >= 0) {
		qemu_arg(&a, "-chardev");
		qemu_arg(&a, "socket,id=mon1,fd=%d,server=on,wait=off", fds->mon);
		qemu_arg(&a, "-mon");
		qemu_arg(&a, "chardev=mon1,mode=control");
	}
	qemu_arg(&a, "-chardev");
	qemu_arg(&a, "file,id=serial0,path=%s/%s", cfg->run_dir, VMF_QEMU_SERIAL_LOG);
	qemu_arg(&a, "-serial");
	qemu_arg(&a, "chardev:serial0");
	/* Device order fixes PCI addresses: template and clone must match. */
	qemu_arg(&a, "-device");
	qemu_arg(&a, "virtio-serial-pci,id=vser0");
	qemu_arg(&a, "-chardev");
	qemu_arg(&a, "socket,id=agent,fd=%d,server=on,wait=off", fds->agent);
	qemu_arg(&a, "-device");
	qemu_arg(&a, "virtserialport,bus=vser0.0,chardev=agent,name=agent,id=" VMF_QEMU_AGENT_PORT);
	qemu_arg(&a, "-chardev");
	qemu_arg(&a, "socket,id=vmf,fd=%d,server=on,wait=off", fds->vmf_agent);
	qemu_arg(&a, "-device");
	qemu_arg(&a, "virtserialport,bus=vser0.0,chardev=vmf,name=vmf");
	qemu_arg(&a, "-object");
	qemu_arg(&a, "rng-random,id=rng0,filename=/dev/urandom");
	qemu_arg(&a, "-device");
	qemu_arg(&a, "virtio-rng-pci,rng=rng0");
	qemu_arg(&a, "-device");
	qemu_arg(&a, "vmgenid,id=vmgenid0,guid=%s", cfg->vmgenid && *cfg->vmgenid ? cfg->vmgenid : "auto");
	/* An ISA device (no PCI address): the guest's pvpanic driver reports
	 * a kernel panic through it (GUEST_PANICKED). */
	qemu_arg(&a, "-device");
	qemu_arg(&a, "pvpanic");
	qemu_append_disk_devices(&a);
	qemu_append_nic(&a, cfg);
	/* Before the share, which only clones have: the ports' PCI addresses
	 * are the template's. */
	qemu_append_hotplug_ports(&a, cfg);
	if (cfg->share_dir && *cfg->share_dir) {
		qemu_arg(&a, "-fsdev");
		qemu_arg(&a, "local,id=fs0,path=%s,security_model=none", cfg->share_dir);
		qemu_arg(&a, "-device");
		qemu_arg(&a, "virtio-9p-pci,id=share0,fsdev=fs0,mount_tag=" VMF_SHARE_TAG);
	}
	vmf_qemu_append_hotplugged(&a, cfg, accel);
	if (cfg->incoming) {
		/* -S keeps the clone paused after the state is loaded. */
		qemu_arg(&a, "-S");
		qemu_arg(&a, "-incoming");
		qemu_arg(&a, "defer");
	}
	if (runas) {
		/* QEMU opens its files (memory, serial log) as us, then drops to
		 * this user before the guest runs; the 9p share must be the
		 * user's own (the template code chowns it). */
		qemu_arg(&a, "-runas");
		qemu_arg(&a, "%s", cfg->runas);
	}
	if (a.oom) {
		vmf_qemu_free_argv(a.v);
		return vmf_err(err, ENOMEM, "out of memory building the QEMU command line");
	}
	*out = a.v;
	return 0;
}
