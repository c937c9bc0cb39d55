/* The hand-out flow (GetVM).  The request's fields are
 * checked on the loop, its paths on a worker (they may sit on a hung
 * mount) before any VM is taken; the VM work runs on a worker; the outcome
 * is applied on the loop. */
#include <errno.h>
#include <limits.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "agent.h"
#include "catalog.h"
#include "factory.h"
#include "frame.h"
#include "leases.h"
#include "limit.h"
#include "log.h"
#include "net.h"
#include "ops.h"
#include "ops/getvm.h"
#include "pools.h"
#include "request.h"
#include "snapindex.h"
#include "vminfo.h"

/* A guest clock further off than this (the benchmark's target) after the
 * hand-out's one round trip is set again, once (see getvm_work). */
#define CLOCK_RESYNC_MS 5

/* ---- GetVM ---- */

struct getvm_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	struct vmf_vm *vm;          /* the loop's: the worker touches only snap */
	struct vmf_vm snap;         /* the worker's copy; getvm_done applies it */
	struct vmf_pool *pool;       /* the worker reads only its params */
	struct vmf_tpl *tpl;         /* a miss clones from it: a reference */
	bool miss;
	char template_name[72];      /* the request's template: a name or an id ("" = none) */
	/* The snapshot it names, by id (its GetVMs in flight counted, so that
	 * it is not removed under the request); "" for none, or for a pool of
	 * the config a tenant reached by its template's name. */
	char template_id[VMF_SHA256_HEX];
	Vmf__Catalog__TemplateRecord *rec;  /* found on a worker: no pool had it yet */
	enum vmf_handout_kind kind;  /* how it is served (demand shaping, pool.h) */
	uid_t peer;
	unsigned vcpus, memory_mib;
	char sandbox_id[72];
	char share_dir[PATH_MAX], sock_dir[PATH_MAX];
	int64_t start_ms, deadline_ms;
	/* It waited in its pool's queue (cache/queue.c): since, and for how
	 * long until served. */
	bool waited;
	int64_t queued_at_ms, queue_ms;
	double step_ms[VMF_STEP_COUNT];
	uint8_t sample[16];      /* a clone made now: its random bytes after the reseed */
	bool reseeded;
	uint64_t pss_kib;        /* read on the worker, for the reply */
	/* Network: the request's (none, user-mode, or the sandbox's
	 * namespace), and the namespace opened on a worker before any VM is
	 * taken. */
	struct vmf_net_request net;
	char netns[PATH_MAX], netns_link[16];
	int nsfd;
	uint64_t netns_dev, netns_ino;
	bool net_busy;           /* the interface is another VM's: nothing of ours to undo */
	/* The cgroups the VMM joins before it runs: the request's (checked
	 * against the peer) or the pool's, opened on a worker before any VM
	 * is taken (their cgroup.procs). */
	char cgroups[VMF_CGROUPS_MAX][VMF_CGROUP_PATH_MAX];
	int cg_fd[VMF_CGROUPS_MAX];
	unsigned n_cgroups;
	unsigned cg_open;                /* cg_fd[0 .. cg_open) are open: the job's to close */
	struct vmf_lease_ask lease;      /* from the hand-out's record on */
	int rc;
	struct vmf_error err;
};

int
vmf_getvm_check_caps(const char *driver, unsigned caps, unsigned tpl_vcpus, unsigned tpl_mib, unsigned vcpus,
		     unsigned mib, struct vmf_error *err)
{
	/* Growing a clone past its template needs the driver's hot-add. */
	if (vcpus > tpl_vcpus && !(caps & VMF_CAP_CPU_HOTPLUG))
		return vmf_err(err, ENOTSUP, "%u vCPUs requested, the template has %u: vCPU hot-add is "
			       "unsupported by %s (no %s capability)", vcpus, tpl_vcpus, driver,
			       vmf_cap_name(VMF_CAP_CPU_HOTPLUG));
	if (mib > tpl_mib && !(caps & VMF_CAP_MEM_HOTPLUG))
		return vmf_err(err, ENOTSUP, "%u MiB requested, the template has %u MiB: memory hot-add is "
			       "unsupported by %s (no %s capability)", mib, tpl_mib, driver,
			       vmf_cap_name(VMF_CAP_MEM_HOTPLUG));
	return 0;
}

int
vmf_getvm_check_share(const char *driver, unsigned caps, const char *share_dir, const char *sock_dir,
		      struct vmf_error *err)
{
	bool dev = caps & VMF_CAP_SHARE_DEVICE, share = share_dir && *share_dir;
	/* A link to a directory the guest never sees would only mislead. */
	if (!dev && share)
		return vmf_err(err, ENOTSUP, "share_dir was given, but %s has no share device (no %s capability): "
			       "leave share_dir empty", driver, vmf_cap_name(VMF_CAP_SHARE_DEVICE));
	if ((dev && !share) || !sock_dir || !*sock_dir)
		return vmf_err(err, EINVAL, dev ? "share_dir and sock_dir must be given" : "sock_dir must be given");
	if (dev && strcmp(share_dir, sock_dir) == 0)
		return vmf_err(err, EINVAL, "share_dir and sock_dir must differ");
	return dev;
}

/* The size a request for a template's clone gets: 0 is the template's. */
static int
template_size(struct vmf_daemon *d, const struct vmf_pool *p, unsigned *vcpus, unsigned *mib, struct vmf_error *err)
{
	const Vmf__Catalog__TemplateSpec *s = p->spec;
	*vcpus = *vcpus ? *vcpus : s->vcpus;
	*mib = *mib ? *mib : s->memory_mib;
	if (*vcpus < s->vcpus || *vcpus > s->max_vcpus || *mib < s->memory_mib || *mib > s->max_memory_mib)
		return vmf_err(err, ENOSPC, "template %s does not serve %u vCPUs and %u MiB: it allows %u-%u vCPUs and "
			       "%u-%u MiB", p->template_name, *vcpus, *mib, s->vcpus, s->max_vcpus, s->memory_mib,
			       s->max_memory_mib);
	if ((*mib - s->memory_mib) % 128)
		return vmf_err(err, EINVAL, "memory above the template base (%u MiB) must be a multiple of "
			       "128 MiB; %u MiB requested", s->memory_mib, *mib);
	return vmf_getvm_check_caps(d->ops->name, d->hv.caps, s->vcpus, s->memory_mib, *vcpus, *mib, err);
}

