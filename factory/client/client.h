/* libvmfactory-client: talk to a vmfactory daemon over its unix socket.
 *
 * Wire format (see docs/protocol.md): each message is a 4-byte big-endian
 * length followed by a protobuf vmf.control.Request or Reply (at most
 * 1 MiB, checked before anything is allocated).  Every request carries
 * VMF_CONTROL_PROTOCOL_VERSION.  A connection may carry several requests in
 * sequence; one request is in flight at a time.
 *
 * Errors follow the project convention: functions return a negative errno
 * and fill *err (errno + a sentence; err may be NULL).  A daemon-side
 * failure carries the daemon's errno and message unchanged.
 *
 * Timeouts are in milliseconds for the whole call (send + reply); a
 * negative timeout waits forever.  The library never raises SIGPIPE.
 * A struct vmf_client is not thread-safe: use one per thread. */
#ifndef VMF_CLIENT_H
#define VMF_CLIENT_H

#include <stdint.h>

#include <stddef.h>

#include "agent.pb-c.h"
#include "control.pb-c.h"
#include "error.h"

/* Bump when a message changes meaning (a field reinterpreted, a request
 * behaving differently) or when a daemon ignoring an added field would do
 * the wrong thing; other added fields take new tag numbers and need no bump.
 * The daemon speaks every version from _MIN up and answers any other with
 * EPROTO.  Version 2 added GetVMRequest.pool, 3 its network (netns, netns_link, net),
 * 4 its cgroups, 5 leases (GetVMRequest.ttl_s, ResumeVMRequest.ttl_s,
 * Lease).  The library sends the lowest
 * version a request needs (vmf_client_request_version), so that a request
 * an older daemon serves correctly still reaches it, and one it would
 * misread (a pool it would ignore) is refused by it instead. */
#define VMF_CONTROL_PROTOCOL_VERSION 5
#define VMF_CONTROL_PROTOCOL_VERSION_MIN 1
#define VMF_CLIENT_MAX_FRAME (1u << 20)

struct vmf_client;

/* Connects to the daemon's socket.  No daemon there: -ENOENT (no socket
 * file) or -ECONNREFUSED (stale socket), the message naming the path. */
int vmf_client_connect(const char *socket_path, struct vmf_client **out, struct vmf_error *err);
void vmf_client_close(struct vmf_client *c);

/* Sends req (protocol_version is filled in) and waits for the reply.  A
 * reply whose error_code is not 0 becomes a failure carrying that errno and
 * the daemon's message.  On success free *reply with
 * vmf__control__reply__free_unpacked. */
int vmf_client_call(struct vmf_client *c, Vmf__Control__Request *req, Vmf__Control__Reply **reply,
		    int timeout_ms, struct vmf_error *err);

/* Typed helpers.  On success (*reply)->body_case is the one named (vm,
 * inspect, status, destroy) and its pointer is set; a reply without it
 * is -EBADMSG.  timeout_ms for get_vm should exceed req->timeout_ms (the
 * daemon's own budget, 0 = 60 s) so the daemon's error arrives first. */
/* The lowest protocol version that carries req's meaning. */
uint32_t vmf_client_request_version(const Vmf__Control__Request *req);
int vmf_client_get_vm(struct vmf_client *c, const Vmf__Control__GetVMRequest *req, Vmf__Control__Reply **reply,
		      int timeout_ms, struct vmf_error *err);
int vmf_client_release_vm(struct vmf_client *c, const char *vm_id, int timeout_ms, struct vmf_error *err);
/* The same, with the reply: release->stop says how the VM was stopped and
 * which read-write disks may have lost writes (a guest that did not
 * confirm its flush in time), release->exit why a gone VM had died. */
int vmf_client_release(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
		       struct vmf_error *err);
/* Suspend: the VM's whole state saved by the daemon, its process stopped;
 * resume: running again from it (same id, sockets, links, share; clock
 * set).  The reply's vm shows the VM (suspended: state_file, state_size).
 * A save or load takes seconds per GiB of guest memory: allow for it. */
int vmf_client_suspend_vm(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
			  struct vmf_error *err);
int vmf_client_resume_vm(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
			 struct vmf_error *err);
/* The same with a new lease (ttl_s seconds, 0 = none; on_expiry
 * "release", the default, or "suspend"). */
int vmf_client_resume_vm_lease(struct vmf_client *c, const char *vm_id, uint32_t ttl_s, const char *on_expiry,
			       Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err);
/* Sets, moves or (ttl_s 0) removes an assigned VM's lease: it ends ttl_s
 * seconds from now by on_expiry ("release", the default, or "suspend":
 * the daemon suspends it then; a suspended VM keeps no lease).  The
 * reply's vm shows it (lease_deadline_ns, lease_on_expiry). */
