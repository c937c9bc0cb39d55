/* Network for handed-out VMs (none, user-mode, or the sandbox's own
 * namespace): the request's network parsed and
 * checked, and, on a worker, the sandbox's network namespace prepared (a
 * tap mirrored with its interface by tc, as Kata's tcfilter model) and
 * undone.  Namespace work never runs on the loop: the worker thread enters
 * the namespace only to open its sockets and the tap, and leaves it before
 * anything else runs on it. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <limits.h>
#include <linux/if_tun.h>
#include <linux/nsfs.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/tc_act/tc_mirred.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <linux/if_ether.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "net.h"

#ifndef NSFS_MAGIC
#define NSFS_MAGIC 0x6e736673
#endif

/* The priority of the mirror filters: ours to find and delete, whatever
 * else the interface's ingress holds. */
#define MIRROR_PRIO 0xc0f1

int
vmf_net_parse(const char *spec, struct vmf_net_request *out, struct vmf_error *err)
{
	memset(out, 0, sizeof(*out));
	if (!spec || !*spec)
		return 0;
	if (strcmp(spec, "none") == 0) {
		out->none = true;
		return 0;
	}
	if (strncmp(spec, "user", 4) != 0 || (spec[4] && spec[4] != ','))
		return vmf_err(err, EINVAL, "network '%.100s' is not none or "
			       "user[,outbound][,hostfwd=tcp:[ADDR]:PORT-:GUESTPORT...]", spec);
	out->user = true;
	const char *p = spec + 4;
	while (*p == ',') {
		p++;
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char item[128];
		if (len == 8 && strncmp(p, "outbound", 8) == 0) {
			out->outbound = true;
			p += len;
			continue;
		}
		if (len >= sizeof(item) || strncmp(p, "hostfwd=", 8) != 0)
			return vmf_err(err, EINVAL, "network option '%.*s' is not outbound or "
				       "hostfwd=tcp:[ADDR]:PORT-:GUESTPORT", (int)(len > 100 ? 100 : len), p);
		memcpy(item, p + 8, len - 8);
		item[len - 8] = '\0';
		p += len;
		if (out->n_hostfwd >= VMF_MAX_HOSTFWD)
			return vmf_err(err, E2BIG, "at most %d port forwards", VMF_MAX_HOSTFWD);
		/* tcp:[ADDR]:PORT-:GPORT; the guest address is the guest's own. */
		char addr[64] = "";
		unsigned hp = 0, gp = 0;
		int n = 0;
		const char *r = item;
		if (strncmp(r, "tcp:", 4) != 0)
			return vmf_err(err, EINVAL, "forward '%s' is not tcp:[ADDR]:PORT-:GUESTPORT (only tcp)", item);
		r += 4;
		const char *colon = strchr(r, ':');
		if (!colon || (size_t)(colon - r) >= sizeof(addr))
			return vmf_err(err, EINVAL, "forward '%s' is not tcp:[ADDR]:PORT-:GUESTPORT", item);
		memcpy(addr, r, (size_t)(colon - r));
		addr[colon - r] = '\0';
		if (sscanf(colon + 1, "%u-:%u%n", &hp, &gp, &n) != 2 || colon[1 + n] || hp == 0 || hp > 65535 ||
		    gp == 0 || gp > 65535)
			return vmf_err(err, EINVAL, "forward '%s' is not tcp:[ADDR]:PORT-:GUESTPORT with ports 1 to "
				       "65535", item);
		struct in_addr a;
		if (!*addr)
			snprintf(addr, sizeof(addr), "127.0.0.1");   /* loopback unless asked */
		else if (inet_pton(AF_INET, addr, &a) != 1)
			return vmf_err(err, EINVAL, "forward '%s': '%s' is not an IPv4 address", item, addr);
		snprintf(out->hostfwd[out->n_hostfwd++], sizeof(out->hostfwd[0]), "tcp:%s:%u-:%u", addr, hp, gp);
	}
	if (*p)
		return vmf_err(err, EINVAL, "network '%.100s' has trailing text", spec);
	return 0;
}

