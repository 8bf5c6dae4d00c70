/*
 * File-descriptor passing (spec §1.8, §3.6) and the unix-socket connect helper
 * (spec §2.2): tracecmd_msg_transfer_fd / receive_fd / tracecmd_msg_get_fds over a
 * unix socketpair between threads, with the received fds checked to be the same
 * open files; tracecmd_connect_to_socket against a real listener in /tmp.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "tc.h"

/* Exported by the library as by the original, but declared by no header (spec §2.1). */
int receive_fd(int fd, int *cpus);

static bool same_file(int a, int b)
{
	struct stat sa, sb;

	return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_ino == sb.st_ino &&
	       sa.st_dev == sb.st_dev;
}

/* Bytes written through w arrive on r: the two fds are ends of the same channel. */
static bool carries(int w, int r, const char *msg)
{
	char buf[64] = { 0 };
	size_t n = strlen(msg);

	return tc_write_all(w, msg, n) && tc_read_n(r, buf, n, TC_WAIT_MS) == n &&
	       memcmp(buf, msg, n) == 0;
}

static bool fd_is_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
}

/* Sends fd with one 2-byte iovec and one SCM_RIGHTS cmsg, as the original does. */
static bool send_fd_raw(int sock, int fd, bool with_fd)
{
	char data[2] = { 0, 0 };
	struct iovec iov = { .iov_base = data, .iov_len = 2 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *c;

	if (with_fd) {
		memset(&ctl, 0, sizeof(ctl));
		m.msg_control = ctl.buf;
		m.msg_controllen = sizeof(ctl.buf);
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	return sendmsg(sock, &m, 0) == 2;
}

/* ---- transfer_fd: exact bytes, the 2-byte iovec and the cmsg ---- */

static void test_transfer_fd_wire(void)
{
	struct tracecmd_msg_handle *h;
	union {
		char buf[CMSG_SPACE(sizeof(int)) * 2];
		struct cmsghdr align;
	} ctl;
	char data[8];
	struct iovec iov = { .iov_base = data, .iov_len = sizeof(data) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *c;
	int sv[2], p[2], got = -1;
	uint8_t connect[12];
	ssize_t n;

	tc_socketpair(sv);
	CU_ASSERT_FATAL(pipe(p) == 0);
	h = tracecmd_msg_handle_alloc(sv[0], TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER);
	CU_ASSERT_PTR_NOT_NULL_FATAL(h);
	CU_ASSERT(tc_send_cmd(sv[1], TC_ACK));
	/* Returns what sendmsg sent: the 2 bytes (spec §2.1). */
	CU_ASSERT_EQUAL(tracecmd_msg_transfer_fd(h, p[1], 3), 2);

	tc_hex("0000000c 00000008 00000003", connect, sizeof(connect));
	CU_ASSERT(tc_expect_bytes(sv[1], connect, 12, false));
	m.msg_control = ctl.buf;
	m.msg_controllen = sizeof(ctl.buf);
	n = recvmsg(sv[1], &m, MSG_DONTWAIT);
	CU_ASSERT_EQUAL(n, 2);
	CU_ASSERT_EQUAL(data[0], 0);
	c = CMSG_FIRSTHDR(&m);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CU_ASSERT_EQUAL(c->cmsg_level, SOL_SOCKET);
	CU_ASSERT_EQUAL(c->cmsg_type, SCM_RIGHTS);
	CU_ASSERT_EQUAL(c->cmsg_len, CMSG_LEN(sizeof(int)));
	CU_ASSERT_PTR_NULL(CMSG_NXTHDR(&m, c));
	memcpy(&got, CMSG_DATA(c), sizeof(int));
	CU_ASSERT_FATAL(got >= 0);
	CU_ASSERT(same_file(got, p[1]));
	CU_ASSERT(carries(got, p[0], "through the passed fd"));
	CU_ASSERT(tc_nothing_pending(sv[1]));
	/* The sender keeps its own fd open. */
	CU_ASSERT(fd_is_open(p[1]));
	close(got);
	close(p[0]);
	close(p[1]);
	tracecmd_msg_handle_close(h);
	close(sv[1]);
}

static void test_transfer_fd_needs_ack(void)
{
	struct tracecmd_msg_handle *h;
	int sv[2], p[2];
	uint8_t connect[12];

	tc_socketpair(sv);
	CU_ASSERT_FATAL(pipe(p) == 0);
	h = tracecmd_msg_handle_alloc(sv[0], TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER);
	CU_ASSERT_PTR_NOT_NULL_FATAL(h);
	CU_ASSERT(tc_send_cmd(sv[1], TC_FINISH));
	CU_ASSERT_EQUAL(tracecmd_msg_transfer_fd(h, p[1], 1), -EINVAL);
	tc_hex("0000000c 00000008 00000001", connect, sizeof(connect));
	/* CONNECT went out, but no fd followed the wrong reply. */
	CU_ASSERT(tc_expect_bytes(sv[1], connect, 12, true));

	/* EOF instead of ACK: an error as well. */
	close(sv[1]);
	CU_ASSERT(tracecmd_msg_transfer_fd(h, p[1], 1) < 0);
	tracecmd_msg_handle_close(h);
	close(p[0]);
	close(p[1]);
}

/* ---- receive_fd against a raw lock-step peer thread ---- */

struct raw_sender {
	int sock;
	int fd;		/* the fd to pass */
	int cpus;	/* CONNECT's count */
	uint32_t first;	/* the command to send first (CONNECT normally) */
	bool with_fd;	/* false: the 2 bytes without SCM_RIGHTS */
	bool ack_seen;
};

static int raw_sender_main(void *arg)
{
	struct raw_sender *s = arg;
	uint32_t cpus = (uint32_t)s->cpus;

	if (!tc_send_msg(s->sock, s->first, &cpus, s->first == TC_CONNECT ? 1 : 0, NULL, 0))
		return -1;
	if (s->first != TC_CONNECT)
		return 0;
	s->ack_seen = tc_expect_hex(s->sock, "00000008 00000009");
	if (!s->ack_seen)
		return -1;
	return send_fd_raw(s->sock, s->fd, s->with_fd) ? 0 : -1;
}

static void test_receive_fd(void)
{
	struct raw_sender s = { .first = TC_CONNECT, .cpus = 5, .with_fd = true };
	struct tc_call call;
	int sv[2], p[2], got, cpus = -1;

	tc_socketpair(sv);
	CU_ASSERT_FATAL(pipe(p) == 0);
	s.sock = sv[1];
	s.fd = p[1];
	tc_call_start(&call, raw_sender_main, &s);
	got = receive_fd(sv[0], &cpus);
	CU_ASSERT_EQUAL(tc_call_join(&call), 0);
	CU_ASSERT(s.ack_seen);
	CU_ASSERT_EQUAL(cpus, 5);
	CU_ASSERT_FATAL(got > 0);
	CU_ASSERT(got != p[1]);
	CU_ASSERT(same_file(got, p[1]));
	CU_ASSERT(carries(got, p[0], "via receive_fd"));
	close(got);
	close(p[0]);
	close(p[1]);
	close(sv[0]);
	close(sv[1]);
}

static void test_receive_fd_failures(void)
{
	int before = tc_count_fds();
	int sv[2], p[2], cpus = -1, ret;
	struct raw_sender s = { .cpus = 1 };
	struct tc_call call;

	CU_ASSERT_FATAL(pipe(p) == 0);

	/* Not CONNECT: -EINVAL, and no ACK is sent. */
	tc_socketpair(sv);
	CU_ASSERT(tc_send_cmd(sv[1], TC_ACK));
	CU_ASSERT_EQUAL(receive_fd(sv[0], &cpus), -EINVAL);
	CU_ASSERT(tc_nothing_pending(sv[1]));
	close(sv[0]);
	close(sv[1]);

	/* EOF before anything: an error, never fd 0 (spec §5.2 #10). */
	tc_socketpair(sv);
	close(sv[1]);
	ret = receive_fd(sv[0], &cpus);
	CU_ASSERT(ret < 0);
	close(sv[0]);

	/* The 2 bytes arrive without an fd: an error. */
	tc_socketpair(sv);
	s.sock = sv[1];
	s.fd = p[1];
	s.first = TC_CONNECT;
	s.with_fd = false;
	tc_call_start(&call, raw_sender_main, &s);
	ret = receive_fd(sv[0], &cpus);
	CU_ASSERT_EQUAL(tc_call_join(&call), 0);
	CU_ASSERT(ret < 0);
	close(sv[0]);
	close(sv[1]);

	/* EOF after CONNECT, where the fd should come: an error, not 0. */
	tc_socketpair(sv);
	CU_ASSERT(tc_write_hex(sv[1], "0000000c 00000008 00000001"));
	shutdown(sv[1], SHUT_WR);
	ret = receive_fd(sv[0], &cpus);
	CU_ASSERT(ret < 0);
	close(sv[0]);
	close(sv[1]);

	CU_ASSERT(tracecmd_msg_get_fds(NULL, 1, &ret) < 0);
	close(p[0]);
	close(p[1]);
	CU_ASSERT_EQUAL(tc_count_fds(), before);
}

/* ---- the record -A flow: listener transfer_fd ↔ manager get_fds (spec §3.6) ---- */

struct lender {
	struct tracecmd_msg_handle *h;
	int main_fd;
	int *cpu_fds;
	int n;		/* announced in the first CONNECT and sent */
	int results[8];
	int ret;	/* lender_main's result */
};

static int lender_main(void *arg)
{
	struct lender *l = arg;
	int i;

	l->results[0] = tracecmd_msg_transfer_fd(l->h, l->main_fd, l->n);
	if (l->results[0] < 0)
		return l->results[0];
	for (i = 0; i < l->n; i++) {
		l->results[i + 1] = tracecmd_msg_transfer_fd(l->h, l->cpu_fds[i], l->n - i);
		if (l->results[i + 1] < 0)
			return l->results[i + 1];
	}
	return 0;
}

struct fixture {
	int mgr[2];		/* manager socket: [0] listener side, [1] manager side */
	int agent[2];		/* the agent channel whose [0] end is passed */
	int fifo[3][2];		/* per-CPU pipes whose read ends are passed */
};

static void fixture_open(struct fixture *f)
{
	int i;

	tc_socketpair(f->mgr);
	tc_socketpair(f->agent);
	for (i = 0; i < 3; i++)
		if (pipe(f->fifo[i]) < 0)
			abort();
}

static void fixture_close(struct fixture *f)
{
	int i;

	close(f->mgr[1]);
	close(f->agent[0]);
	close(f->agent[1]);
	for (i = 0; i < 3; i++) {
		close(f->fifo[i][0]);
		close(f->fifo[i][1]);
	}
}

/* Runs the exchange with `sent` cpu fds announced and sent, the manager expecting `want`. */
static int exchange(struct fixture *f, int sent, int want, int *fds,
		    struct tracecmd_msg_handle **mh, struct lender *l)
{
	int cpu_fds[3] = { f->fifo[0][0], f->fifo[1][0], f->fifo[2][0] };
	struct tc_call call;
	int ret;

	l->h = tracecmd_msg_handle_alloc(f->mgr[0], TRACECMD_MSG_FL_SERVER |
						   TRACECMD_MSG_FL_MANAGER);
	*mh = tracecmd_msg_handle_alloc(f->mgr[1], TRACECMD_MSG_FL_MANAGER);
	if (!l->h || !*mh)
		abort();
	l->main_fd = f->agent[0];
	l->cpu_fds = cpu_fds;
	l->n = sent;
	tc_call_start(&call, lender_main, l);
	ret = tracecmd_msg_get_fds(*mh, want, fds);
	/* A lender still waiting for an ACK gets EOF instead of hanging. */
	shutdown(f->mgr[1], SHUT_WR);
	l->ret = tc_call_join(&call);
	tracecmd_msg_handle_close(l->h);
	return ret;
}

static void test_get_fds(void)
{
	struct tracecmd_msg_handle *mh;
	struct fixture f;
	struct lender l;
	int fds[2] = { -7, -7 };
	int i, before = tc_count_fds();

	fixture_open(&f);
	CU_ASSERT_EQUAL(exchange(&f, 2, 2, fds, &mh, &l), 0);
	CU_ASSERT_EQUAL(l.ret, 0);
	CU_ASSERT_EQUAL(l.results[0], 2);
	CU_ASSERT_EQUAL(l.results[1], 2);
	CU_ASSERT_EQUAL(l.results[2], 2);

	/* The handle now talks to the agent channel (spec §3.6). */
	CU_ASSERT(mh->fd != f.mgr[1]);
	CU_ASSERT(same_file(mh->fd, f.agent[0]));
	CU_ASSERT(carries(mh->fd, f.agent[1], "to the agent"));
	CU_ASSERT(carries(f.agent[1], mh->fd, "from the agent"));
	/* The manager socket stays open on purpose: the listener watches it for HUP. */
	CU_ASSERT(fd_is_open(f.mgr[1]));
	for (i = 0; i < 2; i++) {
		char msg[] = "cpu0 data";

		CU_ASSERT_FATAL(fds[i] >= 0);
		CU_ASSERT(same_file(fds[i], f.fifo[i][0]));
		msg[3] = (char)('0' + i);
		CU_ASSERT(carries(f.fifo[i][1], fds[i], msg));
		close(fds[i]);
	}
	tracecmd_msg_handle_close(mh); /* closes the agent fd it now holds */
	fixture_close(&f);
	CU_ASSERT_EQUAL(tc_count_fds(), before);
}

/* Fewer fds than expected leave -1 in the rest; more are not leaked. */
static void test_get_fds_count_mismatch(void)
{
	struct tracecmd_msg_handle *mh;
	struct fixture f;
	struct lender l;
	int fds[3] = { -7, -7, -7 };
	int ret, i, before = tc_count_fds();

	fixture_open(&f);
	CU_ASSERT_EQUAL(exchange(&f, 1, 2, fds, &mh, &l), 0);
	CU_ASSERT_EQUAL(l.ret, 0);
	CU_ASSERT_FATAL(fds[0] >= 0);
	CU_ASSERT(same_file(fds[0], f.fifo[0][0]));
	CU_ASSERT_EQUAL(fds[1], -1);
	CU_ASSERT_EQUAL(fds[2], -7); /* beyond cpu_count: untouched */
	close(fds[0]);
	tracecmd_msg_handle_close(mh);
	fixture_close(&f);
	CU_ASSERT_EQUAL(tc_count_fds(), before);

	fds[0] = fds[1] = fds[2] = -7;
	fixture_open(&f);
	ret = exchange(&f, 3, 2, fds, &mh, &l);
	CU_ASSERT_EQUAL(fds[2], -7); /* never written beyond cpu_count */
	if (ret == 0) {
		for (i = 0; i < 2; i++) {
			CU_ASSERT(fds[i] >= 0 && same_file(fds[i], f.fifo[i][0]));
			close(fds[i]);
		}
	} else {
		CU_ASSERT(ret < 0);
	}
	tracecmd_msg_handle_close(mh);
	fixture_close(&f);
	CU_ASSERT_EQUAL(tc_count_fds(), before);
}

/* ---- tracecmd_connect_to_socket ---- */

static int listen_unix(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, SOCK_STREAM, 0);

	if (s < 0 || strlen(path) >= sizeof(a.sun_path))
		abort();
	strcpy(a.sun_path, path);
	unlink(path);
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 4) < 0) {
		perror(path);
		abort();
	}
	return s;
}

