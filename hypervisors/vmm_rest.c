/* The handle and the ops both REST drivers share; see vmm_rest.h. */
#include "vmm_rest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "util.h"

#define STATE_SCHEMA_VERSION 1

static void
vm_free(struct vmf_vmm *vm)
{
	if (!vm)
		return;
	vmf_vmm_close(&vm->proc);
	vmf_vm_config_free(vm->cfg);
	free(vm);
}

int
vmf_rest_new(const struct vmf_rest_vmm *vmm, const vmf_vm_config *cfg, struct vmf_vmm **out,
	     struct vmf_error *err)
{
	*out = NULL;
	if (!cfg->id || !*cfg->id || !cfg->run_dir || cfg->run_dir[0] != '/')
		return vmf_err(err, EINVAL, "%s VM config lacks an id or an absolute run dir", vmm->name);
	/* Never run as another user than asked without saying so. */
	if (cfg->runas && *cfg->runas)
		return vmf_err(err, ENOTSUP, "VM %s: running the VMM as user %s is unsupported by %s", cfg->id,
			       cfg->runas, vmm->name);
	struct vmf_vmm *vm = calloc(1, sizeof(*vm));
	if (!vm || !(vm->cfg = vmf_vm_config_dup(cfg))) {
		free(vm);
		return vmf_err(err, ENOMEM, "out of memory for a VM handle");
	}
	vm->vmm = vmm;
	vm->proc.pidfd = -1;
	snprintf(vm->api_sock, sizeof(vm->api_sock), "%s/%s", cfg->run_dir, vmm->api_sock);
	snprintf(vm->vsock, sizeof(vm->vsock), "%s/%s", cfg->run_dir, VMF_REST_VSOCK);
	snprintf(vm->log, sizeof(vm->log), "%s/%s", cfg->run_dir, vmm->log);
	vm->vcpus = cfg->vcpus;
	vm->memory_mib = cfg->memory_mib;
	*out = vm;
	return 0;
}

/* vmf_vmm_http on the VM's API socket (see vmf_rest_send). */
static int
api(struct vmf_vmm *vm, const char *method, const char *path, json_object *body, json_object **reply,
    int timeout_ms, struct vmf_error *err)
{
	char full[256];
	snprintf(full, sizeof(full), "%s%s", vm->vmm->api_prefix, path);
	int r = vmf_vmm_http(vm->vmm->name, vm->api_sock, method, full, body, reply, timeout_ms, err);
	if (r < 0) {
		vmf_error_prefix(err, "VM %s", vm->cfg->id);
		if (vmf_vmm_exited(&vm->proc)) {
			char tail[400];
			vmf_file_tail(vm->log, tail, sizeof(tail));
			vmf_error_append(err, "; %s exited%s%s", vm->vmm->name, tail[0] ? ": " : "", tail);
		}
	}
	return r;
}

int
vmf_rest_send(struct vmf_vmm *vm, const char *method, const char *path, json_object *body, int timeout_ms,
	      struct vmf_error *err)
{
	int r = api(vm, method, path, body, NULL, timeout_ms, err);
	json_object_put(body);
	return r < 0 ? r : 0;
}

int
vmf_rest_get(struct vmf_vmm *vm, const char *path, json_object **reply, struct vmf_error *err)
{
	*reply = NULL;
	int r = api(vm, "GET", path, NULL, reply, VMF_REST_API_TIMEOUT_MS, err);
	return r < 0 ? r : 0;
}

/* The VMM's version, from version_path; kept empty when it names none. */
static int
get_version(struct vmf_vmm *vm, struct vmf_error *err)
{
	json_object *ver = NULL, *v;
	int r = api(vm, "GET", vm->vmm->version_path, NULL, &ver, VMF_REST_API_TIMEOUT_MS, err);
	if (r >= 0 && ver && json_object_object_get_ex(ver, vm->vmm->version_key, &v))
		snprintf(vm->version, sizeof(vm->version), "%s", json_object_get_string(v));
	json_object_put(ver);
	return r;
}

static void
kill_now(struct vmf_vmm *vm)
{
	vmf_vmm_terminate(&vm->proc, vmf_now_ms() + 2000, vm->vmm->name, vm->cfg->id);
}

void
vmf_rest_abort(struct vmf_vmm *vm)
{
	kill_now(vm);
	vm_free(vm);
}

