/* libvmfactory-client: files in a handed-out VM's guest, through its agent
 * (docs/protocol.md, "Guest agent: file messages").  Each call is one
 * request and its reply; what a guest answers is checked for its type and
 * bounded by the frame, and its strings are made valid UTF-8. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "agent_internal.h"
#include "frame.h"
#include "text.h"

char *
agent_client_guest_string(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	char *out = malloc(3 * n + 1);   /* each bad byte may become U+FFFD */
	if (out)
		vmf_utf8_fix(s ? s : "", n, out, 3 * n + 1);
	return out;
}

void
vmf_client_file_entry_free(struct vmf_file_entry *e)
{
	if (!e)
		return;
	free(e->name);
	free(e->path);
	free(e->owner);
	free(e->group);
	free(e->symlink_target);
	memset(e, 0, sizeof(*e));
}

static int
entry_from(const Vmf__Agent__FileEntry *m, struct vmf_file_entry *e, struct vmf_error *err)
{
	memset(e, 0, sizeof(*e));
	if (!m)
		return vmf_err(err, EPROTO, "the agent answered a file request without its entry");
	e->name = agent_client_guest_string(m->name);
	e->path = agent_client_guest_string(m->path);
	e->owner = agent_client_guest_string(m->owner);
	e->group = agent_client_guest_string(m->group);
	e->symlink_target = agent_client_guest_string(m->symlink_target);
	if (!e->name || !e->path || !e->owner || !e->group || !e->symlink_target) {
		vmf_client_file_entry_free(e);
		return vmf_err(err, ENOMEM, "out of memory for a file entry");
	}
	e->type = m->type >= 0 && m->type <= 3 ? (enum vmf_file_type)m->type : VMF_FILE_OTHER;
	e->size = m->size;
	e->mode = m->mode;
	e->uid = m->uid;
	e->gid = m->gid;
	e->mtime_ns = m->mtime_ns;
	return 0;
}

static void
access_of(const struct vmf_file_user *u, Vmf__Agent__FileAccess *acc)
{
	vmf__agent__file_access__init(acc);
	if (u && u->set_user) {
		acc->set_user = true;
		acc->uid = u->uid;
		acc->gid = u->gid;
	}
}

/* Sends req (its body set by the caller) and waits for a reply of type want. */
static int
file_call(struct vmf_client_agent *a, Vmf__Agent__AgentRequest *req, Vmf__Agent__AgentReply__BodyCase want,
	  Vmf__Agent__AgentReply **rep, int timeout_ms, struct vmf_error *err)
{
	if (vmf__agent__agent_request__get_packed_size(req) + 16 > VMF_AGENT_MAX_FRAME)
		return vmf_err(err, E2BIG, "a file request of more than %u bytes does not fit a frame",
			       VMF_AGENT_MAX_FRAME - 16);
	return agent_client_call(a, req, want, rep, agent_client_deadline(timeout_ms), err);
}

