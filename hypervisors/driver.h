/* The hypervisor driver interface.  Everything above hypervisors/ (template
 * build and clone, pools, GetVM) talks to a VMM only through these ops, so
 * QEMU, Firecracker and Cloud Hypervisor are interchangeable.
 *
 * A struct vmf_vmm is a driver-owned handle to one VMM process.  Handles are
 * not thread-safe: one thread drives a given VM at a time. */
#ifndef VMF_DRIVER_H
#define VMF_DRIVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"
#include "hypervisor.pb-c.h"

/* The mount tag of the host share every driver exposes to the guest; the
 * agent mounts it on request. */
#define VMF_SHARE_TAG "vmfshare"

typedef Vmf__Hv__VmConfig vmf_vm_config;
typedef Vmf__Hv__HypervisorState vmf_hv_state;

/* The longest run dir the daemon accepts: <run_dir>/vms/<uuid>/NAME must fit
 * a unix socket address (107 bytes), which leaves a driver's socket names
 * VMF_SOCK_NAME_MAX characters (firecracker.sock is the longest). */
#define VMF_RUN_DIR_MAX 48
#define VMF_SOCK_NAME_MAX (107 - VMF_RUN_DIR_MAX - 42)

/* Capabilities a driver may have; GetVM refuses what a driver lacks. */
enum vmf_cap {
	VMF_CAP_TEMPLATE_SHARE = 1u << 0,  /* clones map template RAM copy-on-write */
	VMF_CAP_CPU_HOTPLUG = 1u << 1,
	VMF_CAP_MEM_HOTPLUG = 1u << 2,
	VMF_CAP_SHARE_DEVICE = 1u << 3,    /* 9p / virtio-fs host share */
	VMF_CAP_VMGENID = 1u << 4,
	VMF_CAP_FULL_SNAPSHOT = 1u << 5,   /* all RAM in the state stream */
};

/* What a VMM's end left to say (ops->exit_info). */
struct vmf_vmm_exit {
	pid_t pid;
	bool status_known;           /* wait() status: the daemon's own child */
	int exit_code;               /* -1: a signal ended it, or unknown */
	int signal;
	/* The VMM's last word, normalized: "guest-panic", "guest-reset",
	 * "guest-poweroff", "quit" (a monitor's quit), "host-signal" (it
	 * caught SIGTERM, SIGINT or SIGHUP), "" (none); event: as it said it
	 * ("SHUTDOWN guest-reset", "GUEST_PANICKED"). */
	char guest_event[24];
	char event[96];
	char serial_log[4096];       /* the guest's console log, "" when none */
};
/* Guest resets a running VMM reported (ops->poll_events). */
struct vmf_vmm_events {
	unsigned resets;             /* RESET with guest: true */
	unsigned panics;             /* GUEST_PANICKED */
};

/* Names for status output ("template-share", "cpu-hotplug", ...). */
const char *vmf_cap_name(unsigned cap);

#define VMF_HV_ACCEL_WHY_MAX 160
struct vmf_hv_info {
	char version[64];      /* e.g. "7.2.22" */
	char accel[8];         /* "kvm" or "tcg" */
	/* Why that accelerator, as a sentence ("/dev/kvm is present but ..."),
	 * and whether the answer came from the probe kept in the state dir
	 * rather than a probe made now. */
	char accel_why[VMF_HV_ACCEL_WHY_MAX];
	bool accel_cached;
	unsigned caps;
};

struct vmf_vmm;

/* The id of free PCIe root port i (VmConfig hotplug_ports): the bus a
 * runtime names in a device_add. */
#define VMF_HOTPLUG_PORT_FMT "vmfport%u"
#define VMF_HOTPLUG_PORTS_MAX 16

/* A disk to attach.  slot (< VMF_DISK_SLOTS) names it to the driver: its
 * device and node names, its fd set; the serial the guest finds it by is
 * vmf_disk_serial(slot). */
#define VMF_DISK_SLOTS 16
#define VMF_DISK_SERIAL_MAX 20
struct vmf_disk_spec {
	unsigned slot;
	int fd;                  /* the file, opened O_RDONLY or O_RDWR as read_only says */
	bool read_only;
	const char *format;      /* "raw" or "qcow2" */
	const char *serial;
	/* A copy-on-write disk: fd is the overlay (qcow2, read-write) and
	 * backing_fd the base (read-only, backing_format). */
	int backing_fd;          /* -1: none */
	const char *backing_format;
};
/* What a VM had attached that its resuming VMM needs before it loads the
 * saved state (restore_state_with). */
