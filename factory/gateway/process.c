/* process.Process (envd's spec/envd/process/process.proto) on the guest
 * agent's exec.  Start runs the command on the sandbox's agent connection
 * and streams start {pid}, data {stdout|stderr|pty} and end {exitCode,
 * exited, status}.  A process lives as long as that connection (until the
 * sandbox is paused or killed, or the gateway stops): a client that goes
 * away leaves it running, its output dropped.  The pid E2B sees is the
 * agent's exec id (the library does not return the guest pid).
 *
 * The gateway's table of a sandbox's processes (pid, tag, config) serves
 * List and finds the process a call selects (pid or tag); Connect adds a
 * stream to the process's (up to GW_PROC_STREAMS: its output from then on
 * goes to each); SendInput, CloseStdin, SendSignal and Update are the
 * agent's ExecInput, ExecSignal and ExecResize, run as jobs on the
 * sandbox's connection.  StreamInput is a client stream, which the
 * gateway's HTTP/1.1 cannot take: answered unimplemented. */
#include <errno.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"
#include "log.h"

#define EXEC_START_MS 10000
#define PROCS_MAX 256

struct start_job {
	struct gw_guest_job g;
	struct gw_proc *p;
	char **argv, **env;
	char *cwd;
	struct vmf_exec_opts o;
	bool stdin_open;
	uint64_t exec_id;
};

static void
proc_free(struct gw_proc *p)
{
	if (p->config)
		json_object_put(p->config);
	free(p->tag);
	free(p);
}

#define strv_free gw_strv_free

static const char *
code_for_errno(int e)
{
	switch (e) {
	case ENOENT: case ENOTDIR: case EINVAL: case E2BIG: case EACCES: return "invalid_argument";
	case EAGAIN: return "resource_exhausted";
	case EPERM: return "permission_denied";
	case ETIMEDOUT: return "deadline_exceeded";
	case ESRCH: return "not_found";
	case EEXIST: return "already_exists";
	case ENOTTY: case ENOBUFS: return "failed_precondition";
	default: return "unavailable";
	}
}

/* ---- the stream's owner: a client's pace holds the sandbox's reading ---- */

static void
on_drain(void *arg)
{
	struct gw_listener *l = arg;
	gw_guest_unhold(l->p->sb);
}

static void
on_gone(void *arg)
{
	struct gw_listener *l = arg;
	l->s = NULL;
	gw_guest_unhold(l->p->sb);
}

/* The process's free stream slot with s in it; false when none is free. */
static bool
listen_on(struct gw_proc *p, struct gw_stream *s)
{
	for (int i = 0; i < GW_PROC_STREAMS; i++)
		if (!p->ls[i].s) {
			p->ls[i].p = p;
			p->ls[i].s = s;
			struct gw_stream_owner o = { on_drain, on_gone, &p->ls[i] };
			gw_stream_set_owner(s, &o);
			return true;
		}
	return false;
}

bool
gw_proc_full(const struct gw_proc *p)
{
	for (int i = 0; i < GW_PROC_STREAMS; i++)
		if (p->ls[i].s && gw_stream_pending(p->ls[i].s) >= GW_STREAM_HIGH)
			return true;
	return false;
}

/* Every stream of the process ends (code NULL: without error). */
static void
end_streams(struct gw_proc *p, const char *code, const char *msg)
{
	for (int i = 0; i < GW_PROC_STREAMS; i++)
		if (p->ls[i].s) {
			struct gw_stream *st = p->ls[i].s;
			p->ls[i].s = NULL;
			if (code)
				gw_rpc_end(st, code, "%s", msg);
			else
				gw_rpc_end(st, NULL, NULL);
		}
}

static void
send_all(struct gw_proc *p, json_object *msg)
{
	for (int i = 0; i < GW_PROC_STREAMS; i++)
		if (p->ls[i].s)
			gw_rpc_send(p->ls[i].s, json_object_get(msg));
	json_object_put(msg);
}

#define event gw_rpc_event

/* ---- Start ---- */

static void
start_fn(struct gw_guest_job *g)
{
	struct start_job *s = (struct start_job *)g;
	g->job.rc = vmf_client_exec_start(g->a, &s->o, &s->exec_id, EXEC_START_MS, &g->job.err);
}

