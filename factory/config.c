/* The config file.  libinih splits KEY = VALUE lines and strips comments;
 * the line reader in front of it counts lines (the Debian libinih does not
 * pass line numbers to the handler), reads section headers itself and
 * catches the lines inih would reject or misread, so that every problem is
 * reported with its line and the parse goes on after it. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cgroup.h"
#include "config.h"
#include "driver.h"
#include "log.h"
#include "net.h"
#include "sandbox.h"
#include "util.h"

enum section { SEC_NONE, SEC_DAEMON, SEC_HV, SEC_GUEST, SEC_GATEWAY, SEC_POOL, SEC_BAD };

static const char *const section_names[] = { "", "daemon", "hypervisor", "guest", "gateway", "pool", "" };

enum kind {
	K_ABSPATH,     /* absolute path */
	K_PROGRAM,     /* absolute path or a bare name looked up in PATH */
	K_UINT,
	K_SECONDS,     /* a number with an optional s, m, h or d suffix */
	K_BOOL,
	K_LOGLEVEL,
	K_ACCEL,
	K_MACHINE,
	K_DRIVER,
	K_NAME,        /* a user or group name */
	K_LISTEN,      /* ADDR:PORT */
	K_ROOTS,       /* absolute paths separated by ':' */
	K_SHAPE,       /* auto or off */
	K_NETMODE,     /* none or user: the network a GetVM that names none gets */
	K_ADDRS,       /* IPv4 addresses separated by ',' */
	K_STOPMODE,    /* kill, flush or poweroff */
	K_RESET,       /* stop or keep */
	K_CGROUPS,     /* cgroup directories below /sys/fs/cgroup, separated by ':' */
};

/* Where a value goes: a field of opts, or of the current pool's spec. */
struct key {
	enum section sec;
	const char *name;
	enum kind kind;
	size_t off;
	unsigned min, max;
	size_t max_len;    /* strings: longest accepted, 0 = PATH_MAX-ish */
};

#define O(f) offsetof(struct vmf_daemon_opts, f)
#define P(f) offsetof(struct vmf_pool_spec, f)
#define G(f) offsetof(struct vmf_gateway_opts, f)

