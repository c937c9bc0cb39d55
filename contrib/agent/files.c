/* Files in the guest: FileStat, FileList, FileMkdir, FileMove, FileRemove,
 * FileRead and FileWrite.  Each runs with the file system ids of the user
 * the request names (setfsuid/setfsgid, no supplementary groups), so the
 * guest kernel resolves paths and checks permissions as for that user; the
 * agent's root never decides.  Everything is bounded: a reply fits a
 * frame (a listing comes in pages), a read or write moves at most
 * FILES_CHUNK_MAX bytes, a listing or removal descends at most so deep,
 * and nothing opened can block the agent (no FIFO or device is read or
 * written: regular files only, opened non-blocking). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define FILES_CHUNK_MAX (48u * 1024u)
#define FILES_LIST_DEPTH_MAX 16u
/* Entries one page of a listing holds, and the packed bytes it may take
 * (the rest of a 64 KiB frame is the reply's own). */
#define FILES_PAGE_MAX 512u
#define FILES_PAGE_BYTES (56u * 1024u)
/* Entries a listing looks at in all, to find its page: past it the
 * request fails rather than keep the agent busy. */
#define FILES_LIST_VISIT_MAX 100000u
/* Names of one directory held at once, sorted. */
#define FILES_DIR_NAMES_MAX 65536u
#define FILES_REMOVE_DEPTH_MAX 128

/* ---- acting as the requested user ---- */

/* Takes on the request's user's file system ids; false (the reply an
 * error) when the agent cannot. */
bool
files_become(struct agent_call *call, const Vmf__Agent__FileAccess *a, struct files_identity *saved)
{
	*saved = (struct files_identity){ 0 };
	if (!a || !a->set_user)
		return true;
	if (a->uid == UINT32_MAX || a->gid == UINT32_MAX) {
		reply_error(call, EINVAL, "user id %u / group id %u: 4294967295 is not a valid id", a->uid, a->gid);
		return false;
	}
	int n = getgroups(0, NULL);
	if (n > 0) {
		saved->groups = calloc((size_t)n, sizeof(gid_t));
		if (!saved->groups || (n = getgroups(n, saved->groups)) < 0) {
			free(saved->groups);
			saved->groups = NULL;
			reply_error(call, errno ? errno : ENOMEM, "cannot read the agent's groups: %s", strerror(errno));
			return false;
		}
		saved->n_groups = n;
	}
	/* The agent's own supplementary groups must not count for the user;
	 * a test agent that is not root keeps its own (it cannot change
	 * them, and cannot take on another user either: refused below). */
	if (n > 0 && setgroups(0, NULL) < 0 && errno != EPERM) {
		reply_error(call, errno, "cannot drop the agent's groups: %s", strerror(errno));
		free(saved->groups);
		saved->groups = NULL;
		return false;
	}
	saved->switched = true;
	setfsgid(a->gid);
	setfsuid(a->uid);
	/* setfsuid reports no error: the ids in force say whether it took. */
	if ((uid_t)setfsuid((uid_t)-1) != a->uid || (gid_t)setfsgid((gid_t)-1) != a->gid) {
		reply_error(call, EPERM, "the agent cannot act as user id %u / group id %u", a->uid, a->gid);
		return false;
	}
	return true;
}

void
files_restore(struct files_identity *saved)
{
	if (!saved->switched)
		return;
	setfsuid(geteuid());
	setfsgid(getegid());
	if (saved->n_groups > 0 && setgroups((size_t)saved->n_groups, saved->groups) < 0 && errno != EPERM)
		logmsg("cannot restore the agent's groups: %s", strerror(errno));
	free(saved->groups);
	saved->groups = NULL;
	saved->switched = false;
}

/* Checks a requested path and sets sys to the path the agent's calls use:
 * the path itself in a guest.  Test mode runs on the host: there every
 * path is taken below --files-root (no file request at all without it),
 * so that a unit test or the fuzz target never touches the host's files
 * and their paths do not depend on where the root is. */
