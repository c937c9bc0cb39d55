/* Suspend and Resume requests: the VM named, checked, and the job
 * (suspendjob.c) started; the reply once it is done.  A resume may give
 * the VM a new lease. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "factory.h"
#include "leases.h"
#include "ops.h"
#include "request.h"
#include "suspendjob.h"
#include "vminfo.h"

static void
replied(struct vmf_daemon *d, struct vmf_vm *vm, const struct vmf_suspend_result *res, void *arg)
{
	struct vmf_conn *c = arg;
	if (res->rc < 0) {
		d->errors++;
		char msg[sizeof(res->err.msg) + 96];
		snprintf(msg, sizeof(msg), "cannot %s VM %s (it stays %s): %s", res->resume ? "resume" : "suspend", vm->id,
			 vmf_vm_state_name(vm->state), res->err.msg);
		vmf_request_fail(c, res->err.code, msg);
		return;
	}
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	Vmf__Control__VmInfo info = VMF__CONTROL__VM_INFO__INIT;
	vmf_vm_info_fill(d, vm, res->pss_kib, &info);
	Vmf__Control__StopReport sr;
	char *lost[VMF_STOP_LOST_MAX];
	if (!res->resume && res->rep.method[0]) {
		vmf_stop_report_fill(&res->rep, &sr, lost);
		info.stop = &sr;
	}
	r.body_case = VMF__CONTROL__REPLY__BODY_VM;
	r.vm = &info;
	vmf_request_reply(c, &r);
	info.stop = NULL;
	vmf_vm_info_clear(&info);
}

static void
start(struct vmf_daemon *d, struct vmf_conn *c, const char *vm_id, bool resume, const struct vmf_lease_ask *lease)
{
	struct vmf_vm *vm = vmf_request_vm(d, c, vm_id);
	if (!vm)
		return;
	struct vmf_error err = {0};
	if (vmf_suspend_check(d, vm, resume, vmf_request_peer(c), &err) < 0) {
		vmf_request_fail(c, err.code, err.msg);
		return;
	}
	vmf_suspend_job_start(d, vm, resume, vmf_request_peer(c), vmf_request_admin(d, c), lease, replied, c);
}

static void
suspend_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *req)
{
	start(d, c, req->suspend_vm->vm_id, false, NULL);
}

static void
resume_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *req)
{
	const Vmf__Control__ResumeVMRequest *rr = req->resume_vm;
	struct vmf_lease_ask lease;
	struct vmf_error err = {0};
	if (vmf_lease_parse(d, rr->ttl_s, rr->on_expiry, &lease, &err) < 0) {
		vmf_request_fail(c, err.code, err.msg);
		return;
	}
	start(d, c, rr->vm_id, true, &lease);
}

const struct vmf_op vmf_op_suspend = {
	.name = "suspend", .body = VMF__CONTROL__REQUEST__BODY_SUSPEND_VM, .start = suspend_start,
};

const struct vmf_op vmf_op_resume = {
	.name = "resume", .body = VMF__CONTROL__REQUEST__BODY_RESUME_VM, .start = resume_start,
};
