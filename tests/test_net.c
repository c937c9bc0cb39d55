/* Network for handed-out VMs, end to end under TCG: one daemon
 * with a pool of 2 and one template for every case.
 *
 * - netns: a "pod" and a "peer" namespace joined by a veth pair (addresses
 *   only inside them); the guest, handed out into the pod, fetches from a
 *   server in the peer and serves a port the peer connects to; it has the
 *   pod interface's MAC and address.  Two VMs in two pods at once.
 * - user mode: with outbound asked for, the guest reaches a server on the
 *   host's loopback through the gateway 10.0.2.2, and a forward serves a
 *   guest port on loopback.
 * - release, and a daemon killed (SIGKILL) mid-hand-out (holding the tap
 *   alone, and with QEMU holding it) then restarted,
 *   leave no tap, no tc filter or ingress qdisc, no namespace file.
 * - bad input: a path that does not exist, a regular file, a missing
 *   interface, a namespace a tenant does not own, a forward to a port in
 *   use, netns with net: clear errors, no pooled VM lost, nothing made.
 *
 * Namespaces are vfn<pid>{pod,peer,pod2,peer2} (ip netns), users
 * vnet<pid>{a,b,g}; all are removed at the end, also after a failure.
 * Without root, ip, or an image whose kernel has virtio_net, it exits 77. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

static char ns_pod[32], ns_peer[32], ns_pod2[32], ns_peer2[32];
static pid_t servers[8];
static int n_servers;

static int
sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Output of a shell command (stdout and stderr). */
static char *
sh_out(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	FILE *p = popen(cmd, "r");
	size_t cap = 1 << 16, n = 0, r;
	char *buf = malloc(cap);
	while (p && (r = fread(buf + n, 1, cap - n - 1, p)) > 0)
		n += r;
	buf[n] = '\0';
	if (p)
		pclose(p);
	return buf;
}

static void
remove_namespaces(void)
{
	const char *all[] = { ns_pod, ns_peer, ns_pod2, ns_peer2 };
	for (size_t i = 0; i < 4; i++)
		if (all[i][0])
			sh("ip netns del %s 2>/dev/null", all[i]);
}

static void
stop_servers(void)
{
	for (int i = 0; i < n_servers; i++) {
		kill(servers[i], SIGKILL);
		waitpid(servers[i], NULL, 0);
	}
	n_servers = 0;
}

static void
at_exit_cleanup(void)
{
	stop_servers();
	remove_namespaces();
}

/* pod <-> peer by a veth pair: pod's eth0 is ADDR.2, peer's ADDR.1, the
 * pod's default route via the peer. */
static void
make_pair(const char *pod, const char *peer, const char *net)
{
	ck_assert_int_eq(sh("ip netns add %s && ip netns add %s", pod, peer), 0);
	ck_assert_int_eq(sh("ip link add vfn%dx netns %s type veth peer name vfn%dy netns %s", (int)getpid(), pod,
			    (int)getpid(), peer), 0);
	ck_assert_int_eq(sh("ip -n %s link set vfn%dx name eth0 && ip -n %s addr add %s.2/24 dev eth0 && "
			    "ip -n %s link set eth0 up && ip -n %s link set lo up && ip -n %s route add default via %s.1",
			    pod, (int)getpid(), pod, net, pod, pod, pod, net), 0);
	ck_assert_int_eq(sh("ip -n %s addr add %s.1/24 dev vfn%dy && ip -n %s link set vfn%dy up && "
			    "ip -n %s link set lo up", peer, net, (int)getpid(), peer, (int)getpid(), peer), 0);
}

static int
enter_ns(const char *name)
{
	char p[128];
	snprintf(p, sizeof p, "/run/netns/%s", name);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
		return -1;
	close(fd);
	return 0;
}

/* A TCP server (in namespace ns, or the host's when NULL) answering every
 * connection with body, until killed; listening when serve() returns. */
