/* A VM as a reply shows it: its VmInfo (with its disks), a stop's report,
 * its state in a sentence; and the hand-out steps' names (status,
 * metrics). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "factory.h"
#include "leases.h"
#include "log.h"
#include "vminfo.h"

const char *const vmf_step_names[VMF_STEP_COUNT] = {
	"resume", "hotplug", "online", "reseed", "time", "mount", "links", "record", "net", "total",
};

/* Every string of info is its own (vmf_vm_info_clear or the status reply's
 * free_unpacked frees them).  pss_kib comes from a worker: reading
 * /proc/PID/smaps_rollup walks the whole address space, so not on the loop. */
void
vmf_vm_info_fill(struct vmf_daemon *d, const struct vmf_vm *vm, uint64_t pss_kib, Vmf__Control__VmInfo *info)
{
	char qmp[PATH_MAX + 16], agent[PATH_MAX + 16];
	vmf__control__vm_info__init(info);
	info->id = strdup(vm->id);
	/* While busy a worker owns hv (and may be setting it).  Every driver
	 * call goes through the VM's own driver. */
	info->pid = !vm->busy && vm->hv ? vm->ops->pid(vm->hv) : 0;
	info->vcpus = vm->vcpus;
	info->memory_mib = vm->memory_mib;
	snprintf(qmp, sizeof(qmp), "%s/%s", vm->run_dir, vm->ops->sandbox_control_socket);
	snprintf(agent, sizeof(agent), "%s/%s", vm->run_dir, vm->ops->agent_socket);
	info->qmp_socket = strdup(qmp);
	info->agent_socket = strdup(agent);
	info->agent_transport = strdup(vm->ops->agent_transport ? vm->ops->agent_transport : "unix");
	info->agent_vsock_port = vm->ops->agent_vsock_port;
	info->share_dir = strdup(d->hv.caps & VMF_CAP_SHARE_DEVICE ? vm->share_dir : "");
	info->run_dir = strdup(vm->run_dir);
	info->template_id = strdup(vm->template_id);
	info->pool = strdup(vm->pool ? vm->pool->name : "");
	info->state = strdup(vmf_vm_state_name(vm->state));
	info->sandbox_id = strdup(vm->sandbox_id);
	info->share_link = strdup(vm->share_link);
	info->sock_link = strdup(vm->sock_link);
	info->created_ns = vm->created_ns;
	info->owner_uid = (uint32_t)vm->owner_uid;
	info->boot_id = strdup(vm->boot_id);
	info->machine_id = strdup(vm->machine_id);
	info->hostname = strdup(vm->hostname);
	info->clock_error_ms = vm->clock_error_ms;
	info->net = strdup(vm->net[0] ? vm->net : "none");
	info->netns = strdup(vm->netns);
	info->netns_link = strdup(vm->netns_link);
	info->mac = strdup(vm->mac);
	info->net_outbound = vm->net_outbound;
	info->hostfwd = vm->n_hostfwd ? calloc(vm->n_hostfwd, sizeof(char *)) : NULL;
	for (unsigned i = 0; info->hostfwd && i < vm->n_hostfwd; i++)
		info->hostfwd[info->n_hostfwd++] = strdup(vm->hostfwd[i]);
	info->state_file = strdup(vm->state == VMF_VM_SUSPENDED ? vm->state_file : "");
	info->state_size = vm->state == VMF_VM_SUSPENDED ? vm->state_size : 0;
	info->suspended_ns = vm->state == VMF_VM_SUSPENDED ? vm->suspended_ns : 0;
	info->lease_deadline_ns = vm->lease_deadline_ns;
	info->lease_on_expiry = strdup(vm->lease_deadline_ns ? vmf_lease_action(vm) : "");
	info->pss_kib = info->pid > 0 && !vm->dead ? pss_kib : 0;
	vmf_disk_info_fill(vm, info);
	info->exit = vmf_vm_exit_dup(vm->exit);
	info->cgroups = vm->n_cgroups ? calloc(vm->n_cgroups, sizeof(char *)) : NULL;
	for (unsigned i = 0; info->cgroups && i < vm->n_cgroups; i++)
		if ((info->cgroups[info->n_cgroups] = strdup(vm->cgroups[i])))
			info->n_cgroups++;
	if (!vm->busy && vm->hv) {
		struct vmf_error err;
		vm->ops->serialize(vm->hv, &info->hypervisor, &err);
	}
	/* The ports are its VMM's command line, which its record keeps. */
	unsigned ports = info->hypervisor && info->hypervisor->config ? info->hypervisor->config->hotplug_ports : 0;
	ports = ports < VMF_HOTPLUG_PORTS_MAX ? ports : VMF_HOTPLUG_PORTS_MAX;
	info->hotplug_ports = ports ? calloc(ports, sizeof(char *)) : NULL;
	for (unsigned i = 0; info->hotplug_ports && i < ports; i++) {
		char name[32];
		snprintf(name, sizeof(name), VMF_HOTPLUG_PORT_FMT, i);
		if ((info->hotplug_ports[info->n_hotplug_ports] = strdup(name)))
			info->n_hotplug_ports++;
	}
}

