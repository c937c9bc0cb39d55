/* common/jobs.c: the order in which queued jobs start (interactive before
 * pool work, one worker kept free of clone work) and callbacks posted from
 * a worker to the loop.  Jobs here block on gates the test opens. */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "frame.h"
#include "jobs.h"
#include "testlib.h"
#include "util.h"

#define WAIT_MS 20000

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

struct tjob {
	const char *name;
	bool pool_work;
	bool gated;          /* waits until open */
	bool open, started, finished;
};

static const char *order[16];
static unsigned n_order, pool_now, pool_most;

static void
reset(void)
{
	n_order = pool_now = pool_most = 0;
}

static void
tjob_work(void *arg)
{
	struct tjob *t = arg;
	pthread_mutex_lock(&mu);
	order[n_order++ % 16] = t->name;
	t->started = true;
	if (t->pool_work && ++pool_now > pool_most)
		pool_most = pool_now;
	pthread_cond_broadcast(&cv);
	while (t->gated && !t->open)
		pthread_cond_wait(&cv, &mu);
	if (t->pool_work)
		pool_now--;
	t->finished = true;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static void
submit(struct vmf_jobs *j, enum vmf_job_class cls, struct tjob *t, const char *name, bool gated)
{
	memset(t, 0, sizeof(*t));
	t->name = name;
	t->gated = gated;
	t->pool_work = cls == VMF_JOB_POOL;
	ck_assert_int_eq(vmf_jobs_submit_class(j, cls, tjob_work, NULL, t), 0);
}

/* Waits (under mu) until *flag, failing after WAIT_MS. */
static void
wait_for(bool *flag, const char *what)
{
	int64_t deadline = vmf_now_ms() + WAIT_MS;
	pthread_mutex_lock(&mu);
	while (!*flag && vmf_now_ms() < deadline) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&cv, &mu, &ts);
	}
	bool ok = *flag;
	pthread_mutex_unlock(&mu);
	ck_assert_msg(ok, "%s did not happen within %d ms", what, WAIT_MS);
}

