/* The daemon: start-up and recovery, pools and their filling, VM lifecycle
 * on the loop, status, destroy.  Control socket in control.c, hand-out in
 * getvm.c. */
#include <dirent.h>
#include <errno.h>
#include <pwd.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog.h"
#include "factory.h"
#include "frame.h"
#include "agent.h"
#include "log.h"
#include "sdnotify.h"

#define VM_SCHEMA_VERSION 1
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
	o->max_miss_clones = VMF_DEFAULT_MAX_MISS_CLONES;
	o->ready_fd = -1;
	o->idle_timeout_s = VMF_DEFAULT_IDLE_TIMEOUT_S;
	o->frame_timeout_s = VMF_DEFAULT_FRAME_TIMEOUT_S;
}

/* ---- readiness pipe to `vmfactory init` ---- */

/* On the loop only: the loop owns ready_fd and closes it. */
static void
notify(struct vmf_daemon *d, const char *line)
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
	notify(m->d, b);
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
	if (!d->jobs || vmf_jobs_post(d->jobs, progress_on_loop, m) < 0)
		free(m);
}

/* Ready once the socket answers (this runs after listen) and every
 * pool's template is built: to `vmfactory init` on ready_fd, and to
 * systemd (READY=1) for Type=notify. */
static void
check_readiness(struct vmf_daemon *d)
{
	if (d->ready_fd < 0 && d->sd_full_sent)
		return;
	bool tpl_ready = true, full = true;
	unsigned npools = 0;
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->pools, link) {
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
		notify(d, "ready\n");
	}
	if (d->ready_sent && (full || !d->opts.notify_full)) {
		if (full)
			notify(d, "full\n");
		close(d->ready_fd);
		d->ready_fd = -1;
	}
}

/* ---- VM records ---- */

struct vmf_vm *
vmf_daemon_find_vm(struct vmf_daemon *d, const char *id)
{
	struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->vms, link)
		if (strcmp(vm->id, id) == 0)
			return vm;
	return NULL;
}

static Vmf__Catalog__VmState
record_state(enum vmf_vm_state s)
{
	switch (s) {
	case VMF_VM_CREATING: return VMF__CATALOG__VM_STATE__VM_CREATING;
	case VMF_VM_READY: return VMF__CATALOG__VM_STATE__VM_READY;
	case VMF_VM_HANDING_OUT: return VMF__CATALOG__VM_STATE__VM_HANDING_OUT;
	case VMF_VM_ASSIGNED: return VMF__CATALOG__VM_STATE__VM_ASSIGNED;
	case VMF_VM_RELEASING: return VMF__CATALOG__VM_STATE__VM_RELEASING;
	case VMF_VM_GONE: return VMF__CATALOG__VM_STATE__VM_GONE;
	}
	return VMF__CATALOG__VM_STATE__VM_GONE;
}

