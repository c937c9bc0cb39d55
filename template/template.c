/* Template build, verification and cloning. */
#include "template.h"

#include <dirent.h>
#include <errno.h>
#include <pwd.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "agent.h"
#include "catalog.h"
#include "frame.h"
#include "log.h"

#define TEMPLATE_SCHEMA_VERSION 1
/* A cold boot under TCG takes ~8 s on an idle 2-core host; a loaded CI
 * machine can take several times that. */
#define BOOT_AGENT_TIMEOUT_MS 180000
#define STOP_TIMEOUT_MS 10000

void
vmf_template_dir(const char *state_dir, const char *id, char *buf, size_t n)
{
	snprintf(buf, n, "%s/templates/%s", state_dir, id);
}

/* The image directory holds what build-image makes; a file missing there is
 * named with the directory, so a mistyped image_dir reads as such. */
static int
image_dir_check(const char *dir, bool kernel, bool initrd, struct vmf_error *err)
{
	struct stat st;
	if (stat(dir, &st) < 0)
		return vmf_err_sys(err, errno, "guest image %s cannot be used (build it with "
				   "contrib/image/build-image --out %s)", dir, dir);
	if (!S_ISDIR(st.st_mode))
		return vmf_err(err, ENOTDIR, "guest image %s is not a directory", dir);
	const char *need[] = { kernel ? "vmlinuz" : NULL, initrd ? "initrd.img" : NULL, "manifest" };
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		char path[PATH_MAX];
		if (!need[i])
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, need[i]);
		if (access(path, R_OK) < 0)
			return vmf_err_sys(err, errno, "guest image %s has no readable %s (not an image of "
					   "contrib/image/build-image, or its build did not finish)", dir, need[i]);
	}
	return 0;
}

int
vmf_image_load(const char *image_dir, const char *kernel, const char *initrd,
	       struct vmf_image *img, struct vmf_error *err)
{
	memset(img, 0, sizeof(*img));
	char agent[PATH_MAX];
	snprintf(img->dir, sizeof(img->dir), "%s", image_dir ? image_dir : "");
	snprintf(img->kernel, sizeof(img->kernel), "%s", kernel ? kernel : "");
	snprintf(img->initrd, sizeof(img->initrd), "%s", initrd ? initrd : "");
	if (!kernel)
		snprintf(img->kernel, sizeof(img->kernel), "%s/vmlinuz", image_dir);
	if (!initrd)
		snprintf(img->initrd, sizeof(img->initrd), "%s/initrd.img", image_dir);
	if ((!kernel || !initrd) && image_dir) {
		int r = image_dir_check(image_dir, !kernel, !initrd, err);
		if (r < 0)
			return r;
	}
	snprintf(agent, sizeof(agent), "%s/vmf-agent", image_dir ? image_dir : "");
	/* Hashing ~20 MB costs tens of milliseconds: cheaper than trusting a
	 * manifest that could be stale, and it makes the template id exact. */
	if (vmf_sha256_file(img->kernel, img->kernel_sha256, err) < 0)
		return vmf_error_prefix(err, "guest kernel (build the image with contrib/image/build-image)");
	if (img->initrd[0] && vmf_sha256_file(img->initrd, img->initrd_sha256, err) < 0)
		return vmf_error_prefix(err, "guest initrd");
	/* The agent lives inside the initrd; its own digest is recorded so that
	 * `template list` can say which agent a template carries. */
	if (access(agent, R_OK) == 0 && vmf_sha256_file(agent, img->agent_sha256, err) < 0)
		return vmf_error_prefix(err, "guest agent");
	return 0;
}

