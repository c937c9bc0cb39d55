/* filesystem.Filesystem (envd's spec/envd/filesystem/filesystem.proto) and
 * envd's GET /files and POST /files, on the guest agent's file messages
 * (docs/protocol.md, "Guest agent: file messages").  Each call is a job on
 * the sandbox's agent connection, as the request's user (Authorization, or
 * /files' username): the guest decides what that user may touch.  Relative
 * paths are the user's home's, as in envd.  Bounded: a listing holds at
 * most FILES_LIST_MAX entries, a download FILES_READ_MAX bytes, an upload
 * the gateway's max_body. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "gw.h"
#include "log.h"

#define FILE_CALL_MS 10000
#define FILES_LIST_MAX 10000u
#define FILES_READ_MAX (16u << 20)

enum fs_op { FS_STAT, FS_LIST, FS_MKDIR, FS_MOVE, FS_REMOVE, FS_READ, FS_WRITE, FS_WATCH, FS_UNWATCH };

/* One file of an upload: its path and its bytes (in the job's body copy). */
struct fs_upload {
	char *path;
	const char *data;
	size_t len;
};

struct fs_job {
	struct gw_guest_job g;
	struct gw_req *r;
	enum fs_op op;
	bool http;                   /* /files: HTTP errors, not Connect ones */
	struct vmf_file_user u;
	char *path, *dest;
	unsigned depth;
	struct vmf_file_entry e;
	int created;
	struct vmf_file_entry *entries;
	size_t n;
	char *data;                  /* download: what was read; upload: the body's copy */
	size_t len;
	struct fs_upload *files;
	size_t n_files;
	bool recursive;
	uint64_t watch_id;
};

/* ---- on the worker ---- */

/* A whole listing, page after page. */
static int
list_all(struct fs_job *f, struct vmf_error *err)
{
	for (int more = 1; more;) {
		struct vmf_file_entry *page;
		size_t n;
		int r = vmf_client_file_list(f->g.a, &f->u, f->path, f->depth, (unsigned)f->n, &page, &n, &more,
					     FILE_CALL_MS, err);
		if (r < 0)
			return r;
		if (f->n + n > FILES_LIST_MAX) {
			for (size_t i = 0; i < n; i++)
				vmf_client_file_entry_free(&page[i]);
			free(page);
			return vmf_err(err, EFBIG, "%s holds more than %u entries at depth %u: ask for less depth",
				       f->path, FILES_LIST_MAX, f->depth);
		}
		struct vmf_file_entry *all = realloc(f->entries, (f->n + n + 1) * sizeof(*all));
		if (!all) {
			for (size_t i = 0; i < n; i++)
				vmf_client_file_entry_free(&page[i]);
			free(page);
			return vmf_err(err, ENOMEM, "out of memory listing %s", f->path);
		}
		memcpy(all + f->n, page, n * sizeof(*page));
		free(page);
		f->entries = all;
		f->n += n;
	}
	return 0;
}

static int
read_all(struct fs_job *f, struct vmf_error *err)
{
	size_t cap = 0;
	for (int eof = 0; !eof;) {
		if (f->len + VMF_FILE_CHUNK_MAX > cap) {
			if (cap >= FILES_READ_MAX)
				return vmf_err(err, EFBIG, "%s is larger than the gateway's download limit of %u MiB",
					       f->path, FILES_READ_MAX >> 20);
			char *more = realloc(f->data, cap = cap ? cap * 2 : 4 * VMF_FILE_CHUNK_MAX);
			if (!more)
				return vmf_err(err, ENOMEM, "out of memory reading %s", f->path);
			f->data = more;
		}
		size_t got;
		uint64_t size;
		int r = vmf_client_file_read(f->g.a, &f->u, f->path, f->len, f->data + f->len, VMF_FILE_CHUNK_MAX, &got,
					     &size, &eof, FILE_CALL_MS, err);
		if (r < 0)
			return r;
		f->len += got;
		if (got == 0)
			break;
	}
	return 0;
}

