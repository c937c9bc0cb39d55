/* The daemon: options, start-up, the loop (signals, the one-second tick)
 * and readiness (`vmfactory init`'s pipe, systemd).  The rest lives one
 * role per file: see docs/architecture.md. */
#include <errno.h>
#include <pwd.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog.h"
#include "config.h"
#include "factory.h"
#include "frame.h"
#include "agent.h"
#include "log.h"
#include "net.h"
#include "sdnotify.h"

#define WORKER_THREADS 8

void
vmf_daemon_opts_defaults(struct vmf_daemon_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->socket_path = VMF_DEFAULT_SOCKET;
	o->state_dir = VMF_DEFAULT_STATE_DIR;
	o->run_dir = VMF_DEFAULT_RUN_DIR;
	o->image_dir = VMF_DEFAULT_IMAGE_DIR;
	o->pool_size = 8;
	o->vcpus = VMF_DEFAULT_VCPUS;
	o->memory_mib = VMF_DEFAULT_MEMORY_MIB;
	o->max_vcpus = VMF_DEFAULT_MAX_VCPUS;
	o->max_memory_mib = VMF_DEFAULT_MAX_MEMORY_MIB;
	o->share_memory = true;
	o->nic = true;
	o->max_miss_clones = VMF_DEFAULT_MAX_MISS_CLONES;
	o->max_queue = VMF_DEFAULT_MAX_QUEUE;
	o->tenant_max_queued = VMF_DEFAULT_TENANT_MAX_QUEUED;
	o->get_timeout_s = VMF_DEFAULT_GETVM_TIMEOUT_MS / 1000;
	/* On: it only acts once requests above a pool's base come, and then
	 * within shape_max and shape_memory_mib, off the hand-out path. */
	o->shape = true;
	o->shape_max = VMF_SHAPE_AUTO;
	o->shape_memory_mib = VMF_SHAPE_AUTO;
	o->stop = "flush";
	o->stop_timeout_s = VMF_DEFAULT_STOP_TIMEOUT_S;
	o->on_guest_reset = "stop";
	o->ready_fd = -1;
	o->idle_timeout_s = VMF_DEFAULT_IDLE_TIMEOUT_S;
	o->frame_timeout_s = VMF_DEFAULT_FRAME_TIMEOUT_S;
	o->serial_log_kib = VMF_DEFAULT_SERIAL_LOG_KIB;
	o->scratch_max_mib = VMF_DEFAULT_SCRATCH_MAX_MIB;
	o->scratch_max_volumes = VMF_DEFAULT_SCRATCH_MAX_VOLUMES;
	o->tenant_max_vms = VMF_DEFAULT_TENANT_MAX_VMS;
	o->tenant_max_suspended = VMF_DEFAULT_TENANT_MAX_SUSPENDED;
	o->tenant_max_suspended_mib = VMF_DEFAULT_TENANT_MAX_SUSPENDED_MIB;
	o->tenant_max_snapshots = VMF_DEFAULT_TENANT_MAX_SNAPSHOTS;
	o->tenant_max_snapshot_mib = VMF_DEFAULT_TENANT_MAX_SNAPSHOT_MIB;
	o->share_max_mib = VMF_DEFAULT_SHARE_MAX_MIB;
	o->hostfwd_addresses = VMF_DEFAULT_HOSTFWD_ADDRESSES;
	o->max_hostfwd = VMF_DEFAULT_MAX_HOSTFWD;
}

/* ---- readiness pipe to `vmfactory init` ---- */

/* On the loop only: the loop owns ready_fd and closes it. */
void
vmf_daemon_notify(struct vmf_daemon *d, const char *line)
{
	if (d->ready_fd < 0)
		return;
	if (vmf_write_full(d->ready_fd, line, strlen(line), vmf_now_ms() + 1000, NULL) < 0) {
		close(d->ready_fd);
		d->ready_fd = -1;
	}
}

struct progress {
	struct vmf_daemon *d;
	int n;
	char buf[600];
};

