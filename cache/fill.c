/* The pool engine: template builds, clones and their warm-up on workers,
 * refilling each pool as its policy (pool.c) says. */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "cache.h"
#include "catalog.h"
#include "driver.h"
#include "frame.h"
#include "log.h"
#include "util.h"

struct clone_job {
	struct vmf_cache *c;
	struct vmf_vm *vm;                  /* the loop's: the worker touches only snap */
	struct vmf_vm snap;                 /* the worker's copy; clone_done applies it */
	struct vmf_pool *pool;               /* the worker reads only its params */
	struct vmf_tpl *tpl;                 /* a reference, dropped by clone_done */
	bool template_broken;
	uint8_t sample[16];                 /* the guest's random bytes after its reseed */
	bool shape_failed;
	int rc;
	struct vmf_error err;
};

static void start_template_build(struct vmf_cache *c, struct vmf_pool *p);

#ifdef VMF_FAULT_INJECTION
int
vmf_cache_fault_gate(struct vmf_cache *c, const char *name, struct vmf_error *err)
{
	if (!VMF_FAULT_ERR("gates"))
		return 0;
	unsigned ticket = atomic_fetch_add(&c->gate_tickets[strcmp(name, "miss") == 0], 1);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/gate-%s", c->run_dir, name);
	int64_t deadline = vmf_now_ms() + 600000;
	for (;;) {
		char *s = NULL;
		if (vmf_read_file(path, &s, NULL, 64, NULL) < 0)
			return 0;
		bool fail = strncmp(s, "fail", 4) == 0;
		unsigned long open = strtoul(s, NULL, 10);
		free(s);
		if (fail || vmf_now_ms() > deadline)
			return vmf_err(err, EIO, "fault injection: the %s gate failed clone %u", name, ticket);
		if (open > ticket)
			return 0;
		poll(NULL, 0, 20);
	}
}
#endif

#define WARM_TIMEOUT_MS 60000

/* Work a hand-out would otherwise wait for, done while filling: the guest
 * notices the host's agent connection (tens of ms under TCG), gets an
 * identity of its own (its RNG reseeded with fresh host entropy, then a
 * boot id and machine id: nothing else is ever cloned from it, so its RNG
 * state stays its own), mounts the VM's share (the sandbox's share_dir
 * becomes a link to it) and runs `true`, so that the guest's process
 * spawn path has run once in this VMM (under TCG a fresh QEMU translates
 * every guest code path the first time it runs: the owner's first
 * command would pay it).  The connection stays open for the hand-out; the
 * clone is paused again.  sample gets the guest's random bytes after the
 * reseed, which clone_done checks against other clones'. */
static int
warm_clone(struct vmf_vm *vm, uint8_t sample[16], struct vmf_error *err)
{
	const struct vmf_hv_ops *ops = vm->ops;
	int r = ops->resume(vm->hv, err);
	if (r == 0)
		r = vmf_agent_open(ops->agent_connect, vm->hv, WARM_TIMEOUT_MS, &vm->agent, err);
	if (r < 0)
		return vmf_error_prefix(err, "warming clone %s", vm->id);
	struct vmf_agent_identity id;
	int code;
	/* Firecracker and Cloud Hypervisor have no share device to mount. */
	if ((r = vmf_agent_new_identity(vm->agent, &id, WARM_TIMEOUT_MS, err)) < 0 ||
	    ((ops->capabilities(vm->hv) & VMF_CAP_SHARE_DEVICE) &&
	     (r = vmf_agent_mount_share(vm->agent, VMF_SHARE_TAG, WARM_TIMEOUT_MS, err)) < 0) ||
	    (r = vmf_agent_run(vm->agent, (const char *const[]){ "true", NULL }, &code, WARM_TIMEOUT_MS, err)) < 0 ||
	    (r = ops->pause(vm->hv, err)) < 0) {
		vmf_agent_free(vm->agent);
		vm->agent = NULL;
		return vmf_error_prefix(err, "warming clone %s", vm->id);
	}
	memcpy(sample, id.sample, 16);
	snprintf(vm->boot_id, sizeof(vm->boot_id), "%s", id.boot_id);
	snprintf(vm->machine_id, sizeof(vm->machine_id), "%s", id.machine_id);
	return 0;
}