int
vmf_net_check_fwd_ports(const struct vmf_net_request *r, bool tenant, struct vmf_error *err)
{
	/* QEMU's own refusal names no port; this check names it (a port taken
	 * between here and netdev_add still fails there, less clearly). */
	for (unsigned i = 0; i < r->n_hostfwd; i++) {
		char addr[64];
		unsigned hp, gp;
		if (sscanf(r->hostfwd[i], "tcp:%63[^:]:%u-:%u", addr, &hp, &gp) != 3)
			continue;
		if (tenant && hp < 1024)
			return vmf_err(err, EACCES, "forward %s: host port %u is privileged (below 1024): only root "
				       "and the daemon's user may forward it", r->hostfwd[i], hp);
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)hp) };
		inet_pton(AF_INET, addr, &sa.sin_addr);
		int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0)
			return vmf_err_sys(err, errno, "cannot check the forward's port");
		int one = 1;
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		int rc = bind(s, (struct sockaddr *)&sa, sizeof(sa));
		int e = errno;
		close(s);
		if (rc < 0)
			return vmf_err_sys(err, e, "forward %s: host port %s:%u cannot be bound", r->hostfwd[i], addr, hp);
	}
	return 0;
}

/* Whether addr is one of the comma-separated IPv4 addresses in list
 * (0.0.0.0 in list: any). */
static bool
addr_listed(const char *list, const char *addr)
{
	struct in_addr want, a;
	if (inet_pton(AF_INET, addr, &want) != 1)
		return false;
	for (const char *p = list; p && *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char one[INET_ADDRSTRLEN];
		if (len < sizeof(one)) {
			memcpy(one, p, len);
			one[len] = '\0';
			if (inet_pton(AF_INET, one, &a) == 1 && (a.s_addr == INADDR_ANY || a.s_addr == want.s_addr))
				return true;
		}
		p = end ? end + 1 : NULL;
	}
	return false;
}

bool
vmf_net_valid_addrs(const char *s)
{
	for (const char *p = s; p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char one[INET_ADDRSTRLEN];
		struct in_addr a;
		if (len == 0 || len >= sizeof(one))
			return false;
		memcpy(one, p, len);
		one[len] = '\0';
		if (inet_pton(AF_INET, one, &a) != 1)
			return false;
		p = end ? end + 1 : NULL;
	}
	return true;
}

int
vmf_net_check_tenant(const struct vmf_net_request *r, bool outbound_ok, const char *addrs, unsigned held,
		     unsigned max, struct vmf_error *err)
{
	if (r->outbound && !outbound_ok)
		return vmf_err(err, EPERM, "user-mode network with outbound connections is not for tenants here: it "
			       "reaches the host's loopback services too (user_net_outbound = no)");
	for (unsigned i = 0; i < r->n_hostfwd; i++) {
		char addr[64];
		unsigned hp, gp;
		if (sscanf(r->hostfwd[i], "tcp:%63[^:]:%u-:%u", addr, &hp, &gp) == 3 && !addr_listed(addrs, addr))
			return vmf_err(err, EPERM, "forward %s listens on %s, which a tenant's forward may not "
				       "(hostfwd_addresses = %s)", r->hostfwd[i], addr, addrs);
	}
	if (held + r->n_hostfwd > max)
		return vmf_err(err, E2BIG, "%u port forward%s asked, %u held by your other VMs: at most %u in all "
			       "(max_hostfwd_per_tenant)", r->n_hostfwd, r->n_hostfwd == 1 ? "" : "s", held, max);
	return 0;
}

