/* Catalog records as a starting daemon reads them (template/catalog.c):
 * whatever bytes an LMDB value holds, a damaged file or another version's
 * record.  Byte 0 picks the table, the rest is the value:
 *   0: a VM record in the run dir's "vms", read as recovery does
 *      (vmf_catalog_vm_list, its callback copying the record into a VM
 *      with vmf_vm_from_record, cache/vm.c);
 *   1: a template record in the state dir's "templates", read by id and
 *      listed (startup's pools and template gc);
 *   2: the run dir's schema marker ("meta"/"schema"), then the runtime
 *      environment opened again, as at a daemon's start.
 * The harness aborts when a record the catalog accepted breaks what its
 * readers rely on (strings within their buffers, disks in their slots). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "catalog.h"
#include "../catalog_hooks.h"
#include "log.h"
#include "util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64], state[96], run[96];
static struct vmf_catalog *cat;

#define VM_ID "0f0e0d0c-0b0a-4908-8706-050403020100"
#define TPL_ID "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static void
remove_dir(void)
{
	if (cat)
		vmf_catalog_close(cat);
	vmf_rm_rf(dir, NULL);
}

static void
open_catalog(void)
{
	struct vmf_error e;
	if (vmf_catalog_open(state, &cat, &e) < 0 || vmf_catalog_open_runtime(cat, run, &e) < 0) {
		fprintf(stderr, "fuzz_catalog: %s\n", e.msg);
		abort();
	}
}

/* ---- record mode (contrib/fuzz record): VMF_FUZZ_RECORD=DIR,
 * VMF_FUZZ_STATE and VMF_FUZZ_RUN a daemon's state and run dirs: each of
 * its VM and template records is written to DIR as a seed (its table byte,
 * then its bytes as stored). ---- */

static int seq;

static void
write_seed(const char *out, uint8_t table, const void *msg, size_t (*size)(const void *),
	   size_t (*pack)(const void *, uint8_t *))
{
	size_t n = size(msg);
	uint8_t *buf = malloc(n + 1);
	if (!buf)
		abort();
	buf[0] = table;
	pack(msg, buf + 1);
	char p[4200];
	snprintf(p, sizeof(p), "%s/%s-%d", out, table ? "template" : "vm", ++seq);
	FILE *f = fopen(p, "we");
	if (!f || fwrite(buf, 1, n + 1, f) != n + 1 || fclose(f) != 0)
		abort();
	free(buf);
}

static size_t
vm_size(const void *m)
{
	return vmf__catalog__vm_record__get_packed_size(m);
}

static size_t
vm_pack(const void *m, uint8_t *b)
{
	return vmf__catalog__vm_record__pack(m, b);
}

static size_t
tpl_size(const void *m)
{
	return vmf__catalog__template_record__get_packed_size(m);
}

static size_t
tpl_pack(const void *m, uint8_t *b)
{
	return vmf__catalog__template_record__pack(m, b);
}

static int
dump_vm(const char *id, Vmf__Catalog__VmRecord *rec, const struct vmf_error *e, void *ctx)
{
	(void)id, (void)e;
	if (rec)
		write_seed(ctx, 0, rec, vm_size, vm_pack);
	return 0;
}

static int
dump_template(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *e, void *ctx)
{
	(void)id, (void)e;
	if (rec)
		write_seed(ctx, 1, rec, tpl_size, tpl_pack);
	return 0;
}

static void
record(const char *out, const char *st, const char *rn)
{
	struct vmf_catalog *c = NULL;
	struct vmf_error e = {0};
	if (vmf_catalog_open(st, &c, &e) < 0 || vmf_catalog_open_runtime(c, rn, &e) < 0 ||
	    vmf_catalog_vm_list(c, dump_vm, (void *)out, &e) < 0 ||
	    vmf_catalog_template_list(c, dump_template, (void *)out, &e) < 0) {
		fprintf(stderr, "record: %s\n", e.msg);
		exit(1);
	}
	vmf_catalog_close(c);
	fprintf(stderr, "record: %d records into %s\n", seq, out);
	exit(0);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	vmf_log_set_level(VMF_LOG_OFF);
	const char *rec = getenv("VMF_FUZZ_RECORD"), *st = getenv("VMF_FUZZ_STATE"), *rn = getenv("VMF_FUZZ_RUN");
	if (rec && st && rn)
		record(rec, st, rn);
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/vmf-fuzz-catalog-XXXXXX", tmp && strlen(tmp) < 30 ? tmp : "/tmp");
	if (!mkdtemp(dir))
		abort();
	snprintf(state, sizeof(state), "%s/state", dir);
	snprintf(run, sizeof(run), "%s/run", dir);
	if (vmf_mkdir_p(state, 0700, NULL) < 0 || vmf_mkdir_p(run, 0700, NULL) < 0)
		abort();
	atexit(remove_dir);
	open_catalog();
	return 0;
}

