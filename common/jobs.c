#include "jobs.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct job {
	vmf_job_fn work, done;
	void *arg;
	enum vmf_job_class cls;
	bool counted;                 /* in pending: not a posted callback */
	struct job *next;
};

struct queue {
	struct job *head, **tailp;
};

struct vmf_jobs {
	struct event_base *base;
	struct event *wake;           /* activated by workers when jobs finish */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct queue high, low;       /* interactive jobs; pool work */
	struct job *finished;
	unsigned pending;
	unsigned pool_running, pool_max;
	bool stopping;
	unsigned nthreads;
	pthread_t *threads;
};

static void
queue_push(struct queue *q, struct job *job)
{
	job->next = NULL;
	*q->tailp = job;
	q->tailp = &job->next;
}

static struct job *
queue_pop(struct queue *q)
{
	struct job *job = q->head;
	q->head = job->next;
	if (!q->head)
		q->tailp = &q->head;
	return job;
}

/* The next job a worker may start, under mu: the oldest interactive job,
 * else the oldest pool job if pool work may grow. */
static struct job *
take(struct vmf_jobs *j)
{
	if (j->high.head)
		return queue_pop(&j->high);
	if (j->low.head && j->pool_running < j->pool_max)
		return queue_pop(&j->low);
	return NULL;
}

static void *
worker(void *arg)
{
	struct vmf_jobs *j = arg;
	pthread_mutex_lock(&j->mu);
	for (;;) {
		struct job *job = take(j);
		if (!job) {
			if (j->stopping && !j->high.head && !j->low.head)
				break;
			pthread_cond_wait(&j->cv, &j->mu);
			continue;
		}
		if (job->cls == VMF_JOB_POOL)
			j->pool_running++;
		pthread_mutex_unlock(&j->mu);
		if (job->work)
			job->work(job->arg);
		pthread_mutex_lock(&j->mu);
		if (job->cls == VMF_JOB_POOL) {
			j->pool_running--;
			/* A pool job held back by the bound may start now. */
			pthread_cond_broadcast(&j->cv);
		}
		job->next = j->finished;
		j->finished = job;
		event_active(j->wake, EV_READ, 0);
	}
	pthread_mutex_unlock(&j->mu);
	return NULL;
}

static void
run_finished(struct vmf_jobs *j)
{
	pthread_mutex_lock(&j->mu);
	struct job *list = j->finished;
	j->finished = NULL;
	pthread_mutex_unlock(&j->mu);
	/* In the order they finished: a line a job posted (vmf_jobs_post)
	 * comes before that job's done(). */
	struct job *rev = NULL;
	while (list) {
		struct job *n = list->next;
		list->next = rev;
		rev = list;
		list = n;
	}
	while (rev) {
		struct job *n = rev->next;
		/* Not pending any more once done() runs: done() may ask whether
		 * all work has finished. */
		if (rev->counted) {
			pthread_mutex_lock(&j->mu);
			j->pending--;
			pthread_mutex_unlock(&j->mu);
		}
		if (rev->done)
			rev->done(rev->arg);
		free(rev);
		rev = n;
	}
}

static void
wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	run_finished(arg);
}

struct vmf_jobs *
vmf_jobs_new(struct event_base *base, unsigned n, unsigned reserve)
{
	struct vmf_jobs *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->base = base;
	pthread_mutex_init(&j->mu, NULL);
	pthread_cond_init(&j->cv, NULL);
	j->high.tailp = &j->high.head;
	j->low.tailp = &j->low.head;
	j->pool_max = n > reserve ? n - reserve : 1;
	j->wake = event_new(base, -1, 0, wake_cb, j);
	j->threads = calloc(n, sizeof(*j->threads));
	if (!j->wake || !j->threads) {
		vmf_jobs_free(j);
		return NULL;
	}
	for (unsigned i = 0; i < n; i++) {
		if (pthread_create(&j->threads[i], NULL, worker, j) != 0)
			break;
		j->nthreads++;
	}
	if (j->nthreads == 0) {
		vmf_jobs_free(j);
		return NULL;
	}
	return j;
}

int
vmf_jobs_submit_class(struct vmf_jobs *j, enum vmf_job_class cls, vmf_job_fn work, vmf_job_fn done, void *arg)
{
	struct job *job = calloc(1, sizeof(*job));
	if (!job) {
		errno = ENOMEM;
		return -1;
	}
	job->work = work;
	job->done = done;
	job->arg = arg;
	job->cls = cls;
	job->counted = true;
	pthread_mutex_lock(&j->mu);
	queue_push(cls == VMF_JOB_POOL ? &j->low : &j->high, job);
	j->pending++;
	pthread_cond_signal(&j->cv);
	pthread_mutex_unlock(&j->mu);
	return 0;
}

int
vmf_jobs_submit(struct vmf_jobs *j, vmf_job_fn work, vmf_job_fn done, void *arg)
{
	return vmf_jobs_submit_class(j, VMF_JOB_INTERACTIVE, work, done, arg);
}

int
vmf_jobs_post(struct vmf_jobs *j, vmf_job_fn fn, void *arg)
{
	struct job *job = calloc(1, sizeof(*job));
	if (!job) {
		errno = ENOMEM;
		return -1;
	}
	job->done = fn;
	job->arg = arg;
	pthread_mutex_lock(&j->mu);
	job->next = j->finished;
	j->finished = job;
	event_active(j->wake, EV_READ, 0);
	pthread_mutex_unlock(&j->mu);
	return 0;
}

unsigned
vmf_jobs_pending(const struct vmf_jobs *j)
{
	pthread_mutex_lock((pthread_mutex_t *)&j->mu);
	unsigned n = j->pending;
	pthread_mutex_unlock((pthread_mutex_t *)&j->mu);
	return n;
}

void
vmf_jobs_free(struct vmf_jobs *j)
{
	if (!j)
		return;
	pthread_mutex_lock(&j->mu);
	j->stopping = true;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	for (unsigned i = 0; i < j->nthreads; i++)
		pthread_join(j->threads[i], NULL);
	run_finished(j);
	if (j->wake)
		event_free(j->wake);
	free(j->threads);
	pthread_mutex_destroy(&j->mu);
	pthread_cond_destroy(&j->cv);
	free(j);
}
