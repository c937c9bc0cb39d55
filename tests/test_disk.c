/* Disks of handed-out VMs end to end, real QEMU under TCG, one pool of 1
 * and one template for every step: an ext4 image attached and read through
 * exec; written through, detached and read on the host; read-only refusing
 * writes; a copy-on-write disk leaving its base as it was; a scratch
 * volume mounted and gone at release; the daemon killed
 * after attaches and restarted, the attachments still recorded and release
 * cleaning up; and the bad input (missing file, directory, another user's
 * file for a non-root peer, a disk attached read-write elsewhere, detach of
 * what is not attached, a mount that fails in the guest): each a clear
 * error, the VM running on, nothing half-attached.
 *
 * Users and group vdsk<pid>{a,b,g} are made by main() and removed before it
 * returns; without root or useradd, or with a guest image without the disk
 * modules, the program exits 77 and says why. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
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


/* Runs `vmfactory ARGS`, its stderr in err. */
static int
vmf_e(char *err, size_t n, const char *fmt, const char *a1, const char *a2)
{
	int rc = vmf(NULL, fmt, a1, a2);
	snprintf(err, n, "%s", cli_stderr());
	return rc;
}

/* `vmfactory exec ID -- sh -c SCRIPT`: exit status, stdout in out. */
static int
guest_sh(const char *id, const char *script, char *out, size_t n)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "%s exec %s %s --timeout 60 -- sh -c '%s' 2>>%s/cli.err", exe, common_opts, id, script,
		 tmp);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	char buf[4096];
	size_t got = fread(buf, 1, sizeof buf - 1, p);
	buf[got] = 0;
	int st = pclose(p);
	if (out)
		snprintf(out, n, "%s", buf);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* An ext4 image of mib MiB holding hello.txt ("hello disk\n"). */
