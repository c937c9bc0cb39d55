/* Guest images made by contrib/image/build-image with --packages and
 * --overlay: what the manifest lists, that the build is reproducible, that
 * two pools of two images live in one daemon (each VM sees its own image's
 * files: the overlay's boot script leaves a marker, and the output of a
 * packaged program, in the VM's 9p share), that their templates differ, and
 * that `template gc` removes the template of an image no longer configured.
 * Real QEMU under TCG, pools of one VM. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

/* The overlay's boot script: once the agent has mounted the share, the
 * output of `hello` (when the image has it) and then a marker go there. */
static const char boot_script[] =
	"#!/bin/sh\n"
	"(\n"
	"\twhile ! grep -q ' /mnt/share ' /proc/mounts; do sleep 1; done\n"
	"\tif command -v hello >/dev/null; then hello > /mnt/share/.hello && mv /mnt/share/.hello /mnt/share/hello.out; fi\n"
	"\tcp /etc/vmf-test-marker /mnt/share/.marker && mv /mnt/share/.marker /mnt/share/marker\n"
	") &\n";

static void
write_file(const char *path, const char *text, mode_t mode)
{
	struct vmf_error e = {0};
	ck_assert_msg(vmf_write_file_atomic(path, text, strlen(text), mode, &e) == 0, "%s", e.msg);
}

/* An overlay dir: etc/vmf-test-marker holding marker, and the boot script. */
static void
make_overlay(const char *dir, const char *marker)
{
	char p[800];
	struct vmf_error e = {0};
	snprintf(p, sizeof p, "%s/etc/vmf-init.d", dir);
	ck_assert_int_eq(vmf_mkdir_p(p, 0755, &e), 0);
	snprintf(p, sizeof p, "%s/etc/vmf-test-marker", dir);
	write_file(p, marker, 0644);
	snprintf(p, sizeof p, "%s/etc/vmf-init.d/50-test", dir);
	write_file(p, boot_script, 0755);
}

/* Runs build-image into out; the .deb cache is kept in the build dir across
 * runs, seeded with the installed image's downloads (the kernel). */
static void
build_image(const char *out, const char *extra)
{
	const char *b = getenv("VMFACTORY_BUILDDIR"), *img = getenv("VMFACTORY_IMAGE_DIR");
	char cache[700], cmd[4096];
	snprintf(cache, sizeof cache, "%s/tests/image-cache", b ? b : ".");
	snprintf(cmd, sizeof cmd,
		 "mkdir -p '%s' && for f in '%s'/.cache/*.deb; do [ -e \"$f\" ] && [ ! -e '%s'/\"${f##*/}\" ] && "
		 "ln -s \"$f\" '%s'/; done; '%s' --agent '%s/contrib/agent/vmf-agent' --out '%s' --cache '%s' %s "
		 ">> '%s/build-image.log' 2>&1",
		 cache, img, cache, cache, vmf_test_src("contrib/image/build-image"), b ? b : ".", out, cache, extra,
		 tmp);
	int64_t t0 = vmf_now_ms();
	int rc = system(cmd);
	char logp[700], *log = NULL;
	snprintf(logp, sizeof logp, "%s/build-image.log", tmp);
	vmf_read_file(logp, &log, NULL, 1 << 20, NULL);
	ck_assert_msg(rc == 0, "build-image %s failed (%d): %s", extra, rc, log ? log : "");
	printf("build-image %s: %.1f s\n", extra, (vmf_now_ms() - t0) / 1000.0);
	free(log);
}

static char *
read_text(const char *path)
{
	char *s = NULL;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_read_file(path, &s, NULL, 1 << 20, &e) == 0, "%s", e.msg);
	return s;
}

/* The manifest line that starts with prefix (NULL when none). */
static bool
manifest_has(const char *manifest, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = manifest; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == ' ' || !p[n]))
			return true;
	return false;
}

static void
manifest_sha(const char *dir, const char *file, char sha[VMF_SHA256_HEX])
{
	char p[800];
	struct vmf_error e = {0};
	snprintf(p, sizeof p, "%s/%s", dir, file);
	ck_assert_msg(vmf_sha256_file(p, sha, &e) == 0, "%s", e.msg);
}

struct handed {
	char id[64], share[700];
};

static void
get_from(struct handed *h, const char *pool)
{
	char sockd[700], *out = NULL;
	snprintf(h->share, sizeof h->share, "%s/%s-share", tmp, pool);
	snprintf(sockd, sizeof sockd, "%s/%s-sock", tmp, pool);
	int rc = vmf(&out, "get --cpus 1 --memory 192 --pool %s --sandbox sb-%s --share-dir %s --sock-dir %s "
		     "--timeout 300 -o json", pool, pool, h->share, sockd);
	ck_assert_msg(rc == 0, "get from pool %s exited %d: %s", pool, rc, out);
	json_object *j = json_tokener_parse(out);
	ck_assert_ptr_nonnull(j);
	snprintf(h->id, sizeof h->id, "%s", json_object_get_string(path(j, "id", NULL)));
	json_object_put(j);
	free(out);
}

