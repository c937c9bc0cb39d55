/* GetVM's checks of a request against the driver, pure, for its unit tests
 * (the request itself is the table's: ops/getvm.c). */
#ifndef VMF_OPS_GETVM_H
#define VMF_OPS_GETVM_H

#include "error.h"

/* Refuses growing a clone beyond its template (tpl_vcpus, tpl_mib) when the
 * driver lacks cpu-hotplug / memory-hotplug, naming driver and capability. */
int vmf_getvm_check_caps(const char *driver, unsigned caps, unsigned tpl_vcpus, unsigned tpl_mib,
			 unsigned vcpus, unsigned mib, struct vmf_error *err);
/* GetVM's share_dir against the driver: with the share-device capability
 * share_dir and sock_dir are both required and differ (returns 1: the share
 * is mounted and linked); without it share_dir must be empty (ENOTSUP
 * otherwise) and only sock_dir is required (returns 0: nothing mounted, no
 * share link, the reply's share_dir empty). */
int vmf_getvm_check_share(const char *driver, unsigned caps, const char *share_dir, const char *sock_dir,
			  struct vmf_error *err);

#endif
