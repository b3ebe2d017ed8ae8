/*
 * Drives a running `vmm run --socket SOCKET` through every call of libvmm_control and
 * checks every returned field and the error path of each. Run by tests/c_api.rs, linked
 * against the shared and against the static library, and under valgrind.
 *
 *   vmm_control_test SOCKET balloon   the VM has --balloon (and the tiny parked guest)
 *   vmm_control_test SOCKET plain     the VM has no balloon device
 *   vmm_control_test SOCKET stop STREAM MEMORY
 *                                     the VM (32 MiB) runs any guest: a snapshot with
 *                                     VMM_CONTROL_SNAPSHOT_STOP into the files STREAM and
 *                                     MEMORY (created here), for tests/c_api.rs to restore
 *
 * Every mode ends the VM: balloon and plain with vmm_control_stop, stop with the snapshot.
 * Temporary files go to $TMPDIR (else /tmp). Prints "ok" and exits 0 when every check
 * passed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmm_control.h"

static int failures;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__,     \
                    __LINE__, #cond, vmm_control_last_error());                          \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

#define CHECK_EQ(a, b)                                                                   \
    do {                                                                                 \
        long long a_ = (long long)(a), b_ = (long long)(b);                              \
        if (a_ != b_) {                                                                  \
            fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld (last error: %s)\n", \
                    __FILE__, __LINE__, #a, a_, #b, b_, vmm_control_last_error());       \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

#define TIMEOUT_MS 5000
/* For a snapshot: the handle's timeout bounds the whole save (slow under valgrind). */
#define SNAPSHOT_TIMEOUT_MS 120000
#define GUEST_RAM (32ull << 20)

static int open_fds(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* The calling thread's last error, checked: a refusal with `kind` and `errnum`. */
static void check_last_error(uint32_t kind, int errnum) {
    struct vmm_control_error e;
    memset(&e, 0xff, sizeof e);
    e.struct_size = sizeof e;
    CHECK_EQ(vmm_control_last_error_info(&e), 0);
    CHECK_EQ(e.struct_size, sizeof e);
    CHECK_EQ(e.kind, kind);
    CHECK_EQ(e.errnum, errnum);
    if (kind != VMM_CONTROL_ERR_NONE) {
        CHECK_EQ(e.min_version, 1);
        CHECK(e.max_version >= 3);
    } else {
        CHECK_EQ(e.min_version, 0);
        CHECK_EQ(e.max_version, 0);
        CHECK_EQ(e.detail, 0);
    }
    CHECK(strlen(vmm_control_last_error()) > 0);
}

/* Waits (bounded) for the subscription's next event. */
static int wait_event(struct vmm_control_subscription *sub, struct vmm_control_event *ev) {
    for (int tries = 0; tries < 100; tries++) {
        memset(ev, 0xff, sizeof *ev);
        ev->struct_size = sizeof *ev;
        int r = vmm_control_next_event(sub, ev);
        if (r != -EAGAIN)
            return r;
        struct pollfd p = {.fd = vmm_control_subscription_fd(sub), .events = POLLIN};
        CHECK(poll(&p, 1, 100) >= 0);
    }
    return -ETIMEDOUT;
}

static void expect_event(struct vmm_control_subscription *sub, uint32_t kind, uint64_t arg0,
                         uint64_t arg1) {
    struct vmm_control_event ev;
    CHECK_EQ(wait_event(sub, &ev), 0);
    CHECK_EQ(ev.struct_size, sizeof ev);
    CHECK_EQ(ev.kind, kind);
    CHECK_EQ(ev.arg0, arg0);
    CHECK_EQ(ev.arg1, arg1);
}

/* A new, already unlinked, temporary file, open read-write. */
static int temp_file(void) {
    const char *dir = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/vmm-control-test-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkostemp(path, O_CLOEXEC);
    CHECK(fd >= 0);
    if (fd >= 0)
        CHECK_EQ(unlink(path), 0);
    return fd;
}

/* The file behind `fd` opened again, with `flags`. */
static int reopen(int fd, int flags) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int again = open(path, flags | O_CLOEXEC);
    CHECK(again >= 0);
    return again;
}

static long long file_size(int fd) {
    struct stat st;
    CHECK_EQ(fstat(fd, &st), 0);
    return (long long)st.st_size;
}

