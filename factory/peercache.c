#include "peercache.h"

#include <string.h>

void
vmf_peer_cache_init(struct vmf_peer_cache *c, int64_t ttl_ms)
{
	memset(c, 0, sizeof(*c));
	c->ttl_ms = ttl_ms;
}

static struct vmf_peer_entry *
find(struct vmf_peer_cache *c, uid_t uid)
{
	for (unsigned i = 0; i < c->n; i++)
		if (c->e[i].uid == uid)
			return &c->e[i];
	return NULL;
}

enum vmf_peer_verdict
vmf_peer_cache_get(struct vmf_peer_cache *c, uid_t uid, int64_t now)
{
	struct vmf_peer_entry *e = find(c, uid);
	if (!e)
		return VMF_PEER_UNKNOWN;
	if (e->verdict != VMF_PEER_LOOKING_UP && now >= e->expires_ms)
		return VMF_PEER_UNKNOWN;
	e->used_ms = now;
	return e->verdict;
}

/* uid's slot: its own, a free one, else the least recently used answer
 * (never a lookup in flight: its waiters would start another). */
static struct vmf_peer_entry *
slot(struct vmf_peer_cache *c, uid_t uid)
{
	struct vmf_peer_entry *e = find(c, uid);
	if (e)
		return e;
	if (c->n < VMF_PEER_CACHE_SLOTS)
		return &c->e[c->n++];
	for (unsigned i = 0; i < c->n; i++)
		if (c->e[i].verdict != VMF_PEER_LOOKING_UP && (!e || c->e[i].used_ms < e->used_ms))
			e = &c->e[i];
	return e;
}

bool
vmf_peer_cache_begin(struct vmf_peer_cache *c, uid_t uid, int64_t now)
{
	struct vmf_peer_entry *e = slot(c, uid);
	if (!e)
		return false;
	*e = (struct vmf_peer_entry){ .uid = uid, .verdict = VMF_PEER_LOOKING_UP, .used_ms = now };
	return true;
}

void
vmf_peer_cache_put(struct vmf_peer_cache *c, uid_t uid, bool allowed, int64_t now)
{
	struct vmf_peer_entry *e = slot(c, uid);
	if (!e)
		return;
	*e = (struct vmf_peer_entry){ .uid = uid, .verdict = allowed ? VMF_PEER_ALLOWED : VMF_PEER_DENIED,
				      .expires_ms = now + c->ttl_ms, .used_ms = now };
}