bool
files_valid_path(struct agent_call *call, const char *what, const char *path, char sys[PATH_MAX])
{
	size_t n = strlen(path);
	if (path[0] != '/' || n >= PATH_MAX) {
		reply_error(call, EINVAL, "%s '%.200s' is not an absolute path (of fewer than %d bytes)", what, path,
			    PATH_MAX);
		return false;
	}
	if (!agent_options.test_mode) {
		memcpy(sys, path, n + 1);
		return true;
	}
	const char *root = agent_options.files_root;
	if (!root || strstr(path, "/..") ||
	    snprintf(sys, PATH_MAX, "%s%s", root, strcmp(path, "/") ? path : "") >= PATH_MAX) {
		reply_error(call, EPERM, "test mode serves files only below --files-root, without '..': not '%.200s'",
			    path);
		return false;
	}
	return true;
}

/* ---- entries ---- */

/* The name of id in a passwd or group file (its first and third fields),
 * into buf; "" when absent.  The last answer is kept: a listing asks about
 * the same few ids again and again. */
static const char *
id_name(const char *file, unsigned id, char *cache_name, size_t n, unsigned *cache_id, bool *cached)
{
	if (*cached && *cache_id == id)
		return cache_name;
	cache_name[0] = '\0';
	FILE *f = fopen(file, "re");
	char line[512];
	while (f && fgets(line, sizeof(line), f)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		char *end;
		unsigned long v = strtoul(c2 + 1, &end, 10);
		if (end != c2 + 1 && *end == ':' && v == id) {
			*c1 = '\0';
			snprintf(cache_name, n, "%s", line);
			break;
		}
	}
	if (f)
		fclose(f);
	*cache_id = id;
	*cached = true;
	return cache_name;
}

static const char *
owner_name(uid_t uid)
{
	static char name[64];
	static unsigned id;
	static bool cached;
	return id_name("/etc/passwd", uid, name, sizeof(name), &id, &cached);
}

static const char *
group_name(gid_t gid)
{
	static char name[64];
	static unsigned id;
	static bool cached;
	return id_name("/etc/group", gid, name, sizeof(name), &id, &cached);
}

/* An entry's strings, malloc'ed: freed with the reply body. */
static void
entry_free(Vmf__Agent__FileEntry *e)
{
	free(e->name);
	free(e->path);
	free(e->owner);
	free(e->group);
	free(e->symlink_target);
}

/* Fills e from st (lstat's) for path; -1 when out of memory.  dirfd/name
 * read a symlink's target relative to its directory. */
static int
entry_fill(Vmf__Agent__FileEntry *e, const char *path, const struct stat *st, int dirfd, const char *name)
{
	vmf__agent__file_entry__init(e);
	const char *slash = strrchr(path, '/');
	const char *base = slash && slash[1] ? slash + 1 : path;
	char target[PATH_MAX] = "";
	if (S_ISLNK(st->st_mode)) {
		ssize_t k = readlinkat(dirfd, name, target, sizeof(target) - 1);
		target[k > 0 ? k : 0] = '\0';
	}
	e->type = S_ISREG(st->st_mode) ? VMF__AGENT__FILE_TYPE__FILE_TYPE_FILE
		  : S_ISDIR(st->st_mode) ? VMF__AGENT__FILE_TYPE__FILE_TYPE_DIRECTORY
		  : S_ISLNK(st->st_mode) ? VMF__AGENT__FILE_TYPE__FILE_TYPE_SYMLINK
					  : VMF__AGENT__FILE_TYPE__FILE_TYPE_UNSPECIFIED;
	e->size = (uint64_t)st->st_size;
	e->mode = st->st_mode;
	e->uid = st->st_uid;
	e->gid = st->st_gid;
	e->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
	e->name = strdup(base);
	e->path = strdup(path);
	e->owner = strdup(owner_name(st->st_uid));
	e->group = strdup(group_name(st->st_gid));
	e->symlink_target = strdup(target);
	if (!e->name || !e->path || !e->owner || !e->group || !e->symlink_target) {
		entry_free(e);
		vmf__agent__file_entry__init(e);
		return -1;
	}
	return 0;
}

