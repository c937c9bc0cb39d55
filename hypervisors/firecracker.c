/* Firecracker driver: the process runs `firecracker --api-sock PATH --id ID`
 * and is configured over its REST API (HTTP/1.1 on the unix socket, see
 * vmm_http.c).  Follows the published API document 1.17.0-dev
 * (firecracker.yaml at 81b38b9d), which tests/fake_vmm.c enforces.
 *
 * Templates are Full snapshots of a paused VM: the guest memory goes to the
 * template's memory file, the device state into the state stream.  A clone
 * is a fresh process that loads the snapshot with a File memory backend,
 * which Firecracker maps privately: clones share the file's page-cache pages
 * copy-on-write.  Firecracker cannot add vCPUs to a running VM; memory can
 * be added through its virtio-mem device (/hotplug/memory) on versions that
 * have it. */
#include "vmm_rest.h"

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

#define FC_API_SOCK "firecracker.sock"
#define FC_VMSTATE "vmstate"
#define FC_MEMORY "memory"
/* Placeholder drives vmfd0..vmfdN-1 (disks, see attach_disk): the first
 * FC_DISKS_RW read-write, the rest read-only.  Each is backed by an empty
 * file named relative to the VMM's working directory, its run dir. */
#define FC_DISKS 4
#define FC_DISKS_RW 2
#define FC_DISK_DEVICE "virtio-blk:vmfd0-1-rw,vmfd2-3-ro,empty-placeholders"
/* In a suspended VM's snapshot directory: which slots had a disk (the
 * vmstate is Firecracker's own format, so the driver records it). */
#define FC_DISKS_FILE "vmf-disks"
/* First API version with /hotplug/memory. */
#define HOTPLUG_MIN_MAJOR 1
#define HOTPLUG_MIN_MINOR 17
/* The API document the driver follows (capabilities without a running VMM
 * assume it). */
#define FC_API_VERSION "1.17.0"

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

/* Whether the VM has the virtio-mem region: boot configures it (and fails
 * if it cannot) exactly when this holds. */
static bool
mem_hotplug(const struct vmf_vmm *vm)
{
	return vm->cfg->max_memory_mib > vm->cfg->memory_mib && (caps_for_version(vm->version) & VMF_CAP_MEM_HOTPLUG);
}

static int
api_put(struct vmf_vmm *vm, const char *method, const char *path, json_object *body, struct vmf_error *err)
{
	return vmf_rest_send(vm, method, path, body, VMF_REST_API_TIMEOUT_MS, err);
}

static int
fc_request_pause(struct vmf_vmm *vm, bool paused, struct vmf_error *err)
{
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "state", paused ? "Paused" : "Resumed");
	return api_put(vm, "PATCH", "/vm", b, err);
}

/* --id is how restart recovery recognises our process (with the socket). */
static void
fc_argv(const struct vmf_vmm *vm, const char *bin, char *arg, size_t n, char **argv)
{
	(void)arg, (void)n;
	argv[0] = (char *)bin;
	argv[1] = "--api-sock";
	argv[2] = (char *)vm->api_sock;
	argv[3] = "--id";
	argv[4] = vm->cfg->id;
}

/* SendCtrlAltDel asks the guest to reboot, which Firecracker turns into its
 * own exit (reboot=k); a paused or hung guest ignores it. */
static bool
fc_ask_exit(struct vmf_vmm *vm, int timeout_ms)
{
	if (vm->paused)
		return false;
	struct vmf_error ignored;
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "action_type", "SendCtrlAltDel");
	vmf_rest_send(vm, "PUT", "/actions", b, timeout_ms, &ignored);
	return true;
}

/* Drive id (the serial the guest sees: virtio-blk's GET_ID answers the
 * drive id) and placeholder file of slot i. */
static void
placeholder(unsigned i, char id[16], char path[32])
{
	snprintf(id, 16, "vmfd%u", i);
	snprintf(path, 32, "vmfd%u.empty", i);
}

/* An attached disk's path_on_host: a symlink, relative to the run dir
 * (the VMM's working directory), to the daemon's descriptor as
 * /proc/<daemon>/fd/N.  Firecracker opens it when the PATCH or a snapshot
 * load names it, and a snapshot records the name, not the descriptor, so a
 * resume points the same name at the descriptor the daemon reopened (see
 * fc_restore_state_with).  The link is removed once the VMM has opened it. */