int
vmf_template_spec_new(const struct vmf_template_params *p, const struct vmf_hv_info *info,
		      const struct vmf_image *img, Vmf__Catalog__TemplateSpec **out,
		      char id[VMF_SHA256_HEX], struct vmf_error *err)
{
	*out = NULL;
	Vmf__Catalog__TemplateSpec *s = calloc(1, sizeof(*s));
	if (!s)
		return vmf_err(err, ENOMEM, "out of memory for a template spec");
	vmf__catalog__template_spec__init(s);
	s->schema_version = TEMPLATE_SCHEMA_VERSION;
	s->hypervisor = p->ops->kind;
	s->hypervisor_version = strdup(info->version);
	s->machine = strdup(p->machine ? p->machine : "q35");
	s->accel = strdup(p->accel && *p->accel ? p->accel : info->accel);
	s->kernel_sha256 = strdup(img->kernel_sha256);
	s->initrd_sha256 = strdup(img->initrd_sha256);
	s->agent_sha256 = strdup(img->agent_sha256);
	s->cmdline = strdup(p->cmdline ? p->cmdline : "");
	s->vcpus = p->vcpus;
	s->max_vcpus = p->max_vcpus;
	s->memory_mib = p->memory_mib;
	s->max_memory_mib = p->max_memory_mib;
	s->memory_slots = p->memory_slots;
	s->full_memory = p->full_memory;
	s->hotplug_ports = vmf_template_params_hotplug_ports(p);
	/* The device set is fixed by the driver's command line; naming it here
	 * makes a driver change produce a new template id. */
	const char *devices[] = { "virtio-serial:agent", "virtio-serial:vmf", "virtio-rng", "vmgenid", "virtio-9p:share",
				  p->ops->disk_device ? p->ops->disk_device : "virtio-scsi:disks", VMF_TEMPLATE_NIC_DEVICE,
				  p->ops->panic_device };
	size_t n = sizeof(devices) / sizeof(devices[0]) - !p->ops->panic_device;
	/* The NIC is left out by moving the last entry into its place. */
	if (!vmf_template_params_nic(p))
		devices[6] = devices[--n];
	s->n_devices = n;
	s->devices = calloc(s->n_devices, sizeof(char *));
	bool ok = s->hypervisor_version && s->machine && s->accel && s->kernel_sha256 && s->initrd_sha256 &&
		  s->agent_sha256 && s->cmdline && s->devices;
	for (size_t i = 0; ok && i < s->n_devices; i++)
		ok = (s->devices[i] = strdup(devices[i])) != NULL;
	if (!ok) {
		vmf_template_spec_free(s);
		return vmf_err(err, ENOMEM, "out of memory for a template spec");
	}
	int r = vmf_template_spec_id(s, id, err);
	if (r < 0) {
		vmf_template_spec_free(s);
		return r;
	}
	*out = s;
	return 0;
}

void
vmf_template_spec_free(Vmf__Catalog__TemplateSpec *s)
{
	if (!s)
		return;
	free(s->hypervisor_version);
	free(s->machine);
	free(s->accel);
	free(s->kernel_sha256);
	free(s->initrd_sha256);
	free(s->agent_sha256);
	free(s->cmdline);
	for (size_t i = 0; s->devices && i < s->n_devices; i++)
		free(s->devices[i]);
	free(s->devices);
	free(s);
}

static void
progress(vmf_progress_fn fn, void *ctx, const char *step)
{
	if (fn)
		fn(ctx, step);
}

static void
base_config(vmf_vm_config *cfg, const struct vmf_template_params *p, const char *kernel,
	    const char *initrd)
{
	vmf__hv__vm_config__init(cfg);
	cfg->kernel = (char *)kernel;
	cfg->initrd = (char *)initrd;
	cfg->cmdline = (char *)(p->cmdline ? p->cmdline : "");
	cfg->vcpus = p->vcpus;
	cfg->max_vcpus = p->max_vcpus;
	cfg->memory_mib = p->memory_mib;
	cfg->max_memory_mib = p->max_memory_mib;
	cfg->memory_slots = p->memory_slots;
	cfg->machine = (char *)(p->machine ? p->machine : "");
	cfg->accel = (char *)(p->accel ? p->accel : "");
	cfg->binary = (char *)(p->binary ? p->binary : "");
	cfg->vmgenid = (char *)"";
	cfg->runas = (char *)(p->runas ? p->runas : "");
	cfg->memory_file = (char *)"";
	cfg->nic = vmf_template_params_nic(p);
	cfg->hotplug_ports = vmf_template_params_hotplug_ports(p);
}

bool
vmf_template_params_nic(const struct vmf_template_params *p)
{
	/* The REST drivers have no hub to plug a backend into at hand-out. */
	return p->nic && p->ops->net_attach;
}

unsigned
vmf_template_params_hotplug_ports(const struct vmf_template_params *p)
{
	if (!p->ops->hotplug_ports)
		return 0;
	return p->hotplug_ports < VMF_HOTPLUG_PORTS_MAX ? p->hotplug_ports : VMF_HOTPLUG_PORTS_MAX;
}

bool
vmf_template_has_nic(const Vmf__Catalog__TemplateRecord *rec)
{
	for (size_t i = 0; rec->spec && i < rec->spec->n_devices; i++)
		if (strcmp(rec->spec->devices[i], VMF_TEMPLATE_NIC_DEVICE) == 0)
			return true;
	return false;
}

static int
fsync_path(const char *path, struct vmf_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot open %s", path);
	int r = fsync(fd);
	int e = errno;
	close(fd);
	return r < 0 ? vmf_err_sys(err, e, "cannot fsync %s", path) : 0;
}

static uint64_t
file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* Boots the template VM, waits for its agent, pauses and saves it into
 * build_dir.  The VM is stopped on every path. */
