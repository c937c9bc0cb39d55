/* The config file (/etc/vmfactory/vmfactory.conf, INI, read with libinih):
 * daemon options and pools.  Every problem in a file is collected, each as
 * "PATH:LINE: message", so that `vmfactory check-config` can list them all;
 * command-line flags are applied over the result by the CLI.
 * vmfactory.conf(5) documents the keys. */
#ifndef VMF_CONFIG_H
#define VMF_CONFIG_H

#include <stddef.h>

#include "daemon.h"
#include "error.h"
#include "gateway.h"

#define VMF_DEFAULT_CONFIG "/etc/vmfactory/vmfactory.conf"
#define VMF_CONFIG_MAX_SIZE (1024 * 1024)

struct vmf_config {
	/* Defaults overlaid with the file's [daemon], [hypervisor] and [guest];
	 * opts.pools points at pools[] below. */
	struct vmf_daemon_opts opts;
	struct vmf_pool_spec pools[VMF_MAX_POOLS];
	unsigned n_pools;
	int log_level;               /* [daemon] log_level; -1 when not given */
	/* [gateway]: what the file gives (vmfactory gateway reads it; the
	 * daemon only has it checked). */
	struct vmf_gateway_opts gateway;
	/* Every problem found, "PATH:LINE: message\n" each, in line order;
	 * NULL when there is none. */
	char *errors;
	unsigned n_errors;
	/* internal */
	char *strings[48 + 5 * VMF_MAX_POOLS];   /* values opts, gateway and pools point at: one per string key */
	unsigned n_strings;
};

/* Parses text (len bytes, need not be NUL-terminated) named path in the
 * messages.  Returns 0, or -EINVAL with c->errors listing every problem and
 * err saying how many; c must be freed with vmf_config_free() either way. */
int vmf_config_parse(struct vmf_config *c, const char *path, const char *text, size_t len,
		     struct vmf_error *err);

/* Reads and parses a file.  -ENOENT (and the like) when it cannot be read,
 * with c->errors empty; -EINVAL as vmf_config_parse(). */
int vmf_config_load(struct vmf_config *c, const char *path, struct vmf_error *err);

void vmf_config_free(struct vmf_config *c);

/* The range a [pool] key (vcpus, memory_mib, max_vcpus, size, ...) accepts:
 * one table for the file and for the flags the daemon checks. */
void vmf_config_pool_range(const char *key, unsigned *min, unsigned *max);
/* The range a [gateway] number key accepts (file and flags alike). */
void vmf_config_gateway_range(const char *key, unsigned *min, unsigned *max);
/* The longest value a [daemon] key (socket, run_dir, state_dir, ...) accepts. */
size_t vmf_config_daemon_max_len(const char *key);

#endif
