/* Disks: a virtio-scsi controller on every VM's command line, and the
 * caller's files hot-plugged onto its bus as scsi-hd devices over nodes
 * QEMU opens from file descriptors we pass (it never opens a path). */
#include "qemu_vm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "frame.h"
#include "qmp.h"
#include "util.h"

/* Disks: q35's root bus takes no PCI hot-plug, so the template carries a
 * virtio-scsi controller and a disk is a scsi-hd hot-plugged onto its bus
 * (vmfactory attach): SCSI hot-plug needs no PCI slot, and its unplug no
 * guest cooperation.  Before the 9p share, which only clones have: the
 * PCI addresses of template and clone must match. */
void
qemu_append_disk_devices(struct argv_buf *a)
{
	qemu_arg(a, "-device");
	qemu_arg(a, "virtio-scsi-pci,id=" VMF_QEMU_SCSI_BUS);
}

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
	int r = qemu_qmp_cmd(vm, "blockdev-add", f, NULL, err);
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
	r = qemu_qmp_cmd(vm, "blockdev-add", fmt, NULL, err);
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

int
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
	r = qemu_qmp_cmd(vm, "device_add", dev, NULL, err);
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

int
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
		bool ours = strcmp(qemu_member_str(data, "device"), node) == 0;
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
