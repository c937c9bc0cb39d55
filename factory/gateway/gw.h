/* The gateway's insides, shared by its files (gateway.h lists them).  Every
 * object here belongs to the event loop; jobs get copies. */
#ifndef VMF_GW_H
#define VMF_GW_H

#include <event2/event.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "client.h"
#include "gateway_opts.h"
#include "jobs.h"

/* The envd version the SDK is told: it gates SDK features (0.4.0: the
 * default user is the sandbox's; 0.5.2: closeStdin).  Raise it with what
 * the gateway serves (docs/e2b.md). */
#define GW_ENVD_VERSION "0.5.7"
#define GW_ENVD_PORT 49983
#define GW_SANDBOX_ID_LEN 20
#define GW_TOKEN_LEN 40
#define GW_TEAM_MAX 64
#define GW_TEMPLATE_MAX 64
#define GW_CONTROL_BODY_MAX (64u * 1024u)
/* E2B's limits on what a sandbox carries (metadata, environment). */
#define GW_META_MAX_ENTRIES 64
#define GW_META_MAX_BYTES (16u * 1024u)
#define GW_ENV_MAX_ENTRIES 256
#define GW_ENV_MAX_BYTES (32u * 1024u)

struct gw;
struct gw_req;
struct gw_stream;
struct gw_sandbox;

/* ---- keys.c ---- */
struct gw_key {
	char team[GW_TEAM_MAX + 1];
	uint8_t hash[32];            /* SHA-256 of the key: the key itself is never kept */
	char hash_hex[65];
	char **templates;            /* the templates it may use; NULL: every one */
	size_t n_templates;
	unsigned line;
	unsigned sandboxes;          /* its sandboxes now */
	unsigned jobs;               /* its jobs on workers now */
};
struct gw_keys {
	struct gw_key *v;
	size_t n;
};
/* Reads the keys file: "KEY TEAM [TEMPLATE,...]" a line, '#' comments.
 * Every problem is reported with its line; the file must not be readable
 * by others. */
int gw_keys_load(struct gw_keys *k, const char *path, struct vmf_error *err);
void gw_keys_free(struct gw_keys *k);
/* The key presented, compared with every key in constant time; NULL when
 * none matches. */
struct gw_key *gw_keys_find(const struct gw_keys *k, const char *presented);
struct gw_key *gw_keys_by_hash(const struct gw_keys *k, const char *hash_hex);
bool gw_key_may_use(const struct gw_key *k, const char *template_id);
/* Constant-time string equality (lengths may differ). */
bool gw_secret_equal(const char *a, const char *b);

/* ---- gateway.c: the context and the job scheduler ---- */
struct gw_job {
	struct gw *gw;
	struct gw_sandbox *sb;       /* jobs on one sandbox run one at a time; may be NULL */
	struct gw_key *key;          /* counted against its share of the workers; may be NULL */
	/* On the loop when the job is about to run (it may cancel it). */
	void (*start)(struct gw_job *j);
	void (*work)(struct gw_job *j);   /* on a worker: only the job's own fields */
	void (*done)(struct gw_job *j);   /* on the loop; frees the job */
	bool cancelled;              /* its sandbox went first: work did not run */
	int rc;
	struct vmf_error err;
	struct gw_job *next;
};

struct gw {
	struct vmf_gateway_opts o;
	struct event_base *base;
	struct vmf_jobs *jobs;
	struct gw_keys keys;
	struct gw_http *http;
	struct gw_sandbox *sandboxes;
	unsigned n_sandboxes;
	struct gw_job *waiting, **waiting_tail;
	unsigned n_waiting, key_job_cap;
	struct event *tick, *sigterm, *sigint, *sighup;
	bool stopping;
	/* the state file: writes in order, one at a time */
	uint64_t state_gen, state_written;
	bool state_writing;
	struct gw_state_waiter *state_waiters;
	uid_t uid;
};

/* Queues a job (embedded first in the caller's struct).  -EAGAIN when too
 * many wait: the caller answers 503. */
int gw_job_submit(struct gw *gw, struct gw_job *j);

/* ---- http.c ---- */
struct gw_http;
int gw_http_start(struct gw *gw, struct vmf_error *err);
/* The address it listens on ("127.0.0.1:3000"). */
const char *gw_http_addr(const struct gw *gw);
/* Stops: pending replies answered 503, streams ended, then the server. */
void gw_http_stop(struct gw *gw);
unsigned gw_http_connections(const struct gw *gw);

