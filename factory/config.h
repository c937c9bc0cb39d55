/* The config file (/etc/vmfactory/vmfactory.conf, INI, read with libinih):
 * daemon options and pools, their defaults and what the daemon takes
 * (struct vmf_daemon_opts, struct vmf_pool_spec).  Every problem in a file is collected, each as
 * "PATH:LINE: message", so that `vmfactory check-config` can list them all;
 * command-line flags are applied over the result by the CLI.
 * vmfactory.conf(5) documents the keys. */
#ifndef VMF_CONFIG_H
#define VMF_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "gateway_opts.h"

#define VMF_DEFAULT_SOCKET "/run/vmfactory/vmfactory.sock"
#define VMF_DEFAULT_STATE_DIR "/var/lib/vmfactory"
#define VMF_DEFAULT_RUN_DIR "/run/vmfactory"
#define VMF_DEFAULT_IMAGE_DIR "/var/cache/vmfactory/image"
#define VMF_DEFAULT_VCPUS 1
#define VMF_DEFAULT_MEMORY_MIB 256
#define VMF_DEFAULT_MAX_VCPUS 4
#define VMF_DEFAULT_MAX_MEMORY_MIB 2048
#define VMF_DEFAULT_IDLE_TIMEOUT_S 60
#define VMF_DEFAULT_FRAME_TIMEOUT_S 10
/* A VM's share, in RAM when the run dir is /run: bounded by default. */
#define VMF_DEFAULT_SHARE_MAX_MIB 256
/* A tenant's forwards listen on loopback only unless the config says. */
#define VMF_DEFAULT_HOSTFWD_ADDRESSES "127.0.0.1"
#define VMF_DEFAULT_MAX_HOSTFWD 8
#define VMF_DEFAULT_CMDLINE "console=ttyS0 panic=-1 quiet"
#define VMF_DEFAULT_STOP_TIMEOUT_S 10
/* GetVM misses cloning at once; beyond it a miss fails with EAGAIN. */
#define VMF_DEFAULT_MAX_MISS_CLONES 2
#define VMF_DEFAULT_MAX_QUEUE 256
#define VMF_DEFAULT_TENANT_MAX_QUEUED 32
#define VMF_DEFAULT_GET_TIMEOUT_S 60
/* shape_max / shape_memory_mib not configured: half the pool's size, and
 * half its base memory (size × memory_mib / 2). */
#define VMF_SHAPE_AUTO UINT_MAX
/* Free PCIe root ports a template reserves for the runtime unless told. */
#define VMF_DEFAULT_HOTPLUG_PORTS 2
/* What one VM, and one tenant, may take of the host (vmfactory.conf(5),
 * docs/security.md "Limits").  The run dir is a tmpfs (RAM) in production:
 * a VM's serial log and scratch volumes live there. */
#define VMF_DEFAULT_SERIAL_LOG_KIB 1024
#define VMF_DEFAULT_SCRATCH_MAX_MIB 4096
#define VMF_DEFAULT_SCRATCH_MAX_VOLUMES 4
#define VMF_DEFAULT_TENANT_MAX_VMS 16
#define VMF_DEFAULT_TENANT_MAX_SUSPENDED 8
#define VMF_DEFAULT_TENANT_MAX_SUSPENDED_MIB 16384
#define VMF_DEFAULT_TENANT_MAX_SNAPSHOTS 8
#define VMF_DEFAULT_TENANT_MAX_SNAPSHOT_MIB 16384

