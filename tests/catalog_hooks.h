/* What only tests ask of the catalog: defined in template/catalog.c, which
 * alone sees its LMDB handles, and declared here rather than in the
 * product's catalog.h. */
#ifndef VMF_CATALOG_HOOKS_H
#define VMF_CATALOG_HOOKS_H

#include <stddef.h>

#include "catalog.h"

const char *vmf_catalog_path(const struct vmf_catalog *c);
const char *vmf_catalog_runtime_path(const struct vmf_catalog *c);
/* mdb_env_get_flags of the runtime environment. */
unsigned vmf_catalog_runtime_flags(const struct vmf_catalog *c);
/* Stale reader slots cleared by the last open. */
int vmf_catalog_stale_readers_cleared(const struct vmf_catalog *c);
/* Raw bytes under a key of "templates", "meta" (state dir), "vms",
 * "runtime-meta" (run dir) or "legacy-vms" (the state-dir VM table of an
 * earlier vmfactory): corruption, foreign schema versions, upgrades. */
int vmf_catalog_put_raw(struct vmf_catalog *c, const char *db, const char *key, const void *data, size_t len,
			struct vmf_error *err);

#endif
