/* Exec through the guest agent without a VM: the real vmf-agent in test
 * mode (--listen-fd on a unix socket, the code that serves vsock), driven
 * by the client library's agent calls (factory/client/agent_client.c).
 * In test mode exec runs host processes as the test's user: the commands
 * here only read, write their pipes and sleep. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

static pid_t agent_pid = -1;
static pid_t port_pid = -1;      /* an agent on --port-fds */
static char *dir;
static char sock[600];

static void
setup(void)
{
	dir = vmf_test_tmpdir("vmf-agent-exec");
	snprintf(sock, sizeof sock, "%s/agent.sock", dir);
	agent_pid = vmf_test_agent_listener(sock, dir);
}

static void
teardown(void)
{
	/* A failed ledger test leaves the dead agent's sessions: the ledger
	 * names their groups. */
	char ledger[700];
	snprintf(ledger, sizeof ledger, "%s/ledger", dir);
	DIR *d = opendir(ledger);
	struct dirent *de;
	int pgid;
	while (d && (de = readdir(d)))
		if (sscanf(de->d_name, "%d.", &pgid) == 1 && pgid > 1)
			kill(-pgid, SIGKILL);
	if (d)
		closedir(d);
	if (agent_pid > 0) {
		kill(agent_pid, SIGKILL);
		waitpid(agent_pid, NULL, 0);
		agent_pid = -1;
	}
	if (port_pid > 0) {
		kill(port_pid, SIGKILL);
		waitpid(port_pid, NULL, 0);
		port_pid = -1;
	}
	struct vmf_error e;
	vmf_rm_rf(dir, &e);
	free(dir);
}

static struct vmf_client_agent *
conn(void)
{
	struct vmf_client_agent *a;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_client_agent_connect(sock, "unix", 0, 10000, NULL, NULL, &a, &e) == 0, "%s", e.msg);
	return a;
}

struct result {
	char *out, *err;
	size_t nout, nerr;
	int exit_code, signal, timed_out;
};

static void
append(char **buf, size_t *n, const uint8_t *d, size_t len)
{
	*buf = realloc(*buf, *n + len + 1);
	memcpy(*buf + *n, d, len);
	*n += len;
	(*buf)[*n] = '\0';
}

/* Runs events until exec id exits; output collected. */
static void
wait_exit(struct vmf_client_agent *a, uint64_t id, struct result *r)
{
	memset(r, 0, sizeof(*r));
	r->out = calloc(1, 1);
	r->err = calloc(1, 1);
	for (;;) {
		struct vmf_exec_event ev;
		struct vmf_error e = {0};
		int rc = vmf_client_agent_next_event(a, &ev, 30000, &e);
		ck_assert_msg(rc == 0, "%s", e.msg);
		ck_assert_msg(ev.type != VMF_EXEC_EV_NONE, "no event within 30 s");
		ck_assert_msg(ev.type != VMF_EXEC_EV_ERROR, "agent error: %s", ev.message);
		if (ev.exec_id != id)
			continue;
		if (ev.type == VMF_EXEC_EV_OUTPUT && ev.fd == 1)
			append(&r->out, &r->nout, ev.data, ev.len);
		else if (ev.type == VMF_EXEC_EV_OUTPUT)
			append(&r->err, &r->nerr, ev.data, ev.len);
		if (ev.type == VMF_EXEC_EV_EXIT) {
			r->exit_code = ev.exit_code;
			r->signal = ev.signal;
			r->timed_out = ev.timed_out;
			return;
		}
	}
}

static void
result_free(struct result *r)
{
	free(r->out);
	free(r->err);
}

static uint64_t
start(struct vmf_client_agent *a, const char *const *argv, const struct vmf_exec_opts *base)
{
	struct vmf_exec_opts o = base ? *base : (struct vmf_exec_opts){0};
	o.argv = argv;
	uint64_t id;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_client_exec_start(a, &o, &id, 10000, &e) == 0, "%s: %s", argv[0], e.msg);
	return id;
}

static void
run(struct vmf_client_agent *a, const char *const *argv, const struct vmf_exec_opts *o, struct result *r)
{
	wait_exit(a, start(a, argv, o), r);
}

/* A QEMU virtio-serial port now and then leaves a host connection unserved
 * while it serves the next one: the client replaces a connection whose
 * first request goes unanswered (after 1 s) instead of waiting on it for
 * good.  Here the listener takes the first connection and never reads it;
 * the second is served by the agent. */
START_TEST(unanswered_connection_is_replaced)
{
	char sock2[700];
	snprintf(sock2, sizeof sock2, "%s/stuck.sock", dir);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock2);
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(lfd, 0);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
	ck_assert_int_eq(listen(lfd, 4), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		int stuck = accept(lfd, NULL, NULL);
		int c = accept(lfd, NULL, NULL);
		if (stuck < 0 || c < 0)
			_exit(1);
		dup2(c, 3);
		execl(vmf_test_agent_path(), "vmf-agent", "--fd", "3", "--share-dir", dir, (char *)NULL);
		_exit(127);
	}
	close(lfd);
	struct vmf_client_agent *a = NULL;
	struct vmf_error e = {0};
	int64_t t0 = vmf_now_ms();
	int r = vmf_client_agent_connect(sock2, "unix", 0, 10000, NULL, NULL, &a, &e);
	int64_t ms = vmf_now_ms() - t0;
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	ck_assert_msg(r == 0, "connect behind an unserved connection: %s", e.msg);
	ck_assert_msg(ms >= 1000 && ms < 8000, "replaced after %lld ms", (long long)ms);
	vmf_client_agent_close(a);
}
END_TEST