int
vmf_rest_spawn(struct vmf_vmm *vm, struct vmf_error *err)
{
	const vmf_vm_config *cfg = vm->cfg;
	const char *name = vm->vmm->name;
	if (vmf_mkdir_p(cfg->run_dir, 0700, err) < 0)
		return -err->code;
	unlink(vm->api_sock);
	unlink(vm->vsock);
	const char *bin = cfg->binary && *cfg->binary ? cfg->binary : name;
	char arg[PATH_MAX + 8], *argv[8] = { 0 };
	vm->vmm->argv(vm, bin, arg, sizeof(arg), argv);
	char line[2 * PATH_MAX] = "";
	for (size_t i = 0, n = 0; argv[i] && n < sizeof(line); i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, "%s%s", i ? " " : "", argv[i]);
	log_vm(VMF_LOG_DEBUG, cfg->id, "starting %s", line);
	/* The run dir as working directory: Firecracker's placeholder drives
	 * are named relative to it, so a snapshot finds each clone's own. */
	struct vmf_vmm_spawn s = { .argv = argv, .log_dir = cfg->run_dir, .log_name = vm->vmm->log,
				   .cwd = cfg->run_dir };
	int r = vmf_vmm_spawn(&s, &vm->proc, err);
	if (r < 0)
		return vmf_error_prefix(err, "VM %s", cfg->id);
	r = vmf_vmm_wait_socket(&vm->proc, name, vm->api_sock, VMF_REST_START_TIMEOUT_MS, err);
	if (r == 0)
		r = get_version(vm, err);
	if (r >= 0)
		return 0;
	char tail[400];
	vmf_file_tail(vm->log, tail, sizeof(tail));
	vmf_error_prefix(err, "VM %s: %s did not start", cfg->id, name);
	if (tail[0])
		vmf_error_append(err, "; %s log: %s", name, tail);
	kill_now(vm);
	return r;
}

int
vmf_rest_boot_start(const struct vmf_rest_vmm *vmm, const vmf_vm_config *cfg, struct vmf_vmm **out,
		    struct vmf_error *err)
{
	*out = NULL;
	if (!cfg->kernel || !*cfg->kernel || cfg->vcpus == 0 || cfg->memory_mib == 0)
		return vmf_err(err, EINVAL, "VM %s: %s needs a kernel, vcpus and memory", cfg->id, vmm->name);
	if (cfg->incoming)
		return vmf_err(err, EINVAL, "VM %s: a %s clone starts with start_from_template", cfg->id,
			       vmm->name);
	struct vmf_vmm *vm;
	int r = vmf_rest_new(vmm, cfg, &vm, err);
	if (r < 0)
		return r;
	if ((r = vmf_rest_spawn(vm, err)) < 0) {
		vm_free(vm);
		return r;
	}
	if (cfg->share_dir && *cfg->share_dir)
		log_vm(VMF_LOG_DEBUG, cfg->id, "the %s driver has no share device; %s not exported", vmm->name,
		       cfg->share_dir);
	*out = vm;
	return 0;
}

static int
set_paused(struct vmf_vmm *vm, bool paused, struct vmf_error *err)
{
	int r = vm->vmm->request_pause(vm, paused, err);
	if (r == 0)
		vm->paused = paused;
	return r;
}

int
vmf_rest_pause(struct vmf_vmm *vm, struct vmf_error *err)
{
	return set_paused(vm, true, err);
}

int
vmf_rest_resume(struct vmf_vmm *vm, struct vmf_error *err)
{
	return set_paused(vm, false, err);
}

int
vmf_rest_snap_begin(struct vmf_vmm *vm, char *dir, struct vmf_error *err)
{
	int r;
	if (!vm->paused && (r = vmf_rest_pause(vm, err)) < 0)
		return r;
	snprintf(dir, PATH_MAX, "%s/%s", vm->cfg->run_dir, VMF_REST_SNAP_DIR);
	if (vmf_rm_rf(dir, err) < 0 || vmf_mkdir_p(dir, 0700, err) < 0)
		return -err->code;
	return 0;
}

int
vmf_rest_snap_pack(struct vmf_vmm *vm, int state_fd, const char *dir, const char *const *names,
		   struct vmf_error *err)
{
	int r = vmf_vmm_pack(state_fd, dir, names, err);
	if (r < 0)
		vmf_error_prefix(err, "VM %s: saving the template state", vm->cfg->id);
	struct vmf_error ignored;
	vmf_rm_rf(dir, &ignored);
	return r;
}

