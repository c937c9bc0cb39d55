/* The resume's reopening of a suspended VM's disks (factory/disk.c,
 * vmf_disk_reopen), no QEMU: the recorded file opens in slot order with
 * its serial; a file replaced under the same name (another inode), a
 * missing one, or a scratch volume turned into a symlink fails with a
 * sentence naming it and leaves no descriptor open; a copy-on-write disk
 * opens its base read-only and its overlay from the run dir.  A qcow2 disk
 * is checked again (a data file named while it was suspended is refused)
 * and held by a lease until the resume is done with it: a write-open
 * meanwhile waits; a file open for writing elsewhere is refused. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diskfile.h"
#include "factory.h"
#include "testlib.h"

static char dir[] = "/tmp/vmf-reopen.XXXXXX";

static int
open_fds(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	for (struct dirent *e; d && (e = readdir(d));)
		n += e->d_name[0] != '.';
	if (d)
		closedir(d);
	return n;
}

static struct vmf_vm_disk *
disk(enum vmf_disk_kind kind, const char *name, const char *overlay)
{
	struct vmf_vm_disk *dk = calloc(1, sizeof(*dk));
	ck_assert_ptr_nonnull(dk);
	dk->kind = kind;
	snprintf(dk->path, sizeof(dk->path), "%s/%s", dir, name);
	if (overlay)
		snprintf(dk->overlay, sizeof(dk->overlay), "%s/%s", dir, overlay);
	snprintf(dk->format, sizeof(dk->format), "raw");
	int fd = open(dk->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 1 << 20), 0);
	struct stat st;
	ck_assert_int_eq(fstat(fd, &st), 0);
	close(fd);
	dk->dev = st.st_dev;
	dk->ino = st.st_ino;
	if (overlay) {
		fd = open(dk->overlay, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		ck_assert_int_ge(fd, 0);
		close(fd);
	}
	return dk;
}

/* The disks' files, the VM, the daemon and the test's dir. */
static void
free_all(struct vmf_daemon *d, struct vmf_vm *vm)
{
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++)
		if (vm->disks[i]) {
			unlink(vm->disks[i]->path);
			if (vm->disks[i]->overlay[0])
				unlink(vm->disks[i]->overlay);
			free(vm->disks[i]);
		}
	free(vm);
	free(d);
	ck_assert_int_eq(rmdir(dir), 0);
}

START_TEST(reopen)
{
	ck_assert_ptr_nonnull(mkdtemp(dir));
	struct vmf_daemon *d = calloc(1, sizeof(*d));
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	ck_assert(d && vm);
	vm->disks[1] = disk(VMF_DISK_FILE, "data.img", NULL);
	vm->disks[3] = disk(VMF_DISK_SCRATCH, "scratch-3.img", NULL);
	vm->disks[4] = disk(VMF_DISK_COW, "base.img", "cow-4.qcow2");
	vm->disks[1]->read_only = true;
	struct vmf_disk_reopened r;
	struct vmf_error e = {0};
	int before = open_fds();
	ck_assert_msg(vmf_disk_reopen(d, vm, 0, true, &r, &e) == 0, "%s", e.msg);
	ck_assert_uint_eq(r.n, 3);
	ck_assert_uint_eq(r.specs[0].slot, 1);
	ck_assert_str_eq(r.specs[0].serial, "vmfd1");
	ck_assert(r.specs[0].read_only && r.specs[0].backing_fd < 0);
	ck_assert_int_eq(fcntl(r.specs[0].fd, F_GETFL) & O_ACCMODE, O_RDONLY);
	ck_assert_uint_eq(r.specs[1].slot, 3);
	ck_assert_int_eq(fcntl(r.specs[1].fd, F_GETFL) & O_ACCMODE, O_RDWR);
	ck_assert_uint_eq(r.specs[2].slot, 4);
	ck_assert_str_eq(r.specs[2].format, "qcow2");
	ck_assert_str_eq(r.specs[2].backing_format, "raw");
	ck_assert_int_eq(fcntl(r.specs[2].backing_fd, F_GETFL) & O_ACCMODE, O_RDONLY);
	ck_assert_int_eq(fcntl(r.specs[2].fd, F_GETFL) & O_ACCMODE, O_RDWR);
	vmf_disk_reopened_close(&r);
	ck_assert_int_eq(open_fds(), before);

	/* Replaced under its name: another inode. */
	char path[PATH_MAX + 8], aside[PATH_MAX + 16];
	snprintf(path, sizeof(path), "%s", vm->disks[4]->path);
	snprintf(aside, sizeof(aside), "%s.aside", path);
	ck_assert_int_eq(rename(path, aside), 0);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_int_lt(vmf_disk_reopen(d, vm, 0, true, &r, &e), 0);
	ck_assert_int_eq(e.code, ESTALE);
	ck_assert_msg(strstr(e.msg, path) && strstr(e.msg, "replaced"), "%s", e.msg);
	ck_assert_int_eq(open_fds(), before);
	/* Gone. */
	ck_assert_int_eq(unlink(path), 0);
	memset(&e, 0, sizeof(e));
	ck_assert_int_lt(vmf_disk_reopen(d, vm, 0, true, &r, &e), 0);
	ck_assert_int_eq(e.code, ENOENT);
	ck_assert_msg(strstr(e.msg, path), "%s", e.msg);
	ck_assert_int_eq(open_fds(), before);
	/* Back: it opens again. */
	ck_assert_int_eq(rename(aside, path), 0);
	ck_assert_int_eq(vmf_disk_reopen(d, vm, 0, true, &r, &e), 0);
	vmf_disk_reopened_close(&r);
	/* A scratch volume that became a symlink is not followed. */
	char *scratch = vm->disks[3]->path;
	snprintf(aside, sizeof(aside), "%s.real", scratch);
	ck_assert_int_eq(rename(scratch, aside), 0);
	ck_assert_int_eq(symlink(aside, scratch), 0);
	memset(&e, 0, sizeof(e));
	ck_assert_int_lt(vmf_disk_reopen(d, vm, 0, true, &r, &e), 0);
	ck_assert_msg(strstr(e.msg, "scratch volume") && strstr(e.msg, scratch), "%s", e.msg);
	ck_assert_int_eq(open_fds(), before);
	unlink(scratch);
	unlink(aside);

	free_all(d, vm);
}
END_TEST

