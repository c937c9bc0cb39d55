/* vmf-agent's rooms: what each file offers the others, grouped by file.
 * main.c and transport.c start the agent on its transports, loop.c is the
 * poll loop, conn.c the connections and their framing, dispatch.c the
 * request table; every other file serves one concern of proto/agent.proto. */
#ifndef VMF_AGENT_H
#define VMF_AGENT_H

#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "agent.pb-c.h"
#include "frame.h"

#define AGENT_VERSION "vmf-agent 0.5.0"

/* ---- main.c: how the agent was started ---- */

struct agent_options {
	const char *share_dir;       /* where MountShare mounts the share */
	const char *machine_id_file;
	bool machine_id_given;       /* --machine-id-file: test mode may write it */
	bool test_mode;              /* serving a host-side fd: touch nothing global */
	bool no_set_time;            /* SetTime validates and echoes, never sets */
	bool vsock_allow_local;      /* accept guest-local vsock peers (tests) */
	bool no_exec;                /* ExecStart refused (the fuzz target: no host commands) */
	const char *exec_ledger;     /* where started process groups are noted; NULL: nowhere */
	const char *files_root;      /* test mode: the only place file requests may touch */
};
extern struct agent_options agent_options;

/* ---- sys.c: logging, small files, clocks, kernel uevents ---- */

void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The file's first n - 1 bytes, trailing blanks cut; -1 with errno. */
int read_small(const char *path, char *buf, size_t n);
int write_small(const char *path, const char *s);
/* temp file + rename, mode 0444 */
int write_file_atomic(const char *path, const char *s);
int64_t clock_ns(clockid_t id);
void uevent_open(void);
void uevent_close(void);
void uevent_drain(void);
/* Waits for the next uevent until deadline (vmf_now_ms()); false when none
 * came or there is no uevent socket. */
bool uevent_wait(int64_t deadline);

/* ---- dispatch.c: one request, its reply and the storage the reply uses ---- */

struct conn;

struct agent_call {
	struct conn *conn;           /* the connection the request came on */
	const Vmf__Agent__AgentRequest *req;
	Vmf__Agent__AgentReply reply;
	bool no_reply;               /* the request is answered only when it fails */
	char error[400];             /* reply.error_message */
	/* The reply body's memory, the request's own: released once the
	 * reply is packed. */
	void *body;
	void (*body_release)(void *body);
};

