/* Template commands and check-config.  They work offline, on the catalog
 * directly: a template can be built, listed or collected with no daemon
 * running (and build, rm and gc refuse while one runs; see lock_state).
 * rm goes to the daemon when one answers (remote.c). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "driver.h"
#include "frame.h"
#include "template.h"
#include "util.h"

/* build, rm and gc write the catalog and remove template files, which a
 * running daemon also does (its builds in progress are .build-* dirs that
 * gc's cleanup would delete): they take the daemon's lock and refuse while
 * a daemon holds it.  The fd holds the lock until the command exits. */
static int
lock_state(const char *state_dir, const char *what, struct vmf_error *e)
{
	if (vmf_mkdir_p(state_dir, 0700, e) < 0)
		return -e->code;
	int fd = vmf_lock_state_dir(state_dir, e);
	if (fd == -EWOULDBLOCK)
		vmf_err(e, EWOULDBLOCK, "a vmfactory daemon (or another template command) is using state dir %s: "
			"stop it before template %s (systemctl stop vmfactory, or vmfactory destroy; assigned VMs "
			"keep running and the next daemon adopts them)", state_dir, what);
	return fd;
}

/* Closes what a template command opened (NULL, -1: nothing) and prints
 * r's error: the command's exit status. */
static int
close_offline(struct vmf_catalog *cat, int lock, struct vmf_config *cfg, int r, const struct vmf_error *e)
{
	if (cat)
		vmf_catalog_close(cat);
	if (lock >= 0)
		close(lock);
	if (cfg)
		vmf_config_free(cfg);
	return r < 0 ? fail(e) : 0;
}

static int
template_params(const struct cmd *cmd, struct args *a, struct vmf_daemon_opts *o, struct vmf_template_params *p,
		struct vmf_hv_info *info, struct vmf_image *img, Vmf__Catalog__TemplateSpec **spec,
		char id[VMF_SHA256_HEX], struct vmf_config *cfg, struct vmf_error *e)
{
	int r = fill_daemon_opts(cmd, a, o, cfg);
	if (r)
		return -EINVAL;
	memset(p, 0, sizeof(*p));
	p->ops = vmf_hv_by_name(o->hypervisor ? o->hypervisor : "qemu");
	if (!p->ops)
		return vmf_err(e, EINVAL, "unknown hypervisor %s", o->hypervisor);
	p->binary = o->qemu_binary;
	p->machine = o->machine;
	p->accel = o->accel;
	p->runas = o->runas;
	p->cmdline = VMF_DEFAULT_CMDLINE;
	p->vcpus = o->vcpus;
	p->max_vcpus = o->max_vcpus > o->vcpus ? o->max_vcpus : o->vcpus;
	p->memory_mib = o->memory_mib;
	p->max_memory_mib = o->max_memory_mib > o->memory_mib ? o->max_memory_mib : o->memory_mib;
	p->memory_slots = 8;
	p->full_memory = !o->share_memory;
	p->hotplug_ports = o->hotplug_ports;
	if ((r = vmf_image_load(o->image_dir, o->kernel, o->initrd, img, e)) < 0 ||
	    (r = p->ops->probe(o->qemu_binary, img->kernel, o->state_dir, info, e)) < 0 ||
	    (r = vmf_template_spec_new(p, info, img, spec, id, e)) < 0)
		return r;
	return 0;
}

static void
progress_line(void *ctx, const char *step)
{
	int64_t *t0 = ctx;
	printf("%6.1f s  %s\n", (vmf_now_ms() - *t0) / 1000.0, step);
	fflush(stdout);
}

