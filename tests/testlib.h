/* Shared helpers for the Check test programs. */
#ifndef VMF_TESTLIB_H
#define VMF_TESTLIB_H

#include <check.h>
#include <stdbool.h>
#include <sys/types.h>

#include "error.h"

/* Runs a suite and returns the process exit status (Check prints its summary):
 * failure if a test failed; 77 (meson: SKIP) if every test that ran called
 * vmf_test_skip(); failure if no test ran at all (a CK_RUN_CASE naming no
 * case), unless VMFACTORY_TEST picked a test of another case (77). */
int vmf_test_run(Suite *s);

/* Records that the running test cannot run here and why (printed as
 * "SKIP: reason"); the test then returns.  Check has no skip result, so a
 * test that may skip goes in a TCase of its own, tagged VMF_TEST_OWN_CASE,
 * that tests/meson.build registers as its own test (CK_RUN_CASE=name) and
 * leaves out of the program's main entry (CK_EXCLUDE_TAGS): its skip is then
 * a SKIP in meson's summary, and the program's other tests still count. */
void vmf_test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define VMF_TEST_OWN_CASE "own"

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

/* This build's guest agent (VMFACTORY_BUILDDIR/contrib/agent/vmf-agent). */
const char *vmf_test_agent_path(void);
/* The agent in listener test mode (--listen-fd) on a new unix socket at
 * sock_path, sharing share_dir; its pid (the caller kills it). */
pid_t vmf_test_agent_listener(const char *sock_path, const char *share_dir);

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

/* Writes a fixture file whole: data to path via path.tmp.XXXXXX + fsync +
 * rename + fsync(dir). */
int vmf_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode,
			  struct vmf_error *err);

#endif
