/* What the Firecracker and Cloud Hypervisor drivers make of their VMM's
 * HTTP answers (hypervisors/vmm_http.c, vmm_rest.c, firecracker.c,
 * cloud_hypervisor.c).  Byte 0 picks the driver; the rest is the VMM's
 * answers, each a 2-byte big-endian length and that many bytes, sent in
 * turn on the API socket (one connection per request, as libcurl makes
 * them; the answer written, the connection closed; once they run out,
 * every connection is closed unanswered).  A handle with no process
 * (vmf_rest_new) goes through the ops that read answers: the version and
 * info queries, pause, resume, vCPU and memory hot-add, a disk's attach and
 * detach, the attached disks read back (adopt), a saved state.  The seeds
 * are the answers of tests/fake_vmm (which answers only what the published
 * API documents allow) to this very sequence (contrib/fuzz record). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <limits.h>
#include <unistd.h>

#include "driver.h"
#include "log.h"
#include "util.h"
#include "vmm_rest.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];
static void record(const char *file, const char *fake);

static void
remove_dir(void)
{
	vmf_rm_rf(dir, NULL);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	vmf_log_set_level(VMF_LOG_OFF);
	signal(SIGPIPE, SIG_IGN);
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/vmf-fuzz-rest-XXXXXX", tmp && strlen(tmp) < 30 ? tmp : "/tmp");
	if (!mkdtemp(dir))
		abort();
	atexit(remove_dir);
	const char *rec = getenv("VMF_FUZZ_RECORD"), *fake = getenv("VMF_FUZZ_FAKE_VMM");
	if (rec && fake)
		record(rec, fake);
	return 0;
}

/* The requests, in the order of a hand-out, an attach and a suspend. */
static void
drive(const struct vmf_rest_vmm *vmm, const struct vmf_hv_ops *ops, struct vmf_vmm *vm)
{
	struct vmf_error err;
	json_object *j = NULL;
	if (vmf_rest_get(vm, vmm->version_path, &j, &err) == 0)
		json_object_put(j);
	if (vmf_rest_get(vm, vmm->info_path, &j, &err) == 0)
		json_object_put(j);
	ops->pause(vm, &err);
	ops->resume(vm, &err);
	ops->hotplug_vcpus(vm, 2, &err);
	ops->hotplug_memory(vm, 128, &err);
	int dfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	struct vmf_disk_spec disk = { .slot = 1, .fd = dfd, .format = "raw", .serial = "vmfd1", .backing_fd = -1 };
	ops->attach_disk(vm, &disk, &err);
	ops->detach_disk(vm, 1, &err);
	if (vmm->read_disks)
		vmm->read_disks(vm, &err);
	ops->save_state(vm, dfd, &err);
	close(dfd);
}

/* ---- record mode (contrib/fuzz record): VMF_FUZZ_RECORD=FILE and
 * VMF_FUZZ_FAKE_VMM=tests/fake_vmm (FAKE_VMM_KIND=ch for Cloud
 * Hypervisor).  The driver boots the fake VMM, whose API socket is then
 * moved aside: a relay in its place forwards each request and writes each
 * answer to FILE as this target reads it.  FILE is then a seed: the
 * answers a VMM that keeps to the API documents gives this sequence. ---- */

struct relay {
	pthread_t thread;
	int lfd;
	char real[PATH_MAX];
	FILE *out;
};