void
vmf_daemon_record_vm(struct vmf_daemon *d, struct vmf_vm *vm)
{
	struct vmf_error err = {0};
	if (vmf_daemon_put_vm_record(d, vm, vm->state, &err) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", err.msg);
}

int
vmf_daemon_put_vm_record(struct vmf_daemon *d, struct vmf_vm *vm, enum vmf_vm_state state,
			 struct vmf_error *err)
{
	Vmf__Catalog__VmRecord rec = VMF__CATALOG__VM_RECORD__INIT;
	vmf_hv_state *hv = NULL;
	struct vmf_error serr = {0};
	if (vm->hv && vm->ops->serialize(vm->hv, &hv, &serr) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "cannot serialize its hypervisor state: %s", serr.msg);
	rec.schema_version = VM_SCHEMA_VERSION;
	rec.id = vm->id;
	rec.template_id = vm->template_id;
	rec.state = record_state(state);
	rec.hv = hv;
	rec.sandbox_id = vm->sandbox_id;
	rec.share_link = vm->share_link;
	rec.sock_link = vm->sock_link;
	rec.run_dir = vm->run_dir;
	rec.share_dir = vm->share_dir;
	rec.vcpus = vm->vcpus;
	rec.memory_mib = vm->memory_mib;
	rec.created_ns = vm->created_ns;
	rec.assigned_ns = vm->assigned_ns;
	rec.ready_ns = vm->ready_ns;
	rec.owner_uid = (uint32_t)vm->owner_uid;
	int r = vmf_catalog_vm_put(d->cat, &rec, err);
	if (hv)
		vmf__hv__hypervisor_state__free_unpacked(hv, NULL);
	return r;
}

void
vmf_daemon_vm_free(struct vmf_daemon *d, struct vmf_vm *vm)
{
	TAILQ_REMOVE(&d->vms, vm, link);
	if (vm->watch)
		event_free(vm->watch);
	vmf_agent_free(vm->agent);
	if (vm->hv)
		vm->ops->release(vm->hv);
	free(vm);
}

/* ---- stopping a VM ---- */

struct stop_job {
	struct vmf_daemon *d;
	struct vmf_vm *vm;
	bool remove_links;
	struct vmf_conn *reply_to;
};

static void
stop_work(void *arg)
{
	struct stop_job *j = arg;
	struct vmf_vm *vm = j->vm;
	struct vmf_error err = {0};
	/* Recorded before acting: a daemon that dies mid-release finishes the
	 * job when it restarts.  Written here, not on the event loop, whose
	 * every client would otherwise wait out the fsync. */
	if (vmf_daemon_put_vm_record(j->d, vm, VMF_VM_RELEASING, &err) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", err.msg);
	if (vm->hv && vm->ops->stop(vm->hv, VMF_STOP_TIMEOUT_MS, &err) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "stopping: %s", err.msg);
	VMF_FAULT("mid-release");
	if (j->remove_links) {
		/* Confined as when it was made, in the owner's directories: a
		 * link outside today's roots is left, not followed there. */
		struct vmf_error lerr = {0};
		if (vmf_sandbox_unlink_if_points_to(&j->d->sandbox, vm->share_link, vm->share_dir, vm->owner_uid,
						    &lerr) < 0)
			log_vm(VMF_LOG_WARN, vm->id, "%s", lerr.msg);
		if (vmf_sandbox_unlink_if_points_to(&j->d->sandbox, vm->sock_link, vm->run_dir, vm->owner_uid,
						    &lerr) < 0)
			log_vm(VMF_LOG_WARN, vm->id, "%s", lerr.msg);
	}
	if (vm->run_dir[0] && vmf_rm_rf(vm->run_dir, &err) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "removing its run dir: %s", err.msg);
	if (vmf_catalog_vm_delete(j->d->cat, vm->id, &err) < 0 && err.code != ENOENT)
		log_vm(VMF_LOG_WARN, vm->id, "removing its record: %s", err.msg);
}

static void
stop_done(void *arg)
{
	struct stop_job *j = arg;
	struct vmf_daemon *d = j->d;
	log_vm(VMF_LOG_DEBUG, j->vm->id, "stopped and removed");
	if (d->destroying)
		d->destroyed++;
	if (j->reply_to) {
		Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
		Vmf__Control__ReleaseReply rr = VMF__CONTROL__RELEASE_REPLY__INIT;
		rr.vm_id = j->vm->id;
		r.body_case = VMF__CONTROL__REPLY__BODY_RELEASE;
		r.release = &rr;
		vmf_control_reply(j->reply_to, &r);
	}
	vmf_daemon_vm_free(d, j->vm);
	free(j);
	vmf_daemon_settle(d);
}

void
vmf_daemon_destroy_vm(struct vmf_daemon *d, struct vmf_vm *vm, bool remove_links, struct vmf_conn *reply_to)
{
	if (vm->state == VMF_VM_READY && vm->pool && vm->pool->ready)
		vm->pool->ready--;
	vm->state = VMF_VM_RELEASING;   /* recorded by stop_work */
	vm->busy = true;
	if (vm->watch)
		event_del(vm->watch);
	struct stop_job *j = calloc(1, sizeof(*j));
	if (j) {
		j->d = d;
		j->vm = vm;
		j->remove_links = remove_links;
		j->reply_to = reply_to;
	}
	/* A client waits for a release or a destroy; replacing a pooled VM is
	 * pool work.  Inline when out of memory, or once the loop has ended
	 * (the workers are gone): rather than leak a QEMU. */
	enum vmf_job_class cls = reply_to || d->stopping ? VMF_JOB_INTERACTIVE : VMF_JOB_POOL;
	if (!j || d->loop_done || vmf_jobs_submit_class(d->jobs, cls, stop_work, stop_done, j) < 0) {
		struct stop_job tmp = { d, vm, remove_links, reply_to };
		stop_work(&tmp);
		free(j);
		if (reply_to)
			vmf_control_reply_error(reply_to, ENOMEM, "out of memory; the VM was stopped");
		vmf_daemon_vm_free(d, vm);
	}
}

void
vmf_daemon_vm_exited(struct vmf_daemon *d, struct vmf_vm *vm)
{
	if (vm->watch)
		event_del(vm->watch);
	vm->dead = true;
	if (vm->busy || vm->state == VMF_VM_GONE || vm->state == VMF_VM_RELEASING)
		return; /* the job in flight sees vm->dead when it completes */
	log_vm(VMF_LOG_WARN, vm->id, "%s pid %d exited while %s", vm->ops->name, (int)vm->ops->pid(vm->hv),
	       vmf_vm_state_name(vm->state));
	if (vm->state == VMF_VM_ASSIGNED) {
		/* Keep the record so the runtime learns what happened via status
		 * or inspect; release cleans up. */
		vm->ops->alive(vm->hv);
		vm->state = VMF_VM_GONE;
		vmf_daemon_record_vm(d, vm);
		return;
	}
	if (vm->state == VMF_VM_READY && vm->pool) {
		/* Counted and shown, but no backoff: a pooled VM killed from
		 * outside (an operator, the OOM killer) says nothing about the
		 * next clone, and its replacement should start at once.  Clones
		 * that fail to start do back off (clone_done). */
		vm->pool->failed++;
		snprintf(vm->pool->last_error, sizeof(vm->pool->last_error), "a pooled VM's %s (pid %d) exited",
			 vm->ops->name, (int)vm->ops->pid(vm->hv));
	}
	vmf_daemon_destroy_vm(d, vm, false, NULL);
}

/* A VM's process exited (pidfd readable). */
static void
vm_dead_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_vm *vm = arg;
	vmf_daemon_vm_exited(vm->owner, vm);
}

void
vmf_daemon_watch_vm(struct vmf_daemon *d, struct vmf_vm *vm)
{
	/* The no-pidfd fault stands for a kernel without pidfd_open. */
	int fd = VMF_FAULT_ERR("no-pidfd") ? -1 : vm->ops->watch_fd(vm->hv);
	if (fd < 0)
		return; /* the tick's liveness check covers it (no watch) */
	if (!vm->watch)
		vm->watch = event_new(d->base, fd, EV_READ, vm_dead_cb, vm);
	if (vm->watch)
		event_add(vm->watch, NULL);
}

/* ---- pools ---- */

struct clone_job {
	struct vmf_daemon *d;
	struct vmf_vm *vm;                  /* the loop's: the worker touches only snap */
	struct vmf_vm snap;                 /* the worker's copy; clone_done applies it */
	struct vmf_pool *pool;               /* the worker reads only its params */
	struct vmf_tpl *tpl;                 /* a reference, dropped by clone_done */
	bool template_broken;
	int rc;
	struct vmf_error err;
};

static void start_template_build(struct vmf_daemon *d, struct vmf_pool *p);

#ifdef VMF_FAULT_INJECTION
static atomic_uint gate_tickets[2];

int
vmf_daemon_fault_gate(struct vmf_daemon *d, const char *name, struct vmf_error *err)
{
	if (!VMF_FAULT_ERR("gates"))
		return 0;
	unsigned ticket = atomic_fetch_add(&gate_tickets[strcmp(name, "miss") == 0], 1);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/gate-%s", d->opts.run_dir, name);
	int64_t deadline = vmf_now_ms() + 600000;
	for (;;) {
		char *s = NULL;
		if (vmf_read_file(path, &s, NULL, 64, NULL) < 0)
			return 0;
		bool fail = strncmp(s, "fail", 4) == 0;
		unsigned long open = strtoul(s, NULL, 10);
		free(s);
		if (fail || vmf_now_ms() > deadline)
			return vmf_err(err, EIO, "fault injection: the %s gate failed clone %u", name, ticket);
		if (open > ticket)
			return 0;
		poll(NULL, 0, 20);
	}
}
#endif

#define WARM_TIMEOUT_MS 60000

/* Work a hand-out would otherwise wait for, done while filling: the guest
 * notices the host's agent connection (tens of ms under TCG) and mounts
 * the VM's share (the sandbox's share_dir becomes a link to it).  The
 * connection stays open for the hand-out; the clone is paused again. */
static int
warm_clone(struct vmf_vm *vm, struct vmf_error *err)
{
	const struct vmf_hv_ops *ops = vm->ops;
	int r = ops->resume(vm->hv, err);
	int fd = r < 0 ? r : ops->agent_connect(vm->hv, WARM_TIMEOUT_MS, err);
	if (fd < 0)
		return vmf_error_prefix(err, "warming clone %s", vm->id);
	if (!(vm->agent = vmf_agent_new(fd)))
		return vmf_err(err, ENOMEM, "out of memory for the agent channel of clone %s", vm->id);
	/* Firecracker and Cloud Hypervisor have no share device to mount. */
	if ((r = vmf_agent_wait_ready(vm->agent, WARM_TIMEOUT_MS, err)) < 0 ||
	    ((ops->capabilities(vm->hv) & VMF_CAP_SHARE_DEVICE) &&
	     (r = vmf_agent_mount_share(vm->agent, VMF_SHARE_TAG, WARM_TIMEOUT_MS, err)) < 0) ||
	    (r = ops->pause(vm->hv, err)) < 0) {
		vmf_agent_free(vm->agent);
		vm->agent = NULL;
		return vmf_error_prefix(err, "warming clone %s", vm->id);
	}
	return 0;
}

static void
clone_work(void *arg)
{
	struct clone_job *j = arg;
	struct vmf_vm *vm = &j->snap;
	struct vmf_error rerr = {0};
	/* Recorded before the clone starts, so a crash mid-clone leaves a
	 * record recovery can reconcile.  (A QEMU without one is found by its
	 * name and killed all the same, so a failed write only warns.)  Both
	 * records are written here: the event loop must not wait on fsync. */
	if (vmf_daemon_put_vm_record(j->d, vm, VMF_VM_CREATING, &rerr) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", rerr.msg);
	if ((j->rc = VMF_FAULT_GATE(j->d, "clone", &j->err)) < 0)
		return;
	/* Cheap check (sizes) on every clone; digests were checked once at start. */
	j->rc = vmf_template_verify(j->d->cat, j->tpl->rec, false, &j->err);
	if (j->rc < 0) {
		j->template_broken = true;
		return;
	}
	j->rc = vmf_template_clone(&j->pool->params, j->tpl->rec, vm->id, vm->run_dir, vm->share_dir, &vm->hv,
				   &j->err);
	VMF_FAULT("mid-clone");
	if (j->rc == 0)
		j->rc = warm_clone(vm, &j->err);
	if (j->rc == 0) {
		vm->ready_ns = vmf_realtime_ns();
		if (vmf_daemon_put_vm_record(j->d, vm, VMF_VM_READY, &rerr) < 0)
			log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", rerr.msg);
	}
}

static void
clone_done(void *arg)
{
	struct clone_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_vm *vm = j->vm;
	struct vmf_pool *p = j->pool;
	p->filling--;
	vm->hv = j->snap.hv;
	vm->agent = j->snap.agent;
	vm->ready_ns = j->snap.ready_ns;
	vm->busy = false;
	/* A clone finished during a SIGTERM shutdown joins the pool, which the
	 * next daemon adopts; during a destroy it is stopped. */
	if (j->rc == 0 && !vm->dead && !d->destroying) {
		vm->state = VMF_VM_READY;   /* recorded by clone_work */
		vm->ready_mono_ms = vmf_now_ms();
		vmf_histogram_add(&d->clone_hist, (double)(vm->ready_ns - vm->created_ns) / 1e9);
		p->ready++;
		vmf_pool_note_success(p);
		vmf_daemon_watch_vm(d, vm);
		log_vm(VMF_LOG_DEBUG, vm->id, "ready in pool (%u/%u)", p->ready, p->target);
	} else {
		if (j->rc < 0) {
			log_vm(VMF_LOG_WARN, vm->id, "clone failed: %s", j->err.msg);
			vmf_pool_note_failure(p, vmf_now_ms(), j->err.msg);
		}
		if (j->template_broken && p->tpl == j->tpl) {
			/* Rebuilt on the next fill: the record is already marked
			 * broken.  Jobs still using it hold their references. */
			vmf_tpl_unref(p->tpl);
			p->tpl = NULL;
			p->verified = false;
		}
		vmf_daemon_destroy_vm(d, vm, false, NULL);
	}
	vmf_tpl_unref(j->tpl);
	free(j);
	check_readiness(d);
	vmf_daemon_settle(d);
}

struct vmf_vm *
vmf_daemon_new_vm(struct vmf_daemon *d, struct vmf_pool *p)
{
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return NULL;
	vmf_uuid_new(vm->id);
	vm->owner = d;
	vm->ops = p->params.ops;
	vm->pool = p;
	snprintf(vm->template_id, sizeof(vm->template_id), "%s", p->template_id);
	snprintf(vm->run_dir, sizeof(vm->run_dir), "%s/%s", d->vm_root, vm->id);
	snprintf(vm->share_dir, sizeof(vm->share_dir), "%s/%s/share", d->vm_root, vm->id);
	vm->vcpus = p->spec->vcpus;
	vm->memory_mib = p->spec->memory_mib;
	vm->created_ns = vmf_realtime_ns();
	vm->state = VMF_VM_CREATING;
	TAILQ_INSERT_TAIL(&d->vms, vm, link);
	return vm;
}

void
vmf_daemon_refill(struct vmf_daemon *d)
{
	if (d->stopping)
		return;
	int64_t now = vmf_now_ms();
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->pools, link) {
		if (!p->tpl && !p->building && now >= p->retry_at_ms) {
			start_template_build(d, p);
			continue;
		}
		for (unsigned n = vmf_pool_clones_to_start(p, now); n > 0; n--) {
			struct clone_job *j = calloc(1, sizeof(*j));
			struct vmf_vm *vm = j ? vmf_daemon_new_vm(d, p) : NULL;
			if (!vm) {
				free(j);
				break;
			}
			vm->busy = true;
			j->d = d;
			j->vm = vm;
			j->snap = *vm;
			j->pool = p;
			j->tpl = vmf_tpl_ref(p->tpl);
			if (vmf_jobs_submit_class(d->jobs, VMF_JOB_POOL, clone_work, clone_done, j) < 0) {
				vmf_tpl_unref(j->tpl);
				vmf_daemon_vm_free(d, vm);
				free(j);
				break;
			}
			p->filling++;
		}
	}
}

/* ---- template builds ---- */

struct build_job {
	struct vmf_daemon *d;
	struct vmf_pool *pool;
	int64_t start_ms;
	Vmf__Catalog__TemplateRecord *rec;
	int rc;
	struct vmf_error err;
};

static void
build_progress(void *ctx, const char *step)
{
	struct build_job *j = ctx;
	vmf_daemon_progress(j->d, "progress: template %.12s: %s (%.1f s)", j->pool->template_id, step,
			    (double)(vmf_now_ms() - j->d->start_ms) / 1000.0);
}

static void
build_work(void *arg)
{
	struct build_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_pool *p = j->pool;
	Vmf__Catalog__TemplateRecord *rec = NULL;
	int r = vmf_catalog_template_get(d->cat, p->template_id, &rec, &j->err);
	if (r == 0 && rec->state == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY) {
		/* Digests are checked once per daemon run; afterwards clones check
		 * sizes only. */
		build_progress(j, "verifying the existing template");
		if (vmf_template_verify(d->cat, rec, true, &j->err) == 0) {
			j->rec = rec;
			return;
		}
		log_tpl(VMF_LOG_WARN, p->template_id, "%s; rebuilding", j->err.msg);
	}
	if (rec)
		vmf__catalog__template_record__free_unpacked(rec, NULL);
	j->rc = vmf_template_build(d->cat, d->opts.state_dir, d->opts.run_dir, &p->params, p->spec, &d->img,
				   build_progress, j, &j->rec, &j->err);
}

static void
build_done(void *arg)
{
	struct build_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_pool *p = j->pool;
	p->building = false;
	if (j->rc == 0) {
		vmf_histogram_add(&d->build_hist, (double)(vmf_now_ms() - j->start_ms) / 1000.0);
		p->tpl = vmf_tpl_new(j->rec);   /* NULL (out of memory): built again */
		p->verified = true;
		vmf_pool_note_success(p);
		p->last_error[0] = '\0';
	} else {
		vmf_pool_note_failure(p, vmf_now_ms(), j->err.msg);
		log_tpl(VMF_LOG_ERROR, p->template_id, "%s (retry in %lld s)", j->err.msg,
			(long long)vmf_pool_backoff_ms(p->consecutive_failures) / 1000);
		if (d->ready_fd >= 0 && !d->ready_sent) {
			/* `init` is waiting: fail it now rather than retry unseen. */
			char line[VMF_ERROR_MSG_MAX + 16];
			snprintf(line, sizeof(line), "error: %s\n", j->err.msg);
			notify(d, line);
			d->exit_code = 1;
			d->stopping = true;
			event_base_loopexit(d->base, NULL);
		}
	}
	free(j);
	check_readiness(d);
	vmf_daemon_settle(d);
}

static void
start_template_build(struct vmf_daemon *d, struct vmf_pool *p)
{
	struct build_job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->d = d;
	j->pool = p;
	j->start_ms = vmf_now_ms();
	p->building = true;
	if (vmf_jobs_submit_class(d->jobs, VMF_JOB_POOL, build_work, build_done, j) < 0) {
		p->building = false;
		free(j);
	}
}

/* ---- status ---- */

/* With read_pss false, pss_kib is left 0: status reads it on a worker. */
static void
vm_info_fill(struct vmf_daemon *d, const struct vmf_vm *vm, Vmf__Control__VmInfo *info, bool read_pss)
{
	(void)d; /* every driver call goes through the VM's own driver */
	static __thread char qmp[PATH_MAX + 16], agent[PATH_MAX + 16];
	vmf__control__vm_info__init(info);
	info->id = (char *)vm->id;
	/* While busy a worker owns hv (and may be setting it). */
	info->pid = !vm->busy && vm->hv ? vm->ops->pid(vm->hv) : 0;
	info->vcpus = vm->vcpus;
	info->memory_mib = vm->memory_mib;
	snprintf(qmp, sizeof(qmp), "%s/%s", vm->run_dir, vm->ops->control_socket);
	snprintf(agent, sizeof(agent), "%s/%s", vm->run_dir, vm->ops->agent_socket);
	info->qmp_socket = strdup(qmp);
	info->agent_socket = strdup(agent);
	info->share_dir = d->hv.caps & VMF_CAP_SHARE_DEVICE ? (char *)vm->share_dir : (char *)"";
	info->run_dir = (char *)vm->run_dir;
	info->template_id = (char *)vm->template_id;
	info->pool = vm->pool ? (char *)vm->pool->name : (char *)"";
	info->state = (char *)vmf_vm_state_name(vm->state);
	info->sandbox_id = (char *)vm->sandbox_id;
	info->share_link = (char *)vm->share_link;
	info->sock_link = (char *)vm->sock_link;
	info->created_ns = vm->created_ns;
	info->owner_uid = (uint32_t)vm->owner_uid;
	info->pss_kib = read_pss && info->pid > 0 && !vm->dead ? vmf_proc_pss_kib(info->pid) : 0;
	if (!vm->busy && vm->hv) {
		struct vmf_error err;
		vm->ops->serialize(vm->hv, &info->hypervisor, &err);
	}
}

void
vmf_vm_info_fill(struct vmf_daemon *d, const struct vmf_vm *vm, Vmf__Control__VmInfo *info)
{
	vm_info_fill(d, vm, info, true);
}

void
vmf_vm_info_clear(Vmf__Control__VmInfo *info)
{
	free(info->qmp_socket);
	free(info->agent_socket);
	if (info->hypervisor)
		vmf__hv__hypervisor_state__free_unpacked(info->hypervisor, NULL);
	info->qmp_socket = info->agent_socket = NULL;
	info->hypervisor = NULL;
}

bool
vmf_daemon_peer_admin(const struct vmf_daemon *d, uid_t uid)
{
	return uid == 0 || uid == d->sandbox.daemon_uid;
}

/* The reply is built on the loop; only the PSS of each VM's process, a
 * read of /proc/PID/smaps_rollup that can take long for a large process,
 * is done on a worker, for the pids the loop copied. */
struct status_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	Vmf__Control__Reply reply;
	size_t n;
	pid_t *pids;         /* per s->vms[i], 0 = no PSS to read */
	uint64_t *pss;
};

