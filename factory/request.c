/* What a handler sees of its request: the peer, the reply, the VM it names
 * (checked against the peer), and the end of its job, where a destroy
 * (ops/destroy.c) or a shutdown waiting for the work in flight settles. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "factory.h"
#include "log.h"
#include "request.h"

uid_t
vmf_request_peer(const struct vmf_conn *c)
{
	return vmf_control_peer_uid(c);
}

bool
vmf_request_admin(const struct vmf_daemon *d, const struct vmf_conn *c)
{
	return vmf_daemon_peer_admin(d, vmf_control_peer_uid(c));
}

bool
vmf_request_connected(const struct vmf_conn *c)
{
	return vmf_control_connected(c);
}

void
vmf_request_reply(struct vmf_conn *c, const Vmf__Control__Reply *reply)
{
	vmf_control_reply(c, reply);
}

void
vmf_request_fail(struct vmf_conn *c, int code, const char *msg)
{
	vmf_control_reply_error(c, code, msg);
}

void *
vmf_request_job_new(struct vmf_conn *c, size_t size)
{
	void *j = calloc(1, size);
	if (!j)
		vmf_request_fail(c, ENOMEM, "out of memory");
	return j;
}

struct vmf_vm *
vmf_request_vm(struct vmf_daemon *d, struct vmf_conn *c, const char *id)
{
	if (!vmf_valid_uuid(id)) {
		vmf_request_fail(c, EINVAL, "VM id is not a vmfactory VM id (a lower-case UUID)");
		return NULL;
	}
	struct vmf_vm *vm = vmf_cache_find_vm(&d->cache, id);
	if (!vm) {
		char msg[96];
		snprintf(msg, sizeof(msg), "no VM %s in this daemon", id);
		vmf_request_fail(c, ENOENT, msg);
		return NULL;
	}
	/* Another tenant's VM (or a pooled one, nobody's yet) is named but
	 * nothing about it is told. */
	uid_t peer = vmf_request_peer(c);
	if (!vmf_daemon_peer_admin(d, peer) && (vm->owner_uid != peer || vm->state == VMF_VM_READY ||
						vm->state == VMF_VM_CREATING)) {
		char msg[160];
		snprintf(msg, sizeof(msg), "permission denied: VM %s is not yours (uid %u)", id, (unsigned)peer);
		vmf_request_fail(c, EACCES, msg);
		return NULL;
	}
	if (vm->busy) {
		char msg[96];
		snprintf(msg, sizeof(msg), "VM %s is busy (%s); try again", id, vmf_vm_state_name(vm->state));
		vmf_request_fail(c, EBUSY, msg);
		return NULL;
	}
	return vm;
}

void
vmf_request_vm_back(struct vmf_daemon *d, struct vmf_vm *vm, Vmf__Hv__VmExit *exit)
{
	vm->busy = false;
	if (exit)
		vmf_cache_vm_gone(&d->cache, vm, exit);
	else if (vm->dead)
		vmf_cache_vm_exited(&d->cache, vm);
}

/* Jobs queued or running, or a VM some job owns. */
static bool
work_in_flight(struct vmf_daemon *d)
{
	struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		if (vm->busy)
			return true;
	return vmf_jobs_pending(d->cache.jobs) > 0;
}

static void
exit_loop_soon(struct vmf_daemon *d)
{
	/* Let the replies just written reach their clients first. */
	struct timeval tv = { 0, 100000 };
	event_base_loopexit(d->cache.base, &tv);
}

/* A destroy stops every VM but the assigned and gone ones (all of them
 * with all); a VM a job owns is left to the job and looked at again when
 * the job completes.  The reply goes once nothing is left to stop and no
 * job runs. */
static void
finish_destroy_if_done(struct vmf_daemon *d)
{
	struct vmf_vm *vm, *next;
	for (vm = TAILQ_FIRST(&d->cache.vms); vm; vm = next) {
		next = TAILQ_NEXT(vm, link);
		if (!vm->busy && (d->destroy_all || (vm->state != VMF_VM_ASSIGNED && vm->state != VMF_VM_GONE &&
						     vm->state != VMF_VM_SUSPENDED)))
			vmf_cache_destroy_vm(&d->cache, vm, true, NULL);
	}
	if (work_in_flight(d))
		return;
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	Vmf__Control__DestroyReply dr = VMF__CONTROL__DESTROY_REPLY__INIT;
	dr.stopped = d->destroyed;
	dr.lost_writes = d->destroy_lost;
	dr.n_lost_writes = d->n_destroy_lost;
	r.body_case = VMF__CONTROL__REPLY__BODY_DESTROY;
	r.destroy = &dr;
	vmf_request_reply(d->destroy_conn, &r);
	d->destroy_conn = NULL;
	d->destroy_done = true;
	log_info("destroyed: %u VMs stopped", d->destroyed);
	exit_loop_soon(d);
}

void
vmf_daemon_settle(struct vmf_daemon *d)
{
	/* Nothing serves a waiting GetVM from here on. */
	if (d->cache.stopping)
		vmf_cache_queue_flush(&d->cache, d->cache.destroying ? "the daemon is being destroyed"
				      : "the daemon is shutting down");
	if (d->cache.loop_done)
		return;
	if (d->destroy_conn) {
		finish_destroy_if_done(d);
	} else if (d->draining && !d->destroy_done && !work_in_flight(d)) {
		log_info("shutdown: work in flight done; exiting, VMs keep running for the next daemon");
		exit_loop_soon(d);
	} else {
		vmf_cache_refill(&d->cache);
	}
}