/* A request answered with one entry (Stat, Move, Write): into e, if given. */
static int
entry_call(struct vmf_client_agent *a, Vmf__Agent__AgentRequest *req, struct vmf_file_entry *e, int timeout_ms,
	   struct vmf_error *err)
{
	Vmf__Agent__AgentReply *rep;
	int r = file_call(a, req, VMF__AGENT__AGENT_REPLY__BODY_FILE_ENTRY, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	if (e)
		r = entry_from(rep->file_entry, e, err);
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

int
vmf_client_file_stat(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
		     struct vmf_file_entry *e, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__FileAccess acc;
	access_of(u, &acc);
	Vmf__Agent__FileStat st = VMF__AGENT__FILE_STAT__INIT;
	st.access = &acc;
	st.path = (char *)path;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_STAT;
	req.file_stat = &st;
	return entry_call(a, &req, e, timeout_ms, err);
}

int
vmf_client_file_list(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
		     unsigned depth, unsigned skip, struct vmf_file_entry **entries, size_t *n, int *more,
		     int timeout_ms, struct vmf_error *err)
{
	*entries = NULL;
	*n = 0;
	*more = 0;
	Vmf__Agent__FileAccess acc;
	access_of(u, &acc);
	Vmf__Agent__FileList ls = VMF__AGENT__FILE_LIST__INIT;
	ls.access = &acc;
	ls.path = (char *)path;
	ls.depth = depth;
	ls.skip = skip;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_LIST;
	req.file_list = &ls;
	Vmf__Agent__AgentReply *rep;
	int r = file_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_FILE_ENTRIES, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	const Vmf__Agent__FileEntries *fe = rep->file_entries;
	struct vmf_file_entry *v = calloc(fe->n_entries ? fe->n_entries : 1, sizeof(*v));
	if (!v)
		r = vmf_err(err, ENOMEM, "out of memory for %zu file entries", fe->n_entries);
	for (size_t i = 0; r == 0 && i < fe->n_entries; i++)
		if ((r = entry_from(fe->entries[i], &v[i], err)) < 0)
			while (i > 0)
				vmf_client_file_entry_free(&v[--i]);
	if (r == 0) {
		*entries = v;
		*n = fe->n_entries;
		/* A page without entries that claims more would loop a caller
		 * for good. */
		*more = fe->more && fe->n_entries > 0;
	} else {
		free(v);
	}
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

int
vmf_client_file_mkdir(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
		      struct vmf_file_entry *e, int *created, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__FileAccess acc;
	access_of(u, &acc);
	Vmf__Agent__FileMkdir mk = VMF__AGENT__FILE_MKDIR__INIT;
	mk.access = &acc;
	mk.path = (char *)path;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_MKDIR;
	req.file_mkdir = &mk;
	Vmf__Agent__AgentReply *rep;
	int r = file_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_FILE_MKDIR, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	*created = rep->file_mkdir->created;
	r = entry_from(rep->file_mkdir->entry, e, err);
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

int
vmf_client_file_move(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *source,
		     const char *destination, struct vmf_file_entry *e, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__FileAccess acc;
	access_of(u, &acc);
	Vmf__Agent__FileMove mv = VMF__AGENT__FILE_MOVE__INIT;
	mv.access = &acc;
	mv.source = (char *)source;
	mv.destination = (char *)destination;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_MOVE;
	req.file_move = &mv;
	return entry_call(a, &req, e, timeout_ms, err);
}

int
vmf_client_file_remove(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
		       int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__FileAccess acc;
	access_of(u, &acc);
	Vmf__Agent__FileRemove rm = VMF__AGENT__FILE_REMOVE__INIT;
	rm.access = &acc;
	rm.path = (char *)path;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_REMOVE;
	req.file_remove = &rm;
	Vmf__Agent__AgentReply *rep;
	int r = file_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_FILE_REMOVED, &rep, timeout_ms, err);
	if (r == 0)
		vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

int
vmf_client_file_read(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path, uint64_t offset,
		     void *buf, size_t len, size_t *got, uint64_t *size, int *eof, int timeout_ms,
		     struct vmf_error *err)
{
	*got = 0;
	if (len == 0 || len > VMF_FILE_CHUNK_MAX)
		return vmf_err(err, EINVAL, "a file read takes 1 to %u bytes, not %zu", VMF_FILE_CHUNK_MAX, len);
	Vmf__Agent__FileAccess acc;
	access_of(u, &acc);
	Vmf__Agent__FileRead rd = VMF__AGENT__FILE_READ__INIT;
	rd.access = &acc;
	rd.path = (char *)path;
	rd.offset = offset;
	rd.length = (uint32_t)len;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_READ;
	req.file_read = &rd;
	Vmf__Agent__AgentReply *rep;
	int r = file_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_FILE_DATA, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	const Vmf__Agent__FileData *d = rep->file_data;
	if (d->data.len > len) {
		r = vmf_err(err, EPROTO, "the agent answered a read of %zu bytes with %zu", len, d->data.len);
	} else {
		if (d->data.len)
			memcpy(buf, d->data.data, d->data.len);
		*got = d->data.len;
		*size = d->size;
		*eof = d->eof;
	}
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return r;
}

int
vmf_client_file_write(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
		      uint64_t offset, const void *data, size_t len, int truncate, struct vmf_file_entry *e,
		      int timeout_ms, struct vmf_error *err)
{
	if (len > VMF_FILE_CHUNK_MAX)
		return vmf_err(err, EINVAL, "a file write takes at most %u bytes, not %zu", VMF_FILE_CHUNK_MAX, len);
	Vmf__Agent__FileAccess acc;
	access_of(u, &acc);
	Vmf__Agent__FileWrite w = VMF__AGENT__FILE_WRITE__INIT;
	w.access = &acc;
	w.path = (char *)path;
	w.offset = offset;
	w.data.data = (uint8_t *)data;
	w.data.len = len;
	w.truncate = truncate != 0;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_WRITE;
	req.file_write = &w;
	return entry_call(a, &req, e, timeout_ms, err);
}

int
vmf_client_file_watch(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path, int recursive,
		      uint64_t *watch_id, int timeout_ms, struct vmf_error *err)
{
	*watch_id = 0;
	Vmf__Agent__FileAccess acc;
	access_of(u, &acc);
	Vmf__Agent__FileWatch w = VMF__AGENT__FILE_WATCH__INIT;
	w.access = &acc;
	w.path = (char *)path;
	w.recursive = recursive != 0;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_WATCH;
	req.file_watch = &w;
	Vmf__Agent__AgentReply *rep;
	int r = file_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_FILE_WATCH_STARTED, &rep, timeout_ms, err);
	if (r < 0)
		return r;
	uint64_t id = rep->file_watch_started->watch_id;
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	if (id == 0)
		return vmf_err(err, EPROTO, "the agent started a watch of %s without an id", path);
	if ((r = agent_client_watch_add(a, id, err)) < 0)
		return r;
	*watch_id = id;
	return 0;
}

int
vmf_client_file_unwatch(struct vmf_client_agent *a, uint64_t watch_id, int timeout_ms, struct vmf_error *err)
{
	Vmf__Agent__FileUnwatch u = VMF__AGENT__FILE_UNWATCH__INIT;
	u.watch_id = watch_id;
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_FILE_UNWATCH;
	req.file_unwatch = &u;
	/* Its events still on the way are dropped; none come after the
	 * answer. */
	agent_client_watch_stopping(a, watch_id);
	Vmf__Agent__AgentReply *rep;
	int r = file_call(a, &req, VMF__AGENT__AGENT_REPLY__BODY_FILE_UNWATCHED, &rep, timeout_ms, err);
	agent_client_watch_forget(a, watch_id);
	if (r < 0)
		return r;
	vmf__agent__agent_reply__free_unpacked(rep, NULL);
	return 0;
}
