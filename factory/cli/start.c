/* init and daemon: options merged (defaults, config file, flags and
 * VMFACTORY_* variables), then the daemon run here (daemon, --foreground)
 * or forked into the background with its readiness relayed (init). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "frame.h"
#include "log.h"
#include "sandbox.h"
#include "util.h"

/* The config file: --config FILE, else the default one when it exists.
 * Every problem is printed, one line each, before the summary. */
int
load_config(struct args *a, struct vmf_config *cfg, bool *loaded)
{
	const char *path = opt(a, "config");
	*loaded = false;
	if (!path && access(VMF_DEFAULT_CONFIG, F_OK) < 0 && errno == ENOENT)
		return 0;
	if (!path)
		path = VMF_DEFAULT_CONFIG;
	struct vmf_error e = {0};
	if (vmf_config_load(cfg, path, &e) < 0) {
		if (cfg->errors)
			fputs(cfg->errors, stderr);
		vmf_config_free(cfg);
		return fail(&e);
	}
	*loaded = true;
	return 0;
}

int
fill_daemon_opts(const struct cmd *cmd, struct args *a, struct vmf_daemon_opts *o, struct vmf_config *cfg)
{
	vmf_daemon_opts_defaults(o);
	bool loaded = false;
	if (cfg) {
		int r = load_config(a, cfg, &loaded);
		if (r)
			return r;
		if (loaded) {
			*o = cfg->opts;
			if (cfg->log_level >= 0 && !opt(a, "log-level") && !getenv("VMFACTORY_LOG_LEVEL"))
				vmf_log_set_level((enum vmf_log_level)cfg->log_level);
		}
	}
	if (!loaded || opt(a, "socket") || getenv("VMFACTORY_SOCKET"))
		o->socket_path = a->socket;
	if (!loaded || opt(a, "state-dir") || getenv("VMFACTORY_STATE_DIR"))
		o->state_dir = a->state_dir;
	if (!loaded || opt(a, "run-dir") || getenv("VMFACTORY_RUN_DIR"))
		o->run_dir = a->run_dir;
	const char *e;
	if ((e = opt(a, "image-dir")) || (e = getenv("VMFACTORY_IMAGE_DIR")))
		o->image_dir = e;
	if ((e = opt(a, "kernel")))
		o->kernel = e;
	if ((e = opt(a, "initrd")))
		o->initrd = e;
	if ((e = opt(a, "qemu")))
		o->qemu_binary = e;
	if ((e = opt(a, "group")))
		o->group = e;
	/* --sandbox-root, repeated, replaces VMFACTORY_SANDBOX_ROOTS, which
	 * replaces the config file's list. */
	static char roots[VMF_MAX_SANDBOX_ROOTS * VMF_SANDBOX_ROOT_MAX];
	roots[0] = '\0';
	for (int i = 0; i < a->n; i++)
		if (strcmp(a->names[i], "sandbox-root") == 0) {
			if (strchr(a->vals[i], ':'))
				return usage_error(cmd, "--sandbox-root %s: a root may not contain ':'", a->vals[i]);
			size_t l = strlen(roots);
			if (l + strlen(a->vals[i]) + 2 > sizeof(roots))
				return usage_error(cmd, "--sandbox-root: too many roots");
			snprintf(roots + l, sizeof(roots) - l, "%s%s", l ? ":" : "", a->vals[i]);
		}
	if (roots[0])
		o->sandbox_roots = roots;
	else if ((e = getenv("VMFACTORY_SANDBOX_ROOTS")) && *e)
		o->sandbox_roots = e;
	if ((e = opt(a, "accel")))
		o->accel = e;
	if ((e = opt(a, "metrics-listen")))
		o->metrics_listen = e;
	if ((e = opt(a, "runas")))
		o->runas = e;
	if ((e = opt(a, "hypervisor")))
		o->hypervisor = e;
	if (num(a, "pool", &o->pool_size, cmd) || num(a, "cpus", &o->vcpus, cmd) ||
	    num(a, "memory", &o->memory_mib, cmd) || num(a, "max-cpus", &o->max_vcpus, cmd) ||
	    num(a, "max-memory", &o->max_memory_mib, cmd) || num(a, "max-idle", &o->max_idle_s, cmd))
		return EXIT_USAGE;
	if (flag(a, "no-share"))
		o->share_memory = false;
	/* Size flags describe one pool: they replace the file's pools. */
	static const char *const pool_flags[] = { "pool", "cpus", "memory", "max-cpus", "max-memory", "no-share" };
	for (size_t i = 0; i < sizeof(pool_flags) / sizeof(pool_flags[0]); i++)
		if (o->n_pools && flag(a, pool_flags[i])) {
			log_info("--%s given: one pool from the command line replaces the config file's %u pool%s",
				 pool_flags[i], o->n_pools, o->n_pools == 1 ? "" : "s");
			o->n_pools = 0;
			o->pools = NULL;
		}
	if (cfg && o->n_pools && flag(a, "max-idle"))
		for (unsigned i = 0; i < cfg->n_pools; i++)
			cfg->pools[i].max_idle_s = o->max_idle_s;
	return 0;
}

