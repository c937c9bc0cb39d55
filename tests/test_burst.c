/* End to end: GetVMs that find their pool exhausted wait in its queue
 * (cache/queue.c).  One daemon of a pool of 2 that clones nothing on
 * demand (max_miss_clones = 0), so that every request beyond the ready VMs
 * waits; its pool clones are held at the fault-injection gate
 * (<run>/gate-clone: how many may pass) so that who is served when is
 * forced, not hoped for.  Requests run as `vmfactory get` processes, as
 * root or as real unprivileged tenants, so that one can be killed while it
 * waits. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

/* The first pool's key, or the daemon's counters' ("counters" object) when
 * pool is false; -1 when the daemon does not answer. */
static long long
stat_of(bool pool, const char *key)
{
	char *out = NULL;
	if (vmf(&out, "status -o json") != 0) {
		free(out);
		return -1;
	}
	json_object *s = json_tokener_parse(out);
	free(out);
	ck_assert_ptr_nonnull(s);
	json_object *o = pool ? json_object_array_get_idx(path(s, "pools", NULL), 0) : path(s, "counters", NULL);
	long long v = json_object_get_int64(path(o, key, NULL));
	json_object_put(s);
	return v;
}

/* A `vmfactory get` running as uid (0: root) into dir/NAME-share and
 * dir/NAME-sock, its output in tmp/NAME.out. */
struct req {
	char name[32];
	pid_t pid;
	int status;       /* exit status once reaped */
	int order;        /* 1, 2, ...: when it ended among those reaped; 0 running */
	char out[700];
};

static int reaped;

static void
spawn_get(struct req *r, uid_t uid, const char *dir, const char *name, unsigned timeout_s)
{
	snprintf(r->name, sizeof r->name, "%s", name);
	snprintf(r->out, sizeof r->out, "%s/%s.out", tmp, name);
	r->order = 0;
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "exec %s get --cpus 1 --memory 256 --sandbox %s --share-dir %s/%s-share --sock-dir "
		 "%s/%s-sock --timeout %u -o json %s", exe, name, dir, name, dir, name, timeout_s, common_opts);
	int fd = open(r->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		dup2(fd, 1);
		dup2(fd, 2);
		if (uid && !become_tenant(uid))
			_exit(99);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(98);
	}
	close(fd);
	r->pid = pid;
}

/* Reaps whichever of rs ended; how many have. */
static int
reap(struct req *rs, int n)
{
	int done = 0;
	for (int i = 0; i < n; i++) {
		if (!rs[i].order && rs[i].pid > 0 && waitpid(rs[i].pid, &rs[i].status, WNOHANG) == rs[i].pid)
			rs[i].order = ++reaped;
		done += rs[i].order != 0;
	}
	return done;
}

static char *
output(const struct req *r)
{
	char *s = NULL;
	vmf_read_file(r->out, &s, NULL, 1 << 20, NULL);
	return s ? s : strdup("");
}

/* The request ended with exit 0 and a VM; *queue_ms from its reply. */
static void
assert_served(const struct req *r, long long *queue_ms, char *id, size_t n)
{
	char *s = output(r);
	ck_assert_msg(r->order && WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0, "%s: status %d: %s", r->name,
		      r->status, s);
	json_object *o = json_tokener_parse(s);
	ck_assert_msg(o != NULL, "%s: no JSON: %s", r->name, s);
	if (queue_ms)
		*queue_ms = json_object_get_int64(path(o, "queue_ms", NULL));
	if (id)
		snprintf(id, n, "%s", json_object_get_string(path(o, "id", NULL)));
	json_object_put(o);
	free(s);
}

/* A GetVM as uid (0: root) into dir/NAME-*: 0, or -errno with the error's
 * sentence in msg; *ms how long it took. */
static int
get_as(uid_t uid, const char *dir, const char *name, unsigned timeout_ms, char *msg, size_t n, int64_t *ms)
{
	char share[700], sockd[700];
	snprintf(share, sizeof share, "%s/%s-share", dir, name);
	snprintf(sockd, sizeof sockd, "%s/%s-sock", dir, name);
	int64_t t0 = vmf_now_ms();
	int rc = get_into(uid, share, sockd, name, timeout_ms, msg, n);
	*ms = vmf_now_ms() - t0;
	printf("%s: %d in %lld ms: %s\n", name, rc, (long long)*ms, msg);
	return rc;
}

