/* The config file: golden files in tests/data/config.  NAME.conf with a
 * NAME.err holds the exact messages check-config prints (the path as
 * "NAME.conf"); with a NAME.ok, the parse result as dump() writes it.
 * VMFACTORY_UPDATE_GOLDEN=1 rewrites the expected files from the parser. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "testlib.h"
#include "util.h"

extern char **environ;

static char *
dump(const struct vmf_config *c)
{
	const struct vmf_daemon_opts *o = &c->opts;
	char *buf = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&buf, &n);
	ck_assert_ptr_nonnull(f);
#define S(k) fprintf(f, "%s = %s\n", #k, o->k ? o->k : "(unset)")
#define U(k) fprintf(f, "%s = %u\n", #k, o->k)
	S(socket_path);
	S(state_dir);
	S(run_dir);
	S(group);
	S(metrics_listen);
	S(qemu_binary);
	S(accel);
	S(machine);
	S(image_dir);
	S(kernel);
	S(initrd);
	U(vcpus);
	U(memory_mib);
	U(max_vcpus);
	U(max_memory_mib);
	U(fill_parallelism);
	U(max_miss_clones);
	fprintf(f, "log_level = %d\n", c->log_level);
	fprintf(f, "limits = serial_log_kib=%u scratch_max_mib=%u scratch_max_volumes=%u tenant_max_vms=%u "
		"tenant_max_suspended=%u tenant_max_suspended_mib=%u tenant_max_snapshots=%u "
		"tenant_max_snapshot_mib=%u\n", o->serial_log_kib, o->scratch_max_mib, o->scratch_max_volumes,
		o->tenant_max_vms, o->tenant_max_suspended, o->tenant_max_suspended_mib, o->tenant_max_snapshots,
		o->tenant_max_snapshot_mib);
	/* The queue, where not the defaults. */
	if (o->max_queue != 256 || o->tenant_max_queued != 32 || o->get_timeout_s != 60 || o->clone_parallelism)
		fprintf(f, "queue = max_queue=%u tenant_max_queued=%u get_timeout=%u clone_parallelism=%u\n",
			o->max_queue, o->tenant_max_queued, o->get_timeout_s, o->clone_parallelism);
	/* The stop policy and cgroups, where not the defaults. */
	if (strcmp(o->stop, "flush") || o->stop_timeout_s != 10 || strcmp(o->on_guest_reset, "stop") || o->cgroup)
		fprintf(f, "stop = %s, stop_timeout = %u, on_guest_reset = %s, cgroup = %s\n", o->stop, o->stop_timeout_s,
			o->on_guest_reset, o->cgroup ? o->cgroup : "(unset)");
	ck_assert_ptr_eq(o->pools, c->pools);
	ck_assert_uint_eq(o->n_pools, c->n_pools);
	for (unsigned i = 0; i < c->n_pools; i++) {
		const struct vmf_pool_spec *p = &c->pools[i];
		fprintf(f, "[pool %s] size=%u vcpus=%u memory_mib=%u max_vcpus=%u max_memory_mib=%u max_idle_s=%u "
			"share_memory=%s\n", p->name, p->size, p->vcpus, p->memory_mib, p->max_vcpus,
			p->max_memory_mib, p->max_idle_s, p->share_memory ? "yes" : "no");
		if (p->image_dir)
			fprintf(f, "[pool %s] image_dir=%s\n", p->name, p->image_dir);
		if (strcmp(p->stop, "flush") || p->stop_timeout_s != 10 || strcmp(p->on_guest_reset, "stop") || p->cgroup)
			fprintf(f, "[pool %s] stop=%s stop_timeout=%u on_guest_reset=%s cgroup=%s\n", p->name, p->stop,
				p->stop_timeout_s, p->on_guest_reset, p->cgroup ? p->cgroup : "(unset)");
	}
	/* [gateway], when the file has it (the gateway's; the daemon reads past). */
	const struct vmf_gateway_opts *g = &c->gateway;
	if (g->listen || g->api_keys || g->max_sandboxes)
		fprintf(f, "[gateway] listen=%s api_keys=%s sandbox_dir=%s state_file=%s max_connections=%u "
			"max_sandboxes=%u max_sandboxes_per_key=%u workers=%u idle_timeout_s=%u default_timeout_s=%u "
			"max_timeout_s=%u max_body=%u\n", g->listen ? g->listen : "(unset)",
			g->api_keys ? g->api_keys : "(unset)", g->sandbox_dir ? g->sandbox_dir : "(unset)",
			g->state_file ? g->state_file : "(unset)", g->max_connections, g->max_sandboxes,
			g->max_sandboxes_per_key, g->workers, g->idle_timeout_s, g->default_timeout_s, g->max_timeout_s,
			g->max_body);