/* The parent directories made (as envd does), then the file in chunks. */
static int
write_one(struct fs_job *f, const struct fs_upload *up, struct vmf_error *err)
{
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s", up->path);
	char *slash = strrchr(dir, '/');
	int created;
	struct vmf_file_entry e;
	if (slash && slash != dir) {
		*slash = '\0';
		int r = vmf_client_file_mkdir(f->g.a, &f->u, dir, &e, &created, FILE_CALL_MS, err);
		if (r < 0)
			return r;
		vmf_client_file_entry_free(&e);
	}
	size_t off = 0;
	do {
		size_t k = up->len - off < VMF_FILE_CHUNK_MAX ? up->len - off : VMF_FILE_CHUNK_MAX;
		int r = vmf_client_file_write(f->g.a, &f->u, up->path, off, up->data + off, k, off == 0, NULL,
					      FILE_CALL_MS, err);
		if (r < 0)
			return r;
		off += k;
	} while (off < up->len);
	return 0;
}

static void
fs_work(struct gw_guest_job *g)
{
	struct fs_job *f = (struct fs_job *)g;
	struct vmf_error *err = &g->job.err;
	int r = 0;
	switch (f->op) {
	case FS_STAT:
		r = vmf_client_file_stat(g->a, &f->u, f->path, &f->e, FILE_CALL_MS, err);
		break;
	case FS_LIST:
		r = list_all(f, err);
		break;
	case FS_MKDIR:
		r = vmf_client_file_mkdir(g->a, &f->u, f->path, &f->e, &f->created, FILE_CALL_MS, err);
		break;
	case FS_MOVE:
		r = vmf_client_file_move(g->a, &f->u, f->path, f->dest, &f->e, FILE_CALL_MS, err);
		break;
	case FS_REMOVE:
		r = vmf_client_file_remove(g->a, &f->u, f->path, FILE_CALL_MS, err);
		break;
	case FS_READ:
		r = read_all(f, err);
		break;
	case FS_WRITE:
		for (size_t i = 0; r == 0 && i < f->n_files; i++)
			r = write_one(f, &f->files[i], err);
		break;
	case FS_WATCH:
		r = vmf_client_file_watch(g->a, &f->u, f->path, f->recursive, &f->watch_id, FILE_CALL_MS, err);
		break;
	case FS_UNWATCH:
		r = vmf_client_file_unwatch(g->a, f->watch_id, FILE_CALL_MS, err);
		break;
	}
	g->job.rc = r;
}

/* ---- replies, on the loop ---- */

static const char *
rpc_code(int e)
{
	switch (e) {
	case ENOENT: return "not_found";
	case EEXIST: case ENOTEMPTY: return "already_exists";
	case EACCES: case EPERM: case EROFS: return "permission_denied";
	case EINVAL: case ENOTDIR: case EISDIR: case ENAMETOOLONG: case ELOOP: case EXDEV: case EBUSY:
		return "invalid_argument";
	case EFBIG: case E2BIG: case ENOSPC: case EDQUOT: case EAGAIN: case EMFILE: return "resource_exhausted";
	case ETIMEDOUT: return "deadline_exceeded";
	case ENOMEM: return "internal";
	default: return "unavailable";
	}
}

static unsigned
http_status(int e)
{
	switch (e) {
	case ENOENT: return 404;
	case EACCES: case EPERM: case EROFS: return 403;
	case EFBIG: case E2BIG: return 413;
	case ENOSPC: case EDQUOT: return 507;
	case EAGAIN: return 503;
	case ENOMEM: return 500;
	case EHOSTDOWN: case EPIPE: case ECONNRESET: case ETIMEDOUT: case EPROTO: return 502;
	default: return 400;
	}
}

static const char *const type_names[] = { "FILE_TYPE_UNSPECIFIED", "FILE_TYPE_FILE", "FILE_TYPE_DIRECTORY",
					   "FILE_TYPE_SYMLINK" };

/* "drwxr-xr-x", as Go's FileMode.String() gives envd's. */
static void
permissions(uint32_t mode, enum vmf_file_type t, char out[11])
{
	static const char rwx[] = "rwxrwxrwx";
	out[0] = t == VMF_FILE_DIRECTORY ? 'd' : t == VMF_FILE_SYMLINK ? 'L' : '-';
	for (int i = 0; i < 9; i++)
		out[1 + i] = mode & (1u << (8 - i)) ? rwx[i] : '-';
	out[10] = '\0';
}

