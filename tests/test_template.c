/* Integration: template build, copy-on-write clones, uniqueness, separate
 * shares, PSS, broken templates; real QEMU and a real LMDB catalog. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "catalog.h"
#include "driver.h"
#include "frame.h"
#include "qemu.h"
#include "template.h"
#include "testlib.h"
#include "util.h"

#define AGENT_TIMEOUT_MS 60000

static char *tmp;
static char state_dir[600], run_dir[600];
static struct vmf_catalog *cat;
static struct vmf_image img;
static struct vmf_hv_info info;

static void
setup(void)
{
	const char *dir = vmf_test_image_dir();
	ck_assert_msg(dir != NULL, "guest image missing");
	tmp = vmf_test_tmpdir("vmf-tpl");
	snprintf(state_dir, sizeof state_dir, "%s/state", tmp);
	snprintf(run_dir, sizeof run_dir, "%s/run", tmp);
	struct vmf_error e = {0};
	ck_assert_msg(vmf_image_load(dir, NULL, NULL, &img, &e) == 0, "image: %s", e.msg);
	ck_assert_msg(vmf_qemu_ops.probe(NULL, NULL, NULL, &info, &e) == 0, "probe: %s", e.msg);
	ck_assert_msg(vmf_catalog_open(state_dir, &cat, &e) == 0, "catalog: %s", e.msg);
}

static void
teardown(void)
{
	if (vmf_test_kill_qemu_under(tmp))
		fprintf(stderr, "teardown: killed QEMU processes left by a failed test\n");
	vmf_catalog_close(cat);
	struct vmf_error e;
	vmf_rm_rf(tmp, &e);
	free(tmp);
}

static struct vmf_template_params
params(bool full)
{
	struct vmf_template_params p = {
		.ops = &vmf_qemu_ops,
		.cmdline = "console=ttyS0 panic=-1 quiet",
		.vcpus = 1, .max_vcpus = 2,
		.memory_mib = 256, .max_memory_mib = 1024, .memory_slots = 4,
		.full_memory = full,
	};
	return p;
}

static Vmf__Catalog__TemplateRecord *
build(struct vmf_template_params *p, char id[VMF_SHA256_HEX], double *secs)
{
	Vmf__Catalog__TemplateSpec *spec;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_template_spec_new(p, &info, &img, &spec, id, &e) == 0, "spec: %s", e.msg);
	Vmf__Catalog__TemplateRecord *rec = NULL;
	int64_t t0 = vmf_now_ms();
	ck_assert_msg(vmf_template_build(cat, state_dir, run_dir, p, spec, &img, NULL, NULL, &rec, &e) == 0,
		      "build: %s", e.msg);
	if (secs)
		*secs = (double)(vmf_now_ms() - t0) / 1000;
	vmf_template_spec_free(spec);
	ck_assert_int_eq(rec->state, VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY);
	return rec;
}

struct clone {
	char id[VMF_UUID_STR];
	char run[700], share[720];
	struct vmf_vmm *vm;
	struct vmf_agent *agent;
};

static void
start_clone(struct vmf_template_params *p, Vmf__Catalog__TemplateRecord *rec, struct clone *c)
{
	struct vmf_error e = {0};
	vmf_uuid_new(c->id);
	snprintf(c->run, sizeof c->run, "%s/vms/%s", run_dir, c->id);
	snprintf(c->share, sizeof c->share, "%s/share", c->run);
	int64_t t0 = vmf_now_ms();
	ck_assert_msg(vmf_template_clone(p, rec, c->id, c->run, c->share, &c->vm, &e) == 0, "clone: %s", e.msg);
	printf("clone %s paused in %lld ms\n", c->id, (long long)(vmf_now_ms() - t0));
	ck_assert_msg(vmf_qemu_ops.resume(c->vm, &e) == 0, "resume: %s", e.msg);
	int fd = vmf_qemu_ops.agent_connect(c->vm, 5000, &e);
	ck_assert_msg(fd >= 0, "agent: %s", e.msg);
	c->agent = vmf_agent_new(fd);
	ck_assert_msg(vmf_agent_wait_ready(c->agent, AGENT_TIMEOUT_MS, &e) == 0, "ping after resume: %s", e.msg);
	printf("clone %s answers %lld ms after clone start\n", c->id, (long long)(vmf_now_ms() - t0));
}

static void
stop_clone(struct clone *c)
{
	struct vmf_error e;
	vmf_agent_free(c->agent);
	vmf_qemu_ops.stop(c->vm, 10000, &e);
	vmf_qemu_ops.release(c->vm);
}

static Vmf__Agent__AgentReply *
info_of(struct clone *c)
{
	Vmf__Agent__AgentReply *r = NULL;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_agent_guest_info(c->agent, &r, 10000, &e) == 0, "GuestInfo: %s", e.msg);
	return r;
}

static bool
lists(Vmf__Agent__GuestInfo *g, const char *name)
{
	for (size_t i = 0; i < g->n_share_entries; i++)
		if (strcmp(g->share_entries[i], name) == 0)
			return true;
	return false;
}

/* PSS of a cold-booted VM of the same size, after its agent answered. */
static uint64_t
cold_pss(void)
{
	vmf_vm_config c = VMF__HV__VM_CONFIG__INIT;
	char id[VMF_UUID_STR], run[700];
	vmf_uuid_new(id);
	snprintf(run, sizeof run, "%s/cold", run_dir);
	c.id = id;
	c.name = "vmfactory-test-cold";
	c.run_dir = run;
	c.kernel = img.kernel;
	c.initrd = img.initrd;
	c.cmdline = "console=ttyS0 panic=-1 quiet";
	c.vcpus = 1;
	c.max_vcpus = 2;
	c.memory_mib = 256;
	c.max_memory_mib = 1024;
	c.memory_slots = 4;
	struct vmf_vmm *vm;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_qemu_ops.boot(&c, &vm, &e) == 0, "cold boot: %s", e.msg);
	struct vmf_agent *a = vmf_agent_new(vmf_qemu_ops.agent_connect(vm, 5000, &e));
	ck_assert_msg(vmf_agent_wait_ready(a, 180000, &e) == 0, "cold agent: %s", e.msg);
	uint64_t pss = vmf_proc_pss_kib(vmf_qemu_ops.pid(vm));
	vmf_agent_free(a);
	vmf_qemu_ops.stop(vm, 10000, &e);
	vmf_qemu_ops.release(vm);
	return pss;
}