static int
disk_link(struct vmf_vmm *vm, unsigned slot, int fd, char name[32], struct vmf_error *err)
{
	char link[PATH_MAX], target[VMF_REST_FD_PATH_MAX];
	snprintf(name, 32, "vmfd%u.disk", slot);
	snprintf(link, sizeof(link), "%s/%s", vm->cfg->run_dir, name);
	vmf_rest_fd_path(fd, target);
	if ((unlink(link) < 0 && errno != ENOENT) || symlink(target, link) < 0)
		return vmf_err_sys(err, errno, "VM %s: cannot link %s to the disk's descriptor", vm->cfg->id, link);
	return 0;
}

static void
disk_unlink(struct vmf_vmm *vm, unsigned slot)
{
	char link[PATH_MAX];
	snprintf(link, sizeof(link), "%s/vmfd%u.disk", vm->cfg->run_dir, slot);
	unlink(link);
}

/* The empty files behind the placeholder drives, in the run dir: made
 * before boot, which opens them, and before every snapshot load, since the
 * snapshot names them relative to the VMM's working directory. */
static int
make_placeholders(struct vmf_vmm *vm, struct vmf_error *err)
{
	for (unsigned i = 0; i < FC_DISKS; i++) {
		char id[16], name[32];
		placeholder(i, id, name);
		int fd = vmf_open_beneath(vm->cfg->run_dir, name, O_WRONLY | O_CREAT | O_TRUNC, 0600, err);
		if (fd < 0)
			return vmf_error_prefix(err, "VM %s: placeholder drive %s", vm->cfg->id, id);
		close(fd);
	}
	return 0;
}

/* The drives PATCHed to a disk's link (vmfdN.disk) are the attached
 * ones; the others have their placeholder. */
static int
fc_read_disks(struct vmf_vmm *vm, struct vmf_error *err)
{
	json_object *c = NULL, *drives;
	int r = vmf_rest_get(vm, "/vm/config", &c, err);
	if (r < 0)
		return r;
	vm->disks = 0;
	if (json_object_object_get_ex(c, "drives", &drives) && json_object_is_type(drives, json_type_array))
		for (size_t i = 0; i < json_object_array_length(drives); i++) {
			json_object *x, *d = json_object_array_get_idx(drives, i);
			const char *p = json_object_object_get_ex(d, "path_on_host", &x) ? json_object_get_string(x) : "";
			unsigned slot;
			char end[8];
			if (p && sscanf(p, "vmfd%u.%7s", &slot, end) == 2 && strcmp(end, "disk") == 0 && slot < FC_DISKS)
				vm->disks |= 1u << slot;
		}
	json_object_put(c);
	return 0;
}

static const struct vmf_rest_vmm fc = {
	.name = "firecracker",
	.kind = VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER,
	.api_prefix = "",
	.api_sock = FC_API_SOCK,
	.log = "firecracker.log",
	.version_path = "/version",
	.version_key = "firecracker_version",
	.info_path = "/",
	.argv = fc_argv,
	.request_pause = fc_request_pause,
	.ask_exit = fc_ask_exit,
	.read_disks = fc_read_disks,
};

