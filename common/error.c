#include "error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* A message cut at its size limit may end inside a UTF-8 character: that
 * part goes, so a message that was valid UTF-8 stays so (replies carry it
 * in a protobuf string). */
static void
trim_cut_char(char *s)
{
	size_t n = strlen(s);
	for (size_t k = 1; k <= 3 && k <= n; k++) {
		unsigned char c = (unsigned char)s[n - k];
		if ((c & 0xc0) == 0x80)
			continue;
		size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
		if (len > k)
			s[n - k] = '\0';
		return;
	}
}

static int
set(struct vmf_error *err, int code, const char *fmt, va_list ap)
{
	if (code <= 0)
		code = EIO;
	if (err) {
		err->code = code;
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		trim_cut_char(err->msg);
	}
	return -code;
}

int
vmf_err(struct vmf_error *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = set(err, code, fmt, ap);
	va_end(ap);
	return r;
}

int
vmf_err_sys(struct vmf_error *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = set(err, code, fmt, ap);
	va_end(ap);
	if (err) {
		size_t n = strlen(err->msg);
		snprintf(err->msg + n, sizeof(err->msg) - n, ": %s", strerror(err->code));
		trim_cut_char(err->msg);
	}
	return r;
}

int
vmf_error_prefix(struct vmf_error *err, const char *fmt, ...)
{
	if (!err)
		return -EIO;
	if (err->code <= 0)
		err->code = EIO;
	char old[VMF_ERROR_MSG_MAX];
	memcpy(old, err->msg, sizeof(old));
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	/* Truncation keeps the prefix: the context is what names the thing. */
	if (n >= 0 && (size_t)n + 2 < sizeof(err->msg)) {
		size_t room = sizeof(err->msg) - (size_t)n - 2;
		memcpy(err->msg + n, ": ", 2);
		size_t ol = strnlen(old, sizeof(old) - 1);
		if (ol > room - 1)
			ol = room - 1;
		memcpy(err->msg + n + 2, old, ol);
		err->msg[n + 2 + ol] = '\0';
	}
	trim_cut_char(err->msg);
	return -err->code;
}

void
vmf_error_append(struct vmf_error *err, const char *fmt, ...)
{
	if (!err)
		return;
	size_t n = strlen(err->msg);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg + n, sizeof(err->msg) - n, fmt, ap);
	va_end(ap);
	trim_cut_char(err->msg);
}
