/* Restart recovery: reconcile each VM record with what runs (adopt, keep as
 * gone, clean up), then kill VMMs under our run dir that have no record. */
#include <dirent.h>
#include <limits.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "catalog.h"
#include "factory.h"
#include "log.h"
#include "recovery.h"
#include "suspended.h"

static struct vmf_pool *
pool_for(struct vmf_daemon *d, const char *template_id)
{
	struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		if (strcmp(p->template_id, template_id) == 0)
			return p;
	return NULL;
}

/* A daemon killed during a snapshot may have left the VM paused for its
 * copy (snapshot.c's marker): it runs again.  A cont of a running VM is a
 * no-op. */
static void
resume_after_snapshot(struct vmf_vm *vm, bool live)
{
	char marker[PATH_MAX];
	snprintf(marker, sizeof(marker), "%s/%s", vm->run_dir, VMF_SNAPSHOT_MARKER);
	if (access(marker, F_OK) < 0)
		return;
	struct vmf_error err = {0};
	if (live && vm->ops->resume(vm->hv, &err) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "cannot resume after an interrupted snapshot: %s", err.msg);
	else if (live)
		log_vm(VMF_LOG_INFO, vm->id, "resumed: a snapshot of it was interrupted");
	/* The guest let go of its share for the copy: it gets it back. */
	if (live && vm->share_link[0] && (vm->ops->capabilities(vm->hv) & VMF_CAP_SHARE_DEVICE)) {
		struct vmf_agent *a = NULL;
		if (vmf_agent_open(vm->ops->agent_connect, vm->hv, 10000, &a, &err) < 0 ||
		    vmf_agent_mount_share(a, VMF_SHARE_TAG, 10000, &err) < 0)
			log_vm(VMF_LOG_WARN, vm->id, "cannot mount its share again after an interrupted snapshot: %s",
			       err.msg);
		vmf_agent_free(a);
	}
	unlink(marker);
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
		vmf_catalog_vm_delete(d->cache.cat, id, &err);
		return 0;
	}
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		/* Skipping it would make its process look like an orphan. */
		log_vm(VMF_LOG_ERROR, id, "out of memory recovering it");
		return -ENOMEM;
	}
	vmf_vm_from_record(vm, rec);
	vm->owner = &d->cache;
	vm->keep_resets = rec->hv && rec->hv->config && rec->hv->config->on_guest_reset &&
			  strcmp(rec->hv->config->on_guest_reset, "keep") == 0;
	vm->ready_mono_ms = vmf_now_ms();
	vm->pool = pool_for(d, vm->template_id);
	TAILQ_INSERT_TAIL(&d->cache.vms, vm, link);

	/* A VM keeps the driver that started it, even when the daemon is now
	 * configured for another: every later call on it goes through
	 * vm->ops.  Only a pool's own driver makes pooled VMs (below). */
	const struct vmf_hv_ops *ops = rec->hv ? vmf_hv_by_kind(rec->hv->kind) : NULL;
	vm->ops = ops ? ops : d->ops;
	bool live = false;
	/* A suspended VM's record keeps the driver state it resumes from, not
	 * a process: whatever runs under its name is an orphan. */
	bool saved = rec->state == VMF__CATALOG__VM_STATE__VM_SUSPENDED ||
		     rec->state == VMF__CATALOG__VM_STATE__VM_RESUMING;
	if (rec->hv && !ops) {
		log_vm(VMF_LOG_WARN, vm->id, "not adopted: its record names hypervisor kind %d, for which this "
		       "vmfactory has no driver", (int)rec->hv->kind);
	} else if (rec->hv && !saved) {
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
			vmf_cache_watch_vm(&d->cache, vm);
			log_vm(VMF_LOG_INFO, vm->id, "adopted pooled VM (pid %d)", (int)vm->ops->pid(vm->hv));
			return 0;
		}
		break;
	case VMF__CATALOG__VM_STATE__VM_ASSIGNED:
	case VMF__CATALOG__VM_STATE__VM_GONE:
		vm->state = live ? VMF_VM_ASSIGNED : VMF_VM_GONE;
		/* Ended while no daemon ran: what can still be known. */
		if (!live && rec->state == VMF__CATALOG__VM_STATE__VM_ASSIGNED && !vm->exit && rec->hv) {
			char *cg[VMF_CGROUPS_MAX];
			for (unsigned i = 0; i < vm->n_cgroups; i++)
				cg[i] = vm->cgroups[i];
			vm->exit = vmf_vm_exit_unseen(vm->ops->name, rec->hv->pid,
						      rec->hv->qemu && rec->hv->qemu->serial_log ? rec->hv->qemu->serial_log
						      : "", cg, vm->cgroup_oom, vm->n_cgroups);
		}
		if (live)
			vmf_cache_watch_vm(&d->cache, vm);
		resume_after_snapshot(vm, live);
		log_vm(VMF_LOG_INFO, vm->id, "%s VM of sandbox %s", live ? "adopted assigned" : "recorded gone",
		       vm->sandbox_id);
		vmf_cache_record_vm(&d->cache, vm);
		return 0;
	case VMF__CATALOG__VM_STATE__VM_SUSPENDING:
	case VMF__CATALOG__VM_STATE__VM_SUSPENDED:
	case VMF__CATALOG__VM_STATE__VM_RESUMING:
		vm->state = vmf_suspend_recover(d, vm, rec, live);
		if (vm->state == VMF_VM_ASSIGNED) {
			vmf_cache_watch_vm(&d->cache, vm);
		} else if (vm->hv) {
			/* Its process (a suspend cut short after the file was
			 * complete) goes with the orphans. */
			vm->ops->release(vm->hv);
			vm->hv = NULL;
		}
		vmf_cache_record_vm(&d->cache, vm);
		return 0;
	default:
		/* Creating, handing out or releasing when the daemon died: nobody
		 * holds it, it goes. */
		break;
	}
	log_vm(VMF_LOG_INFO, vm->id, "cleaning up VM left %s", rec->state == VMF__CATALOG__VM_STATE__VM_READY
	       ? "ready by a previous run" : "unfinished by a previous run");
	vm->state = VMF_VM_RELEASING;
	vmf_cache_destroy_vm(&d->cache, vm, rec->state == VMF__CATALOG__VM_STATE__VM_HANDING_OUT, NULL);
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
	snprintf(root, sizeof(root), "%s/", d->cache.vm_root);
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
			struct vmf_vm *vm = vmf_cache_find_vm(&d->cache, id);
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

int
vmf_recovery_run(struct vmf_daemon *d, struct vmf_error *err)
{
	int r;
	/* Without every record no running VM can be told from an orphan:
	 * an assigned one would be killed.  Stop before touching any. */
	struct vmf_error lerr = {0};
	if ((r = vmf_catalog_vm_list(d->cache.cat, recover_vm, d, &lerr)) < 0) {
		if (!lerr.msg[0])
			vmf_err(&lerr, -r, "out of memory recovering the VMs");
		r = vmf_err(err, lerr.code, "recovery cannot read the VM records, so the daemon stops without "
			    "stopping or killing any VM: %s", lerr.msg);
		return r;
	}
	kill_orphans(d);
	vmf_suspend_sweep(d);
	return 0;
}
