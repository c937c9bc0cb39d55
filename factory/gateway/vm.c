/* Jobs that talk to the daemon through the public client library, as any
 * runtime would: a sandbox's VM is a GetVM (a pool's or a snapshot's
 * clone) with the sandbox's share and sock dirs under the gateway's
 * sandbox dir, and a kill, pause or resume is ReleaseVM, SuspendVM or
 * ResumeVM.  Each job gets copies of what it needs; its done callback, on
 * the loop, applies the result to the sandbox. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gw.h"
#include "log.h"
#include "util.h"

#define GETVM_BUDGET_MS 60000
#define SUSPEND_MS 300000
#define RELEASE_MS 60000
#define AGENT_CONNECT_MS 10000

struct vm_job {
	struct gw_job job;
	enum gw_vm_op op;
	gw_vm_done_fn done;
	void *arg;
	char socket[108];
	char sandbox_id[GW_SANDBOX_ID_LEN + 1];
	char vm_id[40];
	char template_id[GW_TEMPLATE_MAX + 1];
	char dir[4200];
	unsigned ttl_s;              /* the daemon's lease (CREATE, RESUME, LEASE); 0: none */
	bool suspend;                /* ... ending in a suspend (autoPause) */
	/* results */
	unsigned vcpus, memory_mib;
	char agent_socket[108], agent_transport[16];
	unsigned vsock_port;
	struct vmf_client_agent *agent;
	char **env;                  /* the sandbox's, for its agent */
	struct gw_adopted adopted;
};

unsigned
gw_status_for_errno(int code)
{
	switch (code) {
	case ENOENT: return 404;
	case EINVAL: case E2BIG: case ENAMETOOLONG: return 400;
	case EBUSY: case EALREADY: return 409;
	case EAGAIN: case ECONNREFUSED: case ESHUTDOWN: case EMFILE: return 503;
	/* The daemon's limits on the gateway, one tenant (tenant_max_vms, ...). */
	case EDQUOT: case EFBIG: return 429;
	case ETIMEDOUT: return 504;
	case EACCES: case EPERM: return 403;
	default: return 500;
	}
}

static const char *
on_expiry(const struct vm_job *v)
{
	return !v->ttl_s ? "" : v->suspend ? "suspend" : "release";
}

static int
connect_daemon(struct vm_job *v, struct vmf_client **c)
{
	int r = vmf_client_connect(v->socket, c, &v->job.err);
	if (r < 0) {
		/* Not the sandbox's fault: "try again", whatever errno the
		 * socket gave (ENOENT would read as "no such sandbox"). */
		vmf_error_prefix(&v->job.err, "the vmfactory daemon is not answering");
		v->job.err.code = ECONNREFUSED;
		return -ECONNREFUSED;
	}
	return 0;
}

static bool
has_cap(Vmf__Control__StatusReply *st, const char *cap)
{
	for (size_t i = 0; i < st->n_capabilities; i++)
		if (strcmp(st->capabilities[i], cap) == 0)
			return true;
	return false;
}

/* templateID: a pool of that name; "base" the default pool unless a pool
 * is named so (the pool named "default", which a daemon without [pool]
 * sections has, else the first); else a snapshot template of that name. */
static int
resolve(struct vm_job *v, Vmf__Control__StatusReply *st, Vmf__Control__GetVMRequest *g)
{
	const char *t = v->template_id;
	Vmf__Control__PoolStatus *pool = NULL;
	for (size_t i = 0; i < st->n_pools && !pool; i++)
		if (strcmp(st->pools[i]->name, t) == 0)
			pool = st->pools[i];
	if (!pool && strcmp(t, "base") == 0) {
		for (size_t i = 0; i < st->n_pools && !pool; i++)
			if (strcmp(st->pools[i]->name, "default") == 0)
				pool = st->pools[i];
		if (!pool && st->n_pools)
			pool = st->pools[0];
	}
	if (pool) {
		g->pool = pool->name;
		g->vcpus = pool->vcpus;
		g->memory_mib = pool->memory_mib;
		return 0;
	}
	for (size_t i = 0; i < st->n_templates; i++)
		if (st->templates[i]->name && strcmp(st->templates[i]->name, t) == 0) {
			g->template_ = st->templates[i]->name;
			return 0;
		}
	char names[600] = "";
	size_t off = 0;
	for (size_t i = 0; i < st->n_pools && off < sizeof(names) - 80; i++)
		off += (size_t)snprintf(names + off, sizeof(names) - off, "%s%s", off ? ", " : "", st->pools[i]->name);
	for (size_t i = 0; i < st->n_templates && off < sizeof(names) - 80; i++)
		if (st->templates[i]->name && *st->templates[i]->name)
			off += (size_t)snprintf(names + off, sizeof(names) - off, "%s%s (snapshot)", off ? ", " : "",
						st->templates[i]->name);
	return vmf_err(&v->job.err, ENOENT, "template '%s' not found: this vmfactory serves %s%s", t,
		       off ? names : "no template", st->n_pools ? " and base (its default pool)" : "");
}