int vmf_client_lease(struct vmf_client *c, const char *vm_id, uint32_t ttl_s, const char *on_expiry,
		     Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err);
int vmf_client_inspect(struct vmf_client *c, const char *vm_id, Vmf__Control__Reply **reply, int timeout_ms,
		       struct vmf_error *err);
/* Turns assigned VM vm_id's current state into a new template named
 * template_name (protocol version 3); reply->snapshot says what it cost. */
int vmf_client_snapshot(struct vmf_client *c, const char *vm_id, const char *template_name,
			Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err);
/* Removes a snapshot template by name or id: the caller's own, or (root,
 * the daemon's user) the operator's by name and any by id; refused
 * (EBUSY) while a configured pool or a VM uses it.  reply->template_rm
 * names what went. */
int vmf_client_template_rm(struct vmf_client *c, const char *template_name, Vmf__Control__Reply **reply,
			   int timeout_ms, struct vmf_error *err);
int vmf_client_status(struct vmf_client *c, Vmf__Control__Reply **reply, int timeout_ms, struct vmf_error *err);
/* Disks of a handed-out VM (docs/protocol.md, "Disks"): the reply's disk
 * is what was attached or detached.  Attaching waits for the guest to see
 * the device and mount it (budget timeout_ms, 0 = 60 s). */
int vmf_client_attach(struct vmf_client *c, const Vmf__Control__AttachRequest *req, Vmf__Control__Reply **reply,
		      int timeout_ms, struct vmf_error *err);
int vmf_client_detach(struct vmf_client *c, const char *vm_id, const char *path, Vmf__Control__Reply **reply,
		      int timeout_ms, struct vmf_error *err);
/* GetVM, then each of the n attaches (their vm_id filled in) in order; the
 * VM's record in the reply lists the disks.  When an attach fails the VM is
 * released again and err says which disk failed: the caller gets a VM with
 * all its disks or none. */
int vmf_client_get_vm_with_disks(struct vmf_client *c, const Vmf__Control__GetVMRequest *req,
				 Vmf__Control__AttachRequest *const *attach, size_t n, Vmf__Control__Reply **reply,
				 int timeout_ms, struct vmf_error *err);
int vmf_client_destroy(struct vmf_client *c, int all, Vmf__Control__Reply **reply, int timeout_ms,
		       struct vmf_error *err);

/* ---- the guest agent of a handed-out VM (docs/protocol.md, "The guest
 * agent") ----
 *
 * After hand-out the VM's owner talks to its agent directly: the socket is
 * VmInfo.agent_socket, its transport VmInfo.agent_transport ("unix": a
 * QEMU virtio-serial socket; "hybrid-vsock": a Firecracker or Cloud
 * Hypervisor vsock socket, reached with "CONNECT <port>\n").  The daemon is
 * not in the data path.
 *
 * Processes: start any number on one connection, then drive them with
 * vmf_client_agent_next_event (output, exits), vmf_client_exec_input
 * (stdin, within the window the agent grants) and the fd from
 * vmf_client_agent_fd for poll().  Output credit is given back to the
 * agent when the next event is asked for: a caller that consumes slowly
 * holds the process back, and neither side buffers more than the windows. */
struct vmf_client_agent;

/* Called once when the agent has not answered within a second: on a QEMU
 * VM another client holds the port and this one waits its turn. */
typedef void (*vmf_client_agent_wait_fn)(void *arg);

/* Connects and starts a clean session (ExecReset: what an earlier client
 * of the port left running is killed).  transport "unix" or
 * "hybrid-vsock" (vsock_port 0 = 1024); timeout_ms bounds the whole
 * connect, waiting for another client included (-EBUSY then).
 * The guest is not trusted: an agent that breaks the protocol (a frame
 * above 64 KiB, a flood of frames answering nothing, output beyond the
 * window it was given) fails the call at once with -EPROTO and a
 * sentence, and the connection stays failed (docs/protocol.md, "What a
 * host takes from an agent"). */
int vmf_client_agent_connect(const char *path, const char *transport, unsigned vsock_port, int timeout_ms,
			     vmf_client_agent_wait_fn waiting, void *arg, struct vmf_client_agent **out,
			     struct vmf_error *err);
/* Closing the connection kills every process it started. */
void vmf_client_agent_close(struct vmf_client_agent *a);
int vmf_client_agent_fd(const struct vmf_client_agent *a);
int vmf_client_agent_ping(struct vmf_client_agent *a, int timeout_ms, struct vmf_error *err);

