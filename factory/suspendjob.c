/* The suspend and resume jobs, each on a worker that owns the VM (busy)
 * while it runs, as libvirt runs one job per domain: for the Suspend and
 * Resume requests (ops/suspend.c) and for a lease ending in a suspend.
 *
 * Suspend saves the VM's whole state into <state_dir>/suspended/<id>.state
 * and stops its process; resume starts a process that loads it.  The
 * record and the files change in an order that leaves every crash point a
 * state restart recovery (vmf_suspend_recover, suspended.c) finishes or
 * rolls back:
 *
 *   suspend: record SUSPENDING -> unmount the share -> save into
 *            <id>.state.tmp, fsync, rename, fsync the dir -> record
 *            SUSPENDED (no pid) -> stop the process
 *   resume:  record RESUMING (no pid) -> start a process loading the file
 *            -> cont, clock, share, ACLs -> record ASSIGNED -> remove the file
 *
 * Recovery: SUSPENDING with the process alive rolls back (the saved or
 * partial file goes, the VM runs on, assigned); with it dead, a renamed
 * file makes it SUSPENDED, else it is gone.  SUSPENDED and RESUMING are
 * never adopted: a process of theirs is killed as an orphan, and RESUMING
 * is SUSPENDED again (the file is still there).  A file under suspended/
 * that no such record names is removed. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "agent.h"
#include "diskfile.h"
#include "factory.h"
#include "leases.h"
#include "limit.h"
#include "log.h"
#include "net.h"
#include "request.h"
#include "suspended.h"
#include "suspendjob.h"
#include "vminfo.h"

struct suspend_job {
	struct vmf_daemon *d;
	vmf_suspend_done_fn done;    /* on the loop, once the VM is the loop's again */
	void *arg;
	struct vmf_vm *vm;           /* the loop's: the worker touches only snap */
	struct vmf_vm snap;          /* the worker's copy; the done callback applies it */
	bool resume;
	bool share;                  /* the driver has a share device: unmount, mount again */
	bool owner_admin;            /* the owner is root or the daemon's user: no ACLs */
	uid_t peer;                  /* who resumes: its disks reopen under its attach rules */
	bool peer_admin;
	struct vmf_lease_ask lease;  /* resume: the VM's new lease */
	bool frozen;                 /* its read-write disks were frozen (suspend) */
	struct vmf_suspend_result res;
};

/* The driver state a suspended VM resumes from: the handle's, with no
 * process (a pid in a suspended record would be adopted, or taken for a
 * live one). */
static int
saved_hv_of(struct vmf_vm *vm, Vmf__Hv__HypervisorState **out, struct vmf_error *err)
{
	int r = vm->ops->serialize(vm->hv, out, err);
	if (r < 0)
		return r;
	(*out)->pid = 0;
	(*out)->start_time_ticks = 0;
	(*out)->paused = true;
	return 0;
}

/* Sets the guest's clock (it stood still while suspended) and mounts the
 * share again; the VM runs. */
static int
guest_back(struct suspend_job *j, struct vmf_vm *vm, struct vmf_error *err)
{
	struct vmf_agent *a = vmf_suspended_agent_open(vm, err);
	if (!a)
		return -err->code;
	int64_t guest_ns = 0;
	int r = vmf_agent_set_time(a, vmf_realtime_ns(), &guest_ns, VMF_SUSPEND_AGENT_TIMEOUT_MS, err);
	if (r == 0) {
		int64_t off = guest_ns - vmf_realtime_ns();
		vm->clock_error_ms = (double)(off < 0 ? -off : off) / 1e6;
		if (vm->clock_error_ms > 1000)
			r = vmf_err(err, EIO, "the guest clock is %.0f ms off after setting it", vm->clock_error_ms);
	}
	if (r == 0 && j->share)
		r = vmf_agent_mount_share(a, VMF_SHARE_TAG, VMF_SUSPEND_AGENT_TIMEOUT_MS, err);
	vmf_agent_free(a);
	return r;
}

/* User-mode networking is the resuming QEMU's before it loads the state
 * (slirp's state is in it): the same forwards, their ports checked free
 * first for a clear error.  fw points into vm. */
