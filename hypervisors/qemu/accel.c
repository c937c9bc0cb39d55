/* Which accelerator QEMU runs a guest with here, and with which -cpu
 * model.  A /dev/kvm that opens proves little (a nested or PVM host's
 * cannot boot a standard guest), so the probe boots the guest kernel under
 * KVM before trusting it, which costs seconds where KVM hangs.  Its answer
 * is kept in the state dir, keyed by what decides it: the QEMU binary, the
 * host kernel, /dev/kvm and the guest kernel.  Only the first command after
 * one of them changes pays the probe again. */
#include "qemu_vm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "frame.h"
#include "log.h"
#include "util.h"
#include "vmm_proc.h"

/* In the state dir. */
#define ACCEL_CACHE_FILE "accel-probe"
#define ACCEL_CACHE_MAGIC "vmfactory accel probe 1\n"
#define ACCEL_CACHE_MAX 8192

/* KVM CPU models, best first.  Nested KVM (a VM host that exposes
 * /dev/kvm) can refuse MSRs that -cpu host asks for: QEMU 7.2 then aborts
 * with "failed to set MSR 0x10a" (IA32_ARCH_CAPABILITIES), seen on these
 * machines.  Without that MSR the guest merely assumes it needs every
 * speculation mitigation. */
static const char *const kvm_cpu_models[] = { "host", "host,-arch-capabilities" };
#define N_CPU_MODELS (sizeof(kvm_cpu_models) / sizeof(kvm_cpu_models[0]))

struct accel_result {
	const char *accel;           /* "kvm" or "tcg" */
	const char *cpu;             /* a kvm_cpu_models entry with kvm, else NULL */
	char why[VMF_HV_ACCEL_WHY_MAX];
};

/* The process's answer, for command lines built without an accelerator in
 * their config: the last probe's, or one made on first use. */
static struct {
	pthread_mutex_t lock;
	bool probed;
	struct accel_result res;
} accel_probe = { PTHREAD_MUTEX_INITIALIZER, false, { "tcg", NULL, "" } };

/* Whether QEMU really runs a guest with KVM and this CPU model.  Opening
 * /dev/kvm proves little: on these machines a nested /dev/kvm runs
 * SeaBIOS and the kernel's 16-bit setup, then hangs entering long mode.  So
 * the probe boots the guest kernel until it prints its banner (a working
 * KVM gets there in well under a second); without a kernel it only checks
 * that a vCPU starts. */
static bool
kvm_runs(const char *binary, const char *cpu, const char *kernel)
{
	int out[2];
	if (pipe2(out, O_CLOEXEC) < 0)
		return false;
	char *argv[32];
	int n = 0;
	argv[n++] = (char *)binary;
	const char *common[] = { "-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35",
				 "-accel", "kvm", "-m", "128", "-cpu", cpu, "-no-reboot" };
	for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++)
		argv[n++] = (char *)common[i];
	if (kernel && *kernel) {
		argv[n++] = "-kernel";
		argv[n++] = (char *)kernel;
		argv[n++] = "-append";
		argv[n++] = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1";
		argv[n++] = "-serial";
		argv[n++] = "stdio";
	} else {
		/* SeaBIOS's banner on its debug port. */
		argv[n++] = "-chardev";
		argv[n++] = "stdio,id=dbg";
		argv[n++] = "-device";
		argv[n++] = "isa-debugcon,iobase=0x402,chardev=dbg";
	}
	argv[n] = NULL;
	/* A probe QEMU on a KVM that hangs runs forever: it must not outlive us
	 * if we are killed while we wait for it. */
	struct vmf_vmm_spawn s = { .argv = argv, .out_fd = out[1], .die_with_parent = true };
	struct vmf_vmm_proc p;
	int spawned = vmf_vmm_spawn(&s, &p, NULL);
	close(out[1]);
	if (spawned < 0) {
		close(out[0]);
		return false;
	}
	const char *want = kernel && *kernel ? "Linux version" : "SeaBIOS";
	char buf[8192];
	size_t len = 0;
	bool ok = false;
	int64_t deadline = vmf_now_ms() + 3000;
	while (!ok && len < sizeof(buf) - 1) {
		int64_t left = deadline - vmf_now_ms();
		struct pollfd pfd = { .fd = out[0], .events = POLLIN };
		if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
			break;
		ssize_t r = read(out[0], buf + len, sizeof(buf) - 1 - len);
		if (r <= 0)
			break;
		len += (size_t)r;
		buf[len] = '\0';
		ok = strstr(buf, want) != NULL;
	}
	close(out[0]);
	vmf_vmm_kill(&p, "KVM probe QEMU", NULL);
	vmf_vmm_close(&p);
	return ok;
}

