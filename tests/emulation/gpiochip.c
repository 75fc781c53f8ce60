/*
 * An emulated Linux GPIO character device (/dev/gpiochipN, uAPI v2), for tests.
 *
 * Loaded with LD_PRELOAD into the server (and so into every pin worker it
 * forks), it interposes open/ioctl/close and the stat/access family so that
 * the *real* lgpio library (and rpi-lgpio, and gpiozero's LGPIOFactory and
 * RPiGPIOFactory above them) drive an emulated chip instead of hardware.
 * Everything else passes straight through.
 *
 *   gpiozero ─ lgpio (real) ─ open/ioctl/read/ppoll ─ **this file** ─ shared state
 *
 * What it emulates, as the kernel does:
 *   - the device node: /dev/gpiochip<chipnum> exists (a character device to
 *     stat, lstat, fstatat, statx, access and faccessat, and the glibc < 2.33
 *     __xstat family) and opens as the emulated chip; every other
 *     /dev/gpiochip* does not exist (ENOENT; none does without a usable
 *     GPIOCHIP_EMU_DIR), so a test never reaches a real chip, whatever
 *     number a library tries. Absolute paths only: a path
 *     relative to a descriptor of /dev, or a listing of /dev, is not
 *     emulated;
 *   - GPIO_GET_CHIPINFO_IOCTL, GPIO_V2_GET_LINEINFO_IOCTL on the chip fd
 *     (the v1 ABI and line watches are not emulated: ENOTTY);
 *   - GPIO_V2_GET_LINE_IOCTL: a line request, returning a new fd (blocking
 *     and close-on-exec, like the kernel's); lines held by another request
 *     fail with EBUSY. Ownership is an open-file-description lock (F_OFD_SETLK)
 *     on byte <line> of GPIOCHIP_EMU_DIR/locks, held by a descriptor that goes
 *     with the request: taken under the chip mutex (a request of several
 *     lines is all or nothing), tested with F_OFD_GETLK (which takes
 *     nothing, so looking never makes a concurrent request fail), and gone
 *     when the last fd of the request is closed (a fork's copies included)
 *     or its process dies, as the kernel drops the lock with the process.
 *     Not tracked: dup() of a request fd (closing the original ends the
 *     request);
 *   - GPIO_V2_LINE_SET_CONFIG_IOCTL, GPIO_V2_LINE_GET_VALUES_IOCTL and
 *     GPIO_V2_LINE_SET_VALUES_IOCTL on a request fd (EPERM for setting inputs);
 *   - edge events: the request fd is a FIFO (event<first line>); a level
 *     change of a requested input with edge flags writes a struct
 *     gpio_v2_line_event (CLOCK_MONOTONIC or CLOCK_REALTIME timestamp; seqno
 *     per request and line_seqno per line, both from 1 for each request, the
 *     seqno being the line_seqno for a one-line request) into it, so read()
 *     and ppoll() on the fd behave as on a kernel line request. The request
 *     keeps event_buffer_size events (0: 16 per line; at most 16 * 64; rounded
 *     up to a power of two, as the kernel's kfifo is), and a full buffer drops
 *     its *oldest* event for the new one (the writer reads one record off,
 *     through a non-blocking descriptor of its own, after FIONREAD; a reader
 *     emptying the buffer at that very moment may cost one event more). A holder
 *     that died without closing is noticed before each event (F_OFD_GETLK):
 *     its edge flags are cleared and nothing is written for nobody;
 *   - /proc/device-tree/... and /sys/firmware/devicetree/base/... are read
 *     (opened, stat'ed) from the emulation directory, so the test chooses the
 *     board (revision, model) that gpiozero, rpi-lgpio and the server see.
 *
 * Levels: an output drives its value; an input follows, in this order, a
 * level driven from outside (the test), the output it is wired to, its bias
 * (pull-up 1, pull-down 0), the board's fixed pull-up (GPIO2/3 on a Pi), and
 * otherwise keeps its last level (a floating pin reads what it last read).
 *
 * The state lives in a file mapped by every process (GPIOCHIP_EMU_DIR/state),
 * guarded by a process-shared robust mutex. In a process, emulated fds are
 * kept in a table (pages made as fds need them: any fd below 1 << 20): an
 * ioctl holds it shared (a pthread rwlock) for as long as it uses the fd's
 * entry, a close exclusively while it unhooks the entry, so a thread's ioctl
 * (lgpio's PWM thread) never uses an entry that another thread's close
 * (freeing the line) freed. A fork child gets a fresh rwlock; a vfork child
 * (which shares our memory) closes fds without touching the table. The
 * library's own descriptors (event writers, the lock probe) are checked
 * before each use and opened again if the program closed them behind its
 * back. Tests load a copy of this library
 * per chip with ctypes (without LD_PRELOAD) and call the gpioemu_* functions
 * below to create the chip, drive inputs, wire pins and read levels; each
 * copy has its own globals, so one test process can have several chips.
 *
 * Test hook: GPIOCHIP_EMU_TEST_IOCTL_DELAY_US makes every ioctl on a request
 * fd sleep that long while it holds the fd's entry (to show that a close
 * meanwhile waits for it). Needs glibc 2.33 or later (stat and friends are
 * real functions there).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/gpio.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define EMU_MAGIC 0x47504945u   /* "GPIE" */
#define EMU_VERSION 2u
#define MAX_LINES 64
#define WIRE_DEPTH 8
#define FD_PAGE 1024            /* the fd table: pages of entries, made as needed, */
#define FD_PAGES 1024           /* for fds below 1 << 20 (fs.nr_open's default) */
#define EVENT_SIZE ((int)sizeof(struct gpio_v2_line_event))
#define EVENTS_PER_LINE 16      /* the kernel's default event_buffer_size, per line */
#define GPIO_MAJOR 254          /* what a Pi's /dev/gpiochip* shows (a dynamic major) */
#define CHIP_PREFIX "/dev/gpiochip"

