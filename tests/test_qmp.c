/* QMP transport against a fake peer replaying conversations recorded from
 * QEMU 7.2 (tests/data/qmp/NAME.replies), with injected faults: split writes,
 * late replies, garbage, non-objects, oversized lines, EOF mid-reply,
 * interleaved events, fd passing. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fake_qmp.h"
#include "frame.h"
#include "qmp.h"
#include "testlib.h"
#include "util.h"

#define TIMEOUT 10000
/* How far past its deadline a call may return. */
#define SLACK_MS 100

static const char *recordings[] = { "negotiate", "lifecycle", "hotplug", "errors", "migrate" };

static const char *
replies(const char *name)
{
	static char p[4096];
	char rel[128];
	snprintf(rel, sizeof(rel), "tests/data/qmp/%s.replies", name);
	snprintf(p, sizeof(p), "%s", vmf_test_src(rel));
	return p;
}

static struct fake_qmp *
fake(const char *name)
{
	struct fake_qmp *f;
	struct vmf_error e = { 0 };
	ck_assert_msg(fake_qmp_new(replies(name), &f, &e) == 0, "%s", e.msg);
	return f;
}

/* Starts f and completes the handshake. */
static struct vmf_qmp *
open_on(struct fake_qmp *f)
{
	struct vmf_error e = { 0 };
	int fd = fake_qmp_start(f, &e);
	ck_assert_msg(fd >= 0, "%s", e.msg);
	struct vmf_qmp *q;
	ck_assert_msg(vmf_qmp_open_fd(fd, TIMEOUT, &q, &e) == 0, "%s", e.msg);
	return q;
}

/* Closes the client, joins the peer and checks that the client followed the
 * recording. */
static void
finish(struct vmf_qmp *q, struct fake_qmp *f, bool complete)
{
	vmf_qmp_close(q);
	struct fake_qmp_result res;
	fake_qmp_join(f, &res);
	ck_assert_msg(res.error[0] == '\0', "fake peer: %s", res.error);
	if (complete)
		ck_assert_msg(res.complete, "the recording stopped after step %d", res.steps_done);
	fake_qmp_free(f);
}

/* ---- the recording, as the client side sees it ---- */

struct rstep {
	json_object *cmd;
	bool with_fd;
	json_object *lines[256];
	size_t n;
};

struct rec {
	struct rstep s[64];
	int n;
};

static void
rec_load(const char *name, struct rec *r)
{
	memset(r, 0, sizeof(*r));
	FILE *in = fopen(replies(name), "r");
	ck_assert_msg(in != NULL, "%s: %s", replies(name), strerror(errno));
	char *line = NULL;
	size_t cap = 0;
	r->n = 1;
	while (getline(&line, &cap, in) > 0) {
		line[strcspn(line, "\r\n")] = '\0';
		if (strncmp(line, "< ", 2) == 0) {
			struct rstep *s = &r->s[r->n - 1];
			ck_assert_uint_lt(s->n, 256);
			s->lines[s->n] = json_tokener_parse(line + 2);
			ck_assert_ptr_nonnull(s->lines[s->n]);
			s->n++;
		} else if (line[0] == '>') {
			bool fd = strncmp(line, ">fd ", 4) == 0;
			ck_assert_int_lt(r->n, 64);
			r->s[r->n].with_fd = fd;
			r->s[r->n].cmd = json_tokener_parse(line + (fd ? 4 : 2));
			ck_assert_ptr_nonnull(r->s[r->n].cmd);
			r->n++;
		}
	}
	free(line);
	fclose(in);
}

static void
rec_free(struct rec *r)
{
	for (int i = 0; i < r->n; i++) {
		json_object_put(r->s[i].cmd);
		for (size_t j = 0; j < r->s[i].n; j++)
			json_object_put(r->s[i].lines[j]);
	}
}

static const char *
str_member(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : NULL;
}

/* Plays the client side of a whole recording and checks every reply and
 * event against it.  split: every step arrives one byte per read. */
