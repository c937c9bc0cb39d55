/* A QEMU process and its monitor: the VM handle, starting QEMU on
 * listening sockets it inherits, stopping, adopting after a daemon restart,
 * the record a restart reads back, the monitor's commands and events, and
 * the guest agent's ports.  The QMP transport itself is qmp.c; spawning,
 * waiting for and killing the process, vmm_proc.c. */
#include "qemu_vm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "qmp.h"
#include "sockaddr.h"
#include "util.h"

static int
listen_unix(const char *path, struct vmf_error *err)
{
	struct sockaddr_un sa;
	int r = vmf_unix_addr(&sa, NULL, path, err);
	if (r < 0)
		return r;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot create socket %s", path);
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
		int e = errno;
		close(fd);
		return vmf_err_sys(err, e, "cannot listen on %s", path);
	}
	/* Only the daemon's user may talk to QEMU's monitor or the agent. */
	chmod(path, 0600);
	return fd;
}

/* Appends QEMU's stderr and the serial log tails: the usual reason a VM did
 * not come up is in one of them. */
void
qemu_append_logs(struct vmf_vmm *vm, struct vmf_error *err)
{
	char tail[400];
	vmf_file_tail(vm->stderr_log, tail, sizeof(tail));
	if (tail[0])
		vmf_error_append(err, "; QEMU stderr: %s", tail);
	vmf_file_tail(vm->serial_log, tail, sizeof(tail));
	if (tail[0])
		vmf_error_append(err, "; serial log: %s", tail);
}

void
qemu_vm_free(struct vmf_vmm *vm)
{
	if (!vm)
		return;
	if (vm->qmp)
		vmf_qmp_close(vm->qmp);
	vmf_vmm_close(&vm->proc);
	vmf_vm_config_free(vm->cfg);
	for (size_t i = 0; i < vm->n_cpu_devs; i++)
		free(vm->cpu_devs[i]);
	free(vm->cpu_devs);
	free(vm->dimm_mib);
	free(vm);
}

/* Copies what q says was hot-added into the handle. */
int
qemu_take_hotplugged(struct vmf_vmm *vm, const Vmf__Hv__QemuState *q, struct vmf_error *err)
{
	if (q->n_cpu_devices && !(vm->cpu_devs = calloc(q->n_cpu_devices, sizeof(char *))))
		return vmf_err(err, ENOMEM, "out of memory for VM %s's hot-added vCPUs", vm->cfg->id);
	for (size_t i = 0; i < q->n_cpu_devices; i++) {
		if (!(vm->cpu_devs[i] = strdup(q->cpu_devices[i])))
			return vmf_err(err, ENOMEM, "out of memory for VM %s's hot-added vCPUs", vm->cfg->id);
		vm->n_cpu_devs++;
	}
	if (q->n_dimm_mib && !(vm->dimm_mib = calloc(q->n_dimm_mib, sizeof(uint32_t))))
		return vmf_err(err, ENOMEM, "out of memory for VM %s's hot-added DIMMs", vm->cfg->id);
	for (size_t i = 0; i < q->n_dimm_mib; i++)
		vm->dimm_mib[vm->n_dimm_mib++] = q->dimm_mib[i];
	return 0;
}

struct vmf_vmm *
qemu_vm_new(const vmf_vm_config *cfg, struct vmf_error *err)
{
	struct vmf_vmm *vm = calloc(1, sizeof(*vm));
	if (!vm || !(vm->cfg = vmf_vm_config_dup(cfg))) {
		free(vm);
		vmf_err(err, ENOMEM, "out of memory for a VM handle");
		return NULL;
	}
	vm->proc.pidfd = -1;
	snprintf(vm->qmp_path, sizeof(vm->qmp_path), "%s/%s", cfg->run_dir, VMF_QEMU_DAEMON_QMP_SOCK);
	snprintf(vm->mon_path, sizeof(vm->mon_path), "%s/%s", cfg->run_dir, VMF_QEMU_QMP_SOCK);
	snprintf(vm->agent_path, sizeof(vm->agent_path), "%s/%s", cfg->run_dir, VMF_QEMU_AGENT_SOCK);
	snprintf(vm->vmf_agent_path, sizeof(vm->vmf_agent_path), "%s/%s", cfg->run_dir, VMF_QEMU_DAEMON_AGENT_SOCK);
	snprintf(vm->serial_log, sizeof(vm->serial_log), "%s/%s", cfg->run_dir, VMF_QEMU_SERIAL_LOG);
	snprintf(vm->stderr_log, sizeof(vm->stderr_log), "%s/%s", cfg->run_dir, VMF_QEMU_STDERR_LOG);
	vm->vcpus = cfg->vcpus + cfg->hotplugged_vcpus;
	vm->memory_mib = cfg->memory_mib;
	for (size_t i = 0; i < cfg->n_dimms; i++)
		vm->memory_mib += cfg->dimms[i]->size_mib;
	vm->dimms = (unsigned)cfg->n_dimms;
	return vm;
}