#define F_DIRECTION (GPIO_V2_LINE_FLAG_INPUT | GPIO_V2_LINE_FLAG_OUTPUT)
#define F_EDGES (GPIO_V2_LINE_FLAG_EDGE_RISING | GPIO_V2_LINE_FLAG_EDGE_FALLING)
#define F_BIAS (GPIO_V2_LINE_FLAG_BIAS_PULL_UP | GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN | \
                GPIO_V2_LINE_FLAG_BIAS_DISABLED)
#define F_DRIVE (GPIO_V2_LINE_FLAG_OPEN_DRAIN | GPIO_V2_LINE_FLAG_OPEN_SOURCE)
#define F_CLOCK (GPIO_V2_LINE_FLAG_EVENT_CLOCK_REALTIME | GPIO_V2_LINE_FLAG_EVENT_CLOCK_HTE)
#define F_VALID (GPIO_V2_LINE_FLAG_ACTIVE_LOW | F_DIRECTION | F_EDGES | F_BIAS | F_DRIVE | \
                 GPIO_V2_LINE_FLAG_EVENT_CLOCK_REALTIME)

struct emu_line {
    uint64_t flags;          /* GPIO_V2_LINE_FLAG_* as last requested or configured */
    int32_t value;           /* logical output value */
    int32_t drive;           /* -1, or the level driven from outside */
    int32_t wire;            /* -1, or the line whose level this input follows */
    int32_t level;           /* physical level, as last settled */
    int32_t leader;          /* -1, or the first line of the request holding it */
    int32_t fixed_pullup;    /* a resistor on the board (GPIO2/3) */
    uint32_t line_seqno;     /* events of this line in its request */
    uint32_t debounce_us;
    /* of the request whose first line this is: */
    uint32_t capacity;       /* events its buffer keeps */
    uint32_t req_lines;      /* lines in it */
    uint32_t req_seqno;      /* events of all its lines */
    uint32_t reserved;
    uint64_t events;         /* events written for this line */
    uint64_t dropped;        /* events (the oldest) dropped from a full buffer of its request */
    uint64_t requests;       /* times requested */
    char consumer[GPIO_MAX_NAME_SIZE];
    char name[GPIO_MAX_NAME_SIZE];
};

struct emu_chip {
    uint32_t magic, version, nlines, chipnum;
    pthread_mutex_t lock;
    char name[GPIO_MAX_NAME_SIZE];
    char label[GPIO_MAX_NAME_SIZE];
    struct emu_line lines[MAX_LINES];
};

enum fd_kind { FD_NONE = 0, FD_CHIP, FD_REQUEST };

struct fd_entry {
    enum fd_kind kind;
    int lockfd;              /* a request's: holds the OFD locks of its lines */
    uint32_t num_lines;
    uint32_t offsets[GPIO_V2_LINES_MAX];
};

/* A descriptor this library keeps open for itself; checked before each use,
 * since a program may close it behind our back (close_range, a daemon). */
struct own_fd {
    int open, fd;
    dev_t dev;
    ino_t ino;
};

static struct emu_chip *chip;
static char emu_dir[PATH_MAX - 64];
static struct fd_entry **fd_pages[FD_PAGES];
static pthread_rwlock_t table_lock = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
static pid_t table_pid;                 /* the process the table belongs to */
static struct own_fd writers[MAX_LINES];    /* non-blocking, to the FIFOs; chip locked */
static struct own_fd probe;             /* the locks file, to test (never take) locks */
static long test_delay_us = -1;

static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_close)(int);
static int (*real_stat)(const char *, struct stat *);
static int (*real_stat64)(const char *, struct stat64 *);
static int (*real_lstat)(const char *, struct stat *);
static int (*real_lstat64)(const char *, struct stat64 *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_fstatat64)(int, const char *, struct stat64 *, int);
static int (*real_statx)(int, const char *, int, unsigned int, struct statx *);
static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);

static void *next_symbol(const char *name)
{
    void *f = dlsym(RTLD_NEXT, name);
    return f ? f : dlsym(RTLD_DEFAULT, name);
}

static void resolve(void)
{
    if (!real_open) {
        real_openat = next_symbol("openat");
        real_ioctl = next_symbol("ioctl");
        real_close = next_symbol("close");
        real_stat = next_symbol("stat");
        real_stat64 = next_symbol("stat64");
        real_lstat = next_symbol("lstat");
        real_lstat64 = next_symbol("lstat64");
        real_fstatat = next_symbol("fstatat");
        real_fstatat64 = next_symbol("fstatat64");
        real_statx = next_symbol("statx");
        real_access = next_symbol("access");
        real_faccessat = next_symbol("faccessat");
        __atomic_store_n(&real_open, next_symbol("open"), __ATOMIC_RELEASE);
    }
}

/* After fork(), the child has one thread: a table lock held by another
 * thread of the parent would never be let go. (A vfork() child shares our
 * memory and runs no handler: close() leaves the table alone there.) */
static void after_fork_child(void)
{
    static const pthread_rwlock_t fresh = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
    table_lock = fresh;
    table_pid = getpid();
}

__attribute__((constructor)) static void setup(void)
{
    resolve();
    table_pid = getpid();
    pthread_atfork(NULL, NULL, after_fork_child);
}

/* ---------------------------------------------------------------- the fd table */

static struct fd_entry *slot_get(int fd)
{
    struct fd_entry **page;

    if (fd < 0 || fd >= FD_PAGE * FD_PAGES)
        return NULL;
    page = __atomic_load_n(&fd_pages[fd / FD_PAGE], __ATOMIC_ACQUIRE);
    return page ? __atomic_load_n(&page[fd % FD_PAGE], __ATOMIC_ACQUIRE) : NULL;
}

