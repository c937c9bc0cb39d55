/* HTTP/1.1 for the gateway: libmicrohttpd driven from the event loop (its
 * epoll descriptor and its timeout are events of ours; it starts no thread).
 *
 * Why libmicrohttpd and not libevent's evhttp: evhttp in Debian 12
 * (libevent 2.1) reads every request body whole into memory before the
 * handler sees the request, answers a body over its limit with a fixed
 * HTML page (E2B clients expect {"code", "message"}), and has no
 * connection limit (evhttp_set_max_connections is 2.2).  libmicrohttpd
 * gives the handler the headers first (a refusal goes out before any body
 * is read, the body comes in pieces it may drop or keep), limits
 * connections in total and memory per connection, times out idle ones,
 * and pulls a streamed reply only as fast as the socket takes it.
 *
 * What a network client can do here, and its bound:
 *   - open connections: at most max_connections; each holds at most 64 KiB
 *     of headers and write buffer (MHD's per-connection pool);
 *   - send slowly or nothing: a connection without progress for
 *     idle_timeout is closed;
 *   - send a large body: a body over the request's cap is read and dropped
 *     (up to 64 MiB, then the connection is closed) and answered 413;
 *     an unauthenticated request's body is never kept;
 *   - read a stream slowly: a stream buffers at most GW_STREAM_HIGH plus
 *     one message before its producer (a guest process) is held; a client
 *     that takes nothing for idle_timeout is dropped. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gw.h"
#include "log.h"

#define CONN_MEMORY (64u * 1024u)
#define DISCARD_MAX (64u * 1024u * 1024u)
#define MAX_EXTRA_HEADERS 4

struct gw_http {
	struct gw *gw;
	struct MHD_Daemon *mhd;
	int listen_fd;
	struct event *ev_io, *ev_timer, *ev_kick;
	char addr[80];
	struct gw_req *deferred;     /* waiting for a job: answered 503 at stop */
	struct gw_stream *streams;
};

struct gw_req {
	struct gw_http *h;
	struct MHD_Connection *conn;
	const char *method, *url;
	bool envd;
	struct gw_key *key;
	struct gw_sandbox *sb;
	size_t cap, len;
	char *body;
	bool too_large, dispatched, deferred, suspended, replied, queued;
	uint64_t discarded;
	struct MHD_Response *resp;
	unsigned status;
	struct gw_stream *stream;
	char *xh_name[MAX_EXTRA_HEADERS], *xh_value[MAX_EXTRA_HEADERS];
	unsigned n_xh;
	struct gw_req *dnext, **dprev;
};

struct gw_stream {
	struct gw_http *h;
	struct gw_req *r;            /* NULL once the request is done */
	struct MHD_Connection *conn;
	struct evbuffer *out;
	bool suspended, ended, drain_wanted;
	struct gw_stream_owner owner;
	struct event *idle, *drain;
	void *idle_data;
	size_t idle_len;
	unsigned idle_ms;
	struct gw_stream *next, **prev;
};

static void kick(struct gw_http *h);

/* ---- the server inside the loop ---- */

static void
run_mhd(struct gw_http *h)
{
	if (!h->mhd)
		return;
	MHD_run(h->mhd);
	MHD_UNSIGNED_LONG_LONG t;
	if (MHD_get_timeout(h->mhd, &t) == MHD_YES) {
		struct timeval tv = { .tv_sec = (time_t)(t / 1000), .tv_usec = (suseconds_t)(t % 1000) * 1000 };
		evtimer_add(h->ev_timer, &tv);
	} else {
		evtimer_del(h->ev_timer);
	}
}

static void
on_mhd(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	run_mhd(arg);
}

/* After a resume: MHD must run before the loop sleeps again. */
static void
kick(struct gw_http *h)
{
	event_active(h->ev_kick, EV_TIMEOUT, 0);
}

static void
resume(struct gw_req *r)
{
	if (r->suspended) {
		r->suspended = false;
		MHD_resume_connection(r->conn);
		kick(r->h);
	}
}

/* ---- requests ---- */

const char *
gw_req_method(const struct gw_req *r)
{
	return r->method;
}

const char *
gw_req_path(const struct gw_req *r)
{
	return r->url;
}

