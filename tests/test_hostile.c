/* Integration: a hostile guest, real QEMU under TCG, one daemon.
 *
 * The guests run vmf-agent-hostile (tests/hostile_agent.c: the real agent
 * with a test-only hook), put into a copy of the image's initrd the way
 * test_vsock_guest does, so a fresh clone needs nothing but its build.  A
 * file in a VM's share (written from the host) or in the initrd makes the
 * agent flood its port, send junk, a 4 GiB frame header or replies for
 * wrong ids, trickle its reply or never answer, or answer with terminal
 * escapes and invalid UTF-8.  Against each, through the daemon's port and
 * the owner's:
 *   - vmfactory exec ends within --timeout plus its grace, with a sentence
 *     and its memory under 64 MiB (peak RSS, wait4), a first signal ends it
 *     after a bounded grace and a second at once;
 *   - inspect answers within its 10 s budget, the daemon spending little
 *     CPU, while status, another VM's inspect and a hand-out are served;
 *   - a hand-out that resizes (the agent onlines CPUs) and the warm-up of
 *     a clone (a pool whose image floods at NewIdentity, and a miss of it)
 *     fail fast, the pool backing off; a suspend fails and rolls back;
 *   - what a guest calls itself and its files reaches no terminal, log or
 *     protobuf string unescaped.
 * And what a guest builds in its share: a 50,000-level tree (built
 * host-side in the share dir for speed) and a smaller one built by the
 * guest itself are removed at release in bounded time with the daemon
 * alive; a run dir that holds a mount is left alone, kept releasing and
 * retried, by the tick and after a daemon restart.
 * Checks are counted, so one run lists every failure. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "text.h"
#include "util.h"

#define EXEC_RSS_MAX_KIB (64 * 1024)
#define DEEP 50000
#define GUEST_DEEP 2000
/* What a run that must end by itself is given before it is killed. */
#define HARD_CAP_MS 60000

static char img_main[700], img_warm[700], cfg[700];

static void
sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	int st = system(cmd);
	ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "command failed (status %d): %s", st, cmd);
}

static void
write_text(const char *path, const char *text)
{
	struct vmf_error e = {0};
	ck_assert_msg(vmf_write_file_atomic(path, text, strlen(text), 0644, &e) == 0, "%s", e.msg);
}

/* dir: the shared image with the hostile agent as /sbin/vmf-agent (and
 * etc/vmf-hostile when mode is given) in an archive appended to its
 * initrd (the kernel unpacks them in order; later files win). */
static void
make_image(const char *dir, const char *mode)
{
	const char *src = getenv("VMFACTORY_IMAGE_DIR");
	const char *b = getenv("VMFACTORY_BUILDDIR");
	char agent[700], stage[800], f[900];
	snprintf(agent, sizeof agent, "%s/tests/vmf-agent-hostile", b ? b : ".");
	ck_assert_msg(access(agent, X_OK) == 0, "%s is not built", agent);
	snprintf(stage, sizeof stage, "%s/.stage", dir);
	sh("mkdir -p '%s/sbin' '%s/etc' && cp '%s/vmlinuz' '%s/manifest' '%s/' && install -m 0755 '%s' '%s/sbin/vmf-agent' "
	   "&& cp '%s' '%s/vmf-agent'", stage, stage, src, src, dir, agent, stage, agent, dir);
	if (mode) {
		snprintf(f, sizeof f, "%s/etc/vmf-hostile", stage);
		write_text(f, mode);
	}
	sh("cp '%s/initrd.img' '%s/initrd.img' && cd '%s' && find . -mindepth 1 | sort | "
	   "cpio -o -H newc -R 0:0 --quiet | gzip -n >> '%s/initrd.img' && rm -rf '%s'", src, dir, stage, dir, stage);
}

