/* Lease: sets, moves or removes an assigned VM's lease (leases.c), its
 * owner's or an administrator's request like any naming a VM.  The new
 * lease is recorded on a worker before the reply, so that the deadline a
 * client was told is the one a restarted daemon keeps. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "factory.h"
#include "leases.h"
#include "log.h"
#include "ops.h"
#include "request.h"
#include "vminfo.h"

struct lease_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	struct vmf_vm *vm;           /* the loop's; busy, so the worker may read it */
	int64_t old_deadline_ns;
	bool old_suspend;
	int rc;
	struct vmf_error err;
};

static void
lease_work(void *arg)
{
	struct lease_job *j = arg;
	j->rc = vmf_cache_put_vm_record(&j->d->cache, j->vm, j->vm->state, &j->err);
	if (j->rc < 0)
		vmf_error_prefix(&j->err, "recording VM %s's lease", j->vm->id);
}

static void
lease_done(void *arg)
{
	struct lease_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_vm *vm = j->vm;
	if (j->rc < 0) {
		vm->lease_deadline_ns = j->old_deadline_ns;
		vm->lease_suspend = j->old_suspend;
		vmf_request_fail(j->c, j->err.code, j->err.msg);
	} else {
		if (vm->lease_deadline_ns)
			log_vm(VMF_LOG_INFO, vm->id, "leased: %s in %lld s", vmf_lease_action(vm),
			       (long long)((vm->lease_deadline_ns - vmf_realtime_ns()) / 1000000000));
		else
			log_vm(VMF_LOG_INFO, vm->id, "its lease is removed");
		Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
		Vmf__Control__VmInfo info = VMF__CONTROL__VM_INFO__INIT;
		vmf_vm_info_fill(d, vm, 0, &info);
		r.body_case = VMF__CONTROL__REPLY__BODY_VM;
		r.vm = &info;
		vmf_request_reply(j->c, &r);
		vmf_vm_info_clear(&info);
	}
	vmf_request_vm_back(d, vm, NULL);
	free(j);
	vmf_daemon_settle(d);
}

static void
lease_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *req)
{
	const Vmf__Control__LeaseRequest *lr = req->lease;
	struct vmf_lease_ask ask;
	struct vmf_error err = {0};
	struct vmf_vm *vm = vmf_request_vm(d, c, lr->vm_id);
	if (!vm)
		return;
	if (vmf_lease_parse(d, lr->ttl_s, lr->on_expiry, &ask, &err) < 0) {
		vmf_request_fail(c, err.code, err.msg);
		return;
	}
	if (vm->state != VMF_VM_ASSIGNED || vm->dead) {
		char msg[1024], st[900];
		snprintf(msg, sizeof(msg), "VM %s is not assigned (it is %s): only a running VM holds a lease (a "
			 "suspended one gets a new lease when it resumes)", vm->id,
			 vm->dead ? "gone" : vmf_vm_state_desc(vm, st, sizeof(st)));
		vmf_request_fail(c, EINVAL, msg);
		return;
	}
	struct lease_job *j = vmf_request_job_new(c, sizeof(*j));
	if (!j)
		return;
	j->d = d;
	j->c = c;
	j->vm = vm;
	j->old_deadline_ns = vm->lease_deadline_ns;
	j->old_suspend = vm->lease_suspend;
	vmf_lease_apply(vm, &ask, vmf_realtime_ns());
	vm->busy = true;
	if (vmf_jobs_submit(d->cache.jobs, lease_work, lease_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the lease's record");
		lease_done(j);
	}
}

const struct vmf_op vmf_op_lease = {
	.name = "lease", .body = VMF__CONTROL__REQUEST__BODY_LEASE, .start = lease_start,
};
