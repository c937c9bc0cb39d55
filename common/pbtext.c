#include "pbtext.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

/* Calls fn on each string field of m and of the messages in it; stops
 * (false) when fn returns false. */
static bool
walk(ProtobufCMessage *m, bool (*fn)(char **, void *), void *arg, unsigned depth)
{
	if (!m || depth > 32)
		return true;
	const ProtobufCMessageDescriptor *d = m->descriptor;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		char *base = (char *)m;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(size_t *)(base + f->quantifier_offset);
			void **v = *(void ***)(base + f->offset);
			for (size_t k = 0; v && k < n; k++) {
				bool go = f->type == PROTOBUF_C_TYPE_STRING ? fn((char **)&v[k], arg)
									    : walk(v[k], fn, arg, depth + 1);
				if (!go)
					return false;
			}
			continue;
		}
		if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && *(uint32_t *)(base + f->quantifier_offset) != f->id)
			continue;
		bool go = f->type == PROTOBUF_C_TYPE_STRING ? fn((char **)(base + f->offset), arg)
							    : walk(*(ProtobufCMessage **)(base + f->offset), fn, arg, depth + 1);
		if (!go)
			return false;
	}
	return true;
}

/* Replaces *s (from an unpack) with new, a malloc'ed string.  Only a
 * string from the wire is ever replaced, never a descriptor's default
 * (that one is "", valid and safe): it was allocated by the unpack, with
 * the default allocator's malloc. */
static void
replace_string(char **s, char *new)
{
	free(*s);
	*s = new;
}

static bool
fix_string(char **s, void *arg)
{
	(void)arg;
	size_t n = *s ? strlen(*s) : 0;
	if (!n || vmf_utf8_valid(*s, n))
		return true;
	/* At most three bytes (U+FFFD) for each one replaced. */
	char *fixed = malloc(3 * n + 1);
	if (!fixed) {
		for (char *p = *s; *p; p++)
			if ((unsigned char)*p >= 0x80)
				*p = '?';
		return true;
	}
	vmf_utf8_fix(*s, n, fixed, 3 * n + 1);
	replace_string(s, fixed);
	return true;
}

static bool
escape_string(char **s, void *arg)
{
	(void)arg;
	if (!*s || vmf_text_is_safe(*s))
		return true;
	/* Each byte becomes at most four (\xNN). */
	size_t n = 4 * strlen(*s) + 1;
	char *esc = malloc(n);
	if (!esc) {
		**s = '\0';
		return true;
	}
	vmf_escape(*s, esc, n, 0);
	replace_string(s, esc);
	return true;
}

static bool
check_string(char **s, void *arg)
{
	(void)arg;
	return !*s || vmf_utf8_valid(*s, strlen(*s));
}

void
vmf_pb_fix_utf8(ProtobufCMessage *m)
{
	walk(m, fix_string, NULL, 0);
}

void
vmf_pb_escape_strings(ProtobufCMessage *m)
{
	walk(m, escape_string, NULL, 0);
}

bool
vmf_pb_strings_valid(const ProtobufCMessage *m)
{
	return walk((ProtobufCMessage *)m, check_string, NULL, 0);
}
