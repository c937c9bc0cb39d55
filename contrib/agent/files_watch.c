/* Watching directories for the host (FileWatch): inotify, one instance per
 * watch, its events queued per watch and written to the watch's connection
 * when it takes output.  Everything a watch holds is bounded: directories
 * watched, events and name bytes queued (past them events are counted as
 * lost, never kept), watches per connection.  A watch ends with its
 * connection, a FileUnwatch, or its directory's removal. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define WATCHES_PER_CONN 8u
#define WATCH_DIRS_MAX 1024u
#define WATCH_DEPTH_MAX 16
#define WATCH_QUEUE_MAX 256u
#define WATCH_QUEUE_BYTES (64u * 1024u)
/* Name bytes one FileEvents frame carries: the rest of a 64 KiB frame is
 * the frame's own. */
#define WATCH_FRAME_BYTES (48u * 1024u)
#define WATCH_MASK (IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB | \
		    IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)

struct wdir {
	int wd;
	int level;
	char *rel;                   /* "" for the watched directory */
};

struct wevent {
	char *name;
	Vmf__Agent__FileEventType type;
};

struct watch {
	uint64_t id;
	struct conn *conn;
	int fd;
	bool recursive;
	Vmf__Agent__FileAccess access;
	char sys[PATH_MAX];
	struct wdir *dirs;
	size_t n_dirs;
	struct wevent q[WATCH_QUEUE_MAX];
	size_t q_head, q_len, q_bytes;
	uint32_t lost;
	bool ended;
	/* Stopped (its connection gone, an unwatch): freed at the loop's next
	 * turn, since a poll entry of this turn may still point at it. */
	bool dead;
	char reason[200];
	struct watch *next;
};

static struct watch *watches;
static uint64_t last_id;

