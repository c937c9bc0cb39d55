/* Firecracker driver: the process runs `firecracker --api-sock PATH --id ID`
 * and is configured over its REST API (HTTP/1.1 on the unix socket, see
 * vmm_http.c).  Tested against the published API document 1.17.0-dev
 * (firecracker.yaml at 81b38b9d), through tests/fake_vmm.c.
 *
 * Templates are Full snapshots of a paused VM: the guest memory goes to the
 * template's memory file, the device state into the state stream.  A clone
 * is a fresh process that loads the snapshot with a File memory backend,
 * which Firecracker maps privately: clones share the file's page-cache pages
 * copy-on-write.  Firecracker cannot add vCPUs to a running VM; memory can
 * be added through its virtio-mem device (/hotplug/memory) on versions that
 * have it. */
#include "driver.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "util.h"
#include "vmm_http.h"
#include "vmm_proc.h"

#define FC "firecracker"
#define FC_DEFAULT_BINARY "firecracker"
#define FC_API_SOCK "firecracker.sock"
#define FC_LOG "firecracker.log"
#define FC_SNAP_DIR "snapshot"
#define FC_VMSTATE "vmstate"
#define FC_MEMORY "memory"
#define API_TIMEOUT_MS 10000
#define START_TIMEOUT_MS 10000
#define SNAPSHOT_TIMEOUT_MS 120000
/* First API version the driver was tested with /hotplug/memory. */
#define HOTPLUG_MIN_MAJOR 1
#define HOTPLUG_MIN_MINOR 17
/* The API document the driver was tested against (capabilities without a
 * running VMM assume it). */
#define FC_API_VERSION_TESTED "1.17.0"

struct vmf_vm {
	struct vmf_vmm_vm h;
	bool mem_hotplug;          /* virtio-mem region configured at boot */
};

static unsigned
caps_for_version(const char *v)
{
	unsigned caps = VMF_CAP_TEMPLATE_SHARE | VMF_CAP_FULL_SNAPSHOT;
	unsigned major = 0, minor = 0;
	if (v && sscanf(v, "%u.%u", &major, &minor) == 2 &&
	    (major > HOTPLUG_MIN_MAJOR || (major == HOTPLUG_MIN_MAJOR && minor >= HOTPLUG_MIN_MINOR)))
		caps |= VMF_CAP_MEM_HOTPLUG;
	return caps;
}

static int
api(struct vmf_vm *vm, const char *method, const char *path, json_object *body, json_object **reply,
    int timeout_ms, struct vmf_error *err)
{
	return vmf_vmm_vm_api(&vm->h, method, path, body, reply, timeout_ms, err);
}

/* PUT/PATCH with a body built from key/value pairs; the body is consumed. */
static int
api_put(struct vmf_vm *vm, const char *method, const char *path, json_object *body, struct vmf_error *err)
{
	int r = api(vm, method, path, body, NULL, API_TIMEOUT_MS, err);
	json_object_put(body);
	return r < 0 ? r : 0;
}

static void
vm_free(struct vmf_vm *vm)
{
	if (!vm)
		return;
	vmf_vmm_vm_fini(&vm->h);
	free(vm);
}

static struct vmf_vm *
vm_new(const vmf_vm_config *cfg, struct vmf_error *err)
{
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		vmf_err(err, ENOMEM, "out of memory for a VM handle");
		return NULL;
	}
	if (vmf_vmm_vm_init(&vm->h, FC, "", cfg, FC_API_SOCK, FC_LOG, err) < 0) {
		vm_free(vm);
		return NULL;
	}
	return vm;
}

static void
kill_now(struct vmf_vm *vm)
{
	vmf_vmm_vm_kill(&vm->h);
}

