/* A GetVM's network option (--net, the request's net field) as the daemon
 * parses it (factory/net.c, vmf_net_parse): the input is the string.  Checks
 * what the parser promises besides memory safety: an accepted option gives
 * at most VMF_MAX_HOSTFWD forwards, each normalised to
 * tcp:ADDR:PORT-:GUESTPORT with ports 1 to 65535, and the normalised
 * forwards parse again to themselves; a refusal is EINVAL or E2BIG with a
 * sentence. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The field arrives as a protobuf string: any bytes but NUL. */
	char *spec = malloc(size + 1);
	if (!spec)
		return 0;
	memcpy(spec, data, size);
	spec[size] = '\0';
	struct vmf_net_request r;
	struct vmf_error e = {0};
	int rc = vmf_net_parse(spec, &r, &e);
	if (rc < 0) {
		if ((rc != -EINVAL && rc != -E2BIG) || !e.msg[0])
			abort();
		free(spec);
		return 0;
	}
	if (rc != 0 || r.n_hostfwd > VMF_MAX_HOSTFWD || (r.none && (r.user || r.n_hostfwd)))
		abort();
	if (!r.user && r.n_hostfwd)
		abort();
	/* The normalised forms, joined, are an option of their own that
	 * parses to the same forwards. */
	char again[VMF_MAX_HOSTFWD * 90 + 8] = "user";
	for (unsigned i = 0; i < r.n_hostfwd; i++) {
		char addr[64];
		unsigned hp, gp;
		int n = 0;
		if (sscanf(r.hostfwd[i], "tcp:%63[^:]:%u-:%u%n", addr, &hp, &gp, &n) != 3 || r.hostfwd[i][n] ||
		    hp == 0 || hp > 65535 || gp == 0 || gp > 65535)
			abort();
		snprintf(again + strlen(again), sizeof(again) - strlen(again), ",hostfwd=%s", r.hostfwd[i]);
	}
	if (r.user) {
		struct vmf_net_request r2;
		if (vmf_net_parse(again, &r2, &e) != 0 || r2.n_hostfwd != r.n_hostfwd)
			abort();
		for (unsigned i = 0; i < r.n_hostfwd; i++)
			if (strcmp(r.hostfwd[i], r2.hostfwd[i]))
				abort();
	}
	free(spec);
	return 0;
}