static void
status_work(void *arg)
{
	struct status_job *j = arg;
	for (size_t i = 0; i < j->n; i++)
		j->pss[i] = j->pids[i] > 0 ? vmf_proc_pss_kib(j->pids[i]) : 0;
}

static void
status_done(void *arg)
{
	struct status_job *j = arg;
	Vmf__Control__StatusReply *s = j->reply.status;
	for (size_t i = 0; s && i < j->n && i < s->n_vms; i++)
		s->vms[i]->pss_kib = j->pss[i];
	vmf_control_reply(j->c, &j->reply);
	if (s)
		vmf__control__status_reply__free_unpacked(s, NULL);
	struct vmf_daemon *d = j->d;
	free(j->pids);
	free(j->pss);
	free(j);
	vmf_daemon_settle(d);
}

static void status_build(struct vmf_daemon *d, uid_t peer, Vmf__Control__Reply *reply, pid_t *pids);

void
vmf_daemon_status(struct vmf_daemon *d, struct vmf_conn *c)
{
	size_t nvms = 0;
	struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->vms, link)
		nvms++;
	struct status_job *j = calloc(1, sizeof(*j));
	pid_t *pids = calloc(nvms + 1, sizeof(*pids));
	uint64_t *pss = calloc(nvms + 1, sizeof(*pss));
	if (!j || !pids || !pss) {
		free(j);
		free(pids);
		free(pss);
		vmf_control_reply_error(c, ENOMEM, "out of memory");
		return;
	}
	vmf__control__reply__init(&j->reply);
	j->d = d;
	j->c = c;
	j->pids = pids;
	j->pss = pss;
	status_build(d, vmf_control_peer_uid(c), &j->reply, pids);
	j->n = j->reply.status ? j->reply.status->n_vms : 0;
	if (!j->reply.status || vmf_jobs_submit(d->jobs, status_work, status_done, j) < 0) {
		status_work(j);
		status_done(j);
	}
}