int
vmf_netns_open(const char *path, uid_t peer, bool admin, uint64_t *dev, uint64_t *ino, struct vmf_error *err)
{
	if (path[0] != '/')
		return vmf_err(err, EINVAL, "network namespace path '%.200s' is not absolute", path);
	/* O_PATH first: a path that is no namespace file (a device, a FIFO) is
	 * never opened for real, so naming one has no effect. */
	int pfd = open(path, O_PATH | O_CLOEXEC);
	if (pfd < 0)
		return vmf_err_sys(err, errno, "network namespace %.200s", path);
	struct statfs sfs;
	if (fstatfs(pfd, &sfs) < 0 || sfs.f_type != NSFS_MAGIC) {
		close(pfd);
		return vmf_err(err, EINVAL, "%.200s is not a namespace file (a /proc/PID/ns/net or a bind mount "
			       "of one, such as /run/netns/NAME)", path);
	}
	char self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", pfd);
	int fd = open(self, O_RDONLY | O_CLOEXEC);
	int e = errno;
	close(pfd);
	if (fd < 0)
		return vmf_err_sys(err, e, "cannot open network namespace %.200s", path);
	if (ioctl(fd, NS_GET_NSTYPE) != CLONE_NEWNET) {
		close(fd);
		return vmf_err(err, EINVAL, "%.200s is a namespace, but not a network namespace", path);
	}
	/* A tenant's namespace is one it made: its owning user namespace is the
	 * tenant's.  Anything else (the host's, another tenant's) it may not
	 * have the daemon act on. */
	if (!admin) {
		int ufd = ioctl(fd, NS_GET_USERNS);
		uid_t owner = (uid_t)-1;
		if (ufd < 0 || ioctl(ufd, NS_GET_OWNER_UID, &owner) < 0 || owner != peer) {
			if (ufd >= 0)
				close(ufd);
			close(fd);
			return vmf_err(err, EPERM, "network namespace %.200s is not yours: its user namespace is owned "
				       "by uid %d, not by uid %u", path, (int)owner, (unsigned)peer);
		}
		close(ufd);
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return vmf_err_sys(err, errno, "network namespace %.200s", path);
	}
	*dev = st.st_dev;
	*ino = st.st_ino;
	return fd;
}

/* ---- rtnetlink over libmnl ---- */

struct nl {
	struct mnl_socket *s;
	unsigned seq, portid;
	char buf[16384];
};

static int
nl_talk(struct nl *nl, struct nlmsghdr *h, mnl_cb_t cb, void *data)
{
	h->nlmsg_seq = ++nl->seq;
	if (mnl_socket_sendto(nl->s, h, h->nlmsg_len) < 0)
		return -errno;
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl->s, nl->buf, sizeof(nl->buf));
		if (n < 0)
			return -errno;
		int r = mnl_cb_run(nl->buf, (size_t)n, nl->seq, nl->portid, cb, data);
		if (r <= MNL_CB_STOP)
			return r < 0 ? -errno : 0;
	}
}

static struct nlmsghdr *
nl_msg(struct nl *nl, uint16_t type, uint16_t flags)
{
	struct nlmsghdr *h = mnl_nlmsg_put_header(nl->buf);
	h->nlmsg_type = type;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	return h;
}

struct addr_dump {
	unsigned ifindex;
	struct vmf_guest_net *gn;
};

static int
addr_cb(const struct nlmsghdr *h, void *data)
{
	struct addr_dump *d = data;
	struct ifaddrmsg *m = mnl_nlmsg_get_payload(h);
	if (m->ifa_family != AF_INET || m->ifa_index != d->ifindex || d->gn->n_addrs >= 8)
		return MNL_CB_OK;
	struct nlattr *a;
	mnl_attr_for_each(a, h, sizeof(*m)) {
		if (mnl_attr_get_type(a) != IFA_LOCAL || mnl_attr_get_payload_len(a) != 4)
			continue;
		char s[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, mnl_attr_get_payload(a), s, sizeof(s));
		snprintf(d->gn->addrs[d->gn->n_addrs++], sizeof(d->gn->addrs[0]), "%s/%u", s, m->ifa_prefixlen);
	}
	return MNL_CB_OK;
}

static int
route_cb(const struct nlmsghdr *h, void *data)
{
	struct addr_dump *d = data;
	struct rtmsg *m = mnl_nlmsg_get_payload(h);
	if (m->rtm_family != AF_INET || m->rtm_dst_len != 0 || m->rtm_table != RT_TABLE_MAIN || d->gn->gateway[0])
		return MNL_CB_OK;
	struct nlattr *a;
	const void *gw = NULL;
	uint32_t oif = 0;
	mnl_attr_for_each(a, h, sizeof(*m)) {
		if (mnl_attr_get_type(a) == RTA_GATEWAY && mnl_attr_get_payload_len(a) == 4)
			gw = mnl_attr_get_payload(a);
		if (mnl_attr_get_type(a) == RTA_OIF)
			oif = mnl_attr_get_u32(a);
	}
	if (gw && oif == d->ifindex)
		inet_ntop(AF_INET, gw, d->gn->gateway, sizeof(d->gn->gateway));
	return MNL_CB_OK;
}

