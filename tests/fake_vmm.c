/* A fake Firecracker / Cloud Hypervisor process for the driver tests.
 *
 *   fake_vmm --api-sock PATH [--id ID]      behaves as Firecracker
 *   fake_vmm --api-socket path=PATH         behaves as Cloud Hypervisor
 *   fake_vmm --version                      "Firecracker v1.17.0-dev" (or,
 *                                           with FAKE_VMM_KIND=ch,
 *                                           "cloud-hypervisor v...")
 *
 * It serves HTTP/1.1 on the API socket and accepts only the endpoints,
 * methods and body fields of the VMM's published API document
 * (vmm_api_tables.h, generated at build time from tests/data/specs; versions below).
 * Anything else is a violation: it is answered with HTTP 400 and appended
 * to $FAKE_VMM_VIOLATIONS, which the tests require to stay empty.
 *
 * It keeps the VMM's state machine (Not started / Running / Paused for
 * Firecracker; none / Created / Running / Paused for Cloud Hypervisor) and
 * answers invalid transitions as the real VMM does: 4xx with
 * {"fault_message": ...} (Firecracker) or an error text (Cloud Hypervisor).
 * Firecracker drives: PUT /drives/{id} only before boot, PATCH only after
 * it and only on an existing drive, each opening its path (relative ones
 * from the fake's working directory) as the drive's is_read_only says; a
 * snapshot records them and a load reopens them.  Cloud Hypervisor disks:
 * vm.add-disk opens the path and lists the disk in the config (vm.info, a
 * snapshot's config.json); vm.restore opens the config's disks.  Opened
 * disks are logged to $FAKE_VMM_LOG with the resolved path.
 * Snapshots are real files in the directories the driver names.  The vsock
 * socket answers "CONNECT 1024" with "OK ..." and then echoes bytes, standing
 * in for the guest agent.
 *
 * Test controls (environment):
 *   FAKE_VMM_VIOLATIONS=file   violations are appended here
 *   FAKE_VMM_LOG=file          every request line + body is appended here
 *   FAKE_VMM_DIE_ON="PUT /x"   exit(3) on reading that request, unanswered
 *   FAKE_VMM_CUT_ON="PUT /x"   exit(4) halfway through the answer
 *   FAKE_VMM_FAIL_ON="PUT /x"  answer that request with a 400 fault
 *   FAKE_VMM_IGNORE_TERM=1     ignore SIGTERM (stop must use SIGKILL)
 *   FAKE_VMM_NO_HOTPLUG=1      report Firecracker 1.10.0 (no /hotplug/memory)
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

enum jtype { J_ANY, J_STRING, J_INT, J_BOOL, J_ARRAY, J_OBJECT, J_NUMBER, J_REF };
struct api_field {
	const char *schema, *field;
	enum jtype type;
	const char *ref;      /* J_REF: schema; J_ARRAY: item schema */
	bool required;
	const char *enums;    /* "A|B|C" */
};
struct api_endpoint {
	const char *method, *path, *body;
	bool body_required;
};
#include "vmm_api_tables.h"

#define FC_FAKE_VERSION "1.17.0-dev"
#define CH_FAKE_VERSION "v48.0-fake"

static bool is_fc;
static const struct api_field *fields;
static const struct api_endpoint *endpoints;
static const char *vmm_name;

/* ---- reporting ---- */

static void
append_to(const char *envname, const char *fmt, ...)
{
	const char *path = getenv(envname);
	if (!path || !*path)
		return;
	FILE *f = fopen(path, "a");
	if (!f)
		return;
	va_list ap;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fputc('\n', f);
	fclose(f);
}

static char violation[512];

static void
violate(const char *fmt, ...)
{
	if (violation[0])
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(violation, sizeof(violation), fmt, ap);
	va_end(ap);
}

/* ---- validation against the spec tables ---- */

static const struct api_field *
schema_row(const char *schema)
{
	for (const struct api_field *f = fields; f->schema; f++)
		if (strcmp(f->schema, schema) == 0 && !*f->field)
			return f;
	return NULL;
}

static bool
enum_ok(const char *enums, const char *v)
{
	size_t n = strlen(v);
	for (const char *p = enums; *p;) {
		size_t l = strcspn(p, "|");
		if (l == n && strncmp(p, v, n) == 0)
			return true;
		p += l + (p[l] == '|');
	}
	return false;
}

static void validate_schema(const char *schema, json_object *v, const char *where);

static void
validate_type(enum jtype t, const char *ref, const char *enums, json_object *v, const char *where)
{
	switch (t) {
	case J_STRING:
		if (!json_object_is_type(v, json_type_string))
			violate("%s must be a string", where);
		else if (enums && !enum_ok(enums, json_object_get_string(v)))
			violate("%s: '%s' is not one of %s", where, json_object_get_string(v), enums);
		break;
	case J_INT:
		if (!json_object_is_type(v, json_type_int))
			violate("%s must be an integer", where);
		break;
	case J_NUMBER:
		if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
			violate("%s must be a number", where);
		break;
	case J_BOOL:
		if (!json_object_is_type(v, json_type_boolean))
			violate("%s must be a boolean", where);
		break;
	case J_ARRAY:
		if (!json_object_is_type(v, json_type_array)) {
			violate("%s must be an array", where);
		} else if (ref) {
			for (size_t i = 0; i < json_object_array_length(v); i++)
				validate_schema(ref, json_object_array_get_idx(v, i), where);
		}
		break;
	case J_OBJECT:
		if (!json_object_is_type(v, json_type_object))
			violate("%s must be an object", where);
		break;
	case J_REF:
		validate_schema(ref, v, where);
		break;
	case J_ANY:
		break;
	}
}

