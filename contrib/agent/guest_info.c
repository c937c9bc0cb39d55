/* GuestInfo: what the daemon and inspect learn of a guest in one reply
 * (CPUs, memory, clocks, identity, a random sample, the share's names,
 * the NICs). */
#include <stdlib.h>
#include <time.h>

#include "agent.h"

struct guest_info_body {
	Vmf__Agent__GuestInfo info;
	uint8_t random[16];
	char boot_id[64];
	char machine_id[64];
	char hostname[72];
	char *names[SHARE_NAMES_MAX];
	char ifaces[NIC_LIST_MAX][NIC_LINE_MAX];
	char *iface_ptrs[NIC_LIST_MAX];
};

static void
guest_info_release(void *p)
{
	struct guest_info_body *body = p;
	for (size_t i = 0; i < body->info.n_share_entries; i++)
		free(body->names[i]);
}

void
guest_info_report(struct agent_call *call)
{
	struct guest_info_body *body = reply_body(call, sizeof(*body), guest_info_release);
	if (!body)
		return;
	Vmf__Agent__GuestInfo *g = &body->info;
	vmf__agent__guest_info__init(g);
	if (identity_sample_random(call, body->random) < 0)
		return;
	g->online_cpus = online_cpu_count();
	g->mem_total_kib = mem_total_kib();
	g->uptime_ns = (uint64_t)clock_ns(CLOCK_BOOTTIME);
	g->monotonic_ns = (uint64_t)clock_ns(CLOCK_MONOTONIC);
	g->realtime_ns = clock_ns(CLOCK_REALTIME);
	if (read_small("/proc/sys/kernel/random/boot_id", body->boot_id, sizeof(body->boot_id)) < 0)
		body->boot_id[0] = '\0';
	g->boot_id = body->boot_id;
	identity_hostname(body->hostname, sizeof(body->hostname));
	g->hostname = body->hostname;
	identity_machine_id(body->machine_id, sizeof(body->machine_id));
	g->machine_id = body->machine_id;
	g->random.data = body->random;
	g->random.len = sizeof(body->random);
	g->n_share_entries = share_list(body->names);
	g->share_entries = body->names;
	g->agent_version = (char *)AGENT_VERSION;
	g->n_interfaces = nic_list(body->ifaces, NIC_LIST_MAX);
	for (size_t i = 0; i < g->n_interfaces; i++)
		body->iface_ptrs[i] = body->ifaces[i];
	g->interfaces = body->iface_ptrs;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_GUEST_INFO;
	call->reply.guest_info = g;
}
