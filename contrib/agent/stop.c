/* Stopping without losing a write: FlushDisks (each disk's file system
 * unmounted, frozen or thawed, its device flushed) and Poweroff (processes
 * ended as on a shutdown, disks flushed, then the kernel powers off once
 * the reply is out). */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

/* <linux/fs.h>, which clashes with <sys/mount.h>. */
#ifndef FIFREEZE
#define FIFREEZE _IOWR('X', 119, int)
#define FITHAW _IOWR('X', 120, int)
#endif
/* Disks one FlushDisks or Poweroff names (the host's VMF_DISK_SLOTS), and
 * how long a Poweroff lets processes end after SIGTERM. */
#define FLUSH_DISKS_MAX 16
#define POWEROFF_GRACE_DEFAULT_MS 2000u
#define POWEROFF_GRACE_MAX_MS 60000u

/* One disk's part of the reply and the strings it names. */
struct disk_flush {
	Vmf__Agent__DiskFlushed msg;
	char serial[24];
	char path[512];
	char error[200];
};

struct flush_body {
	Vmf__Agent__DisksFlushed flushed;
	struct disk_flush disk[FLUSH_DISKS_MAX];
	Vmf__Agent__DiskFlushed *ptrs[FLUSH_DISKS_MAX];
};

/* A Poweroff answered: the kernel powers off once its reply is written
 * (or a second passed), from the poll loop. */
static bool poweroff_pending;
static int64_t poweroff_deadline;
static const void *poweroff_conn;
static int
freeze_fs(const char *path, unsigned long op)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int arg = 0, r = ioctl(fd, op, &arg) < 0 ? -errno : 0;
	close(fd);
	return r;
}

/* One disk: its file system at d->path (only when the disk is what is
 * mounted there, never another file system the guest put at that path)
 * unmounted, frozen or thawed as mode says, then its device flushed. */
static void
flush_one(const Vmf__Agent__FlushDisk *d, Vmf__Agent__FlushMode mode, struct disk_flush *f)
{
	Vmf__Agent__DiskFlushed *o = &f->msg;
	vmf__agent__disk_flushed__init(o);
	snprintf(f->serial, sizeof(f->serial), "%s", d->serial ? d->serial : "");
	snprintf(f->path, sizeof(f->path), "%s", d->path ? d->path : "");
	o->serial = f->serial;
	o->path = f->path;
	o->error_message = f->error;
	char *msg = f->error;
	size_t msgn = sizeof(f->error);
	const char *serial = d->serial ? d->serial : "", *path = d->path ? d->path : "";
	if (!disk_serial_ok(serial) || (*path && path[0] != '/')) {
		o->error_code = EINVAL;
		snprintf(msg, msgn, "a disk serial of 1 to %d letters, digits, '-' or '_' and an absolute path "
			 "are needed", DISK_SERIAL_MAX);
		return;
	}
	char name[64], dev[80];
	if (!disk_find(serial, name, sizeof(name))) {
		o->how = "absent";
		return;
	}
	snprintf(dev, sizeof(dev), "/dev/%s", name);
	struct stat mst, dst;
	bool mounted = *path && stat(path, &mst) == 0 && stat(dev, &dst) == 0 && S_ISBLK(dst.st_mode) &&
		       mst.st_dev == dst.st_rdev;
	int r = 0;
	const char *how = mode == VMF__AGENT__FLUSH_MODE__FLUSH_THAW ? "thawed" : "synced";
	if (mounted && mode == VMF__AGENT__FLUSH_MODE__FLUSH_UNMOUNT) {
		int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0) {
			syncfs(fd);
			close(fd);
		}
		how = "unmounted";
		if (umount2(path, 0) < 0) {
			r = -errno;
			/* Held by a guest process: frozen, it is as clean on its
			 * device as unmounted (EBUSY: frozen already). */
			if (r == -EBUSY) {
				r = freeze_fs(path, FIFREEZE);
				how = "frozen";
				if (r == -EBUSY)
					r = 0;
			}
		}
	} else if (mounted && mode == VMF__AGENT__FLUSH_MODE__FLUSH_FREEZE) {
		how = "frozen";
		r = freeze_fs(path, FIFREEZE);
		if (r == -EBUSY)
			r = 0;
	} else if (mounted && mode == VMF__AGENT__FLUSH_MODE__FLUSH_THAW) {
		r = freeze_fs(path, FITHAW);
		if (r == -EINVAL)   /* not frozen */
			r = 0;
	}
	if (r < 0) {
		o->error_code = -r;
		snprintf(msg, msgn, "%s %s at %s: %s", mode == VMF__AGENT__FLUSH_MODE__FLUSH_THAW ? "cannot thaw"
			 : "cannot write back", dev, path, strerror(-r));
		return;
	}
	if (mode != VMF__AGENT__FLUSH_MODE__FLUSH_THAW) {
		int fd = open(dev, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fsync(fd) < 0) {
			o->error_code = errno;
			snprintf(msg, msgn, "cannot flush %s: %s", dev, strerror(errno));
			if (fd >= 0)
				close(fd);
			return;
		}
		close(fd);
	}
	o->how = (char *)how;
}

