/* The sandbox's own QMP monitor, end to end on real QEMU under TCG, pool of
 * 1: after hand-out a runtime drives the VM through the monitor the reply
 * names (greeting, capabilities, a hot-plugged device it then sees, PCI
 * devices on the free root ports the reply names) while
 * the daemon keeps inspecting, recovering and finally stopping the VM; and
 * as real unprivileged tenants, the owner reaches that monitor through its
 * sock_dir link, another tenant does not, and nobody but the daemon
 * reaches the daemon's own monitor.  And VM records an earlier vmfactory
 * kept in the state dir are adopted after an upgrade.
 *
 * The users and the group (vmft-mo<pid>{a,b,g}) are made by main() and
 * removed before it returns, also when a check fails; without root or
 * useradd the program exits 77 and says why. */
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <poll.h>
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

#include "catalog.h"
#include "catalog_hooks.h"
#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"


/* ---- a tiny QMP client ---- */

struct qmp {
	int fd;
	char buf[65536];
	size_t len;
};

/* Connects; 0 or -errno (EACCES for a socket we may not use). */
static int
qmp_connect(struct qmp *q, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
	q->len = 0;
	q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (q->fd < 0)
		return -errno;
	if (connect(q->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;
		close(q->fd);
		q->fd = -1;
		return -e;
	}
	return 0;
}

/* The next JSON line that is not an event, or NULL after timeout_ms. */
static json_object *
qmp_read(struct qmp *q, int timeout_ms)
{
	int64_t deadline = vmf_now_ms() + timeout_ms;
	for (;;) {
		char *nl = memchr(q->buf, '\n', q->len);
		if (nl) {
			*nl = 0;
			json_object *o = json_tokener_parse(q->buf);
			size_t used = (size_t)(nl - q->buf) + 1;
			memmove(q->buf, nl + 1, q->len - used);
			q->len -= used;
			json_object *ev;
			if (o && json_object_object_get_ex(o, "event", &ev)) {
				json_object_put(o);
				continue;
			}
			if (o)
				return o;
			continue;
		}
		int left = (int)(deadline - vmf_now_ms());
		struct pollfd p = { q->fd, POLLIN, 0 };
		if (left <= 0 || poll(&p, 1, left) <= 0 || q->len >= sizeof q->buf - 1)
			return NULL;
		ssize_t n = read(q->fd, q->buf + q->len, sizeof q->buf - 1 - q->len);
		if (n <= 0)
			return NULL;
		q->len += (size_t)n;
	}
}

/* The greeting, then qmp_capabilities: true when both came. */
static bool
qmp_handshake(struct qmp *q, int timeout_ms)
{
	json_object *g = qmp_read(q, timeout_ms), *x;
	bool ok = g && json_object_object_get_ex(g, "QMP", &x);
	json_object_put(g);
	const char *cap = "{\"execute\":\"qmp_capabilities\"}\n";
	if (!ok || write(q->fd, cap, strlen(cap)) != (ssize_t)strlen(cap))
		return false;
	json_object *r = qmp_read(q, timeout_ms);
	ok = r && json_object_object_get_ex(r, "return", &x);
	json_object_put(r);
	return ok;
}

/* Runs a command; its "return" (owned by the caller) or NULL, with the
 * reply's text in why. */
static json_object *
qmp_cmd(struct qmp *q, const char *json, char *why, size_t n)
{
	snprintf(why, n, "no reply");
	char line[4096];
	snprintf(line, sizeof line, "%s\n", json);
	if (write(q->fd, line, strlen(line)) != (ssize_t)strlen(line))
		return NULL;
	json_object *r = qmp_read(q, 30000), *ret = NULL;
	if (r)
		snprintf(why, n, "%s", json_object_to_json_string(r));
	if (r && json_object_object_get_ex(r, "return", &ret))
		json_object_get(ret);
	json_object_put(r);
	return ret;
}

static void
qmp_close(struct qmp *q)
{
	if (q->fd >= 0)
		close(q->fd);
	q->fd = -1;
}

/* ---- acting as a user ---- */

/* In a child as uid (with the test group): connects to path and, if greet,
 * reads the QMP greeting; 0, -errno of the connect, or -ETIMEDOUT without
 * greeting. */
struct reach_arg {
	const char *path;
	bool greet;
};

static int
act_reach(const void *arg, char *msg, size_t n)
{
	(void)msg, (void)n;
	const struct reach_arg *a = arg;
	struct qmp q;
	int r = qmp_connect(&q, a->path);
	if (r == 0 && a->greet)
		r = qmp_handshake(&q, 15000) ? 0 : -ETIMEDOUT;
	return r;
}

static int
reach_as(uid_t uid, const char *path, bool greet)
{
	char msg[8];
	return as_tenant(uid, act_reach, &(struct reach_arg){ path, greet }, msg, sizeof msg);
}

static int
greeting_as(uid_t uid, const char *path)
{
	return reach_as(uid, path, true);
}

/* Connects to the unix socket at path as uid, without waiting for a
 * greeting: 0 or -errno of the connect. */
static int
connect_as(uid_t uid, const char *path)
{
	return reach_as(uid, path, false);
}

static const char *
vm_state(const char *id)
{
	static char state_s[32];
	json_object *s = vmf_json("status -o json%s", "");
	json_object *vms = path(s, "vms", NULL);
	snprintf(state_s, sizeof state_s, "none");
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (!strcmp(json_object_get_string(path(v, "id", NULL)), id))
			snprintf(state_s, sizeof state_s, "%s", json_object_get_string(path(v, "state", NULL)));
	}
	json_object_put(s);
	return state_s;
}