/* Checks that `fd` holds a snapshot stream: the format's magic at offset 0. */
static void check_stream(int fd) {
    unsigned char magic[8] = {0};
    CHECK_EQ(pread(fd, magic, sizeof magic, 0), sizeof magic);
    CHECK(memcmp(magic, "\x89VMMSNAP", sizeof magic) == 0);
    CHECK(file_size(fd) > (long long)sizeof magic);
}

static void no_socket_and_bad_arguments(const char *socket) {
    struct vmm_control *ctl = (struct vmm_control *)1;
    char missing[4200];
    snprintf(missing, sizeof missing, "%s.missing", socket);
    CHECK_EQ(vmm_control_connect(missing, TIMEOUT_MS, &ctl), -ENOENT);
    CHECK(ctl == NULL);
    check_last_error(VMM_CONTROL_ERR_NONE, ENOENT);
    CHECK(strstr(vmm_control_last_error(), "missing") != NULL);
    /* Not a socket: the directory of this program's cwd. */
    CHECK_EQ(vmm_control_connect("/", TIMEOUT_MS, &ctl), -ECONNREFUSED);
    CHECK_EQ(vmm_control_connect(NULL, TIMEOUT_MS, &ctl), -EINVAL);
    CHECK_EQ(vmm_control_connect(socket, TIMEOUT_MS, NULL), -EINVAL);
    CHECK_EQ(vmm_control_connect(socket, 0, &ctl), -EINVAL);
    CHECK(ctl == NULL);
    /* A path longer than a sockaddr_un holds. */
    memset(missing, 'a', sizeof missing - 1);
    missing[0] = '/';
    missing[sizeof missing - 1] = 0;
    CHECK(vmm_control_connect(missing, TIMEOUT_MS, &ctl) < 0);
    /* NULL handles. */
    struct vmm_control_stats stats = {.struct_size = sizeof stats};
    uint16_t lo, hi;
    CHECK_EQ(vmm_control_pause(NULL), -EINVAL);
    CHECK_EQ(vmm_control_resume(NULL), -EINVAL);
    CHECK_EQ(vmm_control_stop(NULL), -EINVAL);
    CHECK_EQ(vmm_control_version(NULL, &lo, &hi), -EINVAL);
    CHECK_EQ(vmm_control_get_stats(NULL, &stats), -EINVAL);
    CHECK_EQ(vmm_control_set_timeout(NULL, 10), -EINVAL);
    CHECK_EQ(vmm_control_subscribe(NULL, NULL), -EINVAL);
    CHECK_EQ(vmm_control_subscription_fd(NULL), -EINVAL);
    CHECK_EQ(vmm_control_next_event(NULL, NULL), -EINVAL);
    CHECK_EQ(vmm_control_last_error_info(NULL), -EINVAL);
    check_last_error(VMM_CONTROL_ERR_NONE, EINVAL);
    vmm_control_close(NULL);
    vmm_control_subscription_close(NULL);
}

