/* The LMDB catalog: records, canonical ids, corruption, full map and disk,
 * stale readers, persistence. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog.h"
#include "catalog_hooks.h"
#include "testlib.h"
#include "util.h"

static char *tmp;

static void
setup(void)
{
	tmp = vmf_test_tmpdir("vmf-cat");
}

static void
teardown(void)
{
	struct vmf_error e;
	char mnt[600];
	/* A failed disk-full check must not leave its tmpfs mounted. */
	snprintf(mnt, sizeof mnt, "%s/small", tmp);
	umount2(mnt, MNT_DETACH);
	vmf_rm_rf(tmp, &e);
	free(tmp);
}

static char *devs_ab[] = { "a", "b" }, *devs_ba[] = { "b", "a" };

static Vmf__Catalog__TemplateSpec
spec(unsigned mem)
{
	Vmf__Catalog__TemplateSpec s = VMF__CATALOG__TEMPLATE_SPEC__INIT;
	s.hypervisor_version = "7.2.22";
	s.machine = "q35";
	s.kernel_sha256 = "k";
	s.initrd_sha256 = "i";
	s.agent_sha256 = "a";
	s.cmdline = "console=ttyS0";
	s.vcpus = 1;
	s.max_vcpus = 4;
	s.memory_mib = mem;
	s.max_memory_mib = 2048;
	s.n_devices = 2;
	s.devices = devs_ab;
	return s;
}

static void
record(Vmf__Catalog__TemplateRecord *r, Vmf__Catalog__TemplateSpec *s, char id[VMF_SHA256_HEX])
{
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_template_spec_id(s, id, &e), 0);
	vmf__catalog__template_record__init(r);
	r->schema_version = VMF_CATALOG_SCHEMA_VERSION;
	r->id = id;
	r->spec = s;
	r->state = VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY;
	r->dir = "/x";
	r->memory_file = "/x/memory";
	r->state_file = "/x/state";
	r->memory_size = 256ull << 20;
}

START_TEST(spec_id_is_canonical)
{
	char a[VMF_SHA256_HEX], b[VMF_SHA256_HEX], c[VMF_SHA256_HEX];
	struct vmf_error e = {0};
	Vmf__Catalog__TemplateSpec s = spec(256);
	ck_assert_int_eq(vmf_template_spec_id(&s, a, &e), 0);
	s.devices = devs_ba;
	ck_assert_int_eq(vmf_template_spec_id(&s, b, &e), 0);
	ck_assert_str_eq(a, b); /* device order does not matter */
	s.kernel_sha256 = "k2";
	ck_assert_int_eq(vmf_template_spec_id(&s, c, &e), 0);
	ck_assert_str_ne(a, c); /* a new kernel is a new template */
	s = spec(512);
	ck_assert_int_eq(vmf_template_spec_id(&s, c, &e), 0);
	ck_assert_str_ne(a, c);
	ck_assert(vmf_valid_template_id(a));
}
END_TEST

static int
count_cb(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	int *n = ctx;
	(void)id;
	if (rec)
		n[0]++;
	else {
		n[1]++;
		ck_assert_ptr_nonnull(strstr(rec_err->msg, "corrupt"));
	}
	return 0;
}

static int
stop_cb(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	(void)id;
	(void)rec;
	(void)rec_err;
	((int *)ctx)[0]++;
	return -ECANCELED;
}

