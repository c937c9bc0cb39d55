/* Pool policy: how many clones to start, backoff, idle expiry, quantiles. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "testlib.h"
#include "util.h"

static Vmf__Catalog__TemplateRecord tpl_rec = VMF__CATALOG__TEMPLATE_RECORD__INIT;
static struct vmf_tpl tpl = { .refs = 1, .rec = &tpl_rec };

START_TEST(fill_respects_target_and_parallelism)
{
	struct vmf_pool p = {0};
	p.target = 8;
	p.parallelism = 2;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 0); /* no template yet */
	p.tpl = &tpl;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 2);
	p.filling = 1;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 1);
	p.filling = 2;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 0);
	p.filling = 0;
	p.ready = 7;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 1);
	p.ready = 8;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 0);
	p.building = true;
	p.ready = 0;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 0);
}
END_TEST

/* The record lives until the last reference goes, whichever holder drops
 * last (valgrind and ASan see a use after free or a leak). */
START_TEST(template_record_lives_until_the_last_reference)
{
	Vmf__Catalog__TemplateRecord *rec = malloc(sizeof(*rec));
	ck_assert_ptr_nonnull(rec);
	vmf__catalog__template_record__init(rec);
	rec->id = strdup("0123");
	struct vmf_tpl *pool = vmf_tpl_new(rec);
	ck_assert_ptr_nonnull(pool);
	struct vmf_tpl *job1 = vmf_tpl_ref(pool), *job2 = vmf_tpl_ref(pool);
	ck_assert_ptr_eq(job1, pool);
	vmf_tpl_unref(pool);            /* the pool finds it broken */
	ck_assert_str_eq(job1->rec->id, "0123");
	vmf_tpl_unref(job1);
	ck_assert_str_eq(job2->rec->id, "0123");
	vmf_tpl_unref(job2);            /* frees */
	vmf_tpl_unref(NULL);
	ck_assert_ptr_null(vmf_tpl_ref(NULL));
}
END_TEST

START_TEST(failures_back_off_exponentially)
{
	struct vmf_pool p = {0};
	p.target = 4;
	p.parallelism = 4;
	p.tpl = &tpl;
	ck_assert_int_eq(vmf_pool_backoff_ms(1), 1000);
	ck_assert_int_eq(vmf_pool_backoff_ms(2), 2000);
	ck_assert_int_eq(vmf_pool_backoff_ms(4), 8000);
	ck_assert_int_eq(vmf_pool_backoff_ms(20), 60000);
	vmf_pool_note_failure(&p, 10000, "boom");
	ck_assert_str_eq(p.last_error, "boom");
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 10500), 0);
	/* After the backoff, one probe clone rather than a burst. */
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 11000), 1);
	vmf_pool_note_failure(&p, 11000, "again");
	ck_assert_int_eq(p.retry_at_ms, 13000);
	ck_assert_uint_eq(p.failed, 2);
	vmf_pool_note_success(&p);
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 11000), 4);
}
END_TEST

START_TEST(idle_expiry_and_latency)
{
	struct vmf_vm vm;
	memset(&vm, 0, sizeof vm);
	vm.state = VMF_VM_READY;
	vm.ready_mono_ms = 1000;
	ck_assert(!vmf_pool_vm_idle_expired(&vm, 0, 1000000));
	ck_assert(!vmf_pool_vm_idle_expired(&vm, 10, 10000));
	ck_assert(vmf_pool_vm_idle_expired(&vm, 10, 11001));
	vm.state = VMF_VM_ASSIGNED;
	ck_assert(!vmf_pool_vm_idle_expired(&vm, 10, 11001));

	static struct vmf_latency l;
	ck_assert(vmf_latency_quantile(&l, 0.5) == 0);
	for (int i = 1; i <= 100; i++)
		vmf_latency_add(&l, i);
	ck_assert(vmf_latency_quantile(&l, 0.5) >= 50 && vmf_latency_quantile(&l, 0.5) <= 51);
	ck_assert(vmf_latency_quantile(&l, 0.99) >= 99);
	/* The ring keeps the most recent samples. */
	for (int i = 0; i < VMF_LAT_SAMPLES; i++)
		vmf_latency_add(&l, 5);
	ck_assert(vmf_latency_quantile(&l, 0.99) == 5);
}
END_TEST

/* Pools of the config in tests/data/config/good-pools.conf's spirit: a
 * small shared one, the same sizes without sharing, and a bigger base. */
struct choice_pools {
	struct vmf_pool_list list;
	struct vmf_pool p[3];
	Vmf__Catalog__TemplateSpec spec[3];
};

