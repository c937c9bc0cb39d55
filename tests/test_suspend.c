/* Suspend and resume end to end (real QEMU under TCG, a pool of 1, one
 * template for the whole program): a handed-out VM grown by hot-add (a
 * vCPU and a DIMM the resuming QEMU must have on its command line) with a
 * file in its tmpfs and a process counting is suspended (no QEMU left,
 * status shows it suspended with its state's size) and resumed (the file
 * and the process are there, the counter went on, the clock is set).  The
 * daemon is SIGKILLed during suspend (before the file is renamed, after
 * the suspended record) and during resume (the QEMU loaded and running):
 * after each restart nothing is half-made.  Bad input gets clear errors and
 * the VM keeps running: a VM that is not assigned, not the peer's, running
 * when resumed, a state dir that is full; a suspend or resume while another
 * job (an inspect held at a gate) has the VM.
 *
 * The tenant users and group (vsus<pid>{a,b,g}) are made by main() and
 * removed before it returns; without root the program exits 77. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

static const char *
str(json_object *o, const char *a, const char *b)
{
	return json_object_get_string(path(o, a, b));
}

/* The VM's entry in status, or NULL (put it). */
static json_object *
status_vm(const char *id, json_object **status)
{
	*status = vmf_json("status -o json%s", "");
	json_object *vms = path(*status, "vms", NULL);
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (!strcmp(str(v, "id", NULL), id))
			return v;
	}
	return NULL;
}

static void
expect_state(const char *id, const char *want)
{
	json_object *s, *v = status_vm(id, &s);
	ck_assert_msg(v, "VM %s is not in status", id);
	ck_assert_msg(!strcmp(str(v, "state", NULL), want), "VM %s is %s, expected %s", id, str(v, "state", NULL),
		      want);
	json_object_put(s);
}

/* QEMU processes whose command line names the VM (its run dir). */
static int
qemu_of(const char *id)
{
	char cmd[200];
	snprintf(cmd, sizeof cmd, "pgrep -f '[q]emu-system.*%s' | wc -l", id);
	FILE *f = popen(cmd, "r");
	int n = -1;
	if (f) {
		if (fscanf(f, "%d", &n) != 1)
			n = -1;
		pclose(f);
	}
	return n;
}

static int
qemu_of_gone(const char *id)
{
	int n;
	poll_until((n = qemu_of(id)) <= 0, 15000);
	return n;
}

/* Files under <state>/suspended. */
static int
saved_files(char *names, size_t n)
{
	char cmd[800];
	snprintf(cmd, sizeof cmd, "ls -A %s/suspended 2>/dev/null", state);
	FILE *f = popen(cmd, "r");
	names[0] = 0;
	int k = 0;
	char line[300];
	while (f && fgets(line, sizeof line, f)) {
		k++;
		strncat(names, line, n - strlen(names) - 1);
	}
	if (f)
		pclose(f);
	return k;
}

/* vmfactory exec ID -- sh -c SCRIPT, stdout in *out (may be NULL).  The
 * client library replaces an agent connection the guest leaves unanswered
 * (vmf_client_agent_connect), so an exec that hangs 60 s is a failure. */
static int
gexec(char **out, const char *id, const char *script)
{
	char cmd[4000];
	snprintf(cmd, sizeof cmd, "timeout 60 %s exec %s %s --timeout 60 -- sh -c '%s' 2>>%s/cli.err", exe, common_opts,
		 id, script, tmp);
	FILE *f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	char buf[4096];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	buf[n] = 0;
	int st = pclose(f);
	int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	if (out)
		*out = strdup(buf);
	return rc;
}

/* The guest's counter (a shell loop writing /tmp/cnt). */
static long
counter(const char *id)
{
	/* The loop's `echo > /tmp/cnt` truncates before it writes: a read
	 * between the two finds the file empty, and is made again. */
	long v = -1;
	int rc = 0;
	for (int attempt = 0; attempt < 5 && v <= 0 && rc == 0; attempt++) {
		char *out = NULL;
		rc = gexec(&out, id, "cat /tmp/cnt");
		v = rc == 0 && out ? strtol(out, NULL, 10) : -1;
		free(out);
	}
	ck_assert_msg(v > 0, "the guest's counter cannot be read (exit %d)", rc);
	return v;
}

/* The counter goes on: a later read is larger (it ticks every 100 ms). */
static long
counter_runs(const char *id, long after)
{
	long v;
	poll_until((v = counter(id)) > after, 20000);
	ck_assert_msg(v > after, "the guest's counter stays at %ld", v);
	return v;
}

/* rc of a command that must succeed; on failure the CLI's stderr says why. */
static void
must(int rc, const char *what)
{
	if (rc == 0)
		return;
	char errf[700], *err = NULL;
	snprintf(errf, sizeof errf, "%s/cli.err", tmp);
	vmf_read_file(errf, &err, NULL, 1 << 20, NULL);
	ck_abort_msg("%s: exit %d: %s", what, rc, err ? err : "");
}

static void
wait_daemon_gone(void)
{
	wait_until(vmf(NULL, "status") == 3, 15000, "the daemon still answers after its fault point");
}

