/* Block devices the host attached (MountDisk, UnmountDisk), found by
 * their serial: a disk appears when its uevent comes, is mounted nodev and
 * nosuid where the host says, and is unmounted only where it is what is
 * mounted. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

/* A MountDisk's or UnmountDisk's reply and the strings it names. */
struct disk_body {
	Vmf__Agent__DiskMounted disk;
	char dev[64];
	char path[PATH_MAX];
};

static void
disk_body_fill(struct disk_body *body)
{
	vmf__agent__disk_mounted__init(&body->disk);
	body->disk.device = body->dev;
	body->disk.path = body->path;
}

/* The serial of /sys/block/NAME: virtio-blk's "serial" attribute, or the
 * unit serial number of a SCSI disk (VPD page 0x80: a 4-byte header, then
 * the serial). */
static bool
disk_has_serial(const char *name, const char *serial)
{
	char p[PATH_MAX], buf[256];
	snprintf(p, sizeof(p), "/sys/block/%s/serial", name);
	if (read_small(p, buf, sizeof(buf)) == 0 && strcmp(buf, serial) == 0)
		return true;
	snprintf(p, sizeof(p), "/sys/block/%s/device/vpd_pg80", name);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	unsigned char v[128];
	ssize_t n = read(fd, v, sizeof(v));
	close(fd);
	if (n < 4)
		return false;
	size_t len = ((size_t)v[2] << 8 | v[3]);
	if (len > (size_t)n - 4)
		len = (size_t)n - 4;
	/* QEMU pads nothing, other targets pad with spaces. */
	while (len > 0 && (v[4 + len - 1] == ' ' || v[4 + len - 1] == '\0'))
		len--;
	return len == strlen(serial) && memcmp(v + 4, serial, len) == 0;
}

bool
disk_find(const char *serial, char *name, size_t n)
{
	DIR *d = opendir("/sys/block");
	if (!d)
		return false;
	struct dirent *de;
	bool found = false;
	while (!found && (de = readdir(d)))
		if (de->d_name[0] != '.' && disk_has_serial(de->d_name, serial)) {
			snprintf(name, n, "%s", de->d_name);
			found = true;
		}
	closedir(d);
	return found;
}

/* What a host may name a disk by (QEMU's and the VMMs' serials). */
bool
disk_serial_ok(const char *serial)
{
	size_t n = strlen(serial);
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)serial[i]) && serial[i] != '-' && serial[i] != '_')
			return false;
	return n > 0 && n <= DISK_SERIAL_MAX;
}

static bool
valid_serial(struct agent_call *call, const char *serial)
{
	size_t n = strlen(serial);
	if (n == 0 || n > DISK_SERIAL_MAX) {
		reply_error(call, EINVAL, "disk serial must have 1 to %d characters, got %zu", DISK_SERIAL_MAX, n);
		return false;
	}
	if (!disk_serial_ok(serial)) {
		reply_error(call, EINVAL, "disk serial '%s' has a character other than letters, digits, '-' and '_'",
			    serial);
		return false;
	}
	return true;
}

/* An absolute path with no "." or ".." component, of which every existing
 * component is a directory (made 0755 where missing). */
static int
make_mount_point(struct agent_call *call, const char *path)
{
	if (path[0] != '/' || strlen(path) >= PATH_MAX) {
		reply_error(call, EINVAL, "guest mount point '%s' is not an absolute path", path);
		return -1;
	}
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s", path);
	for (char *c = p + 1;; c++) {
		if (*c != '/' && *c != '\0')
			continue;
		char save = *c;
		*c = '\0';
		const char *last = strrchr(p, '/') + 1;
		if (!strcmp(last, ".") || !strcmp(last, "..")) {
			reply_error(call, EINVAL, "guest mount point '%s' has a '.' or '..' component", path);
			return -1;
		}
		if (*last && mkdir(p, 0755) < 0 && errno != EEXIST) {
			reply_error(call, errno, "cannot create %s: %s", p, strerror(errno));
			return -1;
		}
		*c = save;
		if (save == '\0')
			break;
	}
	return 0;
}