struct vmf_exec_opts {
	const char *const *argv;     /* NULL-terminated, at least one entry */
	const char *const *env;      /* NULL-terminated "KEY=VALUE", or NULL */
	const char *cwd;             /* NULL or "" = / */
	int set_user;
	uint32_t uid, gid;
	int tty;
	uint32_t rows, cols;
	uint32_t timeout_ms;         /* 0 = none */
	uint32_t output_window;      /* per stream, bytes; 0 = the agent's default (256 KiB) */
	/* Outlives this connection: detached when it closes, its output then
	 * held by the agent (the last 64 KiB per stream) until a connection
	 * attaches (vmf_client_exec_attach). */
	int keep;
	const char *tag;             /* NULL or "": none; at most 64 bytes, unique in the guest */
	/* A guest user by name (the guest's /etc/passwd): its ids, its home as
	 * the default cwd and its login environment (HOME, USER, LOGNAME,
	 * SHELL) under env.  NULL: set_user/uid/gid. */
	const char *user;
};

/* Starts a process; *exec_id names it in the calls and events below.  An
 * argv/env that does not fit a frame is -E2BIG before anything is sent;
 * the agent's failures (no such command, a bad cwd or user) carry its
 * sentence. */
int vmf_client_exec_start(struct vmf_client_agent *a, const struct vmf_exec_opts *o, uint64_t *exec_id,
			  int timeout_ms, struct vmf_error *err);

enum vmf_exec_event_type {
	VMF_EXEC_EV_NONE = 0,        /* timeout_ms passed */
	VMF_EXEC_EV_OUTPUT,          /* fd 1 or 2, data/len valid until the next call */
	VMF_EXEC_EV_EXIT,            /* after all of the process's output */
	VMF_EXEC_EV_ERROR,           /* the agent refused a stdin or signal request */
	VMF_EXEC_EV_FILES,           /* a watch's file events (exec_id: the watch's id) */
};

enum vmf_file_event_type {
	VMF_FILE_EV_CREATE = 1, VMF_FILE_EV_WRITE = 2, VMF_FILE_EV_REMOVE = 3, VMF_FILE_EV_RENAME = 4,
	VMF_FILE_EV_CHMOD = 5,
};

struct vmf_file_event {
	const char *name;            /* relative to the watched directory, valid UTF-8 */
	enum vmf_file_event_type type;
};

struct vmf_exec_event {
	enum vmf_exec_event_type type;
	uint64_t exec_id;
	int fd;
	const uint8_t *data;
	size_t len;
	int exit_code;               /* -1 when a signal ended it */
	int signal;
	int timed_out;
	int error_code;
	char message[256];           /* ERROR: the agent's sentence; FILES ended: why */
	/* VMF_EXEC_EV_FILES, valid until the next call: the events, how many
	 * were lost before them (the agent's queue, or this library's, full),
	 * and whether the watch ended (the last event for it). */
	const struct vmf_file_event *files;
	size_t n_files;
	uint64_t lost;
	int ended;
};

/* The next event of any process on this connection, waiting up to
 * timeout_ms (0: only what is buffered, or readable now; <0: forever).
 * Queued stdin is sent meanwhile.  The connection failing (the VM gone) is
 * a negative return. */
int vmf_client_agent_next_event(struct vmf_client_agent *a, struct vmf_exec_event *ev, int timeout_ms,
				struct vmf_error *err);
/* Queues up to n bytes of stdin within the process's window and returns how
 * many it took (0 when the window is used up: wait for events, which bring
 * the agent's acknowledgements).  eof closes the process's stdin once all
 * of data is taken. */
long vmf_client_exec_input(struct vmf_client_agent *a, uint64_t exec_id, const void *data, size_t n, int eof,
			   struct vmf_error *err);
/* Stdin bytes the window still has room for. */
size_t vmf_client_exec_stdin_room(const struct vmf_client_agent *a, uint64_t exec_id);
/* Sends queued frames without blocking (1: some remain, 0: all sent). */
int vmf_client_agent_flush(struct vmf_client_agent *a, struct vmf_error *err);
int vmf_client_exec_signal(struct vmf_client_agent *a, uint64_t exec_id, int sig, struct vmf_error *err);
int vmf_client_exec_resize(struct vmf_client_agent *a, uint64_t exec_id, unsigned rows, unsigned cols,
			   struct vmf_error *err);

/* ---- the agent's process table (kept processes outlive a connection) ---- */

/* The environment every later process of the guest gets (a sandbox's
 * variables), over the defaults and the user's login environment, under
 * each start's env; replaces the previous one.  At most 256 entries,
 * 32 KiB. */
int vmf_client_agent_set_env(struct vmf_client_agent *a, const char *const *env, int timeout_ms,
			     struct vmf_error *err);

