/*
 * A user's reproducer, brought by a case as C source: the lab compiles it
 * statically on the host and puts the program into the guest.
 *
 *   odirect-sectors DEVICE read|write SECTOR...
 *
 * One 512-byte pread() or pwrite() per sector, O_DIRECT, from a 4 KiB
 * aligned buffer (so the kernel never refuses it for alignment), and one
 * line per sector: "read 4097 EIO", "write 4097 ok".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s DEVICE read|write SECTOR...\n", argv[0]);
		return 2;
	}
	int writing = strcmp(argv[2], "write") == 0;
	int fd = open(argv[1], (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0) {
		perror(argv[1]);
		return 2;
	}
	void *buf;
	if (posix_memalign(&buf, 4096, 512) != 0)
		return 2;
	memset(buf, 0, 512);
	for (int i = 3; i < argc; i++) {
		long long sector = atoll(argv[i]);
		ssize_t n = writing ? pwrite(fd, buf, 512, sector * 512)
				    : pread(fd, buf, 512, sector * 512);
		if (n == 512)
			printf("%s %lld ok\n", argv[2], sector);
		else if (n < 0)
			printf("%s %lld %s\n", argv[2], sector,
			       errno == EIO ? "EIO" : strerror(errno));
		else
			printf("%s %lld short %zd\n", argv[2], sector, n);
	}
	return 0;
}