int
vmf_cache_check_sample(struct vmf_cache *c, const char *vm_id, const uint8_t sample[16], struct vmf_error *err)
{
	/* Clones that drew the same random bytes would share secrets. */
	for (unsigned i = 0; i < c->recent_rng_n && i < 64; i++)
		if (memcmp(c->recent_rng[i], sample, 16) == 0)
			return vmf_err(err, EIO, "VM %s returned a random sample seen from another VM; clone "
				       "uniqueness check failed", vm_id);
	memcpy(c->recent_rng[c->recent_rng_n++ % 64], sample, 16);
	return 0;
}

/* Demand shaping (pool.h): a warmed clone grown to a size the pool is
 * often asked for, so that its hand-out needs no hot-add.  Resumed once
 * more, the vCPUs and DIMMs hot-added and onlined by the agent, paused
 * again; vm's size is then the shaped one (its record says so). */
static int
shape_clone(struct vmf_vm *vm, struct vmf_error *err)
{
	const struct vmf_hv_ops *ops = vm->ops;
	unsigned cpus = vm->shape_vcpus > vm->vcpus ? vm->shape_vcpus : vm->vcpus;
	unsigned mib = vm->shape_mib > vm->memory_mib ? vm->shape_mib : vm->memory_mib;
	uint32_t online = 0;
	uint64_t kib = 0;
	int r = ops->resume(vm->hv, err);
	if (r == 0 && cpus > vm->vcpus)
		r = ops->hotplug_vcpus(vm->hv, cpus, err);
	if (r == 0 && mib > vm->memory_mib)
		r = ops->hotplug_memory(vm->hv, mib - vm->memory_mib, err);
	if (r == 0)
		r = vmf_agent_online(vm->agent, cpus, mib, &online, &kib, WARM_TIMEOUT_MS, err);
	if (r == 0 && online != cpus)
		r = vmf_err(err, EIO, "the guest has %u CPUs online after hot-add, %u wanted", online, cpus);
	if (r == 0)
		r = ops->pause(vm->hv, err);
	if (r < 0)
		return vmf_error_prefix(err, "shaping clone %s to %u vCPUs and %u MiB", vm->id, cpus, mib);
	vm->vcpus = cpus;
	vm->memory_mib = mib;
	return 0;
}

