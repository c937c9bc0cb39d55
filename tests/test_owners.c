/* Ownership and limits without a daemon: snapshot names resolve among their
 * owner's (a record from before owners is the operator's), a template's
 * bytes, and the sentence and errno of each tenant limit at its bound. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "factory.h"
#include "limit.h"
#include "template.h"
#include "testlib.h"
#include "util.h"

static char *tmp;

static void
setup(void)
{
	tmp = vmf_test_tmpdir("vmf-own");
}

static void
teardown(void)
{
	struct vmf_error e;
	vmf_rm_rf(tmp, &e);
	free(tmp);
}

/* A snapshot record named name of owner; legacy: packed as an earlier
 * vmfactory wrote it, without the owner field. */
static void
put_snapshot(struct vmf_catalog *cat, const char *name, uint32_t owner, const char *seed, char id[VMF_SHA256_HEX])
{
	Vmf__Catalog__TemplateSpec s = VMF__CATALOG__TEMPLATE_SPEC__INIT;
	s.vcpus = 1;
	s.memory_mib = 256;
	Vmf__Catalog__TemplateRecord r = VMF__CATALOG__TEMPLATE_RECORD__INIT;
	vmf_sha256_hex(seed, strlen(seed), id);
	r.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	r.id = id;
	r.spec = &s;
	r.state = VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY;
	r.name = (char *)name;
	r.owner_uid = owner;
	r.memory_size = 256ull << 20;
	r.state_size = 1000;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_catalog_template_put(cat, &r, &e) == 0, "%s", e.msg);
}

START_TEST(names_resolve_among_their_owners_snapshots)
{
	struct vmf_catalog *cat;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(tmp, &cat, &e), 0);
	char op[VMF_SHA256_HEX], ta[VMF_SHA256_HEX], tb[VMF_SHA256_HEX], ty[VMF_SHA256_HEX];
	put_snapshot(cat, "x", 0, "operator's x", op);
	put_snapshot(cat, "x", 1001, "1001's x", ta);
	put_snapshot(cat, "x", 1002, "1002's x", tb);
	put_snapshot(cat, "y", 1001, "1001's y", ty);
	Vmf__Catalog__TemplateRecord *rec = NULL;
	ck_assert_int_eq(vmf_template_find_name(cat, 0, "x", &rec, &e), 0);
	ck_assert_str_eq(rec->id, op);
	ck_assert_uint_eq(vmf_template_bytes(rec), (256ull << 20) + 1000);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
	ck_assert_int_eq(vmf_template_find_name(cat, 1001, "x", &rec, &e), 0);
	ck_assert_str_eq(rec->id, ta);
	ck_assert_uint_eq(rec->owner_uid, 1001);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
	ck_assert_int_eq(vmf_template_find_name(cat, 1002, "x", &rec, &e), 0);
	ck_assert_str_eq(rec->id, tb);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
	/* Neither another tenant's name nor a tenant's name for the operator. */
	ck_assert_int_eq(vmf_template_find_name(cat, 1002, "y", &rec, &e), -ENOENT);
	ck_assert_ptr_null(rec);
	ck_assert_msg(strstr(e.msg, "uid 1002 has no template named y"), "%s", e.msg);
	ck_assert_int_eq(vmf_template_find_name(cat, 0, "y", &rec, &e), -ENOENT);
	/* Removed: record and directory. */
	ck_assert_int_eq(vmf_template_remove(cat, tmp, ta, &e), 0);
	ck_assert_int_eq(vmf_template_find_name(cat, 1001, "x", &rec, &e), -ENOENT);
	ck_assert_int_eq(vmf_template_find_name(cat, 0, "x", &rec, &e), 0);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
	vmf_catalog_close(cat);
}
END_TEST

START_TEST(a_record_without_an_owner_is_the_operators)
{
	/* An earlier vmfactory's record: owner_uid (tag 116) absent. */
	Vmf__Catalog__TemplateRecord r = VMF__CATALOG__TEMPLATE_RECORD__INIT;
	r.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	r.id = "ab";
	r.name = "old";
	r.owner_uid = 1001;
	size_t n = vmf__catalog__template_record__get_packed_size(&r);
	uint8_t *buf = malloc(n);
	vmf__catalog__template_record__pack(&r, buf);
	/* Tag 116, varint: key bytes 0xa0 0x07, then 1001 (0xe9 0x07): the
	 * last four bytes, as protobuf-c packs fields in tag order. */
	ck_assert_uint_ge(n, 4);
	ck_assert_uint_eq(buf[n - 4], 0xa0);
	Vmf__Catalog__TemplateRecord *old = vmf__catalog__template_record__unpack(NULL, n - 4, buf);
	ck_assert_ptr_nonnull(old);
	ck_assert_uint_eq(old->owner_uid, 0);
	ck_assert_str_eq(old->name, "old");
	vmf__catalog__template_record__free_unpacked(old, NULL);
	free(buf);
}
END_TEST

