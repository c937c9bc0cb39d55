/* The peer check's membership cache (factory/peercache.c): what the loop
 * decides without calling NSS. */
#include "peercache.h"
#include "testlib.h"

START_TEST(answers_expire_after_the_ttl)
{
	struct vmf_peer_cache c;
	vmf_peer_cache_init(&c, 1000);
	ck_assert_int_eq(vmf_peer_cache_get(&c, 1001, 0), VMF_PEER_UNKNOWN);
	ck_assert(vmf_peer_cache_begin(&c, 1001, 0));
	/* A second connection of the same uid waits for the lookup in flight. */
	ck_assert_int_eq(vmf_peer_cache_get(&c, 1001, 5), VMF_PEER_LOOKING_UP);
	/* ...however long it takes: it is not an answer that expires. */
	ck_assert_int_eq(vmf_peer_cache_get(&c, 1001, 50000), VMF_PEER_LOOKING_UP);
	vmf_peer_cache_put(&c, 1001, true, 100);
	ck_assert_int_eq(vmf_peer_cache_get(&c, 1001, 1099), VMF_PEER_ALLOWED);
	ck_assert_int_eq(vmf_peer_cache_get(&c, 1001, 1100), VMF_PEER_UNKNOWN);
	vmf_peer_cache_put(&c, 1002, false, 100);
	ck_assert_int_eq(vmf_peer_cache_get(&c, 1002, 500), VMF_PEER_DENIED);
	ck_assert_int_eq(vmf_peer_cache_get(&c, 1003, 500), VMF_PEER_UNKNOWN);
	/* A fresh answer replaces an old one: removal from the group counts. */
	vmf_peer_cache_put(&c, 1001, false, 2000);
	ck_assert_int_eq(vmf_peer_cache_get(&c, 1001, 2001), VMF_PEER_DENIED);
}
END_TEST

START_TEST(full_cache_keeps_lookups_in_flight)
{
	struct vmf_peer_cache c;
	vmf_peer_cache_init(&c, 60000);
	/* Every slot but one holds a lookup in flight, the last an answer. */
	for (uid_t u = 0; u < VMF_PEER_CACHE_SLOTS - 1; u++)
		ck_assert(vmf_peer_cache_begin(&c, 2000 + u, u));
	vmf_peer_cache_put(&c, 5000, true, 0);
	/* A new uid takes the answer's slot, never one in flight. */
	ck_assert(vmf_peer_cache_begin(&c, 6000, 100));
	ck_assert_int_eq(vmf_peer_cache_get(&c, 5000, 100), VMF_PEER_UNKNOWN);
	for (uid_t u = 0; u < VMF_PEER_CACHE_SLOTS - 1; u++)
		ck_assert_int_eq(vmf_peer_cache_get(&c, 2000 + u, 100), VMF_PEER_LOOKING_UP);
	/* All in flight: no slot; the caller looks up uncached. */
	ck_assert(!vmf_peer_cache_begin(&c, 7000, 100));
	/* Its answer finds no slot either, and is simply not kept. */
	vmf_peer_cache_put(&c, 7000, true, 100);
	ck_assert_int_eq(vmf_peer_cache_get(&c, 7000, 100), VMF_PEER_UNKNOWN);
	/* Once answers come in, the least recently used one makes room. */
	vmf_peer_cache_put(&c, 2000, true, 200);
	vmf_peer_cache_put(&c, 2001, true, 300);
	ck_assert_int_eq(vmf_peer_cache_get(&c, 2001, 400), VMF_PEER_ALLOWED);
	ck_assert(vmf_peer_cache_begin(&c, 7000, 500));
	ck_assert_int_eq(vmf_peer_cache_get(&c, 2000, 500), VMF_PEER_UNKNOWN);
	ck_assert_int_eq(vmf_peer_cache_get(&c, 2001, 500), VMF_PEER_ALLOWED);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("peer_cache");
	TCase *tc = tcase_create("peer_cache");
	tcase_add_test(tc, answers_expire_after_the_ttl);
	tcase_add_test(tc, full_cache_keeps_lookups_in_flight);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
