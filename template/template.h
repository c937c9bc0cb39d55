/* Templates: build one (cold boot, pause, save), verify its files, clone it.
 * The catalog (catalog.h) stores the records; this file makes and uses them. */
#ifndef VMF_TEMPLATE_H
#define VMF_TEMPLATE_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "catalog.pb-c.h"
#include "driver.h"
#include "error.h"
#include "util.h"

struct vmf_catalog;

/* The guest image a template is built from. */
struct vmf_image {
	char dir[PATH_MAX];          /* the image directory, as configured */
	char kernel[PATH_MAX];
	char initrd[PATH_MAX];
	char kernel_sha256[VMF_SHA256_HEX];
	char initrd_sha256[VMF_SHA256_HEX];
	char agent_sha256[VMF_SHA256_HEX];
};

/* Loads image_dir/{vmlinuz,initrd.img} (kernel/initrd override the paths)
 * and hashes them: the initrd's digest is part of the template spec, so an
 * image with other packages or overlay files makes another template.  While
 * a file comes from image_dir, the directory must hold a manifest too (an
 * image of contrib/image/build-image); the error names what is missing. */
int vmf_image_load(const char *image_dir, const char *kernel, const char *initrd,
		   struct vmf_image *img, struct vmf_error *err);

/* Everything besides the image that shapes a template. */
struct vmf_template_params {
	const struct vmf_hv_ops *ops;
	const char *binary;          /* NULL = driver default */
	const char *machine;         /* NULL = q35 */
	const char *accel;           /* NULL = auto */
	const char *cmdline;
	unsigned vcpus, max_vcpus;
	unsigned memory_mib, max_memory_mib, memory_slots;
	bool full_memory;            /* no page sharing between clones */
	const char *runas;           /* QEMU drops to this user; NULL = stays ours */
	bool nic;                    /* a NIC, for a network given at hand-out, where the driver can */
	unsigned hotplug_ports;      /* free PCIe root ports for the runtime, where the driver can */
	unsigned share_mib;          /* a clone's share: its own tmpfs of this size; 0 = a plain dir */
	const char *on_guest_reset;  /* "stop" (NULL) or "keep": its clones' VmConfig */
};

/* The spec's device name of the NIC; whether a template has it. */
#define VMF_TEMPLATE_NIC_DEVICE "virtio-net:hub"
bool vmf_template_params_nic(const struct vmf_template_params *p);
/* p's hotplug_ports where its driver reserves ports, else 0. */
unsigned vmf_template_params_hotplug_ports(const struct vmf_template_params *p);
bool vmf_template_has_nic(const Vmf__Catalog__TemplateRecord *rec);

/* Gives dir to the runas user of p (the 9p share QEMU serves after
 * dropping privileges); a no-op without runas. */
int vmf_template_own_share(const struct vmf_template_params *p, const char *dir, struct vmf_error *err);

/* A clone's share on a file system of its own (template/share.c): a tmpfs
 * of mib MiB mounted nosuid,nodev on dir (an empty directory), made before
 * the VMM opens dir.  vmf_share_check: EPERM unless share_dir is such a
 * mount (a hand-out to a tenant needs one).  vmf_share_unmount takes it
 * off (a no-op where there is none) before run_dir is removed; on failure
 * share_dir may still be a mount point, and nothing may be removed
 * through it. */
int vmf_share_mount(const char *dir, unsigned mib, struct vmf_error *err);
int vmf_share_check(const char *run_dir, const char *share_dir, struct vmf_error *err);
int vmf_share_unmount(const char *run_dir, const char *share_dir, struct vmf_error *err);

/* Fills a spec (caller frees with vmf_template_spec_free) and its id. */
int vmf_template_spec_new(const struct vmf_template_params *p, const struct vmf_hv_info *info,
			  const struct vmf_image *img, Vmf__Catalog__TemplateSpec **spec,
			  char id[VMF_SHA256_HEX], struct vmf_error *err);
void vmf_template_spec_free(Vmf__Catalog__TemplateSpec *spec);

typedef void (*vmf_progress_fn)(void *ctx, const char *step);

/* Builds the template for spec unless a ready one exists; *out gets the
 * ready record (free with vmf__catalog__template_record__free_unpacked).
 * Files are built in a hidden directory and renamed into place; the record is
 * committed only after every file is fsynced, so a crash leaves either no
 * record or a complete one. */
int vmf_template_build(struct vmf_catalog *cat, const char *state_dir, const char *run_dir,
		       const struct vmf_template_params *p, const Vmf__Catalog__TemplateSpec *spec,
		       const struct vmf_image *img, vmf_progress_fn progress, void *ctx,
		       Vmf__Catalog__TemplateRecord **out, struct vmf_error *err);

/* Checks the template's files: existence and sizes always, SHA-256 digests
 * when full.  On a mismatch the record is marked broken in the catalog (when
 * cat is given) and the error names the template and the file. */
int vmf_template_verify(struct vmf_catalog *cat, const Vmf__Catalog__TemplateRecord *rec,
			bool full, struct vmf_error *err);

/* Starts a paused clone of rec with its own id, run dir (created 0700) and
 * share dir. */
int vmf_template_clone(const struct vmf_template_params *p, const Vmf__Catalog__TemplateRecord *rec,
		       const char *vm_id, const char *run_dir, const char *share_dir,
		       struct vmf_vmm **out, struct vmf_error *err);

/* ---- snapshots: a running VM's state as a new template ---- */

/* The snapshot of owner named name (names are unique per owner; 0 is the
 * operator: root and the daemon's user), or -ENOENT. */
int vmf_template_find_name(struct vmf_catalog *cat, uid_t owner, const char *name,
			   Vmf__Catalog__TemplateRecord **out, struct vmf_error *err);
/* A template's files and record bytes: memory file, DIMMs and state. */
uint64_t vmf_template_bytes(const Vmf__Catalog__TemplateRecord *rec);
/* Removes template id: its record first (a crash in between leaves files
 * vmf_template_cleanup removes), then its directory. */
int vmf_template_remove(struct vmf_catalog *cat, const char *state_dir, const char *id, struct vmf_error *err);

struct vmf_snapshot_req {
	const struct vmf_template_params *p;         /* ops, binary, runas of the VM's pool */
	struct vmf_vmm *vm;                          /* running; the caller's job owns it */
	const char *vm_id;
	const Vmf__Catalog__TemplateRecord *parent;  /* the VM's template */
	const char *name;                            /* validated (vmf_valid_pool_name) */
	uid_t owner;                                 /* recorded; 0 for the operator */
	unsigned memory_mib;                         /* the VM's now, hot-added included */
};

/* Turns q->vm's current state into a new ready template named q->name
 * (ops->snapshot).  Refuses a name in use, or too little space, before any
 * work.  Files are made in a hidden .build- directory (cleanup removes it
 * after a crash) and the record is committed last, after every file is
 * fsynced.  *out gets the record; res says how long the VM was paused. */
int vmf_template_snapshot(struct vmf_catalog *cat, const char *state_dir, const char *run_dir,
			  const struct vmf_snapshot_req *q, Vmf__Catalog__TemplateRecord **out,
			  struct vmf_snapshot_result *res, struct vmf_error *err);

/* Removes build leftovers and template directories no record points to. */
int vmf_template_cleanup(struct vmf_catalog *cat, const char *state_dir, struct vmf_error *err);

/* Directory of a template: <state_dir>/templates/<id>. */
void vmf_template_dir(const char *state_dir, const char *id, char *buf, size_t n);

#endif