static void
serve(const char *ns, const char *addr, int port, const char *body)
{
	int ready[2];
	ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		/* Gone with the test, however it ends. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(ready[0]);
		if (ns && enter_ns(ns) < 0)
			_exit(1);
		int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
		inet_pton(AF_INET, addr, &sa.sin_addr);
		if (bind(s, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(s, 8) < 0)
			_exit(2);
		if (write(ready[1], "l", 1) != 1)
			_exit(4);
		close(ready[1]);
		for (;;) {
			int c = accept(s, NULL, NULL);
			if (c < 0)
				continue;
			char req[1024];
			ssize_t n = read(c, req, sizeof req);
			(void)n;
			char resp[512];
			int len = snprintf(resp, sizeof resp, "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n\r\n%s",
					   strlen(body), body);
			if (write(c, resp, (size_t)len) < 0)
				_exit(3);
			close(c);
		}
	}
	close(ready[1]);
	char l = 0;
	ck_assert_msg(read(ready[0], &l, 1) == 1, "the server on %s:%d did not start listening", addr, port);
	close(ready[0]);
	servers[n_servers++] = pid;
}

/* Connects (from namespace ns, or the host's) to addr:port, sends a GET,
 * returns what came back ("" when nothing), retrying until deadline. */
static char *
fetch(const char *ns, const char *addr, int port, const char *file)
{
	int p[2];
	ck_assert_int_eq(pipe(p), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		close(p[0]);
		if (ns && enter_ns(ns) < 0)
			_exit(1);
		int64_t deadline = vmf_now_ms() + 30000;
		while (vmf_now_ms() < deadline) {
			int s = socket(AF_INET, SOCK_STREAM, 0);
			struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
			inet_pton(AF_INET, addr, &sa.sin_addr);
			if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0) {
				char req[256], buf[4096];
				int len = snprintf(req, sizeof req, "GET /%s HTTP/1.0\r\n\r\n", file);
				if (write(s, req, (size_t)len) != len)
					_exit(2);
				ssize_t n, got = 0;
				while ((n = read(s, buf, sizeof buf)) > 0)
					got += write(p[1], buf, (size_t)n);
				if (got > 0)
					_exit(0);
			}
			close(s);
			poll(NULL, 0, 200);
		}
		_exit(3);
	}
	close(p[1]);
	char *out = calloc(1, 8192);
	size_t n = 0;
	ssize_t r;
	while ((r = read(p[0], out + n, 8191 - n)) > 0)
		n += (size_t)r;
	close(p[0]);
	waitpid(pid, NULL, 0);
	return out;
}

struct vmgot {
	int rc;
	char id[64], mac[32];
	char err[2048];
};

static void
get_vm(struct vmgot *g, const char *name, const char *netopts)
{
	char *out;
	memset(g, 0, sizeof *g);
	g->rc = vmf(&out, "get --cpus 1 --memory 256 --sandbox %s --share-dir %s/%s-share --sock-dir %s/%s-sock "
		    "--timeout 120 %s -o json", name, tmp, name, tmp, name, netopts);
	snprintf(g->err, sizeof g->err, "%s", cli_stderr());
	json_object *j = g->rc == 0 ? json_tokener_parse(out) : NULL;
	free(out);
	if (!j)
		return;
	snprintf(g->id, sizeof g->id, "%s", json_object_get_string(path(j, "id", NULL)));
	json_object *m;
	if (json_object_object_get_ex(j, "mac", &m))
		snprintf(g->mac, sizeof g->mac, "%s", json_object_get_string(m));
	json_object_put(j);
}

/* `vmfactory exec VMID -- sh -c CMD`: its stdout. */
static char *
guest_sh(const char *id, const char *cmd)
{
	/* cmd has no single quote (the tests' own commands); the common
	 * options go before "--". */
	return sh_out("%s exec %s %s --timeout 60 -- sh -c '%s' 2>>%s/cli.err", exe, common_opts, id, cmd, tmp);
}

static void
release_vm(const char *id, const char *name)
{
	check(vmf(NULL, "release %s", id) == 0, "release %s", id);
	char p[700];
	snprintf(p, sizeof p, "%s/%s-share", tmp, name);
	unlink(p);
	snprintf(p, sizeof p, "%s/%s-sock", tmp, name);
	unlink(p);
}

static int
ready_now(void)
{
	return pool_ready();
}

static void
wait_ready(int want)
{
	wait_until(ready_now() >= want, 180000, "the pool has not %d ready VMs", want);
}

/* Nothing of a VM's network in namespace ns: no tap, no ingress qdisc,
 * no filter on eth0. */
