/* LMDB catalog: the durable environment under the state dir (templates)
 * and the runtime one under the run dir (VM records, no fsync).  Records
 * are protobuf messages whose first field is schema_version; templates and
 * VMs share the generic code below through their protobuf-c descriptors. */
#include "catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <lmdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

/* One LMDB environment. */
struct lmdb {
	MDB_env *env;
	char path[PATH_MAX];
	size_t map_mib;
	int stale_cleared;
};

struct vmf_catalog {
	struct lmdb st;                 /* <state_dir>/catalog */
	struct lmdb rt;                 /* <run_dir>/vms.lmdb; env NULL until opened */
	MDB_dbi templates, meta;        /* in st */
	MDB_dbi vms, rt_meta;           /* in rt */
};

/* Test hooks (tests/catalog_hooks.h): only tests use these. */
const char *
vmf_catalog_path(const struct vmf_catalog *c)
{
	return c->st.path;
}

const char *
vmf_catalog_runtime_path(const struct vmf_catalog *c)
{
	return c->rt.path;
}

unsigned
vmf_catalog_runtime_flags(const struct vmf_catalog *c)
{
	unsigned flags = 0;
	if (c->rt.env)
		mdb_env_get_flags(c->rt.env, &flags);
	return flags;
}

int
vmf_catalog_stale_readers_cleared(const struct vmf_catalog *c)
{
	return c->st.stale_cleared;
}

/* Maps LMDB's codes to errno with a sentence naming the catalog. */
static int
mdb_fail(const struct lmdb *c, int rc, const char *what, struct vmf_error *err)
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

/* Creates and opens the environment in dir (made 0700 as needed). */
static int
lmdb_open(struct lmdb *l, const char *dir, size_t map_mib, unsigned flags, struct vmf_error *err)
{
	l->map_mib = map_mib;
	if (snprintf(l->path, sizeof(l->path), "%s", dir) >= (int)sizeof(l->path))
		return vmf_err(err, ENAMETOOLONG, "cannot open the catalog: %.64s... is too long", dir);
	int r = vmf_mkdir_p(l->path, 0700, err);
	if (r < 0)
		return vmf_error_prefix(err, "opening the catalog");
	int rc = mdb_env_create(&l->env);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(l->env, 4);
	if (rc == 0)
		rc = mdb_env_set_mapsize(l->env, map_mib << 20);
	if (rc == 0)
		rc = mdb_env_set_maxreaders(l->env, 126);
	/* NOTLS: read transactions are opened by worker threads. */
	if (rc == 0)
		rc = mdb_env_open(l->env, l->path, MDB_NOTLS | flags, 0600);
	if (rc)
		return mdb_fail(l, rc, "opening it", err);
	/* LMDB 0.9.24 leaves its data-file descriptor inheritable: every QEMU the
	 * daemon spawns would hold the catalog open read-write.  The daemon
	 * opens the catalog before it starts threads, so no fork slips in. */
	int fd;
	if (mdb_env_get_fd(l->env, &fd) == 0 && fd >= 0) {
		int fl = fcntl(fd, F_GETFD);
		if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
			return vmf_err_sys(err, errno, "catalog %s: cannot mark its data file close-on-exec", l->path);
	}
	/* LMDB raises the map to the size the data already uses: errors must
	 * quote the size in force, not the one asked for. */
	MDB_envinfo info;
	if (mdb_env_info(l->env, &info) == 0)
		l->map_mib = info.me_mapsize >> 20;
	/* Reader slots of crashed processes would pin old pages forever. */
	int dead = 0;
	rc = mdb_reader_check(l->env, &dead);
	if (rc)
		log_warn("catalog %s: cannot check for stale reader slots: %s", l->path, mdb_strerror(rc));
	l->stale_cleared = dead;
	if (dead)
		log_info("catalog %s: cleared %d stale reader slots", l->path, dead);
	return 0;
}

/* Opens the named tables (created if absent) and checks the environment's
 * schema marker in meta (the last table), writing it into a new one. */