const char *
gw_req_header(struct gw_req *r, const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *
gw_req_query(struct gw_req *r, const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

struct each {
	const char *name;
	void (*fn)(const char *v, void *arg);
	void *arg;
};

static enum MHD_Result
each_value(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	(void)kind;
	struct each *e = cls;
	if (key && strcmp(key, e->name) == 0)
		e->fn(value ? value : "", e->arg);
	return MHD_YES;
}

void
gw_req_query_each(struct gw_req *r, const char *name, void (*fn)(const char *v, void *arg), void *arg)
{
	struct each e = { name, fn, arg };
	MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, each_value, &e);
}

const char *
gw_req_body(const struct gw_req *r, size_t *len)
{
	*len = r->len;
	return r->body ? r->body : "";
}

struct gw_key *
gw_req_key(const struct gw_req *r)
{
	return r->key;
}

struct gw_sandbox *
gw_req_sandbox(const struct gw_req *r)
{
	return r->sb;
}

void
gw_req_set_key(struct gw_req *r, struct gw_key *k)
{
	r->key = k;
}

void
gw_req_set_sandbox(struct gw_req *r, struct gw_sandbox *sb)
{
	if (r->sb)
		gw_sb_unref(r->h->gw, r->sb);
	r->sb = sb;
	if (sb)
		gw_sb_ref(sb);
}

void
gw_req_set_body_cap(struct gw_req *r, size_t cap)
{
	r->cap = cap;
}

bool
gw_req_replied(const struct gw_req *r)
{
	return r->replied;
}

void
gw_req_add_header(struct gw_req *r, const char *name, const char *value)
{
	if (r->n_xh == MAX_EXTRA_HEADERS)
		return;
	r->xh_name[r->n_xh] = strdup(name);
	r->xh_value[r->n_xh] = strdup(value);
	if (r->xh_name[r->n_xh] && r->xh_value[r->n_xh])
		r->n_xh++;
	else
		free(r->xh_name[r->n_xh]), free(r->xh_value[r->n_xh]);
}

static void
undefer(struct gw_req *r)
{
	if (r->dprev) {
		*r->dprev = r->dnext;
		if (r->dnext)
			r->dnext->dprev = r->dprev;
		r->dprev = NULL;
		r->dnext = NULL;
	}
}

static void
set_response(struct gw_req *r, unsigned status, struct MHD_Response *resp)
{
	if (!resp) {
		log_error("out of memory for a reply to %s %s", r->method, r->url);
		return;
	}
	for (unsigned i = 0; i < r->n_xh; i++)
		MHD_add_response_header(resp, r->xh_name[i], r->xh_value[i]);
	/* Clients that keep connections (undici) close them before we do:
	 * a request sent on a connection being closed would be lost. */
	char ka[32];
	snprintf(ka, sizeof(ka), "timeout=%u", r->h->gw->o.idle_timeout_s);
	MHD_add_response_header(resp, "Keep-Alive", ka);
	r->resp = resp;
	r->status = status;
	r->replied = true;
	undefer(r);
	resume(r);
}

void
gw_reply(struct gw_req *r, unsigned status, const char *ctype, const void *body, size_t len)
{
	if (r->replied)
		return;
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
	if (resp && ctype)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	set_response(r, status, resp);
}

void
gw_reply_json(struct gw_req *r, unsigned status, json_object *j)
{
	const char *s = json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	gw_reply(r, status, "application/json", s, strlen(s));
	json_object_put(j);
}

void
gw_reply_error(struct gw_req *r, unsigned status, const char *fmt, ...)
{
	char msg[1200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object *j = json_object_new_object();
	/* A number: the SDK maps 404 and 409 only when code is one. */
	json_object_object_add(j, "code", json_object_new_int((int)status));
	json_object_object_add(j, "message", json_object_new_string(msg));
	gw_reply_json(r, status, j);
}

void
gw_defer(struct gw_req *r)
{
	if (r->replied || r->deferred)
		return;
	r->deferred = true;
	r->dnext = r->h->deferred;
	if (r->dnext)
		r->dnext->dprev = &r->dnext;
	r->h->deferred = r;
	r->dprev = &r->h->deferred;
}

static enum MHD_Result
queue(struct gw_req *r)
{
	enum MHD_Result ok = MHD_queue_response(r->conn, r->status, r->resp);
	MHD_destroy_response(r->resp);
	r->resp = NULL;
	r->queued = true;
	return ok;
}

/* The first call for a request: its headers. */
static void
begin(struct gw_http *h, struct gw_req *r)
{
	r->cap = GW_CONTROL_BODY_MAX;
	if (h->gw->stopping) {
		gw_reply_error(r, 503, "the gateway is shutting down; retry shortly");
		return;
	}
	r->envd = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "E2b-Sandbox-Id") != NULL;
	if (r->envd)
		gw_envd_begin(h->gw, r);
	else
		gw_api_begin(h->gw, r);
	const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (!r->replied && cl) {
		char *end;
		errno = 0;
		unsigned long long n = strtoull(cl, &end, 10);
		if (errno || *end || n > r->cap)
			r->too_large = true;
	}
}

static void
too_large(struct gw_req *r)
{
	/* A Connect call (/pkg.Service/Method) gets a Connect error. */
	const char *slash = strchr(r->url + 1, '/'), *dot = strchr(r->url + 1, '.');
	if (r->envd && slash && dot && dot < slash)
		gw_rpc_error(r, "resource_exhausted", "the request body is larger than %zu bytes", r->cap);
	else
		gw_reply_error(r, 413, "the request body is larger than %zu bytes, this gateway's limit for %s %s",
			       r->cap, r->method, r->url);
}

static enum MHD_Result
ahc(void *cls, struct MHD_Connection *conn, const char *url, const char *method, const char *version,
    const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	(void)version;
	struct gw_http *h = cls;
	struct gw_req *r = *con_cls;
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return MHD_NO;
		r->h = h;
		r->conn = conn;
		r->url = url;
		r->method = method;
		*con_cls = r;
		begin(h, r);
		/* A refusal (no key, a body over the cap) goes out now when
		 * there is no body, when the client waits for our go (Expect)
		 * or when the body is too big to drain; otherwise the body is
		 * drained first, so that the client, still writing it, reads
		 * the answer rather than a reset. */
		const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
		const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							     MHD_HTTP_HEADER_TRANSFER_ENCODING);
		unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
		bool body = n > 0 || te, huge = n > DISCARD_MAX;
		if (r->too_large && !r->replied && (expect || huge))
			too_large(r);
		if (r->replied && (!body || expect || huge)) {
			r->dispatched = true;
			return queue(r);
		}
		return MHD_YES;
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (r->replied || r->too_large || r->len + n > r->cap) {
			/* Drained, not kept, until the end: then the answer. */
			if (!r->too_large && !r->replied) {
				r->too_large = true;
				free(r->body);
				r->body = NULL;
				r->len = 0;
			}
			r->discarded += n;
			return r->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
		}
		char *b = realloc(r->body, r->len + n + 1);
		if (!b)
			return MHD_NO;
		memcpy(b + r->len, upload_data, n);
		r->body = b;
		r->len += n;
		r->body[r->len] = '\0';
		return MHD_YES;
	}
	if (r->queued)
		return MHD_YES;
	if (!r->dispatched) {
		r->dispatched = true;
		if (!r->replied && r->too_large)
			too_large(r);
		if (!r->replied) {
			if (r->envd)
				gw_envd_dispatch(h->gw, r);
			else
				gw_api_dispatch(h->gw, r);
		}
		if (!r->replied && !r->deferred) {
			log_error("no reply to %s %s", method, url);
			gw_reply_error(r, 500, "the gateway did not answer %s %s", method, url);
		}
	}
	if (r->resp)
		return queue(r);
	if (!r->suspended) {
		r->suspended = true;
		MHD_suspend_connection(conn);
	}
	return MHD_YES;
}

