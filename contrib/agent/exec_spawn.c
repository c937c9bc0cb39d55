/* ExecStart: a process started for a host, in its own session, with the
 * request's argv, environment, directory, user and terminal, its stdio on
 * non-blocking pipes (or a pty) that exec.c serves from the poll loop.
 * Each group started is noted in the exec ledger (exec_ledger.c).  In test
 * mode processes run on the host as the test's user. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exec.h"

/* What failed in the child before exec, sent back on the error pipe. */
enum { STEP_PTY = 1, STEP_CWD, STEP_GROUPS, STEP_GID, STEP_UID, STEP_EXEC };

struct child_error {
	int step;
	int err;
};

/* Who a process runs as and where it starts: the request's, or its named
 * user's from the guest's /etc/passwd. */
struct run_as {
	bool set_user;
	uint32_t uid, gid;
	char name[64], home[PATH_MAX], shell[PATH_MAX];
	const char *cwd;
};

struct child_args {
	const Vmf__Agent__ExecStart *x;
	const struct run_as *ra;
	char **argv, **env;
	const char *path;            /* the environment's PATH */
	const char *slave;           /* a tty's, or NULL */
	int errfd, in, out, errout;
};

/* Test builds: VMFACTORY_FAULT=name kills the agent at that point, as a
 * crash would. */
static void
fault_point(const char *name)
{
#ifdef VMF_FAULT_INJECTION
	const char *want = getenv("VMFACTORY_FAULT");
	if (want && !strcmp(want, name)) {
		logmsg("fault injection: killing myself at %s", name);
		kill(getpid(), SIGKILL);
	}
#else
	(void)name;
#endif
}

static void
set_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* The guest's /etc/passwd entry of name, read without NSS (the agent is
 * static): false when there is none. */
static bool
lookup_user(const char *name, struct run_as *ra)
{
	FILE *f = fopen("/etc/passwd", "re");
	struct passwd *pw;
	bool found = false;
	while (f && !found && (pw = fgetpwent(f)))
		if (!strcmp(pw->pw_name, name)) {
			found = true;
			ra->set_user = true;
			ra->uid = pw->pw_uid;
			ra->gid = pw->pw_gid;
			snprintf(ra->name, sizeof(ra->name), "%s", pw->pw_name);
			snprintf(ra->home, sizeof(ra->home), "%s", pw->pw_dir);
			snprintf(ra->shell, sizeof(ra->shell), "%s", pw->pw_shell);
		}
	if (f)
		fclose(f);
	return found;
}

/* Sets (or replaces) kv in env, which has n entries; the new count. */
static size_t
env_put(char **env, size_t n, char *kv)
{
	const char *eq = strchr(kv, '=');
	size_t k = 0;
	while (k < n && !(strncmp(env[k], kv, (size_t)(eq - kv) + 1) == 0))
		k++;
	env[k] = kv;
	return k == n ? n + 1 : n;
}

/* The environment a process starts with: a usable default, the named
 * user's login environment, the sandbox's (ExecSetEnv), then the request's
 * KEY=VALUE entries (a key given twice: the last wins).  login holds the
 * user's strings. */
static char **
build_env(const Vmf__Agent__ExecStart *x, const struct run_as *ra, char login[4][PATH_MAX + 16],
	  struct agent_call *call)
{
	static const char *const defaults[] = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
						"HOME=/root", "TERM=xterm" };
	size_t nd = sizeof(defaults) / sizeof(defaults[0]), ns = 0;
	char *const *senv = exec_sandbox_env();
	while (senv[ns])
		ns++;
	char **env = calloc(nd + 4 + ns + x->n_env + 1, sizeof(char *));
	if (!env) {
		reply_error(call, ENOMEM, "out of memory for the environment");
		return NULL;
	}
	size_t n = 0;
	for (size_t i = 0; i < nd; i++)
		env[n++] = (char *)defaults[i];
	if (ra->name[0]) {
		snprintf(login[0], PATH_MAX + 16, "HOME=%s", ra->home);
		snprintf(login[1], PATH_MAX + 16, "USER=%s", ra->name);
		snprintf(login[2], PATH_MAX + 16, "LOGNAME=%s", ra->name);
		snprintf(login[3], PATH_MAX + 16, "SHELL=%s", ra->shell[0] ? ra->shell : "/bin/sh");
		for (int i = 0; i < 4; i++)
			n = env_put(env, n, login[i]);
	}
	for (size_t i = 0; i < ns; i++)
		n = env_put(env, n, senv[i]);
	for (size_t i = 0; i < x->n_env; i++) {
		const char *kv = x->env[i], *eq = strchr(kv, '=');
		if (!eq || eq == kv) {
			reply_error(call, EINVAL, "environment entry '%.60s' is not KEY=VALUE", kv);
			free(env);
			return NULL;
		}
		n = env_put(env, n, (char *)kv);
	}
	env[n] = NULL;
	return env;
}

