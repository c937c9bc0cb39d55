/* The tenant boundary around snapshots and host resources, end to end, as
 * real unprivileged users in the daemon's group against one daemon and
 * real guests (QEMU under TCG):
 *  - a snapshot template is its maker's: another tenant neither sees it in
 *    status, nor clones it (by name, id or its pool's name), nor removes
 *    it; a tenant's name never reaches the operator's config; the owner
 *    removes it while the daemon runs, once nothing uses it;
 *  - limits: VMs held, snapshots, suspended VMs, scratch volume size and
 *    count are refused past their bound with EDQUOT or EFBIG and a
 *    sentence naming the limit, and cost the host nothing; status shows
 *    each tenant its use (the bytes limits' sentences: test_owners);
 *  - a guest writing its serial console without end leaves serial.log
 *    at its bound on disk, newest bytes at its end, also across a daemon
 *    stopped and started again while the guest writes.
 * One daemon and its VMs serve every check; checks are counted, so a run
 * on code without these bounds lists every hole it finds.  Without root
 * or useradd the program exits 77 and says why. */
#include <errno.h>
#include <poll.h>
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

#define SERIAL_KIB 64
/* A hole is punched page-aligned: the kept part is at most a page more. */
#define SERIAL_BOUND ((SERIAL_KIB + 8) << 10)

/* ---- requests as a tenant (in an as_user child) ---- */

struct req {
	const char *vm, *name, *pool, *sandbox;
	const char *tail;            /* act_cli: after the common options */
	const char *needles[3];      /* status: strings another tenant must not find */
	char share[700], sockd[700];
	unsigned mib;
};

enum op { OP_GET, OP_SNAPSHOT, OP_RM, OP_SCRATCH, OP_SUSPEND, OP_RELEASE, OP_STATUS };

/* One request on a fresh connection; msg: the error's sentence, or what
 * the reply says (an id; for status, what it shows). */
static int
request(enum op op, const struct req *q, char *msg, size_t n)
{
	struct vmf_client *c;
	struct vmf_error e = {0};
	Vmf__Control__Reply *r = NULL;
	int rc = vmf_client_connect(sock, &c, &e);
	if (rc < 0) {
		snprintf(msg, n, "%s", e.msg);
		return rc;
	}
	Vmf__Control__GetVMRequest g = VMF__CONTROL__GET_VMREQUEST__INIT;
	Vmf__Control__AttachRequest at = VMF__CONTROL__ATTACH_REQUEST__INIT;
	switch (op) {
	case OP_GET:
		g.vcpus = q->name ? 0 : 1;
		g.memory_mib = q->name ? 0 : 256;
		g.template_ = (char *)(q->name ? q->name : "");
		g.pool = (char *)(q->pool ? q->pool : "");
		g.sandbox_id = (char *)q->sandbox;
		g.share_dir = (char *)q->share;
		g.sock_dir = (char *)q->sockd;
		g.timeout_ms = 120000;
		rc = vmf_client_get_vm(c, &g, &r, 180000, &e);
		break;
	case OP_SNAPSHOT: rc = vmf_client_snapshot(c, q->vm, q->name, &r, 300000, &e); break;
	case OP_RM: rc = vmf_client_template_rm(c, q->name, &r, 60000, &e); break;
	case OP_SCRATCH:
		at.vm_id = (char *)q->vm;
		at.scratch_mib = q->mib;
		rc = vmf_client_attach(c, &at, &r, 120000, &e);
		break;
	case OP_SUSPEND: rc = vmf_client_suspend_vm(c, q->vm, &r, 300000, &e); break;
	case OP_RELEASE: rc = vmf_client_release_vm(c, q->vm, 60000, &e); break;
	case OP_STATUS: rc = vmf_client_status(c, &r, 30000, &e); break;
	}
	vmf_client_close(c);
	snprintf(msg, n, "%s", rc < 0 ? e.msg : "");
	if (rc < 0)
		return rc;
	if (op == OP_GET)
		snprintf(msg, n, "%s", r->vm->id);
	else if (op == OP_SNAPSHOT)
		snprintf(msg, n, "%s", r->snapshot->template_id);
	else if (op == OP_STATUS) {
		/* Anything of another tenant's snapshot, anywhere in the reply. */
		size_t len = vmf__control__reply__get_packed_size(r);
		uint8_t *buf = malloc(len);
		vmf__control__reply__pack(r, buf);
		size_t off = 0;
		for (int i = 0; i < 3; i++)
			if (q->needles[i])
				off += (size_t)snprintf(msg + off, n - off, "%s=%d ", q->needles[i],
							memmem(buf, len, q->needles[i], strlen(q->needles[i])) != NULL);
		free(buf);
		const Vmf__Control__StatusReply *s = r->status;
		for (size_t i = 0; i < s->n_tenants && off < n; i++)
			off += (size_t)snprintf(msg + off, n - off, "row %u: %u vms, %u suspended, %u snapshots; ",
						s->tenants[i]->uid, s->tenants[i]->vms, s->tenants[i]->suspended,
						s->tenants[i]->snapshots);
	}
	vmf__control__reply__free_unpacked(r, NULL);
	return 0;
}