START_TEST(build_clone_two_unique_separate_small)
{
	struct vmf_template_params p = params(false);
	char id[VMF_SHA256_HEX];
	double secs;
	Vmf__Catalog__TemplateRecord *rec = build(&p, id, &secs);
	printf("template %s built in %.1f s (state %llu bytes, memory %llu bytes)\n", id, secs,
	       (unsigned long long)rec->state_size, (unsigned long long)rec->memory_size);
	ck_assert_uint_gt(rec->state_size, 0);
	ck_assert_uint_eq(rec->memory_size, 256ull << 20);

	/* Building again finds the ready template instead of rebuilding. */
	Vmf__Catalog__TemplateRecord *again = build(&p, id, &secs);
	ck_assert_int_eq(again->created_ns, rec->created_ns);
	ck_assert_double_lt(secs, 2.0);
	vmf__catalog__template_record__free_unpacked(again, NULL);

	struct clone a, b;
	start_clone(&p, rec, &a);
	start_clone(&p, rec, &b);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_agent_ping(a.agent, 5000, &e), 0);
	ck_assert_int_eq(vmf_agent_ping(b.agent, 5000, &e), 0);

	/* After ReseedRng the two clones' samples differ. */
	uint8_t ent[32], sa[16], sb[16];
	for (int i = 0; i < 32; i++)
		ent[i] = (uint8_t)rand();
	ck_assert_msg(vmf_agent_reseed(a.agent, ent, sizeof ent, sa, 10000, &e) == 0, "reseed: %s", e.msg);
	for (int i = 0; i < 32; i++)
		ent[i] = (uint8_t)rand();
	ck_assert_msg(vmf_agent_reseed(b.agent, ent, sizeof ent, sb, 10000, &e) == 0, "reseed: %s", e.msg);
	ck_assert_mem_ne(sa, sb, 16);

	/* Clones wake with the template's clock: SetTime brings them to now. */
	int64_t g;
	ck_assert_int_eq(vmf_agent_set_time(a.agent, vmf_realtime_ns(), &g, 10000, &e), 0);
	ck_assert_int_eq(vmf_agent_set_time(b.agent, vmf_realtime_ns(), &g, 10000, &e), 0);
	Vmf__Agent__AgentReply *ra = info_of(&a), *rb = info_of(&b);
	int64_t now = vmf_realtime_ns();
	ck_assert_int_lt(llabs(ra->guest_info->realtime_ns - now), 1000000000LL);
	ck_assert_int_lt(llabs(rb->guest_info->realtime_ns - now), 1000000000LL);
	vmf__agent__agent_reply__free_unpacked(ra, NULL);
	vmf__agent__agent_reply__free_unpacked(rb, NULL);

	/* Each clone's 9p share is its own directory. */
	ck_assert_msg(vmf_agent_mount_share(a.agent, VMF_SHARE_TAG, 10000, &e) == 0, "mount: %s", e.msg);
	ck_assert_msg(vmf_agent_mount_share(b.agent, VMF_SHARE_TAG, 10000, &e) == 0, "mount: %s", e.msg);
	char f[800];
	snprintf(f, sizeof f, "%s/only-in-a", a.share);
	ck_assert_int_eq(vmf_write_file_atomic(f, "a", 1, 0644, &e), 0);
	ra = info_of(&a);
	rb = info_of(&b);
	ck_assert(lists(ra->guest_info, "only-in-a"));
	ck_assert(!lists(rb->guest_info, "only-in-a"));
	vmf__agent__agent_reply__free_unpacked(ra, NULL);
	vmf__agent__agent_reply__free_unpacked(rb, NULL);

	/* Copy-on-write clones cost a fraction of a cold VM. */
	uint64_t pa = vmf_proc_pss_kib(vmf_qemu_ops.pid(a.vm)), pb = vmf_proc_pss_kib(vmf_qemu_ops.pid(b.vm));
	uint64_t pc = cold_pss();
	printf("PSS: clone A %llu KiB, clone B %llu KiB, cold VM %llu KiB (%.0f%%, %.0f%%)\n",
	       (unsigned long long)pa, (unsigned long long)pb, (unsigned long long)pc, 100.0 * pa / pc,
	       100.0 * pb / pc);
	ck_assert_uint_lt(pa * 100, pc * 40);
	ck_assert_uint_lt(pb * 100, pc * 40);

	stop_clone(&a);
	stop_clone(&b);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
}
END_TEST