/* Waits (deadline) for a file in a VM's share; its contents. */
static char *
wait_share_file(const struct handed *h, const char *name)
{
	char p[800];
	snprintf(p, sizeof p, "%s/%s", h->share, name);
	wait_until(access(p, F_OK) == 0, 180000, "VM %s: its boot script left no %s in its share %s", h->id, name,
		   h->share);
	return read_text(p);
}

/* pools[] or templates[] entry of status whose key k is v. */
static json_object *
find_by(json_object *arr, const char *k, const char *v)
{
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		json_object *x = json_object_array_get_idx(arr, i);
		if (strcmp(json_object_get_string(path(x, k, NULL)), v) == 0)
			return x;
	}
	ck_abort_msg("no entry with %s = %s", k, v);
	return NULL;
}

START_TEST(two_images_side_by_side)
{
	char ova[700], ovb[700], imga[700], imgb[700], imgb2[700], extra[2000];
	snprintf(ova, sizeof ova, "%s/overlay-a", tmp);
	snprintf(ovb, sizeof ovb, "%s/overlay-b", tmp);
	snprintf(imga, sizeof imga, "%s/image-a", tmp);
	snprintf(imgb, sizeof imgb, "%s/image-b", tmp);
	snprintf(imgb2, sizeof imgb2, "%s/image-b2", tmp);
	make_overlay(ova, "image-a\n");
	make_overlay(ovb, "image-b\n");

	/* hello: a small program with one library dependency (libc6). */
	snprintf(extra, sizeof extra, "--packages hello --overlay '%s'", ova);
	build_image(imga, extra);
	snprintf(extra, sizeof extra, "--overlay '%s'", ovb);
	build_image(imgb, extra);
	build_image(imgb2, extra);

	/* The manifest lists the base, each package with its version and each
	 * overlay file with its digest. */
	char mpath[800], sha[VMF_SHA256_HEX], line[400];
	snprintf(mpath, sizeof mpath, "%s/manifest", imga);
	char *man = read_text(mpath);
	ck_assert_msg(manifest_has(man, "requested hello"), "%s", man);
	ck_assert_msg(manifest_has(man, "package hello") && manifest_has(man, "package libc6"), "%s", man);
	ck_assert_msg(manifest_has(man, "kernel-package") && manifest_has(man, "busybox-static") &&
		      manifest_has(man, "agent"), "%s", man);
	manifest_sha(ova, "etc/vmf-init.d/50-test", sha);
	snprintf(line, sizeof line, "overlay etc/vmf-init.d/50-test 755 %s", sha);
	ck_assert_msg(manifest_has(man, line), "no '%s' in %s", line, man);
	manifest_sha(ova, "etc/vmf-test-marker", sha);
	snprintf(line, sizeof line, "overlay etc/vmf-test-marker 644 %s", sha);
	ck_assert_msg(manifest_has(man, line), "no '%s' in %s", line, man);
	free(man);
	/* Same inputs, same bytes. */
	char sb[VMF_SHA256_HEX], sb2[VMF_SHA256_HEX], sa[VMF_SHA256_HEX];
	manifest_sha(imgb, "initrd.img", sb);
	manifest_sha(imgb2, "initrd.img", sb2);
	manifest_sha(imga, "initrd.img", sa);
	ck_assert_str_eq(sb, sb2);
	ck_assert_str_ne(sa, sb);

	/* One daemon, two pools of the same sizes on two images. */
	char cfg[700], text[2000];
	snprintf(cfg, sizeof cfg, "%s/two.conf", tmp);
	const char *pool_keys = "size = 1\nvcpus = 1\nmax_vcpus = 1\nmemory_mib = 192\nmax_memory_mib = 192\n";
	snprintf(text, sizeof text, "[pool a]\n%simage_dir = %s\n[pool b]\n%simage_dir = %s\n", pool_keys, imga,
		 pool_keys, imgb);
	write_file(cfg, text, 0644);
	char *out = NULL;
	int rc = vmf(&out, "check-config %s", cfg);
	ck_assert_msg(rc == 0, "check-config: %s", out);
	free(out);
	int64_t t0 = vmf_now_ms();
	rc = vmf(&out, "init --config %s --wait --timeout 900", cfg);
	ck_assert_msg(rc == 0, "init exited %d: %s", rc, out);
	free(out);
	printf("two pools on two images full after %.1f s\n", (vmf_now_ms() - t0) / 1000.0);

	json_object *st = vmf_json("status -o json%s", "");
	json_object *pa = find_by(path(st, "pools", NULL), "name", "a");
	json_object *pb = find_by(path(st, "pools", NULL), "name", "b");
	ck_assert_str_eq(json_object_get_string(path(pa, "image_dir", NULL)), imga);
	ck_assert_str_eq(json_object_get_string(path(pb, "image_dir", NULL)), imgb);
	char tida[VMF_SHA256_HEX], tidb[VMF_SHA256_HEX];
	snprintf(tida, sizeof tida, "%s", json_object_get_string(path(pa, "template_id", NULL)));
	snprintf(tidb, sizeof tidb, "%s", json_object_get_string(path(pb, "template_id", NULL)));
	ck_assert_str_ne(tida, tidb);
	json_object *ta = find_by(path(st, "templates", NULL), "id", tida);
	json_object *tb = find_by(path(st, "templates", NULL), "id", tidb);
	ck_assert_str_eq(json_object_get_string(path(ta, "image_dir", NULL)), imga);
	ck_assert_str_eq(json_object_get_string(path(tb, "image_dir", NULL)), imgb);
	json_object_put(st);

	/* Each VM runs its own image: its boot script, its packages. */
	struct handed a, b;
	get_from(&a, "a");
	get_from(&b, "b");
	char *ma = wait_share_file(&a, "marker"), *mb = wait_share_file(&b, "marker");
	ck_assert_str_eq(ma, "image-a\n");
	ck_assert_str_eq(mb, "image-b\n");
	free(ma);
	free(mb);
	char *hello = wait_share_file(&a, "hello.out");
	ck_assert_msg(strstr(hello, "Hello, world!") != NULL, "hello in image a printed: %s", hello);
	free(hello);
	char p[800];
	snprintf(p, sizeof p, "%s/hello.out", b.share);
	ck_assert_msg(access(p, F_OK) < 0, "image b has no hello package, yet its VM ran it");

	ck_assert_int_eq(vmf(NULL, "release %s", a.id), 0);
	ck_assert_int_eq(vmf(NULL, "release %s", b.id), 0);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);

	/* gc keeps the templates of every configured image... */
	rc = vmf(&out, "template gc --config %s", cfg);
	ck_assert_msg(rc == 0 && strstr(out, "0 templates removed"), "gc exited %d: %s", rc, out);
	free(out);
	/* ...and removes the one of an image no pool uses any more. */
	char cfg1[700];
	snprintf(cfg1, sizeof cfg1, "%s/one.conf", tmp);
	snprintf(text, sizeof text, "[pool a]\n%simage_dir = %s\n", pool_keys, imga);
	write_file(cfg1, text, 0644);
	rc = vmf(&out, "template gc --config %s", cfg1);
	char want[200];
	snprintf(want, sizeof want, "removed template %s", tidb);
	ck_assert_msg(rc == 0 && strstr(out, want) && strstr(out, "1 templates removed"), "gc exited %d: %s", rc, out);
	free(out);
	json_object *tl = vmf_json("template list -o json%s", "");
	ck_assert_int_eq(json_object_array_length(tl), 1);
	ck_assert_str_eq(json_object_get_string(path(json_object_array_get_idx(tl, 0), "id", NULL)), tida);
	ck_assert_str_eq(json_object_get_string(path(json_object_array_get_idx(tl, 0), "image_dir", NULL)), imga);
	json_object_put(tl);
}
END_TEST

