// memcpy, counted by size and return address between SIGUSR1 (start) and SIGUSR2 (write the counts
// to $COPIES_OUT): `bench/copies` builds it and reads what it writes. The copy itself is `rep movsb`,
// not the C library's (this replaces it). Every thread's copies are counted, under a spin lock.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#define N 65536
static struct { uintptr_t ra; size_t n; unsigned long count; } tab[N];
static volatile int lock;
static volatile int on;
static void *copy(void *d, const void *s, size_t n) {
  void *r = d;
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
  return r;
}
static void record(uintptr_t ra, size_t n) {
  if (!on) return;
  while (__sync_lock_test_and_set(&lock, 1)) ;
  unsigned h = (unsigned)((ra * 0x9E3779B97F4A7C15ull) >> 40 ^ n * 31) & (N - 1);
  for (int i = 0; i < N; i++) {
    unsigned j = (h + i) & (N - 1);
    if (tab[j].count == 0) { tab[j].ra = ra; tab[j].n = n; tab[j].count = 1; break; }
    if (tab[j].ra == ra && tab[j].n == n) { tab[j].count++; break; }
  }
  __sync_lock_release(&lock);
}
void *memcpy(void *d, const void *s, size_t n) {
  record((uintptr_t)__builtin_return_address(0), n);
  return copy(d, s, n);
}
static void dump(int sig) {
  on = 0;
  const char *path = getenv("COPIES_OUT");
  FILE *f = fopen(path ? path : "copies.out", "w");
  if (!f) return;
  for (int i = 0; i < N; i++) if (tab[i].count) {
    Dl_info info; uintptr_t off = tab[i].ra;
    if (dladdr((void*)tab[i].ra, &info) && info.dli_fbase) off -= (uintptr_t)info.dli_fbase;
    fprintf(f, "%lu %zu 0x%lx %s\n", tab[i].count, tab[i].n, (unsigned long)off, info.dli_fname ? info.dli_fname : "?");
  }
  fclose(f);
}
static void start(int sig) { memset(tab, 0, sizeof tab); on = 1; }
__attribute__((constructor)) static void init(void) { signal(SIGUSR1, start); signal(SIGUSR2, dump); }