/* The flushed disks into the call's reply body; false with the reply an
 * error. */
static struct flush_body *
flush_disks(struct agent_call *call, Vmf__Agent__FlushDisk **disks, size_t n, Vmf__Agent__FlushMode mode)
{
	if (n > FLUSH_DISKS_MAX) {
		reply_error(call, E2BIG, "%zu disks named; at most %d", n, FLUSH_DISKS_MAX);
		return NULL;
	}
	if (mode != VMF__AGENT__FLUSH_MODE__FLUSH_UNMOUNT && mode != VMF__AGENT__FLUSH_MODE__FLUSH_FREEZE &&
	    mode != VMF__AGENT__FLUSH_MODE__FLUSH_THAW) {
		reply_error(call, EINVAL, "flush mode %d is unknown", (int)mode);
		return NULL;
	}
	if (agent_options.test_mode) {
		reply_error(call, EPERM, "test mode does not unmount or freeze");
		return NULL;
	}
	struct flush_body *body = reply_body(call, sizeof(*body), NULL);
	if (!body)
		return NULL;
	vmf__agent__disks_flushed__init(&body->flushed);
	for (size_t i = 0; i < n; i++) {
		flush_one(disks[i], mode, &body->disk[i]);
		body->ptrs[i] = &body->disk[i].msg;
	}
	body->flushed.disks = body->ptrs;
	body->flushed.n_disks = n;
	return body;
}

void
stop_flush_disks(struct agent_call *call)
{
	const Vmf__Agent__FlushDisks *req = call->req->flush_disks;
	struct flush_body *body = flush_disks(call, req->disks, req->n_disks, req->mode);
	if (!body)
		return;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_DISKS_FLUSHED;
	call->reply.disks_flushed = &body->flushed;
}

/* Processes other than init, this agent and kernel threads (no cmdline). */
static unsigned
user_processes(void)
{
	DIR *d = opendir("/proc");
	if (!d)
		return 0;
	unsigned n = 0;
	struct dirent *de;
	pid_t self = getpid();
	while ((de = readdir(d))) {
		pid_t pid = (pid_t)atoi(de->d_name);
		if (pid <= 1 || pid == self)
			continue;
		char p[64], c[8];
		snprintf(p, sizeof(p), "/proc/%d/cmdline", (int)pid);
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t k = read(fd, c, sizeof(c));
		close(fd);
		n += k > 0;
	}
	closedir(d);
	return n;
}

/* Waits until no user process is left or the deadline passes, reaping
 * the agent's own children meanwhile. */
static void
wait_processes_gone(int64_t deadline)
{
	while (vmf_now_ms() < deadline) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if (user_processes() == 0)
			return;
		usleep(20000);
	}
}

void
stop_poweroff(struct agent_call *call)
{
	const Vmf__Agent__Poweroff *req = call->req->poweroff;
	if (agent_options.test_mode) {
		reply_error(call, EPERM, "test mode does not power off");
		return;
	}
	if (req->n_disks > FLUSH_DISKS_MAX) {
		reply_error(call, E2BIG, "%zu disks named; at most %d", req->n_disks, FLUSH_DISKS_MAX);
		return;
	}
	unsigned grace = req->grace_ms ? req->grace_ms : POWEROFF_GRACE_DEFAULT_MS;
	if (grace > POWEROFF_GRACE_MAX_MS)
		grace = POWEROFF_GRACE_MAX_MS;
	logmsg("powering off at the host's request (%u ms for processes to end)", grace);
	/* Every process but init and this agent: the workload ends as on a
	 * shutdown, its files closed before the disks are unmounted. */
	kill(-1, SIGTERM);
	wait_processes_gone(vmf_now_ms() + grace);
	kill(-1, SIGKILL);
	wait_processes_gone(vmf_now_ms() + 1000);
	struct flush_body *body = flush_disks(call, req->disks, req->n_disks, VMF__AGENT__FLUSH_MODE__FLUSH_UNMOUNT);
	if (!body)
		return;
	sync();
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_POWERING_OFF;
	call->reply.powering_off = &body->flushed;
	poweroff_pending = true;
	poweroff_conn = call->conn;
	poweroff_deadline = vmf_now_ms() + 1000;
}

static void
poweroff_now(void)
{
	sync();
	reboot(RB_POWER_OFF);
	logmsg("power off failed: %s", strerror(errno));
	poweroff_pending = false;
}


bool
stop_poweroff_pending(void)
{
	return poweroff_pending;
}

/* Once the Poweroff's reply is out (its connection gone, or a second
 * passed): the host knows what was flushed. */
void
stop_poweroff_when_answered(int64_t now)
{
	if (poweroff_pending && (!conn_reply_pending(poweroff_conn) || now >= poweroff_deadline))
		poweroff_now();
}