/* One pool: how many paused VMs of which size to keep ready. */
struct vmf_pool_spec {
	char name[33];               /* [pool NAME] in the config file; "default" from flags */
	unsigned size;               /* VMs kept ready */
	unsigned vcpus, memory_mib, max_vcpus, max_memory_mib;
	unsigned max_idle_s;         /* replace pooled VMs older than this, 0 = never */
	bool share_memory;           /* false: full-form template, no pages shared with clones */
	/* Network: nic: the template carries a NIC (default yes);
	 * net_user: a GetVM that asks for no network gets user-mode (net = user). */
	bool nic, net_user;
	unsigned hotplug_ports;      /* free PCIe root ports its template reserves for the runtime */
	/* Demand shaping (vmfactory.conf(5)): shape = auto; at most shape_max
	 * clones shaped at once, holding at most shape_memory_mib MiB above
	 * the base in total (VMF_SHAPE_AUTO: the defaults). */
	bool shape;
	unsigned shape_max, shape_memory_mib;
	/* Its own guest image ([pool NAME] image_dir); NULL = the daemon's
	 * (image_dir, with the kernel and initrd overrides). */
	const char *image_dir;
	/* [pool NAME] template: a snapshot's name (vmfactory snapshot); the
	 * pool clones it, its sizes and image are the template's. */
	const char *template_name;
	/* Stopping its VMs and their guest resets (vmfactory.conf(5)): stop
	 * "kill", "flush" or "poweroff"; the guest's part bounded by
	 * stop_timeout_s; on_guest_reset "stop" or "keep"; cgroup: the
	 * cgroups (':'-separated) its VMs' VMMs join at a hand-out that names
	 * none (NULL: none). */
	const char *stop;
	unsigned stop_timeout_s;
	const char *on_guest_reset;
	const char *cgroup;
};

#define VMF_MAX_POOLS 16

struct vmf_daemon_opts {
	const char *socket_path;
	const char *state_dir;
	const char *run_dir;
	const char *image_dir;       /* vmlinuz, initrd.img, manifest */
	const char *kernel;          /* overrides image_dir/vmlinuz */
	const char *initrd;          /* overrides image_dir/initrd.img */
	const char *qemu_binary;     /* NULL = qemu-system-x86_64 */
	const char *accel;           /* NULL = kvm when usable, else tcg */
	const char *machine;         /* NULL = q35 */
	const char *hypervisor;      /* NULL = "qemu" */
	const char *group;           /* extra group allowed on the socket */
	/* Where GetVM may create sandbox links: absolute dirs separated by ':';
	 * NULL = <run_dir>/sandboxes and Kata's (factory/sandbox.h). */
	const char *sandbox_roots;
	const char *runas;           /* QEMU -runas user */
	const char *metrics_listen;  /* ADDR:PORT, NULL = off */
	unsigned pool_size;
	unsigned vcpus, memory_mib, max_vcpus, max_memory_mib;
	bool share_memory;           /* false = --no-share (full-form templates) */
	bool nic, net_user;          /* the pools' defaults for nic and net */
	unsigned hotplug_ports;      /* the pools' default ([guest] hotplug_ports) */
	unsigned fill_parallelism;   /* concurrent clones while filling, 0 = auto */
	unsigned max_miss_clones;    /* concurrent clones for GetVM misses; 0 = no misses */
	/* A GetVM with no ready VM and no room for a miss waits in its pool's
	 * queue (cache/queue.c): at most max_queue per pool (0: none wait),
	 * tenant_max_queued of one tenant; get_timeout_s when the request
	 * names no timeout.  Pools clone up to clone_parallelism at once as
	 * their queue deepens (0: from the host's cores and memory). */
	unsigned max_queue, tenant_max_queued, get_timeout_s, clone_parallelism;
	unsigned max_idle_s;         /* replace pooled VMs older than this, 0 = never */
	bool shape;                  /* [daemon] shape, shape_max, shape_memory_mib: */
	unsigned shape_max, shape_memory_mib;   /* every pool's defaults */
	/* [daemon] stop, stop_timeout, on_guest_reset, cgroup: every pool's
	 * defaults, and what a VM of no pool gets. */
	const char *stop;
	unsigned stop_timeout_s;
	const char *on_guest_reset;
	const char *cgroup;
	int ready_fd;                /* written "ready\n"/"full\n" then closed, -1 = none */
	bool notify_full;            /* report on ready_fd only once the pool is full */
	/* Control socket limits (vmfactory.conf(5)): connections at once, 0 =
	 * from the open file limit; seconds a connection may sit idle, and a
	 * request may take to arrive once its first byte has. */
	unsigned max_connections;
	unsigned idle_timeout_s, frame_timeout_s;
	/* Bounds (vmfactory.conf(5)).  Per VM, whoever asked: its serial log
	 * keeps its newest serial_log_kib; at most scratch_max_volumes scratch
	 * volumes of at most scratch_max_mib each.  Per tenant (a uid other
	 * than root and the daemon's user): VMs held (suspended ones
	 * included), suspended VMs and their saved state, snapshot templates
	 * and their files. */
	unsigned serial_log_kib, scratch_max_mib, scratch_max_volumes;
	unsigned tenant_max_vms, tenant_max_suspended, tenant_max_suspended_mib;
	unsigned tenant_max_snapshots, tenant_max_snapshot_mib;
	/* The longest lease a GetVM, Resume or Lease may ask for (0: any). */
	unsigned max_ttl_s;
	/* The tenant boundary (docs/security.md): each clone's share is a
	 * tmpfs of share_max_mib (0: a plain directory, and no share for a
	 * tenant).  User-mode network: whether a tenant may ask for outbound
	 * connections; the host addresses a tenant's forwards may listen on
	 * (IPv4, comma-separated); the forwards a tenant may hold in all. */
	unsigned share_max_mib;
	bool user_net_outbound;
	const char *hostfwd_addresses;
	unsigned max_hostfwd;
	/* The pools, from the config file.  n_pools == 0: one pool "default"
	 * from pool_size, vcpus, memory_mib, max_*, share_memory, max_idle_s. */
	const struct vmf_pool_spec *pools;
	unsigned n_pools;
};

