/* Privilege and tenancy, end to end, as real unprivileged users in the
 * daemon's group: where a tenant may make the (root) daemon put links, that
 * a VM belongs to the uid that got it (across a restart), that only root
 * and the daemon's user may destroy, and that a VM's sockets are usable by
 * its owner and nobody else.  Real QEMU under TCG, pool of 1.
 *
 * The users and the group (vmft-ten<pid>{a,b,g}) are made by main() and
 * removed before it returns, also when a check fails; without root or
 * useradd the program exits 77 and says why.  Checks are counted rather
 * than stopping at the first failure, so a run on code without these
 * protections lists every hole it finds. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

/* ---- acting as a user (as_user, call_as, daemonlib.h) ---- */

static void
call_as_user(uid_t uid, tenant_call_fn fn, const void *arg, struct act *out)
{
	out->rc = call_as(uid, fn, arg, out->msg, sizeof out->msg);
}

struct get_arg {
	const char *share, *sockd, *sandbox;
};

/* GetVM; the VM id and its owner uid (or the error) in msg. */
static void
get_as_user(uid_t uid, const struct get_arg *g, struct act *out)
{
	Vmf__Control__GetVMRequest req = VMF__CONTROL__GET_VMREQUEST__INIT;
	req.vcpus = 1;
	req.memory_mib = 256;
	req.sandbox_id = (char *)g->sandbox;
	req.share_dir = (char *)g->share;
	req.sock_dir = (char *)g->sockd;
	req.timeout_ms = 120000;
	call_as_user(uid, req_get, &req, out);
}

/* connect(2) to a unix socket path. */
static int
act_connect(const void *arg, char *msg, size_t n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", (const char *)arg);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : -errno;
	snprintf(msg, n, "%s", rc ? strerror(-rc) : "");
	close(fd);
	return rc;
}

/* open(2) for reading, or opendir for a path ending in '/'. */
static int
act_open(const void *arg, char *msg, size_t n)
{
	const char *p = arg;
	int fd = open(p, O_RDONLY | (p[strlen(p) - 1] == '/' ? O_DIRECTORY : 0));
	int rc = fd >= 0 ? 0 : -errno;
	snprintf(msg, n, "%s", rc ? strerror(-rc) : "");
	if (fd >= 0)
		close(fd);
	return rc;
}

/* ---- the test ---- */

static int
pool_ready_now(void)
{
	struct act a;
	call_as_user(0, req_status, NULL, &a);
	const char *r = strstr(a.msg, "ready=");
	return r ? atoi(r + 6) : -1;
}

static void
wait_ready(int want)
{
	wait_until(pool_ready_now() >= want, 300000, "the pool has not %d ready VMs", want);
}


/* A GetVM as user that must be refused; no pooled VM may be lost to it. */
static void
refused(uid_t uid, const char *what, const char *share, const char *sockd, const char *want)
{
	struct get_arg g = { share, sockd, "refused" };
	struct act a;
	get_as_user(uid, &g, &a);
	check(a.rc < 0 && (!want || strstr(a.msg, want)), "%s is refused (%d: %s)", what, a.rc, a.msg);
	if (a.rc == 0) {
		/* Today's code made the links: take them away again. */
		char id[64];
		sscanf(a.msg, "%63s", id);
		vmf(NULL, "release %s", id);
		unlink(share);
		unlink(sockd);
	}
	check(pool_ready_now() == 1, "the pooled VM is still there after: %s", what);
	if (pool_ready_now() != 1)
		wait_ready(1);
}

