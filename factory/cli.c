/* The vmfactory command line.  Commands are data (one table); `help` is
 * generated from it.  Daemon commands only marshal requests through the
 * client library: the daemon validates.  Errors are printed here, once. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog.h"
#include "client.h"
#include "config.h"
#include "daemon.h"
#include "frame.h"
#include "log.h"
#include "sandbox.h"
#include "template.h"
#include "util.h"

#define EXIT_USAGE 2
#define EXIT_NO_DAEMON 3
#define CALL_TIMEOUT_MS 30000

/* ---- options ---- */

#define MAX_OPTS 32
struct args {
	const char *names[MAX_OPTS];
	const char *vals[MAX_OPTS];
	int n;
	char **pos;          /* positional arguments */
	int npos;
	/* common */
	const char *socket, *state_dir, *run_dir;
	bool json;
};

static const char *
opt(const struct args *a, const char *name)
{
	for (int i = 0; i < a->n; i++)
		if (strcmp(a->names[i], name) == 0)
			return a->vals[i];
	return NULL;
}

static bool
flag(const struct args *a, const char *name)
{
	return opt(a, name) != NULL;
}

struct cmd;
typedef int (*handler_fn)(const struct cmd *cmd, struct args *a);

struct cmd {
	const char *name;
	const char *usage;      /* after the name */
	const char *summary;
	const char *opts;       /* "pool=,wait,..." ; '=' takes a value */
	int min_pos, max_pos;
	handler_fn fn;
};

static const char common_opts[] = "socket=,state-dir=,run-dir=,log-level=,o=,help";

