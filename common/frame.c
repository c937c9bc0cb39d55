#include "frame.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int64_t
vmf_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
vmf_deadline_after(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : vmf_now_ms() + timeout_ms;
}

int
vmf_ms_left(int64_t deadline)
{
	if (deadline < 0)
		return -1;
	int64_t left = deadline - vmf_now_ms();
	if (left <= 0)
		return 0;
	return left > INT_MAX ? INT_MAX : (int)left;
}

static int
wait_fd(int fd, short events, int64_t deadline_ms, struct vmf_error *err)
{
	for (;;) {
		int timeout = -1;
		if (deadline_ms >= 0) {
			int64_t left = deadline_ms - vmf_now_ms();
			if (left <= 0)
				return vmf_err(err, ETIMEDOUT, "timed out waiting for the peer");
			timeout = left > 60000 ? 60000 : (int)left;
		}
		struct pollfd p = { .fd = fd, .events = events };
		int r = poll(&p, 1, timeout);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return vmf_err_sys(err, errno, "poll");
		if (r > 0)
			return 0;
	}
}

int
vmf_read_full(int fd, void *buf, size_t n, int64_t deadline_ms, struct vmf_error *err)
{
	size_t done = 0;
	while (done < n) {
		/* Poll first: the fd may be blocking, and the deadline must hold. */
		if (deadline_ms >= 0) {
			int w = wait_fd(fd, POLLIN, deadline_ms, err);
			if (w < 0)
				return w;
		}
		ssize_t r = read(fd, (char *)buf + done, n - done);
		if (r > 0) {
			done += (size_t)r;
			continue;
		}
		if (r == 0)
			return vmf_err(err, EPIPE, "peer closed the connection%s",
				       done ? " in the middle of a frame" : "");
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return vmf_err_sys(err, errno, "read");
		int w = wait_fd(fd, POLLIN, deadline_ms, err);
		if (w < 0)
			return w;
	}
	return 0;
}

int
vmf_write_full(int fd, const void *buf, size_t n, int64_t deadline_ms, struct vmf_error *err)
{
	size_t done = 0;
	bool sock = true;
	while (done < n) {
		/* send(MSG_NOSIGNAL): a peer that went away is an EPIPE error, not
		 * a SIGPIPE that kills the caller.  Pipes and ports use write. */
		ssize_t r = sock ? send(fd, (const char *)buf + done, n - done, MSG_NOSIGNAL) : -1;
		if (r < 0 && sock && errno == ENOTSOCK) {
			sock = false;
			r = write(fd, (const char *)buf + done, n - done);
		} else if (!sock) {
			r = write(fd, (const char *)buf + done, n - done);
		}
		if (r > 0) {
			done += (size_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno != EAGAIN)
			return vmf_err_sys(err, errno, "write");
		int w = wait_fd(fd, POLLOUT, deadline_ms, err);
		if (w < 0)
			return w;
	}
	return 0;
}

int
vmf_frame_write(int fd, const void *buf, size_t len, int64_t deadline_ms, struct vmf_error *err)
{
	if (len > UINT32_MAX)
		return vmf_err(err, EMSGSIZE, "frame of %zu bytes is too large", len);
	uint8_t h[VMF_FRAME_HDR];
	vmf_frame_put_len(h, (uint32_t)len);
	int r = vmf_write_full(fd, h, sizeof(h), deadline_ms, err);
	if (r < 0)
		return r;
	return len ? vmf_write_full(fd, buf, len, deadline_ms, err) : 0;
}

int
vmf_frame_read(int fd, uint8_t **out, size_t *len, size_t max, int64_t deadline_ms,
	       struct vmf_error *err)
{
	uint8_t h[VMF_FRAME_HDR];
	*out = NULL;
	*len = 0;
	int r = vmf_read_full(fd, h, sizeof(h), deadline_ms, err);
	if (r < 0)
		return r;
	uint32_t n = vmf_frame_get_len(h);
	*len = n;
	if (n > max)
		return vmf_err(err, EMSGSIZE, "frame of %u bytes exceeds the limit of %zu bytes", n, max);
	uint8_t *buf = malloc(n ? n : 1);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory for a %u byte frame", n);
	r = vmf_read_full(fd, buf, n, deadline_ms, err);
	if (r < 0) {
		free(buf);
		return r;
	}
	*out = buf;
	return 0;
}
