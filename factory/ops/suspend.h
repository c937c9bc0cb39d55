/* What a restart needs of Suspend and Resume (recovery.c): the state a VM
 * recorded mid-suspend is in now, and the files no suspended VM names;
 * and what the tick (daemon.c) needs: a suspend for a lease that ran out. */
#ifndef VMF_OPS_SUSPEND_H
#define VMF_OPS_SUSPEND_H

#include <stdbool.h>

#include "catalog.pb-c.h"
#include "error.h"
#include "pool.h"

struct vmf_daemon;

/* Restart recovery of a VM recorded suspending, suspended or resuming
 * (live: its recorded process was adopted, into vm->hv): the state it
 * is in now (assigned: rolled back and running; suspended; gone). */
enum vmf_vm_state vmf_suspend_recover(struct vmf_daemon *d, struct vmf_vm *vm, const Vmf__Catalog__VmRecord *rec,
				      bool live);
/* The loop's tick: vm's lease ran out and says suspend.  Starts the
 * suspend job (nobody waits for its reply); -errno with a sentence when
 * the VM cannot be suspended now (the caller releases it instead). */
int vmf_suspend_expired(struct vmf_daemon *d, struct vmf_vm *vm, struct vmf_error *err);
/* After recovery: removes files under <state_dir>/suspended that no
 * suspended VM names (a suspend or resume cut short, a reboot). */
void vmf_suspend_sweep(struct vmf_daemon *d);

#endif
