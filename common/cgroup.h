/* cgroups a VMM joins at hand-out (get --cgroup, a pool's cgroup), on
 * cgroup v2 (a tenant's delegated cgroup) or v1 (a directory per
 * controller hierarchy), and what they say about the OOM killer. */
#ifndef VMF_CGROUP_H
#define VMF_CGROUP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

#define VMF_CGROUP_ROOT "/sys/fs/cgroup"
/* Directories one VM joins: a v2 cgroup, or one per v1 hierarchy. */
#define VMF_CGROUPS_MAX 8
#define VMF_CGROUP_PATH_MAX 512

/* A path as a cgroup may be named: absolute, below /sys/fs/cgroup, no "."
 * or ".." component, no "//", shorter than VMF_CGROUP_PATH_MAX.  The same
 * check for a request and for the config file. */
int vmf_cgroup_check_path(const char *path, struct vmf_error *err);

/* Opens the cgroup directory path for a process to join, as peer may ask:
 * checked as above, reached from /sys/fs/cgroup one name at a time without
 * following a symbolic link, a directory of a cgroup file system (v1 or
 * v2); for a peer that is not admin, the directory and its cgroup.procs
 * must be the peer's (owned by its uid, cgroup.procs writable by it: what
 * delegating a cgroup to a user makes).  Returns its cgroup.procs opened
 * for writing: the cgroup joined later is this one, whatever the path
 * names by then.  Errors name the path and the cause (EACCES not the
 * peer's, ELOOP a symbolic link, ENOTDIR/EINVAL not a cgroup). */
int vmf_cgroup_open(const char *path, uid_t peer, bool admin, struct vmf_error *err);

/* Moves process pid, all its threads, into the cgroup of procs_fd. */
int vmf_cgroup_join(int procs_fd, const char *path, pid_t pid, struct vmf_error *err);

/* The OOM kills the cgroup at path counted so far (memory.events on v2,
 * memory.oom_control on v1: oom_kill); 0 without a memory controller. */
uint64_t vmf_cgroup_oom_kills(const char *path);

#endif
