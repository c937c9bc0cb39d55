/* Every string field of a protobuf-c message, whatever the message:
 * protobuf strings must be valid UTF-8 (other languages' libraries refuse
 * to decode a message with one that is not), and text from a guest must be
 * escaped before it is shown (common/text.h).  libc and libprotobuf-c. */
#ifndef VMF_PBTEXT_H
#define VMF_PBTEXT_H

#include <stdbool.h>
#include <protobuf-c/protobuf-c.h>

/* m's strings (nested messages too) made valid UTF-8: invalid sequences
 * become U+FFFD.  m must come from an unpack with the default allocator. */
void vmf_pb_fix_utf8(ProtobufCMessage *m);
/* m's strings escaped (vmf_escape): for a message whose strings are all
 * text to show (a guest's view of itself), not values to use.  m as above. */
void vmf_pb_escape_strings(ProtobufCMessage *m);
/* True when every string of m is valid UTF-8 (m is not changed). */
bool vmf_pb_strings_valid(const ProtobufCMessage *m);

#endif
