/* HTTP/1.1 over a unix socket (libcurl), JSON in and out: the control
 * channel of Firecracker and Cloud Hypervisor.  Failures become one
 * vmf_error sentence naming the VMM, the request and the HTTP status, with
 * the VMM's own fault text ("fault_message" for Firecracker, the body for
 * Cloud Hypervisor). */
#ifndef VMF_VMM_HTTP_H
#define VMF_VMM_HTTP_H

#include <json-c/json.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "driver.h"
#include "error.h"
#include "vmm_proc.h"

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

/* ---- the per-VM handle both HTTP-API drivers keep ----
 * Each driver's struct vmf_vm starts with one and adds what is its own. */
struct vmf_vmm_vm {
	const char *vmm;          /* "firecracker": names it in messages */
	const char *api_prefix;   /* before every API path ("/api/v1/" for CH) */
	vmf_vm_config *cfg;
	struct vmf_vmm_proc proc;
	char api_sock[PATH_MAX];
	char vsock[PATH_MAX];
	char log[PATH_MAX];
	char version[64];
	unsigned vcpus;
	unsigned memory_mib;      /* base + hot-added */
	bool paused;
};

/* Checks cfg (vmf_vmm_check_config), copies it and names the run dir's
 * API socket, vsock socket and log. */
int vmf_vmm_vm_init(struct vmf_vmm_vm *h, const char *vmm, const char *api_prefix, const vmf_vm_config *cfg,
		    const char *api_sock_name, const char *log_name, struct vmf_error *err);
void vmf_vmm_vm_fini(struct vmf_vmm_vm *h);
/* vmf_vmm_http on the VM's socket; an error names the VM and, when the VMM
 * has exited, ends with the tail of its log. */
int vmf_vmm_vm_api(struct vmf_vmm_vm *h, const char *method, const char *path, json_object *body,
		   json_object **reply, int timeout_ms, struct vmf_error *err);
/* SIGTERM, then SIGKILL, within 2 s. */
void vmf_vmm_vm_kill(struct vmf_vmm_vm *h);
/* The guest agent's stream over the VM's hybrid vsock. */
int vmf_vmm_vm_agent_connect(struct vmf_vmm_vm *h, int timeout_ms, struct vmf_error *err);
int vmf_vmm_vm_serialize(const struct vmf_vmm_vm *h, Vmf__Hv__HypervisorKind kind, vmf_hv_state **out,
			 struct vmf_error *err);
/* Takes over the running VMM a record describes; h was initialised from
 * st->config.  Confirms the process is that VM's (its command line names
 * the API socket), then asks the API for its version (GET version_path,
 * field version_key) and its run state (GET info_path, "state"), since the
 * recorded one may be stale. */
int vmf_vmm_vm_adopt(struct vmf_vmm_vm *h, const vmf_hv_state *st, const char *version_path,
		     const char *version_key, const char *info_path, struct vmf_error *err);

#endif
