/* vmf-agent: the guest side of proto/agent.proto.
 *
 * Runs in the guest initramfs on two virtio-serial ports: "agent", the
 * VM owner's (its socket is what a handed-out VM's agent_socket names), and
 * "vmf", the daemon's private one (warm-up, hand-out, inspect), so that
 * neither holds the other out of a QEMU chardev that serves one host
 * connection at a time.  The host side of each comes and goes (template save, clone restore, daemon restart):
 * while it is away the port polls POLLHUP at once, so polling it would spin.
 * Instead the agent blocks on a signalfd for SIGIO, which virtio_console
 * sends to the owner of an O_ASYNC port on every host connect/disconnect
 * (and on incoming data).  No timers, no sleeps: a resumed clone whose host
 * socket is new answers within milliseconds.
 *
 * It also listens on AF_VSOCK port 1024 (VMADDR_CID_ANY) when the guest has
 * vsock: Firecracker and Cloud Hypervisor guests have no virtio-serial port
 * and their host drivers reach the agent through hybrid vsock
 * ("CONNECT 1024").  The vsock listener is served by a child process
 * (start_vsock_server) with the same serve()/struct conn code, up to
 * CONNS_MAX connections at once (the daemon's and the owner's).  After a
 * snapshot restore the VMM resets its vsock connections: the stale ones
 * read EOF or ECONNRESET and are dropped, and one that is never reset is
 * the oldest, closed when a connection beyond the limit arrives.  The child dies with the agent (PR_SET_PDEATHSIG), so
 * init's restart loop restarts both.  The agent serves whichever transports
 * exist: without the virtio port (searched for up to 10 s, as before) it
 * stays alive for vsock alone.  Guest-local vsock peers (CID 1, through
 * vsock_loopback) are refused unless --vsock-allow-local: only the host may
 * drive a root agent.  Tested in a real guest over vsock_loopback
 * (tests/test_vsock_guest.c); the host-to-guest path through a real
 * Firecracker or Cloud Hypervisor has not been run (docs/hypervisors.md).
 *
 * Test mode (--fd N or --stdio) serves an already-open stream on the host so
 * that unit tests run this very code; it never touches the host's clock, RNG,
 * CPUs, mounts, hostname or machine id: SetTime and Handout echo the
 * requested time (as --no-set-time does) and hostname, ReseedRng and
 * NewIdentity only validate and sample (NewIdentity makes up a boot id
 * without mounting it, and writes a machine id only to a
 * --machine-id-file given on the command line), OnlineCpuMem and MountShare
 * are refused with EPERM after validation.  --listen-fd N is the same test mode
 * for the listener code: it serves the connections of an already-listening
 * socket (a unit test's unix socket) exactly as the vsock child does, and
 * --port-fds R W for a port: a test plays its host coming and going (a
 * FIFO reads 0 without a writer, SIGIO when it is back).
 *
 * Exec (ExecStart and friends, docs/protocol.md): processes run under the
 * same poll loop, their pipes (or pty) non-blocking.  Output is read only
 * within the host's credit and while the connection's reply queue is below
 * OUTQ_HIGH, stdin is buffered up to its window: a process writing
 * gigabytes blocks on its pipe, nothing grows.  A connection that ends
 * kills the process groups it started.  An agent that dies itself (a crash,
 * the OOM killer) cannot: each group it starts has a file in the exec
 * ledger (/run/vmf-agent/execs, root's alone), and the agent init starts
 * next kills those groups before it serves.  In test mode exec runs host
 * processes as the test's user, with a ledger only when given one
 * (--exec-ledger). */
#include <ctype.h>
#include <grp.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <limits.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.pb-c.h"
#include "frame.h"
#ifdef VMF_AGENT_HOSTILE
/* A test build only (tests/meson.build): never in the guest image. */
#include "hostile_agent.h"
#endif

/* The sanitizer stage's agent (contrib/agent/meson.build): it never exits
 * in a guest, so LeakSanitizer's check at exit would never come; it checks
 * whenever a host leaves instead, reporting on stderr (the guest's
 * console, which the tests read) and going on. */
#ifdef VMF_AGENT_LEAK_CHECK
#include <sanitizer/lsan_interface.h>
#define leak_check() __lsan_do_recoverable_leak_check()
/* A guest has no symbolizer (addresses and the build id are reported; the
 * build's binary resolves them) and its console no terminal. */
const char *__asan_default_options(void);
const char *
__asan_default_options(void)
{
	return "symbolize=0:color=never";
}
const char *__ubsan_default_options(void);
const char *
__ubsan_default_options(void)
{
	return "symbolize=0:color=never:print_stacktrace=1";
}
#else
#define leak_check() ((void)0)
#endif

#define AGENT_VERSION "vmf-agent 0.5.0"
/* <linux/fs.h>, which clashes with <sys/mount.h>. */
#ifndef FIFREEZE
#define FIFREEZE _IOWR('X', 119, int)
#define FITHAW _IOWR('X', 120, int)
#endif
/* The owner's port (what a VM's agent_socket reaches) and the daemon's
 * private one (its warm-up, hand-out and inspect). */
#define PORT_NAME "agent"
#define DAEMON_PORT_NAME "vmf"
/* How long to wait at boot for virtio_console to announce the port, and
 * then for the daemon's port, announced with it. */
#define PORT_WAIT_MS 10000
#define DAEMON_PORT_WAIT_MS 2000
/* Accepted (vsock) connections served at once. */
#define CONNS_MAX 16
/* Exec bounds: the reply queue of a connection (above OUTQ_HIGH nothing new
 * is read for it), one output frame's data, the stdin a host may have in
 * flight per process, output credit, processes, argv/env entries. */
#define OUTQ_HIGH (256u * 1024u)
#define OUTQ_SIZE (OUTQ_HIGH + VMF_FRAME_HDR + (size_t)VMF_AGENT_MAX_FRAME)
#define OUT_CHUNK (32u * 1024u)
#define STDIN_WINDOW ((size_t)256 * 1024)
#define OUTPUT_WINDOW_DEFAULT (256u * 1024u)
#define OUTPUT_WINDOW_MAX (16u << 20)
#define PROCS_MAX 256u
#define EXEC_ARGS_MAX 4096u
/* Disks one FlushDisks or Poweroff names (the host's VMF_DISK_SLOTS), and
 * how long a Poweroff lets processes end after SIGTERM. */
#define FLUSH_DISKS_MAX 16
#define POWEROFF_GRACE_DEFAULT_MS 2000u
#define POWEROFF_GRACE_MAX_MS 60000u
/* Share listing budget: leaves room in a 64 KiB reply for the other fields. */
#define SHARE_NAMES_MAX 1024
#define SHARE_BYTES_MAX (48u * 1024u)
/* The guest vsock port the Firecracker and Cloud Hypervisor drivers connect
 * to (VMF_AGENT_VSOCK_PORT in hypervisors/vmm_proc.h). */
#define VSOCK_PORT_DEFAULT 1024u
/* How long a new agent retries a vsock port still held by the listener of
 * the agent it replaces (that one dies with its parent, asynchronously). */
#define VSOCK_BIND_RETRY_MS 2000
#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"
/* Where a clone's own boot id lives, bind-mounted over BOOT_ID_PATH. */
#define BOOT_ID_DIR "/run/vmf-agent"
#define BOOT_ID_FILE BOOT_ID_DIR "/boot_id"

static const char *share_dir = "/mnt/share";
static const char *machine_id_file = "/etc/machine-id";
static bool machine_id_given;  /* --machine-id-file: test mode may write it */
static bool test_mode;       /* serving a host-side fd: touch nothing global */
static bool no_set_time;     /* SetTime validates and echoes, never sets */
static bool vsock_allow_local; /* accept guest-local vsock peers (tests) */
static bool no_exec;         /* ExecStart refused (the fuzz target: no host commands) */

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line on stderr, which /init points at the serial console. */
static void
logmsg(const char *fmt, ...)
{
	char buf[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "vmf-agent: %s\n", buf);
}

/* ---- small file helpers ---- */

static int
read_small(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t r = read(fd, buf, n - 1);
	int e = errno;
	close(fd);
	if (r < 0) {
		errno = e;
		return -1;
	}
	buf[r] = '\0';
	while (r > 0 && isspace((unsigned char)buf[r - 1]))
		buf[--r] = '\0';
	return 0;
}

static int
write_small(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t r = write(fd, s, strlen(s));
	int e = errno;
	close(fd);
	errno = e;
	return r == (ssize_t)strlen(s) ? 0 : -1;
}

/* "0-1,3" -> 3 */
static unsigned
count_cpu_list(const char *s)
{
	unsigned n = 0;
	while (*s) {
		char *end;
		unsigned long a = strtoul(s, &end, 10), b = a;
		if (end == s)
			break;
		if (*end == '-')
			b = strtoul(end + 1, &end, 10);
		if (b >= a)
			n += (unsigned)(b - a + 1);
		s = *end == ',' ? end + 1 : end;
	}
	return n;
}

static unsigned
online_cpus(void)
{
	char buf[512];
	return read_small("/sys/devices/system/cpu/online", buf, sizeof(buf)) == 0 ? count_cpu_list(buf) : 0;
}

static uint64_t
mem_total_kib(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	unsigned long long kib = 0;
	char line[128];
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemTotal: %llu kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return kib;
}

static int64_t
clock_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t
now_ms(void)
{
	return clock_ns(CLOCK_MONOTONIC) / 1000000;
}

/* ---- kernel uevents ---- */

/* Hot-added CPUs and memory blocks, and the virtio port's name, arrive
 * asynchronously and are announced by uevents: waiting on them replaces
 * polling sysfs on a timer. */
static int uevent_fd = -1;

static void
open_uevents(void)
{
	uevent_fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
	if (uevent_fd < 0)
		return;
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_groups = 1 };
	if (bind(uevent_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(uevent_fd);
		uevent_fd = -1;
	}
}

static void
drain_uevents(void)
{
	char buf[4096];
	while (uevent_fd >= 0 && recv(uevent_fd, buf, sizeof(buf), 0) > 0)
		;
}

/* Waits for the next uevent until deadline; false when none came. */
static bool
wait_uevent(int64_t deadline)
{
	int64_t left = deadline - now_ms();
	if (uevent_fd < 0 || left <= 0)
		return false;
	struct pollfd p = { .fd = uevent_fd, .events = POLLIN };
	return poll(&p, 1, left > 60000 ? 60000 : (int)left) > 0;
}

/* ---- request handlers ---- */

typedef Vmf__Agent__AgentReply Reply;

/* Reply bodies live until the reply is packed; one request at a time. */
static struct {
	char msg[400];
	Vmf__Agent__Ping pong;
	Vmf__Agent__GuestInfo info;
	Vmf__Agent__OnlineResult online;
	Vmf__Agent__RngSample rng;
	Vmf__Agent__TimeResult time;
	Vmf__Agent__MountResult mount;
	Vmf__Agent__Identity identity;
	Vmf__Agent__HandoutResult handout;
	Vmf__Agent__DiskMounted disk;
	char disk_dev[64];
	char disk_path[PATH_MAX];
	uint8_t random[16];
	char boot_id[64];
	char machine_id[64];
	char hostname[72];
	char *names[SHARE_NAMES_MAX];
	size_t n_names;
	char net_error[300];
	char ifaces[16][200];
	char *iface_ptrs[16];
	Vmf__Agent__DisksFlushed flushed;
	Vmf__Agent__DiskFlushed flush[FLUSH_DISKS_MAX];
	Vmf__Agent__DiskFlushed *flush_ptrs[FLUSH_DISKS_MAX];
	char flush_serial[FLUSH_DISKS_MAX][24];
	char flush_path[FLUSH_DISKS_MAX][512];
	char flush_msg[FLUSH_DISKS_MAX][200];
} out;
static Vmf__Agent__ExecStarted out_started;
static Vmf__Agent__ExecAck out_ack = VMF__AGENT__EXEC_ACK__INIT;

static void fail(Reply *r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
fail(Reply *r, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out.msg, sizeof(out.msg), fmt, ap);
	va_end(ap);
	r->error_code = code > 0 ? code : EIO;
	r->error_message = out.msg;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY__NOT_SET;
}

static void
free_names(void)
{
	for (size_t i = 0; i < out.n_names; i++)
		free(out.names[i]);
	out.n_names = 0;
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names at the root of the share, sorted, bounded so the reply fits a frame.
 * Before MountShare this lists the bare directory (usually nothing). */
static void
list_share(void)
{
	free_names();
	DIR *d = opendir(share_dir);
	if (!d)
		return;
	size_t bytes = 0;
	struct dirent *de;
	while ((de = readdir(d)) && out.n_names < SHARE_NAMES_MAX) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		size_t len = strlen(de->d_name);
		if (bytes + len + 3 > SHARE_BYTES_MAX)
			break;
		char *s = strdup(de->d_name);
		if (!s)
			break;
		out.names[out.n_names++] = s;
		bytes += len + 3;
	}
	closedir(d);
	qsort(out.names, out.n_names, sizeof(out.names[0]), cmp_names);
}

static int
sample_random(Reply *r)
{
	/* getrandom() on a fresh guest may block until the CRNG is ready;
	 * virtio-rng and the host's entropy make that brief. */
	ssize_t n;
	while ((n = getrandom(out.random, sizeof(out.random), 0)) < 0 && errno == EINTR)
		;
	if (n != (ssize_t)sizeof(out.random)) {
		fail(r, n < 0 ? errno : EIO, "getrandom: %s", n < 0 ? strerror(errno) : "short read");
		return -1;
	}
	return 0;
}

static void
read_hostname(void)
{
	if (gethostname(out.hostname, sizeof(out.hostname) - 1) < 0)
		out.hostname[0] = '\0';
	out.hostname[sizeof(out.hostname) - 1] = '\0';
}

/* "" when the image has no machine id (or an empty one). */
static void
read_machine_id(void)
{
	if (read_small(machine_id_file, out.machine_id, sizeof(out.machine_id)) < 0)
		out.machine_id[0] = '\0';
}

/* ---- the guest NIC (issue 16) ---- */

