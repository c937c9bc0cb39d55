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

/* A pool a GetVM made of a tenant's snapshot (named after it) is reached
 * through the template by its owner, never by name, and named in no
 * error another tenant reads. */
START_TEST(a_snapshot_pool_made_on_demand_is_nobody_elses)
{
	static struct choice_pools c;
	TAILQ_INIT(&c.list);
	struct vmf_error err = {0};
	choice_pool(&c, 0, "tpl-of-a", 1, 256, 4, 2048, false);
	snprintf(c.p[0].template_name, sizeof(c.p[0].template_name), "tpl-of-a");
	c.p[0].on_demand = true;
	c.p[0].template_owner = 1001;
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "tpl-of-a", 1, 256, &err));
	ck_assert_str_eq(err.msg, "no pool named 'tpl-of-a' in this daemon (pools: none)");
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "", 1, 256, &err));
	ck_assert_str_eq(err.msg, "this daemon has no pool");
	choice_pool(&c, 1, "shared", 1, 256, 2, 512, false);
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "tpl-of-a", 1, 256, &err));
	ck_assert_int_eq(err.code, ENOENT);
	ck_assert_str_eq(err.msg, "no pool named 'tpl-of-a' in this daemon (pools: shared)");
	ck_assert_ptr_eq(vmf_pool_choose(&c.list, "", 1, 256, &err), &c.p[1]);
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "", 4, 2048, &err));
	ck_assert_str_eq(err.msg, "no pool serves 4 vCPUs and 2048 MiB: the template allows 1-2 vCPUs and "
				  "256-512 MiB");
	choice_pool(&c, 2, "big", 2, 1024, 2, 1024, false);
	ck_assert_ptr_null(vmf_pool_choose(&c.list, "", 4, 2048, &err));
	ck_assert_msg(!strstr(err.msg, "tpl-of-a"), "%s", err.msg);
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

/* ---- demand shaping ---- */

static Vmf__Catalog__TemplateSpec shape_spec = VMF__CATALOG__TEMPLATE_SPEC__INIT;

/* A pool of base 1 vCPU / 256 MiB, max 4 / 1280, size target. */
static void
shape_pool(struct vmf_pool *p, unsigned target, unsigned max, unsigned mem)
{
	memset(p, 0, sizeof(*p));
	shape_spec.vcpus = 1;
	shape_spec.memory_mib = 256;
	shape_spec.max_vcpus = 4;
	shape_spec.max_memory_mib = 1280;
	p->spec = &shape_spec;
	p->target = target;
	p->shape.enabled = true;
	p->shape.max = max;
	p->shape.memory_mib = mem;
}

static double
demand_of(const struct vmf_pool *p, unsigned v, unsigned m)
{
	for (unsigned i = 0; i < p->shape.n; i++)
		if (p->shape.sizes[i].vcpus == v && p->shape.sizes[i].memory_mib == m)
			return p->shape.sizes[i].demand;
	return 0;
}

static void
ask(struct vmf_pool *p, unsigned n, unsigned v, unsigned m)
{
	for (unsigned i = 0; i < n; i++)
		vmf_shape_note_request(&p->shape, v, m);
}

START_TEST(shape_demand_decays_by_half_every_half_life)
{
	struct vmf_pool p;
	shape_pool(&p, 4, 2, 4096);
	ask(&p, 1, 2, 512);
	ck_assert_double_eq_tol(demand_of(&p, 2, 512), 1.0, 1e-9);
	ask(&p, VMF_SHAPE_HALF_LIFE, 1, 256);
	ck_assert_double_eq_tol(demand_of(&p, 2, 512), 0.5, 1e-6);
	ask(&p, VMF_SHAPE_HALF_LIFE, 1, 256);
	ck_assert_double_eq_tol(demand_of(&p, 2, 512), 0.25, 1e-6);
	/* A full table gives up its least wanted size; its hand-outs go to other. */
	vmf_shape_note_handout(&p.shape, 2, 512, VMF_HANDOUT_RESIZE);
	for (unsigned i = 0; i < VMF_SHAPE_SIZES - 1; i++)
		ask(&p, 1, 1, 384 + 128 * i);
	ck_assert_uint_eq(p.shape.n, VMF_SHAPE_SIZES);
	ck_assert_double_eq_tol(demand_of(&p, 2, 512), 0, 1e-12);
	ck_assert_uint_eq(p.shape.other[VMF_HANDOUT_RESIZE], 1);
}
END_TEST

