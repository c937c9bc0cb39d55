/* vmf-agent-cycles: connect / exec / close cycles against handed-out VMs'
 * agent sockets, timed; the reproducer of the unanswered agent connection
 * (docs/hypervisors.md, "A host connection to a virtio-serial agent port").
 *
 * usage: vmf-agent-cycles N SOCKET...
 * Each cycle connects (the client library's ExecReset first), runs `true`,
 * waits for its exit and closes, once per socket in turn.  The library
 * replaces a connection the agent leaves unanswered after 1 s, so a connect
 * of 1 s or more is one such connection (counted "stuck").  Prints each
 * stuck one and a summary: cycles, stuck, failed, p50/p99/max of a cycle. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "error.h"

static long long
now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static int
cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return x < y ? -1 : x > y;
}

/* One cycle on path; returns its duration in ms, or -1 (said why). */
static long long
cycle(const char *path, int *stuck)
{
	struct vmf_error e = {0};
	struct vmf_client_agent *a;
	long long t0 = now_ms();
	if (vmf_client_agent_connect(path, "unix", 0, 30000, NULL, NULL, &a, &e) < 0) {
		printf("%s: connect failed: %s\n", path, e.msg);
		return -1;
	}
	long long t1 = now_ms();
	if (t1 - t0 >= 1000) {
		(*stuck)++;
		printf("%s: connect took %lld ms (an unanswered connection was replaced)\n", path, t1 - t0);
	}
	const char *argv[] = { "true", NULL };
	struct vmf_exec_opts o = { .argv = argv };
	uint64_t id;
	long long r = -1;
	if (vmf_client_exec_start(a, &o, &id, 20000, &e) < 0) {
		printf("%s: exec: %s\n", path, e.msg);
		goto out;
	}
	for (;;) {
		struct vmf_exec_event ev;
		if (vmf_client_agent_next_event(a, &ev, 20000, &e) < 0 || ev.type == VMF_EXEC_EV_NONE) {
			printf("%s: no exit within 20 s%s%s\n", path, e.msg[0] ? ": " : "", e.msg);
			goto out;
		}
		if (ev.type == VMF_EXEC_EV_EXIT)
			break;
	}
	r = now_ms() - t0;
out:
	vmf_client_agent_close(a);
	return r;
}

int
main(int argc, char **argv)
{
	int n = argc >= 3 ? atoi(argv[1]) : 0;
	if (n <= 0) {
		fprintf(stderr, "usage: vmf-agent-cycles N SOCKET...\n");
		return 2;
	}
	int nsock = argc - 2;
	long long *ms = calloc((size_t)n * (size_t)nsock, sizeof(*ms));
	if (!ms)
		return 1;
	int stuck = 0, failed = 0, k = 0;
	for (int i = 0; i < n; i++)
		for (int s = 0; s < nsock; s++) {
			long long d = cycle(argv[2 + s], &stuck);
			if (d < 0)
				failed++;
			else
				ms[k++] = d;
		}
	qsort(ms, (size_t)k, sizeof(*ms), cmp);
	printf("cycles %d stuck %d failed %d p50 %lld ms p99 %lld ms max %lld ms\n", n * nsock, stuck, failed,
	       k ? ms[k / 2] : 0, k ? ms[k * 99 / 100] : 0, k ? ms[k - 1] : 0);
	free(ms);
	return failed ? 1 : 0;
}
