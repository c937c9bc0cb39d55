/* Pool policy: how many clones to start, backoff, idle expiry, quantiles. */
#include <string.h>

#include "pool.h"
#include "testlib.h"

static Vmf__Catalog__TemplateRecord tpl = VMF__CATALOG__TEMPLATE_RECORD__INIT;

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
	struct vmf_pvm vm;
	memset(&vm, 0, sizeof vm);
	vm.state = PVM_READY;
	vm.ready_mono_ms = 1000;
	ck_assert(!vmf_pool_vm_idle_expired(&vm, 0, 1000000));
	ck_assert(!vmf_pool_vm_idle_expired(&vm, 10, 10000));
	ck_assert(vmf_pool_vm_idle_expired(&vm, 10, 11001));
	vm.state = PVM_ASSIGNED;
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

int
main(void)
{
	Suite *s = suite_create("pool");
	TCase *tc = tcase_create("policy");
	tcase_add_test(tc, fill_respects_target_and_parallelism);
	tcase_add_test(tc, failures_back_off_exponentially);
	tcase_add_test(tc, idle_expiry_and_latency);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
