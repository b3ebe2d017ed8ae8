/*
 * vmm_control.h - the vmm control socket for C and C++ host daemons (libvmm_control).
 *
 * A C ABI over vmm's own Rust client (the vm_control crate): the protocol in
 * docs/control-protocol.md, spoken by the same code as `vmm stop`, `vmm stats`, ...
 * Link with `pkg-config --cflags --libs vmm_control` (docs/c-api.md).
 *
 * This header is written by hand; vm_control_c/tests/header.rs compiles C against it to
 * check every structure's size and field offsets, every constant and every function's
 * type against the Rust declarations, so the two cannot drift apart.
 *
 * ERRORS
 *   Every function returning int returns 0 (or, for vmm_control_subscription_fd, a
 *   descriptor) on success and a negative errno on failure. After a failure,
 *   vmm_control_last_error() says what happened, and vmm_control_last_error_info() gives
 *   the VMM's own error kind, errno and detail when the VMM refused the request (kind
 *   != 0) as opposed to a failure on this side (kind == 0). Both are per thread: they
 *   describe the calling thread's last call, whatever other threads do. A successful call
 *   clears them. Failures on this side:
 *     -EINVAL        a NULL pointer, a zero timeout, or struct_size not set
 *     -EBUSY         another thread is inside a call on the same handle
 *     -EBADF         the descriptor given is not open
 *     -ETIMEDOUT     no answer within the handle's timeout (or connect could not finish)
 *     -ECONNRESET    the VMM closed the connection (it stopped, or the guest powered off)
 *     -EPROTO        the VMM sent something this library cannot make sense of
 *     -EPROTONOSUPPORT  the VMM's protocol is too old for the request (e.g. queues)
 *     other          the errno of connect(2) (-ENOENT: no such socket, -ECONNREFUSED:
 *                    nobody listening, -EACCES) or of sendmsg/recvmsg
 *   The VMM's refusals return its errno, e.g. balloon requests on a VM without --balloon
 *   return -ENODEV with kind VMM_CONTROL_ERR_UNSUPPORTED.
 *
 * TIMEOUTS
 *   No call blocks longer than the timeout given to vmm_control_connect (or
 *   vmm_control_set_timeout): one deadline covers sending a request and receiving its
 *   reply, however long the VMM takes to carry it out (vmm_control_snapshot: raise it).
 *   vmm_control_next_event never blocks.
 *
 * OWNERSHIP
 *   struct vmm_control and struct vmm_control_subscription are opaque handles, created by
 *   vmm_control_connect and vmm_control_subscribe and freed only by vmm_control_close and
 *   vmm_control_subscription_close (each NULL-safe, each exactly once). A subscription is
 *   independent of the handle it was made from: either may be closed first.
 *   The library owns every descriptor it opens (one socket per handle, one per
 *   subscription) and closes it when the handle is closed; all are close-on-exec. The
 *   descriptor from vmm_control_subscription_fd is the subscription's: poll it, never
 *   read, write or close it. A descriptor the caller passes in (register_memory,
 *   snapshot) stays the caller's: the library never closes it, and the caller may close it
 *   as soon as the call returns (the VMM keeps its own mapping, or its own copy until it
 *   has written the file). The descriptor vmm_control_console_attach returns is the
 *   caller's from then on: closing it detaches.
 *   Strings from vmm_control_last_error belong to the library and stay valid until the
 *   calling thread's next call into the library.
 *
 * THREADS
 *   Every function may be called from any thread. A handle (either kind) may move between
 *   threads and may be shared by them, but serves one call at a time: a call made while
 *   another thread is inside a call on the same handle fails at once with -EBUSY (never a
 *   data race). Use one handle per thread, or a lock, for concurrent requests. Closing a
 *   handle while another thread may still use it is the caller's bug, as with free().
 *
 * STRUCTURES THAT GROW
 *   Structures filled by the library start with struct_size. Set it to sizeof the
 *   structure before the call; the library fills at most that many bytes, zeroes what it
 *   does not know of, and sets struct_size to the bytes it filled. Fields may be added at
 *   the end in later versions; an older library leaves them 0.
 */
#ifndef VMM_CONTROL_H
#define VMM_CONTROL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes of the fixed arrays in replies (the protocol's limits). */
#define VMM_CONTROL_MAX_DEVICE_COUNTERS 48
#define VMM_CONTROL_MAX_QUEUES 24
#define VMM_CONTROL_MAX_MEMORY_REGIONS 41
/* Bytes per balloon page; guest_addr = pfn * VMM_CONTROL_PAGE_SIZE. */
#define VMM_CONTROL_PAGE_SIZE 4096

