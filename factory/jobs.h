/* Worker threads for slow hypervisor work.  work() runs on a worker; done()
 * runs afterwards on the event loop thread, which owns all daemon state, so
 * state needs no locks.  The loop never blocks on a VMM. */
#ifndef VMF_JOBS_H
#define VMF_JOBS_H

#include <event2/event.h>

struct vmf_jobs;

typedef void (*vmf_job_fn)(void *arg);

/* Starts n worker threads; base must have been created after
 * evthread_use_pthreads(). */
struct vmf_jobs *vmf_jobs_new(struct event_base *base, unsigned n);
/* Runs queued and running jobs to completion (their done() included), then
 * joins the workers. */
void vmf_jobs_free(struct vmf_jobs *j);

/* Queues a job; returns -1 (ENOMEM) when it cannot be queued. */
int vmf_jobs_submit(struct vmf_jobs *j, vmf_job_fn work, vmf_job_fn done, void *arg);

/* Jobs queued or running. */
unsigned vmf_jobs_pending(const struct vmf_jobs *j);

#endif