static const struct key keys[] = {
	{ SEC_DAEMON, "socket", K_ABSPATH, O(socket_path), 0, 0, 107 },
	{ SEC_DAEMON, "group", K_NAME, O(group), 0, 0, 32 },
	{ SEC_DAEMON, "state_dir", K_ABSPATH, O(state_dir), 0, 0, 512 },
	{ SEC_DAEMON, "run_dir", K_ABSPATH, O(run_dir), 0, 0, VMF_RUN_DIR_MAX },
	{ SEC_DAEMON, "log_level", K_LOGLEVEL, 0, 0, 0, 0 },
	{ SEC_DAEMON, "metrics_listen", K_LISTEN, O(metrics_listen), 0, 0, 64 },
	{ SEC_DAEMON, "sandbox_roots", K_ROOTS, O(sandbox_roots), 0, 0, VMF_MAX_SANDBOX_ROOTS * VMF_SANDBOX_ROOT_MAX - 1 },
	{ SEC_DAEMON, "fill_parallelism", K_UINT, O(fill_parallelism), 1, 64, 0 },
	{ SEC_DAEMON, "max_connections", K_UINT, O(max_connections), 1, 65536, 0 },
	{ SEC_DAEMON, "idle_timeout", K_SECONDS, O(idle_timeout_s), 1, 86400, 0 },
	{ SEC_DAEMON, "frame_timeout", K_SECONDS, O(frame_timeout_s), 1, 3600, 0 },
	{ SEC_DAEMON, "max_miss_clones", K_UINT, O(max_miss_clones), 0, 64, 0 },
	{ SEC_DAEMON, "max_queue", K_UINT, O(max_queue), 0, 65536, 0 },
	{ SEC_DAEMON, "get_timeout", K_SECONDS, O(get_timeout_s), 1, 600, 0 },
	{ SEC_DAEMON, "clone_parallelism", K_UINT, O(clone_parallelism), 1, 64, 0 },
	/* The tenant boundary (docs/security.md). */
	{ SEC_DAEMON, "share_max_mib", K_UINT, O(share_max_mib), 0, 1048576, 0 },
	{ SEC_DAEMON, "user_net_outbound", K_BOOL, O(user_net_outbound), 0, 0, 0 },
	{ SEC_DAEMON, "hostfwd_addresses", K_ADDRS, O(hostfwd_addresses), 0, 0, 255 },
	{ SEC_DAEMON, "max_hostfwd_per_tenant", K_UINT, O(max_hostfwd), 0, 1024, 0 },
	{ SEC_DAEMON, "max_ttl", K_SECONDS, O(max_ttl_s), 0, 365 * 86400, 0 },
	/* Every pool's defaults; a [pool] may set its own. */
	{ SEC_DAEMON, "shape", K_SHAPE, O(shape), 0, 0, 0 },
	{ SEC_DAEMON, "shape_max", K_UINT, O(shape_max), 0, 256, 0 },
	{ SEC_DAEMON, "shape_memory_mib", K_UINT, O(shape_memory_mib), 0, 268435456, 0 },
	/* Limits: per VM, then per tenant (0: none allowed). */
	{ SEC_DAEMON, "serial_log_kib", K_UINT, O(serial_log_kib), 16, 1048576, 0 },
	{ SEC_DAEMON, "scratch_max_mib", K_UINT, O(scratch_max_mib), 1, 1048576, 0 },
	{ SEC_DAEMON, "scratch_max_volumes", K_UINT, O(scratch_max_volumes), 0, VMF_DISK_SLOTS, 0 },
	{ SEC_DAEMON, "tenant_max_vms", K_UINT, O(tenant_max_vms), 0, 65536, 0 },
	{ SEC_DAEMON, "tenant_max_queued", K_UINT, O(tenant_max_queued), 0, 65536, 0 },
	{ SEC_DAEMON, "tenant_max_suspended", K_UINT, O(tenant_max_suspended), 0, 65536, 0 },
	{ SEC_DAEMON, "tenant_max_suspended_mib", K_UINT, O(tenant_max_suspended_mib), 0, 268435456, 0 },
	{ SEC_DAEMON, "tenant_max_snapshots", K_UINT, O(tenant_max_snapshots), 0, 65536, 0 },
	{ SEC_DAEMON, "tenant_max_snapshot_mib", K_UINT, O(tenant_max_snapshot_mib), 0, 268435456, 0 },
	{ SEC_DAEMON, "stop", K_STOPMODE, O(stop), 0, 0, 0 },
	{ SEC_DAEMON, "stop_timeout", K_SECONDS, O(stop_timeout_s), 1, 600, 0 },
	{ SEC_DAEMON, "on_guest_reset", K_RESET, O(on_guest_reset), 0, 0, 0 },
	{ SEC_DAEMON, "cgroup", K_CGROUPS, O(cgroup), 0, 0, VMF_CGROUPS_MAX * VMF_CGROUP_PATH_MAX },
	{ SEC_HV, "binary", K_PROGRAM, O(qemu_binary), 0, 0, 512 },
	{ SEC_HV, "type", K_DRIVER, O(hypervisor), 0, 0, 0 },
	{ SEC_HV, "accelerator", K_ACCEL, O(accel), 0, 0, 0 },
	{ SEC_HV, "machine", K_MACHINE, O(machine), 0, 0, 32 },
	{ SEC_HV, "runas", K_NAME, O(runas), 0, 0, 32 },
	{ SEC_GUEST, "image_dir", K_ABSPATH, O(image_dir), 0, 0, 512 },
	{ SEC_GUEST, "kernel", K_ABSPATH, O(kernel), 0, 0, 512 },
	{ SEC_GUEST, "initrd", K_ABSPATH, O(initrd), 0, 0, 512 },
	{ SEC_GUEST, "vcpus", K_UINT, O(vcpus), 1, 255, 0 },
	{ SEC_GUEST, "memory_mib", K_UINT, O(memory_mib), 64, 1048576, 0 },
	{ SEC_GUEST, "max_vcpus", K_UINT, O(max_vcpus), 1, 255, 0 },
	{ SEC_GUEST, "max_memory_mib", K_UINT, O(max_memory_mib), 64, 1048576, 0 },
	{ SEC_GUEST, "hotplug_ports", K_UINT, O(hotplug_ports), 0, VMF_HOTPLUG_PORTS_MAX, 0 },
	/* vmfactory gateway's (factory/gateway); the daemon reads past them. */
	{ SEC_GATEWAY, "listen", K_LISTEN, G(listen), 0, 0, 64 },
	{ SEC_GATEWAY, "api_keys", K_ABSPATH, G(api_keys), 0, 0, 512 },
	{ SEC_GATEWAY, "sandbox_dir", K_ABSPATH, G(sandbox_dir), 0, 0, 512 },
	{ SEC_GATEWAY, "state_file", K_ABSPATH, G(state_file), 0, 0, 512 },
	{ SEC_GATEWAY, "max_connections", K_UINT, G(max_connections), 1, 65536, 0 },
	{ SEC_GATEWAY, "max_sandboxes", K_UINT, G(max_sandboxes), 1, 4096, 0 },
	{ SEC_GATEWAY, "max_sandboxes_per_key", K_UINT, G(max_sandboxes_per_key), 1, 4096, 0 },
	{ SEC_GATEWAY, "workers", K_UINT, G(workers), 2, 64, 0 },
	{ SEC_GATEWAY, "idle_timeout", K_SECONDS, G(idle_timeout_s), 1, 3600, 0 },
	{ SEC_GATEWAY, "default_timeout", K_SECONDS, G(default_timeout_s), 1, 30 * 86400, 0 },
	{ SEC_GATEWAY, "max_timeout", K_SECONDS, G(max_timeout_s), 1, 30 * 86400, 0 },
	{ SEC_GATEWAY, "max_body", K_UINT, G(max_body), 1024, 64u << 20, 0 },
	{ SEC_POOL, "size", K_UINT, P(size), 0, 256, 0 },
	{ SEC_POOL, "vcpus", K_UINT, P(vcpus), 1, 255, 0 },
	{ SEC_POOL, "memory_mib", K_UINT, P(memory_mib), 64, 1048576, 0 },
	{ SEC_POOL, "max_vcpus", K_UINT, P(max_vcpus), 1, 255, 0 },
	{ SEC_POOL, "max_memory_mib", K_UINT, P(max_memory_mib), 64, 1048576, 0 },
	{ SEC_POOL, "max_idle", K_SECONDS, P(max_idle_s), 0, 30 * 86400, 0 },
	{ SEC_POOL, "share_memory", K_BOOL, P(share_memory), 0, 0, 0 },
	{ SEC_POOL, "nic", K_BOOL, P(nic), 0, 0, 0 },
	{ SEC_POOL, "hotplug_ports", K_UINT, P(hotplug_ports), 0, VMF_HOTPLUG_PORTS_MAX, 0 },
	{ SEC_POOL, "net", K_NETMODE, P(net_user), 0, 0, 0 },
	{ SEC_POOL, "shape", K_SHAPE, P(shape), 0, 0, 0 },
	{ SEC_POOL, "shape_max", K_UINT, P(shape_max), 0, 256, 0 },
	{ SEC_POOL, "shape_memory_mib", K_UINT, P(shape_memory_mib), 0, 268435456, 0 },
	{ SEC_POOL, "image_dir", K_ABSPATH, P(image_dir), 0, 0, 512 },
	{ SEC_POOL, "template", K_NAME, P(template_name), 0, 0, 32 },
	{ SEC_POOL, "stop", K_STOPMODE, P(stop), 0, 0, 0 },
	{ SEC_POOL, "stop_timeout", K_SECONDS, P(stop_timeout_s), 1, 600, 0 },
	{ SEC_POOL, "on_guest_reset", K_RESET, P(on_guest_reset), 0, 0, 0 },
	{ SEC_POOL, "cgroup", K_CGROUPS, P(cgroup), 0, 0, VMF_CGROUPS_MAX * VMF_CGROUP_PATH_MAX },
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

struct problem {
	int line;
	char *msg;
};

struct seen_key {
	int sec;            /* enum section, or SEC_POOL + pool index */
	unsigned key;
	int line;
};

struct parser {
	struct vmf_config *c;
	const char *path;
	const char *text;
	size_t len, pos;
	int line;
	enum section sec;
	int pool;                           /* index into c->pools, -1 */
	int pool_line[VMF_MAX_POOLS];
	int key_line[VMF_MAX_POOLS][NKEYS]; /* where each pool key was set, 0 = inherited */
	/* A value was rejected: cross-checks would only repeat that error. */
	bool pool_bad[VMF_MAX_POOLS], guest_bad;
	/* Keys under a pool header that was refused (no name, a bad or
	 * duplicate name, one pool too many) are still checked, into this
	 * spec that the config never uses: every error is listed at once. */
	struct vmf_pool_spec scratch;
	char scratch_label[300];
	int scratch_line;
	struct seen_key *seen;
	size_t nseen, capseen;
	struct problem *probs;
	size_t nprobs, capprobs;
	int ini_rc;
	bool oom;
};

static void problem(struct parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
problem(struct parser *p, int line, const char *fmt, ...)
{
	if (p->nprobs == p->capprobs) {
		size_t n = p->capprobs ? p->capprobs * 2 : 16;
		struct problem *np = realloc(p->probs, n * sizeof(*np));
		if (!np) {
			p->oom = true;
			return;
		}
		p->probs = np;
		p->capprobs = n;
	}
	va_list ap;
	va_start(ap, fmt);
	char *msg = NULL;
	int r = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (r < 0) {
		p->oom = true;
		return;
	}
	p->probs[p->nprobs++] = (struct problem){ line, msg };
}

static char *
keep(struct parser *p, const char *s)
{
	struct vmf_config *c = p->c;
	if (c->n_strings == sizeof(c->strings) / sizeof(c->strings[0])) {
		p->oom = true;   /* cannot happen: one string per string key */
		return NULL;
	}
	char *d = strdup(s);
	if (!d)
		p->oom = true;
	else
		c->strings[c->n_strings++] = d;
	return d;
}

static const char *
section_label(const struct parser *p, char *buf, size_t n)
{
	if (p->sec == SEC_POOL && p->pool < 0)
		snprintf(buf, n, "%s", p->scratch_label);
	else if (p->sec == SEC_POOL)
		snprintf(buf, n, "[pool %s]", p->c->pools[p->pool].name);
	else
		snprintf(buf, n, "[%s]", section_names[p->sec]);
	return buf;
}

/* ---- values ---- */

static bool
parse_uint(const char *v, unsigned long long *out)
{
	if (!isdigit((unsigned char)v[0]))
		return false;
	errno = 0;
	char *end;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno || *end)
		return false;
	*out = n;
	return true;
}

static bool
parse_seconds(const char *v, unsigned long long *out)
{
	if (!isdigit((unsigned char)v[0]))
		return false;
	errno = 0;
	char *end;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno)
		return false;
	unsigned long long mul = 1;
	if (*end == 's')
		end++;
	else if (*end == 'm')
		mul = 60, end++;
	else if (*end == 'h')
		mul = 3600, end++;
	else if (*end == 'd')
		mul = 86400, end++;
	if (*end || n > (unsigned long long)-1 / mul)
		return false;
	*out = n * mul;
	return true;
}

