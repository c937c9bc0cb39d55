/* The control socket: accept, check the peer, decode frames, dispatch.
 * Every incoming message is checked before dispatch: the length cap before
 * allocating, unpack must succeed, known version, known type; then the
 * request table (ops.h) says who serves it.  This file names no request.
 *
 * A local client must not be able to starve the others: connections are
 * capped (max_connections), the one idle longest making room for a new one;
 * running out of descriptors pauses accepting instead of spinning; idle
 * connections and requests that stop half-way time out; replies a client
 * does not read are bounded.  Group membership is asked of NSS on a worker. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"
#include "control.h"
#include "factory.h"
#include "frame.h"
#include "log.h"
#include "ops.h"
#include "pbtext.h"
#include "peercache.h"
#include "sockaddr.h"

/* Replies queued for a client that does not read them: two full-size
 * replies' worth, then the connection goes. */
#define MAX_OUTPUT (2 * (VMF_FRAME_HDR + VMF_CONTROL_MAX_FRAME))
/* Descriptors kept for the daemon's own use per pooled VM (QMP, agent,
 * pidfd, and one for a clone's files), and for everything else. */
#define FDS_PER_VM 4
#define FDS_SPARE 64
#define AUTO_MAX_CONNECTIONS 1024
#define ACCEPT_PAUSE_MS 1000

struct vmf_conn {
	struct vmf_daemon *d;
	struct bufferevent *bev;        /* NULL once the peer is gone */
	struct event *timer;            /* idle / partial-request deadline */
	struct event *next_read;        /* deferred: reads what came while a request was served */
	TAILQ_ENTRY(vmf_conn) link;     /* in ctl->conns while bev is set */
	unsigned refs;                  /* 1 for the socket + 1 per pending request */
	bool pending;                   /* a request is being served */
	bool close_after_write;
	bool in_read;                   /* read_cb is on the stack */
	bool checking;                  /* waiting for the peer check's NSS lookup */
	int64_t active_ms;              /* connected, last request or last reply */
	int64_t partial_ms;             /* first byte of an incomplete request, 0 = none */
	pid_t peer_pid;
	uid_t peer_uid;
};

TAILQ_HEAD(vmf_conn_list, vmf_conn);

struct vmf_control {
	struct vmf_daemon *d;
	struct vmf_conn_list conns;     /* least recently active first */
	unsigned max_conns;
	int reserve_fd;                 /* given up to refuse a client when out of fds */
	struct event *resume;           /* re-enables accepting after a pause */
	bool paused;
	int64_t warned_cap_ms, warned_fds_ms;  /* last warnings: at the cap, out of fds */
	struct vmf_peer_cache peers;
};

static void conn_unref(struct vmf_conn *c);
static void accept_resume(struct vmf_control *ctl);

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
		struct vmf_control *ctl = c->d->ctl;
		bufferevent_free(c->bev);
		c->bev = NULL;
		evtimer_del(c->timer);
		TAILQ_REMOVE(&ctl->conns, c, link);
		c->d->conns--;
		/* A descriptor is free again. */
		if (ctl->paused)
			accept_resume(ctl);
		conn_unref(c);
	}
}

static void
conn_unref(struct vmf_conn *c)
{
	if (--c->refs == 0) {
		event_free(c->timer);
		if (c->next_read)
			event_free(c->next_read);
		free(c);
	}
}

/* Arms the connection's deadline: none while a request is served or the
 * peer check waits for NSS (the daemon is the slow one then); else
 * idle_timeout after its last activity, or frame_timeout after the first
 * byte of a request that has not fully arrived, whichever comes first.  A
 * trickle of bytes does not push the latter back. */