const char *gw_req_method(const struct gw_req *r);
const char *gw_req_path(const struct gw_req *r);
const char *gw_req_header(struct gw_req *r, const char *name);
const char *gw_req_query(struct gw_req *r, const char *name);
/* fn for each value of a query argument given (possibly) several times. */
void gw_req_query_each(struct gw_req *r, const char *name, void (*fn)(const char *v, void *arg), void *arg);
const char *gw_req_body(const struct gw_req *r, size_t *len);
/* What the request is bound to: the key (control plane), the sandbox (envd). */
struct gw_key *gw_req_key(const struct gw_req *r);
struct gw_sandbox *gw_req_sandbox(const struct gw_req *r);
void gw_req_set_key(struct gw_req *r, struct gw_key *k);
void gw_req_set_sandbox(struct gw_req *r, struct gw_sandbox *sb);
/* The largest body this request may have (set while its headers are seen). */
void gw_req_set_body_cap(struct gw_req *r, size_t cap);

/* A reply (once per request): now, or later for a request the handler
 * deferred (gw_defer) while a job runs. */
void gw_req_add_header(struct gw_req *r, const char *name, const char *value);
void gw_reply(struct gw_req *r, unsigned status, const char *ctype, const void *body, size_t len);
void gw_reply_json(struct gw_req *r, unsigned status, json_object *j);   /* takes j */
/* E2B's error body {"code": status, "message": ...}. */
void gw_reply_error(struct gw_req *r, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void gw_defer(struct gw_req *r);
bool gw_req_replied(const struct gw_req *r);

/* A streamed reply (chunked): bytes as they come, pulled by the socket's
 * pace.  The stream lives until the client has it all or went away; its
 * owner hears of both (on_gone) and of room again after a full buffer
 * (on_drain), from the loop, never from inside the HTTP server. */
struct gw_stream_owner {
	void (*on_drain)(void *arg);
	void (*on_gone)(void *arg);
	void *arg;
};
struct gw_stream *gw_stream_open(struct gw_req *r, unsigned status, const char *ctype);
void gw_stream_set_owner(struct gw_stream *s, const struct gw_stream_owner *o);
void gw_stream_write(struct gw_stream *s, const void *data, size_t len);
size_t gw_stream_pending(const struct gw_stream *s);
/* Written when nothing else was for ms (a keepalive), until the end. */
void gw_stream_idle(struct gw_stream *s, unsigned ms, const void *data, size_t len);
/* After what was written: the end.  The owner hears nothing more. */
void gw_stream_end(struct gw_stream *s);
/* Requests and streams ask a deadline-driven wakeup of the loop. */
#define GW_STREAM_HIGH (256u * 1024u)

/* Dispatch (api.c, envd.c): begin sees the headers (authentication, the
 * body's cap; a reply there goes out without reading the body), dispatch
 * the whole request. */
void gw_api_begin(struct gw *gw, struct gw_req *r);
void gw_api_dispatch(struct gw *gw, struct gw_req *r);
void gw_envd_begin(struct gw *gw, struct gw_req *r);
void gw_envd_dispatch(struct gw *gw, struct gw_req *r);

/* ---- sandbox.c ---- */
enum gw_sb_state { GW_SB_CREATING, GW_SB_RUNNING, GW_SB_PAUSED };

struct gw_proc;
struct gw_guest {                /* guest.c */
	struct vmf_client_agent *a;
	struct event *rd, *wr, *pump;
	bool busy;                   /* a job holds a: the loop keeps off it */
	bool held;                   /* a stream's buffer is full: not reading */
	struct gw_proc *procs;
	unsigned n_procs;
	struct gw_watch *watches;    /* files.c: WatchDir streams */
	unsigned n_watches;
};

struct gw_sandbox {
	struct gw_sandbox *next;
	unsigned refs;
	bool gone;                   /* out of the table; freed at the last unref */
	bool dying;                  /* a kill runs: invisible to the API */
	char id[GW_SANDBOX_ID_LEN + 1];
	char vm_id[40];
	char key_hash[65];
	char team[GW_TEAM_MAX + 1];
	struct gw_key *key;          /* NULL: its key left the keys file */
	char template_id[GW_TEMPLATE_MAX + 1];
	char token[GW_TOKEN_LEN + 1];   /* envd's access token */
	json_object *metadata, *env_vars;
	int64_t started_ms, end_ms;  /* CLOCK_REALTIME */
	enum gw_sb_state state;
	bool auto_pause;             /* onTimeout: pause rather than kill */
	bool expiring;               /* its lease ran out: the action is queued */
	unsigned vcpus, memory_mib;
	char agent_socket[108];
	char agent_transport[16];
	unsigned vsock_port;
	/* jobs */
	bool job_running;
	struct gw_guest guest;
};

struct gw_sandbox *gw_sb_new(struct gw *gw, struct gw_key *key);
void gw_sb_ref(struct gw_sandbox *sb);
void gw_sb_unref(struct gw *gw, struct gw_sandbox *sb);
/* Out of the table (its processes ended, its key's count down). */
void gw_sb_remove(struct gw *gw, struct gw_sandbox *sb);
/* A sandbox the key may see (visible: not being killed). */
struct gw_sandbox *gw_sb_find(struct gw *gw, const char *id, const struct gw_key *key);
struct gw_sandbox *gw_sb_lookup(struct gw *gw, const char *id);
void gw_sb_dir(const struct gw *gw, const char *id, char *out, size_t n);
bool gw_valid_sandbox_id(const char *s);
void gw_random_id(char *out, size_t len, const char *alphabet);

/* The state file: gw_state_save() schedules a write of the table as it is
 * now; fn(arg) runs once it is on disk (or failed: rc < 0). */
void gw_state_save(struct gw *gw, void (*fn)(struct gw *gw, int rc, void *arg), void *arg);
int gw_state_load(struct gw *gw, struct vmf_error *err);
void gw_state_save_now(struct gw *gw);
/* At start: the table against the daemon's VMs (adopt, drop, release). */
int gw_reconcile(struct gw *gw, struct vmf_error *err);

/* ---- lease.c ---- */
void gw_lease_set(struct gw *gw, struct gw_sandbox *sb, unsigned timeout_s);
/* A running sandbox's lease only grows (E2B's connect). */
void gw_lease_extend(struct gw *gw, struct gw_sandbox *sb, unsigned timeout_s);
/* The timeout asked for, bounded by the gateway's maximum; 0: the default. */
unsigned gw_lease_timeout(const struct gw *gw, int64_t asked);
void gw_lease_tick(struct gw *gw);
/* The daemon's lease of a sandbox's VM (get --ttl, resume --ttl, lease):
 * the gateway's timeout and a grace, so that the gateway's own expiry acts
 * first while it runs and the daemon's ends the VM when no gateway does. */
unsigned gw_lease_daemon_ttl(unsigned timeout_s);
/* The sandbox's lease, as it is now, given to the daemon (a job). */
void gw_lease_push(struct gw *gw, struct gw_sandbox *sb);

/* ---- vm.c: jobs that talk to the daemon ---- */
/* CREATE: the sandbox (state CREATING, in the table) gets a VM of its
 * template; KILL, PAUSE, RESUME: release, suspend, resume its VM.  done on
 * the loop; -EAGAIN when the job cannot be queued. */
/* LEASE: the daemon's lease of a running sandbox's VM set from its own
 * (gw_lease_daemon_ttl of what is left of it).  gw_vm_run_ttl: CREATE and
 * RESUME with the daemon's lease of ttl_s (0: none), ending in a suspend
 * for a sandbox of autoPause. */
enum gw_vm_op { GW_VM_CREATE, GW_VM_KILL, GW_VM_PAUSE, GW_VM_RESUME, GW_VM_LEASE };
typedef void (*gw_vm_done_fn)(struct gw *gw, struct gw_sandbox *sb, int rc, const struct vmf_error *err, void *arg);
int gw_vm_run(struct gw *gw, struct gw_sandbox *sb, enum gw_vm_op op, gw_vm_done_fn done, void *arg);
int gw_vm_run_ttl(struct gw *gw, struct gw_sandbox *sb, enum gw_vm_op op, unsigned ttl_s, gw_vm_done_fn done,
		  void *arg);
/* The HTTP status for a daemon errno. */
unsigned gw_status_for_errno(int code);

/* ---- guest.c ---- */
void gw_guest_init(struct gw *gw, struct gw_sandbox *sb);
/* What a new connection brings along (gw_guest_prepare, on a worker). */
struct gw_adopted {
	struct vmf_exec_entry *v;    /* kept processes now attached to it */
	size_t n;
};
/* The sandbox's envVars as "KEY=VALUE" strings (NULL-terminated, for a
 * job; NULL when out of memory); gw_strv_free frees them. */
char **gw_sb_env(const struct gw_sandbox *sb);
void gw_strv_free(char **v);
/* On a worker, right after a connection is made: the sandbox's environment
 * for every process (the agent's ExecSetEnv), and the kept processes an
 * earlier connection started (before a pause, a gateway restart, a broken
 * connection) attached to this one. */
int gw_guest_prepare(struct vmf_client_agent *a, char *const *env, struct gw_adopted *ad, struct vmf_error *err);
/* The connection, from a job that made it (vm.c), with the processes it
 * adopted (taken; may be NULL), or dropped: every process's stream ends
 * with error code/message. */
void gw_guest_attach(struct gw *gw, struct gw_sandbox *sb, struct vmf_client_agent *a, struct gw_adopted *ad);
void gw_guest_close(struct gw *gw, struct gw_sandbox *sb, const char *code, const char *msg);
void gw_guest_free(struct gw_sandbox *sb);
/* Runs fn on a worker with the connection (made first if there is none);
 * the loop keeps off it meanwhile.  done on the loop. */
struct gw_guest_job {
	struct gw_job job;
	struct vmf_client_agent *a;  /* for work(); NULL when it could not be had */
	void (*fn)(struct gw_guest_job *g);
	void (*after)(struct gw_guest_job *g);
	char socket[108], transport[16];
	unsigned vsock_port;
	struct vmf_client_agent *made;
	char **env;                  /* the sandbox's, for a connection it makes */
	struct gw_adopted adopted;
	bool holds;                  /* it holds the connection (started) */
};
int gw_guest_run(struct gw *gw, struct gw_sandbox *sb, struct gw_guest_job *g);
/* Reading again once a full stream drained. */
void gw_guest_unhold(struct gw_sandbox *sb);
/* Queued writes (stdin, credit) go out. */
void gw_guest_flush(struct gw *gw, struct gw_sandbox *sb);

/* ---- process.c ---- */
/* Streams one process's output goes to at once: Start's and Connects'. */
#define GW_PROC_STREAMS 4
struct gw_proc;
struct gw_listener {
	struct gw_proc *p;
	struct gw_stream *s;         /* NULL: this slot is free */
};
struct gw_proc {
	struct gw_proc *next;
	struct gw_sandbox *sb;
	uint64_t exec_id;
	uint32_t pid;                /* what E2B calls it: the agent's exec id */
	char *tag;
	json_object *config;         /* cmd, args, envs, cwd: for List */
	struct gw_listener ls[GW_PROC_STREAMS];   /* none: nobody listens; output is dropped */
	bool pty, timed_out;
	unsigned timeout_ms;
};
/* Whether a stream of the process has a full buffer (reading waits). */
bool gw_proc_full(const struct gw_proc *p);
/* A kept process a new connection attached: into the table. */
void gw_proc_adopt(struct gw_sandbox *sb, const struct vmf_exec_entry *e);
/* An event of the sandbox's agent connection. */
void gw_proc_event(struct gw *gw, struct gw_sandbox *sb, const struct vmf_exec_event *ev);
/* The connection went: each process ends (its stream with code/message). */
void gw_proc_drop_all(struct gw *gw, struct gw_sandbox *sb, const char *code, const char *msg);

/* ---- envd.c: the Connect protocol ---- */
struct gw_rpc_method {
	const char *name;            /* "process.Process/Start" */
	bool server_stream;
	/* NULL: not served yet; later says what will serve it */
	void (*fn)(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, json_object *msg);
	const char *later;
};
/* Per service file (process.c, files.c): its methods, NULL-terminated by name. */
extern const struct gw_rpc_method gw_process_methods[];
extern const struct gw_rpc_method gw_filesystem_methods[];
/* Unary replies; a Connect error (code "not_found", ...) with its status. */
void gw_rpc_reply(struct gw_req *r, json_object *msg);
void gw_rpc_error(struct gw_req *r, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A server stream: messages, then an end with or without error.  The
 * stream keeps itself alive with keepalive (a message) when idle. */
struct gw_stream *gw_rpc_stream_open(struct gw_req *r, json_object *keepalive);
void gw_rpc_send(struct gw_stream *s, json_object *msg);   /* takes msg */
/* {"event": {kind: body}}, the streams' message shape (takes body). */
json_object *gw_rpc_event(const char *kind, json_object *body);
void gw_rpc_end(struct gw_stream *s, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The sandbox user the request runs as (HTTP Basic user, else "user"). */
struct gw_user {
	const char *name, *home;
	uint32_t uid, gid;
	bool root;
};
int gw_envd_user(struct gw_req *r, struct gw_user *u, char *why, size_t n);

/* ---- files.c: envd's GET and POST /files, WatchDir ---- */
void gw_files_http(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb);
/* The agent's watches per connection (one connection per sandbox). */
#define GW_WATCHES_MAX 8u
struct gw_watch;
/* A watch's events (VMF_EXEC_EV_FILES) to its stream. */
void gw_watch_event(struct gw *gw, struct gw_sandbox *sb, const struct vmf_exec_event *ev);
/* The connection went: each watch's stream ends (code NULL: no error). */
void gw_watch_drop_all(struct gw *gw, struct gw_sandbox *sb, const char *code, const char *msg);

/* ---- small helpers (api.c) ---- */
void gw_iso_time(int64_t ms, char *out, size_t n);
/* o[k] when it is a string, else NULL. */
const char *gw_json_str(json_object *o, const char *k);
int64_t gw_now_ms(void);

#endif