/* envd's EntryInfo in the Connect protocol's JSON. */
static json_object *
entry_json(const struct vmf_file_entry *e)
{
	json_object *j = json_object_new_object();
	char perm[11], t[48];
	permissions(e->mode, e->type, perm);
	gw_iso_time(e->mtime_ns / 1000000, t, sizeof(t));
	json_object_object_add(j, "name", json_object_new_string(e->name));
	json_object_object_add(j, "type", json_object_new_string(type_names[e->type]));
	json_object_object_add(j, "path", json_object_new_string(e->path));
	json_object_object_add(j, "size", json_object_new_int64((int64_t)e->size));
	json_object_object_add(j, "mode", json_object_new_int64(e->mode & 07777));
	json_object_object_add(j, "permissions", json_object_new_string(perm));
	json_object_object_add(j, "owner", json_object_new_string(e->owner));
	json_object_object_add(j, "group", json_object_new_string(e->group));
	json_object_object_add(j, "modifiedTime", json_object_new_string(t));
	if (e->type == VMF_FILE_SYMLINK)
		json_object_object_add(j, "symlinkTarget", json_object_new_string(e->symlink_target));
	return j;
}

static json_object *
wrap_entry(const struct vmf_file_entry *e)
{
	json_object *j = json_object_new_object();
	json_object_object_add(j, "entry", entry_json(e));
	return j;
}

static void
fs_free(struct fs_job *f)
{
	vmf_client_file_entry_free(&f->e);
	for (size_t i = 0; i < f->n; i++)
		vmf_client_file_entry_free(&f->entries[i]);
	free(f->entries);
	for (size_t i = 0; i < f->n_files; i++)
		free(f->files[i].path);
	free(f->files);
	free(f->data);
	free(f->path);
	free(f->dest);
	free(f);
}

static void watch_started(struct fs_job *f);

static void
fs_after(struct gw_guest_job *g)
{
	struct fs_job *f = (struct fs_job *)g;
	struct gw_req *r = f->r;
	int e = g->job.rc < 0 ? -g->job.rc : 0;
	if (f->op == FS_UNWATCH) {
		/* Nobody waits for it: the watch's stream is gone already. */
		if (e)
			log_debug("sandbox %s: unwatch %llu: %s", g->job.sb->id, (unsigned long long)f->watch_id,
				  g->job.err.msg);
		fs_free(f);
		return;
	}
	if (!e && f->op == FS_WATCH) {
		watch_started(f);
		fs_free(f);
		return;
	}
	if (!e && f->op == FS_MKDIR && !f->created)
		e = EEXIST, vmf_err(&g->job.err, EEXIST, "directory %s exists already", f->path);
	if (e && f->http)
		gw_reply_error(r, http_status(e), "%s", g->job.err.msg);
	else if (e)
		gw_rpc_error(r, rpc_code(e), "%s", g->job.err.msg);
	else if (f->op == FS_LIST) {
		json_object *list = json_object_new_array();
		for (size_t i = 0; i < f->n; i++)
			json_object_array_add(list, entry_json(&f->entries[i]));
		json_object *j = json_object_new_object();
		json_object_object_add(j, "entries", list);
		gw_rpc_reply(r, j);
	} else if (f->op == FS_REMOVE) {
		gw_rpc_reply(r, json_object_new_object());
	} else if (f->op == FS_READ) {
		gw_reply(r, 200, "application/octet-stream", f->data ? f->data : "", f->len);
	} else if (f->op == FS_WRITE) {
		json_object *list = json_object_new_array();
		for (size_t i = 0; i < f->n_files; i++) {
			json_object *j = json_object_new_object();
			const char *slash = strrchr(f->files[i].path, '/');
			json_object_object_add(j, "name", json_object_new_string(slash ? slash + 1 : f->files[i].path));
			json_object_object_add(j, "type", json_object_new_string("file"));
			json_object_object_add(j, "path", json_object_new_string(f->files[i].path));
			json_object_array_add(list, j);
		}
		gw_reply_json(r, 200, list);
	} else {
		gw_rpc_reply(r, wrap_entry(&f->e));
	}
	fs_free(f);
}

/* ---- WatchDir: a watch of the agent, its events to one stream ---- */

