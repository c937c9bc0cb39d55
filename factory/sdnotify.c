#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "sdnotify.h"
#include "sockaddr.h"

static struct sockaddr_un notify_addr;
static socklen_t notify_len;   /* 0: no socket */

bool
vmf_sd_notify_init(void)
{
	notify_len = 0;
	const char *e = getenv("NOTIFY_SOCKET");
	if (!e || !*e)
		return false;
	socklen_t len;
	if ((e[0] != '/' && e[0] != '@') || vmf_unix_addr(&notify_addr, &len, e, NULL) < 0) {
		log_warn("ignoring NOTIFY_SOCKET=%s: not an absolute path or @abstract name that fits a socket "
			 "address", e);
		unsetenv("NOTIFY_SOCKET");
		return false;
	}
	if (e[0] == '@') {
		notify_addr.sun_path[0] = '\0';   /* abstract namespace: no trailing NUL counted */
		len--;
	}
	notify_len = len;
	unsetenv("NOTIFY_SOCKET");
	return true;
}

void
vmf_sd_notify(const char *fmt, ...)
{
	if (!notify_len)
		return;
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		log_debug("sd_notify: socket: %s", strerror(errno));
		return;
	}
	if (sendto(fd, buf, (size_t)n, MSG_NOSIGNAL, (const struct sockaddr *)&notify_addr, notify_len) < 0)
		log_debug("sd_notify: sendto: %s", strerror(errno));
	close(fd);
}