/* Each interface but lo as "NAME MAC up|down ADDR/LEN...", for inspect. */
static size_t
list_interfaces(void)
{
	struct if_nameindex *ni = if_nameindex();
	struct ifaddrs *ifa = NULL;
	size_t n = 0;
	if (!ni)
		return 0;
	if (getifaddrs(&ifa) < 0)
		ifa = NULL;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	for (struct if_nameindex *i = ni; i->if_index && n < 16; i++) {
		if (strcmp(i->if_name, "lo") == 0)
			continue;
		struct ifreq ifr = {0};
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", i->if_name);
		unsigned char mac[6] = {0};
		if (s >= 0 && ioctl(s, SIOCGIFHWADDR, &ifr) == 0)
			memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
		bool up = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP);
		char *o = out.ifaces[n];
		size_t cap = sizeof(out.ifaces[n]);
		int len = snprintf(o, cap, "%s %02x:%02x:%02x:%02x:%02x:%02x %s", i->if_name, mac[0], mac[1],
				   mac[2], mac[3], mac[4], mac[5], up ? "up" : "down");
		for (struct ifaddrs *a = ifa; a && len > 0 && (size_t)len < cap; a = a->ifa_next) {
			if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || strcmp(a->ifa_name, i->if_name))
				continue;
			char addr[INET_ADDRSTRLEN];
			uint32_t m = a->ifa_netmask ? ntohl(((struct sockaddr_in *)a->ifa_netmask)->sin_addr.s_addr) : 0;
			inet_ntop(AF_INET, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, addr, sizeof(addr));
			len += snprintf(o + len, cap - (size_t)len, " %s/%d", addr, __builtin_popcount(m));
		}
		out.iface_ptrs[n] = o;
		n++;
	}
	if (s >= 0)
		close(s);
	if (ifa)
		freeifaddrs(ifa);
	if_freenameindex(ni);
	return n;
}

/* Every NIC up, without addresses, once at boot: the template is saved
 * with it up (its rx ring filled, which costs tens of ms under TCG), so a
 * hand-out only changes its MAC live and adds addresses.  Its hub has no
 * backend until a hand-out plugs one: an up link reaches nothing. */
static void
nics_up(void)
{
	struct if_nameindex *ni = if_nameindex();
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	for (struct if_nameindex *i = ni; ni && s >= 0 && i->if_index; i++) {
		struct ifreq ifr = {0};
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", i->if_name);
		if (strcmp(i->if_name, "lo") == 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0 || (ifr.ifr_flags & IFF_UP))
			continue;
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			logmsg("cannot bring %s up: %s", i->if_name, strerror(errno));
	}
	if (s >= 0)
		close(s);
	if (ni)
		if_freenameindex(ni);
}

/* One rtnetlink request, its ack awaited. */
static int
rtnl_do(int fd, struct nlmsghdr *h)
{
	static uint32_t seq;
	h->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	h->nlmsg_seq = ++seq;
	struct sockaddr_nl kern = { .nl_family = AF_NETLINK };
	if (sendto(fd, h, h->nlmsg_len, 0, (struct sockaddr *)&kern, sizeof(kern)) < 0)
		return -errno;
	char buf[4096];
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0)
			return errno == EINTR ? -EINTR : -errno;
		for (struct nlmsghdr *m = (struct nlmsghdr *)buf; NLMSG_OK(m, (unsigned)n); m = NLMSG_NEXT(m, n))
			if (m->nlmsg_seq == seq && m->nlmsg_type == NLMSG_ERROR)
				return ((struct nlmsgerr *)NLMSG_DATA(m))->error;
	}
}

static void
rta_add(struct nlmsghdr *h, unsigned short type, const void *data, unsigned short len)
{
	struct rtattr *a = (struct rtattr *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
	a->rta_type = type;
	a->rta_len = (unsigned short)RTA_LENGTH(len);
	memcpy(RTA_DATA(a), data, len);
	h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* "a.b.c.d/len" */
static int
parse_prefix(const char *s, struct in_addr *a, unsigned *plen)
{
	char buf[40];
	snprintf(buf, sizeof(buf), "%s", s);
	char *slash = strchr(buf, '/');
	*plen = 32;
	if (slash) {
		*slash = '\0';
		char *end;
		unsigned long l = strtoul(slash + 1, &end, 10);
		if (*end || l > 32)
			return -1;
		*plen = (unsigned)l;
	}
	return inet_pton(AF_INET, buf, a) == 1 ? 0 : -1;
}

/* Set once a hand-out configured the NIC, with the MAC it had before.
 * In the agent's memory, so a template snapshotted from a VM with network
 * has it set in every clone: their hand-outs clear what the source VM's
 * hand-out configured.  A clone of a booted template has it clear, and its
 * hand-out without network costs one test. */
static bool nic_configured;
static unsigned char nic_boot_mac[6];

/* The first NIC besides lo, its name and index (0: none). */
static unsigned
first_nic(char name[IF_NAMESIZE])
{
	struct if_nameindex *ni = if_nameindex();
	unsigned idx = 0;
	for (struct if_nameindex *i = ni; ni && i->if_index; i++)
		if (strcmp(i->if_name, "lo") != 0 && !idx) {
			idx = i->if_index;
			snprintf(name, IF_NAMESIZE, "%s", i->if_name);
		}
	if (ni)
		if_freenameindex(ni);
	return idx;
}

/* Undoes a former hand-out's configuration: its IPv4 addresses go (the
 * kernel drops the routes through the NIC with its last address), its
 * resolv.conf goes, its MAC is the one it had at boot. */
static int
reset_nic(char *why, size_t whylen)
{
	char name[IF_NAMESIZE] = "";
	unsigned idx = first_nic(name);
	if (!idx)
		return 0;
	int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifaddrs *ifa = NULL;
	int rc = -1;
	if (nl < 0 || s < 0 || getifaddrs(&ifa) < 0) {
		snprintf(why, whylen, "%s: cannot read its addresses: %s", name, strerror(errno));
		goto out;
	}
	for (struct ifaddrs *a = ifa; a; a = a->ifa_next) {
		if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || strcmp(a->ifa_name, name))
			continue;
		struct {
			struct nlmsghdr h;
			struct ifaddrmsg m;
			char attrs[64];
		} q = {0};
		uint32_t m = a->ifa_netmask ? ntohl(((struct sockaddr_in *)a->ifa_netmask)->sin_addr.s_addr) : 0;
		q.h.nlmsg_len = NLMSG_LENGTH(sizeof(q.m));
		q.h.nlmsg_type = RTM_DELADDR;
		q.m.ifa_family = AF_INET;
		q.m.ifa_prefixlen = (unsigned char)__builtin_popcount(m);
		q.m.ifa_index = idx;
		rta_add(&q.h, IFA_LOCAL, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, 4);
		int e = rtnl_do(nl, &q.h);
		if (e < 0 && e != -EADDRNOTAVAIL) {
			snprintf(why, whylen, "%s: cannot remove a former hand-out's address: %s", name, strerror(-e));
			goto out;
		}
	}
	unlink("/etc/resolv.conf");
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, nic_boot_mac, 6);
	if (ioctl(s, SIOCSIFHWADDR, &ifr) < 0)
		logmsg("%s: cannot set its MAC back: %s", name, strerror(errno));
	nic_configured = false;
	rc = 0;
out:
	if (ifa)
		freeifaddrs(ifa);
	if (nl >= 0)
		close(nl);
	if (s >= 0)
		close(s);
	return rc;
}

/* The template's NIC takes the hand-out's identity: MAC (while down: no
 * peer saw the old one), addresses, default route, DNS; then up.  netlink
 * and ioctl, no exec: this is on the hand-out's one round trip. */
static int
configure_nic(const Vmf__Agent__Handout *req, char *why, size_t whylen)
{
	if (nic_configured && reset_nic(why, whylen) < 0)
		return -1;
	struct if_nameindex *ni = if_nameindex();
	char name[IF_NAMESIZE] = "";
	unsigned idx = 0;
	for (struct if_nameindex *i = ni; ni && i->if_index; i++)
		if (strcmp(i->if_name, "lo") != 0 && !idx) {
			idx = i->if_index;
			snprintf(name, sizeof(name), "%s", i->if_name);
		}
	if (ni)
		if_freenameindex(ni);
	if (!idx)
		return snprintf(why, whylen, "the guest has no network interface besides lo"), -1;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	int rc = -1;
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (s < 0 || nl < 0) {
		snprintf(why, whylen, "cannot open sockets: %s", strerror(errno));
		goto out;
	}
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
		snprintf(why, whylen, "%s: cannot read its flags: %s", name, strerror(errno));
		goto out;
	}
	short flags = ifr.ifr_flags;
	if (!nic_configured) {
		struct ifreq hw = ifr;
		if (ioctl(s, SIOCGIFHWADDR, &hw) == 0)
			memcpy(nic_boot_mac, hw.ifr_hwaddr.sa_data, 6);
	}
	nic_configured = true;
	/* Live (virtio-net's control queue): the link stays up, as the
	 * template left it; a device that refuses is taken down for it. */
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, req->net_mac.data, 6);
	int mac = ioctl(s, SIOCSIFHWADDR, &ifr);
	if (mac < 0 && errno == EBUSY) {
		struct ifreq down = ifr;
		down.ifr_flags = flags & ~IFF_UP;
		ioctl(s, SIOCSIFFLAGS, &down);
		flags &= ~IFF_UP;
		mac = ioctl(s, SIOCSIFHWADDR, &ifr);
	}
	if (mac < 0) {
		snprintf(why, whylen, "%s: cannot set its MAC: %s", name, strerror(errno));
		goto out;
	}
	if (!(flags & IFF_UP)) {
		ifr.ifr_flags = flags | IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
			snprintf(why, whylen, "%s: cannot bring it up: %s", name, strerror(errno));
			goto out;
		}
	}
	for (size_t i = 0; i < req->n_net_addrs; i++) {
		struct in_addr a;
		unsigned plen;
		if (parse_prefix(req->net_addrs[i], &a, &plen) < 0) {
			snprintf(why, whylen, "address '%s' is not a.b.c.d/len", req->net_addrs[i]);
			goto out;
		}
		struct {
			struct nlmsghdr h;
			struct ifaddrmsg m;
			char attrs[64];
		} q = {0};
		q.h.nlmsg_len = NLMSG_LENGTH(sizeof(q.m));
		q.h.nlmsg_type = RTM_NEWADDR;
		q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
		q.m.ifa_family = AF_INET;
		q.m.ifa_prefixlen = (unsigned char)plen;
		q.m.ifa_index = idx;
		rta_add(&q.h, IFA_LOCAL, &a, 4);
		rta_add(&q.h, IFA_ADDRESS, &a, 4);
		int e = rtnl_do(nl, &q.h);
		if (e < 0) {
			snprintf(why, whylen, "%s: cannot add address %s: %s", name, req->net_addrs[i], strerror(-e));
			goto out;
		}
	}
	if (req->net_gateway && *req->net_gateway) {
		struct in_addr gw;
		if (inet_pton(AF_INET, req->net_gateway, &gw) != 1) {
			snprintf(why, whylen, "gateway '%s' is not an IPv4 address", req->net_gateway);
			goto out;
		}
		struct {
			struct nlmsghdr h;
			struct rtmsg m;
			char attrs[64];
		} q = {0};
		q.h.nlmsg_len = NLMSG_LENGTH(sizeof(q.m));
		q.h.nlmsg_type = RTM_NEWROUTE;
		q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
		q.m.rtm_family = AF_INET;
		q.m.rtm_table = RT_TABLE_MAIN;
		q.m.rtm_protocol = RTPROT_STATIC;
		q.m.rtm_scope = RT_SCOPE_UNIVERSE;
		q.m.rtm_type = RTN_UNICAST;
		uint32_t oif = idx;
		rta_add(&q.h, RTA_GATEWAY, &gw, 4);
		rta_add(&q.h, RTA_OIF, &oif, 4);
		int e = rtnl_do(nl, &q.h);
		if (e < 0) {
			snprintf(why, whylen, "%s: cannot add the default route via %s: %s", name, req->net_gateway,
				 strerror(-e));
			goto out;
		}
	}
	if (req->n_net_dns) {
		/* A busybox initramfs may have no /etc at all. */
		if (mkdir("/etc", 0755) < 0 && errno != EEXIST) {
			snprintf(why, whylen, "cannot create /etc: %s", strerror(errno));
			goto out;
		}
		FILE *f = fopen("/etc/resolv.conf", "we");
		if (!f) {
			snprintf(why, whylen, "cannot write /etc/resolv.conf: %s", strerror(errno));
			goto out;
		}
		for (size_t i = 0; i < req->n_net_dns; i++)
			fprintf(f, "nameserver %s\n", req->net_dns[i]);
		if (fclose(f) != 0) {
			snprintf(why, whylen, "cannot write /etc/resolv.conf: %s", strerror(errno));
			goto out;
		}
	}
	rc = 0;
out:
	if (s >= 0)
		close(s);
	if (nl >= 0)
		close(nl);
	return rc;
}

static void
do_guest_info(Reply *r)
{
	Vmf__Agent__GuestInfo *g = &out.info;
	vmf__agent__guest_info__init(g);
	if (sample_random(r) < 0)
		return;
	g->online_cpus = online_cpus();
	g->mem_total_kib = mem_total_kib();
	g->uptime_ns = (uint64_t)clock_ns(CLOCK_BOOTTIME);
	g->monotonic_ns = (uint64_t)clock_ns(CLOCK_MONOTONIC);
	g->realtime_ns = clock_ns(CLOCK_REALTIME);
	if (read_small("/proc/sys/kernel/random/boot_id", out.boot_id, sizeof(out.boot_id)) < 0)
		out.boot_id[0] = '\0';
	g->boot_id = out.boot_id;
	read_hostname();
	g->hostname = out.hostname;
	read_machine_id();
	g->machine_id = out.machine_id;
	g->random.data = out.random;
	g->random.len = sizeof(out.random);
	list_share();
	g->share_entries = out.names;
	g->n_share_entries = out.n_names;
	g->agent_version = (char *)AGENT_VERSION;
	g->n_interfaces = list_interfaces();
	g->interfaces = out.iface_ptrs;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_GUEST_INFO;
	r->guest_info = g;
}

/* Onlines every offline CPU and memory block once; counts what is online. */
static void
online_pass(uint32_t *cpus_onlined, uint32_t *blocks_onlined, uint64_t *online_mib, uint64_t *block_mib)
{
	char path[300], state[32];
	DIR *d = opendir("/sys/devices/system/cpu");
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, "cpu", 3) || !isdigit((unsigned char)de->d_name[3]))
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/cpu/%s/online", de->d_name);
		if (read_small(path, state, sizeof(state)) == 0 && strcmp(state, "0") == 0) {
			if (write_small(path, "1") == 0)
				(*cpus_onlined)++;
			else
				logmsg("cannot online %s: %s", de->d_name, strerror(errno));
		}
	}
	if (d)
		closedir(d);
	uint64_t block = 128ull << 20;
	if (read_small("/sys/devices/system/memory/block_size_bytes", state, sizeof(state)) == 0)
		block = strtoull(state, NULL, 16);
	*block_mib = block >> 20;
	uint64_t online_blocks = 0;
	d = opendir("/sys/devices/system/memory");
	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, "memory", 6) || !isdigit((unsigned char)de->d_name[6]))
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/memory/%s/state", de->d_name);
		if (read_small(path, state, sizeof(state)) < 0)
			continue;
		if (strcmp(state, "offline") == 0) {
			if (write_small(path, "online") == 0) {
				(*blocks_onlined)++;
				strcpy(state, "online");
			} else {
				logmsg("cannot online %s: %s", de->d_name, strerror(errno));
			}
		}
		if (strcmp(state, "online") == 0)
			online_blocks++;
	}
	if (d)
		closedir(d);
	*online_mib = online_blocks * *block_mib;
}