static void
watch_free(struct watch *w)
{
	for (struct watch **pp = &watches; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	if (w->fd >= 0)
		close(w->fd);
	for (size_t i = 0; i < w->n_dirs; i++)
		free(w->dirs[i].rel);
	free(w->dirs);
	for (size_t i = 0; i < w->q_len; i++)
		free(w->q[(w->q_head + i) % WATCH_QUEUE_MAX].name);
	free(w);
}

static void
watch_kill(struct watch *w)
{
	w->dead = true;
	w->conn = NULL;
}

static void
watch_end(struct watch *w, const char *reason)
{
	if (w->ended)
		return;
	w->ended = true;
	snprintf(w->reason, sizeof(w->reason), "%s", reason);
}

static struct wdir *
dir_find(struct watch *w, int wd)
{
	for (size_t i = 0; i < w->n_dirs; i++)
		if (w->dirs[i].wd == wd)
			return &w->dirs[i];
	return NULL;
}

/* Watches the directory sys (rel below the watched one) and, when the
 * watch is recursive, the directories below it.  -1 with errno (E2BIG past
 * the directory limit) when the directory itself cannot be watched;
 * subdirectories that cannot be are skipped (they may be gone already). */
static int
dir_add(struct watch *w, const char *sys, const char *rel, int level)
{
	if (w->n_dirs >= WATCH_DIRS_MAX) {
		errno = E2BIG;
		return -1;
	}
	int wd = inotify_add_watch(w->fd, sys, WATCH_MASK);
	if (wd < 0)
		return -1;
	if (!dir_find(w, wd)) {
		struct wdir *d = realloc(w->dirs, (w->n_dirs + 1) * sizeof(*d));
		char *r = strdup(rel);
		if (!d || !r) {
			free(r);
			if (d)
				w->dirs = d;
			inotify_rm_watch(w->fd, wd);
			errno = ENOMEM;
			return -1;
		}
		w->dirs = d;
		w->dirs[w->n_dirs++] = (struct wdir){ .wd = wd, .level = level, .rel = r };
	}
	if (!w->recursive || level >= WATCH_DEPTH_MAX)
		return 0;
	int dfd = open(sys, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *dir = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!dir) {
		if (dfd >= 0)
			close(dfd);
		return 0;
	}
	int rc = 0;
	struct dirent *de;
	while (rc == 0 && (de = readdir(dir))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		struct stat st;
		if (de->d_type != DT_DIR &&
		    (de->d_type != DT_UNKNOWN || fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		     !S_ISDIR(st.st_mode)))
			continue;
		char csys[PATH_MAX], crel[PATH_MAX];
		if (snprintf(csys, sizeof(csys), "%s/%s", sys, de->d_name) >= (int)sizeof(csys) ||
		    snprintf(crel, sizeof(crel), "%s%s%s", rel, *rel ? "/" : "", de->d_name) >= (int)sizeof(crel))
			continue;
		if (dir_add(w, csys, crel, level + 1) < 0 && (errno == E2BIG || errno == ENOMEM))
			rc = -1;
	}
	int e = errno;
	closedir(dir);
	errno = e;
	return rc;
}

static void
queue_event(struct watch *w, const char *rel, const char *name, Vmf__Agent__FileEventType type)
{
	char full[PATH_MAX];
	int n = snprintf(full, sizeof(full), "%s%s%s", rel, *rel && *name ? "/" : "", name);
	if (n < 0 || n >= (int)sizeof(full) || w->q_len == WATCH_QUEUE_MAX ||
	    w->q_bytes + (size_t)n > WATCH_QUEUE_BYTES) {
		w->lost++;
		return;
	}
	char *s = strdup(full);
	if (!s) {
		w->lost++;
		return;
	}
	w->q[(w->q_head + w->q_len++) % WATCH_QUEUE_MAX] = (struct wevent){ .name = s, .type = type };
	w->q_bytes += (size_t)n;
}

/* A directory made (or moved in) below a recursive watch is watched too,
 * as the watch's user. */
static void
follow_new_dir(struct watch *w, const struct wdir *parent, const char *name)
{
	if (!w->recursive || parent->level >= WATCH_DEPTH_MAX)
		return;
	char sys[PATH_MAX], rel[PATH_MAX];
	if (snprintf(sys, sizeof(sys), "%s%s%s/%s", w->sys, *parent->rel ? "/" : "", parent->rel, name) >=
		    (int)sizeof(sys) ||
	    snprintf(rel, sizeof(rel), "%s%s%s", parent->rel, *parent->rel ? "/" : "", name) >= (int)sizeof(rel))
		return;
	struct agent_call quiet = { 0 };
	struct files_identity id;
	int level = parent->level + 1;
	if (files_become(&quiet, &w->access, &id) && dir_add(w, sys, rel, level) < 0 && errno == E2BIG)
		w->lost++;
	files_restore(&id);
}

static void
take_event(struct watch *w, const struct inotify_event *ev)
{
	if (ev->mask & IN_Q_OVERFLOW) {
		w->lost++;
		return;
	}
	struct wdir *d = dir_find(w, ev->wd);
	if (!d)
		return;
	if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)) {
		/* Below the watched directory its parent reports it. */
		if (d->level == 0)
			watch_end(w, ev->mask & IN_MOVE_SELF ? "the watched directory was moved"
							     : "the watched directory was removed");
		return;
	}
	const char *name = ev->len ? ev->name : "";
	if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
		queue_event(w, d->rel, name, VMF__AGENT__FILE_EVENT_TYPE__FILE_EVENT_CREATE);
		if (ev->mask & IN_ISDIR)
			follow_new_dir(w, d, name);
	}
	if (ev->mask & IN_MODIFY)
		queue_event(w, d->rel, name, VMF__AGENT__FILE_EVENT_TYPE__FILE_EVENT_WRITE);
	if (ev->mask & IN_ATTRIB)
		queue_event(w, d->rel, name, VMF__AGENT__FILE_EVENT_TYPE__FILE_EVENT_CHMOD);
	if (ev->mask & IN_DELETE)
		queue_event(w, d->rel, name, VMF__AGENT__FILE_EVENT_TYPE__FILE_EVENT_REMOVE);
	if (ev->mask & IN_MOVED_FROM)
		queue_event(w, d->rel, name, VMF__AGENT__FILE_EVENT_TYPE__FILE_EVENT_RENAME);
}

void
files_watch(struct agent_call *call)
{
	const Vmf__Agent__FileWatch *req = call->req->file_watch;
	unsigned n = 0;
	for (struct watch *w = watches; w; w = w->next)
		n += w->conn == call->conn && !w->dead;
	if (n >= WATCHES_PER_CONN) {
		reply_error(call, EMFILE, "%u watches are open on this connection already (at most %u)", n,
			    WATCHES_PER_CONN);
		return;
	}
	struct watch *w = calloc(1, sizeof(*w));
	Vmf__Agent__FileWatchStarted *body = reply_body(call, sizeof(*body), NULL);
	if (!w || !body) {
		free(w);
		if (body)
			reply_error(call, ENOMEM, "out of memory for a watch");
		return;
	}
	vmf__agent__file_watch_started__init(body);
	vmf__agent__file_access__init(&w->access);
	if (req->access)
		w->access.set_user = req->access->set_user, w->access.uid = req->access->uid,
		w->access.gid = req->access->gid;
	w->recursive = req->recursive;
	w->conn = call->conn;
	w->fd = -1;
	struct files_identity id = { 0 };
	if (!files_valid_path(call, "path", req->path, w->sys) || !files_become(call, req->access, &id))
		goto fail;
	w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->fd < 0) {
		reply_error(call, errno, "cannot watch '%.200s': inotify: %s", req->path, strerror(errno));
		goto fail;
	}
	if (dir_add(w, w->sys, "", 0) < 0) {
		int e = errno;
		if (e == E2BIG)
			reply_error(call, e, "cannot watch '%.200s': more than %u directories below it", req->path,
				    WATCH_DIRS_MAX);
		else if (e == ENOTDIR)
			reply_error(call, e, "cannot watch '%.200s': not a directory", req->path);
		else
			reply_error(call, e, "cannot watch '%.200s': %s", req->path, strerror(e));
		goto fail;
	}
	files_restore(&id);
	w->id = ++last_id;
	w->next = watches;
	watches = w;
	body->watch_id = w->id;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_WATCH_STARTED;
	call->reply.file_watch_started = body;
	return;
