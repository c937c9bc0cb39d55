/* Reaching a QMP socket that may not exist yet: a QEMU that was just
 * started, or one a restarted daemon adopts.  The socket's directory is
 * watched (inotify) between attempts, so a socket that appears is found at
 * once, without a polling interval; the handshake is qmp.c's. */
#include "qmp.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "sockaddr.h"
#include "frame.h"

/* Waits for something to be created in the directory watched by ino, or
 * (without a watch) a short while: there is no event for a listen(). */
static void
wait_for_socket(int ino, int *backoff_ms, int64_t deadline)
{
	int left = vmf_ms_left(deadline);
	if (ino >= 0) {
		struct pollfd p = { .fd = ino, .events = POLLIN };
		if (poll(&p, 1, left) > 0) {
			_Alignas(struct inotify_event) char evbuf[4096];
			while (read(ino, evbuf, sizeof(evbuf)) > 0)
				;
		}
		return;
	}
	int wait = left < 0 || *backoff_ms < left ? *backoff_ms : left;
	poll(NULL, 0, wait);
	if (*backoff_ms < 100)
		*backoff_ms *= 2;
}

static int
watch_parent(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		strcpy(dir, ".");
	int ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (ino >= 0 && inotify_add_watch(ino, dir, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) < 0) {
		log_debug("cannot watch %s for the QMP socket (%s); retrying periodically", dir,
			  strerror(errno));
		close(ino);
		ino = -1;
	}
	return ino;
}

int
vmf_qmp_connect(const char *path, int timeout_ms, struct vmf_qmp **out, struct vmf_error *err)
{
	*out = NULL;
	struct sockaddr_un sa;
	int r = vmf_unix_addr(&sa, NULL, path, err);
	if (r < 0)
		return vmf_error_prefix(err, "cannot reach QMP");
	int64_t deadline = vmf_deadline_after(timeout_ms);
	int ino = -1, backoff = 5;
	bool watching = false;
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			r = vmf_err_sys(err, errno, "cannot create a socket for QMP");
			break;
		}
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			if (ino >= 0)
				close(ino);
			r = vmf_qmp_open_fd(fd, vmf_ms_left(deadline), out, err);
			if (r < 0)
				vmf_error_prefix(err, "QMP socket %s", path);
			return r;
		}
		int e = errno;
		close(fd);
		if (e == EINTR)
			continue;
		if (e != ENOENT && e != ECONNREFUSED) {
			r = vmf_err_sys(err, e, "cannot connect to the QMP socket %s", path);
			break;
		}
		struct stat st;
		if (e == ECONNREFUSED && stat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
			/* connect() says "refused" for a plain file too; it will not
			 * turn into a socket by waiting. */
			r = vmf_err(err, ENOTSOCK, "the QMP socket %s is not a socket", path);
			break;
		}
		if (vmf_ms_left(deadline) == 0) {
			r = vmf_err_sys(err, e, "the QMP socket %s did not accept a connection within %d ms",
					path, timeout_ms);
			break;
		}
		if (e == ENOENT && !watching) {
			/* Watch before the next attempt, so that a socket created in
			 * between is either found by connect or reported by inotify. */
			watching = true;
			ino = watch_parent(path);
			continue;
		}
		wait_for_socket(e == ENOENT ? ino : -1, &backoff, deadline);
	}
	if (ino >= 0)
		close(ino);
	return r;
}
