/*
 * bus-clear BUS REGION LENGTH: the bus ioctls ndctl uses, called directly.
 * Finds the first badblock of REGION (/sys/bus/nd/devices/REGION/badblocks
 * and resource), asks ND_CMD_ARS_CAP for that address (status,
 * clear_err_unit), then ND_CMD_CLEAR_ERROR for LENGTH bytes there, and
 * prints what the platform says it cleared:
 *   cap status=0 clear_err_unit=256
 *   clear address=0x... length=512 status=0 cleared=512
 */
#include <fcntl.h>
#include <linux/ndctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

static unsigned long long read_number(const char *path, int base)
{
	FILE *f = fopen(path, "r");
	unsigned long long v = 0;
	if (!f || fscanf(f, base == 16 ? "%llx" : "%llu", &v) != 1) {
		fprintf(stderr, "cannot read %s\n", path);
		exit(2);
	}
	fclose(f);
	return v;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s BUS REGION LENGTH\n", argv[0]);
		return 2;
	}
	char path[256];
	snprintf(path, sizeof(path), "/sys/bus/nd/devices/%s/resource", argv[2]);
	unsigned long long start = read_number(path, 16);
	snprintf(path, sizeof(path), "/sys/bus/nd/devices/%s/badblocks", argv[2]);
	unsigned long long sector = read_number(path, 10);
	unsigned long long address = start + sector * 512;

	snprintf(path, sizeof(path), "/dev/%s", argv[1]);
	int fd = open(path, O_RDWR);
	if (fd < 0) {
		perror(path);
		return 2;
	}
	struct nd_cmd_ars_cap cap = { .address = address, .length = 512 };
	if (ioctl(fd, ND_IOCTL_ARS_CAP, &cap) < 0) {
		perror("ND_IOCTL_ARS_CAP");
		return 1;
	}
	printf("cap status=%u clear_err_unit=%u\n", cap.status, cap.clear_err_unit);
	struct nd_cmd_clear_error clear = { .address = address, .length = strtoull(argv[3], NULL, 0) };
	if (ioctl(fd, ND_IOCTL_CLEAR_ERROR, &clear) < 0) {
		perror("ND_IOCTL_CLEAR_ERROR");
		return 1;
	}
	printf("clear address=%#llx length=%llu status=%u cleared=%llu\n",
	       (unsigned long long)clear.address, (unsigned long long)clear.length,
	       clear.status, (unsigned long long)clear.cleared);
	return 0;
}