START_TEST(put_get_list_delete_and_persist)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	char state[600], cat[600], data[600];
	snprintf(state, sizeof state, "%s/state", tmp);
	ck_assert_int_eq(vmf_catalog_open(state, &c, &e), 0);
	snprintf(cat, sizeof cat, "%s/catalog", state);
	snprintf(data, sizeof data, "%s/data.mdb", cat);
	struct stat st;
	ck_assert_int_eq(stat(state, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0700);
	ck_assert_int_eq(stat(cat, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0700);
	ck_assert_int_eq(stat(data, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	ck_assert_str_eq(vmf_catalog_path(c), cat);
	/* VM records live in the run dir's environment, opened on its own. */
	Vmf__Catalog__VmRecord *gv;
	char vid0[VMF_UUID_STR], run[600], rt[700];
	vmf_uuid_new(vid0);
	ck_assert_int_eq(vmf_catalog_vm_get(c, vid0, &gv, &e), -EBADF);
	ck_assert_ptr_nonnull(strstr(e.msg, "not open"));
	snprintf(run, sizeof run, "%s/run", tmp);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, run, &e), 0);
	snprintf(rt, sizeof rt, "%s/vms.lmdb", run);
	ck_assert_str_eq(vmf_catalog_runtime_path(c), rt);
	ck_assert_int_eq(stat(rt, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0700);
	ck_assert_uint_ne(vmf_catalog_runtime_flags(c) & MDB_NOSYNC, 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, run, &e), -EBUSY);
	Vmf__Catalog__TemplateSpec s1 = spec(256), s2 = spec(512);
	Vmf__Catalog__TemplateRecord r1, r2;
	char id1[VMF_SHA256_HEX], id2[VMF_SHA256_HEX];
	record(&r1, &s1, id1);
	record(&r2, &s2, id2);
	ck_assert_int_eq(vmf_catalog_template_put(c, &r1, &e), 0);
	ck_assert_int_eq(vmf_catalog_template_put(c, &r2, &e), 0);
	Vmf__Catalog__VmRecord vm = VMF__CATALOG__VM_RECORD__INIT;
	char vid[VMF_UUID_STR];
	vmf_uuid_new(vid);
	vm.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	vm.id = vid;
	vm.template_id = id1;
	vm.state = VMF__CATALOG__VM_STATE__VM_ASSIGNED;
	vm.sandbox_id = "sb";
	ck_assert_int_eq(vmf_catalog_vm_put(c, &vm, &e), 0);
	vm.id = "../../etc/passwd";
	ck_assert_int_eq(vmf_catalog_vm_put(c, &vm, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "../../etc/passwd"));
	/* A record without its schema version would be unreadable after a restart. */
	vm.id = vid;
	vm.schema_version = 0;
	ck_assert_int_eq(vmf_catalog_vm_put(c, &vm, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.msg, "schema version 0"));
	ck_assert_int_eq(vmf_catalog_vm_get(c, "", &gv, &e), -EINVAL);
	ck_assert_ptr_null(gv);
	ck_assert_int_eq(vmf_catalog_template_delete(c, "ABC", &e), -EINVAL);
	Vmf__Catalog__TemplateRecord *got;
	ck_assert_int_eq(vmf_catalog_template_get(c, vid, &got, &e), -EINVAL);
	vmf_catalog_close(c);

	/* Reopened: everything is still there. */
	ck_assert_int_eq(vmf_catalog_open(state, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_template_get(c, id2, &got, &e), 0);
	ck_assert_uint_eq(got->spec->memory_mib, 512);
	ck_assert_str_eq(got->spec->devices[1], "b");
	ck_assert_str_eq(got->memory_file, "/x/memory");
	vmf__catalog__template_record__free_unpacked(got, NULL);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, run, &e), 0);
	ck_assert_int_eq(vmf_catalog_vm_get(c, vid, &gv, &e), 0);
	ck_assert_str_eq(gv->sandbox_id, "sb");
	vmf__catalog__vm_record__free_unpacked(gv, NULL);

	ck_assert_int_eq(vmf_catalog_template_set_state(c, id1, VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN,
							"memory file missing", &e), 0);
	ck_assert_int_eq(vmf_catalog_template_get(c, id1, &got, &e), 0);
	ck_assert_int_eq(got->state, VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN);
	ck_assert_str_eq(got->error, "memory file missing");
	ck_assert_str_eq(got->spec->kernel_sha256, "k");
	vmf__catalog__template_record__free_unpacked(got, NULL);
	ck_assert_int_eq(vmf_catalog_template_set_state(c, id1, VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY, NULL,
							&e), 0);
	ck_assert_int_eq(vmf_catalog_template_get(c, id1, &got, &e), 0);
	ck_assert_str_eq(got->error, "");
	vmf__catalog__template_record__free_unpacked(got, NULL);
	ck_assert_int_eq(vmf_catalog_template_set_state(c, id1, (Vmf__Catalog__TemplateState)7, NULL, &e), -EINVAL);
	char absent[VMF_SHA256_HEX];
	vmf_sha256_hex("absent", 6, absent);
	ck_assert_int_eq(vmf_catalog_template_set_state(c, absent, VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN,
							"x", &e), -ENOENT);
	ck_assert_ptr_nonnull(strstr(e.msg, absent));

	int n[2] = {0};
	ck_assert_int_eq(vmf_catalog_template_list(c, count_cb, n, &e), 0);
	ck_assert_int_eq(n[0], 2);
	/* A callback's non-zero answer stops the listing and is passed on. */
	ck_assert_int_eq(vmf_catalog_template_list(c, stop_cb, n, &e), -ECANCELED);
	ck_assert_int_eq(n[0], 3);
	ck_assert_int_eq(vmf_catalog_template_delete(c, id1, &e), 0);
	ck_assert_int_eq(vmf_catalog_template_get(c, id1, &got, &e), -ENOENT);
	ck_assert_int_eq(vmf_catalog_template_delete(c, id1, &e), -ENOENT);
	ck_assert_int_eq(vmf_catalog_vm_delete(c, vid, &e), 0);
	vmf_catalog_close(c);
}
END_TEST

