/* The control socket as a tenant's client reaches it: the input is the
 * byte stream the client sends on one connection, through the daemon's own
 * read path (factory/control.c: read_cb's frame length cap, decoding,
 * version check, dispatch) into every request's handler, on a daemon of
 * tests/fuzz/fuzz_daemon.c: two pools whose templates are never built, one
 * gone VM of the tenant's (FUZZ_VM_ID) with a disk.  GetVM's checks run to
 * the end (sandbox id, sizes, pool choice, network fields, the share and
 * sock paths on a worker, confined to the sandbox root, then "pool
 * exhausted"); Release, Inspect, Attach, Detach, Snapshot, Suspend and
 * Resume run theirs on that VM or an unknown one; Destroy is refused (a
 * tenant).  A request that leaves the daemon in a state the next would
 * trip over shows as a later input's crash, a leak or a hang (libFuzzer's
 * -timeout). */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_daemon.h"

FUZZ_DAEMON_TARGET(false)