/* execvp without touching environ (the child shares the agent's memory):
 * argv[0] in each PATH entry, the first EACCES kept as execvp does. */
static int
exec_path(const struct child_args *c)
{
	const char *cmd = c->argv[0];
	if (strchr(cmd, '/')) {
		execve(cmd, c->argv, c->env);
		return errno;
	}
	int err = ENOENT;
	size_t clen = strlen(cmd);
	for (const char *p = c->path; ; p++) {
		const char *end = strchr(p, ':');
		size_t dlen = end ? (size_t)(end - p) : strlen(p);
		char full[PATH_MAX];
		if (dlen + 1 + clen < sizeof(full)) {
			memcpy(full, dlen ? p : ".", dlen ? dlen : 1);
			size_t n = dlen ? dlen : 1;
			full[n] = '/';
			memcpy(full + n + 1, cmd, clen + 1);
			execve(full, c->argv, c->env);
			if (errno == EACCES)
				err = EACCES;
			else if (errno != ENOENT && errno != ENOTDIR && err != EACCES)
				err = errno;
		}
		if (!end)
			break;
		p = end;
	}
	return err;
}

/* The child's side: never returns.  It runs in the agent's memory until
 * exec (clone with CLONE_VM | CLONE_VFORK, as posix_spawn does): no page
 * is copied, which under TCG is most of a fork's cost in a fresh clone.  So
 * it writes no global and allocates nothing.  Signals the agent blocks
 * (for its signalfd) or ignores (SIGPIPE) are back to normal for the
 * program. */
static int
child_exec(void *arg)
{
	const struct child_args *c = arg;
	const struct run_as *ra = c->ra;
	int in = c->in, out = c->out, errout = c->errout;
	struct child_error ce = { 0, 0 };
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigaction(SIGPIPE, &dfl, NULL);
	setsid();
	if (c->slave) {
		int s = open(c->slave, O_RDWR);
		if (s < 0 || ioctl(s, TIOCSCTTY, 0) < 0) {
			ce = (struct child_error){ STEP_PTY, errno };
			goto failed;
		}
		in = out = errout = s;
	}
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(errout, 2) < 0) {
		ce = (struct child_error){ STEP_PTY, errno };
		goto failed;
	}
	if (chdir(ra->cwd) < 0) {
		ce = (struct child_error){ STEP_CWD, errno };
		goto failed;
	}
	if (ra->set_user) {
		if (setgroups(0, NULL) < 0 && errno != EPERM) {
			ce = (struct child_error){ STEP_GROUPS, errno };
			goto failed;
		}
		if (setgid(ra->gid) < 0) {
			ce = (struct child_error){ STEP_GID, errno };
			goto failed;
		}
		if (setuid(ra->uid) < 0) {
			ce = (struct child_error){ STEP_UID, errno };
			goto failed;
		}
	}
	ce = (struct child_error){ STEP_EXEC, exec_path(c) };
failed:
	while (write(c->errfd, &ce, sizeof(ce)) < 0 && errno == EINTR)
		;
	_exit(127);
}

/* The sentence for a child's failure, naming what it was given. */
static void
child_failure(struct agent_call *call, const Vmf__Agent__ExecStart *x, const struct run_as *ra,
	      const struct child_error *ce, const char *path)
{
	const char *e = strerror(ce->err);
	switch (ce->step) {
	case STEP_PTY:
		reply_error(call, ce->err, "cannot set up the terminal of '%s': %s", x->argv[0], e);
		break;
	case STEP_CWD:
		reply_error(call, ce->err, "cannot change to directory '%s': %s", ra->cwd, e);
		break;
	case STEP_GROUPS:
	case STEP_GID:
		reply_error(call, ce->err, "cannot switch to group id %u: %s", ra->gid, e);
		break;
	case STEP_UID:
		reply_error(call, ce->err, "cannot switch to user id %u: %s", ra->uid, e);
		break;
	default:
		if (ce->err == ENOENT && !strchr(x->argv[0], '/'))
			reply_error(call, ENOENT, "cannot run '%s': no such command in PATH (%s)", x->argv[0], path);
		else if (ce->err == ENOENT)
			reply_error(call, ENOENT, "cannot run '%s': no such file", x->argv[0]);
		else
			reply_error(call, ce->err, "cannot run '%s': %s", x->argv[0], e);
		break;
	}
}