static void
do_online(Reply *r, const Vmf__Agent__OnlineCpuMem *req)
{
	if (test_mode) {
		fail(r, EPERM, "test mode does not change CPUs or memory");
		return;
	}
	Vmf__Agent__OnlineResult *o = &out.online;
	vmf__agent__online_result__init(o);
	uint32_t cpus_on = 0, blocks_on = 0;
	uint64_t mib = 0, block_mib = 128;
	int64_t deadline = now_ms() + (req->timeout_ms > 60000 ? 60000 : req->timeout_ms);
	for (;;) {
		/* Drain first: an event that lands during the pass wakes the
		 * next wait instead of being lost. */
		drain_uevents();
		online_pass(&cpus_on, &blocks_on, &mib, &block_mib);
		/* Boot memory rarely fills its last block: within one block
		 * of what the host asked for is enough. */
		bool done = online_cpus() >= req->want_cpus && mib + block_mib > req->want_mem_mib;
		if (done || !wait_uevent(deadline))
			break;
	}
	o->online_cpus = online_cpus();
	o->mem_total_kib = mem_total_kib();
	o->cpus_onlined = cpus_on;
	o->mem_blocks_onlined = blocks_on;
	o->online_mem_mib = mib;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_ONLINE;
	r->online = o;
}

static int reseed(Reply *r, const uint8_t *entropy, size_t n);
static int set_clock(Reply *r, int64_t ns, int64_t *now);

static void
do_reseed(Reply *r, const Vmf__Agent__ReseedRng *req)
{
	if (reseed(r, req->entropy.data, req->entropy.len) < 0 || sample_random(r) < 0)
		return;
	vmf__agent__rng_sample__init(&out.rng);
	out.rng.random.data = out.random;
	out.rng.random.len = sizeof(out.random);
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_RNG;
	r->rng = &out.rng;
}

static void
do_set_time(Reply *r, const Vmf__Agent__SetTime *req)
{
	vmf__agent__time_result__init(&out.time);
	if (set_clock(r, req->realtime_ns, &out.time.realtime_ns) < 0)
		return;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_TIME;
	r->time = &out.time;
}

/* Mixes n host bytes into the input pool and reseeds the CRNG from it at
 * once, not at its next scheduled reseed: clones must diverge before
 * anything reads.  Test mode validates only. */
static int
reseed(Reply *r, const uint8_t *entropy, size_t n)
{
	if (n < 16 || n > 512) {
		fail(r, EINVAL, "reseed needs 16 to 512 bytes of entropy, got %zu", n);
		return -1;
	}
	if (test_mode)
		return 0;
	struct {
		int entropy_count;
		int buf_size;
		uint8_t buf[512];
	} pool;
	pool.entropy_count = (int)(n * 8);
	pool.buf_size = (int)n;
	memcpy(pool.buf, entropy, n);
	int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		fail(r, errno, "cannot open /dev/urandom: %s", strerror(errno));
		return -1;
	}
	int rc = ioctl(fd, RNDADDENTROPY, &pool);
	const char *what = "RNDADDENTROPY";
	if (rc == 0) {
		rc = ioctl(fd, RNDRESEEDCRNG);
		what = "RNDRESEEDCRNG";
	}
	int e = errno;
	close(fd);
	explicit_bzero(pool.buf, sizeof(pool.buf));
	if (rc < 0) {
		fail(r, e, "reseeding the guest RNG (%s): %s", what, strerror(e));
		return -1;
	}
	return 0;
}

/* 16 bytes as a version 4 UUID's bits (what systemd does to machine ids). */
static void
make_v4(uint8_t b[16])
{
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
}

static int
write_file_atomic(const char *path, const char *s)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s.vmf-agent.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
	if (fd < 0)
		return -1;
	ssize_t w = write(fd, s, strlen(s));
	int e = errno;
	if (close(fd) < 0 && w == (ssize_t)strlen(s))
		e = errno, w = -1;
	if (w != (ssize_t)strlen(s) || rename(tmp, path) < 0) {
		e = w != (ssize_t)strlen(s) ? e : errno;
		unlink(tmp);
		errno = e;
		return -1;
	}
	return 0;
}

/* A fresh boot id, bind-mounted over the kernel's.  The kernel makes its
 * own on the first read and keeps it: in an image where anything read it
 * before the template was saved (systemd does at boot), every clone would
 * read the same one.  Drawn after the reseed, so clones differ. */
static int
new_boot_id(Reply *r)
{
	uint8_t b[16];
	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
		fail(r, errno, "getrandom for a boot id: %s", strerror(errno));
		return -1;
	}
	make_v4(b);
	snprintf(out.boot_id, sizeof(out.boot_id),
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
		 b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
	if (test_mode)
		return 0;
	char line[48];
	snprintf(line, sizeof(line), "%s\n", out.boot_id);
	/* The default image's initramfs has no /run. */
	if ((mkdir("/run", 0755) < 0 && errno != EEXIST) || (mkdir(BOOT_ID_DIR, 0755) < 0 && errno != EEXIST) ||
	    write_file_atomic(BOOT_ID_FILE, line) < 0) {
		fail(r, errno, "cannot write %s: %s", BOOT_ID_FILE, strerror(errno));
		return -1;
	}
	/* A second identity replaces the first rather than stacking on it. */
	umount2(BOOT_ID_PATH, MNT_DETACH);
	if (mount(BOOT_ID_FILE, BOOT_ID_PATH, NULL, MS_BIND, NULL) < 0) {
		fail(r, errno, "cannot bind-mount %s over %s: %s", BOOT_ID_FILE, BOOT_ID_PATH, strerror(errno));
		return -1;
	}
	char now[64];
	if (read_small(BOOT_ID_PATH, now, sizeof(now)) < 0 || strcmp(now, out.boot_id) != 0) {
		fail(r, EIO, "%s reads '%s' after mounting the clone's boot id '%s'", BOOT_ID_PATH, now, out.boot_id);
		return -1;
	}
	return 0;
}

/* Rewrites the machine id where the image has one: a systemd-less image
 * (the default busybox one) has none and nothing that would read it. */
static int
new_machine_id(Reply *r, const uint8_t *bytes, size_t n)
{
	out.machine_id[0] = '\0';
	if (n == 0 || (test_mode && !machine_id_given) || access(machine_id_file, F_OK) < 0)
		return 0;
	if (n != 16) {
		fail(r, EINVAL, "a machine id needs 16 bytes, got %zu", n);
		return -1;
	}
	uint8_t b[16];
	memcpy(b, bytes, 16);
	make_v4(b);
	char line[40];
	for (int i = 0; i < 16; i++)
		snprintf(line + 2 * i, 3, "%02x", b[i]);
	snprintf(line + 32, sizeof(line) - 32, "\n");
	if (write_file_atomic(machine_id_file, line) < 0) {
		fail(r, errno, "cannot write %s: %s", machine_id_file, strerror(errno));
		return -1;
	}
	read_machine_id();
	return 0;
}

static void
do_new_identity(Reply *r, const Vmf__Agent__NewIdentity *req)
{
	if (req->machine_id.len != 0 && req->machine_id.len != 16) {
		fail(r, EINVAL, "a machine id needs 16 bytes, got %zu", req->machine_id.len);
		return;
	}
	/* The reseed first: the boot id and the sample are drawn from the
	 * clone's own CRNG state. */
	if (reseed(r, req->entropy.data, req->entropy.len) < 0 || new_boot_id(r) < 0 ||
	    new_machine_id(r, req->machine_id.data, req->machine_id.len) < 0 || sample_random(r) < 0)
		return;
	Vmf__Agent__Identity *id = &out.identity;
	vmf__agent__identity__init(id);
	id->random.data = out.random;
	id->random.len = sizeof(out.random);
	id->boot_id = out.boot_id;
	id->machine_id = out.machine_id;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_IDENTITY;
	r->identity = id;
}

/* Sets the clock (--no-set-time and test mode: only validates); *now is
 * the guest's realtime afterwards. */
static int
set_clock(Reply *r, int64_t ns, int64_t *now)
{
	if (ns <= 0) {
		fail(r, EINVAL, "cannot set the guest clock to %lld ns: time must be positive", (long long)ns);
		return -1;
	}
	if (no_set_time) {
		*now = ns;
		return 0;
	}
	struct timespec ts = { .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };
	if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
		fail(r, errno, "cannot set the guest clock: %s", strerror(errno));
		return -1;
	}
	*now = clock_ns(CLOCK_REALTIME);
	return 0;
}

static void
do_handout(Reply *r, const Vmf__Agent__Handout *req)
{
	const char *name = req->hostname ? req->hostname : "";
	size_t n = strlen(name);
	/* A sandbox id's character set (the daemon checks it too). */
	if (n > 64 || (n > 0 && !isalnum((unsigned char)name[0]))) {
		fail(r, EINVAL, "hostname must be 1 to 64 characters starting with a letter or digit");
		return;
	}
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)name[i]) && !strchr("_-.", name[i])) {
			fail(r, EINVAL, "hostname '%s' has a character other than letters, digits, '_', '-' and '.'",
			     name);
			return;
		}
	Vmf__Agent__HandoutResult *h = &out.handout;
	vmf__agent__handout_result__init(h);
	/* The clock first: it is what the host timed. */
	if (set_clock(r, req->realtime_ns, &h->realtime_ns) < 0)
		return;
	if (n > 0 && !test_mode && sethostname(name, n) < 0) {
		fail(r, errno, "cannot set the hostname to '%s': %s", name, strerror(errno));
		return;
	}
	if (test_mode && n > 0)
		snprintf(out.hostname, sizeof(out.hostname), "%s", name);
	else
		read_hostname();
	if (test_mode || read_small(BOOT_ID_PATH, out.boot_id, sizeof(out.boot_id)) < 0)
		out.boot_id[0] = '\0';
	h->hostname = out.hostname;
	h->boot_id = out.boot_id;
	/* Reported, not failed: the clock and hostname are set, and the host
	 * decides what a NIC that is not configured means. */
	out.net_error[0] = '\0';
	if (req->net_mac.len == 6 && !test_mode)
		configure_nic(req, out.net_error, sizeof(out.net_error));
	else if (req->net_mac.len && req->net_mac.len != 6)
		snprintf(out.net_error, sizeof(out.net_error), "net_mac has %zu bytes, not 6", req->net_mac.len);
	else if (nic_configured && !test_mode)
		reset_nic(out.net_error, sizeof(out.net_error));
	h->net_error = out.net_error;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_HANDOUT;
	r->handout = h;
}

/* The 9p source (tag) mounted at dir, from /proc/self/mounts; "" when dir is
 * not a 9p mount point.  statfs() cannot tell: 9p reports the host file
 * system's magic. */
static int
mounted_9p_tag(const char *dir, char *tag, size_t n)
{
	FILE *f = fopen("/proc/self/mounts", "re");
	if (!f)
		return -1;
	char line[1024], src[256], mnt[512], type[64];
	tag[0] = '\0';
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%255s %511s %63s", src, mnt, type) == 3 && !strcmp(mnt, dir))
			snprintf(tag, n, "%s", strcmp(type, "9p") == 0 ? src : "");
	fclose(f);
	return 0;
}

static void
do_mount(Reply *r, const Vmf__Agent__MountShare *req)
{
	const char *tag = req->tag ? req->tag : "";
	size_t n = strlen(tag);
	/* QEMU caps mount tags at 31 bytes; the character set keeps the tag
	 * from smuggling mount options or path components. */
	if (n == 0 || n > 31) {
		fail(r, EINVAL, "share tag must have 1 to 31 characters, got %zu", n);
		return;
	}
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)tag[i]) && !strchr("_-.", tag[i])) {
			fail(r, EINVAL, "share tag '%s' has a character other than letters, digits, '_', '-' and '.'",
			     tag);
			return;
		}
	if (test_mode) {
		fail(r, EPERM, "test mode does not mount");
		return;
	}
	char cur[256];
	if (mounted_9p_tag(share_dir, cur, sizeof(cur)) < 0) {
		fail(r, errno, "cannot read /proc/self/mounts: %s", strerror(errno));
		return;
	}
	if (cur[0] && strcmp(cur, tag) != 0) {
		fail(r, EBUSY, "%s already has share '%s' mounted, not '%s'", share_dir, cur, tag);
		return;
	}
	if (!cur[0]) {
		if (mkdir(share_dir, 0755) < 0 && errno != EEXIST) {
			fail(r, errno, "cannot create %s: %s", share_dir, strerror(errno));
			return;
		}
		if (mount(tag, share_dir, "9p", MS_NODEV | MS_NOSUID,
			  "trans=virtio,version=9p2000.L,msize=262144") < 0) {
			int e = errno;
			/* ENOENT here means no 9p device carries this tag. */
			fail(r, e, "cannot mount share '%s' at %s: %s%s", tag, share_dir, strerror(e),
			     e == ENOENT ? " (no virtio-9p device with this mount tag)" : "");
			return;
		}
	}
	vmf__agent__mount_result__init(&out.mount);
	out.mount.path = (char *)share_dir;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_MOUNT;
	r->mount = &out.mount;
}

/* ---- block devices the host attached ---- */

#define DISK_SERIAL_MAX 20

/* The serial of /sys/block/NAME: virtio-blk's "serial" attribute, or the
 * unit serial number of a SCSI disk (VPD page 0x80: a 4-byte header, then
 * the serial). */
static bool
disk_has_serial(const char *name, const char *serial)
{
	char p[PATH_MAX], buf[256];
	snprintf(p, sizeof(p), "/sys/block/%s/serial", name);
	if (read_small(p, buf, sizeof(buf)) == 0 && strcmp(buf, serial) == 0)
		return true;
	snprintf(p, sizeof(p), "/sys/block/%s/device/vpd_pg80", name);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	unsigned char v[128];
	ssize_t n = read(fd, v, sizeof(v));
	close(fd);
	if (n < 4)
		return false;
	size_t len = ((size_t)v[2] << 8 | v[3]);
	if (len > (size_t)n - 4)
		len = (size_t)n - 4;
	/* QEMU pads nothing, other targets pad with spaces. */
	while (len > 0 && (v[4 + len - 1] == ' ' || v[4 + len - 1] == '\0'))
		len--;
	return len == strlen(serial) && memcmp(v + 4, serial, len) == 0;
}

