/*
 * What this machine allows, whatever the runtime: the floors that spmd's
 * shared-memory figures are judged against in scripts/bench-vs-mpi.
 *
 * Two threads pinned to cores 0 and 1 (processes sharing memory behave the
 * same for the caches) measure:
 *   line          one-way time of a 64-byte cache line carrying a flag and
 *                 8 bytes of data, ping-pong (the least an 8-byte message
 *                 can cost between cores)
 *   copy SIZE     one-way time of SIZE bytes copied in by one core and out
 *                 by the other through a 256 KiB ring in 32 KiB pieces, the
 *                 two copies overlapping (the least a copy-in/copy-out
 *                 message of SIZE can cost), ping-pong
 *   stream SIZE   bandwidth of back-to-back messages of SIZE bytes through
 *                 the same ring into 64 buffers in turn (as osu_bw's
 *                 window of 64 receives does), in MB/s
 *   boxes SIZE    bandwidth of small messages of SIZE bytes (at most 264)
 *                 through 1024 mailboxes of 32 bytes laid out as spmd's
 *                 fastboxes (a 16-byte header, 28 bytes in each further
 *                 box), in windows of 64 messages, each window answered
 *                 by an acknowledgement (as osu_bw), in MB/s: what the
 *                 cache lines allow, with no runtime's bookkeeping
 *
 * usage: floors line | copy SIZE | stream SIZE | boxes SIZE
 * build: cc -O2 -pthread -o floors bench/floors.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pinned.h"

#define RING (256u << 10)
#define PIECE (32u << 10)
/* The largest message of `boxes`, and room for its words (a box carries
 * 24 bytes of it here: the floor is in the lines moved, not the bytes). */
#define MOST_BOXED 264
#define MOST_WORDS (10 * BOX_WORDS)

struct line {
    _Alignas(64) _Atomic uint32_t seq;
    char data[60];
};

static struct line lines[2];
#define WINDOW 64

static char *ring, *src, *dst[WINDOW];
static int buffers = 1;
static size_t size;
static long rounds;
static _Alignas(64) _Atomic uint64_t head;
static _Alignas(64) _Atomic uint64_t tail;
static _Alignas(64) _Atomic uint64_t acks;
static int ack_each;

static void line_side(int me) {
    char buf[8] = {0};
    for (uint32_t s = 1; s <= (uint32_t)rounds; s++) {
        struct line *out = &lines[1 - me], *in = &lines[me];
        if (me == 0) {
            memcpy(out->data, buf, 8);
            atomic_store_explicit(&out->seq, s, memory_order_release);
        }
        while (atomic_load_explicit(&in->seq, memory_order_acquire) != s)
            __builtin_ia32_pause();
        memcpy(buf, in->data, 8);
        if (me == 1) {
            memcpy(out->data, buf, 8);
            atomic_store_explicit(&out->seq, s, memory_order_release);
        }
    }
}

/* The mailboxes of `boxes`: a count of boxes taken (a line of its own),
 * then the boxes, each four 8-byte words. */
#define SLOTS 1024
#define BOX_WORDS 4
static _Alignas(64) _Atomic uint64_t taken;
static _Alignas(64) _Atomic uint64_t boxes_area[SLOTS * BOX_WORDS];
static size_t box_count;

static _Atomic uint64_t *box(uint64_t n) {
    return &boxes_area[(n % SLOTS) * BOX_WORDS];
}

/* The boxes a message of `size` bytes takes: 16 payload bytes in the
 * first, 28 in each further one. */
static size_t boxes_for(size_t size) {
    return size <= 16 ? 1 : 1 + (size - 16 + 27) / 28;
}

static void boxes_receiver(void) {
    uint64_t n = 0, words[MOST_WORDS] = {0};
    for (long r = 0; r < rounds; r++) {
        for (int m = 0; m < WINDOW; m++) {
            while ((uint32_t)atomic_load_explicit(&box(n)[0], memory_order_acquire) != (uint32_t)(n + 1))
                __builtin_ia32_pause();
            size_t w = 0;
            for (size_t b = 0; b < box_count; b++)
                for (int k = 1; k < BOX_WORDS; k++)
                    words[w++] = atomic_load_explicit(&box(n + b)[k], memory_order_relaxed);
            memcpy(dst[m], words, size);
            n += box_count;
            if (n % (SLOTS / 4) < box_count)
                atomic_store_explicit(&taken, n, memory_order_release);
        }
        atomic_store_explicit(&acks, r + 1, memory_order_release);
    }
}

/* Sends `rounds` windows of messages through the boxes; returns seconds
 * per message. */