static int
boot_and_save(const struct vmf_template_params *p, const struct vmf_image *img, const char *id,
	      const char *build_dir, const char *vm_run_dir, vmf_progress_fn pfn, void *ctx,
	      struct vmf_error *err)
{
	char mem[PATH_MAX], share[PATH_MAX], state[PATH_MAX], name[128];
	snprintf(mem, sizeof(mem), "%s/memory", build_dir);
	snprintf(share, sizeof(share), "%s/share", build_dir);
	snprintf(state, sizeof(state), "%s/state", build_dir);
	snprintf(name, sizeof(name), "vmfactory-tpl-%.16s", id);
	if (mkdir(share, 0700) < 0 && errno != EEXIST)
		return vmf_err_sys(err, errno, "cannot create %s", share);
	int r = vmf_template_own_share(p, share, err);
	if (r < 0)
		return r;

	vmf_vm_config cfg;
	base_config(&cfg, p, img->kernel, img->initrd);
	cfg.id = (char *)id;
	cfg.name = name;
	cfg.run_dir = (char *)vm_run_dir;
	/* The template carries the 9p device so clones have the same device
	 * set; clones point it at their own directory. */
	cfg.share_dir = share;
	cfg.memory_mode = p->full_memory ? VMF__HV__MEMORY_MODE__MEM_PRIVATE
					 : VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
	cfg.memory_file = p->full_memory ? (char *)"" : mem;

	struct vmf_vmm *vm = NULL;
	progress(pfn, ctx, "booting the template VM");
	r = p->ops->boot(&cfg, &vm, err);
	if (r < 0)
		return r;
	int afd = p->ops->agent_connect(vm, 5000, err);
	if (afd < 0) {
		r = afd;
		goto out;
	}
	struct vmf_agent *agent = vmf_agent_new(afd);
	progress(pfn, ctx, "waiting for the guest agent");
	r = vmf_agent_wait_ready(agent, BOOT_AGENT_TIMEOUT_MS, err);
	/* Disconnect before saving: clones must start with the agent waiting for
	 * a new host connection, not mid-conversation with this one. */
	vmf_agent_free(agent);
	if (r < 0) {
		vmf_error_prefix(err, "template %.16s: guest agent did not answer", id);
		/* Why it died (exit status, its last event, the OOM killer) and
		 * the serial log's end, escaped. */
		if (vmf_vm_exit_explain(p->ops, vm, err))
			goto out;
		char tail[400];
		char log[PATH_MAX];
		snprintf(log, sizeof(log), "%s/serial.log", vm_run_dir);
		vmf_file_tail(log, tail, sizeof(tail));
		if (tail[0])
			vmf_error_append(err, "; serial log: %s", tail);
		goto out;
	}
	progress(pfn, ctx, "saving the template state");
	int sfd = vmf_open_beneath(build_dir, "state", O_WRONLY | O_CREAT | O_EXCL, 0600, err);
	if (sfd < 0) {
		r = sfd;
		goto out;
	}
	r = p->ops->pause(vm, err);
	if (r == 0)
		r = p->ops->save_template(vm, sfd, p->full_memory, err);
	if (r == 0 && fsync(sfd) < 0)
		r = vmf_err_sys(err, errno, "cannot fsync %s", state);
	close(sfd);
	VMF_FAULT("after-migrate");
out:
	if (vm) {
		struct vmf_error ignored;
		p->ops->stop(vm, STOP_TIMEOUT_MS, &ignored);
		p->ops->release(vm);
	}
	if (r == 0 && !p->full_memory)
		r = fsync_path(mem, err);
	return r;
}

