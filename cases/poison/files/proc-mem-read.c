/*
 * proc-mem-read PATH LENGTH TOUCH OFFSET: map LENGTH bytes of PATH
 * (MAP_SHARED, read-only), load the byte at TOUCH (so the page is mapped),
 * then read 64 bytes at OFFSET of the mapping through /proc/self/mem, which
 * makes the kernel copy them (fs/proc/base.c mem_rw() ->
 * access_remote_vm()). Prints "read N" or the error.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s PATH LENGTH TOUCH OFFSET\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror(argv[1]);
		return 2;
	}
	size_t length = strtoull(argv[2], NULL, 0);
	volatile unsigned char *p = mmap(NULL, length, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	unsigned char c = p[strtoull(argv[3], NULL, 0)];
	(void)c;
	int mem = open("/proc/self/mem", O_RDONLY);
	if (mem < 0) {
		perror("/proc/self/mem");
		return 2;
	}
	unsigned char buf[64];
	ssize_t n = pread(mem, buf, sizeof buf, (off_t)(uintptr_t)(p + strtoull(argv[4], NULL, 0)));
	if (n < 0) {
		perror("pread /proc/self/mem");
		return 1;
	}
	printf("read %zd\n", n);
	return 0;
}
