/* The cache: pools of paused clones, end to end.  The engine (fill.c:
 * template builds, clones and their warm-up, refill, idle expiry) acts on
 * what the pool policy (pool.h) decides; vm.c holds the VM list, the VMs'
 * records, their exit watch and the stop job, which the daemon's request
 * handlers use too.
 *
 * Ownership: the event loop thread owns the cache (this struct, pools, VMs);
 * nothing here has a lock.  A worker job (jobs.h) gets what it needs by
 * value (a copy of the VM, the pool's read-only params) or by reference
 * count (the template record, struct vmf_tpl), and returns its results in
 * its job struct; its done callback, which runs on the loop, applies them.
 * While a VM is busy its driver handle (hv) and agent belong to the job:
 * the loop reads neither.  Read-only once running, and so free to read on a
 * worker: base, jobs, cat (LMDB serializes writers), the paths, and each
 * pool's name, template_id, spec, params and img.
 *
 * Layering: the cache knows nothing of the daemon above it (factory/); what
 * the daemon must hear it hears through the hooks. */
#ifndef VMF_CACHE_H
#define VMF_CACHE_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "error.h"
#include "jobs.h"
#include "pool.h"
#include "template.h"

#define VMF_STOP_TIMEOUT_MS 10000
/* The guest's part of a stop (stop_timeout) where no pool says. */
#define VMF_GUEST_STOP_TIMEOUT_MS 10000

/* How a stop went: the guest's part (stop = flush or poweroff, a
 * suspend's freeze) and the read-write disks it did not confirm. */
#define VMF_STOP_LOST_MAX 16
struct vmf_stop_report {
	char method[16];              /* "kill", "flush", "poweroff", "freeze"; "" = no process to stop */
	unsigned n_lost;
	char lost[VMF_STOP_LOST_MAX][768];   /* "PATH: why" */
	uint64_t guest_ms;
	bool forced;                  /* the guest did not finish in time: stopped anyway */
};

/* What the daemon must hear.  ctx is passed back to each. */
struct vmf_cache_hooks {
	void *ctx;
	/* On the loop, at the end of every done callback of the cache's jobs:
	 * a destroy or shutdown may be complete now, or pools want refilling. */
	void (*settle)(void *ctx);
	/* On the loop: a template was built, or a pool's fill level changed. */
	void (*readiness)(void *ctx);
	/* On the loop: a pool's template could not be built (msg says why). */
	void (*build_failed)(void *ctx, const char *msg);
	/* From a worker: a progress line of a template build. */
	void (*progress)(void *ctx, const char *line);
	/* On a worker, while stopping vm: remove the sandbox links made for it. */
	void (*remove_links)(void *ctx, const struct vmf_vm *vm);
	/* On a worker, once vm's VMM is stopped: undo its network (vm->net). */
	void (*undo_net)(void *ctx, const struct vmf_vm *vm);
	/* On the loop: vm is stopped and its links are gone (its run dir is
	 * removed next, by a job of its own when that takes long); reply_to is
	 * what vmf_cache_destroy_vm got, rep how the stop went.  err is 0, or
	 * ENOMEM when the stop could not be queued and was done inline. */
	void (*stopped)(void *ctx, struct vmf_vm *vm, void *reply_to, const struct vmf_stop_report *rep, int err);
	/* On a worker that owns vm: its owner's agent socket was made again
	 * (a kept VM's guest reset): grant the owner access to it. */
	int (*regrant)(void *ctx, const struct vmf_vm *vm, struct vmf_error *err);
};

