/* Status: each VM's VmInfo, and the status reply as its peer may see it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "factory.h"
#include "limit.h"
#include "log.h"
#include "ops.h"
#include "request.h"
#include "snapindex.h"
#include "vminfo.h"

/* The reply is built on the loop; only the PSS of each VM's process, a
 * read of /proc/PID/smaps_rollup that can take long for a large process,
 * is done on a worker, for the pids the loop copied. */
struct status_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	Vmf__Control__Reply reply;
	size_t n;
	pid_t *pids;         /* per s->vms[i], 0 = no PSS to read */
	uint64_t *pss;
};

static void
status_work(void *arg)
{
	struct status_job *j = arg;
	for (size_t i = 0; i < j->n; i++)
		j->pss[i] = j->pids[i] > 0 ? vmf_proc_pss_kib(j->pids[i]) : 0;
}

static void
status_done(void *arg)
{
	struct status_job *j = arg;
	Vmf__Control__StatusReply *s = j->reply.status;
	for (size_t i = 0; s && i < j->n && i < s->n_vms; i++)
		s->vms[i]->pss_kib = j->pss[i];
	vmf_request_reply(j->c, &j->reply);
	if (s)
		vmf__control__status_reply__free_unpacked(s, NULL);
	struct vmf_daemon *d = j->d;
	free(j->pids);
	free(j->pss);
	free(j);
	vmf_daemon_settle(d);
}

static void status_build(struct vmf_daemon *d, uid_t peer, Vmf__Control__Reply *reply, pid_t *pids);

/* The row of vcpus / mib in ps->sizes, added when missing. */
static Vmf__Control__PoolSize *
size_row(Vmf__Control__PoolStatus *ps, unsigned vcpus, unsigned mib)
{
	for (size_t i = 0; i < ps->n_sizes; i++)
		if (ps->sizes[i]->vcpus == vcpus && ps->sizes[i]->memory_mib == mib)
			return ps->sizes[i];
	Vmf__Control__PoolSize **n = realloc(ps->sizes, (ps->n_sizes + 1) * sizeof(*n));
	Vmf__Control__PoolSize *z = n ? calloc(1, sizeof(*z)) : NULL;
	if (n)
		ps->sizes = n;
	if (!z)
		return NULL;
	vmf__control__pool_size__init(z);
	z->vcpus = vcpus;
	z->memory_mib = mib;
	ps->sizes[ps->n_sizes++] = z;
	return z;
}

/* Demand shaping: each size the pool was asked for or holds clones of. */
static void
pool_sizes(struct vmf_daemon *d, const struct vmf_pool *p, Vmf__Control__PoolStatus *ps)
{
	ps->shape = p->shape.enabled;
	ps->shape_max = p->shape.max;
	ps->shape_memory_mib = p->shape.memory_mib;
	Vmf__Control__PoolSize *z;
	for (unsigned i = 0; i < p->shape.n; i++) {
		const struct vmf_shape_size *s = &p->shape.sizes[i];
		if (!(z = size_row(ps, s->vcpus, s->memory_mib)))
			return;
		z->demand = s->demand;
		z->handouts_shaped = s->handouts[VMF_HANDOUT_SHAPED];
		z->handouts_base = s->handouts[VMF_HANDOUT_BASE];
		z->handouts_resize = s->handouts[VMF_HANDOUT_RESIZE];
		z->handouts_miss = s->handouts[VMF_HANDOUT_MISS];
	}
	struct vmf_shape_want plan[VMF_SHAPE_SIZES];
	unsigned n = vmf_shape_plan(p, plan, VMF_SHAPE_SIZES);
	for (unsigned i = 0; i < n; i++)
		if ((z = size_row(ps, plan[i].vcpus, plan[i].memory_mib)))
			z->planned = plan[i].count;
	const struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		if (vm->pool == p && vm->state == VMF_VM_READY && (z = size_row(ps, vm->vcpus, vm->memory_mib)))
			z->ready++;
}

static void
status_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *req)
{
	(void)req;
	size_t nvms = 0;
	struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		nvms++;
	struct status_job *j = calloc(1, sizeof(*j));
	pid_t *pids = calloc(nvms + 1, sizeof(*pids));
	uint64_t *pss = calloc(nvms + 1, sizeof(*pss));
	if (!j || !pids || !pss) {
		free(j);
		free(pids);
		free(pss);
		vmf_request_fail(c, ENOMEM, "out of memory");
		return;
	}
	vmf__control__reply__init(&j->reply);
	j->d = d;
	j->c = c;
	j->pids = pids;
	j->pss = pss;
	status_build(d, vmf_request_peer(c), &j->reply, pids);
	j->n = j->reply.status ? j->reply.status->n_vms : 0;
	if (!j->reply.status || vmf_jobs_submit(d->cache.jobs, status_work, status_done, j) < 0) {
		status_work(j);
		status_done(j);
	}
}

/* The names of caps' bits, every string owned (freed with the reply). */
static char **
cap_names(unsigned caps, size_t *n)
{
	char **names = calloc(sizeof(unsigned) * 8, sizeof(char *));
	*n = 0;
	for (unsigned bit = 1; names && bit && bit <= VMF_CAP_FULL_SNAPSHOT; bit <<= 1)
		if ((caps & bit) && (names[*n] = strdup(vmf_cap_name(bit))))
			(*n)++;
	return names;
}

