/* The in-sandbox API (E2B's envd), reached through the gateway: every
 * request names its sandbox in E2b-Sandbox-Id (and port 49983 in
 * E2b-Sandbox-Port) and proves it may use it with the sandbox's access
 * token (X-Access-Token, from the create reply) or its owner's API key.
 *
 * Plain HTTP routes (health, files) and the Connect protocol with JSON
 * (connectrpc.com/docs/protocol): a unary call is POST /<pkg.Service>/<Method>
 * with application/json both ways, errors as {"code": "not_found",
 * "message"} with the matching HTTP status; a server stream takes one
 * enveloped message (1 flag byte, 4-byte big-endian length, JSON) as
 * application/connect+json and answers HTTP 200 with enveloped messages,
 * the last one flagged 0x02 carrying {} or {"error": {...}}.
 *
 * Methods are data: each service's file has its table (process.c's
 * gw_process_methods, files.c's gw_filesystem_methods); a method without a handler answers "unimplemented"
 * naming itself and what will serve it, never a hang. */
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"
#include "log.h"

#define ENVELOPE_HDR 5
#define FLAG_COMPRESSED 0x01
#define FLAG_END 0x02
#define KEEPALIVE_DEFAULT_S 30
#define KEEPALIVE_MAX_S 50

/* ---- Connect ---- */

static const struct {
	const char *code;
	unsigned status;
} codes[] = {
	{ "canceled", 499 }, { "unknown", 500 }, { "invalid_argument", 400 }, { "deadline_exceeded", 504 },
	{ "not_found", 404 }, { "already_exists", 409 }, { "permission_denied", 403 },
	{ "resource_exhausted", 429 }, { "failed_precondition", 400 }, { "aborted", 409 },
	{ "out_of_range", 400 }, { "unimplemented", 501 }, { "internal", 500 }, { "unavailable", 503 },
	{ "data_loss", 500 }, { "unauthenticated", 401 },
};

static unsigned
status_of(const char *code)
{
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (strcmp(codes[i].code, code) == 0)
			return codes[i].status;
	return 500;
}

static bool
streaming(struct gw_req *r)
{
	const char *ct = gw_req_header(r, "Content-Type");
	return ct && strncmp(ct, "application/connect+", 20) == 0;
}

static json_object *
error_json(const char *code, const char *msg)
{
	json_object *e = json_object_new_object();
	json_object_object_add(e, "code", json_object_new_string(code));
	json_object_object_add(e, "message", json_object_new_string(msg));
	return e;
}

