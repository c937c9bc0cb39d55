/* Commands that ask the daemon: each builds its request and hands it to
 * remote(), the one place that connects, calls, prints and maps errors to
 * exit codes.  The daemon validates; nothing is checked twice here. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "frame.h"

/* What differs between daemon commands. */
struct remote_call {
	/* Sends the request on c; *r is its reply (left NULL by a call that has none). */
	int (*send)(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
		    struct vmf_error *e);
	void *req;
	int timeout_ms;
	json_object *(*json)(const Vmf__Control__Reply *r);   /* -o json */
	void (*human)(const Vmf__Control__Reply *r);          /* NULL: the caller prints */
	/* status alone: exit 3 means "start one": nothing listens, or it
	 * went away before answering.  A daemon that answers with an error
	 * (refused peer, other version) or hangs is running: starting another
	 * would not help, so that is 1. */
	bool no_daemon_exit;
};

static int
remote(struct args *a, const struct remote_call *k)
{
	struct vmf_client *c = NULL;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_connect(a->socket, &c, &e);
	if (rc == 0)
		rc = k->send(c, a, k->req, k->timeout_ms, &r, &e);
	vmf_client_close(c);
	if (rc < 0) {
		bool none = e.code == ENOENT || e.code == ECONNREFUSED || e.code == EPIPE || e.code == ECONNRESET;
		if (k->no_daemon_exit && none) {
			print_error("%s", e.msg);
			return EXIT_NO_DAEMON;
		}
		return fail(&e);
	}
	if (a->json && k->json)
		print_json(k->json(r));
	else if (k->human)
		k->human(r);
	if (r)
		vmf__control__reply__free_unpacked(r, NULL);
	return 0;
}

static int
send_status(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	    struct vmf_error *e)
{
	(void)a, (void)req;
	return vmf_client_status(c, r, timeout_ms, e);
}

int
cmd_status(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	return remote(a, &(struct remote_call){ send_status, NULL, CALL_TIMEOUT_MS, status_json, status_human, true });
}

static int
send_get(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	 struct vmf_error *e)
{
	(void)a;
	return vmf_client_get_vm(c, req, r, timeout_ms, e);
}

/* get's --disk and --scratch, in the order given. */
#define GET_DISKS_MAX 16
struct get_req {
	Vmf__Control__GetVMRequest g;
	Vmf__Control__AttachRequest at[GET_DISKS_MAX];
	Vmf__Control__AttachRequest *atp[GET_DISKS_MAX];
	size_t n;
};

static int
send_get_disks(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	       struct vmf_error *e)
{
	(void)a;
	struct get_req *q = req;
	return vmf_client_get_vm_with_disks(c, &q->g, q->atp, q->n, r, timeout_ms, e);
}

/* PATH[:ro|:cow][:GUESTPATH] (a GUESTPATH is absolute, so "ro" is never one). */
static int
parse_disk(char *s, Vmf__Control__AttachRequest *at)
{
	char *guest = strstr(s, ":/");
	if (guest) {
		*guest = '\0';
		at->guest_path = guest + 1;
	}
	size_t n = strlen(s);
	if (n > 3 && strcmp(s + n - 3, ":ro") == 0) {
		s[n - 3] = '\0';
		at->read_only = true;
	} else if (n > 4 && strcmp(s + n - 4, ":cow") == 0) {
		s[n - 4] = '\0';
		at->cow = true;
	}
	at->path = s;
	return *s ? 0 : -1;
}

/* SIZE_MIB:GUESTPATH */
static int
parse_scratch(char *s, Vmf__Control__AttachRequest *at)
{
	char *end;
	unsigned long mib = strtoul(s, &end, 10);
	if (end == s || mib == 0 || mib > UINT32_MAX || (*end != ':' && *end != '\0'))
		return -1;
	at->scratch_mib = (uint32_t)mib;
	at->guest_path = *end == ':' ? end + 1 : "";
	return 0;
}

/* Longer than the daemon's own budget, so that its error arrives first:
 * without --timeout the daemon's get_timeout, at most 600 s, applies (a
 * request may wait that long in its pool's queue). */
static int
get_call_ms(unsigned timeout_s)
{
	return (int)((timeout_s ? timeout_s : 600) * 1000 + 5000);
}