static void
start_after(struct gw_guest_job *g)
{
	struct start_job *s = (struct start_job *)g;
	struct gw_sandbox *sb = g->job.sb;
	struct gw_proc *p = s->p;
	struct gw_guest *gg = &sb->guest;
	if (g->job.rc < 0 || sb->gone || !gg->a) {
		int e = g->job.rc < 0 ? -g->job.rc : ENOENT;
		char msg[1400];
		snprintf(msg, sizeof(msg), "cannot start %s: %s", s->argv[0],
			 g->job.rc < 0 ? g->job.err.msg : "the sandbox was killed");
		end_streams(p, code_for_errno(e), msg);
		proc_free(p);
	} else {
		p->exec_id = s->exec_id;
		p->pid = (uint32_t)s->exec_id;
		p->next = gg->procs;
		gg->procs = p;
		gg->n_procs++;
		json_object *st = json_object_new_object();
		json_object_object_add(st, "pid", json_object_new_int64(p->pid));
		send_all(p, event("start", st));
		/* No stdin asked for: the process reads end of file at once. */
		struct vmf_error err;
		if (!s->stdin_open && vmf_client_exec_input(gg->a, p->exec_id, "", 0, 1, &err) < 0)
			log_warn("sandbox %s: closing the stdin of %s: %s", sb->id, s->argv[0], err.msg);
	}
	strv_free(s->argv);
	strv_free(s->env);
	free(s->cwd);
	free(s);
}

static char *
kv(const char *k, const char *v)
{
	char *s;
	return asprintf(&s, "%s=%s", k, v) < 0 ? NULL : s;
}

/* An environment name as envd takes it: no '=' and no NUL. */
static bool
env_name_ok(const char *k)
{
	return *k && !strchr(k, '=');
}

/* The request's envs.  The user's login environment (HOME, USER, LOGNAME,
 * SHELL) and the sandbox's envVars (ExecSetEnv, when the connection was
 * made) are the agent's, under these. */
static char **
build_env(json_object *envs, char *why, size_t n)
{
	size_t cap = envs ? (size_t)json_object_object_length(envs) : 0, i = 0;
	char **env = calloc(cap + 1, sizeof(char *));
	if (!env) {
		snprintf(why, n, "out of memory");
		return NULL;
	}
	if (envs) {
		json_object_object_foreach(envs, k, v) {
			if (!json_object_is_type(v, json_type_string) || !env_name_ok(k)) {
				snprintf(why, n, "envs: '%.60s' is not a name with a string value", k);
				strv_free(env);
				return NULL;
			}
			env[i++] = kv(k, json_object_get_string(v));
		}
	}
	for (size_t k = 0; k < i; k++)
		if (!env[k]) {
			snprintf(why, n, "out of memory");
			strv_free(env);
			return NULL;
		}
	return env;
}

