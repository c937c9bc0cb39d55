/* The host side of one guest agent connection (proto/agent.proto, framed as
 * in frame.h), whoever holds it: the daemon's calls (hypervisors/agent.c)
 * and the client library's exec session (factory/client/agent_client.c)
 * are both built on this one implementation.  libc and libprotobuf-c only:
 * the client library links it.
 *
 * The guest is hostile, so whatever it sends is bounded here:
 *  - memory: one read buffer of two frames and a write queue of at most
 *    VMF_AGENT_WQ_MAX; a frame above the protocol's 64 KiB limit ends the
 *    connection (the agent never sends one, and skipping it would mean
 *    reading up to 4 GiB);
 *  - time: the deadline is looked at before every read after the first of
 *    a call, so a guest that keeps sending (or trickles a byte at a time)
 *    cannot hold a call past it;
 *  - CPU: a frame is consumed by moving an offset, and a call takes at
 *    most VMF_AGENT_STRAY_MAX frames that answer nothing of the caller's
 *    (other ids, junk) before the connection is failed with a sentence.
 *    Replies to the caller's own earlier requests (ids it sent, at most one
 *    each) are dropped without counting: a call that timed out leaves one.
 * Every string of a decoded reply is made valid UTF-8 (invalid sequences
 * become U+FFFD) before the caller sees it. */
#ifndef VMF_AGENTCONN_H
#define VMF_AGENTCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent.pb-c.h"
#include "error.h"

#define VMF_AGENT_STRAY_MAX 64
#define VMF_AGENT_WQ_MAX (4u << 20)
/* Reconnect policy (vmf_agent_conn_retry): an attempt's wait doubles up to this. */
#define VMF_AGENT_ATTEMPT_MAX_MS 8000

struct vmf_agent_conn;

/* A frame that answers no call of the caller's waits (an exec event, an
 * error reply to a request that has none on success) is offered here
 * first: 1 when the function took rep (it owns it now), 0 when it is none
 * of its business (the frame is then a late reply or a stray), negative to
 * fail the connection (a frame the protocol does not allow; err says why;
 * rep stays the caller's). */
typedef int (*vmf_agent_event_fn)(void *arg, Vmf__Agent__AgentReply *rep, struct vmf_error *err);

/* Takes fd (made non-blocking).  what names the other end in sentences
 * ("the guest agent", "the agent on /run/x/agent.sock").  NULL only when
 * out of memory (fd closed). */
struct vmf_agent_conn *vmf_agent_conn_new(int fd, const char *what);
void vmf_agent_conn_free(struct vmf_agent_conn *c);
int vmf_agent_conn_fd(const struct vmf_agent_conn *c);
const char *vmf_agent_conn_what(const struct vmf_agent_conn *c);
void vmf_agent_conn_set_events(struct vmf_agent_conn *c, vmf_agent_event_fn fn, void *arg);
/* The last error reply the agent could not tie to a request (id 0),
 * escaped; "" when none.  It explains a later timeout. */
const char *vmf_agent_conn_last_error(const struct vmf_agent_conn *c);
void vmf_agent_conn_clear_last_error(struct vmf_agent_conn *c);
/* Size on the wire of the frame vmf_agent_conn_recv returned last. */
size_t vmf_agent_conn_last_frame_size(const struct vmf_agent_conn *c);

/* Queues req with the next id (set in req->id) and protocol_version;
 * -EMSGSIZE above the frame limit, -ENOBUFS when the queue is full. */
int vmf_agent_conn_queue(struct vmf_agent_conn *c, Vmf__Agent__AgentRequest *req, struct vmf_error *err);
/* Writes the queue until it is empty (0) or the deadline passes (1: some
 * left; deadline is vmf_now_ms()-based, -1 none, a past one: no waiting).
 * A frame partly written stays queued and goes out first next time, so
 * the agent never sees half a frame followed by another. */
int vmf_agent_conn_flush(struct vmf_agent_conn *c, int64_t deadline, struct vmf_error *err);
/* Queue, then flush until the deadline; -ETIMEDOUT when the frame is not
 * all written by then (what is left goes out with the next write). */
int vmf_agent_conn_send(struct vmf_agent_conn *c, Vmf__Agent__AgentRequest *req, int64_t deadline,
			struct vmf_error *err);

/* The next frame: 1 and *out (NULL for one that does not decode; the
 * caller frees it with vmf__agent__agent_reply__free_unpacked), 0 when the
 * deadline passed, negative when the connection failed (closed, an
 * oversized frame); a failed connection fails every later call the same
 * way.  Queued requests are written meanwhile. */
int vmf_agent_conn_recv(struct vmf_agent_conn *c, Vmf__Agent__AgentReply **out, int64_t deadline,
			struct vmf_error *err);
/* Starts a new call's count of strays. */
void vmf_agent_conn_begin(struct vmf_agent_conn *c);
/* A frame (rep may be NULL: junk) the caller did not wait for: offered to
 * the event function, else dropped as a late reply or counted as a stray;
 * takes rep.  Negative when the connection is failed over it. */
int vmf_agent_conn_other(struct vmf_agent_conn *c, Vmf__Agent__AgentReply *rep, struct vmf_error *err);
/* True (and counted as answered) when id is one this connection sent and
 * fewer replies than requests came back so far. */
bool vmf_agent_conn_claim(struct vmf_agent_conn *c, uint64_t id);
/* Waits for the reply to id (whatever it says: see vmf_agent_reply_check):
 * begin, then recv and other until it comes.  -ETIMEDOUT at the deadline,
 * the connection still usable. */
int vmf_agent_conn_wait(struct vmf_agent_conn *c, uint64_t id, Vmf__Agent__AgentReply **out, int64_t deadline,
			struct vmf_error *err);
/* 0 when rep is a success of type want (any, for NOT_SET); else the
 * failure: an error reply as its errno and "<prefix><the guest's message,
 * escaped>", another type -EPROTO.  rep stays the caller's. */
int vmf_agent_reply_check(const struct vmf_agent_conn *c, const Vmf__Agent__AgentReply *rep,
			  Vmf__Agent__AgentReply__BodyCase want, const char *prefix, struct vmf_error *err);
/* Fails the connection (shut down, every later call fails) with err's
 * sentence; returns -err->code. */
int vmf_agent_conn_fail(struct vmf_agent_conn *c, struct vmf_error *err);

/* The reconnect policy both sides use: attempt() makes a connection that
 * answered its first request before until (-ETIMEDOUT when it did not);
 * a connection left unanswered is replaced after first_ms, then twice as
 * long, up to VMF_AGENT_ATTEMPT_MAX_MS, until the deadline (-1: none).
 * waiting(warg), when given, is called once, after the first attempt
 * timed out.  Only a timeout is retried. */
typedef int (*vmf_agent_attempt_fn)(void *arg, int64_t until, void **out, struct vmf_error *err);
int vmf_agent_conn_retry(vmf_agent_attempt_fn attempt, void *arg, int first_ms, int64_t deadline,
			 void (*waiting)(void *), void *warg, void **out, struct vmf_error *err);

#endif