/* vmm_control_console_attach's flags (protocol version 4). */
#define VMM_CONTROL_CONSOLE_WRITE 1      /* be the console's writer (one at a time) */
#define VMM_CONTROL_CONSOLE_NO_HISTORY 2 /* skip the VMM's kept output */
/* Largest console frame, header included (docs/control-protocol.md). */
#define VMM_CONTROL_CONSOLE_FRAME_MAX 4096

/* vmm_control_snapshot's flags (protocol version 5). */
#define VMM_CONTROL_SNAPSHOT_STOP 1 /* end the VM once the snapshot is written whole */

/* The VMM's error kinds (struct vmm_control_error.kind); 0: a failure on this side. */
#define VMM_CONTROL_ERR_NONE 0
#define VMM_CONTROL_ERR_BAD_SIZE 1
#define VMM_CONTROL_ERR_INVALID_TYPE 2
#define VMM_CONTROL_ERR_UNSUPPORTED_VERSION 3
#define VMM_CONTROL_ERR_EXPECT_FD 4
#define VMM_CONTROL_ERR_UNEXPECTED_FD 5
#define VMM_CONTROL_ERR_ZERO_ID 6
#define VMM_CONTROL_ERR_RESERVED_NON_ZERO 7
#define VMM_CONTROL_ERR_INVALID_ARGUMENT 8
#define VMM_CONTROL_ERR_FAILED 9
#define VMM_CONTROL_ERR_UNSUPPORTED 10

/* Event kinds (struct vmm_control_event.kind). */
#define VMM_CONTROL_EVENT_POWERED_OFF 1
#define VMM_CONTROL_EVENT_RESET_REQUESTED 2
#define VMM_CONTROL_EVENT_CRASHED 3
#define VMM_CONTROL_EVENT_PAUSED 4
#define VMM_CONTROL_EVENT_RESUMED 5
#define VMM_CONTROL_EVENT_BALLOON_CHANGED 6 /* arg0: target, arg1: actual, in pages */

/* Device kinds (device counters and queues). */
#define VMM_CONTROL_DEVICE_SERIAL 1
#define VMM_CONTROL_DEVICE_I8042 2
#define VMM_CONTROL_DEVICE_CMOS 3
#define VMM_CONTROL_DEVICE_ACPI_PM 4
#define VMM_CONTROL_DEVICE_BALLOON 5
#define VMM_CONTROL_DEVICE_BLOCK 6
#define VMM_CONTROL_DEVICE_NET 7
#define VMM_CONTROL_DEVICE_RNG 8
#define VMM_CONTROL_DEVICE_CONSOLE 9
#define VMM_CONTROL_DEVICE_VSOCK 10

/* Device counters (struct vmm_control_device_counter.counter). */
#define VMM_CONTROL_COUNTER_REG_READS 1
#define VMM_CONTROL_COUNTER_REG_WRITES 2
#define VMM_CONTROL_COUNTER_INTERRUPTS 3
#define VMM_CONTROL_COUNTER_BYTES_IN 4
#define VMM_CONTROL_COUNTER_BYTES_OUT 5
#define VMM_CONTROL_COUNTER_BYTES_DROPPED 6
#define VMM_CONTROL_COUNTER_REQUESTS 7
#define VMM_CONTROL_COUNTER_IO_ERRORS 8
#define VMM_CONTROL_COUNTER_GUEST_MEMORY_FREE 9
#define VMM_CONTROL_COUNTER_GUEST_MEMORY_TOTAL 10
#define VMM_CONTROL_COUNTER_GUEST_MEMORY_AVAILABLE 11
#define VMM_CONTROL_COUNTER_FLUSHES 12
#define VMM_CONTROL_COUNTER_PACKETS_IN 13
#define VMM_CONTROL_COUNTER_PACKETS_OUT 14
#define VMM_CONTROL_COUNTER_PACKETS_DROPPED 15
#define VMM_CONTROL_COUNTER_INVALID_CHAINS 16

/* Queue state bits (struct vmm_control_queue.state). */
#define VMM_CONTROL_QUEUE_ACTIVE 1
#define VMM_CONTROL_QUEUE_EVENT_IDX 2
#define VMM_CONTROL_QUEUE_BROKEN 4
/* Served by the host kernel (vhost): device_avail and notifications are not known (0). */
#define VMM_CONTROL_QUEUE_VHOST 8