static void
do_start(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	json_object *proc, *args = NULL, *envs = NULL, *pty = NULL, *v;
	if (!json_object_object_get_ex(msg, "process", &proc) || !json_object_is_type(proc, json_type_object)) {
		gw_rpc_error(r, "invalid_argument", "process.Process/Start: no process given");
		return;
	}
	const char *cmd = gw_json_str(proc, "cmd"), *cwd = gw_json_str(proc, "cwd"), *tag = gw_json_str(msg, "tag");
	if (!cmd || !*cmd) {
		gw_rpc_error(r, "invalid_argument", "process.Process/Start: process.cmd is missing");
		return;
	}
	if ((json_object_object_get_ex(proc, "args", &args) && !json_object_is_type(args, json_type_array)) ||
	    (json_object_object_get_ex(proc, "envs", &envs) && !json_object_is_type(envs, json_type_object)) ||
	    (json_object_object_get_ex(msg, "pty", &pty) && !json_object_is_type(pty, json_type_object))) {
		gw_rpc_error(r, "invalid_argument", "process.Process/Start: args must be a list, envs and pty objects");
		return;
	}
	size_t nargs = args ? json_object_array_length(args) : 0;
	for (size_t i = 0; i < nargs; i++)
		if (!json_object_is_type(json_object_array_get_idx(args, i), json_type_string)) {
			gw_rpc_error(r, "invalid_argument", "process.Process/Start: args[%zu] is not a string", i);
			return;
		}
	if (sb->guest.n_procs >= PROCS_MAX) {
		gw_rpc_error(r, "resource_exhausted", "sandbox %s runs %d processes already", sb->id, PROCS_MAX);
		return;
	}
	struct gw_user u;
	char why[300];
	if (gw_envd_user(r, &u, why, sizeof(why)) < 0) {
		gw_rpc_error(r, "invalid_argument", "%s", why);
		return;
	}
	/* What E2B allows stdin for; false: end of file at once. */
	bool stdin_open = json_object_object_get_ex(msg, "stdin", &v) && json_object_get_boolean(v);
	const char *tmo = gw_req_header(r, "Connect-Timeout-Ms");
	unsigned long timeout = tmo ? strtoul(tmo, NULL, 10) : 0;

	struct start_job *s = calloc(1, sizeof(*s));
	struct gw_proc *p = calloc(1, sizeof(*p));
	char **argv = calloc(nargs + 2, sizeof(char *));
	char **env = build_env(envs, why, sizeof(why));
	if (!s || !p || !argv || !env) {
		free(s);
		free(p);
		strv_free(argv);
		strv_free(env);
		gw_rpc_error(r, env ? "internal" : "invalid_argument", "process.Process/Start: %s",
			     env ? "out of memory" : why);
		return;
	}
	argv[0] = strdup(cmd);
	for (size_t i = 0; i < nargs; i++)
		argv[i + 1] = strdup(json_object_get_string(json_object_array_get_idx(args, i)));
	/* A relative cwd is the user's home's, as in envd. */
	if (cwd && *cwd && cwd[0] != '/')
		asprintf(&s->cwd, "%s/%s", u.home, cwd);
	else
		s->cwd = strdup(cwd && *cwd ? cwd : u.home);
	s->p = p;
	s->argv = argv;
	s->env = env;
	s->stdin_open = stdin_open;
	s->o.argv = (const char *const *)argv;
	s->o.env = (const char *const *)env;
	s->o.cwd = s->cwd;
	/* Kept: the process outlives the gateway's connection (a pause, a
	 * restart), and the next connection adopts it. */
	s->o.keep = 1;
	s->o.tag = tag;
	s->o.user = u.name;
	s->o.timeout_ms = timeout > UINT32_MAX ? UINT32_MAX : (uint32_t)timeout;
	if (pty) {
		json_object *size, *c, *rw;
		s->o.tty = 1;
		if (json_object_object_get_ex(pty, "size", &size)) {
			if (json_object_object_get_ex(size, "cols", &c))
				s->o.cols = (uint32_t)json_object_get_int64(c);
			if (json_object_object_get_ex(size, "rows", &rw))
				s->o.rows = (uint32_t)json_object_get_int64(rw);
		}
	}
	p->sb = sb;
	p->pty = pty != NULL;
	p->timeout_ms = s->o.timeout_ms;
	p->tag = tag ? strdup(tag) : NULL;
	p->config = json_object_get(proc);
	s->g.fn = start_fn;
	s->g.after = start_after;
	json_object *ka = event("keepalive", json_object_new_object());
	struct gw_stream *stream = gw_rpc_stream_open(r, ka);
	if (stream)
		listen_on(p, stream);
	if (gw_guest_run(gw, sb, &s->g) < 0) {
		s->g.job.rc = vmf_err(&s->g.job.err, EAGAIN, "too many requests wait in the gateway");
		s->g.job.sb = sb;
		start_after(&s->g);
	}
	(void)gw;
}

static struct gw_proc *find(struct gw_sandbox *sb, uint64_t exec_id);

void
gw_proc_adopt(struct gw_sandbox *sb, const struct vmf_exec_entry *e)
{
	if (sb->guest.n_procs >= PROCS_MAX || e->exec_id > UINT32_MAX || find(sb, e->exec_id))
		return;
	struct gw_proc *p = calloc(1, sizeof(*p));
	json_object *config = json_object_new_object(), *args = json_object_new_array();
	const char *a = e->args;
	for (unsigned i = 0; i < e->nargs; i++, a += strlen(a) + 1)
		if (i)
			json_object_array_add(args, json_object_new_string(a));
	json_object_object_add(config, "cmd", json_object_new_string(e->nargs ? e->args : ""));
	json_object_object_add(config, "args", args);
	json_object_object_add(config, "envs", json_object_new_object());
	json_object_object_add(config, "cwd", json_object_new_string(e->cwd));
	if (!p) {
		json_object_put(config);
		return;
	}
	p->sb = sb;
	p->exec_id = e->exec_id;
	p->pid = (uint32_t)e->exec_id;
	p->tag = e->tag[0] ? strdup(e->tag) : NULL;
	p->config = config;
	p->pty = e->tty;
	p->next = sb->guest.procs;
	sb->guest.procs = p;
	sb->guest.n_procs++;
}