/* Daemon stderr for a background init.  In the state dir, not the run
 * dir: it must survive a reboot (/run is tmpfs) and a destroy, which
 * removes the run dir once empty.  Appended to, so that a failed start
 * does not erase the previous daemon's last words. */
static volatile sig_atomic_t alarm_fired;

static void
on_alarm(int sig)
{
	(void)sig;
	alarm_fired = 1;
}

static int
open_log(const char *state_dir, char *path, size_t n, struct vmf_error *e)
{
	if (vmf_mkdir_p(state_dir, 0700, e) < 0)
		return vmf_error_prefix(e, "cannot create the state dir for the daemon log");
	snprintf(path, n, "%s/vmfactory.log", state_dir);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return vmf_err_sys(e, errno, "cannot open the daemon log %s", path);
	return fd;
}

/* The readiness pipe closed early: the daemon failed or died.  Its last
 * words are in the log once it has exited. */
static int
daemon_start_failed(pid_t pid, const char *logpath, bool ready)
{
	int st = 0;
	pid_t w;
	int64_t deadline = vmf_now_ms() + 10000;
	while ((w = waitpid(pid, &st, WNOHANG)) == 0 && vmf_now_ms() < deadline)
		poll(NULL, 0, 10);
	char tail[2048];
	vmf_file_tail(logpath, tail, sizeof(tail));
	if (w == pid && WIFEXITED(st) && WEXITSTATUS(st) == 1) {
		/* The child's own "vmfactory: <error>" line ends the log. */
		char *last = NULL;
		for (char *p = strstr(tail, "vmfactory: "); p; p = strstr(p + 1, "vmfactory: "))
			if (p == tail || p[-1] == '\n')
				last = p;
		if (last) {
			last[strcspn(last, "\n")] = '\0';
			print_error("%s", last + strlen("vmfactory: "));
			return EXIT_FAILURE;
		}
	}
	char how[64];
	if (w != pid)
		snprintf(how, sizeof(how), "closed its readiness pipe (pid %d still running)", (int)pid);
	else if (WIFSIGNALED(st))
		snprintf(how, sizeof(how), "was killed by signal %d", WTERMSIG(st));
	else
		snprintf(how, sizeof(how), "exited with status %d", WEXITSTATUS(st));
	print_error("the daemon %s before %s; %s ends with:\n%s", how, ready ? "the pool was full" : "it was ready",
		    logpath, tail);
	return EXIT_FAILURE;
}

static int start_daemon(const struct cmd *cmd, struct args *a, struct vmf_daemon_opts *opts);

int
cmd_init(const struct cmd *cmd, struct args *a)
{
	struct vmf_daemon_opts o;
	struct vmf_config cfg = {0};
	int r = fill_daemon_opts(cmd, a, &o, &cfg);
	if (r) {
		vmf_config_free(&cfg);
		return r;
	}
	if (!opt(a, "pool") && o.n_pools == 0) {
		vmf_config_free(&cfg);
		return usage_error(cmd, "%s needs --pool N, or [pool NAME] sections in the config file", cmd->name);
	}
	r = start_daemon(cmd, a, &o);
	vmf_config_free(&cfg);
	return r;
}