static void
progress_on_loop(void *arg)
{
	struct progress *m = arg;
	const char *b = m->buf;
	int skip = strncmp(b, "progress: ", 10) ? 0 : 10;
	vmf_daemon_notify(m->d, b);
	vmf_sd_notify("STATUS=%.*s", m->n - skip, b + skip);
	free(m);
}

void
vmf_daemon_progress(struct vmf_daemon *d, const char *fmt, ...)
{
	struct progress *m = calloc(1, sizeof(*m));
	if (!m)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(m->buf, sizeof(m->buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0) {
		free(m);
		return;
	}
	if ((size_t)n > sizeof(m->buf) - 2)
		n = sizeof(m->buf) - 2;
	m->buf[n] = '\n';
	m->buf[n + 1] = '\0';
	m->n = n;
	m->d = d;
	log_info("%.*s", n, m->buf);
	/* Through the jobs' completion list: a line posted by a build job
	 * reaches the pipe before that job's done callback runs. */
	if (!d->cache.jobs || vmf_jobs_post(d->cache.jobs, progress_on_loop, m) < 0)
		free(m);
}

/* Ready once the socket answers (this runs after listen) and every
 * pool's template is built: to `vmfactory init` on ready_fd, and to
 * systemd (READY=1) for Type=notify. */
void
vmf_daemon_check_readiness(struct vmf_daemon *d)
{
	if (d->ready_fd < 0 && d->sd_full_sent)
		return;
	bool tpl_ready = true, full = true;
	unsigned npools = 0;
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link) {
		tpl_ready = tpl_ready && p->tpl;
		full = full && p->tpl && p->ready >= p->target;
		npools++;
	}
	if (tpl_ready && !d->sd_ready_sent && d->listener) {
		d->sd_ready_sent = true;
		vmf_sd_notify("READY=1\nSTATUS=ready on %s: %u pool%s, templates built, filling", d->opts.socket_path,
			      npools, npools == 1 ? "" : "s");
	}
	if (full && d->sd_ready_sent && !d->sd_full_sent) {
		d->sd_full_sent = true;
		vmf_sd_notify("STATUS=ready on %s: %u pool%s full", d->opts.socket_path, npools, npools == 1 ? "" : "s");
	}
	if (d->ready_fd < 0)
		return;
	if (tpl_ready && !d->ready_sent) {
		d->ready_sent = true;
		vmf_daemon_notify(d, "ready\n");
	}
	if (d->ready_sent && (full || !d->opts.notify_full)) {
		if (full)
			vmf_daemon_notify(d, "full\n");
		close(d->ready_fd);
		d->ready_fd = -1;
	}
}


static void
drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_daemon *d = arg;
	log_warn("shutdown: work still in flight after %d s; exiting without waiting for it",
		 (VMF_DEFAULT_GETVM_TIMEOUT_MS + VMF_STOP_TIMEOUT_MS) / 1000);
	event_base_loopexit(d->cache.base, NULL);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	struct vmf_daemon *d = arg;
	if (d->draining) {
		log_warn("signal %d again: exiting now, without waiting for the work in flight", (int)sig);
		event_base_loopexit(d->cache.base, NULL);
		return;
	}
	/* Pooled and assigned VMs keep running: a restarted daemon adopts
	 * them.  Work in flight finishes first: a GetVM whose VM is recorded
	 * assigned must reach its client, and a VM being stopped must stop.
	 * Bounded by a GetVM's default timeout plus a stop's, the guest's
	 * part (the longest stop_timeout) included. */
	log_info("signal %d: finishing the work in flight, then exiting; VMs keep running for the next daemon",
		 (int)sig);
	vmf_sd_notify("STOPPING=1\nSTATUS=stopping on signal %d; VMs keep running", (int)sig);
	d->cache.stopping = true;
	d->draining = true;
	unsigned guest_ms = d->cache.stop_default.timeout_ms;
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		guest_ms = p->stop.timeout_ms > guest_ms ? p->stop.timeout_ms : guest_ms;
	struct timeval tv = { (VMF_DEFAULT_GETVM_TIMEOUT_MS + VMF_STOP_TIMEOUT_MS + guest_ms) / 1000, 0 };
	d->drain_timer = evtimer_new(d->cache.base, drain_timeout_cb, d);
	if (!d->drain_timer || evtimer_add(d->drain_timer, &tv) < 0) {
		log_warn("shutdown: cannot arm the shutdown deadline; exiting now");
		event_base_loopexit(d->cache.base, NULL);
		return;
	}
	vmf_daemon_settle(d);
}