static int usage_error(const struct cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void print_usage(FILE *f, const struct cmd *c);

static int
usage_error(const struct cmd *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("vmfactory: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	if (c)
		print_usage(stderr, c);
	return EXIT_USAGE;
}

/* Exit 3 ("no daemon") is status's alone; every other failure is 1. */
static int
fail(const struct vmf_error *e)
{
	fprintf(stderr, "vmfactory: %s\n", e->msg);
	return EXIT_FAILURE;
}

/* Parses argv (after the command name) by the command's option spec. */
static int
parse(const struct cmd *c, int argc, char **argv, struct args *a)
{
	static char spec[512];
	static struct option lopts[MAX_OPTS + 1];
	static char names[MAX_OPTS][32];
	snprintf(spec, sizeof(spec), "%s%s%s", common_opts, c->opts[0] ? "," : "", c->opts);
	int n = 0;
	for (char *tok = strtok(spec, ","); tok && n < MAX_OPTS; tok = strtok(NULL, ",")) {
		size_t l = strlen(tok);
		bool val = tok[l - 1] == '=';
		snprintf(names[n], sizeof(names[n]), "%.*s", (int)(val ? l - 1 : l), tok);
		lopts[n] = (struct option){ names[n], val ? required_argument : no_argument, NULL, 1000 + n };
		n++;
	}
	lopts[n] = (struct option){ 0 };
	optind = 1;
	opterr = 0;
	int ch, idx;
	while ((ch = getopt_long_only(argc, argv, "", lopts, &idx)) != -1) {
		if (ch == '?' || ch == ':')
			return usage_error(c, "%s: unknown option or missing value: %s", c->name, argv[optind - 1]);
		int k = ch - 1000;
		if (a->n == MAX_OPTS)
			return usage_error(c, "%s: more than %d options", c->name, MAX_OPTS);
		a->names[a->n] = lopts[k].name;
		a->vals[a->n] = lopts[k].has_arg ? optarg : "";
		a->n++;
	}
	a->pos = argv + optind;
	a->npos = argc - optind;
	if (flag(a, "help")) {
		print_usage(stdout, c);
		exit(0);
	}
	if (a->npos < c->min_pos || a->npos > c->max_pos)
		return usage_error(c, "%s: wrong number of arguments", c->name);
	const char *o = opt(a, "o");
	if (o && strcmp(o, "json") != 0)
		return usage_error(c, "-o takes 'json'");
	a->json = o != NULL;
	const char *e;
	a->socket = (e = opt(a, "socket")) ? e : (e = getenv("VMFACTORY_SOCKET")) ? e : VMF_DEFAULT_SOCKET;
	a->state_dir = (e = opt(a, "state-dir")) ? e : (e = getenv("VMFACTORY_STATE_DIR")) ? e : VMF_DEFAULT_STATE_DIR;
	a->run_dir = (e = opt(a, "run-dir")) ? e : (e = getenv("VMFACTORY_RUN_DIR")) ? e : VMF_DEFAULT_RUN_DIR;
	if ((e = opt(a, "log-level"))) {
		int l = vmf_log_parse_level(e);
		if (l < 0)
			return usage_error(c, "unknown log level %s (debug, info, warn, error, off)", e);
		vmf_log_set_level((enum vmf_log_level)l);
	}
	return 0;
}

static int
num(const struct args *a, const char *name, unsigned *out, const struct cmd *c)
{
	const char *v = opt(a, name);
	if (!v)
		return 0;
	char *end;
	errno = 0;
	unsigned long n = strtoul(v, &end, 10);
	if (errno || !*v || *end || n > 1000000 || v[0] == '-')
		return usage_error(c, "--%s needs a number, got '%s'", name, v);
	*out = (unsigned)n;
	return 0;
}

static void
print_json(json_object *j)
{
	puts(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(j);
}

#define JS(o, k, v) json_object_object_add(o, k, json_object_new_string((v) ? (v) : ""))
#define JI(o, k, v) json_object_object_add(o, k, json_object_new_int64((int64_t)(v)))
#define JD(o, k, v) json_object_object_add(o, k, json_object_new_double(v))
#define JB(o, k, v) json_object_object_add(o, k, json_object_new_boolean(v))

static int
connect_daemon(const struct args *a, struct vmf_client **c, struct vmf_error *e)
{
	return vmf_client_connect(a->socket, c, e);
}

/* ---- VM record output ---- */

static json_object *
vm_json(const Vmf__Control__VmInfo *v)
{
	json_object *o = json_object_new_object();
	JS(o, "id", v->id);
	JI(o, "pid", v->pid);
	JI(o, "vcpus", v->vcpus);
	JI(o, "memory_mib", v->memory_mib);
	JS(o, "qmp_socket", v->qmp_socket);
	JS(o, "agent_socket", v->agent_socket);
	JS(o, "share_dir", v->share_dir);
	JS(o, "run_dir", v->run_dir);
	JS(o, "template_id", v->template_id);
	JS(o, "pool", v->pool);
	JS(o, "state", v->state);
	JS(o, "sandbox_id", v->sandbox_id);
	JS(o, "share_link", v->share_link);
	JS(o, "sock_link", v->sock_link);
	JI(o, "created_ns", v->created_ns);
	JI(o, "age_s", v->created_ns ? (vmf_realtime_ns() - v->created_ns) / 1000000000 : 0);
	JI(o, "pss_kib", v->pss_kib);
	JI(o, "owner_uid", v->owner_uid);
	if (v->hypervisor) {
		json_object *h = json_object_new_object();
		JI(h, "pid", v->hypervisor->pid);
		JI(h, "vcpus", v->hypervisor->vcpus);
		JI(h, "memory_mib", v->hypervisor->memory_mib);
		JB(h, "paused", v->hypervisor->paused);
		JS(h, "kind", v->hypervisor->kind == VMF__HV__HYPERVISOR_KIND__HV_QEMU ? "qemu" : "other");
		json_object_object_add(o, "hypervisor", h);
	}
	return o;
}

static void
vm_human(const Vmf__Control__VmInfo *v)
{
	printf("id:           %s\n", v->id);
	printf("state:        %s\n", v->state);
	printf("sandbox:      %s\n", v->sandbox_id);
	printf("owner:        uid %u\n", v->owner_uid);
	printf("pid:          %d\n", v->pid);
	printf("vcpus:        %u\n", v->vcpus);
	printf("memory:       %u MiB\n", v->memory_mib);
	printf("qmp socket:   %s\n", v->qmp_socket);
	printf("agent socket: %s\n", v->agent_socket);
	if (v->share_dir && *v->share_dir)
		printf("share dir:    %s (linked from %s)\n", v->share_dir, v->share_link);
	else
		printf("share dir:    none (the hypervisor has no share device)\n");
	printf("run dir:      %s (linked from %s)\n", v->run_dir, v->sock_link);
	printf("template:     %s\n", v->template_id);
	printf("pool:         %s\n", v->pool && *v->pool ? v->pool : "(gone)");
}

/* ---- commands ---- */

static int
cmd_get(const struct cmd *cmd, struct args *a)
{
	Vmf__Control__GetVMRequest g = VMF__CONTROL__GET_VMREQUEST__INIT;
	unsigned timeout = 0;
	if (num(a, "cpus", &g.vcpus, cmd) || num(a, "memory", &g.memory_mib, cmd) || num(a, "timeout", &timeout, cmd))
		return EXIT_USAGE;
	g.sandbox_id = (char *)(opt(a, "sandbox") ? opt(a, "sandbox") : "");
	g.share_dir = (char *)(opt(a, "share-dir") ? opt(a, "share-dir") : "");
	g.sock_dir = (char *)(opt(a, "sock-dir") ? opt(a, "sock-dir") : "");
	g.pool = (char *)(opt(a, "pool") ? opt(a, "pool") : "");
	g.timeout_ms = timeout * 1000;
	struct vmf_client *c;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	if (connect_daemon(a, &c, &e) < 0)
		return fail(&e);
	int rc = vmf_client_get_vm(c, &g, &r, (int)(timeout ? timeout * 1000 + 5000 : 120000), &e);
	vmf_client_close(c);
	if (rc < 0)
		return fail(&e);
	if (a->json)
		print_json(vm_json(r->vm));
	else
		vm_human(r->vm);
	vmf__control__reply__free_unpacked(r, NULL);
	return 0;
}

static int
cmd_release(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	struct vmf_client *c;
	struct vmf_error e = {0};
	if (connect_daemon(a, &c, &e) < 0)
		return fail(&e);
	int rc = vmf_client_release_vm(c, a->pos[0], CALL_TIMEOUT_MS, &e);
	vmf_client_close(c);
	if (rc < 0)
		return fail(&e);
	printf("released %s\n", a->pos[0]);
	return 0;
}

static int
cmd_inspect(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	struct vmf_client *c;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	if (connect_daemon(a, &c, &e) < 0)
		return fail(&e);
	int rc = vmf_client_inspect(c, a->pos[0], &r, CALL_TIMEOUT_MS, &e);
	vmf_client_close(c);
	if (rc < 0)
		return fail(&e);
	Vmf__Control__InspectReply *ir = r->inspect;
	Vmf__Control__GuestView *g = ir->guest;
	if (a->json) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "vm", vm_json(ir->vm));
		JI(o, "host_realtime_ns", ir->host_realtime_ns);
		if (g) {
			json_object *go = json_object_new_object();
			JI(go, "online_cpus", g->online_cpus);
			JI(go, "mem_total_kib", g->mem_total_kib);
			JI(go, "realtime_ns", g->realtime_ns);
			JS(go, "random_hex", g->random_hex);
			JS(go, "boot_id", g->boot_id);
			JI(go, "uptime_ns", g->uptime_ns);
			JS(go, "agent_version", g->agent_version);
			json_object *ents = json_object_new_array();
			for (size_t i = 0; i < g->n_share_entries; i++)
				json_object_array_add(ents, json_object_new_string(g->share_entries[i]));
			json_object_object_add(go, "share_entries", ents);
			json_object_object_add(o, "guest", go);
		} else {
			JS(o, "guest_error", ir->guest_error);
		}
		print_json(o);
	} else {
		vm_human(ir->vm);
		if (g) {
			printf("guest CPUs:   %u online\n", g->online_cpus);
			printf("guest memory: %llu KiB\n", (unsigned long long)g->mem_total_kib);
			printf("guest clock:  %+.3f s from the host\n",
			       (double)(g->realtime_ns - ir->host_realtime_ns) / 1e9);
			printf("guest random: %s\n", g->random_hex);
			printf("boot id:      %s\n", g->boot_id);
			printf("share:       ");
			for (size_t i = 0; i < g->n_share_entries; i++)
				printf(" %s", g->share_entries[i]);
			printf("\n");
		} else {
			printf("guest view:   unavailable (%s)\n", ir->guest_error);
		}
	}
	vmf__control__reply__free_unpacked(r, NULL);
	return 0;
}

static int
cmd_status(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	struct vmf_client *c = NULL;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	if (connect_daemon(a, &c, &e) < 0 || vmf_client_status(c, &r, CALL_TIMEOUT_MS, &e) < 0) {
		vmf_client_close(c);
		fprintf(stderr, "vmfactory: %s\n", e.msg);
		/* 3 means "start one": nothing listens, or it went away before
		 * answering.  A daemon that answers with an error (refused
		 * peer, other version) or hangs is running: starting another
		 * would not help, so that is 1. */
		bool none = e.code == ENOENT || e.code == ECONNREFUSED || e.code == EPIPE || e.code == ECONNRESET;
		return none ? EXIT_NO_DAEMON : EXIT_FAILURE;
	}
	vmf_client_close(c);
	Vmf__Control__StatusReply *s = r->status;
	if (a->json) {
		json_object *o = json_object_new_object(), *d = json_object_new_object();
		JI(d, "pid", s->pid);
		JI(d, "uptime_ms", s->uptime_ms);
		JS(d, "socket", s->socket);
		JS(d, "hypervisor", s->hypervisor);
		JS(d, "accel", s->accel);
		json_object *caps = json_object_new_array();
		for (size_t i = 0; i < s->n_capabilities; i++)
			json_object_array_add(caps, json_object_new_string(s->capabilities[i]));
		json_object_object_add(d, "capabilities", caps);
		json_object_object_add(o, "daemon", d);
		json_object *ts = json_object_new_array();
		for (size_t i = 0; i < s->n_templates; i++) {
			Vmf__Control__TemplateStatus *t = s->templates[i];
			json_object *x = json_object_new_object();
			JS(x, "id", t->id);
			JS(x, "state", t->state);
			JI(x, "vcpus", t->vcpus);
			JI(x, "memory_mib", t->memory_mib);
			JI(x, "max_vcpus", t->max_vcpus);
			JI(x, "max_memory_mib", t->max_memory_mib);
			JI(x, "memory_size", t->memory_size);
			JI(x, "state_size", t->state_size);
			JB(x, "full_memory", t->full_memory);
			JI(x, "created_ns", t->created_ns);
			JS(x, "error", t->error);
			json_object *tc = json_object_new_array();
			for (size_t k = 0; k < t->n_capabilities; k++)
				json_object_array_add(tc, json_object_new_string(t->capabilities[k]));
			json_object_object_add(x, "capabilities", tc);
			json_object_array_add(ts, x);
		}
		json_object_object_add(o, "templates", ts);
		json_object *ps = json_object_new_array();
		for (size_t i = 0; i < s->n_pools; i++) {
			Vmf__Control__PoolStatus *p = s->pools[i];
			json_object *x = json_object_new_object();
			JS(x, "name", p->name);
			JS(x, "template_id", p->template_id);
			JI(x, "vcpus", p->vcpus);
			JI(x, "memory_mib", p->memory_mib);
			JI(x, "target", p->target);
			JI(x, "ready", p->ready);
			JI(x, "filling", p->filling);
			JI(x, "failed", p->failed);
			JS(x, "last_error", p->last_error);
			JB(x, "share_memory", p->share_memory);
			json_object_array_add(ps, x);
		}
		json_object_object_add(o, "pools", ps);
		json_object *vs = json_object_new_array();
		for (size_t i = 0; i < s->n_vms; i++)
			json_object_array_add(vs, vm_json(s->vms[i]));
		json_object_object_add(o, "vms", vs);
		json_object *cn = json_object_new_object();
		JI(cn, "requests", s->requests);
		JI(cn, "hits", s->hits);
		JI(cn, "misses", s->misses);
		JI(cn, "errors", s->errors);
		json_object_object_add(o, "counters", cn);
		json_object *lat = json_object_new_object();
		JD(lat, "handout_p50_ms", s->handout_p50_ms);
		JD(lat, "handout_p99_ms", s->handout_p99_ms);
		json_object *steps = json_object_new_array();
		for (size_t i = 0; i < s->n_steps; i++) {
			json_object *x = json_object_new_object();
			JS(x, "step", s->steps[i]->step);
			JI(x, "count", s->steps[i]->count);
			JD(x, "p50_ms", s->steps[i]->p50_ms);
			JD(x, "p99_ms", s->steps[i]->p99_ms);
			json_object_array_add(steps, x);
		}
		json_object_object_add(lat, "steps", steps);
		json_object_object_add(o, "latency", lat);
		print_json(o);
	} else {
		printf("daemon: pid %d, up %.0f s, socket %s, %s (%s)\n", s->pid, s->uptime_ms / 1000.0, s->socket,
		       s->hypervisor, s->accel);
		if (s->n_capabilities) {
			printf("capabilities:");
			for (size_t i = 0; i < s->n_capabilities; i++)
				printf(" %s", s->capabilities[i]);
			printf("\n");
		}
		printf("\nTEMPLATE          STATE     VCPUS  MEMORY  MAX VCPUS  MAX MEMORY  SHARING\n");
		for (size_t i = 0; i < s->n_templates; i++) {
			Vmf__Control__TemplateStatus *t = s->templates[i];
			printf("%-16.16s  %-8s  %5u  %6u  %9u  %10u  %s\n", t->id, t->state, t->vcpus, t->memory_mib,
			       t->max_vcpus, t->max_memory_mib, t->full_memory ? "private" : "shared");
			if (t->error && *t->error)
				printf("  error: %s\n", t->error);
		}
		printf("\nPOOL              TEMPLATE          VCPUS  MEMORY  TARGET  READY  FILLING  FAILED  SHARING\n");
		for (size_t i = 0; i < s->n_pools; i++) {
			Vmf__Control__PoolStatus *p = s->pools[i];
			printf("%-16.16s  %-16.16s  %5u  %6u  %6u  %5u  %7u  %6u  %s\n", p->name, p->template_id, p->vcpus,
			       p->memory_mib, p->target, p->ready, p->filling, p->failed,
			       p->share_memory ? "shared" : "private");
			if (p->last_error && *p->last_error)
				printf("  last error: %s\n", p->last_error);
		}
		printf("\nVM                                    STATE        PID  AGE(s)  VCPUS  MEMORY  PSS(KiB)  OWNER  SANDBOX\n");
		for (size_t i = 0; i < s->n_vms; i++) {
			Vmf__Control__VmInfo *v = s->vms[i];
			printf("%-36s  %-11s  %6d  %6lld  %5u  %6u  %8llu  %5u  %s\n", v->id, v->state, v->pid,
			       (long long)(v->created_ns ? (vmf_realtime_ns() - v->created_ns) / 1000000000 : 0), v->vcpus,
			       v->memory_mib, (unsigned long long)v->pss_kib, v->owner_uid, v->sandbox_id);
		}
		printf("\nrequests %llu, hits %llu, misses %llu, errors %llu; hand-out p50 %.1f ms, p99 %.1f ms\n",
		       (unsigned long long)s->requests, (unsigned long long)s->hits, (unsigned long long)s->misses,
		       (unsigned long long)s->errors, s->handout_p50_ms, s->handout_p99_ms);
		for (size_t i = 0; i < s->n_steps; i++)
			if (s->steps[i]->count)
				printf("  %-8s p50 %7.2f ms  p99 %7.2f ms  (%llu)\n", s->steps[i]->step, s->steps[i]->p50_ms,
				       s->steps[i]->p99_ms, (unsigned long long)s->steps[i]->count);
	}
	vmf__control__reply__free_unpacked(r, NULL);
	return 0;
}

static int
cmd_destroy(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	struct vmf_client *c;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	if (connect_daemon(a, &c, &e) < 0)
		return fail(&e);
	pid_t pid = 0;
	Vmf__Control__Reply *sr;
	if (vmf_client_status(c, &sr, CALL_TIMEOUT_MS, &e) == 0) {
		pid = sr->status->pid;
		vmf__control__reply__free_unpacked(sr, NULL);
	}
	int rc = vmf_client_destroy(c, flag(a, "all"), &r, 120000, &e);
	vmf_client_close(c);
	if (rc < 0)
		return fail(&e);
	printf("stopped %u VMs; daemon pid %d exiting\n", r->destroy->stopped, (int)pid);
	vmf__control__reply__free_unpacked(r, NULL);
	/* Return once the daemon is gone and its socket removed. */
	int64_t deadline = vmf_now_ms() + 30000;
	while (vmf_now_ms() < deadline && (access(a->socket, F_OK) == 0 || (pid > 0 && kill(pid, 0) == 0)))
		poll(NULL, 0, 20);
	return 0;
}

/* The config file: --config FILE, else the default one when it exists.
 * Every problem is printed, one line each, before the summary. */
static int
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

/* Defaults, then the config file (cfg non-NULL), then flags and the
 * VMFACTORY_* variables.  cfg must outlive o: o points into it. */
static int
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
			fprintf(stderr, "%s\n", last);
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
	fprintf(stderr, "vmfactory: the daemon %s before %s; %s ends with:\n%s\n", how,
		ready ? "the pool was full" : "it was ready", logpath, tail);
	return EXIT_FAILURE;
}