struct entry_body {
	Vmf__Agent__FileEntry entry;
	Vmf__Agent__FileMkdirResult mkdir;
};

static void
entry_body_release(void *p)
{
	entry_free(&((struct entry_body *)p)->entry);
}

/* The reply an entry for path (sys lstat'ed now). */
static Vmf__Agent__FileEntry *
reply_entry(struct agent_call *call, const char *sys, const char *path)
{
	struct entry_body *body = reply_body(call, sizeof(*body), entry_body_release);
	if (!body)
		return NULL;
	struct stat st;
	if (lstat(sys, &st) < 0) {
		reply_error(call, errno, "cannot stat '%.300s': %s", path, strerror(errno));
		return NULL;
	}
	if (entry_fill(&body->entry, path, &st, AT_FDCWD, sys) < 0) {
		reply_error(call, ENOMEM, "out of memory for the entry of '%.300s'", path);
		return NULL;
	}
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_ENTRY;
	call->reply.file_entry = &body->entry;
	return &body->entry;
}

void
files_stat(struct agent_call *call)
{
	const Vmf__Agent__FileStat *req = call->req->file_stat;
	struct files_identity id = { 0 };
	char sys[PATH_MAX];
	if (!files_valid_path(call, "path", req->path, sys) || !files_become(call, req->access, &id))
		goto done;
	reply_entry(call, sys, req->path);
done:
	files_restore(&id);
}

/* ---- FileList ---- */

struct list_body {
	Vmf__Agent__FileEntries entries;
	Vmf__Agent__FileEntry entry[FILES_PAGE_MAX];
	Vmf__Agent__FileEntry *ptrs[FILES_PAGE_MAX];
};

static void
list_body_release(void *p)
{
	struct list_body *body = p;
	for (size_t i = 0; i < body->entries.n_entries; i++)
		entry_free(&body->entry[i]);
}

struct listing {
	struct agent_call *call;
	struct list_body *body;
	uint32_t depth, skip;
	uint32_t seen;                /* entries walked past, skipped ones too */
	size_t bytes;                 /* packed size of the page so far */
	bool full;                    /* the page is full: stop */
	bool failed;                  /* the reply is an error */
};

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory's names, sorted (a stable order pages can count on). */
static char **
dir_names(struct listing *l, DIR *d, const char *path, size_t *n)
{
	char **names = NULL;
	size_t cap = 0;
	*n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (*n == FILES_DIR_NAMES_MAX) {
			reply_error(l->call, EFBIG, "directory '%.300s' has more than %u entries", path,
				    FILES_DIR_NAMES_MAX);
			goto fail;
		}
		if (*n == cap) {
			cap = cap ? cap * 2 : 64;
			char **more = realloc(names, cap * sizeof(*names));
			if (!more)
				goto oom;
			names = more;
		}
		if (!(names[*n] = strdup(de->d_name)))
			goto oom;
		(*n)++;
	}
	if (*n > 1)
		qsort(names, *n, sizeof(*names), cmp_names);
	return names;
oom:
	reply_error(l->call, ENOMEM, "out of memory listing '%.300s'", path);
fail:
	for (size_t i = 0; i < *n; i++)
		free(names[i]);
	free(names);
	l->failed = true;
	return NULL;
}

/* Adds one entry to the page unless it is before the page or the page is
 * full. */
static void
list_emit(struct listing *l, int dirfd, const char *name, const char *path, const struct stat *st)
{
	if (l->seen++ < l->skip)
		return;
	struct list_body *b = l->body;
	size_t i = b->entries.n_entries;
	if (i == FILES_PAGE_MAX) {
		l->full = true;
		return;
	}
	if (entry_fill(&b->entry[i], path, st, dirfd, name) < 0) {
		reply_error(l->call, ENOMEM, "out of memory listing '%.300s'", path);
		l->failed = true;
		return;
	}
	size_t k = vmf__agent__file_entry__get_packed_size(&b->entry[i]) + 8;
	if (l->bytes + k > FILES_PAGE_BYTES) {
		entry_free(&b->entry[i]);
		l->full = true;
		return;
	}
	l->bytes += k;
	b->ptrs[i] = &b->entry[i];
	b->entries.n_entries = i + 1;
}