#define ACT(op) \
	static int act_##op(const void *arg, char *msg, size_t n) { return request(OP_##op, arg, msg, n); }
ACT(GET)
ACT(SNAPSHOT)
ACT(RM)
ACT(SCRATCH)
ACT(SUSPEND)
ACT(RELEASE)
ACT(STATUS)

static const char *
cli_err(void)
{
	static char *err;
	char errf[700];
	free(err);
	err = NULL;
	snprintf(errf, sizeof errf, "%s/cli.err", tmp);
	vmf_read_file(errf, &err, NULL, 1 << 20, NULL);
	return err ? err : "";
}

/* The vmfactory command as a tenant: `vmfactory NAME COMMON_OPTS TAIL`;
 * stdout and stderr in msg, -EIO when it fails. */
static int
act_cli(const void *arg, char *msg, size_t n)
{
	const struct req *q = arg;
	char line[4096];
	snprintf(line, sizeof line, "%s %s %s %s 2>&1", exe, q->name, common_opts, q->tail ? q->tail : "");
	FILE *p = popen(line, "r");
	size_t got = p ? fread(msg, 1, n - 1, p) : 0;
	msg[got] = '\0';
	return p && pclose(p) == 0 ? 0 : -EIO;
}

/* ---- the daemon's view, as root ---- */

static int
ready_now(void)
{
	json_object *s = vmf_json("status -o json%s", "");
	json_object *pools = path(s, "pools", NULL);
	int ready = 0;
	for (size_t i = 0; i < json_object_array_length(pools); i++)
		ready += json_object_get_int(path(json_object_array_get_idx(pools, i), "ready", NULL));
	json_object_put(s);
	return ready;
}

static void
wait_ready(void)
{
	wait_until(ready_now() >= 1, 300000, "no pooled VM ready within 5 minutes");
}

/* The templates root's status lists of name and owner ("" id when none). */
static void
template_of(const char *name, unsigned owner, char *id, size_t n)
{
	json_object *s = vmf_json("status -o json%s", "");
	json_object *ts = path(s, "templates", NULL);
	id[0] = '\0';
	for (size_t i = 0; i < json_object_array_length(ts); i++) {
		json_object *t = json_object_array_get_idx(ts, i), *o = NULL;
		unsigned uid = json_object_object_get_ex(t, "owner_uid", &o) ? (unsigned)json_object_get_int(o) : 0;
		if (!strcmp(json_object_get_string(path(t, "name", NULL)), name) && uid == owner)
			snprintf(id, n, "%s", json_object_get_string(path(t, "id", NULL)));
	}
	json_object_put(s);
}

/* Bytes on disk and apparent size of a VM's serial log. */
static void
serial_sizes(const char *vm, long long *disk, long long *size)
{
	char p[900];
	struct stat st;
	snprintf(p, sizeof p, "%s/vms/%s/serial.log", run, vm);
	ck_assert_int_eq(stat(p, &st), 0);
	*disk = (long long)st.st_blocks * 512;
	*size = (long long)st.st_size;
}

static bool
serial_ends_with(const char *vm, const char *mark)
{
	char p[900], tail[200];
	snprintf(p, sizeof p, "%s/vms/%s/serial.log", run, vm);
	vmf_file_tail(p, tail, sizeof tail);
	return strstr(tail, mark) != NULL;
}

/* Waits (20 s at most) for the log to be cut to its bound with mark at its
 * end; says what it saw. */