int
vmf_qemu_on_qmp(const vmf_vm_config *cfg, struct vmf_qmp *qmp, struct vmf_vmm **out, struct vmf_error *err)
{
	*out = qemu_vm_new(cfg, err);
	if (!*out)
		return -ENOMEM;
	(*out)->qmp = qmp;
	return 0;
}

int
qemu_spawn(struct vmf_vmm *vm, struct vmf_error *err)
{
	const vmf_vm_config *cfg = vm->cfg;
	struct stat st;
	if (stat(cfg->kernel, &st) < 0)
		return vmf_err_sys(err, errno, "kernel %s cannot be used", cfg->kernel);
	if (cfg->initrd && *cfg->initrd && stat(cfg->initrd, &st) < 0)
		return vmf_err_sys(err, errno, "initrd %s cannot be used", cfg->initrd);
	if (vmf_mkdir_p(cfg->run_dir, 0700, err) < 0)
		return -err->code;
	int qmp_l = listen_unix(vm->qmp_path, err);
	if (qmp_l < 0)
		return qmp_l;
	int mon_l = listen_unix(vm->mon_path, err);
	int agent_l = mon_l < 0 ? mon_l : listen_unix(vm->agent_path, err);
	int vmf_l = agent_l < 0 ? agent_l : listen_unix(vm->vmf_agent_path, err);
	char **argv = NULL;
	int qmp_c = -1;
	const struct vmf_qemu_fds fds = { .qmp = qmp_l, .mon = mon_l, .agent = agent_l, .vmf_agent = vmf_l };
	/* A resume: what was hot-added after the VM started (on top of what
	 * its config already carries, a snapshot template's parts) must be on
	 * the command line too, as vmf_qemu_append_hotplugged writes it, with
	 * the ids the hot-adds gave (vcpuN and dimmN count on from the
	 * config's). */
	vmf_vm_config more;
	Vmf__Hv__HotDimm hot[VMF_SNAPSHOT_MAX_DIMMS], *hotp[VMF_SNAPSHOT_MAX_DIMMS];
	int r = vmf_l;
	if (r >= 0 && (vm->n_cpu_devs || vm->n_dimm_mib)) {
		if (cfg->n_dimms + vm->n_dimm_mib > VMF_SNAPSHOT_MAX_DIMMS)
			r = vmf_err(err, E2BIG, "VM %s has more than %d DIMMs", cfg->id, VMF_SNAPSHOT_MAX_DIMMS);
		more = *cfg;
		more.hotplugged_vcpus = cfg->hotplugged_vcpus + (uint32_t)vm->n_cpu_devs;
		size_t n = 0;
		for (size_t i = 0; r >= 0 && i < cfg->n_dimms; i++)
			hotp[n++] = cfg->dimms[i];
		for (size_t i = 0; r >= 0 && i < vm->n_dimm_mib; i++) {
			vmf__hv__hot_dimm__init(&hot[i]);
			hot[i].size_mib = vm->dimm_mib[i];
			hotp[n++] = &hot[i];
		}
		more.dimms = hotp;
		more.n_dimms = n;
		cfg = &more;
	}
	if (r >= 0)
		r = vmf_qemu_build_argv(cfg, &fds, &argv, err);
	cfg = vm->cfg;
	/* The QMP client connects before fork: the connection waits in the
	 * listen backlog until QEMU accepts it. */
	if (r == 0 && (qmp_c = vmf_vmm_connect_unix(vm->qmp_path, err)) < 0)
		r = qmp_c;
	if (r == 0 && vmf_log_get_level() <= VMF_LOG_DEBUG) {
		char line[4096] = "";
		for (char **p = argv; *p; p++) {
			strncat(line, *p, sizeof(line) - strlen(line) - 2);
			strncat(line, " ", sizeof(line) - strlen(line) - 1);
		}
		log_vm(VMF_LOG_DEBUG, cfg->id, "starting %s", line);
	}
	if (r == 0) {
		/* Besides stdio, QEMU inherits only its listening sockets. */
		const int keep[] = { qmp_l, mon_l, agent_l, vmf_l };
		struct vmf_vmm_spawn s = { .argv = argv, .log_dir = cfg->run_dir, .log_name = VMF_QEMU_STDERR_LOG,
					   .log_truncate = true, .keep_fds = keep, .n_keep = 4 };
		if ((r = vmf_vmm_spawn(&s, &vm->proc, err)) < 0)
			vmf_error_prefix(err, "QEMU for VM %s", cfg->id);
	}
	close(qmp_l);
	if (mon_l >= 0)
		close(mon_l);
	if (agent_l >= 0)
		close(agent_l);
	if (vmf_l >= 0)
		close(vmf_l);
	vmf_qemu_free_argv(argv);
	if (r < 0) {
		if (qmp_c >= 0)
			close(qmp_c);
		return r;
	}

	r = vmf_qmp_open_fd(qmp_c, START_TIMEOUT_MS, &vm->qmp, err);
	if (r < 0) {
		bool exited = vmf_vmm_wait_exit(&vm->proc, vmf_now_ms() + 200);
		vmf_error_prefix(err, "QEMU for VM %s %s", cfg->id,
				 exited ? "exited during start-up" : "did not answer on QMP");
		qemu_append_logs(vm, err);
		vmf_vmm_kill(&vm->proc, "QEMU", cfg->id);
		return r;
	}
	return 0;
}

