/* Operator-facing commands against a private state dir: template gc judges
 * the templates of the configured hypervisor only, and the template
 * commands that write the catalog refuse while a daemon runs on the state
 * dir.  The hypervisor is the fake Firecracker (tests/fake_vmm): no VM
 * boots, so this runs in seconds. */
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

#include "catalog.h"
#include "daemonlib.h"
#include "frame.h"
#include "template.h"
#include "testlib.h"
#include "util.h"

static char cfg[700], fake[700];

static void
op_setup(void)
{
	setup_fake_firecracker(cfg, sizeof cfg, fake, sizeof fake);
}


/* A template record of the given driver and version, with a directory. */
static void
put_template(const char *id, Vmf__Hv__HypervisorKind kind, const char *version, const char *kernel_sha,
	     const char *initrd_sha)
{
	struct vmf_catalog *cat;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(state, &cat, &e), 0);
	Vmf__Catalog__TemplateSpec spec = VMF__CATALOG__TEMPLATE_SPEC__INIT;
	spec.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	spec.hypervisor = kind;
	spec.hypervisor_version = (char *)version;
	spec.kernel_sha256 = (char *)kernel_sha;
	spec.initrd_sha256 = (char *)initrd_sha;
	spec.vcpus = spec.max_vcpus = 1;
	spec.memory_mib = spec.max_memory_mib = 256;
	Vmf__Catalog__TemplateRecord rec = VMF__CATALOG__TEMPLATE_RECORD__INIT;
	rec.schema_version = VMF_CATALOG_SCHEMA_VERSION;
	rec.id = (char *)id;
	rec.spec = &spec;
	rec.state = VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY;
	rec.hypervisor_version = (char *)version;
	char dir[PATH_MAX];
	vmf_template_dir(state, id, dir, sizeof dir);
	rec.dir = dir;
	ck_assert_int_eq(vmf_mkdir_p(dir, 0700, &e), 0);
	ck_assert_msg(vmf_catalog_template_put(cat, &rec, &e) == 0, "%s", e.msg);
	vmf_catalog_close(cat);
}

static bool
have_template(const char *id)
{
	struct vmf_catalog *cat;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_catalog_open(state, &cat, &e), 0);
	Vmf__Catalog__TemplateRecord *rec = NULL;
	int r = vmf_catalog_template_get(cat, id, &rec, &e);
	if (rec)
		vmf__catalog__template_record__free_unpacked(rec, NULL);
	vmf_catalog_close(cat);
	return r == 0;
}

static void
make_id(char out[VMF_SHA256_HEX], char c)
{
	memset(out, c, VMF_SHA256_HEX - 1);
	out[VMF_SHA256_HEX - 1] = '\0';
}

/* gc used the QEMU driver whatever the config said: every Firecracker
 * template's version differed from QEMU's, so gc deleted them all. */
START_TEST(gc_judges_the_configured_drivers_templates)
{
	struct vmf_image img;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_image_load(getenv("VMFACTORY_IMAGE_DIR"), NULL, NULL, &img, &e) == 0, "%s", e.msg);
	char fc_current[VMF_SHA256_HEX], fc_old[VMF_SHA256_HEX], qemu[VMF_SHA256_HEX];
	make_id(fc_current, 'a');
	make_id(fc_old, 'b');
	make_id(qemu, 'c');
	put_template(fc_current, VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER, "1.17.0-dev", img.kernel_sha256,
		     img.initrd_sha256);
	char zeros[VMF_SHA256_HEX];
	make_id(zeros, '0');
	put_template(fc_old, VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER, "1.17.0-dev", zeros, img.initrd_sha256);
	put_template(qemu, VMF__HV__HYPERVISOR_KIND__HV_QEMU, "1.0.0", zeros, zeros);

	char *out = NULL;
	int rc = vmf(&out, "template gc --config %s", cfg);
	printf("template gc: %s%s", out, cli_stderr());
	ck_assert_msg(rc == 0, "template gc exited %d: %s", rc, cli_stderr());
	/* The fake Firecracker reports 1.17.0-dev: the current template stays. */
	ck_assert_msg(have_template(fc_current), "gc removed a current firecracker template");
	ck_assert_msg(!have_template(fc_old), "gc kept a firecracker template of another kernel");
	/* QEMU's template is not judged against Firecracker's version. */
	ck_assert_msg(have_template(qemu), "gc removed another hypervisor's template");
	ck_assert_ptr_nonnull(strstr(out, "1 templates removed; 1 of another hypervisor than firecracker kept"));
	free(out);
}
END_TEST


/* gc removed every templates/.build-* directory, including those of a
 * running daemon's builds in progress; rm and build wrote the catalog
 * beside the daemon.  rm now asks the daemon, which removes only the
 * snapshots it knows. */
START_TEST(template_commands_refuse_while_a_daemon_runs)
{
	char id[VMF_SHA256_HEX];
	make_id(id, 'd');
	put_template(id, VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER, "1.0.0", "x", "y");
	char log[700], extra[800];
	snprintf(log, sizeof log, "%s/daemon.log", tmp);
	snprintf(extra, sizeof extra, "--config %s", cfg);
	/* A real daemon on the state dir (its builds fail against the fake
	 * VMM, which has no guest agent; it keeps running and retrying). */
	pid_t pid = start_foreground(sock, state, log, extra);
	wait_until(daemon_answers(), 60000, "the daemon did not answer");
	/* Stands for the daemon's build in progress (made after its start-up
	 * cleanup, as a build's directory is). */
	char build_dir[800];
	snprintf(build_dir, sizeof build_dir, "%s/templates/.build-inprogress", state);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_mkdir_p(build_dir, 0700, &e), 0);

	const char *cmds[] = { "template gc --config", "template rm", "template build --config" };
	for (int i = 0; i < 3; i++) {
		/* rm asks the running daemon, which removes snapshots only. */
		if (i == 1)
			vmf_refused("no snapshot template|while no daemon runs", "template rm %s", id);
		else
			vmf_refused("a vmfactory daemon (or another template command) is using state dir|"
				    "stop it before template", "%s %s", cmds[i], cfg);
		printf("%s while a daemon runs: %s", cmds[i], cli_stderr());
	}
	ck_assert_msg(access(build_dir, F_OK) == 0, "gc removed the daemon's build in progress");
	ck_assert(have_template(id));
	ck_assert_int_eq(kill(pid, 0), 0);

	/* SIGKILL: a SIGTERM waits for the build job, which waits minutes for
	 * an agent the fake VMM does not have.  The lock goes with the process. */
	kill(pid, SIGKILL);
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	vmf_test_kill_under("fake_vmm", tmp);
	/* Without a daemon, gc cleans up (the stale template and the leftover). */
	ck_assert_int_eq(vmf(NULL, "template gc --config %s", cfg), 0);
	ck_assert_int_ne(access(build_dir, F_OK), 0);
	ck_assert(!have_template(id));
	/* And a daemon cannot start while a template command holds the lock. */
	int fd = vmf_lock_state_dir(state, &e);
	ck_assert_int_ge(fd, 0);
	vmf_refused("daemon.lock is held by another vmfactory process", "daemon --config %s", cfg);
	close(fd);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("operator");
	TCase *tc = tcase_create("operator");
	tcase_add_checked_fixture(tc, op_setup, cleanup);
	tcase_set_timeout(tc, 300);
	ADD_TEST(tc, gc_judges_the_configured_drivers_templates);
	ADD_TEST(tc, template_commands_refuse_while_a_daemon_runs);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