static int
count_bad_cb(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	int *n = ctx;
	n[rec ? 0 : 1]++;
	if (!rec) {
		ck_assert_int_eq(rec_err->code, EBADMSG);
		ck_assert_ptr_nonnull(strstr(rec_err->msg, id));
	}
	return 0;
}

static int
count_vms2(const char *id, Vmf__Catalog__VmRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	int *n = ctx;
	n[rec ? 0 : 1]++;
	if (!rec)
		ck_assert_ptr_nonnull(strstr(rec_err->msg, id));
	return 0;
}

START_TEST(corrupt_record_is_named_and_others_keep_working)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, tmp, &e), 0);
	Vmf__Catalog__TemplateSpec s1 = spec(256), s2 = spec(512);
	Vmf__Catalog__TemplateRecord r1, r2;
	char id1[VMF_SHA256_HEX], id2[VMF_SHA256_HEX];
	record(&r1, &s1, id1);
	record(&r2, &s2, id2);
	ck_assert_int_eq(vmf_catalog_template_put(c, &r1, &e), 0);
	ck_assert_int_eq(vmf_catalog_template_put(c, &r2, &e), 0);
	static const uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff, 0x0f, 0x22, 0x01 };
	ck_assert_int_eq(vmf_catalog_put_raw(c, "templates", id1, junk, sizeof junk, &e), 0);
	Vmf__Catalog__TemplateRecord *got;
	ck_assert_int_eq(vmf_catalog_template_get(c, id1, &got, &e), -EBADMSG);
	printf("corrupt record: %s\n", e.msg);
	ck_assert_ptr_nonnull(strstr(e.msg, id1));
	ck_assert_ptr_nonnull(strstr(e.msg, "corrupt"));
	/* The other template is still served, and listing goes on. */
	ck_assert_int_eq(vmf_catalog_template_get(c, id2, &got, &e), 0);
	vmf__catalog__template_record__free_unpacked(got, NULL);
	int n[2] = {0};
	ck_assert_int_eq(vmf_catalog_template_list(c, count_cb, n, &e), 0);
	ck_assert_int_eq(n[0], 1);
	ck_assert_int_eq(n[1], 1);

	/* Updating a corrupt record says which one and changes nothing. */
	ck_assert_int_eq(vmf_catalog_template_set_state(c, id1, VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY, NULL,
							&e), -EBADMSG);
	ck_assert_ptr_nonnull(strstr(e.msg, id1));

	/* A record from a newer schema is refused, not guessed at. */
	r2.schema_version = 99;
	uint8_t buf[1024];
	size_t len = vmf__catalog__template_record__pack(&r2, buf);
	ck_assert_uint_lt(len, sizeof buf);
	ck_assert_int_eq(vmf_catalog_put_raw(c, "templates", id2, buf, len, &e), 0);
	ck_assert_int_eq(vmf_catalog_template_get(c, id2, &got, &e), -EBADMSG);
	printf("future record: %s\n", e.msg);
	ck_assert_ptr_nonnull(strstr(e.msg, "schema version 99"));
	ck_assert_ptr_nonnull(strstr(e.msg, id2));
	n[0] = n[1] = 0;
	ck_assert_int_eq(vmf_catalog_template_list(c, count_bad_cb, n, &e), 0);
	ck_assert_int_eq(n[1], 2);

	/* Same for VM records: the readable one is still listed. */
	Vmf__Catalog__VmRecord vm = VMF__CATALOG__VM_RECORD__INIT;
	char good[VMF_UUID_STR], bad[VMF_UUID_STR];
	vmf_uuid_new(good);
	vmf_uuid_new(bad);
	vm.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	vm.id = good;
	ck_assert_int_eq(vmf_catalog_vm_put(c, &vm, &e), 0);
	ck_assert_int_eq(vmf_catalog_put_raw(c, "vms", bad, junk, sizeof junk, &e), 0);
	int vms[2] = {0};
	ck_assert_int_eq(vmf_catalog_vm_list(c, count_vms2, vms, &e), 0);
	ck_assert_int_eq(vms[0], 1);
	ck_assert_int_eq(vms[1], 1);
	Vmf__Catalog__VmRecord *gv;
	ck_assert_int_eq(vmf_catalog_vm_get(c, bad, &gv, &e), -EBADMSG);
	ck_assert_ptr_nonnull(strstr(e.msg, bad));

	ck_assert_int_eq(vmf_catalog_put_raw(c, "nosuch", "k", "v", 1, &e), -EINVAL);
	vmf_catalog_close(c);
}
END_TEST