static double boxes_sender(void) {
    uint64_t n = 0, words[MOST_WORDS] = {0};
    memcpy(words, src, size);
    double start = now();
    for (long r = 0; r < rounds; r++) {
        for (int m = 0; m < WINDOW; m++) {
            while (n + box_count - atomic_load_explicit(&taken, memory_order_acquire) > SLOTS)
                __builtin_ia32_pause();
            size_t w = 0;
            for (size_t b = 0; b < box_count; b++)
                for (int k = 1; k < BOX_WORDS; k++)
                    atomic_store_explicit(&box(n + b)[k], words[w++], memory_order_relaxed);
            for (size_t b = box_count; b-- > 1;)
                atomic_store_explicit(&box(n + b)[0], 0, memory_order_relaxed);
            atomic_store_explicit(&box(n)[0], n + 1, memory_order_release);
            n += box_count;
        }
        while (atomic_load_explicit(&acks, memory_order_acquire) != (uint64_t)r + 1)
            __builtin_ia32_pause();
    }
    return (now() - start) / rounds / WINDOW;
}

static void *receiver(void *arg) {
    (void)arg;
    pin(1);
    if (box_count) {
        boxes_receiver();
        return NULL;
    }
    if (!src) {
        line_side(1);
        return NULL;
    }
    uint64_t t = 0;
    for (long r = 0; r < rounds; r++) {
        for (size_t got = 0; got < size;) {
            uint64_t h;
            while ((h = atomic_load_explicit(&head, memory_order_acquire)) == t)
                __builtin_ia32_pause();
            size_t n = h - t < PIECE ? h - t : PIECE;
            memcpy(dst[r % buffers] + got, ring + t % RING, n);
            got += n;
            t += n;
            atomic_store_explicit(&tail, t, memory_order_release);
        }
        if (ack_each)
            atomic_store_explicit(&acks, r + 1, memory_order_release);
    }
    return NULL;
}

/* Sends `rounds` messages of `size` bytes; returns seconds per message. */
static double sender(void) {
    uint64_t h = 0;
    double start = now();
    for (long r = 0; r < rounds; r++) {
        for (size_t sent = 0; sent < size;) {
            size_t n = size - sent < PIECE ? size - sent : PIECE;
            while (h + n - atomic_load_explicit(&tail, memory_order_acquire) > RING)
                __builtin_ia32_pause();
            memcpy(ring + h % RING, src + sent, n);
            sent += n;
            h += n;
            atomic_store_explicit(&head, h, memory_order_release);
        }
        if (ack_each)
            while (atomic_load_explicit(&acks, memory_order_acquire) != (uint64_t)r + 1)
                __builtin_ia32_pause();
    }
    while (atomic_load_explicit(&tail, memory_order_acquire) != h)
        __builtin_ia32_pause();
    return (now() - start) / rounds;
}

int main(int argc, char **argv) {
    int line = argc == 2 && !strcmp(argv[1], "line");
    int boxed = argc == 3 && !strcmp(argv[1], "boxes");
    int sized = argc == 3 && (!strcmp(argv[1], "copy") || !strcmp(argv[1], "stream"));
    if (!line && !sized && !boxed) {
        fprintf(stderr, "usage: floors line | copy SIZE | stream SIZE | boxes SIZE\n");
        return 2;
    }
    pthread_t th;
    if (boxed) {
        size = strtoull(argv[2], NULL, 10);
        if (size == 0 || size > MOST_BOXED) {
            fprintf(stderr, "floors: SIZE must be 1 to %d for boxes\n", MOST_BOXED);
            return 2;
        }
        box_count = boxes_for(size);
        rounds = 200000;
        src = malloc(size);
        memset(src, 1, size);
        for (int b = 0; b < WINDOW; b++)
            dst[b] = malloc(size);
        pthread_create(&th, NULL, receiver, NULL);
        pin(0);
        double per = boxes_sender();
        pthread_join(th, NULL);
        printf("boxes %zu %.0f MB/s\n", size, size / per / 1e6);
        return 0;
    }
    if (line) {
        rounds = 2000000;
        pthread_create(&th, NULL, receiver, NULL);
        pin(0);
        double start = now();
        line_side(0);
        double one_way = (now() - start) / rounds / 2;
        pthread_join(th, NULL);
        printf("line %.3f us\n", one_way * 1e6);
        return 0;
    }
    size = strtoull(argv[2], NULL, 10);
    if (size == 0 || size % PIECE) {
        fprintf(stderr, "floors: SIZE must be a positive multiple of %u\n", PIECE);
        return 2;
    }
    ack_each = !strcmp(argv[1], "copy");
    rounds = size >= (1u << 20) ? 1280 : 20000;
    buffers = ack_each ? 1 : WINDOW;
    ring = aligned_alloc(4096, RING);
    src = aligned_alloc(4096, size);
    memset(ring, 0, RING);
    memset(src, 1, size);
    for (int b = 0; b < buffers; b++) {
        dst[b] = aligned_alloc(4096, size);
        if (!dst[b]) {
            fprintf(stderr, "floors: out of memory\n");
            return 1;
        }
        memset(dst[b], 0, size);
    }
    pthread_create(&th, NULL, receiver, NULL);
    pin(0);
    double per = sender();
    pthread_join(th, NULL);
    if (ack_each)
        printf("copy %zu %.2f us\n", size, per * 1e6);
    else
        printf("stream %zu %.0f MB/s\n", size, size / per / 1e6);
    return 0;
}