/* The mode file of the VM whose share dir is share (NULL: none). */
static void
set_mode(const char *share, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
set_mode(const char *share, const char *fmt, ...)
{
	char path[800];
	snprintf(path, sizeof path, "%s/.vmf-hostile", share);
	if (!fmt) {
		unlink(path);
		return;
	}
	char text[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	write_text(path, text);
}

/* ---- timed runs of the CLI ---- */

struct run {
	pid_t pid;
	int rc;
	int64_t t0, ms;
	long maxrss_kib;
	bool killed;
	char out[700], err[700];
	char *o, *e;
};

static unsigned runs;

static void
run_start(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
run_start(struct run *r, const char *fmt, ...)
{
	memset(r, 0, sizeof *r);
	char args[4096], cmd[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof args, fmt, ap);
	va_end(ap);
	unsigned n = runs++;
	snprintf(r->out, sizeof r->out, "%s/run%u.out", tmp, n);
	snprintf(r->err, sizeof r->err, "%s/run%u.err", tmp, n);
	/* The common options right after the command: exec's own end at its
	 * "--".  exec: the shell becomes vmfactory, so wait4 sees its own
	 * peak RSS. */
	const char *rest = strchr(args, ' ');
	int cmdlen = rest ? (int)(rest - args) : (int)strlen(args);
	snprintf(cmd, sizeof cmd, "exec %s %.*s %s%s >%s 2>%s </dev/null", exe, cmdlen, args, common_opts,
		 rest ? rest : "", r->out, r->err);
	r->t0 = vmf_now_ms();
	r->pid = vmf_test_fork();
	if (r->pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
}

/* Waits for every run, each stamped when it ends (HARD_CAP_MS at most:
 * then killed and marked so), or until until (vmf_now_ms(); -1 none). */
static void
run_wait_until(struct run **rs, int n, int64_t until)
{
	int left = 0;
	for (int i = 0; i < n; i++)
		left += !rs[i]->o;
	while (left > 0 && (until < 0 || vmf_now_ms() < until)) {
		for (int i = 0; i < n; i++) {
			struct run *r = rs[i];
			if (r->o)
				continue;
			int st = 0;
			struct rusage ru = {0};
			pid_t w = wait4(r->pid, &st, WNOHANG, &ru);
			if (w == 0 && vmf_now_ms() - r->t0 < HARD_CAP_MS)
				continue;
			if (w == 0) {
				/* Gone past any bound: killed and counted as
				 * failed, its RSS read first. */
				r->maxrss_kib = (long)vmf_proc_rss_kib(r->pid);
				kill(r->pid, SIGKILL);
				wait4(r->pid, &st, 0, &ru);
				r->killed = true;
			} else {
				r->maxrss_kib = ru.ru_maxrss;
			}
			r->ms = vmf_now_ms() - r->t0;
			r->rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			vmf_read_file(r->out, &r->o, NULL, 4 << 20, NULL);
			vmf_read_file(r->err, &r->e, NULL, 4 << 20, NULL);
			if (!r->o)
				r->o = strdup("");
			if (!r->e)
				r->e = strdup("");
			left--;
		}
		if (left)
			poll(NULL, 0, 10);
	}
}

static void
run_wait_all(struct run **rs, int n)
{
	run_wait_until(rs, n, -1);
}

static void
run_wait(struct run *r)
{
	run_wait_all(&r, 1);
}

static void
run_free(struct run *r)
{
	free(r->o);
	free(r->e);
	r->o = r->e = NULL;
}

/* ---- what the daemon spends ---- */

static long
proc_cpu_ms(pid_t pid)
{
	char path[64], *buf = NULL;
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	if (vmf_read_file(path, &buf, NULL, 8192, NULL) < 0)
		return -1;
	const char *p = strrchr(buf, ')');
	long ut = 0, st = 0;
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &ut, &st) != 2)
		ut = st = 0;
	free(buf);
	return (ut + st) * 1000 / sysconf(_SC_CLK_TCK);
}

static long
proc_hwm_kib(pid_t pid)
{
	char path[64], *buf = NULL;
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	if (vmf_read_file(path, &buf, NULL, 1 << 16, NULL) < 0)
		return -1;
	const char *p = strstr(buf, "VmHWM:");
	long v = p ? strtol(p + 6, NULL, 10) : -1;
	free(buf);
	return v;
}

/* No byte a terminal acts on (newlines aside), valid UTF-8. */
static bool
terminal_safe(const char *s, size_t n)
{
	if (!vmf_utf8_valid(s, n))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c < 0x20 && c != '\n') || c == 0x7f)
			return false;
	}
	return !memmem(s, n, "\xc2\x9b", 2) && !memmem(s, n, "\xe2\x80\xae", 3);
}

static json_object *
pool_named(json_object *s, const char *name)
{
	json_object *pools = path(s, "pools", NULL);
	for (size_t i = 0; i < json_object_array_length(pools); i++) {
		json_object *p = json_object_array_get_idx(pools, i);
		if (!strcmp(json_object_get_string(path(p, "name", NULL)), name))
			return p;
	}
	return NULL;
}