static int
fill_until_error(struct vmf_catalog *c, int *stored, struct vmf_error *e)
{
	Vmf__Catalog__VmRecord vm = VMF__CATALOG__VM_RECORD__INIT;
	static char big[2048];
	memset(big, 'x', sizeof big - 1);
	vm.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	vm.sandbox_id = big;
	for (int i = 0; i < 100000; i++) {
		char id[VMF_UUID_STR];
		vmf_uuid_new(id);
		vm.id = id;
		int r = vmf_catalog_vm_put(c, &vm, e);
		if (r < 0)
			return r;
		(*stored)++;
	}
	return 0;
}

static int
count_vms(const char *id, Vmf__Catalog__VmRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	(void)id;
	(void)rec_err;
	if (rec)
		(*(int *)ctx)++;
	return 0;
}

static int
delete_first(const char *id, Vmf__Catalog__VmRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	struct vmf_error e = {0};
	(void)rec;
	(void)rec_err;
	ck_assert_int_eq(vmf_catalog_vm_delete(ctx, id, &e), 0);
	return 1;
}

START_TEST(map_full_is_a_clear_error_and_keeps_the_catalog)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open_sized(tmp, 1, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, tmp, &e), 0);
	int stored = 0;
	ck_assert_int_eq(fill_until_error(c, &stored, &e), -ENOSPC);
	printf("map full after %d records: %s\n", stored, e.msg);
	ck_assert_ptr_nonnull(strstr(e.msg, "is full (map size 1 MiB)"));
	ck_assert_ptr_nonnull(strstr(e.msg, vmf_catalog_runtime_path(c)));
	int n = 0;
	ck_assert_int_eq(vmf_catalog_vm_list(c, count_vms, &n, &e), 0);
	ck_assert_int_eq(n, stored);
	/* The same handle goes on working once there is room again.  LMDB
	 * never reuses the pages the last committed write freed (a reader may
	 * still begin on that snapshot), so a put right after one delete has
	 * only what older writes freed, and whether that covers its leaf split
	 * depends on where the random ids fell: about 1 run in 100 got ENOSPC.
	 * Deleting several records, each in its own write, frees pages the put
	 * can use whatever the tree's shape. */
	const int deleted = 8;
	for (int k = 0; k < deleted; k++)
		ck_assert_int_eq(vmf_catalog_vm_list(c, delete_first, c, &e), 1);
	Vmf__Catalog__VmRecord vm = VMF__CATALOG__VM_RECORD__INIT;
	char id[VMF_UUID_STR];
	vmf_uuid_new(id);
	vm.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	vm.id = id;
	ck_assert_int_eq(vmf_catalog_vm_put(c, &vm, &e), 0);
	Vmf__Catalog__VmRecord *gv;
	ck_assert_int_eq(vmf_catalog_vm_get(c, id, &gv, &e), 0);
	vmf__catalog__vm_record__free_unpacked(gv, NULL);
	vmf_catalog_close(c);
	/* Still usable with a larger map. */
	ck_assert_int_eq(vmf_catalog_open_sized(tmp, 16, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, tmp, &e), 0);
	n = 0;
	ck_assert_int_eq(vmf_catalog_vm_list(c, count_vms, &n, &e), 0);
	ck_assert_int_eq(n, stored - deleted + 1);
	vmf_catalog_close(c);
}
END_TEST