static int
parse_bool(const char *v)
{
	static const char *const yes[] = { "yes", "true", "on", "1" }, *const no[] = { "no", "false", "off", "0" };
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0)
			return 1;
		if (strcasecmp(v, no[i]) == 0)
			return 0;
	}
	return -1;
}

static bool
all_chars(const char *v, const char *extra)
{
	for (const char *s = v; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr(extra, *s))
			return false;
	return true;
}

/* Checks one value and stores it; false after reporting the problem. */
static bool
set_value(struct parser *p, const struct key *k, const char *v, void *base)
{
	const char *n = k->name;
	int line = p->line;
	if (!*v) {
		problem(p, line, "%s: no value given", n);
		return false;
	}
	if (k->max_len && strlen(v) > k->max_len) {
		if (strcmp(n, "run_dir") == 0)
			problem(p, line, "run_dir: '%s' is longer than %d characters; VM socket paths below it "
				"would not fit a unix socket address", v, VMF_RUN_DIR_MAX);
		else
			problem(p, line, "%s: the value is longer than %zu characters", n, k->max_len);
		return false;
	}
	unsigned long long u;
	switch (k->kind) {
	case K_ABSPATH:
	case K_PROGRAM:
		if (v[0] != '/' && (k->kind == K_ABSPATH || strchr(v, '/'))) {
			problem(p, line, "%s: '%s' is not an absolute path%s", n, v,
				k->kind == K_PROGRAM ? " (give an absolute path or a program name found in PATH)" : "");
			return false;
		}
		break;
	case K_UINT:
	case K_SECONDS:
		if (!(k->kind == K_UINT ? parse_uint(v, &u) : parse_seconds(v, &u))) {
			problem(p, line, "%s: '%s' is not %s", n, v,
				k->kind == K_UINT ? "a whole number" : "a duration (seconds, or a number with s, m, h or d)");
			return false;
		}
		if (u < k->min) {
			problem(p, line, "%s: %llu is too small (at least %u)", n, u, k->min);
			return false;
		}
		if (u > k->max) {
			problem(p, line, "%s: %llu is too large (at most %u)", n, u, k->max);
			return false;
		}
		*(unsigned *)((char *)base + k->off) = (unsigned)u;
		return true;
	case K_BOOL: {
		int b = parse_bool(v);
		if (b < 0) {
			problem(p, line, "%s: '%s' is not yes or no", n, v);
			return false;
		}
		*(bool *)((char *)base + k->off) = b;
		return true;
	}
	case K_SHAPE:
		if (strcmp(v, "auto") != 0 && strcmp(v, "off") != 0) {
			problem(p, line, "%s: '%s' is not auto or off", n, v);
			return false;
		}
		*(bool *)((char *)base + k->off) = strcmp(v, "auto") == 0;
		return true;
	case K_NETMODE:
		if (strcmp(v, "none") != 0 && strcmp(v, "user") != 0) {
			problem(p, line, "%s: '%s' is not none or user (a namespace is named per request: "
				"get --netns)", n, v);
			return false;
		}
		*(bool *)((char *)base + k->off) = strcmp(v, "user") == 0;
		return true;
	case K_STOPMODE:
		if (strcmp(v, "kill") != 0 && strcmp(v, "flush") != 0 && strcmp(v, "poweroff") != 0) {
			problem(p, line, "%s: '%s' is not kill, flush or poweroff", n, v);
			return false;
		}
		break;
	case K_RESET:
		if (strcmp(v, "stop") != 0 && strcmp(v, "keep") != 0) {
			problem(p, line, "%s: '%s' is not stop or keep", n, v);
			return false;
		}
		break;
	case K_CGROUPS: {
		unsigned count = 0;
		for (const char *c = v; *c;) {
			size_t l = strcspn(c, ":");
			char one[VMF_CGROUP_PATH_MAX + 1];
			struct vmf_error cerr;
			snprintf(one, sizeof(one), "%.*s", (int)(l < sizeof(one) - 1 ? l : sizeof(one) - 1), c);
			if (l && (l >= VMF_CGROUP_PATH_MAX || vmf_cgroup_check_path(one, &cerr) < 0)) {
				problem(p, line, "%s: %s", n, l >= VMF_CGROUP_PATH_MAX ? "a path is too long" : cerr.msg);
				return false;
			}
			if (l && ++count > VMF_CGROUPS_MAX) {
				problem(p, line, "%s: more than %d cgroups", n, VMF_CGROUPS_MAX);
				return false;
			}
			c += l + (c[l] == ':');
		}
		break;
	}
	case K_LOGLEVEL: {
		int l = vmf_log_parse_level(v);
		if (l < 0) {
			problem(p, line, "log_level: '%s' is not a log level (debug, info, warn, error, off)", v);
			return false;
		}
		p->c->log_level = l;
		return true;
	}
	case K_ACCEL:
		if (strcmp(v, "kvm") != 0 && strcmp(v, "tcg") != 0) {
			problem(p, line, "accelerator: '%s' is not kvm or tcg", v);
			return false;
		}
		break;
	case K_DRIVER:
		if (!vmf_hv_by_name(v)) {
			problem(p, line, "type: '%s' is not a hypervisor of this build (qemu, firecracker, "
				"cloud-hypervisor)", v);
			return false;
		}
		break;
	case K_MACHINE:
		/* It goes into QEMU's -machine argument: a comma would add options. */
		if (!all_chars(v, ".-_")) {
			problem(p, line, "machine: '%s' may hold only letters, digits, '.', '-' and '_'", v);
			return false;
		}
		break;
	case K_NAME:
		if (!all_chars(v, ".-_") || v[0] == '-') {
			problem(p, line, "%s: '%s' is not a valid name", n, v);
			return false;
		}
		break;
	case K_ROOTS:
		/* Checked against the state and run dirs once all is read. */
		break;
	case K_ADDRS:
		if (!vmf_net_valid_addrs(v)) {
			problem(p, line, "%s: '%s' is not a list of IPv4 addresses separated by commas (e.g. "
				"127.0.0.1,10.0.0.5; 0.0.0.0 for any)", n, v);
			return false;
		}
		break;
	case K_LISTEN: {
		const char *colon = strrchr(v, ':');
		if (!colon || colon == v || !parse_uint(colon + 1, &u) || u == 0 || u > 65535) {
			problem(p, line, "%s: '%s' is not ADDRESS:PORT (e.g. 127.0.0.1:9464)", n, v);
			return false;
		}
		break;
	}
	}
	/* A refused pool's values are checked, never used: nothing to keep
	 * (and no bound on how many such pools a file has). */
	if (base == &p->scratch)
		return true;
	char *s = keep(p, v);
	if (s)
		*(const char **)((char *)base + k->off) = s;
	return s != NULL;
}

