/* vmf-agent: the guest side of proto/agent.proto.
 *
 * Runs in the guest initramfs on the virtio-serial port named "agent".  The
 * host side comes and goes (template save, clone restore): while it is away
 * the port polls POLLHUP, so the agent waits for SIGIO, which virtio_console
 * sends on every host connect/disconnect of an O_ASYNC port.  No sleeps, so
 * a resumed clone answers within milliseconds.
 *
 * Test mode (--fd N) serves an already-open stream on the host and never
 * touches the host's clock, RNG or mounts. */
#include <ctype.h>
#include <stdarg.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/random.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "agent.pb-c.h"
#include "frame.h"

#define AGENT_VERSION "vmf-agent 0.1.0"
#define PORT_NAME "agent"
#define V9FS_MAGIC 0x01021997

static const char *share_dir = "/mnt/share";
static bool test_mode;

static void
logmsg(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "vmf-agent: %s\n", buf);
}

/* ---- helpers ---- */

static int
read_small(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t r = read(fd, buf, n - 1);
	close(fd);
	if (r < 0)
		return -1;
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
	uint64_t kib = 0;
	char line[128];
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemTotal: %lu kB", &kib) == 1)
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

/* Onlines every offline CPU and memory block; counts what is online. */
static void
online_all(unsigned *cpus_onlined, unsigned *blocks_onlined, uint64_t *online_mib)
{
	char path[300], state[32];
	DIR *d = opendir("/sys/devices/system/cpu");
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, "cpu", 3) || !isdigit((unsigned char)de->d_name[3]))
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/cpu/%s/online", de->d_name);
		if (read_small(path, state, sizeof(state)) == 0 && strcmp(state, "0") == 0 &&
		    write_small(path, "1") == 0)
			(*cpus_onlined)++;
	}
	if (d)
		closedir(d);
	uint64_t block = 128ull << 20;
	if (read_small("/sys/devices/system/memory/block_size_bytes", state, sizeof(state)) == 0)
		block = strtoull(state, NULL, 16);
	unsigned online_blocks = 0;
	d = opendir("/sys/devices/system/memory");
	while (d && (de = readdir(d))) {
		if (strncmp(de->d_name, "memory", 6) || !isdigit((unsigned char)de->d_name[6]))
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/memory/%s/state", de->d_name);
		if (read_small(path, state, sizeof(state)) < 0)
			continue;
		if (strcmp(state, "offline") == 0 && write_small(path, "online") == 0) {
			(*blocks_onlined)++;
			strcpy(state, "online");
		}
		if (strcmp(state, "online") == 0)
			online_blocks++;
	}
	if (d)
		closedir(d);
	*online_mib = (uint64_t)online_blocks * (block >> 20);
}

static int uevent_fd = -1;

/* Kernel uevents announce hot-added CPUs and memory blocks: the agent waits
 * on them instead of polling sysfs. */
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

/* ---- request handlers ---- */

typedef Vmf__Agent__AgentReply Reply;

static int
fail(Reply *r, int code, const char *fmt, ...)
{
	static char msg[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	r->error_code = code ? code : EIO;
	r->error_message = msg;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY__NOT_SET;
	return -1;
}

static Vmf__Agent__Ping pong = VMF__AGENT__PING__INIT;
static Vmf__Agent__GuestInfo info;
static Vmf__Agent__OnlineResult online_res;
static Vmf__Agent__RngSample rng;
static Vmf__Agent__TimeResult timeres;
static Vmf__Agent__MountResult mountres;
static uint8_t random_buf[16];
static char boot_id[64];
static char *entries[256];
static size_t n_entries;

static void
free_entries(void)
{
	for (size_t i = 0; i < n_entries; i++)
		free(entries[i]);
	n_entries = 0;
}

static int
fill_random(Reply *r, uint8_t *buf)
{
	if (getrandom(buf, 16, 0) != 16)
		return fail(r, errno, "getrandom: %s", strerror(errno));
	return 0;
}

static int
do_guest_info(Reply *r)
{
	vmf__agent__guest_info__init(&info);
	info.online_cpus = online_cpus();
	info.mem_total_kib = mem_total_kib();
	info.uptime_ns = (uint64_t)clock_ns(CLOCK_BOOTTIME);
	info.monotonic_ns = (uint64_t)clock_ns(CLOCK_MONOTONIC);
	info.realtime_ns = clock_ns(CLOCK_REALTIME);
	if (read_small("/proc/sys/kernel/random/boot_id", boot_id, sizeof(boot_id)) < 0)
		boot_id[0] = '\0';
	info.boot_id = boot_id;
	if (fill_random(r, random_buf) < 0)
		return -1;
	info.random.data = random_buf;
	info.random.len = 16;
	free_entries();
	DIR *d = opendir(share_dir);
	struct dirent *de;
	while (d && (de = readdir(d)) && n_entries < 256) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		entries[n_entries] = strdup(de->d_name);
		if (entries[n_entries])
			n_entries++;
	}
	if (d)
		closedir(d);
	info.share_entries = entries;
	info.n_share_entries = n_entries;
	info.agent_version = (char *)AGENT_VERSION;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_GUEST_INFO;
	r->guest_info = &info;
	return 0;
}