void
disk_mount(struct agent_call *call)
{
	const Vmf__Agent__MountDisk *req = call->req->mount_disk;
	const char *serial = req->serial ? req->serial : "";
	const char *path = req->path ? req->path : "";
	const char *fstype = req->fstype && *req->fstype ? req->fstype : "ext4";
	if (!valid_serial(call, serial))
		return;
	for (const char *c = fstype; *c; c++)
		if (!isalnum((unsigned char)*c) && *c != '_') {
			reply_error(call, EINVAL, "file system type '%s' is not a file system type name", fstype);
			return;
		}
	if (agent_options.test_mode) {
		reply_error(call, EPERM, "test mode does not mount");
		return;
	}
	/* The host adds the device just before asking: its uevent may not
	 * have come yet (SCSI hot-plug scans on the controller's event). */
	int64_t deadline = vmf_now_ms() + (req->timeout_ms ? req->timeout_ms : 10000);
	struct disk_body *body = reply_body(call, sizeof(*body), NULL);
	if (!body)
		return;
	char name[64];
	uevent_drain();
	while (!disk_find(serial, name, sizeof(name))) {
		if (vmf_now_ms() >= deadline) {
			reply_error(call, ETIMEDOUT, "no block device with serial '%s' appeared within %u ms", serial,
			     req->timeout_ms ? req->timeout_ms : 10000);
			return;
		}
		if (!uevent_wait(deadline))
			usleep(20000);
		uevent_drain();
	}
	snprintf(body->dev, sizeof(body->dev), "/dev/%s", name);
	/* The sysfs entry comes before the disk is usable: devtmpfs makes
	 * the node a moment later, and sd opens it only once probed (ENXIO
	 * until then). */
	for (;;) {
		int fd = open(body->dev, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
		if (fd >= 0) {
			close(fd);
			break;
		}
		if (vmf_now_ms() >= deadline) {
			reply_error(call, errno, "block device %s (serial %s) cannot be opened: %s", body->dev, serial,
			     strerror(errno));
			return;
		}
		usleep(5000);
	}
	body->path[0] = '\0';
	if (*path) {
		/* Firecracker gives a disk by swapping the file behind a
		 * zero-size placeholder drive: the guest sees the new size only
		 * once it has handled the config-change interrupt.  A mount
		 * before that fails, so wait for a size (a disk that stays
		 * empty could not be mounted anyway). */
		char sz[32], sp[96];
		snprintf(sp, sizeof(sp), "/sys/block/%s/size", name);
		while (read_small(sp, sz, sizeof(sz)) < 0 || strtoull(sz, NULL, 10) == 0) {
			if (vmf_now_ms() >= deadline) {
				reply_error(call, ENOSPC, "block device %s (serial %s) has size 0: nothing to mount at %s",
				     body->dev, serial, path);
				return;
			}
			usleep(5000);
		}
		if (make_mount_point(call, path) < 0)
			return;
		unsigned long flags = MS_NODEV | MS_NOSUID | (req->read_only ? MS_RDONLY : 0);
		int rc;
		while ((rc = mount(body->dev, path, fstype, flags, NULL)) < 0 && errno == ENXIO && vmf_now_ms() < deadline)
			usleep(5000);
		if (rc < 0) {
			int e = errno;
			reply_error(call, e, "cannot mount %s (serial %s) as %s at %s: %s", body->dev, serial, fstype, path,
			     strerror(e));
			return;
		}
		snprintf(body->path, sizeof(body->path), "%s", path);
	}
	disk_body_fill(body);
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_DISK_MOUNTED;
	call->reply.disk_mounted = &body->disk;
}

/* Only the disk's own file system is unmounted, and a SCSI disk is deleted
 * in the guest before the host unplugs it. */
void
disk_unmount(struct agent_call *call)
{
	const Vmf__Agent__UnmountDisk *req = call->req->unmount_disk;
	const char *serial = req->serial ? req->serial : "";
	const char *path = req->path ? req->path : "";
	if (!valid_serial(call, serial))
		return;
	if (agent_options.test_mode) {
		reply_error(call, EPERM, "test mode does not unmount");
		return;
	}
	struct disk_body *body = reply_body(call, sizeof(*body), NULL);
	if (!body)
		return;
	char name[64] = "";
	bool present = disk_find(serial, name, sizeof(name));
	body->dev[0] = body->path[0] = '\0';
	if (present)
		snprintf(body->dev, sizeof(body->dev), "/dev/%s", name);
	if (*path) {
		/* Only if the disk is what is mounted there: never another
		 * file system the guest put at the same path. */
		struct stat mst, dst;
		if (present && stat(path, &mst) == 0 && stat(body->dev, &dst) == 0 && mst.st_dev == dst.st_rdev) {
			sync();
			if (umount2(path, 0) < 0) {
				int e = errno;
				reply_error(call, e, "cannot unmount %s from %s: %s%s", body->dev, path, strerror(e),
				     e == EBUSY ? " (a process in the guest uses it)" : "");
				return;
			}
			snprintf(body->path, sizeof(body->path), "%s", path);
		}
	}
	if (present) {
		char p[PATH_MAX];
		int fd = open(body->dev, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			fsync(fd);
			close(fd);
		}
		/* A SCSI disk leaves before the host unplugs it: no I/O
		 * errors from a device that vanished under the kernel. */
		snprintf(p, sizeof(p), "/sys/block/%s/device/delete", name);
		if (access(p, W_OK) == 0)
			write_small(p, "1");
	}
	disk_body_fill(body);
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_DISK_UNMOUNTED;
	call->reply.disk_unmounted = &body->disk;
}

