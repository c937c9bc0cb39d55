/* Snapshot: an assigned VM's current state becomes a new catalog template
 * (template/template.c, vmf_template_snapshot), on a worker; the VM keeps
 * running, stopped only while its state is copied. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "catalog.h"
#include "factory.h"
#include "limit.h"
#include "log.h"
#include "ops.h"
#include "request.h"
#include "snapindex.h"
#include "text.h"
#include "vminfo.h"

#define AGENT_TIMEOUT_MS 20000

struct snapshot_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	struct vmf_vm *vm;           /* the loop's: the worker uses only its hv and ids */
	struct vmf_template_params params;
	char vm_id[VMF_UUID_STR];
	char template_id[VMF_SHA256_HEX];
	char name[33];
	uid_t owner;                 /* 0: the operator's */
	struct vmf_snap *snap;       /* the index's entry: the loop's, listed as making */
	unsigned memory_mib;
	bool share;                  /* its 9p share is mounted in the guest */
	int64_t start_ms;
	Vmf__Catalog__TemplateRecord *rec;
	struct vmf_snapshot_result res;
	int rc;
	struct vmf_error err;
};

/* Snapshots made at once: each holds a worker and a receiving VMM. */
#define MAX_INFLIGHT 16

/* QEMU refuses to migrate while a 9p share is mounted: the guest lets go of
 * it for the copy and mounts it again after.  *path gets where it was. */
static int
share_umount(struct vmf_agent *a, char *path, size_t n, struct vmf_error *err)
{
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__MountShare m = VMF__AGENT__MOUNT_SHARE__INIT;
	m.tag = (char *)VMF_SHARE_TAG;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_SHARE;
	req.mount_share = &m;
	Vmf__Agent__AgentReply *rep = NULL;
	int r = vmf_agent_call(a, &req, &rep, AGENT_TIMEOUT_MS, err);
	if (r < 0)
		return r;
	snprintf(path, n, "%s", rep->mount->path ? rep->mount->path : "");
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	const char *argv[] = { "umount", path, NULL };
	int code = -1;
	if ((r = vmf_agent_run(a, argv, &code, AGENT_TIMEOUT_MS, err)) < 0)
		return r;
	if (code != 0) {
		char shown[200];
		vmf_escape(path, shown, sizeof(shown), 0);
		return vmf_err(err, EBUSY, "the guest cannot unmount its share at %s (umount exit %d): a "
			       "snapshot needs it unmounted while the VM is copied (no process may use it)",
			       shown, code);
	}
	return 0;
}

static void
snapshot_work(void *arg)
{
	struct snapshot_job *j = arg;
	struct vmf_daemon *d = j->d;
	struct vmf_vm *vm = j->vm;
	struct vmf_error *err = &j->err;
	Vmf__Catalog__TemplateRecord *parent = NULL, *old = NULL;
	struct vmf_agent *a = NULL;
	/* Refused before any work: a name in use, a parent that is gone. */
	struct vmf_error e2;
	int r = vmf_template_find_name(d->cache.cat, j->owner, j->name, &old, &e2);
	if (old)
		vmf__catalog__template_record__free_unpacked(old, NULL);
	if (r == 0) {
		j->rc = vmf_err(err, EEXIST, "template name %s is in use (template rm it first, or choose another)",
				j->name);
		return;
	}
	if (r != -ENOENT) {
		j->rc = vmf_err(err, e2.code, "%s", e2.msg);
		return;
	}
	if ((r = vmf_catalog_template_get(d->cache.cat, j->template_id, &parent, err)) < 0) {
		j->rc = vmf_error_prefix(err, "VM %s: its template %.16s", j->vm_id, j->template_id);
		return;
	}
	char path[256] = "";
	bool unmounted = false;
	if (j->share) {
		/* The guest reopens its port when a host connection ends (the
		 * previous one's, or a restarted daemon's): a request sent in
		 * between is lost, so wait until it answers. */
		r = vmf_agent_open(vm->ops->agent_connect, vm->hv, AGENT_TIMEOUT_MS, &a, err);
		if (r >= 0)
			r = share_umount(a, path, sizeof(path), err);
		unmounted = r >= 0;
	}
	/* While it exists the VM may stand paused by us: a daemon killed then
	 * leaves it for restart recovery, which resumes the VM. */
	char marker[PATH_MAX];
	snprintf(marker, sizeof(marker), "%s/%s", vm->run_dir, VMF_SNAPSHOT_MARKER);
	int mfd = r >= 0 ? open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0600) : -1;
	if (mfd >= 0)
		close(mfd);
	if (r >= 0) {
		struct vmf_snapshot_req q = { .p = &j->params, .vm = vm->hv, .vm_id = j->vm_id, .parent = parent,
					      .name = j->name, .owner = j->owner, .memory_mib = j->memory_mib };
		r = vmf_template_snapshot(d->cache.cat, d->opts.state_dir, d->opts.run_dir, &q, &j->rec, &j->res, err);
	}
	if (unmounted) {
		struct vmf_error me;
		if (vmf_agent_mount_share(a, VMF_SHARE_TAG, AGENT_TIMEOUT_MS, &me) < 0) {
			log_vm(VMF_LOG_WARN, j->vm_id, "cannot mount its share again after the snapshot: %s", me.msg);
			if (r >= 0)
				r = vmf_err(err, me.code, "the snapshot was made, but the VM's share is not mounted again: %s",
					    me.msg);
		}
	}
	unlink(marker);
	vmf_agent_free(a);
	vmf__catalog__template_record__free_unpacked(parent, NULL);
	j->rc = r < 0 ? r : 0;
}