/* ---- inih's handler: KEY = VALUE in the section the reader saw ---- */

static int
handler(void *user, const char *section, const char *name, const char *value)
{
	(void)section;   /* the reader tracks sections, with their lines */
	struct parser *p = user;
	char label[320];
	if (p->sec == SEC_BAD)
		return 1;    /* its header was reported */
	if (p->sec == SEC_NONE) {
		problem(p, p->line, "'%s' is outside any section: put it under [daemon], [hypervisor], [guest], "
			"[gateway] or [pool NAME]", name);
		return 1;
	}
	unsigned i;
	for (i = 0; i < NKEYS; i++)
		if (keys[i].sec == p->sec && strcmp(keys[i].name, name) == 0)
			break;
	if (i == NKEYS) {
		const char *hint = "";
		for (unsigned j = 0; j < NKEYS; j++)
			if (strcmp(keys[j].name, name) == 0) {
				hint = keys[j].sec == SEC_POOL ? " (it belongs in a [pool NAME] section)"
					: keys[j].sec == SEC_DAEMON ? " (it belongs in [daemon])"
					: keys[j].sec == SEC_HV ? " (it belongs in [hypervisor])"
					: keys[j].sec == SEC_GATEWAY ? " (it belongs in [gateway])" : " (it belongs in [guest])";
				break;
			}
		problem(p, p->line, "unknown key '%s' in %s%s", name, section_label(p, label, sizeof(label)), hint);
		return 1;
	}
	int sec_id = p->sec != SEC_POOL ? (int)p->sec
		: p->pool >= 0 ? SEC_POOL + p->pool : SEC_POOL + VMF_MAX_POOLS + p->scratch_line;
	for (size_t j = 0; j < p->nseen; j++)
		if (p->seen[j].sec == sec_id && p->seen[j].key == i) {
			problem(p, p->line, "%s is given twice in %s (first on line %d)", name,
				section_label(p, label, sizeof(label)), p->seen[j].line);
			return 1;
		}
	if (p->nseen == p->capseen) {
		size_t n = p->capseen ? p->capseen * 2 : 32;
		struct seen_key *ns = realloc(p->seen, n * sizeof(*ns));
		if (!ns) {
			p->oom = true;
			return 1;
		}
		p->seen = ns;
		p->capseen = n;
	}
	p->seen[p->nseen++] = (struct seen_key){ sec_id, i, p->line };
	if (p->sec == SEC_POOL && p->pool < 0) {
		set_value(p, &keys[i], value, &p->scratch);
	} else if (p->sec == SEC_POOL) {
		if (set_value(p, &keys[i], value, &p->c->pools[p->pool]))
			p->key_line[p->pool][i] = p->line;
		else
			p->pool_bad[p->pool] = true;
	} else if (p->sec == SEC_GATEWAY) {
		set_value(p, &keys[i], value, &p->c->gateway);
	} else if (!set_value(p, &keys[i], value, &p->c->opts) && p->sec == SEC_GUEST) {
		p->guest_bad = true;
	}
	return 1;
}

