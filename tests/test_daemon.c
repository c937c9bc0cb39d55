/* End to end: a private daemon (own socket, state and run dirs) driven
 * through the vmfactory CLI, real QEMU VMs under TCG. */
#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <signal.h>
#include <spawn.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

START_TEST(init_get_inspect_release_destroy)
{
	char *out;
	int64_t t0 = vmf_now_ms();
	int rc = vmf(&out, "init --pool 2 --wait --max-cpus 2 --max-memory 1024");
	printf("init --pool 2 --wait: exit %d in %.1f s: %s\n", rc, (vmf_now_ms() - t0) / 1000.0, out);
	free(out);
	ck_assert_int_eq(rc, 0);
	/* A second init changes nothing and names the running daemon. */
	vmf_refused("already", "init --pool 3");

	assert_qemu_fds_clean();
	json_object *s = vmf_json("status -o json%s", "");
	json_object *p0 = json_object_array_get_idx(path(s, "pools", NULL), 0);
	ck_assert_int_eq(json_object_get_int(path(p0, "ready", NULL)), 2);
	ck_assert_int_eq(json_object_get_int(path(p0, "target", NULL)), 2);
	int base_mem = json_object_get_int(path(p0, "memory_mib", NULL));
	/* Which accelerator and why: the tests' environment skips the probe. */
	json_object *dm = path(s, "daemon", NULL);
	ck_assert_str_eq(json_object_get_string(path(dm, "accel", NULL)), "tcg");
	ck_assert_str_eq(json_object_get_string(path(dm, "accel_why", NULL)), "VMFACTORY_ACCEL=tcg is set");
	ck_assert(!json_object_get_boolean(path(dm, "accel_cached", NULL)));
	json_object_put(s);

	struct got a = {0}, b = {0};
	do_get(&a, "sandbox-a", 2, base_mem + 256);
	do_get(&b, "sandbox-b", 2, base_mem + 256);
	ck_assert_int_eq(a.rc, 0);
	ck_assert_int_eq(b.rc, 0);
	ck_assert_int_eq(json_object_get_int(path(a.rec, "vcpus", NULL)), 2);
	ck_assert_str_ne(a.id, b.id);

	/* The sandbox dirs are symlinks to the VM's dirs. */
	char target[700];
	ssize_t n = readlink(a.share, target, sizeof target - 1);
	ck_assert_int_gt(n, 0);
	target[n] = 0;
	ck_assert_str_eq(target, json_object_get_string(path(a.rec, "share_dir", NULL)));
	char qmp[800];
	snprintf(qmp, sizeof qmp, "%s/qmp.sock", a.sockd);
	ck_assert_int_eq(access(qmp, F_OK), 0);

	/* A file written through the sandbox's share symlink is seen by the guest. */
	char f[800];
	snprintf(f, sizeof f, "%s/hello-from-host", a.share);
	struct vmf_error e;
	ck_assert_int_eq(vmf_write_file_atomic(f, "hi", 2, 0644, &e), 0);

	json_object *ia = vmf_json("inspect %s -o json", a.id), *ib = vmf_json("inspect %s -o json", b.id);
	ck_assert_int_eq(json_object_get_int(path(ia, "guest", "online_cpus")), 2);
	ck_assert_int_eq(json_object_get_int(path(ib, "guest", "online_cpus")), 2);
	/* The VM's PSS, read on a worker for the hand-out and inspect replies. */
	ck_assert_int_gt(json_object_get_int64(path(a.rec, "pss_kib", NULL)), 0);
	ck_assert_int_gt(json_object_get_int64(path(ia, "vm", "pss_kib")), 0);
	/* The added memory: compared with a VM of the base size, since the
	 * kernel keeps part of the base memory for itself. */
	struct got base = {0};
	do_get(&base, "sandbox-base", 1, base_mem);
	ck_assert_int_eq(base.rc, 0);
	json_object *ibase = vmf_json("inspect %s -o json", base.id);
	int64_t kib = json_object_get_int64(path(ia, "guest", "mem_total_kib"));
	int64_t base_kib = json_object_get_int64(path(ibase, "guest", "mem_total_kib"));
	printf("guest MemTotal %lld KiB with +256 MiB, %lld KiB at the base size\n", (long long)kib, (long long)base_kib);
	ck_assert_int_ge(kib - base_kib, 200 * 1024);
	ck_assert_int_eq(json_object_get_int(path(ibase, "guest", "online_cpus")), 1);
	json_object_put(ibase);
	ck_assert_int_eq(vmf(NULL, "release %s", base.id), 0);
	json_object_put(base.rec);
	int64_t skew = json_object_get_int64(path(ia, "guest", "realtime_ns")) -
		       json_object_get_int64(path(ia, "host_realtime_ns", NULL));
	ck_assert_int_lt(llabs(skew), 1000000000LL);
	ck_assert_str_ne(json_object_get_string(path(ia, "guest", "random_hex")),
			 json_object_get_string(path(ib, "guest", "random_hex")));
	json_object *ents = path(ia, "guest", "share_entries");
	bool found = false;
	for (size_t i = 0; i < json_object_array_length(ents); i++)
		found = found || !strcmp(json_object_get_string(json_object_array_get_idx(ents, i)), "hello-from-host");
	ck_assert_msg(found, "share_entries lacks hello-from-host: %s", json_object_to_json_string(ents));
	json_object_put(ia);
	json_object_put(ib);

	/* The pool refills to its target. */
	wait_until(pool_ready() == 2, 120000, "the pool did not refill to 2");

	ck_assert_int_eq(vmf(NULL, "release %s", a.id), 0);
	ck_assert_int_eq(vmf(NULL, "release %s", b.id), 0);
	ck_assert_int_ne(access(a.share, F_OK), 0);
	vmf_refused(a.id, "release %s", a.id); /* gone: a clear error naming it */
	json_object_put(a.rec);
	json_object_put(b.rec);

	/* Four concurrent gets on a pool of two: each succeeds or fails clearly. */
	struct got g[4] = {0};
	pthread_t th[4];
	for (int i = 0; i < 4; i++) {
		snprintf(g[i].id, sizeof g[i].id, "conc-%d", i);
		pthread_create(&th[i], NULL, get_thread, &g[i]);
	}
	int ok = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		if (g[i].rc == 0) {
			ok++;
			ck_assert_int_eq(vmf(NULL, "release %s", g[i].id), 0);
			json_object_put(g[i].rec);
		}
	}
	printf("concurrent gets: %d of 4 succeeded\n", ok);
	ck_assert_int_ge(ok, 2);

	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	poll_until(count_qemu() == 0 && access(sock, F_OK) != 0, 30000);
	ck_assert_int_eq(qemu_gone(), 0);
	ck_assert_int_ne(access(sock, F_OK), 0);
	char vms[700];
	snprintf(vms, sizeof vms, "%s/vms", run);
	ck_assert_int_ne(access(vms, F_OK), 0);
	ck_assert_int_eq(vmf(NULL, "status"), 3);
	assert_daemon_log_clean();
}
END_TEST