/* ---- the agent's events ---- */

static struct gw_proc *
find(struct gw_sandbox *sb, uint64_t exec_id)
{
	for (struct gw_proc *p = sb->guest.procs; p; p = p->next)
		if (p->exec_id == exec_id)
			return p;
	return NULL;
}

static void
unlink_proc(struct gw_sandbox *sb, struct gw_proc *p)
{
	for (struct gw_proc **pp = &sb->guest.procs; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			sb->guest.n_procs--;
			return;
		}
}

/* Go's names for the signals, as envd's status says them. */
static void
status_text(const struct vmf_exec_event *ev, char *out, size_t n)
{
	if (!ev->signal) {
		snprintf(out, n, "exit status %d", ev->exit_code);
		return;
	}
	const char *s = strsignal(ev->signal);
	char name[64];
	snprintf(name, sizeof(name), "%s", s ? s : "unknown signal");
	name[0] = (char)(name[0] >= 'A' && name[0] <= 'Z' ? name[0] - 'A' + 'a' : name[0]);
	snprintf(out, n, "signal: %s", name);
}

void
gw_proc_event(struct gw *gw, struct gw_sandbox *sb, const struct vmf_exec_event *ev)
{
	(void)gw;
	if (ev->type == VMF_EXEC_EV_ERROR) {
		/* ESRCH: stdin closed for a process that had exited already. */
		vmf_log_kv(ev->error_code == ESRCH ? VMF_LOG_DEBUG : VMF_LOG_WARN, __func__, NULL,
			   "sandbox %s: the agent refused a request: %s", sb->id, ev->message);
		return;
	}
	struct gw_proc *p = find(sb, ev->exec_id);
	if (!p)
		return;
	if (ev->type == VMF_EXEC_EV_OUTPUT) {
		bool any = false;
		for (int i = 0; i < GW_PROC_STREAMS; i++)
			any = any || p->ls[i].s;
		if (!any)
			return;
		char *b64 = malloc(4 * ((ev->len + 2) / 3) + 1);
		if (!b64)
			return;
		EVP_EncodeBlock((unsigned char *)b64, ev->data, (int)ev->len);
		json_object *d = json_object_new_object();
		json_object_object_add(d, p->pty ? "pty" : ev->fd == 2 ? "stderr" : "stdout",
				       json_object_new_string(b64));
		free(b64);
		send_all(p, event("data", d));
		if (gw_proc_full(p) && !sb->guest.held) {
			sb->guest.held = true;
			if (sb->guest.rd)
				event_del(sb->guest.rd);
		}
		return;
	}
	/* The exit, after all of its output. */
	unlink_proc(sb, p);
	{
		if (ev->timed_out) {
			char msg[200];
			snprintf(msg, sizeof(msg), "the command ran longer than %u ms (Connect-Timeout-Ms) and was killed",
				 p->timeout_ms);
			end_streams(p, "deadline_exceeded", msg);
		} else {
			char status[96];
			status_text(ev, status, sizeof(status));
			json_object *e = json_object_new_object();
			json_object_object_add(e, "exitCode", json_object_new_int(ev->signal ? -1 : ev->exit_code));
			json_object_object_add(e, "exited", json_object_new_boolean(ev->signal == 0));
			json_object_object_add(e, "status", json_object_new_string(status));
			/* As envd's (Go's exec error): the SDK's CommandExitError says it. */
			if (ev->signal || ev->exit_code)
				json_object_object_add(e, "error", json_object_new_string(status));
			send_all(p, event("end", e));
			end_streams(p, NULL, NULL);
		}
	}
	proc_free(p);
	gw_guest_unhold(sb);
}

