/* Fake QMP peer replaying a recorded conversation; see fake_qmp.h. */
#include "fake_qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <linux/sockios.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "frame.h"

#define MAX_FAULTS 16
#define MAX_CMD_LINE (64u * 1024u)
/* How long a 1-byte write waits for the client to read it. */
#define SPLIT_WAIT_MS 5000

struct step {
	json_object *cmd;       /* what the client must send; NULL for the greeting */
	char *cmd_text;
	bool want_fd;
	int got_fd;
	char **lines;           /* what QEMU sent, without "\r\n" */
	size_t nlines;
};

struct fault {
	int step;
	enum fake_qmp_fault_kind kind;
	size_t count;
	char *text;
};

struct fake_qmp {
	struct step *steps;
	int nsteps;
	struct fault faults[MAX_FAULTS];
	int nfaults;
	int sock;
	int listen_fd;
	char *listen_path;
	enum fake_qmp_listen_mode listen_mode;
	int delay_ms;
	int release[2];         /* a byte per fake_qmp_release() */
	int stop[2];            /* written by fake_qmp_free(): give up waiting */
	pthread_t th;
	bool started, joined;
	pthread_mutex_t mu;     /* steps[].got_fd, res */
	struct fake_qmp_result res;
	char in[MAX_CMD_LINE];
	size_t inlen;
	int pending_fd;         /* received, not yet tied to a line */
};

struct out {
	char *buf;
	size_t len, cap;
};

static void
out_add(struct out *o, const char *s, size_t n)
{
	if (o->len + n + 1 > o->cap) {
		size_t cap = o->cap ? o->cap : 256;
		while (cap < o->len + n + 1)
			cap *= 2;
		char *nb = realloc(o->buf, cap);
		if (!nb)
			abort();
		o->buf = nb;
		o->cap = cap;
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
	o->buf[o->len] = '\0';
}

static void
fail(struct fake_qmp *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
fail(struct fake_qmp *f, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&f->mu);
	if (!f->res.error[0])
		vsnprintf(f->res.error, sizeof(f->res.error), fmt, ap);
	pthread_mutex_unlock(&f->mu);
	va_end(ap);
}

static int
load(struct fake_qmp *f, const char *path, struct vmf_error *err)
{
	FILE *in = fopen(path, "r");
	if (!in)
		return vmf_err_sys(err, errno, "cannot open the QMP recording %s", path);
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int lineno = 0, r = 0;
	f->steps = calloc(1, sizeof(*f->steps));
	f->steps[0].got_fd = -1;
	f->nsteps = 1;
	while ((n = getline(&line, &cap, in)) >= 0) {
		lineno++;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0 || line[0] == '#')
			continue;
		if (strncmp(line, "< ", 2) == 0) {
			struct step *s = &f->steps[f->nsteps - 1];
			s->lines = realloc(s->lines, (s->nlines + 1) * sizeof(*s->lines));
			s->lines[s->nlines++] = strdup(line + 2);
			continue;
		}
		bool with_fd = strncmp(line, ">fd ", 4) == 0;
		if (!with_fd && strncmp(line, "> ", 2) != 0) {
			r = vmf_err(err, EINVAL, "%s:%d: a line must start with '< ', '> ', '>fd ' or '#'",
				    path, lineno);
			break;
		}
		const char *text = line + (with_fd ? 4 : 2);
		json_object *cmd = json_tokener_parse(text);
		if (!cmd || !json_object_object_get_ex(cmd, "execute", NULL)) {
			json_object_put(cmd);
			r = vmf_err(err, EINVAL, "%s:%d: not a QMP command: %s", path, lineno, text);
			break;
		}
		f->steps = realloc(f->steps, (size_t)(f->nsteps + 1) * sizeof(*f->steps));
		struct step *s = &f->steps[f->nsteps++];
		memset(s, 0, sizeof(*s));
		s->cmd = cmd;
		s->cmd_text = strdup(text);
		s->want_fd = with_fd;
		s->got_fd = -1;
	}
	free(line);
	fclose(in);
	return r;
}

