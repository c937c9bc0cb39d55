/* The control socket (control.c): listening, accepting and checking peers,
 * framing and the checks before dispatch, which is a lookup in the request
 * table (ops.h); it names no request.  A handler reaches its connection
 * through request.h, never through this header. */
#ifndef VMF_CONTROL_H
#define VMF_CONTROL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "control.pb-c.h"
#include "error.h"
#include "frame.h"

struct vmf_conn;
struct vmf_daemon;

/* Soft open file limit up to the hard one (at start, before VMs are adopted). */
void vmf_control_raise_fd_limit(void);
int vmf_control_listen(struct vmf_daemon *d, struct vmf_error *err);
void vmf_control_close(struct vmf_daemon *d);
/* A connection as request.c sees it (handlers use request.h).  Sends a
 * reply on c (if still connected) and, from outside the read callback,
 * schedules the read of its next request as a deferred event (never
 * reading it on the caller's stack); drops the connection's reference
 * taken by a pending request. */
void vmf_control_reply(struct vmf_conn *c, const Vmf__Control__Reply *reply);
void vmf_control_reply_error(struct vmf_conn *c, int code, const char *msg);
bool vmf_control_connected(const struct vmf_conn *c);
/* The connection's peer uid (SO_PEERCRED at accept). */
uid_t vmf_control_peer_uid(const struct vmf_conn *c);
/* Another daemon answering on path: its pid, else 0. */
pid_t vmf_control_probe_peer(const char *path);
/* Request checks, in the order read_cb applies them: the header's length
 * against VMF_CONTROL_MAX_FRAME (-EMSGSIZE, before anything is allocated),
 * unpacking (-EBADMSG; free *out with vmf__control__request__free_unpacked),
 * the protocol version (-EPROTO). */
int vmf_control_frame_len(const uint8_t h[VMF_FRAME_HDR], uint32_t *n, struct vmf_error *err);
int vmf_control_decode(const uint8_t *buf, size_t n, Vmf__Control__Request **out, struct vmf_error *err);
int vmf_control_check_version(const Vmf__Control__Request *req, struct vmf_error *err);

#endif
