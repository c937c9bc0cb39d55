/* The benchmark behind contrib/bench/run: every method measured side by side
 * in one run, on one machine and one QEMU, so the ratios hold on a noisy host.
 *
 * In-process (driver and template API): cold boot, full-memory restore,
 * template clone, the resume floor, PSS of cold VMs.  Through a private
 * daemon (the real socket and CLI): hand-outs, refill, pooled PSS, daemon
 * RSS and fds over many get/release cycles.
 *
 *   vmf-bench --vmfactory BIN --dir DIR [--samples N] [--cycles N] [--vms N] [--json FILE]
 *
 * Writes DIR/<method>.dat (one latency per line, ms) for the chart, the JSON
 * to --json, and a Markdown report on stdout. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "catalog.h"
#include "client.h"
#include "daemon.h"
#include "frame.h"
#include "log.h"
#include "template.h"
#include "util.h"

#define AGENT_TIMEOUT_MS 120000
#define CALL_TIMEOUT_MS 120000

/* The trace run's size mix: weight, vCPUs and MiB above the base. */
struct mix {
	unsigned weight, vcpus, mib;
};

static struct {
	const char *bin, *dir, *json;
	int samples, cycles, vms;
	char state[4096], run[4096], sock[4096];
	/* The trace run: arrivals per pool, Poisson rate, hold time, pool
	 * size and shaping cap, the size mix; ramp steps of ramp_n arrivals. */
	bool trace_only;
	bool release_only;        /* --release-only: the daemon's release figures alone */
	bool burst_only;          /* --burst-only: refill of the pool and a burst of 3x it alone */
	int clone_par;            /* --clone-parallelism: the daemon's fill_ and clone_parallelism, 0 = its defaults */
	int trace_n, trace_pool, trace_shape_max, ramp_n, ramp_steps;
	double trace_rate, trace_hold_ms;
	struct mix mix[8];
	int nmix;
} cfg = { .samples = 50, .cycles = 1000, .vms = 8, .trace_n = 160, .trace_pool = 6, .trace_shape_max = 3,
	  .ramp_n = 24, .ramp_steps = 6, .trace_rate = 0.5, .trace_hold_ms = 2000 };

static void die(const struct vmf_error *e, const char *what) __attribute__((noreturn));

static void
die(const struct vmf_error *e, const char *what)
{
	fprintf(stderr, "vmf-bench: %s: %s\n", what, e ? e->msg : strerror(errno));
	exit(1);
}

static double
ms_since(int64_t t0)
{
	return (vmf_monotonic_ns() - t0) / 1e6;
}

/* ---- statistics ---- */

struct series {
	const char *name;
	double *v;
	int n, cap;
};

static void
add(struct series *s, double ms)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 64;
		s->v = realloc(s->v, s->cap * sizeof(*s->v));
		if (!s->v)
			die(NULL, "out of memory");
	}
	s->v[s->n++] = ms;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of the sorted samples. */
static double
pct(const struct series *s, double p)
{
	if (s->n == 0)
		return 0;
	int k = (int)(p / 100.0 * s->n + 0.999999) - 1;
	if (k < 0)
		k = 0;
	if (k >= s->n)
		k = s->n - 1;
	return s->v[k];
}

static void
finish(struct series *s)
{
	qsort(s->v, s->n, sizeof(*s->v), cmp_double);
	char path[4200];
	snprintf(path, sizeof path, "%s/%s.dat", cfg.dir, s->name);
	FILE *f = fopen(path, "w");
	if (!f)
		die(NULL, path);
	for (int i = 0; i < s->n; i++)
		fprintf(f, "%.3f %.4f\n", s->v[i], (i + 1.0) / s->n);
	fclose(f);
}

/* ---- in-process VMs ---- */

static struct vmf_template_params params;
static struct vmf_image img;
static struct vmf_hv_info hv;

static void
vm_config(vmf_vm_config *c, const char *id, char *run_dir, size_t n)
{
	vmf__hv__vm_config__init(c);
	snprintf(run_dir, n, "%s/bench-%s", cfg.run, id);
	c->id = (char *)id;
	c->name = (char *)id;
	c->run_dir = run_dir;
	c->kernel = img.kernel;
	c->initrd = img.initrd;
	c->cmdline = (char *)VMF_DEFAULT_CMDLINE;
	c->vcpus = params.vcpus;
	c->max_vcpus = params.max_vcpus;
	c->memory_mib = params.memory_mib;
	c->max_memory_mib = params.max_memory_mib;
	c->memory_slots = params.memory_slots;
	c->memory_mode = VMF__HV__MEMORY_MODE__MEM_PRIVATE;
}

static struct vmf_agent *
agent_of(struct vmf_vmm *vm)
{
	struct vmf_error e = {0};
	int fd = vmf_qemu_ops.agent_connect(vm, 10000, &e);
	if (fd < 0)
		die(&e, "agent connect");
	return vmf_agent_new(fd);
}

static void
stop(struct vmf_vmm *vm)
{
	struct vmf_error e = {0};
	vmf_qemu_ops.stop(vm, 10000, &e);
	vmf_qemu_ops.release(vm);
}

/* Cold boot until the agent's first answer. */
static struct vmf_vmm *
cold_boot(const char *id, double *ms)
{
	char run_dir[4200];
	vmf_vm_config c;
	vm_config(&c, id, run_dir, sizeof run_dir);
	struct vmf_vmm *vm;
	struct vmf_error e = {0};
	int64_t t0 = vmf_monotonic_ns();
	if (vmf_qemu_ops.boot(&c, &vm, &e) < 0)
		die(&e, "cold boot");
	struct vmf_agent *a = agent_of(vm);
	if (vmf_agent_wait_ready(a, AGENT_TIMEOUT_MS, &e) < 0)
		die(&e, "cold boot: agent");
	if (ms)
		*ms = ms_since(t0);
	vmf_agent_free(a);
	return vm;
}

/* A clone of rec, resumed, until the agent answers. */
static struct vmf_vmm *
clone_resume(const Vmf__Catalog__TemplateRecord *rec, const char *id, double *ms)
{
	char run_dir[4200], share[4300];
	snprintf(run_dir, sizeof run_dir, "%s/bench-%s", cfg.run, id);
	snprintf(share, sizeof share, "%s/share", run_dir);
	struct vmf_template_params p = params;
	p.full_memory = rec->spec && rec->spec->full_memory;
	struct vmf_vmm *vm;
	struct vmf_error e = {0};
	int64_t t0 = vmf_monotonic_ns();
	if (vmf_template_clone(&p, rec, id, run_dir, share, &vm, &e) < 0)
		die(&e, "clone");
	if (vmf_qemu_ops.resume(vm, &e) < 0)
		die(&e, "resume");
	struct vmf_agent *a = agent_of(vm);
	if (vmf_agent_wait_ready(a, AGENT_TIMEOUT_MS, &e) < 0)
		die(&e, "clone: agent");
	*ms = ms_since(t0);
	vmf_agent_free(a);
	return vm;
}

static Vmf__Catalog__TemplateRecord *
template(struct vmf_catalog *cat, bool full)
{
	struct vmf_template_params p = params;
	p.full_memory = full;
	Vmf__Catalog__TemplateSpec *spec;
	char id[VMF_SHA256_HEX];
	struct vmf_error e = {0};
	Vmf__Catalog__TemplateRecord *rec;
	if (vmf_template_spec_new(&p, &hv, &img, &spec, id, &e) < 0 ||
	    vmf_template_build(cat, cfg.state, cfg.run, &p, spec, &img, NULL, NULL, &rec, &e) < 0)
		die(&e, full ? "full-memory template" : "template");
	vmf_template_spec_free(spec);
	return rec;
}

/* ---- the daemon ---- */

