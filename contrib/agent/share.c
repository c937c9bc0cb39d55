/* The share: the host's 9p directory mounted at the share dir (MountShare),
 * unmounted before a suspend (UnmountShare), and the names at its root
 * that inspect lists. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "agent.h"

/* Share listing budget: leaves room in a 64 KiB reply for the other fields. */
#define SHARE_BYTES_MAX (48u * 1024u)

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Bounded so the reply fits a frame.  Before MountShare this lists the bare
 * directory (usually nothing). */
size_t
share_list(char *names[SHARE_NAMES_MAX])
{
	size_t n = 0, bytes = 0;
	DIR *d = opendir(agent_options.share_dir);
	if (!d)
		return 0;
	struct dirent *de;
	while ((de = readdir(d)) && n < SHARE_NAMES_MAX) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		size_t len = strlen(de->d_name);
		if (bytes + len + 3 > SHARE_BYTES_MAX)
			break;
		char *s = strdup(de->d_name);
		if (!s)
			break;
		names[n++] = s;
		bytes += len + 3;
	}
	closedir(d);
	qsort(names, n, sizeof(names[0]), cmp_names);
	return n;
}

/* The 9p source (tag) mounted at dir, from /proc/self/mounts; "" when dir is
 * not a 9p mount point.  statfs() cannot tell: 9p reports the host file
 * system's magic. */
static int
mounted_9p_tag(const char *dir, char *tag, size_t n)
{
	FILE *f = fopen("/proc/self/mounts", "re");
	if (!f)
		return -1;
	char line[1024], src[256], mnt[512], type[64];
	tag[0] = '\0';
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%255s %511s %63s", src, mnt, type) == 3 && !strcmp(mnt, dir))
			snprintf(tag, n, "%s", strcmp(type, "9p") == 0 ? src : "");
	fclose(f);
	return 0;
}

static void
reply_share_path(struct agent_call *call)
{
	Vmf__Agent__MountResult *m = reply_body(call, sizeof(*m), NULL);
	if (!m)
		return;
	vmf__agent__mount_result__init(m);
	m->path = (char *)agent_options.share_dir;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_MOUNT;
	call->reply.mount = m;
}

void
share_mount(struct agent_call *call)
{
	const Vmf__Agent__MountShare *req = call->req->mount_share;
	const char *share_dir = agent_options.share_dir;
	const char *tag = req->tag ? req->tag : "";
	size_t n = strlen(tag);
	/* QEMU caps mount tags at 31 bytes; the character set keeps the tag
	 * from smuggling mount options or path components. */
	if (n == 0 || n > 31) {
		reply_error(call, EINVAL, "share tag must have 1 to 31 characters, got %zu", n);
		return;
	}
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)tag[i]) && !strchr("_-.", tag[i])) {
			reply_error(call, EINVAL, "share tag '%s' has a character other than letters, digits, '_', '-' and '.'",
			     tag);
			return;
		}
	if (agent_options.test_mode) {
		reply_error(call, EPERM, "test mode does not mount");
		return;
	}
	char cur[256];
	if (mounted_9p_tag(share_dir, cur, sizeof(cur)) < 0) {
		reply_error(call, errno, "cannot read /proc/self/mounts: %s", strerror(errno));
		return;
	}
	if (cur[0] && strcmp(cur, tag) != 0) {
		reply_error(call, EBUSY, "%s already has share '%s' mounted, not '%s'", share_dir, cur, tag);
		return;
	}
	if (!cur[0]) {
		if (mkdir(share_dir, 0755) < 0 && errno != EEXIST) {
			reply_error(call, errno, "cannot create %s: %s", share_dir, strerror(errno));
			return;
		}
		if (mount(tag, share_dir, "9p", MS_NODEV | MS_NOSUID,
			  "trans=virtio,version=9p2000.L,msize=262144") < 0) {
			int e = errno;
			/* ENOENT here means no 9p device carries this tag. */
			reply_error(call, e, "cannot mount share '%s' at %s: %s%s", tag, share_dir, strerror(e),
			     e == ENOENT ? " (no virtio-9p device with this mount tag)" : "");
			return;
		}
	}
	reply_share_path(call);
}

/* Suspend asks this first: QEMU refuses to migrate while the 9p share is
 * mounted.  A plain umount, never a lazy one: a lazily detached share stays
 * attached (and migration blocked) as long as a file in it is open. */
void
share_unmount(struct agent_call *call)
{
	const char *share_dir = agent_options.share_dir;
	char cur[256];
	if (mounted_9p_tag(share_dir, cur, sizeof(cur)) < 0) {
		reply_error(call, errno, "cannot read /proc/self/mounts: %s", strerror(errno));
		return;
	}
	if (cur[0] && umount(share_dir) < 0) {
		int e = errno;
		reply_error(call, e, "cannot unmount the share at %s: %s%s", share_dir, strerror(e),
		     e == EBUSY ? " (a process has a file or its working directory in it)" : "");
		return;
	}
	reply_share_path(call);
}