/* A snapshot no pool has yet, from its record (sizes as its clones get
 * them: with what its VM had hot-added). */
static Vmf__Control__TemplateStatus *
snapshot_row(struct vmf_daemon *d, const struct vmf_snap *sn)
{
	const Vmf__Catalog__TemplateRecord *rec = sn->rec;
	if (!rec || !rec->spec)
		return NULL;
	Vmf__Control__TemplateStatus *ts = calloc(1, sizeof(*ts));
	if (!ts)
		return NULL;
	vmf__control__template_status__init(ts);
	const Vmf__Catalog__TemplateSpec *sp = rec->spec;
	unsigned mib = sp->memory_mib;
	for (size_t i = 0; i < rec->n_dimms; i++)
		mib += rec->dimms[i]->size_mib;
	ts->id = strdup(rec->id);
	ts->state = strdup("ready");
	ts->vcpus = sp->vcpus + rec->hotplugged_vcpus;
	ts->memory_mib = mib;
	ts->max_vcpus = sp->max_vcpus > ts->vcpus ? sp->max_vcpus : ts->vcpus;
	ts->max_memory_mib = sp->max_memory_mib > mib ? sp->max_memory_mib : mib;
	ts->memory_size = rec->memory_size;
	ts->state_size = rec->state_size;
	ts->created_ns = rec->created_ns;
	ts->error = strdup("");
	ts->full_memory = sp->full_memory;
	ts->image_dir = strdup(rec->image_dir ? rec->image_dir : "");
	ts->name = strdup(sn->name);
	ts->parent_template_id = strdup(rec->parent_template_id ? rec->parent_template_id : "");
	ts->source_vm_id = strdup(rec->source_vm_id ? rec->source_vm_id : "");
	ts->owner_uid = (uint32_t)sn->owner;
	const struct vmf_hv_ops *ops = vmf_hv_by_kind(sp->hypervisor);
	ts->capabilities = cap_names(ops == d->ops || !ops ? d->hv.caps : ops->capabilities(NULL), &ts->n_capabilities);
	return ts;
}

