/* The gateway process: start-up (keys, state, the daemon, the HTTP
 * server), the loop and its one-second tick, shutdown on SIGTERM/SIGINT,
 * and the job scheduler every blocking call goes through. */
#include <errno.h>
#include <event2/thread.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway.h"
#include "gw.h"
#include "log.h"
#include "util.h"

#define WAITING_MAX 1024
#define DAEMON_CALL_MS 10000

int64_t
gw_now_ms(void)
{
	return vmf_realtime_ns() / 1000000;
}

/* ---- jobs ---- */

static void job_start(struct gw *gw, struct gw_job *j);

static bool
runnable(const struct gw *gw, const struct gw_job *j)
{
	if (j->sb && j->sb->job_running)
		return false;
	return !j->key || j->key->jobs < gw->key_job_cap;
}

/* The waiting jobs that may run now, in the order they came. */
static void
schedule(struct gw *gw)
{
	struct gw_job **pp = &gw->waiting;
	while (*pp) {
		struct gw_job *j = *pp;
		if (!runnable(gw, j)) {
			pp = &j->next;
			continue;
		}
		*pp = j->next;
		if (!*pp)
			gw->waiting_tail = pp;
		gw->n_waiting--;
		job_start(gw, j);
	}
}

static void
job_work(void *arg)
{
	struct gw_job *j = arg;
	if (!j->cancelled)
		j->work(j);
}

static void
job_done(void *arg)
{
	struct gw_job *j = arg;
	struct gw *gw = j->gw;
	struct gw_sandbox *sb = j->sb;
	struct gw_key *key = j->key;
	if (sb)
		sb->job_running = false;
	if (key)
		key->jobs--;
	j->done(j);
	if (sb)
		gw_sb_unref(gw, sb);
	schedule(gw);
}

static void
job_start(struct gw *gw, struct gw_job *j)
{
	if (j->sb) {
		j->sb->job_running = true;
		/* A sandbox killed meanwhile: the job's work has nothing to act on. */
		if (j->sb->gone) {
			j->cancelled = true;
			j->rc = vmf_err(&j->err, ENOENT, "sandbox %s was killed meanwhile", j->sb->id);
		}
	}
	if (!j->cancelled && j->start)
		j->start(j);
	if (j->key)
		j->key->jobs++;
	if (j->cancelled) {
		job_done(j);
		return;
	}
	if (vmf_jobs_submit(gw->jobs, job_work, job_done, j) < 0) {
		j->cancelled = true;
		vmf_err(&j->err, ENOMEM, "out of memory for a job");
		j->rc = -ENOMEM;
		job_done(j);
	}
}

int
gw_job_submit(struct gw *gw, struct gw_job *j)
{
	j->gw = gw;
	j->next = NULL;
	if (gw->n_waiting >= WAITING_MAX)
		return -EAGAIN;
	if (j->sb)
		gw_sb_ref(j->sb);
	*gw->waiting_tail = j;
	gw->waiting_tail = &j->next;
	gw->n_waiting++;
	schedule(gw);
	return 0;
}

/* ---- the loop ---- */

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	gw_lease_tick(arg);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	struct gw *gw = arg;
	if (gw->stopping) {
		log_warn("second signal %d: stopping now", (int)sig);
		event_base_loopbreak(gw->base);
		return;
	}
	if (sig == SIGHUP) {
		log_info("SIGHUP: the keys file is read at start only; restart the gateway to read it again");
		return;
	}
	log_info("signal %d: stopping (new requests are refused; jobs in flight finish)", (int)sig);
	gw->stopping = true;
	event_base_loopexit(gw->base, NULL);
}

/* The sandbox dir: the gateway's own, made if missing, never a link. */
static int
own_dir(struct gw *gw, struct vmf_error *err)
{
	const char *d = gw->o.sandbox_dir;
	if (d[0] != '/')
		return vmf_err(err, EINVAL, "sandbox dir %s is not an absolute path", d);
	if (mkdir(d, 0700) < 0 && errno != EEXIST)
		return vmf_err_sys(err, errno, "cannot create the sandbox dir %s (it must lie below one of the "
				   "daemon's sandbox roots, in a directory this user may write)", d);
	struct stat st;
	if (lstat(d, &st) < 0)
		return vmf_err_sys(err, errno, "cannot examine the sandbox dir %s", d);
	if (!S_ISDIR(st.st_mode))
		return vmf_err(err, ENOTDIR, "sandbox dir %s is not a directory", d);
	if (st.st_uid != gw->uid)
		return vmf_err(err, EACCES, "sandbox dir %s belongs to uid %u, not to this user (%u): the daemon makes "
			       "links only in a client's own directories", d, (unsigned)st.st_uid, (unsigned)gw->uid);
	return 0;
}

/* Jobs not started yet end as refused (their done callbacks answer their
 * requests), then the running ones finish: their replies still have a
 * server to go out on. */