static struct vmf_daemon_opts
limits(void)
{
	struct vmf_daemon_opts o;
	vmf_daemon_opts_defaults(&o);
	o.tenant_max_vms = 2;
	o.tenant_max_suspended = 2;
	o.tenant_max_suspended_mib = 1000;
	o.tenant_max_snapshots = 3;
	o.tenant_max_snapshot_mib = 2000;
	return o;
}

START_TEST(each_tenant_limit_refuses_at_its_bound_naming_it)
{
	struct vmf_daemon_opts o = limits();
	struct vmf_error e = {0};
	struct vmf_usage u = { .vms = 1 };
	ck_assert_int_eq(vmf_limit_check(&o, 1001, &u, VMF_LIMIT_VMS, 0, &e), 0);
	u.vms = 2;
	ck_assert_int_eq(vmf_limit_check(&o, 1001, &u, VMF_LIMIT_VMS, 0, &e), -EDQUOT);
	ck_assert_msg(strstr(e.msg, "uid 1001 holds 2 VMs") && strstr(e.msg, "tenant_max_vms = 2"), "%s", e.msg);

	/* Suspended: the count, then the bytes with the one to come. */
	u = (struct vmf_usage){ .suspended = 1, .suspended_bytes = 600ull << 20 };
	ck_assert_int_eq(vmf_limit_check(&o, 1001, &u, VMF_LIMIT_SUSPENDED, 400ull << 20, &e), 0);
	ck_assert_int_eq(vmf_limit_check(&o, 1001, &u, VMF_LIMIT_SUSPENDED, (400ull << 20) + 1, &e), -EDQUOT);
	ck_assert_msg(strstr(e.msg, "tenant_max_suspended_mib") && strstr(e.msg, "1000 MiB") &&
		      strstr(e.msg, "hold 600 MiB"), "%s", e.msg);
	u.suspended = 2;
	ck_assert_int_eq(vmf_limit_check(&o, 1001, &u, VMF_LIMIT_SUSPENDED, 0, &e), -EDQUOT);
	ck_assert_msg(strstr(e.msg, "2 suspended VMs") && strstr(e.msg, "tenant_max_suspended = 2"), "%s", e.msg);

	/* Snapshots: the count, then the bytes. */
	u = (struct vmf_usage){ .snapshots = 2, .snapshot_bytes = 1500ull << 20 };
	ck_assert_int_eq(vmf_limit_check(&o, 1001, &u, VMF_LIMIT_SNAPSHOTS, 500ull << 20, &e), 0);
	ck_assert_int_eq(vmf_limit_check(&o, 1001, &u, VMF_LIMIT_SNAPSHOTS, 501ull << 20, &e), -EDQUOT);
	ck_assert_msg(strstr(e.msg, "tenant_max_snapshot_mib") && strstr(e.msg, "hold 1500 MiB"), "%s", e.msg);
	u.snapshots = 3;
	ck_assert_int_eq(vmf_limit_check(&o, 1001, &u, VMF_LIMIT_SNAPSHOTS, 0, &e), -EDQUOT);
	ck_assert_msg(strstr(e.msg, "tenant_max_snapshots = 3") && strstr(e.msg, "template rm"), "%s", e.msg);

	/* 0: none at all. */
	o.tenant_max_snapshots = 0;
	u = (struct vmf_usage){ 0 };
	ck_assert_int_eq(vmf_limit_check(&o, 1001, &u, VMF_LIMIT_SNAPSHOTS, 0, &e), -EDQUOT);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("owners");
	TCase *tc = tcase_create("owners");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, names_resolve_among_their_owners_snapshots);
	tcase_add_test(tc, a_record_without_an_owner_is_the_operators);
	tcase_add_test(tc, each_tenant_limit_refuses_at_its_bound_naming_it);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
