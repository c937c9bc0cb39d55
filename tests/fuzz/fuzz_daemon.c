#include "fuzz_daemon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "catalog.h"
#include "driver.h"
#include "jobs.h"
#include "log.h"
#include "util.h"

static char dir[64], root[96], state[96], run[96], sock[128], metrics_addr[32];
static int metrics_port;
static struct vmf_daemon_opts opts;

/* The client is a tenant: a uid in the daemon's group (its gid), neither
 * root nor the daemon's user.  Credentials are per thread in the kernel, so
 * one thread drops to them (raw syscalls: glibc's setuid would change every
 * thread) and makes every connection; the peer check then runs as for a
 * real tenant, and nothing it names is opened with root's reach. */
static int ask[2], got[2];

static void *
tenant_thread(void *arg)
{
	(void)arg;
	gid_t g = TENANT_GID;
	if (syscall(SYS_setgroups, 1, &g) < 0 || syscall(SYS_setresgid, g, g, g) < 0 ||
	    syscall(SYS_setresuid, TENANT_UID, TENANT_UID, TENANT_UID) < 0)
		abort();
	char c;
	ssize_t n;
	/* libFuzzer's SIGALRM (-timeout) interrupts both ends' reads. */
	while ((n = read(ask[0], &c, 1)) == 1 || (n < 0 && errno == EINTR)) {
		if (n < 0)
			continue;
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			abort();
		while ((n = write(got[1], &fd, sizeof(fd))) < 0 && errno == EINTR)
			;
		if (n != (ssize_t)sizeof(fd))
			abort();
	}
	return NULL;
}

static void
remove_dir(void)
{
	vmf_rm_rf(dir, NULL);
}

/* Every kind of entry the path checks tell apart: absent, empty and
 * non-empty directories, a file, symlinks to a directory and to nothing. */
static void
make_root(void)
{
	char p[160];
	snprintf(root, sizeof(root), "%s/root", dir);
	mkdir(root, 0755);
	snprintf(p, sizeof(p), "%s/empty", root);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/full", root);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/full/f", root);
	close(open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
	snprintf(p, sizeof(p), "%s/file", root);
	close(open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
	snprintf(p, sizeof(p), "%s/link", root);
	if (symlink("full", p) < 0)
		abort();
	snprintf(p, sizeof(p), "%s/dangling", root);
	if (symlink("nowhere", p) < 0)
		abort();
	/* The tenant's own dir, where its links may go. */
	snprintf(p, sizeof(p), "%s/t", root);
	if (mkdir(p, 0755) < 0 || chown(p, TENANT_UID, TENANT_GID) < 0)
		abort();
}

static int
free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t n = sizeof(sa);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || getsockname(fd, (struct sockaddr *)&sa, &n) < 0)
		abort();
	close(fd);
	return ntohs(sa.sin_port);
}

/* The VM requests may name: gone (its QEMU died), a disk recorded. */
static void
add_vm(struct vmf_daemon *d)
{
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	struct vmf_vm_disk *dk = calloc(1, sizeof(*dk));
	if (!vm || !dk)
		abort();
	snprintf(vm->id, sizeof(vm->id), "%s", FUZZ_VM_ID);
	vm->owner = &d->cache;
	vm->state = VMF_VM_GONE;
	vm->ops = d->ops;
	vm->dead = true;
	vm->owner_uid = TENANT_UID;
	vm->vcpus = 1;
	vm->memory_mib = 256;
	snprintf(vm->sandbox_id, sizeof(vm->sandbox_id), "fuzz");
	snprintf(vm->run_dir, sizeof(vm->run_dir), "%s/vms/%s", run, FUZZ_VM_ID);
	vmf_mkdir_p(vm->run_dir, 0700, NULL);
	snprintf(dk->path, sizeof(dk->path), "%s/file", root);
	snprintf(dk->guest_path, sizeof(dk->guest_path), "/mnt/fuzz");
	snprintf(dk->format, sizeof(dk->format), "raw");
	vm->disks[0] = dk;
	TAILQ_INSERT_TAIL(&d->cache.vms, vm, link);
}