static void
open_gate(struct tjob *t)
{
	pthread_mutex_lock(&mu);
	t->open = true;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static bool
started(struct tjob *t)
{
	pthread_mutex_lock(&mu);
	bool s = t->started;
	pthread_mutex_unlock(&mu);
	return s;
}

static unsigned
position(const char *name)
{
	for (unsigned i = 0; i < n_order; i++)
		if (!strcmp(order[i], name))
			return i;
	ck_abort_msg("%s never started", name);
	return 0;
}

static struct event_base *
new_base(void)
{
	evthread_use_pthreads();
	struct event_base *b = event_base_new();
	ck_assert_ptr_nonnull(b);
	return b;
}

/* Both workers busy; then pool work and two hand-outs are queued in that
 * order.  Once the workers are free the hand-outs start first, and pool
 * work runs one job at a time (one worker is reserved).  The hand-outs
 * are gated too: a worker records a job's start some time after it took
 * it, so the order of records alone would race (another worker may take
 * and record a later job first); a hand-out that both workers hold proves
 * they took the hand-outs before any pool work. */
START_TEST(interactive_jobs_start_before_pool_work)
{
	struct event_base *b = new_base();
	struct vmf_jobs *j = vmf_jobs_new(b, 2, 1);
	ck_assert_ptr_nonnull(j);
	reset();
	struct tjob g1, g2, p1, p2, i1, i2;
	submit(j, VMF_JOB_INTERACTIVE, &g1, "gate1", true);
	submit(j, VMF_JOB_INTERACTIVE, &g2, "gate2", true);
	wait_for(&g1.started, "gate1 starting");
	wait_for(&g2.started, "gate2 starting");
	submit(j, VMF_JOB_POOL, &p1, "pool1", false);
	submit(j, VMF_JOB_POOL, &p2, "pool2", false);
	submit(j, VMF_JOB_INTERACTIVE, &i1, "handout1", true);
	submit(j, VMF_JOB_INTERACTIVE, &i2, "handout2", true);
	ck_assert_uint_eq(vmf_jobs_pending(j), 6);
	open_gate(&g1);
	open_gate(&g2);
	wait_for(&i1.started, "handout1 starting");
	wait_for(&i2.started, "handout2 starting");
	ck_assert_msg(!started(&p1) && !started(&p2), "pool work started before the hand-outs queued after it");
	open_gate(&i1);
	open_gate(&i2);
	wait_for(&p2.finished, "pool2 finishing");
	pthread_mutex_lock(&mu);
	unsigned pool1 = position("pool1"), pool2 = position("pool2");
	unsigned most = pool_most;
	pthread_mutex_unlock(&mu);
	ck_assert_uint_lt(pool1, pool2);
	ck_assert_uint_eq(most, 1);
	vmf_jobs_free(j);
	event_base_free(b);
}
END_TEST

/* Pool work holds every worker it may (all but the reserved one): hand-outs
 * queued behind more pool work still run at once. */
START_TEST(reserved_workers_stay_free_of_pool_work)
{
	struct event_base *b = new_base();
	struct vmf_jobs *j = vmf_jobs_new(b, 3, 1);
	ck_assert_ptr_nonnull(j);
	reset();
	struct tjob p[4], i1, i2;
	char names[4][8];
	for (int k = 0; k < 4; k++) {
		snprintf(names[k], sizeof names[k], "pool%d", k);
		submit(j, VMF_JOB_POOL, &p[k], names[k], true);
	}
	wait_for(&p[0].started, "pool0 starting");
	wait_for(&p[1].started, "pool1 starting");
	submit(j, VMF_JOB_INTERACTIVE, &i1, "handout1", true);
	wait_for(&i1.started, "a hand-out behind blocked pool work starting");
	/* All three workers busy now; pool work still may not grow. */
	open_gate(&i1);
	wait_for(&i1.finished, "the hand-out finishing");
	submit(j, VMF_JOB_INTERACTIVE, &i2, "handout2", false);
	wait_for(&i2.finished, "a second hand-out finishing");
	ck_assert(!started(&p[2]));
	open_gate(&p[0]);
	wait_for(&p[2].started, "pool2 starting once pool0 is done");
	ck_assert(!started(&p[3]));
	for (int k = 1; k < 4; k++)
		open_gate(&p[k]);
	wait_for(&p[3].finished, "pool3 finishing");
	pthread_mutex_lock(&mu);
	unsigned most = pool_most;
	pthread_mutex_unlock(&mu);
	ck_assert_uint_eq(most, 2);
	vmf_jobs_free(j);
	event_base_free(b);
}
END_TEST

struct posted {
	pthread_t loop;
	bool on_loop, ran;
	int done_runs;
};

static void
posted_cb(void *arg)
{
	struct posted *p = arg;
	p->on_loop = pthread_equal(pthread_self(), p->loop);
	p->ran = true;
}

static struct vmf_jobs *post_jobs;

static void
post_work(void *arg)
{
	ck_assert_int_eq(vmf_jobs_post(post_jobs, posted_cb, arg), 0);
}

static void
post_done(void *arg)
{
	struct posted *p = arg;
	p->done_runs++;
}

/* A callback a worker posts runs on the loop thread, and is not pending. */
START_TEST(posted_callbacks_run_on_the_loop)
{
	struct event_base *b = new_base();
	struct vmf_jobs *j = vmf_jobs_new(b, 2, 1);
	ck_assert_ptr_nonnull(j);
	post_jobs = j;
	struct posted p = { .loop = pthread_self() };
	ck_assert_int_eq(vmf_jobs_submit_class(j, VMF_JOB_POOL, post_work, post_done, &p), 0);
	int64_t deadline = vmf_now_ms() + WAIT_MS;
	while ((!p.ran || p.done_runs == 0) && vmf_now_ms() < deadline) {
		event_base_loop(b, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		poll(NULL, 0, 5);
	}
	ck_assert(p.ran);
	ck_assert(p.on_loop);
	ck_assert_int_eq(p.done_runs, 1);
	ck_assert_uint_eq(vmf_jobs_pending(j), 0);
	vmf_jobs_free(j);
	event_base_free(b);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("jobs");
	TCase *tc = tcase_create("jobs");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, interactive_jobs_start_before_pool_work);
	tcase_add_test(tc, reserved_workers_stay_free_of_pool_work);
	tcase_add_test(tc, posted_callbacks_run_on_the_loop);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