struct vmf_net_backend;
struct vmf_restore_parts {
	const struct vmf_disk_spec *disks;
	size_t n_disks;
	const struct vmf_net_backend *net;
};
/* "vmfdN": the serial of slot N. */
void vmf_disk_serial(unsigned slot, char out[VMF_DISK_SERIAL_MAX + 1]);
/* The backend a hand-out plugs into a VM's NIC: a tap fd (the
 * caller keeps it and closes it after the call) or, with tap_fd < 0,
 * user-mode networking with QEMU hostfwd rules ("tcp:ADDR:PORT-:GPORT"). */
struct vmf_net_backend {
	int tap_fd;
	const char *const *hostfwd;
	size_t n_hostfwd;
	/* User mode: the guest may open connections out.  Off, it reaches
	 * nothing but answers through its forwards (slirp's restrict=on):
	 * slirp's outbound NAT reaches the host's loopback services too. */
	bool outbound;
};
#define VMF_SNAPSHOT_MAX_DIMMS 32
struct vmf_snapshot_to {
	const vmf_vm_config *cfg;      /* the receiving VMM (see ops->snapshot) */
};
struct vmf_snapshot_result {
	const char *method;            /* which path ran (static) */
	unsigned hotplugged_vcpus;
	unsigned n_dimms;
	struct { unsigned size_mib; uint64_t addr; char path[4096]; } dimms[VMF_SNAPSHOT_MAX_DIMMS];
	uint64_t paused_ms;
};

struct vmf_hv_ops {
	const char *name;                          /* "qemu" */
	Vmf__Hv__HypervisorKind kind;
	/* Names, in a VM's run dir (cfg->run_dir), of the VMM's control socket
	 * the daemon drives (QEMU's private QMP monitor, the REST API socket of
	 * the others), of the control socket a sandbox runtime drives after
	 * hand-out (QEMU's second monitor; the REST drivers' API socket again,
	 * since a REST VMM has one API and each request is its own
	 * connection), and of the host end of the guest agent channel
	 * (virtio-serial socket, hybrid vsock socket).  Status and GetVM report
	 * sandbox_control_socket and agent_socket; the owner is granted those
	 * two and never control_socket unless it is the same name. */
	const char *control_socket;
	const char *sandbox_control_socket;
	const char *agent_socket;
	/* How a runtime reaches the agent through agent_socket: "unix" (a
	 * stream straight to the guest's port) or "hybrid-vsock" ("CONNECT
	 * <agent_vsock_port>\n", then "OK ..."). */
	const char *agent_transport;
	unsigned agent_vsock_port;

	/* Version, accelerator that will be used, capabilities.  kernel (may
	 * be NULL) is the guest kernel: QEMU uses KVM only if it boots it.
	 * state_dir (may be NULL) keeps what a slow probe found, for the next
	 * command on the same binary, host and kernel. */
	int (*probe)(const char *binary, const char *kernel, const char *state_dir, struct vmf_hv_info *info,
		     struct vmf_error *err);

	/* Starts a VMM process from cfg.  cfg->memory_mode selects a cold boot
	 * (MEM_PRIVATE), a template boot (MEM_TEMPLATE: RAM in cfg->memory_file,
	 * shared) or, with cfg->incoming, a VMM waiting for state (use
	 * start_from_template instead).  Returns once the control channel
	 * answers; the guest may still be booting. */
	int (*boot)(const vmf_vm_config *cfg, struct vmf_vmm **out, struct vmf_error *err);

	/* Starts a clone: a VMM with cfg (MEM_CLONE_COW or MEM_FULL) that loads
	 * the device state read from state_fd.  The result is paused. */
	int (*start_from_template)(const vmf_vm_config *cfg, int state_fd, struct vmf_vmm **out,
				   struct vmf_error *err);

	/* Saves a paused VM's device state to state_fd.  full: all guest RAM in
	 * the stream; otherwise shared RAM is skipped (x-ignore-shared). */
	int (*save_template)(struct vmf_vmm *vm, int state_fd, bool full, struct vmf_error *err);

