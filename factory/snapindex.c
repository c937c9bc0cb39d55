/* Snapshot templates and their owners: the loop's index of the catalog's
 * snapshots (read once at start; the daemon is the catalog's only writer
 * while it runs, offline commands refusing meanwhile); TemplateRm, the
 * request, is ops/template_rm.c.
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
#include "snapindex.h"

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