static void *
relay_main(void *arg)
{
	struct relay *r = arg;
	for (;;) {
		int c = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", r->real);
		int v = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (v < 0 || connect(v, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			abort();
		/* The request: the client sends it whole, then waits. */
		char req[65536];
		size_t got = 0;
		long body = -1;
		while (got < sizeof(req)) {
			ssize_t n = read(c, req + got, sizeof(req) - got);
			if (n <= 0)
				break;
			got += (size_t)n;
			char *end = memmem(req, got, "\r\n\r\n", 4);
			if (end && body < 0) {
				char *cl = strcasestr(req, "content-length:");
				body = cl && cl < end ? strtol(cl + 15, NULL, 10) : 0;
				body += end + 4 - req;
			}
			if (body >= 0 && (long)got >= body)
				break;
		}
		if (write(v, req, got) != (ssize_t)got)
			abort();
		/* The answer: the fake closes after it (Connection: close). */
		static uint8_t ans[1 << 20];
		size_t alen = 0;
		ssize_t n;
		while (alen < sizeof(ans) && (n = read(v, ans + alen, sizeof(ans) - alen)) > 0)
			alen += (size_t)n;
		close(v);
		uint8_t hdr[2] = { (uint8_t)(alen >> 8), (uint8_t)alen };
		if (alen > 0xffff || fwrite(hdr, 1, 2, r->out) != 2 || fwrite(ans, 1, alen, r->out) != alen)
			abort();
		if (write(c, ans, alen) != (ssize_t)alen)
			abort();
		close(c);
	}
}

static void
record(const char *file, const char *fake)
{
	bool ch = getenv("FAKE_VMM_KIND") && !strcmp(getenv("FAKE_VMM_KIND"), "ch");
	const struct vmf_rest_vmm *vmm = ch ? vmf_rest_cloud_hypervisor : vmf_rest_firecracker;
	const struct vmf_hv_ops *ops = ch ? &vmf_cloud_hypervisor_ops : &vmf_firecracker_ops;
	char kernel[PATH_MAX], run[PATH_MAX];
	snprintf(kernel, sizeof(kernel), "%s/vmlinuz", dir);
	snprintf(run, sizeof(run), "%s/vm", dir);
	FILE *kf = fopen(kernel, "we");
	if (!kf || fputs("kernel", kf) == EOF || fclose(kf) != 0)
		abort();
	vmf_vm_config cfg = VMF__HV__VM_CONFIG__INIT;
	cfg.id = "0f0e0d0c-0b0a-4908-8706-050403020100";
	cfg.name = "vmfactory-0f0e0d0c-0b0a-4908-8706-050403020100";
	cfg.run_dir = run;
	cfg.kernel = kernel;
	cfg.cmdline = "console=ttyS0";
	cfg.binary = (char *)fake;
	cfg.vcpus = 1;
	cfg.max_vcpus = 4;
	cfg.memory_mib = 256;
	cfg.max_memory_mib = 1024;
	struct vmf_vmm *vm = NULL;
	struct vmf_error err = {0};
	if (ops->boot(&cfg, &vm, &err) < 0) {
		fprintf(stderr, "record: boot: %s\n", err.msg);
		exit(1);
	}
	struct relay r;
	snprintf(r.real, sizeof(r.real), "%s/%s.real", run, vmm->api_sock);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", run, vmm->api_sock);
	r.out = fopen(file, "we");
	if (!r.out || rename(sa.sun_path, r.real) < 0 || fputc(ch ? 1 : 0, r.out) == EOF)
		abort();
	r.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (r.lfd < 0 || bind(r.lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(r.lfd, 8) < 0 ||
	    pthread_create(&r.thread, NULL, relay_main, &r))
		abort();
	drive(vmm, ops, vm);
	shutdown(r.lfd, SHUT_RDWR);
	pthread_join(r.thread, NULL);
	close(r.lfd);
	rename(r.real, sa.sun_path);
	ops->stop(vm, 3000, &err);
	ops->release(vm);
	if (fclose(r.out) != 0)
		abort();
	fprintf(stderr, "record: wrote %s\n", file);
	exit(0);
}

struct server {
	pthread_t thread;
	int lfd;
	const uint8_t *data;
	size_t len, off;
};

/* Reads one request: its headers, then Content-Length bytes of body. */
static void
read_request(int fd)
{
	char buf[8192];
	size_t got = 0;
	long body = -1;
	for (;;) {
		ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
		if (n <= 0)
			return;
		got += (size_t)n;
		buf[got] = '\0';
		char *end = strstr(buf, "\r\n\r\n");
		if (end && body < 0) {
			char *cl = strcasestr(buf, "content-length:");
			body = cl && cl < end ? strtol(cl + 15, NULL, 10) : 0;
			size_t have = got - (size_t)(end + 4 - buf);
			if ((long)have >= body)
				return;
			body -= (long)have;
			got = 0;
			continue;
		}
		if (body >= 0) {
			body -= n;
			got = 0;
			if (body <= 0)
				return;
		}
		if (got >= sizeof(buf) - 1)
			got = 0;
	}
}

static void *
serve(void *arg)
{
	struct server *s = arg;
	for (;;) {
		int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		read_request(fd);
		if (s->len - s->off >= 2) {
			size_t n = (size_t)s->data[s->off] << 8 | s->data[s->off + 1];
			s->off += 2;
			if (n > s->len - s->off)
				n = s->len - s->off;
			for (size_t w = 0; w < n;) {
				ssize_t r = send(fd, s->data + s->off + w, n - w, MSG_NOSIGNAL);
				if (r <= 0)
					break;
				w += (size_t)r;
			}
			s->off += n;
		}
		close(fd);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	bool ch = data[0] & 1;
	const struct vmf_rest_vmm *vmm = ch ? vmf_rest_cloud_hypervisor : vmf_rest_firecracker;
	const struct vmf_hv_ops *ops = ch ? &vmf_cloud_hypervisor_ops : &vmf_firecracker_ops;
	vmf_vm_config cfg = VMF__HV__VM_CONFIG__INIT;
	cfg.id = "0f0e0d0c-0b0a-4908-8706-050403020100";
	cfg.run_dir = dir;
	cfg.vcpus = 1;
	cfg.max_vcpus = 4;
	cfg.memory_mib = 256;
	cfg.max_memory_mib = 1024;
	struct vmf_vmm *vm = NULL;
	struct vmf_error err;
	if (vmf_rest_new(vmm, &cfg, &vm, &err) < 0)
		abort();
	struct server s = { .data = data + 1, .len = size - 1 };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", dir, vmm->api_sock);
	unlink(sa.sun_path);
	s.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s.lfd < 0 || bind(s.lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s.lfd, 8) < 0 ||
	    pthread_create(&s.thread, NULL, serve, &s))
		abort();

	drive(vmm, ops, vm);

	shutdown(s.lfd, SHUT_RDWR);
	pthread_join(s.thread, NULL);
	close(s.lfd);
	ops->release(vm);
	return 0;
}