struct vmf_cache {
	struct event_base *base;
	struct vmf_jobs *jobs;
	struct vmf_catalog *cat;
	const char *state_dir, *run_dir;
	char vm_root[PATH_MAX];          /* <run_dir>/vms */
	struct vmf_pool_list pools;
	struct vmf_vm_list vms;
	struct vmf_histogram clone_hist, build_hist;
	/* The pools' queues (queue.c): how many may wait in each, and how
	 * long waiters waited (served or not). */
	unsigned max_queue;
	struct vmf_latency queue_wait;
	struct vmf_histogram queue_hist;
	/* Recent clones' random samples after their reseed: a repeat means
	 * two clones share RNG state. */
	uint8_t recent_rng[64][16];
	unsigned recent_rng_n;
	bool stopping;                   /* the daemon stops: no new pool work */
	bool destroying;                 /* a Destroy: finished clones are stopped, not pooled */
	bool loop_done;                  /* the loop has ended: jobs' done() run from vmf_jobs_free */
	/* Each VM's logs keep their newest log_keep_bytes (read-only once
	 * running); a trim job is in flight (the loop's). */
	uint64_t log_keep_bytes;
	bool trimming;
	bool trim_warned;                /* the run dir cannot punch holes: said once */
	struct vmf_stop_policy stop_default;   /* for a VM of no pool */
#ifdef VMF_FAULT_INJECTION
	atomic_uint gate_tickets[2];     /* see vmf_cache_fault_gate */
#endif
	struct vmf_cache_hooks hooks;
};

/* vm.c: the VM list, records, exit watch, stop. */
/* A new VM of pool p (own UUID, run and share dirs), listed as filling. */
struct vmf_vm *vmf_cache_new_vm(struct vmf_cache *c, struct vmf_pool *p);
void vmf_cache_vm_free(struct vmf_cache *c, struct vmf_vm *vm);
/* Stops a VM on a worker and forgets it (links, then on another job its
 * run dir, state file and record); the stopped hook gets reply_to once it
 * is stopped and its links are gone.  The VM stays listed (releasing,
 * busy) until its run dir is removed; one that cannot be removed is kept
 * (rm_pending) and retried from the tick (vmf_cache_retry_removal). */
void vmf_cache_destroy_vm(struct vmf_cache *c, struct vmf_vm *vm, bool remove_links, void *reply_to);
void vmf_cache_retry_removal(struct vmf_cache *c, struct vmf_vm *vm);
struct vmf_vm *vmf_cache_find_vm(struct vmf_cache *c, const char *id);
/* Writes vm's record (durably) with vm->state; a failure is logged. */
void vmf_cache_record_vm(struct vmf_cache *c, struct vmf_vm *vm);
/* The same with the given state, failing on error.  Safe on a worker
 * thread that owns vm (busy): LMDB serializes writers. */
int vmf_cache_put_vm_record(struct vmf_cache *c, struct vmf_vm *vm, enum vmf_vm_state state,
			    struct vmf_error *err);
/* The same with exit as the record's (a job's report, which the loop's vm
 * gets only in its done callback). */
int vmf_cache_put_vm_record_exit(struct vmf_cache *c, const struct vmf_vm *vm, enum vmf_vm_state state,
				 const Vmf__Hv__VmExit *exit, struct vmf_error *err);
/* Fills vm's recorded fields from rec (the inverse of what put writes). */
void vmf_vm_from_record(struct vmf_vm *vm, const Vmf__Catalog__VmRecord *rec);
void vmf_cache_watch_vm(struct vmf_cache *c, struct vmf_vm *vm);
/* vm's process has exited (seen by its watch, the tick, or a job): a pooled
 * VM is replaced, an assigned one becomes gone once a job has read why
 * (vmexit.h) and recorded it.  While a job owns vm (busy) only vm->dead is
 * set; the job's done callback calls this again. */
void vmf_cache_vm_exited(struct vmf_cache *c, struct vmf_vm *vm);
/* Once a second: every VM's logs under vm_root (the serial console a guest
 * writes without end, the VMM's stderr) cut to their newest log_keep_bytes
 * on a worker, by punching a hole where their oldest bytes were.  The VMM
 * keeps appending to the same file, so the newest bytes are at its end
 * whenever it dies, and the bound holds for VMs adopted after a restart. */
void vmf_cache_trim_logs(struct vmf_cache *c);
/* On a worker that owns vm, an assigned VM whose process has exited:
 * why (vmexit.h), recorded with the gone state; the loop then applies it
 * with vmf_cache_vm_gone (which takes e). */
