/* Everything that moves a VM's state through QEMU's migration stream:
 * saving a template (x-ignore-shared: the RAM stays in its shared file),
 * starting a clone from one, a snapshot of a running VM into a new
 * template, and suspend/resume (the whole RAM into the stream). */
#include "qemu_vm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "qmp.h"
#include "util.h"

/* QEMU sends MIGRATION "completed" before its main loop leaves the
 * finish-migrate (source) or inmigrate (destination) run state, and a
 * `cont` in between fails ("Migration is not finalized yet"): wait for the
 * run state that follows. */
static int
wait_runstate_settled(struct vmf_vmm *vm, int64_t deadline, struct vmf_error *err)
{
	for (;;) {
		json_object *ret = NULL;
		int r = qemu_qmp_cmd(vm, "query-status", NULL, &ret, err);
		if (r < 0)
			return r;
		char s[32];
		snprintf(s, sizeof(s), "%s", qemu_member_str(ret, "status"));
		bool settled = strcmp(s, "finish-migrate") != 0 && strcmp(s, "inmigrate") != 0;
		json_object_put(ret);
		if (settled)
			return 0;
		if (vmf_now_ms() >= deadline)
			return vmf_err(err, ETIMEDOUT, "VM %s: QEMU stayed in run state %s after its migration "
				       "completed", vm->cfg->id, s);
		struct timespec ts = { 0, 2 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

/* Waits for the MIGRATION event to reach a final state. */
static int
wait_migration(struct vmf_vmm *vm, const char *what, struct vmf_error *err)
{
	int64_t deadline = vmf_now_ms() + MIGRATE_TIMEOUT_MS;
	for (;;) {
		int left = (int)(deadline - vmf_now_ms());
		if (left <= 0)
			return vmf_err(err, ETIMEDOUT, "VM %s: %s did not finish within %d s", vm->cfg->id,
				       what, MIGRATE_TIMEOUT_MS / 1000);
		json_object *data = NULL;
		int r = vmf_qmp_wait_event(vm->qmp, "MIGRATION", &data, left, err);
		if (r < 0) {
			vmf_error_prefix(err, "VM %s: %s", vm->cfg->id, what);
			qemu_append_logs(vm, err);
			return r;
		}
		const char *s = qemu_member_str(data, "status");
		if (strcmp(s, "completed") == 0) {
			json_object_put(data);
			return wait_runstate_settled(vm, deadline, err);
		}
		if (strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0) {
			/* s is data's: the sentence first. */
			r = vmf_err(err, EIO, "VM %s: %s %s", vm->cfg->id, what, s);
			json_object_put(data);
			qemu_append_logs(vm, err);
			return r;
		}
		json_object_put(data);
	}
}

/* cmd ("migrate" or "migrate-incoming") on the fd passed as fdname. */
static int
migrate_fd(struct vmf_vmm *vm, const char *cmd, const char *fdname, struct vmf_error *err)
{
	char uri[64];
	snprintf(uri, sizeof(uri), "fd:%s", fdname);
	json_object *args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	int r = qemu_qmp_cmd(vm, cmd, args, NULL, err);
	json_object_put(args);
	return r;
}

int
qemu_save_template(struct vmf_vmm *vm, int state_fd, bool full, struct vmf_error *err)
{
	int r;
	if (!vm->paused && (r = qemu_qmp_cmd(vm, "stop", NULL, NULL, err)) < 0)
		return r;
	vm->paused = true;
	if ((r = qemu_set_capability(vm, "events", true, err)) < 0)
		return r;
	if (!full) {
		r = qemu_has_capability(vm, "x-ignore-shared", err);
		if (r < 0)
			return r;
		if (r == 0)
			return vmf_err(err, ENOTSUP, "QEMU for VM %s lacks the x-ignore-shared migration "
				       "capability needed for shared templates", vm->cfg->id);
		if ((r = qemu_set_capability(vm, "x-ignore-shared", true, err)) < 0)
			return r;
	}
	if ((r = qemu_pass_fd(vm, "vmfstate", state_fd, err)) < 0)
		return r;
	r = migrate_fd(vm, "migrate", "vmfstate", err);
	if (r < 0)
		return r;
	return wait_migration(vm, "saving the template state", err);
}

/* The DIMMs qemu_hotplug_memory added, by their index (dimmN): size and
 * the address the guest knows them at. */
static int
query_dimms(struct vmf_vmm *vm, struct vmf_snapshot_result *res, struct vmf_error *err)
{
	res->n_dimms = 0;
	if (vm->dimms == 0)
		return 0;
	if (vm->dimms > VMF_SNAPSHOT_MAX_DIMMS)
		return vmf_err(err, ENOTSUP, "VM %s has %u DIMMs; a snapshot takes at most %d", vm->cfg->id,
			       vm->dimms, VMF_SNAPSHOT_MAX_DIMMS);
	json_object *ret = NULL;
	int r = qemu_qmp_cmd(vm, "query-memory-devices", NULL, &ret, err);
	if (r < 0)
		return r;
	size_t n = json_object_is_type(ret, json_type_array) ? json_object_array_length(ret) : 0;
	for (size_t i = 0; i < n; i++) {
		json_object *dev = json_object_array_get_idx(ret, i), *data, *size, *addr;
		unsigned k;
		if (!json_object_is_type(dev, json_type_object) || !json_object_object_get_ex(dev, "data", &data) ||
		    sscanf(qemu_member_str(data, "id"), "dimm%u", &k) != 1 || k >= vm->dimms ||
		    !json_object_object_get_ex(data, "size", &size) || !json_object_object_get_ex(data, "addr", &addr))
			continue;
		res->dimms[k].size_mib = (unsigned)((uint64_t)json_object_get_int64(size) >> 20);
		res->dimms[k].addr = (uint64_t)json_object_get_int64(addr);
		res->n_dimms = res->n_dimms > k + 1 ? res->n_dimms : k + 1;
	}
	json_object_put(ret);
	for (unsigned k = 0; k < vm->dimms; k++)
		if (k >= res->n_dimms || res->dimms[k].size_mib == 0)
			return vmf_err(err, EPROTO, "VM %s: query-memory-devices does not list DIMM dimm%u", vm->cfg->id, k);
	return 0;
}

static int
set_bandwidth(struct vmf_vmm *vm, struct vmf_error *err)
{
	/* QEMU 7.2 limits migration by default (32 MiB/s for a snapshot's
	 * copy, 128 MiB/s for a save): a local copy of a paused VM should run
	 * at memory speed, and a save wait on the disk, not on a rate. */
	json_object *args = json_object_new_object();
	json_object_object_add(args, "max-bandwidth", json_object_new_int64(INT64_C(1) << 40));
	int r = qemu_qmp_cmd(vm, "migrate-set-parameters", args, NULL, err);
	json_object_put(args);
	return r;
}

/* QEMU 7.2 has no mapped-ram: a clone's RAM is a private copy-on-write
 * mapping that x-ignore-shared cannot skip.  So the paused VM migrates
 * into a fresh QEMU whose RAM (and DIMMs) are the new template's files,
 * mapped share=on; the VM runs again as soon as the copy completes, and
 * the receiver is then saved as a template build is. */
int
qemu_snapshot(struct vmf_vmm *vm, const struct vmf_snapshot_to *to, int state_fd,
	      struct vmf_snapshot_result *res, struct vmf_error *err)
{
	res->method = "qemu-migrate-to-shared";
	res->paused_ms = 0;
	const vmf_vm_config *tc = to->cfg;
	if (tc->memory_mode != VMF__HV__MEMORY_MODE__MEM_TEMPLATE || !tc->memory_file || !*tc->memory_file ||
	    !tc->incoming)
		return vmf_err(err, EINVAL, "VM %s: a snapshot's receiver needs a template memory file and "
			       "incoming", vm->cfg->id);
	int r = query_dimms(vm, res, err);
	if (r < 0)
		return r;
	res->hotplugged_vcpus = vm->vcpus - vm->cfg->vcpus;
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", tc->memory_file);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = '\0';
	Vmf__Hv__HotDimm dimms[VMF_SNAPSHOT_MAX_DIMMS], *dimmp[VMF_SNAPSHOT_MAX_DIMMS];
	for (unsigned k = 0; k < res->n_dimms; k++) {
		snprintf(res->dimms[k].path, sizeof(res->dimms[k].path), "%s/dimm%u", dir, k);
		vmf__hv__hot_dimm__init(&dimms[k]);
		dimms[k].size_mib = res->dimms[k].size_mib;
		dimms[k].addr = res->dimms[k].addr;
		dimms[k].mem_path = res->dimms[k].path;
		dimmp[k] = &dimms[k];
	}
	vmf_vm_config rcfg = *tc;
	/* Its base shape is the VM's template's, whatever the caller filled. */
	rcfg.vcpus = vm->cfg->vcpus;
	rcfg.max_vcpus = vm->cfg->max_vcpus;
	rcfg.memory_mib = vm->cfg->memory_mib;
	rcfg.max_memory_mib = vm->cfg->max_memory_mib;
	rcfg.memory_slots = vm->cfg->memory_slots;
	rcfg.hotplugged_vcpus = res->hotplugged_vcpus;
	rcfg.n_dimms = res->n_dimms;
	rcfg.dimms = dimmp;
	struct vmf_vmm *rcv = NULL;
	if ((r = qemu_boot(&rcfg, &rcv, err)) < 0)
		return vmf_error_prefix(err, "VM %s: starting the snapshot's receiving QEMU", vm->cfg->id);
	int sp[2] = { -1, -1 };
	bool was_running = !vm->paused, stopped = false;
	int64_t t0 = 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
		r = vmf_err_sys(err, errno, "VM %s: cannot create the migration socket pair", vm->cfg->id);
		goto out;
	}
	if ((r = qemu_set_capability(rcv, "events", true, err)) < 0 || (r = qemu_pass_fd(rcv, "vmfsnap", sp[1], err)) < 0)
		goto out;
	/* Only the two QEMUs may hold the ends: a receiver that dies must
	 * fail the sender at once (EPIPE), not leave it writing into a
	 * buffer we keep open while the VM stands still. */
	close(sp[1]);
	sp[1] = -1;
	r = migrate_fd(rcv, "migrate-incoming", "vmfsnap", err);
	if (r < 0)
		goto out;
	/* The VM's own RAM is private, so it would be sent either way; off, the
	 * stream matches the receiver's default. */
	if ((r = qemu_set_capability(vm, "events", true, err)) < 0 || (r = qemu_set_capability(vm, "x-ignore-shared", false, err)) < 0 ||
	    (r = set_bandwidth(vm, err)) < 0 || (r = qemu_pass_fd(vm, "vmfsnap", sp[0], err)) < 0)
		goto out;
	close(sp[0]);
	sp[0] = -1;
	t0 = vmf_now_ms();
	if (was_running) {
		if ((r = qemu_qmp_cmd(vm, "stop", NULL, NULL, err)) < 0)
			goto out;
		stopped = true;
	}
	VMF_FAULT("snapshot-paused");
	r = migrate_fd(vm, "migrate", "vmfsnap", err);
	if (r == 0 && (r = wait_migration(vm, "copying its state into the snapshot", err)) < 0) {
		/* The receiver usually says why. */
		char tail[400];
		vmf_file_tail(rcv->stderr_log, tail, sizeof(tail));
		if (tail[0])
			vmf_error_append(err, "; receiving QEMU: %s", tail);
	}
	if (r == 0)
		r = wait_migration(rcv, "receiving the snapshot", err);
	if (r < 0)
		goto out;
	/* Running again before the template is saved: the copy is all it waits for. */
	if (stopped) {
		r = qemu_qmp_cmd(vm, "cont", NULL, NULL, err);
		stopped = false;
		res->paused_ms = (uint64_t)(vmf_now_ms() - t0);
		if (r < 0)
			goto out;
	}
	/* A daemon killed here leaves a receiving QEMU and a half-made
	 * template, both of which restart recovery removes. */
	VMF_FAULT("snapshot-received");
	rcv->paused = true;
	r = qemu_save_template(rcv, state_fd, false, err);
out:
	if (stopped) {
		struct vmf_error e2;
		if (qemu_qmp_cmd(vm, "cont", NULL, NULL, &e2) < 0)
			log_vm(VMF_LOG_WARN, vm->cfg->id, "cannot resume after a failed snapshot: %s", e2.msg);
		res->paused_ms = (uint64_t)(vmf_now_ms() - t0);
	}
	if (sp[0] >= 0)
		close(sp[0]);
	if (sp[1] >= 0)
		close(sp[1]);
	struct vmf_error ignored;
	qemu_stop(rcv, 10000, &ignored);
	qemu_vm_free(rcv);
	return r;
}

int
qemu_start_from_template(const vmf_vm_config *cfg, int state_fd, struct vmf_vmm **out,
			 struct vmf_error *err)
{
	*out = NULL;
	if (!cfg->incoming)
		return vmf_err(err, EINVAL, "VM %s: a clone config must set incoming", cfg->id);
	struct vmf_vmm *vm;
	int r = qemu_boot(cfg, &vm, err);
	if (r < 0)
		return r;
	bool full = cfg->memory_mode == VMF__HV__MEMORY_MODE__MEM_FULL;
	if ((r = qemu_set_capability(vm, "events", true, err)) < 0)
		goto fail;
	if (!full && (r = qemu_set_capability(vm, "x-ignore-shared", true, err)) < 0)
		goto fail;
	if ((r = qemu_pass_fd(vm, "vmfstate", state_fd, err)) < 0)
		goto fail;
	r = migrate_fd(vm, "migrate-incoming", "vmfstate", err);
	if (r < 0 || (r = wait_migration(vm, "loading the template state", err)) < 0)
		goto fail;
	vm->paused = true;
	*out = vm;
	return 0;
fail:
	vmf_vmm_kill(&vm->proc, "QEMU", cfg->id);
	qemu_vm_free(vm);
	return r;
}

/* Suspend: every byte of guest RAM into the stream.  A clone loaded its
 * template with x-ignore-shared, which QEMU keeps set: cleared here so that
 * the stream is the plain format the resuming QEMU reads (the clone's RAM,
 * a share=off mapping, was never skipped by it anyway). */
int
qemu_save_state(struct vmf_vmm *vm, int state_fd, struct vmf_error *err)
{
	if (vm->n_cpu_devs != vm->vcpus - vm->cfg->vcpus - vm->cfg->hotplugged_vcpus ||
	    vm->n_dimm_mib != vm->dimms - vm->cfg->n_dimms)
		return vmf_err(err, ENOTSUP, "VM %s was grown by a vmfactory that did not record its hot-added "
			       "devices, which a resuming QEMU needs: it cannot be suspended", vm->cfg->id);
	int r;
	if (!vm->paused && (r = qemu_qmp_cmd(vm, "stop", NULL, NULL, err)) < 0)
		return r;
	vm->paused = true;
	if ((r = qemu_set_capability(vm, "events", true, err)) < 0 || (r = qemu_has_capability(vm, "x-ignore-shared", err)) < 0)
		return r;
	if (r == 1 && (r = qemu_set_capability(vm, "x-ignore-shared", false, err)) < 0)
		return r;
	if ((r = set_bandwidth(vm, err)) < 0 || (r = qemu_pass_fd(vm, "vmfstate", state_fd, err)) < 0)
		return r;
	r = migrate_fd(vm, "migrate", "vmfstate", err);
	if (r < 0)
		return r;
	return wait_migration(vm, "saving its state", err);
}

/* Resume: a QEMU with the saved VM's config (same sockets, template memory
 * file mapped share=off as before) and its hot-added vCPUs and DIMMs on
 * the command line, loading the whole state. */

/* The disks go in before migrate-incoming: the stream's scsi-hd state
 * needs its devices (their ids, bus addresses and serials derive from the
 * slot, as at the attach); so does user-mode networking, whose slirp
 * state is a section of the stream (a tap has none).  Nodes added while QEMU waits for the stream
 * open inactive and are activated when it is loaded; the source flushed
 * and inactivated its own when it stopped and completed the save. */
int
qemu_restore_state_with(const vmf_hv_state *st, int state_fd, const struct vmf_restore_parts *parts,
			struct vmf_vmm **out, struct vmf_error *err)
{
	*out = NULL;
	if (st->schema_version != STATE_SCHEMA_VERSION || !st->config || !st->qemu)
		return vmf_err(err, EINVAL, "saved hypervisor state has schema %u, expected %u", st->schema_version,
			       STATE_SCHEMA_VERSION);
	vmf_vm_config *cfg = vmf_vm_config_dup(st->config);
	if (!cfg)
		return vmf_err(err, ENOMEM, "out of memory for a VM config");
	cfg->incoming = true;
	struct vmf_vmm *vm = qemu_vm_new(cfg, err);
	vmf_vm_config_free(cfg);
	if (!vm)
		return -ENOMEM;
	int r = qemu_take_hotplugged(vm, st->qemu, err);
	if (r == 0 && (vm->n_cpu_devs + vm->cfg->vcpus + vm->cfg->hotplugged_vcpus != st->vcpus ||
			 vm->n_dimm_mib + vm->cfg->n_dimms != st->qemu->dimm_count))
		r = vmf_err(err, EINVAL, "VM %s: its saved state records %u vCPUs and %u DIMMs but names %zu "
			    "hot-added vCPUs and %zu DIMMs", vm->cfg->id, st->vcpus, st->qemu->dimm_count,
			    vm->n_cpu_devs, vm->n_dimm_mib);
	if (r < 0) {
		qemu_vm_free(vm);
		return r;
	}
	vm->vcpus = st->vcpus;
	vm->memory_mib = st->memory_mib;
	vm->dimms = st->qemu->dimm_count;
	if ((r = qemu_spawn(vm, err)) < 0) {
		qemu_vm_free(vm);
		return r;
	}
	vm->paused = true;
	log_vm(VMF_LOG_DEBUG, vm->cfg->id, "QEMU pid %d started to resume", (int)vm->proc.pid);
	if ((r = qemu_set_capability(vm, "events", true, err)) < 0 || (r = qemu_pass_fd(vm, "vmfstate", state_fd, err)) < 0)
		goto fail;
	for (size_t i = 0; parts && i < parts->n_disks; i++)
		if ((r = qemu_attach_disk(vm, &parts->disks[i], err)) < 0) {
			vmf_error_prefix(err, "giving the resuming QEMU its disk in slot %u", parts->disks[i].slot);
			goto fail;
		}
	if (parts && parts->net && (r = qemu_net_attach(vm, parts->net, err)) < 0)
		goto fail;
	r = migrate_fd(vm, "migrate-incoming", "vmfstate", err);
	if (r < 0 || (r = wait_migration(vm, "loading its saved state", err)) < 0)
		goto fail;
	*out = vm;
	return 0;
fail:
	vmf_vmm_kill(&vm->proc, "QEMU", vm->cfg->id);
	qemu_vm_free(vm);
	return r;
}

int
qemu_restore_state(const vmf_hv_state *st, int state_fd, struct vmf_vmm **out, struct vmf_error *err)
{
	return qemu_restore_state_with(st, state_fd, NULL, out, err);
}