static void
validate_schema(const char *schema, json_object *v, const char *where)
{
	const struct api_field *head = schema_row(schema);
	if (!head) {
		violate("%s: schema %s is not in the API document", where, schema);
		return;
	}
	char sub[256];
	if (head->type != J_OBJECT) {
		snprintf(sub, sizeof(sub), "%s (%s)", where, schema);
		validate_type(head->type, NULL, head->enums, v, sub);
		return;
	}
	if (!json_object_is_type(v, json_type_object)) {
		violate("%s: %s must be a JSON object", where, schema);
		return;
	}
	json_object_object_foreach(v, key, val) {
		const struct api_field *f = NULL;
		for (const struct api_field *g = head + 1; g->schema && strcmp(g->schema, schema) == 0; g++)
			if (strcmp(g->field, key) == 0)
				f = g;
		snprintf(sub, sizeof(sub), "%s.%s", where, key);
		if (!f) {
			violate("%s: field '%s' is not in %s of the API document", where, key, schema);
			return;
		}
		validate_type(f->type, f->ref, f->enums, val, sub);
	}
	for (const struct api_field *g = head + 1; g->schema && strcmp(g->schema, schema) == 0; g++)
		if (g->required && !json_object_object_get_ex(v, g->field, NULL))
			violate("%s: required field '%s' of %s missing", where, g->field, schema);
}

static bool
path_match(const char *tmpl, const char *path)
{
	while (*tmpl && *path) {
		if (*tmpl == '{') {
			tmpl = strchr(tmpl, '}');
			if (!tmpl)
				return false;
			tmpl++;
			size_t l = strcspn(path, "/");
			if (l == 0)
				return false;
			path += l;
			continue;
		}
		if (*tmpl++ != *path++)
			return false;
	}
	return !*tmpl && !*path;
}

/* Checks the request against the document; returns the parsed body. */
static json_object *
validate_request(const char *method, const char *path, const char *body, size_t blen)
{
	const struct api_endpoint *ep = NULL;
	bool path_known = false;
	for (const struct api_endpoint *e = endpoints; e->method; e++) {
		if (!path_match(e->path, path))
			continue;
		path_known = true;
		if (strcmp(e->method, method) == 0)
			ep = e;
	}
	if (!ep) {
		violate("%s %s is not an endpoint of the %s API document%s", method, path, vmm_name,
			path_known ? " (method not allowed)" : "");
		return NULL;
	}
	if (!blen) {
		if (ep->body && ep->body_required)
			violate("%s %s: the request body (%s) is required", method, path, ep->body);
		return NULL;
	}
	if (!ep->body) {
		violate("%s %s takes no request body", method, path);
		return NULL;
	}
	json_tokener *tok = json_tokener_new();
	json_object *j = json_tokener_parse_ex(tok, body, (int)blen);
	bool ok = j && json_tokener_get_error(tok) == json_tokener_success;
	json_tokener_free(tok);
	if (!ok) {
		json_object_put(j);
		violate("%s %s: body is not JSON", method, path);
		return NULL;
	}
	char where[160];
	snprintf(where, sizeof(where), "%s %s body", method, path);
	validate_schema(ep->body, j, where);
	return j;
}

/* ---- HTTP ---- */

static void
respond(int fd, int status, json_object *body, const char *text)
{
	const char *reason = status == 200 ? "OK" : status == 204 ? "No Content" : status == 404 ? "Not Found"
			     : status == 405 ? "Method Not Allowed" : status >= 500 ? "Internal Server Error"
			     : "Bad Request";
	const char *b = body ? json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) : text ? text : "";
	char hdr[256];
	int n = snprintf(hdr, sizeof(hdr), "HTTP/1.1 %d %s\r\nServer: fake-%s\r\nConnection: close\r\n"
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
			 status, reason, vmm_name, strlen(b));
	if (write(fd, hdr, (size_t)n) < 0 || write(fd, b, strlen(b)) < 0)
		return;
}

/* An error reply in the VMM's own format. */
static void
fault(int fd, int status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (is_fc) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "fault_message", json_object_new_string(msg));
		respond(fd, status, o, NULL);
		json_object_put(o);
	} else {
		respond(fd, status, NULL, msg);
	}
}

/* ---- simulated VMM state ---- */

static enum { ST_NONE, ST_CREATED, ST_RUNNING, ST_PAUSED } state;
static json_object *fc_cfg;    /* machine-config, boot-source, vsock, hotplug */
static json_object *ch_cfg;    /* VmConfig */
static bool fc_configured, fc_loaded;
static char vsock_path[108];
static int vsock_l = -1;
static uint64_t hp_total, hp_requested;
static const char *instance_id = "anonymous-instance";

static const char *
fc_state_name(void)
{
	return state == ST_RUNNING ? "Running" : state == ST_PAUSED ? "Paused" : "Not started";
}

static const char *
ch_state_name(void)
{
	return state == ST_RUNNING ? "Running" : state == ST_PAUSED ? "Paused" : "Created";
}

static int
listen_unix(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return -1;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	unlink(path);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 8) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static void
open_vsock(const char *path)
{
	if (vsock_l >= 0)
		close(vsock_l);
	snprintf(vsock_path, sizeof(vsock_path), "%s", path);
	vsock_l = listen_unix(path);
}