Vmf__Hv__VmExit *vmf_cache_vm_death(struct vmf_cache *c, const struct vmf_vm *vm);
void vmf_cache_vm_gone(struct vmf_cache *c, struct vmf_vm *vm, Vmf__Hv__VmExit *e);
/* The stop policy of vm: its pool's, else the daemon's default. */
const struct vmf_stop_policy *vmf_cache_stop_policy(const struct vmf_cache *c, const struct vmf_vm *vm);
/* On a worker that owns vm (running, assigned): its read-write disks
 * through the guest agent, within timeout_ms: written back and unmounted
 * (VMF_AGENT_UNMOUNT), frozen or thawed (suspend), or the whole guest
 * powered off (poweroff: then waits for the VMM to exit).  scratch: the
 * run dir's volumes and overlays too (they outlive the VMM only when the
 * VM is suspended).  rep->lost names each disk not confirmed; returns the
 * number of read-write disks (0: nothing was asked, unless poweroff). */
int vmf_cache_guest_stop(struct vmf_cache *c, struct vmf_vm *vm, int mode, bool poweroff, bool scratch,
			 unsigned timeout_ms, struct vmf_stop_report *rep);
/* A VM kept across guest resets: watches its VMM's events (on the loop). */
void vmf_cache_watch_events(struct vmf_cache *c, struct vmf_vm *vm);

/* fill.c: the pool engine. */
/* Starts template builds and clones as each pool's policy says. */
void vmf_cache_refill(struct vmf_cache *c);
/* On the loop, with the random sample a clone drew after its reseed:
 * fails (EIO) when a recent clone drew the same, else remembers it. */
int vmf_cache_check_sample(struct vmf_cache *c, const char *vm_id, const uint8_t sample[16],
			   struct vmf_error *err);
/* Once a second, on the loop: an exit no pidfd reported (liveness check),
 * pooled VMs idle beyond their pool's max_idle (default_max_idle_s for a VM
 * of no pool) replaced. */
void vmf_cache_tick(struct vmf_cache *c, unsigned default_max_idle_s);
/* queue.c: requests waiting for a pool's next ready clone. */
struct vmf_wait_req {
	uid_t uid;
	unsigned uid_limit;           /* its uid's waiters in the pool at most; UINT_MAX = no limit */
	int64_t deadline_ms;          /* vmf_now_ms() clock */
	void (*fn)(void *arg, int rc, const struct vmf_error *err);   /* see struct vmf_waiter */
	bool (*alive)(void *arg);
	void *arg;
};
/* Queues a request in p's queue, the pool cloning one more for it; fn
 * hears the outcome later, never from this call.  Refused at once: EAGAIN
 * when max_queue requests already wait, EDQUOT beyond uid_limit,
 * ESHUTDOWN while stopping. */
int vmf_cache_enqueue(struct vmf_cache *c, struct vmf_pool *p, const struct vmf_wait_req *r, struct vmf_error *err);
/* A clone of p is ready: waiters take ready VMs in their turn. */
void vmf_cache_serve_queue(struct vmf_cache *c, struct vmf_pool *p);
/* From the tick: waiters whose client has gone leave the queue. */
void vmf_cache_queue_check(struct vmf_cache *c);
/* Shutdown or destroy: every waiter ends, ESHUTDOWN ("WHY while ..."). */
void vmf_cache_queue_flush(struct vmf_cache *c, const char *why);
/* Requests waiting in every pool. */
unsigned vmf_cache_queued(const struct vmf_cache *c);

/* Test builds, VMFACTORY_FAULT=gates: clone work named name ("clone" for
 * the pool's, "miss" for GetVM's) waits at a gate, the file
 * <run_dir>/gate-NAME: it holds how many clones may pass, in the order they
 * arrive, or "fail" (they fail, EIO); no file, no gate.  How end-to-end
 * tests order clones against other work deterministically. */
#ifdef VMF_FAULT_INJECTION
int vmf_cache_fault_gate(struct vmf_cache *c, const char *name, struct vmf_error *err);
#define VMF_FAULT_GATE(c, name, err) vmf_cache_fault_gate((c), (name), (err))
#else
#define VMF_FAULT_GATE(c, name, err) 0
#endif

#endif