static void
copy_vm(struct vm_job *v, const Vmf__Control__VmInfo *vm)
{
	snprintf(v->vm_id, sizeof(v->vm_id), "%s", vm->id);
	v->vcpus = vm->vcpus;
	v->memory_mib = vm->memory_mib;
	snprintf(v->agent_socket, sizeof(v->agent_socket), "%s", vm->agent_socket);
	snprintf(v->agent_transport, sizeof(v->agent_transport), "%s", vm->agent_transport);
	v->vsock_port = vm->agent_vsock_port;
}

static int
connect_agent(struct vm_job *v)
{
	int r = vmf_client_agent_connect(v->agent_socket, v->agent_transport, v->vsock_port, AGENT_CONNECT_MS, NULL,
					 NULL, &v->agent, &v->job.err);
	if (r == 0 && (r = gw_guest_prepare(v->agent, v->env, &v->adopted, &v->job.err)) < 0) {
		vmf_client_agent_close(v->agent);
		v->agent = NULL;
	}
	return r;
}

static void
create_work(struct vm_job *v, struct vmf_client *c)
{
	struct gw_job *j = &v->job;
	Vmf__Control__Reply *st;
	if ((j->rc = vmf_client_status(c, &st, 10000, &j->err)) < 0)
		return;
	Vmf__Control__GetVMRequest g = VMF__CONTROL__GET_VMREQUEST__INIT;
	j->rc = resolve(v, st->status, &g);
	bool share = has_cap(st->status, "share-device");
	if (j->rc < 0) {
		vmf__control__reply__free_unpacked(st, NULL);
		return;
	}
	char share_dir[4300], sock_dir[4300];
	snprintf(share_dir, sizeof(share_dir), "%s/share", v->dir);
	snprintf(sock_dir, sizeof(sock_dir), "%s/sock", v->dir);
	if (mkdir(v->dir, 0700) < 0 && errno != EEXIST) {
		j->rc = vmf_err_sys(&j->err, errno, "cannot create the sandbox dir %s", v->dir);
		vmf__control__reply__free_unpacked(st, NULL);
		return;
	}
	g.sandbox_id = v->sandbox_id;
	g.share_dir = share ? share_dir : "";
	g.sock_dir = sock_dir;
	g.timeout_ms = GETVM_BUDGET_MS;
	g.ttl_s = v->ttl_s;
	g.on_expiry = (char *)on_expiry(v);
	Vmf__Control__Reply *rep;
	j->rc = vmf_client_get_vm(c, &g, &rep, GETVM_BUDGET_MS + 5000, &j->err);
	vmf__control__reply__free_unpacked(st, NULL);
	if (j->rc < 0) {
		vmf_rm_rf(v->dir, NULL);
		return;
	}
	copy_vm(v, rep->vm);
	vmf__control__reply__free_unpacked(rep, NULL);
	/* The first command of the sandbox then finds its connection made. */
	if ((j->rc = connect_agent(v)) < 0) {
		vmf_error_prefix(&j->err, "the sandbox's guest agent");
		struct vmf_error e;
		if (vmf_client_release_vm(c, v->vm_id, RELEASE_MS, &e) < 0)
			log_warn("cannot release VM %s after its agent failed: %s", v->vm_id, e.msg);
		vmf_rm_rf(v->dir, NULL);
	}
}

static void
vm_work(struct gw_job *j)
{
	struct vm_job *v = (struct vm_job *)j;
	struct vmf_client *c;
	if ((j->rc = connect_daemon(v, &c)) < 0)
		return;
	Vmf__Control__Reply *rep = NULL;
	switch (v->op) {
	case GW_VM_CREATE:
		create_work(v, c);
		break;
	case GW_VM_KILL:
		j->rc = vmf_client_release_vm(c, v->vm_id, RELEASE_MS, &j->err);
		/* Gone already (the daemon was reset, an operator released it):
		 * the sandbox goes all the same. */
		if (j->rc == -ENOENT)
			j->rc = 0;
		if (j->rc == 0)
			vmf_rm_rf(v->dir, NULL);
		break;
	case GW_VM_PAUSE:
		j->rc = vmf_client_suspend_vm(c, v->vm_id, &rep, SUSPEND_MS, &j->err);
		break;
	case GW_VM_RESUME:
		if ((j->rc = vmf_client_resume_vm_lease(c, v->vm_id, v->ttl_s, on_expiry(v), &rep, SUSPEND_MS,
							&j->err)) < 0)
			break;
		copy_vm(v, rep->vm);
		if ((j->rc = connect_agent(v)) < 0)
			vmf_error_prefix(&j->err, "the resumed sandbox's guest agent");
		break;
	case GW_VM_LEASE:
		j->rc = vmf_client_lease(c, v->vm_id, v->ttl_s, on_expiry(v), &rep, RELEASE_MS, &j->err);
		break;
	}
	if (rep)
		vmf__control__reply__free_unpacked(rep, NULL);
	vmf_client_close(c);
}