void
gw_proc_drop_all(struct gw *gw, struct gw_sandbox *sb, const char *code, const char *msg)
{
	(void)gw;
	while (sb->guest.procs) {
		struct gw_proc *p = sb->guest.procs;
		sb->guest.procs = p->next;
		end_streams(p, code, msg);
		proc_free(p);
	}
	sb->guest.n_procs = 0;
}

/* ---- the methods on a running process ---- */

typedef void method_fn(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg);

/* A running sandbox without a connection to its agent (after a pause, a
 * gateway restart) may have kept processes in its guest: the call makes
 * the connection first, which adopts them, then runs. */
struct again_job {
	struct gw_guest_job g;
	struct gw *gw;
	struct gw_req *r;
	json_object *msg;
	method_fn *fn;
};

static void
connected(struct gw_guest_job *g)
{
	(void)g;
}

static void
again_after(struct gw_guest_job *g)
{
	struct again_job *a = (struct again_job *)g;
	struct gw_sandbox *sb = g->job.sb;
	if (g->job.rc < 0)
		gw_rpc_error(a->r, code_for_errno(-g->job.rc), "%s", g->job.err.msg);
	else if (sb->gone)
		gw_rpc_error(a->r, "not_found", "sandbox %s was killed", sb->id);
	else
		a->fn(a->gw, a->r, sb, a->msg);
	json_object_put(a->msg);
	free(a);
}

static bool
connect_first(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg, method_fn *fn)
{
	if (sb->guest.a || sb->state != GW_SB_RUNNING)
		return false;
	struct again_job *a = calloc(1, sizeof(*a));
	if (!a)
		return false;
	a->gw = gw;
	a->r = r;
	a->msg = json_object_get(msg);
	a->fn = fn;
	a->g.fn = connected;
	a->g.after = again_after;
	if (gw_guest_run(gw, sb, &a->g) < 0) {
		json_object_put(a->msg);
		free(a);
		return false;
	}
	gw_defer(r);
	return true;
}

/* The process a request's "process" selector ({pid} or {tag}) names;
 * NULL (and the request answered) when there is none. */
static struct gw_proc *
selected(struct gw_req *r, struct gw_sandbox *sb, json_object *msg, const char *method)
{
	json_object *sel, *v;
	if (!json_object_object_get_ex(msg, "process", &sel) || !json_object_is_type(sel, json_type_object)) {
		gw_rpc_error(r, "invalid_argument", "%s: no process selector (pid or tag) given", method);
		return NULL;
	}
	const char *tag = gw_json_str(sel, "tag");
	int64_t pid = json_object_object_get_ex(sel, "pid", &v) ? json_object_get_int64(v) : -1;
	if ((pid < 0) == (tag == NULL) || pid > UINT32_MAX) {
		gw_rpc_error(r, "invalid_argument", "%s: the process selector takes one of pid (a number) or tag", method);
		return NULL;
	}
	for (struct gw_proc *p = sb->guest.procs; p; p = p->next)
		if (tag ? p->tag && strcmp(p->tag, tag) == 0 : p->pid == (uint32_t)pid)
			return p;
	if (tag)
		gw_rpc_error(r, "not_found", "%s: no process with tag '%.64s' runs in sandbox %s", method, tag, sb->id);
	else
		gw_rpc_error(r, "not_found", "%s: no process with pid %lld runs in sandbox %s", method, (long long)pid,
			     sb->id);
	return NULL;
}

static void
do_list(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	if (connect_first(gw, r, sb, msg, do_list))
		return;
	json_object *list = json_object_new_array();
	for (struct gw_proc *p = sb->guest.procs; p; p = p->next) {
		json_object *pi = json_object_new_object();
		json_object_object_add(pi, "config", json_object_get(p->config));
		json_object_object_add(pi, "pid", json_object_new_int64(p->pid));
		if (p->tag)
			json_object_object_add(pi, "tag", json_object_new_string(p->tag));
		json_object_array_add(list, pi);
	}
	json_object *rep = json_object_new_object();
	json_object_object_add(rep, "processes", list);
	gw_rpc_reply(r, rep);
}

