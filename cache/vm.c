/* The cache's VMs on the loop: the list, their records in the catalog,
 * watching their processes, stopping them on a worker.  The daemon's
 * request handlers use these as the pool engine does. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "cache.h"
#include "catalog.h"
#include "driver.h"
#include "frame.h"
#include "log.h"
#include "util.h"

#define VM_SCHEMA_VERSION 1

struct vmf_vm *
vmf_cache_find_vm(struct vmf_cache *c, const char *id)
{
	struct vmf_vm *vm;
	TAILQ_FOREACH(vm, &c->vms, link)
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
	case VMF_VM_SUSPENDING: return VMF__CATALOG__VM_STATE__VM_SUSPENDING;
	case VMF_VM_SUSPENDED: return VMF__CATALOG__VM_STATE__VM_SUSPENDED;
	case VMF_VM_RESUMING: return VMF__CATALOG__VM_STATE__VM_RESUMING;
	}
	return VMF__CATALOG__VM_STATE__VM_GONE;
}

void
vmf_cache_record_vm(struct vmf_cache *c, struct vmf_vm *vm)
{
	struct vmf_error err = {0};
	if (vmf_cache_put_vm_record(c, vm, vm->state, &err) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", err.msg);
}

/* The one mapping between a VM and its record, both ways.  rec borrows
 * vm's strings. */
static void
vm_to_record(const struct vmf_vm *vm, enum vmf_vm_state state, const Vmf__Hv__VmExit *exit,
	     Vmf__Catalog__VmRecord *rec)
{
	rec->schema_version = VM_SCHEMA_VERSION;
	rec->id = (char *)vm->id;
	rec->template_id = (char *)vm->template_id;
	rec->state = record_state(state);
	rec->sandbox_id = (char *)vm->sandbox_id;
	rec->share_link = (char *)vm->share_link;
	rec->sock_link = (char *)vm->sock_link;
	rec->run_dir = (char *)vm->run_dir;
	rec->share_dir = (char *)vm->share_dir;
	rec->vcpus = vm->vcpus;
	rec->memory_mib = vm->memory_mib;
	rec->created_ns = vm->created_ns;
	rec->assigned_ns = vm->assigned_ns;
	rec->ready_ns = vm->ready_ns;
	rec->owner_uid = (uint32_t)vm->owner_uid;
	rec->boot_id = (char *)vm->boot_id;
	rec->machine_id = (char *)vm->machine_id;
	rec->hostname = (char *)vm->hostname;
	rec->clock_error_ms = vm->clock_error_ms;
	rec->net = (char *)vm->net;
	rec->netns = (char *)vm->netns;
	rec->netns_dev = vm->netns_dev;
	rec->netns_ino = vm->netns_ino;
	rec->netns_link = (char *)vm->netns_link;
	rec->tap = (char *)vm->tap;
	rec->mac = (char *)vm->mac;
	rec->state_file = (char *)vm->state_file;
	rec->state_size = vm->state_size;
	rec->suspended_ns = vm->suspended_ns;
	rec->lease_deadline_ns = vm->lease_deadline_ns;
	rec->lease_suspend = vm->lease_suspend;
	rec->exit = (Vmf__Hv__VmExit *)exit;
}

static void
copy_str(char *dst, size_t n, const char *src)
{
	snprintf(dst, n, "%s", src ? src : "");
}

void
vmf_vm_from_record(struct vmf_vm *vm, const Vmf__Catalog__VmRecord *rec)
{
	copy_str(vm->id, sizeof(vm->id), rec->id);
	copy_str(vm->template_id, sizeof(vm->template_id), rec->template_id);
	copy_str(vm->sandbox_id, sizeof(vm->sandbox_id), rec->sandbox_id);
	copy_str(vm->share_link, sizeof(vm->share_link), rec->share_link);
	copy_str(vm->sock_link, sizeof(vm->sock_link), rec->sock_link);
	copy_str(vm->run_dir, sizeof(vm->run_dir), rec->run_dir);
	copy_str(vm->share_dir, sizeof(vm->share_dir), rec->share_dir);
	vm->vcpus = rec->vcpus;
	vm->memory_mib = rec->memory_mib;
	vm->created_ns = rec->created_ns;
	vm->assigned_ns = rec->assigned_ns;
	vm->ready_ns = rec->ready_ns;
	vm->owner_uid = (uid_t)rec->owner_uid;
	copy_str(vm->boot_id, sizeof(vm->boot_id), rec->boot_id);
	copy_str(vm->machine_id, sizeof(vm->machine_id), rec->machine_id);
	copy_str(vm->hostname, sizeof(vm->hostname), rec->hostname);
	vm->clock_error_ms = rec->clock_error_ms;
	for (size_t i = 0; i < rec->n_disks; i++) {
		const Vmf__Catalog__VmDisk *rd = rec->disks[i];
		if (rd->slot >= VMF_DISK_SLOTS || vm->disks[rd->slot])
			continue;
		struct vmf_vm_disk *dk = calloc(1, sizeof(*dk));
		if (!dk)
			continue;
		dk->kind = rd->kind == VMF__CATALOG__DISK_KIND__DISK_SCRATCH ? VMF_DISK_SCRATCH
			   : rd->kind == VMF__CATALOG__DISK_KIND__DISK_COW ? VMF_DISK_COW : VMF_DISK_FILE;
		copy_str(dk->overlay, sizeof(dk->overlay), rd->overlay);
		copy_str(dk->path, sizeof(dk->path), rd->path);
		copy_str(dk->guest_path, sizeof(dk->guest_path), rd->guest_path);
		copy_str(dk->format, sizeof(dk->format), rd->format);
		copy_str(dk->fstype, sizeof(dk->fstype), rd->fstype);
		copy_str(dk->guest_device, sizeof(dk->guest_device), rd->guest_device);
		dk->read_only = rd->read_only;
		dk->dev = rd->dev;
		dk->ino = rd->ino;
		vm->disks[rd->slot] = dk;
	}
	copy_str(vm->net, sizeof(vm->net), rec->net);
	copy_str(vm->netns, sizeof(vm->netns), rec->netns);
	vm->netns_dev = rec->netns_dev;
	vm->netns_ino = rec->netns_ino;
	copy_str(vm->netns_link, sizeof(vm->netns_link), rec->netns_link);
	copy_str(vm->tap, sizeof(vm->tap), rec->tap);
	copy_str(vm->mac, sizeof(vm->mac), rec->mac);
	vm->net_outbound = rec->net_outbound;
	vm->n_hostfwd = 0;
	for (size_t i = 0; i < rec->n_hostfwd && i < VMF_MAX_HOSTFWD; i++)
		copy_str(vm->hostfwd[vm->n_hostfwd++], sizeof(vm->hostfwd[0]), rec->hostfwd[i]);
	copy_str(vm->state_file, sizeof(vm->state_file), rec->state_file);
	vm->state_size = rec->state_size;
	vm->suspended_ns = rec->suspended_ns;
	vm->lease_deadline_ns = rec->lease_deadline_ns;
	vm->lease_suspend = rec->lease_suspend;
	vm->exit = vmf_vm_exit_dup(rec->exit);
	vm->resets = rec->exit ? rec->exit->resets : 0;
	vm->n_cgroups = 0;
	for (size_t i = 0; i < rec->n_cgroups && i < VMF_CGROUPS_MAX; i++) {
		copy_str(vm->cgroups[vm->n_cgroups], sizeof(vm->cgroups[0]), rec->cgroups[i]);
		vm->cgroup_oom[vm->n_cgroups++] = i < rec->n_cgroup_oom_kills ? rec->cgroup_oom_kills[i] : 0;
	}
}

