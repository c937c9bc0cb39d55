/* Release, and the check every request naming a VM goes through. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "factory.h"
#include "log.h"
#include "ops.h"
#include "request.h"
#include "vminfo.h"

static void
release_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *req)
{
	const char *vm_id = req->release_vm->vm_id;
	struct vmf_vm *vm = vmf_request_vm(d, c, vm_id);
	if (!vm)
		return;
	if (vm->state != VMF_VM_ASSIGNED && vm->state != VMF_VM_GONE && vm->state != VMF_VM_SUSPENDED) {
		char msg[1024], st[900];
		snprintf(msg, sizeof(msg), "VM %s is not assigned (it is %s)", vm->id, vmf_vm_state_desc(vm, st, sizeof(st)));
		vmf_request_fail(c, EINVAL, msg);
		return;
	}
	log_vm(VMF_LOG_INFO, vm->id, "releasing (sandbox %s)", vm->sandbox_id);
	/* The reply comes once the VM is stopped and its links are gone: a
	 * runtime may reuse the paths as soon as release returns (its run
	 * dir may still be on its way out: cache/vm.c). */
	vmf_cache_destroy_vm(&d->cache, vm, true, c);
}

const struct vmf_op vmf_op_release = {
	.name = "release", .body = VMF__CONTROL__REQUEST__BODY_RELEASE_VM, .start = release_start,
};
