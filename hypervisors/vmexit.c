/* Why a VMM ended (see driver.h). */
#include "driver.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cgroup.h"
#include "frame.h"
#include "text.h"
#include "util.h"

/* The kernel's ring buffer is read at most this far (records, bytes). */
#define KMSG_RECORDS_MAX 100000
#define KMSG_BYTES_MAX (4u << 20)
/* How long an error's explanation waits for a VMM on its way out. */
#define EXPLAIN_WAIT_MS 1000

/* Whether the kernel log says the OOM killer killed pid: "Out of memory:
 * Killed process PID (...)", or "Memory cgroup out of memory: ...". */
static bool
kmsg_oom_killed(pid_t pid)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return false;
	char want[48], rec[8192];
	snprintf(want, sizeof(want), "Killed process %d (", (int)pid);
	bool found = false;
	size_t bytes = 0;
	for (unsigned i = 0; i < KMSG_RECORDS_MAX && bytes < KMSG_BYTES_MAX && !found; i++) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);
		if (n < 0 && errno == EPIPE)
			continue;   /* records overwritten while read */
		if (n <= 0)
			break;
		rec[n] = '\0';
		bytes += (size_t)n;
		found = strstr(rec, want) != NULL;
	}
	close(fd);
	return found;
}

/* The last VMF_SERIAL_TAIL_BYTES of the log, escaped (malloc'ed). */
static char *
serial_tail(const char *log)
{
	char raw[VMF_SERIAL_TAIL_BYTES];
	ssize_t n = -1;
	int fd = *log ? open(log, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
	struct stat st;
	if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
		off_t start = st.st_size > (off_t)sizeof(raw) ? st.st_size - (off_t)sizeof(raw) : 0;
		n = pread(fd, raw, sizeof(raw), start);
	}
	if (fd >= 0)
		close(fd);
	size_t cap = 4 * sizeof(raw) + 1;
	char *out = malloc(cap);
	if (out)
		vmf_escape_n(raw, n > 0 ? (size_t)n : 0, out, cap, VMF_ESC_NEWLINE | VMF_ESC_BACKSLASH);
	return out;
}

static char *
dup_or_empty(const char *s)
{
	return strdup(s ? s : "");
}

/* A VmExit whose strings are all its own (free_unpacked frees them). */
static Vmf__Hv__VmExit *
new_exit(void)
{
	Vmf__Hv__VmExit *e = malloc(sizeof(*e));
	if (!e)
		return NULL;
	vmf__hv__vm_exit__init(e);
	e->cause = e->detail = e->oom_source = e->event = e->serial_tail = NULL;
	return e;
}

static Vmf__Hv__VmExit *
finish(Vmf__Hv__VmExit *e, const char *cause, const char *detail, const char *oom_source, const char *event,
       char *tail)
{
	e->cause = dup_or_empty(cause);
	e->detail = dup_or_empty(detail);
	e->oom_source = dup_or_empty(oom_source);
	e->event = dup_or_empty(event);
	e->serial_tail = tail ? tail : strdup("");
	e->at_ns = vmf_realtime_ns();
	if (!e->cause || !e->detail || !e->oom_source || !e->event || !e->serial_tail) {
		vmf__hv__vm_exit__free_unpacked(e, NULL);
		return NULL;
	}
	return e;
}

static const char *
sig_name(int sig, char *buf, size_t n)
{
	const char *abbr = sigabbrev_np(sig);
	snprintf(buf, n, "SIG%s", abbr ? abbr : "?");
	return buf;
}

/* The OOM killer's trace of pid: a memory cgroup's count that grew, or
 * the kernel log; "" when none. */
static void
oom_trace(pid_t pid, char *const *cgroups, const uint64_t *oom_before, size_t n, char *oom, size_t on)
{
	oom[0] = '\0';
	for (size_t i = 0; i < n && !oom[0]; i++) {
		uint64_t now = vmf_cgroup_oom_kills(cgroups[i]);
		if (now > oom_before[i])
			snprintf(oom, on, "memory cgroup %s (oom_kill %llu -> %llu)", cgroups[i],
				 (unsigned long long)oom_before[i], (unsigned long long)now);
	}
	if (!oom[0] && pid > 0 && kmsg_oom_killed(pid))
		snprintf(oom, on, "the kernel log");
}

