/* The control socket: accept, check the peer, decode frames, dispatch.
 * Every incoming message is checked before dispatch: the length cap before
 * allocating, unpack must succeed, known version, known type; then one switch. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "factory.h"
#include "frame.h"
#include "log.h"

struct vmf_conn {
	struct vmf_daemon *d;
	struct bufferevent *bev;        /* NULL once the peer is gone */
	unsigned refs;                  /* 1 for the socket + 1 per pending request */
	bool pending;                   /* a request is being served */
	bool close_after_write;
	bool in_read;                   /* read_cb is on the stack */
	pid_t peer_pid;
	uid_t peer_uid;
};

static void conn_unref(struct vmf_conn *c);

uid_t
vmf_control_peer_uid(const struct vmf_conn *c)
{
	return c->peer_uid;
}

bool
vmf_control_connected(const struct vmf_conn *c)
{
	if (!c || !c->bev)
		return false;
	/* Reads are off while a request is served, so the bufferevent has not
	 * seen an EOF: ask the socket whether the peer hung up. */
	struct pollfd p = { .fd = bufferevent_getfd(c->bev), .events = POLLRDHUP };
	return !(poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)));
}

static void
conn_drop_socket(struct vmf_conn *c)
{
	if (c->bev) {
		bufferevent_free(c->bev);
		c->bev = NULL;
		c->d->conns--;
		conn_unref(c);
	}
}

static void
conn_unref(struct vmf_conn *c)
{
	if (--c->refs == 0)
		free(c);
}

/* The three checks a request passes before dispatch, callable on a plain
 * buffer so that tests/fuzz/fuzz_control.c exercises this very code. */
int
vmf_control_frame_len(const uint8_t h[VMF_FRAME_HDR], uint32_t *n, struct vmf_error *err)
{
	*n = vmf_frame_get_len(h);
	if (*n > VMF_CONTROL_MAX_FRAME)
		return vmf_err(err, EMSGSIZE, "request frame of %u bytes exceeds the limit of %u bytes", *n,
			       VMF_CONTROL_MAX_FRAME);
	return 0;
}

int
vmf_control_decode(const uint8_t *buf, size_t n, Vmf__Control__Request **out, struct vmf_error *err)
{
	*out = vmf__control__request__unpack(NULL, n, buf);
	if (!*out)
		return vmf_err(err, EBADMSG, "request frame is not a valid vmfactory request");
	return 0;
}

int
vmf_control_check_version(const Vmf__Control__Request *req, struct vmf_error *err)
{
	if (req->protocol_version < VMF_CONTROL_PROTOCOL_VERSION_MIN || req->protocol_version > VMF_CONTROL_VERSION)
		return vmf_err(err, EPROTO, "protocol version %u is not supported; this daemon speaks versions "
			       "%u to %u", req->protocol_version, VMF_CONTROL_PROTOCOL_VERSION_MIN,
			       VMF_CONTROL_VERSION);
	return 0;
}

static void
send_reply(struct vmf_conn *c, const Vmf__Control__Reply *reply)
{
	if (!c->bev)
		return;
	size_t n = vmf__control__reply__get_packed_size(reply);
	uint8_t *buf = malloc(VMF_FRAME_HDR + n);
	if (!buf) {
		log_error("out of memory for a %zu byte reply; closing the connection", n);
		conn_drop_socket(c);
		return;
	}
	vmf_frame_put_len(buf, (uint32_t)n);
	vmf__control__reply__pack(reply, buf + VMF_FRAME_HDR);
	bufferevent_write(c->bev, buf, VMF_FRAME_HDR + n);
	free(buf);
}

static void read_cb(struct bufferevent *bev, void *arg);

void
vmf_control_reply(struct vmf_conn *c, const Vmf__Control__Reply *reply)
{
	send_reply(c, reply);
	if (c->pending) {
		c->pending = false;
		if (c->bev) {
			bufferevent_enable(c->bev, EV_READ);
			/* Requests that arrived while this one was served; from
			 * inside read_cb its own loop picks them up. */
			if (!c->in_read)
				read_cb(c->bev, c);
		}
		conn_unref(c);
	}
}

