/* Destroy (stop every VM, then the daemon) and the end of a shutdown:
 * both wait for the work in flight, which settles here. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "factory.h"
#include "log.h"

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
	vmf_control_reply(d->destroy_conn, &r);
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

void
vmf_daemon_destroy(struct vmf_daemon *d, struct vmf_conn *c, bool all)
{
	if (d->destroy_conn) {
		vmf_control_reply_error(c, EALREADY, "a destroy is already in progress");
		return;
	}
	log_info("destroy requested%s", all ? " (all VMs, assigned included)" : "");
	d->cache.stopping = true;
	d->cache.destroying = true;
	d->destroy_conn = c;
	d->destroy_all = all;
	vmf_cache_queue_flush(&d->cache, "the daemon is being destroyed");
	finish_destroy_if_done(d);
}
