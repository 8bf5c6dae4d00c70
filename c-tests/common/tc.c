/* Helpers shared by the C suites; see tc.h. */
#define _GNU_SOURCE
#include "tc.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

/* ---- suite runner with a per-test watchdog ---- */

static const char *volatile current_test = "(none)";

static void watchdog(int sig)
{
	static const char msg1[] = "\nFATAL: test '";
	static const char msg2[] = "' did not finish in time (hung?)\n";
	const char *name = current_test;
	ssize_t r;

	(void)sig;
	r = write(2, msg1, sizeof(msg1) - 1);
	r = write(2, name, strlen(name));
	r = write(2, msg2, sizeof(msg2) - 1);
	(void)r;
	_exit(100);
}

static void before_test(void)
{
	CU_pTest t = CU_get_current_test();

	current_test = t && t->pName ? t->pName : "(unknown)";
	alarm(TC_TEST_SECONDS);
}

static void after_test(void)
{
	alarm(0);
}

int tc_run(const char *suite_name, const struct tc_test *tests)
{
	CU_pSuite suite;
	int failures;

	/* A peer that closes early must give an error, not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, watchdog);
	setvbuf(stdout, NULL, _IONBF, 0);

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 1;
	suite = CU_add_suite_with_setup_and_teardown(suite_name, NULL, NULL,
						     before_test, after_test);
	if (!suite)
		goto fail;
	for (; tests->name; tests++)
		if (!CU_add_test(suite, tests->name, tests->fn))
			goto fail;
	CU_basic_set_mode(CU_BRM_VERBOSE);
	if (CU_basic_run_tests() != CUE_SUCCESS)
		goto fail;
	failures = (int)CU_get_number_of_failures();
	if (CU_get_number_of_suites_failed())
		failures++;
	CU_cleanup_registry();
	return failures;
fail:
	fprintf(stderr, "CUnit setup failed: %s\n", CU_get_error_msg());
	CU_cleanup_registry();
	return 1;
}

/* ---- bytes ---- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

size_t tc_hex(const char *hex, uint8_t *out, size_t cap)
{
	size_t n = 0;
	int hi = -1;

	for (; *hex; hex++) {
		int v;

		if (*hex == ' ' || *hex == '|' || *hex == '\n')
			continue;
		v = hexval(*hex);
		if (v < 0 || (hi < 0 && n >= cap)) {
			fprintf(stderr, "bad test hex near '%s'\n", hex);
			abort();
		}
		if (hi < 0) {
			hi = v;
		} else {
			out[n++] = (uint8_t)(hi << 4 | v);
			hi = -1;
		}
	}
	if (hi >= 0) {
		fprintf(stderr, "odd number of hex digits\n");
		abort();
	}
	return n;
}

long long tc_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

size_t tc_read_n(int fd, void *buf, size_t n, int timeout_ms)
{
	long long deadline = tc_now_ms() + timeout_ms;
	size_t got = 0;

	while (got < n) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		long long left = deadline - tc_now_ms();
		ssize_t r;

		if (left < 0)
			left = 0;
		r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		r = read(fd, (char *)buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	return got;
}

bool tc_write_all(int fd, const void *buf, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = write(fd, (const char *)buf + done, n - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return false;
		done += (size_t)r;
	}
	return true;
}

bool tc_write_hex(int fd, const char *hex)
{
	uint8_t buf[512];
	size_t n = tc_hex(hex, buf, sizeof(buf));

	return tc_write_all(fd, buf, n);
}

bool tc_nothing_pending(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char c;

	if (poll(&p, 1, 0) <= 0)
		return true;
	/* Readable because of EOF is fine: no bytes were left behind. */
	return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

bool tc_eof_within(int fd, int timeout_ms)
{
	char c;

	return tc_read_n(fd, &c, 1, timeout_ms) == 0 &&
	       recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static void dump(const char *what, const uint8_t *b, size_t n)
{
	size_t i;

	fprintf(stderr, "  %s (%zu bytes):", what, n);
	for (i = 0; i < n && i < 96; i++)
		fprintf(stderr, "%s%02x", i % 4 ? "" : " ", b[i]);
	fprintf(stderr, "%s\n", n > 96 ? " ..." : "");
}

bool tc_expect_bytes(int fd, const void *want, size_t n, bool exclusive)
{
	uint8_t *got = malloc(n ? n : 1);
	size_t r;
	bool ok;

	if (!got)
		abort();
	r = tc_read_n(fd, got, n, TC_WAIT_MS);
	ok = r == n && memcmp(got, want, n) == 0;
	if (!ok) {
		size_t i = 0;

		while (i < r && ((const uint8_t *)want)[i] == got[i])
			i++;
		fprintf(stderr, "\nwire mismatch at byte %zu:\n", i);
		dump("expected", want, n);
		dump("received", got, r);
	} else if (exclusive && !tc_nothing_pending(fd)) {
		uint8_t extra[64];
		ssize_t e = recv(fd, extra, sizeof(extra), MSG_PEEK | MSG_DONTWAIT);

		fprintf(stderr, "\nunexpected bytes after the expected message:\n");
		dump("extra", extra, e > 0 ? (size_t)e : 0);
		ok = false;
	}
	free(got);
	return ok;
}

bool tc_expect_hex(int fd, const char *hex)
{
	uint8_t want[512];
	size_t n = tc_hex(hex, want, sizeof(want));

	return tc_expect_bytes(fd, want, n, true);
}

/* ---- V2 messages written by hand (spec §1.4, §1.5) ---- */

bool tc_send_msg(int fd, uint32_t cmd, const uint32_t *words, int nwords,
		 const void *payload, size_t plen)
{
	size_t size = 8 + 4 * (size_t)nwords + plen;
	uint8_t *buf = malloc(size);
	uint32_t be;
	bool ok;
	int i;

	if (!buf)
		abort();
	be = htonl((uint32_t)size);
	memcpy(buf, &be, 4);
	be = htonl(cmd);
	memcpy(buf + 4, &be, 4);
	for (i = 0; i < nwords; i++) {
		be = htonl(words[i]);
		memcpy(buf + 8 + 4 * i, &be, 4);
	}
	if (plen)
		memcpy(buf + 8 + 4 * nwords, payload, plen);
	ok = tc_write_all(fd, buf, size);
	free(buf);
	return ok;
}

bool tc_send_cmd(int fd, uint32_t cmd)
{
	return tc_send_msg(fd, cmd, NULL, 0, NULL, 0);
}

bool tc_send_string(int fd, const char *s)
{
	uint32_t n = (uint32_t)strlen(s);

	return tc_send_msg(fd, TC_SENDMETA, &n, 1, s, n) && tc_send_cmd(fd, TC_FINMETA);
}

bool tc_expect_string(int fd, const char *s)
{
	size_t n = strlen(s);
	uint8_t *want = malloc(12 + n + 8);
	uint32_t be;
	bool ok;

	if (!want)
		abort();
	be = htonl((uint32_t)(12 + n));
	memcpy(want, &be, 4);
	be = htonl(TC_SENDMETA);
	memcpy(want + 4, &be, 4);
	be = htonl((uint32_t)n);
	memcpy(want + 8, &be, 4);
	memcpy(want + 12, s, n);
	tc_hex("00000008 00000007", want + 12 + n, 8);
	ok = tc_expect_bytes(fd, want, 12 + n + 8, false);
	free(want);
	return ok;
}

/* ---- sockets ---- */

void tc_socketpair(int sv[2])
{
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
		perror("socketpair");
		abort();
	}
}

void tc_tcp_pair(int sv[2])
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int l, c, s;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &len) < 0) {
		perror("tcp listen on loopback");
		abort();
	}
	c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("tcp connect to loopback");
		abort();
	}
	s = accept(l, NULL, NULL);
	if (s < 0) {
		perror("accept");
		abort();
	}
	close(l);
	sv[0] = s;
	sv[1] = c;
}

