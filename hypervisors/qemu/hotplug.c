/* vCPU and memory hot-plug: live on a running QEMU, and the same devices
 * on the command line of a QEMU that loads a state which has them. */
#include "qemu_vm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Free PCIe root ports for the runtime: q35's root bus takes no PCI
 * hot-plug, a root port does (native PCIe hot-plug, Kata's
 * pcie_root_port).  Each has its own chassis number, which QEMU requires
 * to be unique among slots that take hot-plug. */
void
qemu_append_hotplug_ports(struct argv_buf *a, const vmf_vm_config *cfg)
{
	unsigned n = cfg->hotplug_ports < VMF_HOTPLUG_PORTS_MAX ? cfg->hotplug_ports : VMF_HOTPLUG_PORTS_MAX;
	for (unsigned i = 0; i < n; i++) {
		qemu_arg(a, "-device");
		qemu_arg(a, "pcie-root-port,id=" VMF_HOTPLUG_PORT_FMT ",bus=pcie.0,chassis=%u,slot=0", i, i + 1);
	}
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
		qemu_arg(a, "-device");
		qemu_arg(a, "%s,id=vcpu%u,socket-id=0,core-id=%u,thread-id=0", type, k, k);
	}
	const char *share = cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_TEMPLATE ? "on" : "off";
	for (size_t i = 0; i < cfg->n_dimms; i++) {
		const Vmf__Hv__HotDimm *dm = cfg->dimms[i];
		qemu_arg(a, "-object");
		if (dm->mem_path && *dm->mem_path)
			qemu_arg(a, "memory-backend-file,id=hotmem%zu,size=%uM,mem-path=%s,share=%s", i, dm->size_mib,
			    dm->mem_path, share);
		else
			qemu_arg(a, "memory-backend-ram,id=hotmem%zu,size=%uM", i, dm->size_mib);
		qemu_arg(a, "-device");
		if (dm->addr)
			qemu_arg(a, "pc-dimm,id=dimm%zu,memdev=hotmem%zu,addr=%llu", i, i, (unsigned long long)dm->addr);
		else
			qemu_arg(a, "pc-dimm,id=dimm%zu,memdev=hotmem%zu", i, i);
	}
}

int
qemu_hotplug_vcpus(struct vmf_vmm *vm, unsigned total, struct vmf_error *err)
{
	if (total <= vm->vcpus)
		return 0;
	json_object *ret = NULL;
	int r = qemu_qmp_cmd(vm, "query-hotpluggable-cpus", NULL, &ret, err);
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
		r = qemu_qmp_cmd(vm, "device_add", args, NULL, err);
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

int
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
	r = qemu_qmp_cmd(vm, "object-add", args, NULL, err);
	json_object_put(args);
	if (r < 0)
		return r;
	args = json_object_new_object();
	json_object_object_add(args, "driver", json_object_new_string("pc-dimm"));
	json_object_object_add(args, "id", json_object_new_string(dimm));
	json_object_object_add(args, "memdev", json_object_new_string(mem));
	r = qemu_qmp_cmd(vm, "device_add", args, NULL, err);
	json_object_put(args);
	if (r < 0) {
		/* Leave no orphan backend that would block the next attempt's id. */
		args = json_object_new_object();
		json_object_object_add(args, "id", json_object_new_string(mem));
		struct vmf_error ignored;
		qemu_qmp_cmd(vm, "object-del", args, NULL, &ignored);
		json_object_put(args);
		return r;
	}
	vm->dimm_mib[vm->n_dimm_mib++] = add_mib;
	vm->dimms++;
	vm->memory_mib += add_mib;
	return 0;
}