int
cmd_template_build(const struct cmd *cmd, struct args *a)
{
	struct vmf_daemon_opts o;
	struct vmf_template_params p;
	struct vmf_hv_info info;
	struct vmf_image img;
	Vmf__Catalog__TemplateSpec *spec = NULL;
	char id[VMF_SHA256_HEX];
	struct vmf_error e = {0};
	struct vmf_config cfg = {0};
	int r = template_params(cmd, a, &o, &p, &info, &img, &spec, id, &cfg, &e);
	if (r == -EINVAL && !e.code) {
		vmf_config_free(&cfg);
		return EXIT_USAGE;
	}
	struct vmf_catalog *cat = NULL;
	int lock = -1;
	if (r == 0 && (lock = r = lock_state(o.state_dir, "build", &e)) >= 0)
		r = vmf_catalog_open(o.state_dir, &cat, &e);
	Vmf__Catalog__TemplateRecord *rec = NULL;
	int64_t t0 = vmf_now_ms();
	if (r == 0)
		r = vmf_template_build(cat, o.state_dir, o.run_dir, &p, spec, &img, progress_line, &t0, &rec, &e);
	vmf_template_spec_free(spec);
	if (close_offline(cat, lock, &cfg, r, &e))
		return EXIT_FAILURE;
	printf("template %s ready (%u vCPU, %u MiB, built in %.1f s)\n", rec->id, rec->spec->vcpus,
	       rec->spec->memory_mib, rec->build_ms / 1000.0);
	vmf__catalog__template_record__free_unpacked(rec, NULL);
	return 0;
}

struct list_ctx {
	bool json;
	json_object *arr;
	/* gc: the images the daemon's pools use, and the current hypervisor
	 * version; a template of another image or version is stale. */
	const struct vmf_image *images;
	unsigned n_images;
	const char *hv_version;
	struct vmf_catalog *cat;
	const char *state_dir;
	const struct vmf_hv_ops *ops;   /* gc: the configured driver */
	unsigned removed, other, in_use;
	int rc;
};

/* Counts the VM records (in the run dir) that name a template: a recorded
 * VM may still run on the template's memory file, and a restarted daemon
 * adopts it with that template. */
struct use_ctx {
	const char *template_id;
	unsigned n;
	char vm[64];               /* the first such VM */
};

static int
count_use(const char *id, Vmf__Catalog__VmRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	(void)rec_err;
	struct use_ctx *u = ctx;
	if (!rec || !rec->template_id || strcmp(rec->template_id, u->template_id))
		return 0;
	if (u->n++ == 0)
		snprintf(u->vm, sizeof(u->vm), "%s", id);
	return 0;
}

static int
template_users(struct vmf_catalog *cat, const char *id, struct use_ctx *u, struct vmf_error *e)
{
	*u = (struct use_ctx){ .template_id = id };
	return vmf_catalog_vm_list(cat, count_use, u, e);
}

/* The catalog with its VM records: the run dir is made as the daemon makes
 * it, searchable, since the daemon does not change a dir that exists. */
static int
open_with_vms(const char *state_dir, const char *run_dir, struct vmf_catalog **cat, struct vmf_error *e)
{
	int r = vmf_catalog_open(state_dir, cat, e);
	if (r == 0 && (r = vmf_mkdir_p(run_dir, 0711, e)) == 0)
		r = vmf_catalog_open_runtime(*cat, run_dir, e);
	return r;
}

static int
list_one(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	struct list_ctx *l = ctx;
	if (l->json)
		json_object_array_add(l->arr, template_json(id, rec, rec_err));
	else
		template_human(id, rec, rec_err);
	return 0;
}

int
cmd_template_list(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	struct vmf_catalog *cat;
	struct vmf_error e = {0};
	int r = vmf_catalog_open(a->state_dir, &cat, &e), rc;
	/* A tenant cannot read the catalog: it sees the templates the daemon
	 * shows it (its own snapshots, the pools'). */
	if ((r == -EACCES || r == -EPERM) && (rc = template_list_remote(a)) != EXIT_NO_DAEMON)
		return rc;
	if (r < 0)
		return fail(&e);
	struct list_ctx l = { .json = a->json, .arr = json_object_new_array() };
	if (!a->json)
		printf("TEMPLATE          STATE     SIZE (base/max)             MEMORY   STATE FILE       MEMORY FILE    AGE\n");
	r = vmf_catalog_template_list(cat, list_one, &l, &e);
	vmf_catalog_close(cat);
	if (r < 0) {
		json_object_put(l.arr);
		return fail(&e);
	}
	if (a->json)
		print_json(l.arr);
	else
		json_object_put(l.arr);
	return 0;
}