static int start_daemon(const struct cmd *cmd, struct args *a, struct vmf_daemon_opts *opts);

static int
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
		if (vmf_daemon_run(&o, &e) < 0) {
			fprintf(stderr, "vmfactory: %s\n", e.msg);
			_exit(1);
		}
		_exit(0);
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
				printf("\r\033[K%s", line + 10);
			else
				printf("%s\n", line + 10);
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
			fprintf(stderr, "vmfactory: %s\n", line + 7);
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

/* ---- template commands (the catalog, directly) ---- */

/* build, rm and gc write the catalog and remove template files, which a
 * running daemon also does (its builds in progress are .build-* dirs that
 * gc's cleanup would delete): they take the daemon's lock and refuse while
 * a daemon holds it.  The fd holds the lock until the command exits. */
static int
lock_state(const char *state_dir, const char *what, struct vmf_error *e)
{
	if (vmf_mkdir_p(state_dir, 0700, e) < 0)
		return -e->code;
	int fd = vmf_lock_state_dir(state_dir, e);
	if (fd == -EWOULDBLOCK)
		vmf_err(e, EWOULDBLOCK, "a vmfactory daemon (or another template command) is using state dir %s: "
			"stop it before template %s (systemctl stop vmfactory, or vmfactory destroy; assigned VMs "
			"keep running and the next daemon adopts them)", state_dir, what);
	return fd;
}