static void
clone_work(void *arg)
{
	struct clone_job *j = arg;
	struct vmf_vm *vm = &j->snap;
	struct vmf_error rerr = {0};
	/* Recorded before the clone starts, so a crash mid-clone leaves a
	 * record recovery can reconcile.  (A QEMU without one is found by its
	 * name and killed all the same, so a failed write only warns.)  Both
	 * records are written here: the event loop must not wait on a file
	 * system, not even the run dir's. */
	if (vmf_cache_put_vm_record(j->c, vm, VMF_VM_CREATING, &rerr) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", rerr.msg);
	if ((j->rc = VMF_FAULT_GATE(j->c, "clone", &j->err)) < 0)
		return;
	/* Cheap check (sizes) on every clone; digests were checked once at start. */
	j->rc = vmf_template_verify(j->c->cat, j->tpl->rec, false, &j->err);
	if (j->rc < 0) {
		j->template_broken = true;
		return;
	}
	j->rc = vmf_template_clone(&j->pool->params, j->tpl->rec, vm->id, vm->run_dir, vm->share_dir, &vm->hv,
				   &j->err);
	VMF_FAULT("mid-clone");
	if (j->rc == 0)
		j->rc = warm_clone(vm, j->sample, &j->err);
	if (j->rc == 0 && (vm->shape_vcpus || vm->shape_mib))
		j->shape_failed = (j->rc = shape_clone(vm, &j->err)) < 0;
	/* A clone that died in its warm-up: the error (the pool's last_error)
	 * says why. */
	if (j->rc < 0 && vm->hv)
		vmf_vm_exit_explain(vm->ops, vm->hv, &j->err);
	if (j->rc == 0) {
		vm->ready_ns = vmf_realtime_ns();
		if (vmf_cache_put_vm_record(j->c, vm, VMF_VM_READY, &rerr) < 0)
			log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", rerr.msg);
	}
}

static void
clone_done(void *arg)
{
	struct clone_job *j = arg;
	struct vmf_cache *c = j->c;
	struct vmf_vm *vm = j->vm;
	struct vmf_pool *p = j->pool;
	p->filling--;
	vm->hv = j->snap.hv;
	vm->agent = j->snap.agent;
	vm->ready_ns = j->snap.ready_ns;
	memcpy(vm->boot_id, j->snap.boot_id, sizeof(vm->boot_id));
	memcpy(vm->machine_id, j->snap.machine_id, sizeof(vm->machine_id));
	vm->vcpus = j->snap.vcpus;
	vm->memory_mib = j->snap.memory_mib;
	vm->busy = false;
	if (j->rc == 0 && !vm->dead && !c->destroying)
		j->rc = vmf_cache_check_sample(c, vm->id, j->sample, &j->err);
	/* A clone finished during a SIGTERM shutdown joins the pool, which the
	 * next daemon adopts; during a destroy it is stopped. */
	if (j->rc == 0 && !vm->dead && !c->destroying) {
		vm->state = VMF_VM_READY;   /* recorded by clone_work */
		vm->ready_mono_ms = vmf_now_ms();
		vmf_histogram_add(&c->clone_hist, (double)(vm->ready_ns - vm->created_ns) / 1e9);
		p->ready++;
		vmf_pool_note_success(p);
		vmf_cache_watch_vm(c, vm);
		log_vm(VMF_LOG_DEBUG, vm->id, "ready in pool (%u/%u)", p->ready, p->target);
		vmf_cache_serve_queue(c, p);
	} else {
		if (j->rc < 0) {
			log_vm(VMF_LOG_WARN, vm->id, "clone failed: %s", j->err.msg);
			vmf_pool_note_failure(p, vmf_now_ms(), j->err.msg);
			/* Base clones meanwhile: a guest that cannot online
			 * what was added must not keep the pool empty. */
			if (j->shape_failed)
				p->shape.retry_at_ms = vmf_now_ms() + VMF_SHAPE_RETRY_MS;
		}
		if (j->template_broken && p->tpl == j->tpl) {
			/* Rebuilt on the next fill: the record is already marked
			 * broken.  Jobs still using it hold their references. */
			vmf_tpl_unref(p->tpl);
			p->tpl = NULL;
			p->verified = false;
		}
		vmf_cache_destroy_vm(c, vm, false, NULL);
	}
	vmf_tpl_unref(j->tpl);
	free(j);
	c->hooks.readiness(c->hooks.ctx);
	c->hooks.settle(c->hooks.ctx);
}

void
vmf_cache_refill(struct vmf_cache *c)
{
	if (c->stopping)
		return;
	int64_t now = vmf_now_ms();
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &c->pools, link) {
		if (!p->tpl && !p->building && now >= p->retry_at_ms) {
			start_template_build(c, p);
			continue;
		}
		for (unsigned n = vmf_pool_clones_to_start(p, now); n > 0; n--) {
			struct clone_job *j = calloc(1, sizeof(*j));
			struct vmf_vm *vm = j ? vmf_cache_new_vm(c, p) : NULL;
			if (!vm) {
				free(j);
				break;
			}
			unsigned sv, sm;
			if (vmf_pool_next_shape(p, &c->vms, now, &sv, &sm)) {
				vm->shape_vcpus = sv;
				vm->shape_mib = sm;
			}
			vm->busy = true;
			j->c = c;
			j->vm = vm;
			j->snap = *vm;
			j->pool = p;
			j->tpl = vmf_tpl_ref(p->tpl);
			if (vmf_jobs_submit_class(c->jobs, VMF_JOB_POOL, clone_work, clone_done, j) < 0) {
				vmf_tpl_unref(j->tpl);
				vmf_cache_vm_free(c, vm);
				free(j);
				break;
			}
			p->filling++;
		}
	}
}

/* ---- template builds ---- */

struct build_job {
	struct vmf_cache *c;
	struct vmf_pool *pool;
	int64_t start_ms;
	Vmf__Catalog__TemplateRecord *rec;
	int rc;
	struct vmf_error err;
};

static void
build_progress(void *ctx, const char *step)
{
	struct build_job *j = ctx;
	char line[160];
	snprintf(line, sizeof(line), "template %.12s: %s", j->pool->template_id, step);
	j->c->hooks.progress(j->c->hooks.ctx, line);
}