int
vmf_cache_put_vm_record(struct vmf_cache *c, struct vmf_vm *vm, enum vmf_vm_state state,
			 struct vmf_error *err)
{
	return vmf_cache_put_vm_record_exit(c, vm, state, vm->exit, err);
}

int
vmf_cache_put_vm_record_exit(struct vmf_cache *c, const struct vmf_vm *vm, enum vmf_vm_state state,
			      const Vmf__Hv__VmExit *exit, struct vmf_error *err)
{
	Vmf__Catalog__VmRecord rec = VMF__CATALOG__VM_RECORD__INIT;
	vmf_hv_state *hv = NULL;
	struct vmf_error serr = {0};
	if (vm->hv && vm->ops->serialize(vm->hv, &hv, &serr) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "cannot serialize its hypervisor state: %s", serr.msg);
	vm_to_record(vm, state, exit, &rec);
	char *fw[VMF_MAX_HOSTFWD];
	for (unsigned i = 0; i < vm->n_hostfwd && i < VMF_MAX_HOSTFWD; i++)
		fw[i] = (char *)vm->hostfwd[i];
	rec.hostfwd = fw;
	rec.n_hostfwd = vm->n_hostfwd;
	rec.net_outbound = vm->net_outbound;
	char *cg[VMF_CGROUPS_MAX];
	uint64_t oom[VMF_CGROUPS_MAX];
	for (unsigned i = 0; i < vm->n_cgroups && i < VMF_CGROUPS_MAX; i++)
		cg[i] = (char *)vm->cgroups[i], oom[i] = vm->cgroup_oom[i];
	rec.cgroups = cg;
	rec.n_cgroups = rec.n_cgroup_oom_kills = vm->n_cgroups;
	rec.cgroup_oom_kills = oom;
	/* A suspended VM has no process: what it resumes from is recorded. */
	rec.hv = hv ? hv : vm->saved_hv;
	/* Disks being attached are recorded once attached (the attach job
	 * writes the record then); those being detached no longer are. */
	Vmf__Catalog__VmDisk disks[VMF_DISK_SLOTS], *dp[VMF_DISK_SLOTS];
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
		const struct vmf_vm_disk *dk = vm->disks[i];
		if (!dk || dk->detaching)
			continue;
		Vmf__Catalog__VmDisk *rd = &disks[rec.n_disks];
		vmf__catalog__vm_disk__init(rd);
		rd->slot = i;
		rd->kind = dk->kind == VMF_DISK_SCRATCH ? VMF__CATALOG__DISK_KIND__DISK_SCRATCH
			   : dk->kind == VMF_DISK_COW ? VMF__CATALOG__DISK_KIND__DISK_COW : VMF__CATALOG__DISK_KIND__DISK_FILE;
		rd->overlay = (char *)dk->overlay;
		rd->path = (char *)dk->path;
		rd->guest_path = (char *)dk->guest_path;
		rd->format = (char *)dk->format;
		rd->fstype = (char *)dk->fstype;
		rd->guest_device = (char *)dk->guest_device;
		rd->read_only = dk->read_only;
		rd->dev = dk->dev;
		rd->ino = dk->ino;
		dp[rec.n_disks++] = rd;
	}
	rec.disks = dp;
	int r = vmf_catalog_vm_put(c->cat, &rec, err);
	if (hv)
		vmf__hv__hypervisor_state__free_unpacked(hv, NULL);
	return r;
}