static int
template_params(const struct cmd *cmd, struct args *a, struct vmf_daemon_opts *o, struct vmf_template_params *p,
		struct vmf_hv_info *info, struct vmf_image *img, Vmf__Catalog__TemplateSpec **spec,
		char id[VMF_SHA256_HEX], struct vmf_config *cfg, struct vmf_error *e)
{
	int r = fill_daemon_opts(cmd, a, o, cfg);
	if (r)
		return -EINVAL;
	memset(p, 0, sizeof(*p));
	p->ops = vmf_hv_by_name(o->hypervisor ? o->hypervisor : "qemu");
	if (!p->ops)
		return vmf_err(e, EINVAL, "unknown hypervisor %s", o->hypervisor);
	p->binary = o->qemu_binary;
	p->machine = o->machine;
	p->accel = o->accel;
	p->runas = o->runas;
	p->cmdline = VMF_DEFAULT_CMDLINE;
	p->vcpus = o->vcpus;
	p->max_vcpus = o->max_vcpus > o->vcpus ? o->max_vcpus : o->vcpus;
	p->memory_mib = o->memory_mib;
	p->max_memory_mib = o->max_memory_mib > o->memory_mib ? o->max_memory_mib : o->memory_mib;
	p->memory_slots = 8;
	p->full_memory = !o->share_memory;
	if ((r = vmf_image_load(o->image_dir, o->kernel, o->initrd, img, e)) < 0 ||
	    (r = p->ops->probe(o->qemu_binary, img->kernel, info, e)) < 0 ||
	    (r = vmf_template_spec_new(p, info, img, spec, id, e)) < 0)
		return r;
	return 0;
}

