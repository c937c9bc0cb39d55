/* Pools of paused clones: the data and the policy (how many clones to start,
 * backoff after failures, idle replacement).  No I/O here: the daemon acts
 * on what these functions decide, so the policy is testable on its own. */
#ifndef VMF_POOL_H
#define VMF_POOL_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

#include "catalog.pb-c.h"
#include "cgroup.h"
#include "template.h"

enum vmf_vm_state {
	VMF_VM_CREATING,     /* clone in progress */
	VMF_VM_READY,        /* paused in its pool */
	VMF_VM_HANDING_OUT,  /* GetVM in progress */
	VMF_VM_ASSIGNED,     /* handed to a sandbox */
	VMF_VM_RELEASING,    /* being stopped */
	VMF_VM_GONE,         /* its process exited while assigned */
	VMF_VM_SUSPENDING,   /* an assigned VM's state being saved (factory/suspend.c) */
	VMF_VM_SUSPENDED,    /* its state in state_file, no process */
	VMF_VM_RESUMING,     /* a process loading state_file */
};

const char *vmf_vm_state_name(enum vmf_vm_state s);

struct vmf_pool;
struct vmf_agent;
struct vmf_hv_ops;

/* A template record shared by its pool and the jobs that clone from it.
 * A job takes a reference on the loop before it is queued and drops it in
 * its done callback; the pool drops its own when the template is found
 * broken.  The last reference frees the record, so a clone still running
 * when another finds the template broken keeps a valid record. */
struct vmf_tpl {
	_Atomic unsigned refs;
	Vmf__Catalog__TemplateRecord *rec;
};

/* Takes rec (freed with the last reference); one reference, NULL when out
 * of memory (rec is freed then). */
struct vmf_tpl *vmf_tpl_new(Vmf__Catalog__TemplateRecord *rec);
struct vmf_tpl *vmf_tpl_ref(struct vmf_tpl *t);
void vmf_tpl_unref(struct vmf_tpl *t);

/* How a VM that may hold tenant data is stopped (release, destroy, a
 * suspend's freeze), and what a guest reset does (vmfactory.conf(5) stop,
 * stop_timeout, on_guest_reset). */
enum vmf_stop_mode {
	VMF_STOP_FLUSH,      /* the guest unmounts its read-write disks, then the VMM quits */
	VMF_STOP_KILL,       /* the VMM quits at once */
	VMF_STOP_POWEROFF,   /* a clean guest shutdown (processes ended, disks unmounted), then the VMM */
};
struct vmf_stop_policy {
	enum vmf_stop_mode mode;
	unsigned timeout_ms;      /* the guest's part; then it is stopped anyway */
	bool keep_on_reset;       /* on_guest_reset = keep: the guest reboots in place */
};
const char *vmf_stop_mode_name(enum vmf_stop_mode m);

/* Port forwards one user-mode hand-out may ask for. */
#define VMF_MAX_HOSTFWD 8

/* A VM the daemon manages. */
/* A block device attached to a handed-out VM (factory/disk.c), in the
 * VM's slot of that number.  Set on the loop; a worker job of the VM reads
 * it. */
enum vmf_disk_kind { VMF_DISK_FILE, VMF_DISK_SCRATCH, VMF_DISK_COW };
struct vmf_vm_disk {
	enum vmf_disk_kind kind;
	char path[PATH_MAX];          /* as the caller named it; scratch: the file in the run dir */
	char guest_path[PATH_MAX];    /* "" = not mounted */
	char overlay[PATH_MAX];       /* cow: the overlay in the run dir; path is only read */
	char format[8], fstype[32], guest_device[64];
	bool read_only;
	/* An attach in flight: its job owns the fields but dev, ino and
	 * read_only (set before), and reports show it only once attached. */
	bool attaching;
	bool detaching;               /* a detach in flight: no longer recorded */
	uint64_t dev, ino;            /* the file opened (0, 0 until known) */
};

