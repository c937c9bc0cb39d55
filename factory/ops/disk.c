/* Disks of handed-out VMs: Attach and Detach (docs/protocol.md, "Disks").
 *
 * An attach is two jobs of the VM.  The first opens the caller's file on a
 * worker, as the caller may (sandbox.c's confinement, the caller's own
 * regular files; docs/security.md) or makes a scratch volume; back on the
 * loop, the file's identity (st_dev, st_ino) is checked against every
 * VM's disks, so the same file under another name is still the same disk.
 * The second gives QEMU the open fd (never the path), waits for the guest
 * to see the device and mounts it, then records it.  A failure anywhere
 * leaves nothing attached. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "factory.h"
#include "log.h"
#include "qcow2.h"
#include "util.h"

#define DISK_AGENT_TIMEOUT_MS 20000
#define SCRATCH_MAX_MIB (1u << 20)   /* 1 TiB, sparse */
#define MKFS_TIMEOUT_MS 60000

extern char **environ;

struct disk_job {
	struct vmf_daemon *d;
	struct vmf_conn *c;
	struct vmf_vm *vm;
	unsigned slot;
	struct vmf_vm_disk *dk;       /* vm->disks[slot] */
	uid_t peer;
	bool admin;
	uint32_t scratch_mib;
	int fd;
	int base_fd;                  /* cow: the caller's file; fd is the overlay */
	uint64_t dev, ino;
	int rc;
	struct vmf_error err;
};

static const char *
kind_name(enum vmf_disk_kind k)
{
	return k == VMF_DISK_SCRATCH ? "scratch" : k == VMF_DISK_COW ? "cow" : "disk";
}

static void
fill_one(const struct vmf_vm_disk *dk, unsigned slot, Vmf__Control__DiskInfo *di)
{
	char serial[VMF_DISK_SERIAL_MAX + 1];
	vmf_disk_serial(slot, serial);
	vmf__control__disk_info__init(di);
	di->path = strdup(dk->path);
	di->read_only = dk->read_only;
	di->format = strdup(dk->format);
	di->guest_path = strdup(dk->guest_path);
	di->fstype = strdup(dk->fstype);
	di->serial = strdup(serial);
	di->kind = strdup(kind_name(dk->kind));
	di->guest_device = strdup(dk->guest_device);
}

static void
clear_one(Vmf__Control__DiskInfo *di)
{
	free(di->path);
	free(di->format);
	free(di->guest_path);
	free(di->fstype);
	free(di->serial);
	free(di->kind);
	free(di->guest_device);
}

void
vmf_disk_info_fill(const struct vmf_vm *vm, Vmf__Control__VmInfo *info)
{
	size_t n = 0;
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++)
		n += vm->disks[i] && !vm->disks[i]->attaching;
	if (n == 0 || !(info->disks = calloc(n, sizeof(*info->disks))))
		return;
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
		const struct vmf_vm_disk *dk = vm->disks[i];
		if (!dk || dk->attaching)
			continue;
		Vmf__Control__DiskInfo *di = malloc(sizeof(*di));
		if (!di)
			break;
		fill_one(dk, i, di);
		info->disks[info->n_disks++] = di;
	}
}

void
vmf_disk_info_clear(Vmf__Control__VmInfo *info)
{
	for (size_t i = 0; i < info->n_disks; i++) {
		clear_one(info->disks[i]);
		free(info->disks[i]);
	}
	free(info->disks);
	info->disks = NULL;
	info->n_disks = 0;
}

static void
reply_disk(struct vmf_conn *c, const struct vmf_vm_disk *dk, unsigned slot)
{
	Vmf__Control__Reply r = VMF__CONTROL__REPLY__INIT;
	Vmf__Control__DiskInfo di;
	fill_one(dk, slot, &di);
	r.body_case = VMF__CONTROL__REPLY__BODY_DISK;
	r.disk = &di;
	vmf_control_reply(c, &r);
	clear_one(&di);
}

/* ---- opening the caller's file, on a worker ---- */

/* The file at path, opened as flags say and only if the peer may attach
 * it: root and the daemon's user any regular file (the last component no
 * symlink); anyone else a regular file it owns, beneath a sandbox root,
 * reached with no symlink (vmf_sandbox_open_parent) in a directory it
 * owns.  The daemon opens it, never QEMU: QEMU gets the fd. */
