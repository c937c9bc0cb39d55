/* QMP transport against a real QEMU started with -S (no guest needed):
 * connect while the socket appears, status, CPU hot-add, a refusal, run
 * state events, fd passing for a migration, quit and process exit. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "qmp.h"
#include "testlib.h"
#include "util.h"

#define TIMEOUT 30000

static char *dir;

static void
setup(void)
{
	dir = vmf_test_tmpdir("vmf-qmp-real");
}

static void
teardown(void)
{
	vmf_test_kill_qemu_under(dir);
	struct vmf_error e;
	vmf_rm_rf(dir, &e);
	free(dir);
}

/* *exit_fd gets a pipe end that sees POLLHUP when QEMU exits (QEMU keeps
 * the inherited write end open for its life; pidfd_open is unknown to
 * valgrind). */
static pid_t
spawn_qemu(const char *sock, int *exit_fd)
{
	int ep[2];
	ck_assert_int_eq(pipe2(ep, O_CLOEXEC), 0);
	char qmp[700], log[700];
	snprintf(qmp, sizeof(qmp), "unix:%s,server=on,wait=off", sock);
	snprintf(log, sizeof(log), "%s/qemu.log", dir);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		fcntl(ep[1], F_SETFD, 0);
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execlp("qemu-system-x86_64", "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg",
		       "-nodefaults", "-display", "none", "-qmp", qmp, "-smp", "1,maxcpus=4",
		       "-m", "256,slots=4,maxmem=1G", "-S", (char *)NULL);
		_exit(127);
	}
	close(ep[1]);
	*exit_fd = ep[0];
	return pid;
}

static const char *
str_member(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : "";
}

static int
plugged_cpus(struct vmf_qmp *q, json_object **free_cpu)
{
	struct vmf_error e = { 0 };
	json_object *cpus;
	ck_assert_msg(vmf_qmp_command(q, "query-hotpluggable-cpus", NULL, -1, &cpus, TIMEOUT, &e) == 0,
		      "%s", e.msg);
	ck_assert_int_eq(json_object_array_length(cpus), 4);
	int plugged = 0;
	if (free_cpu)
		*free_cpu = NULL;
	for (size_t i = 0; i < json_object_array_length(cpus); i++) {
		json_object *c = json_object_array_get_idx(cpus, i);
		if (json_object_object_get_ex(c, "qom-path", NULL))
			plugged++;
		else if (free_cpu && !*free_cpu)
			*free_cpu = json_object_get(c);
	}
	json_object_put(cpus);
	return plugged;
}