static void
replay(const char *name, bool split)
{
	struct rec rec;
	rec_load(name, &rec);
	struct fake_qmp *f = fake(name);
	if (split)
		for (int i = 0; i < rec.n; i++)
			fake_qmp_fault(f, i, FAKE_QMP_SPLIT, 0, NULL);
	struct vmf_qmp *q = open_on(f);
	int maj, min, mic;
	vmf_qmp_version(q, &maj, &min, &mic);
	ck_assert_int_eq(maj, 7);
	ck_assert_int_eq(min, 2);
	ck_assert_int_eq(mic, 22);
	int pfd[2];
	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	struct vmf_error e = { 0 };
	/* Step 1 is qmp_capabilities, sent by vmf_qmp_open_fd. */
	for (int i = 2; i < rec.n; i++) {
		struct rstep *s = &rec.s[i];
		const char *cmd = str_member(s->cmd, "execute");
		json_object *args = NULL, *ret = NULL, *want = NULL, *v;
		json_object_object_get_ex(s->cmd, "arguments", &args);
		int r = vmf_qmp_command(q, cmd, args, s->with_fd ? pfd[1] : -1, &ret, TIMEOUT, &e);
		for (size_t j = 0; j < s->n; j++)
			if (!json_object_object_get_ex(s->lines[j], "event", NULL))
				want = s->lines[j];
		ck_assert_ptr_nonnull(want);
		if (json_object_object_get_ex(want, "return", &v)) {
			ck_assert_msg(r == 0, "%s %s: %s", name, cmd, e.msg);
			ck_assert_msg(json_object_equal(ret, v), "%s %s: got %s", name, cmd,
				      json_object_to_json_string(ret));
		} else {
			json_object *err;
			ck_assert(json_object_object_get_ex(want, "error", &err));
			char msg[1024];
			snprintf(msg, sizeof(msg), "QEMU refused %s: %s: %s", cmd, str_member(err, "class"),
				 str_member(err, "desc"));
			ck_assert_int_eq(r, -EIO);
			ck_assert_str_eq(e.msg, msg);
		}
		json_object_put(ret);
		/* Events before the reply wait in the queue, later ones on the
		 * socket: both are found, in order. */
		for (size_t j = 0; j < s->n; j++) {
			json_object *ev = s->lines[j], *data = NULL, *wantdata = NULL;
			const char *evname = str_member(ev, "event");
			if (!evname)
				continue;
			ck_assert_msg(vmf_qmp_wait_event(q, evname, &data, TIMEOUT, &e) == 0, "%s", e.msg);
			json_object_object_get_ex(ev, "data", &wantdata);
			ck_assert_msg(json_object_equal(data, wantdata), "%s: %s data %s", name, evname,
				      json_object_to_json_string(data));
			json_object_put(data);
		}
		if (s->with_fd) {
			int got = fake_qmp_received_fd(f, i);
			ck_assert_int_ge(got, 0);
			char c = 0;
			ck_assert_int_eq(write(got, "!", 1), 1);
			ck_assert_int_eq(read(pfd[0], &c, 1), 1);
			ck_assert_int_eq(c, '!');
		}
	}
	/* QEMU closes the connection after quit. */
	ck_assert_int_eq(vmf_qmp_wait_event(q, "NEVER", NULL, TIMEOUT, &e), -EPIPE);
	ck_assert_msg(strstr(e.msg, "QEMU closed the QMP connection"), "%s", e.msg);
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, NULL, TIMEOUT, &e), -EPIPE);
	ck_assert_msg(strstr(e.msg, "unusable") && strstr(e.msg, "closed"), "%s", e.msg);
	close(pfd[0]);
	close(pfd[1]);
	finish(q, f, true);
	rec_free(&rec);
}

START_TEST(replays_recordings)
{
	replay(recordings[_i / 2], _i % 2 == 1);
}
END_TEST

START_TEST(negotiation_and_version)
{
	struct fake_qmp *f = fake("negotiate");
	struct vmf_qmp *q = open_on(f);
	int maj, min, mic;
	vmf_qmp_version(q, &maj, &min, &mic);
	ck_assert_int_eq(maj * 10000 + min * 100 + mic, 70222);
	struct vmf_error e = { 0 };
	json_object *ret, *v;
	ck_assert_int_eq(vmf_qmp_command(q, "query-version", NULL, -1, &ret, TIMEOUT, &e), 0);
	ck_assert(json_object_object_get_ex(ret, "package", &v));
	ck_assert_str_eq(json_object_get_string(v), "Debian 1:7.2+dfsg-7+deb12u18+b3");
	json_object_put(ret);
	/* ret may be NULL: the reply is dropped. */
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, NULL, TIMEOUT, &e), 0);
	finish(q, f, false);
}
END_TEST