static void
do_connect(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	if (connect_first(gw, r, sb, msg, do_connect))
		return;
	struct gw_proc *p = selected(r, sb, msg, "process.Process/Connect");
	if (!p)
		return;
	int free_slots = 0;
	for (int i = 0; i < GW_PROC_STREAMS; i++)
		free_slots += !p->ls[i].s;
	if (!free_slots) {
		gw_rpc_error(r, "resource_exhausted", "process %u of sandbox %s has %d clients connected already",
			     p->pid, sb->id, GW_PROC_STREAMS);
		return;
	}
	struct gw_stream *s = gw_rpc_stream_open(r, event("keepalive", json_object_new_object()));
	if (!s)
		return;
	listen_on(p, s);
	json_object *st = json_object_new_object();
	json_object_object_add(st, "pid", json_object_new_int64(p->pid));
	gw_rpc_send(s, event("start", st));
}

/* SendInput, CloseStdin, SendSignal, Update: the agent's calls on the
 * sandbox's connection, as a job. */
enum op { OP_INPUT, OP_CLOSE, OP_SIGNAL, OP_RESIZE };

struct op_job {
	struct gw_guest_job g;
	struct gw_req *r;
	enum op op;
	uint64_t exec_id;
	uint32_t pid;
	uint8_t *data;
	size_t n;
	int sig;
	unsigned rows, cols;
};

static void
op_fn(struct gw_guest_job *g)
{
	struct op_job *o = (struct op_job *)g;
	struct vmf_error *err = &g->job.err;
	long took;
	switch (o->op) {
	case OP_INPUT:
	case OP_CLOSE:
		took = vmf_client_exec_input(g->a, o->exec_id, o->data, o->n, o->op == OP_CLOSE, err);
		if (took >= 0 && (size_t)took < o->n)
			took = vmf_err(err, ENOBUFS, "the process's stdin window has room for %ld of the %zu bytes "
				       "sent: send less at a time", took, o->n);
		g->job.rc = took < 0 ? (int)took : vmf_client_agent_flush(g->a, err) < 0 ? -EPIPE : 0;
		break;
	case OP_SIGNAL:
		g->job.rc = vmf_client_exec_signal(g->a, o->exec_id, o->sig, err);
		break;
	case OP_RESIZE:
		g->job.rc = vmf_client_exec_resize(g->a, o->exec_id, o->rows, o->cols, err);
		break;
	}
}

static void
op_after(struct gw_guest_job *g)
{
	struct op_job *o = (struct op_job *)g;
	static const char *const names[] = { "SendInput", "CloseStdin", "SendSignal", "Update" };
	if (g->job.rc < 0)
		gw_rpc_error(o->r, code_for_errno(-g->job.rc), "process.Process/%s on process %u: %s", names[o->op],
			     o->pid, g->job.err.msg);
	else
		gw_rpc_reply(o->r, json_object_new_object());
	free(o->data);
	free(o);
}

static void
run_op(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, struct op_job *o, const struct gw_proc *p)
{
	o->r = r;
	o->exec_id = p->exec_id;
	o->pid = p->pid;
	o->g.fn = op_fn;
	o->g.after = op_after;
	if (gw_guest_run(gw, sb, &o->g) < 0) {
		gw_rpc_error(r, "unavailable", "too many requests wait in the gateway; retry shortly");
		free(o->data);
		free(o);
		return;
	}
	gw_defer(r);
}

static struct op_job *
op_new(struct gw_req *r, enum op op)
{
	struct op_job *o = calloc(1, sizeof(*o));
	if (!o)
		gw_rpc_error(r, "internal", "out of memory");
	else
		o->op = op;
	return o;
}

static void
do_send_input(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	if (connect_first(gw, r, sb, msg, do_send_input))
		return;
	const char *m = "process.Process/SendInput";
	struct gw_proc *p = selected(r, sb, msg, m);
	if (!p)
		return;
	json_object *in;
	const char *b64 = NULL;
	if (json_object_object_get_ex(msg, "input", &in) && json_object_is_type(in, json_type_object))
		b64 = gw_json_str(in, p->pty ? "pty" : "stdin");
	if (!b64) {
		gw_rpc_error(r, "invalid_argument", "%s: input.%s (base64) is missing (process %u %s a terminal)", m,
			     p->pty ? "pty" : "stdin", p->pid, p->pty ? "has" : "has no");
		return;
	}
	size_t len = strlen(b64);
	struct op_job *o = op_new(r, OP_INPUT);
	if (!o)
		return;
	o->data = malloc(3 * (len / 4) + 3);
	int n = o->data ? EVP_DecodeBlock(o->data, (const unsigned char *)b64, (int)len) : -1;
	if (n < 0 || len % 4) {
		gw_rpc_error(r, "invalid_argument", "%s: the input is not base64", m);
		free(o->data);
		free(o);
		return;
	}
	/* EVP_DecodeBlock counts the padding as data. */
	if (len >= 2 && b64[len - 1] == '=')
		n -= b64[len - 2] == '=' ? 2 : 1;
	o->n = (size_t)n;
	run_op(gw, r, sb, o, p);
}

