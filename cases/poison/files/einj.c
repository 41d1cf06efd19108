/*
 * einj TEST PATH LENGTH OFFSET [N]: the load paths of ras-tools'
 * einj_mem_uc (intel/ras-tools), against a poisoned line the lab placed at
 * OFFSET of PATH (a device-dax device or a file on a DAX filesystem),
 * mapped MAP_SHARED for LENGTH bytes. It prints one line per event, with
 * addresses as offsets into the mapping ("+0x..."):
 *   "SIGBUS code=C addr=+A lsb=L"   a SIGBUS (si_code 4 BUS_MCEERR_AR,
 *                                   5 BUS_MCEERR_AO), from the handler
 *   "TEST ok [value=V]"             the access completed
 *   "SYSCALL ret=R errno=NAME"      a system call's result
 * TEST:
 *   single   load one byte at OFFSET
 *   double   load OFFSET, then OFFSET+N (another line of the same page)
 *   split    store distinct bytes around OFFSET, then an 8-byte load that
 *            starts 4 bytes before OFFSET (half in the line before, half
 *            in the poisoned one)
 *   store    store one byte at OFFSET (no load)
 *   memcpy   memcpy() N bytes (default 4096) from OFFSET's page
 *   write    write(2) N bytes (default 4096) from OFFSET to a new file
 *            in /tmp (tmpfs): the kernel reads the user buffer (copy-in)
 *   futex    futex(FUTEX_WAIT) on the word at OFFSET (the kernel loads it)
 *   mlock    mlock() the whole mapping, then load OFFSET
 *   repair   load OFFSET; the SIGBUS handler maps fresh anonymous memory
 *            filled with 0x5a over [si_addr, si_addr + 2^lsb) and returns,
 *            so the load runs again and prints the value it got
 *   mremap   mremap(MREMAP_FIXED) the mapping to a new address, then load
 *            OFFSET there (addresses relative to the new mapping)
 *   alias    map the same range a second time, at another address, and
 *            load OFFSET through that one (si_addr still printed relative
 *            to the first mapping)
 *   odirect  pwrite(2) N bytes (default 4096) from OFFSET to the block
 *            device named by the 6th argument, O_DIRECT (the kernel
 *            reads the pinned page through its direct map)
 *   vmsplice vmsplice(2) N bytes from OFFSET into a pipe, then read(2)
 *            them out (the pipe's reader copies from the page)
 *   fork     (a file) map it MAP_PRIVATE and write its first page, so
 *            the mapping has an anon_vma and fork() copies its page
 *            tables (mm/memory.c, vma_needs_copy()); the child loads
 *            OFFSET through the copied entry, the parent waits
 *   late     map and fault in, print "late mapped", wait for the file
 *            /tmp/einj-go, then load OFFSET: the mapping exists before
 *            the line is poisoned
 * Before the access every TEST but store loads three clean bytes: the
 * mapping's first, the last of OFFSET's page and the line before OFFSET,
 * so the page tables map those pages (the kernel's own loads then do not
 * fault first, and mremap has page tables to move). The poisoned range
 * must start at OFFSET and end before the end of its page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static sigjmp_buf back;
/* What the handler does: long-jump (around a load), return (after a
 * system call, or to rerun a repaired load); otherwise the SIGBUS was not
 * expected (a pre-touch) and the program exits 3. */
static int jump, in_syscall, repair;
static volatile unsigned char *base;
/* What si_addr is printed relative to (the first mapping, for alias). */
static volatile unsigned char *shown;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)ctx;
	printf("SIGBUS code=%d addr=+%#llx lsb=%d\n", info->si_code,
	       (unsigned long long)((uintptr_t)info->si_addr - (uintptr_t)shown), info->si_addr_lsb);
	fflush(stdout);
	if (repair) {
		size_t size = (size_t)1 << info->si_addr_lsb;
		void *at = (void *)((uintptr_t)info->si_addr & ~(size - 1));
		void *p = mmap(at, size, PROT_READ | PROT_WRITE,
			       MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			perror("repair mmap");
			_exit(3);
		}
		memset(p, 0x5a, size);
		return; /* the load runs again */
	}
	if (jump)
		siglongjmp(back, 1);
	if (!in_syscall) {
		printf("unexpected SIGBUS\n");
		_exit(3);
	}
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

static void result(const char *what, long ret)
{
	printf("%s ret=%ld errno=%s\n", what, ret, ret < 0 ? strerrorname_np(errno) : "0");
}

