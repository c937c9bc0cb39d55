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
/* Kept processes: output held per stream while detached, the tag's size,
 * what ExecList shows of argv, the sandbox environment's bounds. */
#define HELD_MAX (64u * 1024u)
#define TAG_MAX 64u
#define LIST_ARGS 16u
#define LIST_ARG_LEN 256u
#define SANDBOX_ENV_MAX 256u
#define SANDBOX_ENV_BYTES (32u * 1024u)

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
	size_t in_orphan;            /* the first of inbuf came on a connection that is gone: never acknowledged */
	bool in_close;               /* close stdin once inbuf is written */
	bool exited;
	int status;
	bool timed_out;
	int64_t deadline;            /* ms on CLOCK_MONOTONIC; 0 = none */
	unsigned long long ticks;    /* its start time: its exec ledger entry */
	bool keep;                   /* detached, not killed, when its connection ends */
	char tag[TAG_MAX + 1];
	char **argv;                 /* for ExecList: LIST_ARGS at most, cut */
	char *cwd;
	uint8_t *held[3];            /* output read while detached, by fd */
	size_t held_len[3];
	uint64_t dropped;            /* held output dropped (oldest first) */
	struct proc *next;
};

/* How many processes run; a new one's id. */
unsigned exec_count(void);
/* Takes p into the list, its id assigned; returns the id. */
uint64_t exec_adopt(struct proc *p);
void close_fd(int *fd);
/* The sandbox environment (ExecSetEnv), NULL-terminated; never NULL. */
char *const *exec_sandbox_env(void);
/* A full table loses its oldest exited, detached entry; false when none. */
bool exec_evict_one(void);
/* Whether a live entry of the table has this tag. */
bool exec_tag_taken(const char *tag);

#endif
