#include "jobs.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct job {
	vmf_job_fn work, done;
	void *arg;
	struct job *next;
};

struct vmf_jobs {
	struct event_base *base;
	struct event *wake;           /* activated by workers when jobs finish */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job *queue, *queue_tail;
	struct job *finished;
	unsigned pending;
	bool stopping;
	unsigned nthreads;
	pthread_t *threads;
};

static void *
worker(void *arg)
{
	struct vmf_jobs *j = arg;
	pthread_mutex_lock(&j->mu);
	for (;;) {
		while (!j->queue && !j->stopping)
			pthread_cond_wait(&j->cv, &j->mu);
		if (!j->queue && j->stopping)
			break;
		struct job *job = j->queue;
		j->queue = job->next;
		if (!j->queue)
			j->queue_tail = NULL;
		pthread_mutex_unlock(&j->mu);
		if (job->work)
			job->work(job->arg);
		pthread_mutex_lock(&j->mu);
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
	/* Completion order within a batch does not matter to callers, but keep
	 * it FIFO-ish for readable logs. */
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
		pthread_mutex_lock(&j->mu);
		j->pending--;
		pthread_mutex_unlock(&j->mu);
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
vmf_jobs_new(struct event_base *base, unsigned n)
{
	struct vmf_jobs *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->base = base;
	pthread_mutex_init(&j->mu, NULL);
	pthread_cond_init(&j->cv, NULL);
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
vmf_jobs_submit(struct vmf_jobs *j, vmf_job_fn work, vmf_job_fn done, void *arg)
{
	struct job *job = calloc(1, sizeof(*job));
	if (!job) {
		errno = ENOMEM;
		return -1;
	}
	job->work = work;
	job->done = done;
	job->arg = arg;
	pthread_mutex_lock(&j->mu);
	if (j->queue_tail)
		j->queue_tail->next = job;
	else
		j->queue = job;
	j->queue_tail = job;
	j->pending++;
	pthread_cond_signal(&j->cv);
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