int
vmf_template_build(struct vmf_catalog *cat, const char *state_dir, const char *run_dir,
		   const struct vmf_template_params *p, const Vmf__Catalog__TemplateSpec *spec,
		   const struct vmf_image *img, vmf_progress_fn pfn, void *ctx,
		   Vmf__Catalog__TemplateRecord **out, struct vmf_error *err)
{
	*out = NULL;
	char id[VMF_SHA256_HEX];
	int r = vmf_template_spec_id(spec, id, err);
	if (r < 0)
		return r;
	Vmf__Catalog__TemplateRecord *old = NULL;
	r = vmf_catalog_template_get(cat, id, &old, err);
	if (r == 0 && old->state == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY) {
		*out = old;
		return 0;
	}
	if (r < 0 && r != -ENOENT && r != -EBADMSG)
		return r;
	if (old)
		vmf__catalog__template_record__free_unpacked(old, NULL);

	char tdir[PATH_MAX], final_dir[PATH_MAX], build_dir[PATH_MAX], vm_run[PATH_MAX];
	snprintf(tdir, sizeof(tdir), "%s/templates", state_dir);
	vmf_template_dir(state_dir, id, final_dir, sizeof(final_dir));
	/* Hidden build directory: a crash leaves only something cleanup removes. */
	snprintf(build_dir, sizeof(build_dir), "%s/.build-%s-%d", tdir, id, (int)getpid());
	snprintf(vm_run, sizeof(vm_run), "%s/build-%.16s-%d", run_dir, id, (int)getpid());
	if ((r = vmf_mkdir_p(tdir, 0700, err)) < 0)
		return r;
	/* A shared template's RAM is a file here: on a full disk QEMU would die
	 * of SIGBUS mid-boot, so say what is missing up front. */
	struct statvfs vfs;
	uint64_t need = (p->full_memory ? 0 : (uint64_t)p->memory_mib << 20) + (16ull << 20);
	if (statvfs(tdir, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < need)
		return vmf_err(err, ENOSPC, "not enough space in %s for template %.16s: it needs %llu MiB, "
			       "%llu MiB are free", tdir, id, (unsigned long long)(need >> 20),
			       (unsigned long long)(((uint64_t)vfs.f_bavail * vfs.f_frsize) >> 20));
	struct vmf_error ignored;
	vmf_rm_rf(build_dir, &ignored);
	if (mkdir(build_dir, 0700) < 0)
		return vmf_err_sys(err, errno, "cannot create %s", build_dir);

	int64_t t0 = vmf_now_ms();
	log_tpl(VMF_LOG_INFO, id, "building template (%u vCPU, %u MiB, %s memory)", p->vcpus,
		p->memory_mib, p->full_memory ? "private" : "shared");
	r = boot_and_save(p, img, id, build_dir, vm_run, pfn, ctx, err);
	vmf_rm_rf(vm_run, &ignored);
	if (r < 0)
		goto fail;

	Vmf__Catalog__TemplateRecord rec = VMF__CATALOG__TEMPLATE_RECORD__INIT;
	char mem[PATH_MAX], state[PATH_MAX], mem_sha[VMF_SHA256_HEX] = "", state_sha[VMF_SHA256_HEX];
	char bmem[PATH_MAX], bstate[PATH_MAX];
	snprintf(bmem, sizeof(bmem), "%s/memory", build_dir);
	snprintf(bstate, sizeof(bstate), "%s/state", build_dir);
	progress(pfn, ctx, "computing template digests");
	if (!p->full_memory && (r = vmf_sha256_file(bmem, mem_sha, err)) < 0)
		goto fail;
	if ((r = vmf_sha256_file(bstate, state_sha, err)) < 0)
		goto fail;
	rec.memory_size = p->full_memory ? 0 : file_size(bmem);
	rec.state_size = file_size(bstate);

	vmf_rm_rf(final_dir, &ignored);
	if (rename(build_dir, final_dir) < 0) {
		r = vmf_err_sys(err, errno, "cannot move %s to %s", build_dir, final_dir);
		goto fail;
	}
	if ((r = vmf_fsync_dir(tdir, err)) < 0)
		goto fail_final;

	snprintf(mem, sizeof(mem), "%s/memory", final_dir);
	snprintf(state, sizeof(state), "%s/state", final_dir);
	rec.schema_version = TEMPLATE_SCHEMA_VERSION;
	rec.id = id;
	rec.spec = (Vmf__Catalog__TemplateSpec *)spec;
	rec.state = VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY;
	rec.dir = final_dir;
	rec.memory_file = p->full_memory ? (char *)"" : mem;
	rec.memory_sha256 = mem_sha;
	rec.state_file = state;
	rec.state_sha256 = state_sha;
	rec.hypervisor_version = spec->hypervisor_version;
	rec.created_ns = vmf_realtime_ns();
	rec.build_ms = (uint64_t)(vmf_now_ms() - t0);
	rec.error = (char *)"";
	rec.kernel_path = (char *)img->kernel;
	rec.initrd_path = (char *)img->initrd;
	rec.image_dir = (char *)img->dir;
	if ((r = vmf_catalog_template_put(cat, &rec, err)) < 0)
		goto fail_final;
	log_tpl(VMF_LOG_INFO, id, "template ready in %llu ms (state %llu bytes, memory %llu bytes)",
		(unsigned long long)rec.build_ms, (unsigned long long)rec.state_size,
		(unsigned long long)rec.memory_size);
	progress(pfn, ctx, "template ready");
	return vmf_catalog_template_get(cat, id, out, err);

fail_final:
	vmf_rm_rf(final_dir, &ignored);
fail:
	vmf_rm_rf(build_dir, &ignored);
	return vmf_error_prefix(err, "building template %.16s", id);
}

static int
mark_broken(struct vmf_catalog *cat, const Vmf__Catalog__TemplateRecord *rec, struct vmf_error *err)
{
	if (cat) {
		struct vmf_error e2;
		if (vmf_catalog_template_set_state(cat, rec->id, VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN,
						   err->msg, &e2) < 0)
			log_tpl(VMF_LOG_WARN, rec->id, "cannot mark template broken: %s", e2.msg);
		else
			log_tpl(VMF_LOG_WARN, rec->id, "template marked broken: %s", err->msg);
	}
	return -err->code;
}

static int
check_file(const Vmf__Catalog__TemplateRecord *rec, const char *what, const char *path,
	   uint64_t size, const char *sha, bool full, struct vmf_error *err)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return vmf_err_sys(err, errno, "template %.16s is broken: its %s file %s is missing",
				   rec->id, what, path);
	if ((uint64_t)st.st_size != size)
		return vmf_err(err, EBADMSG, "template %.16s is broken: its %s file %s has %llu bytes, "
			       "expected %llu", rec->id, what, path, (unsigned long long)st.st_size,
			       (unsigned long long)size);
	if (full) {
		char got[VMF_SHA256_HEX];
		int r = vmf_sha256_file(path, got, err);
		if (r < 0)
			return r;
		if (strcmp(got, sha) != 0)
			return vmf_err(err, EBADMSG, "template %.16s is broken: its %s file %s does not "
				       "match its digest", rec->id, what, path);
	}
	return 0;
}

