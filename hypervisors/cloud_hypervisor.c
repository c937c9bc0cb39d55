/* Cloud Hypervisor driver: the process runs `cloud-hypervisor --api-socket
 * path=PATH` and is driven over its REST API (/api/v1/vm.*, vmm.*).  Follows
 * the published API document (cloud-hypervisor.yaml, OpenAPI 3.0.1, at
 * ae44c297), which tests/fake_vmm.c enforces.
 *
 * Snapshots: vm.snapshot writes config, device state and all guest memory
 * into a directory; vm.restore reads it back, copying memory into the new
 * process (memory_restore_mode Copy, or faulting it in privately with
 * OnDemand).  Either way a clone's RAM is its own: Cloud Hypervisor cannot
 * share a template's memory between clones, so this driver only builds
 * full-memory templates and does not claim template-share.  vCPUs and memory
 * are resized with vm.resize (the VM is created with max_vcpus and a
 * hotplug_size). */
#include "vmm_rest.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "util.h"

#define CH_API_SOCK "ch.sock"
#define CH_SERIAL_LOG "serial.log"
#define CH_CONFIG_JSON "config.json"
#define CH_CAPS (VMF_CAP_CPU_HOTPLUG | VMF_CAP_MEM_HOTPLUG | VMF_CAP_FULL_SNAPSHOT)

static int
ch_request_pause(struct vmf_vmm *vm, bool paused, struct vmf_error *err)
{
	return vmf_rest_send(vm, "PUT", paused ? "vm.pause" : "vm.resume", NULL, VMF_REST_API_TIMEOUT_MS, err);
}

static void
ch_argv(const struct vmf_vmm *vm, const char *bin, char *arg, size_t n, char **argv)
{
	snprintf(arg, n, "path=%s", vm->api_sock);
	argv[0] = (char *)bin;
	argv[1] = "--api-socket";
	argv[2] = arg;
}

/* vmm.shutdown ends the VMM whatever the guest does. */
static bool
ch_ask_exit(struct vmf_vmm *vm, int timeout_ms)
{
	struct vmf_error ignored;
	vmf_rest_send(vm, "PUT", "vmm.shutdown", NULL, timeout_ms, &ignored);
	return true;
}

static int ch_read_disks(struct vmf_vmm *vm, struct vmf_error *err);

static const struct vmf_rest_vmm ch = {
	.name = "cloud-hypervisor",
	.kind = VMF__HV__HYPERVISOR_KIND__HV_CLOUD_HYPERVISOR,
	.api_prefix = "/api/v1/",
	.api_sock = CH_API_SOCK,
	.log = "cloud-hypervisor.log",
	.version_path = "vmm.ping",
	.version_key = "version",
	.info_path = "vm.info",
	.argv = ch_argv,
	.request_pause = ch_request_pause,
	.ask_exit = ch_ask_exit,
	.read_disks = ch_read_disks,
};

/* vm.info's config lists the added disks (ids vmfdN). */
static int
ch_read_disks(struct vmf_vmm *vm, struct vmf_error *err)
{
	json_object *info = NULL, *c, *disks;
	int r = vmf_rest_get(vm, "vm.info", &info, err);
	if (r < 0)
		return r;
	vm->disks = 0;
	if (json_object_object_get_ex(info, "config", &c) && json_object_object_get_ex(c, "disks", &disks) &&
	    json_object_is_type(disks, json_type_array))
		for (size_t i = 0; i < json_object_array_length(disks); i++) {
			json_object *x, *d = json_object_array_get_idx(disks, i);
			const char *id = json_object_object_get_ex(d, "id", &x) ? json_object_get_string(x) : "";
			unsigned slot;
			char end;
			if (id && sscanf(id, "vmfd%u%c", &slot, &end) == 1 && slot < 32)
				vm->disks |= 1u << slot;
		}
	json_object_put(info);
	return 0;
}

/* PUT with an optional body, which is consumed. */
static int
api_put(struct vmf_vmm *vm, const char *endpoint, json_object *body, int timeout_ms, struct vmf_error *err)
{
	return vmf_rest_send(vm, "PUT", endpoint, body, timeout_ms, err);
}

static void
serial_path(const struct vmf_vmm *vm, char *path)
{
	snprintf(path, PATH_MAX, "%s/%s", vm->cfg->run_dir, CH_SERIAL_LOG);
}

