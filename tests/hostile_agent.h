/* The hostile test build of the guest agent (tests/hostile_agent.c). */
#ifndef VMF_HOSTILE_AGENT_H
#define VMF_HOSTILE_AGENT_H

#include <stdbool.h>

#include "agent.pb-c.h"

/* What the mode file asks of port for req, read before the agent handles
 * it; NULL: nothing. */
const char *vmf_hostile_behavior(const char *port, const Vmf__Agent__AgentRequest *req);
/* Before the agent sends reply (to req, on the connection of port with
 * fds rfd/wfd): true when behavior took the connection over and is done
 * with it (the agent then exits, and init starts it again); false to send
 * reply, which the "strings" behavior may have rewritten. */
bool vmf_hostile_act(const char *behavior, const char *port, int rfd, int wfd, const Vmf__Agent__AgentRequest *req,
		     Vmf__Agent__AgentReply *reply);

#endif
