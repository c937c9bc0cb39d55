/* Inspect: the host's view of a VM and, from its agent on a worker, the
 * guest's. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "factory.h"
#include "log.h"
#include "ops.h"
#include "request.h"
#include "vminfo.h"

#define AGENT_TIMEOUT_MS 10000

struct inspect_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	struct vmf_vm *vm;
	bool guest;              /* assigned: ask its agent too */
	pid_t pid;               /* taken on the loop, for the PSS read */
	uint64_t pss_kib;
	Vmf__Agent__AgentReply *info;
	Vmf__Hv__VmExit *exit;   /* it had died: why, recorded */
	int rc;
	struct vmf_error err;
};

static void
inspect_work(void *arg)
{
	struct inspect_job *j = arg;
	struct vmf_error *err = &j->err;
	j->pss_kib = j->pid > 0 ? vmf_proc_pss_kib(j->pid) : 0;
	if (!j->guest)
		return;
	VMF_FAULT_PAUSE("inspect-pause");
	if (!j->vm->hv || !j->vm->ops->alive(j->vm->hv)) {
		j->rc = vmf_err(err, ESRCH, "the VM's process is not running");
		/* The reply says why, as status will from now on. */
		if (j->vm->hv && !j->vm->exit && (j->exit = vmf_cache_vm_death(&j->d->cache, j->vm)))
			vmf_err(err, ESRCH, "the VM's process is not running: %s", j->exit->detail);
		return;
	}
	/* One budget for the connection and the answer, whatever the guest
	 * sends meanwhile. */
	int64_t deadline = vmf_now_ms() + AGENT_TIMEOUT_MS;
	struct vmf_agent *a;
	j->rc = vmf_agent_open(j->vm->ops->agent_connect, j->vm->hv, AGENT_TIMEOUT_MS, &a, err);
	int64_t left = deadline - vmf_now_ms();
	if (j->rc == 0)
		j->rc = vmf_agent_guest_info(a, &j->info, left > 0 ? (int)left : 0, err);
	vmf_agent_free(a);
}

static void
inspect_done(void *arg)
{
	struct inspect_job *j = arg;
	struct vmf_daemon *d = j->d;
	bool was_busy = j->vm->busy;
	/* Its process exited while the job held it (the watch then only marks
	 * it dead): it becomes gone now, before the reply shows its state. */
	vmf_request_vm_back(d, j->vm, j->exit);
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	Vmf__Control__InspectReply ir = VMF__CONTROL__INSPECT_REPLY__INIT;
	Vmf__Control__VmInfo info = VMF__CONTROL__VM_INFO__INIT;
	Vmf__Control__GuestView g = VMF__CONTROL__GUEST_VIEW__INIT;
	char hex[33] = "";
	vmf_vm_info_fill(d, j->vm, j->pss_kib, &info);
	ir.vm = &info;
	ir.host_realtime_ns = vmf_realtime_ns();
	if (j->rc == 0 && j->info && j->info->guest_info) {
		Vmf__Agent__GuestInfo *gi = j->info->guest_info;
		g.online_cpus = gi->online_cpus;
		g.mem_total_kib = gi->mem_total_kib;
		g.realtime_ns = gi->realtime_ns;
		vmf_hex(gi->random.data, gi->random.len > 16 ? 16 : gi->random.len, hex);
		g.random_hex = hex;
		g.boot_id = gi->boot_id;
		g.hostname = gi->hostname;
		g.machine_id = gi->machine_id;
		g.n_share_entries = gi->n_share_entries;
		g.share_entries = gi->share_entries;
		g.uptime_ns = gi->uptime_ns;
		g.agent_version = gi->agent_version;
		g.n_interfaces = gi->n_interfaces;
		g.interfaces = gi->interfaces;
		ir.guest = &g;
	} else {
		ir.guest_error = j->err.msg;
	}
	r.body_case = VMF__CONTROL__REPLY__BODY_INSPECT;
	r.inspect = &ir;
	vmf_request_reply(j->c, &r);
	vmf_vm_info_clear(&info);
	if (j->info)
		vmf__agent__agent_reply__free_unpacked(j->info, NULL);
	free(j);
	if (was_busy)
		vmf_daemon_settle(d);
}

static void
inspect_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *req)
{
	const char *vm_id = req->inspect->vm_id;
	struct vmf_vm *vm = vmf_request_vm(d, c, vm_id);
	if (!vm)
		return;
	struct inspect_job *j = vmf_request_job_new(c, sizeof(*j));
	if (!j)
		return;
	j->d = d;
	j->c = c;
	j->vm = vm;
	j->pid = vm->hv ? vm->ops->pid(vm->hv) : 0;
	j->guest = vm->state == VMF_VM_ASSIGNED;
	/* A paused pooled VM cannot answer: the host view only, its PSS
	 * still read on the worker. */
	if (vm->state == VMF_VM_GONE)
		j->rc = vmf_err(&j->err, ESRCH, "the VM's process is not running%s%s", vm->exit ? ": " : "",
				vm->exit ? vm->exit->detail : "");
	else if (!j->guest)
		j->rc = vmf_err(&j->err, EAGAIN, "the VM is %s, its guest is paused", vmf_vm_state_name(vm->state));
	vm->busy = true;
	if (vmf_jobs_submit(d->cache.jobs, inspect_work, inspect_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the inspect work");
		inspect_done(j);
	}
}

const struct vmf_op vmf_op_inspect = {
	.name = "inspect", .body = VMF__CONTROL__REQUEST__BODY_INSPECT, .start = inspect_start,
};