int
qemu_qmp_cmd(struct vmf_vmm *vm, const char *cmd, json_object *args, json_object **ret,
	struct vmf_error *err)
{
	if (!vm->qmp)
		return vmf_err(err, ENOTCONN, "VM %s has no QMP connection", vm->cfg->id);
	int r = vmf_qmp_command(vm->qmp, cmd, args, -1, ret, QMP_TIMEOUT_MS, err);
	if (r < 0) {
		vmf_error_prefix(err, "VM %s", vm->cfg->id);
		if (vmf_vmm_exited(&vm->proc))
			qemu_append_logs(vm, err);
	}
	return r;
}

int
qemu_boot(const vmf_vm_config *cfg, struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	struct vmf_vmm *vm = qemu_vm_new(cfg, err);
	if (!vm)
		return -ENOMEM;
	int r = qemu_spawn(vm, err);
	if (r < 0) {
		qemu_vm_free(vm);
		return r;
	}
	vm->paused = cfg->incoming;
	log_vm(VMF_LOG_DEBUG, cfg->id, "QEMU pid %d started", (int)vm->proc.pid);
	*out = vm;
	return 0;
}

int
qemu_set_capability(struct vmf_vmm *vm, const char *cap, bool on, struct vmf_error *err)
{
	json_object *caps = json_object_new_array();
	json_object *c = json_object_new_object();
	json_object_object_add(c, "capability", json_object_new_string(cap));
	json_object_object_add(c, "state", json_object_new_boolean(on));
	json_object_array_add(caps, c);
	json_object *args = json_object_new_object();
	json_object_object_add(args, "capabilities", caps);
	int r = qemu_qmp_cmd(vm, "migrate-set-capabilities", args, NULL, err);
	json_object_put(args);
	return r;
}

/* A string member of a QMP reply, "" when it is missing or no string (a
 * JSON null among them): what QEMU sends is checked before it is used. */
const char *
qemu_member_str(json_object *o, const char *key)
{
	json_object *v;
	return json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, key, &v) &&
	       json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
}

/* x-ignore-shared is experimental: probe for it rather than assume it. */
int
qemu_has_capability(struct vmf_vmm *vm, const char *cap, struct vmf_error *err)
{
	json_object *ret = NULL;
	int r = qemu_qmp_cmd(vm, "query-migrate-capabilities", NULL, &ret, err);
	if (r < 0)
		return r;
	int found = 0;
	size_t n = json_object_is_type(ret, json_type_array) ? json_object_array_length(ret) : 0;
	for (size_t i = 0; i < n; i++)
		if (strcmp(qemu_member_str(json_object_array_get_idx(ret, i), "capability"), cap) == 0)
			found = 1;
	json_object_put(ret);
	return found;
}

