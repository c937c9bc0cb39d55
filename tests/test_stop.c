/* Stopping a VM loses nothing, and a VM that dies says why: real QEMU
 * under TCG, the real agent, one daemon with two pools ("flush": stop =
 * flush, on_guest_reset = stop; "off": stop = poweroff, on_guest_reset =
 * keep; stop_timeout 3 s) for every step:
 *
 * - a template build whose guest kernel panics (a garbage initrd): its
 *   error says so, with the serial log's end;
 * - a guest writes to a read-write disk without sync and is released: the
 *   host image holds every write (debugfs), e2fsck clean;
 * - a guest whose agent is stopped ignores the flush: the release returns
 *   within the timeout and its reply names the disk;
 * - a guest panic (sysrq c) with an exec running: the exec returns (125),
 *   inspect says guest-panic with the serial log's tail, the next request
 *   naming the VM (attach, release) says so too;
 * - QEMU SIGKILLed from outside: killed by signal 9, and the console line
 *   the guest wrote before is in the tail;
 * - on_guest_reset = keep: a panic closes the owner's agent connection,
 *   the VM stays assigned, marked, its disk mounted again; then its
 *   release powers the guest off cleanly (a process's SIGTERM trap runs,
 *   unsynced writes on the image);
 * - a pool's cgroup: its VM's QEMU runs in it;
 * - get --cgroup as a real tenant: QEMU in the tenant's v1 memory cgroup
 *   (then OOM-killed there by a limit: inspect says oom-killed, from the
 *   cgroup's count) and in a v2 cgroup; refused for root's cgroup, the
 *   other tenant's, a path outside /sys/fs/cgroup, a symlink, "..", a
 *   directory of no cgroup file system;
 * - after a daemon restart, an adopted VM SIGKILLed: cause unknown (no
 *   exit status for a VM that is not the daemon's child), said so; one
 *   killed while no daemon ran: said so, with its serial tail;
 * - destroy --all of an assigned (adopted) VM: its unsynced writes on the
 *   image.
 *
 * Users and group vstp<pid>{a,b,g} and cgroups vmfst<pid>* are made here and
 * removed before it returns; without root or useradd, or with a guest image
 * without the disk and pvpanic modules, it exits 77 and says why. */
#include <errno.h>
#include <poll.h>
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

#define CG_V1 "/sys/fs/cgroup/memory"
#define CG_V2 "/sys/fs/cgroup/unified"

/* Named in main: its exit removes what a failed test (a child) left. */
static char cg_a[128], cg_b[128], cg_root[128], cg_v2[128], cg_link[128], cg_plain[128], cg_pool[128];
static pid_t main_pid;

static void
remove_cgroups(void)
{
	const char *dirs[] = { cg_a, cg_b, cg_root, cg_v2, cg_pool };
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
		if (dirs[i][0])
			rmdir(dirs[i]);
	if (cg_link[0])
		unlink(cg_link);
	if (cg_plain[0])
		rmdir(cg_plain);
}

/* `vmfactory exec ID -- sh -c SCRIPT` within timeout_s (killed after):
 * exit status, stdout in out, stderr in err. */
