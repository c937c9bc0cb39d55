/* A VM's lease (leases.c): the ttl a GetVM, Resume or Lease asks for,
 * checked against the config's max_ttl; set on a VM; and whether it has
 * run out.  The loop's tick (daemon.c) acts on the VMs whose lease ran
 * out, through the release and suspend jobs. */
#ifndef VMF_LEASES_H
#define VMF_LEASES_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "pool.h"

struct vmf_daemon;

struct vmf_lease_ask {
	uint32_t ttl_s;              /* 0: no lease */
	bool suspend;                /* at its end: suspend (else release) */
};

/* on_expiry ("", "release" or "suspend") and ttl_s (within max_ttl) of a
 * request, into *out; -errno with a sentence otherwise. */
int vmf_lease_parse(const struct vmf_daemon *d, uint32_t ttl_s, const char *on_expiry, struct vmf_lease_ask *out,
		    struct vmf_error *err);
/* vm's lease as ask says, counted from now_ns (CLOCK_REALTIME). */
void vmf_lease_apply(struct vmf_vm *vm, const struct vmf_lease_ask *ask, int64_t now_ns);
/* The lease of vm ran out by now_ns and the loop may act on it (no job
 * holds the VM; assigned or gone). */
bool vmf_lease_due(const struct vmf_vm *vm, int64_t now_ns);
/* "release" or "suspend": what vm's lease does at its end. */
const char *vmf_lease_action(const struct vmf_vm *vm);

#endif
