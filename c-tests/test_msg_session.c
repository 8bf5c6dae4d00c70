/*
 * Whole sessions between a C listener and a C client, both written only against
 * include/trace-cmd.h, as trace-listen.c and trace-record.c use the library:
 *
 *  - network record, V2 (spec §3.2): the text handshake done here in C, then
 *    TINIT/RINIT with ports, 1 MiB of metadata in varied chunk sizes, FINMETA, CLOSE;
 *    the listener's file must equal what the client sent. Over TCP loopback and a
 *    unix socketpair, with and without the TCP option.
 *  - network record, V1 (spec §3.1): the client forced to V1 (socketpair) or falling
 *    back after a V1 listener refused "-1V2" (TCP, reconnecting as trace-record does);
 *    ports as text, then the metadata as raw bytes until EOF.
 *  - virt agent (spec §3.5): TCONNECT/RCONNECT, CINIT/CRINIT, CONNECT{argc} + argv.
 *  - virt record (spec §3.7): TCONNECT/RCONNECT, TINIT/RINIT without ports.
 *  - manager flows (spec §3.4, §3.6, §3.8) over a unix socket in /tmp reached with
 *    tracecmd_connect_to_socket: connect, list -G / -A, record -A with fd passing.
 *
 * The two sides run in threads; CUnit is not thread-safe, so each side records its
 * first failed check as text and the test asserts on that after joining.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "tc.h"

#define META_SIZE (1024 * 1024)
#define NCPUS 4

/* ---- a side of a session, running in a thread ---- */

struct side {
	char fail[256];	/* first failed check, "" if none */
	int fd;		/* the connection, -1 once closed */
	int (*body)(struct side *s);
};