static void version_and_stats(struct vmm_control *ctl) {
    uint16_t lo = 0, hi = 0;
    CHECK_EQ(vmm_control_version(ctl, &lo, &hi), 0);
    CHECK_EQ(lo, 1);
    CHECK_EQ(hi, 6);
    CHECK_EQ(strlen(vmm_control_last_error()), 0);
    CHECK_EQ(vmm_control_version(ctl, NULL, &hi), -EINVAL);

    struct vmm_control_stats s;
    memset(&s, 0xff, sizeof s);
    s.struct_size = sizeof s;
    CHECK_EQ(vmm_control_get_stats(ctl, &s), 0);
    CHECK_EQ(s.struct_size, sizeof s);
    CHECK_EQ(s.vcpu_count, 1);
    CHECK_EQ(s.guest_memory_bytes, 32ull << 20);
    CHECK(s.uptime_ns > 0 && s.uptime_ns < 600ull * 1000000000ull);
    CHECK(s.exits_io > 0);     /* the guest printed "parked" */
    /* HLT stays in KVM (in-kernel LAPIC), so exits_hlt need not count the guest's. */
    CHECK_EQ(s.exits_shutdown, 0);
    CHECK_EQ(s.exits_fail_entry, 0);
    CHECK_EQ(s.exits_internal_error, 0);
    CHECK(s.utime_us + s.stime_us > 0);
    CHECK(s.maxrss_kib > 0);
    CHECK(s.minflt > 0);
    CHECK(s.majflt < (1ull << 40));
    CHECK(s.device_counter_count > 0 && s.device_counter_count <= VMM_CONTROL_MAX_DEVICE_COUNTERS);
    CHECK_EQ(s.device_counters_omitted, 0);
    int serial_out = 0;
    for (uint32_t i = 0; i < VMM_CONTROL_MAX_DEVICE_COUNTERS; i++) {
        struct vmm_control_device_counter *c = &s.device_counters[i];
        if (i >= s.device_counter_count) {
            CHECK(c->device_kind == 0 && c->device_id == 0 && c->counter == 0 && c->value == 0);
            continue;
        }
        CHECK(c->device_kind >= VMM_CONTROL_DEVICE_SERIAL && c->device_kind <= VMM_CONTROL_DEVICE_RNG);
        CHECK(c->counter >= 1 && c->counter <= VMM_CONTROL_COUNTER_INVALID_CHAINS);
        if (c->device_kind == VMM_CONTROL_DEVICE_SERIAL && c->counter == VMM_CONTROL_COUNTER_BYTES_OUT)
            serial_out = c->value >= 7; /* "parked\n" */
    }
    CHECK(serial_out);

    /* A caller built against an older, smaller structure gets only what it has. */
    struct vmm_control_stats small;
    memset(&small, 0xee, sizeof small);
    small.struct_size = 16;
    CHECK_EQ(vmm_control_get_stats(ctl, &small), 0);
    CHECK_EQ(small.struct_size, 16);
    CHECK_EQ(small.vcpu_count, 1);
    CHECK(small.uptime_ns > s.uptime_ns);
    CHECK_EQ(small.guest_memory_bytes, 0xeeeeeeeeeeeeeeeeull);
    /* A newer, larger one gets its unknown tail zeroed. */
    struct { struct vmm_control_stats s; uint64_t future[4]; } big;
    memset(&big, 0xee, sizeof big);
    big.s.struct_size = sizeof big;
    CHECK_EQ(vmm_control_get_stats(ctl, &big.s), 0);
    CHECK_EQ(big.s.struct_size, sizeof big.s);
    CHECK_EQ(big.future[0] | big.future[3], 0);
    /* struct_size not set. */
    memset(&small, 0, sizeof small);
    CHECK_EQ(vmm_control_get_stats(ctl, &small), -EINVAL);
    check_last_error(VMM_CONTROL_ERR_NONE, EINVAL);
    CHECK_EQ(vmm_control_get_stats(ctl, NULL), -EINVAL);
}

static void queues(struct vmm_control *ctl, int balloon) {
    struct vmm_control_queues q;
    memset(&q, 0xff, sizeof q);
    q.struct_size = sizeof q;
    CHECK_EQ(vmm_control_get_queues(ctl, &q), 0);
    CHECK_EQ(q.struct_size, sizeof q);
    CHECK_EQ(q.count, balloon ? 3 : 0); /* inflate, deflate, statistics */
    CHECK_EQ(q.omitted, 0);
    CHECK_EQ(q.reserved, 0);
    for (uint32_t i = 0; i < VMM_CONTROL_MAX_QUEUES; i++) {
        struct vmm_control_queue *e = &q.queues[i];
        if (i >= q.count) {
            CHECK(e->device_kind == 0 && e->queue == 0 && e->notifications == 0);
            continue;
        }
        CHECK_EQ(e->device_kind, VMM_CONTROL_DEVICE_BALLOON);
        CHECK_EQ(e->device_id, 0);
        CHECK_EQ(e->queue, i);
        /* The tiny guest has no driver: nothing is active or counted. */
        CHECK_EQ(e->size, 0);
        CHECK_EQ(e->state, 0);
        CHECK_EQ(e->driver_avail, 0);
        CHECK_EQ(e->device_avail, 0);
        CHECK_EQ(e->device_used, 0);
        CHECK_EQ(e->used_event, 0);
        CHECK_EQ(e->reserved, 0);
        CHECK_EQ(e->notifications, 0);
        CHECK_EQ(e->interrupts, 0);
    }
    CHECK_EQ(vmm_control_get_queues(ctl, NULL), -EINVAL);
}