static void
completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)conn;
	struct gw_http *h = cls;
	struct gw_req *r = *con_cls;
	if (!r)
		return;
	*con_cls = NULL;
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN)
		log_debug("%s %s ended early (%d)", r->method, r->url, (int)toe);
	undefer(r);
	if (r->stream)
		r->stream->r = NULL;
	if (r->sb)
		gw_sb_unref(h->gw, r->sb);
	if (r->resp)
		MHD_destroy_response(r->resp);
	for (unsigned i = 0; i < r->n_xh; i++)
		free(r->xh_name[i]), free(r->xh_value[i]);
	free(r->body);
	free(r);
}

/* ---- streams ---- */

static void
stream_unlink(struct gw_stream *s)
{
	if (s->prev) {
		*s->prev = s->next;
		if (s->next)
			s->next->prev = s->prev;
		s->prev = NULL;
	}
}

static void
stream_resume(struct gw_stream *s)
{
	if (s->suspended) {
		s->suspended = false;
		MHD_resume_connection(s->conn);
		kick(s->h);
	}
}

static void
stream_idle_arm(struct gw_stream *s)
{
	if (!s->idle_ms || s->ended)
		return;
	struct timeval tv = { .tv_sec = s->idle_ms / 1000, .tv_usec = (suseconds_t)(s->idle_ms % 1000) * 1000 };
	evtimer_add(s->idle, &tv);
}

