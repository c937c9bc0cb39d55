#ifndef VMF_RECOVERY_H
#define VMF_RECOVERY_H

#include "error.h"

struct vmf_daemon;

/* recovery.c: reconciles the VM records with the VMMs that run, then kills
 * those under our run dir without a record.  Fails, stopping nothing, when
 * the records cannot all be read. */
int vmf_recovery_run(struct vmf_daemon *d, struct vmf_error *err);

#endif
