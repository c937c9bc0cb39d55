/* What the two REST drivers (Firecracker, Cloud Hypervisor) share: one
 * per-VM handle and every op that does not depend on the VMM's API paths or
 * bodies.  A driver file describes its VMM in a struct vmf_rest_vmm and
 * keeps only what differs: boot, snapshot and restore, pause/resume,
 * hot-plug, the graceful stop request and its capabilities.
 *
 * driver.h leaves struct vmf_vmm to each driver; these two share the one
 * below (the QEMU driver has its own and never sees this header). */
#ifndef VMF_VMM_REST_H
#define VMF_VMM_REST_H

#include <limits.h>
#include <stdbool.h>

#include "driver.h"
#include "error.h"
#include "vmm_http.h"
#include "vmm_proc.h"

#define VMF_REST_API_TIMEOUT_MS 10000
#define VMF_REST_START_TIMEOUT_MS 10000
#define VMF_REST_SNAPSHOT_TIMEOUT_MS 120000
/* Names in a VM's run dir: the hybrid vsock socket (agent channel) and the
 * directory a snapshot is written to or unpacked into. */
#define VMF_REST_VSOCK "vsock.sock"
#define VMF_REST_SNAP_DIR "snapshot"

struct vmf_rest_vmm {
	const char *name;          /* "firecracker": messages, default binary */
	Vmf__Hv__HypervisorKind kind;
	const char *api_prefix;    /* before every API path ("/api/v1/" for CH) */
	const char *api_sock;      /* names in the run dir */
	const char *log;
	/* GET version_path answers {version_key: "1.2.3", ...}: asked once the
	 * API answers and on adopt; GET info_path answers {"state": ...}. */
	const char *version_path;
	const char *version_key;
	const char *info_path;
	/* The VMM's command line (NULL-terminated, at most 7 entries) for vm
	 * with binary bin; arg is room for one built argument. */
	void (*argv)(const struct vmf_vmm *vm, const char *bin, char *arg, size_t n, char **argv);
	/* Sends the request that pauses (paused) or resumes the VM. */
	int (*request_pause)(struct vmf_vmm *vm, bool paused, struct vmf_error *err);
	/* Asks a live VMM to exit (stop, before SIGTERM); false when it sent
	 * nothing worth waiting for. */
	bool (*ask_exit)(struct vmf_vmm *vm, int timeout_ms);
	/* Sets vm->disks from what the running VMM has attached (adopt). */
	int (*read_disks)(struct vmf_vmm *vm, struct vmf_error *err);
};

struct vmf_vmm {
	const struct vmf_rest_vmm *vmm;
	vmf_vm_config *cfg;
	struct vmf_vmm_proc proc;
	char api_sock[PATH_MAX];
	char vsock[PATH_MAX];
	char log[PATH_MAX];
	char version[64];
	unsigned vcpus;
	unsigned memory_mib;       /* base + hot-added */
	bool paused;
	/* Slots with a disk attached (bit N: slot N): ops->snapshot refuses
	 * such a VM (a template's clones could not open its disks), save_state
	 * records them for restore_state_with to check against the disks it
	 * is given.  Not in the hypervisor state: adopt asks the VMM
	 * (read_disks). */
	unsigned disks;
};

/* The two drivers' descriptions (firecracker.c, cloud_hypervisor.c): with
 * vmf_rest_new, a handle on an API socket and no process, for the fuzz
 * target of the VMMs' replies (tests/fuzz/fuzz_rest.c). */
extern const struct vmf_rest_vmm *const vmf_rest_firecracker, *const vmf_rest_cloud_hypervisor;

/* ---- for the driver files ---- */

/* The first steps of ops->boot: checks cfg (a kernel, vCPUs and memory,
 * not incoming), starts the VMM and waits for its API. */
int vmf_rest_boot_start(const struct vmf_rest_vmm *vmm, const vmf_vm_config *cfg, struct vmf_vmm **out,
			struct vmf_error *err);
/* A handle for cfg, no process yet; then vmf_rest_spawn starts the VMM and
 * waits for its API (killing it if that does not answer). */
int vmf_rest_new(const struct vmf_rest_vmm *vmm, const vmf_vm_config *cfg, struct vmf_vmm **out,
		 struct vmf_error *err);