int
fake_qmp_new(const char *replies_path, struct fake_qmp **out, struct vmf_error *err)
{
	*out = NULL;
	struct fake_qmp *f = calloc(1, sizeof(*f));
	if (!f)
		return vmf_err(err, ENOMEM, "out of memory for the fake QMP peer");
	f->sock = f->listen_fd = -1;
	f->pending_fd = -1;
	f->res.steps_done = -1;
	f->release[0] = f->release[1] = f->stop[0] = f->stop[1] = -1;
	pthread_mutex_init(&f->mu, NULL);
	int r = load(f, replies_path, err);
	if (r == 0 && (pipe2(f->release, O_CLOEXEC) < 0 || pipe2(f->stop, O_CLOEXEC) < 0))
		r = vmf_err_sys(err, errno, "cannot create pipes for the fake QMP peer");
	if (r < 0) {
		fake_qmp_free(f);
		return r;
	}
	*out = f;
	return 0;
}

void
fake_qmp_fault(struct fake_qmp *f, int step, enum fake_qmp_fault_kind kind, size_t count, const char *text)
{
	if (f->nfaults == MAX_FAULTS || f->started)
		abort(); /* a test bug, not a condition to handle */
	struct fault *x = &f->faults[f->nfaults++];
	x->step = step;
	x->kind = kind;
	x->count = count;
	x->text = text ? strdup(text) : NULL;
}

static struct fault *
fault_for(struct fake_qmp *f, int step, enum fake_qmp_fault_kind kind)
{
	for (int i = 0; i < f->nfaults; i++)
		if (f->faults[i].step == step && f->faults[i].kind == kind)
			return &f->faults[i];
	return NULL;
}

/* Waits until fd has events or stop was requested: 1 ready, 0 stop. */
static int
wait_or_stop(struct fake_qmp *f, int fd, short events)
{
	for (;;) {
		struct pollfd p[2] = { { .fd = fd, .events = events }, { .fd = f->stop[0], .events = POLLIN } };
		int r = poll(p, 2, -1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 || p[1].revents)
			return 0;
		if (p[0].revents)
			return 1;
	}
}

/* 0 sent, -1 the client is gone (or stop). */
static int
send_all(struct fake_qmp *f, const char *s, size_t n)
{
	while (n > 0) {
		if (!wait_or_stop(f, f->sock, POLLOUT))
			return -1;
		ssize_t w = send(f->sock, s, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (w < 0)
			return -1;
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One byte per write, each read by the client before the next goes. */
static int
send_split(struct fake_qmp *f, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (send_all(f, s + i, 1) < 0)
			return -1;
		int64_t deadline = vmf_now_ms() + SPLIT_WAIT_MS;
		int queued;
		while (ioctl(f->sock, SIOCOUTQ, &queued) == 0 && queued > 0 && vmf_now_ms() < deadline)
			sched_yield();
	}
	return 0;
}

/* Reads the client's next line; 1 when the client hung up or stop. */
static int
read_cmd(struct fake_qmp *f, char **line, int *fd)
{
	*line = NULL;
	*fd = -1;
	for (;;) {
		char *nl = memchr(f->in, '\n', f->inlen);
		if (nl) {
			size_t n = (size_t)(nl - f->in);
			*line = strndup(f->in, n);
			memmove(f->in, nl + 1, f->inlen - n - 1);
			f->inlen -= n + 1;
			*fd = f->pending_fd;
			f->pending_fd = -1;
			return 0;
		}
		if (f->inlen == sizeof(f->in)) {
			fail(f, "the client sent a line longer than %u bytes", MAX_CMD_LINE);
			return -1;
		}
		if (!wait_or_stop(f, f->sock, POLLIN))
			return 1;
		union {
			char buf[CMSG_SPACE(sizeof(int) * 4)];
			struct cmsghdr align;
		} cmsg;
		struct iovec iov = { f->in + f->inlen, sizeof(f->in) - f->inlen };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsg.buf,
				    .msg_controllen = sizeof(cmsg.buf) };
		ssize_t r = recvmsg(f->sock, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r <= 0)
			return 1;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			int nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (int i = 0; i < nfds; i++) {
				int got;
				memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
				if (f->pending_fd >= 0) {
					fail(f, "the client passed more than one fd with a command");
					close(got);
				} else {
					f->pending_fd = got;
				}
			}
		}
		if (m.msg_flags & MSG_CTRUNC)
			fail(f, "the client passed more fds than a command can carry");
		f->inlen += (size_t)r;
	}
}

