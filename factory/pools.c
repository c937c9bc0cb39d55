/* The daemon's pools: from the config (or the flags) at start, checked
 * against the config's ranges; and a pool of a named template, made at
 * start for a [pool] template = NAME or on demand by a GetVM. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cgroup.h"
#include "factory.h"
#include "log.h"
#include "pools.h"

/* A pool's (or the daemon's default) stop policy and cgroups from the
 * config's strings, checked by the config (or here, for flags). */
static int
set_policy(struct vmf_stop_policy *pol, char (*cgroups)[VMF_CGROUP_PATH_MAX], unsigned *n_cgroups, const char *stop,
	   unsigned timeout_s, const char *reset, const char *cgroup, struct vmf_error *err)
{
	pol->mode = stop && !strcmp(stop, "kill") ? VMF_STOP_KILL
		: stop && !strcmp(stop, "poweroff") ? VMF_STOP_POWEROFF : VMF_STOP_FLUSH;
	pol->timeout_ms = (timeout_s ? timeout_s : VMF_DEFAULT_STOP_TIMEOUT_S) * 1000u;
	pol->keep_on_reset = reset && !strcmp(reset, "keep");
	if (!cgroups)
		return 0;
	*n_cgroups = 0;
	for (const char *c = cgroup ? cgroup : ""; *c;) {
		size_t l = strcspn(c, ":");
		if (l && *n_cgroups == VMF_CGROUPS_MAX)
			return vmf_err(err, E2BIG, "cgroup: more than %d cgroups", VMF_CGROUPS_MAX);
		if (l >= VMF_CGROUP_PATH_MAX)
			return vmf_err(err, ENAMETOOLONG, "cgroup: a path is longer than %d bytes", VMF_CGROUP_PATH_MAX - 1);
		if (l) {
			snprintf(cgroups[*n_cgroups], VMF_CGROUP_PATH_MAX, "%.*s", (int)l, c);
			int r = vmf_cgroup_check_path(cgroups[*n_cgroups], err);
			if (r < 0)
				return r;
			(*n_cgroups)++;
		}
		c += l + (c[l] == ':');
	}
	return 0;
}

static int
setup_pool(struct vmf_daemon *d, const struct vmf_pool_spec *ps, struct vmf_error *err)
{
	struct vmf_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return vmf_err(err, ENOMEM, "out of memory");
	const struct vmf_daemon_opts *o = &d->opts;
	snprintf(p->name, sizeof(p->name), "%s", ps->name);
	p->max_idle_s = ps->max_idle_s;
	p->params.ops = d->ops;
	p->params.binary = o->qemu_binary;
	p->params.machine = o->machine;
	p->params.accel = o->accel;
	p->params.cmdline = VMF_DEFAULT_CMDLINE;
	p->params.vcpus = ps->vcpus;
	p->params.max_vcpus = ps->max_vcpus > ps->vcpus ? ps->max_vcpus : ps->vcpus;
	p->params.memory_mib = ps->memory_mib;
	p->params.max_memory_mib = ps->max_memory_mib > ps->memory_mib ? ps->max_memory_mib : ps->memory_mib;
	p->params.memory_slots = 8;
	p->params.full_memory = !ps->share_memory;
	p->params.nic = ps->nic;
	p->params.hotplug_ports = ps->hotplug_ports;
	p->net_user = ps->net_user && vmf_template_params_nic(&p->params);
	p->params.runas = o->runas;
	p->params.share_mib = d->share_mib;
	p->target = ps->size;
	p->shape.enabled = ps->shape;
	p->shape.max = ps->shape_max == VMF_SHAPE_AUTO ? ps->size / 2 : ps->shape_max;
	p->shape.memory_mib = ps->shape_memory_mib == VMF_SHAPE_AUTO ? ps->size * ps->memory_mib / 2
		: ps->shape_memory_mib;
	p->parallelism = o->fill_parallelism ? o->fill_parallelism : 2;
	p->max_parallelism = vmf_pool_clone_cap(o->clone_parallelism, d->host_cpus, d->host_mem_mib, ps->memory_mib,
						VMF_WORKER_THREADS - 1);
	int r = set_policy(&p->stop, p->cgroups, &p->n_cgroups, ps->stop, ps->stop_timeout_s, ps->on_guest_reset,
			   ps->cgroup, err);
	p->params.on_guest_reset = p->stop.keep_on_reset ? "keep" : "stop";
	/* Its own image, or the daemon's (loaded once, overrides and all). */
	if (r == 0 && ps->image_dir)
		r = vmf_image_load(ps->image_dir, NULL, NULL, &p->img, err);
	else
		p->img = d->img;
	if (r == 0)
		r = vmf_template_spec_new(&p->params, &d->hv, &p->img, &p->spec, p->template_id, err);
	if (r < 0) {
		free(p);
		vmf_error_prefix(err, "pool %s", ps->name);
		return r;
	}
	TAILQ_INSERT_TAIL(&d->cache.pools, p, link);
	log_tpl(VMF_LOG_INFO, p->template_id, "pool %s of %u VMs with %u vCPU / %u MiB (max %u / %u MiB), %s memory, "
		"image %s", p->name, p->target, p->params.vcpus, p->params.memory_mib, p->params.max_vcpus,
		p->params.max_memory_mib, p->params.full_memory ? "private" : "shared", p->img.dir);
	return 0;
}