/* ---- the line reader in front of inih ---- */

/* A refused pool header (already reported): its keys go to the scratch spec. */
static void
scratch_pool(struct parser *p, const char *label)
{
	memset(&p->scratch, 0, sizeof(p->scratch));
	snprintf(p->scratch_label, sizeof(p->scratch_label), "%s", label);
	p->scratch_line = p->line;
	p->pool = -1;
	p->sec = SEC_POOL;
}

static void
section_header(struct parser *p, const char *s, size_t n)
{
	while (n && isspace((unsigned char)*s))
		s++, n--;
	while (n && isspace((unsigned char)s[n - 1]))
		n--;
	char name[256];
	snprintf(name, sizeof(name), "%.*s", (int)n, s);
	p->sec = SEC_BAD;
	p->pool = -1;
	for (int i = SEC_DAEMON; i < SEC_POOL; i++)
		if (strcmp(name, section_names[i]) == 0) {
			p->sec = (enum section)i;
			return;
		}
	if (strcmp(name, "pool") == 0) {
		problem(p, p->line, "[pool] needs a name, as in [pool small]");
		scratch_pool(p, "[pool]");
		return;
	}
	if (strncmp(name, "pool", 4) != 0 || !isspace((unsigned char)name[4])) {
		problem(p, p->line, "unknown section [%s]; the sections are [daemon], [hypervisor], [guest], "
			"[gateway] and [pool NAME]", name);
		return;
	}
	const char *pn = name + 5;
	while (isspace((unsigned char)*pn))
		pn++;
	char label[300];
	snprintf(label, sizeof(label), "[pool %s]", pn);
	if (!vmf_valid_pool_name(pn)) {
		problem(p, p->line, "pool name '%s' is invalid: use 1 to 32 letters, digits, '-' or '_'", pn);
		scratch_pool(p, label);
		return;
	}
	struct vmf_config *c = p->c;
	for (unsigned i = 0; i < c->n_pools; i++)
		if (strcmp(c->pools[i].name, pn) == 0) {
			problem(p, p->line, "duplicate pool name '%s' (first defined on line %d)", pn, p->pool_line[i]);
			scratch_pool(p, label);
			return;
		}
	if (c->n_pools == VMF_MAX_POOLS) {
		problem(p, p->line, "too many pools: at most %d", VMF_MAX_POOLS);
		scratch_pool(p, label);
		return;
	}
	struct vmf_pool_spec *ps = &c->pools[c->n_pools];
	memset(ps, 0, sizeof(*ps));
	snprintf(ps->name, sizeof(ps->name), "%s", pn);
	ps->size = 8;
	ps->share_memory = true;
	ps->nic = true;
	p->pool_line[c->n_pools] = p->line;
	p->pool = (int)c->n_pools++;
	p->sec = SEC_POOL;
}

