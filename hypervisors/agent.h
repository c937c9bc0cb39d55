/* The daemon's calls to the guest agent (proto/agent.proto), over a stream
 * fd from ops->agent_connect(), through the one host-side connection
 * (common/agentconn.h: its bounds hold whatever the guest sends).  Requests
 * carry an id; replies with another id (left over from before a template
 * save) are discarded, up to its limit.  A call fails with -EPROTO and a
 * sentence when the agent breaks the protocol, and the channel stays
 * failed: free it. */
#ifndef VMF_AGENT_H
#define VMF_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent.pb-c.h"
#include "error.h"

struct vmf_agent;

/* Takes ownership of fd. */
struct vmf_agent *vmf_agent_new(int fd);
void vmf_agent_free(struct vmf_agent *a);

/* Sends req (protocol_version and id are filled in) and waits for its reply.
 * A reply with error_code != 0 becomes a failure carrying the guest's
 * message.  Free *reply with vmf__agent__agent_reply__free_unpacked. */
int vmf_agent_call(struct vmf_agent *a, Vmf__Agent__AgentRequest *req,
		   Vmf__Agent__AgentReply **reply, int timeout_ms, struct vmf_error *err);

/* vmf_agent_call in two halves, so that work can happen in between: a
 * request sent to a paused guest waits in the channel and is read the moment
 * the guest runs.  vmf_agent_recv waits for the reply to req (its id as
 * vmf_agent_send set it).  No other call may go in between: its wait would
 * discard the pending reply as stale. */
int vmf_agent_send(struct vmf_agent *a, Vmf__Agent__AgentRequest *req, int timeout_ms, struct vmf_error *err);
int vmf_agent_recv(struct vmf_agent *a, const Vmf__Agent__AgentRequest *req, Vmf__Agent__AgentReply **reply,
		   int timeout_ms, struct vmf_error *err);

/* Convenience wrappers over vmf_agent_call. */
int vmf_agent_ping(struct vmf_agent *a, int timeout_ms, struct vmf_error *err);
/* Retries Ping until the guest answers or timeout_ms passes (boot, restore). */
int vmf_agent_wait_ready(struct vmf_agent *a, int timeout_ms, struct vmf_error *err);
/* A new channel from connect (a driver's agent_connect with its VM), ready:
 * its Ping answered.  A connection left unanswered is replaced after 2 s,
 * then 4, then every 8 s within timeout_ms (common/agentconn.h): an agent
 * older than the fix for the port's late open notice (docs/hypervisors.md)
 * drops the answer to a new host's first request now and then, and serves
 * the next connection.  One that fails otherwise (an agent breaking the
 * protocol: -EPROTO) is not retried. */
struct vmf_vmm;
typedef int (*vmf_agent_connect_fn)(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err);
int vmf_agent_open(vmf_agent_connect_fn connect, struct vmf_vmm *vm, int timeout_ms, struct vmf_agent **out,
		   struct vmf_error *err);
/* The guest's view of itself, every string in it escaped (common/text.h):
 * text to show. */
int vmf_agent_guest_info(struct vmf_agent *a, Vmf__Agent__AgentReply **reply, int timeout_ms,
			 struct vmf_error *err);
/* Onlines hot-added CPUs and memory, waiting in the guest until want_cpus
 * CPUs and want_mem_mib MiB are online (or timeout_ms). */
int vmf_agent_online(struct vmf_agent *a, uint32_t want_cpus, uint32_t want_mem_mib, uint32_t *online_cpus,
		     uint64_t *mem_total_kib, int timeout_ms, struct vmf_error *err);
/* Sends entropy, returns the guest's fresh 16-byte sample in sample[16]. */
int vmf_agent_reseed(struct vmf_agent *a, const uint8_t *entropy, size_t n, uint8_t sample[16],
		     int timeout_ms, struct vmf_error *err);
int vmf_agent_set_time(struct vmf_agent *a, int64_t realtime_ns, int64_t *guest_ns,
		       int timeout_ms, struct vmf_error *err);
/* A clone's own identity, once per clone: reseeds the guest RNG with fresh
 * host entropy, then a fresh boot id and (where the image has one)
 * /etc/machine-id from host bytes (NewIdentity in proto/agent.proto). */
struct vmf_agent_identity {
	uint8_t sample[16];          /* the guest's random bytes after the reseed */
	char boot_id[40];
	char machine_id[40];         /* "" when the image has none */
};
int vmf_agent_new_identity(struct vmf_agent *a, struct vmf_agent_identity *out, int timeout_ms,
			   struct vmf_error *err);
/* The hand-out request (clock and hostname), split: send it, resume the
 * guest, then receive its reply.  send takes the host's realtime as late
 * as it can (host_sent_ns); recv notes the host's at the reply's arrival. */