fail:
	files_restore(&id);
	if (w->fd >= 0)
		close(w->fd);
	for (size_t i = 0; i < w->n_dirs; i++)
		free(w->dirs[i].rel);
	free(w->dirs);
	free(w);
}

void
files_unwatch(struct agent_call *call)
{
	uint64_t wid = call->req->file_unwatch->watch_id;
	for (struct watch *w = watches; w; w = w->next)
		if (w->id == wid && w->conn == call->conn && !w->dead) {
			watch_kill(w);
			Vmf__Agent__FileUnwatched *body = reply_body(call, sizeof(*body), NULL);
			if (!body)
				return;
			vmf__agent__file_unwatched__init(body);
			call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_UNWATCHED;
			call->reply.file_unwatched = body;
			return;
		}
	reply_error(call, ENOENT, "no watch %llu on this connection", (unsigned long long)wid);
}

void
files_watch_conn_gone(struct conn *c)
{
	for (struct watch *w = watches; w; w = w->next)
		if (w->conn == c)
			watch_kill(w);
}

size_t
files_watch_poll_count(void)
{
	size_t n = 0;
	for (struct watch *w = watches; w; w = w->next)
		n += !w->ended && !w->dead;
	return n;
}

nfds_t
files_watch_poll_add(struct pollfd *pv, void **who, int *role, int watch_role, nfds_t np)
{
	for (struct watch *w = watches; w; w = w->next)
		if (!w->ended && !w->dead) {
			pv[np] = (struct pollfd){ .fd = w->fd, .events = POLLIN };
			role[np] = watch_role, who[np++] = w;
		}
	return np;
}

void
files_watch_poll_event(void *who)
{
	struct watch *w = who;
	if (w->dead)
		return;
	/* Read whatever is there: a guest that writes faster than the host
	 * reads loses events (counted), it does not grow the queue. */
	_Alignas(struct inotify_event) char buf[16384];
	for (unsigned rounds = 0; rounds < 16 && !w->ended; rounds++) {
		ssize_t n = read(w->fd, buf, sizeof(buf));
		if (n <= 0) {
			if (n == 0 || (errno != EAGAIN && errno != EINTR))
				watch_end(w, "the watch's inotify instance failed");
			return;
		}
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			take_event(w, ev);
			p += sizeof(*ev) + ev->len;
		}
	}
}

/* Writes each watch's queued events to its connection while it takes
 * output; a watch that ended is freed after its last frame. */
void
files_watch_progress(void)
{
	for (struct watch *w = watches, *nx; w; w = nx) {
		nx = w->next;
		if (w->dead) {
			watch_free(w);
			continue;
		}
		while ((w->q_len || w->lost || w->ended) && conn_accepts_output(w->conn)) {
			Vmf__Agent__FileEvent evs[WATCH_QUEUE_MAX], *ptrs[WATCH_QUEUE_MAX];
			Vmf__Agent__FileEvents fe = VMF__AGENT__FILE_EVENTS__INIT;
			size_t k = 0, bytes = 0;
			while (k < w->q_len) {
				struct wevent *e = &w->q[(w->q_head + k) % WATCH_QUEUE_MAX];
				size_t len = strlen(e->name);
				if (k && bytes + len + 16 > WATCH_FRAME_BYTES)
					break;
				vmf__agent__file_event__init(&evs[k]);
				evs[k].name = e->name, evs[k].type = e->type;
				ptrs[k] = &evs[k];
				bytes += len + 16;
				k++;
			}
			fe.watch_id = w->id;
			fe.n_events = k;
			fe.events = ptrs;
			fe.lost = w->lost;
			bool last = w->ended && k == w->q_len;
			fe.ended = last;
			fe.reason = last ? w->reason : (char *)"";
			Vmf__Agent__AgentReply r = VMF__AGENT__AGENT_REPLY__INIT;
			r.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_EVENTS;
			r.file_events = &fe;
			conn_queue_reply(w->conn, &r);
			for (size_t i = 0; i < k; i++) {
				struct wevent *e = &w->q[w->q_head];
				w->q_bytes -= strlen(e->name);
				free(e->name);
				w->q_head = (w->q_head + 1) % WATCH_QUEUE_MAX;
				w->q_len--;
			}
			w->lost = 0;
			if (last) {
				watch_free(w);
				break;
			}
		}
	}
}

void
files_watch_end_all(void)
{
	while (watches)
		watch_free(watches);
}
