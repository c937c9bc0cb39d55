/* vmf-agent: the guest side of proto/agent.proto.
 *
 * Runs in the guest initramfs on the virtio-serial port named "agent".  The
 * host side comes and goes (template save, clone restore, daemon restart):
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
 * (start_vsock_server) with the same serve()/struct conn code, one
 * connection at a time; a new connection replaces the current one, since
 * after a snapshot restore the VMM resets its vsock connections and the
 * host connects again.  The child dies with the agent (PR_SET_PDEATHSIG), so
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
 * socket (a unit test's unix socket) exactly as the vsock child does. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/netlink.h>
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
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.pb-c.h"
#include "frame.h"

#define AGENT_VERSION "vmf-agent 0.3.0"
#define PORT_NAME "agent"
/* How long to wait at boot for virtio_console to announce the port. */
#define PORT_WAIT_MS 10000
/* Share listing budget: leaves room in a 64 KiB reply for the other fields. */
#define SHARE_NAMES_MAX 1024
#define SHARE_BYTES_MAX (48u * 1024u)
#define OBUF_SIZE (VMF_FRAME_HDR + (size_t)VMF_AGENT_MAX_FRAME)
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
	uint8_t random[16];
	char boot_id[64];
	char machine_id[64];
	char hostname[72];
	char *names[SHARE_NAMES_MAX];
	size_t n_names;
} out;

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

static void
handle(const Vmf__Agent__AgentRequest *req, Reply *r)
{
	r->id = req->id;
	if (req->protocol_version != AGENT_PROTOCOL_VERSION) {
		fail(r, EPROTO, "agent protocol version %u is not supported (this agent speaks %u)",
		     req->protocol_version, AGENT_PROTOCOL_VERSION);
		return;
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
	case VMF__AGENT__AGENT_REQUEST__BODY_NEW_IDENTITY:
		do_new_identity(r, req->new_identity);
		break;
	case VMF__AGENT__AGENT_REQUEST__BODY_HANDOUT:
		do_handout(r, req->handout);
		break;
	default:
		/* A newer host, or a request without a body. */
		fail(r, EOPNOTSUPP, "request type %d is not supported by %s", (int)req->body_case, AGENT_VERSION);
		break;
	}
}

/* ---- one host connection: frame parser and reply queue ---- */

struct conn {
	int rfd, wfd;
	uint8_t hdr[VMF_FRAME_HDR];
	size_t hdr_len;
	uint8_t *body;               /* non-NULL while a frame's payload is read */
	uint32_t body_want, body_len;
	uint32_t discard;            /* bytes of an oversized frame still to skip */
	/* The reply not yet written.  Requests are parsed only while this is
	 * empty, so a host that stops reading cannot make the agent buffer
	 * more than one reply. */
	uint8_t *obuf;
	size_t olen, ooff;
};