static int
ingress_qdisc(struct nl *nl, unsigned ifindex, bool add)
{
	struct nlmsghdr *h = nl_msg(nl, add ? RTM_NEWQDISC : RTM_DELQDISC, add ? NLM_F_CREATE : 0);
	struct tcmsg *t = mnl_nlmsg_put_extra_header(h, sizeof(*t));
	t->tcm_family = AF_UNSPEC;
	t->tcm_ifindex = (int)ifindex;
	t->tcm_handle = TC_H_MAKE(TC_H_INGRESS, 0);
	t->tcm_parent = TC_H_INGRESS;
	mnl_attr_put_strz(h, TCA_KIND, "ingress");
	return nl_talk(nl, h, NULL, NULL);
}

/* Everything arriving on from is sent out of to (u32 "match u8 0 0" and
 * mirred egress redirect, as Kata's tcfilter). */
static int
mirror(struct nl *nl, unsigned from, unsigned to)
{
	struct nlmsghdr *h = nl_msg(nl, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL);
	struct tcmsg *t = mnl_nlmsg_put_extra_header(h, sizeof(*t));
	t->tcm_family = AF_UNSPEC;
	t->tcm_ifindex = (int)from;
	t->tcm_parent = TC_H_MAKE(TC_H_INGRESS, 0);
	t->tcm_info = TC_H_MAKE((uint32_t)MIRROR_PRIO << 16, htons(ETH_P_ALL));
	mnl_attr_put_strz(h, TCA_KIND, "u32");
	struct nlattr *opts = mnl_attr_nest_start(h, TCA_OPTIONS);
	/* A selector with one key, all zero: "match u8 0 0", every packet. */
	union {
		struct tc_u32_sel sel;
		char bytes[sizeof(struct tc_u32_sel) + sizeof(struct tc_u32_key)];
	} sel;
	memset(&sel, 0, sizeof(sel));
	sel.sel.flags = TC_U32_TERMINAL;
	sel.sel.nkeys = 1;
	mnl_attr_put(h, TCA_U32_SEL, sizeof(sel.bytes), &sel);
	struct nlattr *acts = mnl_attr_nest_start(h, TCA_U32_ACT);
	struct nlattr *act = mnl_attr_nest_start(h, 1);
	mnl_attr_put_strz(h, TCA_ACT_KIND, "mirred");
	struct nlattr *aopts = mnl_attr_nest_start(h, TCA_ACT_OPTIONS);
	struct tc_mirred m = { .action = TC_ACT_STOLEN, .eaction = TCA_EGRESS_REDIR, .ifindex = to };
	mnl_attr_put(h, TCA_MIRRED_PARMS, sizeof(m), &m);
	mnl_attr_nest_end(h, aopts);
	mnl_attr_nest_end(h, act);
	mnl_attr_nest_end(h, acts);
	mnl_attr_nest_end(h, opts);
	return nl_talk(nl, h, NULL, NULL);
}

static int
del_mirror(struct nl *nl, unsigned from)
{
	struct nlmsghdr *h = nl_msg(nl, RTM_DELTFILTER, 0);
	struct tcmsg *t = mnl_nlmsg_put_extra_header(h, sizeof(*t));
	t->tcm_family = AF_UNSPEC;
	t->tcm_ifindex = (int)from;
	t->tcm_parent = TC_H_MAKE(TC_H_INGRESS, 0);
	t->tcm_info = TC_H_MAKE((uint32_t)MIRROR_PRIO << 16, 0);
	return nl_talk(nl, h, NULL, NULL);
}

static int
count_cb(const struct nlmsghdr *h, void *data)
{
	(void)h;
	(*(unsigned *)data)++;
	return MNL_CB_OK;
}

