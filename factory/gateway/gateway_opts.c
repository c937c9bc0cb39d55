/* The gateway's options filled in: defaults for what the flags and the
 * config left unset. */
#include <limits.h>
#include <stddef.h>
#include <stdio.h>

#include "gateway_opts.h"

/* Defaults of the numbers; their ranges are in the config's key table
 * (factory/config.c), which checks the file and the flags alike. */
static const struct {
	size_t off;
	unsigned def;
} defaults[] = {
	{ offsetof(struct vmf_gateway_opts, max_connections), 256 },
	{ offsetof(struct vmf_gateway_opts, max_sandboxes), 64 },
	{ offsetof(struct vmf_gateway_opts, max_sandboxes_per_key), 16 },
	{ offsetof(struct vmf_gateway_opts, workers), 8 },
	{ offsetof(struct vmf_gateway_opts, idle_timeout_s), 60 },
	{ offsetof(struct vmf_gateway_opts, default_timeout_s), 300 },
	{ offsetof(struct vmf_gateway_opts, max_timeout_s), 86400 },
	{ offsetof(struct vmf_gateway_opts, max_body), 1u << 20 },
};

void
vmf_gateway_opts_fill(struct vmf_gateway_opts *o, const char *run_dir)
{
	static char dir[PATH_MAX], state[PATH_MAX + 32];
	if (!o->listen)
		o->listen = VMF_GATEWAY_DEFAULT_LISTEN;
	if (!o->sandbox_dir) {
		snprintf(dir, sizeof(dir), "%s/sandboxes/e2b-gateway", run_dir);
		o->sandbox_dir = dir;
	}
	if (!o->state_file) {
		snprintf(state, sizeof(state), "%s/gateway-state.json", o->sandbox_dir);
		o->state_file = state;
	}
	for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
		unsigned *v = (unsigned *)((char *)o + defaults[i].off);
		if (!*v)
			*v = defaults[i].def;
	}
}

