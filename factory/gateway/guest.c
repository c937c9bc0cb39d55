/* A sandbox's guest agent connection.  A QEMU guest's agent port serves
 * one host connection at a time, so the gateway holds one per sandbox and
 * runs every process of the sandbox on it (the agent multiplexes them).
 *
 * The loop reads its events without blocking (the library's next-event
 * call with no wait) and hands them to process.c.  The library's calls
 * that wait for an answer (connect, exec start, signal) run as jobs on the
 * sandbox; while one runs the loop keeps off the connection, and the
 * library keeps what arrives meanwhile (bounded by the agent's output
 * windows) for the loop to read after.  When a client's stream is full,
 * reading stops: the agent's windows then hold the processes back, and
 * nothing grows; the client that reads nothing is dropped by the HTTP
 * server's idle timeout, and reading resumes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "gw.h"
#include "log.h"

struct guest_arg {
	struct gw *gw;
	struct gw_sandbox *sb;
};

/* Events a sandbox gets per turn of the loop: a guest that writes as fast
 * as it is read (nobody listening, its output dropped) must not keep the
 * loop from everything else. */
#define PUMP_BUDGET 64

static void
pump(struct gw *gw, struct gw_sandbox *sb)
{
	struct gw_guest *g = &sb->guest;
	for (unsigned n = 0; g->a && !g->busy && !g->held; n++) {
		if (n == PUMP_BUDGET) {
			/* A timer, not an activation: the loop polls for I/O
			 * before it runs. */
			struct timeval now = { 0, 0 };
			evtimer_add(g->pump, &now);
			break;
		}
		struct vmf_exec_event ev;
		struct vmf_error err;
		if (vmf_client_agent_next_event(g->a, &ev, 0, &err) < 0) {
			log_warn("sandbox %s: %s", sb->id, err.msg);
			char msg[1200];
			snprintf(msg, sizeof(msg), "the sandbox's guest agent connection ended: %s", err.msg);
			gw_guest_close(gw, sb, "unavailable", msg);
			return;
		}
		if (ev.type == VMF_EXEC_EV_NONE)
			break;
		if (ev.type == VMF_EXEC_EV_FILES)
			gw_watch_event(gw, sb, &ev);
		else
			gw_proc_event(gw, sb, &ev);
	}
	gw_guest_flush(gw, sb);
}

static void
on_read(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct guest_arg *ga = arg;
	pump(ga->gw, ga->sb);
}

static void
on_write(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct guest_arg *ga = arg;
	gw_guest_flush(ga->gw, ga->sb);
}

/* The events carry a guest_arg each; one allocation shared by them. */
static struct guest_arg *
arg_of(struct gw_guest *g)
{
	return g->pump ? event_get_callback_arg(g->pump) : NULL;
}

void
gw_guest_init(struct gw *gw, struct gw_sandbox *sb)
{
	(void)gw;
	memset(&sb->guest, 0, sizeof(sb->guest));
}

static void
free_events(struct gw_guest *g)
{
	struct guest_arg *ga = arg_of(g);
	if (g->rd)
		event_free(g->rd);
	if (g->wr)
		event_free(g->wr);
	if (g->pump)
		event_free(g->pump);
	free(ga);
	g->rd = g->wr = g->pump = NULL;
}

char **
gw_sb_env(const struct gw_sandbox *sb)
{
	size_t n = sb->env_vars ? (size_t)json_object_object_length(sb->env_vars) : 0, i = 0;
	char **v = calloc(n + 1, sizeof(char *));
	if (!v || !sb->env_vars)
		return v;
	json_object_object_foreach(sb->env_vars, k, val) {
		if (asprintf(&v[i], "%s=%s", k, json_object_get_string(val)) < 0) {
			v[i] = NULL;
			gw_strv_free(v);
			return NULL;
		}
		i++;
	}
	return v;
}

void
gw_strv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

/* The whole of a new connection's preparation: a guest that lists many
 * kept processes and answers each attach slowly holds its own sandbox's
 * job this long at most. */