/* pids[i] gets the pid whose PSS belongs in vms[i]. */
static void
status_build(struct vmf_daemon *d, uid_t peer, Vmf__Control__Reply *reply, pid_t *pids)
{
	bool all = vmf_daemon_peer_admin(d, peer);
	Vmf__Control__StatusReply *s = calloc(1, sizeof(*s));
	if (!s) {
		reply->error_code = ENOMEM;
		reply->error_message = (char *)"out of memory";
		return;
	}
	vmf__control__status_reply__init(s);
	s->pid = getpid();
	s->uptime_ms = (uint64_t)(vmf_now_ms() - d->start_ms);
	s->socket = strdup(d->opts.socket_path);
	s->hypervisor = strdup(d->ops->name);
	s->accel = strdup(d->hv.accel);
	s->requests = d->requests;
	s->hits = d->hits;
	s->misses = d->misses;
	s->errors = d->errors;
	s->handout_p50_ms = vmf_latency_quantile(&d->lat[VMF_STEP_TOTAL], 0.5);
	s->handout_p99_ms = vmf_latency_quantile(&d->lat[VMF_STEP_TOTAL], 0.99);

	unsigned ncaps = 0;
	char *caps[8];
	for (unsigned bit = 1; bit && bit <= VMF_CAP_FULL_SNAPSHOT; bit <<= 1)
		if (d->hv.caps & bit)
			caps[ncaps++] = strdup(vmf_cap_name(bit));
	s->capabilities = calloc(ncaps ? ncaps : 1, sizeof(char *));
	if (s->capabilities) {
		memcpy(s->capabilities, caps, ncaps * sizeof(char *));
		s->n_capabilities = ncaps;
	}

	s->steps = calloc(VMF_STEP_COUNT, sizeof(*s->steps));
	for (int i = 0; s->steps && i < VMF_STEP_COUNT; i++) {
		Vmf__Control__StepLatency *l = calloc(1, sizeof(*l));
		if (!l)
			break;
		vmf__control__step_latency__init(l);
		l->step = strdup(vmf_step_names[i]);
		l->count = d->lat[i].count;
		l->p50_ms = vmf_latency_quantile(&d->lat[i], 0.5);
		l->p99_ms = vmf_latency_quantile(&d->lat[i], 0.99);
		s->steps[s->n_steps++] = l;
	}

	size_t npools = 0, nvms = 0;
	struct vmf_pool *p;
	struct vmf_vm *vm;
	TAILQ_FOREACH(p, &d->pools, link)
		npools++;
	TAILQ_FOREACH(vm, &d->vms, link)
		nvms++;
	s->pools = calloc(npools + 1, sizeof(*s->pools));
	s->templates = calloc(npools + 1, sizeof(*s->templates));
	s->vms = calloc(nvms + 1, sizeof(*s->vms));
	TAILQ_FOREACH(p, &d->pools, link) {
		if (!s->pools || !s->templates)
			break;
		Vmf__Control__PoolStatus *ps = calloc(1, sizeof(*ps));
		Vmf__Control__TemplateStatus *ts = calloc(1, sizeof(*ts));
		if (!ps || !ts) {
			free(ps);
			free(ts);
			break;
		}
		vmf__control__pool_status__init(ps);
		ps->template_id = strdup(p->template_id);
		ps->vcpus = p->spec->vcpus;
		ps->memory_mib = p->spec->memory_mib;
		ps->target = p->target;
		ps->ready = p->ready;
		ps->filling = p->filling;
		ps->failed = (uint32_t)p->failed;
		ps->last_error = strdup(p->last_error);
		ps->share_memory = !p->spec->full_memory;
		ps->name = strdup(p->name);
		s->pools[s->n_pools++] = ps;

		vmf__control__template_status__init(ts);
		ts->id = strdup(p->template_id);
		ts->state = strdup(p->tpl ? "ready" : p->building ? "building" : "failed");
		ts->vcpus = p->spec->vcpus;
		ts->memory_mib = p->spec->memory_mib;
		ts->max_vcpus = p->spec->max_vcpus;
		ts->max_memory_mib = p->spec->max_memory_mib;
		ts->memory_size = p->tpl ? p->tpl->rec->memory_size : 0;
		ts->state_size = p->tpl ? p->tpl->rec->state_size : 0;
		ts->created_ns = p->tpl ? p->tpl->rec->created_ns : 0;
		ts->error = strdup(p->last_error);
		ts->full_memory = p->spec->full_memory;
		s->templates[s->n_templates++] = ts;
	}
	TAILQ_FOREACH(vm, &d->vms, link) {
		if (!s->vms)
			break;
		if (!all && (vm->owner_uid != peer || vm->state == VMF_VM_READY || vm->state == VMF_VM_CREATING))
			continue;
		Vmf__Control__VmInfo *info = calloc(1, sizeof(*info));
		if (!info)
			break;
		Vmf__Control__VmInfo tmp;
		vm_info_fill(d, vm, &tmp, false);
		pids[s->n_vms] = tmp.pid > 0 && !vm->dead ? (pid_t)tmp.pid : 0;
		/* status_reply__free_unpacked frees every string: own them all. */
		*info = tmp;
		info->id = strdup(tmp.id);
		info->share_dir = strdup(tmp.share_dir);
		info->run_dir = strdup(tmp.run_dir);
		info->template_id = strdup(tmp.template_id);
		info->pool = strdup(tmp.pool);
		info->state = strdup(tmp.state);
		info->sandbox_id = strdup(tmp.sandbox_id);
		info->share_link = strdup(tmp.share_link);
		info->sock_link = strdup(tmp.sock_link);
		s->vms[s->n_vms++] = info;
	}
	reply->body_case = VMF__CONTROL__REPLY__BODY_STATUS;
	reply->status = s;
}