/* Load one byte; "TEST ok value=V" or the handler's line. */
static void load(const char *test, size_t off)
{
	jump = 1;
	if (sigsetjmp(back, 1) == 0) {
		unsigned char c = base[off];
		printf("%s ok value=%#x\n", test, c);
	}
	jump = 0;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: %s TEST PATH LENGTH OFFSET [N]\n", argv[0]);
		return 2;
	}
	const char *test = argv[1];
	size_t length = number(argv[3]), off = number(argv[4]);
	size_t n = argc > 5 ? number(argv[5]) : 4096;
	int fd = open(argv[2], O_RDWR);
	if (fd < 0) {
		perror(argv[2]);
		return 2;
	}
	/* device-dax mappings must be aligned to the device's alignment:
	 * reserve twice the length and map at an aligned address in it. */
	size_t align = length >= (1UL << 30) ? (1UL << 30) : (2UL << 20);
	uintptr_t hole = (uintptr_t)mmap(NULL, length + align, PROT_NONE,
					  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uintptr_t at = (hole + align - 1) & ~(align - 1);
	base = mmap((void *)at, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
	if (base == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	shown = base;
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_NODEFER };
	sigaction(SIGBUS, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (strcmp(test, "store") == 0) {
		base[off] = 0x11;
		printf("store ok\n");
		return 0;
	}
	/* Clean lines: the mapping's first byte, the last byte of OFFSET's
	 * page and the line before OFFSET, so those pages are mapped. */
	(void)base[0];
	(void)base[off | 4095];
	if (off >= 64)
		(void)base[off - 64];
	if (strcmp(test, "single") == 0) {
		load(test, off);
	} else if (strcmp(test, "double") == 0) {
		load(test, off);
		load(test, off + n);
	} else if (strcmp(test, "split") == 0) {
		/* Distinct bytes around the boundary (stores consume nothing),
		 * so the loaded value names its address. */
		for (int i = -64; i < 64; i++)
			base[off + i] = (unsigned char)(3 * i + 130);
		jump = 1;
		if (sigsetjmp(back, 1) == 0) {
			uint64_t v;
			/* one unaligned 8-byte load across the line boundary */
			__asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(base + off - 4) : "memory");
			printf("split ok value=%#llx\n", (unsigned long long)v);
		}
	} else if (strcmp(test, "memcpy") == 0) {
		static unsigned char buf[1 << 21];
		jump = 1;
		if (sigsetjmp(back, 1) == 0) {
			memcpy(buf, (const void *)(base + (off & ~4095UL)), n);
			printf("memcpy ok\n");
		}
	} else if (strcmp(test, "write") == 0) {
		int out = open("/tmp/einj-write", O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (out < 0) {
			perror("/tmp/einj-write");
			return 2;
		}
		in_syscall = 1;
		result("write", write(out, (const void *)(base + off), n));
	} else if (strcmp(test, "futex") == 0) {
		/* A value the word does not hold: a clean word gives EAGAIN. */
		in_syscall = 1;
		result("futex", syscall(SYS_futex, base + off, FUTEX_WAIT, 0x5eed5eed, NULL, NULL, 0));
	} else if (strcmp(test, "mlock") == 0) {
		result("mlock", mlock((const void *)base, length));
		load(test, off);
	} else if (strcmp(test, "repair") == 0) {
		repair = 1;
		unsigned char c = base[off];
		printf("repair ok value=%#x\n", c);
	} else if (strcmp(test, "mremap") == 0) {
		uintptr_t h2 = (uintptr_t)mmap(NULL, length + align, PROT_NONE,
					       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		void *to = (void *)((h2 + align - 1) & ~(align - 1));
		void *moved = mremap((void *)base, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, to);
		if (moved == MAP_FAILED) {
			perror("mremap");
			return 2;
		}
		printf("mremap moved by %s\n", moved == (void *)base ? "nothing" : "a new address");
		base = shown = moved;
		load(test, off);
	} else if (strcmp(test, "alias") == 0) {
		uintptr_t h2 = (uintptr_t)mmap(NULL, length + align, PROT_NONE,
					       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		void *to = (void *)((h2 + align - 1) & ~(align - 1));
		volatile unsigned char *second =
			mmap(to, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
		if (second == MAP_FAILED) {
			perror("mmap");
			return 2;
		}
		(void)second[0];
		(void)second[off | 4095];
		base = second; /* si_addr still shown relative to the first */
		load(test, off);
	} else if (strcmp(test, "odirect") == 0 && argc > 6) {
		int out = open(argv[6], O_WRONLY | O_DIRECT);
		if (out < 0) {
			perror(argv[6]);
			return 2;
		}
		result("pwrite", pwrite(out, (const void *)(base + off), n, 0));
	} else if (strcmp(test, "vmsplice") == 0) {
		static unsigned char buf[1 << 16];
		int p[2];
		if (pipe(p) != 0) {
			perror("pipe");
			return 2;
		}
		/* The reader's buffer is faulted in first: the copy then takes
		 * no page fault of its own in the middle of the load. */
		memset(buf, 0, sizeof(buf));
		struct iovec iov = { .iov_base = (void *)(base + off), .iov_len = n };
		result("vmsplice", vmsplice(p[1], &iov, 1, 0));
		result("read", read(p[0], buf, n));
	} else if (strcmp(test, "fork") == 0) {
		void *at2 = (void *)base;
		base = mmap(at2, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0);
		if (base == MAP_FAILED) {
			perror("mmap private");
			return 2;
		}
		shown = base;
		base[0] = 0x22; /* a private copy: the VMA gets its anon_vma */
		(void)base[off | 4095];
		(void)base[off - 64];
		pid_t child = fork();
		if (child == 0) {
			load(test, off);
			_exit(0);
		}
		int status = 0;
		waitpid(child, &status, 0);
		printf("child exit=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	} else if (strcmp(test, "late") == 0) {
		printf("late mapped\n");
		for (int i = 0; i < 6000 && access("/tmp/einj-go", F_OK) != 0; i++)
			usleep(10000);
		load(test, off);
	} else {
		fprintf(stderr, "unknown test %s\n", test);
		return 2;
	}
	return 0;
}