static int
user_net(struct suspend_job *j, const struct vmf_vm *vm, const char **fw, struct vmf_net_backend *nb,
	 struct vmf_error *err)
{
	struct vmf_net_request req = { .user = true, .outbound = vm->net_outbound, .n_hostfwd = vm->n_hostfwd };
	for (unsigned i = 0; i < vm->n_hostfwd; i++) {
		snprintf(req.hostfwd[i], sizeof(req.hostfwd[i]), "%s", vm->hostfwd[i]);
		fw[i] = vm->hostfwd[i];
	}
	*nb = (struct vmf_net_backend){ .tap_fd = -1, .hostfwd = fw, .n_hostfwd = vm->n_hostfwd,
					.outbound = vm->net_outbound };
	/* Under today's config: what a tenant may no longer have, it does not
	 * get back (its forwards were counted when it got them). */
	const struct vmf_daemon_opts *o = &j->d->opts;
	int r = j->owner_admin ? 0 : vmf_net_check_tenant(&req, o->user_net_outbound, o->hostfwd_addresses, 0,
							   UINT_MAX, err);
	if (r == 0)
		r = vmf_net_check_fwd_ports(&req, !j->owner_admin, err);
	return r < 0 ? vmf_error_prefix(err, "user-mode network") : 0;
}

/* A namespace's tap for a resumed VM, plugged into its NIC's hub while it
 * is still paused (the hub is on the command line; a tap has no state in
 * the saved stream).  The old tap went with the suspended QEMU, but the
 * interface's mirror filter stayed: it keeps the interface this VM's while
 * it is suspended (another hand-out finds it mirrored), and is made again
 * here for the new tap.  The guest's addresses are in its RAM. */
static int
net_back(struct suspend_job *j, struct vmf_vm *vm, struct vmf_error *err)
{
	struct vmf_net_backend nb = { .tap_fd = -1 };
	int r;
	if (strcmp(vm->net, "netns") != 0)
		return 0;
	/* The namespace it was handed out in, and still the owner's. */
	uint64_t dev = 0, ino = 0;
	int nsfd = vmf_netns_open(vm->netns, vm->owner_uid, j->owner_admin, &dev, &ino, err);
	if (nsfd < 0)
		return nsfd;
	if (dev != vm->netns_dev || ino != vm->netns_ino) {
		close(nsfd);
		return vmf_err(err, ESTALE, "network namespace %s is not the one the VM was handed out in (it was "
			       "replaced): release the VM", vm->netns);
	}
	struct vmf_error uerr = {0};
	vmf_netns_undo(vm->netns, dev, ino, vm->netns_link, vm->tap, &uerr);
	struct vmf_guest_net gn;
	r = vmf_netns_setup(nsfd, vm->netns, vm->netns_link, vm->tap, &gn, &nb.tap_fd, err);
	close(nsfd);
	if (r < 0)
		return vmf_error_prefix(err, "network namespace %s", vm->netns);
	VMF_FAULT("resume-net");
	r = vm->ops->net_attach(vm->hv, &nb, err);
	close(nb.tap_fd);
	if (r < 0)
		return vmf_error_prefix(err, "network namespace %s", vm->netns);
	return 0;
}

/* ---- suspend ---- */

/* Why the save failed, when it is the state dir's space. */
static void
explain_full(const char *dir, const char *tmp, struct vmf_error *err)
{
	struct statvfs sv;
	struct stat st;
	if (statvfs(dir, &sv) < 0 || (uint64_t)sv.f_bavail * sv.f_frsize >= (1u << 20))
		return;
	uint64_t written = stat(tmp, &st) == 0 ? (uint64_t)st.st_size : 0;
	vmf_err(err, ENOSPC, "no space left in %s: the VM's state did not fit (%llu MiB written when the file "
		"system filled up)", dir, (unsigned long long)(written >> 20));
}