/* ---- destroy and shutdown ---- */

/* Jobs queued or running, or a VM some job owns. */
static bool
work_in_flight(struct vmf_daemon *d)
{
	struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &d->vms, link)
		if (vm->busy)
			return true;
	return vmf_jobs_pending(d->jobs) > 0;
}

static void
exit_loop_soon(struct vmf_daemon *d)
{
	/* Let the replies just written reach their clients first. */
	struct timeval tv = { 0, 100000 };
	event_base_loopexit(d->base, &tv);
}

/* A destroy stops every VM but the assigned and gone ones (all of them
 * with all); a VM a job owns is left to the job and looked at again when
 * the job completes.  The reply goes once nothing is left to stop and no
 * job runs. */
static void
finish_destroy_if_done(struct vmf_daemon *d)
{
	struct vmf_vm *vm, *next;
	for (vm = TAILQ_FIRST(&d->vms); vm; vm = next) {
		next = TAILQ_NEXT(vm, link);
		if (!vm->busy && (d->destroy_all || (vm->state != VMF_VM_ASSIGNED && vm->state != VMF_VM_GONE)))
			vmf_daemon_destroy_vm(d, vm, true, NULL);
	}
	if (work_in_flight(d))
		return;
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	Vmf__Control__DestroyReply dr = VMF__CONTROL__DESTROY_REPLY__INIT;
	dr.stopped = d->destroyed;
	r.body_case = VMF__CONTROL__REPLY__BODY_DESTROY;
	r.destroy = &dr;
	vmf_control_reply(d->destroy_conn, &r);
	d->destroy_conn = NULL;
	d->destroy_done = true;
	log_info("destroyed: %u VMs stopped", d->destroyed);
	exit_loop_soon(d);
}

