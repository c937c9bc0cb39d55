/* End to end: demand-shaped pools, real QEMU under TCG.  One
 * pool of 2 (base 1 vCPU / 256 MiB): with shape = off, requests above the
 * base are resized on the hand-out path and no clone is ever grown; with
 * shaping on (shape_max = 1) the pool learns the size it is asked for and
 * its warm-up grows a clone to it, which the next such request gets with
 * no hot-add and its CPUs online.  The second daemon reuses the first
 * one's template. */
#include <json-c/json.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemonlib.h"
#include "frame.h"
#include "testlib.h"
#include "util.h"

static void
write_config(char *conf, size_t n, const char *text)
{
	struct vmf_error e = {0};
	snprintf(conf, n, "%s/vmfactory.conf", tmp);
	ck_assert_msg(vmf_write_file_atomic(conf, text, strlen(text), 0600, &e) == 0, "%s", e.msg);
}

/* The first pool's row for vcpus / mib in status (NULL: none), in *s,
 * which the caller puts. */
static json_object *
size_row(json_object **s, int vcpus, int mib)
{
	*s = vmf_json("status -o json%s", "");
	json_object *sizes = path(json_object_array_get_idx(path(*s, "pools", NULL), 0), "sizes", NULL);
	for (size_t i = 0; i < json_object_array_length(sizes); i++) {
		json_object *z = json_object_array_get_idx(sizes, i);
		if (json_object_get_int(path(z, "vcpus", NULL)) == vcpus &&
		    json_object_get_int(path(z, "memory_mib", NULL)) == mib)
			return z;
	}
	return NULL;
}

static int
ready_of_size(int vcpus, int mib)
{
	json_object *s, *z = size_row(&s, vcpus, mib);
	int n = z ? json_object_get_int(path(z, "ready", NULL)) : 0;
	json_object_put(s);
	return n;
}

static int
pool_key(const char *key)
{
	json_object *s = vmf_json("status -o json%s", "");
	int v = json_object_get_int(path(json_object_array_get_idx(path(s, "pools", NULL), 0), key, NULL));
	json_object_put(s);
	return v;
}

/* A GetVM of vcpus / mib; how it was served ("shaped", "resize", ...). */
static void
get_as(struct got *g, const char *name, int vcpus, int mib, const char *want_handout)
{
	do_get(g, name, vcpus, mib);
	ck_assert_msg(g->rc == 0, "GetVM %s of %d vCPUs / %d MiB failed", name, vcpus, mib);
	const char *h = json_object_get_string(path(g->rec, "handout", NULL));
	printf("%s: %d vCPUs / %d MiB served as %s\n", name, vcpus, mib, h);
	ck_assert_str_eq(h, want_handout);
	ck_assert_int_ge(json_object_get_int(path(g->rec, "vcpus", NULL)), vcpus);
	ck_assert_int_ge(json_object_get_int(path(g->rec, "memory_mib", NULL)), mib);
}

static bool pool_full(void);

/* From a full pool, so that the request is never a miss. */
static void
get_release(const char *name, int vcpus, int mib, const char *want_handout)
{
	wait_until(pool_full(), 180000, "the pool did not refill");
	struct got g = {0};
	get_as(&g, name, vcpus, mib, want_handout);
	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	json_object_put(g.rec);
}

static bool
pool_full(void)
{
	return pool_key("ready") == 2 && pool_key("filling") == 0;
}

static bool
shaped_ready(void)
{
	return ready_of_size(2, 512) >= 1;
}