static int
lmdb_tables(struct lmdb *l, const char *const *names, MDB_dbi *const *dbis, size_t n, uint32_t want,
	    struct vmf_error *err)
{
	MDB_txn *txn;
	int r = 0, rc = mdb_txn_begin(l->env, NULL, 0, &txn);
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = mdb_dbi_open(txn, names[i], MDB_CREATE, dbis[i]);
	if (rc == 0) {
		MDB_val k = { 6, "schema" }, v;
		rc = mdb_get(txn, *dbis[n - 1], &k, &v);
		if (rc == MDB_NOTFOUND) {
			v.mv_size = sizeof(want);
			v.mv_data = &want;
			rc = mdb_put(txn, *dbis[n - 1], &k, &v, 0);
		} else if (rc == 0) {
			uint32_t ver = 0;
			memcpy(&ver, v.mv_data, v.mv_size < sizeof(ver) ? v.mv_size : sizeof(ver));
			if (v.mv_size != sizeof(ver))
				r = vmf_err(err, EBADMSG, "catalog %s is damaged: its schema marker has %zu bytes",
					    l->path, v.mv_size);
			else if (ver != want)
				r = vmf_err(err, EPROTO, "catalog %s has schema version %u; this vmfactory reads %u",
					    l->path, ver, want);
		}
	}
	if (rc == 0 && r == 0)
		rc = mdb_txn_commit(txn);
	else
		mdb_txn_abort(txn);
	return r < 0 ? r : rc ? mdb_fail(l, rc, "setting it up", err) : 0;
}

int
vmf_catalog_open_sized(const char *state_dir, size_t map_mib, struct vmf_catalog **out, struct vmf_error *err)
{
	*out = NULL;
	if (map_mib == 0 || map_mib > SIZE_MAX >> 20)
		return vmf_err(err, EINVAL, "catalog map size of %zu MiB is out of range", map_mib);
	struct vmf_catalog *c = calloc(1, sizeof(*c));
	if (!c)
		return vmf_err(err, ENOMEM, "out of memory opening the catalog");
	char dir[PATH_MAX];
	int r = snprintf(dir, sizeof(dir), "%s/catalog", state_dir) >= (int)sizeof(dir)
		? vmf_err(err, ENAMETOOLONG, "cannot open the catalog: state dir %.64s... is too long", state_dir)
		: lmdb_open(&c->st, dir, map_mib, 0, err);
	static const char *const names[] = { "templates", "meta" };
	MDB_dbi *const dbis[] = { &c->templates, &c->meta };
	if (r == 0)
		r = lmdb_tables(&c->st, names, dbis, 2, VMF_CATALOG_SCHEMA_VERSION, err);
	if (r < 0) {
		vmf_catalog_close(c);
		return r;
	}
	*out = c;
	return 0;
}

/* VM records a state-dir catalog of an earlier vmfactory holds move to the
 * runtime environment, bytes as they are: their VMs may still run, and a
 * daemon that did not see their records would kill them as orphans.  The
 * runtime copy is written first; one already there is the newer. */
static int
migrate_vms(struct vmf_catalog *c, struct vmf_error *err)
{
	MDB_txn *st_txn, *rt_txn = NULL;
	MDB_dbi old;
	int rc = mdb_txn_begin(c->st.env, NULL, 0, &st_txn);
	if (rc)
		return mdb_fail(&c->st, rc, "looking for VM records of an earlier version", err);
	rc = mdb_dbi_open(st_txn, "vms", 0, &old);
	if (rc == MDB_NOTFOUND) {
		mdb_txn_abort(st_txn);
		return 0;
	}
	MDB_cursor *cur = NULL;
	size_t moved = 0;
	if (rc == 0)
		rc = mdb_cursor_open(st_txn, old, &cur);
	int rrc = rc ? 0 : mdb_txn_begin(c->rt.env, NULL, 0, &rt_txn);
	MDB_val k, v;
	int g = rc || rrc ? MDB_NOTFOUND : mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	for (; g == 0; g = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		rrc = mdb_put(rt_txn, c->vms, &k, &v, MDB_NOOVERWRITE);
		if (rrc == MDB_KEYEXIST)
			rrc = 0;
		else if (rrc)
			break;
		else
			moved++;
	}
	if (rc == 0 && rrc == 0 && g != MDB_NOTFOUND)
		rc = g;
	if (cur)
		mdb_cursor_close(cur);
	if (rt_txn)
		rrc = rrc ? (mdb_txn_abort(rt_txn), rrc) : mdb_txn_commit(rt_txn);
	if (rc == 0 && rrc == 0)
		rc = mdb_drop(st_txn, old, 1);
	rc = rc || rrc ? (mdb_txn_abort(st_txn), rc) : mdb_txn_commit(st_txn);
	if (rrc)
		return mdb_fail(&c->rt, rrc, "moving VM records of an earlier version into it", err);
	if (rc)
		return mdb_fail(&c->st, rc, "moving its VM records to the run dir", err);
	if (moved)
		log_info("moved %zu VM records from %s to %s", moved, c->st.path, c->rt.path);
	return 0;
}