START_TEST(stdout_stderr_and_exit_status)
{
	struct vmf_client_agent *a = conn();
	struct result r;
	run(a, (const char *const[]){ "sh", "-c", "echo out; echo err >&2; exit 3", NULL }, NULL, &r);
	ck_assert_str_eq(r.out, "out\n");
	ck_assert_str_eq(r.err, "err\n");
	ck_assert_int_eq(r.exit_code, 3);
	ck_assert_int_eq(r.signal, 0);
	result_free(&r);
	vmf_client_agent_close(a);
}
END_TEST

START_TEST(signal_timeout_and_signal_request)
{
	struct vmf_client_agent *a = conn();
	struct result r;
	run(a, (const char *const[]){ "sh", "-c", "kill -TERM $$", NULL }, NULL, &r);
	ck_assert_int_eq(r.exit_code, -1);
	ck_assert_int_eq(r.signal, SIGTERM);
	ck_assert_int_eq(r.timed_out, 0);
	result_free(&r);
	int64_t t0 = vmf_now_ms();
	run(a, (const char *const[]){ "sleep", "30", NULL }, &(struct vmf_exec_opts){ .timeout_ms = 300 }, &r);
	ck_assert_int_eq(r.signal, SIGKILL);
	ck_assert_int_eq(r.timed_out, 1);
	ck_assert_int_lt(vmf_now_ms() - t0, 10000);
	result_free(&r);
	uint64_t id = start(a, (const char *const[]){ "sleep", "30", NULL }, NULL);
	struct vmf_error e = {0};
	ck_assert_msg(vmf_client_exec_signal(a, id, SIGINT, &e) == 0, "%s", e.msg);
	wait_exit(a, id, &r);
	ck_assert_int_eq(r.signal, SIGINT);
	result_free(&r);
	vmf_client_agent_close(a);
}
END_TEST

START_TEST(env_cwd_and_tty)
{
	struct vmf_client_agent *a = conn();
	struct result r;
	const char *const env[] = { "FOO=bar baz", "PATH=/usr/bin:/bin", NULL };
	run(a, (const char *const[]){ "sh", "-c", "echo \"$FOO\"; pwd; echo $PATH", NULL },
	    &(struct vmf_exec_opts){ .env = env, .cwd = "/tmp" }, &r);
	ck_assert_str_eq(r.out, "bar baz\n/tmp\n/usr/bin:/bin\n");
	result_free(&r);
	run(a, (const char *const[]){ "sh", "-c", "test -t 0 && test -t 1 && stty size", NULL },
	    &(struct vmf_exec_opts){ .tty = 1, .rows = 33, .cols = 101 }, &r);
	ck_assert_int_eq(r.exit_code, 0);
	ck_assert_msg(strstr(r.out, "33 101"), "tty output: '%s'", r.out);
	result_free(&r);
	vmf_client_agent_close(a);
}
END_TEST

static uint64_t
fnv(uint64_t h, const uint8_t *d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ d[i]) * 1099511628211ull;
	return h;
}

/* 4 MiB (sixteen stdin windows) through cat: stdin in within its window, stdout back, checked
 * byte for byte (a checksum), both ways at once. */
START_TEST(stdin_streamed_through_cat)
{
	struct vmf_client_agent *a = conn();
	uint64_t id = start(a, (const char *const[]){ "cat", NULL }, NULL);
	const size_t total = 4u << 20;
	static uint8_t chunk[65536];
	for (size_t i = 0; i < sizeof chunk; i++)
		chunk[i] = (uint8_t)(i * 7 + 3);
	size_t sent = 0, got = 0;
	uint64_t hin = 14695981039346656037ull, hout = hin;
	struct vmf_error e = {0};
	for (;;) {
		while (sent < total) {
			size_t off = sent % sizeof chunk, n = sizeof chunk - off;
			if (n > total - sent)
				n = total - sent;
			long k = vmf_client_exec_input(a, id, chunk + off, n, sent + n == total, &e);
			ck_assert_msg(k >= 0, "%s", e.msg);
			if (k == 0)
				break;
			hin = fnv(hin, chunk + off, (size_t)k);
			sent += (size_t)k;
		}
		struct vmf_exec_event ev;
		ck_assert_msg(vmf_client_agent_next_event(a, &ev, 30000, &e) == 0, "%s", e.msg);
		ck_assert_msg(ev.type != VMF_EXEC_EV_NONE && ev.type != VMF_EXEC_EV_ERROR, "event %d: %s", ev.type,
			      ev.message);
		if (ev.type == VMF_EXEC_EV_OUTPUT) {
			hout = fnv(hout, ev.data, ev.len);
			got += ev.len;
		}
		if (ev.type == VMF_EXEC_EV_EXIT) {
			ck_assert_int_eq(ev.exit_code, 0);
			break;
		}
	}
	ck_assert_uint_eq(sent, total);
	ck_assert_uint_eq(got, total);
	ck_assert_msg(hin == hout, "checksum differs");
	vmf_client_agent_close(a);
}
END_TEST