/* The guest's /init mounts no devpts; the first tty needs one.  Never in
 * test mode: the host has its own. */
static void
ensure_devpts(void)
{
	struct stat st;
	if (agent_options.test_mode || stat("/dev/pts/ptmx", &st) == 0)
		return;
	if (mkdir("/dev/pts", 0755) < 0 && errno != EEXIST)
		logmsg("cannot create /dev/pts: %s", strerror(errno));
	else if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620") < 0)
		logmsg("cannot mount devpts on /dev/pts: %s", strerror(errno));
}

static bool
valid_id(uint32_t id)
{
	/* (uid_t)-1 means "unchanged" to setuid(2), never a user. */
	return id != UINT32_MAX;
}

/* The request's bounds, before anything is allocated. */
static bool
exec_start_valid(struct agent_call *call, const Vmf__Agent__ExecStart *x)
{
	if (x->n_argv == 0 || !x->argv[0][0]) {
		reply_error(call, EINVAL, "exec needs a command: argv is empty");
		return false;
	}
	if (agent_options.no_exec) {
		reply_error(call, EPERM, "this agent was started with --no-exec");
		return false;
	}
	if (x->n_argv > EXEC_ARGS_MAX || x->n_env > EXEC_ARGS_MAX) {
		reply_error(call, E2BIG,
			    "argument list too long: %zu arguments and %zu environment entries (at most %u each)",
			    x->n_argv, x->n_env, EXEC_ARGS_MAX);
		return false;
	}
	if (x->set_user && (!valid_id(x->uid) || !valid_id(x->gid))) {
		reply_error(call, EINVAL, "user id %u / group id %u: 4294967295 is not a valid id", x->uid, x->gid);
		return false;
	}
	if (x->tty && (x->rows > 0xffff || x->cols > 0xffff)) {
		reply_error(call, EINVAL, "terminal size %ux%u is out of range (at most 65535x65535)", x->rows,
			    x->cols);
		return false;
	}
	if (x->output_window > OUTPUT_WINDOW_MAX) {
		reply_error(call, EINVAL, "output window of %u bytes exceeds the limit of %u", x->output_window,
			    OUTPUT_WINDOW_MAX);
		return false;
	}
	if (strlen(x->tag) > TAG_MAX || strlen(x->user) > 32) {
		reply_error(call, EINVAL, "a tag of at most %u bytes and a user name of at most 32, please", TAG_MAX);
		return false;
	}
	if (x->tag[0] && exec_tag_taken(x->tag)) {
		reply_error(call, EEXIST, "a process with tag '%s' is in the table already", x->tag);
		return false;
	}
	while (exec_count() >= PROCS_MAX && exec_evict_one())
		;
	if (exec_count() >= PROCS_MAX) {
		reply_error(call, EAGAIN, "%u processes are running already, the agent's limit", exec_count());
		return false;
	}
	return true;
}