static void
progress_line(void *ctx, const char *step)
{
	int64_t *t0 = ctx;
	printf("%6.1f s  %s\n", (vmf_now_ms() - *t0) / 1000.0, step);
	fflush(stdout);
}

static int
cmd_template_build(const struct cmd *cmd, struct args *a)
{
	struct vmf_daemon_opts o;
	struct vmf_template_params p;
	struct vmf_hv_info info;
	struct vmf_image img;
	Vmf__Catalog__TemplateSpec *spec = NULL;
	char id[VMF_SHA256_HEX];
	struct vmf_error e = {0};
	struct vmf_config cfg = {0};
	int r = template_params(cmd, a, &o, &p, &info, &img, &spec, id, &cfg, &e);
	if (r == -EINVAL && !e.code) {
		vmf_config_free(&cfg);
		return EXIT_USAGE;
	}
	struct vmf_catalog *cat = NULL;
	int lock = -1;
	if (r == 0 && (lock = r = lock_state(o.state_dir, "build", &e)) >= 0)
		r = vmf_catalog_open(o.state_dir, &cat, &e);
	Vmf__Catalog__TemplateRecord *rec = NULL;
	int64_t t0 = vmf_now_ms();
	if (r == 0)
		r = vmf_template_build(cat, o.state_dir, o.run_dir, &p, spec, &img, progress_line, &t0, &rec, &e);
	vmf_template_spec_free(spec);
	if (cat)
		vmf_catalog_close(cat);
	if (lock >= 0)
		close(lock);
	vmf_config_free(&cfg);
	if (r < 0)
		return fail(&e);
	printf("template %s ready (%u vCPU, %u MiB, built in %.1f s)\n", rec->id, rec->spec->vcpus,
	       rec->spec->memory_mib, rec->build_ms / 1000.0);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
	return 0;
}

struct list_ctx {
	bool json;
	json_object *arr;
	const char *current[3];   /* kernel, initrd, hypervisor version digests for gc */
	struct vmf_catalog *cat;
	const char *state_dir;
	const struct vmf_hv_ops *ops;   /* gc: the configured driver */
	unsigned removed, other;
	int rc;
};

static const char *
tstate(Vmf__Catalog__TemplateState s)
{
	return s == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY ? "ready"
	       : s == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN ? "broken" : "building";
}