/* The run dir of a ready VM of pool main, waiting for one (60 s). */
static bool
ready_vm_of_main(char *run_dir, size_t n)
{
	for (int64_t end = vmf_now_ms() + 60000; vmf_now_ms() < end; poll(NULL, 0, 250)) {
		json_object *s = vmf_json("status -o json%s", "");
		json_object *vms = path(s, "vms", NULL);
		bool found = false;
		for (size_t i = 0; i < json_object_array_length(vms) && !found; i++) {
			json_object *v = json_object_array_get_idx(vms, i);
			json_object *pool = NULL;
			json_object_object_get_ex(v, "pool", &pool);
			if (!strcmp(json_object_get_string(path(v, "state", NULL)), "ready") && pool &&
			    !strcmp(json_object_get_string(pool), "main")) {
				snprintf(run_dir, n, "%s", json_object_get_string(path(v, "run_dir", NULL)));
				found = true;
			}
		}
		json_object_put(s);
		if (found)
			return true;
	}
	return false;
}

/* The agent answers again: after an episode it exits and init restarts it;
 * one that trickles into a port may go on into the next connection until
 * it sees its host go (20 s at most, tests/hostile_agent.c). */
static bool
exec_ok(const char *id)
{
	bool ok = false;
	for (int64_t end = vmf_now_ms() + 40000; !ok && vmf_now_ms() < end;) {
		struct run r;
		run_start(&r, "exec --timeout 30 %s -- true", id);
		run_wait(&r);
		ok = r.rc == 0;
		if (!ok) {
			printf("exec in %s: %d: %s\n", id, r.rc, r.e);
			poll(NULL, 0, 1000);
		}
		run_free(&r);
	}
	return ok;
}

static int
count_entries(const char *dir)
{
	char cmd[800];
	snprintf(cmd, sizeof cmd, "find '%s' 2>/dev/null | wc -l", dir);
	FILE *p = popen(cmd, "r");
	int n = -1;
	if (p && fscanf(p, "%d", &n) != 1)
		n = -1;
	if (p)
		pclose(p);
	return n;
}

/* ---- the phases ---- */

static const char *const fast_behaviors[] = { "flood", "junk", "oversized", "wrong_ids" };

static void
guest_strings(struct got *a)
{
	/* The guest names itself and its files as it likes. */
	struct run r;
	run_start(&r, "exec --timeout 30 %s -- sh -c 'hostname \"$(printf \"h\\033]0;owned\\007\\033[2J\\233x\")\" && "
		  "touch \"/mnt/share/$(printf \"f\\033[2J\\377\\342\\200\\256\")\"'", a->id);
	run_wait(&r);
	check(r.rc == 0, "the guest renames itself and makes a file with escapes in its name (%d: %s)", r.rc, r.e);
	run_free(&r);
	for (int pass = 0; pass < 2; pass++) {
		/* Then the agent's own strings (version, ids, NICs) too. */
		if (pass)
			set_mode(a->share, "vmf guest_info strings\n");
		run_start(&r, "inspect %s", a->id);
		run_wait(&r);
		bool ok = r.rc == 0 && terminal_safe(r.o, strlen(r.o)) && terminal_safe(r.e, strlen(r.e)) &&
			  strstr(r.o, "\\x1b]0;owned\\x07");
		check(ok, "inspect shows the guest's %s escaped (%d)", pass ? "agent strings" : "hostname and file names",
		      r.rc);
		if (!ok)
			printf("%s%s", r.o, r.e);
		run_free(&r);
		run_start(&r, "inspect %s -o json", a->id);
		run_wait(&r);
		json_object *j = json_tokener_parse(r.o);
		check(j && terminal_safe(r.o, strlen(r.o)), "inspect -o json is JSON and shows nothing raw");
		json_object_put(j);
		run_free(&r);
	}
	set_mode(a->share, NULL);
	/* Through the library: every string of the reply valid UTF-8. */
	struct vmf_client *c;
	struct vmf_error e = {0};
	Vmf__Control__Reply *rep = NULL;
	bool ok = vmf_client_connect(sock, &c, &e) == 0 && vmf_client_inspect(c, a->id, &rep, 30000, &e) == 0;
	vmf_client_close(c);
	const Vmf__Control__GuestView *g = ok ? rep->inspect->guest : NULL;
	bool valid = g && vmf_utf8_valid(g->hostname, strlen(g->hostname));
	for (size_t i = 0; g && i < g->n_share_entries; i++)
		valid = valid && terminal_safe(g->share_entries[i], strlen(g->share_entries[i]));
	check(valid, "the library's inspect reply has only valid UTF-8, escaped text (%s)", e.msg);
	if (rep)
		vmf__control__reply__free_unpacked(rep, NULL);
	/* A path a tenant names (not UTF-8, with an escape) comes back valid
	 * in the error. */
	Vmf__Control__GetVMRequest req = VMF__CONTROL__GET_VMREQUEST__INIT;
	char bad[700];
	snprintf(bad, sizeof bad, "%s/\xff\x1b[2J/share", tmp);
	req.vcpus = 1, req.memory_mib = 256, req.sandbox_id = "bad-path", req.share_dir = bad, req.sock_dir = bad;
	rep = NULL;
	ok = vmf_client_connect(sock, &c, &e) == 0 && vmf_client_get_vm(c, &req, &rep, 30000, &e) == 0;
	vmf_client_close(c);
	check(!ok && vmf_utf8_valid(e.msg, strlen(e.msg)), "a refused path's error is valid UTF-8: %s", e.msg);
	if (rep)
		vmf__control__reply__free_unpacked(rep, NULL);
}

