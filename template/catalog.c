/* LMDB catalog.  Records are protobuf messages whose first field is
 * schema_version; templates and VMs share the generic code below through
 * their protobuf-c descriptors. */
#include "catalog.h"

#include <errno.h>
#include <limits.h>
#include <lmdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

struct vmf_catalog {
	MDB_env *env;
	MDB_dbi templates, vms, meta;
	char path[PATH_MAX];
	size_t map_mib;
	int stale_cleared;
};

const char *
vmf_catalog_path(const struct vmf_catalog *c)
{
	return c->path;
}

int
vmf_catalog_stale_readers_cleared(const struct vmf_catalog *c)
{
	return c->stale_cleared;
}

/* Maps LMDB's codes to errno with a sentence naming the catalog. */
static int
mdb_fail(struct vmf_catalog *c, int rc, const char *what, struct vmf_error *err)
{
	if (rc == MDB_MAP_FULL)
		return vmf_err(err, ENOSPC, "catalog %s is full (map size %zu MiB) while %s", c->path, c->map_mib,
			       what);
	if (rc == ENOSPC)
		return vmf_err(err, ENOSPC, "catalog %s: the disk is full while %s", c->path, what);
	if (rc == MDB_NOTFOUND)
		return vmf_err(err, ENOENT, "catalog %s: not found while %s", c->path, what);
	if (rc == MDB_CORRUPTED || rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH)
		return vmf_err(err, EBADMSG, "catalog %s is damaged (%s) while %s", c->path, mdb_strerror(rc), what);
	return vmf_err(err, rc > 0 ? rc : EIO, "catalog %s: %s while %s", c->path, mdb_strerror(rc), what);
}

int
vmf_catalog_open_sized(const char *state_dir, size_t map_mib, struct vmf_catalog **out, struct vmf_error *err)
{
	*out = NULL;
	struct vmf_catalog *c = calloc(1, sizeof(*c));
	if (!c)
		return vmf_err(err, ENOMEM, "out of memory opening the catalog");
	c->map_mib = map_mib;
	snprintf(c->path, sizeof(c->path), "%s/catalog", state_dir);
	int r = vmf_mkdir_p(c->path, 0700, err);
	if (r < 0) {
		free(c);
		return vmf_error_prefix(err, "opening the catalog");
	}
	int rc = mdb_env_create(&c->env);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(c->env, 4);
	if (rc == 0)
		rc = mdb_env_set_mapsize(c->env, map_mib << 20);
	if (rc == 0)
		rc = mdb_env_set_maxreaders(c->env, 126);
	/* NOTLS: read transactions are opened by worker threads. */
	if (rc == 0)
		rc = mdb_env_open(c->env, c->path, MDB_NOTLS, 0600);
	if (rc) {
		r = mdb_fail(c, rc, "opening it", err);
		vmf_catalog_close(c);
		return r;
	}
	/* Reader slots of crashed processes would pin old pages forever. */
	int dead = 0;
	mdb_reader_check(c->env, &dead);
	c->stale_cleared = dead;
	if (dead)
		log_info("catalog %s: cleared %d stale reader slots", c->path, dead);

	MDB_txn *txn;
	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "templates", MDB_CREATE, &c->templates);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "vms", MDB_CREATE, &c->vms);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &c->meta);
	if (rc == 0) {
		MDB_val k = { 6, "schema" }, v;
		rc = mdb_get(txn, c->meta, &k, &v);
		if (rc == MDB_NOTFOUND) {
			uint32_t ver = VMF_CATALOG_SCHEMA_VERSION;
			v.mv_size = sizeof(ver);
			v.mv_data = &ver;
			rc = mdb_put(txn, c->meta, &k, &v, 0);
		} else if (rc == 0) {
			uint32_t ver = 0;
			memcpy(&ver, v.mv_data, v.mv_size < sizeof(ver) ? v.mv_size : sizeof(ver));
			if (ver != VMF_CATALOG_SCHEMA_VERSION) {
				mdb_txn_abort(txn);
				r = vmf_err(err, EPROTO, "catalog %s has schema version %u; this vmfactory reads %u",
					    c->path, ver, VMF_CATALOG_SCHEMA_VERSION);
				vmf_catalog_close(c);
				return r;
			}
		}
	}
	if (rc == 0)
		rc = mdb_txn_commit(txn);
	else
		mdb_txn_abort(txn);
	if (rc) {
		r = mdb_fail(c, rc, "setting it up", err);
		vmf_catalog_close(c);
		return r;
	}
	*out = c;
	return 0;
}

