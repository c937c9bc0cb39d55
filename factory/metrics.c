/* The metrics endpoint: GET /metrics on --metrics-listen ADDR:PORT, in the
 * Prometheus text format.  Served from the event loop (libevent's HTTP
 * server): it reads the daemon's counters without locks, like status. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "factory.h"
#include "limit.h"
#include "log.h"
#include "metrics.h"
#include "vminfo.h"

/* The endpoint answers anyone who reaches its port: a pool a GetVM made of
 * a tenant's snapshot (named after it) is that tenant's, not listed. */
#define METRIC_POOLS(p, d) TAILQ_FOREACH(p, &(d)->cache.pools, link) if (!(p)->on_demand)

static void
histogram(struct evbuffer *b, const char *name, const char *labels, const struct vmf_histogram *h)
{
	const char *sep = labels && *labels ? "," : "";
	for (int i = 0; i < VMF_HIST_BUCKETS; i++)
		evbuffer_add_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels ? labels : "", sep,
				    vmf_hist_bounds_s[i], (unsigned long long)h->bucket[i]);
	evbuffer_add_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels ? labels : "", sep,
			    (unsigned long long)h->count);
	const char *open = labels && *labels ? "{" : "", *close = labels && *labels ? "}" : "";
	evbuffer_add_printf(b, "%s_sum%s%s%s %.6f\n", name, open, labels ? labels : "", close, h->sum_s);
	evbuffer_add_printf(b, "%s_count%s%s%s %llu\n", name, open, labels ? labels : "", close,
			    (unsigned long long)h->count);
}

