/* The daemon: start-up (its options checked), the loop (signals, the
 * one-second tick) and readiness (`vmfactory init`'s pipe, systemd).  The
 * rest lives one role per file: see docs/architecture.md. */
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

#include "agent.h"
#include "catalog.h"
#include "config.h"
#include "control.h"
#include "daemon.h"
#include "factory.h"
#include "frame.h"
#include "leases.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "pools.h"
#include "recovery.h"
#include "request.h"
#include "sdnotify.h"
#include "snapindex.h"
#include "suspendjob.h"
#include "vminfo.h"

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

/* A lease's suspend that failed leaves the VM running: its lease becomes
 * a release, for the next tick, rather than let it run on. */
static void
lease_suspended(struct vmf_daemon *d, struct vmf_vm *vm, const struct vmf_suspend_result *res, void *arg)
{
	(void)arg;
	if (res->rc < 0 && vm->state == VMF_VM_ASSIGNED && vm->lease_deadline_ns) {
		d->errors++;
		log_vm(VMF_LOG_WARN, vm->id, "its lease ran out and it could not be suspended (%s): releasing it",
		       res->err.msg);
		vm->lease_suspend = false;
	}
}

/* VMs whose lease ran out (leases.c): released, or suspended as the lease
 * says, through the same jobs a request starts; a VM a job holds is looked
 * at again on the next tick.  A daemon stopping starts nothing: the next
 * one finds the lease in the record, run out, and ends the VM at its
 * start. */
static void
expire_leases(struct vmf_daemon *d)
{
	if (d->cache.stopping || d->draining)
		return;
	int64_t now = vmf_realtime_ns();
	struct vmf_vm *vm, *next;
	for (vm = TAILQ_FIRST(&d->cache.vms); vm; vm = next) {
		next = TAILQ_NEXT(vm, link);
		if (!vmf_lease_due(vm, now))
			continue;
		if (vm->lease_suspend && vm->state == VMF_VM_ASSIGNED && !vm->dead) {
			struct vmf_error err = {0};
			if (vmf_suspend_check(d, vm, false, vm->owner_uid, &err) == 0) {
				log_vm(VMF_LOG_INFO, vm->id, "its lease ran out: suspending it (sandbox %s)", vm->sandbox_id);
				vmf_suspend_job_start(d, vm, false, vm->owner_uid, vmf_daemon_peer_admin(d, vm->owner_uid), NULL,
						      lease_suspended, NULL);
				continue;
			}
			log_vm(VMF_LOG_WARN, vm->id, "its lease ran out but it cannot be suspended (%s): releasing it",
			       err.msg);
		}
		log_vm(VMF_LOG_INFO, vm->id, "its lease ran out: releasing it (sandbox %s)", vm->sandbox_id);
		vmf_cache_destroy_vm(&d->cache, vm, true, NULL);
	}
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_daemon *d = arg;
	vmf_cache_tick(&d->cache, d->opts.max_idle_s);
	expire_leases(d);
	/* Also a backstop for a destroy or shutdown waiting on a job whose
	 * done callback does not settle. */
	vmf_daemon_settle(d);
}

static int
validate_opts(const struct vmf_daemon_opts *o, struct vmf_error *err)
{
	int rv = vmf_pools_validate(o, err);
	if (rv < 0)
		return rv;
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
			vmf_request_fail(reply_to, err, "out of memory; the VM was stopped");
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
		vmf_request_reply(reply_to, &r);
	}
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
	if ((r = d->ops->probe(opts->qemu_binary, d->img.kernel, opts->state_dir, &d->hv, err)) < 0)
		goto out;
	if (opts->accel && *opts->accel) {
		snprintf(d->hv.accel, sizeof(d->hv.accel), "%s", opts->accel);
		snprintf(d->hv.accel_why, sizeof(d->hv.accel_why), "configured (accelerator = %s)", opts->accel);
		d->hv.accel_cached = false;
	}
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
	if ((r = vmf_pools_setup(d, err)) < 0 || (r = vmf_snaps_load(d, err)) < 0)
		goto out;

	evthread_use_pthreads();
	vmf_log_route_libevent();
	d->cache.base = event_base_new();
	/* Pool work may take VMF_WORKER_THREADS - 1 workers; misses have one each
	 * besides, and one more stays for hand-outs of ready VMs, releases and
	 * inspects: none of these waits for a clone. */
	unsigned reserve = 1 + opts->max_miss_clones;
	d->cache.jobs = d->cache.base ? vmf_jobs_new(d->cache.base, VMF_WORKER_THREADS + opts->max_miss_clones, reserve) : NULL;
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