static int
list_one(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	struct list_ctx *l = ctx;
	if (!rec) {
		if (l->json) {
			json_object *o = json_object_new_object();
			JS(o, "id", id);
			JS(o, "state", "unreadable");
			JS(o, "error", rec_err->msg);
			json_object_array_add(l->arr, o);
		} else {
			printf("%-16.16s  unreadable: %s\n", id, rec_err->msg);
		}
		return 0;
	}
	Vmf__Catalog__TemplateSpec *s = rec->spec;
	double age = (vmf_realtime_ns() - rec->created_ns) / 1e9;
	if (l->json) {
		json_object *o = json_object_new_object();
		JS(o, "id", rec->id);
		JS(o, "state", tstate(rec->state));
		JI(o, "vcpus", s ? s->vcpus : 0);
		JI(o, "memory_mib", s ? s->memory_mib : 0);
		JI(o, "max_vcpus", s ? s->max_vcpus : 0);
		JI(o, "max_memory_mib", s ? s->max_memory_mib : 0);
		JB(o, "full_memory", s && s->full_memory);
		JS(o, "hypervisor_version", rec->hypervisor_version);
		JI(o, "memory_size", rec->memory_size);
		JI(o, "state_size", rec->state_size);
		JI(o, "age_s", (int64_t)age);
		JI(o, "build_ms", rec->build_ms);
		JS(o, "dir", rec->dir);
		JS(o, "error", rec->error);
		json_object *caps = json_object_new_array();
		/* The template's own driver: templates of different VMMs coexist. */
		const struct vmf_hv_ops *tops = s ? vmf_hv_by_kind(s->hypervisor) : NULL;
		unsigned tcaps = tops ? tops->capabilities(NULL) : 0;
		JS(o, "hypervisor", tops ? tops->name : "unknown");
		for (unsigned bit = 1; bit <= VMF_CAP_FULL_SNAPSHOT; bit <<= 1)
			if (tcaps & bit)
				json_object_array_add(caps, json_object_new_string(vmf_cap_name(bit)));
		json_object_object_add(o, "capabilities", caps);
		json_object_array_add(l->arr, o);
	} else {
		const struct vmf_hv_ops *tops = s ? vmf_hv_by_kind(s->hypervisor) : NULL;
		char capstr[160] = "";
		for (unsigned bit = 1; tops && bit <= VMF_CAP_FULL_SNAPSHOT; bit <<= 1)
			if (tops->capabilities(NULL) & bit)
				snprintf(capstr + strlen(capstr), sizeof(capstr) - strlen(capstr), "%s%s",
					 capstr[0] ? "," : "", vmf_cap_name(bit));
		printf("%-16.16s  %-8s  %2u/%-2u vCPU  %5u/%-5u MiB  %-7s  state %7.1f MiB  memory %5.0f MiB  %6.0f s"
		       "  %s [%s]%s%s\n",
		       rec->id, tstate(rec->state), s ? s->vcpus : 0, s ? s->max_vcpus : 0, s ? s->memory_mib : 0,
		       s ? s->max_memory_mib : 0, s && s->full_memory ? "private" : "shared", rec->state_size / 1048576.0,
		       rec->memory_size / 1048576.0, age, tops ? tops->name : "unknown", capstr,
		       rec->error && *rec->error ? "  error: " : "", rec->error ? rec->error : "");
	}
	return 0;
}

static int
cmd_template_list(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	struct vmf_catalog *cat;
	struct vmf_error e = {0};
	if (vmf_catalog_open(a->state_dir, &cat, &e) < 0)
		return fail(&e);
	struct list_ctx l = { .json = a->json, .arr = json_object_new_array() };
	if (!a->json)
		printf("TEMPLATE          STATE     SIZE (base/max)             MEMORY   STATE FILE       MEMORY FILE    AGE\n");
	int r = vmf_catalog_template_list(cat, list_one, &l, &e);
	vmf_catalog_close(cat);
	if (r < 0) {
		json_object_put(l.arr);
		return fail(&e);
	}
	if (a->json)
		print_json(l.arr);
	else
		json_object_put(l.arr);
	return 0;
}

static int
remove_template(struct vmf_catalog *cat, const char *state_dir, const char *id, struct vmf_error *e)
{
	char dir[PATH_MAX];
	vmf_template_dir(state_dir, id, dir, sizeof(dir));
	/* Record first: a crash in between leaves files cleanup removes. */
	int r = vmf_catalog_template_delete(cat, id, e);
	if (r < 0)
		return r;
	return vmf_rm_rf(dir, e);
}

static int
cmd_template_rm(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	const char *id = a->pos[0];
	if (!vmf_valid_template_id(id)) {
		fprintf(stderr, "vmfactory: '%s' is not a template id (64 hex digits; see template list)\n", id);
		return EXIT_FAILURE;
	}
	struct vmf_catalog *cat;
	struct vmf_error e = {0};
	int lock = lock_state(a->state_dir, "rm", &e);
	if (lock < 0)
		return fail(&e);
	if (vmf_catalog_open(a->state_dir, &cat, &e) < 0) {
		close(lock);
		return fail(&e);
	}
	int r = remove_template(cat, a->state_dir, id, &e);
	vmf_catalog_close(cat);
	close(lock);
	if (r < 0)
		return fail(&e);
	printf("removed template %s\n", id);
	return 0;
}

