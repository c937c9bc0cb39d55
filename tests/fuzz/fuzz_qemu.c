/* What the QEMU driver (hypervisors/qemu/) makes of QEMU's replies: the
 * input is everything "QEMU" sends on the daemon's QMP monitor (greeting,
 * then replies and events), then EOF.  A driver handle on that connection
 * (vmf_qemu_on_qmp: no process) goes through the ops a hand-out, a disk
 * and a suspend use, each reading its replies: pause (stop), resume (cont),
 * vCPU hot-add (query-hotpluggable-cpus, device_add each), memory hot-add
 * (object-add, device_add), a disk (add-fd, blockdev-add, device_add) and
 * its removal (device_del, DEVICE_DELETED), user-mode network (netdev_add)
 * and a save of its state (migrate, query-migrate until done), then
 * serialize.  Command ids count from 1, as in a real session; the seeds
 * are real QEMU 7.2 answers to this very sequence (contrib/fuzz record). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "driver.h"
#include "fuzz_peer.h"
#include "log.h"
#include "qemu.h"
#include "qmp.h"

#define TIMEOUT_MS 2000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void record(const char *file, const char *qmp_path);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	vmf_log_set_level(VMF_LOG_OFF);
	const char *rec = getenv("VMF_FUZZ_RECORD"), *qmp = getenv("VMF_FUZZ_QMP");
	if (rec && qmp)
		record(rec, qmp);
	return 0;
}

static const vmf_vm_config *
config(void)
{
	static vmf_vm_config cfg = VMF__HV__VM_CONFIG__INIT;
	cfg.id = "0f0e0d0c-0b0a-4908-8706-050403020100";
	cfg.name = "vmfactory-fuzz";
	cfg.run_dir = "/nonexistent/vmf-fuzz";
	cfg.vcpus = 1;
	cfg.max_vcpus = 4;
	cfg.memory_mib = 256;
	cfg.max_memory_mib = 1024;
	cfg.memory_slots = 4;
	cfg.nic = true;
	return &cfg;
}

/* The ops, in a hand-out's, an attach's and a suspend's order, on vm. */
static void
drive(struct vmf_vmm *vm)
{
	const struct vmf_hv_ops *ops = &vmf_qemu_ops;
	struct vmf_error err;
	ops->pause(vm, &err);
	ops->resume(vm, &err);
	ops->hotplug_vcpus(vm, 3, &err);
	ops->hotplug_memory(vm, 128, &err);
	/* QEMU opens a disk's fd as a regular file: a memfd is one. */
	int dfd = memfd_create("vmf-fuzz-disk", MFD_CLOEXEC);
	if (dfd < 0 || ftruncate(dfd, 1 << 20) < 0)
		abort();
	struct vmf_disk_spec disk = { .slot = 1, .fd = dfd, .format = "raw", .serial = "vmfd1", .backing_fd = -1 };
	ops->attach_disk(vm, &disk, &err);
	ops->detach_disk(vm, 1, &err);
	close(dfd);
	const char *fwd[] = { "tcp:127.0.0.1:8080-:80" };
	struct vmf_net_backend nb = { .tap_fd = -1, .hostfwd = fwd, .n_hostfwd = 1 };
	ops->net_attach(vm, &nb, &err);
	int sfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	ops->save_state(vm, sfd, &err);
	close(sfd);
	vmf_hv_state *st = NULL;
	if (ops->serialize(vm, &st, &err) == 0)
		vmf__hv__hypervisor_state__free_unpacked(st, NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_peer p = { .data = data, .len = size };
	int fd;
	if (fuzz_peer_start(&p, &fd) < 0)
		abort();
	struct vmf_qmp *q = NULL;
	struct vmf_error err;
	if (vmf_qmp_open_fd(fd, TIMEOUT_MS, &q, &err) == 0) {
		struct vmf_vmm *vm = NULL;
		if (vmf_qemu_on_qmp(config(), q, &vm, &err) < 0) {
			vmf_qmp_close(q);
		} else {
			drive(vm);
			vmf_qemu_ops.release(vm);
		}
	}
	fuzz_peer_join(&p);
	return 0;
}

/* ---- record mode (contrib/fuzz record): VMF_FUZZ_RECORD=FILE and
 * VMF_FUZZ_QMP=the QMP socket of a real QEMU (started -S, with the
 * template's devices: a virtio-scsi controller scsi0, a NIC on hub 0).
 * The same sequence runs against it through a relay that passes the
 * descriptors (getfd, add-fd) and writes everything QEMU sends to FILE:
 * a seed of QEMU's own answers. ---- */

struct relay {
	int ours, qemu;
	FILE *out;
};

static void *
relay_main(void *arg)
{
	struct relay *r = arg;
	for (;;) {
		struct pollfd p[2] = { { r->ours, POLLIN, 0 }, { r->qemu, POLLIN, 0 } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		char buf[65536];
		if (p[1].revents) {
			ssize_t n = read(r->qemu, buf, sizeof(buf));
			if (n <= 0)
				return NULL;
			if (fwrite(buf, 1, (size_t)n, r->out) != (size_t)n || write(r->ours, buf, (size_t)n) != n)
				abort();
		}
		if (p[0].revents) {
			char cbuf[CMSG_SPACE(4 * sizeof(int))];
			struct iovec iov = { buf, sizeof(buf) };
			struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
					     .msg_controllen = sizeof(cbuf) };
			ssize_t n = recvmsg(r->ours, &mh, MSG_CMSG_CLOEXEC);
			if (n <= 0)
				return NULL;
			iov.iov_len = (size_t)n;
			if (!CMSG_FIRSTHDR(&mh))
				mh.msg_control = NULL, mh.msg_controllen = 0;
			if (sendmsg(r->qemu, &mh, MSG_NOSIGNAL) != n)
				abort();
			for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
				if (c->cmsg_type == SCM_RIGHTS)
					for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++)
						close(((int *)CMSG_DATA(c))[i]);
		}
	}
}

static void
record(const char *file, const char *qmp_path)
{
	struct relay r = { .out = fopen(file, "we") };
	int sv[2];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", qmp_path);
	r.qemu = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (!r.out || r.qemu < 0 || connect(r.qemu, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	r.ours = sv[1];
	pthread_t t;
	if (pthread_create(&t, NULL, relay_main, &r))
		abort();
	struct vmf_qmp *q = NULL;
	struct vmf_vmm *vm = NULL;
	struct vmf_error err = {0};
	if (vmf_qmp_open_fd(sv[0], 10000, &q, &err) < 0 || vmf_qemu_on_qmp(config(), q, &vm, &err) < 0) {
		fprintf(stderr, "record: %s\n", err.msg);
		exit(1);
	}
	drive(vm);
	vmf_qemu_ops.release(vm);
	/* Relay what QEMU still sends (late events) until our end closes. */
	pthread_join(t, NULL);
	if (fclose(r.out) != 0)
		abort();
	fprintf(stderr, "record: wrote %s\n", file);
	exit(0);
}