/* /sys/block's entry with this serial into name; false when none. */
static bool
find_disk(const char *serial, char *name, size_t n)
{
	DIR *d = opendir("/sys/block");
	if (!d)
		return false;
	struct dirent *de;
	bool found = false;
	while (!found && (de = readdir(d)))
		if (de->d_name[0] != '.' && disk_has_serial(de->d_name, serial)) {
			snprintf(name, n, "%s", de->d_name);
			found = true;
		}
	closedir(d);
	return found;
}

static bool
valid_serial(Reply *r, const char *serial)
{
	size_t n = strlen(serial);
	if (n == 0 || n > DISK_SERIAL_MAX) {
		fail(r, EINVAL, "disk serial must have 1 to %d characters, got %zu", DISK_SERIAL_MAX, n);
		return false;
	}
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)serial[i]) && serial[i] != '-' && serial[i] != '_') {
			fail(r, EINVAL, "disk serial '%s' has a character other than letters, digits, '-' and '_'", serial);
			return false;
		}
	return true;
}

/* An absolute path with no "." or ".." component, of which every existing
 * component is a directory (made 0755 where missing). */
static int
make_mount_point(Reply *r, const char *path)
{
	if (path[0] != '/' || strlen(path) >= PATH_MAX) {
		fail(r, EINVAL, "guest mount point '%s' is not an absolute path", path);
		return -1;
	}
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s", path);
	for (char *c = p + 1;; c++) {
		if (*c != '/' && *c != '\0')
			continue;
		char save = *c;
		*c = '\0';
		const char *last = strrchr(p, '/') + 1;
		if (!strcmp(last, ".") || !strcmp(last, "..")) {
			fail(r, EINVAL, "guest mount point '%s' has a '.' or '..' component", path);
			return -1;
		}
		if (*last && mkdir(p, 0755) < 0 && errno != EEXIST) {
			fail(r, errno, "cannot create %s: %s", p, strerror(errno));
			return -1;
		}
		*c = save;
		if (save == '\0')
			break;
	}
	return 0;
}

static void
do_mount_disk(Reply *r, const Vmf__Agent__MountDisk *req)
{
	const char *serial = req->serial ? req->serial : "";
	const char *path = req->path ? req->path : "";
	const char *fstype = req->fstype && *req->fstype ? req->fstype : "ext4";
	if (!valid_serial(r, serial))
		return;
	for (const char *c = fstype; *c; c++)
		if (!isalnum((unsigned char)*c) && *c != '_') {
			fail(r, EINVAL, "file system type '%s' is not a file system type name", fstype);
			return;
		}
	if (test_mode) {
		fail(r, EPERM, "test mode does not mount");
		return;
	}
	/* The host adds the device just before asking: its uevent may not
	 * have come yet (SCSI hot-plug scans on the controller's event). */
	int64_t deadline = now_ms() + (req->timeout_ms ? req->timeout_ms : 10000);
	char name[64];
	drain_uevents();
	while (!find_disk(serial, name, sizeof(name))) {
		if (now_ms() >= deadline) {
			fail(r, ETIMEDOUT, "no block device with serial '%s' appeared within %u ms", serial,
			     req->timeout_ms ? req->timeout_ms : 10000);
			return;
		}
		if (uevent_fd < 0 || !wait_uevent(deadline))
			usleep(20000);
		drain_uevents();
	}
	snprintf(out.disk_dev, sizeof(out.disk_dev), "/dev/%s", name);
	/* The sysfs entry comes before the disk is usable: devtmpfs makes
	 * the node a moment later, and sd opens it only once probed (ENXIO
	 * until then). */
	for (;;) {
		int fd = open(out.disk_dev, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
		if (fd >= 0) {
			close(fd);
			break;
		}
		if (now_ms() >= deadline) {
			fail(r, errno, "block device %s (serial %s) cannot be opened: %s", out.disk_dev, serial,
			     strerror(errno));
			return;
		}
		usleep(5000);
	}
	out.disk_path[0] = '\0';
	if (*path) {
		/* Firecracker gives a disk by swapping the file behind a
		 * zero-size placeholder drive: the guest sees the new size only
		 * once it has handled the config-change interrupt.  A mount
		 * before that fails, so wait for a size (a disk that stays
		 * empty could not be mounted anyway). */
		char sz[32], sp[96];
		snprintf(sp, sizeof(sp), "/sys/block/%s/size", name);
		while (read_small(sp, sz, sizeof(sz)) < 0 || strtoull(sz, NULL, 10) == 0) {
			if (now_ms() >= deadline) {
				fail(r, ENOSPC, "block device %s (serial %s) has size 0: nothing to mount at %s",
				     out.disk_dev, serial, path);
				return;
			}
			usleep(5000);
		}
		if (make_mount_point(r, path) < 0)
			return;
		unsigned long flags = MS_NODEV | MS_NOSUID | (req->read_only ? MS_RDONLY : 0);
		int rc;
		while ((rc = mount(out.disk_dev, path, fstype, flags, NULL)) < 0 && errno == ENXIO && now_ms() < deadline)
			usleep(5000);
		if (rc < 0) {
			int e = errno;
			fail(r, e, "cannot mount %s (serial %s) as %s at %s: %s", out.disk_dev, serial, fstype, path,
			     strerror(e));
			return;
		}
		snprintf(out.disk_path, sizeof(out.disk_path), "%s", path);
	}
	vmf__agent__disk_mounted__init(&out.disk);
	out.disk.device = out.disk_dev;
	out.disk.path = out.disk_path;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_DISK_MOUNTED;
	r->disk_mounted = &out.disk;
}

static void
do_unmount_disk(Reply *r, const Vmf__Agent__UnmountDisk *req)
{
	const char *serial = req->serial ? req->serial : "";
	const char *path = req->path ? req->path : "";
	if (!valid_serial(r, serial))
		return;
	if (test_mode) {
		fail(r, EPERM, "test mode does not unmount");
		return;
	}
	char name[64] = "";
	bool present = find_disk(serial, name, sizeof(name));
	out.disk_dev[0] = out.disk_path[0] = '\0';
	if (present)
		snprintf(out.disk_dev, sizeof(out.disk_dev), "/dev/%s", name);
	if (*path) {
		/* Only if the disk is what is mounted there: never another
		 * file system the guest put at the same path. */
		struct stat mst, dst;
		if (present && stat(path, &mst) == 0 && stat(out.disk_dev, &dst) == 0 && mst.st_dev == dst.st_rdev) {
			sync();
			if (umount2(path, 0) < 0) {
				int e = errno;
				fail(r, e, "cannot unmount %s from %s: %s%s", out.disk_dev, path, strerror(e),
				     e == EBUSY ? " (a process in the guest uses it)" : "");
				return;
			}
			snprintf(out.disk_path, sizeof(out.disk_path), "%s", path);
		}
	}
	if (present) {
		char p[PATH_MAX];
		int fd = open(out.disk_dev, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			fsync(fd);
			close(fd);
		}
		/* A SCSI disk leaves before the host unplugs it: no I/O
		 * errors from a device that vanished under the kernel. */
		snprintf(p, sizeof(p), "/sys/block/%s/device/delete", name);
		if (access(p, W_OK) == 0)
			write_small(p, "1");
	}
	vmf__agent__disk_mounted__init(&out.disk);
	out.disk.device = out.disk_dev;
	out.disk.path = out.disk_path;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_DISK_UNMOUNTED;
	r->disk_unmounted = &out.disk;
}

/* Suspend asks this first: QEMU refuses to migrate while the 9p share is
 * mounted.  A plain umount, never a lazy one: a lazily detached share stays
 * attached (and migration blocked) as long as a file in it is open. */
static void
do_unmount(Reply *r)
{
	char cur[256];
	if (mounted_9p_tag(share_dir, cur, sizeof(cur)) < 0) {
		fail(r, errno, "cannot read /proc/self/mounts: %s", strerror(errno));
		return;
	}
	if (cur[0] && umount(share_dir) < 0) {
		int e = errno;
		fail(r, e, "cannot unmount the share at %s: %s%s", share_dir, strerror(e),
		     e == EBUSY ? " (a process has a file or its working directory in it)" : "");
		return;
	}
	vmf__agent__mount_result__init(&out.mount);
	out.mount.path = (char *)share_dir;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_MOUNT;
	r->mount = &out.mount;
}

/* ---- stopping without losing a write: FlushDisks, Poweroff ---- */

struct conn;

/* A Poweroff answered: the kernel powers off once its reply is written
 * (or a second passed), from serve(). */
static bool poweroff_pending;
static int64_t poweroff_deadline;
static const void *poweroff_conn;

static int
freeze_fs(const char *path, unsigned long op)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int arg = 0, r = ioctl(fd, op, &arg) < 0 ? -errno : 0;
	close(fd);
	return r;
}

/* One disk: its file system at d->path (only when the disk is what is
 * mounted there, never another file system the guest put at that path)
 * unmounted, frozen or thawed as mode says, then its device flushed. */
static void
flush_one(const Vmf__Agent__FlushDisk *d, Vmf__Agent__FlushMode mode, unsigned i)
{
	Vmf__Agent__DiskFlushed *o = &out.flush[i];
	vmf__agent__disk_flushed__init(o);
	snprintf(out.flush_serial[i], sizeof(out.flush_serial[i]), "%s", d->serial ? d->serial : "");
	snprintf(out.flush_path[i], sizeof(out.flush_path[i]), "%s", d->path ? d->path : "");
	o->serial = out.flush_serial[i];
	o->path = out.flush_path[i];
	o->error_message = out.flush_msg[i];
	out.flush_msg[i][0] = '\0';
	char *msg = out.flush_msg[i];
	size_t msgn = sizeof(out.flush_msg[i]);
	const char *serial = d->serial ? d->serial : "", *path = d->path ? d->path : "";
	size_t sl = strlen(serial);
	bool ok = sl > 0 && sl <= DISK_SERIAL_MAX;
	for (size_t k = 0; ok && k < sl; k++)
		ok = isalnum((unsigned char)serial[k]) || serial[k] == '-' || serial[k] == '_';
	if (!ok || (*path && path[0] != '/')) {
		o->error_code = EINVAL;
		snprintf(msg, msgn, "a disk serial of 1 to %d letters, digits, '-' or '_' and an absolute path "
			 "are needed", DISK_SERIAL_MAX);
		return;
	}
	char name[64], dev[80];
	if (!find_disk(serial, name, sizeof(name))) {
		o->how = "absent";
		return;
	}
	snprintf(dev, sizeof(dev), "/dev/%s", name);
	struct stat mst, dst;
	bool mounted = *path && stat(path, &mst) == 0 && stat(dev, &dst) == 0 && S_ISBLK(dst.st_mode) &&
		       mst.st_dev == dst.st_rdev;
	int r = 0;
	const char *how = mode == VMF__AGENT__FLUSH_MODE__FLUSH_THAW ? "thawed" : "synced";
	if (mounted && mode == VMF__AGENT__FLUSH_MODE__FLUSH_UNMOUNT) {
		int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0) {
			syncfs(fd);
			close(fd);
		}
		how = "unmounted";
		if (umount2(path, 0) < 0) {
			r = -errno;
			/* Held by a guest process: frozen, it is as clean on its
			 * device as unmounted (EBUSY: frozen already). */
			if (r == -EBUSY) {
				r = freeze_fs(path, FIFREEZE);
				how = "frozen";
				if (r == -EBUSY)
					r = 0;
			}
		}
	} else if (mounted && mode == VMF__AGENT__FLUSH_MODE__FLUSH_FREEZE) {
		how = "frozen";
		r = freeze_fs(path, FIFREEZE);
		if (r == -EBUSY)
			r = 0;
	} else if (mounted && mode == VMF__AGENT__FLUSH_MODE__FLUSH_THAW) {
		r = freeze_fs(path, FITHAW);
		if (r == -EINVAL)   /* not frozen */
			r = 0;
	}
	if (r < 0) {
		o->error_code = -r;
		snprintf(msg, msgn, "%s %s at %s: %s", mode == VMF__AGENT__FLUSH_MODE__FLUSH_THAW ? "cannot thaw"
			 : "cannot write back", dev, path, strerror(-r));
		return;
	}
	if (mode != VMF__AGENT__FLUSH_MODE__FLUSH_THAW) {
		int fd = open(dev, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fsync(fd) < 0) {
			o->error_code = errno;
			snprintf(msg, msgn, "cannot flush %s: %s", dev, strerror(errno));
			if (fd >= 0)
				close(fd);
			return;
		}
		close(fd);
	}
	o->how = (char *)how;
}

static bool
flush_disks(Reply *r, Vmf__Agent__FlushDisk **disks, size_t n, Vmf__Agent__FlushMode mode)
{
	if (n > FLUSH_DISKS_MAX) {
		fail(r, E2BIG, "%zu disks named; at most %d", n, FLUSH_DISKS_MAX);
		return false;
	}
	if (mode != VMF__AGENT__FLUSH_MODE__FLUSH_UNMOUNT && mode != VMF__AGENT__FLUSH_MODE__FLUSH_FREEZE &&
	    mode != VMF__AGENT__FLUSH_MODE__FLUSH_THAW) {
		fail(r, EINVAL, "flush mode %d is unknown", (int)mode);
		return false;
	}
	if (test_mode) {
		fail(r, EPERM, "test mode does not unmount or freeze");
		return false;
	}
	vmf__agent__disks_flushed__init(&out.flushed);
	for (size_t i = 0; i < n; i++) {
		flush_one(disks[i], mode, (unsigned)i);
		out.flush_ptrs[i] = &out.flush[i];
	}
	out.flushed.disks = out.flush_ptrs;
	out.flushed.n_disks = n;
	return true;
}

static void
do_flush_disks(Reply *r, const Vmf__Agent__FlushDisks *req)
{
	if (!flush_disks(r, req->disks, req->n_disks, req->mode))
		return;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_DISKS_FLUSHED;
	r->disks_flushed = &out.flushed;
}

/* Processes other than init, this agent and kernel threads (no cmdline). */
static unsigned
user_processes(void)
{
	DIR *d = opendir("/proc");
	if (!d)
		return 0;
	unsigned n = 0;
	struct dirent *de;
	pid_t self = getpid();
	while ((de = readdir(d))) {
		pid_t pid = (pid_t)atoi(de->d_name);
		if (pid <= 1 || pid == self)
			continue;
		char p[64], c[8];
		snprintf(p, sizeof(p), "/proc/%d/cmdline", (int)pid);
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t k = read(fd, c, sizeof(c));
		close(fd);
		n += k > 0;
	}
	closedir(d);
	return n;
}