static int
run_cli(const char *args)
{
	char cmd[16384];
	snprintf(cmd, sizeof cmd, "%s %s --socket %s --state-dir %s --run-dir %s >>%s/cli.log 2>&1", cfg.bin, args,
		 cfg.sock, cfg.state, cfg.run, cfg.dir);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static Vmf__Control__Reply *
status(void)
{
	struct vmf_client *c;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	if (vmf_client_connect(cfg.sock, &c, &e) < 0 || vmf_client_status(c, &r, CALL_TIMEOUT_MS, &e) < 0)
		die(&e, "status");
	vmf_client_close(c);
	return r;
}

static unsigned
pool_ready(void)
{
	Vmf__Control__Reply *r = status();
	unsigned n = r->status->n_pools ? r->status->pools[0]->ready : 0;
	vmf__control__reply__free_unpacked(r, NULL);
	return n;
}

static void
wait_pool(unsigned want, int64_t deadline_ms)
{
	while (pool_ready() < want) {
		if (vmf_now_ms() > deadline_ms) {
			fprintf(stderr, "vmf-bench: the pool did not reach %u ready VMs in time\n", want);
			exit(1);
		}
		poll(NULL, 0, 10);
	}
}

static struct agent_addr {
	char path[4200];
	char transport[32];
	unsigned port;
} last_agent;

/* Each hand-out's clock error as the daemon measured it (|guest - host|
 * realtime when the guest's reply to the hand-out arrived), in ms. */
static struct series clock_err = { .name = "clock-error" };

/* The network the next hand-outs ask for: a namespace path, or
 * a --net value; NULL for none. */
static const char *get_netns, *get_net;

/* One GetVM, request to reply; the VM's id in id (and its agent's address
 * in last_agent). */
static double
get_vm(struct vmf_client *c, unsigned vcpus, unsigned mib, int k, char id[64])
{
	char sandbox[64], share[4200], sockd[4200];
	snprintf(sandbox, sizeof sandbox, "bench-%d", k);
	snprintf(share, sizeof share, "%s/sb/%s-share", cfg.dir, sandbox);
	snprintf(sockd, sizeof sockd, "%s/sb/%s-sock", cfg.dir, sandbox);
	Vmf__Control__GetVMRequest req = VMF__CONTROL__GET_VMREQUEST__INIT;
	req.vcpus = vcpus;
	req.memory_mib = mib;
	req.sandbox_id = sandbox;
	req.share_dir = share;
	req.sock_dir = sockd;
	req.netns = (char *)(get_netns ? get_netns : "");
	req.net = (char *)(get_net ? get_net : "");
	Vmf__Control__Reply *r;
	struct vmf_error e = {0};
	int64_t t0 = vmf_monotonic_ns();
	if (vmf_client_get_vm(c, &req, &r, CALL_TIMEOUT_MS, &e) < 0)
		die(&e, "GetVM");
	double ms = ms_since(t0);
	snprintf(id, 64, "%s", r->vm->id);
	snprintf(last_agent.path, sizeof last_agent.path, "%s", r->vm->agent_socket);
	snprintf(last_agent.transport, sizeof last_agent.transport, "%s", r->vm->agent_transport);
	last_agent.port = r->vm->agent_vsock_port;
	add(&clock_err, r->vm->clock_error_ms);
	vmf__control__reply__free_unpacked(r, NULL);
	return ms;
}

/* The first command's time, step by step (ms), on the exec samples:
 * connect: the socket opened until the agent answered the connection's
 *   ExecReset (QEMU accepting, the guest noticing the host side opened,
 *   one round trip);
 * start: ExecStart written until its ExecStarted reply (the request read,
 *   the process spawned);
 * output: ExecStarted until the first output frame (the process running
 *   to its first write, the frame's way back);
 * exit: the first output until the exit frame (the process ending, its
 *   reaping, the frame's way back). */
static struct series fc_connect = { .name = "first-cmd-connect" }, fc_start = { .name = "first-cmd-start" },
		     fc_output = { .name = "first-cmd-output" }, fc_exit = { .name = "first-cmd-exit" };

/* `echo x` in the VM of the last GetVM, through its agent as a runtime
 * would (connect, ExecStart, wait for the exit): connect to exit frame, in
 * ms.  One line of output, so that the first output is a step of its own. */
static double
exec_first(void)
{
	struct vmf_error e = {0};
	int64_t t0 = vmf_monotonic_ns();
	struct vmf_client_agent *a;
	if (vmf_client_agent_connect(last_agent.path, last_agent.transport, last_agent.port, CALL_TIMEOUT_MS, NULL,
				     NULL, &a, &e) < 0)
		die(&e, "agent connect");
	add(&fc_connect, ms_since(t0));
	int64_t t1 = vmf_monotonic_ns();
	uint64_t xid;
	struct vmf_exec_opts o = { .argv = (const char *const[]){ "echo", "x", NULL } };
	if (vmf_client_exec_start(a, &o, &xid, CALL_TIMEOUT_MS, &e) < 0)
		die(&e, "exec echo");
	add(&fc_start, ms_since(t1));
	int64_t t2 = vmf_monotonic_ns(), t3 = 0;
	for (;;) {
		struct vmf_exec_event ev;
		if (vmf_client_agent_next_event(a, &ev, CALL_TIMEOUT_MS, &e) < 0)
			die(&e, "exec echo");
		if (ev.type == VMF_EXEC_EV_NONE) {
			vmf_err(&e, ETIMEDOUT, "no exit of echo within %d ms", CALL_TIMEOUT_MS);
			die(&e, "exec echo");
		}
		if (ev.type == VMF_EXEC_EV_OUTPUT && ev.exec_id == xid && !t3) {
			t3 = vmf_monotonic_ns();
			add(&fc_output, ms_since(t2));
		}
		if (ev.type == VMF_EXEC_EV_EXIT && ev.exec_id == xid)
			break;
	}
	if (!t3) {
		vmf_err(&e, EIO, "echo exited without output");
		die(&e, "exec echo");
	}
	add(&fc_exit, ms_since(t3));
	double ms = ms_since(t0);
	vmf_client_agent_close(a);
	return ms;
}

static void
release_vm(struct vmf_client *c, const char *id)
{
	struct vmf_error e = {0};
	if (vmf_client_release_vm(c, id, CALL_TIMEOUT_MS, &e) < 0)
		die(&e, "ReleaseVM");
}

/* One ReleaseVM, request to reply; the reply must name no disk as having
 * lost writes. */
static double
timed_release(struct vmf_client *c, const char *id)
{
	struct vmf_error e = {0};
	Vmf__Control__Reply *r;
	int64_t t0 = vmf_monotonic_ns();
	if (vmf_client_release(c, id, &r, CALL_TIMEOUT_MS, &e) < 0)
		die(&e, "ReleaseVM");
	double ms = ms_since(t0);
	if (r->release->stop && r->release->stop->n_lost_writes) {
		vmf_err(&e, EIO, "%s", r->release->stop->lost_writes[0]);
		die(&e, "ReleaseVM lost writes");
	}
	vmf__control__reply__free_unpacked(r, NULL);
	return ms;
}

/* Release latency (stop = flush, the default): of a plain hand-out (no
 * disk: the guest is not asked), and of one with a read-write ext4 disk
 * mounted that holds 1 MiB the guest wrote and did not sync (its flush:
 * written back, unmounted, the device flushed, then QEMU quits).  False
 * (rw left out) when the disk cannot be made. */
static bool
release_bench(struct vmf_client *c, struct series *rel, struct series *relrw)
{
	char id[64], img[4200], cmd[16384];
	for (int i = 0; i < cfg.samples; i++) {
		wait_pool(cfg.vms, vmf_now_ms() + 120000);
		get_vm(c, 1, 256, 7000 + i, id);
		add(rel, timed_release(c, id));
	}
	snprintf(img, sizeof img, "%s/rw.img", cfg.dir);
	snprintf(cmd, sizeof cmd, "truncate -s 64M %s && PATH=$PATH:/sbin:/usr/sbin mkfs.ext4 -q -F %s", img, img);
	if (system(cmd) != 0) {
		fprintf(stderr, "vmf-bench: cannot make the read-write disk (mkfs.ext4); release with a disk skipped\n");
		return false;
	}
	for (int i = 0; i < cfg.samples; i++) {
		wait_pool(cfg.vms, vmf_now_ms() + 120000);
		get_vm(c, 1, 256, 8000 + i, id);
		Vmf__Control__AttachRequest at = VMF__CONTROL__ATTACH_REQUEST__INIT;
		Vmf__Control__Reply *r;
		struct vmf_error e = {0};
		at.vm_id = id;
		at.path = img;
		at.guest_path = "/mnt/rw";
		if (vmf_client_attach(c, &at, &r, CALL_TIMEOUT_MS, &e) < 0) {
			fprintf(stderr, "vmf-bench: attach: %s; release with a disk skipped\n", e.msg);
			release_vm(c, id);
			return false;
		}
		vmf__control__reply__free_unpacked(r, NULL);
		snprintf(cmd, sizeof cmd, "%s exec --socket %s --state-dir %s --run-dir %s %s -- sh -c "
			 "'dd if=/dev/urandom of=/mnt/rw/f%d bs=64k count=16 2>/dev/null' 2>>%s/cli.log", cfg.bin, cfg.sock,
			 cfg.state, cfg.run, id, i, cfg.dir);
		if (system(cmd) != 0) {
			fprintf(stderr, "vmf-bench: the guest write failed; see %s/cli.log\n", cfg.dir);
			release_vm(c, id);
			return false;
		}
		add(relrw, timed_release(c, id));
	}
	return true;
}

/* A daemon with a pool of cfg.vms (shape off), its socket connected. */
static struct vmf_client *start_daemon(void);

/* ---- disks ---- */

/* Guest seconds (CLOCK_BOOTTIME, 10 ms steps: busybox has no %N) of a
 * sequential read of the same 64 MiB file from an attached ext4 disk and
 * from the 9p share, page cache dropped before each; by `vmfactory exec`
 * in the VM id.  0 on failure. */
static int
guest_read_times(const char *id, double *disk_s, double *share_s)
{
	char cmd[16384];
	snprintf(cmd, sizeof cmd, "%s exec --socket %s --state-dir %s --run-dir %s %s -- sh -c '"
		 "echo 3 > /proc/sys/vm/drop_caches; read a x < /proc/uptime; "
		 "dd if=/mnt/bench/data.bin of=/dev/null bs=1M 2>/dev/null; read b x < /proc/uptime; "
		 "echo 3 > /proc/sys/vm/drop_caches; read c x < /proc/uptime; "
		 "dd if=/mnt/share/data.bin of=/dev/null bs=1M 2>/dev/null; read d x < /proc/uptime; "
		 "echo $a $b $c $d' 2>>%s/cli.log", cfg.bin, cfg.sock, cfg.state, cfg.run, id, cfg.dir);
	FILE *p = popen(cmd, "r");
	double a, b, c2, d;
	int n = p ? fscanf(p, "%lf %lf %lf %lf", &a, &b, &c2, &d) : 0;
	if (p)
		pclose(p);
	if (n != 4)
		return -1;
	*disk_s = b - a;
	*share_s = d - c2;
	return 0;
}

/* Attach + mount latency (read-only ext4 image, request to reply: the
 * guest has it mounted), samples times on one VM; then the read
 * throughputs.  False (and the keys left out) when the image has no disk
 * support. */
static bool
disk_bench(struct vmf_client *c, struct series *attach, double *disk_mib_s, double *share_mib_s)
{
	char cmd[16384], img[4200], id[64], share[4300];
	snprintf(img, sizeof img, "%s/disk.img", cfg.dir);
	snprintf(cmd, sizeof cmd, "set -e; mkdir -p %s/diskroot; head -c 64M /dev/urandom > %s/diskroot/data.bin; "
		 "truncate -s 80M %s; PATH=$PATH:/sbin:/usr/sbin mkfs.ext4 -q -F -d %s/diskroot %s",
		 cfg.dir, cfg.dir, img, cfg.dir, img);
	if (system(cmd) != 0) {
		fprintf(stderr, "vmf-bench: cannot make the disk image (mkfs.ext4 -d); disk bench skipped\n");
		return false;
	}
	wait_pool(cfg.vms, vmf_now_ms() + 120000);
	get_vm(c, 1, 256, 9000, id);
	snprintf(share, sizeof share, "%s/sb/bench-9000-share/data.bin", cfg.dir);
	snprintf(cmd, sizeof cmd, "cp %s/diskroot/data.bin %s", cfg.dir, share);
	bool ok = system(cmd) == 0;
	for (int i = 0; ok && i < cfg.samples; i++) {
		Vmf__Control__AttachRequest at = VMF__CONTROL__ATTACH_REQUEST__INIT;
		Vmf__Control__Reply *r;
		struct vmf_error e = {0};
		at.vm_id = id;
		at.path = img;
		at.read_only = true;
		at.guest_path = "/mnt/bench";
		int64_t t0 = vmf_monotonic_ns();
		if (vmf_client_attach(c, &at, &r, CALL_TIMEOUT_MS, &e) < 0) {
			fprintf(stderr, "vmf-bench: attach: %s; disk bench skipped\n", e.msg);
			ok = false;
			break;
		}
		add(attach, ms_since(t0));
		vmf__control__reply__free_unpacked(r, NULL);
		if (i + 1 < cfg.samples) {
			if (vmf_client_detach(c, id, img, &r, CALL_TIMEOUT_MS, &e) < 0)
				die(&e, "detach");
			vmf__control__reply__free_unpacked(r, NULL);
		}
	}
	double ds, ss;
	if (ok && guest_read_times(id, &ds, &ss) == 0 && ds > 0 && ss > 0) {
		*disk_mib_s = 64 / ds;
		*share_mib_s = 64 / ss;
	} else if (ok) {
		fprintf(stderr, "vmf-bench: the guest read could not be timed; see %s/cli.log\n", cfg.dir);
		ok = false;
	}
	release_vm(c, id);
	return ok;
}

/* Per-step p50/p99 of the daemon's hand-outs so far, as Markdown rows. */
static void
steps_table(FILE *out, json_object *j)
{
	Vmf__Control__Reply *r = status();
	fprintf(out, "| step | count | p50 ms | p99 ms |\n|---|---:|---:|---:|\n");
	for (size_t i = 0; i < r->status->n_steps; i++) {
		Vmf__Control__StepLatency *s = r->status->steps[i];
		fprintf(out, "| %s | %llu | %.2f | %.2f |\n", s->step, (unsigned long long)s->count, s->p50_ms,
			s->p99_ms);
		json_object *o = json_object_new_object();
		json_object_object_add(o, "p50_ms", json_object_new_double(s->p50_ms));
		json_object_object_add(o, "p99_ms", json_object_new_double(s->p99_ms));
		json_object_object_add(j, s->step, o);
	}
	vmf__control__reply__free_unpacked(r, NULL);
}

static uint64_t
mean_pss_of_pooled(void)
{
	Vmf__Control__Reply *r = status();
	uint64_t sum = 0;
	unsigned n = 0;
	for (size_t i = 0; i < r->status->n_vms; i++) {
		uint64_t p = vmf_proc_pss_kib(r->status->vms[i]->pid);
		if (p) {
			sum += p;
			n++;
		}
	}
	vmf__control__reply__free_unpacked(r, NULL);
	return n ? sum / n : 0;
}

/* ---- report ---- */

static json_object *J;

/* Snapshot into a template (vmfactory snapshot) against the VM's memory:
 * a VM of each size (hot-added above the 256 MiB base) forked once; the
 * whole request and the time the VM stood still. */
static const unsigned snap_sizes[] = { 256, 512, 1024 };
#define SNAP_SIZES (sizeof(snap_sizes) / sizeof(snap_sizes[0]))
/* --snapshot-sizes N: the first N sizes (the quick run takes one). */
static size_t N_SNAP = SNAP_SIZES;
static double snap_ms[SNAP_SIZES], snap_paused_ms[SNAP_SIZES];
static char snap_method[64];

static int run_cli(const char *args);
static double get_vm(struct vmf_client *c, unsigned vcpus, unsigned mib, int k, char id[64]);
static void release_vm(struct vmf_client *c, const char *id);

static int
snapshot_run(void)
{
	fprintf(stderr, "vmf-bench: snapshot into a template, %u to %u MiB\n", snap_sizes[0], snap_sizes[N_SNAP - 1]);
	char args[256];
	snprintf(args, sizeof args, "init --pool 0 --max-memory %u", snap_sizes[N_SNAP - 1]);
	if (run_cli(args) != 0) {
		fprintf(stderr, "vmf-bench: vmfactory init for the snapshots failed; see %s/cli.log\n", cfg.dir);
		return -1;
	}
	struct vmf_client *c;
	struct vmf_error e = {0};
	if (vmf_client_connect(cfg.sock, &c, &e) < 0)
		die(&e, "connect");
	for (size_t k = 0; k < N_SNAP; k++) {
		char id[64], name[32];
		get_vm(c, 1, snap_sizes[k], 900 + (int)k, id);
		snprintf(name, sizeof name, "bench-%u", snap_sizes[k]);
		Vmf__Control__Reply *r;
		int64_t t0 = vmf_monotonic_ns();
		if (vmf_client_snapshot(c, id, name, &r, 600000, &e) < 0)
			die(&e, "Snapshot");
		snap_ms[k] = ms_since(t0);
		snap_paused_ms[k] = (double)r->snapshot->paused_ms;
		snprintf(snap_method, sizeof snap_method, "%s", r->snapshot->method);
		vmf__control__reply__free_unpacked(r, NULL);
		release_vm(c, id);
	}
	vmf_client_close(c);
	if (run_cli("destroy --all") != 0)
		fprintf(stderr, "vmf-bench: vmfactory destroy failed; see %s/cli.log\n", cfg.dir);
	return 0;
}

static void
jnum(const char *k, double v)
{
	json_object_object_add(J, k, json_object_new_double(v));
}

static void
row(const struct series *s, const char *what)
{
	printf("| %s | %s | %d | %.1f | %.1f | %.1f | %.1f |\n", s->name, what, s->n, pct(s, 50), pct(s, 95),
	       pct(s, 99), s->n ? s->v[s->n - 1] : 0);
}

static void
target(const char *what, double value, double bound, bool le, const char *unit)
{
	bool met = le ? value <= bound : value >= bound;
	printf("| %s | %.2f%s | %s %.2f%s | %s |\n", what, value, unit, le ? "≤" : "≥", bound, unit,
	       met ? "met" : "**missed**");
}

/* ---- the trace run ----
 * Open-loop arrivals (Poisson at trace_rate), each request drawn from the
 * size mix, held trace_hold_ms, then released; once against a static pool
 * (shape = off), once against a demand-shaped one, then a ramp of rates
 * on the shaped pool.  Each request runs on its own thread and connection,
 * so a slow hand-out never delays the next arrival. */

struct treq {
	int k;
	unsigned vcpus, mib;
	double at_ms;          /* arrival, from the run's start */
	double ms;             /* GetVM, request to reply */
	char handout[16];      /* shaped, base, resize, miss; "error" */
	char err[200];
	pthread_t th;
};

/* One GetVM of vcpus / mib for sandbox on a connection of its own, *ms
 * from request to reply: the reply with *c open (for a release), or NULL
 * with err and *c closed. */
static Vmf__Control__Reply *
own_get(const char *sandbox, unsigned vcpus, unsigned mib, struct vmf_client **c, double *ms, char *err, size_t n)
{
	char share[4200], sockd[4200];
	snprintf(share, sizeof share, "%s/sb/%s-share", cfg.dir, sandbox);
	snprintf(sockd, sizeof sockd, "%s/sb/%s-sock", cfg.dir, sandbox);
	Vmf__Control__GetVMRequest req = VMF__CONTROL__GET_VMREQUEST__INIT;
	req.vcpus = vcpus;
	req.memory_mib = mib;
	req.sandbox_id = (char *)sandbox;
	req.share_dir = share;
	req.sock_dir = sockd;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r = NULL;
	if (vmf_client_connect(cfg.sock, c, &e) < 0) {
		snprintf(err, n, "%s", e.msg);
		return NULL;
	}
	int64_t t0 = vmf_monotonic_ns();
	int rc = vmf_client_get_vm(*c, &req, &r, CALL_TIMEOUT_MS, &e);
	*ms = ms_since(t0);
	if (rc < 0) {
		snprintf(err, n, "%s", e.msg);
		vmf_client_close(*c);
		return NULL;
	}
	return r;
}

static void *
trace_thread(void *arg)
{
	struct treq *q = arg;
	char sandbox[64];
	snprintf(sandbox, sizeof sandbox, "trace-%d", q->k);
	struct vmf_client *c;
	struct vmf_error e = {0};
	snprintf(q->handout, sizeof q->handout, "error");
	Vmf__Control__Reply *r = own_get(sandbox, q->vcpus, q->mib, &c, &q->ms, q->err, sizeof q->err);
	if (!r)
		return NULL;
	snprintf(q->handout, sizeof q->handout, "%s", r->vm->handout && *r->vm->handout ? r->vm->handout : "?");
	char id[64];
	snprintf(id, sizeof id, "%s", r->vm->id);
	vmf__control__reply__free_unpacked(r, NULL);
	poll(NULL, 0, (int)cfg.trace_hold_ms);
	if (vmf_client_release_vm(c, id, CALL_TIMEOUT_MS, &e) < 0)
		fprintf(stderr, "vmf-bench: trace: release of %s: %s\n", id, e.msg);
	vmf_client_close(c);
	return NULL;
}

static unsigned base_vcpus = VMF_DEFAULT_VCPUS, base_mib = VMF_DEFAULT_MEMORY_MIB;

/* n arrivals at rate per second, numbered from k0; q[] gets them. */
static void
trace_arrivals(struct treq *q, int n, int k0, double rate, unsigned *seed)
{
	unsigned total = 0;
	for (int m = 0; m < cfg.nmix; m++)
		total += cfg.mix[m].weight;
	int64_t start = vmf_monotonic_ns();
	double at = 0;
	for (int i = 0; i < n; i++) {
		/* exponential gaps: -ln(U)/rate */
		double u = (rand_r(seed) + 1.0) / ((double)RAND_MAX + 2.0);
		at += -log(u) / rate * 1000;
		unsigned pick = (unsigned)rand_r(seed) % total, m = 0;
		while (pick >= cfg.mix[m].weight)
			pick -= cfg.mix[m++].weight;
		q[i] = (struct treq){ .k = k0 + i, .vcpus = base_vcpus + cfg.mix[m].vcpus,
				      .mib = base_mib + cfg.mix[m].mib, .at_ms = at };
		double wait = at - ms_since(start);
		if (wait > 0)
			poll(NULL, 0, (int)wait);
		if (pthread_create(&q[i].th, NULL, trace_thread, &q[i]) != 0)
			die(NULL, "pthread_create");
	}
	for (int i = 0; i < n; i++)
		pthread_join(q[i].th, NULL);
}

struct trace_result {
	int n;                 /* counted (after warm-up) */
	int shaped, base, resize, miss, errors;
	double hit_rate, p50, p99;
};

/* Over q[from..n): a hit is a hand-out with no hot-add and no clone. */
static struct trace_result
trace_sum(const struct treq *q, int from, int n)
{
	struct trace_result t = {0};
	struct series s = {0};
	for (int i = from; i < n; i++) {
		t.n++;
		const char *h = q[i].handout;
		t.shaped += !strcmp(h, "shaped");
		t.base += !strcmp(h, "base");
		t.resize += !strcmp(h, "resize");
		t.miss += !strcmp(h, "miss");
		if (!strcmp(h, "error")) {
			t.errors++;
			continue;
		}
		add(&s, q[i].ms);
	}
	qsort(s.v, s.n, sizeof(*s.v), cmp_double);
	t.hit_rate = t.n ? (double)(t.shaped + t.base) / t.n : 0;
	t.p50 = pct(&s, 50);
	t.p99 = pct(&s, 99);   /* of the hand-outs served; errors are counted apart */
	free(s.v);
	return t;
}

/* p50 / p99 of the hand-outs of q[from..n) served as kind, as a table row. */
static void
kind_row(FILE *out, const char *pool, const struct treq *q, int from, int n, const char *kind)
{
	struct series s = {0};
	for (int i = from; i < n; i++)
		if (!strcmp(q[i].handout, kind))
			add(&s, q[i].ms);
	if (!s.n)
		return;
	qsort(s.v, s.n, sizeof(*s.v), cmp_double);
	fprintf(out, "| %s | %s | %d | %.1f | %.1f |\n", pool, kind, s.n, pct(&s, 50), pct(&s, 99));
	free(s.v);
}

static void
trace_daemon(bool shape)
{
	char conf[4200], text[256], args[4400];
	snprintf(conf, sizeof conf, "%s/trace.conf", cfg.dir);
	snprintf(text, sizeof text, "[daemon]\nshape = %s\nshape_max = %d\nshape_memory_mib = 4096\n",
		 shape ? "auto" : "off", cfg.trace_shape_max);
	FILE *f = fopen(conf, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0)
		die(NULL, conf);
	snprintf(args, sizeof args, "init --config %s --pool %d", conf, cfg.trace_pool);
	if (run_cli(args) != 0) {
		fprintf(stderr, "vmf-bench: vmfactory init failed; see %s/cli.log\n", cfg.dir);
		exit(1);
	}
	wait_pool(cfg.trace_pool, vmf_now_ms() + 600000);
}

static void
trace_errors(const char *what, const struct treq *q, int n)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(q[i].handout, "error")) {
			fprintf(stderr, "vmf-bench: %s: request %d (%u vCPUs, %u MiB) failed: %s\n", what, q[i].k,
				q[i].vcpus, q[i].mib, q[i].err);
			break;
		}
}

