/* Destroy: stop every VM (with all, the assigned ones too), then the
 * daemon.  The reply goes once nothing is left to stop and no job runs:
 * request.c's settle, at the end of every job, sends it. */
#include <errno.h>
#include <stdbool.h>

#include "factory.h"
#include "log.h"
#include "ops.h"
#include "request.h"

static void
destroy_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *req)
{
	bool all = req->destroy->all;
	if (d->destroy_conn) {
		vmf_request_fail(c, EALREADY, "a destroy is already in progress");
		return;
	}
	log_info("destroy requested%s", all ? " (all VMs, assigned included)" : "");
	d->cache.stopping = true;
	d->cache.destroying = true;
	d->destroy_conn = c;
	d->destroy_all = all;
	vmf_daemon_settle(d);
}

/* It stops every tenant's VMs and the daemon itself. */
const struct vmf_op vmf_op_destroy = {
	.name = "destroy", .body = VMF__CONTROL__REQUEST__BODY_DESTROY, .flags = VMF_OP_ADMIN,
	.what = "destroy the daemon", .start = destroy_start,
};