static void
suspend_work(void *arg)
{
	struct suspend_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_vm *vm = &j->snap;
	struct vmf_error *err = &j->res.err;
	int64_t t0 = vmf_monotonic_ns();
	char dir[PATH_MAX], tmp[PATH_MAX + 8];
	snprintf(dir, sizeof(dir), "%s/%s", d->opts.state_dir, VMF_SUSPEND_DIR);
	snprintf(tmp, sizeof(tmp), "%s.tmp", vm->state_file);
	bool unmounted = false, saved = false;
	int fd = -1, r;

	/* First: a daemon dying from here on leaves a record recovery rolls
	 * back (the process still runs) or forward (the file is complete). */
	if ((r = vmf_cache_put_vm_record(&d->cache, vm, VMF_VM_SUSPENDING, err)) < 0) {
		vmf_error_prefix(err, "recording VM %s as suspending", vm->id);
		goto out;
	}
	if ((r = vmf_mkdir_p(dir, 0700, err)) < 0)
		goto rollback;
	/* QEMU refuses to migrate a VM whose guest has its 9p share mounted. */
	if (j->share) {
		struct vmf_agent *a = vmf_suspended_agent_open(vm, err);
		r = a ? vmf_agent_unmount_share(a, VMF_SUSPEND_AGENT_TIMEOUT_MS, err) : -err->code;
		vmf_agent_free(a);
		if (r < 0) {
			vmf_error_prefix(err, "the guest cannot unmount its share");
			goto rollback;
		}
		unmounted = true;
	}
	vmf_suspended_freeze_disks(d, vm, false, &j->res.rep);
	j->frozen = true;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = vmf_err_sys(err, errno, "cannot create %s", tmp);
		goto rollback;
	}
	saved = true;   /* from here the VM is paused by the save */
	r = vm->ops->save_state(vm->hv, fd, err);
	if (r == 0 && fsync(fd) < 0)
		r = vmf_err_sys(err, errno, "cannot write %s", tmp);
	if (r < 0) {
		explain_full(dir, tmp, err);
		goto rollback;
	}
	struct stat st;
	if (fstat(fd, &st) == 0)
		vm->state_size = (uint64_t)st.st_size;
	close(fd);
	fd = -1;
	VMF_FAULT("suspend-saving");
	if (rename(tmp, vm->state_file) < 0) {
		r = vmf_err_sys(err, errno, "cannot rename %s to %s", tmp, vm->state_file);
		goto rollback;
	}
	if ((r = vmf_fsync_dir(dir, err)) < 0)
		goto rollback;
	VMF_FAULT("suspend-saved");
	if ((r = saved_hv_of(vm, &vm->saved_hv, err)) < 0)
		goto rollback;
	vm->suspended_ns = vmf_realtime_ns();
	{
		/* Recorded without its process, which stops next: from here on
		 * the VM is suspended whatever happens to the daemon. */
		struct vmf_vm rec = *vm;
		rec.hv = NULL;
		rec.lease_deadline_ns = 0;
		rec.lease_suspend = false;
		r = vmf_cache_put_vm_record(&d->cache, &rec, VMF_VM_SUSPENDED, err);
	}
	if (r < 0) {
		vmf_error_prefix(err, "recording VM %s as suspended", vm->id);
		goto rollback;
	}
	VMF_FAULT("suspend-recorded");
	/* A suspended VM keeps no lease: its resume may give it a new one. */
	vm->lease_deadline_ns = 0;
	vm->lease_suspend = false;
	struct vmf_error serr = {0};
	if (vm->ops->stop(vm->hv, VMF_STOP_TIMEOUT_MS, &serr) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "stopping its suspended process: %s", serr.msg);
	vm->ops->release(vm->hv);
	vm->hv = NULL;
	j->res.ms = (double)(vmf_monotonic_ns() - t0) / 1e6;
	j->res.rc = 0;
	return;

