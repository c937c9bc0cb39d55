/* The exec rooms' shared state (exec.c, exec_spawn.c): the processes a
 * host started, each owned by its connection until it is reaped. */
#ifndef VMF_AGENT_EXEC_H
#define VMF_AGENT_EXEC_H

#include "agent.h"

/* Exec bounds: one output frame's data, the stdin a host may have in
 * flight per process, output credit, processes, argv/env entries. */
#define OUT_CHUNK (32u * 1024u)
#define STDIN_WINDOW ((size_t)256 * 1024)
#define OUTPUT_WINDOW_DEFAULT (256u * 1024u)
#define OUTPUT_WINDOW_MAX (16u << 20)
#define PROCS_MAX 256u
#define EXEC_ARGS_MAX 4096u

struct proc {
	uint64_t id;
	pid_t pid;                   /* 0 once reaped */
	struct conn *c;              /* NULL once its connection is gone */
	bool tty;
	int in_fd;                   /* -1 once closed */
	int out_fd, err_fd;          /* -1 at EOF (tty: out_fd is the master) */
	uint64_t credit[3];          /* output credit, indexed by fd number */
	uint8_t *inbuf;              /* STDIN_WINDOW bytes */
	size_t inlen;
	uint32_t in_ack;             /* written or dropped, not yet acknowledged */
	bool in_close;               /* close stdin once inbuf is written */
	bool exited;
	int status;
	bool timed_out;
	int64_t deadline;            /* ms on CLOCK_MONOTONIC; 0 = none */
	unsigned long long ticks;    /* its start time: its exec ledger entry */
	struct proc *next;
};

/* How many processes run; a new one's id. */
unsigned exec_count(void);
/* Takes p into the list, its id assigned; returns the id. */
uint64_t exec_adopt(struct proc *p);
void close_fd(int *fd);

#endif
