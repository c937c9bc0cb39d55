/* The network request's parser (factory/net.c): what --net accepts, how it
 * normalises forwards (loopback unless an address is given), and the
 * sentences it refuses the rest with; what a tenant may ask for (outbound,
 * forward addresses, forwards in all). */
#include <errno.h>
#include <string.h>

#include "net.h"
#include "testlib.h"

START_TEST(net_parse)
{
	struct vmf_net_request r;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_net_parse("", &r, &e), 0);
	ck_assert(!r.user && !r.none);
	ck_assert_int_eq(vmf_net_parse("none", &r, &e), 0);
	ck_assert(r.none);
	ck_assert_int_eq(vmf_net_parse("user", &r, &e), 0);
	ck_assert(r.user && r.n_hostfwd == 0 && !r.outbound);
	ck_assert_int_eq(vmf_net_parse("user,outbound", &r, &e), 0);
	ck_assert(r.user && r.outbound);
	ck_assert_int_eq(vmf_net_parse("user,hostfwd=tcp::8080-:80,hostfwd=tcp:0.0.0.0:2222-:22", &r, &e), 0);
	ck_assert_uint_eq(r.n_hostfwd, 2);
	ck_assert_str_eq(r.hostfwd[0], "tcp:127.0.0.1:8080-:80");
	ck_assert_str_eq(r.hostfwd[1], "tcp:0.0.0.0:2222-:22");
	const struct {
		const char *in, *msg;
	} bad[] = {
		{ "tap", "is not none or user" },
		{ "users", "is not none or user" },
		{ "user,hostfwd=udp::1-:2", "only tcp" },
		{ "user,hostfwd=tcp::0-:2", "ports 1 to 65535" },
		{ "user,hostfwd=tcp::1-:70000", "ports 1 to 65535" },
		{ "user,hostfwd=tcp:host:1-:2", "not an IPv4 address" },
		{ "user,hostfwd=tcp::1-:2x", "ports 1 to 65535" },
		{ "user,restrict=on", "is not outbound or hostfwd=" },
		{ "user,outbound=yes", "is not outbound or hostfwd=" },
		{ "user,outboundx", "is not outbound or hostfwd=" },
		{ "user,hostfwd=tcp::1-:1,hostfwd=tcp::2-:2,hostfwd=tcp::3-:3,hostfwd=tcp::4-:4,hostfwd=tcp::5-:5,"
		  "hostfwd=tcp::6-:6,hostfwd=tcp::7-:7,hostfwd=tcp::8-:8,hostfwd=tcp::9-:9", "at most 8" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&e, 0, sizeof e);
		ck_assert_msg(vmf_net_parse(bad[i].in, &r, &e) < 0, "'%s' was accepted", bad[i].in);
		ck_assert_msg(strstr(e.msg, bad[i].msg), "'%s': '%s' lacks '%s'", bad[i].in, e.msg, bad[i].msg);
	}
}
END_TEST

START_TEST(tenant_rules)
{
	struct vmf_net_request r;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_net_parse("user,outbound,hostfwd=tcp::8080-:80", &r, &e), 0);
	ck_assert_int_lt(vmf_net_check_tenant(&r, false, "127.0.0.1", 0, 8, &e), 0);
	ck_assert_msg(e.code == EPERM && strstr(e.msg, "user_net_outbound"), "%s", e.msg);
	ck_assert_int_eq(vmf_net_check_tenant(&r, true, "127.0.0.1", 0, 8, &e), 0);
	ck_assert_int_eq(vmf_net_parse("user,hostfwd=tcp:10.1.2.3:8080-:80,hostfwd=tcp::8081-:81", &r, &e), 0);
	ck_assert_int_lt(vmf_net_check_tenant(&r, false, "127.0.0.1", 0, 8, &e), 0);
	ck_assert_msg(e.code == EPERM && strstr(e.msg, "10.1.2.3") && strstr(e.msg, "hostfwd_addresses"), "%s", e.msg);
	ck_assert_int_eq(vmf_net_check_tenant(&r, false, "127.0.0.1,10.1.2.3", 0, 8, &e), 0);
	ck_assert_int_eq(vmf_net_check_tenant(&r, false, "0.0.0.0", 0, 8, &e), 0);
	ck_assert_int_lt(vmf_net_check_tenant(&r, false, "10.1.2.30,127.0.0.10", 0, 8, &e), 0);
	/* Two asked, six held: eight in all is the bound, seven more is not. */
	ck_assert_int_eq(vmf_net_check_tenant(&r, false, "0.0.0.0", 6, 8, &e), 0);
	ck_assert_int_lt(vmf_net_check_tenant(&r, false, "0.0.0.0", 7, 8, &e), 0);
	ck_assert_msg(e.code == E2BIG && strstr(e.msg, "7 held") && strstr(e.msg, "at most 8"), "%s", e.msg);
	ck_assert_int_lt(vmf_net_check_tenant(&r, false, "0.0.0.0", 0, 0, &e), 0);
	ck_assert(vmf_net_valid_addrs("127.0.0.1") && vmf_net_valid_addrs("0.0.0.0,10.0.0.1"));
	ck_assert(!vmf_net_valid_addrs("") && !vmf_net_valid_addrs("a") && !vmf_net_valid_addrs("1.2.3.4,") &&
		  !vmf_net_valid_addrs("1.2.3.4,,5.6.7.8") && !vmf_net_valid_addrs("1.2.3.4.5"));
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("net_unit");
	TCase *t = tcase_create("parse");
	tcase_add_test(t, net_parse);
	tcase_add_test(t, tenant_rules);
	suite_add_tcase(s, t);
	return vmf_test_run(s);
}