void
vmf_control_reply_error(struct vmf_conn *c, int code, const char *msg)
{
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	r.error_code = code > 0 ? code : EIO;
	r.error_message = (char *)msg;
	vmf_control_reply(c, &r);
}

static void
reply_error_and_close(struct vmf_conn *c, int code, const char *msg)
{
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	r.error_code = code;
	r.error_message = (char *)msg;
	send_reply(c, &r);
	c->close_after_write = true;
	if (c->bev)
		bufferevent_disable(c->bev, EV_READ);
}

static void
dispatch(struct vmf_conn *c, Vmf__Control__Request *req)
{
	struct vmf_daemon *d = c->d;
	struct vmf_error err;
	if (vmf_control_check_version(req, &err) < 0) {
		vmf_control_reply_error(c, err.code, err.msg);
		return;
	}
	if (d->stopping && req->body_case != VMF__CONTROL__REQUEST__BODY_STATUS) {
		vmf_control_reply_error(c, ESHUTDOWN, "the daemon is shutting down");
		return;
	}
	switch (req->body_case) {
	case VMF__CONTROL__REQUEST__BODY_STATUS: {
		Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
		vmf_daemon_status(d, c->peer_uid, &r);
		vmf_control_reply(c, &r);
		vmf__control__status_reply__free_unpacked(r.status, NULL);
		break;
	}
	case VMF__CONTROL__REQUEST__BODY_GET_VM:
		vmf_getvm_start(d, c, req->get_vm);
		break;
	case VMF__CONTROL__REQUEST__BODY_RELEASE_VM:
		vmf_release_start(d, c, req->release_vm->vm_id);
		break;
	case VMF__CONTROL__REQUEST__BODY_INSPECT:
		vmf_inspect_start(d, c, req->inspect->vm_id);
		break;
	case VMF__CONTROL__REQUEST__BODY_DESTROY:
		/* It stops every tenant's VMs and the daemon itself. */
		if (!vmf_daemon_peer_admin(d, c->peer_uid)) {
			char msg[160];
			snprintf(msg, sizeof(msg), "permission denied: only root and the daemon's user may destroy "
				 "the daemon; uid %u may not", (unsigned)c->peer_uid);
			vmf_control_reply_error(c, EPERM, msg);
			break;
		}
		vmf_daemon_destroy(d, c, req->destroy->all);
		break;
	default:
		vmf_control_reply_error(c, EINVAL, "unknown request type");
		break;
	}
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct vmf_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	if (c->in_read)
		return;
	/* One request at a time per connection: the next is read after the
	 * reply, so replies stay in request order. */
	c->refs++;
	c->in_read = true;
	while (!c->pending && !c->close_after_write && c->bev) {
		size_t avail = evbuffer_get_length(in);
		if (avail < VMF_FRAME_HDR)
			break;
		uint8_t h[VMF_FRAME_HDR];
		evbuffer_copyout(in, h, sizeof(h));
		uint32_t n;
		struct vmf_error err;
		if (vmf_control_frame_len(h, &n, &err) < 0) {
			log_warn("peer pid %d: %s", (int)c->peer_pid, err.msg);
			reply_error_and_close(c, err.code, err.msg);
			break;
		}
		if (avail < VMF_FRAME_HDR + (size_t)n)
			break;
		evbuffer_drain(in, VMF_FRAME_HDR);
		uint8_t *buf = evbuffer_pullup(in, n);
		Vmf__Control__Request *req;
		int r = vmf_control_decode(buf, n, &req, &err);
		evbuffer_drain(in, n);
		if (r < 0) {
			log_warn("peer pid %d sent an undecodable request of %u bytes", (int)c->peer_pid, n);
			reply_error_and_close(c, err.code, err.msg);
			break;
		}
		c->pending = true;
		c->refs++;
		bufferevent_disable(bev, EV_READ);
		c->d->requests += req->body_case == VMF__CONTROL__REQUEST__BODY_GET_VM;
		dispatch(c, req);
		vmf__control__request__free_unpacked(req, NULL);
	}
	c->in_read = false;
	conn_unref(c);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct vmf_conn *c = arg;
	(void)bev;
	if (c->close_after_write && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		conn_drop_socket(c);
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct vmf_conn *c = arg;
	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		/* A request still being served notices through
		 * vmf_control_connected() and cleans up after itself. */
		conn_drop_socket(c);
	}
}

