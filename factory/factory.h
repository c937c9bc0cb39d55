/* Daemon internals shared by the files of factory/ (one role each; see
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
#include "daemon.h"
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
#define VMF_DEFAULT_MAX_QUEUE 256
#define VMF_DEFAULT_TENANT_MAX_QUEUED 32
#define VMF_DESTROY_LOST_MAX 64

/* Hand-out steps, timed separately (status and metrics show each). */
enum vmf_step {
	VMF_STEP_RESUME, VMF_STEP_HOTPLUG, VMF_STEP_ONLINE, VMF_STEP_RESEED, VMF_STEP_TIME, VMF_STEP_MOUNT,
	VMF_STEP_LINKS, VMF_STEP_RECORD, VMF_STEP_NET, VMF_STEP_TOTAL, VMF_STEP_COUNT
};
extern const char *const vmf_step_names[VMF_STEP_COUNT];

struct vmf_conn;
struct vmf_control;

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

/* daemon.c */
/* The daemon's state, its hooks set, nothing started (vmf_daemon_run does
 * the rest; the fuzz targets of the control socket and the metrics
 * listener start only what they need).  vmf_daemon_free() stops the
 * workers (their jobs complete), closes the listeners, the loop and the
 * catalog, and frees the VMs and pools; not d itself. */
struct vmf_daemon *vmf_daemon_new(const struct vmf_daemon_opts *opts, struct vmf_error *err);
void vmf_daemon_free(struct vmf_daemon *d);
/* From any thread: logs a progress line; the loop writes it to `vmfactory
 * init`'s pipe and to systemd (STATUS=). */
void vmf_daemon_progress(struct vmf_daemon *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* On the loop: writes line to `vmfactory init`'s pipe, if it is open. */
void vmf_daemon_notify(struct vmf_daemon *d, const char *line);
/* Ready once the socket answers and every pool's template is built: to
 * `vmfactory init` on ready_fd, and to systemd (READY=1). */
void vmf_daemon_check_readiness(struct vmf_daemon *d);

/* On the loop: a pool of template rec (taken; vmf_template_find_name)
 * named pool_name, of size clones, of the config or made by a GetVM
 * (on_demand); NULL with err when out of memory. */
struct vmf_pool *vmf_daemon_template_pool(struct vmf_daemon *d, const char *pool_name, unsigned size, bool on_demand,
					  Vmf__Catalog__TemplateRecord *rec, struct vmf_error *err);
/* Frees a pool taken off the list (its template reference, its spec). */
void vmf_daemon_pool_free(struct vmf_pool *p);

/* destroy.c: destroy, and the end of a shutdown. */
/* Every job's done callback ends with this: a destroy or a shutdown in
 * progress may be complete now, or the pools want refilling. */
void vmf_daemon_settle(struct vmf_daemon *d);
void vmf_daemon_destroy(struct vmf_daemon *d, struct vmf_conn *c, bool all);

/* A reply's StopReport from rep: strings borrowed, lost has
 * VMF_STOP_LOST_MAX entries. */
void vmf_stop_report_fill(const struct vmf_stop_report *rep, Vmf__Control__StopReport *sr, char **lost);
/* "gone (why)" or the state's name, for a message about vm's state. */
const char *vmf_vm_state_desc(const struct vmf_vm *vm, char *buf, size_t n);

/* status.c */
/* Answers a status request on c as its peer may see it: root and the
 * daemon's user see every VM, anyone else only the VMs it got (pools and
 * counters alike for all).  Built on the loop, the VMs' PSS read
 * (smaps_rollup) on a worker, replied from its done callback. */
void vmf_daemon_status(struct vmf_daemon *d, struct vmf_conn *c);
/* Root and the daemon's own user act on every VM (and may destroy). */
bool vmf_daemon_peer_admin(const struct vmf_daemon *d, uid_t uid);
/* vm as a reply shows it, with pss_kib read on a worker (vmf_proc_pss_kib). */
void vmf_vm_info_fill(struct vmf_daemon *d, const struct vmf_vm *vm, uint64_t pss_kib, Vmf__Control__VmInfo *info);
void vmf_vm_info_clear(Vmf__Control__VmInfo *info);

/* recovery.c: reconciles the VM records with the VMMs that run, then kills
 * those under our run dir without a record.  Fails, stopping nothing, when
 * the records cannot all be read. */
int vmf_recovery_run(struct vmf_daemon *d, struct vmf_error *err);

/* control.c */
/* Soft open file limit up to the hard one (at start, before VMs are adopted). */
void vmf_control_raise_fd_limit(void);
int vmf_control_listen(struct vmf_daemon *d, struct vmf_error *err);
void vmf_control_close(struct vmf_daemon *d);
/* Sends a reply on c (if still connected) and lets it read the next request;
 * drops the connection's reference taken by a pending request. */
void vmf_control_reply(struct vmf_conn *c, const Vmf__Control__Reply *reply);
void vmf_control_reply_error(struct vmf_conn *c, int code, const char *msg);
bool vmf_control_connected(const struct vmf_conn *c);
/* The connection's peer uid (SO_PEERCRED at accept). */
uid_t vmf_control_peer_uid(const struct vmf_conn *c);
/* Another daemon answering on path: its pid, else 0. */
pid_t vmf_control_probe_peer(const char *path);
/* Request checks, in the order read_cb applies them: the header's length
 * against VMF_CONTROL_MAX_FRAME (-EMSGSIZE, before anything is allocated),
 * unpacking (-EBADMSG; free *out with vmf__control__request__free_unpacked),
 * the protocol version (-EPROTO). */
int vmf_control_frame_len(const uint8_t h[VMF_FRAME_HDR], uint32_t *n, struct vmf_error *err);
int vmf_control_decode(const uint8_t *buf, size_t n, Vmf__Control__Request **out, struct vmf_error *err);
int vmf_control_check_version(const Vmf__Control__Request *req, struct vmf_error *err);

/* metrics.c: Prometheus text format over libevent's HTTP server. */
int vmf_metrics_listen(struct vmf_daemon *d, const char *addr_port, struct vmf_error *err);
void vmf_metrics_close(struct vmf_daemon *d);

/* getvm.c */
/* Refuses growing a clone beyond its template (tpl_vcpus, tpl_mib) when the
 * driver lacks cpu-hotplug / memory-hotplug, naming driver and capability. */
int vmf_getvm_check_caps(const char *driver, unsigned caps, unsigned tpl_vcpus, unsigned tpl_mib,
			 unsigned vcpus, unsigned mib, struct vmf_error *err);
/* GetVM's share_dir against the driver: with the share-device capability
 * share_dir and sock_dir are both required and differ (returns 1: the share
 * is mounted and linked); without it share_dir must be empty (ENOTSUP
 * otherwise) and only sock_dir is required (returns 0: nothing mounted, no
 * share link, the reply's share_dir empty). */
int vmf_getvm_check_share(const char *driver, unsigned caps, const char *share_dir, const char *sock_dir,
			  struct vmf_error *err);
void vmf_getvm_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__GetVMRequest *req);

