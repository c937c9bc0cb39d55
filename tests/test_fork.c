/* vmfactory snapshot, end to end (real QEMU under TCG): an assigned VM's
 * state becomes a template; VMs of it (get --template) see what the VM had
 * written, each with its own identity; the VM keeps running.  Then what a
 * snapshot refuses, and a daemon killed mid-snapshot. */
#include <errno.h>
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

static const char *
str(json_object *o, const char *a, const char *b)
{
	return json_object_get_string(path(o, a, b));
}

static void
get_template(struct got *g, const char *name, const char *tpl)
{
	snprintf(g->share, sizeof g->share, "%s/%s-share", tmp, name);
	snprintf(g->sockd, sizeof g->sockd, "%s/%s-sock", tmp, name);
	char *out = NULL;
	g->rc = vmf(&out, "get --template %s --sandbox %s --share-dir %s --sock-dir %s --timeout 120 -o json", tpl,
		    name, g->share, g->sockd);
	g->rec = g->rc == 0 ? json_tokener_parse(out) : NULL;
	free(out);
	if (g->rec)
		snprintf(g->id, sizeof g->id, "%s", str(g->rec, "id", NULL));
}

/* Snapshot receivers (QEMU named vmfactory-tpl-...) under our run dir. */
static int
receivers(void)
{
	char cmd[1400], line[32] = "";
	snprintf(cmd, sizeof cmd, "pgrep -fc '[v]mfactory-tpl-.*%s/build-' || true", run);
	FILE *f = popen(cmd, "r");
	ck_assert_ptr_nonnull(f);
	if (!fgets(line, sizeof line, f))
		line[0] = '\0';
	pclose(f);
	return atoi(line);
}