static void
check_serial_bounded(const char *vm, const char *mark, long long min_size, const char *when)
{
	long long disk = 0, size = 0;
	poll_until((serial_sizes(vm, &disk, &size), disk <= SERIAL_BOUND && size >= min_size &&
		    serial_ends_with(vm, mark)), 20000);
	printf("serial.log %s: %lld bytes written, %lld on disk (bound %d KiB)\n", when, size, disk, SERIAL_KIB);
	check(size >= min_size, "the guest wrote %lld bytes to its serial console %s (at least %lld)", size, when,
	      min_size);
	check(disk <= SERIAL_BOUND, "serial.log holds %lld bytes on disk %s, at most %d", disk, when, SERIAL_BOUND);
	check(serial_ends_with(vm, mark), "serial.log ends with the guest's newest line %s %s", mark, when);
}


/* A daemon in the foreground, its log tmp/daemonN.log: it exits through
 * main, so under ASan its leaks are reported there too, and the fixture's
 * cleanup finds any report in tmp. */
static pid_t
start_daemon(int n, const char *extra)
{
	char log[700];
	snprintf(log, sizeof log, "%s/daemon%d.log", tmp, n);
	pid_t pid = start_foreground(sock, state, log, extra);
	poll_until(daemon_answers() || waitpid(pid, NULL, WNOHANG) != 0, 600000);
	char *err = NULL;
	if (!daemon_answers())
		vmf_read_file(log, &err, NULL, 1 << 20, NULL);
	ck_assert_msg(!err && daemon_answers(), "daemon %d did not start: %s", n, err ? err : "");
	return pid;
}

static void
write_config(const char *path, const char *extra)
{
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "[daemon]\nserial_log_kib = %d\nscratch_max_mib = 64\nscratch_max_volumes = 1\n"
		"tenant_max_vms = 2\ntenant_max_suspended = 1\ntenant_max_suspended_mib = 300\n"
		"tenant_max_snapshots = 1\ntenant_max_snapshot_mib = 2048\n%s", SERIAL_KIB, extra);
	ck_assert_int_eq(fclose(f), 0);
}

/* A tenant's sandbox dirs in its own dir below the root. */
static void
sandbox_dirs(struct req *q, const char *user, const char *sandbox)
{
	q->sandbox = sandbox;
	snprintf(q->share, sizeof q->share, "%s/%s/%s-share", tmp, user, sandbox);
	snprintf(q->sockd, sizeof q->sockd, "%s/%s/%s-sock", tmp, user, sandbox);
}

static void
own_dir(const char *user, uid_t uid)
{
	char d[700];
	snprintf(d, sizeof d, "%s/%s", tmp, user);
	ck_assert_int_eq(mkdir(d, 0755), 0);
	ck_assert_int_eq(chown(d, uid, tu.gid), 0);
}