struct vmf_pool *
vmf_daemon_template_pool(struct vmf_daemon *d, const char *pool_name, unsigned size, bool on_demand,
			 Vmf__Catalog__TemplateRecord *rec, struct vmf_error *err)
{
	struct vmf_pool *p = calloc(1, sizeof(*p));
	uint8_t *buf = rec->spec ? malloc(vmf__catalog__template_spec__get_packed_size(rec->spec) + 1) : NULL;
	if (p && buf)
		p->spec = vmf__catalog__template_spec__unpack(NULL, vmf__catalog__template_spec__pack(rec->spec, buf),
							      buf);
	free(buf);
	if (!p || !p->spec) {
		free(p);
		vmf_err(err, ENOMEM, "out of memory for the pool of template %s", rec->name);
		vmf__catalog__template_record__free_unpacked(rec, NULL);
		return NULL;
	}
	snprintf(p->name, sizeof(p->name), "%s", pool_name);
	snprintf(p->template_name, sizeof(p->template_name), "%s", rec->name);
	snprintf(p->template_id, sizeof(p->template_id), "%s", rec->id);
	p->on_demand = on_demand;
	p->template_owner = (uid_t)rec->owner_uid;
	/* Its clones start with what the VM had hot-added: that is its base. */
	p->spec->vcpus += rec->hotplugged_vcpus;
	for (size_t i = 0; i < rec->n_dimms; i++)
		p->spec->memory_mib += rec->dimms[i]->size_mib;
	if (p->spec->max_vcpus < p->spec->vcpus)
		p->spec->max_vcpus = p->spec->vcpus;
	const struct vmf_daemon_opts *o = &d->opts;
	p->params.ops = d->ops;
	p->params.binary = o->qemu_binary;
	p->params.machine = o->machine;
	p->params.accel = o->accel;
	p->params.cmdline = VMF_DEFAULT_CMDLINE;
	p->params.vcpus = p->spec->vcpus;
	p->params.max_vcpus = p->spec->max_vcpus;
	p->params.memory_mib = p->spec->memory_mib;
	p->params.max_memory_mib = p->spec->max_memory_mib;
	p->params.memory_slots = p->spec->memory_slots;
	p->params.runas = o->runas;
	p->params.share_mib = d->share_mib;
	/* A snapshot of a VM with network has the NIC: its clones may get a
	 * backend at hand-out as any clone. */
	p->params.nic = vmf_template_has_nic(rec);
	p->params.hotplug_ports = rec->spec->hotplug_ports;
	p->target = size;
	p->parallelism = o->fill_parallelism ? o->fill_parallelism : 2;
	p->max_parallelism = vmf_pool_clone_cap(o->clone_parallelism, d->host_cpus, d->host_mem_mib,
						p->spec->memory_mib, VMF_WORKER_THREADS - 1);
	p->stop = d->cache.stop_default;
	p->params.on_guest_reset = p->stop.keep_on_reset ? "keep" : "stop";
	p->img = d->img;
	p->tpl = vmf_tpl_new(rec);
	p->verified = p->tpl != NULL;
	TAILQ_INSERT_TAIL(&d->cache.pools, p, link);
	log_tpl(VMF_LOG_INFO, p->template_id, "pool %s of %u VMs of template %s of uid %u (%u vCPU / %u MiB)", p->name,
		size, p->template_name, (unsigned)p->template_owner, p->spec->vcpus, p->spec->memory_mib);
	return p;
}

/* Without configured pools the flags describe one pool, "default". */
static void
flags_pool(const struct vmf_daemon_opts *o, struct vmf_pool_spec *ps)
{
	memset(ps, 0, sizeof(*ps));
	snprintf(ps->name, sizeof(ps->name), "default");
	ps->size = o->pool_size;
	ps->vcpus = o->vcpus;
	ps->memory_mib = o->memory_mib;
	ps->max_vcpus = o->max_vcpus;
	ps->max_memory_mib = o->max_memory_mib;
	ps->max_idle_s = o->max_idle_s;
	ps->share_memory = o->share_memory;
	ps->nic = o->nic;
	ps->hotplug_ports = o->hotplug_ports;
	ps->net_user = o->net_user;
	ps->shape = o->shape;
	ps->shape_max = o->shape_max;
	ps->shape_memory_mib = o->shape_memory_mib;
	ps->stop = o->stop;
	ps->stop_timeout_s = o->stop_timeout_s;
	ps->on_guest_reset = o->on_guest_reset;
	ps->cgroup = o->cgroup;
}