/* The built-in defaults (config.c), before a file or flags apply. */
void vmf_daemon_opts_defaults(struct vmf_daemon_opts *o);

#define VMF_DEFAULT_CONFIG "/etc/vmfactory/vmfactory.conf"
#define VMF_CONFIG_MAX_SIZE (1024 * 1024)

struct vmf_config {
	/* Defaults overlaid with the file's [daemon], [hypervisor] and [guest];
	 * opts.pools points at pools[] below. */
	struct vmf_daemon_opts opts;
	struct vmf_pool_spec pools[VMF_MAX_POOLS];
	unsigned n_pools;
	int log_level;               /* [daemon] log_level; -1 when not given */
	/* [gateway]: what the file gives (vmfactory gateway reads it; the
	 * daemon only has it checked). */
	struct vmf_gateway_opts gateway;
	/* Every problem found, "PATH:LINE: message\n" each, in line order;
	 * NULL when there is none. */
	char *errors;
	unsigned n_errors;
	/* internal */
	char *strings[48 + 5 * VMF_MAX_POOLS];   /* values opts, gateway and pools point at: one per string key */
	unsigned n_strings;
};

/* Parses text (len bytes, need not be NUL-terminated) named path in the
 * messages.  Returns 0, or -EINVAL with c->errors listing every problem and
 * err saying how many; c must be freed with vmf_config_free() either way. */
int vmf_config_parse(struct vmf_config *c, const char *path, const char *text, size_t len,
		     struct vmf_error *err);

/* Reads and parses a file.  -ENOENT (and the like) when it cannot be read,
 * with c->errors empty; -EINVAL as vmf_config_parse(). */
int vmf_config_load(struct vmf_config *c, const char *path, struct vmf_error *err);

void vmf_config_free(struct vmf_config *c);

/* The range a [pool] key (vcpus, memory_mib, max_vcpus, size, ...) accepts:
 * one table for the file and for the flags the daemon checks. */
void vmf_config_pool_range(const char *key, unsigned *min, unsigned *max);
/* The range a [gateway] number key accepts (file and flags alike). */
void vmf_config_gateway_range(const char *key, unsigned *min, unsigned *max);
/* The longest value a [daemon] key (socket, run_dir, state_dir, ...) accepts. */
size_t vmf_config_daemon_max_len(const char *key);

#endif
