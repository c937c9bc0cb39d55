/* Limits: what one VM and one tenant may take of the host (vmfactory.conf(5),
 * docs/security.md "Limits").  Checked on the loop against what the loop
 * knows: the VMs (a hand-out, suspend or resume in flight is already
 * listed in its state) and the snapshot index (a snapshot being made is
 * listed with its estimate), so concurrent requests cannot slip past a
 * limit together. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "factory.h"
#include "limit.h"
#include "log.h"

const char *const vmf_limit_names[VMF_LIMIT_COUNT] = {
	"tenant_max_vms", "tenant_max_suspended", "tenant_max_snapshots", "scratch_max_mib", "scratch_max_volumes",
};

static bool
held(const struct vmf_vm *vm)
{
	return vm->state != VMF_VM_READY && vm->state != VMF_VM_CREATING;
}

static bool
saved(const struct vmf_vm *vm)
{
	return vm->state == VMF_VM_SUSPENDING || vm->state == VMF_VM_SUSPENDED || vm->state == VMF_VM_RESUMING;
}

/* A suspend in progress has no file size yet: it writes about all its RAM. */
static uint64_t
saved_bytes(const struct vmf_vm *vm)
{
	return vm->state_size ? vm->state_size : (uint64_t)vm->memory_mib << 20;
}

void
vmf_usage_of(const struct vmf_daemon *d, uid_t uid, struct vmf_usage *u)
{
	memset(u, 0, sizeof(*u));
	const struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->cache.vms, link) {
		if (vm->owner_uid != uid || !held(vm))
			continue;
		u->vms++;
		if (saved(vm)) {
			u->suspended++;
			u->suspended_bytes += saved_bytes(vm);
		}
	}
	const struct vmf_snap *s;
	TAILQ_FOREACH(s, &d->snaps, link)
		if (s->owner == uid) {
			u->snapshots++;
			u->snapshot_bytes += s->bytes;
		}
}

static unsigned long long
mib(uint64_t bytes)
{
	return (unsigned long long)((bytes + (1u << 20) - 1) >> 20);
}

int
vmf_limit_check(const struct vmf_daemon_opts *o, uid_t uid, const struct vmf_usage *u, enum vmf_limit what,
		uint64_t bytes, struct vmf_error *err)
{
	unsigned id = (unsigned)uid;
	switch (what) {
	case VMF_LIMIT_VMS:
		if (u->vms >= o->tenant_max_vms)
			return vmf_err(err, EDQUOT, "uid %u holds %u VM%s, its limit (tenant_max_vms = %u): release one "
				       "(suspended ones count too) before asking for another", id, u->vms,
				       u->vms == 1 ? "" : "s", o->tenant_max_vms);
		return 0;
	case VMF_LIMIT_SUSPENDED:
		if (u->suspended >= o->tenant_max_suspended)
			return vmf_err(err, EDQUOT, "uid %u has %u suspended VM%s, its limit (tenant_max_suspended = %u): "
				       "resume or release one first", id, u->suspended, u->suspended == 1 ? "" : "s",
				       o->tenant_max_suspended);
		if (u->suspended_bytes + bytes > (uint64_t)o->tenant_max_suspended_mib << 20)
			return vmf_err(err, EDQUOT, "suspending it would save about %llu MiB, and uid %u's suspended VMs "
				       "hold %llu MiB, above its limit of %u MiB (tenant_max_suspended_mib): resume or "
				       "release one first", mib(bytes), id, mib(u->suspended_bytes),
				       o->tenant_max_suspended_mib);
		return 0;
	case VMF_LIMIT_SNAPSHOTS:
		if (u->snapshots >= o->tenant_max_snapshots)
			return vmf_err(err, EDQUOT, "uid %u has %u snapshot template%s, its limit "
				       "(tenant_max_snapshots = %u): template rm one first", id, u->snapshots,
				       u->snapshots == 1 ? "" : "s", o->tenant_max_snapshots);
		if (u->snapshot_bytes + bytes > (uint64_t)o->tenant_max_snapshot_mib << 20)
			return vmf_err(err, EDQUOT, "the snapshot may take %llu MiB, and uid %u's snapshot templates hold "
				       "%llu MiB, above its limit of %u MiB (tenant_max_snapshot_mib): template rm one "
				       "first", mib(bytes), id, mib(u->snapshot_bytes), o->tenant_max_snapshot_mib);
		return 0;
	case VMF_LIMIT_SCRATCH_SIZE:
	case VMF_LIMIT_SCRATCH_VOLUMES:
	case VMF_LIMIT_COUNT:
		break;
	}
	return vmf_err(err, EINVAL, "limit %d is not a tenant's", (int)what);
}

