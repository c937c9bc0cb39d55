/* The tenant boundary, attacked end to end by a real unprivileged tenant
 * and from inside its real guest (QEMU under TCG), one daemon and one VM
 * for all of it:
 *
 * - a qcow2 image the tenant crafted (qemu-img, data_file= a root-only
 *   file) is refused for a read-write, read-only and copy-on-write attach,
 *   the root file's content and mtime untouched; a backing file the image
 *   names is never read; a clean qcow2 image another process holds open
 *   for writing is refused, and attaches once it is closed (and comes
 *   back with the VM's suspend and resume);
 * - through the 9p share: the guest's chown 0 + chmod 6755 of a binary
 *   the tenant copied in does not run with euid/egid 0 from the share
 *   link; device nodes the guest makes do not open; the tenant cannot
 *   hard-link its own file into the share (a separate file system); a
 *   guest writing past the share's size gets ENOSPC, the host's file
 *   system is unaffected; the tenant still reads and writes what its
 *   guest writes; the share's mount is gone after a daemon restart and a
 *   release, and a recovery of a VM whose QEMU died;
 * - user-mode networking: the guest reaches no server on the host's
 *   loopback (10.0.2.2 and another address of slirp's network), while its
 *   forward serves; outbound, a non-loopback forward, and forwards beyond
 *   the tenant's bound are refused with a sentence, no VM lost to them;
 * - a daemon with share_max_mib = 0 gives no share to a tenant, and nor
 *   does one with mounts that adopted such a daemon's clone.
 *
 * Users and group vbnd<pid>{a,b,g} are made by main() and removed before
 * it returns; without root, useradd, qemu-img, or a guest image with the
 * disk modules, the program exits 77 and says why.  Checks are counted, so
 * a run on code without these protections lists every hole it finds. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

#define SHARE_MIB 16

/* ---- acting as the tenant ---- */

/* `vmfactory exec ID -- sh -c SCRIPT` as the tenant: root in its guest. */
static int
guest_sh(const char *id, const char *script, char *out, size_t n)
{
	char args[3000];
	snprintf(args, sizeof args, "exec %s %s --timeout 120 -- sh -c '%s'", common_opts, id, script);
	char full[3200];
	snprintf(full, sizeof full, "exec %s %s", exe, args);
	return tenant_sh(tu.uid_a, full, out, n);
}

struct open_arg {
	const char *path;
	int flags;
};

static int
act_open(const void *arg, char *msg, size_t n)
{
	(void)msg, (void)n;
	const struct open_arg *o = arg;
	int fd = open(o->path, o->flags | O_NONBLOCK | O_CLOEXEC);
	return fd >= 0 ? 0 : -errno;
}

/* open(2) of path as uid with flags: 0 or -errno. */
static int
tenant_open(uid_t uid, const char *path, int flags)
{
	char msg[8];
	return as_tenant(uid, act_open, &(struct open_arg){ path, flags }, msg, sizeof msg);
}