static void memory(struct vmm_control *ctl) {
    const uint64_t size = 2u << 20;
    int fd = memfd_create("vmm-control-test", MFD_CLOEXEC);
    CHECK(fd >= 0);
    CHECK_EQ(ftruncate(fd, size), 0);
    uint32_t slot = 0xdead;
    uint64_t addr = 0;
    CHECK_EQ(vmm_control_register_memory(ctl, fd, size, &slot, &addr), 0);
    CHECK(slot != 0xdead);
    CHECK(addr >= (4ull << 30));
    CHECK_EQ(addr % (2u << 20), 0);
    /* The descriptor stays ours: still open, and closing it leaves the region mapped. */
    CHECK_EQ(close(fd), 0);

    struct vmm_control_memory_list list;
    memset(&list, 0xff, sizeof list);
    list.struct_size = sizeof list;
    CHECK_EQ(vmm_control_list_memory(ctl, 0, &list), 0);
    CHECK_EQ(list.struct_size, sizeof list);
    CHECK_EQ(list.total, 1);
    CHECK_EQ(list.count, 1);
    CHECK_EQ(list.reserved, 0);
    CHECK_EQ(list.regions[0].slot, slot);
    CHECK_EQ(list.regions[0].reserved, 0);
    CHECK_EQ(list.regions[0].guest_addr, addr);
    CHECK_EQ(list.regions[0].size, size);
    CHECK_EQ(list.regions[1].slot | list.regions[1].guest_addr | list.regions[1].size, 0);
    /* Memory backed by a client's descriptor cannot be saved: refused, the VM goes on. */
    int stream = temp_file(), mem = temp_file();
    CHECK_EQ(vmm_control_snapshot(ctl, stream, mem, 0), -EBUSY);
    check_last_error(VMM_CONTROL_ERR_UNSUPPORTED, EBUSY);
    close(stream);
    close(mem);
    CHECK_EQ(vmm_control_list_memory(ctl, slot + 1, &list), 0);
    CHECK_EQ(list.total, 1);
    CHECK_EQ(list.count, 0);
    CHECK_EQ(vmm_control_list_memory(ctl, 0, NULL), -EINVAL);

    CHECK_EQ(vmm_control_unregister_memory(ctl, slot), 0);
    CHECK_EQ(vmm_control_unregister_memory(ctl, slot), -ENOENT);
    check_last_error(VMM_CONTROL_ERR_INVALID_ARGUMENT, ENOENT);
    CHECK_EQ(vmm_control_list_memory(ctl, 0, &list), 0);
    CHECK_EQ(list.total, 0);
    CHECK_EQ(list.count, 0);

    /* Wrong descriptors: none, a closed one, and one the VMM cannot map (a pipe). */
    CHECK_EQ(vmm_control_register_memory(ctl, -1, size, &slot, &addr), -EBADF);
    check_last_error(VMM_CONTROL_ERR_NONE, EBADF);
    CHECK_EQ(vmm_control_register_memory(ctl, fd, size, &slot, &addr), -EBADF);
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    int r = vmm_control_register_memory(ctl, p[0], size, &slot, &addr);
    CHECK(r < 0);
    check_last_error(VMM_CONTROL_ERR_FAILED, -r);
    close(p[0]);
    close(p[1]);
    /* A size the VMM refuses. */
    fd = memfd_create("vmm-control-test", MFD_CLOEXEC);
    CHECK(fd >= 0);
    CHECK_EQ(ftruncate(fd, size), 0);
    CHECK_EQ(vmm_control_register_memory(ctl, fd, 100, &slot, &addr), -EINVAL);
    check_last_error(VMM_CONTROL_ERR_INVALID_ARGUMENT, EINVAL);
    CHECK_EQ(vmm_control_register_memory(ctl, fd, size, NULL, &addr), -EINVAL);
    CHECK_EQ(vmm_control_register_memory(ctl, fd, size, &slot, NULL), -EINVAL);
    close(fd);
}