START_TEST(real_qemu_session)
{
	char sock[600];
	snprintf(sock, sizeof(sock), "%s/qmp.sock", dir);
	int exit_fd;
	pid_t pid = spawn_qemu(sock, &exit_fd);
	struct vmf_error e = { 0 };
	struct vmf_qmp *q;
	/* Right after fork the socket does not exist yet. */
	ck_assert_msg(vmf_qmp_connect(sock, TIMEOUT, &q, &e) == 0, "%s", e.msg);
	int maj, min, mic;
	vmf_qmp_version(q, &maj, &min, &mic);
	ck_assert_msg(maj >= 7, "QEMU %d.%d.%d", maj, min, mic);

	json_object *ret, *v;
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, &ret, TIMEOUT, &e), 0);
	ck_assert_str_eq(str_member(ret, "status"), "prelaunch");
	ck_assert(json_object_object_get_ex(ret, "running", &v) && !json_object_get_boolean(v));
	json_object_put(ret);

	/* CPU hot-add with the props QEMU offers. */
	json_object *cpu, *props;
	ck_assert_int_eq(plugged_cpus(q, &cpu), 1);
	ck_assert_ptr_nonnull(cpu);
	json_object *args = json_object_new_object();
	json_object_object_add(args, "driver", json_object_new_string(str_member(cpu, "type")));
	json_object_object_add(args, "id", json_object_new_string("vcpu1"));
	ck_assert(json_object_object_get_ex(cpu, "props", &props));
	json_object_object_foreach(props, k, pv)
		json_object_object_add(args, k, json_object_get(pv));
	ck_assert_msg(vmf_qmp_command(q, "device_add", args, -1, NULL, TIMEOUT, &e) == 0, "%s", e.msg);
	json_object_put(args);
	json_object_put(cpu);
	ck_assert_int_eq(plugged_cpus(q, NULL), 2);

	args = json_object_new_object();
	json_object_object_add(args, "driver", json_object_new_string("no-such-device"));
	ck_assert_int_eq(vmf_qmp_command(q, "device_add", args, -1, NULL, TIMEOUT, &e), -EIO);
	ck_assert_str_eq(e.msg, "QEMU refused device_add: GenericError: 'no-such-device' is not a valid device "
				"model name");
	json_object_put(args);

	ck_assert_int_eq(vmf_qmp_command(q, "cont", NULL, -1, NULL, TIMEOUT, &e), 0);
	ck_assert_msg(vmf_qmp_wait_event(q, "RESUME", NULL, TIMEOUT, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(vmf_qmp_command(q, "stop", NULL, -1, NULL, TIMEOUT, &e), 0);
	ck_assert_msg(vmf_qmp_wait_event(q, "STOP", NULL, TIMEOUT, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, &ret, TIMEOUT, &e), 0);
	ck_assert_str_eq(str_member(ret, "status"), "paused");
	json_object_put(ret);

	/* Migration into an fd passed by SCM_RIGHTS. */
	char state[700];
	snprintf(state, sizeof(state), "%s/state", dir);
	int sfd = open(state, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(sfd, 0);
	args = json_object_new_object();
	json_object_object_add(args, "fdname", json_object_new_string("vmfstate"));
	ck_assert_msg(vmf_qmp_command(q, "getfd", args, sfd, NULL, TIMEOUT, &e) == 0, "%s", e.msg);
	json_object_put(args);
	close(sfd);
	args = json_tokener_parse("{\"capabilities\": [{\"capability\": \"events\", \"state\": true}]}");
	ck_assert_int_eq(vmf_qmp_command(q, "migrate-set-capabilities", args, -1, NULL, TIMEOUT, &e), 0);
	json_object_put(args);
	args = json_tokener_parse("{\"uri\": \"fd:vmfstate\"}");
	ck_assert_msg(vmf_qmp_command(q, "migrate", args, -1, NULL, TIMEOUT, &e) == 0, "%s", e.msg);
	json_object_put(args);
	for (;;) {
		json_object *data;
		ck_assert_msg(vmf_qmp_wait_event(q, "MIGRATION", &data, TIMEOUT, &e) == 0, "%s", e.msg);
		char status[32];
		snprintf(status, sizeof(status), "%s", str_member(data, "status"));
		json_object_put(data);
		ck_assert_msg(strcmp(status, "failed") != 0, "migration failed");
		if (strcmp(status, "completed") == 0)
			break;
	}
	ck_assert_int_eq(vmf_qmp_command(q, "query-migrate", NULL, -1, &ret, TIMEOUT, &e), 0);
	ck_assert_str_eq(str_member(ret, "status"), "completed");
	json_object_put(ret);
	struct stat st;
	ck_assert_int_eq(stat(state, &st), 0);
	ck_assert_int_gt(st.st_size, 0);

	ck_assert_msg(vmf_qmp_command(q, "quit", NULL, -1, NULL, TIMEOUT, &e) == 0, "%s", e.msg);
	json_object *data;
	ck_assert_msg(vmf_qmp_wait_event(q, "SHUTDOWN", &data, TIMEOUT, &e) == 0, "%s", e.msg);
	ck_assert_str_eq(str_member(data, "reason"), "host-qmp-quit");
	json_object_put(data);
	ck_assert_int_eq(vmf_qmp_wait_event(q, "NEVER", NULL, TIMEOUT, &e), -EPIPE);
	ck_assert_msg(strstr(e.msg, "QEMU closed the QMP connection"), "%s", e.msg);
	vmf_qmp_close(q);

	/* The process is gone, cleanly. */
	struct pollfd p = { .fd = exit_fd, .events = POLLIN };
	ck_assert_int_eq(poll(&p, 1, TIMEOUT), 1);
	ck_assert(p.revents & POLLHUP);
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	close(exit_fd);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("qmp_real");
	TCase *tc = tcase_create("qmp_real");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, real_qemu_session);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