#define PREPARE_MS 10000

static int
ms_left(int64_t deadline)
{
	int64_t left = deadline - vmf_now_ms();
	return left > 0 ? (int)left : 1;
}

int
gw_guest_prepare(struct vmf_client_agent *a, char *const *env, struct gw_adopted *ad, struct vmf_error *err)
{
	ad->v = NULL;
	ad->n = 0;
	int64_t deadline = vmf_now_ms() + PREPARE_MS;
	int r = vmf_client_agent_set_env(a, (const char *const *)env, PREPARE_MS, err);
	struct vmf_exec_entry *v;
	size_t n;
	if (r < 0 || (r = vmf_client_exec_list(a, &v, &n, ms_left(deadline), err)) < 0)
		return r;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t id;
		if (!v[i].keep || v[i].attached)
			continue;
		r = vmf_client_exec_attach(a, v[i].exec_id, 0, NULL, 0, &id, NULL, ms_left(deadline), err);
		/* Gone meanwhile, or taken by another connection: not ours. */
		if (r == -ESRCH || r == -EBUSY || r == -EALREADY)
			continue;
		if (r < 0) {
			free(v);
			return r;
		}
		v[k++] = v[i];
	}
	ad->v = v;
	ad->n = k;
	return 0;
}

void
gw_guest_attach(struct gw *gw, struct gw_sandbox *sb, struct vmf_client_agent *a, struct gw_adopted *ad)
{
	struct gw_guest *g = &sb->guest;
	struct gw_adopted none = { NULL, 0 };
	if (!ad)
		ad = &none;
	if (g->a) {
		vmf_client_agent_close(a);
		free(ad->v);
		ad->v = NULL;
		return;
	}
	for (size_t i = 0; i < ad->n; i++)
		gw_proc_adopt(sb, &ad->v[i]);
	free(ad->v);
	ad->v = NULL;
	ad->n = 0;
	struct guest_arg *ga = calloc(1, sizeof(*ga));
	if (!ga) {
		vmf_client_agent_close(a);
		return;
	}
	ga->gw = gw;
	ga->sb = sb;
	int fd = vmf_client_agent_fd(a);
	g->pump = event_new(gw->base, -1, 0, on_read, ga);
	g->rd = event_new(gw->base, fd, EV_READ | EV_PERSIST, on_read, ga);
	g->wr = event_new(gw->base, fd, EV_WRITE, on_write, ga);
	if (!g->pump || !g->rd || !g->wr) {
		if (!g->pump)
			free(ga);
		free_events(g);
		vmf_client_agent_close(a);
		return;
	}
	g->a = a;
	g->held = false;
	event_add(g->rd, NULL);
	event_active(g->pump, EV_TIMEOUT, 0);
}

void
gw_guest_close(struct gw *gw, struct gw_sandbox *sb, const char *code, const char *msg)
{
	struct gw_guest *g = &sb->guest;
	gw_proc_drop_all(gw, sb, code, msg);
	gw_watch_drop_all(gw, sb, code, msg);
	/* A job holds it: closed when the job is done (gw_guest_run). */
	if (g->busy)
		return;
	free_events(g);
	if (g->a)
		vmf_client_agent_close(g->a);
	g->a = NULL;
	g->held = false;
}

void
gw_guest_free(struct gw_sandbox *sb)
{
	struct gw_guest *g = &sb->guest;
	free_events(g);
	if (g->a)
		vmf_client_agent_close(g->a);
	g->a = NULL;
}

void
gw_guest_unhold(struct gw_sandbox *sb)
{
	struct gw_guest *g = &sb->guest;
	for (struct gw_proc *p = g->procs; p; p = p->next)
		if (gw_proc_full(p))
			return;
	if (!g->held)
		return;
	g->held = false;
	if (g->rd && !g->busy) {
		event_add(g->rd, NULL);
		event_active(g->pump, EV_TIMEOUT, 0);
	}
}

