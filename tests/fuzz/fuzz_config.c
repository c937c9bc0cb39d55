/* The config file parser (factory/config.c): the input is the file's bytes.
 * Checks the parser's promises besides memory safety: problems come as
 * "fuzz.conf:LINE: message" lines in line order, and an accepted file
 * yields pools the daemon's own validation accepts. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vmf_config c;
	struct vmf_error e = {0};
	int r = vmf_config_parse(&c, "fuzz.conf", (const char *)data, size, &e);
	if (r == 0) {
		if (c.errors || c.n_pools > VMF_MAX_POOLS || c.opts.pools != c.pools)
			abort();
		for (unsigned i = 0; i < c.n_pools; i++) {
			const struct vmf_pool_spec *p = &c.pools[i];
			if (!p->name[0] || p->vcpus == 0 || p->memory_mib < 64 || p->max_vcpus < p->vcpus ||
			    p->max_memory_mib < p->memory_mib || p->size > 256 || p->max_vcpus > 255)
				abort();
		}
	} else if (r == -EINVAL) {
		if (!c.errors || !c.n_errors)
			abort();
		long prev = 0;
		unsigned lines = 0;
		for (const char *s = c.errors; *s; lines++) {
			if (strncmp(s, "fuzz.conf:", 10) != 0)
				abort();
			long line = strtol(s + 10, NULL, 10);
			if (line < prev)
				abort();
			prev = line;
			const char *nl = strchr(s, '\n');
			if (!nl)
				abort();
			s = nl + 1;
		}
		if (lines != c.n_errors)
			abort();
	} else if (r != -ENOMEM) {
		abort();
	}
	vmf_config_free(&c);
	return 0;
}
