/* A clone's own identity and clock: the guest RNG reseeded from the host's
 * entropy, a fresh boot id and machine id, the realtime clock, and the
 * hand-out (clock, hostname, NIC).  Test mode validates and echoes: it
 * never touches the host's clock, RNG, hostname or mounts, and writes a
 * machine id only to a --machine-id-file given on the command line. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"
/* Where a clone's own boot id lives, bind-mounted over BOOT_ID_PATH. */
#define BOOT_ID_DIR "/run/vmf-agent"
#define BOOT_ID_FILE BOOT_ID_DIR "/boot_id"

int
identity_sample_random(struct agent_call *call, uint8_t out[16])
{
	/* getrandom() on a fresh guest may block until the CRNG is ready;
	 * virtio-rng and the host's entropy make that brief. */
	ssize_t n;
	while ((n = getrandom(out, 16, 0)) < 0 && errno == EINTR)
		;
	if (n != 16) {
		reply_error(call, n < 0 ? errno : EIO, "getrandom: %s", n < 0 ? strerror(errno) : "short read");
		return -1;
	}
	return 0;
}

void
identity_hostname(char *buf, size_t n)
{
	if (gethostname(buf, n - 1) < 0)
		buf[0] = '\0';
	buf[n - 1] = '\0';
}

/* "" when the image has no machine id (or an empty one). */
void
identity_machine_id(char *buf, size_t n)
{
	if (read_small(agent_options.machine_id_file, buf, n) < 0)
		buf[0] = '\0';
}

/* Mixes n host bytes into the input pool and reseeds the CRNG from it at
 * once, not at its next scheduled reseed: clones must diverge before
 * anything reads.  Test mode validates only. */
static int
reseed(struct agent_call *call, const uint8_t *entropy, size_t n)
{
	if (n < 16 || n > 512) {
		reply_error(call, EINVAL, "reseed needs 16 to 512 bytes of entropy, got %zu", n);
		return -1;
	}
	if (agent_options.test_mode)
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
		reply_error(call, errno, "cannot open /dev/urandom: %s", strerror(errno));
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
		reply_error(call, e, "reseeding the guest RNG (%s): %s", what, strerror(e));
		return -1;
	}
	return 0;
}

void
identity_reseed_rng(struct agent_call *call)
{
	const Vmf__Agent__ReseedRng *req = call->req->reseed_rng;
	struct {
		Vmf__Agent__RngSample rng;
		uint8_t random[16];
	} *body = reply_body(call, sizeof(*body), NULL);
	if (!body || reseed(call, req->entropy.data, req->entropy.len) < 0 ||
	    identity_sample_random(call, body->random) < 0)
		return;
	vmf__agent__rng_sample__init(&body->rng);
	body->rng.random.data = body->random;
	body->rng.random.len = sizeof(body->random);
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_RNG;
	call->reply.rng = &body->rng;
}

/* Sets the clock (--no-set-time and test mode: only validates); *now is
 * the guest's realtime afterwards. */
static int
set_clock(struct agent_call *call, int64_t ns, int64_t *now)
{
	if (ns <= 0) {
		reply_error(call, EINVAL, "cannot set the guest clock to %lld ns: time must be positive", (long long)ns);
		return -1;
	}
	if (agent_options.no_set_time) {
		*now = ns;
		return 0;
	}
	struct timespec ts = { .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };
	if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
		reply_error(call, errno, "cannot set the guest clock: %s", strerror(errno));
		return -1;
	}
	*now = clock_ns(CLOCK_REALTIME);
	return 0;
}

void
identity_set_time(struct agent_call *call)
{
	Vmf__Agent__TimeResult *t = reply_body(call, sizeof(*t), NULL);
	if (!t)
		return;
	vmf__agent__time_result__init(t);
	if (set_clock(call, call->req->set_time->realtime_ns, &t->realtime_ns) < 0)
		return;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_TIME;
	call->reply.time = t;
}

/* 16 bytes as a version 4 UUID's bits (what systemd does to machine ids). */
static void
make_v4(uint8_t b[16])
{
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
}

/* A fresh boot id, bind-mounted over the kernel's.  The kernel makes its
 * own on the first read and keeps it: in an image where anything read it
 * before the template was saved (systemd does at boot), every clone would
 * read the same one.  Drawn after the reseed, so clones differ.  Test mode
 * makes one up without mounting it. */
static int
new_boot_id(struct agent_call *call, char *boot_id, size_t n)
{
	uint8_t b[16];
	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
		reply_error(call, errno, "getrandom for a boot id: %s", strerror(errno));
		return -1;
	}
	make_v4(b);
	snprintf(boot_id, n, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
		 b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
	if (agent_options.test_mode)
		return 0;
	char line[48];
	snprintf(line, sizeof(line), "%s\n", boot_id);
	/* The default image's initramfs has no /run. */
	if ((mkdir("/run", 0755) < 0 && errno != EEXIST) || (mkdir(BOOT_ID_DIR, 0755) < 0 && errno != EEXIST) ||
	    write_file_atomic(BOOT_ID_FILE, line) < 0) {
		reply_error(call, errno, "cannot write %s: %s", BOOT_ID_FILE, strerror(errno));
		return -1;
	}
	/* A second identity replaces the first rather than stacking on it. */
	umount2(BOOT_ID_PATH, MNT_DETACH);
	if (mount(BOOT_ID_FILE, BOOT_ID_PATH, NULL, MS_BIND, NULL) < 0) {
		reply_error(call, errno, "cannot bind-mount %s over %s: %s", BOOT_ID_FILE, BOOT_ID_PATH,
			    strerror(errno));
		return -1;
	}
	char now[64];
	if (read_small(BOOT_ID_PATH, now, sizeof(now)) < 0 || strcmp(now, boot_id) != 0) {
		reply_error(call, EIO, "%s reads '%s' after mounting the clone's boot id '%s'", BOOT_ID_PATH, now,
			    boot_id);
		return -1;
	}
	return 0;
}