static void
conn_arm(struct vmf_conn *c)
{
	if (!c->bev)
		return;
	if (c->pending || c->checking) {
		evtimer_del(c->timer);
		return;
	}
	const struct vmf_daemon_opts *o = &c->d->opts;
	int64_t deadline = c->active_ms + (int64_t)o->idle_timeout_s * 1000;
	if (c->partial_ms && c->partial_ms + (int64_t)o->frame_timeout_s * 1000 < deadline)
		deadline = c->partial_ms + (int64_t)o->frame_timeout_s * 1000;
	int64_t left = deadline - vmf_now_ms();
	if (left < 0)
		left = 0;
	struct timeval tv = { (time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000 };
	evtimer_add(c->timer, &tv);
}

static void
conn_touch(struct vmf_conn *c)
{
	c->active_ms = vmf_now_ms();
	if (c->bev) {
		TAILQ_REMOVE(&c->d->ctl->conns, c, link);
		TAILQ_INSERT_TAIL(&c->d->ctl->conns, c, link);
	}
}

static void
conn_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_conn *c = arg;
	if (!c->bev || c->pending)
		return;
	const struct vmf_daemon_opts *o = &c->d->opts;
	if (c->partial_ms && vmf_now_ms() >= c->partial_ms + (int64_t)o->frame_timeout_s * 1000)
		log_info("peer pid %d sent part of a request and nothing more for %u s; closing the connection",
			 (int)c->peer_pid, o->frame_timeout_s);
	else
		log_debug("peer pid %d: connection idle for %u s; closing it", (int)c->peer_pid, o->idle_timeout_s);
	conn_drop_socket(c);
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

static bool send_packed(struct vmf_conn *c, const Vmf__Control__Reply *reply);

/* False when the connection was dropped instead. */
static bool
send_reply(struct vmf_conn *c, const Vmf__Control__Reply *reply)
{
	if (!c->bev)
		return false;
	/* Every string of a reply is valid UTF-8 (other languages' protobuf
	 * libraries refuse one that is not): a guest's text, a path a tenant
	 * named, an error cut at its length limit.  Rarely needed, so the
	 * reply is only copied and mended when a string is not. */
	Vmf__Control__Reply *mended = NULL;
	if (!vmf_pb_strings_valid(&reply->base)) {
		size_t m = vmf__control__reply__get_packed_size(reply);
		uint8_t *tmp = malloc(m ? m : 1);
		if (tmp) {
			vmf__control__reply__pack(reply, tmp);
			mended = vmf__control__reply__unpack(NULL, m, tmp);
			free(tmp);
		}
		if (mended) {
			vmf_pb_fix_utf8(&mended->base);
			reply = mended;
		}
	}
	bool ok = send_packed(c, reply);
	if (mended)
		vmf__control__reply__free_unpacked(mended, NULL);
	return ok;
}

static bool
send_packed(struct vmf_conn *c, const Vmf__Control__Reply *reply)
{
	size_t n = vmf__control__reply__get_packed_size(reply);
	struct evbuffer *out = bufferevent_get_output(c->bev);
	if (evbuffer_get_length(out) + VMF_FRAME_HDR + n > MAX_OUTPUT) {
		log_warn("peer pid %d does not read its replies: %zu bytes are queued, and %zu more would exceed "
			 "the limit of %u bytes; closing the connection", (int)c->peer_pid, evbuffer_get_length(out),
			 VMF_FRAME_HDR + n, (unsigned)MAX_OUTPUT);
		conn_drop_socket(c);
		return false;
	}
	uint8_t *buf = malloc(VMF_FRAME_HDR + n);
	if (!buf) {
		log_error("out of memory for a %zu byte reply; closing the connection", n);
		conn_drop_socket(c);
		return false;
	}
	vmf_frame_put_len(buf, (uint32_t)n);
	vmf__control__reply__pack(reply, buf + VMF_FRAME_HDR);
	bufferevent_write(c->bev, buf, VMF_FRAME_HDR + n);
	free(buf);
	conn_touch(c);
	return true;
}

void
vmf_control_reply(struct vmf_conn *c, const Vmf__Control__Reply *reply)
{
	send_reply(c, reply);
	if (c->pending) {
		c->pending = false;
		if (c->bev) {
			bufferevent_enable(c->bev, EV_READ);
			/* Requests that arrived while this one was served: from
			 * inside read_cb its own loop picks them up (and arms);
			 * else the loop reads them next, never the stack of the
			 * done callback that replied (a handler's start must not
			 * run inside another request's job end).  Freeing the
			 * connection cancels it. */
			if (!c->in_read)
				event_active(c->next_read, EV_TIMEOUT, 0);
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
	if (!send_reply(c, &r))
		return;
	c->close_after_write = true;
	bufferevent_disable(c->bev, EV_READ);
}

/* The checks every request passes, in this order (the version before
 * anything, a shutdown before the request's own), then its entry's start. */
static void
dispatch(struct vmf_conn *c, Vmf__Control__Request *req)
{
	struct vmf_daemon *d = c->d;
	const struct vmf_op *op = vmf_op_find(req->body_case);
	struct vmf_error err;
	if (vmf_control_check_version(req, &err) < 0) {
		vmf_control_reply_error(c, err.code, err.msg);
		return;
	}
	if (d->cache.stopping && !(op && (op->flags & VMF_OP_WHILE_STOPPING))) {
		vmf_control_reply_error(c, ESHUTDOWN, "the daemon is shutting down");
		return;
	}
	if (!op) {
		vmf_control_reply_error(c, EINVAL, "unknown request type");
		return;
	}
	if ((op->flags & VMF_OP_ADMIN) && !vmf_daemon_peer_admin(d, c->peer_uid)) {
		char msg[160];
		snprintf(msg, sizeof(msg), "permission denied: only root and the daemon's user may %s; uid %u may not",
			 op->what, (unsigned)c->peer_uid);
		vmf_control_reply_error(c, EPERM, msg);
		return;
	}
	op->start(d, c, req);
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
		c->partial_ms = 0;
		conn_touch(c);
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
		const struct vmf_op *op = vmf_op_find(req->body_case);
		c->d->requests += op && (op->flags & VMF_OP_COUNTED);
		dispatch(c, req);
		vmf__control__request__free_unpacked(req, NULL);
	}
	c->in_read = false;
	/* The clock of a request that has not fully arrived starts once the
	 * daemon would read it: not while the previous one is served. */
	if (c->bev && !c->pending && evbuffer_get_length(in) > 0 && !c->partial_ms)
		c->partial_ms = vmf_now_ms();
	conn_arm(c);
	conn_unref(c);
}

static void
next_read_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct vmf_conn *c = arg;
	if (c->bev && !c->pending)
		read_cb(c->bev, c);
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

/* ---- the peer check ---- */

/* NSS's answer (getpwuid_r + getgrouplist): whether uid's user has group
 * as its primary or a supplementary group.  On a worker: NSS may be LDAP or
 * sssd and hang. */
static bool
user_in_group(uid_t uid, gid_t group)
{
	size_t sz = 16384;
	char *buf = NULL;
	struct passwd pw, *res = NULL;
	for (;;) {
		char *nb = realloc(buf, sz);
		if (!nb)
			break;
		buf = nb;
		int r = getpwuid_r(uid, &pw, buf, sz, &res);
		if (r != ERANGE || sz >= (1u << 20))
			break;
		sz *= 2;
	}
	bool in = false;
	int n = 64;
	gid_t *groups = NULL;
	while (res) {
		gid_t *ng = realloc(groups, (size_t)n * sizeof(*ng));
		if (!ng)
			break;
		groups = ng;
		int m = n;
		if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &m) >= 0) {
			for (int i = 0; i < m && !in; i++)
				in = groups[i] == group;
			break;
		}
		/* -1: the list is longer; m says how long. */
		if (m <= n || m > 65536)
			break;
		n = m;
	}
	free(groups);
	free(buf);
	return in;
}