/* Starts the process and waits for its API to answer GET /version. */
static int
spawn(struct vmf_vm *vm, struct vmf_error *err)
{
	const vmf_vm_config *cfg = vm->h.cfg;
	if (vmf_mkdir_p(cfg->run_dir, 0700, err) < 0)
		return -err->code;
	unlink(vm->h.api_sock);
	unlink(vm->h.vsock);
	const char *bin = cfg->binary && *cfg->binary ? cfg->binary : FC_DEFAULT_BINARY;
	/* --id is how restart recovery recognises our process (with the socket). */
	char *const argv[] = { (char *)bin, "--api-sock", vm->h.api_sock, "--id", cfg->id, NULL };
	log_vm(VMF_LOG_DEBUG, cfg->id, "starting %s --api-sock %s --id %s", bin, vm->h.api_sock, cfg->id);
	struct vmf_vmm_spawn s = { .argv = argv, .log_dir = cfg->run_dir, .log_name = FC_LOG };
	int r = vmf_vmm_spawn(&s, &vm->h.proc, err);
	if (r < 0)
		return vmf_error_prefix(err, "VM %s", cfg->id);
	r = vmf_vmm_wait_socket(&vm->h.proc, FC, vm->h.api_sock, START_TIMEOUT_MS, err);
	json_object *ver = NULL, *v;
	if (r == 0)
		r = api(vm, "GET", "/version", NULL, &ver, API_TIMEOUT_MS, err);
	if (r >= 0) {
		if (ver && json_object_object_get_ex(ver, "firecracker_version", &v))
			snprintf(vm->h.version, sizeof(vm->h.version), "%s", json_object_get_string(v));
		json_object_put(ver);
		return 0;
	}
	char tail[400];
	vmf_file_tail(vm->h.log, tail, sizeof(tail));
	vmf_error_prefix(err, "VM %s: firecracker did not start", cfg->id);
	if (tail[0])
		vmf_error_append(err, "; firecracker log: %s", tail);
	kill_now(vm);
	return r;
}

static int
fc_boot(const vmf_vm_config *cfg, struct vmf_vm **out, struct vmf_error *err)
{
	*out = NULL;
	if (!cfg->kernel || !*cfg->kernel || cfg->vcpus == 0 || cfg->memory_mib == 0)
		return vmf_err(err, EINVAL, "VM %s: firecracker needs a kernel, vcpus and memory", cfg->id);
	if (cfg->incoming)
		return vmf_err(err, EINVAL, "VM %s: a firecracker clone starts with start_from_template", cfg->id);
	struct vmf_vm *vm = vm_new(cfg, err);
	if (!vm)
		return -err->code;
	int r = spawn(vm, err);
	if (r < 0) {
		vm_free(vm);
		return r;
	}
	if (cfg->share_dir && *cfg->share_dir)
		log_vm(VMF_LOG_DEBUG, cfg->id, "firecracker has no share device; %s not exported", cfg->share_dir);
	if (cfg->max_vcpus > cfg->vcpus)
		log_vm(VMF_LOG_INFO, cfg->id, "firecracker cannot hot-add vCPUs: max_vcpus %u is not usable",
		       cfg->max_vcpus);
	json_object *b = vmf_json_obj();
	vmf_json_set_int(b, "vcpu_count", cfg->vcpus);
	vmf_json_set_int(b, "mem_size_mib", cfg->memory_mib);
	r = api_put(vm, "PUT", "/machine-config", b, err);
	if (r == 0) {
		b = vmf_json_obj();
		vmf_json_set_str(b, "kernel_image_path", cfg->kernel);
		if (cfg->initrd && *cfg->initrd)
			vmf_json_set_str(b, "initrd_path", cfg->initrd);
		vmf_json_set_str(b, "boot_args", cfg->cmdline && *cfg->cmdline ? cfg->cmdline
				       : "console=ttyS0 reboot=k panic=-1");
		r = api_put(vm, "PUT", "/boot-source", b, err);
	}
	if (r == 0) {
		b = vmf_json_obj();
		vmf_json_set_int(b, "guest_cid", VMF_GUEST_CID);
		vmf_json_set_str(b, "uds_path", vm->h.vsock);
		r = api_put(vm, "PUT", "/vsock", b, err);
	}
	if (r == 0 && cfg->max_memory_mib > cfg->memory_mib &&
	    (caps_for_version(vm->h.version) & VMF_CAP_MEM_HOTPLUG)) {
		b = vmf_json_obj();
		vmf_json_set_int(b, "total_size_mib", cfg->max_memory_mib - cfg->memory_mib);
		r = api_put(vm, "PUT", "/hotplug/memory", b, err);
		vm->mem_hotplug = r == 0;
	}
	if (r == 0) {
		b = vmf_json_obj();
		vmf_json_set_str(b, "action_type", "InstanceStart");
		r = api_put(vm, "PUT", "/actions", b, err);
	}
	if (r < 0) {
		kill_now(vm);
		vm_free(vm);
		return r;
	}
	log_vm(VMF_LOG_DEBUG, cfg->id, "firecracker %s pid %d started", vm->h.version, (int)vm->h.proc.pid);
	*out = vm;
	return 0;
}