static int slot_set(int fd, struct fd_entry *e)
{
    struct fd_entry **page, **expected = NULL;

    if (fd < 0 || fd >= FD_PAGE * FD_PAGES)
        return -EMFILE;
    page = __atomic_load_n(&fd_pages[fd / FD_PAGE], __ATOMIC_ACQUIRE);
    if (!page) {
        struct fd_entry **fresh = calloc(FD_PAGE, sizeof *fresh);
        if (!fresh)
            return -ENOMEM;
        if (__atomic_compare_exchange_n(&fd_pages[fd / FD_PAGE], &expected, fresh, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            page = fresh;
        } else {
            free(fresh);
            page = expected;
        }
    }
    __atomic_store_n(&page[fd % FD_PAGE], e, __ATOMIC_RELEASE);
    return 0;
}

static struct fd_entry *slot_take(int fd)
{
    struct fd_entry **page;

    if (fd < 0 || fd >= FD_PAGE * FD_PAGES)
        return NULL;
    page = __atomic_load_n(&fd_pages[fd / FD_PAGE], __ATOMIC_ACQUIRE);
    return page ? __atomic_exchange_n(&page[fd % FD_PAGE], NULL, __ATOMIC_ACQ_REL) : NULL;
}

/* ---------------------------------------------------------------- the state */

static void forget_own_fds(void)
{
    for (int i = 0; i < MAX_LINES; i++)
        writers[i].open = 0;
    probe.open = 0;
}

static int attach_dir(const char *dir)
{
    struct stat st;
    char path[PATH_MAX];
    struct emu_chip *map;
    int fd;

    resolve();
    if (chip)
        return 0;
    if (!dir || strlen(dir) >= sizeof emu_dir)
        return -ENOENT;
    snprintf(path, sizeof path, "%s/state", dir);
    fd = real_open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof(struct emu_chip)) {
        real_close(fd);
        return -EINVAL;
    }
    map = mmap(NULL, sizeof(struct emu_chip), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    real_close(fd);
    if (map == MAP_FAILED)
        return -errno;
    if (__atomic_load_n(&map->magic, __ATOMIC_ACQUIRE) != EMU_MAGIC ||
            map->version != EMU_VERSION) {
        munmap(map, sizeof(struct emu_chip));
        return -EINVAL;
    }
    strcpy(emu_dir, dir);
    forget_own_fds();
    chip = map;
    return 0;
}

static int attach(void)
{
    return chip ? 0 : attach_dir(getenv("GPIOCHIP_EMU_DIR"));
}

static void lock_chip(void)
{
    if (pthread_mutex_lock(&chip->lock) == EOWNERDEAD)
        pthread_mutex_consistent(&chip->lock);   /* a process died holding it */
}

static void unlock_chip(void)
{
    pthread_mutex_unlock(&chip->lock);
}

static void dir_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", emu_dir, name);
}

static void line_path(char *out, size_t size, const char *kind, int line)
{
    snprintf(out, size, "%s/%s%d", emu_dir, kind, line);
}

/* This process's descriptor *c* of *path*, opened with *flags*: the one kept,
 * if it still is that (the same file, opened the same way: not a request's
 * fd of the same FIFO or lock file that took its number), or a new one. */
static int own_fd(struct own_fd *c, const char *path, int flags)
{
    const int mode = O_ACCMODE | O_NONBLOCK;
    struct stat st;

    if (c->open && fstat(c->fd, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino &&
            (fcntl(c->fd, F_GETFL) & mode) == (flags & mode))
        return c->fd;
    c->open = 0;          /* (closed behind our back: the number is someone else's now) */
    c->fd = real_open(path, flags | O_CLOEXEC);
    if (c->fd < 0)
        return -1;
    if (fstat(c->fd, &st) < 0) {
        real_close(c->fd);
        return -1;
    }
    c->dev = st.st_dev;
    c->ino = st.st_ino;
    c->open = 1;
    return c->fd;
}

/* ---------------------------------------------------------------- ownership */

/* With the chip locked: is *line* held by a request (of any process, this
 * one included)? F_OFD_GETLK takes nothing, so it never disturbs a request. */
static int line_in_use(int line)
{
    char path[PATH_MAX];
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = line, .l_len = 1};
    int fd;

    dir_path(path, sizeof path, "locks");
    fd = own_fd(&probe, path, O_RDONLY);   /* (requests' lock fds are O_RDWR) */
    if (fd < 0 || fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return 0;
    return fl.l_type != F_UNLCK;
}

/* Take *line* for the request whose lock descriptor is *lockfd*. */
static int take_line(int lockfd, int line)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = line, .l_len = 1};

    if (fcntl(lockfd, F_OFD_SETLK, &fl) == 0)
        return 0;
    return errno == EAGAIN || errno == EACCES ? -EBUSY : -errno;
}

/* With the chip locked: *line*'s holder is gone; forget it. */
static void forget_holder(struct emu_line *l)
{
    l->leader = -1;
    l->flags &= ~(F_EDGES | F_CLOCK);
}

/* ---------------------------------------------------------------- levels */

static int physical_level(int line, int depth)
{
    struct emu_line *l = &chip->lines[line];

    if (l->flags & GPIO_V2_LINE_FLAG_OUTPUT)
        return (l->value ^ !!(l->flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW)) & 1;
    if (l->drive >= 0)
        return l->drive;
    if (l->wire >= 0 && depth < WIRE_DEPTH) {
        struct emu_line *s = &chip->lines[l->wire];
        if ((s->flags & GPIO_V2_LINE_FLAG_OUTPUT) || s->drive >= 0 || s->wire >= 0)
            return physical_level(l->wire, depth + 1);
    }
    if (l->flags & GPIO_V2_LINE_FLAG_BIAS_PULL_UP)
        return 1;
    if (l->flags & GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN)
        return 0;
    if (l->fixed_pullup)
        return 1;
    return l->level;
}

