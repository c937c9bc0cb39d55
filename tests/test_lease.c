/* Leases end to end (real QEMU under TCG, one daemon with a pool of 1 and
 * max_ttl = 600, one template for the program): a tenant's GetVM with a
 * ttl shows its lease in status; a lease past max_ttl is refused naming
 * the key; another tenant cannot lease the VM; a Lease request moves the
 * deadline, and its end releases the VM; a lease that says suspend
 * suspends it (the suspended VM holds none and takes a new one at resume);
 * across a daemon killed and started again a pending lease still ends its
 * VM, and one that ran out while no daemon ran ends its VM at the start.
 *
 * The tenant users and group (vlse<pid>{a,b,g}) are made by main() and
 * removed before it returns; without root the program exits 77. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemonlib.h"
#include "testlib.h"
#include "util.h"

/* VM id's lease in status: its deadline (0: none) and action. */
static int64_t
lease_of(const char *id, char *action, size_t n)
{
	int64_t deadline = -1;
	json_object *s = vmf_json("status -o json%s", "");
	json_object *vms = path(s, "vms", NULL);
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i), *l;
		if (strcmp(json_object_get_string(path(v, "id", NULL)), id) != 0)
			continue;
		deadline = 0;
		if (action)
			action[0] = '\0';
		if (json_object_object_get_ex(v, "lease", &l)) {
			deadline = json_object_get_int64(path(l, "deadline_ns", NULL));
			if (action)
				snprintf(action, n, "%s", json_object_get_string(path(l, "on_expiry", NULL)));
		}
	}
	json_object_put(s);
	ck_assert_msg(deadline >= 0, "VM %s is not in status", id);
	return deadline;
}

/* The deadline is ttl seconds from about now (the call's time, give or
 * take what a loaded machine adds). */
static void
expect_lease(const char *id, int ttl, const char *want_action)
{
	char action[32];
	int64_t d = lease_of(id, action, sizeof action), left = (d - vmf_realtime_ns()) / 1000000000;
	ck_assert_msg(d > 0, "VM %s has no lease", id);
	ck_assert_msg(left <= ttl && left >= ttl - 60, "VM %s's lease ends in %lld s, not about %d s", id,
		      (long long)left, ttl);
	ck_assert_msg(!strcmp(action, want_action), "VM %s's lease says %s, not %s", id, action, want_action);
}

/* A root GetVM through the CLI with extra options. */
static void
get_leased(struct got *g, const char *name, const char *extra)
{
	snprintf(g->share, sizeof g->share, "%s/%s-share", tmp, name);
	snprintf(g->sockd, sizeof g->sockd, "%s/%s-sock", tmp, name);
	char *out = NULL;
	g->rc = vmf(&out, "get --cpus 1 --memory 256 --sandbox %s --share-dir %s --sock-dir %s --timeout 120 %s -o json",
		    name, g->share, g->sockd, extra);
	ck_assert_msg(g->rc == 0, "get %s: %s", extra, cli_stderr());
	g->rec = json_tokener_parse(out);
	free(out);
	ck_assert_ptr_nonnull(g->rec);
	snprintf(g->id, sizeof g->id, "%s", json_object_get_string(path(g->rec, "id", NULL)));
}

struct lease_arg {
	const char *id;
	unsigned ttl_s;
};

static int
req_lease(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e)
{
	(void)out, (void)n;
	const struct lease_arg *l = arg;
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_lease(c, l->id, l->ttl_s, "release", &r, 60000, e);
	if (r)
		vmf__control__reply__free_unpacked(r, NULL);
	return rc;
}

static void
wait_released(const char *id, int ms)
{
	wait_until(!*vm_listed_state(id), ms, "VM %s is still listed (%s) after its lease ran out", id,
		   vm_listed_state(id));
}

static void
start(const char *conf)
{
	char extra[800];
	snprintf(extra, sizeof extra, "--config %s", conf);
	start_tenant_daemon(extra);
}