struct peer_job {
	struct vmf_daemon *d;
	uid_t uid;
	gid_t group;
	bool allowed;
};

static void
conn_admit(struct vmf_conn *c)
{
	c->checking = false;
	c->active_ms = vmf_now_ms();
	if (c->bev)
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	conn_arm(c);
}

static void
conn_refuse_peer(struct vmf_conn *c)
{
	c->refs++;   /* the reply may drop the socket */
	c->checking = false;
	log_warn("refusing peer pid %d uid %u: not root, the daemon's user or the configured group",
		 (int)c->peer_pid, (unsigned)c->peer_uid);
	reply_error_and_close(c, EACCES, "permission denied: your user may not use this vmfactory daemon");
	if (c->bev)
		bufferevent_enable(c->bev, EV_WRITE);
	conn_arm(c);
	conn_unref(c);
}

static void
peer_work(void *arg)
{
	struct peer_job *j = arg;
	j->allowed = user_in_group(j->uid, j->group);
}

/* Every connection of that uid waiting for the answer gets it. */
static void
peer_done(void *arg)
{
	struct peer_job *j = arg;
	struct vmf_control *ctl = j->d->ctl;
	vmf_peer_cache_put(&ctl->peers, j->uid, j->allowed, vmf_now_ms());
	struct vmf_conn *c, *next;
	for (c = TAILQ_FIRST(&ctl->conns); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (c->checking && c->peer_uid == j->uid) {
			if (j->allowed)
				conn_admit(c);
			else
				conn_refuse_peer(c);
		}
	}
	struct vmf_daemon *d = j->d;
	free(j);
	/* A job ended: the daemon's settle, through the hook the cache's
	 * jobs end with too (a shutdown may be waiting for it). */
	d->cache.hooks.settle(d->cache.hooks.ctx);
}