rollback:
	/* The VM keeps running as it was: no file of the attempt is left. */
	if (fd >= 0)
		close(fd);
	vmf_suspended_remove_files(vm->state_file);
	if (vm->saved_hv) {
		vmf__hv__hypervisor_state__free_unpacked(vm->saved_hv, NULL);
		vm->saved_hv = NULL;
	}
	vm->state_size = 0;
	struct vmf_error rerr = {0};
	if (saved && vm->ops->resume(vm->hv, &rerr) < 0)
		log_vm(VMF_LOG_WARN, vm->id, "resuming it after the failed suspend: %s", rerr.msg);
	if (j->frozen)
		vmf_suspended_freeze_disks(d, vm, true, NULL);
	if (unmounted) {
		struct vmf_agent *a = vmf_suspended_agent_open(vm, &rerr);
		if (!a || vmf_agent_mount_share(a, VMF_SHARE_TAG, VMF_SUSPEND_AGENT_TIMEOUT_MS, &rerr) < 0)
			log_vm(VMF_LOG_WARN, vm->id, "mounting its share again after the failed suspend: %s", rerr.msg);
		vmf_agent_free(a);
	}
	if (saved)
		vmf_suspended_prime_port(vm);
	vm->state_file[0] = '\0';
	if (vmf_cache_put_vm_record(&d->cache, vm, VMF_VM_ASSIGNED, &rerr) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "recording it assigned again: %s", rerr.msg);
out:
	j->res.rc = r;
}

/* ---- resume ---- */

static void
resume_work(void *arg)
{
	struct suspend_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_vm *vm = &j->snap;
	struct vmf_error *err = &j->res.err;
	int64_t t0 = vmf_monotonic_ns();
	int r;

	/* First: a daemon dying from here on leaves the VM suspended (recovery
	 * kills a process this job started). */
	if ((r = vmf_cache_put_vm_record(&d->cache, vm, VMF_VM_RESUMING, err)) < 0) {
		vmf_error_prefix(err, "recording VM %s as resuming", vm->id);
		goto out;
	}
	/* Its disks, opened again as an attach would, and the same files. */
	struct vmf_disk_reopened disks;
	if ((r = vmf_disk_reopen(d, vm, j->peer, j->peer_admin, &disks, err)) < 0)
		goto back;
	int fd = open(vm->state_file, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		vmf_disk_reopened_close(&disks);
		r = vmf_err_sys(err, errno, "cannot open VM %s's saved state %s", vm->id, vm->state_file);
		goto back;
	}
	const char *fw[VMF_MAX_HOSTFWD];
	struct vmf_net_backend nb;
	struct vmf_restore_parts parts = { .disks = disks.specs, .n_disks = disks.n };
	if (strcmp(vm->net, "user") == 0) {
		r = user_net(j, vm, fw, &nb, err);
		parts.net = &nb;
	}
	if (r == 0)
		r = parts.n_disks || parts.net ? vm->ops->restore_state_with(vm->saved_hv, fd, &parts, &vm->hv, err)
					       : vm->ops->restore_state(vm->saved_hv, fd, &vm->hv, err);
	close(fd);
	vmf_disk_reopened_close(&disks);
	if (r < 0)
		goto back;
	if (vm->net[0] && (r = net_back(j, vm, err)) < 0)
		goto back;
	if ((r = vm->ops->resume(vm->hv, err)) < 0)
		goto back;
	VMF_FAULT("resume-running");
	/* Its disks were frozen for the save. */
	vmf_suspended_freeze_disks(d, vm, true, NULL);
	if ((r = guest_back(j, vm, err)) < 0)
		goto back;
	vmf_suspended_prime_port(vm);
	/* New sockets: the owner's ACL on the agent's is granted again. */
	if (!j->owner_admin) {
		const char *const socks[] = { vm->ops->agent_socket };
		r = vmf_sandbox_grant(vm->run_dir, socks, 1, j->share ? vm->share_dir : NULL, vm->owner_uid,
				      d->runas_uid, err);
		if (r < 0)
			goto back;
	}
	char file[PATH_MAX];
	snprintf(file, sizeof(file), "%s", vm->state_file);
	vm->state_file[0] = '\0';
	vm->state_size = 0;
	vm->suspended_ns = 0;
	vmf_lease_apply(vm, &j->lease, vmf_realtime_ns());
	if ((r = vmf_cache_put_vm_record(&d->cache, vm, VMF_VM_ASSIGNED, err)) < 0) {
		snprintf(vm->state_file, sizeof(vm->state_file), "%s", file);
		vmf_error_prefix(err, "recording VM %s as assigned", vm->id);
		goto back;
	}
	VMF_FAULT("resume-recorded");
	unlink(file);
	j->res.ms = (double)(vmf_monotonic_ns() - t0) / 1e6;
	j->res.pss_kib = vmf_proc_pss_kib(vm->ops->pid(vm->hv));
	j->res.rc = 0;
	return;

back:
	/* Suspended as before: the file stays, a process started goes. */
	vm->lease_deadline_ns = 0;
	vm->lease_suspend = false;
	if (vm->hv) {
		struct vmf_error serr = {0};
		vm->ops->stop(vm->hv, VMF_STOP_TIMEOUT_MS, &serr);
		vm->ops->release(vm->hv);
		vm->hv = NULL;
	}
	struct vmf_error rerr = {0};
	if (vmf_cache_put_vm_record(&d->cache, vm, VMF_VM_SUSPENDED, &rerr) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "recording it suspended again: %s", rerr.msg);
out:
	j->res.rc = r;
}