/* Root, the daemon's own user, and members of the configured group. */
static bool
peer_allowed(struct vmf_daemon *d, const struct ucred *cr)
{
	if (cr->uid == 0 || cr->uid == geteuid())
		return true;
	if (!d->have_group)
		return false;
	if (cr->gid == d->group)
		return true;
	struct passwd *pw = getpwuid(cr->uid);
	if (!pw)
		return false;
	gid_t groups[256];
	int n = 256;
	if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) < 0)
		return false;
	for (int i = 0; i < n; i++)
		if (groups[i] == d->group)
			return true;
	return false;
}

static void
accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	struct vmf_daemon *d = arg;
	struct ucred cr;
	socklen_t cl = sizeof(cr);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0) {
		log_warn("cannot read peer credentials: %s", strerror(errno));
		close(fd);
		return;
	}
	struct vmf_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->d = d;
	c->refs = 1;
	c->peer_pid = cr.pid;
	c->peer_uid = cr.uid;
	c->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		close(fd);
		free(c);
		return;
	}
	d->conns++;
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	if (!peer_allowed(d, &cr)) {
		log_warn("refusing peer pid %d uid %u: not root, the daemon's user or the configured group",
			 (int)cr.pid, (unsigned)cr.uid);
		reply_error_and_close(c, EACCES, "permission denied: your user may not use this vmfactory daemon");
		bufferevent_enable(c->bev, EV_WRITE);
		return;
	}
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

pid_t
vmf_control_probe_peer(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return 0;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	pid_t pid = 0;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		/* The kernel tells us who listens: no protocol round trip needed. */
		struct ucred cr;
		socklen_t cl = sizeof(cr);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0)
			pid = cr.pid;
		else
			pid = -1;
	}
	close(fd);
	return pid;
}

int
vmf_control_listen(struct vmf_daemon *d, struct vmf_error *err)
{
	const char *path = d->opts.socket_path;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return vmf_err(err, ENAMETOOLONG, "socket path %s is too long", path);
	strcpy(sa.sun_path, path);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		if (vmf_mkdir_p(dir, 0755, err) < 0)
			return -err->code;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create socket %s", path);
	/* A leftover socket file nobody answers on is from a dead daemon. */
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			close(fd);
			return vmf_err(err, EEXIST, "%s exists and is not a socket; refusing to replace it", path);
		}
		unlink(path);
	}
	/* Created with 0660 from the start: no window where others may connect. */
	mode_t old = umask(0117);
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0 || listen(fd, 64) < 0) {
		int e = errno;
		close(fd);
		return vmf_err_sys(err, e, "cannot listen on %s", path);
	}
	if (d->have_group && chown(path, (uid_t)-1, d->group) < 0)
		log_warn("cannot give socket %s to group %u: %s", path, (unsigned)d->group, strerror(errno));
	d->listener = evconnlistener_new(d->base, accept_cb, d, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
					 -1, fd);
	if (!d->listener) {
		close(fd);
		unlink(path);
		return vmf_err(err, ENOMEM, "cannot set up the listener on %s", path);
	}
	return 0;
}

void
vmf_control_close(struct vmf_daemon *d)
{
	if (d->listener) {
		evconnlistener_free(d->listener);
		d->listener = NULL;
		unlink(d->opts.socket_path);
	}
}