/* A child of parent named comm is blocked in write(2): its pipe is full,
 * nobody reads it. */
static bool
child_blocked_writing(pid_t parent, const char *comm)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	bool blocked = false;
	while (d && !blocked && (de = readdir(d))) {
		int pid = atoi(de->d_name);
		char p[64], *st = NULL, *sc = NULL;
		snprintf(p, sizeof p, "/proc/%d/stat", pid);
		if (pid <= 0 || vmf_read_file(p, &st, NULL, 4096, NULL) < 0)
			continue;
		/* "pid (comm) state ppid ..." */
		char *close_paren = strrchr(st, ')'), name[64] = "", state = 0;
		int ppid = 0;
		if (close_paren && sscanf(st, "%*d (%63[^)]", name) == 1 &&
		    sscanf(close_paren + 2, "%c %d", &state, &ppid) == 2 && ppid == parent && !strcmp(name, comm)) {
			snprintf(p, sizeof p, "/proc/%d/syscall", pid);
			/* x86-64 write(2) is syscall 1. */
			blocked = state == 'S' && vmf_read_file(p, &sc, NULL, 4096, NULL) == 0 && !strncmp(sc, "1 ", 2);
		}
		free(st);
		free(sc);
	}
	if (d)
		closedir(d);
	return blocked;
}

/* A process writing 16 MiB (four times the growth allowed below; the
 * 100 MiB run is test_exec's, in a guest) while nobody reads: the agent stops
 * reading its pipe at the window, so its memory stays flat; what comes
 * later still arrives in full when the host reads again. */
START_TEST(output_back_pressure)
{
	struct vmf_client_agent *a = conn();
	uint64_t id = start(a, (const char *const[]){ "head", "-c", "16777216", "/dev/zero", NULL }, NULL);
	long base = (long)vmf_proc_rss_kib(agent_pid);
	/* The host stays away until the agent stops reading: the writer then
	 * blocks on its full pipe (an unbounded agent would read all 16 MiB
	 * and let it exit). */
	wait_until(child_blocked_writing(agent_pid, "head"), 30000,
		   "the writer never blocked: the agent keeps reading while nobody reads it");
	long held = (long)vmf_proc_rss_kib(agent_pid);
	ck_assert_msg(held - base < 4096, "the agent grew from %ld to %ld KiB while the host did not read", base,
		      held);
	struct result r;
	wait_exit(a, id, &r);
	ck_assert_uint_eq(r.nout, 16777216u);
	ck_assert_int_eq(r.exit_code, 0);
	result_free(&r);
	vmf_client_agent_close(a);
}
END_TEST

START_TEST(several_processes_on_one_connection)
{
	struct vmf_client_agent *a = conn();
	uint64_t ids[4];
	for (int i = 0; i < 4; i++) {
		char script[64];
		snprintf(script, sizeof script, "sleep 0.%d; echo p%d; exit %d", 4 - i, i, 10 + i);
		ids[i] = start(a, (const char *const[]){ "sh", "-c", script, NULL }, NULL);
	}
	/* Answered while they run. */
	struct vmf_error e = {0};
	ck_assert_msg(vmf_client_agent_ping(a, 5000, &e) == 0, "%s", e.msg);
	int exited = 0;
	char out[4][16] = { "", "", "", "" };
	while (exited < 4) {
		struct vmf_exec_event ev;
		ck_assert_msg(vmf_client_agent_next_event(a, &ev, 30000, &e) == 0, "%s", e.msg);
		ck_assert_int_ne(ev.type, VMF_EXEC_EV_NONE);
		int i = 0;
		while (i < 4 && ids[i] != ev.exec_id)
			i++;
		ck_assert_int_lt(i, 4);
		if (ev.type == VMF_EXEC_EV_OUTPUT)
			snprintf(out[i], sizeof out[i], "%.*s", (int)ev.len, (const char *)ev.data);
		if (ev.type == VMF_EXEC_EV_EXIT) {
			/* Its output came first. */
			char want[16];
			snprintf(want, sizeof want, "p%d\n", i);
			ck_assert_str_eq(out[i], want);
			ck_assert_int_eq(ev.exit_code, 10 + i);
			exited++;
		}
	}
	vmf_client_agent_close(a);
}
END_TEST

static void
expect_start_error(struct vmf_client_agent *a, const struct vmf_exec_opts *o, int code, const char *needle)
{
	uint64_t id;
	struct vmf_error e = {0};
	int r = vmf_client_exec_start(a, o, &id, 10000, &e);
	ck_assert_msg(r == -code, "%s: expected errno %d, got %d (%s)", o->argv[0], code, -r, e.msg);
	ck_assert_msg(strstr(e.msg, needle), "error '%s' does not name '%s'", e.msg, needle);
	ck_assert_msg(vmf_client_agent_ping(a, 5000, &e) == 0, "agent stopped serving: %s", e.msg);
}