/* Waits until no user process is left or the deadline passes, reaping
 * the agent's own children meanwhile. */
static void
wait_processes_gone(int64_t deadline)
{
	while (now_ms() < deadline) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if (user_processes() == 0)
			return;
		usleep(20000);
	}
}

static void
do_poweroff(struct conn *c, Reply *r, const Vmf__Agent__Poweroff *req)
{
	if (test_mode) {
		fail(r, EPERM, "test mode does not power off");
		return;
	}
	if (req->n_disks > FLUSH_DISKS_MAX) {
		fail(r, E2BIG, "%zu disks named; at most %d", req->n_disks, FLUSH_DISKS_MAX);
		return;
	}
	unsigned grace = req->grace_ms ? req->grace_ms : POWEROFF_GRACE_DEFAULT_MS;
	if (grace > POWEROFF_GRACE_MAX_MS)
		grace = POWEROFF_GRACE_MAX_MS;
	logmsg("powering off at the host's request (%u ms for processes to end)", grace);
	/* Every process but init and this agent: the workload ends as on a
	 * shutdown, its files closed before the disks are unmounted. */
	kill(-1, SIGTERM);
	wait_processes_gone(now_ms() + grace);
	kill(-1, SIGKILL);
	wait_processes_gone(now_ms() + 1000);
	if (!flush_disks(r, req->disks, req->n_disks, VMF__AGENT__FLUSH_MODE__FLUSH_UNMOUNT))
		return;
	sync();
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_POWERING_OFF;
	r->powering_off = &out.flushed;
	poweroff_pending = true;
	poweroff_conn = c;
	poweroff_deadline = now_ms() + 1000;
}

static void
poweroff_now(void)
{
	sync();
	reboot(RB_POWER_OFF);
	logmsg("power off failed: %s", strerror(errno));
	poweroff_pending = false;
}

/* ---- host connections: frame parser and reply queue ---- */

/* What ends a connection decides what happens next: a test stream ends
 * the agent, a virtio port waits for its host to come back, an accepted
 * socket (vsock) is closed. */
enum conn_kind { CONN_STREAM, CONN_PORT, CONN_ACCEPTED };

struct conn {
	enum conn_kind kind;
	int rfd, wfd;
	const char *name;            /* for log lines */
	bool away;                   /* port: the host is not connected */
	bool closed;                 /* accepted: ended, to be freed */
	uint8_t hdr[VMF_FRAME_HDR];
	size_t hdr_len;
	uint8_t *body;               /* non-NULL while a frame's payload is read */
	uint32_t body_want, body_len;
	uint32_t discard;            /* bytes of an oversized frame still to skip */
	/* Frames not yet written.  Requests are parsed, and process output
	 * read, only while less than OUTQ_HIGH is queued, and no frame is
	 * larger than a frame's limit: a host that stops reading cannot make
	 * the agent buffer more than OUTQ_SIZE per connection. */
	uint8_t *obuf;
	size_t olen, ooff;
	bool osent;                  /* bytes of the queue went out since it was empty */
	uint8_t ibuf[16384];
	size_t ilen, ioff;
	struct conn *next;
};

static struct conn *conns;

static size_t
outq(const struct conn *c)
{
	return c->olen - c->ooff;
}

static bool
outq_open(const struct conn *c)
{
	return !c->away && !c->closed && outq(c) < OUTQ_HIGH;
}

static void procs_of_conn_gone(struct conn *c);

static void
conn_reset(struct conn *c)
{
	procs_of_conn_gone(c);
	free(c->body);
	c->body = NULL;
	c->hdr_len = 0;
	c->body_want = c->body_len = 0;
	c->discard = 0;
	c->olen = c->ooff = 0;
	c->osent = false;
	c->ilen = c->ioff = 0;
}

static struct conn *
conn_add(enum conn_kind kind, int rfd, int wfd, const char *name)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (c)
		c->obuf = malloc(OUTQ_SIZE);
	if (!c || !c->obuf) {
		free(c);
		logmsg("out of memory for a connection");
		return NULL;
	}
	c->kind = kind;
	c->rfd = rfd;
	c->wfd = wfd;
	c->name = name;
	c->next = conns;
	conns = c;
	return c;
}

