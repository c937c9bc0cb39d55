/* The vmfactory command line: the option parser, the command table and
 * help generated from it.  Each command's handler is in the file of its
 * kind (see cli.h). */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "log.h"

const char *
opt(const struct args *a, const char *name)
{
	for (int i = 0; i < a->n; i++)
		if (strcmp(a->names[i], name) == 0)
			return a->vals[i];
	return NULL;
}

bool
flag(const struct args *a, const char *name)
{
	return opt(a, name) != NULL;
}

static const char common_opts[] = "socket=,state-dir=,run-dir=,log-level=,o=,help";

static void print_usage(FILE *f, const struct cmd *c);

int
usage_error(const struct cmd *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("vmfactory: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	if (c)
		print_usage(stderr, c);
	return EXIT_USAGE;
}

/* Exit 3 ("no daemon") is status's alone; every other failure is 1. */
int
fail(const struct vmf_error *e)
{
	print_error("%s", e->msg);
	return EXIT_FAILURE;
}

/* Parses argv (after the command name) by the command's option spec. */
static int
parse(const struct cmd *c, int argc, char **argv, struct args *a)
{
	static char spec[512];
	static struct option lopts[MAX_OPTS + 1];
	static char names[MAX_OPTS][32];
	snprintf(spec, sizeof(spec), "%s%s%s", common_opts, c->opts[0] ? "," : "", c->opts);
	int n = 0;
	for (char *tok = strtok(spec, ","); tok && n < MAX_OPTS; tok = strtok(NULL, ",")) {
		size_t l = strlen(tok);
		bool val = tok[l - 1] == '=';
		snprintf(names[n], sizeof(names[n]), "%.*s", (int)(val ? l - 1 : l), tok);
		lopts[n] = (struct option){ names[n], val ? required_argument : no_argument, NULL, 1000 + n };
		n++;
	}
	lopts[n] = (struct option){ 0 };
	optind = 1;
	opterr = 0;
	int ch, idx;
	while ((ch = getopt_long_only(argc, argv, "", lopts, &idx)) != -1) {
		if (ch == '?' || ch == ':')
			return usage_error(c, "%s: unknown option or missing value: %s", c->name, argv[optind - 1]);
		int k = ch - 1000;
		if (a->n == MAX_OPTS)
			return usage_error(c, "%s: more than %d options", c->name, MAX_OPTS);
		a->names[a->n] = lopts[k].name;
		a->vals[a->n] = lopts[k].has_arg ? optarg : "";
		a->n++;
	}
	a->pos = argv + optind;
	a->npos = argc - optind;
	if (flag(a, "help")) {
		print_usage(stdout, c);
		exit(0);
	}
	if (a->npos < c->min_pos || a->npos > c->max_pos)
		return usage_error(c, "%s: wrong number of arguments", c->name);
	const char *o = opt(a, "o");
	if (o && strcmp(o, "json") != 0)
		return usage_error(c, "-o takes 'json'");
	a->json = o != NULL;
	const char *e;
	a->socket = (e = opt(a, "socket")) ? e : (e = getenv("VMFACTORY_SOCKET")) ? e : VMF_DEFAULT_SOCKET;
	a->state_dir = (e = opt(a, "state-dir")) ? e : (e = getenv("VMFACTORY_STATE_DIR")) ? e : VMF_DEFAULT_STATE_DIR;
	a->run_dir = (e = opt(a, "run-dir")) ? e : (e = getenv("VMFACTORY_RUN_DIR")) ? e : VMF_DEFAULT_RUN_DIR;
	if ((e = opt(a, "log-level"))) {
		int l = vmf_log_parse_level(e);
		if (l < 0)
			return usage_error(c, "unknown log level %s (debug, info, warn, error, off)", e);
		vmf_log_set_level((enum vmf_log_level)l);
	}
	return 0;
}

int
num(const struct args *a, const char *name, unsigned *out, const struct cmd *c)
{
	const char *v = opt(a, name);
	if (!v)
		return 0;
	char *end;
	errno = 0;
	unsigned long n = strtoul(v, &end, 10);
	if (errno || !*v || *end || n > 1000000 || v[0] == '-')
		return usage_error(c, "--%s needs a number, got '%s'", name, v);
	*out = (unsigned)n;
	return 0;
}
static int cmd_help(const struct cmd *cmd, struct args *a);

/* The one command table: dispatch, usage errors and `help` all read it.
 * opts lists the command's own long options ("name=" takes a value); the
 * common ones (common_opts) are accepted everywhere.  Handlers: init and
 * daemon in start.c; gateway in gateway.c; status, get, inspect, release, suspend, resume, lease, destroy in remote.c;
 * check-config and template * in templates.c; help here. */
static const struct cmd commands[] = {
	{ "init", "[--config FILE] --pool N [--cpus N --memory MIB --max-cpus N --max-memory MIB] [--no-share] [--foreground] [--wait] "
		  "[--image-dir DIR] [--kernel PATH --initrd PATH] [--qemu PATH] [--accel kvm|tcg] [--group NAME] "
		  "[--max-idle S] [--metrics-listen ADDR:PORT] [--runas USER] [--sandbox-root DIR]... [--timeout S] "
		  "[--hypervisor qemu|firecracker|cloud-hypervisor]",
	  "start the daemon and fill a pool of paused VMs",
	  "pool=,cpus=,memory=,max-cpus=,max-memory=,no-share,foreground,wait,image-dir=,kernel=,initrd=,qemu=,accel=,group=,max-idle=,config=,metrics-listen=,runas=,timeout=,hypervisor=,sandbox-root=",
	  0, 0, cmd_init },
	{ "daemon", "[--config FILE] [init's size and path options]",
	  "run the daemon in the foreground, for systemd (Type=notify)",
	  "pool=,cpus=,memory=,max-cpus=,max-memory=,no-share,image-dir=,kernel=,initrd=,qemu=,accel=,group=,max-idle=,config=,metrics-listen=,runas=,hypervisor=,sandbox-root=",
	  0, 0, cmd_init },
	{ "gateway", "[--config FILE] --api-keys FILE [--listen ADDR:PORT] [--sandbox-dir DIR] [--state-file FILE]",
	  "serve the E2B sandbox API (SDKs unchanged) as a client of the daemon; run as an unprivileged user "
	  "in its group",
	  "config=,api-keys=,listen=,sandbox-dir=,state-file=", 0, 0, cmd_gateway },
	{ "check-config", "[FILE]", "check a config file (default " VMF_DEFAULT_CONFIG "), listing every error",
	  "", 0, 1, cmd_check_config },
	{ "status", "[-o json]", "show the daemon, templates, pools, VMs and latency", "", 0, 0, cmd_status },
	{ "get", "--cpus N --memory MIB --sandbox ID --share-dir DIR --sock-dir DIR [--pool NAME | --template NAME|ID] [--timeout S] "
		 "[--disk PATH[:ro|:cow][:GUESTPATH]]... [--scratch SIZE_MIB:GUESTPATH]... "
		 "[--netns PATH [--netns-link NAME] | --net none|user[,outbound][,hostfwd=tcp:[ADDR]:PORT-:GUESTPORT...]] "
		 "[--cgroup PATH]... [--ttl S [--on-expiry release|suspend]] [-o json]",
	  "hand out a warm VM to a sandbox", "cpus=,memory=,sandbox=,share-dir=,sock-dir=,pool=,template=,timeout=,disk=,scratch=,netns=,netns-link=,net=,cgroup=,ttl=,on-expiry=", 0, 0,
	  cmd_get },
	{ "attach", "VMID (--disk PATH [--ro|--cow] [--format raw|qcow2] | --scratch SIZE_MIB) [--mount GUESTPATH [--fstype T]] "
		    "[--timeout S] [-o json]",
	  "attach a disk (or a new scratch volume) to a handed-out VM, mounted in the guest if asked",
	  "disk=,ro,cow,format=,scratch=,mount=,fstype=,timeout=", 1, 1, cmd_attach },
	{ "detach", "VMID --disk PATH|GUESTPATH [--timeout S]", "unmount and detach a disk from a handed-out VM",
	  "disk=,timeout=", 1, 1, cmd_detach },
	{ "snapshot", "VMID --template NAME [-o json]", "turn an assigned VM's current state into a new template",
	  "template=", 1, 1, cmd_snapshot },
	{ "inspect", "VMID [-o json]", "show a VM, with the guest agent's own view", "", 1, 1, cmd_inspect },
	{ "release", "VMID [-o json]", "stop an assigned VM (its read-write disks written back first) and remove its dirs and links",
	  "", 1, 1, cmd_release },
	{ "suspend", "VMID [-o json]", "save an assigned VM's whole state to disk and stop its process", "", 1, 1,
	  cmd_suspend },
	{ "resume", "VMID [--ttl S [--on-expiry release|suspend]] [-o json]",
	  "run a suspended VM again from its saved state (with a new lease)", "ttl=,on-expiry=", 1, 1, cmd_resume },
	{ "lease", "VMID --ttl S [--on-expiry release|suspend] [-o json]",
	  "give an assigned VM a lease: released (or suspended) S seconds from now; --ttl 0 removes it",
	  "ttl=,on-expiry=", 1, 1, cmd_lease },
	{ "exec", "VMID [--timeout S] [--env K=V]... [--cwd DIR] [--user UID[:GID]] [--tty] -- CMD [ARG...]",
	  "run a command in a handed-out VM through its agent", "timeout=,env=,cwd=,user=,tty", 2, 1 << 20,
	  cmd_exec },
	{ "destroy", "[--all]", "stop the daemon and its pooled VMs (--all: assigned VMs too)", "all", 0, 0,
	  cmd_destroy },
	{ "template build", "[--config FILE] [--cpus N --memory MIB --max-cpus N --max-memory MIB] [--no-share]",
	  "build (or find) the template for a size", "cpus=,memory=,max-cpus=,max-memory=,no-share,image-dir=,kernel=,initrd=,qemu=,accel=,config=",
	  0, 0, cmd_template_build },
	{ "template list", "[-o json]", "list templates in the catalog", "", 0, 0, cmd_template_list },
	{ "template rm", "ID|NAME [--config FILE] [-o json]",
	  "remove a template and its files: your own snapshot through a running daemon; with none, root's offline "
	  "(never one a configured pool or a VM uses)", "config=", 1, 1, cmd_template_rm },
	{ "template gc", "[--config FILE]", "remove templates of an image no pool uses or an old QEMU, and files no record points to",
	  "image-dir=,kernel=,initrd=,qemu=,config=", 0, 0, cmd_template_gc },
	{ "help", "[COMMAND]", "show this help, or a command's usage", "", 0, 2, cmd_help },
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void
print_usage(FILE *f, const struct cmd *c)
{
	fprintf(f, "usage: vmfactory %s%s%s\n", c->name, c->usage[0] ? " " : "", c->usage);
	fprintf(f, "       common options: --socket PATH --state-dir DIR --run-dir DIR --log-level LEVEL\n");
}

static void
print_help(FILE *f)
{
	fprintf(f, "usage: vmfactory COMMAND [OPTIONS]\n\ncommands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %-15s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\ncommon options (every command):\n"
		"  --socket PATH     control socket (VMFACTORY_SOCKET, default %s)\n"
		"  --state-dir DIR   catalog, templates, daemon log (VMFACTORY_STATE_DIR, default %s)\n"
		"  --run-dir DIR     VM sockets and dirs (VMFACTORY_RUN_DIR, default %s)\n"
		"  --log-level L     debug, info, warn, error, off (VMFACTORY_LOG_LEVEL)\n"
		"\n`vmfactory help COMMAND` shows a command's usage.\n"
		"exit status: 0 success, 1 error, 2 usage error, 3 no daemon answering (status)\n",
		VMF_DEFAULT_SOCKET, VMF_DEFAULT_STATE_DIR, VMF_DEFAULT_RUN_DIR);
}

/* Commands whose first word is word (e.g. "template"): a group name typed
 * alone gets the usage of its members rather than "unknown command".
 * f NULL only asks whether word is a group. */
static bool
print_group(FILE *f, const char *word)
{
	size_t n = strlen(word);
	bool any = false;
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strncmp(commands[i].name, word, n) == 0 && commands[i].name[n] == ' ') {
			if (f)
				fprintf(f, "usage: vmfactory %s%s%s\n", commands[i].name,
					commands[i].usage[0] ? " " : "", commands[i].usage);
			any = true;
		}
	return any;
}

static int
cmd_help(const struct cmd *cmd, struct args *a)
{
	if (a->npos > 0) {
		char name[64];
		snprintf(name, sizeof(name), "%s%s%s", a->pos[0], a->npos > 1 ? " " : "", a->npos > 1 ? a->pos[1] : "");
		for (size_t i = 0; i < NCOMMANDS; i++)
			if (strcmp(commands[i].name, name) == 0) {
				print_usage(stdout, &commands[i]);
				printf("\n%s\n", commands[i].summary);
				return 0;
			}
		if (a->npos == 1 && print_group(stdout, name))
			return 0;
		return usage_error(cmd, "unknown command '%s'", name);
	}
	print_help(stdout);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc < 2) {
		print_help(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		print_help(stdout);
		return 0;
	}
	const struct cmd *c = NULL;
	int skip = 1;
	for (size_t i = 0; i < NCOMMANDS && !c; i++) {
		const char *n = commands[i].name, *sp = strchr(n, ' ');
		if (!sp && strcmp(n, argv[1]) == 0)
			c = &commands[i];
		else if (sp && argc > 2 && strncmp(n, argv[1], (size_t)(sp - n)) == 0 && argv[1][sp - n] == '\0' &&
			 strcmp(sp + 1, argv[2]) == 0)
			c = &commands[i], skip = 2;
	}
	if (!c) {
		bool group = print_group(NULL, argv[1]);
		if (group && argc == 2) {
			fprintf(stderr, "vmfactory: %s needs a subcommand\n", argv[1]);
			print_group(stderr, argv[1]);
			return EXIT_USAGE;
		}
		fprintf(stderr, "vmfactory: unknown command '%s%s%s'\n\n", argv[1], group ? " " : "", group ? argv[2] : "");
		print_help(stderr);
		return EXIT_USAGE;
	}
	struct args a = { 0 };
	/* getopt sees the command word as argv[0]. */
	int r = parse(c, argc - skip, argv + skip, &a);
	if (r)
		return r;
	return c->fn(c, &a);
}
