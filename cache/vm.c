/* The cache's VMs on the loop: the list, their records in the catalog,
 * watching their processes, stopping them on a worker.  The daemon's
 * request handlers use these as the pool engine does. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
vm_to_record(const struct vmf_vm *vm, enum vmf_vm_state state, Vmf__Catalog__VmRecord *rec)
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
	vm->n_hostfwd = 0;
	for (size_t i = 0; i < rec->n_hostfwd && i < VMF_MAX_HOSTFWD; i++)
		copy_str(vm->hostfwd[vm->n_hostfwd++], sizeof(vm->hostfwd[0]), rec->hostfwd[i]);
	copy_str(vm->state_file, sizeof(vm->state_file), rec->state_file);
	vm->state_size = rec->state_size;
	vm->suspended_ns = rec->suspended_ns;
}

int
vmf_cache_put_vm_record(struct vmf_cache *c, struct vmf_vm *vm, enum vmf_vm_state state,
			 struct vmf_error *err)
{
	Vmf__Catalog__VmRecord rec = VMF__CATALOG__VM_RECORD__INIT;
	vmf_hv_state *hv = NULL;
	struct vmf_error serr = {0};
	if (vm->hv && vm->ops->serialize(vm->hv, &hv, &serr) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "cannot serialize its hypervisor state: %s", serr.msg);
	vm_to_record(vm, state, &rec);
	char *fw[VMF_MAX_HOSTFWD];
	for (unsigned i = 0; i < vm->n_hostfwd && i < VMF_MAX_HOSTFWD; i++)
		fw[i] = (char *)vm->hostfwd[i];
	rec.hostfwd = fw;
	rec.n_hostfwd = vm->n_hostfwd;
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
	vmf_agent_free(vm->agent);
	if (vm->hv)
		vm->ops->release(vm->hv);
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++)
		free(vm->disks[i]);
	if (vm->saved_hv)
		vmf__hv__hypervisor_state__free_unpacked(vm->saved_hv, NULL);
	free(vm);
}

/* Removing a stopped VM's run dir, state file and record.  What the guest
 * built in its share may take long to remove (a chain of 50,000
 * directories: seconds): the stop job gives it STOP_RM_MS, and what is
 * left then goes on in a job of its own after the reply (nothing a client
 * could reuse is in it: its links are gone), the VM listed as releasing
 * (busy) meanwhile.  A removal that fails keeps the VM and its record
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
	int rm;                       /* 0 removed, 1 not yet, negative failed */
	struct vmf_error rm_err;
};

/* The run dir (until deadline: 1 when some is left), then the state
 * file and, once nothing is left, the record. */
static int
remove_vm_files(struct vmf_cache *c, struct vmf_vm *vm, int64_t deadline, struct vmf_error *rm_err)
{
	struct vmf_error err = {0};
	int64_t t0 = vmf_now_ms();
	int r = vm->run_dir[0] ? vmf_rm_rf_until(vm->run_dir, deadline, rm_err) : 0;
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
	if (r == 0 && vmf_catalog_vm_delete(c->cat, vm->id, &err) < 0 && err.code != ENOENT)
		log_vm(VMF_LOG_WARN, vm->id, "removing its record: %s", err.msg);
	return r;
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
	/* The reply goes now: the VM is stopped and its links are gone. */
	c->hooks.stopped(c->hooks.ctx, vm, j->reply_to, 0);
	if (j->rm > 0)
		remove_start(c, vm);
	else
		removal_done(c, vm, j->rm, &j->rm_err);
	free(j);
}

void
vmf_cache_destroy_vm(struct vmf_cache *c, struct vmf_vm *vm, bool remove_links, void *reply_to)
{
	if (vm->state == VMF_VM_READY && vm->pool && vm->pool->ready)
		vm->pool->ready--;
	vm->state = VMF_VM_RELEASING;   /* recorded by stop_work */
	vm->busy = true;
	if (vm->watch)
		event_del(vm->watch);
	struct stop_job *j = calloc(1, sizeof(*j));
	if (j) {
		j->c = c;
		j->vm = vm;
		j->remove_links = remove_links;
		j->reply_to = reply_to;
	}
	/* A client waits for a release or a destroy; replacing a pooled VM is
	 * pool work.  Inline when out of memory, or once the loop has ended
	 * (the workers are gone): rather than leak a QEMU. */
	enum vmf_job_class cls = reply_to || c->stopping ? VMF_JOB_INTERACTIVE : VMF_JOB_POOL;
	if (!j || c->loop_done || vmf_jobs_submit_class(c->jobs, cls, stop_work, stop_done, j) < 0) {
		struct stop_job tmp = { .c = c, .vm = vm, .remove_links = remove_links, .reply_to = reply_to };
		stop_work(&tmp);
		if (tmp.rm > 0)
			tmp.rm = remove_vm_files(c, vm, -1, &tmp.rm_err);
		if (tmp.rm < 0)
			log_vm(VMF_LOG_WARN, vm->id, "its run dir is left for the next start to remove: %s", tmp.rm_err.msg);
		free(j);
		c->hooks.stopped(c->hooks.ctx, vm, reply_to, ENOMEM);
		vmf_cache_vm_free(c, vm);
	}
}

void
vmf_cache_vm_exited(struct vmf_cache *c, struct vmf_vm *vm)
{
	if (vm->watch)
		event_del(vm->watch);
	vm->dead = true;
	if (vm->busy || vm->state == VMF_VM_GONE || vm->state == VMF_VM_RELEASING)
		return; /* the job in flight sees vm->dead when it completes */
	log_vm(VMF_LOG_WARN, vm->id, "%s pid %c exited while %s", vm->ops->name, (int)vm->ops->pid(vm->hv),
	       vmf_vm_state_name(vm->state));
	if (vm->state == VMF_VM_ASSIGNED) {
		/* Keep the record so the runtime learns what happened via status
		 * or inspect; release cleans up. */
		vm->ops->alive(vm->hv);
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
		snprintf(vm->pool->last_error, sizeof(vm->pool->last_error), "a pooled VM's %s (pid %c) exited",
			 vm->ops->name, (int)vm->ops->pid(vm->hv));
	}
	vmf_cache_destroy_vm(c, vm, false, NULL);
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
