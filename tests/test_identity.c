/* Each clone's own identity, end to end (real QEMU under TCG): its RNG
 * reseeded and a fresh boot id (and machine id, where the image has one)
 * given while the pool warms it up, nothing of that left on the hand-out
 * path of a pool hit; its hostname (the sandbox id) and clock set in the
 * round trip of the resume.  A miss (a clone made for the request) gets
 * the same on its own path.  The clock check here is the ±1 s the daemon
 * enforces; the ≤ 5 ms target is the benchmark's (contrib/bench). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"

static const char *
str(json_object *o, const char *a, const char *b)
{
	return json_object_get_string(path(o, a, b));
}

/* The identity of a handed-out VM as the GetVM reply and inspect (which
 * asks the guest's agent) show it. */
static void
check_handed_out(const struct got *g, const char *sandbox, json_object **inspect)
{
	ck_assert_int_eq(g->rc, 0);
	ck_assert_uint_eq(strlen(str(g->rec, "boot_id", NULL)), 36);
	ck_assert_str_eq(str(g->rec, "hostname", NULL), sandbox);
	double err = json_object_get_double(path(g->rec, "clock_error_ms", NULL));
	printf("%s: boot id %s, machine id '%s', clock error %.3f ms\n", sandbox, str(g->rec, "boot_id", NULL),
	       str(g->rec, "machine_id", NULL), err);
	ck_assert_msg(err >= 0 && err < 1000, "clock error %.3f ms", err);
	json_object *i = vmf_json("inspect %s -o json", g->id);
	ck_assert_str_eq(str(i, "guest", "hostname"), sandbox);
	ck_assert_str_eq(str(i, "guest", "boot_id"), str(g->rec, "boot_id", NULL));
	ck_assert_str_eq(str(i, "guest", "machine_id"), str(g->rec, "machine_id", NULL));
	ck_assert_str_eq(str(i, "vm", "hostname"), sandbox);
	*inspect = i;
}

/* Two clones' identities differ in every field (machine ids only where
 * the image has one: the default busybox image has none, and neither
 * clone gets one). */
static void
check_differ(const struct got *a, const struct got *b, json_object *ia, json_object *ib)
{
	ck_assert_str_ne(str(a->rec, "boot_id", NULL), str(b->rec, "boot_id", NULL));
	ck_assert_str_ne(str(a->rec, "hostname", NULL), str(b->rec, "hostname", NULL));
	ck_assert_str_ne(str(ia, "guest", "random_hex"), str(ib, "guest", "random_hex"));
	const char *ma = str(a->rec, "machine_id", NULL), *mb = str(b->rec, "machine_id", NULL);
	ck_assert_int_eq(!*ma, !*mb);
	if (*ma)
		ck_assert_str_ne(ma, mb);
}

static double
step_p99(json_object *status, const char *name)
{
	json_object *steps = path(path(status, "latency", NULL), "steps", NULL);
	for (size_t i = 0; i < json_object_array_length(steps); i++) {
		json_object *s = json_object_array_get_idx(steps, i);
		if (!strcmp(str(s, "step", NULL), name))
			return json_object_get_double(path(s, "p99_ms", NULL));
	}
	ck_abort_msg("status has no step %s", name);
	return 0;
}

START_TEST(pooled_clones_get_their_identity_at_warm_up)
{
	ck_assert_int_eq(vmf(NULL, "init --pool 2 --wait"), 0);
	/* Warm-up gave each pooled clone its identity before any hand-out. */
	json_object *s = vmf_json("status -o json%s", "");
	json_object *vms = path(s, "vms", NULL);
	ck_assert_int_eq(json_object_array_length(vms), 2);
	char warm[2][64];
	for (int i = 0; i < 2; i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		ck_assert_str_eq(str(v, "state", NULL), "ready");
		ck_assert_uint_eq(strlen(str(v, "boot_id", NULL)), 36);
		ck_assert_str_eq(str(v, "hostname", NULL), "");
		snprintf(warm[i], sizeof warm[i], "%s", str(v, "boot_id", NULL));
	}
	ck_assert_str_ne(warm[0], warm[1]);
	json_object_put(s);

	struct got a = {0}, b = {0};
	json_object *ia, *ib;
	do_get(&a, "ident-a", 1, 256);
	do_get(&b, "ident-b", 1, 256);
	check_handed_out(&a, "ident-a", &ia);
	check_handed_out(&b, "ident-b", &ib);
	check_differ(&a, &b, ia, ib);
	/* The hand-out keeps the identity warm-up gave. */
	for (int k = 0; k < 2; k++) {
		const char *id = str((k ? &b : &a)->rec, "boot_id", NULL);
		ck_assert(!strcmp(id, warm[0]) || !strcmp(id, warm[1]));
	}
	/* Both were hits, and a hit does not reseed: the step ran in neither
	 * (it took 2-15 ms under TCG when it did). */
	s = vmf_json("status -o json%s", "");
	ck_assert_int_eq(json_object_get_int(path(s, "counters", "hits")), 2);
	double reseed = step_p99(s, "reseed");
	ck_assert_msg(reseed < 0.5, "the reseed step took %.3f ms on a pool hit", reseed);
	json_object_put(s);
	json_object_put(ia);
	json_object_put(ib);
	json_object_put(a.rec);
	json_object_put(b.rec);
	ck_assert_int_eq(vmf(NULL, "release %s", a.id), 0);
	ck_assert_int_eq(vmf(NULL, "release %s", b.id), 0);
}
END_TEST

START_TEST(a_miss_gets_a_fresh_identity_on_its_own_path)
{
	/* No pool: every hand-out clones, connects and reseeds on its path. */
	ck_assert_int_eq(vmf(NULL, "init --pool 0 --wait"), 0);
	struct got a = {0}, b = {0};
	json_object *ia, *ib;
	do_get(&a, "miss-a", 1, 256);
	do_get(&b, "miss-b", 1, 256);
	check_handed_out(&a, "miss-a", &ia);
	check_handed_out(&b, "miss-b", &ib);
	check_differ(&a, &b, ia, ib);
	json_object *s = vmf_json("status -o json%s", "");
	ck_assert_int_eq(json_object_get_int(path(s, "counters", "misses")), 2);
	ck_assert_msg(step_p99(s, "reseed") > 0, "a miss reported no reseed step");
	json_object_put(s);
	json_object_put(ia);
	json_object_put(ib);
	json_object_put(a.rec);
	json_object_put(b.rec);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("identity");
	TCase *tc = tcase_create("identity");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 900);
	ADD_TEST(tc, pooled_clones_get_their_identity_at_warm_up);
	ADD_TEST(tc, a_miss_gets_a_fresh_identity_on_its_own_path);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