static int
do_online(Reply *r, const Vmf__Agent__OnlineCpuMem *req)
{
	if (test_mode)
		return fail(r, EPERM, "test mode does not change CPUs or memory");
	vmf__agent__online_result__init(&online_res);
	unsigned cpus_on = 0, blocks_on = 0;
	uint64_t mib = 0;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	uint32_t timeout = req->timeout_ms > 60000 ? 60000 : req->timeout_ms;
	for (;;) {
		drain_uevents();
		online_all(&cpus_on, &blocks_on, &mib);
		/* Boot memory does not fill whole blocks: allow one block short. */
		bool done = online_cpus() >= req->want_cpus && mib + 128 >= req->want_mem_mib;
		int64_t elapsed = (clock_ns(CLOCK_MONOTONIC) - ((int64_t)t0.tv_sec * 1000000000 + t0.tv_nsec)) / 1000000;
		if (done || elapsed >= timeout || uevent_fd < 0)
			break;
		struct pollfd p = { .fd = uevent_fd, .events = POLLIN };
		poll(&p, 1, (int)(timeout - elapsed));
	}
	online_res.online_cpus = online_cpus();
	online_res.mem_total_kib = mem_total_kib();
	online_res.cpus_onlined = cpus_on;
	online_res.mem_blocks_onlined = blocks_on;
	online_res.online_mem_mib = mib;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_ONLINE;
	r->online = &online_res;
	return 0;
}

static int
do_reseed(Reply *r, const Vmf__Agent__ReseedRng *req)
{
	size_t n = req->entropy.len;
	if (n < 16 || n > 512)
		return fail(r, EINVAL, "reseed needs 16 to 512 bytes of entropy, got %zu", n);
	if (!test_mode) {
		struct {
			int entropy_count;
			int buf_size;
			uint8_t buf[512];
		} pool;
		pool.entropy_count = (int)(n * 8);
		pool.buf_size = (int)n;
		memcpy(pool.buf, req->entropy.data, n);
		int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
		if (fd < 0)
			return fail(r, errno, "cannot open /dev/urandom: %s", strerror(errno));
		int rc = ioctl(fd, RNDADDENTROPY, &pool);
		int e = errno;
		/* Mix the new entropy into the CRNG now, not at its next
		 * scheduled reseed: clones must diverge before anything reads. */
		if (rc == 0)
			rc = ioctl(fd, RNDRESEEDCRNG), e = errno;
		close(fd);
		if (rc < 0)
			return fail(r, e, "reseeding the guest RNG: %s", strerror(e));
	}
	vmf__agent__rng_sample__init(&rng);
	if (fill_random(r, random_buf) < 0)
		return -1;
	rng.random.data = random_buf;
	rng.random.len = 16;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_RNG;
	r->rng = &rng;
	return 0;
}

