/* A daemon for the fuzz targets of its listeners (the control socket, the
 * metrics endpoint): the daemon's own state (vmf_daemon_new), catalog,
 * workers, event loop and listeners, in a scratch directory; no hypervisor
 * process and no pool.  One VM stands in its list, gone (its process
 * died), with a disk recorded, so that a request naming it reaches past
 * the lookup into its handler's checks.  The connection is a real socket:
 * the bytes go through the daemon's read path as a client's would. */
#ifndef VMF_FUZZ_DAEMON_H
#define VMF_FUZZ_DAEMON_H

#include <stddef.h>
#include <stdint.h>

#include "control.h"
#include "daemon.h"
#include "factory.h"
#include "metrics.h"

/* The VM the daemon knows (the tenant's, gone): requests may name it. */
#define FUZZ_VM_ID "6d0c1a52-93b4-4e0e-9a2f-0b9e6f6b7a10"
/* The daemon's dirs; its sandbox root is FUZZ_DAEMON_DIR/root, in which
 * the tenant owns t/ (where the seeds put their share and sock dirs). */
#define FUZZ_DAEMON_DIR "/tmp/vmf-fuzz-daemon"
/* The client's credentials: a tenant (the daemon's group is its gid). */
#define TENANT_UID 64941
#define TENANT_GID 64941

/* Once per process: the daemon, its control socket listening (and the
 * metrics endpoint on 127.0.0.1 when metrics). */
struct vmf_daemon *fuzz_daemon_start(bool metrics);
/* Connects to the control socket (or the metrics port), sends data, shuts
 * down the sending side, and runs the daemon's loop until it has closed
 * the connection and no work is in flight; what it sent is read and
 * dropped.  Then puts the daemon back as it was (the VM, a destroy undone). */
void fuzz_daemon_exchange(struct vmf_daemon *d, bool metrics, const uint8_t *data, size_t len);

/* A target's libFuzzer entry points: the daemon started once, each input
 * one exchange on the control socket (metrics false) or the metrics port. */
#define FUZZ_DAEMON_TARGET(metrics)                                          \
	int LLVMFuzzerInitialize(int *argc, char ***argv);                   \
	int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);       \
	static struct vmf_daemon *fuzz_d;                                    \
	int LLVMFuzzerInitialize(int *argc, char ***argv)                    \
	{                                                                    \
		(void)argc;                                                  \
		(void)argv;                                                  \
		fuzz_d = fuzz_daemon_start(metrics);                         \
		return 0;                                                    \
	}                                                                    \
	int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)        \
	{                                                                    \
		fuzz_daemon_exchange(fuzz_d, metrics, data, size);           \
		return 0;                                                    \
	}

#endif