START_TEST(snapshot_forks_a_running_vm_into_a_template)
{
	/* The socket's dir reachable by the tenants: the daemon, not the file
	 * system, refuses them. */
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	ck_assert_int_eq(chmod(svc, 0711), 0);
	start_tenant_daemon("");
	struct got a = {0};
	do_get(&a, "fork-a", 1, 256);
	ck_assert_int_eq(a.rc, 0);
	free(vm_sh(a.id, "echo forked-$$ > /tmp/forkfile; cat /tmp/forkfile"));
	char *want = vm_sh(a.id, "cat /tmp/forkfile");

	json_object *s = vmf_json("snapshot %s --template snap1 -o json", a.id);
	printf("snapshot: %s\n", json_object_to_json_string(s));
	ck_assert_uint_eq(strlen(str(s, "template_id", NULL)), 64);
	ck_assert_str_eq(str(s, "name", NULL), "snap1");
	char tid[80];
	snprintf(tid, sizeof tid, "%s", str(s, "template_id", NULL));
	json_object_put(s);
	/* The original runs on, its share mounted again. */
	char *after = vm_sh(a.id, "cat /tmp/forkfile; grep -c vmfshare /proc/mounts");
	ck_assert_msg(strstr(after, want) && strstr(after, "\n1"), "the original after the snapshot: '%s'", after);
	free(after);

	/* Bad input, the VM running all along. */
	vmf_refused("template name snap1 is in use", "snapshot %s --template snap1", a.id);
	vmf_refused("template name is invalid", "snapshot %s --template 'bad name'", a.id);
	json_object *st = vmf_json("status -o json%s", "");
	json_object *vms = path(st, "vms", NULL);
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		json_object *v = json_object_array_get_idx(vms, i);
		if (strcmp(str(v, "state", NULL), "ready") == 0)
			vmf_refused("is not assigned and running (it is ready)", "snapshot %s --template snap2",
				    str(v, "id", NULL));
	}
	json_object_put(st);
	vmf_refused("no VM 00000000-0000-4000-8000-000000000000",
		    "snapshot 00000000-0000-4000-8000-000000000000 --template snap3");
	/* Another user's VM (root's here). */
	char msg[1100];
	const char *snap4[2] = { a.id, "snap4" };
	int rc = call_as(tu.uid_b, req_snapshot, snap4, msg, sizeof msg);
	assert_refused(rc, msg, EACCES, "is not yours", "a tenant's snapshot of root's VM");

	/* Two VMs of it: both see the file, each its own identity. */
	struct got b = {0}, c = {0};
	get_template(&b, "fork-b", "snap1");
	ck_assert_msg(b.rc == 0, "get --template snap1 failed");
	get_template(&c, "fork-c", "snap1");
	ck_assert_msg(c.rc == 0, "second get --template snap1 failed");
	ck_assert_str_eq(str(b.rec, "template_id", NULL), tid);
	for (int k = 0; k < 2; k++) {
		char *got = vm_sh(k ? c.id : b.id, "cat /tmp/forkfile");
		ck_assert_str_eq(got, want);
		free(got);
	}
	json_object *ia = vmf_json("inspect %s -o json", a.id), *ib = vmf_json("inspect %s -o json", b.id),
		    *ic = vmf_json("inspect %s -o json", c.id);
	ck_assert_str_ne(str(ib, "guest", "boot_id"), str(ic, "guest", "boot_id"));
	ck_assert_str_ne(str(ib, "guest", "boot_id"), str(ia, "guest", "boot_id"));
	ck_assert_str_ne(str(ib, "guest", "random_hex"), str(ic, "guest", "random_hex"));
	json_object_put(ia);
	json_object_put(ib);
	json_object_put(ic);
	free(vm_sh(a.id, "true"));
	json_object_put(a.rec);
	json_object_put(b.rec);
	json_object_put(c.rec);

	/* A pool of it ([pool X] template = NAME) fills with its clones. */
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	char conf[800];
	snprintf(conf, sizeof conf, "%s/fork.conf", tmp);
	FILE *f = fopen(conf, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "[pool forked]\nsize = 1\ntemplate = snap1\n");
	fclose(f);
	ck_assert_int_eq(vmf(NULL, "init --config %s --wait", conf), 0);
	struct got d = {0};
	get_template(&d, "fork-d", "snap1");
	ck_assert_int_eq(d.rc, 0);
	ck_assert_str_eq(str(d.rec, "handout", NULL), "base");
	char *got = vm_sh(d.id, "cat /tmp/forkfile");
	ck_assert_str_eq(got, want);
	free(got);
	json_object_put(d.rec);
	ck_assert_int_eq(vmf(NULL, "destroy --all"), 0);
	ck_assert_int_eq(qemu_gone(), 0);

	/* template rm refuses it while a pool of the config uses it; gc keeps it. */
	vmf_refused("is used by pool forked", "template rm snap1 --config %s", conf);
	char *out = NULL;
	ck_assert_int_eq(vmf(&out, "template gc --config %s", conf), 0);
	ck_assert_msg(strstr(out, "kept template") && strstr(out, "snap1"), "gc: %s", out);
	free(out);
	ck_assert_int_eq(vmf(&out, "template rm snap1"), 0);
	free(out);
	json_object *l = vmf_json("template list -o json%s", "");
	for (size_t i = 0; i < json_object_array_length(l); i++)
		ck_assert_str_ne(str(json_object_array_get_idx(l, i), "name", NULL), "snap1");
	json_object_put(l);
	free(want);
}
END_TEST

/* A VM grown at hand-out (a vCPU and a DIMM hot-added): the template's
 * clones start with both, online in the guest, its DIMM's contents too. */