int
vmf_catalog_open(const char *state_dir, struct vmf_catalog **out, struct vmf_error *err)
{
	return vmf_catalog_open_sized(state_dir, VMF_CATALOG_DEFAULT_MAP_MIB, out, err);
}

void
vmf_catalog_close(struct vmf_catalog *c)
{
	if (!c)
		return;
	if (c->env)
		mdb_env_close(c->env);
	free(c);
}

/* ---- generic record code ---- */

static uint32_t
schema_of(const ProtobufCMessage *m)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(m->descriptor, "schema_version");
	uint32_t v = 0;
	if (f)
		memcpy(&v, (const char *)m + f->offset, sizeof(v));
	return v;
}

static int
put(struct vmf_catalog *c, MDB_dbi dbi, const char *kind, const char *key, const ProtobufCMessage *m,
    struct vmf_error *err)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory storing %s %s", kind, key);
	protobuf_c_message_pack(m, buf);
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc == 0) {
		MDB_val k = { strlen(key), (void *)key }, v = { n, buf };
		rc = mdb_put(txn, dbi, &k, &v, 0);
		if (rc == 0)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
	}
	free(buf);
	if (rc) {
		char what[160];
		snprintf(what, sizeof(what), "storing %s %.64s", kind, key);
		return mdb_fail(c, rc, what, err);
	}
	return 0;
}

static int
decode(struct vmf_catalog *c, const ProtobufCMessageDescriptor *desc, const char *kind, const char *key,
       const MDB_val *v, ProtobufCMessage **out, struct vmf_error *err)
{
	*out = protobuf_c_message_unpack(desc, NULL, v->mv_size, v->mv_data);
	if (!*out)
		return vmf_err(err, EBADMSG, "%s record %.64s in %s is corrupt: cannot decode its %zu bytes", kind,
			       key, c->path, v->mv_size);
	uint32_t ver = schema_of(*out);
	if (ver != VMF_CATALOG_SCHEMA_VERSION) {
		protobuf_c_message_free_unpacked(*out, NULL);
		*out = NULL;
		return vmf_err(err, EBADMSG, "%s record %.64s in %s has schema version %u; this vmfactory reads %u",
			       kind, key, c->path, ver, VMF_CATALOG_SCHEMA_VERSION);
	}
	return 0;
}

static int
get(struct vmf_catalog *c, MDB_dbi dbi, const ProtobufCMessageDescriptor *desc, const char *kind,
    const char *key, ProtobufCMessage **out, struct vmf_error *err)
{
	*out = NULL;
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
	if (rc)
		return mdb_fail(c, rc, "reading", err);
	MDB_val k = { strlen(key), (void *)key }, v;
	rc = mdb_get(txn, dbi, &k, &v);
	int r;
	if (rc == MDB_NOTFOUND)
		r = vmf_err(err, ENOENT, "no %s %.64s in catalog %s", kind, key, c->path);
	else if (rc)
		r = mdb_fail(c, rc, "reading", err);
	else
		r = decode(c, desc, kind, key, &v, out, err);
	mdb_txn_abort(txn);
	return r;
}

static int
del(struct vmf_catalog *c, MDB_dbi dbi, const char *kind, const char *key, struct vmf_error *err)
{
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc == 0) {
		MDB_val k = { strlen(key), (void *)key };
		rc = mdb_del(txn, dbi, &k, NULL);
		if (rc == 0)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
	}
	if (rc == MDB_NOTFOUND)
		return vmf_err(err, ENOENT, "no %s %.64s in catalog %s", kind, key, c->path);
	if (rc) {
		char what[160];
		snprintf(what, sizeof(what), "removing %s %.64s", kind, key);
		return mdb_fail(c, rc, what, err);
	}
	return 0;
}

typedef int (*list_fn)(const char *id, ProtobufCMessage *rec, const struct vmf_error *rec_err, void *ctx);