START_TEST(disk_full_is_a_clear_error_and_keeps_the_catalog)
{
	char mnt[600];
	snprintf(mnt, sizeof mnt, "%s/small", tmp);
	mkdir(mnt, 0700);
	if (mount("tmpfs", mnt, "tmpfs", 0, "size=256k") < 0) {
		vmf_test_skip("the disk-full check needs a tmpfs mount, which failed here (%s; needs CAP_SYS_ADMIN)",
			      strerror(errno));
		return;
	}
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	int r = vmf_catalog_open_sized(mnt, 64, &c, &e);
	if (r == 0 && (r = vmf_catalog_open_runtime(c, mnt, &e)) < 0)
		vmf_catalog_close(c);
	if (r == 0) {
		int stored = 0;
		r = fill_until_error(c, &stored, &e);
		printf("disk full after %d records: %s\n", stored, e.msg);
		ck_assert_int_eq(r, -ENOSPC);
		ck_assert_ptr_nonnull(strstr(e.msg, "disk is full"));
		ck_assert_ptr_nonnull(strstr(e.msg, mnt));
		vmf_catalog_close(c);
		ck_assert_int_eq(vmf_catalog_open_sized(mnt, 64, &c, &e), 0);
		ck_assert_int_eq(vmf_catalog_open_runtime(c, mnt, &e), 0);
		int n = 0;
		ck_assert_int_eq(vmf_catalog_vm_list(c, count_vms, &n, &e), 0);
		ck_assert_int_eq(n, stored);
		vmf_catalog_close(c);
	} else {
		printf("open on a full disk: %s\n", e.msg);
		ck_assert_int_eq(r, -ENOSPC);
	}
	umount(mnt);
}
END_TEST

/* A child that opens the catalog, optionally starts a read transaction,
 * says so on the pipe and waits to be killed. */
