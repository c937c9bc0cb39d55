/* vmfactory gateway with the unchanged E2B JS SDK (tests/e2b/sdk-test.mjs,
 * e2b pinned by tests/e2b/package-lock.json): a real daemon with a pool of
 * the e2b image profile (built here in the build dir, like image-python3's
 * image), the gateway running as an unprivileged user of the daemon's
 * group, two API keys.  The SDK's checks run in two phases around a
 * gateway restart; then nothing may be left: no VM of the gateway's, no
 * sandbox dir, no error in the gateway's log.  Skips (77) without root or
 * without node. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

#define KEY_A "e2b_0a1b2c3d4e5f60718293a4b5c6d7e8f9"
#define KEY_B "e2b_f9e8d7c6b5a4938271605f4e3d2c1b0a"
/* The gateway's idle timeout here ([gateway] idle_timeout): short, for the
 * client that stops reading; longer than undici's keep-alive (4 s). */
#define IDLE_S 8

static pid_t gw_pid = -1;
/* Why the gateway's users could not be made (main); NULL when they were. */
static const char *users_why;
static char gw_url[128], gw_dir[700], gw_log[700];

/* The node the SDK needs (its package.json: 20.18 or later). */
static bool
have_node(void)
{
	return system("node -e 'const [a, b] = process.versions.node.split(\".\").map(Number); "
		      "process.exit(a > 20 || (a == 20 && b >= 18) ? 0 : 1)' >/dev/null 2>&1") == 0;
}

/* The SDK as the lockfile pins it: contrib/setup installs it; a tree
 * without it gets it here (npm ci). */
static void
ensure_sdk(void)
{
	char p[800], cmd[2000];
	snprintf(p, sizeof p, "%s", vmf_test_src("tests/e2b/node_modules/e2b/package.json"));
	if (access(p, R_OK) == 0)
		return;
	snprintf(cmd, sizeof cmd, "cd '%s' && npm ci --ignore-scripts --no-audit --no-fund > '%s/npm.log' 2>&1",
		 vmf_test_src("tests/e2b"), tmp);
	int rc = system(cmd);
	char logp[800], *log = NULL;
	snprintf(logp, sizeof logp, "%s/npm.log", tmp);
	vmf_read_file(logp, &log, NULL, 1 << 20, NULL);
	ck_assert_msg(rc == 0, "npm ci in tests/e2b failed (%d): %s", rc, log ? log : "");
	free(log);
}

/* build-image --profile e2b into the build dir: a no-op when current.  Its
 * .deb cache is the build dir's, seeded with the installed image's (the
 * kernel). */
static void
e2b_image(char *out, size_t n)
{
	const char *b = getenv("VMFACTORY_BUILDDIR"), *img = getenv("VMFACTORY_IMAGE_DIR");
	char cache[700], cmd[4096];
	snprintf(out, n, "%s/tests/e2b-image", b ? b : ".");
	snprintf(cache, sizeof cache, "%s/tests/image-cache", b ? b : ".");
	snprintf(cmd, sizeof cmd,
		 "mkdir -p '%s' && for f in '%s'/.cache/*.deb; do [ -e \"$f\" ] && [ ! -e '%s'/\"${f##*/}\" ] && "
		 "ln -s \"$f\" '%s'/; done; '%s' --agent '%s/contrib/agent/vmf-agent' --profile e2b --out '%s' "
		 "--cache '%s' > '%s/build-image.log' 2>&1",
		 cache, img, cache, cache, vmf_test_src("contrib/image/build-image"), b ? b : ".", out, cache, tmp);
	int64_t t0 = vmf_now_ms();
	int rc = system(cmd);
	char logp[700], *log = NULL;
	snprintf(logp, sizeof logp, "%s/build-image.log", tmp);
	vmf_read_file(logp, &log, NULL, 1 << 20, NULL);
	ck_assert_msg(rc == 0, "build-image --profile e2b failed (%d): %s", rc, log ? log : "");
	printf("e2b image: %.1f s (%s)\n", (vmf_now_ms() - t0) / 1000.0, strstr(log, "up to date") ? "up to date" : "built");
	free(log);
}

