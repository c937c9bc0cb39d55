/* The request table: every control request the daemon serves. */
#include <stddef.h>

#include "ops.h"

static const struct vmf_op *const table[] = {
	&vmf_op_status, &vmf_op_getvm, &vmf_op_release, &vmf_op_inspect, &vmf_op_attach, &vmf_op_detach,
	&vmf_op_snapshot, &vmf_op_template_rm, &vmf_op_suspend, &vmf_op_resume, &vmf_op_destroy,
	&vmf_op_lease,
};

const struct vmf_op *
vmf_op_find(Vmf__Control__Request__BodyCase body)
{
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		if (table[i]->body == body)
			return table[i];
	return NULL;
}