static void
build_work(void *arg)
{
	struct build_job *j = arg;
	struct vmf_cache *c = j->c;
	struct vmf_pool *p = j->pool;
	Vmf__Catalog__TemplateRecord *rec = NULL;
	int r = vmf_catalog_template_get(c->cat, p->template_id, &rec, &j->err);
	if (r == 0 && rec->state == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY) {
		/* Digests are checked once per daemon run; afterwards clones check
		 * sizes only. */
		build_progress(j, "verifying the existing template");
		if (vmf_template_verify(c->cat, rec, true, &j->err) == 0) {
			j->rec = rec;
			return;
		}
		log_tpl(VMF_LOG_WARN, p->template_id, "%s; rebuilding", j->err.msg);
	}
	if (rec)
		vmf__catalog__template_record__free_unpacked(rec, NULL);
	/* A snapshot's state cannot be made again. */
	if (p->template_name[0]) {
		if (r == 0 || r == -ENOENT)
			j->rc = vmf_err(&j->err, ENOENT, "template %s (%.16s) is broken or gone; make it again with "
					"vmfactory snapshot", p->template_name, p->template_id);
		else
			j->rc = r;
		return;
	}
	j->rc = vmf_template_build(c->cat, c->state_dir, c->run_dir, &p->params, p->spec, &p->img,
				   build_progress, j, &j->rec, &j->err);
}

static void
build_done(void *arg)
{
	struct build_job *j = arg;
	struct vmf_cache *c = j->c;
	struct vmf_pool *p = j->pool;
	p->building = false;
	if (j->rc == 0) {
		vmf_histogram_add(&c->build_hist, (double)(vmf_now_ms() - j->start_ms) / 1000.0);
		p->tpl = vmf_tpl_new(j->rec);   /* NULL (out of memory): built again */
		p->verified = true;
		vmf_pool_note_success(p);
		p->last_error[0] = '\0';
	} else {
		vmf_pool_note_failure(p, vmf_now_ms(), j->err.msg);
		log_tpl(VMF_LOG_ERROR, p->template_id, "%s (retry in %lld s)", j->err.msg,
			(long long)vmf_pool_backoff_ms(p->consecutive_failures) / 1000);
		c->hooks.build_failed(c->hooks.ctx, j->err.msg);
	}
	free(j);
	c->hooks.readiness(c->hooks.ctx);
	c->hooks.settle(c->hooks.ctx);
}

static void
start_template_build(struct vmf_cache *c, struct vmf_pool *p)
{
	struct build_job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->c = c;
	j->pool = p;
	j->start_ms = vmf_now_ms();
	p->building = true;
	if (vmf_jobs_submit_class(c->jobs, VMF_JOB_POOL, build_work, build_done, j) < 0) {
		p->building = false;
		free(j);
	}
}


void
vmf_cache_tick(struct vmf_cache *c, unsigned default_max_idle_s)
{
	int64_t now = vmf_now_ms();
	vmf_cache_trim_logs(c);
	vmf_cache_queue_check(c);
	struct vmf_vm *vm, *next;
	/* Demand moved on: one shaped clone per pool and tick makes room for
	 * a clone of a size now wanted (refilled as the plan says). */
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &c->pools, link)
		if (!c->stopping && (vm = vmf_pool_stale_shaped(p, &c->vms, now))) {
			log_vm(VMF_LOG_INFO, vm->id, "replacing: pool %s no longer wants clones of %u vCPUs and %u MiB",
			       p->name, vm->vcpus, vm->memory_mib);
			vmf_cache_destroy_vm(c, vm, false, NULL);
		}
	for (vm = TAILQ_FIRST(&c->vms); vm; vm = next) {
		next = TAILQ_NEXT(vm, link);
		/* A stopped VM whose run dir could not be removed (cache/vm.c). */
		if (vm->rm_pending && !vm->busy && now >= vm->rm_retry_ms && !c->stopping) {
			vmf_cache_retry_removal(c, vm);
			continue;
		}
		/* Without a pidfd nothing else notices an exit.  A VM a job owns
		 * is left alone: its handle is the job's, and the job's done
		 * callback looks at it. */
		if (vm->hv && !vm->watch && !vm->busy && !vm->dead && !vm->ops->alive(vm->hv)) {
			vmf_cache_vm_exited(c, vm);
			continue;
		}
		/* A VM kept across guest resets: its events watched again once
		 * no job holds its monitor. */
		if (vm->state == VMF_VM_ASSIGNED && !vm->busy && !vm->dead)
			vmf_cache_watch_events(c, vm);
		unsigned max_idle = vm->pool ? vm->pool->max_idle_s : default_max_idle_s;
		if (vmf_pool_vm_idle_expired(vm, max_idle, now) && !c->stopping) {
			log_vm(VMF_LOG_INFO, vm->id, "replacing: paused longer than %u s", max_idle);
			vmf_cache_destroy_vm(c, vm, false, NULL);
		}
	}
}