static int
set_state(struct vmf_vm *vm, const char *state, struct vmf_error *err)
{
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "state", state);
	return api_put(vm, "PATCH", "/vm", b, err);
}

static int
fc_pause(struct vmf_vm *vm, struct vmf_error *err)
{
	int r = set_state(vm, "Paused", err);
	if (r == 0)
		vm->h.paused = true;
	return r;
}

static int
fc_resume(struct vmf_vm *vm, struct vmf_error *err)
{
	int r = set_state(vm, "Resumed", err);
	if (r == 0)
		vm->h.paused = false;
	return r;
}

/* Full snapshot of the paused VM: memory to the template's memory file (or,
 * for full templates, into the stream), vmstate into the stream. */
static int
fc_save_template(struct vmf_vm *vm, int state_fd, bool full, struct vmf_error *err)
{
	int r;
	if (!vm->h.paused && (r = fc_pause(vm, err)) < 0)
		return r;
	const vmf_vm_config *cfg = vm->h.cfg;
	if (!full && (!cfg->memory_file || cfg->memory_file[0] != '/'))
		return vmf_err(err, EINVAL, "VM %s: a shared firecracker template needs an absolute memory "
			       "file", cfg->id);
	char dir[PATH_MAX], vmstate[PATH_MAX], mem[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/%s", cfg->run_dir, FC_SNAP_DIR);
	snprintf(vmstate, sizeof(vmstate), "%s/%s", dir, FC_VMSTATE);
	if (full)
		snprintf(mem, sizeof(mem), "%s/%s", dir, FC_MEMORY);
	else
		snprintf(mem, sizeof(mem), "%s", cfg->memory_file);
	if (vmf_rm_rf(dir, err) < 0 || vmf_mkdir_p(dir, 0700, err) < 0)
		return -err->code;
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "snapshot_type", "Full");
	vmf_json_set_str(b, "snapshot_path", vmstate);
	vmf_json_set_str(b, "mem_file_path", mem);
	r = api(vm, "PUT", "/snapshot/create", b, NULL, SNAPSHOT_TIMEOUT_MS, err);
	json_object_put(b);
	if (r < 0)
		return r;
	static const char *const with_mem[] = { FC_VMSTATE, FC_MEMORY, NULL };
	static const char *const state_only[] = { FC_VMSTATE, NULL };
	r = vmf_vmm_pack(state_fd, dir, full ? with_mem : state_only, err);
	struct vmf_error ignored;
	vmf_rm_rf(dir, &ignored);
	if (r < 0)
		vmf_error_prefix(err, "VM %s: saving the template state", cfg->id);
	return r;
}