/* Makes the call's reply an error (errno code, a sentence). */
void reply_error(struct agent_call *call, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* size zeroed bytes owned by the call, for its reply body; release (may be
 * NULL) frees what the body points to before the bytes are freed.  NULL
 * (the reply an error) when out of memory. */
void *reply_body(struct agent_call *call, size_t size, void (*release)(void *body));
/* Runs one request; the call's reply is what to send unless no_reply. */
void dispatch_request(struct agent_call *call);
void reply_body_free(struct agent_call *call);

/* ---- conn.c: host connections, framing, reply queues ---- */

/* Replies queued per connection: above OUTQ_HIGH nothing more is parsed or
 * read for it, and no frame is larger than a frame's limit, so a host that
 * stops reading cannot make the agent buffer more than OUTQ_SIZE. */
#define OUTQ_HIGH (256u * 1024u)
#define OUTQ_SIZE (OUTQ_HIGH + VMF_FRAME_HDR + (size_t)VMF_AGENT_MAX_FRAME)
/* Accepted (vsock) connections served at once. */
#define CONNS_MAX 16

/* What ends a connection decides what happens next: a test stream ends
 * the agent, a virtio port waits for its host to come back, an accepted
 * socket (vsock) is closed. */
enum conn_kind { CONN_STREAM, CONN_PORT, CONN_ACCEPTED };

struct conn {
	enum conn_kind kind;
	int rfd, wfd;
	const char *name;            /* for log lines */
	bool away;                   /* port: the host is not connected */
	bool closed;                 /* accepted: ended, to be freed */
	uint8_t hdr[VMF_FRAME_HDR];
	size_t hdr_len;
	uint8_t *body;               /* non-NULL while a frame's payload is read */
	uint32_t body_want, body_len;
	uint32_t discard;            /* bytes of an oversized frame still to skip */
	uint8_t *obuf;               /* frames not yet written */
	size_t olen, ooff;
	bool osent;                  /* bytes of the queue went out since it was empty */
	uint8_t ibuf[16384];
	size_t ilen, ioff;
	struct conn *next;
};

extern struct conn *conns;

struct conn *conn_add(enum conn_kind kind, int rfd, int wfd, const char *name);
void conn_free(struct conn *c);
size_t conn_queued(const struct conn *c);
/* Whether the connection takes more frames now (host there, queue low). */
bool conn_accepts_output(const struct conn *c);
/* Whether c is still a connection with replies not yet written. */
bool conn_reply_pending(const void *c);
void conn_queue_reply(struct conn *c, Vmf__Agent__AgentReply *r);
/* Parses requests from the bytes; returns how many it took (it stops while
 * the reply queue is at its high mark). */
size_t conn_parse_input(struct conn *c, const uint8_t *p, size_t n);
/* Writes what it can of the queue without blocking; -1: the peer is gone. */
int conn_write_queued(struct conn *c);
/* The end of a connection; true when it was the test stream (the agent
 * ends). */
bool conn_ended(struct conn *c);

/* ---- transport.c: the guest's virtio-serial ports and vsock listener ---- */

#define PORT_NAME "agent"
#define DAEMON_PORT_NAME "vmf"
/* The guest vsock port the Firecracker and Cloud Hypervisor drivers connect
 * to (VMF_AGENT_VSOCK_PORT in hypervisors/vmm_proc.h). */
#define VSOCK_PORT_DEFAULT 1024u

/* Serves rfd/wfd as a port, SIGIO armed. */
int transport_add_port(int rfd, int wfd, const char *name, const char *what);
/* Finds, opens and serves the owner's and the daemon's ports; returns when
 * there is none or serving fails. */
int transport_serve_ports(void);
/* A listening vsock socket on VMADDR_CID_ANY:port, or -1 (logged). */
int transport_vsock_listen(unsigned port);
/* Serves the listener in a child process; its pid, or -1. */
pid_t transport_vsock_serve(int lfd, unsigned port);

/* ---- loop.c: the poll loop ---- */

/* Serves every connection in conns, the processes they start and the
 * connections a listening socket lfd (-1: none) brings.  Returns when a
 * test stream ends (0) or on a fatal error (1). */
int agent_serve(int lfd, bool sigio);

/* ---- exec.c, exec_spawn.c, exec_ledger.c: processes started for a host ---- */

void exec_start(struct agent_call *call);
void exec_input(struct agent_call *call);
void exec_window(struct agent_call *call);
void exec_signal(struct agent_call *call);
void exec_resize(struct agent_call *call);
void exec_reset(struct agent_call *call);
void exec_set_env(struct agent_call *call);
void exec_list(struct agent_call *call);
void exec_attach(struct agent_call *call);
/* A connection that ended takes its processes with it. */
void exec_conn_gone(struct conn *c);
/* What moves processes along without an fd event (acks, exits, timeouts). */
void exec_progress(int64_t now);
/* ms until the next process timeout, -1 when none. */
int64_t exec_next_timeout(int64_t now);
size_t exec_poll_count(void);
/* Adds the processes' fds to poll, owner in who[] and the fd's role in
 * role[]; returns the new count. */
nfds_t exec_poll_add(struct pollfd *pv, void **who, int *role, nfds_t np);
void exec_poll_event(void *who, int role, short revents);
void exec_reap(void);
/* Waits for and frees every process (the end of a test stream). */
void exec_end_all(void);

unsigned long long exec_ledger_add(pid_t pgid);
void exec_ledger_remove(pid_t pgid, unsigned long long ticks);
void exec_ledger_sweep(void);
#define EXEC_LEDGER_GUEST "/run/vmf-agent/execs"

/* ---- files.c: files in the guest, as the requested user ---- */

void files_stat(struct agent_call *call);
void files_list(struct agent_call *call);
void files_mkdir(struct agent_call *call);
void files_move(struct agent_call *call);
void files_remove(struct agent_call *call);
void files_read(struct agent_call *call);
void files_write(struct agent_call *call);

struct files_identity {
	bool switched;
	gid_t *groups;
	int n_groups;
};
/* Takes on the request's user's file system ids; false (the call's reply
 * an error) when the agent cannot.  files_restore undoes it, always. */
bool files_become(struct agent_call *call, const Vmf__Agent__FileAccess *a, struct files_identity *saved);
void files_restore(struct files_identity *saved);
/* Checks a requested path; sys is the path the agent's calls use (test
 * mode: below --files-root).  false: the reply an error. */
bool files_valid_path(struct agent_call *call, const char *what, const char *path, char sys[PATH_MAX]);

/* ---- files_watch.c: directories watched for the host (inotify) ---- */

void files_watch(struct agent_call *call);
void files_unwatch(struct agent_call *call);
/* The connection's watches stop (freed at the loop's next turn). */
void files_watch_conn_gone(struct conn *c);
/* Frees every watch (the end of a test stream). */
void files_watch_end_all(void);
/* Queued events out to connections that take output; ended watches freed. */
void files_watch_progress(void);
size_t files_watch_poll_count(void);
nfds_t files_watch_poll_add(struct pollfd *pv, void **who, int *role, int watch_role, nfds_t np);
void files_watch_poll_event(void *who);

/* ---- guest_info.c, online.c, identity.c, nic.c, share.c, disks.c, stop.c ---- */

void guest_info_report(struct agent_call *call);

void online_cpu_mem(struct agent_call *call);
unsigned online_cpu_count(void);
uint64_t mem_total_kib(void);

void identity_reseed_rng(struct agent_call *call);
void identity_set_time(struct agent_call *call);
void identity_renew(struct agent_call *call);
void identity_handout(struct agent_call *call);
/* 16 random bytes from the guest's CRNG. */
int identity_sample_random(struct agent_call *call, uint8_t out[16]);
void identity_hostname(char *buf, size_t n);
void identity_machine_id(char *buf, size_t n);

#define NIC_LIST_MAX 16
#define NIC_LINE_MAX 200
/* Each interface but lo as "NAME MAC up|down ADDR/LEN...". */
size_t nic_list(char lines[][NIC_LINE_MAX], size_t max);
void nic_all_up(void);
bool nic_is_configured(void);
int nic_configure(const Vmf__Agent__Handout *req, char *why, size_t whylen);
int nic_reset(char *why, size_t whylen);

#define SHARE_NAMES_MAX 1024
/* Names at the root of the share, sorted, malloc'ed each; how many. */
size_t share_list(char *names[SHARE_NAMES_MAX]);
void share_mount(struct agent_call *call);
void share_unmount(struct agent_call *call);

#define DISK_SERIAL_MAX 20
bool disk_serial_ok(const char *serial);
/* /sys/block's entry with this serial into name; false when none. */
bool disk_find(const char *serial, char *name, size_t n);
void disk_mount(struct agent_call *call);
void disk_unmount(struct agent_call *call);

void stop_flush_disks(struct agent_call *call);
void stop_poweroff(struct agent_call *call);
/* A Poweroff answered: the kernel powers off once its reply is out. */
bool stop_poweroff_pending(void);
void stop_poweroff_when_answered(int64_t now);

#endif
