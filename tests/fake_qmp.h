/* A fake QMP peer for unit tests: replays a recorded conversation
 * (tests/data/qmp/NAME.replies, format in tests/data/qmp/README.md) from a
 * thread, checking each command the client sends against the recording, and
 * injects faults on request.
 *
 * Steps: step 0 is the greeting; step k (k >= 1) is the k-th command of the
 * recording and everything QEMU sent after it (reply and events).  At the
 * end of the recording the peer closes the connection, as QEMU does after
 * quit. */
#ifndef VMF_FAKE_QMP_H
#define VMF_FAKE_QMP_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

struct fake_qmp;

enum fake_qmp_fault_kind {
	/* The step's bytes go out one per write, each written only once the
	 * client has read the previous one, so every read sees one byte. */
	FAKE_QMP_SPLIT,
	/* Nothing of the step goes out until fake_qmp_release() (or the client
	 * hangs up): a reply that arrives after the client's deadline. */
	FAKE_QMP_HOLD,
	/* text, verbatim, replaces the step's lines (garbage, a reply to
	 * nothing...). */
	FAKE_QMP_REPLACE,
	/* count copies of text (an event line, "\r\n" added) go out before the
	 * step's lines. */
	FAKE_QMP_EVENTS_FIRST,
	/* The step's lines are replaced by one JSON line of count bytes (plus
	 * "\r\n"), e.g. more than VMF_QMP_MAX_LINE. */
	FAKE_QMP_OVERSIZED,
	/* The first half of the step's bytes go out, then the peer closes. */
	FAKE_QMP_CLOSE_MID,
};

/* How fake_qmp_listen() makes the socket appear late (0: at once). */
enum fake_qmp_listen_mode {
	FAKE_QMP_LISTEN_NOW,
	FAKE_QMP_BIND_LATE,     /* no socket file until delay_ms: ENOENT */
	FAKE_QMP_LISTEN_LATE,   /* file at once, listen() after delay_ms: ECONNREFUSED */
};

struct fake_qmp_result {
	int steps_done;         /* last step fully sent */
	bool complete;          /* the whole recording was played */
	bool client_hung_up;    /* the client closed before the end */
	char error[1024];       /* "" unless the client strayed from the recording */
};

/* Loads a .replies file. */
int fake_qmp_new(const char *replies_path, struct fake_qmp **out, struct vmf_error *err);
/* Registers a fault for a step; call before starting.  text may be NULL
 * where the kind does not use it. */
void fake_qmp_fault(struct fake_qmp *f, int step, enum fake_qmp_fault_kind kind, size_t count,
		    const char *text);
/* Starts the peer on a socketpair; returns the client's end (the caller
 * owns it) or a negative errno. */
int fake_qmp_start(struct fake_qmp *f, struct vmf_error *err);
/* Starts the peer on a unix socket at path, accepting one client. */
int fake_qmp_listen(struct fake_qmp *f, const char *path, enum fake_qmp_listen_mode mode, int delay_ms,
		    struct vmf_error *err);
/* Lets a FAKE_QMP_HOLD step go out. */
void fake_qmp_release(struct fake_qmp *f);
/* The fd the client passed with step's command (owned by the peer), or -1. */
int fake_qmp_received_fd(struct fake_qmp *f, int step);
/* Waits for the peer to finish (close the client end first unless the
 * recording runs to its end) and reports how the conversation went. */
void fake_qmp_join(struct fake_qmp *f, struct fake_qmp_result *res);
/* Joins if needed, then frees everything, received fds included. */
void fake_qmp_free(struct fake_qmp *f);

#endif