START_TEST(start_errors_are_sentences)
{
	struct vmf_client_agent *a = conn();
	expect_start_error(a, &(struct vmf_exec_opts){ .argv = (const char *const[]){ "no-such-cmd-vmf", NULL } },
			   ENOENT, "no-such-cmd-vmf");
	expect_start_error(a, &(struct vmf_exec_opts){ .argv = (const char *const[]){ "/no/such/file", NULL } },
			   ENOENT, "/no/such/file");
	expect_start_error(a, &(struct vmf_exec_opts){ .argv = (const char *const[]){ "true", NULL },
						       .cwd = "/no/such/dir" },
			   ENOENT, "/no/such/dir");
	expect_start_error(a, &(struct vmf_exec_opts){ .argv = (const char *const[]){ "true", NULL },
						       .set_user = 1, .uid = 4294967295u },
			   EINVAL, "4294967295");
	expect_start_error(a, &(struct vmf_exec_opts){ .argv = (const char *const[]){ "true", NULL },
						       .env = (const char *const[]){ "NOEQUALS", NULL } },
			   EINVAL, "NOEQUALS");
	/* An argv beyond the frame: refused by the library before sending. */
	static char big[70000];
	memset(big, 'x', sizeof big - 1);
	expect_start_error(a, &(struct vmf_exec_opts){ .argv = (const char *const[]){ "echo", big, NULL } }, E2BIG,
			   "argument list too long");
	static const char *many[5000];
	for (int i = 0; i < 4999; i++)
		many[i] = "A=1";
	expect_start_error(a, &(struct vmf_exec_opts){ .argv = (const char *const[]){ "true", NULL }, .env = many },
			   E2BIG, "argument list too long");
	vmf_client_agent_close(a);
}
END_TEST

/* A client that goes away mid-stream: the agent kills the process (its
 * whole group) and reaps it, and serves the next client. */
START_TEST(disconnect_kills_the_process_group)
{
	struct vmf_client_agent *a = conn();
	struct vmf_error e = {0};
	uint64_t id = start(a, (const char *const[]){ "sh", "-c", "sleep 1000 & echo $!; yes", NULL }, NULL);
	pid_t child = 0;
	while (!child) {
		struct vmf_exec_event ev;
		ck_assert_msg(vmf_client_agent_next_event(a, &ev, 30000, &e) == 0, "%s", e.msg);
		ck_assert_int_eq(ev.type, VMF_EXEC_EV_OUTPUT);
		ck_assert_uint_eq(ev.exec_id, id);
		child = (pid_t)atoi((const char *)ev.data);
	}
	ck_assert_int_gt(child, 1);
	ck_assert_int_eq(kill(child, 0), 0);
	vmf_client_agent_close(a);
	int64_t deadline = vmf_now_ms() + 10000;
	/* The background sleep is not the agent's child: gone once killed and
	 * reaped by whoever adopted it. */
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)child);
	for (;;) {
		char buf[512] = "";
		FILE *f = fopen(path, "r");
		if (f) {
			size_t n = fread(buf, 1, sizeof buf - 1, f);
			buf[n] = '\0';
			fclose(f);
		}
		const char *p = strrchr(buf, ')');
		if (!f || (p && p[2] == 'Z'))
			break;
		ck_assert_msg(vmf_now_ms() < deadline, "the exec's background process %d outlived its client",
			      (int)child);
		poll(NULL, 0, 20);
	}
	a = conn();
	struct result r;
	run(a, (const char *const[]){ "echo", "next", NULL }, NULL, &r);
	ck_assert_str_eq(r.out, "next\n");
	result_free(&r);
	vmf_client_agent_close(a);
}
END_TEST


static struct vmf_exec_entry *
find_entry(struct vmf_client_agent *a, uint64_t id, struct vmf_exec_entry *out)
{
	struct vmf_exec_entry *v;
	size_t n;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_client_exec_list(a, &v, &n, 10000, &e) == 0, "%s", e.msg);
	bool found = false;
	for (size_t i = 0; i < n; i++)
		if (v[i].exec_id == id) {
			*out = v[i];
			found = true;
		}
	free(v);
	return found ? out : NULL;
}

struct entry_wait {
	struct vmf_client_agent *a;
	uint64_t id;
	struct vmf_exec_entry e;
};

static bool
entry_exited(void *arg)
{
	struct entry_wait *w = arg;
	return find_entry(w->a, w->id, &w->e) && w->e.exited;
}

static bool
entry_dropped(void *arg)
{
	struct entry_wait *w = arg;
	return find_entry(w->a, w->id, &w->e) && w->e.dropped >= 200000 - 64 * 1024;
}

/* A kept process outlives the connection that started it: it runs as a
 * named user with its login environment and the sandbox's, its output is
 * held (the last 64 KiB) while nobody is attached, a second connection
 * lists it, attaches by tag and gets the held output, writes its stdin
 * and gets its exit; a third cannot take it meanwhile; a detached one is
 * killed by exec id from another connection and its exit collected by
 * pid.  Requests out of bounds are refused with sentences. */
