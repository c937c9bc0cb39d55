/* Helpers shared by test_firecracker.c and test_cloud_hypervisor.c: a
 * scratch directory with a kernel file, VM configs pointing at the fake VMM
 * (tests/fake_vmm.c), and the violation log the fake writes. */
#ifndef VMF_FAKE_VMM_UTIL_H
#define VMF_FAKE_VMM_UTIL_H

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "catalog.h"
#include "driver.h"
#include "template.h"
#include "testlib.h"
#include "util.h"
#include "vmm_http.h"

static char *fv_root;   /* per test program, made in the parent */
static char *fv_dir;    /* per test, under fv_root */
static char fv_fake[PATH_MAX], fv_kernel[PATH_MAX], fv_violations[PATH_MAX], fv_reqlog[PATH_MAX];

/* Unchecked (parent-side) fixture: a failed test exits its forked child
 * before its teardown, so the parent kills what it left under fv_root. */
/* Sends a request the fake must refuse (json may be NULL); the error must
 * contain want (NULL: any refusal). */
static inline void
fv_expect_refused(const char *vmm, const char *sock, const char *method, const char *path, const char *json,
		  const char *want)
{
	struct vmf_error err = {0};
	json_object *b = json ? json_tokener_parse(json) : NULL;
	ck_assert_msg(vmf_vmm_http(vmm, sock, method, path, b, NULL, 5000, &err) < 0, "%s %s was accepted", method,
		      path);
	json_object_put(b);
	if (want)
		ck_assert_msg(strstr(err.msg, want) != NULL, "%s %s: %s", method, path, err.msg);
}

/* A record whose pid is alive but not that VM's VMM (pid reuse: here the
 * test itself) must not be adopted; want is the error with %d for the pid. */
static inline void
fv_expect_not_adopted(const struct vmf_hv_ops *ops, vmf_hv_state *st, const char *want_fmt)
{
	pid_t pid = st->pid;
	uint64_t ticks = st->start_time_ticks;
	st->pid = getpid();
	st->start_time_ticks = vmf_proc_start_ticks(getpid());
	struct vmf_vmm *vm = NULL;
	struct vmf_error err = {0};
	char want[300];
	snprintf(want, sizeof(want), want_fmt, (int)getpid());
	ck_assert_int_eq(ops->adopt(st, &vm, &err), -ESRCH);
	ck_assert_ptr_null(vm);
	ck_assert_msg(strstr(err.msg, want) != NULL, "%s", err.msg);
	st->pid = pid;
	st->start_time_ticks = ticks;
}

static inline void
fv_root_setup(void)
{
	fv_root = vmf_test_tmpdir("vmf-fakevmm");
}

static inline void
fv_root_teardown(void)
{
	vmf_test_kill_under("fake_vmm", fv_root);
	vmf_rm_rf(fv_root, NULL);
	free(fv_root);
	fv_root = NULL;
}

static inline void
fv_setup(void)
{
	/* A unique name: each test runs in a forked child (a counter would
	 * restart there), and a failed test never reaches its teardown. */
	if (asprintf(&fv_dir, "%s/tXXXXXX", fv_root) < 0 || !mkdtemp(fv_dir))
		ck_abort_msg("cannot create a test directory under %s", fv_root);
	const char *b = getenv("VMFACTORY_BUILDDIR");
	snprintf(fv_fake, sizeof(fv_fake), "%s/tests/fake_vmm", b ? b : ".");
	ck_assert_msg(access(fv_fake, X_OK) == 0, "fake VMM %s missing", fv_fake);
	snprintf(fv_kernel, sizeof(fv_kernel), "%s/vmlinuz", fv_dir);
	ck_assert(vmf_write_file_atomic(fv_kernel, "kernel", 6, 0600, NULL) == 0);
	snprintf(fv_violations, sizeof(fv_violations), "%s/violations", fv_dir);
	snprintf(fv_reqlog, sizeof(fv_reqlog), "%s/requests", fv_dir);
	setenv("FAKE_VMM_VIOLATIONS", fv_violations, 1);
	setenv("FAKE_VMM_LOG", fv_reqlog, 1);
}

/* Kills the fake VMMs of this test's VM NAME and returns how many there
 * were.  The match is this test's own directory: the firecracker and
 * cloud_hypervisor programs run at the same time and name VMs alike. */
static inline int
fv_kill_left(const char *name)
{
	char under[PATH_MAX];
	snprintf(under, sizeof(under), "%s/%s/", fv_dir, name);
	return vmf_test_kill_under("fake_vmm", under);
}

