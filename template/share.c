/* A clone's 9p share on a file system of its own (docs/security.md, "The
 * share").  QEMU serves the share with security_model=none, as root unless
 * runas: a guest's chown, chmod and mknod there are real.  On its own
 * tmpfs, mounted nosuid and nodev, nothing the guest makes runs with
 * privileges on the host (setuid, setgid and file capabilities are ignored
 * there) or opens a device, no hard link joins it to a file outside, and
 * size and inodes are bounded: the run dir is often /run, which is RAM. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "template.h"

/* One inode per 16 KiB of share, at least 1024: a guest making empty
 * files spends inodes, which tmpfs does not count in its size. */
static unsigned
share_inodes(unsigned mib)
{
	unsigned long long n = (unsigned long long)mib * 64;
	return n < 1024 ? 1024 : n > 1u << 30 ? 1u << 30 : (unsigned)n;
}

int
vmf_share_mount(const char *dir, unsigned mib, struct vmf_error *err)
{
	char opts[96];
	snprintf(opts, sizeof(opts), "size=%um,nr_inodes=%u,mode=0700", mib, share_inodes(mib));
	if (mount("vmfactory-share", dir, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
		return vmf_err_sys(err, errno, "cannot mount the VM's share %s (a nosuid,nodev tmpfs of %u MiB; "
				   "share_max_mib = 0 turns this off, and shares for tenants with it)", dir, mib);
	return 0;
}

/* Whether path is on another file system than its parent dir. */
static int
mounted_over(const char *parent, const char *path, bool *yes)
{
	struct stat a, b;
	if (lstat(path, &b) < 0)
		return errno == ENOENT ? (*yes = false, 0) : -errno;
	if (stat(parent, &a) < 0)
		return -errno;
	*yes = a.st_dev != b.st_dev;
	return 0;
}

int
vmf_share_check(const char *run_dir, const char *share_dir, struct vmf_error *err)
{
	bool own = false;
	struct statvfs sv;
	int r = mounted_over(run_dir, share_dir, &own);
	if (r < 0 || statvfs(share_dir, &sv) < 0)
		return vmf_err_sys(err, r < 0 ? -r : errno, "cannot examine the VM's share %s", share_dir);
	if (!own || !(sv.f_flag & ST_NOSUID) || !(sv.f_flag & ST_NODEV))
		return vmf_err(err, EPERM, "the VM's share %s is not on a nosuid,nodev file system of its own "
			       "(made by a daemon with share_max_mib = 0, or one not running as root): a share "
			       "only for root and the daemon's user", share_dir);
	return 0;
}

int
vmf_share_unmount(const char *run_dir, const char *share_dir, struct vmf_error *err)
{
	/* Detached even while something still has it open (a QEMU being
	 * killed): its pages go with the last reference.  Mounts stacked on
	 * it, which only root can make, come off one by one. */
	for (int i = 0; i < 8; i++) {
		bool over;
		int r = mounted_over(run_dir, share_dir, &over);
		if (r < 0)
			return vmf_err_sys(err, -r, "cannot examine the VM's share %s", share_dir);
		if (!over)
			return 0;
		if (umount2(share_dir, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL)
			return vmf_err_sys(err, errno, "cannot unmount the VM's share %s", share_dir);
	}
	return vmf_err(err, EBUSY, "the VM's share %s is still a mount point after 8 unmounts", share_dir);
}