static struct vmf_pool *
pool_of_template(struct vmf_daemon *d, const char *id)
{
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		if (p->template_name[0] && strcmp(p->template_id, id) == 0)
			return p;
	return NULL;
}

/* The template a GetVM of peer names: its own snapshot of that name (the
 * operator's for root and the daemon's user), one it may use by id, or,
 * for a tenant with none of that name, a pool of the config with that
 * template (the operator offers it).  *pool: a pool of it if one exists,
 * else NULL (made once its record is read).  Another tenant's snapshot is
 * "no such template": not the peer's to learn of. */
static int
template_find(struct vmf_daemon *d, uid_t peer, const char *name, struct vmf_pool **pool, struct vmf_snap **snap,
	      struct vmf_error *err)
{
	*snap = vmf_snap_lookup(d, peer, name);
	*pool = *snap ? pool_of_template(d, (*snap)->id) : NULL;
	if (*snap)
		return 0;
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		if (p->template_name[0] && !p->on_demand &&
		    (strcmp(p->template_name, name) == 0 || strcmp(p->template_id, name) == 0)) {
			*pool = p;
			return 0;
		}
	if (vmf_daemon_peer_admin(d, peer))
		return vmf_err(err, ENOENT, "no template is named %s (vmfactory snapshot makes one; status lists "
			       "them)", name);
	return vmf_err(err, ENOENT, "uid %u has no template %s, and no pool of the config serves one of that name "
		       "(vmfactory snapshot makes one; status lists yours)", (unsigned)peer, name);
}

static int
validate(struct vmf_daemon *d, const Vmf__Control__GetVMRequest *req, uid_t peer, struct vmf_pool **pool,
	 struct vmf_snap **snap, struct vmf_error *err)
{
	*snap = NULL;
	if (!vmf_valid_sandbox_id(req->sandbox_id))
		return vmf_err(err, EINVAL, "sandbox id '%.80s' is invalid: it must match "
			       "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", req->sandbox_id ? req->sandbox_id : "");
	if (req->template_ && *req->template_) {
		if (req->pool && *req->pool)
			return vmf_err(err, EINVAL, "name a pool or a template, not both");
		if (!vmf_valid_pool_name(req->template_) && !vmf_valid_template_id(req->template_))
			return vmf_err(err, EINVAL, "template is invalid: it must be a name (1 to 32 letters, digits, "
				       "'-' or '_') or a template id (64 hex digits)");
		int rc = template_find(d, peer, req->template_, pool, snap, err);
		if (rc < 0)
			return rc;
		/* No pool has it yet: its record is read on a worker. */
		unsigned v = req->vcpus, m = req->memory_mib;
		if (*pool && (rc = template_size(d, *pool, &v, &m, err)) < 0)
			return rc;
	} else if (req->vcpus == 0 || req->memory_mib == 0)
		return vmf_err(err, EINVAL, "vcpus and memory_mib must be given and non-zero");
	if (!(req->template_ && *req->template_)) {
		if (req->pool && *req->pool && !vmf_valid_pool_name(req->pool))
			return vmf_err(err, EINVAL, "pool name is invalid: it must be 1 to 32 letters, digits, '-' or '_'");
		if (!(*pool = vmf_pool_choose(&d->cache.pools, req->pool, req->vcpus, req->memory_mib, err)))
			return -err->code;
		int rc = vmf_getvm_check_caps(d->ops->name, d->hv.caps, (*pool)->spec->vcpus,
					      (*pool)->spec->memory_mib, req->vcpus, req->memory_mib, err);
		if (rc < 0)
			return rc;
		/* Linux onlines memory in 128 MiB blocks on x86-64. */
		unsigned extra = req->memory_mib - (*pool)->spec->memory_mib;
		if (extra % 128)
			return vmf_err(err, EINVAL, "memory above the template base (%u MiB) must be a multiple of "
				       "128 MiB; %u MiB requested", (*pool)->spec->memory_mib, req->memory_mib);
	}
	int share = vmf_getvm_check_share(d->ops->name, d->hv.caps, req->share_dir, req->sock_dir, err);
	if (share < 0)
		return share;
	if (strlen(req->share_dir ? req->share_dir : "") >= PATH_MAX || strlen(req->sock_dir) >= PATH_MAX)
		return vmf_err(err, ENAMETOOLONG, "share_dir and sock_dir must be shorter than %d bytes", PATH_MAX);
	return 0;
}

/* The pool's part of the request's network: its default mode, its NIC.
 * A request for a template no pool has learns its pool only after the
 * catalog lookup (paths_done), so this runs then. */
static int
net_against_pool(struct getvm_job *j, const struct vmf_pool *pool, bool ns, struct vmf_error *err)
{
	if (!ns && !j->net.user && !j->net.none && pool->net_user)
		j->net.user = true;
	if ((ns || j->net.user) && !vmf_template_params_nic(&pool->params))
		return vmf_err(err, ENOTSUP, "pool %s has no NIC (nic = no, or the %s driver has none): no network "
			       "for its VMs", pool->name, pool->params.ops->name);
	return 0;
}

/* The request's network, against the pool: user-mode (asked, or the pool's
 * default), a namespace, or none. */