/* Events a watch's stream may hold unsent: past them they are dropped
 * (counted in the log), so that a slow client neither grows the gateway
 * nor holds the sandbox's connection, which its processes share. */
struct gw_watch {
	struct gw_watch *next;
	struct gw *gw;
	struct gw_sandbox *sb;
	uint64_t id;
	struct vmf_file_user u;
	struct gw_stream *s;
	uint64_t dropped;
};

/* WatchDirResponse's oneof is the message's own: {kind: body}, no
 * "event" around it (unlike a process's stream). */
static json_object *
watch_msg(const char *kind, json_object *body)
{
	json_object *m = json_object_new_object();
	json_object_object_add(m, kind, body);
	return m;
}

static void
watch_unlink(struct gw_watch *w)
{
	for (struct gw_watch **pp = &w->sb->guest.watches; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			w->sb->guest.n_watches--;
			break;
		}
}

/* The agent's watch stopped, as a job on the sandbox's connection.  Past
 * the job limit it stays until the connection ends: it counts against
 * the agent's 8. */
static void
unwatch_later(struct gw *gw, struct gw_sandbox *sb, uint64_t id)
{
	/* Stopping, the workers are gone: the connection's end stops it. */
	if (!sb->guest.a || sb->gone || gw->stopping || !gw->jobs)
		return;
	struct fs_job *f = calloc(1, sizeof(*f));
	if (!f)
		return;
	f->op = FS_UNWATCH;
	f->watch_id = id;
	f->g.fn = fs_work;
	f->g.after = fs_after;
	if (gw_guest_run(gw, sb, &f->g) < 0)
		free(f);
}

/* The client went away. */
static void
watch_gone(void *arg)
{
	struct gw_watch *w = arg;
	w->s = NULL;
	watch_unlink(w);
	if (w->dropped)
		log_info("sandbox %s: watch %llu: %llu events dropped for a slow client", w->sb->id,
			 (unsigned long long)w->id, (unsigned long long)w->dropped);
	unwatch_later(w->gw, w->sb, w->id);
	free(w);
}

static void
watch_drain(void *arg)
{
	(void)arg;
}

static void
watch_started(struct fs_job *f)
{
	struct gw_sandbox *sb = f->g.job.sb;
	if (sb->gone || !sb->guest.a) {
		gw_rpc_error(f->r, "unavailable", "sandbox %s lost its guest agent connection while the watch started",
			     sb->id);
		return;
	}
	struct gw_watch *w = calloc(1, sizeof(*w));
	struct gw_stream *s = w ? gw_rpc_stream_open(f->r, watch_msg("keepalive", json_object_new_object())) : NULL;
	if (!s) {
		if (!w)
			gw_rpc_error(f->r, "internal", "out of memory");
		free(w);
		unwatch_later(f->g.job.gw, sb, f->watch_id);
		return;
	}
	w->gw = f->g.job.gw;
	w->sb = sb;
	w->id = f->watch_id;
	w->s = s;
	w->next = sb->guest.watches;
	sb->guest.watches = w;
	sb->guest.n_watches++;
	struct gw_stream_owner o = { watch_drain, watch_gone, w };
	gw_stream_set_owner(s, &o);
	gw_rpc_send(s, watch_msg("start", json_object_new_object()));
}

static const char *const event_names[] = { "EVENT_TYPE_UNSPECIFIED", "EVENT_TYPE_CREATE", "EVENT_TYPE_WRITE",
					    "EVENT_TYPE_REMOVE", "EVENT_TYPE_RENAME", "EVENT_TYPE_CHMOD" };

