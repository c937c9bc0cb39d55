/* Process and file plumbing of the VMM drivers.  For all three (QEMU,
 * Firecracker, Cloud Hypervisor): the VMM process, from spawn (argv as data,
 * own session, only stdio and the fds asked for inherited) or adoption to
 * pidfd watch, exit checks with deadlines and termination, and the
 * `--version` probe.  For Firecracker and Cloud Hypervisor: the hybrid vsock
 * CONNECT handshake both use for host-initiated vsock streams, and the
 * packing of a VMM's snapshot files into the single state stream of the
 * driver interface (their shared handle and ops are in vmm_rest.h). */
#ifndef VMF_VMM_PROC_H
#define VMF_VMM_PROC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "driver.h"
#include "error.h"

/* ---- the VMM process (all drivers) ---- */

struct vmf_vmm_proc {
	pid_t pid;
	uint64_t start_ticks;
	int pidfd;
	bool child;      /* ours to reap */
	bool exited;     /* seen to exit (and reaped if ours) */
	bool status_known;  /* reaped here: wstatus is its wait() status */
	int wstatus;
};

/* How to start a VMM process.  It runs in its own session with default
 * signal handling, stdin /dev/null, and every fd but stdio and keep_fds
 * closed on exec: libraries open fds without O_CLOEXEC (LMDB's data.mdb),
 * and a VMM outlives the daemon. */
struct vmf_vmm_spawn {
	char *const *argv;      /* argv[0] is searched in PATH */
	const char *log_dir;    /* stdout and stderr: log_name beneath log_dir */
	const char *log_name;   /* (no symlink followed), appended to */
	bool log_truncate;      /* ... or emptied first */
	int out_fd;             /* no log_name: stdout here, stderr /dev/null */
	const char *cwd;        /* working directory (NULL: the caller's) */
	const int *keep_fds;    /* inherited too, under the same numbers */
	size_t n_keep;
	/* SIGKILL when the spawning thread ends: for short-lived helpers (the
	 * KVM probe), never for a VM, which must survive a daemon restart. */
	bool die_with_parent;
};

int vmf_vmm_spawn(const struct vmf_vmm_spawn *s, struct vmf_vmm_proc *p, struct vmf_error *err);
/* Fills p for a running process we did not start (adopt). */
void vmf_vmm_attach(struct vmf_vmm_proc *p, pid_t pid, uint64_t start_ticks);
/* Non-blocking: true once the process is gone, every thread of it (reaping
 * it when ours). */
bool vmf_vmm_exited(struct vmf_vmm_proc *p);
/* Once p has exited (false before): its pid, and its wait status where it
 * was reaped here (exit code, or the signal that ended it) into out. */
bool vmf_vmm_exit_status(struct vmf_vmm_proc *p, struct vmf_vmm_exit *out);
/* Waits for exit until deadline_ms (vmf_now_ms clock); true when gone. */
bool vmf_vmm_wait_exit(struct vmf_vmm_proc *p, int64_t deadline_ms);
/* SIGTERM, then SIGKILL, within the deadline (after the driver's own
 * graceful request); always leaves the process gone or reports it.  what
 * names the process in log lines, id (may be NULL) its VM. */
void vmf_vmm_terminate(struct vmf_vmm_proc *p, int64_t deadline_ms, const char *what, const char *id);
/* SIGKILL and wait for the exit (5 s at most). */
void vmf_vmm_kill(struct vmf_vmm_proc *p, const char *what, const char *id);
void vmf_vmm_close(struct vmf_vmm_proc *p);

/* Runs `bin --version` and copies what follows marker in its first line,
 * up to a character of stop, into version[n].  what names the VMM in
 * errors, package (NULL: "it") what to install when bin is missing. */
int vmf_vmm_probe_version(const char *bin, const char *what, const char *package, const char *marker,
			  const char *stop, char *version, size_t n, struct vmf_error *err);

/* Connects to a unix stream socket; the fd is close-on-exec. */
int vmf_vmm_connect_unix(const char *path, struct vmf_error *err);

/* ---- Firecracker and Cloud Hypervisor ---- */

/* vsock port the guest agent listens on in Firecracker / Cloud Hypervisor
 * guests (QEMU guests use virtio-serial). */
#define VMF_AGENT_VSOCK_PORT 1024
/* Guest CID; the host side is a unix socket per VM, so one value fits all. */
#define VMF_GUEST_CID 3

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