int
vmf_catalog_open_runtime(struct vmf_catalog *c, const char *run_dir, struct vmf_error *err)
{
	if (c->rt.env)
		return vmf_err(err, EBUSY, "catalog %s already has its runtime records open", c->st.path);
	char dir[PATH_MAX];
	/* NOSYNC: a record describes a process that dies with the host, and
	 * the page cache outlives a daemon crash.  The run dir is tmpfs under
	 * systemd: a reboot starts it empty. */
	int r = snprintf(dir, sizeof(dir), "%s/" VMF_CATALOG_RUNTIME_NAME, run_dir) >= (int)sizeof(dir)
		? vmf_err(err, ENAMETOOLONG, "cannot open the VM records: run dir %.64s... is too long", run_dir)
		: lmdb_open(&c->rt, dir, c->st.map_mib, MDB_NOSYNC, err);
	static const char *const names[] = { "vms", "meta" };
	MDB_dbi *const dbis[] = { &c->vms, &c->rt_meta };
	if (r == 0)
		r = lmdb_tables(&c->rt, names, dbis, 2, VMF_CATALOG_RUNTIME_SCHEMA_VERSION, err);
	if (r == 0)
		r = migrate_vms(c, err);
	if (r < 0 && c->rt.env) {
		mdb_env_close(c->rt.env);
		c->rt.env = NULL;
	}
	return r;
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
	if (c->rt.env)
		mdb_env_close(c->rt.env);
	if (c->st.env)
		mdb_env_close(c->st.env);
	free(c);
}

/* ---- generic record code ---- */

/* What differs between the record tables. */
struct table {
	const char *kind;                       /* for messages: "template", "VM" */
	const ProtobufCMessageDescriptor *desc;
	bool (*valid_id)(const char *);
	const char *id_form;
	size_t dbi_offset;                      /* of the MDB_dbi in struct vmf_catalog */
	bool runtime;                           /* in the run-dir environment */
};

static const struct table templates_table = {
	"template", &vmf__catalog__template_record__descriptor, vmf_valid_template_id,
	"a SHA-256 hex digest", offsetof(struct vmf_catalog, templates), false,
};
static const struct table vms_table = {
	"VM", &vmf__catalog__vm_record__descriptor, vmf_valid_uuid, "a UUID",
	offsetof(struct vmf_catalog, vms), true,
};

static MDB_dbi
dbi_of(const struct vmf_catalog *c, const struct table *t)
{
	return *(const MDB_dbi *)((const char *)c + t->dbi_offset);
}

/* The table's environment; NULL (with err set) when it is not open. */
static struct lmdb *
lmdb_of(struct vmf_catalog *c, const struct table *t, struct vmf_error *err)
{
	if (!t->runtime)
		return &c->st;
	if (!c->rt.env) {
		vmf_err(err, EBADF, "catalog %s: the VM records (in the run dir) are not open", c->st.path);
		return NULL;
	}
	return &c->rt;
}

/* Ids become LMDB keys (at most 511 bytes, never empty) and directory
 * names: a malformed one is refused before it reaches either. */
static int
check_id(const struct table *t, const char *id, struct vmf_error *err)
{
	if (!id || !t->valid_id(id))
		return vmf_err(err, EINVAL, "%s id '%.80s' is not %s", t->kind, id ? id : "(null)", t->id_form);
	return 0;
}

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

