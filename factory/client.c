/* libvmfactory-client. */
#include "client.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"

struct vmf_client {
	int fd;
	char path[108];
};

int
vmf_client_connect(const char *path, struct vmf_client **out, struct vmf_error *err)
{
	*out = NULL;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return vmf_err(err, ENAMETOOLONG, "socket path %s is too long", path);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create a socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		if (e == ENOENT || e == ECONNREFUSED)
			return vmf_err(err, e, "no vmfactory daemon is answering on %s", path);
		return vmf_err_sys(err, e, "cannot connect to the vmfactory daemon on %s", path);
	}
	struct vmf_client *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return vmf_err(err, ENOMEM, "out of memory");
	}
	c->fd = fd;
	strcpy(c->path, path);
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

int
vmf_client_call(struct vmf_client *c, Vmf__Control__Request *req, Vmf__Control__Reply **reply, int timeout_ms,
		struct vmf_error *err)
{
	*reply = NULL;
	req->protocol_version = VMF_CONTROL_PROTOCOL_VERSION;
	int64_t deadline = timeout_ms < 0 ? -1 : vmf_now_ms() + timeout_ms;
	size_t n = vmf__control__request__get_packed_size(req);
	if (n > VMF_CLIENT_MAX_FRAME)
		return vmf_err(err, EMSGSIZE, "request of %zu bytes exceeds the 1 MiB limit", n);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory");
	vmf__control__request__pack(req, buf);
	int r = vmf_frame_write(c->fd, buf, n, deadline, err);
	free(buf);
	/* A daemon that refused us (EACCES) replied and closed before reading:
	 * its reply is still there to read and says why. */
	bool refused = r == -EPIPE || r == -ECONNRESET;
	if (r < 0 && !refused)
		return vmf_error_prefix(err, "sending to the daemon on %s", c->path);
	struct vmf_error werr = err ? *err : (struct vmf_error){0};
	uint8_t *in;
	size_t len;
	r = vmf_frame_read(c->fd, &in, &len, VMF_CLIENT_MAX_FRAME, refused ? vmf_now_ms() + 1000 : deadline, err);
	if (r < 0 && refused) {
		if (err)
			*err = werr;
		return vmf_error_prefix(err, "sending to the daemon on %s", c->path);
	}
	if (r < 0)
		return vmf_error_prefix(err, "reading the daemon's reply on %s", c->path);
	Vmf__Control__Reply *rep = vmf__control__reply__unpack(NULL, len, in);
	free(in);
	if (!rep)
		return vmf_err(err, EBADMSG, "the daemon on %s sent an undecodable reply of %zu bytes", c->path, len);
	if (rep->error_code) {
		r = vmf_err(err, rep->error_code, "%s",
			    rep->error_message && *rep->error_message ? rep->error_message : "the daemon reports an error");
		vmf__control__reply__free_unpacked(rep, NULL);
		return r;
	}
	*reply = rep;
	return 0;
}

int
vmf_client_get_vm(struct vmf_client *c, const Vmf__Control__GetVMRequest *g, Vmf__Control__Reply **reply,
		  int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	req.body_case = VMF__CONTROL__REQUEST__BODY_GET_VM;
	req.get_vm = (Vmf__Control__GetVMRequest *)g;
	return vmf_client_call(c, &req, reply, timeout_ms, err);
}

int
vmf_client_release_vm(struct vmf_client *c, const char *vm_id, int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__ReleaseVMRequest r = VMF__CONTROL__RELEASE_VMREQUEST__INIT;
	r.vm_id = (char *)vm_id;
	req.body_case = VMF__CONTROL__REQUEST__BODY_RELEASE_VM;
	req.release_vm = &r;
	Vmf__Control__Reply *rep;
	int rc = vmf_client_call(c, &req, &rep, timeout_ms, err);
	if (rc == 0)
		vmf__control__reply__free_unpacked(rep, NULL);
	return rc;
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
	return vmf_client_call(c, &req, reply, timeout_ms, err);
}

int
vmf_client_status(struct vmf_client *c, Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err)
{
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__StatusRequest r = VMF__CONTROL__STATUS_REQUEST__INIT;
	req.body_case = VMF__CONTROL__REQUEST__BODY_STATUS;
	req.status = &r;
	return vmf_client_call(c, &req, reply, timeout_ms, err);
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
	return vmf_client_call(c, &req, reply, timeout_ms, err);
}
