#ifndef VMF_METRICS_H
#define VMF_METRICS_H

#include "error.h"

struct vmf_daemon;

/* metrics.c: Prometheus text format over libevent's HTTP server. */
int vmf_metrics_listen(struct vmf_daemon *d, const char *addr_port, struct vmf_error *err);
void vmf_metrics_close(struct vmf_daemon *d);

#endif
