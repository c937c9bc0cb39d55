/* The vmfactory command line, shared by its files.  Commands are data: one
 * table in main.c (name, usage, options, handler); `help` is generated from
 * it.  A handler lives in the file of its kind:
 *   remote.c     status, get, inspect, release, destroy: requests through the
 *                client library over one call/print helper (the daemon
 *                validates)
 *   exec.c       exec: the agent's address from the daemon, then the agent
 *                directly (stdin, output, exit status)
 *   start.c      init, daemon: options and config merged, the daemon started
 *   gateway.c    gateway: [gateway] and flags merged, the E2B gateway run
 *   templates.c  template build/list/rm/gc, check-config: offline, on the
 *                catalog under the daemon's lock (rm through a running
 *                daemon first)
 *   print.c      JSON and human output of replies and template records
 * Errors are printed here, once, at the edge. */
#ifndef VMF_CLI_H
#define VMF_CLI_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>

#include "catalog.h"
#include "client.h"
#include "config.h"
#include "daemon.h"

#define EXIT_USAGE 2
#define EXIT_NO_DAEMON 3
#define CALL_TIMEOUT_MS 30000

#define MAX_OPTS 32
struct args {
	const char *names[MAX_OPTS];
	const char *vals[MAX_OPTS];
	int n;
	char **pos;          /* positional arguments */
	int npos;
	/* common */
	const char *socket, *state_dir, *run_dir;
	bool json;
};

struct cmd;
typedef int (*handler_fn)(const struct cmd *cmd, struct args *a);

struct cmd {
	const char *name;
	const char *usage;      /* after the name */
	const char *summary;
	const char *opts;       /* "pool=,wait,..." ; '=' takes a value */
	int min_pos, max_pos;
	handler_fn fn;
};

/* main.c: options and errors */
const char *opt(const struct args *a, const char *name);
bool flag(const struct args *a, const char *name);
int num(const struct args *a, const char *name, unsigned *out, const struct cmd *c);
int usage_error(const struct cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fail(const struct vmf_error *e);

/* remote.c */
int cmd_status(const struct cmd *cmd, struct args *a);
int cmd_get(const struct cmd *cmd, struct args *a);
int cmd_inspect(const struct cmd *cmd, struct args *a);
int cmd_release(const struct cmd *cmd, struct args *a);
int cmd_suspend(const struct cmd *cmd, struct args *a);
int cmd_resume(const struct cmd *cmd, struct args *a);
int cmd_lease(const struct cmd *cmd, struct args *a);
int cmd_destroy(const struct cmd *cmd, struct args *a);
int cmd_attach(const struct cmd *cmd, struct args *a);
int cmd_detach(const struct cmd *cmd, struct args *a);
int cmd_snapshot(const struct cmd *cmd, struct args *a);
/* template rm through the daemon; EXIT_NO_DAEMON (nothing printed) when
 * none answers on a->socket. */
int template_rm_remote(struct args *a);
/* template list through the daemon, for a caller that cannot read the
 * catalog: the templates the daemon shows it; EXIT_NO_DAEMON (nothing
 * printed) when none answers. */
int template_list_remote(struct args *a);

/* exec.c: exec, straight to the VM's agent */
int cmd_exec(const struct cmd *cmd, struct args *a);

/* start.c */
int cmd_init(const struct cmd *cmd, struct args *a);
/* --config FILE, else the default file when it exists (*loaded false
 * without one); a bad file is printed, every problem, and is the exit
 * status.  cfg is freed on failure. */
int load_config(struct args *a, struct vmf_config *cfg, bool *loaded);

/* gateway.c: vmfactory gateway, the E2B API (factory/gateway) */
int cmd_gateway(const struct cmd *cmd, struct args *a);
/* Defaults, then the config file (cfg non-NULL), then flags and the
 * VMFACTORY_* variables.  cfg must outlive o: o points into it.  Non-zero
 * is the exit status (the error printed). */
int fill_daemon_opts(const struct cmd *cmd, struct args *a, struct vmf_daemon_opts *o, struct vmf_config *cfg);

/* templates.c */
int cmd_template_build(const struct cmd *cmd, struct args *a);
int cmd_template_list(const struct cmd *cmd, struct args *a);
int cmd_template_rm(const struct cmd *cmd, struct args *a);
int cmd_template_gc(const struct cmd *cmd, struct args *a);
int cmd_check_config(const struct cmd *cmd, struct args *a);

/* print.c: the *_json ones return a new object for print_json, which
 * prints and frees it.  Text from the daemon may carry a guest's (a
 * hostname, file names, an error) or another client's (a path): human
 * output shows every string through esc() (common/text.h: no control
 * byte, C1 control, invalid UTF-8 or direction mark reaches the
 * terminal), print_json escapes those the JSON encoder leaves raw, and
 * errors go through print_error. */
const char *esc(const char *s);
void print_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define JS(o, k, v) json_object_object_add(o, k, json_object_new_string((v) ? (v) : ""))
#define JI(o, k, v) json_object_object_add(o, k, json_object_new_int64((int64_t)(v)))
#define JD(o, k, v) json_object_object_add(o, k, json_object_new_double(v))
#define JB(o, k, v) json_object_object_add(o, k, json_object_new_boolean(v))
void print_json(json_object *j);
json_object *disk_json(const Vmf__Control__Reply *r);
void disk_human(const Vmf__Control__Reply *r);
json_object *vm_json(const Vmf__Control__Reply *r);
json_object *release_json(const Vmf__Control__Reply *r);
void release_human(const Vmf__Control__Reply *r);
void vm_human(const Vmf__Control__Reply *r);
json_object *inspect_json(const Vmf__Control__Reply *r);
void inspect_human(const Vmf__Control__Reply *r);
json_object *status_json(const Vmf__Control__Reply *r);
void status_human(const Vmf__Control__Reply *r);
/* A status reply's templates alone (template list through the daemon). */
json_object *template_status_json(const Vmf__Control__Reply *r);
void template_status_human(const Vmf__Control__Reply *r);
json_object *snapshot_json(const Vmf__Control__Reply *r);
void snapshot_human(const Vmf__Control__Reply *r);
json_object *template_rm_json(const Vmf__Control__Reply *r);
void template_rm_human(const Vmf__Control__Reply *r);
/* A catalog record (rec NULL: unreadable, rec_err says why). */
json_object *template_json(const char *id, const Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err);
void template_human(const char *id, const Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err);

#endif