/* A greeting from another QEMU version. */
START_TEST(version_from_greeting)
{
	struct fake_qmp *f = fake("negotiate");
	fake_qmp_fault(f, 0, FAKE_QMP_REPLACE, 0,
		       "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 3, \"minor\": 10, \"major\": 9}, "
		       "\"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n");
	struct vmf_qmp *q = open_on(f);
	int maj, min, mic;
	vmf_qmp_version(q, &maj, &min, &mic);
	ck_assert_int_eq(maj, 9);
	ck_assert_int_eq(min, 10);
	ck_assert_int_eq(mic, 3);
	finish(q, f, false);

	/* No version: usable, version unknown. */
	f = fake("negotiate");
	fake_qmp_fault(f, 0, FAKE_QMP_REPLACE, 0, "{\"QMP\": {\"capabilities\": []}}\r\n");
	q = open_on(f);
	vmf_qmp_version(q, &maj, &min, &mic);
	ck_assert_int_eq(maj + min + mic, 0);
	finish(q, f, false);
}
END_TEST

START_TEST(not_a_greeting)
{
	struct fake_qmp *f = fake("negotiate");
	fake_qmp_fault(f, 0, FAKE_QMP_REPLACE, 0, "{\"return\": {}}\r\n");
	struct vmf_error e = { 0 };
	int fd = fake_qmp_start(f, &e);
	struct vmf_qmp *q = NULL;
	ck_assert_int_eq(vmf_qmp_open_fd(fd, TIMEOUT, &q, &e), -EPROTO);
	ck_assert_ptr_null(q);
	ck_assert_str_eq(e.msg, "QMP handshake: expected QEMU's QMP greeting, received '{\"return\":{}}'");
	finish(NULL, f, false);
}
END_TEST

/* Events that come before a reply are kept for vmf_qmp_wait_event. */
START_TEST(events_before_reply)
{
	static const char ev[] = "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, "
				 "\"event\": \"BALLOON_CHANGE\", \"data\": {\"actual\": 268435456}}";
	struct fake_qmp *f = fake("lifecycle");
	fake_qmp_fault(f, 3, FAKE_QMP_EVENTS_FIRST, 5, ev); /* cont */
	fake_qmp_fault(f, 3, FAKE_QMP_SPLIT, 0, NULL);
	struct vmf_qmp *q = open_on(f);
	struct vmf_error e = { 0 };
	json_object *ret, *data, *v;
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, &ret, TIMEOUT, &e), 0);
	json_object_put(ret);
	ck_assert_msg(vmf_qmp_command(q, "cont", NULL, -1, &ret, TIMEOUT, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(json_object_object_length(ret), 0);
	json_object_put(ret);
	/* Queued: no waiting needed. */
	ck_assert_int_eq(vmf_qmp_wait_event(q, "RESUME", &data, 0, &e), 0);
	ck_assert_ptr_null(data);
	for (int i = 0; i < 5; i++) {
		ck_assert_msg(vmf_qmp_wait_event(q, "BALLOON_CHANGE", &data, 0, &e) == 0, "%d: %s", i, e.msg);
		ck_assert(json_object_object_get_ex(data, "actual", &v));
		ck_assert_int_eq(json_object_get_int64(v), 268435456);
		json_object_put(data);
	}
	ck_assert_int_eq(vmf_qmp_wait_event(q, "BALLOON_CHANGE", &data, 0, &e), -ETIMEDOUT);
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, &ret, TIMEOUT, &e), 0);
	ck_assert_str_eq(str_member(ret, "status"), "running");
	json_object_put(ret);
	finish(q, f, false);
}
END_TEST