START_TEST(missing_memory_file_marks_broken_and_rebuilds)
{
	struct vmf_template_params p = params(false);
	char id[VMF_SHA256_HEX];
	Vmf__Catalog__TemplateRecord *rec = build(&p, id, NULL);
	ck_assert_int_eq(unlink(rec->memory_file), 0);
	struct vmf_error e = {0};
	struct vmf_vmm *vm = NULL;
	/* verify refuses with a clear error and marks the record broken */
	ck_assert_int_lt(vmf_template_verify(cat, rec, false, &e), 0);
	printf("verify: %s\n", e.msg);
	ck_assert_ptr_nonnull(strstr(e.msg, "is missing"));
	ck_assert_ptr_nonnull(strstr(e.msg, "memory"));
	Vmf__Catalog__TemplateRecord *now = NULL;
	ck_assert_int_eq(vmf_catalog_template_get(cat, id, &now, &e), 0);
	ck_assert_int_eq(now->state, VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN);
	vmf__catalog__template_record__free_unpacked(now, NULL);
	(void)vm;
	/* The next request rebuilds it. */
	Vmf__Catalog__TemplateRecord *rebuilt = build(&p, id, NULL);
	ck_assert_int_eq(access(rebuilt->memory_file, R_OK), 0);
	ck_assert_int_eq(vmf_template_verify(cat, rebuilt, true, &e), 0);
	vmf__catalog__template_record__free_unpacked(rebuilt, NULL);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
}
END_TEST

