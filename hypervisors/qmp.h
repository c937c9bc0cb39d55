/* QMP transport: socket, greeting, capability negotiation, framing, events.
 * Encoding of individual commands lives in qemu/ (libvirt's split between
 * qemu_monitor.c and qemu_monitor_json.c).
 *
 * One JSON document per line.  Asynchronous events that arrive while a
 * command waits for its reply are queued (bounded) for vmf_qmp_wait_event.
 * A reply larger than VMF_QMP_MAX_LINE, a line that is not a JSON object, or
 * a reply to nothing is an error that names what was received. */
#ifndef VMF_QMP_H
#define VMF_QMP_H

#include <json-c/json.h>
#include <stdbool.h>

#include "error.h"

#define VMF_QMP_MAX_LINE (1u << 20)

struct vmf_qmp;

/* Connects to a QMP unix socket, retrying until timeout_ms while it does not
 * exist yet, reads the greeting and sends qmp_capabilities. */
int vmf_qmp_connect(const char *path, int timeout_ms, struct vmf_qmp **out, struct vmf_error *err);
/* Same handshake over an already connected stream (tests: socketpair). */
int vmf_qmp_open_fd(int fd, int timeout_ms, struct vmf_qmp **out, struct vmf_error *err);

/* Runs one command.  args may be NULL and is not consumed.  On success *ret
 * (if not NULL) gets the "return" value (caller puts it).  A QMP "error"
 * reply becomes -EIO with "QEMU refused CMD: <class>: <desc>".  pass_fd >= 0
 * is sent with the command by SCM_RIGHTS (for getfd). */
int vmf_qmp_command(struct vmf_qmp *q, const char *cmd, json_object *args, int pass_fd,
		    json_object **ret, int timeout_ms, struct vmf_error *err);

/* Waits for an event by name (a queued one first).  *data (may be NULL)
 * gets the event's "data" member. */
int vmf_qmp_wait_event(struct vmf_qmp *q, const char *event, json_object **data,
		       int timeout_ms, struct vmf_error *err);

/* Reads what QEMU has sent (at most max messages), waiting at most
 * timeout_ms for more: its events are queued for vmf_qmp_wait_event (a 0
 * timeout then only looks at the queue).  With 0, for the event loop,
 * which must not wait on QEMU; after a VMM exited, the events it left.
 * Returns how many events were queued; a connection QEMU closed is marked
 * broken, its events kept. */
int vmf_qmp_poll_events(struct vmf_qmp *q, unsigned max, int timeout_ms);
/* The socket, for an event loop's readability watch. */
int vmf_qmp_fd(const struct vmf_qmp *q);
/* False once the connection is broken (QEMU closed it, or sent what
 * cannot be parsed). */
bool vmf_qmp_usable(const struct vmf_qmp *q);

/* Greeting's version, e.g. 7.2.22 -> major 7, minor 2, micro 22. */
void vmf_qmp_version(const struct vmf_qmp *q, int *major, int *minor, int *micro);

void vmf_qmp_close(struct vmf_qmp *q);

#endif