/* ---- on the loop ---- */

static void
job_done(void *arg)
{
	struct suspend_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_vm *vm = j->vm;
	vm->hv = j->snap.hv;
	vm->saved_hv = j->snap.saved_hv;
	vm->clock_error_ms = j->snap.clock_error_ms;
	memcpy(vm->state_file, j->snap.state_file, sizeof(vm->state_file));
	vm->state_size = j->snap.state_size;
	vm->suspended_ns = j->snap.suspended_ns;
	vm->lease_deadline_ns = j->snap.lease_deadline_ns;
	vm->lease_suspend = j->snap.lease_suspend;
	bool ok = j->res.rc == 0;
	if (j->resume) {
		if (ok) {
			vmf__hv__hypervisor_state__free_unpacked(vm->saved_hv, NULL);
			vm->saved_hv = NULL;
			vm->dead = false;
		}
		vm->state = ok ? VMF_VM_ASSIGNED : VMF_VM_SUSPENDED;
	} else {
		vm->state = ok ? VMF_VM_SUSPENDED : VMF_VM_ASSIGNED;
		if (ok && vm->watch) {
			/* Its process is gone, and with it the pidfd watched. */
			event_free(vm->watch);
			vm->watch = NULL;
		}
		vm->dead = false;
	}
	/* Running again (a resume, or a suspend that failed): watched, and a
	 * process that died meanwhile is handled as any VM's death. */
	if (vm->state == VMF_VM_ASSIGNED) {
		vmf_cache_watch_vm(&d->cache, vm);
		if (!vm->ops->alive(vm->hv))
			vm->dead = true;
	}
	vmf_request_vm_back(d, vm, NULL);
	const char *what = j->resume ? "resume" : "suspend";
	if (ok && j->resume)
		log_vm(VMF_LOG_INFO, vm->id, "resumed in %.1f ms, clock error %.3f ms", j->res.ms, vm->clock_error_ms);
	else if (ok)
		log_vm(VMF_LOG_INFO, vm->id, "suspended in %.1f ms: %llu MiB of state in %s", j->res.ms,
		       (unsigned long long)(vm->state_size >> 20), vm->state_file);
	else
		log_vm(VMF_LOG_WARN, vm->id, "%s failed: %s", what, j->res.err.msg);
	j->done(d, vm, &j->res, j->arg);
	free(j);
	vmf_daemon_settle(d);
}