static json_object *
args_of(json_object *cmd)
{
	json_object *a = NULL;
	json_object_object_get_ex(cmd, "arguments", &a);
	/* No arguments and empty arguments mean the same to QEMU. */
	if (a && json_object_is_type(a, json_type_object) && json_object_object_length(a) == 0)
		return NULL;
	return a;
}

/* Checks the client's line against the step; *id gets its id (or NULL). */
static bool
matches(struct fake_qmp *f, int step, const char *line, int fd, json_object **id)
{
	struct step *s = &f->steps[step];
	*id = NULL;
	json_object *got = json_tokener_parse(line);
	json_object *ge = NULL, *we = NULL;
	if (!got || !json_object_is_type(got, json_type_object) ||
	    !json_object_object_get_ex(got, "execute", &ge)) {
		fail(f, "step %d: expected %s, the client sent something else: %s", step, s->cmd_text, line);
		json_object_put(got);
		if (fd >= 0)
			close(fd);
		return false;
	}
	json_object_object_get_ex(s->cmd, "execute", &we);
	bool ok = strcmp(json_object_get_string(ge), json_object_get_string(we)) == 0 &&
		  json_object_equal(args_of(got), args_of(s->cmd));
	if (!ok)
		fail(f, "step %d: expected %s, the client sent %s", step, s->cmd_text, line);
	else if (s->want_fd && fd < 0)
		fail(f, "step %d: expected an fd with %s, none came", step, s->cmd_text), ok = false;
	else if (!s->want_fd && fd >= 0)
		fail(f, "step %d: the client passed an fd with %s, the recording has none", step, line), ok = false;
	if (ok && fd >= 0) {
		pthread_mutex_lock(&f->mu);
		s->got_fd = fd;
		pthread_mutex_unlock(&f->mu);
	} else if (fd >= 0) {
		close(fd);
	}
	json_object *cid;
	if (ok && json_object_object_get_ex(got, "id", &cid))
		*id = json_object_get(cid);
	json_object_put(got);
	return ok;
}

/* The recorded lines of a step, with reply ids rewritten to the client's. */
static void
recorded_bytes(struct fake_qmp *f, int step, json_object *id, struct out *o)
{
	struct step *s = &f->steps[step];
	for (size_t i = 0; i < s->nlines; i++) {
		json_object *l = json_tokener_parse(s->lines[i]);
		if (l && json_object_is_type(l, json_type_object) && json_object_object_get_ex(l, "id", NULL)) {
			if (id)
				json_object_object_add(l, "id", json_object_get(id));
			else
				json_object_object_del(l, "id");
			const char *t = json_object_to_json_string_ext(l, JSON_C_TO_STRING_PLAIN);
			out_add(o, t, strlen(t));
		} else {
			out_add(o, s->lines[i], strlen(s->lines[i]));
		}
		json_object_put(l);
		out_add(o, "\r\n", 2);
	}
}

