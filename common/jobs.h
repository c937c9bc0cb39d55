/* Worker threads for slow hypervisor work.  work() runs on a worker; done()
 * runs afterwards on the event loop thread, which owns all daemon state, so
 * state needs no locks.  The loop never blocks on a VMM. */
#ifndef VMF_JOBS_H
#define VMF_JOBS_H

#include <event2/event.h>

struct vmf_jobs;

typedef void (*vmf_job_fn)(void *arg);

/* How a job is scheduled.  A client waits for an interactive job, so it
 * starts before any pool work queued earlier; and pool work never occupies
 * the reserved workers, so an interactive job never waits for a clone. */
enum vmf_job_class {
	VMF_JOB_INTERACTIVE,   /* GetVM (a miss too), release, inspect, destroy */
	VMF_JOB_POOL,          /* clone, warm-up, template build, replacing pooled VMs */
};

/* Starts n worker threads, of which pool work may occupy n - reserve (at
 * least one); base must have been created after evthread_use_pthreads(). */
struct vmf_jobs *vmf_jobs_new(struct event_base *base, unsigned n, unsigned reserve);
/* Runs queued and running jobs to completion (their done() included), then
 * joins the workers. */
void vmf_jobs_free(struct vmf_jobs *j);

/* Queues a job; returns -1 (ENOMEM) when it cannot be queued.  Jobs of one
 * class start in the order they were queued. */
int vmf_jobs_submit_class(struct vmf_jobs *j, enum vmf_job_class cls, vmf_job_fn work, vmf_job_fn done,
			  void *arg);
/* The same, interactive. */
int vmf_jobs_submit(struct vmf_jobs *j, vmf_job_fn work, vmf_job_fn done, void *arg);

/* From any thread: fn(arg) runs on the event loop thread soon (or in
 * vmf_jobs_free).  How a worker hands something to the loop mid-job (a
 * progress line) rather than touching loop state.  Not counted as pending. */
int vmf_jobs_post(struct vmf_jobs *j, vmf_job_fn fn, void *arg);

/* Jobs queued or running. */
unsigned vmf_jobs_pending(const struct vmf_jobs *j);

#endif