static int
start_daemon(const struct cmd *cmd, struct args *a, struct vmf_daemon_opts *opts)
{
	struct vmf_daemon_opts o = *opts;
	struct vmf_error e = {0};
	unsigned init_timeout_s = 600;
	if (num(a, "timeout", &init_timeout_s, cmd))
		return EXIT_USAGE;
	if (init_timeout_s == 0)
		return usage_error(cmd, "--timeout must be at least 1 second");
	if (flag(a, "foreground") || strcmp(cmd->name, "daemon") == 0) {
		if (vmf_daemon_run(&o, &e) < 0)
			return fail(&e);
		return 0;
	}
	char logpath[PATH_MAX];
	int logfd = open_log(o.state_dir, logpath, sizeof(logpath), &e);
	if (logfd < 0)
		return fail(&e);
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		vmf_err_sys(&e, errno, "cannot create the pipe the daemon reports readiness on");
		close(logfd);
		return fail(&e);
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		vmf_err_sys(&e, errno, "cannot fork the daemon");
		close(logfd);
		close(p[0]);
		close(p[1]);
		return fail(&e);
	}
	if (pid == 0) {
		close(p[0]);
		/* Its own session: the daemon outlives this terminal and its
		 * job-control signals. */
		setsid();
		int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
		}
		dup2(logfd, 2);
		/* The daemon owns (and closes) ready_fd; its error goes to the
		 * log, where the parent finds it once this process is gone. */
		o.ready_fd = p[1];
		o.notify_full = flag(a, "wait");
		/* exit, not _exit: this is the daemon's own end (stdio was
		 * flushed before the fork), and LeakSanitizer checks at exit. */
		if (vmf_daemon_run(&o, &e) < 0) {
			fprintf(stderr, "vmfactory: %s\n", e.msg);
			exit(1);
		}
		exit(0);
	}
	close(p[1]);
	close(logfd);
	/* A deadline for the relay below: a pool that cannot fill (clones
	 * failing, backing off) would otherwise keep `init --wait` forever. */
	struct sigaction sa = { .sa_handler = on_alarm };  /* no SA_RESTART: fgets returns */
	sigaction(SIGALRM, &sa, NULL);
	alarm(init_timeout_s);
	/* Relay the daemon's progress until it says ready (or full).  On a
	 * terminal progress overwrites itself; in a log every line stays. */
	FILE *f = fdopen(p[0], "r");
	if (!f) {
		vmf_err_sys(&e, errno, "cannot read the daemon's readiness pipe");
		close(p[0]);
		return fail(&e);
	}
	bool tty = isatty(STDOUT_FILENO);
	bool pending_line = false;
	char line[2048];
	bool ready = false, full = false;
	int64_t t0 = vmf_now_ms();
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "progress: ", 10) == 0) {
			if (tty)
				printf("\r\033[K%s", esc(line + 10));
			else
				printf("%s\n", esc(line + 10));
			pending_line = tty;
			fflush(stdout);
			continue;
		}
		if (pending_line) {
			putchar('\n');
			pending_line = false;
		}
		if (strcmp(line, "ready") == 0) {
			ready = true;
			if (!flag(a, "wait"))
				break;
			printf("daemon answering after %.1f s; filling the pool\n", (vmf_now_ms() - t0) / 1000.0);
			fflush(stdout);
		} else if (strcmp(line, "full") == 0) {
			full = true;
			break;
		} else if (strncmp(line, "error: ", 7) == 0) {
			print_error("%s", line + 7);
			fclose(f);
			return EXIT_FAILURE;
		}
	}
	alarm(0);
	fclose(f);
	if (pending_line)
		putchar('\n');
	if (alarm_fired) {
		fprintf(stderr, "vmfactory: the daemon (pid %d) %s within %u s; it keeps running: see "
			"`vmfactory status` and %s\n", (int)pid, ready ? "did not fill its pool" : "was not ready",
			init_timeout_s, logpath);
		return EXIT_FAILURE;
	}
	if (!ready || (flag(a, "wait") && !full))
		return daemon_start_failed(pid, logpath, ready);
	printf("vmfactory daemon pid %d ready on %s%s (%.1f s)\n", (int)pid, o.socket_path,
	       full ? " with a full pool" : "", (vmf_now_ms() - t0) / 1000.0);
	return 0;
}