void
gw_watch_event(struct gw *gw, struct gw_sandbox *sb, const struct vmf_exec_event *ev)
{
	(void)gw;
	struct gw_watch *w = sb->guest.watches;
	while (w && w->id != ev->exec_id)
		w = w->next;
	if (!w)
		return;
	if (ev->lost)
		log_info("sandbox %s: watch %llu: the guest lost %llu events (its queue was full)", sb->id,
			 (unsigned long long)w->id, (unsigned long long)ev->lost);
	for (size_t i = 0; i < ev->n_files; i++) {
		if (gw_stream_pending(w->s) >= GW_STREAM_HIGH) {
			w->dropped++;
			continue;
		}
		/* The library made the name valid UTF-8; json-c escapes it. */
		json_object *fe = json_object_new_object();
		json_object_object_add(fe, "name", json_object_new_string(ev->files[i].name));
		json_object_object_add(fe, "type", json_object_new_string(event_names[ev->files[i].type]));
		gw_rpc_send(w->s, watch_msg("filesystem", fe));
	}
	if (ev->ended) {
		struct gw_stream *s = w->s;
		watch_unlink(w);
		free(w);
		gw_rpc_end(s, "not_found", "the watch ended: %s", ev->message);
	}
}

void
gw_watch_drop_all(struct gw *gw, struct gw_sandbox *sb, const char *code, const char *msg)
{
	(void)gw;
	while (sb->guest.watches) {
		struct gw_watch *w = sb->guest.watches;
		sb->guest.watches = w->next;
		struct gw_stream *s = w->s;
		free(w);
		if (code)
			gw_rpc_end(s, code, "%s", msg);
		else
			gw_rpc_end(s, NULL, NULL);
	}
	sb->guest.n_watches = 0;
}

/* ---- requests ---- */

/* path as the guest takes it: relative to the user's home. */
static char *
guest_path(const struct gw_user *u, const char *path)
{
	char *out = NULL;
	if (path[0] == '/')
		return strdup(path);
	if (asprintf(&out, "%s/%s", u->home, path) < 0)
		return NULL;
	return out;
}

static struct fs_job *
fs_new(struct gw_req *r, enum fs_op op, bool http, const struct gw_user *u)
{
	struct fs_job *f = calloc(1, sizeof(*f));
	if (!f) {
		if (http)
			gw_reply_error(r, 500, "out of memory");
		else
			gw_rpc_error(r, "internal", "out of memory");
		return NULL;
	}
	f->r = r;
	f->op = op;
	f->http = http;
	f->u.set_user = !u->root;
	f->u.uid = u->uid;
	f->u.gid = u->gid;
	f->g.fn = fs_work;
	f->g.after = fs_after;
	return f;
}

static void
fs_run(struct gw *gw, struct gw_sandbox *sb, struct fs_job *f)
{
	if (gw_guest_run(gw, sb, &f->g) < 0) {
		f->g.job.rc = vmf_err(&f->g.job.err, EAGAIN, "too many requests wait in the gateway; retry shortly");
		fs_after(&f->g);
		return;
	}
	gw_defer(f->r);
}

/* A Connect call's path field(s) and user; NULL (answered) when bad. */
static struct fs_job *
rpc_job(struct gw_req *r, json_object *msg, enum fs_op op, const char *field)
{
	struct gw_user u;
	char why[300];
	if (gw_envd_user(r, &u, why, sizeof(why)) < 0) {
		gw_rpc_error(r, "invalid_argument", "%s", why);
		return NULL;
	}
	const char *path = gw_json_str(msg, field);
	const char *dest = op == FS_MOVE ? gw_json_str(msg, "destination") : NULL;
	if (!path || !*path || (op == FS_MOVE && (!dest || !*dest))) {
		gw_rpc_error(r, "invalid_argument", "%s is missing", !path || !*path ? field : "destination");
		return NULL;
	}
	struct fs_job *f = fs_new(r, op, false, &u);
	if (!f)
		return NULL;
	f->path = guest_path(&u, path);
	f->dest = dest ? guest_path(&u, dest) : NULL;
	if (!f->path || (dest && !f->dest)) {
		gw_rpc_error(r, "internal", "out of memory");
		fs_free(f);
		return NULL;
	}
	return f;
}

static void
do_stat(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	struct fs_job *f = rpc_job(r, msg, FS_STAT, "path");
	if (f)
		fs_run(gw, sb, f);
}

static void
do_list(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	json_object *d;
	int64_t depth = json_object_object_get_ex(msg, "depth", &d) ? json_object_get_int64(d) : 1;
	if (depth < 0 || depth > 16) {
		gw_rpc_error(r, "invalid_argument", "depth %lld is out of range (1 to 16)", (long long)depth);
		return;
	}
	struct fs_job *f = rpc_job(r, msg, FS_LIST, "path");
	if (!f)
		return;
	f->depth = depth ? (unsigned)depth : 1;
	fs_run(gw, sb, f);
}

