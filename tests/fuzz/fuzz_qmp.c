/* QMP transport (hypervisors/qmp.c) against arbitrary bytes from "QEMU":
 * the input is everything the peer sends, then EOF.  Drives the handshake
 * (greeting, qmp_capabilities), one command, an event wait and a command
 * after the stream ended, so that line framing, JSON parsing, reply/event
 * sorting and the broken-connection state are all reached. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_peer.h"
#include "log.h"
#include "qmp.h"

#define TIMEOUT_MS 2000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	/* Every malformed input logs a warning; at millions of runs that is
	 * only noise and time. */
	vmf_log_set_level(VMF_LOG_OFF);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_peer p = { .data = data, .len = size };
	int fd;
	if (fuzz_peer_start(&p, &fd) < 0)
		abort();
	struct vmf_qmp *q = NULL;
	struct vmf_error err;
	/* Commands get ids 1, 2, 3... on a fresh connection, the same as in
	 * the recorded tests/data/qmp conversations, which are thus valid seeds. */
	if (vmf_qmp_open_fd(fd, TIMEOUT_MS, &q, &err) == 0) {
		int major, minor, micro;
		vmf_qmp_version(q, &major, &minor, &micro);
		json_object *ret = NULL;
		if (vmf_qmp_command(q, "query-status", NULL, -1, &ret, TIMEOUT_MS, &err) == 0)
			json_object_put(ret);
		json_object *ev = NULL;
		if (vmf_qmp_wait_event(q, "SHUTDOWN", &ev, TIMEOUT_MS, &err) == 0)
			json_object_put(ev);
		json_object *args = json_object_new_object();
		json_object_object_add(args, "id", json_object_new_string("cpu1"));
		vmf_qmp_command(q, "device_del", args, -1, NULL, TIMEOUT_MS, &err);
		json_object_put(args);
		vmf_qmp_close(q);
	}
	/* vmf_qmp_open_fd owns fd and has closed it on failure too. */
	fuzz_peer_join(&p);
	return 0;
}