static int
validate_net(const Vmf__Control__GetVMRequest *req, const struct vmf_pool *pool, struct getvm_job *j,
	     struct vmf_error *err)
{
	int r = vmf_net_parse(req->net, &j->net, err);
	if (r < 0)
		return r;
	bool ns = req->netns && *req->netns;
	if (ns && (j->net.user || j->net.none))
		return vmf_err(err, EINVAL, "netns and net %s exclude each other", req->net);
	if (!ns && req->netns_link && *req->netns_link)
		return vmf_err(err, EINVAL, "netns_link names an interface of netns, which was not given");
	if (pool && (r = net_against_pool(j, pool, ns, err)) < 0)
		return r;
	if (!ns)
		return 0;
	const char *link = req->netns_link && *req->netns_link ? req->netns_link : "eth0";
	size_t ll = strlen(link);
	if (ll >= IF_NAMESIZE || strchr(link, '/') || strchr(link, ' ') || strcmp(link, ".") == 0 ||
	    strcmp(link, "..") == 0)
		return vmf_err(err, EINVAL, "netns_link '%.40s' is no interface name (1 to 15 characters, no '/' "
			       "or space)", link);
	if (strlen(req->netns) >= PATH_MAX || strchr(req->netns, ','))
		return vmf_err(err, EINVAL, "netns path is too long or has a comma");
	snprintf(j->netns, sizeof(j->netns), "%s", req->netns);
	snprintf(j->netns_link, sizeof(j->netns_link), "%s", link);
	return 0;
}

/* The forwards uid's VMs hold (handed out, being handed out, suspended). */
static unsigned
tenant_forwards(struct vmf_daemon *d, uid_t uid)
{
	unsigned n = 0;
	struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		if (vm->owner_uid == uid)
			n += vm->n_hostfwd;
	return n;
}

/* What user-mode networking a tenant may have (vmf_net_check_tenant); on
 * the loop, which knows every VM's forwards, so that two requests at once
 * cannot both take the last ones: getvm_take checks again as it claims. */
static int
tenant_net(struct vmf_daemon *d, const struct getvm_job *j, struct vmf_error *err)
{
	if (!j->net.user || vmf_daemon_peer_admin(d, j->peer))
		return 0;
	const struct vmf_daemon_opts *o = &d->opts;
	return vmf_net_check_tenant(&j->net, o->user_net_outbound, o->hostfwd_addresses, tenant_forwards(d, j->peer),
				    o->max_hostfwd, err);
}

/* On a worker, with the VM's record naming all of it: the namespace's tap
 * and mirror, or user-mode, plugged into the VM's NIC; gn for the guest. */
static int
attach_net(struct getvm_job *j, struct vmf_guest_net *gn, struct vmf_error *err)
{
	struct vmf_vm *vm = &j->snap;
	struct vmf_net_backend nb = { .tap_fd = -1 };
	int r;
	if (j->nsfd >= 0) {
		r = vmf_netns_setup(j->nsfd, j->netns, j->netns_link, vm->tap, gn, &nb.tap_fd, err);
		j->net_busy = r == -EBUSY;
		if (r < 0)
			return r;
		VMF_FAULT("mid-net");
	} else {
		const char *fw[VMF_MAX_HOSTFWD];
		for (unsigned i = 0; i < vm->n_hostfwd; i++)
			fw[i] = vm->hostfwd[i];
		nb.hostfwd = fw;
		nb.n_hostfwd = vm->n_hostfwd;
		nb.outbound = vm->net_outbound;
		/* QEMU's slirp defaults: the guest 10.0.2.15, the host 10.0.2.2,
		 * DNS 10.0.2.3.  A fresh, locally administered MAC: every clone
		 * has the template's until the guest is told otherwise. */
		memset(gn, 0, sizeof(*gn));
		if (getrandom(gn->mac, 6, 0) != 6)
			return vmf_err_sys(err, errno, "cannot draw a MAC address");
		gn->mac[0] = (uint8_t)((gn->mac[0] & 0xfe) | 0x02);
		snprintf(gn->addrs[0], sizeof(gn->addrs[0]), "10.0.2.15/24");
		gn->n_addrs = 1;
		snprintf(gn->gateway, sizeof(gn->gateway), "10.0.2.2");
		snprintf(gn->dns[0], sizeof(gn->dns[0]), "10.0.2.3");
		gn->n_dns = 1;
		r = vm->ops->net_attach(vm->hv, &nb, err);
		if (r < 0)
			return vmf_error_prefix(err, "user-mode network");
		goto mac;
	}
	r = vm->ops->net_attach(vm->hv, &nb, err);
	close(nb.tap_fd);
	if (r < 0)
		return vmf_error_prefix(err, "network namespace %s", j->netns);
mac:
	snprintf(vm->mac, sizeof(vm->mac), "%02x:%02x:%02x:%02x:%02x:%02x", gn->mac[0], gn->mac[1], gn->mac[2],
		 gn->mac[3], gn->mac[4], gn->mac[5]);
	return 0;
}

/* Every end of a GetVM: its snapshot may be removed once no GetVM of it
 * runs. */
static void
getvm_free(struct getvm_job *j)
{
	struct vmf_snap *s = j->template_id[0] ? vmf_snap_by_id(j->d, j->template_id) : NULL;
	if (s && s->getvms)
		s->getvms--;
	if (j->nsfd >= 0)
		close(j->nsfd);
	for (unsigned i = 0; i < j->cg_open; i++)
		close(j->cg_fd[i]);
	free(j);
}

static double
since(int64_t *t)
{
	int64_t now = vmf_monotonic_ns();
	double ms = (double)(now - *t) / 1e6;
	*t = now;
	return ms;
}

static int
left_ms(const struct getvm_job *j)
{
	int64_t l = j->deadline_ms - vmf_now_ms();
	return l > 0 ? (int)l : 1;
}