static void
conn_free(struct conn *c)
{
	conn_reset(c);
	for (struct conn **pp = &conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	if (c->rfd >= 0)
		close(c->rfd);
	if (c->wfd >= 0 && c->wfd != c->rfd)
		close(c->wfd);
	free(c->obuf);
	free(c);
}

static void
queue_reply(struct conn *c, Reply *r)
{
	size_t n = vmf__agent__agent_reply__get_packed_size(r);
	if (n > VMF_AGENT_MAX_FRAME) {
		uint64_t id = r->id;
		fail(r, EMSGSIZE, "reply of %zu bytes exceeds the frame limit", n);
		r->id = id;
		n = vmf__agent__agent_reply__get_packed_size(r);
	}
	if (c->away || c->closed)
		return;
	if (c->olen + VMF_FRAME_HDR + n > OUTQ_SIZE && c->ooff > 0) {
		memmove(c->obuf, c->obuf + c->ooff, c->olen - c->ooff);
		c->olen -= c->ooff;
		c->ooff = 0;
	}
	if (c->olen + VMF_FRAME_HDR + n > OUTQ_SIZE) {
		logmsg("reply to request %llu dropped: the reply queue is full", (unsigned long long)r->id);
		return;
	}
	vmf_frame_put_len(c->obuf + c->olen, (uint32_t)n);
	vmf__agent__agent_reply__pack(r, c->obuf + c->olen + VMF_FRAME_HDR);
	c->olen += VMF_FRAME_HDR + n;
}

static void error_reply(struct conn *c, uint64_t id, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void
error_reply(struct conn *c, uint64_t id, int code, const char *fmt, ...)
{
	char msg[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	Reply r = VMF__AGENT__AGENT_REPLY__INIT;
	r.id = id;
	r.error_code = code;
	r.error_message = msg;
	queue_reply(c, &r);
}

/* ---- exec: processes started for a connection ---- */

struct proc {
	uint64_t id;
	pid_t pid;                   /* 0 once reaped */
	struct conn *c;              /* NULL once its connection is gone */
	bool tty;
	int in_fd;                   /* -1 once closed */
	int out_fd, err_fd;          /* -1 at EOF (tty: out_fd is the master) */
	uint64_t credit[3];          /* output credit, indexed by fd number */
	uint8_t *inbuf;              /* STDIN_WINDOW bytes */
	size_t inlen;
	uint32_t in_ack;             /* written or dropped, not yet acknowledged */
	bool in_close;               /* close stdin once inbuf is written */
	bool exited;
	int status;
	bool timed_out;
	int64_t deadline;            /* ms on CLOCK_MONOTONIC; 0 = none */
	unsigned long long ticks;    /* its start time: its exec ledger entry */
	struct proc *next;
};

static struct proc *procs;
static uint64_t next_exec_id;
static unsigned n_procs;

/* ---- the exec ledger: PGID.START files, START the group leader's start
 * time (/proc/PGID/stat), so that a pid used again is never taken for one
 * of ours ---- */

#define EXEC_LEDGER_GUEST "/run/vmf-agent/execs"
static const char *exec_ledger;

static unsigned long long
start_ticks(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* Field 22, counted after the command name, which may hold blanks. */
	char *f = strrchr(buf, ')');
	for (int i = 2; f && i < 22; i++)
		f = strchr(f + 1, ' ');
	return f ? strtoull(f + 1, NULL, 10) : 0;
}

static void
ledger_name(char *buf, size_t n, pid_t pgid, unsigned long long ticks)
{
	snprintf(buf, n, "%s/%d.%llu", exec_ledger, (int)pgid, ticks);
}

/* The leader's start time, for ledger_remove(). */
static unsigned long long
ledger_add(pid_t pgid)
{
	unsigned long long ticks = start_ticks(pgid);
	if (!exec_ledger)
		return ticks;
	char path[PATH_MAX];
	ledger_name(path, sizeof(path), pgid, ticks);
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		logmsg("exec ledger: cannot create %s: %s", path, strerror(errno));
	else
		close(fd);
	return ticks;
}

static void
ledger_remove(pid_t pgid, unsigned long long ticks)
{
	if (!exec_ledger)
		return;
	char path[PATH_MAX];
	ledger_name(path, sizeof(path), pgid, ticks);
	unlink(path);
}

/* The groups a dead agent left: killed, unless their id now names a
 * process of another start time (a group that still existed would have
 * kept its id from being used again). */
static void
ledger_sweep(void)
{
	if (!exec_ledger)
		return;
	DIR *d = opendir(exec_ledger);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		int pgid;
		unsigned long long ticks;
		char tail;
		if (sscanf(de->d_name, "%d.%llu%c", &pgid, &ticks, &tail) != 2 || pgid <= 1)
			continue;
		unsigned long long now = start_ticks(pgid);
		if (!now || now == ticks) {
			if (kill(-pgid, SIGKILL) == 0)
				logmsg("killed process group %d, left by an agent that died", pgid);
		}
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", exec_ledger, de->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
}

/* Test builds: VMFACTORY_FAULT=name kills the agent at that point, as a
 * crash would. */
static void
fault_point(const char *name)
{
#ifdef VMF_FAULT_INJECTION
	const char *want = getenv("VMFACTORY_FAULT");
	if (want && !strcmp(want, name)) {
		logmsg("fault injection: killing myself at %s", name);
		kill(getpid(), SIGKILL);
	}
#else
	(void)name;
#endif
}

static struct proc *
proc_find(const struct conn *c, uint64_t id)
{
	for (struct proc *p = procs; p; p = p->next)
		if (p->c == c && p->id == id)
			return p;
	return NULL;
}

static void
close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void
proc_close_fds(struct proc *p)
{
	if (p->in_fd == p->out_fd)
		p->in_fd = -1;   /* a tty's one fd, closed once */
	close_fd(&p->in_fd);
	close_fd(&p->out_fd);
	close_fd(&p->err_fd);
}

/* Its whole process group: a shell's children go with it.  Only while it is
 * unreaped, so the pid cannot belong to someone else. */
static void
proc_kill(struct proc *p, int sig)
{
	if (p->pid > 0 && !p->exited && kill(-p->pid, sig) < 0)
		kill(p->pid, sig);
}

/* A connection that ended takes its processes with it; they are reaped
 * (and freed) when they exit. */
static void
procs_of_conn_gone(struct conn *c)
{
	for (struct proc *p = procs; p; p = p->next) {
		if (p->c != c)
			continue;
		proc_kill(p, SIGKILL);
		proc_close_fds(p);
		p->c = NULL;
	}
}

static void
proc_free(struct proc *p)
{
	for (struct proc **pp = &procs; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	proc_close_fds(p);
	free(p->inbuf);
	free(p);
	n_procs--;
}

/* Reaps the exec processes that exited.  Only their own pids: the vsock
 * server is a child of the agent too.  Until it is reaped a process's pid,
 * and with it its group id, cannot be reused: proc_kill relies on that. */
static void
reap_procs(void)
{
	for (struct proc *p = procs; p; p = p->next) {
		if (p->pid <= 0 || p->exited)
			continue;
		int st;
		pid_t r = waitpid(p->pid, &st, WNOHANG);
		if (r == p->pid || (r < 0 && errno == ECHILD))
			ledger_remove(p->pid, p->ticks);
		if (r == p->pid) {
			p->exited = true;
			p->status = st;
		} else if (r < 0 && errno == ECHILD) {
			p->exited = true;
			p->status = 0;
		}
	}
}

static void
send_output(struct proc *p, int fd, const uint8_t *data, size_t n)
{
	Vmf__Agent__ExecOutput o = VMF__AGENT__EXEC_OUTPUT__INIT;
	o.exec_id = p->id;
	o.fd = (uint32_t)fd;
	o.data.data = (uint8_t *)data;
	o.data.len = n;
	Reply r = VMF__AGENT__AGENT_REPLY__INIT;
	r.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_OUTPUT;
	r.exec_output = &o;
	queue_reply(p->c, &r);
}

/* Reads one chunk of a process's output within its credit.  After the
 * process exited, an empty pipe is its end: what its descendants write
 * later is not waited for (a pty waits for EIO instead, since its output
 * may still be on its way through the line discipline). */
static void
read_output(struct proc *p, int *fdp, int fd)
{
	static uint8_t buf[OUT_CHUNK];
	size_t want = p->credit[fd] < sizeof(buf) ? (size_t)p->credit[fd] : sizeof(buf);
	if (want == 0)
		return;
	ssize_t n = read(*fdp, buf, want);
	if (n > 0) {
		p->credit[fd] -= (uint64_t)n;
		send_output(p, fd, buf, (size_t)n);
		return;
	}
	if (n < 0 && errno == EINTR)
		return;
	if (n < 0 && errno == EAGAIN && !(p->exited && !p->tty))
		return;
	/* EOF, EIO (a pty whose other side is closed) or drained after exit. */
	if (p->tty && fdp == &p->out_fd && p->in_fd == p->out_fd)
		p->in_fd = -1;
	close_fd(fdp);
}

static void
write_input(struct proc *p)
{
	while (p->inlen > 0 && p->in_fd >= 0) {
		ssize_t w = write(p->in_fd, p->inbuf, p->inlen);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			return;
		if (w < 0) {
			/* EPIPE: it closed its stdin; what was sent is dropped. */
			p->in_ack += (uint32_t)p->inlen;
			p->inlen = 0;
			if (!p->tty)
				close_fd(&p->in_fd);
			return;
		}
		memmove(p->inbuf, p->inbuf + w, p->inlen - (size_t)w);
		p->inlen -= (size_t)w;
		p->in_ack += (uint32_t)w;
	}
}

/* Everything that moves a process along without an fd event: stdin
 * acknowledgements, a closed stdin, the timeout, its exit frame. */
static void
proc_progress(struct proc *p, int64_t now)
{
	if (!p->c) {
		if (p->exited)
			proc_free(p);
		return;
	}
	if (p->deadline && now >= p->deadline && !p->exited && !p->timed_out) {
		p->timed_out = true;
		proc_kill(p, SIGKILL);
	}
	if (p->in_close && p->inlen == 0 && p->in_fd >= 0) {
		if (p->tty) {
			/* A pty has no half-close: EOF is ^D at a line start. */
			static const uint8_t eot = 4;
			if (write(p->in_fd, &eot, 1) == 1)
				p->in_close = false;
		} else {
			close_fd(&p->in_fd);
		}
	}
	if (!outq_open(p->c))
		return;
	if (p->in_ack && (p->in_ack >= STDIN_WINDOW / 4 || p->inlen == 0)) {
		Vmf__Agent__ExecWindow w = VMF__AGENT__EXEC_WINDOW__INIT;
		w.exec_id = p->id;
		w.stdin_bytes = p->in_ack;
		Reply r = VMF__AGENT__AGENT_REPLY__INIT;
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_WINDOW;
		r.exec_window = &w;
		queue_reply(p->c, &r);
		p->in_ack = 0;
	}
	/* The exit frame follows all output: both streams at their end. */
	if (p->exited && p->out_fd < 0 && p->err_fd < 0) {
		Vmf__Agent__ExecExit e = VMF__AGENT__EXEC_EXIT__INIT;
		e.exec_id = p->id;
		if (WIFSIGNALED(p->status)) {
			e.exit_code = -1;
			e.signal = WTERMSIG(p->status);
		} else {
			e.exit_code = WEXITSTATUS(p->status);
		}
		e.timed_out = p->timed_out;
		Reply r = VMF__AGENT__AGENT_REPLY__INIT;
		r.body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_EXIT;
		r.exec_exit = &e;
		queue_reply(p->c, &r);
		proc_free(p);
	}
}

/* What failed in the child before exec, sent back on the error pipe. */
enum { STEP_PTY = 1, STEP_CWD, STEP_GROUPS, STEP_GID, STEP_UID, STEP_EXEC };

struct child_error {
	int step;
	int err;
};

static void
set_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* The environment a process starts with: a usable default, then the
 * request's KEY=VALUE entries (a key given twice: the last wins). */
static char **
build_env(const Vmf__Agent__ExecStart *x, Reply *r)
{
	static const char *const defaults[] = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
						"HOME=/root", "TERM=xterm" };
	size_t nd = sizeof(defaults) / sizeof(defaults[0]);
	char **env = calloc(nd + x->n_env + 1, sizeof(char *));
	if (!env) {
		fail(r, ENOMEM, "out of memory for the environment");
		return NULL;
	}
	size_t n = 0;
	for (size_t i = 0; i < nd; i++)
		env[n++] = (char *)defaults[i];
	for (size_t i = 0; i < x->n_env; i++) {
		const char *kv = x->env[i], *eq = strchr(kv, '=');
		if (!eq || eq == kv) {
			fail(r, EINVAL, "environment entry '%.60s' is not KEY=VALUE", kv);
			free(env);
			return NULL;
		}
		size_t k = 0;
		while (k < n && !(strncmp(env[k], kv, (size_t)(eq - kv) + 1) == 0))
			k++;
		env[k] = (char *)kv;
		if (k == n)
			n++;
	}
	env[n] = NULL;
	return env;
}

struct child_args {
	const Vmf__Agent__ExecStart *x;
	char **argv, **env;
	const char *path;            /* the environment's PATH */
	const char *slave;           /* a tty's, or NULL */
	int errfd, in, out, errout;
};

/* execvp without touching environ (the child shares the agent's memory):
 * argv[0] in each PATH entry, the first EACCES kept as execvp does. */
static int
exec_path(const struct child_args *c)
{
	const char *cmd = c->argv[0];
	if (strchr(cmd, '/')) {
		execve(cmd, c->argv, c->env);
		return errno;
	}
	int err = ENOENT;
	size_t clen = strlen(cmd);
	for (const char *p = c->path; ; p++) {
		const char *end = strchr(p, ':');
		size_t dlen = end ? (size_t)(end - p) : strlen(p);
		char full[PATH_MAX];
		if (dlen + 1 + clen < sizeof(full)) {
			memcpy(full, dlen ? p : ".", dlen ? dlen : 1);
			size_t n = dlen ? dlen : 1;
			full[n] = '/';
			memcpy(full + n + 1, cmd, clen + 1);
			execve(full, c->argv, c->env);
			if (errno == EACCES)
				err = EACCES;
			else if (errno != ENOENT && errno != ENOTDIR && err != EACCES)
				err = errno;
		}
		if (!end)
			break;
		p = end;
	}
	return err;
}

/* The child's side: never returns.  It runs in the agent's memory until
 * exec (clone with CLONE_VM | CLONE_VFORK, as posix_spawn does): no page
 * is copied, which under TCG is most of a fork's cost in a fresh clone.  So
 * it writes no global and allocates nothing.  Signals the agent blocks
 * (for its signalfd) or ignores (SIGPIPE) are back to normal for the
 * program. */
static int
child_exec(void *arg)
{
	const struct child_args *c = arg;
	const Vmf__Agent__ExecStart *x = c->x;
	int in = c->in, out = c->out, errout = c->errout;
	struct child_error ce = { 0, 0 };
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigaction(SIGPIPE, &dfl, NULL);
	setsid();
	if (c->slave) {
		int s = open(c->slave, O_RDWR);
		if (s < 0 || ioctl(s, TIOCSCTTY, 0) < 0) {
			ce = (struct child_error){ STEP_PTY, errno };
			goto failed;
		}
		in = out = errout = s;
	}
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(errout, 2) < 0) {
		ce = (struct child_error){ STEP_PTY, errno };
		goto failed;
	}
	if (chdir(x->cwd && *x->cwd ? x->cwd : "/") < 0) {
		ce = (struct child_error){ STEP_CWD, errno };
		goto failed;
	}
	if (x->set_user) {
		if (setgroups(0, NULL) < 0 && errno != EPERM) {
			ce = (struct child_error){ STEP_GROUPS, errno };
			goto failed;
		}
		if (setgid(x->gid) < 0) {
			ce = (struct child_error){ STEP_GID, errno };
			goto failed;
		}
		if (setuid(x->uid) < 0) {
			ce = (struct child_error){ STEP_UID, errno };
			goto failed;
		}
	}
	ce = (struct child_error){ STEP_EXEC, exec_path(c) };
failed:
	while (write(c->errfd, &ce, sizeof(ce)) < 0 && errno == EINTR)
		;
	_exit(127);
}

/* The sentence for a child's failure, naming what it was given. */
static void
child_failure(Reply *r, const Vmf__Agent__ExecStart *x, const struct child_error *ce, const char *path)
{
	const char *e = strerror(ce->err);
	switch (ce->step) {
	case STEP_PTY:
		fail(r, ce->err, "cannot set up the terminal of '%s': %s", x->argv[0], e);
		break;
	case STEP_CWD:
		fail(r, ce->err, "cannot change to directory '%s': %s", x->cwd, e);
		break;
	case STEP_GROUPS:
	case STEP_GID:
		fail(r, ce->err, "cannot switch to group id %u: %s", x->gid, e);
		break;
	case STEP_UID:
		fail(r, ce->err, "cannot switch to user id %u: %s", x->uid, e);
		break;
	default:
		if (ce->err == ENOENT && !strchr(x->argv[0], '/'))
			fail(r, ENOENT, "cannot run '%s': no such command in PATH (%s)", x->argv[0], path);
		else if (ce->err == ENOENT)
			fail(r, ENOENT, "cannot run '%s': no such file", x->argv[0]);
		else
			fail(r, ce->err, "cannot run '%s': %s", x->argv[0], e);
		break;
	}
}

/* The guest's /init mounts no devpts; the first tty needs one.  Never in
 * test mode: the host has its own. */
static void
ensure_devpts(void)
{
	struct stat st;
	if (test_mode || stat("/dev/pts/ptmx", &st) == 0)
		return;
	if (mkdir("/dev/pts", 0755) < 0 && errno != EEXIST)
		logmsg("cannot create /dev/pts: %s", strerror(errno));
	else if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620") < 0)
		logmsg("cannot mount devpts on /dev/pts: %s", strerror(errno));
}

static bool
valid_id(uint32_t id)
{
	/* (uid_t)-1 means "unchanged" to setuid(2), never a user. */
	return id != UINT32_MAX;
}

static void
do_exec_start(struct conn *c, Reply *r, const Vmf__Agent__ExecStart *x)
{
	if (x->n_argv == 0 || !x->argv[0][0]) {
		fail(r, EINVAL, "exec needs a command: argv is empty");
		return;
	}
	if (no_exec) {
		fail(r, EPERM, "this agent was started with --no-exec");
		return;
	}
	if (x->n_argv > EXEC_ARGS_MAX || x->n_env > EXEC_ARGS_MAX) {
		fail(r, E2BIG, "argument list too long: %zu arguments and %zu environment entries (at most %u each)",
		     x->n_argv, x->n_env, EXEC_ARGS_MAX);
		return;
	}
	if (x->set_user && (!valid_id(x->uid) || !valid_id(x->gid))) {
		fail(r, EINVAL, "user id %u / group id %u: 4294967295 is not a valid id", x->uid, x->gid);
		return;
	}
	if (x->tty && (x->rows > 0xffff || x->cols > 0xffff)) {
		fail(r, EINVAL, "terminal size %ux%u is out of range (at most 65535x65535)", x->rows, x->cols);
		return;
	}
	if (x->output_window > OUTPUT_WINDOW_MAX) {
		fail(r, EINVAL, "output window of %u bytes exceeds the limit of %u", x->output_window,
		     OUTPUT_WINDOW_MAX);
		return;
	}
	if (n_procs >= PROCS_MAX) {
		fail(r, EAGAIN, "%u processes are running already, the agent's limit", n_procs);
		return;
	}
	char **env = build_env(x, r);
	if (!env)
		return;
	/* protobuf-c's arrays have no terminating NULL. */
	char **argv = calloc(x->n_argv + 1, sizeof(char *));
	if (!argv) {
		fail(r, ENOMEM, "out of memory for the arguments");
		free(env);
		return;
	}
	memcpy(argv, x->argv, x->n_argv * sizeof(char *));
	struct proc *p = calloc(1, sizeof(*p));
	uint8_t *inbuf = malloc(STDIN_WINDOW);
	int errp[2] = { -1, -1 }, in[2] = { -1, -1 }, out[2] = { -1, -1 }, err2[2] = { -1, -1 }, master = -1;
	const char *slave = NULL;
	int e = 0;
	const char *what = "";
	if (!p || !inbuf) {
		e = ENOMEM, what = "memory";
	} else if (pipe2(errp, O_CLOEXEC) < 0) {
		e = errno, what = "a pipe";
	} else if (x->tty) {
		ensure_devpts();
		struct winsize ws = { .ws_row = (unsigned short)(x->rows ? x->rows : 24),
				      .ws_col = (unsigned short)(x->cols ? x->cols : 80) };
		if ((master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0 || grantpt(master) < 0 ||
		    unlockpt(master) < 0 || !(slave = ptsname(master)) || ioctl(master, TIOCSWINSZ, &ws) < 0)
			e = errno, what = "a pseudo-terminal";
	} else if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err2, O_CLOEXEC) < 0) {
		e = errno, what = "pipes";
	}
	const char *path = env[0] + 5;
	for (char **v = env; *v; v++)
		if (!strncmp(*v, "PATH=", 5))
			path = *v + 5;
	struct child_args ca = { .x = x, .argv = argv, .env = env, .path = path, .slave = slave,
				 .errfd = errp[1], .in = in[0], .out = out[1], .errout = err2[1] };
	/* The child's stack; the agent waits (CLONE_VFORK) until it has
	 * exec'd or exited, so one serves every start. */
	static uint8_t child_stack[64 * 1024] __attribute__((aligned(16)));
	pid_t pid = -1;
	if (!e && (pid = clone(child_exec, child_stack + sizeof(child_stack), CLONE_VM | CLONE_VFORK | SIGCHLD,
			       &ca)) < 0)
		e = errno, what = "a process (clone)";
	close_fd(&errp[1]);
	close_fd(&in[0]);
	close_fd(&out[1]);
	close_fd(&err2[1]);
	if (e) {
		fail(r, e, "cannot start '%s': cannot get %s: %s", x->argv[0], what, strerror(e));
		goto out;
	}
	/* exec closed the error pipe (CLOEXEC): nothing on it means it ran. */
	struct child_error ce;
	ssize_t n;
	while ((n = read(errp[0], &ce, sizeof(ce))) < 0 && errno == EINTR)
		;
	if (n == (ssize_t)sizeof(ce)) {
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		child_failure(r, x, &ce, path);
		goto out;
	}
	p->id = ++next_exec_id;
	p->pid = pid;
	p->ticks = ledger_add(pid);
	fault_point("exec-started");
	p->c = c;
	p->tty = x->tty;
	p->inbuf = inbuf;
	inbuf = NULL;
	if (x->tty) {
		set_nonblock(master);
		p->in_fd = p->out_fd = master;
		master = -1;
		p->err_fd = -1;
	} else {
		p->in_fd = in[1], p->out_fd = out[0], p->err_fd = err2[0];
		in[1] = out[0] = err2[0] = -1;
		set_nonblock(p->in_fd);
		set_nonblock(p->out_fd);
		set_nonblock(p->err_fd);
	}
	uint32_t win = x->output_window ? x->output_window : OUTPUT_WINDOW_DEFAULT;
	p->credit[1] = p->credit[2] = win;
	p->deadline = x->timeout_ms ? now_ms() + x->timeout_ms : 0;
	p->next = procs;
	procs = p;
	n_procs++;
	p = NULL;
	vmf__agent__exec_started__init(&out_started);
	out_started.exec_id = next_exec_id;
	out_started.pid = pid;
	out_started.stdin_window = STDIN_WINDOW;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_STARTED;
	r->exec_started = &out_started;
out:
	close_fd(&errp[0]);
	close_fd(&in[1]);
	close_fd(&out[0]);
	close_fd(&err2[0]);
	close_fd(&master);
	free(inbuf);
	free(p);
	free(env);
	free(argv);
}

/* Returns false when there is nothing to reply (ExecInput and ExecWindow
 * answer only when they fail). */
static bool
do_exec_request(struct conn *c, const Vmf__Agent__AgentRequest *req, Reply *r)
{
	uint64_t id = 0;
	switch (req->body_case) {
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_INPUT: id = req->exec_input->exec_id; break;
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_WINDOW: id = req->exec_window->exec_id; break;
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_SIGNAL: id = req->exec_signal->exec_id; break;
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESIZE: id = req->exec_resize->exec_id; break;
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESET:
		procs_of_conn_gone(c);
		r->body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK;
		r->exec_ack = &out_ack;
		return true;
	default: break;
	}
	struct proc *p = proc_find(c, id);
	if (!p) {
		fail(r, ESRCH, "no process with exec id %llu on this connection (it exited, or never started)",
		     (unsigned long long)id);
		return true;
	}
	switch (req->body_case) {
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_INPUT: {
		const Vmf__Agent__ExecInput *in = req->exec_input;
		if (in->data.len > STDIN_WINDOW - p->inlen) {
			fail(r, ENOBUFS, "stdin data of %zu bytes for exec %llu exceeds its window (%zu bytes free)",
			     in->data.len, (unsigned long long)id, STDIN_WINDOW - p->inlen);
			return true;
		}
		if (p->in_fd < 0 || p->in_close) {
			/* Its stdin is closed: acknowledged, dropped. */
			p->in_ack += (uint32_t)in->data.len;
		} else if (in->data.len) {
			/* (An EOF alone has no data: no memcpy from NULL.) */
			memcpy(p->inbuf + p->inlen, in->data.data, in->data.len);
			p->inlen += in->data.len;
		}
		if (in->close)
			p->in_close = true;
		return false;
	}
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_WINDOW: {
		const Vmf__Agent__ExecWindow *w = req->exec_window;
		p->credit[1] += w->stdout_bytes;
		p->credit[2] += w->stderr_bytes;
		return false;
	}
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_SIGNAL: {
		int sig = req->exec_signal->signal;
		if (sig < 1 || sig > 64) {
			fail(r, EINVAL, "signal %d is not a signal number (1 to 64)", sig);
			return true;
		}
		proc_kill(p, sig);
		break;
	}
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESIZE: {
		const Vmf__Agent__ExecResize *z = req->exec_resize;
		struct winsize ws = { .ws_row = (unsigned short)z->rows, .ws_col = (unsigned short)z->cols };
		if (!p->tty || p->out_fd < 0) {
			fail(r, ENOTTY, "exec %llu has no terminal to resize", (unsigned long long)id);
			return true;
		}
		if (z->rows > 0xffff || z->cols > 0xffff || ioctl(p->out_fd, TIOCSWINSZ, &ws) < 0) {
			fail(r, EINVAL, "cannot resize the terminal of exec %llu to %ux%u", (unsigned long long)id,
			     z->rows, z->cols);
			return true;
		}
		break;
	}
	default:
		break;
	}
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_EXEC_ACK;
	r->exec_ack = &out_ack;
	return true;
}

/* Returns false when the request has no reply. */
static bool
handle(struct conn *c, const Vmf__Agent__AgentRequest *req, Reply *r)
{
	r->id = req->id;
	if (req->protocol_version != AGENT_PROTOCOL_VERSION) {
		fail(r, EPROTO, "agent protocol version %u is not supported (this agent speaks %u)",
		     req->protocol_version, AGENT_PROTOCOL_VERSION);
		return true;
	}
	switch (req->body_case) {
	case VMF__AGENT__AGENT_REQUEST__BODY_PING:
		vmf__agent__ping__init(&out.pong);
		r->body_case = VMF__AGENT__AGENT_REPLY__BODY_PONG;
		r->pong = &out.pong;
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_GUEST_INFO:
		do_guest_info(r);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_ONLINE_CPU_MEM:
		do_online(r, req->online_cpu_mem);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_RESEED_RNG:
		do_reseed(r, req->reseed_rng);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_SET_TIME:
		do_set_time(r, req->set_time);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_SHARE:
		do_mount(r, req->mount_share);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_UNMOUNT_SHARE:
		do_unmount(r);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_NEW_IDENTITY:
		do_new_identity(r, req->new_identity);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_HANDOUT:
		do_handout(r, req->handout);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_DISK:
		do_mount_disk(r, req->mount_disk);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_UNMOUNT_DISK:
		do_unmount_disk(r, req->unmount_disk);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_FLUSH_DISKS:
		do_flush_disks(r, req->flush_disks);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_POWEROFF:
		do_poweroff(c, r, req->poweroff);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START:
		do_exec_start(c, r, req->exec_start);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_INPUT:
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_WINDOW:
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_SIGNAL:
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESIZE:
	case VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESET:
		return do_exec_request(c, req, r);
	default:
		/* A newer host, or a request without a body. */
		fail(r, EOPNOTSUPP, "request type %d is not supported by %s", (int)req->body_case, AGENT_VERSION);
		break;
	}
	return true;
}

static void
frame_done(struct conn *c)
{
	Vmf__Agent__AgentRequest *req = vmf__agent__agent_request__unpack(NULL, c->body_len, c->body);
	if (!req) {
		error_reply(c, 0, EBADMSG, "request frame of %u bytes is not a valid agent request", c->body_len);
	} else {
		Reply r = VMF__AGENT__AGENT_REPLY__INIT;
#ifdef VMF_AGENT_HOSTILE
		const char *hostile = vmf_hostile_behavior(c->name, req);
#endif
		if (handle(c, req, &r)) {
#ifdef VMF_AGENT_HOSTILE
			if (hostile && vmf_hostile_act(hostile, c->name, c->rfd, c->wfd, req, &r))
				exit(3);
#endif
			queue_reply(c, &r);
		}
		vmf__agent__agent_request__free_unpacked(req, NULL);
		free_names();
	}
	free(c->body);
	c->body = NULL;
	c->hdr_len = 0;
	c->body_len = c->body_want = 0;
}

/* Consumes input bytes; returns how many it took.  Stops while the reply
 * queue is at its high mark, so that replies are written before more
 * requests are parsed. */
static size_t
feed(struct conn *c, const uint8_t *p, size_t n)
{
	size_t used = 0;
	while (used < n && outq_open(c)) {
		if (c->discard) {
			size_t k = n - used < c->discard ? n - used : c->discard;
			c->discard -= (uint32_t)k;
			used += k;
			continue;
		}
		if (!c->body) {
			c->hdr[c->hdr_len++] = p[used++];
			if (c->hdr_len < VMF_FRAME_HDR)
				continue;
			uint32_t len = vmf_frame_get_len(c->hdr);
			c->hdr_len = 0;
			if (len > VMF_AGENT_MAX_FRAME) {
				error_reply(c, 0, EMSGSIZE, "frame of %u bytes exceeds the limit of %u bytes", len,
					    VMF_AGENT_MAX_FRAME);
				/* Skip its payload as it streams in, without
				 * allocating; a reconnect also ends it. */
				c->discard = len;
				continue;
			}
			c->body = malloc(len ? len : 1);
			if (!c->body) {
				error_reply(c, 0, ENOMEM, "out of memory for a %u byte request", len);
				c->discard = len;
				continue;
			}
			c->body_want = len;
			c->body_len = 0;
			if (len == 0)
				frame_done(c);
			continue;
		}
		size_t k = c->body_want - c->body_len;
		if (k > n - used)
			k = n - used;
		memcpy(c->body + c->body_len, p + used, k);
		c->body_len += (uint32_t)k;
		used += k;
		if (c->body_len == c->body_want)
			frame_done(c);
	}
	return used;
}

/* Writes what it can of the queue without blocking; -1 when the peer is
 * gone. */
static int
flush(struct conn *c)
{
	while (c->ooff < c->olen) {
		ssize_t w = c->kind == CONN_ACCEPTED
				    ? send(c->wfd, c->obuf + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL)
				    : write(c->wfd, c->obuf + c->ooff, c->olen - c->ooff);
		if (w > 0) {
			c->ooff += (size_t)w;
			c->osent = true;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			return 0;
		return -1;
	}
	c->olen = c->ooff = 0;
	c->osent = false;
	return 0;
}

/* Accepts the next connection on a listening socket (non-blocking, close
 * on exec); -1 when there is none to take or it was refused.  A guest-local
 * vsock peer (CID 1, reached through vsock_loopback) is refused unless
 * --vsock-allow-local: the agent runs as root and only the host may drive
 * it. */
static int
accept_peer(int lfd)
{
	struct sockaddr_storage sa;
	socklen_t len = sizeof(sa);
	int fd = accept4(lfd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
			logmsg("accept: %s", strerror(errno));
		return -1;
	}
	if (sa.ss_family == AF_VSOCK) {
		const struct sockaddr_vm *vm = (const struct sockaddr_vm *)&sa;
		if (vm->svm_cid == VMADDR_CID_LOCAL && !vsock_allow_local) {
			logmsg("refused a vsock connection from CID %u port %u: only the host may connect "
			       "(a guest-local peer needs --vsock-allow-local)", vm->svm_cid, vm->svm_port);
			close(fd);
			return -1;
		}
	}
	return fd;
}

/* A connection's end: the test stream ends the agent (returns true), a
 * port waits for its host, an accepted socket is closed.
 *
 * A port's end is only what the guest kernel believes now, and it learns
 * of a new host connection late: virtio_console reads a host's bytes in
 * the virtqueue interrupt but its VIRTIO_CONSOLE_PORT_OPEN in a
 * workqueue, so a new host's first request can be read and answered
 * while the port still says the host is away (writes EAGAIN, reads 0).
 * Dropping that answer here left the host waiting for good (a few
 * connections in a hundred under TCG).  So a port keeps its replies when
 * none of their bytes went out: they reach that host once the port opens
 * (SIGIO), or, when the host did leave, the next one, which skips replies
 * that are not its own by id (a client's ExecReset answer, the daemon's
 * Ping).  Replies a host got part of are dropped with it, so the next
 * host starts at a frame. */
static bool
conn_gone(struct conn *c)
{
	size_t keep = c->kind == CONN_PORT && !c->osent ? c->olen : 0;
	conn_reset(c);
	leak_check();
	c->olen = keep;
	if (c->kind == CONN_PORT)
		c->away = true;
	else
		c->closed = true;
	return c->kind == CONN_STREAM;
}

static void
accept_new(int lfd)
{
	int fd = accept_peer(lfd);
	if (fd < 0)
		return;
	unsigned n = 0;
	struct conn *oldest = NULL;
	for (struct conn *c = conns; c; c = c->next)
		if (c->kind == CONN_ACCEPTED && !c->closed) {
			n++;
			oldest = c;   /* new connections go to the front */
		}
	/* After a snapshot restore the VMM resets its vsock connections and
	 * the host connects again; a stale one that was never reset is the
	 * oldest, and must not keep the new host out. */
	if (n >= CONNS_MAX && oldest) {
		logmsg("%u connections open: the oldest is closed for the new one", n);
		conn_gone(oldest);
	}
	if (!conn_add(CONN_ACCEPTED, fd, fd, "socket"))
		close(fd);
}

static int
poll_timeout(int64_t now)
{
	int64_t t = -1;
	for (struct proc *p = procs; p; p = p->next)
		if (p->c && p->deadline && !p->exited && !p->timed_out) {
			int64_t left = p->deadline > now ? p->deadline - now : 0;
			if (t < 0 || left < t)
				t = left;
		}
	if (poweroff_pending)
		t = t < 0 || t > 20 ? 20 : t;
	return t > 60000 ? 60000 : (int)t;
}

/* The end of a test stream: its fd is the caller's, its processes were
 * killed (conn_gone) and are reaped here, so that a caller that serves
 * again (the fuzz target runs main over and over) starts clean. */
static void
serve_end(int sfd)
{
	while (conns) {
		conns->rfd = conns->wfd = -1;
		conn_free(conns);
	}
	while (procs) {
		if (procs->pid > 0 && !procs->exited)
			while (waitpid(procs->pid, NULL, 0) < 0 && errno == EINTR)
				;
		proc_free(procs);
	}
	close(sfd);
}

/* Serves every connection in conns, the processes they start and, with a
 * listening socket (lfd >= 0: vsock, or a test's unix socket), the
 * connections it accepts, several at once.  Returns when a test stream
 * ends (0), else never.
 *
 * Ports (virtio-serial): a host that goes away resets the port's state and
 * kills its processes; while every port's host is away the agent sleeps on
 * SIGIO (sigio true: the caller blocked it and armed O_ASYNC).  SIGCHLD,
 * through the same signalfd, reaps exec processes.  The listener is polled
 * only for POLLIN, so an idle agent costs nothing. */
static int
serve(int lfd, bool sigio)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	if (sigio)
		sigaddset(&set, SIGIO);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		logmsg("signalfd: %s", strerror(errno));
		return 1;
	}
	for (;;) {
		int64_t now = now_ms();
		if (poweroff_pending) {
			/* Once the Poweroff's reply is out (its connection gone,
			 * or a second passed): the host knows what was flushed. */
			bool queued = false;
			for (struct conn *c = conns; c; c = c->next)
				queued = queued || (c == poweroff_conn && !c->closed && !c->away && outq(c) > 0);
			if (!queued || now >= poweroff_deadline)
				poweroff_now();
		}
		for (struct conn *c = conns, *nx; c; c = nx) {
			nx = c->next;
			if (c->closed) {
				conn_free(c);
				continue;
			}
			/* Parse what is buffered before waiting for more. */
			if (c->ioff < c->ilen)
				c->ioff += feed(c, c->ibuf + c->ioff, c->ilen - c->ioff);
			if (c->ioff == c->ilen)
				c->ioff = c->ilen = 0;
		}
		for (struct proc *p = procs, *nx; p; p = nx) {
			nx = p->next;
			proc_progress(p, now);
		}

		size_t cap = 2 + CONNS_MAX + 2 + 3 * (size_t)n_procs;
		for (struct conn *c = conns; c; c = c->next)
			cap++;
		struct pollfd pv[cap];
		void *who[cap];
		int kind[cap];        /* 0 conn, 1 stdin, 2 stdout, 3 stderr, 4 signals, 5 listener */
		nfds_t np = 0;
		pv[np] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		kind[np] = 4, who[np++] = NULL;
		if (lfd >= 0) {
			pv[np] = (struct pollfd){ .fd = lfd, .events = POLLIN };
			kind[np] = 5, who[np++] = NULL;
		}
		for (struct conn *c = conns; c; c = c->next) {
			if (c->away || c->closed || c->rfd < 0)
				continue;
			short ev = 0;
			if (c->ilen == 0 && outq_open(c))
				ev |= POLLIN;
			if (outq(c) > 0)
				ev |= POLLOUT;
			/* A read and a write fd (--stdio) are polled apart. */
			if (c->wfd != c->rfd && (ev & POLLOUT)) {
				pv[np] = (struct pollfd){ .fd = c->wfd, .events = POLLOUT };
				kind[np] = 0, who[np++] = c;
				ev &= (short)~POLLOUT;
			}
			pv[np] = (struct pollfd){ .fd = c->rfd, .events = ev };
			kind[np] = 0, who[np++] = c;
		}
		for (struct proc *p = procs; p; p = p->next) {
			if (!p->c || !outq_open(p->c))
				continue;
			if (p->in_fd >= 0 && p->inlen > 0 && !p->tty) {
				pv[np] = (struct pollfd){ .fd = p->in_fd, .events = POLLOUT };
				kind[np] = 1, who[np++] = p;
			}
			short tty_out = p->tty && p->inlen > 0 && p->out_fd >= 0 ? POLLOUT : 0;
			if (p->out_fd >= 0 && (p->credit[1] > 0 || tty_out)) {
				pv[np] = (struct pollfd){ .fd = p->out_fd,
							  .events = (short)((p->credit[1] > 0 ? POLLIN : 0) | tty_out) };
				kind[np] = 2, who[np++] = p;
			}
			if (p->err_fd >= 0 && p->credit[2] > 0) {
				pv[np] = (struct pollfd){ .fd = p->err_fd, .events = POLLIN };
				kind[np] = 3, who[np++] = p;
			}
		}
		if (poll(pv, np, poll_timeout(now)) < 0) {
			if (errno == EINTR)
				continue;
			logmsg("poll: %s", strerror(errno));
			return 1;
		}
		bool sig = false, ended = false;
		for (nfds_t i = 0; i < np; i++) {
			short re = pv[i].revents;
			if (!re)
				continue;
			if (kind[i] == 4) {
				sig = true;
			} else if (kind[i] == 5) {
				accept_new(lfd);
			} else if (kind[i] == 0) {
				struct conn *c = who[i];
				if (c->away || c->closed)
					continue;
				bool gone = false;
				if (re & POLLOUT)
					gone = flush(c) < 0;
				if (!gone && (re & POLLIN) && c->ilen == 0) {
					ssize_t n = read(c->rfd, c->ibuf, sizeof(c->ibuf));
					if (n > 0)
						c->ilen = (size_t)n, c->ioff = 0;
					else if (n == 0 || (errno != EINTR && errno != EAGAIN))
						/* EOF (a port reads 0 while its host is
						 * away) or an error. */
						gone = true;
				} else if (!gone && (re & (POLLHUP | POLLERR)) && !(re & POLLIN)) {
					/* A port whose host went away polls
					 * POLLHUP, never POLLIN or POLLOUT. */
					gone = true;
				}
				if (gone)
					ended = conn_gone(c) || ended;
			} else {
				struct proc *p = who[i];
				if (!p->c)
					continue;
				if (kind[i] == 1 || (kind[i] == 2 && (re & POLLOUT)))
					write_input(p);
				if (kind[i] == 2 && (re & (POLLIN | POLLHUP | POLLERR)) && p->out_fd >= 0)
					read_output(p, &p->out_fd, 1);
				if (kind[i] == 3 && p->err_fd >= 0)
					read_output(p, &p->err_fd, 2);
			}
		}
		if (ended) {
			serve_end(sfd);
			return 0;
		}
		if (sig) {
			/* Drained after the ports were looked at: a host that
			 * came back since poll() returned leaves its SIGIO here,
			 * and any later one wakes the next poll(). */
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				;
			for (struct conn *c = conns; c; c = c->next)
				c->away = false;
			reap_procs();
		}
	}
}