int
vmf_rest_snap_unpack(struct vmf_vmm *vm, int state_fd, char *dir, struct vmf_error *err)
{
	snprintf(dir, PATH_MAX, "%s/%s", vm->cfg->run_dir, VMF_REST_SNAP_DIR);
	if (vmf_mkdir_p(vm->cfg->run_dir, 0700, err) < 0 || vmf_vmm_unpack(state_fd, dir, err) < 0)
		return vmf_error_prefix(err, "VM %s: reading the template state", vm->cfg->id);
	return 0;
}

int
vmf_rest_no_disks(const struct vmf_vmm *vm, const char *what, struct vmf_error *err)
{
	if (!vm->disks)
		return 0;
	return vmf_err(err, ENOTSUP, "VM %s: %s of a %s VM with a disk attached is unsupported (its snapshot "
		       "would name the daemon's descriptors); detach the disks first", vm->cfg->id, what,
		       vm->vmm->name);
}

int
vmf_rest_restore_begin(const struct vmf_rest_vmm *vmm, const vmf_hv_state *st, int state_fd,
		       struct vmf_vmm **out, char *dir, struct vmf_error *err)
{
	*out = NULL;
	if (st->schema_version != STATE_SCHEMA_VERSION || !st->config || st->kind != vmm->kind)
		return vmf_err(err, EINVAL, "hypervisor state is not a %s state of schema %u", vmm->name,
			       STATE_SCHEMA_VERSION);
	struct vmf_vmm *vm;
	int r = vmf_rest_new(vmm, st->config, &vm, err);
	if (r < 0)
		return r;
	if ((r = vmf_rest_snap_unpack(vm, state_fd, dir, err)) < 0) {
		vm_free(vm);
		return vmf_error_prefix(err, "resuming VM %s", st->config->id);
	}
	vm->vcpus = st->vcpus;
	vm->memory_mib = st->memory_mib;
	*out = vm;
	return 0;
}

int
vmf_rest_probe(const struct vmf_rest_vmm *vmm, const char *binary, struct vmf_hv_info *info,
	       struct vmf_error *err)
{
	memset(info, 0, sizeof(*info));
	const char *bin = binary && *binary ? binary : vmm->name;
	/* "firecracker v1.10.1", "cloud-hypervisor v41.0.0" */
	int r = vmf_vmm_probe_version(bin, vmm->name, NULL, " v", " \n", info->version, sizeof(info->version), err);
	if (r < 0)
		return r;
	snprintf(info->accel, sizeof(info->accel), "kvm");
	snprintf(info->accel_why, sizeof(info->accel_why), "%s runs guests with KVM only", vmm->name);
	return 0;
}

int
vmf_rest_adopt(const struct vmf_rest_vmm *vmm, const vmf_hv_state *st, struct vmf_vmm **out,
	       struct vmf_error *err)
{
	*out = NULL;
	if (st->schema_version != STATE_SCHEMA_VERSION || !st->config || st->kind != vmm->kind)
		return vmf_err(err, EINVAL, "hypervisor state is not a %s state of schema %u", vmm->name,
			       STATE_SCHEMA_VERSION);
	if (!vmf_proc_alive(st->pid, st->start_time_ticks))
		return vmf_err(err, ESRCH, "%s pid %d of VM %s is gone", vmm->name, (int)st->pid, st->config->id);
	struct vmf_vmm *vm;
	int r = vmf_rest_new(vmm, st->config, &vm, err);
	if (r < 0)
		return r;
	if (!vmf_vmm_cmdline_has(st->pid, vm->api_sock)) {
		r = vmf_err(err, ESRCH, "pid %d is not the %s of VM %s (its command line lacks the API socket %s)",
			    (int)st->pid, vmm->name, vm->cfg->id, vm->api_sock);
		vm_free(vm);
		return r;
	}
	vmf_vmm_attach(&vm->proc, st->pid, st->start_time_ticks);
	vm->vcpus = st->vcpus;
	vm->memory_mib = st->memory_mib;
	vm->paused = st->paused;
	json_object *info = NULL, *v;
	r = get_version(vm, err);
	/* The recorded run state may be stale (crash between resume and record). */
	if (r >= 0 && (r = api(vm, "GET", vmm->info_path, NULL, &info, VMF_REST_API_TIMEOUT_MS, err)) >= 0 &&
	    json_object_object_get_ex(info, "state", &v))
		vm->paused = strcmp(json_object_get_string(v), "Paused") == 0;
	json_object_put(info);
	if (r >= 0)
		r = vmm->read_disks(vm, err);
	if (r < 0) {
		vmf_error_prefix(err, "adopting VM %s", vm->cfg->id);
		vm_free(vm);
		return r;
	}
	*out = vm;
	return 0;
}

