/* One error convention for all of vmfactory.
 *
 * A function that can fail takes `struct vmf_error *err` as its last
 * argument and returns a negative value on failure after filling *err with an
 * errno-style code and a sentence naming the thing and the cause.  Callers add
 * context with vmf_error_prefix(); only the edge (CLI main, control-socket
 * reply) prints or sends it.  err may be NULL when the caller does not care. */
#ifndef VMF_ERROR_H
#define VMF_ERROR_H

#include <stddef.h>

#define VMF_ERROR_MSG_MAX 1024

struct vmf_error {
	int code;                       /* errno value, > 0 when set */
	char msg[VMF_ERROR_MSG_MAX];
};

/* Sets *err and returns -code (or -EIO when code <= 0), so that
 * `return vmf_err(err, errno, "...")` is the usual failure path. */
int vmf_err(struct vmf_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Like vmf_err, appending ": strerror(code)". */
int vmf_err_sys(struct vmf_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prepends "context: " to an already-set error; returns -err->code. */
int vmf_error_prefix(struct vmf_error *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Appends text (e.g. a log tail) to an already-set error. */
void vmf_error_append(struct vmf_error *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