START_TEST(bad_requests_fail_clearly)
{
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	struct got g = {0};
	/* traversal in the sandbox id */
	vmf_refused("sandbox id '../x' is invalid",
		    "get --cpus 1 --memory 256 --sandbox ../x --share-dir %s/s --sock-dir %s/k", tmp, tmp);
	/* above the maxima */
	vmf_refused("64 vCPUs", "get --cpus 64 --memory 256 --sandbox ok --share-dir %s/s --sock-dir %s/k", tmp, tmp);
	/* a non-empty share dir is refused and left alone */
	char d[700], f[760];
	snprintf(d, sizeof d, "%s/full", tmp);
	ck_assert_int_eq(mkdir(d, 0700), 0);
	snprintf(f, sizeof f, "%s/keep", d);
	struct vmf_error e;
	ck_assert_int_eq(vmf_write_file_atomic(f, "x", 1, 0600, &e), 0);
	vmf_refused("share_dir|is a directory that is not empty",
		    "get --cpus 1 --memory 256 --sandbox ok --share-dir %s --sock-dir %s/k", d, tmp);
	ck_assert_int_eq(access(f, F_OK), 0);
	/* the daemon still serves */
	do_get(&g, "still-ok", 1, 256);
	ck_assert_int_eq(g.rc, 0);
	json_object_put(g.rec);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

START_TEST(faults_peers_and_latency)
{
	/* status answers while the pool fills (no --wait) */
	ck_assert_int_eq(vmf(NULL, "init --pool 3"), 0);
	double worst = 0;
	int samples = 0;
	struct vmf_wait w = vmf_wait_start(120000);
	while (pool_ready() < 3 && vmf_wait_more(&w)) {
		struct vmf_client *c;
		struct vmf_error e = {0};
		Vmf__Control__Reply *r;
		ck_assert_int_eq(vmf_client_connect(sock, &c, &e), 0);
		int64_t t0 = vmf_monotonic_ns();
		ck_assert_int_eq(vmf_client_status(c, &r, 5000, &e), 0);
		double ms = (vmf_monotonic_ns() - t0) / 1e6;
		worst = ms > worst ? ms : worst;
		samples++;
		vmf__control__reply__free_unpacked(r, NULL);
		vmf_client_close(c);
	}
	printf("status while filling: worst %.1f ms over %d calls\n", worst, samples);
	ck_assert_int_eq(pool_ready(), 3);
	ck_assert(worst < 500);

	/* The socket is 0660; and even a foreign uid that can reach it (file
	 * modes opened up here on purpose) is refused by its credentials. */
	struct stat sst;
	ck_assert_int_eq(stat(sock, &sst), 0);
	ck_assert_int_eq(sst.st_mode & 0777, 0660);
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(sock, 0666), 0);
	pid_t pid = fork();
	if (pid == 0) {
		if (setgid(65534) || setuid(65534))
			_exit(2);
		struct vmf_client *c;
		struct vmf_error e = {0};
		Vmf__Control__Reply *r;
		if (vmf_client_connect(sock, &c, &e) < 0)
			_exit(3);
		int rc = vmf_client_status(c, &r, 5000, &e);
		_exit(rc == -EACCES && strstr(e.msg, "permission denied") ? 0 : 4);
	}
	int st;
	waitpid(pid, &st, 0);
	chmod(sock, 0660);
	chmod(tmp, 0700);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "foreign uid was not refused (%d)", WEXITSTATUS(st));

	/* A pooled VM's QEMU killed: noticed, removed, replaced. */
	json_object *s = vmf_json("status -o json%s", "");
	json_object *v0 = json_object_array_get_idx(path(s, "vms", NULL), 0);
	char victim[64];
	snprintf(victim, sizeof victim, "%s", json_object_get_string(path(v0, "id", NULL)));
	int vpid = json_object_get_int(path(v0, "pid", NULL));
	json_object_put(s);
	int64_t t0 = vmf_now_ms();
	kill(vpid, SIGKILL);
	wait_until(!vm_listed_state(victim)[0], 10000, "the killed pooled VM %s is still listed", victim);
	printf("killed pooled VM noticed and removed in %lld ms\n", (long long)(vmf_now_ms() - t0));
	wait_until(pool_ready() == 3, 60000, "the pool did not replace the killed VM");

	/* A handed-out VM whose QEMU exits is recorded as gone. */
	struct got g = {0};
	do_get(&g, "will-die", 1, 256);
	ck_assert_int_eq(g.rc, 0);
	kill(json_object_get_int(path(g.rec, "pid", NULL)), SIGKILL);
	wait_until(!strcmp(vm_listed_state(g.id), "gone"), 10000, "VM %s whose QEMU died is '%s', not gone", g.id,
		   vm_listed_state(g.id));
	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	ck_assert_int_ne(access(g.share, F_OK), 0);
	json_object_put(g.rec);

	/* A client that gives up mid-GetVM does not leak the VM. */
	struct vmf_client *c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_client_connect(sock, &c, &e), 0);
	Vmf__Control__GetVMRequest req = VMF__CONTROL__GET_VMREQUEST__INIT;
	char sh[700], sk[700];
	snprintf(sh, sizeof sh, "%s/gone-share", tmp);
	snprintf(sk, sizeof sk, "%s/gone-sock", tmp);
	req.vcpus = 2;
	req.memory_mib = 512;
	req.sandbox_id = "impatient";
	req.share_dir = sh;
	req.sock_dir = sk;
	Vmf__Control__Reply *r = NULL;
	ck_assert_int_lt(vmf_client_get_vm(c, &req, &r, 1, &e), 0);
	ck_assert_msg(e.code == ETIMEDOUT && strstr(e.msg, "did not reply in time"), "%s", e.msg);
	vmf_client_close(c);
	bool leaked = true;
	w = vmf_wait_start(30000);
	while (vmf_wait_more(&w)) {
		json_object *st2 = vmf_json("status -o json%s", "");
		json_object *vms = path(st2, "vms", NULL);
		leaked = false;
		bool busy = false;
		for (size_t i = 0; i < json_object_array_length(vms); i++) {
			json_object *v = json_object_array_get_idx(vms, i);
			const char *state = json_object_get_string(path(v, "state", NULL));
			leaked = leaked || !strcmp(state, "assigned");
			busy = busy || !strcmp(state, "handing-out") || !strcmp(state, "releasing");
		}
		json_object_put(st2);
		if (!busy && !leaked)
			break;
	}
	ck_assert_msg(!leaked, "a VM stayed assigned after its client left");
	ck_assert_int_ne(access(sh, F_OK), 0);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
}
END_TEST

