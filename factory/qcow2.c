/* A caller's qcow2 image, checked before a VMM opens it (docs/security.md,
 * "Disks").  The header is the caller's: it can name files (a backing file,
 * an external data file) that QEMU would open itself, by path, as its own
 * user.  A backing file is never opened (the driver gives QEMU no backing
 * or its own node); an external data file is refused, and so is anything
 * this check does not know, since an unknown incompatible feature may be
 * one more way for the image to reach outside itself.  Every offset and
 * length comes from the file: all arithmetic is in 64 bits on values
 * bounded first, and nothing is read past the buffer. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2.h"

/* docs/interop/qcow2.txt of QEMU. */
#define QCOW2_MAGIC 0x514649fbu
#define V2_HEADER_LEN 72u
#define V3_HEADER_MIN 104u
#define MIN_CLUSTER_BITS 9u
#define MAX_CLUSTER_BITS 21u
#define INCOMPAT_DIRTY (1ull << 0)
#define INCOMPAT_CORRUPT (1ull << 1)
#define INCOMPAT_DATA_FILE (1ull << 2)
#define INCOMPAT_COMPRESSION (1ull << 3)
#define INCOMPAT_EXTL2 (1ull << 4)
#define INCOMPAT_KNOWN (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)
#define EXT_END 0x00000000u
#define EXT_DATA_FILE 0x44415441u

static uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t
get64(const uint8_t *p)
{
	return (uint64_t)get32(p) << 32 | get32(p + 4);
}

uint64_t
vmf_qcow2_header_span(const uint8_t *buf, size_t len)
{
	if (len < 24)
		return 0;
	uint32_t bits = get32(buf + 20);
	if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS)
		return 0;
	uint64_t end = 1ull << bits, bf = get64(buf + 8);
	return bf && bf < end ? bf : end;
}

int
vmf_qcow2_check(const uint8_t *buf, size_t len, const char *path, struct vmf_qcow2_info *info,
		struct vmf_error *err)
{
	memset(info, 0, sizeof(*info));
	if (len < V2_HEADER_LEN || get32(buf) != QCOW2_MAGIC)
		return vmf_err(err, EINVAL, "disk %s is not a qcow2 image (no qcow2 header)", path);
	uint32_t version = get32(buf + 4);
	if (version != 2 && version != 3)
		return vmf_err(err, EINVAL, "disk %s: qcow2 version %u is not supported (2 or 3)", path, version);
	uint32_t bits = get32(buf + 20);
	if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS)
		return vmf_err(err, EINVAL, "disk %s: qcow2 cluster_bits %u is outside %u to %u", path, bits,
			       MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
	uint64_t cluster = 1ull << bits;
	uint32_t crypt = get32(buf + 32);
	if (crypt != 0)
		return vmf_err(err, ENOTSUP, "disk %s is an encrypted qcow2 image (crypt_method %u): not supported",
			       path, crypt);
	uint64_t header_len = V2_HEADER_LEN, incompat = 0;
	if (version == 3) {
		if (len < V3_HEADER_MIN)
			return vmf_err(err, EINVAL, "disk %s: its qcow2 version 3 header is cut short", path);
		incompat = get64(buf + 72);
		header_len = get32(buf + 100);
		if (header_len < V3_HEADER_MIN || header_len > cluster || header_len % 8)
			return vmf_err(err, EINVAL, "disk %s: qcow2 header_length %llu is not a multiple of 8 between "
				       "%u and the cluster size", path, (unsigned long long)header_len, V3_HEADER_MIN);
	}
	if (incompat & INCOMPAT_DATA_FILE)
		return vmf_err(err, EPERM, "disk %s names an external data file (qcow2 incompatible feature "
			       "bit 2, data_file): QEMU would open that path itself, as its own user; attach the "
			       "data file as a raw disk instead, or convert the image (qemu-img convert -O qcow2)",
			       path);
	if (incompat & ~INCOMPAT_KNOWN)
		return vmf_err(err, ENOTSUP, "disk %s has qcow2 incompatible features unknown to vmfactory "
			       "(0x%llx): not attached", path, (unsigned long long)(incompat & ~INCOMPAT_KNOWN));
	uint64_t bf_off = get64(buf + 8), bf_len = get32(buf + 16);
	if (bf_off) {
		if (bf_off < header_len || bf_off >= cluster || bf_len == 0 || bf_len > 1023 ||
		    bf_len > cluster - bf_off)
			return vmf_err(err, EINVAL, "disk %s: its qcow2 backing file name lies outside the first "
				       "cluster or is longer than 1023 bytes", path);
		info->backing = true;
	}
	/* Header extensions, from the header's end to the backing file name
	 * or the end of the first cluster, as QEMU walks them.  Bytes past
	 * what the file holds read as zeros: the end marker. */
	uint64_t end = vmf_qcow2_header_span(buf, len);
	for (uint64_t off = header_len; off + 8 <= end && off + 8 <= len;) {
		uint32_t type = get32(buf + off), elen = get32(buf + off + 4);
		if (type == EXT_END)
			break;
		if (type == EXT_DATA_FILE)
			return vmf_err(err, EPERM, "disk %s names an external data file (qcow2 header extension "
				       "data_file): QEMU would open that path itself, as its own user; not attached",
				       path);
		uint64_t next = off + 8 + (((uint64_t)elen + 7) & ~7ull);
		if (next > end)
			return vmf_err(err, EINVAL, "disk %s: a qcow2 header extension (0x%08x) runs past the first "
				       "cluster", path, type);
		off = next;
	}
	info->version = version;
	info->cluster_bits = bits;
	info->size = get64(buf + 24);
	return 0;
}

int
vmf_qcow2_check_fd(int fd, const char *path, struct vmf_qcow2_info *info, struct vmf_error *err)
{
	uint8_t head[V3_HEADER_MIN];
	ssize_t n = pread(fd, head, sizeof(head), 0);
	if (n < 0)
		return vmf_err_sys(err, errno, "cannot read disk %s", path);
	uint64_t span = vmf_qcow2_header_span(head, (size_t)n);
	if (span == 0)
		return vmf_qcow2_check(head, (size_t)n, path, info, err);
	/* The header and its extensions: at most one cluster (2 MiB). */
	uint8_t *buf = malloc(span);
	if (!buf)
		return vmf_err(err, ENOMEM, "out of memory reading the header of disk %s", path);
	size_t got = 0;
	while (got < span && (n = pread(fd, buf + got, span - got, (off_t)got)) > 0)
		got += (size_t)n;
	int r = n < 0 ? vmf_err_sys(err, errno, "cannot read disk %s", path) : vmf_qcow2_check(buf, got, path, info, err);
	free(buf);
	return r;
}
