#include "log.h"
#include "text.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int level_set;
static enum vmf_log_level cur_level = VMF_LOG_INFO;
static const char *names[] = { "debug", "info", "warn", "error", "off" };

int
vmf_log_parse_level(const char *name)
{
	for (int i = 0; i <= VMF_LOG_OFF; i++)
		if (name && strcmp(name, names[i]) == 0)
			return i;
	if (name && strcmp(name, "warning") == 0)
		return VMF_LOG_WARN;
	return -1;
}

void
vmf_log_set_level(enum vmf_log_level level)
{
	cur_level = level;
	level_set = 1;
}

enum vmf_log_level
vmf_log_get_level(void)
{
	if (!level_set) {
		int l = vmf_log_parse_level(getenv("VMFACTORY_LOG_LEVEL"));
		if (l >= 0)
			cur_level = (enum vmf_log_level)l;
		level_set = 1;
	}
	return cur_level;
}

/* logfmt quoting, and nothing a terminal acts on: a message may carry a
 * guest's text (a hostname, a file name, an error), and a log is read on
 * terminals and parsed by tools.  Every control byte, C1 control, byte
 * that is not UTF-8 and line or direction mark becomes an escape
 * (common/text.c), so a line stays one line and shows what it holds. */
static void
put_quoted(FILE *f, const char *s)
{
	char buf[4 * 2048 + 8];
	vmf_escape(s, buf, sizeof(buf), VMF_ESC_BACKSLASH | VMF_ESC_QUOTE);
	fputc('"', f);
	fputs(buf, f);
	fputc('"', f);
}

void
vmf_log_kv(enum vmf_log_level level, const char *func, const char *kv, const char *fmt, ...)
{
	if (level < vmf_log_get_level() || level >= VMF_LOG_OFF)
		return;
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	char tbuf[32];
	strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%S", &tm);

	/* One fprintf per line under the stdio lock so lines from threads do not
	 * interleave. */
	flockfile(stderr);
	fprintf(stderr, "time=%s.%03ldZ level=%s msg=", tbuf, ts.tv_nsec / 1000000, names[level]);
	put_quoted(stderr, msg);
	if (func)
		fprintf(stderr, " func=%s", func);
	if (kv && *kv) {
		char buf[4 * 96 + 8];
		vmf_escape(kv, buf, sizeof(buf), 0);
		fprintf(stderr, " %s", buf);
	}
	fputc('\n', stderr);
	funlockfile(stderr);
}

static void
libevent_cb(int severity, const char *msg)
{
	enum vmf_log_level l = VMF_LOG_DEBUG;
	switch (severity) {
	case EVENT_LOG_MSG: l = VMF_LOG_INFO; break;
	case EVENT_LOG_WARN: l = VMF_LOG_WARN; break;
	case EVENT_LOG_ERR: l = VMF_LOG_ERROR; break;
	default: break;
	}
	vmf_log_kv(l, "libevent", NULL, "%s", msg);
}

void
vmf_log_route_libevent(void)
{
	event_set_log_callback(libevent_cb);
}
