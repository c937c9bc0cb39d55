/* CPUs and memory the host hot-added, onlined: the kernel announces each
 * with a uevent, so the wait is on uevents, not on a timer. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

/* "0-1,3" -> 3 */
static unsigned
count_cpu_list(const char *s)
{
	unsigned n = 0;
	while (*s) {
		char *end;
		unsigned long a = strtoul(s, &end, 10), b = a;
		if (end == s)
			break;
		if (*end == '-')
			b = strtoul(end + 1, &end, 10);
		if (b >= a)
			n += (unsigned)(b - a + 1);
		s = *end == ',' ? end + 1 : end;
	}
	return n;
}

unsigned
online_cpu_count(void)
{
	char buf[512];
	return read_small("/sys/devices/system/cpu/online", buf, sizeof(buf)) == 0 ? count_cpu_list(buf) : 0;
}

uint64_t
mem_total_kib(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	unsigned long long kib = 0;
	char line[128];
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemTotal: %llu kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return kib;
}

/* Onlines every offline CPU and memory block once; counts what is online. */
static void
online_pass(uint32_t *cpus_onlined, uint32_t *blocks_onlined, uint64_t *online_mib, uint64_t *block_mib)
{
	char path[300], state[32];
	DIR *d = opendir("/sys/devices/system/cpu");
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, "cpu", 3) || !isdigit((unsigned char)de->d_name[3]))
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/cpu/%s/online", de->d_name);
		if (read_small(path, state, sizeof(state)) == 0 && strcmp(state, "0") == 0) {
			if (write_small(path, "1") == 0)
				(*cpus_onlined)++;
			else
				logmsg("cannot online %s: %s", de->d_name, strerror(errno));
		}
	}
	if (d)
		closedir(d);
	uint64_t block = 128ull << 20;
	if (read_small("/sys/devices/system/memory/block_size_bytes", state, sizeof(state)) == 0)
		block = strtoull(state, NULL, 16);
	*block_mib = block >> 20;
	uint64_t online_blocks = 0;
	d = opendir("/sys/devices/system/memory");
	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, "memory", 6) || !isdigit((unsigned char)de->d_name[6]))
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/memory/%s/state", de->d_name);
		if (read_small(path, state, sizeof(state)) < 0)
			continue;
		if (strcmp(state, "offline") == 0) {
			if (write_small(path, "online") == 0) {
				(*blocks_onlined)++;
				strcpy(state, "online");
			} else {
				logmsg("cannot online %s: %s", de->d_name, strerror(errno));
			}
		}
		if (strcmp(state, "online") == 0)
			online_blocks++;
	}
	if (d)
		closedir(d);
	*online_mib = online_blocks * *block_mib;
}

/* Onlines what the host hot-added until the guest has what it asked for
 * or the request's deadline (at most a minute) passes. */
void
online_cpu_mem(struct agent_call *call)
{
	const Vmf__Agent__OnlineCpuMem *req = call->req->online_cpu_mem;
	if (agent_options.test_mode) {
		reply_error(call, EPERM, "test mode does not change CPUs or memory");
		return;
	}
	Vmf__Agent__OnlineResult *o = reply_body(call, sizeof(*o), NULL);
	if (!o)
		return;
	vmf__agent__online_result__init(o);
	uint32_t cpus_on = 0, blocks_on = 0;
	uint64_t mib = 0, block_mib = 128;
	int64_t deadline = vmf_now_ms() + (req->timeout_ms > 60000 ? 60000 : req->timeout_ms);
	for (;;) {
		/* Drain first: an event that lands during the pass wakes the
		 * next wait instead of being lost. */
		uevent_drain();
		online_pass(&cpus_on, &blocks_on, &mib, &block_mib);
		/* Boot memory rarely fills its last block: within one block
		 * of what the host asked for is enough. */
		bool done = online_cpu_count() >= req->want_cpus && mib + block_mib > req->want_mem_mib;
		if (done || !uevent_wait(deadline))
			break;
	}
	o->online_cpus = online_cpu_count();
	o->mem_total_kib = mem_total_kib();
	o->cpus_onlined = cpus_on;
	o->mem_blocks_onlined = blocks_on;
	o->online_mem_mib = mib;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_ONLINE;
	call->reply.online = o;
}
