/* vmfactory gateway: the E2B sandbox API (factory/gateway).  Options come
 * from [gateway] of the config file, then the flags; the daemon's socket
 * and run dir from the common options, else [daemon].  The gateway runs
 * in the foreground and says where it listens on stdout. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gateway.h"
#include "log.h"

static void
ready(const char *addr)
{
	printf("vmfactory gateway: listening on http://%s (E2B_API_URL and E2B_SANDBOX_URL)\n", addr);
	fflush(stdout);
}

int
cmd_gateway(const struct cmd *cmd, struct args *a)
{
	struct vmf_config cfg;
	bool loaded = false;
	int r = load_config(a, &cfg, &loaded);
	if (r)
		return r;
	struct vmf_gateway_opts o = { 0 };
	const char *socket = a->socket, *run_dir = a->run_dir, *e;
	if (loaded) {
		o = cfg.gateway;
		/* The daemon's own dirs, unless a flag or variable names them. */
		if (!opt(a, "socket") && !getenv("VMFACTORY_SOCKET"))
			socket = cfg.opts.socket_path;
		if (!opt(a, "run-dir") && !getenv("VMFACTORY_RUN_DIR"))
			run_dir = cfg.opts.run_dir;
		if (cfg.log_level >= 0 && !opt(a, "log-level") && !getenv("VMFACTORY_LOG_LEVEL"))
			vmf_log_set_level((enum vmf_log_level)cfg.log_level);
	}
	o.socket = socket;
	if ((e = opt(a, "api-keys")))
		o.api_keys = e;
	if ((e = opt(a, "listen")))
		o.listen = e;
	if ((e = opt(a, "sandbox-dir")))
		o.sandbox_dir = e;
	if ((e = opt(a, "state-file")))
		o.state_file = e;
	const char *paths[] = { o.api_keys, o.sandbox_dir, o.state_file };
	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
		if (paths[i] && paths[i][0] != '/') {
			r = usage_error(cmd, "%s is not an absolute path", paths[i]);
			goto out;
		}
	if (!o.api_keys) {
		r = usage_error(cmd, "no API keys: give --api-keys FILE (lines KEY TEAM) or [gateway] api_keys");
		goto out;
	}
	vmf_gateway_opts_fill(&o, run_dir);
	struct vmf_error err = { 0 };
	if (vmf_gateway_run(&o, ready, &err) < 0)
		r = fail(&err);
out:
	if (loaded)
		vmf_config_free(&cfg);
	return r;
}