static void
exec_episodes(struct got *a, struct got *b)
{
	struct run r, r2;
	for (size_t i = 0; i < sizeof fast_behaviors / sizeof fast_behaviors[0]; i++) {
		set_mode(a->share, "agent any %s\n", fast_behaviors[i]);
		run_start(&r, "exec --timeout 10 %s -- true", a->id);
		run_wait(&r);
		printf("exec against a guest that answers with %s: exit %d after %lld ms, peak RSS %ld KiB: %s", fast_behaviors[i],
		       r.rc, (long long)r.ms, r.maxrss_kib, r.e);
		check(!r.killed && r.rc == 125 && r.ms < 13000 && r.maxrss_kib < EXEC_RSS_MAX_KIB && strlen(r.e) > 20,
		      "exec --timeout 10 against %s: exit 125 with a sentence within 13 s, peak RSS under 64 MiB",
		      fast_behaviors[i]);
		run_free(&r);
		set_mode(a->share, NULL);
		check(exec_ok(a->id), "the guest serves exec again after the %s", fast_behaviors[i]);
	}
	/* A trickle (connect answered slowly, then nothing) and a guest that
	 * goes silent when a signal is passed on, side by side on two VMs:
	 * --timeout 2 and its grace; a SIGTERM and its grace; then a second
	 * SIGTERM, which ends exec at once. */
	set_mode(a->share, "agent any slow\n");
	set_mode(b->share, "agent exec_signal silent\n");
	run_start(&r, "exec --timeout 2 %s -- true", a->id);
	run_start(&r2, "exec %s -- sleep 60", b->id);
	run_wait_until((struct run *[]){ &r, &r2 }, 2, vmf_now_ms() + 3000);
	kill(r2.pid, SIGTERM);
	run_wait_all((struct run *[]){ &r, &r2 }, 2);
	printf("exec against a trickling guest, --timeout 2: exit %d after %lld ms: %s", r.rc, (long long)r.ms, r.e);
	printf("exec against a guest silent after a signal, SIGTERM at 3 s: exit %d after %lld ms: %s", r2.rc,
	       (long long)r2.ms, r2.e);
	/* Its connect's first attempt ends after a second; the trickle then
	 * goes on into the next connection, mid-frame: junk, refused. */
	check(!r.killed && r.rc == 125 && r.ms < 8000 && r.maxrss_kib < EXEC_RSS_MAX_KIB && strlen(r.e) > 20,
	      "exec --timeout 2 against a trickle ends within --timeout plus 5 s, with a sentence");
	check(!r2.killed && r2.rc == 125 && r2.ms >= 12500 && r2.ms < 16000 && strstr(r2.e, "signal 15"),
	      "exec against silence ends 10 s after the SIGTERM it passed on");
	run_free(&r);
	run_free(&r2);
	set_mode(a->share, NULL);
	check(exec_ok(a->id), "the trickling guest serves exec again");
	set_mode(a->share, "agent exec_signal silent\n");
	run_start(&r, "exec %s -- sleep 60", a->id);
	run_wait_until((struct run *[]){ &r }, 1, vmf_now_ms() + 2000);
	kill(r.pid, SIGTERM);
	run_wait_until((struct run *[]){ &r }, 1, vmf_now_ms() + 500);
	int64_t t = vmf_now_ms();
	kill(r.pid, SIGTERM);
	run_wait(&r);
	check(!r.killed && r.rc == 143 && vmf_now_ms() - t < 1500 && strstr(r.e, "second signal"),
	      "a second SIGTERM ends exec at once (%d after %lld ms: %s)", r.rc, (long long)(vmf_now_ms() - t), r.e);
	run_free(&r);
	set_mode(a->share, NULL);
	set_mode(b->share, NULL);
	check(exec_ok(a->id) && exec_ok(b->id), "both guests serve exec again");
}