START_TEST(shape_plan_follows_the_mix_within_cap_and_budget)
{
	struct vmf_pool p;
	struct vmf_shape_want w[VMF_SHAPE_SIZES];
	shape_pool(&p, 4, 2, 4096);
	/* Nothing asked above base: nothing shaped. */
	ask(&p, 20, 1, 256);
	ck_assert_uint_eq(vmf_shape_plan(&p, w, VMF_SHAPE_SIZES), 0);
	/* Two requests are not yet a pattern; three are. */
	ask(&p, 2, 2, 512);
	ck_assert_uint_eq(vmf_shape_plan(&p, w, VMF_SHAPE_SIZES), 0);
	ask(&p, 1, 2, 512);
	ck_assert_uint_eq(vmf_shape_plan(&p, w, VMF_SHAPE_SIZES), 1);
	ck_assert_uint_eq(w[0].vcpus, 2);
	ck_assert_uint_eq(w[0].memory_mib, 512);
	ck_assert_uint_eq(w[0].count, 1);
	/* 70% base, 20% +1/+256, 10% +3/+768 of a pool of 4: one of each
	 * larger size (their shares rounded up), the more wanted first. */
	shape_pool(&p, 4, 2, 4096);
	for (int r = 0; r < 10; r++) {
		ask(&p, 7, 1, 256);
		ask(&p, 2, 2, 512);
		ask(&p, 1, 4, 1024);
	}
	ck_assert_uint_eq(vmf_shape_plan(&p, w, VMF_SHAPE_SIZES), 2);
	ck_assert(w[0].vcpus == 2 && w[0].memory_mib == 512 && w[0].count == 1);
	ck_assert(w[1].vcpus == 4 && w[1].memory_mib == 1024 && w[1].count == 1);
	/* shape_max caps the count; the memory budget the larger size. */
	p.shape.max = 1;
	ck_assert_uint_eq(vmf_shape_plan(&p, w, VMF_SHAPE_SIZES), 1);
	p.shape.max = 2;
	p.shape.memory_mib = 512;
	ck_assert_uint_eq(vmf_shape_plan(&p, w, VMF_SHAPE_SIZES), 1);
	ck_assert_uint_eq(w[0].memory_mib, 512);
	p.shape.memory_mib = 255;
	ck_assert_uint_eq(vmf_shape_plan(&p, w, VMF_SHAPE_SIZES), 0);
	/* A vCPU-only size costs no budget. */
	ask(&p, 40, 3, 256);
	ck_assert_uint_ge(vmf_shape_plan(&p, w, VMF_SHAPE_SIZES), 1);
	ck_assert(w[0].vcpus == 3 && w[0].memory_mib == 256);
	/* Off: nothing. */
	p.shape.enabled = false;
	ck_assert_uint_eq(vmf_shape_plan(&p, w, VMF_SHAPE_SIZES), 0);
}
END_TEST

static struct vmf_vm *
add_vm(struct vmf_vm_list *l, struct vmf_pool *p, enum vmf_vm_state st, unsigned v, unsigned m)
{
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	ck_assert_ptr_nonnull(vm);
	vm->pool = p;
	vm->state = st;
	if (st == VMF_VM_CREATING) {
		vm->vcpus = p->spec->vcpus;
		vm->memory_mib = p->spec->memory_mib;
		if (v != p->spec->vcpus || m != p->spec->memory_mib)
			vm->shape_vcpus = v, vm->shape_mib = m;
	} else {
		vm->vcpus = v;
		vm->memory_mib = m;
	}
	TAILQ_INSERT_TAIL(l, vm, link);
	return vm;
}