void
vmf_cache_vm_free(struct vmf_cache *c, struct vmf_vm *vm)
{
	TAILQ_REMOVE(&c->vms, vm, link);
	if (vm->watch)
		event_free(vm->watch);
	if (vm->events)
		event_free(vm->events);
	if (vm->exit)
		vmf__hv__vm_exit__free_unpacked(vm->exit, NULL);
	vmf_agent_free(vm->agent);
	if (vm->hv)
		vm->ops->release(vm->hv);
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++)
		free(vm->disks[i]);
	if (vm->saved_hv)
		vmf__hv__hypervisor_state__free_unpacked(vm->saved_hv, NULL);
	free(vm);
}

const struct vmf_stop_policy *
vmf_cache_stop_policy(const struct vmf_cache *c, const struct vmf_vm *vm)
{
	return vm->pool ? &vm->pool->stop : &c->stop_default;
}

/* "PATH: why" for a disk the guest did not confirm. */
static void
lost(struct vmf_stop_report *rep, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
lost(struct vmf_stop_report *rep, const char *path, const char *fmt, ...)
{
	if (rep->n_lost == VMF_STOP_LOST_MAX)
		return;
	char why[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	snprintf(rep->lost[rep->n_lost++], sizeof(rep->lost[0]), "%s: %s", path, why);
}

int
vmf_cache_guest_stop(struct vmf_cache *c, struct vmf_vm *vm, int mode, bool poweroff, bool scratch,
		     unsigned timeout_ms, struct vmf_stop_report *rep)
{
	(void)c;
	int64_t t0 = vmf_now_ms(), deadline = t0 + timeout_ms;
	struct vmf_agent_flush d[VMF_AGENT_FLUSH_MAX];
	const char *host[VMF_AGENT_FLUSH_MAX];
	size_t n = 0;
	for (unsigned i = 0; i < VMF_DISK_SLOTS && n < VMF_AGENT_FLUSH_MAX; i++) {
		const struct vmf_vm_disk *dk = vm->disks[i];
		/* A scratch volume or overlay lives in the run dir, which a
		 * release removes: its writes matter only to a suspend. */
		if (!dk || dk->read_only || dk->attaching || (!scratch && dk->kind != VMF_DISK_FILE))
			continue;
		memset(&d[n], 0, sizeof(d[n]));
		vmf_disk_serial(i, d[n].serial);
		snprintf(d[n].path, sizeof(d[n].path), "%s", dk->guest_path);
		host[n++] = dk->path;
	}
	if (n == 0 && !poweroff)
		return 0;
	struct vmf_error err = {0};
	struct vmf_agent *a = NULL;
	int r = vmf_agent_open(vm->ops->agent_connect, vm->hv, (int)timeout_ms, &a, &err);
	int64_t left = deadline - vmf_now_ms();
	if (r == 0 && left <= 0)
		r = vmf_err(&err, ETIMEDOUT, "the guest agent did not answer within %u ms", timeout_ms);
	if (r == 0 && poweroff)
		r = vmf_agent_poweroff(a, d, n, timeout_ms / 2, (int)left, &err);
	else if (r == 0)
		r = vmf_agent_flush_disks(a, (enum vmf_agent_flush_mode)mode, d, n, (int)left, &err);
	vmf_agent_free(a);
	if (r == 0 && poweroff) {
		/* The guest powers off once its answer is out: QEMU exits. */
		while (vm->ops->alive(vm->hv) && vmf_now_ms() < deadline)
			poll(NULL, 0, 20);
		if (vm->ops->alive(vm->hv)) {
			rep->forced = true;
			log_vm(VMF_LOG_WARN, vm->id, "the guest did not power off within %u ms; stopping it", timeout_ms);
		}
	}
	if (r < 0) {
		rep->forced = true;
		log_vm(VMF_LOG_WARN, vm->id, "the guest's %s did not complete: %s", poweroff ? "poweroff" : "flush",
		       err.msg);
	}
	for (size_t i = 0; i < n; i++) {
		if (r < 0)
			lost(rep, host[i], "the guest did not confirm its %s within %u ms (%s)", poweroff ? "poweroff" : "flush",
			     timeout_ms, err.msg);
		else if (!d[i].answered)
			lost(rep, host[i], "the guest did not report on it (serial %s)", d[i].serial);
		else if (!d[i].done)
			lost(rep, host[i], "the guest reports: %s", d[i].error[0] ? d[i].error : "not flushed");
		else
			continue;
		log_vm(VMF_LOG_WARN, vm->id, "disk %s may have lost writes: %s", host[i],
		       rep->lost[rep->n_lost - 1] + strlen(host[i]) + 2);
	}
	rep->guest_ms = (uint64_t)(vmf_now_ms() - t0);
	return (int)n;
}

/* Removing a stopped VM's run dir, state file and record.  What the guest
 * built in its share may take long to remove (a chain of 50,000
 * directories: seconds, where the share is no tmpfs of its own): the stop
 * job gives it STOP_RM_MS, and what is left then goes on in a job of its
 * own after the reply (nothing a client could reuse is in it: its links
 * are gone), the VM listed as releasing (busy) meanwhile.  A removal that
 * fails (a mount left in the run dir) keeps the VM and its record
 * (releasing): the tick tries again after 10 s, then twice as long each
 * time up to 5 minutes, and recovery after a restart. */
#define STOP_RM_MS 2000
#define RM_RETRY_FIRST_MS 10000
#define RM_RETRY_MAX_MS 300000

struct stop_job {
	struct vmf_cache *c;
	struct vmf_vm *vm;
	bool remove_links;
	void *reply_to;
	enum vmf_vm_state was;     /* its state before the stop */
	bool dead;                 /* its process had exited (unasked) */
	Vmf__Hv__VmExit *exit;     /* why, read here for a VM that had no report */
	struct vmf_stop_report rep;
	int rm;                    /* 0 removed, 1 not yet, negative failed */
	struct vmf_error rm_err;
};

/* The share's own mount off, the run dir (until deadline: 1 when some is
 * left), then the state file and, once nothing is left, the record. */
static int
remove_vm_files(struct vmf_cache *c, struct vmf_vm *vm, int64_t deadline, struct vmf_error *rm_err)
{
	struct vmf_error err = {0};
	int64_t t0 = vmf_now_ms();
	/* Nothing is removed through a mount, and none is left behind. */
	int r = vm->run_dir[0] ? vmf_share_unmount(vm->run_dir, vm->share_dir, rm_err) : 0;
	if (r == 0 && vm->run_dir[0])
		r = vmf_rm_rf_until(vm->run_dir, deadline, rm_err);
	if (r == 0 && vmf_now_ms() - t0 > 1000)
		log_vm(VMF_LOG_INFO, vm->id, "its run dir took %lld ms to remove", (long long)(vmf_now_ms() - t0));
	/* A suspended VM's saved state, and what a suspend cut short left. */
	if (vm->state_file[0]) {
		char tmp[PATH_MAX + 8];
		snprintf(tmp, sizeof(tmp), "%s.tmp", vm->state_file);
		if (unlink(vm->state_file) < 0 && errno != ENOENT)
			log_vm(VMF_LOG_WARN, vm->id, "removing its saved state %s: %s", vm->state_file, strerror(errno));
		unlink(tmp);
	}
	/* Killed here, the record (releasing, its disks listed) outlives the
	 * files: recovery reaps it, and the disks it held are free again.  A
	 * point of VMs with disks alone: pooled VMs stop here too. */
	for (unsigned i = 0; r == 0 && i < VMF_DISK_SLOTS; i++)
		if (vm->disks[i]) {
			VMF_FAULT("release-files-gone");
			break;
		}
	if (r == 0 && vmf_catalog_vm_delete(c->cat, vm->id, &err) < 0 && err.code != ENOENT)
		log_vm(VMF_LOG_WARN, vm->id, "removing its record: %s", err.msg);
	return r;
}

/* The guest's part of stopping a VM that may hold tenant data: its
 * read-write disks written back (flush), or a clean shutdown (poweroff),
 * within stop_timeout; a pooled VM has none and keeps the fast path. */
static void
guest_stop(struct stop_job *j)
{
	struct vmf_vm *vm = j->vm;
	const struct vmf_stop_policy *pol = vmf_cache_stop_policy(j->c, vm);
	if (!vm->hv || j->dead || !vm->ops->alive(vm->hv))
		return;
	snprintf(j->rep.method, sizeof(j->rep.method), "kill");
	if (j->was != VMF_VM_ASSIGNED || pol->mode == VMF_STOP_KILL)
		return;
	snprintf(j->rep.method, sizeof(j->rep.method), "%s", vmf_stop_mode_name(pol->mode));
	vmf_cache_guest_stop(j->c, vm, VMF_AGENT_UNMOUNT, pol->mode == VMF_STOP_POWEROFF, false, pol->timeout_ms,
			     &j->rep);
}

static void
stop_work(void *arg)
{
	struct stop_job *j = arg;
	struct vmf_vm *vm = j->vm;
	struct vmf_error err = {0};
	/* Recorded before acting: a daemon that dies mid-release finishes the
	 * job when it restarts.  Written here, not on the event loop, whose
	 * every client would otherwise wait on the run dir's file system. */
	if (vmf_cache_put_vm_record(j->c, vm, VMF_VM_RELEASING, &err) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", err.msg);
	/* A VM that died unasked and has no report yet (a pooled one): why,
	 * before its run dir (the serial log) goes. */
	if (j->dead && vm->hv && !vm->exit)
		j->exit = vmf_vm_exit_read(vm->ops, vm->hv, NULL, NULL, 0);
	guest_stop(j);
	if (vm->hv && vm->ops->stop(vm->hv, VMF_STOP_TIMEOUT_MS, &err) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "stopping: %s", err.msg);
	VMF_FAULT("mid-release");
	/* A VM whose run dir is left to remove did the rest before. */
	if (j->remove_links && !vm->rm_pending)
		j->c->hooks.remove_links(j->c->hooks.ctx, vm);
	/* Whatever the stop's cause: a namespace keeps no qdisc of ours. */
	if (vm->net[0] && j->c->hooks.undo_net && !vm->rm_pending)
		j->c->hooks.undo_net(j->c->hooks.ctx, vm);
	j->rm = remove_vm_files(j->c, vm, vmf_now_ms() + STOP_RM_MS, &j->rm_err);
}

struct remove_job {
	struct vmf_cache *c;
	struct vmf_vm *vm;
	int rc;
	struct vmf_error err;
};

static void
remove_work(void *arg)
{
	struct remove_job *j = arg;
	j->rc = remove_vm_files(j->c, j->vm, -1, &j->err);
}

/* The VM is stopped and its links are gone, but its run dir is not: it
 * stays in the list (releasing, nothing running) until a retry removes
 * it. */
static void
keep_for_removal(struct vmf_vm *vm, const struct vmf_error *why)
{
	if (vm->watch) {
		event_free(vm->watch);
		vm->watch = NULL;
	}
	if (vm->events) {
		event_free(vm->events);
		vm->events = NULL;
	}
	vmf_agent_free(vm->agent);
	vm->agent = NULL;
	if (vm->hv) {
		vm->ops->release(vm->hv);
		vm->hv = NULL;
	}
	int64_t wait = RM_RETRY_FIRST_MS;
	for (unsigned i = 0; i < vm->rm_tries && wait < RM_RETRY_MAX_MS; i++)
		wait *= 2;
	if (wait > RM_RETRY_MAX_MS)
		wait = RM_RETRY_MAX_MS;
	vm->rm_tries++;
	vm->rm_pending = true;
	vm->rm_retry_ms = vmf_now_ms() + wait;
	vm->state = VMF_VM_RELEASING;
	vm->busy = false;
	log_vm(VMF_LOG_WARN, vm->id, "stopped, but its run dir is still there (try %u; again in %lld s): %s",
	       vm->rm_tries, (long long)(wait / 1000), why->msg);
}

/* After a removal: the VM forgotten, or kept for a retry (rc < 0). */
static void
removal_done(struct vmf_cache *c, struct vmf_vm *vm, int rc, const struct vmf_error *err)
{
	if (rc < 0 && !c->stopping && !c->loop_done) {
		keep_for_removal(vm, err);
	} else {
		if (rc < 0)
			log_vm(VMF_LOG_WARN, vm->id, "its run dir is left for the next start to remove: %s", err->msg);
		else
			log_vm(VMF_LOG_DEBUG, vm->id, "stopped and removed");
		vmf_cache_vm_free(c, vm);
	}
	c->hooks.settle(c->hooks.ctx);
}

static void
remove_done(void *arg)
{
	struct remove_job *j = arg;
	removal_done(j->c, j->vm, j->rc, &j->err);
	free(j);
}

/* Removes a stopped VM's run dir, state file and record on a worker, then
 * frees it (or keeps it for a retry). */
static void
remove_start(struct vmf_cache *c, struct vmf_vm *vm)
{
	vm->busy = true;
	vm->state = VMF_VM_RELEASING;
	struct remove_job *j = calloc(1, sizeof(*j));
	if (j) {
		j->c = c;
		j->vm = vm;
	}
	if (!j || c->loop_done || vmf_jobs_submit_class(c->jobs, VMF_JOB_POOL, remove_work, remove_done, j) < 0) {
		struct remove_job tmp = { .c = c, .vm = vm };
		remove_work(&tmp);
		free(j);
		removal_done(c, vm, tmp.rc, &tmp.err);
	}
}

void
vmf_cache_retry_removal(struct vmf_cache *c, struct vmf_vm *vm)
{
	remove_start(c, vm);
}

static void
stop_done(void *arg)
{
	struct stop_job *j = arg;
	struct vmf_cache *c = j->c;
	struct vmf_vm *vm = j->vm;
	if (j->exit) {
		log_vm(VMF_LOG_WARN, vm->id, "%s (%s)", j->exit->detail, j->exit->cause);
		if (vm->pool && j->was == VMF_VM_READY)
			snprintf(vm->pool->last_error, sizeof(vm->pool->last_error), "a pooled VM ended: %s",
				 j->exit->detail);
		vm->exit = j->exit;   /* freed with vm */
	}
	/* The reply goes now: the VM is stopped and its links are gone. */
	c->hooks.stopped(c->hooks.ctx, vm, j->reply_to, &j->rep, 0);
	if (j->rm > 0)
		remove_start(c, vm);
	else
		removal_done(c, vm, j->rm, &j->rm_err);
	free(j);
}

void
vmf_cache_destroy_vm(struct vmf_cache *c, struct vmf_vm *vm, bool remove_links, void *reply_to)
{
	enum vmf_vm_state was = vm->state;
	if (vm->state == VMF_VM_READY && vm->pool && vm->pool->ready)
		vm->pool->ready--;
	vm->state = VMF_VM_RELEASING;   /* recorded by stop_work */
	vm->busy = true;
	if (vm->watch)
		event_del(vm->watch);
	if (vm->events)
		event_del(vm->events);
	struct stop_job *j = calloc(1, sizeof(*j));
	if (j) {
		j->c = c;
		j->vm = vm;
		j->remove_links = remove_links;
		j->reply_to = reply_to;
		j->was = was;
		j->dead = vm->dead;
	}
	/* A client waits for a release or a destroy; replacing a pooled VM is
	 * pool work.  Inline when out of memory, or once the loop has ended
	 * (the workers are gone): rather than leak a QEMU. */
	enum vmf_job_class cls = reply_to || c->stopping ? VMF_JOB_INTERACTIVE : VMF_JOB_POOL;
	if (!j || c->loop_done || vmf_jobs_submit_class(c->jobs, cls, stop_work, stop_done, j) < 0) {
		struct stop_job *tmp = calloc(1, sizeof(*tmp));
		struct stop_job fallback = { .c = c, .vm = vm, .remove_links = remove_links, .reply_to = reply_to,
					     .was = was, .dead = vm->dead };
		struct stop_job *use = tmp ? tmp : &fallback;
		if (tmp)
			*tmp = fallback;
		stop_work(use);
		if (use->rm > 0)
			use->rm = remove_vm_files(c, vm, -1, &use->rm_err);
		if (use->rm < 0)
			log_vm(VMF_LOG_WARN, vm->id, "its run dir is left for the next start to remove: %s",
			       use->rm_err.msg);
		free(j);
		if (use->exit)
			vmf__hv__vm_exit__free_unpacked(use->exit, NULL);
		c->hooks.stopped(c->hooks.ctx, vm, reply_to, &use->rep, ENOMEM);
		free(tmp);
		vmf_cache_vm_free(c, vm);
	}
}

/* ---- a VM that died unasked: why, recorded before it shows gone ---- */

struct death_job {
	struct vmf_cache *c;
	struct vmf_vm *vm;          /* the loop's: the worker reads it and owns hv */
	Vmf__Hv__VmExit *exit;
};

Vmf__Hv__VmExit *
vmf_cache_vm_death(struct vmf_cache *c, const struct vmf_vm *vm)
{
	char *cg[VMF_CGROUPS_MAX];
	for (unsigned i = 0; i < vm->n_cgroups; i++)
		cg[i] = (char *)vm->cgroups[i];
	Vmf__Hv__VmExit *e = vm->hv ? vmf_vm_exit_read(vm->ops, vm->hv, cg, vm->cgroup_oom, vm->n_cgroups) : NULL;
	/* The daemon ended it, and says why. */
	char *why = vm->end_why[0] && e ? strdup(vm->end_why) : NULL, *cause = why ? strdup("guest-reset") : NULL;
	if (why && cause) {
		free(e->detail);
		free(e->cause);
		e->detail = why;
		e->cause = cause;
	} else {
		free(why);
		free(cause);
	}
	/* Its record says why before anyone is told it is gone. */
	struct vmf_error err = {0};
	if (vmf_cache_put_vm_record_exit(c, vm, VMF_VM_GONE, e, &err) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", err.msg);
	return e;
}

void
vmf_cache_vm_gone(struct vmf_cache *c, struct vmf_vm *vm, Vmf__Hv__VmExit *e)
{
	(void)c;
	if (vm->watch)
		event_del(vm->watch);
	if (vm->events)
		event_del(vm->events);
	vm->dead = true;
	if (vm->exit)
		vmf__hv__vm_exit__free_unpacked(vm->exit, NULL);
	vm->exit = e;
	vm->state = VMF_VM_GONE;
	log_vm(VMF_LOG_WARN, vm->id, "gone (sandbox %s): %s", vm->sandbox_id, e ? e->detail : "its process exited");
}

static void
death_work(void *arg)
{
	struct death_job *j = arg;
	j->exit = vmf_cache_vm_death(j->c, j->vm);
}

static void
death_done(void *arg)
{
	struct death_job *j = arg;
	struct vmf_cache *c = j->c;
	j->vm->busy = false;
	vmf_cache_vm_gone(c, j->vm, j->exit);
	free(j);
	c->hooks.settle(c->hooks.ctx);
}

void
vmf_cache_vm_exited(struct vmf_cache *c, struct vmf_vm *vm)
{
	if (vm->watch)
		event_del(vm->watch);
	vm->dead = true;
	if (vm->busy || vm->state == VMF_VM_GONE || vm->state == VMF_VM_RELEASING)
		return; /* the job in flight sees vm->dead when it completes */
	log_vm(VMF_LOG_WARN, vm->id, "%s pid %d exited while %s", vm->ops->name, (int)vm->ops->pid(vm->hv),
	       vmf_vm_state_name(vm->state));
	if (vm->events)
		event_del(vm->events);
	if (vm->state == VMF_VM_ASSIGNED) {
		/* Kept, with why, so the runtime learns what happened via status,
		 * inspect or its next request; release cleans up.  Why is read
		 * (exit status, events, OOM, the serial log) on a worker. */
		struct death_job *j = calloc(1, sizeof(*j));
		if (j) {
			j->c = c;
			j->vm = vm;
			vm->busy = true;
			if (c->loop_done || vmf_jobs_submit_class(c->jobs, VMF_JOB_INTERACTIVE, death_work, death_done, j) < 0) {
				death_work(j);
				death_done(j);
			}
			return;
		}
		vm->state = VMF_VM_GONE;
		vmf_cache_record_vm(c, vm);
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
	vmf_cache_destroy_vm(c, vm, false, NULL);
}

/* ---- a VM kept across guest resets (on_guest_reset = keep) ---- */

#define RESET_AGENT_TIMEOUT_MS 60000
#define RESET_STORM 3
#define RESET_STORM_MS 60000

struct reset_job {
	struct vmf_cache *c;
	struct vmf_vm *vm;          /* the loop's: the worker reads it and owns hv */
	unsigned panics;            /* GUEST_PANICKED events of this reboot */
	Vmf__Hv__VmExit *exit;
	struct vmf_error err;
	int rc;
};

/* The guest rebooted in the same VMM: processes, mounts and settings of
 * its old boot are gone.  Its owner's agent connection is closed (a
 * client waiting on it sees EOF, as when the VMM dies), then, once the new
 * boot's agent answers, what the daemon set up at hand-out comes back:
 * the share and the disks mounted, the clock and the hostname set.  Its
 * network configuration is not (the guest's NIC is unconfigured). */
static void
reset_work(void *arg)
{
	struct reset_job *j = arg;
	struct vmf_cache *c = j->c;
	struct vmf_vm *vm = j->vm;
	struct vmf_error *err = &j->err;
	int r = vm->ops->agent_reset ? vm->ops->agent_reset(vm->hv, err)
				     : vmf_err(err, ENOTSUP, "the %s driver cannot close the owner's agent connection",
					       vm->ops->name);
	if (r == 0 && c->hooks.regrant)
		r = c->hooks.regrant(c->hooks.ctx, vm, err);
	struct vmf_agent *a = NULL;
	if (r == 0)
		r = vmf_agent_open(vm->ops->agent_connect, vm->hv, RESET_AGENT_TIMEOUT_MS, &a, err);
	struct vmf_agent_handout ho;
	if (r == 0 && (r = vmf_agent_send_handout(a, vm->sandbox_id, &ho, 10000, err)) == 0)
		r = vmf_agent_recv_handout(a, &ho, 10000, err);
	if (r == 0 && vm->share_link[0] && (vm->ops->capabilities(vm->hv) & VMF_CAP_SHARE_DEVICE))
		r = vmf_agent_mount_share(a, VMF_SHARE_TAG, 10000, err);
	for (unsigned i = 0; r == 0 && i < VMF_DISK_SLOTS; i++) {
		const struct vmf_vm_disk *dk = vm->disks[i];
		if (!dk || dk->attaching || dk->detaching || !dk->guest_path[0])
			continue;
		char serial[VMF_DISK_SERIAL_MAX + 1];
		vmf_disk_serial(i, serial);
		r = vmf_agent_mount_disk(a, serial, dk->guest_path, dk->fstype, dk->read_only, NULL, 0, 10000, err);
		if (r < 0)
			vmf_error_prefix(err, "mounting disk %s at %s again", dk->path, dk->guest_path);
	}
	vmf_agent_free(a);
	/* One reboot raises several RESET events (the firmware resets the
	 * machine again): those of this one are taken here, so that the
	 * owner's port is not made again under the new boot's agent. */
	struct vmf_vmm_events more;
	vm->ops->poll_events(vm->hv, &more);
	j->panics += more.panics;
	j->exit = vmf_vm_exit_reset(vm->ops, vm->hv, vm->resets + 1, j->panics);
	char *d2 = NULL;
	if (r < 0 && j->exit && asprintf(&d2, "%s, but setting it up again failed: %s", j->exit->detail, err->msg) >= 0) {
		free(j->exit->detail);
		j->exit->detail = d2;
	}
	j->rc = r;
	struct vmf_error rerr = {0};
	if (vmf_cache_put_vm_record_exit(c, vm, VMF_VM_ASSIGNED, j->exit ? j->exit : vm->exit, &rerr) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record VM state: %s", rerr.msg);
}

static void
reset_done(void *arg)
{
	struct reset_job *j = arg;
	struct vmf_cache *c = j->c;
	struct vmf_vm *vm = j->vm;
	vm->busy = false;
	vm->resets++;
	if (j->exit) {
		if (vm->exit)
			vmf__hv__vm_exit__free_unpacked(vm->exit, NULL);
		vm->exit = j->exit;
	}
	log_vm(VMF_LOG_WARN, vm->id, "its guest %s and rebooted (sandbox %s, %u resets so far)%s%s",
	       j->panics ? "panicked" : "reset itself", vm->sandbox_id, vm->resets, j->rc < 0 ? "; " : "",
	       j->rc < 0 ? j->err.msg : "");
	free(j);
	if (vm->dead)
		vmf_cache_vm_exited(c, vm);
	else
		vmf_cache_watch_events(c, vm);
	c->hooks.settle(c->hooks.ctx);
}

/* What the VMM said since the last look: a guest reset starts the job
 * above.  On the loop, for an idle VM: the read does not wait. */
static void
take_events(struct vmf_cache *c, struct vmf_vm *vm)
{
	struct vmf_vmm_events ev;
	if (vm->ops->poll_events(vm->hv, &ev) < 0 && vm->events)
		event_del(vm->events);   /* the VMM is gone: its pidfd tells */
	if (!ev.resets && !ev.panics)
		return;
	/* A guest that resets again and again would keep its VM busy (its
	 * owner's release refused): beyond RESET_STORM resets in
	 * RESET_STORM_MS it is ended as on_guest_reset = stop would, and its
	 * exit says why. */
	int64_t now = vmf_now_ms();
	if (vm->reset_window_ms && now - vm->reset_window_ms < RESET_STORM_MS && vm->window_resets >= RESET_STORM) {
		snprintf(vm->end_why, sizeof(vm->end_why), "the guest reset %u times within %d s; the daemon ended it "
			 "(on_guest_reset = keep keeps a VM across a reset, not a reset loop)", vm->window_resets + 1,
			 RESET_STORM_MS / 1000);
		log_vm(VMF_LOG_WARN, vm->id, "%s", vm->end_why);
		if (vm->events)
			event_del(vm->events);
		kill(vm->ops->pid(vm->hv), SIGKILL);   /* its pidfd reports the end */
		return;
	}
	if (!vm->reset_window_ms || now - vm->reset_window_ms >= RESET_STORM_MS) {
		vm->reset_window_ms = now;
		vm->window_resets = 0;
	}
	vm->window_resets++;
	struct reset_job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->c = c;
	j->vm = vm;
	j->panics = ev.panics;
	vm->busy = true;
	if (vm->events)
		event_del(vm->events);
	if (vmf_jobs_submit_class(c->jobs, VMF_JOB_INTERACTIVE, reset_work, reset_done, j) < 0) {
		vm->busy = false;
		free(j);
	}
}

static void
vm_events_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_vm *vm = arg;
	struct vmf_cache *c = vm->owner;
	/* A job owns the monitor now: the tick looks again once it is done. */
	if (vm->busy || vm->dead || vm->state != VMF_VM_ASSIGNED) {
		event_del(vm->events);
		return;
	}
	take_events(c, vm);
}

void
vmf_cache_watch_events(struct vmf_cache *c, struct vmf_vm *vm)
{
	/* What its VMM does is what it was started with, whatever the pool
	 * says now (a VM adopted after the config changed). */
	if (!vm->hv || vm->busy || vm->dead || vm->state != VMF_VM_ASSIGNED || !vm->ops->poll_events || !vm->keep_resets)
		return;
	int fd = vm->ops->event_fd(vm->hv);
	if (fd < 0)
		return;
	/* A resumed VM has a new VMM, and a new monitor. */
	if (vm->events && event_get_fd(vm->events) != fd) {
		event_free(vm->events);
		vm->events = NULL;
	}
	if (!vm->events && !(vm->events = event_new(c->base, fd, EV_READ | EV_PERSIST, vm_events_cb, vm)))
		return;
	if (!event_pending(vm->events, EV_READ, NULL))
		event_add(vm->events, NULL);
	/* What a job read while it held the monitor is queued, not readable. */
	take_events(c, vm);
}

/* A VM's process exited (pidfd readable). */
static void
vm_dead_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_vm *vm = arg;
	vmf_cache_vm_exited(vm->owner, vm);
}

void
vmf_cache_watch_vm(struct vmf_cache *c, struct vmf_vm *vm)
{
	/* The no-pidfd fault stands for a kernel without pidfd_open. */
	int fd = VMF_FAULT_ERR("no-pidfd") ? -1 : vm->ops->watch_fd(vm->hv);
	if (fd < 0)
		return; /* the tick's liveness check covers it (no watch) */
	if (!vm->watch)
		vm->watch = event_new(c->base, fd, EV_READ, vm_dead_cb, vm);
	if (vm->watch)
		event_add(vm->watch, NULL);
}


struct vmf_vm *
vmf_cache_new_vm(struct vmf_cache *c, struct vmf_pool *p)
{
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return NULL;
	vmf_uuid_new(vm->id);
	vm->owner = c;
	vm->ops = p->params.ops;
	vm->pool = p;
	vm->keep_resets = p->stop.keep_on_reset;
	snprintf(vm->template_id, sizeof(vm->template_id), "%s", p->template_id);
	snprintf(vm->run_dir, sizeof(vm->run_dir), "%s/%s", c->vm_root, vm->id);
	snprintf(vm->share_dir, sizeof(vm->share_dir), "%s/%s/share", c->vm_root, vm->id);
	vm->vcpus = p->spec->vcpus;
	vm->memory_mib = p->spec->memory_mib;
	vm->created_ns = vmf_realtime_ns();
	vm->state = VMF_VM_CREATING;
	TAILQ_INSERT_TAIL(&c->vms, vm, link);
	return vm;
}


bool
vmf_vm_has_host_parts(const struct vmf_vm *vm, char *what, size_t n)
{
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
		if (vm->disks[i]) {
			snprintf(what, n, "the disk %s attached", vm->disks[i]->path);
			return true;
		}
	}
	if (vm->net[0]) {
		snprintf(what, n, "network (%s%s%s)", vm->net, vm->netns[0] ? " " : "", vm->netns);
		return true;
	}
	return false;
}

/* ---- bounded logs ----
 * A guest writes its serial console as fast as it likes (11 MB in 20 s
 * under TCG), into the run dir, a tmpfs in production.  QEMU (and the
 * other VMMs) keep writing the file at their own offset; cutting its
 * oldest bytes with a hole leaves the path, the offset and the newest
 * bytes where a reader of the file's end (a VM's death explained) finds
 * them, frees the memory, and needs no process or descriptor per VM: the
 * file itself is the state, so a restarted daemon bounds the logs of the
 * VMs it adopts as it did before.  Its apparent size keeps growing (holes
 * read as zeros): read a log's end, not all of it. */

struct trim_job {
	struct vmf_cache *c;
	int unsupported;              /* errno of a file system that cannot punch holes, 0 */
	char path[PATH_MAX];          /* ... and the file it was */
};

/* Cuts fd's file (dir/name) to its newest keep bytes, page-aligned. */
static void
trim_file(struct trim_job *j, int dfd, const char *dir, const char *name)
{
	int fd = openat(dfd, name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return;
	struct stat st;
	uint64_t keep = j->c->log_keep_bytes;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_blocks * 512 > keep &&
	    (uint64_t)st.st_size > keep) {
		off_t end = (off_t)(((uint64_t)st.st_size - keep) & ~(uint64_t)4095);
		if (end > 0 && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, end) < 0 &&
		    !j->unsupported) {
			j->unsupported = errno;
			snprintf(j->path, sizeof(j->path), "%s/%s", dir, name);
		}
	}
	close(fd);
}

static void
trim_work(void *arg)
{
	struct trim_job *j = arg;
	DIR *root = opendir(j->c->vm_root);
	if (!root)
		return;
	struct dirent *de;
	while ((de = readdir(root))) {
		if (!vmf_valid_uuid(de->d_name))
			continue;
		int dfd = openat(dirfd(root), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		DIR *vd = dfd >= 0 ? fdopendir(dfd) : NULL;
		if (!vd) {
			if (dfd >= 0)
				close(dfd);
			continue;
		}
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s/%s", j->c->vm_root, de->d_name);
		struct dirent *le;
		while ((le = readdir(vd))) {
			size_t n = strlen(le->d_name);
			if (n > 4 && strcmp(le->d_name + n - 4, ".log") == 0)
				trim_file(j, dirfd(vd), dir, le->d_name);
		}
		closedir(vd);
	}
	closedir(root);
}

static void
trim_done(void *arg)
{
	struct trim_job *j = arg;
	struct vmf_cache *c = j->c;
	c->trimming = false;
	if (j->unsupported && !c->trim_warned) {
		c->trim_warned = true;
		log_warn("cannot cut VM log %s to its newest %llu KiB: %s (the run dir's file system must punch "
			 "holes: tmpfs, ext4, xfs, btrfs); VM logs there grow without bound", j->path,
			 (unsigned long long)(c->log_keep_bytes >> 10), strerror(j->unsupported));
	}
	free(j);
	c->hooks.settle(c->hooks.ctx);
}

void
vmf_cache_trim_logs(struct vmf_cache *c)
{
	if (c->trimming || c->stopping || !c->log_keep_bytes)
		return;
	struct trim_job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->c = c;
	c->trimming = true;
	if (vmf_jobs_submit(c->jobs, trim_work, trim_done, j) < 0) {
		c->trimming = false;
		free(j);
	}
}