static void
do_mkdir(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	struct fs_job *f = rpc_job(r, msg, FS_MKDIR, "path");
	if (f)
		fs_run(gw, sb, f);
}

static void
do_move(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	struct fs_job *f = rpc_job(r, msg, FS_MOVE, "source");
	if (f)
		fs_run(gw, sb, f);
}

static void
do_remove(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	struct fs_job *f = rpc_job(r, msg, FS_REMOVE, "path");
	if (f)
		fs_run(gw, sb, f);
}

/* The parts named "file" of a multipart/form-data body (RFC 7578): each
 * one's filename, its bytes.  -1 with why when the body is not one. */
static int
multipart_files(struct fs_job *f, const struct gw_user *u, const char *ctype, const char *query_path, char *why,
		size_t n)
{
	const char *b = strstr(ctype, "boundary=");
	char delim[80];
	if (!b || snprintf(delim, sizeof(delim), "\r\n--%s", b + 9) >= (int)sizeof(delim) || strlen(delim) < 5) {
		snprintf(why, n, "multipart/form-data without a boundary (of at most 70 characters)");
		return -1;
	}
	char *q = strchr(delim, ';');
	if (q)
		*q = '\0';
	if (delim[4] == '"' && delim[strlen(delim) - 1] == '"') {
		memmove(delim + 4, delim + 5, strlen(delim + 5) - 1);
		delim[strlen(delim) - 2] = '\0';
	}
	size_t dl = strlen(delim);
	/* The first delimiter has no CRLF before it. */
	const char *p = f->data, *end = f->data + f->len;
	if ((size_t)(end - p) < dl - 2 || memcmp(p, delim + 2, dl - 2) != 0) {
		snprintf(why, n, "the body does not start with its multipart boundary");
		return -1;
	}
	p += dl - 2;
	while (end - p >= 2 && memcmp(p, "--", 2) != 0) {
		if (end - p < 2 || memcmp(p, "\r\n", 2) != 0)
			break;
		p += 2;
		const char *hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
		if (!hend)
			break;
		char headers[2048];
		snprintf(headers, sizeof(headers), "%.*s", (int)(hend - p), p);
		const char *body = hend + 4;
		const char *next = memmem(body, (size_t)(end - body), delim, dl);
		if (!next)
			break;
		const char *fn = strcasestr(headers, "filename=\"");
		/* name="file", not a filename="file" of another part. */
		bool is_file = false;
		for (const char *h = headers; (h = strcasestr(h, "name=\"file\"")); h++)
			is_file = is_file || (h > headers && (h[-1] == ' ' || h[-1] == ';'));
		if (is_file) {
			char name[4096] = "";
			if (fn) {
				const char *s = fn + 10, *e = strchr(s, '"');
				snprintf(name, sizeof(name), "%.*s", e ? (int)(e - s) : 0, s);
			}
			const char *path = f->n_files == 0 && query_path && *query_path ? query_path : name;
			if (!*path) {
				snprintf(why, n, "a file part has no path (no ?path= and no filename)");
				return -1;
			}
			struct fs_upload *more = realloc(f->files, (f->n_files + 1) * sizeof(*more));
			if (!more) {
				snprintf(why, n, "out of memory");
				return -1;
			}
			f->files = more;
			f->files[f->n_files] = (struct fs_upload){ guest_path(u, path), body, (size_t)(next - body) };
			if (!f->files[f->n_files++].path) {
				snprintf(why, n, "out of memory");
				return -1;
			}
		}
		p = next + dl;
	}
	if (f->n_files == 0) {
		snprintf(why, n, "the multipart body has no complete part named \"file\"");
		return -1;
	}
	return 0;
}

/* envd's GET /files?path= (the file's bytes) and POST /files?path= (one
 * body of application/octet-stream, or multipart/form-data parts "file"):
 * [{name, type, path}] of what was written. */
