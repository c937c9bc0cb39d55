/* Network for handed-out VMs (factory/net.c): parsing and checking the
 * request's, preparing and undoing the sandbox's namespace on a worker. */
#ifndef VMF_NET_H
#define VMF_NET_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent.h"
#include "error.h"
#include "pool.h"

/* A GetVM's net field: "" (the pool's default), "none", or
 * "user[,outbound][,hostfwd=tcp:[ADDR]:PORT-:GUESTPORT...]" (ADDR defaults
 * to 127.0.0.1; forwards normalised to "tcp:ADDR:PORT-:GUESTPORT").
 * Without outbound a user-mode guest opens no connection out. */
struct vmf_net_request {
	bool none, user, outbound;
	char hostfwd[VMF_MAX_HOSTFWD][80];
	unsigned n_hostfwd;
};
int vmf_net_parse(const char *spec, struct vmf_net_request *out, struct vmf_error *err);
/* On a worker: each forward's host port can be bound now (EADDRINUSE names
 * it); for a tenant, no port below 1024 (QEMU, root or runas, would bind
 * what the tenant could not). */
int vmf_net_check_fwd_ports(const struct vmf_net_request *r, bool tenant, struct vmf_error *err);
/* What a tenant (a peer that is neither root nor the daemon's user) may
 * ask of user-mode networking: outbound only when outbound_ok, forwards
 * only on the host addresses in addrs (IPv4, comma-separated; "0.0.0.0"
 * allows any), and no more than max forwards with the held ones its other
 * VMs have.  EPERM or E2BIG with a sentence naming the setting. */
int vmf_net_check_tenant(const struct vmf_net_request *r, bool outbound_ok, const char *addrs, unsigned held,
			 unsigned max, struct vmf_error *err);
/* Whether s is a list of IPv4 addresses separated by commas. */
bool vmf_net_valid_addrs(const char *s);

/* On a worker: opens the network namespace at path (a nsfs file; nothing
 * else is opened for real) and returns its fd; dev/ino identify it.  For a
 * peer that is not admin the namespace's owning user namespace must be
 * owned by peer (docs/security.md). */
int vmf_netns_open(const char *path, uid_t peer, bool admin, uint64_t *dev, uint64_t *ino,
		   struct vmf_error *err);
/* On a worker: ENODEV unless the namespace nsfd has the interface link,
 * EBUSY when it is mirrored to a VM already (checked before a pooled VM is
 * taken for the hand-out). */
int vmf_netns_check_link(int nsfd, const char *path, const char *link, struct vmf_error *err);
/* On a worker: in the namespace nsfd, reads interface link's MAC, IPv4
 * addresses and default gateway (and DNS from /etc/netns/NAME/resolv.conf)
 * into gn, creates the tap (not persistent: it goes with QEMU) and mirrors
 * the two with tc.  *tapfd for QEMU; on failure what was made is left for
 * vmf_netns_undo (the caller's record names it), except on EBUSY: the
 * interface is mirrored to another VM, whose filter must stay. */
int vmf_netns_setup(int nsfd, const char *path, const char *link, const char *tap, struct vmf_guest_net *gn,
		    int *tapfd, struct vmf_error *err);
/* On a worker: removes the mirror (and the ingress qdisc, once no other
 * filter is on it) and the tap, in the namespace recorded as path, dev,
 * ino; a path that names another namespace or none is left alone. */
int vmf_netns_undo(const char *path, uint64_t dev, uint64_t ino, const char *link, const char *tap,
		   struct vmf_error *err);

#endif