static void
make_image(const char *img, unsigned mib)
{
	char dir[800], f[900], cmd[2200];
	snprintf(dir, sizeof dir, "%s.d", img);
	ck_assert_int_eq(mkdir(dir, 0755), 0);
	snprintf(f, sizeof f, "%s/hello.txt", dir);
	FILE *fp = fopen(f, "w");
	ck_assert_ptr_nonnull(fp);
	fputs("hello disk\n", fp);
	fclose(fp);
	snprintf(cmd, sizeof cmd, "truncate -s %uM %s && PATH=$PATH:/sbin:/usr/sbin mkfs.ext4 -q -F -d %s %s && rm -r %s",
		 mib, img, dir, img, dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* The VM's state (inspect's). */
static int
disk_state(const char *id, char *out, size_t n)
{
	json_object *ins = vmf_json("inspect %s -o json", id);
	snprintf(out, n, "%s", json_object_get_string(path(path(ins, "vm", NULL), "state", NULL)));
	json_object_put(ins);
	return 0;
}

static int
n_disks(const char *id)
{
	json_object *ins = vmf_json("inspect %s -o json", id);
	int n = (int)json_object_array_length(path(path(ins, "vm", NULL), "disks", NULL));
	json_object_put(ins);
	return n;
}

/* The daemon killed and started again, with point as its fault point (or
 * none); when the last one died at its point, it is gone first. */
static void
restart_with_fault(const char *point)
{
	if (daemon_answers())
		kill_daemon_hard();
	fault = point;   /* the daemon's environment */
	start_tenant_daemon("");
	fault = NULL;
}

START_TEST(disks_end_to_end)
{
	ck_assert_int_eq(chmod(tmp, 0711), 0);
	start_tenant_daemon("");
	char img[700], img2[700], out[4096], err[4096];
	snprintf(img, sizeof img, "%s/data.img", tmp);
	snprintf(img2, sizeof img2, "%s/other.img", tmp);
	make_image(img, 32);
	make_image(img2, 32);
	struct got g = {0}, h = {0};
	do_get(&g, "d1", 1, 256);
	ck_assert_int_eq(g.rc, 0);

	char cmd[2400];
	/* Attach, mounted; the guest reads the file through exec. */
	int64_t t0 = vmf_now_ms();
	snprintf(cmd, sizeof cmd, "attach %s --disk %s --mount /mnt/data -o json", g.id, img);
	json_object *dj = vmf_json("%s", cmd);
	printf("attach + mount: %lld ms\n", (long long)(vmf_now_ms() - t0));
	ck_assert_str_eq(json_object_get_string(path(dj, "kind", NULL)), "disk");
	ck_assert_str_eq(json_object_get_string(path(dj, "guest_path", NULL)), "/mnt/data");
	ck_assert_msg(!strncmp(json_object_get_string(path(dj, "guest_device", NULL)), "/dev/sd", 7),
		      "guest device %s", json_object_get_string(path(dj, "guest_device", NULL)));
	json_object_put(dj);
	ck_assert_int_eq(guest_sh(g.id, "cat /mnt/data/hello.txt", out, sizeof out), 0);
	ck_assert_str_eq(out, "hello disk\n");

	/* Written through, detached, read on the host. */
	ck_assert_int_eq(guest_sh(g.id, "echo from the guest > /mnt/data/out.txt", NULL, 0), 0);
	ck_assert_int_eq(vmf_e(err, sizeof err, "detach %s --disk %s", g.id, "/mnt/data"), 0);
	ck_assert_int_eq(n_disks(g.id), 0);
	host_cat(img, "out.txt", out, sizeof out);
	ck_assert_msg(!strcmp(out, "from the guest\n"), "the host reads '%s' from the detached disk", out);
	ck_assert_int_eq(guest_sh(g.id, "grep -q /mnt/data /proc/mounts", NULL, 0), 1);

	/* Read-only: the guest cannot write. */
	snprintf(cmd, sizeof cmd, "attach %s --disk %s --ro --mount /mnt/ro", g.id, img);
	ck_assert_int_eq(vmf(NULL, "%s", cmd), 0);
	ck_assert_int_eq(guest_sh(g.id, "cat /mnt/ro/out.txt", out, sizeof out), 0);
	ck_assert_str_eq(out, "from the guest\n");
	ck_assert_int_ne(guest_sh(g.id, "echo x > /mnt/ro/x 2>&1", NULL, 0), 0);

	/* Scratch: a sparse ext4 file in the run dir, mounted. */
	snprintf(cmd, sizeof cmd, "attach %s --scratch 64 --mount /work -o json", g.id);
	dj = vmf_json("%s", cmd);
	char scratch[800];
	snprintf(scratch, sizeof scratch, "%s", json_object_get_string(path(dj, "path", NULL)));
	json_object_put(dj);
	const char *run_dir = json_object_get_string(path(g.rec, "run_dir", NULL));
	ck_assert_msg(!strncmp(scratch, run_dir, strlen(run_dir)), "scratch %s outside the run dir %s", scratch, run_dir);
	struct stat st;
	ck_assert_int_eq(stat(scratch, &st), 0);
	ck_assert_msg((long long)st.st_blocks * 512 < st.st_size / 4, "scratch volume not sparse: %lld of %lld bytes",
		      (long long)st.st_blocks * 512, (long long)st.st_size);
	ck_assert_int_eq(guest_sh(g.id, "echo w > /work/f && cat /work/f && grep \" /work ext4 \" /proc/mounts", out,
				  sizeof out), 0);

	/* ---- bad input: a clear error, the VM runs on, nothing attached ---- */
	char missing[800];
	snprintf(missing, sizeof missing, "%s/nope.img", tmp);
	vmf_refused("cannot open disk|No such file", "attach %s --disk %s", g.id, missing);
	vmf_refused("not a regular file|directory", "attach %s --disk %s", g.id, tmp);
	vmf_refused("no disk|is attached", "detach %s --disk %s", g.id, img2);
	/* A mount that fails in the guest: detached again, nothing left. */
	vmf_refused("could not mount|vfat", "attach %s --disk %s --mount /mnt/bad --fstype vfat", g.id, img2);
	ck_assert_int_eq(n_disks(g.id), 2);
	ck_assert_int_eq(guest_sh(g.id, "true", NULL, 0), 0);
	/* A template cannot carry a host file: snapshot is refused, the VM runs on. */
	vmf_refused("attached|detach it first", "snapshot %s --template %s", g.id, "withdisk");
	ck_assert_int_eq(guest_sh(g.id, "true", NULL, 0), 0);
	/* The slot it had is free in QEMU too: the same disk attaches now. */
	snprintf(cmd, sizeof cmd, "attach %s --disk %s --mount /mnt/other", g.id, img2);
	ck_assert_int_eq(vmf(NULL, "%s", cmd), 0);
	ck_assert_int_eq(guest_sh(g.id, "cat /mnt/other/hello.txt", out, sizeof out), 0);
	ck_assert_str_eq(out, "hello disk\n");

	/* ---- suspended and resumed with its three disks (read-only, scratch,
	 * read-write), mounted all along ---- */
	ck_assert_int_eq(guest_sh(g.id, "echo before > /mnt/other/before.txt && echo s > /work/s", NULL, 0), 0);
	t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_e(err, sizeof err, "suspend %s%s", g.id, ""), 0);
	printf("suspend with 3 disks: %lld ms\n", (long long)(vmf_now_ms() - t0));
	ck_assert_int_eq(disk_state(g.id, out, sizeof out), 0);
	ck_assert_str_eq(out, "suspended");
	/* The read-write disk's file replaced meanwhile: the resume fails
	 * naming it, the VM stays suspended; the file back, it resumes. */
	char aside[800];
	snprintf(aside, sizeof aside, "%s.aside", img2);
	ck_assert_int_eq(rename(img2, aside), 0);
	snprintf(cmd, sizeof cmd, "cp %s %s", aside, img2);
	ck_assert_int_eq(system(cmd), 0);
	vmf_refused("replaced|stays suspended", "resume %s%s", g.id, "");
	assert_words(cli_stderr(), img2, "resume with a replaced disk");
	ck_assert_int_eq(disk_state(g.id, out, sizeof out), 0);
	ck_assert_str_eq(out, "suspended");
	ck_assert_int_eq(rename(aside, img2), 0);
	t0 = vmf_now_ms();
	ck_assert_int_eq(vmf_e(err, sizeof err, "resume %s%s", g.id, ""), 0);
	printf("resume with 3 disks: %lld ms\n", (long long)(vmf_now_ms() - t0));
	ck_assert_int_eq(guest_sh(g.id, "cat /mnt/other/before.txt /work/s /mnt/ro/hello.txt && "
				  "echo after > /mnt/other/after.txt && sync", out, sizeof out), 0);
	ck_assert_str_eq(out, "before\ns\nhello disk\n");
	/* Detach works on the resumed QEMU's devices; attached again. */
	ck_assert_int_eq(vmf_e(err, sizeof err, "detach %s --disk %s", g.id, "/mnt/ro"), 0);
	snprintf(cmd, sizeof cmd, "attach %s --disk %s --ro --mount /mnt/ro", g.id, img);
	ck_assert_int_eq(vmf(NULL, "%s", cmd), 0);
	ck_assert_int_eq(guest_sh(g.id, "cat /mnt/ro/hello.txt", out, sizeof out), 0);
	ck_assert_str_eq(out, "hello disk\n");
	/* A new QEMU: the one to wait for at the release. */
	json_object *ins = vmf_json("inspect %s -o json", g.id);
	json_object_object_add(g.rec, "pid", json_object_get(path(path(ins, "vm", NULL), "pid", NULL)));
	json_object_put(ins);

	/* Read-write is exclusive: img2 is read-write on g, img read-only. */
	do_get(&h, "d2", 1, 256);
	ck_assert_int_eq(h.rc, 0);
	vmf_refused("already attached read-write", "attach %s --disk %s --ro", h.id, img2);
	char hard[800];
	snprintf(hard, sizeof hard, "%s/data-link.img", tmp);
	ck_assert_int_eq(link(img, hard), 0);
	vmf_refused("already attached read-only", "attach %s --disk %s", h.id, hard);
	snprintf(cmd, sizeof cmd, "attach %s --disk %s --ro --mount /mnt/shared", h.id, hard);
	ck_assert_int_eq(vmf(NULL, "%s", cmd), 0);
	/* Copy-on-write over the same base: the guest writes to an overlay
	 * in its run dir, the base stays as it was. */
	snprintf(cmd, sizeof cmd, "attach %s --disk %s --cow --mount /mnt/cow -o json", h.id, img);
	dj = vmf_json("%s", cmd);
	ck_assert_str_eq(json_object_get_string(path(dj, "kind", NULL)), "cow");
	json_object_put(dj);
	ck_assert_int_eq(guest_sh(h.id, "cat /mnt/cow/hello.txt && echo cow > /mnt/cow/cow.txt && sync", out,
				  sizeof out), 0);
	ck_assert_str_eq(out, "hello disk\n");
	host_cat(img, "cow.txt", out, sizeof out);
	ck_assert_msg(out[0] == 0, "the guest's write reached the base: '%s'", out);
	/* Suspended and resumed: the overlay and its base come back. */
	ck_assert_msg(vmf_e(err, sizeof err, "suspend %s%s", h.id, "") == 0, "suspend with a cow disk: %s", err);
	ck_assert_msg(vmf_e(err, sizeof err, "resume %s%s", h.id, "") == 0, "resume with a cow disk: %s", err);
	ck_assert_int_eq(guest_sh(h.id, "cat /mnt/cow/cow.txt /mnt/shared/hello.txt", out, sizeof out), 0);
	ck_assert_str_eq(out, "cow\nhello disk\n");
	vmf_refused("already attached read-only", "attach %s --disk %s", g.id, hard);
	ck_assert_int_eq(n_disks(h.id), 2);
	ck_assert_int_eq(vmf(NULL, "release %s", h.id), 0);

	/* ---- a non-root peer: only its own regular files ---- */
	char a_dir[700], mine[800], theirs[800];
	tenant_dir(tu.a, tu.uid_a, a_dir, sizeof a_dir);
	snprintf(mine, sizeof mine, "%s/mine.img", a_dir);
	snprintf(theirs, sizeof theirs, "%s/theirs.img", a_dir);
	make_image(mine, 16);
	make_image(theirs, 16);
	ck_assert_int_eq(chown(mine, tu.uid_a, tu.gid), 0);
	ck_assert_int_eq(chown(theirs, tu.uid_b, tu.gid), 0);
	char msg[1100], tid[1100];
	ck_assert_msg(tenant_get(tu.uid_a, a_dir, "tenant", tid, sizeof tid) == 0, "GetVM as a tenant: %s", tid);
	Vmf__Control__AttachRequest at = VMF__CONTROL__ATTACH_REQUEST__INIT;
	at.vm_id = tid;
	at.path = theirs;
	assert_refused(call_as(tu.uid_a, req_attach, &at, msg, sizeof msg), msg, EACCES, "theirs.img|belongs to uid",
		       "another user's file in the tenant's dir");
	at.path = img;
	assert_refused(call_as(tu.uid_a, req_attach, &at, msg, sizeof msg), msg, EACCES, "data.img|belongs to uid 0",
		       "a root-owned file outside the tenant's dirs");
	/* Another tenant can neither attach to the VM nor detach from it. */
	assert_refused(call_as(tu.uid_b, req_attach, &at, msg, sizeof msg), msg, EACCES, "is not yours",
		       "an attach to another tenant's VM");
	at.path = mine;
	at.guest_path = "/mnt/mine";
	ck_assert_msg(call_as(tu.uid_a, req_attach, &at, msg, sizeof msg) == 0, "the tenant's own file: %s", msg);
	ck_assert_str_eq(msg, "/mnt/mine");
	ck_assert_int_eq(n_disks(tid), 1);
	const char *mine_of[2] = { tid, "/mnt/mine" };
	assert_refused(call_as(tu.uid_b, req_detach, mine_of, msg, sizeof msg), msg, EACCES, "is not yours",
		       "a detach from another tenant's VM");
	ck_assert_msg(call_as(tu.uid_a, req_detach, mine_of, msg, sizeof msg) == 0, "the tenant's detach: %s", msg);
	ck_assert_int_eq(n_disks(tid), 0);
	ck_assert_msg(call_as(tu.uid_a, req_release, tid, msg, sizeof msg) == 0, "the tenant's release: %s", msg);

	/* ---- SIGKILL after attaching, restart: still recorded; release
	 * removes the scratch volume ---- */
	/* Suspended when the daemon dies: the restarted one resumes it from
	 * the record's disks. */
	ck_assert_int_eq(vmf_e(err, sizeof err, "suspend %s%s", g.id, ""), 0);
	kill_daemon_hard();
	start_tenant_daemon("");
	ck_assert_int_eq(n_disks(g.id), 3);
	ck_assert_int_eq(disk_state(g.id, out, sizeof out), 0);
	ck_assert_str_eq(out, "suspended");
	ck_assert_msg(vmf_e(err, sizeof err, "resume %s%s", g.id, "") == 0, "resume after a restart: %s", err);
	ins = vmf_json("inspect %s -o json", g.id);
	pid_t qpid = (pid_t)json_object_get_int(path(path(ins, "vm", NULL), "pid", NULL));
	json_object_put(ins);
	kill_daemon_hard();
	start_tenant_daemon("");
	ck_assert_int_eq(n_disks(g.id), 3);
	ck_assert_int_eq(guest_sh(g.id, "cat /work/f /mnt/ro/hello.txt", out, sizeof out), 0);
	ck_assert_str_eq(out, "w\nhello disk\n");
	/* Killed between the guest's mount and the record: the restarted
	 * daemon does not know the disk, and the slot's leftover device in
	 * QEMU must not stop the next attach. */
	if (vmf_test_fault_build()) {
		char img3[700];
		snprintf(img3, sizeof img3, "%s/third.img", tmp);
		make_image(img3, 16);
		/* An attach held while it opens the file (a hung file system):
		 * the daemon answers meanwhile, the VM takes no other job. */
		char paused[800], go[800];
		snprintf(paused, sizeof paused, "%s/attach-pause.paused", tmp);
		snprintf(go, sizeof go, "%s/attach-pause.go", tmp);
		setenv("VMFACTORY_FAULT_DIR", tmp, 1);
		restart_with_fault("attach-pause");
		unsetenv("VMFACTORY_FAULT_DIR");
		pid_t at = vmf_test_fork();
		if (at == 0)
			_exit(vmf(NULL, "attach %s --disk %s --mount /mnt/held", g.id, img3) == 0 ? 0 : 1);
		wait_until(access(paused, F_OK) == 0, 30000, "the attach did not reach its pause");
		ck_assert_int_eq(vmf(NULL, "status"), 0);
		vmf_refused("is busy", "detach %s --disk /mnt/ro", g.id);
		vmf_refused("is busy", "suspend %s", g.id);
		ck_assert_int_eq(vmf_write_file_atomic(go, "", 0, 0600, NULL), 0);
		int st;
		ck_assert_int_eq(waitpid(at, &st, 0), at);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the held attach failed: %s", cli_stderr());
		ck_assert_int_eq(guest_sh(g.id, "cat /mnt/held/hello.txt", out, sizeof out), 0);
		ck_assert_str_eq(out, "hello disk\n");
		ck_assert_int_eq(vmf(NULL, "detach %s --disk /mnt/held", g.id), 0);
		restart_with_fault("attach-record");
		vmf_refused("closed the connection", "attach %s --disk %s --mount /mnt/third", g.id, img3);
		restart_with_fault(NULL);
		ck_assert_int_eq(n_disks(g.id), 3);
		snprintf(cmd, sizeof cmd, "attach %s --disk %s --mount /mnt/third-again", g.id, img3);
		ck_assert_int_eq(vmf_e(err, sizeof err, "%s%s", cmd, ""), 0);
		ck_assert_int_eq(guest_sh(g.id, "cat /mnt/third-again/hello.txt", out, sizeof out), 0);
		ck_assert_str_eq(out, "hello disk\n");
		ck_assert_int_eq(vmf(NULL, "detach %s --disk /mnt/third-again", g.id), 0);
		/* Killed in a detach with the device gone from the guest and
		 * QEMU, before the record: the restarted daemon still lists
		 * the disk, and a detach of it again finishes the job. */
		restart_with_fault("detach-unplugged");
		vmf_refused("closed the connection", "detach %s --disk /mnt/ro", g.id);
		restart_with_fault(NULL);
		ck_assert_msg(vmf_e(err, sizeof err, "detach %s --disk %s", g.id, "/mnt/ro") == 0,
			      "a detach after one cut short: %s", err);
		ck_assert_int_eq(n_disks(g.id), 2);
		ck_assert_int_eq(guest_sh(g.id, "grep -c \" /mnt/ro \" /proc/mounts", out, sizeof out), 1);
		snprintf(cmd, sizeof cmd, "attach %s --disk %s --ro --mount /mnt/ro", g.id, img);
		ck_assert_int_eq(vmf(NULL, "%s", cmd), 0);
	} else {
		vmf_test_skip("the kills mid-attach, mid-detach and mid-release: this build has no fault points");
	}

	/* The recorded read-write disk still excludes others. */
	json_object_put(h.rec);
	do_get(&h, "d3", 1, 256);
	ck_assert_int_eq(h.rc, 0);
	vmf_refused("already attached read-write", "attach %s --disk %s --ro", h.id, img2);
	if (vmf_test_fault_build()) {
		/* Killed releasing it (three disks) once its files are gone,
		 * before its record: the restarted daemon reaps the record, and
		 * the disks are free (below). */
		restart_with_fault("release-files-gone");
		vmf_refused("closed the connection", "release %s", g.id);
		restart_with_fault(NULL);
		vmf_refused("no VM", "inspect %s", g.id);
	} else {
		ck_assert_int_eq(vmf(NULL, "release %s", g.id), 0);
	}
	wait_until(kill(qpid, 0) != 0, 60000, "the released VM's QEMU %d still runs", (int)qpid);
	ck_assert_int_ne(access(scratch, F_OK), 0);
	/* Released: its disks are free again. */
	snprintf(cmd, sizeof cmd, "attach %s --disk %s --mount /mnt/again", h.id, img2);
	ck_assert_int_eq(vmf(NULL, "%s", cmd), 0);

	/* get --disk / --scratch: the VM comes with them. */
	ck_assert_int_eq(vmf(NULL, "release %s", h.id), 0);
	snprintf(cmd, sizeof cmd, "get --cpus 1 --memory 256 --sandbox d4 --share-dir %s/d4-share --sock-dir %s/d4-sock "
		 "--disk %s:ro:/mnt/in --scratch 32:/scratch --timeout 120 -o json", tmp, tmp, img);
	json_object *vj = vmf_json("%s", cmd);
	ck_assert_int_eq((int)json_object_array_length(path(vj, "disks", NULL)), 2);
	char id4[64];
	snprintf(id4, sizeof id4, "%s", json_object_get_string(path(vj, "id", NULL)));
	json_object_put(vj);
	ck_assert_int_eq(guest_sh(id4, "cat /mnt/in/hello.txt && grep -c \" /scratch ext4 \" /proc/mounts", out,
				  sizeof out), 0);
	ck_assert_str_eq(out, "hello disk\n1\n");
	/* One disk of a get fails: no VM is left handed out. */
	snprintf(cmd, sizeof cmd, "get --cpus 1 --memory 256 --sandbox d5 --share-dir %s/d5-share --sock-dir %s/d5-sock "
		 "--disk %s --timeout 120", tmp, tmp, missing);
	vmf_refused("released again", "%s%s", cmd, "");
	ck_assert_int_eq(vm_count(), 2); /* id4 and the pool's */
	ck_assert_int_eq(vmf(NULL, "release %s", id4), 0);

	json_object_put(g.rec);
	json_object_put(h.rec);
	ck_assert_int_eq(vmf(NULL, "destroy"), 0);
	ck_assert_int_eq(qemu_gone(), 0);
	assert_daemon_log_clean();
}
END_TEST

int
main(void)
{
	const char *why = tenant_image_check((const char *const[]){ "sd_mod", "ext4", NULL }, "vdsk");
	if (why)
		return vmf_test_skip_all("disk tests: %s", why);
	Suite *s = suite_create("disk");
	TCase *tc = tcase_create("disk");
	tcase_add_checked_fixture(tc, setup, cleanup);
	tcase_set_timeout(tc, 600);
	ADD_TEST(tc, disks_end_to_end);
	suite_add_tcase(s, tc);
	int rc = vmf_test_run(s);
	tenant_users_remove();
	return rc;
}