int
vmf_pools_setup(struct vmf_daemon *d, struct vmf_error *err)
{
	const struct vmf_daemon_opts *o = &d->opts;
	int rp = set_policy(&d->cache.stop_default, NULL, NULL, o->stop, o->stop_timeout_s, o->on_guest_reset, NULL, err);
	if (rp < 0)
		return rp;
	struct vmf_pool_spec one;
	const struct vmf_pool_spec *specs = d->opts.pools;
	unsigned n = d->opts.n_pools;
	if (n == 0) {
		flags_pool(&d->opts, &one);
		specs = &one;
		n = 1;
	}
	for (unsigned i = 0; i < n; i++) {
		int r;
		if (specs[i].template_name) {
			/* At start, before the loop runs: the catalog may be read here.
			 * The config is root's: its names are the operator's, never a
			 * tenant's snapshot of the same name. */
			Vmf__Catalog__TemplateRecord *rec = NULL;
			if ((r = vmf_template_find_name(d->cache.cat, 0, specs[i].template_name, &rec, err)) < 0)
				return vmf_error_prefix(err, "pool %s", specs[i].name);
			struct vmf_pool *tp = vmf_daemon_template_pool(d, specs[i].name, specs[i].size, false, rec, err);
			r = tp ? set_policy(&tp->stop, tp->cgroups, &tp->n_cgroups, specs[i].stop, specs[i].stop_timeout_s,
					    specs[i].on_guest_reset, specs[i].cgroup, err) : -err->code;
			if (tp)
				tp->params.on_guest_reset = tp->stop.keep_on_reset ? "keep" : "stop";
		} else {
			r = setup_pool(d, &specs[i], err);
		}
		if (r < 0)
			return r;
	}
	return 0;
}

static int
validate_pool(const struct vmf_pool_spec *ps, bool flags, struct vmf_error *err)
{
	/* Flag names for the pool the flags describe, config keys otherwise. */
	const char *mc = flags ? "--max-cpus" : "max_vcpus", *c = flags ? "--cpus" : "vcpus";
	const char *mm = flags ? "--max-memory" : "max_memory_mib", *m = flags ? "--memory" : "memory_mib";
	const char *sz = flags ? "--pool" : "size";
	char pfx[48] = "";
	if (!flags)
		snprintf(pfx, sizeof(pfx), "pool %s: ", ps->name);
	unsigned vmin, mmin, xvmax, szmax, dummy;
	vmf_config_pool_range("vcpus", &vmin, &dummy);
	vmf_config_pool_range("memory_mib", &mmin, &dummy);
	vmf_config_pool_range("max_vcpus", &dummy, &xvmax);
	vmf_config_pool_range("size", &dummy, &szmax);
	if (ps->vcpus < vmin || ps->memory_mib < mmin)
		return vmf_err(err, EINVAL, "%sthe base size must be at least %u vCPU and %u MiB", pfx, vmin, mmin);
	if (ps->max_vcpus && ps->max_vcpus < ps->vcpus)
		return vmf_err(err, EINVAL, "%s%s %u is below %s %u", pfx, mc, ps->max_vcpus, c, ps->vcpus);
	if (ps->max_memory_mib && ps->max_memory_mib < ps->memory_mib)
		return vmf_err(err, EINVAL, "%s%s %u is below %s %u", pfx, mm, ps->max_memory_mib, m, ps->memory_mib);
	if (ps->max_vcpus > xvmax)
		return vmf_err(err, EINVAL, "%s%s %u is above %u", pfx, mc, ps->max_vcpus, xvmax);
	if (ps->size > szmax)
		return vmf_err(err, EINVAL, "%s%s %u is above %u", pfx, sz, ps->size, szmax);
	return 0;
}

void
vmf_daemon_pool_free(struct vmf_pool *p)
{
	vmf_tpl_unref(p->tpl);
	/* A template pool's spec was unpacked (its empty strings are
	 * protobuf-c's static one): freed as protobuf-c allocated it. */
	if (p->template_name[0])
		vmf__catalog__template_spec__free_unpacked(p->spec, NULL);
	else
		vmf_template_spec_free(p->spec);
	free(p);
}

int
vmf_pools_validate(const struct vmf_daemon_opts *o, struct vmf_error *err)
{
	if (o->n_pools > VMF_MAX_POOLS)
		return vmf_err(err, EINVAL, "%u pools: at most %d", o->n_pools, VMF_MAX_POOLS);
	if (o->n_pools == 0) {
		struct vmf_pool_spec one;
		flags_pool(o, &one);
		int r = validate_pool(&one, true, err);
		if (r < 0)
			return r;
	}
	for (unsigned i = 0; i < o->n_pools; i++) {
		int r = validate_pool(&o->pools[i], false, err);
		if (r < 0)
			return r;
	}
	return 0;
}

