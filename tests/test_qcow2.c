/* The qcow2 header check (factory/qcow2.c) on crafted headers: what QEMU
 * accepts and names no other file passes; an external data file (the bit
 * or the extension alone), an unknown incompatible feature, encryption and
 * every malformed length are refused with a sentence; lengths near the
 * type limits neither overflow nor read past the buffer (ASan and valgrind
 * run this), nor do many random mutations of a valid header.  A real
 * image made by qemu-img with data_file= is refused too, where qemu-img is
 * installed. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qcow2.h"
#include "testlib.h"

#define CL 65536u

static void
put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void
put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)(v >> 32));
	put32(p + 4, (uint32_t)v);
}

/* A version 3 header as qemu-img writes it (64 KiB clusters, 1 GiB),
 * header_length 112, then the end-of-extensions marker; in a buffer of
 * one cluster. */
static uint8_t *
v3(void)
{
	uint8_t *b = calloc(1, CL);
	ck_assert_ptr_nonnull(b);
	put32(b, 0x514649fb);
	put32(b + 4, 3);
	put32(b + 20, 16);
	put64(b + 24, 1ull << 30);
	put32(b + 36, 2);
	put64(b + 40, 3 * CL);
	put64(b + 48, CL);
	put32(b + 56, 1);
	put32(b + 96, 4);
	put32(b + 100, 112);
	return b;
}

/* An extension at off: type, length, data of len bytes (0x41); the offset
 * after it (8-aligned). */
static size_t
ext(uint8_t *b, size_t off, uint32_t type, uint32_t len)
{
	put32(b + off, type);
	put32(b + off + 4, len);
	memset(b + off + 8, 0x41, len);
	return off + 8 + ((len + 7u) & ~7u);
}

static int
check(const uint8_t *b, size_t len, struct vmf_qcow2_info *qi, struct vmf_error *e)
{
	memset(e, 0, sizeof(*e));
	return vmf_qcow2_check(b, len, "/x/img.qcow2", qi, e);
}

static void
refused(const uint8_t *b, size_t len, int code, const char *words)
{
	struct vmf_qcow2_info qi;
	struct vmf_error e;
	ck_assert_int_lt(check(b, len, &qi, &e), 0);
	ck_assert_msg(e.code == code, "errno %d (want %d): %s", e.code, code, e.msg);
	ck_assert_msg(strstr(e.msg, "/x/img.qcow2") && strstr(e.msg, words), "'%s' lacks '%s'", e.msg, words);
}

START_TEST(plain_images_pass)
{
	struct vmf_qcow2_info qi;
	struct vmf_error e;
	uint8_t *b = v3();
	ck_assert_msg(check(b, CL, &qi, &e) == 0, "%s", e.msg);
	ck_assert_uint_eq(qi.version, 3);
	ck_assert_uint_eq(qi.size, 1ull << 30);
	ck_assert(!qi.backing);
	/* Known extensions (backing format, feature table, bitmaps) and
	 * harmless incompatible bits (dirty, corrupt, compression, extended
	 * L2) pass; a backing file is noted, never followed. */
	size_t off = ext(b, 112, 0xe2792aca, 5);
	off = ext(b, off, 0x6803f857, 48);
	off = ext(b, off, 0x23852875, 24);
	put64(b + 72, 1 | 2 | 8 | 16);
	put64(b + 8, 1024);
	put32(b + 16, 20);
	memcpy(b + 1024, "/etc/shadow-whatever", 20);
	ck_assert_msg(check(b, CL, &qi, &e) == 0, "%s", e.msg);
	ck_assert(qi.backing);
	/* Version 2: 72-byte header, no feature fields. */
	memset(b + 72, 0, CL - 72);
	put32(b + 4, 2);
	put64(b + 8, 0);
	put32(b + 16, 0);
	ck_assert_msg(check(b, CL, &qi, &e) == 0, "%s", e.msg);
	ck_assert_uint_eq(qi.version, 2);
	/* A file shorter than its first cluster: what is not there reads as
	 * zeros, the end of the extensions. */
	ck_assert_msg(check(b, 72, &qi, &e) == 0, "%s", e.msg);
	free(b);
}
END_TEST

