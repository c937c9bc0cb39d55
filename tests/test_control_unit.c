/* The control socket's parts that need no daemon: the peer check's
 * membership cache (factory/peercache.c), what the loop decides without
 * calling NSS; and the config keys of the connection limits. */
#include <errno.h>
#include <string.h>

#include "config.h"
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

START_TEST(limit_keys_parse_and_default)
{
	struct vmf_config c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_config_parse(&c, "t.conf", "", 0, &e), 0);
	ck_assert_uint_eq(c.opts.max_connections, 0);   /* from the open file limit */
	ck_assert_uint_eq(c.opts.idle_timeout_s, 60);
	ck_assert_uint_eq(c.opts.frame_timeout_s, 10);
	vmf_config_free(&c);
	const char *good = "[daemon]\nmax_connections = 200\nidle_timeout = 2m\nframe_timeout = 5\n";
	ck_assert_int_eq(vmf_config_parse(&c, "t.conf", good, strlen(good), &e), 0);
	ck_assert_uint_eq(c.opts.max_connections, 200);
	ck_assert_uint_eq(c.opts.idle_timeout_s, 120);
	ck_assert_uint_eq(c.opts.frame_timeout_s, 5);
	vmf_config_free(&c);
	const char *bad = "[daemon]\nmax_connections = 0\nidle_timeout = 0\nframe_timeout = 2h\n";
	ck_assert_int_eq(vmf_config_parse(&c, "t.conf", bad, strlen(bad), &e), -EINVAL);
	ck_assert_str_eq(c.errors, "t.conf:2: max_connections: 0 is too small (at least 1)\n"
			 "t.conf:3: idle_timeout: 0 is too small (at least 1)\n"
			 "t.conf:4: frame_timeout: 7200 is too large (at most 3600)\n");
	vmf_config_free(&c);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("control_unit");
	TCase *tc = tcase_create("control_unit");
	tcase_add_test(tc, limit_keys_parse_and_default);
	tcase_add_test(tc, answers_expire_after_the_ttl);
	tcase_add_test(tc, full_cache_keeps_lookups_in_flight);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