static void
free_vms(struct vmf_vm_list *l)
{
	struct vmf_vm *vm;
	while ((vm = TAILQ_FIRST(l))) {
		TAILQ_REMOVE(l, vm, link);
		free(vm);
	}
}

START_TEST(shape_next_clone_fills_the_plan_within_cap_and_budget)
{
	struct vmf_pool p;
	struct vmf_vm_list l = TAILQ_HEAD_INITIALIZER(l);
	TAILQ_INIT(&l);
	unsigned v = 0, m = 0;
	shape_pool(&p, 4, 2, 4096);
	ck_assert(!vmf_pool_next_shape(&p, &l, 0, &v, &m));
	for (int r = 0; r < 10; r++) {
		ask(&p, 7, 1, 256);
		ask(&p, 2, 2, 512);
		ask(&p, 1, 4, 1024);
	}
	ck_assert(vmf_pool_next_shape(&p, &l, 0, &v, &m));
	ck_assert(v == 2 && m == 512);
	/* One of that size filling: the next wanted is the larger one. */
	add_vm(&l, &p, VMF_VM_CREATING, 2, 512);
	ck_assert(vmf_pool_next_shape(&p, &l, 0, &v, &m));
	ck_assert(v == 4 && m == 1024);
	add_vm(&l, &p, VMF_VM_READY, 4, 1024);
	/* The plan is met: base clones from here on. */
	ck_assert(!vmf_pool_next_shape(&p, &l, 0, &v, &m));
	free_vms(&l);
	/* A shaped clone the plan no longer wants still counts against shape_max. */
	add_vm(&l, &p, VMF_VM_READY, 3, 256);
	p.shape.max = 1;
	ck_assert(!vmf_pool_next_shape(&p, &l, 0, &v, &m));
	/* ... and against the budget. */
	free_vms(&l);
	p.shape.max = 2;
	p.shape.memory_mib = 1000;
	add_vm(&l, &p, VMF_VM_READY, 1, 1024);   /* 768 MiB above base */
	ck_assert(!vmf_pool_next_shape(&p, &l, 0, &v, &m));
	/* After a failed shaping, base clones until retry_at. */
	free_vms(&l);
	p.shape.memory_mib = 4096;
	p.shape.retry_at_ms = 1000;
	ck_assert(!vmf_pool_next_shape(&p, &l, 999, &v, &m));
	ck_assert(vmf_pool_next_shape(&p, &l, 1000, &v, &m));
	free_vms(&l);
}
END_TEST