/* Two pools a GetVM chooses between, their templates never built (no
 * process starts: a build stands for ever in progress), so a request ends
 * at "pool exhausted" once its checks passed. */
static void
add_pools(struct vmf_daemon *d)
{
	static struct vmf_pool pool[2];
	static Vmf__Catalog__TemplateSpec spec[2];
	static const struct { const char *name; unsigned vcpus, mem; bool full, net_user; } def[2] = {
		{ "one", 1, 256, false, false }, { "two", 2, 512, true, true },
	};
	for (int i = 0; i < 2; i++) {
		vmf__catalog__template_spec__init(&spec[i]);
		spec[i].vcpus = def[i].vcpus;
		spec[i].memory_mib = def[i].mem;
		spec[i].max_vcpus = 4;
		spec[i].max_memory_mib = 4096;
		spec[i].full_memory = def[i].full;
		snprintf(pool[i].name, sizeof(pool[i].name), "%s", def[i].name);
		pool[i].spec = &spec[i];
		pool[i].params.ops = d->ops;
		pool[i].params.nic = true;
		pool[i].net_user = def[i].net_user;
		pool[i].building = true;
		pool[i].retry_at_ms = INT64_MAX;
		TAILQ_INSERT_TAIL(&d->cache.pools, &pool[i], link);
	}
}

struct vmf_daemon *
fuzz_daemon_start(bool metrics)
{
	vmf_log_set_level(VMF_LOG_OFF);
	signal(SIGPIPE, SIG_IGN);
	/* A fixed place, so that the seeds can name paths in it (one fuzz
	 * run at a time on a machine uses it). */
	snprintf(dir, sizeof(dir), "%s", FUZZ_DAEMON_DIR);
	vmf_rm_rf(dir, NULL);
	if (mkdir(dir, 0711) < 0)
		abort();
	atexit(remove_dir);
	make_root();
	snprintf(state, sizeof(state), "%s/state", dir);
	snprintf(run, sizeof(run), "%s/run", dir);
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	vmf_daemon_opts_defaults(&opts);
	opts.socket_path = sock;
	opts.state_dir = state;
	opts.run_dir = run;
	opts.sandbox_roots = root;
	opts.max_connections = 16;
	opts.max_miss_clones = 1;
	opts.ready_fd = -1;
	struct vmf_error e = {0};
	struct vmf_daemon *d = vmf_daemon_new(&opts, &e);
	if (d) {
		d->group = TENANT_GID;
		d->have_group = true;
	}
	if (!d || vmf_mkdir_p(state, 0700, &e) < 0 || vmf_mkdir_p(d->cache.vm_root, 0711, &e) < 0 ||
	    vmf_sandbox_policy_init(&d->sandbox, root, state, run, &e) < 0 ||
	    vmf_catalog_open(state, &d->cache.cat, &e) < 0 || vmf_catalog_open_runtime(d->cache.cat, run, &e) < 0)
		goto fail;
	/* The QEMU driver's capabilities and names; nothing of it runs. */
	d->ops = vmf_hv_by_name("qemu");
	snprintf(d->hv.version, sizeof(d->hv.version), "7.2.22");
	snprintf(d->hv.accel, sizeof(d->hv.accel), "tcg");
	d->hv.caps = d->ops->capabilities(NULL);
	evthread_use_pthreads();
	d->cache.base = event_base_new();
	d->cache.jobs = d->cache.base ? vmf_jobs_new(d->cache.base, 4, 2) : NULL;
	if (!d->cache.jobs || vmf_control_listen(d, &e) < 0)
		goto fail;
	if (metrics) {
		metrics_port = free_port();
		snprintf(metrics_addr, sizeof(metrics_addr), "127.0.0.1:%d", metrics_port);
		if (vmf_metrics_listen(d, metrics_addr, &e) < 0)
			goto fail;
	}
	add_pools(d);
	add_vm(d);
	/* The tenant reaches the socket (0660, the daemon's group). */
	if (chmod(dir, 0711) < 0 || chown(sock, 0, TENANT_GID) < 0)
		goto fail;
	pthread_t t;
	if (pipe2(ask, O_CLOEXEC) < 0 || pipe2(got, O_CLOEXEC) < 0 || pthread_create(&t, NULL, tenant_thread, NULL))
		goto fail;
	return d;
fail:
	fprintf(stderr, "fuzz daemon: %s\n", e.msg);
	abort();
}

