/* QMP transport against a fake peer replaying real QEMU 7.2 replies
 * (tests/data/qmp/session.replies), with injected faults. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fake_qmp.h"
#include "frame.h"
#include "qmp.h"
#include "testlib.h"

static const char *
session(void)
{
	static char p[600];
	snprintf(p, sizeof p, "%s", vmf_test_src("tests/data/qmp/session.replies"));
	return p;
}

/* The client side of the recorded session, driven by the recording. */
struct step {
	char execute[64];
	json_object *args;
};

static int
load_steps(struct step *s, int max)
{
	FILE *f = fopen(session(), "r");
	ck_assert_ptr_nonnull(f);
	char line[65536];
	int n = 0;
	while (fgets(line, sizeof line, f) && n < max) {
		if (strncmp(line, "> ", 2))
			continue;
		json_object *o = json_tokener_parse(line + 2), *e, *a = NULL;
		json_object_object_get_ex(o, "execute", &e);
		snprintf(s[n].execute, sizeof s[n].execute, "%s", json_object_get_string(e));
		json_object_object_get_ex(o, "arguments", &a);
		s[n].args = a ? json_object_get(a) : NULL;
		json_object_put(o);
		n++;
	}
	fclose(f);
	return n;
}

static void
replay(bool split)
{
	struct fake_qmp_opts o = { .replies = session(), .split = split, .fault_at = -1 };
	int fd;
	struct fake_qmp *f = fake_qmp_start(&o, &fd);
	struct vmf_qmp *q;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_qmp_open_fd(fd, 5000, &q, &e) == 0, "%s", e.msg);
	int maj, min, mic;
	vmf_qmp_version(q, &maj, &min, &mic);
	ck_assert_int_eq(maj, 7);
	ck_assert_int_eq(min, 2);
	ck_assert_int_eq(mic, 22);
	struct step steps[64];
	int n = load_steps(steps, 64);
	int pipefd[2];
	ck_assert_int_eq(pipe(pipefd), 0);
	int errors = 0;
	for (int i = 1; i < n; i++) { /* step 0 is qmp_capabilities, done by open */
		json_object *ret = NULL;
		int r = vmf_qmp_command(q, steps[i].execute, steps[i].args,
					strcmp(steps[i].execute, "getfd") == 0 ? pipefd[1] : -1, &ret, 5000, &e);
		if (r < 0) {
			/* The recording holds QEMU's own refusals. */
			ck_assert_int_eq(r, -EIO);
			ck_assert_msg(strstr(e.msg, "QEMU refused") != NULL, "%s", e.msg);
			errors++;
			if (!strcmp(steps[i].execute, "no-such-command"))
				ck_assert_msg(strstr(e.msg, "CommandNotFound") != NULL, "%s", e.msg);
		} else if (!strcmp(steps[i].execute, "query-hotpluggable-cpus")) {
			ck_assert_int_eq(json_object_array_length(ret), 2);
		} else if (!strcmp(steps[i].execute, "query-status")) {
			json_object *running;
			ck_assert(json_object_object_get_ex(ret, "running", &running));
			ck_assert(!json_object_get_boolean(running));
		} else if (!strcmp(steps[i].execute, "cont")) {
			/* RESUME arrived before the reply: it waits in the queue. */
			ck_assert_int_eq(vmf_qmp_wait_event(q, "RESUME", NULL, 10, &e), 0);
		} else if (!strcmp(steps[i].execute, "migrate")) {
			json_object *data = NULL, *st;
			for (;;) {
				ck_assert_msg(vmf_qmp_wait_event(q, "MIGRATION", &data, 5000, &e) == 0, "%s", e.msg);
				json_object_object_get_ex(data, "status", &st);
				bool done = !strcmp(json_object_get_string(st), "completed");
				json_object_put(data);
				if (done)
					break;
			}
		}
		json_object_put(ret);
		json_object_put(steps[i].args);
	}
	ck_assert_int_eq(errors, 3); /* bad CPU props, unknown command, unknown device */
	ck_assert_int_eq(vmf_qmp_wait_event(q, "SHUTDOWN", NULL, 1000, &e), 0);
	vmf_qmp_close(q);
	int fds = 0;
	ck_assert_int_eq(fake_qmp_join(f, &fds), 0);
	ck_assert_int_eq(fds, 1); /* getfd carried the migration fd */
	close(pipefd[0]);
	close(pipefd[1]);
}