	/* Copies a running VM's current state into a new template (NULL: the
	 * driver cannot).  to->cfg is the receiving side: a VM config with
	 * memory_mode MEM_TEMPLATE, memory_file the new template's RAM file,
	 * and its own id, name and run dir; the driver adds what the VM has
	 * hot-added (res->dimms get their files beside memory_file).  The
	 * device state goes to state_fd as save_template writes it.  The VM
	 * is paused only while its state is copied and runs again afterwards
	 * on every path where it ran before. */
	int (*snapshot)(struct vmf_vmm *vm, const struct vmf_snapshot_to *to, int state_fd,
			struct vmf_snapshot_result *res, struct vmf_error *err);
	/* Suspend and resume (NULL: the driver cannot).  save_state pauses the
	 * VM and saves its whole state to state_fd: devices and every byte of
	 * guest RAM, hot-added memory included, none skipped as shared (a
	 * clone's RAM is a private copy of its template's file).  The VM stays
	 * paused and can be resumed (a failed suspend).  restore_state starts
	 * a VMM for the VM st describes (a serialize of the saved handle: its
	 * config, its hot-added vCPUs and memory, same sockets) that loads
	 * state_fd; the result is paused. */
	int (*save_state)(struct vmf_vmm *vm, int state_fd, struct vmf_error *err);
	int (*restore_state)(const vmf_hv_state *st, int state_fd, struct vmf_vmm **out, struct vmf_error *err);
	/* restore_state for a VM that had disks attached or a backend whose
	 * state is in the saved stream (NULL: the driver cannot suspend such
	 * a VM): the new VMM gets parts' disks (their fds reopened by the
	 * caller, who closes them after the call) as the saved one had them,
	 * same slots and serials, and parts' net backend (net_attach's; NULL:
	 * none) before it loads the state, so the saved device state finds
	 * its devices. */
	int (*restore_state_with)(const vmf_hv_state *st, int state_fd, const struct vmf_restore_parts *parts,
				  struct vmf_vmm **out, struct vmf_error *err);

	int (*pause)(struct vmf_vmm *vm, struct vmf_error *err);
	int (*resume)(struct vmf_vmm *vm, struct vmf_error *err);

	/* Brings the VM to total_vcpus / adds add_mib of memory.  The guest
	 * still has to online them (agent OnlineCpuMem). */
	int (*hotplug_vcpus)(struct vmf_vmm *vm, unsigned total_vcpus, struct vmf_error *err);
	int (*hotplug_memory)(struct vmf_vmm *vm, unsigned add_mib, struct vmf_error *err);

	/* Plugs a network backend into the template's NIC (cfg->nic).  NULL
	 * when the driver has none: GetVM refuses network then. */
	int (*net_attach)(struct vmf_vmm *vm, const struct vmf_net_backend *nb, struct vmf_error *err);

	/* Graceful shutdown, then SIGTERM, then SIGKILL, within timeout_ms in all.
	 * Reaps the process when it is our child.  Safe on a dead VM. */
	int (*stop)(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err);

	/* True while the VMM process runs (not a zombie, same start time). */
	bool (*alive)(struct vmf_vmm *vm);
	pid_t (*pid)(const struct vmf_vmm *vm);
	unsigned (*capabilities)(const struct vmf_vmm *vm);

	/* Connects a fresh stream to the guest agent; the caller owns the fd. */
	int (*agent_connect)(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err);

	/* A fd that becomes readable (EOF) when the VMM dies, for the event loop;
	 * -1 if none.  Owned by the handle. */
	int (*watch_fd)(struct vmf_vmm *vm);
	/* Once the process has exited (unasked): its wait status where it was
	 * our child, its last event, its serial log (-EBUSY while it runs).
	 * Reaps it.  On a worker that owns vm. */
	int (*exit_info)(struct vmf_vmm *vm, struct vmf_vmm_exit *out);
	/* A fd readable when the VMM has events for the loop (QEMU's QMP
	 * socket), -1 if none; poll_events reads them without waiting (NULL
	 * when the driver has none).  For a VM kept across guest resets. */
	int (*event_fd)(struct vmf_vmm *vm);
	/* -EPIPE once the connection has ended (the VMM exited). */
	int (*poll_events)(struct vmf_vmm *vm, struct vmf_vmm_events *ev);
	/* A VM kept across a guest reset: closes the sandbox's agent
	 * connection, whose processes died with the guest's old boot, so that
	 * a client waiting on it sees EOF (QEMU: the owner's port unplugged,
	 * its socket replaced, plugged again; the caller grants the owner the
	 * new socket).  NULL: the driver cannot. */
	int (*agent_reset)(struct vmf_vmm *vm, struct vmf_error *err);

	/* Snapshot of the handle for LMDB; free with
	 * vmf__hv__hypervisor_state__free_unpacked(st, NULL). */
	int (*serialize)(const struct vmf_vmm *vm, vmf_hv_state **out, struct vmf_error *err);
	/* Rebuilds a handle to a running VMM from a serialized state: checks the
	 * pid, its start time and name, and reconnects the control channel. */
	int (*adopt)(const vmf_hv_state *st, struct vmf_vmm **out, struct vmf_error *err);