struct vmf_vm {
	TAILQ_ENTRY(vmf_vm) link;
	char id[VMF_UUID_STR];
	char template_id[VMF_SHA256_HEX];
	struct vmf_pool *pool;
	void *owner;                  /* its struct vmf_cache, for event callbacks */
	enum vmf_vm_state state;
	const struct vmf_hv_ops *ops; /* the driver of hv: the configured one, or for an
				       * adopted VM the one its record names */
	struct vmf_vmm *hv;            /* driver handle; NULL until the clone exists */
	struct vmf_agent *agent;      /* connection opened while filling, kept for the hand-out */
	struct event *watch;          /* process exit */
	bool busy;                    /* a worker job owns hv */
	bool dead;                    /* process exit seen */
	/* Stopped, but its run dir could not be removed (a mount in it, an
	 * error): kept, releasing, its record too, and retried from the tick
	 * at rm_retry_ms (and by recovery after a restart). */
	bool rm_pending;
	unsigned rm_tries;
	int64_t rm_retry_ms;
	int64_t created_ns, ready_ns, assigned_ns;
	int64_t ready_mono_ms;
	unsigned vcpus, memory_mib;   /* its size now: base, shaped, or as handed out */
	unsigned shape_vcpus, shape_mib; /* while filling: the size its warm-up grows it to, 0 = base */
	uid_t owner_uid;              /* the peer that got it; 0 while pooled */
	char sandbox_id[72];
	char share_link[PATH_MAX], sock_link[PATH_MAX];
	char run_dir[PATH_MAX], share_dir[PATH_MAX];
	/* Its own identity (warm-up, or a miss's hand-out) and hostname. */
	char boot_id[40], machine_id[40], hostname[72];
	double clock_error_ms;        /* at the hand-out's reply */
	struct vmf_vm_disk *disks[VMF_DISK_SLOTS];  /* NULL: slot free */
	/* Its network, named in the record before the hand-out
	 * makes any of it, so that release and recovery undo exactly this:
	 * net "" (none), "user" or "netns"; the namespace (path, identity),
	 * its interface whose traffic is mirrored, the tap made in it. */
	char net[8];
	char netns[PATH_MAX];
	uint64_t netns_dev, netns_ino;
	char netns_link[16], tap[16];
	char hostfwd[VMF_MAX_HOSTFWD][80];
	unsigned n_hostfwd;
	bool net_outbound;            /* user: connections out allowed (else only its forwards) */
	char mac[18];
	/* Why its process ended (gone), or its guest's last reset (kept):
	 * the loop's, set by a done callback; a job's copy of the VM does not
	 * own it. */
	Vmf__Hv__VmExit *exit;
	unsigned resets;              /* guest resets seen (on_guest_reset = keep) */
	bool keep_resets;             /* its VMM resets the guest in place (keep when it was cloned) */
	int64_t reset_window_ms;      /* resets counted since (vmf_now_ms) */
	unsigned window_resets;
	char end_why[200];            /* the daemon ended its VMM: why, for its exit */
	struct event *events;         /* the VMM's event fd (a VM kept across resets) */
	/* The cgroups its VMM joined at hand-out, and each one's oom_kill
	 * count then. */
	char cgroups[VMF_CGROUPS_MAX][VMF_CGROUP_PATH_MAX];
	uint64_t cgroup_oom[VMF_CGROUPS_MAX];
	unsigned n_cgroups;
	/* Suspended (and while suspending or resuming): its saved state, and
	 * the driver state it resumes from (config, hot-added devices; no
	 * process), written to its record while hv is NULL. */
	char state_file[PATH_MAX];
	uint64_t state_size;
	int64_t suspended_ns;
	Vmf__Hv__HypervisorState *saved_hv;
	/* Its lease (an assigned VM): at lease_deadline_ns (CLOCK_REALTIME, 0 =
	 * none) the daemon's tick releases it, or suspends it with
	 * lease_suspend.  Recorded, so that a restarted daemon keeps it. */
	int64_t lease_deadline_ns;
	bool lease_suspend;
};