/* One write transaction storing one value: all or nothing. */
static int
write_value(struct lmdb *c, MDB_dbi dbi, const char *key, const void *data, size_t len,
	    const char *what, struct vmf_error *err)
{
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc == 0) {
		MDB_val k = { strlen(key), (void *)key }, v = { len, (void *)data };
		rc = mdb_put(txn, dbi, &k, &v, 0);
		if (rc == 0 && VMF_FAULT_ERR("catalog-full"))
			rc = MDB_MAP_FULL;
		rc = rc ? (mdb_txn_abort(txn), rc) : mdb_txn_commit(txn);
	}
	return rc ? mdb_fail(c, rc, what, err) : 0;
}

static int
put(struct vmf_catalog *c, const struct table *t, const char *key, const ProtobufCMessage *m,
    struct vmf_error *err)
{
	int r = check_id(t, key, err);
	if (r < 0)
		return r;
	struct lmdb *l = lmdb_of(c, t, err);
	if (!l)
		return -err->code;
	/* Stored under any other version, the record would be refused by the
	 * next daemon start: better to fail the writer now. */
	uint32_t ver = schema_of(m);
	if (ver != VMF_CATALOG_SCHEMA_VERSION)
		return vmf_err(err, EINVAL, "refusing to store %s %s with schema version %u; this vmfactory writes %u",
			       t->kind, key, ver, VMF_CATALOG_SCHEMA_VERSION);
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory storing %s %s", t->kind, key);
	protobuf_c_message_pack(m, buf);
	char what[160];
	snprintf(what, sizeof(what), "storing %s %s", t->kind, key);
	r = write_value(l, dbi_of(c, t), key, buf, n, what, err);
	free(buf);
	return r;
}

static int
decode(const struct lmdb *c, const struct table *t, const char *key, const MDB_val *v, ProtobufCMessage **out,
       struct vmf_error *err)
{
	*out = protobuf_c_message_unpack(t->desc, NULL, v->mv_size, v->mv_data);
	if (!*out)
		return vmf_err(err, EBADMSG, "%s record %.64s in %s is corrupt: cannot decode its %zu bytes", t->kind,
			       key, c->path, v->mv_size);
	uint32_t ver = schema_of(*out);
	if (ver != VMF_CATALOG_SCHEMA_VERSION) {
		protobuf_c_message_free_unpacked(*out, NULL);
		*out = NULL;
		return vmf_err(err, EBADMSG, "%s record %.64s in %s has schema version %u; this vmfactory reads %u",
			       t->kind, key, c->path, ver, VMF_CATALOG_SCHEMA_VERSION);
	}
	return 0;
}

static int
get(struct vmf_catalog *c, const struct table *t, const char *key, ProtobufCMessage **out, struct vmf_error *err)
{
	*out = NULL;
	int r = check_id(t, key, err);
	if (r < 0)
		return r;
	struct lmdb *l = lmdb_of(c, t, err);
	if (!l)
		return -err->code;
	char what[160];
	snprintf(what, sizeof(what), "reading %s %s", t->kind, key);
	MDB_txn *txn;
	int rc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn);
	if (rc)
		return mdb_fail(l, rc, what, err);
	MDB_val k = { strlen(key), (void *)key }, v;
	rc = mdb_get(txn, dbi_of(c, t), &k, &v);
	if (rc == MDB_NOTFOUND)
		r = vmf_err(err, ENOENT, "no %s %s in catalog %s", t->kind, key, l->path);
	else if (rc)
		r = mdb_fail(l, rc, what, err);
	else
		r = decode(l, t, key, &v, out, err);
	/* v points into the map: decode copied what it needs before this. */
	mdb_txn_abort(txn);
	return r;
}