START_TEST(popular_size_is_served_shaped_and_off_never_shapes)
{
	char conf[700];
	/* shape = off: every request above base is resized on the hand-out path. */
	write_config(conf, sizeof conf, "[daemon]\nshape = off\nshape_max = 1\n");
	ck_assert_int_eq(vmf(NULL, "init --config %s --pool 2 --wait", conf), 0);
	for (int i = 0; i < 4; i++) {
		char name[32];
		snprintf(name, sizeof name, "off-%d", i);
		get_release(name, 2, 512, "resize");
	}
	wait_until(pool_full(), 180000, "the pool did not refill");
	json_object *s, *z = size_row(&s, 2, 512);
	ck_assert_ptr_nonnull(z);
	ck_assert_int_eq(json_object_get_int(path(z, "ready", NULL)), 0);
	ck_assert_int_eq(json_object_get_int(path(z, "planned", NULL)), 0);
	ck_assert_int_eq(json_object_get_int(path(path(z, "handouts", NULL), "resize", NULL)), 4);
	ck_assert_str_eq(json_object_get_string(path(json_object_array_get_idx(path(s, "pools", NULL), 0), "shape",
						     NULL)), "off");
	json_object *vms = path(s, "vms", NULL);
	for (size_t i = 0; i < json_object_array_length(vms); i++)
		ck_assert_int_eq(json_object_get_int(path(json_object_array_get_idx(vms, i), "vcpus", NULL)), 1);
	json_object_put(s);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);

	/* Shaping on, at most one clone: after three requests of 2 vCPUs /
	 * 512 MiB (each resized), the refill grows a clone to that size. */
	int port = free_port();
	char text[200];
	snprintf(text, sizeof text, "[daemon]\nshape_max = 1\nmetrics_listen = 127.0.0.1:%d\n", port);
	write_config(conf, sizeof conf, text);
	ck_assert_int_eq(vmf(NULL, "init --config %s --pool 2 --wait", conf), 0);
	for (int i = 0; i < 3; i++) {
		char name[32];
		snprintf(name, sizeof name, "learn-%d", i);
		get_release(name, 2, 512, "resize");
	}
	int64_t t0 = vmf_now_ms();
	wait_until(shaped_ready(), 180000, "no clone of 2 vCPUs / 512 MiB appeared in the pool");
	printf("a shaped clone was ready %lld ms after the third request\n", (long long)(vmf_now_ms() - t0));
	wait_until(pool_full(), 180000, "the pool did not refill");
	/* shape_max = 1: one shaped clone, one base. */
	ck_assert_int_eq(ready_of_size(2, 512), 1);
	ck_assert_int_eq(ready_of_size(1, 256), 1);

	struct got g = {0};
	get_as(&g, "shaped", 2, 512, "shaped");
	json_object *in = vmf_json("inspect %s -o json", g.id);
	ck_assert_int_eq(json_object_get_int(path(path(in, "guest", NULL), "online_cpus", NULL)), 2);
	/* 512 MiB less what the kernel keeps; above what 256 MiB could give. */
	ck_assert_int_gt(json_object_get_int64(path(path(in, "guest", NULL), "mem_total_kib", NULL)), 300 * 1024);
	json_object_put(in);
	/* A base request takes the base clone, not the shaped one. */
	struct got b = {0};
	get_as(&b, "base", 1, 256, "base");

	z = size_row(&s, 2, 512);
	ck_assert_ptr_nonnull(z);
	json_object *h = path(z, "handouts", NULL);
	ck_assert_int_eq(json_object_get_int(path(h, "shaped", NULL)), 1);
	ck_assert_int_eq(json_object_get_int(path(h, "resize", NULL)), 3);
	ck_assert_int_eq(json_object_get_int(path(z, "planned", NULL)), 1);
	json_object_put(s);
	char *m = http_get(port, "/metrics");
	static const char *const want[] = {
		"vmfactory_handouts_total{pool=\"default\",size=\"2x512\",hit=\"shaped\"} 1\n",
		"vmfactory_handouts_total{pool=\"default\",size=\"2x512\",hit=\"resize\"} 3\n",
		"vmfactory_handouts_total{pool=\"default\",size=\"1x256\",hit=\"base\"} 1\n",
		"# TYPE vmfactory_pool_shaped gauge\n", "vmfactory_pool_shaped{pool=\"default\",size=\"2x512\"} ",
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		ck_assert_msg(strstr(m, want[i]) != NULL, "metrics lack '%s':\n%.3000s", want[i], m);
	free(m);
	ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	ck_assert_int_eq(vmf(NULL, "release %s", b.id), 0);
	json_object_put(g.rec);
	json_object_put(b.rec);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	assert_daemon_log_clean();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("shape");
	TCase *tc = tcase_create("shape");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 900);
	ADD_TEST(tc, popular_size_is_served_shaped_and_off_never_shapes);
	suite_add_tcase(s, tc);
	return vmf_test_run(s);
}
