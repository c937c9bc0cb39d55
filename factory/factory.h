/* The daemon's state, struct vmf_daemon, and the types its files share;
 * each file of factory/ declares its own functions in its own header (see
 * docs/architecture.md).
 *
 * Ownership: the event loop thread owns all daemon state (this struct, the
 * cache inside it with its pools and VMs, connections, the readiness pipe);
 * nothing here has a lock.  A worker job (common/jobs.h) gets what it needs
 * by value (a copy of the VM record, the request's fields) or by reference
 * count (the template record, struct vmf_tpl), and returns its results in
 * its job struct; its done callback, which runs on the loop, applies them.
 * While a VM is busy its driver handle (hv) and agent belong to the job:
 * the loop reads neither.  What a worker must tell the loop mid-job (a
 * progress line) it posts with vmf_jobs_post().  Read-only after start-up,
 * and so free to read on a worker: opts, ops, hv, img, sandbox, start_ms,
 * and what cache/cache.h lists for the cache. */
#ifndef VMF_FACTORY_H
#define VMF_FACTORY_H

#include <event2/event.h>
#include <event2/listener.h>
#include <sys/types.h>

#include "client.h"
#include "control.pb-c.h"
#include "config.h"
#include "driver.h"
#include "frame.h"
#include "cache.h"
#include "jobs.h"
#include "pool.h"
#include "sandbox.h"
#include "template.h"

/* The wire constants live in the public client header: one place to bump. */
#define VMF_CONTROL_MAX_FRAME VMF_CLIENT_MAX_FRAME
#define VMF_CONTROL_VERSION VMF_CONTROL_PROTOCOL_VERSION
#define VMF_DEFAULT_GETVM_TIMEOUT_MS 60000
/* Worker threads besides one per miss; pool work may occupy all but one
 * (vmf_daemon_run), which bounds a pool's clones at once too. */
#define VMF_WORKER_THREADS 8
#define VMF_DESTROY_LOST_MAX 64

/* Hand-out steps, timed separately (status and metrics show each). */
enum vmf_step {
	VMF_STEP_RESUME, VMF_STEP_HOTPLUG, VMF_STEP_ONLINE, VMF_STEP_RESEED, VMF_STEP_TIME, VMF_STEP_MOUNT,
	VMF_STEP_LINKS, VMF_STEP_RECORD, VMF_STEP_NET, VMF_STEP_TOTAL, VMF_STEP_COUNT
};

struct vmf_conn;
struct vmf_control;

/* In a VM's run dir while a snapshot of it runs (recovery.c resumes it). */
#define VMF_SNAPSHOT_MARKER "snapshotting"

/* A snapshot template the daemon knows (snapindex.c): the catalog's, read
 * at start, and each one a Snapshot request is making, listed from the
 * request on so that names and limits count it.  The loop owns the list;
 * a job refers to an entry by its template id, never by pointer. */
struct vmf_snap {
	TAILQ_ENTRY(vmf_snap) link;
	uid_t owner;                     /* 0: the operator (root, the daemon's user) */
	char name[33];
	char id[VMF_SHA256_HEX];         /* "" while making */
	uint64_t bytes;                  /* its files; while making, what it may take */
	Vmf__Catalog__TemplateRecord *rec;   /* NULL while making */
	bool making, removing;
	unsigned getvms;                 /* GetVMs of it in flight: it stays while they run */
};
TAILQ_HEAD(vmf_snap_list, vmf_snap);

/* Limits (limits.c) a request may hit, each counted for metrics. */
enum vmf_limit {
	VMF_LIMIT_VMS, VMF_LIMIT_SUSPENDED, VMF_LIMIT_SNAPSHOTS, VMF_LIMIT_SCRATCH_SIZE, VMF_LIMIT_SCRATCH_VOLUMES,
	VMF_LIMIT_COUNT
};
extern const char *const vmf_limit_names[VMF_LIMIT_COUNT];

struct vmf_daemon {
	struct vmf_daemon_opts opts;
	/* Pools and VMs, the event base, the workers, the catalog; its
	 * stopping, destroying and loop_done flags are the daemon's too. */
	struct vmf_cache cache;
	const struct vmf_hv_ops *ops;
	struct vmf_hv_info hv;
	struct vmf_image img;
	struct evconnlistener *listener;
	struct event *sig_term, *sig_int, *tick;
	int64_t start_ms;
	gid_t group;
	bool have_group;
	bool ready_sent, full_sent;
	bool sd_ready_sent, sd_full_sent;  /* READY=1 and the "full" STATUS to systemd */
	int ready_fd;
	struct vmf_sandbox_policy sandbox;  /* where GetVM may put links; read-only once running */
	uid_t runas_uid;                 /* QEMU's user with runas, else (uid_t)-1 */
	unsigned share_mib;              /* clones' shares: tmpfs of this size; 0 = plain dirs */
	/* counters */
	uint64_t requests, hits, misses, errors;
	struct vmf_latency lat[VMF_STEP_COUNT];
	struct vmf_histogram hist[VMF_STEP_COUNT];
	struct evhttp *metrics;          /* NULL unless --metrics-listen */
	unsigned conns;
	struct vmf_control *ctl;         /* control.c's connection table */
	struct vmf_snap_list snaps;      /* snapshot templates: owners, names, bytes */
	uint64_t limit_refusals[VMF_LIMIT_COUNT];
	unsigned miss_clones;            /* GetVM misses cloning now (bounded by opts.max_miss_clones) */
	unsigned host_cpus;              /* online at start: bounds clone parallelism */
	uint64_t host_mem_mib;           /* MemAvailable at start, 0 = unknown */
	uint32_t destroyed;              /* VMs stopped since destroy began */
	struct vmf_conn *destroy_conn;   /* the Destroy waiting for its reply */
	bool destroy_all;                /* ... with all: assigned VMs stop too */
	/* "VMID PATH: why" of each disk whose writes may be lost, for its reply. */
	char *destroy_lost[VMF_DESTROY_LOST_MAX];
	size_t n_destroy_lost;
	bool destroy_done;
	/* SIGTERM/SIGINT: no new work; the loop runs on until the work in
	 * flight is done (replies sent, VMs being stopped stopped) or the
	 * deadline timer fires. */
	bool draining;
	struct event *drain_timer;
	int lock_fd;                     /* flock on <state>/daemon.lock */
	int exit_code;
};

/* Root and the daemon's own user act on every VM (and may destroy). */
static inline bool
vmf_daemon_peer_admin(const struct vmf_daemon *d, uid_t uid)
{
	return uid == 0 || uid == d->sandbox.daemon_uid;
}

#endif
