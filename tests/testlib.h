/* Shared helpers for the Check test programs. */
#ifndef VMF_TESTLIB_H
#define VMF_TESTLIB_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

/* Runs a suite and returns the process exit status (Check prints its summary):
 * failure if a test failed; else 77 (meson: SKIP) if any test called
 * vmf_test_skip(), so that a skip never counts as a pass; failure if no
 * test ran at all (a CK_RUN_CASE naming no case), unless VMFACTORY_TEST
 * picked a test of another case (77). */
int vmf_test_run(Suite *s);

/* Records that the running test cannot run here and why (printed as
 * "SKIP: reason"); the test then returns.  Check has no skip result, and
 * one skip makes the whole program a SKIP; so a test that may skip goes in
 * a TCase of its own, tagged VMF_TEST_OWN_CASE, that tests/meson.build
 * registers as its own test (CK_RUN_CASE=name) and leaves out of the
 * program's main entry (CK_EXCLUDE_TAGS): the program's other tests then
 * still count. */
void vmf_test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define VMF_TEST_OWN_CASE "own"
/* For a program that cannot run at all here (before vmf_test_run): prints
 * "SKIP: reason" (contrib/test lists these lines) and returns 77 for main()
 * to return. */
int vmf_test_skip_all(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* True in a build with fault points (-Dfault_injection=true: meson sets
 * VMFACTORY_FAULT_BUILD=1).  A test that needs them starts with
 * REQUIRE_FAULT_BUILD(): elsewhere it skips, visibly. */
bool vmf_test_fault_build(void);
#define REQUIRE_FAULT_BUILD()                                                                                    \
	do {                                                                                                     \
		if (!vmf_test_fault_build()) {                                                                   \
			vmf_test_skip("this build has no fault points (contrib/test's build-test has: "             \
				      "-Dfault_injection=true)");                                                   \
			return;                                                                                  \
		}                                                                                                \
	} while (0)

/* Waiting on a condition with a deadline (never a blind sleep): polls cond
 * every 10 ms, backing off to 100 ms.  wait_until() fails the test with the
 * printf-style message when ms pass first; poll_until() just stops waiting
 * then, for a caller that asserts (or reports) the outcome itself. */
struct vmf_wait {
	int64_t deadline;
	int step;
};
struct vmf_wait vmf_wait_start(int64_t ms);
/* Sleeps one step; false once the deadline has passed. */
bool vmf_wait_more(struct vmf_wait *w);
#define wait_until(cond, ms, ...)                                                                                \
	do {                                                                                                     \
		struct vmf_wait w_ = vmf_wait_start(ms);                                                         \
		while (!(cond))                                                                                  \
			if (!vmf_wait_more(&w_))                                                                 \
				ck_abort_msg(__VA_ARGS__);                                                       \
	} while (0)
#define poll_until(cond, ms)                                                                                       \
	do {                                                                                                     \
		struct vmf_wait w_ = vmf_wait_start(ms);                                                         \
		while (!(cond) && vmf_wait_more(&w_))                                                            \
			;                                                                                        \
	} while (0)

/* The first sanitizer report (ASan, LSan, UBSan, TSan) in a log below dir
 * (depth levels down): every regular file named *.log or *.err, the daemons'
 * logs, the CLI's stderr and kept guest consoles among them.  Copies the
 * report's start, with the file's name, into msg; false when there is none. */
bool vmf_test_sanitizer_report(const char *dir, int depth, char *msg, size_t n);

/* Directory holding vmlinuz/initrd.img; NULL (and a printed reason) when the
 * guest image is missing, so integration tests can fail clearly. */
const char *vmf_test_image_dir(void);

/* mkdtemp under $TMPDIR (or /tmp) with the given prefix; aborts on failure. */
char *vmf_test_tmpdir(const char *prefix);

/* fork(), failing the test if it fails.  Use it, never fork() followed by
 * ck_assert: every passing assertion writes a mark to check's message
 * file, and in the child that lands in the parent's file (with CK_FORK=no,
 * as under valgrind, the parent then reads "Bad message type").  The child
 * must call nothing from check. */
pid_t vmf_test_fork(void);

/* This build's guest agent (VMFACTORY_BUILDDIR/contrib/agent/vmf-agent, or
 * $VMFACTORY_AGENT: the sanitizer stage's vmf-agent-sanitized). */
const char *vmf_test_agent_path(void);
/* The agent in listener test mode (--listen-fd) on a new unix socket at
 * sock_path, sharing share_dir; its pid (the caller kills it). */
pid_t vmf_test_agent_listener(const char *sock_path, const char *share_dir);
/* The same with an exec ledger dir (--exec-ledger), or none when NULL. */
pid_t vmf_test_agent_listener_with(const char *sock_path, const char *share_dir, const char *ledger);

/* Entries of directory path but . and ..; -1 when it cannot be read. */
int vmf_test_dir_entries(const char *path);

/* Path in the source tree (VMFACTORY_SRCDIR/rel); static buffer. */
const char *vmf_test_src(const char *rel);

/* SIGKILLs every process whose command line contains both prog and dir, and
 * waits until they are gone (a failed test must not leak VMs or daemons);
 * returns how many it killed. */
int vmf_test_kill_under(const char *prog, const char *dir);
/* Processes whose command line contains both prog and dir. */
int vmf_test_count_under(const char *prog, const char *dir);
#define vmf_test_kill_qemu_under(dir) vmf_test_kill_under("qemu-system", (dir))

/* True under valgrind (its preload is in LD_PRELOAD): time and CPU
 * bounds are checked without it. */
bool vmf_test_under_valgrind(void);
/* dir/d/d/d/... depth levels, one fd open at a time (a tree deeper than a
 * process may hold fds for); a file "f" in every 1000th level when files. */
void vmf_test_make_chain(const char *dir, unsigned depth, bool files);

#endif