/* Runs the trace and the ramp; fills J and appends the report to out. */
static void
trace_run(double floor_ms, FILE *out)
{
	int n = cfg.trace_n, warm = n / 4;
	struct treq *q = calloc(2 * n, sizeof(*q));
	if (!q)
		die(NULL, "out of memory");
	unsigned seed;
	struct trace_result r[2];
	for (int shaped = 0; shaped < 2; shaped++) {
		fprintf(stderr, "vmf-bench: trace, %s pool of %d: %d arrivals at %.2f/s, hold %.0f ms\n",
			shaped ? "demand-shaped" : "static", cfg.trace_pool, n, cfg.trace_rate, cfg.trace_hold_ms);
		trace_daemon(shaped);
		seed = 14;   /* the same trace against both pools */
		trace_arrivals(q + shaped * n, n, shaped * 100000, cfg.trace_rate, &seed);
		trace_errors("trace", q + shaped * n, n);
		r[shaped] = trace_sum(q + shaped * n, warm, n);
		if (!shaped && run_cli("destroy") != 0)
			fprintf(stderr, "vmf-bench: vmfactory destroy failed; see %s/cli.log\n", cfg.dir);
	}
	/* The ramp, on the shaped pool that learned the mix above: each step
	 * starts from a full pool and runs ramp_n arrivals (several times the
	 * pool, so the pool's reserve cannot carry it). */
	fprintf(out, "\n## Trace run: open-loop Poisson arrivals, size mix");
	for (int m = 0; m < cfg.nmix; m++)
		fprintf(out, "%s %u%% +%u vCPU/+%u MiB", m ? "," : "", cfg.mix[m].weight, cfg.mix[m].vcpus,
			cfg.mix[m].mib);
	fprintf(out, "\n\n%d arrivals at %.2f/s, each held %.0f ms then released; pool of %d (shape_max %d); "
		"the first %d arrivals are warm-up.  A hit is a hand-out with no hot-add and no clone (served "
		"shaped or base).\n\n", n, cfg.trace_rate, cfg.trace_hold_ms, cfg.trace_pool, cfg.trace_shape_max,
		warm);
	fprintf(out, "| pool | n | hit rate | shaped | base | resize | miss | errors | p50 ms | p99 ms | p99 / floor |\n"
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
	for (int i = 0; i < 2; i++)
		fprintf(out, "| %s | %d | %.1f%% | %d | %d | %d | %d | %d | %.1f | %.1f | %.1f× |\n",
			i ? "demand-shaped" : "static (shape = off)", r[i].n, 100 * r[i].hit_rate, r[i].shaped, r[i].base,
			r[i].resize, r[i].miss, r[i].errors, r[i].p50, r[i].p99, r[i].p99 / floor_ms);
	/* Whether a shaped hit costs what a base hit does, and what a resize costs. */
	fprintf(out, "\n| pool | served as | n | p50 ms | p99 ms |\n|---|---|---:|---:|---:|\n");
	static const char *const kinds[] = { "shaped", "base", "resize", "miss" };
	for (int i = 0; i < 2; i++)
		for (int k = 0; k < 4; k++)
			kind_row(out, i ? "demand-shaped" : "static", q + i * n, warm, n, kinds[k]);

	double rates[16], sustained = 0, sustained_hits = 0, best_ratio = INFINITY;
	bool within = true, hits_ok = true;
	int nr = 0;
	for (double x = cfg.trace_rate; nr < cfg.ramp_steps && nr < 16; x *= 2)
		rates[nr++] = x;
	struct treq *rq = calloc(cfg.ramp_n, sizeof(*rq));
	if (!rq)
		die(NULL, "out of memory");
	fprintf(out, "\n### Ramp (demand-shaped pool, %d arrivals a step from a full pool; doubling the rate "
		"until a request fails or fewer than half are hits; the floor is %.2f ms)\n\n| rate /s | n | hit rate | misses | errors | p50 ms | p99 ms | p99 / floor |\n"
		"|---:|---:|---:|---:|---:|---:|---:|---:|\n", cfg.ramp_n, floor_ms);
	for (int i = 0; i < nr; i++) {
		wait_pool(cfg.trace_pool, vmf_now_ms() + 600000);
		fprintf(stderr, "vmf-bench: ramp step %.2f/s, %d arrivals\n", rates[i], cfg.ramp_n);
		seed = 1400 + i;
		trace_arrivals(rq, cfg.ramp_n, 200000 + i * 1000, rates[i], &seed);
		trace_errors("ramp", rq, cfg.ramp_n);
		struct trace_result t = trace_sum(rq, 0, cfg.ramp_n);
		fprintf(out, "| %.2f | %d | %.1f%% | %d | %d | %.1f | %.1f | %.1f× |\n", rates[i], t.n, 100 * t.hit_rate,
			t.miss, t.errors, t.p50, t.p99, t.p99 / floor_ms);
		/* Sustained: this step and every slower one kept within the bound;
		 * a failed request (misses beyond max_miss_clones) never is. */
		within = within && !t.errors && t.p99 <= 10 * floor_ms;
		hits_ok = hits_ok && !t.errors && t.hit_rate >= 0.95;
		if (within)
			sustained = rates[i];
		if (hits_ok)
			sustained_hits = rates[i];
		if (!t.errors && t.p99 / floor_ms < best_ratio)
			best_ratio = t.p99 / floor_ms;
		if (t.errors || t.hit_rate < 0.5)
			break;
	}
	if (run_cli("destroy") != 0)
		fprintf(stderr, "vmf-bench: vmfactory destroy failed; see %s/cli.log\n", cfg.dir);
	fprintf(out, "\nHighest sustained hand-out rate with p99 ≤ 10× the floor: %s%.2f/s (the lowest p99 of a "
		"step was %.1f× the floor); with ≥ 95%% hits and no failure: %s%.2f/s\n", sustained ? "" : "below ",
		sustained ? sustained : cfg.trace_rate, best_ratio, sustained_hits ? "" : "below ",
		sustained_hits ? sustained_hits : cfg.trace_rate);

	jnum("trace_rate_per_s", cfg.trace_rate);
	jnum("trace_hold_ms", cfg.trace_hold_ms);
	jnum("trace_hit_rate", r[1].hit_rate);
	jnum("trace_p50_ms", r[1].p50);
	jnum("trace_p99_ms", r[1].p99);
	jnum("trace_static_hit_rate", r[0].hit_rate);
	jnum("trace_static_p50_ms", r[0].p50);
	jnum("trace_static_p99_ms", r[0].p99);
	jnum("sustained_handouts_per_s", sustained);
	jnum("sustained_hit_handouts_per_s", sustained_hits);
	jnum("ramp_best_p99_over_floor", isfinite(best_ratio) ? best_ratio : 0);
	fprintf(out, "\n| target | measured | bound | |\n|---|---:|---:|---|\n");
	fprintf(out, "| trace hit rate after warm-up, shaped pool | %.1f%% | ≥ 95%% | %s |\n", 100 * r[1].hit_rate,
		r[1].hit_rate >= 0.95 ? "met" : "**missed**");
	fprintf(out, "| trace p99 / floor, shaped pool | %.2f× | ≤ 5× | %s |\n", r[1].p99 / floor_ms,
		r[1].p99 <= 5 * floor_ms ? "met" : "**missed**");
	fprintf(out, "| static pool's p99 / floor, same trace | %.2f× | (reported) | |\n", r[0].p99 / floor_ms);
	free(q);
	free(rq);
}

static json_object *
environment(json_object *j)
{
	struct utsname u;
	uname(&u);
	json_object *env = json_object_new_object();
	json_object_object_add(env, "qemu_version", json_object_new_string(hv.version));
	json_object_object_add(env, "accelerator", json_object_new_string(hv.accel));
	json_object_object_add(env, "host_kernel", json_object_new_string(u.release));
	json_object_object_add(env, "host_cores", json_object_new_int((int)sysconf(_SC_NPROCESSORS_ONLN)));
	json_object_object_add(env, "guest_vcpus", json_object_new_int(VMF_DEFAULT_VCPUS));
	json_object_object_add(env, "guest_memory_mib", json_object_new_int(VMF_DEFAULT_MEMORY_MIB));
	json_object_object_add(env, "trace_only", json_object_new_boolean(cfg.trace_only));
	json_object_object_add(j, "environment", env);
	return env;
}

/* --trace-only: the floor and the trace run, nothing else. */
static int
trace_only(Vmf__Catalog__TemplateRecord *shared, Vmf__Catalog__TemplateRecord *full, struct vmf_catalog *cat,
	   struct series *floor_)
{
	vmf__catalog__template_record__free_unpacked(shared, NULL);
	vmf__catalog__template_record__free_unpacked(full, NULL);
	vmf_catalog_close(cat);
	finish(floor_);
	J = json_object_new_object();
	jnum("floor_ms", pct(floor_, 50));
	printf("## Floor (cont + one agent round trip), QEMU %s, %s: p50 %.2f ms, p99 %.2f ms (n %d)\n", hv.version,
	       hv.accel, pct(floor_, 50), pct(floor_, 99), floor_->n);
	fflush(stdout);
	trace_run(pct(floor_, 50), stdout);
	environment(J);
	if (cfg.json && json_object_to_file_ext(cfg.json, J, JSON_C_TO_STRING_PRETTY) < 0) {
		fprintf(stderr, "vmf-bench: cannot write %s\n", cfg.json);
		return 1;
	}
	json_object_put(J);
	free(floor_->v);
	return 0;
}

/* --mix W:V:M,...: weight, vCPUs and MiB above the pool's base. */
static int
parse_mix(const char *s)
{
	cfg.nmix = 0;
	while (*s && cfg.nmix < 8) {
		struct mix *m = &cfg.mix[cfg.nmix];
		int used = 0;
		if (sscanf(s, "%u:%u:%u%n", &m->weight, &m->vcpus, &m->mib, &used) != 3 || m->mib % 128)
			return -1;
		cfg.nmix++;
		s += used;
		if (*s == ',')
			s++;
		else if (*s)
			return -1;
	}
	unsigned total = 0;
	for (int i = 0; i < cfg.nmix; i++)
		total += cfg.mix[i].weight;
	return total ? 0 : -1;
}

static struct vmf_client *
start_daemon(void)
{
	fprintf(stderr, "vmf-bench: daemon with a pool of %d\n", cfg.vms);
	/* shape = off: the resize figures below measure hot-add on the
	 * hand-out path, which a demand-shaped pool would learn to avoid. */
	char args[4400], conf[4200], text[200] = "[daemon]\nshape = off\n";
	snprintf(conf, sizeof conf, "%s/static.conf", cfg.dir);
	/* The refill too: both clone at most this many at once. */
	if (cfg.clone_par > 0)
		snprintf(text + strlen(text), sizeof text - strlen(text),
			 "fill_parallelism = %d\nclone_parallelism = %d\n", cfg.clone_par, cfg.clone_par);
	FILE *cf = fopen(conf, "w");
	if (!cf || fputs(text, cf) < 0 || fclose(cf) != 0)
		die(NULL, conf);
	snprintf(args, sizeof args, "init --config %s --pool %d", conf, cfg.vms);
	if (run_cli(args) != 0) {
		fprintf(stderr, "vmf-bench: vmfactory init failed; see %s/cli.log\n", cfg.dir);
		return NULL;
	}
	wait_pool(cfg.vms, vmf_now_ms() + 600000);
	struct vmf_client *c;
	struct vmf_error e = {0};
	if (vmf_client_connect(cfg.sock, &c, &e) < 0)
		die(&e, "connect");
	return c;
}

/* Refill of an empty pool: every pooled VM killed at once; the daemon
 * notices (pidfd) and clones replacements.  Timed until as many ready
 * VMs exist again, none of them the killed ones; in s, -1 when it did not
 * refill. */
static double
refill_run(void)
{
	pid_t killed[256];
	int nk = 0;
	Vmf__Control__Reply *sr = status();
	for (size_t i = 0; i < sr->status->n_vms && nk < 256; i++)
		if (!strcmp(sr->status->vms[i]->state, "ready"))
			killed[nk++] = sr->status->vms[i]->pid;
	vmf__control__reply__free_unpacked(sr, NULL);
	int64_t t0 = vmf_monotonic_ns();
	for (int i = 0; i < nk; i++)
		kill(killed[i], SIGKILL);
	for (;;) {
		sr = status();
		int fresh = 0;
		for (size_t i = 0; i < sr->status->n_vms; i++) {
			bool old = false;
			for (int k = 0; k < nk; k++)
				old = old || sr->status->vms[i]->pid == killed[k];
			fresh += !old && !strcmp(sr->status->vms[i]->state, "ready");
		}
		vmf__control__reply__free_unpacked(sr, NULL);
		if (fresh >= cfg.vms)
			break;
		if (ms_since(t0) > 600000) {
			fprintf(stderr, "vmf-bench: the pool did not refill in 10 minutes\n");
			return -1;
		}
		poll(NULL, 0, 5);
	}
	return ms_since(t0) / 1000;
}

/* ---- a burst ----
 * 3x the pool's size of GetVMs at once on a full pool, each on its own
 * thread and connection: the pool's VMs are hits, the rest wait in its
 * queue (or clone on demand) and are served as clones become ready. */

struct breq {
	int k;
	double end_ms;          /* reply, from the burst's start */
	double ms;              /* GetVM, request to reply */
	double queue_ms;        /* the reply's: how long it waited in the queue */
	int64_t t0;
	char id[64];
	char err[300];
	pthread_t th;
};

static void *
burst_thread(void *arg)
{
	struct breq *q = arg;
	char sandbox[64];
	snprintf(sandbox, sizeof sandbox, "burst-%d", q->k);
	struct vmf_client *c;
	Vmf__Control__Reply *r = own_get(sandbox, 1, 256, &c, &q->ms, q->err, sizeof q->err);
	q->end_ms = ms_since(q->t0);
	if (!r)
		return NULL;
	snprintf(q->id, sizeof q->id, "%s", r->vm->id);
	q->queue_ms = r->vm->queue_ms;
	vmf__control__reply__free_unpacked(r, NULL);
	vmf_client_close(c);
	return NULL;
}

struct burst_result {
	int n, ok, queued;
	double p50, p99, last;
	unsigned parallelism;     /* the pool's most clones at once (status) */
};

static struct burst_result
burst_run(struct vmf_client *c)
{
	struct burst_result b = { .n = 3 * cfg.vms };
	wait_pool(cfg.vms, vmf_now_ms() + 600000);
	fprintf(stderr, "vmf-bench: a burst of %d GetVMs on a full pool of %d\n", b.n, cfg.vms);
	struct breq *q = calloc(b.n, sizeof(*q));
	int64_t t0 = vmf_monotonic_ns();
	for (int i = 0; i < b.n; i++) {
		q[i].k = i;
		q[i].t0 = t0;
		if (pthread_create(&q[i].th, NULL, burst_thread, &q[i]) != 0)
			die(NULL, "pthread_create");
	}
	for (int i = 0; i < b.n; i++)
		pthread_join(q[i].th, NULL);
	struct series s = {0};
	for (int i = 0; i < b.n; i++) {
		if (!q[i].id[0]) {
			fprintf(stderr, "vmf-bench: burst: request %d failed after %.0f ms: %s\n", i, q[i].ms, q[i].err);
			continue;
		}
		b.ok++;
		b.queued += q[i].queue_ms > 0;
		add(&s, q[i].ms);
		if (q[i].end_ms > b.last)
			b.last = q[i].end_ms;
	}
	qsort(s.v, s.n, sizeof(*s.v), cmp_double);
	b.p50 = pct(&s, 50);
	b.p99 = pct(&s, 99);
	free(s.v);
	Vmf__Control__Reply *sr = status();
	if (sr->status->n_pools)
		b.parallelism = sr->status->pools[0]->max_parallelism;
	vmf__control__reply__free_unpacked(sr, NULL);
	for (int i = 0; i < b.n; i++)
		if (q[i].id[0])
			release_vm(c, q[i].id);
	free(q);
	return b;
}

/* A pool's clone is warmed too (agent connection, identity, share mounted,
 * paused again): its time is what the refill shows, one clone per
 * refill8 / 8 x parallelism. */
static double
pool_clone_ms(const struct burst_result *b, double refill_s)
{
	return refill_s * 1000 / cfg.vms * (b->parallelism ? b->parallelism : 1);
}

static void
burst_json(const struct burst_result *b, double refill_s)
{
	jnum("burst_n", b->n);
	jnum("burst_ok", b->ok);
	jnum("burst_p50_ms", b->p50);
	jnum("burst_p99_ms", b->p99);
	jnum("burst_last_ms", b->last);
	jnum("burst_queued", b->queued);
	jnum("clone_parallelism", b->parallelism);
	jnum("pool_clone_ms", pool_clone_ms(b, refill_s));
}

static void
burst_report(const struct burst_result *b, double clone_ms, double handout_p99, double refill_s)
{
	printf("\n## Burst: %d GetVMs at once on a full pool of %d\n\n| measure | value |\n|---|---:|\n", b->n, cfg.vms);
	printf("| served | %d of %d (%d waited in the queue) |\n", b->ok, b->n, b->queued);
	printf("| p50 / p99 | %.0f / %.0f ms |\n| last served | %.0f ms |\n", b->p50, b->p99, b->last);
	printf("| clone parallelism (most at once) | %u |\n", b->parallelism);
	unsigned par = b->parallelism ? b->parallelism : 1;
	printf("\n| target | measured | bound | |\n|---|---:|---:|---|\n");
	target("burst: all served", b->ok, b->n, false, "");
	target("burst: last served (ms) vs (n - pool) × clone / parallelism + 2 × hand-out p99", b->last,
	       (b->n - cfg.vms) * clone_ms / par + 2 * handout_p99, true, " ms");
	target("refill of 8 (s) vs 8 × clone / parallelism × 1.25", refill_s, 8 * clone_ms / 1000 / par * 1.25, true,
	       " s");
	target("burst: last served (ms) vs (n - pool) × pool clone / parallelism + 2 × hand-out p99", b->last,
	       (b->n - cfg.vms) * pool_clone_ms(b, refill_s) / par + 2 * handout_p99, true, " ms");
}

/* --burst-only: clone time, the refill of the pool, plain hand-outs and a
 * burst of 3x the pool, nothing else. */
static int
burst_only(void)
{
	struct vmf_catalog *cat;
	struct vmf_error e = {0};
	if (vmf_catalog_open(cfg.state, &cat, &e) < 0)
		die(&e, "catalog");
	fprintf(stderr, "vmf-bench: building the template\n");
	Vmf__Catalog__TemplateRecord *shared = template(cat, false);
	struct series clone = { .name = "clone" }, handout = { .name = "handout" };
	char id[64];
	for (int i = 0; i < cfg.samples; i++) {
		double ms;
		snprintf(id, sizeof id, "clone-%d", i);
		stop(clone_resume(shared, id, &ms));
		add(&clone, ms);
	}
	vmf__catalog__template_record__free_unpacked(shared, NULL);
	vmf_catalog_close(cat);
	struct vmf_client *c = start_daemon();
	if (!c)
		return 1;
	double refill_s = refill_run();
	if (refill_s < 0)
		return 1;
	for (int i = 0; i < cfg.samples; i++) {
		wait_pool(cfg.vms, vmf_now_ms() + 120000);
		add(&handout, get_vm(c, 1, 256, i, id));
		release_vm(c, id);
	}
	finish(&clone);
	finish(&handout);
	struct burst_result b = burst_run(c);
	vmf_client_close(c);
	if (run_cli("destroy") != 0)
		fprintf(stderr, "vmf-bench: vmfactory destroy failed; see %s/cli.log\n", cfg.dir);
	J = json_object_new_object();
	jnum("clone_s", pct(&clone, 50) / 1000);
	jnum("handout_p50_ms", pct(&handout, 50));
	jnum("handout_p99_ms", pct(&handout, 99));
	jnum("refill8_s", refill_s);
	printf("## Refill and burst, QEMU %s, %s\n\n| measure | value |\n|---|---:|\n", hv.version, hv.accel);
	printf("| clone (p50 of %d) | %.0f ms |\n| hand-out p50 / p99 | %.1f / %.1f ms |\n", clone.n, pct(&clone, 50),
	       pct(&handout, 50), pct(&handout, 99));
	printf("| refill of an empty pool of %d | %.2f s |\n", cfg.vms, refill_s);
	burst_json(&b, refill_s);
	burst_report(&b, pct(&clone, 50), pct(&handout, 99), refill_s);
	environment(J);
	if (cfg.json && json_object_to_file_ext(cfg.json, J, JSON_C_TO_STRING_PRETTY) < 0) {
		fprintf(stderr, "vmf-bench: cannot write %s\n", cfg.json);
		return 1;
	}
	json_object_put(J);
	return 0;
}

/* --release-only: the daemon's release figures, nothing else. */
static int
release_only(void)
{
	struct vmf_client *c = start_daemon();
	if (!c)
		return 1;
	struct series rel = { .name = "release" }, relrw = { .name = "release-rwdisk" };
	fprintf(stderr, "vmf-bench: releases without and with a read-write disk, %d samples each\n", cfg.samples);
	bool rw = release_bench(c, &rel, &relrw);
	vmf_client_close(c);
	if (run_cli("destroy") != 0)
		fprintf(stderr, "vmf-bench: vmfactory destroy failed; see %s/cli.log\n", cfg.dir);
	finish(&rel);
	J = json_object_new_object();
	jnum("release_p50_ms", pct(&rel, 50));
	jnum("release_p99_ms", pct(&rel, 99));
	printf("## Release (stop = flush), QEMU %s, %s\n\n| release | n | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n",
	       hv.version, hv.accel);
	printf("| no disk | %d | %.1f | %.1f | %.1f |\n", rel.n, pct(&rel, 50), pct(&rel, 99), rel.v[rel.n - 1]);
	if (rw) {
		finish(&relrw);
		jnum("release_rwdisk_p50_ms", pct(&relrw, 50));
		jnum("release_rwdisk_p99_ms", pct(&relrw, 99));
		printf("| read-write disk, 1 MiB unsynced | %d | %.1f | %.1f | %.1f |\n", relrw.n, pct(&relrw, 50),
		       pct(&relrw, 99), relrw.v[relrw.n - 1]);
	}
	environment(J);
	if (cfg.json && json_object_to_file_ext(cfg.json, J, JSON_C_TO_STRING_PRETTY) < 0) {
		fprintf(stderr, "vmf-bench: cannot write %s\n", cfg.json);
		return 1;
	}
	json_object_put(J);
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "vmfactory", required_argument, NULL, 'b' }, { "dir", required_argument, NULL, 'd' },
		{ "samples", required_argument, NULL, 's' },   { "cycles", required_argument, NULL, 'c' },
		{ "vms", required_argument, NULL, 'v' },       { "json", required_argument, NULL, 'j' },
		{ "trace-only", no_argument, NULL, 'T' },      { "trace-arrivals", required_argument, NULL, 'n' },
		{ "trace-rate", required_argument, NULL, 'r' }, { "trace-hold-ms", required_argument, NULL, 'h' },
		{ "trace-pool", required_argument, NULL, 'p' }, { "trace-shape-max", required_argument, NULL, 'x' },
		{ "ramp-arrivals", required_argument, NULL, 'R' }, { "ramp-steps", required_argument, NULL, 'S' },
		{ "mix", required_argument, NULL, 'm' },      { "snapshot-sizes", required_argument, NULL, 'Z' },
		{ "release-only", no_argument, NULL, 'L' },    { "burst-only", no_argument, NULL, 'B' },
		{ "clone-parallelism", required_argument, NULL, 'P' },
		{ NULL, 0, NULL, 0 },
	};
	int o;
	while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (o) {
		case 'b': cfg.bin = optarg; break;
		case 'd': cfg.dir = optarg; break;
		case 's': cfg.samples = atoi(optarg); break;
		case 'c': cfg.cycles = atoi(optarg); break;
		case 'v': cfg.vms = atoi(optarg); break;
		case 'j': cfg.json = optarg; break;
		case 'T': cfg.trace_only = true; break;
		case 'L': cfg.release_only = true; break;
		case 'B': cfg.burst_only = true; break;
		case 'P': cfg.clone_par = atoi(optarg); break;
		case 'n': cfg.trace_n = atoi(optarg); break;
		case 'r': cfg.trace_rate = atof(optarg); break;
		case 'h': cfg.trace_hold_ms = atof(optarg); break;
		case 'p': cfg.trace_pool = atoi(optarg); break;
		case 'x': cfg.trace_shape_max = atoi(optarg); break;
		case 'R': cfg.ramp_n = atoi(optarg); break;
		case 'S': cfg.ramp_steps = atoi(optarg); break;
		case 'Z':
			N_SNAP = (size_t)atoi(optarg);
			if (N_SNAP < 1 || N_SNAP > SNAP_SIZES) {
				fprintf(stderr, "vmf-bench: --snapshot-sizes takes 1 to %zu (of 256, 512, 1024 MiB)\n",
					SNAP_SIZES);
				return 2;
			}
			break;
		case 'm':
			if (parse_mix(optarg) < 0) {
				fprintf(stderr, "vmf-bench: --mix %s: give WEIGHT:VCPUS:MIB,... (extra vCPUs and MiB "
						"above the base, MiB a multiple of 128)\n", optarg);
				return 2;
			}
			break;
		default:
			fprintf(stderr, "usage: vmf-bench --vmfactory BIN --dir DIR [--samples N] [--cycles N] "
					"[--vms N] [--json FILE] [--trace-only] [--trace-arrivals N] [--trace-rate PER_S] "
					"[--trace-hold-ms MS] [--trace-pool N] [--trace-shape-max N] [--ramp-arrivals N] "
					"[--ramp-steps N] [--mix W:V:M,...] [--snapshot-sizes N] [--release-only] "
					"[--burst-only] [--clone-parallelism N]\n");
			return 2;
		}
	}
	if (!cfg.nmix)
		parse_mix("70:0:0,20:1:256,10:3:768");
	if (cfg.trace_n < 4 || cfg.ramp_n < 1 || cfg.ramp_steps < 1 || cfg.trace_pool < 1 || !(cfg.trace_rate > 0) ||
	    cfg.trace_hold_ms < 0) {
		fprintf(stderr, "vmf-bench: the trace needs at least 4 arrivals, a pool, a positive rate\n");
		return 2;
	}
	if (!cfg.bin || !cfg.dir || cfg.samples < 1 || cfg.cycles < 1 || cfg.vms < 1) {
		fprintf(stderr, "vmf-bench: --vmfactory and --dir are required; counts must be positive\n");
		return 2;
	}
	vmf_log_set_level(VMF_LOG_WARN);
	snprintf(cfg.state, sizeof cfg.state, "%s/state", cfg.dir);
	snprintf(cfg.run, sizeof cfg.run, "%s/run", cfg.dir);
	snprintf(cfg.sock, sizeof cfg.sock, "%s/vmfactory.sock", cfg.dir);
	struct vmf_error e = {0};
	char sb[4200];
	snprintf(sb, sizeof sb, "%s/sb", cfg.dir);
	if (vmf_mkdir_p(cfg.run, 0700, &e) < 0 || vmf_mkdir_p(sb, 0700, &e) < 0)
		die(&e, "dirs");
	/* The sandboxes' dirs are the daemon's only sandbox root. */
	setenv("VMFACTORY_SANDBOX_ROOTS", sb, 1);

	const char *image_dir = getenv("VMFACTORY_IMAGE_DIR");
	if (vmf_image_load(image_dir ? image_dir : VMF_DEFAULT_IMAGE_DIR, NULL, NULL, &img, &e) < 0)
		die(&e, "guest image");
	if (vmf_qemu_ops.probe(NULL, img.kernel, NULL, &hv, &e) < 0)
		die(&e, "QEMU");
	if (cfg.release_only)
		return release_only();
	/* The daemon's default template, so it finds this one ready. */
	params = (struct vmf_template_params){
		.ops = &vmf_qemu_ops, .cmdline = VMF_DEFAULT_CMDLINE, .vcpus = VMF_DEFAULT_VCPUS,
		.max_vcpus = VMF_DEFAULT_MAX_VCPUS, .memory_mib = VMF_DEFAULT_MEMORY_MIB,
		.max_memory_mib = VMF_DEFAULT_MAX_MEMORY_MIB, .memory_slots = 8, .nic = true,
	};
	if (cfg.burst_only)
		return burst_only();
	struct vmf_catalog *cat;
	if (vmf_catalog_open(cfg.state, &cat, &e) < 0)
		die(&e, "catalog");
	fprintf(stderr, "vmf-bench: building the templates\n");
	Vmf__Catalog__TemplateRecord *shared = template(cat, false), *full = template(cat, true);

	struct series cold = { .name = "cold" }, restore = { .name = "full-restore" }, clone = { .name = "clone" },
		      floor_ = { .name = "floor" }, handout = { .name = "handout" },
		      resize = { .name = "handout-resize" }, exec = { .name = "exec" },
		      hnetns = { .name = "handout-netns" }, husernet = { .name = "handout-usernet" };
	char id[64];
	fprintf(stderr, "vmf-bench: cold, full-restore and clone, %d samples each\n", cfg.samples);
	for (int i = 0; i < (cfg.trace_only ? 0 : cfg.samples); i++) {
		double ms;
		snprintf(id, sizeof id, "cold-%d", i);
		stop(cold_boot(id, &ms));
		add(&cold, ms);
		snprintf(id, sizeof id, "restore-%d", i);
		stop(clone_resume(full, id, &ms));
		add(&restore, ms);
		snprintf(id, sizeof id, "clone-%d", i);
		stop(clone_resume(shared, id, &ms));
		add(&clone, ms);
	}

	fprintf(stderr, "vmf-bench: floor (cont + one agent round trip), %d samples\n", cfg.samples);
	{
		double ms;
		struct vmf_vmm *vm = clone_resume(shared, "floor", &ms);
		struct vmf_agent *a = agent_of(vm);
		if (vmf_agent_ping(a, AGENT_TIMEOUT_MS, &e) < 0)
			die(&e, "ping");
		for (int i = 0; i < cfg.samples; i++) {
			if (vmf_qemu_ops.pause(vm, &e) < 0)
				die(&e, "pause");
			int64_t t0 = vmf_monotonic_ns();
			if (vmf_qemu_ops.resume(vm, &e) < 0 || vmf_agent_ping(a, AGENT_TIMEOUT_MS, &e) < 0)
				die(&e, "floor");
			add(&floor_, ms_since(t0));
		}
		vmf_agent_free(a);
		stop(vm);
	}

	if (cfg.trace_only)
		return trace_only(shared, full, cat, &floor_);

	fprintf(stderr, "vmf-bench: PSS of %d cold-booted VMs\n", cfg.vms);
	uint64_t pss_cold = 0;
	{
		struct vmf_vmm **vms = calloc(cfg.vms, sizeof(*vms));
		for (int i = 0; i < cfg.vms; i++) {
			snprintf(id, sizeof id, "pss-%d", i);
			vms[i] = cold_boot(id, NULL);
		}
		for (int i = 0; i < cfg.vms; i++)
			pss_cold += vmf_proc_pss_kib(vmf_qemu_ops.pid(vms[i]));
		pss_cold /= cfg.vms;
		for (int i = 0; i < cfg.vms; i++)
			stop(vms[i]);
		free(vms);
	}
	vmf__catalog__template_record__free_unpacked(shared, NULL);
	vmf__catalog__template_record__free_unpacked(full, NULL);
	vmf_catalog_close(cat);

	struct vmf_client *c = start_daemon();
	if (!c)
		return 1;
	uint64_t pss_clone = mean_pss_of_pooled();
	double refill_s = refill_run();
	if (refill_s < 0)
		return 1;

	fprintf(stderr, "vmf-bench: hand-outs, %d samples each\n", cfg.samples);
	for (int i = 0; i < cfg.samples; i++) {
		wait_pool(cfg.vms, vmf_now_ms() + 120000);
		add(&handout, get_vm(c, 1, 256, i, id));
		release_vm(c, id);
	}
	json_object *steps_plain = json_object_new_object(), *steps_all = json_object_new_object();
	char *steps1 = NULL, *steps2 = NULL;
	size_t n1, n2;
	FILE *m1 = open_memstream(&steps1, &n1);
	steps_table(m1, steps_plain);
	fclose(m1);
	for (int i = 0; i < cfg.samples; i++) {
		wait_pool(cfg.vms, vmf_now_ms() + 120000);
		add(&resize, get_vm(c, 2, 512, i, id));
		release_vm(c, id);
	}
	FILE *m2 = open_memstream(&steps2, &n2);
	steps_table(m2, steps_all);
	fclose(m2);
	/* What a runtime waits for before its first command has run: the
	 * hand-out, then `echo x` through the agent to its exit status. */
	fprintf(stderr, "vmf-bench: hand-out + exec of echo, %d samples\n", cfg.samples);
	for (int i = 0; i < cfg.samples; i++) {
		wait_pool(cfg.vms, vmf_now_ms() + 120000);
		double ms = get_vm(c, 1, 256, i, id);
		add(&exec, ms + exec_first());
		release_vm(c, id);
	}

	fprintf(stderr, "vmf-bench: releases without and with a read-write disk, %d samples each\n", cfg.samples);
	struct series rel = { .name = "release" }, relrw = { .name = "release-rwdisk" };
	bool rwrel = release_bench(c, &rel, &relrw);
	struct burst_result burst = burst_run(c);
	fprintf(stderr, "vmf-bench: disk attach + mount, %d samples; disk and 9p reads\n", cfg.samples);
	struct series disk_attach = { .name = "disk-attach" };
	double disk_mib_s = 0, share_mib_s = 0;
	bool disks = disk_bench(c, &disk_attach, &disk_mib_s, &share_mib_s);
	/* Network at hand-out: into a namespace (a pod joined to a
	 * peer by a veth pair, as CNI leaves it), and user-mode. */
	fprintf(stderr, "vmf-bench: hand-outs with network (netns, user), %d samples each\n", cfg.samples);
	char pod[64], nspath[128];
	const char *tail = strrchr(cfg.dir, '.');
	snprintf(pod, sizeof pod, "vmfb-%s", tail ? tail + 1 : "x");
	snprintf(nspath, sizeof nspath, "/run/netns/%s", pod);
	char netcmd[1024];
	snprintf(netcmd, sizeof netcmd, "ip netns add %s && ip netns add %sp && ip link add vmfb0 netns %s type veth "
		 "peer name vmfb1 netns %sp && ip -n %s link set vmfb0 name eth0 && ip -n %s addr add 10.233.0.2/24 "
		 "dev eth0 && ip -n %s link set eth0 up && ip -n %s route add default via 10.233.0.1 && "
		 "ip -n %sp addr add 10.233.0.1/24 dev vmfb1 && ip -n %sp link set vmfb1 up", pod, pod, pod, pod, pod,
		 pod, pod, pod, pod, pod);
	if (system(netcmd) != 0) {
		fprintf(stderr, "vmf-bench: cannot make the network namespaces (%s)\n", netcmd);
		return 1;
	}
	get_netns = nspath;
	for (int i = 0; i < cfg.samples; i++) {
		wait_pool(cfg.vms, vmf_now_ms() + 120000);
		add(&hnetns, get_vm(c, 1, 256, i, id));
		release_vm(c, id);
	}
	get_netns = NULL;
	get_net = "user";
	for (int i = 0; i < cfg.samples; i++) {
		wait_pool(cfg.vms, vmf_now_ms() + 120000);
		add(&husernet, get_vm(c, 1, 256, i, id));
		release_vm(c, id);
	}
	get_net = NULL;
	snprintf(netcmd, sizeof netcmd, "ip netns del %s; ip netns del %sp", pod, pod);
	if (system(netcmd) != 0)
		fprintf(stderr, "vmf-bench: cannot remove the network namespaces %s, %sp\n", pod, pod);

	fprintf(stderr, "vmf-bench: %d get/release cycles\n", cfg.cycles);
	Vmf__Control__Reply *st = status();
	pid_t dpid = st->status->pid;
	vmf__control__reply__free_unpacked(st, NULL);
	wait_pool(cfg.vms, vmf_now_ms() + 120000);
	int fds0 = vmf_proc_fd_count(dpid);
	uint64_t rss0 = vmf_proc_rss_kib(dpid);
	for (int i = 0; i < cfg.cycles; i++) {
		get_vm(c, 1, 256, i, id);
		release_vm(c, id);
	}
	wait_pool(cfg.vms, vmf_now_ms() + 300000);
	int fds1 = vmf_proc_fd_count(dpid);
	uint64_t rss1 = vmf_proc_rss_kib(dpid);
	vmf_client_close(c);
	if (run_cli("destroy") != 0)
		fprintf(stderr, "vmf-bench: vmfactory destroy failed; see %s/cli.log\n", cfg.dir);
	if (snapshot_run() < 0)
		return 1;

	struct series *all[] = { &cold, &restore, &clone, &handout, &resize, &floor_, &exec, &hnetns, &husernet };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		finish(all[i]);
	finish(&clock_err);

	J = json_object_new_object();
	jnum("cold_s", pct(&cold, 50) / 1000);
	jnum("full_restore_s", pct(&restore, 50) / 1000);
	jnum("clone_s", pct(&clone, 50) / 1000);
	jnum("handout_p50_ms", pct(&handout, 50));
	jnum("handout_p99_ms", pct(&handout, 99));
	jnum("handout_resize_p99_ms", pct(&resize, 99));
	jnum("handout_netns_p99_ms", pct(&hnetns, 99));
	jnum("handout_usernet_p99_ms", pct(&husernet, 99));
	jnum("floor_ms", pct(&floor_, 50));
	jnum("exec_p50_ms", pct(&exec, 50));
	jnum("exec_p99_ms", pct(&exec, 99));
	struct series *fc[] = { &fc_connect, &fc_start, &fc_output, &fc_exit };
	for (size_t i = 0; i < sizeof(fc) / sizeof(fc[0]); i++) {
		finish(fc[i]);
		char key[64];
		for (int p = 50; p <= 99; p += 49) {
			snprintf(key, sizeof key, "first_cmd_%s_p%d_ms", fc[i]->name + strlen("first-cmd-"), p);
			jnum(key, pct(fc[i], p));
		}
	}
	jnum("pss_cold_kib", (double)pss_cold);
	jnum("pss_clone_kib", (double)pss_clone);
	jnum("refill8_s", refill_s);
	jnum("daemon_rss_kib_before", (double)rss0);
	jnum("daemon_rss_kib_after", (double)rss1);
	jnum("daemon_fds_before", fds0);
	jnum("daemon_fds_after", fds1);
	jnum("clock_error_ms", pct(&clock_err, 99));
	finish(&rel);
	jnum("release_p50_ms", pct(&rel, 50));
	jnum("release_p99_ms", pct(&rel, 99));
	if (rwrel) {
		finish(&relrw);
		jnum("release_rwdisk_p50_ms", pct(&relrw, 50));
		jnum("release_rwdisk_p99_ms", pct(&relrw, 99));
	}
	jnum("clock_error_p50_ms", pct(&clock_err, 50));
	if (disks) {
		finish(&disk_attach);
		jnum("disk_attach_mount_p50_ms", pct(&disk_attach, 50));
		jnum("disk_attach_mount_p99_ms", pct(&disk_attach, 99));
		jnum("disk_read_mib_s", disk_mib_s);
		jnum("share9p_read_mib_s", share_mib_s);
	}
	for (size_t k = 0; k < N_SNAP; k++) {
		char key[64];
		snprintf(key, sizeof key, "snapshot_ms_%u", snap_sizes[k]);
		jnum(key, snap_ms[k]);
		snprintf(key, sizeof key, "snapshot_paused_ms_%u", snap_sizes[k]);
		jnum(key, snap_paused_ms[k]);
	}
	json_object_object_add(J, "snapshot_method", json_object_new_string(snap_method));
	char *trace_md = NULL;
	size_t trace_len;
	FILE *tm = open_memstream(&trace_md, &trace_len);
	trace_run(pct(&floor_, 50), tm);
	fclose(tm);
	json_object *lat = json_object_new_object();
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		json_object *o2 = json_object_new_object();
		json_object_object_add(o2, "n", json_object_new_int(all[i]->n));
		json_object_object_add(o2, "p50_ms", json_object_new_double(pct(all[i], 50)));
		json_object_object_add(o2, "p95_ms", json_object_new_double(pct(all[i], 95)));
		json_object_object_add(o2, "p99_ms", json_object_new_double(pct(all[i], 99)));
		json_object_object_add(o2, "max_ms", json_object_new_double(all[i]->v[all[i]->n - 1]));
		json_object_object_add(lat, all[i]->name, o2);
	}
	json_object_object_add(J, "latency", lat);
	json_object_object_add(J, "handout_steps", steps_plain);
	json_object_object_add(J, "handout_steps_with_resize", steps_all);
	burst_json(&burst, refill_s);
	json_object *env = environment(J);
	json_object_object_add(env, "samples", json_object_new_int(cfg.samples));
	json_object_object_add(env, "cycles", json_object_new_int(cfg.cycles));
	json_object_object_add(env, "vms", json_object_new_int(cfg.vms));
	if (cfg.json && json_object_to_file_ext(cfg.json, J, JSON_C_TO_STRING_PRETTY) < 0) {
		fprintf(stderr, "vmf-bench: cannot write %s\n", cfg.json);
		return 1;
	}

	printf("## Latency (ms), QEMU %s, %s, %ld host cores, guest %u vCPU / %u MiB\n\n", hv.version, hv.accel,
	       sysconf(_SC_NPROCESSORS_ONLN), VMF_DEFAULT_VCPUS, VMF_DEFAULT_MEMORY_MIB);
	printf("| method | what is timed | n | p50 | p95 | p99 | max |\n|---|---|---:|---:|---:|---:|---:|\n");
	row(&cold, "cold boot to the agent's first answer");
	row(&restore, "restore of a full-RAM snapshot to the agent");
	row(&clone, "template clone (shared RAM) to the agent");
	row(&handout, "GetVM over the socket, pool hit, no resize");
	row(&resize, "GetVM, +1 vCPU and +256 MiB");
	row(&floor_, "cont + one agent round trip");
	row(&exec, "GetVM, then `echo x` through the agent to its exit status");
	row(&fc_connect, "exec's connect: socket opened to the agent's ExecReset answer");
	row(&fc_start, "exec's start: ExecStart to ExecStarted");
	row(&fc_output, "exec's output: ExecStarted to the first output");
	row(&fc_exit, "exec's exit: the first output to the exit frame");
	row(&hnetns, "GetVM --netns (tap + tc mirror, guest NIC configured)");
	row(&husernet, "GetVM --net user (slirp, guest NIC configured)");
	row(&rel, "ReleaseVM, no disk (stop = flush: the guest not asked)");
	if (rwrel)
		row(&relrw, "ReleaseVM, read-write disk with 1 MiB unsynced (flushed, unmounted)");
	printf("\n## Hand-out steps (daemon's own timing; plain hand-outs)\n\n%s", steps1);
	printf("\n## Hand-out steps (all hand-outs, with the resized ones)\n\n%s", steps2);
	printf("\n## Memory, refill, daemon\n\n| measure | value |\n|---|---:|\n");
	printf("| PSS per cold-booted VM (%d running) | %llu KiB |\n", cfg.vms, (unsigned long long)pss_cold);
	printf("| PSS per pooled clone (%d paused) | %llu KiB |\n", cfg.vms, (unsigned long long)pss_clone);
	printf("| refill of an empty pool of %d (all its VMs killed at once) | %.2f s |\n", cfg.vms, refill_s);
	printf("| daemon RSS before / after %d cycles | %llu / %llu KiB |\n", cfg.cycles, (unsigned long long)rss0,
	       (unsigned long long)rss1);
	printf("| daemon open fds before / after | %d / %d |\n", fds0, fds1);
	printf("| guest clock error at hand-out, p50 / p99 over %d hand-outs | %.3f / %.3f ms |\n", clock_err.n,
	       pct(&clock_err, 50), pct(&clock_err, 99));
	if (disks) {
		printf("| disk attach + mount (read-only ext4, request to reply), p50 / p99 over %d | %.1f / %.1f ms |\n",
		       disk_attach.n, pct(&disk_attach, 50), pct(&disk_attach, 99));
		printf("| sequential read of a 64 MiB file in the guest: disk (virtio-scsi) / 9p share | %.0f / %.0f MiB/s |\n",
		       disk_mib_s, share_mib_s);
	}
	printf("\n## Snapshot into a template (%s), beside a cold boot (p50 %.0f ms)\n\n| VM memory | snapshot "
	       "(ms) | VM paused (ms) | s per GiB |\n|---:|---:|---:|---:|\n", snap_method, pct(&cold, 50));
	for (size_t k = 0; k < N_SNAP; k++)
		printf("| %u MiB | %.0f | %.0f | %.2f |\n", snap_sizes[k], snap_ms[k], snap_paused_ms[k],
		       snap_ms[k] / 1000 / (snap_sizes[k] / 1024.0));
	printf("\n## Targets\n\n| target | measured | bound | |\n|---|---:|---:|---|\n");
	double cold50 = pct(&cold, 50), fl = pct(&floor_, 50);
	target("clone speed-up over cold (p50)", cold50 / pct(&clone, 50), 15, false, "×");
	target("handout p99 / floor", pct(&handout, 99) / fl, 3, true, "×");
	target("handout speed-up over cold (cold p50 / handout p99)", cold50 / pct(&handout, 99), 1000, false, "×");
	target("handout-resize p99 / floor", pct(&resize, 99) / fl, 10, true, "×");
	target("handout-netns p99 / handout p99", pct(&hnetns, 99) / pct(&handout, 99), 2, true, "×");
	target("handout-usernet p99 / handout p99", pct(&husernet, 99) / pct(&handout, 99), 2, true, "×");
	target("pooled PSS / cold PSS", pss_cold ? 100.0 * pss_clone / pss_cold : 0, 25, true, "%");
	target("guest clock error after hand-out (p99)", pct(&clock_err, 99), 5, true, " ms");
	target("daemon RSS after cycles", rss1 / 1024.0, 16, true, " MiB");
	target("daemon RSS growth over cycles", (double)rss1 - (double)rss0, 1024, true, " KiB");
	free(clock_err.v);
	burst_report(&burst, pct(&clone, 50), pct(&handout, 99), refill_s);
	printf("%s", trace_md);
	free(trace_md);
	free(steps1);
	free(steps2);
	json_object_put(J);
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		free(all[i]->v);
	return 0;
}
