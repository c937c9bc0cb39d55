#ifndef VMF_SNAPINDEX_H
#define VMF_SNAPINDEX_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "catalog.pb-c.h"
#include "error.h"

struct vmf_daemon;
struct vmf_snap;

/* snapindex.c: who owns which snapshot template,; TemplateRm is a request of its
 * own (ops/template_rm.c).  A
 * snapshot belongs to the uid whose request made it; root and the daemon's
 * user are one owner, 0 (the operator), whose names a pool's template =
 * NAME means.  Names are unique per owner. */
/* At start, before the loop runs: every snapshot record of the catalog. */
int vmf_snaps_load(struct vmf_daemon *d, struct vmf_error *err);
void vmf_snaps_free(struct vmf_daemon *d);
/* The owner peer's snapshots are recorded under. */
uid_t vmf_snap_owner(const struct vmf_daemon *d, uid_t peer);
/* Whether peer may see, clone and remove a snapshot of owner. */
bool vmf_snap_allowed(const struct vmf_daemon *d, uid_t peer, uid_t owner);
/* The ready snapshot peer names: by name among its owner's, or by id among
 * those it may use; NULL for none (one being made or removed is none). */
struct vmf_snap *vmf_snap_lookup(struct vmf_daemon *d, uid_t peer, const char *name_or_id);
struct vmf_snap *vmf_snap_by_id(struct vmf_daemon *d, const char *id);
/* An entry for a snapshot being made (making, bytes its estimate); NULL
 * when out of memory.  vmf_snap_made fills it from its record (taken),
 * vmf_snap_drop forgets it (a failed snapshot, a removed template). */
struct vmf_snap *vmf_snap_begin(struct vmf_daemon *d, uid_t owner, const char *name, uint64_t bytes);
void vmf_snap_made(struct vmf_snap *s, Vmf__Catalog__TemplateRecord *rec);
void vmf_snap_drop(struct vmf_daemon *d, struct vmf_snap *s);

#endif