/* Attaches to the console: the first frame is the history (the guest printed "parked"). */
static void console(struct vmm_control *ctl) {
    int fd = -1, writer = -1, second = -1;
    uint32_t granted = 0xff;
    CHECK_EQ(vmm_control_console_attach(ctl, 0, &fd, &granted), 0);
    CHECK_EQ(granted, 0);
    CHECK(fd >= 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK_EQ(poll(&p, 1, TIMEOUT_MS), 1);
    unsigned char frame[VMM_CONTROL_CONSOLE_FRAME_MAX];
    ssize_t n = recv(fd, frame, sizeof frame, 0);
    /* version 1, kind 1 (Data), length, then the bytes. */
    CHECK(n >= 8 + 7);
    if (n >= 8 + 7) {
        CHECK(frame[0] == 1 && frame[1] == 0 && frame[2] == 1 && frame[3] == 0);
        CHECK(memcmp(frame + n - 7, "parked\n", 7) == 0);
    }

    CHECK_EQ(vmm_control_console_attach(ctl, VMM_CONTROL_CONSOLE_WRITE, &writer, &granted), 0);
    CHECK_EQ(granted, VMM_CONTROL_CONSOLE_WRITE);
    CHECK_EQ(vmm_control_console_attach(ctl, VMM_CONTROL_CONSOLE_WRITE, &second, &granted),
             -EBUSY);
    check_last_error(VMM_CONTROL_ERR_FAILED, EBUSY);
    CHECK_EQ(second, -1);
    CHECK_EQ(vmm_control_console_attach(ctl, 0, NULL, &granted), -EINVAL);
    CHECK_EQ(vmm_control_console_attach(NULL, 0, &second, &granted), -EINVAL);
    close(fd);
    close(writer);
}

/* A snapshot of the running VM into two temporary files, then every error path. */
static void snapshot(struct vmm_control *ctl) {
    int stream = temp_file(), mem = temp_file();
    struct vmm_control_stats before = {.struct_size = sizeof before};
    CHECK_EQ(vmm_control_get_stats(ctl, &before), 0);
    CHECK_EQ(vmm_control_set_timeout(ctl, SNAPSHOT_TIMEOUT_MS), 0);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, mem, 0), 0);
    CHECK_EQ(strlen(vmm_control_last_error()), 0);
    CHECK_EQ(vmm_control_set_timeout(ctl, TIMEOUT_MS), 0);
    check_stream(stream);
    /* Guest RAM, whole (sparse): as long as the VM's --mem. */
    CHECK_EQ(file_size(mem), GUEST_RAM);
    CHECK_EQ(file_size(mem), before.guest_memory_bytes);
    /* The descriptors stay ours (still open), their offsets unmoved (pwrite). */
    CHECK_EQ(lseek(stream, 0, SEEK_CUR), 0);
    CHECK_EQ(lseek(mem, 0, SEEK_CUR), 0);
    /* The VM answers and runs on. */
    struct vmm_control_stats after = {.struct_size = sizeof after};
    CHECK_EQ(vmm_control_get_stats(ctl, &after), 0);
    CHECK_EQ(after.vcpu_count, 1);
    CHECK(after.uptime_ns > before.uptime_ns);
    /* Again, into the same files: truncated and rewritten from offset 0. */
    CHECK_EQ(ftruncate(mem, 3 * GUEST_RAM), 0);
    CHECK_EQ(pwrite(stream, "x", 1, 1 << 20), 1);
    CHECK_EQ(vmm_control_set_timeout(ctl, SNAPSHOT_TIMEOUT_MS), 0);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, mem, 0), 0);
    CHECK_EQ(vmm_control_set_timeout(ctl, TIMEOUT_MS), 0);
    check_stream(stream);
    CHECK(file_size(stream) < (1 << 20));
    CHECK_EQ(file_size(mem), GUEST_RAM);

    /* Descriptors refused here, before the VMM is asked: none, closed, read-only. */
    CHECK_EQ(vmm_control_snapshot(ctl, -1, mem, 0), -EBADF);
    check_last_error(VMM_CONTROL_ERR_NONE, EBADF);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, -1, 0), -EBADF);
    int closed = temp_file();
    close(closed);
    CHECK_EQ(vmm_control_snapshot(ctl, closed, mem, 0), -EBADF);
    check_last_error(VMM_CONTROL_ERR_NONE, EBADF);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, closed, 0), -EBADF);
    int ro = reopen(mem, O_RDONLY);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, ro, 0), -EBADF);
    check_last_error(VMM_CONTROL_ERR_NONE, EBADF);
    close(ro);
    /* O_APPEND, one file twice, unknown flags, no handle. */
    int append = reopen(mem, O_WRONLY | O_APPEND);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, append, 0), -EINVAL);
    check_last_error(VMM_CONTROL_ERR_NONE, EINVAL);
    close(append);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, stream, 0), -EINVAL);
    int dup_stream = fcntl(stream, F_DUPFD_CLOEXEC, 0);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, dup_stream, 0), -EINVAL);
    close(dup_stream);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, mem, 2), -EINVAL);
    check_last_error(VMM_CONTROL_ERR_NONE, EINVAL);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, mem, VMM_CONTROL_SNAPSHOT_STOP | 0x80000000u),
             -EINVAL);
    CHECK_EQ(vmm_control_snapshot(NULL, stream, mem, 0), -EINVAL);
    /* Not a regular file: the VMM refuses (a pipe could block its main thread). */
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(vmm_control_snapshot(ctl, p[1], mem, 0), -EINVAL);
    check_last_error(VMM_CONTROL_ERR_INVALID_ARGUMENT, EINVAL);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, p[1], 0), -EINVAL);
    check_last_error(VMM_CONTROL_ERR_INVALID_ARGUMENT, EINVAL);
    close(p[0]);
    close(p[1]);
    /* None of that touched the VM, which still answers. */
    CHECK_EQ(vmm_control_get_stats(ctl, &after), 0);
    CHECK_EQ(after.vcpu_count, 1);
    close(stream);
    close(mem);
}

