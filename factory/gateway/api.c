/* E2B's control plane (spec/openapi.yml), JSON over HTTP: create, list,
 * get, kill, pause, connect/resume, timeout.  Every route needs the
 * X-API-KEY of a line of the keys file; a key sees its own sandboxes and
 * nothing else (another key's sandbox is "not found").  Errors are E2B's
 * {"code": <number>, "message": ...}.  Routes are data: the table at the
 * bottom, including the E2B routes not served, which answer 501 naming
 * themselves. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw.h"
#include "log.h"

#define MAX_ARGS 2
#define LIST_LIMIT_MAX 100

struct route {
	const char *method;          /* NULL: any */
	const char *pattern;         /* "/sandboxes/:id/pause"; ":x" takes one segment */
	void (*fn)(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128]);
	const char *not_served;      /* fn NULL: what it is */
};

/* ---- small helpers ---- */

void
gw_iso_time(int64_t ms, char *out, size_t n)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	char base[32];
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, n, "%s.%03dZ", base, (int)(ms % 1000));
}

/* RFC 3339 (what the SDK sends for startedAfter): -1 when it is not. */
static int64_t
parse_time(const char *s)
{
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		return -1;
	int64_t ms = 0;
	if (*p == '.') {
		int digits = 0;
		for (p++; isdigit((unsigned char)*p); p++, digits++)
			if (digits < 3)
				ms = ms * 10 + (*p - '0');
		for (; digits < 3; digits++)
			ms *= 10;
	}
	int64_t off = 0;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if ((*p == '+' || *p == '-') && isdigit((unsigned char)p[1]) && isdigit((unsigned char)p[2]) &&
		   p[3] == ':' && isdigit((unsigned char)p[4]) && isdigit((unsigned char)p[5])) {
		off = ((p[1] - '0') * 10 + (p[2] - '0')) * 3600 + ((p[4] - '0') * 10 + (p[5] - '0')) * 60;
		off = *p == '-' ? -off : off;
		p += 6;
	} else {
		return -1;
	}
	if (*p)
		return -1;
	return ((int64_t)timegm(&tm) - off) * 1000 + ms;
}

static json_object *
body_json(struct gw_req *r, bool required)
{
	size_t len;
	const char *b = gw_req_body(r, &len);
	if (len == 0 && !required)
		return json_object_new_object();
	json_tokener *tok = json_tokener_new();
	if (!tok) {
		gw_reply_error(r, 500, "out of memory");
		return NULL;
	}
	json_object *j = json_tokener_parse_ex(tok, b, (int)len);
	enum json_tokener_error e = json_tokener_get_error(tok);
	if (e == json_tokener_continue)
		e = json_tokener_error_parse_eof;
	else if (e == json_tokener_success && json_tokener_get_parse_end(tok) != len)
		e = json_tokener_error_parse_unexpected;
	json_tokener_free(tok);
	if (e != json_tokener_success || !json_object_is_type(j, json_type_object)) {
		if (e != json_tokener_success)
			gw_reply_error(r, 400, "the request body is not JSON: %s", json_tokener_error_desc(e));
		else
			gw_reply_error(r, 400, "the request body is not a JSON object");
		if (j)
			json_object_put(j);
		return NULL;
	}
	return j;
}

/* An optional whole number >= 0: 1 given, 0 absent, -1 refused (replied). */
static int
opt_uint(struct gw_req *r, json_object *o, const char *k, int64_t *out)
{
	json_object *v;
	if (!json_object_object_get_ex(o, k, &v) || json_object_is_type(v, json_type_null))
		return 0;
	if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0) {
		gw_reply_error(r, 400, "%s must be a whole number of seconds, 0 or more", k);
		return -1;
	}
	*out = json_object_get_int64(v);
	return 1;
}