static int
ours_cb(const struct nlmsghdr *h, void *data)
{
	struct tcmsg *t = mnl_nlmsg_get_payload(h);
	if (TC_H_MAJ(t->tcm_info) >> 16 == MIRROR_PRIO)
		(*(unsigned *)data)++;
	return MNL_CB_OK;
}

/* Filters left on from's ingress (someone else's); with ours, only those of
 * our priority. */
static int
ingress_filters_cb(struct nl *nl, unsigned from, unsigned *n, mnl_cb_t cb)
{
	struct nlmsghdr *h = mnl_nlmsg_put_header(nl->buf);
	h->nlmsg_type = RTM_GETTFILTER;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	struct tcmsg *t = mnl_nlmsg_put_extra_header(h, sizeof(*t));
	t->tcm_family = AF_UNSPEC;
	t->tcm_ifindex = (int)from;
	t->tcm_parent = TC_H_MAKE(TC_H_INGRESS, 0);
	*n = 0;
	return nl_talk(nl, h, cb, n);
}

static int
ingress_filters(struct nl *nl, unsigned from, unsigned *n)
{
	return ingress_filters_cb(nl, from, n, count_cb);
}

/* Enters ns (the calling thread only), runs fn there to open what must be
 * opened inside, and comes back.  A thread that cannot come back would run
 * later jobs in a sandbox's namespace: the daemon stops rather. */
static int
in_netns(int nsfd, int (*fn)(void *), void *arg, struct vmf_error *err)
{
	int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (self < 0)
		return vmf_err_sys(err, errno, "cannot open this thread's network namespace");
	if (setns(nsfd, CLONE_NEWNET) < 0) {
		int e = errno;
		close(self);
		return vmf_err_sys(err, e, "cannot enter the network namespace");
	}
	int r = fn(arg);
	if (setns(self, CLONE_NEWNET) < 0) {
		log_error("cannot return a worker thread to the daemon's network namespace: %s",
			strerror(errno));
		abort();
	}
	close(self);
	return r;
}

struct inside {
	const char *link, *tap;
	struct mnl_socket *nl;
	int ioc, tapfd;
	int err;
	const char *what;     /* what failed inside */
};

static int
open_inside(void *arg)
{
	struct inside *in = arg;
	in->what = "cannot open sockets in the network namespace";
	in->nl = mnl_socket_open(NETLINK_ROUTE);
	if (!in->nl || mnl_socket_bind(in->nl, 0, MNL_SOCKET_AUTOPID) < 0)
		return in->err = -errno;
	in->ioc = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (in->ioc < 0)
		return in->err = -errno;
	if (!in->tap)
		return 0;
	in->what = "cannot create the VM's tap in the network namespace";
	/* The tap is made in the namespace of the thread that asks: here.
	 * Not persistent: it goes with the last fd, QEMU's. */
	in->tapfd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (in->tapfd < 0)
		return in->err = -errno;
	struct ifreq ifr = { 0 };
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", in->tap);
	if (ioctl(in->tapfd, TUNSETIFF, &ifr) < 0)
		return in->err = -errno;
	return 0;
}

static void
inside_close(struct inside *in)
{
	if (in->nl)
		mnl_socket_close(in->nl);
	if (in->ioc >= 0)
		close(in->ioc);
	in->nl = NULL;
	in->ioc = -1;
}

static int
enter(int nsfd, struct inside *in, struct nl *nl, struct vmf_error *err)
{
	in->ioc = in->tapfd = -1;
	int r = in_netns(nsfd, open_inside, in, err);
	if (r < 0 && !err->code)
		vmf_err_sys(err, -r, "%s", in->what);
	if (r < 0) {
		inside_close(in);
		return r;
	}
	nl->s = in->nl;
	nl->seq = (unsigned)time(NULL);
	nl->portid = mnl_socket_get_portid(in->nl);
	return 0;
}