/* A process of uid holding path open for writing until killed. */
static pid_t
tenant_writer(uid_t uid, const char *path)
{
	int p[2];
	ck_assert_int_eq(pipe(p), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		close(p[0]);
		/* After the change of uid, which clears it. */
		char ok = become_tenant(uid) && prctl(PR_SET_PDEATHSIG, SIGKILL) == 0 &&
			  open(path, O_RDWR | O_CLOEXEC) >= 0;
		if (write(p[1], &ok, 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	close(p[1]);
	char ok = 0;
	ck_assert_int_eq(read(p[0], &ok, 1), 1);
	close(p[0]);
	ck_assert_msg(ok, "the tenant could not open %s for writing", path);
	return pid;
}

/* A process of uid opening path (O_RDONLY | O_NONBLOCK) as fast as it can
 * until stop() : a device node that exists only for a moment is still
 * found.  Counts of opens that succeeded, were refused (EACCES) and found
 * nothing. */
struct racer {
	pid_t pid;
	int ctl[2], res[2];
};

static void
race_start(struct racer *r, uid_t uid, const char *path)
{
	ck_assert_int_eq(pipe(r->ctl), 0);
	ck_assert_int_eq(pipe(r->res), 0);
	r->pid = vmf_test_fork();
	if (r->pid == 0) {
		close(r->ctl[1]);
		close(r->res[0]);
		long counts[3] = { 0, 0, 0 };
		if (!become_tenant(uid) || prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
			_exit(1);
		fcntl(r->ctl[0], F_SETFL, O_NONBLOCK);
		for (long i = 0;; i++) {
			char c;
			if (i % 256 == 0 && read(r->ctl[0], &c, 1) != -1)
				break;
			int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
			if (fd >= 0) {
				counts[0]++;
				close(fd);
			} else {
				counts[errno == EACCES ? 1 : 2]++;
			}
		}
		_exit(write(r->res[1], counts, sizeof counts) == sizeof counts ? 0 : 1);
	}
	close(r->ctl[0]);
	close(r->res[1]);
}

static void
race_stop(struct racer *r, long counts[3])
{
	close(r->ctl[1]);
	if (read(r->res[0], counts, 3 * sizeof(long)) != 3 * (ssize_t)sizeof(long))
		counts[0] = counts[1] = counts[2] = -1;
	close(r->res[0]);
	waitpid(r->pid, NULL, 0);
}

/* ---- a server on the host's loopback that counts its visitors ---- */

static int srv_fd = -1;
static volatile int srv_hits, srv_stop;

static void *
serve(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&srv_stop, __ATOMIC_SEQ_CST)) {
		struct pollfd p = { .fd = srv_fd, .events = POLLIN };
		if (poll(&p, 1, 100) != 1)
			continue;
		int c = accept(srv_fd, NULL, NULL);
		if (c < 0)
			continue;
		__atomic_add_fetch(&srv_hits, 1, __ATOMIC_SEQ_CST);
		static const char r[] = "HTTP/1.0 200 OK\r\nContent-Length: 16\r\n\r\nhost-loopback-ok";
		ssize_t w = write(c, r, sizeof r - 1);
		(void)w;
		close(c);
	}
	return NULL;
}

static int
serve_start(pthread_t *t)
{
	srv_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t n = sizeof sa;
	ck_assert_int_eq(bind(srv_fd, (struct sockaddr *)&sa, sizeof sa), 0);
	ck_assert_int_eq(listen(srv_fd, 8), 0);
	ck_assert_int_eq(getsockname(srv_fd, (struct sockaddr *)&sa, &n), 0);
	ck_assert_int_eq(pthread_create(t, NULL, serve, NULL), 0);
	return ntohs(sa.sin_port);
}

/* ---- the host's view ---- */

struct fstamp {
	char content[64];
	struct timespec mtime;
	off_t size;
};

static void
stamp(const char *path, struct fstamp *s)
{
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	memset(s, 0, sizeof *s);
	s->mtime = st.st_mtim;
	s->size = st.st_size;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_ge(read(fd, s->content, sizeof s->content - 1), 0);
	close(fd);
}

static bool
same_stamp(const struct fstamp *a, const struct fstamp *b)
{
	return !strcmp(a->content, b->content) && a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
	       a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Mount points under dir, from our mountinfo. */
static int
mounts_under(const char *dir)
{
	char *mi = NULL;
	ck_assert_int_eq(vmf_read_file("/proc/self/mountinfo", &mi, NULL, 1 << 22, NULL), 0);
	int n = 0;
	size_t l = strlen(dir);
	for (char *line = strtok(mi, "\n"); line; line = strtok(NULL, "\n")) {
		char mp[4096];
		if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && !strncmp(mp, dir, l) && mp[l] == '/')
			n++;
	}
	free(mi);
	return n;
}

static void
sh_ok(const char *fmt, const char *a, const char *b)
{
	char cmd[2000];
	snprintf(cmd, sizeof cmd, fmt, a, b);
	ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
}

/* Waits (60 s at most) for n mounts under the run dir: a refill's clone
 * mounts its share a moment after the hand-out that started it. */
static int
wait_mounts(int n)
{
	poll_until(mounts_under(run) == n, 60000);
	return mounts_under(run);
}

static void
write_config(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

START_TEST(tenant_and_guest_stay_inside)
{
	/* The tenant reaches the socket (in tmp) and, through its links, its
	 * VM's dir (in svc/run): search, not list. */
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	char conf[700], start[800];
	snprintf(conf, sizeof conf, "%s/boundary.conf", svc);
	write_config(conf, "[daemon]\nshare_max_mib = 16\nmax_hostfwd_per_tenant = 2\n");
	snprintf(start, sizeof start, "--config %s", conf);
	start_tenant_daemon(start);

	char a_dir[700], share[800], sockd[800], out[8192], cmd[4000];
	snprintf(a_dir, sizeof a_dir, "%s/%s", tmp, tu.a);
	ck_assert_int_eq(mkdir(a_dir, 0755), 0);
	ck_assert_int_eq(chown(a_dir, tu.uid_a, tu.gid), 0);
	snprintf(share, sizeof share, "%s/share", a_dir);
	snprintf(sockd, sizeof sockd, "%s/sock", a_dir);
	int fport = free_port();

	/* ---- user-mode network: what a tenant may not ask for ---- */
	int pool_before = pool_ready();
	int rc = tenant_vmf(tu.uid_a, out, sizeof out, "get --cpus 1 --memory 256 --sandbox nb --share-dir %s "
			    "--sock-dir %s --net user,outbound", share, sockd);
	check(rc != 0 && strstr(out, "outbound") && strstr(out, "user_net_outbound"),
	      "a tenant's outbound user-mode network is refused, saying why (%d: %s)", rc, out);
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "get --cpus 1 --memory 256 --sandbox nb --share-dir %s "
			"--sock-dir %s --net user,hostfwd=tcp:0.0.0.0:%d-:80", share, sockd, free_port());
	check(rc != 0 && strstr(out, "0.0.0.0") && strstr(out, "hostfwd_addresses"),
	      "a tenant's forward on 0.0.0.0 is refused, saying why (%d: %s)", rc, out);
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "get --cpus 1 --memory 256 --sandbox nb --share-dir %s "
			"--sock-dir %s --net user,hostfwd=tcp::%d-:80,hostfwd=tcp::%d-:81,hostfwd=tcp::%d-:82", share,
			sockd, free_port(), free_port() + 1, free_port() + 2);
	check(rc != 0 && strstr(out, "at most 2") && strstr(out, "max_hostfwd_per_tenant"),
	      "three forwards past a bound of two are refused, saying why (%d: %s)", rc, out);
	check(pool_ready() == pool_before, "no pooled VM was lost to the refusals");

	/* ---- the tenant's VM: a share, user-mode network, one forward ---- */
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "get --cpus 1 --memory 256 --sandbox tenant-a --share-dir %s "
			"--sock-dir %s --net user,hostfwd=tcp::%d-:8080 --timeout 180 -o json", share, sockd, fport);
	ck_assert_msg(rc == 0, "the tenant's GetVM failed: %s", out);
	json_object *vj = json_tokener_parse(out);
	ck_assert_ptr_nonnull(vj);
	char id[64];
	snprintf(id, sizeof id, "%s", json_object_get_string(path(vj, "id", NULL)));
	json_object_put(vj);
	char vm_share[800];
	snprintf(vm_share, sizeof vm_share, "%s/vms/%s/share", run, id);
	check(wait_mounts(2) == 2, "the tenant's VM and the refill each have their share's own mount (%d)",
	      mounts_under(run));
	/* One forward held, two asked: past the bound of two in all. */
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "get --cpus 1 --memory 256 --sandbox nb2 --share-dir %s/s2 "
			"--sock-dir %s/k2 --net user,hostfwd=tcp::%d-:80,hostfwd=tcp::%d-:81", a_dir, a_dir, free_port(),
			free_port() + 1);
	check(rc != 0 && strstr(out, "1 held"), "forwards count across the tenant's VMs (%d: %s)", rc, out);

	/* ---- the guest reaches nothing on the host's loopback ---- */
	pthread_t srv;
	int hport = serve_start(&srv);
	snprintf(cmd, sizeof cmd, "timeout 10 wget -q -O - http://10.0.2.2:%d/; timeout 10 wget -q -O - "
		 "http://10.0.2.77:%d/; echo done", hport, hport);
	guest_sh(id, cmd, out, sizeof out);
	check(!strstr(out, "host-loopback-ok") && __atomic_load_n(&srv_hits, __ATOMIC_SEQ_CST) == 0,
	      "the guest reaches no server on the host's loopback (%d connections; %s)", srv_hits, out);
	/* ... while its network works: its forward serves it. */
	guest_sh(id, "ip link set lo up; mkdir -p /tmp/w && echo fwd-served > /tmp/w/i.html && busybox httpd -p 8080 "
		 "-h /tmp/w && timeout 10 wget -q -O - http://127.0.0.1:8080/i.html", out, sizeof out);
	check(strstr(out, "fwd-served") != NULL, "wget works in the guest (%s)", out);
	char *page = http_get(fport, "/i.html");
	check(strstr(page, "fwd-served") != NULL, "the tenant's forward serves the guest's port (%.100s)", page);
	free(page);

	/* ---- qcow2: an image naming a root-only file ---- */
	char target[700], evil[800], backed[800], clean[800];
	snprintf(target, sizeof target, "%s/root-only", svc);
	snprintf(evil, sizeof evil, "%s/evil.qcow2", a_dir);
	snprintf(backed, sizeof backed, "%s/backed.qcow2", a_dir);
	snprintf(clean, sizeof clean, "%s/clean.qcow2", a_dir);
	/* qemu-img truncates the data file: the content comes after. */
	sh_ok("qemu-img create -q -f qcow2 -o data_file=%s,data_file_raw=on %s 1M", target, evil);
	sh_ok("printf 'ROOT-SECRET-0600' | dd of=%s conv=notrunc status=none && chmod 600 %s", target, target);
	sh_ok("qemu-img create -q -f qcow2 -b %s -F raw %s 1M", target, backed);
	sh_ok("qemu-img create -q -f qcow2 %s 1M%s", clean, "");
	ck_assert_int_eq(chown(evil, tu.uid_a, tu.gid), 0);
	ck_assert_int_eq(chown(backed, tu.uid_a, tu.gid), 0);
	ck_assert_int_eq(chown(clean, tu.uid_a, tu.gid), 0);
	struct fstamp before, after;
	stamp(target, &before);
	static const char *const modes[] = { "", " --ro", " --cow" };
	for (int i = 0; i < 3; i++) {
		rc = tenant_vmf(tu.uid_a, out, sizeof out, "attach %s --disk %s --format qcow2%s -o json", id, evil,
				modes[i]);
		check(rc != 0 && strstr(out, "external data file"), "attach%s of a qcow2 naming a data file is refused "
		      "(%d: %.300s)", modes[i], rc, out);
		if (rc == 0) {
			/* Today's hole: the guest writes through it. */
			json_object *dj = json_tokener_parse(out);
			const char *dev = dj ? json_object_get_string(path(dj, "guest_device", NULL)) : "";
			snprintf(cmd, sizeof cmd, "head -c 16 %s; echo; echo guest-wrote | dd of=%s conv=fsync status=none",
				 dev, dev);
			guest_sh(id, cmd, out, sizeof out);
			printf("the guest read through the data file: %s\n", out);
			json_object_put(dj);
			tenant_vmf(tu.uid_a, out, sizeof out, "detach %s --disk %s", id, evil);
		}
	}
	stamp(target, &after);
	check(same_stamp(&before, &after), "the root-only file is untouched (content '%s' -> '%s', mtime %ld -> %ld)",
	      before.content, after.content, (long)before.mtime.tv_sec, (long)after.mtime.tv_sec);
	/* A backing file is never opened: the guest reads zeros. */
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "attach %s --disk %s --format qcow2 --ro -o json", id, backed);
	check(rc == 0, "a qcow2 naming a backing file attaches (%s)", out);
	if (rc == 0) {
		json_object *dj = json_tokener_parse(out);
		snprintf(cmd, sizeof cmd, "head -c 16 %s | od -An -c | tr -d \" \\n\"",
			 json_object_get_string(path(dj, "guest_device", NULL)));
		json_object_put(dj);
		guest_sh(id, cmd, out, sizeof out);
		check(!strstr(out, "ROOT") && strstr(out, "\\0\\0\\0"), "its backing file is never read: the guest "
		      "sees zeros (%s)", out);
		tenant_vmf(tu.uid_a, out, sizeof out, "detach %s --disk %s", id, backed);
	}
	/* Open for writing elsewhere: its header could change after the check. */
	pid_t w = tenant_writer(tu.uid_a, clean);
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "attach %s --disk %s --format qcow2 --ro", id, clean);
	check(rc != 0 && strstr(out, "open for writing elsewhere"), "a qcow2 open for writing elsewhere is refused "
	      "(%d: %.300s)", rc, out);
	kill(w, SIGKILL);
	waitpid(w, NULL, 0);
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "attach %s --disk %s --format qcow2 --ro", id, clean);
	check(rc == 0, "once closed it attaches (%s)", out);
	/* The lease went with the attach: the tenant opens its file again. */
	check(tenant_open(tu.uid_a, clean, O_RDWR) == 0, "the tenant opens its attached image for writing again");

	/* ---- the share: setuid, devices, hard links, size ---- */
	snprintf(cmd, sizeof cmd, "cp /usr/bin/id %s/id && cp /usr/bin/id %s/id-outside && echo tenant > %s/t.txt",
		 share, a_dir, share);
	ck_assert_msg(tenant_sh(tu.uid_a, cmd, out, sizeof out) == 0, "the tenant cannot write its share: %s", out);
	rc = guest_sh(id, "cd /mnt/share && chown 0:0 id && chmod 6755 id && echo guest > g.txt && chmod 666 g.txt && "
		      "cat t.txt && ls -ln id", out, sizeof out);
	check(rc == 0 && strstr(out, "tenant"), "the guest sees the tenant's file and makes its own (%d: %s)", rc, out);
	snprintf(cmd, sizeof cmd, "%s/id -u; %s/id -g", share, share);
	tenant_sh(tu.uid_a, cmd, out, sizeof out);
	char want[64];
	snprintf(want, sizeof want, "%u\n%u\n", (unsigned)tu.uid_a, (unsigned)tu.gid);
	check(!strcmp(out, want), "a setuid-root binary from the guest runs with the tenant's euid and egid "
	      "(got '%s', want '%s')", out, want);
	/* Device nodes: QEMU 7.2 makes the node on the host, then removes it
	 * and fails the guest's mknod (ENXIO); the tenant opening it in that
	 * moment must still get nothing.  The guest first lifts the nodev its
	 * agent mounted the share with. */
	for (int kind = 0; kind < 2; kind++) {
		struct racer rc_;
		long counts[3];
		snprintf(cmd, sizeof cmd, "%s/dev%d", share, kind);
		race_start(&rc_, tu.uid_a, cmd);
		snprintf(cmd, sizeof cmd, "mount -o remount,dev,suid /mnt/share; i=0; while [ $i -lt 300 ]; do "
			 "mknod /mnt/share/dev%d %s 2>/dev/null; i=$((i+1)); done; ls -l /mnt/share/dev%d 2>&1 | "
			 "head -1", kind, kind ? "b 7 0" : "c 1 3", kind);
		guest_sh(id, cmd, out, sizeof out);
		race_stop(&rc_, counts);
		check(counts[0] == 0 && counts[1] + counts[2] > 0, "a %s device the guest makes never opens on the "
		      "host (%ld opened, %ld refused, %ld not there; the guest saw: %.100s)", kind ? "block" : "character",
		      counts[0], counts[1], counts[2], out);
		printf("the %s node was there for %ld of %ld opens\n", kind ? "block" : "character", counts[0] + counts[1],
		       counts[0] + counts[1] + counts[2]);
	}
	snprintf(cmd, sizeof cmd, "ln %s/id-outside %s/linked && echo linked", a_dir, share);
	tenant_sh(tu.uid_a, cmd, out, sizeof out);
	check(!strstr(out, "linked\n") && strstr(out, "cross-device"), "the tenant cannot hard-link its own file "
	      "into the share, where the guest could make it setuid root (%s)", out);
	snprintf(cmd, sizeof cmd, "cat %s/g.txt && echo tenant-too >> %s/g.txt", share, share);
	rc = tenant_sh(tu.uid_a, cmd, out, sizeof out);
	check(rc == 0 && !strcmp(out, "guest\n"), "the tenant reads and writes what its guest wrote (%d: %s)", rc, out);
	rc = guest_sh(id, "dd if=/dev/zero of=/mnt/share/big bs=1M count=40 2>&1; echo rc=$?", out, sizeof out);
	check(strstr(out, "No space left") && !strstr(out, "rc=0"), "writing 40 MiB into a %d MiB share fails in "
	      "the guest with ENOSPC (%s)", SHARE_MIB, out);
	struct stat big = { 0 };
	struct statvfs sv = { 0 };
	snprintf(cmd, sizeof cmd, "%s/big", vm_share);
	rc = stat(cmd, &big) | statvfs(vm_share, &sv);
	check(rc == 0 && big.st_blocks * 512 <= (SHARE_MIB << 20) && sv.f_blocks * sv.f_frsize <= (SHARE_MIB << 20),
	      "on the host it holds %lld KiB, in a file system of %llu KiB", (long long)big.st_blocks / 2,
	      (unsigned long long)(sv.f_blocks * sv.f_frsize) >> 10);
	check(mounts_under(run) == 2, "the share is still mounted");
	guest_sh(id, "rm -f /mnt/share/big", out, sizeof out);

	/* ---- the share and the disk through a suspend and resume ---- */
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "suspend %s", id);
	check(rc == 0, "the tenant suspends its VM (%s)", out);
	check(mounts_under(run) == 2, "a suspended VM keeps its share's mount");
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "resume %s", id);
	check(rc == 0, "and resumes it, its qcow2 disk checked and held again (%s)", out);
	rc = guest_sh(id, "cat /mnt/share/g.txt && echo more >> /mnt/share/g.txt && echo ok", out, sizeof out);
	check(rc == 0 && strstr(out, "tenant-too") && strstr(out, "ok"), "the resumed guest has its share (%s)", out);

	/* ---- restarts: the mount stays with a live VM, goes with a dead one ---- */
	kill_daemon_hard();
	start_tenant_daemon(start);
	check(wait_mounts(2) == 2, "after a restart the adopted VMs keep their shares' mounts (%d)",
	      mounts_under(run));
	/* The pooled VM's QEMU dies while the daemon is down: recovery reaps
	 * it, mount and all, and the refill makes a new one. */
	char pids[64];
	pids_in_state("ready", pids, sizeof pids);
	int pooled_pid = atoi(pids);
	ck_assert_msg(pooled_pid > 0, "no pooled VM after the restart: '%s'", pids);
	kill_daemon_hard();
	ck_assert_int_eq(kill(pooled_pid, SIGKILL), 0);
	wait_until(kill(pooled_pid, 0) != 0, 10000, "the killed pooled QEMU %d still runs", pooled_pid);
	start_tenant_daemon(start);
	wait_until(pool_ready() >= 1, 300000, "the restarted daemon's pool never refilled");
	check(wait_mounts(2) == 2, "a VM reaped by recovery leaves no mount; its replacement has one (%d)",
	      mounts_under(run));

	/* ---- release: no mount, no dir ---- */
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "release %s", id);
	check(rc == 0, "the tenant releases its VM (%s)", out);
	check(mounts_under(run) == 1 && access(vm_share, F_OK) != 0,
	      "its share's mount and dir are gone (%d mounts under the run dir)", mounts_under(run));
	check(tenant_open(tu.uid_a, clean, O_RDWR) == 0, "its disk is the tenant's alone again");
	stamp(target, &after);
	check(same_stamp(&before, &after), "the root-only file is still untouched");

	/* ---- no share mounts: no share for a tenant ---- */
	write_config(conf, "[daemon]\nshare_max_mib = 0\n");
	kill_daemon_hard();
	start_tenant_daemon(start);
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "get --cpus 1 --memory 256 --sandbox noshare --share-dir %s "
			"--sock-dir %s", share, sockd);
	check(rc != 0 && strstr(out, "share_max_mib = 0"), "a daemon without share mounts gives a tenant no share "
	      "(%d: %s)", rc, out);
	/* Its clones' shares are plain dirs; a daemon with mounts adopting
	 * one still gives it to no tenant. */
	struct got root_vm = { 0 };
	do_get(&root_vm, "root-takes-it", 1, 256);
	ck_assert_int_eq(root_vm.rc, 0);
	json_object_put(root_vm.rec);
	wait_until(pool_ready() >= 1, 300000, "the pool never refilled after root's hand-out");
	write_config(conf, "[daemon]\nshare_max_mib = 16\n");
	kill_daemon_hard();
	start_tenant_daemon(start);
	int pool_was = pool_ready();
	rc = tenant_vmf(tu.uid_a, out, sizeof out, "get --cpus 1 --memory 256 --sandbox plain --share-dir %s "
			"--sock-dir %s", share, sockd);
	check(pool_was == 1 && rc != 0 && strstr(out, "not on a nosuid,nodev file system of its own"),
	      "an adopted clone with a plain share is no tenant's (%d: %s)", rc, out);

	__atomic_store_n(&srv_stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(srv, NULL);
	close(srv_fd);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	check(mounts_under(svc) == 0, "no mount is left under the daemon's dirs");
	assert_daemon_log_clean();
	ck_assert_msg(failures == 0, "%d check(s) failed; see the FAIL lines above", failures);
}
END_TEST

int
main(void)
{
	const char *lacks = guest_image_lacks((const char *const[]){ "sd_mod", "virtio_net", NULL });
	if (lacks)
		return vmf_test_skip_all("boundary tests: the guest image lacks %s; rebuild it with "
					 "contrib/image/build-image", lacks);
	if (access("/usr/bin/qemu-img", X_OK) != 0)
		return vmf_test_skip_all("boundary tests: qemu-img is not installed (qemu-utils; contrib/setup "
					 "installs it)");
	const char *why = tenant_users_make("vbnd");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("boundary tests: %s", why);
	}
	Suite *s = suite_create("boundary");
	TCase *tc = tcase_create("boundary");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 900);
	ADD_TEST(tc, tenant_and_guest_stay_inside);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