/* Past 64 unclaimed events the oldest go. */
START_TEST(event_queue_is_bounded)
{
	char *burst = NULL;
	size_t cap = 0;
	FILE *m = open_memstream(&burst, &cap);
	for (int i = 0; i < 70; i++)
		fprintf(m, "%s{\"event\": \"N\", \"data\": {\"n\": %d}, \"timestamp\": {\"seconds\": 0, "
			"\"microseconds\": 0}}", i ? "\r\n" : "", i);
	fclose(m);
	struct fake_qmp *f = fake("lifecycle");
	fake_qmp_fault(f, 3, FAKE_QMP_EVENTS_FIRST, 1, burst);
	free(burst);
	struct vmf_qmp *q = open_on(f);
	struct vmf_error e = { 0 };
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, NULL, TIMEOUT, &e), 0);
	ck_assert_int_eq(vmf_qmp_command(q, "cont", NULL, -1, NULL, TIMEOUT, &e), 0);
	/* 70 + RESUME = 71 events, 64 kept: n=0..6 dropped. */
	ck_assert_int_eq(vmf_qmp_wait_event(q, "RESUME", NULL, 0, &e), 0);
	for (int i = 7; i < 70; i++) {
		json_object *data, *n;
		ck_assert_int_eq(vmf_qmp_wait_event(q, "N", &data, 0, &e), 0);
		ck_assert(json_object_object_get_ex(data, "n", &n));
		ck_assert_int_eq(json_object_get_int(n), i);
		json_object_put(data);
	}
	ck_assert_int_eq(vmf_qmp_wait_event(q, "N", NULL, 0, &e), -ETIMEDOUT);
	finish(q, f, false);
}
END_TEST

/* A reply held past the deadline: the call returns on time, the connection
 * stays usable and the late reply is not taken for the next command's. */
START_TEST(timeout_then_late_reply)
{
	struct fake_qmp *f = fake("negotiate");
	fake_qmp_fault(f, 2, FAKE_QMP_HOLD, 0, NULL); /* query-version */
	struct vmf_qmp *q = open_on(f);
	struct vmf_error e = { 0 };
	json_object *ret = NULL;
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_qmp_command(q, "query-version", NULL, -1, &ret, 300, &e), -ETIMEDOUT);
	int64_t took = vmf_now_ms() - t0;
	ck_assert_int_ge(took, 300);
	ck_assert_int_lt(took, 300 + SLACK_MS);
	ck_assert_ptr_null(ret);
	ck_assert_str_eq(e.msg, "QEMU did not answer query-version within 300 ms");
	fake_qmp_release(f);
	ck_assert_msg(vmf_qmp_command(q, "query-status", NULL, -1, &ret, TIMEOUT, &e) == 0, "%s", e.msg);
	ck_assert_str_eq(str_member(ret, "status"), "prelaunch");
	json_object_put(ret);

	t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_qmp_wait_event(q, "NEVER", NULL, 200, &e), -ETIMEDOUT);
	took = vmf_now_ms() - t0;
	ck_assert_int_ge(took, 200);
	ck_assert_int_lt(took, 200 + SLACK_MS);
	ck_assert_str_eq(e.msg, "QEMU did not send the NEVER event within 200 ms");
	finish(q, f, false);
}
END_TEST

/* Part of a line came, the rest never does: the deadline still holds. */
START_TEST(timeout_with_partial_line)
{
	struct fake_qmp *f = fake("negotiate");
	fake_qmp_fault(f, 2, FAKE_QMP_REPLACE, 0, "{\"return\": {\"qemu\": ");
	fake_qmp_fault(f, 2, FAKE_QMP_SPLIT, 0, NULL);
	struct vmf_qmp *q = open_on(f);
	struct vmf_error e = { 0 };
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_qmp_command(q, "query-version", NULL, -1, NULL, 250, &e), -ETIMEDOUT);
	int64_t took = vmf_now_ms() - t0;
	ck_assert_int_ge(took, 250);
	ck_assert_int_lt(took, 250 + SLACK_MS);
	finish(q, f, false);
}
END_TEST

/* Sends the step-2 command (query-version) into a faulty reply. */
static int
faulty_reply(enum fake_qmp_fault_kind kind, size_t count, const char *text, struct fake_qmp **f,
	     struct vmf_qmp **q, struct vmf_error *e)
{
	*f = fake("negotiate");
	fake_qmp_fault(*f, 2, kind, count, text);
	*q = open_on(*f);
	return vmf_qmp_command(*q, "query-version", NULL, -1, NULL, TIMEOUT, e);
}

