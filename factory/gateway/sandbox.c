/* The sandbox table and what makes it survive a gateway restart: the state
 * file (each sandbox's VM, the digest of the key that owns it, template,
 * metadata, environment, lease, envd token), written whole to a temporary
 * file, fsynced and renamed over the old one by a worker, and checked at
 * start against the VMs the daemon says are ours. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gw.h"
#include "log.h"
#include "util.h"

#define STATE_VERSION 1
#define STATE_MAX (16u << 20)

struct gw_state_waiter {
	uint64_t gen;
	void (*fn)(struct gw *gw, int rc, void *arg);
	void *arg;
	struct gw_state_waiter *next;
};

/* ---- ids ---- */

void
gw_random_id(char *out, size_t len, const char *alphabet)
{
	size_t na = strlen(alphabet), i = 0;
	/* Rejection sampling: every character equally likely. */
	unsigned limit = 256 - 256 % (unsigned)na;
	while (i < len) {
		uint8_t buf[64];
		if (getrandom(buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
			abort();   /* no entropy: ids and tokens would be guessable */
		for (size_t k = 0; k < sizeof(buf) && i < len; k++)
			if (buf[k] < limit)
				out[i++] = alphabet[buf[k] % na];
	}
	out[len] = '\0';
}

bool
gw_valid_sandbox_id(const char *s)
{
	size_t n = strlen(s);
	if (n != GW_SANDBOX_ID_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
			return false;
	return true;
}

void
gw_sb_dir(const struct gw *gw, const char *id, char *out, size_t n)
{
	snprintf(out, n, "%s/%s", gw->o.sandbox_dir, id);
}

/* ---- the table ---- */

struct gw_sandbox *
gw_sb_new(struct gw *gw, struct gw_key *key)
{
	struct gw_sandbox *sb = calloc(1, sizeof(*sb));
	if (!sb)
		return NULL;
	sb->refs = 1;
	do
		gw_random_id(sb->id, GW_SANDBOX_ID_LEN, "abcdefghijklmnopqrstuvwxyz0123456789");
	while (gw_sb_lookup(gw, sb->id));
	gw_random_id(sb->token, GW_TOKEN_LEN, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
	sb->key = key;
	if (key) {
		snprintf(sb->key_hash, sizeof(sb->key_hash), "%s", key->hash_hex);
		snprintf(sb->team, sizeof(sb->team), "%s", key->team);
		key->sandboxes++;
	}
	gw_guest_init(gw, sb);
	sb->next = gw->sandboxes;
	gw->sandboxes = sb;
	gw->n_sandboxes++;
	return sb;
}

void
gw_sb_ref(struct gw_sandbox *sb)
{
	sb->refs++;
}

void
gw_sb_unref(struct gw *gw, struct gw_sandbox *sb)
{
	(void)gw;
	if (--sb->refs)
		return;
	gw_guest_free(sb);
	if (sb->metadata)
		json_object_put(sb->metadata);
	if (sb->env_vars)
		json_object_put(sb->env_vars);
	free(sb);
}

void
gw_sb_remove(struct gw *gw, struct gw_sandbox *sb)
{
	if (sb->gone)
		return;
	for (struct gw_sandbox **pp = &gw->sandboxes; *pp; pp = &(*pp)->next)
		if (*pp == sb) {
			*pp = sb->next;
			break;
		}
	sb->gone = true;
	gw->n_sandboxes--;
	if (sb->key)
		sb->key->sandboxes--;
	gw_guest_close(gw, sb, "not_found", "the sandbox was killed");
	gw_sb_unref(gw, sb);
}

struct gw_sandbox *
gw_sb_lookup(struct gw *gw, const char *id)
{
	for (struct gw_sandbox *sb = gw->sandboxes; sb; sb = sb->next)
		if (strcmp(sb->id, id) == 0)
			return sb;
	return NULL;
}

struct gw_sandbox *
gw_sb_find(struct gw *gw, const char *id, const struct gw_key *key)
{
	struct gw_sandbox *sb = gw_sb_lookup(gw, id);
	/* Another key's sandbox is not found, not forbidden: its existence is
	 * none of this key's business. */
	if (!sb || sb->dying || sb->state == GW_SB_CREATING || !key || strcmp(sb->key_hash, key->hash_hex) != 0)
		return NULL;
	return sb;
}

/* ---- the state file ---- */

static json_object *
state_json(struct gw *gw)
{
	json_object *root = json_object_new_object(), *arr = json_object_new_array();
	json_object_object_add(root, "version", json_object_new_int(STATE_VERSION));
	for (struct gw_sandbox *sb = gw->sandboxes; sb; sb = sb->next) {
		if (sb->state == GW_SB_CREATING)
			continue;
		json_object *o = json_object_new_object();
		json_object_object_add(o, "id", json_object_new_string(sb->id));
		json_object_object_add(o, "vm", json_object_new_string(sb->vm_id));
		json_object_object_add(o, "key", json_object_new_string(sb->key_hash));
		json_object_object_add(o, "team", json_object_new_string(sb->team));
		json_object_object_add(o, "template", json_object_new_string(sb->template_id));
		json_object_object_add(o, "token", json_object_new_string(sb->token));
		json_object_object_add(o, "metadata", json_object_get(sb->metadata));
		json_object_object_add(o, "envVars", json_object_get(sb->env_vars));
		json_object_object_add(o, "startedAt", json_object_new_int64(sb->started_ms));
		json_object_object_add(o, "endAt", json_object_new_int64(sb->end_ms));
		json_object_object_add(o, "state", json_object_new_string(sb->state == GW_SB_PAUSED ? "paused" : "running"));
		json_object_object_add(o, "autoPause", json_object_new_boolean(sb->auto_pause));
		json_object_object_add(o, "vcpus", json_object_new_int((int)sb->vcpus));
		json_object_object_add(o, "memoryMiB", json_object_new_int((int)sb->memory_mib));
		json_object_array_add(arr, o);
	}
	json_object_object_add(root, "sandboxes", arr);
	return root;
}

static int
write_state(const char *path, const char *text, struct vmf_error *err)
{
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot write the gateway state %s", tmp);
	size_t len = strlen(text), off = 0;
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			int e = errno;
			close(fd);
			unlink(tmp);
			return vmf_err_sys(err, e, "cannot write the gateway state %s", tmp);
		}
		off += (size_t)w;
	}
	if (fsync(fd) < 0 || close(fd) < 0) {
		int e = errno;
		unlink(tmp);
		return vmf_err_sys(err, e, "cannot write the gateway state %s", tmp);
	}
	if (rename(tmp, path) < 0) {
		int e = errno;
		unlink(tmp);
		return vmf_err_sys(err, e, "cannot rename %s to %s", tmp, path);
	}
	return 0;
}

struct state_job {
	struct gw *gw;
	char *text;
	uint64_t gen;
	int rc;
	struct vmf_error err;
};

static void state_write_start(struct gw *gw);

static void
state_work(void *arg)
{
	struct state_job *s = arg;
	s->rc = write_state(s->gw->o.state_file, s->text, &s->err);
}

static void
state_done(void *arg)
{
	struct state_job *s = arg;
	struct gw *gw = s->gw;
	gw->state_writing = false;
	if (s->rc < 0)
		log_error("%s", s->err.msg);
	else
		gw->state_written = s->gen;
	/* Waiters up to this write hear of it; a failed write fails them. */
	for (struct gw_state_waiter **pp = &gw->state_waiters; *pp;) {
		struct gw_state_waiter *w = *pp;
		if (w->gen > s->gen) {
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		w->fn(gw, s->rc, w->arg);
		free(w);
	}
	uint64_t gen = s->gen;
	free(s->text);
	free(s);
	/* Changes made while this write ran go out next (stopping too: a
	 * create waits for its write to be answered).  A failed write is not
	 * retried by itself: the next change writes everything again. */
	if (gw->state_gen > gen)
		state_write_start(gw);
}

static void
state_write_start(struct gw *gw)
{
	if (gw->state_writing)
		return;
	struct state_job *s = calloc(1, sizeof(*s));
	json_object *j = state_json(gw);
	if (s)
		s->text = strdup(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
	json_object_put(j);
	if (!s || !s->text) {
		log_error("out of memory writing the gateway state");
		if (s)
			free(s);
		return;
	}
	s->gw = gw;
	s->gen = gw->state_gen;
	gw->state_writing = true;
	if (vmf_jobs_submit(gw->jobs, state_work, state_done, s) < 0) {
		gw->state_writing = false;
		free(s->text);
		free(s);
		log_error("cannot queue a write of the gateway state");
	}
}

void
gw_state_save(struct gw *gw, void (*fn)(struct gw *gw, int rc, void *arg), void *arg)
{
	gw->state_gen++;
	if (fn) {
		struct gw_state_waiter *w = calloc(1, sizeof(*w));
		if (!w) {
			fn(gw, -ENOMEM, arg);
		} else {
			w->gen = gw->state_gen;
			w->fn = fn;
			w->arg = arg;
			w->next = gw->state_waiters;
			gw->state_waiters = w;
		}
	}
	state_write_start(gw);
}

void
gw_state_save_now(struct gw *gw)
{
	json_object *j = state_json(gw);
	struct vmf_error err;
	if (write_state(gw->o.state_file, json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN), &err) < 0)
		log_error("%s", err.msg);
	json_object_put(j);
}

static bool
is_hex64(const char *s)
{
	if (!s || strlen(s) != 64)
		return false;
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			return false;
	return true;
}

static int
load_entry(struct gw *gw, json_object *o, struct vmf_error *err)
{
	const char *id = gw_json_str(o, "id"), *vm = gw_json_str(o, "vm"), *key = gw_json_str(o, "key"), *team = gw_json_str(o, "team");
	const char *tpl = gw_json_str(o, "template"), *token = gw_json_str(o, "token"), *st = gw_json_str(o, "state");
	json_object *meta, *env, *v;
	if (!id || !gw_valid_sandbox_id(id) || !vm || !vmf_valid_uuid(vm) || !is_hex64(key) || !team ||
	    strlen(team) > GW_TEAM_MAX || !tpl || strlen(tpl) > GW_TEMPLATE_MAX || !token ||
	    strlen(token) != GW_TOKEN_LEN || !st || !json_object_object_get_ex(o, "metadata", &meta) ||
	    !json_object_is_type(meta, json_type_object) || !json_object_object_get_ex(o, "envVars", &env) ||
	    !json_object_is_type(env, json_type_object))
		return vmf_err(err, EINVAL, "an entry is incomplete or malformed: %.200s",
			       json_object_to_json_string(o));
	if (gw_sb_lookup(gw, id))
		return vmf_err(err, EINVAL, "sandbox %s is listed twice", id);
	struct gw_key *k = gw_keys_by_hash(&gw->keys, key);
	struct gw_sandbox *sb = gw_sb_new(gw, k);
	if (!sb)
		return vmf_err(err, ENOMEM, "out of memory");
	snprintf(sb->id, sizeof(sb->id), "%s", id);
	snprintf(sb->vm_id, sizeof(sb->vm_id), "%s", vm);
	snprintf(sb->key_hash, sizeof(sb->key_hash), "%s", key);
	snprintf(sb->team, sizeof(sb->team), "%s", team);
	snprintf(sb->template_id, sizeof(sb->template_id), "%s", tpl);
	snprintf(sb->token, sizeof(sb->token), "%s", token);
	sb->metadata = json_object_get(meta);
	sb->env_vars = json_object_get(env);
	sb->started_ms = json_object_object_get_ex(o, "startedAt", &v) ? json_object_get_int64(v) : 0;
	sb->end_ms = json_object_object_get_ex(o, "endAt", &v) ? json_object_get_int64(v) : 0;
	sb->auto_pause = json_object_object_get_ex(o, "autoPause", &v) && json_object_get_boolean(v);
	sb->vcpus = json_object_object_get_ex(o, "vcpus", &v) ? (unsigned)json_object_get_int(v) : 0;
	sb->memory_mib = json_object_object_get_ex(o, "memoryMiB", &v) ? (unsigned)json_object_get_int(v) : 0;
	sb->state = strcmp(st, "paused") == 0 ? GW_SB_PAUSED : GW_SB_RUNNING;
	if (!k)
		log_warn("sandbox %s: its key (team %s) is no longer in the keys file: nobody can reach it; it ends "
			 "with its lease", id, team);
	return 0;
}

int
gw_state_load(struct gw *gw, struct vmf_error *err)
{
	char *text;
	size_t len;
	int r = vmf_read_file(gw->o.state_file, &text, &len, STATE_MAX, err);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return vmf_error_prefix(err, "gateway state");
	json_tokener *tok = json_tokener_new();
	json_object *root = tok ? json_tokener_parse_ex(tok, text, (int)len) : NULL;
	bool bad = !root || json_tokener_get_error(tok) != json_tokener_success;
	if (tok)
		json_tokener_free(tok);
	free(text);
	json_object *arr, *ver;
	if (bad || !json_object_object_get_ex(root, "version", &ver) || json_object_get_int(ver) != STATE_VERSION ||
	    !json_object_object_get_ex(root, "sandboxes", &arr) || !json_object_is_type(arr, json_type_array)) {
		if (root)
			json_object_put(root);
		/* Never started over silently: the VMs it names would be released. */
		return vmf_err(err, EINVAL, "the gateway state %s is not a state file of version %d: move it away to "
			       "start without its sandboxes (their VMs are then released)", gw->o.state_file,
			       STATE_VERSION);
	}
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		if ((r = load_entry(gw, json_object_array_get_idx(arr, i), err)) < 0) {
			json_object_put(root);
			return vmf_error_prefix(err, "the gateway state %s", gw->o.state_file);
		}
	}
	json_object_put(root);
	return 0;
}

/* ---- reconciling with the daemon ---- */

static Vmf__Control__VmInfo *
vm_by_id(Vmf__Control__StatusReply *st, const char *id)
{
	for (size_t i = 0; i < st->n_vms; i++)
		if (strcmp(st->vms[i]->id, id) == 0)
			return st->vms[i];
	return NULL;
}

static bool
under_dir(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return path && strncmp(path, dir, n) == 0 && path[n] == '/';
}

static void
release(struct vmf_client *c, const char *vm, const char *why)
{
	struct vmf_error e;
	if (vmf_client_release_vm(c, vm, 60000, &e) < 0 && e.code != ENOENT)
		log_warn("cannot release VM %s (%s): %s", vm, why, e.msg);
	else
		log_info("released VM %s: %s", vm, why);
}

int
gw_reconcile(struct gw *gw, struct vmf_error *err)
{
	struct vmf_client *c;
	int r = vmf_client_connect(gw->o.socket, &c, err);
	if (r < 0)
		return r;
	Vmf__Control__Reply *rep;
	if ((r = vmf_client_status(c, &rep, 10000, err)) < 0) {
		vmf_client_close(c);
		return vmf_error_prefix(err, "the vmfactory daemon's status");
	}
	Vmf__Control__StatusReply *st = rep->status;
	bool changed = false;
	for (struct gw_sandbox *sb = gw->sandboxes, *next; sb; sb = next) {
		next = sb->next;
		Vmf__Control__VmInfo *vm = vm_by_id(st, sb->vm_id);
		const char *s = vm ? vm->state : "";
		if (vm && strcmp(vm->sandbox_id, sb->id) != 0)
			vm = NULL;
		if (vm && (!strcmp(s, "assigned") || !strcmp(s, "resuming"))) {
			sb->state = GW_SB_RUNNING;
		} else if (vm && (!strcmp(s, "suspended") || !strcmp(s, "suspending"))) {
			sb->state = GW_SB_PAUSED;
		} else {
			if (vm)
				release(c, vm->id, "its process is gone");
			log_warn("sandbox %s: its VM %s is %s; dropped", sb->id, sb->vm_id, vm ? s : "gone");
			char dir[4200];
			gw_sb_dir(gw, sb->id, dir, sizeof(dir));
			vmf_rm_rf(dir, NULL);
			gw_sb_remove(gw, sb);
			changed = true;
			continue;
		}
		if (vm) {
			snprintf(sb->agent_socket, sizeof(sb->agent_socket), "%s", vm->agent_socket);
			snprintf(sb->agent_transport, sizeof(sb->agent_transport), "%s", vm->agent_transport);
			sb->vsock_port = vm->agent_vsock_port;
			sb->vcpus = vm->vcpus ? vm->vcpus : sb->vcpus;
			sb->memory_mib = vm->memory_mib ? vm->memory_mib : sb->memory_mib;
		}
	}
	/* A VM ours by its links but in no record: made by a gateway that
	 * stopped before it wrote the sandbox down (its client got no
	 * answer).  Nobody can reach it. */
	for (size_t i = 0; i < st->n_vms; i++) {
		Vmf__Control__VmInfo *vm = st->vms[i];
		if (!under_dir(vm->sock_link, gw->o.sandbox_dir) || gw_sb_lookup(gw, vm->sandbox_id))
			continue;
		release(c, vm->id, "no sandbox of this gateway names it");
	}
	vmf__control__reply__free_unpacked(rep, NULL);
	vmf_client_close(c);
	/* Sandbox dirs that no sandbox owns any more. */
	DIR *d = opendir(gw->o.sandbox_dir);
	for (struct dirent *de; d && (de = readdir(d));) {
		if (!gw_valid_sandbox_id(de->d_name) || gw_sb_lookup(gw, de->d_name))
			continue;
		char dir[4200];
		gw_sb_dir(gw, de->d_name, dir, sizeof(dir));
		vmf_rm_rf(dir, NULL);
	}
	if (d)
		closedir(d);
	if (changed)
		gw_state_save_now(gw);
	return 0;
}