static int
client(bool metrics)
{
	int fd;
	if (metrics) {
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)metrics_port),
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0 || (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS))
			abort();
	} else {
		ssize_t n;
		while ((n = write(ask[1], "c", 1)) < 0 && errno == EINTR)
			;
		if (n != 1)
			abort();
		while ((n = read(got[0], &fd, sizeof(fd))) < 0 && errno == EINTR)
			;
		if (n != (ssize_t)sizeof(fd))
			abort();
	}
	return fd;
}

/* After a destroy the daemon would exit; here it serves the next input as
 * the daemon that replaced it would. */
static void
reset(struct vmf_daemon *d)
{
	d->cache.stopping = false;
	d->cache.destroying = false;
	d->destroy_conn = NULL;
	d->destroy_done = false;
	d->destroyed = 0;
	struct vmf_vm *vm;
	bool found = false;
	TAILQ_FOREACH(vm, &d->cache.vms, link)
		found = found || !strcmp(vm->id, FUZZ_VM_ID);
	if (!found)
		add_vm(d);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* One turn of the loop: what is ready, or 2 ms.  The timer is made once
 * (event_base_loopexit would allocate one a turn, freed only when it fires:
 * malloc and free would not balance in a run, and libFuzzer would scan for
 * leaks after every input). */
static void
turn(struct vmf_daemon *d)
{
	static struct event *tick_ev;
	static const struct timeval tick = { 0, 2000 };
	if (!tick_ev)
		tick_ev = evtimer_new(d->cache.base, tick_cb, NULL);
	evtimer_add(tick_ev, &tick);
	event_base_loop(d->cache.base, EVLOOP_ONCE);
	evtimer_del(tick_ev);
}

void
fuzz_daemon_exchange(struct vmf_daemon *d, bool metrics, const uint8_t *data, size_t len)
{
	int fd = client(metrics);
	size_t sent = 0;
	bool eof = false, shut = false;
	int64_t deadline = vmf_now_ms() + 5000;
	while (vmf_now_ms() < deadline) {
		if (sent < len) {
			ssize_t w = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
			if (w > 0)
				sent += (size_t)w;
			else if (w < 0 && errno != EAGAIN && errno != EINPROGRESS && errno != ENOTCONN)
				sent = len;   /* the daemon hung up: the rest goes nowhere */
		}
		if (sent >= len && !shut) {
			shutdown(fd, SHUT_WR);
			shut = true;
		}
		char sink[65536];
		ssize_t r;
		while ((r = recv(fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0)
			;
		if (r == 0 || (r < 0 && errno != EAGAIN))
			eof = true;
		if (eof && shut && d->conns == 0 && vmf_jobs_pending(d->cache.jobs) == 0)
			break;
		turn(d);
	}
	close(fd);
	/* A connection dropped by the deadline still goes through the loop. */
	for (int i = 0; i < 100 && (d->conns > 0 || vmf_jobs_pending(d->cache.jobs) > 0); i++)
		turn(d);
	/* The connection's buffers go in libevent's deferred callbacks. */
	event_base_loop(d->cache.base, EVLOOP_NONBLOCK);
	reset(d);
}