/* Root, the daemon's own user, and members of the configured group: the
 * first three from the credentials, membership from NSS through the cache
 * or a lookup on a worker; until it answers the connection reads nothing. */
static void
peer_check(struct vmf_daemon *d, struct vmf_conn *c, const struct ucred *cr)
{
	struct vmf_control *ctl = d->ctl;
	if (cr->uid == 0 || cr->uid == geteuid() || (d->have_group && cr->gid == d->group)) {
		conn_admit(c);
		return;
	}
	if (!d->have_group) {
		conn_refuse_peer(c);
		return;
	}
	int64_t now = vmf_now_ms();
	switch (vmf_peer_cache_get(&ctl->peers, cr->uid, now)) {
	case VMF_PEER_ALLOWED:
		conn_admit(c);
		return;
	case VMF_PEER_DENIED:
		conn_refuse_peer(c);
		return;
	case VMF_PEER_LOOKING_UP:
		c->checking = true;
		return;
	case VMF_PEER_UNKNOWN:
		break;
	}
	struct peer_job *j = calloc(1, sizeof(*j));
	if (!j) {
		conn_refuse_peer(c);
		return;
	}
	*j = (struct peer_job){ .d = d, .uid = cr->uid, .group = d->group };
	c->checking = true;
	vmf_peer_cache_begin(&ctl->peers, cr->uid, now);
	if (vmf_jobs_submit(d->cache.jobs, peer_work, peer_done, j) < 0) {
		free(j);
		vmf_peer_cache_put(&ctl->peers, cr->uid, false, now - ctl->peers.ttl_ms);  /* expired at once */
		conn_refuse_peer(c);
	}
}

/* ---- accepting ---- */

/* A short error reply written straight to a connection that gets no
 * vmf_conn, then closed: its client learns why. */
