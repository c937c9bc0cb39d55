/* The far end of a socketpair for fuzz targets that read a stream: a thread
 * plays the peer (QEMU, the guest agent, the host) so that the code under
 * test runs its real socket paths, poll and partial reads included. */
#ifndef VMF_FUZZ_PEER_H
#define VMF_FUZZ_PEER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct fuzz_peer {
	pthread_t thread;
	int fd;                 /* the peer's end */
	const uint8_t *data;
	size_t len;
	/* Optional: sends data itself (e.g. after reading a request); when
	 * NULL, data is written as is.  Either way the peer then shuts down
	 * its writing side and reads until the code under test closes. */
	void (*send)(struct fuzz_peer *p);
	void *arg;
};

/* Starts the peer; returns the other end of the pair in *ours, or -1 (errno
 * set) when no socketpair or thread could be made. */
int fuzz_peer_start(struct fuzz_peer *p, int *ours);
/* Waits for the peer; call after the code under test closed *ours. */
void fuzz_peer_join(struct fuzz_peer *p);
/* Writes all of buf to the peer's end; false when the other end is gone. */
int fuzz_peer_write(struct fuzz_peer *p, const void *buf, size_t n);

#endif
