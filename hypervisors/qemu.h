/* QEMU driver internals exposed for tests: the command line is data built
 * from a VmConfig, so it can be checked without starting QEMU. */
#ifndef VMF_QEMU_H
#define VMF_QEMU_H

#include "driver.h"

/* Paths inside a VM's run dir. */
#define VMF_QEMU_QMP_SOCK "qmp.sock"
#define VMF_QEMU_AGENT_SOCK "agent.sock"
/* The daemon's own agent port ("vmf"): no one else gets access to it, so
 * the owner holding "agent" never keeps the daemon out, nor the reverse. */
#define VMF_QEMU_DAEMON_AGENT_SOCK "vmf-agent.sock"
#define VMF_QEMU_SERIAL_LOG "serial.log"
#define VMF_QEMU_STDERR_LOG "qemu.log"

#define VMF_QEMU_DEFAULT_BINARY "qemu-system-x86_64"

/* Builds argv (NULL-terminated, each string and the array malloc'ed) for
 * cfg.  qmp_fd, agent_fd (the owner's agent port) and vmf_agent_fd (the
 * daemon's) are listening sockets QEMU inherits. */
int vmf_qemu_build_argv(const vmf_vm_config *cfg, int qmp_fd, int agent_fd, int vmf_agent_fd, char ***argv,
			struct vmf_error *err);
void vmf_qemu_free_argv(char **argv);

/* The -sandbox value used for every VM. */
#define VMF_QEMU_SANDBOX "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
/* With -runas: QEMU 7.2 drops to the user after installing its seccomp
 * filter, and elevateprivileges=deny kills it then (SIGSYS, measured).
 * Once dropped, QEMU holds no capabilities, so set*uid cannot raise it. */
#define VMF_QEMU_SANDBOX_RUNAS "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"

#endif
