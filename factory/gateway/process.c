/* process.Process (envd's spec/envd/process/process.proto) on the guest
 * agent's exec.  Start runs the command on the sandbox's agent connection
 * and streams start {pid}, data {stdout|stderr|pty} and end {exitCode,
 * exited, status}.  A process lives as long as that connection (until the
 * sandbox is paused or killed, or the gateway stops): a client that goes
 * away leaves it running, its output dropped.  The pid E2B sees is the
 * agent's exec id (the library does not return the guest pid).
 *
 * The methods that act on a running process by pid (List, Connect,
 * SendInput, SendSignal, CloseStdin, Update, StreamInput) wait for the
 * agent's process table: each has its row in the table below. */
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

static void
strv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

static const char *
code_for_errno(int e)
{
	switch (e) {
	case ENOENT: case ENOTDIR: case EINVAL: case E2BIG: case EACCES: return "invalid_argument";
	case EAGAIN: return "resource_exhausted";
	case EPERM: return "permission_denied";
	case ETIMEDOUT: return "deadline_exceeded";
	default: return "unavailable";
	}
}

/* ---- the stream's owner: a client's pace holds the sandbox's reading ---- */

static void
on_drain(void *arg)
{
	struct gw_proc *p = arg;
	gw_guest_unhold(p->sb);
}

static void
on_gone(void *arg)
{
	struct gw_proc *p = arg;
	p->stream = NULL;
	gw_guest_unhold(p->sb);
}

static void
own_stream(struct gw_proc *p)
{
	struct gw_stream_owner o = { on_drain, on_gone, p };
	gw_stream_set_owner(p->stream, &o);
}

static json_object *
event(const char *kind, json_object *body)
{
	json_object *e = json_object_new_object(), *m = json_object_new_object();
	json_object_object_add(e, kind, body);
	json_object_object_add(m, "event", e);
	return m;
}

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
		const char *msg = g->job.rc < 0 ? g->job.err.msg : "the sandbox was killed";
		if (p->stream)
			gw_rpc_end(p->stream, code_for_errno(e), "cannot start %s: %s", s->argv[0], msg);
		proc_free(p);
	} else {
		p->exec_id = s->exec_id;
		p->pid = (uint32_t)s->exec_id;
		p->next = gg->procs;
		gg->procs = p;
		gg->n_procs++;
		if (p->stream) {
			json_object *st = json_object_new_object();
			json_object_object_add(st, "pid", json_object_new_int64(p->pid));
			gw_rpc_send(p->stream, event("start", st));
		}
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

/* The sandbox's user, its envVars, then the request's envs (the last of
 * a name wins in the agent). */
static char **
build_env(struct gw_sandbox *sb, const struct gw_user *u, json_object *envs, char *why, size_t n)
{
	size_t cap = 8 + (size_t)json_object_object_length(sb->env_vars) +
		     (envs ? (size_t)json_object_object_length(envs) : 0), i = 0;
	char **env = calloc(cap + 1, sizeof(char *));
	if (!env) {
		snprintf(why, n, "out of memory");
		return NULL;
	}
	env[i++] = kv("HOME", u->home);
	env[i++] = kv("USER", u->name);
	env[i++] = kv("LOGNAME", u->name);
	json_object_object_foreach(sb->env_vars, k1, v1) env[i++] = kv(k1, json_object_get_string(v1));
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
	char **env = build_env(sb, &u, envs, why, sizeof(why));
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
	s->o.set_user = !u.root;
	s->o.uid = u.uid;
	s->o.gid = u.gid;
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
	p->stream = gw_rpc_stream_open(r, ka);
	if (p->stream)
		own_stream(p);
	if (gw_guest_run(gw, sb, &s->g) < 0) {
		s->g.job.rc = vmf_err(&s->g.job.err, EAGAIN, "too many requests wait in the gateway");
		s->g.job.sb = sb;
		start_after(&s->g);
	}
	(void)gw;
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
		if (!p->stream)
			return;
		char *b64 = malloc(4 * ((ev->len + 2) / 3) + 1);
		if (!b64)
			return;
		EVP_EncodeBlock((unsigned char *)b64, ev->data, (int)ev->len);
		json_object *d = json_object_new_object();
		json_object_object_add(d, p->pty ? "pty" : ev->fd == 2 ? "stderr" : "stdout",
				       json_object_new_string(b64));
		free(b64);
		gw_rpc_send(p->stream, event("data", d));
		if (gw_stream_pending(p->stream) >= GW_STREAM_HIGH && !sb->guest.held) {
			sb->guest.held = true;
			if (sb->guest.rd)
				event_del(sb->guest.rd);
		}
		return;
	}
	/* The exit, after all of its output. */
	unlink_proc(sb, p);
	if (p->stream) {
		if (ev->timed_out) {
			gw_rpc_end(p->stream, "deadline_exceeded", "the command ran longer than %u ms "
				   "(Connect-Timeout-Ms) and was killed", p->timeout_ms);
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
			gw_rpc_send(p->stream, event("end", e));
			gw_rpc_end(p->stream, NULL, NULL);
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
		if (p->stream)
			gw_rpc_end(p->stream, code, "%s", msg);
		proc_free(p);
	}
	sb->guest.n_procs = 0;
}

/* ---- the service's methods ---- */

#define LATER "the guest agent's process table (processes that outlive their connection, by pid or tag)"

const struct gw_rpc_method gw_process_methods[] = {
	{ "process.Process/Start", true, do_start, NULL },
	{ "process.Process/Connect", true, NULL, LATER },
	{ "process.Process/List", false, NULL, LATER },
	{ "process.Process/SendInput", false, NULL, LATER },
	{ "process.Process/StreamInput", false, NULL, LATER },
	{ "process.Process/SendSignal", false, NULL, LATER },
	{ "process.Process/CloseStdin", false, NULL, LATER },
	{ "process.Process/Update", false, NULL, LATER },
	{ NULL, false, NULL, NULL },
};
