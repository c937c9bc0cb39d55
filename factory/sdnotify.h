/* systemd's readiness protocol (sd_notify(3)): datagrams of KEY=VALUE lines
 * to the unix socket named by $NOTIFY_SOCKET.  Written here rather than
 * linked from libsystemd: a few lines, no dependency, the same behaviour on
 * hosts without systemd (where nothing is sent). */
#ifndef VMF_SDNOTIFY_H
#define VMF_SDNOTIFY_H

#include <stdbool.h>

/* Reads $NOTIFY_SOCKET and removes it from the environment, so that QEMU
 * and other children do not inherit it.  Call before starting threads.
 * Returns true when there is a socket to notify. */
bool vmf_sd_notify_init(void);

/* Sends one datagram (e.g. "READY=1\nSTATUS=..."); a no-op without a
 * socket.  Safe from any thread after init; failures are logged at debug
 * level only: a service manager that went away must not stop the daemon. */
void vmf_sd_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
