#include "pool.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *
vmf_vm_state_name(enum vmf_vm_state s)
{
	switch (s) {
	case VMF_VM_CREATING: return "filling";
	case VMF_VM_READY: return "ready";
	case VMF_VM_HANDING_OUT: return "handing-out";
	case VMF_VM_ASSIGNED: return "assigned";
	case VMF_VM_RELEASING: return "releasing";
	case VMF_VM_GONE: return "gone";
	case VMF_VM_SUSPENDING: return "suspending";
	case VMF_VM_SUSPENDED: return "suspended";
	case VMF_VM_RESUMING: return "resuming";
	}
	return "unknown";
}

const char *
vmf_stop_mode_name(enum vmf_stop_mode m)
{
	switch (m) {
	case VMF_STOP_FLUSH: return "flush";
	case VMF_STOP_KILL: return "kill";
	case VMF_STOP_POWEROFF: return "poweroff";
	}
	return "unknown";
}

struct vmf_tpl *
vmf_tpl_new(Vmf__Catalog__TemplateRecord *rec)
{
	struct vmf_tpl *t = calloc(1, sizeof(*t));
	if (!t) {
		vmf__catalog__template_record__free_unpacked(rec, NULL);
		return NULL;
	}
	atomic_init(&t->refs, 1);
	t->rec = rec;
	return t;
}

struct vmf_tpl *
vmf_tpl_ref(struct vmf_tpl *t)
{
	if (t)
		atomic_fetch_add(&t->refs, 1);
	return t;
}

void
vmf_tpl_unref(struct vmf_tpl *t)
{
	if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	vmf__catalog__template_record__free_unpacked(t->rec, NULL);
	free(t);
}

unsigned
vmf_pool_clones_to_start(const struct vmf_pool *p, int64_t now_ms)
{
	if (!p->tpl || p->building || now_ms < p->retry_at_ms)
		return 0;
	/* A waiting request takes the next ready clone: the pool makes one
	 * for each besides its target. */
	unsigned have = p->ready + p->filling, need = p->target + p->queued;
	if (have >= need)
		return 0;
	unsigned par = vmf_pool_parallelism(p);
	if (p->filling >= par)
		return 0;
	unsigned want = need - have;
	unsigned room = par - p->filling;
	/* After a failure, probe with one clone before filling in parallel. */
	if (p->consecutive_failures)
		room = 1;
	return want < room ? want : room;
}

unsigned
vmf_pool_clone_cap(unsigned configured, unsigned cpus, uint64_t mem_avail_mib, unsigned mib, unsigned workers)
{
	unsigned cap = configured;
	if (!cap) {
		/* A clone is mostly CPU (QEMU's start, the state's load, the
		 * warm-up's guest work): more at once than cores only slows each. */
		cap = cpus ? cpus : 1;
		/* Each may touch all its guest memory: never more than fit. */
		if (mem_avail_mib && mib && mem_avail_mib / mib < cap)
			cap = (unsigned)(mem_avail_mib / mib);
	}
	if (workers && cap > workers)
		cap = workers;
	return cap ? cap : 1;
}

unsigned
vmf_pool_parallelism(const struct vmf_pool *p)
{
	unsigned base = p->parallelism ? p->parallelism : 1;
	unsigned cap = p->max_parallelism > base ? p->max_parallelism : base;
	/* Each waiting request adds a clone at once, up to the host's bound:
	 * a burst is served at the rate the host can clone, and an idle
	 * refill leaves cores to the VMs in use. */
	unsigned par = base + p->queued;
	return par < base || par > cap ? cap : par;
}

struct vmf_waiter *
vmf_pool_next_waiter(const struct vmf_pool *p)
{
	struct vmf_waiter *best = NULL, *w;
	TAILQ_FOREACH(w, &p->waiters, link)
		if (!best || w->turn < best->turn || (w->turn == best->turn && w->seq < best->seq))
			best = w;
	return best;
}