int vmf_rest_spawn(struct vmf_vmm *vm, struct vmf_error *err);
/* Kills the VMM (SIGTERM, then SIGKILL, within 2 s) and frees the handle:
 * a start that failed half-way. */
void vmf_rest_abort(struct vmf_vmm *vm);

/* A request on the VM's API socket, path after api_prefix, whose answer is
 * not needed; body (may be NULL) is consumed.  Returns 0 or negative; an
 * error names the VM and, when the VMM has exited, ends with its log tail. */
int vmf_rest_send(struct vmf_vmm *vm, const char *method, const char *path, json_object *body, int timeout_ms,
		  struct vmf_error *err);
/* A GET whose JSON answer goes to *reply (the caller puts it). */
int vmf_rest_get(struct vmf_vmm *vm, const char *path, json_object **reply, struct vmf_error *err);

/* Snapshots go through <run_dir>/snapshot.  save_template: snap_begin
 * pauses the VM if it runs, names the directory in dir (PATH_MAX) and
 * empties it for the VMM to write into;
 * snap_pack packs the named files (NULL: all) into the state stream and
 * removes the directory.  start_from_template: snap_unpack recreates the
 * files there from the stream. */
int vmf_rest_snap_begin(struct vmf_vmm *vm, char *dir, struct vmf_error *err);
int vmf_rest_snap_pack(struct vmf_vmm *vm, int state_fd, const char *dir, const char *const *names,
		       struct vmf_error *err);
int vmf_rest_snap_unpack(struct vmf_vmm *vm, int state_fd, char *dir, struct vmf_error *err);
/* For snapshot: ENOTSUP while a disk is attached (what names the
 * operation in the sentence). */
int vmf_rest_no_disks(const struct vmf_vmm *vm, const char *what, struct vmf_error *err);
/* ops->restore_state up to the load request: a handle for the VM st
 * describes (its config, vCPUs and memory, same sockets), its snapshot
 * unpacked from state_fd into dir, no process yet. */
int vmf_rest_restore_begin(const struct vmf_rest_vmm *vmm, const vmf_hv_state *st, int state_fd,
			   struct vmf_vmm **out, char *dir, struct vmf_error *err);

/* ops->probe up to the capabilities: runs `bin --version`, which both
 * VMMs answer with "NAME vX.Y.Z"; accel is kvm. */
int vmf_rest_probe(const struct vmf_rest_vmm *vmm, const char *binary, struct vmf_hv_info *info,
		   struct vmf_error *err);
/* ops->adopt: takes over the running VMM a record describes.  Checks the
 * record and that the process is that VM's (its command line names the API
 * socket), then asks the API for its version, its run state, since the
 * recorded one may be stale, and its disks. */
int vmf_rest_adopt(const struct vmf_rest_vmm *vmm, const vmf_hv_state *st, struct vmf_vmm **out,
		   struct vmf_error *err);

/* How a REST VMM, which opens disks by path, gets the file the daemon
 * opened and checked: the descriptor's /proc/<daemon pid>/fd/N, which
 * reopens that very file whatever its name has become. */
#define VMF_REST_FD_PATH_MAX 64
void vmf_rest_fd_path(int fd, char out[VMF_REST_FD_PATH_MAX]);

/* A resume's disks (parts, may be NULL) against the slots the saved VM had
 * (saved, a mask): each slot given once, none the VM did not have, none of
 * its own missing.  *given gets the mask of the slots given. */
int vmf_rest_match_disks(const struct vmf_vmm *vm, unsigned saved, const struct vmf_restore_parts *parts,
			 unsigned *given, struct vmf_error *err);

/* ---- ops the same for both ---- */
int vmf_rest_pause(struct vmf_vmm *vm, struct vmf_error *err);
int vmf_rest_resume(struct vmf_vmm *vm, struct vmf_error *err);
int vmf_rest_stop(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err);
bool vmf_rest_alive(struct vmf_vmm *vm);
pid_t vmf_rest_pid(const struct vmf_vmm *vm);
int vmf_rest_agent_connect(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err);
int vmf_rest_watch_fd(struct vmf_vmm *vm);
int vmf_rest_serialize(const struct vmf_vmm *vm, vmf_hv_state **out, struct vmf_error *err);
int vmf_rest_exit_info(struct vmf_vmm *vm, struct vmf_vmm_exit *out);
void vmf_rest_release(struct vmf_vmm *vm);

#endif
