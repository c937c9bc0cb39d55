/* Helpers shared by the end-to-end daemon tests (daemonlib.c). */
#ifndef VMF_DAEMONLIB_H
#define VMF_DAEMONLIB_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <sys/types.h>

#include "client.h"

#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#else
#define UNDER_ASAN 0
#endif
#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#else
#define UNDER_TSAN 0
#endif

/* The test's private dirs (setup() makes them under $TMPDIR) and the CLI:
 * tmp is the daemon's sandbox root (VMFACTORY_SANDBOX_ROOTS) and holds the
 * socket; svc (tmp's name + "-svc") holds the state and run dirs. */
extern char *tmp;
extern char svc[600], sock[600], state[600], run[600], common_opts[2200], exe[600];
/* VMFACTORY_FAULT for the next commands, or NULL. */
extern const char *fault;
/* vmfactory init --pool 1 --group (the tenant group) EXTRA --wait: a
 * daemon whose tenants are tu's users; the test fails with the CLI's
 * stderr when it does not start. */
void start_tenant_daemon(const char *extra);

/* The checked fixture: a fresh tmp dir with socket, state and run dirs;
 * cleanup() destroys and kills whatever the test left and removes tmp. */
void setup(void);
void cleanup(void);
/* setup() for a daemon on the fake Firecracker (tests/fake_vmm; no VM
 * boots): fake gets the VMM's path, cfg a config file naming it with one
 * pool "one" of size 1; the state dir is made. */
void setup_fake_firecracker(char *cfg, size_t cfg_n, char *fake, size_t fake_n);
/* The socket (tmp/sub.sock), state and run dirs (svc/sub/) of a second daemon. */
void use_dirs(const char *sub);

/* Runs `vmfactory ARGS COMMON_OPTS`; returns the exit status, stdout in
 * *out (stderr appended to tmp/cli.err). */