static uint64_t now_ns(uint64_t flags)
{
    struct timespec ts;
    clock_gettime(flags & GPIO_V2_LINE_FLAG_EVENT_CLOCK_REALTIME ? CLOCK_REALTIME : CLOCK_MONOTONIC,
                  &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* With the chip locked: this process's non-blocking descriptor of the FIFO of
 * the request led by *leader*, to write events and to drop or drain them. */
static int writer_fd(int leader)
{
    char path[PATH_MAX];

    line_path(path, sizeof path, "event", leader);
    return own_fd(&writers[leader], path, O_RDWR | O_NONBLOCK);
}

static void drain(int fd)
{
    char buffer[4096];
    if (fd >= 0)
        while (read(fd, buffer, sizeof buffer) > 0)
            ;
}

/* With the chip locked: queue *event* for the request led by *leader*; a full
 * buffer loses its oldest event, as the kernel's (kfifo_skip). */
static int put_event(int leader, const struct gpio_v2_line_event *event)
{
    struct emu_line *lead = &chip->lines[leader];
    char record[EVENT_SIZE];
    int fd = writer_fd(leader), queued;
    int capacity = lead->capacity ? (int)lead->capacity : EVENTS_PER_LINE;

    if (fd < 0)
        return -1;
    while (real_ioctl(fd, FIONREAD, &queued) == 0 && queued >= capacity * EVENT_SIZE) {
        if (read(fd, record, EVENT_SIZE) != EVENT_SIZE)
            break;
        lead->dropped++;
    }
    return write(fd, event, EVENT_SIZE) == EVENT_SIZE ? 0 : -1;
}

/* Called with the chip locked: the line's physical level changed. */
static void edge(int line, int level)
{
    struct emu_line *l = &chip->lines[line], *lead;
    struct gpio_v2_line_event event;
    int active = level ^ !!(l->flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW);
    uint64_t wanted = active ? GPIO_V2_LINE_FLAG_EDGE_RISING : GPIO_V2_LINE_FLAG_EDGE_FALLING;

    if (!(l->flags & GPIO_V2_LINE_FLAG_INPUT) || !(l->flags & wanted) || l->leader < 0)
        return;
    if (!line_in_use(line)) {      /* its holder died without closing: nobody to tell */
        forget_holder(l);
        return;
    }
    lead = &chip->lines[l->leader];
    memset(&event, 0, sizeof event);
    event.timestamp_ns = now_ns(l->flags);
    event.id = active ? GPIO_V2_LINE_EVENT_RISING_EDGE : GPIO_V2_LINE_EVENT_FALLING_EDGE;
    event.offset = line;
    event.line_seqno = ++l->line_seqno;
    ++lead->req_seqno;
    event.seqno = lead->req_lines == 1 ? event.line_seqno : lead->req_seqno;
    if (put_event(l->leader, &event) == 0)
        l->events++;
    else
        lead->dropped++;
}

/* Called with the chip locked: bring every line's level up to date. Lines in
 * *quiet* (a bit mask) take their new level without an event: they were just
 * configured, and the kernel enables edge detection after applying the bias. */
static void settle(uint64_t quiet)
{
    for (int pass = 0; pass < WIRE_DEPTH; pass++) {
        int changed = 0;
        for (uint32_t i = 0; i < chip->nlines; i++) {
            int level = physical_level(i, 0);
            if (level != chip->lines[i].level) {
                chip->lines[i].level = level;
                if (!(quiet & ((uint64_t)1 << i)))
                    edge(i, level);
                changed = 1;
            }
        }
        if (!changed)
            break;
    }
}

/* ---------------------------------------------------------------- line config */

static int check_flags(uint64_t flags)
{
    if (flags & ~F_VALID)
        return -EINVAL;
    if ((flags & F_DIRECTION) == F_DIRECTION)
        return -EINVAL;
    if ((flags & F_EDGES) && !(flags & GPIO_V2_LINE_FLAG_INPUT))
        return -EINVAL;
    if ((flags & F_DRIVE) && !(flags & GPIO_V2_LINE_FLAG_OUTPUT))
        return -EINVAL;
    if ((flags & F_DRIVE) == F_DRIVE)
        return -EINVAL;
    if (__builtin_popcountll(flags & F_BIAS) > 1)
        return -EINVAL;
    if ((flags & F_BIAS) && !(flags & F_DIRECTION))
        return -EINVAL;
    return 0;
}

static int all_zero(const void *p, size_t size)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < size; i++)
        if (b[i])
            return 0;
    return 1;
}

/* The flags, output value and debounce that *config* gives line index *i*. */
static int line_config(const struct gpio_v2_line_config *config, uint32_t i,
                       uint64_t *flags, int *value, int *has_value, uint32_t *debounce)
{
    uint64_t bit = (uint64_t)1 << i;

    if (config->num_attrs > GPIO_V2_LINE_NUM_ATTRS_MAX ||
            !all_zero(config->padding, sizeof config->padding))
        return -EINVAL;
    *flags = config->flags;
    *has_value = 0;
    *value = 0;
    *debounce = 0;
    for (uint32_t a = 0; a < config->num_attrs; a++) {
        const struct gpio_v2_line_config_attribute *attr = &config->attrs[a];
        if (!(attr->mask & bit))
            continue;
        switch (attr->attr.id) {
        case GPIO_V2_LINE_ATTR_ID_FLAGS:
            *flags = attr->attr.flags;
            break;
        case GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES:
            *value = !!(attr->attr.values & bit);
            *has_value = 1;
            break;
        case GPIO_V2_LINE_ATTR_ID_DEBOUNCE:
            *debounce = attr->attr.debounce_period_us;
            break;
        default:
            return -EINVAL;
        }
    }
    return check_flags(*flags);
}

/* With the chip locked: apply *config* to the lines of a request. */
static int apply_config(const struct gpio_v2_line_config *config, uint32_t num_lines,
                        const uint32_t *offsets, int leader, const char *consumer)
{
    uint64_t flags[GPIO_V2_LINES_MAX], quiet = 0;
    int value[GPIO_V2_LINES_MAX], has_value[GPIO_V2_LINES_MAX];
    uint32_t debounce[GPIO_V2_LINES_MAX];
    int rc;

    for (uint32_t i = 0; i < num_lines; i++) {
        rc = line_config(config, i, &flags[i], &value[i], &has_value[i], &debounce[i]);
        if (rc)
            return rc;
    }
    for (uint32_t i = 0; i < num_lines; i++) {
        struct emu_line *l = &chip->lines[offsets[i]];
        uint64_t f = flags[i];
        if (!(f & F_DIRECTION))             /* "as is": keep the direction */
            f |= l->flags & F_DIRECTION;
        l->flags = f;
        if (f & GPIO_V2_LINE_FLAG_OUTPUT)
            l->value = has_value[i] ? value[i] : 0;
        l->debounce_us = debounce[i];
        if (leader >= 0)
            l->leader = leader;
        if (consumer) {
            memset(l->consumer, 0, sizeof l->consumer);
            snprintf(l->consumer, sizeof l->consumer, "%.*s", (int)sizeof l->consumer - 1, consumer);
        }
        if (f & GPIO_V2_LINE_FLAG_INPUT)
            quiet |= (uint64_t)1 << offsets[i];
    }
    settle(quiet);
    return 0;
}