static void
do_close_stdin(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	if (connect_first(gw, r, sb, msg, do_close_stdin))
		return;
	struct gw_proc *p = selected(r, sb, msg, "process.Process/CloseStdin");
	struct op_job *o = p ? op_new(r, OP_CLOSE) : NULL;
	if (o)
		run_op(gw, r, sb, o, p);
}

static void
do_send_signal(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	if (connect_first(gw, r, sb, msg, do_send_signal))
		return;
	json_object *v;
	int sig = 0;
	if (json_object_object_get_ex(msg, "signal", &v)) {
		const char *name = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
		int64_t num = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : 0;
		if ((name && strcmp(name, "SIGNAL_SIGKILL") == 0) || num == SIGKILL)
			sig = SIGKILL;
		else if ((name && strcmp(name, "SIGNAL_SIGTERM") == 0) || num == SIGTERM)
			sig = SIGTERM;
	}
	if (!sig) {
		gw_rpc_error(r, "invalid_argument", "process.Process/SendSignal: signal must be SIGNAL_SIGKILL or "
			     "SIGNAL_SIGTERM");
		return;
	}
	struct gw_proc *p = selected(r, sb, msg, "process.Process/SendSignal");
	struct op_job *o = p ? op_new(r, OP_SIGNAL) : NULL;
	if (!o)
		return;
	o->sig = sig;
	run_op(gw, r, sb, o, p);
}

static void
do_update(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg)
{
	if (connect_first(gw, r, sb, msg, do_update))
		return;
	const char *m = "process.Process/Update";
	json_object *pty, *size, *c, *rw;
	if (!json_object_object_get_ex(msg, "pty", &pty) || !json_object_object_get_ex(pty, "size", &size) ||
	    !json_object_object_get_ex(size, "cols", &c) || !json_object_object_get_ex(size, "rows", &rw)) {
		gw_rpc_error(r, "invalid_argument", "%s: pty.size.cols and pty.size.rows are missing", m);
		return;
	}
	int64_t cols = json_object_get_int64(c), rows = json_object_get_int64(rw);
	if (cols < 1 || cols > 0xffff || rows < 1 || rows > 0xffff) {
		gw_rpc_error(r, "invalid_argument", "%s: a terminal of %lldx%lld is out of range (1 to 65535)", m,
			     (long long)cols, (long long)rows);
		return;
	}
	struct gw_proc *p = selected(r, sb, msg, m);
	if (p && !p->pty) {
		gw_rpc_error(r, "failed_precondition", "%s: process %u has no terminal to resize", m, p->pid);
		return;
	}
	struct op_job *o = p ? op_new(r, OP_RESIZE) : NULL;
	if (!o)
		return;
	o->rows = (unsigned)rows;
	o->cols = (unsigned)cols;
	run_op(gw, r, sb, o, p);
}

/* ---- the service's methods ---- */

const struct gw_rpc_method gw_process_methods[] = {
	{ "process.Process/Start", true, do_start, NULL },
	{ "process.Process/Connect", true, do_connect, NULL },
	{ "process.Process/List", false, do_list, NULL },
	{ "process.Process/SendInput", false, do_send_input, NULL },
	{ "process.Process/StreamInput", false, NULL,
	  "client streams over HTTP/2 (this gateway speaks HTTP/1.1: send SendInput calls in order)" },
	{ "process.Process/SendSignal", false, do_send_signal, NULL },
	{ "process.Process/CloseStdin", false, do_close_stdin, NULL },
	{ "process.Process/Update", false, do_update, NULL },
	{ NULL, false, NULL, NULL },
};