START_TEST(malformed_json)
{
	struct fake_qmp *f;
	struct vmf_qmp *q;
	struct vmf_error e = { 0 };
	ck_assert_int_eq(faulty_reply(FAKE_QMP_REPLACE, 0, "this is not json\r\n", &f, &q, &e), -EPROTO);
	ck_assert_msg(strstr(e.msg, "malformed JSON") && strstr(e.msg, "'this is not json'"), "%s", e.msg);
	/* Once the stream is not trusted, nothing more is read from it. */
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, NULL, TIMEOUT, &e), -EPIPE);
	ck_assert_msg(strstr(e.msg, "unusable after an earlier error") && strstr(e.msg, "this is not json"),
		      "%s", e.msg);
	ck_assert_int_eq(vmf_qmp_wait_event(q, "X", NULL, TIMEOUT, &e), -EPIPE);
	finish(q, f, false);

	/* Truncated JSON, and two documents on a line. */
	ck_assert_int_eq(faulty_reply(FAKE_QMP_REPLACE, 0, "{\"return\": {\r\n", &f, &q, &e), -EPROTO);
	ck_assert_msg(strstr(e.msg, "malformed JSON on QMP (incomplete document)"), "%s", e.msg);
	finish(q, f, false);
	ck_assert_int_eq(faulty_reply(FAKE_QMP_REPLACE, 0, "{\"return\": {}} {}\r\n", &f, &q, &e), -EPROTO);
	ck_assert_msg(strstr(e.msg, "more than one JSON document"), "%s", e.msg);
	finish(q, f, false);

	/* Long garbage is quoted, cut and measured. */
	char junk[3001];
	memset(junk, 'z', 2998);
	strcpy(junk + 2998, "\r\n");
	ck_assert_int_eq(faulty_reply(FAKE_QMP_REPLACE, 0, junk, &f, &q, &e), -EPROTO);
	ck_assert_msg(strstr(e.msg, "zzz... (2998 bytes)"), "%s", e.msg);
	ck_assert_uint_lt(strlen(e.msg), 400);
	finish(q, f, false);

	/* Control bytes are shown escaped. */
	ck_assert_int_eq(faulty_reply(FAKE_QMP_REPLACE, 0, "\x01\x02{\r\n", &f, &q, &e), -EPROTO);
	ck_assert_msg(strstr(e.msg, "'\\x01\\x02{'"), "%s", e.msg);
	finish(q, f, false);
}
END_TEST

START_TEST(not_an_object)
{
	struct fake_qmp *f;
	struct vmf_qmp *q;
	struct vmf_error e = { 0 };
	ck_assert_int_eq(faulty_reply(FAKE_QMP_REPLACE, 0, "[1, 2, 3]\r\n", &f, &q, &e), -EPROTO);
	ck_assert_str_eq(e.msg, "QEMU sent a QMP line that is not a JSON object: '[1, 2, 3]'");
	finish(q, f, false);
	ck_assert_int_eq(faulty_reply(FAKE_QMP_REPLACE, 0, "42\r\n", &f, &q, &e), -EPROTO);
	ck_assert_str_eq(e.msg, "QEMU sent a QMP line that is not a JSON object: '42'");
	finish(q, f, false);
	/* An object that is neither a reply nor an event. */
	ck_assert_int_eq(faulty_reply(FAKE_QMP_REPLACE, 0, "{\"hello\": 1}\r\n", &f, &q, &e), -EPROTO);
	ck_assert_msg(strstr(e.msg, "neither a reply nor an event: '{\"hello\":1}'"), "%s", e.msg);
	finish(q, f, false);
}
END_TEST

