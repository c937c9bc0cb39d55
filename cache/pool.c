#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *
vmf_pvm_state_name(enum vmf_pvm_state s)
{
	switch (s) {
	case PVM_CREATING: return "filling";
	case PVM_READY: return "ready";
	case PVM_HANDING_OUT: return "handing-out";
	case PVM_ASSIGNED: return "assigned";
	case PVM_RELEASING: return "releasing";
	case PVM_GONE: return "gone";
	}
	return "unknown";
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
vmf_pool_vm_idle_expired(const struct vmf_pvm *vm, unsigned max_idle_s, int64_t now_ms)
{
	return max_idle_s && vm->state == PVM_READY && !vm->busy &&
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