START_TEST(kept_processes_outlive_their_connection)
{
	struct passwd *pw = getpwuid(getuid());
	ck_assert_ptr_nonnull(pw);
	char user[64], home[600];
	snprintf(user, sizeof user, "%s", pw->pw_name);
	snprintf(home, sizeof home, "%s", pw->pw_dir);
	struct vmf_error e = {0};
	struct vmf_client_agent *a = conn();
	ck_assert_msg(vmf_client_agent_set_env(a, (const char *const[]){ "SANDBOX_V=sb", "SHARED=sandbox", NULL },
					       10000, &e) == 0, "%s", e.msg);
	struct vmf_exec_opts o = { .keep = 1, .tag = "srv", .user = user,
				   .env = (const char *const[]){ "SHARED=request", NULL } };
	uint64_t id = start(a, (const char *const[]){ "sh", "-c",
		"echo \"$SANDBOX_V $SHARED $USER $LOGNAME $HOME $PWD\"; read l; echo \"got $l\"; "
		"head -c 200000 /dev/zero | tr '\\0' x; echo; echo END; read l; exit 7", NULL }, &o);
	/* The tag is the table's: a second one is refused. */
	o.keep = 0;
	o.argv = (const char *const[]){ "true", NULL };
	uint64_t other;
	ck_assert_int_eq(vmf_client_exec_start(a, &o, &other, 10000, &e), -EEXIST);
	ck_assert_msg(strstr(e.msg, "tag 'srv'"), "%s", e.msg);
	o.tag = NULL;
	o.user = "no-such-user-here";
	ck_assert_int_eq(vmf_client_exec_start(a, &o, &other, 10000, &e), -ENOENT);
	ck_assert_msg(strstr(e.msg, "no user 'no-such-user-here'"), "%s", e.msg);

	char want[1400], first[1400] = "";
	snprintf(want, sizeof want, "sb request %s %s %s %s\n", user, user, home, home);
	size_t nfirst = 0;
	while (!strchr(first, '\n')) {
		struct vmf_exec_event ev;
		ck_assert_msg(vmf_client_agent_next_event(a, &ev, 30000, &e) == 0, "%s", e.msg);
		ck_assert_int_eq(ev.type, VMF_EXEC_EV_OUTPUT);
		ck_assert_uint_lt(nfirst + ev.len, sizeof first);
		memcpy(first + nfirst, ev.data, ev.len);
		nfirst += ev.len;
		first[nfirst] = '\0';
	}
	ck_assert_str_eq(first, want);
	ck_assert_int_eq(vmf_client_exec_input(a, id, "hello\n", 6, 0, &e), 6);
	ck_assert_int_eq(vmf_client_agent_flush(a, &e), 0);
	vmf_client_agent_close(a);

	/* Detached: listed, not attached; its 200 KB of output meanwhile held
	 * to the last 64 KiB. */
	struct vmf_client_agent *b = conn();
	struct vmf_exec_entry ent;
	struct entry_wait dw = { b, id, {0} };
	wait_until(entry_dropped(&dw), 20000, "the detached process's output held and the oldest dropped");
	ck_assert_ptr_nonnull(find_entry(b, id, &ent));
	ck_assert_str_eq(ent.tag, "srv");
	ck_assert(ent.keep && !ent.exited);
	ck_assert_msg(strstr(ent.cmd, "sh -c echo"), "%s", ent.cmd);
	ck_assert_str_eq(ent.cwd, home);
	uint64_t got;
	int pid = 0;
	ck_assert_int_eq(vmf_client_exec_attach(b, id, 0, "srv", 0, &got, &pid, 10000, &e), -EINVAL);
	ck_assert_msg(strstr(e.msg, "exactly one"), "%s", e.msg);
	ck_assert_int_eq(vmf_client_exec_attach(b, 0, 0, "nothing", 0, &got, &pid, 10000, &e), -ESRCH);
	ck_assert_msg(vmf_client_exec_attach(b, 0, 0, "srv", 0, &got, &pid, 10000, &e) == 0, "%s", e.msg);
	ck_assert_uint_eq(got, id);
	ck_assert_int_gt(pid, 1);
	struct vmf_client_agent *c = conn();
	ck_assert_int_eq(vmf_client_exec_attach(c, 0, pid, NULL, 0, &got, NULL, 10000, &e), -EBUSY);
	ck_assert_msg(strstr(e.msg, "another connection"), "%s", e.msg);
	ck_assert_int_eq(vmf_client_exec_attach(b, 0, pid, NULL, 0, &got, NULL, 10000, &e), -EALREADY);

	char *out = calloc(1, 1);
	size_t nout = 0;
	while (!strstr(out, "END\n")) {
		struct vmf_exec_event ev;
		ck_assert_msg(vmf_client_agent_next_event(b, &ev, 30000, &e) == 0, "%s", e.msg);
		ck_assert_int_eq(ev.type, VMF_EXEC_EV_OUTPUT);
		append(&out, &nout, ev.data, ev.len);
	}
	ck_assert_msg(nout <= 64 * 1024 + 16, "%zu bytes of held output came (at most 64 KiB are held)", nout);
	ck_assert_msg(nout > 60000, "only %zu bytes of held output came", nout);
	ck_assert_ptr_nonnull(find_entry(b, id, &ent));
	ck_assert(ent.attached);
	free(out);
	ck_assert_int_eq(vmf_client_exec_input(b, id, "bye\n", 4, 1, &e), 4);
	struct result r;
	wait_exit(b, id, &r);
	ck_assert_int_eq(r.exit_code, 7);
	result_free(&r);
	ck_assert_ptr_null(find_entry(b, id, &ent));

	/* Killed while detached, from another connection; its exit kept for
	 * whoever attaches, then gone from the table. */
	o = (struct vmf_exec_opts){ .keep = 1, .tag = "sleeper" };
	uint64_t sl = start(b, (const char *const[]){ "sleep", "1000", NULL }, &o);
	vmf_client_agent_close(b);
	ck_assert_msg(vmf_client_exec_signal(c, sl, SIGKILL, &e) == 0, "%s", e.msg);
	struct entry_wait w = { c, sl, {0} };
	wait_until(entry_exited(&w), 10000, "the detached process's exit in the table");
	ck_assert_int_eq(w.e.signal, SIGKILL);
	ck_assert_msg(vmf_client_exec_signal(c, sl, SIGKILL, &e) == 0, "a second kill: %s", e.msg);
	ck_assert_msg(vmf_client_exec_attach(c, 0, w.e.pid, NULL, 0, &got, NULL, 10000, &e) == 0, "%s", e.msg);
	wait_exit(c, sl, &r);
	ck_assert_int_eq(r.signal, SIGKILL);
	result_free(&r);
	ck_assert_ptr_null(find_entry(c, sl, &ent));
	/* A process started without keep still ends with its connection. */
	ck_assert_int_eq(vmf_client_exec_signal(c, id, SIGKILL, &e), -ESRCH);
	vmf_client_agent_close(c);
}
END_TEST

