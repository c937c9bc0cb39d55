/* What the rooms of the QEMU driver share: the VM handle, the monitor
 * helpers every room talks to QEMU through, and each room's entry points
 * (the driver table, ops.c, names them).  Private to hypervisors/qemu/:
 * the rest of the project sees the driver through driver.h only, tests
 * through qemu.h.
 *
 *   accel.c     which accelerator and -cpu model QEMU can run a guest with
 *   cmdline.c   the command line as data, built from a VmConfig
 *   vm.c        the process and its monitor: start, stop, adopt, record,
 *               commands, events, the agent's ports
 *   migrate.c   templates, clones, snapshots, suspend and resume
 *   hotplug.c   vCPUs and DIMMs, live and on a resuming command line
 *   disk.c      the SCSI controller and the disks hot-plugged onto it
 *   net.c       the NIC and the backend a hand-out plugs into it
 *   ops.c       the driver table entry */
#ifndef VMF_QEMU_VM_H
#define VMF_QEMU_VM_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "qemu.h"

#define QMP_TIMEOUT_MS 10000
/* A TCG QEMU on a loaded 2-core host can take seconds to reach its main loop. */
#define START_TIMEOUT_MS 30000
#define MIGRATE_TIMEOUT_MS 120000
#define STATE_SCHEMA_VERSION 1

#include "vmm_proc.h"

struct vmf_vmm {
	vmf_vm_config *cfg;
	struct vmf_vmm_proc proc;
	struct vmf_qmp *qmp;
	char qmp_path[PATH_MAX];      /* the daemon's monitor */
	char mon_path[PATH_MAX];      /* the sandbox's monitor */
	char agent_path[PATH_MAX];
	char vmf_agent_path[PATH_MAX];
	char serial_log[PATH_MAX];
	char stderr_log[PATH_MAX];
	unsigned vcpus;
	unsigned memory_mib;         /* base + hot-added */
	unsigned dimms;
	bool paused;
	/* What was hot-added, in order, for a QEMU that loads its saved state
	 * (vmf_qemu_append_hotplugged): each vCPU's -device value, each DIMM's
	 * MiB. */
	char **cpu_devs;
	size_t n_cpu_devs;
	uint32_t *dimm_mib;
	size_t n_dimm_mib;
};

/* accel.c */
/* "kvm" when QEMU boots a guest with /dev/kvm, else "tcg". */
const char *qemu_accel_for(const char *kernel);
/* The -cpu model that the probe found working with KVM. */
const char *qemu_kvm_cpu(void);
/* Fills info's accelerator fields for this binary and guest kernel: from
 * the answer kept in state_dir when nothing it depends on changed, else by
 * probing (and keeping the answer there). */
void qemu_accel_probe(const char *binary, const char *kernel, const char *state_dir, struct vmf_hv_info *info);

/* cmdline.c: a command line being built; an allocation failure is
 * remembered (oom) and reported once at the end. */
struct argv_buf {
	char **v;
	size_t n, cap;
	bool oom;
};
void qemu_arg(struct argv_buf *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* vm.c */
struct vmf_vmm *qemu_vm_new(const vmf_vm_config *cfg, struct vmf_error *err);
void qemu_vm_free(struct vmf_vmm *vm);
int qemu_take_hotplugged(struct vmf_vmm *vm, const Vmf__Hv__QemuState *q, struct vmf_error *err);
/* Starts QEMU for vm's config (and what it hot-added) and opens its monitor. */
int qemu_spawn(struct vmf_vmm *vm, struct vmf_error *err);
void qemu_append_logs(struct vmf_vmm *vm, struct vmf_error *err);
int qemu_qmp_cmd(struct vmf_vmm *vm, const char *cmd, json_object *args, json_object **ret,
		 struct vmf_error *err);
const char *qemu_member_str(json_object *o, const char *key);
int qemu_set_capability(struct vmf_vmm *vm, const char *cap, bool on, struct vmf_error *err);
int qemu_has_capability(struct vmf_vmm *vm, const char *cap, struct vmf_error *err);
int qemu_pass_fd(struct vmf_vmm *vm, const char *name, int fd, struct vmf_error *err);
int qemu_boot(const vmf_vm_config *cfg, struct vmf_vmm **out, struct vmf_error *err);
int qemu_stop(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err);
int qemu_pause(struct vmf_vmm *vm, struct vmf_error *err);
int qemu_resume(struct vmf_vmm *vm, struct vmf_error *err);
bool qemu_alive(struct vmf_vmm *vm);
pid_t qemu_pid(const struct vmf_vmm *vm);
unsigned qemu_capabilities(const struct vmf_vmm *vm);
int qemu_agent_connect(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err);
int qemu_watch_fd(struct vmf_vmm *vm);
int qemu_exit_info(struct vmf_vmm *vm, struct vmf_vmm_exit *out);
int qemu_event_fd(struct vmf_vmm *vm);
int qemu_poll_events(struct vmf_vmm *vm, struct vmf_vmm_events *ev);
int qemu_agent_reset(struct vmf_vmm *vm, struct vmf_error *err);
int qemu_serialize(const struct vmf_vmm *vm, vmf_hv_state **out, struct vmf_error *err);
int qemu_adopt(const vmf_hv_state *st, struct vmf_vmm **out, struct vmf_error *err);
int qemu_probe(const char *binary, const char *kernel, const char *state_dir, struct vmf_hv_info *info,
	       struct vmf_error *err);

/* migrate.c */
int qemu_save_template(struct vmf_vmm *vm, int state_fd, bool full, struct vmf_error *err);
int qemu_snapshot(struct vmf_vmm *vm, const struct vmf_snapshot_to *to, int state_fd,
		  struct vmf_snapshot_result *res, struct vmf_error *err);
int qemu_start_from_template(const vmf_vm_config *cfg, int state_fd, struct vmf_vmm **out,
			     struct vmf_error *err);
int qemu_save_state(struct vmf_vmm *vm, int state_fd, struct vmf_error *err);
int qemu_restore_state_with(const vmf_hv_state *st, int state_fd, const struct vmf_restore_parts *parts,
			    struct vmf_vmm **out, struct vmf_error *err);
int qemu_restore_state(const vmf_hv_state *st, int state_fd, struct vmf_vmm **out, struct vmf_error *err);

/* hotplug.c (vmf_qemu_append_hotplugged: qemu.h) */
void qemu_append_hotplug_ports(struct argv_buf *a, const vmf_vm_config *cfg);
int qemu_hotplug_vcpus(struct vmf_vmm *vm, unsigned total, struct vmf_error *err);
int qemu_hotplug_memory(struct vmf_vmm *vm, unsigned add_mib, struct vmf_error *err);

/* disk.c */
void qemu_append_disk_devices(struct argv_buf *a);
int qemu_attach_disk(struct vmf_vmm *vm, const struct vmf_disk_spec *d, struct vmf_error *err);
int qemu_detach_disk(struct vmf_vmm *vm, unsigned slot, struct vmf_error *err);

/* net.c */
void qemu_append_nic(struct argv_buf *a, const vmf_vm_config *cfg);
int qemu_net_attach(struct vmf_vmm *vm, const struct vmf_net_backend *nb, struct vmf_error *err);

#endif