static void
jobs_stop(struct gw *gw)
{
	while (gw->waiting) {
		struct gw_job *j = gw->waiting;
		gw->waiting = j->next;
		gw->n_waiting--;
		j->cancelled = true;
		j->rc = vmf_err(&j->err, ESHUTDOWN, "the gateway is shutting down; retry shortly");
		struct gw_sandbox *sb = j->sb;
		j->done(j);
		if (sb)
			gw_sb_unref(gw, sb);
	}
	gw->waiting_tail = &gw->waiting;
	if (gw->jobs)
		vmf_jobs_free(gw->jobs);
	gw->jobs = NULL;
}

static void
gw_free(struct gw *gw)
{
	jobs_stop(gw);
	gw_http_stop(gw);
	while (gw->sandboxes) {
		struct gw_sandbox *sb = gw->sandboxes;
		gw_guest_close(gw, sb, "unavailable", "the gateway stopped");
		gw_sb_remove(gw, sb);
	}
	if (gw->tick)
		event_free(gw->tick);
	if (gw->sigterm)
		event_free(gw->sigterm);
	if (gw->sigint)
		event_free(gw->sigint);
	if (gw->sighup)
		event_free(gw->sighup);
	if (gw->base)
		event_base_free(gw->base);
	gw_keys_free(&gw->keys);
}

int
vmf_gateway_run(const struct vmf_gateway_opts *o, void (*ready)(const char *addr), struct vmf_error *err)
{
	struct gw gw_, *gw = &gw_;
	memset(gw, 0, sizeof(*gw));
	gw->o = *o;
	gw->uid = getuid();
	gw->waiting_tail = &gw->waiting;
	gw->key_job_cap = o->workers / 2 ? o->workers / 2 : 1;
	/* The gateway is a tenant of the daemon: as root it would be trusted
	 * with every VM, and a fault of its own could reach other tenants'. */
	if (geteuid() == 0)
		return vmf_err(err, EPERM, "the gateway must not run as root: run it as an unprivileged user in the "
			       "daemon's group (docs/operations.md, \"The E2B gateway\")");
	if (!o->api_keys)
		return vmf_err(err, EINVAL, "no API keys file: give --api-keys FILE or [gateway] api_keys");
	signal(SIGPIPE, SIG_IGN);
	int r = gw_keys_load(&gw->keys, o->api_keys, err);
	if (r < 0)
		return r;
	if ((r = own_dir(gw, err)) < 0)
		goto out;
	if (evthread_use_pthreads() < 0 || !(gw->base = event_base_new())) {
		r = vmf_err(err, ENOMEM, "cannot create the event loop");
		goto out;
	}
	vmf_log_route_libevent();
	if ((r = gw_state_load(gw, err)) < 0)
		goto out;
	if ((r = gw_reconcile(gw, err)) < 0)
		goto out;
	gw->jobs = vmf_jobs_new(gw->base, o->workers, 0);
	if (!gw->jobs) {
		r = vmf_err(err, ENOMEM, "cannot start the worker threads");
		goto out;
	}
	if ((r = gw_http_start(gw, err)) < 0)
		goto out;
	struct timeval sec = { 1, 0 };
	gw->tick = event_new(gw->base, -1, EV_PERSIST, on_tick, gw);
	gw->sigterm = evsignal_new(gw->base, SIGTERM, on_signal, gw);
	gw->sigint = evsignal_new(gw->base, SIGINT, on_signal, gw);
	gw->sighup = evsignal_new(gw->base, SIGHUP, on_signal, gw);
	if (!gw->tick || !gw->sigterm || !gw->sigint || !gw->sighup || event_add(gw->tick, &sec) < 0 ||
	    event_add(gw->sigterm, NULL) < 0 || event_add(gw->sigint, NULL) < 0 || event_add(gw->sighup, NULL) < 0) {
		r = vmf_err(err, ENOMEM, "cannot set up the gateway's events");
		goto out;
	}
	log_info("listening on %s for the E2B API (%zu key%s, %u sandbox%s from before, daemon %s)",
		 gw_http_addr(gw), gw->keys.n, gw->keys.n == 1 ? "" : "s", gw->n_sandboxes,
		 gw->n_sandboxes == 1 ? "" : "es", o->socket);
	if (ready)
		ready(gw_http_addr(gw));
	event_base_dispatch(gw->base);
	/* Stopping: the work in flight finishes (its replies go out), then
	 * the state is written once more, with the loop's last view. */
	if (!event_base_got_break(gw->base)) {
		while (vmf_jobs_pending(gw->jobs) || gw->n_waiting || gw->state_writing)
			event_base_loop(gw->base, EVLOOP_ONCE);
	}
	gw_state_save_now(gw);
	r = 0;
out:
	gw_free(gw);
	return r;
}