int
cmd_get(const struct cmd *cmd, struct args *a)
{
	struct get_req q = { .g = VMF__CONTROL__GET_VMREQUEST__INIT };
	for (int i = 0; i < a->n; i++) {
		bool disk = strcmp(a->names[i], "disk") == 0, scratch = strcmp(a->names[i], "scratch") == 0;
		if (!disk && !scratch)
			continue;
		if (q.n == GET_DISKS_MAX)
			return usage_error(cmd, "get: more than %d disks", GET_DISKS_MAX);
		Vmf__Control__AttachRequest *at = &q.at[q.n];
		vmf__control__attach_request__init(at);
		if (disk ? parse_disk((char *)a->vals[i], at) : parse_scratch((char *)a->vals[i], at))
			return usage_error(cmd, disk ? "get: --disk takes PATH[:ro|:cow][:GUESTPATH], got '%s'"
						     : "get: --scratch takes SIZE_MIB:GUESTPATH, got '%s'",
					   a->vals[i]);
		q.atp[q.n] = at;
		q.n++;
	}
	/* The daemon checks them (how many, whose); this bounds the array. */
	char *cgroups[64];
	size_t n_cg = 0;
	for (int i = 0; i < a->n; i++)
		if (strcmp(a->names[i], "cgroup") == 0) {
			if (n_cg == sizeof(cgroups) / sizeof(cgroups[0]))
				return usage_error(cmd, "get: too many --cgroup");
			cgroups[n_cg++] = (char *)a->vals[i];
		}
	if (q.n) {
		Vmf__Control__GetVMRequest *g = &q.g;
		g->cgroups = cgroups;
		g->n_cgroups = n_cg;
		unsigned timeout = 0;
		if (num(a, "cpus", &g->vcpus, cmd) || num(a, "memory", &g->memory_mib, cmd) ||
		    num(a, "timeout", &timeout, cmd) || num(a, "ttl", &g->ttl_s, cmd))
			return EXIT_USAGE;
		g->on_expiry = (char *)(opt(a, "on-expiry") ? opt(a, "on-expiry") : "");
		g->sandbox_id = (char *)(opt(a, "sandbox") ? opt(a, "sandbox") : "");
		g->share_dir = (char *)(opt(a, "share-dir") ? opt(a, "share-dir") : "");
		g->sock_dir = (char *)(opt(a, "sock-dir") ? opt(a, "sock-dir") : "");
		g->pool = (char *)(opt(a, "pool") ? opt(a, "pool") : "");
		g->timeout_ms = timeout * 1000;
		return remote(a, &(struct remote_call){ send_get_disks, &q, get_call_ms(timeout), vm_json, vm_human, false });
	}
	Vmf__Control__GetVMRequest g = VMF__CONTROL__GET_VMREQUEST__INIT;
	unsigned timeout = 0;
	if (num(a, "cpus", &g.vcpus, cmd) || num(a, "memory", &g.memory_mib, cmd) || num(a, "timeout", &timeout, cmd) ||
	    num(a, "ttl", &g.ttl_s, cmd))
		return EXIT_USAGE;
	g.on_expiry = (char *)(opt(a, "on-expiry") ? opt(a, "on-expiry") : "");
	g.sandbox_id = (char *)(opt(a, "sandbox") ? opt(a, "sandbox") : "");
	g.share_dir = (char *)(opt(a, "share-dir") ? opt(a, "share-dir") : "");
	g.sock_dir = (char *)(opt(a, "sock-dir") ? opt(a, "sock-dir") : "");
	g.pool = (char *)(opt(a, "pool") ? opt(a, "pool") : "");
	g.netns = (char *)(opt(a, "netns") ? opt(a, "netns") : "");
	g.netns_link = (char *)(opt(a, "netns-link") ? opt(a, "netns-link") : "");
	g.net = (char *)(opt(a, "net") ? opt(a, "net") : "");
	g.template_ = (char *)(opt(a, "template") ? opt(a, "template") : "");
	g.cgroups = cgroups;
	g.n_cgroups = n_cg;
	g.timeout_ms = timeout * 1000;
	return remote(a, &(struct remote_call){ send_get, &g, get_call_ms(timeout), vm_json, vm_human, false });
}

static int
send_inspect(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	     struct vmf_error *e)
{
	(void)req;
	return vmf_client_inspect(c, a->pos[0], r, timeout_ms, e);
}

