#include "text.h"

#include <stdint.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at p (1 to 4), its code point in *cp;
 * 0 when p does not start one. */
static size_t
decode(const unsigned char *p, size_t n, uint32_t *cp)
{
	unsigned char c = p[0];
	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	size_t len;
	uint32_t v, min;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2, v = c & 0x1f, min = 0x80;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3, v = c & 0x0f, min = 0x800;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4, v = c & 0x07, min = 0x10000;
	else
		return 0;
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (p[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return len;
}

size_t
vmf_utf8_valid_len(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		uint32_t cp;
		size_t k = decode(p + i, n - i, &cp);
		if (!k)
			break;
		i += k;
	}
	return i;
}

size_t
vmf_utf8_fix(const char *s, size_t n, char *out, size_t outn)
{
	static const char repl[] = "\xef\xbf\xbd";
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, o = 0;
	while (i < n) {
		uint32_t cp;
		size_t k = decode(p + i, n - i, &cp);
		const char *piece = k ? s + i : repl;
		size_t plen = k ? k : 3;
		if (o + plen + 1 > outn)
			break;
		memcpy(out + o, piece, plen);
		o += plen;
		i += k ? k : 1;
	}
	out[o] = '\0';
	return o;
}

/* Characters that a terminal acts on or that change how the rest of a line
 * reads: the C1 controls, line and paragraph separators, the directional
 * marks, embeddings, overrides and isolates, and the byte order mark. */
static bool
is_format_char(uint32_t cp)
{
	return (cp >= 0x80 && cp <= 0x9f) || cp == 0x200e || cp == 0x200f || (cp >= 0x2028 && cp <= 0x202e) ||
	       (cp >= 0x2066 && cp <= 0x2069) || cp == 0xfeff;
}

/* The escape for the character at p (its valid length k, 0 when p starts
 * no valid sequence) into buf; its length, 0 when it needs none. */
static size_t
escape_one(const unsigned char *p, size_t k, uint32_t cp, unsigned flags, char buf[8])
{
	static const char hex[] = "0123456789abcdef";
	if (!k) {
		buf[0] = '\\', buf[1] = 'x', buf[2] = hex[p[0] >> 4], buf[3] = hex[p[0] & 15];
		return 4;
	}
	if (cp == '\\' && (flags & VMF_ESC_BACKSLASH))
		return buf[0] = '\\', buf[1] = '\\', 2;
	if (cp == '"' && (flags & VMF_ESC_QUOTE))
		return buf[0] = '\\', buf[1] = '"', 2;
	if (cp == '\n' && (flags & VMF_ESC_NEWLINE))
		return 0;
	if (cp == '\n')
		return buf[0] = '\\', buf[1] = 'n', 2;
	if (cp == '\t')
		return buf[0] = '\\', buf[1] = 't', 2;
	if (cp == '\r')
		return buf[0] = '\\', buf[1] = 'r', 2;
	if (cp < 0x20 || cp == 0x7f) {
		buf[0] = '\\', buf[1] = 'x', buf[2] = hex[cp >> 4], buf[3] = hex[cp & 15];
		return 4;
	}
	if (is_format_char(cp)) {
		buf[0] = '\\', buf[1] = 'u';
		for (int i = 0; i < 4; i++)
			buf[2 + i] = hex[(cp >> (12 - 4 * i)) & 15];
		return 6;
	}
	return 0;
}

size_t
vmf_escape(const char *s, char *out, size_t outn, unsigned flags)
{
	return vmf_escape_n(s ? s : "", s ? strlen(s) : 0, out, outn, flags);
}

size_t
vmf_escape_n(const char *s, size_t n, char *out, size_t outn, unsigned flags)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, o = 0;
	while (i < n) {
		/* A console's "\r\n" is a line end. */
		if ((flags & VMF_ESC_NEWLINE) && p[i] == '\r' && i + 1 < n && p[i + 1] == '\n') {
			i++;
			continue;
		}
		uint32_t cp = 0;
		size_t k = decode(p + i, n - i, &cp);
		char buf[8];
		size_t e = escape_one(p + i, k, cp, flags, buf);
		const char *piece = e ? buf : (const char *)p + i;
		size_t plen = e ? e : k;
		/* Room for the piece, and for "..." should the rest not fit. */
		bool last = i + (k ? k : 1) == n;
		if (o + plen + (last ? 0 : 3) + 1 > outn) {
			if (o + 4 <= outn) {
				memcpy(out + o, "...", 3);
				o += 3;
			}
			break;
		}
		memcpy(out + o, piece, plen);
		o += plen;
		i += k ? k : 1;
	}
	out[o] = '\0';
	return o;
}

bool
vmf_text_is_safe(const char *s)
{
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	size_t n = strlen((const char *)p), i = 0;
	while (i < n) {
		uint32_t cp = 0;
		size_t k = decode(p + i, n - i, &cp);
		char buf[8];
		if (escape_one(p + i, k, cp, 0, buf))
			return false;
		i += k;
	}
	return true;
}