static int
guest_sh(const char *id, const char *script, char *out, size_t n, char *err, size_t en, int timeout_s)
{
	char cmd[4096], errf[700];
	snprintf(errf, sizeof errf, "%s/exec.err", tmp);
	snprintf(cmd, sizeof cmd, "timeout -s KILL %d %s exec %s %s -- sh -c '%s' 2>%s", timeout_s, exe, common_opts, id,
		 script, errf);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	char buf[4096];
	size_t got = fread(buf, 1, sizeof buf - 1, p);
	buf[got] = 0;
	int st = pclose(p);
	if (out)
		snprintf(out, n, "%s", buf);
	if (err) {
		char *e = NULL;
		vmf_read_file(errf, &e, NULL, 1 << 20, NULL);
		snprintf(err, en, "%s", e ? e : "");
		free(e);
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* `vmfactory ARGS` with its stderr (this call's only) in err. */
static int
vmf_e(char *err, size_t n, char **out, const char *fmt, const char *a1)
{
	char errf[700];
	snprintf(errf, sizeof errf, "%s/cli.err", tmp);
	truncate(errf, 0);
	int rc = vmf(out, fmt, a1);
	char *e = NULL;
	vmf_read_file(errf, &e, NULL, 1 << 20, NULL);
	snprintf(err, n, "%s", e ? e : "");
	free(e);
	return rc;
}

static void
make_image(const char *img)
{
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "truncate -s 32M %s && PATH=$PATH:/sbin:/usr/sbin mkfs.ext4 -q -F %s", img, img);
	ck_assert_int_eq(system(cmd), 0);
}

/* Bytes of file in the image (debugfs stat), -1 when it is not there. */
static long
host_size(const char *img, const char *file)
{
	char cmd[1200], line[512];
	snprintf(cmd, sizeof cmd, "PATH=$PATH:/sbin:/usr/sbin debugfs -R 'stat %s' %s 2>/dev/null", file, img);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	long size = -1;
	while (fgets(line, sizeof line, p)) {
		char *s = strstr(line, "Size: ");
		if (s && size < 0)
			size = strtol(s + 6, NULL, 10);
	}
	pclose(p);
	return size;
}

static bool
fsck_clean(const char *img)
{
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "PATH=$PATH:/sbin:/usr/sbin e2fsck -fn %s >/dev/null 2>&1", img);
	return system(cmd) == 0;
}

/* A get from pool with the disk img mounted at /mnt/d (img may be NULL). */
static void
get_vm(struct got *g, const char *name, const char *pool, const char *img)
{
	snprintf(g->share, sizeof g->share, "%s/%s-share", tmp, name);
	snprintf(g->sockd, sizeof g->sockd, "%s/%s-sock", tmp, name);
	char *out = NULL, disk[800] = "";
	if (img)
		snprintf(disk, sizeof disk, "--disk %s:/mnt/d", img);
	g->rc = vmf(&out, "get --pool %s --cpus 1 --memory %d --sandbox %s --share-dir %s --sock-dir %s %s --timeout 120 "
		    "-o json", pool, strcmp(pool, "off") ? 256 : 384, name, g->share, g->sockd, disk);
	g->rec = g->rc == 0 ? json_tokener_parse(out) : NULL;
	free(out);
	ck_assert_msg(g->rc == 0 && g->rec, "get from pool %s failed (rc %d)", pool, g->rc);
	snprintf(g->id, sizeof g->id, "%s", json_object_get_string(path(g->rec, "id", NULL)));
}

static json_object *
inspect(const char *id)
{
	return vmf_json("inspect %s -o json", id);
}

static const char *
str_at(json_object *o, const char *a, const char *b)
{
	json_object *x = path(o, a, b);
	return json_object_get_string(x);
}

/* id's entry in status (which answers while the VM is busy), NULL when
 * it has none; put it. */
static json_object *
status_vm(const char *id)
{
	json_object *s = vmf_json("status -o json%s", ""), *found = NULL;
	json_object *vms = path(s, "vms", NULL);
	for (size_t i = 0; !found && i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (!strcmp(json_object_get_string(path(v, "id", NULL)), id))
			found = json_object_get(v);
	}
	json_object_put(s);
	return found;
}

static bool
state_is(const char *id, const char *want)
{
	json_object *v = status_vm(id);
	bool there = v && !strcmp(json_object_get_string(path(v, "state", NULL)), want);
	json_object_put(v);
	return there;
}

/* Waits (deadline_s) until id's state is want; its inspect then. */
static json_object *
wait_state(const char *id, const char *want, int deadline_s)
{
	wait_until(state_is(id, want), deadline_s * 1000, "VM %s did not become %s within %d s", id, want, deadline_s);
	return inspect(id);
}

static bool
file_has(const char *file, const char *text)
{
	char *s = NULL;
	size_t n = 0;
	bool has = vmf_read_file(file, &s, &n, 16 << 20, NULL) == 0 && memmem(s, n, text, strlen(text));
	free(s);
	return has;
}

/* Waits (deadline_s) until the VM's serial log holds text. */
static bool
serial_has(const struct got *g, const char *text, int deadline_s)
{
	char log[800];
	snprintf(log, sizeof log, "%s/serial.log", json_object_get_string(path(g->rec, "run_dir", NULL)));
	poll_until(file_has(log, text), deadline_s * 1000);
	return file_has(log, text);
}

/* As a tenant (call_as): GetVM into dir with the given cgroup; its errno
 * (0: handed out) and message, the VM's id. */
static int
cgroup_get(uid_t uid, const char *dir, const char *cgroup, char *msg, size_t mn, char *id, size_t idn)
{
	char share[800], sockd[800], out[1200];
	snprintf(share, sizeof share, "%s/share", dir);
	snprintf(sockd, sizeof sockd, "%s/sock", dir);
	char *cgs[1] = { (char *)cgroup };
	Vmf__Control__GetVMRequest req = VMF__CONTROL__GET_VMREQUEST__INIT;
	req.vcpus = 1;
	req.memory_mib = 256;
	req.pool = "flush";
	req.sandbox_id = "tenant";
	req.share_dir = share;
	req.sock_dir = sockd;
	req.cgroups = cgs;
	req.n_cgroups = 1;
	req.timeout_ms = 120000;
	int rc = call_as(uid, req_get, &req, out, sizeof out);
	snprintf(msg, mn, "%s", out);
	if (rc == 0)
		snprintf(id, idn, "%.*s", (int)strcspn(out, " "), out);
	return -rc;
}

/* As tenant a, a VM in the cgroup cg (whose line in /proc/PID/cgroup is
 * line): its QEMU runs there, inspect names it.  The VM's id in id. */
static void
tenant_in_cgroup(const char *dir, const char *cg, const char *line, char *id, size_t idn)
{
	char msg[1200];
	int code = cgroup_get(tu.uid_a, dir, cg, msg, sizeof msg, id, idn);
	ck_assert_msg(code == 0, "get --cgroup %s: %s", cg, msg);
	json_object *ins = vmf_json("inspect %s -o json", id);
	int qpid = json_object_get_int(path(path(ins, "vm", NULL), "pid", NULL));
	char f[64], *s = NULL;
	snprintf(f, sizeof f, "/proc/%d/cgroup", qpid);
	check(vmf_read_file(f, &s, NULL, 1 << 16, NULL) == 0 && strstr(s, line), "QEMU pid %d runs in %s", qpid, cg);
	free(s);
	json_object *cgs = path(path(ins, "vm", NULL), "cgroups", NULL);
	check(json_object_array_length(cgs) == 1 && !strcmp(json_object_get_string(json_object_array_get_idx(cgs, 0)), cg),
	      "inspect names the cgroup %s", cg);
	json_object_put(ins);
}

static void
write_file(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	fputs(s, f);
	ck_assert_int_eq(fclose(f), 0);
}

/* Gives a cgroup directory to uid as delegation does (the directory and
 * the files a member process writes). */
static void
delegate(const char *dir, uid_t uid)
{
	const char *files[] = { "", "/cgroup.procs", "/tasks", "/cgroup.threads", "/cgroup.subtree_control" };
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char f[300];
		snprintf(f, sizeof f, "%s%s", dir, files[i]);
		if (access(f, F_OK) == 0)
			ck_assert_int_eq(chown(f, uid, tu.gid), 0);
	}
}

