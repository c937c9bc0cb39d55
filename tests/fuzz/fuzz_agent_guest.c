/* The guest agent (contrib/agent/) against arbitrary bytes from "the
 * host": its frame parser (conn_parse_input), request decoding and handlers, run through
 * the agent's own --fd test mode, which touches nothing global (no clock,
 * CPUs, mounts; GuestInfo lists a scratch share directory, file requests
 * act inside it).  The agent is a
 * separate static program, so its source is compiled into this target with
 * main renamed to vmf_agent_main (see tests/fuzz/meson.build): one
 * implementation, no copy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_peer.h"
#include "util.h"

int vmf_agent_main(int argc, char **argv);
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char share[64];

static void
remove_share(void)
{
	vmf_rm_rf(share, NULL);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	const char *tmp = getenv("TMPDIR");
	snprintf(share, sizeof(share), "%s/vmf-fuzz-share-XXXXXX", tmp && strlen(tmp) < 30 ? tmp : "/tmp");
	if (!mkdtemp(share))
		abort();
	atexit(remove_share);
	char p[128];
	snprintf(p, sizeof(p), "%s/hello.txt", share);
	FILE *f = fopen(p, "w");
	if (!f)
		abort();
	fclose(f);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_peer p = { .data = data, .len = size };
	int fd;
	if (fuzz_peer_start(&p, &fd) < 0)
		abort();
	char fdarg[16];
	snprintf(fdarg, sizeof(fdarg), "%d", fd);
	/* --no-exec: arbitrary bytes must not become host commands;
	 * --files-root: file requests act only inside the scratch share, as
	 * its "/" (the seeds name paths there). */
	char *argv[] = { "vmf-agent", "--fd", fdarg, "--share-dir", share, "--files-root", share, "--no-exec", NULL };
	if (vmf_agent_main(8, argv) != 0)
		abort(); /* in test mode only an allocation failure ends it so */
	close(fd);
	fuzz_peer_join(&p);
	return 0;
}