static const char *
jstr(json_object *o, const char *k)
{
	json_object *v;
	return o && json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : NULL;
}

static int64_t
jint(json_object *o, const char *k, int64_t dflt)
{
	json_object *v;
	return o && json_object_object_get_ex(o, k, &v) ? json_object_get_int64(v) : dflt;
}

static bool
file_exists(const char *p)
{
	struct stat st;
	return p && stat(p, &st) == 0;
}

/* Cloud Hypervisor's hot-plugged disks, by id ("" = free). */
static char fake_disks[16][64];

static int
fake_disk_find(const char *id)
{
	for (int i = 0; i < 16; i++)
		if (fake_disks[i][0] && strcmp(fake_disks[i], id) == 0)
			return i;
	return -1;
}

static bool
fake_disk_add(const char *id)
{
	for (int i = 0; i < 16; i++)
		if (!fake_disks[i][0]) {
			snprintf(fake_disks[i], sizeof(fake_disks[i]), "%s", id);
			return true;
		}
	return false;
}

static bool
write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return false;
	fputs(text, f);
	return fclose(f) == 0;
}

static bool
make_sparse(const char *path, uint64_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return false;
	bool ok = ftruncate(fd, (off_t)size) == 0 && pwrite(fd, "FAKEMEM", 7, 0) == 7;
	close(fd);
	return ok;
}

/* For the tests: which file a path opened (links resolved, /proc/PID/fd/N
 * included). */
static void
log_opened(const char *what, const char *id, const char *path)
{
	char real[PATH_MAX];
	if (!realpath(path, real))
		snprintf(real, sizeof(real), "(unresolved %s)", path);
	append_to("FAKE_VMM_LOG", "%s %s %s", what, id, real);
}

/* Firecracker's block devices: PUT /drives/{id} before boot only (it
 * opens path_on_host then, as is_read_only says), PATCH /drives/{id} after
 * boot only and only on a drive that exists (it reopens the new path with
 * the drive's is_read_only, which a PATCH cannot change).  A snapshot names
 * the drives; a load reopens their paths. */
static bool
fc_drive_opens(const char *path, bool ro)
{
	return path && access(path, ro ? R_OK : R_OK | W_OK) == 0;
}

static json_object *
fc_drives(void)
{
	json_object *d;
	if (!json_object_object_get_ex(fc_cfg, "/drives", &d)) {
		d = json_object_new_object();
		json_object_object_add(fc_cfg, "/drives", d);
	}
	return d;
}

static void
fc_drive_request(int fd, const char *m, const char *p, json_object *b, bool pre)
{
	const char *id = p + strlen("/drives/"), *path = jstr(b, "path_on_host");
	if (!jstr(b, "drive_id") || strcmp(jstr(b, "drive_id"), id) != 0) {
		fault(fd, 400, "The drive_id in the body does not match the one in the path.");
		return;
	}
	json_object *d = fc_drives(), *drive = NULL, *ro;
	json_object_object_get_ex(d, id, &drive);
	if (strcmp(m, "PUT") == 0) {
		if (!pre) {
			fault(fd, 400, "The requested operation is not supported after starting the microVM.");
			return;
		}
		bool rdonly = json_object_object_get_ex(b, "is_read_only", &ro) && json_object_get_boolean(ro);
		if (!path || !json_object_object_get_ex(b, "is_read_only", NULL)) {
			fault(fd, 400, "Unable to create the block device: path_on_host and is_read_only are required "
			      "for a virtio-block drive");
			return;
		}
		if (!fc_drive_opens(path, rdonly)) {
			fault(fd, 400, "Unable to create the block device BackingFile(Os { code: 2, kind: NotFound }, "
			      "\"%s\")", path);
			return;
		}
		json_object *o = json_object_new_object();
		json_object_object_add(o, "path_on_host", json_object_new_string(path));
		json_object_object_add(o, "is_read_only", json_object_new_boolean(rdonly));
		json_object_object_add(d, id, o);
		fc_configured = true;
		respond(fd, 204, NULL, NULL);
		return;
	}
	if (state == ST_NONE) {
		fault(fd, 400, "The requested operation is not supported before starting the microVM.");
		return;
	}
	if (!drive) {
		fault(fd, 400, "Unable to patch the block device: Invalid block device ID: %s", id);
		return;
	}
	bool rdonly = json_object_object_get_ex(drive, "is_read_only", &ro) && json_object_get_boolean(ro);
	if (path && !fc_drive_opens(path, rdonly)) {
		fault(fd, 400, "Unable to patch the block device: BackingFile(Os { code: 2, kind: NotFound }, \"%s\")",
		      path);
		return;
	}
	if (path)
		json_object_object_add(drive, "path_on_host", json_object_new_string(path));
	respond(fd, 204, NULL, NULL);
}

/* A snapshot load reopens every drive's path (relative to the working
 * directory, as Firecracker's File::open does). */
static const char *
fc_drives_missing(json_object *cfg)
{
	json_object *d;
	if (!json_object_object_get_ex(cfg, "/drives", &d))
		return NULL;
	json_object_object_foreach(d, id, drive) {
		json_object *ro;
		bool rdonly = json_object_object_get_ex(drive, "is_read_only", &ro) && json_object_get_boolean(ro);
		if (!fc_drive_opens(jstr(drive, "path_on_host"), rdonly))
			return id;
		log_opened("load opened drive", id, jstr(drive, "path_on_host"));
	}
	return NULL;
}