/* A connection for requests. */
struct vmm_control;
/* A connection that receives events. */
struct vmm_control_subscription;

/* The calling thread's last failure. */
struct vmm_control_error {
    uint32_t struct_size;
    uint32_t kind;        /* VMM_CONTROL_ERR_*: the VMM's refusal; 0: failure on this side */
    int32_t errnum;       /* the positive errno the call returned negated; 0 after success */
    uint16_t min_version; /* the VMM's protocol range, from its refusal; else 0 */
    uint16_t max_version;
    uint64_t detail;      /* the refusal's detail (docs/control-protocol.md); else 0 */
};

struct vmm_control_device_counter {
    uint16_t device_kind; /* VMM_CONTROL_DEVICE_* */
    uint16_t device_id;   /* instance among devices of that kind, from 0 */
    uint32_t counter;     /* VMM_CONTROL_COUNTER_* */
    uint64_t value;
};

struct vmm_control_stats {
    uint32_t struct_size;
    uint32_t vcpu_count;
    uint64_t uptime_ns;
    uint64_t guest_memory_bytes;
    uint64_t balloon_target_pages;
    uint64_t balloon_actual_pages;
    uint64_t exits_io;             /* VM exits by kind, all vCPUs */
    uint64_t exits_mmio;
    uint64_t exits_hlt;
    uint64_t exits_shutdown;
    uint64_t exits_system_event;
    uint64_t exits_fail_entry;
    uint64_t exits_internal_error;
    uint64_t exits_other;
    uint64_t utime_us;             /* the VMM process: getrusage(RUSAGE_SELF) */
    uint64_t stime_us;
    uint64_t maxrss_kib;
    uint64_t minflt;
    uint64_t majflt;
    uint32_t device_counter_count;    /* valid entries of device_counters */
    uint32_t device_counters_omitted; /* counters that did not fit the VMM's reply */
    struct vmm_control_device_counter device_counters[VMM_CONTROL_MAX_DEVICE_COUNTERS];
};

struct vmm_control_queue {
    uint16_t device_kind;   /* VMM_CONTROL_DEVICE_* */
    uint16_t device_id;
    uint16_t queue;         /* index as the driver numbers it */
    uint16_t size;          /* 0 while inactive */
    uint32_t state;         /* VMM_CONTROL_QUEUE_* bits */
    uint16_t driver_avail;  /* the driver's avail.idx */
    uint16_t device_avail;  /* next available entry the device will take */
    uint16_t device_used;   /* the used.idx the device published */
    uint16_t used_event;    /* the driver's used_event with EVENT_IDX, else 0 */
    uint32_t reserved;
    uint64_t notifications;
    uint64_t interrupts;
};

struct vmm_control_queues {
    uint32_t struct_size;
    uint32_t count;    /* valid entries of queues */
    uint32_t omitted;  /* queues that did not fit the VMM's reply */
    uint32_t reserved;
    struct vmm_control_queue queues[VMM_CONTROL_MAX_QUEUES];
};

struct vmm_control_memory_region {
    uint32_t slot;        /* for vmm_control_unregister_memory */
    uint32_t reserved;
    uint64_t guest_addr;  /* guest physical address of the first byte */
    uint64_t size;        /* bytes */
};

struct vmm_control_memory_list {
    uint32_t struct_size;
    uint32_t total;    /* regions registered in all, listed here or not */
    uint32_t count;    /* valid entries of regions, in slot order */
    uint32_t reserved;
    struct vmm_control_memory_region regions[VMM_CONTROL_MAX_MEMORY_REGIONS];
};

struct vmm_control_event {
    uint32_t struct_size;
    uint32_t kind;     /* VMM_CONTROL_EVENT_* */
    uint64_t arg0;     /* BALLOON_CHANGED: target, pages; else 0 */
    uint64_t arg1;     /* BALLOON_CHANGED: actual size, pages; else 0 */
};

/*
 * Connects to the control socket at `path` (vmm run --socket PATH). `timeout_ms` (at
 * least 1) bounds the connect and, from then on, every call on the handle. On success
 * *out is the new handle; on failure *out is NULL.
 */
int vmm_control_connect(const char *path, uint32_t timeout_ms, struct vmm_control **out);

/* Closes the handle and its socket. NULL is ignored. */
void vmm_control_close(struct vmm_control *ctl);

/* Sets the timeout (at least 1 ms) of every later call on the handle. */
int vmm_control_set_timeout(struct vmm_control *ctl, uint32_t timeout_ms);

