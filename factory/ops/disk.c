/* Disks of handed-out VMs: Attach and Detach (docs/protocol.md, "Disks").
 *
 * An attach is two jobs of the VM.  The first opens the caller's file on a
 * worker, as the caller may (sandbox.c's confinement, the caller's own
 * regular files; docs/security.md) or makes a scratch volume; back on the
 * loop, the file's identity (st_dev, st_ino) is checked against every
 * VM's disks, so the same file under another name is still the same disk.
 * The second gives QEMU the open fd (never the path), waits for the guest
 * to see the device and mounts it, then records it.  A failure anywhere
 * leaves nothing attached. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "diskfile.h"
#include "factory.h"
#include "limit.h"
#include "log.h"
#include "ops.h"
#include "qcow2.h"
#include "request.h"
#include "util.h"
#include "vminfo.h"

#define DISK_AGENT_TIMEOUT_MS 20000
#define SCRATCH_MAX_MIB (1u << 20)   /* 1 TiB, sparse */


struct disk_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	struct vmf_vm *vm;
	unsigned slot;
	struct vmf_vm_disk *dk;       /* vm->disks[slot] */
	uid_t peer;
	bool admin;
	uint32_t scratch_mib;
	int fd;
	int base_fd;                  /* cow: the caller's file; fd is the overlay */
	uint64_t dev, ino;
	int rc;
	struct vmf_error err;
};

static void
reply_disk(struct vmf_conn *c, const struct vmf_vm_disk *dk, unsigned slot)
{
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	Vmf__Control__DiskInfo di;
	vmf_disk_info_one(dk, slot, &di);
	r.body_case = VMF__CONTROL__REPLY__BODY_DISK;
	r.disk = &di;
	vmf_request_reply(c, &r);
	vmf_disk_info_one_clear(&di);
}

/* ---- opening the caller's file, on a worker ---- */

static void
open_work(void *arg)
{
	struct disk_job *j = arg;
	struct stat st;
	uint64_t size = 0;
	bool cow = j->dk->kind == VMF_DISK_COW;
	VMF_FAULT_PAUSE("attach-pause");
	if (j->scratch_mib)
		j->fd = vmf_disk_scratch_make(j->dk->path, j->vm->run_dir, j->scratch_mib, &st, &j->err);
	else
		j->fd = vmf_disk_file_open(j->d, j->dk->path, j->peer, j->admin, j->dk->read_only || cow, &st, &j->err);
	int r;
	if (j->fd >= 0 && !j->scratch_mib &&
	    (r = vmf_disk_image_check(j->vm->ops, j->fd, j->dk->format, !j->dk->read_only && !cow, j->dk->path, &st, &size,
			     &j->err)) < 0) {
		vmf_disk_image_release(j->fd);
		j->fd = r;
	}
	if (j->fd >= 0 && cow) {
		j->base_fd = j->fd;
		j->fd = vmf_disk_overlay_make(j->dk->overlay, size, &j->err);
	}
	if (j->fd < 0) {
		j->rc = j->fd;
		return;
	}
	j->dev = (uint64_t)st.st_dev;
	j->ino = (uint64_t)st.st_ino;
}

/* ---- attaching, on a worker ---- */