static int
gc_one(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	(void)rec_err;
	struct list_ctx *l = ctx;
	/* Stale: built from a kernel, initrd or QEMU that is no longer current,
	 * unreadable, or broken. */
	/* Another driver's template: its version cannot be compared with this
	 * one's, and a daemon configured for that driver may still use it.
	 * (A record naming no driver is judged: no daemon can use it.) */
	const struct vmf_hv_ops *tops = rec && rec->spec ? vmf_hv_by_kind(rec->spec->hypervisor) : NULL;
	if (tops && tops != l->ops) {
		l->other++;
		return 0;
	}
	bool stale = !rec || !rec->spec || rec->state == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN ||
		     strcmp(rec->spec->kernel_sha256, l->current[0]) || strcmp(rec->spec->initrd_sha256, l->current[1]) ||
		     strcmp(rec->spec->hypervisor_version, l->current[2]);
	if (!stale)
		return 0;
	struct vmf_error e = {0};
	if (remove_template(l->cat, l->state_dir, id, &e) < 0) {
		fprintf(stderr, "vmfactory: %s\n", e.msg);
		l->rc = EXIT_FAILURE;
	} else {
		printf("removed template %s\n", id);
		l->removed++;
	}
	return 0;
}

static int
cmd_template_gc(const struct cmd *cmd, struct args *a)
{
	struct vmf_daemon_opts o;
	struct vmf_config cfg = {0};
	if (fill_daemon_opts(cmd, a, &o, &cfg)) {
		vmf_config_free(&cfg);
		return EXIT_USAGE;
	}
	struct vmf_error e = {0};
	struct vmf_hv_info info;
	struct vmf_image img;
	struct vmf_catalog *cat = NULL;
	/* The daemon's driver, from the config as the daemon reads it: the
	 * current version is that driver's, and only its templates are judged. */
	const struct vmf_hv_ops *ops = vmf_hv_by_name(o.hypervisor ? o.hypervisor : "qemu");
	int lock = -1;
	int r = ops ? 0 : vmf_err(&e, EINVAL, "unknown hypervisor %s", o.hypervisor);
	if (r == 0)
		r = lock = lock_state(o.state_dir, "gc", &e);
	if (r >= 0)
		r = vmf_image_load(o.image_dir, o.kernel, o.initrd, &img, &e);
	if (r == 0)
		r = ops->probe(o.qemu_binary, img.kernel, &info, &e);
	if (r == 0)
		r = vmf_catalog_open(o.state_dir, &cat, &e);
	struct list_ctx l = { .cat = cat, .state_dir = o.state_dir, .ops = ops,
			      .current = { img.kernel_sha256, img.initrd_sha256, info.version } };
	if (r == 0)
		r = vmf_catalog_template_list(cat, gc_one, &l, &e);
	if (r == 0)
		r = vmf_template_cleanup(cat, o.state_dir, &e);
	if (cat)
		vmf_catalog_close(cat);
	if (lock >= 0)
		close(lock);
	vmf_config_free(&cfg);
	if (r < 0)
		return fail(&e);
	printf("%u templates removed", l.removed);
	if (l.other)
		printf("; %u of another hypervisor than %s kept", l.other, ops->name);
	printf("\n");
	return l.rc;
}

/* ---- config ---- */

static int
cmd_check_config(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	const char *path = a->npos ? a->pos[0] : VMF_DEFAULT_CONFIG;
	struct vmf_config cfg;
	struct vmf_error e = {0};
	int r = vmf_config_load(&cfg, path, &e);
	if (r < 0 && cfg.errors)
		fputs(cfg.errors, stderr);
	vmf_config_free(&cfg);
	if (r < 0)
		return fail(&e);
	printf("%s: ok\n", path);
	return 0;
}

static int cmd_help(const struct cmd *cmd, struct args *a);

/* The one command table: dispatch, usage errors and `help` all read it.
 * opts lists the command's own long options ("name=" takes a value); the
 * common ones (common_opts) are accepted everywhere. */