static int
fc_boot(const vmf_vm_config *cfg, struct vmf_vmm **out, struct vmf_error *err)
{
	struct vmf_vmm *vm;
	int r = vmf_rest_boot_start(&fc, cfg, &vm, err);
	if (r < 0)
		return r;
	if (cfg->max_vcpus > cfg->vcpus)
		log_vm(VMF_LOG_INFO, cfg->id, "firecracker cannot hot-add vCPUs: max_vcpus %u is not usable",
		       cfg->max_vcpus);
	r = make_placeholders(vm, err);
	json_object *b = vmf_json_obj();
	vmf_json_set_int(b, "vcpu_count", cfg->vcpus);
	vmf_json_set_int(b, "mem_size_mib", cfg->memory_mib);
	if (r == 0)
		r = api_put(vm, "PUT", "/machine-config", b, err);
	else
		json_object_put(b);
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
		vmf_json_set_str(b, "uds_path", vm->vsock);
		r = api_put(vm, "PUT", "/vsock", b, err);
	}
	if (r == 0 && mem_hotplug(vm)) {
		b = vmf_json_obj();
		vmf_json_set_int(b, "total_size_mib", cfg->max_memory_mib - cfg->memory_mib);
		r = api_put(vm, "PUT", "/hotplug/memory", b, err);
	}
	for (unsigned i = 0; r == 0 && i < FC_DISKS; i++) {
		char id[16], path[32];
		placeholder(i, id, path);
		b = vmf_json_obj();
		vmf_json_set_str(b, "drive_id", id);
		vmf_json_set_bool(b, "is_root_device", false);
		vmf_json_set_bool(b, "is_read_only", i >= FC_DISKS_RW);
		vmf_json_set_str(b, "path_on_host", path);
		char ep[32];
		snprintf(ep, sizeof(ep), "/drives/%s", id);
		r = api_put(vm, "PUT", ep, b, err);
	}
	if (r == 0) {
		b = vmf_json_obj();
		vmf_json_set_str(b, "action_type", "InstanceStart");
		r = api_put(vm, "PUT", "/actions", b, err);
	}
	if (r < 0) {
		vmf_rest_abort(vm);
		return r;
	}
	log_vm(VMF_LOG_DEBUG, cfg->id, "firecracker %s pid %d started", vm->version, (int)vm->proc.pid);
	*out = vm;
	return 0;
}

static const char *const with_mem[] = { FC_VMSTATE, FC_MEMORY, NULL };
static const char *const state_only[] = { FC_VMSTATE, NULL };

/* The snapshot's files in dir: the vmstate, and the memory image unless
 * the template's memory file holds it. */
static void
snap_paths(const vmf_vm_config *cfg, const char *dir, bool full, char *vmstate, char *mem)
{
	snprintf(vmstate, PATH_MAX, "%s/%s", dir, FC_VMSTATE);
	if (full)
		snprintf(mem, PATH_MAX, "%s/%s", dir, FC_MEMORY);
	else
		snprintf(mem, PATH_MAX, "%s", cfg->memory_file);
}

/* File backend: Firecracker maps the memory file MAP_PRIVATE, so every
 * clone of a template shares its unmodified pages (and a resumed VM's
 * file stays mapped even once unlinked). */
static int
load_snapshot(struct vmf_vmm *vm, const char *vmstate, const char *mem, struct vmf_error *err)
{
	json_object *b = vmf_json_obj(), *be = vmf_json_obj(), *vo = vmf_json_obj();
	vmf_json_set_str(b, "snapshot_path", vmstate);
	vmf_json_set_str(be, "backend_type", "File");
	vmf_json_set_str(be, "backend_path", mem);
	json_object_object_add(b, "mem_backend", be);
	vmf_json_set_bool(b, "resume_vm", false);
	/* The snapshot names the template's vsock socket; each clone has its own. */
	vmf_json_set_str(vo, "uds_path", vm->vsock);
	json_object_object_add(b, "vsock_override", vo);
	return vmf_rest_send(vm, "PUT", "/snapshot/load", b, VMF_REST_SNAPSHOT_TIMEOUT_MS, err);
}

static int
create_snapshot(struct vmf_vmm *vm, const char *vmstate, const char *mem, struct vmf_error *err)
{
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "snapshot_type", "Full");
	vmf_json_set_str(b, "snapshot_path", vmstate);
	vmf_json_set_str(b, "mem_file_path", mem);
	return vmf_rest_send(vm, "PUT", "/snapshot/create", b, VMF_REST_SNAPSHOT_TIMEOUT_MS, err);
}

/* Full snapshot of the paused VM: memory to the template's memory file (or,
 * for full templates, into the stream), vmstate into the stream. */
static int
fc_save_template(struct vmf_vmm *vm, int state_fd, bool full, struct vmf_error *err)
{
	const vmf_vm_config *cfg = vm->cfg;
	if (!full && (!cfg->memory_file || cfg->memory_file[0] != '/'))
		return vmf_err(err, EINVAL, "VM %s: a shared firecracker template needs an absolute memory "
			       "file", cfg->id);
	char dir[PATH_MAX], vmstate[PATH_MAX], mem[PATH_MAX];
	int r = vmf_rest_snap_begin(vm, dir, err);
	if (r < 0)
		return r;
	snap_paths(cfg, dir, full, vmstate, mem);
	r = create_snapshot(vm, vmstate, mem, err);
	if (r == 0)
		r = vmf_rest_snap_pack(vm, state_fd, dir, full ? with_mem : state_only, err);
	return r;
}