int
vmf_suspend_check(struct vmf_daemon *d, const struct vmf_vm *vm, bool resume, uid_t peer, struct vmf_error *err)
{
	enum vmf_vm_state want = resume ? VMF_VM_SUSPENDED : VMF_VM_ASSIGNED;
	if (vm->state != want || (!resume && (vm->dead || !vm->hv))) {
		char st[900];
		return vmf_err(err, EINVAL, "VM %s is not %s (it is %s)", vm->id, resume ? "suspended" : "assigned",
			       vm->dead && vm->state == VMF_VM_ASSIGNED ? "gone" : vmf_vm_state_desc(vm, st, sizeof(st)));
	}
	if (!vm->ops->save_state || !vm->ops->restore_state)
		return vmf_err(err, ENOTSUP, "VM %s runs on %s, which vmfactory cannot suspend", vm->id, vm->ops->name);
	/* Disks and user-mode networking come back only with a driver that
	 * gives the resuming VMM them before it loads the state (and, for
	 * networking, has a NIC backend to give), a namespace's
	 * tap (it dies with the process) only with one that plugs a backend
	 * into a running VM.  Refused rather than half-resumed. */
	bool has_disks = false;
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++)
		has_disks = has_disks || vm->disks[i];
	bool net_ok = !vm->net[0] || (strcmp(vm->net, "netns") == 0 && vm->ops->net_attach) ||
		      (strcmp(vm->net, "user") == 0 && vm->ops->restore_state_with && vm->ops->net_attach);
	if (!resume && (!net_ok || (has_disks && !vm->ops->restore_state_with))) {
		char what[PATH_MAX + 64];
		if (!net_ok)
			snprintf(what, sizeof(what), "network (%s%s%s)", vm->net, vm->netns[0] ? " " : "", vm->netns);
		else
			vmf_vm_has_host_parts(vm, what, sizeof(what));
		return vmf_err(err, EBUSY, "VM %s has %s, which a suspended %s VM cannot keep yet: %s", vm->id, what,
			       vm->ops->name, !net_ok ? "release the VM instead" : "detach it or release the VM instead");
	}
	if (resume && !vm->saved_hv)
		return vmf_err(err, EIO, "the suspended VM's record has no hypervisor state to resume from");
	/* Its saved state is about all its RAM, in the state dir. */
	if (!resume && vmf_limit_tenant(d, peer, VMF_LIMIT_SUSPENDED, (uint64_t)vm->memory_mib << 20, err) < 0)
		return vmf_error_prefix(err, "cannot suspend VM %s (it stays assigned)", vm->id);
	return 0;
}

void
vmf_suspend_job_start(struct vmf_daemon *d, struct vmf_vm *vm, bool resume, uid_t peer, bool peer_admin,
		      const struct vmf_lease_ask *lease, vmf_suspend_done_fn done, void *arg)
{
	struct suspend_job *j = calloc(1, sizeof(*j));
	if (!j) {
		struct vmf_suspend_result res = { .resume = resume };
		res.rc = vmf_err(&res.err, ENOMEM, "out of memory");
		done(d, vm, &res, arg);
		return;
	}
	j->d = d;
	j->done = done;
	j->arg = arg;
	j->vm = vm;
	j->resume = j->res.resume = resume;
	j->share = d->hv.caps & VMF_CAP_SHARE_DEVICE && vm->share_link[0];
	j->owner_admin = vmf_daemon_peer_admin(d, vm->owner_uid);
	j->peer = peer;
	j->peer_admin = peer_admin;
	if (lease)
		j->lease = *lease;
	if (!resume)
		vmf_suspended_state_path(d, vm->id, vm->state_file, sizeof(vm->state_file));
	vm->state = resume ? VMF_VM_RESUMING : VMF_VM_SUSPENDING;
	vm->busy = true;
	/* The job owns the process: its exit is the job's to see. */
	if (vm->watch)
		event_del(vm->watch);
	j->snap = *vm;
	/* The worker's copy owns it while the job runs. */
	vm->saved_hv = NULL;
	log_vm(VMF_LOG_INFO, vm->id, "%s (sandbox %s)", resume ? "resuming" : "suspending", vm->sandbox_id);
	if (vmf_jobs_submit(d->cache.jobs, resume ? resume_work : suspend_work, job_done, j) < 0) {
		j->res.rc = vmf_err(&j->res.err, ENOMEM, "cannot queue the %s work", resume ? "resume" : "suspend");
		if (!resume)
			vm->state_file[0] = j->snap.state_file[0] = '\0';
		job_done(j);
	}
}