static void
raw_send(int fd, Vmf__Agent__AgentRequest *req, uint64_t id)
{
	req->protocol_version = AGENT_PROTOCOL_VERSION;
	req->id = id;
	uint8_t buf[1024];
	size_t n = vmf__agent__agent_request__pack(req, buf);
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_frame_write(fd, buf, n, vmf_now_ms() + 5000, &e), 0);
}

/* The reply with id read from rfd, others skipped. */
static Vmf__Agent__AgentReply *
raw_reply(int rfd, uint64_t id)
{
	struct vmf_error e = {0};
	for (;;) {
		uint8_t *in;
		size_t n;
		ck_assert_msg(vmf_frame_read(rfd, &in, &n, VMF_AGENT_MAX_FRAME, vmf_now_ms() + 5000, &e) == 0,
			      "no reply with id %llu: %s", (unsigned long long)id, e.msg);
		Vmf__Agent__AgentReply *r = vmf__agent__agent_reply__unpack(NULL, n, in);
		free(in);
		ck_assert_ptr_nonnull(r);
		if (r->id == id)
			return r;
		/* Unsolicited (stdin acknowledgements) or an earlier refusal. */
		vmf__agent__agent_reply__free_unpacked(r, NULL);
	}
}

static Vmf__Agent__AgentReply *
raw_call(int fd, Vmf__Agent__AgentRequest *req, uint64_t id)
{
	raw_send(fd, req, id);
	return raw_reply(fd, id);
}


static bool
reaped(pid_t pid)
{
	return waitpid(pid, NULL, WNOHANG) == pid;
}

/* A test stream's end ends the agent, and a kept process with it:
 * nothing outlives the agent that started it. */
START_TEST(a_stream_agent_ends_with_its_kept_processes)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pid_t ag = vmf_test_fork();
	if (ag == 0) {
		dup2(sv[1], 3);
		execl(vmf_test_agent_path(), "vmf-agent", "--fd", "3", "--share-dir", dir, (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecStart x = VMF__AGENT__EXEC_START__INIT;
	char *argv[] = { "sleep", "1000" };
	x.n_argv = 2;
	x.argv = argv;
	x.keep = true;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START;
	req.exec_start = &x;
	Vmf__Agent__AgentReply *r = raw_call(sv[0], &req, 7);
	ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED);
	pid_t pid = r->exec_started->pid;
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	ck_assert_int_eq(kill(pid, 0), 0);
	close(sv[0]);
	bool ended = false;
	poll_until((ended = reaped(ag)), 10000);
	if (!ended) {
		/* Nothing left behind when it fails. */
		kill(ag, SIGKILL);
		waitpid(ag, NULL, 0);
		kill(pid, SIGKILL);
		ck_abort_msg("the agent did not end with its stream");
	}
	wait_until(kill(pid, 0) < 0, 10000, "its kept process %d ends with it", (int)pid);
}
END_TEST

/* Requests for a process that is not there, or out of bounds, are answered
 * with their id and a sentence; a stdin beyond the window is refused. */
START_TEST(stray_and_oversized_exec_requests)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecInput in = VMF__AGENT__EXEC_INPUT__INIT;
	in.exec_id = 999;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_INPUT;
	req.exec_input = &in;
	Vmf__Agent__AgentReply *r = raw_call(fd, &req, 41);
	ck_assert_int_eq(r->error_code, ESRCH);
	ck_assert_ptr_nonnull(strstr(r->error_message, "999"));
	vmf__agent__agent_reply__free_unpacked(r, NULL);

	Vmf__Agent__ExecStart x = VMF__AGENT__EXEC_START__INIT;
	char *argv[] = { "sleep", "30" };
	x.n_argv = 2;
	x.argv = argv;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START;
	req.exec_start = &x;
	r = raw_call(fd, &req, 42);
	ck_assert_int_eq(r->error_code, 0);
	ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED);
	uint64_t id = r->exec_started->exec_id;
	vmf__agent__agent_reply__free_unpacked(r, NULL);

	Vmf__Agent__ExecSignal sg = VMF__AGENT__EXEC_SIGNAL__INIT;
	sg.exec_id = id;
	sg.signal = 0;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_SIGNAL;
	req.exec_signal = &sg;
	r = raw_call(fd, &req, 43);
	ck_assert_int_eq(r->error_code, EINVAL);
	vmf__agent__agent_reply__free_unpacked(r, NULL);

	/* sleep does not read: its pipe and then the agent's window fill, and
	 * what goes beyond the window is refused (a host that ignores it). */
	static uint8_t chunk[32768];
	in.exec_id = id;
	in.data.data = chunk;
	in.data.len = sizeof chunk;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_INPUT;
	req.exec_input = &in;
	uint8_t *buf = malloc(65536);
	for (int i = 0; i < 16; i++) {
		req.protocol_version = AGENT_PROTOCOL_VERSION;
		req.id = 100 + (uint64_t)i;
		size_t n = vmf__agent__agent_request__pack(&req, buf);
		struct vmf_error e = {0};
		ck_assert_int_eq(vmf_frame_write(fd, buf, n, vmf_now_ms() + 5000, &e), 0);
	}
	free(buf);
	bool refused = false;
	while (!refused) {
		uint8_t *f;
		size_t n;
		struct vmf_error e = {0};
		ck_assert_msg(vmf_frame_read(fd, &f, &n, VMF_AGENT_MAX_FRAME, vmf_now_ms() + 5000, &e) == 0,
			      "no refusal of stdin beyond the window: %s", e.msg);
		r = vmf__agent__agent_reply__unpack(NULL, n, f);
		free(f);
		ck_assert_ptr_nonnull(r);
		refused = r->error_code == ENOBUFS && r->id >= 100 && strstr(r->error_message, "window");
		vmf__agent__agent_reply__free_unpacked(r, NULL);
	}

	Vmf__Agent__ExecReset rs = VMF__AGENT__EXEC_RESET__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESET;
	req.exec_reset = &rs;
	r = raw_call(fd, &req, 45);
	ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	close(fd);
}
END_TEST

