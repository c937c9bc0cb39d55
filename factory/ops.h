/* The request table (ops.c), as tmux's cmd_table: one entry per control
 * request, each defined at the end of its own file in factory/ops/.  The
 * control socket (control.c) finds a request's entry by its body case and
 * applies the entry's flags before its start; a new request is one new
 * file and one line in ops.c. */
#ifndef VMF_OPS_H
#define VMF_OPS_H

#include "control.pb-c.h"

struct vmf_conn;
struct vmf_daemon;

/* Only root and the daemon's user may send it (what says what it does,
 * for the refusal). */
#define VMF_OP_ADMIN 0x1u
/* Served while the daemon shuts down (everything else: ESHUTDOWN). */
#define VMF_OP_WHILE_STOPPING 0x2u
/* Counted in the requests metric (the hit ratio's denominator). */
#define VMF_OP_COUNTED 0x4u

struct vmf_op {
	const char *name;
	Vmf__Control__Request__BodyCase body;
	unsigned flags;
	const char *what;            /* VMF_OP_ADMIN: "destroy the daemon" */
	/* On the loop: serves req (freed when it returns: copy what a job
	 * needs) on c; replies through request.h, now or from a job's done
	 * callback. */
	void (*start)(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *req);
};

extern const struct vmf_op vmf_op_status, vmf_op_getvm, vmf_op_release, vmf_op_inspect, vmf_op_attach,
	vmf_op_detach, vmf_op_snapshot, vmf_op_template_rm, vmf_op_suspend, vmf_op_resume, vmf_op_destroy,
	vmf_op_lease;

/* The entry of body, NULL for none. */
const struct vmf_op *vmf_op_find(Vmf__Control__Request__BodyCase body);

#endif