void
exec_start(struct agent_call *call)
{
	const Vmf__Agent__ExecStart *x = call->req->exec_start;
	if (!exec_start_valid(call, x))
		return;
	static struct run_as ra;
	static char login[4][PATH_MAX + 16];
	memset(&ra, 0, sizeof(ra));
	ra.set_user = x->set_user, ra.uid = x->uid, ra.gid = x->gid;
	if (x->user[0] && !lookup_user(x->user, &ra)) {
		reply_error(call, ENOENT, "no user '%s' in the guest's /etc/passwd", x->user);
		return;
	}
	if (ra.set_user && (!valid_id(ra.uid) || !valid_id(ra.gid))) {
		reply_error(call, EINVAL, "user '%s' has user or group id 4294967295, which is no id", x->user);
		return;
	}
	ra.cwd = x->cwd[0] ? x->cwd : ra.home[0] ? ra.home : "/";
	char **env = build_env(x, &ra, login, call);
	if (!env)
		return;
	/* protobuf-c's arrays have no terminating NULL. */
	char **argv = calloc(x->n_argv + 1, sizeof(char *));
	if (!argv) {
		reply_error(call, ENOMEM, "out of memory for the arguments");
		free(env);
		return;
	}
	memcpy(argv, x->argv, x->n_argv * sizeof(char *));
	struct proc *p = calloc(1, sizeof(*p));
	uint8_t *inbuf = malloc(STDIN_WINDOW);
	Vmf__Agent__ExecStarted *started = reply_body(call, sizeof(*started), NULL);
	int errp[2] = { -1, -1 }, in[2] = { -1, -1 }, out[2] = { -1, -1 }, err2[2] = { -1, -1 }, master = -1;
	const char *slave = NULL;
	int e = 0;
	const char *what = "";
	if (!p || !inbuf || !started) {
		e = ENOMEM, what = "memory";
	} else if (pipe2(errp, O_CLOEXEC) < 0) {
		e = errno, what = "a pipe";
	} else if (x->tty) {
		ensure_devpts();
		struct winsize ws = { .ws_row = (unsigned short)(x->rows ? x->rows : 24),
				      .ws_col = (unsigned short)(x->cols ? x->cols : 80) };
		if ((master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0 || grantpt(master) < 0 ||
		    unlockpt(master) < 0 || !(slave = ptsname(master)) || ioctl(master, TIOCSWINSZ, &ws) < 0)
			e = errno, what = "a pseudo-terminal";
	} else if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err2, O_CLOEXEC) < 0) {
		e = errno, what = "pipes";
	}
	const char *path = env[0] + 5;
	for (char **v = env; *v; v++)
		if (!strncmp(*v, "PATH=", 5))
			path = *v + 5;
	struct child_args ca = { .x = x, .ra = &ra, .argv = argv, .env = env, .path = path, .slave = slave,
				 .errfd = errp[1], .in = in[0], .out = out[1], .errout = err2[1] };
	/* The child's stack; the agent waits (CLONE_VFORK) until it has
	 * exec'd or exited, so one serves every start. */
	static uint8_t child_stack[64 * 1024] __attribute__((aligned(16)));
	pid_t pid = -1;
	if (!e && (pid = clone(child_exec, child_stack + sizeof(child_stack), CLONE_VM | CLONE_VFORK | SIGCHLD,
			       &ca)) < 0)
		e = errno, what = "a process (clone)";
	close_fd(&errp[1]);
	close_fd(&in[0]);
	close_fd(&out[1]);
	close_fd(&err2[1]);
	if (e) {
		reply_error(call, e, "cannot start '%s': cannot get %s: %s", x->argv[0], what, strerror(e));
		goto cleanup;
	}
	/* exec closed the error pipe (CLOEXEC): nothing on it means it ran. */
	struct child_error ce;
	ssize_t n;
	while ((n = read(errp[0], &ce, sizeof(ce))) < 0 && errno == EINTR)
		;
	if (n == (ssize_t)sizeof(ce)) {
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		child_failure(call, x, &ra, &ce, path);
		goto cleanup;
	}
	p->pid = pid;
	p->ticks = exec_ledger_add(pid);
	fault_point("exec-started");
	p->c = call->conn;
	p->tty = x->tty;
	p->keep = x->keep;
	snprintf(p->tag, sizeof(p->tag), "%s", x->tag);
	/* What ExecList shows: the first arguments, cut (no failure if memory
	 * is short: the list shows less). */
	size_t na = x->n_argv < LIST_ARGS ? x->n_argv : LIST_ARGS;
	if ((p->argv = calloc(na + 1, sizeof(char *))))
		for (size_t i = 0; i < na; i++)
			p->argv[i] = strndup(x->argv[i], LIST_ARG_LEN);
	p->cwd = strdup(ra.cwd);
	p->inbuf = inbuf;
	inbuf = NULL;
	if (x->tty) {
		set_nonblock(master);
		p->in_fd = p->out_fd = master;
		master = -1;
		p->err_fd = -1;
	} else {
		p->in_fd = in[1], p->out_fd = out[0], p->err_fd = err2[0];
		in[1] = out[0] = err2[0] = -1;
		set_nonblock(p->in_fd);
		set_nonblock(p->out_fd);
		set_nonblock(p->err_fd);
	}
	uint32_t win = x->output_window ? x->output_window : OUTPUT_WINDOW_DEFAULT;
	p->credit[1] = p->credit[2] = win;
	p->deadline = x->timeout_ms ? vmf_now_ms() + x->timeout_ms : 0;
	vmf__agent__exec_started__init(started);
	started->exec_id = exec_adopt(p);
	started->pid = pid;
	started->stdin_window = STDIN_WINDOW;
	p = NULL;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED;
	call->reply.exec_started = started;
cleanup:
	close_fd(&errp[0]);
	close_fd(&in[1]);
	close_fd(&out[0]);
	close_fd(&err2[0]);
	close_fd(&master);
	free(inbuf);
	free(p);
	free(env);
	free(argv);
}