static void
getvm_work(void *arg)
{
	struct getvm_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_vm *vm = &j->snap;
	struct vmf_error *err = &j->err;
	const struct vmf_hv_ops *ops = vm->ops;
	int64_t t = vmf_monotonic_ns();

	/* First, durably: a daemon that dies from here on leaves a
	 * handing-out record, which recovery destroys (with any link made);
	 * dying before it leaves the VM pooled, untouched. */
	j->rc = vmf_cache_put_vm_record(&d->cache, vm, VMF_VM_HANDING_OUT, err);
	if (j->rc < 0) {
		vmf_error_prefix(err, "recording VM %s as handing out", vm->id);
		return;
	}
	double record_ms = since(&t);
	if (j->miss) {
		if ((j->rc = VMF_FAULT_GATE(&d->cache, "miss", err)) < 0)
			return;
		j->rc = vmf_template_clone(&j->pool->params, j->tpl->rec, vm->id, vm->run_dir,
					   vm->share_dir, &vm->hv, err);
		if (j->rc < 0)
			return;
		if (vmf_now_ms() > j->deadline_ms) {
			j->rc = vmf_err(err, EAGAIN, "pool exhausted: no ready VM, and a new clone took longer "
					"than the %d ms timeout", (int)(j->deadline_ms - j->start_ms));
			return;
		}
		t = vmf_monotonic_ns();
	}
	/* Into its cgroups before it runs again: the limits hold from its
	 * first instruction for the sandbox. */
	for (unsigned i = 0; i < j->n_cgroups; i++) {
		if ((j->rc = vmf_cgroup_join(j->cg_fd[i], j->cgroups[i], ops->pid(vm->hv), err)) < 0)
			return;
		snprintf(vm->cgroups[i], sizeof(vm->cgroups[i]), "%s", j->cgroups[i]);
		vm->cgroup_oom[i] = vmf_cgroup_oom_kills(j->cgroups[i]);
		vm->n_cgroups = i + 1;
	}
	/* A pooled clone comes with its agent connected, its identity fresh
	 * and its share mounted (warm_clone in cache/fill.c); a clone made for
	 * a miss, or one adopted after a restart, has none of these. */
	struct vmf_agent *agent = vm->agent;
	bool warm = agent != NULL;
	/* A shaped clone may be larger than asked: it keeps its size. */
	unsigned cpus = j->vcpus > vm->vcpus ? j->vcpus : vm->vcpus;
	unsigned mib = j->memory_mib > vm->memory_mib ? j->memory_mib : vm->memory_mib;
	vm->agent = NULL;
	struct vmf_agent_handout ho;
	struct vmf_guest_net gn;
	bool net = vm->net[0] != '\0';
	int r = 0;
	if (net)
		r = attach_net(j, &gn, err);
	j->step_ms[VMF_STEP_NET] = since(&t);
	/* The hand-out request goes out before cont: the paused guest reads it
	 * the moment it runs, so resume, clock and hostname cost one round
	 * trip.  Its time is as old as the cont is long when the guest sets
	 * it, so a SetTime follows right after cont without waiting: the
	 * guest reads it once it has answered the hand-out. */
	if (r == 0 && warm)
		r = vmf_agent_send_handout_net(agent, j->sandbox_id, net ? &gn : NULL, &ho, left_ms(j), err);
	if (r == 0)
		r = ops->resume(vm->hv, err);
	if (r == 0 && warm)
		r = vmf_agent_send_handout_time(agent, &ho, left_ms(j), err);
	if (r == 0 && !warm) {
		/* The guest notices the new host connection within milliseconds of cont. */
		r = vmf_agent_open(ops->agent_connect, vm->hv, left_ms(j), &agent, err);
	}
	j->step_ms[VMF_STEP_RESUME] = since(&t);
	if (r == 0 && !warm) {
		struct vmf_agent_identity id;
		r = vmf_agent_new_identity(agent, &id, left_ms(j), err);
		if (r == 0) {
			memcpy(j->sample, id.sample, 16);
			j->reseeded = true;
			snprintf(vm->boot_id, sizeof(vm->boot_id), "%s", id.boot_id);
			snprintf(vm->machine_id, sizeof(vm->machine_id), "%s", id.machine_id);
		}
	}
	j->step_ms[VMF_STEP_RESEED] = since(&t);
	if (r == 0 && !warm)
		r = vmf_agent_send_handout_net(agent, j->sandbox_id, net ? &gn : NULL, &ho, left_ms(j), err);
	if (r == 0)
		r = vmf_agent_recv_handout(agent, &ho, left_ms(j), err);
	if (r == 0) {
		vm->clock_error_ms = vmf_agent_handout_clock_error_ms(&ho);
		snprintf(vm->hostname, sizeof(vm->hostname), "%s", ho.hostname);
		/* The time went out right after cont (before it on a miss): a
		 * guest that took long to read it (its vCPU waiting for a core on
		 * a loaded host, a stopped VMM) is that far behind.  Then a second
		 * round trip, now that the guest runs, sets it again. */
		if (vm->clock_error_ms > CLOCK_RESYNC_MS) {
			int64_t guest_ns = 0;
			r = vmf_agent_set_time(agent, vmf_realtime_ns(), &guest_ns, left_ms(j), err);
			int64_t now = vmf_realtime_ns();
			if (r == 0) {
				ho.guest_ns = guest_ns, ho.host_recv_ns = now;
				vm->clock_error_ms = vmf_agent_handout_clock_error_ms(&ho);
			}
		}
		if (r == 0 && vm->clock_error_ms > 1000)
			r = vmf_err(err, EIO, "the guest clock is %lld ms off after the hand-out set it",
				    (long long)((ho.guest_ns - ho.host_recv_ns) / 1000000));
		else if (r == 0 && ho.net_error[0])
			r = vmf_err(err, EIO, "the guest could not configure its NIC: %s", ho.net_error);
		else if (r == 0 && strcmp(ho.hostname, j->sandbox_id) != 0)
			r = vmf_err(err, EIO, "the guest's hostname is '%s' after the hand-out set it to '%s'",
				    ho.hostname, j->sandbox_id);
	}
	j->step_ms[VMF_STEP_TIME] = since(&t);
	if (r == 0 && cpus > vm->vcpus)
		r = ops->hotplug_vcpus(vm->hv, cpus, err);
	if (r == 0 && mib > vm->memory_mib)
		r = ops->hotplug_memory(vm->hv, mib - vm->memory_mib, err);
	j->step_ms[VMF_STEP_HOTPLUG] = since(&t);
	if (r == 0 && (cpus > vm->vcpus || mib > vm->memory_mib)) {
		uint32_t online = 0;
		uint64_t kib = 0;
		r = vmf_agent_online(agent, cpus, mib, &online, &kib, left_ms(j), err);
		if (r == 0 && online != cpus)
			r = vmf_err(err, EIO, "the guest has %u CPUs online after hot-add, %u requested", online, cpus);
	}
	j->step_ms[VMF_STEP_ONLINE] = since(&t);
	/* No share_dir passed validation: the driver has no share device. */
	if (r == 0 && !warm && j->share_dir[0])
		r = vmf_agent_mount_share(agent, VMF_SHARE_TAG, left_ms(j), err);
	j->step_ms[VMF_STEP_MOUNT] = since(&t);
	vmf_agent_free(agent);
	if (r == 0)
		vm->vcpus = cpus, vm->memory_mib = mib;
	/* A share whose files could run setuid on the host, open devices or
	 * grow without bound (a clone from a daemon that made no mounts) is
	 * for the trusted only. */
	if (r == 0 && j->share_dir[0] && !vmf_daemon_peer_admin(d, j->peer))
		r = vmf_share_check(vm->run_dir, vm->share_dir, err);
	/* Before the links exist: a runtime that finds them can use them. */
	if (r == 0 && !vmf_daemon_peer_admin(d, j->peer)) {
		/* The agent only: a VMM's control socket (QMP's blockdev-add and
		 * chardev-add, a REST API's drives) makes the VMM open host paths
		 * its client names, as QEMU's user, which a tenant must not do.
		 * A runtime running as root or as the daemon's user drives the
		 * sandbox's monitor. */
		const char *const socks[] = { vm->ops->agent_socket };
		r = vmf_sandbox_grant(vm->run_dir, socks, 1, j->share_dir[0] ? vm->share_dir : NULL, j->peer,
				      d->runas_uid, err);
	}
	/* No share_dir passed validation: the driver has no share device. */
	if (r == 0 && j->share_dir[0])
		r = vmf_sandbox_install_link(&d->sandbox, "share_dir", j->share_dir, vm->share_dir, j->peer, err);
	if (r == 0)
		r = vmf_sandbox_install_link(&d->sandbox, "sock_dir", j->sock_dir, vm->run_dir, j->peer, err);
	j->step_ms[VMF_STEP_LINKS] = since(&t);
	VMF_FAULT("mid-handout");
	/* Recorded before the reply (in the run dir, no fsync: the page cache
	 * outlives a daemon crash, the VM does not outlive a reboot), and here
	 * rather than on the event loop: a VM whose assignment is not recorded
	 * would come back as a pooled VM after a restart and could be handed
	 * out twice. */
	if (r == 0) {
		vm->assigned_ns = vmf_realtime_ns();
		vmf_lease_apply(vm, &j->lease, vm->assigned_ns);
		r = vmf_cache_put_vm_record(&d->cache, vm, VMF_VM_ASSIGNED, err);
		if (r < 0)
			vmf_error_prefix(err, "recording VM %s as assigned", vm->id);
	}
	j->step_ms[VMF_STEP_RECORD] = since(&t) + record_ms;
	/* Its VMM died under the hand-out: the error says why. */
	if (r < 0 && vm->hv)
		vmf_vm_exit_explain(ops, vm->hv, err);
	j->rc = r;
	/* For the reply, here: smaps_rollup walks the whole address space. */
	if (r == 0)
		j->pss_kib = vmf_proc_pss_kib(ops->pid(vm->hv));
	/* The window between the assigned record and the reply. */
	VMF_FAULT_PAUSE("handout-pause");
}