static bool
ns_clean(const char *ns, char *why, size_t n)
{
	char *links = sh_out("ip -n %s -o link show 2>&1", ns);
	char *qd = sh_out("tc -n %s qdisc show dev eth0 2>&1", ns);
	char *flt = sh_out("tc -n %s filter show dev eth0 ingress 2>&1", ns);
	bool ok = !strstr(links, " vmf") && !strstr(qd, "ingress") && !strstr(flt, "mirred");
	snprintf(why, n, "links: %.300s qdiscs: %.200s filters: %.300s", links, qd, flt);
	free(links);
	free(qd);
	free(flt);
	return ok;
}

static bool
ns_has_tap(const char *ns)
{
	char *links = sh_out("ip -n %s -o link show 2>&1", ns);
	bool has = strstr(links, " vmf") != NULL;
	free(links);
	return has;
}

/* A child that made its own user and network namespace (as the tenant
 * uid) and waits; its /proc/PID/ns/net is a namespace the tenant owns. */
static pid_t
tenant_netns(uid_t uid)
{
	int p[2];
	ck_assert_int_eq(pipe(p), 0);
	pid_t pid = vmf_test_fork();
	if (pid == 0) {
		close(p[0]);
		/* After the uid change: changing credentials clears the parent-death signal. */
		char ok = become_tenant(uid) && prctl(PR_SET_PDEATHSIG, SIGKILL) == 0 &&
				  unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0 ? 1 : 0;
		if (write(p[1], &ok, 1) != 1 || !ok)
			_exit(1);
		pause();
		_exit(0);
	}
	close(p[1]);
	char ok = 0;
	ck_assert_int_eq(read(p[0], &ok, 1), 1);
	close(p[0]);
	ck_assert_msg(ok, "the tenant could not make its own user and network namespace");
	servers[n_servers++] = pid;
	return pid;
}