int
vmf_limit_tenant(struct vmf_daemon *d, uid_t peer, enum vmf_limit what, uint64_t bytes, struct vmf_error *err)
{
	if (vmf_daemon_peer_admin(d, peer))
		return 0;
	struct vmf_usage u;
	vmf_usage_of(d, peer, &u);
	int r = vmf_limit_check(&d->opts, peer, &u, what, bytes, err);
	if (r < 0) {
		d->limit_refusals[what]++;
		log_info("refused uid %u: %s", (unsigned)peer, err->msg);
	}
	return r;
}

int
vmf_limit_scratch(struct vmf_daemon *d, const struct vmf_vm *vm, unsigned size_mib, struct vmf_error *err)
{
	const struct vmf_daemon_opts *o = &d->opts;
	if (size_mib > o->scratch_max_mib) {
		d->limit_refusals[VMF_LIMIT_SCRATCH_SIZE]++;
		return vmf_err(err, EFBIG, "a scratch volume of %u MiB is above the limit of %u MiB per volume "
			       "(scratch_max_mib)", size_mib, o->scratch_max_mib);
	}
	unsigned n = 0;
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++)
		n += vm->disks[i] && vm->disks[i]->kind == VMF_DISK_SCRATCH;
	if (n >= o->scratch_max_volumes) {
		d->limit_refusals[VMF_LIMIT_SCRATCH_VOLUMES]++;
		return vmf_err(err, EDQUOT, "VM %s has %u scratch volume%s, the most a VM may have "
			       "(scratch_max_volumes = %u): detach one first", vm->id, n, n == 1 ? "" : "s",
			       o->scratch_max_volumes);
	}
	return 0;
}

/* ---- status ---- */

static Vmf__Control__TenantUsage *
usage_row(Vmf__Control__StatusReply *s, uid_t uid, bool limited, const struct vmf_usage *u)
{
	Vmf__Control__TenantUsage **n = realloc(s->tenants, (s->n_tenants + 1) * sizeof(*n));
	Vmf__Control__TenantUsage *t = n ? calloc(1, sizeof(*t)) : NULL;
	if (n)
		s->tenants = n;
	if (!t)
		return NULL;
	vmf__control__tenant_usage__init(t);
	t->uid = (uint32_t)uid;
	t->limited = limited;
	t->vms = u->vms;
	t->suspended = u->suspended;
	t->suspended_bytes = u->suspended_bytes;
	t->snapshots = u->snapshots;
	t->snapshot_bytes = u->snapshot_bytes;
	s->tenants[s->n_tenants++] = t;
	return t;
}

static bool
listed(const Vmf__Control__StatusReply *s, uid_t uid)
{
	for (size_t i = 0; i < s->n_tenants; i++)
		if (s->tenants[i]->uid == (uint32_t)uid)
			return true;
	return false;
}

/* Every uid holding a VM or a snapshot, once: a few list walks per row,
 * as many rows as tenants, on a status request. */
static void
add_uid(struct vmf_daemon *d, Vmf__Control__StatusReply *s, uid_t uid)
{
	if (listed(s, uid))
		return;
	struct vmf_usage u;
	vmf_usage_of(d, uid, &u);
	usage_row(s, uid, !vmf_daemon_peer_admin(d, uid), &u);
}

void
vmf_limits_status(struct vmf_daemon *d, uid_t peer, Vmf__Control__StatusReply *s)
{
	const struct vmf_daemon_opts *o = &d->opts;
	Vmf__Control__Limits *l = calloc(1, sizeof(*l));
	if (l) {
		vmf__control__limits__init(l);
		l->serial_log_kib = o->serial_log_kib;
		l->scratch_max_mib = o->scratch_max_mib;
		l->scratch_max_volumes = o->scratch_max_volumes;
		l->tenant_max_vms = o->tenant_max_vms;
		l->tenant_max_suspended = o->tenant_max_suspended;
		l->tenant_max_suspended_bytes = (uint64_t)o->tenant_max_suspended_mib << 20;
		l->tenant_max_snapshots = o->tenant_max_snapshots;
		l->tenant_max_snapshot_bytes = (uint64_t)o->tenant_max_snapshot_mib << 20;
		s->limits = l;
	}
	if (!vmf_daemon_peer_admin(d, peer)) {
		add_uid(d, s, peer);
		return;
	}
	const struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		if (held(vm))
			add_uid(d, s, vm->owner_uid);
	const struct vmf_snap *sn;
	TAILQ_FOREACH(sn, &d->snaps, link)
		add_uid(d, s, sn->owner);
}