int vmf(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The stderr of this thread's last vmf(). */
const char *cli_stderr(void);
/* A refusal: `vmfactory ARGS` exits 1 and its stderr holds each of words
 * ('|'-separated key words of the sentence, e.g. "belongs to uid|share"). */
void vmf_refused(const char *words, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* text holds each '|'-separated word; what names the call in the failure. */
void assert_words(const char *text, const char *words, const char *what);
/* The same, asserting exit 0, parsed as JSON. */
json_object *vmf_json(const char *fmt, const char *arg);
/* o[a] or o[a][b], asserting they exist. */
json_object *path(json_object *o, const char *a, const char *b);

/* The daemon on sock answers a status request (5 s at most). */
bool daemon_answers(void);
int pool_ready(void);
int daemon_pid(void);
int vm_count(void);
/* The state of VM id in status; "" when it is not listed. */
const char *vm_listed_state(const char *id);
/* Pids of the VMs in status with the given state, sorted, as a string. */
void pids_in_state(const char *want, char *out, size_t n);
void kill_daemon_hard(void);
/* The state of the VM handed (or being handed) to sandbox, "" if none. */
void vm_of_sandbox(const char *sandbox, char *state, size_t n);
/* A fault-injection gate (VMFACTORY_FAULT=gates): <run>/gate-NAME holds
 * value, how many clones named name may pass, or "fail". */
void fault_gate(const char *name, const char *value);
void assert_daemon_log_clean(void);

/* QEMU processes whose command line mentions our run dir; qemu_gone()
 * waits (10 s at most) for stopped ones to finish exiting first. */
int count_qemu(void);
int qemu_gone(void);
void assert_qemu_fds_clean(void);

/* A GetVM through the CLI with share and sock dirs tmp/NAME-share and
 * tmp/NAME-sock. */
struct got {
	char id[64];
	char share[700], sockd[700];
	json_object *rec;
	int rc;
};
void do_get(struct got *g, const char *name, int cpus, int mem);
void *get_thread(void *arg);   /* do_get(arg, arg->id, 1, 256) */

/* stdout of `sh -c cmd` in VM id through its agent (vmfactory exec, as
 * root), trailing newlines dropped; the test fails, with the CLI's errors,
 * when it exits non-zero.  The caller frees it. */
char *vm_sh(const char *id, const char *cmd);

/* A raw connection to the daemon, for what the client library never sends;
 * raw_reply() reads a reply frame and returns its error_code (-1 on EOF). */
int raw_connect(void);
int raw_reply(int fd);
bool closed_by_peer(int fd);

/* `vmfactory init --foreground` in the background (stderr in log); its pid. */
pid_t start_foreground(const char *socket, const char *state_dir, const char *log, const char *extra);
void stop_daemon(pid_t pid);
/* The first pool's failure count and last error; -1 when nobody answers. */
int pool_failures(const char *socket, char *last_error, size_t n);

/* The content of file in the ext4 image img, read on the host (debugfs). */
void host_cat(const char *img, const char *file, char *out, size_t n);

/* A free TCP port on 127.0.0.1 (bound, then released). */
int free_port(void);
/* GET http://127.0.0.1:port/path; the whole response (headers too). */
char *http_get(int port, const char *pathq);

/* One line per check, "ok:" or "FAIL:", for tests that report many checks
 * and fail once at the end (ck_assert_msg(failures == 0, ...)). */
extern int failures;
void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Two tenants and their group for tests that act as unprivileged peers:
 * PREFIX<pid>a, PREFIX<pid>b in group PREFIX<pid>g (prefixes per test, so
 * parallel tests never share users).  tenant_users_make() returns NULL or
 * why it cannot (the test then skips); the users go at the main process's
 * exit, on SIGINT/SIGTERM, or at tenant_users_remove().  become_tenant()
 * drops a forked child to uid with the group. */
struct tenant_users {
	char a[32], b[32], group[32];
	uid_t uid_a, uid_b;
	gid_t gid;
};
extern struct tenant_users tu;
/* Why a test cannot run here: the guest image (VMFACTORY_IMAGE_DIR) lacks
 * one of mods (NULL-terminated module names its manifest must list), or
 * the tenant users PREFIX<pid>... cannot be made; NULL when it can run.
 * The caller prints it and exits 77. */
const char *tenant_image_check(const char *const *mods, const char *prefix);
const char *tenant_users_make(const char *prefix);
void tenant_users_remove(void);
bool become_tenant(uid_t uid);
/* Acting as a tenant (or another uid with the tenant group; 0: root).
 * as_tenant() runs fn(arg, msg, n) in a child dropped to uid and returns
 * its return (0 or -errno), with the message it wrote in msg; as_user()
 * the same into a struct act. */
typedef int (*tenant_fn)(const void *arg, char *msg, size_t n);
int as_tenant(uid_t uid, tenant_fn fn, const void *arg, char *msg, size_t n);
struct act {
	int rc;
	char msg[1100];
};
typedef tenant_fn act_fn;
void as_user(uid_t uid, act_fn fn, const void *arg, struct act *out);

/* `sh -c script` as uid (become_tenant) with stdout and stderr into out
 * (n bytes, NUL-terminated, the rest read and dropped); its exit status. */
int tenant_sh(uid_t uid, const char *script, char *out, size_t n);
/* The same for `vmfactory ARGS COMMON_OPTS`. */
int tenant_vmf(uid_t uid, char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* NULL when the guest image's manifest lists every module named (a
 * NULL-terminated list), else the first one missing (or "a manifest listing its modules" when the image has none). */
const char *guest_image_lacks(const char *const *modules);

/* call_as() runs one control request as uid on a fresh connection: fn
 * calls the client library on c and may write what it got into out; on
 * failure msg holds the error's sentence.  vmf_as() is vmf() as uid (stderr
 * apart, in cli_stderr(); tenant_vmf() above has both in one buffer).
 * assert_refused() asserts a refusal's errno and its sentence's key words
 * ('|'-separated). */
typedef int (*tenant_call_fn)(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int call_as(uid_t uid, tenant_call_fn fn, const void *arg, char *msg, size_t n);
int vmf_as(uid_t uid, char **out, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void assert_refused(int rc, const char *msg, int err, const char *words, const char *what);
/* A tenant's own dir, as a runtime would set it up: $tmp/USER, mode 0755,
 * owned by uid and the tenant group; its path in dir. */
void tenant_dir(const char *user, uid_t uid, char *dir, size_t n);
/* GetVM of 1 vCPU and 256 MiB as uid into dir/share and dir/sock: 0 with
 * the VM's id in id, or -errno with the error's sentence there. */
int tenant_get(uid_t uid, const char *dir, const char *sandbox, char *id, size_t n);
/* The same into share and sockd with timeout_ms: 0 with "ID OWNER_UID" in
 * msg, or -errno with the error's sentence there. */
int get_into(uid_t uid, const char *share, const char *sockd, const char *sandbox, unsigned timeout_ms, char *msg,
	     size_t n);
/* Each request type for call_as().  arg: get a GetVMRequest (out: "ID
 * OWNER_UID"), attach an AttachRequest (out: the guest path), detach and
 * snapshot a const char *[2] {vm id, path or template name} (snapshot's
 * out: the template id), status nothing (out: the VM ids listed, then
 * "ready=N" of the first pool), destroy nothing, the others the VM id
 * (inspect's out: the VM's sandbox id). */
int req_get(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int req_release(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int req_inspect(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int req_status(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int req_destroy(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int req_suspend(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int req_resume(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int req_attach(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int req_detach(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);
int req_snapshot(struct vmf_client *c, const void *arg, char *out, size_t n, struct vmf_error *e);

/* VMFACTORY_TEST="name ..." runs only the tests named (a developer's
 * shortcut, and how contrib/test picks the cases it runs under TSan). */
bool test_selected(const char *name);
#define ADD_TEST(tc, t) do { if (test_selected(#t)) tcase_add_test(tc, t); } while (0)

#endif