void
vmf_daemon_settle(struct vmf_daemon *d)
{
	if (d->loop_done)
		return;
	if (d->destroy_conn) {
		finish_destroy_if_done(d);
	} else if (d->draining && !d->destroy_done && !work_in_flight(d)) {
		log_info("shutdown: work in flight done; exiting, VMs keep running for the next daemon");
		exit_loop_soon(d);
	} else {
		vmf_daemon_refill(d);
	}
}

void
vmf_daemon_destroy(struct vmf_daemon *d, struct vmf_conn *c, bool all)
{
	if (d->destroy_conn) {
		vmf_control_reply_error(c, EALREADY, "a destroy is already in progress");
		return;
	}
	log_info("destroy requested%s", all ? " (all VMs, assigned included)" : "");
	d->stopping = true;
	d->destroying = true;
	d->destroy_conn = c;
	d->destroy_all = all;
	finish_destroy_if_done(d);
}

static void
drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_daemon *d = arg;
	log_warn("shutdown: work still in flight after %d s; exiting without waiting for it",
		 (VMF_DEFAULT_GETVM_TIMEOUT_MS + VMF_STOP_TIMEOUT_MS) / 1000);
	event_base_loopexit(d->base, NULL);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	struct vmf_daemon *d = arg;
	if (d->draining) {
		log_warn("signal %d again: exiting now, without waiting for the work in flight", (int)sig);
		event_base_loopexit(d->base, NULL);
		return;
	}
	/* Pooled and assigned VMs keep running: a restarted daemon adopts
	 * them.  Work in flight finishes first: a GetVM whose VM is recorded
	 * assigned must reach its client, and a VM being stopped must stop.
	 * Bounded by a GetVM's default timeout plus a stop's. */
	log_info("signal %d: finishing the work in flight, then exiting; VMs keep running for the next daemon",
		 (int)sig);
	vmf_sd_notify("STOPPING=1\nSTATUS=stopping on signal %d; VMs keep running", (int)sig);
	d->stopping = true;
	d->draining = true;
	struct timeval tv = { (VMF_DEFAULT_GETVM_TIMEOUT_MS + VMF_STOP_TIMEOUT_MS) / 1000, 0 };
	d->drain_timer = evtimer_new(d->base, drain_timeout_cb, d);
	if (!d->drain_timer || evtimer_add(d->drain_timer, &tv) < 0) {
		log_warn("shutdown: cannot arm the shutdown deadline; exiting now");
		event_base_loopexit(d->base, NULL);
		return;
	}
	vmf_daemon_settle(d);
}

/* ---- recovery ---- */

static struct vmf_pool *
pool_for(struct vmf_daemon *d, const char *template_id)
{
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->pools, link)
		if (strcmp(p->template_id, template_id) == 0)
			return p;
	return NULL;
}

static void
copy_str(char *dst, size_t n, const char *src)
{
	snprintf(dst, n, "%s", src ? src : "");
}

/* Reconciles one recorded VM with what runs: adopt it, keep it as gone, or
 * clean it up. */
static int
recover_vm(const char *id, Vmf__Catalog__VmRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	struct vmf_daemon *d = ctx;
	struct vmf_error err = {0};
	if (!rec) {
		log_vm(VMF_LOG_WARN, id, "VM record unreadable (%s); removing it", rec_err ? rec_err->msg : "?");
		vmf_catalog_vm_delete(d->cat, id, &err);
		return 0;
	}
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		/* Skipping it would make its process look like an orphan. */
		log_vm(VMF_LOG_ERROR, id, "out of memory recovering it");
		return -ENOMEM;
	}
	copy_str(vm->id, sizeof(vm->id), rec->id);
	copy_str(vm->template_id, sizeof(vm->template_id), rec->template_id);
	copy_str(vm->sandbox_id, sizeof(vm->sandbox_id), rec->sandbox_id);
	copy_str(vm->share_link, sizeof(vm->share_link), rec->share_link);
	copy_str(vm->sock_link, sizeof(vm->sock_link), rec->sock_link);
	copy_str(vm->run_dir, sizeof(vm->run_dir), rec->run_dir);
	copy_str(vm->share_dir, sizeof(vm->share_dir), rec->share_dir);
	vm->owner = d;
	vm->vcpus = rec->vcpus;
	vm->memory_mib = rec->memory_mib;
	vm->created_ns = rec->created_ns;
	vm->assigned_ns = rec->assigned_ns;
	vm->ready_ns = rec->ready_ns;
	vm->owner_uid = (uid_t)rec->owner_uid;
	vm->ready_mono_ms = vmf_now_ms();
	vm->pool = pool_for(d, vm->template_id);
	TAILQ_INSERT_TAIL(&d->vms, vm, link);

	/* A VM keeps the driver that started it, even when the daemon is now
	 * configured for another: every later call on it goes through
	 * vm->ops.  Only a pool's own driver makes pooled VMs (below). */
	const struct vmf_hv_ops *ops = rec->hv ? vmf_hv_by_kind(rec->hv->kind) : NULL;
	vm->ops = ops ? ops : d->ops;
	bool live = false;
	if (rec->hv && !ops) {
		log_vm(VMF_LOG_WARN, vm->id, "not adopted: its record names hypervisor kind %d, for which this "
		       "vmfactory has no driver", (int)rec->hv->kind);
	} else if (rec->hv) {
		live = ops->adopt(rec->hv, &vm->hv, &err) == 0;
		if (!live)
			log_vm(VMF_LOG_INFO, vm->id, "not adopted: %s", err.msg);
		else if (ops != d->ops)
			log_vm(VMF_LOG_INFO, vm->id, "adopted with the %s driver; the daemon is configured for %s",
			       ops->name, d->ops->name);
	}
	switch (rec->state) {
	case VMF__CATALOG__VM_STATE__VM_READY:
		if (live && vm->pool && vm->ops == vm->pool->params.ops) {
			vm->state = VMF_VM_READY;
			vm->pool->ready++;
			vmf_daemon_watch_vm(d, vm);
			log_vm(VMF_LOG_INFO, vm->id, "adopted pooled VM (pid %d)", (int)vm->ops->pid(vm->hv));
			return 0;
		}
		break;
	case VMF__CATALOG__VM_STATE__VM_ASSIGNED:
	case VMF__CATALOG__VM_STATE__VM_GONE:
		vm->state = live ? VMF_VM_ASSIGNED : VMF_VM_GONE;
		if (live)
			vmf_daemon_watch_vm(d, vm);
		log_vm(VMF_LOG_INFO, vm->id, "%s VM of sandbox %s", live ? "adopted assigned" : "recorded gone",
		       vm->sandbox_id);
		vmf_daemon_record_vm(d, vm);
		return 0;
	default:
		/* Creating, handing out or releasing when the daemon died: nobody
		 * holds it, it goes. */
		break;
	}
	log_vm(VMF_LOG_INFO, vm->id, "cleaning up VM left %s", rec->state == VMF__CATALOG__VM_STATE__VM_READY
	       ? "ready by a previous run" : "unfinished by a previous run");
	vm->state = VMF_VM_RELEASING;
	vmf_daemon_destroy_vm(d, vm, rec->state == VMF__CATALOG__VM_STATE__VM_HANDING_OUT, NULL);
	return 0;
}