int
vmf_template_verify(struct vmf_catalog *cat, const Vmf__Catalog__TemplateRecord *rec, bool full,
		    struct vmf_error *err)
{
	if (rec->state != VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY)
		return vmf_err(err, EINVAL, "template %.16s is not ready (%s)", rec->id,
			       rec->state == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN ? "broken" : "building");
	int r = check_file(rec, "state", rec->state_file, rec->state_size, rec->state_sha256, full, err);
	if (r == 0 && rec->memory_file && *rec->memory_file)
		r = check_file(rec, "memory", rec->memory_file, rec->memory_size, rec->memory_sha256, full, err);
	if (r < 0 && err->code != ENOMEM)
		return mark_broken(cat, rec, err);
	return r;
}

int
vmf_template_clone(const struct vmf_template_params *p, const Vmf__Catalog__TemplateRecord *rec,
		   const char *vm_id, const char *run_dir, const char *share_dir, struct vmf_vmm **out,
		   struct vmf_error *err)
{
	*out = NULL;
	if (vmf_mkdir_p(run_dir, 0700, err) < 0 || vmf_mkdir_p(share_dir, 0700, err) < 0 ||
	    (p->share_mib && vmf_share_mount(share_dir, p->share_mib, err) < 0) ||
	    vmf_template_own_share(p, share_dir, err) < 0)
		return -err->code;
	char name[96];
	snprintf(name, sizeof(name), "vmfactory-%s", vm_id);
	vmf_vm_config cfg;
	base_config(&cfg, p, rec->kernel_path, rec->initrd_path);
	cfg.id = (char *)vm_id;
	cfg.name = name;
	cfg.run_dir = (char *)run_dir;
	cfg.share_dir = (char *)share_dir;
	cfg.incoming = true;
	bool full = rec->spec && rec->spec->full_memory;
	cfg.memory_mode = full ? VMF__HV__MEMORY_MODE__MEM_FULL : VMF__HV__MEMORY_MODE__MEM_CLONE_COW;
	cfg.on_guest_reset = (char *)(p->on_guest_reset ? p->on_guest_reset : "");
	cfg.memory_file = full ? (char *)"" : rec->memory_file;
	/* The clone must match the template's shape exactly, whatever the
	 * caller's current defaults say. */
	if (rec->spec) {
		cfg.vcpus = rec->spec->vcpus;
		cfg.max_vcpus = rec->spec->max_vcpus;
		cfg.memory_mib = rec->spec->memory_mib;
		cfg.max_memory_mib = rec->spec->max_memory_mib;
		cfg.memory_slots = rec->spec->memory_slots;
		cfg.cmdline = rec->spec->cmdline;
		cfg.nic = vmf_template_has_nic(rec);
		cfg.hotplug_ports = rec->spec->hotplug_ports;
		if (rec->spec->machine && *rec->spec->machine)
			cfg.machine = rec->spec->machine;
	}
	/* A snapshot's clone starts with what its VM had hot-added. */
	cfg.hotplugged_vcpus = rec->hotplugged_vcpus;
	cfg.n_dimms = rec->n_dimms;
	cfg.dimms = rec->dimms;
	int fd = open(rec->state_file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vmf_err_sys(err, errno, "template %.16s: cannot open its state file %s", rec->id,
				   rec->state_file);
	int r = p->ops->start_from_template(&cfg, fd, out, err);
	close(fd);
	if (r < 0)
		vmf_error_prefix(err, "cloning template %.16s", rec->id);
	return r;
}

/* ---- snapshots ---- */

struct name_ctx {
	const char *name;
	uid_t owner;
	char id[VMF_SHA256_HEX];
};

static int
match_name(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	(void)rec_err;
	struct name_ctx *n = ctx;
	if (rec && rec->name && strcmp(rec->name, n->name) == 0 && rec->owner_uid == (uint32_t)n->owner)
		snprintf(n->id, sizeof(n->id), "%s", id);
	return 0;
}

int
vmf_template_find_name(struct vmf_catalog *cat, uid_t owner, const char *name, Vmf__Catalog__TemplateRecord **out,
		       struct vmf_error *err)
{
	*out = NULL;
	struct name_ctx n = { .name = name, .owner = owner };
	int r = vmf_catalog_template_list(cat, match_name, &n, err);
	if (r < 0)
		return r;
	if (!n.id[0] && owner == 0)
		return vmf_err(err, ENOENT, "no template is named %s (vmfactory snapshot makes one; see "
			       "template list)", name);
	if (!n.id[0])
		return vmf_err(err, ENOENT, "uid %u has no template named %s", (unsigned)owner, name);
	return vmf_catalog_template_get(cat, n.id, out, err);
}

uint64_t
vmf_template_bytes(const Vmf__Catalog__TemplateRecord *rec)
{
	uint64_t n = rec->memory_size + rec->state_size;
	for (size_t i = 0; i < rec->n_dimms; i++)
		n += (uint64_t)rec->dimms[i]->size_mib << 20;
	return n;
}

int
vmf_template_remove(struct vmf_catalog *cat, const char *state_dir, const char *id, struct vmf_error *err)
{
	char dir[PATH_MAX];
	vmf_template_dir(state_dir, id, dir, sizeof(dir));
	int r = vmf_catalog_template_delete(cat, id, err);
	if (r < 0)
		return r;
	return vmf_rm_rf(dir, err);
}

int
vmf_template_snapshot(struct vmf_catalog *cat, const char *state_dir, const char *run_dir,
		      const struct vmf_snapshot_req *q, Vmf__Catalog__TemplateRecord **out,
		      struct vmf_snapshot_result *res, struct vmf_error *err)
{
	*out = NULL;
	memset(res, 0, sizeof(*res));
	const Vmf__Catalog__TemplateRecord *parent = q->parent;
	if (!q->p->ops->snapshot)
		return vmf_err(err, ENOTSUP, "the %s driver cannot snapshot a running VM into a template",
			       q->p->ops->name);
	/* A driver without template-share (Cloud Hypervisor) carries all RAM
	 * in the state stream: its templates, and snapshots of their clones,
	 * are full-memory ones. */
	bool full = !(q->p->ops->capabilities(q->vm) & VMF_CAP_TEMPLATE_SHARE);
	if (!parent->spec || (parent->spec->full_memory && !full))
		return vmf_err(err, ENOTSUP, "VM %s comes from a template without shared memory (share_memory = "
			       "no): its clones could not share a snapshot's RAM", q->vm_id);
	Vmf__Catalog__TemplateRecord *old = NULL;
	struct vmf_error e2;
	int r = vmf_template_find_name(cat, q->owner, q->name, &old, &e2);
	if (old)
		vmf__catalog__template_record__free_unpacked(old, NULL);
	if (r == 0)
		return vmf_err(err, EEXIST, "template name %s is in use (template rm it first, or choose another)",
			       q->name);
	if (r != -ENOENT)
		return vmf_err(err, e2.code, "%s", e2.msg);