START_TEST(shape_pick_prefers_exact_then_no_hot_add_never_smaller)
{
	struct vmf_pool p, other;
	struct vmf_vm_list l = TAILQ_HEAD_INITIALIZER(l);
	TAILQ_INIT(&l);
	enum vmf_handout_kind k;
	shape_pool(&p, 4, 2, 4096);
	shape_pool(&other, 4, 2, 4096);
	ck_assert_ptr_null(vmf_pool_pick(&p, &l, 1, 256, &k));
	ck_assert_int_eq(k, VMF_HANDOUT_MISS);
	add_vm(&l, &other, VMF_VM_READY, 2, 512);          /* another pool's */
	struct vmf_vm *base = add_vm(&l, &p, VMF_VM_READY, 1, 256);
	struct vmf_vm *big = add_vm(&l, &p, VMF_VM_READY, 4, 1024);
	struct vmf_vm *two = add_vm(&l, &p, VMF_VM_READY, 2, 512);
	add_vm(&l, &p, VMF_VM_CREATING, 2, 512);            /* not ready */
	ck_assert_ptr_eq(vmf_pool_pick(&p, &l, 1, 256, &k), base);
	ck_assert_int_eq(k, VMF_HANDOUT_BASE);
	ck_assert_ptr_eq(vmf_pool_pick(&p, &l, 2, 512, &k), two);
	ck_assert_int_eq(k, VMF_HANDOUT_SHAPED);
	/* No exact one: the smallest that needs no hot-add. */
	ck_assert_ptr_eq(vmf_pool_pick(&p, &l, 2, 384, &k), two);
	ck_assert_int_eq(k, VMF_HANDOUT_SHAPED);
	two->busy = true;
	ck_assert_ptr_eq(vmf_pool_pick(&p, &l, 2, 512, &k), big);
	ck_assert_int_eq(k, VMF_HANDOUT_SHAPED);
	/* A base request with no base clone left gets a larger one, not a miss. */
	base->dead = true;
	ck_assert_ptr_eq(vmf_pool_pick(&p, &l, 1, 256, &k), big);
	ck_assert_int_eq(k, VMF_HANDOUT_SHAPED);
	/* Larger than any: the one with least to hot-add. */
	two->busy = false;
	ck_assert_ptr_eq(vmf_pool_pick(&p, &l, 4, 1280, &k), big);
	ck_assert_int_eq(k, VMF_HANDOUT_RESIZE);
	big->state = VMF_VM_HANDING_OUT;
	ck_assert_ptr_eq(vmf_pool_pick(&p, &l, 3, 512, &k), two);
	ck_assert_int_eq(k, VMF_HANDOUT_RESIZE);
	/* Never one with more of one and less of the other when a fitting
	 * one exists; and a pick never serves fewer than asked without hot-add. */
	struct vmf_vm *wide = add_vm(&l, &p, VMF_VM_READY, 3, 256);
	ck_assert_ptr_eq(vmf_pool_pick(&p, &l, 2, 512, &k), two);
	two->busy = true;
	struct vmf_vm *got = vmf_pool_pick(&p, &l, 2, 512, &k);
	ck_assert_ptr_eq(got, wide);
	ck_assert_int_eq(k, VMF_HANDOUT_RESIZE);
	free_vms(&l);
}
END_TEST

START_TEST(shape_stale_clones_are_replaced_once_unwanted)
{
	struct vmf_pool p;
	struct vmf_vm_list l = TAILQ_HEAD_INITIALIZER(l);
	TAILQ_INIT(&l);
	shape_pool(&p, 2, 1, 4096);
	ask(&p, 4, 2, 512);
	struct vmf_vm *s = add_vm(&l, &p, VMF_VM_READY, 2, 512);
	add_vm(&l, &p, VMF_VM_READY, 1, 256);
	s->ready_mono_ms = 0;
	/* Wanted: kept. */
	ck_assert_ptr_null(vmf_pool_stale_shaped(&p, &l, VMF_SHAPE_STALE_MS * 10));
	/* Demand moved to the base size: replaced, but only once it has sat
	 * pooled for VMF_SHAPE_STALE_MS (a burst does not churn clones). */
	ask(&p, 200, 1, 256);
	ck_assert_ptr_null(vmf_pool_stale_shaped(&p, &l, VMF_SHAPE_STALE_MS - 1));
	ck_assert_ptr_eq(vmf_pool_stale_shaped(&p, &l, VMF_SHAPE_STALE_MS), s);
	/* Shaping off: shaped clones go too. */
	ask(&p, 4, 2, 512);
	p.shape.enabled = false;
	ck_assert_ptr_eq(vmf_pool_stale_shaped(&p, &l, VMF_SHAPE_STALE_MS), s);
	free_vms(&l);
}
END_TEST

/* A queue's waiters are served round-robin across uids, in arrival
 * order within one: a uid's burst does not make another's request wait
 * behind all of it. */