struct vmf_agent_handout {
	uint64_t id;
	uint64_t time_id;            /* the SetTime that follows cont, 0: none */
	int64_t host_sent_ns, host_recv_ns, guest_ns;
	char hostname[72];
	char net_error[300];
	char boot_id[40];
};
int vmf_agent_send_handout(struct vmf_agent *a, const char *hostname, struct vmf_agent_handout *h, int timeout_ms,
			   struct vmf_error *err);
/* The guest NIC's configuration a hand-out sends with the clock. */
struct vmf_guest_net {
	uint8_t mac[6];
	char addrs[8][24];          /* "a.b.c.d/len" */
	unsigned n_addrs;
	char gateway[16];           /* "" = no default route */
	char dns[4][46];
	unsigned n_dns;
};
/* The same with the NIC's configuration (net may be NULL); the guest's
 * answer to it is h->net_error after recv ("" = configured). */
int vmf_agent_send_handout_net(struct vmf_agent *a, const char *hostname, const struct vmf_guest_net *net,
			       struct vmf_agent_handout *h, int timeout_ms, struct vmf_error *err);
/* The clock again, right after cont, without waiting: the hand-out's time
 * left before cont, so the guest set it that late; this one it reads the
 * moment it has answered the hand-out.  recv then also waits for its reply
 * and the clock figures (host_sent_ns, guest_ns, host_recv_ns) are its. */
int vmf_agent_send_handout_time(struct vmf_agent *a, struct vmf_agent_handout *h, int timeout_ms,
				struct vmf_error *err);
int vmf_agent_recv_handout(struct vmf_agent *a, struct vmf_agent_handout *h, int timeout_ms, struct vmf_error *err);
/* |guest - host| realtime when the reply arrived: an upper bound of how far
 * the guest's clock is from the host's (the guest's is set to the time the
 * request was sent, so it lags by at most the round trip). */
double vmf_agent_handout_clock_error_ms(const struct vmf_agent_handout *h);
int vmf_agent_mount_share(struct vmf_agent *a, const char *tag, int timeout_ms,
			  struct vmf_error *err);
/* Waits (in the guest) for the block device with this serial, then mounts
 * it at path unless path is NULL or "" (fstype NULL: ext4); device gets its
 * guest node (/dev/sda). */
int vmf_agent_mount_disk(struct vmf_agent *a, const char *serial, const char *path, const char *fstype, bool read_only,
			 char *device, size_t device_n, int timeout_ms, struct vmf_error *err);
/* Unmounts path (when the disk is what is mounted there) and lets the
 * device go, before the host detaches it. */
int vmf_agent_unmount_disk(struct vmf_agent *a, const char *serial, const char *path, int timeout_ms,
			   struct vmf_error *err);
/* Runs argv in the guest (as root, no stdin) and waits for its exit code. */
int vmf_agent_run(struct vmf_agent *a, const char *const *argv, int *exit_code, int timeout_ms,
		  struct vmf_error *err);
/* Unmounts the share (nothing mounted is no error); EBUSY while in use. */
int vmf_agent_unmount_share(struct vmf_agent *a, int timeout_ms, struct vmf_error *err);

/* Read-write disks written back before the VM stops (FlushDisks): each
 * named by its serial and guest mount point ("" = not mounted); the
 * guest's answer per disk.  The guest decides what it says: a lying guest
 * can only cost its own tenant data, so an answer is taken as the guest's
 * claim, bounded and escaped (how, error), never as more. */
#define VMF_AGENT_FLUSH_MAX 16
enum vmf_agent_flush_mode { VMF_AGENT_UNMOUNT, VMF_AGENT_FREEZE, VMF_AGENT_THAW };
struct vmf_agent_flush {
	char serial[24];
	char path[512];
	bool answered;               /* the guest named this disk in its reply */
	bool done;                   /* ... as unmounted, frozen, thawed, synced or absent */
	int error_code;
	char how[16];
	char error[200];
};
int vmf_agent_flush_disks(struct vmf_agent *a, enum vmf_agent_flush_mode mode, struct vmf_agent_flush *disks, size_t n,
			  int timeout_ms, struct vmf_error *err);
/* A clean guest shutdown (Poweroff): its processes ended (SIGTERM, then
 * SIGKILL after grace_ms), the disks unmounted as vmf_agent_flush_disks
 * does, then the guest powers off once this reply is written.  The caller
 * waits for the VMM to exit. */
int vmf_agent_poweroff(struct vmf_agent *a, struct vmf_agent_flush *disks, size_t n, unsigned grace_ms,
		       int timeout_ms, struct vmf_error *err);

#endif