/* Kills QEMU processes that run under our VM root but have no record (a
 * daemon killed between spawning QEMU and recording it). */
static void
kill_orphans(struct vmf_daemon *d)
{
	DIR *proc = opendir("/proc");
	if (!proc)
		return;
	char root[PATH_MAX + 2];
	snprintf(root, sizeof(root), "%s/", d->vm_root);
	char build_prefix[PATH_MAX + 8];
	snprintf(build_prefix, sizeof(build_prefix), "%s/build-", d->opts.run_dir);
	struct dirent *de;
	while ((de = readdir(proc))) {
		pid_t pid = (pid_t)atoi(de->d_name);
		if (pid <= 0 || pid == getpid())
			continue;
		char path[64], *cmd = NULL;
		size_t len;
		snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
		if (vmf_read_file(path, &cmd, &len, 1 << 20, NULL) < 0)
			continue;
		const char *name = NULL;
		bool ours = false;
		for (size_t off = 0; off < len;) {
			const char *a = cmd + off;
			if (strcmp(a, "-name") == 0 && off + strlen(a) + 1 < len)
				name = cmd + off + strlen(a) + 1;
			if (strstr(a, root) || strstr(a, build_prefix))
				ours = true;
			off += strlen(a) + 1;
		}
		if (name && ours && strncmp(name, "vmfactory-", 10) == 0) {
			const char *id = name + 10;
			struct vmf_vm *vm = vmf_daemon_find_vm(d, id);
			bool adopted = vm && vm->hv && vm->ops->pid(vm->hv) == pid;
			if (!adopted) {
				log_warn("killing QEMU pid %d (%s): no record of it", (int)pid, name);
				kill(pid, SIGKILL);
			}
		}
		free(cmd);
	}
	closedir(proc);
}

/* ---- loop plumbing ---- */

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_daemon *d = arg;
	int64_t now = vmf_now_ms();
	struct vmf_vm *vm, *next;
	for (vm = TAILQ_FIRST(&d->vms); vm; vm = next) {
		next = TAILQ_NEXT(vm, link);
		/* Without a pidfd nothing else notices an exit.  A VM a job owns
		 * is left alone: its handle is the job's, and the job's done
		 * callback looks at it. */
		if (vm->hv && !vm->watch && !vm->busy && !vm->dead && !vm->ops->alive(vm->hv)) {
			vmf_daemon_vm_exited(d, vm);
			continue;
		}
		unsigned max_idle = vm->pool ? vm->pool->max_idle_s : d->opts.max_idle_s;
		if (vmf_pool_vm_idle_expired(vm, max_idle, now) && !d->stopping) {
			log_vm(VMF_LOG_INFO, vm->id, "replacing: paused longer than %u s", max_idle);
			vmf_daemon_destroy_vm(d, vm, false, NULL);
		}
	}
	/* Also a backstop for a destroy or shutdown waiting on a job whose
	 * done callback does not settle. */
	vmf_daemon_settle(d);
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
	p->params.runas = o->runas;
	p->target = ps->size;
	p->parallelism = o->fill_parallelism ? o->fill_parallelism : 2;
	int r = vmf_template_spec_new(&p->params, &d->hv, &d->img, &p->spec, p->template_id, err);
	if (r < 0) {
		free(p);
		vmf_error_prefix(err, "pool %s", ps->name);
		return r;
	}
	TAILQ_INSERT_TAIL(&d->pools, p, link);
	log_tpl(VMF_LOG_INFO, p->template_id, "pool %s of %u VMs with %u vCPU / %u MiB (max %u / %u MiB), %s memory",
		p->name, p->target, p->params.vcpus, p->params.memory_mib, p->params.max_vcpus,
		p->params.max_memory_mib, p->params.full_memory ? "private" : "shared");
	return 0;
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
}