static void
attach_work(void *arg)
{
	struct disk_job *j = arg;
	struct vmf_vm *vm = j->vm;
	struct vmf_vm_disk *dk = j->dk;
	struct vmf_error *err = &j->err;
	char serial[VMF_DISK_SERIAL_MAX + 1];
	vmf_disk_serial(j->slot, serial);
	struct vmf_disk_spec spec = {
		.slot = j->slot, .fd = j->fd, .read_only = dk->read_only, .format = dk->format, .serial = serial,
		.backing_fd = -1,
	};
	if (dk->kind == VMF_DISK_COW) {
		spec.format = "qcow2";
		spec.backing_fd = j->base_fd;
		spec.backing_format = dk->format;
	}
	if (!vm->hv || !vm->ops->alive(vm->hv)) {
		j->rc = vmf_err(err, ESRCH, "the VM's process is not running");
		return;
	}
	int64_t t0 = vmf_now_ms();
	/* A daemon killed mid-attach (before the record) may have left the
	 * slot's device behind in the VMM: it goes first. */
	struct vmf_error e0 = {0};
	vm->ops->detach_disk(vm->hv, j->slot, &e0);
	if ((j->rc = vm->ops->attach_disk(vm->hv, &spec, err)) < 0)
		return;
	struct vmf_agent *a = NULL;
	struct vmf_error e2 = {0};
	if ((j->rc = vmf_agent_open(vm->ops->agent_connect, vm->hv, DISK_AGENT_TIMEOUT_MS, &a, err)) == 0 &&
	    (j->rc = vmf_agent_mount_disk(a, serial, dk->guest_path, dk->fstype, dk->read_only, dk->guest_device,
					  sizeof(dk->guest_device), DISK_AGENT_TIMEOUT_MS, err)) < 0)
		vmf_error_prefix(err, "the guest could not %s disk %s", dk->guest_path[0] ? "mount" : "find",
				 dk->path);
	VMF_FAULT("attach-record");
	if (j->rc == 0 && (j->rc = vmf_cache_put_vm_record(&j->d->cache, vm, vm->state, err)) < 0)
		vmf_error_prefix(err, "disk %s attached but not recorded, so detached again", dk->path);
	if (j->rc < 0) {
		/* Nothing half-attached: the guest lets the device go, then
		 * QEMU drops it. */
		if (a)
			vmf_agent_unmount_disk(a, serial, dk->guest_path, DISK_AGENT_TIMEOUT_MS, &e2);
		if (vm->ops->detach_disk(vm->hv, j->slot, &e2) < 0)
			log_vm(VMF_LOG_WARN, vm->id, "detaching disk %s after a failed attach: %s", dk->path, e2.msg);
	} else {
		log_vm(VMF_LOG_INFO, vm->id, "attached %s %s as %s%s%s in %lld ms", vmf_disk_kind_name(dk->kind), dk->path,
		       dk->guest_device, dk->guest_path[0] ? " at " : "", dk->guest_path,
		       (long long)(vmf_now_ms() - t0));
	}
	vmf_agent_free(a);
}

static void
release_vm_job(struct disk_job *j)
{
	struct vmf_daemon *d = j->d;
	vmf_request_vm_back(d, j->vm, NULL);
	free(j);
	vmf_daemon_settle(d);
}

/* The slot's reservation ends: the attach failed. */
static void
attach_failed(struct disk_job *j)
{
	vmf_disk_image_release(j->fd);
	vmf_disk_image_release(j->base_fd);
	if (j->dk->kind == VMF_DISK_SCRATCH && j->scratch_mib && j->rc != -EEXIST)
		unlink(j->dk->path);
	if (j->dk->kind == VMF_DISK_COW && j->fd >= 0)
		unlink(j->dk->overlay);
	j->vm->disks[j->slot] = NULL;
	free(j->dk);
	vmf_request_fail(j->c, -j->rc, j->err.msg);
	release_vm_job(j);
}

static void
attach_done(void *arg)
{
	struct disk_job *j = arg;
	vmf_disk_image_release(j->base_fd);
	j->base_fd = -1;
	if (j->rc < 0) {
		attach_failed(j);
		return;
	}
	vmf_disk_image_release(j->fd);
	j->fd = -1;
	j->dk->attaching = false;
	reply_disk(j->c, j->dk, j->slot);
	release_vm_job(j);
}

/* Whether the disk writes to its file (a cow disk writes to its overlay). */
static bool
writes_file(const struct vmf_vm_disk *dk)
{
	return !dk->read_only && dk->kind != VMF_DISK_COW;
}

/* Another VM's disk (or this VM's, under another name) that is the same
 * file, where either is writable: two writers, or a reader whose view a
 * writer changes under it. */
static int
check_conflict(struct vmf_daemon *d, const struct disk_job *j, struct vmf_error *err)
{
	struct vmf_vm *v;
	TAILQ_FOREACH(v, &d->cache.vms, link)
		for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
			const struct vmf_vm_disk *o = v->disks[i];
			if (!o || o == j->dk || o->dev != j->dev || o->ino != j->ino)
				continue;
			if (!writes_file(o) && !writes_file(j->dk))
				continue;
			const char *where = v == j->vm ? "this VM" : "another VM";
			return vmf_err(err, EBUSY, "disk %s is already attached %s to %s (as %s); a disk "
				       "attached read-write is attached nowhere else", j->dk->path,
				       writes_file(o) ? "read-write" : o->kind == VMF_DISK_COW ? "read-only (copy-on-write)"
				       : "read-only", where, o->path);
		}
	return 0;
}