static int
fc_start_from_template(const vmf_vm_config *cfg, int state_fd, struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	bool full = cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_FULL;
	if (!full && (cfg->memory_mode != VMF__HV__MEMORY_MODE__MEM_CLONE_COW || !cfg->memory_file ||
		      cfg->memory_file[0] != '/'))
		return vmf_err(err, EINVAL, "VM %s: a firecracker clone needs MEM_FULL or MEM_CLONE_COW with "
			       "an absolute memory file", cfg->id);
	struct vmf_vmm *vm;
	int r = vmf_rest_new(&fc, cfg, &vm, err);
	if (r < 0)
		return r;
	char dir[PATH_MAX], vmstate[PATH_MAX], mem[PATH_MAX];
	r = vmf_rest_snap_unpack(vm, state_fd, dir, err);
	snap_paths(cfg, dir, full, vmstate, mem);
	struct stat st;
	if (r == 0 && stat(vmstate, &st) < 0)
		r = vmf_err(err, EPROTO, "VM %s: the template state holds no firecracker vmstate", cfg->id);
	if (r == 0 && full && stat(mem, &st) < 0)
		r = vmf_err(err, EPROTO, "VM %s: the full template state holds no memory image", cfg->id);
	if (r == 0)
		r = make_placeholders(vm, err);
	if (r == 0)
		r = vmf_rest_spawn(vm, err);
	if (r < 0) {
		vmf_rest_release(vm);
		return r;
	}
	r = load_snapshot(vm, vmstate, mem, err);
	if (r < 0) {
		vmf_error_prefix(err, "loading the template snapshot");
		vmf_rest_abort(vm);
		return r;
	}
	if (!full) {
		/* The vmstate was read at load; the memory file is the template's. */
		unlink(vmstate);
		rmdir(dir);
	}
	vm->paused = true;
	*out = vm;
	return 0;
}

/* Suspend: a Full snapshot with the memory in the run dir's snapshot
 * directory (all of it: the File backend of a clone is a private mapping,
 * and a Full snapshot writes every page, the virtio-mem region included),
 * both files into the stream with the slots that have a disk.  The VM
 * stays paused. */
static int
fc_save_state(struct vmf_vmm *vm, int state_fd, struct vmf_error *err)
{
	static const char *const saved[] = { FC_VMSTATE, FC_MEMORY, FC_DISKS_FILE, NULL };
	char dir[PATH_MAX], vmstate[PATH_MAX], mem[PATH_MAX], disks[PATH_MAX + 16], mask[16];
	int r = vmf_rest_snap_begin(vm, dir, err);
	if (r < 0)
		return r;
	snap_paths(vm->cfg, dir, true, vmstate, mem);
	snprintf(disks, sizeof(disks), "%s/%s", dir, FC_DISKS_FILE);
	snprintf(mask, sizeof(mask), "%u\n", vm->disks);
	errno = 0;
	FILE *f = fopen(disks, "we");
	bool ok = f && fputs(mask, f) >= 0;
	if (f && fclose(f) != 0)
		ok = false;
	if (!ok)
		r = vmf_err_sys(err, errno ? errno : EIO, "VM %s: cannot write %s", vm->cfg->id, disks);
	if (r == 0)
		r = create_snapshot(vm, vmstate, mem, err);
	if (r == 0)
		return vmf_rest_snap_pack(vm, state_fd, dir, saved, err);
	struct vmf_error ignored;
	vmf_rm_rf(dir, &ignored);
	return vmf_error_prefix(err, "suspending VM %s", vm->cfg->id);
}

static int fc_check_disk(const struct vmf_vmm *vm, const struct vmf_disk_spec *d, struct vmf_error *err);

/* The slots parts give must be the ones the saved VM had (its vmstate
 * names their drives' links; a state saved before disks were recorded had
 * none). */