static void
getvm_done(void *arg)
{
	struct getvm_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_vm *vm = j->vm;
	vm->hv = j->snap.hv;
	vm->agent = j->snap.agent;
	vm->vcpus = j->snap.vcpus;
	vm->memory_mib = j->snap.memory_mib;
	vm->assigned_ns = j->snap.assigned_ns;
	vm->lease_deadline_ns = j->snap.lease_deadline_ns;
	vm->lease_suspend = j->snap.lease_suspend;
	memcpy(vm->boot_id, j->snap.boot_id, sizeof(vm->boot_id));
	memcpy(vm->machine_id, j->snap.machine_id, sizeof(vm->machine_id));
	memcpy(vm->hostname, j->snap.hostname, sizeof(vm->hostname));
	memcpy(vm->mac, j->snap.mac, sizeof(vm->mac));
	if (j->nsfd >= 0)
		close(j->nsfd);
	j->nsfd = -1;
	for (unsigned i = 0; i < j->cg_open; i++)
		close(j->cg_fd[i]);
	j->cg_open = 0;
	memcpy(vm->cgroups, j->snap.cgroups, sizeof(vm->cgroups));
	memcpy(vm->cgroup_oom, j->snap.cgroup_oom, sizeof(vm->cgroup_oom));
	vm->n_cgroups = j->snap.n_cgroups;
	vm->clock_error_ms = j->snap.clock_error_ms;
	if (j->miss)
		d->miss_clones--;
	vmf_tpl_unref(j->tpl);
	j->tpl = NULL;
	/* A pooled clone's sample was checked when its warm-up landed. */
	if (j->rc == 0 && j->reseeded)
		j->rc = vmf_cache_check_sample(&d->cache, vm->id, j->sample, &j->err);
	if (j->rc == 0 && !vmf_request_connected(j->c))
		j->rc = vmf_err(&j->err, ECONNRESET, "client disconnected during GetVM");
	if (j->rc == 0 && vm->dead)
		j->rc = vmf_err(&j->err, EIO, "VM %s: its %s process exited during the hand-out", vm->id,
				vm->ops->name);
	/* A destroy of every VM would stop this one right after the reply, and
	 * once the loop has ended no reply reaches the client: either way
	 * nobody may be left holding a VM that is not theirs. */
	if (j->rc == 0 && d->cache.destroying && d->destroy_all)
		j->rc = vmf_err(&j->err, ESHUTDOWN, "the daemon is being destroyed with all its VMs; the VM "
				"prepared for this request was stopped");
	if (j->rc == 0 && d->cache.loop_done)
		j->rc = vmf_err(&j->err, ESHUTDOWN, "the daemon exited before the hand-out completed");
	vm->busy = false;
	if (j->rc == 0) {
		vm->state = VMF_VM_ASSIGNED;
		if (vm->hv) {
			vmf_cache_watch_vm(&d->cache, vm);
			vmf_cache_watch_events(&d->cache, vm);
		}
		j->step_ms[VMF_STEP_TOTAL] = (double)(vmf_now_ms() - j->start_ms);
		for (int s = 0; s < VMF_STEP_COUNT; s++) {
			vmf_latency_add(&d->lat[s], j->step_ms[s]);
			vmf_histogram_add(&d->hist[s], j->step_ms[s] / 1000.0);
		}
		vmf_shape_note_handout(&j->pool->shape, j->vcpus, j->memory_mib, j->kind);
		log_vm(VMF_LOG_INFO, vm->id, "handed out to sandbox %s (%u vCPU, %u MiB) in %.1f ms (%s, %lld ms "
		       "queued), clock error %.3f ms, boot id %s", j->sandbox_id, vm->vcpus, vm->memory_mib,
		       j->step_ms[VMF_STEP_TOTAL], vmf_handout_kind_name(j->kind), (long long)j->queue_ms,
		       vm->clock_error_ms, vm->boot_id);
		Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
		Vmf__Control__VmInfo info = VMF__CONTROL__VM_INFO__INIT;
		vmf_vm_info_fill(d, vm, j->pss_kib, &info);
		info.handout = (char *)vmf_handout_kind_name(j->kind);   /* static: not cleared */
		info.queue_ms = (uint32_t)j->queue_ms;
		r.body_case = VMF__CONTROL__REPLY__BODY_VM;
		r.vm = &info;
		vmf_request_reply(j->c, &r);
		vmf_vm_info_clear(&info);
	} else {
		d->errors++;
		log_vm(VMF_LOG_WARN, vm->id, "GetVM for sandbox %s failed: %s", j->sandbox_id, j->err.msg);
		/* Never handed out half-prepared: the VM goes, with any link made. */
		if (j->net_busy)
			vm->net[0] = '\0';
		vmf_cache_destroy_vm(&d->cache, vm, true, NULL);
		vmf_request_fail(j->c, j->err.code, j->err.msg);
	}
	getvm_free(j);
	vmf_daemon_settle(d);
}