/* ---- loop plumbing ---- */

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_daemon *d = arg;
	vmf_cache_tick(&d->cache, d->opts.max_idle_s);
	/* Also a backstop for a destroy or shutdown waiting on a job whose
	 * done callback does not settle. */
	vmf_daemon_settle(d);
}

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
						WORKER_THREADS - 1);
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
	p->target = size;
	p->parallelism = o->fill_parallelism ? o->fill_parallelism : 2;
	p->max_parallelism = vmf_pool_clone_cap(o->clone_parallelism, d->host_cpus, d->host_mem_mib,
						p->spec->memory_mib, WORKER_THREADS - 1);
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
	ps->net_user = o->net_user;
	ps->shape = o->shape;
	ps->shape_max = o->shape_max;
	ps->shape_memory_mib = o->shape_memory_mib;
	ps->stop = o->stop;
	ps->stop_timeout_s = o->stop_timeout_s;
	ps->on_guest_reset = o->on_guest_reset;
	ps->cgroup = o->cgroup;
}

static int
setup_pools(struct vmf_daemon *d, struct vmf_error *err)
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

static int
validate_opts(const struct vmf_daemon_opts *o, struct vmf_error *err)
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
	if (o->runas && *o->runas) {
		if (!getpwnam(o->runas))
			return vmf_err(err, ENOENT, "runas user %s does not exist", o->runas);
		if (geteuid() != 0)
			return vmf_err(err, EPERM, "runas %s: only a daemon running as root can start QEMU as "
				       "another user", o->runas);
	}
	const char *dirs[] = { o->state_dir, o->run_dir, o->socket_path };
	for (int i = 0; i < 3; i++)
		if (!dirs[i] || dirs[i][0] != '/')
			return vmf_err(err, EINVAL, "%s must be an absolute path", dirs[i] ? dirs[i] : "(null)");
	/* Unix socket paths hold 107 bytes: <run>/vms/<uuid>/agent.sock must fit. */
	size_t run_max = vmf_config_daemon_max_len("run_dir"), sock_max = vmf_config_daemon_max_len("socket");
	size_t state_max = vmf_config_daemon_max_len("state_dir");
	if (strlen(o->run_dir) > run_max)
		return vmf_err(err, ENAMETOOLONG, "run dir %s is longer than %zu characters; VM socket paths "
			       "below it would not fit a unix socket address", o->run_dir, run_max);
	if (strlen(o->socket_path) > sock_max)
		return vmf_err(err, ENAMETOOLONG, "socket path %s is longer than %zu characters", o->socket_path,
			       sock_max);
	if (strlen(o->state_dir) > state_max)
		return vmf_err(err, ENAMETOOLONG, "state dir %s is longer than %zu characters", o->state_dir,
			       state_max);
	struct vmf_sandbox_policy *sp = malloc(sizeof(*sp));
	if (!sp)
		return vmf_err(err, ENOMEM, "out of memory");
	int r = vmf_sandbox_policy_init(sp, o->sandbox_roots, o->state_dir, o->run_dir, err);
	free(sp);
	return r;
}

/* The default root <run_dir>/sandboxes: group members create their own
 * sandbox dirs in it (sticky, like /tmp, so none removes another's). */
static int
make_default_sandbox_root(struct vmf_daemon *d, struct vmf_error *err)
{
	if (d->opts.sandbox_roots && *d->opts.sandbox_roots)
		return 0;
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/sandboxes", d->opts.run_dir);
	if (mkdir(dir, 0700) < 0) {
		if (errno == EEXIST)
			return 0;   /* the operator's, as it is */
		return vmf_err_sys(err, errno, "cannot create the sandbox root %s", dir);
	}
	if (d->have_group && (chown(dir, (uid_t)-1, d->group) < 0 || chmod(dir, 01770) < 0))
		return vmf_err_sys(err, errno, "cannot give the sandbox root %s to group %u", dir, (unsigned)d->group);
	return 0;
}

