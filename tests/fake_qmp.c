#include "fake_qmp.h"

#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct line {
	char dir;       /* '<' from QEMU, '>' from the client */
	char *text;
};

struct fake_qmp {
	struct fake_qmp_opts o;
	int fd;
	pthread_t th;
	struct line *lines;
	size_t n;
	int mismatches;
	int fds;
	char buf[1 << 16];
	size_t len;
};

static void
put(struct fake_qmp *f, const char *s, size_t n)
{
	if (f->o.split) {
		for (size_t i = 0; i < n; i++)
			if (send(f->fd, s + i, 1, MSG_NOSIGNAL) != 1)
				return;
		return;
	}
	while (n > 0) {
		ssize_t w = send(f->fd, s, n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

/* Reads one client line, collecting any passed fds. */
static char *
get_line(struct fake_qmp *f)
{
	for (;;) {
		char *nl = memchr(f->buf, '\n', f->len);
		if (nl) {
			size_t n = (size_t)(nl - f->buf);
			char *s = strndup(f->buf, n);
			memmove(f->buf, nl + 1, f->len - n - 1);
			f->len -= n + 1;
			return s;
		}
		char cbuf[CMSG_SPACE(sizeof(int) * 4)];
		struct iovec iov = { f->buf + f->len, sizeof(f->buf) - f->len };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
		ssize_t r = recvmsg(f->fd, &m, 0);
		if (r <= 0)
			return NULL;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				int fd;
				memcpy(&fd, CMSG_DATA(c), sizeof fd);
				close(fd);
				f->fds++;
			}
		f->len += (size_t)r;
	}
}

static void
send_reply(struct fake_qmp *f, const char *text, json_object *id)
{
	json_object *o = json_tokener_parse(text);
	if (o && id && (json_object_object_get_ex(o, "return", NULL) || json_object_object_get_ex(o, "error", NULL)))
		json_object_object_add(o, "id", json_object_get(id));
	const char *s = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN) : text;
	put(f, s, strlen(s));
	put(f, "\n", 1);
	json_object_put(o);
}

static void *
run(void *arg)
{
	struct fake_qmp *f = arg;
	int cmd = -1;
	json_object *id = NULL;
	for (size_t i = 0; i < f->n; i++) {
		struct line *l = &f->lines[i];
		if (l->dir == '>') {
			cmd++;
			char *got = get_line(f);
			if (!got)
				break;
			json_object *g = json_tokener_parse(got), *want = json_tokener_parse(l->text);
			json_object *ge = NULL, *we = NULL, *ga = NULL, *wa = NULL;
			json_object_object_get_ex(g, "execute", &ge);
			json_object_object_get_ex(want, "execute", &we);
			json_object_object_get_ex(g, "arguments", &ga);
			json_object_object_get_ex(want, "arguments", &wa);
			if (!ge || !we || strcmp(json_object_get_string(ge), json_object_get_string(we)) ||
			    !json_object_equal(ga, wa)) {
				fprintf(stderr, "fake QMP: expected %s, got %s\n", l->text, got);
				f->mismatches++;
			}
			json_object_put(id);
			id = NULL;
			json_object_object_get_ex(g, "id", &id);
			json_object_get(id);
			json_object_put(g);
			json_object_put(want);
			free(got);
			if (cmd == f->o.fault_at && f->o.fault != FAULT_NONE) {
				static char big[(1 << 20) + 4096];
				switch (f->o.fault) {
				case FAULT_GARBAGE: put(f, "this is not json\n", 17); break;
				case FAULT_NON_OBJECT: put(f, "[1, 2, 3]\n", 10); break;
				case FAULT_OVERSIZE:
					memset(big, ' ', sizeof big);
					big[0] = '{';
					put(f, big, sizeof big);
					break;
				case FAULT_CLOSE: put(f, "{\"return\": {", 12); goto out;
				case FAULT_DELAY: poll(NULL, 0, 500); continue;
				case FAULT_ORPHAN: put(f, "{\"return\": {}}\n", 15); continue;
				default: break;
				}
				/* After a fault the conversation is over for the client. */
				goto out;
			}
			continue;
		}
		send_reply(f, l->text, id);
	}
out:
	json_object_put(id);
	shutdown(f->fd, SHUT_WR);
	/* Drain until the client closes, so it never sees EPIPE on a write. */
	char tmp[4096];
	while (read(f->fd, tmp, sizeof tmp) > 0)
		;
	return NULL;
}

struct fake_qmp *
fake_qmp_start(const struct fake_qmp_opts *o, int *client_fd)
{
	struct fake_qmp *f = calloc(1, sizeof(*f));
	f->o = *o;
	FILE *in = fopen(o->replies, "r");
	if (!in) {
		perror(o->replies);
		abort();
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	while ((n = getline(&line, &cap, in)) > 0) {
		if ((line[0] != '<' && line[0] != '>') || line[1] != ' ')
			continue;
		line[strcspn(line, "\n")] = 0;
		f->lines = realloc(f->lines, (f->n + 1) * sizeof(*f->lines));
		f->lines[f->n].dir = line[0];
		f->lines[f->n].text = strdup(line + 2);
		f->n++;
	}
	free(line);
	fclose(in);
	int sv[2];
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	f->fd = sv[0];
	*client_fd = sv[1];
	pthread_create(&f->th, NULL, run, f);
	return f;
}

int
fake_qmp_join(struct fake_qmp *f, int *fds_received)
{
	pthread_join(f->th, NULL);
	int m = f->mismatches;
	if (fds_received)
		*fds_received = f->fds;
	close(f->fd);
	for (size_t i = 0; i < f->n; i++)
		free(f->lines[i].text);
	free(f->lines);
	free(f);
	return m;
}
