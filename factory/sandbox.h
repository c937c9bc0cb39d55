/* Sandbox paths (GetVM share_dir and sock_dir): where the daemon may create
 * and remove its links, and the access a VM's owner gets to it.
 * docs/security.md states what these guarantee. */
#ifndef VMF_SANDBOX_H
#define VMF_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "error.h"

#define VMF_MAX_SANDBOX_ROOTS 16
#define VMF_SANDBOX_ROOT_MAX 512
/* Where Kata Containers keeps its sandboxes: the shared dirs of its agent
 * (virtcontainers' kataHostSharedDir) and the per-sandbox VM dirs
 * (/run/vc/vm/<id>, where it puts the hypervisor's sockets). */
#define VMF_KATA_SANDBOX_ROOTS "/run/kata-containers/shared/sandboxes:/run/vc/vm"

/* Read-only after start: worker jobs read it through the daemon. */
struct vmf_sandbox_policy {
	char roots[VMF_MAX_SANDBOX_ROOTS][VMF_SANDBOX_ROOT_MAX];
	unsigned n_roots;
	/* Never a root, never beneath one: the state dir and <run_dir>/vms. */
	char forbidden[2][VMF_SANDBOX_ROOT_MAX];
	uid_t daemon_uid;
};

/* The roots from a colon-separated list (NULL or "": the default,
 * <run_dir>/sandboxes and the Kata dirs).  Each must be absolute, without
 * "." or ".." components, and may not be, contain or lie inside the state
 * dir or <run_dir>/vms. */
int vmf_sandbox_policy_init(struct vmf_sandbox_policy *p, const char *roots, const char *state_dir,
			    const char *run_dir, struct vmf_error *err);

/* Opens (O_PATH) the directory that is to hold path's last component, which
 * is copied to name: the directory must lie beneath one of the roots and is
 * opened beneath it without following any symlink or magic link (openat2
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, or, where
 * the kernel lacks openat2, one component at a time with O_NOFOLLOW).  For
 * a peer other than root and the daemon's user the directory must be owned
 * by peer.  Returns the descriptor. */
int vmf_sandbox_open_parent(const struct vmf_sandbox_policy *p, const char *path, uid_t peer, char *name,
			    size_t nlen, struct vmf_error *err);

/* Read-only check of a sandbox path: confined as above, and absent, an
 * empty directory or a symlink.  what names the field in the error. */
int vmf_sandbox_check_path(const struct vmf_sandbox_policy *p, const char *what, const char *path, uid_t peer,
			   struct vmf_error *err);
/* Replaces path (absent, an empty directory or a symlink) with a symlink to
 * target, in the directory vmf_sandbox_open_parent opens. */
int vmf_sandbox_install_link(const struct vmf_sandbox_policy *p, const char *what, const char *path,
			     const char *target, uid_t peer, struct vmf_error *err);
/* Removes link only if it is still a symlink to target and the same
 * confinement holds; otherwise leaves it and says why (-errno). */
int vmf_sandbox_unlink_if_points_to(const struct vmf_sandbox_policy *p, const char *link, const char *target,
				    uid_t owner, struct vmf_error *err);

/* Gives uid, and only uid, access to a VM's sockets and share with POSIX
 * ACLs: search (not list) on run_dir, read-write on the sockets named in
 * socks, read-write-search on share_dir (and by default on what is created
 * in it, also for runas_uid when QEMU runs as another user, else pass
 * (uid_t)-1).  Every other entry of run_dir loses its group and other
 * bits, so that the search right reaches nothing else. */
int vmf_sandbox_grant(const char *run_dir, const char *const *socks, size_t nsocks, const char *share_dir,
		      uid_t uid, uid_t runas_uid, struct vmf_error *err);

/* Tests: behave as on a kernel without openat2. */
extern bool vmf_sandbox_test_no_openat2;

#endif
