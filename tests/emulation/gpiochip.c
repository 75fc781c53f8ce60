/*
 * An emulated Linux GPIO character device (/dev/gpiochip0, uAPI v2), for tests.
 *
 * Loaded with LD_PRELOAD into the server (and so into every pin worker it
 * forks), it interposes open/ioctl/close so that the *real* lgpio library (and
 * rpi-lgpio, and gpiozero's LGPIOFactory/RPiGPIOFactory above them) drive an
 * emulated chip instead of hardware. Everything else passes straight through.
 *
 *   gpiozero ─ lgpio (real) ─ open/ioctl/read/ppoll ─ **this file** ─ shared state
 *
 * What it emulates, as the kernel does:
 *   - GPIO_GET_CHIPINFO_IOCTL, GPIO_V2_GET_LINEINFO_IOCTL on the chip fd;
 *   - GPIO_V2_GET_LINE_IOCTL: a line request, returning a new fd; lines held
 *     by another request fail with EBUSY; a request ends when the last fd of
 *     it is closed, also when its process dies (the ownership is a flock on a
 *     per-line lock file, which the kernel drops with the process);
 *   - GPIO_V2_LINE_SET_CONFIG_IOCTL, GPIO_V2_LINE_GET_VALUES_IOCTL and
 *     GPIO_V2_LINE_SET_VALUES_IOCTL on a request fd (EPERM for setting inputs);
 *   - edge events: the request fd is a FIFO; a level change of a requested
 *     input with edge flags writes a struct gpio_v2_line_event (CLOCK_MONOTONIC
 *     timestamp, seqno, line_seqno) into it, so read() and ppoll() on the fd
 *     behave as on a kernel line request. A full FIFO drops the event, as the
 *     kernel's event buffer does.
 *   - /proc/device-tree/... and /sys/firmware/devicetree/base/... are read
 *     from the emulation directory, so the test chooses the board (revision,
 *     model) that gpiozero, rpi-lgpio and the server see.
 *
 * Levels: an output drives its value; an input follows, in this order, a
 * level driven from outside (the test), the output it is wired to, its bias
 * (pull-up 1, pull-down 0), the board's fixed pull-up (GPIO2/3 on a Pi), and
 * otherwise keeps its last level (a floating pin reads what it last read).
 *
 * The state lives in a file mapped by every process (GPIOCHIP_EMU_DIR/state),
 * guarded by a process-shared robust mutex. Tests load this library with
 * ctypes (without LD_PRELOAD) and call the gpioemu_* functions below to create
 * the chip, drive inputs, wire pins and read levels.
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
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EMU_MAGIC 0x47504945u   /* "GPIE" */
#define EMU_VERSION 1u
#define MAX_LINES 64
#define MAX_FDS 4096
#define WIRE_DEPTH 8

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
    uint32_t line_seqno;
    uint32_t debounce_us;
    uint64_t events;         /* events written for this line */
    uint64_t dropped;        /* events lost to a full buffer */
    uint64_t requests;       /* times requested */
    char consumer[GPIO_MAX_NAME_SIZE];
    char name[GPIO_MAX_NAME_SIZE];
};

struct emu_chip {
    uint32_t magic, version, nlines, chipnum;
    pthread_mutex_t lock;
    uint32_t seqno;
    char name[GPIO_MAX_NAME_SIZE];
    char label[GPIO_MAX_NAME_SIZE];
    struct emu_line lines[MAX_LINES];
};

enum fd_kind { FD_NONE = 0, FD_CHIP, FD_REQUEST };

struct fd_entry {
    enum fd_kind kind;
    uint32_t num_lines;
    uint32_t offsets[GPIO_V2_LINES_MAX];
    int locks[GPIO_V2_LINES_MAX];
};

static struct emu_chip *chip;
static char emu_dir[PATH_MAX - 64];
static struct fd_entry *fds[MAX_FDS];
static int event_fd[MAX_LINES];
static pthread_mutex_t local_lock = PTHREAD_MUTEX_INITIALIZER;

static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_close)(int);

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
        real_open = next_symbol("open");
    }
}

/* ---------------------------------------------------------------- the state */