START_TEST(snapshots_are_their_owners_and_tenants_stay_within_limits)
{
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	char conf[700], extra[800];
	snprintf(conf, sizeof conf, "%s/limits.conf", tmp);
	write_config(conf, "");
	snprintf(extra, sizeof extra, "--config %s", conf);
	snprintf(extra, sizeof extra, "--pool 1 --group %s --config %s", tu.group, conf);
	pid_t daemon = start_daemon(1, extra);
	wait_ready();
	own_dir(tu.a, tu.uid_a);
	own_dir(tu.b, tu.uid_b);
	struct act a;
	char a1[64] = "", a2[64] = "", b1[64] = "", tid[80] = "", root_tid[80] = "", b_tid[80] = "";

	/* ---- tenant A's VM, a secret in its memory, its serial console ---- */
	struct req q = { 0 };
	sandbox_dirs(&q, tu.a, "a1");
	as_user(tu.uid_a, act_GET, &q, &a);
	ck_assert_msg(a.rc == 0, "GetVM as %s: %s", tu.a, a.msg);
	snprintf(a1, sizeof a1, "%s", a.msg);
	char *secret = vm_sh(a1, "echo secret-$$-$RANDOM$RANDOM > /tmp/secret; cat /tmp/secret");
	free(vm_sh(a1, "yes serial-line-of-a-guest-that-writes-without-end | head -c 1000000 > /dev/ttyS0; "
		   "echo SERIAL-END-1 > /dev/ttyS0"));
	check_serial_bounded(a1, "SERIAL-END-1", 1000000, "by a running daemon");

	/* ---- A's snapshot is A's ---- */
	q = (struct req){ .vm = a1, .name = "tpl-of-a" };
	as_user(tu.uid_a, act_SNAPSHOT, &q, &a);
	ck_assert_msg(a.rc == 0, "snapshot as %s: %s", tu.a, a.msg);
	snprintf(tid, sizeof tid, "%s", a.msg);
	q = (struct req){ .needles = { "tpl-of-a", a1, tid } };
	as_user(tu.uid_b, act_STATUS, &q, &a);
	check(a.rc == 0 && strstr(a.msg, "tpl-of-a=0") && strstr(a.msg, "=0 ") && !strstr(a.msg, "=1"),
	      "%s's status shows nothing of %s's template or VM (%d: %s)", tu.b, tu.a, a.rc, a.msg);
	const char *by[] = { "tpl-of-a", tid };
	for (int i = 0; i < 2; i++) {
		q = (struct req){ .name = by[i] };
		sandbox_dirs(&q, tu.b, i ? "b-byid" : "b-byname");
		as_user(tu.uid_b, act_GET, &q, &a);
		check(a.rc == -ENOENT, "%s cannot clone %s's template by its %s (%d: %s)", tu.b, tu.a,
		      i ? "id" : "name", a.rc, a.msg);
		if (a.rc == 0) {
			char args[200];
			snprintf(args, sizeof args, "exec %s", a.msg);
			struct req c = { .name = args, .tail = "-- cat /tmp/secret" };
			struct act got;
			as_user(tu.uid_b, act_cli, &c, &got);
			check(strstr(got.msg, secret) == NULL, "%s read %s's secret in its clone: %s", tu.b, tu.a,
			      got.msg);
			vmf(NULL, "release %s", a.msg);
		}
		as_user(tu.uid_b, act_RM, &q, &a);
		check(a.rc == -ENOENT, "%s cannot remove %s's template by its %s (%d: %s)", tu.b, tu.a,
		      i ? "id" : "name", a.rc, a.msg);
	}
	q = (struct req){ .name = "template list -o json" };
	as_user(tu.uid_a, act_cli, &q, &a);
	check(a.rc == 0 && strstr(a.msg, tid), "%s's template list (through the daemon) shows its template (%d: %.300s)",
	      tu.a, a.rc, a.msg);
	as_user(tu.uid_b, act_cli, &q, &a);
	check(a.rc == 0 && !strstr(a.msg, tid) && !strstr(a.msg, "tpl-of-a"),
	      "%s's template list does not show %s's (%d: %.300s)", tu.b, tu.a, a.rc, a.msg);
	char still[80];
	template_of("tpl-of-a", tu.uid_a, still, sizeof still);
	check(!strcmp(still, tid), "root's status lists %s's template, owner uid %u", tu.a, (unsigned)tu.uid_a);

	/* Its owner clones it: the secret is there. */
	q = (struct req){ .name = "tpl-of-a" };
	sandbox_dirs(&q, tu.a, "a2");
	as_user(tu.uid_a, act_GET, &q, &a);
	ck_assert_msg(a.rc == 0, "GetVM of its own template as %s: %s", tu.a, a.msg);
	snprintf(a2, sizeof a2, "%s", a.msg);
	char *got = vm_sh(a2, "cat /tmp/secret");
	check(!strcmp(got, secret), "%s's clone of its template has its secret", tu.a);
	free(got);
	/* The pool that clone came from is A's too. */
	q = (struct req){ .pool = "tpl-of-a" };
	sandbox_dirs(&q, tu.b, "b-bypool");
	as_user(tu.uid_b, act_GET, &q, &a);
	check(a.rc == -ENOENT, "%s gets no VM from the pool of %s's template (%d: %s)", tu.b, tu.a, a.rc, a.msg);
	if (a.rc == 0)
		vmf(NULL, "release %s", a.msg);
	q = (struct req){ .needles = { "tpl-of-a", a1, tid } };
	as_user(tu.uid_b, act_STATUS, &q, &a);
	check(a.rc == 0 && !strstr(a.msg, "=1"), "%s's status still shows nothing of %s's (%s)", tu.b, tu.a, a.msg);

	/* ---- limits: VMs held, snapshots ---- */
	wait_ready();
	q = (struct req){ 0 };
	sandbox_dirs(&q, tu.a, "a3");
	as_user(tu.uid_a, act_GET, &q, &a);
	check(a.rc == -EDQUOT && strstr(a.msg, "tenant_max_vms"), "a third VM for %s is refused (%d: %s)", tu.a,
	      a.rc, a.msg);
	if (a.rc == 0)
		vmf(NULL, "release %s", a.msg);
	check(ready_now() == 1, "the pooled VM is still ready after the refusal");
	q = (struct req){ .vm = a1, .name = "tpl2" };
	as_user(tu.uid_a, act_SNAPSHOT, &q, &a);
	check(a.rc == -EDQUOT && strstr(a.msg, "tenant_max_snapshots"), "a second snapshot of %s is refused (%d: %s)",
	      tu.a, a.rc, a.msg);

	/* ---- B's name is B's, root's is the operator's ---- */
	wait_ready();
	q = (struct req){ 0 };
	sandbox_dirs(&q, tu.b, "b1");
	as_user(tu.uid_b, act_GET, &q, &a);
	ck_assert_msg(a.rc == 0, "GetVM as %s: %s", tu.b, a.msg);
	snprintf(b1, sizeof b1, "%s", a.msg);
	q = (struct req){ .vm = b1, .name = "shared1" };
	as_user(tu.uid_b, act_SNAPSHOT, &q, &a);
	check(a.rc == 0, "%s snapshots its VM as shared1 (%s)", tu.b, a.msg);
	snprintf(b_tid, sizeof b_tid, "%s", a.rc == 0 ? a.msg : "");
	char *out = NULL;
	int rc = vmf(&out, "snapshot %s --template shared1 -o json", b1);
	json_object *rs = rc == 0 ? json_tokener_parse(out) : NULL, *rt = NULL;
	if (rs && json_object_object_get_ex(rs, "template_id", &rt))
		snprintf(root_tid, sizeof root_tid, "%s", json_object_get_string(rt));
	json_object_put(rs);
	free(out);
	check(root_tid[0] && strcmp(root_tid, b_tid) != 0, "root snapshots shared1, a template of its own, not %s's "
	      "(%s)", tu.b, rc ? cli_err() : "");

	/* ---- limits: scratch volumes, suspended VMs ---- */
	q = (struct req){ .vm = a1, .mib = 100000 };
	as_user(tu.uid_a, act_SCRATCH, &q, &a);
	check(a.rc == -EFBIG && strstr(a.msg, "scratch_max_mib"), "a 100000 MiB scratch volume is refused (%d: %s)",
	      a.rc, a.msg);
	q.mib = 32;
	as_user(tu.uid_a, act_SCRATCH, &q, &a);
	check(a.rc == 0, "a 32 MiB scratch volume is attached (%s)", a.msg);
	as_user(tu.uid_a, act_SCRATCH, &q, &a);
	check(a.rc == -EDQUOT && strstr(a.msg, "scratch_max_volumes"), "a second scratch volume is refused (%d: %s)",
	      a.rc, a.msg);
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "test $(ls %s/vms/%s | grep -c scratch) -le 1", run, a1);
	check(system(cmd) == 0, "at most one scratch file in the VM's run dir");
	q = (struct req){ .vm = a2 };
	as_user(tu.uid_a, act_SUSPEND, &q, &a);
	check(a.rc == 0, "%s suspends a VM (%s)", tu.a, a.msg);
	q.vm = a1;
	as_user(tu.uid_a, act_SUSPEND, &q, &a);
	check(a.rc == -EDQUOT && strstr(a.msg, "tenant_max_suspended = 1"), "a second suspended VM is refused (%d: %s)",
	      a.rc, a.msg);

	/* ---- status: each tenant its own use ---- */
	q = (struct req){ 0 };
	char want[160];
	as_user(tu.uid_a, act_STATUS, &q, &a);
	snprintf(want, sizeof want, "row %u: 2 vms, 1 suspended, 1 snapshots; ", (unsigned)tu.uid_a);
	check(a.rc == 0 && !strcmp(a.msg, want), "%s's status shows its use alone: '%s'", tu.a, a.msg);
	as_user(tu.uid_b, act_STATUS, &q, &a);
	snprintf(want, sizeof want, "row %u: 1 vms, 0 suspended, 1 snapshots; ", (unsigned)tu.uid_b);
	check(a.rc == 0 && !strcmp(a.msg, want), "%s's status shows its use alone: '%s'", tu.b, a.msg);
	vmf(&out, "status");
	check(strstr(out, "(not limited)") && strstr(out, "2/2") && strstr(out, "1/1"),
	      "root's status shows every tenant's use against its limits");
	printf("%s", strstr(out, "\nlimits:") ? strstr(out, "\nlimits:") : out);
	free(out);

	/* ---- A removes its template once nothing uses it ---- */
	q = (struct req){ .name = "tpl-of-a" };
	as_user(tu.uid_a, act_RM, &q, &a);
	check(a.rc == -EBUSY && strstr(a.msg, a2), "the template is not removed while its clone exists (%d: %s)",
	      a.rc, a.msg);
	q.vm = a2;
	as_user(tu.uid_a, act_RELEASE, &q, &a);
	check(a.rc == 0, "%s releases its suspended clone (%s)", tu.a, a.msg);
	q = (struct req){ .name = "template rm tpl-of-a" };
	as_user(tu.uid_a, act_cli, &q, &a);
	check(a.rc == 0 && strstr(a.msg, "removed template tpl-of-a"),
	      "%s removes its template with vmfactory template rm while the daemon runs (%s)", tu.a, a.msg);
	char tdir[900];
	struct stat st;
	snprintf(tdir, sizeof tdir, "%s/templates/%s", state, tid);
	check(stat(tdir, &st) < 0 && errno == ENOENT, "its files are gone (%s)", tdir);
	template_of("tpl-of-a", tu.uid_a, still, sizeof still);
	check(!still[0], "status no longer lists it");
	template_of("shared1", tu.uid_b, still, sizeof still);
	check(!strcmp(still, b_tid), "%s's template is untouched", tu.b);

	/* ---- the serial bound across a restart; the config's names are
	 * the operator's ---- */
	char line[4096];
	snprintf(line, sizeof line, "%s exec %s %s -- sh -c 'yes more-serial-output | head -c 1500000 > /dev/ttyS0; "
		 "echo SERIAL-END-2 > /dev/ttyS0' >/dev/null 2>>%s/cli.err", exe, a1, common_opts, tmp);
	FILE *writer = popen(line, "r");
	ck_assert_ptr_nonnull(writer);
	long long disk, size0, size;
	serial_sizes(a1, &disk, &size0);
	poll_until((serial_sizes(a1, &disk, &size), size >= size0 + 300000), 30000);
	/* QEMU outlives the daemon (a stop, a crash): the next one bounds
	 * the logs of the VMs it adopts. */
	stop_daemon(daemon);
	serial_sizes(a1, &disk, &size0);
	poll_until((serial_sizes(a1, &disk, &size), size >= size0 + 300000), 30000);
	printf("serial.log while no daemon runs: %lld bytes on disk\n", disk);
	write_config(conf, "[pool shared]\nsize = 0\ntemplate = shared1\n");
	/* --pool would replace the config's pools. */
	snprintf(extra, sizeof extra, "--group %s --config %s", tu.group, conf);
	daemon = start_daemon(2, extra);
	json_object *s = vmf_json("status -o json%s", "");
	json_object *pools = path(s, "pools", NULL);
	const char *ptid = "";
	for (size_t i = 0; i < json_object_array_length(pools); i++)
		if (!strcmp(json_object_get_string(path(json_object_array_get_idx(pools, i), "name", NULL)), "shared"))
			ptid = json_object_get_string(path(json_object_array_get_idx(pools, i), "template_id", NULL));
	check(!strcmp(ptid, root_tid), "the config's template = shared1 is root's (%.16s), not %s's%s%s", ptid, tu.b,
	      strcmp(ptid, root_tid) ? "; pools: " : "", strcmp(ptid, root_tid) ? json_object_to_json_string(pools) : "");
	json_object_put(s);
	pclose(writer);
	check_serial_bounded(a1, "SERIAL-END-2", size0 + 300000, "after a restart");
	check(vmf(NULL, "template rm shared1") != 0 && strstr(cli_err(), "used by pool shared of the config"),
	      "root's template a pool of the config uses is not removed");

	free(secret);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(waitpid(daemon, NULL, 0), daemon);
	ck_assert_int_eq(qemu_gone(), 0);
	ck_assert_msg(failures == 0, "%d check(s) failed; see the FAIL lines above", failures);
}
END_TEST

int
main(void)
{
	const char *why = tenant_users_make("vtb");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("tenant bounds tests: %s", why);
	}
	Suite *s = suite_create("tenant_bounds");
	TCase *tc = tcase_create("tenant_bounds");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 1200);
	ADD_TEST(tc, snapshots_are_their_owners_and_tenants_stay_within_limits);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
