/* What the client library's agent files share and do not export (their
 * names are not vmf_client_*: client.map keeps them local). */
#ifndef VMF_CLIENT_AGENT_INTERNAL_H
#define VMF_CLIENT_AGENT_INTERNAL_H

#include "agent.pb-c.h"
#include "client.h"

/* Sends req and waits (until deadline, -1: none) for its reply of type
 * want; the frames that come first are kept for the event calls. */
int agent_client_call(struct vmf_client_agent *a, Vmf__Agent__AgentRequest *req,
		      Vmf__Agent__AgentReply__BodyCase want, Vmf__Agent__AgentReply **out, int64_t deadline,
		      struct vmf_error *err);

/* The absolute deadline (vmf_now_ms()) timeout_ms from now; -1 for <0. */
int64_t agent_client_deadline(int timeout_ms);

/* A watch the agent started (its events are believed from then on), or
 * forgotten (unwatched: nothing more of it is). */
int agent_client_watch_add(struct vmf_client_agent *a, uint64_t id, struct vmf_error *err);
void agent_client_watch_forget(struct vmf_client_agent *a, uint64_t id);
/* Being unwatched: its frames until the agent's answer are dropped. */
void agent_client_watch_stopping(struct vmf_client_agent *a, uint64_t id);

/* The guest's string made valid UTF-8 (malloc'ed; NULL without memory). */
char *agent_client_guest_string(const char *s);

#endif