static void check_connects(const char *path)
{
	int l = listen_unix(path);
	int c, a;

	c = tracecmd_connect_to_socket((char *)path);
	CU_ASSERT_FATAL(c >= 0);
	a = accept(l, NULL, NULL);
	CU_ASSERT_FATAL(a >= 0);
	CU_ASSERT(carries(c, a, "hello listener"));
	CU_ASSERT(carries(a, c, "hello client"));
	close(a);
	close(c);
	close(l);
	unlink(path);
}

static void test_connect_to_socket(void)
{
	char path[108];

	snprintf(path, sizeof(path), "/tmp/tc-fd-%d.sock", (int)getpid());
	check_connects(path);
}

/* The path is a path, not a printf format (spec §5.2 #11). */
static void test_connect_to_socket_format_chars(void)
{
	char path[108];

	snprintf(path, sizeof(path), "/tmp/tc-%%s%%n%%x-%d.sock", (int)getpid());
	CU_ASSERT(strstr(path, "%s%n") != NULL);
	check_connects(path);
}

static void test_connect_to_socket_failures(void)
{
	char missing[108], *longp;
	int before = tc_count_fds();

	snprintf(missing, sizeof(missing), "/tmp/tc-fd-missing-%d.sock", (int)getpid());
	unlink(missing);
	errno = 0;
	CU_ASSERT_EQUAL(tracecmd_connect_to_socket(missing), -1);
	CU_ASSERT_EQUAL(errno, ENOENT);

	/* Longer than sun_path (108): refused without overflowing anything. */
	longp = malloc(300);
	CU_ASSERT_PTR_NOT_NULL_FATAL(longp);
	memset(longp, 'a', 299);
	longp[0] = '/';
	longp[299] = 0;
	errno = 0;
	CU_ASSERT_EQUAL(tracecmd_connect_to_socket(longp), -1);
	CU_ASSERT(errno != 0);
	/* ... also when it is full of conversions. */
	for (int i = 1; i + 2 < 299; i += 2)
		memcpy(longp + i, i % 4 == 1 ? "%s" : "%n", 2);
	CU_ASSERT_EQUAL(tracecmd_connect_to_socket(longp), -1);
	free(longp);

	CU_ASSERT_EQUAL(tracecmd_connect_to_socket("/tmp/%s%n%s%n-missing"), -1);
	CU_ASSERT_EQUAL(tracecmd_connect_to_socket(""), -1);
	/* A regular file is not a socket. */
	CU_ASSERT_EQUAL(tracecmd_connect_to_socket("/dev/null"), -1);
	/* No socket leaks on any failure (spec §5.2 #9). */
	CU_ASSERT_EQUAL(tc_count_fds(), before);
}

int main(void)
{
	static const struct tc_test tests[] = {
		{ "transfer_fd: CONNECT, 2-byte iovec, one SCM_RIGHTS fd", test_transfer_fd_wire },
		{ "transfer_fd: no fd without ACK", test_transfer_fd_needs_ack },
		{ "receive_fd from a lock-step peer", test_receive_fd },
		{ "receive_fd failures, no leaks, never fd 0", test_receive_fd_failures },
		{ "transfer_fd -> get_fds: same files, fd replaced", test_get_fds },
		{ "get_fds with fewer or more fds than expected", test_get_fds_count_mismatch },
		{ "connect_to_socket to a unix listener", test_connect_to_socket },
		{ "connect_to_socket with %s%n in the path", test_connect_to_socket_format_chars },
		{ "connect_to_socket failures: -1, errno, no leak", test_connect_to_socket_failures },
		{ NULL, NULL },
	};

	return tc_run("msg_fd", tests);
}