static int
do_set_time(Reply *r, const Vmf__Agent__SetTime *req)
{
	if (test_mode)
		return fail(r, EPERM, "test mode does not set the clock");
	struct timespec ts = { .tv_sec = req->realtime_ns / 1000000000, .tv_nsec = req->realtime_ns % 1000000000 };
	if (req->realtime_ns <= 0 || clock_settime(CLOCK_REALTIME, &ts) < 0)
		return fail(r, req->realtime_ns <= 0 ? EINVAL : errno, "cannot set the guest clock: %s",
			    req->realtime_ns <= 0 ? "time must be positive" : strerror(errno));
	vmf__agent__time_result__init(&timeres);
	timeres.realtime_ns = clock_ns(CLOCK_REALTIME);
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_TIME;
	r->time = &timeres;
	return 0;
}

static int
do_mount(Reply *r, const Vmf__Agent__MountShare *req)
{
	const char *tag = req->tag ? req->tag : "";
	size_t n = strlen(tag);
	if (n == 0 || n > 31)
		return fail(r, EINVAL, "share tag must have 1 to 31 characters");
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)tag[i]) && tag[i] != '_' && tag[i] != '-')
			return fail(r, EINVAL, "share tag '%s' has a character other than letters, digits, _ and -", tag);
	if (test_mode)
		return fail(r, EPERM, "test mode does not mount");
	mkdir("/mnt", 0755);
	mkdir(share_dir, 0755);
	struct statfs sf;
	bool mounted = statfs(share_dir, &sf) == 0 && (unsigned long)sf.f_type == V9FS_MAGIC;
	if (!mounted && mount(tag, share_dir, "9p", MS_NODEV | MS_NOSUID, "trans=virtio,version=9p2000.L,msize=262144") < 0)
		return fail(r, errno, "cannot mount share %s at %s: %s", tag, share_dir, strerror(errno));
	vmf__agent__mount_result__init(&mountres);
	mountres.path = (char *)share_dir;
	r->body_case = VMF__AGENT__AGENT_REPLY__BODY_MOUNT;
	r->mount = &mountres;
	return 0;
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
		r->body_case = VMF__AGENT__AGENT_REPLY__BODY_PONG;
		r->pong = &pong;
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
	default:
		fail(r, EINVAL, "unknown request type");
		break;
	}
}

/* ---- framing ---- */

struct conn {
	int fd;
	uint8_t hdr[VMF_FRAME_HDR];
	size_t hdr_len;
	uint8_t *body;
	uint32_t body_want, body_len;
	uint32_t discard;            /* bytes of an oversized frame still to skip */
};

static void
reset(struct conn *c)
{
	free(c->body);
	c->body = NULL;
	c->hdr_len = 0;
	c->body_want = c->body_len = 0;
	c->discard = 0;
}

static void
send_reply(struct conn *c, Reply *r)
{
	uint8_t buf[VMF_FRAME_HDR + AGENT_MAX_FRAME];
	size_t n = vmf__agent__agent_reply__get_packed_size(r);
	if (n > AGENT_MAX_FRAME) {
		fail(r, EMSGSIZE, "reply of %zu bytes exceeds the frame limit", n);
		n = vmf__agent__agent_reply__get_packed_size(r);
	}
	vmf_frame_put_len(buf, (uint32_t)n);
	vmf__agent__agent_reply__pack(r, buf + VMF_FRAME_HDR);
	/* A host that stops reading for a second has gone; drop the reply. */
	if (vmf_write_full(c->fd, buf, VMF_FRAME_HDR + n, vmf_now_ms() + 1000, NULL) < 0)
		logmsg("could not send a reply");
}

static void
error_reply(struct conn *c, uint64_t id, int code, const char *msg)
{
	Reply r = VMF__AGENT__AGENT_REPLY__INIT;
	r.id = id;
	r.error_code = code;
	r.error_message = (char *)msg;
	send_reply(c, &r);
}

static void
frame_done(struct conn *c)
{
	Vmf__Agent__AgentRequest *req = vmf__agent__agent_request__unpack(NULL, c->body_len, c->body);
	if (!req) {
		error_reply(c, 0, EBADMSG, "request frame is not a valid agent request");
	} else {
		Reply r = VMF__AGENT__AGENT_REPLY__INIT;
		handle(req, &r);
		send_reply(c, &r);
		vmf__agent__agent_request__free_unpacked(req, NULL);
	}
	free(c->body);
	c->body = NULL;
	c->hdr_len = 0;
	c->body_len = c->body_want = 0;
}

