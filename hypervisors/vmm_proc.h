/* Process and file plumbing shared by the Firecracker and Cloud Hypervisor
 * drivers: spawning the VMM (argv as data, setsid, only stdio inherited),
 * pidfd watch, exit checks with deadlines, the hybrid vsock CONNECT
 * handshake both VMMs use for host-initiated vsock streams, and the packing
 * of a VMM's snapshot files into the single state stream of the driver
 * interface. */
#ifndef VMF_VMM_PROC_H
#define VMF_VMM_PROC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "driver.h"
#include "error.h"

/* vsock port the guest agent listens on in Firecracker / Cloud Hypervisor
 * guests (QEMU guests use virtio-serial). */
#define VMF_AGENT_VSOCK_PORT 1024
/* Guest CID; the host side is a unix socket per VM, so one value fits all. */
#define VMF_GUEST_CID 3

/* What every VMM driver requires of a config: an id and an absolute run
 * dir; and a runas user is refused (never run as another user than asked
 * without saying so).  vmm names the driver in the error. */
int vmf_vmm_check_config(const vmf_vm_config *cfg, const char *vmm, struct vmf_error *err);

struct vmf_vmm_proc;

/* A VMM handle's record for restart recovery (both drivers store the same
 * fields); free with vmf__hv__hypervisor_state__free_unpacked. */
int vmf_vmm_serialize(Vmf__Hv__HypervisorKind kind, const vmf_vm_config *cfg, const struct vmf_vmm_proc *p,
		      const char *api_sock, unsigned vcpus, unsigned memory_mib, bool paused,
		      vmf_hv_state **out, struct vmf_error *err);
/* Checks a record before adopting: kind and schema, and that its process
 * still runs (same pid and start time). */
int vmf_vmm_adopt_check(const vmf_hv_state *st, Vmf__Hv__HypervisorKind kind, const char *vmm,
			struct vmf_error *err);

struct vmf_vmm_proc {
	pid_t pid;
	uint64_t start_ticks;
	int pidfd;
	bool child;      /* ours to reap */
	bool exited;
};

/* Forks argv[0] (PATH search) in its own session with stdin /dev/null and
 * stdout+stderr appended to log_path; every other fd is closed on exec. */
int vmf_vmm_spawn(char *const argv[], const char *log_path, struct vmf_vmm_proc *p,
		  struct vmf_error *err);
/* Fills p for a running process we did not start (adopt). */
void vmf_vmm_attach(struct vmf_vmm_proc *p, pid_t pid, uint64_t start_ticks);
/* Non-blocking: true once the process is gone (reaping it when ours). */
bool vmf_vmm_exited(struct vmf_vmm_proc *p);
/* Waits for exit until deadline_ms (vmf_now_ms clock); true when gone. */
bool vmf_vmm_wait_exit(struct vmf_vmm_proc *p, int64_t deadline_ms);
/* SIGTERM, then SIGKILL, within the deadline (after the driver's own
 * graceful request); always leaves the process gone or reports it. */
void vmf_vmm_terminate(struct vmf_vmm_proc *p, int64_t deadline_ms, const char *what);
void vmf_vmm_close(struct vmf_vmm_proc *p);

/* True when /proc/PID/cmdline has an argument equal to arg or ending in
 * "=" arg: guards adopt against pid reuse. */
bool vmf_vmm_cmdline_has(pid_t pid, const char *arg);

/* Waits up to timeout_ms for path to accept connections; fails early when
 * the process exits. */
int vmf_vmm_wait_socket(struct vmf_vmm_proc *p, const char *vmm, const char *path, int timeout_ms,
			struct vmf_error *err);

/* Connects to a VMM's vsock unix socket and asks for guest port (the
 * "CONNECT <port>\n" / "OK <n>\n" handshake); retries until timeout_ms
 * while the guest is not listening yet.  Returns the stream fd. */
int vmf_vmm_vsock_connect(const char *uds, unsigned port, int timeout_ms, struct vmf_error *err);

/* The state stream: "VMFSNAP1", then per file a u32 name length, the name,
 * a u64 size and the bytes, ended by a zero name length.  pack writes the
 * listed files of dir (names NULL: every regular file in dir). */
int vmf_vmm_pack(int fd, const char *dir, const char *const *names, struct vmf_error *err);
/* Recreates the files in dir (created 0700 if missing). */
int vmf_vmm_unpack(int fd, const char *dir, struct vmf_error *err);

#endif