/* `vmfactory gateway` as tenant a; its address from its first line. */
static void
start_gateway(void)
{
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	char keys[800];
	snprintf(keys, sizeof keys, "%s/keys", gw_dir);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		int log = open(gw_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		dup2(fds[1], 1);
		dup2(log, 2);
		close(fds[0]);
		if (!become_tenant(tu.uid_a))
			_exit(126);
		char sbdir[800];
		snprintf(sbdir, sizeof sbdir, "%s/sandboxes", gw_dir);
		char conf[800];
		snprintf(conf, sizeof conf, "%s/gateway.conf", gw_dir);
		execl(exe, exe, "gateway", "--config", conf, "--socket", sock, "--run-dir", run, "--api-keys", keys,
		      "--sandbox-dir", sbdir, "--listen", "127.0.0.1:0", (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	gw_pid = pid;
	char line[256] = "";
	size_t n = 0;
	struct pollfd p = { .fd = fds[0], .events = POLLIN };
	int64_t deadline = vmf_now_ms() + 30000;
	while (!strchr(line, '\n') && n + 1 < sizeof line && vmf_now_ms() < deadline &&
	       poll(&p, 1, 1000) >= 0) {
		if (!(p.revents & (POLLIN | POLLHUP)))
			continue;
		ssize_t r = read(fds[0], line + n, sizeof line - 1 - n);
		if (r <= 0)
			break;
		n += (size_t)r;
		line[n] = '\0';
	}
	close(fds[0]);
	char *u = strstr(line, "http://");
	char *log = NULL;
	vmf_read_file(gw_log, &log, NULL, 1 << 20, NULL);
	ck_assert_msg(u != NULL, "the gateway did not say where it listens: '%s'; its log: %s", line, log ? log : "");
	free(log);
	snprintf(gw_url, sizeof gw_url, "%.*s", (int)strcspn(u, " \n"), u);
}

/* SIGTERM: it finishes and exits 0 within seconds. */
static void
stop_gateway(void)
{
	if (gw_pid <= 0)
		return;
	kill(gw_pid, SIGTERM);
	int st = 0;
	int64_t deadline = vmf_now_ms() + 30000;
	pid_t r;
	while ((r = waitpid(gw_pid, &st, WNOHANG)) == 0 && vmf_now_ms() < deadline)
		poll(NULL, 0, 50);
	if (r == 0)
		kill(gw_pid, SIGKILL), waitpid(gw_pid, &st, 0);
	gw_pid = -1;
	check(r > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the gateway exits 0 on SIGTERM (status %d)", st);
}

static void
run_sdk(const char *phase)
{
	char cmd[4096], line[4096];
	snprintf(cmd, sizeof cmd,
		 "cd '%s' && E2B_API_URL=%s E2B_SANDBOX_URL=%s E2B_API_KEY=%s E2B_TEST_KEY_B=%s "
		 "E2B_TEST_STATE='%s/sdk-state.json' E2B_TEST_GATEWAY_PID=%d E2B_TEST_IDLE_S=%d "
		 "timeout 900 node sdk-test.mjs %s 2>&1",
		 vmf_test_src("tests/e2b"), gw_url, gw_url, KEY_A, KEY_B, tmp, (int)gw_pid, IDLE_S, phase);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	int fails = 0;
	while (fgets(line, sizeof line, p)) {
		fputs(line, stdout);
		fails += strncmp(line, "FAIL:", 5) == 0;
	}
	int st = pclose(p);
	fflush(stdout);
	check(WIFEXITED(st) && WEXITSTATUS(st) == 0 && fails == 0, "SDK phase %s: exit %d, %d failed check(s)", phase,
	      WIFEXITED(st) ? WEXITSTATUS(st) : -1, fails);
}

/* VMs of the daemon whose sandbox links are the gateway's. */
/* The daemon's status (free it with free_unpacked). */
static Vmf__Control__Reply *
daemon_status(void)
{
	struct vmf_client *c;
	struct vmf_error e;
	Vmf__Control__Reply *rep;
	ck_assert_msg(vmf_client_connect(sock, &c, &e) == 0, "%s", e.msg);
	ck_assert_msg(vmf_client_status(c, &rep, 10000, &e) == 0, "%s", e.msg);
	vmf_client_close(c);
	return rep;
}

static int
gateway_vms(void)
{
	Vmf__Control__Reply *rep = daemon_status();
	int n = 0;
	for (size_t i = 0; i < rep->status->n_vms; i++)
		n += strstr(rep->status->vms[i]->sock_link, gw_dir) != NULL;
	vmf__control__reply__free_unpacked(rep, NULL);
	return n;
}

/* The gateway's VMs the daemon holds with a lease of its own ending a grace
 * after the gateway's (the first sandbox's timeout, 600 s, + 30 s), so
 * that with no gateway the daemon still ends them; -1 if one has none. */
static int
gateway_vms_leased(void)
{
	Vmf__Control__Reply *rep = daemon_status();
	int n = 0;
	int64_t now = vmf_realtime_ns();
	for (size_t i = 0; i < rep->status->n_vms; i++) {
		const Vmf__Control__VmInfo *v = rep->status->vms[i];
		if (!strstr(v->sock_link, gw_dir))
			continue;
		int64_t left = (v->lease_deadline_ns - now) / 1000000000;
		printf("gateway VM %s: %s, the daemon's lease %s in %lld s\n", v->id, v->state, v->lease_on_expiry,
		       (long long)left);
		if (!v->lease_deadline_ns || left > 630 || strcmp(v->lease_on_expiry, "release") != 0)
			n = -1;
		else if (n >= 0)
			n++;
	}
	vmf__control__reply__free_unpacked(rep, NULL);
	return n;
}

START_TEST(sdk_drives_the_gateway)
{
	const char *why = users_why;
	if (!why && !have_node())
		why = "node 20.18 or later is not installed (the E2B SDK needs it): contrib/setup installs it";
	if (why) {
		vmf_test_skip("%s", why);
		return;
	}
	ensure_sdk();
	char img[700];
	e2b_image(img, sizeof img);
	/* The gateway's user reaches the socket and its sandboxes' agent
	 * sockets, and owns its dir below the sandbox root. */
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	snprintf(gw_dir, sizeof gw_dir, "%s/gw", tmp);
	snprintf(gw_log, sizeof gw_log, "%s/gateway.log", tmp);
	char keys[800];
	snprintf(keys, sizeof keys, "%s/keys", gw_dir);
	ck_assert_int_eq(mkdir(gw_dir, 0700), 0);
	struct vmf_error e = {0};
	const char *text = "# the test's keys\n" KEY_A " team-a\n" KEY_B " team-b base\n";
	ck_assert_msg(vmf_write_file_atomic(keys, text, strlen(text), 0600, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(chown(keys, tu.uid_a, tu.gid), 0);
	char conf[800], conftext[200];
	snprintf(conf, sizeof conf, "%s/gateway.conf", gw_dir);
	snprintf(conftext, sizeof conftext, "[gateway]\nidle_timeout = %ds\nmax_sandboxes_per_key = 4\n", IDLE_S);
	ck_assert_msg(vmf_write_file_atomic(conf, conftext, strlen(conftext), 0644, &e) == 0, "%s", e.msg);
	ck_assert_msg(vmf(NULL, "check-config %s", conf) == 0, "check-config %s", conf);
	ck_assert_int_eq(chown(gw_dir, tu.uid_a, tu.gid), 0);

	char extra[1200];
	snprintf(extra, sizeof extra, "--image-dir %s --cpus 1 --max-cpus 1 --memory 256 --max-memory 256", img);
	int64_t t0 = vmf_now_ms();
	start_tenant_daemon(extra);
	printf("daemon with a pool of the e2b image: %.1f s\n", (vmf_now_ms() - t0) / 1000.0);

	start_gateway();
	printf("gateway (as %s) at %s\n", tu.a, gw_url);
	t0 = vmf_now_ms();
	run_sdk("main");
	check(gateway_vms_leased() > 0, "the daemon holds a lease of each gateway VM, a grace after the gateway's");
	/* A restart keeps every sandbox, its metadata and its key. */
	stop_gateway();
	start_gateway();
	run_sdk("after-restart");
	printf("SDK checks: %.1f s\n", (vmf_now_ms() - t0) / 1000.0);
	stop_gateway();

	check(gateway_vms() == 0, "no VM of the gateway is left in the daemon");
	char sbdir[800], *log = NULL;
	snprintf(sbdir, sizeof sbdir, "%s/sandboxes", gw_dir);
	int left = 0;
	DIR *d = opendir(sbdir);
	for (struct dirent *de; d && (de = readdir(d));)
		left += de->d_name[0] != '.' && strcmp(de->d_name, "gateway-state.json") != 0;
	if (d)
		closedir(d);
	check(d && left == 0, "no sandbox dir is left in %s (%d)", sbdir, left);
	vmf_read_file(gw_log, &log, NULL, 4 << 20, NULL);
	check(log && !strstr(log, "level=error"), "no error in the gateway's log");
	if (failures)
		printf("--- gateway log:\n%s\n", log ? log : "");
	fflush(stdout);
	free(log);
	ck_assert_msg(failures == 0, "%d check(s) failed", failures);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

/* Runs the gateway as uid (0: as root) with args; its exit status, stderr
 * in *err. */
static int
gateway_once(uid_t uid, const char *args, char **err)
{
	char cmd[4096], errf[700], who[200] = "";
	snprintf(errf, sizeof errf, "%s/once.err", tmp);
	unlink(errf);
	if (uid)
		snprintf(who, sizeof who, "setpriv --reuid=%s --regid=%s --init-groups ", tu.a, tu.group);
	snprintf(cmd, sizeof cmd, "%s%s gateway --socket %s --run-dir %s --listen 127.0.0.1:0 %s </dev/null "
		 ">/dev/null 2>%s", who, exe, sock, run, args, errf);
	int st = system(cmd);
	*err = NULL;
	vmf_read_file(errf, err, NULL, 1 << 20, NULL);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Each refusal at start names its cause; nothing is left running. */
START_TEST(gateway_refuses_bad_setup)
{
	const char *why = users_why;
	if (why) {
		vmf_test_skip("%s", why);
		return;
	}
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	char dir[700], keys[800], loose[800], bad[800], dup[800], state[800], args[4096];
	snprintf(dir, sizeof dir, "%s/gw", tmp);
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	ck_assert_int_eq(chown(dir, tu.uid_a, tu.gid), 0);
	struct {
		char *path;
		const char *text;
		mode_t mode;
	} files[] = {
		{ keys, KEY_A " team-a\n", 0600 },
		{ loose, KEY_A " team-a\n", 0644 },
		{ bad, "# comment\n\nshort team-a\n", 0600 },
		{ dup, KEY_A " team-a\n" KEY_A " team-b\n", 0600 },
		{ state, "{\"version\": 1, \"sandboxes\": [{\"id\": \"x\"}]}", 0600 },
	};
	const char *names[] = { "keys", "loose", "bad", "dup", "state.json" };
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(files[i].path, 800, "%s/%s", dir, names[i]);
		struct vmf_error e = {0};
		ck_assert_msg(vmf_write_file_atomic(files[i].path, files[i].text, strlen(files[i].text), files[i].mode,
						    &e) == 0, "%s", e.msg);
		ck_assert_int_eq(chown(files[i].path, tu.uid_a, tu.gid), 0);
	}
	struct {
		uid_t uid;
		const char *args, *want;
	} cases[] = {
		{ 0, "--api-keys %s/keys", "must not run as root" },
		{ 1, "", "no API keys" },
		{ 1, "--api-keys %s/missing", "cannot open the API keys file" },
		{ 1, "--api-keys %s/loose", "not readable or writable by others" },
		{ 1, "--api-keys %s/bad", "bad:3: a key must be 16 to 256" },
		{ 1, "--api-keys %s/dup", "dup:2: the same key as on line 1" },
		{ 1, "--api-keys %s/keys --sandbox-dir /var/tmp", "belongs to uid 0, not to this user" },
		{ 1, "--api-keys %s/keys --state-file %s/state.json", "an entry is incomplete or malformed" },
		/* No daemon on the socket: said, not retried forever. */
		{ 1, "--api-keys %s/keys", "no vmfactory daemon is answering" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *err = NULL;
		snprintf(args, sizeof args, cases[i].args, dir, dir);
		char full[4400];
		if (strstr(args, "--sandbox-dir"))
			snprintf(full, sizeof full, "%s", args);
		else
			snprintf(full, sizeof full, "%s --sandbox-dir %s/sandboxes", args, dir);
		int rc = gateway_once(cases[i].uid ? tu.uid_a : 0, full, &err);
		check(rc != 0 && err && strstr(err, cases[i].want), "gateway %s: exit %d, '%s'", args, rc,
		      err ? strtok(err, "\n") : "");
		free(err);
	}
	ck_assert_int_eq(vmf_test_count_under("vmfactory", tmp), 0);
	ck_assert_msg(failures == 0, "%d check(s) failed", failures);
}
END_TEST

static void
teardown(void)
{
	if (gw_pid > 0) {
		kill(gw_pid, SIGKILL);
		waitpid(gw_pid, NULL, 0);
		gw_pid = -1;
	}
	cleanup();
}

int
main(void)
{
	/* In the main process: its exit removes them, whatever the tests did. */
	users_why = geteuid() != 0 ? "the gateway's user and group need root" : tenant_users_make("ve2b");
	Suite *s = suite_create("e2b");
	TCase *tc = tcase_create("e2b");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 1500);
	ADD_TEST(tc, gateway_refuses_bad_setup);
	ADD_TEST(tc, sdk_drives_the_gateway);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
