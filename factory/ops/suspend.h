/* What a restart needs of Suspend and Resume (recovery.c): the state a VM
 * recorded mid-suspend is in now, and the files no suspended VM names. */
#ifndef VMF_OPS_SUSPEND_H
#define VMF_OPS_SUSPEND_H

#include <stdbool.h>

#include "catalog.pb-c.h"
#include "pool.h"

struct vmf_daemon;

/* Restart recovery of a VM recorded suspending, suspended or resuming
 * (live: its recorded process was adopted, into vm->hv): the state it
 * is in now (assigned: rolled back and running; suspended; gone). */
enum vmf_vm_state vmf_suspend_recover(struct vmf_daemon *d, struct vmf_vm *vm, const Vmf__Catalog__VmRecord *rec,
				      bool live);
/* After recovery: removes files under <state_dir>/suspended that no
 * suspended VM names (a suspend or resume cut short, a reboot). */
void vmf_suspend_sweep(struct vmf_daemon *d);

#endif