/* inih's comment rule: ';' starts an inline comment after whitespace. */
static const char *
find_delim(const char *s)
{
	for (const char *q = s; *q; q++) {
		if (*q == '=' || *q == ':')
			return q;
		if (*q == ';' && q > s && isspace((unsigned char)q[-1]))
			return NULL;
	}
	return NULL;
}

static char *
reader(char *buf, int num, void *stream)
{
	struct parser *p = stream;
	if (p->pos >= p->len || num < 4)
		return NULL;
	const char *start = p->text + p->pos;
	const char *nl = memchr(start, '\n', p->len - p->pos);
	size_t n = nl ? (size_t)(nl - start) : p->len - p->pos;
	p->pos += n + (nl != NULL);
	p->line++;
	if (n && start[n - 1] == '\r')
		n--;
	strcpy(buf, "\n");   /* what inih gets for a line handled (or rejected) here */
	size_t limit = (size_t)num - 2;
	if (n > limit) {
		problem(p, p->line, "the line is longer than %zu characters", limit);
		return buf;
	}
	if (memchr(start, '\0', n)) {
		problem(p, p->line, "the line holds a NUL byte");
		return buf;
	}
	/* Leading blanks are dropped: an indented line after a key would
	 * otherwise become a continuation of that key's value. */
	size_t skip = 0;
	while (skip < n && isspace((unsigned char)start[skip]))
		skip++;
	if (p->line == 1 && n - skip >= 3 && memcmp(start + skip, "\xEF\xBB\xBF", 3) == 0)
		skip += 3;
	const char *s = start + skip;
	size_t m = n - skip;
	if (m == 0 || *s == ';' || *s == '#')
		return buf;
	if (*s == '[') {
		const char *close = memchr(s, ']', m);
		if (!close) {
			problem(p, p->line, "the section header has no closing ']'");
			p->sec = SEC_BAD;
			return buf;
		}
		const char *rest = close + 1;
		while (rest < s + m && isspace((unsigned char)*rest))
			rest++;
		bool trailing = rest < s + m && *rest != ';' && *rest != '#';
		if (trailing)
			problem(p, p->line, "text after the section header");
		/* The name is clear either way: the keys below are checked too. */
		section_header(p, s + 1, (size_t)(close - s - 1));
		return buf;
	}
	memcpy(buf, s, m);
	buf[m] = '\0';
	const char *d = find_delim(buf);
	if (!d) {
		problem(p, p->line, "expected KEY = VALUE, a [section] header or a comment");
		strcpy(buf, "\n");
		return buf;
	}
	if (d == buf) {
		problem(p, p->line, "no key before '%c'", *d);
		strcpy(buf, "\n");
		return buf;
	}
	buf[m] = '\n';
	buf[m + 1] = '\0';
	return buf;
}

/* ---- whole-file checks, once every value is known ---- */

static int
key_index(enum section sec, const char *name)
{
	for (unsigned i = 0; i < NKEYS; i++)
		if (keys[i].sec == sec && strcmp(keys[i].name, name) == 0)
			return (int)i;
	return -1;
}

void
vmf_config_pool_range(const char *key, unsigned *min, unsigned *max)
{
	int i = key_index(SEC_POOL, key);
	*min = i < 0 ? 0 : keys[i].min;
	*max = i < 0 ? UINT_MAX : keys[i].max;
}

void
vmf_config_gateway_range(const char *key, unsigned *min, unsigned *max)
{
	int i = key_index(SEC_GATEWAY, key);
	*min = i < 0 ? 0 : keys[i].min;
	*max = i < 0 ? UINT_MAX : keys[i].max;
}

size_t
vmf_config_daemon_max_len(const char *key)
{
	int i = key_index(SEC_DAEMON, key);
	return i < 0 ? 0 : keys[i].max_len;
}

