/*
 * lab-http: send HTTP/1.1 requests over a unix socket, one after another (the outer VM
 * of the lab has no curl; tools/bench-snapshot drives Firecracker's and Cloud
 * Hypervisor's APIs with it).
 *
 *   lab-http [-w SECONDS] SOCKET 'METHOD PATH [BODY]'...
 *
 * Each request goes on its own connection, with the BODY (if any) as
 * application/json.  For each, prints one line
 *
 *   lab-http: METHOD PATH -> STATUS-LINE (MS ms)
 *
 * (MS from connect to the end of the response), followed by the response's body
 * if the status is not 2xx.  -w retries the first connect for up to SECONDS while
 * the socket is missing or refuses (a VMM still starting), every millisecond.
 * Exit status 0 when every request got a 2xx, 1 at the first that did not (or
 * on any error, with a line saying which call failed); the rest are not sent.
 * Built static by tools/bench-snapshot with `gcc -static -O2 -Wall`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int fail(const char *what)
{
	printf("lab-http: %s failed: %s\n", what, strerror(errno));
	fflush(stdout);
	return 1;
}

static int connect_unix(const char *path, double wait_ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sa.sun_path, path);
	double until = now_ms() + wait_ms;
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -1;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		int e = errno;
		close(fd);
		errno = e;
		if ((e != ENOENT && e != ECONNREFUSED) || now_ms() >= until)
			return -1;
		usleep(1000);
	}
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= w;
	}
	return 0;
}

/* One request; returns 0 on a 2xx answer, 1 otherwise. */
static int request(const char *sock, const char *spec, double wait_ms)
{
	char method[16], path[256];
	const char *body = "";
	int used = 0;
	if (sscanf(spec, "%15s %255s%n", method, path, &used) < 2) {
		printf("lab-http: bad request %s (want 'METHOD PATH [BODY]')\n", spec);
		return 1;
	}
	body = spec + used;
	while (*body == ' ')
		body++;
	size_t blen = strlen(body);

	static char req[65536];
	int n = snprintf(req, sizeof(req),
			 "%s %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
			 "%sContent-Length: %zu\r\n\r\n%s",
			 method, path, blen ? "Content-Type: application/json\r\n" : "", blen, body);
	if (n < 0 || (size_t)n >= sizeof(req)) {
		printf("lab-http: request too long\n");
		return 1;
	}
	double t0 = now_ms();
	int fd = connect_unix(sock, wait_ms);
	if (fd < 0)
		return fail("connect");
	if (write_all(fd, req, n) < 0)
		return fail("write");

	/* Read the headers, then Content-Length bytes of body (or until EOF). */
	static char resp[65536];
	size_t len = 0;
	char *hdr_end = NULL;
	long clen = -1;
	for (;;) {
		if (len + 1 >= sizeof(resp))
			break;
		ssize_t r = read(fd, resp + len, sizeof(resp) - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail("read");
		if (r == 0)
			break;
		len += r;
		resp[len] = 0;
		if (!hdr_end && (hdr_end = strstr(resp, "\r\n\r\n"))) {
			char *cl = strcasestr(resp, "\r\nContent-Length:");
			if (cl && cl < hdr_end)
				clen = strtol(cl + 17, NULL, 10);
			else
				clen = 0;
		}
		if (hdr_end && (long)(len - (hdr_end + 4 - resp)) >= clen)
			break;
	}
	double ms = now_ms() - t0;
	close(fd);
	resp[len] = 0;
	char *eol = strstr(resp, "\r\n");
	if (!hdr_end || !eol || strncmp(resp, "HTTP/1.", 7) != 0) {
		printf("lab-http: %s %s -> no HTTP response (%zu bytes) (%.1f ms)\n", method, path,
		       len, ms);
		return 1;
	}
	*eol = 0;
	int code = atoi(resp + 9);
	printf("lab-http: %s %s -> %s (%.1f ms)\n", method, path, resp, ms);
	if (code < 200 || code > 299) {
		printf("%s\n", hdr_end + 4);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	double wait_ms = 0;
	int opt;
	while ((opt = getopt(argc, argv, "+w:")) != -1) {
		switch (opt) {
		case 'w': wait_ms = atof(optarg) * 1e3; break;
		default:
			fprintf(stderr, "usage: lab-http [-w SECONDS] SOCKET 'METHOD PATH [BODY]'...\n");
			return 2;
		}
	}
	if (argc - optind < 2) {
		fprintf(stderr, "usage: lab-http [-w SECONDS] SOCKET 'METHOD PATH [BODY]'...\n");
		return 2;
	}
	const char *sock = argv[optind];
	for (int i = optind + 1; i < argc; i++) {
		int rc = request(sock, argv[i], i == optind + 1 ? wait_ms : 0);
		fflush(stdout);
		if (rc)
			return 1;
	}
	return 0;
}