START_TEST(stop_end_to_end)
{
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	char cfg[700], conf[600];
	snprintf(cfg, sizeof cfg, "%s/vmfactory.conf", tmp);
	/* The "off" pool's VMs join the operator's cgroup (the pool's own). */
	bool have_v1 = access(CG_V1 "/cgroup.procs", W_OK) == 0;
	if (have_v1)
		ck_assert_int_eq(mkdir(cg_pool, 0755), 0);
	snprintf(conf, sizeof conf, "[daemon]\ngroup = %s\nstop_timeout = 3\n\n[pool flush]\nsize = 2\nmemory_mib = 256\n\n"
		 "[pool off]\nsize = 1\nmemory_mib = 384\nstop = poweroff\non_guest_reset = keep\n%s%s\n", tu.group,
		 have_v1 ? "cgroup = " : "", have_v1 ? cg_pool : "");
	write_file(cfg, conf);
	ck_assert_int_eq(vmf(NULL, "check-config %s", cfg), 0);

	/* ---- a template build whose guest panics says why ---- */
	char bad[700], kernel[700], err0[4096];
	snprintf(bad, sizeof bad, "%s/garbage-initrd.img", tmp);
	snprintf(kernel, sizeof kernel, "%s/vmlinuz", vmf_test_image_dir());
	write_file(bad, "not an initramfs");
	snprintf(conf, sizeof conf, "template build --kernel %s --initrd %s", kernel, bad);
	ck_assert_int_ne(vmf_e(err0, sizeof err0, NULL, "%s", conf), 0);
	check(strstr(err0, "panicked") && strstr(err0, "serial log ends") && !strchr(err0, '\r'),
	      "template build: the error says the guest panicked, with the serial log's end: %s", err0);

	ck_assert_msg(vmf(NULL, "init --config %s --wait --timeout 600", cfg) == 0, "the daemon did not start");
	char img[6][700], out[8192], err[8192], *o = NULL;
	for (int i = 0; i < 6; i++) {
		snprintf(img[i], sizeof img[i], "%s/d%d.img", tmp, i);
		make_image(img[i]);
	}

	/* ---- release: every write of the guest on the host image ---- */
	struct got v1 = {0};
	get_vm(&v1, "flush1", "flush", img[0]);
	int rc = guest_sh(v1.id, "printf 13-byte-file! > /mnt/d/small && "
			  "dd if=/dev/urandom of=/mnt/d/big bs=64k count=16 2>/dev/null && md5sum /mnt/d/big", out, sizeof out,
			  err, sizeof err, 60);
	ck_assert_msg(rc == 0, "the guest's writes failed (%d): %s", rc, err);
	char md5[40];
	snprintf(md5, sizeof md5, "%.32s", out);
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_e(err, sizeof err, &o, "release %s -o json", v1.id), 0);
	printf("release with a read-write disk: %lld ms\n", (long long)(vmf_now_ms() - t0));
	json_object *rj = json_tokener_parse(o);
	free(o);
	ck_assert_str_eq(str_at(rj, "stop", "method"), "flush");
	ck_assert_int_eq((int)json_object_array_length(path(rj, "stop", "lost_writes")), 0);
	json_object_put(rj);
	host_cat(img[0], "small", out, sizeof out);
	check(!strcmp(out, "13-byte-file!"), "release: the 13-byte file is on the host image ('%s')", out);
	check(host_size(img[0], "big") == 1048576, "release: 1 MiB file on the host image (%ld bytes)",
	      host_size(img[0], "big"));
	char cmd[1500];
	snprintf(cmd, sizeof cmd, "PATH=$PATH:/sbin:/usr/sbin debugfs -R 'dump big %s/big.host' %s >/dev/null 2>&1 && "
		 "md5sum %s/big.host", tmp, img[0], tmp);
	FILE *mp = popen(cmd, "r");
	char hmd5[64] = "";
	if (mp) {
		if (!fgets(hmd5, sizeof hmd5, mp))
			hmd5[0] = 0;
		pclose(mp);
	}
	check(!strncmp(hmd5, md5, 32), "release: the 1 MiB file's content matches (%.32s, guest %s)", hmd5, md5);
	check(fsck_clean(img[0]), "release: e2fsck finds the image clean");

	/* ---- a guest that ignores the flush: stopped within stop_timeout,
	 * the disk named ---- */
	struct got v2 = {0};
	get_vm(&v2, "flush2", "flush", img[1]);
	/* The agent stops itself from a process of its own session (an exec's
	 * process group dies with its connection) once the exec is over, and
	 * says so on the console. */
	ck_assert_int_eq(guest_sh(v2.id, "echo unsynced > /mnt/d/x; setsid sh -c \"while kill -0 $$ 2>/dev/null; do "
				  "usleep 50000; done; kill -STOP \\$(pidof vmf-agent) && echo agent-stopped > /dev/ttyS0\" "
				  "</dev/null >/dev/null 2>&1 &", NULL, 0, err, sizeof err, 60), 0);
	ck_assert_msg(serial_has(&v2, "agent-stopped", 60), "the guest did not stop its agent");
	t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_e(err, sizeof err, &o, "release %s -o json", v2.id), 0);
	int64_t took = vmf_now_ms() - t0;
	rj = json_tokener_parse(o);
	free(o);
	json_object *lw = path(rj, "stop", "lost_writes");
	check(took < 3000 + 7000, "ignored flush: release took %lld ms (stop_timeout 3 s)", (long long)took);
	check(json_object_get_boolean(path(rj, "stop", "forced")), "ignored flush: the reply says forced");
	check(json_object_array_length(lw) == 1 && strstr(json_object_get_string(json_object_array_get_idx(lw, 0)), img[1]),
	      "ignored flush: the reply names the disk: %s", json_object_to_json_string(lw));
	json_object_put(rj);
	ck_assert_int_ne(vmf_e(err, sizeof err, NULL, "release %s", v2.id), 0);
	ck_assert_msg(strstr(err, "no VM"), "released twice: %s", err);

	/* ---- a guest panic with an exec running ---- */
	struct got v3 = {0};
	get_vm(&v3, "panic", "flush", NULL);
	t0 = vmf_now_ms();
	rc = guest_sh(v3.id, "(sleep 1; echo c > /proc/sysrq-trigger) & sleep 100", NULL, 0, err, sizeof err, 90);
	took = vmf_now_ms() - t0;
	check(rc == 125, "panic: the exec running returned %d after %lld ms (want 125): %s", rc, (long long)took, err);
	json_object *ins = wait_state(v3.id, "gone", 60);
	json_object *ex = path(path(ins, "vm", NULL), "exit", NULL);
	check(!strcmp(json_object_get_string(path(ex, "cause", NULL)), "guest-panic"), "panic: inspect's cause is %s: %s",
	      json_object_get_string(path(ex, "cause", NULL)), json_object_get_string(path(ex, "detail", NULL)));
	const char *tail = json_object_get_string(path(ex, "serial_tail", NULL));
	check(strstr(tail, "Call Trace") || strstr(tail, "Kernel panic") || strstr(tail, "RIP:"),
	      "panic: the serial tail (%zu bytes) shows the panic", strlen(tail));
	check(strlen(tail) > 0 && strlen(tail) <= 4 * 4096 && !strchr(tail, '\r'), "panic: the tail is bounded and escaped");
	check(strstr(json_object_get_string(path(ins, "guest_error", NULL)), "panicked") != NULL,
	      "panic: the guest view says why: %s", json_object_get_string(path(ins, "guest_error", NULL)));
	json_object_put(ins);
	ck_assert_int_ne(vmf_e(err, sizeof err, NULL, "attach %s --scratch 8", v3.id), 0);
	check(strstr(err, "gone") && strstr(err, "panicked"), "panic: the next request naming it says why: %s", err);
	ck_assert_int_eq(vmf_e(err, sizeof err, &o, "release %s -o json", v3.id), 0);
	rj = json_tokener_parse(o);
	free(o);
	check(!strcmp(str_at(path(rj, "exit", NULL), "cause", NULL), "guest-panic"), "panic: the release reply says why");
	json_object_put(rj);

	/* ---- QEMU killed from outside ---- */
	struct got v4 = {0};
	get_vm(&v4, "kill", "flush", NULL);
	ck_assert_int_eq(guest_sh(v4.id, "echo vmf-console-marker > /dev/ttyS0", NULL, 0, NULL, 0, 60), 0);
	ck_assert(serial_has(&v4, "vmf-console-marker", 30));
	ck_assert_int_eq(kill(json_object_get_int(path(v4.rec, "pid", NULL)), SIGKILL), 0);
	ins = wait_state(v4.id, "gone", 60);
	ex = path(path(ins, "vm", NULL), "exit", NULL);
	check(!strcmp(json_object_get_string(path(ex, "cause", NULL)), "killed") &&
	      json_object_get_int(path(ex, "signal", NULL)) == 9, "SIGKILL: inspect says %s, signal %d",
	      json_object_get_string(path(ex, "cause", NULL)), json_object_get_int(path(ex, "signal", NULL)));
	check(strstr(json_object_get_string(path(ex, "serial_tail", NULL)), "vmf-console-marker") != NULL,
	      "SIGKILL: the console line is in the serial tail");
	json_object_put(ins);
	rc = guest_sh(v4.id, "true", NULL, 0, err, sizeof err, 30);
	check(rc == 125 && strstr(err, "SIGKILL"), "SIGKILL: exec says why (%d): %s", rc, err);
	ck_assert_int_eq(vmf(NULL, "release %s", v4.id), 0);

	/* ---- on_guest_reset = keep, then stop = poweroff ---- */
	struct got v5 = {0};
	get_vm(&v5, "keep", "off", img[2]);
	if (have_v1) {
		char f[64], *cgs = NULL, line[160];
		snprintf(f, sizeof f, "/proc/%d/cgroup", json_object_get_int(path(v5.rec, "pid", NULL)));
		snprintf(line, sizeof line, ":memory:%s\n", cg_pool + strlen(CG_V1));
		check(vmf_read_file(f, &cgs, NULL, 1 << 16, NULL) == 0 && strstr(cgs, line), "the pool's cgroup %s holds its "
		      "VM's QEMU", cg_pool);
		free(cgs);
	}
	ck_assert_int_eq(guest_sh(v5.id, "echo before > /mnt/d/before && sync", NULL, 0, NULL, 0, 60), 0);
	t0 = vmf_now_ms();
	rc = guest_sh(v5.id, "(sleep 1; echo c > /proc/sysrq-trigger) & sleep 100", NULL, 0, err, sizeof err, 90);
	took = vmf_now_ms() - t0;
	check(rc == 125, "keep: the exec running at the reset returned %d after %lld ms (want 125): %s", rc,
	      (long long)took, err);
	/* Status shows the mark once the new boot is set up again (the VM is
	 * busy meanwhile, which inspect would refuse). */
	int64_t deadline = vmf_now_ms() + 120000;
	for (bool done = false; !done;) {
		json_object *v = status_vm(v5.id), *e;
		done = v && json_object_object_get_ex(v, "exit", &e) && json_object_get_int(path(e, "resets", NULL)) >= 1;
		json_object_put(v);
		ck_assert_msg(done || vmf_now_ms() < deadline, "keep: the reset was not seen within 120 s");
		if (!done)
			poll(NULL, 0, 300);
	}
	ins = inspect(v5.id);
	ex = path(path(ins, "vm", NULL), "exit", NULL);
	check(!strcmp(str_at(ins, "vm", "state"), "assigned") &&
	      !strcmp(json_object_get_string(path(ex, "cause", NULL)), "guest-panic"), "keep: assigned, marked %s: %s",
	      json_object_get_string(path(ex, "cause", NULL)), json_object_get_string(path(ex, "detail", NULL)));
	json_object_put(ins);
	rc = guest_sh(v5.id, "cat /mnt/d/before; hostname; cut -d. -f1 /proc/uptime", out, sizeof out, err, sizeof err, 60);
	check(rc == 0 && !strncmp(out, "before\nkeep\n", 12), "keep: a new boot with its disk and hostname again: %s %s",
	      out, err);
	/* A process that saves its state on SIGTERM, and writes not synced. */
	ck_assert_int_eq(guest_sh(v5.id, "setsid sh -c \"trap \\\"echo term > /mnt/d/term; exit 0\\\" TERM; "
				  "echo trap-set > /dev/ttyS0; while :; do usleep 200000; done\" </dev/null >/dev/null 2>&1 & "
				  "echo unsynced > /mnt/d/after", NULL, 0, NULL, 0, 60), 0);
	ck_assert_msg(serial_has(&v5, "trap-set", 30), "the guest process did not set its trap");
	t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_e(err, sizeof err, &o, "release %s -o json", v5.id), 0);
	printf("release with poweroff: %lld ms\n", (long long)(vmf_now_ms() - t0));
	rj = json_tokener_parse(o);
	free(o);
	check(!strcmp(str_at(rj, "stop", "method"), "poweroff") && !json_object_get_boolean(path(rj, "stop", "forced")) &&
	      json_object_array_length(path(rj, "stop", "lost_writes")) == 0, "poweroff: %s",
	      json_object_to_json_string(path(rj, "stop", NULL)));
	json_object_put(rj);
	host_cat(img[2], "after", out, sizeof out);
	check(!strcmp(out, "unsynced\n"), "poweroff: the unsynced write is on the image ('%s')", out);
	host_cat(img[2], "term", out, sizeof out);
	check(!strcmp(out, "term\n"), "poweroff: the guest process got SIGTERM before the end ('%s')", out);
	check(fsck_clean(img[2]), "poweroff: e2fsck finds the image clean");

	/* ---- cgroups, as a tenant ---- */
	int pid = (int)main_pid;
	char a_dir[700];
	snprintf(a_dir, sizeof a_dir, "%s/%s", tmp, tu.a);
	ck_assert_int_eq(mkdir(a_dir, 0755), 0);
	ck_assert_int_eq(chown(a_dir, tu.uid_a, tu.gid), 0);
	char id[64], msg[1200];
	if (have_v1) {
		ck_assert_int_eq(mkdir(cg_a, 0755), 0);
		ck_assert_int_eq(mkdir(cg_b, 0755), 0);
		ck_assert_int_eq(mkdir(cg_root, 0755), 0);
		delegate(cg_a, tu.uid_a);
		delegate(cg_b, tu.uid_b);
		ck_assert_int_eq(symlink(cg_a, cg_link), 0);
		bool plain = mkdir(cg_plain, 0755) == 0 && chown(cg_plain, tu.uid_a, tu.gid) == 0;
		/* Refused, each with its sentence, before any VM is taken. */
		char dotdot[300], outside[300];
		snprintf(dotdot, sizeof dotdot, "%s/../vmfst%dr", cg_a, pid);
		snprintf(outside, sizeof outside, "%s", a_dir);
		struct { const char *path; int code; const char *says; } bad[] = {
			{ cg_root, EACCES, "not yours" }, { cg_b, EACCES, "not yours" }, { outside, EINVAL, "below /sys/fs/cgroup" },
			{ cg_link, ELOOP, "symbolic link" }, { dotdot, EINVAL, "'..'" },
			{ plain ? cg_plain : cg_root, plain ? EINVAL : EACCES, plain ? "not on a cgroup file system" : "not yours" },
		};
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			int code = cgroup_get(tu.uid_a, a_dir, bad[i].path, msg, sizeof msg, id, sizeof id);
			check(code == bad[i].code && strstr(msg, bad[i].says), "cgroup %s refused (%d): %s", bad[i].path, code,
			      msg);
		}
		/* The tenant's own v1 memory cgroup: QEMU runs in it. */
		char line[200];
		snprintf(line, sizeof line, ":memory:/vmfst%da\n", pid);
		tenant_in_cgroup(a_dir, cg_a, line, id, sizeof id);
		/* A limit the guest's next writes exceed: the OOM killer ends
		 * QEMU in the cgroup, and the cgroup's count says so. */
		char f[300];
		snprintf(f, sizeof f, "%s/memory.limit_in_bytes", cg_a);
		write_file(f, "48M");
		snprintf(f, sizeof f, "%s/memory.memsw.limit_in_bytes", cg_a);
		if (access(f, F_OK) == 0)
			write_file(f, "48M");
		rc = guest_sh(id, "dd if=/dev/zero of=/tmp/fill bs=1M count=96", NULL, 0, err, sizeof err, 120);
		check(rc == 125, "OOM: the exec ended with the VM (%d): %s", rc, err);
		ins = wait_state(id, "gone", 60);
		ex = path(path(ins, "vm", NULL), "exit", NULL);
		check(!strcmp(json_object_get_string(path(ex, "cause", NULL)), "oom-killed") &&
		      strstr(json_object_get_string(path(ex, "oom_source", NULL)), cg_a),
		      "OOM: inspect says %s (%s)", json_object_get_string(path(ex, "cause", NULL)),
		      json_object_get_string(path(ex, "detail", NULL)));
		json_object_put(ins);
		ck_assert_int_eq(vmf(NULL, "release %s", id), 0);
	} else {
		vmf_test_skip("cgroup v1 (no writable %s): placement, refusals and the OOM kill not tested", CG_V1);
	}
	struct stat st;
	if (stat(CG_V2 "/cgroup.procs", &st) == 0) {
		ck_assert_int_eq(mkdir(cg_v2, 0755), 0);
		delegate(cg_v2, tu.uid_a);
		char line[200];
		snprintf(line, sizeof line, "0::/vmfst%dv2\n", pid);
		tenant_in_cgroup(a_dir, cg_v2, line, id, sizeof id);
		ck_assert_int_eq(vmf(NULL, "release %s", id), 0);
	} else {
		vmf_test_skip("cgroup v2 (no %s): placement not tested", CG_V2);
	}

	/* ---- VMs adopted after a daemon restart: no exit status (not the
	 * daemon's children), but still flushed ---- */
	struct got v6 = {0}, v7 = {0}, v8 = {0};
	get_vm(&v6, "destroy", "flush", img[3]);
	get_vm(&v7, "adopted", "flush", NULL);
	get_vm(&v8, "unseen", "flush", NULL);
	ck_assert_int_eq(guest_sh(v8.id, "echo vmf-unseen-marker > /dev/ttyS0", NULL, 0, NULL, 0, 60), 0);
	ck_assert(serial_has(&v8, "vmf-unseen-marker", 30));
	kill_daemon_hard();
	/* One ends while no daemon runs: the next one says what it can. */
	pid_t p8 = json_object_get_int(path(v8.rec, "pid", NULL));
	ck_assert_int_eq(kill(p8, SIGKILL), 0);
	for (int64_t dl = vmf_now_ms() + 10000; kill(p8, 0) == 0 && vmf_now_ms() < dl;)
		poll(NULL, 0, 20);
	ck_assert_msg(vmf(NULL, "init --config %s --wait --timeout 600", cfg) == 0, "the daemon did not restart");
	ins = inspect(v8.id);
	ex = path(path(ins, "vm", NULL), "exit", NULL);
	check(!strcmp(str_at(ins, "vm", "state"), "gone") && !strcmp(json_object_get_string(path(ex, "cause", NULL)), "unknown")
	      && strstr(json_object_get_string(path(ex, "detail", NULL)), "while no daemon ran") &&
	      strstr(json_object_get_string(path(ex, "serial_tail", NULL)), "vmf-unseen-marker"),
	      "ended while no daemon ran: %s: %s", json_object_get_string(path(ex, "cause", NULL)),
	      json_object_get_string(path(ex, "detail", NULL)));
	json_object_put(ins);
	ck_assert_int_eq(kill(json_object_get_int(path(v7.rec, "pid", NULL)), SIGKILL), 0);
	ins = wait_state(v7.id, "gone", 60);
	ex = path(path(ins, "vm", NULL), "exit", NULL);
	check(!strcmp(json_object_get_string(path(ex, "cause", NULL)), "unknown") &&
	      !json_object_get_boolean(path(ex, "status_known", NULL)) &&
	      strstr(json_object_get_string(path(ex, "detail", NULL)), "adopted"), "adopted, SIGKILL: %s: %s",
	      json_object_get_string(path(ex, "cause", NULL)), json_object_get_string(path(ex, "detail", NULL)));
	json_object_put(ins);

	/* ---- destroy --all: the (adopted) assigned VM's writes on the image ---- */
	ck_assert_int_eq(guest_sh(v6.id, "echo at-destroy > /mnt/d/last", NULL, 0, NULL, 0, 60), 0);
	ck_assert_int_eq(vmf_e(err, sizeof err, NULL, "destroy --all%s", ""), 0);
	check(!strstr(err, "lost writes"), "destroy --all: no disk named as losing writes: %s", err);
	host_cat(img[3], "last", out, sizeof out);
	check(!strcmp(out, "at-destroy\n"), "destroy --all: the write is on the host image ('%s')", out);
	check(fsck_clean(img[3]), "destroy --all: e2fsck finds the image clean");
	ck_assert_int_eq(qemu_gone(), 0);

	json_object *recs[] = { v1.rec, v2.rec, v3.rec, v4.rec, v5.rec, v6.rec, v7.rec, v8.rec };
	for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++)
		json_object_put(recs[i]);
	remove_cgroups();
	assert_daemon_log_clean();
	ck_assert_msg(failures == 0, "%d checks failed (see above)", failures);
}
END_TEST

