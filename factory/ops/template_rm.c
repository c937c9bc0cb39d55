/* TemplateRm: a snapshot template removed by its owner (or the operator),
 * once nothing uses it; the catalog's files go on a worker. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "factory.h"
#include "log.h"
#include "ops.h"
#include "pools.h"
#include "request.h"
#include "snapindex.h"
#include "template.h"

struct rm_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	char id[VMF_SHA256_HEX];
	int rc;
	struct vmf_error err;
};

static void
rm_work(void *arg)
{
	struct rm_job *j = arg;
	j->rc = vmf_template_remove(j->d->cache.cat, j->d->opts.state_dir, j->id, &j->err);
}

/* The pool a GetVM made for it (none of the config's: those refuse the
 * removal), now without template or VMs. */
static void
drop_pool(struct vmf_daemon *d, const char *id)
{
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		if (p->on_demand && strcmp(p->template_id, id) == 0) {
			TAILQ_REMOVE(&d->cache.pools, p, link);
			vmf_daemon_pool_free(p);
			return;
		}
}

static void
rm_done(void *arg)
{
	struct rm_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_snap *s = vmf_snap_by_id(d, j->id);
	if (j->rc < 0) {
		if (s)
			s->removing = false;
		log_tpl(VMF_LOG_WARN, j->id, "template rm failed: %s", j->err.msg);
		vmf_request_fail(j->c, j->err.code, j->err.msg);
	} else {
		Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
		Vmf__Control__TemplateRmReply tr = VMF__CONTROL__TEMPLATE_RM_REPLY__INIT;
		tr.template_id = j->id;
		tr.name = s ? s->name : (char *)"";
		tr.owner_uid = s ? (uint32_t)s->owner : 0;
		tr.bytes = s ? s->bytes : 0;
		r.body_case = VMF__CONTROL__REPLY__BODY_TEMPLATE_RM;
		r.template_rm = &tr;
		log_tpl(VMF_LOG_INFO, j->id, "template %s of uid %u removed", s ? s->name : "?", s ? (unsigned)s->owner : 0);
		vmf_request_reply(j->c, &r);
		drop_pool(d, j->id);
		if (s)
			vmf_snap_drop(d, s);
	}
	free(j);
	vmf_daemon_settle(d);
}

/* Why the template cannot go now, or NULL: a pool of the config names it,
 * a VM (pooled, handed out, suspended: any state) runs on its files, a
 * GetVM of it is in progress.  Another tenant's VM is counted, not named. */
static const char *
in_use(struct vmf_daemon *d, uid_t peer, const struct vmf_snap *s, char *msg, size_t n)
{
	const struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		if (!p->on_demand && strcmp(p->template_id, s->id) == 0) {
			snprintf(msg, n, "template %s is used by pool %s of the config: remove the pool's template = %s "
				 "first", s->name, p->name, s->name);
			return msg;
		}
	unsigned vms = 0;
	const struct vmf_vm *vm, *first = NULL;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		if (strcmp(vm->template_id, s->id) == 0) {
			vms++;
			if (!first && vmf_snap_allowed(d, peer, vm->owner_uid))
				first = vm;
		}
	if (vms) {
		snprintf(msg, n, "template %s is in use by %u VM%s%s%s: its clones run on its files; release them "
			 "first", s->name, vms, vms == 1 ? "" : "s", first ? ", VM " : "", first ? first->id : "");
		return msg;
	}
	if (s->getvms) {
		snprintf(msg, n, "template %s is in use: a GetVM of it is in progress; try again", s->name);
		return msg;
	}
	return NULL;
}

static void
template_rm_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *request)
{
	const Vmf__Control__TemplateRmRequest *req = request->template_rm;
	const char *name = req->template_ ? req->template_ : "";
	char msg[400];
	if (!vmf_valid_template_id(name) && !vmf_valid_pool_name(name)) {
		vmf_request_fail(c, EINVAL, "template must be a name (1 to 32 letters, digits, '-' or '_') or an "
					"id (64 hex digits)");
		return;
	}
	uid_t peer = vmf_request_peer(c);
	struct vmf_snap *s = vmf_snap_lookup(d, peer, name);
	if (!s) {
		/* Another owner's is "none": its existence is not the peer's to learn. */
		if (vmf_request_admin(d, c))
			snprintf(msg, sizeof(msg), "no snapshot template %s in this daemon (a built template goes with "
				 "template gc or rm while no daemon runs)", name);
		else
			snprintf(msg, sizeof(msg), "uid %u has no snapshot template %s", (unsigned)peer, name);
		vmf_request_fail(c, ENOENT, msg);
		return;
	}
	if (in_use(d, peer, s, msg, sizeof(msg))) {
		vmf_request_fail(c, EBUSY, msg);
		return;
	}
	struct rm_job *j = vmf_request_job_new(c, sizeof(*j));
	if (!j)
		return;
	j->d = d;
	j->c = c;
	snprintf(j->id, sizeof(j->id), "%s", s->id);
	/* No GetVM finds it from now on, and no snapshot takes its name. */
	s->removing = true;
	log_tpl(VMF_LOG_INFO, s->id, "removing template %s of uid %u (asked by uid %u)", s->name, (unsigned)s->owner,
		(unsigned)peer);
	if (vmf_jobs_submit(d->cache.jobs, rm_work, rm_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the template removal");
		rm_done(j);
	}
}

const struct vmf_op vmf_op_template_rm = {
	.name = "template-rm", .body = VMF__CONTROL__REQUEST__BODY_TEMPLATE_RM, .start = template_rm_start,
};
