/* What every room of the agent uses: its log line, small sysfs/procfs file
 * reads and writes, clocks, and the kernel's uevents. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/netlink.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"

/* One line on stderr, which /init points at the serial console. */
void
logmsg(const char *fmt, ...)
{
	char buf[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "vmf-agent: %s\n", buf);
}

int
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

int
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

int
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

int64_t
clock_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Hot-added CPUs and memory blocks, disks, and the virtio port's name
 * arrive asynchronously and are announced by uevents: waiting on them
 * replaces polling sysfs on a timer. */
static int uevent_fd = -1;

void
uevent_open(void)
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

void
uevent_close(void)
{
	if (uevent_fd >= 0)
		close(uevent_fd);
	uevent_fd = -1;
}

void
uevent_drain(void)
{
	char buf[4096];
	while (uevent_fd >= 0 && recv(uevent_fd, buf, sizeof(buf), 0) > 0)
		;
}

bool
uevent_wait(int64_t deadline)
{
	int64_t left = deadline - vmf_now_ms();
	if (uevent_fd < 0 || left <= 0)
		return false;
	struct pollfd p = { .fd = uevent_fd, .events = POLLIN };
	return poll(&p, 1, left > 60000 ? 60000 : (int)left) > 0;
}