static int
del(struct vmf_catalog *c, const struct table *t, const char *key, struct vmf_error *err)
{
	int r = check_id(t, key, err);
	if (r < 0)
		return r;
	struct lmdb *l = lmdb_of(c, t, err);
	if (!l)
		return -err->code;
	MDB_txn *txn;
	int rc = mdb_txn_begin(l->env, NULL, 0, &txn);
	if (rc == 0) {
		MDB_val k = { strlen(key), (void *)key };
		rc = mdb_del(txn, dbi_of(c, t), &k, NULL);
		rc = rc ? (mdb_txn_abort(txn), rc) : mdb_txn_commit(txn);
	}
	if (rc == MDB_NOTFOUND)
		return vmf_err(err, ENOENT, "no %s %s in catalog %s", t->kind, key, l->path);
	if (rc) {
		char what[160];
		snprintf(what, sizeof(what), "removing %s %s", t->kind, key);
		return mdb_fail(l, rc, what, err);
	}
	return 0;
}

typedef int (*list_fn)(const char *id, ProtobufCMessage *rec, const struct vmf_error *rec_err, void *ctx);

static int
list(struct vmf_catalog *c, const struct table *t, list_fn fn, void *ctx, struct vmf_error *err)
{
	/* Collect first, call back after the read transaction ends: callbacks
	 * may write to the catalog, and a long-lived reader would pin pages. */
	struct lmdb *l = lmdb_of(c, t, err);
	if (!l)
		return -err->code;
	MDB_txn *txn;
	int rc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn);
	if (rc)
		return mdb_fail(l, rc, "listing its records", err);
	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, dbi_of(c, t), &cur);
	if (rc) {
		mdb_txn_abort(txn);
		return mdb_fail(l, rc, "listing its records", err);
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
				r = vmf_err(err, ENOMEM, "out of memory listing catalog %s", l->path);
				break;
			}
			items = ni;
		}
		struct item *it = &items[n++];
		memset(it, 0, sizeof(*it));
		size_t kl = k.mv_size < sizeof(it->key) - 1 ? k.mv_size : sizeof(it->key) - 1;
		memcpy(it->key, k.mv_data, kl);
		decode(l, t, it->key, &v, &it->rec, &it->e);
	}
	if (r == 0 && rc != MDB_NOTFOUND)
		r = mdb_fail(l, rc, "listing its records", err);
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	for (size_t i = 0; i < n; i++) {
		if (r == 0)
			r = fn(items[i].key, items[i].rec, items[i].rec ? NULL : &items[i].e, ctx);
		if (items[i].rec)
			protobuf_c_message_free_unpacked(items[i].rec, NULL);
	}
	free(items);
	return r;
}

/* ---- templates ---- */

static int
cmp_str(const void *a, const void *b)
{
	const char *x = *(char *const *)a, *y = *(char *const *)b;
	return strcmp(x ? x : "", y ? y : "");
}

int
vmf_template_spec_id(const Vmf__Catalog__TemplateSpec *spec, char id[VMF_SHA256_HEX], struct vmf_error *err)
{
	if (!spec)
		return vmf_err(err, EINVAL, "no template spec to hash");
	Vmf__Catalog__TemplateSpec s = *spec;
	s.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	char **devs = NULL;
	if (s.n_devices) {
		devs = malloc(s.n_devices * sizeof(char *));
		if (!devs)
			return vmf_err(err, ENOMEM, "out of memory hashing a template spec");
		memcpy(devs, spec->devices, s.n_devices * sizeof(char *));
		/* Device order is not part of a template's identity. */
		qsort(devs, s.n_devices, sizeof(char *), cmp_str);
		s.devices = devs;
	}
	/* protobuf-c packs fields in tag order and omits proto3 defaults: the
	 * encoding is canonical. */
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
	return put(c, &templates_table, rec->id, &rec->base, err);
}

int
vmf_catalog_template_get(struct vmf_catalog *c, const char *id, Vmf__Catalog__TemplateRecord **out,
			 struct vmf_error *err)
{
	return get(c, &templates_table, id, (ProtobufCMessage **)out, err);
}

int
vmf_catalog_template_delete(struct vmf_catalog *c, const char *id, struct vmf_error *err)
{
	return del(c, &templates_table, id, err);
}

