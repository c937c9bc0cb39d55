/* Leases: a VM handed out for a while.  The deadline is wall-clock time,
 * recorded with the VM, so that a daemon restarted (or down past it) still
 * ends the VM; the tick, on the loop, is the only timer, so a tenant's
 * leases cost no event each, only a look per VM a second. */
#include <errno.h>
#include <string.h>

#include "factory.h"
#include "leases.h"

int
vmf_lease_parse(const struct vmf_daemon *d, uint32_t ttl_s, const char *on_expiry, struct vmf_lease_ask *out,
		struct vmf_error *err)
{
	const char *oe = on_expiry ? on_expiry : "";
	*out = (struct vmf_lease_ask){ .ttl_s = ttl_s };
	if (strcmp(oe, "suspend") == 0)
		out->suspend = true;
	else if (*oe && strcmp(oe, "release") != 0)
		return vmf_err(err, EINVAL, "on_expiry \"%.32s\" is neither release nor suspend", oe);
	if (*oe && !ttl_s)
		return vmf_err(err, EINVAL, "on_expiry %s needs a ttl (a lease of some seconds)", oe);
	unsigned max = d->opts.max_ttl_s;
	if (max && ttl_s > max)
		return vmf_err(err, EINVAL, "a lease of %u s is longer than this daemon allows (max_ttl = %u s)",
			       (unsigned)ttl_s, max);
	return 0;
}

void
vmf_lease_apply(struct vmf_vm *vm, const struct vmf_lease_ask *ask, int64_t now_ns)
{
	vm->lease_deadline_ns = ask->ttl_s ? now_ns + (int64_t)ask->ttl_s * 1000000000 : 0;
	vm->lease_suspend = ask->ttl_s && ask->suspend;
}

bool
vmf_lease_due(const struct vmf_vm *vm, int64_t now_ns)
{
	return vm->lease_deadline_ns && now_ns >= vm->lease_deadline_ns && !vm->busy &&
	       (vm->state == VMF_VM_ASSIGNED || vm->state == VMF_VM_GONE);
}

const char *
vmf_lease_action(const struct vmf_vm *vm)
{
	return vm->lease_suspend ? "suspend" : "release";
}