Vmf__Hv__VmExit *
vmf_vm_exit_read(const struct vmf_hv_ops *ops, struct vmf_vmm *vm, char *const *cgroups, const uint64_t *oom_before,
		 size_t n)
{
	struct vmf_vmm_exit x;
	if (!ops->exit_info || ops->exit_info(vm, &x) < 0)
		return NULL;
	Vmf__Hv__VmExit *e = new_exit();
	if (!e)
		return NULL;
	e->status_known = x.status_known;
	e->exit_code = x.exit_code;
	e->signal = x.signal;
	char oom[VMF_CGROUP_PATH_MAX + 96] = "";
	/* A SIGKILL (or an end whose status nobody saw) the OOM killer may
	 * have sent: a memory cgroup the VMM joined counted a kill since, or
	 * the kernel log names its pid. */
	if (!x.status_known || x.signal == SIGKILL)
		oom_trace(x.pid, cgroups, oom_before, n, oom, sizeof(oom));
	e->oom_killed = oom[0] != '\0';
	char *tail = serial_tail(x.serial_log);
	bool panic_text = tail && strstr(tail, "Kernel panic - not syncing");
	char detail[768], sn[24];
	const char *cause;
	int pid = (int)x.pid;
	const char *who = ops->name;
	if (!strcmp(x.guest_event, "guest-panic") || (!strcmp(x.guest_event, "guest-reset") && panic_text)) {
		cause = "guest-panic";
		snprintf(detail, sizeof(detail), "the guest kernel panicked (%s); %s pid %d ended the VM "
			 "(on_guest_reset = stop)", !strcmp(x.guest_event, "guest-panic") ? "the guest's pvpanic report"
			 : "its serial log shows the panic, then it reset", who, pid);
	} else if (!strcmp(x.guest_event, "guest-reset")) {
		cause = "guest-reset";
		snprintf(detail, sizeof(detail), "the guest reset itself (a reboot, or a triple fault); %s pid %d "
			 "ended the VM (on_guest_reset = stop)", who, pid);
	} else if (!strcmp(x.guest_event, "guest-poweroff")) {
		cause = "guest-poweroff";
		snprintf(detail, sizeof(detail), "the guest powered itself off; %s pid %d exited", who, pid);
	} else if (!strcmp(x.guest_event, "quit")) {
		cause = "quit";
		snprintf(detail, sizeof(detail), "%s pid %d was told to quit through a monitor (not by this daemon)",
			 who, pid);
	} else if (e->oom_killed) {
		cause = "oom-killed";
		snprintf(detail, sizeof(detail), "the kernel's OOM killer killed %s pid %d (SIGKILL; seen in %s)", who,
			 pid, oom);
	} else if (!strcmp(x.guest_event, "host-signal")) {
		cause = "killed";
		snprintf(detail, sizeof(detail), "%s pid %d was terminated by a signal from outside (SIGTERM, SIGINT "
			 "or SIGHUP) and exited%s", who, pid, x.status_known ? "" : "; it is not this daemon's child "
			 "(adopted after a restart), so which one is not known");
	} else if (x.status_known && x.signal) {
		bool crash = x.signal == SIGSEGV || x.signal == SIGABRT || x.signal == SIGBUS || x.signal == SIGILL ||
			     x.signal == SIGFPE || x.signal == SIGSYS;
		cause = crash ? "crashed" : "killed";
		snprintf(detail, sizeof(detail), "%s pid %d %s by signal %d (%s)%s", who, pid,
			 crash ? "crashed: it was ended" : "was killed", x.signal, sig_name(x.signal, sn, sizeof(sn)),
			 x.signal == SIGSYS ? ": a system call its seccomp sandbox forbids" : "");
	} else if (x.status_known && x.exit_code != 0) {
		cause = "crashed";
		snprintf(detail, sizeof(detail), "%s pid %d exited with status %d", who, pid, x.exit_code);
	} else if (x.status_known) {
		cause = "exited";
		snprintf(detail, sizeof(detail), "%s pid %d exited with status 0 without saying why", who, pid);
	} else {
		cause = "unknown";
		snprintf(detail, sizeof(detail), "%s pid %d ended; it is not this daemon's child (adopted after a "
			 "restart), so its exit status is unknown, and it left no event and no OOM kill in the kernel "
			 "log", who, pid);
	}
	return finish(e, cause, detail, oom, x.event, tail);
}