static ssize_t
stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	struct gw_stream *s = cls;
	size_t have = evbuffer_get_length(s->out);
	if (have) {
		int n = evbuffer_remove(s->out, buf, have < max ? have : max);
		if (n <= 0)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (s->drain_wanted && evbuffer_get_length(s->out) < GW_STREAM_HIGH / 2) {
			s->drain_wanted = false;
			event_active(s->drain, EV_TIMEOUT, 0);
		}
		return n;
	}
	if (s->ended)
		return MHD_CONTENT_READER_END_OF_STREAM;
	/* Nothing to send: off MHD's loop until there is. */
	s->suspended = true;
	MHD_suspend_connection(s->conn);
	return 0;
}

static void
stream_free(void *cls)
{
	struct gw_stream *s = cls;
	stream_unlink(s);
	struct gw_stream_owner o = s->owner;
	memset(&s->owner, 0, sizeof(s->owner));
	if (s->r)
		s->r->stream = NULL;
	/* The owner hears it from the loop, not from inside MHD. */
	if (o.on_gone)
		o.on_gone(o.arg);
	event_free(s->idle);
	event_free(s->drain);
	evbuffer_free(s->out);
	free(s->idle_data);
	free(s);
}

static void
on_idle(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct gw_stream *s = arg;
	if (s->ended)
		return;
	if (evbuffer_get_length(s->out) == 0)
		evbuffer_add(s->out, s->idle_data, s->idle_len);
	stream_resume(s);
	stream_idle_arm(s);
}

static void
on_drain(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct gw_stream *s = arg;
	if (s->owner.on_drain)
		s->owner.on_drain(s->owner.arg);
}

struct gw_stream *
gw_stream_open(struct gw_req *r, unsigned status, const char *ctype)
{
	if (r->replied)
		return NULL;
	struct gw_stream *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->h = r->h;
	s->r = r;
	s->conn = r->conn;
	s->out = evbuffer_new();
	s->idle = evtimer_new(r->h->gw->base, on_idle, s);
	s->drain = evtimer_new(r->h->gw->base, on_drain, s);
	struct MHD_Response *resp = s->out && s->idle && s->drain
		? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, stream_read, s, stream_free) : NULL;
	if (!resp) {
		if (s->out)
			evbuffer_free(s->out);
		if (s->idle)
			event_free(s->idle);
		if (s->drain)
			event_free(s->drain);
		free(s);
		gw_reply_error(r, 500, "out of memory for a stream");
		return NULL;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	r->stream = s;
	s->next = r->h->streams;
	if (s->next)
		s->next->prev = &s->next;
	r->h->streams = s;
	s->prev = &r->h->streams;
	set_response(r, status, resp);
	return s;
}

void
gw_stream_set_owner(struct gw_stream *s, const struct gw_stream_owner *o)
{
	s->owner = *o;
}

void
gw_stream_write(struct gw_stream *s, const void *data, size_t len)
{
	if (s->ended || !len)
		return;
	evbuffer_add(s->out, data, len);
	if (evbuffer_get_length(s->out) >= GW_STREAM_HIGH)
		s->drain_wanted = true;
	stream_resume(s);
	stream_idle_arm(s);
}

size_t
gw_stream_pending(const struct gw_stream *s)
{
	return evbuffer_get_length(s->out);
}

void
gw_stream_idle(struct gw_stream *s, unsigned ms, const void *data, size_t len)
{
	free(s->idle_data);
	s->idle_data = malloc(len);
	if (!s->idle_data)
		return;
	memcpy(s->idle_data, data, len);
	s->idle_len = len;
	s->idle_ms = ms;
	stream_idle_arm(s);
}

void
gw_stream_end(struct gw_stream *s)
{
	if (s->ended)
		return;
	s->ended = true;
	memset(&s->owner, 0, sizeof(s->owner));
	evtimer_del(s->idle);
	stream_resume(s);
}

/* ---- start and stop ---- */

static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char msg[512];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	size_t n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	/* Mostly clients that went away mid-reply: theirs, not ours. */
	log_info("http: %s", msg);
}

/* ADDR:PORT, ADDR a dotted IPv4 address or [IPv6]. */
static int
parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len, struct vmf_error *err)
{
	const char *colon = strrchr(s, ':');
	char host[64];
	if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host))
		return vmf_err(err, EINVAL, "listen address '%s' is not ADDRESS:PORT (e.g. 127.0.0.1:3000)", s);
	char *end;
	errno = 0;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (errno || *end || !colon[1] || port > 65535)
		return vmf_err(err, EINVAL, "listen address '%s': '%s' is not a port", s, colon + 1);
	snprintf(host, sizeof(host), "%.*s", (int)(colon - s), s);
	memset(ss, 0, sizeof(*ss));
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		host[strlen(host) - 1] = '\0';
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1)
			return vmf_err(err, EINVAL, "listen address '%s': '%s' is not an IPv6 address", s, host + 1);
		*len = sizeof(*a);
		return 0;
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;
	a->sin_family = AF_INET;
	a->sin_port = htons((uint16_t)port);
	if (strcmp(host, "localhost") == 0)
		snprintf(host, sizeof(host), "127.0.0.1");
	if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
		return vmf_err(err, EINVAL, "listen address '%s': '%s' is not an IPv4 address (or [IPv6])", s, host);
	*len = sizeof(*a);
	return 0;
}