/* Fails the test when the fake saw anything outside the API document. */
static inline void
fv_assert_no_violations(void)
{
	char *text = NULL;
	size_t len = 0;
	if (vmf_read_file(fv_violations, &text, &len, 1 << 20, NULL) == 0) {
		ck_assert_msg(len == 0, "fake VMM saw requests outside the API document:\n%s", text);
		free(text);
	}
}

static inline bool
fv_log_has(const char *needle)
{
	char *text = NULL;
	size_t len = 0;
	if (vmf_read_file(fv_reqlog, &text, &len, 1 << 22, NULL) < 0)
		return false;
	bool found = strstr(text, needle) != NULL;
	free(text);
	return found;
}

static inline void
fv_teardown(void)
{
	unsetenv("FAKE_VMM_VIOLATIONS");
	unsetenv("FAKE_VMM_LOG");
	unsetenv("FAKE_VMM_DIE_ON");
	unsetenv("FAKE_VMM_FAIL_ON");
	unsetenv("FAKE_VMM_CUT_ON");
	unsetenv("FAKE_VMM_IGNORE_TERM");
	unsetenv("FAKE_VMM_NO_HOTPLUG");
	vmf_test_kill_under("fake_vmm", fv_dir);
	vmf_rm_rf(fv_dir, NULL);
	free(fv_dir);
	fv_dir = NULL;
}

/* Storage for one config's strings. */
struct fv_cfg {
	vmf_vm_config c;
	char id[40], name[64], run_dir[PATH_MAX], mem[PATH_MAX];
};

static inline void
fv_config(struct fv_cfg *f, const char *id, unsigned vcpus, unsigned max_vcpus, unsigned mem,
	  unsigned max_mem)
{
	memset(f, 0, sizeof(*f));
	vmf__hv__vm_config__init(&f->c);
	snprintf(f->id, sizeof(f->id), "%s", id);
	snprintf(f->name, sizeof(f->name), "vmfactory-%s", id);
	snprintf(f->run_dir, sizeof(f->run_dir), "%s/%s", fv_dir, id);
	snprintf(f->mem, sizeof(f->mem), "%s/template.mem", fv_dir);
	f->c.id = f->id;
	f->c.name = f->name;
	f->c.run_dir = f->run_dir;
	f->c.kernel = fv_kernel;
	f->c.initrd = (char *)"";
	f->c.cmdline = (char *)"console=ttyS0";
	f->c.vcpus = vcpus;
	f->c.max_vcpus = max_vcpus;
	f->c.memory_mib = mem;
	f->c.max_memory_mib = max_mem;
	f->c.binary = fv_fake;
	f->c.memory_file = (char *)"";
}

/* watch_fd is -1 only where pidfd_open is unavailable (old kernels,
 * valgrind): then nothing is required of it. */
static inline void
fv_assert_watch_fd(int fd)
{
	int probe = (int)syscall(SYS_pidfd_open, getpid(), 0);
	if (probe >= 0) {
		close(probe);
		ck_assert_int_ge(fd, 0);
	}
}

/* Agent stand-in: the fake's vsock echoes what it gets. */
/* The sockets the driver names for status (ops->control_socket,
 * ops->agent_socket) are the ones its VMM listens on. */
static inline void
fv_assert_named_sockets(const struct vmf_hv_ops *o, const char *run_dir)
{
	const char *names[] = { o->control_socket, o->agent_socket };
	for (size_t i = 0; i < 2; i++) {
		char p[PATH_MAX];
		struct stat st;
		ck_assert_ptr_nonnull(names[i]);
		snprintf(p, sizeof(p), "%s/%s", run_dir, names[i]);
		ck_assert_msg(stat(p, &st) == 0 && S_ISSOCK(st.st_mode), "%s is not a socket", p);
	}
}

static inline void
fv_assert_echo(int fd)
{
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "ping", 4), 4);
	char buf[8] = "";
	struct pollfd p = { .fd = fd, .events = POLLIN };
	ck_assert_int_eq(poll(&p, 1, 5000), 1);
	ck_assert_int_eq(read(fd, buf, sizeof(buf)), 4);
	ck_assert(memcmp(buf, "ping", 4) == 0);
	close(fd);
}

static inline int
fv_open_state(const char *name, int flags)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/%s", fv_dir, name);
	int fd = open(p, flags | O_CLOEXEC, 0600);
	ck_assert_msg(fd >= 0, "open %s: %s", p, strerror(errno));
	return fd;
}

/* What a restarted daemon does: a handle adopted from vm's serialized
 * state replaces vm (which is released). */
