/* Unit tests for factory/sandbox.c: the roots, the confined opening of a
 * link's parent (with openat2 and with the walk used without it), links
 * made and removed, and the ACLs that give a VM's owner its sockets. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "sandbox.h"
#include "testlib.h"
#include "util.h"

#define TENANT 54321   /* a uid nobody has */

static char *dir;
static char root[600], state[600], run[600];
static struct vmf_sandbox_policy pol;

static void
mk(const char *rel)
{
	char p[800];
	snprintf(p, sizeof p, "%s/%s", dir, rel);
	ck_assert_int_eq(mkdir(p, 0755), 0);
}

static void
setup(void)
{
	dir = vmf_test_tmpdir("vmf-sandbox");
	snprintf(root, sizeof root, "%s/root", dir);
	snprintf(state, sizeof state, "%s/state", dir);
	snprintf(run, sizeof run, "%s/run", dir);
	mk("root");
	mk("root/mine");
	mk("root/mine/deeper");
	mk("root/theirs");
	mk("outside");
	char p[800], t[800];
	snprintf(p, sizeof p, "%s/root/via", dir);
	snprintf(t, sizeof t, "%s/root/mine", dir);
	ck_assert_int_eq(symlink(t, p), 0);
	snprintf(p, sizeof p, "%s/root/escape", dir);
	snprintf(t, sizeof t, "%s/outside", dir);
	ck_assert_int_eq(symlink(t, p), 0);
	snprintf(p, sizeof p, "%s/rootlink", dir);
	ck_assert_int_eq(symlink(root, p), 0);
	if (geteuid() == 0) {
		snprintf(p, sizeof p, "%s/root/mine", dir);
		ck_assert_int_eq(chown(p, TENANT, TENANT), 0);
		snprintf(p, sizeof p, "%s/root/mine/deeper", dir);
		ck_assert_int_eq(chown(p, TENANT, TENANT), 0);
	}
	struct vmf_error e = {0};
	ck_assert_msg(vmf_sandbox_policy_init(&pol, root, state, run, &e) == 0, "%s", e.msg);
	vmf_sandbox_test_no_openat2 = false;
}

static void
teardown(void)
{
	struct vmf_error e;
	vmf_rm_rf(dir, &e);
	free(dir);
}