static int
list(struct vmf_catalog *c, MDB_dbi dbi, const ProtobufCMessageDescriptor *desc, const char *kind, list_fn fn,
     void *ctx, struct vmf_error *err)
{
	/* Collect first, call back after the read transaction ends: callbacks
	 * may write to the catalog. */
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
	if (rc)
		return mdb_fail(c, rc, "listing", err);
	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc) {
		mdb_txn_abort(txn);
		return mdb_fail(c, rc, "listing", err);
	}
	struct item {
		char key[128];
		ProtobufCMessage *rec;
		struct vmf_error e;
	} *items = NULL;
	size_t n = 0, cap = 0;
	MDB_val k, v;
	int r = 0;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct item *ni = realloc(items, cap * sizeof(*items));
			if (!ni) {
				r = vmf_err(err, ENOMEM, "out of memory listing the catalog");
				break;
			}
			items = ni;
		}
		struct item *it = &items[n++];
		memset(it, 0, sizeof(*it));
		size_t kl = k.mv_size < sizeof(it->key) - 1 ? k.mv_size : sizeof(it->key) - 1;
		memcpy(it->key, k.mv_data, kl);
		decode(c, desc, kind, it->key, &v, &it->rec, &it->e);
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	bool stop = false;
	for (size_t i = 0; i < n; i++) {
		if (!stop && r == 0 && fn(items[i].key, items[i].rec, items[i].rec ? NULL : &items[i].e, ctx))
			stop = true;
		if (items[i].rec)
			protobuf_c_message_free_unpacked(items[i].rec, NULL);
	}
	free(items);
	return r;
}

/* ---- templates ---- */

int
vmf_template_spec_id(const Vmf__Catalog__TemplateSpec *spec, char id[VMF_SHA256_HEX], struct vmf_error *err)
{
	Vmf__Catalog__TemplateSpec s = *spec;
	s.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	char **devs = NULL;
	if (s.n_devices) {
		devs = malloc(s.n_devices * sizeof(char *));
		if (!devs)
			return vmf_err(err, ENOMEM, "out of memory hashing a template spec");
		memcpy(devs, spec->devices, s.n_devices * sizeof(char *));
		/* Device order is not part of a template's identity. */
		for (size_t i = 1; i < s.n_devices; i++)
			for (size_t j = i; j > 0 && strcmp(devs[j - 1], devs[j]) > 0; j--) {
				char *t = devs[j];
				devs[j] = devs[j - 1];
				devs[j - 1] = t;
			}
		s.devices = devs;
	}
	/* protobuf-c packs fields in tag order: the encoding is canonical. */
	size_t n = vmf__catalog__template_spec__get_packed_size(&s);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf) {
		free(devs);
		return vmf_err(err, ENOMEM, "out of memory hashing a template spec");
	}
	vmf__catalog__template_spec__pack(&s, buf);
	vmf_sha256_hex(buf, n, id);
	free(buf);
	free(devs);
	return 0;
}

int
vmf_catalog_template_put(struct vmf_catalog *c, const Vmf__Catalog__TemplateRecord *rec, struct vmf_error *err)
{
	if (!vmf_valid_template_id(rec->id))
		return vmf_err(err, EINVAL, "template id '%.80s' is not a SHA-256 hex digest", rec->id);
	return put(c, c->templates, "template", rec->id, &rec->base, err);
}

int
vmf_catalog_template_get(struct vmf_catalog *c, const char *id, Vmf__Catalog__TemplateRecord **out,
			 struct vmf_error *err)
{
	return get(c, c->templates, &vmf__catalog__template_record__descriptor, "template", id,
		   (ProtobufCMessage **)out, err);
}

int
vmf_catalog_template_delete(struct vmf_catalog *c, const char *id, struct vmf_error *err)
{
	return del(c, c->templates, "template", id, err);
}

