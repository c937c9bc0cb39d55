/* Unix socket addresses, in one place: the length check is what every
 * caller must not forget (a longer path would be silently cut). */
#ifndef VMF_SOCKADDR_H
#define VMF_SOCKADDR_H

#include <sys/socket.h>
#include <sys/un.h>

#include "error.h"

/* Fills *sa with path and *len with the address length to pass to
 * bind/connect.  A path that does not fit sun_path (with its NUL) is
 * -ENAMETOOLONG; an empty one -EINVAL.  len may be NULL. */
int vmf_unix_addr(struct sockaddr_un *sa, socklen_t *len, const char *path, struct vmf_error *err);

#endif