struct served {
	int64_t worst_status_ms;
	int rc_get;
	char got_id[64];
	int64_t get_ms;
};

static void
inspect_episodes(struct got *a, struct got *b, pid_t dpid, struct served *sv)
{
	struct run r, r2;
	for (size_t i = 0; i < sizeof fast_behaviors / sizeof fast_behaviors[0]; i++) {
		set_mode(a->share, "vmf any %s\n", fast_behaviors[i]);
		long cpu0 = proc_cpu_ms(dpid);
		run_start(&r, "inspect %s", a->id);
		run_wait(&r);
		long cpu = proc_cpu_ms(dpid) - cpu0;
		printf("inspect of a guest that answers with %s: exit %d after %lld ms, daemon CPU %ld ms\n",
		       fast_behaviors[i], r.rc, (long long)r.ms, cpu);
		check(r.rc == 0 && r.ms < 10500 && strstr(r.o, "guest view:   unavailable") && cpu < 2000,
		      "inspect of a guest that answers with %s: the host view and the reason within the budget, "
		      "the daemon spending %ld ms of CPU", fast_behaviors[i], cpu);
		run_free(&r);
	}
	/* A trickle and silence on two VMs at once, meanwhile status answers
	 * and a pooled VM is handed out. */
	set_mode(a->share, "vmf any slow\n");
	set_mode(b->share, "vmf any silent\n");
	long cpu0 = proc_cpu_ms(dpid);
	run_start(&r, "inspect %s", a->id);
	run_start(&r2, "inspect %s", b->id);
	run_wait_until((struct run *[]){ &r, &r2 }, 2, vmf_now_ms() + 500);
	int64_t t0 = vmf_now_ms();
	struct got c = {0};
	do_get(&c, "served-c", 1, 256);
	sv->get_ms = vmf_now_ms() - t0;
	sv->rc_get = c.rc;
	snprintf(sv->got_id, sizeof sv->got_id, "%s", c.id);
	if (c.rec)
		json_object_put(c.rec);
	while ((!r.o || !r2.o) && vmf_now_ms() - t0 < 12000) {
		int64_t s0 = vmf_now_ms();
		daemon_answers();
		if (vmf_now_ms() - s0 > sv->worst_status_ms)
			sv->worst_status_ms = vmf_now_ms() - s0;
		run_wait_until((struct run *[]){ &r, &r2 }, 2, vmf_now_ms() + 200);
	}
	run_wait_all((struct run *[]){ &r, &r2 }, 2);
	long cpu = proc_cpu_ms(dpid) - cpu0;
	printf("inspect of a trickling guest: exit %d after %lld ms; of a silent one: %d after %lld ms; daemon CPU "
	       "%ld ms; meanwhile status answered within %lld ms at worst, a hand-out took %lld ms (exit %d)\n", r.rc,
	       (long long)r.ms, r2.rc, (long long)r2.ms, cpu, (long long)sv->worst_status_ms, (long long)sv->get_ms,
	       sv->rc_get);
	check(r.rc == 0 && r.ms < 11500 && strstr(r.o, "unavailable") && r2.rc == 0 && r2.ms < 11500 &&
	      strstr(r2.o, "unavailable"), "inspect of a trickling and of a silent guest answer within the 10 s budget");
	check(sv->worst_status_ms < 3000 && sv->rc_get == 0,
	      "meanwhile the daemon serves others: status within %lld ms, a hand-out (exit %d)",
	      (long long)sv->worst_status_ms, sv->rc_get);
	run_free(&r);
	run_free(&r2);
	set_mode(a->share, NULL);
	set_mode(b->share, NULL);
}