int
vmf_catalog_template_set_state(struct vmf_catalog *c, const char *id, Vmf__Catalog__TemplateState state,
			       const char *error, struct vmf_error *err)
{
	/* Read-modify-write in one write transaction: no lost update. */
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc)
		return mdb_fail(c, rc, "updating a template", err);
	MDB_val k = { strlen(id), (void *)id }, v;
	rc = mdb_get(txn, c->templates, &k, &v);
	if (rc) {
		mdb_txn_abort(txn);
		return rc == MDB_NOTFOUND ? vmf_err(err, ENOENT, "no template %.64s in catalog %s", id, c->path)
					  : mdb_fail(c, rc, "updating a template", err);
	}
	ProtobufCMessage *m;
	int r = decode(c, &vmf__catalog__template_record__descriptor, "template", id, &v, &m, err);
	if (r < 0) {
		mdb_txn_abort(txn);
		return r;
	}
	Vmf__Catalog__TemplateRecord *rec = (Vmf__Catalog__TemplateRecord *)m;
	rec->state = state;
	char *old_err = rec->error;
	rec->error = (char *)(error ? error : "");
	size_t n = vmf__catalog__template_record__get_packed_size(rec);
	uint8_t *buf = malloc(n ? n : 1);
	if (buf) {
		vmf__catalog__template_record__pack(rec, buf);
		MDB_val nv = { n, buf };
		rc = mdb_put(txn, c->templates, &k, &nv, 0);
		rc = rc ? (mdb_txn_abort(txn), rc) : mdb_txn_commit(txn);
	} else {
		mdb_txn_abort(txn);
	}
	rec->error = old_err;
	protobuf_c_message_free_unpacked(m, NULL);
	free(buf);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory updating template %.64s", id);
	return rc ? mdb_fail(c, rc, "updating a template", err) : 0;
}

struct tpl_tramp {
	vmf_catalog_template_fn fn;
	void *ctx;
};

static int
tpl_cb(const char *id, ProtobufCMessage *rec, const struct vmf_error *rec_err, void *ctx)
{
	struct tpl_tramp *t = ctx;
	return t->fn(id, (Vmf__Catalog__TemplateRecord *)rec, rec_err, t->ctx);
}

int
vmf_catalog_template_list(struct vmf_catalog *c, vmf_catalog_template_fn fn, void *ctx, struct vmf_error *err)
{
	struct tpl_tramp t = { fn, ctx };
	return list(c, c->templates, &vmf__catalog__template_record__descriptor, "template", tpl_cb, &t, err);
}

/* ---- VMs ---- */

int
vmf_catalog_vm_put(struct vmf_catalog *c, const Vmf__Catalog__VmRecord *rec, struct vmf_error *err)
{
	if (!vmf_valid_uuid(rec->id))
		return vmf_err(err, EINVAL, "VM id '%.80s' is not a UUID", rec->id);
	return put(c, c->vms, "VM", rec->id, &rec->base, err);
}

int
vmf_catalog_vm_get(struct vmf_catalog *c, const char *id, Vmf__Catalog__VmRecord **out, struct vmf_error *err)
{
	return get(c, c->vms, &vmf__catalog__vm_record__descriptor, "VM", id, (ProtobufCMessage **)out, err);
}

int
vmf_catalog_vm_delete(struct vmf_catalog *c, const char *id, struct vmf_error *err)
{
	return del(c, c->vms, "VM", id, err);
}

struct vm_tramp {
	vmf_catalog_vm_fn fn;
	void *ctx;
};

static int
vm_cb(const char *id, ProtobufCMessage *rec, const struct vmf_error *rec_err, void *ctx)
{
	struct vm_tramp *t = ctx;
	return t->fn(id, (Vmf__Catalog__VmRecord *)rec, rec_err, t->ctx);
}

int
vmf_catalog_vm_list(struct vmf_catalog *c, vmf_catalog_vm_fn fn, void *ctx, struct vmf_error *err)
{
	struct vm_tramp t = { fn, ctx };
	return list(c, c->vms, &vmf__catalog__vm_record__descriptor, "VM", vm_cb, &t, err);
}

int
vmf_catalog_put_raw(struct vmf_catalog *c, const char *db, const char *key, const void *data, size_t len,
		    struct vmf_error *err)
{
	MDB_dbi dbi = strcmp(db, "vms") == 0 ? c->vms : c->templates;
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc == 0) {
		MDB_val k = { strlen(key), (void *)key }, v = { len, (void *)data };
		rc = mdb_put(txn, dbi, &k, &v, 0);
		rc = rc ? (mdb_txn_abort(txn), rc) : mdb_txn_commit(txn);
	}
	return rc ? mdb_fail(c, rc, "storing raw bytes", err) : 0;
}