/* Waits for fake_qmp_release(); false when the client hung up or stop. */
static bool
hold(struct fake_qmp *f)
{
	for (;;) {
		struct pollfd p[3] = { { .fd = f->release[0], .events = POLLIN },
				       { .fd = f->sock, .events = POLLRDHUP },
				       { .fd = f->stop[0], .events = POLLIN } };
		int r = poll(p, 3, -1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 || p[2].revents || (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)))
			return false;
		if (p[0].revents) {
			char c;
			return read(f->release[0], &c, 1) == 1;
		}
	}
}

/* Sends one step with its faults: 0, -1 when the client is gone, -2 when
 * the fault ends the conversation. */
static int
play(struct fake_qmp *f, int step, json_object *id)
{
	struct out o = { 0 };
	struct fault *x;
	int r = 0;
	if (fault_for(f, step, FAKE_QMP_HOLD) && !hold(f))
		return -1;
	if ((x = fault_for(f, step, FAKE_QMP_EVENTS_FIRST))) {
		for (size_t i = 0; i < x->count; i++) {
			out_add(&o, x->text, strlen(x->text));
			out_add(&o, "\r\n", 2);
		}
	}
	if ((x = fault_for(f, step, FAKE_QMP_REPLACE))) {
		out_add(&o, x->text, strlen(x->text));
	} else if ((x = fault_for(f, step, FAKE_QMP_OVERSIZED))) {
		static const char head[] = "{\"return\": \"";
		out_add(&o, head, sizeof(head) - 1);
		size_t pad = x->count > sizeof(head) + 1 ? x->count - sizeof(head) - 1 : 0;
		char *p = malloc(pad);
		if (!p)
			abort();
		memset(p, 'x', pad);
		out_add(&o, p, pad);
		free(p);
		out_add(&o, "\"}\r\n", 4);
	} else {
		recorded_bytes(f, step, id, &o);
	}
	if (fault_for(f, step, FAKE_QMP_CLOSE_MID)) {
		r = send_all(f, o.buf, o.len / 2) < 0 ? -1 : -2;
	} else if (fault_for(f, step, FAKE_QMP_SPLIT)) {
		r = send_split(f, o.buf, o.len);
	} else {
		r = send_all(f, o.buf, o.len);
	}
	free(o.buf);
	return r;
}

static int
accept_client(struct fake_qmp *f)
{
	if (f->listen_mode == FAKE_QMP_BIND_LATE || f->listen_mode == FAKE_QMP_LISTEN_LATE) {
		/* The point of the fault: QEMU not ready yet for delay_ms. */
		struct pollfd p = { .fd = f->stop[0], .events = POLLIN };
		if (poll(&p, 1, f->delay_ms) != 0)
			return -1;
	}
	if (f->listen_fd < 0) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->listen_path);
		f->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (f->listen_fd < 0 || bind(f->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			fail(f, "cannot bind %s: %s", f->listen_path, strerror(errno));
			return -1;
		}
	}
	if (listen(f->listen_fd, 1) < 0) {
		fail(f, "cannot listen on %s: %s", f->listen_path, strerror(errno));
		return -1;
	}
	if (!wait_or_stop(f, f->listen_fd, POLLIN))
		return -1;
	f->sock = accept4(f->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (f->sock < 0) {
		fail(f, "cannot accept on %s: %s", f->listen_path, strerror(errno));
		return -1;
	}
	return 0;
}

static void *
run(void *arg)
{
	struct fake_qmp *f = arg;
	int step = 0;
	bool hung_up = false;
	if (f->listen_path && accept_client(f) < 0)
		goto out;
	for (; step < f->nsteps; step++) {
		json_object *id = NULL;
		if (step > 0) {
			char *line;
			int fd;
			int r = read_cmd(f, &line, &fd);
			if (r != 0) {
				hung_up = r > 0;
				break;
			}
			bool ok = matches(f, step, line, fd, &id);
			free(line);
			if (!ok)
				break;
		}
		int r = play(f, step, id);
		json_object_put(id);
		if (r < 0) {
			hung_up = r == -1;
			break;
		}
		pthread_mutex_lock(&f->mu);
		f->res.steps_done = step;
		pthread_mutex_unlock(&f->mu);
	}
out:
	pthread_mutex_lock(&f->mu);
	f->res.complete = step == f->nsteps;
	f->res.client_hung_up = hung_up;
	pthread_mutex_unlock(&f->mu);
	/* Like QEMU after quit: the client reads what is left, then EOF. */
	if (f->sock >= 0) {
		close(f->sock);
		f->sock = -1;
	}
	return NULL;
}

