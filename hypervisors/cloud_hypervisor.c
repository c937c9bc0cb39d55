/* Cloud Hypervisor driver: the process runs `cloud-hypervisor --api-socket
 * path=PATH` and is driven over its REST API (/api/v1/vm.*, vmm.*).  Tested
 * against the published API document (cloud-hypervisor.yaml, OpenAPI 3.0.1,
 * at ae44c297) through tests/fake_vmm.c.
 *
 * Snapshots: vm.snapshot writes config, device state and all guest memory
 * into a directory; vm.restore reads it back, copying memory into the new
 * process (memory_restore_mode Copy, or faulting it in privately with
 * OnDemand).  Either way a clone's RAM is its own: Cloud Hypervisor cannot
 * share a template's memory between clones, so this driver only builds
 * full-memory templates and does not claim template-share.  vCPUs and memory
 * are resized with vm.resize (the VM is created with max_vcpus and a
 * hotplug_size). */
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

#define CH "cloud-hypervisor"
#define CH_DEFAULT_BINARY "cloud-hypervisor"
#define CH_API_SOCK "ch.sock"
#define CH_LOG "cloud-hypervisor.log"
#define CH_SERIAL_LOG "serial.log"
#define CH_SNAP_DIR "snapshot"
#define CH_CONFIG_JSON "config.json"
#define API_TIMEOUT_MS 10000
#define START_TIMEOUT_MS 10000
#define SNAPSHOT_TIMEOUT_MS 120000
#define CH_CAPS (VMF_CAP_CPU_HOTPLUG | VMF_CAP_MEM_HOTPLUG | VMF_CAP_FULL_SNAPSHOT)

struct vmf_vm {
	struct vmf_vmm_vm h;
	char serial[PATH_MAX];
};

static int
api(struct vmf_vm *vm, const char *method, const char *endpoint, json_object *body, json_object **reply,
    int timeout_ms, struct vmf_error *err)
{
	return vmf_vmm_vm_api(&vm->h, method, endpoint, body, reply, timeout_ms, err);
}

/* PUT with an optional body, which is consumed. */
static int
api_put(struct vmf_vm *vm, const char *endpoint, json_object *body, int timeout_ms, struct vmf_error *err)
{
	int r = api(vm, "PUT", endpoint, body, NULL, timeout_ms, err);
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
	if (vmf_vmm_vm_init(&vm->h, CH, "/api/v1/", cfg, CH_API_SOCK, CH_LOG, err) < 0) {
		vm_free(vm);
		return NULL;
	}
	snprintf(vm->serial, sizeof(vm->serial), "%s/%s", cfg->run_dir, CH_SERIAL_LOG);
	return vm;
}

static void
kill_now(struct vmf_vm *vm)
{
	vmf_vmm_vm_kill(&vm->h);
}

static int
spawn(struct vmf_vm *vm, struct vmf_error *err)
{
	const vmf_vm_config *cfg = vm->h.cfg;
	if (vmf_mkdir_p(cfg->run_dir, 0700, err) < 0)
		return -err->code;
	unlink(vm->h.api_sock);
	unlink(vm->h.vsock);
	const char *bin = cfg->binary && *cfg->binary ? cfg->binary : CH_DEFAULT_BINARY;
	char sockarg[PATH_MAX + 8];
	snprintf(sockarg, sizeof(sockarg), "path=%s", vm->h.api_sock);
	char *const argv[] = { (char *)bin, "--api-socket", sockarg, NULL };
	log_vm(VMF_LOG_DEBUG, cfg->id, "starting %s --api-socket %s", bin, sockarg);
	struct vmf_vmm_spawn s = { .argv = argv, .log_dir = cfg->run_dir, .log_name = CH_LOG };
	int r = vmf_vmm_spawn(&s, &vm->h.proc, err);
	if (r < 0)
		return vmf_error_prefix(err, "VM %s", cfg->id);
	r = vmf_vmm_wait_socket(&vm->h.proc, CH, vm->h.api_sock, START_TIMEOUT_MS, err);
	json_object *ping = NULL, *v;
	if (r == 0)
		r = api(vm, "GET", "vmm.ping", NULL, &ping, API_TIMEOUT_MS, err);
	if (r >= 0) {
		if (ping && json_object_object_get_ex(ping, "version", &v))
			snprintf(vm->h.version, sizeof(vm->h.version), "%s", json_object_get_string(v));
		json_object_put(ping);
		return 0;
	}
	char tail[400];
	vmf_file_tail(vm->h.log, tail, sizeof(tail));
	vmf_error_prefix(err, "VM %s: cloud-hypervisor did not start", cfg->id);
	if (tail[0])
		vmf_error_append(err, "; cloud-hypervisor log: %s", tail);
	kill_now(vm);
	return r;
}