/* Consumes bytes; frames are answered as they complete. */
static void
feed(struct conn *c, const uint8_t *p, size_t n)
{
	while (n > 0) {
		if (c->discard) {
			size_t k = n < c->discard ? n : c->discard;
			c->discard -= (uint32_t)k;
			p += k;
			n -= k;
			continue;
		}
		if (c->hdr_len < VMF_FRAME_HDR) {
			c->hdr[c->hdr_len++] = *p++;
			n--;
			if (c->hdr_len < VMF_FRAME_HDR)
				continue;
			uint32_t len = vmf_frame_get_len(c->hdr);
			if (len > AGENT_MAX_FRAME) {
				char msg[96];
				snprintf(msg, sizeof(msg), "frame of %u bytes exceeds the limit of %u bytes", len,
					 AGENT_MAX_FRAME);
				error_reply(c, 0, EMSGSIZE, msg);
				/* Skip its payload as it streams in, without allocating. */
				c->discard = len;
				c->hdr_len = 0;
				continue;
			}
			c->body_want = len;
			c->body_len = 0;
			c->body = malloc(len ? len : 1);
			if (!c->body) {
				error_reply(c, 0, ENOMEM, "out of memory");
				c->discard = len;
				c->hdr_len = 0;
				continue;
			}
			if (len == 0)
				frame_done(c);
			continue;
		}
		size_t k = c->body_want - c->body_len;
		if (k > n)
			k = n;
		memcpy(c->body + c->body_len, p, k);
		c->body_len += (uint32_t)k;
		p += k;
		n -= k;
		if (c->body_len == c->body_want)
			frame_done(c);
	}
}

/* Serves one stream until EOF (test mode). */
static int
serve_fd(int fd)
{
	struct conn c = { .fd = fd };
	uint8_t buf[8192];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			poll(&p, 1, -1);
			continue;
		}
		if (n <= 0)
			break;
		feed(&c, buf, (size_t)n);
	}
	reset(&c);
	free_entries();
	return 0;
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
	/* /init loads virtio_console before starting us; the port shows up as
	 * soon as the driver probes it. */
	for (int i = 0; find_port(dev, sizeof(dev)) < 0; i++) {
		if (i == 500) {
			logmsg("no virtio-serial port named '%s'", PORT_NAME);
			return 1;
		}
		poll(NULL, 0, 10);
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGIO);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0 || sfd < 0) {
		logmsg("cannot open %s: %s", dev, strerror(errno));
		return 1;
	}
	fcntl(fd, F_SETOWN, getpid());
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC);
	logmsg("serving on %s", dev);
	struct conn c = { .fd = fd };
	uint8_t buf[8192];
	bool host_away = false;
	for (;;) {
		struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		/* While the host is away the port reports POLLHUP at once: wait
		 * for SIGIO (its return) instead. */
		int r = poll(host_away ? p + 1 : p, host_away ? 1 : 2, -1);
		if (r < 0 && errno != EINTR)
			return 1;
		struct signalfd_siginfo si;
		while (read(sfd, &si, sizeof(si)) == sizeof(si))
			host_away = false;
		if (host_away)
			continue;
		if (p[0].revents & POLLIN) {
			ssize_t n = read(fd, buf, sizeof(buf));
			if (n > 0) {
				feed(&c, buf, (size_t)n);
				continue;
			}
		}
		if (p[0].revents & (POLLHUP | POLLERR)) {
			/* A new host connection starts a new stream. */
			reset(&c);
			host_away = true;
		}
	}
}

int
main(int argc, char **argv)
{
	int fd = -1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--fd") && i + 1 < argc)
			fd = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--share-dir") && i + 1 < argc)
			share_dir = argv[++i];
		else if (!strcmp(argv[i], "--version")) {
			puts(AGENT_VERSION);
			return 0;
		} else {
			fprintf(stderr, "usage: vmf-agent [--fd N [--share-dir DIR]]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	if (fd >= 0) {
		test_mode = true;
		return serve_fd(fd);
	}
	open_uevents();
	return serve_port();
}