static int
open_disk_file(const struct vmf_daemon *d, const char *path, uid_t peer, bool admin, bool ro, struct stat *st,
	       struct vmf_error *err)
{
	int flags = (ro ? O_RDONLY : O_RDWR) | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC;
	int fd;
	if (admin) {
		fd = open(path, flags);
	} else {
		char name[NAME_MAX + 1];
		int pfd = vmf_sandbox_open_parent(&d->sandbox, path, peer, name, sizeof(name), err);
		if (pfd < 0)
			return vmf_error_prefix(err, "disk %s", path);
		fd = openat(pfd, name, flags);
		int e = errno;
		close(pfd);
		errno = e;
	}
	if (fd < 0) {
		int e = errno;
		if (e == EISDIR)
			return vmf_err(err, EINVAL, "disk %s is not a regular file (it is a directory)", path);
		return vmf_err_sys(err, e, "cannot open disk %s%s", path,
				   e == ELOOP ? " (a symbolic link; name the file itself)" : "");
	}
	if (fstat(fd, st) < 0) {
		int e = errno;
		close(fd);
		return vmf_err_sys(err, e, "cannot stat disk %s", path);
	}
	int r = 0;
	if (!S_ISREG(st->st_mode))
		r = vmf_err(err, EINVAL, "disk %s is not a regular file (it is a %s)", path,
			    S_ISDIR(st->st_mode) ? "directory" : S_ISBLK(st->st_mode) ? "block device" : "special file");
	else if (!admin && st->st_uid != peer)
		r = vmf_err(err, EACCES, "permission denied: disk %s belongs to uid %u, not to uid %u", path,
			    (unsigned)st->st_uid, (unsigned)peer);
	else if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		r = vmf_err_sys(err, errno, "disk %s: fcntl", path);
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/* mkfs.ext4 without a journal (a scratch volume lives as long as its VM):
 * on a worker, stderr kept for the error. */
static int
run_mkfs(const char *file, const char *log, struct vmf_error *err)
{
	const char *argv[] = { "mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard",
			       file, NULL };
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	/* The daemon may run with a PATH without the sbin directories. */
	char *env[] = { "PATH=/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL=C", NULL };
	pid_t pid;
	int r = posix_spawnp(&pid, "mkfs.ext4", &fa, NULL, (char *const *)argv, env);
	posix_spawn_file_actions_destroy(&fa);
	if (r != 0)
		return vmf_err_sys(err, r, "cannot run mkfs.ext4 (e2fsprogs) for a scratch volume");
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		char tail[300];
		vmf_file_tail(log, tail, sizeof(tail));
		unlink(log);
		return vmf_err(err, EIO, "mkfs.ext4 failed on scratch volume %s: %s", file, tail);
	}
	unlink(log);
	return 0;
}

