/* Text that came from somewhere untrusted (a guest above all): made valid
 * UTF-8 before it goes into a protobuf string, escaped before it reaches
 * a terminal or a log line.  libc only: the client library and the guest
 * agent link it. */
#ifndef VMF_TEXT_H
#define VMF_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* Length of the longest prefix of s[0..n) that is valid UTF-8 (no overlong
 * forms, no surrogates, nothing above U+10FFFF), cut at a character. */
size_t vmf_utf8_valid_len(const char *s, size_t n);
static inline bool
vmf_utf8_valid(const char *s, size_t n)
{
	return vmf_utf8_valid_len(s, n) == n;
}

/* s[0..n) with every invalid sequence replaced by U+FFFD, NUL-terminated
 * into out (size outn > 0), cut at a character boundary when it does not
 * fit.  Returns the length written. */
size_t vmf_utf8_fix(const char *s, size_t n, char *out, size_t outn);

/* Escaping (vmf_escape's flags). */
#define VMF_ESC_BACKSLASH 1u   /* '\' as "\\" (a log line's logfmt value) */
#define VMF_ESC_QUOTE 2u       /* '"' as "\"" */
#define VMF_ESC_NEWLINE 4u     /* '\n' kept as it is, "\r\n" as '\n' (lines of a message or a console) */

/* s as printable text, NUL-terminated into out (size outn > 0): every C0
 * control byte and DEL as \n, \t, \r or \xNN, every byte that is not part
 * of valid UTF-8 as \xNN, C1 controls and the characters that reorder or
 * break a line on a terminal (U+2028/2029, the bidirectional overrides and
 * isolates, U+200E/200F, U+FEFF) as \uNNNN; the rest as it is.  An escape is
 * never cut: what does not fit ends the output, which then ends in "...".
 * Returns the length written. */
size_t vmf_escape(const char *s, char *out, size_t outn, unsigned flags);
/* The same for n bytes that may hold NULs (each "\x00"): a log's tail. */
size_t vmf_escape_n(const char *s, size_t n, char *out, size_t outn, unsigned flags);

/* True when vmf_escape would return s unchanged (no flags). */
bool vmf_text_is_safe(const char *s);

#endif