static void
fc_handle(int fd, const char *m, const char *p, json_object *b)
{
	bool pre = state == ST_NONE && !fc_loaded;
	if ((strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0) && strncmp(p, "/drives/", 8) == 0) {
		fc_drive_request(fd, m, p, b, pre);
		return;
	}
	if (strcmp(m, "GET") == 0 && strcmp(p, "/") == 0) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "app_name", json_object_new_string("Firecracker"));
		json_object_object_add(o, "id", json_object_new_string(instance_id));
		json_object_object_add(o, "state", json_object_new_string(fc_state_name()));
		json_object_object_add(o, "vmm_version", json_object_new_string(FC_FAKE_VERSION));
		respond(fd, 200, o, NULL);
		json_object_put(o);
	} else if (strcmp(m, "GET") == 0 && strcmp(p, "/vm/config") == 0) {
		/* FullVmConfiguration: the drives as configured (the rest is not
		 * simulated: the driver reads only the drives). */
		json_object *o = json_object_new_object(), *arr = json_object_new_array(), *d;
		if (json_object_object_get_ex(fc_cfg, "/drives", &d)) {
			json_object_object_foreach(d, id, drive) {
				json_object *e = json_object_new_object(), *ro;
				json_object_object_add(e, "drive_id", json_object_new_string(id));
				json_object_object_add(e, "path_on_host", json_object_new_string(jstr(drive, "path_on_host")));
				json_object_object_add(e, "is_root_device", json_object_new_boolean(false));
				json_object_object_add(e, "is_read_only",
						       json_object_new_boolean(json_object_object_get_ex(drive, "is_read_only", &ro) &&
									       json_object_get_boolean(ro)));
				json_object_array_add(arr, e);
			}
		}
		json_object_object_add(o, "drives", arr);
		respond(fd, 200, o, NULL);
		json_object_put(o);
	} else if (strcmp(m, "GET") == 0 && strcmp(p, "/version") == 0) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "firecracker_version",
				       json_object_new_string(getenv("FAKE_VMM_NO_HOTPLUG") ? "1.10.0" : FC_FAKE_VERSION));
		respond(fd, 200, o, NULL);
		json_object_put(o);
	} else if (strcmp(m, "PUT") == 0 && (strcmp(p, "/machine-config") == 0 || strcmp(p, "/boot-source") == 0 ||
					     strcmp(p, "/vsock") == 0 || strcmp(p, "/hotplug/memory") == 0)) {
		if (!pre) {
			fault(fd, 400, "The requested operation is not supported after starting the microVM.");
			return;
		}
		if (strcmp(p, "/hotplug/memory") == 0 && getenv("FAKE_VMM_NO_HOTPLUG")) {
			violate("PUT /hotplug/memory sent to a firecracker that reports 1.10.0");
			return;
		}
		if (strcmp(p, "/boot-source") == 0 && !file_exists(jstr(b, "kernel_image_path"))) {
			fault(fd, 400, "Invalid kernel path: No such file or directory (os error 2)");
			return;
		}
		if (strcmp(p, "/vsock") == 0)
			open_vsock(jstr(b, "uds_path"));
		if (strcmp(p, "/hotplug/memory") == 0)
			hp_total = (uint64_t)jint(b, "total_size_mib", 0);
		json_object_object_add(fc_cfg, p, json_object_get(b));
		fc_configured = true;
		respond(fd, 204, NULL, NULL);
	} else if (strcmp(m, "PUT") == 0 && strcmp(p, "/actions") == 0) {
		const char *a = jstr(b, "action_type");
		if (strcmp(a, "InstanceStart") == 0) {
			if (!pre) {
				fault(fd, 400, "The requested operation is not supported after starting the microVM.");
			} else if (!json_object_object_get_ex(fc_cfg, "/boot-source", NULL)) {
				fault(fd, 400, "Cannot start microvm without kernel configuration.");
			} else {
				state = ST_RUNNING;
				respond(fd, 204, NULL, NULL);
			}
		} else if (strcmp(a, "SendCtrlAltDel") == 0) {
			if (state != ST_RUNNING) {
				fault(fd, 400, "The requested operation is not supported before starting the microVM.");
				return;
			}
			respond(fd, 204, NULL, NULL);
			/* The guest reboots; with reboot=k Firecracker exits. */
			unlink(vsock_path);
			_exit(0);
		} else {
			fault(fd, 400, "Metrics system not initialized.");
		}
	} else if (strcmp(m, "PATCH") == 0 && strcmp(p, "/vm") == 0) {
		const char *s = jstr(b, "state");
		if (state == ST_NONE)
			fault(fd, 400, "The requested operation is not supported before starting the microVM.");
		else if (strcmp(s, "Paused") == 0 && state == ST_RUNNING)
			state = ST_PAUSED, respond(fd, 204, NULL, NULL);
		else if (strcmp(s, "Resumed") == 0 && state == ST_PAUSED)
			state = ST_RUNNING, respond(fd, 204, NULL, NULL);
		else
			fault(fd, 400, "Failed to %s microVM: the vCPUs are already %s.",
			      strcmp(s, "Paused") == 0 ? "pause" : "resume", fc_state_name());
	} else if (strcmp(m, "PUT") == 0 && strcmp(p, "/snapshot/create") == 0) {
		if (state != ST_PAUSED) {
			fault(fd, 400, "Cannot save microvm snapshot: the microVM is not paused (state %s).",
			      fc_state_name());
			return;
		}
		const char *sp = jstr(b, "snapshot_path"), *mp = jstr(b, "mem_file_path");
		json_object *mc = NULL;
		json_object_object_get_ex(fc_cfg, "/machine-config", &mc);
		json_object *snap = json_object_new_object();
		json_object_object_add(snap, "fake_vmm", json_object_new_string("firecracker-vmstate"));
		json_object_object_add(snap, "config", json_object_get(fc_cfg));
		json_object_object_add(snap, "vsock", json_object_new_string(vsock_path));
		json_object_object_add(snap, "hotplug_total", json_object_new_int64((int64_t)hp_total));
		json_object_object_add(snap, "hotplug_requested", json_object_new_int64((int64_t)hp_requested));
		bool ok = write_text(sp, json_object_to_json_string(snap)) &&
			  make_sparse(mp, (uint64_t)jint(mc, "mem_size_mib", 1) << 20);
		json_object_put(snap);
		if (!ok)
			fault(fd, 400, "Cannot save microvm snapshot: cannot write %s or %s", sp, mp);
		else
			respond(fd, 204, NULL, NULL);
	} else if (strcmp(m, "PUT") == 0 && strcmp(p, "/snapshot/load") == 0) {
		if (!pre || fc_configured) {
			fault(fd, 400, "Loading a microVM snapshot not allowed after configuring boot-specific resources.");
			return;
		}
		json_object *be = NULL;
		json_object_object_get_ex(b, "mem_backend", &be);
		const char *mp = be ? jstr(be, "backend_path") : jstr(b, "mem_file_path");
		if (be && jstr(b, "mem_file_path")) {
			fault(fd, 400, "too many fields: either `mem_backend` or `mem_file_path` exclusively.");
			return;
		}
		json_object *snap = json_object_from_file(jstr(b, "snapshot_path"));
		if (!snap || !jstr(snap, "fake_vmm") || !file_exists(mp)) {
			json_object_put(snap);
			fault(fd, 400, "Load snapshot error: Failed to restore from snapshot: cannot open %s or %s",
			      jstr(b, "snapshot_path"), mp ? mp : "(no memory file)");
			return;
		}
		json_object *cfg = NULL, *vo = NULL;
		json_object_object_get_ex(snap, "config", &cfg);
		const char *gone = fc_drives_missing(cfg);
		if (gone) {
			fault(fd, 400, "Load snapshot error: Failed to restore from snapshot: cannot open the backing "
			      "file of drive %s", gone);
			json_object_put(snap);
			return;
		}
		json_object_put(fc_cfg);
		fc_cfg = json_object_get(cfg);
		hp_total = (uint64_t)jint(snap, "hotplug_total", 0);
		hp_requested = (uint64_t)jint(snap, "hotplug_requested", 0);
		const char *vs = json_object_object_get_ex(b, "vsock_override", &vo) ? jstr(vo, "uds_path")
										     : jstr(snap, "vsock");
		open_vsock(vs);
		json_object_put(snap);
		fc_loaded = true;
		json_object *rv;
		state = json_object_object_get_ex(b, "resume_vm", &rv) && json_object_get_boolean(rv) ? ST_RUNNING
													: ST_PAUSED;
		respond(fd, 204, NULL, NULL);
	} else if (strcmp(m, "PATCH") == 0 && strcmp(p, "/hotplug/memory") == 0) {
		uint64_t want = (uint64_t)jint(b, "requested_size_mib", 0);
		if (state == ST_NONE)
			fault(fd, 400, "The requested operation is not supported before starting the microVM.");
		else if (!hp_total)
			fault(fd, 400, "Memory hotplug device is not configured.");
		else if (want > hp_total)
			fault(fd, 400, "Requested size %llu MiB exceeds the hotpluggable region of %llu MiB.",
			      (unsigned long long)want, (unsigned long long)hp_total);
		else
			hp_requested = want, respond(fd, 204, NULL, NULL);
	} else if (strcmp(m, "GET") == 0 && strcmp(p, "/hotplug/memory") == 0) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "total_size_mib", json_object_new_int64((int64_t)hp_total));
		json_object_object_add(o, "requested_size_mib", json_object_new_int64((int64_t)hp_requested));
		json_object_object_add(o, "plugged_size_mib", json_object_new_int64((int64_t)hp_requested));
		respond(fd, 200, o, NULL);
		json_object_put(o);
	} else {
		/* In the API document but not simulated: the driver has no business
		 * calling it. */
		violate("%s %s is in the API document but not used by the driver (unexpected call)", m, p);
	}
}

