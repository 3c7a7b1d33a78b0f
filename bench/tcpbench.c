/* tcpbench: the load generator and server behind bench/run.py's request/response, connection
 * rate and service VIP scenarios (netperf is not in Debian main). C rather than Python: the
 * loop must cost far less than the datapath it measures.
 *
 *   tcpbench server PORT                 serve one connection at a time, forever
 *   tcpbench rr     ADDR PORT SECONDS    1-byte request/response on one connection
 *   tcpbench crr    ADDR PORT SECONDS    connect, 1-byte request/response, close; repeat
 *                                        (ADDR,ADDR,...: each connection to the next one)
 *   tcpbench stream ADDR PORT SECONDS    send as fast as possible on one connection
 *
 * A client prints one line: "<operations> <seconds> <rate>", where rate is transactions/s,
 * connections/s or Gbit/s (stream: bytes the server confirms it received).
 *
 * The first byte of a connection picks the server's mode: 'r' echoes every byte back,
 * 's' reads to EOF then answers with the byte count (8 bytes, network order) and closes.
 * Clients run one at a time, so a sequential server is enough; a receive timeout keeps a
 * vanished client from blocking it. crr closes with a reset (SO_LINGER 0): every connection
 * would otherwise leave a TIME_WAIT socket behind and a few seconds at full rate would use
 * up the ephemeral ports. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define STREAM_CHUNK (128 * 1024)
#define MAX_ADDRS 64

static void die(const char *what)
{
	fprintf(stderr, "tcpbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int full_write(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= n;
	}
	return 0;
}

static int full_read(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= n;
	}
	return 0;
}

static void serve_one(int c)
{
	static char buf[STREAM_CHUNK];
	struct timeval tv = { .tv_sec = 10 };
	int one = 1;
	char mode;

	setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (full_read(c, &mode, 1) < 0)
		return;
	if (mode == 's') {
		uint64_t total = 1;
		ssize_t n;

		while ((n = read(c, buf, sizeof(buf))) > 0)
			total += n;
		if (n == 0) {
			uint32_t be[2] = { htonl(total >> 32), htonl(total & 0xffffffffu) };

			full_write(c, be, sizeof(be));
		}
		return;
	}
	/* echo, the mode byte first: each read returns what the client sent before it waited */
	if (full_write(c, &mode, 1) < 0)
		return;
	for (;;) {
		ssize_t n = read(c, buf, sizeof(buf));

		if (n <= 0 || full_write(c, buf, n) < 0)
			return;
	}
}

static void __attribute__((noreturn)) server(const char *port)
{
	struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(port)) };
	int s = socket(AF_INET6, SOCK_STREAM, 0), one = 1, zero = 0;

	if (s < 0)
		die("socket");
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)); /* IPv4 too */
	if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("bind");
	if (listen(s, 128) < 0)
		die("listen");
	for (;;) {
		int c = accept(s, NULL, NULL);

		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die("accept");
		}
		serve_one(c);
		close(c);
	}
}

static struct addrinfo *resolve(const char *addr, const char *port)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST };
	struct addrinfo *ai;
	int err = getaddrinfo(addr, port, &hints, &ai);

	if (err) {
		fprintf(stderr, "tcpbench: %s: %s\n", addr, gai_strerror(err));
		exit(1);
	}
	return ai;
}

static int dial(const struct addrinfo *ai)
{
	int s = socket(ai->ai_family, SOCK_STREAM, 0), one = 1;

	if (s < 0)
		die("socket");
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(s, ai->ai_addr, ai->ai_addrlen) < 0)
		die("connect");
	return s;
}

static void report(unsigned long long ops, double secs, double rate)
{
	printf("%llu %.6f %.6f\n", ops, secs, rate);
}

static int rr(const struct addrinfo *ai, double secs)
{
	int s = dial(ai);
	unsigned long long n = 0;
	char b = 'r';
	double t0 = now(), t = t0;

	while (t - t0 < secs) {
		if (full_write(s, &b, 1) < 0 || full_read(s, &b, 1) < 0)
			die("request/response");
		n++;
		if ((n & 63) == 0)
			t = now();
	}
	t = now() - t0;
	close(s);
	report(n, t, n / t);
	return 0;
}

static int crr(struct addrinfo **ai, int count, double secs)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	unsigned long long n = 0;
	double t0 = now(), t = t0;

	while (t - t0 < secs) {
		int s = dial(ai[n % count]);
		char b = 'r';

		if (full_write(s, &b, 1) < 0 || full_read(s, &b, 1) < 0)
			die("request/response");
		setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(s);
		n++;
		t = now();
	}
	t -= t0;
	report(n, t, n / t);
	return 0;
}

static int stream(const struct addrinfo *ai, double secs)
{
	static char buf[STREAM_CHUNK];
	int s = dial(ai);
	uint32_t be[2];
	uint64_t got;
	double t0, t;

	memset(buf, 'x', sizeof(buf));
	buf[0] = 's';
	t0 = t = now();
	while (t - t0 < secs) {
		if (full_write(s, buf, sizeof(buf)) < 0)
			die("send");
		buf[0] = 'x';
		t = now();
	}
	shutdown(s, SHUT_WR);
	if (full_read(s, be, sizeof(be)) < 0)
		die("byte count");
	t = now() - t0; /* until the server had it all */
	got = ((uint64_t)ntohl(be[0]) << 32) | ntohl(be[1]);
	close(s);
	report(got, t, got * 8 / t / 1e9);
	return 0;
}

int main(int argc, char **argv)
{
	struct addrinfo *ai[MAX_ADDRS];
	char *addrs, *addr, *save = NULL;
	int count = 0;
	double secs;

	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && !strcmp(argv[1], "server"))
		server(argv[2]);
	if (argc != 5) {
		fprintf(stderr, "usage: tcpbench server PORT | {rr|crr|stream} ADDR PORT SECONDS\n");
		return 2;
	}
	addrs = strdup(argv[2]);
	for (addr = strtok_r(addrs, ",", &save); addr && count < MAX_ADDRS;
	     addr = strtok_r(NULL, ",", &save))
		ai[count++] = resolve(addr, argv[3]);
	if (!count) {
		fprintf(stderr, "tcpbench: no address\n");
		return 2;
	}
	secs = atof(argv[4]);
	if (!strcmp(argv[1], "rr"))
		return rr(ai[0], secs);
	if (!strcmp(argv[1], "crr"))
		return crr(ai, count, secs);
	if (!strcmp(argv[1], "stream"))
		return stream(ai[0], secs);
	fprintf(stderr, "tcpbench: unknown mode %s\n", argv[1]);
	return 2;
}
