/* Control socket requests as the daemon decodes them (factory/control.c):
 * the input is the byte stream a client sends.  Each frame goes through the
 * length cap, unpacking and the version check in read_cb's order; a frame
 * that fails the first two ends the stream, as the daemon closes the
 * connection.  GetVM requests then go through the request checks of
 * getvm.c's validate(): the sandbox id, the pool name and the choice of a
 * pool (among two fixed ones), and the share_dir/sock_dir checks, the
 * latter confined to a scratch directory. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "factory.h"
#include "frame.h"
#include "log.h"
#include "pool.h"
#include "util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char root[64];
static struct vmf_sandbox_policy policy;   /* root is the only sandbox root */
static struct vmf_pool_list pools = TAILQ_HEAD_INITIALIZER(pools);
static struct vmf_pool pool[2];
static Vmf__Catalog__TemplateSpec spec[2];

static void
add_pool(int i, const char *name, unsigned vcpus, unsigned mem, bool full_memory)
{
	vmf__catalog__template_spec__init(&spec[i]);
	spec[i].vcpus = vcpus;
	spec[i].memory_mib = mem;
	spec[i].max_vcpus = 4;
	spec[i].max_memory_mib = 4096;
	spec[i].full_memory = full_memory;
	snprintf(pool[i].name, sizeof(pool[i].name), "%s", name);
	pool[i].spec = &spec[i];
	TAILQ_INSERT_TAIL(&pools, &pool[i], link);
}

static void
remove_root(void)
{
	vmf_rm_rf(root, NULL);
}

/* Every kind of entry the path check tells apart: absent, empty and
 * non-empty directories, a file, symlinks to a directory and to nothing. */
static void
make_root(void)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(root, sizeof(root), "%s/vmf-fuzz-control-XXXXXX", tmp && strlen(tmp) < 30 ? tmp : "/tmp");
	if (!mkdtemp(root))
		abort();
	atexit(remove_root);
	if (vmf_sandbox_policy_init(&policy, root, "/nonexistent/state", "/nonexistent/run", NULL) < 0)
		abort();
	char p[128];
	snprintf(p, sizeof(p), "%s/empty", root);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/full", root);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/full/f", root);
	fclose(fopen(p, "w"));
	snprintf(p, sizeof(p), "%s/file", root);
	fclose(fopen(p, "w"));
	snprintf(p, sizeof(p), "%s/link", root);
	if (symlink("full", p) < 0)
		abort();
	snprintf(p, sizeof(p), "%s/dangling", root);
	if (symlink("nowhere", p) < 0)
		abort();
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	vmf_log_set_level(VMF_LOG_OFF);
	make_root();
	add_pool(0, "private", 1, 256, true);
	add_pool(1, "shared", 1, 256, false);
	return 0;
}

/* Absolute request paths are taken relative to the scratch directory;
 * relative ones go in unchanged (refused before any lookup).  A ".." that
 * could climb out of the scratch directory is not looked up at all. */
static void
check_path(const char *what, const char *path)
{
	char full[2 * PATH_MAX];
	struct vmf_error err;
	if (strstr(path, "../"))
		return;
	if (path[0] == '/')
		snprintf(full, sizeof(full), "%s%s", root, path);
	else
		snprintf(full, sizeof(full), "%s", path);
	/* As a tenant (uid 12345) and as root: both refusals are exercised. */
	vmf_sandbox_check_path(&policy, what, full, 12345, &err);
	vmf_sandbox_check_path(&policy, what, full, 0, &err);
}

static void
check_get_vm(const Vmf__Control__GetVMRequest *g)
{
	if (!vmf_valid_sandbox_id(g->sandbox_id))
		return;
	if (g->pool && *g->pool && !vmf_valid_pool_name(g->pool))
		return;
	struct vmf_error err;
	if (g->vcpus && g->memory_mib && !vmf_pool_choose(&pools, g->pool, g->vcpus, g->memory_mib, &err) &&
	    err.code != ENOENT && err.code != ENOSPC)
		abort();
	if (!g->share_dir || !*g->share_dir || !g->sock_dir || !*g->sock_dir ||
	    strcmp(g->share_dir, g->sock_dir) == 0)
		return;
	check_path("share_dir", g->share_dir);
	check_path("sock_dir", g->sock_dir);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;
	while (size - off >= VMF_FRAME_HDR) {
		uint32_t n;
		struct vmf_error err;
		if (vmf_control_frame_len(data + off, &n, &err) < 0)
			break;
		if (size - off - VMF_FRAME_HDR < n)
			break;
		/* A copy of exactly n bytes: ASan then flags any read past the
		 * frame, which the daemon's evbuffer would hide. */
		uint8_t *buf = malloc(n ? n : 1);
		if (!buf)
			abort();
		memcpy(buf, data + off + VMF_FRAME_HDR, n);
		off += VMF_FRAME_HDR + n;
		Vmf__Control__Request *req;
		int r = vmf_control_decode(buf, n, &req, &err);
		free(buf);
		if (r < 0)
			break;
		if (vmf_control_check_version(req, &err) == 0) {
			switch (req->body_case) {
			case VMF__CONTROL__REQUEST__BODY_GET_VM:
				check_get_vm(req->get_vm);
				break;
			case VMF__CONTROL__REQUEST__BODY_RELEASE_VM:
				vmf_valid_uuid(req->release_vm->vm_id);
				break;
			case VMF__CONTROL__REQUEST__BODY_INSPECT:
				vmf_valid_uuid(req->inspect->vm_id);
				break;
			default:
				break;
			}
		}
		vmf__control__request__free_unpacked(req, NULL);
	}
	return 0;
}