static void getvm_take(struct getvm_job *j);

/* The request's paths, on a worker: opening them may block (a hung FUSE
 * or NFS mount), and no VM is taken until they pass, so a bad request
 * costs no pooled VM. */
static void
paths_work(void *arg)
{
	struct getvm_job *j = arg;
	const struct vmf_sandbox_policy *p = &j->d->sandbox;
	j->rc = j->share_dir[0] ? vmf_sandbox_check_path(p, "share_dir", j->share_dir, j->peer, &j->err) : 0;
	if (j->rc == 0)
		j->rc = vmf_sandbox_check_path(p, "sock_dir", j->sock_dir, j->peer, &j->err);
	/* The namespace is opened here, as it is now: the hand-out acts on
	 * this one, whatever its path names later. */
	if (j->rc == 0 && j->netns[0]) {
		int fd = vmf_netns_open(j->netns, j->peer, vmf_daemon_peer_admin(j->d, j->peer), &j->netns_dev,
					&j->netns_ino, &j->err);
		if (fd < 0)
			j->rc = fd;
		else
			j->nsfd = fd;
		if (fd >= 0)
			j->rc = vmf_netns_check_link(fd, j->netns, j->netns_link, &j->err);
	}
	if (j->rc == 0 && j->net.n_hostfwd)
		j->rc = vmf_net_check_fwd_ports(&j->net, !vmf_daemon_peer_admin(j->d, j->peer), &j->err);
	/* The request's cgroups as its peer may name them; else the pool's,
	 * which the operator configured. */
	bool pool_cg = j->n_cgroups == 0 && j->pool && j->pool->n_cgroups;
	if (pool_cg) {
		memcpy(j->cgroups, j->pool->cgroups, sizeof(j->cgroups));
		j->n_cgroups = j->pool->n_cgroups;
	}
	unsigned opened = 0;
	for (; j->rc == 0 && opened < j->n_cgroups; opened++) {
		int fd = vmf_cgroup_open(j->cgroups[opened], j->peer, pool_cg || vmf_daemon_peer_admin(j->d, j->peer),
					 &j->err);
		if (fd < 0)
			j->rc = fd;
		else
			j->cg_fd[opened] = fd;
	}
	if (j->rc < 0) {
		for (unsigned i = 0; i + 1 < opened; i++)
			close(j->cg_fd[i]);
		j->n_cgroups = 0;
	} else {
		j->cg_open = opened;
	}
	if (j->rc == 0 && j->template_id[0] && !j->pool &&
	    (j->rc = vmf_catalog_template_get(j->d->cache.cat, j->template_id, &j->rec, &j->err)) == 0 &&
	    (j->rc = vmf_template_verify(j->d->cache.cat, j->rec, false, &j->err)) < 0) {
		vmf__catalog__template_record__free_unpacked(j->rec, NULL);
		j->rec = NULL;
	}
}

