/* What the daemon knows about a peer uid's membership in the configured
 * group, as decided by NSS (getpwuid + getgrouplist) on a worker thread:
 * the loop never calls NSS, which may be LDAP or sssd and hang.  Pure
 * bookkeeping, no NSS and no clock of its own, so tests drive it. */
#ifndef VMF_PEERCACHE_H
#define VMF_PEERCACHE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define VMF_PEER_CACHE_SLOTS 64
/* An NSS answer is trusted this long: removing a user from the group takes
 * effect for new connections within it. */
#define VMF_PEER_CACHE_TTL_MS 60000

enum vmf_peer_verdict {
	VMF_PEER_UNKNOWN,      /* nothing fresh: start a lookup */
	VMF_PEER_LOOKING_UP,   /* a lookup is in flight: wait for it */
	VMF_PEER_ALLOWED,
	VMF_PEER_DENIED,
};

struct vmf_peer_entry {
	uid_t uid;
	enum vmf_peer_verdict verdict;   /* LOOKING_UP, ALLOWED or DENIED */
	int64_t expires_ms;              /* for ALLOWED and DENIED */
	int64_t used_ms;                 /* least recently used goes first */
};

struct vmf_peer_cache {
	struct vmf_peer_entry e[VMF_PEER_CACHE_SLOTS];
	unsigned n;
	int64_t ttl_ms;
};

void vmf_peer_cache_init(struct vmf_peer_cache *c, int64_t ttl_ms);
/* The verdict for uid at now; an expired answer is UNKNOWN. */
enum vmf_peer_verdict vmf_peer_cache_get(struct vmf_peer_cache *c, uid_t uid, int64_t now);
/* Marks a lookup for uid in flight, so that other connections of uid wait
 * for it instead of starting their own.  False when every slot holds a
 * lookup in flight: the caller looks up all the same, uncached. */
bool vmf_peer_cache_begin(struct vmf_peer_cache *c, uid_t uid, int64_t now);
/* Stores a lookup's answer, fresh until now + ttl. */
void vmf_peer_cache_put(struct vmf_peer_cache *c, uid_t uid, bool allowed, int64_t now);

#endif