/* ---- the virtio-serial ports ---- */

static int
find_port(const char *want, char *dev, size_t n)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *de;
	int r = -1;
	while (d && (de = readdir(d))) {
		char path[300], name[64];
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", de->d_name);
		if (read_small(path, name, sizeof(name)) == 0 && strcmp(name, want) == 0) {
			snprintf(dev, n, "/dev/%s", de->d_name);
			r = 0;
			break;
		}
	}
	if (d)
		closedir(d);
	return r;
}

/* Serves rfd/wfd as a port.  SIGIO on host connect/disconnect is what
 * ends a wait while the host is away (see the top of this file). */
static int
add_port(int rfd, int wfd, const char *name, const char *what)
{
	if (fcntl(rfd, F_SETOWN, getpid()) < 0 || fcntl(rfd, F_SETFL, fcntl(rfd, F_GETFL) | O_ASYNC | O_NONBLOCK) < 0 ||
	    (wfd != rfd && fcntl(wfd, F_SETFL, fcntl(wfd, F_GETFL) | O_NONBLOCK) < 0)) {
		logmsg("cannot enable SIGIO on %s: %s", what, strerror(errno));
		return -1;
	}
	return conn_add(CONN_PORT, rfd, wfd, name) ? 0 : -1;
}

static int
open_port(const char *dev, const char *name)
{
	int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		logmsg("cannot open %s: %s", dev, strerror(errno));
		return -1;
	}
	if (add_port(fd, fd, name, dev) < 0) {
		close(fd);
		return -1;
	}
	logmsg("%s serving port '%s' on %s", AGENT_VERSION, name, dev);
	return 0;
}