static inline struct vmf_vmm *
fv_readopt(const struct vmf_hv_ops *ops, struct vmf_vmm *vm)
{
	struct vmf_error err = {0};
	vmf_hv_state *ha = NULL;
	ck_assert_int_eq(ops->serialize(vm, &ha, &err), 0);
	struct vmf_vmm *adopted = NULL;
	ck_assert_msg(ops->adopt(ha, &adopted, &err) == 0, "%s", err.msg);
	vmf__hv__hypervisor_state__free_unpacked(ha, NULL);
	ops->release(vm);
	return adopted;
}

/* A suspend: vm's whole state into the state file NAME (returned open, for
 * the resume to read), its handle serialized into *hs, the VMM stopped and
 * the handle released. */
static inline int
fv_suspend(const struct vmf_hv_ops *ops, struct vmf_vmm *vm, const char *name, vmf_hv_state **hs)
{
	struct vmf_error err = {0};
	int sfd = fv_open_state(name, O_RDWR | O_CREAT | O_TRUNC);
	ck_assert_msg(ops->save_state(vm, sfd, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(ops->serialize(vm, hs, &err), 0);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	return sfd;
}

/* The template side of a snapshot (vmf_template_snapshot, the daemon's
 * snapshot work) for either REST driver: vm, a VM booted from src (a VM of
 * a template shaped as spec says), becomes template "snap1"; the record
 * must verify, method must be the path that ran, the source must run on
 * (run_state names the fake's state of a run dir) and a clone through
 * vmf_template_clone starts paused and answers.  check (may be NULL) sees
 * the record and the paused clone's run dir first. */
static inline void
fv_snapshot_through_catalog(const struct vmf_hv_ops *ops, struct vmf_vmm *vm, const struct fv_cfg *src,
			    const Vmf__Catalog__TemplateSpec *spec, const char *method,
			    const char *(*run_state)(const char *run_dir, char *buf, size_t n),
			    void (*check)(const Vmf__Catalog__TemplateRecord *rec, const char *crun))
{
	struct vmf_error err = {0};
	char state[PATH_MAX], run[PATH_MAX];
	snprintf(state, sizeof(state), "%s/state", fv_dir);
	snprintf(run, sizeof(run), "%s/run", fv_dir);
	ck_assert_int_eq(vmf_mkdir_p(state, 0700, &err), 0);
	struct vmf_catalog *cat = NULL;
	ck_assert_msg(vmf_catalog_open(state, &cat, &err) == 0, "%s", err.msg);
	Vmf__Catalog__TemplateRecord parent = VMF__CATALOG__TEMPLATE_RECORD__INIT;
	parent.id = (char *)"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	parent.spec = (Vmf__Catalog__TemplateSpec *)spec;
	parent.kernel_path = fv_kernel;
	parent.initrd_path = (char *)"";
	parent.hypervisor_version = (char *)"fake";
	struct vmf_template_params p = { .ops = ops, .binary = fv_fake, .vcpus = spec->vcpus,
					 .max_vcpus = spec->max_vcpus, .memory_mib = spec->memory_mib,
					 .max_memory_mib = spec->max_memory_mib, .full_memory = spec->full_memory };
	struct vmf_snapshot_req q = { .p = &p, .vm = vm, .vm_id = src->c.id, .parent = &parent, .name = "snap1",
				      .memory_mib = spec->memory_mib };
	Vmf__Catalog__TemplateRecord *rec = NULL;
	struct vmf_snapshot_result res;
	ck_assert_msg(vmf_template_snapshot(cat, state, run, &q, &rec, &res, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(res.method, method);
	ck_assert_int_eq(rec->spec->full_memory, spec->full_memory);
	ck_assert_int_eq(vmf_template_verify(cat, rec, true, &err), 0);
	char st[32];
	ck_assert_str_eq(run_state(src->run_dir, st, sizeof(st)), "Running");

	char crun[PATH_MAX], share[PATH_MAX];
	snprintf(crun, sizeof(crun), "%s/c1", fv_dir);
	snprintf(share, sizeof(share), "%s/c1share", fv_dir);
	struct vmf_vmm *cl = NULL;
	ck_assert_msg(vmf_template_clone(&p, rec, "c1", crun, share, &cl, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(run_state(crun, st, sizeof(st)), "Paused");
	if (check)
		check(rec, crun);
	ck_assert_msg(ops->resume(cl, &err) == 0, "%s", err.msg);
	fv_assert_echo(ops->agent_connect(cl, 5000, &err));
	ck_assert_int_eq(ops->stop(cl, 3000, &err), 0);
	ops->release(cl);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
	ck_assert_int_eq(ops->stop(vm, 3000, &err), 0);
	ops->release(vm);
	vmf_catalog_close(cat);
	fv_assert_no_violations();
}

#endif
