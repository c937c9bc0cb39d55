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
	unsigned have = p->ready + p->filling;
	if (have >= p->target)
		return 0;
	unsigned par = p->parallelism ? p->parallelism : 1;
	if (p->filling >= par)
		return 0;
	unsigned want = p->target - have;
	unsigned room = par - p->filling;
	/* After a failure, probe with one clone before filling in parallel. */
	if (p->consecutive_failures)
		room = 1;
	return want < room ? want : room;
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
		if (!pool_fits(p, vcpus, mem))
			continue;
		/* The largest base that fits leaves the least to hot-add; of
		 * equal ones, a pool that shares memory costs the host less. */
		unsigned size = s->vcpus + s->memory_mib, best_size = best ? best->spec->vcpus + best->spec->memory_mib : 0;
		if (!best || size > best_size || (size == best_size && best->spec->full_memory && !s->full_memory))
			best = p;
	}
	if (!best) {
		p = TAILQ_FIRST(pools);
		if (!p) {
			vmf_err(err, ENOENT, "this daemon has no pool");
			return NULL;
		}
		if (!TAILQ_NEXT(p, link)) {
			vmf_err(err, ENOSPC, "no pool serves %u vCPUs and %u MiB: the template allows %u-%u vCPUs "
				"and %u-%u MiB", vcpus, mem, p->spec->vcpus, p->spec->max_vcpus, p->spec->memory_mib,
				p->spec->max_memory_mib);
			return NULL;
		}
		/* Several pools (the config file): name each one's range. */
		char ranges[VMF_ERROR_MSG_MAX - 100] = "";
		size_t off = 0;
		TAILQ_FOREACH(p, pools, link) {
			int n = snprintf(ranges + off, sizeof(ranges) - off, "%s%s %u-%u vCPUs and %u-%u MiB",
					 off ? "; " : "", p->name, p->spec->vcpus, p->spec->max_vcpus,
					 p->spec->memory_mib, p->spec->max_memory_mib);
			if (n < 0 || (size_t)n >= sizeof(ranges) - off)
				break;
			off += (size_t)n;
		}
		vmf_err(err, ENOSPC, "no pool serves %u vCPUs and %u MiB: pools allow %s", vcpus, mem, ranges);
	}
	return best;
}
