/*
 * mmap-read FILE OFFSET...: map FILE (MAP_SHARED, read-only) and read one
 * byte at each OFFSET; print "OFFSET ok" or, when the read raises SIGBUS,
 * "OFFSET SIGBUS code=N" (siginfo's si_code: 2 is BUS_ADRERR, 4
 * BUS_MCEERR_AR) and go on with the next offset.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static sigjmp_buf back;
static volatile int code;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)ctx;
	code = info->si_code;
	siglongjmp(back, 1);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s FILE OFFSET...\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror(argv[1]);
		return 2;
	}
	off_t size = lseek(fd, 0, SEEK_END);
	volatile unsigned char *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
	sigaction(SIGBUS, &sa, NULL);
	for (int i = 2; i < argc; i++) {
		long long off = atoll(argv[i]);
		if (sigsetjmp(back, 1) == 0) {
			unsigned char c = p[off];
			(void)c;
			printf("%lld ok\n", off);
		} else {
			printf("%lld SIGBUS code=%d\n", off, code);
		}
		fflush(stdout);
	}
	return 0;
}