static pid_t
lmdb_child(bool reader)
{
	int p[2];
	ck_assert_int_eq(pipe(p), 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* A failed assertion in the parent must not leave it behind. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		MDB_env *env;
		MDB_txn *txn;
		char path[600];
		snprintf(path, sizeof path, "%s/catalog", tmp);
		mdb_env_create(&env);
		mdb_env_set_maxdbs(env, 4);
		mdb_env_set_mapsize(env, (size_t)VMF_CATALOG_DEFAULT_MAP_MIB << 20);
		if (mdb_env_open(env, path, MDB_NOTLS, 0600) || (reader && mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)))
			_exit(1);
		ssize_t w = write(p[1], "r", 1);
		(void)w;
		for (;;)
			pause();
	}
	char ch;
	ck_assert_int_eq(read(p[0], &ch, 1), 1);
	close(p[0]);
	close(p[1]);
	return pid;
}

START_TEST(stale_reader_slots_are_cleared)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	vmf_catalog_close(c);
	/* LMDB resets the reader table when nobody else has the catalog open,
	 * so the case that matters has another live user (a CLI command). */
	pid_t holder = lmdb_child(false);
	pid_t reader = lmdb_child(true);
	kill(reader, SIGKILL);
	waitpid(reader, NULL, 0);
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	ck_assert_int_ge(vmf_catalog_stale_readers_cleared(c), 1);
	vmf_catalog_close(c);
	kill(holder, SIGKILL);
	waitpid(holder, NULL, 0);
}
END_TEST

START_TEST(catalog_of_another_schema_is_refused)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	uint32_t ver = VMF_CATALOG_SCHEMA_VERSION + 1;
	ck_assert_int_eq(vmf_catalog_put_raw(c, "meta", "schema", &ver, sizeof ver, &e), 0);
	vmf_catalog_close(c);
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), -EPROTO);
	ck_assert_ptr_null(c);
	printf("foreign catalog: %s\n", e.msg);
	char want[64];
	snprintf(want, sizeof want, "schema version %u", ver);
	ck_assert_ptr_nonnull(strstr(e.msg, want));
	ck_assert_ptr_nonnull(strstr(e.msg, tmp));
}
END_TEST

START_TEST(open_failures_name_the_path)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	char file[600];
	snprintf(file, sizeof file, "%s/plain-file", tmp);
	ck_assert_int_eq(vmf_write_file_atomic(file, "x", 1, 0600, &e), 0);
	ck_assert_int_lt(vmf_catalog_open(file, &c, &e), 0);
	ck_assert_ptr_null(c);
	printf("state dir is a file: %s\n", e.msg);
	ck_assert_ptr_nonnull(strstr(e.msg, file));

	char longdir[PATH_MAX + 16];
	memset(longdir, 'a', sizeof longdir - 1);
	longdir[0] = '/';
	longdir[sizeof longdir - 1] = '\0';
	ck_assert_int_eq(vmf_catalog_open(longdir, &c, &e), -ENAMETOOLONG);
	ck_assert_int_eq(vmf_catalog_open_sized(tmp, 0, &c, &e), -EINVAL);
}
END_TEST

/* Every QEMU the daemon spawns would otherwise inherit the catalog. */
START_TEST(catalog_fds_are_not_inherited)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, tmp, &e), 0);
	DIR *d = opendir("/proc/self/fd");
	ck_assert_ptr_nonnull(d);
	struct dirent *de;
	int seen = 0;
	while ((de = readdir(d))) {
		char link[64], target[PATH_MAX];
		snprintf(link, sizeof link, "/proc/self/fd/%s", de->d_name);
		ssize_t n = readlink(link, target, sizeof target - 1);
		if (de->d_name[0] == '.' || n < 0)
			continue;
		target[n] = '\0';
		if (strncmp(target, vmf_catalog_path(c), strlen(vmf_catalog_path(c))) != 0 &&
		    strncmp(target, vmf_catalog_runtime_path(c), strlen(vmf_catalog_runtime_path(c))) != 0)
			continue;
		seen++;
		int fl = fcntl(atoi(de->d_name), F_GETFD);
		ck_assert_msg(fl >= 0 && (fl & FD_CLOEXEC), "%s (fd %s) is inherited by children", target,
			      de->d_name);
	}
	closedir(d);
	ck_assert_int_ge(seen, 4);
	vmf_catalog_close(c);
}
END_TEST

