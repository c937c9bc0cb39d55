/* Networking: a NIC on the command line whose backend a hand-out plugs
 * in later (a tap or user-mode networking). */
#include "qemu_vm.h"

#include <errno.h>

/* The network block: a virtio-net NIC whose backend is a port of
 * hub 0.  The hub is no device state, so the template and every clone have
 * the NIC, probed once at the template's boot, and a hand-out only plugs a
 * backend (tap or user-mode) into the hub with netdev_add: no PCI hot-plug,
 * no guest driver probe on the hand-out path (qemu_net_attach). */
void
qemu_append_nic(struct argv_buf *a, const vmf_vm_config *cfg)
{
	if (!cfg->nic)
		return;
	qemu_arg(a, "-netdev");
	qemu_arg(a, "hubport,id=" VMF_QEMU_NIC_HUBPORT ",hubid=0");
	qemu_arg(a, "-device");
	qemu_arg(a, "virtio-net-pci,id=nic0,netdev=" VMF_QEMU_NIC_HUBPORT);
}

static int
netdev_add(struct vmf_vmm *vm, json_object *args, struct vmf_error *err)
{
	int r = qemu_qmp_cmd(vm, "netdev_add", args, NULL, err);
	json_object_put(args);
	return r;
}

/* Plugs the hand-out's backend into the NIC's hub: a tap (its fd passed
 * with getfd; the tap lives in the sandbox's namespace) or user-mode
 * networking with the forwards. */
int
qemu_net_attach(struct vmf_vmm *vm, const struct vmf_net_backend *nb, struct vmf_error *err)
{
	if (!vm->cfg->nic)
		return vmf_err(err, ENOTSUP, "VM %s has no NIC: its template was built with nic = no",
			       vm->cfg->id);
	json_object *args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string(VMF_QEMU_NET_BACKEND));
	if (nb->tap_fd >= 0) {
		int r = qemu_pass_fd(vm, "nettap", nb->tap_fd, err);
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