START_TEST(data_file_refused)
{
	uint8_t *b = v3();
	put64(b + 72, 4);
	refused(b, CL, EPERM, "external data file");
	refused(b, CL, EPERM, "bit 2");
	/* The extension alone, after others, also when it is the last thing
	 * in the cluster. */
	put64(b + 72, 0);
	size_t off = ext(b, 112, 0xe2792aca, 3);
	ext(b, off, 0x44415441, 11);
	refused(b, CL, EPERM, "data_file");
	memset(b + 112, 0, CL - 112);
	ext(b, CL - 16, 0x44415441, 8);
	put32(b + 100, 112);
	put32(b + 112, 0x12345678);
	put32(b + 116, CL - 16 - 120);
	refused(b, CL, EPERM, "external data file");
	free(b);
}
END_TEST

START_TEST(unknown_and_malformed_refused)
{
	uint8_t *b = v3();
	put64(b + 72, 1ull << 5);
	refused(b, CL, ENOTSUP, "unknown");
	put64(b + 72, 1ull << 63);
	refused(b, CL, ENOTSUP, "0x8000000000000000");
	put64(b + 72, 0);
	put32(b + 32, 2);
	refused(b, CL, ENOTSUP, "encrypted");
	put32(b + 32, 0);
	static const uint32_t bad_bits[] = { 0, 8, 22, 31, 32, 63, 64, 0xffffffffu };
	for (size_t i = 0; i < sizeof(bad_bits) / sizeof(bad_bits[0]); i++) {
		put32(b + 20, bad_bits[i]);
		refused(b, CL, EINVAL, "cluster_bits");
	}
	put32(b + 20, 16);
	static const uint32_t bad_len[] = { 0, 72, 103, 105, CL + 8, 0xfffffff8u };
	for (size_t i = 0; i < sizeof(bad_len) / sizeof(bad_len[0]); i++) {
		put32(b + 100, bad_len[i]);
		refused(b, CL, EINVAL, "header_length");
	}
	put32(b + 100, 112);
	put32(b + 4, 4);
	refused(b, CL, EINVAL, "version 4");
	put32(b + 4, 3);
	refused(b, 100, EINVAL, "cut short");
	refused(b, 71, EINVAL, "not a qcow2 image");
	b[0] = 'X';
	refused(b, CL, EINVAL, "not a qcow2 image");
	b[0] = 'Q';
	/* Lengths at the type limits: no wrap-around, no read past the end. */
	static const uint32_t big[] = { 0xffffffffu, 0xfffffff9u, CL, CL - 120 + 1 };
	for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
		memset(b + 112, 0, 16);
		put32(b + 112, 0x12345678);
		put32(b + 116, big[i]);
		refused(b, CL, EINVAL, "runs past");
	}
	memset(b + 112, 0, 16);
	static const uint64_t bad_bf[][2] = { { 8, 10 }, { CL, 10 }, { CL - 4, 10 }, { 1024, 0 }, { 1024, 1024 },
					      { ~0ull, 1 }, { 1ull << 63, 0xffffffffu } };
	for (size_t i = 0; i < sizeof(bad_bf) / sizeof(bad_bf[0]); i++) {
		put64(b + 8, bad_bf[i][0]);
		put32(b + 16, (uint32_t)bad_bf[i][1]);
		refused(b, CL, EINVAL, "backing file name");
	}
	free(b);
}
END_TEST

/* Random bytes over a valid header with extensions, many times: every
 * answer is 0 or a refusal with a sentence, and nothing reads out of
 * bounds (the sanitizers and valgrind would say). */