static void
open_done(void *arg)
{
	struct disk_job *j = arg;
	struct vmf_daemon *d = j->d;
	if (j->rc == 0 && j->vm->dead)
		j->rc = vmf_err(&j->err, ESRCH, "VM %s exited", j->vm->id);
	if (j->rc == 0 && d->cache.stopping)
		j->rc = vmf_err(&j->err, ESHUTDOWN, "the daemon is shutting down");
	if (j->rc == 0)
		j->rc = check_conflict(d, j, &j->err);
	if (j->rc < 0) {
		attach_failed(j);
		return;
	}
	j->dk->dev = j->dev;
	j->dk->ino = j->ino;
	if (vmf_jobs_submit(d->cache.jobs, attach_work, attach_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the attach work");
		attach_failed(j);
	}
}

/* ---- requests, on the loop ---- */

static bool
valid_guest_path(const char *p)
{
	if (!*p)
		return true;
	if (p[0] != '/' || strlen(p) >= 1024 || strcmp(p, "/") == 0)
		return false;
	for (const char *c = p; *c; c++)
		if ((unsigned char)*c < 0x20)
			return false;
	return !strstr(p, "/./") && !strstr(p, "/../") && strcmp(p + strlen(p) - 2, "/.") != 0 &&
	       (strlen(p) < 3 || strcmp(p + strlen(p) - 3, "/..") != 0);
}

static bool
valid_fstype(const char *s)
{
	size_t n = strlen(s);
	if (n > 31)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

static void
attach_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *request)
{
	const Vmf__Control__AttachRequest *req = request->attach;
	char msg[PATH_MAX + 200];
	const char *path = req->path ? req->path : "";
	const char *format = req->format && *req->format ? req->format : "raw";
	const char *guest_path = req->guest_path ? req->guest_path : "";
	const char *fstype = req->fstype ? req->fstype : "";
	bool scratch = req->scratch_mib > 0;
	/* The request's own checks first: they need no VM. */
	const char *bad = NULL;
	if (scratch == (*path != '\0'))
		bad = "an attach names either a disk path or a scratch volume size, exactly one";
	else if (!scratch && (path[0] != '/' || strlen(path) >= PATH_MAX - 1))
		bad = "disk path must be absolute";
	else if (scratch && req->scratch_mib > SCRATCH_MAX_MIB)
		bad = "scratch volume size is above 1048576 MiB";
	else if (strcmp(format, "raw") != 0 && strcmp(format, "qcow2") != 0)
		bad = "disk format must be raw or qcow2";
	else if (scratch && (strcmp(format, "raw") != 0 || req->read_only || req->cow || (*fstype && strcmp(fstype, "ext4"))))
		bad = "a scratch volume is raw, read-write and ext4";
	else if (req->cow && req->read_only)
		bad = "a copy-on-write disk is written to its overlay: not read-only";
	else if (!valid_guest_path(guest_path))
		bad = "guest mount path must be absolute, not /, without . or .. components";
	else if (!valid_fstype(fstype))
		bad = "file system type must be up to 31 lower-case letters, digits and '_'";
	if (bad) {
		vmf_request_fail(c, EINVAL, bad);
		return;
	}
	struct vmf_vm *vm = vmf_request_vm(d, c, req->vm_id);
	if (!vm)
		return;
	if (vm->state != VMF_VM_ASSIGNED) {
		char st[900];
		snprintf(msg, sizeof(msg), "VM %s is not assigned (it is %s): only a handed-out VM gets disks", vm->id,
			 vmf_vm_state_desc(vm, st, sizeof(st)));
		vmf_request_fail(c, EINVAL, msg);
		return;
	}
	if (!vm->ops->attach_disk) {
		snprintf(msg, sizeof(msg), "driver %s cannot attach disks", vm->ops->name);
		vmf_request_fail(c, ENOTSUP, msg);
		return;
	}
	/* In the run dir, a tmpfs in production: its size is the host's RAM
	 * once the guest writes it. */
	struct vmf_error lerr;
	if (scratch && vmf_limit_scratch(d, vm, req->scratch_mib, &lerr) < 0) {
		vmf_request_fail(c, lerr.code, lerr.msg);
		return;
	}
	unsigned slot = VMF_DISK_SLOTS;
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
		const struct vmf_vm_disk *o = vm->disks[i];
		if (!o) {
			if (slot == VMF_DISK_SLOTS &&
			    (!vm->ops->disk_slot_fits || vm->ops->disk_slot_fits(i, req->read_only)))
				slot = i;
			continue;
		}
		if ((*path && strcmp(o->path, path) == 0) || (*guest_path && strcmp(o->guest_path, guest_path) == 0)) {
			snprintf(msg, sizeof(msg), "VM %s already has disk %s%s%s", vm->id, o->path,
				 o->guest_path[0] ? " mounted at " : "", o->guest_path);
			vmf_request_fail(c, EBUSY, msg);
			return;
		}
	}
	if (slot == VMF_DISK_SLOTS && vm->ops->disk_slot_fits) {
		snprintf(msg, sizeof(msg), "VM %s has no free %s disk slot left (driver %s has a fixed number of "
			 "each)", vm->id, req->read_only ? "read-only" : "read-write", vm->ops->name);
		vmf_request_fail(c, ENOSPC, msg);
		return;
	}
	if (slot == VMF_DISK_SLOTS) {
		snprintf(msg, sizeof(msg), "VM %s has %d disks attached, the most it may have", vm->id, VMF_DISK_SLOTS);
		vmf_request_fail(c, ENOSPC, msg);
		return;
	}
	struct disk_job *j = calloc(1, sizeof(*j));
	struct vmf_vm_disk *dk = calloc(1, sizeof(*dk));
	if (!j || !dk) {
		free(j);
		free(dk);
		vmf_request_fail(c, ENOMEM, "out of memory");
		return;
	}
	dk->kind = scratch ? VMF_DISK_SCRATCH : req->cow ? VMF_DISK_COW : VMF_DISK_FILE;
	if (scratch)
		snprintf(dk->path, sizeof(dk->path), "%s/scratch-%u.img", vm->run_dir, slot);
	else
		snprintf(dk->path, sizeof(dk->path), "%s", path);
	if (req->cow)
		snprintf(dk->overlay, sizeof(dk->overlay), "%s/cow-%u.qcow2", vm->run_dir, slot);
	snprintf(dk->guest_path, sizeof(dk->guest_path), "%s", guest_path);
	snprintf(dk->format, sizeof(dk->format), "%s", format);
	snprintf(dk->fstype, sizeof(dk->fstype), "%s", *fstype ? fstype : "ext4");
	dk->read_only = req->read_only;
	dk->attaching = true;
	vm->disks[slot] = dk;
	j->d = d;
	j->c = c;
	j->vm = vm;
	j->slot = slot;
	j->dk = dk;
	j->fd = -1;
	j->base_fd = -1;
	j->peer = vmf_request_peer(c);
	j->admin = vmf_request_admin(d, c);
	j->scratch_mib = req->scratch_mib;
	vm->busy = true;
	if (vmf_jobs_submit(d->cache.jobs, open_work, open_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the attach work");
		attach_failed(j);
	}
}

/* ---- detach ---- */

static void
detach_work(void *arg)
{
	struct disk_job *j = arg;
	struct vmf_vm *vm = j->vm;
	struct vmf_vm_disk *dk = j->dk;
	struct vmf_error *err = &j->err;
	char serial[VMF_DISK_SERIAL_MAX + 1];
	vmf_disk_serial(j->slot, serial);
	if (!vm->hv || !vm->ops->alive(vm->hv)) {
		j->rc = vmf_err(err, ESRCH, "the VM's process is not running");
		return;
	}
	/* The guest first: a file system still mounted on a device that
	 * vanishes loses what it had not written. */
	struct vmf_agent *a = NULL;
	if ((j->rc = vmf_agent_open(vm->ops->agent_connect, vm->hv, DISK_AGENT_TIMEOUT_MS, &a, err)) == 0 &&
	    (j->rc = vmf_agent_unmount_disk(a, serial, dk->guest_path, DISK_AGENT_TIMEOUT_MS, err)) < 0)
		vmf_error_prefix(err, "disk %s stays attached: the guest could not let it go", dk->path);
	vmf_agent_free(a);
	if (j->rc < 0)
		return;
	if ((j->rc = vm->ops->detach_disk(vm->hv, j->slot, err)) < 0)
		return;
	/* A daemon killed here leaves the disk recorded, its device gone from
	 * the guest and the VMM: a detach of it again finishes the job. */
	VMF_FAULT("detach-unplugged");
	if (dk->kind == VMF_DISK_SCRATCH && unlink(dk->path) < 0 && errno != ENOENT)
		log_vm(VMF_LOG_WARN, vm->id, "removing scratch volume %s: %s", dk->path, strerror(errno));
	if (dk->kind == VMF_DISK_COW && unlink(dk->overlay) < 0 && errno != ENOENT)
		log_vm(VMF_LOG_WARN, vm->id, "removing overlay %s: %s", dk->overlay, strerror(errno));
	if (vmf_cache_put_vm_record(&j->d->cache, vm, vm->state, err) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record the detach of %s: %s", dk->path, err->msg);
	j->rc = 0;
	log_vm(VMF_LOG_INFO, vm->id, "detached %s %s", vmf_disk_kind_name(dk->kind), dk->path);
}

static void
detach_done(void *arg)
{
	struct disk_job *j = arg;
	if (j->rc < 0) {
		j->dk->detaching = false;
		vmf_request_fail(j->c, -j->rc, j->err.msg);
	} else {
		reply_disk(j->c, j->dk, j->slot);
		j->vm->disks[j->slot] = NULL;
		free(j->dk);
	}
	release_vm_job(j);
}

static void
detach_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *request)
{
	const Vmf__Control__DetachRequest *req = request->detach;
	const char *path = req->path ? req->path : "";
	if (!*path) {
		vmf_request_fail(c, EINVAL, "detach names the disk: its path, or where the guest mounted it");
		return;
	}
	struct vmf_vm *vm = vmf_request_vm(d, c, req->vm_id);
	if (!vm)
		return;
	unsigned slot = VMF_DISK_SLOTS;
	for (unsigned i = 0; i < VMF_DISK_SLOTS && slot == VMF_DISK_SLOTS; i++)
		if (vm->disks[i] && (strcmp(vm->disks[i]->path, path) == 0 ||
				     (vm->disks[i]->guest_path[0] && strcmp(vm->disks[i]->guest_path, path) == 0)))
			slot = i;
	if (slot == VMF_DISK_SLOTS) {
		char msg[PATH_MAX + 100];
		snprintf(msg, sizeof(msg), "no disk %s is attached to VM %s", path, vm->id);
		vmf_request_fail(c, ENOENT, msg);
		return;
	}
	if (vm->state != VMF_VM_ASSIGNED) {
		char msg[1024], st[900];
		snprintf(msg, sizeof(msg), "VM %s is %s: release it, which detaches its disks", vm->id,
			 vmf_vm_state_desc(vm, st, sizeof(st)));
		vmf_request_fail(c, EINVAL, msg);
		return;
	}
	struct disk_job *j = vmf_request_job_new(c, sizeof(*j));
	if (!j)
		return;
	j->d = d;
	j->c = c;
	j->vm = vm;
	j->slot = slot;
	j->dk = vm->disks[slot];
	j->fd = -1;
	j->base_fd = -1;
	j->dk->detaching = true;
	vm->busy = true;
	if (vmf_jobs_submit(d->cache.jobs, detach_work, detach_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the detach work");
		detach_done(j);
	}
}

const struct vmf_op vmf_op_attach = {
	.name = "attach", .body = VMF__CONTROL__REQUEST__BODY_ATTACH, .start = attach_start,
};

const struct vmf_op vmf_op_detach = {
	.name = "detach", .body = VMF__CONTROL__REQUEST__BODY_DETACH, .start = detach_start,
};