START_TEST(oversized_line)
{
	struct fake_qmp *f;
	struct vmf_qmp *q;
	struct vmf_error e = { 0 };
	ck_assert_int_eq(faulty_reply(FAKE_QMP_OVERSIZED, VMF_QMP_MAX_LINE + 100, NULL, &f, &q, &e), -EMSGSIZE);
	ck_assert_msg(strstr(e.msg, "longer than the 1048576-byte limit") &&
		      strstr(e.msg, "starting '{\"return\": \"xxx"), "%s", e.msg);
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, NULL, TIMEOUT, &e), -EPIPE);
	finish(q, f, false);

	/* One byte over, with its newline. */
	ck_assert_int_eq(faulty_reply(FAKE_QMP_OVERSIZED, VMF_QMP_MAX_LINE + 1, NULL, &f, &q, &e), -EMSGSIZE);
	ck_assert_msg(strstr(e.msg, "longer than the 1048576-byte limit (1048577 bytes") ||
		      strstr(e.msg, "no newline yet"), "%s", e.msg);
	finish(q, f, false);

	/* Exactly at the limit is fine, split across many reads. */
	json_object *ret = NULL;
	f = fake("negotiate");
	fake_qmp_fault(f, 2, FAKE_QMP_OVERSIZED, VMF_QMP_MAX_LINE, NULL);
	q = open_on(f);
	ck_assert_msg(vmf_qmp_command(q, "query-version", NULL, -1, &ret, TIMEOUT, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(json_object_get_string_len(ret), VMF_QMP_MAX_LINE - 14); /* {"return": "..."} */
	json_object_put(ret);
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, &ret, TIMEOUT, &e), 0);
	ck_assert_str_eq(str_member(ret, "status"), "prelaunch");
	json_object_put(ret);
	finish(q, f, false);
}
END_TEST

START_TEST(eof_mid_reply)
{
	struct fake_qmp *f;
	struct vmf_qmp *q;
	struct vmf_error e = { 0 };
	ck_assert_int_eq(faulty_reply(FAKE_QMP_CLOSE_MID, 0, NULL, &f, &q, &e), -EPIPE);
	ck_assert_msg(strstr(e.msg, "QEMU closed the QMP connection in the middle of a message") &&
		      strstr(e.msg, "reply to query-version"), "%s", e.msg);
	finish(q, f, false);

	/* EOF in the greeting. */
	f = fake("negotiate");
	fake_qmp_fault(f, 0, FAKE_QMP_CLOSE_MID, 0, NULL);
	int fd = fake_qmp_start(f, &e);
	ck_assert_int_eq(vmf_qmp_open_fd(fd, TIMEOUT, &q, &e), -EPIPE);
	ck_assert_msg(strstr(e.msg, "QEMU closed the QMP connection") && strstr(e.msg, "greeting"), "%s", e.msg);
	finish(NULL, f, false);
}
END_TEST

START_TEST(error_reply)
{
	struct fake_qmp *f = fake("errors");
	struct vmf_qmp *q = open_on(f);
	struct vmf_error e = { 0 };
	json_object *ret = NULL;
	ck_assert_int_eq(vmf_qmp_command(q, "no-such-command", NULL, -1, &ret, TIMEOUT, &e), -EIO);
	ck_assert_ptr_null(ret);
	ck_assert_int_eq(e.code, EIO);
	ck_assert_str_eq(e.msg, "QEMU refused no-such-command: CommandNotFound: The command no-such-command "
				"has not been found");
	json_object *args = json_object_new_object();
	json_object_object_add(args, "driver", json_object_new_string("no-such-device"));
	ck_assert_int_eq(vmf_qmp_command(q, "device_add", args, -1, &ret, TIMEOUT, &e), -EIO);
	ck_assert_str_eq(e.msg, "QEMU refused device_add: GenericError: 'no-such-device' is not a valid "
				"device model name");
	json_object_put(args);
	finish(q, f, false);
}
END_TEST

START_TEST(replies_without_id_or_to_nothing)
{
	struct fake_qmp *f;
	struct vmf_qmp *q;
	struct vmf_error e = { 0 };
	/* QEMU's answer to a line it could not parse has no id: with one command
	 * in flight it can only be that command's. */
	f = fake("negotiate");
	fake_qmp_fault(f, 2, FAKE_QMP_REPLACE, 0,
		       "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid keyword "
		       "'garbage'\"}}\r\n");
	q = open_on(f);
	ck_assert_int_eq(vmf_qmp_command(q, "query-version", NULL, -1, NULL, TIMEOUT, &e), -EIO);
	ck_assert_str_eq(e.msg, "QEMU refused query-version: GenericError: JSON parse error, invalid keyword "
				"'garbage'");
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, NULL, TIMEOUT, &e), 0);
	finish(q, f, false);

	/* An id we never used. */
	ck_assert_int_eq(faulty_reply(FAKE_QMP_REPLACE, 0, "{\"return\": {}, \"id\": 12345}\r\n", &f, &q, &e),
			 -EPROTO);
	ck_assert_str_eq(e.msg, "QEMU sent a QMP reply to nothing we asked: '{\"return\":{},\"id\":12345}'");
	finish(q, f, false);

	/* A reply while no command waits. */
	f = fake("negotiate");
	fake_qmp_fault(f, 2, FAKE_QMP_REPLACE, 0, "{\"return\": {}}\r\n{\"return\": {\"again\": 1}}\r\n");
	q = open_on(f);
	ck_assert_int_eq(vmf_qmp_command(q, "query-version", NULL, -1, NULL, TIMEOUT, &e), 0);
	ck_assert_int_eq(vmf_qmp_wait_event(q, "X", NULL, TIMEOUT, &e), -EPROTO);
	ck_assert_str_eq(e.msg, "QEMU sent a QMP reply to nothing we asked: '{\"return\":{\"again\":1}}'");
	finish(q, f, false);
}
END_TEST