/* A pool's image directory is checked before anything starts: the error
 * names the pool, the directory and what it lacks. */
START_TEST(bad_image_dir_fails_clearly)
{
	const char *img = getenv("VMFACTORY_IMAGE_DIR");
	char bad[700], cfg[700], text[2000], f[800], errf[700];
	snprintf(bad, sizeof bad, "%s/no-manifest", tmp);
	ck_assert_int_eq(mkdir(bad, 0755), 0);
	const char *files[] = { "vmlinuz", "initrd.img" };
	for (int i = 0; i < 2; i++) {
		char src[800];
		snprintf(src, sizeof src, "%s/%s", img, files[i]);
		snprintf(f, sizeof f, "%s/%s", bad, files[i]);
		ck_assert_int_eq(symlink(src, f), 0);
	}
	snprintf(errf, sizeof errf, "%s/cli.err", tmp);
	struct { const char *dir, *want; } cases[] = {
		{ bad, "manifest" },
		{ "/nonexistent-vmf-image-dir", "/nonexistent-vmf-image-dir" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(cfg, sizeof cfg, "%s/bad%zu.conf", tmp, i);
		snprintf(text, sizeof text, "[pool good]\nsize = 1\n[pool odd]\nsize = 1\nmemory_mib = 128\nimage_dir = %s\n",
			 cases[i].dir);
		write_file(cfg, text, 0644);
		unlink(errf);
		ck_assert_int_eq(vmf(NULL, "init --config %s --foreground", cfg), 1);
		char *err = read_text(errf);
		ck_assert_msg(strstr(err, "pool odd") && strstr(err, cases[i].dir) && strstr(err, cases[i].want),
			      "error for %s: %s", cases[i].dir, err);
		free(err);
		unlink(errf);
		ck_assert_int_eq(vmf(NULL, "template gc --config %s", cfg), 1);
		err = read_text(errf);
		ck_assert_msg(strstr(err, cases[i].dir) && strstr(err, cases[i].want), "gc error: %s", err);
		free(err);
	}
	ck_assert_int_eq(count_qemu(), 0);
}
END_TEST

/* The check: a template of an image with python3 hands out VMs that
 * run it.  The image (about a minute to build) lives in the build dir and is
 * rebuilt when this build's agent is not the one in it, so a fresh clone runs
 * the check for real; VMFACTORY_PY3_IMAGE names a prebuilt one instead. */
START_TEST(python3_image_runs_python)
{
	const char *py3 = getenv("VMFACTORY_PY3_IMAGE");
	char own[700];
	if (!py3 || !*py3) {
		const char *b = getenv("VMFACTORY_BUILDDIR");
		snprintf(own, sizeof own, "%s/tests/py3-image", b ? b : ".");
		py3 = own;
		char agent[700], sha[VMF_SHA256_HEX], line[VMF_SHA256_HEX + 16], *man = NULL;
		snprintf(agent, sizeof agent, "%s/contrib/agent/vmf-agent", b ? b : ".");
		struct vmf_error e = {0};
		ck_assert_msg(vmf_sha256_file(agent, sha, &e) == 0, "%s", e.msg);
		snprintf(line, sizeof line, "agent %s", sha);
		char manp[800];
		snprintf(manp, sizeof manp, "%s/manifest", py3);
		if (vmf_read_file(manp, &man, NULL, 1 << 20, NULL) < 0 || !manifest_has(man, line)) {
			int64_t t0 = vmf_now_ms();
			build_image(py3, "--packages python3");
			printf("python3 image built in %.1f s\n", (vmf_now_ms() - t0) / 1000.0);
		}
		free(man);
	}
	char man[800];
	snprintf(man, sizeof man, "%s/manifest", py3);
	if (access(man, R_OK) < 0) {
		vmf_test_skip("no python3 image at %s (VMFACTORY_PY3_IMAGE): build it with contrib/image/build-image "
			      "--agent BUILD/contrib/agent/vmf-agent --packages python3 --out %s", py3, py3);
		return;
	}
	char *out = NULL;
	int64_t t0 = vmf_now_ms();
	int rc = vmf(&out, "init --image-dir %s --pool 1 --cpus 1 --max-cpus 1 --memory 256 --max-memory 256 --wait "
		     "--timeout 900", py3);
	ck_assert_msg(rc == 0, "init on the python3 image exited %d: %s", rc, out);
	free(out);
	printf("python3 image: pool full after %.1f s\n", (vmf_now_ms() - t0) / 1000.0);
	struct got g;
	do_get(&g, "py3", 1, 256);
	ck_assert_msg(g.rc == 0, "get exited %d", g.rc);
	/* Not vmf(): it puts the common options last, after the command's --. */
	char cmd[4096], buf[4096];
	snprintf(cmd, sizeof cmd, "%s exec %s %s -- python3 -c 'print(6*7)' 2>>%s/cli.err", exe, g.id, common_opts, tmp);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	size_t n = fread(buf, 1, sizeof buf - 1, p);
	buf[n] = '\0';
	int st = pclose(p);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0 && strcmp(buf, "42\n") == 0,
		      "vmfactory exec %s -- python3 -c 'print(6*7)' exited %d: '%s'", g.id,
		      WIFEXITED(st) ? WEXITSTATUS(st) : -1, buf);
	json_object_put(g.rec);
	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("image");
	TCase *tc = tcase_create("image");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 1500);
	ADD_TEST(tc, bad_image_dir_fails_clearly);
	ADD_TEST(tc, two_images_side_by_side);
	suite_add_tcase(s, tc);
	/* Skips without a python3 image (or an exec command): its own meson
	 * test, image-python3, so the skip shows. */
	if (test_selected("python3_image_runs_python")) {
		TCase *py = tcase_create("python3");
		tcase_set_tags(py, VMF_TEST_OWN_CASE);
		tcase_add_checked_fixture(py, setup, cleanup);
		tcase_set_timeout(py, 1500);
		tcase_add_test(py, python3_image_runs_python);
		suite_add_tcase(s, py);
	}
	return vmf_test_run(s);
}