START_TEST(mutations_stay_bounded)
{
	uint8_t *b = v3();
	size_t off = ext(b, 112, 0xe2792aca, 5);
	ext(b, off, 0x6803f857, 48);
	uint8_t *m = malloc(CL);
	ck_assert_ptr_nonnull(m);
	unsigned seed = 24;
	int passed = 0;
	for (int round = 0; round < 20000; round++) {
		memcpy(m, b, CL);
		int flips = 1 + (int)(rand_r(&seed) % 8);
		for (int f = 0; f < flips; f++)
			m[rand_r(&seed) % 256] = (uint8_t)rand_r(&seed);
		size_t len = round % 3 ? CL : (size_t)(rand_r(&seed) % 512);
		/* A copy of exactly len bytes: reading past it is caught. */
		uint8_t *exact = malloc(len ? len : 1);
		memcpy(exact, m, len);
		struct vmf_qcow2_info qi;
		struct vmf_error e;
		int r = check(exact, len, &qi, &e);
		ck_assert(r == 0 || (r < 0 && e.code > 0 && strstr(e.msg, "/x/img.qcow2")));
		passed += r == 0;
		if (r == 0 && qi.version == 3)
			ck_assert(!(exact[79] & 4));
		free(exact);
	}
	printf("mutated headers: %d of 20000 pass\n", passed);
	free(m);
	free(b);
}
END_TEST

/* From a file: only the first cluster is read (an extension QEMU would not
 * read either does not count), and the image qemu-img makes with an
 * external data file is refused. */
START_TEST(from_a_file)
{
	char dir[] = "/tmp/vmf-qcow2.XXXXXX", img[64], data[64], cmd[300];
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(img, sizeof img, "%s/a.qcow2", dir);
	uint8_t *b = v3();
	put32(b + 20, 9);   /* 512-byte clusters */
	put32(b + 100, 112);
	int fd = open(img, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, b, 4096, 0), 4096);
	uint8_t x[16] = { 0 };
	put32(x, 0x44415441);
	put32(x + 4, 8);
	ck_assert_int_eq(pwrite(fd, x, 16, 1024), 16);   /* past the first cluster */
	struct vmf_qcow2_info qi;
	struct vmf_error e = {0};
	ck_assert_msg(vmf_qcow2_check_fd(fd, img, &qi, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(pwrite(fd, x, 16, 112), 16);    /* inside it */
	ck_assert_int_lt(vmf_qcow2_check_fd(fd, img, &qi, &e), 0);
	ck_assert_msg(strstr(e.msg, "external data file"), "%s", e.msg);
	ck_assert_int_eq(ftruncate(fd, 20), 0);
	ck_assert_int_lt(vmf_qcow2_check_fd(fd, img, &qi, &e), 0);
	ck_assert_msg(strstr(e.msg, "not a qcow2 image"), "%s", e.msg);
	close(fd);
	free(b);
	snprintf(data, sizeof data, "%s/data", dir);
	snprintf(cmd, sizeof cmd, "qemu-img create -q -f qcow2 -o data_file=%s,data_file_raw=on %s/b.qcow2 1M", data, dir);
	if (access("/usr/bin/qemu-img", X_OK) == 0) {
		ck_assert_int_eq(system(cmd), 0);
		snprintf(img, sizeof img, "%s/b.qcow2", dir);
		fd = open(img, O_RDONLY | O_CLOEXEC);
		ck_assert_int_lt(vmf_qcow2_check_fd(fd, img, &qi, &e), 0);
		ck_assert_msg(e.code == EPERM && strstr(e.msg, "external data file"), "%s", e.msg);
		close(fd);
		snprintf(cmd, sizeof cmd, "qemu-img create -q -f qcow2 %s/c.qcow2 1M", dir);
		ck_assert_int_eq(system(cmd), 0);
		snprintf(img, sizeof img, "%s/c.qcow2", dir);
		fd = open(img, O_RDONLY | O_CLOEXEC);
		ck_assert_msg(vmf_qcow2_check_fd(fd, img, &qi, &e) == 0, "%s", e.msg);
		ck_assert_uint_eq(qi.size, 1 << 20);
		close(fd);
	} else {
		printf("qemu-img (qemu-utils) is not installed: images made by it not checked\n");
	}
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("qcow2");
	TCase *t = tcase_create("qcow2");
	tcase_add_test(t, plain_images_pass);
	tcase_add_test(t, data_file_refused);
	tcase_add_test(t, unknown_and_malformed_refused);
	tcase_add_test(t, mutations_stay_bounded);
	tcase_add_test(t, from_a_file);
	suite_add_tcase(s, t);
	return vmf_test_run(s);
}
