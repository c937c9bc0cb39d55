/* The guest's NIC: every one up at boot, the first one (besides lo) given
 * a hand-out's MAC, addresses, default route and DNS, and a former
 * hand-out's configuration undone; the list inspect reports.  netlink and
 * ioctl, no exec: this is on the hand-out's one round trip. */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

/* For inspect. */
size_t
nic_list(char lines[][NIC_LINE_MAX], size_t max)
{
	struct if_nameindex *ni = if_nameindex();
	struct ifaddrs *ifa = NULL;
	size_t n = 0;
	if (!ni)
		return 0;
	if (getifaddrs(&ifa) < 0)
		ifa = NULL;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	for (struct if_nameindex *i = ni; i->if_index && n < max; i++) {
		if (strcmp(i->if_name, "lo") == 0)
			continue;
		struct ifreq ifr = {0};
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", i->if_name);
		unsigned char mac[6] = {0};
		if (s >= 0 && ioctl(s, SIOCGIFHWADDR, &ifr) == 0)
			memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
		bool up = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP);
		char *o = lines[n];
		size_t cap = NIC_LINE_MAX;
		int len = snprintf(o, cap, "%s %02x:%02x:%02x:%02x:%02x:%02x %s", i->if_name, mac[0], mac[1],
				   mac[2], mac[3], mac[4], mac[5], up ? "up" : "down");
		for (struct ifaddrs *a = ifa; a && len > 0 && (size_t)len < cap; a = a->ifa_next) {
			if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || strcmp(a->ifa_name, i->if_name))
				continue;
			char addr[INET_ADDRSTRLEN];
			uint32_t m = a->ifa_netmask ? ntohl(((struct sockaddr_in *)a->ifa_netmask)->sin_addr.s_addr) : 0;
			inet_ntop(AF_INET, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, addr, sizeof(addr));
			len += snprintf(o + len, cap - (size_t)len, " %s/%d", addr, __builtin_popcount(m));
		}
		n++;
	}
	if (s >= 0)
		close(s);
	if (ifa)
		freeifaddrs(ifa);
	if_freenameindex(ni);
	return n;
}

/* Every NIC up, without addresses, once at boot: the template is saved
 * with it up (its rx ring filled, which costs tens of ms under TCG), so a
 * hand-out only changes its MAC live and adds addresses.  Its hub has no
 * backend until a hand-out plugs one: an up link reaches nothing. */
void
nic_all_up(void)
{
	struct if_nameindex *ni = if_nameindex();
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	for (struct if_nameindex *i = ni; ni && s >= 0 && i->if_index; i++) {
		struct ifreq ifr = {0};
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", i->if_name);
		if (strcmp(i->if_name, "lo") == 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0 || (ifr.ifr_flags & IFF_UP))
			continue;
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			logmsg("cannot bring %s up: %s", i->if_name, strerror(errno));
	}
	if (s >= 0)
		close(s);
	if (ni)
		if_freenameindex(ni);
}

/* One rtnetlink request, its ack awaited. */
static int
rtnl_do(int fd, struct nlmsghdr *h)
{
	static uint32_t seq;
	h->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	h->nlmsg_seq = ++seq;
	struct sockaddr_nl kern = { .nl_family = AF_NETLINK };
	if (sendto(fd, h, h->nlmsg_len, 0, (struct sockaddr *)&kern, sizeof(kern)) < 0)
		return -errno;
	char buf[4096];
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0)
			return errno == EINTR ? -EINTR : -errno;
		for (struct nlmsghdr *m = (struct nlmsghdr *)buf; NLMSG_OK(m, (unsigned)n); m = NLMSG_NEXT(m, n))
			if (m->nlmsg_seq == seq && m->nlmsg_type == NLMSG_ERROR)
				return ((struct nlmsgerr *)NLMSG_DATA(m))->error;
	}
}