START_TEST(roots_are_checked)
{
	struct vmf_sandbox_policy p;
	struct vmf_error e = {0};
	ck_assert_int_eq(vmf_sandbox_policy_init(&p, NULL, "/var/lib/vmfactory", "/run/vmfactory", &e), 0);
	ck_assert_uint_eq(p.n_roots, 3);
	ck_assert_str_eq(p.roots[0], "/run/vmfactory/sandboxes");
	ck_assert_str_eq(p.roots[1], "/run/kata-containers/shared/sandboxes");
	ck_assert_str_eq(p.roots[2], "/run/vc/vm");
	ck_assert_int_eq(vmf_sandbox_policy_init(&p, "/srv//sb/:/x", "/s", "/r", &e), 0);
	ck_assert_str_eq(p.roots[0], "/srv/sb");
	ck_assert_str_eq(p.roots[1], "/x");
	static const struct {
		const char *roots, *want;
	} bad[] = {
		{ "relative", "not an absolute path" },
		{ "/a/../b", "'..' component" },
		{ "/a/./b", "'.' component" },
		{ "/var/lib/vmfactory", "is the daemon's state dir" },
		{ "/var/lib", "contains the daemon's state dir" },
		{ "/var/lib/vmfactory/templates", "lies inside the daemon's state dir" },
		{ "/run/vmfactory", "contains the daemon's VM dir" },
		{ "/run/vmfactory/vms/x", "lies inside the daemon's VM dir" },
		{ "/", "contains the daemon's state dir" },
		{ "/ok:/run", "contains the daemon's VM dir" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int r = vmf_sandbox_policy_init(&p, bad[i].roots, "/var/lib/vmfactory/", "/run/vmfactory", &e);
		ck_assert_msg(r == -EINVAL && strstr(e.msg, bad[i].want), "%s: %d %s", bad[i].roots, r, e.msg);
	}
}
END_TEST

/* rc of vmf_sandbox_open_parent for dir/rel as peer; the error in e. */
static int
try_open(const char *rel, uid_t peer, struct vmf_error *e)
{
	char p[900], name[256];
	snprintf(p, sizeof p, "%s/%s", dir, rel);
	int fd = vmf_sandbox_open_parent(&pol, p, peer, name, sizeof name, e);
	if (fd >= 0) {
		close(fd);
		return 0;
	}
	return fd;
}

static void
confinement_cases(void)
{
	struct vmf_error e = {0};
	ck_assert_msg(try_open("root/mine/link", 0, &e) == 0, "%s", e.msg);
	ck_assert_msg(try_open("root/mine/deeper/link", 0, &e) == 0, "%s", e.msg);
	ck_assert_msg(try_open("root/link", 0, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(try_open("outside/link", 0, &e), -EACCES);
	ck_assert_msg(strstr(e.msg, "not beneath a sandbox root"), "%s", e.msg);
	/* "root2" shares root's prefix but is not beneath it */
	ck_assert_int_eq(try_open("root2/link", 0, &e), -EACCES);
	ck_assert_int_eq(try_open("root/mine/../../outside/link", 0, &e), -EINVAL);
	ck_assert_msg(strstr(e.msg, "'..'"), "%s", e.msg);
	ck_assert_int_eq(try_open("root/mine/../mine/link", 0, &e), -EINVAL);
	ck_assert_int_eq(try_open("root/./mine/link", 0, &e), -EINVAL);
	ck_assert_int_eq(try_open("root/via/link", 0, &e), -ELOOP);
	ck_assert_msg(strstr(e.msg, "symlink"), "%s", e.msg);
	ck_assert_int_eq(try_open("root/escape/link", 0, &e), -ELOOP);
	ck_assert_int_eq(try_open("root/via/deeper/link", 0, &e), -ELOOP);
	ck_assert_int_eq(try_open("root/absent/link", 0, &e), -ENOENT);
	ck_assert_int_eq(try_open("root/mine/", 0, &e), 0);   /* names "mine" in root */
	ck_assert_int_eq(try_open("state/link", 0, &e), -EACCES);
	ck_assert_int_eq(try_open("run/vms/x/link", 0, &e), -EACCES);
	ck_assert_msg(strstr(e.msg, "inside the daemon's own VM dir"), "%s", e.msg);
	char p[900], name[256];
	ck_assert_int_eq(vmf_sandbox_open_parent(&pol, "relative/x", 0, name, sizeof name, &e), -EINVAL);
	ck_assert_int_eq(vmf_sandbox_open_parent(&pol, "/", 0, name, sizeof name, &e), -EINVAL);
	/* A root that is itself reached through a symlink is refused too. */
	struct vmf_sandbox_policy lp;
	snprintf(p, sizeof p, "%s/rootlink", dir);
	ck_assert_int_eq(vmf_sandbox_policy_init(&lp, p, state, run, &e), 0);
	snprintf(p, sizeof p, "%s/rootlink/mine/x", dir);
	ck_assert_int_eq(vmf_sandbox_open_parent(&lp, p, 0, name, sizeof name, &e), -ELOOP);
	ck_assert_msg(strstr(e.msg, "sandbox root"), "%s", e.msg);

	/* Ownership: a tenant only in its own directories. */
	if (geteuid() != 0)
		return;
	ck_assert_msg(try_open("root/mine/link", TENANT, &e) == 0, "%s", e.msg);
	ck_assert_msg(try_open("root/mine/deeper/link", TENANT, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(try_open("root/theirs/link", TENANT, &e), -EACCES);
	ck_assert_msg(strstr(e.msg, "belongs to uid 0, not to the requesting uid 54321"), "%s", e.msg);
	ck_assert_int_eq(try_open("root/link", TENANT, &e), -EACCES);
	ck_assert_int_eq(try_open("root/theirs/link", TENANT + 1, &e), -EACCES);
}

START_TEST(parent_is_confined_with_openat2)
{
	confinement_cases();
}
END_TEST

START_TEST(parent_is_confined_by_the_walk_without_openat2)
{
	vmf_sandbox_test_no_openat2 = true;
	confinement_cases();
}
END_TEST

START_TEST(links_are_made_and_removed_only_where_allowed)
{
	struct vmf_error e = {0};
	char link[800], target[800], buf[800];
	snprintf(link, sizeof link, "%s/root/mine/share", dir);
	snprintf(target, sizeof target, "%s/outside", dir);
	ck_assert_int_eq(vmf_sandbox_check_path(&pol, "share_dir", link, 0, &e), 0);
	ck_assert_int_eq(vmf_sandbox_install_link(&pol, "share_dir", link, target, 0, &e), 0);
	ssize_t n = readlink(link, buf, sizeof buf - 1);
	ck_assert_int_gt(n, 0);
	buf[n] = 0;
	ck_assert_str_eq(buf, target);
	/* not its target: left */
	ck_assert_int_eq(vmf_sandbox_unlink_if_points_to(&pol, link, "/elsewhere", 0, &e), 0);
	ck_assert_int_eq(access(link, F_OK), 0);
	/* roots changed since: left, and said so */
	struct vmf_sandbox_policy other;
	ck_assert_int_eq(vmf_sandbox_policy_init(&other, "/nonexistent-root", state, run, &e), 0);
	ck_assert_int_eq(vmf_sandbox_unlink_if_points_to(&other, link, target, 0, &e), -EACCES);
	ck_assert_msg(strstr(e.msg, "left in place"), "%s", e.msg);
	struct stat st;
	ck_assert_int_eq(lstat(link, &st), 0);
	ck_assert_int_eq(vmf_sandbox_unlink_if_points_to(&pol, link, target, 0, &e), 0);
	ck_assert_int_ne(lstat(link, &st), 0);
	/* a sandbox dir removed by the runtime: nothing to do */
	snprintf(link, sizeof link, "%s/root/gone/share", dir);
	ck_assert_int_eq(vmf_sandbox_unlink_if_points_to(&pol, link, target, 0, &e), 0);
	snprintf(link, sizeof link, "%s/outside/share", dir);
	ck_assert_int_eq(vmf_sandbox_install_link(&pol, "share_dir", link, target, 0, &e), -EACCES);
	ck_assert_int_ne(lstat(link, &st), 0);
}
END_TEST

/* As TENANT in a child: 0 when connect/open works, else errno. */
static int
as_tenant(const char *path, bool is_socket)
{
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		if (setgid(TENANT) || setuid(TENANT))
			_exit(100);
		int fd;
		if (is_socket) {
			struct sockaddr_un sa = { .sun_family = AF_UNIX };
			snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
			fd = socket(AF_UNIX, SOCK_STREAM, 0);
			_exit(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : errno);
		}
		fd = open(path, O_RDONLY);
		_exit(fd >= 0 ? 0 : errno);
	}
	int st;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st));
	return WEXITSTATUS(st);
}

START_TEST(grant_gives_the_owner_its_sockets_and_nothing_else)
{
	if (geteuid() != 0) {
		vmf_test_skip("switching to another uid needs root");
		return;
	}
	char vm[700], share[800], sockp[800], logp[800];
	snprintf(vm, sizeof vm, "%s/vm", dir);
	snprintf(share, sizeof share, "%s/share", vm);
	snprintf(sockp, sizeof sockp, "%s/qmp.sock", vm);
	snprintf(logp, sizeof logp, "%s/qemu.log", vm);
	ck_assert_int_eq(mkdir(vm, 0700), 0);
	ck_assert_int_eq(mkdir(share, 0700), 0);
	ck_assert_int_eq(chmod(dir, 0711), 0);
	int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sockp);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
	ck_assert_int_eq(listen(lfd, 4), 0);
	int f = open(logp, O_CREAT | O_WRONLY, 0644);
	ck_assert_int_ge(f, 0);
	close(f);
	ck_assert_int_eq(chmod(vm, 0755), 0);   /* as if opened up: grant closes what it does not grant */

	ck_assert_int_eq(as_tenant(sockp, true), EACCES);
	ck_assert_int_eq(chmod(vm, 0700), 0);
	struct vmf_error e = {0};
	const char *socks[] = { "qmp.sock", "agent.sock" };   /* no agent.sock: skipped */
	int r = vmf_sandbox_grant(vm, socks, 2, share, TENANT, (uid_t)-1, &e);
	if (r == -EOPNOTSUPP) {
		close(lfd);
		vmf_test_skip("%s", e.msg);
		return;
	}
	ck_assert_msg(r == 0, "%s", e.msg);
	ck_assert_int_eq(as_tenant(sockp, true), 0);
	ck_assert_int_eq(as_tenant(share, false), 0);
	ck_assert_int_eq(as_tenant(logp, false), EACCES);
	char vmdir[800];
	snprintf(vmdir, sizeof vmdir, "%s/", vm);
	ck_assert_int_eq(as_tenant(vmdir, false), EACCES);   /* search, not read */
	struct stat st;
	ck_assert_int_eq(stat(logp, &st), 0);
	ck_assert_int_eq(st.st_mode & 077, 0);
	ck_assert_int_gt(getxattr(share, "system.posix_acl_default", NULL, 0), 0);
	/* Another user gets nothing. */
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		if (setgid(TENANT + 1) || setuid(TENANT + 1))
			_exit(100);
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);
		_exit(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : errno);
	}
	int wst;
	waitpid(pid, &wst, 0);
	ck_assert_int_eq(WEXITSTATUS(wst), EACCES);
	close(lfd);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("sandbox");
	TCase *tc = tcase_create("sandbox");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, roots_are_checked);
	tcase_add_test(tc, parent_is_confined_with_openat2);
	tcase_add_test(tc, parent_is_confined_by_the_walk_without_openat2);
	tcase_add_test(tc, links_are_made_and_removed_only_where_allowed);
	suite_add_tcase(s, tc);
	/* Needs root and ACLs: its own case, so that a skip shows (testlib.h). */
	TCase *grant = tcase_create("grant");
	tcase_set_tags(grant, VMF_TEST_OWN_CASE);
	tcase_add_checked_fixture(grant, setup, teardown);
	tcase_add_test(grant, grant_gives_the_owner_its_sockets_and_nothing_else);
	suite_add_tcase(s, grant);
	return vmf_test_run(s);
}