static int
fc_start_from_template(const vmf_vm_config *cfg, int state_fd, struct vmf_vm **out, struct vmf_error *err)
{
	*out = NULL;
	bool full = cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_FULL;
	if (!full && (cfg->memory_mode != VMF__HV__MEMORY_MODE__MEM_CLONE_COW || !cfg->memory_file ||
		      cfg->memory_file[0] != '/'))
		return vmf_err(err, EINVAL, "VM %s: a firecracker clone needs MEM_FULL or MEM_CLONE_COW with "
			       "an absolute memory file", cfg->id);
	struct vmf_vm *vm = vm_new(cfg, err);
	if (!vm)
		return -err->code;
	char dir[PATH_MAX], vmstate[PATH_MAX], mem[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/%s", cfg->run_dir, FC_SNAP_DIR);
	snprintf(vmstate, sizeof(vmstate), "%s/%s", dir, FC_VMSTATE);
	if (full)
		snprintf(mem, sizeof(mem), "%s/%s", dir, FC_MEMORY);
	else
		snprintf(mem, sizeof(mem), "%s", cfg->memory_file);
	int r = 0;
	if (vmf_mkdir_p(cfg->run_dir, 0700, err) < 0 || vmf_vmm_unpack(state_fd, dir, err) < 0)
		r = vmf_error_prefix(err, "VM %s: reading the template state", cfg->id);
	struct stat st;
	if (r == 0 && stat(vmstate, &st) < 0)
		r = vmf_err(err, EPROTO, "VM %s: the template state holds no firecracker vmstate", cfg->id);
	if (r == 0 && full && stat(mem, &st) < 0)
		r = vmf_err(err, EPROTO, "VM %s: the full template state holds no memory image", cfg->id);
	if (r == 0)
		r = spawn(vm, err);
	if (r < 0) {
		vm_free(vm);
		return r;
	}
	/* File backend: Firecracker maps the memory file MAP_PRIVATE, so every
	 * clone of a template shares its unmodified pages. */
	json_object *b = vmf_json_obj(), *be = vmf_json_obj(), *vo = vmf_json_obj();
	vmf_json_set_str(b, "snapshot_path", vmstate);
	vmf_json_set_str(be, "backend_type", "File");
	vmf_json_set_str(be, "backend_path", mem);
	json_object_object_add(b, "mem_backend", be);
	vmf_json_set_bool(b, "resume_vm", false);
	/* The snapshot names the template's vsock socket; each clone has its own. */
	vmf_json_set_str(vo, "uds_path", vm->h.vsock);
	json_object_object_add(b, "vsock_override", vo);
	r = api(vm, "PUT", "/snapshot/load", b, NULL, SNAPSHOT_TIMEOUT_MS, err);
	json_object_put(b);
	if (r < 0) {
		vmf_error_prefix(err, "loading the template snapshot");
		kill_now(vm);
		vm_free(vm);
		return r;
	}
	if (!full) {
		/* The vmstate was read at load; the memory file is the template's. */
		unlink(vmstate);
		rmdir(dir);
	}
	vm->h.paused = true;
	vm->mem_hotplug = cfg->max_memory_mib > cfg->memory_mib &&
			  (caps_for_version(vm->h.version) & VMF_CAP_MEM_HOTPLUG);
	*out = vm;
	return 0;
}

static int
fc_hotplug_vcpus(struct vmf_vm *vm, unsigned total, struct vmf_error *err)
{
	if (total <= vm->h.vcpus)
		return 0;
	return vmf_err(err, ENOTSUP, "VM %s: vCPU hot-add is unsupported by firecracker (%u vCPUs "
		       "requested, the VM has %u)", vm->h.cfg->id, total, vm->h.vcpus);
}

static int
fc_hotplug_memory(struct vmf_vm *vm, unsigned add_mib, struct vmf_error *err)
{
	if (add_mib == 0)
		return 0;
	if (!vm->mem_hotplug)
		return vmf_err(err, ENOTSUP, "VM %s: memory hot-add is unsupported by firecracker %s%s",
			       vm->h.cfg->id, vm->h.version[0] ? vm->h.version : "(unknown version)",
			       vm->h.cfg->max_memory_mib > vm->h.cfg->memory_mib ? ""
				       : " for a VM built without spare memory (max_memory_mib)");
	unsigned max = vm->h.cfg->max_memory_mib;
	if (vm->h.memory_mib + add_mib > max)
		return vmf_err(err, ENOSPC, "VM %s: %u MiB + %u MiB exceeds max memory %u MiB",
			       vm->h.cfg->id, vm->h.memory_mib, add_mib, max);
	json_object *b = vmf_json_obj();
	vmf_json_set_int(b, "requested_size_mib", vm->h.memory_mib + add_mib - vm->h.cfg->memory_mib);
	int r = api_put(vm, "PATCH", "/hotplug/memory", b, err);
	if (r == 0)
		vm->h.memory_mib += add_mib;
	return r;
}

static int
fc_stop(struct vmf_vm *vm, int timeout_ms, struct vmf_error *err)
{
	(void)err;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	if (!vmf_vmm_exited(&vm->h.proc)) {
		/* SendCtrlAltDel asks the guest to reboot, which Firecracker turns
		 * into its own exit (reboot=k); a paused or hung guest ignores it. */
		struct vmf_error ignored;
		json_object *b = vmf_json_obj();
		vmf_json_set_str(b, "action_type", "SendCtrlAltDel");
		if (!vm->h.paused)
			vmf_vmm_http(FC, vm->h.api_sock, "PUT", "/actions", b, NULL, timeout_ms / 3 + 1, &ignored);
		json_object_put(b);
		if (vm->h.paused || !vmf_vmm_wait_exit(&vm->h.proc, vmf_now_ms() + timeout_ms / 3 + 1))
			vmf_vmm_terminate(&vm->h.proc, deadline, FC, vm->h.cfg->id);
	}
	unlink(vm->h.api_sock);
	unlink(vm->h.vsock);
	return 0;
}

static bool
fc_alive(struct vmf_vm *vm)
{
	return !vmf_vmm_exited(&vm->h.proc);
}

static pid_t
fc_pid(const struct vmf_vm *vm)
{
	return vm->h.proc.pid;
}

static unsigned
fc_capabilities(const struct vmf_vm *vm)
{
	return caps_for_version(vm ? vm->h.version : FC_API_VERSION_TESTED);
}

static int
fc_agent_connect(struct vmf_vm *vm, int timeout_ms, struct vmf_error *err)
{
	return vmf_vmm_vm_agent_connect(&vm->h, timeout_ms, err);
}

static int
fc_watch_fd(struct vmf_vm *vm)
{
	return vm->h.proc.pidfd;
}

static int
fc_serialize(const struct vmf_vm *vm, vmf_hv_state **out, struct vmf_error *err)
{
	return vmf_vmm_vm_serialize(&vm->h, VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER, out, err);
}

static int
fc_adopt(const vmf_hv_state *st, struct vmf_vm **out, struct vmf_error *err)
{
	*out = NULL;
	int rc = vmf_vmm_adopt_check(st, VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER, "firecracker", err);
	if (rc < 0)
		return rc;
	struct vmf_vm *vm = vm_new(st->config, err);
	if (!vm)
		return -err->code;
	rc = vmf_vmm_vm_adopt(&vm->h, st, "/version", "firecracker_version", "/", err);
	if (rc < 0) {
		vm_free(vm);
		return rc;
	}
	vm->mem_hotplug = st->config->max_memory_mib > st->config->memory_mib &&
			  (caps_for_version(vm->h.version) & VMF_CAP_MEM_HOTPLUG);
	*out = vm;
	return 0;
}

static int
fc_probe(const char *binary, struct vmf_hv_info *info, struct vmf_error *err)
{
	memset(info, 0, sizeof(*info));
	const char *bin = binary && *binary ? binary : FC_DEFAULT_BINARY;
	if (strchr(bin, '\''))
		return vmf_err(err, EINVAL, "firecracker binary path %s contains a quote", bin);
	char cmd[PATH_MAX + 32];
	snprintf(cmd, sizeof(cmd), "'%s' --version 2>/dev/null", bin);
	FILE *p = popen(cmd, "re");
	if (!p)
		return vmf_err_sys(err, errno, "cannot run %s", bin);
	char line[256] = "";
	char *got = fgets(line, sizeof(line), p);
	int st = pclose(p);
	/* "Firecracker v1.10.1" */
	const char *v = got ? strstr(line, " v") : NULL;
	if (!v || st != 0)
		return vmf_err(err, ENOENT, "firecracker binary %s did not report a version (is it installed?)",
			       bin);
	v += 2;
	size_t n = strcspn(v, " \n");
	if (n >= sizeof(info->version))
		n = sizeof(info->version) - 1;
	memcpy(info->version, v, n);
	snprintf(info->accel, sizeof(info->accel), "kvm");
	info->caps = caps_for_version(info->version);
	return 0;
}

static void
fc_release(struct vmf_vm *vm)
{
	vm_free(vm);
}

const struct vmf_hv_ops vmf_firecracker_ops = {
	.name = "firecracker",
	.kind = VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER,
	.probe = fc_probe,
	.boot = fc_boot,
	.start_from_template = fc_start_from_template,
	.save_template = fc_save_template,
	.pause = fc_pause,
	.resume = fc_resume,
	.hotplug_vcpus = fc_hotplug_vcpus,
	.hotplug_memory = fc_hotplug_memory,
	.stop = fc_stop,
	.alive = fc_alive,
	.pid = fc_pid,
	.capabilities = fc_capabilities,
	.agent_connect = fc_agent_connect,
	.watch_fd = fc_watch_fd,
	.serialize = fc_serialize,
	.adopt = fc_adopt,
	.release = fc_release,
};
