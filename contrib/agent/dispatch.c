/* The request table: which room serves each request of proto/agent.proto,
 * and the reply a request builds (its error sentence, its body's memory).
 * Nothing here knows what a request does. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "agent.h"

void
reply_error(struct agent_call *call, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(call->error, sizeof(call->error), fmt, ap);
	va_end(ap);
	call->reply.error_code = code > 0 ? code : EIO;
	call->reply.error_message = call->error;
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY__NOT_SET;
	call->no_reply = false;
}

void *
reply_body(struct agent_call *call, size_t size, void (*release)(void *body))
{
	reply_body_free(call);
	call->body = calloc(1, size);
	if (!call->body) {
		reply_error(call, ENOMEM, "out of memory for a reply");
		return NULL;
	}
	call->body_release = release;
	return call->body;
}

void
reply_body_free(struct agent_call *call)
{
	if (call->body && call->body_release)
		call->body_release(call->body);
	free(call->body);
	call->body = NULL;
	call->body_release = NULL;
}

static void
ping(struct agent_call *call)
{
	Vmf__Agent__Ping *pong = reply_body(call, sizeof(*pong), NULL);
	if (!pong)
		return;
	vmf__agent__ping__init(pong);
	call->reply.body_case = VMF__AGENT__AGENT_REPLY__BODY_PONG;
	call->reply.pong = pong;
}

typedef void agent_handler(struct agent_call *call);

/* Indexed by the request's body case. */
static agent_handler *const handlers[] = {
	[VMF__AGENT__AGENT_REQUEST__BODY_PING] = ping,
	[VMF__AGENT__AGENT_REQUEST__BODY_GUEST_INFO] = guest_info_report,
	[VMF__AGENT__AGENT_REQUEST__BODY_ONLINE_CPU_MEM] = online_cpu_mem,
	[VMF__AGENT__AGENT_REQUEST__BODY_RESEED_RNG] = identity_reseed_rng,
	[VMF__AGENT__AGENT_REQUEST__BODY_SET_TIME] = identity_set_time,
	[VMF__AGENT__AGENT_REQUEST__BODY_NEW_IDENTITY] = identity_renew,
	[VMF__AGENT__AGENT_REQUEST__BODY_HANDOUT] = identity_handout,
	[VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_SHARE] = share_mount,
	[VMF__AGENT__AGENT_REQUEST__BODY_UNMOUNT_SHARE] = share_unmount,
	[VMF__AGENT__AGENT_REQUEST__BODY_MOUNT_DISK] = disk_mount,
	[VMF__AGENT__AGENT_REQUEST__BODY_UNMOUNT_DISK] = disk_unmount,
	[VMF__AGENT__AGENT_REQUEST__BODY_FLUSH_DISKS] = stop_flush_disks,
	[VMF__AGENT__AGENT_REQUEST__BODY_POWEROFF] = stop_poweroff,
	[VMF__AGENT__AGENT_REQUEST__BODY_EXEC_START] = exec_start,
	[VMF__AGENT__AGENT_REQUEST__BODY_EXEC_INPUT] = exec_input,
	[VMF__AGENT__AGENT_REQUEST__BODY_EXEC_WINDOW] = exec_window,
	[VMF__AGENT__AGENT_REQUEST__BODY_EXEC_SIGNAL] = exec_signal,
	[VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESIZE] = exec_resize,
	[VMF__AGENT__AGENT_REQUEST__BODY_EXEC_RESET] = exec_reset,
	[VMF__AGENT__AGENT_REQUEST__BODY_EXEC_SET_ENV] = exec_set_env,
	[VMF__AGENT__AGENT_REQUEST__BODY_EXEC_LIST] = exec_list,
	[VMF__AGENT__AGENT_REQUEST__BODY_EXEC_ATTACH] = exec_attach,
	[VMF__AGENT__AGENT_REQUEST__BODY_FILE_STAT] = files_stat,
	[VMF__AGENT__AGENT_REQUEST__BODY_FILE_LIST] = files_list,
	[VMF__AGENT__AGENT_REQUEST__BODY_FILE_MKDIR] = files_mkdir,
	[VMF__AGENT__AGENT_REQUEST__BODY_FILE_MOVE] = files_move,
	[VMF__AGENT__AGENT_REQUEST__BODY_FILE_REMOVE] = files_remove,
	[VMF__AGENT__AGENT_REQUEST__BODY_FILE_READ] = files_read,
	[VMF__AGENT__AGENT_REQUEST__BODY_FILE_WRITE] = files_write,
	[VMF__AGENT__AGENT_REQUEST__BODY_FILE_WATCH] = files_watch,
	[VMF__AGENT__AGENT_REQUEST__BODY_FILE_UNWATCH] = files_unwatch,
};

void
dispatch_request(struct agent_call *call)
{
	const Vmf__Agent__AgentRequest *req = call->req;
	call->reply.id = req->id;
	if (req->protocol_version != AGENT_PROTOCOL_VERSION) {
		reply_error(call, EPROTO, "agent protocol version %u is not supported (this agent speaks %u)",
			    req->protocol_version, AGENT_PROTOCOL_VERSION);
		return;
	}
	size_t i = (size_t)req->body_case;
	if (i >= sizeof(handlers) / sizeof(handlers[0]) || !handlers[i]) {
		/* A newer host, or a request without a body. */
		reply_error(call, EOPNOTSUPP, "request type %d is not supported by %s", (int)req->body_case,
			    AGENT_VERSION);
		return;
	}
	handlers[i](call);
}