/* ---- what the cache tells the daemon (cache/cache.h) ---- */

static void
cache_settle(void *ctx)
{
	vmf_daemon_settle(ctx);
}

static void
cache_readiness(void *ctx)
{
	vmf_daemon_check_readiness(ctx);
}

static void
cache_build_failed(void *ctx, const char *msg)
{
	struct vmf_daemon *d = ctx;
	if (d->ready_fd >= 0 && !d->ready_sent) {
		/* `init` is waiting: fail it now rather than retry unseen. */
		char line[VMF_ERROR_MSG_MAX + 16];
		snprintf(line, sizeof(line), "error: %s\n", msg);
		vmf_daemon_notify(d, line);
		d->exit_code = 1;
		d->cache.stopping = true;
		event_base_loopexit(d->cache.base, NULL);
	}
}

static void
cache_progress(void *ctx, const char *line)
{
	struct vmf_daemon *d = ctx;
	vmf_daemon_progress(d, "progress: %s (%.1f s)", line, (double)(vmf_now_ms() - d->start_ms) / 1000.0);
}

/* On a worker: sandbox is read-only once running. */
static void
cache_remove_links(void *ctx, const struct vmf_vm *vm)
{
	struct vmf_daemon *d = ctx;
	/* Confined as when it was made, in the owner's directories: a link
	 * outside today's roots is left, not followed there. */
	struct vmf_error lerr = {0};
	if (vmf_sandbox_unlink_if_points_to(&d->sandbox, vm->share_link, vm->share_dir, vm->owner_uid, &lerr) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "%s", lerr.msg);
	if (vmf_sandbox_unlink_if_points_to(&d->sandbox, vm->sock_link, vm->run_dir, vm->owner_uid, &lerr) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "%s", lerr.msg);
}

/* On a worker: a kept VM's agent socket, made again at its guest's reset,
 * is its owner's as the first one was. */
static int
cache_regrant(void *ctx, const struct vmf_vm *vm, struct vmf_error *err)
{
	struct vmf_daemon *d = ctx;
	if (vmf_daemon_peer_admin(d, vm->owner_uid))
		return 0;
	const char *const socks[] = { vm->ops->agent_socket };
	return vmf_sandbox_grant(vm->run_dir, socks, 1, vm->share_link[0] ? vm->share_dir : NULL, vm->owner_uid,
				 d->runas_uid, err);
}

/* On a worker, the VM's VMM stopped: nothing of its network is left. */
static void
cache_undo_net(void *ctx, const struct vmf_vm *vm)
{
	(void)ctx;
	if (strcmp(vm->net, "netns") != 0)
		return;
	struct vmf_error nerr = {0};
	if (vmf_netns_undo(vm->netns, vm->netns_dev, vm->netns_ino, vm->netns_link, vm->tap, &nerr) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "undoing its network in %s: %s", vm->netns, nerr.msg);
}

/* The StopReport of a reply (strings borrowed from rep). */
void
vmf_stop_report_fill(const struct vmf_stop_report *rep, Vmf__Control__StopReport *sr, char **lost)
{
	vmf__control__stop_report__init(sr);
	sr->method = (char *)rep->method;
	for (unsigned i = 0; i < rep->n_lost; i++)
		lost[i] = (char *)rep->lost[i];
	sr->lost_writes = lost;
	sr->n_lost_writes = rep->n_lost;
	sr->guest_ms = rep->guest_ms;
	sr->forced = rep->forced;
}