/* ---------------------------------------------------------------- ioctls */

static int chip_info(struct gpiochip_info *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", chip->name);
    snprintf(info->label, sizeof info->label, "%s", chip->label);
    info->lines = chip->nlines;
    return 0;
}

static int line_info(struct gpio_v2_line_info *info)
{
    uint32_t offset = info->offset;
    struct emu_line *l;
    int used;

    if (offset >= chip->nlines)
        return -EINVAL;
    lock_chip();
    used = line_in_use(offset);
    l = &chip->lines[offset];
    if (!used && l->leader >= 0)    /* its holder ended without closing (died) */
        forget_holder(l);
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", l->name);
    info->offset = offset;
    info->flags = l->flags & (F_DIRECTION | F_BIAS | F_DRIVE | GPIO_V2_LINE_FLAG_ACTIVE_LOW |
                              (used ? F_EDGES | F_CLOCK : 0));
    if (!(info->flags & F_DIRECTION))
        info->flags |= GPIO_V2_LINE_FLAG_INPUT;
    if (used) {
        info->flags |= GPIO_V2_LINE_FLAG_USED;
        snprintf(info->consumer, sizeof info->consumer, "%s", l->consumer);
        if (l->debounce_us) {
            info->num_attrs = 1;
            info->attrs[0].id = GPIO_V2_LINE_ATTR_ID_DEBOUNCE;
            info->attrs[0].debounce_period_us = l->debounce_us;
        }
    }
    unlock_chip();
    return 0;
}

/* The events a request keeps, as the kernel sizes its kfifo. */
static uint32_t buffer_capacity(uint32_t asked, uint32_t num_lines)
{
    uint32_t size = asked ? asked : num_lines * EVENTS_PER_LINE, capacity = 1;

    if (size > GPIO_V2_LINES_MAX * EVENTS_PER_LINE)
        size = GPIO_V2_LINES_MAX * EVENTS_PER_LINE;
    while (capacity < size)
        capacity <<= 1;
    return capacity;
}

/* The request *e* ended in this process (its fd closed): its lines are free
 * unless another fd of it (a fork's copy) still holds their locks. */
static void release_request(struct fd_entry *e)
{
    real_close(e->lockfd);
    e->lockfd = -1;
    lock_chip();
    for (uint32_t i = 0; i < e->num_lines; i++) {
        struct emu_line *l = &chip->lines[e->offsets[i]];
        if (l->leader == (int)e->offsets[0] && !line_in_use(e->offsets[i]))
            forget_holder(l);
    }
    unlock_chip();
}

static int request_lines(struct gpio_v2_line_request *req)
{
    struct fd_entry *e;
    char path[PATH_MAX];
    uint64_t seen = 0;
    uint32_t leader, capacity;
    int fd, rc = 0;

    if (req->num_lines < 1 || req->num_lines > GPIO_V2_LINES_MAX ||
            !all_zero(req->padding, sizeof req->padding))
        return -EINVAL;
    for (uint32_t i = 0; i < req->num_lines; i++) {
        uint32_t o = req->offsets[i];
        uint64_t f, bit = (uint64_t)1 << o;
        int v, hv;
        uint32_t d;
        if (o >= chip->nlines || (seen & bit))
            return -EINVAL;
        seen |= bit;
        rc = line_config(&req->config, i, &f, &v, &hv, &d);
        if (rc)
            return rc;
    }
    leader = req->offsets[0];
    capacity = buffer_capacity(req->event_buffer_size, req->num_lines);
    e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->kind = FD_REQUEST;
    e->num_lines = req->num_lines;
    memcpy(e->offsets, req->offsets, req->num_lines * sizeof e->offsets[0]);
    dir_path(path, sizeof path, "locks");
    e->lockfd = real_open(path, O_RDWR | O_CLOEXEC);
    if (e->lockfd < 0) {
        rc = -errno;
        free(e);
        return rc;
    }
    /* the request fd: blocking, like the kernel's (opening a FIFO for reading
     * and writing never blocks; events are written, dropped and drained
     * through separate non-blocking descriptions) */
    line_path(path, sizeof path, "event", leader);
    fd = real_open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        real_close(e->lockfd);
        free(e);
        return rc;
    }
    if (fcntl(fd, F_GETPIPE_SZ) < (int)capacity * EVENT_SIZE)
        fcntl(fd, F_SETPIPE_SZ, (int)capacity * EVENT_SIZE);   /* (best effort) */
    lock_chip();
    for (uint32_t i = 0; i < req->num_lines && !rc; i++)
        rc = take_line(e->lockfd, req->offsets[i]);      /* all or nothing, under the mutex */
    if (!rc) {
        struct emu_line *lead = &chip->lines[leader];
        drain(writer_fd(leader));    /* events left for an earlier holder of the line */
        lead->capacity = capacity;
        lead->req_lines = req->num_lines;
        lead->req_seqno = 0;
        for (uint32_t i = 0; i < req->num_lines; i++) {
            chip->lines[req->offsets[i]].line_seqno = 0;
            chip->lines[req->offsets[i]].requests++;
        }
        rc = apply_config(&req->config, req->num_lines, req->offsets, (int)leader,
                          req->consumer);
    }
    unlock_chip();
    if (!rc)
        rc = slot_set(fd, e);
    if (rc) {
        real_close(fd);
        release_request(e);          /* (closes the lock fd: lines taken are free again) */
        free(e);
        return rc;
    }
    req->fd = fd;
    return 0;
}