/* ---- threads ---- */

static void *call_main(void *p)
{
	struct tc_call *c = p;

	c->ret = c->fn(c->arg);
	return NULL;
}

void tc_call_start(struct tc_call *c, int (*fn)(void *), void *arg)
{
	c->fn = fn;
	c->arg = arg;
	c->ret = 0;
	if (pthread_create(&c->th, NULL, call_main, c) != 0) {
		perror("pthread_create");
		abort();
	}
}

int tc_call_join(struct tc_call *c)
{
	pthread_join(c->th, NULL);
	return c->ret;
}

/* ---- stdout capture ---- */

char *tc_capture_stdout(int (*fn)(void *), void *arg, int *ret)
{
	char tmpl[] = "/tmp/tc-stdout-XXXXXX";
	int tmp = mkstemp(tmpl);
	int saved;
	char *out;
	off_t len;

	if (tmp < 0)
		abort();
	unlink(tmpl);
	fflush(stdout);
	saved = dup(1);
	if (saved < 0 || dup2(tmp, 1) < 0)
		abort();
	*ret = fn(arg);
	fflush(stdout);
	dup2(saved, 1);
	close(saved);

	len = lseek(tmp, 0, SEEK_END);
	out = calloc(1, (size_t)len + 1);
	if (!out)
		abort();
	if (pread(tmp, out, (size_t)len, 0) != len)
		abort();
	close(tmp);
	return out;
}

/* ---- misc ---- */

int tc_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		abort();
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own fd */
}

uint64_t tc_rand(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

void tc_fill_random(uint64_t *state, void *buf, size_t n)
{
	uint8_t *p = buf;
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)(tc_rand(state) >> 32);
}

void tc_native_hex(uint32_t v, char out[9])
{
	const uint8_t *b = (const uint8_t *)&v;

	snprintf(out, 9, "%02x%02x%02x%02x", b[0], b[1], b[2], b[3]);
}
