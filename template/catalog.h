/* The LMDB catalog: template records in the durable environment under the
 * state dir (<state_dir>/catalog), VM records in the runtime environment
 * under the run dir (<run_dir>/vms.lmdb, written without fsync: it
 * describes processes that do not survive a reboot).  Each record is a
 * protobuf message with a schema version.  Every mutation is one LMDB
 * write transaction; functions may be called from any thread. */
#ifndef VMF_CATALOG_H
#define VMF_CATALOG_H

#include <stddef.h>

#include "catalog.pb-c.h"
#include "error.h"
#include "util.h"

/* The records' schema_version, and the state-dir environment's marker. */
#define VMF_CATALOG_SCHEMA_VERSION 1
/* The run-dir environment's marker. */
#define VMF_CATALOG_RUNTIME_SCHEMA_VERSION 1
#define VMF_CATALOG_RUNTIME_NAME "vms.lmdb"
#define VMF_CATALOG_DEFAULT_MAP_MIB 256

struct vmf_catalog;

/* Opens (creating 0700 dirs as needed) <state_dir>/catalog, clearing stale
 * reader slots left by crashed processes.  Refuses (-EPROTO) a catalog of
 * another schema version.  The map size caps the catalog (LMDB raises
 * it to what the data already uses).  Writes that do not fit fail with
 * -ENOSPC and leave the catalog as it was. */
int vmf_catalog_open(const char *state_dir, struct vmf_catalog **out, struct vmf_error *err);
int vmf_catalog_open_sized(const char *state_dir, size_t map_mib, struct vmf_catalog **out,
			   struct vmf_error *err);
void vmf_catalog_close(struct vmf_catalog *c);

/* Opens the VM records of c: <run_dir>/vms.lmdb (made 0700 as needed),
 * MDB_NOSYNC, schema VMF_CATALOG_RUNTIME_SCHEMA_VERSION.  VM records that
 * a state-dir catalog of an earlier vmfactory still holds move there once
 * (their VMs may still run).  Until this is called, the vm_* functions
 * fail with -EBADF. */
int vmf_catalog_open_runtime(struct vmf_catalog *c, const char *run_dir, struct vmf_error *err);

/* SHA-256 of the spec's canonical encoding (devices sorted, schema_version
 * set): the template id, so looking a spec up is vmf_catalog_template_get
 * with this id. */
int vmf_template_spec_id(const Vmf__Catalog__TemplateSpec *spec, char id[VMF_SHA256_HEX],
			 struct vmf_error *err);

/* Templates.  Every call is one LMDB transaction.  A malformed id is
 * -EINVAL; put refuses a record whose schema_version is not
 * VMF_CATALOG_SCHEMA_VERSION.  get returns -ENOENT when absent and -EBADMSG
 * (naming the id) when the stored bytes do not decode or carry an unknown
 * schema; the caller frees what get returns with *_free_unpacked. */
int vmf_catalog_template_put(struct vmf_catalog *c, const Vmf__Catalog__TemplateRecord *rec,
			     struct vmf_error *err);
int vmf_catalog_template_get(struct vmf_catalog *c, const char *id, Vmf__Catalog__TemplateRecord **out,
			     struct vmf_error *err);
int vmf_catalog_template_delete(struct vmf_catalog *c, const char *id, struct vmf_error *err);
int vmf_catalog_template_set_state(struct vmf_catalog *c, const char *id, Vmf__Catalog__TemplateState state,
				   const char *error, struct vmf_error *err);

/* Listing visits every record, in key order, from one snapshot; one that
 * cannot be read is passed as rec == NULL with rec_err saying why, and the
 * listing goes on.  A callback returning non-zero stops it and list returns
 * that value.  rec is freed after the callback returns.  Callbacks run
 * outside any transaction, so they may write to the catalog (e.g. remove
 * leftovers of TEMPLATE_BUILDING records at start). */
typedef int (*vmf_catalog_template_fn)(const char *id, Vmf__Catalog__TemplateRecord *rec,
				       const struct vmf_error *rec_err, void *ctx);
int vmf_catalog_template_list(struct vmf_catalog *c, vmf_catalog_template_fn fn, void *ctx,
			      struct vmf_error *err);

/* VM records, keyed by VM id; same semantics. */
int vmf_catalog_vm_put(struct vmf_catalog *c, const Vmf__Catalog__VmRecord *rec, struct vmf_error *err);
int vmf_catalog_vm_get(struct vmf_catalog *c, const char *id, Vmf__Catalog__VmRecord **out,
		       struct vmf_error *err);
int vmf_catalog_vm_delete(struct vmf_catalog *c, const char *id, struct vmf_error *err);
typedef int (*vmf_catalog_vm_fn)(const char *id, Vmf__Catalog__VmRecord *rec, const struct vmf_error *rec_err,
				 void *ctx);
int vmf_catalog_vm_list(struct vmf_catalog *c, vmf_catalog_vm_fn fn, void *ctx, struct vmf_error *err);

#endif