static int
start_thread(struct fake_qmp *f, struct vmf_error *err)
{
	f->started = true;
	int r = pthread_create(&f->th, NULL, run, f);
	if (r != 0) {
		f->started = false;
		return vmf_err_sys(err, r, "cannot start the fake QMP peer thread");
	}
	return 0;
}

int
fake_qmp_start(struct fake_qmp *f, struct vmf_error *err)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return vmf_err_sys(err, errno, "cannot create a socketpair for the fake QMP peer");
	f->sock = sv[0];
	int r = start_thread(f, err);
	if (r < 0) {
		close(sv[1]);
		return r;
	}
	return sv[1];
}

int
fake_qmp_listen(struct fake_qmp *f, const char *path, enum fake_qmp_listen_mode mode, int delay_ms,
		struct vmf_error *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return vmf_err(err, ENAMETOOLONG, "fake QMP socket path %s is too long", path);
	f->listen_path = strdup(path);
	f->listen_mode = mode;
	f->delay_ms = delay_ms;
	if (mode != FAKE_QMP_BIND_LATE) {
		/* The file exists when this returns, listening or not. */
		strcpy(sa.sun_path, path);
		f->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (f->listen_fd < 0 || bind(f->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			return vmf_err_sys(err, errno, "cannot bind the fake QMP socket %s", path);
		if (mode == FAKE_QMP_LISTEN_NOW && listen(f->listen_fd, 1) < 0)
			return vmf_err_sys(err, errno, "cannot listen on the fake QMP socket %s", path);
	}
	return start_thread(f, err);
}

void
fake_qmp_release(struct fake_qmp *f)
{
	char c = 'r';
	if (write(f->release[1], &c, 1) != 1)
		abort();
}

int
fake_qmp_received_fd(struct fake_qmp *f, int step)
{
	if (step < 0 || step >= f->nsteps)
		return -1;
	pthread_mutex_lock(&f->mu);
	int fd = f->steps[step].got_fd;
	pthread_mutex_unlock(&f->mu);
	return fd;
}

void
fake_qmp_join(struct fake_qmp *f, struct fake_qmp_result *res)
{
	if (f->started && !f->joined) {
		pthread_join(f->th, NULL);
		f->joined = true;
	}
	if (res)
		*res = f->res;
}

void
fake_qmp_free(struct fake_qmp *f)
{
	if (!f)
		return;
	if (f->started && !f->joined) {
		char c = 's';
		if (write(f->stop[1], &c, 1) != 1)
			abort();
		fake_qmp_join(f, NULL);
	}
	for (int i = 0; i < f->nsteps; i++) {
		struct step *s = &f->steps[i];
		json_object_put(s->cmd);
		free(s->cmd_text);
		if (s->got_fd >= 0)
			close(s->got_fd);
		for (size_t j = 0; j < s->nlines; j++)
			free(s->lines[j]);
		free(s->lines);
	}
	free(f->steps);
	for (int i = 0; i < f->nfaults; i++)
		free(f->faults[i].text);
	int fds[] = { f->sock, f->listen_fd, f->pending_fd, f->release[0], f->release[1], f->stop[0], f->stop[1] };
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (f->listen_path)
		unlink(f->listen_path);
	free(f->listen_path);
	pthread_mutex_destroy(&f->mu);
	free(f);
}