static void
refuse_fd(int fd, int code, const char *msg)
{
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	r.error_code = code;
	r.error_message = (char *)msg;
	uint8_t buf[512];
	size_t n = vmf__control__reply__get_packed_size(&r);
	if (VMF_FRAME_HDR + n <= sizeof(buf)) {
		vmf_frame_put_len(buf, (uint32_t)n);
		vmf__control__reply__pack(&r, buf + VMF_FRAME_HDR);
		/* A new socket's buffer is empty: this does not block or cut. */
		(void)!send(fd, buf, VMF_FRAME_HDR + n, MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	close(fd);
}

/* At most one warning per reason every 10 s: a flood must not flood the log. */
static void
warn_busy(struct vmf_control *ctl, int64_t *warned_ms, const char *what)
{
	int64_t now = vmf_now_ms();
	if (*warned_ms && now - *warned_ms < 10000)
		return;
	*warned_ms = now;
	log_warn("%s (%u connections, limit %u); closing idle connections to admit new ones, refusing when "
		 "none is idle", what, ctl->d->conns, ctl->max_conns);
}

/* Closes the connection idle longest (no request in progress; one that
 * sent only part of a request counts as idle) to make room. */
static bool
evict_idle(struct vmf_control *ctl)
{
	struct vmf_conn *c;
	TAILQ_FOREACH(c, &ctl->conns, link)
		if (!c->pending) {
			log_debug("closing the connection of peer pid %d, idle %lld ms, to make room",
				  (int)c->peer_pid, (long long)(vmf_now_ms() - c->active_ms));
			conn_drop_socket(c);
			return true;
		}
	return false;
}

static void
accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	struct vmf_daemon *d = arg;
	struct vmf_control *ctl = d->ctl;
	struct ucred cr;
	socklen_t cl = sizeof(cr);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0) {
		log_warn("cannot read peer credentials: %s", strerror(errno));
		close(fd);
		return;
	}
	if (d->conns >= ctl->max_conns) {
		warn_busy(ctl, &ctl->warned_cap_ms, "the connection limit is reached");
		if (!evict_idle(ctl)) {
			char msg[160];
			snprintf(msg, sizeof(msg), "the daemon is serving its limit of %u connections (max_connections), "
				 "each with a request in progress; try again later", ctl->max_conns);
			refuse_fd(fd, EAGAIN, msg);
			return;
		}
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
	c->active_ms = vmf_now_ms();
	c->timer = evtimer_new(d->cache.base, conn_timeout_cb, c);
	c->next_read = event_new(d->cache.base, -1, 0, next_read_cb, c);
	c->bev = c->timer && c->next_read ? bufferevent_socket_new(d->cache.base, fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
	if (!c->bev) {
		if (c->timer)
			event_free(c->timer);
		if (c->next_read)
			event_free(c->next_read);
		close(fd);
		free(c);
		return;
	}
	d->conns++;
	TAILQ_INSERT_TAIL(&ctl->conns, c, link);
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	/* More than one request frame is never buffered. */
	bufferevent_setwatermark(c->bev, EV_READ, 0, VMF_FRAME_HDR + VMF_CONTROL_MAX_FRAME);
	peer_check(d, c, &cr);
	conn_arm(c);
}

/* Out of descriptors: libevent would call this again at once, for ever
 * (the pending connection keeps the socket readable).  Make progress
 * instead: close the connection idle longest, so the next accept succeeds;
 * else refuse the waiting client through the reserve descriptor (close
 * it, accept, answer, close, reopen: OpenBSD's accept_reserve idea); else,
 * as vmd's control.c does, stop accepting for a second or until a
 * connection closes. */
static void
accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct vmf_daemon *d = arg;
	struct vmf_control *ctl = d->ctl;
	int e = EVUTIL_SOCKET_ERROR();
	if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM) {
		log_warn("accepting on %s: %s; pausing for %d ms", d->opts.socket_path, strerror(e), ACCEPT_PAUSE_MS);
		goto pause;
	}
	warn_busy(ctl, &ctl->warned_fds_ms, e == ENFILE ? "the system is out of file descriptors"
		  : "the daemon is out of file descriptors");
	if (evict_idle(ctl))
		return;
	if (ctl->reserve_fd >= 0) {
		close(ctl->reserve_fd);
		ctl->reserve_fd = -1;
		int fd = accept4(evconnlistener_get_fd(l), NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd >= 0)
			refuse_fd(fd, EMFILE, "the daemon is out of file descriptors; try again later");
		/* A worker may take the freed number first: then pause. */
		ctl->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (fd >= 0 && ctl->reserve_fd >= 0)
			return;
	}
pause:
	if (ctl->paused)
		return;
	evconnlistener_disable(l);
	ctl->paused = true;
	struct timeval tv = { ACCEPT_PAUSE_MS / 1000, (ACCEPT_PAUSE_MS % 1000) * 1000 };
	evtimer_add(ctl->resume, &tv);
}