static json_object *
vm_config_json(const struct vmf_vmm *vm)
{
	const vmf_vm_config *cfg = vm->cfg;
	unsigned maxcpus = cfg->max_vcpus > cfg->vcpus ? cfg->max_vcpus : cfg->vcpus;
	char serial[PATH_MAX];
	serial_path(vm, serial);
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
	vmf_json_set_str(vs, "socket", vm->vsock);
	json_object_object_add(c, "vsock", vs);
	vmf_json_set_str(ser, "mode", "File");
	vmf_json_set_str(ser, "file", serial);
	json_object_object_add(c, "serial", ser);
	vmf_json_set_str(con, "mode", "Off");
	json_object_object_add(c, "console", con);
	return c;
}

static int
ch_boot(const vmf_vm_config *cfg, struct vmf_vmm **out, struct vmf_error *err)
{
	struct vmf_vmm *vm;
	int r = vmf_rest_boot_start(&ch, cfg, &vm, err);
	if (r < 0)
		return r;
	r = api_put(vm, "vm.create", vm_config_json(vm), VMF_REST_API_TIMEOUT_MS, err);
	if (r == 0)
		r = api_put(vm, "vm.boot", NULL, VMF_REST_API_TIMEOUT_MS, err);
	if (r < 0) {
		vmf_rest_abort(vm);
		return r;
	}
	log_vm(VMF_LOG_DEBUG, cfg->id, "cloud-hypervisor %s pid %d started", vm->version, (int)vm->proc.pid);
	*out = vm;
	return 0;
}

/* vm.snapshot of the paused VM into the run dir's snapshot directory. */
static int
snapshot_to_dir(struct vmf_vmm *vm, char *dir, struct vmf_error *err)
{
	char url[PATH_MAX + 8];
	int r = vmf_rest_snap_begin(vm, dir, err);
	if (r < 0)
		return r;
	snprintf(url, sizeof(url), "file://%s", dir);
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "destination_url", url);
	r = api_put(vm, "vm.snapshot", b, VMF_REST_SNAPSHOT_TIMEOUT_MS, err);
	if (r < 0) {
		struct vmf_error ignored;
		vmf_rm_rf(dir, &ignored);
	}
	return r;
}

static int
ch_save_template(struct vmf_vmm *vm, int state_fd, bool full, struct vmf_error *err)
{
	if (!full)
		return vmf_err(err, ENOTSUP, "VM %s: template memory sharing is unsupported by cloud-hypervisor "
			       "(its restore copies guest memory into each clone); build the template with "
			       "full memory", vm->cfg->id);
	char dir[PATH_MAX];
	int r = snapshot_to_dir(vm, dir, err);
	return r < 0 ? r : vmf_rest_snap_pack(vm, state_fd, dir, NULL, err);
}

/* The saved config's disks (vm.add-disk's, ids vmfdN) must be the ones
 * parts give; each path becomes the descriptor the daemon reopened, as
 * /proc/<daemon>/fd/N (the saved one named a descriptor closed since).
 * Cloud Hypervisor opens them at vm.restore. */
static int
retarget_disks(struct vmf_vmm *vm, json_object *c, const struct vmf_restore_parts *parts, unsigned *given,
	       struct vmf_error *err)
{
	const char *id = vm->cfg->id;
	json_object *disks = NULL;
	size_t n = json_object_object_get_ex(c, "disks", &disks) && json_object_is_type(disks, json_type_array)
			   ? json_object_array_length(disks)
			   : 0;
	unsigned saved = 0, slots[32];
	if (n > 32)
		return vmf_err(err, EPROTO, "VM %s: the saved state has %zu disks, more than vmfactory attaches", id, n);
	for (size_t i = 0; i < n; i++) {
		json_object *x;
		const char *did = json_object_object_get_ex(json_object_array_get_idx(disks, i), "id", &x)
					  ? json_object_get_string(x)
					  : NULL;
		char end;
		if (!did || sscanf(did, "vmfd%u%c", &slots[i], &end) != 1 || slots[i] >= 32)
			return vmf_err(err, EPROTO, "VM %s: the saved state has a disk %s that vmfactory did not attach",
				       id, did ? did : "without an id");
		saved |= 1u << slots[i];
	}
	int r = vmf_rest_match_disks(vm, saved, parts, given, err);
	for (size_t i = 0; r == 0 && i < n; i++)
		for (size_t j = 0; j < parts->n_disks; j++)
			if (parts->disks[j].slot == slots[i]) {
				char path[VMF_REST_FD_PATH_MAX];
				vmf_rest_fd_path(parts->disks[j].fd, path);
				vmf_json_set_str(json_object_array_get_idx(disks, i), "path", path);
			}
	return r;
}