static void
bad_input(void)
{
	char why[2048], p[700];
	struct vmgot g;
	/* ---- a path that is no namespace ---- */
	get_vm(&g, "bad1", "--netns /run/netns/vfn-does-not-exist");
	check(g.rc != 0 && strstr(g.err, "No such file"), "a missing namespace path is refused: %s", g.err);
	snprintf(p, sizeof p, "%s/not-a-ns", tmp);
	ck_assert_int_eq(vmf_write_file_atomic(p, "x", 1, 0600, NULL), 0);
	get_vm(&g, "bad2", p[0] ? (snprintf(why, sizeof why, "--netns %s", p), why) : "");
	check(g.rc != 0 && strstr(g.err, "not a namespace file"), "a regular file is refused: %s", g.err);
	get_vm(&g, "bad3", "--netns /proc/self/ns/uts");
	check(g.rc != 0 && strstr(g.err, "not a network namespace"), "a namespace of another type is refused: %s",
	      g.err);
	/* ---- a missing interface ---- */
	snprintf(why, sizeof why, "--netns /run/netns/%s --netns-link eth9", ns_pod);
	get_vm(&g, "bad4", why);
	check(g.rc != 0 && strstr(g.err, "no interface eth9"), "a missing interface is refused: %s", g.err);
	check(ns_clean(ns_pod, why, sizeof why), "nothing left in the pod after it: %s", why);
	/* ---- a forward to a port in use ---- */
	int port = free_port();
	serve(NULL, "127.0.0.1", port, "busy");
	snprintf(why, sizeof why, "--net user,hostfwd=tcp::%d-:80", port);
	get_vm(&g, "bad5", why);
	check(g.rc != 0 && strstr(g.err, "in use"), "a forward to a port in use is refused: %s", g.err);
	get_vm(&g, "bad6", "--net user,hostfwd=udp::1-:2");
	check(g.rc != 0 && strstr(g.err, "only tcp"), "a udp forward is refused: %s", g.err);
	snprintf(why, sizeof why, "--netns /run/netns/%s --net user", ns_pod);
	get_vm(&g, "bad7", why);
	check(g.rc != 0 && strstr(g.err, "exclude"), "netns with net user is refused: %s", g.err);
	/* ---- a tenant: the host's namespace, and its own ---- */
	char a_dir[700];
	tenant_dir(tu.a, tu.uid_a, a_dir, sizeof a_dir);
	int rc = vmf_as(tu.uid_a, NULL, "get --cpus 1 --memory 256 --sandbox ten --share-dir %s/share "
			"--sock-dir %s/sock --netns /proc/%d/ns/net", a_dir, a_dir, (int)getpid());
	snprintf(why, sizeof why, "%s", cli_stderr());
	check(rc != 0 && strstr(why, "is not yours"), "a tenant naming the host's namespace is refused: %s", why);
	rc = vmf_as(tu.uid_a, NULL, "get --cpus 1 --memory 256 --sandbox ten --share-dir %s/share "
		    "--sock-dir %s/sock --netns /run/netns/%s", a_dir, a_dir, ns_pod);
	snprintf(why, sizeof why, "%s", cli_stderr());
	check(rc != 0 && strstr(why, "is not yours"), "a tenant naming root's pod namespace is refused: %s", why);
	rc = vmf_as(tu.uid_a, NULL, "get --cpus 1 --memory 256 --sandbox ten --share-dir %s/share "
		    "--sock-dir %s/sock --net user,hostfwd=tcp::80-:80", a_dir, a_dir);
	snprintf(why, sizeof why, "%s", cli_stderr());
	check(rc != 0 && strstr(why, "privileged"), "a tenant's forward of a privileged port is refused: %s", why);
	pid_t own = tenant_netns(tu.uid_a);
	rc = vmf_as(tu.uid_a, NULL, "get --cpus 1 --memory 256 --sandbox ten --share-dir %s/share "
		    "--sock-dir %s/sock --netns /proc/%d/ns/net", a_dir, a_dir, (int)own);
	snprintf(why, sizeof why, "%s", cli_stderr());
	/* Its own namespace passes the owner rule; it has no eth0 yet. */
	check(rc == 1 && strstr(why, "no interface eth0"), "a tenant's own namespace without eth0 is refused for "
	      "that alone: %s", why);
	check(ready_now() == 2, "no pooled VM was lost to the bad requests (%d ready)", ready_now());
	wait_ready(2);

	/* ---- a tenant's network that works: its own namespace (an eth0
	 * given to it), then user-mode with a forward of a port of its own ---- */
	ck_assert_int_eq(sh("ip link add vfn%dt type veth peer name vfn%du && ip link set vfn%dt netns %d && "
			    "nsenter -t %d -n ip link set vfn%dt name eth0 && nsenter -t %d -n ip addr add "
			    "10.233.0.2/24 dev eth0 && nsenter -t %d -n ip link set eth0 up", (int)getpid(),
			    (int)getpid(), (int)getpid(), (int)own, (int)own, (int)getpid(), (int)own, (int)own), 0);
	char *out = NULL;
	rc = vmf_as(tu.uid_a, &out, "get --cpus 1 --memory 256 --sandbox ten --share-dir %s/share --sock-dir %s/sock "
		    "--netns /proc/%d/ns/net -o json", a_dir, a_dir, (int)own);
	json_object *j = rc == 0 ? json_tokener_parse(out) : NULL;
	free(out);
	check(j != NULL, "a tenant's GetVM into its own namespace: %s", cli_stderr());
	if (j) {
		char id[64];
		snprintf(id, sizeof id, "%s", json_object_get_string(path(j, "id", NULL)));
		json_object_put(j);
		char *links = sh_out("nsenter -t %d -n ip -o link show", (int)own);
		check(strstr(links, " vmf") != NULL, "the tenant's VM has its tap in the tenant's namespace: %s", links);
		free(links);
		out = guest_sh(id, "ip -o addr show eth0");
		check(strstr(out, "10.233.0.2/24") != NULL, "the guest has its namespace's address: %s", out);
		free(out);
		check(vmf_as(tu.uid_a, NULL, "release %s", id) == 0, "the tenant releases it: %s", cli_stderr());
		links = sh_out("nsenter -t %d -n ip -o link show", (int)own);
		check(strstr(links, " vmf") == NULL, "its tap went with it: %s", links);
		free(links);
	}
	port = free_port();
	rc = vmf_as(tu.uid_a, &out, "get --cpus 1 --memory 256 --sandbox ten --share-dir %s/share --sock-dir %s/sock "
		    "--net user,hostfwd=tcp::%d-:8080 -o json", a_dir, a_dir, port);
	j = rc == 0 ? json_tokener_parse(out) : NULL;
	free(out);
	check(j != NULL, "a tenant's GetVM with user-mode network and a forward of port %d: %s", port, cli_stderr());
	if (j) {
		char id[64];
		snprintf(id, sizeof id, "%s", json_object_get_string(path(j, "id", NULL)));
		json_object_put(j);
		free(guest_sh(id, "mkdir -p /tmp/t && echo tenant-forward > /tmp/t/t.html && busybox httpd -p 8080 -h /tmp/t"));
		out = fetch(NULL, "127.0.0.1", port, "t.html");
		check(strstr(out, "tenant-forward") != NULL, "the tenant's forward reaches its guest: '%.200s'", out);
		free(out);
		check(vmf_as(tu.uid_a, NULL, "release %s", id) == 0, "the tenant releases it: %s", cli_stderr());
	}
	wait_ready(2);
}