static json_object *
vm_config_json(const struct vmf_vm *vm)
{
	const vmf_vm_config *cfg = vm->h.cfg;
	unsigned maxcpus = cfg->max_vcpus > cfg->vcpus ? cfg->max_vcpus : cfg->vcpus;
	json_object *c = vmf_json_obj(), *payload = vmf_json_obj(), *cpus = vmf_json_obj(), *mem = vmf_json_obj(), *vs = vmf_json_obj(), *ser = vmf_json_obj(),
		    *con = vmf_json_obj();
	vmf_json_set_str(payload, "kernel", cfg->kernel);
	if (cfg->initrd && *cfg->initrd)
		vmf_json_set_str(payload, "initramfs", cfg->initrd);
	vmf_json_set_str(payload, "cmdline", cfg->cmdline && *cfg->cmdline ? cfg->cmdline : "console=ttyS0 panic=-1");
	json_object_object_add(c, "payload", payload);
	vmf_json_set_int(cpus, "boot_vcpus", cfg->vcpus);
	vmf_json_set_int(cpus, "max_vcpus", maxcpus);
	json_object_object_add(c, "cpus", cpus);
	vmf_json_set_int(mem, "size", (int64_t)cfg->memory_mib << 20);
	if (cfg->max_memory_mib > cfg->memory_mib)
		vmf_json_set_int(mem, "hotplug_size", (int64_t)(cfg->max_memory_mib - cfg->memory_mib) << 20);
	json_object_object_add(c, "memory", mem);
	vmf_json_set_int(vs, "cid", VMF_GUEST_CID);
	vmf_json_set_str(vs, "socket", vm->h.vsock);
	json_object_object_add(c, "vsock", vs);
	vmf_json_set_str(ser, "mode", "File");
	vmf_json_set_str(ser, "file", vm->serial);
	json_object_object_add(c, "serial", ser);
	vmf_json_set_str(con, "mode", "Off");
	json_object_object_add(c, "console", con);
	return c;
}

static int
ch_boot(const vmf_vm_config *cfg, struct vmf_vm **out, struct vmf_error *err)
{
	*out = NULL;
	if (!cfg->kernel || !*cfg->kernel || cfg->vcpus == 0 || cfg->memory_mib == 0)
		return vmf_err(err, EINVAL, "VM %s: cloud-hypervisor needs a kernel, vcpus and memory", cfg->id);
	if (cfg->incoming)
		return vmf_err(err, EINVAL, "VM %s: a cloud-hypervisor clone starts with start_from_template",
			       cfg->id);
	struct vmf_vm *vm = vm_new(cfg, err);
	if (!vm)
		return -err->code;
	int r = spawn(vm, err);
	if (r < 0) {
		vm_free(vm);
		return r;
	}
	if (cfg->share_dir && *cfg->share_dir)
		log_vm(VMF_LOG_DEBUG, cfg->id, "cloud-hypervisor driver has no share device; %s not exported",
		       cfg->share_dir);
	r = api_put(vm, "vm.create", vm_config_json(vm), API_TIMEOUT_MS, err);
	if (r == 0)
		r = api_put(vm, "vm.boot", NULL, API_TIMEOUT_MS, err);
	if (r < 0) {
		kill_now(vm);
		vm_free(vm);
		return r;
	}
	log_vm(VMF_LOG_DEBUG, cfg->id, "cloud-hypervisor %s pid %d started", vm->h.version, (int)vm->h.proc.pid);
	*out = vm;
	return 0;
}

