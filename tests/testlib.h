/* Shared helpers for the Check test programs. */
#ifndef VMF_TESTLIB_H
#define VMF_TESTLIB_H

#include <check.h>
#include <stdbool.h>
#include <sys/types.h>

/* Runs a suite and returns the process exit status (Check prints its summary). */
int vmf_test_run(Suite *s);

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

/* Path in the source tree (VMFACTORY_SRCDIR/rel); static buffer. */
const char *vmf_test_src(const char *rel);

/* SIGKILLs every process whose command line contains both prog and dir, and
 * waits until they are gone (a failed test must not leak VMs or daemons);
 * returns how many it killed. */
int vmf_test_kill_under(const char *prog, const char *dir);
/* Processes whose command line contains both prog and dir. */
int vmf_test_count_under(const char *prog, const char *dir);
#define vmf_test_kill_qemu_under(dir) vmf_test_kill_under("qemu-system", (dir))

#endif
