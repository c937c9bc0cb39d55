/* The metrics endpoint (factory/metrics.c, --metrics-listen): the input is
 * what an HTTP client sends on one TCP connection to 127.0.0.1, served by
 * libevent's HTTP server and the daemon's handlers (GET /metrics renders
 * the pools' and VMs' counters and histograms; any other path is 404), on
 * the daemon of tests/fuzz/fuzz_daemon.c. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_daemon.h"

FUZZ_DAEMON_TARGET(true)