#undef S
#undef U
	fclose(f);
	return buf;
}

static char *
slurp(const char *path)
{
	char *s = NULL;
	size_t n = 0;
	if (vmf_read_file(path, &s, &n, 1 << 20, NULL) < 0)
		return NULL;
	return s;
}

static void
spit(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(s, f);
	ck_assert_int_eq(fclose(f), 0);
}

/* Parses dir/name as "name" and compares with name's .err or .ok. */
static void
check_golden(const char *dir, const char *name)
{
	char path[1024], exp_path[1024];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	char *text = slurp(path);
	ck_assert_msg(text != NULL, "cannot read %s", path);
	size_t len = strlen(text);
	bool bad = strncmp(name, "bad-", 4) == 0;
	snprintf(exp_path, sizeof(exp_path), "%s/%.*s.%s", dir, (int)(strlen(name) - 5), name, bad ? "err" : "ok");

	struct vmf_config c;
	struct vmf_error e = {0};
	int r = vmf_config_parse(&c, name, text, len, &e);
	char *got = bad ? strdup(c.errors ? c.errors : "") : dump(&c);
	if (bad)
		ck_assert_msg(r == -EINVAL && c.n_errors > 0, "%s: expected errors, got rc %d", name, r);
	else
		ck_assert_msg(r == 0, "%s: expected no error, got: %s%s", name, c.errors ? c.errors : "", e.msg);
	if (getenv("VMFACTORY_UPDATE_GOLDEN"))
		spit(exp_path, got);
	char *want = slurp(exp_path);
	ck_assert_msg(want != NULL, "%s: no expected output %s", name, exp_path);
	ck_assert_msg(strcmp(got, want) == 0, "%s: output differs from %s\n--- got:\n%s--- want:\n%s", name, exp_path,
		      got, want);
	free(want);
	free(got);
	free(text);
	vmf_config_free(&c);
}

START_TEST(golden_files)
{
	char dir[700];
	snprintf(dir, sizeof(dir), "%s", vmf_test_src("tests/data/config"));
	DIR *d = opendir(dir);
	ck_assert_msg(d != NULL, "cannot open %s (set VMFACTORY_SRCDIR)", dir);
	unsigned n_bad = 0, n_good = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l < 6 || strcmp(de->d_name + l - 5, ".conf") != 0)
			continue;
		check_golden(dir, de->d_name);
		if (strncmp(de->d_name, "bad-", 4) == 0)
			n_bad++;
		else
			n_good++;
	}
	closedir(d);
	ck_assert_uint_ge(n_bad, 7);
	ck_assert_uint_ge(n_good, 3);
}
END_TEST

/* The installed example must pass check-config as shipped. */
START_TEST(example_is_valid)
{
	const char *path = vmf_test_src("contrib/vmfactory.conf.example");
	struct vmf_config c;
	struct vmf_error e = {0};
	int r = vmf_config_load(&c, path, &e);
	ck_assert_msg(r == 0, "%s%s", c.errors ? c.errors : "", e.msg);
	ck_assert_uint_eq(c.n_pools, 1);
	ck_assert_str_eq(c.pools[0].name, "default");
	ck_assert_uint_eq(c.pools[0].max_idle_s, 3600);
	ck_assert_str_eq(c.opts.socket_path, VMF_DEFAULT_SOCKET);
	vmf_config_free(&c);
}
END_TEST

START_TEST(missing_file)
{
	struct vmf_config c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_config_load(&c, "/nonexistent/vmfactory.conf", &e), -ENOENT);
	ck_assert_ptr_null(c.errors);
	ck_assert_ptr_nonnull(strstr(e.msg, "/nonexistent/vmfactory.conf"));
	vmf_config_free(&c);
	/* /dev/null: an empty config, for tests that must not read /etc. */
	ck_assert_int_eq(vmf_config_load(&c, "/dev/null", &e), 0);
	ck_assert_uint_eq(c.n_pools, 0);
	vmf_config_free(&c);
}
END_TEST