int
qemu_pass_fd(struct vmf_vmm *vm, const char *name, int fd, struct vmf_error *err)
{
	json_object *args = json_object_new_object();
	json_object_object_add(args, "fdname", json_object_new_string(name));
	int r = vmf_qmp_command(vm->qmp, "getfd", args, fd, NULL, QMP_TIMEOUT_MS, err);
	json_object_put(args);
	if (r < 0)
		vmf_error_prefix(err, "VM %s: passing QEMU the file descriptor %s", vm->cfg->id, name);
	return r;
}

int
qemu_pause(struct vmf_vmm *vm, struct vmf_error *err)
{
	int r = qemu_qmp_cmd(vm, "stop", NULL, NULL, err);
	if (r == 0)
		vm->paused = true;
	return r;
}

int
qemu_resume(struct vmf_vmm *vm, struct vmf_error *err)
{
	int r = qemu_qmp_cmd(vm, "cont", NULL, NULL, err);
	if (r == 0)
		vm->paused = false;
	return r;
}

int
qemu_stop(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err)
{
	(void)err;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	if (!vmf_vmm_exited(&vm->proc)) {
		/* quit is QEMU's clean exit; a guest shutdown would need the
		 * guest's cooperation, which a pooled or broken VM may not give. */
		struct vmf_error ignored;
		if (vm->qmp)
			vmf_qmp_command(vm->qmp, "quit", NULL, -1, NULL, timeout_ms / 3 + 1, &ignored);
		if (!vmf_vmm_wait_exit(&vm->proc, vmf_now_ms() + timeout_ms / 3 + 1))
			vmf_vmm_terminate(&vm->proc, deadline, "QEMU", vm->cfg->id);
	}
	if (vm->qmp) {
		vmf_qmp_close(vm->qmp);
		vm->qmp = NULL;
	}
	unlink(vm->qmp_path);
	unlink(vm->mon_path);
	unlink(vm->agent_path);
	unlink(vm->vmf_agent_path);
	return 0;
}

bool
qemu_alive(struct vmf_vmm *vm)
{
	/* Reaps a dead child here so it is not left a zombie. */
	return !vmf_vmm_exited(&vm->proc);
}

pid_t
qemu_pid(const struct vmf_vmm *vm)
{
	return vm->proc.pid;
}

unsigned
qemu_capabilities(const struct vmf_vmm *vm)
{
	(void)vm;
	return VMF_CAP_TEMPLATE_SHARE | VMF_CAP_CPU_HOTPLUG | VMF_CAP_MEM_HOTPLUG |
	       VMF_CAP_SHARE_DEVICE | VMF_CAP_VMGENID | VMF_CAP_FULL_SNAPSHOT;
}

int
qemu_agent_connect(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err)
{
	(void)timeout_ms; /* the listening socket exists for the VM's whole life */
	/* The daemon's own port: the owner's may be held by the sandbox. */
	int fd = vmf_vmm_connect_unix(vm->vmf_agent_path, err);
	/* A VM adopted from a daemon before the private port has only one. */
	if (fd == -ENOENT)
		fd = vmf_vmm_connect_unix(vm->agent_path, err);
	if (fd < 0)
		vmf_error_prefix(err, "VM %s: agent channel", vm->cfg->id);
	return fd;
}

int
qemu_watch_fd(struct vmf_vmm *vm)
{
	return vm->proc.pidfd;
}

/* QEMU's last word on a guest that ended or reset, from the events queued
 * on the daemon's monitor: SHUTDOWN's reason, GUEST_PANICKED. */
