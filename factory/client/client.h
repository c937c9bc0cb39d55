/* libvmfactory-client: talk to a vmfactory daemon over its unix socket.
 *
 * Wire format (see docs/protocol.md): each message is a 4-byte big-endian
 * length followed by a protobuf vmf.control.Request or Reply (at most
 * 1 MiB, checked before anything is allocated).  Every request carries
 * VMF_CONTROL_PROTOCOL_VERSION.  A connection may carry several requests in
 * sequence; one request is in flight at a time.
 *
 * Errors follow the project convention: functions return a negative errno
 * and fill *err (errno + a sentence; err may be NULL).  A daemon-side
 * failure carries the daemon's errno and message unchanged.
 *
 * Timeouts are in milliseconds for the whole call (send + reply); a
 * negative timeout waits forever.  The library never raises SIGPIPE.
 * A struct vmf_client is not thread-safe: use one per thread. */
#ifndef VMF_CLIENT_H
#define VMF_CLIENT_H

#include <stdint.h>

#include "control.pb-c.h"
#include "error.h"

/* Bump when a message changes meaning (a field reinterpreted, a request
 * behaving differently) or when a daemon ignoring an added field would do
 * the wrong thing; other added fields take new tag numbers and need no bump.
 * The daemon speaks every version from _MIN up and answers any other with
 * EPROTO.  Version 2 added GetVMRequest.pool.  The library sends the lowest
 * version a request needs (vmf_client_request_version), so that a request
 * an older daemon serves correctly still reaches it, and one it would
 * misread (a pool it would ignore) is refused by it instead. */
#define VMF_CONTROL_PROTOCOL_VERSION 2
#define VMF_CONTROL_PROTOCOL_VERSION_MIN 1
#define VMF_CLIENT_MAX_FRAME (1u << 20)

struct vmf_client;

/* Connects to the daemon's socket.  No daemon there: -ENOENT (no socket
 * file) or -ECONNREFUSED (stale socket), the message naming the path. */
int vmf_client_connect(const char *socket_path, struct vmf_client **out, struct vmf_error *err);
void vmf_client_close(struct vmf_client *c);

/* Sends req (protocol_version is filled in) and waits for the reply.  A
 * reply whose error_code is not 0 becomes a failure carrying that errno and
 * the daemon's message.  On success free *reply with
 * vmf__control__reply__free_unpacked. */
int vmf_client_call(struct vmf_client *c, Vmf__Control__Request *req, Vmf__Control__Reply **reply,
		    int timeout_ms, struct vmf_error *err);

/* Typed helpers.  On success (*reply)->body_case is the one named (vm,
 * inspect, status, destroy) and its pointer is set; a reply without it
 * is -EBADMSG.  timeout_ms for get_vm should exceed req->timeout_ms (the
 * daemon's own budget, 0 = 60 s) so the daemon's error arrives first. */
/* The lowest protocol version that carries req's meaning. */
uint32_t vmf_client_request_version(const Vmf__Control__Request *req);
int vmf_client_get_vm(struct vmf_client *c, const Vmf__Control__GetVMRequest *req, Vmf__Control__Reply **reply,
		      int timeout_ms, struct vmf_error *err);
int vmf_client_release_vm(struct vmf_client *c, const char *vm_id, int timeout_ms, struct vmf_error *err);
int vmf_client_inspect(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
		       struct vmf_error *err);
int vmf_client_status(struct vmf_client *c, Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err);
int vmf_client_destroy(struct vmf_client *c, int all, Vmf__Control__Reply **reply, int timeout_ms,
		       struct vmf_error *err);

#endif