/* The snapshot's config names the template's vsock socket and serial file;
 * each clone needs its own, so they are rewritten before restore, and so
 * are the disks' paths (retarget_disks; parts NULL: none). */
static int
retarget_config(struct vmf_vmm *vm, const char *dir, const struct vmf_restore_parts *parts, unsigned *given,
		struct vmf_error *err)
{
	char path[PATH_MAX], serial[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", dir, CH_CONFIG_JSON);
	serial_path(vm, serial);
	json_object *c = json_object_from_file(path), *x;
	if (!c)
		return vmf_err(err, EPROTO, "VM %s: the template state holds no readable %s", vm->cfg->id,
			       CH_CONFIG_JSON);
	if (json_object_object_get_ex(c, "vsock", &x) && json_object_is_type(x, json_type_object))
		vmf_json_set_str(x, "socket", vm->vsock);
	if (json_object_object_get_ex(c, "serial", &x) && json_object_is_type(x, json_type_object))
		vmf_json_set_str(x, "file", serial);
	int r = retarget_disks(vm, c, parts, given, err);
	if (r < 0) {
		json_object_put(c);
		return r;
	}
	if (json_object_to_file_ext(path, c, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) < 0)
		r = vmf_err(err, EIO, "VM %s: cannot rewrite %s", vm->cfg->id, path);
	json_object_put(c);
	return r;
}

/* vm.restore from dir, paused; Copy mode has read the memory, so the
 * unpacked files go whatever the outcome. */
static int
restore_from(struct vmf_vmm *vm, const char *dir, struct vmf_error *err)
{
	char url[PATH_MAX + 8];
	snprintf(url, sizeof(url), "file://%s", dir);
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "source_url", url);
	vmf_json_set_str(b, "memory_restore_mode", "Copy");
	vmf_json_set_bool(b, "resume", false);
	int r = api_put(vm, "vm.restore", b, VMF_REST_SNAPSHOT_TIMEOUT_MS, err);
	struct vmf_error ignored;
	vmf_rm_rf(dir, &ignored);
	if (r == 0)
		vm->paused = true;
	return r;
}

static int
ch_start_from_template(const vmf_vm_config *cfg, int state_fd, struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	if (cfg->memory_mode != VMF__HV__MEMORY_MODE__MEM_FULL)
		return vmf_err(err, ENOTSUP, "VM %s: copy-on-write clones are unsupported by cloud-hypervisor "
			       "(template-share); only full-memory templates can be cloned", cfg->id);
	struct vmf_vmm *vm;
	int r = vmf_rest_new(&ch, cfg, &vm, err);
	if (r < 0)
		return r;
	char dir[PATH_MAX];
	unsigned no_disks;
	r = vmf_rest_snap_unpack(vm, state_fd, dir, err);
	if (r == 0)
		r = retarget_config(vm, dir, NULL, &no_disks, err);
	if (r == 0)
		r = vmf_rest_spawn(vm, err);
	if (r < 0) {
		vmf_rest_release(vm);
		return r;
	}
	r = restore_from(vm, dir, err);
	if (r < 0) {
		vmf_error_prefix(err, "restoring the template snapshot");
		vmf_rest_abort(vm);
		return r;
	}
	vm->paused = true;
	*out = vm;
	return 0;
}

/* Suspend: vm.snapshot writes config (as resized: boot_vcpus, the
 * hotplugged memory), device state and all guest memory; the directory
 * goes into the stream.  The VM stays paused. */
static int
ch_save_state(struct vmf_vmm *vm, int state_fd, struct vmf_error *err)
{
	char dir[PATH_MAX];
	int r = snapshot_to_dir(vm, dir, err);
	if (r == 0)
		r = vmf_rest_snap_pack(vm, state_fd, dir, NULL, err);
	return r < 0 ? vmf_error_prefix(err, "suspending VM %s", vm->cfg->id) : 0;
}