static int
ch_pause(struct vmf_vm *vm, struct vmf_error *err)
{
	int r = api_put(vm, "vm.pause", NULL, API_TIMEOUT_MS, err);
	if (r == 0)
		vm->h.paused = true;
	return r;
}

static int
ch_resume(struct vmf_vm *vm, struct vmf_error *err)
{
	int r = api_put(vm, "vm.resume", NULL, API_TIMEOUT_MS, err);
	if (r == 0)
		vm->h.paused = false;
	return r;
}

static int
ch_save_template(struct vmf_vm *vm, int state_fd, bool full, struct vmf_error *err)
{
	if (!full)
		return vmf_err(err, ENOTSUP, "VM %s: template memory sharing is unsupported by cloud-hypervisor "
			       "(its restore copies guest memory into each clone); build the template with "
			       "full memory", vm->h.cfg->id);
	int r;
	if (!vm->h.paused && (r = ch_pause(vm, err)) < 0)
		return r;
	char dir[PATH_MAX], url[PATH_MAX + 8];
	snprintf(dir, sizeof(dir), "%s/%s", vm->h.cfg->run_dir, CH_SNAP_DIR);
	snprintf(url, sizeof(url), "file://%s", dir);
	if (vmf_rm_rf(dir, err) < 0 || vmf_mkdir_p(dir, 0700, err) < 0)
		return -err->code;
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "destination_url", url);
	r = api_put(vm, "vm.snapshot", b, SNAPSHOT_TIMEOUT_MS, err);
	if (r == 0 && (r = vmf_vmm_pack(state_fd, dir, NULL, err)) < 0)
		vmf_error_prefix(err, "VM %s: saving the template state", vm->h.cfg->id);
	struct vmf_error ignored;
	vmf_rm_rf(dir, &ignored);
	return r;
}

/* The snapshot's config names the template's vsock socket and serial file;
 * each clone needs its own, so they are rewritten before restore. */
static int
retarget_config(struct vmf_vm *vm, const char *dir, struct vmf_error *err)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", dir, CH_CONFIG_JSON);
	json_object *c = json_object_from_file(path), *x;
	if (!c)
		return vmf_err(err, EPROTO, "VM %s: the template state holds no readable %s", vm->h.cfg->id,
			       CH_CONFIG_JSON);
	if (json_object_object_get_ex(c, "vsock", &x) && json_object_is_type(x, json_type_object))
		vmf_json_set_str(x, "socket", vm->h.vsock);
	if (json_object_object_get_ex(c, "serial", &x) && json_object_is_type(x, json_type_object))
		vmf_json_set_str(x, "file", vm->serial);
	int r = 0;
	if (json_object_to_file_ext(path, c, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) < 0)
		r = vmf_err(err, EIO, "VM %s: cannot rewrite %s", vm->h.cfg->id, path);
	json_object_put(c);
	return r;
}