int
main(void)
{
	const char *why = tenant_image_check((const char *const[]){ "ext4", "pvpanic-mmio", NULL }, "vstp");
	if (why)
		return vmf_test_skip_all("stop tests: %s", why);
	main_pid = getpid();
	int pid = (int)main_pid;
	snprintf(cg_a, sizeof cg_a, CG_V1 "/vmfst%da", pid);
	snprintf(cg_b, sizeof cg_b, CG_V1 "/vmfst%db", pid);
	snprintf(cg_root, sizeof cg_root, CG_V1 "/vmfst%dr", pid);
	snprintf(cg_link, sizeof cg_link, "/sys/fs/cgroup/vmfst%dlink", pid);
	snprintf(cg_plain, sizeof cg_plain, "/sys/fs/cgroup/vmfst%dplain", pid);
	snprintf(cg_v2, sizeof cg_v2, CG_V2 "/vmfst%dv2", pid);
	snprintf(cg_pool, sizeof cg_pool, CG_V1 "/vmfst%dpool", pid);
	atexit(remove_cgroups);
	Suite *s = suite_create("stop");
	TCase *tc = tcase_create("stop");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 900);
	ADD_TEST(tc, stop_end_to_end);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	remove_cgroups();
	tenant_users_remove();
	return rc;
}