START_TEST(passes_fd_with_getfd)
{
	struct fake_qmp *f = fake("migrate");
	struct vmf_qmp *q = open_on(f);
	struct vmf_error e = { 0 };
	int pfd[2];
	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	ck_assert_int_eq(vmf_qmp_command(q, "query-migrate-capabilities", NULL, -1, NULL, TIMEOUT, &e), 0);
	json_object *caps = json_tokener_parse("{\"capabilities\": [{\"capability\": \"events\", \"state\": true},"
					       "{\"capability\": \"x-ignore-shared\", \"state\": true}]}");
	ck_assert_int_eq(vmf_qmp_command(q, "migrate-set-capabilities", caps, -1, NULL, TIMEOUT, &e), 0);
	json_object_put(caps);
	ck_assert_int_eq(vmf_qmp_command(q, "stop", NULL, -1, NULL, TIMEOUT, &e), 0);
	json_object *args = json_object_new_object();
	json_object_object_add(args, "fdname", json_object_new_string("vmfstate"));
	ck_assert_msg(vmf_qmp_command(q, "getfd", args, pfd[1], NULL, TIMEOUT, &e) == 0, "%s", e.msg);
	json_object_put(args);
	/* The peer holds the same pipe, not just some fd. */
	int got = fake_qmp_received_fd(f, 5);
	ck_assert_int_ge(got, 0);
	struct stat a, b;
	ck_assert_int_eq(fstat(got, &a), 0);
	ck_assert_int_eq(fstat(pfd[1], &b), 0);
	ck_assert(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string("fd:vmfstate"));
	ck_assert_int_eq(vmf_qmp_command(q, "migrate", args, -1, NULL, TIMEOUT, &e), 0);
	json_object_put(args);
	json_object *ret;
	ck_assert_int_eq(vmf_qmp_command(q, "query-migrate", NULL, -1, &ret, TIMEOUT, &e), 0);
	ck_assert_str_eq(str_member(ret, "status"), "setup");
	json_object_put(ret);
	for (;;) {
		json_object *data;
		ck_assert_int_eq(vmf_qmp_wait_event(q, "MIGRATION", &data, TIMEOUT, &e), 0);
		bool done = strcmp(str_member(data, "status"), "completed") == 0;
		json_object_put(data);
		if (done)
			break;
	}
	ck_assert_int_eq(vmf_qmp_command(q, "query-migrate", NULL, -1, &ret, TIMEOUT, &e), 0);
	ck_assert_str_eq(str_member(ret, "status"), "completed");
	json_object_put(ret);
	close(pfd[0]);
	close(pfd[1]);
	finish(q, f, false);
}
END_TEST

/* The fake peer notices a client that strays from the recording. */
START_TEST(fake_peer_checks_commands)
{
	struct fake_qmp *f = fake("negotiate");
	struct vmf_qmp *q = open_on(f);
	struct vmf_error e = { 0 };
	ck_assert_int_eq(vmf_qmp_command(q, "query-status", NULL, -1, NULL, TIMEOUT, &e), -EPIPE);
	vmf_qmp_close(q);
	struct fake_qmp_result res;
	fake_qmp_join(f, &res);
	ck_assert_msg(strstr(res.error, "step 2: expected {\"execute\":\"query-version\""), "%s", res.error);
	fake_qmp_free(f);
}
END_TEST