/* pids[i] gets the pid whose PSS belongs in vms[i]. */
static void
status_build(struct vmf_daemon *d, uid_t peer, Vmf__Control__Reply *reply, pid_t *pids)
{
	bool all = vmf_daemon_peer_admin(d, peer);
	Vmf__Control__StatusReply *s = calloc(1, sizeof(*s));
	if (!s) {
		reply->error_code = ENOMEM;
		reply->error_message = (char *)"out of memory";
		return;
	}
	vmf__control__status_reply__init(s);
	s->pid = getpid();
	s->uptime_ms = (uint64_t)(vmf_now_ms() - d->start_ms);
	s->socket = strdup(d->opts.socket_path);
	s->hypervisor = strdup(d->ops->name);
	s->accel = strdup(d->hv.accel);
	s->accel_why = strdup(d->hv.accel_why);
	s->accel_cached = d->hv.accel_cached;
	s->requests = d->requests;
	s->hits = d->hits;
	s->misses = d->misses;
	s->errors = d->errors;
	s->handout_p50_ms = vmf_latency_quantile(&d->lat[VMF_STEP_TOTAL], 0.5);
	s->handout_p99_ms = vmf_latency_quantile(&d->lat[VMF_STEP_TOTAL], 0.99);
	s->queued = vmf_cache_queued(&d->cache);
	s->max_queue = d->cache.max_queue;
	s->queue_wait_p50_ms = vmf_latency_quantile(&d->cache.queue_wait, 0.5);
	s->queue_wait_p99_ms = vmf_latency_quantile(&d->cache.queue_wait, 0.99);

	s->capabilities = cap_names(d->hv.caps, &s->n_capabilities);

	s->steps = calloc(VMF_STEP_COUNT, sizeof(*s->steps));
	for (int i = 0; s->steps && i < VMF_STEP_COUNT; i++) {
		Vmf__Control__StepLatency *l = calloc(1, sizeof(*l));
		if (!l)
			break;
		vmf__control__step_latency__init(l);
		l->step = strdup(vmf_step_names[i]);
		l->count = d->lat[i].count;
		l->p50_ms = vmf_latency_quantile(&d->lat[i], 0.5);
		l->p99_ms = vmf_latency_quantile(&d->lat[i], 0.99);
		s->steps[s->n_steps++] = l;
	}

	size_t npools = 0, nvms = 0, nsnaps = 0;
	struct vmf_pool *p;
	struct vmf_vm *vm;
	const struct vmf_snap *sn;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		npools++;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		nvms++;
	TAILQ_FOREACH(sn, &d->snaps, link)
		nsnaps++;
	s->pools = calloc(npools + 1, sizeof(*s->pools));
	s->templates = calloc(npools + nsnaps + 1, sizeof(*s->templates));
	s->vms = calloc(nvms + 1, sizeof(*s->vms));
	TAILQ_FOREACH(p, &d->cache.pools, link) {
		if (!s->pools || !s->templates)
			break;
		/* A pool a GetVM made of a tenant's snapshot is that tenant's:
		 * its name and lineage are the snapshot's. */
		if (p->on_demand && !vmf_snap_allowed(d, peer, p->template_owner))
			continue;
		Vmf__Control__PoolStatus *ps = calloc(1, sizeof(*ps));
		Vmf__Control__TemplateStatus *ts = calloc(1, sizeof(*ts));
		if (!ps || !ts) {
			free(ps);
			free(ts);
			break;
		}
		vmf__control__pool_status__init(ps);
		ps->template_id = strdup(p->template_id);
		ps->vcpus = p->spec->vcpus;
		ps->memory_mib = p->spec->memory_mib;
		ps->target = p->target;
		ps->ready = p->ready;
		ps->filling = p->filling;
		ps->failed = (uint32_t)p->failed;
		ps->last_error = strdup(p->last_error);
		ps->share_memory = !p->spec->full_memory;
		ps->name = strdup(p->name);
		pool_sizes(d, p, ps);
		ps->image_dir = strdup(p->img.dir);
		ps->queued = p->queued;
		ps->queue_served = p->queue_served;
		ps->queue_timeouts = p->queue_timeouts;
		ps->queue_left = p->queue_left;
		ps->queue_refused = p->queue_refused;
		ps->parallelism = vmf_pool_parallelism(p);
		ps->max_parallelism = p->max_parallelism;
		s->pools[s->n_pools++] = ps;

		vmf__control__template_status__init(ts);
		ts->id = strdup(p->template_id);
		ts->state = strdup(p->tpl ? "ready" : p->building ? "building" : "failed");
		ts->vcpus = p->spec->vcpus;
		ts->memory_mib = p->spec->memory_mib;
		ts->max_vcpus = p->spec->max_vcpus;
		ts->max_memory_mib = p->spec->max_memory_mib;
		ts->memory_size = p->tpl ? p->tpl->rec->memory_size : 0;
		ts->state_size = p->tpl ? p->tpl->rec->state_size : 0;
		ts->created_ns = p->tpl ? p->tpl->rec->created_ns : 0;
		ts->error = strdup(p->last_error);
		ts->full_memory = p->spec->full_memory;
		/* What the record says once built: the pool's image otherwise. */
		ts->image_dir = strdup(p->tpl && p->tpl->rec->image_dir && *p->tpl->rec->image_dir
				       ? p->tpl->rec->image_dir : p->img.dir);
		/* A snapshot's name and lineage. */
		const Vmf__Catalog__TemplateRecord *tr = p->tpl ? p->tpl->rec : NULL;
		/* The operator's snapshot a pool of the config offers: its name,
		 * not where it came from, for a tenant. */
		bool lineage = !p->template_name[0] || vmf_snap_allowed(d, peer, p->template_owner);
		ts->name = strdup(p->template_name);
		ts->owner_uid = (uint32_t)p->template_owner;
		ts->parent_template_id = strdup(lineage && tr && tr->parent_template_id ? tr->parent_template_id : "");
		ts->source_vm_id = strdup(lineage && tr && tr->source_vm_id ? tr->source_vm_id : "");
		/* The driver that builds and clones it: the probed capabilities
		 * when it is the daemon's, else what the driver always has. */
		ts->capabilities = cap_names(p->params.ops == d->ops ? d->hv.caps : p->params.ops->capabilities(NULL),
					     &ts->n_capabilities);
		s->templates[s->n_templates++] = ts;
	}
	/* The peer's snapshots (every one for root and the daemon's user)
	 * that no pool listed above has. */
	TAILQ_FOREACH(sn, &d->snaps, link) {
		if (!s->templates || sn->making || !vmf_snap_allowed(d, peer, sn->owner))
			continue;
		bool listed = false;
		for (size_t i = 0; i < s->n_templates && !listed; i++)
			listed = strcmp(s->templates[i]->id, sn->id) == 0;
		Vmf__Control__TemplateStatus *ts = listed ? NULL : snapshot_row(d, sn);
		if (ts)
			s->templates[s->n_templates++] = ts;
	}
	TAILQ_FOREACH(vm, &d->cache.vms, link) {
		if (!s->vms)
			break;
		if (!all && (vm->owner_uid != peer || vm->state == VMF_VM_READY || vm->state == VMF_VM_CREATING))
			continue;
		Vmf__Control__VmInfo *info = calloc(1, sizeof(*info));
		if (!info)
			break;
		vmf_vm_info_fill(d, vm, 0, info);
		pids[s->n_vms] = info->pid > 0 && !vm->dead ? (pid_t)info->pid : 0;
		s->vms[s->n_vms++] = info;
	}
	vmf_limits_status(d, peer, s);
	reply->body_case = VMF__CONTROL__REPLY__BODY_STATUS;
	reply->status = s;
}

const struct vmf_op vmf_op_status = {
	.name = "status", .body = VMF__CONTROL__REQUEST__BODY_STATUS, .flags = VMF_OP_WHILE_STOPPING, .start = status_start,
};