int
cmd_template_rm(const struct cmd *cmd, struct args *a)
{
	const char *arg = a->pos[0];
	if (!vmf_valid_template_id(arg) && !vmf_valid_pool_name(arg)) {
		fprintf(stderr, "vmfactory: '%s' is not a template id (64 hex digits) or name; see template list\n",
			arg);
		return EXIT_FAILURE;
	}
	/* A running daemon removes it: it knows who owns the template and what
	 * uses it (its pools and VMs), and a tenant reaches its own snapshots
	 * only through it.  Without one, root works on the catalog directly. */
	int rc = template_rm_remote(a);
	if (rc != EXIT_NO_DAEMON)
		return rc;
	/* The config's pools: one of a snapshot's name keeps it. */
	struct vmf_daemon_opts o;
	struct vmf_config cfg = {0};
	if (fill_daemon_opts(cmd, a, &o, &cfg)) {
		vmf_config_free(&cfg);
		return EXIT_USAGE;
	}
	struct vmf_catalog *cat = NULL;
	struct vmf_error e = {0};
	int lock = lock_state(a->state_dir, "rm", &e), r = lock;
	if (r >= 0)
		r = open_with_vms(a->state_dir, a->run_dir, &cat, &e);
	char id[VMF_SHA256_HEX];
	snprintf(id, sizeof(id), "%s", arg);
	Vmf__Catalog__TemplateRecord *rec = NULL;
	/* A name is the operator's (root's); a tenant's snapshot by its id. */
	if (r == 0 && !vmf_valid_template_id(arg) && (r = vmf_template_find_name(cat, 0, arg, &rec, &e)) == 0)
		snprintf(id, sizeof(id), "%s", rec->id);
	else if (r == 0 && vmf_catalog_template_get(cat, id, &rec, NULL) < 0)
		rec = NULL;
	for (unsigned i = 0; r == 0 && rec && rec->name && *rec->name && rec->owner_uid == 0 && i < o.n_pools; i++)
		if (o.pools[i].template_name && strcmp(o.pools[i].template_name, rec->name) == 0)
			r = vmf_err(&e, EBUSY, "template %s (%s) is used by pool %s of the config: remove the pool's "
				    "template = %s first", rec->name, id, o.pools[i].name, rec->name);
	if (rec)
		vmf__catalog__template_record__free_unpacked(rec, NULL);
	struct use_ctx u;
	if (r == 0 && (r = template_users(cat, id, &u, &e)) == 0 && u.n)
		r = vmf_err(&e, EBUSY, "template %s is in use by %u VM record(s), VM %s first: release or destroy "
			    "them (a daemon started on this state dir adopts them) before removing it", id, u.n, u.vm);
	if (r == 0)
		r = vmf_template_remove(cat, a->state_dir, id, &e);
	if (close_offline(cat, lock, &cfg, r, &e))
		return EXIT_FAILURE;
	printf("removed template %s\n", id);
	return 0;
}

static int
gc_one(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	(void)rec_err;
	struct list_ctx *l = ctx;
	/* Stale: built from an image no pool uses (kernel and initrd) or a QEMU
	 * that is no longer current, unreadable, or broken. */
	/* Another driver's template: its version cannot be compared with this
	 * one's, and a daemon configured for that driver may still use it.
	 * (A record naming no driver is judged: no daemon can use it.) */
	const struct vmf_hv_ops *tops = rec && rec->spec ? vmf_hv_by_kind(rec->spec->hypervisor) : NULL;
	if (tops && tops != l->ops) {
		l->other++;
		return 0;
	}
	/* A snapshot cannot be made again: only template rm removes it. */
	if (rec && rec->name && *rec->name && rec->state == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_READY) {
		printf("kept template %s: snapshot %s\n", id, rec->name);
		return 0;
	}
	bool stale = !rec || !rec->spec || rec->state == VMF__CATALOG__TEMPLATE_STATE__TEMPLATE_BROKEN ||
		     strcmp(rec->spec->hypervisor_version, l->hv_version);
	bool used = false;
	for (unsigned i = 0; !stale && !used && i < l->n_images; i++)
		used = strcmp(rec->spec->kernel_sha256, l->images[i].kernel_sha256) == 0 &&
		       strcmp(rec->spec->initrd_sha256, l->images[i].initrd_sha256) == 0;
	stale = stale || !used;
	if (!stale)
		return 0;
	struct vmf_error e = {0};
	struct use_ctx u;
	if (template_users(l->cat, id, &u, &e) < 0) {
		print_error("%s", e.msg);
		l->rc = EXIT_FAILURE;
		return 0;
	}
	if (u.n) {
		printf("kept template %s: in use by %u VM record(s), VM %s first\n", id, u.n, u.vm);
		l->in_use++;
		return 0;
	}
	if (vmf_template_remove(l->cat, l->state_dir, id, &e) < 0) {
		print_error("%s", e.msg);
		l->rc = EXIT_FAILURE;
	} else {
		printf("removed template %s\n", id);
		l->removed++;
	}
	return 0;
}