static void
paths_done(void *arg)
{
	struct getvm_job *j = arg;
	struct vmf_daemon *d = j->d;
	if (j->rc == 0 && d->cache.stopping)
		j->rc = vmf_err(&j->err, ESHUTDOWN, "the daemon is shutting down");
	if (j->rc == 0 && !vmf_request_connected(j->c))
		j->rc = vmf_err(&j->err, ECONNRESET, "client disconnected during GetVM");
	/* A template no pool has: a pool of it, of no ready clones, whose
	 * requests are misses (unless another request made one meanwhile),
	 * for its owner alone. */
	if (j->rc == 0 && j->template_id[0] && !j->pool && !(j->pool = pool_of_template(d, j->template_id))) {
		char name[33];
		snprintf(name, sizeof(name), "%s", j->rec->name);
		j->pool = vmf_daemon_template_pool(d, name, 0, true, j->rec, &j->err);
		j->rec = NULL;
		j->rc = j->pool ? 0 : -j->err.code;
	}
	if (j->rc == 0 && j->template_name[0])
		j->rc = template_size(d, j->pool, &j->vcpus, &j->memory_mib, &j->err);
	if (j->rc == 0 && j->template_name[0])
		j->rc = net_against_pool(j, j->pool, j->netns[0] != 0, &j->err);
	if (j->rec)
		vmf__catalog__template_record__free_unpacked(j->rec, NULL);
	j->rec = NULL;
	/* Here, on the loop, right before the VM is taken: a tenant's hand-outs
	 * in flight are already its VMs (handing out), so none slips past. */
	if (j->rc == 0)
		j->rc = vmf_limit_tenant(d, j->peer, VMF_LIMIT_VMS, 0, &j->err);
	if (j->rc < 0) {
		d->errors++;
		vmf_request_fail(j->c, j->err.code, j->err.msg);
		getvm_free(j);
		return;
	}
	getvm_take(j);
}

static void
getvm_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *request)
{
	const Vmf__Control__GetVMRequest *req = request->get_vm;
	struct vmf_error err = {0};
	struct vmf_pool *pool = NULL;
	struct vmf_snap *snap = NULL;
	if (validate(d, req, vmf_request_peer(c), &pool, &snap, &err) < 0) {
		d->errors++;
		vmf_request_fail(c, err.code, err.msg);
		return;
	}
	struct getvm_job *j = vmf_request_job_new(c, sizeof(*j));
	if (!j)
		return;
	j->d = d;
	j->c = c;
	j->pool = pool;
	j->nsfd = -1;
	if (snap) {
		snprintf(j->template_id, sizeof(j->template_id), "%s", snap->id);
		snap->getvms++;
	}
	j->peer = vmf_request_peer(c);
	if (vmf_lease_parse(d, req->ttl_s, req->on_expiry, &j->lease, &err) < 0 ||
	    validate_net(req, pool, j, &err) < 0 || tenant_net(d, j, &err) < 0) {
		d->errors++;
		getvm_free(j);
		vmf_request_fail(c, err.code, err.msg);
		return;
	}
	if (req->n_cgroups > VMF_CGROUPS_MAX) {
		d->errors++;
		getvm_free(j);
		char msg[96];
		snprintf(msg, sizeof(msg), "%zu cgroups named: at most %d", req->n_cgroups, VMF_CGROUPS_MAX);
		vmf_request_fail(c, E2BIG, msg);
		return;
	}
	for (size_t i = 0; i < req->n_cgroups; i++) {
		if (vmf_cgroup_check_path(req->cgroups[i], &err) < 0) {
			d->errors++;
			getvm_free(j);
			vmf_request_fail(c, err.code, err.msg);
			return;
		}
		snprintf(j->cgroups[i], sizeof(j->cgroups[i]), "%s", req->cgroups[i]);
	}
	j->n_cgroups = (unsigned)req->n_cgroups;
	if (req->share_dir && *req->share_dir && !d->share_mib && !vmf_daemon_peer_admin(d, j->peer)) {
		d->errors++;
		getvm_free(j);
		vmf_request_fail(c, EPERM, "this daemon gives VMs no share of their own mount (share_max_mib "
					"= 0, or it does not run as root), so it gives a share to root and its own user "
					"only; a daemon running as root with share_max_mib above 0 gives one to you");
		return;
	}
	j->vcpus = req->vcpus;
	j->memory_mib = req->memory_mib;
	snprintf(j->template_name, sizeof(j->template_name), "%s", req->template_ ? req->template_ : "");
	snprintf(j->sandbox_id, sizeof(j->sandbox_id), "%s", req->sandbox_id);
	snprintf(j->share_dir, sizeof(j->share_dir), "%s", req->share_dir);
	snprintf(j->sock_dir, sizeof(j->sock_dir), "%s", req->sock_dir);
	j->start_ms = vmf_now_ms();
	j->deadline_ms = j->start_ms + (req->timeout_ms ? req->timeout_ms : (int64_t)d->opts.get_timeout_s * 1000);
	if (vmf_jobs_submit(d->cache.jobs, paths_work, paths_done, j) < 0) {
		getvm_free(j);
		vmf_request_fail(c, ENOMEM, "cannot queue the GetVM work");
	}
}

/* The wait's end (cache/queue.c): a ready VM to take now, or why not. */
static void
getvm_woken(void *arg, int rc, const struct vmf_error *err)
{
	struct getvm_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_error lerr = {0};
	j->queue_ms = vmf_now_ms() - j->queued_at_ms;
	/* Its tenant's VMs handed out meanwhile count. */
	if (rc == 0 && (rc = vmf_limit_tenant(d, j->peer, VMF_LIMIT_VMS, 0, &lerr)) < 0)
		err = &lerr;
	if (rc < 0) {
		d->errors++;
		vmf_request_fail(j->c, err->code, err->msg);
		getvm_free(j);
		return;
	}
	getvm_take(j);
}