static int
check_saved_disks(struct vmf_vmm *vm, const char *dir, const struct vmf_restore_parts *parts, unsigned *given,
		  struct vmf_error *err)
{
	char path[PATH_MAX + 16], text[16] = "";
	snprintf(path, sizeof(path), "%s/%s", dir, FC_DISKS_FILE);
	unsigned saved = 0;
	FILE *f = fopen(path, "re");
	if (f) {
		bool ok = fgets(text, sizeof(text), f) && sscanf(text, "%u", &saved) == 1 && saved < 1u << FC_DISKS;
		fclose(f);
		if (!ok)
			return vmf_err(err, EPROTO, "VM %s: the saved state's disk record %s is malformed", vm->cfg->id,
				       FC_DISKS_FILE);
	} else if (errno != ENOENT) {
		return vmf_err_sys(err, errno, "VM %s: cannot read the saved state's disk record", vm->cfg->id);
	}
	for (size_t i = 0; parts && i < parts->n_disks; i++) {
		int r = fc_check_disk(vm, &parts->disks[i], err);
		if (r < 0)
			return r;
	}
	return vmf_rest_match_disks(vm, saved, parts, given, err);
}

/* Resume: a fresh process loads the saved snapshot, its memory from the
 * unpacked file; the vmstate brings back the machine config and the
 * virtio-mem region with what was plugged (the handle's memory_mib), and
 * the drives, which Firecracker reopens by the paths they had: the
 * placeholders, and each disk's vmfdN.disk link, pointed now at the
 * descriptor the daemon reopened. */
static int
fc_restore_state_with(const vmf_hv_state *st, int state_fd, const struct vmf_restore_parts *parts,
		      struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	if (parts && parts->net)
		return vmf_err(err, ENOTSUP, "VM %s: firecracker keeps no network backend across a suspend",
			       st->config ? st->config->id : "?");
	struct vmf_vmm *vm;
	char dir[PATH_MAX], vmstate[PATH_MAX], mem[PATH_MAX];
	int r = vmf_rest_restore_begin(&fc, st, state_fd, &vm, dir, err);
	if (r < 0)
		return r;
	snap_paths(vm->cfg, dir, true, vmstate, mem);
	struct stat sb;
	unsigned given = 0;
	if (stat(vmstate, &sb) < 0 || stat(mem, &sb) < 0)
		r = vmf_err(err, EPROTO, "VM %s: the saved state lacks the firecracker vmstate or memory", vm->cfg->id);
	if (r == 0)
		r = check_saved_disks(vm, dir, parts, &given, err);
	if (r == 0)
		r = make_placeholders(vm, err);
	for (unsigned s = 0; s < FC_DISKS; s++)
		disk_unlink(vm, s);
	for (size_t i = 0; r == 0 && parts && i < parts->n_disks; i++) {
		char name[32];
		r = disk_link(vm, parts->disks[i].slot, parts->disks[i].fd, name, err);
	}
	bool started = r == 0 && (r = vmf_rest_spawn(vm, err)) == 0;
	if (started && (r = load_snapshot(vm, vmstate, mem, err)) < 0)
		vmf_error_prefix(err, "resuming VM %s from its saved state", st->config->id);
	for (unsigned s = 0; s < FC_DISKS; s++)
		disk_unlink(vm, s);
	if (r < 0) {
		if (started)
			vmf_rest_abort(vm);
		else
			vmf_rest_release(vm);
		struct vmf_error ignored;
		vmf_rm_rf(dir, &ignored);
		return r;
	}
	/* Mapped privately: the memory file may go, the mapping keeps it. */
	unlink(vmstate);
	unlink(mem);
	char disks[PATH_MAX + 16];
	snprintf(disks, sizeof(disks), "%s/%s", dir, FC_DISKS_FILE);
	unlink(disks);
	rmdir(dir);
	vm->paused = true;
	vm->disks = given;
	*out = vm;
	return 0;
}

static int
fc_restore_state(const vmf_hv_state *st, int state_fd, struct vmf_vmm **out, struct vmf_error *err)
{
	return fc_restore_state_with(st, state_fd, NULL, out, err);
}

/* Into a template: a Full snapshot whose memory goes straight to the new
 * template's memory file (clones map it, template-share), the vmstate into
 * the stream as save_template writes it.  Firecracker cannot add vCPUs;
 * memory plugged through virtio-mem is in the vmstate and the file. */
