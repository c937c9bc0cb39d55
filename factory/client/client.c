/* libvmfactory-client: blocking request/reply over the control socket.
 * Depends on libc, libprotobuf-c and the framing code only, so that a
 * runtime can link it without the daemon's libraries. */
#include "client.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"
#include "sockaddr.h"

struct vmf_client {
	int fd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

int
vmf_client_connect(const char *path, struct vmf_client **out, struct vmf_error *err)
{
	*out = NULL;
	struct sockaddr_un sa;
	socklen_t salen;
	if (!path || !*path)
		return vmf_err(err, EINVAL, "no vmfactory socket path given");
	int r = vmf_unix_addr(&sa, &salen, path, err);
	if (r < 0)
		return r;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create a socket to reach %s", path);
	if (connect(fd, (struct sockaddr *)&sa, salen) < 0) {
		int e = errno;
		close(fd);
		if (e == ENOENT)
			return vmf_err(err, e, "no vmfactory daemon is answering on %s (no such socket)", path);
		if (e == ECONNREFUSED)
			return vmf_err(err, e, "no vmfactory daemon is answering on %s (connection refused)", path);
		return vmf_err_sys(err, e, "cannot connect to the vmfactory daemon on %s", path);
	}
	struct vmf_client *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return vmf_err(err, ENOMEM, "out of memory for a client of %s", path);
	}
	c->fd = fd;
	memcpy(c->path, sa.sun_path, sizeof(c->path));
	*out = c;
	return 0;
}

void
vmf_client_close(struct vmf_client *c)
{
	if (!c)
		return;
	close(c->fd);
	free(c);
}

/* Reads one Reply frame.  The length is checked against the cap before the
 * payload buffer exists: a hostile or broken peer announcing 4 GiB costs
 * nothing. */
static int
read_reply(struct vmf_client *c, int64_t deadline, Vmf__Control__Reply **out, struct vmf_error *err)
{
	uint8_t *buf;
	size_t n;
	struct vmf_error fe = {0};
	int r = vmf_frame_read(c->fd, &buf, &n, VMF_CLIENT_MAX_FRAME, deadline, &fe);
	if (r == -EMSGSIZE)
		return vmf_err(err, EMSGSIZE, "the daemon on %s announced a reply of %zu bytes, above the limit "
			       "of %u; not read", c->path, n, VMF_CLIENT_MAX_FRAME);
	if (r == -EPIPE && n)
		return vmf_err(err, EPIPE, "the daemon on %s closed the connection in the middle of a "
			       "%zu-byte reply", c->path, n);
	if (r == -EPIPE)
		return vmf_err(err, EPIPE, "the daemon on %s closed the connection without replying", c->path);
	if (r == -ETIMEDOUT && n)
		return vmf_err(err, ETIMEDOUT, "the daemon on %s did not finish its %zu-byte reply in time",
			       c->path, n);
	if (r == -ETIMEDOUT)
		return vmf_err(err, ETIMEDOUT, "the daemon on %s did not reply in time", c->path);
	if (r < 0)
		return vmf_err(err, fe.code, "reading the reply of the daemon on %s: %s", c->path, fe.msg);
	*out = vmf__control__reply__unpack(NULL, n, buf);
	free(buf);
	if (!*out)
		return vmf_err(err, EBADMSG, "the daemon on %s sent a reply of %zu bytes that is not a "
			       "vmfactory reply", c->path, n);
	return 0;
}

uint32_t
vmf_client_request_version(const Vmf__Control__Request *req)
{
	const Vmf__Control__GetVMRequest *g = req->body_case == VMF__CONTROL__REQUEST__BODY_GET_VM ? req->get_vm : NULL;
	const Vmf__Control__ResumeVMRequest *rs =
		req->body_case == VMF__CONTROL__REQUEST__BODY_RESUME_VM ? req->resume_vm : NULL;
	/* A daemon that ignored a lease would never end the VM. */
	if ((g && g->ttl_s) || (rs && rs->ttl_s) || req->body_case == VMF__CONTROL__REQUEST__BODY_LEASE)
		return 5;
	/* A daemon that ignored the network fields would hand out a VM
	 * without the network asked for, or any pool's VM for a template; an
	 * older daemon does not know the snapshot request; one that ignored
	 * the cgroups would hand out a VM without the limits asked for. */
	if (g && g->n_cgroups)
		return 4;
	if (req->body_case == VMF__CONTROL__REQUEST__BODY_SNAPSHOT ||
	    req->body_case == VMF__CONTROL__REQUEST__BODY_TEMPLATE_RM ||
	    (g && ((g->netns && g->netns[0]) || (g->net && g->net[0]) || (g->netns_link && g->netns_link[0]) ||
		   (g->template_ && g->template_[0]))))
		return 3;
	if (g && g->pool && g->pool[0])
		return 2;
	return VMF_CONTROL_PROTOCOL_VERSION_MIN;
}

