/* A suspended VM's saved state and its guest around a save: where the
 * state file lives and its removal, the read-write disks frozen and
 * thawed, the agent reached and the owner's port primed; and, at a
 * restart, the VMs recorded mid-suspend finished or rolled back, and the
 * state files no suspended VM names removed.  The suspend and resume
 * jobs themselves are suspendjob.c. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"
#include "factory.h"
#include "log.h"
#include "sockaddr.h"
#include "suspended.h"

/* The read-write disks of a VM whose state is saved, or which runs again:
 * frozen before the save (their writes on the host files, consistent, even
 * if the saved state is lost), thawed once it runs again.  Best effort:
 * the VM's RAM, saved, still holds what a disk did not get. */
void
vmf_suspended_freeze_disks(struct vmf_daemon *d, struct vmf_vm *vm, bool thaw, struct vmf_stop_report *rep)
{
	const struct vmf_stop_policy *pol = vmf_cache_stop_policy(&d->cache, vm);
	if (pol->mode == VMF_STOP_KILL)
		return;
	struct vmf_stop_report local = {0};
	if (vmf_cache_guest_stop(&d->cache, vm, thaw ? VMF_AGENT_THAW : VMF_AGENT_FREEZE, false, true, pol->timeout_ms,
				 rep ? rep : &local) > 0 && rep)
		snprintf(rep->method, sizeof(rep->method), "freeze");
}

void
vmf_suspended_state_path(const struct vmf_daemon *d, const char *id, char *out, size_t n)
{
	snprintf(out, n, "%s/%s/%s.state", d->opts.state_dir, VMF_SUSPEND_DIR, id);
}

void
vmf_suspended_remove_files(const char *file)
{
	char tmp[PATH_MAX + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", file);
	unlink(tmp);
	unlink(file);
}

struct vmf_agent *
vmf_suspended_agent_open(struct vmf_vm *vm, struct vmf_error *err)
{
	struct vmf_agent *a = NULL;
	vmf_agent_open(vm->ops->agent_connect, vm->hv, VMF_SUSPEND_AGENT_TIMEOUT_MS, &a, err);
	return a;
}

/* The owner's agent port answers a ping.  The first host connection to a
 * virtio-serial port after the VM's state was saved (a resume, or a save
 * rolled back) now and then goes unread for good (measured: about one
 * resume in eight, QEMU 7.2 under TCG; a second connection is served), so
 * the daemon makes that connection, and the owner's first exec is not the
 * one left hanging.  Unix-socket agents only (QEMU). */
void
vmf_suspended_prime_port(const struct vmf_vm *vm)
{
	if (!vm->ops->agent_transport || strcmp(vm->ops->agent_transport, "unix") != 0)
		return;
	char path[PATH_MAX + 64];
	snprintf(path, sizeof(path), "%s/%s", vm->run_dir, vm->ops->agent_socket);
	for (int attempt = 0; attempt < 3; attempt++) {
		struct sockaddr_un sa;
		struct vmf_error err = {0};
		if (vmf_unix_addr(&sa, NULL, path, &err) < 0)
			return;
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			close(fd);
			return;
		}
		struct vmf_agent *a = vmf_agent_new(fd);
		if (!a)
			return;
		int r = vmf_agent_wait_ready(a, 2000, &err);
		vmf_agent_free(a);
		if (r == 0)
			return;
		log_vm(VMF_LOG_DEBUG, vm->id, "its agent port did not answer the first connection: %s", err.msg);
	}
	log_vm(VMF_LOG_WARN, vm->id, "its owner's agent port does not answer after three connections");
}