/* Mode stop: a snapshot with VMM_CONTROL_SNAPSHOT_STOP, which ends the VM once written. */
static void snapshot_and_stop(struct vmm_control *ctl, const char *stream_path,
                              const char *memory_path) {
    int stream = open(stream_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int mem = open(memory_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(stream >= 0 && mem >= 0);
    struct vmm_control_subscription *sub = NULL;
    CHECK_EQ(vmm_control_subscribe(ctl, &sub), 0);
    if (!sub)
        return;
    CHECK_EQ(vmm_control_set_timeout(ctl, SNAPSHOT_TIMEOUT_MS), 0);
    CHECK_EQ(vmm_control_snapshot(ctl, stream, mem, VMM_CONTROL_SNAPSHOT_STOP), 0);
    /* The VMM ended the VM after its reply and closed every connection. */
    struct vmm_control_event ev;
    CHECK_EQ(wait_event(sub, &ev), -ECONNRESET);
    vmm_control_subscription_close(sub);
    uint16_t lo, hi;
    int r = vmm_control_version(ctl, &lo, &hi);
    CHECK(r == -ECONNRESET || r == -EPIPE);
    CHECK_EQ(file_size(mem), GUEST_RAM);
    close(stream);
    close(mem);
    /* Written whole before the reply: a stream reopened now has its magic. */
    int check = open(stream_path, O_RDONLY | O_CLOEXEC);
    CHECK(check >= 0);
    check_stream(check);
    close(check);
}

static void events_and_balloon(struct vmm_control *ctl, int balloon) {
    struct vmm_control_subscription *sub = NULL;
    CHECK_EQ(vmm_control_subscribe(ctl, NULL), -EINVAL);
    CHECK_EQ(vmm_control_subscribe(ctl, &sub), 0);
    CHECK(sub != NULL);
    if (!sub)
        return;
    int fd = vmm_control_subscription_fd(sub);
    CHECK(fd >= 0);
    struct vmm_control_event ev = {.struct_size = sizeof ev};
    CHECK_EQ(vmm_control_next_event(sub, &ev), -EAGAIN);
    CHECK_EQ(vmm_control_next_event(sub, NULL), -EINVAL);
    ev.struct_size = 0;
    CHECK_EQ(vmm_control_next_event(sub, &ev), -EINVAL);
    ev.struct_size = sizeof ev;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK_EQ(poll(&p, 1, 0), 0);

    CHECK_EQ(vmm_control_pause(ctl), 0);
    CHECK_EQ(vmm_control_pause(ctl), 0); /* no second event */
    CHECK_EQ(poll(&p, 1, TIMEOUT_MS), 1);
    expect_event(sub, VMM_CONTROL_EVENT_PAUSED, 0, 0);
    CHECK_EQ(vmm_control_resume(ctl), 0);
    expect_event(sub, VMM_CONTROL_EVENT_RESUMED, 0, 0);
    CHECK_EQ(vmm_control_next_event(sub, &ev), -EAGAIN);

    if (balloon) {
        CHECK_EQ(vmm_control_balloon_set_target(ctl, 2048), 0);
        expect_event(sub, VMM_CONTROL_EVENT_BALLOON_CHANGED, 2048, 0);
        CHECK_EQ(vmm_control_balloon_adjust(ctl, -1024), 0);
        expect_event(sub, VMM_CONTROL_EVENT_BALLOON_CHANGED, 1024, 0);
        struct vmm_control_stats s = {.struct_size = sizeof s};
        CHECK_EQ(vmm_control_get_stats(ctl, &s), 0);
        CHECK_EQ(s.balloon_target_pages, 1024);
        CHECK_EQ(s.balloon_actual_pages, 0);
        /* Above the guest's 32 MiB. */
        CHECK_EQ(vmm_control_balloon_set_target(ctl, 16384), -EINVAL);
        check_last_error(VMM_CONTROL_ERR_INVALID_ARGUMENT, EINVAL);
        CHECK_EQ(vmm_control_balloon_adjust(ctl, -(1ll << 40)), -EINVAL);
        CHECK_EQ(vmm_control_balloon_adjust(ctl, -100000), 0); /* stops at 0 */
        expect_event(sub, VMM_CONTROL_EVENT_BALLOON_CHANGED, 0, 0);
    } else {
        CHECK_EQ(vmm_control_balloon_set_target(ctl, 2048), -ENODEV);
        check_last_error(VMM_CONTROL_ERR_UNSUPPORTED, ENODEV);
        CHECK(strstr(vmm_control_last_error(), "Unsupported") != NULL);
        CHECK_EQ(vmm_control_balloon_adjust(ctl, -1), -ENODEV);
        check_last_error(VMM_CONTROL_ERR_UNSUPPORTED, ENODEV);
    }

    /* Stop: the VMM exits and closes every connection. */
    CHECK_EQ(vmm_control_set_timeout(ctl, 0), -EINVAL);
    CHECK_EQ(vmm_control_set_timeout(ctl, TIMEOUT_MS), 0);
    CHECK_EQ(vmm_control_stop(ctl), 0);
    CHECK_EQ(wait_event(sub, &ev), -ECONNRESET);
    check_last_error(VMM_CONTROL_ERR_NONE, ECONNRESET);
    CHECK_EQ(vmm_control_next_event(sub, &ev), -ECONNRESET);
    vmm_control_subscription_close(sub);
    uint16_t lo, hi;
    int r = vmm_control_version(ctl, &lo, &hi);
    CHECK(r == -ECONNRESET || r == -EPIPE);
}

/* The exit status: every check passed and every descriptor opened was closed. */
static int finish(int fds_before) {
    CHECK_EQ(open_fds(), fds_before);
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    int stop = argc == 5 && strcmp(argv[2], "stop") == 0;
    if (argc != 3 && !stop) {
        fprintf(stderr, "usage: %s SOCKET balloon|plain\n       %s SOCKET stop STREAM MEMORY\n",
                argv[0], argv[0]);
        return 2;
    }
    const char *socket = argv[1];
    int balloon = strcmp(argv[2], "balloon") == 0;
    int fds_before = open_fds();

    if (stop) {
        struct vmm_control *ctl = NULL;
        CHECK_EQ(vmm_control_connect(socket, TIMEOUT_MS, &ctl), 0);
        if (!ctl)
            return 1;
        snapshot_and_stop(ctl, argv[3], argv[4]);
        vmm_control_close(ctl);
        return finish(fds_before);
    }

    no_socket_and_bad_arguments(socket);
    struct vmm_control *ctl = NULL;
    CHECK_EQ(vmm_control_connect(socket, TIMEOUT_MS, &ctl), 0);
    if (!ctl)
        return 1;
    CHECK_EQ(strlen(vmm_control_last_error()), 0);
    version_and_stats(ctl);
    queues(ctl, balloon);
    memory(ctl);
    console(ctl);
    snapshot(ctl);
    events_and_balloon(ctl, balloon);
    vmm_control_close(ctl);
    return finish(fds_before);
}