/* The entries of the directory open as dirfd (path), and below it down to
 * level l->depth; closes dirfd. */
static void
list_dir(struct listing *l, int dirfd, const char *path, uint32_t level)
{
	DIR *d = fdopendir(dirfd);
	if (!d) {
		reply_error(l->call, errno, "cannot list '%.300s': %s", path, strerror(errno));
		l->failed = true;
		close(dirfd);
		return;
	}
	size_t n;
	char **names = dir_names(l, d, path, &n);
	for (size_t i = 0; names && i < n && !l->full && !l->failed; i++) {
		if (l->seen >= FILES_LIST_VISIT_MAX) {
			reply_error(l->call, EFBIG, "listing '%.300s' passes %u entries: ask for less depth", path,
				    FILES_LIST_VISIT_MAX);
			l->failed = true;
			break;
		}
		char child[PATH_MAX];
		struct stat st;
		if (snprintf(child, sizeof(child), "%s%s%s", path, strcmp(path, "/") ? "/" : "", names[i]) >=
			    (int)sizeof(child) ||
		    fstatat(dirfd, names[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;   /* too long, or gone since it was read */
		list_emit(l, dirfd, names[i], child, &st);
		if (S_ISDIR(st.st_mode) && level < l->depth && !l->full && !l->failed) {
			int sub = openat(dirfd, names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0)
				list_dir(l, sub, child, level + 1);
		}
	}
	for (size_t i = 0; names && i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
}

void
files_list(struct agent_call *call)
{
	const Vmf__Agent__FileList *req = call->req->file_list;
	struct files_identity id = { 0 };
	char sys[PATH_MAX];
	if (!files_valid_path(call, "path", req->path, sys) || !files_become(call, req->access, &id))
		goto done;
	if (req->depth > FILES_LIST_DEPTH_MAX) {
		reply_error(call, EINVAL, "list depth %u exceeds the limit of %u", req->depth, FILES_LIST_DEPTH_MAX);
		goto done;
	}
	struct list_body *body = reply_body(call, sizeof(*body), list_body_release);
	if (!body)
		goto done;
	int fd = open(sys, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		reply_error(call, errno, "cannot list '%.300s': %s", req->path, strerror(errno));
		goto done;
	}
	vmf__agent__file_entries__init(&body->entries);
	body->entries.entries = body->ptrs;
	struct listing l = { .call = call, .body = body, .depth = req->depth ? req->depth : 1, .skip = req->skip };
	list_dir(&l, fd, req->path, 1);
	if (l.failed)
		goto done;
	body->entries.more = l.full;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_ENTRIES;
	call->reply.file_entries = &body->entries;
done:
	files_restore(&id);
}

/* ---- FileMkdir, FileMove ---- */

void
files_mkdir(struct agent_call *call)
{
	const Vmf__Agent__FileMkdir *req = call->req->file_mkdir;
	struct files_identity id = { 0 };
	char sys[PATH_MAX];
	if (!files_valid_path(call, "path", req->path, sys) || !files_become(call, req->access, &id))
		goto done;
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s", sys);
	bool created = false;
	for (char *c = p + 1;; c++) {
		if (*c != '/' && *c != '\0')
			continue;
		char save = *c;
		*c = '\0';
		created = false;
		if (c > p + 1 && c[-1] != '/') {
			if (mkdir(p, 0755) == 0) {
				created = true;
			} else if (errno != EEXIST) {
				reply_error(call, errno, "cannot create directory '%.300s': %s", p, strerror(errno));
				goto done;
			}
		}
		*c = save;
		if (save == '\0')
			break;
	}
	struct stat st;
	if (stat(sys, &st) == 0 && !S_ISDIR(st.st_mode)) {
		reply_error(call, ENOTDIR, "'%.300s' exists and is not a directory", req->path);
		goto done;
	}
	Vmf__Agent__FileEntry *e = reply_entry(call, sys, req->path);
	if (!e)
		goto done;
	struct entry_body *body = call->body;
	vmf__agent__file_mkdir_result__init(&body->mkdir);
	body->mkdir.entry = e;
	body->mkdir.created = created;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_MKDIR;
	call->reply.file_mkdir = &body->mkdir;
done:
	files_restore(&id);
}

void
files_move(struct agent_call *call)
{
	const Vmf__Agent__FileMove *req = call->req->file_move;
	struct files_identity id = { 0 };
	char src[PATH_MAX], dst[PATH_MAX];
	if (!files_valid_path(call, "source", req->source, src) || !files_valid_path(call, "destination", req->destination, dst) ||
	    !files_become(call, req->access, &id))
		goto done;
	if (rename(src, dst) < 0) {
		reply_error(call, errno, "cannot move '%.200s' to '%.200s': %s", req->source, req->destination,
			    strerror(errno));
		goto done;
	}
	reply_entry(call, dst, req->destination);
done:
	files_restore(&id);
}

/* ---- FileRemove ---- */

/* Everything below the directory open as fd (on device dev), then fd
 * closed; no symlink followed, no other file system entered. */
static int
remove_below(int fd, dev_t dev, int level)
{
	if (level > FILES_REMOVE_DEPTH_MAX) {
		close(fd);
		errno = ELOOP;
		return -1;
	}
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	int rc = 0;
	struct dirent *de;
	while (rc == 0 && (errno = 0, de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		struct stat st;
		if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (S_ISDIR(st.st_mode)) {
			if (st.st_dev != dev) {
				errno = EXDEV;
				rc = -1;
				break;
			}
			int sub = openat(fd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0 || remove_below(sub, dev, level + 1) < 0 || unlinkat(fd, de->d_name, AT_REMOVEDIR) < 0)
				rc = -1;
			else
				rewinddir(d);   /* the directory changed under readdir */
		} else if (unlinkat(fd, de->d_name, 0) < 0) {
			rc = -1;
		}
	}
	int e = errno;
	closedir(d);
	errno = e;
	return rc;
}

void
files_remove(struct agent_call *call)
{
	const Vmf__Agent__FileRemove *req = call->req->file_remove;
	struct files_identity id = { 0 };
	char sys[PATH_MAX];
	if (!files_valid_path(call, "path", req->path, sys) || !files_become(call, req->access, &id))
		goto done;
	if (!strcmp(req->path, "/")) {
		reply_error(call, EBUSY, "'/' is not removed");
		goto done;
	}
	struct stat st;
	if (lstat(sys, &st) < 0) {
		reply_error(call, errno, "cannot remove '%.300s': %s", req->path, strerror(errno));
		goto done;
	}
	int rc;
	if (S_ISDIR(st.st_mode)) {
		int fd = open(sys, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		rc = fd < 0 ? -1 : remove_below(fd, st.st_dev, 0);
		if (rc == 0)
			rc = rmdir(sys);
	} else {
		rc = unlink(sys);
	}
	if (rc < 0) {
		reply_error(call, errno, "cannot remove '%.300s': %s%s", req->path, strerror(errno),
			    errno == EXDEV ? " (a file system is mounted below it)" : "");
		goto done;
	}
	Vmf__Agent__FileRemoved *r = reply_body(call, sizeof(*r), NULL);
	if (!r)
		goto done;
	vmf__agent__file_removed__init(r);
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_REMOVED;
	call->reply.file_removed = r;
done:
	files_restore(&id);
}

/* ---- FileRead, FileWrite ---- */

/* A regular file opened without blocking (a FIFO's open would wait for
 * its other end); -1 with the reply an error. */
static int
open_regular(struct agent_call *call, const char *sys, const char *path, int flags, struct stat *st)
{
	int fd = open(sys, flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0644);
	if (fd < 0 && errno == ENXIO) {
		/* A FIFO without a reader, a device without its driver. */
		reply_error(call, EINVAL, "'%.300s' is not a regular file", path);
		return -1;
	}
	if (fd < 0) {
		reply_error(call, errno, "cannot open '%.300s': %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, st) < 0) {
		reply_error(call, errno, "cannot stat '%.300s': %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	if (!S_ISREG(st->st_mode)) {
		int e = S_ISDIR(st->st_mode) ? EISDIR : EINVAL;
		reply_error(call, e, "'%.300s' is not a regular file", path);
		close(fd);
		return -1;
	}
	return fd;
}

struct data_body {
	Vmf__Agent__FileData data;
	uint8_t bytes[FILES_CHUNK_MAX];
};

void
files_read(struct agent_call *call)
{
	const Vmf__Agent__FileRead *req = call->req->file_read;
	struct files_identity id = { 0 };
	int fd = -1;
	char sys[PATH_MAX];
	if (!files_valid_path(call, "path", req->path, sys) || !files_become(call, req->access, &id))
		goto done;
	if (req->length > FILES_CHUNK_MAX || req->offset > (uint64_t)INT64_MAX) {
		reply_error(call, EINVAL, "a read of %u bytes at %llu: at most %u bytes at an offset below 2^63",
			    req->length, (unsigned long long)req->offset, FILES_CHUNK_MAX);
		goto done;
	}
	struct stat st;
	if ((fd = open_regular(call, sys, req->path, O_RDONLY, &st)) < 0)
		goto done;
	struct data_body *body = reply_body(call, sizeof(*body), NULL);
	if (!body)
		goto done;
	uint32_t want = req->length ? req->length : FILES_CHUNK_MAX;
	ssize_t n;
	while ((n = pread(fd, body->bytes, want, (off_t)req->offset)) < 0 && errno == EINTR)
		;
	if (n < 0) {
		reply_error(call, errno, "cannot read '%.300s': %s", req->path, strerror(errno));
		goto done;
	}
	vmf__agent__file_data__init(&body->data);
	body->data.data.data = body->bytes;
	body->data.data.len = (size_t)n;
	body->data.size = (uint64_t)st.st_size;
	body->data.eof = (size_t)n < want;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_FILE_DATA;
	call->reply.file_data = &body->data;
done:
	if (fd >= 0)
		close(fd);
	files_restore(&id);
}

void
files_write(struct agent_call *call)
{
	const Vmf__Agent__FileWrite *req = call->req->file_write;
	struct files_identity id = { 0 };
	int fd = -1;
	char sys[PATH_MAX];
	if (!files_valid_path(call, "path", req->path, sys) || !files_become(call, req->access, &id))
		goto done;
	if (req->data.len > FILES_CHUNK_MAX || req->offset > (uint64_t)INT64_MAX - FILES_CHUNK_MAX) {
		reply_error(call, EINVAL, "a write of %zu bytes at %llu: at most %u bytes at an offset below 2^63",
			    req->data.len, (unsigned long long)req->offset, FILES_CHUNK_MAX);
		goto done;
	}
	struct stat st;
	if ((fd = open_regular(call, sys, req->path, O_WRONLY | O_CREAT, &st)) < 0)
		goto done;
	/* After the type check: a FIFO or device is never truncated. */
	if (req->truncate && ftruncate(fd, 0) < 0) {
		reply_error(call, errno, "cannot truncate '%.300s': %s", req->path, strerror(errno));
		goto done;
	}
	size_t off = 0;
	while (off < req->data.len) {
		ssize_t w = pwrite(fd, req->data.data + off, req->data.len - off, (off_t)(req->offset + off));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			reply_error(call, w < 0 ? errno : EIO, "cannot write '%.300s': %s", req->path,
				    w < 0 ? strerror(errno) : "nothing written");
			goto done;
		}
		off += (size_t)w;
	}
	reply_entry(call, sys, req->path);
done:
	if (fd >= 0)
		close(fd);
	files_restore(&id);
}