static void
accept_resume(struct vmf_control *ctl)
{
	evtimer_del(ctl->resume);
	ctl->paused = false;
	if (ctl->reserve_fd < 0)
		ctl->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (ctl->d->listener)
		evconnlistener_enable(ctl->d->listener);
}

static void
resume_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	accept_resume(arg);
}

void
vmf_control_raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
		return;
	rlim_t old = rl.rlim_cur;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
		log_info("raised the open file limit from %llu to its hard limit %llu", (unsigned long long)old,
			 (unsigned long long)rl.rlim_max);
	else
		log_warn("cannot raise the open file limit from %llu to %llu: %s", (unsigned long long)old,
			 (unsigned long long)rl.rlim_max, strerror(errno));
}

/* max_connections, or from the open file limit: what the pooled VMs and
 * the daemon need set aside, then half of the rest (the other half for
 * VMs handed out and clones on demand). */
static unsigned
max_connections(const struct vmf_daemon *d)
{
	struct rlimit rl;
	unsigned long long nofile = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (unsigned long long)rl.rlim_cur : 1024;
	unsigned long long vms = 0;
	const struct vmf_pool *p;
	TAILQ_FOREACH(p, &d->cache.pools, link)
		vms += p->target;
	unsigned long long need = FDS_SPARE + FDS_PER_VM * vms;
	if (d->opts.max_connections) {
		if (d->opts.max_connections + need > nofile)
			log_warn("max_connections %u and %llu pooled VMs may need more than the open file limit of %llu "
				 "descriptors: when they run out, idle connections are closed and accepting pauses",
				 d->opts.max_connections, vms, nofile);
		return d->opts.max_connections;
	}
	unsigned long long n = nofile > need ? (nofile - need) / 2 : 0;
	if (n > AUTO_MAX_CONNECTIONS)
		n = AUTO_MAX_CONNECTIONS;
	return n < 16 ? 16 : (unsigned)n;
}

pid_t
vmf_control_probe_peer(const char *path)
{
	struct sockaddr_un sa;
	if (vmf_unix_addr(&sa, NULL, path, NULL) < 0)
		return 0;
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
	struct sockaddr_un sa;
	int ar = vmf_unix_addr(&sa, NULL, path, err);
	if (ar < 0)
		return ar;
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
	struct vmf_control *ctl = calloc(1, sizeof(*ctl));
	if (ctl) {
		TAILQ_INIT(&ctl->conns);
		ctl->d = d;
		ctl->max_conns = max_connections(d);
		ctl->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		ctl->resume = evtimer_new(d->cache.base, resume_cb, ctl);
		vmf_peer_cache_init(&ctl->peers, VMF_PEER_CACHE_TTL_MS);
		d->ctl = ctl;
	}
	d->listener = ctl && ctl->resume ? evconnlistener_new(d->cache.base, accept_cb, d, LEV_OPT_CLOSE_ON_FREE |
							      LEV_OPT_CLOSE_ON_EXEC, -1, fd) : NULL;
	if (!d->listener) {
		close(fd);
		unlink(path);
		vmf_control_close(d);
		return vmf_err(err, ENOMEM, "cannot set up the listener on %s", path);
	}
	evconnlistener_set_error_cb(d->listener, accept_error_cb);
	log_info("control socket: at most %u connections, idle ones closed after %u s, a request must arrive "
		 "within %u s of its first byte", ctl->max_conns, d->opts.idle_timeout_s, d->opts.frame_timeout_s);
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
	struct vmf_control *ctl = d->ctl;
	if (!ctl)
		return;
	/* Replies still pending were sent by the workers' done callbacks. */
	while (!TAILQ_EMPTY(&ctl->conns))
		conn_drop_socket(TAILQ_FIRST(&ctl->conns));
	if (ctl->resume)
		event_free(ctl->resume);
	if (ctl->reserve_fd >= 0)
		close(ctl->reserve_fd);
	free(ctl);
	d->ctl = NULL;
}