/* reply_to is the Release's connection, if any. */
static void
cache_stopped(void *ctx, struct vmf_vm *vm, void *reply_to, const struct vmf_stop_report *rep, int err)
{
	struct vmf_daemon *d = ctx;
	/* A destroy's reply names every disk that may have lost writes. */
	for (unsigned i = 0; d->cache.destroying && i < rep->n_lost && d->n_destroy_lost < VMF_DESTROY_LOST_MAX; i++) {
		char *l = NULL;
		if (asprintf(&l, "%s %s", vm->id, rep->lost[i]) >= 0)
			d->destroy_lost[d->n_destroy_lost++] = l;
	}
	if (err) {
		if (reply_to)
			vmf_control_reply_error(reply_to, err, "out of memory; the VM was stopped");
		return;
	}
	if (d->cache.destroying)
		d->destroyed++;
	if (reply_to) {
		Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
		Vmf__Control__ReleaseReply rr = VMF__CONTROL__RELEASE_REPLY__INIT;
		Vmf__Control__StopReport sr;
		char *lost[VMF_STOP_LOST_MAX];
		rr.vm_id = vm->id;
		if (rep->method[0]) {
			vmf_stop_report_fill(rep, &sr, lost);
			rr.stop = &sr;
		}
		rr.exit = vm->exit;
		r.body_case = VMF__CONTROL__REPLY__BODY_RELEASE;
		r.release = &rr;
		vmf_control_reply(reply_to, &r);
	}
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

struct vmf_daemon *
vmf_daemon_new(const struct vmf_daemon_opts *opts, struct vmf_error *err)
{
	struct vmf_daemon *d = calloc(1, sizeof(*d));
	if (!d) {
		vmf_err(err, ENOMEM, "out of memory");
		return NULL;
	}
	d->opts = *opts;
	d->ready_fd = opts->ready_fd;
	d->lock_fd = -1;
	d->start_ms = vmf_now_ms();
	TAILQ_INIT(&d->cache.pools);
	TAILQ_INIT(&d->cache.vms);
	TAILQ_INIT(&d->snaps);
	d->cache.log_keep_bytes = (uint64_t)opts->serial_log_kib << 10;
	snprintf(d->cache.vm_root, sizeof(d->cache.vm_root), "%s/vms", opts->run_dir);
	d->cache.state_dir = d->opts.state_dir;
	d->cache.run_dir = d->opts.run_dir;
	d->cache.hooks = (struct vmf_cache_hooks){
		.ctx = d, .settle = cache_settle, .readiness = cache_readiness, .build_failed = cache_build_failed,
		.progress = cache_progress, .remove_links = cache_remove_links,
		.undo_net = cache_undo_net, .stopped = cache_stopped, .regrant = cache_regrant,
	};
	return d;
}

void
vmf_daemon_free(struct vmf_daemon *d)
{
	for (size_t i = 0; i < d->n_destroy_lost; i++)
		free(d->destroy_lost[i]);
	if (d->cache.jobs)
		vmf_jobs_free(d->cache.jobs);
	vmf_control_close(d);
	vmf_metrics_close(d);
	struct vmf_vm *vm;
	while ((vm = TAILQ_FIRST(&d->cache.vms)))
		vmf_cache_vm_free(&d->cache, vm);
	struct vmf_pool *p;
	while ((p = TAILQ_FIRST(&d->cache.pools))) {
		TAILQ_REMOVE(&d->cache.pools, p, link);
		vmf_daemon_pool_free(p);
	}
	vmf_snaps_free(d);
	if (d->tick)
		event_free(d->tick);
	if (d->drain_timer)
		event_free(d->drain_timer);
	if (d->sig_term)
		event_free(d->sig_term);
	if (d->sig_int)
		event_free(d->sig_int);
	if (d->cache.base)
		event_base_free(d->cache.base);
	if (d->cache.cat)
		vmf_catalog_close(d->cache.cat);
	if (d->ready_fd >= 0)
		close(d->ready_fd);
	if (d->lock_fd > 0)
		close(d->lock_fd);
}

int
vmf_daemon_run(const struct vmf_daemon_opts *opts, struct vmf_error *err)
{
	int r = validate_opts(opts, err);
	if (r < 0)
		return r;
	pid_t other = vmf_control_probe_peer(opts->socket_path);
	if (other != 0)
		return vmf_err(err, EEXIST, "a vmfactory daemon (pid %d) is already running on %s", (int)other,
			       opts->socket_path);

	vmf_sd_notify_init();
	/* Before recovery adopts VMs, each holding descriptors. */
	vmf_control_raise_fd_limit();
	struct vmf_daemon *d = vmf_daemon_new(opts, err);
	if (!d)
		return -err->code;
	signal(SIGPIPE, SIG_IGN);
	/* A lease on a caller's disk image (disk.c) signals its holder when
	 * someone opens the file meanwhile; the open just waits for the
	 * lease's end, and the signal's default would end the daemon. */
	signal(SIGIO, SIG_IGN);
	if ((r = vmf_sandbox_policy_init(&d->sandbox, opts->sandbox_roots, opts->state_dir, opts->run_dir, err)) < 0)
		goto out;

	/* Run dir and vms/ 0711: a VM's owner reaches its sockets through
	 * them (its own VM dir grants it that, by ACL) without listing them. */
	if ((r = vmf_mkdir_p(opts->state_dir, 0700, err)) < 0 || (r = vmf_mkdir_p(opts->run_dir, 0711, err)) < 0 ||
	    (r = vmf_mkdir_p(d->cache.vm_root, 0711, err)) < 0)
		goto out;
	if (chmod(d->cache.vm_root, 0711) < 0) {
		r = vmf_err_sys(err, errno, "cannot make %s searchable", d->cache.vm_root);
		goto out;
	}
	/* One daemon per state dir, even when two start at the same instant;
	 * template gc/rm/build take the same lock (factory/cli/templates.c). */
	if ((d->lock_fd = r = vmf_lock_state_dir(opts->state_dir, err)) < 0)
		goto out;
	if (opts->group) {
		struct group *g = getgrnam(opts->group);
		if (!g) {
			r = vmf_err(err, ENOENT, "group %s does not exist", opts->group);
			goto out;
		}
		d->group = g->gr_gid;
		d->have_group = true;
	}
	d->runas_uid = (uid_t)-1;
	if (opts->runas && *opts->runas) {
		struct passwd *pw = getpwnam(opts->runas);
		if (pw)
			d->runas_uid = pw->pw_uid;
	}
	if ((r = make_default_sandbox_root(d, err)) < 0)
		goto out;
	struct stat rst;
	if (d->have_group && stat(opts->run_dir, &rst) == 0 && !(rst.st_mode & S_IXOTH))
		log_warn("run dir %s is not searchable by others (mode %04o): clients of group %s will not reach "
			 "their VMs' sockets; make it 0711", opts->run_dir, (unsigned)(rst.st_mode & 07777), opts->group);
	d->ops = vmf_hv_by_name(opts->hypervisor ? opts->hypervisor : "qemu");
	if (!d->ops) {
		r = vmf_err(err, EINVAL, "unknown hypervisor %s", opts->hypervisor);
		goto out;
	}
	/* The daemon's image, unless every pool has its own: then the first
	 * pool's stands in for the probe, and a missing default image does
	 * not stop a daemon that does not use it. */
	bool own = opts->n_pools > 0;
	for (unsigned i = 0; i < opts->n_pools; i++)
		own = own && opts->pools[i].image_dir;
	if (own)
		r = vmf_image_load(opts->pools[0].image_dir, NULL, NULL, &d->img, err);
	else
		r = vmf_image_load(opts->image_dir, opts->kernel, opts->initrd, &d->img, err);
	if (r < 0) {
		if (own)
			vmf_error_prefix(err, "pool %s", opts->pools[0].name);
		goto out;
	}
	if ((r = d->ops->probe(opts->qemu_binary, d->img.kernel, &d->hv, err)) < 0)
		goto out;
	if (opts->accel && *opts->accel)
		snprintf(d->hv.accel, sizeof(d->hv.accel), "%s", opts->accel);
	/* Only root mounts a clone's share; elsewhere shares are plain
	 * directories, which GetVM gives to no tenant. */
	if (d->hv.caps & VMF_CAP_SHARE_DEVICE)
		d->share_mib = geteuid() == 0 ? opts->share_max_mib : 0;
	if ((d->hv.caps & VMF_CAP_SHARE_DEVICE) && opts->share_max_mib && geteuid() != 0)
		log_warn("not running as root: VM shares are plain directories, not tmpfs mounts of %u MiB, so "
			 "GetVM gives a share to root and uid %u only", opts->share_max_mib, (unsigned)geteuid());
	if ((r = vmf_catalog_open(opts->state_dir, &d->cache.cat, err)) < 0 ||
	    (r = vmf_catalog_open_runtime(d->cache.cat, opts->run_dir, err)) < 0)
		goto out;
	if ((r = vmf_template_cleanup(d->cache.cat, opts->state_dir, err)) < 0)
		log_warn("%s", err->msg);
	/* Read once: a pool made later (a snapshot's) is made on the loop. */
	d->host_cpus = vmf_host_cpus();
	d->host_mem_mib = vmf_host_mem_available_mib();
	d->cache.max_queue = opts->max_queue;
	if ((r = setup_pools(d, err)) < 0 || (r = vmf_snaps_load(d, err)) < 0)
		goto out;

	evthread_use_pthreads();
	vmf_log_route_libevent();
	d->cache.base = event_base_new();
	/* Pool work may take WORKER_THREADS - 1 workers; misses have one each
	 * besides, and one more stays for hand-outs of ready VMs, releases and
	 * inspects: none of these waits for a clone. */
	unsigned reserve = 1 + opts->max_miss_clones;
	d->cache.jobs = d->cache.base ? vmf_jobs_new(d->cache.base, WORKER_THREADS + opts->max_miss_clones, reserve) : NULL;
	if (!d->cache.jobs) {
		r = vmf_err(err, ENOMEM, "cannot set up the event loop");
		goto out;
	}
	d->sig_term = evsignal_new(d->cache.base, SIGTERM, signal_cb, d);
	d->sig_int = evsignal_new(d->cache.base, SIGINT, signal_cb, d);
	d->tick = event_new(d->cache.base, -1, EV_PERSIST, tick_cb, d);
	struct timeval sec = { 1, 0 };
	if (!d->sig_term || !d->sig_int || !d->tick || event_add(d->sig_term, NULL) || event_add(d->sig_int, NULL) ||
	    event_add(d->tick, &sec)) {
		r = vmf_err(err, ENOMEM, "cannot set up the event loop");
		goto out;
	}

	if ((r = vmf_recovery_run(d, err)) < 0)
		goto out;
	if ((r = vmf_control_listen(d, err)) < 0)
		goto out;
	if (opts->metrics_listen && *opts->metrics_listen &&
	    (r = vmf_metrics_listen(d, opts->metrics_listen, err)) < 0)
		goto out;
	log_info("listening on %s (pid %d, %s %s, accel %s)", opts->socket_path, (int)getpid(), d->ops->name,
		 d->hv.version, d->hv.accel);
	vmf_cache_refill(&d->cache);
	vmf_daemon_check_readiness(d);
	event_base_dispatch(d->cache.base);
	r = d->exit_code ? vmf_err(err, EIO, "%s", TAILQ_FIRST(&d->cache.pools)->last_error) : 0;
out:
	/* Jobs still running complete in daemon_free (vmf_jobs_free), with no
	 * loop to reply on or workers to run more jobs: see loop_done. */
	d->cache.stopping = true;
	d->cache.loop_done = true;
	if (r < 0 && err)
		vmf_sd_notify("STATUS=failed: %s\nERRNO=%d", err->msg, err->code);
	vmf_daemon_free(d);
	/* After destroy nothing of ours stays in the run dir (rmdir: only when
	 * empty, assigned VMs kept by a plain destroy keep theirs). */
	if (d->destroy_done && rmdir(d->cache.vm_root) == 0) {
		/* No VM dir left: no VM record either (the catalog is closed). */
		char rt[PATH_MAX + 16];
		struct vmf_error ignored;
		snprintf(rt, sizeof(rt), "%s/%s", opts->run_dir, VMF_CATALOG_RUNTIME_NAME);
		vmf_rm_rf(rt, &ignored);
		rmdir(opts->run_dir);
	}
	free(d);
	return r;
}
