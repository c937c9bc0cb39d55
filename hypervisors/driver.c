/* Driver registry and helpers shared by all drivers. */
#include "driver.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
	unsigned cap;
	const char *name;
} cap_names[] = {
	{ VMF_CAP_TEMPLATE_SHARE, "template-share" },
	{ VMF_CAP_CPU_HOTPLUG, "cpu-hotplug" },
	{ VMF_CAP_MEM_HOTPLUG, "memory-hotplug" },
	{ VMF_CAP_SHARE_DEVICE, "share-device" },
	{ VMF_CAP_VMGENID, "vmgenid" },
	{ VMF_CAP_FULL_SNAPSHOT, "full-snapshot" },
};

const char *
vmf_cap_name(unsigned cap)
{
	for (size_t i = 0; i < sizeof(cap_names) / sizeof(cap_names[0]); i++)
		if (cap_names[i].cap == cap)
			return cap_names[i].name;
	return "unknown";
}

/* Drivers present in this build; firecracker and cloud-hypervisor register
 * here when their files are built. */
static const struct vmf_hv_ops *const drivers[] = {
	&vmf_qemu_ops,
#ifdef VMF_HAVE_FIRECRACKER
	&vmf_firecracker_ops,
#endif
#ifdef VMF_HAVE_CLOUD_HYPERVISOR
	&vmf_cloud_hypervisor_ops,
#endif
};

const struct vmf_hv_ops *
vmf_hv_by_name(const char *name)
{
	for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++)
		if (name && strcmp(drivers[i]->name, name) == 0)
			return drivers[i];
	return NULL;
}

const struct vmf_hv_ops *
vmf_hv_by_kind(Vmf__Hv__HypervisorKind kind)
{
	for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++)
		if (drivers[i]->kind == kind)
			return drivers[i];
	return NULL;
}

vmf_vm_config *
vmf_vm_config_dup(const vmf_vm_config *cfg)
{
	size_t n = vmf__hv__vm_config__get_packed_size(cfg);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return NULL;
	vmf__hv__vm_config__pack(cfg, buf);
	vmf_vm_config *copy = vmf__hv__vm_config__unpack(NULL, n, buf);
	free(buf);
	return copy;
}

void
vmf_vm_config_free(vmf_vm_config *cfg)
{
	if (cfg)
		vmf__hv__vm_config__free_unpacked(cfg, NULL);
}

int
vmf_hotplug_mem_check(const vmf_vm_config *cfg, unsigned current_mib, unsigned add_mib, struct vmf_error *err)
{
	if (current_mib + add_mib > cfg->max_memory_mib)
		return vmf_err(err, ENOSPC, "VM %s: %u MiB + %u MiB exceeds max memory %u MiB", cfg->id,
			       current_mib, add_mib, cfg->max_memory_mib);
	return 0;
}

void
vmf_disk_serial(unsigned slot, char out[VMF_DISK_SERIAL_MAX + 1])
{
	snprintf(out, VMF_DISK_SERIAL_MAX + 1, "vmfd%u", slot);
}