static int get_values(struct fd_entry *e, struct gpio_v2_line_values *lv)
{
    uint64_t bits = 0;

    lock_chip();
    for (uint32_t i = 0; i < e->num_lines; i++) {
        struct emu_line *l = &chip->lines[e->offsets[i]];
        int logical;
        if (!(lv->mask & ((uint64_t)1 << i)))
            continue;
        if (l->flags & GPIO_V2_LINE_FLAG_OUTPUT)
            logical = l->value;
        else
            logical = physical_level(e->offsets[i], 0) ^ !!(l->flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW);
        if (logical)
            bits |= (uint64_t)1 << i;
    }
    unlock_chip();
    lv->bits = bits;
    return 0;
}

static int set_values(struct fd_entry *e, const struct gpio_v2_line_values *lv)
{
    int rc = 0;

    lock_chip();
    for (uint32_t i = 0; i < e->num_lines; i++)
        if ((lv->mask & ((uint64_t)1 << i)) &&
                !(chip->lines[e->offsets[i]].flags & GPIO_V2_LINE_FLAG_OUTPUT))
            rc = -EPERM;
    if (!rc) {
        for (uint32_t i = 0; i < e->num_lines; i++)
            if (lv->mask & ((uint64_t)1 << i))
                chip->lines[e->offsets[i]].value = !!(lv->bits & ((uint64_t)1 << i));
        settle(0);
    }
    unlock_chip();
    return rc;
}

/* With the table held shared: *e* stays valid until it is let go. */
static int emu_ioctl(struct fd_entry *e, unsigned long request, void *arg)
{
    if (!arg)
        return -EFAULT;
    if (e->kind == FD_CHIP) {
        switch (request) {
        case GPIO_GET_CHIPINFO_IOCTL:
            return chip_info(arg);
        case GPIO_V2_GET_LINEINFO_IOCTL:
            return line_info(arg);
        case GPIO_V2_GET_LINE_IOCTL:
            return request_lines(arg);
        default:
            return -ENOTTY;   /* the v1 ABI and line watches are not emulated */
        }
    }
    if (test_delay_us < 0) {
        const char *delay = getenv("GPIOCHIP_EMU_TEST_IOCTL_DELAY_US");
        test_delay_us = delay ? atol(delay) : 0;
    }
    if (test_delay_us > 0)
        usleep(test_delay_us);
    switch (request) {
    case GPIO_V2_LINE_GET_VALUES_IOCTL:
        return get_values(e, arg);
    case GPIO_V2_LINE_SET_VALUES_IOCTL:
        return set_values(e, arg);
    case GPIO_V2_LINE_SET_CONFIG_IOCTL: {
        int rc;
        lock_chip();
        rc = apply_config(arg, e->num_lines, e->offsets, -1, NULL);
        unlock_chip();
        return rc;
    }
    default:
        return -ENOTTY;
    }
}

/* ---------------------------------------------------------------- paths */

static const char *redirect(const char *path, char *buffer, size_t size)
{
    static const char *prefixes[] = {"/proc/device-tree/", "/sys/firmware/devicetree/base/"};

    if (!path || path[0] != '/' || attach() < 0)
        return path;
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t n = strlen(prefixes[i]);
        if (strncmp(path, prefixes[i], n) == 0) {
            snprintf(buffer, size, "%s/device-tree/%s", emu_dir, path + n);
            return buffer;
        }
    }
    return path;
}

/* 1: *path* is the emulated chip; -1: another /dev/gpiochip* (which does not
 * exist here, whatever the kernel has); 0: any other path. */
static int chip_path(const char *path)
{
    char name[32];

    if (!path || strncmp(path, CHIP_PREFIX, sizeof CHIP_PREFIX - 1) != 0)
        return 0;
    if (attach() < 0)
        return -1;
    snprintf(name, sizeof name, CHIP_PREFIX "%u", chip->chipnum);
    return strcmp(path, name) == 0 ? 1 : -1;
}

/* What a stat-like call on *path* looks at: the state file for the emulated
 * chip (*dress*: make it look like the device), the emulated device tree, or
 * *path* itself; NULL (errno ENOENT) for a gpiochip that does not exist. */
static const char *stat_target(const char *path, char *buffer, size_t size, int *dress)
{
    *dress = 0;
    switch (chip_path(path)) {
    case 1:
        dir_path(buffer, size, "state");
        *dress = 1;
        return buffer;
    case -1:
        errno = ENOENT;
        return NULL;
    default:
        return redirect(path, buffer, size);
    }
}

#define DRESS(st) do { \
        (st)->st_mode = S_IFCHR | ((st)->st_mode & 07777); \
        (st)->st_rdev = makedev(GPIO_MAJOR, chip->chipnum); \
        (st)->st_size = 0; \
        (st)->st_blocks = 0; \
    } while (0)

static int open_chip(int flags)
{
    char path[PATH_MAX];
    struct fd_entry *e;
    int fd, rc;

    if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) {
        errno = EEXIST;
        return -1;
    }
    if (flags & O_DIRECTORY) {
        errno = ENOTDIR;
        return -1;
    }
    if (!(e = calloc(1, sizeof *e))) {
        errno = ENOMEM;
        return -1;
    }
    e->kind = FD_CHIP;
    e->lockfd = -1;
    dir_path(path, sizeof path, "state");
    fd = real_open(path, O_RDONLY | (flags & O_CLOEXEC));
    if (fd < 0) {
        free(e);
        return -1;
    }
    rc = slot_set(fd, e);
    if (rc) {
        real_close(fd);
        free(e);
        errno = -rc;
        return -1;
    }
    return fd;
}