/* The protocol versions the VMM accepts. */
int vmm_control_version(struct vmm_control *ctl, uint16_t *min_version, uint16_t *max_version);

/* Stops the VM; `vmm run` exits with 0. The VMM then closes every connection. */
int vmm_control_stop(struct vmm_control *ctl);

/* Pauses every vCPU (returns once they are out of the guest); pausing a paused VM is fine. */
int vmm_control_pause(struct vmm_control *ctl);

/* Resumes a paused VM; resuming a running one is fine. */
int vmm_control_resume(struct vmm_control *ctl);

/*
 * Sets the balloon target to `pages` 4 KiB pages. Needs `vmm run --balloon` (else -ENODEV,
 * kind VMM_CONTROL_ERR_UNSUPPORTED); above the guest's RAM: -EINVAL, kind
 * VMM_CONTROL_ERR_INVALID_ARGUMENT. Success means the target is set, not reached.
 */
int vmm_control_balloon_set_target(struct vmm_control *ctl, uint64_t pages);

/* Moves the balloon target by `delta_pages` (negative deflates, stopping at 0). */
int vmm_control_balloon_adjust(struct vmm_control *ctl, int64_t delta_pages);

/* Statistics into `*out`; set out->struct_size first. */
int vmm_control_get_stats(struct vmm_control *ctl, struct vmm_control_stats *out);

/* Every virtqueue's state into `*out`; set out->struct_size first. */
int vmm_control_get_queues(struct vmm_control *ctl, struct vmm_control_queues *out);

/*
 * Maps `size` bytes (non-zero, a multiple of 4096) of `fd` from offset 0, shared and
 * read-write, into guest physical memory above RAM. `fd` stays the caller's. On success
 * `*slot` is the slot for vmm_control_unregister_memory and `*guest_addr` where the region
 * starts in the guest.
 */
int vmm_control_register_memory(struct vmm_control *ctl, int fd, uint64_t size,
                                uint32_t *slot, uint64_t *guest_addr);

/* Removes the region in `slot` (-ENOENT, kind INVALID_ARGUMENT: nothing there). */
int vmm_control_unregister_memory(struct vmm_control *ctl, uint32_t slot);

/*
 * Lists registered regions with slots >= from_slot into `*out` (set out->struct_size
 * first): at most VMM_CONTROL_MAX_MEMORY_REGIONS; when out->count < out->total, call
 * again with from_slot = the last slot listed + 1.
 */
int vmm_control_list_memory(struct vmm_control *ctl, uint32_t from_slot,
                            struct vmm_control_memory_list *out);

/*
 * Attaches to the guest's console (protocol version 4; docs/control-protocol.md, "The
 * console stream"). `flags`: VMM_CONTROL_CONSOLE_WRITE and/or _NO_HISTORY. On success
 * *fd_out is a new AF_UNIX SOCK_SEQPACKET socket, blocking and close-on-exec, that the
 * caller owns (closing it detaches): the VMM sends console frames on it (the output it
 * kept, then live output; at most VMM_CONTROL_CONSOLE_FRAME_MAX bytes each) and, when
 * *granted has VMM_CONTROL_CONSOLE_WRITE, reads Input frames from it. The attachment does
 * not depend on the handle, which may be closed. -EBUSY (kind FAILED): another client is
 * the writer; -EUSERS (FAILED): 8 clients are attached; -ENODEV (UNSUPPORTED): the VM
 * keeps no console output (--console-ring 0).
 */
int vmm_control_console_attach(struct vmm_control *ctl, uint32_t flags, int *fd_out,
                               uint32_t *granted);