static int attach_dir(const char *dir)
{
    struct stat st;
    char path[PATH_MAX];
    void *map;
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
    if (((struct emu_chip *)map)->magic != EMU_MAGIC) {
        munmap(map, sizeof(struct emu_chip));
        return -EINVAL;
    }
    strcpy(emu_dir, dir);
    for (int i = 0; i < MAX_LINES; i++)
        event_fd[i] = -1;
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

static void line_path(char *out, size_t size, const char *kind, int line)
{
    snprintf(out, size, "%s/%s%d", emu_dir, kind, line);
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

static int writer_fd(int leader)
{
    char path[PATH_MAX];

    if (event_fd[leader] < 0) {
        line_path(path, sizeof path, "event", leader);
        event_fd[leader] = real_open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    }
    return event_fd[leader];
}

/* Called with the chip locked: the line's physical level changed. */
static void edge(int line, int level)
{
    struct emu_line *l = &chip->lines[line];
    struct gpio_v2_line_event event;
    int active = level ^ !!(l->flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW);
    uint64_t wanted = active ? GPIO_V2_LINE_FLAG_EDGE_RISING : GPIO_V2_LINE_FLAG_EDGE_FALLING;
    int fd;

    if (!(l->flags & GPIO_V2_LINE_FLAG_INPUT) || !(l->flags & wanted) || l->leader < 0)
        return;
    memset(&event, 0, sizeof event);
    event.timestamp_ns = now_ns(l->flags);
    event.id = active ? GPIO_V2_LINE_EVENT_RISING_EDGE : GPIO_V2_LINE_EVENT_FALLING_EDGE;
    event.offset = line;
    event.seqno = ++chip->seqno;
    event.line_seqno = ++l->line_seqno;
    fd = writer_fd(l->leader);
    if (fd >= 0 && write(fd, &event, sizeof event) == sizeof event)
        l->events++;
    else
        l->dropped++;
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

/* ---------------------------------------------------------------- ownership */

/* Is *line* held by a request (of any process, this one included)? */
static int line_in_use(int line)
{
    char path[PATH_MAX];
    int fd, busy;

    line_path(path, sizeof path, "lock", line);
    fd = real_open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return 0;
    busy = flock(fd, LOCK_EX | LOCK_NB) < 0;
    real_close(fd);    /* drops the probe's lock, if it got one */
    return busy;
}

static void release_locks(struct fd_entry *e, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        if (e->locks[i] >= 0) {
            real_close(e->locks[i]);
            e->locks[i] = -1;
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

/* The flags, output value and debounce that *config* gives line index *i*. */
static int line_config(const struct gpio_v2_line_config *config, uint32_t i,
                       uint64_t *flags, int *value, int *has_value, uint32_t *debounce)
{
    uint64_t bit = (uint64_t)1 << i;

    if (config->num_attrs > GPIO_V2_LINE_NUM_ATTRS_MAX)
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
    used = line_in_use(offset);
    lock_chip();
    l = &chip->lines[offset];
    if (!used && l->leader >= 0) {   /* its holder ended without closing (died) */
        l->leader = -1;
        l->flags &= ~F_EDGES;
    }
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

static void drain(int fd)
{
    char buffer[4096];
    while (read(fd, buffer, sizeof buffer) > 0)
        ;
}

static int request_lines(struct gpio_v2_line_request *req)
{
    struct fd_entry *e;
    char path[PATH_MAX];
    uint64_t seen = 0;
    int fd, rc;

    if (req->num_lines < 1 || req->num_lines > GPIO_V2_LINES_MAX)
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
    e = calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->kind = FD_REQUEST;
    e->num_lines = req->num_lines;
    for (uint32_t i = 0; i < req->num_lines; i++) {
        e->offsets[i] = req->offsets[i];
        line_path(path, sizeof path, "lock", req->offsets[i]);
        e->locks[i] = real_open(path, O_RDWR | O_CLOEXEC);
        if (e->locks[i] < 0 || flock(e->locks[i], LOCK_EX | LOCK_NB) < 0) {
            rc = e->locks[i] < 0 ? -errno : -EBUSY;
            release_locks(e, i + 1);
            free(e);
            return rc;
        }
    }
    line_path(path, sizeof path, "event", req->offsets[0]);
    fd = real_open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 || fd >= MAX_FDS) {
        rc = fd < 0 ? -errno : -EMFILE;
        if (fd >= 0)
            real_close(fd);
        release_locks(e, e->num_lines);
        free(e);
        return rc;
    }
    lock_chip();
    drain(fd);    /* events left for an earlier holder of the line */
    rc = apply_config(&req->config, req->num_lines, req->offsets, (int)req->offsets[0],
                      req->consumer);
    for (uint32_t i = 0; i < req->num_lines; i++)
        chip->lines[req->offsets[i]].requests++;
    unlock_chip();
    pthread_mutex_lock(&local_lock);
    fds[fd] = e;
    pthread_mutex_unlock(&local_lock);
    req->fd = fd;
    return rc;
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

static struct fd_entry *entry(int fd)
{
    struct fd_entry *e = NULL;
    if (fd >= 0 && fd < MAX_FDS) {
        pthread_mutex_lock(&local_lock);
        e = fds[fd];
        pthread_mutex_unlock(&local_lock);
    }
    return e;
}

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

/* ---------------------------------------------------------------- interposed calls */

static const char *redirect(const char *path, char *buffer, size_t size)
{
    static const char *prefixes[] = {"/proc/device-tree/", "/sys/firmware/devicetree/base/"};

    if (!path || attach() < 0)
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

static int is_chip_path(const char *path)
{
    char name[32];
    if (!path || attach() < 0)
        return 0;
    snprintf(name, sizeof name, "/dev/gpiochip%u", chip->chipnum);
    return strcmp(path, name) == 0;
}

static int open_chip(void)
{
    char path[PATH_MAX];
    struct fd_entry *e;
    int fd;

    snprintf(path, sizeof path, "%s/state", emu_dir);
    fd = real_open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fd >= MAX_FDS || !(e = calloc(1, sizeof *e))) {
        real_close(fd);
        errno = EMFILE;
        return -1;
    }
    e->kind = FD_CHIP;
    pthread_mutex_lock(&local_lock);
    fds[fd] = e;
    pthread_mutex_unlock(&local_lock);
    return fd;
}

static int do_open(int dirfd, const char *path, int flags, mode_t mode)
{
    char buffer[PATH_MAX];

    resolve();
    if (is_chip_path(path))
        return open_chip();
    path = redirect(path, buffer, sizeof buffer);
    if (dirfd == AT_FDCWD)
        return real_open(path, flags, mode);
    return real_openat(dirfd, path, flags, mode);
}

#define MODE_ARG(flags) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { \
        va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

int open(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(AT_FDCWD, path, flags, mode); }
int open64(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(AT_FDCWD, path, flags, mode); }
int openat(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(dirfd, path, flags, mode); }
int openat64(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(dirfd, path, flags, mode); }
int __open_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0); }
int __open64_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0); }

int ioctl(int fd, unsigned long request, ...)
{
    struct fd_entry *e;
    va_list ap;
    void *arg;
    int rc;

    resolve();
    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);
    e = entry(fd);
    if (!e)
        return real_ioctl(fd, request, arg);
    rc = emu_ioctl(e, request, arg);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return rc;
}

int close(int fd)
{
    struct fd_entry *e = NULL;

    resolve();
    if (fd >= 0 && fd < MAX_FDS) {
        pthread_mutex_lock(&local_lock);
        e = fds[fd];
        fds[fd] = NULL;
        pthread_mutex_unlock(&local_lock);
    }
    if (e && e->kind == FD_REQUEST) {
        release_locks(e, e->num_lines);
        /* Released for good only if no other fd (a fork's copy) still holds it. */
        lock_chip();
        for (uint32_t i = 0; i < e->num_lines; i++) {
            struct emu_line *l = &chip->lines[e->offsets[i]];
            if (l->leader == (int)e->offsets[0] && !line_in_use(e->offsets[i])) {
                l->leader = -1;
                l->flags &= ~(F_EDGES | F_CLOCK);
            }
        }
        unlock_chip();
    }
    free(e);
    return real_close(fd);
}

/* ---------------------------------------------------------------- the tests' side */

/* Create a chip of *nlines* lines in *dir* (which must exist). *fixed_pullups*:
 * lines with a resistor to 3V3 on the board. Returns 0 or -errno. */
int gpioemu_create(const char *dir, unsigned nlines, unsigned chipnum, const char *label,
                   uint64_t fixed_pullups)
{
    pthread_mutexattr_t attr;
    struct emu_chip init;
    char path[PATH_MAX];
    int fd;

    resolve();
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
        snprintf(path, sizeof path, "%s/lock%u", dir, i);
        fd = real_open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0)
            return -errno;
        fchmod(fd, 0666);
        real_close(fd);
    }
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
    chip = mmap(NULL, sizeof(struct emu_chip), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    real_close(fd);
    if (chip == MAP_FAILED) {
        chip = NULL;
        return -errno;
    }
    strcpy(emu_dir, dir);
    for (int i = 0; i < MAX_LINES; i++)
        event_fd[i] = -1;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&chip->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    __atomic_store_n(&chip->magic, EMU_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

/* Use the chip in *dir* from this process (tests that did not create it). */
int gpioemu_attach(const char *dir)
{
    return attach_dir(dir);
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