static bool
pid_gone(pid_t pid)
{
	poll_until(kill(pid, 0) < 0, 60000);
	return kill(pid, 0) < 0;
}

/* ---- the tests ---- */

START_TEST(the_runtime_drives_its_own_monitor)
{
	start_tenant_daemon("");
	struct got g = {0};
	do_get(&g, "mon", 1, 256);
	ck_assert_int_eq(g.rc, 0);
	const char *qmp_path = json_object_get_string(path(g.rec, "qmp_socket", NULL));
	const char *run_dir = json_object_get_string(path(g.rec, "run_dir", NULL));
	pid_t pid = (pid_t)json_object_get_int(path(g.rec, "pid", NULL));
	ck_assert_int_gt(pid, 0);
	/* In the run dir, so in the sandbox's sock_dir too. */
	ck_assert_int_eq(strncmp(qmp_path, run_dir, strlen(run_dir)), 0);
	char via_link[900];
	snprintf(via_link, sizeof via_link, "%s/%s", g.sockd, strrchr(qmp_path, '/') + 1);

	struct qmp q;
	ck_assert_int_eq(qmp_connect(&q, via_link), 0);
	ck_assert_msg(qmp_handshake(&q, 15000), "no QMP greeting on the monitor the hand-out names (%s): the "
		      "daemon holds it", qmp_path);
	char why[2048];
	json_object *r = qmp_cmd(&q, "{\"execute\":\"chardev-add\",\"arguments\":{\"id\":\"rt0\","
				 "\"backend\":{\"type\":\"null\",\"data\":{}}}}", why, sizeof why);
	ck_assert_msg(r, "chardev-add: %s", why);
	json_object_put(r);
	/* A port on the VM's virtio-serial bus: hot-pluggable on q35 under
	 * TCG, where the root complex takes no hot-plugged PCI device. */
	r = qmp_cmd(&q, "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"virtserialport\","
		    "\"bus\":\"vser0.0\",\"chardev\":\"rt0\",\"id\":\"rtport0\",\"name\":\"org.test.rt0\"}}",
		    why, sizeof why);
	ck_assert_msg(r, "device_add: %s", why);
	json_object_put(r);
	r = qmp_cmd(&q, "{\"execute\":\"qom-list\",\"arguments\":{\"path\":\"/machine/peripheral\"}}", why,
		    sizeof why);
	ck_assert_msg(r && strstr(json_object_to_json_string(r), "\"rtport0\""),
		      "the hot-plugged port is not in /machine/peripheral: %s", why);
	json_object_put(r);

	/* A PCI device: not on the root bus, but on a free root port the reply
	 * names (hotplug_ports, 2 by default), and the next one stays free. */
	json_object *ports = path(g.rec, "hotplug_ports", NULL);
	ck_assert_int_eq(json_object_array_length(ports), 2);
	const char *port = json_object_get_string(json_object_array_get_idx(ports, 0));
	r = qmp_cmd(&q, "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"virtio-rng-pci\",\"id\":\"rtrng0\"}}",
		    why, sizeof why);
	ck_assert_msg(!r && strstr(why, "does not support hotplugging"), "device_add on the root bus: %s", why);
	json_object_put(r);
	char cmd[512];
	snprintf(cmd, sizeof cmd, "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"virtio-rng-pci\","
		 "\"bus\":\"%s\",\"id\":\"rtrng0\"}}", port);
	r = qmp_cmd(&q, cmd, why, sizeof why);
	ck_assert_msg(r, "device_add virtio-rng-pci on %s: %s", port, why);
	json_object_put(r);
	r = qmp_cmd(&q, "{\"execute\":\"query-pci\"}", why, sizeof why);
	ck_assert_msg(r && strstr(json_object_to_json_string(r), "\"rtrng0\""), "rtrng0 not in query-pci: %s", why);
	json_object_put(r);
	snprintf(cmd, sizeof cmd, "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"virtio-rng-pci\","
		 "\"bus\":\"%s\",\"id\":\"rtrng1\"}}", json_object_get_string(json_object_array_get_idx(ports, 1)));
	r = qmp_cmd(&q, cmd, why, sizeof why);
	ck_assert_msg(r, "device_add on the second port: %s", why);
	json_object_put(r);

	/* The daemon's own work goes on while the runtime holds its monitor. */
	int64_t t0 = vmf_now_ms();
	json_object *ins = vmf_json("inspect %s -o json", g.id);
	ck_assert_str_eq(json_object_get_string(path(path(ins, "vm", NULL), "state", NULL)), "assigned");
	ck_assert_str_eq(json_object_to_json_string(path(path(ins, "vm", NULL), "hotplug_ports", NULL)),
			 json_object_to_json_string(ports));
	json_object_put(ins);
	ck_assert_str_eq(vm_state(g.id), "assigned");
	printf("inspect and status while the runtime is connected: %lld ms\n", (long long)(vmf_now_ms() - t0));

	/* A restart: recovery finds the daemon's monitor, not the runtime's. */
	kill_daemon_hard();
	start_tenant_daemon("");
	ck_assert_str_eq(vm_state(g.id), "assigned");
	ins = vmf_json("inspect %s -o json", g.id);
	json_object_put(ins);
	r = qmp_cmd(&q, "{\"execute\":\"query-status\"}", why, sizeof why);
	ck_assert_msg(r && strstr(json_object_to_json_string(r), "running"),
		      "the runtime's monitor after the daemon's restart: %s", why);
	json_object_put(r);

	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	ck_assert_msg(pid_gone(pid), "QEMU pid %d still runs after release", (int)pid);
	/* Our end sees the monitor go. */
	ck_assert_ptr_null(qmp_read(&q, 5000));
	qmp_close(&q);
	json_object_put(g.rec);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

START_TEST(a_tenant_gets_its_agent_but_no_monitor)
{
	/* The users reach the socket (in tmp) and, through the links, their
	 * VM's dir (in svc/run). */
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	start_tenant_daemon("");
	char a_dir[700], a_share[800], a_sock[800], id[64];
	tenant_dir(tu.a, tu.uid_a, a_dir, sizeof a_dir);
	snprintf(a_share, sizeof a_share, "%s/share", a_dir);
	snprintf(a_sock, sizeof a_sock, "%s/sock", a_dir);
	ck_assert_msg(tenant_get(tu.uid_a, a_dir, "tenant", id, sizeof id) == 0, "GetVM as a tenant: %s", id);

	json_object *ins = vmf_json("inspect %s -o json", id);
	json_object *vm = path(ins, "vm", NULL);
	char mon[800], agent[800], run_dir[700];
	snprintf(mon, sizeof mon, "%s", strrchr(json_object_get_string(path(vm, "qmp_socket", NULL)), '/') + 1);
	snprintf(agent, sizeof agent, "%s", strrchr(json_object_get_string(path(vm, "agent_socket", NULL)), '/') + 1);
	snprintf(run_dir, sizeof run_dir, "%s", json_object_get_string(path(vm, "run_dir", NULL)));
	json_object_put(ins);

	/* QMP lets its client make QEMU open host files (blockdev-add,
	 * chardev-add): a tenant gets its VM's agent, never a monitor. */
	char p[900];
	snprintf(p, sizeof p, "%s/%s", a_sock, mon);
	int rc = greeting_as(tu.uid_a, p);
	ck_assert_msg(rc == -EACCES, "the tenant %s reaches its VM's monitor %s: %s", tu.a, p, strerror(-rc));
	rc = greeting_as(tu.uid_b, p);
	ck_assert_msg(rc == -EACCES, "%s reaches %s's monitor: %s", tu.b, tu.a, strerror(-rc));
	snprintf(p, sizeof p, "%s/%s", a_sock, agent);
	rc = connect_as(tu.uid_a, p);
	ck_assert_msg(rc == 0, "the tenant %s cannot connect to its VM's agent %s: %s", tu.a, p, strerror(-rc));
	rc = connect_as(tu.uid_b, p);
	ck_assert_msg(rc == -EACCES, "%s reaches %s's agent: %s", tu.b, tu.a, strerror(-rc));

	/* Every other socket in the VM's dir is the daemon's: no tenant gets
	 * in, the owner included. */
	int others = 0;
	DIR *d = opendir(run_dir);
	ck_assert_ptr_nonnull(d);
	struct dirent *de;
	while ((de = readdir(d))) {
		struct stat st;
		char f[1000];
		snprintf(f, sizeof f, "%s/%s", run_dir, de->d_name);
		if (lstat(f, &st) < 0 || !S_ISSOCK(st.st_mode) || !strcmp(de->d_name, mon) || !strcmp(de->d_name, agent))
			continue;
		others++;
		snprintf(p, sizeof p, "%s/%s", a_sock, de->d_name);
		rc = greeting_as(tu.uid_a, p);
		ck_assert_msg(rc == -EACCES, "the owner %s reaches the daemon's socket %s: %s", tu.a, de->d_name,
			      strerror(-rc));
		/* The daemon's monitor works: root, as the daemon, gets a greeting
		 * only while the daemon is not connected, so just connect. */
		struct qmp q;
		ck_assert_int_eq(qmp_connect(&q, f), 0);
		qmp_close(&q);
	}
	closedir(d);
	ck_assert_msg(others >= 1, "the VM's dir holds no private monitor of the daemon's");

	ck_assert_int_eq(vmf(NULL, "release %s", id), 0);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

/* Moves every VM record from the run dir's environment into the state-dir
 * catalog's table of an earlier vmfactory, and removes the run-dir
 * environment: the layout a daemon of that version leaves behind. */
static int
move_back(const char *id, Vmf__Catalog__VmRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	(void)rec_err;
	struct vmf_catalog *c = ctx;
	struct vmf_error e = {0};
	ck_assert_ptr_nonnull(rec);
	uint8_t buf[8192];
	ck_assert_uint_lt(vmf__catalog__vm_record__get_packed_size(rec), sizeof buf);
	size_t len = vmf__catalog__vm_record__pack(rec, buf);
	ck_assert_msg(vmf_catalog_put_raw(c, "legacy-vms", id, buf, len, &e) == 0, "%s", e.msg);
	return 0;
}

/* An upgrade from a vmfactory that kept VM records in the state dir: the
 * new daemon adopts the VMs those records describe (the assigned one keeps
 * running, owned as before) rather than killing them as orphans. */
START_TEST(vm_records_of_an_earlier_state_catalog_are_adopted)
{
	start_tenant_daemon("");
	struct got g = {0};
	do_get(&g, "upgrade", 1, 256);
	ck_assert_int_eq(g.rc, 0);
	pid_t pid = (pid_t)json_object_get_int(path(g.rec, "pid", NULL));
	kill_daemon_hard();

	struct vmf_catalog *c;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_catalog_open(state, &c, &e) == 0, "%s", e.msg);
	ck_assert_msg(vmf_catalog_open_runtime(c, run, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(vmf_catalog_vm_list(c, move_back, c, &e), 0);
	vmf_catalog_close(c);
	char rt[700];
	snprintf(rt, sizeof rt, "%s/vms.lmdb", run);
	ck_assert_int_eq(vmf_rm_rf(rt, &e), 0);

	start_tenant_daemon("");
	ck_assert_str_eq(vm_state(g.id), "assigned");
	ck_assert_int_eq(kill(pid, 0), 0);
	json_object *ins = vmf_json("inspect %s -o json", g.id);
	ck_assert_int_eq(json_object_get_int(path(path(ins, "vm", NULL), "pid", NULL)), pid);
	json_object_put(ins);
	ck_assert_int_eq(access(rt, F_OK), 0);
	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	ck_assert_msg(pid_gone(pid), "QEMU pid %d still runs after release", (int)pid);
	json_object_put(g.rec);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

int
main(void)
{
	const char *why = tenant_users_make("vmft-mo");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("monitor tests: %s", why);
	}
	Suite *s = suite_create("monitor");
	TCase *tc = tcase_create("monitor");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 1200);
	ADD_TEST(tc, the_runtime_drives_its_own_monitor);
	ADD_TEST(tc, a_tenant_gets_its_agent_but_no_monitor);
	ADD_TEST(tc, vm_records_of_an_earlier_state_catalog_are_adopted);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
