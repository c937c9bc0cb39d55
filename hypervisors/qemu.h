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
#define VMF_QEMU_SERIAL_LOG "serial.log"
#define VMF_QEMU_STDERR_LOG "qemu.log"

#define VMF_QEMU_DEFAULT_BINARY "qemu-system-x86_64"

/* Builds argv (NULL-terminated, each string and the array malloc'ed) for
 * cfg from the listening sockets QEMU inherits: the daemon's monitor, the
 * sandbox's (-1 for none: a template build), the owner's agent port and the
 * daemon's. */
struct vmf_qemu_fds {
	int qmp, mon, agent, vmf_agent;
};
int vmf_qemu_build_argv(const vmf_vm_config *cfg, const struct vmf_qemu_fds *fds, char ***argv,
			struct vmf_error *err);
void vmf_qemu_free_argv(char **argv);
/* Appends to argv (as vmf_qemu_build_argv made it) the vCPUs and DIMMs q
 * says were hot-added, as -device / -object options with the ids and in the
 * order the hot-adds gave them: a QEMU loading a VM's saved state must have
 * the devices the stream carries. */
int vmf_qemu_append_hotplugged(char ***argv, const Vmf__Hv__QemuState *q, struct vmf_error *err);

/* The -sandbox value used for every VM. */
#define VMF_QEMU_SANDBOX "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
/* With -runas: QEMU 7.2 drops to the user after installing its seccomp
 * filter, and elevateprivileges=deny kills it then (SIGSYS, measured).
 * Once dropped, QEMU holds no capabilities, so set*uid cannot raise it. */
#define VMF_QEMU_SANDBOX_RUNAS "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"

#endif
