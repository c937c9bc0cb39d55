/* Exec in a handed-out VM, end to end: `vmfactory exec` and the client
 * library against the real agent in a QEMU guest under TCG, one daemon with
 * a pool of 1.  Output and exit statuses, 100 MiB through stdin and back
 * with the CLI's memory flat while its reader is slow, several processes on
 * one connection, bad input (missing command, bad cwd, huge argv, someone
 * else's VM, a released VM), a client killed mid-stream, two clients of one
 * VM, and the daemon's inspect answering while the owner holds the agent.
 *
 * Two users and a group (vmft-ex<pid>{a,b,g}) are made by main() and
 * removed before it returns; without root or useradd, or with a guest
 * image whose agent has no exec, the program exits 77 and says why.
 * Checks are counted, so one run lists every failure. */
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

/* ---- running the CLI ---- */

struct run {
	int rc;
	char *out, *err;
	size_t nout;
};

static void
run_free(struct run *r)
{
	free(r->out);
	free(r->err);
	memset(r, 0, sizeof *r);
}

static char *
slurp(int fd, size_t *n)
{
	size_t cap = 4096, len = 0;
	char *b = malloc(cap);
	ssize_t k;
	while ((k = read(fd, b + len, cap - len - 1)) > 0 || (k < 0 && errno == EINTR)) {
		if (k < 0)
			continue;
		len += (size_t)k;
		if (len + 1 >= cap)
			b = realloc(b, cap *= 2);
	}
	b[len] = '\0';
	if (n)
		*n = len;
	return b;
}

/* Starts `vmfactory exec <common> ARGV...` as uid (0: as we are) with
 * stdin from in_fd (-1: /dev/null); stdout and stderr pipes in *out_fd and
 * *err_fd. */