static void
snapshot_done(void *arg)
{
	struct snapshot_job *j = arg;
	struct vmf_daemon *d = j->d;
	vmf_request_vm_back(d, j->vm, NULL);
	if (j->rc == 0) {
		Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
		Vmf__Control__SnapshotReply sr = VMF__CONTROL__SNAPSHOT_REPLY__INIT;
		sr.template_id = j->rec->id;
		sr.name = j->rec->name;
		sr.total_ms = (uint64_t)(vmf_now_ms() - j->start_ms);
		sr.paused_ms = j->res.paused_ms;
		sr.memory_size = j->rec->memory_size;
		for (size_t i = 0; i < j->res.n_dimms; i++)
			sr.memory_size += (uint64_t)j->res.dimms[i].size_mib << 20;
		sr.state_size = j->rec->state_size;
		sr.method = (char *)j->res.method;
		r.body_case = VMF__CONTROL__REPLY__BODY_SNAPSHOT;
		r.snapshot = &sr;
		log_vm(VMF_LOG_INFO, j->vm_id, "snapshot into template %s of uid %u (%.16s) in %llu ms, paused %llu ms (%s)",
		       j->name, (unsigned)j->owner, j->rec->id, (unsigned long long)sr.total_ms,
		       (unsigned long long)sr.paused_ms, j->res.method ? j->res.method : "unknown method");
		vmf_request_reply(j->c, &r);
	} else {
		d->errors++;
		log_vm(VMF_LOG_WARN, j->vm_id, "snapshot into template %s failed: %s", j->name, j->err.msg);
		vmf_request_fail(j->c, j->err.code, j->err.msg);
	}
	/* A template made is the index's (its record taken), even when what
	 * followed failed (the share not mounted again): it is in the catalog. */
	if (j->rec)
		vmf_snap_made(j->snap, j->rec);
	else
		vmf_snap_drop(d, j->snap);
	free(j);
	vmf_daemon_settle(d);
}