static void
read_dns(const char *path, struct vmf_guest_net *gn)
{
	/* ip netns's convention: /etc/netns/NAME/resolv.conf for /run/netns/NAME. */
	const char *base = strrchr(path, '/');
	if (strncmp(path, "/run/netns/", 11) != 0 && strncmp(path, "/var/run/netns/", 15) != 0)
		return;
	char conf[PATH_MAX];
	snprintf(conf, sizeof(conf), "/etc/netns/%s/resolv.conf", base + 1);
	FILE *f = fopen(conf, "re");
	if (!f)
		return;
	char line[256], ns[64];
	while (fgets(line, sizeof(line), f) && gn->n_dns < 4)
		if (sscanf(line, " nameserver %63s", ns) == 1)
			snprintf(gn->dns[gn->n_dns++], sizeof(gn->dns[0]), "%s", ns);
	fclose(f);
}

int
vmf_netns_check_link(int nsfd, const char *path, const char *link, struct vmf_error *err)
{
	struct nl *nl = calloc(1, sizeof(*nl));
	if (!nl)
		return vmf_err(err, ENOMEM, "out of memory");
	struct inside in = { .link = link, .tap = NULL };
	int r = enter(nsfd, &in, nl, err);
	if (r == 0) {
		struct ifreq ifr = { 0 };
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", link);
		unsigned ours = 0;
		if (ioctl(in.ioc, SIOCGIFINDEX, &ifr) < 0)
			r = errno == ENODEV ? vmf_err(err, ENODEV, "the network namespace %.200s has no interface %s",
						      path, link)
					    : vmf_err_sys(err, errno, "interface %s in %.200s", link, path);
		/* One VM per interface: a second mirror would get nothing. */
		else if (ingress_filters_cb(nl, (unsigned)ifr.ifr_ifindex, &ours, ours_cb) == 0 && ours)
			r = vmf_err(err, EBUSY, "interface %s in %.200s is mirrored to another VM already", link, path);
		inside_close(&in);
	}
	free(nl);
	return r;
}

int
vmf_netns_setup(int nsfd, const char *path, const char *link, const char *tap, struct vmf_guest_net *gn,
		int *tapfd, struct vmf_error *err)
{
	*tapfd = -1;
	memset(gn, 0, sizeof(*gn));
	struct nl *nl = calloc(1, sizeof(*nl));
	if (!nl)
		return vmf_err(err, ENOMEM, "out of memory");
	struct inside in = { .link = link, .tap = tap };
	int r = enter(nsfd, &in, nl, err);
	if (r < 0)
		goto out;
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", link);
	if (ioctl(in.ioc, SIOCGIFINDEX, &ifr) < 0) {
		r = errno == ENODEV ? vmf_err(err, ENODEV, "the network namespace %.200s has no interface %s", path,
					      link)
				    : vmf_err_sys(err, errno, "interface %s in %.200s", link, path);
		goto out;
	}
	unsigned lidx = (unsigned)ifr.ifr_ifindex;
	if (ioctl(in.ioc, SIOCGIFHWADDR, &ifr) < 0 || ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER) {
		r = vmf_err(err, EINVAL, "interface %s in %.200s is not an Ethernet interface", link, path);
		goto out;
	}
	memcpy(gn->mac, ifr.ifr_hwaddr.sa_data, 6);
	int mtu = ioctl(in.ioc, SIOCGIFMTU, &ifr) == 0 ? ifr.ifr_mtu : 0;
	struct addr_dump ad = { lidx, gn };
	struct nlmsghdr *h = mnl_nlmsg_put_header(nl->buf);
	h->nlmsg_type = RTM_GETADDR;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	struct ifaddrmsg *am = mnl_nlmsg_put_extra_header(h, sizeof(*am));
	am->ifa_family = AF_INET;
	if ((r = nl_talk(nl, h, addr_cb, &ad)) < 0) {
		vmf_err_sys(err, -r, "cannot read the addresses of %s in %.200s", link, path);
		goto out;
	}
	h = mnl_nlmsg_put_header(nl->buf);
	h->nlmsg_type = RTM_GETROUTE;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	struct rtmsg *rm = mnl_nlmsg_put_extra_header(h, sizeof(*rm));
	rm->rtm_family = AF_INET;
	if ((r = nl_talk(nl, h, route_cb, &ad)) < 0) {
		vmf_err_sys(err, -r, "cannot read the routes of %.200s", path);
		goto out;
	}
	read_dns(path, gn);
	/* The tap: the interface's MTU, up. */
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", tap);
	if (mtu > 0) {
		ifr.ifr_mtu = mtu;
		ioctl(in.ioc, SIOCSIFMTU, &ifr);
	}
	if (ioctl(in.ioc, SIOCGIFINDEX, &ifr) < 0) {
		r = vmf_err_sys(err, errno, "tap %s in %.200s", tap, path);
		goto out;
	}
	unsigned tidx = (unsigned)ifr.ifr_ifindex;
	ifr.ifr_flags = IFF_UP;
	if (ioctl(in.ioc, SIOCSIFFLAGS, &ifr) < 0) {
		r = vmf_err_sys(err, errno, "cannot bring tap %s up in %.200s", tap, path);
		goto out;
	}
	if ((r = ingress_qdisc(nl, lidx, true)) < 0 || (r = ingress_qdisc(nl, tidx, true)) < 0) {
		vmf_err_sys(err, -r, "cannot add an ingress qdisc in %.200s", path);
		goto out;
	}
	if ((r = mirror(nl, lidx, tidx)) < 0) {
		/* Another hand-out's, made since the check: it is not ours to undo. */
		if (r == -EEXIST)
			r = vmf_err(err, EBUSY, "interface %s in %.200s is mirrored to another VM already", link, path);
		else
			vmf_err_sys(err, -r, "cannot mirror interface %s in %.200s to the VM's tap", link, path);
		goto out;
	}
	if ((r = mirror(nl, tidx, lidx)) < 0) {
		vmf_err_sys(err, -r, "cannot mirror the VM's tap to %s in %.200s", link, path);
		goto out;
	}
	*tapfd = in.tapfd;
	in.tapfd = -1;
	r = 0;
out:
	if (in.tapfd >= 0)
		close(in.tapfd);
	inside_close(&in);
	free(nl);
	return r;
}