static bool
url_path(const char *url, char *out, size_t max)
{
	if (!url || strncmp(url, "file://", 7) != 0)
		return false;
	snprintf(out, max, "%s", url + 7);
	return true;
}

static void
ch_handle(int fd, const char *m, const char *p, json_object *b)
{
	const char *ep = p + strlen("/api/v1/");
	if (strcmp(ep, "vmm.ping") == 0) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "version", json_object_new_string(CH_FAKE_VERSION));
		json_object_object_add(o, "pid", json_object_new_int64(getpid()));
		respond(fd, 200, o, NULL);
		json_object_put(o);
	} else if (strcmp(ep, "vmm.shutdown") == 0) {
		respond(fd, 204, NULL, NULL);
		unlink(vsock_path);
		_exit(0);
	} else if (strcmp(ep, "vm.create") == 0) {
		if (ch_cfg) {
			fault(fd, 500, "Error from API: The VM could not be created: VM is already created");
			return;
		}
		json_object *pl;
		if (!json_object_object_get_ex(b, "payload", &pl) || !file_exists(jstr(pl, "kernel"))) {
			fault(fd, 500, "Error from API: The VM could not be created: invalid payload (kernel not found)");
			return;
		}
		ch_cfg = json_object_get(b);
		state = ST_CREATED;
		respond(fd, 204, NULL, NULL);
	} else if (strcmp(ep, "vm.info") == 0) {
		if (!ch_cfg) {
			fault(fd, 404, "Error from API: The VM info is not available: VM is not created");
			return;
		}
		json_object *o = json_object_new_object();
		json_object_object_add(o, "config", json_object_get(ch_cfg));
		json_object_object_add(o, "state", json_object_new_string(ch_state_name()));
		respond(fd, 200, o, NULL);
		json_object_put(o);
	} else if (strcmp(ep, "vm.boot") == 0) {
		json_object *vs, *sock;
		if (!ch_cfg)
			fault(fd, 404, "Error from API: The VM could not boot: VM is not created");
		else if (state != ST_CREATED)
			fault(fd, 405, "Error from API: The VM could not boot: VM is already booted");
		else {
			if (json_object_object_get_ex(ch_cfg, "vsock", &vs) && json_object_object_get_ex(vs, "socket", &sock))
				open_vsock(json_object_get_string(sock));
			state = ST_RUNNING;
			respond(fd, 204, NULL, NULL);
		}
	} else if (strcmp(ep, "vm.pause") == 0 || strcmp(ep, "vm.resume") == 0) {
		bool pause = strcmp(ep, "vm.pause") == 0;
		if (!ch_cfg)
			fault(fd, 404, "Error from API: The VM could not be %s: VM is not created",
			      pause ? "paused" : "resumed");
		else if (pause ? state != ST_RUNNING : state != ST_PAUSED)
			fault(fd, 405, "Error from API: The VM could not be %s: invalid state transition from %s",
			      pause ? "paused" : "resumed", ch_state_name());
		else
			state = pause ? ST_PAUSED : ST_RUNNING, respond(fd, 204, NULL, NULL);
	} else if (strcmp(ep, "vm.snapshot") == 0) {
		char dir[4096], path[4200];
		if (!ch_cfg)
			fault(fd, 404, "Error from API: The VM could not be snapshotted: VM is not created");
		else if (state != ST_PAUSED)
			fault(fd, 405, "Error from API: The VM could not be snapshotted: VM is not paused");
		else if (!url_path(jstr(b, "destination_url"), dir, sizeof(dir)))
			fault(fd, 500, "Error from API: The VM could not be snapshotted: invalid destination URL");
		else {
			json_object *mem;
			json_object_object_get_ex(ch_cfg, "memory", &mem);
			snprintf(path, sizeof(path), "%s/config.json", dir);
			bool ok = write_text(path, json_object_to_json_string(ch_cfg));
			snprintf(path, sizeof(path), "%s/state.json", dir);
			ok = ok && write_text(path, "{\"fake_vmm\":\"cloud-hypervisor-state\"}");
			snprintf(path, sizeof(path), "%s/memory-ranges", dir);
			ok = ok && make_sparse(path, (uint64_t)jint(mem, "size", 1 << 20));
			if (ok)
				respond(fd, 204, NULL, NULL);
			else
				fault(fd, 500, "Error from API: The VM could not be snapshotted: cannot write %s", dir);
		}
	} else if (strcmp(ep, "vm.restore") == 0) {
		char dir[4096], path[4200];
		if (ch_cfg) {
			fault(fd, 404, "Error from API: The VM could not be restored: VM is already created");
			return;
		}
		if (!url_path(jstr(b, "source_url"), dir, sizeof(dir))) {
			fault(fd, 400, "Error from API: The VM could not be restored: invalid source URL");
			return;
		}
		snprintf(path, sizeof(path), "%s/config.json", dir);
		json_object *cfg = json_object_from_file(path);
		snprintf(path, sizeof(path), "%s/memory-ranges", dir);
		if (!cfg || !file_exists(path)) {
			json_object_put(cfg);
			fault(fd, 400, "Error from API: The VM could not be restored: cannot read snapshot in %s", dir);
			return;
		}
		/* Like Cloud Hypervisor, the restored VM's disks are opened by the
		 * paths its config names. */
		json_object *disks = NULL;
		size_t nd = json_object_object_get_ex(cfg, "disks", &disks) &&
				    json_object_is_type(disks, json_type_array)
			    ? json_object_array_length(disks)
			    : 0;
		for (size_t i = 0; i < nd; i++) {
			json_object *d = json_object_array_get_idx(disks, i), *ro;
			bool rdonly = json_object_object_get_ex(d, "readonly", &ro) && json_object_get_boolean(ro);
			const char *dp = jstr(d, "path");
			if (!dp || access(dp, rdonly ? R_OK : R_OK | W_OK) != 0) {
				fault(fd, 500, "Error from API: The VM could not be restored: cannot open disk %s",
				      dp ? dp : "(no path)");
				json_object_put(cfg);
				memset(fake_disks, 0, sizeof(fake_disks));
				return;
			}
			log_opened("restore opened disk", jstr(d, "id") ? jstr(d, "id") : "_disk", dp);
			fake_disk_add(jstr(d, "id") ? jstr(d, "id") : "_disk");
		}
		ch_cfg = cfg;
		json_object *vs, *sock, *rs;
		if (json_object_object_get_ex(ch_cfg, "vsock", &vs) && json_object_object_get_ex(vs, "socket", &sock))
			open_vsock(json_object_get_string(sock));
		state = json_object_object_get_ex(b, "resume", &rs) && json_object_get_boolean(rs) ? ST_RUNNING
												     : ST_PAUSED;
		respond(fd, 204, NULL, NULL);
	} else if (strcmp(ep, "vm.resize") == 0) {
		json_object *cpus = NULL, *mem = NULL;
		if (!ch_cfg || state == ST_CREATED) {
			fault(fd, 404, "Error from API: The VM could not be resized: VM is not running");
			return;
		}
		json_object_object_get_ex(ch_cfg, "cpus", &cpus);
		json_object_object_get_ex(ch_cfg, "memory", &mem);
		int64_t dv = jint(b, "desired_vcpus", 0), dr = jint(b, "desired_ram", 0);
		if (dv && dv > jint(cpus, "max_vcpus", 1))
			fault(fd, 500, "Error from API: The VM could not be resized: Cannot hotplug more vCPUs than "
			      "max_vcpus (%lld > %lld)", (long long)dv, (long long)jint(cpus, "max_vcpus", 1));
		else if (dr && dr > jint(mem, "size", 0) + jint(mem, "hotplug_size", 0))
			fault(fd, 500, "Error from API: The VM could not be resized: Requested memory exceeds the "
			      "hotplug size");
		else {
			if (dv)
				json_object_object_add(cpus, "boot_vcpus", json_object_new_int64(dv));
			if (dr)
				json_object_object_add(mem, "hotplugged_size",
						       json_object_new_int64(dr - jint(mem, "size", 0)));
			respond(fd, 204, NULL, NULL);
		}
	} else if (strcmp(ep, "vm.add-disk") == 0) {
		/* Like Cloud Hypervisor: the path is opened (a missing one is a
		 * 500), ids are unique; a running VM answers the PCI address. */
		const char *id = jstr(b, "id"), *path = jstr(b, "path");
		if (!ch_cfg || state == ST_CREATED)
			fault(fd, 404, "Error from API: The disk could not be added to the VM: VM is not running");
		else if (!path || !file_exists(path))
			fault(fd, 500, "Error from API: The disk could not be added to the VM: cannot open %s",
			      path ? path : "(no path)");
		else if (id && fake_disk_find(id) >= 0)
			fault(fd, 409, "Error from API: The disk could not be added to the VM: identifier %s is in use", id);
		else if (!fake_disk_add(id ? id : "_disk"))
			fault(fd, 500, "Error from API: The disk could not be added to the VM: too many disks");
		else
		{
			/* The config (vm.info, a snapshot's config.json) lists it. */
			json_object *disks, *dc = json_object_get(b);
			if (!json_object_object_get_ex(ch_cfg, "disks", &disks) ||
			    !json_object_is_type(disks, json_type_array)) {
				disks = json_object_new_array();
				json_object_object_add(ch_cfg, "disks", disks);
			}
			if (!id)
				json_object_object_add(dc, "id", json_object_new_string("_disk"));
			json_object_array_add(disks, dc);
			json_object *o = json_object_new_object();
			json_object_object_add(o, "id", json_object_new_string(id ? id : "_disk"));
			json_object_object_add(o, "bdf", json_object_new_string("0000:00:06.0"));
			respond(fd, 200, o, NULL);
			json_object_put(o);
		}
	} else if (strcmp(ep, "vm.remove-device") == 0) {
		const char *id = jstr(b, "id");
		int i = id ? fake_disk_find(id) : -1;
		if (!ch_cfg || i < 0)
			fault(fd, 404, "Error from API: The device could not be removed from the VM: no device %s",
			      id ? id : "(no id)");
		else {
			fake_disks[i][0] = '\0';
			json_object *disks;
			if (json_object_object_get_ex(ch_cfg, "disks", &disks) && json_object_is_type(disks, json_type_array))
				for (size_t k = 0; k < json_object_array_length(disks); k++) {
					const char *kid = jstr(json_object_array_get_idx(disks, k), "id");
					if (kid && strcmp(kid, id) == 0) {
						json_object_array_del_idx(disks, k, 1);
						break;
					}
				}
			respond(fd, 204, NULL, NULL);
		}
	} else {
		violate("%s %s is in the API document but not used by the driver (unexpected call)", m, p);
	}
}