static void
rta_add(struct nlmsghdr *h, unsigned short type, const void *data, unsigned short len)
{
	struct rtattr *a = (struct rtattr *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
	a->rta_type = type;
	a->rta_len = (unsigned short)RTA_LENGTH(len);
	memcpy(RTA_DATA(a), data, len);
	h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* "a.b.c.d/len" */
static int
parse_prefix(const char *s, struct in_addr *a, unsigned *plen)
{
	char buf[40];
	snprintf(buf, sizeof(buf), "%s", s);
	char *slash = strchr(buf, '/');
	*plen = 32;
	if (slash) {
		*slash = '\0';
		char *end;
		unsigned long l = strtoul(slash + 1, &end, 10);
		if (*end || l > 32)
			return -1;
		*plen = (unsigned)l;
	}
	return inet_pton(AF_INET, buf, a) == 1 ? 0 : -1;
}

/* Set once a hand-out configured the NIC, with the MAC it had before.
 * In the agent's memory, so a template snapshotted from a VM with network
 * has it set in every clone: their hand-outs clear what the source VM's
 * hand-out configured.  A clone of a booted template has it clear, and its
 * hand-out without network costs one test. */
static bool nic_configured;
static unsigned char nic_boot_mac[6];

/* The first NIC besides lo, its name and index (0: none). */
static unsigned
first_nic(char name[IF_NAMESIZE])
{
	struct if_nameindex *ni = if_nameindex();
	unsigned idx = 0;
	for (struct if_nameindex *i = ni; ni && i->if_index; i++)
		if (strcmp(i->if_name, "lo") != 0 && !idx) {
			idx = i->if_index;
			snprintf(name, IF_NAMESIZE, "%s", i->if_name);
		}
	if (ni)
		if_freenameindex(ni);
	return idx;
}

/* Undoes a former hand-out's configuration: its IPv4 addresses go (the
 * kernel drops the routes through the NIC with its last address), its
 * resolv.conf goes, its MAC is the one it had at boot. */
int
nic_reset(char *why, size_t whylen)
{
	char name[IF_NAMESIZE] = "";
	unsigned idx = first_nic(name);
	if (!idx)
		return 0;
	int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifaddrs *ifa = NULL;
	int rc = -1;
	if (nl < 0 || s < 0 || getifaddrs(&ifa) < 0) {
		snprintf(why, whylen, "%s: cannot read its addresses: %s", name, strerror(errno));
		goto out;
	}
	for (struct ifaddrs *a = ifa; a; a = a->ifa_next) {
		if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || strcmp(a->ifa_name, name))
			continue;
		struct {
			struct nlmsghdr h;
			struct ifaddrmsg m;
			char attrs[64];
		} q = {0};
		uint32_t m = a->ifa_netmask ? ntohl(((struct sockaddr_in *)a->ifa_netmask)->sin_addr.s_addr) : 0;
		q.h.nlmsg_len = NLMSG_LENGTH(sizeof(q.m));
		q.h.nlmsg_type = RTM_DELADDR;
		q.m.ifa_family = AF_INET;
		q.m.ifa_prefixlen = (unsigned char)__builtin_popcount(m);
		q.m.ifa_index = idx;
		rta_add(&q.h, IFA_LOCAL, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, 4);
		int e = rtnl_do(nl, &q.h);
		if (e < 0 && e != -EADDRNOTAVAIL) {
			snprintf(why, whylen, "%s: cannot remove a former hand-out's address: %s", name, strerror(-e));
			goto out;
		}
	}
	unlink("/etc/resolv.conf");
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, nic_boot_mac, 6);
	if (ioctl(s, SIOCSIFHWADDR, &ifr) < 0)
		logmsg("%s: cannot set its MAC back: %s", name, strerror(errno));
	nic_configured = false;
	rc = 0;
out:
	if (ifa)
		freeifaddrs(ifa);
	if (nl >= 0)
		close(nl);
	if (s >= 0)
		close(s);
	return rc;
}

/* The template's NIC takes the hand-out's identity: MAC (while down: no
 * peer saw the old one), addresses, default route, DNS; then up.  netlink
 * and ioctl, no exec: this is on the hand-out's one round trip. */