static int do_open(int dirfd, const char *path, int flags, mode_t mode)
{
    char buffer[PATH_MAX];
    const char *target;

    resolve();
    switch (chip_path(path)) {
    case 1:
        return open_chip(flags);
    case -1:
        errno = ENOENT;
        return -1;
    }
    target = redirect(path, buffer, sizeof buffer);
    if (dirfd == AT_FDCWD || target != path)
        return real_open(target, flags, mode);
    return real_openat(dirfd, path, flags, mode);
}

/* Does open() with *flags* take a mode argument? (O_TMPFILE includes O_DIRECTORY.) */
static int wants_mode(int flags)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

#define MODE_ARG(flags) \
    mode_t mode = 0; \
    if (wants_mode(flags)) { \
        va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

int open(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(AT_FDCWD, path, flags, mode); }
int open64(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(AT_FDCWD, path, flags, mode); }
int openat(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(dirfd, path, flags, mode); }
int openat64(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(dirfd, path, flags, mode); }
int __open_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0); }
int __open64_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0); }
int __openat_2(int dirfd, const char *path, int flags) { return do_open(dirfd, path, flags, 0); }
int __openat64_2(int dirfd, const char *path, int flags) { return do_open(dirfd, path, flags, 0); }

/* ---------------------------------------------------------------- stat and access */

int stat(const char *path, struct stat *st)
{
    char buffer[PATH_MAX];
    int dress;
    const char *target;

    resolve();
    if (!(target = stat_target(path, buffer, sizeof buffer, &dress)) || real_stat(target, st) < 0)
        return -1;
    if (dress)
        DRESS(st);
    return 0;
}

int stat64(const char *path, struct stat64 *st)
{
    char buffer[PATH_MAX];
    int dress;
    const char *target;

    resolve();
    if (!(target = stat_target(path, buffer, sizeof buffer, &dress)) || real_stat64(target, st) < 0)
        return -1;
    if (dress)
        DRESS(st);
    return 0;
}

int lstat(const char *path, struct stat *st)
{
    char buffer[PATH_MAX];
    int dress;
    const char *target;

    resolve();
    if (!(target = stat_target(path, buffer, sizeof buffer, &dress)) || real_lstat(target, st) < 0)
        return -1;
    if (dress)
        DRESS(st);
    return 0;
}

int lstat64(const char *path, struct stat64 *st)
{
    char buffer[PATH_MAX];
    int dress;
    const char *target;

    resolve();
    if (!(target = stat_target(path, buffer, sizeof buffer, &dress)) || real_lstat64(target, st) < 0)
        return -1;
    if (dress)
        DRESS(st);
    return 0;
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    char buffer[PATH_MAX];
    int dress;
    const char *target;

    resolve();
    if (!(target = stat_target(path, buffer, sizeof buffer, &dress)))
        return -1;
    if (real_fstatat(target == path ? dirfd : AT_FDCWD, target, st, flags) < 0)
        return -1;
    if (dress)
        DRESS(st);
    return 0;
}

int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
    char buffer[PATH_MAX];
    int dress;
    const char *target;

    resolve();
    if (!(target = stat_target(path, buffer, sizeof buffer, &dress)))
        return -1;
    if (real_fstatat64(target == path ? dirfd : AT_FDCWD, target, st, flags) < 0)
        return -1;
    if (dress)
        DRESS(st);
    return 0;
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *st)
{
    char buffer[PATH_MAX];
    int dress;
    const char *target;

    resolve();
    if (!(target = stat_target(path, buffer, sizeof buffer, &dress)))
        return -1;
    if (!real_statx) {
        errno = ENOSYS;
        return -1;
    }
    if (real_statx(target == path ? dirfd : AT_FDCWD, target, flags, mask, st) < 0)
        return -1;
    if (dress) {
        st->stx_mode = S_IFCHR | (st->stx_mode & 07777);
        st->stx_rdev_major = GPIO_MAJOR;
        st->stx_rdev_minor = chip->chipnum;
        st->stx_size = 0;
        st->stx_blocks = 0;
    }
    return 0;
}

int access(const char *path, int how)
{
    char buffer[PATH_MAX];
    int dress;
    const char *target;

    resolve();
    if (!(target = stat_target(path, buffer, sizeof buffer, &dress)))
        return -1;
    return real_access(target, how);
}

int faccessat(int dirfd, const char *path, int how, int flags)
{
    char buffer[PATH_MAX];
    int dress;
    const char *target;

    resolve();
    if (!(target = stat_target(path, buffer, sizeof buffer, &dress)))
        return -1;
    return real_faccessat(target == path ? dirfd : AT_FDCWD, target, how, flags);
}

#if __WORDSIZE == 64
/* Programs built against glibc < 2.33 call these (python-build-standalone's
 * Python, for one); on 64-bit ABIs their struct stat is today's. */
int __xstat(int ver, const char *path, struct stat *st) { (void)ver; return stat(path, st); }
int __xstat64(int ver, const char *path, struct stat64 *st) { (void)ver; return stat64(path, st); }
int __lxstat(int ver, const char *path, struct stat *st) { (void)ver; return lstat(path, st); }
int __lxstat64(int ver, const char *path, struct stat64 *st) { (void)ver; return lstat64(path, st); }
int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
    (void)ver;
    return fstatat(dirfd, path, st, flags);
}
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
    (void)ver;
    return fstatat64(dirfd, path, st, flags);
}
#endif

/* ---------------------------------------------------------------- ioctl and close */

int ioctl(int fd, unsigned long request, ...)
{
    struct fd_entry *e;
    va_list ap;
    void *arg;
    int rc = 0;

    resolve();
    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (!slot_get(fd))
        return real_ioctl(fd, request, arg);
    pthread_rwlock_rdlock(&table_lock);
    e = slot_get(fd);             /* (again: a close may have unhooked it meanwhile) */
    if (e)
        rc = emu_ioctl(e, request, arg);
    pthread_rwlock_unlock(&table_lock);
    if (!e)
        return real_ioctl(fd, request, arg);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return rc;
}