START_TEST(leases_end_vms_across_restarts_and_stay_their_owners)
{
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	char conf[700];
	snprintf(conf, sizeof conf, "%s/lease.conf", tmp);
	FILE *f = fopen(conf, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "[daemon]\nmax_ttl = 10m\n");
	ck_assert_int_eq(fclose(f), 0);
	start(conf);

	/* ---- a tenant's lease, max_ttl, another tenant ---- */
	char a_dir[700], share[800], sockd[800], msg[1100];
	tenant_dir(tu.a, tu.uid_a, a_dir, sizeof a_dir);
	snprintf(share, sizeof share, "%s/share", a_dir);
	snprintf(sockd, sizeof sockd, "%s/sock", a_dir);
	Vmf__Control__GetVMRequest req = VMF__CONTROL__GET_VMREQUEST__INIT;
	req.vcpus = 1;
	req.memory_mib = 256;
	req.sandbox_id = "lease-a";
	req.share_dir = share;
	req.sock_dir = sockd;
	req.timeout_ms = 120000;
	req.ttl_s = 601;
	int rc = call_as(tu.uid_a, req_get, &req, msg, sizeof msg);
	assert_refused(rc, msg, EINVAL, "601 s|max_ttl = 600", "a tenant's GetVM with a lease past max_ttl");
	req.ttl_s = 600;
	rc = call_as(tu.uid_a, req_get, &req, msg, sizeof msg);
	ck_assert_msg(rc == 0, "a tenant's GetVM with a lease: %s", msg);
	char a1[64];
	snprintf(a1, sizeof a1, "%.*s", (int)strcspn(msg, " "), msg);
	expect_lease(a1, 600, "release");
	struct lease_arg la = { a1, 5 };
	rc = call_as(tu.uid_b, req_lease, &la, msg, sizeof msg);
	assert_refused(rc, msg, EACCES, "not yours", "another tenant's lease of the VM");
	expect_lease(a1, 600, "release");
	la.ttl_s = 700;
	rc = call_as(tu.uid_a, req_lease, &la, msg, sizeof msg);
	assert_refused(rc, msg, EINVAL, "700 s|max_ttl", "a lease past max_ttl");
	vmf_refused("neither release nor suspend", "lease %s --ttl 5 --on-expiry pause", a1);
	/* The owner moves the deadline: later, then in a few seconds, and the
	 * VM goes when it comes. */
	la.ttl_s = 500;
	rc = call_as(tu.uid_a, req_lease, &la, msg, sizeof msg);
	ck_assert_msg(rc == 0, "the owner's lease: %s", msg);
	expect_lease(a1, 500, "release");
	la.ttl_s = 3;
	rc = call_as(tu.uid_a, req_lease, &la, msg, sizeof msg);
	ck_assert_msg(rc == 0, "the owner's lease: %s", msg);
	ck_assert_str_eq(vm_listed_state(a1), "assigned");
	wait_released(a1, 60000);

	/* ---- suspend at the end; a suspended VM holds no lease; resume takes one ---- */
	struct got s = {0};
	get_leased(&s, "lease-s", "--ttl 3 --on-expiry suspend");
	expect_lease(s.id, 3, "suspend");
	wait_until(!strcmp(vm_listed_state(s.id), "suspended"), 120000, "VM %s is %s, not suspended at its lease's end",
		   s.id, vm_listed_state(s.id));
	ck_assert_int_eq(lease_of(s.id, NULL, 0), 0);
	vmf_refused("not assigned|resumes", "lease %s --ttl 30", s.id);
	ck_assert_msg(vmf(NULL, "resume %s --ttl 500", s.id) == 0, "resume with a lease: %s", cli_stderr());
	expect_lease(s.id, 500, "release");
	json_object_put(s.rec);

	/* ---- restarts: a lease pending across one, one that ran out meanwhile ---- */
	ck_assert_msg(vmf(NULL, "lease %s --ttl 25", s.id) == 0, "lease: %s", cli_stderr());
	struct got d = {0}, keep = {0};
	get_leased(&d, "lease-d", "--ttl 2");
	get_leased(&keep, "lease-k", "");
	ck_assert_int_eq(lease_of(keep.id, NULL, 0), 0);
	int64_t pending = lease_of(s.id, NULL, 0), due = lease_of(d.id, NULL, 0);
	kill_daemon_hard();
	/* Another daemon than one that kept on ticking: d's lease ends while
	 * none runs. */
	wait_until(vmf_realtime_ns() > due + 1000000000, 30000, "the clock did not pass VM %s's lease", d.id);
	start(conf);
	wait_released(d.id, 60000);
	ck_assert_msg(*vm_listed_state(s.id), "VM %s went before its lease's end", s.id);
	ck_assert_msg(lease_of(s.id, NULL, 0) == pending, "VM %s's lease changed across the restart", s.id);
	wait_released(s.id, 120000);
	ck_assert_msg(vmf_realtime_ns() >= pending, "VM %s went before its lease's end", s.id);
	ck_assert_str_eq(vm_listed_state(keep.id), "assigned");
	ck_assert_int_eq(vmf(NULL, "release %s", keep.id), 0);
	json_object_put(d.rec);
	json_object_put(keep.rec);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

int
main(void)
{
	const char *why = tenant_users_make("vlse");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("lease tests: %s", why);
	}
	Suite *s = suite_create("lease");
	TCase *tc = tcase_create("lease");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 900);
	ADD_TEST(tc, leases_end_vms_across_restarts_and_stay_their_owners);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
