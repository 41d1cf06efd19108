/*
 * map-read PATH LENGTH OFFSET...: map LENGTH bytes of PATH (a device-dax
 * device or a file; MAP_SHARED, read-only) and load one byte at each
 * OFFSET, as any program would. Prints "OFFSET ok", or, when the load
 * raises SIGBUS, "OFFSET SIGBUS code=N addr=+0xA lsb=L" (si_code: 4 is
 * BUS_MCEERR_AR, 5 BUS_MCEERR_AO; si_addr as an offset into the mapping;
 * si_addr_lsb), then goes on with the next offset. Offsets and LENGTH take
 * 0x hex or decimal, LENGTH also a K/M/G suffix. After a SIGBUS it also
 * prints "load-to-signal N us": CLOCK_MONOTONIC from just before the load
 * to the handler (the lab's bench reads it).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static sigjmp_buf back;
static siginfo_t got;
static struct timespec loaded, signalled;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)ctx;
	clock_gettime(CLOCK_MONOTONIC, &signalled);
	got = *info;
	siglongjmp(back, 1);
}

static unsigned long long number(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 0);
	switch (*end) {
	case 'G': v <<= 10; /* fall through */
	case 'M': v <<= 10; /* fall through */
	case 'K': v <<= 10;
	}
	return v;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s PATH LENGTH OFFSET...\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror(argv[1]);
		return 2;
	}
	size_t length = number(argv[2]);
	volatile unsigned char *p = mmap(NULL, length, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
	sigaction(SIGBUS, &sa, NULL);
	for (int i = 3; i < argc; i++) {
		unsigned long long off = number(argv[i]);
		if (sigsetjmp(back, 1) == 0) {
			clock_gettime(CLOCK_MONOTONIC, &loaded);
			unsigned char c = p[off];
			(void)c;
			printf("%#llx ok\n", off);
		} else {
			printf("%#llx SIGBUS code=%d addr=+%#llx lsb=%d\n", off, got.si_code,
			       (unsigned long long)((uintptr_t)got.si_addr - (uintptr_t)p),
			       got.si_addr_lsb);
			printf("load-to-signal %lld us\n",
			       ((long long)(signalled.tv_sec - loaded.tv_sec) * 1000000000LL +
				(signalled.tv_nsec - loaded.tv_nsec)) / 1000);
		}
		fflush(stdout);
	}
	return 0;
}