static char *
sock_path(char **dir)
{
	*dir = vmf_test_tmpdir("vmf-qmp");
	char *p;
	ck_assert_int_ge(asprintf(&p, "%s/qmp.sock", *dir), 0);
	return p;
}

static void
connect_late(enum fake_qmp_listen_mode mode)
{
	char *dir, *path = sock_path(&dir);
	struct fake_qmp *f = fake("negotiate");
	struct vmf_error e = { 0 };
	ck_assert_msg(fake_qmp_listen(f, path, mode, 300, &e) == 0, "%s", e.msg);
	struct vmf_qmp *q;
	int64_t t0 = vmf_now_ms();
	ck_assert_msg(vmf_qmp_connect(path, TIMEOUT, &q, &e) == 0, "%s", e.msg);
	int64_t took = vmf_now_ms() - t0;
	ck_assert_int_ge(took, 300);
	ck_assert_int_lt(took, 300 + SLACK_MS + 100); /* backoff steps cap at 100 ms */
	ck_assert_int_eq(vmf_qmp_command(q, "query-version", NULL, -1, NULL, TIMEOUT, &e), 0);
	finish(q, f, false);
	ck_assert_int_eq(vmf_rm_rf(dir, &e), 0);
	free(path);
	free(dir);
}

START_TEST(connect_waits_for_the_socket)
{
	connect_late(FAKE_QMP_BIND_LATE);
}
END_TEST

START_TEST(connect_waits_for_listen)
{
	connect_late(FAKE_QMP_LISTEN_LATE);
}
END_TEST

START_TEST(connect_times_out)
{
	char *dir, *path = sock_path(&dir);
	struct vmf_error e = { 0 };
	struct vmf_qmp *q = NULL;
	int64_t t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_qmp_connect(path, 200, &q, &e), -ENOENT);
	int64_t took = vmf_now_ms() - t0;
	ck_assert_int_ge(took, 200);
	ck_assert_int_lt(took, 200 + SLACK_MS);
	ck_assert_ptr_null(q);
	ck_assert_msg(strstr(e.msg, path) && strstr(e.msg, "within 200 ms"), "%s", e.msg);

	/* Missing directory: no watch possible, still bounded. */
	char missing[600];
	snprintf(missing, sizeof(missing), "%s/no/such/dir/qmp.sock", dir);
	t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_qmp_connect(missing, 200, &q, &e), -ENOENT);
	took = vmf_now_ms() - t0;
	ck_assert_int_ge(took, 200);
	ck_assert_int_lt(took, 200 + SLACK_MS);

	/* Not a socket: no point in waiting. */
	char file[600];
	snprintf(file, sizeof(file), "%s/plain", dir);
	ck_assert_int_eq(vmf_write_file_atomic(file, "x", 1, 0600, &e), 0);
	t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_qmp_connect(file, 5000, &q, &e), -ENOTSOCK);
	ck_assert_int_lt(vmf_now_ms() - t0, SLACK_MS);
	ck_assert_msg(strstr(e.msg, "is not a socket"), "%s", e.msg);
	ck_assert_int_eq(vmf_rm_rf(dir, &e), 0);
	free(path);
	free(dir);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("qmp");
	TCase *tc = tcase_create("qmp");
	tcase_add_loop_test(tc, replays_recordings, 0, 2 * (int)(sizeof(recordings) / sizeof(recordings[0])));
	tcase_add_test(tc, negotiation_and_version);
	tcase_add_test(tc, version_from_greeting);
	tcase_add_test(tc, not_a_greeting);
	tcase_add_test(tc, events_before_reply);
	tcase_add_test(tc, event_queue_is_bounded);
	tcase_add_test(tc, timeout_then_late_reply);
	tcase_add_test(tc, timeout_with_partial_line);
	tcase_add_test(tc, malformed_json);
	tcase_add_test(tc, not_an_object);
	tcase_add_test(tc, oversized_line);
	tcase_add_test(tc, eof_mid_reply);
	tcase_add_test(tc, error_reply);
	tcase_add_test(tc, replies_without_id_or_to_nothing);
	tcase_add_test(tc, passes_fd_with_getfd);
	tcase_add_test(tc, fake_peer_checks_commands);
	tcase_add_test(tc, connect_waits_for_the_socket);
	tcase_add_test(tc, connect_waits_for_listen);
	tcase_add_test(tc, connect_times_out);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