/* Resume: the saved directory, its config retargeted to this VM's sockets
 * and to the disks' reopened descriptors, vm.restore'd (Copy) into a fresh
 * process; the config brings back the vCPUs and memory it was resized to,
 * and the disks. */
static int
ch_restore_state_with(const vmf_hv_state *st, int state_fd, const struct vmf_restore_parts *parts,
		      struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	if (parts && parts->net)
		return vmf_err(err, ENOTSUP, "VM %s: cloud-hypervisor keeps no network backend across a suspend",
			       st->config ? st->config->id : "?");
	struct vmf_vmm *vm;
	char dir[PATH_MAX];
	unsigned given = 0;
	int r = vmf_rest_restore_begin(&ch, st, state_fd, &vm, dir, err);
	if (r < 0)
		return r;
	if ((r = retarget_config(vm, dir, parts, &given, err)) == 0)
		r = vmf_rest_spawn(vm, err);
	if (r < 0) {
		struct vmf_error ignored;
		vmf_rm_rf(dir, &ignored);
		vmf_rest_release(vm);
		return r;
	}
	r = restore_from(vm, dir, err);
	if (r < 0) {
		vmf_error_prefix(err, "resuming VM %s from its saved state", st->config->id);
		vmf_rest_abort(vm);
		return r;
	}
	vm->disks = given;
	*out = vm;
	return 0;
}

static int
ch_restore_state(const vmf_hv_state *st, int state_fd, struct vmf_vmm **out, struct vmf_error *err)
{
	return ch_restore_state_with(st, state_fd, NULL, out, err);
}

/* Into a template: Cloud Hypervisor has no template-share, so the new
 * template is a full-memory one: the whole snapshot directory goes into the
 * stream and nothing to to->cfg->memory_file.  Its config.json is the
 * resized one, so clones get the vCPUs and memory the VM was grown by
 * without hotplugged_vcpus or dimms in res. */
static int
ch_snapshot(struct vmf_vmm *vm, const struct vmf_snapshot_to *to, int state_fd, struct vmf_snapshot_result *res,
	    struct vmf_error *err)
{
	(void)to;
	res->method = "cloud-hypervisor-vm.snapshot";
	int r = vmf_rest_no_disks(vm, "a snapshot", err);
	if (r < 0)
		return r;
	bool was_running = !vm->paused;
	int64_t t0 = vmf_now_ms();
	char dir[PATH_MAX];
	r = snapshot_to_dir(vm, dir, err);
	if (r == 0)
		r = vmf_rest_snap_pack(vm, state_fd, dir, NULL, err);
	struct vmf_error e2 = {0};
	if (was_running && vmf_rest_resume(vm, &e2) < 0 && r == 0)
		r = vmf_err(err, e2.code, "%s", e2.msg);
	res->paused_ms = (uint64_t)(vmf_now_ms() - t0);
	return r;
}

static int
ch_hotplug_vcpus(struct vmf_vmm *vm, unsigned total, struct vmf_error *err)
{
	if (total <= vm->vcpus)
		return 0;
	unsigned max = vm->cfg->max_vcpus > vm->cfg->vcpus ? vm->cfg->max_vcpus : vm->cfg->vcpus;
	if (total > max)
		return vmf_err(err, ENOSPC, "VM %s: %u vCPUs requested, max_vcpus of the template is %u",
			       vm->cfg->id, total, max);
	json_object *b = vmf_json_obj();
	vmf_json_set_int(b, "desired_vcpus", total);
	int r = api_put(vm, "vm.resize", b, VMF_REST_API_TIMEOUT_MS, err);
	if (r == 0)
		vm->vcpus = total;
	return r;
}

static int
ch_hotplug_memory(struct vmf_vmm *vm, unsigned add_mib, struct vmf_error *err)
{
	if (add_mib == 0)
		return 0;
	int r = vmf_hotplug_mem_check(vm->cfg, vm->memory_mib, add_mib, err);
	if (r < 0)
		return r;
	json_object *b = vmf_json_obj();
	vmf_json_set_int(b, "desired_ram", (int64_t)(vm->memory_mib + add_mib) << 20);
	r = api_put(vm, "vm.resize", b, VMF_REST_API_TIMEOUT_MS, err);
	if (r == 0)
		vm->memory_mib += add_mib;
	return r;
}