START_TEST(full_memory_template_clones_without_sharing)
{
	struct vmf_template_params p = params(true);
	char id[VMF_SHA256_HEX];
	double secs;
	Vmf__Catalog__TemplateRecord *rec = build(&p, id, &secs);
	printf("full-memory template built in %.1f s, state %llu bytes\n", secs, (unsigned long long)rec->state_size);
	ck_assert_str_eq(rec->memory_file, "");
	ck_assert_uint_gt(rec->state_size, 16ull << 20); /* guest RAM is in the stream */
	struct clone a;
	start_clone(&p, rec, &a);
	/* No file-backed guest RAM: nothing to share with other VMs. */
	char maps[64], *buf = NULL;
	snprintf(maps, sizeof maps, "/proc/%d/maps", (int)vmf_qemu_ops.pid(a.vm));
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_read_file(maps, &buf, NULL, 1 << 22, &e), 0);
	ck_assert_ptr_null(strstr(buf, state_dir));
	free(buf);
	stop_clone(&a);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
}
END_TEST

START_TEST(leftovers_of_unfinished_builds_are_removed)
{
	char junk[700], orphan[700];
	snprintf(junk, sizeof junk, "%s/templates/.build-abc-1", state_dir);
	snprintf(orphan, sizeof orphan, "%s/templates/%064d", state_dir, 0);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_mkdir_p(junk, 0700, &e), 0);
	ck_assert_int_eq(vmf_mkdir_p(orphan, 0700, &e), 0);
	ck_assert_int_eq(vmf_template_cleanup(cat, state_dir, &e), 0);
	ck_assert_int_ne(access(junk, F_OK), 0);
	ck_assert_int_ne(access(orphan, F_OK), 0);
}
END_TEST


START_TEST(full_disk_is_a_clear_error_and_changes_nothing)
{
	char small[700];
	snprintf(small, sizeof small, "%s/small", tmp);
	mkdir(small, 0700);
	if (mount("tmpfs", small, "tmpfs", 0, "size=64m") < 0) {
		vmf_test_skip("the full-disk check needs a tmpfs mount, which failed here (%s; needs CAP_SYS_ADMIN)",
			      strerror(errno));
		return;
	}
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(small, &c, &e), 0);
	struct vmf_template_params p = params(false);
	Vmf__Catalog__TemplateSpec *spec;
	char id[VMF_SHA256_HEX];
	ck_assert_int_eq(vmf_template_spec_new(&p, &info, &img, &spec, id, &e), 0);
	Vmf__Catalog__TemplateRecord *rec = NULL;
	ck_assert_int_eq(vmf_template_build(c, small, run_dir, &p, spec, &img, NULL, NULL, &rec, &e), -ENOSPC);
	printf("full disk: %s\n", e.msg);
	ck_assert_ptr_nonnull(strstr(e.msg, "not enough space"));
	ck_assert_int_eq(vmf_catalog_template_get(c, id, &rec, &e), -ENOENT);
	vmf_template_spec_free(spec);
	vmf_catalog_close(c);
	umount2(small, MNT_DETACH);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("template");
	TCase *tc = tcase_create("template");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 900);
	tcase_add_test(tc, leftovers_of_unfinished_builds_are_removed);
	tcase_add_test(tc, build_clone_two_unique_separate_small);
	tcase_add_test(tc, missing_memory_file_marks_broken_and_rebuilds);
	tcase_add_test(tc, full_memory_template_clones_without_sharing);
	suite_add_tcase(s, tc);
	/* Skips without CAP_SYS_ADMIN: its own meson test (tests/meson.build). */
	TCase *fd = tcase_create("full_disk");
	tcase_set_tags(fd, VMF_TEST_OWN_CASE);
	tcase_add_checked_fixture(fd, setup, teardown);
	tcase_set_timeout(fd, 900);
	tcase_add_test(fd, full_disk_is_a_clear_error_and_changes_nothing);
	suite_add_tcase(s, fd);
	return vmf_test_run(s);
}