/* metadata and envVars: objects of strings, bounded. */
static json_object *
string_map(struct gw_req *r, json_object *o, const char *k, size_t max_entries, size_t max_bytes, bool env)
{
	json_object *v;
	if (!json_object_object_get_ex(o, k, &v) || json_object_is_type(v, json_type_null))
		return json_object_new_object();
	if (!json_object_is_type(v, json_type_object)) {
		gw_reply_error(r, 400, "%s must be an object of strings", k);
		return NULL;
	}
	size_t n = 0, bytes = 0;
	json_object_object_foreach(v, key, val) {
		if (!json_object_is_type(val, json_type_string)) {
			gw_reply_error(r, 400, "%s.%.60s must be a string", k, key);
			return NULL;
		}
		if (env && (!*key || strchr(key, '='))) {
			gw_reply_error(r, 400, "%s: '%.60s' is not an environment variable name", k, key);
			return NULL;
		}
		n++;
		bytes += strlen(key) + (size_t)json_object_get_string_len(val) + 2;
	}
	if (n > max_entries || bytes > max_bytes) {
		gw_reply_error(r, 400, "%s has %zu entries and %zu bytes: at most %zu entries and %zu bytes", k, n,
			       bytes, max_entries, max_bytes);
		return NULL;
	}
	return json_object_get(v);
}

static bool
template_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > GW_TEMPLATE_MAX)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("._-", *s))
			return false;
	return true;
}

const char *
gw_json_str(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_string)
		? json_object_get_string(v) : NULL;
}

/* ---- what a sandbox looks like ---- */

static json_object *
sandbox_json(const struct gw_sandbox *sb)
{
	json_object *j = json_object_new_object();
	json_object_object_add(j, "templateID", json_object_new_string(sb->template_id));
	json_object_object_add(j, "sandboxID", json_object_new_string(sb->id));
	json_object_object_add(j, "clientID", json_object_new_string("vmfactory"));
	json_object_object_add(j, "envdVersion", json_object_new_string(GW_ENVD_VERSION));
	json_object_object_add(j, "envdAccessToken", json_object_new_string(sb->token));
	json_object_object_add(j, "trafficAccessToken", NULL);
	json_object_object_add(j, "domain", NULL);
	return j;
}

static json_object *
listed_json(const struct gw_sandbox *sb)
{
	char t[40];
	json_object *j = json_object_new_object();
	json_object_object_add(j, "templateID", json_object_new_string(sb->template_id));
	json_object_object_add(j, "sandboxID", json_object_new_string(sb->id));
	json_object_object_add(j, "clientID", json_object_new_string("vmfactory"));
	gw_iso_time(sb->started_ms, t, sizeof(t));
	json_object_object_add(j, "startedAt", json_object_new_string(t));
	gw_iso_time(sb->end_ms, t, sizeof(t));
	json_object_object_add(j, "endAt", json_object_new_string(t));
	json_object_object_add(j, "cpuCount", json_object_new_int((int)sb->vcpus));
	json_object_object_add(j, "memoryMB", json_object_new_int((int)sb->memory_mib));
	json_object_object_add(j, "diskSizeMB", json_object_new_int(0));
	json_object_object_add(j, "metadata", json_object_get(sb->metadata));
	json_object_object_add(j, "state", json_object_new_string(sb->state == GW_SB_PAUSED ? "paused" : "running"));
	json_object_object_add(j, "envdVersion", json_object_new_string(GW_ENVD_VERSION));
	json_object_object_add(j, "volumeMounts", json_object_new_array());
	return j;
}

static json_object *
detail_json(const struct gw_sandbox *sb)
{
	json_object *j = listed_json(sb), *l = json_object_new_object();
	json_object_object_add(j, "envdAccessToken", json_object_new_string(sb->token));
	json_object_object_add(j, "domain", NULL);
	json_object_object_add(l, "autoResume", json_object_new_boolean(false));
	json_object_object_add(l, "onTimeout", json_object_new_string(sb->auto_pause ? "pause" : "kill"));
	json_object_object_add(j, "lifecycle", l);
	return j;
}

/* ---- create ---- */

struct create_ctx {
	struct gw_req *r;
	struct gw_sandbox *sb;
	unsigned timeout_s;
};

static void
create_saved(struct gw *gw, int rc, void *arg)
{
	(void)rc;   /* logged by the writer; the sandbox exists either way */
	struct create_ctx *c = arg;
	gw_reply_json(c->r, 201, sandbox_json(c->sb));
	gw_sb_unref(gw, c->sb);
	free(c);
}