static void
snapshot_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__Request *request)
{
	const Vmf__Control__SnapshotRequest *req = request->snapshot;
	const char *name = req->template_ ? req->template_ : "";
	if (!vmf_valid_pool_name(name)) {
		vmf_request_fail(c, EINVAL, "template name is invalid: it must be 1 to 32 letters, digits, "
					"'-' or '_'");
		return;
	}
	struct vmf_vm *vm = vmf_request_vm(d, c, req->vm_id);
	if (!vm)
		return;
	if (vm->state != VMF_VM_ASSIGNED || !vm->hv || vm->dead) {
		char msg[1024], st[900];
		snprintf(msg, sizeof(msg), "VM %s is not assigned and running (it is %s)", vm->id,
			 vmf_vm_state_desc(vm, st, sizeof(st)));
		vmf_request_fail(c, EINVAL, msg);
		return;
	}
	/* An attached disk is a tenant's file: a template carrying it would
	 * give it (or the guest's cached view of it) to every clone, other
	 * tenants' VMs.  A tap in the sandbox's namespace has no state in the
	 * stream: the receiver has the NIC and its hub without a backend, as
	 * every template, and each clone gets its own at its hand-out (the
	 * agent clears this VM's addresses there).  User-mode networking's
	 * slirp state is in the stream, and no clone could load it. */
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
		if (!vm->disks[i])
			continue;
		char msg[2 * PATH_MAX + 300];
		snprintf(msg, sizeof(msg), "VM %s has the disk %s attached; a template cannot carry it, since its "
			 "clones would be other VMs (other tenants') given this VM's file: detach it first "
			 "(vmfactory detach %s --disk %s), then snapshot", vm->id, vm->disks[i]->path, vm->id,
			 vm->disks[i]->guest_path[0] ? vm->disks[i]->guest_path : vm->disks[i]->path);
		vmf_request_fail(c, EBUSY, msg);
		return;
	}
	if (vm->net[0] && strcmp(vm->net, "netns") != 0) {
		char msg[200];
		snprintf(msg, sizeof(msg), "VM %s has user-mode network, whose state (connections, forwards) a "
			 "template cannot carry: snapshot a VM with --netns or without network", vm->id);
		vmf_request_fail(c, EBUSY, msg);
		return;
	}
	/* Names are the owner's: another tenant's of the same name is no
	 * conflict, and no tenant can take the operator's. */
	uid_t peer = vmf_request_peer(c), owner = vmf_snap_owner(d, peer);
	unsigned running = 0;
	const struct vmf_snap *s;
	TAILQ_FOREACH(s, &d->snaps, link) {
		running += s->making;
		if (s->owner == owner && strcmp(s->name, name) == 0) {
			char msg[160];
			snprintf(msg, sizeof(msg), "template name %s is in use%s (template rm it first, or choose another)",
				 name, s->making ? " (a snapshot into it is running)" : s->removing ? " (being removed)" : "");
			vmf_request_fail(c, EEXIST, msg);
			return;
		}
	}
	if (running >= MAX_INFLIGHT) {
		vmf_request_fail(c, EAGAIN, "too many snapshots running; try again");
		return;
	}
	/* What it may take: all the VM's RAM (base and DIMMs) and its device
	 * state, as the space check in vmf_template_snapshot reckons. */
	uint64_t estimate = ((uint64_t)vm->memory_mib << 20) + (16ull << 20);
	struct vmf_error lerr;
	if (vmf_limit_tenant(d, peer, VMF_LIMIT_SNAPSHOTS, estimate, &lerr) < 0) {
		vmf_request_fail(c, lerr.code, lerr.msg);
		return;
	}
	struct snapshot_job *j = calloc(1, sizeof(*j));
	if (j && !(j->snap = vmf_snap_begin(d, owner, name, estimate))) {
		free(j);
		j = NULL;
	}
	if (!j) {
		vmf_request_fail(c, ENOMEM, "out of memory");
		return;
	}
	j->owner = owner;
	j->d = d;
	j->c = c;
	j->vm = vm;
	/* The VM's pool's driver settings; its own driver. */
	struct vmf_pool *p = vm->pool ? vm->pool : TAILQ_FIRST(&d->cache.pools);
	j->params = p->params;
	j->params.ops = vm->ops;
	snprintf(j->vm_id, sizeof(j->vm_id), "%s", vm->id);
	snprintf(j->template_id, sizeof(j->template_id), "%s", vm->template_id);
	snprintf(j->name, sizeof(j->name), "%s", name);
	j->memory_mib = vm->memory_mib;
	j->share = (vm->ops->capabilities(vm->hv) & VMF_CAP_SHARE_DEVICE) && vm->share_link[0];
	j->start_ms = vmf_now_ms();
	vm->busy = true;
	log_vm(VMF_LOG_INFO, vm->id, "snapshot into template %s of uid %u", name, (unsigned)owner);
	if (vmf_jobs_submit(d->cache.jobs, snapshot_work, snapshot_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the snapshot work");
		snapshot_done(j);
	}
}

const struct vmf_op vmf_op_snapshot = {
	.name = "snapshot", .body = VMF__CONTROL__REQUEST__BODY_SNAPSHOT, .start = snapshot_start,
};