	/* Not the spec's digest: a snapshot's state is not determined by its
	 * spec, and every snapshot is its own template. */
	char seed[512], id[VMF_SHA256_HEX];
	snprintf(seed, sizeof(seed), "snapshot\n%s\n%s\n%s\n%lld", q->name, parent->id, q->vm_id,
		 (long long)vmf_realtime_ns());
	vmf_sha256_hex(seed, strlen(seed), id);
	char tdir[PATH_MAX], final_dir[PATH_MAX], build_dir[PATH_MAX], rcv_run[PATH_MAX], bmem[PATH_MAX];
	snprintf(tdir, sizeof(tdir), "%s/templates", state_dir);
	vmf_template_dir(state_dir, id, final_dir, sizeof(final_dir));
	snprintf(build_dir, sizeof(build_dir), "%s/.build-%s-%d", tdir, id, (int)getpid());
	/* build-: restart recovery kills a QEMU left running under it. */
	snprintf(rcv_run, sizeof(rcv_run), "%s/build-%.16s-%d", run_dir, id, (int)getpid());
	snprintf(bmem, sizeof(bmem), "%s/memory", build_dir);
	if ((r = vmf_mkdir_p(tdir, 0700, err)) < 0)
		return r;
	/* The RAM files are written as the VM is copied: on a full disk the
	 * receiving QEMU would die of SIGBUS mid-copy, so say so up front. */
	uint64_t need = ((uint64_t)q->memory_mib << 20) + (16ull << 20);
	struct statvfs vfs;
	if (statvfs(tdir, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < need)
		return vmf_err(err, ENOSPC, "not enough space in %s for snapshot %s of VM %s: it may need %llu MiB, "
			       "%llu MiB are free; the VM keeps running", tdir, q->name, q->vm_id,
			       (unsigned long long)(need >> 20),
			       (unsigned long long)(((uint64_t)vfs.f_bavail * vfs.f_frsize) >> 20));
	struct vmf_error ignored;
	if (mkdir(build_dir, 0700) < 0)
		return vmf_err_sys(err, errno, "cannot create %s", build_dir);
	if (q->p->runas && *q->p->runas && (r = vmf_template_own_share(q->p, build_dir, err)) < 0)
		goto fail;

	int64_t t0 = vmf_now_ms();
	char name[128];
	snprintf(name, sizeof(name), "vmfactory-tpl-%.16s", id);
	vmf_vm_config cfg;
	base_config(&cfg, q->p, parent->kernel_path, parent->initrd_path);
	cfg.id = id;
	cfg.name = name;
	cfg.run_dir = rcv_run;
	cfg.cmdline = parent->spec->cmdline;
	if (parent->spec->machine && *parent->spec->machine)
		cfg.machine = parent->spec->machine;
	/* The receiver loads the VM's device state: its ports too. */
	cfg.hotplug_ports = parent->spec->hotplug_ports;
	/* The 9p device without a mount: a template's clones each point it at
	 * their own directory. */
	char share[PATH_MAX];
	snprintf(share, sizeof(share), "%s/share", build_dir);
	if (mkdir(share, 0700) < 0 || vmf_template_own_share(q->p, share, err) < 0) {
		r = err->code ? -err->code : vmf_err_sys(err, errno, "cannot create %s", share);
		goto fail;
	}
	cfg.share_dir = share;
	cfg.memory_mode = VMF__HV__MEMORY_MODE__MEM_TEMPLATE;
	cfg.memory_file = bmem;
	cfg.incoming = true;
	int sfd = vmf_open_beneath(build_dir, "state", O_WRONLY | O_CREAT | O_EXCL, 0600, err);
	if (sfd < 0) {
		r = sfd;
		goto fail;
	}
	struct vmf_snapshot_to to = { .cfg = &cfg };
	r = q->p->ops->snapshot(q->vm, &to, sfd, res, err);
	if (r == 0 && fsync(sfd) < 0)
		r = vmf_err_sys(err, errno, "cannot fsync the snapshot's state file");
	close(sfd);
	vmf_rm_rf(rcv_run, &ignored);
	if (r < 0)
		goto fail;

	Vmf__Catalog__TemplateRecord rec = VMF__CATALOG__TEMPLATE_RECORD__INIT;
	Vmf__Catalog__TemplateSpec spec = *parent->spec;
	char mem_sha[VMF_SHA256_HEX], state_sha[VMF_SHA256_HEX], bstate[PATH_MAX], mem[PATH_MAX], state[PATH_MAX];
	char dimm_sha[VMF_SNAPSHOT_MAX_DIMMS][VMF_SHA256_HEX], dimm_path[VMF_SNAPSHOT_MAX_DIMMS][PATH_MAX];
	char *dimm_shap[VMF_SNAPSHOT_MAX_DIMMS];
	Vmf__Hv__HotDimm dimms[VMF_SNAPSHOT_MAX_DIMMS], *dimmp[VMF_SNAPSHOT_MAX_DIMMS];
	snprintf(bstate, sizeof(bstate), "%s/state", build_dir);
	uint64_t memory_size = 0;
	spec.full_memory = spec.full_memory || full;
	if ((!full && ((r = fsync_path(bmem, err)) < 0 || (r = vmf_sha256_file(bmem, mem_sha, err)) < 0)) ||
	    (r = vmf_sha256_file(bstate, state_sha, err)) < 0)
		goto fail;
	for (unsigned k = 0; k < res->n_dimms; k++) {
		if ((r = fsync_path(res->dimms[k].path, err)) < 0 ||
		    (r = vmf_sha256_file(res->dimms[k].path, dimm_sha[k], err)) < 0)
			goto fail;
		memory_size += file_size(res->dimms[k].path);
		snprintf(dimm_path[k], sizeof(dimm_path[k]), "%s/dimm%u", final_dir, k);
		vmf__hv__hot_dimm__init(&dimms[k]);
		dimms[k].size_mib = res->dimms[k].size_mib;
		dimms[k].addr = res->dimms[k].addr;
		dimms[k].mem_path = dimm_path[k];
		dimmp[k] = &dimms[k];
		dimm_shap[k] = dimm_sha[k];
	}
	rec.memory_size = full ? 0 : file_size(bmem);
	rec.state_size = file_size(bstate);
	memory_size += rec.memory_size;
	if (rename(build_dir, final_dir) < 0) {
		r = vmf_err_sys(err, errno, "cannot move %s to %s", build_dir, final_dir);
		goto fail;
	}
	if ((r = vmf_fsync_dir(tdir, err)) < 0)
		goto fail_final;
	VMF_FAULT("snapshot-before-record");
	snprintf(mem, sizeof(mem), "%s/memory", final_dir);
	snprintf(state, sizeof(state), "%s/state", final_dir);
	rec.schema_version = TEMPLATE_SCHEMA_VERSION;
	rec.id = id;
	rec.spec = &spec;
	rec.state = VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY;
	rec.dir = final_dir;
	rec.memory_file = full ? (char *)"" : mem;
	rec.memory_sha256 = full ? (char *)"" : mem_sha;
	rec.state_file = state;
	rec.state_sha256 = state_sha;
	rec.hypervisor_version = parent->hypervisor_version;
	rec.created_ns = vmf_realtime_ns();
	rec.build_ms = (uint64_t)(vmf_now_ms() - t0);
	rec.error = (char *)"";
	rec.kernel_path = parent->kernel_path;
	rec.initrd_path = parent->initrd_path;
	rec.image_dir = parent->image_dir;
	rec.name = (char *)q->name;
	rec.parent_template_id = parent->id;
	rec.source_vm_id = (char *)q->vm_id;
	rec.owner_uid = (uint32_t)q->owner;
	rec.hotplugged_vcpus = res->hotplugged_vcpus;
	rec.n_dimms = res->n_dimms;
	rec.dimms = dimmp;
	rec.n_dimm_sha256 = res->n_dimms;
	rec.dimm_sha256 = dimm_shap;
	if ((r = vmf_catalog_template_put(cat, &rec, err)) < 0)
		goto fail_final;
	log_tpl(VMF_LOG_INFO, id, "template %s made from VM %s in %llu ms (VM paused %llu ms, memory %llu bytes, "
		"state %llu bytes)", q->name, q->vm_id, (unsigned long long)rec.build_ms,
		(unsigned long long)res->paused_ms, (unsigned long long)memory_size,
		(unsigned long long)rec.state_size);
	return vmf_catalog_template_get(cat, id, out, err);

fail_final:
	vmf_rm_rf(final_dir, &ignored);
fail:
	vmf_rm_rf(rcv_run, &ignored);
	vmf_rm_rf(build_dir, &ignored);
	return vmf_error_prefix(err, "snapshot of VM %s into template %s", q->vm_id, q->name);
}

int
vmf_template_own_share(const struct vmf_template_params *p, const char *dir, struct vmf_error *err)
{
	if (!p->runas || !*p->runas)
		return 0;
	struct passwd pw, *res = NULL;
	char buf[4096];
	int e = getpwnam_r(p->runas, &pw, buf, sizeof(buf), &res);
	if (!res)
		return vmf_err(err, e ? e : ENOENT, "user %s (runas) does not exist", p->runas);
	/* The directory was just made by us, 0700: no link can stand in it. */
	if (lchown(dir, pw.pw_uid, pw.pw_gid) < 0)
		return vmf_err_sys(err, errno, "cannot give %s to user %s", dir, p->runas);
	return 0;
}

struct cleanup_ctx {
	char (*ids)[VMF_SHA256_HEX];
	size_t n, cap;
};

int
vmf_template_cleanup(struct vmf_catalog *cat, const char *state_dir, struct vmf_error *err)
{
	char tdir[PATH_MAX];
	snprintf(tdir, sizeof(tdir), "%s/templates", state_dir);
	DIR *d = opendir(tdir);
	if (!d)
		return errno == ENOENT ? 0 : vmf_err_sys(err, errno, "cannot list %s", tdir);
	struct dirent *de;
	int r = 0;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", tdir, de->d_name);
		bool remove = false;
		if (strncmp(de->d_name, ".build-", 7) == 0) {
			/* An unfinished build of a process that is gone (or us, at start). */
			remove = true;
		} else if (vmf_valid_template_id(de->d_name)) {
			Vmf__Catalog__TemplateRecord *rec = NULL;
			struct vmf_error e2;
			int g = vmf_catalog_template_get(cat, de->d_name, &rec, &e2);
			remove = g == -ENOENT;
			if (rec)
				vmf__catalog__template_record__free_unpacked(rec, NULL);
		}
		if (remove) {
			log_info("removing template leftovers %s", path);
			struct vmf_error e2;
			if (vmf_rm_rf(path, &e2) < 0 && r == 0)
				r = vmf_err(err, e2.code, "%s", e2.msg);
		}
	}
	closedir(d);
	return r;
}
