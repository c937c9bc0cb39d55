/* The daemon's pools (pools.c): the config's, set up at start, and one for
 * a named template made on demand by a GetVM; each a struct vmf_pool of
 * cache/pool.h on d->cache.pools.  On the loop, or before it runs. */
#ifndef VMF_POOLS_H
#define VMF_POOLS_H

#include <stdbool.h>

#include "catalog.pb-c.h"
#include "config.h"
#include "error.h"

struct vmf_daemon;
struct vmf_pool;

/* The pools' sizes, against the config's ranges (flag names for the one
 * pool the flags describe); before anything starts. */
int vmf_pools_validate(const struct vmf_daemon_opts *o, struct vmf_error *err);
/* At start, before the loop runs: the config's pools (or the flags' one),
 * a named template's read from the catalog. */
int vmf_pools_setup(struct vmf_daemon *d, struct vmf_error *err);
/* On the loop: a pool of template rec (taken; vmf_template_find_name)
 * named pool_name, of size clones, of the config or made by a GetVM
 * (on_demand); NULL with err when out of memory. */
struct vmf_pool *vmf_daemon_template_pool(struct vmf_daemon *d, const char *pool_name, unsigned size, bool on_demand,
					  Vmf__Catalog__TemplateRecord *rec, struct vmf_error *err);
/* Frees a pool taken off the list (its template reference, its spec). */
void vmf_daemon_pool_free(struct vmf_pool *p);


#endif
