/* The gateway's options: what `vmfactory gateway` reads from its flags and
 * the config's [gateway] section (factory/config.c checks both), below
 * the gateway's own files, which all see them (gw.h). */
#ifndef VMF_GATEWAY_OPTS_H
#define VMF_GATEWAY_OPTS_H

struct vmf_gateway_opts {
	const char *listen;             /* ADDR:PORT; port 0 picks a free one */
	const char *api_keys;           /* the keys file */
	const char *socket;             /* the daemon's control socket */
	const char *sandbox_dir;        /* the gateway's sandboxes' share and sock dirs */
	const char *state_file;
	unsigned max_connections;
	unsigned max_sandboxes, max_sandboxes_per_key;
	unsigned workers;
	unsigned idle_timeout_s;        /* an HTTP connection without progress */
	unsigned default_timeout_s, max_timeout_s;   /* sandbox lifetimes */
	unsigned max_body;              /* request body bytes */
};

#define VMF_GATEWAY_DEFAULT_LISTEN "127.0.0.1:3000"

/* Fills what o leaves unset; run_dir names the default sandbox dir. */
void vmf_gateway_opts_fill(struct vmf_gateway_opts *o, const char *run_dir);

#endif