static void
finish_pools(struct parser *p)
{
	struct vmf_config *c = p->c;
	const struct vmf_daemon_opts *o = &c->opts;
	int iv = key_index(SEC_POOL, "vcpus"), im = key_index(SEC_POOL, "memory_mib");
	int ixv = key_index(SEC_POOL, "max_vcpus"), ixm = key_index(SEC_POOL, "max_memory_mib");
	int ish = key_index(SEC_POOL, "shape"), ishx = key_index(SEC_POOL, "shape_max");
	int ishm = key_index(SEC_POOL, "shape_memory_mib");
	int ist = key_index(SEC_POOL, "stop"), istt = key_index(SEC_POOL, "stop_timeout");
	int ire = key_index(SEC_POOL, "on_guest_reset"), icg = key_index(SEC_POOL, "cgroup");
	int ihp = key_index(SEC_POOL, "hotplug_ports");
	for (unsigned i = 0; i < c->n_pools; i++) {
		struct vmf_pool_spec *ps = &c->pools[i];
		int *kl = p->key_line[i];
		/* Sizes not given in the pool come from [guest]. */
		if (!kl[iv])
			ps->vcpus = o->vcpus;
		if (!kl[im])
			ps->memory_mib = o->memory_mib;
		if (!kl[ixv])
			ps->max_vcpus = o->max_vcpus > ps->vcpus ? o->max_vcpus : ps->vcpus;
		if (!kl[ixm])
			ps->max_memory_mib = o->max_memory_mib > ps->memory_mib ? o->max_memory_mib : ps->memory_mib;
		if (!kl[ihp])
			ps->hotplug_ports = o->hotplug_ports;
		/* Shaping not set in the pool comes from [daemon]. */
		if (!kl[ish])
			ps->shape = o->shape;
		if (!kl[ishx])
			ps->shape_max = o->shape_max;
		if (!kl[ishm])
			ps->shape_memory_mib = o->shape_memory_mib;
		/* So do the stop policy and the cgroups. */
		if (!kl[ist])
			ps->stop = o->stop;
		if (!kl[istt])
			ps->stop_timeout_s = o->stop_timeout_s;
		if (!kl[ire])
			ps->on_guest_reset = o->on_guest_reset;
		if (!kl[icg])
			ps->cgroup = o->cgroup;
		if (p->pool_bad[i] || p->guest_bad)
			continue;
		if (ps->max_vcpus < ps->vcpus)
			problem(p, kl[ixv] ? kl[ixv] : kl[iv], "pool '%s': max_vcpus %u is below vcpus %u", ps->name,
				ps->max_vcpus, ps->vcpus);
		if (ps->max_memory_mib < ps->memory_mib)
			problem(p, kl[ixm] ? kl[ixm] : kl[im], "pool '%s': max_memory_mib %u is below memory_mib %u",
				ps->name, ps->max_memory_mib, ps->memory_mib);
		for (unsigned j = 0; j < i; j++) {
			const struct vmf_pool_spec *q = &c->pools[j];
			/* Same sizes with and without shared memory, or of two
			 * images, is the point of naming pools; twice the same
			 * pool is a slip. */
			const char *qi = q->image_dir ? q->image_dir : o->image_dir;
			const char *pi = ps->image_dir ? ps->image_dir : o->image_dir;
			/* A template pool is reached by name only. */
			if (!p->pool_bad[j] && !q->template_name && !ps->template_name && q->vcpus == ps->vcpus && q->memory_mib == ps->memory_mib && q->max_vcpus == ps->max_vcpus &&
			    q->max_memory_mib == ps->max_memory_mib && q->share_memory == ps->share_memory &&
			    strcmp(qi, pi) == 0) {
				problem(p, p->pool_line[i], "pool '%s' serves the same sizes as pool '%s' (line %d), with the "
					"same memory sharing and image: a GetVM that names no pool would never use '%s'",
					ps->name, q->name, p->pool_line[j], ps->name);
				break;
			}
		}
	}
}

static void
finish_guest(struct parser *p)
{
	const struct vmf_daemon_opts *o = &p->c->opts;
	int line_xv = 0, line_xm = 0;
	for (size_t j = 0; j < p->nseen; j++) {
		if (p->seen[j].sec != SEC_GUEST)
			continue;
		if (strcmp(keys[p->seen[j].key].name, "max_vcpus") == 0)
			line_xv = p->seen[j].line;
		if (strcmp(keys[p->seen[j].key].name, "max_memory_mib") == 0)
			line_xm = p->seen[j].line;
	}
	if (p->guest_bad)
		return;
	if (line_xv && o->max_vcpus < o->vcpus)
		problem(p, line_xv, "[guest]: max_vcpus %u is below vcpus %u", o->max_vcpus, o->vcpus);
	if (line_xm && o->max_memory_mib < o->memory_mib)
		problem(p, line_xm, "[guest]: max_memory_mib %u is below memory_mib %u", o->max_memory_mib,
			o->memory_mib);
}

/* Sandbox roots against the state and run dirs, which may come later in
 * [daemon] than the roots. */
static void
finish_daemon(struct parser *p)
{
	const struct vmf_daemon_opts *o = &p->c->opts;
	int line = 0;
	for (size_t j = 0; j < p->nseen; j++)
		if (p->seen[j].sec == SEC_DAEMON && strcmp(keys[p->seen[j].key].name, "sandbox_roots") == 0)
			line = p->seen[j].line;
	if (!line || !o->sandbox_roots)
		return;
	struct vmf_sandbox_policy *sp = malloc(sizeof(*sp));
	struct vmf_error err;
	if (!sp) {
		p->oom = true;
		return;
	}
	if (vmf_sandbox_policy_init(sp, o->sandbox_roots, o->state_dir, o->run_dir, &err) < 0)
		problem(p, line, "sandbox_roots: %s", err.msg);
	free(sp);
}

struct order {
	int line;
	size_t idx;
};

int
vmf_config_parse(struct vmf_config *c, const char *path, const char *text, size_t len, struct vmf_error *err)
{
	memset(c, 0, sizeof(*c));
	vmf_daemon_opts_defaults(&c->opts);
	c->log_level = -1;
	struct parser *p = calloc(1, sizeof(*p));
	if (!p)
		return vmf_err(err, ENOMEM, "out of memory");
	p->c = c;
	p->path = path;
	p->text = text;
	p->len = len;
	p->pool = -1;
	p->ini_rc = ini_parse_stream(reader, p, handler, p);
	/* The reader hands inih only lines it accepts; this is a safety net. */
	if (p->ini_rc > 0)
		problem(p, p->ini_rc, "syntax error");
	finish_guest(p);
	finish_pools(p);
	finish_daemon(p);
	c->opts.pools = c->pools;
	c->opts.n_pools = c->n_pools;

	int r = 0;
	if (p->oom) {
		r = vmf_err(err, ENOMEM, "out of memory reading %s", path);
	} else if (p->nprobs) {
		/* In line order; problems of one line in the order found. */
		struct order *ord = calloc(p->nprobs, sizeof(*ord));
		size_t total = 0;
		for (size_t i = 0; i < p->nprobs; i++)
			total += strlen(path) + strlen(p->probs[i].msg) + 16;
		c->errors = malloc(total + 1);
		if (!ord || !c->errors) {
			free(ord);
			r = vmf_err(err, ENOMEM, "out of memory");
		} else {
			for (size_t i = 0; i < p->nprobs; i++)
				ord[i].line = p->probs[i].line, ord[i].idx = i;
			/* insertion sort: stable, and files are small */
			for (size_t i = 1; i < p->nprobs; i++)
				for (size_t j = i; j > 0 && ord[j - 1].line > ord[j].line; j--) {
					struct order t = ord[j];
					ord[j] = ord[j - 1];
					ord[j - 1] = t;
				}
			size_t off = 0;
			for (size_t i = 0; i < p->nprobs; i++)
				off += (size_t)sprintf(c->errors + off, "%s:%d: %s\n", path, ord[i].line,
						       p->probs[ord[i].idx].msg);
			free(ord);
			c->n_errors = (unsigned)p->nprobs;
			r = vmf_err(err, EINVAL, "%s: %u error%s", path, c->n_errors, c->n_errors == 1 ? "" : "s");
		}
	}
	for (size_t i = 0; i < p->nprobs; i++)
		free(p->probs[i].msg);
	free(p->probs);
	free(p->seen);
	free(p);
	return r;
}