START_TEST(hot_added_cpus_and_dimms_reach_the_clones)
{
	ck_assert_int_eq(vmf(NULL, "init --pool 0 --max-cpus 2 --max-memory 512 --wait"), 0);
	struct got a = {0};
	do_get(&a, "hot-a", 2, 384);
	ck_assert_int_eq(a.rc, 0);
	free(vm_sh(a.id, "echo hot > /tmp/hotfile"));
	json_object *s = vmf_json("snapshot %s --template hot1 -o json", a.id);
	printf("snapshot of 2 vCPU / 384 MiB: %s\n", json_object_to_json_string(s));
	ck_assert_int_eq(json_object_get_int64(path(s, "memory_size", NULL)), 384ll << 20);
	json_object_put(s);
	struct got b = {0};
	get_template(&b, "hot-b", "hot1");
	ck_assert_int_eq(b.rc, 0);
	ck_assert_int_eq(json_object_get_int(path(b.rec, "vcpus", NULL)), 2);
	ck_assert_int_eq(json_object_get_int(path(b.rec, "memory_mib", NULL)), 384);
	json_object *i = vmf_json("inspect %s -o json", b.id), *ia = vmf_json("inspect %s -o json", a.id);
	ck_assert_int_eq(json_object_get_int(path(i, "guest", "online_cpus")), 2);
	printf("guest memory: original %lld KiB, clone %lld KiB\n",
	       (long long)json_object_get_int64(path(ia, "guest", "mem_total_kib")),
	       (long long)json_object_get_int64(path(i, "guest", "mem_total_kib")));
	ck_assert_int_eq(json_object_get_int64(path(i, "guest", "mem_total_kib")),
			 json_object_get_int64(path(ia, "guest", "mem_total_kib")));
	json_object_put(i);
	json_object_put(ia);
	/* Status names the template's lineage. */
	json_object *st = vmf_json("status -o json%s", "");
	json_object *ts = path(st, "templates", NULL);
	bool found = false;
	for (size_t k = 0; k < json_object_array_length(ts); k++) {
		json_object *t = json_object_array_get_idx(ts, k);
		if (strcmp(str(t, "name", NULL), "hot1") == 0) {
			found = true;
			ck_assert_str_eq(str(t, "source_vm_id", NULL), a.id);
			ck_assert_uint_eq(strlen(str(t, "parent_template_id", NULL)), 64);
		}
	}
	ck_assert_msg(found, "status lists no template hot1");
	json_object_put(st);
	char *got = vm_sh(b.id, "cat /tmp/hotfile");
	ck_assert_str_eq(got, "hot");
	free(got);
	/* Still growable: a DIMM id after the ones it started with. */
	free(vm_sh(a.id, "true"));
	json_object_put(a.rec);
	json_object_put(b.rec);
}
END_TEST

/* Killed while the VM stands paused for the copy, after the copy (the
 * receiving QEMU still up), and with the template's files in their final
 * place but no record: a restarted daemon finds no template of that name,
 * no receiving QEMU, no half-made files, and the VM running. */
START_TEST(sigkill_mid_snapshot_leaves_nothing_half_made)
{
	REQUIRE_FAULT_BUILD();
	static const char *const points[] = { "snapshot-paused", "snapshot-received", "snapshot-before-record" };
	struct got a = {0};
	for (int k = 0; k < 3; k++) {
		/* The daemon inherits the fault point from init. */
		fault = points[k];
		ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
		fault = NULL;
		if (k == 0) {
			do_get(&a, "kill-a", 1, 256);
			ck_assert_int_eq(a.rc, 0);
		}
		vmf_refused("closed the connection", "snapshot %s --template snapk", a.id);
		/* The receiving QEMU outlived the daemon (at the last point it
		 * had quit already). */
		if (receivers() != (k < 2)) {
			char logc[800], log[3001] = "";
			snprintf(logc, sizeof logc, "tail -c 3000 %s/vmfactory.log", state);
			FILE *lf = popen(logc, "r");
			size_t n = lf ? fread(log, 1, 3000, lf) : 0;
			log[n] = '\0';
			if (lf)
				pclose(lf);
			ck_abort_msg("no receiver after a kill at %s: %s; daemon log: %s", points[k], cli_stderr(), log);
		}
		ck_assert_msg(!daemon_answers(), "the daemon survived its fault point %s", points[k]);
		ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
		poll_until(receivers() == 0, 30000);
		ck_assert_int_eq(receivers(), 0);
		char cmd[1400];
		snprintf(cmd, sizeof cmd, "ls -a %s/templates | grep -c '^\\.build' || true", state);
		FILE *f = popen(cmd, "r");
		char line[32] = "";
		ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
		pclose(f);
		ck_assert_int_eq(atoi(line), 0);
		/* Every template dir has its record: the pool's alone. */
		char tdir[800];
		snprintf(tdir, sizeof tdir, "%s/templates", state);
		json_object *st = vmf_json("status -o json%s", "");
		ck_assert_int_eq(vmf_test_dir_entries(tdir), (int)json_object_array_length(path(st, "templates", NULL)));
		json_object_put(st);
		/* No such template; the VM runs: its agent answers inspect
		 * (within the daemon's 10 s), which a paused guest cannot. */
		struct got b = {0};
		get_template(&b, "kill-b", "snapk");
		ck_assert_int_eq(b.rc, 1);
		assert_words(cli_stderr(), "snapk", points[k]);
		json_object *i = vmf_json("inspect %s -o json", a.id);
		json_object *g = NULL;
		ck_assert_msg(json_object_object_get_ex(i, "guest", &g), "VM %s does not run after a kill at %s: %s", a.id,
			      points[k], json_object_to_json_string(i));
		json_object_put(i);
		char *m = vm_sh(a.id, "grep -c vmfshare /proc/mounts || true");
		ck_assert_msg(strcmp(m, "1") == 0, "the share after a kill at %s: %s mounts", points[k], m);
		free(m);
		ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	}
	/* The name is free again. */
	ck_assert_int_eq(vmf(NULL, "init --pool 1 --wait"), 0);
	json_object *s = vmf_json("snapshot %s --template snapk -o json", a.id);
	json_object_put(s);
	json_object_put(a.rec);
}
END_TEST