static void
choice_pool(struct choice_pools *c, int i, const char *name, unsigned vcpus, unsigned mem, unsigned max_vcpus,
	    unsigned max_mem, bool full_memory)
{
	vmf__catalog__template_spec__init(&c->spec[i]);
	c->spec[i].vcpus = vcpus;
	c->spec[i].memory_mib = mem;
	c->spec[i].max_vcpus = max_vcpus;
	c->spec[i].max_memory_mib = max_mem;
	c->spec[i].full_memory = full_memory;
	memset(&c->p[i], 0, sizeof(c->p[i]));
	snprintf(c->p[i].name, sizeof(c->p[i].name), "%s", name);
	c->p[i].spec = &c->spec[i];
	TAILQ_INSERT_TAIL(&c->list, &c->p[i], link);
}

START_TEST(choose_by_size_or_by_name)
{
	static struct choice_pools c;
	TAILQ_INIT(&c.list);
	struct vmf_error err = {0};
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "", 1, 256, &err));
	ck_assert_int_eq(err.code, ENOENT);
	ck_assert_str_eq(err.msg, "this daemon has no pool");
	/* The private pool comes first: order must not decide a tie. */
	choice_pool(&c, 0, "private", 1, 256, 4, 2048, true);
	choice_pool(&c, 1, "shared", 1, 256, 4, 2048, false);
	choice_pool(&c, 2, "big", 2, 1024, 4, 4096, false);

	/* Unnamed: the largest base that fits, a sharing pool on a tie. */
	ck_assert_ptr_eq(vmf_pool_choose(&c.list, "", 1, 256, &err), &c.p[1]);
	ck_assert_ptr_eq(vmf_pool_choose(&c.list, NULL, 2, 512, &err), &c.p[1]);
	ck_assert_ptr_eq(vmf_pool_choose(&c.list, "", 2, 1024, &err), &c.p[2]);
	ck_assert_ptr_eq(vmf_pool_choose(&c.list, "", 4, 4096, &err), &c.p[2]);
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "", 8, 256, &err));
	ck_assert_int_eq(err.code, ENOSPC);
	ck_assert_str_eq(err.msg, "no pool serves 8 vCPUs and 256 MiB: pools allow private 1-4 vCPUs and "
				  "256-2048 MiB; shared 1-4 vCPUs and 256-2048 MiB; big 2-4 vCPUs and 1024-4096 MiB");

	/* Named: that pool only, even where another fits better. */
	ck_assert_ptr_eq(vmf_pool_choose(&c.list, "private", 1, 256, &err), &c.p[0]);
	ck_assert_ptr_eq(vmf_pool_choose(&c.list, "private", 2, 1024, &err), &c.p[0]);
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "big", 1, 256, &err));
	ck_assert_int_eq(err.code, ENOSPC);
	ck_assert_str_eq(err.msg, "pool big does not serve 1 vCPUs and 256 MiB: it allows 2-4 vCPUs and "
				  "1024-4096 MiB");
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "Private", 1, 256, &err));
	ck_assert_int_eq(err.code, ENOENT);
	ck_assert_str_eq(err.msg, "no pool named 'Private' in this daemon (pools: private, shared, big)");

	/* One pool: the error gives its range without naming it. */
	TAILQ_INIT(&c.list);
	choice_pool(&c, 0, "default", 1, 256, 2, 1024, false);
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "", 1, 2048, &err));
	ck_assert_str_eq(err.msg, "no pool serves 1 vCPUs and 2048 MiB: the template allows 1-2 vCPUs and "
				  "256-1024 MiB");
}
END_TEST

START_TEST(pool_names)
{
	ck_assert(vmf_valid_pool_name("a"));
	ck_assert(vmf_valid_pool_name("small-2_x"));
	ck_assert(vmf_valid_pool_name("abcdefghijklmnopqrstuvwxyz012345"));
	ck_assert(!vmf_valid_pool_name("abcdefghijklmnopqrstuvwxyz0123456"));
	ck_assert(!vmf_valid_pool_name(""));
	ck_assert(!vmf_valid_pool_name(NULL));
	ck_assert(!vmf_valid_pool_name("../x"));
	ck_assert(!vmf_valid_pool_name("a b"));
	ck_assert(!vmf_valid_pool_name("a\nb"));
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("pool");
	TCase *tc = tcase_create("policy");
	tcase_add_test(tc, fill_respects_target_and_parallelism);
	tcase_add_test(tc, template_record_lives_until_the_last_reference);
	tcase_add_test(tc, failures_back_off_exponentially);
	tcase_add_test(tc, idle_expiry_and_latency);
	tcase_add_test(tc, choose_by_size_or_by_name);
	tcase_add_test(tc, pool_names);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