int
vmf_client_call(struct vmf_client *c, Vmf__Control__Request *req, Vmf__Control__Reply **reply, int timeout_ms,
		struct vmf_error *err)
{
	*reply = NULL;
	req->protocol_version = vmf_client_request_version(req);
	int64_t deadline = timeout_ms < 0 ? -1 : vmf_now_ms() + timeout_ms;
	size_t n = vmf__control__request__get_packed_size(req);
	if (n > VMF_CLIENT_MAX_FRAME)
		return vmf_err(err, EMSGSIZE, "request of %zu bytes exceeds the limit of %u", n, VMF_CLIENT_MAX_FRAME);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory for a request of %zu bytes", n);
	vmf__control__request__pack(req, buf);
	struct vmf_error we = {0};
	int wr = vmf_frame_write(c->fd, buf, n, deadline, &we);
	free(buf);
	/* A daemon that refuses a peer (EACCES) replies and closes without
	 * reading, so the write may fail while the reply saying why is
	 * already waiting: read it before reporting the write error. */
	bool refused = wr == -EPIPE || wr == -ECONNRESET;
	if (wr < 0 && !refused)
		return vmf_err(err, we.code, "sending a request to the daemon on %s: %s", c->path, we.msg);
	Vmf__Control__Reply *rep = NULL;
	int r = read_reply(c, refused ? vmf_now_ms() + 1000 : deadline, &rep, err);
	if (r < 0 && refused)
		return vmf_err(err, we.code, "sending a request to the daemon on %s: %s", c->path, we.msg);
	if (r < 0)
		return r;
	if (rep->error_code != 0) {
		r = vmf_err(err, rep->error_code, "%s", rep->error_message && *rep->error_message
			    ? rep->error_message : "the daemon reports an error without a message");
		vmf__control__reply__free_unpacked(rep, NULL);
		return r;
	}
	*reply = rep;
	return 0;
}

/* Calls and checks the reply carries the body the request asks for, so
 * that callers may dereference it. */
static int
call_expect(struct vmf_client *c, Vmf__Control__Request *req, Vmf__Control__Reply__BodyCase want,
	    const char *what, Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err)
{
	int r = vmf_client_call(c, req, reply, timeout_ms, err);
	if (r < 0)
		return r;
	bool ok = (*reply)->body_case == want;
	switch (want) {
	case VMF__CONTROL__REPLY__BODY_VM: ok = ok && (*reply)->vm; break;
	case VMF__CONTROL__REPLY__BODY_INSPECT: ok = ok && (*reply)->inspect && (*reply)->inspect->vm; break;
	case VMF__CONTROL__REPLY__BODY_STATUS: ok = ok && (*reply)->status; break;
	case VMF__CONTROL__REPLY__BODY_DESTROY: ok = ok && (*reply)->destroy; break;
	case VMF__CONTROL__REPLY__BODY_RELEASE: ok = ok && (*reply)->release; break;
	case VMF__CONTROL__REPLY__BODY_DISK: ok = ok && (*reply)->disk; break;
	case VMF__CONTROL__REPLY__BODY_SNAPSHOT: ok = ok && (*reply)->snapshot; break;
	case VMF__CONTROL__REPLY__BODY_TEMPLATE_RM: ok = ok && (*reply)->template_rm; break;
	default: ok = false; break;
	}
	if (!ok) {
		int got = (int)(*reply)->body_case;
		vmf__control__reply__free_unpacked(*reply, NULL);
		*reply = NULL;
		return vmf_err(err, EBADMSG, "the daemon on %s answered %s without its result (reply body %d)",
			       c->path, what, got);
	}
	return 0;
}

