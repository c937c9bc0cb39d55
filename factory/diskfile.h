/* A caller's disk file (diskfile.c), on a worker: opened under the
 * sandbox rules, a qcow2 header checked and held, a scratch volume made
 * (mkfs), a copy-on-write overlay created; and every disk of a suspended
 * VM opened again for its resume. */
#ifndef VMF_DISKFILE_H
#define VMF_DISKFILE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "driver.h"
#include "error.h"
#include "pool.h"

struct vmf_daemon;

/* The file at path, opened read-only or read-write and only if peer may
 * attach it (admin: root or the daemon's user); its stat in *st.  The fd,
 * or negative with err. */
int vmf_disk_file_open(const struct vmf_daemon *d, const char *path, uid_t peer, bool admin, bool ro,
		       struct stat *st, struct vmf_error *err);
/* A new scratch volume file of mib MiB, formatted ext4 (mkfs.ext4's log
 * in run_dir); the fd, or negative with err and nothing left behind. */
int vmf_disk_scratch_make(const char *file, const char *run_dir, uint32_t mib, struct stat *st,
			  struct vmf_error *err);
/* A new empty qcow2 overlay at path for a base of size bytes; the fd, or
 * negative with err and nothing left behind. */
int vmf_disk_overlay_make(const char *path, uint64_t size, struct vmf_error *err);
/* The caller's file fd about to go to a VMM as format (see diskfile.c);
 * *size: what the guest sees.  Closed with vmf_disk_image_release. */
int vmf_disk_image_check(const struct vmf_hv_ops *ops, int fd, const char *format, bool rw, const char *path,
			 const struct stat *st, uint64_t *size, struct vmf_error *err);
void vmf_disk_image_release(int fd);

/* A suspended VM's disks opened again for its resume, on a worker: each
 * under the rules an attach by peer follows, and only if it is the file
 * the record names (its st_dev, st_ino); scratch volumes and cow overlays
 * from the run dir.  specs[] in slot order; closed by
 * vmf_disk_reopened_close (also after a failure: nothing left open). */
struct vmf_disk_reopened {
	struct vmf_disk_spec specs[VMF_DISK_SLOTS];
	char serials[VMF_DISK_SLOTS][VMF_DISK_SERIAL_MAX + 1];
	size_t n;
};
int vmf_disk_reopen(const struct vmf_daemon *d, const struct vmf_vm *vm, uid_t peer, bool admin,
		    struct vmf_disk_reopened *out, struct vmf_error *err);
void vmf_disk_reopened_close(struct vmf_disk_reopened *r);

#endif