/*
 * Writes a snapshot of the VM (protocol version 5; docs/control-protocol.md, "Snapshot"):
 * the snapshot stream to `stream_fd`, guest RAM to `memory_fd` (sparse; as long as the
 * guest's RAM), for `vmm run --restore STREAM --memory MEMORY`. Both descriptors stay the
 * caller's (the library never closes them; the VMM writes through copies it closes when
 * done) and must be regular files open for writing, without O_APPEND, and two different
 * files: the VMM truncates each and writes it from offset 0 (pwrite: the descriptors'
 * offsets do not move). The VMM pauses every vCPU and device, captures their state, forks a
 * process that writes guest RAM from its copy-on-write view of it, and resumes the VM at
 * once (a VM paused before stays paused); the call returns once the memory file and the
 * stream are written and fsynced. `flags`: 0, or
 * VMM_CONTROL_SNAPSHOT_STOP to end the VM instead once both files are written whole (the
 * VMM writes them itself, the VM paused throughout): the call returns 0, then `vmm run` exits with 0 and the VMM closes every connection, as
 * after vmm_control_stop. On any failure the VM goes on as before (STOP or not), and what
 * the files hold is garbage for the caller to remove.
 *
 * The call blocks while guest RAM is written (about a second per GiB of RAM the guest
 * touched; the VM runs on and the VMM serves other requests meanwhile, but for STOP), and
 * like every call it is bounded by the
 * handle's timeout, which covers the whole save: raise it first with
 * vmm_control_set_timeout (`vmm snapshot` allows 600 s) and set it back after. -ETIMEDOUT
 * does not cancel the snapshot: the VMM finishes it (and, with STOP, ends the VM) without
 * the caller hearing of it; its late reply is dropped by the handle's next call, which
 * waits on for its own.
 *
 * Failures on this side (kind 0), checked before anything is sent:
 *   -EBADF   a descriptor is negative, not open, or not open for writing (O_RDONLY, O_PATH)
 *   -EINVAL  a NULL handle, flags other than VMM_CONTROL_SNAPSHOT_STOP, a descriptor with
 *            O_APPEND, or both descriptors naming the same file
 * and after: -EPROTONOSUPPORT, the VMM speaks protocol version 4 or older; -ETIMEDOUT,
 * the handle's timeout ran out (see above).
 * The VMM's refusals and failures (each leaves the VM as it was):
 *   -EBUSY      kind UNSUPPORTED: memory added by vmm_control_register_memory is
 *               registered (it cannot be saved); unregister it first. (-EBUSY with kind 0
 *               is this side's: another thread is inside a call on the handle.)
 *   -EOPNOTSUPP kind UNSUPPORTED: a device of the VM cannot be saved (the VMM's log says)
 *   -EINVAL     kind INVALID_ARGUMENT: a descriptor is not a regular file (a pipe, a
 *               socket, a device)
 *   -ETIMEDOUT  kind FAILED: a vCPU or a device worker did not stop in time; try again
 *               (not the handle's timeout, which is kind 0)
 *   -EBUSY      kind FAILED: another snapshot is being written; nothing was touched, try
 *               again once it is answered
 *   -ECANCELED  kind FAILED: the VM ended (stopped, powered off) while guest RAM was being
 *               written; the writer was killed
 *   -EIO        kind FAILED: the VM's state could not be captured
 *   other       kind FAILED: the errno of writing, sizing or syncing a file (-ENOSPC,
 *               -EDQUOT, -EFBIG, -EIO, ...) or of fstat on it, or of forking the writer
 *               (-ENOMEM, -EAGAIN)
 * and the errors every call can have (-ECONNRESET, -EPROTO, ...; see ERRORS above).
 */
int vmm_control_snapshot(struct vmm_control *ctl, int stream_fd, int memory_fd,
                         uint32_t flags);

/*
 * Subscribes to the VM's events on a connection of its own (to the same socket, with the
 * handle's timeout). On success *out is the new subscription; on failure NULL. Events
 * are read with vmm_control_next_event; wait for them by polling
 * vmm_control_subscription_fd for POLLIN.
 */
int vmm_control_subscribe(struct vmm_control *ctl, struct vmm_control_subscription **out);

/*
 * The subscription's descriptor, for poll()/epoll (POLLIN: an event or the VMM's hang-up
 * waits). It stays the subscription's: do not read it or close it.
 */
int vmm_control_subscription_fd(const struct vmm_control_subscription *sub);

/*
 * Reads the next event into `*out` (set out->struct_size first) without blocking:
 * 0 with an event, -EAGAIN when none is waiting, -ECONNRESET once the VMM closed the
 * connection (after VMM_CONTROL_EVENT_POWERED_OFF, CRASHED or RESET_REQUESTED, or a stop).
 * Call it until -EAGAIN right after subscribing and whenever the descriptor is readable.
 */
int vmm_control_next_event(struct vmm_control_subscription *sub, struct vmm_control_event *out);

/* Closes the subscription and its socket. NULL is ignored. */
void vmm_control_subscription_close(struct vmm_control_subscription *sub);

/*
 * What the calling thread's last failed call failed with, for a person ("" after a
 * success). Owned by the library; valid until this thread's next call into the library.
 */
const char *vmm_control_last_error(void);

/* The calling thread's last failure into `*out` (set out->struct_size first). */
int vmm_control_last_error_info(struct vmm_control_error *out);

#ifdef __cplusplus
}
#endif

#endif /* VMM_CONTROL_H */