START_TEST(template_commands)
{
	char *out;
	ck_assert_int_eq(vmf(&out, "template build --cpus 1 --memory 256 --max-cpus 2 --max-memory 512"), 0);
	printf("template build: %s", out);
	ck_assert_ptr_nonnull(strstr(out, "ready"));
	free(out);
	json_object *l = vmf_json("template list -o json%s", "");
	ck_assert_int_eq(json_object_array_length(l), 1);
	json_object *t = json_object_array_get_idx(l, 0);
	ck_assert_str_eq(json_object_get_string(path(t, "state", NULL)), "ready");
	ck_assert_int_eq(json_object_get_int(path(t, "memory_mib", NULL)), 256);
	ck_assert_int_eq(json_object_get_int64(path(t, "memory_size", NULL)), 256ll << 20);
	ck_assert_int_gt(json_object_array_length(path(t, "capabilities", NULL)), 0);
	char id[80];
	snprintf(id, sizeof id, "%s", json_object_get_string(path(t, "id", NULL)));
	json_object_put(l);
	/* gc keeps a template of the current kernel, initrd and QEMU, but
	 * removes files no record points to. */
	char orphan[700];
	snprintf(orphan, sizeof orphan, "%s/templates/%064d", state, 7);
	struct vmf_error e;
	ck_assert_int_eq(vmf_mkdir_p(orphan, 0700, &e), 0);
	ck_assert_int_eq(vmf(NULL, "template gc"), 0);
	ck_assert_int_ne(access(orphan, F_OK), 0);
	l = vmf_json("template list -o json%s", "");
	ck_assert_int_eq(json_object_array_length(l), 1);
	json_object_put(l);
	/* rm refuses what is not an id, then removes the template and its files. */
	vmf_refused("../../etc", "template rm ../../etc");
	ck_assert_int_eq(vmf(NULL, "template rm %s", id), 0);
	l = vmf_json("template list -o json%s", "");
	ck_assert_int_eq(json_object_array_length(l), 0);
	json_object_put(l);
	char dir[800];
	snprintf(dir, sizeof dir, "%s/templates/%s", state, id);
	ck_assert_int_ne(access(dir, F_OK), 0);
	vmf_refused(id, "template rm %s", id);
	/* usage errors: exit 2 */
	ck_assert_int_eq(vmf(NULL, "no-such-command"), 2);
	ck_assert_int_eq(vmf(NULL, "get --cpus lots"), 2);
	ck_assert_int_eq(vmf(&out, "help"), 0);
	ck_assert_ptr_nonnull(strstr(out, "template gc"));
	ck_assert_ptr_nonnull(strstr(out, "destroy"));
	free(out);
}
END_TEST