int
vmf_catalog_template_set_state(struct vmf_catalog *c, const char *id, Vmf__Catalog__TemplateState state,
			       const char *error, struct vmf_error *err)
{
	int r = check_id(&templates_table, id, err);
	if (r < 0)
		return r;
	if (!protobuf_c_enum_descriptor_get_value(&vmf__catalog__template_state__descriptor, (int)state))
		return vmf_err(err, EINVAL, "template %s: %d is not a template state", id, (int)state);
	char what[160];
	snprintf(what, sizeof(what), "updating template %s", id);
	/* Read-modify-write in one write transaction: no lost update. */
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->st.env, NULL, 0, &txn);
	if (rc)
		return mdb_fail(&c->st, rc, what, err);
	MDB_val k = { strlen(id), (void *)id }, v;
	rc = mdb_get(txn, c->templates, &k, &v);
	if (rc) {
		mdb_txn_abort(txn);
		return rc == MDB_NOTFOUND ? vmf_err(err, ENOENT, "no template %s in catalog %s", id, c->st.path)
					  : mdb_fail(&c->st, rc, what, err);
	}
	ProtobufCMessage *m;
	r = decode(&c->st, &templates_table, id, &v, &m, err);
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
	/* The unpacked message owns old_err, not the caller's string. */
	rec->error = old_err;
	protobuf_c_message_free_unpacked(m, NULL);
	free(buf);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory updating template %s", id);
	return rc ? mdb_fail(&c->st, rc, what, err) : 0;
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
	return list(c, &templates_table, tpl_cb, &t, err);
}

/* ---- VMs ---- */

int
vmf_catalog_vm_put(struct vmf_catalog *c, const Vmf__Catalog__VmRecord *rec, struct vmf_error *err)
{
	return put(c, &vms_table, rec->id, &rec->base, err);
}

int
vmf_catalog_vm_get(struct vmf_catalog *c, const char *id, Vmf__Catalog__VmRecord **out, struct vmf_error *err)
{
	return get(c, &vms_table, id, (ProtobufCMessage **)out, err);
}

int
vmf_catalog_vm_delete(struct vmf_catalog *c, const char *id, struct vmf_error *err)
{
	return del(c, &vms_table, id, err);
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
	/* A damaged table, as a test sees it (the daemon's recovery must stop). */
	if (VMF_FAULT_ERR("catalog-vm-list"))
		return mdb_fail(&c->rt, MDB_CORRUPTED, "listing its VM records", err);
	return list(c, &vms_table, vm_cb, &t, err);
}

/* A test hook (tests/catalog_hooks.h).  "legacy-vms" is the VM table a
 * state-dir catalog of an earlier vmfactory held. */
int
vmf_catalog_put_raw(struct vmf_catalog *c, const char *db, const char *key, const void *data, size_t len,
		    struct vmf_error *err)
{
	struct lmdb *l = &c->st;
	MDB_dbi dbi;
	if (strcmp(db, "templates") == 0) {
		dbi = c->templates;
	} else if (strcmp(db, "meta") == 0) {
		dbi = c->meta;
	} else if (strcmp(db, "vms") == 0 || strcmp(db, "runtime-meta") == 0) {
		if (!(l = lmdb_of(c, &vms_table, err)))
			return -err->code;
		dbi = strcmp(db, "vms") == 0 ? c->vms : c->rt_meta;
	} else if (strcmp(db, "legacy-vms") == 0) {
		MDB_txn *txn;
		int rc = mdb_txn_begin(l->env, NULL, 0, &txn);
		if (rc == 0)
			rc = mdb_dbi_open(txn, "vms", MDB_CREATE, &dbi);
		rc = rc ? (mdb_txn_abort(txn), rc) : mdb_txn_commit(txn);
		if (rc)
			return mdb_fail(l, rc, "making the VM table of an earlier version", err);
	} else {
		return vmf_err(err, EINVAL, "catalog %s has no table '%.32s'", c->st.path, db);
	}
	size_t kl = strlen(key);
	if (kl == 0 || kl > (size_t)mdb_env_get_maxkeysize(l->env))
		return vmf_err(err, EINVAL, "catalog key '%.64s' is empty or too long", key);
	char what[160];
	snprintf(what, sizeof(what), "storing raw bytes under %s/%.64s", db, key);
	return write_value(l, dbi, key, data, len, what, err);
}
