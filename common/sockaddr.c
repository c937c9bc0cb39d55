#include "sockaddr.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

int
vmf_unix_addr(struct sockaddr_un *sa, socklen_t *len, const char *path, struct vmf_error *err)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (!path || !*path)
		return vmf_err(err, EINVAL, "no socket path given");
	size_t n = strlen(path);
	if (n >= sizeof(sa->sun_path))
		return vmf_err(err, ENAMETOOLONG, "socket path %s is longer than %zu bytes", path,
			       sizeof(sa->sun_path) - 1);
	memcpy(sa->sun_path, path, n + 1);
	if (len)
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	return 0;
}
