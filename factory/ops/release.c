/* Release, and the check every request naming a VM goes through. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "factory.h"
#include "log.h"

struct vmf_vm *
vmf_daemon_lookup_vm(struct vmf_daemon *d, struct vmf_conn *c, const char *id)
{
	if (!vmf_valid_uuid(id)) {
		vmf_control_reply_error(c, EINVAL, "VM id is not a vmfactory VM id (a lower-case UUID)");
		return NULL;
	}
	struct vmf_vm *vm = vmf_cache_find_vm(&d->cache, id);
	if (!vm) {
		char msg[96];
		snprintf(msg, sizeof(msg), "no VM %s in this daemon", id);
		vmf_control_reply_error(c, ENOENT, msg);
		return NULL;
	}
	/* Another tenant's VM (or a pooled one, nobody's yet) is named but
	 * nothing about it is told. */
	uid_t peer = vmf_control_peer_uid(c);
	if (!vmf_daemon_peer_admin(d, peer) && (vm->owner_uid != peer || vm->state == VMF_VM_READY ||
						vm->state == VMF_VM_CREATING)) {
		char msg[160];
		snprintf(msg, sizeof(msg), "permission denied: VM %s is not yours (uid %u)", id, (unsigned)peer);
		vmf_control_reply_error(c, EACCES, msg);
		return NULL;
	}
	if (vm->busy) {
		char msg[96];
		snprintf(msg, sizeof(msg), "VM %s is busy (%s); try again", id, vmf_vm_state_name(vm->state));
		vmf_control_reply_error(c, EBUSY, msg);
		return NULL;
	}
	return vm;
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

void
vmf_release_start(struct vmf_daemon *d, struct vmf_conn *c, const char *vm_id)
{
	struct vmf_vm *vm = vmf_daemon_lookup_vm(d, c, vm_id);
	if (!vm)
		return;
	if (vm->state != VMF_VM_ASSIGNED && vm->state != VMF_VM_GONE && vm->state != VMF_VM_SUSPENDED) {
		char msg[1024], st[900];
		snprintf(msg, sizeof(msg), "VM %s is not assigned (it is %s)", vm->id, vmf_vm_state_desc(vm, st, sizeof(st)));
		vmf_control_reply_error(c, EINVAL, msg);
		return;
	}
	log_vm(VMF_LOG_INFO, vm->id, "releasing (sandbox %s)", vm->sandbox_id);
	/* The reply comes once the VM is stopped and its links are gone: a
	 * runtime may reuse the paths as soon as release returns (its run
	 * dir may still be on its way out: cache/vm.c). */
	vmf_cache_destroy_vm(&d->cache, vm, true, c);
}