Vmf__Hv__VmExit *
vmf_vm_exit_unseen(const char *vmm, pid_t pid, const char *serial_log, char *const *cgroups,
		   const uint64_t *oom_before, size_t n)
{
	Vmf__Hv__VmExit *e = new_exit();
	if (!e)
		return NULL;
	e->exit_code = -1;
	char oom[VMF_CGROUP_PATH_MAX + 96], detail[512];
	oom_trace(pid, cgroups, oom_before, n, oom, sizeof(oom));
	e->oom_killed = oom[0] != '\0';
	if (e->oom_killed)
		snprintf(detail, sizeof(detail), "the kernel's OOM killer killed %s pid %d while no daemon ran (seen in "
			 "%s)", vmm, (int)pid, oom);
	else
		snprintf(detail, sizeof(detail), "%s pid %d ended while no daemon ran: its exit status and last event "
			 "are unknown, and the kernel log names no OOM kill of it", vmm, (int)pid);
	return finish(e, e->oom_killed ? "oom-killed" : "unknown", detail, oom, "", serial_tail(serial_log));
}

Vmf__Hv__VmExit *
vmf_vm_exit_reset(const struct vmf_hv_ops *ops, struct vmf_vmm *vm, unsigned resets, unsigned panics)
{
	(void)vm;
	Vmf__Hv__VmExit *e = new_exit();
	if (!e)
		return NULL;
	e->exit_code = -1;
	e->resets = resets;
	char log[PATH_MAX] = "";
	struct vmf_vmm_exit x;
	/* The log's path only: exit_info says -EBUSY for a running VMM. */
	if (ops->exit_info && ops->exit_info(vm, &x) == -EBUSY)
		snprintf(log, sizeof(log), "%s", x.serial_log);
	char *tail = serial_tail(log);
	bool panic = panics || (tail && strstr(tail, "Kernel panic - not syncing"));
	char detail[320];
	snprintf(detail, sizeof(detail), "the guest %s and rebooted in place (on_guest_reset = keep; %u reset%s so "
		 "far): its processes and network settings are gone; its share and disks are mounted again",
		 panic ? "kernel panicked" : "reset itself", resets, resets == 1 ? "" : "s");
	return finish(e, panic ? "guest-panic" : "guest-reset", detail, "", panics ? "GUEST_PANICKED, RESET" : "RESET",
		      tail);
}

bool
vmf_vm_exit_explain(const struct vmf_hv_ops *ops, struct vmf_vmm *vm, struct vmf_error *err)
{
	if (!vm || !ops->alive)
		return false;
	/* A channel that broke first (EOF, a reset) is often the VMM on its
	 * way out: it gets a moment to finish. */
	for (int64_t deadline = vmf_now_ms() + EXPLAIN_WAIT_MS; ops->alive(vm) && vmf_now_ms() < deadline;)
		poll(NULL, 0, 20);
	if (ops->alive(vm))
		return false;
	Vmf__Hv__VmExit *e = vmf_vm_exit_read(ops, vm, NULL, NULL, 0);
	if (!e)
		return true;
	vmf_error_append(err, "; %s", e->detail);
	/* The tail's end, on one line: what fits the message. */
	size_t have = strlen(err->msg), room = have + 40 < sizeof(err->msg) ? sizeof(err->msg) - have - 40 : 0;
	const char *t = e->serial_tail;
	size_t tl = strlen(t);
	if (room > 64 && tl && !strstr(err->msg, "serial log:") && !strstr(err->msg, "serial log ends:")) {
		/* Already escaped but for its newlines, which become "\n". */
		char *one = malloc(room + 1);
		if (one) {
			const char *from = tl > room / 2 ? t + tl - room / 2 : t;
			size_t k = 0;
			for (; *from && k + 3 < room; from++) {
				if (*from == '\n')
					one[k++] = '\\', one[k++] = 'n';
				else
					one[k++] = *from;
			}
			one[k] = '\0';
			vmf_error_append(err, "; serial log ends: %s", one);
			free(one);
		}
	}
	vmf__hv__vm_exit__free_unpacked(e, NULL);
	return true;
}

Vmf__Hv__VmExit *
vmf_vm_exit_dup(const Vmf__Hv__VmExit *e)
{
	if (!e)
		return NULL;
	size_t n = vmf__hv__vm_exit__get_packed_size(e);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return NULL;
	vmf__hv__vm_exit__pack(e, buf);
	Vmf__Hv__VmExit *d = vmf__hv__vm_exit__unpack(NULL, n, buf);
	free(buf);
	return d;
}