/* release.c */
/* The VM id names, when c's peer may act on it and no job holds it; else
 * NULL, with the error already replied on c. */
struct vmf_vm *vmf_daemon_lookup_vm(struct vmf_daemon *d, struct vmf_conn *c, const char *id);
void vmf_release_start(struct vmf_daemon *d, struct vmf_conn *c, const char *vm_id);

/* suspend.c: suspend and resume, each a job owning the VM (busy). */
void vmf_suspend_start(struct vmf_daemon *d, struct vmf_conn *c, const char *vm_id);
void vmf_resume_start(struct vmf_daemon *d, struct vmf_conn *c, const char *vm_id);
/* Restart recovery of a VM recorded suspending, suspended or resuming
 * (live: its recorded process was adopted, into vm->hv): the state it
 * is in now (assigned: rolled back and running; suspended; gone). */
enum vmf_vm_state vmf_suspend_recover(struct vmf_daemon *d, struct vmf_vm *vm, const Vmf__Catalog__VmRecord *rec,
				      bool live);
/* After recovery: removes files under <state_dir>/suspended that no
 * suspended VM names (a suspend or resume cut short, a reboot). */
void vmf_suspend_sweep(struct vmf_daemon *d);

/* inspect.c */
void vmf_inspect_start(struct vmf_daemon *d, struct vmf_conn *c, const char *vm_id);

/* disk.c: Attach and Detach, each a job of the VM; the VM's disks in a
 * reply. */
void vmf_attach_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__AttachRequest *req);
void vmf_detach_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__DetachRequest *req);
/* info->disks from vm's; freed by vmf_disk_info_clear (or free_unpacked). */
void vmf_disk_info_fill(const struct vmf_vm *vm, Vmf__Control__VmInfo *info);
void vmf_disk_info_clear(Vmf__Control__VmInfo *info);
/* A suspended VM's disks opened again for its resume, on a worker: each
 * under the rules an attach by peer follows, and only if it is the file
 * the record names (its st_dev, st_ino); scratch volumes and cow overlays
 * from the run dir.  specs[] in slot order; closed by
 * vmf_disk_reopened_close (also after a failure: nothing left open). */
