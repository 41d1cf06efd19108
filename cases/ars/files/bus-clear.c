/*
 * bus-clear BUS REGION LENGTH: the bus ioctls ndctl uses, called directly.
 * Finds the first badblock of REGION (/sys/bus/nd/devices/REGION/badblocks
 * and resource), then:
 *   ND_CMD_ARS_CAP for that address   -> cap status=.. clear_err_unit=256
 *   ND_CMD_ARS_START over the region, ND_CMD_ARS_STATUS until it is done
 *                                     -> ars records=N, record address=.. length=..
 *   ND_CMD_CLEAR_ERROR, LENGTH bytes  -> clear address=.. length=512 status=0 cleared=512
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

	snprintf(path, sizeof(path), "/sys/bus/nd/devices/%s/size", argv[2]);
	struct nd_cmd_ars_start start_cmd = {
		.address = start,
		.length = read_number(path, 10),
		.type = ND_ARS_PERSISTENT,
	};
	if (ioctl(fd, ND_IOCTL_ARS_START, &start_cmd) < 0) {
		perror("ND_IOCTL_ARS_START");
		return 1;
	}
	printf("ars start status=%u\n", start_cmd.status);
	struct nd_cmd_ars_status *st = calloc(1, cap.max_ars_out);
	for (int tries = 0;; tries++) {
		st->out_length = cap.max_ars_out;
		if (ioctl(fd, ND_IOCTL_ARS_STATUS, st) < 0) {
			perror("ND_IOCTL_ARS_STATUS");
			return 1;
		}
		/* 1 << 16: still scrubbing (libndctl's ndctl_cmd_ars_in_progress) */
		if (st->status != 1u << 16 || tries > 200)
			break;
		usleep(50000);
	}
	printf("ars status=%u records=%u\n", st->status, st->num_records);
	for (unsigned i = 0; i < st->num_records; i++)
		printf("record address=%#llx length=%llu\n",
		       (unsigned long long)st->records[i].err_address,
		       (unsigned long long)st->records[i].length);
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