/* A get (args) against a flooding guest fails within bound_ms, saying why. */
static void
handout_fails(const char *what, const char *args, int64_t bound_ms)
{
	struct run r;
	run_start(&r, "%s", args);
	run_wait(&r);
	printf("%s: exit %d after %lld ms: %s", what, r.rc, (long long)r.ms, r.e);
	check(r.rc != 0 && r.ms < bound_ms && strstr(r.e, "answer nothing asked"), "%s fails within %lld s, saying why",
	      what, (long long)(bound_ms / 1000));
	run_free(&r);
}

static void
handout_episodes(void)
{
	/* A pooled VM whose guest floods when asked to online hot-added CPUs. */
	char rd[700], share[800];
	bool ready = ready_vm_of_main(rd, sizeof rd);
	check(ready, "the main pool has a ready VM again");
	if (!ready)
		return;
	snprintf(share, sizeof share, "%s/share", rd);
	set_mode(share, "vmf online_cpu_mem flood\n");
	char args[1000];
	snprintf(args, sizeof args, "get --cpus 2 --memory 256 --sandbox resize-p --share-dir %s/resize-share "
		 "--sock-dir %s/resize-sock --timeout 60", tmp, tmp);
	handout_fails("a hand-out that resizes a flooding guest", args, 15000);
	/* A miss of the pool whose image floods at NewIdentity: the
	 * clone's warm-up on the hand-out path. */
	snprintf(args, sizeof args, "get --pool warm --cpus 1 --memory 192 --sandbox warm-m --share-dir %s/warm-share "
		 "--sock-dir %s/warm-sock --timeout 60", tmp, tmp);
	handout_fails("a miss whose clone floods at warm-up", args, 20000);
}

static void
suspend_episode(struct got *a)
{
	set_mode(a->share, "vmf unmount_share silent\n");
	struct run r;
	run_start(&r, "suspend %s", a->id);
	run_wait(&r);
	printf("suspend of a guest silent at unmount: exit %d after %lld ms: %s%s", r.rc, (long long)r.ms, r.o, r.e);
	check(r.rc != 0 && r.ms < 25000 && !strcmp(vm_listed_state(a->id), "assigned"),
	      "a suspend whose guest never answers fails within 25 s and the VM runs on");
	run_free(&r);
	set_mode(a->share, NULL);
	check(exec_ok(a->id), "the guest serves again after the suspend failed");
}

/* In the share (the host side of it): a tree too deep for the old removal. */
static void
deep_tree(const char *share, const char *name)
{
	char d[800];
	snprintf(d, sizeof d, "%s/%s", share, name);
	ck_assert_int_eq(mkdir(d, 0755), 0);
	int64_t t0 = vmf_now_ms();
	vmf_test_make_chain(d, DEEP, false);
	printf("built a %d-level tree in %s in %lld ms\n", DEEP, share, (long long)(vmf_now_ms() - t0));
}