static void
envelope(struct gw_stream *s, uint8_t flags, json_object *j)
{
	const char *text = json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	size_t n = strlen(text);
	uint8_t hdr[ENVELOPE_HDR] = { flags, (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
	gw_stream_write(s, hdr, sizeof(hdr));
	gw_stream_write(s, text, n);
}

void
gw_rpc_send(struct gw_stream *s, json_object *msg)
{
	if (s)
		envelope(s, 0, msg);
	json_object_put(msg);
}

static void
rpc_vend(struct gw_stream *s, const char *code, const char *fmt, va_list ap)
{
	json_object *end = json_object_new_object();
	if (code) {
		char msg[1200];
		vsnprintf(msg, sizeof(msg), fmt, ap);
		json_object_object_add(end, "error", error_json(code, msg));
	}
	envelope(s, FLAG_END, end);
	json_object_put(end);
	gw_stream_end(s);
}

void
gw_rpc_end(struct gw_stream *s, const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	rpc_vend(s, code, fmt, ap);
	va_end(ap);
}

struct gw_stream *
gw_rpc_stream_open(struct gw_req *r, json_object *keepalive)
{
	struct gw_stream *s = gw_stream_open(r, 200, "application/connect+json");
	if (s && keepalive) {
		/* The client's wish (Keepalive-Ping-Interval, seconds), within
		 * bounds: a silent stream is how a vanished client is noticed. */
		const char *h = gw_req_header(r, "Keepalive-Ping-Interval");
		unsigned long sec = h ? strtoul(h, NULL, 10) : KEEPALIVE_DEFAULT_S;
		if (sec == 0 || sec > KEEPALIVE_MAX_S)
			sec = sec ? KEEPALIVE_MAX_S : KEEPALIVE_DEFAULT_S;
		const char *text = json_object_to_json_string_ext(keepalive, JSON_C_TO_STRING_PLAIN);
		size_t n = strlen(text);
		uint8_t *buf = malloc(ENVELOPE_HDR + n);
		if (buf) {
			buf[0] = 0;
			buf[1] = (uint8_t)(n >> 24), buf[2] = (uint8_t)(n >> 16), buf[3] = (uint8_t)(n >> 8);
			buf[4] = (uint8_t)n;
			memcpy(buf + ENVELOPE_HDR, text, n);
			gw_stream_idle(s, (unsigned)sec * 1000, buf, ENVELOPE_HDR + n);
			free(buf);
		}
	}
	if (keepalive)
		json_object_put(keepalive);
	return s;
}

void
gw_rpc_reply(struct gw_req *r, json_object *msg)
{
	gw_reply_json(r, 200, msg);
}

void
gw_rpc_error(struct gw_req *r, const char *code, const char *fmt, ...)
{
	char msg[1200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (streaming(r)) {
		struct gw_stream *s = gw_stream_open(r, 200, "application/connect+json");
		if (s)
			gw_rpc_end(s, code, "%s", msg);
		return;
	}
	gw_reply_json(r, status_of(code), error_json(code, msg));
}

/* ---- who the process runs as ---- */

/* The users of the e2b image profile (contrib/image/build-image --profile
 * e2b): root and user (uid 1000, home /home/user).  Resolving any name in
 * the guest is the agent's to do. */
static const struct gw_user users[] = {
	{ "user", "/home/user", 1000, 1000, false },
	{ "root", "/root", 0, 0, true },
};

int
gw_envd_user(struct gw_req *r, struct gw_user *u, char *why, size_t n)
{
	*u = users[0];
	const char *h = gw_req_header(r, "Authorization");
	/* /files names its user in the query instead. */
	const char *named = h ? NULL : gw_req_query(r, "username");
	if (named && *named) {
		for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++)
			if (strcmp(named, users[i].name) == 0) {
				*u = users[i];
				return 0;
			}
		snprintf(why, n, "user '%.40s' is not a user of this sandbox (user, root)", named);
		return -1;
	}
	if (!h)
		return 0;
	if (strncmp(h, "Basic ", 6) != 0) {
		snprintf(why, n, "Authorization: only Basic USER: names the user of a process");
		return -1;
	}
	unsigned char dec[256];
	size_t in = strlen(h + 6);
	if (in == 0 || in > 300) {
		snprintf(why, n, "Authorization: Basic: the user name is missing or too long");
		return -1;
	}
	int len = EVP_DecodeBlock(dec, (const unsigned char *)h + 6, (int)in);
	if (len < 0) {
		snprintf(why, n, "Authorization: Basic: not base64");
		return -1;
	}
	dec[len] = '\0';
	char *colon = strchr((char *)dec, ':');
	if (colon)
		*colon = '\0';
	for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++)
		if (strcmp((char *)dec, users[i].name) == 0) {
			*u = users[i];
			return 0;
		}
	snprintf(why, n, "user '%.40s' is not a user of this sandbox (user, root)", (char *)dec);
	return -1;
}

/* ---- routing ---- */

void
gw_envd_begin(struct gw *gw, struct gw_req *r)
{
	const char *id = gw_req_header(r, "E2b-Sandbox-Id");
	const char *port = gw_req_header(r, "E2b-Sandbox-Port");
	gw_req_set_body_cap(r, gw->o.max_body);
	struct gw_sandbox *sb = id && gw_valid_sandbox_id(id) ? gw_sb_lookup(gw, id) : NULL;
	/* What E2B's proxy answers for a sandbox it cannot reach: 502. */
	if (!sb || sb->dying || sb->state == GW_SB_CREATING) {
		gw_reply_error(r, 502, "sandbox %.40s not found: it was killed, timed out, or never existed", id ? id : "");
		return;
	}
	if (port && strtoul(port, NULL, 10) != GW_ENVD_PORT) {
		gw_reply_error(r, 502, "port %.10s of sandbox %s is not served: this gateway serves the sandbox's "
			       "envd API (port %d) only", port, sb->id, GW_ENVD_PORT);
		return;
	}
	const char *token = gw_req_header(r, "X-Access-Token"), *key = gw_req_header(r, "X-API-KEY");
	struct gw_key *k = key ? gw_keys_find(&gw->keys, key) : NULL;
	bool ok = (token && gw_secret_equal(token, sb->token)) || (k && strcmp(k->hash_hex, sb->key_hash) == 0);
	if (!ok) {
		gw_reply_error(r, 401, "sandbox %s: %s", sb->id, token || key ? "wrong X-Access-Token"
			       : "no X-Access-Token (the envdAccessToken of the create reply) given");
		return;
	}
	if (sb->state == GW_SB_PAUSED) {
		gw_reply_error(r, 502, "sandbox %s is paused: resume it with Sandbox.connect", sb->id);
		return;
	}
	gw_req_set_sandbox(r, sb);
}

static const struct gw_rpc_method *
find_method(const char *name)
{
	const struct gw_rpc_method *tables[] = { gw_process_methods, gw_filesystem_methods };
	for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++)
		for (const struct gw_rpc_method *m = tables[t]; m->name; m++)
			if (strcmp(m->name, name) == 0)
				return m;
	return NULL;
}