/* Reads one request (headers + Content-Length body); false on EOF/error. */
static bool
read_request(int fd, char *buf, size_t max, char **body, size_t *blen)
{
	size_t n = 0;
	char *end = NULL;
	while (!(end = strstr(buf, "\r\n\r\n"))) {
		if (n + 1 >= max)
			return false;
		ssize_t r = read(fd, buf + n, max - n - 1);
		if (r <= 0)
			return false;
		n += (size_t)r;
		buf[n] = '\0';
	}
	size_t hl = (size_t)(end + 4 - buf);
	size_t cl = 0;
	for (char *h = buf; h < end; h = strstr(h, "\r\n") + 2)
		if (strncasecmp(h, "Content-Length:", 15) == 0)
			cl = strtoul(h + 15, NULL, 10);
	if (hl + cl + 1 > max)
		return false;
	while (n < hl + cl) {
		ssize_t r = read(fd, buf + n, hl + cl - n);
		if (r <= 0)
			return false;
		n += (size_t)r;
	}
	buf[hl + cl] = '\0';
	*body = buf + hl;
	*blen = cl;
	return true;
}

static void
serve_api(int fd)
{
	static char buf[1 << 20];
	buf[0] = '\0';
	char *body;
	size_t blen;
	if (!read_request(fd, buf, sizeof(buf), &body, &blen))
		return;
	char method[16], path[512];
	if (sscanf(buf, "%15s %511s HTTP/1.1", method, path) != 2) {
		violation[0] = '\0';
		violate("malformed request line");
		append_to("FAKE_VMM_VIOLATIONS", "%s: %s", vmm_name, violation);
		respond(fd, 400, NULL, "malformed request");
		return;
	}
	append_to("FAKE_VMM_LOG", "%s %s %.*s", method, path, (int)blen, body);
	char key[600];
	snprintf(key, sizeof(key), "%s %s", method, path);
	const char *die = getenv("FAKE_VMM_DIE_ON");
	if (die && strcmp(die, key) == 0) {
		/* Dies mid-request: the driver sees the connection drop unanswered. */
		unlink(vsock_path);
		_exit(3);
	}
	const char *cut = getenv("FAKE_VMM_CUT_ON");
	if (cut && strcmp(cut, key) == 0) {
		/* Dies halfway through its answer. */
		static const char half[] = "HTTP/1.1 204 No Con";
		if (write(fd, half, sizeof(half) - 1) < 0)
			_exit(4);
		unlink(vsock_path);
		_exit(4);
	}
	violation[0] = '\0';
	json_object *b = validate_request(method, path, body, blen);
	const char *fail = getenv("FAKE_VMM_FAIL_ON");
	if (!violation[0] && fail && strcmp(fail, key) == 0)
		fault(fd, 400, "Injected failure for %s", key);
	else if (!violation[0])
		(is_fc ? fc_handle : ch_handle)(fd, method, path, b);
	if (violation[0]) {
		append_to("FAKE_VMM_VIOLATIONS", "%s: %s", vmm_name, violation);
		fault(fd, 400, "fake %s: %s", vmm_name, violation);
	}
	json_object_put(b);
}

