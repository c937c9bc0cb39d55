/* Requests waiting for a pool's next ready clone.  A GetVM that finds no
 * ready VM and no room for a clone on demand waits here rather than fail:
 * the pool clones one more for each waiter (pool.c), and every clone that
 * becomes ready goes to the waiter whose turn it is (round-robin across
 * uids, first come first served within one).  A waiter ends once: served,
 * at its deadline, when its client has gone, or at shutdown. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/event.h>

#include "cache.h"
#include "frame.h"
#include "log.h"
#include "util.h"

/* Out of the queue, then fn once (which may queue again or free arg). */
static void
waiter_end(struct vmf_cache *c, struct vmf_waiter *w, int rc, const struct vmf_error *err)
{
	vmf_pool_waiter_remove(w->pool, w, rc == 0);
	double ms = (double)(vmf_now_ms() - w->enqueued_ms);
	vmf_latency_add(&c->queue_wait, ms);
	vmf_histogram_add(&c->queue_hist, ms / 1000.0);
	event_free(w->timer);
	void (*fn)(void *, int, const struct vmf_error *) = w->fn;
	void *arg = w->arg;
	free(w);
	fn(arg, rc, err);
}

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_waiter *w = arg;
	struct vmf_pool *p = w->pool;
	struct vmf_cache *c = w->cache;
	unsigned ahead = 0;
	struct vmf_waiter *o;
	TAILQ_FOREACH(o, &p->waiters, link)
		ahead += o->seq < w->seq;
	struct vmf_error err = {0};
	vmf_err(&err, ETIMEDOUT, "no VM of pool %s became ready within the request's timeout: it waited %lld ms in "
		"the pool's queue (%u request%s ahead of it, %u clone%s filling%s%.200s); retry, or ask with a longer "
		"timeout (get --timeout, or the daemon's get_timeout)", p->name,
		(long long)(vmf_now_ms() - w->enqueued_ms), ahead, ahead == 1 ? "" : "s", p->filling,
		p->filling == 1 ? "" : "s", p->consecutive_failures ? "; its clones fail: " : "",
		p->consecutive_failures ? p->last_error : "");
	p->queue_timeouts++;
	log_info("pool %s: a GetVM of uid %u timed out in the queue after %lld ms", p->name, (unsigned)w->uid,
		 (long long)(vmf_now_ms() - w->enqueued_ms));
	waiter_end(c, w, -ETIMEDOUT, &err);
}

int
vmf_cache_enqueue(struct vmf_cache *c, struct vmf_pool *p, const struct vmf_wait_req *r, struct vmf_error *err)
{
	if (c->stopping)
		return vmf_err(err, ESHUTDOWN, "the daemon is shutting down");
	if (p->queued >= c->max_queue) {
		p->queue_refused++;
		if (c->max_queue == 0)
			return vmf_err(err, EAGAIN, "pool %s exhausted: no ready VM, no room for a clone on demand, and "
				       "this daemon queues no request (max_queue = 0); retry later", p->name);
		return vmf_err(err, EAGAIN, "pool %s exhausted and its queue full: %u requests already wait for its "
			       "next clones (max_queue = %u); retry later", p->name, p->queued, c->max_queue);
	}
	unsigned mine = r->uid_limit != UINT_MAX ? vmf_pool_queued_by(p, r->uid) : 0;
	if (mine >= r->uid_limit) {
		p->queue_refused++;
		return vmf_err(err, EDQUOT, "uid %u already has %u request%s waiting in pool %s's queue, its limit "
			       "(tenant_max_queued = %u): wait for one to be served before asking for another",
			       (unsigned)r->uid, mine, mine == 1 ? "" : "s", p->name, r->uid_limit);
	}
	struct vmf_waiter *w = calloc(1, sizeof(*w));
	if (w)
		w->timer = evtimer_new(c->base, deadline_cb, w);
	int64_t left = r->deadline_ms - vmf_now_ms();
	struct timeval tv = { left > 0 ? left / 1000 : 0, left > 0 ? (left % 1000) * 1000 : 0 };
	if (!w || !w->timer || evtimer_add(w->timer, &tv) < 0) {
		if (w && w->timer)
			event_free(w->timer);
		free(w);
		return vmf_err(err, ENOMEM, "out of memory queueing a GetVM in pool %s", p->name);
	}
	w->cache = c;
	w->uid = r->uid;
	w->enqueued_ms = vmf_now_ms();
	w->deadline_ms = r->deadline_ms;
	w->fn = r->fn;
	w->alive = r->alive;
	w->arg = r->arg;
	vmf_pool_waiter_add(p, w);
	log_debug("pool %s: a GetVM of uid %u waits (queue %u)", p->name, (unsigned)w->uid, p->queued);
	/* The pool clones for it now. */
	vmf_cache_refill(c);
	return 0;
}

static bool
has_ready(struct vmf_cache *c, const struct vmf_pool *p)
{
	const struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &c->vms, link)
		if (vm->pool == p && vm->state == VMF_VM_READY && !vm->busy && !vm->dead)
			return true;
	return false;
}

void
vmf_cache_serve_queue(struct vmf_cache *c, struct vmf_pool *p)
{
	/* Each waiter served takes a ready VM; one that fails to (its client
	 * gone, a limit reached) leaves it to the next.  Bounded by the queue
	 * as it was, should a waiter queue again. */
	for (unsigned n = p->queued; n > 0 && !c->stopping && has_ready(c, p); n--) {
		struct vmf_waiter *w = vmf_pool_next_waiter(p);
		if (!w)
			break;
		if (w->alive && !w->alive(w->arg)) {
			struct vmf_error err = {0};
			vmf_err(&err, ECONNRESET, "client disconnected while its GetVM waited in pool %s's queue", p->name);
			p->queue_left++;
			waiter_end(c, w, -ECONNRESET, &err);
			continue;
		}
		p->queue_served++;
		waiter_end(c, w, 0, NULL);
	}
}

void
vmf_cache_queue_check(struct vmf_cache *c)
{
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &c->pools, link) {
		struct vmf_waiter *w, *next;
		for (w = TAILQ_FIRST(&p->waiters); w; w = next) {
			next = TAILQ_NEXT(w, link);
			if (!w->alive || w->alive(w->arg))
				continue;
			struct vmf_error err = {0};
			vmf_err(&err, ECONNRESET, "client disconnected while its GetVM waited in pool %s's queue",
				p->name);
			p->queue_left++;
			log_info("pool %s: a waiting GetVM of uid %u left the queue (its client disconnected)", p->name,
				 (unsigned)w->uid);
			/* next stays valid: fn ends only this waiter. */
			waiter_end(c, w, -ECONNRESET, &err);
		}
	}
}

void
vmf_cache_queue_flush(struct vmf_cache *c, const char *why)
{
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &c->pools, link) {
		struct vmf_waiter *w;
		while ((w = TAILQ_FIRST(&p->waiters))) {
			struct vmf_error err = {0};
			vmf_err(&err, ESHUTDOWN, "%s while the GetVM waited in pool %s's queue", why, p->name);
			waiter_end(c, w, -ESHUTDOWN, &err);
		}
	}
}

unsigned
vmf_cache_queued(const struct vmf_cache *c)
{
	unsigned n = 0;
	const struct vmf_pool *p;
	TAILQ_FOREACH(p, &c->pools, link)
		n += p->queued;
	return n;
}