int
vmf_netns_undo(const char *path, uint64_t dev, uint64_t ino, const char *link, const char *tap,
	       struct vmf_error *err)
{
	/* The namespace as recorded, or nothing: a path that names another
	 * namespace now (or none: the namespace is gone with its qdiscs) is
	 * not touched. */
	uint64_t d, i;
	int fd = vmf_netns_open(path, 0, true, &d, &i, err);
	if (fd < 0)
		return err->code == ENOENT ? 0 : fd;
	if (d != dev || i != ino) {
		close(fd);
		return 0;
	}
	struct nl *nl = calloc(1, sizeof(*nl));
	if (!nl) {
		close(fd);
		return vmf_err(err, ENOMEM, "out of memory");
	}
	struct inside in = { .link = link, .tap = NULL };
	int r = enter(fd, &in, nl, err);
	close(fd);
	if (r < 0) {
		free(nl);
		return r;
	}
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", link);
	if (ioctl(in.ioc, SIOCGIFINDEX, &ifr) == 0) {
		unsigned lidx = (unsigned)ifr.ifr_ifindex, left = 1;
		del_mirror(nl, lidx);
		/* The ingress qdisc goes once no filter of anyone else is on it. */
		if (ingress_filters(nl, lidx, &left) == 0 && left == 0)
			ingress_qdisc(nl, lidx, false);
	}
	/* QEMU's exit took the tap with it; one whose fd outlived it (a
	 * daemon that died holding it) is deleted by name. */
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", tap);
	if (*tap && ioctl(in.ioc, SIOCGIFINDEX, &ifr) == 0) {
		struct nlmsghdr *h = nl_msg(nl, RTM_DELLINK, 0);
		struct ifinfomsg *im = mnl_nlmsg_put_extra_header(h, sizeof(*im));
		im->ifi_index = ifr.ifr_ifindex;
		if ((r = nl_talk(nl, h, NULL, NULL)) < 0 && r != -ENODEV)
			vmf_err_sys(err, -r, "cannot delete tap %s in %.200s", tap, path);
	}
	inside_close(&in);
	free(nl);
	return r < 0 && r != -ENODEV ? r : 0;
}