/* A plain qcow2 header (version 3, 64 KiB clusters, 1 MiB) over the
 * file's first bytes; incompat: its incompatible feature bits. */
static void
qcow2_header(const char *path, uint8_t incompat)
{
	uint8_t h[112] = { 'Q', 'F', 'I', 0xfb, 0, 0, 0, 3 };
	h[23] = 16;
	h[29] = 0x10;
	h[79] = incompat;
	h[99] = 4;
	h[103] = 112;
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
	close(fd);
}

START_TEST(qcow2_checked_and_held)
{
	/* The lease's break notice (SIGIO) goes to its holder, this test. */
	signal(SIGIO, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/vmf-reopen.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	struct vmf_daemon *d = calloc(1, sizeof(*d));
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	ck_assert(d && vm);
	vm->ops = &vmf_qemu_ops;
	vm->disks[0] = disk(VMF_DISK_FILE, "rw.qcow2", NULL);
	vm->disks[2] = disk(VMF_DISK_COW, "base.qcow2", "cow-2.qcow2");
	for (unsigned i = 0; i <= 2; i += 2) {
		snprintf(vm->disks[i]->format, sizeof(vm->disks[i]->format), "qcow2");
		qcow2_header(vm->disks[i]->path, 0);
	}
	const char *rw = vm->disks[0]->path, *base = vm->disks[2]->path;
	struct vmf_disk_reopened r;
	struct vmf_error e = {0};
	int before = open_fds();
	ck_assert_msg(vmf_disk_reopen(d, vm, 0, true, &r, &e) == 0, "%s", e.msg);
	/* Held: a write-open of either waits (here: would block), a read-open
	 * of the read-write one too; a read-open of the base does not. */
	ck_assert_int_lt(open(rw, O_RDONLY | O_NONBLOCK | O_CLOEXEC), 0);
	ck_assert_int_eq(errno, EWOULDBLOCK);
	ck_assert_int_lt(open(base, O_WRONLY | O_NONBLOCK | O_CLOEXEC), 0);
	ck_assert_int_eq(errno, EWOULDBLOCK);
	int rd = open(base, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	ck_assert_int_ge(rd, 0);
	close(rd);
	/* QEMU's copy of the descriptor, which outlives the resume's. */
	int qemu_copy = dup(r.specs[0].fd);
	vmf_disk_reopened_close(&r);
	int w = open(rw, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	ck_assert_msg(w >= 0, "the lease outlived the resume: %s", strerror(errno));
	close(qemu_copy);
	ck_assert_int_eq(open_fds(), before + 1);
	/* Open for writing elsewhere: refused, nothing left open. */
	ck_assert_int_lt(vmf_disk_reopen(d, vm, 0, true, &r, &e), 0);
	ck_assert_msg(e.code == EBUSY && strstr(e.msg, rw) && strstr(e.msg, "open elsewhere"), "%s", e.msg);
	close(w);
	ck_assert_int_eq(open_fds(), before);
	/* The base gained an external data file while the VM was suspended. */
	qcow2_header(base, 4);
	memset(&e, 0, sizeof(e));
	ck_assert_int_lt(vmf_disk_reopen(d, vm, 0, true, &r, &e), 0);
	ck_assert_msg(e.code == EPERM && strstr(e.msg, base) && strstr(e.msg, "external data file"), "%s", e.msg);
	ck_assert_int_eq(open_fds(), before);
	w = open(base, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	ck_assert_msg(w >= 0, "a refused image stays leased: %s", strerror(errno));
	close(w);
	free_all(d, vm);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("disk_reopen");
	TCase *t = tcase_create("reopen");
	tcase_add_test(t, reopen);
	tcase_add_test(t, qcow2_checked_and_held);
	suite_add_tcase(s, t);
	return vmf_test_run(s);
}
