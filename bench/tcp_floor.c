/*
 * What this machine allows over loopback TCP, whatever the runtime: the
 * floor that spmd's TCP figures are judged against in scripts/bench-tcp.
 *
 * Two threads pinned to cores 0 and 1, joined by one TCP connection on
 * 127.0.0.1 with TCP_NODELAY, ping-pong 8-byte messages; each side waits
 * by calling recv(MSG_DONTWAIT) in a loop (no poll, no sleep): the least
 * an 8-byte message can cost through the kernel's TCP stack here.
 *
 * usage: tcp_floor            prints "tcp 8 N.NN us" (one-way time)
 * build: cc -O2 -pthread -o tcp_floor bench/tcp_floor.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pinned.h"

#define ROUNDS 200000
#define WARMUP 2000
#define LEN 8

static struct sockaddr_in address;
static int listener;

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Reads exactly LEN bytes, polling with non-blocking reads. */
static void take(int fd, char *buf) {
    for (int got = 0; got < LEN;) {
        ssize_t n = recv(fd, buf + got, LEN - got, MSG_DONTWAIT);
        if (n > 0)
            got += (int)n;
        else if (n == 0) {
            fprintf(stderr, "tcp_floor: the connection closed\n");
            exit(1);
        }
    }
}

static void give(int fd, const char *buf) {
    if (send(fd, buf, LEN, 0) != LEN) {
        perror("tcp_floor: send");
        exit(1);
    }
}

static void *echo(void *arg) {
    (void)arg;
    pin(1);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("tcp_floor: connect");
        exit(1);
    }
    nodelay(fd);
    char buf[LEN];
    for (int r = 0; r < WARMUP + ROUNDS; r++) {
        take(fd, buf);
        give(fd, buf);
    }
    close(fd);
    return NULL;
}

int main(void) {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof address;
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &len) != 0) {
        perror("tcp_floor: listen");
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, echo, NULL);
    pin(0);
    int fd = accept(listener, NULL, NULL);
    nodelay(fd);
    char buf[LEN] = {0};
    double start = 0;
    for (int r = 0; r < WARMUP + ROUNDS; r++) {
        if (r == WARMUP)
            start = now();
        give(fd, buf);
        take(fd, buf);
    }
    double one_way = (now() - start) / ROUNDS / 2;
    pthread_join(th, NULL);
    printf("tcp %d %.2f us\n", LEN, one_way * 1e6);
    return 0;
}