static void
render(struct vmf_daemon *d, struct evbuffer *b)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} gauges[] = {
		{ "vmfactory_pool_target", "VMs the pool keeps ready", offsetof(struct vmf_pool, target) },
		{ "vmfactory_pool_ready", "paused VMs ready to hand out", offsetof(struct vmf_pool, ready) },
		{ "vmfactory_pool_filling", "clones being made", offsetof(struct vmf_pool, filling) },
	};
	struct vmf_pool *p;
	for (size_t g = 0; g < sizeof(gauges) / sizeof(gauges[0]); g++) {
		evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g].name, gauges[g].help,
				    gauges[g].name);
		METRIC_POOLS(p, d)
			evbuffer_add_printf(b, "%s{pool=\"%s\",template=\"%.16s\",vcpus=\"%u\",memory_mib=\"%u\"} %u\n",
					    gauges[g].name, p->name, p->template_id, p->params.vcpus,
					    p->params.memory_mib, *(const unsigned *)((const char *)p + gauges[g].off));
	}
	evbuffer_add_printf(b, "# HELP vmfactory_pool_failures_total clone and template build failures\n"
			       "# TYPE vmfactory_pool_failures_total counter\n");
	METRIC_POOLS(p, d)
		evbuffer_add_printf(b, "vmfactory_pool_failures_total{pool=\"%s\"} %llu\n", p->name,
				    (unsigned long long)p->failed);
	evbuffer_add_printf(b, "# HELP vmfactory_template_ready 1 when the pool's template is built\n"
			       "# TYPE vmfactory_template_ready gauge\n");
	METRIC_POOLS(p, d)
		evbuffer_add_printf(b, "vmfactory_template_ready{pool=\"%s\",template=\"%.16s\"} %d\n", p->name,
				    p->template_id, p->tpl != NULL);

	static const struct {
		const char *name, *help;
		size_t off;
	} counters[] = {
		{ "vmfactory_requests_total", "GetVM requests", offsetof(struct vmf_daemon, requests) },
		{ "vmfactory_hits_total", "GetVM served from a pool", offsetof(struct vmf_daemon, hits) },
		{ "vmfactory_misses_total", "GetVM served by a new clone", offsetof(struct vmf_daemon, misses) },
		{ "vmfactory_errors_total", "GetVM requests that failed", offsetof(struct vmf_daemon, errors) },
	};
	for (size_t c = 0; c < sizeof(counters) / sizeof(counters[0]); c++)
		evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", counters[c].name,
				    counters[c].help, counters[c].name, counters[c].name,
				    (unsigned long long)*(const uint64_t *)((const char *)d + counters[c].off));

	evbuffer_add_printf(b, "# HELP vmfactory_limit_refusals_total requests refused at a limit (vmfactory.conf(5))\n"
			       "# TYPE vmfactory_limit_refusals_total counter\n");
	for (int k = 0; k < VMF_LIMIT_COUNT; k++)
		evbuffer_add_printf(b, "vmfactory_limit_refusals_total{limit=\"%s\"} %llu\n", vmf_limit_names[k],
				    (unsigned long long)d->limit_refusals[k]);

	unsigned assigned = 0;
	struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		assigned += vm->state == VMF_VM_ASSIGNED;
	evbuffer_add_printf(b, "# HELP vmfactory_vms_assigned VMs handed to sandboxes\n"
			       "# TYPE vmfactory_vms_assigned gauge\nvmfactory_vms_assigned %u\n", assigned);

	/* Demand shaping: hand-outs by requested size and how they were
	 * served; ready shaped clones by size.  size is VCPUSxMIB. */
	evbuffer_add_printf(b, "# HELP vmfactory_handouts_total GetVM hand-outs by pool, requested size and how "
			       "served (shaped, base, resize, miss)\n# TYPE vmfactory_handouts_total counter\n");
	METRIC_POOLS(p, d) {
		for (unsigned i = 0; i <= p->shape.n; i++) {
			const uint64_t *h = i < p->shape.n ? p->shape.sizes[i].handouts : p->shape.other;
			char size[48] = "other";
			if (i < p->shape.n)
				snprintf(size, sizeof(size), "%ux%u", p->shape.sizes[i].vcpus, p->shape.sizes[i].memory_mib);
			for (int k = 0; k < VMF_HANDOUT_KINDS; k++)
				if (i < p->shape.n || h[k])
					evbuffer_add_printf(b, "vmfactory_handouts_total{pool=\"%s\",size=\"%s\",hit=\"%s\"} "
							    "%llu\n", p->name, size, vmf_handout_kind_name(k),
							    (unsigned long long)h[k]);
		}
	}
	evbuffer_add_printf(b, "# HELP vmfactory_pool_shaped ready clones a pool holds grown above its base, by size\n"
			       "# TYPE vmfactory_pool_shaped gauge\n");
	METRIC_POOLS(p, d) {
		struct shaped { unsigned v, m, n; } seen[VMF_SHAPE_SIZES];
		unsigned ns = 0;
		struct vmf_vm *v2;
		/* Sizes the plan wants show up at 0 while their clones fill. */
		struct vmf_shape_want plan[VMF_SHAPE_SIZES];
		unsigned np = vmf_shape_plan(p, plan, VMF_SHAPE_SIZES);
		for (unsigned i = 0; i < np; i++)
			seen[ns++] = (struct shaped){ plan[i].vcpus, plan[i].memory_mib, 0 };
		TAILQ_FOREACH(v2, &d->cache.vms, link) {
			if (v2->pool != p || v2->state != VMF_VM_READY ||
			    (v2->vcpus == p->spec->vcpus && v2->memory_mib == p->spec->memory_mib))
				continue;
			unsigned i = 0;
			while (i < ns && (seen[i].v != v2->vcpus || seen[i].m != v2->memory_mib))
				i++;
			if (i == ns && ns < VMF_SHAPE_SIZES)
				seen[ns++] = (struct shaped){ v2->vcpus, v2->memory_mib, 0 };
			if (i < ns)
				seen[i].n++;
		}
		for (unsigned i = 0; i < ns; i++)
			evbuffer_add_printf(b, "vmfactory_pool_shaped{pool=\"%s\",size=\"%ux%u\"} %u\n", p->name,
					    seen[i].v, seen[i].m, seen[i].n);
	}

	evbuffer_add_printf(b, "# HELP vmfactory_pool_queued GetVMs waiting for a pool's next ready clone\n"
			       "# TYPE vmfactory_pool_queued gauge\n");
	METRIC_POOLS(p, d)
		evbuffer_add_printf(b, "vmfactory_pool_queued{pool=\"%s\"} %u\n", p->name, p->queued);
	evbuffer_add_printf(b, "# HELP vmfactory_pool_clone_parallelism clones a pool starts at once now\n"
			       "# TYPE vmfactory_pool_clone_parallelism gauge\n");
	METRIC_POOLS(p, d)
		evbuffer_add_printf(b, "vmfactory_pool_clone_parallelism{pool=\"%s\"} %u\n", p->name,
				    vmf_pool_parallelism(p));
	evbuffer_add_printf(b, "# HELP vmfactory_queue_total how GetVMs that found a pool exhausted ended: served "
			       "from its queue, timed out there, left (client gone), refused (queue or tenant full)\n"
			       "# TYPE vmfactory_queue_total counter\n");
	METRIC_POOLS(p, d) {
		const char *what[] = { "served", "timeout", "left", "refused" };
		uint64_t n[] = { p->queue_served, p->queue_timeouts, p->queue_left, p->queue_refused };
		for (int i = 0; i < 4; i++)
			evbuffer_add_printf(b, "vmfactory_queue_total{pool=\"%s\",outcome=\"%s\"} %llu\n", p->name,
					    what[i], (unsigned long long)n[i]);
	}
	evbuffer_add_printf(b, "# HELP vmfactory_queue_wait_seconds how long GetVMs waited in a pool's queue\n"
			       "# TYPE vmfactory_queue_wait_seconds histogram\n");
	histogram(b, "vmfactory_queue_wait_seconds", NULL, &d->cache.queue_hist);
	evbuffer_add_printf(b, "# HELP vmfactory_handout_seconds GetVM, request to reply, as the daemon times it\n"
			       "# TYPE vmfactory_handout_seconds histogram\n");
	histogram(b, "vmfactory_handout_seconds", NULL, &d->hist[VMF_STEP_TOTAL]);
	evbuffer_add_printf(b, "# HELP vmfactory_handout_step_seconds each step of a hand-out\n"
			       "# TYPE vmfactory_handout_step_seconds histogram\n");
	for (int s = 0; s < VMF_STEP_TOTAL; s++) {
		char label[64];
		snprintf(label, sizeof(label), "step=\"%s\"", vmf_step_names[s]);
		histogram(b, "vmfactory_handout_step_seconds", label, &d->hist[s]);
	}
	evbuffer_add_printf(b, "# HELP vmfactory_clone_seconds a pool clone, start to ready (warmed)\n"
			       "# TYPE vmfactory_clone_seconds histogram\n");
	histogram(b, "vmfactory_clone_seconds", NULL, &d->cache.clone_hist);
	evbuffer_add_printf(b, "# HELP vmfactory_template_build_seconds template builds\n"
			       "# TYPE vmfactory_template_build_seconds histogram\n");
	histogram(b, "vmfactory_template_build_seconds", NULL, &d->cache.build_hist);
}

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
	struct vmf_daemon *d = arg;
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		evhttp_send_error(req, 405, "only GET is served");
		return;
	}
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	render(d, b);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static void
other_cb(struct evhttp_request *req, void *arg)
{
	(void)arg;
	evhttp_send_error(req, 404, "only /metrics is served here");
}