static pid_t
spawn_exec(uid_t uid, int in_fd, int *out_fd, int *err_fd, const char *const *argv)
{
	int o[2], e[2];
	ck_assert_int_eq(pipe2(o, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(e, O_CLOEXEC), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		int in = in_fd >= 0 ? in_fd : open("/dev/null", O_RDONLY);
		dup2(in, 0);
		dup2(o[1], 1);
		dup2(e[1], 2);
		if (uid && (!become_tenant(uid)))
			_exit(99);
		const char *v[64] = { exe, "exec", "--socket", sock, "--state-dir", state, "--run-dir", run };
		int n = 8;
		for (int i = 0; argv[i] && n < 63; i++)
			v[n++] = argv[i];
		v[n] = NULL;
		execv(exe, (char **)v);
		_exit(98);
	}
	close(o[1]);
	close(e[1]);
	*out_fd = o[0];
	*err_fd = e[0];
	return pid;
}

static int
wait_rc(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Runs exec to its end, as uid, stdin from the file in (NULL: none). */
static void
ex_as(uid_t uid, struct run *r, const char *in, const char *const *argv)
{
	int in_fd = in ? open(in, O_RDONLY | O_CLOEXEC) : -1;
	int of, ef;
	pid_t pid = spawn_exec(uid, in_fd, &of, &ef, argv);
	if (in_fd >= 0)
		close(in_fd);
	/* stderr is small: read it after stdout ends. */
	r->out = slurp(of, &r->nout);
	r->err = slurp(ef, NULL);
	close(of);
	close(ef);
	r->rc = wait_rc(pid);
}

#define EX(r, ...) ex_as(0, (r), NULL, (const char *const[]){ __VA_ARGS__, NULL })

/* ---- 100 MiB through cat, read slowly at first ---- */

/* 100 MiB through cat; $VMFACTORY_EXEC_MIB less where the guest agent is
 * slow (the sanitizer stage's, under ASan in a TCG guest). */
static size_t big_size;
#define BIG big_size

static uint8_t
pattern(size_t i)
{
	return (uint8_t)((i * 2654435761u) >> 13);
}

static uint64_t
fnv(uint64_t h, const uint8_t *d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ d[i]) * 1099511628211ull;
	return h;
}

struct feeder {
	int fd;
	uint64_t sum;
};

static void *
feed_thread(void *arg)
{
	struct feeder *f = arg;
	static uint8_t buf[65536];
	f->sum = 14695981039346656037ull;
	for (size_t off = 0; off < BIG; off += sizeof buf) {
		for (size_t i = 0; i < sizeof buf; i++)
			buf[i] = pattern(off + i);
		f->sum = fnv(f->sum, buf, sizeof buf);
		for (size_t done = 0; done < sizeof buf;) {
			ssize_t w = write(f->fd, buf + done, sizeof buf - done);
			if (w <= 0) {
				close(f->fd);
				return NULL;
			}
			done += (size_t)w;
		}
	}
	close(f->fd);
	return NULL;
}

static void
hundred_mib_through_cat(const char *id)
{
	int in[2];
	ck_assert_int_eq(pipe2(in, O_CLOEXEC), 0);
	int of, ef;
	pid_t pid = spawn_exec(0, in[0], &of, &ef, (const char *const[]){ id, "--", "cat", NULL });
	close(in[0]);
	struct feeder f = { .fd = in[1] };
	pthread_t t;
	ck_assert_int_eq(pthread_create(&t, NULL, feed_thread, &f), 0);
	static uint8_t buf[65536];
	uint64_t sum = 14695981039346656037ull;
	size_t got = 0;
	long first = -1, worst = 0;
	int64_t start = vmf_now_ms(), slow_until = start + 8000;
	for (;;) {
		bool slow = vmf_now_ms() < slow_until;
		/* A slow reader: 4 KiB every 20 ms while the guest could send
		 * megabytes a second; the CLI must not buffer the difference. */
		ssize_t n = read(of, buf, slow ? 4096 : sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		sum = fnv(sum, buf, (size_t)n);
		got += (size_t)n;
		if (slow) {
			long r = (long)vmf_proc_rss_kib(pid);
			if (first < 0)
				first = r;
			worst = r > worst ? r : worst;
			poll(NULL, 0, 20);
		}
	}
	pthread_join(t, NULL);
	char *err = slurp(ef, NULL);
	close(of);
	close(ef);
	int rc = wait_rc(pid);
	double s = (vmf_now_ms() - start) / 1000.0;
	printf("%zu MiB through cat in the guest: %zu bytes back in %.1f s; CLI RSS %ld KiB at first, %ld KiB at "
	       "most while read slowly\n", BIG >> 20, got, s, first, worst);
	check(rc == 0 && got == BIG && sum == f.sum, "%zu MiB in and back out of cat, byte for byte (rc %d, %zu "
	      "bytes, checksum %s; %s)", BIG >> 20, rc, got, sum == f.sum ? "equal" : "differs", err);
	check(first > 0 && worst - first < 8192, "the CLI's memory stays flat while its reader is slow (%ld -> %ld KiB)",
	      first, worst);
	free(err);
}

/* ---- the library, straight to the agent ---- */

static void
several_on_one_connection(const char *agent_sock)
{
	struct vmf_client_agent *a;
	struct vmf_error e = {0};
	int rc = vmf_client_agent_connect(agent_sock, "unix", 0, 30000, NULL, NULL, &a, &e);
	check(rc == 0, "the library connects to the agent socket %s (%s)", agent_sock, e.msg);
	if (rc)
		return;
	uint64_t ids[3];
	int started = 0;
	for (int i = 0; i < 3; i++) {
		char script[80];
		snprintf(script, sizeof script, "sleep 0.%d; echo p%d; exit %d", 3 - i, i, 20 + i);
		struct vmf_exec_opts o = { .argv = (const char *const[]){ "sh", "-c", script, NULL } };
		started += vmf_client_exec_start(a, &o, &ids[i], 30000, &e) == 0;
	}
	bool pong = vmf_client_agent_ping(a, 10000, &e) == 0;
	int exited = 0, right = 0;
	char out[3][8] = { "", "", "" };
	int64_t deadline = vmf_now_ms() + 60000;
	while (started == 3 && exited < 3 && vmf_now_ms() < deadline) {
		struct vmf_exec_event ev;
		if (vmf_client_agent_next_event(a, &ev, 60000, &e) < 0 || ev.type == VMF_EXEC_EV_NONE)
			break;
		for (int i = 0; i < 3; i++) {
			if (ids[i] != ev.exec_id)
				continue;
			if (ev.type == VMF_EXEC_EV_OUTPUT)
				snprintf(out[i], sizeof out[i], "%.*s", (int)ev.len, (const char *)ev.data);
			if (ev.type == VMF_EXEC_EV_EXIT) {
				char want[8];
				snprintf(want, sizeof want, "p%d\n", i);
				right += ev.exit_code == 20 + i && strcmp(out[i], want) == 0;
				exited++;
			}
		}
	}
	check(started == 3 && pong && right == 3, "three processes at once on one connection, each with its output "
	      "and status, the agent answering a ping meanwhile (%d started, %d right; %s)", started, right, e.msg);
	vmf_client_agent_close(a);
}

/* An agent connection to arg (its socket's path), in an as_tenant child. */
static int
act_agent_connect(const void *arg, char *msg, size_t n)
{
	struct vmf_client_agent *a;
	struct vmf_error e = {0};
	int rc = vmf_client_agent_connect(arg, "unix", 0, 10000, NULL, NULL, &a, &e);
	snprintf(msg, n, "%s", rc ? e.msg : "");
	if (rc == 0)
		vmf_client_agent_close(a);
	return rc;
}

/* ---- the test ---- */

static const char *
vm_field(json_object *rec, const char *key)
{
	return json_object_get_string(path(rec, key, NULL));
}


/* GetVM as uid into dir/share and dir/sock, through the CLI. */
static json_object *
get_json_as(uid_t uid, const char *dir, const char *name)
{
	char *out = NULL;
	int rc = vmf_as(uid, &out, "get --cpus 1 --memory 256 --sandbox %s --share-dir %s/share --sock-dir %s/sock "
			"--timeout 300 -o json", name, dir, dir);
	ck_assert_msg(rc == 0, "GetVM as uid %u exited %d: %s", (unsigned)uid, rc, cli_stderr());
	json_object *j = json_tokener_parse(out);
	ck_assert_ptr_nonnull(j);
	free(out);
	return j;
}

START_TEST(exec_end_to_end)
{
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	start_tenant_daemon("");
	struct run r;

	/* ---- root's VM: output, statuses, options ---- */
	char root_dir[700];
	snprintf(root_dir, sizeof root_dir, "%s/root", tmp);
	ck_assert_int_eq(mkdir(root_dir, 0700), 0);
	json_object *vm = get_json_as(0, root_dir, "root-vm");
	char id[64], agent_sock[700];
	snprintf(id, sizeof id, "%s", vm_field(vm, "id"));
	snprintf(agent_sock, sizeof agent_sock, "%s", vm_field(vm, "agent_socket"));
	check(strcmp(vm_field(vm, "agent_transport"), "unix") == 0, "the reply names the agent's transport (%s)",
	      vm_field(vm, "agent_transport"));

	EX(&r, id, "--", "uname", "-a");
	check(r.rc == 0 && strncmp(r.out, "Linux ", 6) == 0, "uname -a in the guest (%d: %s%s)", r.rc, r.out, r.err);
	run_free(&r);
	EX(&r, id, "--", "sh", "-c", "echo out; echo err >&2; exit 3");
	check(r.rc == 3 && strcmp(r.out, "out\n") == 0 && strstr(r.err, "err\n"),
	      "stdout and stderr apart, exit status 3 (%d: '%s' '%s')", r.rc, r.out, r.err);
	run_free(&r);
	EX(&r, id, "--", "sh", "-c", "kill -TERM $$");
	check(r.rc == 128 + SIGTERM, "killed by SIGTERM: status 143 (%d)", r.rc);
	run_free(&r);
	int64_t t0 = vmf_now_ms();
	EX(&r, id, "--timeout", "2", "--", "sleep", "60");
	check(r.rc == 124 && strstr(r.err, "timed out") && vmf_now_ms() - t0 < 30000,
	      "--timeout 2 ends sleep 60: status 124 (%d: %s)", r.rc, r.err);
	run_free(&r);
	EX(&r, id, "--env", "FOO=bar baz", "--env", "X=1", "--cwd", "/proc", "--", "sh", "-c", "echo $FOO $X; pwd");
	check(r.rc == 0 && strcmp(r.out, "bar baz 1\n/proc\n") == 0, "--env and --cwd (%d: '%s' %s)", r.rc, r.out, r.err);
	run_free(&r);
	EX(&r, id, "--user", "1234:567", "--", "id");
	check(r.rc == 0 && strstr(r.out, "uid=1234") && strstr(r.out, "gid=567"), "--user 1234:567 (%d: %s %s)", r.rc,
	      r.out, r.err);
	run_free(&r);
	EX(&r, id, "--tty", "--", "sh", "-c", "test -t 0 && test -t 1 && stty size");
	check(r.rc == 0 && strstr(r.out, "24 80"), "--tty gives a terminal (%d: %s %s)", r.rc, r.out, r.err);
	run_free(&r);

	/* ---- bad input: clear errors, the agent keeps serving ---- */
	EX(&r, id, "--", "no-such-command-vmf");
	check(r.rc == 127 && strstr(r.err, "no-such-command-vmf"), "a missing command: status 127, named (%d: %s)", r.rc,
	      r.err);
	run_free(&r);
	EX(&r, id, "--cwd", "/no/such/dir", "--", "true");
	check(r.rc == 126 && strstr(r.err, "/no/such/dir"), "a bad cwd: status 126, named (%d: %s)", r.rc, r.err);
	run_free(&r);
	char *big = malloc(100001);
	memset(big, 'x', 100000);
	big[100000] = '\0';
	EX(&r, id, "--", "echo", big);
	check(r.rc == 125 && strstr(r.err, "argument list too long"), "a 100 KB argument: argument list too long (%d: %s)",
	      r.rc, r.err);
	run_free(&r);
	char env[100010];
	snprintf(env, sizeof env, "BIG=%s", big);
	EX(&r, id, "--env", env, "--", "true");
	check(r.rc == 125 && strstr(r.err, "argument list too long"), "a 100 KB environment: argument list too long (%d: %s)",
	      r.rc, r.err);
	run_free(&r);
	free(big);
	EX(&r, id, "--", "echo", "still serving");
	check(r.rc == 0 && strcmp(r.out, "still serving\n") == 0, "the agent serves after bad input (%d: %s)", r.rc, r.err);
	run_free(&r);

	/* ---- 100 MiB, several processes, the daemon beside the owner ---- */
	hundred_mib_through_cat(id);
	several_on_one_connection(agent_sock);

	/* The owner holds the agent port (its process has started: it said
	 * so); the daemon's inspect has its own. */
	int of, ef;
	pid_t holder = spawn_exec(0, -1, &of, &ef,
				  (const char *const[]){ id, "--", "sh", "-c", "echo holding; exec sleep 8", NULL });
	char held[32] = "";
	ssize_t hn = read(of, held, sizeof held - 1);
	held[hn > 0 ? hn : 0] = '\0';
	ck_assert_msg(!strcmp(held, "holding\n"), "the holding exec did not start: '%s'", held);
	t0 = vmf_now_ms();
	char *out = NULL;
	int rc = vmf(&out, "inspect %s -o json", id);
	double ims = (double)(vmf_now_ms() - t0);
	json_object *ij = rc == 0 ? json_tokener_parse(out) : NULL, *guest = NULL;
	check(ij && json_object_object_get_ex(ij, "guest", &guest) && ims < 5000,
	      "inspect shows the guest view while the owner holds the agent (%.0f ms: %.300s)", ims, out);
	if (ij)
		json_object_put(ij);
	free(out);
	/* A second client of the same QEMU port waits its turn. */
	EX(&r, id, "--", "echo", "second");
	check(r.rc == 0 && strcmp(r.out, "second\n") == 0 && strstr(r.err, "waiting"),
	      "a second exec waits for the first and says so (%d: %s %s)", r.rc, r.out, r.err);
	run_free(&r);
	close(of);
	close(ef);
	wait_rc(holder);

	/* ---- a client killed mid-stream ---- */
	pid_t victim = spawn_exec(0, -1, &of, &ef,
				  (const char *const[]){ id, "--", "sh", "-c", "echo $$; exec sleep 1000", NULL });
	char line[64] = "";
	ssize_t n = read(of, line, sizeof line - 1);
	line[n > 0 ? n : 0] = '\0';
	int gpid = atoi(line);
	kill(victim, SIGKILL);
	wait_rc(victim);
	close(of);
	close(ef);
	char probe[128];
	snprintf(probe, sizeof probe, "test -d /proc/%d && echo alive || echo gone", gpid);
	bool gone = false;
	struct vmf_wait w = vmf_wait_start(60000);
	while (gpid > 0 && !gone && vmf_wait_more(&w)) {
		EX(&r, id, "--", "sh", "-c", probe);
		gone = r.rc == 0 && strcmp(r.out, "gone\n") == 0;
		run_free(&r);
	}
	check(gpid > 0 && gone, "the guest process %d of a killed client is gone, and the agent serves the next one",
	      gpid);

	/* ---- tenants: the owner's agent, nobody else's ---- */
	char a_dir[700];
	tenant_dir(tu.a, tu.uid_a, a_dir, sizeof a_dir);
	json_object *avm = get_json_as(tu.uid_a, a_dir, "tenant-a");
	const char *aid = vm_field(avm, "id"), *a_agent = vm_field(avm, "agent_socket");
	ex_as(tu.uid_a, &r, NULL, (const char *const[]){ aid, "--", "echo", "mine", NULL });
	check(r.rc == 0 && strcmp(r.out, "mine\n") == 0, "%s runs a command in its own VM (%d: %s)", tu.a, r.rc, r.err);
	run_free(&r);
	ex_as(tu.uid_b, &r, NULL, (const char *const[]){ aid, "--", "echo", "theirs", NULL });
	check(r.rc == 125 && strstr(r.err, "not yours"), "%s cannot exec in %s's VM: the CLI says why (%d: %s)", tu.b,
	      tu.a, r.rc, r.err);
	run_free(&r);
	char msg[600];
	rc = as_tenant(tu.uid_b, act_agent_connect, a_agent, msg, sizeof msg);
	check(rc == -EACCES && strstr(msg, "not yours"), "%s cannot connect to %s's agent socket (%d: %s)", tu.b, tu.a,
	      rc, msg);
	json_object_put(avm);

	/* ---- a released VM ---- */
	ck_assert_int_eq(vmf(NULL, "release %s", id), 0);
	EX(&r, id, "--", "true");
	check(r.rc == 125 && strstr(r.err, id), "exec in a released VM is a clear error (%d: %s)", r.rc, r.err);
	run_free(&r);
	rc = act_agent_connect(agent_sock, msg, sizeof msg);
	check(rc < 0 && strstr(msg, "not running"), "the library on a released VM's agent socket (%d: %s)", rc, msg);
	json_object_put(vm);

	check(daemon_answers(), "the daemon answers after all of it");
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	ck_assert_msg(failures == 0, "%d check(s) failed; see the FAIL lines above", failures);
}
END_TEST

/* The image's agent must know exec (vmf-agent 0.4 and later): its version
 * string, read from the copy beside the initrd (not executable there). */
static const char *
image_has_exec(void)
{
	static char why[800];
	const char *img = vmf_test_image_dir();
	if (!img)
		return "no guest image";
	char p[700], *bin = NULL;
	size_t len = 0;
	snprintf(p, sizeof p, "%s/vmf-agent", img);
	if (vmf_read_file(p, &bin, &len, 64u << 20, NULL) < 0)
		len = 0;
	int major = 0, minor = 0;
	const char *v = bin ? memmem(bin, len, "vmf-agent 0.", 12) : NULL;
	bool ok = v && sscanf(v, "vmf-agent %d.%d", &major, &minor) == 2 && (major > 0 || minor >= 4);
	free(bin);
	if (ok)
		return NULL;
	snprintf(why, sizeof why, "the guest image in %s carries an agent without exec: rebuild it "
		 "(ninja -C BUILD guest-image)", img);
	return why;
}

int
main(void)
{
	const char *mib = getenv("VMFACTORY_EXEC_MIB");
	big_size = (size_t)(mib && atoi(mib) > 0 ? atoi(mib) : 100) << 20;
	const char *why = image_has_exec();
	if (!why)
		why = tenant_users_make("vmft-ex");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("exec tests: %s", why);
	}
	Suite *s = suite_create("exec");
	TCase *tc = tcase_create("exec");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 1500);
	ADD_TEST(tc, exec_end_to_end);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
