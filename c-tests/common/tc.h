/*
 * Helpers shared by the C suites: running a CUnit suite with a per-test watchdog,
 * hex wire expectations, exact reads and writes with deadlines, raw V2 message
 * building, peer threads, stdout capture and a small PRNG.
 *
 * Only the library's public header and libc are used, as a C caller would.
 */
#ifndef TC_H
#define TC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <CUnit/CUnit.h>

#include "trace-cmd.h"

/* V2 command numbers (spec §1.5); the header exports no names for them. */
enum tc_cmd {
	TC_ERROR = 0, TC_CLOSE, TC_TCONNECT, TC_RCONNECT, TC_TINIT, TC_RINIT,
	TC_SENDMETA, TC_FINMETA, TC_CONNECT, TC_ACK, TC_GLIST, TC_DOMAIN,
	TC_FINISH, TC_CINIT, TC_CRINIT, TC_ALIST, TC_TRACE,
};

/* How long a peer waits for bytes it expects before calling the test failed. */
#define TC_WAIT_MS 3000

struct tc_test {
	const char *name;
	void (*fn)(void);
};

/*
 * Registers the NULL-terminated tests as one suite and runs it verbosely. Each test
 * runs under a watchdog: a test that hangs longer than TC_TEST_SECONDS ends the
 * program with a message naming it. Returns the number of failures (the exit status).
 */
#define TC_TEST_SECONDS 20
int tc_run(const char *suite, const struct tc_test *tests);

/* Parses hex digits, ignoring spaces and '|'; aborts on anything else. */
size_t tc_hex(const char *hex, uint8_t *out, size_t cap);

/* Reads until n bytes, EOF, error or timeout_ms; returns the bytes read. */
size_t tc_read_n(int fd, void *buf, size_t n, int timeout_ms);
/* Writes all n bytes; returns false on error. */
bool tc_write_all(int fd, const void *buf, size_t n);
/* Writes the bytes spelled by hex. */
bool tc_write_hex(int fd, const char *hex);

/* True if no byte is readable on fd right now (nothing left behind). */
bool tc_nothing_pending(int fd);
/* True if the peer closed fd (EOF) within timeout_ms with no data before it. */
bool tc_eof_within(int fd, int timeout_ms);

/*
 * Reads exactly as many bytes as hex spells from fd and compares them; prints
 * both sides on a mismatch. Also requires that nothing else is pending after them.
 */
bool tc_expect_hex(int fd, const char *hex);
/* Same, for bytes given as a buffer. */
bool tc_expect_bytes(int fd, const void *want, size_t n, bool exclusive);

#define TC_EXPECT_HEX(fd, hex) CU_ASSERT(tc_expect_hex((fd), (hex)))

/* Writes one V2 message: header + the given BE32 words + payload. */
bool tc_send_msg(int fd, uint32_t cmd, const uint32_t *words, int nwords,
		 const void *payload, size_t plen);
/* Writes a header-only V2 message. */
bool tc_send_cmd(int fd, uint32_t cmd);
/* Writes a string transfer: SENDMETA(s) without NUL then FINMETA (spec §1.6). */
bool tc_send_string(int fd, const char *s);
/* Reads a string transfer (single SENDMETA + FINMETA) and compares it with s. */
bool tc_expect_string(int fd, const char *s);

/* A stream socketpair (AF_UNIX); aborts on failure. */
void tc_socketpair(int sv[2]);
/* A connected TCP loopback pair: sv[0] accepted side, sv[1] connecting side. */
void tc_tcp_pair(int sv[2]);

/* Runs fn(arg) in a thread; tc_call_join returns its result. */
struct tc_call {
	pthread_t th;
	int (*fn)(void *);
	void *arg;
	int ret;
};
void tc_call_start(struct tc_call *c, int (*fn)(void *), void *arg);
int tc_call_join(struct tc_call *c);

/* Captures what fn(arg) writes to stdout (fd 1) into a malloc'd string. */
char *tc_capture_stdout(int (*fn)(void *), void *arg, int *ret);

/* Milliseconds from a monotonic clock. */
long long tc_now_ms(void);

/* Number of open file descriptors of this process. */
int tc_count_fds(void);

/* xorshift64* pseudo-random numbers; deterministic for a given seed. */
uint64_t tc_rand(uint64_t *state);
void tc_fill_random(uint64_t *state, void *buf, size_t n);

/* Native-order 32-bit value as 8 hex digits of its in-memory bytes. */
void tc_native_hex(uint32_t v, char out[9]);

#endif