static bool
loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
	return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

int
gw_http_start(struct gw *gw, struct vmf_error *err)
{
	struct gw_http *h = calloc(1, sizeof(*h));
	if (!h)
		return vmf_err(err, ENOMEM, "out of memory");
	h->gw = gw;
	h->listen_fd = -1;
	gw->http = h;
	struct sockaddr_storage ss;
	socklen_t sl = 0;
	int r = parse_listen(gw->o.listen, &ss, &sl, err);
	if (r < 0)
		return r;
	/* Bound here rather than by MHD: the error names the cause. */
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create a socket to listen on %s", gw->o.listen);
	h->listen_fd = fd;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 128) < 0)
		return vmf_err_sys(err, errno, "cannot listen on %s", gw->o.listen);
	struct sockaddr_storage bound;
	socklen_t bl = sizeof(bound);
	char ip[INET6_ADDRSTRLEN] = "";
	getsockname(fd, (struct sockaddr *)&bound, &bl);
	if (bound.ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&bound)->sin6_addr, ip, sizeof(ip));
		snprintf(h->addr, sizeof(h->addr), "[%s]:%u", ip, ntohs(((struct sockaddr_in6 *)&bound)->sin6_port));
	} else {
		inet_ntop(AF_INET, &((struct sockaddr_in *)&bound)->sin_addr, ip, sizeof(ip));
		snprintf(h->addr, sizeof(h->addr), "%s:%u", ip, ntohs(((struct sockaddr_in *)&bound)->sin_port));
	}
	if (!loopback(&ss))
		log_warn("listening on %s, beyond loopback: anyone who reaches it may try keys (docs/security.md)",
			 h->addr);
	unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
			 (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
	h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, ahc, h,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
				  MHD_OPTION_LISTEN_SOCKET, fd,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)gw->o.max_connections,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)gw->o.idle_timeout_s,
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
				  MHD_OPTION_NOTIFY_COMPLETED, completed, h,
				  MHD_OPTION_END);
	if (!h->mhd)
		return vmf_err(err, EIO, "the HTTP server (libmicrohttpd) did not start on %s", h->addr);
	h->listen_fd = -1;   /* MHD's now */
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	if (!info)
		return vmf_err(err, EIO, "libmicrohttpd has no epoll descriptor");
	h->ev_io = event_new(gw->base, info->epoll_fd, EV_READ | EV_PERSIST, on_mhd, h);
	h->ev_timer = evtimer_new(gw->base, on_mhd, h);
	h->ev_kick = event_new(gw->base, -1, 0, on_mhd, h);
	if (!h->ev_io || !h->ev_timer || !h->ev_kick || event_add(h->ev_io, NULL) < 0)
		return vmf_err(err, ENOMEM, "out of memory for the HTTP server's events");
	run_mhd(h);
	return 0;
}

const char *
gw_http_addr(const struct gw *gw)
{
	return gw->http ? gw->http->addr : "";
}

unsigned
gw_http_connections(const struct gw *gw)
{
	if (!gw->http || !gw->http->mhd)
		return 0;
	const union MHD_DaemonInfo *i = MHD_get_daemon_info(gw->http->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
	return i ? i->num_connections : 0;
}

void
gw_http_stop(struct gw *gw)
{
	struct gw_http *h = gw->http;
	if (!h)
		return;
	if (h->mhd) {
		/* Suspended connections must be resumed before MHD stops. */
		while (h->deferred)
			gw_reply_error(h->deferred, 503, "the gateway is shutting down; retry shortly");
		for (struct gw_stream *s = h->streams; s; s = s->next) {
			s->ended = true;
			stream_resume(s);
		}
		for (int i = 0; i < 20; i++)
			MHD_run(h->mhd);
		MHD_stop_daemon(h->mhd);
		h->mhd = NULL;
	}
	if (h->listen_fd >= 0)
		close(h->listen_fd);
	if (h->ev_io)
		event_free(h->ev_io);
	if (h->ev_timer)
		event_free(h->ev_timer);
	if (h->ev_kick)
		event_free(h->ev_kick);
	free(h);
	gw->http = NULL;
}