#define CHECK(s, cond)                                                           \
	do {                                                                     \
		if (!(cond)) {                                                   \
			if (!(s)->fail[0])                                       \
				snprintf((s)->fail, sizeof((s)->fail), "line %d: %s", \
					 __LINE__, #cond);                       \
			return -1;                                               \
		}                                                                \
	} while (0)

/* After joining: a side that failed names its check. */
static bool side_ok(const char *who, const struct side *s)
{
	if (s->fail[0])
		fprintf(stderr, "\n  %s failed at %s\n", who, s->fail);
	return !s->fail[0];
}

/* The peer closes first; then this side closes its handle (and fd). */
static int wait_peer_close(struct side *s, struct tracecmd_msg_handle *h)
{
	CHECK(s, tc_eof_within(h->fd, TC_WAIT_MS));
	tracecmd_msg_handle_close(h);
	s->fd = -1;
	return 0;
}

/* Thread entry: runs the side's body; on failure shuts the connection so the
 * peer sees EOF, not a hang. */
static int side_main(void *arg)
{
	struct side *s = arg;
	int ret = s->body(s);

	if (ret < 0 && s->fd >= 0)
		shutdown(s->fd, SHUT_RDWR);
	return ret;
}

/* ---- transports: a socketpair, or TCP loopback with a listening socket ---- */

struct transport {
	bool tcp;
	int lsock;
	struct sockaddr_in addr;
	int sv[2];
};

static void transport_open(struct transport *t, bool tcp)
{
	socklen_t len = sizeof(t->addr);

	memset(t, 0, sizeof(*t));
	t->tcp = tcp;
	t->lsock = -1;
	if (!tcp) {
		tc_socketpair(t->sv);
		return;
	}
	t->addr.sin_family = AF_INET;
	t->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	t->lsock = socket(AF_INET, SOCK_STREAM, 0);
	if (t->lsock < 0 || bind(t->lsock, (struct sockaddr *)&t->addr, sizeof(t->addr)) < 0 ||
	    listen(t->lsock, 4) < 0 ||
	    getsockname(t->lsock, (struct sockaddr *)&t->addr, &len) < 0) {
		perror("loopback listener");
		abort();
	}
}

static int transport_accept(struct transport *t)
{
	return t->tcp ? accept(t->lsock, NULL, NULL) : t->sv[0];
}

static int transport_connect(struct transport *t)
{
	int c;

	if (!t->tcp)
		return t->sv[1];
	c = socket(AF_INET, SOCK_STREAM, 0);
	if (c >= 0 && connect(c, (struct sockaddr *)&t->addr, sizeof(t->addr)) < 0) {
		close(c);
		c = -1;
	}
	return c;
}

static void transport_close(struct transport *t)
{
	if (t->lsock >= 0)
		close(t->lsock);
}

/* Reads a NUL-terminated string byte by byte, as both C sides do (≤ cap-1 chars). */
static int read_cstring(int fd, char *buf, size_t cap)
{
	size_t n = 0;

	while (n < cap) {
		if (tc_read_n(fd, buf + n, 1, TC_WAIT_MS) != 1)
			return -1;
		if (buf[n] == 0)
			return (int)n;
		n++;
	}
	return -1;
}

static bool write_cstring(int fd, const char *s)
{
	return tc_write_all(fd, s, strlen(s) + 1);
}

/* ---- network record: shared state of one session ---- */

struct net_session {
	struct transport t;
	bool v1;		/* client speaks V1 from the start */
	bool v1_fallback;	/* listener is V1-only: the client must reconnect as V1 */
	bool use_tcp;		/* the client asks for TCP per-CPU streams */
	uint8_t *meta;		/* what the client sends */
	int ofd;		/* where the listener writes it */
	int ports_sent[NCPUS];
	int ports_got[NCPUS];
	struct side client, listener;
};

/* Metadata goes out in chunk sizes from 0 to ~3 messages, as trace-output.c's many
 * small and large writes do. */
static int send_metadata_v2(struct side *s, struct tracecmd_msg_handle *h, const uint8_t *meta)
{
	uint64_t rnd = 0x5eed;
	size_t off = 0;

	while (off < META_SIZE) {
		size_t n;

		switch (tc_rand(&rnd) % 4) {
		case 0:
			n = tc_rand(&rnd) % 16;
			break;
		case 1:
			n = 8180 + tc_rand(&rnd) % 3 - 1;
			break;
		default:
			n = tc_rand(&rnd) % 25000;
		}
		if (n > META_SIZE - off)
			n = META_SIZE - off;
		CHECK(s, tracecmd_msg_metadata_send(h, (const char *)meta + off, (int)n) == 0);
		off += n;
	}
	return 0;
}

static int v1_handshake_client(struct side *s, struct net_session *ns, int fd)
{
	char buf[64], num[16];
	int i;

	CHECK(s, tc_read_n(fd, buf, 8, TC_WAIT_MS) == 8 && memcmp(buf, "tracecmd", 8) == 0);
	snprintf(num, sizeof(num), "%d", NCPUS);
	CHECK(s, write_cstring(fd, num));
	snprintf(num, sizeof(num), "%d", getpagesize());
	CHECK(s, write_cstring(fd, num));
	CHECK(s, write_cstring(fd, ns->use_tcp ? "1" : "0"));
	if (ns->use_tcp) {
		CHECK(s, write_cstring(fd, "4"));
		CHECK(s, write_cstring(fd, "TCP"));
	}
	/* "p0,p1,...\0", read byte by byte as trace-record.c does */
	for (i = 0; i < NCPUS; i++) {
		size_t n = 0;

		for (;;) {
			CHECK(s, n < sizeof(buf) - 1 && tc_read_n(fd, buf + n, 1, TC_WAIT_MS) == 1);
			if (buf[n] == ',' || buf[n] == 0)
				break;
			n++;
		}
		/* ',' between ports, the NUL after the last one */
		CHECK(s, (i == NCPUS - 1) == (buf[n] == 0));
		buf[n] = 0;
		ns->ports_got[i] = atoi(buf);
	}
	return 0;
}

/* -1V2 negotiation (spec §6.3 #1). Returns 2, or 1 if the listener closed (V1 only). */
static int v2_handshake_client(struct side *s, int fd)
{
	char buf[16] = { 0 };
	int n;

	CHECK(s, tc_read_n(fd, buf, 8, TC_WAIT_MS) == 8 && memcmp(buf, "tracecmd", 8) == 0);
	CHECK(s, tc_write_all(fd, "-1V2", 5));
	n = read_cstring(fd, buf, sizeof(buf));
	if (n < 0 && tc_eof_within(fd, 0))
		return 1;
	CHECK(s, n == 2 && strcmp(buf, "V2") == 0);
	CHECK(s, tc_write_all(fd, "677768\0", 8));
	CHECK(s, tc_read_n(fd, buf, 2, TC_WAIT_MS) == 2 && memcmp(buf, "OK", 2) == 0);
	return 2;
}

static int net_client(struct side *s)
{
	struct net_session *ns = (struct net_session *)((char *)s - offsetof(struct net_session, client));
	unsigned long flags = TRACECMD_MSG_FL_CLIENT | TRACECMD_MSG_FL_NETWORK;
	struct tracecmd_msg_handle *h;
	int *ports = NULL;
	int version = ns->v1 ? 1 : 2;
	int i;

	s->fd = transport_connect(&ns->t);
	CHECK(s, s->fd >= 0);
	if (ns->use_tcp)
		flags |= TRACECMD_MSG_FL_USE_TCP;
	h = tracecmd_msg_handle_alloc(s->fd, flags);
	CHECK(s, h != NULL);
	h->cpu_count = NCPUS;
	page_size = (unsigned int)getpagesize();

	if (!ns->v1) {
		h->version = 2;
		version = v2_handshake_client(s, h->fd);
		CHECK(s, version > 0);
		CHECK(s, version == (ns->v1_fallback ? 1 : 2));
	}
	if (version == 1 && !ns->v1) {
		/* trace-record.c: close, reconnect, replace the handle's fd, stay V1. */
		close(h->fd);
		s->fd = h->fd = transport_connect(&ns->t);
		CHECK(s, h->fd >= 0);
	}
	if (version == 1) {
		h->version = 1;
		CHECK(s, v1_handshake_client(s, ns, h->fd) == 0);
		/* V1 metadata is the raw stream on the socket (trace-output.c with a plain fd). */
		for (i = 0; i < META_SIZE; i += 100000) {
			int n = META_SIZE - i < 100000 ? META_SIZE - i : 100000;

			CHECK(s, tc_write_all(h->fd, ns->meta + i, (size_t)n));
		}
		tracecmd_msg_handle_close(h); /* EOF ends the listener's metadata */
		s->fd = -1;
		return 0;
	}

	CHECK(s, tracecmd_msg_send_init_data(h, &ports) == 0);
	CHECK(s, ports != NULL);
	memcpy(ns->ports_got, ports, sizeof(ns->ports_got));
	free(ports);
	CHECK(s, send_metadata_v2(s, h, ns->meta) == 0);
	CHECK(s, tracecmd_msg_finish_sending_metadata(h) == 0);
	tracecmd_msg_send_close_msg(h);
	tracecmd_msg_handle_close(h);
	s->fd = -1;
	return 0;
}

static int v1_listener_body(struct side *s, struct net_session *ns, struct tracecmd_msg_handle *h)
{
	char buf[8192];
	int opts, i;
	ssize_t r;

	/* "tracecmd" was written by the caller; now cpus, page size, options. */
	CHECK(s, read_cstring(h->fd, buf, sizeof(buf)) > 0 && atoi(buf) == NCPUS);
	h->cpu_count = NCPUS;
	CHECK(s, read_cstring(h->fd, buf, sizeof(buf)) > 0 && atoi(buf) == getpagesize());
	CHECK(s, read_cstring(h->fd, buf, sizeof(buf)) > 0);
	opts = atoi(buf);
	CHECK(s, opts == (ns->use_tcp ? 1 : 0));
	for (i = 0; i < opts; i++) {
		int size;

		CHECK(s, read_cstring(h->fd, buf, sizeof(buf)) > 0);
		size = atoi(buf);
		CHECK(s, size == 4);
		CHECK(s, tc_read_n(h->fd, buf, (size_t)size, TC_WAIT_MS) == (size_t)size);
		CHECK(s, strcmp(buf, "TCP") == 0);
		h->flags |= TRACECMD_MSG_FL_USE_TCP;
	}
	for (i = 0; i < NCPUS; i++) {
		int n = snprintf(buf, sizeof(buf), "%s%d", i ? "," : "", ns->ports_sent[i]);

		CHECK(s, tc_write_all(h->fd, buf, (size_t)n));
	}
	CHECK(s, tc_write_all(h->fd, "", 1));
	/* Raw metadata until EOF or done, as the V1 path of trace-listen.c. */
	while (!tracecmd_msg_done(h)) {
		r = read(h->fd, buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		CHECK(s, r >= 0);
		if (r == 0)
			break;
		CHECK(s, tc_write_all(ns->ofd, buf, (size_t)r));
	}
	return 0;
}

static int net_listener(struct side *s)
{
	struct net_session *ns = (struct net_session *)((char *)s - offsetof(struct net_session, listener));
	struct tracecmd_msg_handle *h;
	char buf[64];
	int n;

	s->fd = transport_accept(&ns->t);
	CHECK(s, s->fd >= 0);
	CHECK(s, tc_write_all(s->fd, "tracecmd", 8));
	if (ns->v1_fallback) {
		/* A V1 listener: cpus = -1 is refused and the connection closed. */
		CHECK(s, read_cstring(s->fd, buf, sizeof(buf)) == 4 && atoi(buf) == -1);
		close(s->fd);
		s->fd = transport_accept(&ns->t);
		CHECK(s, s->fd >= 0);
		CHECK(s, tc_write_all(s->fd, "tracecmd", 8));
	}
	h = tracecmd_msg_handle_alloc(s->fd, TRACECMD_MSG_FL_SERVER);
	CHECK(s, h != NULL);
	if (ns->v1 || ns->v1_fallback) {
		h->version = 1;
		n = v1_listener_body(s, ns, h);
		tracecmd_msg_handle_close(h);
		s->fd = -1;
		return n;
	}

	n = read_cstring(h->fd, buf, sizeof(buf));
	CHECK(s, n == 4 && strcmp(buf, "-1V2") == 0);
	CHECK(s, tc_write_all(h->fd, "V2", 3));
	CHECK(s, tc_read_n(h->fd, buf, 8, TC_WAIT_MS) == 8 && memcmp(buf, "677768\0", 8) == 0);
	CHECK(s, tc_write_all(h->fd, "OK", 2));
	h->version = 2;

	CHECK(s, tracecmd_msg_initial_setting(h) == getpagesize());
	CHECK(s, h->cpu_count == NCPUS);
	CHECK(s, !!(h->flags & TRACECMD_MSG_FL_USE_TCP) == ns->use_tcp);
	CHECK(s, tracecmd_msg_send_port_array(h, ns->ports_sent) == 0);
	CHECK(s, tracecmd_msg_collect_metadata(h, ns->ofd) == 0);
	/* CLOSE came last; the client then closes the connection. */
	return wait_peer_close(s, h);
}

static void run_net_session(bool tcp, bool v1, bool v1_fallback, bool use_tcp)
{
	struct net_session *ns = calloc(1, sizeof(*ns));
	char name[] = "/tmp/tc-session-XXXXXX";
	struct tc_call lc, cc;
	uint64_t seed = 0xfeedULL + tcp * 2 + v1;
	struct stat st;
	uint8_t *back;
	int i;

	CU_ASSERT_PTR_NOT_NULL_FATAL(ns);
	ns->v1 = v1;
	ns->v1_fallback = v1_fallback;
	ns->use_tcp = use_tcp;
	ns->meta = malloc(META_SIZE);
	back = malloc(META_SIZE);
	CU_ASSERT_FATAL(ns->meta && back);
	tc_fill_random(&seed, ns->meta, META_SIZE);
	ns->ofd = mkstemp(name);
	CU_ASSERT_FATAL(ns->ofd >= 0);
	unlink(name);
	for (i = 0; i < NCPUS; i++)
		ns->ports_sent[i] = 1500 + 7 * i;
	ns->client.fd = ns->listener.fd = -1;
	transport_open(&ns->t, tcp);

	ns->listener.body = net_listener;
	ns->client.body = net_client;
	tc_call_start(&lc, side_main, &ns->listener);
	tc_call_start(&cc, side_main, &ns->client);
	CU_ASSERT_EQUAL(tc_call_join(&cc), 0);
	CU_ASSERT_EQUAL(tc_call_join(&lc), 0);
	CU_ASSERT(side_ok("client", &ns->client));
	CU_ASSERT(side_ok("listener", &ns->listener));

	CU_ASSERT(memcmp(ns->ports_got, ns->ports_sent, sizeof(ns->ports_sent)) == 0);
	CU_ASSERT(fstat(ns->ofd, &st) == 0 && st.st_size == META_SIZE);
	CU_ASSERT(pread(ns->ofd, back, META_SIZE, 0) == META_SIZE &&
		  memcmp(back, ns->meta, META_SIZE) == 0);

	if (!tcp && ns->client.fd >= 0)
		close(ns->t.sv[1]);
	if (!tcp && ns->listener.fd >= 0)
		close(ns->t.sv[0]);
	transport_close(&ns->t);
	close(ns->ofd);
	free(back);
	free(ns->meta);
	free(ns);
}

static void test_v2_socketpair(void)
{
	run_net_session(false, false, false, false);
}

static void test_v2_tcp(void)
{
	run_net_session(true, false, false, false);
}

static void test_v2_tcp_usetcp(void)
{
	run_net_session(true, false, false, true);
}

static void test_v1_socketpair(void)
{
	run_net_session(false, true, false, false);
}

static void test_v1_fallback_tcp(void)
{
	run_net_session(true, false, true, true);
}

/* ---- virt agent (spec §3.5) and virt record (spec §3.7) over a socketpair ---- */

static const char *const agent_args[] = { "record", "-e", "sched:sched_switch" };

struct virt_session {
	int sv[2];
	bool record;	/* record --virt instead of the agent */
	int client_ret;
	struct side agent, listener;
};

static int virt_agent(struct side *s)
{
	struct virt_session *vs = (struct virt_session *)((char *)s - offsetof(struct virt_session, agent));
	struct tracecmd_msg_handle *h;
	char *argv[3] = { NULL, NULL, NULL };
	int argc, i;
	int *fds = NULL;

	h = tracecmd_msg_handle_alloc(s->fd, TRACECMD_MSG_FL_CLIENT | TRACECMD_MSG_FL_VIRT |
						     (vs->record ? 0 : TRACECMD_MSG_FL_AGENT));
	CHECK(s, h != NULL);
	CHECK(s, tracecmd_msg_connect_to_server(h) == 0);
	if (vs->record) {
		h->cpu_count = 2;
		h->version = 2;
		page_size = (unsigned int)getpagesize();
		/* RINIT has no ports; the client then opens its virtio ports. */
		vs->client_ret = tracecmd_msg_send_init_data(h, &fds);
		if (vs->client_ret == 0)
			free(fds);
	} else {
		argc = tracecmd_msg_agent_connect(h, 4);
		CHECK(s, argc == 3);
		CHECK(s, tracecmd_msg_agent_parameters(h, argc, argv) == 0);
		for (i = 0; i < 3; i++) {
			CHECK(s, argv[i] && strcmp(argv[i], agent_args[i]) == 0);
			free(argv[i]);
		}
	}
	tracecmd_msg_handle_close(h);
	s->fd = -1;
	return 0;
}

static int virt_listener(struct side *s)
{
	struct virt_session *vs = (struct virt_session *)((char *)s - offsetof(struct virt_session, listener));
	struct tracecmd_msg_handle *h;
	uint32_t argc = 3;
	int i;

	h = tracecmd_msg_handle_alloc(s->fd, TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_VIRT);
	CHECK(s, h != NULL);
	CHECK(s, tracecmd_msg_set_connection(h, "guest0") == 0);
	if (vs->record) {
		CHECK(s, tracecmd_msg_initial_setting(h) == getpagesize());
		CHECK(s, h->cpu_count == 2);
		CHECK(s, !(h->flags & TRACECMD_MSG_FL_AGENT));
		CHECK(s, tracecmd_msg_send_port_array(h, NULL) == 0);
	} else {
		CHECK(s, tracecmd_msg_initial_setting(h) == 0);
		CHECK(s, h->cpu_count == 4);
		CHECK(s, h->flags & TRACECMD_MSG_FL_AGENT);
		/* What a manager would send the agent through the passed fd: CONNECT{argc}
		 * (no library call makes it) and argc strings. */
		CHECK(s, tc_send_msg(h->fd, TC_CONNECT, &argc, 1, NULL, 0));
		for (i = 0; i < 3; i++) {
			const char *a = agent_args[i];

			CHECK(s, tracecmd_msg_metadata_send(h, a, (int)strlen(a)) == 0);
			CHECK(s, tracecmd_msg_finish_sending_metadata(h) == 0);
		}
	}
	return wait_peer_close(s, h);
}

static void run_virt(bool record)
{
	struct virt_session vs = { .record = record };
	struct tc_call lc, ac;

	tc_socketpair(vs.sv);
	vs.listener.fd = vs.sv[0];
	vs.agent.fd = vs.sv[1];
	vs.listener.body = virt_listener;
	vs.agent.body = virt_agent;
	tc_call_start(&lc, side_main, &vs.listener);
	tc_call_start(&ac, side_main, &vs.agent);
	CU_ASSERT_EQUAL(tc_call_join(&ac), 0);
	CU_ASSERT_EQUAL(tc_call_join(&lc), 0);
	CU_ASSERT(side_ok("agent", &vs.agent));
	CU_ASSERT(side_ok("listener", &vs.listener));
	if (vs.agent.fd >= 0)
		close(vs.agent.fd);
	if (vs.listener.fd >= 0)
		close(vs.listener.fd);
	if (record) {
		/* No /dev/virtio-ports here: opening trace-path-cpu0 fails (spec §2.1). */
		if (access("/dev/virtio-ports", F_OK) == 0)
			CU_FAIL("this test assumes a host without /dev/virtio-ports");
		CU_ASSERT_EQUAL(vs.client_ret, -ENOENT);
	}
}

static void test_virt_agent(void)
{
	run_virt(false);
}

static void test_virt_record(void)
{
	run_virt(true);
}

/* ---- manager flows over a unix socket (spec §3.4, §3.6, §3.8) ---- */

enum mngr_flow { FLOW_CONNECT, FLOW_GLIST, FLOW_GLIST_EMPTY, FLOW_ALIST, FLOW_TRACE_NAME,
		 FLOW_TRACE_PID };

static char *const guest_cpus[] = {
	"/var/lib/trace-cmd/virt/dom1/trace-path-cpu0",
	"/var/lib/trace-cmd/virt/dom1/trace-path-cpu1",
	"/var/lib/trace-cmd/virt/dom1/trace-path-cpu2",
};

struct mngr_session {
	enum mngr_flow flow;
	char path[108];
	int lsock;
	int agent[2];		/* the agent channel the listener hands over */
	int fifo[2][2];		/* per-CPU pipes; read ends are handed over */
	char *out;		/* what list printed */
	int ret;		/* the manager call's result */
	struct side manager, listener;
};

static int call_list_guests(void *h)
{
	return tracecmd_msg_list_guests(h);
}

static int call_list_agents(void *h)
{
	return tracecmd_msg_list_agents(h);
}

static int mngr_client(struct side *s)
{
	struct mngr_session *ms = (struct mngr_session *)((char *)s - offsetof(struct mngr_session, manager));
	struct tracecmd_msg_handle *h;
	int cpus = -1, fds[2] = { -1, -1 }, i;
	char buf[32] = { 0 };

	s->fd = tracecmd_connect_to_socket(ms->path);
	CHECK(s, s->fd >= 0);
	h = tracecmd_msg_handle_alloc(s->fd, TRACECMD_MSG_FL_MANAGER);
	CHECK(s, h != NULL);
	switch (ms->flow) {
	case FLOW_CONNECT:
		ms->ret = tracecmd_msg_connect_guest(h, "dom1",
			"/var/lib/trace-cmd/virt/dom1/agent-ctl-path", 3, guest_cpus);
		break;
	case FLOW_GLIST:
	case FLOW_GLIST_EMPTY:
		ms->out = tc_capture_stdout(call_list_guests, h, &ms->ret);
		break;
	case FLOW_ALIST:
		ms->out = tc_capture_stdout(call_list_agents, h, &ms->ret);
		break;
	case FLOW_TRACE_PID:
		ms->ret = tracecmd_msg_connect_agent(h, "dom1", 4242, &cpus);
		CHECK(s, cpus == 3);
		break;
	case FLOW_TRACE_NAME:
		ms->ret = tracecmd_msg_connect_agent(h, "dom1", 0, &cpus);
		CHECK(s, ms->ret == 0 && cpus == 2);
		ms->ret = tracecmd_msg_get_fds(h, cpus, fds);
		CHECK(s, ms->ret == 0);
		/* The handle now holds the agent channel; the manager socket stays open. */
		CHECK(s, h->fd != s->fd);
		CHECK(s, tc_write_all(h->fd, "to agent", 8));
		CHECK(s, tc_read_n(ms->agent[1], buf, 8, TC_WAIT_MS) == 8);
		CHECK(s, memcmp(buf, "to agent", 8) == 0);
		for (i = 0; i < 2; i++) {
			CHECK(s, fds[i] >= 0);
			CHECK(s, tc_write_all(ms->fifo[i][1], "cpu!", 4));
			CHECK(s, tc_read_n(fds[i], buf, 4, TC_WAIT_MS) == 4);
			CHECK(s, memcmp(buf, "cpu!", 4) == 0);
			close(fds[i]);
		}
		close(s->fd); /* the manager socket the handle no longer holds */
		break;
	}
	tracecmd_msg_handle_close(h);
	s->fd = -1;
	return 0;
}

static int mngr_listener(struct side *s)
{
	struct mngr_session *ms = (struct mngr_session *)((char *)s - offsetof(struct mngr_session, listener));
	struct tracecmd_msg_handle *h;
	char *dom = NULL, *agent = NULL, **cpus = NULL;
	int i;

	s->fd = accept(ms->lsock, NULL, NULL);
	CHECK(s, s->fd >= 0);
	h = tracecmd_msg_handle_alloc(s->fd, TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER);
	CHECK(s, h != NULL);
	switch (ms->flow) {
	case FLOW_CONNECT:
		CHECK(s, tracecmd_msg_read_manager(h) == TRACECMD_MSG_MNGR_CONNECT);
		CHECK(s, h->cpu_count == 3);
		CHECK(s, tracecmd_msg_get_connect(h, &dom, &agent, &cpus) == 0);
		CHECK(s, dom && strcmp(dom, "dom1") == 0);
		CHECK(s, agent && strcmp(agent, "/var/lib/trace-cmd/virt/dom1/agent-ctl-path") == 0);
		for (i = 0; i < 3; i++)
			CHECK(s, cpus[i] && strcmp(cpus[i], guest_cpus[i]) == 0);
		CHECK(s, cpus[3] == NULL);
		for (i = 0; i < 3; i++)
			free(cpus[i]);
		free(cpus);
		free(dom);
		free(agent);
		break;
	case FLOW_GLIST:
		CHECK(s, tracecmd_msg_read_manager(h) == TRACECMD_MSG_MNGR_GLIST);
		CHECK(s, tracecmd_msg_send_domain(h, "dom1", 3) == 0);
		CHECK(s, tracecmd_msg_send_domain(h, "other guest", 16) == 0);
		CHECK(s, tracecmd_msg_send_finish(h) == 0);
		break;
	case FLOW_GLIST_EMPTY:
		CHECK(s, tracecmd_msg_read_manager(h) == TRACECMD_MSG_MNGR_GLIST);
		CHECK(s, tracecmd_msg_send_finish(h) == 0);
		break;
	case FLOW_ALIST:
		CHECK(s, tracecmd_msg_read_manager(h) == TRACECMD_MSG_MNGR_ALIST);
		CHECK(s, tracecmd_msg_send_domain(h, "dom1", 2) == 0);
		CHECK(s, tracecmd_msg_send_finish(h) == 0);
		break;
	case FLOW_TRACE_PID:
		CHECK(s, tracecmd_msg_read_manager(h) == TRACECMD_MSG_MNGR_TRACE);
		CHECK(s, h->pid == 4242);
		CHECK(s, tracecmd_msg_send_cpus(h, 3) == 0);
		break;
	case FLOW_TRACE_NAME:
		CHECK(s, tracecmd_msg_read_manager(h) == TRACECMD_MSG_MNGR_TRACE);
		CHECK(s, h->pid == 0);
		CHECK(s, tracecmd_msg_get_domain(h, &dom) == 0);
		CHECK(s, dom && strcmp(dom, "dom1") == 0);
		free(dom);
		CHECK(s, tracecmd_msg_send_cpus(h, 2) == 0);
		CHECK(s, tracecmd_msg_transfer_fd(h, ms->agent[0], 2) == 2);
		CHECK(s, tracecmd_msg_transfer_fd(h, ms->fifo[0][0], 2) == 2);
		CHECK(s, tracecmd_msg_transfer_fd(h, ms->fifo[1][0], 1) == 2);
		break;
	}
	return wait_peer_close(s, h);
}

/* Runs one flow; the manager call must return want_ret and print want_out (if set). */
static void check_mngr(enum mngr_flow flow, int want_ret, const char *want_out)
{
	struct mngr_session *ms = calloc(1, sizeof(*ms));
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct tc_call lc, mc;
	int i;

	if (!ms)
		abort();
	ms->flow = flow;
	ms->manager.fd = ms->listener.fd = -1;
	snprintf(ms->path, sizeof(ms->path), "/tmp/tc-manager-%d.sock", (int)getpid());
	strcpy(a.sun_path, ms->path);
	unlink(ms->path);
	ms->lsock = socket(AF_UNIX, SOCK_STREAM, 0);
	if (ms->lsock < 0 || bind(ms->lsock, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(ms->lsock, 4) < 0) {
		perror(ms->path);
		abort();
	}
	tc_socketpair(ms->agent);
	for (i = 0; i < 2; i++)
		if (pipe(ms->fifo[i]) < 0)
			abort();

	ms->listener.body = mngr_listener;
	ms->manager.body = mngr_client;
	tc_call_start(&lc, side_main, &ms->listener);
	tc_call_start(&mc, side_main, &ms->manager);
	CU_ASSERT_EQUAL(tc_call_join(&mc), 0);
	CU_ASSERT_EQUAL(tc_call_join(&lc), 0);
	CU_ASSERT(side_ok("manager", &ms->manager));
	CU_ASSERT(side_ok("listener", &ms->listener));

	close(ms->lsock);
	unlink(ms->path);
	close(ms->agent[0]);
	close(ms->agent[1]);
	for (i = 0; i < 2; i++) {
		close(ms->fifo[i][0]);
		close(ms->fifo[i][1]);
	}
	CU_ASSERT_EQUAL(ms->ret, want_ret);
	if (want_out) {
		CU_ASSERT_PTR_NOT_NULL(ms->out);
		if (ms->out)
			CU_ASSERT_STRING_EQUAL(ms->out, want_out);
	}
	free(ms->out);
	free(ms);
}

static void test_mngr_connect(void)
{
	check_mngr(FLOW_CONNECT, 0, NULL);
}

static void test_mngr_list_guests(void)
{
	check_mngr(FLOW_GLIST, 2, "dom1 with 3 cpus\nother guest with 16 cpus\n");
	check_mngr(FLOW_GLIST_EMPTY, 0, "No guests registered\n");
}

static void test_mngr_list_agents(void)
{
	check_mngr(FLOW_ALIST, 1, "dom1 with 2 cpus\n");
}

static void test_mngr_record_agent_by_pid(void)
{
	check_mngr(FLOW_TRACE_PID, 0, NULL);
}

static void test_mngr_record_agent_fds(void)
{
	check_mngr(FLOW_TRACE_NAME, 0, NULL);
}

int main(void)
{
	static const struct tc_test tests[] = {
		{ "V2 record session over a socketpair (1 MiB)", test_v2_socketpair },
		{ "V2 record session over TCP loopback (1 MiB)", test_v2_tcp },
		{ "V2 record session over TCP with USETCP", test_v2_tcp_usetcp },
		{ "V1 record session over a socketpair (forced V1)", test_v1_socketpair },
		{ "V1 fallback after a V1 listener refuses -1V2 (TCP)", test_v1_fallback_tcp },
		{ "virt agent: TCONNECT/RCONNECT, CINIT/CRINIT, argv", test_virt_agent },
		{ "virt record: TCONNECT/RCONNECT, TINIT/RINIT no ports", test_virt_record },
		{ "connect: CONNECT + strings -> get_connect", test_mngr_connect },
		{ "list -G: GLIST -> DOMAIN + string, FINISH", test_mngr_list_guests },
		{ "list -A: ALIST -> DOMAIN + string, FINISH", test_mngr_list_agents },
		{ "record -A guest:pid: TRACE{pid} -> DOMAIN", test_mngr_record_agent_by_pid },
		{ "record -A guest: TRACE, get_domain, send_cpus, fds", test_mngr_record_agent_fds },
		{ NULL, NULL },
	};

	return tc_run("msg_session", tests);
}