/* True once pid is gone or a zombie. */
static bool
proc_ended(pid_t pid)
{
	char path[64], *st = NULL;
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	struct vmf_error e = {0};
	if (vmf_read_file(path, &st, NULL, 4096, &e) < 0)
		return true;
	const char *p = strrchr(st, ')');
	bool z = p && p[1] == ' ' && p[2] == 'Z';
	free(st);
	return z;
}

/* A virtio-serial port's host coming and going as the guest kernel shows
 * it, played with --port-fds: a FIFO towards the agent (a read of 0 while
 * it has no writer: the host away) and a pipe back.  virtio_console learns
 * of a new host connection after that host's first bytes (contrib/agent/conn.c,
 * conn_ended), so the first request of a host can be read and
 * answered while the port still says the host is away: the answer cannot
 * be written (here: the pipe back is full), then the read is 0.  Once the
 * port opens (SIGIO) the answer must go out; the agent used to drop it at
 * the read of 0, and the host waited for good. */
START_TEST(port_answers_a_request_read_before_its_host_shows)
{
	char fifo[700];
	snprintf(fifo, sizeof fifo, "%s/port.in", dir);
	ck_assert_int_eq(mkfifo(fifo, 0600), 0);
	int in_r = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	ck_assert_int_ge(in_r, 0);
	int in_w = open(fifo, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(in_w, 0);
	int out[2];
	ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);
	int r_hi = fcntl(in_r, F_DUPFD_CLOEXEC, 100), w_hi = fcntl(out[1], F_DUPFD_CLOEXEC, 100);
	ck_assert(r_hi >= 100 && w_hi >= 100);
	port_pid = vmf_test_fork();
	if (port_pid == 0) {
		dup2(r_hi, 3);
		dup2(w_hi, 4);
		syscall(SYS_close_range, 5U, ~0U, 0U);
		execl(vmf_test_agent_path(), "vmf-agent", "--port-fds", "3", "4", "--share-dir", dir, (char *)NULL);
		_exit(127);
	}
	close(r_hi);
	close(w_hi);
	close(in_r);

	/* The first host starts a process: the agent kills it when it takes
	 * that host as gone, which tells this test when it has. */
	Vmf__Agent__AgentRequest req = VMF__AGENT__AGENT_REQUEST__INIT;
	Vmf__Agent__ExecStart x = VMF__AGENT__EXEC_START__INIT;
	char *argv[] = { "sleep", "60" };
	x.argv = argv;
	x.n_argv = 2;
	x.cwd = "";
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START;
	req.exec_start = &x;
	raw_send(in_w, &req, 1);
	Vmf__Agent__AgentReply *r = raw_reply(out[0], 1);
	ck_assert_msg(r->body_case == VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED, "%s",
		      r->error_message ? r->error_message : "");
	pid_t child = r->exec_started->pid;
	vmf__agent__agent_reply__free_unpacked(r, NULL);

	/* The host's next request, read while the port says it is away: the
	 * answer waits behind a full pipe, then the FIFO reads 0. */
	ck_assert_int_eq(fcntl(out[1], F_SETFL, O_NONBLOCK), 0);
	static const uint8_t junk[4096];
	size_t filled = 0;
	for (size_t chunk = sizeof junk; chunk > 0; chunk = chunk > 1 ? 1 : 0) {
		ssize_t w;
		while ((w = write(out[1], junk, chunk)) > 0)
			filled += (size_t)w;
		ck_assert_int_eq(errno, EAGAIN);
	}
	Vmf__Agent__Ping ping = VMF__AGENT__PING__INIT;
	req.body_case = VMF__AGENT__AGENT_REQUEST__BODY_PING;
	req.ping = &ping;
	raw_send(in_w, &req, 2);
	close(in_w);
	int64_t deadline = vmf_now_ms() + 10000;
	while (!proc_ended(child)) {
		ck_assert_msg(vmf_now_ms() < deadline, "the agent never took the port's host as gone");
		poll(NULL, 0, 10);
	}

	/* The port opens: room to write, a writer on the FIFO, SIGIO. */
	for (size_t left = filled; left > 0;) {
		uint8_t buf[4096];
		struct pollfd pf = { .fd = out[0], .events = POLLIN };
		ck_assert_int_eq(poll(&pf, 1, 5000), 1);
		ssize_t n = read(out[0], buf, left < sizeof buf ? left : sizeof buf);
		ck_assert_int_gt(n, 0);
		left -= (size_t)n;
	}
	in_w = open(fifo, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(in_w, 0);
	ck_assert_int_eq(kill(port_pid, SIGIO), 0);
	r = raw_reply(out[0], 2);
	ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_PONG);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	/* And the port serves on. */
	raw_send(in_w, &req, 3);
	r = raw_reply(out[0], 3);
	ck_assert_int_eq(r->body_case, VMF__AGENT__AGENT_REPLY__BODY_PONG);
	vmf__agent__agent_reply__free_unpacked(r, NULL);
	close(in_w);
	close(out[0]);
	close(out[1]);
}
END_TEST