static void
conn_reset(struct conn *c)
{
	free(c->body);
	c->body = NULL;
	c->hdr_len = 0;
	c->body_want = c->body_len = 0;
	c->discard = 0;
	c->olen = c->ooff = 0;
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
	if (c->olen + VMF_FRAME_HDR + n > OBUF_SIZE) {
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

static void
frame_done(struct conn *c)
{
	Vmf__Agent__AgentRequest *req = vmf__agent__agent_request__unpack(NULL, c->body_len, c->body);
	if (!req) {
		error_reply(c, 0, EBADMSG, "request frame of %u bytes is not a valid agent request", c->body_len);
	} else {
		Reply r = VMF__AGENT__AGENT_REPLY__INIT;
		handle(req, &r);
		queue_reply(c, &r);
		vmf__agent__agent_request__free_unpacked(req, NULL);
		free_names();
	}
	free(c->body);
	c->body = NULL;
	c->hdr_len = 0;
	c->body_len = c->body_want = 0;
}

/* Consumes input bytes; returns how many it took.  Stops at each queued
 * reply so that it is written before more requests are parsed. */
static size_t
feed(struct conn *c, const uint8_t *p, size_t n)
{
	size_t used = 0;
	while (used < n && c->olen == 0) {
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

/* Writes what it can of the queued reply; -1 when the peer is gone. */
static int
flush(struct conn *c)
{
	while (c->ooff < c->olen) {
		ssize_t w = write(c->wfd, c->obuf + c->ooff, c->olen - c->ooff);
		if (w > 0) {
			c->ooff += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			return 0;
		return -1;
	}
	c->olen = c->ooff = 0;
	return 0;
}

/* Accepts the next connection on a listening socket (non-blocking, close
 * on exec); -1 when there is none to take or it was refused.  A guest-local
 * vsock peer (CID 1, reached through vsock_loopback) is refused unless
 * --vsock-allow-local: the agent runs as root and only the host may drive
 * it, or replace the host's connection. */
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

/* Serves until the stream ends (test mode: returns 0) or, on the virtio
 * port (sfd >= 0), forever: a host that goes away resets the connection
 * state and the agent sleeps on SIGIO until one comes back.
 *
 * With a listening socket (lfd >= 0: vsock, or a test's unix socket) it
 * serves forever, one accepted connection at a time: c->rfd is -1 until
 * the first one, a connection that ends is closed, and a new one replaces
 * the current one (after a snapshot restore the VMM resets its vsock
 * connections and the host connects again; an old stream that was never
 * reset must not keep the new host out).  The listener is polled only for
 * POLLIN, so an idle listener costs nothing. */
static int
serve(struct conn *c, int sfd, int lfd)
{
	static uint8_t ibuf[16384];
	size_t ilen = 0, ioff = 0;
	bool host_away = false;
	c->obuf = malloc(OBUF_SIZE);
	if (!c->obuf) {
		logmsg("out of memory");
		return 1;
	}
	for (;;) {
		/* Parse what is buffered before waiting for more. */
		if (!host_away && ioff < ilen && c->olen == 0)
			ioff += feed(c, ibuf + ioff, ilen - ioff);
		if (ioff == ilen)
			ioff = ilen = 0;

		struct pollfd p[3];
		nfds_t np = 0;
		int ir = -1, iw = -1, is = -1, il = -1;
		if (c->rfd < 0) {
			/* Listener mode, no connection yet. */
		} else if (!host_away && c->olen > 0) {
			iw = (int)np;
			p[np++] = (struct pollfd){ .fd = c->wfd, .events = POLLOUT };
		} else if (!host_away && ilen == 0) {
			ir = (int)np;
			p[np++] = (struct pollfd){ .fd = c->rfd, .events = POLLIN };
		}
		if (sfd >= 0) {
			is = (int)np;
			p[np++] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		}
		if (lfd >= 0) {
			il = (int)np;
			p[np++] = (struct pollfd){ .fd = lfd, .events = POLLIN };
		}
		if (poll(p, np, -1) < 0) {
			if (errno == EINTR)
				continue;
			logmsg("poll: %s", strerror(errno));
			return 1;
		}
		bool gone = false;
		if (iw >= 0 && p[iw].revents) {
			/* With the host away the port polls POLLHUP and never
			 * POLLOUT; what is queued was for the old host. */
			if (flush(c) < 0 || (c->olen > 0 && (p[iw].revents & (POLLHUP | POLLERR))))
				gone = true;
		}
		if (ir >= 0 && p[ir].revents) {
			ssize_t n = read(c->rfd, ibuf, sizeof(ibuf));
			if (n > 0) {
				ilen = (size_t)n;
				ioff = 0;
			} else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
				/* EOF (the port reads 0 while the host is
				 * away) or an error. */
				gone = true;
			}
		}
		if (gone && lfd >= 0) {
			/* The peer closed or was reset: wait for the next one. */
			close(c->rfd);
			c->rfd = c->wfd = -1;
			conn_reset(c);
			ilen = ioff = 0;
		} else if (gone) {
			if (sfd < 0) {
				conn_reset(c);
				free(c->obuf);
				return 0;
			}
			/* What the old host left half-sent or unread is void;
			 * the next host starts a new stream. */
			conn_reset(c);
			ilen = ioff = 0;
			host_away = true;
		}
		/* Signals are drained after the port was looked at: a host
		 * that came back since poll() returned leaves its SIGIO here,
		 * and any later one wakes the next poll(). */
		if (is >= 0 && p[is].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				;
			host_away = false;
		}
		if (il >= 0 && p[il].revents) {
			int fd = accept_peer(lfd);
			if (fd >= 0) {
				/* What the old peer left half-sent or unread
				 * is void, as on the virtio port. */
				if (c->rfd >= 0) {
					logmsg("a new connection replaces the current one");
					close(c->rfd);
				}
				conn_reset(c);
				ilen = ioff = 0;
				c->rfd = c->wfd = fd;
			}
		}
	}
}

/* ---- the virtio-serial port ---- */

static int
find_port(char *dev, size_t n)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *de;
	int r = -1;
	while (d && (de = readdir(d))) {
		char path[300], name[64];
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", de->d_name);
		if (read_small(path, name, sizeof(name)) == 0 && strcmp(name, PORT_NAME) == 0) {
			snprintf(dev, n, "/dev/%s", de->d_name);
			r = 0;
			break;
		}
	}
	if (d)
		closedir(d);
	return r;
}

static int
serve_port(void)
{
	char dev[300];
	/* The port's name arrives from the host after the driver probes; the
	 * kernel announces it with a uevent ("change" on the port). */
	int64_t deadline = now_ms() + PORT_WAIT_MS;
	while (find_port(dev, sizeof(dev)) < 0) {
		if (!wait_uevent(deadline)) {
			logmsg("no virtio-serial port named '%s' after %d ms", PORT_NAME, PORT_WAIT_MS);
			return 1;
		}
		drain_uevents();
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGIO);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		logmsg("signalfd: %s", strerror(errno));
		return 1;
	}
	int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		logmsg("cannot open %s: %s", dev, strerror(errno));
		return 1;
	}
	/* SIGIO on host connect/disconnect is what ends a wait while the
	 * host is away (see the top of this file). */
	if (fcntl(fd, F_SETOWN, getpid()) < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC) < 0) {
		logmsg("cannot enable SIGIO on %s: %s", dev, strerror(errno));
		return 1;
	}
	logmsg("%s serving on %s", AGENT_VERSION, dev);
	struct conn c = { .rfd = fd, .wfd = fd };
	return serve(&c, sfd, -1);
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
	struct conn c = { .rfd = -1, .wfd = -1 };
	_exit(serve(&c, -1, lfd));
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
		"usage: vmf-agent                  serve the virtio-serial port '%s' and vsock port %u (in the guest)\n"
		"       vmf-agent --fd N           serve the open stream fd N (test mode)\n"
		"       vmf-agent --stdio          serve stdin/stdout (test mode)\n"
		"       vmf-agent --listen-fd N    serve the connections of the listening socket fd N, one at a\n"
		"                                  time, a new one replacing the current one (test mode)\n"
		"options: --share-dir PATH (default /mnt/share), --no-set-time, --version,\n"
		"         --machine-id-file PATH (default /etc/machine-id; in test mode written only when given),\n"
		"         --vsock-port N (0: no vsock), --vsock-allow-local (accept guest-local vsock peers)\n",
		PORT_NAME, VSOCK_PORT_DEFAULT);
}

int
main(int argc, char **argv)
{
	int rfd = -1, wfd = -1, lfd = -1;
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
		} else if (!strcmp(argv[i], "--machine-id-file") && i + 1 < argc) {
			machine_id_file = argv[++i];
			machine_id_given = true;
		} else if (!strcmp(argv[i], "--no-set-time")) {
			no_set_time = true;
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
	if (rfd >= 0 && lfd >= 0) {
		fprintf(stderr, "vmf-agent: --listen-fd cannot be combined with --fd or --stdio\n");
		return 2;
	}
	if (rfd >= 0) {
		test_mode = no_set_time = true;
		fcntl(rfd, F_SETFL, fcntl(rfd, F_GETFL) | O_NONBLOCK);
		if (wfd != rfd)
			fcntl(wfd, F_SETFL, fcntl(wfd, F_GETFL) | O_NONBLOCK);
		struct conn c = { .rfd = rfd, .wfd = wfd };
		return serve(&c, -1, -1);
	}
	if (lfd >= 0) {
		test_mode = no_set_time = true;
		fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
		struct conn c = { .rfd = -1, .wfd = -1 };
		return serve(&c, -1, lfd);
	}
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