/* The vsock side: "CONNECT <port>\n" -> "OK <hostport>\n", then echo. */
static void
serve_vsock(int fd)
{
	char line[64];
	size_t n = 0;
	while (n + 1 < sizeof(line)) {
		if (read(fd, line + n, 1) != 1)
			return;
		if (line[n] == '\n')
			break;
		n++;
	}
	line[n] = '\0';
	unsigned port;
	if (state != ST_RUNNING || sscanf(line, "CONNECT %u", &port) != 1 || port != 1024)
		return; /* like the real VMMs: no listener in the guest -> reset */
	const char ok[] = "OK 1073741824\n";
	if (write(fd, ok, sizeof(ok) - 1) < 0)
		return;
	if (fork() == 0) {
		char b[4096];
		ssize_t r;
		while ((r = read(fd, b, sizeof(b))) > 0)
			if (write(fd, b, (size_t)r) != r)
				break;
		_exit(0);
	}
}

int
main(int argc, char **argv)
{
	const char *sock = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--version") == 0) {
			const char *k = getenv("FAKE_VMM_KIND");
			if (k && strcmp(k, "ch") == 0)
				printf("cloud-hypervisor %s\n", CH_FAKE_VERSION);
			else
				printf("Firecracker v%s\n", getenv("FAKE_VMM_NO_HOTPLUG") ? "1.10.0" : FC_FAKE_VERSION);
			return 0;
		} else if (strcmp(argv[i], "--api-sock") == 0 && i + 1 < argc) {
			is_fc = true;
			sock = argv[++i];
		} else if (strcmp(argv[i], "--id") == 0 && i + 1 < argc) {
			instance_id = argv[++i];
		} else if (strcmp(argv[i], "--api-socket") == 0 && i + 1 < argc &&
			   strncmp(argv[i + 1], "path=", 5) == 0) {
			is_fc = false;
			sock = argv[++i] + 5;
		} else {
			fprintf(stderr, "fake_vmm: unexpected argument '%s'\n", argv[i]);
			append_to("FAKE_VMM_VIOLATIONS", "fake_vmm: unexpected command-line argument '%s'", argv[i]);
			return 2;
		}
	}
	if (!sock) {
		fprintf(stderr, "usage: fake_vmm --api-sock PATH | --api-socket path=PATH\n");
		return 2;
	}
	fields = is_fc ? fc_fields : ch_fields;
	endpoints = is_fc ? fc_endpoints : ch_endpoints;
	vmm_name = is_fc ? "firecracker" : "cloud-hypervisor";
	fc_cfg = json_object_new_object();
	if (getenv("FAKE_VMM_IGNORE_TERM"))
		signal(SIGTERM, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGCHLD, SIG_IGN);
	int api_l = listen_unix(sock);
	if (api_l < 0) {
		fprintf(stderr, "fake_vmm: cannot listen on %s: %s\n", sock, strerror(errno));
		return 1;
	}
	fprintf(stderr, "fake %s (API %s) listening on %s\n", vmm_name, is_fc ? FC_API_VERSION : CH_API_VERSION,
		sock);
	for (;;) {
		struct pollfd p[2] = { { .fd = api_l, .events = POLLIN }, { .fd = vsock_l, .events = POLLIN } };
		if (poll(p, vsock_l >= 0 ? 2 : 1, -1) < 0)
			continue;
		for (int i = 0; i < 2; i++) {
			if (!(p[i].revents & POLLIN))
				continue;
			int c = accept4(p[i].fd, NULL, NULL, SOCK_CLOEXEC);
			if (c < 0)
				continue;
			if (i == 0)
				serve_api(c);
			else
				serve_vsock(c);
			close(c);
		}
	}
}