/* Whether vm holds something outside its own memory and devices (an
 * attached disk: a host file; a network backend: a tap in someone's
 * namespace, host ports), which a suspend or snapshot must handle: what
 * names it in what, for an error ("the disk /x", "network (netns
 * /run/netns/p)"). */
bool vmf_vm_has_host_parts(const struct vmf_vm *vm, char *what, size_t n);

TAILQ_HEAD(vmf_vm_list, vmf_vm);


/* ---- demand-shaped pools ----
 * Each pool learns the sizes it is asked for (a histogram whose counts
 * decay by half every VMF_SHAPE_HALF_LIFE requests) and keeps some of its
 * clones grown to the popular ones during warm-up, so that a request of
 * such a size is served with no hot-add on the hand-out path. */

/* How a hand-out was served (status, metrics, the reply's VmInfo.handout). */
enum vmf_handout_kind {
	VMF_HANDOUT_SHAPED,   /* a clone pre-grown to the size (or larger): no hot-add */
	VMF_HANDOUT_BASE,     /* a base clone for a base-size request */
	VMF_HANDOUT_RESIZE,   /* a pooled clone grown on the hand-out path */
	VMF_HANDOUT_MISS,     /* no pooled clone: cloned on demand */
	VMF_HANDOUT_KINDS,
};
const char *vmf_handout_kind_name(enum vmf_handout_kind k);

#define VMF_SHAPE_SIZES 16        /* sizes a pool tracks; the least wanted makes room */
#define VMF_SHAPE_HALF_LIFE 32    /* requests after which a size's demand counts half */
#define VMF_SHAPE_MIN_DEMAND 2.5  /* a size is shaped only after about three recent requests */
#define VMF_SHAPE_MIN_SHARE 0.05  /* ... and at least 5% of the pool's recent requests */
#define VMF_SHAPE_STALE_MS 30000  /* a shaped clone no longer wanted is replaced after this */
#define VMF_SHAPE_RETRY_MS 60000  /* after a failed shaping, clones stay at base this long */

struct vmf_shape_size {
	unsigned vcpus, memory_mib;
	double demand;                          /* decayed request count */
	uint64_t handouts[VMF_HANDOUT_KINDS];   /* cumulative, by how they were served */
};

struct vmf_shape {
	bool enabled;                 /* shape = auto */
	unsigned max;                 /* shape_max: clones of the pool that may be shaped at once */
	unsigned memory_mib;          /* shape_memory_mib: guest memory above base they may hold, in total */
	int64_t retry_at_ms;          /* no shaping before this (a shaping failed) */
	unsigned n;
	struct vmf_shape_size sizes[VMF_SHAPE_SIZES];
	uint64_t other[VMF_HANDOUT_KINDS];   /* hand-outs of sizes that lost their entry */
};

/* How many clones of one size the pool wants shaped. */
struct vmf_shape_want {
	unsigned vcpus, memory_mib, count;
};

/* A GetVM waiting in its pool's queue for the next ready clone
 * (cache/queue.c).  The loop's; the request handler that queued it hears
 * of it once, through fn: rc 0 when a ready VM of the pool is there to take
 * (it takes it before returning), else the wait's end (ETIMEDOUT at its
 * deadline, ECONNRESET when its client left, ESHUTDOWN) with err. */
struct vmf_error;
struct event;
struct vmf_waiter {
	TAILQ_ENTRY(vmf_waiter) link;
	struct vmf_pool *pool;
	void *cache;                  /* its struct vmf_cache */
	uid_t uid;
	uint64_t seq;                 /* arrival order */
	uint64_t turn;                /* its uid's last turn when it arrived or since: round-robin */
	int64_t enqueued_ms, deadline_ms;
	struct event *timer;
	void (*fn)(void *arg, int rc, const struct vmf_error *err);
	bool (*alive)(void *arg);     /* false once its client has gone */
	void *arg;
};
TAILQ_HEAD(vmf_waiter_list, vmf_waiter);