START_TEST(replays_the_recorded_session)
{
	replay(false);
}
END_TEST

START_TEST(replies_split_into_single_bytes)
{
	replay(true);
}
END_TEST

/* Opens a session whose second command (query-version) meets a fault. */
static int
faulty(enum fake_qmp_fault fault, int timeout_ms, struct vmf_error *e, struct fake_qmp **f, struct vmf_qmp **q)
{
	struct fake_qmp_opts o = { .replies = session(), .fault_at = 1, .fault = fault };
	int fd;
	*f = fake_qmp_start(&o, &fd);
	ck_assert_int_eq(vmf_qmp_open_fd(fd, 5000, q, e), 0);
	return vmf_qmp_command(*q, "query-version", NULL, -1, NULL, timeout_ms, e);
}

START_TEST(faults_are_clear_errors)
{
	struct fake_qmp *f;
	struct vmf_qmp *q;
	struct vmf_error e = {0};

	ck_assert_int_eq(faulty(FAULT_GARBAGE, 2000, &e, &f, &q), -EPROTO);
	ck_assert_msg(strstr(e.msg, "malformed JSON") && strstr(e.msg, "this is not json"), "%s", e.msg);
	vmf_qmp_close(q);
	fake_qmp_join(f, NULL);

	ck_assert_int_eq(faulty(FAULT_NON_OBJECT, 2000, &e, &f, &q), -EPROTO);
	ck_assert_msg(strstr(e.msg, "not a JSON object"), "%s", e.msg);
	vmf_qmp_close(q);
	fake_qmp_join(f, NULL);

	ck_assert_int_eq(faulty(FAULT_OVERSIZE, 5000, &e, &f, &q), -EMSGSIZE);
	ck_assert_msg(strstr(e.msg, "longer than"), "%s", e.msg);
	/* A broken connection refuses further commands instead of misparsing. */
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, NULL, 100, &e), -EPIPE);
	vmf_qmp_close(q);
	fake_qmp_join(f, NULL);

	ck_assert_int_eq(faulty(FAULT_CLOSE, 2000, &e, &f, &q), -EPIPE);
	ck_assert_msg(strstr(e.msg, "closed the QMP connection"), "%s", e.msg);
	vmf_qmp_close(q);
	fake_qmp_join(f, NULL);

	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(faulty(FAULT_DELAY, 100, &e, &f, &q), -ETIMEDOUT);
	ck_assert_int_lt(vmf_now_ms() - t0, 400);
	vmf_qmp_close(q);
	fake_qmp_join(f, NULL);

	ck_assert_int_eq(faulty(FAULT_ORPHAN, 2000, &e, &f, &q), -EPROTO);
	ck_assert_msg(strstr(e.msg, "reply to nothing"), "%s", e.msg);
	vmf_qmp_close(q);
	fake_qmp_join(f, NULL);
}
END_TEST

START_TEST(not_a_greeting)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(write(sv[0], "{\"return\": {}}\n", 15), 15);
	struct vmf_qmp *q;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_qmp_open_fd(sv[1], 1000, &q, &e), -EPROTO);
	ck_assert_ptr_nonnull(strstr(e.msg, "greeting"));
	close(sv[0]);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("qmp");
	TCase *tc = tcase_create("qmp");
	tcase_add_test(tc, replays_the_recorded_session);
	tcase_add_test(tc, replies_split_into_single_bytes);
	tcase_add_test(tc, faults_are_clear_errors);
	tcase_add_test(tc, not_a_greeting);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