static void
vm_start(struct gw_job *j)
{
	struct vm_job *v = (struct vm_job *)j;
	struct gw_sandbox *sb = j->sb;
	snprintf(v->vm_id, sizeof(v->vm_id), "%s", sb->vm_id);
	/* Another request got there first (two pauses, two connects). */
	if (((v->op == GW_VM_PAUSE || v->op == GW_VM_LEASE) && sb->state != GW_SB_RUNNING) ||
	    (v->op == GW_VM_RESUME && sb->state != GW_SB_PAUSED)) {
		j->cancelled = true;
		j->rc = vmf_err(&j->err, EALREADY, "sandbox %s is %s already", sb->id,
				sb->state == GW_SB_PAUSED ? "paused" : "running");
		return;
	}
	/* The lease as it is when the job runs: a later change queued its own. */
	if (v->op == GW_VM_LEASE) {
		int64_t left_ms = sb->end_ms - gw_now_ms();
		v->ttl_s = gw_lease_daemon_ttl(left_ms > 0 ? (unsigned)((left_ms + 999) / 1000) : 0);
		v->suspend = sb->auto_pause;
	}
	/* What a pause or kill ends must end before the VM stops: each
	 * process's stream gets its reason. */
	if ((v->op == GW_VM_CREATE || v->op == GW_VM_RESUME) && !(v->env = gw_sb_env(sb))) {
		j->cancelled = true;
		j->rc = vmf_err(&j->err, ENOMEM, "out of memory for sandbox %s's environment", sb->id);
		return;
	}
	if (v->op == GW_VM_PAUSE)
		gw_guest_close(j->gw, sb, "unavailable", "the sandbox was paused");
	else if (v->op == GW_VM_KILL)
		gw_guest_close(j->gw, sb, "not_found", "the sandbox was killed");
}

static void
vm_done(struct gw_job *j)
{
	struct vm_job *v = (struct vm_job *)j;
	struct gw *gw = j->gw;
	struct gw_sandbox *sb = j->sb;
	if (j->rc == 0) {
		switch (v->op) {
		case GW_VM_CREATE:
		case GW_VM_RESUME:
			snprintf(sb->vm_id, sizeof(sb->vm_id), "%s", v->vm_id);
			snprintf(sb->agent_socket, sizeof(sb->agent_socket), "%s", v->agent_socket);
			snprintf(sb->agent_transport, sizeof(sb->agent_transport), "%s", v->agent_transport);
			sb->vsock_port = v->vsock_port;
			sb->vcpus = v->vcpus;
			sb->memory_mib = v->memory_mib;
			sb->state = GW_SB_RUNNING;
			gw_guest_attach(gw, sb, v->agent, &v->adopted);
			v->agent = NULL;
			break;
		case GW_VM_PAUSE:
			sb->state = GW_SB_PAUSED;
			break;
		case GW_VM_KILL:
			gw_sb_remove(gw, sb);
			break;
		case GW_VM_LEASE:
			break;
		}
	} else if (v->op == GW_VM_KILL) {
		sb->dying = false;
	}
	if (v->agent)
		vmf_client_agent_close(v->agent);
	free(v->adopted.v);
	gw_strv_free(v->env);
	if (j->rc < 0)
		vmf_log_kv(j->rc == -ENOENT || j->rc == -EALREADY ? VMF_LOG_INFO : VMF_LOG_WARN, __func__, NULL,
			   "sandbox %s: %s", sb->id, j->err.msg);
	v->done(gw, sb, j->rc, &j->err, v->arg);
	free(v);
}

int
gw_vm_run(struct gw *gw, struct gw_sandbox *sb, enum gw_vm_op op, gw_vm_done_fn done, void *arg)
{
	return gw_vm_run_ttl(gw, sb, op, 0, done, arg);
}

int
gw_vm_run_ttl(struct gw *gw, struct gw_sandbox *sb, enum gw_vm_op op, unsigned ttl_s, gw_vm_done_fn done,
	      void *arg)
{
	struct vm_job *v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->op = op;
	v->ttl_s = ttl_s;
	v->suspend = sb->auto_pause;
	v->done = done;
	v->arg = arg;
	v->job.sb = sb;
	v->job.key = sb->key;
	v->job.start = vm_start;
	v->job.work = vm_work;
	v->job.done = vm_done;
	snprintf(v->socket, sizeof(v->socket), "%s", gw->o.socket);
	snprintf(v->sandbox_id, sizeof(v->sandbox_id), "%s", sb->id);
	snprintf(v->template_id, sizeof(v->template_id), "%s", sb->template_id);
	gw_sb_dir(gw, sb->id, v->dir, sizeof(v->dir));
	int r = gw_job_submit(gw, &v->job);
	if (r < 0)
		free(v);
	else if (op == GW_VM_KILL)
		sb->dying = true;
	return r;
}
