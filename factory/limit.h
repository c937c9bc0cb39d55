/* What one VM and one tenant may take of the host (limits.c; the header is
 * not limits.h, which would hide the C library's under -Ifactory). */
#ifndef VMF_LIMIT_H
#define VMF_LIMIT_H

#include <stdint.h>
#include <sys/types.h>

#include "control.pb-c.h"
#include "error.h"
#include "factory.h"

/* limits.c: what one VM and one tenant may take of the host; checked on
 * the loop, against what the loop knows (the VMs, the snapshot index), so
 * requests in flight count: their VMs and snapshots are listed from the
 * start. */
struct vmf_usage {
	unsigned vms, suspended, snapshots;
	uint64_t suspended_bytes, snapshot_bytes;
};
void vmf_usage_of(const struct vmf_daemon *d, uid_t uid, struct vmf_usage *u);
/* Whether u (uid's use) leaves room for one more of what (VMS: a VM;
 * SUSPENDED: a suspended VM of bytes; SNAPSHOTS: a snapshot of bytes):
 * 0, or -EDQUOT with a sentence naming the uid, the use, the limit and
 * its key.  Pure: the limits come from o. */
int vmf_limit_check(const struct vmf_daemon_opts *o, uid_t uid, const struct vmf_usage *u, enum vmf_limit what,
		    uint64_t bytes, struct vmf_error *err);
/* The same for peer's request, against its use now; root and the daemon's
 * user pass.  A refusal is counted. */
int vmf_limit_tenant(struct vmf_daemon *d, uid_t peer, enum vmf_limit what, uint64_t bytes, struct vmf_error *err);
/* A scratch volume of mib for vm, for any peer: -EFBIG above
 * scratch_max_mib, -EDQUOT at scratch_max_volumes. */
int vmf_limit_scratch(struct vmf_daemon *d, const struct vmf_vm *vm, unsigned mib, struct vmf_error *err);
/* Status: the limits, and the use of peer (of everyone for root and the
 * daemon's user). */
void vmf_limits_status(struct vmf_daemon *d, uid_t peer, Vmf__Control__StatusReply *s);

#endif