static void
start_daemon(const char *fault_point)
{
	fault = fault_point;
	start_tenant_daemon("--max-cpus 2 --max-memory 512");
	fault = NULL;
}

static void
expect_error(const char *cmd, const char *id, const char *want)
{
	vmf_refused(want, "%s %s", cmd, id);
	printf("%s %s refused: %s", cmd, id, cli_stderr());
}

/* cmd on id dies with the daemon at its fault point. */
static void
dies(const char *cmd, const char *id)
{
	expect_error(cmd, id, "closed the connection");
	wait_daemon_gone();
}

START_TEST(suspend_resume_survive_crashes_and_refuse_bad_input)
{
	REQUIRE_FAULT_BUILD();
	/* The tenant reaches the socket (in tmp). */
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	start_daemon("suspend-saving");
	struct got g = {0};
	do_get(&g, "s", 2, 384);
	ck_assert_int_eq(g.rc, 0);
	const char *id = g.id;
	must(gexec(NULL, id, "echo kept-in-tmpfs > /tmp/f"), "exec");
	/* Its own session, so that no exec connection holds it. */
	must(gexec(NULL, id, "setsid sh -c \"i=0; while :; do i=\\$((i+1)); echo \\$i > /tmp/cnt; sleep 0.1; "
		   "done\" </dev/null >/dev/null 2>&1 &"), "exec");
	long c0 = counter_runs(id, 0);

	/* Bad input: each refused with a sentence, the VM keeps running. */
	expect_error("resume", id, "is not suspended (it is assigned)");
	json_object *s = vmf_json("status -o json%s", "");
	json_object *vms = path(s, "vms", NULL);
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (!strcmp(str(v, "state", NULL), "ready")) {
			expect_error("suspend", str(v, "id", NULL), "is not assigned (it is ready)");
			/* A pooled VM is nobody's suspended VM. */
			expect_error("resume", str(v, "id", NULL), "is not suspended (it is ready)");
		}
	}
	json_object_put(s);
	char msg[600];
	int rc = call_as(tu.uid_b, req_suspend, id, msg, sizeof msg);
	ck_assert_msg(rc == -EACCES && strstr(msg, "is not yours"), "another tenant's suspend: %s (%d)", msg, rc);
	rc = call_as(tu.uid_b, req_resume, id, msg, sizeof msg);
	ck_assert_msg(rc == -EACCES && strstr(msg, "is not yours"), "another tenant's resume: %s (%d)", msg, rc);
	/* A full state dir: the save fails, no file stays, the VM runs on. */
	char sdir[700], names[2000];
	snprintf(sdir, sizeof sdir, "%s/suspended", state);
	mkdir(sdir, 0700);
	ck_assert_int_eq(mount("tmpfs", sdir, "tmpfs", 0, "size=1m"), 0);
	expect_error("suspend", id, "no space left");
	ck_assert_int_eq(saved_files(names, sizeof names), 0);
	ck_assert_int_eq(umount(sdir), 0);
	expect_state(id, "assigned");
	c0 = counter_runs(id, c0);

	/* SIGKILL before the saved state is renamed, then after (its record
	 * still says suspending): rolled back each time, running, no file. */
	dies("suspend", id);
	start_daemon("suspend-saved");
	expect_state(id, "assigned");
	ck_assert_int_eq(qemu_of(id), 1);
	ck_assert_msg(saved_files(names, sizeof names) == 0, "left after a suspend cut short: %s", names);
	c0 = counter_runs(id, c0);
	dies("suspend", id);
	start_daemon("suspend-recorded");
	expect_state(id, "assigned");
	ck_assert_int_eq(qemu_of(id), 1);
	ck_assert_msg(saved_files(names, sizeof names) == 0, "left after a suspend cut short once saved: %s", names);
	c0 = counter_runs(id, c0);

	/* SIGKILL once recorded suspended, its QEMU not yet stopped: it stays
	 * suspended and the QEMU goes. */
	dies("suspend", id);
	start_daemon("resume-running");
	expect_state(id, "suspended");
	ck_assert_int_eq(qemu_of_gone(id), 0);
	ck_assert_int_eq(saved_files(names, sizeof names), 1);
	json_object *v = status_vm(id, &s);
	ck_assert_int_gt(json_object_get_int64(path(v, "state_size", NULL)), 1 << 20);
	ck_assert_int_eq(json_object_get_int(path(v, "pid", NULL)), 0);
	json_object_put(s);

	/* SIGKILL with the resumed QEMU running, not yet recorded: suspended,
	 * no QEMU, the state kept. */
	dies("resume", id);
	start_daemon("resume-recorded");
	expect_state(id, "suspended");
	ck_assert_int_eq(qemu_of_gone(id), 0);
	ck_assert_int_eq(saved_files(names, sizeof names), 1);

	/* SIGKILL once the resume is recorded, before its state file goes:
	 * adopted running, the stray file swept. */
	dies("resume", id);
	start_daemon(NULL);
	expect_state(id, "assigned");
	ck_assert_int_eq(qemu_of(id), 1);
	ck_assert_msg(saved_files(names, sizeof names) == 0, "the state file outlived a recorded resume: %s", names);
	c0 = counter_runs(id, c0);
	must(vmf(NULL, "suspend %s", id), "suspend after the recovered resume");
	kill_daemon_hard();
	/* The next daemon holds inspects at a gate: a job on the VM then. */
	char gate_dir[700], paused[800], go[800];
	snprintf(gate_dir, sizeof gate_dir, "%s/gates", tmp);
	ck_assert_int_eq(mkdir(gate_dir, 0700), 0);
	snprintf(paused, sizeof paused, "%s/inspect-pause.paused", gate_dir);
	snprintf(go, sizeof go, "%s/inspect-pause.go", gate_dir);
	setenv("VMFACTORY_FAULT_DIR", gate_dir, 1);
	start_daemon("inspect-pause");
	unsetenv("VMFACTORY_FAULT_DIR");
	expect_state(id, "suspended");
	ck_assert_int_eq(qemu_of_gone(id), 0);
	ck_assert_int_eq(saved_files(names, sizeof names), 1);

	/* Resumed: the file, the process, the hot-added vCPU, the clock. */
	json_object *r = vmf_json("resume %s -o json", id);
	ck_assert_str_eq(str(r, "state", NULL), "assigned");
	ck_assert_int_eq(json_object_get_int(path(r, "vcpus", NULL)), 2);
	json_object_put(r);
	/* One job per VM: a suspend or resume while an inspect holds it is
	 * refused, and the inspect completes. */
	pid_t insp = vmf_test_fork();
	if (insp == 0)
		_exit(vmf(NULL, "inspect %s", id) == 0 ? 0 : 1);
	wait_until(access(paused, F_OK) == 0, 30000, "the inspect did not reach its gate");
	expect_error("suspend", id, "is busy");
	expect_error("resume", id, "is busy");
	FILE *gf = fopen(go, "w");
	ck_assert_ptr_nonnull(gf);
	fclose(gf);
	int ist;
	ck_assert_int_eq(waitpid(insp, &ist, 0), insp);
	ck_assert(WIFEXITED(ist) && WEXITSTATUS(ist) == 0);

	ck_assert_int_eq(saved_files(names, sizeof names), 0);
	char *out = NULL;
	must(gexec(&out, id, "cat /tmp/f; nproc"), "exec");
	ck_assert_msg(strstr(out, "kept-in-tmpfs\n2\n"), "after resume the guest says: %s", out);
	free(out);
	long c1 = counter(id);
	ck_assert_msg(c1 >= c0, "the counter went back from %ld to %ld", c0, c1);
	counter_runs(id, c1);
	json_object *ins = vmf_json("inspect %s -o json", id);
	double off_ms = (double)(json_object_get_int64(path(ins, "guest", "realtime_ns")) -
				 json_object_get_int64(path(ins, "host_realtime_ns", NULL))) / 1e6;
	printf("guest clock %.1f ms from the host after resume\n", off_ms);
	ck_assert_msg(off_ms > -1000 && off_ms < 1000, "guest clock %.1f ms off after resume", off_ms);
	json_object_put(ins);

	/* Suspended again, and released: no state, no QEMU left. */
	json_object *sr = vmf_json("suspend %s -o json", id);
	ck_assert_str_eq(str(sr, "state", NULL), "suspended");
	ck_assert_int_gt(json_object_get_int64(path(sr, "state_size", NULL)), 1 << 20);
	json_object_put(sr);
	ck_assert_int_eq(qemu_of_gone(id), 0);
	expect_error("suspend", id, "is not assigned (it is suspended)");
	ck_assert_int_eq(vmf(NULL, "release %s", id), 0);
	ck_assert_int_eq(saved_files(names, sizeof names), 0);
	json_object_put(g.rec);

	/* A tenant suspends and resumes its own VM. */
	char b_dir[700], bid[1100];
	tenant_dir(tu.b, tu.uid_b, b_dir, sizeof b_dir);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	ck_assert_msg(tenant_get(tu.uid_b, b_dir, "tenant-b", bid, sizeof bid) == 0, "GetVM as a tenant: %s", bid);
	rc = call_as(tu.uid_b, req_suspend, bid, msg, sizeof msg);
	ck_assert_msg(rc == 0, "a tenant's suspend of its own VM: %s", msg);
	expect_state(bid, "suspended");
	rc = call_as(tu.uid_b, req_resume, bid, msg, sizeof msg);
	ck_assert_msg(rc == 0, "a tenant's resume of its own VM: %s", msg);
	expect_state(bid, "assigned");
	ck_assert_msg(call_as(tu.uid_b, req_release, bid, msg, sizeof msg) == 0, "the tenant's release: %s", msg);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

int
main(void)
{
	const char *why = tenant_users_make("vsus");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("suspend tests: %s", why);
	}
	Suite *s = suite_create("suspend");
	TCase *tc = tcase_create("suspend");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 900);
	ADD_TEST(tc, suspend_resume_survive_crashes_and_refuse_bad_input);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