static int
fc_snapshot(struct vmf_vmm *vm, const struct vmf_snapshot_to *to, int state_fd, struct vmf_snapshot_result *res,
	    struct vmf_error *err)
{
	const char *mem = to->cfg->memory_file;
	res->method = "firecracker-snapshot-create";
	if (!mem || mem[0] != '/')
		return vmf_err(err, EINVAL, "VM %s: a firecracker snapshot needs an absolute memory file", vm->cfg->id);
	int r = vmf_rest_no_disks(vm, "a snapshot", err);
	if (r < 0)
		return r;
	bool was_running = !vm->paused;
	int64_t t0 = vmf_now_ms();
	char dir[PATH_MAX], vmstate[PATH_MAX];
	if ((r = vmf_rest_snap_begin(vm, dir, err)) < 0)
		return r;
	snprintf(vmstate, sizeof(vmstate), "%s/%s", dir, FC_VMSTATE);
	r = create_snapshot(vm, vmstate, mem, err);
	if (r == 0)
		r = vmf_rest_snap_pack(vm, state_fd, dir, state_only, err);
	if (r < 0) {
		struct vmf_error ignored;
		vmf_rm_rf(dir, &ignored);
		unlink(mem);
	}
	struct vmf_error e2 = {0};
	if (was_running && vmf_rest_resume(vm, &e2) < 0 && r == 0)
		r = vmf_err(err, e2.code, "%s", e2.msg);
	res->paused_ms = (uint64_t)(vmf_now_ms() - t0);
	return r;
}

/* Disks: PATCH /drives/vmfdN points a placeholder drive at the daemon's
 * descriptor as /proc/<daemon>/fd/N through the link vmfdN.disk
 * (disk_link; Firecracker opens a path; that one reopens the very file the
 * daemon checked, so a path swapped since cannot matter; the caller keeps
 * fd open until this returns).  Firecracker adds drives only before boot
 * and a PATCH keeps is_read_only, hence the fixed slots of both kinds. */
static bool
fc_disk_slot_fits(unsigned slot, bool read_only)
{
	return slot < FC_DISKS && (slot >= FC_DISKS_RW) == read_only;
}

static int
patch_drive(struct vmf_vmm *vm, unsigned slot, const char *path, struct vmf_error *err)
{
	char id[16], name[32], ep[32];
	placeholder(slot, id, name);
	snprintf(ep, sizeof(ep), "/drives/%s", id);
	json_object *b = vmf_json_obj();
	vmf_json_set_str(b, "drive_id", id);
	vmf_json_set_str(b, "path_on_host", path ? path : name);
	return api_put(vm, "PATCH", ep, b, err);
}

static int
fc_check_disk(const struct vmf_vmm *vm, const struct vmf_disk_spec *d, struct vmf_error *err)
{
	const char *id = vm->cfg->id;
	if (d->backing_fd >= 0)
		return vmf_err(err, ENOTSUP, "VM %s: firecracker takes no copy-on-write disk (its drives are raw "
			       "files without a backing chain)", id);
	if (d->format && strcmp(d->format, "raw") != 0)
		return vmf_err(err, ENOTSUP, "VM %s: firecracker takes only raw disks, not %s", id, d->format);
	if (d->slot >= FC_DISKS)
		return vmf_err(err, ENOSPC, "VM %s: firecracker has %u disk slots (vmfd0-vmfd%u), slot %u is none of "
			       "them", id, FC_DISKS, FC_DISKS - 1, d->slot);
	if (!fc_disk_slot_fits(d->slot, d->read_only))
		return vmf_err(err, EINVAL, "VM %s: firecracker disk slot vmfd%u is %s, the disk is %s (slots "
			       "vmfd0-vmfd%u are read-write, vmfd%u-vmfd%u read-only)", id, d->slot,
			       d->read_only ? "read-write" : "read-only", d->read_only ? "read-only" : "read-write",
			       FC_DISKS_RW - 1, FC_DISKS_RW, FC_DISKS - 1);
	return 0;
}

static int
fc_attach_disk(struct vmf_vmm *vm, const struct vmf_disk_spec *d, struct vmf_error *err)
{
	char name[32];
	int r = fc_check_disk(vm, d, err);
	if (r < 0 || (r = disk_link(vm, d->slot, d->fd, name, err)) < 0)
		return r;
	r = patch_drive(vm, d->slot, name, err);
	disk_unlink(vm, d->slot);
	if (r < 0)
		return vmf_error_prefix(err, "attaching disk vmfd%u", d->slot);
	vm->disks |= 1u << d->slot;
	return 0;
}