static const struct cmd commands[] = {
	/* ---- daemon commands: marshal a request, print the reply ---- */
	{ "init", "[--config FILE] --pool N [--cpus N --memory MIB --max-cpus N --max-memory MIB] [--no-share] [--foreground] [--wait] "
		  "[--image-dir DIR] [--kernel PATH --initrd PATH] [--qemu PATH] [--accel kvm|tcg] [--group NAME] "
		  "[--max-idle S] [--metrics-listen ADDR:PORT] [--runas USER] [--sandbox-root DIR]... [--timeout S] "
		  "[--hypervisor qemu|firecracker|cloud-hypervisor]",
	  "start the daemon and fill a pool of paused VMs",
	  "pool=,cpus=,memory=,max-cpus=,max-memory=,no-share,foreground,wait,image-dir=,kernel=,initrd=,qemu=,accel=,group=,max-idle=,config=,metrics-listen=,runas=,timeout=,hypervisor=,sandbox-root=",
	  0, 0, cmd_init },
	{ "daemon", "[--config FILE] [init's size and path options]",
	  "run the daemon in the foreground, for systemd (Type=notify)",
	  "pool=,cpus=,memory=,max-cpus=,max-memory=,no-share,image-dir=,kernel=,initrd=,qemu=,accel=,group=,max-idle=,config=,metrics-listen=,runas=,hypervisor=,sandbox-root=",
	  0, 0, cmd_init },
	{ "check-config", "[FILE]", "check a config file (default " VMF_DEFAULT_CONFIG "), listing every error",
	  "", 0, 1, cmd_check_config },
	{ "status", "[-o json]", "show the daemon, templates, pools, VMs and latency", "", 0, 0, cmd_status },
	{ "get", "--cpus N --memory MIB --sandbox ID --share-dir DIR --sock-dir DIR [--pool NAME] [--timeout S] [-o json]",
	  "hand out a warm VM to a sandbox", "cpus=,memory=,sandbox=,share-dir=,sock-dir=,pool=,timeout=", 0, 0, cmd_get },
	{ "inspect", "VMID [-o json]", "show a VM, with the guest agent's own view", "", 1, 1, cmd_inspect },
	{ "release", "VMID", "stop an assigned VM and remove its dirs and links", "", 1, 1, cmd_release },
	{ "destroy", "[--all]", "stop the daemon and its pooled VMs (--all: assigned VMs too)", "all", 0, 0,
	  cmd_destroy },
	/* ---- template commands (owner: lead): the catalog, directly ---- */
	{ "template build", "[--config FILE] [--cpus N --memory MIB --max-cpus N --max-memory MIB] [--no-share]",
	  "build (or find) the template for a size", "cpus=,memory=,max-cpus=,max-memory=,no-share,image-dir=,kernel=,initrd=,qemu=,accel=,config=",
	  0, 0, cmd_template_build },
	{ "template list", "[-o json]", "list templates in the catalog", "", 0, 0, cmd_template_list },
	{ "template rm", "ID", "remove a template and its files", "", 1, 1, cmd_template_rm },
	{ "template gc", "[--config FILE]", "remove templates of an old kernel, initrd or QEMU, and files no record points to",
	  "image-dir=,kernel=,initrd=,qemu=,config=", 0, 0, cmd_template_gc },
	/* ---- end of template commands ---- */
	{ "help", "[COMMAND]", "show this help, or a command's usage", "", 0, 2, cmd_help },
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void
print_usage(FILE *f, const struct cmd *c)
{
	fprintf(f, "usage: vmfactory %s%s%s\n", c->name, c->usage[0] ? " " : "", c->usage);
	fprintf(f, "       common options: --socket PATH --state-dir DIR --run-dir DIR --log-level LEVEL\n");
}

static void
print_help(FILE *f)
{
	fprintf(f, "usage: vmfactory COMMAND [OPTIONS]\n\ncommands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %-15s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\ncommon options (every command):\n"
		"  --socket PATH     control socket (VMFACTORY_SOCKET, default %s)\n"
		"  --state-dir DIR   catalog, templates, daemon log (VMFACTORY_STATE_DIR, default %s)\n"
		"  --run-dir DIR     VM sockets and dirs (VMFACTORY_RUN_DIR, default %s)\n"
		"  --log-level L     debug, info, warn, error, off (VMFACTORY_LOG_LEVEL)\n"
		"\n`vmfactory help COMMAND` shows a command's usage.\n"
		"exit status: 0 success, 1 error, 2 usage error, 3 no daemon answering (status)\n",
		VMF_DEFAULT_SOCKET, VMF_DEFAULT_STATE_DIR, VMF_DEFAULT_RUN_DIR);
}

/* Commands whose first word is word (e.g. "template"): a group name typed
 * alone gets the usage of its members rather than "unknown command".
 * f NULL only asks whether word is a group. */
static bool
print_group(FILE *f, const char *word)
{
	size_t n = strlen(word);
	bool any = false;
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strncmp(commands[i].name, word, n) == 0 && commands[i].name[n] == ' ') {
			if (f)
				fprintf(f, "usage: vmfactory %s%s%s\n", commands[i].name,
					commands[i].usage[0] ? " " : "", commands[i].usage);
			any = true;
		}
	return any;
}

static int
cmd_help(const struct cmd *cmd, struct args *a)
{
	if (a->npos > 0) {
		char name[64];
		snprintf(name, sizeof(name), "%s%s%s", a->pos[0], a->npos > 1 ? " " : "", a->npos > 1 ? a->pos[1] : "");
		for (size_t i = 0; i < NCOMMANDS; i++)
			if (strcmp(commands[i].name, name) == 0) {
				print_usage(stdout, &commands[i]);
				printf("\n%s\n", commands[i].summary);
				return 0;
			}
		if (a->npos == 1 && print_group(stdout, name))
			return 0;
		return usage_error(cmd, "unknown command '%s'", name);
	}
	print_help(stdout);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc < 2) {
		print_help(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		print_help(stdout);
		return 0;
	}
	const struct cmd *c = NULL;
	int skip = 1;
	for (size_t i = 0; i < NCOMMANDS && !c; i++) {
		const char *n = commands[i].name, *sp = strchr(n, ' ');
		if (!sp && strcmp(n, argv[1]) == 0)
			c = &commands[i];
		else if (sp && argc > 2 && strncmp(n, argv[1], (size_t)(sp - n)) == 0 && argv[1][sp - n] == '\0' &&
			 strcmp(sp + 1, argv[2]) == 0)
			c = &commands[i], skip = 2;
	}
	if (!c) {
		bool group = print_group(NULL, argv[1]);
		if (group && argc == 2) {
			fprintf(stderr, "vmfactory: %s needs a subcommand\n", argv[1]);
			print_group(stderr, argv[1]);
			return EXIT_USAGE;
		}
		fprintf(stderr, "vmfactory: unknown command '%s%s%s'\n\n", argv[1], group ? " " : "", group ? argv[2] : "");
		print_help(stderr);
		return EXIT_USAGE;
	}
	struct args a = { 0 };
	/* getopt sees the command word as argv[0]. */
	int r = parse(c, argc - skip, argv + skip, &a);
	if (r)
		return r;
	return c->fn(c, &a);
}