static int
ch_start_from_template(const vmf_vm_config *cfg, int state_fd, struct vmf_vm **out, struct vmf_error *err)
{
	*out = NULL;
	if (cfg->memory_mode != VMF__HV__MEMORY_MODE__MEM_FULL)
		return vmf_err(err, ENOTSUP, "VM %s: copy-on-write clones are unsupported by cloud-hypervisor "
			       "(template-share); only full-memory templates can be cloned", cfg->id);
	struct vmf_vm *vm = vm_new(cfg, err);
	if (!vm)
		return -err->code;
	char dir[PATH_MAX], url[PATH_MAX + 8];
	snprintf(dir, sizeof(dir), "%s/%s", cfg->run_dir, CH_SNAP_DIR);
	snprintf(url, sizeof(url), "file://%s", dir);
	int r = 0;
	if (vmf_mkdir_p(cfg->run_dir, 0700, err) < 0 || vmf_vmm_unpack(state_fd, dir, err) < 0)
		r = vmf_error_prefix(err, "VM %s: reading the template state", cfg->id);
	if (r == 0)
		r = retarget_config(vm, dir, err);
	if (r == 0)
		r = spawn(vm, err);
	if (r < 0) {
		vm_free(vm);
		return r;
	}
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "source_url", url);
	vmf_json_set_str(b, "memory_restore_mode", "Copy");
	vmf_json_set_bool(b, "resume", false);
	r = api_put(vm, "vm.restore", b, SNAPSHOT_TIMEOUT_MS, err);
	/* Copy mode has read the memory: the unpacked files are not needed. */
	struct vmf_error ignored;
	vmf_rm_rf(dir, &ignored);
	if (r < 0) {
		vmf_error_prefix(err, "restoring the template snapshot");
		kill_now(vm);
		vm_free(vm);
		return r;
	}
	vm->h.paused = true;
	*out = vm;
	return 0;
}

static int
ch_hotplug_vcpus(struct vmf_vm *vm, unsigned total, struct vmf_error *err)
{
	if (total <= vm->h.vcpus)
		return 0;
	unsigned max = vm->h.cfg->max_vcpus > vm->h.cfg->vcpus ? vm->h.cfg->max_vcpus : vm->h.cfg->vcpus;
	if (total > max)
		return vmf_err(err, ENOSPC, "VM %s: %u vCPUs requested, max_vcpus of the template is %u",
			       vm->h.cfg->id, total, max);
	json_object *b = vmf_json_obj();
	vmf_json_set_int(b, "desired_vcpus", total);
	int r = api_put(vm, "vm.resize", b, API_TIMEOUT_MS, err);
	if (r == 0)
		vm->h.vcpus = total;
	return r;
}

static int
ch_hotplug_memory(struct vmf_vm *vm, unsigned add_mib, struct vmf_error *err)
{
	if (add_mib == 0)
		return 0;
	unsigned max = vm->h.cfg->max_memory_mib;
	if (vm->h.memory_mib + add_mib > max)
		return vmf_err(err, ENOSPC, "VM %s: %u MiB + %u MiB exceeds max memory %u MiB",
			       vm->h.cfg->id, vm->h.memory_mib, add_mib, max);
	json_object *b = vmf_json_obj();
	vmf_json_set_int(b, "desired_ram", (int64_t)(vm->h.memory_mib + add_mib) << 20);
	int r = api_put(vm, "vm.resize", b, API_TIMEOUT_MS, err);
	if (r == 0)
		vm->h.memory_mib += add_mib;
	return r;
}

static int
ch_stop(struct vmf_vm *vm, int timeout_ms, struct vmf_error *err)
{
	(void)err;
	int64_t deadline = vmf_now_ms() + timeout_ms;
	if (!vmf_vmm_exited(&vm->h.proc)) {
		/* vmm.shutdown ends the VMM whatever the guest does. */
		struct vmf_error ignored;
		char path[64] = "/api/v1/vmm.shutdown";
		vmf_vmm_http(CH, vm->h.api_sock, "PUT", path, NULL, NULL, timeout_ms / 3 + 1, &ignored);
		if (!vmf_vmm_wait_exit(&vm->h.proc, vmf_now_ms() + timeout_ms / 3 + 1))
			vmf_vmm_terminate(&vm->h.proc, deadline, CH, vm->h.cfg->id);
	}
	unlink(vm->h.api_sock);
	unlink(vm->h.vsock);
	return 0;
}

static bool
ch_alive(struct vmf_vm *vm)
{
	return !vmf_vmm_exited(&vm->h.proc);
}