static bool
getvm_alive(void *arg)
{
	const struct getvm_job *j = arg;
	return vmf_request_connected(j->c);
}

/* No ready VM and no room for a clone on demand: the request waits for
 * the pool's next clone, within its deadline and the queue's bounds. */
static void
getvm_wait(struct getvm_job *j)
{
	struct vmf_daemon *d = j->d;
	/* It leaves the queue a hand-out's time before its deadline (a tenth
	 * of its timeout, at most 2 s): one served at the last moment would
	 * fail mid-way and cost the VM. */
	int64_t reserve = (j->deadline_ms - j->start_ms) / 10;
	struct vmf_wait_req r = {
		.uid = j->peer,
		.uid_limit = vmf_daemon_peer_admin(d, j->peer) ? UINT_MAX : d->opts.tenant_max_queued,
		.deadline_ms = j->deadline_ms - (reserve < 2000 ? reserve : 2000),
		.fn = getvm_woken, .alive = getvm_alive, .arg = j,
	};
	struct vmf_error err = {0};
	if (!j->waited)
		j->queued_at_ms = vmf_now_ms();
	j->waited = true;
	if (vmf_cache_enqueue(&d->cache, j->pool, &r, &err) < 0) {
		d->errors++;
		vmf_request_fail(j->c, err.code, err.msg);
		getvm_free(j);
	}
}

/* On the loop, once the paths passed: take a ready VM (or clone one). */
static void
getvm_take(struct getvm_job *j)
{
	struct vmf_daemon *d = j->d;
	struct vmf_conn *c = j->c;
	struct vmf_pool *pool = j->pool;
	bool have_ready = false;
	struct vmf_vm *it;
	/* Before the refill below: what the pool learns shapes its next
	 * clones (once per request, not again when it leaves the queue). */
	if (!j->waited)
		vmf_shape_note_request(&pool->shape, j->vcpus, j->memory_mib);
	TAILQ_FOREACH(it, &d->cache.vms, link)
		have_ready = have_ready || (it->pool == pool && it->state == VMF_VM_READY && !it->busy && !it->dead);
	if (!pool->tpl && !have_ready) {
		d->errors++;
		char msg[700];
		snprintf(msg, sizeof(msg), "pool exhausted: the template for %u vCPU / %u MiB is not ready%s%s",
			 pool->spec->vcpus, pool->spec->memory_mib, pool->last_error[0] ? ": " : " yet",
			 pool->last_error);
		vmf_request_fail(c, EAGAIN, msg);
		getvm_free(j);
		return;
	}
	struct vmf_error nerr = {0};
	if (tenant_net(d, j, &nerr) < 0) {
		d->errors++;
		vmf_request_fail(c, nerr.code, nerr.msg);
		getvm_free(j);
		return;
	}
	struct vmf_vm *vm = vmf_pool_pick(pool, &d->cache.vms, j->vcpus, j->memory_mib, &j->kind);
	if (vm) {
		d->hits++;
		pool->ready--;
	} else {
		/* A miss: clone now, on a worker, within the request's timeout.
		 * Bounded: the daemon has a worker for each (vmf_daemon_run). */
		if (d->miss_clones >= d->opts.max_miss_clones) {
			getvm_wait(j);
			return;
		}
		d->misses++;
		vm = vmf_cache_new_vm(&d->cache, pool);
		if (!vm) {
			getvm_free(j);
			vmf_request_fail(c, ENOMEM, "out of memory");
			return;
		}
		j->miss = true;
		j->tpl = vmf_tpl_ref(pool->tpl);
		d->miss_clones++;
	}
	vm->state = VMF_VM_HANDING_OUT;
	vm->owner_uid = j->peer;
	/* The links are named before they exist so that a daemon dying mid-way
	 * can remove whichever it made (only links pointing at this VM). */
	snprintf(vm->share_link, sizeof(vm->share_link), "%s", j->share_dir);
	snprintf(vm->sock_link, sizeof(vm->sock_link), "%s", j->sock_dir);
	snprintf(vm->sandbox_id, sizeof(vm->sandbox_id), "%s", j->sandbox_id);
	/* Named, like the links, before any of it is made (getvm_work records
	 * it first): release and recovery undo exactly this. */
	if (j->nsfd >= 0) {
		snprintf(vm->net, sizeof(vm->net), "netns");
		snprintf(vm->netns, sizeof(vm->netns), "%s", j->netns);
		vm->netns_dev = j->netns_dev, vm->netns_ino = j->netns_ino;
		snprintf(vm->netns_link, sizeof(vm->netns_link), "%s", j->netns_link);
		snprintf(vm->tap, sizeof(vm->tap), "vmf%.12s", vm->id);
	} else if (j->net.user) {
		snprintf(vm->net, sizeof(vm->net), "user");
		for (unsigned i = 0; i < j->net.n_hostfwd; i++)
			snprintf(vm->hostfwd[i], sizeof(vm->hostfwd[i]), "%s", j->net.hostfwd[i]);
		vm->n_hostfwd = j->net.n_hostfwd;
		vm->net_outbound = j->net.outbound;
	}
	vm->busy = true;
	j->vm = vm;
	j->snap = *vm;
	if (vmf_jobs_submit(d->cache.jobs, getvm_work, getvm_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the GetVM work");
		getvm_done(j);
		return;
	}
	vmf_cache_refill(&d->cache);
}

const struct vmf_op vmf_op_getvm = {
	.name = "get-vm", .body = VMF__CONTROL__REQUEST__BODY_GET_VM, .flags = VMF_OP_COUNTED, .start = getvm_start,
};