static int
vm_seen(const char *id, Vmf__Catalog__VmRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	int *seen = ctx;
	(*seen)++;
	if (strcmp(id, VM_ID))
		abort();
	if (!rec) {
		/* Unreadable: recovery deletes it, naming why. */
		if (!rec_err || !rec_err->msg[0])
			abort();
		return 0;
	}
	struct vmf_vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return 0;
	vmf_vm_from_record(vm, rec);
	if (strnlen(vm->id, sizeof(vm->id)) == sizeof(vm->id) ||
	    strnlen(vm->run_dir, sizeof(vm->run_dir)) == sizeof(vm->run_dir) ||
	    strnlen(vm->state_file, sizeof(vm->state_file)) == sizeof(vm->state_file) ||
	    vm->n_hostfwd > VMF_MAX_HOSTFWD)
		abort();
	for (unsigned i = 0; i < VMF_DISK_SLOTS; i++) {
		if (vm->disks[i] && strnlen(vm->disks[i]->path, sizeof(vm->disks[i]->path)) == sizeof(vm->disks[i]->path))
			abort();
		free(vm->disks[i]);
	}
	free(vm);
	return 0;
}

static int
template_seen(const char *id, Vmf__Catalog__TemplateRecord *rec, const struct vmf_error *rec_err, void *ctx)
{
	int *seen = ctx;
	(*seen)++;
	if (strcmp(id, TPL_ID) || (!rec && (!rec_err || !rec_err->msg[0])))
		abort();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	struct vmf_error e = {0};
	int seen = 0;
	switch (data[0] % 3) {
	case 0:
		if (vmf_catalog_put_raw(cat, "vms", VM_ID, data + 1, size - 1, &e) < 0)
			abort();
		if (vmf_catalog_vm_list(cat, vm_seen, &seen, &e) < 0 || seen != 1)
			abort();
		Vmf__Catalog__VmRecord *vr = NULL;
		if (vmf_catalog_vm_get(cat, VM_ID, &vr, &e) == 0)
			vmf__catalog__vm_record__free_unpacked(vr, NULL);
		if (vmf_catalog_vm_delete(cat, VM_ID, &e) < 0)
			abort();
		break;
	case 1: {
		if (vmf_catalog_put_raw(cat, "templates", TPL_ID, data + 1, size - 1, &e) < 0)
			abort();
		Vmf__Catalog__TemplateRecord *tr = NULL;
		if (vmf_catalog_template_get(cat, TPL_ID, &tr, &e) == 0)
			vmf__catalog__template_record__free_unpacked(tr, NULL);
		else if (!e.msg[0])
			abort();
		if (vmf_catalog_template_list(cat, template_seen, &seen, &e) < 0 || seen != 1)
			abort();
		if (vmf_catalog_template_delete(cat, TPL_ID, &e) < 0)
			abort();
		break;
	}
	case 2: {
		/* The marker as it was, put back after: the next input starts
		 * from a catalog a daemon accepts. */
		if (vmf_catalog_put_raw(cat, "runtime-meta", "schema", data + 1, size - 1, &e) < 0)
			abort();
		vmf_catalog_close(cat);
		cat = NULL;
		struct vmf_catalog *c = NULL;
		if (vmf_catalog_open(state, &c, &e) < 0)
			abort();
		int r = vmf_catalog_open_runtime(c, run, &e);
		if (r < 0 && !strstr(e.msg, run))
			abort();   /* a refused environment is named */
		vmf_catalog_close(c);
		vmf_rm_rf(run, NULL);
		if (vmf_mkdir_p(run, 0700, NULL) < 0)
			abort();
		open_catalog();
		break;
	}
	}
	return 0;
}