int
vmf_metrics_listen(struct vmf_daemon *d, const char *addr_port, struct vmf_error *err)
{
	char host[256];
	const char *colon = strrchr(addr_port, ':');
	char *end;
	long port = colon ? strtol(colon + 1, &end, 10) : -1;
	if (!colon || colon == addr_port || (size_t)(colon - addr_port) >= sizeof(host) || *end || port < 1 ||
	    port > 65535)
		return vmf_err(err, EINVAL, "metrics address '%s' is not ADDRESS:PORT", addr_port);
	memcpy(host, addr_port, (size_t)(colon - addr_port));
	host[colon - addr_port] = '\0';
	/* [::1]:9100 */
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host) - 2);
		host[strlen(host) - 2] = '\0';
	}
	d->metrics = evhttp_new(d->cache.base);
	if (!d->metrics)
		return vmf_err(err, ENOMEM, "cannot create the metrics HTTP server");
	if (!evhttp_bind_socket_with_handle(d->metrics, host, (uint16_t)port)) {
		int e = errno ? errno : EADDRINUSE;
		vmf_metrics_close(d);
		return vmf_err_sys(err, e, "cannot listen for metrics on %s", addr_port);
	}
	evhttp_set_allowed_methods(d->metrics, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_timeout(d->metrics, 10);
	evhttp_set_cb(d->metrics, "/metrics", metrics_cb, d);
	evhttp_set_gencb(d->metrics, other_cb, NULL);
	log_info("metrics on http://%s/metrics", addr_port);
	return 0;
}

void
vmf_metrics_close(struct vmf_daemon *d)
{
	if (d->metrics) {
		evhttp_free(d->metrics);
		d->metrics = NULL;
	}
}
