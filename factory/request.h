/* What a request handler (factory/ops/) sees of its request (request.c):
 * its peer, whether that peer is an administrator, the reply or failure
 * it sends, the VM it names once the peer may act on it, and the end of
 * the job that served it.  A handler replies exactly once; the reply lets
 * the connection read its next request, later, from the loop. */
#ifndef VMF_REQUEST_H
#define VMF_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "control.pb-c.h"
#include "hypervisor.pb-c.h"
#include "pool.h"

struct vmf_conn;
struct vmf_daemon;

/* The connection's peer uid (SO_PEERCRED at accept). */
uid_t vmf_request_peer(const struct vmf_conn *c);
/* Root and the daemon's own user: they act on every VM. */
bool vmf_request_admin(const struct vmf_daemon *d, const struct vmf_conn *c);
/* Whether the client is still there (a reply to nobody is no hand-out). */
bool vmf_request_connected(const struct vmf_conn *c);
void vmf_request_reply(struct vmf_conn *c, const Vmf__Control__Reply *reply);
/* An error reply: code an errno (EIO when not positive), msg a sentence. */
void vmf_request_fail(struct vmf_conn *c, int code, const char *msg);

/* A request's job struct of size bytes, zeroed; NULL when out of memory,
 * the failure replied on c. */
void *vmf_request_job_new(struct vmf_conn *c, size_t size);

/* The VM id names, when c's peer may act on it and no job holds it; else
 * NULL, with the error already replied on c. */
struct vmf_vm *vmf_request_vm(struct vmf_daemon *d, struct vmf_conn *c, const char *id);

/* The end of a job that held vm (busy): the VM is the loop's again; its
 * process, if it exited meanwhile (exit, or marked dead by its watch),
 * makes it gone now, before a reply shows its state. */
void vmf_request_vm_back(struct vmf_daemon *d, struct vmf_vm *vm, Vmf__Hv__VmExit *exit);
/* Every job's done callback ends with this: a destroy or a shutdown in
 * progress may be complete now, or the pools want refilling. */
void vmf_daemon_settle(struct vmf_daemon *d);

#endif