START_TEST(hostile_guest)
{
	/* A mount namespace of the test's own (the daemon, its QEMUs and the
	 * CLI inherit it): the run dir on a tmpfs, as /run is, and the mounts
	 * below made here vanish with the test whatever happens. */
	ck_assert_msg(unshare(CLONE_NEWNS) == 0 && mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) == 0,
		      "a mount namespace: %s", strerror(errno));
	setup();
	ck_assert_int_eq(mkdir(run, 0711), 0);
	ck_assert_msg(mount("tmpfs", run, "tmpfs", 0, "size=512m,mode=0711") == 0, "tmpfs on %s: %s", run, strerror(errno));
	snprintf(img_main, sizeof img_main, "%s/img-main", tmp);
	snprintf(img_warm, sizeof img_warm, "%s/img-warm", tmp);
	make_image(img_main, NULL);
	make_image(img_warm, "vmf new_identity flood\n");
	snprintf(cfg, sizeof cfg, "%s/hostile.conf", tmp);
	char text[2000];
	snprintf(text, sizeof text,
		 /* Plain share directories (no tmpfs of their own): what a guest
		  * builds there is then the removal's to face, at any depth. */
		 "[daemon]\nshare_max_mib = 0\n"
		 "[guest]\nvcpus = 1\nmemory_mib = 256\nmax_vcpus = 2\nmax_memory_mib = 512\n"
		 "[pool main]\nsize = 1\nimage_dir = %s\n"
		 "[pool warm]\nsize = 1\nvcpus = 1\nmax_vcpus = 1\nmemory_mib = 192\nmax_memory_mib = 192\nimage_dir = %s\n",
		 img_main, img_warm);
	write_text(cfg, text);
	int64_t t0 = vmf_now_ms();
	char *out = NULL;
	int rc = vmf(&out, "init --config %s --timeout 600", cfg);
	ck_assert_msg(rc == 0, "init exited %d: %s", rc, out);
	free(out);
	char rd[700];
	ck_assert_msg(ready_vm_of_main(rd, sizeof rd), "the main pool did not fill");
	printf("daemon with both templates up, main pool ready after %.1f s\n", (vmf_now_ms() - t0) / 1000.0);
	pid_t dpid = daemon_pid();
	long hwm0 = proc_hwm_kib(dpid);

	struct got a = {0}, b = {0};
	do_get(&a, "hostile-a", 1, 256);
	do_get(&b, "bystander-b", 1, 256);
	ck_assert_msg(a.rc == 0 && b.rc == 0, "hand-outs failed: %d %d", a.rc, b.rc);

	guest_strings(&a);
	exec_episodes(&a, &b);
	struct served sv = {0};
	inspect_episodes(&a, &b, dpid, &sv);
	handout_episodes();
	suspend_episode(&a);

	/* The pool whose guests flood at warm-up: failures counted, backing
	 * off, the reason in status; the daemon served all of the above. */
	json_object *s = vmf_json("status -o json%s", "");
	json_object *wp = pool_named(s, "warm");
	int failed = wp ? json_object_get_int(path(wp, "failed", NULL)) : -1;
	const char *le = wp ? json_object_get_string(path(wp, "last_error", NULL)) : "";
	check(failed >= 1 && strstr(le, "answer nothing asked"), "the warm pool's clones fail their warm-up (%d "
	      "failures): %s", failed, le);
	json_object_put(s);
	long hwm = proc_hwm_kib(dpid);
	printf("daemon peak RSS %ld KiB before the hostile guests, %ld KiB after\n", hwm0, hwm);
	check(daemon_pid() == dpid && hwm > 0 && hwm - hwm0 < 32 * 1024,
	      "the same daemon answers, its peak RSS grown by %ld KiB", hwm - hwm0);

	/* ---- trees ---- */
	/* b: 50,000 levels, released in bounded time (the reply once the VM
	 * is stopped; the rest of the removal after it), nothing left. */
	char b_run[700];
	snprintf(b_run, sizeof b_run, "%s", json_object_get_string(path(b.rec, "run_dir", NULL)));
	deep_tree(b.share, "deep");
	/* A command running in b when it is released: its exec ends, 125 and
	 * a sentence, when the agent's connection closes under it. */
	struct run x;
	check(exec_ok(b.id), "the bystander serves exec");
	run_start(&x, "exec %s -- sleep 600", b.id);
	run_wait_until((struct run *[]){ &x }, 1, vmf_now_ms() + 3000);
	struct run r;
	run_start(&r, "release %s", b.id);
	run_wait_all((struct run *[]){ &r, &x }, 2);
	check(!x.killed && x.rc == 125 && x.ms < 15000 && strstr(x.e, "closed before sleep ended"),
	      "an exec whose VM is released ends with 125 and says why (%d after %lld ms: %s)", x.rc, (long long)x.ms,
	      x.e);
	run_free(&x);
	int64_t t1 = vmf_now_ms();
	while ((access(b_run, F_OK) == 0 || vm_listed_state(b.id)[0]) && vmf_now_ms() - t1 < 120000)
		poll(NULL, 0, 100);
	printf("release of a VM with a %d-level tree in its share: exit %d after %lld ms, its run dir gone %lld ms "
	       "later\n", DEEP, r.rc, (long long)r.ms, (long long)(vmf_now_ms() - t1));
	check(r.rc == 0 && r.ms < 15000 && access(b_run, F_OK) != 0 && !vm_listed_state(b.id)[0] && daemon_answers(),
	      "a %d-level tree: released within 15 s, removed within 2 minutes, nothing left (%d entries), the "
	      "daemon alive", DEEP, count_entries(b_run));
	run_free(&r);

	/* a: a tree the guest builds itself, a 50,000-level one beside it, and
	 * a mount in its share: nothing removed while the mount is there, the
	 * VM kept releasing; then the daemon is killed, the mount goes, and
	 * the next daemon removes it all. */
	char a_run[700], m[800];
	snprintf(a_run, sizeof a_run, "%s", json_object_get_string(path(a.rec, "run_dir", NULL)));
	run_start(&r, "exec --timeout 120 %s -- sh -c 'cd /mnt/share && mkdir g && cd g && i=0 && while [ $i -lt %d ]; do "
		  "mkdir d && cd d || exit 1; i=$((i+1)); done'", a.id, GUEST_DEEP);
	run_wait(&r);
	printf("the guest built a %d-level tree in its share in %lld ms (exit %d)\n", GUEST_DEEP, (long long)r.ms, r.rc);
	check(r.rc == 0, "the guest builds its own %d-level tree (%s)", GUEST_DEEP, r.e);
	run_free(&r);
	deep_tree(a.share, "deep");
	snprintf(m, sizeof m, "%s/share/m", a_run);
	ck_assert_int_eq(mkdir(m, 0755), 0);
	ck_assert_msg(mount("tmpfs", m, "tmpfs", 0, "size=1m") == 0, "mount tmpfs on %s: %s", m, strerror(errno));
	run_start(&r, "release %s", a.id);
	run_wait(&r);
	check(r.rc == 0 && !strcmp(vm_listed_state(a.id), "releasing") && access(a_run, F_OK) == 0,
	      "a VM whose run dir holds a mount is stopped but kept releasing (exit %d, %s)", r.rc, vm_listed_state(a.id));
	run_free(&r);
	kill_daemon_hard();
	ck_assert_int_eq(umount(m), 0);
	t0 = vmf_now_ms();
	rc = vmf(&out, "init --config %s --timeout 600", cfg);
	free(out);
	poll_until(access(a_run, F_OK) != 0, 120000);
	printf("after a restart, the leftover run dir (%d + %d levels) gone after %lld ms\n", DEEP, GUEST_DEEP,
	       (long long)(vmf_now_ms() - t0));
	check(rc == 0 && access(a_run, F_OK) != 0 && vm_listed_state(a.id)[0] == '\0' && daemon_answers(),
	      "the next daemon removes it all (%d entries left) and forgets the VM", count_entries(a_run));

	/* The tick retries while the daemon runs: a mount, released, gone,
	 * removed within the first retry (10 s). */
	struct got c = {0};
	do_get(&c, "retry-c", 1, 256);
	ck_assert_int_eq(c.rc, 0);
	char c_run[700];
	snprintf(c_run, sizeof c_run, "%s", json_object_get_string(path(c.rec, "run_dir", NULL)));
	snprintf(m, sizeof m, "%s/share/m", c_run);
	ck_assert_int_eq(mkdir(m, 0755), 0);
	ck_assert_int_eq(mount("tmpfs", m, "tmpfs", 0, "size=1m"), 0);
	ck_assert_int_eq(vmf(NULL, "release %s", c.id), 0);
	bool kept = !strcmp(vm_listed_state(c.id), "releasing");
	ck_assert_int_eq(umount(m), 0);
	t0 = vmf_now_ms();
	poll_until(access(c_run, F_OK) != 0 && !vm_listed_state(c.id)[0], 30000);
	check(kept && access(c_run, F_OK) != 0 && !vm_listed_state(c.id)[0],
	      "a removal that failed is retried: gone %lld ms after the mount went", (long long)(vmf_now_ms() - t0));

	/* Every line the daemons logged, guest text in them too: nothing a
	 * terminal acts on. */
	char logp[700], *log = NULL;
	size_t n = 0;
	snprintf(logp, sizeof logp, "%s/vmfactory.log", state);
	vmf_read_file(logp, &log, &n, 64 << 20, NULL);
	check(log && n > 0 && terminal_safe(log, n) && strstr(log, "answer nothing asked"),
	      "the daemon's log (%zu bytes) has the hostile guests' stories and no raw control byte", n);
	free(log);
	json_object_put(a.rec);
	json_object_put(b.rec);
	json_object_put(c.rec);
	umount2(m, MNT_DETACH);
	vmf(NULL, "destroy --all");
	for (int64_t end = vmf_now_ms() + 20000; vmf_test_count_under("vmfactory", tmp) > 0 && vmf_now_ms() < end;)
		poll(NULL, 0, 50);
	umount2(run, MNT_DETACH);
	cleanup();
	ck_assert_msg(failures == 0, "%d checks failed", failures);
}
END_TEST

int
main(void)
{
	if (geteuid() != 0)
		return vmf_test_skip_all("test_hostile mounts a tmpfs in a VM's run dir: it needs root");
	Suite *s = suite_create("hostile");
	TCase *tc = tcase_create("hostile");
	tcase_set_timeout(tc, 900);
	tcase_add_test(tc, hostile_guest);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
