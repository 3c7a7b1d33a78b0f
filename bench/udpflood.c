/* udpflood: the UDP sender behind bench/run.py's prefilter scenario. C rather than Python:
 * the sender must cost far less per packet than the drop it measures.
 *
 *   udpflood SRC DST PORT SECONDS RATE
 *
 * Sends IPv4 UDP datagrams of 18 bytes (a 60-byte Ethernet frame, 64 on the wire with its
 * FCS) from SRC to DST:PORT for SECONDS: as fast as it can with sendmmsg in batches when
 * RATE is 0, else RATE datagrams a second, paced. Each carries its sequence number (4
 * bytes, network order) so that a receiver can tell which were lost.
 * Prints one line: "<datagrams> <seconds> <rate>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 18
#define BATCH 64

static void die(const char *what)
{
	fprintf(stderr, "udpflood: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in address(const char *text, int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };

	if (inet_pton(AF_INET, text, &sa.sin_addr) != 1) {
		fprintf(stderr, "udpflood: %s is not an IPv4 address\n", text);
		exit(2);
	}
	return sa;
}

/* As fast as it goes: BATCH datagrams a system call. */
static uint64_t flood(int fd, double end)
{
	static char payloads[BATCH][PAYLOAD];
	struct mmsghdr msgs[BATCH];
	struct iovec iovs[BATCH];
	uint64_t seq = 0;

	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		iovs[i].iov_base = payloads[i];
		iovs[i].iov_len = PAYLOAD;
		msgs[i].msg_hdr.msg_iov = &iovs[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	while (now() < end) {
		for (int i = 0; i < BATCH; i++) {
			uint32_t n = htonl((uint32_t)(seq + i));

			memcpy(payloads[i], &n, sizeof(n));
		}
		int sent = sendmmsg(fd, msgs, BATCH, 0);

		if (sent < 0) {
			if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR)
				continue;
			die("sendmmsg");
		}
		seq += sent;
	}
	return seq;
}

/* rate datagrams a second, each sent when its time comes. */
static uint64_t paced(int fd, double start, double end, double rate)
{
	char payload[PAYLOAD] = { 0 };
	uint64_t seq = 0;

	for (double t = now(); t < end; t = now()) {
		double due = start + seq / rate;

		if (t < due) {
			struct timespec pause = { 0, (long)((due - t) * 1e9) };

			nanosleep(&pause, NULL);
			continue;
		}
		uint32_t n = htonl((uint32_t)seq);

		memcpy(payload, &n, sizeof(n));
		if (send(fd, payload, PAYLOAD, 0) < 0) {
			if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR)
				continue;
			die("send");
		}
		seq++;
	}
	return seq;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: udpflood SRC DST PORT SECONDS RATE\n");
		return 2;
	}
	struct sockaddr_in src = address(argv[1], 0);
	struct sockaddr_in dst = address(argv[2], atoi(argv[3]));
	double seconds = atof(argv[4]), rate = atof(argv[5]);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	if (fd < 0)
		die("socket");
	if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0)
		die("bind");
	if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0)
		die("connect");
	double start = now();
	uint64_t sent = rate > 0 ? paced(fd, start, start + seconds, rate) : flood(fd, start + seconds);
	double took = now() - start;

	printf("%llu %.3f %.0f\n", (unsigned long long)sent, took, sent / took);
	return 0;
}