/* The body as one JSON message: whole (unary) or in one envelope. */
static json_object *
parse_message(struct gw_req *r, bool stream, char *why, size_t n)
{
	size_t len;
	const char *b = gw_req_body(r, &len);
	if (stream) {
		if (len < ENVELOPE_HDR) {
			snprintf(why, n, "the request has no enveloped message");
			return NULL;
		}
		const uint8_t *u = (const uint8_t *)b;
		uint32_t m = (uint32_t)u[1] << 24 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 8 | u[4];
		if (u[0] & FLAG_COMPRESSED) {
			snprintf(why, n, "compressed messages are not accepted (send Connect-Content-Encoding identity)");
			return NULL;
		}
		if (m != len - ENVELOPE_HDR) {
			snprintf(why, n, "the envelope says %u bytes, the body has %zu", m, len - ENVELOPE_HDR);
			return NULL;
		}
		b += ENVELOPE_HDR;
		len -= ENVELOPE_HDR;
	}
	json_tokener *tok = json_tokener_new();
	json_object *j = tok ? json_tokener_parse_ex(tok, b, (int)len) : NULL;
	if (!j || json_tokener_get_error(tok) != json_tokener_success || !json_object_is_type(j, json_type_object) ||
	    (tok && json_tokener_get_parse_end(tok) != len)) {
		snprintf(why, n, "the message is not a JSON object");
		if (j)
			json_object_put(j);
		j = NULL;
	}
	if (tok)
		json_tokener_free(tok);
	return j;
}

static void
connect_call(struct gw *gw, struct gw_req *r, struct gw_sandbox *sb, const char *name)
{
	const struct gw_rpc_method *m = find_method(name);
	bool stream = streaming(r);
	if (strcmp(gw_req_method(r), "POST") != 0) {
		gw_reply_error(r, 405, "%s is a Connect method: POST it", name);
		return;
	}
	if (!m) {
		gw_rpc_error(r, "unimplemented", "%s is not a method of envd", name);
		return;
	}
	if (!m->fn) {
		gw_rpc_error(r, "unimplemented", "%s is not served by this vmfactory gateway yet: it waits for %s "
			     "(docs/e2b.md)", name, m->later);
		return;
	}
	const char *ct = gw_req_header(r, "Content-Type");
	if (!ct || (strncmp(ct, "application/json", 16) != 0 && strncmp(ct, "application/connect+json", 24) != 0)) {
		gw_reply_error(r, 415, "%s: Content-Type %.60s is not served: use the Connect protocol with JSON "
			       "(application/json, application/connect+json)", name, ct ? ct : "(none)");
		return;
	}
	if (stream != m->server_stream) {
		gw_rpc_error(r, "invalid_argument", "%s is a %s method: send %s", name,
			     m->server_stream ? "server-streaming" : "unary",
			     m->server_stream ? "application/connect+json" : "application/json");
		return;
	}
	char why[200];
	json_object *msg = parse_message(r, stream, why, sizeof(why));
	if (!msg) {
		gw_rpc_error(r, "invalid_argument", "%s: %s", name, why);
		return;
	}
	m->fn(gw, r, sb, msg);
	json_object_put(msg);
}

void
gw_envd_dispatch(struct gw *gw, struct gw_req *r)
{
	struct gw_sandbox *sb = gw_req_sandbox(r);
	const char *path = gw_req_path(r), *method = gw_req_method(r);
	const char *slash = strchr(path + 1, '/');
	if (slash && strchr(path + 1, '.') && strchr(path + 1, '.') < slash) {
		connect_call(gw, r, sb, path + 1);
		return;
	}
	if (strcmp(path, "/health") == 0) {
		/* Paused sandboxes were answered 502 already. */
		gw_reply(r, 204, NULL, "", 0);
		return;
	}
	if (strcmp(path, "/files") == 0) {
		gw_files_http(gw, r, sb);
		return;
	}
	if (strcmp(path, "/metrics") == 0 || strcmp(path, "/envs") == 0 || strcmp(path, "/init") == 0) {
		gw_reply_error(r, 501, "%s %s of envd is not served by this vmfactory gateway (docs/e2b.md)", method, path);
		return;
	}
	gw_reply_error(r, 404, "%s %s is not a route of envd", method, path);
}

json_object *
gw_rpc_event(const char *kind, json_object *body)
{
	json_object *e = json_object_new_object(), *m = json_object_new_object();
	json_object_object_add(e, kind, body);
	json_object_object_add(m, "event", e);
	return m;
}