static void
last_event(struct vmf_vmm *vm, struct vmf_vmm_exit *out)
{
	json_object *data = NULL, *v;
	struct vmf_error ignored;
	if (vmf_qmp_wait_event(vm->qmp, "GUEST_PANICKED", NULL, 0, &ignored) == 0) {
		snprintf(out->guest_event, sizeof(out->guest_event), "guest-panic");
		snprintf(out->event, sizeof(out->event), "GUEST_PANICKED");
	}
	if (vmf_qmp_wait_event(vm->qmp, "SHUTDOWN", &data, 0, &ignored) < 0)
		return;
	const char *reason = json_object_object_get_ex(data, "reason", &v) && json_object_is_type(v, json_type_string)
				     ? json_object_get_string(v) : "";
	/* QEMU names its reasons in a fixed vocabulary: anything else is not
	 * taken as one. */
	static const char *const known[][2] = {
		{ "guest-panic", "guest-panic" }, { "guest-reset", "guest-reset" },
		{ "guest-shutdown", "guest-poweroff" }, { "host-qmp-quit", "quit" },
		{ "host-signal", "host-signal" },
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (strcmp(reason, known[i][0]) == 0) {
			if (!out->guest_event[0])
				snprintf(out->guest_event, sizeof(out->guest_event), "%s", known[i][1]);
			snprintf(out->event, sizeof(out->event), "%sSHUTDOWN %s", out->event[0] ? "GUEST_PANICKED, " : "",
				 reason);
		}
	json_object_put(data);
}

int
qemu_exit_info(struct vmf_vmm *vm, struct vmf_vmm_exit *out)
{
	if (!vmf_vmm_exit_status(&vm->proc, out)) {
		snprintf(out->serial_log, sizeof(out->serial_log), "%s", vm->serial_log);
		return -EBUSY;
	}
	if (vm->qmp) {
		/* Whatever QEMU wrote before it exited waits in the socket. */
		vmf_qmp_poll_events(vm->qmp, 256, 5);
		last_event(vm, out);
	}
	snprintf(out->serial_log, sizeof(out->serial_log), "%s", vm->serial_log);
	return 0;
}

int
qemu_event_fd(struct vmf_vmm *vm)
{
	return vm->qmp ? vmf_qmp_fd(vm->qmp) : -1;
}

int
qemu_poll_events(struct vmf_vmm *vm, struct vmf_vmm_events *ev)
{
	memset(ev, 0, sizeof(*ev));
	if (!vm->qmp)
		return -EPIPE;
	vmf_qmp_poll_events(vm->qmp, 64, 0);
	json_object *data = NULL, *g;
	struct vmf_error ignored;
	while (vmf_qmp_wait_event(vm->qmp, "GUEST_PANICKED", NULL, 0, &ignored) == 0)
		ev->panics++;
	while (vmf_qmp_wait_event(vm->qmp, "RESET", &data, 0, &ignored) == 0) {
		/* guest: false is a reset the host asked for (system_reset). */
		if (!json_object_object_get_ex(data, "guest", &g) || json_object_get_boolean(g))
			ev->resets++;
		json_object_put(data);
		data = NULL;
	}
	/* Unusable once QEMU closed it: the events it left were taken above. */
	return vmf_qmp_usable(vm->qmp) ? 0 : -EPIPE;
}

/* The owner's agent connection cannot be closed from QEMU's side while its
 * port uses it (7.2: "Chardev user does not support chardev hotswap"): the
 * port is unplugged (no guest cooperation on the virtio-serial bus), its
 * chardev removed, which closes the client's connection, and both made
 * again on a new listening socket at the same path. */
int
qemu_agent_reset(struct vmf_vmm *vm, struct vmf_error *err)
{
	json_object *args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string(VMF_QEMU_AGENT_PORT));
	int r = qemu_qmp_cmd(vm, "device_del", args, NULL, err);
	json_object_put(args);
	if (r < 0)
		return r;
	for (int64_t deadline = vmf_now_ms() + QMP_TIMEOUT_MS;;) {
		json_object *data = NULL, *id;
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0 || (r = vmf_qmp_wait_event(vm->qmp, "DEVICE_DELETED", &data, left, err)) < 0)
			return vmf_error_prefix(err, "VM %s: unplugging the agent port", vm->cfg->id);
		bool ours = json_object_object_get_ex(data, "device", &id) &&
			    strcmp(json_object_get_string(id), VMF_QEMU_AGENT_PORT) == 0;
		json_object_put(data);
		if (ours)
			break;
	}
	args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string("agent"));
	r = qemu_qmp_cmd(vm, "chardev-remove", args, NULL, err);
	json_object_put(args);
	int lfd = r < 0 ? r : listen_unix(vm->agent_path, err);
	if (lfd < 0)
		return lfd;
	r = qemu_pass_fd(vm, "vmfagentl", lfd, err);
	close(lfd);
	if (r < 0)
		return r;
	json_object *addr = json_object_new_object(), *data = json_object_new_object();
	json_object_object_add(data, "str", json_object_new_string("vmfagentl"));
	json_object_object_add(addr, "type", json_object_new_string("fd"));
	json_object_object_add(addr, "data", data);
	json_object *sock = json_object_new_object();
	json_object_object_add(sock, "addr", addr);
	json_object_object_add(sock, "server", json_object_new_boolean(true));
	json_object_object_add(sock, "wait", json_object_new_boolean(false));
	json_object *backend = json_object_new_object();
	json_object_object_add(backend, "type", json_object_new_string("socket"));
	json_object_object_add(backend, "data", sock);
	args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string("agent"));
	json_object_object_add(args, "backend", backend);
	r = qemu_qmp_cmd(vm, "chardev-add", args, NULL, err);
	json_object_put(args);
	if (r < 0)
		return r;
	json_object *dev = json_object_new_object();
	json_object_object_add(dev, "driver", json_object_new_string("virtserialport"));
	json_object_object_add(dev, "bus", json_object_new_string("vser0.0"));
	json_object_object_add(dev, "chardev", json_object_new_string("agent"));
	json_object_object_add(dev, "name", json_object_new_string("agent"));
	json_object_object_add(dev, "id", json_object_new_string(VMF_QEMU_AGENT_PORT));
	r = qemu_qmp_cmd(vm, "device_add", dev, NULL, err);
	json_object_put(dev);
	return r;
}

