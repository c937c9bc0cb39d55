#include "fuzz_peer.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

int
fuzz_peer_write(struct fuzz_peer *p, const void *buf, size_t n)
{
	const uint8_t *b = buf;
	while (n > 0) {
		ssize_t w = send(p->fd, b, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return 0;
		b += w;
		n -= (size_t)w;
	}
	return 1;
}

static void *
run(void *arg)
{
	struct fuzz_peer *p = arg;
	if (p->send)
		p->send(p);
	else
		fuzz_peer_write(p, p->data, p->len);
	/* EOF for the reader: every target ends at once instead of at its
	 * timeout, which keeps runs fast and deterministic. */
	shutdown(p->fd, SHUT_WR);
	/* Keep reading what the code under test sends, so that it never
	 * blocks on a full socket buffer. */
	char sink[4096];
	for (;;) {
		ssize_t r = read(p->fd, sink, sizeof(sink));
		if (r > 0 || (r < 0 && errno == EINTR))
			continue;
		break;
	}
	return NULL;
}

int
fuzz_peer_start(struct fuzz_peer *p, int *ours)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	p->fd = sv[1];
	int e = pthread_create(&p->thread, NULL, run, p);
	if (e) {
		close(sv[0]);
		close(sv[1]);
		errno = e;
		return -1;
	}
	*ours = sv[0];
	return 0;
}

void
fuzz_peer_join(struct fuzz_peer *p)
{
	pthread_join(p->thread, NULL);
	close(p->fd);
}