START_TEST(queue_serves_uids_in_turn)
{
	struct vmf_pool p = {0};
	const uid_t arrivals[] = { 1, 1, 1, 2, 3, 3, 1 };
	enum { N = sizeof(arrivals) / sizeof(arrivals[0]) };
	struct vmf_waiter w[N];
	memset(w, 0, sizeof(w));
	ck_assert_ptr_null(vmf_pool_next_waiter(&p));
	for (int i = 0; i < N; i++) {
		w[i].uid = arrivals[i];
		vmf_pool_waiter_add(&p, &w[i]);
	}
	ck_assert_uint_eq(p.queued, N);
	ck_assert_uint_eq(vmf_pool_queued_by(&p, 1), 4);
	ck_assert_uint_eq(vmf_pool_queued_by(&p, 3), 2);
	/* uid 1's first, then 2's and 3's before 1's second. */
	const int want[] = { 0, 3, 4, 1, 5, 2, 6 };
	for (int k = 0; k < N; k++) {
		struct vmf_waiter *n = vmf_pool_next_waiter(&p);
		ck_assert_msg(n == &w[want[k]], "turn %d went to waiter %d (uid %u), not %d", k, (int)(n - w),
			      (unsigned)n->uid, want[k]);
		vmf_pool_waiter_remove(&p, n, true);
	}
	ck_assert_uint_eq(p.queued, 0);
	ck_assert_ptr_null(vmf_pool_next_waiter(&p));
	/* One that leaves unserved takes no turn from its uid. */
	w[0].uid = 1, w[1].uid = 2, w[2].uid = 1;
	vmf_pool_waiter_add(&p, &w[0]);
	vmf_pool_waiter_add(&p, &w[1]);
	vmf_pool_waiter_add(&p, &w[2]);
	vmf_pool_waiter_remove(&p, &w[0], false);
	ck_assert_ptr_eq(vmf_pool_next_waiter(&p), &w[1]);
	vmf_pool_waiter_remove(&p, &w[1], true);
	ck_assert_ptr_eq(vmf_pool_next_waiter(&p), &w[2]);
}
END_TEST

/* The queue deepens the fill, up to the host's bound. */
START_TEST(fill_grows_with_the_queue_within_the_host)
{
	struct vmf_pool p = {0};
	p.target = 8;
	p.parallelism = 2;
	p.tpl = &tpl;
	p.max_parallelism = 6;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 2);
	p.queued = 3;
	ck_assert_uint_eq(vmf_pool_parallelism(&p), 5);
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 5);
	p.queued = 40;
	ck_assert_uint_eq(vmf_pool_parallelism(&p), 6);
	/* A full pool still clones for its waiters. */
	p.ready = 8;
	p.filling = 2;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 4);
	p.queued = 0;
	ck_assert_uint_eq(vmf_pool_clones_to_start(&p, 0), 0);
	/* The bound: configured, else cores, else what memory holds; never
	 * beyond the pool's workers. */
	ck_assert_uint_eq(vmf_pool_clone_cap(3, 16, 0, 512, 7), 3);
	ck_assert_uint_eq(vmf_pool_clone_cap(0, 4, 65536, 512, 7), 4);
	ck_assert_uint_eq(vmf_pool_clone_cap(0, 16, 65536, 512, 7), 7);
	ck_assert_uint_eq(vmf_pool_clone_cap(0, 16, 1024, 512, 7), 2);
	ck_assert_uint_eq(vmf_pool_clone_cap(0, 16, 100, 512, 7), 1);
	ck_assert_uint_eq(vmf_pool_clone_cap(0, 0, 0, 512, 7), 1);
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
	tcase_add_test(tc, a_snapshot_pool_made_on_demand_is_nobody_elses);
	tcase_add_test(tc, shape_demand_decays_by_half_every_half_life);
	tcase_add_test(tc, shape_plan_follows_the_mix_within_cap_and_budget);
	tcase_add_test(tc, shape_next_clone_fills_the_plan_within_cap_and_budget);
	tcase_add_test(tc, shape_pick_prefers_exact_then_no_hot_add_never_smaller);
	tcase_add_test(tc, shape_stale_clones_are_replaced_once_unwanted);
	tcase_add_test(tc, queue_serves_uids_in_turn);
	tcase_add_test(tc, fill_grows_with_the_queue_within_the_host);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