/* Rewrites the machine id where the image has one: a systemd-less image
 * (the default busybox one) has none and nothing that would read it. */
static int
new_machine_id(struct agent_call *call, const uint8_t *bytes, size_t n, char *machine_id, size_t idn)
{
	const char *file = agent_options.machine_id_file;
	machine_id[0] = '\0';
	if (n == 0 || (agent_options.test_mode && !agent_options.machine_id_given) || access(file, F_OK) < 0)
		return 0;
	if (n != 16) {
		reply_error(call, EINVAL, "a machine id needs 16 bytes, got %zu", n);
		return -1;
	}
	uint8_t b[16];
	memcpy(b, bytes, 16);
	make_v4(b);
	char line[40];
	for (int i = 0; i < 16; i++)
		snprintf(line + 2 * i, 3, "%02x", b[i]);
	snprintf(line + 32, sizeof(line) - 32, "\n");
	if (write_file_atomic(file, line) < 0) {
		reply_error(call, errno, "cannot write %s: %s", file, strerror(errno));
		return -1;
	}
	identity_machine_id(machine_id, idn);
	return 0;
}

void
identity_renew(struct agent_call *call)
{
	const Vmf__Agent__NewIdentity *req = call->req->new_identity;
	if (req->machine_id.len != 0 && req->machine_id.len != 16) {
		reply_error(call, EINVAL, "a machine id needs 16 bytes, got %zu", req->machine_id.len);
		return;
	}
	struct {
		Vmf__Agent__Identity id;
		uint8_t random[16];
		char boot_id[64];
		char machine_id[64];
	} *body = reply_body(call, sizeof(*body), NULL);
	/* The reseed first: the boot id and the sample are drawn from the
	 * clone's own CRNG state. */
	if (!body || reseed(call, req->entropy.data, req->entropy.len) < 0 ||
	    new_boot_id(call, body->boot_id, sizeof(body->boot_id)) < 0 ||
	    new_machine_id(call, req->machine_id.data, req->machine_id.len, body->machine_id,
			   sizeof(body->machine_id)) < 0 ||
	    identity_sample_random(call, body->random) < 0)
		return;
	Vmf__Agent__Identity *id = &body->id;
	vmf__agent__identity__init(id);
	id->random.data = body->random;
	id->random.len = sizeof(body->random);
	id->boot_id = body->boot_id;
	id->machine_id = body->machine_id;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_IDENTITY;
	call->reply.identity = id;
}

/* A sandbox id's character set (the daemon checks it too). */
static bool
valid_hostname(struct agent_call *call, const char *name)
{
	size_t n = strlen(name);
	if (n > 64 || (n > 0 && !isalnum((unsigned char)name[0]))) {
		reply_error(call, EINVAL, "hostname must be 1 to 64 characters starting with a letter or digit");
		return false;
	}
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)name[i]) && !strchr("_-.", name[i])) {
			reply_error(call, EINVAL,
				    "hostname '%s' has a character other than letters, digits, '_', '-' and '.'", name);
			return false;
		}
	return true;
}

/* The clock, the hostname and the NIC of the VM's new owner, in one round
 * trip.  Test mode echoes the time and hostname. */
void
identity_handout(struct agent_call *call)
{
	const Vmf__Agent__Handout *req = call->req->handout;
	bool test_mode = agent_options.test_mode;
	const char *name = req->hostname ? req->hostname : "";
	size_t n = strlen(name);
	if (!valid_hostname(call, name))
		return;
	struct {
		Vmf__Agent__HandoutResult h;
		char hostname[72];
		char boot_id[64];
		char net_error[300];
	} *body = reply_body(call, sizeof(*body), NULL);
	if (!body)
		return;
	Vmf__Agent__HandoutResult *h = &body->h;
	vmf__agent__handout_result__init(h);
	/* The clock first: it is what the host timed. */
	if (set_clock(call, req->realtime_ns, &h->realtime_ns) < 0)
		return;
	if (n > 0 && !test_mode && sethostname(name, n) < 0) {
		reply_error(call, errno, "cannot set the hostname to '%s': %s", name, strerror(errno));
		return;
	}
	if (test_mode && n > 0)
		snprintf(body->hostname, sizeof(body->hostname), "%s", name);
	else
		identity_hostname(body->hostname, sizeof(body->hostname));
	if (test_mode || read_small(BOOT_ID_PATH, body->boot_id, sizeof(body->boot_id)) < 0)
		body->boot_id[0] = '\0';
	h->hostname = body->hostname;
	h->boot_id = body->boot_id;
	/* Reported, not failed: the clock and hostname are set, and the host
	 * decides what a NIC that is not configured means. */
	char *why = body->net_error;
	size_t whylen = sizeof(body->net_error);
	if (req->net_mac.len == 6 && !test_mode)
		nic_configure(req, why, whylen);
	else if (req->net_mac.len && req->net_mac.len != 6)
		snprintf(why, whylen, "net_mac has %zu bytes, not 6", req->net_mac.len);
	else if (nic_is_configured() && !test_mode)
		nic_reset(why, whylen);
	h->net_error = why;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_HANDOUT;
	call->reply.handout = h;
}