static void
created(struct gw *gw, struct gw_sandbox *sb, int rc, const struct vmf_error *err, void *arg)
{
	struct create_ctx *c = arg;
	if (rc < 0) {
		gw_sb_remove(gw, sb);
		gw_reply_error(c->r, gw_status_for_errno(err->code), "cannot create a sandbox of template %s: %s",
			       sb->template_id, err->msg);
		free(c);
		return;
	}
	sb->started_ms = gw_now_ms();
	gw_lease_set(gw, sb, c->timeout_s);
	log_info("sandbox %s (team %s, template %s) is VM %s", sb->id, sb->team, sb->template_id, sb->vm_id);
	/* Answered once it is on disk: a sandbox its client knows of is
	 * never forgotten by a restarted gateway. */
	c->sb = sb;
	gw_sb_ref(sb);
	gw_state_save(gw, create_saved, c);
}

static void
create(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	(void)args;
	struct gw_key *key = gw_req_key(r);
	json_object *b = body_json(r, true), *v;
	if (!b)
		return;
	const char *tpl = json_object_object_get_ex(b, "templateID", &v) && json_object_is_type(v, json_type_string)
		? json_object_get_string(v) : NULL;
	int64_t timeout = 0;
	json_object *meta = NULL, *env = NULL;
	if (!tpl) {
		gw_reply_error(r, 400, "templateID (a string) is required");
		goto out;
	}
	if (!template_name_ok(tpl)) {
		gw_reply_error(r, 400, "templateID '%.80s' is not a template name (letters, digits, '.', '_', '-')", tpl);
		goto out;
	}
	if (opt_uint(r, b, "timeout", &timeout) < 0)
		goto out;
	/* What a sandbox here cannot have is refused, never ignored. */
	if (json_object_object_get_ex(b, "allow_internet_access", &v) && json_object_get_boolean(v)) {
		gw_reply_error(r, 400, "allow_internet_access: sandboxes of this gateway have no network access");
		goto out;
	}
	static const char *const unserved[] = { "network", "mcp", "iam", "volumeMounts" };
	for (size_t i = 0; i < sizeof(unserved) / sizeof(unserved[0]); i++)
		if (json_object_object_get_ex(b, unserved[i], &v) && !json_object_is_type(v, json_type_null)) {
			gw_reply_error(r, 400, "%s is not served by this vmfactory gateway (docs/e2b.md)", unserved[i]);
			goto out;
		}
	json_object *ar, *en;
	if (json_object_object_get_ex(b, "autoResume", &ar) && json_object_object_get_ex(ar, "enabled", &en) &&
	    json_object_get_boolean(en)) {
		gw_reply_error(r, 400, "autoResume is not served by this vmfactory gateway: resume a paused sandbox "
			       "with Sandbox.connect");
		goto out;
	}
	if (json_object_object_get_ex(b, "autoPauseMemory", &v) && json_object_is_type(v, json_type_boolean) &&
	    !json_object_get_boolean(v)) {
		gw_reply_error(r, 400, "autoPauseMemory false (a filesystem-only pause) is not served: a pause keeps "
			       "the memory");
		goto out;
	}
	if (!(meta = string_map(r, b, "metadata", GW_META_MAX_ENTRIES, GW_META_MAX_BYTES, false)) ||
	    !(env = string_map(r, b, "envVars", GW_ENV_MAX_ENTRIES, GW_ENV_MAX_BYTES, true)))
		goto out;
	if (!gw_key_may_use(key, tpl)) {
		gw_reply_error(r, 403, "template '%s' is not one this API key (team %s) may use", tpl, key->team);
		goto out;
	}
	if (gw->n_sandboxes >= gw->o.max_sandboxes) {
		gw_reply_error(r, 429, "this gateway runs %u sandboxes, its limit: kill one first", gw->n_sandboxes);
		goto out;
	}
	if (key->sandboxes >= gw->o.max_sandboxes_per_key) {
		gw_reply_error(r, 429, "team %s has %u sandboxes on this key, its limit: kill one first", key->team,
			       key->sandboxes);
		goto out;
	}
	struct gw_sandbox *sb = gw_sb_new(gw, key);
	struct create_ctx *c = calloc(1, sizeof(*c));
	if (!sb || !c) {
		if (sb)
			gw_sb_remove(gw, sb);
		free(c);
		gw_reply_error(r, 500, "out of memory");
		goto out;
	}
	sb->state = GW_SB_CREATING;
	snprintf(sb->template_id, sizeof(sb->template_id), "%s", tpl);
	sb->metadata = meta;
	sb->env_vars = env;
	meta = env = NULL;
	sb->auto_pause = json_object_object_get_ex(b, "autoPause", &v) && json_object_get_boolean(v);
	c->r = r;
	c->timeout_s = gw_lease_timeout(gw, timeout);
	if (gw_vm_run_ttl(gw, sb, GW_VM_CREATE, gw_lease_daemon_ttl(c->timeout_s), created, c) < 0) {
		free(c);
		gw_sb_remove(gw, sb);
		gw_reply_error(r, 503, "too many requests wait in the gateway; retry shortly");
		goto out;
	}
	gw_defer(r);
out:
	if (meta)
		json_object_put(meta);
	if (env)
		json_object_put(env);
	json_object_put(b);
}