/* One process of the table, as the guest says (strings escaped). */
struct vmf_exec_entry {
	uint64_t exec_id;
	int pid;
	char tag[80];
	char cmd[300];               /* its first arguments, space-separated */
	char args[1024];             /* the same, each ending in a NUL (as many as fit) */
	unsigned nargs;
	char cwd[300];
	int tty, keep, attached, exited, exit_code, signal;
	uint64_t dropped;            /* output bytes dropped while detached */
};
/* The whole table (at most 256 entries, newest first) in *out (free()).
 * An agent that claims more, or pages without end, fails with -EPROTO. */
int vmf_client_exec_list(struct vmf_client_agent *a, struct vmf_exec_entry **out, size_t *n, int timeout_ms,
			 struct vmf_error *err);
/* Attaches a kept process by exec id, guest pid or tag (exactly one of
 * them non-zero / non-NULL) to this connection: then its held output, its
 * further output and its exit come as events, as for one started here.
 * -ESRCH when there is none, -EBUSY while another connection has it. */
int vmf_client_exec_attach(struct vmf_client_agent *a, uint64_t exec_id, int pid, const char *tag,
			   uint32_t output_window, uint64_t *out_id, int *out_pid, int timeout_ms,
			   struct vmf_error *err);

/* Files in the guest (docs/protocol.md, "Guest agent: file messages"),
 * as the user given (set_user, uid, gid; else root).  Paths are absolute.
 * A file moves in chunks of at most VMF_FILE_CHUNK_MAX bytes; a listing in
 * pages.  An entry's strings are the guest's, made valid UTF-8 (U+FFFD for
 * what is not) and nothing more: escape them before a terminal sees them. */
#define VMF_FILE_CHUNK_MAX (48u * 1024u)

struct vmf_file_user {
	int set_user;
	uint32_t uid, gid;
};

enum vmf_file_type { VMF_FILE_OTHER = 0, VMF_FILE_REGULAR = 1, VMF_FILE_DIRECTORY = 2, VMF_FILE_SYMLINK = 3 };

struct vmf_file_entry {
	char *name, *path, *owner, *group, *symlink_target;
	enum vmf_file_type type;
	uint64_t size;
	uint32_t mode, uid, gid;
	int64_t mtime_ns;
};
void vmf_client_file_entry_free(struct vmf_file_entry *e);

int vmf_client_file_stat(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
			 struct vmf_file_entry *e, int timeout_ms, struct vmf_error *err);
/* One page of the entries below path (depth 0 or 1: its own), from the
 * skip-th on: *entries (free each, then the array), *n, *more. */
int vmf_client_file_list(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
			 unsigned depth, unsigned skip, struct vmf_file_entry **entries, size_t *n, int *more,
			 int timeout_ms, struct vmf_error *err);
/* The directory and its missing parents; *created 0 when it existed. */
int vmf_client_file_mkdir(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
			  struct vmf_file_entry *e, int *created, int timeout_ms, struct vmf_error *err);
int vmf_client_file_move(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *source,
			 const char *destination, struct vmf_file_entry *e, int timeout_ms, struct vmf_error *err);
int vmf_client_file_remove(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
			   int timeout_ms, struct vmf_error *err);
/* Up to len (<= VMF_FILE_CHUNK_MAX) bytes at offset into buf; *got, the
 * file's *size and *eof. */
int vmf_client_file_read(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
			 uint64_t offset, void *buf, size_t len, size_t *got, uint64_t *size, int *eof, int timeout_ms,
			 struct vmf_error *err);
/* len (<= VMF_FILE_CHUNK_MAX) bytes at offset; truncate empties the file
 * first (the first chunk of a whole-file write).  e: the entry after, or
 * NULL. */
int vmf_client_file_write(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
			  uint64_t offset, const void *data, size_t len, int truncate, struct vmf_file_entry *e,
			  int timeout_ms, struct vmf_error *err);

/* Watches a directory (and, recursive, the directories below it, down to
 * 16 levels) as the user given: its events come as VMF_EXEC_EV_FILES from
 * vmf_client_agent_next_event.  At most 8 watches per connection (the
 * agent's -EMFILE past them); a watch ends with the connection, an
 * unwatch, or its directory's removal (an event with ended). */
int vmf_client_file_watch(struct vmf_client_agent *a, const struct vmf_file_user *u, const char *path,
			  int recursive, uint64_t *watch_id, int timeout_ms, struct vmf_error *err);
int vmf_client_file_unwatch(struct vmf_client_agent *a, uint64_t watch_id, int timeout_ms, struct vmf_error *err);

#endif