#define THREADS 4
#define PER_THREAD 40

static void *
worker(void *arg)
{
	struct vmf_catalog *c = arg;
	struct vmf_error e = {0};
	for (int i = 0; i < PER_THREAD; i++) {
		Vmf__Catalog__VmRecord vm = VMF__CATALOG__VM_RECORD__INIT;
		char id[VMF_UUID_STR];
		vmf_uuid_new(id);
		vm.schema_version = VMF_CATALOG_SCHEMA_VERSION;
		vm.id = id;
		vm.sandbox_id = id;
		if (vmf_catalog_vm_put(c, &vm, &e) < 0)
			return strdup(e.msg);
		Vmf__Catalog__VmRecord *got;
		if (vmf_catalog_vm_get(c, id, &got, &e) < 0)
			return strdup(e.msg);
		bool same = strcmp(got->sandbox_id, id) == 0;
		vmf__catalog__vm_record__free_unpacked(got, NULL);
		if (!same)
			return strdup("read back another record");
		int n = 0;
		if (vmf_catalog_vm_list(c, count_vms, &n, &e) < 0)
			return strdup(e.msg);
		if (n <= i)
			return strdup("a listing missed records this thread wrote");
	}
	return NULL;
}

START_TEST(threads_share_one_catalog)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, tmp, &e), 0);
	pthread_t th[THREADS];
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, worker, c), 0);
	for (int i = 0; i < THREADS; i++) {
		char *msg;
		ck_assert_int_eq(pthread_join(th[i], (void **)&msg), 0);
		ck_assert_msg(msg == NULL, "thread %d: %s", i, msg);
	}
	int n = 0;
	ck_assert_int_eq(vmf_catalog_vm_list(c, count_vms, &n, &e), 0);
	ck_assert_int_eq(n, THREADS * PER_THREAD);
	vmf_catalog_close(c);
}
END_TEST

/* VM records a state-dir catalog of an earlier vmfactory holds move to the
 * run dir once, unreadable ones too (recovery decides about them); a record
 * already in the run dir is the newer and stays. */
START_TEST(vm_records_of_an_earlier_catalog_move_to_the_run_dir)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	char run2[600];
	snprintf(run2, sizeof run2, "%s/run2", tmp);
	Vmf__Catalog__VmRecord vm = VMF__CATALOG__VM_RECORD__INIT;
	char old[VMF_UUID_STR], both[VMF_UUID_STR], bad[VMF_UUID_STR];
	vmf_uuid_new(old);
	vmf_uuid_new(both);
	vmf_uuid_new(bad);
	vm.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	vm.state = VMF__CATALOG__VM_STATE__VM_ASSIGNED;
	/* The run dir already holds a newer record of one of them. */
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, run2, &e), 0);
	vm.id = both;
	vm.sandbox_id = "newer";
	ck_assert_int_eq(vmf_catalog_vm_put(c, &vm, &e), 0);
	vmf_catalog_close(c);
	/* What an earlier vmfactory left in the state dir. */
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	uint8_t buf[512];
	vm.sandbox_id = "from-state-dir";
	vm.id = old;
	size_t len = vmf__catalog__vm_record__pack(&vm, buf);
	ck_assert_int_eq(vmf_catalog_put_raw(c, "legacy-vms", old, buf, len, &e), 0);
	vm.id = both;
	len = vmf__catalog__vm_record__pack(&vm, buf);
	ck_assert_int_eq(vmf_catalog_put_raw(c, "legacy-vms", both, buf, len, &e), 0);
	ck_assert_int_eq(vmf_catalog_put_raw(c, "legacy-vms", bad, "\xff\xff", 2, &e), 0);
	vmf_catalog_close(c);

	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, run2, &e), 0);
	int n[2] = {0};
	ck_assert_int_eq(vmf_catalog_vm_list(c, count_vms2, n, &e), 0);
	ck_assert_int_eq(n[0], 2);
	ck_assert_int_eq(n[1], 1);
	Vmf__Catalog__VmRecord *gv;
	ck_assert_int_eq(vmf_catalog_vm_get(c, old, &gv, &e), 0);
	ck_assert_str_eq(gv->sandbox_id, "from-state-dir");
	vmf__catalog__vm_record__free_unpacked(gv, NULL);
	ck_assert_int_eq(vmf_catalog_vm_get(c, both, &gv, &e), 0);
	ck_assert_str_eq(gv->sandbox_id, "newer");
	vmf__catalog__vm_record__free_unpacked(gv, NULL);
	vmf_catalog_close(c);

	/* Moved, not copied: a fresh run dir (a reboot) finds none. */
	vmf_rm_rf(run2, &e);
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, run2, &e), 0);
	n[0] = n[1] = 0;
	ck_assert_int_eq(vmf_catalog_vm_list(c, count_vms2, n, &e), 0);
	ck_assert_int_eq(n[0] + n[1], 0);
	vmf_catalog_close(c);
}
END_TEST

