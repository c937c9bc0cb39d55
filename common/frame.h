/* Length-prefixed frames: 4-byte big-endian length, then the payload.
 * Used by the guest agent channel and the control socket (blocking side;
 * the daemon decodes from libevent buffers with vmf_frame_get_len()). */
#ifndef VMF_FRAME_H
#define VMF_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define VMF_FRAME_HDR 4
#define VMF_AGENT_MAX_FRAME (64u * 1024u)
#define AGENT_PROTOCOL_VERSION 1

static inline uint32_t
vmf_frame_get_len(const uint8_t h[4])
{
	return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

static inline void
vmf_frame_put_len(uint8_t h[4], uint32_t n)
{
	h[0] = (uint8_t)(n >> 24); h[1] = (uint8_t)(n >> 16);
	h[2] = (uint8_t)(n >> 8); h[3] = (uint8_t)n;
}

/* Milliseconds on CLOCK_MONOTONIC, for deadlines. */
int64_t vmf_now_ms(void);
/* The deadline timeout_ms from now; -1 (none) for a negative timeout. */
int64_t vmf_deadline_after(int timeout_ms);
/* Milliseconds left before deadline, for poll(): -1 without one, 0 once it
 * passed. */
int vmf_ms_left(int64_t deadline);

/* Writes header + payload before deadline_ms (absolute vmf_now_ms() value,
 * -1 = none). */
int vmf_frame_write(int fd, const void *buf, size_t len, int64_t deadline_ms,
		    struct vmf_error *err);

/* Reads one frame of at most max bytes into a malloc'ed *out.  The length is
 * checked against max before anything is allocated.  Returns 0, or negative:
 * -EPIPE when the peer closed, -EMSGSIZE when too long, -ETIMEDOUT at the
 * deadline.  *len is the announced length once the header is in, also on
 * a failure after it (0 before), so a caller can tell "no reply" from "a
 * reply cut short". */
int vmf_frame_read(int fd, uint8_t **out, size_t *len, size_t max, int64_t deadline_ms,
		   struct vmf_error *err);

/* Full read/write of n bytes with a deadline; fd may be non-blocking. */
int vmf_read_full(int fd, void *buf, size_t n, int64_t deadline_ms, struct vmf_error *err);
int vmf_write_full(int fd, const void *buf, size_t n, int64_t deadline_ms, struct vmf_error *err);

#endif