static int
make_scratch(const char *file, const char *run_dir, uint32_t mib, struct stat *st, struct vmf_error *err)
{
	int fd = open(file, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create scratch volume %s", file);
	char log[PATH_MAX + 16];
	snprintf(log, sizeof(log), "%s/mkfs.log", run_dir);
	int r = 0;
	if (ftruncate(fd, (off_t)mib << 20) < 0)
		r = vmf_err_sys(err, errno, "cannot size scratch volume %s to %u MiB", file, mib);
	else if ((r = run_mkfs(file, log, err)) == 0 && fstat(fd, st) < 0)
		r = vmf_err_sys(err, errno, "cannot stat scratch volume %s", file);
	if (r < 0) {
		close(fd);
		unlink(file);
		return r;
	}
	return fd;
}

/* An empty qcow2 (version 3) image of size bytes with no backing file
 * named: QEMU gets the base as a node of its own.  64 KiB clusters: the
 * header, the refcount table, one refcount block (16-bit refcounts of the
 * four metadata clusters), then the L1 table; nothing allocated yet. */
static void
be32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void
be64(uint8_t *p, uint64_t v)
{
	be32(p, (uint32_t)(v >> 32));
	be32(p + 4, (uint32_t)v);
}

#define QCOW2_CLUSTER 65536u

static int
write_qcow2_overlay(int fd, uint64_t size, const char *path, struct vmf_error *err)
{
	uint64_t l2_covers = (uint64_t)QCOW2_CLUSTER * (QCOW2_CLUSTER / 8);
	uint64_t l1_size = (size + l2_covers - 1) / l2_covers;
	if (l1_size * 8 > QCOW2_CLUSTER)
		return vmf_err(err, EFBIG, "copy-on-write base of %llu bytes is above 4 TiB", (unsigned long long)size);
	const size_t len = 4 * QCOW2_CLUSTER;
	uint8_t *buf = calloc(1, len);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory");
	memcpy(buf, "QFI\xfb", 4);
	be32(buf + 4, 3);                        /* version */
	be32(buf + 20, 16);                      /* cluster_bits */
	be64(buf + 24, size);
	be32(buf + 36, (uint32_t)l1_size);
	be64(buf + 40, 3 * QCOW2_CLUSTER);       /* l1_table_offset */
	be64(buf + 48, QCOW2_CLUSTER);           /* refcount_table_offset */
	be32(buf + 56, 1);                       /* refcount_table_clusters */
	be32(buf + 96, 4);                       /* refcount_order: 16 bits */
	be32(buf + 100, 104);                    /* header_length; no extensions */
	be64(buf + QCOW2_CLUSTER, 2 * QCOW2_CLUSTER);
	for (int i = 0; i < 4; i++)
		buf[2 * QCOW2_CLUSTER + 2 * i + 1] = 1;
	ssize_t w = pwrite(fd, buf, len, 0);
	int e = errno;
	free(buf);
	if (w != (ssize_t)len)
		return vmf_err_sys(err, w < 0 ? e : EIO, "cannot write the copy-on-write overlay %s", path);
	return 0;
}

static int
make_overlay(struct disk_job *j, uint64_t size, struct vmf_error *err)
{
	int fd = open(j->dk->overlay, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create the copy-on-write overlay %s", j->dk->overlay);
	int r = write_qcow2_overlay(fd, size, j->dk->overlay, err);
	if (r < 0) {
		close(fd);
		unlink(j->dk->overlay);
		return r;
	}
	return fd;
}

/* The caller's file fd about to go to a VMM as format: a qcow2 header is
 * checked (qcow2.c), and where the VMM parses the header again when it
 * opens the disk, a lease keeps the file as checked until then: with it,
 * any other open of the file for writing (of any open at all, for a
 * read-write disk) waits until release_image.  The lease needs nothing else
 * to have the file open for writing now, which a writer could otherwise
 * use to change the header behind the check.  *size: what the guest sees
 * (a raw file's length, a qcow2's virtual size). */
static int
check_image(const struct vmf_hv_ops *ops, int fd, const char *format, bool rw, const char *path,
	    const struct stat *st, uint64_t *size, struct vmf_error *err)
{
	*size = (uint64_t)st->st_size;
	if (strcmp(format, "qcow2") != 0)
		return 0;
	if (ops->parses_image_header && fcntl(fd, F_SETLEASE, rw ? F_WRLCK : F_RDLCK) < 0) {
		int e = errno;
		if (e == EAGAIN || e == EBUSY)
			return vmf_err(err, EBUSY, "qcow2 image %s is open %selsewhere: it is attached only while "
				       "nothing else can change its header until %s has read it; close it and attach "
				       "again", path, rw ? "" : "for writing ", ops->name);
		return vmf_err_sys(err, e, "cannot hold qcow2 image %s unchanged while %s reads its header (a "
				   "file lease)", path, ops->name);
	}
	struct vmf_qcow2_info qi;
	int r = vmf_qcow2_check_fd(fd, path, &qi, err);
	if (r == 0)
		*size = qi.size;
	return r;
}

/* Closes a descriptor check_image may have leased.  The lease belongs to
 * the open file, which the VMM now shares: closing ours alone would leave
 * it in place. */
static void
release_image(int fd)
{
	if (fd < 0)
		return;
	int e = errno;
	fcntl(fd, F_SETLEASE, F_UNLCK);
	close(fd);
	errno = e;
}

static void
open_work(void *arg)
{
	struct disk_job *j = arg;
	struct stat st;
	uint64_t size = 0;
	bool cow = j->dk->kind == VMF_DISK_COW;
	VMF_FAULT_PAUSE("attach-pause");
	if (j->scratch_mib)
		j->fd = make_scratch(j->dk->path, j->vm->run_dir, j->scratch_mib, &st, &j->err);
	else
		j->fd = open_disk_file(j->d, j->dk->path, j->peer, j->admin, j->dk->read_only || cow, &st, &j->err);
	int r;
	if (j->fd >= 0 && !j->scratch_mib &&
	    (r = check_image(j->vm->ops, j->fd, j->dk->format, !j->dk->read_only && !cow, j->dk->path, &st, &size,
			     &j->err)) < 0) {
		release_image(j->fd);
		j->fd = r;
	}
	if (j->fd >= 0 && cow) {
		j->base_fd = j->fd;
		j->fd = make_overlay(j, size, &j->err);
	}
	if (j->fd < 0) {
		j->rc = j->fd;
		return;
	}
	j->dev = (uint64_t)st.st_dev;
	j->ino = (uint64_t)st.st_ino;
}

/* ---- reopening for a resume, on a worker ---- */

/* A file of the run dir (a scratch volume, a cow overlay): the daemon's
 * own, never a link. */
static int
open_run_file(const char *path, const char *what, struct stat *st, struct vmf_error *err)
{
	int fd = open(path, O_RDWR | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot open %s %s", what, path);
	if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
		close(fd);
		return vmf_err(err, EINVAL, "%s %s is not a regular file", what, path);
	}
	return fd;
}

void
vmf_disk_reopened_close(struct vmf_disk_reopened *r)
{
	for (size_t i = 0; i < r->n; i++) {
		release_image(r->specs[i].fd);
		release_image(r->specs[i].backing_fd);
	}
	r->n = 0;
}

int
vmf_disk_reopen(const struct vmf_daemon *d, const struct vmf_vm *vm, uid_t peer, bool admin,
		struct vmf_disk_reopened *out, struct vmf_error *err)
{
	out->n = 0;
	for (unsigned slot = 0; slot < VMF_DISK_SLOTS; slot++) {
		const struct vmf_vm_disk *dk = vm->disks[slot];
		if (!dk)
			continue;
		struct vmf_disk_spec *s = &out->specs[out->n];
		*s = (struct vmf_disk_spec){ .slot = slot, .fd = -1, .backing_fd = -1, .read_only = dk->read_only,
					     .format = dk->format, .serial = out->serials[out->n] };
		vmf_disk_serial(slot, out->serials[out->n]);
		out->n++;
		struct stat st;
		int fd;
		if (dk->kind == VMF_DISK_SCRATCH)
			fd = open_run_file(dk->path, "scratch volume", &st, err);
		else
			fd = open_disk_file(d, dk->path, peer, admin, dk->read_only || dk->kind == VMF_DISK_COW, &st, err);
		if (fd < 0)
			goto fail;
		/* The same file the attach opened, not whatever bears its name
		 * now: the saved guest has that file's blocks in its caches. */
		if ((uint64_t)st.st_dev != dk->dev || (uint64_t)st.st_ino != dk->ino) {
			close(fd);
			vmf_err(err, ESTALE, "disk %s is not the file attached before the suspend (it was replaced: "
				"inode %llu, not %llu): put that file back, or release the VM", dk->path,
				(unsigned long long)st.st_ino, (unsigned long long)dk->ino);
			goto fail;
		}
		uint64_t size;
		if (dk->kind != VMF_DISK_SCRATCH &&
		    check_image(vm->ops, fd, dk->format, !dk->read_only && dk->kind != VMF_DISK_COW, dk->path, &st,
				&size, err) < 0) {
			release_image(fd);
			goto fail;
		}
		if (dk->kind != VMF_DISK_COW) {
			s->fd = fd;
			continue;
		}
		s->backing_fd = fd;
		s->backing_format = dk->format;
		s->format = "qcow2";
		s->read_only = false;
		if ((s->fd = open_run_file(dk->overlay, "copy-on-write overlay", &st, err)) < 0)
			goto fail;
	}
	return 0;
fail:
	vmf_disk_reopened_close(out);
	return -err->code;
}

/* ---- attaching, on a worker ---- */

static void
attach_work(void *arg)
{
	struct disk_job *j = arg;
	struct vmf_vm *vm = j->vm;
	struct vmf_vm_disk *dk = j->dk;
	struct vmf_error *err = &j->err;
	char serial[VMF_DISK_SERIAL_MAX + 1];
	vmf_disk_serial(j->slot, serial);
	struct vmf_disk_spec spec = {
		.slot = j->slot, .fd = j->fd, .read_only = dk->read_only, .format = dk->format, .serial = serial,
		.backing_fd = -1,
	};
	if (dk->kind == VMF_DISK_COW) {
		spec.format = "qcow2";
		spec.backing_fd = j->base_fd;
		spec.backing_format = dk->format;
	}
	if (!vm->hv || !vm->ops->alive(vm->hv)) {
		j->rc = vmf_err(err, ESRCH, "the VM's process is not running");
		return;
	}
	int64_t t0 = vmf_now_ms();
	/* A daemon killed mid-attach (before the record) may have left the
	 * slot's device behind in the VMM: it goes first. */
	struct vmf_error e0 = {0};
	vm->ops->detach_disk(vm->hv, j->slot, &e0);
	if ((j->rc = vm->ops->attach_disk(vm->hv, &spec, err)) < 0)
		return;
	struct vmf_agent *a = NULL;
	struct vmf_error e2 = {0};
	if ((j->rc = vmf_agent_open(vm->ops->agent_connect, vm->hv, DISK_AGENT_TIMEOUT_MS, &a, err)) == 0 &&
	    (j->rc = vmf_agent_mount_disk(a, serial, dk->guest_path, dk->fstype, dk->read_only, dk->guest_device,
					  sizeof(dk->guest_device), DISK_AGENT_TIMEOUT_MS, err)) < 0)
		vmf_error_prefix(err, "the guest could not %s disk %s", dk->guest_path[0] ? "mount" : "find",
				 dk->path);
	VMF_FAULT("attach-record");
	if (j->rc == 0 && (j->rc = vmf_cache_put_vm_record(&j->d->cache, vm, vm->state, err)) < 0)
		vmf_error_prefix(err, "disk %s attached but not recorded, so detached again", dk->path);
	if (j->rc < 0) {
		/* Nothing half-attached: the guest lets the device go, then
		 * QEMU drops it. */
		if (a)
			vmf_agent_unmount_disk(a, serial, dk->guest_path, DISK_AGENT_TIMEOUT_MS, &e2);
		if (vm->ops->detach_disk(vm->hv, j->slot, &e2) < 0)
			log_vm(VMF_LOG_WARN, vm->id, "detaching disk %s after a failed attach: %s", dk->path, e2.msg);
	} else {
		log_vm(VMF_LOG_INFO, vm->id, "attached %s %s as %s%s%s in %lld ms", kind_name(dk->kind), dk->path,
		       dk->guest_device, dk->guest_path[0] ? " at " : "", dk->guest_path,
		       (long long)(vmf_now_ms() - t0));
	}
	vmf_agent_free(a);
}

static void
release_vm_job(struct disk_job *j)
{
	struct vmf_daemon *d = j->d;
	j->vm->busy = false;
	if (j->vm->dead)
		vmf_cache_vm_exited(&d->cache, j->vm);
	free(j);
	vmf_daemon_settle(d);
}

/* The slot's reservation ends: the attach failed. */
static void
attach_failed(struct disk_job *j)
{
	release_image(j->fd);
	release_image(j->base_fd);
	if (j->dk->kind == VMF_DISK_SCRATCH && j->scratch_mib && j->rc != -EEXIST)
		unlink(j->dk->path);
	if (j->dk->kind == VMF_DISK_COW && j->fd >= 0)
		unlink(j->dk->overlay);
	j->vm->disks[j->slot] = NULL;
	free(j->dk);
	vmf_control_reply_error(j->c, -j->rc, j->err.msg);
	release_vm_job(j);
}

static void
attach_done(void *arg)
{
	struct disk_job *j = arg;
	release_image(j->base_fd);
	j->base_fd = -1;
	if (j->rc < 0) {
		attach_failed(j);
		return;
	}
	release_image(j->fd);
	j->fd = -1;
	j->dk->attaching = false;
	reply_disk(j->c, j->dk, j->slot);
	release_vm_job(j);
}

/* Whether the disk writes to its file (a cow disk writes to its overlay). */
static bool
writes_file(const struct vmf_vm_disk *dk)
{
	return !dk->read_only && dk->kind != VMF_DISK_COW;
}

/* Another VM's disk (or this VM's, under another name) that is the same
 * file, where either is writable: two writers, or a reader whose view a
 * writer changes under it. */
static int
check_conflict(struct vmf_daemon *d, const struct disk_job *j, struct vmf_error *err)
{
	struct vmf_vm *v;
	TAILQ_FOREACH(v, &d->cache.vms, link)
		for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
			const struct vmf_vm_disk *o = v->disks[i];
			if (!o || o == j->dk || o->dev != j->dev || o->ino != j->ino)
				continue;
			if (!writes_file(o) && !writes_file(j->dk))
				continue;
			const char *where = v == j->vm ? "this VM" : "another VM";
			return vmf_err(err, EBUSY, "disk %s is already attached %s to %s (as %s); a disk "
				       "attached read-write is attached nowhere else", j->dk->path,
				       writes_file(o) ? "read-write" : o->kind == VMF_DISK_COW ? "read-only (copy-on-write)"
				       : "read-only", where, o->path);
		}
	return 0;
}

static void
open_done(void *arg)
{
	struct disk_job *j = arg;
	struct vmf_daemon *d = j->d;
	if (j->rc == 0 && j->vm->dead)
		j->rc = vmf_err(&j->err, ESRCH, "VM %s exited", j->vm->id);
	if (j->rc == 0 && d->cache.stopping)
		j->rc = vmf_err(&j->err, ESHUTDOWN, "the daemon is shutting down");
	if (j->rc == 0)
		j->rc = check_conflict(d, j, &j->err);
	if (j->rc < 0) {
		attach_failed(j);
		return;
	}
	j->dk->dev = j->dev;
	j->dk->ino = j->ino;
	if (vmf_jobs_submit(d->cache.jobs, attach_work, attach_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the attach work");
		attach_failed(j);
	}
}

/* ---- requests, on the loop ---- */

static bool
valid_guest_path(const char *p)
{
	if (!*p)
		return true;
	if (p[0] != '/' || strlen(p) >= 1024 || strcmp(p, "/") == 0)
		return false;
	for (const char *c = p; *c; c++)
		if ((unsigned char)*c < 0x20)
			return false;
	return !strstr(p, "/./") && !strstr(p, "/../") && strcmp(p + strlen(p) - 2, "/.") != 0 &&
	       (strlen(p) < 3 || strcmp(p + strlen(p) - 3, "/..") != 0);
}

static bool
valid_fstype(const char *s)
{
	size_t n = strlen(s);
	if (n > 31)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

void
vmf_attach_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__AttachRequest *req)
{
	char msg[PATH_MAX + 200];
	const char *path = req->path ? req->path : "";
	const char *format = req->format && *req->format ? req->format : "raw";
	const char *guest_path = req->guest_path ? req->guest_path : "";
	const char *fstype = req->fstype ? req->fstype : "";
	bool scratch = req->scratch_mib > 0;
	/* The request's own checks first: they need no VM. */
	const char *bad = NULL;
	if (scratch == (*path != '\0'))
		bad = "an attach names either a disk path or a scratch volume size, exactly one";
	else if (!scratch && (path[0] != '/' || strlen(path) >= PATH_MAX - 1))
		bad = "disk path must be absolute";
	else if (scratch && req->scratch_mib > SCRATCH_MAX_MIB)
		bad = "scratch volume size is above 1048576 MiB";
	else if (strcmp(format, "raw") != 0 && strcmp(format, "qcow2") != 0)
		bad = "disk format must be raw or qcow2";
	else if (scratch && (strcmp(format, "raw") != 0 || req->read_only || req->cow || (*fstype && strcmp(fstype, "ext4"))))
		bad = "a scratch volume is raw, read-write and ext4";
	else if (req->cow && req->read_only)
		bad = "a copy-on-write disk is written to its overlay: not read-only";
	else if (!valid_guest_path(guest_path))
		bad = "guest mount path must be absolute, not /, without . or .. components";
	else if (!valid_fstype(fstype))
		bad = "file system type must be up to 31 lower-case letters, digits and '_'";
	if (bad) {
		vmf_control_reply_error(c, EINVAL, bad);
		return;
	}
	struct vmf_vm *vm = vmf_daemon_lookup_vm(d, c, req->vm_id);
	if (!vm)
		return;
	if (vm->state != VMF_VM_ASSIGNED) {
		char st[900];
		snprintf(msg, sizeof(msg), "VM %s is not assigned (it is %s): only a handed-out VM gets disks", vm->id,
			 vmf_vm_state_desc(vm, st, sizeof(st)));
		vmf_control_reply_error(c, EINVAL, msg);
		return;
	}
	if (!vm->ops->attach_disk) {
		snprintf(msg, sizeof(msg), "driver %s cannot attach disks", vm->ops->name);
		vmf_control_reply_error(c, ENOTSUP, msg);
		return;
	}
	/* In the run dir, a tmpfs in production: its size is the host's RAM
	 * once the guest writes it. */
	struct vmf_error lerr;
	if (scratch && vmf_limit_scratch(d, vm, req->scratch_mib, &lerr) < 0) {
		vmf_control_reply_error(c, lerr.code, lerr.msg);
		return;
	}
	unsigned slot = VMF_DISK_SLOTS;
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
		const struct vmf_vm_disk *o = vm->disks[i];
		if (!o) {
			if (slot == VMF_DISK_SLOTS &&
			    (!vm->ops->disk_slot_fits || vm->ops->disk_slot_fits(i, req->read_only)))
				slot = i;
			continue;
		}
		if ((*path && strcmp(o->path, path) == 0) || (*guest_path && strcmp(o->guest_path, guest_path) == 0)) {
			snprintf(msg, sizeof(msg), "VM %s already has disk %s%s%s", vm->id, o->path,
				 o->guest_path[0] ? " mounted at " : "", o->guest_path);
			vmf_control_reply_error(c, EBUSY, msg);
			return;
		}
	}
	if (slot == VMF_DISK_SLOTS && vm->ops->disk_slot_fits) {
		snprintf(msg, sizeof(msg), "VM %s has no free %s disk slot left (driver %s has a fixed number of "
			 "each)", vm->id, req->read_only ? "read-only" : "read-write", vm->ops->name);
		vmf_control_reply_error(c, ENOSPC, msg);
		return;
	}
	if (slot == VMF_DISK_SLOTS) {
		snprintf(msg, sizeof(msg), "VM %s has %d disks attached, the most it may have", vm->id, VMF_DISK_SLOTS);
		vmf_control_reply_error(c, ENOSPC, msg);
		return;
	}
	struct disk_job *j = calloc(1, sizeof(*j));
	struct vmf_vm_disk *dk = calloc(1, sizeof(*dk));
	if (!j || !dk) {
		free(j);
		free(dk);
		vmf_control_reply_error(c, ENOMEM, "out of memory");
		return;
	}
	dk->kind = scratch ? VMF_DISK_SCRATCH : req->cow ? VMF_DISK_COW : VMF_DISK_FILE;
	if (scratch)
		snprintf(dk->path, sizeof(dk->path), "%s/scratch-%u.img", vm->run_dir, slot);
	else
		snprintf(dk->path, sizeof(dk->path), "%s", path);
	if (req->cow)
		snprintf(dk->overlay, sizeof(dk->overlay), "%s/cow-%u.qcow2", vm->run_dir, slot);
	snprintf(dk->guest_path, sizeof(dk->guest_path), "%s", guest_path);
	snprintf(dk->format, sizeof(dk->format), "%s", format);
	snprintf(dk->fstype, sizeof(dk->fstype), "%s", *fstype ? fstype : "ext4");
	dk->read_only = req->read_only;
	dk->attaching = true;
	vm->disks[slot] = dk;
	j->d = d;
	j->c = c;
	j->vm = vm;
	j->slot = slot;
	j->dk = dk;
	j->fd = -1;
	j->base_fd = -1;
	j->peer = vmf_control_peer_uid(c);
	j->admin = vmf_daemon_peer_admin(d, j->peer);
	j->scratch_mib = req->scratch_mib;
	vm->busy = true;
	if (vmf_jobs_submit(d->cache.jobs, open_work, open_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the attach work");
		attach_failed(j);
	}
}

/* ---- detach ---- */

static void
detach_work(void *arg)
{
	struct disk_job *j = arg;
	struct vmf_vm *vm = j->vm;
	struct vmf_vm_disk *dk = j->dk;
	struct vmf_error *err = &j->err;
	char serial[VMF_DISK_SERIAL_MAX + 1];
	vmf_disk_serial(j->slot, serial);
	if (!vm->hv || !vm->ops->alive(vm->hv)) {
		j->rc = vmf_err(err, ESRCH, "the VM's process is not running");
		return;
	}
	/* The guest first: a file system still mounted on a device that
	 * vanishes loses what it had not written. */
	struct vmf_agent *a = NULL;
	if ((j->rc = vmf_agent_open(vm->ops->agent_connect, vm->hv, DISK_AGENT_TIMEOUT_MS, &a, err)) == 0 &&
	    (j->rc = vmf_agent_unmount_disk(a, serial, dk->guest_path, DISK_AGENT_TIMEOUT_MS, err)) < 0)
		vmf_error_prefix(err, "disk %s stays attached: the guest could not let it go", dk->path);
	vmf_agent_free(a);
	if (j->rc < 0)
		return;
	if ((j->rc = vm->ops->detach_disk(vm->hv, j->slot, err)) < 0)
		return;
	/* A daemon killed here leaves the disk recorded, its device gone from
	 * the guest and the VMM: a detach of it again finishes the job. */
	VMF_FAULT("detach-unplugged");
	if (dk->kind == VMF_DISK_SCRATCH && unlink(dk->path) < 0 && errno != ENOENT)
		log_vm(VMF_LOG_WARN, vm->id, "removing scratch volume %s: %s", dk->path, strerror(errno));
	if (dk->kind == VMF_DISK_COW && unlink(dk->overlay) < 0 && errno != ENOENT)
		log_vm(VMF_LOG_WARN, vm->id, "removing overlay %s: %s", dk->overlay, strerror(errno));
	if (vmf_cache_put_vm_record(&j->d->cache, vm, vm->state, err) < 0)
		log_vm(VMF_LOG_ERROR, vm->id, "cannot record the detach of %s: %s", dk->path, err->msg);
	j->rc = 0;
	log_vm(VMF_LOG_INFO, vm->id, "detached %s %s", kind_name(dk->kind), dk->path);
}

static void
detach_done(void *arg)
{
	struct disk_job *j = arg;
	if (j->rc < 0) {
		j->dk->detaching = false;
		vmf_control_reply_error(j->c, -j->rc, j->err.msg);
	} else {
		reply_disk(j->c, j->dk, j->slot);
		j->vm->disks[j->slot] = NULL;
		free(j->dk);
	}
	release_vm_job(j);
}

void
vmf_detach_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__DetachRequest *req)
{
	const char *path = req->path ? req->path : "";
	if (!*path) {
		vmf_control_reply_error(c, EINVAL, "detach names the disk: its path, or where the guest mounted it");
		return;
	}
	struct vmf_vm *vm = vmf_daemon_lookup_vm(d, c, req->vm_id);
	if (!vm)
		return;
	unsigned slot = VMF_DISK_SLOTS;
	for (unsigned i = 0; i < VMF_DISK_SLOTS && slot == VMF_DISK_SLOTS; i++)
		if (vm->disks[i] && (strcmp(vm->disks[i]->path, path) == 0 ||
				     (vm->disks[i]->guest_path[0] && strcmp(vm->disks[i]->guest_path, path) == 0)))
			slot = i;
	if (slot == VMF_DISK_SLOTS) {
		char msg[PATH_MAX + 100];
		snprintf(msg, sizeof(msg), "no disk %s is attached to VM %s", path, vm->id);
		vmf_control_reply_error(c, ENOENT, msg);
		return;
	}
	if (vm->state != VMF_VM_ASSIGNED) {
		char msg[1024], st[900];
		snprintf(msg, sizeof(msg), "VM %s is %s: release it, which detaches its disks", vm->id,
			 vmf_vm_state_desc(vm, st, sizeof(st)));
		vmf_control_reply_error(c, EINVAL, msg);
		return;
	}
	struct disk_job *j = calloc(1, sizeof(*j));
	if (!j) {
		vmf_control_reply_error(c, ENOMEM, "out of memory");
		return;
	}
	j->d = d;
	j->c = c;
	j->vm = vm;
	j->slot = slot;
	j->dk = vm->disks[slot];
	j->fd = -1;
	j->base_fd = -1;
	j->dk->detaching = true;
	vm->busy = true;
	if (vmf_jobs_submit(d->cache.jobs, detach_work, detach_done, j) < 0) {
		j->rc = vmf_err(&j->err, ENOMEM, "cannot queue the detach work");
		detach_done(j);
	}
}
