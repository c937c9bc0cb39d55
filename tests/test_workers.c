/* End to end: the daemon's worker jobs against each other.  Clone work is
 * held at fault-injection gates (VMFACTORY_FAULT=gates, files
 * <run>/gate-clone and <run>/gate-miss: how many clones may pass, or
 * "fail"), so that the order under test is forced, not hoped for. */
#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

static void
write_config(char *conf, size_t n, const char *text)
{
	struct vmf_error e = {0};
	snprintf(conf, n, "%s/vmfactory.conf", tmp);
	ck_assert_msg(vmf_write_file_atomic(conf, text, strlen(text), 0600, &e) == 0, "%s", e.msg);
}

/* The first pool's counter key ("ready", "filling", "failed"); -1 when the
 * daemon does not answer. */
static int
pool_count(const char *key)
{
	char *out = NULL;
	if (vmf(&out, "status -o json") != 0) {
		free(out);
		return -1;
	}
	json_object *s = json_tokener_parse(out);
	free(out);
	ck_assert_ptr_nonnull(s);
	json_object *p0 = json_object_array_get_idx(path(s, "pools", NULL), 0);
	int v = json_object_get_int(path(p0, key, NULL));
	json_object_put(s);
	return v;
}

/* False at once when the daemon stops answering. */
static bool
wait_pool_count(const char *key, int want, int ms)
{
	int v;
	poll_until((v = pool_count(key)) < 0 || v >= want, ms);
	return v >= want;
}

struct timed_get {
	struct got g;
	int64_t ms;
	volatile bool done;
};

static void *
timed_get_thread(void *arg)
{
	struct timed_get *t = arg;
	int64_t t0 = vmf_now_ms();
	do_get(&t->g, t->g.id, 1, 256);
	t->ms = vmf_now_ms() - t0;
	__atomic_store_n(&t->done, true, __ATOMIC_RELEASE);
	return NULL;
}

static bool
finished_within(struct timed_get *t, int ms)
{
	poll_until(__atomic_load_n(&t->done, __ATOMIC_ACQUIRE), ms);
	return __atomic_load_n(&t->done, __ATOMIC_ACQUIRE);
}

/* Hits are not held behind clones.  Eight clone jobs held at the gate (as many as the
 * daemon has workers): a GetVM for the ready VM is still served at once,
 * and a second GetVM, a miss, may clone (also held) while a third miss
 * beyond max_miss_clones = 1, with no queue to wait in (max_queue = 0),
 * fails at once with EAGAIN. */
START_TEST(hits_do_not_wait_for_clones_and_misses_are_bounded)
{
	/* One ready VM, adopted by the daemon started next. */
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	kill_daemon_hard();
	char conf[700];
	write_config(conf, sizeof conf, "[daemon]\nfill_parallelism = 8\nmax_miss_clones = 1\nmax_queue = 0\n");
	fault_gate("clone", "0");
	fault_gate("miss", "0");
	fault = "gates";
	ck_assert_int_eq(vmf(NULL, "init --config %s --pool 9", conf), 0);
	fault = NULL;
	ck_assert_msg(wait_pool_count("ready", 1, 60000), "the pooled VM was not adopted");
	ck_assert_msg(wait_pool_count("filling", 8, 60000), "8 clone jobs were not queued");

	struct timed_get hit = { .g.id = "hit" };
	pthread_t th;
	pthread_create(&th, NULL, timed_get_thread, &hit);
	bool served = finished_within(&hit, 60000);
	if (!served) {
		fault_gate("clone", "fail");
		fault_gate("miss", "fail");
	}
	pthread_join(th, NULL);
	printf("GetVM of a ready VM with 8 clone jobs held: %s in %lld ms\n", hit.g.rc == 0 ? "served" : "failed",
	       (long long)hit.ms);
	ck_assert_msg(served, "the GetVM of a ready VM waited behind clone jobs");
	ck_assert_int_eq(hit.g.rc, 0);
	ck_assert_str_eq(json_object_get_string(path(hit.g.rec, "state", NULL)), "assigned");

	/* The pool is empty now: a miss clones, held at its gate... */
	struct timed_get miss = { .g.id = "miss-a" };
	pthread_create(&th, NULL, timed_get_thread, &miss);
	char st[32] = "";
	wait_until((vm_of_sandbox("miss-a", st, sizeof st), !strcmp(st, "handing-out")), 30000,
		   "the miss is '%s', not handing out", st);
	/* ...and a second miss beyond the bound fails at once. */
	struct got over = {0};
	int64_t t0 = vmf_now_ms();
	do_get(&over, "miss-b", 1, 256);
	int64_t over_ms = vmf_now_ms() - t0;
	printf("a miss beyond max_miss_clones: exit %d in %lld ms: %s", over.rc, (long long)over_ms, cli_stderr());
	ck_assert_int_eq(over.rc, 1);
	assert_words(cli_stderr(), "pool default exhausted: no ready VM, no room for a clone on demand|queues no "
		     "request (max_queue = 0)", "a miss beyond max_miss_clones");
	ck_assert_int_lt(over_ms, 10000);
	/* The miss in flight completes once its gate opens; status meanwhile
	 * reads the VM the worker prepares (TSan saw the sizes and the driver
	 * handle written on the worker). */
	fault_gate("miss", "1");
	int statuses = 0;
	struct vmf_wait w = vmf_wait_start(150000);
	while (!finished_within(&miss, 20) && vmf_wait_more(&w)) {
		json_object_put(vmf_json("status -o json%s", ""));
		statuses++;
	}
	printf("status answered %d times while the miss was handed out\n", statuses);
	ck_assert(finished_within(&miss, 0));
	pthread_join(th, NULL);
	printf("the held miss completed %lld ms after it was asked\n", (long long)miss.ms);
	ck_assert_int_eq(miss.g.rc, 0);
	ck_assert_int_eq(vmf(NULL, "release %s", miss.g.id), 0);
	ck_assert_int_eq(vmf(NULL, "release %s", hit.g.id), 0);
	json_object_put(miss.g.rec);
	json_object_put(hit.g.rec);

	/* The held clones fail; nothing is left. */
	fault_gate("clone", "fail");
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	assert_daemon_log_clean();
}
END_TEST