void
vmf_vm_info_clear(Vmf__Control__VmInfo *info)
{
	char **strs[] = { &info->id, &info->qmp_socket, &info->agent_socket, &info->agent_transport,
			  &info->share_dir, &info->run_dir,
			  &info->template_id, &info->pool, &info->state, &info->sandbox_id, &info->share_link,
			  &info->sock_link, &info->boot_id, &info->machine_id, &info->hostname, &info->net,
			  &info->netns, &info->netns_link, &info->mac, &info->state_file, &info->lease_on_expiry };
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
		free(*strs[i]);
		*strs[i] = NULL;
	}
	for (size_t i = 0; i < info->n_hostfwd; i++)
		free(info->hostfwd[i]);
	free(info->hostfwd);
	info->hostfwd = NULL;
	info->n_hostfwd = 0;
	if (info->hypervisor)
		vmf__hv__hypervisor_state__free_unpacked(info->hypervisor, NULL);
	info->hypervisor = NULL;
	if (info->exit)
		vmf__hv__vm_exit__free_unpacked(info->exit, NULL);
	info->exit = NULL;
	for (size_t i = 0; i < info->n_cgroups; i++)
		free(info->cgroups[i]);
	free(info->cgroups);
	info->cgroups = NULL;
	info->n_cgroups = 0;
	for (size_t i = 0; i < info->n_hotplug_ports; i++)
		free(info->hotplug_ports[i]);
	free(info->hotplug_ports);
	info->hotplug_ports = NULL;
	info->n_hotplug_ports = 0;
	vmf_disk_info_clear(info);
}

const char *
vmf_disk_kind_name(enum vmf_disk_kind k)
{
	return k == VMF_DISK_SCRATCH ? "scratch" : k == VMF_DISK_COW ? "cow" : "disk";
}

void
vmf_disk_info_one(const struct vmf_vm_disk *dk, unsigned slot, Vmf__Control__DiskInfo *di)
{
	char serial[VMF_DISK_SERIAL_MAX + 1];
	vmf_disk_serial(slot, serial);
	vmf__control__disk_info__init(di);
	di->path = strdup(dk->path);
	di->read_only = dk->read_only;
	di->format = strdup(dk->format);
	di->guest_path = strdup(dk->guest_path);
	di->fstype = strdup(dk->fstype);
	di->serial = strdup(serial);
	di->kind = strdup(vmf_disk_kind_name(dk->kind));
	di->guest_device = strdup(dk->guest_device);
}

void
vmf_disk_info_one_clear(Vmf__Control__DiskInfo *di)
{
	free(di->path);
	free(di->format);
	free(di->guest_path);
	free(di->fstype);
	free(di->serial);
	free(di->kind);
	free(di->guest_device);
}

void
vmf_disk_info_fill(const struct vmf_vm *vm, Vmf__Control__VmInfo *info)
{
	size_t n = 0;
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++)
		n += vm->disks[i] && !vm->disks[i]->attaching;
	if (n == 0 || !(info->disks = calloc(n, sizeof(*info->disks))))
		return;
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
		const struct vmf_vm_disk *dk = vm->disks[i];
		if (!dk || dk->attaching)
			continue;
		Vmf__Control__DiskInfo *di = malloc(sizeof(*di));
		if (!di)
			break;
		vmf_disk_info_one(dk, i, di);
		info->disks[info->n_disks++] = di;
	}
}

void
vmf_disk_info_clear(Vmf__Control__VmInfo *info)
{
	for (size_t i = 0; i < info->n_disks; i++) {
		vmf_disk_info_one_clear(info->disks[i]);
		free(info->disks[i]);
	}
	free(info->disks);
	info->disks = NULL;
	info->n_disks = 0;
}

/* The StopReport of a reply (strings borrowed from rep). */
void
vmf_stop_report_fill(const struct vmf_stop_report *rep, Vmf__Control__StopReport *sr, char **lost)
{
	vmf__control__stop_report__init(sr);
	sr->method = (char *)rep->method;
	for (unsigned i = 0; i < rep->n_lost; i++)
		lost[i] = (char *)rep->lost[i];
	sr->lost_writes = lost;
	sr->n_lost_writes = rep->n_lost;
	sr->guest_ms = rep->guest_ms;
	sr->forced = rep->forced;
}

const char *
vmf_vm_state_desc(const struct vmf_vm *vm, char *buf, size_t n)
{
	if (vm->state == VMF_VM_GONE && vm->exit && vm->exit->detail[0])
		snprintf(buf, n, "gone: %s", vm->exit->detail);
	else
		snprintf(buf, n, "%s", vmf_vm_state_name(vm->state));
	return buf;
}