START_TEST(restart_adopts_pooled_and_assigned_vms)
{
	ck_assert_int_eq(vmf(NULL, "init --pool 2 --wait"), 0);
	struct got g = {0};
	do_get(&g, "survivor", 1, 256);
	ck_assert_int_eq(g.rc, 0);
	wait_until(pool_ready() == 2, 60000, "the pool did not refill to 2");
	char pooled[256], assigned[256], pooled2[256], assigned2[256];
	pids_in_state("ready", pooled, sizeof pooled);
	pids_in_state("assigned", assigned, sizeof assigned);

	kill_daemon_hard();
	ck_assert_int_eq(count_qemu(), 3); /* VMs outlive the daemon */
	ck_assert_int_eq(vmf(NULL, "init --pool 2 --wait"), 0);
	pids_in_state("ready", pooled2, sizeof pooled2);
	pids_in_state("assigned", assigned2, sizeof assigned2);
	printf("pooled before %s/after %s; assigned before %s/after %s\n", pooled, pooled2, assigned, assigned2);
	ck_assert_str_eq(pooled, pooled2);     /* adopted, not cloned again */
	ck_assert_str_eq(assigned, assigned2);
	ck_assert_int_eq(count_qemu(), 3);
	json_object *i = vmf_json("inspect %s -o json", g.id);
	ck_assert_int_eq(json_object_get_int(path(i, "guest", "online_cpus")), 1);
	json_object_put(i);
	json_object_put(g.rec);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

START_TEST(crash_at_each_fault_point_recovers)
{
	REQUIRE_FAULT_BUILD();
	static const char *points[] = { "after-migrate", "mid-clone", "mid-handout", "mid-release" };
	for (int k = 0; k < 4; k++) {
		const char *pt = points[k];
		/* A short name: the run dir below it has VMF_RUN_DIR_MAX characters. */
		char sub[8];
		snprintf(sub, sizeof sub, "f%d", k);
		use_dirs(sub);
		struct got g = {0};
		fault = pt;
		int rc = vmf(NULL, "init --pool 2 --wait");
		/* The daemon dies at the point: the client sees it go. */
		if (!strcmp(pt, "mid-handout")) {
			ck_assert_int_eq(rc, 0);
			do_get(&g, "crash-get", 2, 512);
			ck_assert_int_eq(g.rc, 1);
			assert_words(cli_stderr(), "closed the connection", pt);
		} else if (!strcmp(pt, "mid-release")) {
			ck_assert_int_eq(rc, 0);
			do_get(&g, "crash-release", 1, 256);
			ck_assert_int_eq(g.rc, 0);
			vmf_refused("closed the connection", "release %s", g.id);
			json_object_put(g.rec);
		} else {
			ck_assert_int_eq(rc, 1); /* the daemon died during init */
			assert_words(cli_stderr(), "daemon", pt);
		}
		fault = NULL;
		wait_until(vmf(NULL, "status") == 3, 10000, "the daemon killed at %s still answers", pt);
		if (!strcmp(pt, "after-migrate")) {
			/* A template cut off before its record is not ready. */
			json_object *l = vmf_json("template list -o json%s", "");
			ck_assert_int_eq(json_object_array_length(l), 0);
			json_object_put(l);
		}

		ck_assert_int_eq(vmf(NULL, "init --pool 2 --wait"), 0);
		int vms = vm_count(), qemus = count_qemu();
		printf("%s: after restart %d VMs, %d QEMU processes, pool ready %d\n", pt, vms, qemus, pool_ready());
		ck_assert_int_eq(pool_ready(), 2);
		ck_assert_int_eq(qemus, vms); /* no orphan */
		ck_assert_int_eq(vms, 2);     /* nothing half-handed-out or half-released */
		if (g.share[0])
			ck_assert_int_ne(access(g.share, F_OK), 0);
		json_object *l = vmf_json("template list -o json%s", "");
		ck_assert_int_eq(json_object_array_length(l), 1);
		ck_assert_str_eq(json_object_get_string(path(json_object_array_get_idx(l, 0), "state", NULL)), "ready");
		json_object_put(l);
		ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
		ck_assert_int_eq(qemu_gone(), 0);
	}
}
END_TEST

/* Why tenant users could not be made (main()), or NULL: they exist. */
static const char *no_tenants;

/* A reply frame's error code and message; -1 on EOF or junk.  No check
 * assertions here: hostile_frames() runs in a tenant's child too. */
static int
frame_reply(int fd, char *msg, size_t n)
{
	uint8_t *buf;
	size_t len;
	struct vmf_error e = {0};
	msg[0] = '\0';
	if (vmf_frame_read(fd, &buf, &len, 1 << 20, vmf_now_ms() + 10000, &e) < 0)
		return -1;
	Vmf__Control__Reply *r = vmf__control__reply__unpack(NULL, len, buf);
	free(buf);
	if (!r)
		return -1;
	int code = (int)r->error_code;
	snprintf(msg, n, "%s", r->error_message ? r->error_message : "");
	vmf__control__reply__free_unpacked(r, NULL);
	return code;
}

static int
frame_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

#define FRAME_CHECK(cond, ...)                                                                                   \
	do {                                                                                                     \
		if (!(cond)) {                                                                                   \
			snprintf(msg, n, __VA_ARGS__);                                                           \
			return -1;                                                                               \
		}                                                                                                \
	} while (0)

/* Frames no client library sends, as whoever calls (root here, a tenant in
 * a child: the daemon's peer check then runs for each connection): each
 * refused with its errno and a sentence saying why, the daemon unharmed.
 * 0, or -1 with what went wrong in msg. */
static int
hostile_frames(const void *arg, char *msg, size_t n)
{
	(void)arg;
	struct vmf_error e = {0};
	char why[1100];
	/* unknown protocol version: a clear error, the connection stays usable */
	int fd = frame_connect();
	FRAME_CHECK(fd >= 0, "cannot connect to %s: %s", sock, strerror(errno));
	Vmf__Control__Request req = VMF__CONTROL__REQUEST__INIT;
	Vmf__Control__StatusRequest st = VMF__CONTROL__STATUS_REQUEST__INIT;
	req.protocol_version = 99;
	req.body_case = VMF__CONTROL__REQUEST__BODY_STATUS;
	req.status = &st;
	uint8_t buf[64];
	size_t len = vmf__control__request__pack(&req, buf);
	FRAME_CHECK(vmf_frame_write(fd, buf, len, vmf_now_ms() + 1000, &e) == 0, "write: %s", e.msg);
	int code = frame_reply(fd, why, sizeof why);
	FRAME_CHECK(code == EPROTO && strstr(why, "99"), "version 99: %d %s", code, why);
	/* version 0 too; 1 and 2 are both spoken */
	req.protocol_version = 0;
	len = vmf__control__request__pack(&req, buf);
	FRAME_CHECK(vmf_frame_write(fd, buf, len, vmf_now_ms() + 1000, &e) == 0, "write: %s", e.msg);
	code = frame_reply(fd, why, sizeof why);
	FRAME_CHECK(code == EPROTO && strstr(why, "version"), "version 0: %d %s", code, why);
	for (uint32_t v = 1; v <= 2; v++) {
		req.protocol_version = v;
		len = vmf__control__request__pack(&req, buf);
		FRAME_CHECK(vmf_frame_write(fd, buf, len, vmf_now_ms() + 1000, &e) == 0, "write: %s", e.msg);
		code = frame_reply(fd, why, sizeof why);
		FRAME_CHECK(code == 0, "version %u: %d %s", v, code, why);
	}
	close(fd);
	/* a 4 GiB length prefix: refused before allocating, connection closed */
	fd = frame_connect();
	uint8_t h[4] = { 0xff, 0xff, 0xff, 0xff };
	FRAME_CHECK(write(fd, h, 4) == 4, "write: %s", strerror(errno));
	code = frame_reply(fd, why, sizeof why);
	FRAME_CHECK(code == EMSGSIZE && strstr(why, "4294967295"), "a 4 GiB frame: %d %s", code, why);
	FRAME_CHECK(closed_by_peer(fd), "a 4 GiB frame: the connection stays open");
	close(fd);
	/* garbage that is not a request */
	fd = frame_connect();
	static const uint8_t junk[] = { 0, 0, 0, 3, 0xff, 0xff, 0xff };
	FRAME_CHECK(write(fd, junk, sizeof junk) == (ssize_t)sizeof junk, "write: %s", strerror(errno));
	code = frame_reply(fd, why, sizeof why);
	FRAME_CHECK(code == EBADMSG && strstr(why, "request"), "junk: %d %s", code, why);
	close(fd);
	/* a truncated frame, then the client leaves */
	fd = frame_connect();
	static const uint8_t cut[] = { 0, 0, 0, 100, 8, 1 };
	FRAME_CHECK(write(fd, cut, sizeof cut) == (ssize_t)sizeof cut, "write: %s", strerror(errno));
	close(fd);
	/* the daemon still serves */
	struct vmf_client *c;
	Vmf__Control__Reply *r = NULL;
	FRAME_CHECK(vmf_client_connect(sock, &c, &e) == 0, "%s", e.msg);
	int rc = vmf_client_status(c, &r, 10000, &e);
	vmf_client_close(c);
	FRAME_CHECK(rc == 0, "status after the hostile frames: %s", e.msg);
	vmf__control__reply__free_unpacked(r, NULL);
	return 0;
}

START_TEST(hostile_frames_and_paths)
{
	bool tenants = !no_tenants;
	if (tenants) {
		ck_assert_int_eq(chmod(tmp, 0711), 0);
		start_tenant_daemon("");
	} else {
		ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	}
	struct vmf_error e = {0};
	char msg[2048];
	ck_assert_msg(hostile_frames(NULL, msg, sizeof msg) == 0, "as root: %s", msg);
	/* As a tenant: the peer is checked on a worker for every connection. */
	if (tenants)
		ck_assert_msg(as_tenant(tu.uid_a, hostile_frames, NULL, msg, sizeof msg) == 0, "as a tenant: %s", msg);
	else
		vmf_test_skip("the frames as a tenant: %s", no_tenants);

	/* A share_dir that is a planted symlink to elsewhere: the link itself is
	 * replaced; its target is neither followed nor touched. */
	char victim[700], vf[760], link[700], k[700];
	snprintf(victim, sizeof victim, "%s/victim", tmp);
	ck_assert_int_eq(mkdir(victim, 0700), 0);
	snprintf(vf, sizeof vf, "%s/precious", victim);
	ck_assert_int_eq(vmf_write_file_atomic(vf, "p", 1, 0600, &e), 0);
	snprintf(link, sizeof link, "%s/planted", tmp);
	ck_assert_int_eq(symlink(victim, link), 0);
	snprintf(k, sizeof k, "%s/k1", tmp);
	char *out;
	ck_assert_int_eq(vmf(&out, "get --cpus 1 --memory 256 --sandbox planted --share-dir %s --sock-dir %s -o json", link, k), 0);
	json_object *rec = json_tokener_parse(out);
	free(out);
	char target[700];
	ssize_t tl = readlink(link, target, sizeof target - 1);
	ck_assert_int_gt(tl, 0);
	target[tl] = 0;
	ck_assert_str_eq(target, json_object_get_string(path(rec, "share_dir", NULL)));
	ck_assert_int_eq(access(vf, F_OK), 0);
	/* A parent directory that goes through a symlink is refused. */
	char viadir[700], via[760];
	snprintf(viadir, sizeof viadir, "%s/via", tmp);
	ck_assert_int_eq(symlink(victim, viadir), 0);
	snprintf(via, sizeof via, "%s/share", viadir);
	vmf_refused("goes through a symlink", "get --cpus 1 --memory 256 --sandbox via --share-dir %s --sock-dir %s/k2",
		    via, tmp);
	/* The victim dir holds its file, unchanged, and nothing else: nothing
	 * was created (or removed) through either link. */
	char *kept = NULL;
	ck_assert_int_eq(vmf_read_file(vf, &kept, NULL, 16, NULL), 0);
	ck_assert_str_eq(kept, "p");
	free(kept);
	ck_assert_int_eq(vmf_test_dir_entries(victim), 1);
	/* relative paths */
	vmf_refused("is not an absolute path", "get --cpus 1 --memory 256 --sandbox rel --share-dir rel/s --sock-dir rel/k");
	/* still serving */
	ck_assert_int_eq(vmf(NULL, "status"), 0);
	ck_assert_int_eq(vmf(NULL, "release %s", json_object_get_string(path(rec, "id", NULL))), 0);
	json_object_put(rec);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
}
END_TEST

/* The daemon's open fds once the first pool is full and idle: every
 * pooled VM holds its QMP, agent and pidfd descriptors, a filling one
 * fewer, and a client's connection lingers until the loop sees its EOF;
 * so wait for a full pool, then take the least of a few readings. */
static bool
pool_idle(int target)
{
	json_object *s = vmf_json("status -o json%s", "");
	json_object *p0 = json_object_array_get_idx(path(s, "pools", NULL), 0);
	bool idle = json_object_get_int(path(p0, "ready", NULL)) == target &&
		    json_object_get_int(path(p0, "filling", NULL)) == 0;
	json_object_put(s);
	return idle;
}

static int
steady_fds(int pid, int target)
{
	wait_until(pool_idle(target), 60000, "the pool did not settle at %d ready VMs", target);
	int least = vmf_proc_fd_count(pid);
	for (int i = 0; i < 10; i++) {
		poll(NULL, 0, 20);
		int n = vmf_proc_fd_count(pid);
		least = n < least ? n : least;
	}
	return least;
}

START_TEST(churn_keeps_fds_rss_flat)
{
	const char *env = getenv("VMFACTORY_CHURN");
	int cycles = env ? atoi(env) : 200;
	ck_assert_int_eq(vmf(NULL, "init --pool 2 --wait"), 0);
	int pid = daemon_pid();
	/* Warm up first: the first hand-outs allocate the daemon's steady state. */
	int fds0 = 0;
	uint64_t rss0 = 0;
	int64_t t0 = vmf_now_ms();
	for (int i = 0; i < cycles + 10; i++) {
		if (i == 10) {
			fds0 = steady_fds(pid, 2);
			rss0 = vmf_proc_rss_kib(pid);
		}
		struct got g = {0};
		char name[32];
		snprintf(name, sizeof name, "churn-%d", i);
		do_get(&g, name, 1, 256);
		ck_assert_msg(g.rc == 0, "get %d failed", i);
		ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
		json_object_put(g.rec);
	}
	int fds1 = steady_fds(pid, 2);
	uint64_t rss1 = vmf_proc_rss_kib(pid);
	printf("churn: %d get/release cycles in %.1f s; daemon fds %d -> %d, RSS %llu -> %llu KiB\n", cycles,
	       (vmf_now_ms() - t0) / 1000.0, fds0, fds1, (unsigned long long)rss0, (unsigned long long)rss1);
	ck_assert_int_le(fds1, fds0);
	/* Allocator noise is a few hundred KiB; a leak per cycle would be more.
	 * Under ASan freed memory stays in its quarantine, and TSan's shadow
	 * and history grow with every access, so RSS says nothing there;
	 * LeakSanitizer's report at daemon exit is checked instead. */
	if (!UNDER_ASAN && !UNDER_TSAN)
		ck_assert_uint_le(rss1, rss0 + 2048);
	ck_assert_int_eq(count_qemu(), 2);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	assert_daemon_log_clean();
}
END_TEST

START_TEST(failing_template_backs_off_and_daemon_keeps_serving)
{
	/* A kernel QEMU cannot load: every template boot fails. */
	char bad[700];
	snprintf(bad, sizeof bad, "%s/bad-vmlinuz", tmp);
	FILE *f = fopen(bad, "w");
	ck_assert_ptr_nonnull(f);
	fputs("this is not a kernel\n", f);
	fclose(f);
	char extra[800], log[700];
	snprintf(extra, sizeof extra, "--pool 1 --kernel %s", bad);
	snprintf(log, sizeof log, "%s/failing.log", tmp);
	pid_t pid = start_foreground(sock, state, log, extra);
	/* Failures are spaced by the backoff (1 s, 2 s, ...), and the daemon
	 * answers throughout. */
	int64_t seen[4] = {0};
	char last[600] = "";
	struct vmf_wait w = vmf_wait_start(120000);
	int failed = 0;
	while (failed < 3 && vmf_wait_more(&w)) {
		int f2 = pool_failures(sock, last, sizeof last);
		if (f2 > failed && f2 <= 3)
			for (int k = failed + 1; k <= f2; k++)
				seen[k] = vmf_now_ms();
		if (f2 > failed)
			failed = f2;
	}
	printf("failing template: failures at +%lld ms, +%lld ms after the first; last error: %s\n",
	       (long long)(seen[2] - seen[1]), (long long)(seen[3] - seen[1]), last);
	ck_assert_int_ge(failed, 3);
	ck_assert_msg(strstr(last, "QEMU") != NULL, "last error does not name QEMU: %s", last);
	/* Backoff: 1 s before the second attempt, 2 s more before the third
	 * (each attempt itself takes time, so these are lower bounds). */
	ck_assert_int_ge(seen[2] - seen[1], 900);
	ck_assert_int_ge(seen[3] - seen[2], 1900);
	/* A GetVM meanwhile gets a clear error naming the failing template. */
	char *out;
	struct got g = {0};
	do_get(&g, "while-failing", 1, 256);
	ck_assert_int_eq(g.rc, 1);
	printf("GetVM while the template fails: %s", cli_stderr());
	assert_words(cli_stderr(), "template|QEMU", "GetVM while the template fails");
	ck_assert_int_eq(vmf(&out, "status"), 0);
	free(out);
	ck_assert_int_eq(kill(pid, 0), 0);
	stop_daemon(pid);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

/* Unmounts dir once nothing holds it: a QEMU just killed leaves /proc
 * (what vmf_test_kill_under watches) a moment before its files close. */
static int
umount_settled(const char *dir)
{
	char cmd[800];
	snprintf(cmd, sizeof cmd, "umount %s 2>/dev/null", dir);
	int r;
	poll_until((r = system(cmd)) == 0, 10000);
	return r;
}

/* Mounts a fresh ext4 of size_mib (a sparse file in tmp) on dir. */
static int
mount_loop_fs(const char *dir, int size_mib)
{
	char cmd[2000];
	snprintf(cmd, sizeof cmd,
		 "rm -f %s/fs.img && truncate -s %dM %s/fs.img && mkfs.ext4 -q -F %s/fs.img >/dev/null 2>&1 && "
		 "mount -o loop %s/fs.img %s 2>/dev/null && chmod 0700 %s",
		 tmp, size_mib, tmp, tmp, tmp, dir, dir);
	return system(cmd);
}

START_TEST(full_disk_fails_clearly_and_catalog_survives)
{
	/* A state dir on a small tmpfs: the template's RAM file cannot fit. */
	char small[700];
	snprintf(small, sizeof small, "%s/small", svc);
	ck_assert_int_eq(mkdir(small, 0700), 0);
	char cmd[1000];
	/* ext4 on a loop device, not tmpfs: tmpfs allocates pages when a
	 * private mapping reads a hole, so a full tmpfs kills clones with
	 * SIGBUS, which no state dir on a real disk does. */
	if (mount_loop_fs(small, 64) != 0) {
		vmf_test_skip("cannot mount a loop file system here (needs CAP_SYS_ADMIN)");
		return;
	}
	char log[700];
	snprintf(log, sizeof log, "%s/full.log", tmp);
	pid_t pid = start_foreground(sock, small, log, "--pool 1");
	char last[600] = "";
	int failed = 0;
	poll_until((failed = pool_failures(sock, last, sizeof last)) >= 1, 60000);
	printf("full disk: %s\n", last);
	ck_assert_int_ge(failed, 1);
	ck_assert_msg(strstr(last, "space") != NULL, "error does not say the disk is full: %s", last);
	stop_daemon(pid);
	/* No half-built template directory is left. */
	snprintf(cmd, sizeof cmd, "test -z \"$(find %s/templates -mindepth 1 -maxdepth 1 2>/dev/null)\"", small);
	ck_assert_int_eq(system(cmd), 0);

	/* Room for the template, then the disk filled under a running pool:
	 * hand-outs (which write the catalog) fail clearly or succeed, the
	 * daemon stays up, and serves again once space is back. */
	ck_assert_int_eq(umount_settled(small), 0);
	ck_assert_int_eq(mount_loop_fs(small, 400), 0);
	pid = start_foreground(sock, small, log, "--pool 1");
	wait_until(daemon_answers() && pool_ready() >= 1, 120000, "the pool on the roomier disk did not fill");
	snprintf(cmd, sizeof cmd, "dd if=/dev/zero of=%s/filler bs=1M count=512 2>/dev/null", small);
	ck_assert_int_ne(system(cmd), 0); /* dd stops at ENOSPC */
	struct got g = {0};
	do_get(&g, "disk-full", 1, 256);
	const char *why = cli_stderr();
	printf("GetVM on a full disk: %s\n", g.rc == 0 ? "succeeded (LMDB reused free pages)" : why);
	if (g.rc != 0)
		ck_assert_msg(strstr(why, "full") || strstr(why, "space"), "unclear error: %s", why);
	ck_assert_int_eq(kill(pid, 0), 0);
	snprintf(cmd, sizeof cmd, "%s/filler", small);
	ck_assert_int_eq(unlink(cmd), 0);
	if (g.rc == 0)
		ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	json_object_put(g.rec);
	struct got g2 = {0};
	do_get(&g2, "disk-back", 1, 256);
	ck_assert_int_eq(g2.rc, 0);
	ck_assert_int_eq(vmf(NULL, "release %s", g2.id), 0);
	json_object_put(g2.rec);
	stop_daemon(pid);
	/* Pooled VMs outlive a daemon stop by design; clear them. */
	vmf_test_kill_qemu_under(tmp);

	char *out;
	char opts[1600];
	snprintf(opts, sizeof opts, "template list --state-dir %s -o json", small);
	ck_assert_int_eq(vmf(&out, "%s", opts), 0);
	json_object *l = json_tokener_parse(out);
	ck_assert_ptr_nonnull(l);
	ck_assert_int_eq(json_object_array_length(l), 1);
	ck_assert_str_eq(json_object_get_string(path(json_object_array_get_idx(l, 0), "state", NULL)), "ready");
	json_object_put(l);
	free(out);
	ck_assert_int_eq(umount_settled(small), 0);
}
END_TEST

START_TEST(runas_drops_qemu_privileges)
{
	if (geteuid() != 0) {
		vmf_test_skip("only root can start QEMU as another user");
		return;
	}
	struct passwd *pw = getpwnam("nobody");
	ck_assert_ptr_nonnull(pw);
	uid_t uid = pw->pw_uid;
	vmf_refused("no-such-user-here", "init --pool 1 --runas no-such-user-here");
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --runas nobody --wait"), 0);
	struct got g = {0};
	do_get(&g, "unprivileged", 2, 512);
	ck_assert_int_eq(g.rc, 0);
	int pid = json_object_get_int(path(g.rec, "pid", NULL));
	char p[64], *st = NULL;
	snprintf(p, sizeof p, "/proc/%d/status", pid);
	ck_assert_int_eq(vmf_read_file(p, &st, NULL, 1 << 16, NULL), 0);
	char want[64];
	snprintf(want, sizeof want, "Uid:\t%u\t%u\t%u\t%u", uid, uid, uid, uid);
	ck_assert_msg(strstr(st, want) != NULL, "QEMU does not run as nobody: %s", st);
	free(st);
	/* The share it serves (through the sandbox's link) is nobody's. */
	struct stat sst;
	ck_assert_int_eq(stat(g.share, &sst), 0);
	ck_assert_int_eq(sst.st_uid, uid);
	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	json_object_put(g.rec);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

/* LMDB's map full (injected: every catalog write fails with MDB_MAP_FULL):
 * the template cannot be recorded, the error says so, the daemon serves on
 * and leaves no template files behind. */
START_TEST(full_catalog_fails_clearly)
{
	char log[700];
	snprintf(log, sizeof log, "%s/catalog-full.log", tmp);
	setenv("VMFACTORY_FAULT", "catalog-full", 1);
	pid_t pid = start_foreground(sock, state, log, "--pool 1");
	unsetenv("VMFACTORY_FAULT");
	char last[600] = "";
	int failed = 0;
	poll_until((failed = pool_failures(sock, last, sizeof last)) >= 1, 120000);
	printf("catalog full: %s\n", last);
	ck_assert_int_ge(failed, 1);
	ck_assert_msg(strstr(last, "catalog") && strstr(last, "is full"), "unclear error: %s", last);
	struct got g = {0};
	do_get(&g, "catalog-full", 1, 256);
	ck_assert_int_eq(g.rc, 1);
	assert_words(cli_stderr(), "template", "GetVM while the catalog is full");
	ck_assert_int_eq(kill(pid, 0), 0);
	stop_daemon(pid);
	char cmd[800];
	snprintf(cmd, sizeof cmd, "test -z \"$(find %s/templates -mindepth 1 -maxdepth 1 2>/dev/null)\"", state);
	ck_assert_int_eq(system(cmd), 0);
	json_object *l = vmf_json("template list -o json%s", "");
	ck_assert_int_eq(json_object_array_length(l), 0);
	json_object_put(l);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

START_TEST(idle_vms_are_replaced_and_metrics_scraped)
{
	/* init --wait gives up at its deadline, naming the daemon it leaves
	 * running (here the template build alone takes longer than 1 s). */
	vmf_refused("within 1 s; it keeps running", "init --pool 1 --wait --timeout 1");
	/* The daemon may still be probing the accelerator: the socket is not
	 * up yet. */
	wait_until(daemon_answers() && pool_ready() == 1, 120000, "the pool of the daemon init left did not fill");
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);

	int port = free_port();
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --max-idle 2 --wait --metrics-listen 127.0.0.1:%d", port), 0);
	json_object *s = vmf_json("status -o json%s", "");
	char first[64];
	snprintf(first, sizeof first, "%s",
		 json_object_get_string(path(json_object_array_get_idx(path(s, "vms", NULL), 0), "id", NULL)));
	json_object_put(s);
	int64_t t0 = vmf_now_ms();
	bool replaced = false;
	struct vmf_wait w = vmf_wait_start(60000);
	while (!replaced && vmf_wait_more(&w)) {
		s = vmf_json("status -o json%s", "");
		json_object *vms = path(s, "vms", NULL);
		for (size_t i = 0; i < json_object_array_length(vms); i++) {
			json_object *v = json_object_array_get_idx(vms, i);
			if (strcmp(json_object_get_string(path(v, "id", NULL)), first) &&
			    !strcmp(json_object_get_string(path(v, "state", NULL)), "ready"))
				replaced = true;
		}
		json_object_put(s);
	}
	printf("idle VM replaced after %lld ms (limit 2 s)\n", (long long)(vmf_now_ms() - t0));
	ck_assert(replaced);
	ck_assert_int_ge(vmf_now_ms() - t0, 1000);
	ck_assert_str_eq(vm_listed_state(first), "");

	/* Metrics: scraped as Prometheus would, after one hand-out. */
	struct got g = {0};
	do_get(&g, "scraped", 1, 256);
	ck_assert_int_eq(g.rc, 0);
	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	json_object_put(g.rec);
	char *m = http_get(port, "/metrics");
	static const char *const want[] = {
		" 200 OK\r\n", "text/plain; version=0.0.4",
		"# TYPE vmfactory_pool_ready gauge", "vmfactory_pool_target{pool=\"default\"",
		"vmfactory_requests_total 1\n", "vmfactory_hits_total 1\n", "vmfactory_errors_total 0\n",
		"vmfactory_handout_seconds_bucket{le=\"+Inf\"} 1\n", "vmfactory_handout_seconds_count 1\n",
		"vmfactory_handout_step_seconds_bucket{step=\"resume\",le=\"+Inf\"} 1\n",
		"vmfactory_template_build_seconds_count", "vmfactory_clone_seconds_count",
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		ck_assert_msg(strstr(m, want[i]) != NULL, "metrics lack '%s':\n%.2000s", want[i], m);
	free(m);
	m = http_get(port, "/other");
	ck_assert_msg(strstr(m, " 404 ") != NULL, "%.300s", m);
	free(m);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

/* `vmfactory daemon --config` as systemd runs it (Type=notify): two pools
 * from the config file, READY=1 on $NOTIFY_SOCKET once both templates are
 * built and the socket answers. */
START_TEST(systemd_notify_with_config_pools)
{
	char conf[700], note[700], logp[700];
	snprintf(conf, sizeof conf, "%s/vmfactory.conf", tmp);
	snprintf(note, sizeof note, "%s/notify", tmp);
	snprintf(logp, sizeof logp, "%s/daemon.log", tmp);
	FILE *f = fopen(conf, "w");
	ck_assert_ptr_nonnull(f);
	/* tcg: the same on every host (KVM inside a VM may be unusable). */
	/* "private" first: an unnamed request must still prefer "shared". */
	fputs("[daemon]\nlog_level = info\n[hypervisor]\naccelerator = tcg\n[pool private]\nsize = 0\n"
	      "share_memory = no\n[pool shared]\nsize = 1\n", f);
	fclose(f);
	int nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof a.sun_path, "%s", note);
	ck_assert_int_eq(bind(nfd, (struct sockaddr *)&a, sizeof a), 0);

	char env_note[800];
	snprintf(env_note, sizeof env_note, "NOTIFY_SOCKET=%s", note);
	const char *envp[256];
	int ne = 0;
	for (char **e = environ; *e && ne < 250; e++)
		if (strncmp(*e, "NOTIFY_SOCKET=", 14))
			envp[ne++] = *e;
	envp[ne++] = env_note;
	envp[ne] = NULL;
	char *argv[] = { exe, (char *)"daemon", (char *)"--config", conf, (char *)"--socket", sock,
			 (char *)"--state-dir", state, (char *)"--run-dir", run, NULL };
	int lfd = open(logp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, lfd, 2);
	pid_t pid;
	ck_assert_int_eq(posix_spawn(&pid, exe, &fa, NULL, argv, (char *const *)envp), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(lfd);

	char msg[1100] = "";
	int statuses = 0;
	int64_t deadline = vmf_now_ms() + 600000;
	while (!strstr(msg, "READY=1") && vmf_now_ms() < deadline) {
		struct pollfd pfd = { nfd, POLLIN, 0 };
		if (poll(&pfd, 1, 1000) <= 0) {
			ck_assert_msg(waitpid(pid, NULL, WNOHANG) == 0, "the daemon exited before READY=1; see %s", logp);
			continue;
		}
		ssize_t n = recv(nfd, msg, sizeof msg - 1, 0);
		ck_assert_int_gt(n, 0);
		msg[n] = '\0';
		statuses += strncmp(msg, "STATUS=", 7) == 0;
	}
	ck_assert_msg(strstr(msg, "READY=1"), "no READY=1 within 600 s; last: %s", msg);
	printf("systemd: %d STATUS updates, then: %s\n", statuses, msg);
	ck_assert_ptr_nonnull(strstr(msg, "2 pools"));
	ck_assert_int_gt(statuses, 0);
	/* Ready means answering, with both templates built. */
	json_object *s = vmf_json("status -o json%s", "");
	json_object *pools = path(s, "pools", NULL), *tpls = path(s, "templates", NULL);
	ck_assert_int_eq(json_object_array_length(pools), 2);
	ck_assert_int_eq(json_object_array_length(tpls), 2);
	json_object *priv = json_object_array_get_idx(pools, 0);
	ck_assert_str_eq(json_object_get_string(path(priv, "name", NULL)), "private");
	ck_assert(!json_object_get_boolean(path(priv, "share_memory", NULL)));
	ck_assert_int_eq(json_object_get_int(path(priv, "memory_mib", NULL)), 256);
	ck_assert_int_eq(json_object_get_int(path(priv, "target", NULL)), 0);
	char priv_tpl[80];
	snprintf(priv_tpl, sizeof priv_tpl, "%s", json_object_get_string(path(priv, "template_id", NULL)));
	json_object_put(s);
	/* Both pools serve 1 vCPU / 256 MiB: unnamed, the request goes to the
	 * one that shares memory; named, only "private" (an empty pool: a
	 * clone on demand) may serve it. */
	struct got g = {0};
	do_get(&g, "ops-any", 1, 256);
	ck_assert_msg(g.rc == 0, "get 1 vCPU / 256 MiB failed");
	ck_assert_str_eq(json_object_get_string(path(g.rec, "pool", NULL)), "shared");
	ck_assert_str_ne(json_object_get_string(path(g.rec, "template_id", NULL)), priv_tpl);
	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	json_object_put(g.rec);
	char *out;
	ck_assert_int_eq(vmf(&out, "get --cpus 1 --memory 256 --pool private --sandbox ops-private --share-dir %s/p1 "
			     "--sock-dir %s/p2 --timeout 120 -o json", tmp, tmp), 0);
	json_object *rec = json_tokener_parse(out);
	free(out);
	ck_assert_ptr_nonnull(rec);
	ck_assert_str_eq(json_object_get_string(path(rec, "pool", NULL)), "private");
	ck_assert_str_eq(json_object_get_string(path(rec, "template_id", NULL)), priv_tpl);
	ck_assert_int_eq(vmf(NULL, "release %s", json_object_get_string(path(rec, "id", NULL))), 0);
	json_object_put(rec);
	/* A name that is not a pool, one that is not a name, and a size the
	 * named pool does not serve: each refused, naming what is wrong. */
	static const struct { const char *args, *msg; } bad[] = {
		{ "--pool nosuch --cpus 1 --memory 256", "no pool named 'nosuch' in this daemon (pools: private, shared)" },
		{ "--pool ../x --cpus 1 --memory 256", "pool name is invalid" },
		{ "--pool private --cpus 8 --memory 256", "pool private does not serve 8 vCPUs and 256 MiB: it allows "
							  "1-4 vCPUs and 256-2048 MiB" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		vmf_refused(bad[i].msg, "get %s --sandbox ops-bad --share-dir %s/b1 --sock-dir %s/b2", bad[i].args, tmp,
			    tmp);
	vmf_refused("no pool serves 8 vCPUs and 256 MiB: pools allow private 1-4 vCPUs and 256-2048 MiB; shared 1-4 "
		    "vCPUs and 256-2048 MiB", "get --cpus 8 --memory 256 --sandbox ops-big --share-dir %s/x --sock-dir %s/y",
		    tmp, tmp);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	int st = 0;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "daemon status %d", st);
	ck_assert_int_eq(qemu_gone(), 0);
	close(nfd);
}
END_TEST

static void
own_case_(Suite *s, const char *name, const TTest *t, const char *tname)
{
	const char *only = getenv("VMFACTORY_TEST");
	if (only && strcmp(only, tname))
		return;
	TCase *tc = tcase_create(name);
	tcase_set_tags(tc, VMF_TEST_OWN_CASE);
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 900);
	tcase_add_test(tc, t);
	suite_add_tcase(s, tc);
}
#define own_case(s, name, t) own_case_((s), (name), (t), #t)

int
main(void)
{
	no_tenants = tenant_users_make("vmft-dmn");
	Suite *s = suite_create("daemon");
	TCase *tc = tcase_create("daemon");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 900);
	ADD_TEST(tc, init_get_inspect_release_destroy);
	ADD_TEST(tc, bad_requests_fail_clearly);
	ADD_TEST(tc, faults_peers_and_latency);
	ADD_TEST(tc, template_commands);
	ADD_TEST(tc, restart_adopts_pooled_and_assigned_vms);
	ADD_TEST(tc, hostile_frames_and_paths);
	ADD_TEST(tc, failing_template_backs_off_and_daemon_keeps_serving);
	ADD_TEST(tc, full_catalog_fails_clearly);
	ADD_TEST(tc, idle_vms_are_replaced_and_metrics_scraped);
	ADD_TEST(tc, churn_keeps_fds_rss_flat);
	suite_add_tcase(s, tc);
	/* Its own case: CK_RUN_CASE=ops runs it alone (or VMFACTORY_TEST=name). */
	TCase *ops = tcase_create("ops");
	tcase_add_checked_fixture(ops, setup, cleanup);
	tcase_set_timeout(ops, 900);
	ADD_TEST(ops, systemd_notify_with_config_pools);
	suite_add_tcase(s, ops);
	/* Tests that skip where they cannot run (no fault points, not root):
	 * each its own meson test (tests/meson.build), so a skip shows. */
	own_case(s, "fault_points", crash_at_each_fault_point_recovers);
	own_case(s, "full_disk", full_disk_fails_clearly_and_catalog_survives);
	own_case(s, "runas", runas_drops_qemu_privileges);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