static void
probe_accel(const char *binary, const char *kernel, struct accel_result *res)
{
	res->accel = "tcg";
	res->cpu = NULL;
	const char *forced = getenv("VMFACTORY_ACCEL");
	if (forced && strcmp(forced, "tcg") == 0) {
		snprintf(res->why, sizeof(res->why), "VMFACTORY_ACCEL=tcg is set");
		return;
	}
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		snprintf(res->why, sizeof(res->why), "/dev/kvm cannot be opened: %s", strerror(errno));
		return;
	}
	close(fd);
	for (size_t i = 0; i < N_CPU_MODELS; i++) {
		if (kvm_runs(binary, kvm_cpu_models[i], kernel)) {
			res->accel = "kvm";
			res->cpu = kvm_cpu_models[i];
			snprintf(res->why, sizeof(res->why), "QEMU boots the guest kernel with KVM (-cpu %s)",
				 kvm_cpu_models[i]);
			return;
		}
	}
	snprintf(res->why, sizeof(res->why), "/dev/kvm is present but QEMU cannot boot the guest kernel with it");
}

/* The file QEMU runs as: a name without a slash is looked up in PATH, as
 * the exec that starts it does. */
static int
resolve_binary(const char *bin, char out[PATH_MAX])
{
	if (strchr(bin, '/'))
		return realpath(bin, out) ? 0 : -1;
	const char *path = getenv("PATH");
	char cand[PATH_MAX];
	for (const char *p = path && *path ? path : "/usr/local/bin:/usr/bin:/bin"; p;) {
		const char *colon = strchr(p, ':');
		int n = colon ? (int)(colon - p) : (int)strlen(p);
		if (snprintf(cand, sizeof(cand), "%.*s/%s", n, n ? p : ".", bin) < (int)sizeof(cand) &&
		    access(cand, X_OK) == 0 && realpath(cand, out))
			return 0;
		p = colon ? colon + 1 : NULL;
	}
	return -1;
}

/* Appends to a key being built; once it does not fit, *len stays past n. */
static void __attribute__((format(printf, 4, 5)))
key_line(char *out, size_t n, size_t *len, const char *fmt, ...)
{
	if (*len >= n)
		return;
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(out + *len, n - *len, fmt, ap);
	va_end(ap);
	*len = r < 0 ? n : *len + (size_t)r;
}

/* What decides the probe's answer, one line each: the QEMU binary (path,
 * inode, size, change times), the host kernel (uname), /dev/kvm (device,
 * inode and change time: a reloaded module makes a new node) and the guest
 * kernel the probe boots.  -1 when the binary cannot be found: no cache. */
