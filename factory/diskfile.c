/* A caller's disk file, on a worker: opened as the caller may (sandbox.c's
 * confinement, the caller's own regular files; docs/security.md), its
 * qcow2 header checked and held unchanged until the VMM has read it; a
 * scratch volume made (mkfs.ext4); a copy-on-write overlay created; and a
 * suspended VM's disks opened again for its resume, each only if it is
 * still the file attached. */
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

#include "diskfile.h"
#include "factory.h"
#include "log.h"
#include "qcow2.h"
#include "util.h"

/* The file at path, opened as flags say and only if the peer may attach
 * it: root and the daemon's user any regular file (the last component no
 * symlink); anyone else a regular file it owns, beneath a sandbox root,
 * reached with no symlink (vmf_sandbox_open_parent) in a directory it
 * owns.  The daemon opens it, never QEMU: QEMU gets the fd. */
int
vmf_disk_file_open(const struct vmf_daemon *d, const char *path, uid_t peer, bool admin, bool ro, struct stat *st,
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

int
vmf_disk_scratch_make(const char *file, const char *run_dir, uint32_t mib, struct stat *st, struct vmf_error *err)
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

int
vmf_disk_overlay_make(const char *path, uint64_t size, struct vmf_error *err)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create the copy-on-write overlay %s", path);
	int r = write_qcow2_overlay(fd, size, path, err);
	if (r < 0) {
		close(fd);
		unlink(path);
		return r;
	}
	return fd;
}

/* The caller's file fd about to go to a VMM as format: a qcow2 header is
 * checked (qcow2.c), and where the VMM parses the header again when it
 * opens the disk, a lease keeps the file as checked until then: with it,
 * any other open of the file for writing (of any open at all, for a
 * read-write disk) waits until vmf_disk_image_release.  The lease needs nothing else
 * to have the file open for writing now, which a writer could otherwise
 * use to change the header behind the check.  *size: what the guest sees
 * (a raw file's length, a qcow2's virtual size). */
int
vmf_disk_image_check(const struct vmf_hv_ops *ops, int fd, const char *format, bool rw, const char *path,
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

/* Closes a descriptor vmf_disk_image_check may have leased.  The lease belongs to
 * the open file, which the VMM now shares: closing ours alone would leave
 * it in place. */
void
vmf_disk_image_release(int fd)
{
	if (fd < 0)
		return;
	int e = errno;
	fcntl(fd, F_SETLEASE, F_UNLCK);
	close(fd);
	errno = e;
}

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
		vmf_disk_image_release(r->specs[i].fd);
		vmf_disk_image_release(r->specs[i].backing_fd);
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
			fd = vmf_disk_file_open(d, dk->path, peer, admin, dk->read_only || dk->kind == VMF_DISK_COW, &st, err);
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
		    vmf_disk_image_check(vm->ops, fd, dk->format, !dk->read_only && dk->kind != VMF_DISK_COW, dk->path, &st,
				&size, err) < 0) {
			vmf_disk_image_release(fd);
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