/* A template broken under clones in flight.  Two clones in flight, the template found broken by
 * one of them: the other still verifies against a valid record (ASan
 * reported a use after free here), fails cleanly, and the pool fills
 * again from a rebuilt template. */
START_TEST(template_broken_under_clones_in_flight)
{
	char conf[700];
	write_config(conf, sizeof conf, "[daemon]\nfill_parallelism = 2\n");
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_mkdir_p(run, 0700, &e), 0);
	fault_gate("clone", "0");
	fault = "gates";
	ck_assert_int_eq(vmf(NULL, "init --config %s --pool 2", conf), 0);
	fault = NULL;
	ck_assert_msg(wait_pool_count("filling", 2, 60000), "2 clone jobs were not queued");

	/* Damage the template's state file under the two clones. */
	json_object *s = vmf_json("status -o json%s", "");
	char tfile[900];
	snprintf(tfile, sizeof tfile, "%s/templates/%s/state", state,
		 json_object_get_string(path(json_object_array_get_idx(path(s, "templates", NULL), 0), "id", NULL)));
	json_object_put(s);
	FILE *f = fopen(tfile, "a");
	ck_assert_msg(f != NULL, "cannot open %s", tfile);
	fputc('x', f);
	fclose(f);

	/* The first finds it broken and the pool drops the template; then the
	 * second checks it. */
	fault_gate("clone", "1");
	ck_assert_msg(wait_pool_count("failed", 1, 60000), "the first clone did not fail");
	fault_gate("clone", "2");
	bool second = wait_pool_count("failed", 2, 60000);
	assert_daemon_log_clean();   /* first: a daemon that died says why there */
	ck_assert_msg(second, "the second clone did not fail (daemon %s)", pool_count("failed") < 0 ? "gone" : "up");
	char errors[600] = "";
	pool_failures(sock, errors, sizeof errors);
	printf("template broken under two clones: %s\n", errors);
	ck_assert_msg(strstr(errors, "is broken"), "%s", errors);

	/* Rebuilt, and the pool fills. */
	char gp[700];
	snprintf(gp, sizeof gp, "%s/gate-clone", run);
	ck_assert_int_eq(unlink(gp), 0);
	ck_assert_msg(wait_pool_count("ready", 2, 300000), "the pool did not fill again");
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	assert_daemon_log_clean();
}
END_TEST

int
main(void)
{
	if (!vmf_test_fault_build())
		return vmf_test_skip_all("the gates these tests use need a build with -Dfault_injection=true");
	Suite *s = suite_create("workers");
	TCase *tc = tcase_create("workers");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 900);
	ADD_TEST(tc, hits_do_not_wait_for_clones_and_misses_are_bounded);
	ADD_TEST(tc, template_broken_under_clones_in_flight);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
