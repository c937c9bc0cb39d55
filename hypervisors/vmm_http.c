/* HTTP/1.1 JSON client over a unix socket for the Firecracker and Cloud
 * Hypervisor drivers.  One easy handle per request: requests are rare (a few
 * per VM lifecycle step) and this keeps handles free of shared state. */
#include "vmm_http.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "frame.h"
#include "log.h"
#include "util.h"

#define REPLY_MAX (4 << 20)

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void
curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_NOTHING);
}

struct buf {
	char *p;
	size_t n;
	bool overflow;
};

static size_t
on_data(char *ptr, size_t size, size_t nmemb, void *ctx)
{
	struct buf *b = ctx;
	size_t len = size * nmemb;
	if (b->n + len > REPLY_MAX) {
		b->overflow = true;
		return 0;
	}
	char *np = realloc(b->p, b->n + len + 1);
	if (!np)
		return 0;
	memcpy(np + b->n, ptr, len);
	b->p = np;
	b->n += len;
	b->p[b->n] = '\0';
	return len;
}

/* The VMM's own explanation: Firecracker's {"fault_message": ...}, else the
 * body as text (Cloud Hypervisor answers plain text or a JSON string). */
static void
fault_text(const struct buf *b, char *out, size_t max)
{
	out[0] = '\0';
	if (!b->p || !b->n)
		return;
	json_object *j = json_tokener_parse(b->p), *fm;
	if (j && json_object_object_get_ex(j, "fault_message", &fm))
		snprintf(out, max, "%s", json_object_get_string(fm));
	else if (j && json_object_is_type(j, json_type_string))
		snprintf(out, max, "%s", json_object_get_string(j));
	else
		snprintf(out, max, "%.*s", (int)strcspn(b->p, "\r\n"), b->p);
	json_object_put(j);
}

int
vmf_vmm_http(const char *vmm, const char *sock, const char *method, const char *path,
	     json_object *body, json_object **reply, int timeout_ms, struct vmf_error *err)
{
	if (reply)
		*reply = NULL;
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return vmf_err(err, EIO, "%s API: libcurl initialisation failed: %s", vmm,
			       curl_easy_strerror(curl_init_rc));
	CURL *c = curl_easy_init();
	if (!c)
		return vmf_err(err, ENOMEM, "%s API: out of memory for an HTTP handle", vmm);
	char url[512];
	snprintf(url, sizeof(url), "http://localhost%s", path);
	const char *payload = body ? json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) : NULL;
	struct curl_slist *hdr = NULL;
	hdr = curl_slist_append(hdr, "Accept: application/json");
	if (payload)
		hdr = curl_slist_append(hdr, "Content-Type: application/json");
	/* No "Expect: 100-continue" round trip: the VMMs answer directly. */
	hdr = curl_slist_append(hdr, "Expect:");
	struct buf b = {0};
	char errbuf[CURL_ERROR_SIZE] = "";
	curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, sock);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
	if (payload) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
	} else if (strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0) {
		/* A body-less PUT still needs Content-Length: 0. */
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
	}
	log_debug("%s API %s %s %s", vmm, method, path, payload ? payload : "");
	CURLcode rc = curl_easy_perform(c);
	long status = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(hdr);
	curl_easy_cleanup(c);

	int r = 0;
	if (rc != CURLE_OK) {
		int code = EIO;
		const char *what = "failed";
		switch (rc) {
		case CURLE_COULDNT_CONNECT:
			code = ECONNREFUSED, what = "cannot connect";
			break;
		case CURLE_OPERATION_TIMEDOUT:
			code = ETIMEDOUT, what = "timed out";
			break;
		case CURLE_GOT_NOTHING:
		case CURLE_RECV_ERROR:
		case CURLE_SEND_ERROR:
		case CURLE_PARTIAL_FILE:
			code = ECONNRESET, what = "connection closed by the VMM mid-request";
			break;
		default:
			break;
		}
		r = vmf_err(err, code, "%s API %s %s on %s: %s (%s)", vmm, method, path, sock, what,
			    errbuf[0] ? errbuf : curl_easy_strerror(rc));
	} else if (status < 200 || status > 299) {
		char fault[512];
		fault_text(&b, fault, sizeof(fault));
		int code = status == 404 ? ENOENT : status >= 500 ? EIO : EINVAL;
		r = vmf_err(err, code, "%s API %s %s answered HTTP %ld%s%s", vmm, method, path, status,
			    fault[0] ? ": " : "", fault);
	} else if (b.overflow) {
		r = vmf_err(err, EMSGSIZE, "%s API %s %s: reply larger than %d bytes", vmm, method, path, REPLY_MAX);
	} else if (reply && b.n) {
		json_tokener *tok = json_tokener_new();
		json_object *j = tok ? json_tokener_parse_ex(tok, b.p, (int)b.n) : NULL;
		if (!j || json_tokener_get_error(tok) != json_tokener_success) {
			json_object_put(j);
			r = vmf_err(err, EPROTO, "%s API %s %s: reply is not JSON: %.120s", vmm, method, path, b.p);
		} else {
			*reply = j;
		}
		json_tokener_free(tok);
	}
	free(b.p);
	return r < 0 ? r : (int)status;
}

json_object *
vmf_json_obj(void)
{
	return json_object_new_object();
}

void
vmf_json_set_str(json_object *o, const char *k, const char *v)
{
	json_object_object_add(o, k, json_object_new_string(v));
}

void
vmf_json_set_int(json_object *o, const char *k, int64_t v)
{
	json_object_object_add(o, k, json_object_new_int64(v));
}

void
vmf_json_set_bool(json_object *o, const char *k, bool v)
{
	json_object_object_add(o, k, json_object_new_boolean(v));
}