void
gw_files_http(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb)
{
	const char *method = gw_req_method(r);
	bool get = strcmp(method, "GET") == 0;
	if (!get && strcmp(method, "POST") != 0) {
		gw_reply_error(r, 405, "%s /files: GET downloads a file, POST uploads one", method);
		return;
	}
	struct gw_user u;
	char why[300];
	if (gw_envd_user(r, &u, why, sizeof(why)) < 0) {
		gw_reply_error(r, 400, "%s", why);
		return;
	}
	const char *path = gw_req_query(r, "path");
	if (get && (!path || !*path)) {
		gw_reply_error(r, 400, "GET /files needs ?path= (the file to download)");
		return;
	}
	struct fs_job *f = fs_new(r, get ? FS_READ : FS_WRITE, true, &u);
	if (!f)
		return;
	if (get) {
		if (!(f->path = guest_path(&u, path))) {
			gw_reply_error(r, 500, "out of memory");
			fs_free(f);
			return;
		}
		f->depth = 0;
		fs_run(gw, sb, f);
		return;
	}
	/* The body is the loop's: the job works on a copy. */
	size_t len;
	const char *body = gw_req_body(r, &len);
	f->data = malloc(len ? len : 1);
	if (!f->data) {
		gw_reply_error(r, 500, "out of memory");
		fs_free(f);
		return;
	}
	memcpy(f->data, body, len);
	f->len = len;
	const char *ctype = gw_req_header(r, "Content-Type");
	const char *enc = gw_req_header(r, "Content-Encoding");
	if (enc && strcasecmp(enc, "identity") != 0) {
		gw_reply_error(r, 415, "POST /files: Content-Encoding %.40s is not served (send the file as it is)", enc);
		fs_free(f);
		return;
	}
	if (ctype && strncasecmp(ctype, "multipart/form-data", 19) == 0) {
		if (multipart_files(f, &u, ctype, path, why, sizeof(why)) < 0) {
			gw_reply_error(r, 400, "POST /files: %s", why);
			fs_free(f);
			return;
		}
	} else {
		if (!path || !*path) {
			gw_reply_error(r, 400, "POST /files of one file needs ?path=");
			fs_free(f);
			return;
		}
		f->files = calloc(1, sizeof(*f->files));
		if (f->files)
			f->files[0] = (struct fs_upload){ guest_path(&u, path), f->data, f->len };
		if (!f->files || !f->files[0].path) {
			gw_reply_error(r, 500, "out of memory");
			fs_free(f);
			return;
		}
		f->n_files = 1;
	}
	fs_run(gw, sb, f);
}

static void
do_watch_dir(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	json_object *v;
	if (json_object_object_get_ex(msg, "includeEntry", &v) && json_object_get_boolean(v)) {
		gw_rpc_error(r, "unimplemented", "filesystem.Filesystem/WatchDir: includeEntry is not served");
		return;
	}
	if (sb->guest.n_watches >= GW_WATCHES_MAX) {
		gw_rpc_error(r, "resource_exhausted", "sandbox %s has %u directories watched already (at most %u)",
			     sb->id, sb->guest.n_watches, GW_WATCHES_MAX);
		return;
	}
	struct fs_job *f = rpc_job(r, msg, FS_WATCH, "path");
	if (!f)
		return;
	f->recursive = json_object_object_get_ex(msg, "recursive", &v) && json_object_get_boolean(v);
	fs_run(gw, sb, f);
}

/* The polling watcher calls: the SDK uses WatchDir's stream. */
#define WATCH "WatchDir (the server stream)"
const struct gw_rpc_method gw_filesystem_methods[] = {
	{ "filesystem.Filesystem/Stat", false, do_stat, NULL },
	{ "filesystem.Filesystem/MakeDir", false, do_mkdir, NULL },
	{ "filesystem.Filesystem/Move", false, do_move, NULL },
	{ "filesystem.Filesystem/ListDir", false, do_list, NULL },
	{ "filesystem.Filesystem/Remove", false, do_remove, NULL },
	{ "filesystem.Filesystem/WatchDir", true, do_watch_dir, NULL },
	{ "filesystem.Filesystem/CreateWatcher", false, NULL, WATCH },
	{ "filesystem.Filesystem/GetWatcherEvents", false, NULL, WATCH },
	{ "filesystem.Filesystem/RemoveWatcher", false, NULL, WATCH },
	{ NULL, false, NULL, NULL },
};