struct vmf_pool {
	TAILQ_ENTRY(vmf_pool) link;
	char name[33];                       /* from the config, "default" from flags */
	/* A pool of a named template (vmfactory snapshot): [pool X] template =
	 * NAME, or made on demand by a GetVM naming it.  Its template is found,
	 * never built; a request must name it (its VMs carry a VM's state). */
	char template_name[33];
	/* Made by a GetVM, not the config: it serves its template's owner (and
	 * the operator) through the template alone, never by pool name. */
	bool on_demand;
	uid_t template_owner;                /* the snapshot's owner; 0 = the operator */
	unsigned max_idle_s;                 /* replace ready VMs older than this, 0 = never */
	char template_id[VMF_SHA256_HEX];
	Vmf__Catalog__TemplateSpec *spec;
	struct vmf_tpl *tpl;                 /* NULL until built, and once found broken */
	struct vmf_template_params params;
	struct vmf_image img;                /* its guest image: the daemon's or its own */
	unsigned target;
	bool net_user;                /* net = user: a GetVM without network gets user-mode */
	unsigned parallelism;                /* concurrent clones while filling, queue empty */
	/* The most clones at once however deep the queue (clone_parallelism:
	 * configured, or from the host's cores and memory); 0 = parallelism. */
	unsigned max_parallelism;
	/* GetVMs waiting for its next ready clone (queue.c), oldest first;
	 * initialized by the first to wait. */
	struct vmf_waiter_list waiters;
	unsigned queued;
	uint64_t queue_seq, queue_turns;
	uint64_t queue_served, queue_timeouts, queue_left, queue_refused;
	unsigned ready, filling;             /* current counts */
	uint64_t failed;                     /* clone or build failures, cumulative */
	unsigned consecutive_failures;
	int64_t retry_at_ms;                 /* backoff: no attempt before this */
	bool building;
	bool verified;                       /* template digests checked this run */
	char last_error[512];
	struct vmf_shape shape;
	struct vmf_stop_policy stop;
	/* [pool] cgroup: where its VMs' VMMs go at a hand-out that names none. */
	char cgroups[VMF_CGROUPS_MAX][VMF_CGROUP_PATH_MAX];
	unsigned n_cgroups;
};

TAILQ_HEAD(vmf_pool_list, vmf_pool);

/* The pool that serves vcpus / mem: the one named (the only candidate, so
 * that a tenant who asked for a pool that shares no memory never gets one
 * that does), or else the fitting pool with the largest base, a sharing one
 * before a private one of the same base.  NULL with err: ENOENT for no such
 * pool (the message lists the pools) or no pool at all, ENOSPC when no pool
 * serves the size (the message gives each candidate's range).  name is
 * already validated (vmf_valid_pool_name) or empty. */
struct vmf_pool *vmf_pool_choose(const struct vmf_pool_list *pools, const char *name, unsigned vcpus, unsigned mem,
				 struct vmf_error *err);

/* Number of clones to start now: enough to reach target and serve every
 * waiting request, within the parallelism bound (which grows with the
 * queue, up to max_parallelism), none while backing off or without a
 * template. */
unsigned vmf_pool_clones_to_start(const struct vmf_pool *p, int64_t now_ms);

/* Records a failure: exponential backoff from 1 s doubling to 60 s. */
void vmf_pool_note_failure(struct vmf_pool *p, int64_t now_ms, const char *msg);
void vmf_pool_note_success(struct vmf_pool *p);
/* Backoff delay after n consecutive failures, in ms. */
int64_t vmf_pool_backoff_ms(unsigned n);

/* The most clones a pool of guests of mib starts at once: configured
 * (clone_parallelism), else as many as the host has cores, and as many as
 * its available memory holds guests of mib each (0: unknown); never more
 * than workers, the pool work's threads. */
unsigned vmf_pool_clone_cap(unsigned configured, unsigned cpus, uint64_t mem_avail_mib, unsigned mib,
			    unsigned workers);