/* The agent killed mid-exec (its exec-started fault point: the session
 * started, the reply not yet sent), as a crash or the OOM killer would: the
 * client sees its connection go, the session's processes (a shell and its
 * child) outlive the agent, and the agent started next (as init does)
 * kills them before it serves. */
START_TEST(a_dead_agents_sessions_are_killed_by_the_next)
{
	REQUIRE_FAULT_BUILD();
	char ledger[700];
	snprintf(ledger, sizeof ledger, "%s/ledger", dir);
	ck_assert_int_eq(mkdir(ledger, 0700), 0);
	kill(agent_pid, SIGKILL);
	waitpid(agent_pid, NULL, 0);
	unlink(sock);
	setenv("VMFACTORY_FAULT", "exec-started", 1);
	agent_pid = vmf_test_agent_listener_with(sock, dir, ledger);
	unsetenv("VMFACTORY_FAULT");
	struct vmf_client_agent *a = conn();
	struct vmf_exec_opts o = { .argv = (const char *const[]){ "sh", "-c", "sleep 987654 & exec sleep 987655",
								   NULL } };
	uint64_t id;
	struct vmf_error e = {0};
	ck_assert_int_lt(vmf_client_exec_start(a, &o, &id, 10000, &e), 0);
	printf("exec start when the agent dies: %s\n", e.msg);
	vmf_client_agent_close(a);
	int st;
	ck_assert_int_eq(waitpid(agent_pid, &st, 0), agent_pid);
	ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the agent did not die at its fault point (%d)", st);
	agent_pid = -1;
	wait_until(vmf_test_count_under("sleep", "98765") == 2, 10000, "the session's two processes did not start");
	ck_assert_int_eq(vmf_test_dir_entries(ledger), 1);

	unlink(sock);
	agent_pid = vmf_test_agent_listener_with(sock, dir, ledger);
	wait_until(vmf_test_count_under("sleep", "98765") == 0, 10000,
		   "the sessions of the agent that died outlived the next one");
	a = conn();
	struct result r;
	run(a, (const char *const[]){ "echo", "serving", NULL }, NULL, &r);
	ck_assert_str_eq(r.out, "serving\n");
	result_free(&r);
	vmf_client_agent_close(a);
	ck_assert_int_eq(vmf_test_dir_entries(ledger), 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("agent_exec");
	TCase *tc = tcase_create("exec");
	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, stdout_stderr_and_exit_status);
	tcase_add_test(tc, kept_processes_outlive_their_connection);
	tcase_add_test(tc, a_stream_agent_ends_with_its_kept_processes);
	tcase_add_test(tc, signal_timeout_and_signal_request);
	tcase_add_test(tc, env_cwd_and_tty);
	tcase_add_test(tc, stdin_streamed_through_cat);
	tcase_add_test(tc, output_back_pressure);
	tcase_add_test(tc, several_processes_on_one_connection);
	tcase_add_test(tc, start_errors_are_sentences);
	tcase_add_test(tc, disconnect_kills_the_process_group);
	tcase_add_test(tc, stray_and_oversized_exec_requests);
	tcase_add_test(tc, unanswered_connection_is_replaced);
	tcase_add_test(tc, port_answers_a_request_read_before_its_host_shows);
	suite_add_tcase(s, tc);
	/* Needs fault points: its own case, so that a skip shows (testlib.h). */
	TCase *fc = tcase_create("fault");
	tcase_set_tags(fc, VMF_TEST_OWN_CASE);
	tcase_set_timeout(fc, 120);
	tcase_add_checked_fixture(fc, setup, teardown);
	tcase_add_test(fc, a_dead_agents_sessions_are_killed_by_the_next);
	suite_add_tcase(s, fc);
	return vmf_test_run(s);
}