START_TEST(net_end_to_end)
{
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	atexit(at_exit_cleanup);
	make_pair(ns_pod, ns_peer, "10.231.0");
	make_pair(ns_pod2, ns_peer2, "10.232.0");
	ck_assert_int_eq(vmf(NULL, "init --pool 2 --group %s --wait --timeout 600", tu.group), 0);
	wait_ready(2);

	bad_input();

	/* ---- netns: two VMs in two pods at once ---- */
	serve(ns_peer, "10.231.0.1", 8000, "from-peer-1");
	serve(ns_peer2, "10.232.0.1", 8000, "from-peer-2");
	char *podmac = sh_out("ip netns exec %s cat /sys/class/net/eth0/address",
			      ns_pod);
	struct vmgot a, b;
	char opt[200];
	snprintf(opt, sizeof opt, "--netns /run/netns/%s", ns_pod);
	get_vm(&a, "poda", opt);
	check(a.rc == 0, "hand-out into the pod namespace: %s", a.err);
	snprintf(opt, sizeof opt, "--netns /run/netns/%s", ns_pod2);
	get_vm(&b, "podb", opt);
	check(b.rc == 0, "hand-out into the second pod namespace: %s", b.err);
	check(a.rc == 0 && strstr(podmac, a.mac) != NULL, "the guest has the pod interface's MAC %s (%s)", a.mac,
	      podmac);
	free(podmac);
	/* One VM per interface: a second is refused before a VM is taken,
	 * and the first one's mirror stays (its fetch below). */
	wait_ready(2);
	struct vmgot c;
	snprintf(opt, sizeof opt, "--netns /run/netns/%s", ns_pod);
	get_vm(&c, "podc", opt);
	check(c.rc != 0 && strstr(c.err, "mirrored to another VM"), "a second VM into the same pod is refused: %s",
	      c.err);
	check(ready_now() == 2, "no pooled VM was lost to it (%d ready)", ready_now());
	char *out = guest_sh(a.id, "wget -q -O - http://10.231.0.1:8000/");
	check(strstr(out, "from-peer-1") != NULL, "the guest in pod 1 fetches from its peer: '%s'", out);
	free(out);
	out = guest_sh(b.id, "wget -q -O - http://10.232.0.1:8000/");
	check(strstr(out, "from-peer-2") != NULL, "the guest in pod 2 fetches from its peer: '%s'", out);
	free(out);
	out = guest_sh(a.id, "mkdir -p /tmp/w && echo served-by-guest > /tmp/w/i.html && busybox httpd -p 8080 -h /tmp/w");
	free(out);
	out = fetch(ns_peer, "10.231.0.2", 8080, "i.html");
	check(strstr(out, "served-by-guest") != NULL, "the peer reaches the guest's port: '%.200s'", out);
	free(out);
	/* inspect shows the guest's view of its NIC. */
	char *insp, why0[2048];
	vmf(&insp, "inspect %s", a.id);
	check(strstr(insp, "10.231.0.2/24") && strstr(insp, a.mac), "inspect shows the guest NIC: %s", insp);
	free(insp);
	/* Suspended: the tap goes with its QEMU, the interface stays this
	 * VM's (another hand-out into the pod is refused); resumed: a new tap
	 * in the same namespace, mirrored again, the guest's server still
	 * there. */
	int64_t t0 = vmf_now_ms();
	check(vmf(NULL, "suspend %s", a.id) == 0, "suspend of a VM in a pod: %s", cli_stderr());
	printf("suspend with netns: %lld ms\n", (long long)(vmf_now_ms() - t0));
	check(!ns_has_tap(ns_pod), "the suspended VM's tap went with its QEMU");
	get_vm(&c, "podc", opt);
	check(c.rc != 0 && strstr(c.err, "mirrored to another VM"), "the pod of a suspended VM is still its: %s",
	      c.err);
	t0 = vmf_now_ms();
	check(vmf(NULL, "resume %s", a.id) == 0, "resume of a VM in a pod: %s", cli_stderr());
	printf("resume with netns: %lld ms\n", (long long)(vmf_now_ms() - t0));
	check(ns_has_tap(ns_pod), "the resumed VM has a tap in its pod again");
	out = fetch(ns_peer, "10.231.0.2", 8080, "i.html");
	check(strstr(out, "served-by-guest") != NULL, "the peer reaches the resumed guest's port: '%.200s'", out);
	free(out);
	out = guest_sh(a.id, "wget -q -O - http://10.231.0.1:8000/");
	check(strstr(out, "from-peer-1") != NULL, "the resumed guest fetches from its peer: '%s'", out);
	free(out);
	/* SIGKILL in a resume, its tap made and not yet plugged: restarted,
	 * the VM is suspended, no tap is left, and it resumes. */
	if (vmf_test_fault_build()) {
		check(vmf(NULL, "suspend %s", a.id) == 0, "suspend before the killed resume");
		kill_daemon_hard();
		fault = "resume-net";
		ck_assert_int_eq(vmf(NULL, "init --pool 2 --group %s --wait --timeout 600", tu.group), 0);
		check(vmf(NULL, "resume %s", a.id) == 1 && strstr(cli_stderr(), "closed the connection"),
		      "the resume dies with its daemon: %s", cli_stderr());
		fault = NULL;
		wait_until(!daemon_answers(), 20000, "the daemon survived its fault point resume-net");
		ck_assert_int_eq(vmf(NULL, "init --pool 2 --group %s --wait --timeout 600", tu.group), 0);
		vmf(&insp, "inspect %s", a.id);
		check(strstr(insp, "suspended") != NULL, "after the killed resume the VM is suspended: %s", insp);
		free(insp);
		poll_until(!ns_has_tap(ns_pod), 20000);
		check(!ns_has_tap(ns_pod), "no tap is left of the killed resume");
		check(vmf(NULL, "resume %s", a.id) == 0, "resume after the killed one: %s",
		      cli_stderr());
		out = guest_sh(a.id, "wget -q -O - http://10.231.0.1:8000/");
		check(strstr(out, "from-peer-1") != NULL, "resumed after a restart, it fetches from its peer: '%s'",
		      out);
		free(out);
	} else {
		vmf_test_skip("the kill in a resume with network: this build has no fault points");
	}
	/* Forked into a template: the tap has no state in the stream, so the
	 * template has the NIC without a backend; the VM keeps its network. */
	t0 = vmf_now_ms();
	check(vmf(NULL, "snapshot %s --template netsnap", a.id) == 0, "snapshot of a VM in a pod: %s",
	      cli_stderr());
	printf("snapshot with netns: %lld ms\n", (long long)(vmf_now_ms() - t0));
	out = guest_sh(a.id, "wget -q -O - http://10.231.0.1:8000/");
	check(strstr(out, "from-peer-1") != NULL, "the VM keeps its network after the snapshot: '%s'", out);
	free(out);
	char why[2048];
	/* Released while suspended: its mirror goes too (checked below). */
	check(vmf(NULL, "suspend %s", a.id) == 0, "suspend before the release");
	if (a.rc == 0)
		release_vm(a.id, "poda");
	if (b.rc == 0)
		release_vm(b.id, "podb");
	check(ns_clean(ns_pod, why, sizeof why), "release leaves nothing in pod 1: %s", why);
	check(ns_clean(ns_pod2, why, sizeof why), "release leaves nothing in pod 2: %s", why);
	/* A clone of it handed out without network has none of the source's
	 * address, route, DNS or MAC (its agent clears them); one handed out
	 * into pod 2 has pod 2's only, and reaches its peer. */
	struct vmgot s1, s2;
	t0 = vmf_now_ms();
	get_vm(&s1, "snapnone", "--template netsnap");
	printf("hand-out of a clone of netsnap without network: %lld ms\n", (long long)(vmf_now_ms() - t0));
	check(s1.rc == 0, "a clone of the snapshot without network: %s", s1.err);
	out = guest_sh(s1.id, "cat /tmp/w/i.html /proc/net/route; cat /etc/resolv.conf 2>/dev/null; echo end");
	check(strstr(out, "served-by-guest") && !strstr(out, "eth0\t00000000") && !strstr(out, "nameserver") &&
	      strstr(out, "end"), "the clone without network has the file but no route or DNS: '%s'", out);
	free(out);
	vmf(&insp, "inspect %s", s1.id);
	check(!strstr(insp, "10.231.0.2") && !strstr(insp, a.mac), "the clone without network has no address or "
	      "MAC of the source's: %s", insp);
	free(insp);
	snprintf(opt, sizeof opt, "--template netsnap --netns /run/netns/%s", ns_pod2);
	get_vm(&s2, "snappod", opt);
	check(s2.rc == 0, "a clone of the snapshot into pod 2: %s", s2.err);
	out = guest_sh(s2.id, "wget -q -O - http://10.232.0.1:8000/");
	check(strstr(out, "from-peer-2") != NULL, "the clone in pod 2 fetches from its peer: '%s'", out);
	free(out);
	vmf(&insp, "inspect %s", s2.id);
	check(strstr(insp, "10.232.0.2/24") && !strstr(insp, "10.231.0.2"), "the clone in pod 2 has only its "
	      "address: %s", insp);
	free(insp);
	if (s1.rc == 0)
		release_vm(s1.id, "snapnone");
	if (s2.rc == 0)
		release_vm(s2.id, "snappod");
	check(ns_clean(ns_pod2, why, sizeof why), "release leaves nothing in pod 2: %s", why);
	wait_ready(2);

	/* ---- user mode ---- */
	int hport = free_port(), fport = free_port();
	serve(NULL, "127.0.0.1", hport, "from-host-loopback");
	/* Outbound asked for: the guest then reaches the host's loopback
	 * (test_boundary shows a guest without it reaches nothing). */
	snprintf(opt, sizeof opt, "--net user,outbound,hostfwd=tcp::%d-:8080", fport);
	struct vmgot u, u2;
	get_vm(&u, "usera", opt);
	check(u.rc == 0, "user-mode hand-out: %s", u.err);
	get_vm(&u2, "userb", "--net user");
	check(u2.rc == 0, "a second user-mode hand-out: %s", u2.err);
	check(u.mac[0] && u2.mac[0] && strcmp(u.mac, u2.mac) != 0 && (strtoul(u.mac, NULL, 16) & 2),
	      "user-mode MACs are unique and locally administered (%s, %s)", u.mac, u2.mac);
	snprintf(opt, sizeof opt, "wget -q -O - http://10.0.2.2:%d/", hport);
	out = guest_sh(u.id, opt);
	check(strstr(out, "from-host-loopback") != NULL, "the guest reaches the host's loopback: '%s'", out);
	free(out);
	out = guest_sh(u.id, "mkdir -p /tmp/w && echo fwd-served > /tmp/w/i.html && busybox httpd -p 8080 -h /tmp/w");
	free(out);
	out = fetch(NULL, "127.0.0.1", fport, "i.html");
	check(strstr(out, "fwd-served") != NULL, "the forward serves the guest's port: '%.200s'", out);
	free(out);
	/* slirp's state cannot go into a template: snapshot refused, saying so. */
	check(vmf(NULL, "snapshot %s --template usersnap", u.id) != 0, "snapshot of a user-mode VM is refused");
	snprintf(why0, sizeof why0, "%s", cli_stderr());
	check(strstr(why0, "user-mode network") != NULL, "the refusal says why: %s", why0);
	/* Suspended and resumed: slirp again with the same forward. */
	check(vmf(NULL, "suspend %s", u.id) == 0, "suspend of a user-mode VM: %s", cli_stderr());
	check(vmf(NULL, "resume %s", u.id) == 0, "resume of a user-mode VM: %s", cli_stderr());
	out = fetch(NULL, "127.0.0.1", fport, "i.html");
	check(strstr(out, "fwd-served") != NULL, "the forward serves the resumed guest's port: '%.200s'", out);
	free(out);
	/* Its forward's port taken while it is suspended: the resume fails
	 * saying so, the VM stays suspended (released as such). */
	check(vmf(NULL, "suspend %s", u.id) == 0, "second suspend of a user-mode VM: %s",
	      cli_stderr());
	int busy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	setsockopt(busy, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);   /* the fetches' TIME_WAIT */
	struct sockaddr_in bsa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)fport) };
	inet_pton(AF_INET, "127.0.0.1", &bsa.sin_addr);
	ck_assert_int_eq(bind(busy, (struct sockaddr *)&bsa, sizeof bsa), 0);
	ck_assert_int_eq(listen(busy, 1), 0);
	check(vmf(NULL, "resume %s", u.id) != 0, "resume with its forward's port taken fails");
	snprintf(why0, sizeof why0, "%s", cli_stderr());
	check(strstr(why0, "in use") && strstr(why0, "stays suspended"), "the failed resume says why: %s", why0);
	close(busy);
	char *st = NULL;
	vmf(&st, "inspect %s", u.id);
	check(st && strstr(st, "suspended"), "the VM stays suspended: %s", st);
	free(st);
	if (u.rc == 0)
		release_vm(u.id, "usera");
	if (u2.rc == 0)
		release_vm(u2.id, "userb");
	wait_ready(2);

	/* ---- SIGKILL mid-hand-out, then recovery: once with the tap held by
	 * the daemon alone (mid-net: gone with it, the mirror left), once with
	 * QEMU holding it (mid-handout: the tap outlives the daemon) ---- */
	const char *points[] = { "mid-net", "mid-handout" };
	for (size_t k = 0; k < 2 && vmf_test_fault_build(); k++) {
		vmf(NULL, "destroy --all");
		wait_until(!daemon_answers(), 60000, "the daemon did not stop");
		fault = points[k];
		ck_assert_int_eq(vmf(NULL, "init --pool 2 --group %s --wait --timeout 600", tu.group), 0);
		fault = NULL;
		snprintf(opt, sizeof opt, "--netns /run/netns/%s", ns_pod);
		get_vm(&a, "killed", opt);
		check(a.rc == 1 && strstr(a.err, "closed the connection"), "%s: the hand-out dies with its daemon: %s",
		      points[k], a.err);
		if (k == 0)
			check(!ns_clean(ns_pod, why, sizeof why) && !ns_has_tap(ns_pod),
			      "%s: the mirror is left, the tap went with the daemon's fd: %s", points[k], why);
		else
			check(ns_has_tap(ns_pod), "%s: the tap QEMU holds outlived the daemon", points[k]);
		ck_assert_int_eq(vmf(NULL, "init --pool 2 --group %s --wait --timeout 600", tu.group), 0);
		poll_until(ns_clean(ns_pod, why, sizeof why), 30000);
		check(ns_clean(ns_pod, why, sizeof why), "%s: recovery leaves nothing in the pod: %s", points[k], why);
	}
	if (!vmf_test_fault_build())
		vmf_test_skip("the kills mid-hand-out: this build has no fault points");
	char *files = sh_out("ls /run/netns");
	check(strstr(files, "vmf") == NULL, "no namespace file of the daemon's: %s", files);
	free(files);
	stop_servers();
	remove_namespaces();
	ck_assert_int_eq(failures, 0);
}
END_TEST

