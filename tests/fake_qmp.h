/* A fake QMP peer for unit tests: replays a conversation recorded from the
 * real QEMU (tests/data/qmp/, *.replies files) on one end of a socketpair, checks
 * that the client sends the recorded commands, and can inject faults. */
#ifndef VMF_FAKE_QMP_H
#define VMF_FAKE_QMP_H

#include <stdbool.h>

enum fake_qmp_fault {
	FAULT_NONE,
	FAULT_GARBAGE,      /* "this is not json" instead of the reply */
	FAULT_NON_OBJECT,   /* a JSON array instead of the reply */
	FAULT_OVERSIZE,     /* a line longer than 1 MiB */
	FAULT_CLOSE,        /* half the reply, then close */
	FAULT_DELAY,        /* the reply 500 ms late */
	FAULT_ORPHAN,       /* a reply to an id nobody used, without "id" */
};

struct fake_qmp_opts {
	const char *replies;          /* path of the recording */
	bool split;                   /* write everything one byte at a time */
	int fault_at;                 /* index of the command (0 = first) */
	enum fake_qmp_fault fault;
};

struct fake_qmp;

/* Starts the peer thread; *client_fd gets the client's end. */
struct fake_qmp *fake_qmp_start(const struct fake_qmp_opts *o, int *client_fd);
/* Waits for the peer to finish; returns the number of commands that did not
 * match the recording.  *fds_received counts SCM_RIGHTS fds it got. */
int fake_qmp_join(struct fake_qmp *f, int *fds_received);

#endif
