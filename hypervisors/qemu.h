/* QEMU driver internals exposed for tests: the command line is data built
 * from a VmConfig, so it can be checked without starting QEMU. */
#ifndef VMF_QEMU_H
#define VMF_QEMU_H

#include "driver.h"

/* Paths inside a VM's run dir.  qmp.sock is the sandbox's monitor, the one
 * GetVM names; the daemon keeps the private one, which its owner is never
 * granted.  A VM started before the second monitor existed has qmp.sock
 * alone, and its record names it as the daemon's. */
#define VMF_QEMU_QMP_SOCK "qmp.sock"
/* No longer than the names before it: a run dir at its length limit
 * (config.c) leaves a socket name 9 bytes of sun_path. */
#define VMF_QEMU_DAEMON_QMP_SOCK "dqmp.sock"
#define VMF_QEMU_AGENT_SOCK "agent.sock"
/* The daemon's own agent port ("vmf"): no one else gets access to it, so
 * the owner holding "agent" never keeps the daemon out, nor the reverse. */
#define VMF_QEMU_DAEMON_AGENT_SOCK "vmf-agent.sock"
/* The template's virtio-scsi controller: disks are hot-plugged onto its bus. */
#define VMF_QEMU_SCSI_BUS "scsi0"
/* The owner's agent port's device id (unplugged and plugged again when a
 * kept VM's guest resets). */
#define VMF_QEMU_AGENT_PORT "agentport"
#define VMF_QEMU_SERIAL_LOG "serial.log"
#define VMF_QEMU_STDERR_LOG "qemu.log"

#define VMF_QEMU_DEFAULT_BINARY "qemu-system-x86_64"

/* Builds argv (NULL-terminated, each string and the array malloc'ed) for
 * cfg from the listening sockets QEMU inherits: the daemon's monitor, the
 * sandbox's (-1 for none: a template build), the owner's agent port and the
 * daemon's. */
/* QEMU ids of the NIC's hub port (command line) and of the backend a
 * hand-out plugs in (netdev_add). */
#define VMF_QEMU_NIC_HUBPORT "nic0hub"
#define VMF_QEMU_NET_BACKEND "net1"

struct vmf_qemu_fds {
	int qmp, mon, agent, vmf_agent;
};
int vmf_qemu_build_argv(const vmf_vm_config *cfg, const struct vmf_qemu_fds *fds, char ***argv,
			struct vmf_error *err);
void vmf_qemu_free_argv(char **argv);
/* Appends cfg's hot-added vCPUs and DIMMs (hotplugged_vcpus, dimms) to a
 * command line being built; accel is the one the command line uses. */
struct argv_buf;
void vmf_qemu_append_hotplugged(struct argv_buf *a, const vmf_vm_config *cfg, const char *accel);

/* A handle of the QEMU driver for cfg on an open QMP connection (taken:
 * ops->release closes it), with no process behind it: what the driver
 * makes of QEMU's replies, tested without QEMU (tests/fuzz/fuzz_qemu.c).
 * Only the ops that talk QMP may be used on it. */
struct vmf_qmp;
int vmf_qemu_on_qmp(const vmf_vm_config *cfg, struct vmf_qmp *qmp, struct vmf_vmm **out, struct vmf_error *err);

/* The -sandbox value used for every VM. */
#define VMF_QEMU_SANDBOX "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
/* With -runas: QEMU 7.2 drops to the user after installing its seccomp
 * filter, and elevateprivileges=deny kills it then (SIGSYS, measured).
 * Once dropped, QEMU holds no capabilities, so set*uid cannot raise it. */
#define VMF_QEMU_SANDBOX_RUNAS "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"

#endif
