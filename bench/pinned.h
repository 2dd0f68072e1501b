/*
 * What the floor programs (floors.c, tcp_floor.c) share: a monotonic clock
 * in seconds, and pinning the calling thread to one core. Define
 * _GNU_SOURCE before including it.
 */
#ifndef SPMD_BENCH_PINNED_H
#define SPMD_BENCH_PINNED_H

#include <pthread.h>
#include <sched.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin(int core) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

#endif