int
nic_configure(const Vmf__Agent__Handout *req, char *why, size_t whylen)
{
	if (nic_configured && nic_reset(why, whylen) < 0)
		return -1;
	char name[IF_NAMESIZE] = "";
	unsigned idx = first_nic(name);
	if (!idx)
		return snprintf(why, whylen, "the guest has no network interface besides lo"), -1;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	int rc = -1;
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (s < 0 || nl < 0) {
		snprintf(why, whylen, "cannot open sockets: %s", strerror(errno));
		goto out;
	}
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
		snprintf(why, whylen, "%s: cannot read its flags: %s", name, strerror(errno));
		goto out;
	}
	short flags = ifr.ifr_flags;
	if (!nic_configured) {
		struct ifreq hw = ifr;
		if (ioctl(s, SIOCGIFHWADDR, &hw) == 0)
			memcpy(nic_boot_mac, hw.ifr_hwaddr.sa_data, 6);
	}
	nic_configured = true;
	/* Live (virtio-net's control queue): the link stays up, as the
	 * template left it; a device that refuses is taken down for it. */
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, req->net_mac.data, 6);
	int mac = ioctl(s, SIOCSIFHWADDR, &ifr);
	if (mac < 0 && errno == EBUSY) {
		struct ifreq down = ifr;
		down.ifr_flags = flags & ~IFF_UP;
		ioctl(s, SIOCSIFFLAGS, &down);
		flags &= ~IFF_UP;
		mac = ioctl(s, SIOCSIFHWADDR, &ifr);
	}
	if (mac < 0) {
		snprintf(why, whylen, "%s: cannot set its MAC: %s", name, strerror(errno));
		goto out;
	}
	if (!(flags & IFF_UP)) {
		ifr.ifr_flags = flags | IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
			snprintf(why, whylen, "%s: cannot bring it up: %s", name, strerror(errno));
			goto out;
		}
	}
	for (size_t i = 0; i < req->n_net_addrs; i++) {
		struct in_addr a;
		unsigned plen;
		if (parse_prefix(req->net_addrs[i], &a, &plen) < 0) {
			snprintf(why, whylen, "address '%s' is not a.b.c.d/len", req->net_addrs[i]);
			goto out;
		}
		struct {
			struct nlmsghdr h;
			struct ifaddrmsg m;
			char attrs[64];
		} q = {0};
		q.h.nlmsg_len = NLMSG_LENGTH(sizeof(q.m));
		q.h.nlmsg_type = RTM_NEWADDR;
		q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
		q.m.ifa_family = AF_INET;
		q.m.ifa_prefixlen = (unsigned char)plen;
		q.m.ifa_index = idx;
		rta_add(&q.h, IFA_LOCAL, &a, 4);
		rta_add(&q.h, IFA_ADDRESS, &a, 4);
		int e = rtnl_do(nl, &q.h);
		if (e < 0) {
			snprintf(why, whylen, "%s: cannot add address %s: %s", name, req->net_addrs[i], strerror(-e));
			goto out;
		}
	}
	if (req->net_gateway && *req->net_gateway) {
		struct in_addr gw;
		if (inet_pton(AF_INET, req->net_gateway, &gw) != 1) {
			snprintf(why, whylen, "gateway '%s' is not an IPv4 address", req->net_gateway);
			goto out;
		}
		struct {
			struct nlmsghdr h;
			struct rtmsg m;
			char attrs[64];
		} q = {0};
		q.h.nlmsg_len = NLMSG_LENGTH(sizeof(q.m));
		q.h.nlmsg_type = RTM_NEWROUTE;
		q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
		q.m.rtm_family = AF_INET;
		q.m.rtm_table = RT_TABLE_MAIN;
		q.m.rtm_protocol = RTPROT_STATIC;
		q.m.rtm_scope = RT_SCOPE_UNIVERSE;
		q.m.rtm_type = RTN_UNICAST;
		uint32_t oif = idx;
		rta_add(&q.h, RTA_GATEWAY, &gw, 4);
		rta_add(&q.h, RTA_OIF, &oif, 4);
		int e = rtnl_do(nl, &q.h);
		if (e < 0) {
			snprintf(why, whylen, "%s: cannot add the default route via %s: %s", name, req->net_gateway,
				 strerror(-e));
			goto out;
		}
	}
	if (req->n_net_dns) {
		/* A busybox initramfs may have no /etc at all. */
		if (mkdir("/etc", 0755) < 0 && errno != EEXIST) {
			snprintf(why, whylen, "cannot create /etc: %s", strerror(errno));
			goto out;
		}
		FILE *f = fopen("/etc/resolv.conf", "we");
		if (!f) {
			snprintf(why, whylen, "cannot write /etc/resolv.conf: %s", strerror(errno));
			goto out;
		}
		for (size_t i = 0; i < req->n_net_dns; i++)
			fprintf(f, "nameserver %s\n", req->net_dns[i]);
		if (fclose(f) != 0) {
			snprintf(why, whylen, "cannot write /etc/resolv.conf: %s", strerror(errno));
			goto out;
		}
	}
	rc = 0;
out:
	if (s >= 0)
		close(s);
	if (nl >= 0)
		close(nl);
	return rc;
}

bool
nic_is_configured(void)
{
	return nic_configured;
}