void
vmf_pool_waiter_add(struct vmf_pool *p, struct vmf_waiter *w)
{
	if (!p->waiters.tqh_last)   /* pools are made zeroed: the list starts here */
		TAILQ_INIT(&p->waiters);
	w->pool = p;
	w->seq = ++p->queue_seq;
	/* Its uid's place in the round: that of its waiters already queued. */
	w->turn = 0;
	struct vmf_waiter *o;
	TAILQ_FOREACH(o, &p->waiters, link)
		if (o->uid == w->uid)
			w->turn = o->turn;
	TAILQ_INSERT_TAIL(&p->waiters, w, link);
	p->queued++;
}

void
vmf_pool_waiter_remove(struct vmf_pool *p, struct vmf_waiter *w, bool served)
{
	TAILQ_REMOVE(&p->waiters, w, link);
	p->queued--;
	if (!served)
		return;
	/* The uid's turn is taken: its other waiters go behind every uid whose
	 * last turn is older. */
	p->queue_turns++;
	struct vmf_waiter *o;
	TAILQ_FOREACH(o, &p->waiters, link)
		if (o->uid == w->uid)
			o->turn = p->queue_turns;
}

unsigned
vmf_pool_queued_by(const struct vmf_pool *p, uid_t uid)
{
	unsigned n = 0;
	const struct vmf_waiter *w;
	TAILQ_FOREACH(w, &p->waiters, link)
		n += w->uid == uid;
	return n;
}

int64_t
vmf_pool_backoff_ms(unsigned n)
{
	if (n == 0)
		return 0;
	int64_t d = 1000;
	for (unsigned i = 1; i < n && d < 60000; i++)
		d *= 2;
	return d > 60000 ? 60000 : d;
}

void
vmf_pool_note_failure(struct vmf_pool *p, int64_t now_ms, const char *msg)
{
	p->failed++;
	p->consecutive_failures++;
	p->retry_at_ms = now_ms + vmf_pool_backoff_ms(p->consecutive_failures);
	snprintf(p->last_error, sizeof(p->last_error), "%s", msg);
}

void
vmf_pool_note_success(struct vmf_pool *p)
{
	p->consecutive_failures = 0;
	p->retry_at_ms = 0;
}

bool
vmf_pool_vm_idle_expired(const struct vmf_vm *vm, unsigned max_idle_s, int64_t now_ms)
{
	return max_idle_s && vm->state == VMF_VM_READY && !vm->busy &&
	       now_ms - vm->ready_mono_ms > (int64_t)max_idle_s * 1000;
}