START_TEST(runtime_records_of_another_schema_are_refused)
{
	struct vmf_catalog *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, tmp, &e), 0);
	uint32_t ver = VMF_CATALOG_RUNTIME_SCHEMA_VERSION + 1;
	ck_assert_int_eq(vmf_catalog_put_raw(c, "runtime-meta", "schema", &ver, sizeof ver, &e), 0);
	vmf_catalog_close(c);
	ck_assert_int_eq(vmf_catalog_open(tmp, &c, &e), 0);
	ck_assert_int_eq(vmf_catalog_open_runtime(c, tmp, &e), -EPROTO);
	printf("foreign runtime records: %s\n", e.msg);
	ck_assert_ptr_nonnull(strstr(e.msg, "vms.lmdb"));
	/* The templates stay usable; the VM calls say what is missing. */
	Vmf__Catalog__VmRecord *gv;
	char id[VMF_UUID_STR];
	vmf_uuid_new(id);
	ck_assert_int_eq(vmf_catalog_vm_get(c, id, &gv, &e), -EBADF);
	vmf_catalog_close(c);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("catalog");
	TCase *tc = tcase_create("catalog");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, spec_id_is_canonical);
	tcase_add_test(tc, put_get_list_delete_and_persist);
	tcase_add_test(tc, corrupt_record_is_named_and_others_keep_working);
	tcase_add_test(tc, map_full_is_a_clear_error_and_keeps_the_catalog);
	tcase_add_test(tc, stale_reader_slots_are_cleared);
	tcase_add_test(tc, catalog_of_another_schema_is_refused);
	tcase_add_test(tc, open_failures_name_the_path);
	tcase_add_test(tc, catalog_fds_are_not_inherited);
	tcase_add_test(tc, threads_share_one_catalog);
	tcase_add_test(tc, vm_records_of_an_earlier_catalog_move_to_the_run_dir);
	tcase_add_test(tc, runtime_records_of_another_schema_are_refused);
	suite_add_tcase(s, tc);
	/* Skips without CAP_SYS_ADMIN: its own meson test (tests/meson.build). */
	TCase *df = tcase_create("disk_full");
	tcase_set_tags(df, VMF_TEST_OWN_CASE);
	tcase_add_checked_fixture(df, setup, teardown);
	tcase_set_timeout(df, 120);
	tcase_add_test(df, disk_full_is_a_clear_error_and_keeps_the_catalog);
	suite_add_tcase(s, df);
	return vmf_test_run(s);
}