void
gw_guest_flush(struct gw *gw, struct gw_sandbox *sb)
{
	struct gw_guest *g = &sb->guest;
	if (!g->a || g->busy)
		return;
	struct vmf_error err;
	int r = vmf_client_agent_flush(g->a, &err);
	if (r < 0) {
		char msg[1200];
		snprintf(msg, sizeof(msg), "the sandbox's guest agent connection ended: %s", err.msg);
		gw_guest_close(gw, sb, "unavailable", msg);
	} else if (r > 0) {
		event_add(g->wr, NULL);
	}
}

/* ---- jobs on the connection ---- */

static void
gjob_start(struct gw_job *j)
{
	struct gw_guest_job *gj = (struct gw_guest_job *)j;
	struct gw_sandbox *sb = j->sb;
	if (sb->state != GW_SB_RUNNING) {
		j->cancelled = true;
		j->rc = vmf_err(&j->err, EHOSTDOWN, "sandbox %s is %s", sb->id,
				sb->state == GW_SB_PAUSED ? "paused" : "not running");
		return;
	}
	struct gw_guest *g = &sb->guest;
	gj->a = g->a;
	snprintf(gj->socket, sizeof(gj->socket), "%s", sb->agent_socket);
	snprintf(gj->transport, sizeof(gj->transport), "%s", sb->agent_transport);
	gj->vsock_port = sb->vsock_port;
	if (!g->a && !(gj->env = gw_sb_env(sb))) {
		j->cancelled = true;
		j->rc = vmf_err(&j->err, ENOMEM, "out of memory for sandbox %s's environment", sb->id);
		return;
	}
	g->busy = true;
	gj->holds = true;
	if (g->rd)
		event_del(g->rd);
	if (g->wr)
		event_del(g->wr);
}

static void
gjob_work(struct gw_job *j)
{
	struct gw_guest_job *gj = (struct gw_guest_job *)j;
	if (!gj->a) {
		j->rc = vmf_client_agent_connect(gj->socket, gj->transport, gj->vsock_port, 10000, NULL, NULL,
						 &gj->made, &j->err);
		if (j->rc == 0)
			j->rc = gw_guest_prepare(gj->made, gj->env, &gj->adopted, &j->err);
		if (j->rc < 0) {
			vmf_error_prefix(&j->err, "the sandbox's guest agent");
			vmf_client_agent_close(gj->made);
			gj->made = NULL;
			return;
		}
		gj->a = gj->made;
	}
	gj->fn(gj);
}

static void
gjob_done(struct gw_job *j)
{
	struct gw_guest_job *gj = (struct gw_guest_job *)j;
	struct gw *gw = j->gw;
	struct gw_sandbox *sb = j->sb;
	struct gw_guest *g = &sb->guest;
	bool was_busy = gj->holds;
	if (gj->holds)
		g->busy = false;
	struct vmf_client_agent *made = gj->made;
	gj->made = NULL;
	/* An error of the connection itself (not of the request) ends it. */
	bool broken = j->rc == -EPIPE || j->rc == -ECONNRESET || (j->rc == -ETIMEDOUT && gj->a);
	if (made)
		gw_guest_attach(gw, sb, made, &gj->adopted);
	free(gj->adopted.v);
	gw_strv_free(gj->env);
	gj->after(gj);
	if (was_busy && (sb->gone || sb->state != GW_SB_RUNNING || broken)) {
		gw_guest_close(gw, sb, "unavailable", broken ? "the sandbox's guest agent stopped answering"
			       : "the sandbox is not running");
		return;
	}
	if (g->rd && !g->held && !g->busy) {
		event_add(g->rd, NULL);
		event_active(g->pump, EV_TIMEOUT, 0);
	}
}

int
gw_guest_run(struct gw *gw, struct gw_sandbox *sb, struct gw_guest_job *gj)
{
	gj->job.sb = sb;
	gj->job.key = sb->key;
	gj->job.start = gjob_start;
	gj->job.work = gjob_work;
	gj->job.done = gjob_done;
	return gw_job_submit(gw, &gj->job);
}