int
cmd_inspect(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	return remote(a, &(struct remote_call){ send_inspect, NULL, CALL_TIMEOUT_MS, inspect_json, inspect_human, false });
}

static int
send_release(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	     struct vmf_error *e)
{
	(void)req;
	return vmf_client_release(c, a->pos[0], r, timeout_ms, e);
}

int
cmd_release(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	/* The guest's flush (stop_timeout) comes before the VMM's stop. */
	return remote(a, &(struct remote_call){ send_release, NULL, CALL_TIMEOUT_MS + 600000, release_json,
						release_human, false });
}

static int
send_attach(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	    struct vmf_error *e)
{
	(void)a;
	return vmf_client_attach(c, req, r, timeout_ms, e);
}

int
cmd_attach(const struct cmd *cmd, struct args *a)
{
	Vmf__Control__AttachRequest at = VMF__CONTROL__ATTACH_REQUEST__INIT;
	unsigned timeout = 0;
	if (num(a, "scratch", &at.scratch_mib, cmd) || num(a, "timeout", &timeout, cmd))
		return EXIT_USAGE;
	at.vm_id = a->pos[0];
	at.path = (char *)(opt(a, "disk") ? opt(a, "disk") : "");
	at.read_only = flag(a, "ro");
	at.cow = flag(a, "cow");
	at.format = (char *)(opt(a, "format") ? opt(a, "format") : "");
	at.guest_path = (char *)(opt(a, "mount") ? opt(a, "mount") : "");
	at.fstype = (char *)(opt(a, "fstype") ? opt(a, "fstype") : "");
	return remote(a, &(struct remote_call){ send_attach, &at, (int)timeout * 1000, disk_json, disk_human, false });
}

static int
send_detach(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	    struct vmf_error *e)
{
	(void)req;
	return vmf_client_detach(c, a->pos[0], opt(a, "disk") ? opt(a, "disk") : "", r, timeout_ms, e);
}

int
cmd_detach(const struct cmd *cmd, struct args *a)
{
	unsigned timeout = 0;
	if (num(a, "timeout", &timeout, cmd))
		return EXIT_USAGE;
	return remote(a, &(struct remote_call){ send_detach, NULL, (int)timeout * 1000, disk_json, disk_human, false });
}

static int
send_snapshot(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	      struct vmf_error *e)
{
	(void)req;
	return vmf_client_snapshot(c, a->pos[0], opt(a, "template"), r, timeout_ms, e);
}

int
cmd_snapshot(const struct cmd *cmd, struct args *a)
{
	if (!opt(a, "template"))
		return usage_error(cmd, "--template NAME is required");
	/* The copy of a large VM under TCG takes a while. */
	return remote(a, &(struct remote_call){ send_snapshot, NULL, 600000, snapshot_json, snapshot_human, false });
}

static int
send_template_rm(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
		 struct vmf_error *e)
{
	(void)req;
	return vmf_client_template_rm(c, a->pos[0], r, timeout_ms, e);
}

/* A connection the daemon closes before answering is a daemon that answers
 * on the socket: only "nothing listens" is no daemon. */
static bool
no_daemon(const struct args *a)
{
	struct vmf_client *c = NULL;
	struct vmf_error e = {0};
	if (vmf_client_connect(a->socket, &c, &e) < 0 && (e.code == ENOENT || e.code == ECONNREFUSED))
		return true;
	vmf_client_close(c);
	return false;
}

int
template_rm_remote(struct args *a)
{
	if (no_daemon(a))
		return EXIT_NO_DAEMON;
	return remote(a, &(struct remote_call){ send_template_rm, NULL, CALL_TIMEOUT_MS, template_rm_json,
						template_rm_human, false });
}

int
template_list_remote(struct args *a)
{
	if (no_daemon(a))
		return EXIT_NO_DAEMON;
	return remote(a, &(struct remote_call){ send_status, NULL, CALL_TIMEOUT_MS, template_status_json,
						template_status_human, false });
}

static int
send_suspend(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	     struct vmf_error *e)
{
	(void)req;
	return vmf_client_suspend_vm(c, a->pos[0], r, timeout_ms, e);
}

/* --ttl S [--on-expiry release|suspend] of resume and lease. */
struct lease_req {
	unsigned ttl_s;
	const char *on_expiry;
};