/* The parallelism p fills with now: its queue deepens it, up to
 * max_parallelism. */
unsigned vmf_pool_parallelism(const struct vmf_pool *p);
/* The waiter of p served next: round-robin across uids (the uid whose
 * last turn is oldest), first come first served within a uid; NULL when
 * none waits. */
struct vmf_waiter *vmf_pool_next_waiter(const struct vmf_pool *p);
/* w (its uid set) joins p's queue, last of its uid's; leaves it, its
 * uid's turn taken when it was served. */
void vmf_pool_waiter_add(struct vmf_pool *p, struct vmf_waiter *w);
void vmf_pool_waiter_remove(struct vmf_pool *p, struct vmf_waiter *w, bool served);
/* Requests of uid waiting in p's queue. */
unsigned vmf_pool_queued_by(const struct vmf_pool *p, uid_t uid);

/* True when a ready VM has sat paused longer than max_idle_s (0 = never). */
bool vmf_pool_vm_idle_expired(const struct vmf_vm *vm, unsigned max_idle_s, int64_t now_ms);

/* A GetVM for vcpus / mib reached the pool: decays every size's demand
 * and counts this one. */
void vmf_shape_note_request(struct vmf_shape *s, unsigned vcpus, unsigned mib);
/* A hand-out of the requested size succeeded, served as k. */
void vmf_shape_note_handout(struct vmf_shape *s, unsigned vcpus, unsigned mib, enum vmf_handout_kind k);
/* The sizes p wants shaped clones of, most wanted first, within shape_max
 * and the memory budget; returns how many entries of out (at most n) it
 * filled.  Nothing while shaping is off. */
unsigned vmf_shape_plan(const struct vmf_pool *p, struct vmf_shape_want *out, unsigned n);
/* The size the next clone of p should be grown to during its warm-up:
 * true with *vcpus / *mib when the plan wants more of a size than the
 * pool's ready and filling clones have, and one more shaped clone keeps
 * within shape_max and shape_memory_mib; false for a base clone. */
bool vmf_pool_next_shape(const struct vmf_pool *p, const struct vmf_vm_list *vms, int64_t now_ms,
			 unsigned *vcpus, unsigned *mib);
/* The ready VM of p a request for vcpus / mib gets, NULL for none (a miss):
 * one of exactly that size; else the smallest that needs no hot-add; else
 * the one with the least to hot-add.  A request never gets fewer vCPUs or
 * MiB than it asked for.  *kind says which. */
struct vmf_vm *vmf_pool_pick(const struct vmf_pool *p, const struct vmf_vm_list *vms, unsigned vcpus,
			     unsigned mib, enum vmf_handout_kind *kind);
/* A ready shaped clone of p whose size the plan no longer wants, pooled
 * longer than VMF_SHAPE_STALE_MS: to be replaced.  NULL for none. */
struct vmf_vm *vmf_pool_stale_shaped(const struct vmf_pool *p, const struct vmf_vm_list *vms, int64_t now_ms);

/* Latency samples for status: a ring of the most recent values. */
#define VMF_LAT_SAMPLES 1024
struct vmf_latency {
	double ms[VMF_LAT_SAMPLES];
	uint64_t count;
};
void vmf_latency_add(struct vmf_latency *l, double ms);

/* Cumulative histogram for the metrics endpoint (Prometheus buckets). */
#define VMF_HIST_BUCKETS 16
extern const double vmf_hist_bounds_s[VMF_HIST_BUCKETS];   /* upper bounds, s */
struct vmf_histogram {
	uint64_t bucket[VMF_HIST_BUCKETS];   /* observations <= bound (cumulative) */
	uint64_t count;
	double sum_s;
};
void vmf_histogram_add(struct vmf_histogram *h, double seconds);
/* q in [0,1]; 0 when there are no samples. */
double vmf_latency_quantile(const struct vmf_latency *l, double q);

#endif
