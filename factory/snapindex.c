/* Snapshot templates and their owners: the loop's index of the catalog's
 * snapshots (read once at start; the daemon is the catalog's only writer
 * while it runs, offline commands refusing meanwhile), and TemplateRm.
 *
 * A snapshot carries its VM's memory: it belongs to the uid that made it.
 * Only that uid, root and the daemon's user see it (status), clone it
 * (GetVM template) or remove it.  Names are unique per owner, so no tenant
 * can read or take another's name; root and the daemon's user are one
 * owner, 0 (the operator), whose names the config's [pool] template =
 * NAME resolves in. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "factory.h"
#include "log.h"

uid_t
vmf_snap_owner(const struct vmf_daemon *d, uid_t peer)
{
	return vmf_daemon_peer_admin(d, peer) ? 0 : peer;
}

bool
vmf_snap_allowed(const struct vmf_daemon *d, uid_t peer, uid_t owner)
{
	return vmf_daemon_peer_admin(d, peer) || owner == peer;
}

struct vmf_snap *
vmf_snap_by_id(struct vmf_daemon *d, const char *id)
{
	struct vmf_snap *s;
	TAILQ_FOREACH(s, &d->snaps, link)
		if (!s->making && strcmp(s->id, id) == 0)
			return s;
	return NULL;
}

struct vmf_snap *
vmf_snap_lookup(struct vmf_daemon *d, uid_t peer, const char *name_or_id)
{
	bool by_id = vmf_valid_template_id(name_or_id);
	uid_t owner = vmf_snap_owner(d, peer);
	struct vmf_snap *s;
	TAILQ_FOREACH(s, &d->snaps, link) {
		if (s->making || s->removing)
			continue;
		if (by_id ? strcmp(s->id, name_or_id) == 0 && vmf_snap_allowed(d, peer, s->owner)
			  : s->owner == owner && strcmp(s->name, name_or_id) == 0)
			return s;
	}
	return NULL;
}

struct vmf_snap *
vmf_snap_begin(struct vmf_daemon *d, uid_t owner, const char *name, uint64_t bytes)
{
	struct vmf_snap *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->owner = owner;
	snprintf(s->name, sizeof(s->name), "%s", name);
	s->bytes = bytes;
	s->making = true;
	TAILQ_INSERT_TAIL(&d->snaps, s, link);
	return s;
}

void
vmf_snap_made(struct vmf_snap *s, Vmf__Catalog__TemplateRecord *rec)
{
	s->rec = rec;
	snprintf(s->id, sizeof(s->id), "%s", rec->id);
	s->bytes = vmf_template_bytes(rec);
	s->making = false;
}

void
vmf_snap_drop(struct vmf_daemon *d, struct vmf_snap *s)
{
	TAILQ_REMOVE(&d->snaps, s, link);
	if (s->rec)
		vmf__catalog__template_record__free_unpacked(s->rec, NULL);
	free(s);
}

void
vmf_snaps_free(struct vmf_daemon *d)
{
	while (!TAILQ_EMPTY(&d->snaps))
		vmf_snap_drop(d, TAILQ_FIRST(&d->snaps));
}

/* The listing frees its records after the callback: the index keeps a copy. */
static Vmf__Catalog__TemplateRecord *
record_copy(const Vmf__Catalog__TemplateRecord *rec)
{
	size_t n = vmf__catalog__template_record__get_packed_size(rec);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return NULL;
	vmf__catalog__template_record__pack(rec, buf);
	Vmf__Catalog__TemplateRecord *c = vmf__catalog__template_record__unpack(NULL, n, buf);
	free(buf);
	return c;
}

static int
load_one(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	(void)id;
	(void)rec_err;
	struct vmf_daemon *d = ctx;
	if (!rec || !rec->name || !*rec->name || rec->state != VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY)
		return 0;
	Vmf__Catalog__TemplateRecord *copy = record_copy(rec);
	struct vmf_snap *s = copy ? vmf_snap_begin(d, (uid_t)rec->owner_uid, rec->name, 0) : NULL;
	if (!s) {
		if (copy)
			vmf__catalog__template_record__free_unpacked(copy, NULL);
		return -ENOMEM;
	}
	vmf_snap_made(s, copy);
	return 0;
}

int
vmf_snaps_load(struct vmf_daemon *d, struct vmf_error *err)
{
	int r = vmf_catalog_template_list(d->cache.cat, load_one, d, err);
	if (r == -ENOMEM)
		return vmf_err(err, ENOMEM, "out of memory reading the snapshot templates");
	return r;
}

/* ---- TemplateRm ---- */

struct rm_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	char id[VMF_SHA256_HEX];
	int rc;
	struct vmf_error err;
};

static void
rm_work(void *arg)
{
	struct rm_job *j = arg;
	j->rc = vmf_template_remove(j->d->cache.cat, j->d->opts.state_dir, j->id, &j->err);
}

