/* The factory daemon (daemon.c): one libevent loop owning pools and the
 * control socket; slow hypervisor work runs on worker threads and reports
 * back to the loop.  Its options are config.h's. */
#ifndef VMF_DAEMON_H
#define VMF_DAEMON_H

#include "config.h"
#include "error.h"

struct vmf_daemon;

/* The daemon's state, its hooks set, nothing started (vmf_daemon_run does
 * the rest; the fuzz targets of the control socket and the metrics
 * listener start only what they need).  vmf_daemon_free() stops the
 * workers (their jobs complete), closes the listeners, the loop and the
 * catalog, and frees the VMs and pools; not d itself. */
struct vmf_daemon *vmf_daemon_new(const struct vmf_daemon_opts *opts, struct vmf_error *err);
void vmf_daemon_free(struct vmf_daemon *d);
/* From any thread: logs a progress line; the loop writes it to `vmfactory
 * init`'s pipe and to systemd (STATUS=). */
void vmf_daemon_progress(struct vmf_daemon *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* On the loop: writes line to `vmfactory init`'s pipe, if it is open. */
void vmf_daemon_notify(struct vmf_daemon *d, const char *line);
/* Ready once the socket answers and every pool's template is built: to
 * `vmfactory init` on ready_fd, and to systemd (READY=1). */
void vmf_daemon_check_readiness(struct vmf_daemon *d);



/* Runs the daemon in the calling process until Destroy or SIGTERM/SIGINT.
 * Fails (without side effects) when another daemon answers on the socket:
 * the message names its pid. */
int vmf_daemon_run(const struct vmf_daemon_opts *o, struct vmf_error *err);

#endif
