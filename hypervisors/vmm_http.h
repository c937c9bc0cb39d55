/* HTTP/1.1 over a unix socket (libcurl), JSON in and out: the control
 * channel of Firecracker and Cloud Hypervisor.  Failures become one
 * vmf_error sentence naming the VMM, the request and the HTTP status, with
 * the VMM's own fault text ("fault_message" for Firecracker, the body for
 * Cloud Hypervisor). */
#ifndef VMF_VMM_HTTP_H
#define VMF_VMM_HTTP_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"

/* Sends METHOD path with body (may be NULL; not consumed) to the API server
 * on sock.  On 2xx returns the status and, when reply is not NULL, the
 * parsed JSON body (NULL when empty).  A non-2xx answer returns -errno
 * (404 ENOENT, other 4xx EINVAL, 5xx EIO); a VMM that cannot be reached or
 * closes the connection mid-request returns ECONNREFUSED / ECONNRESET. */
int vmf_vmm_http(const char *vmm, const char *sock, const char *method, const char *path,
		 json_object *body, json_object **reply, int timeout_ms, struct vmf_error *err);

/* Request bodies, one field at a time. */
json_object *vmf_json_obj(void);
void vmf_json_set_str(json_object *o, const char *k, const char *v);
void vmf_json_set_int(json_object *o, const char *k, int64_t v);
void vmf_json_set_bool(json_object *o, const char *k, bool v);

#endif