START_TEST(tenants_are_confined_and_own_their_vms)
{
	/* The user reaches the socket (in tmp) and, through the links, its
	 * VM's dir (in svc/run); neither lets it list anything. */
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	start_tenant_daemon("");
	wait_ready(1);

	char a_dir[700], b_dir[700], a_link[700], etc_share[200], etc_sock[200], p1[800], p2[800];
	snprintf(a_link, sizeof a_link, "%s/%s-link", tmp, tu.a);
	/* Each user's own sandbox dir, as a runtime would set it up. */
	struct act a;
	tenant_dir(tu.a, tu.uid_a, a_dir, sizeof a_dir);
	tenant_dir(tu.b, tu.uid_b, b_dir, sizeof b_dir);
	ck_assert_int_eq(symlink(a_dir, a_link), 0);

	/* ---- where links may go ---- */
	snprintf(etc_share, sizeof etc_share, "/etc/%s-share", tu.a);
	snprintf(etc_sock, sizeof etc_sock, "/etc/%s-sock", tu.a);
	refused(tu.uid_a, "a link in /etc", etc_share, etc_sock, "sandbox root");
	unlink(etc_share);
	unlink(etc_sock);
	snprintf(p1, sizeof p1, "%s/../%s/share", a_dir, tu.a);
	snprintf(p2, sizeof p2, "%s/sock", a_dir);
	refused(tu.uid_a, "a path with '..'", p1, p2, "..");
	snprintf(p1, sizeof p1, "%s/share", a_link);
	snprintf(p2, sizeof p2, "%s/sock", a_link);
	refused(tu.uid_a, "a parent reached through a symlink", p1, p2, "symlink");
	snprintf(p1, sizeof p1, "%s/share", b_dir);
	snprintf(p2, sizeof p2, "%s/sock", b_dir);
	refused(tu.uid_a, "a parent owned by another user", p1, p2, "belongs to uid");
	snprintf(p1, sizeof p1, "%s/a-share", tmp);
	snprintf(p2, sizeof p2, "%s/a-sock", tmp);
	refused(tu.uid_a, "a parent owned by root (the root itself)", p1, p2, "belongs to uid");
	snprintf(p1, sizeof p1, "%s/vms/share", run);
	snprintf(p2, sizeof p2, "%s/sock", state);
	refused(tu.uid_a, "paths in the daemon's run and state dirs", p1, p2, "inside the daemon's own");

	/* ---- a good path: the user's own dir below the root ---- */
	char a_share[800], a_sock[800], a_id[64] = "";
	snprintf(a_share, sizeof a_share, "%s/share", a_dir);
	snprintf(a_sock, sizeof a_sock, "%s/sock", a_dir);
	struct get_arg g = { a_share, a_sock, "tenant-a" };
	get_as_user(tu.uid_a, &g, &a);
	ck_assert_msg(a.rc == 0, "GetVM as %s into its own dir failed: %s", tu.a, a.msg);
	unsigned owner = 0;
	sscanf(a.msg, "%63s %u", a_id, &owner);
	check(owner == tu.uid_a, "the reply names the owner uid %u (got %u)", (unsigned)tu.uid_a, owner);

	/* root's VM */
	struct got root_vm = {0};
	do_get(&root_vm, "root-vm", 1, 256);
	ck_assert_int_eq(root_vm.rc, 0);

	/* ---- the owner's sockets: its own, nobody else's ---- */
	snprintf(p1, sizeof p1, "%s/agent.sock", a_sock);
	as_user(tu.uid_a, act_connect, p1, &a);
	check(a.rc == 0, "%s connects to its VM's agent.sock through the sock_dir link (%s)", tu.a, a.msg);
	as_user(tu.uid_b, act_connect, p1, &a);
	check(a.rc == -EACCES, "%s cannot connect to %s's agent.sock (%s)", tu.b, tu.a, a.msg);
	/* A monitor makes QEMU open host paths its client names: not a tenant's. */
	snprintf(p1, sizeof p1, "%s/qmp.sock", a_sock);
	as_user(tu.uid_a, act_connect, p1, &a);
	check(a.rc == -EACCES, "%s cannot connect to its VM's QMP monitor (%s)", tu.a, a.msg);
	/* Search, not list; and nothing but the sockets and the share. */
	snprintf(p1, sizeof p1, "%s/", a_sock);
	as_user(tu.uid_a, act_open, p1, &a);
	check(a.rc == -EACCES, "%s cannot list its VM's dir (%s)", tu.a, a.msg);
	snprintf(p1, sizeof p1, "%s/qemu.log", a_sock);
	as_user(tu.uid_a, act_open, p1, &a);
	check(a.rc == -EACCES, "%s cannot read QEMU's log in its VM's dir (%s)", tu.a, a.msg);
	snprintf(p1, sizeof p1, "%s/", a_share);
	as_user(tu.uid_a, act_open, p1, &a);
	check(a.rc == 0, "%s opens its VM's share (%s)", tu.a, a.msg);
	as_user(tu.uid_b, act_open, p1, &a);
	check(a.rc == -EACCES, "%s cannot open %s's share (%s)", tu.b, tu.a, a.msg);
	snprintf(p1, sizeof p1, "%s/qmp.sock", root_vm.sockd);
	as_user(tu.uid_a, act_connect, p1, &a);
	check(a.rc == -EACCES, "%s cannot connect to root's VM's QMP socket (%s)", tu.a, a.msg);

	/* ---- ownership, also after the daemon restarts ---- */
	call_as_user(tu.uid_a, req_release, root_vm.id, &a);
	check(a.rc == -EACCES && strstr(a.msg, root_vm.id), "%s cannot release root's VM (%d: %s)", tu.a, a.rc,
	      a.msg);
	kill_daemon_hard();
	start_tenant_daemon("");
	json_object *s = vmf_json("status -o json%s", "");
	json_object *vms = path(s, "vms", NULL);
	int owners_ok = 0;
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		const char *id = json_object_get_string(path(v, "id", NULL));
		json_object *o = NULL;
		unsigned uid = json_object_object_get_ex(v, "owner_uid", &o) ? (unsigned)json_object_get_int64(o) : 99999;
		owners_ok += (!strcmp(id, a_id) && uid == tu.uid_a) + (!strcmp(id, root_vm.id) && uid == 0);
	}
	json_object_put(s);
	check(owners_ok == 2, "after a restart root's status shows both owners");

	call_as_user(tu.uid_a, req_inspect, root_vm.id, &a);
	check(a.rc == -EACCES && strstr(a.msg, root_vm.id), "%s cannot inspect root's VM (%d: %s)", tu.a, a.rc, a.msg);
	call_as_user(tu.uid_a, req_release, root_vm.id, &a);
	check(a.rc == -EACCES && strstr(a.msg, root_vm.id), "%s cannot release root's VM after the restart (%d: %s)",
	      tu.a, a.rc, a.msg);
	call_as_user(tu.uid_b, req_inspect, a_id, &a);
	check(a.rc == -EACCES && strstr(a.msg, a_id), "%s cannot inspect %s's VM (%d: %s)", tu.b, tu.a, a.rc, a.msg);
	call_as_user(tu.uid_a, req_inspect, a_id, &a);
	check(a.rc == 0 && !strcmp(a.msg, "tenant-a"), "%s inspects its own VM (%d: %s)", tu.a, a.rc, a.msg);
	call_as_user(tu.uid_a, req_status, NULL, &a);
	char want[100];
	snprintf(want, sizeof want, "%s ready=", a_id);
	check(a.rc == 0 && strncmp(a.msg, want, strlen(want)) == 0, "%s's status lists its own VM only (%s)", tu.a,
	      a.msg);
	call_as_user(tu.uid_a, req_destroy, NULL, &a);
	check(a.rc == -EPERM && strstr(a.msg, "destroy"), "%s cannot destroy the daemon (%d: %s)", tu.a, a.rc, a.msg);
	check(kill(daemon_pid(), 0) == 0, "the daemon still runs");

	call_as_user(tu.uid_a, req_release, a_id, &a);
	check(a.rc == 0, "%s releases its own VM (%s)", tu.a, a.msg);
	struct stat st;
	check(lstat(a_share, &st) < 0 && lstat(a_sock, &st) < 0, "its links are gone");
	ck_assert_int_eq(vmf(NULL, "release %s", root_vm.id), 0);
	json_object_put(root_vm.rec);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	ck_assert_msg(failures == 0, "%d check(s) failed; see the FAIL lines above", failures);
}
END_TEST