int close(int fd)
{
    struct fd_entry *e;
    int rc, saved;

    resolve();
    if (!slot_get(fd) || getpid() != table_pid)    /* not ours, or a vfork() child */
        return real_close(fd);
    pthread_rwlock_wrlock(&table_lock);   /* waits for every ioctl using an entry */
    e = slot_take(fd);
    rc = real_close(fd);
    saved = errno;
    pthread_rwlock_unlock(&table_lock);
    if (e) {
        if (e->kind == FD_REQUEST)
            release_request(e);
        free(e);
    }
    errno = saved;
    return rc;
}

/* ---------------------------------------------------------------- the tests' side */

/* Create a chip of *nlines* lines in *dir* (which must exist). *fixed_pullups*:
 * lines with a resistor to 3V3 on the board. Returns 0 or -errno. */
int gpioemu_create(const char *dir, unsigned nlines, unsigned chipnum, const char *label,
                   uint64_t fixed_pullups)
{
    pthread_mutexattr_t attr;
    struct emu_chip init, *map;
    char path[PATH_MAX];
    int fd;

    resolve();
    if (chip)
        return -EBUSY;             /* one chip per copy of this library */
    if (nlines < 1 || nlines > MAX_LINES || strlen(dir) >= sizeof emu_dir)
        return -EINVAL;
    memset(&init, 0, sizeof init);
    init.version = EMU_VERSION;
    init.nlines = nlines;
    init.chipnum = chipnum;
    snprintf(init.name, sizeof init.name, "gpiochip%u", chipnum);
    snprintf(init.label, sizeof init.label, "%s", label);
    for (unsigned i = 0; i < MAX_LINES; i++) {
        struct emu_line *l = &init.lines[i];
        l->flags = GPIO_V2_LINE_FLAG_INPUT;
        l->drive = -1;
        l->wire = -1;
        l->leader = -1;
        l->fixed_pullup = !!(fixed_pullups & ((uint64_t)1 << i));
        l->level = l->fixed_pullup;
        snprintf(l->name, sizeof l->name, "GPIO%u", i);
    }
    for (unsigned i = 0; i < nlines; i++) {
        snprintf(path, sizeof path, "%s/event%u", dir, i);
        if (mkfifo(path, 0666) < 0 && errno != EEXIST)
            return -errno;
        chmod(path, 0666);
    }
    snprintf(path, sizeof path, "%s/locks", dir);
    fd = real_open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return -errno;
    fchmod(fd, 0666);
    real_close(fd);
    snprintf(path, sizeof path, "%s/state", dir);
    fd = real_open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return -errno;
    fchmod(fd, 0666);
    if (write(fd, &init, sizeof init) != sizeof init) {
        real_close(fd);
        return -EIO;
    }
    real_close(fd);
    /* the magic is written last, once the mutex is set up */
    fd = real_open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    map = mmap(NULL, sizeof(struct emu_chip), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    real_close(fd);
    if (map == MAP_FAILED)
        return -errno;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&map->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    strcpy(emu_dir, dir);
    forget_own_fds();
    __atomic_store_n(&map->magic, EMU_MAGIC, __ATOMIC_RELEASE);
    chip = map;
    return 0;
}

/* Use the chip in *dir* from this process (tests that did not create it). */
int gpioemu_attach(const char *dir)
{
    return attach_dir(dir);
}

/* Let go of the chip (its directory is about to go): later calls fail. */
void gpioemu_detach(void)
{
    struct emu_chip *map = chip;

    if (!map)
        return;
    chip = NULL;
    for (int i = 0; i < MAX_LINES; i++)
        if (writers[i].open)
            real_close(writers[i].fd);
    if (probe.open)
        real_close(probe.fd);
    forget_own_fds();
    munmap(map, sizeof(struct emu_chip));
}

static int check_line(int line)
{
    if (attach() < 0)
        return -ENOENT;
    return line >= 0 && (unsigned)line < chip->nlines ? 0 : -EINVAL;
}

/* Drive *line* from outside: *level* 0 or 1, or -1 to let go of it. */
int gpioemu_drive(int line, int level)
{
    int rc = check_line(line);
    if (rc)
        return rc;
    lock_chip();
    chip->lines[line].drive = level < 0 ? -1 : !!level;
    settle(0);
    unlock_chip();
    return 0;
}

/* A jumper wire: input *line* follows the level of *source* (-1: unplug). */
int gpioemu_wire(int line, int source)
{
    int rc = check_line(line);
    if (rc)
        return rc;
    if (source >= 0 && check_line(source))
        return -EINVAL;
    lock_chip();
    chip->lines[line].wire = source;
    settle(0);
    unlock_chip();
    return 0;
}

/* The physical level of *line*. */
int gpioemu_level(int line)
{
    int rc = check_line(line), level;
    if (rc)
        return rc;
    lock_chip();
    level = physical_level(line, 0);
    unlock_chip();
    return level;
}

/* What the kernel would say of *line*: its GPIO_V2 flags (USED included) and
 * counters. Returns 0 or -errno. */
int gpioemu_line(int line, uint64_t *flags, int *value, uint64_t *events, uint64_t *requests,
                 char *consumer, size_t consumer_size)
{
    struct gpio_v2_line_info info;
    int rc = check_line(line);
    if (rc)
        return rc;
    memset(&info, 0, sizeof info);
    info.offset = line;
    line_info(&info);
    lock_chip();
    *flags = info.flags;
    *value = chip->lines[line].value;
    *events = chip->lines[line].events;
    *requests = chip->lines[line].requests;
    unlock_chip();
    if (consumer && consumer_size) {
        memset(consumer, 0, consumer_size);
        strncpy(consumer, info.consumer, consumer_size - 1);
    }
    return 0;
}

/* Events dropped (the oldest) from full buffers of requests led by *line*. */
long long gpioemu_dropped(int line)
{
    long long dropped;
    int rc = check_line(line);
    if (rc)
        return rc;
    lock_chip();
    dropped = (long long)chip->lines[line].dropped;
    unlock_chip();
    return dropped;
}

/* Whether open() reads a mode argument for *flags* (for the tests). */
int gpioemu_wants_mode(int flags)
{
    return wants_mode(flags);
}