int
main(void)
{
	if (geteuid() != 0)
		return vmf_test_skip_all("net tests: not root (namespaces, taps and tc need it)");
	if (system("ip -V >/dev/null 2>&1 && tc -V >/dev/null 2>&1") != 0)
		return vmf_test_skip_all("net tests: no ip or tc (iproute2)");
	const char *lacks = guest_image_lacks((const char *const[]){ "virtio_net", NULL });
	if (lacks)
		return vmf_test_skip_all("net tests: the guest image lacks %s: rebuild it with contrib/image/build-image",
					 lacks);
	const char *why = tenant_users_make("vnet");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("net tests: %s", why);
	}
	/* Named by the main process, which removes them after the test
	 * however it ended (a failed check ends its forked child early). */
	snprintf(ns_pod, sizeof ns_pod, "vfn%dpod", (int)getpid());
	snprintf(ns_peer, sizeof ns_peer, "vfn%dpeer", (int)getpid());
	snprintf(ns_pod2, sizeof ns_pod2, "vfn%dpod2", (int)getpid());
	snprintf(ns_peer2, sizeof ns_peer2, "vfn%dpeer2", (int)getpid());
	Suite *s = suite_create("net");
	TCase *tc = tcase_create("net");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 600);
	ADD_TEST(tc, net_end_to_end);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	remove_namespaces();
	tenant_users_remove();
	return rc;
}
