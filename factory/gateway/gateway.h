/* vmfactory gateway: the E2B sandbox API (control plane and envd) served
 * over HTTP/1.1 by an unprivileged process that is a client of the daemon
 * like any runtime (the public client library, nothing of the daemon's
 * insides).  docs/e2b.md says what is served; docs/security.md who is
 * trusted.
 *
 * One owner: the event loop (libevent; libmicrohttpd runs inside it) owns
 * every object below.  Anything that can block (a daemon request, the
 * guest agent's answers, the state file) runs as a job on a worker thread
 * (common/jobs.c) that gets what it needs by value and hands its result
 * back through its done callback, on the loop.  Jobs on one sandbox run
 * one at a time, in order (libvirt's per-domain jobs), and one key never
 * holds more than half of the workers.
 *
 * Files, one role each:
 *   gateway.c    start-up, the loop, signals, shutdown; the job scheduler
 *   http.c       libmicrohttpd in the loop: requests, bounded bodies,
 *                replies, deferred replies, streamed replies
 *   keys.c       the API keys file; constant-time lookup
 *   sandbox.c    the sandbox table, ids and tokens, the state file, and
 *                reconciling it with the daemon at start
 *   lease.c      sandbox timeouts: the one place that expires sandboxes
 *   vm.c         jobs that talk to the daemon (hand-out, release, suspend,
 *                resume)
 *   api.c        the control plane (/sandboxes...), a route table
 *   envd.c       the in-sandbox API (envd): routing by E2b-Sandbox-Id,
 *                plain HTTP routes, the Connect protocol and its method table
 *   guest.c      a sandbox's guest agent connection: one per sandbox,
 *                shared by its processes; jobs for its blocking calls
 *   process.c    process.Process methods on the agent's exec
 *   files.c      filesystem.Filesystem methods and GET/POST /files on the
 *                agent's file messages */
#ifndef VMF_GATEWAY_H
#define VMF_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* What `vmfactory gateway` runs with: [gateway] of the config file, then
 * flags (factory/cli/gateway.c).  0 / NULL: not given, the default. */
#include "gateway_opts.h"


/* Runs the gateway until SIGTERM or SIGINT.  ready, when not NULL, is
 * called once it listens, with the address it listens on. */
int vmf_gateway_run(const struct vmf_gateway_opts *o, void (*ready)(const char *addr), struct vmf_error *err);

#endif
