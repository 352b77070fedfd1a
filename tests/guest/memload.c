/*
 * memload: the guest's memory workload, started by /init.
 *
 *   memload FILL_MIB DIRTY_MIB_S
 *
 * Fills FILL_MIB MiB of anonymous memory with a non-zero pattern (so QEMU's
 * zero-page detection cannot skip it and a migration really moves those bytes),
 * then, if DIRTY_MIB_S > 0, re-dirties that memory at about DIRTY_MIB_S MiB/s
 * forever: one write per 4 KiB page, in ten slices per second, cycling through
 * the buffer. One write per page is enough: QEMU's dirty tracking is per page,
 * so a page touched once must be sent again.
 *
 * With FILL_MIB == 0 and a dirty rate, a 64 MiB working set is used.
 * Returns once the memory is filled; a forked child keeps it and dirties it.
 * Progress lines go to stdout (the serial console) so tests can wait for them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)

static void sleep_until(struct timespec *t) {
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) != 0) {
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: memload FILL_MIB DIRTY_MIB_S\n");
        return 2;
    }
    unsigned long fill = strtoul(argv[1], NULL, 10);
    unsigned long dirty = strtoul(argv[2], NULL, 10);
    unsigned long size_mib = fill ? fill : (dirty ? 64 : 0);
    if (size_mib == 0) {
        return 0;
    }
    size_t size = size_mib * MIB;
    unsigned char *buf = malloc(size);
    if (!buf) {
        printf("memload: cannot allocate %lu MiB\n", size_mib);
        fflush(stdout);
        return 1;
    }
    /* Non-zero, not one repeated byte: every page differs from the zero page. */
    for (size_t i = 0; i < size; i += 8) {
        unsigned long v = (i * 0x9E3779B97F4A7C15UL) | 0x0101010101010101UL;
        memcpy(buf + i, &v, 8);
    }
    printf("memload: filled %lu MiB\n", size_mib);
    fflush(stdout);
    /* Return to /init once filled; a child keeps the memory (and dirties it).
     * The parent exits at once, so the child's writes do not copy pages. */
    pid_t child = fork();
    if (child < 0) {
        perror("memload: fork");
        return 1;
    }
    if (child > 0) {
        return 0;
    }
    if (dirty == 0) {
        /* Keep the memory alive; the shell keeps ticking. */
        for (;;) {
            pause();
        }
    }
    printf("memload: dirtying %lu MiB/s\n", dirty);
    fflush(stdout);
    size_t pages = size / PAGE;
    size_t per_slice = (dirty * MIB / PAGE) / 10;
    if (per_slice == 0) {
        per_slice = 1;
    }
    size_t next = 0;
    unsigned char gen = 1;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    for (;;) {
        for (size_t k = 0; k < per_slice; k++) {
            buf[next * PAGE] = gen;
            if (++next == pages) {
                next = 0;
                gen = (unsigned char)(gen == 255 ? 1 : gen + 1);
            }
        }
        t.tv_nsec += 100000000L;
        if (t.tv_nsec >= 1000000000L) {
            t.tv_nsec -= 1000000000L;
            t.tv_sec += 1;
        }
        sleep_until(&t);
    }
}