START_TEST(exhausted_pools_queue_time_out_refuse_and_serve_tenants_in_turn)
{
	char conf[700], dir_a[700], dir_b[700];
	struct vmf_error e = {0};
	snprintf(conf, sizeof conf, "%s/vmfactory.conf", tmp);
	const char *text = "[daemon]\nmax_miss_clones = 0\nmax_queue = 4\ntenant_max_queued = 3\nget_timeout = 300\n"
			   "fill_parallelism = 2\n";
	ck_assert_int_eq(vmf_write_file_atomic(conf, text, strlen(text), 0600, &e), 0);
	ck_assert_int_eq(chmod(tmp, 0711), 0);   /* the tenants reach the socket in it */
	tenant_dir(tu.a, tu.uid_a, dir_a, sizeof dir_a);
	tenant_dir(tu.b, tu.uid_b, dir_b, sizeof dir_b);
	ck_assert_int_eq(vmf_mkdir_p(run, 0700, &e), 0);

	/* The pool fills (two clones pass the gate), then its clones wait. */
	fault_gate("clone", "2");
	fault = "gates";
	int rc = vmf(NULL, "init --config %s --group %s --pool 2 --wait --timeout 600", conf, tu.group);
	fault = NULL;
	ck_assert_msg(rc == 0, "the daemon did not start: %s", cli_stderr());
	wait_until(stat_of(true, "ready") == 2, 300000, "the pool did not fill");

	/* Two hits empty it; the refill's clones are held. */
	struct req hit[2];
	spawn_get(&hit[0], 0, tmp, "hit0", 120);
	spawn_get(&hit[1], 0, tmp, "hit1", 120);
	wait_until(reap(hit, 2) == 2, 120000, "the hits were not served");
	char hid[2][64];
	assert_served(&hit[0], NULL, hid[0], sizeof hid[0]);
	assert_served(&hit[1], NULL, hid[1], sizeof hid[1]);
	ck_assert_int_eq(stat_of(true, "filling"), 2);

	/* Its deadline passes in the queue: ETIMEDOUT, with a sentence. */
	char msg[1100];
	int64_t ms;
	rc = get_as(0, tmp, "late", 3000, msg, sizeof msg, &ms);
	assert_refused(rc, msg, ETIMEDOUT, "no VM of pool default became ready within the request's timeout|"
		       "waited|queue|--timeout", "a request whose deadline passed in the queue");
	/* A tenth of it is kept for the hand-out of a request served last. */
	ck_assert_msg(ms >= 2600 && ms < 15000, "timed out after %lld ms, not about 2.7 s", (long long)ms);
	ck_assert_int_eq(stat_of(true, "queue_timeouts"), 1);

	/* A client that goes away while it waits leaves the queue. */
	struct req gone;
	spawn_get(&gone, 0, tmp, "gone", 300);
	wait_until(stat_of(true, "queued") == 1, 60000, "the request did not queue");
	ck_assert_int_eq(kill(gone.pid, SIGKILL), 0);
	wait_until(reap(&gone, 1) == 1, 10000, "the killed client did not exit");
	wait_until(stat_of(true, "queued") == 0, 10000, "the killed client's request is still queued");
	ck_assert_int_eq(stat_of(true, "queue_left"), 1);

	/* Tenant a queues three, its limit; its fourth is refused at once. */
	struct req q[4];
	spawn_get(&q[0], tu.uid_a, dir_a, "a1", 300);
	wait_until(stat_of(true, "queued") == 1 || reap(q, 1), 60000, "a1 did not queue");
	ck_assert_msg(!q[0].order, "a1 ended: %s", output(&q[0]));
	spawn_get(&q[1], tu.uid_a, dir_a, "a2", 300);
	wait_until(stat_of(true, "queued") == 2, 60000, "a2 did not queue");
	spawn_get(&q[2], tu.uid_a, dir_a, "a3", 300);
	wait_until(stat_of(true, "queued") == 3, 60000, "a3 did not queue");
	rc = get_as(tu.uid_a, dir_a, "a4", 300000, msg, sizeof msg, &ms);
	assert_refused(rc, msg, EDQUOT, "already has 3 requests waiting|tenant_max_queued = 3", "a tenant's 4th");
	ck_assert_msg(ms < 10000, "the tenant's 4th took %lld ms to be refused", (long long)ms);
	/* Tenant b's one request fills the queue; the next is refused at once. */
	spawn_get(&q[3], tu.uid_b, dir_b, "b1", 300);
	wait_until(stat_of(true, "queued") == 4, 60000, "b1 did not queue");
	rc = get_as(0, tmp, "full", 300000, msg, sizeof msg, &ms);
	assert_refused(rc, msg, EAGAIN, "queue full|4 requests already wait|max_queue = 4", "a full queue");
	ck_assert_msg(ms < 10000, "a full queue took %lld ms to refuse", (long long)ms);

	/* One clone at a time: b's request is served second, not behind all
	 * of a's. */
	reaped = 0;
	for (int k = 0; k < 4; k++) {
		char open[16];
		snprintf(open, sizeof open, "%d", 3 + k);
		fault_gate("clone", open);
		wait_until(reap(q, 4) == k + 1, 300000, "request %d of the queue was not served", k + 1);
	}
	int order[4];
	for (int i = 0; i < 4; i++) {
		long long qms = 0;
		assert_served(&q[i], &qms, NULL, 0);
		order[i] = q[i].order;
		printf("%s: served %d of 4 after %lld ms in the queue\n", q[i].name, q[i].order, qms);
		ck_assert_msg(qms > 0, "%s's reply says it did not wait", q[i].name);
	}
	ck_assert_msg(order[0] == 1 && order[3] == 2 && order[1] == 3 && order[2] == 4,
		      "served a1 %d, a2 %d, a3 %d, b1 %d: not a1, b1, a2, a3", order[0], order[1], order[2], order[3]);
	/* Nothing of the killed client's: no VM handed out to nobody. */
	char st[32];
	vm_of_sandbox("gone", st, sizeof st);
	ck_assert_msg(st[0] == '\0', "the killed client's sandbox has a VM (%s)", st);
	ck_assert_int_eq(stat_of(true, "queue_served"), 4);
	ck_assert_int_eq(stat_of(true, "queue_refused"), 2);
	for (int i = 0; i < 4; i++) {
		char id[64];
		assert_served(&q[i], NULL, id, sizeof id);
		ck_assert_int_eq(vmf(NULL, "release %s", id), 0);
	}
	ck_assert_int_eq(vmf(NULL, "release %s", hid[0]), 0);
	ck_assert_int_eq(vmf(NULL, "release %s", hid[1]), 0);

	/* A burst of three times the pool from a full pool: every request
	 * served, those beyond the ready VMs from the queue. */
	fault_gate("clone", "1000");
	wait_until(stat_of(true, "ready") == 2 && stat_of(true, "filling") == 0, 300000, "the pool did not fill");
	struct req burst[6];
	int64_t t0 = vmf_now_ms();
	for (int i = 0; i < 6; i++) {
		char name[16];
		snprintf(name, sizeof name, "burst%d", i);
		spawn_get(&burst[i], 0, tmp, name, 300);
	}
	wait_until(reap(burst, 6) == 6, 600000, "the burst was not served");
	int64_t burst_ms = vmf_now_ms() - t0;
	int waited = 0;
	for (int i = 0; i < 6; i++) {
		long long qms = 0;
		char id[64];
		assert_served(&burst[i], &qms, id, sizeof id);
		waited += qms > 0;
		ck_assert_int_eq(vmf(NULL, "release %s", id), 0);
	}
	printf("a burst of 6 on a pool of 2: all served in %lld ms, %d from the queue\n", (long long)burst_ms, waited);
	ck_assert_int_eq(waited, 4);
	ck_assert_int_eq(stat_of(true, "queue_served"), 8);
	ck_assert_int_eq(stat_of(true, "queued"), 0);

	/* A destroy answers a request still waiting (its clones fail now). */
	wait_until(stat_of(true, "ready") == 2 && stat_of(true, "filling") == 0, 300000, "the pool did not fill");
	fault_gate("clone", "fail");
	struct req last[3];
	spawn_get(&last[0], 0, tmp, "last0", 120);
	spawn_get(&last[1], 0, tmp, "last1", 120);
	wait_until(reap(last, 2) == 2, 120000, "the hits were not served");
	spawn_get(&last[2], 0, tmp, "last2", 120);
	wait_until(stat_of(true, "queued") == 1, 60000, "last2 did not queue");
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	wait_until(reap(&last[2], 1) == 1, 60000, "the waiting request was not answered at the destroy");
	char *s = output(&last[2]);
	printf("a request waiting at the destroy: %s", s);
	ck_assert_msg(WIFEXITED(last[2].status) && WEXITSTATUS(last[2].status) == 1, "status %d", last[2].status);
	assert_words(s, "being destroyed|waited in pool default's queue", "a request waiting at the destroy");
	free(s);
	ck_assert_int_eq(qemu_gone(), 0);
	assert_daemon_log_clean();
}
END_TEST

int
main(void)
{
	if (!vmf_test_fault_build())
		return vmf_test_skip_all("the clone gate these tests use needs a build with -Dfault_injection=true");
	const char *why = tenant_users_make("vbu");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("burst tests: %s", why);
	}
	Suite *s = suite_create("burst");
	TCase *tc = tcase_create("burst");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 1500);
	ADD_TEST(tc, exhausted_pools_queue_time_out_refuse_and_serve_tenants_in_turn);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
