/* The suspend and resume jobs (suspendjob.c): a VM's whole state saved to
 * its state file and its process stopped, or a process started from it,
 * on a worker that owns the VM; for the Suspend and Resume requests
 * (ops/suspend.c) and for a lease that ends in a suspend (the tick,
 * daemon.c). */
#ifndef VMF_SUSPENDJOB_H
#define VMF_SUSPENDJOB_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"
#include "leases.h"
#include "pool.h"

struct vmf_daemon;

/* How a job went: rc 0 or -errno with err; ms the save or load; pss_kib
 * of a resumed VM; rep how a suspend froze its read-write disks. */
struct vmf_suspend_result {
	bool resume;
	int rc;
	struct vmf_error err;
	double ms;
	uint64_t pss_kib;
	struct vmf_stop_report rep;
};

/* On the loop, once the VM is the loop's again (state suspended or
 * assigned), before the daemon settles. */
typedef void (*vmf_suspend_done_fn)(struct vmf_daemon *d, struct vmf_vm *vm, const struct vmf_suspend_result *res,
				    void *arg);

/* Whether vm may be suspended (resume: resumed) now, on peer's behalf (the
 * owner's tenant_max_suspended counts); -errno with a sentence if not. */
int vmf_suspend_check(struct vmf_daemon *d, const struct vmf_vm *vm, bool resume, uid_t peer,
		      struct vmf_error *err);
/* Starts the job on a VM vmf_suspend_check passed: peer (peer_admin) is who
 * resumes (its disks reopen under its attach rules); lease, for a resume,
 * the VM's new lease (NULL: none).  done is called in every case, at once
 * when the job cannot be queued. */
void vmf_suspend_job_start(struct vmf_daemon *d, struct vmf_vm *vm, bool resume, uid_t peer, bool peer_admin,
			   const struct vmf_lease_ask *lease, vmf_suspend_done_fn done, void *arg);

#endif