static bool
file_exists(const char *path)
{
	struct stat st;
	return path[0] && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

enum vmf_vm_state
vmf_suspend_recover(struct vmf_daemon *d, struct vmf_vm *vm, const Vmf__Catalog__VmRecord *rec, bool live)
{
	/* The driver state to resume from, without the pid of whatever ran. */
	if (rec->hv && !vm->saved_hv) {
		size_t n = vmf__hv__hypervisor_state__get_packed_size(rec->hv);
		uint8_t *buf = malloc(n ? n : 1);
		if (buf) {
			vmf__hv__hypervisor_state__pack(rec->hv, buf);
			vm->saved_hv = vmf__hv__hypervisor_state__unpack(NULL, n, buf);
			free(buf);
		}
		if (vm->saved_hv) {
			vm->saved_hv->pid = 0;
			vm->saved_hv->start_time_ticks = 0;
		}
	}
	if (rec->state == VMF__CATALOG__VM_STATE__VM_SUSPENDING && live) {
		/* The save did not complete: the VM runs on, assigned. */
		log_vm(VMF_LOG_INFO, vm->id, "suspend cut short by the daemon's end: rolled back, the VM runs on");
		vmf_suspended_remove_files(vm->state_file);
		vm->state_file[0] = '\0';
		vm->state_size = 0;
		vm->suspended_ns = 0;
		struct vmf_error err = {0};
		if (vm->ops->resume(vm->hv, &err) < 0)
			log_vm(VMF_LOG_WARN, vm->id, "resuming it: %s", err.msg);
		vmf_suspended_freeze_disks(d, vm, true, NULL);
		if (d->hv.caps & VMF_CAP_SHARE_DEVICE && vm->share_link[0]) {
			struct vmf_agent *a = vmf_suspended_agent_open(vm, &err);
			if (!a || vmf_agent_mount_share(a, VMF_SHARE_TAG, VMF_SUSPEND_AGENT_TIMEOUT_MS, &err) < 0)
				log_vm(VMF_LOG_WARN, vm->id, "mounting its share again: %s", err.msg);
			vmf_agent_free(a);
		}
		vmf_suspended_prime_port(vm);
		if (vm->saved_hv) {
			vmf__hv__hypervisor_state__free_unpacked(vm->saved_hv, NULL);
			vm->saved_hv = NULL;
		}
		return VMF_VM_ASSIGNED;
	}
	char tmp[PATH_MAX + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", vm->state_file);
	unlink(tmp);
	if (!file_exists(vm->state_file) || !vm->saved_hv) {
		log_vm(VMF_LOG_WARN, vm->id, "recorded %s but its saved state %s is missing: gone",
		       rec->state == VMF__CATALOG__VM_STATE__VM_SUSPENDING ? "suspending" : "suspended",
		       vm->state_file[0] ? vm->state_file : "(none)");
		if (vm->saved_hv) {
			vmf__hv__hypervisor_state__free_unpacked(vm->saved_hv, NULL);
			vm->saved_hv = NULL;
		}
		vm->state_file[0] = '\0';
		return VMF_VM_GONE;
	}
	/* SUSPENDED, RESUMING, or SUSPENDING whose process died after the
	 * file was complete: suspended, and a process of it is an orphan. */
	if (vm->state_size == 0) {
		struct stat st;
		if (stat(vm->state_file, &st) == 0)
			vm->state_size = (uint64_t)st.st_size;
	}
	if (!vm->suspended_ns)
		vm->suspended_ns = vmf_realtime_ns();
	vm->lease_deadline_ns = 0;
	vm->lease_suspend = false;
	log_vm(VMF_LOG_INFO, vm->id, "suspended VM of sandbox %s (%llu MiB in %s)%s", vm->sandbox_id,
	       (unsigned long long)(vm->state_size >> 20), vm->state_file,
	       rec->state == VMF__CATALOG__VM_STATE__VM_RESUMING ? ": a resume was cut short" : "");
	return VMF_VM_SUSPENDED;
}

void
vmf_suspend_sweep(struct vmf_daemon *d)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/%s", d->opts.state_dir, VMF_SUSPEND_DIR);
	DIR *dp = opendir(dir);
	if (!dp)
		return;
	struct dirent *de;
	while ((de = readdir(dp))) {
		if (de->d_name[0] == '.')
			continue;
		char path[PATH_MAX + 256];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		bool kept = false;
		struct vmf_vm *vm;
		TAILQ_FOREACH(vm, &d->cache.vms, link)
			kept = kept || (vm->state == VMF_VM_SUSPENDED && strcmp(vm->state_file, path) == 0);
		if (!kept) {
			log_info("removing %s: no suspended VM's state", path);
			unlink(path);
		}
	}
	closedir(dp);
}