/* Disks: vm.add-disk (virtio-blk, serial d->serial, id vmfdN) and
 * vm.remove-device.  Cloud Hypervisor opens a path, not a descriptor: it
 * gets the daemon's open descriptor as /proc/<daemon>/fd/N, which reopens
 * the very file the daemon checked (a path swapped since cannot matter);
 * the caller keeps fd open until this returns. */
static int
ch_attach_disk(struct vmf_vmm *vm, const struct vmf_disk_spec *d, struct vmf_error *err)
{
	if (d->backing_fd >= 0)
		return vmf_err(err, ENOTSUP, "VM %s: cloud-hypervisor takes no copy-on-write disk", vm->cfg->id);
	char path[VMF_REST_FD_PATH_MAX], id[24];
	vmf_rest_fd_path(d->fd, path);
	snprintf(id, sizeof(id), "vmfd%u", d->slot);
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "path", path);
	vmf_json_set_bool(b, "readonly", d->read_only);
	vmf_json_set_str(b, "id", id);
	vmf_json_set_str(b, "serial", d->serial);
	vmf_json_set_str(b, "image_type", strcmp(d->format, "qcow2") == 0 ? "Qcow2" : "Raw");
	int r = api_put(vm, "vm.add-disk", b, VMF_REST_API_TIMEOUT_MS, err);
	if (r < 0)
		return vmf_error_prefix(err, "attaching disk %s", id);
	vm->disks |= 1u << d->slot;
	return 0;
}

static int
ch_detach_disk(struct vmf_vmm *vm, unsigned slot, struct vmf_error *err)
{
	char id[24];
	snprintf(id, sizeof(id), "vmfd%u", slot);
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "id", id);
	struct vmf_error e = {0};
	int r = api_put(vm, "vm.remove-device", b, VMF_REST_API_TIMEOUT_MS, &e);
	/* Not there (a half-done attach): nothing to remove. */
	if (r < 0 && !strstr(e.msg, "HTTP 404")) {
		*err = e;
		return vmf_error_prefix(err, "detaching disk %s", id);
	}
	vm->disks &= ~(1u << slot);
	return 0;
}

static unsigned
ch_capabilities(const struct vmf_vmm *vm)
{
	(void)vm;
	return CH_CAPS;
}

static int
ch_adopt(const vmf_hv_state *st, struct vmf_vmm **out, struct vmf_error *err)
{
	return vmf_rest_adopt(&ch, st, out, err);
}

static int
ch_probe(const char *binary, const char *kernel, const char *state_dir, struct vmf_hv_info *info,
	 struct vmf_error *err)
{
	(void)kernel;
	(void)state_dir;
	int r = vmf_rest_probe(&ch, binary, info, err);
	if (r == 0)
		info->caps = CH_CAPS;
	return r;
}

const struct vmf_hv_ops vmf_cloud_hypervisor_ops = {
	.name = "cloud-hypervisor",
	.kind = VMF__HV__HYPERVISOR_KIND__HV_CLOUD_HYPERVISOR,
	.control_socket = CH_API_SOCK,
	.sandbox_control_socket = CH_API_SOCK,
	.agent_socket = VMF_REST_VSOCK,
	.agent_transport = "hybrid-vsock",
	.agent_vsock_port = VMF_AGENT_VSOCK_PORT,
	.probe = ch_probe,
	.boot = ch_boot,
	.start_from_template = ch_start_from_template,
	.save_template = ch_save_template,
	.snapshot = ch_snapshot,
	.save_state = ch_save_state,
	.restore_state = ch_restore_state,
	.restore_state_with = ch_restore_state_with,
	.pause = vmf_rest_pause,
	.resume = vmf_rest_resume,
	.hotplug_vcpus = ch_hotplug_vcpus,
	.hotplug_memory = ch_hotplug_memory,
	.stop = vmf_rest_stop,
	.alive = vmf_rest_alive,
	.pid = vmf_rest_pid,
	.capabilities = ch_capabilities,
	.agent_connect = vmf_rest_agent_connect,
	.watch_fd = vmf_rest_watch_fd,
	.exit_info = vmf_rest_exit_info,
	.serialize = vmf_rest_serialize,
	.adopt = ch_adopt,
	.attach_disk = ch_attach_disk,
	.detach_disk = ch_detach_disk,
	.release = vmf_rest_release,
};

const struct vmf_rest_vmm *const vmf_rest_cloud_hypervisor = &ch;