static volatile int get_done;

static void *
get_then_flag(void *arg)
{
	get_thread(arg);
	__atomic_store_n(&get_done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* Examining a sandbox path may block (a hung FUSE or NFS mount, played
 * here by a fault point that sleeps 3 s in the check): the daemon keeps
 * answering meanwhile, because the check runs on a worker. */
START_TEST(a_hung_sandbox_path_blocks_only_its_request)
{
	REQUIRE_FAULT_BUILD();
	fault = "sandbox-path-hang";
	start_tenant_daemon("");
	fault = NULL;
	wait_ready(1);
	struct got g = {0};
	snprintf(g.id, sizeof g.id, "hung");
	pthread_t t;
	get_done = 0;
	ck_assert_int_eq(pthread_create(&t, NULL, get_then_flag, &g), 0);
	double worst = 0;
	int during = 0;
	int64_t deadline = vmf_now_ms() + 120000;
	while (!__atomic_load_n(&get_done, __ATOMIC_SEQ_CST)) {
		struct vmf_client *c;
		struct vmf_error e = {0};
		Vmf__Control__Reply *r;
		ck_assert_int_eq(vmf_client_connect(sock, &c, &e), 0);
		int64_t t0 = vmf_monotonic_ns();
		ck_assert_int_eq(vmf_client_status(c, &r, 10000, &e), 0);
		double ms = (vmf_monotonic_ns() - t0) / 1e6;
		/* the request is in, no VM taken yet: its paths are being checked */
		during += r->status->requests == 1 && r->status->n_vms < 2;
		worst = ms > worst ? ms : worst;
		vmf__control__reply__free_unpacked(r, NULL);
		vmf_client_close(c);
		ck_assert_msg(vmf_now_ms() < deadline, "the GetVM never finished");
		poll(NULL, 0, 50);
	}
	pthread_join(t, NULL);
	printf("status during a GetVM whose path check hangs 3 s: %d calls, worst %.1f ms\n", during, worst);
	check(during >= 3 && worst < 1000, "status answers while a sandbox path check hangs (%d calls, worst %.0f ms)",
	      during, worst);
	ck_assert_int_eq(g.rc, 0);
	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	json_object_put(g.rec);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	ck_assert_msg(failures == 0, "%d check(s) failed; see the FAIL lines above", failures);
}
END_TEST

/* A root that holds the daemon's own files is refused before anything
 * starts, with a sentence saying so. */
START_TEST(roots_overlapping_daemon_dirs_are_refused)
{
	vmf_refused("contains the daemon's state dir", "init --pool 1 --sandbox-root %s", svc);
	vmf_refused("lies inside the daemon's VM dir", "init --pool 1 --sandbox-root %s/vms/x", run);
	vmf_refused("relative/dir is not an absolute path", "init --pool 1 --sandbox-root relative/dir");
	ck_assert_int_eq(count_qemu(), 0);
}
END_TEST

int
main(void)
{
	const char *why = tenant_users_make("vmft-ten");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("tenancy tests: %s", why);
	}
	Suite *s = suite_create("tenancy");
	TCase *tc = tcase_create("tenancy");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 1200);
	ADD_TEST(tc, tenants_are_confined_and_own_their_vms);
	ADD_TEST(tc, roots_overlapping_daemon_dirs_are_refused);
	ADD_TEST(tc, a_hung_sandbox_path_blocks_only_its_request);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