static pid_t
ch_pid(const struct vmf_vm *vm)
{
	return vm->h.proc.pid;
}

static unsigned
ch_capabilities(const struct vmf_vm *vm)
{
	(void)vm;
	return CH_CAPS;
}

static int
ch_agent_connect(struct vmf_vm *vm, int timeout_ms, struct vmf_error *err)
{
	return vmf_vmm_vm_agent_connect(&vm->h, timeout_ms, err);
}

static int
ch_watch_fd(struct vmf_vm *vm)
{
	return vm->h.proc.pidfd;
}

static int
ch_serialize(const struct vmf_vm *vm, vmf_hv_state **out, struct vmf_error *err)
{
	return vmf_vmm_vm_serialize(&vm->h, VMF__HV__HYPERVISOR_KIND__HV_CLOUD_HYPERVISOR, out, err);
}

static int
ch_adopt(const vmf_hv_state *st, struct vmf_vm **out, struct vmf_error *err)
{
	*out = NULL;
	int rc = vmf_vmm_adopt_check(st, VMF__HV__HYPERVISOR_KIND__HV_CLOUD_HYPERVISOR, "cloud-hypervisor", err);
	if (rc < 0)
		return rc;
	struct vmf_vm *vm = vm_new(st->config, err);
	if (!vm)
		return -err->code;
	rc = vmf_vmm_vm_adopt(&vm->h, st, "vmm.ping", "version", "vm.info", err);
	if (rc < 0) {
		vm_free(vm);
		return rc;
	}
	*out = vm;
	return 0;
}

static int
ch_probe(const char *binary, struct vmf_hv_info *info, struct vmf_error *err)
{
	memset(info, 0, sizeof(*info));
	const char *bin = binary && *binary ? binary : CH_DEFAULT_BINARY;
	if (strchr(bin, '\''))
		return vmf_err(err, EINVAL, "cloud-hypervisor binary path %s contains a quote", bin);
	char cmd[PATH_MAX + 32];
	snprintf(cmd, sizeof(cmd), "'%s' --version 2>/dev/null", bin);
	FILE *p = popen(cmd, "re");
	if (!p)
		return vmf_err_sys(err, errno, "cannot run %s", bin);
	char line[256] = "";
	char *got = fgets(line, sizeof(line), p);
	int st = pclose(p);
	/* "cloud-hypervisor v41.0.0" */
	const char *v = got ? strstr(line, " v") : NULL;
	if (!v || st != 0)
		return vmf_err(err, ENOENT, "cloud-hypervisor binary %s did not report a version (is it "
			       "installed?)", bin);
	v += 2;
	size_t n = strcspn(v, " \n");
	if (n >= sizeof(info->version))
		n = sizeof(info->version) - 1;
	memcpy(info->version, v, n);
	snprintf(info->accel, sizeof(info->accel), "kvm");
	info->caps = CH_CAPS;
	return 0;
}

static void
ch_release(struct vmf_vm *vm)
{
	vm_free(vm);
}

const struct vmf_hv_ops vmf_cloud_hypervisor_ops = {
	.name = "cloud-hypervisor",
	.kind = VMF__HV__HYPERVISOR_KIND__HV_CLOUD_HYPERVISOR,
	.probe = ch_probe,
	.boot = ch_boot,
	.start_from_template = ch_start_from_template,
	.save_template = ch_save_template,
	.pause = ch_pause,
	.resume = ch_resume,
	.hotplug_vcpus = ch_hotplug_vcpus,
	.hotplug_memory = ch_hotplug_memory,
	.stop = ch_stop,
	.alive = ch_alive,
	.pid = ch_pid,
	.capabilities = ch_capabilities,
	.agent_connect = ch_agent_connect,
	.watch_fd = ch_watch_fd,
	.serialize = ch_serialize,
	.adopt = ch_adopt,
	.release = ch_release,
};
