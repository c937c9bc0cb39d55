/* A suspended VM's saved state and its guest around a save (suspended.c),
 * for the suspend and resume jobs (suspendjob.c) and restart recovery
 * (recovery.c). */
#ifndef VMF_SUSPENDED_H
#define VMF_SUSPENDED_H

#include <stdbool.h>
#include <stddef.h>

#include "catalog.pb-c.h"
#include "error.h"
#include "pool.h"

struct vmf_daemon;
struct vmf_agent;
struct vmf_stop_report;

/* Under the state dir: <id>.state of each suspended VM. */
#define VMF_SUSPEND_DIR "suspended"
/* What the guest's agent gets for each call around a save. */
#define VMF_SUSPEND_AGENT_TIMEOUT_MS 10000

/* Where VM id's saved state goes: <state_dir>/suspended/<id>.state. */
void vmf_suspended_state_path(const struct vmf_daemon *d, const char *id, char *out, size_t n);
/* The state file and its .tmp, gone. */
void vmf_suspended_remove_files(const char *file);
/* The read-write disks of a VM whose state is saved, or which runs again:
 * frozen before the save, thawed once it runs again (best effort; rep, if
 * given, says what the guest confirmed). */
void vmf_suspended_freeze_disks(struct vmf_daemon *d, struct vmf_vm *vm, bool thaw, struct vmf_stop_report *rep);
/* The VM's guest agent, NULL with err. */
struct vmf_agent *vmf_suspended_agent_open(struct vmf_vm *vm, struct vmf_error *err);
/* The owner's agent port answers a ping (see suspended.c). */
void vmf_suspended_prime_port(const struct vmf_vm *vm);

/* Restart recovery of a VM recorded suspending, suspended or resuming
 * (live: its recorded process was adopted, into vm->hv): the state it
 * is in now (assigned: rolled back and running; suspended; gone). */
enum vmf_vm_state vmf_suspend_recover(struct vmf_daemon *d, struct vmf_vm *vm, const Vmf__Catalog__VmRecord *rec,
				      bool live);
/* After recovery: removes files under <state_dir>/suspended that no
 * suspended VM names (a suspend or resume cut short, a reboot). */
void vmf_suspend_sweep(struct vmf_daemon *d);

#endif