int
vmf_client_get_vm(struct vmf_client *c, const Vmf__Control__GetVMRequest *g, Vmf__Control__Reply **reply,
		  int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	req.body_case = VMF__CONTROL__REQUEST__BODY_GET_VM;
	/* pack only reads it */
	req.get_vm = (Vmf__Control__GetVMRequest *)g;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_VM, "GetVM", reply, timeout_ms, err);
}

int
vmf_client_release(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
		   struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__ReleaseVMRequest r = VMF__CONTROL__RELEASE_VMREQUEST__INIT;
	r.vm_id = (char *)vm_id;
	req.body_case = VMF__CONTROL__REQUEST__BODY_RELEASE_VM;
	req.release_vm = &r;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_RELEASE, "ReleaseVM", reply, timeout_ms, err);
}

int
vmf_client_release_vm(struct vmf_client *c, const char *vm_id, int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Reply *rep;
	int rc = vmf_client_release(c, vm_id, &rep, timeout_ms, err);
	if (rc == 0)
		vmf__control__reply__free_unpacked(rep, NULL);
	return rc;
}

/* Suspend and resume answer the VM's VmInfo. */
static int
suspend_resume(struct vmf_client *c, const char *vm_id, bool resume, uint32_t ttl_s, const char *on_expiry,
	       Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__SuspendVMRequest s = VMF__CONTROL__SUSPEND_VMREQUEST__INIT;
	Vmf__Control__ResumeVMRequest r = VMF__CONTROL__RESUME_VMREQUEST__INIT;
	s.vm_id = r.vm_id = (char *)vm_id;
	r.ttl_s = ttl_s;
	r.on_expiry = (char *)(on_expiry ? on_expiry : "");
	if (resume) {
		req.body_case = VMF__CONTROL__REQUEST__BODY_RESUME_VM;
		req.resume_vm = &r;
	} else {
		req.body_case = VMF__CONTROL__REQUEST__BODY_SUSPEND_VM;
		req.suspend_vm = &s;
	}
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_VM, resume ? "ResumeVM" : "SuspendVM", reply,
			   timeout_ms, err);
}

int
vmf_client_suspend_vm(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
		      struct vmf_error *err)
{
	return suspend_resume(c, vm_id, false, 0, NULL, reply, timeout_ms, err);
}

int
vmf_client_resume_vm(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
		     struct vmf_error *err)
{
	return suspend_resume(c, vm_id, true, 0, NULL, reply, timeout_ms, err);
}

int
vmf_client_resume_vm_lease(struct vmf_client *c, const char *vm_id, uint32_t ttl_s, const char *on_expiry,
			   Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err)
{
	return suspend_resume(c, vm_id, true, ttl_s, on_expiry, reply, timeout_ms, err);
}

int
vmf_client_lease(struct vmf_client *c, const char *vm_id, uint32_t ttl_s, const char *on_expiry,
		 Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__LeaseRequest r = VMF__CONTROL__LEASE_REQUEST__INIT;
	r.vm_id = (char *)vm_id;
	r.ttl_s = ttl_s;
	r.on_expiry = (char *)(on_expiry ? on_expiry : "");
	req.body_case = VMF__CONTROL__REQUEST__BODY_LEASE;
	req.lease = &r;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_VM, "Lease", reply, timeout_ms, err);
}

int
vmf_client_inspect(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
		   struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__InspectRequest r = VMF__CONTROL__INSPECT_REQUEST__INIT;
	r.vm_id = (char *)vm_id;
	req.body_case = VMF__CONTROL__REQUEST__BODY_INSPECT;
	req.inspect = &r;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_INSPECT, "Inspect", reply, timeout_ms, err);
}

int
vmf_client_attach(struct vmf_client *c, const Vmf__Control__AttachRequest *r, Vmf__Control__Reply **reply,
		  int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	req.body_case = VMF__CONTROL__REQUEST__BODY_ATTACH;
	req.attach = (Vmf__Control__AttachRequest *)r;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_DISK, "Attach", reply, timeout_ms ? timeout_ms : 60000,
			   err);
}