/* ---- one sandbox ---- */

static struct gw_sandbox *
find_or_404(struct gw *gw, struct gw_req *r, const char *id)
{
	struct gw_sandbox *sb = gw_valid_sandbox_id(id) ? gw_sb_find(gw, id, gw_req_key(r)) : NULL;
	if (!sb)
		gw_reply_error(r, 404, "sandbox %.40s not found", id);
	return sb;
}

static void
get_one(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	struct gw_sandbox *sb = find_or_404(gw, r, args[0]);
	if (sb)
		gw_reply_json(r, 200, detail_json(sb));
}

static void
killed(struct gw *gw, struct gw_sandbox *sb, int rc, const struct vmf_error *err, void *arg)
{
	struct gw_req *r = arg;
	if (rc < 0) {
		gw_reply_error(r, rc == -ENOENT ? 404 : gw_status_for_errno(err->code), "cannot kill sandbox %s: %s",
			       sb->id, err->msg);
		return;
	}
	log_info("sandbox %s (team %s) killed", sb->id, sb->team);
	gw_state_save(gw, NULL, NULL);
	gw_reply(r, 204, NULL, "", 0);
}

static void
kill_one(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	struct gw_sandbox *sb = find_or_404(gw, r, args[0]);
	if (!sb)
		return;
	if (gw_vm_run(gw, sb, GW_VM_KILL, killed, r) < 0)
		gw_reply_error(r, 503, "too many requests wait in the gateway; retry shortly");
	else
		gw_defer(r);
}

static void
paused(struct gw *gw, struct gw_sandbox *sb, int rc, const struct vmf_error *err, void *arg)
{
	struct gw_req *r = arg;
	if (rc == -EALREADY) {
		gw_reply_error(r, 409, "sandbox %s is already paused", sb->id);
		return;
	}
	if (rc < 0) {
		gw_reply_error(r, gw_status_for_errno(err->code), "cannot pause sandbox %s: %s", sb->id, err->msg);
		return;
	}
	gw_state_save(gw, NULL, NULL);
	gw_reply(r, 204, NULL, "", 0);
}

static void
pause_one(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	struct gw_sandbox *sb = find_or_404(gw, r, args[0]);
	json_object *b = sb ? body_json(r, false) : NULL, *v;
	if (!b)
		return;
	if (json_object_object_get_ex(b, "memory", &v) && json_object_is_type(v, json_type_boolean) &&
	    !json_object_get_boolean(v))
		gw_reply_error(r, 400, "memory false (a filesystem-only pause) is not served: a pause keeps the memory");
	else if (sb->state != GW_SB_RUNNING)
		gw_reply_error(r, 409, "sandbox %s is already paused", sb->id);
	else if (gw_vm_run(gw, sb, GW_VM_PAUSE, paused, r) < 0)
		gw_reply_error(r, 503, "too many requests wait in the gateway; retry shortly");
	else
		gw_defer(r);
	json_object_put(b);
}

