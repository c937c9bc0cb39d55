/* The API keys file: one key a line, its team, optionally the templates
 * it may use.  Only a digest of each key is kept in memory and in the
 * state file; a presented key is hashed and compared with every digest in
 * constant time, so neither timing nor an early exit says which key (or
 * how much of one) matched. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gw.h"
#include "util.h"

#define KEYS_FILE_MAX (1024 * 1024)
#define KEYS_MAX 4096
#define KEY_MIN 16
#define KEY_MAX 256

bool
gw_secret_equal(const char *a, const char *b)
{
	/* Digests first: equal-length inputs for CRYPTO_memcmp whatever the
	 * lengths presented. */
	uint8_t da[32], db[32];
	SHA256((const unsigned char *)a, strlen(a), da);
	SHA256((const unsigned char *)b, strlen(b), db);
	return CRYPTO_memcmp(da, db, sizeof(da)) == 0;
}

static bool
key_chars(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isgraph((unsigned char)s[i]))
			return false;
	return true;
}

static bool
name_chars(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i]))
			return false;
	return n > 0;
}

static void
key_free(struct gw_key *k)
{
	for (size_t i = 0; i < k->n_templates; i++)
		free(k->templates[i]);
	free(k->templates);
}

void
gw_keys_free(struct gw_keys *k)
{
	for (size_t i = 0; i < k->n; i++)
		key_free(&k->v[i]);
	free(k->v);
	k->v = NULL;
	k->n = 0;
}

/* "a,b,c" into k's list; "*" is every template. */
static int
parse_templates(struct gw_key *k, char *list, const char *path, unsigned line, struct vmf_error *err)
{
	if (strcmp(list, "*") == 0)
		return 0;
	for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		size_t n = strlen(t);
		if (n > GW_TEMPLATE_MAX || !name_chars(t, n))
			return vmf_err(err, EINVAL, "%s:%u: template '%.80s' is not a name of letters, digits, '.', '_' "
				       "or '-' (at most %d)", path, line, t, GW_TEMPLATE_MAX);
		char **v = realloc(k->templates, (k->n_templates + 1) * sizeof(*v));
		if (!v || !(v[k->n_templates] = strdup(t))) {
			if (v)
				k->templates = v;
			return vmf_err(err, ENOMEM, "out of memory reading %s", path);
		}
		k->templates = v;
		k->n_templates++;
	}
	if (!k->n_templates)
		return vmf_err(err, EINVAL, "%s:%u: the template list is empty (leave it out, or give '*', for every "
			       "template)", path, line);
	return 0;
}

