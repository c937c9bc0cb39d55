/* Status as the cache's engine and the daemon report it, on the fake
 * Firecracker (tests/fake_vmm): no VM boots, so this runs in seconds.
 * Each template names the capabilities of the driver that builds and
 * clones it, as the daemon's own capabilities do. */
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

static char cfg[700], fake[700];

static void
rooms_setup(void)
{
	setup_fake_firecracker(cfg, sizeof cfg, fake, sizeof fake);
}


/* The status reply, or NULL while the daemon does not answer. */
static Vmf__Control__Reply *
status(void)
{
	struct vmf_client *c;
	struct vmf_error e = {0};
	if (vmf_client_connect(sock, &c, &e) < 0)
		return NULL;
	Vmf__Control__Reply *r = NULL;
	if (vmf_client_status(c, &r, 5000, &e) < 0 && r) {
		vmf__control__reply__free_unpacked(r, NULL);
		r = NULL;
	}
	vmf_client_close(c);
	return r;
}

START_TEST(template_status_names_its_drivers_capabilities)
{
	char log[700], extra[800];
	snprintf(log, sizeof log, "%s/daemon.log", tmp);
	snprintf(extra, sizeof extra, "--config %s", cfg);
	/* Its builds fail against the fake VMM (no guest agent); the pool's
	 * template is listed all the same. */
	pid_t pid = start_foreground(sock, state, log, extra);
	Vmf__Control__Reply *r = NULL;
	wait_until((r = status()) != NULL, 60000, "the daemon did not answer status");
	ck_assert_msg(r->status, "the daemon's status reply has no status");
	Vmf__Control__StatusReply *s = r->status;
	ck_assert_uint_eq(s->n_templates, 1);
	Vmf__Control__TemplateStatus *t = s->templates[0];
	printf("daemon capabilities %zu, template %s capabilities %zu\n", s->n_capabilities, t->id,
	       t->n_capabilities);
	ck_assert_uint_gt(s->n_capabilities, 0);
	ck_assert_uint_eq(t->n_capabilities, s->n_capabilities);
	for (size_t i = 0; i < t->n_capabilities; i++)
		ck_assert_str_eq(t->capabilities[i], s->capabilities[i]);
	vmf__control__reply__free_unpacked(r, NULL);
	/* SIGKILL: a SIGTERM waits for the build job, which waits minutes for
	 * an agent the fake VMM does not have. */
	kill(pid, SIGKILL);
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("rooms");
	TCase *tc = tcase_create("rooms");
	tcase_add_checked_fixture(tc, rooms_setup, cleanup);
	tcase_set_timeout(tc, 300);
	ADD_TEST(tc, template_status_names_its_drivers_capabilities);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