struct vmf_disk_reopened {
	struct vmf_disk_spec specs[VMF_DISK_SLOTS];
	char serials[VMF_DISK_SLOTS][VMF_DISK_SERIAL_MAX + 1];
	size_t n;
};
int vmf_disk_reopen(const struct vmf_daemon *d, const struct vmf_vm *vm, uid_t peer, bool admin,
		    struct vmf_disk_reopened *out, struct vmf_error *err);
void vmf_disk_reopened_close(struct vmf_disk_reopened *r);
/* snapshot.c */
/* In a VM's run dir while a snapshot of it runs (recovery.c resumes it). */
#define VMF_SNAPSHOT_MARKER "snapshotting"
void vmf_snapshot_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__SnapshotRequest *req);

/* snapindex.c: who owns which snapshot template, and TemplateRm.  A
 * snapshot belongs to the uid whose request made it; root and the daemon's
 * user are one owner, 0 (the operator), whose names a pool's template =
 * NAME means.  Names are unique per owner. */
/* At start, before the loop runs: every snapshot record of the catalog. */
int vmf_snaps_load(struct vmf_daemon *d, struct vmf_error *err);
void vmf_snaps_free(struct vmf_daemon *d);
/* The owner peer's snapshots are recorded under. */
uid_t vmf_snap_owner(const struct vmf_daemon *d, uid_t peer);
/* Whether peer may see, clone and remove a snapshot of owner. */
bool vmf_snap_allowed(const struct vmf_daemon *d, uid_t peer, uid_t owner);
/* The ready snapshot peer names: by name among its owner's, or by id among
 * those it may use; NULL for none (one being made or removed is none). */
struct vmf_snap *vmf_snap_lookup(struct vmf_daemon *d, uid_t peer, const char *name_or_id);
struct vmf_snap *vmf_snap_by_id(struct vmf_daemon *d, const char *id);
/* An entry for a snapshot being made (making, bytes its estimate); NULL
 * when out of memory.  vmf_snap_made fills it from its record (taken),
 * vmf_snap_drop forgets it (a failed snapshot, a removed template). */
struct vmf_snap *vmf_snap_begin(struct vmf_daemon *d, uid_t owner, const char *name, uint64_t bytes);
void vmf_snap_made(struct vmf_snap *s, Vmf__Catalog__TemplateRecord *rec);
void vmf_snap_drop(struct vmf_daemon *d, struct vmf_snap *s);
void vmf_template_rm_start(struct vmf_daemon *d, struct vmf_conn *c, const Vmf__Control__TemplateRmRequest *req);

/* limits.c: what one VM and one tenant may take of the host; checked on
 * the loop, against what the loop knows (the VMs, the snapshot index), so
 * requests in flight count: their VMs and snapshots are listed from the
 * start. */
struct vmf_usage {
	unsigned vms, suspended, snapshots;
	uint64_t suspended_bytes, snapshot_bytes;
};
void vmf_usage_of(const struct vmf_daemon *d, uid_t uid, struct vmf_usage *u);
/* Whether u (uid's use) leaves room for one more of what (VMS: a VM;
 * SUSPENDED: a suspended VM of bytes; SNAPSHOTS: a snapshot of bytes):
 * 0, or -EDQUOT with a sentence naming the uid, the use, the limit and
 * its key.  Pure: the limits come from o. */
int vmf_limit_check(const struct vmf_daemon_opts *o, uid_t uid, const struct vmf_usage *u, enum vmf_limit what,
		    uint64_t bytes, struct vmf_error *err);
/* The same for peer's request, against its use now; root and the daemon's
 * user pass.  A refusal is counted. */
int vmf_limit_tenant(struct vmf_daemon *d, uid_t peer, enum vmf_limit what, uint64_t bytes, struct vmf_error *err);
/* A scratch volume of mib for vm, for any peer: -EFBIG above
 * scratch_max_mib, -EDQUOT at scratch_max_volumes. */
int vmf_limit_scratch(struct vmf_daemon *d, const struct vmf_vm *vm, unsigned mib, struct vmf_error *err);
/* Status: the limits, and the use of peer (of everyone for root and the
 * daemon's user). */
void vmf_limits_status(struct vmf_daemon *d, uid_t peer, Vmf__Control__StatusReply *s);

#endif