int
vmf_rest_stop(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err)
{
	(void)err;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	if (!vmf_vmm_exited(&vm->proc) &&
	    (!vm->vmm->ask_exit(vm, timeout_ms / 3 + 1) ||
	     !vmf_vmm_wait_exit(&vm->proc, vmf_now_ms() + timeout_ms / 3 + 1)))
		vmf_vmm_terminate(&vm->proc, deadline, vm->vmm->name, vm->cfg->id);
	unlink(vm->api_sock);
	unlink(vm->vsock);
	return 0;
}

bool
vmf_rest_alive(struct vmf_vmm *vm)
{
	return !vmf_vmm_exited(&vm->proc);
}

pid_t
vmf_rest_pid(const struct vmf_vmm *vm)
{
	return vm->proc.pid;
}

int
vmf_rest_agent_connect(struct vmf_vmm *vm, int timeout_ms, struct vmf_error *err)
{
	int fd = vmf_vmm_vsock_connect(vm->vsock, VMF_AGENT_VSOCK_PORT, timeout_ms, err);
	if (fd < 0)
		vmf_error_prefix(err, "VM %s: agent channel", vm->cfg->id);
	return fd;
}

int
vmf_rest_watch_fd(struct vmf_vmm *vm)
{
	return vm->proc.pidfd;
}

int
vmf_rest_exit_info(struct vmf_vmm *vm, struct vmf_vmm_exit *out)
{
	bool gone = vmf_vmm_exit_status(&vm->proc, out);
	/* The VMM's log holds the guest's console (its serial on stdout). */
	snprintf(out->serial_log, sizeof(out->serial_log), "%s", vm->log);
	return gone ? 0 : -EBUSY;
}

int
vmf_rest_serialize(const struct vmf_vmm *vm, vmf_hv_state **out, struct vmf_error *err)
{
	*out = NULL;
	vmf_hv_state *st = malloc(sizeof(*st));
	vmf_vm_config *c = vmf_vm_config_dup(vm->cfg);
	char *sock = strdup(vm->api_sock);
	if (!st || !c || !sock) {
		free(st);
		vmf_vm_config_free(c);
		free(sock);
		return vmf_err(err, ENOMEM, "out of memory serializing VM %s", vm->cfg->id);
	}
	vmf__hv__hypervisor_state__init(st);
	st->schema_version = STATE_SCHEMA_VERSION;
	st->kind = vm->vmm->kind;
	st->pid = vm->proc.pid;
	st->start_time_ticks = vm->proc.start_ticks;
	st->config = c;
	st->api_socket = sock;
	st->vcpus = vm->vcpus;
	st->memory_mib = vm->memory_mib;
	st->paused = vm->paused;
	*out = st;
	return 0;
}

void
vmf_rest_release(struct vmf_vmm *vm)
{
	vm_free(vm);
}

int
vmf_rest_match_disks(const struct vmf_vmm *vm, unsigned saved, const struct vmf_restore_parts *parts,
		     unsigned *given, struct vmf_error *err)
{
	const char *id = vm->cfg->id;
	*given = 0;
	for (size_t i = 0; parts && i < parts->n_disks; i++) {
		unsigned slot = parts->disks[i].slot;
		if (slot >= 32 || *given & 1u << slot)
			return vmf_err(err, EINVAL, "VM %s: disk vmfd%u is given twice or is out of range for the resume",
				       id, slot);
		if (!(saved & 1u << slot))
			return vmf_err(err, EINVAL, "VM %s: disk vmfd%u is given for the resume, but the saved VM had no "
				       "disk in that slot", id, slot);
		*given |= 1u << slot;
	}
	for (unsigned s = 0; s < 32; s++)
		if (saved & ~*given & 1u << s)
			return vmf_err(err, EINVAL, "VM %s: the saved VM had disk vmfd%u attached, which the resume was "
				       "not given", id, s);
	return 0;
}

void
vmf_rest_fd_path(int fd, char out[VMF_REST_FD_PATH_MAX])
{
	snprintf(out, VMF_REST_FD_PATH_MAX, "/proc/%d/fd/%d", (int)getpid(), fd);
}