static int
setup_pools(struct vmf_daemon *d, struct vmf_error *err)
{
	struct vmf_pool_spec one;
	const struct vmf_pool_spec *specs = d->opts.pools;
	unsigned n = d->opts.n_pools;
	if (n == 0) {
		flags_pool(&d->opts, &one);
		specs = &one;
		n = 1;
	}
	for (unsigned i = 0; i < n; i++) {
		int r = setup_pool(d, &specs[i], err);
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
	if (ps->vcpus == 0 || ps->memory_mib < 64)
		return vmf_err(err, EINVAL, "%sthe base size must be at least 1 vCPU and 64 MiB", pfx);
	if (ps->max_vcpus && ps->max_vcpus < ps->vcpus)
		return vmf_err(err, EINVAL, "%s%s %u is below %s %u", pfx, mc, ps->max_vcpus, c, ps->vcpus);
	if (ps->max_memory_mib && ps->max_memory_mib < ps->memory_mib)
		return vmf_err(err, EINVAL, "%s%s %u is below %s %u", pfx, mm, ps->max_memory_mib, m, ps->memory_mib);
	if (ps->max_vcpus > 255)
		return vmf_err(err, EINVAL, "%s%s %u is above 255", pfx, mc, ps->max_vcpus);
	if (ps->size > 256)
		return vmf_err(err, EINVAL, "%s%s %u is above 256", pfx, sz, ps->size);
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
	if (strlen(o->run_dir) > 56)
		return vmf_err(err, ENAMETOOLONG, "run dir %s is longer than 56 characters; VM socket paths "
			       "below it would not fit a unix socket address", o->run_dir);
	if (strlen(o->socket_path) > 107)
		return vmf_err(err, ENAMETOOLONG, "socket path %s is longer than 107 characters", o->socket_path);
	if (strlen(o->state_dir) > 512)
		return vmf_err(err, ENAMETOOLONG, "state dir %s is longer than 512 characters", o->state_dir);
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

static void
daemon_free(struct vmf_daemon *d)
{
	if (d->jobs)
		vmf_jobs_free(d->jobs);
	vmf_control_close(d);
	vmf_metrics_close(d);
	struct vmf_vm *vm;
	while ((vm = TAILQ_FIRST(&d->vms)))
		vmf_daemon_vm_free(d, vm);
	struct vmf_pool *p;
	while ((p = TAILQ_FIRST(&d->pools))) {
		TAILQ_REMOVE(&d->pools, p, link);
		vmf_tpl_unref(p->tpl);
		vmf_template_spec_free(p->spec);
		free(p);
	}
	if (d->tick)
		event_free(d->tick);
	if (d->drain_timer)
		event_free(d->drain_timer);
	if (d->sig_term)
		event_free(d->sig_term);
	if (d->sig_int)
		event_free(d->sig_int);
	if (d->base)
		event_base_free(d->base);
	if (d->cat)
		vmf_catalog_close(d->cat);
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
	struct vmf_daemon *d = calloc(1, sizeof(*d));
	if (!d)
		return vmf_err(err, ENOMEM, "out of memory");
	d->opts = *opts;
	d->ready_fd = opts->ready_fd;
	d->start_ms = vmf_now_ms();
	TAILQ_INIT(&d->pools);
	TAILQ_INIT(&d->vms);
	snprintf(d->vm_root, sizeof(d->vm_root), "%s/vms", opts->run_dir);
	signal(SIGPIPE, SIG_IGN);
	if ((r = vmf_sandbox_policy_init(&d->sandbox, opts->sandbox_roots, opts->state_dir, opts->run_dir, err)) < 0)
		goto out;

	/* Run dir and vms/ 0711: a VM's owner reaches its sockets through
	 * them (its own VM dir grants it that, by ACL) without listing them. */
	if ((r = vmf_mkdir_p(opts->state_dir, 0700, err)) < 0 || (r = vmf_mkdir_p(opts->run_dir, 0711, err)) < 0 ||
	    (r = vmf_mkdir_p(d->vm_root, 0711, err)) < 0)
		goto out;
	if (chmod(d->vm_root, 0711) < 0) {
		r = vmf_err_sys(err, errno, "cannot make %s searchable", d->vm_root);
		goto out;
	}
	/* One daemon per state dir, even when two start at the same instant;
	 * template gc/rm/build take the same lock (cli.c). */
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
	if ((r = vmf_image_load(opts->image_dir, opts->kernel, opts->initrd, &d->img, err)) < 0)
		goto out;
	if ((r = d->ops->probe(opts->qemu_binary, d->img.kernel, &d->hv, err)) < 0)
		goto out;
	if (opts->accel && *opts->accel)
		snprintf(d->hv.accel, sizeof(d->hv.accel), "%s", opts->accel);
	if ((r = vmf_catalog_open(opts->state_dir, &d->cat, err)) < 0)
		goto out;
	if ((r = vmf_template_cleanup(d->cat, opts->state_dir, err)) < 0)
		log_warn("%s", err->msg);
	if ((r = setup_pools(d, err)) < 0)
		goto out;

	evthread_use_pthreads();
	vmf_log_route_libevent();
	d->base = event_base_new();
	/* Pool work may take WORKER_THREADS - 1 workers; misses have one each
	 * besides, and one more stays for hand-outs of ready VMs, releases and
	 * inspects: none of these waits for a clone. */
	unsigned reserve = 1 + opts->max_miss_clones;
	d->jobs = d->base ? vmf_jobs_new(d->base, WORKER_THREADS + opts->max_miss_clones, reserve) : NULL;
	if (!d->jobs) {
		r = vmf_err(err, ENOMEM, "cannot set up the event loop");
		goto out;
	}
	d->sig_term = evsignal_new(d->base, SIGTERM, signal_cb, d);
	d->sig_int = evsignal_new(d->base, SIGINT, signal_cb, d);
	d->tick = event_new(d->base, -1, EV_PERSIST, tick_cb, d);
	struct timeval sec = { 1, 0 };
	if (!d->sig_term || !d->sig_int || !d->tick || event_add(d->sig_term, NULL) || event_add(d->sig_int, NULL) ||
	    event_add(d->tick, &sec)) {
		r = vmf_err(err, ENOMEM, "cannot set up the event loop");
		goto out;
	}

	/* Without every record no running VM can be told from an orphan:
	 * an assigned one would be killed.  Stop before touching any. */
	struct vmf_error lerr = {0};
	if ((r = vmf_catalog_vm_list(d->cat, recover_vm, d, &lerr)) < 0) {
		if (!lerr.msg[0])
			vmf_err(&lerr, -r, "out of memory recovering the VMs");
		r = vmf_err(err, lerr.code, "recovery cannot read the VM records, so the daemon stops without "
			    "stopping or killing any VM: %s", lerr.msg);
		goto out;
	}
	kill_orphans(d);
	if ((r = vmf_control_listen(d, err)) < 0)
		goto out;
	if (opts->metrics_listen && *opts->metrics_listen &&
	    (r = vmf_metrics_listen(d, opts->metrics_listen, err)) < 0)
		goto out;
	log_info("listening on %s (pid %d, %s %s, accel %s)", opts->socket_path, (int)getpid(), d->ops->name,
		 d->hv.version, d->hv.accel);
	vmf_daemon_refill(d);
	check_readiness(d);
	event_base_dispatch(d->base);
	r = d->exit_code ? vmf_err(err, EIO, "%s", TAILQ_FIRST(&d->pools)->last_error) : 0;
out:
	/* Jobs still running complete in daemon_free (vmf_jobs_free), with no
	 * loop to reply on or workers to run more jobs: see loop_done. */
	d->stopping = true;
	d->loop_done = true;
	if (r < 0 && err)
		vmf_sd_notify("STATUS=failed: %s\nERRNO=%d", err->msg, err->code);
	daemon_free(d);
	/* After destroy nothing of ours stays in the run dir (rmdir: only when
	 * empty, assigned VMs kept by a plain destroy keep theirs). */
	if (d->destroy_done && rmdir(d->vm_root) == 0)
		rmdir(opts->run_dir);
	free(d);
	return r;
}