static int
parse_line(struct gw_keys *keys, char *s, const char *path, unsigned line, struct vmf_error *err)
{
	char *f[4] = { 0 };
	int nf = 0;
	for (char *save = NULL, *t = strtok_r(s, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
		if (nf == 3)
			return vmf_err(err, EINVAL, "%s:%u: too many fields: expected KEY TEAM [TEMPLATE,...]", path, line);
		f[nf++] = t;
	}
	if (nf < 2)
		return vmf_err(err, EINVAL, "%s:%u: expected KEY TEAM [TEMPLATE,...]", path, line);
	size_t kl = strlen(f[0]);
	if (kl < KEY_MIN || kl > KEY_MAX || !key_chars(f[0], kl))
		return vmf_err(err, EINVAL, "%s:%u: a key must be %d to %d printable characters without blanks "
			       "(this one has %zu)", path, line, KEY_MIN, KEY_MAX, kl);
	size_t tl = strlen(f[1]);
	if (tl > GW_TEAM_MAX || !name_chars(f[1], tl))
		return vmf_err(err, EINVAL, "%s:%u: team '%.80s' is not a name of letters, digits, '.', '_' or '-' "
			       "(at most %d)", path, line, f[1], GW_TEAM_MAX);
	if (keys->n == KEYS_MAX)
		return vmf_err(err, E2BIG, "%s:%u: more than %d keys", path, line, KEYS_MAX);
	struct gw_key k = { .line = line };
	snprintf(k.team, sizeof(k.team), "%s", f[1]);
	SHA256((const unsigned char *)f[0], kl, k.hash);
	vmf_hex(k.hash, sizeof(k.hash), k.hash_hex);
	for (size_t i = 0; i < keys->n; i++)
		if (memcmp(keys->v[i].hash, k.hash, sizeof(k.hash)) == 0)
			return vmf_err(err, EINVAL, "%s:%u: the same key as on line %u", path, line, keys->v[i].line);
	if (f[2] && parse_templates(&k, f[2], path, line, err) < 0) {
		key_free(&k);
		return -EINVAL;
	}
	struct gw_key *v = realloc(keys->v, (keys->n + 1) * sizeof(*v));
	if (!v) {
		key_free(&k);
		return vmf_err(err, ENOMEM, "out of memory reading %s", path);
	}
	keys->v = v;
	keys->v[keys->n++] = k;
	return 0;
}

int
gw_keys_load(struct gw_keys *keys, const char *path, struct vmf_error *err)
{
	memset(keys, 0, sizeof(*keys));
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return vmf_err_sys(err, errno, "cannot open the API keys file %s", path);
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return vmf_err_sys(err, e, "cannot read the API keys file %s", path);
	}
	/* Keys are secrets: a file others may read (or write: add a key of
	 * their own) is refused, as ssh refuses such key files. */
	if (!S_ISREG(st.st_mode) || (st.st_mode & 0007) || (st.st_uid != getuid() && st.st_uid != 0)) {
		close(fd);
		return vmf_err(err, EPERM, "the API keys file %s must be a regular file owned by this user or root "
			       "and not readable or writable by others (mode %03o, owner %u): chmod o-rwx %s",
			       path, (unsigned)(st.st_mode & 0777), (unsigned)st.st_uid, path);
	}
	char *buf;
	size_t len;
	int r = vmf_read_fd(fd, path, &buf, &len, KEYS_FILE_MAX, err);
	close(fd);
	if (r < 0)
		return vmf_error_prefix(err, "API keys file");
	unsigned line = 0;
	for (char *save = NULL, *l = buf; l; l = save) {
		save = strchr(l, '\n');
		if (save)
			*save++ = '\0';
		line++;
		size_t n = strlen(l);
		while (n && isspace((unsigned char)l[n - 1]))
			l[--n] = '\0';
		while (isspace((unsigned char)*l))
			l++;
		if (!*l || *l == '#')
			continue;
		if ((r = parse_line(keys, l, path, line, err)) < 0)
			break;
	}
	free(buf);
	if (r == 0 && keys->n == 0)
		r = vmf_err(err, EINVAL, "the API keys file %s has no key: add a line KEY TEAM", path);
	if (r < 0)
		gw_keys_free(keys);
	return r;
}

struct gw_key *
gw_keys_find(const struct gw_keys *keys, const char *presented)
{
	uint8_t h[32];
	SHA256((const unsigned char *)presented, strlen(presented), h);
	struct gw_key *found = NULL;
	for (size_t i = 0; i < keys->n; i++) {
		/* No early exit: every digest is compared. */
		bool eq = CRYPTO_memcmp(h, keys->v[i].hash, sizeof(h)) == 0;
		found = eq ? &keys->v[i] : found;
	}
	return found;
}

struct gw_key *
gw_keys_by_hash(const struct gw_keys *keys, const char *hex)
{
	for (size_t i = 0; i < keys->n; i++)
		if (strcmp(keys->v[i].hash_hex, hex) == 0)
			return &keys->v[i];
	return NULL;
}

bool
gw_key_may_use(const struct gw_key *k, const char *template_id)
{
	if (!k->templates)
		return true;
	for (size_t i = 0; i < k->n_templates; i++)
		if (strcmp(k->templates[i], template_id) == 0)
			return true;
	return false;
}