/* Text need not be NUL-terminated; bytes after len are never read. */
START_TEST(length_bounded)
{
	const char text[] = "[pool a]\nsize = 3\n[pool b]";
	struct vmf_config c;
	ck_assert_int_eq(vmf_config_parse(&c, "t", text, 18, NULL), 0);
	ck_assert_uint_eq(c.n_pools, 1);
	ck_assert_uint_eq(c.pools[0].size, 3);
	vmf_config_free(&c);
	const char nul[] = "[pool a]\nsi\0ze = 3\n";
	ck_assert_int_eq(vmf_config_parse(&c, "t", nul, sizeof(nul) - 1, NULL), -EINVAL);
	ck_assert_str_eq(c.errors, "t:2: the line holds a NUL byte\n");
	vmf_config_free(&c);
}
END_TEST

/* Runs the vmfactory binary with args (NULL-terminated); exit status,
 * stdout and stderr. */
static int
run_cli(const char *const *args, char **out, char **err)
{
	const char *b = getenv("VMFACTORY_BUILDDIR");
	char exe[700];
	snprintf(exe, sizeof(exe), "%s/vmfactory", b ? b : ".");
	char *dir = vmf_test_tmpdir("vmf-cfg");
	char outp[800], errp[800];
	snprintf(outp, sizeof(outp), "%s/out", dir);
	snprintf(errp, sizeof(errp), "%s/err", dir);
	int ofd = open(outp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int efd = open(errp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert(ofd >= 0 && efd >= 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, ofd, 1);
	posix_spawn_file_actions_adddup2(&fa, efd, 2);
	const char *argv[32] = { exe };
	for (int i = 0; args[i]; i++) {
		ck_assert_int_lt(i, 30);
		argv[i + 1] = args[i];
	}
	pid_t pid;
	int sr = posix_spawn(&pid, exe, &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(ofd);
	close(efd);
	ck_assert_msg(sr == 0, "cannot run %s: %s", exe, strerror(sr));
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	*out = slurp(outp);
	*err = slurp(errp);
	vmf_rm_rf(dir, NULL);
	free(dir);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int
run_check(const char *file, char **out, char **err)
{
	return run_cli((const char *const[]){ "check-config", file, NULL }, out, err);
}

START_TEST(cli_check_config)
{
	char *out, *err;
	const char *good = vmf_test_src("tests/data/config/good-pools.conf");
	char goodp[800];
	snprintf(goodp, sizeof(goodp), "%s", good);
	ck_assert_int_eq(run_check(goodp, &out, &err), 0);
	char want[900];
	snprintf(want, sizeof(want), "%s: ok\n", goodp);
	ck_assert_str_eq(out, want);
	free(out);
	free(err);

	char badp[800];
	snprintf(badp, sizeof(badp), "%s", vmf_test_src("tests/data/config/bad-values.conf"));
	ck_assert_int_eq(run_check(badp, &out, &err), 1);
	ck_assert_str_eq(out, "");
	/* Every error, with the path given, then the count. */
	char *exp = slurp(vmf_test_src("tests/data/config/bad-values.err"));
	ck_assert_ptr_nonnull(exp);
	char *full = NULL;
	size_t lines = 0;
	for (char *s = exp; *s; s++)
		lines += *s == '\n';
	FILE *f = open_memstream(&full, &(size_t){0});
	for (char *line = strtok(exp, "\n"); line; line = strtok(NULL, "\n"))
		fprintf(f, "%s%s\n", badp, line + strlen("bad-values.conf"));
	fprintf(f, "vmfactory: %s: %zu errors\n", badp, lines);
	fclose(f);
	ck_assert_str_eq(err, full);
	free(full);
	free(exp);
	free(out);
	free(err);

	ck_assert_int_eq(run_check("/nonexistent/x.conf", &out, &err), 1);
	ck_assert_str_eq(err, "vmfactory: cannot open config file /nonexistent/x.conf: No such file or directory\n");
	free(out);
	free(err);
}
END_TEST

static void
write_file(const char *path, const char *text)
{
	spit(path, text);
}

/* `vmfactory daemon --config`: the file is read, flags win over it, and
 * the daemon's own checks see the merged options.  Every case fails before
 * the daemon starts anything. */
START_TEST(cli_config_and_flags)
{
	char *dir = vmf_test_tmpdir("vmf-cfgd");
	char conf[800], sockp[800], state[800], run[800];
	snprintf(conf, sizeof(conf), "%s/vmfactory.conf", dir);
	snprintf(sockp, sizeof(sockp), "%s/s.sock", dir);
	snprintf(state, sizeof(state), "%s/state", dir);
	snprintf(run, sizeof(run), "%s/run", dir);
	char *out, *err;

	/* An explicit --config must exist. */
	ck_assert_int_eq(run_cli((const char *const[]){ "daemon", "--config", "/nonexistent/v.conf", NULL }, &out, &err), 1);
	ck_assert_str_eq(err, "vmfactory: cannot open config file /nonexistent/v.conf: No such file or directory\n");
	free(out);
	free(err);

	/* A bad file: every error, nothing started. */
	const char *bad = vmf_test_src("tests/data/config/bad-values.conf");
	char badp[800];
	snprintf(badp, sizeof(badp), "%s", bad);
	ck_assert_int_eq(run_cli((const char *const[]){ "daemon", "--config", badp, NULL }, &out, &err), 1);
	ck_assert_ptr_nonnull(strstr(err, ":10: share_memory: 'maybe' is not yes or no\n"));
	ck_assert_ptr_nonnull(strstr(err, "vmfactory: "));
	free(out);
	free(err);

	/* No pools anywhere: a usage error. */
	ck_assert_int_eq(run_cli((const char *const[]){ "daemon", "--config", "/dev/null", NULL }, &out, &err), 2);
	ck_assert_ptr_nonnull(strstr(err, "daemon needs --pool N, or [pool NAME] sections in the config file"));
	free(out);
	free(err);

	/* [guest] values reach the pool the flags describe; the flag wins
	 * where both are given. */
	write_file(conf, "[guest]\nvcpus = 4\nmax_vcpus = 4\n[pool a]\nsize = 2\n");
	ck_assert_int_eq(run_cli((const char *const[]){ "daemon", "--config", conf, "--pool", "1", "--max-cpus", "2",
						  "--socket", sockp, "--state-dir", state, "--run-dir", run, NULL },
				 &out, &err), 1);
	ck_assert_ptr_nonnull(strstr(err, "replaces the config file's 1 pool\""));
	ck_assert_ptr_nonnull(strstr(err, "\nvmfactory: --max-cpus 2 is below --cpus 4\n"));
	free(out);
	free(err);

	/* --run-dir overrides [daemon] run_dir. */
	write_file(conf, "[daemon]\nrun_dir = /run/vmfactory\n[pool a]\nsize = 2\n");
	ck_assert_int_eq(run_cli((const char *const[]){ "daemon", "--config", conf, "--run-dir", "relative",
						  "--socket", sockp, "--state-dir", state, NULL }, &out, &err), 1);
	ck_assert_str_eq(err, "vmfactory: relative must be an absolute path\n");
	free(out);
	free(err);

	/* Config pools go to the daemon's checks as they are (a pool above the
	 * daemon's limits cannot pass check-config, so check the size flag
	 * replacing them instead). */
	write_file(conf, "[pool a]\nsize = 2\n[pool b]\nsize = 1\nvcpus = 2\n");
	ck_assert_int_eq(run_cli((const char *const[]){ "daemon", "--config", conf, "--pool", "300", "--socket", sockp,
						  "--state-dir", state, "--run-dir", run, NULL }, &out, &err), 1);
	ck_assert_ptr_nonnull(strstr(err, "replaces the config file's 2 pools\""));
	ck_assert_ptr_nonnull(strstr(err, "\nvmfactory: --pool 300 is above 256\n"));
	free(out);
	free(err);
	ck_assert_int_ne(access(state, F_OK), 0);   /* nothing was created */
	vmf_rm_rf(dir, NULL);
	free(dir);
}
END_TEST

/* Demand shaping: [daemon] gives every pool's defaults, a pool its own;
 * unset they are auto with VMF_SHAPE_AUTO (half the size, half the base
 * memory, resolved when the pool is made). */
START_TEST(shape_keys)
{
	static const char text[] = "[daemon]\nshape_max = 3\n[pool a]\nsize = 4\n[pool b]\nsize = 2\nvcpus = 2\n"
				   "shape = off\nshape_memory_mib = 512\n[pool c]\nsize = 2\nmemory_mib = 512\n";
	struct vmf_config c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_config_parse(&c, "t.conf", text, strlen(text), &e), 0);
	ck_assert_uint_eq(c.n_pools, 3);
	ck_assert(c.pools[0].shape && c.pools[0].shape_max == 3 && c.pools[0].shape_memory_mib == VMF_SHAPE_AUTO);
	ck_assert(!c.pools[1].shape && c.pools[1].shape_max == 3 && c.pools[1].shape_memory_mib == 512);
	vmf_config_free(&c);
	ck_assert_int_eq(vmf_config_parse(&c, "t.conf", "[pool a]\nsize = 1\n", 18, &e), 0);
	ck_assert(c.pools[0].shape && c.pools[0].shape_max == VMF_SHAPE_AUTO);
	vmf_config_free(&c);
	static const char bad[] = "[daemon]\nshape = sometimes\n[pool a]\nshape_max = 257\nshape_memory_mib = x\n";
	ck_assert_int_eq(vmf_config_parse(&c, "t.conf", bad, strlen(bad), &e), -EINVAL);
	ck_assert_str_eq(c.errors, "t.conf:2: shape: 'sometimes' is not auto or off\n"
				   "t.conf:4: shape_max: 257 is too large (at most 256)\n"
				   "t.conf:5: shape_memory_mib: 'x' is not a whole number\n");
	vmf_config_free(&c);
}
END_TEST

/* The tenant boundary's keys: their defaults (a bounded share, no
 * outbound, forwards on loopback only, eight in all), and what is set. */
START_TEST(boundary_keys)
{
	struct vmf_config c;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_config_parse(&c, "t.conf", "[daemon]\n", 9, &e), 0);
	ck_assert_uint_eq(c.opts.share_max_mib, 256);
	ck_assert(!c.opts.user_net_outbound);
	ck_assert_str_eq(c.opts.hostfwd_addresses, "127.0.0.1");
	ck_assert_uint_eq(c.opts.max_hostfwd, 8);
	vmf_config_free(&c);
	static const char text[] = "[daemon]\nshare_max_mib = 0\nuser_net_outbound = yes\n"
				   "hostfwd_addresses = 127.0.0.1,10.1.2.3\nmax_hostfwd_per_tenant = 0\n";
	ck_assert_int_eq(vmf_config_parse(&c, "t.conf", text, strlen(text), &e), 0);
	ck_assert_uint_eq(c.opts.share_max_mib, 0);
	ck_assert(c.opts.user_net_outbound);
	ck_assert_str_eq(c.opts.hostfwd_addresses, "127.0.0.1,10.1.2.3");
	ck_assert_uint_eq(c.opts.max_hostfwd, 0);
	vmf_config_free(&c);
	static const char *const bad[] = { "127.0.0.1,,10.0.0.1", "127.0.0.1,", ",", "::1", "127.0.0.1 ,10.0.0.1" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char t[200];
		int n = snprintf(t, sizeof(t), "[daemon]\nhostfwd_addresses = %s\n", bad[i]);
		ck_assert_int_eq(vmf_config_parse(&c, "t.conf", t, (size_t)n, &e), -EINVAL);
		ck_assert_msg(c.errors && strstr(c.errors, "not a list of IPv4 addresses"), "%s: %s", bad[i], c.errors);
		vmf_config_free(&c);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("config");
	TCase *t = tcase_create("config");
	tcase_add_test(t, golden_files);
	tcase_add_test(t, example_is_valid);
	tcase_add_test(t, missing_file);
	tcase_add_test(t, length_bounded);
	tcase_add_test(t, cli_check_config);
	tcase_add_test(t, cli_config_and_flags);
	tcase_add_test(t, shape_keys);
	tcase_add_test(t, boundary_keys);
	suite_add_tcase(s, t);
	return vmf_test_run(s);
}