int
vmf_config_load(struct vmf_config *c, const char *path, struct vmf_error *err)
{
	memset(c, 0, sizeof(*c));
	vmf_daemon_opts_defaults(&c->opts);
	c->log_level = -1;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot open config file %s", path);
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return vmf_err_sys(err, e, "cannot read config file %s", path);
	}
	if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode)) {   /* /dev/null: an empty config */
		close(fd);
		return vmf_err(err, EINVAL, "config file %s is not a regular file", path);
	}
	if (st.st_size > VMF_CONFIG_MAX_SIZE) {
		close(fd);
		return vmf_err(err, EFBIG, "config file %s is larger than %d bytes", path, VMF_CONFIG_MAX_SIZE);
	}
	char *buf;
	size_t got;
	int r = vmf_read_fd(fd, path, &buf, &got, (size_t)VMF_CONFIG_MAX_SIZE + 1, err);
	close(fd);
	if (r < 0)
		return vmf_error_prefix(err, "config file");
	r = vmf_config_parse(c, path, buf, got, err);
	free(buf);
	return r;
}

void
vmf_config_free(struct vmf_config *c)
{
	for (unsigned i = 0; i < c->n_strings; i++)
		free(c->strings[i]);
	c->n_strings = 0;
	free(c->errors);
	c->errors = NULL;
}

/* The daemon's defaults, before the file and the flags: the values
 * vmfactory.conf(5) documents for keys left out. */
void
vmf_daemon_opts_defaults(struct vmf_daemon_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->socket_path = VMF_DEFAULT_SOCKET;
	o->state_dir = VMF_DEFAULT_STATE_DIR;
	o->run_dir = VMF_DEFAULT_RUN_DIR;
	o->image_dir = VMF_DEFAULT_IMAGE_DIR;
	o->pool_size = 8;
	o->vcpus = VMF_DEFAULT_VCPUS;
	o->memory_mib = VMF_DEFAULT_MEMORY_MIB;
	o->max_vcpus = VMF_DEFAULT_MAX_VCPUS;
	o->max_memory_mib = VMF_DEFAULT_MAX_MEMORY_MIB;
	o->share_memory = true;
	o->nic = true;
	o->hotplug_ports = VMF_DEFAULT_HOTPLUG_PORTS;
	o->max_miss_clones = VMF_DEFAULT_MAX_MISS_CLONES;
	o->max_queue = VMF_DEFAULT_MAX_QUEUE;
	o->tenant_max_queued = VMF_DEFAULT_TENANT_MAX_QUEUED;
	o->get_timeout_s = VMF_DEFAULT_GET_TIMEOUT_S;
	/* On: it only acts once requests above a pool's base come, and then
	 * within shape_max and shape_memory_mib, off the hand-out path. */
	o->shape = true;
	o->shape_max = VMF_SHAPE_AUTO;
	o->shape_memory_mib = VMF_SHAPE_AUTO;
	o->stop = "flush";
	o->stop_timeout_s = VMF_DEFAULT_STOP_TIMEOUT_S;
	o->on_guest_reset = "stop";
	o->ready_fd = -1;
	o->idle_timeout_s = VMF_DEFAULT_IDLE_TIMEOUT_S;
	o->frame_timeout_s = VMF_DEFAULT_FRAME_TIMEOUT_S;
	o->serial_log_kib = VMF_DEFAULT_SERIAL_LOG_KIB;
	o->scratch_max_mib = VMF_DEFAULT_SCRATCH_MAX_MIB;
	o->scratch_max_volumes = VMF_DEFAULT_SCRATCH_MAX_VOLUMES;
	o->tenant_max_vms = VMF_DEFAULT_TENANT_MAX_VMS;
	o->tenant_max_suspended = VMF_DEFAULT_TENANT_MAX_SUSPENDED;
	o->tenant_max_suspended_mib = VMF_DEFAULT_TENANT_MAX_SUSPENDED_MIB;
	o->tenant_max_snapshots = VMF_DEFAULT_TENANT_MAX_SNAPSHOTS;
	o->tenant_max_snapshot_mib = VMF_DEFAULT_TENANT_MAX_SNAPSHOT_MIB;
	o->share_max_mib = VMF_DEFAULT_SHARE_MAX_MIB;
	o->hostfwd_addresses = VMF_DEFAULT_HOSTFWD_ADDRESSES;
	o->max_hostfwd = VMF_DEFAULT_MAX_HOSTFWD;
}
