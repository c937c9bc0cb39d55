/* A caller's qcow2 image header, checked before a VMM opens it
 * (factory/qcow2.c). */
#ifndef VMF_QCOW2_H
#define VMF_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct vmf_qcow2_info {
	uint32_t version, cluster_bits;
	uint64_t size;       /* virtual size, bytes */
	bool backing;        /* names a backing file (which is never opened) */
};

/* buf: the first len bytes of the image (the header and its extensions;
 * shorter when the file is).  0 when a VMM may open it: a qcow2 version 2
 * or 3 header, not encrypted, naming no external data file (incompatible
 * feature bit 2 or the data_file extension), no incompatible feature this
 * code does not know, its extensions inside the first cluster.  Otherwise a
 * negative errno and a sentence naming path and the reason. */
int vmf_qcow2_check(const uint8_t *buf, size_t len, const char *path, struct vmf_qcow2_info *info,
		    struct vmf_error *err);
/* How many bytes vmf_qcow2_check needs, from a header's first 24: up to
 * the backing file name or the end of the first cluster (at most 2 MiB);
 * 0 when they are no qcow2 header to go by. */
uint64_t vmf_qcow2_header_span(const uint8_t *buf, size_t len);
/* vmf_qcow2_check on the image open at fd, read with pread (bounded by
 * the span above). */
int vmf_qcow2_check_fd(int fd, const char *path, struct vmf_qcow2_info *info, struct vmf_error *err);

#endif