struct resume_ctx {
	struct gw_req *r;
	unsigned timeout_s;
	bool v1;                     /* the old resume: 409 when running */
};

static void
resumed(struct gw *gw, struct gw_sandbox *sb, int rc, const struct vmf_error *err, void *arg)
{
	struct resume_ctx *c = arg;
	struct gw_req *r = c->r;
	if (rc == -EALREADY) {
		/* Running already (another connect won): its lease only grows. */
		if (c->v1) {
			gw_reply_error(r, 409, "sandbox %s is already running", sb->id);
		} else {
			gw_lease_extend(gw, sb, c->timeout_s);
			gw_lease_push(gw, sb);
			gw_state_save(gw, NULL, NULL);
			gw_reply_json(r, 200, sandbox_json(sb));
		}
	} else if (rc < 0) {
		gw_reply_error(r, gw_status_for_errno(err->code), "cannot resume sandbox %s: %s", sb->id, err->msg);
	} else {
		gw_lease_set(gw, sb, c->timeout_s);
		gw_state_save(gw, NULL, NULL);
		gw_reply_json(r, 201, sandbox_json(sb));
	}
	free(c);
}

/* The sandbox the path names and the number k of the body (0 when absent,
 * unless required); NULL when the request was answered (404, 400). */
static struct gw_sandbox *
sandbox_and(struct gw *gw, struct gw_req *r, const char *id, const char *k, bool required, int64_t *v)
{
	*v = 0;
	struct gw_sandbox *sb = find_or_404(gw, r, id);
	json_object *b = sb ? body_json(r, required) : NULL;
	if (!b)
		return NULL;
	int has = opt_uint(r, b, k, v);
	json_object_put(b);
	if (has == 0 && required)
		gw_reply_error(r, 400, "%s (seconds) is required", k);
	return has < 0 || (has == 0 && required) ? NULL : sb;
}

static void
connect_common(struct gw *gw, struct gw_req *r, const char *id, bool v1)
{
	int64_t timeout;
	struct gw_sandbox *sb = sandbox_and(gw, r, id, "timeout", false, &timeout);
	if (!sb)
		return;
	unsigned t = gw_lease_timeout(gw, timeout);
	if (sb->state == GW_SB_RUNNING) {
		if (v1) {
			gw_reply_error(r, 409, "sandbox %s is already running", sb->id);
			return;
		}
		gw_lease_extend(gw, sb, t);
		gw_lease_push(gw, sb);
		gw_state_save(gw, NULL, NULL);
		gw_reply_json(r, 200, sandbox_json(sb));
		return;
	}
	struct resume_ctx *c = calloc(1, sizeof(*c));
	if (!c) {
		gw_reply_error(r, 500, "out of memory");
		return;
	}
	c->r = r;
	c->timeout_s = t;
	c->v1 = v1;
	if (gw_vm_run_ttl(gw, sb, GW_VM_RESUME, gw_lease_daemon_ttl(t), resumed, c) < 0) {
		free(c);
		gw_reply_error(r, 503, "too many requests wait in the gateway; retry shortly");
		return;
	}
	gw_defer(r);
}

static void
connect_one(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	connect_common(gw, r, args[0], false);
}

static void
resume_one(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	connect_common(gw, r, args[0], true);
}

static void
set_timeout(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	int64_t timeout;
	struct gw_sandbox *sb = sandbox_and(gw, r, args[0], "timeout", true, &timeout);
	if (!sb)
		return;
	gw_lease_set(gw, sb, gw_lease_timeout(gw, timeout ? timeout : 1));
	gw_lease_push(gw, sb);
	gw_state_save(gw, NULL, NULL);
	gw_reply(r, 204, NULL, "", 0);
}

static void
refresh(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	int64_t d;
	struct gw_sandbox *sb = sandbox_and(gw, r, args[0], "duration", false, &d);
	if (!sb)
		return;
	if (d > 3600) {
		gw_reply_error(r, 400, "duration %lld is above 3600 seconds", (long long)d);
		return;
	}
	gw_lease_extend(gw, sb, gw_lease_timeout(gw, d));
	gw_lease_push(gw, sb);
	gw_state_save(gw, NULL, NULL);
	gw_reply(r, 204, NULL, "", 0);
}

