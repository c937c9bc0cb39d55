/* The exec ledger: one file per process group the agent started, named
 * PGID.START with START the group leader's start time (/proc/PGID/stat), so
 * that a pid used again is never taken for one of ours.  An agent that dies
 * (a crash, the OOM killer) cannot kill what it started; the next one
 * sweeps the ledger before it serves. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

static unsigned long long
start_ticks(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* Field 22, counted after the command name, which may hold blanks. */
	char *f = strrchr(buf, ')');
	for (int i = 2; f && i < 22; i++)
		f = strchr(f + 1, ' ');
	return f ? strtoull(f + 1, NULL, 10) : 0;
}

static void
ledger_entry(char *buf, size_t n, pid_t pgid, unsigned long long ticks)
{
	snprintf(buf, n, "%s/%d.%llu", agent_options.exec_ledger, (int)pgid, ticks);
}

/* Returns the leader's start time, for exec_ledger_remove(). */
unsigned long long
exec_ledger_add(pid_t pgid)
{
	unsigned long long ticks = start_ticks(pgid);
	if (!agent_options.exec_ledger)
		return ticks;
	char path[PATH_MAX];
	ledger_entry(path, sizeof(path), pgid, ticks);
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		logmsg("exec ledger: cannot create %s: %s", path, strerror(errno));
	else
		close(fd);
	return ticks;
}

void
exec_ledger_remove(pid_t pgid, unsigned long long ticks)
{
	if (!agent_options.exec_ledger)
		return;
	char path[PATH_MAX];
	ledger_entry(path, sizeof(path), pgid, ticks);
	unlink(path);
}

/* The groups a dead agent left: killed, unless their id now names a
 * process of another start time (a group that still existed would have
 * kept its id from being used again). */
void
exec_ledger_sweep(void)
{
	const char *dir = agent_options.exec_ledger;
	if (!dir)
		return;
	DIR *d = opendir(dir);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		int pgid;
		unsigned long long ticks;
		char tail;
		if (sscanf(de->d_name, "%d.%llu%c", &pgid, &ticks, &tail) != 2 || pgid <= 1)
			continue;
		unsigned long long now = start_ticks(pgid);
		if (!now || now == ticks) {
			if (kill(-pgid, SIGKILL) == 0)
				logmsg("killed process group %d, left by an agent that died", pgid);
		}
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
}