/* Unmounts dir once nothing holds it (a QEMU just killed closes its files
 * a moment after it leaves /proc). */
static int
umount_settled(const char *dir)
{
	char cmd[800];
	snprintf(cmd, sizeof cmd, "umount %s 2>/dev/null", dir);
	int r;
	poll_until((r = system(cmd)) == 0, 10000);
	return r;
}

static bool state_mounted;

static void
cleanup_full_disk(void)
{
	if (state_mounted) {
		char *out = NULL;
		vmf(&out, "destroy --all");
		free(out);
		qemu_gone();
		umount_settled(state);
		state_mounted = false;
	}
	cleanup();
}

/* The state dir on a small ext4 with the template in it, then filled: the
 * snapshot is refused before any work, saying why, and the VM runs on. */
START_TEST(snapshot_on_a_full_disk_is_a_clear_error)
{
	char cmd[2400];
	snprintf(cmd, sizeof cmd,
		 "mkdir -p %s && truncate -s 400M %s/fs.img && mkfs.ext4 -q -F %s/fs.img >/dev/null 2>&1 && "
		 "mount -o loop %s/fs.img %s 2>/dev/null && chmod 0700 %s", state, tmp, tmp, tmp, state, state);
	if (system(cmd) != 0) {
		vmf_test_skip("cannot mount a loop file system here (needs CAP_SYS_ADMIN)");
		return;
	}
	state_mounted = true;
	ck_assert_int_eq(vmf(NULL, "init --pool 0 --wait"), 0);
	struct got a = {0};
	do_get(&a, "full-a", 1, 256);
	ck_assert_int_eq(a.rc, 0);
	/* 100 MiB left: less than the VM's 256 MiB of RAM. */
	snprintf(cmd, sizeof cmd, "fallocate -l $(( $(df -B1 --output=avail %s | tail -1) - 104857600 )) %s/filler",
		 state, state);
	ck_assert_int_eq(system(cmd), 0);
	vmf_refused("not enough space|keeps running", "snapshot %s --template full1", a.id);
	printf("full disk: %s", cli_stderr());
	free(vm_sh(a.id, "true"));
	snprintf(cmd, sizeof cmd, "test -z \"$(find %s/templates -mindepth 1 -maxdepth 1 -name '.build*')\"", state);
	ck_assert_int_eq(system(cmd), 0);
	json_object_put(a.rec);
}
END_TEST

int
main(void)
{
	const char *why = tenant_users_make("vfrk");
	if (why) {
		tenant_users_remove();
		return vmf_test_skip_all("fork tests: %s", why);
	}
	Suite *s = suite_create("fork");
	TCase *tc = tcase_create("fork");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 600);
	ADD_TEST(tc, snapshot_forks_a_running_vm_into_a_template);
	ADD_TEST(tc, hot_added_cpus_and_dimms_reach_the_clones);
	ADD_TEST(tc, sigkill_mid_snapshot_leaves_nothing_half_made);
	suite_add_tcase(s, tc);
	if (test_selected("snapshot_on_a_full_disk_is_a_clear_error")) {
		TCase *fd = tcase_create("full_disk");
		tcase_set_tags(fd, VMF_TEST_OWN_CASE);
		tcase_add_checked_fixture(fd, setup, cleanup_full_disk);
		tcase_set_timeout(fd, 600);
		tcase_add_test(fd, snapshot_on_a_full_disk_is_a_clear_error);
		suite_add_tcase(s, fd);
	}
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