/* Serves the owner's port ("agent") and the daemon's ("vmf").  The ports'
 * names arrive from the host after the driver probes; the kernel announces
 * each with a uevent ("change" on the port).  The daemon's port comes with
 * the owner's in every VM this agent's hosts start; a VM without it (an
 * older command line) is served on "agent" alone. */
static int
serve_port(void)
{
	char dev[300], dev2[300];
	int64_t deadline = now_ms() + PORT_WAIT_MS;
	while (find_port(PORT_NAME, dev, sizeof(dev)) < 0) {
		if (!wait_uevent(deadline)) {
			logmsg("no virtio-serial port named '%s' after %d ms", PORT_NAME, PORT_WAIT_MS);
			return 1;
		}
		drain_uevents();
	}
	int64_t deadline2 = now_ms() + DAEMON_PORT_WAIT_MS;
	bool have2;
	while (!(have2 = find_port(DAEMON_PORT_NAME, dev2, sizeof(dev2)) == 0) && wait_uevent(deadline2))
		drain_uevents();
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGIO);
	sigprocmask(SIG_BLOCK, &set, NULL);
	if (open_port(dev, PORT_NAME) < 0 || (have2 && open_port(dev2, DAEMON_PORT_NAME) < 0))
		return 1;
	if (!have2)
		logmsg("no virtio-serial port named '%s': the daemon shares '%s'", DAEMON_PORT_NAME, PORT_NAME);
	return serve(-1, true);
}

/* ---- vsock ---- */

/* A listening vsock socket on VMADDR_CID_ANY:port, or -1 when the guest has
 * no AF_VSOCK (or it fails: logged). */
static int
vsock_listen(unsigned port)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		if (errno == EAFNOSUPPORT)
			logmsg("vsock is not served: this guest has no AF_VSOCK (the vsock module is not loaded)");
		else
			logmsg("vsock is not served: cannot create a vsock socket: %s", strerror(errno));
		return -1;
	}
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int64_t deadline = now_ms() + VSOCK_BIND_RETRY_MS;
	int r;
	while ((r = bind(fd, (struct sockaddr *)&sa, sizeof(sa))) < 0 && errno == EADDRINUSE &&
	       now_ms() < deadline)
		poll(NULL, 0, 50);
	if (r < 0 || listen(fd, 4) < 0) {
		logmsg("vsock is not served: cannot %s vsock port %u: %s", r < 0 ? "bind" : "listen on", port,
		       strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Serves the vsock listener in a child process, so that neither transport
 * can block or wake the other (an OnlineCpuMem on one waits up to a minute)
 * and the virtio-serial path above stays as it was.  Returns the child's
 * pid, or -1. */
static pid_t
start_vsock_server(int lfd, unsigned port)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		logmsg("vsock is not served: fork: %s", strerror(errno));
		close(lfd);
		return -1;
	}
	if (pid > 0) {
		close(lfd);
		return pid;
	}
	/* It dies with the agent: init restarts the whole agent, and the new
	 * one's listener needs the port. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(1);
	/* Its own uevent socket: two processes draining one would steal each
	 * other's events. */
	if (uevent_fd >= 0)
		close(uevent_fd);
	uevent_fd = -1;
	open_uevents();
	logmsg("%s serving vsock port %u", AGENT_VERSION, port);
	_exit(serve(lfd, false));
}

static int
parse_fd(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < 0 || v > 65535)
		return -1;
	int fd = (int)v;
	return fcntl(fd, F_GETFD) < 0 ? -1 : fd;
}

static void
usage(void)
{
	fprintf(stderr,
		"usage: vmf-agent                  serve the virtio-serial ports '%s' and '" DAEMON_PORT_NAME "' and vsock port %u (in the guest)\n"
		"       vmf-agent --fd N           serve the open stream fd N (test mode)\n"
		"       vmf-agent --stdio          serve stdin/stdout (test mode)\n"
		"       vmf-agent --listen-fd N    serve the connections of the listening socket fd N, several at\n"
		"                                  once (test mode)\n"
		"       vmf-agent --port-fds R W   serve fds R (read) and W (write) as a virtio-serial port: a read\n"
		"                                  of 0 is its host away, SIGIO wakes (test mode)\n"
		"options: --share-dir PATH (default /mnt/share), --no-set-time, --no-exec, --version,\n"
		"         --machine-id-file PATH (default /etc/machine-id; in test mode written only when given),\n"
		"         --vsock-port N (0: no vsock), --vsock-allow-local (accept guest-local vsock peers),\n"
		"         --exec-ledger DIR (where started exec sessions are noted; default " EXEC_LEDGER_GUEST "\n"
		"         in the guest, none in test mode)\n",
		PORT_NAME, VSOCK_PORT_DEFAULT);
}

int
main(int argc, char **argv)
{
	int rfd = -1, wfd = -1, lfd = -1, port_rfd = -1, port_wfd = -1;
	unsigned vsock_port = VSOCK_PORT_DEFAULT;
	vsock_allow_local = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--fd") && i + 1 < argc) {
			rfd = wfd = parse_fd(argv[++i]);
			if (rfd < 0) {
				fprintf(stderr, "vmf-agent: --fd %s is not an open file descriptor\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--stdio")) {
			rfd = STDIN_FILENO;
			wfd = STDOUT_FILENO;
		} else if (!strcmp(argv[i], "--port-fds") && i + 2 < argc) {
			port_rfd = parse_fd(argv[++i]);
			port_wfd = parse_fd(argv[++i]);
			if (port_rfd < 0 || port_wfd < 0) {
				fprintf(stderr, "vmf-agent: --port-fds %s %s: not two open file descriptors\n", argv[i - 1],
					argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--listen-fd") && i + 1 < argc) {
			lfd = parse_fd(argv[++i]);
			if (lfd < 0) {
				fprintf(stderr, "vmf-agent: --listen-fd %s is not an open file descriptor\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--vsock-port") && i + 1 < argc) {
			char *end;
			unsigned long v = strtoul(argv[++i], &end, 10);
			if (!isdigit((unsigned char)argv[i][0]) || *end != '\0' || v > 0xfffffffeul) {
				fprintf(stderr, "vmf-agent: --vsock-port %s is not a port number (0 to 4294967294)\n",
					argv[i]);
				return 2;
			}
			vsock_port = (unsigned)v;
		} else if (!strcmp(argv[i], "--vsock-allow-local")) {
			vsock_allow_local = true;
		} else if (!strcmp(argv[i], "--share-dir") && i + 1 < argc) {
			share_dir = argv[++i];
		} else if (!strcmp(argv[i], "--no-exec")) {
			no_exec = true;
		} else if (!strcmp(argv[i], "--machine-id-file") && i + 1 < argc) {
			machine_id_file = argv[++i];
			machine_id_given = true;
		} else if (!strcmp(argv[i], "--no-set-time")) {
			no_set_time = true;
		} else if (!strcmp(argv[i], "--exec-ledger") && i + 1 < argc) {
			exec_ledger = argv[++i];
		} else if (!strcmp(argv[i], "--version")) {
			puts(AGENT_VERSION);
			return 0;
		} else {
			usage();
			return 2;
		}
	}
	/* A vanished host must not kill the agent. */
	signal(SIGPIPE, SIG_IGN);
	if ((rfd >= 0) + (lfd >= 0) + (port_rfd >= 0) > 1) {
		fprintf(stderr, "vmf-agent: --fd/--stdio, --listen-fd and --port-fds exclude each other\n");
		return 2;
	}
	bool guest = rfd < 0 && lfd < 0 && port_rfd < 0;
	if (guest && !exec_ledger) {
		exec_ledger = EXEC_LEDGER_GUEST;
		if ((mkdir("/run", 0755) < 0 && errno != EEXIST) || (mkdir("/run/vmf-agent", 0700) < 0 && errno != EEXIST) ||
		    (mkdir(exec_ledger, 0700) < 0 && errno != EEXIST)) {
			logmsg("exec ledger %s: %s; processes of an agent that dies will not be killed", exec_ledger,
			       strerror(errno));
			exec_ledger = NULL;
		}
	}
	/* What the previous agent started goes before anything is served. */
	ledger_sweep();
	if (rfd >= 0) {
		test_mode = no_set_time = true;
		fcntl(rfd, F_SETFL, fcntl(rfd, F_GETFL) | O_NONBLOCK);
		if (wfd != rfd)
			fcntl(wfd, F_SETFL, fcntl(wfd, F_GETFL) | O_NONBLOCK);
		if (!conn_add(CONN_STREAM, rfd, wfd, "stream"))
			return 1;
		return serve(-1, false);
	}
	if (port_rfd >= 0) {
		/* A port's host coming and going, played by the test: reads
		 * of 0 while it is away, SIGIO when it is back. */
		test_mode = no_set_time = true;
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGIO);
		sigprocmask(SIG_BLOCK, &set, NULL);
		if (add_port(port_rfd, port_wfd, PORT_NAME, "--port-fds") < 0)
			return 1;
		return serve(-1, true);
	}
	if (lfd >= 0) {
		test_mode = no_set_time = true;
		fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
		return serve(lfd, false);
	}
	nics_up();
	/* Before looking for the port, so that no uevent is missed. */
	open_uevents();
	/* vsock first: a Firecracker or Cloud Hypervisor guest has no virtio
	 * port, and its host must not wait for the port search to give up. */
	pid_t vsock_pid = -1;
	if (vsock_port > 0) {
		int vfd = vsock_listen(vsock_port);
		if (vfd >= 0)
			vsock_pid = start_vsock_server(vfd, vsock_port);
	}
	int rc = serve_port();
	if (vsock_pid < 0)
		return rc;
	/* No virtio-serial port (or it failed): vsock alone serves the host.
	 * The agent lives as long as that server does, so init's restart
	 * loop sees a vsock server that died. */
	if (uevent_fd >= 0)
		close(uevent_fd);
	uevent_fd = -1;
	logmsg("serving vsock port %u only", vsock_port);
	int st = 0;
	while (waitpid(vsock_pid, &st, 0) < 0 && errno == EINTR)
		;
	logmsg("the vsock server exited (%s %d)", WIFEXITED(st) ? "status" : "signal",
	       WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	return 1;
}