int
vmf_client_detach(struct vmf_client *c, const char *vm_id, const char *path, Vmf__Control__Reply **reply,
		  int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__DetachRequest r = VMF__CONTROL__DETACH_REQUEST__INIT;
	r.vm_id = (char *)vm_id;
	r.path = (char *)path;
	req.body_case = VMF__CONTROL__REQUEST__BODY_DETACH;
	req.detach = &r;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_DISK, "Detach", reply, timeout_ms ? timeout_ms : 60000,
			   err);
}

int
vmf_client_get_vm_with_disks(struct vmf_client *c, const Vmf__Control__GetVMRequest *req,
			     Vmf__Control__AttachRequest *const *attach, size_t n, Vmf__Control__Reply **reply,
			     int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Reply *vr;
	int rc = vmf_client_get_vm(c, req, &vr, timeout_ms, err);
	if (rc < 0 || n == 0) {
		*reply = rc < 0 ? NULL : vr;
		return rc;
	}
	Vmf__Control__VmInfo *vm = vr->vm;
	Vmf__Control__DiskInfo **disks = realloc(vm->disks, (vm->n_disks + n) * sizeof(*disks));
	if (!disks)
		rc = vmf_err(err, ENOMEM, "out of memory");
	else
		vm->disks = disks;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		Vmf__Control__Reply *ar;
		attach[i]->vm_id = vm->id;
		rc = vmf_client_attach(c, attach[i], &ar, timeout_ms, err);
		if (rc < 0) {
			vmf_error_prefix(err, "VM %s released again: %s %s", vm->id,
					 attach[i]->scratch_mib ? "scratch volume for" : "disk",
					 attach[i]->scratch_mib ? attach[i]->guest_path : attach[i]->path);
			break;
		}
		/* The attach reply's disk moves into the VM's record. */
		vm->disks[vm->n_disks++] = ar->disk;
		ar->disk = NULL;
		ar->body_case = VMF__CONTROL__REPLY__BODY__NOT_SET;
		vmf__control__reply__free_unpacked(ar, NULL);
	}
	if (rc < 0) {
		struct vmf_error e2 = {0};
		vmf_client_release_vm(c, vm->id, timeout_ms, &e2);
		vmf__control__reply__free_unpacked(vr, NULL);
		*reply = NULL;
		return rc;
	}
	*reply = vr;
	return 0;
}

int
vmf_client_snapshot(struct vmf_client *c, const char *vm_id, const char *template_name, Vmf__Control__Reply **reply,
		    int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__SnapshotRequest r = VMF__CONTROL__SNAPSHOT_REQUEST__INIT;
	r.vm_id = (char *)vm_id;
	r.template_ = (char *)template_name;
	req.body_case = VMF__CONTROL__REQUEST__BODY_SNAPSHOT;
	req.snapshot = &r;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_SNAPSHOT, "Snapshot", reply, timeout_ms, err);
}

int
vmf_client_template_rm(struct vmf_client *c, const char *template_name, Vmf__Control__Reply **reply, int timeout_ms,
		       struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__TemplateRmRequest r = VMF__CONTROL__TEMPLATE_RM_REQUEST__INIT;
	r.template_ = (char *)template_name;
	req.body_case = VMF__CONTROL__REQUEST__BODY_TEMPLATE_RM;
	req.template_rm = &r;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_TEMPLATE_RM, "TemplateRm", reply, timeout_ms, err);
}

int
vmf_client_status(struct vmf_client *c, Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__StatusRequest r = VMF__CONTROL__STATUS_REQUEST__INIT;
	req.body_case = VMF__CONTROL__REQUEST__BODY_STATUS;
	req.status = &r;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_STATUS, "Status", reply, timeout_ms, err);
}

int
vmf_client_destroy(struct vmf_client *c, int all, Vmf__Control__Reply **reply, int timeout_ms,
		   struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__DestroyRequest r = VMF__CONTROL__DESTROY_REQUEST__INIT;
	r.all = all != 0;
	req.body_case = VMF__CONTROL__REQUEST__BODY_DESTROY;
	req.destroy = &r;
	return call_expect(c, &req, VMF__CONTROL__REPLY__BODY_DESTROY, "Destroy", reply, timeout_ms, err);
}