/* ---- lists ---- */

struct filter {
	struct gw_req *r;
	bool running, paused, bad;
	char bad_state[64];
	json_object *meta;           /* key -> value that must match */
	const char *template_id;
	int64_t after_ms;
};

static void
add_state(const char *v, void *arg)
{
	struct filter *f = arg;
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", v);
	for (char *save = NULL, *s = strtok_r(buf, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
		if (strcmp(s, "running") == 0)
			f->running = true;
		else if (strcmp(s, "paused") == 0)
			f->paused = true;
		else if (!f->bad)
			f->bad = true, snprintf(f->bad_state, sizeof(f->bad_state), "%.40s", s);
	}
}

static int
unhex(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* %XX (and, form-style, '+' as a space) decoded in place; false when
 * malformed. */
static bool
url_decode(char *s, bool plus)
{
	char *o = s;
	for (; *s; s++) {
		if (*s == '%') {
			int a = unhex(s[1]), b = a < 0 ? -1 : unhex(s[2]);
			if (b < 0)
				return false;
			*o++ = (char)(a * 16 + b);
			s += 2;
		} else {
			*o++ = plus && *s == '+' ? ' ' : *s;
		}
	}
	*o = '\0';
	return true;
}

/* metadata=k1=v1&k2=v2 (the query value, already decoded once), each key
 * and value URL-encoded once more (the SDK encodes them, then the pairs). */
static bool
parse_meta(const char *q, json_object *out)
{
	char buf[GW_META_MAX_BYTES + 1];
	if (strlen(q) > GW_META_MAX_BYTES)
		return false;
	snprintf(buf, sizeof(buf), "%s", q);
	for (char *save = NULL, *pair = strtok_r(buf, "&", &save); pair; pair = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(pair, '=');
		if (!eq)
			return false;
		*eq = '\0';
		char *k = pair, *v = eq + 1;
		if (!url_decode(k, true) || !url_decode(v, true) || !url_decode(k, false) || !url_decode(v, false) || !*k)
			return false;
		json_object_object_add(out, k, json_object_new_string(v));
	}
	return true;
}

static bool
matches(const struct filter *f, const struct gw_sandbox *sb)
{
	if (sb->state == GW_SB_RUNNING ? !f->running : !f->paused)
		return false;
	if (f->template_id && strcmp(f->template_id, sb->template_id) != 0)
		return false;
	if (sb->started_ms < f->after_ms)
		return false;
	json_object_object_foreach(f->meta, k, v) {
		json_object *have;
		if (!json_object_object_get_ex(sb->metadata, k, &have) ||
		    strcmp(json_object_get_string(have), json_object_get_string(v)) != 0)
			return false;
	}
	return true;
}

/* Newest first (desc) or oldest first; ties by id. */
static int
order(const struct gw_sandbox *a, const struct gw_sandbox *b, bool asc)
{
	int c = a->started_ms < b->started_ms ? -1 : a->started_ms > b->started_ms ? 1 : strcmp(a->id, b->id);
	return asc ? c : -c;
}

static void
list(struct gw *gw, struct gw_req *r, bool v2)
{
	struct gw_key *key = gw_req_key(r);
	struct filter f = { .r = r, .meta = json_object_new_object() };
	const char *q;
	if (v2)
		gw_req_query_each(r, "state", add_state, &f);
	if (!f.running && !f.paused)
		f.running = true, f.paused = v2;
	if (f.bad) {
		gw_reply_error(r, 400, "state '%s' is not running or paused", f.bad_state);
		goto out;
	}
	if ((q = gw_req_query(r, "metadata")) && !parse_meta(q, f.meta)) {
		gw_reply_error(r, 400, "metadata '%.100s' is not key=value pairs joined by '&', each URL-encoded", q);
		goto out;
	}
	f.template_id = v2 ? gw_req_query(r, "template") : NULL;
	if (v2 && (q = gw_req_query(r, "startedAfter")) && (f.after_ms = parse_time(q)) < 0) {
		gw_reply_error(r, 400, "startedAfter '%.60s' is not an RFC 3339 time", q);
		goto out;
	}
	bool asc = false;
	if (v2 && (q = gw_req_query(r, "order"))) {
		if (strcmp(q, "asc") != 0 && strcmp(q, "desc") != 0) {
			gw_reply_error(r, 400, "order '%.40s' is not asc or desc", q);
			goto out;
		}
		asc = strcmp(q, "asc") == 0;
	}
	unsigned long limit = v2 ? LIST_LIMIT_MAX : (unsigned long)-1;
	if (v2 && (q = gw_req_query(r, "limit"))) {
		char *end;
		limit = strtoul(q, &end, 10);
		if (!*q || *end || limit < 1 || limit > LIST_LIMIT_MAX) {
			gw_reply_error(r, 400, "limit '%.20s' is not a number from 1 to %d", q, LIST_LIMIT_MAX);
			goto out;
		}
	}
	/* The cursor: where the previous page stopped (its last sandbox's
	 * start time and id); the next page starts after it in the order. */
	struct gw_sandbox cursor = { 0 };
	bool has_cursor = false;
	if (v2 && (q = gw_req_query(r, "nextToken")) && *q) {
		char id[64];
		long long ms;
		if (sscanf(q, "%lld.%40s", &ms, id) != 2 || !gw_valid_sandbox_id(id)) {
			gw_reply_error(r, 400, "nextToken '%.60s' is not one this gateway gave", q);
			goto out;
		}
		cursor.started_ms = ms;
		snprintf(cursor.id, sizeof(cursor.id), "%s", id);
		has_cursor = true;
	}
	/* The key's matching sandboxes, sorted (a few hundred at most). */
	size_t n = 0;
	struct gw_sandbox **v = calloc(gw->n_sandboxes + 1, sizeof(*v));
	if (!v) {
		gw_reply_error(r, 500, "out of memory");
		goto out;
	}
	unsigned running = 0;
	for (struct gw_sandbox *sb = gw->sandboxes; sb; sb = sb->next) {
		if (sb->dying || sb->state == GW_SB_CREATING || strcmp(sb->key_hash, key->hash_hex) != 0 ||
		    !matches(&f, sb))
			continue;
		running += sb->state == GW_SB_RUNNING;
		if (has_cursor && order(sb, &cursor, asc) <= 0)
			continue;
		size_t i = n++;
		while (i && order(v[i - 1], sb, asc) > 0) {
			v[i] = v[i - 1];
			i--;
		}
		v[i] = sb;
	}
	json_object *arr = json_object_new_array();
	for (size_t i = 0; i < n && i < limit; i++)
		json_object_array_add(arr, listed_json(v[i]));
	if (n > limit) {
		char tok[80];
		snprintf(tok, sizeof(tok), "%lld.%s", (long long)v[limit - 1]->started_ms, v[limit - 1]->id);
		gw_req_add_header(r, "X-Next-Token", tok);
	}
	if (v2 && f.running) {
		char cnt[16];
		snprintf(cnt, sizeof(cnt), "%u", running);
		gw_req_add_header(r, "X-Total-Running", cnt);
	}
	free(v);
	gw_reply_json(r, 200, arr);
out:
	json_object_put(f.meta);
}

static void
list_v1(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	(void)args;
	list(gw, r, false);
}

static void
list_v2(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	(void)args;
	list(gw, r, true);
}

static void
health(struct gw *gw, struct gw_req *r, char args[MAX_ARGS][128])
{
	(void)gw;
	(void)args;
	gw_reply(r, 204, NULL, "", 0);
}

/* ---- the routes ---- */

static const struct route routes[] = {
	{ "GET", "/health", health, NULL },
	{ "POST", "/sandboxes", create, NULL },
	{ "POST", "/v2/sandboxes", create, NULL },
	{ "GET", "/sandboxes", list_v1, NULL },
	{ "GET", "/v2/sandboxes", list_v2, NULL },
	{ "GET", "/sandboxes/:id", get_one, NULL },
	{ "DELETE", "/sandboxes/:id", kill_one, NULL },
	{ "POST", "/sandboxes/:id/pause", pause_one, NULL },
	{ "POST", "/sandboxes/:id/resume", resume_one, NULL },
	{ "POST", "/sandboxes/:id/connect", connect_one, NULL },
	{ "POST", "/v2/sandboxes/:id/connect", connect_one, NULL },
	{ "POST", "/sandboxes/:id/timeout", set_timeout, NULL },
	{ "POST", "/sandboxes/:id/refreshes", refresh, NULL },
	{ NULL, "/sandboxes/metrics", NULL, "sandbox metrics" },
	{ NULL, "/sandboxes/:id/metrics", NULL, "sandbox metrics" },
	{ NULL, "/sandboxes/:id/logs", NULL, "sandbox logs" },
	{ NULL, "/v2/sandboxes/:id/logs", NULL, "sandbox logs" },
	{ NULL, "/sandboxes/:id/snapshots", NULL, "snapshots of a sandbox" },
	{ NULL, "/sandboxes/:id/fork", NULL, "forking a sandbox" },
	{ NULL, "/sandboxes/:id/network", NULL, "sandbox network rules" },
	{ NULL, "/snapshots", NULL, "snapshots" },
};
#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* Whole E2B APIs this gateway does not serve, by path prefix. */
static const char *const unserved_prefixes[] = {
	"/templates", "/v2/templates", "/v3/templates", "/teams", "/volumes", "/secrets", "/api-keys",
	"/access-tokens", "/nodes", "/admin",
};

static bool
match(const char *pattern, const char *path, char args[MAX_ARGS][128])
{
	int na = 0;
	while (*pattern && *path) {
		if (*pattern != '/' || *path != '/')
			return false;
		pattern++, path++;
		size_t pl = strcspn(pattern, "/"), sl = strcspn(path, "/");
		if (*pattern == ':') {
			if (sl == 0 || sl >= 128 || na == MAX_ARGS)
				return false;
			snprintf(args[na++], 128, "%.*s", (int)sl, path);
		} else if (pl != sl || strncmp(pattern, path, pl) != 0) {
			return false;
		}
		pattern += pl;
		path += sl;
	}
	return !*pattern && !*path;
}

void
gw_api_begin(struct gw *gw, struct gw_req *r)
{
	gw_req_set_body_cap(r, GW_CONTROL_BODY_MAX);
	if (strcmp(gw_req_path(r), "/health") == 0)
		return;
	const char *k = gw_req_header(r, "X-API-KEY");
	if (!k || !*k) {
		gw_reply_error(r, 401, "no API key: set E2B_API_KEY to a key of this gateway (sent as X-API-KEY)");
		return;
	}
	struct gw_key *key = gw_keys_find(&gw->keys, k);
	if (!key) {
		gw_reply_error(r, 401, "invalid API key");
		return;
	}
	gw_req_set_key(r, key);
}

void
gw_api_dispatch(struct gw *gw, struct gw_req *r)
{
	const char *path = gw_req_path(r), *method = gw_req_method(r);
	char args[MAX_ARGS][128];
	bool path_known = false;
	for (size_t i = 0; i < NROUTES; i++) {
		if (!match(routes[i].pattern, path, args))
			continue;
		path_known = true;
		if (routes[i].method && strcmp(routes[i].method, method) != 0)
			continue;
		if (!routes[i].fn) {
			gw_reply_error(r, 501, "%s %s (%s) is not served by this vmfactory gateway (docs/e2b.md)", method,
				       path, routes[i].not_served);
			return;
		}
		routes[i].fn(gw, r, args);
		return;
	}
	for (size_t i = 0; i < sizeof(unserved_prefixes) / sizeof(unserved_prefixes[0]); i++) {
		size_t n = strlen(unserved_prefixes[i]);
		if (strncmp(path, unserved_prefixes[i], n) == 0 && (path[n] == '/' || !path[n])) {
			gw_reply_error(r, 501, "%s %s is not served by this vmfactory gateway (docs/e2b.md)", method, path);
			return;
		}
	}
	if (path_known)
		gw_reply_error(r, 405, "%s is not a method of %s", method, path);
	else
		gw_reply_error(r, 404, "%s %s is not a route of the E2B API", method, path);
}