/* The placeholder back: the VMM lets go of the disk's file. */
static int
fc_detach_disk(struct vmf_vmm *vm, unsigned slot, struct vmf_error *err)
{
	if (slot >= FC_DISKS)
		return 0;
	int r = patch_drive(vm, slot, NULL, err);
	if (r < 0)
		return vmf_error_prefix(err, "detaching disk vmfd%u", slot);
	vm->disks &= ~(1u << slot);
	return 0;
}

static int
fc_hotplug_vcpus(struct vmf_vmm *vm, unsigned total, struct vmf_error *err)
{
	if (total <= vm->vcpus)
		return 0;
	return vmf_err(err, ENOTSUP, "VM %s: vCPU hot-add is unsupported by firecracker (%u vCPUs "
		       "requested, the VM has %u)", vm->cfg->id, total, vm->vcpus);
}

static int
fc_hotplug_memory(struct vmf_vmm *vm, unsigned add_mib, struct vmf_error *err)
{
	if (add_mib == 0)
		return 0;
	if (!mem_hotplug(vm))
		return vmf_err(err, ENOTSUP, "VM %s: memory hot-add is unsupported by firecracker %s%s",
			       vm->cfg->id, vm->version[0] ? vm->version : "(unknown version)",
			       vm->cfg->max_memory_mib > vm->cfg->memory_mib ? ""
				       : " for a VM built without spare memory (max_memory_mib)");
	int r = vmf_hotplug_mem_check(vm->cfg, vm->memory_mib, add_mib, err);
	if (r < 0)
		return r;
	json_object *b = vmf_json_obj();
	vmf_json_set_int(b, "requested_size_mib", vm->memory_mib + add_mib - vm->cfg->memory_mib);
	r = api_put(vm, "PATCH", "/hotplug/memory", b, err);
	if (r == 0)
		vm->memory_mib += add_mib;
	return r;
}

static unsigned
fc_capabilities(const struct vmf_vmm *vm)
{
	return caps_for_version(vm ? vm->version : FC_API_VERSION);
}

static int
fc_adopt(const vmf_hv_state *st, struct vmf_vmm **out, struct vmf_error *err)
{
	return vmf_rest_adopt(&fc, st, out, err);
}

static int
fc_probe(const char *binary, const char *kernel, const char *state_dir, struct vmf_hv_info *info,
	 struct vmf_error *err)
{
	(void)kernel;
	(void)state_dir;
	int r = vmf_rest_probe(&fc, binary, info, err);
	if (r == 0)
		info->caps = caps_for_version(info->version);
	return r;
}

const struct vmf_hv_ops vmf_firecracker_ops = {
	.name = "firecracker",
	.kind = VMF__HV__HYPERVISOR_KIND__HV_FIRECRACKER,
	.control_socket = FC_API_SOCK,
	.sandbox_control_socket = FC_API_SOCK,
	.agent_socket = VMF_REST_VSOCK,
	.agent_transport = "hybrid-vsock",
	.agent_vsock_port = VMF_AGENT_VSOCK_PORT,
	.probe = fc_probe,
	.boot = fc_boot,
	.start_from_template = fc_start_from_template,
	.save_template = fc_save_template,
	.snapshot = fc_snapshot,
	.save_state = fc_save_state,
	.restore_state = fc_restore_state,
	.restore_state_with = fc_restore_state_with,
	.pause = vmf_rest_pause,
	.resume = vmf_rest_resume,
	.hotplug_vcpus = fc_hotplug_vcpus,
	.hotplug_memory = fc_hotplug_memory,
	.stop = vmf_rest_stop,
	.alive = vmf_rest_alive,
	.pid = vmf_rest_pid,
	.capabilities = fc_capabilities,
	.agent_connect = vmf_rest_agent_connect,
	.watch_fd = vmf_rest_watch_fd,
	.exit_info = vmf_rest_exit_info,
	.serialize = vmf_rest_serialize,
	.adopt = fc_adopt,
	.attach_disk = fc_attach_disk,
	.detach_disk = fc_detach_disk,
	.disk_slot_fits = fc_disk_slot_fits,
	.disk_device = FC_DISK_DEVICE,
	.release = vmf_rest_release,
};

const struct vmf_rest_vmm *const vmf_rest_firecracker = &fc;