static int
accel_key(const char *binary, const char *kernel, char *out, size_t n)
{
	char bin[PATH_MAX];
	struct stat st;
	size_t len = 0;
	if (resolve_binary(binary, bin) < 0 || stat(bin, &st) < 0)
		return -1;
	key_line(out, n, &len, "binary %s %ju:%ju %jd %jd.%09ld %jd.%09ld\n", bin, (uintmax_t)st.st_dev,
		 (uintmax_t)st.st_ino, (intmax_t)st.st_size, (intmax_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
		 (intmax_t)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
	struct utsname u;
	if (uname(&u) == 0)
		key_line(out, n, &len, "host %s %s\n", u.release, u.version);
	if (stat("/dev/kvm", &st) == 0)
		key_line(out, n, &len, "kvm %u:%u %ju %jd.%09ld\n", major(st.st_rdev), minor(st.st_rdev),
			 (uintmax_t)st.st_ino, (intmax_t)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
	else
		key_line(out, n, &len, "kvm none\n");
	if (kernel && *kernel && stat(kernel, &st) == 0)
		key_line(out, n, &len, "guest %s %ju %jd %jd.%09ld\n", kernel, (uintmax_t)st.st_ino,
			 (intmax_t)st.st_size, (intmax_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	else
		key_line(out, n, &len, "guest none\n");
	return len < n ? 0 : -1;
}

/* The cached answer when the file holds one for exactly this key.  The
 * state dir is trusted, but what it holds is still checked: an accelerator
 * and a CPU model this code knows, a reason of printable text. */
static bool
cache_read(const char *path, const char *key, struct accel_result *res)
{
	char *buf = NULL;
	size_t len;
	if (vmf_read_file(path, &buf, &len, ACCEL_CACHE_MAX, NULL) < 0)
		return false;
	size_t mlen = strlen(ACCEL_CACHE_MAGIC), klen = strlen(key);
	bool ok = len > mlen + klen && memcmp(buf, ACCEL_CACHE_MAGIC, mlen) == 0 &&
		  memcmp(buf + mlen, key, klen) == 0;
	char accel[8] = "", cpu[64] = "";
	const char *why = ok ? strstr(buf + mlen + klen, "why ") : NULL;
	ok = ok && sscanf(buf + mlen + klen, "accel %7s\ncpu %63s\n", accel, cpu) == 2 && why;
	res->cpu = NULL;
	for (size_t i = 0; ok && i < N_CPU_MODELS; i++)
		if (strcmp(cpu, kvm_cpu_models[i]) == 0)
			res->cpu = kvm_cpu_models[i];
	if (ok && strcmp(accel, "kvm") == 0 && res->cpu)
		res->accel = "kvm";
	else if (ok && strcmp(accel, "tcg") == 0 && strcmp(cpu, "-") == 0)
		res->accel = "tcg";
	else
		ok = false;
	if (ok) {
		why += 4;
		size_t n = strcspn(why, "\n");
		for (size_t i = 0; i < n; i++)
			ok = ok && (unsigned char)why[i] >= 0x20 && why[i] != 0x7f;
		snprintf(res->why, sizeof(res->why), "%.*s", (int)n, why);
	}
	free(buf);
	return ok;
}

static void
cache_write(const char *path, const char *key, const struct accel_result *res)
{
	char text[ACCEL_CACHE_MAX];
	int n = snprintf(text, sizeof(text), ACCEL_CACHE_MAGIC "%saccel %s\ncpu %s\nwhy %s\n", key, res->accel,
			 res->cpu ? res->cpu : "-", res->why);
	struct vmf_error e;
	if (n < 0 || (size_t)n >= sizeof(text))
		return;
	if (vmf_write_file_atomic(path, text, (size_t)n, 0644, &e) < 0)
		log_warn("cannot keep the accelerator probe's answer (the next command probes again): %s", e.msg);
}

/* The kernel the probe boots: the one asked about, else
 * $VMFACTORY_IMAGE_DIR/vmlinuz, else none (a vCPU that starts). */
static const char *
probe_kernel(const char *kernel, char img[PATH_MAX])
{
	if (kernel && *kernel)
		return kernel;
	const char *dir = getenv("VMFACTORY_IMAGE_DIR");
	if (dir && *dir) {
		snprintf(img, PATH_MAX, "%s/vmlinuz", dir);
		if (access(img, R_OK) == 0)
			return img;
	}
	return NULL;
}

void
qemu_accel_probe(const char *binary, const char *kernel, const char *state_dir, struct vmf_hv_info *info)
{
	const char *bin = binary && *binary ? binary : VMF_QEMU_DEFAULT_BINARY;
	char img[PATH_MAX], key[2 * PATH_MAX + 512], path[PATH_MAX] = "";
	kernel = probe_kernel(kernel, img);
	const char *forced = getenv("VMFACTORY_ACCEL");
	bool cacheable = state_dir && *state_dir && !(forced && strcmp(forced, "tcg") == 0) &&
			 accel_key(bin, kernel, key, sizeof(key)) == 0 &&
			 snprintf(path, sizeof(path), "%s/%s", state_dir, ACCEL_CACHE_FILE) < (int)sizeof(path);
	struct accel_result res;
	bool cached = cacheable && cache_read(path, key, &res);
	if (cached) {
		log_debug("accelerator %s, from the probe kept in %s: %s", res.accel, path, res.why);
	} else {
		probe_accel(bin, kernel, &res);
		log_info("accelerator %s, probed with %s: %s", res.accel, bin, res.why);
		if (cacheable)
			cache_write(path, key, &res);
	}
	pthread_mutex_lock(&accel_probe.lock);
	accel_probe.res = res;
	accel_probe.probed = true;
	pthread_mutex_unlock(&accel_probe.lock);
	snprintf(info->accel, sizeof(info->accel), "%s", res.accel);
	snprintf(info->accel_why, sizeof(info->accel_why), "%s", res.why);
	info->accel_cached = cached;
}

/* "kvm" when QEMU boots a guest with /dev/kvm, else "tcg": the last
 * probe's answer (ops->probe makes one with the daemon's binary and
 * kernel), else one made now with the default binary.  VMFACTORY_ACCEL=tcg
 * skips KVM. */
const char *
qemu_accel_for(const char *kernel)
{
	pthread_mutex_lock(&accel_probe.lock);
	if (!accel_probe.probed) {
		char img[PATH_MAX];
		probe_accel(VMF_QEMU_DEFAULT_BINARY, probe_kernel(kernel, img), &accel_probe.res);
		accel_probe.probed = true;
	}
	const char *a = accel_probe.res.accel;
	pthread_mutex_unlock(&accel_probe.lock);
	return a;
}

/* The -cpu model that the probe found working with KVM. */
const char *
qemu_kvm_cpu(void)
{
	qemu_accel_for(NULL);
	pthread_mutex_lock(&accel_probe.lock);
	const char *cpu = accel_probe.res.cpu;
	pthread_mutex_unlock(&accel_probe.lock);
	return cpu ? cpu : "host";
}