void
vmf_latency_add(struct vmf_latency *l, double ms)
{
	l->ms[l->count % VMF_LAT_SAMPLES] = ms;
	l->count++;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

double
vmf_latency_quantile(const struct vmf_latency *l, double q)
{
	size_t n = l->count < VMF_LAT_SAMPLES ? (size_t)l->count : VMF_LAT_SAMPLES;
	if (n == 0)
		return 0;
	double tmp[VMF_LAT_SAMPLES];
	memcpy(tmp, l->ms, n * sizeof(double));
	qsort(tmp, n, sizeof(double), cmp_double);
	size_t i = (size_t)(q * (double)(n - 1) + 0.5);
	return tmp[i < n ? i : n - 1];
}

/* From 1 ms (a hand-out step under KVM) to 2 min (a template build under TCG). */
const double vmf_hist_bounds_s[VMF_HIST_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
};

void
vmf_histogram_add(struct vmf_histogram *h, double seconds)
{
	for (int i = 0; i < VMF_HIST_BUCKETS; i++)
		if (seconds <= vmf_hist_bounds_s[i])
			h->bucket[i]++;
	h->count++;
	h->sum_s += seconds;
}

/* ---- which pool serves a request ---- */

static bool
pool_fits(const struct vmf_pool *p, unsigned vcpus, unsigned mem)
{
	const Vmf__Catalog__TemplateSpec *s = p->spec;
	return vcpus >= s->vcpus && vcpus <= s->max_vcpus && mem >= s->memory_mib && mem <= s->max_memory_mib;
}

/* A named pool is the only candidate: a tenant who asked for a pool that
 * does not share memory must never get a VM from one that does. */
static struct vmf_pool *
named_pool(const struct vmf_pool_list *pools, const char *name, unsigned vcpus, unsigned mem, struct vmf_error *err)
{
	struct vmf_pool *p;
	char names[VMF_ERROR_MSG_MAX - 100] = "";
	size_t off = 0;
	TAILQ_FOREACH(p, pools, link) {
		/* Another tenant's snapshot pool: not there for this request. */
		if (p->on_demand)
			continue;
		if (strcmp(p->name, name) != 0) {
			int n = snprintf(names + off, sizeof(names) - off, "%s%s", off ? ", " : "", p->name);
			if (n > 0 && (size_t)n < sizeof(names) - off)
				off += (size_t)n;
			continue;
		}
		if (!pool_fits(p, vcpus, mem)) {
			vmf_err(err, ENOSPC, "pool %s does not serve %u vCPUs and %u MiB: it allows %u-%u vCPUs and "
				"%u-%u MiB", p->name, vcpus, mem, p->spec->vcpus, p->spec->max_vcpus,
				p->spec->memory_mib, p->spec->max_memory_mib);
			return NULL;
		}
		return p;
	}
	vmf_err(err, ENOENT, "no pool named '%.64s' in this daemon (pools: %s)", name, off ? names : "none");
	return NULL;
}

struct vmf_pool *
vmf_pool_choose(const struct vmf_pool_list *pools, const char *name, unsigned vcpus, unsigned mem,
		struct vmf_error *err)
{
	if (name && *name)
		return named_pool(pools, name, vcpus, mem, err);
	struct vmf_pool *best = NULL, *p;
	TAILQ_FOREACH(p, pools, link) {
		const Vmf__Catalog__TemplateSpec *s = p->spec;
		if (p->template_name[0] || !pool_fits(p, vcpus, mem))
			continue;
		/* The largest base that fits leaves the least to hot-add; of
		 * equal ones, a pool that shares memory costs the host less. */
		unsigned size = s->vcpus + s->memory_mib, best_size = best ? best->spec->vcpus + best->spec->memory_mib : 0;
		if (!best || size > best_size || (size == best_size && best->spec->full_memory && !s->full_memory))
			best = p;
	}
	if (!best) {
		/* The message names the pools a request may reach by size or
		 * name: not those of a tenant's snapshot. */
		struct vmf_pool *only = NULL;
		unsigned n = 0;
		TAILQ_FOREACH(p, pools, link)
			if (!p->on_demand && n++ == 0)
				only = p;
		p = only;
		if (!p) {
			vmf_err(err, ENOENT, "this daemon has no pool");
			return NULL;
		}
		if (n == 1) {
			vmf_err(err, ENOSPC, "no pool serves %u vCPUs and %u MiB: the template allows %u-%u vCPUs "
				"and %u-%u MiB", vcpus, mem, p->spec->vcpus, p->spec->max_vcpus, p->spec->memory_mib,
				p->spec->max_memory_mib);
			return NULL;
		}
		/* Several pools (the config file): name each one's range. */
		char ranges[VMF_ERROR_MSG_MAX - 100] = "";
		size_t off = 0;
		TAILQ_FOREACH(p, pools, link) {
			if (p->on_demand)
				continue;
			int w = snprintf(ranges + off, sizeof(ranges) - off, "%s%s %u-%u vCPUs and %u-%u MiB",
					 off ? "; " : "", p->name, p->spec->vcpus, p->spec->max_vcpus,
					 p->spec->memory_mib, p->spec->max_memory_mib);
			if (w < 0 || (size_t)w >= sizeof(ranges) - off)
				break;
			off += (size_t)w;
		}
		vmf_err(err, ENOSPC, "no pool serves %u vCPUs and %u MiB: pools allow %s", vcpus, mem, ranges);
	}
	return best;
}

/* ---- demand-shaped pools ---- */

const char *
vmf_handout_kind_name(enum vmf_handout_kind k)
{
	switch (k) {
	case VMF_HANDOUT_SHAPED: return "shaped";
	case VMF_HANDOUT_BASE: return "base";
	case VMF_HANDOUT_RESIZE: return "resize";
	case VMF_HANDOUT_MISS: return "miss";
	case VMF_HANDOUT_KINDS: break;
	}
	return "unknown";
}

/* The entry of vcpus / mib, made when missing: a full table gives up the
 * entry of least demand (its hand-out counts go to other). */
static struct vmf_shape_size *
shape_entry(struct vmf_shape *s, unsigned vcpus, unsigned mib)
{
	for (unsigned i = 0; i < s->n; i++)
		if (s->sizes[i].vcpus == vcpus && s->sizes[i].memory_mib == mib)
			return &s->sizes[i];
	unsigned i = s->n;
	if (s->n == VMF_SHAPE_SIZES) {
		i = 0;
		for (unsigned k = 1; k < s->n; k++)
			if (s->sizes[k].demand < s->sizes[i].demand)
				i = k;
		for (int k = 0; k < VMF_HANDOUT_KINDS; k++)
			s->other[k] += s->sizes[i].handouts[k];
	} else {
		s->n++;
	}
	s->sizes[i] = (struct vmf_shape_size){ .vcpus = vcpus, .memory_mib = mib };
	return &s->sizes[i];
}

void
vmf_shape_note_request(struct vmf_shape *s, unsigned vcpus, unsigned mib)
{
	/* 2^(-1/32): a request counts half after VMF_SHAPE_HALF_LIFE (32) more */
	const double decay = 0.9785720620877001;
	for (unsigned i = 0; i < s->n; i++)
		s->sizes[i].demand *= decay;
	shape_entry(s, vcpus, mib)->demand += 1.0;
}

void
vmf_shape_note_handout(struct vmf_shape *s, unsigned vcpus, unsigned mib, enum vmf_handout_kind k)
{
	if (k < VMF_HANDOUT_KINDS)
		shape_entry(s, vcpus, mib)->handouts[k]++;
}

static bool
is_base(const struct vmf_pool *p, unsigned vcpus, unsigned mib)
{
	return vcpus == p->spec->vcpus && mib == p->spec->memory_mib;
}

static unsigned
extra_mib(const struct vmf_pool *p, unsigned mib)
{
	return mib > p->spec->memory_mib ? mib - p->spec->memory_mib : 0;
}

unsigned
vmf_shape_plan(const struct vmf_pool *p, struct vmf_shape_want *out, unsigned n)
{
	const struct vmf_shape *s = &p->shape;
	if (!s->enabled || !p->spec)
		return 0;
	double total = 0;
	unsigned order[VMF_SHAPE_SIZES];
	for (unsigned i = 0; i < s->n; i++) {
		total += s->sizes[i].demand;
		/* insertion sort by demand, most wanted first; ties keep table order */
		unsigned k = i;
		for (; k > 0 && s->sizes[order[k - 1]].demand < s->sizes[i].demand; k--)
			order[k] = order[k - 1];
		order[k] = i;
	}
	unsigned slots = s->max, mem_left = s->memory_mib, used = 0;
	for (unsigned o = 0; o < s->n && used < n && slots > 0 && total > 0; o++) {
		const struct vmf_shape_size *z = &s->sizes[order[o]];
		double share = z->demand / total;
		if (is_base(p, z->vcpus, z->memory_mib) || z->demand < VMF_SHAPE_MIN_DEMAND ||
		    share < VMF_SHAPE_MIN_SHARE)
			continue;
		/* Its share of the pool, rounded up: a size asked for now and
		 * then still finds one clone ready. */
		double x = share * p->target;
		unsigned want = (unsigned)x;
		if (x - want > 1e-9)
			want++;
		if (want > slots)
			want = slots;
		unsigned extra = extra_mib(p, z->memory_mib);
		if (extra && want > mem_left / extra)
			want = mem_left / extra;
		if (!want)
			continue;
		out[used++] = (struct vmf_shape_want){ z->vcpus, z->memory_mib, want };
		slots -= want;
		mem_left -= want * extra;
	}
	return used;
}

/* A VM of p that counts toward its shape: ready, or filling toward one. */
static bool
pool_vm_size(const struct vmf_pool *p, const struct vmf_vm *vm, unsigned *vcpus, unsigned *mib)
{
	if (vm->pool != p || vm->dead)
		return false;
	if (vm->state == VMF_VM_READY) {
		*vcpus = vm->vcpus;
		*mib = vm->memory_mib;
		return true;
	}
	if (vm->state == VMF_VM_CREATING) {
		*vcpus = vm->shape_vcpus ? vm->shape_vcpus : p->spec->vcpus;
		*mib = vm->shape_mib ? vm->shape_mib : p->spec->memory_mib;
		return true;
	}
	return false;
}

bool
vmf_pool_next_shape(const struct vmf_pool *p, const struct vmf_vm_list *vms, int64_t now_ms, unsigned *vcpus,
		    unsigned *mib)
{
	struct vmf_shape_want plan[VMF_SHAPE_SIZES];
	unsigned n = now_ms < p->shape.retry_at_ms ? 0 : vmf_shape_plan(p, plan, VMF_SHAPE_SIZES);
	if (!n)
		return false;
	unsigned have[VMF_SHAPE_SIZES] = {0}, shaped = 0;
	uint64_t held = 0;
	const struct vmf_vm *vm;
	TAILQ_FOREACH(vm, vms, link) {
		unsigned v, m;
		if (!pool_vm_size(p, vm, &v, &m) || is_base(p, v, m))
			continue;
		shaped++;
		held += extra_mib(p, m);
		for (unsigned i = 0; i < n; i++)
			if (plan[i].vcpus == v && plan[i].memory_mib == m)
				have[i]++;
	}
	for (unsigned i = 0; i < n; i++) {
		/* Shaped clones the plan no longer wants still count against
		 * the cap and the budget until they are used or replaced. */
		if (have[i] >= plan[i].count || shaped >= p->shape.max ||
		    held + extra_mib(p, plan[i].memory_mib) > p->shape.memory_mib)
			continue;
		*vcpus = plan[i].vcpus;
		*mib = plan[i].memory_mib;
		return true;
	}
	return false;
}

struct vmf_vm *
vmf_pool_pick(const struct vmf_pool *p, const struct vmf_vm_list *vms, unsigned vcpus, unsigned mib,
	      enum vmf_handout_kind *kind)
{
	struct vmf_vm *best = NULL, *vm;
	int best_rank = 3;
	uint64_t best_cost = 0;
	TAILQ_FOREACH(vm, vms, link) {
		if (vm->pool != p || vm->state != VMF_VM_READY || vm->busy || vm->dead)
			continue;
		uint64_t miss_v = vcpus > vm->vcpus ? vcpus - vm->vcpus : 0;
		uint64_t miss_m = mib > vm->memory_mib ? mib - vm->memory_mib : 0;
		uint64_t over_v = vm->vcpus > vcpus ? vm->vcpus - vcpus : 0;
		uint64_t over_m = vm->memory_mib > mib ? vm->memory_mib - mib : 0;
		/* 0: exact; 1: larger, nothing to hot-add; 2: hot-add needed,
		 * least first (a vCPU weighs as 256 MiB), then least excess. */
		int rank = miss_v || miss_m ? 2 : over_v || over_m ? 1 : 0;
		uint64_t cost = ((miss_v * 256 + miss_m) << 32) + over_v * 256 + over_m;
		if (rank < best_rank || (rank == best_rank && cost < best_cost)) {
			best = vm;
			best_rank = rank;
			best_cost = cost;
		}
	}
	*kind = !best ? VMF_HANDOUT_MISS
		: best_rank == 2 ? VMF_HANDOUT_RESIZE
		: best_rank == 0 && is_base(p, vcpus, mib) ? VMF_HANDOUT_BASE : VMF_HANDOUT_SHAPED;
	return best;
}

struct vmf_vm *
vmf_pool_stale_shaped(const struct vmf_pool *p, const struct vmf_vm_list *vms, int64_t now_ms)
{
	struct vmf_shape_want plan[VMF_SHAPE_SIZES];
	unsigned n = vmf_shape_plan(p, plan, VMF_SHAPE_SIZES);
	struct vmf_vm *vm;
	TAILQ_FOREACH(vm, vms, link) {
		if (vm->pool != p || vm->state != VMF_VM_READY || vm->busy || vm->dead ||
		    is_base(p, vm->vcpus, vm->memory_mib) || now_ms - vm->ready_mono_ms < VMF_SHAPE_STALE_MS)
			continue;
		bool wanted = false;
		for (unsigned i = 0; i < n; i++)
			wanted = wanted || (plan[i].vcpus == vm->vcpus && plan[i].memory_mib == vm->memory_mib);
		if (!wanted)
			return vm;
	}
	return NULL;
}