int
qemu_serialize(const struct vmf_vmm *vm, vmf_hv_state **out, struct vmf_error *err)
{
	*out = NULL;
	vmf_hv_state *st = malloc(sizeof(*st));
	Vmf__Hv__QemuState *q = malloc(sizeof(*q));
	vmf_vm_config *cfg = vmf_vm_config_dup(vm->cfg);
	char *paths[5] = { strdup(vm->qmp_path), strdup(vm->agent_path), strdup(vm->serial_log),
			   strdup(vm->stderr_log), strdup("") };
	bool ok = st && q && cfg;
	for (int i = 0; i < 5; i++)
		ok = ok && paths[i];
	if (!ok) {
		free(st);
		free(q);
		vmf_vm_config_free(cfg);
		for (int i = 0; i < 5; i++)
			free(paths[i]);
		return vmf_err(err, ENOMEM, "out of memory serializing VM %s", vm->cfg->id);
	}
	vmf__hv__hypervisor_state__init(st);
	vmf__hv__qemu_state__init(q);
	q->qmp_socket = paths[0];
	q->agent_socket = paths[1];
	q->serial_log = paths[2];
	q->stderr_log = paths[3];
	q->pidfile = paths[4];
	q->dimm_count = vm->dimms;
	q->hotplugged_cpus = vm->vcpus - vm->cfg->vcpus;
	q->hotplugged_mem_mib = vm->memory_mib - vm->cfg->memory_mib;
	/* Owned by st (free_unpacked frees each): copies. */
	if (vm->n_cpu_devs && (q->cpu_devices = calloc(vm->n_cpu_devs, sizeof(char *))))
		for (size_t i = 0; i < vm->n_cpu_devs && (q->cpu_devices[i] = strdup(vm->cpu_devs[i])); i++)
			q->n_cpu_devices++;
	if (vm->n_dimm_mib && (q->dimm_mib = malloc(vm->n_dimm_mib * sizeof(uint32_t)))) {
		memcpy(q->dimm_mib, vm->dimm_mib, vm->n_dimm_mib * sizeof(uint32_t));
		q->n_dimm_mib = vm->n_dimm_mib;
	}
	st->schema_version = STATE_SCHEMA_VERSION;
	st->kind = VMF__HV__HYPERVISOR_KIND__HV_QEMU;
	st->pid = qemu_pid(vm);
	st->start_time_ticks = vm->proc.start_ticks;
	st->config = cfg;
	st->qemu = q;
	st->vcpus = vm->vcpus;
	st->memory_mib = vm->memory_mib;
	st->paused = vm->paused;
	*out = st;
	if (q->n_cpu_devices != vm->n_cpu_devs || q->n_dimm_mib != vm->n_dimm_mib) {
		vmf__hv__hypervisor_state__free_unpacked(st, NULL);
		*out = NULL;
		return vmf_err(err, ENOMEM, "out of memory serializing VM %s", vm->cfg->id);
	}
	return 0;
}