	/* Disks (vmfactory attach; NULL: the driver has none).  attach_disk
	 * gives the guest the file open on d->fd (the driver keeps what it
	 * needs; the caller closes fd) as a block device with serial
	 * d->serial; nothing is left attached when it fails.  detach_disk
	 * removes what attach_disk added for slot; a slot with nothing
	 * attached is no error (a cleanup after a half-done attach). */
	int (*attach_disk)(struct vmf_vmm *vm, const struct vmf_disk_spec *d, struct vmf_error *err);
	int (*detach_disk)(struct vmf_vmm *vm, unsigned slot, struct vmf_error *err);
	/* Whether slot can take a disk read_only says (NULL: every slot takes
	 * any): Firecracker's drives are made at boot, each read-only or not
	 * for good, so the daemon picks the first free slot that fits. */
	bool (*disk_slot_fits)(unsigned slot, bool read_only);
	/* The disk device a template of this driver carries, in the template
	 * spec's device list (so a change of it is a new template id); NULL:
	 * "virtio-scsi:disks". */
	const char *disk_device;
	/* The VMM parses a qcow2 disk's header when attach_disk (or
	 * restore_state_with) opens it, and would open a file the header
	 * names: the caller keeps the image from being written between its
	 * own check of the header and the end of that call. */
	bool parses_image_header;
	/* The device through which the guest reports a kernel panic, in the
	 * spec's device list too; NULL: none. */
	const char *panic_device;
	/* The VMM can reserve free PCIe root ports for the runtime's own
	 * hot-plug (VmConfig hotplug_ports); false: templates get none. */
	bool hotplug_ports;

	/* Frees the handle (closes sockets) without touching the process. */
	void (*release)(struct vmf_vmm *vm);
};

extern const struct vmf_hv_ops vmf_qemu_ops;
extern const struct vmf_hv_ops vmf_firecracker_ops;
extern const struct vmf_hv_ops vmf_cloud_hypervisor_ops;

/* Driver by name ("qemu", "firecracker", "cloud-hypervisor") or kind. */
const struct vmf_hv_ops *vmf_hv_by_name(const char *name);
const struct vmf_hv_ops *vmf_hv_by_kind(Vmf__Hv__HypervisorKind kind);

/* Deep copy of a config (protobuf pack/unpack); NULL on allocation failure. */
vmf_vm_config *vmf_vm_config_dup(const vmf_vm_config *cfg);
void vmf_vm_config_free(vmf_vm_config *cfg);

/* ---- why a VMM ended (vmexit.c): through the ops, for every driver ----
 * Its exit status (when it is the daemon's child), its last event (QEMU's
 * SHUTDOWN reason, GUEST_PANICKED), whether the kernel's OOM killer did it
 * (the memory cgroups it joined, the kernel log), and the last 4 KiB of
 * the guest's serial log, escaped.  On a worker that owns vm, once its
 * process is gone. */
#define VMF_SERIAL_TAIL_BYTES 4096

/* vm's end as a VmExit (free with vmf__hv__vm_exit__free_unpacked(e,
 * NULL)); cgroups (n of them) are those its VMM joined, oom_before each
 * one's oom_kill count then.  NULL while the process runs, or out of
 * memory. */
Vmf__Hv__VmExit *vmf_vm_exit_read(const struct vmf_hv_ops *ops, struct vmf_vmm *vm, char *const *cgroups,
				  const uint64_t *oom_before, size_t n);
/* A VMM found gone at a daemon's start (it ended while no daemon ran):
 * what can be known without a handle: the OOM killer (cgroups, the kernel
 * log: pid), the serial log at serial_log ("" = none). */
Vmf__Hv__VmExit *vmf_vm_exit_unseen(const char *vmm, pid_t pid, const char *serial_log, char *const *cgroups,
				    const uint64_t *oom_before, size_t n);
/* The guest reset and the VM runs on (on_guest_reset = keep): cause
 * guest-reset or guest-panic, the serial log's tail; resets is the count
 * so far. */
Vmf__Hv__VmExit *vmf_vm_exit_reset(const struct vmf_hv_ops *ops, struct vmf_vmm *vm, unsigned resets,
				   unsigned panics);
/* For the error of a template build, a clone's warm-up or a hand-out
 * whose VMM has died (or is dying: it waits a second for that): appends
 * the cause and as much of the serial log's end as the message holds;
 * true then.  Nothing (false) while the VMM runs. */
bool vmf_vm_exit_explain(const struct vmf_hv_ops *ops, struct vmf_vmm *vm, struct vmf_error *err);
/* A deep copy (pack, unpack); NULL when e is NULL or out of memory. */
Vmf__Hv__VmExit *vmf_vm_exit_dup(const Vmf__Hv__VmExit *e);

/* For ops->hotplug_memory: ENOSPC unless current_mib + add_mib fits the
 * config's max_memory_mib. */
int vmf_hotplug_mem_check(const vmf_vm_config *cfg, unsigned current_mib, unsigned add_mib,
			  struct vmf_error *err);

#endif
