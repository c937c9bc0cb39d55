/* libvmfactory-client: talk to a vmfactory daemon over its unix socket.
 *
 * Wire format (see docs/protocol.md): each message is a 4-byte big-endian
 * length followed by a protobuf vmf.control.Request or Reply (at most
 * 1 MiB).  Every request carries VMF_CONTROL_PROTOCOL_VERSION.
 *
 * Errors follow the project convention: functions return a negative errno
 * and fill *err (errno + a sentence).  A daemon-side failure carries the
 * daemon's errno and message. */
#ifndef VMF_CLIENT_H
#define VMF_CLIENT_H

#include <stdint.h>

#include "control.pb-c.h"
#include "error.h"

/* Bump when a message changes meaning; new fields get new tags instead. */
#define VMF_CONTROL_PROTOCOL_VERSION 1
#define VMF_CLIENT_MAX_FRAME (1u << 20)

struct vmf_client;

int vmf_client_connect(const char *socket_path, struct vmf_client **out, struct vmf_error *err);
void vmf_client_close(struct vmf_client *c);

/* Sends req (protocol_version is filled in) and waits up to timeout_ms for
 * the reply.  A reply carrying an error becomes a failure.  Free *reply with
 * vmf__control__reply__free_unpacked. */
int vmf_client_call(struct vmf_client *c, Vmf__Control__Request *req, Vmf__Control__Reply **reply,
		    int timeout_ms, struct vmf_error *err);

/* Typed helpers; *reply as above, its body holds the result. */
int vmf_client_get_vm(struct vmf_client *c, const Vmf__Control__GetVMRequest *req, Vmf__Control__Reply **reply,
		      int timeout_ms, struct vmf_error *err);
int vmf_client_release_vm(struct vmf_client *c, const char *vm_id, int timeout_ms, struct vmf_error *err);
int vmf_client_inspect(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
		       struct vmf_error *err);
int vmf_client_status(struct vmf_client *c, Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err);
int vmf_client_destroy(struct vmf_client *c, int all, Vmf__Control__Reply **reply, int timeout_ms,
		       struct vmf_error *err);

#endif
