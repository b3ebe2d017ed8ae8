/* lab-vsock: AF_VSOCK stream test tool for the nested lab (built static by `tools/lab kit`,
 * in both the guest initrd and the outer VM as /usr/bin/lab-vsock).
 *
 *   lab-vsock listen PORT BYTES      accept one connection on PORT (any CID), read until
 *                                    BYTES arrived or the peer closed; prints
 *                                    "lab-vsock: received=N fnv=HEX mbps=X" (and, on
 *                                    stderr, "lab-vsock: listening on port PORT")
 *   lab-vsock send CID PORT BYTES    connect to CID:PORT (retrying for 30 s while nobody
 *                                    listens), send BYTES of a fixed pseudo-random stream;
 *                                    prints "lab-vsock: sent=N fnv=HEX mbps=X" once the
 *                                    receiver has closed (so it times the whole transfer)
 *   lab-vsock hold CID PORT          connect and wait until the connection ends; prints
 *                                    "lab-vsock: held, ended: REASON"
 *
 * The checksum is 64-bit FNV-1a over every byte, so the two ends' lines compare directly.
 * MB/s is 10^6 bytes per second from connect/accept to the last byte.  Exit status 0 on
 * success, 1 on any failure (with a line saying which call failed). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (256 * 1024)

static unsigned char buf[BUF];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int die(const char *what)
{
    printf("lab-vsock: %s failed: %s\n", what, strerror(errno));
    fflush(stdout);
    return 1;
}

static unsigned long long number(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || end == s) {
        fprintf(stderr, "lab-vsock: '%s' is not a number\n", s);
        exit(2);
    }
    return v;
}

static int connect_to(unsigned cid, unsigned port)
{
    struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    double until = now() + 30;
    for (;;) {
        int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return die("socket"), -1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        int e = errno;
        close(fd);
        errno = e;
        if ((e != ECONNRESET && e != ECONNREFUSED && e != ETIMEDOUT && e != ENODEV) ||
            now() > until)
            return die("connect"), -1;
        usleep(100000);
    }
}

static void report(const char *what, unsigned long long n, uint64_t h, double t0)
{
    double dt = now() - t0;
    printf("lab-vsock: %s=%llu fnv=%016llx mbps=%.1f\n", what, n, (unsigned long long)h,
           dt > 0 ? n / dt / 1e6 : 0.0);
    fflush(stdout);
}

static int do_listen(unsigned port, unsigned long long bytes)
{
    struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                             .svm_port = port};
    int l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0)
        return die("socket");
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0)
        return die("bind");
    if (listen(l, 1) < 0)
        return die("listen");
    fprintf(stderr, "lab-vsock: listening on port %u\n", port);
    int fd = accept(l, NULL, NULL);
    if (fd < 0)
        return die("accept");
    close(l);
    double t0 = now();
    uint64_t h = 0xcbf29ce484222325ULL;
    unsigned long long got = 0;
    while (got < bytes) {
        size_t want = bytes - got < BUF ? bytes - got : BUF;
        ssize_t n = read(fd, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            report("received", got, h, t0);
            return die("read");
        }
        if (n == 0)
            break;
        h = fnv(h, buf, n);
        got += n;
    }
    report("received", got, h, t0);
    close(fd);
    return got == bytes ? 0 : 1;
}

static int do_send(unsigned cid, unsigned port, unsigned long long bytes)
{
    int fd = connect_to(cid, port);
    if (fd < 0)
        return 1;
    double t0 = now();
    uint64_t h = 0xcbf29ce484222325ULL, x = 0x9e3779b97f4a7c15ULL ^ bytes;
    unsigned long long sent = 0;
    while (sent < bytes) {
        size_t n = bytes - sent < BUF ? bytes - sent : BUF;
        for (size_t i = 0; i < n; i += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(buf + i, &x, n - i < 8 ? n - i : 8);
        }
        h = fnv(h, buf, n);
        for (size_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return die("write");
            off += w;
        }
        sent += n;
    }
    /* Wait for the receiver to close first, so every byte is in before we go: the time
     * reported runs from connect to the receiver having it all. */
    shutdown(fd, SHUT_WR);
    while (read(fd, buf, sizeof buf) > 0)
        ;
    report("sent", sent, h, t0);
    close(fd);
    return 0;
}

static int do_hold(unsigned cid, unsigned port)
{
    int fd = connect_to(cid, port);
    if (fd < 0)
        return 1;
    printf("lab-vsock: connected, holding\n");
    fflush(stdout);
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n > 0)
            continue;
        printf("lab-vsock: held, ended: %s\n", n == 0 ? "closed by peer" : strerror(errno));
        fflush(stdout);
        return 0;
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && !strcmp(argv[1], "listen"))
        return do_listen(number(argv[2]), number(argv[3]));
    if (argc == 5 && !strcmp(argv[1], "send"))
        return do_send(number(argv[2]), number(argv[3]), number(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "hold"))
        return do_hold(number(argv[2]), number(argv[3]));
    fprintf(stderr, "usage: lab-vsock listen PORT BYTES | send CID PORT BYTES | hold CID PORT\n");
    return 2;
}