/* The process must still carry our -name: pid reuse by an unrelated program
 * must never make us adopt (and later kill) it. */
static bool
cmdline_has_name(pid_t pid, const char *name)
{
	char path[64], *buf = NULL;
	size_t len;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	if (vmf_read_file(path, &buf, &len, 1 << 20, NULL) < 0)
		return false;
	bool found = false;
	for (size_t off = 0; off < len && !found;) {
		const char *a = buf + off;
		size_t l = strlen(a);
		if (strcmp(a, "-name") == 0 && off + l + 1 < len)
			found = strcmp(buf + off + l + 1, name) == 0;
		off += l + 1;
	}
	free(buf);
	return found;
}

int
qemu_adopt(const vmf_hv_state *st, struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	if (st->schema_version != STATE_SCHEMA_VERSION || !st->config || !st->qemu)
		return vmf_err(err, EINVAL, "hypervisor state has schema %u, expected %u",
			       st->schema_version, STATE_SCHEMA_VERSION);
	const char *id = st->config->id;
	if (!vmf_proc_alive(st->pid, st->start_time_ticks))
		return vmf_err(err, ESRCH, "QEMU pid %d of VM %s is gone", (int)st->pid, id);
	const char *name = st->config->name && *st->config->name ? st->config->name : id;
	if (!cmdline_has_name(st->pid, name))
		return vmf_err(err, ESRCH, "pid %d is not the QEMU of VM %s (no -name %s)", (int)st->pid, id, name);
	struct vmf_vmm *vm = qemu_vm_new(st->config, err);
	if (!vm)
		return -ENOMEM;
	vmf_vmm_attach(&vm->proc, st->pid, st->start_time_ticks);
	vm->vcpus = st->vcpus;
	vm->memory_mib = st->memory_mib;
	vm->dimms = st->qemu->dimm_count;
	vm->paused = st->paused;
	if (qemu_take_hotplugged(vm, st->qemu, err) < 0) {
		qemu_vm_free(vm);
		return -err->code;
	}
	/* The record names the daemon's monitor: qmp.sock for a VM started
	 * before the sandbox got its own monitor, which then has no other. */
	if (st->qemu->qmp_socket && *st->qemu->qmp_socket)
		snprintf(vm->qmp_path, sizeof(vm->qmp_path), "%s", st->qemu->qmp_socket);
	/* Our QMP socket exists for the VM's whole life: a missing one will not
	 * appear, so do not let the connect wait for it. */
	struct stat sst;
	int r = stat(vm->qmp_path, &sst) < 0 ? vmf_err_sys(err, errno, "QMP socket %s is gone", vm->qmp_path)
					      : vmf_qmp_connect(vm->qmp_path, QMP_TIMEOUT_MS, &vm->qmp, err);
	if (r < 0) {
		vmf_error_prefix(err, "adopting VM %s", id);
		qemu_vm_free(vm);
		return r;
	}
	/* The recorded run state may be stale (crash between cont and record). */
	json_object *ret = NULL, *running;
	if (qemu_qmp_cmd(vm, "query-status", NULL, &ret, NULL) == 0 &&
	    json_object_object_get_ex(ret, "running", &running))
		vm->paused = !json_object_get_boolean(running);
	json_object_put(ret);
	*out = vm;
	return 0;
}

int
qemu_probe(const char *binary, const char *kernel, const char *state_dir, struct vmf_hv_info *info,
	   struct vmf_error *err)
{
	memset(info, 0, sizeof(*info));
	const char *bin = binary && *binary ? binary : VMF_QEMU_DEFAULT_BINARY;
	/* "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)" */
	int r = vmf_vmm_probe_version(bin, "QEMU", "qemu-system-x86", "version ", " \n(", info->version,
				      sizeof(info->version), err);
	if (r < 0)
		return r;
	qemu_accel_probe(bin, kernel, state_dir, info);
	info->caps = qemu_capabilities(NULL);
	return 0;
}