/* The pool a GetVM made for it (none of the config's: those refuse the
 * removal), now without template or VMs. */
static void
drop_pool(struct vmf_daemon *d, const char *id)
{
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		if (p->on_demand && strcmp(p->template_id, id) == 0) {
			TAILQ_REMOVE(&d->cache.pools, p, link);
			vmf_daemon_pool_free(p);
			return;
		}
}

static void
rm_done(void *arg)
{
	struct rm_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_snap *s = vmf_snap_by_id(d, j->id);
	if (j->rc < 0) {
		if (s)
			s->removing = false;
		log_tpl(VMF_LOG_WARN, j->id, "template rm failed: %s", j->err.msg);
		vmf_control_reply_error(j->c, j->err.code, j->err.msg);
	} else {
		Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
		Vmf__Control__TemplateRmReply tr = VMF__CONTROL__TEMPLATE_RM_REPLY__INIT;
		tr.template_id = j->id;
		tr.name = s ? s->name : (char *)"";
		tr.owner_uid = s ? (uint32_t)s->owner : 0;
		tr.bytes = s ? s->bytes : 0;
		r.body_case = VMF__CONTROL__REPLY__BODY_TEMPLATE_RM;
		r.template_rm = &tr;
		log_tpl(VMF_LOG_INFO, j->id, "template %s of uid %u removed", s ? s->name : "?", s ? (unsigned)s->owner : 0);
		vmf_control_reply(j->c, &r);
		drop_pool(d, j->id);
		if (s)
			vmf_snap_drop(d, s);
	}
	free(j);
	vmf_daemon_settle(d);
}

/* Why the template cannot go now, or NULL: a pool of the config names it,
 * a VM (pooled, handed out, suspended: any state) runs on its files, a
 * GetVM of it is in progress.  Another tenant's VM is counted, not named. */
static const char *
in_use(struct vmf_daemon *d, uid_t peer, const struct vmf_snap *s, char *msg, size_t n)
{
	const struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		if (!p->on_demand && strcmp(p->template_id, s->id) == 0) {
			snprintf(msg, n, "template %s is used by pool %s of the config: remove the pool's template = %s "
				 "first", s->name, p->name, s->name);
			return msg;
		}
	unsigned vms = 0;
	const struct vmf_vm *vm, *first = NULL;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		if (strcmp(vm->template_id, s->id) == 0) {
			vms++;
			if (!first && vmf_snap_allowed(d, peer, vm->owner_uid))
				first = vm;
		}
	if (vms) {
		snprintf(msg, n, "template %s is in use by %u VM%s%s%s: its clones run on its files; release them "
			 "first", s->name, vms, vms == 1 ? "" : "s", first ? ", VM " : "", first ? first->id : "");
		return msg;
	}
	if (s->getvms) {
		snprintf(msg, n, "template %s is in use: a GetVM of it is in progress; try again", s->name);
		return msg;
	}
	return NULL;
}

void
vmf_template_rm_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__TemplateRmRequest *req)
{
	const char *name = req->template_ ? req->template_ : "";
	char msg[400];
	if (!vmf_valid_template_id(name) && !vmf_valid_pool_name(name)) {
		vmf_control_reply_error(c, EINVAL, "template must be a name (1 to 32 letters, digits, '-' or '_') or an "
					"id (64 hex digits)");
		return;
	}
	uid_t peer = vmf_control_peer_uid(c);
	struct vmf_snap *s = vmf_snap_lookup(d, peer, name);
	if (!s) {
		/* Another owner's is "none": its existence is not the peer's to learn. */
		if (vmf_daemon_peer_admin(d, peer))
			snprintf(msg, sizeof(msg), "no snapshot template %s in this daemon (a built template goes with "
				 "template gc or rm while no daemon runs)", name);
		else
			snprintf(msg, sizeof(msg), "uid %u has no snapshot template %s", (unsigned)peer, name);
		vmf_control_reply_error(c, ENOENT, msg);
		return;
	}
	if (in_use(d, peer, s, msg, sizeof(msg))) {
		vmf_control_reply_error(c, EBUSY, msg);
		return;
	}
	struct rm_job *j = calloc(1, sizeof(*j));
	if (!j) {
		vmf_control_reply_error(c, ENOMEM, "out of memory");
		return;
	}
	j->d = d;
	j->c = c;
	snprintf(j->id, sizeof(j->id), "%s", s->id);
	/* No GetVM finds it from now on, and no snapshot takes its name. */
	s->removing = true;
	log_tpl(VMF_LOG_INFO, s->id, "removing template %s of uid %u (asked by uid %u)", s->name, (unsigned)s->owner,
		(unsigned)peer);
	if (vmf_jobs_submit(d->cache.jobs, rm_work, rm_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the template removal");
		rm_done(j);
	}
}