int
cmd_template_gc(const struct cmd *cmd, struct args *a)
{
	struct vmf_daemon_opts o;
	struct vmf_config cfg = {0};
	if (fill_daemon_opts(cmd, a, &o, &cfg)) {
		vmf_config_free(&cfg);
		return EXIT_USAGE;
	}
	struct vmf_error e = {0};
	struct vmf_hv_info info;
	/* The daemon's image (for pools without their own) and each pool's. */
	static struct vmf_image imgs[VMF_MAX_POOLS + 1];
	unsigned nimg = 0;
	struct vmf_catalog *cat = NULL;
	/* The daemon's driver, from the config as the daemon reads it: the
	 * current version is that driver's, and only its templates are judged. */
	const struct vmf_hv_ops *ops = vmf_hv_by_name(o.hypervisor ? o.hypervisor : "qemu");
	int lock = -1;
	int r = ops ? 0 : vmf_err(&e, EINVAL, "unknown hypervisor %s", o.hypervisor);
	if (r == 0)
		r = lock = lock_state(o.state_dir, "gc", &e);
	bool daemon_image = o.n_pools == 0;
	for (unsigned i = 0; r >= 0 && i < o.n_pools; i++) {
		if (!o.pools[i].image_dir) {
			daemon_image = true;
			continue;
		}
		r = vmf_image_load(o.pools[i].image_dir, NULL, NULL, &imgs[nimg++], &e);
		if (r < 0)
			vmf_error_prefix(&e, "pool %s", o.pools[i].name);
	}
	if (r >= 0 && daemon_image)
		r = vmf_image_load(o.image_dir, o.kernel, o.initrd, &imgs[nimg++], &e);
	if (r >= 0)
		r = ops->probe(o.qemu_binary, imgs[0].kernel, o.state_dir, &info, &e);
	if (r == 0)
		r = open_with_vms(o.state_dir, o.run_dir, &cat, &e);
	struct list_ctx l = { .cat = cat, .state_dir = o.state_dir, .ops = ops,
			      .images = imgs, .n_images = nimg, .hv_version = info.version };
	if (r == 0)
		r = vmf_catalog_template_list(cat, gc_one, &l, &e);
	if (r == 0)
		r = vmf_template_cleanup(cat, o.state_dir, &e);
	if (close_offline(cat, lock, &cfg, r, &e))
		return EXIT_FAILURE;
	printf("%u templates removed", l.removed);
	if (l.other)
		printf("; %u of another hypervisor than %s kept", l.other, ops->name);
	if (l.in_use)
		printf("; %u stale kept while VMs use them", l.in_use);
	printf("\n");
	return l.rc;
}

/* Needs no lock: it only reads the file. */
int
cmd_check_config(const struct cmd *cmd, struct args *a)
{
	(void)cmd;
	const char *path = a->npos ? a->pos[0] : VMF_DEFAULT_CONFIG;
	struct vmf_config cfg;
	struct vmf_error e = {0};
	int r = vmf_config_load(&cfg, path, &e);
	if (r < 0 && cfg.errors)
		fputs(cfg.errors, stderr);
	vmf_config_free(&cfg);
	if (r < 0)
		return fail(&e);
	printf("%s: ok\n", path);
	return 0;
}