static int
lease_opts(const struct cmd *cmd, struct args *a, struct lease_req *l)
{
	l->ttl_s = 0;
	l->on_expiry = opt(a, "on-expiry") ? opt(a, "on-expiry") : "";
	return num(a, "ttl", &l->ttl_s, cmd);
}

static int
send_resume(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	    struct vmf_error *e)
{
	const struct lease_req *l = req;
	return vmf_client_resume_vm_lease(c, a->pos[0], l->ttl_s, l->on_expiry, r, timeout_ms, e);
}

static void
suspended_human(const Vmf__Control__Reply *r)
{
	printf("suspended %s: %.1f MiB of state in %s\n", r->vm->id, r->vm->state_size / 1048576.0,
	       r->vm->state_file);
}

static void
resumed_human(const Vmf__Control__Reply *r)
{
	printf("resumed %s (pid %d), clock error %.3f ms\n", r->vm->id, r->vm->pid, r->vm->clock_error_ms);
}

/* A save or load moves the guest's whole memory: minutes for large VMs on
 * a slow disk, not the default call timeout. */
#define SUSPEND_TIMEOUT_MS 600000

int
cmd_suspend(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	return remote(a, &(struct remote_call){ send_suspend, NULL, SUSPEND_TIMEOUT_MS, vm_json, suspended_human, false });
}

int
cmd_resume(const struct cmd *cmd, struct args *a)
{
	struct lease_req l;
	if (lease_opts(cmd, a, &l))
		return EXIT_USAGE;
	return remote(a, &(struct remote_call){ send_resume, &l, SUSPEND_TIMEOUT_MS, vm_json, resumed_human, false });
}

static int
send_lease(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	   struct vmf_error *e)
{
	const struct lease_req *l = req;
	return vmf_client_lease(c, a->pos[0], l->ttl_s, l->on_expiry, r, timeout_ms, e);
}

static void
leased_human(const Vmf__Control__Reply *r)
{
	if (r->vm->lease_deadline_ns)
		printf("leased %s: %s in %lld s\n", r->vm->id, r->vm->lease_on_expiry,
		       (long long)((r->vm->lease_deadline_ns - vmf_realtime_ns() + 500000000) / 1000000000));
	else
		printf("%s has no lease\n", r->vm->id);
}

int
cmd_lease(const struct cmd *cmd, struct args *a)
{
	struct lease_req l;
	if (lease_opts(cmd, a, &l))
		return EXIT_USAGE;
	if (!opt(a, "ttl"))
		return usage_error(cmd, "lease: --ttl S is needed (0 removes the VM's lease)");
	return remote(a, &(struct remote_call){ send_lease, &l, 30000, vm_json, leased_human, false });
}

struct destroy_req {
	pid_t pid;            /* the daemon's, from a status first: destroy waits for it to exit */
	unsigned stopped;
};

static int
send_destroy(struct vmf_client *c, struct args *a, void *req, int timeout_ms, Vmf__Control__Reply **r,
	     struct vmf_error *e)
{
	struct destroy_req *d = req;
	Vmf__Control__Reply *sr;
	if (vmf_client_status(c, &sr, CALL_TIMEOUT_MS, e) == 0) {
		d->pid = sr->status->pid;
		vmf__control__reply__free_unpacked(sr, NULL);
	}
	int rc = vmf_client_destroy(c, flag(a, "all"), r, timeout_ms, e);
	if (rc == 0) {
		d->stopped = (*r)->destroy->stopped;
		/* Said before the daemon is gone: these disks may lack writes. */
		for (size_t i = 0; i < (*r)->destroy->n_lost_writes; i++)
			print_error("may have lost writes: VM %s", (*r)->destroy->lost_writes[i]);
	}
	return rc;
}

int
cmd_destroy(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	struct destroy_req d = {0};
	int rc = remote(a, &(struct remote_call){ send_destroy, &d, 120000 + 600000, NULL, NULL, false });
	if (rc)
		return rc;
	printf("stopped %u VMs; daemon pid %d exiting\n", d.stopped, (int)d.pid);
	/* Return once the daemon is gone and its socket removed. */
	int64_t deadline = vmf_now_ms() + 30000;
	while (vmf_now_ms() < deadline && (access(a->socket, F_OK) == 0 || (d.pid > 0 && kill(d.pid, 0) == 0)))
		poll(NULL, 0, 20);
	return 0;
}
