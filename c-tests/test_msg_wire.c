/*
 * Exact bytes on the wire for every V2/VS command (spec §1.5, §1.6, checklist §6.3),
 * driven through the exported functions on one end of a socketpair and read raw on
 * the other end; and the reverse: raw bytes written by hand, checking what the
 * receiving function returns and sets, including bad input, timeouts and NULLs.
 *
 * Replies a function waits for are written before the call where the order allows
 * it (a socketpair buffers them), so most tests need no thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tc.h"

#define FL_NET_CLIENT (TRACECMD_MSG_FL_CLIENT | TRACECMD_MSG_FL_NETWORK)

/* A handle on one end of a fresh socketpair; *peer is the other end. */
static struct tracecmd_msg_handle *pair(unsigned long flags, int *peer)
{
	struct tracecmd_msg_handle *h;
	int sv[2];

	tc_socketpair(sv);
	h = tracecmd_msg_handle_alloc(sv[0], flags);
	if (!h) {
		close(sv[0]);
		close(sv[1]);
	}
	/* Ends this test (CUnit longjmps out), the suite goes on. */
	CU_ASSERT_PTR_NOT_NULL_FATAL(h);
	*peer = sv[1];
	return h;
}

static void unpair(struct tracecmd_msg_handle *h, int peer)
{
	tracecmd_msg_handle_close(h);
	close(peer);
}

static off_t file_size(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 ? st.st_size : -1;
}

static int tmpfile_fd(void)
{
	char name[] = "/tmp/tc-wire-XXXXXX";
	int fd = mkstemp(name);

	if (fd < 0)
		abort();
	unlink(name);
	return fd;
}

/* ---------------- sending side: bytes produced by each function ---------------- */

static void test_tinit_without_option(void)
{
	struct tracecmd_msg_handle *h;
	int *ports = NULL;
	int peer, i;

	h = pair(FL_NET_CLIENT, &peer);
	h->cpu_count = 8;
	h->version = 2;
	page_size = 4096;
	CU_ASSERT(tc_write_hex(peer, "0000002c 00000005 00000008 000005dc 000005dd 000005de"
				     "000005df 000005e0 000005e1 000005e2 000005e3"));
	CU_ASSERT_EQUAL(tracecmd_msg_send_init_data(h, &ports), 0);
	TC_EXPECT_HEX(peer, "00000014 00000004 00000008 00001000 00000000");
	CU_ASSERT_PTR_NOT_NULL_FATAL(ports);
	for (i = 0; i < 8; i++)
		CU_ASSERT_EQUAL(ports[i], 1500 + i);
	free(ports);
	/* TINIT only sets up the connection; it must not change the client handle. */
	CU_ASSERT_EQUAL(h->cpu_count, 8);
	CU_ASSERT_EQUAL(h->flags, FL_NET_CLIENT);
	unpair(h, peer);
}

static void test_tinit_with_usetcp(void)
{
	struct tracecmd_msg_handle *h;
	int *ports = NULL;
	int peer;

	h = pair(FL_NET_CLIENT | TRACECMD_MSG_FL_USE_TCP, &peer);
	h->cpu_count = 8;
	page_size = 4096;
	CU_ASSERT(tc_write_hex(peer, "0000002c 00000005 00000008 00000001 00000002 00000003"
				     "00000004 00000005 00000006 00000007 00000008"));
	CU_ASSERT_EQUAL(tracecmd_msg_send_init_data(h, &ports), 0);
	/* The option's 4 padding bytes are sent as zeros (uninitialised in C). */
	TC_EXPECT_HEX(peer, "00000020 00000004 00000008 00001000 00000001"
			    "0000000c 00000001 00000000");
	CU_ASSERT_PTR_NOT_NULL_FATAL(ports);
	CU_ASSERT_EQUAL(ports[0], 1);
	CU_ASSERT_EQUAL(ports[7], 8);
	free(ports);
	unpair(h, peer);
}

/* cpu_count, page_size and fd are read afresh on every call (C writes them directly). */
static void test_fields_read_afresh(void)
{
	struct tracecmd_msg_handle *h;
	int *ports = NULL;
	int peer, sv[2];

	h = pair(FL_NET_CLIENT, &peer);
	h->cpu_count = 2;
	page_size = 65536;
	CU_ASSERT(tc_write_hex(peer, "00000014 00000005 00000002 00002710 00002711"));
	CU_ASSERT_EQUAL(tracecmd_msg_send_init_data(h, &ports), 0);
	TC_EXPECT_HEX(peer, "00000014 00000004 00000002 00010000 00000000");
	CU_ASSERT_PTR_NOT_NULL_FATAL(ports);
	CU_ASSERT_EQUAL(ports[0], 10000);
	CU_ASSERT_EQUAL(ports[1], 10001);
	free(ports);
	page_size = 4096;

	/* Replace the fd the way tracecmd_msg_get_fds users do. */
	tc_socketpair(sv);
	CU_ASSERT_EQUAL(tracecmd_msg_finish_sending_metadata(h), 0);
	TC_EXPECT_HEX(peer, "00000008 00000007");
	close(h->fd);
	h->fd = sv[0];
	CU_ASSERT_EQUAL(tracecmd_msg_finish_sending_metadata(h), 0);
	TC_EXPECT_HEX(sv[1], "00000008 00000007");
	CU_ASSERT(tc_nothing_pending(peer));
	close(sv[1]);
	unpair(h, peer);
}

/* One-call sends: each function and the exact bytes it puts on the wire (§1.5). */
static int send_rinit_ports(struct tracecmd_msg_handle *h)
{
	int ports[2] = { 1500, 1501 };

	return tracecmd_msg_send_port_array(h, ports);
}

static int send_rinit_virt(struct tracecmd_msg_handle *h)
{
	return tracecmd_msg_send_port_array(h, NULL);
}

static int send_meta_abc(struct tracecmd_msg_handle *h)
{
	return tracecmd_msg_metadata_send(h, "abc", 3);
}

static int send_meta_empty(struct tracecmd_msg_handle *h)
{
	return tracecmd_msg_metadata_send(h, "", 0);
}

static int send_close(struct tracecmd_msg_handle *h)
{
	tracecmd_msg_send_close_msg(h);
	return 0;
}

static int send_cpus_2(struct tracecmd_msg_handle *h)
{
	return tracecmd_msg_send_cpus(h, 2);
}

static int send_domain_dom(struct tracecmd_msg_handle *h)
{
	return tracecmd_msg_send_domain(h, "dom", 2);
}

#define FL_NET_SERVER (TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_NETWORK)
#define FL_VIRT_SERVER (TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_VIRT)
#define FL_MNGR_SERVER (TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER)

static int set_connection(struct tracecmd_msg_handle *h)
{
	return tracecmd_msg_set_connection(h, "guest0");
}

/* what, handle flags, reply written first ("" = none), function, bytes it must send */
static const struct {
	const char *what;
	unsigned long flags;
	const char *reply;
	int (*send)(struct tracecmd_msg_handle *h);
	const char *hex;
} one_call_sends[] = {
	/* TCONNECT; any reply is accepted (spec §2.1), RCONNECT here */
	{ "TCONNECT", TRACECMD_MSG_FL_CLIENT | TRACECMD_MSG_FL_VIRT,
	  "00000018 00000003 0000000c 74726163 65636d64 2d563200",
	  tracecmd_msg_connect_to_server, "00000008 00000002" },
	{ "RCONNECT", FL_VIRT_SERVER, "00000008 00000002", set_connection,
	  "00000018 00000003 0000000c 74726163 65636d64 2d563200" },
	{ "RINIT, ports 1500/1501", FL_NET_SERVER, "", send_rinit_ports,
	  "00000014 00000005 00000002 000005dc 000005dd" },
	{ "RINIT, virt (no ports)", FL_VIRT_SERVER, "", send_rinit_virt, "0000000c 00000005 00000002" },
	{ "SENDMETA abc", FL_NET_CLIENT, "", send_meta_abc, "0000000f 00000006 00000003 616263" },
	{ "empty SENDMETA", FL_NET_CLIENT, "", send_meta_empty, "0000000c 00000006 00000000" },
	{ "FINMETA", FL_NET_CLIENT, "", tracecmd_msg_finish_sending_metadata, "00000008 00000007" },
	{ "CLOSE", FL_NET_CLIENT, "", send_close, "00000008 00000001" },
	{ "DOMAIN cpus=2", FL_MNGR_SERVER, "", send_cpus_2, "0000000c 0000000b 00000002" },
	{ "FINISH", FL_MNGR_SERVER, "", tracecmd_msg_send_finish, "00000008 0000000c" },
	/* a string is SENDMETA without the NUL, then FINMETA (§1.6) */
	{ "DOMAIN + string dom", FL_MNGR_SERVER, "", send_domain_dom,
	  "0000000c 0000000b 00000002 | 0000000f 00000006 00000003 646f6d | 00000008 00000007" },
};

static void test_one_call_sends(void)
{
	unsigned int i;

	for (i = 0; i < sizeof(one_call_sends) / sizeof(one_call_sends[0]); i++) {
		struct tracecmd_msg_handle *h;
		int peer, ret;

		h = pair(one_call_sends[i].flags, &peer);
		h->cpu_count = 2;
		h->version = 2;
		CU_ASSERT(tc_write_hex(peer, one_call_sends[i].reply));
		ret = one_call_sends[i].send(h);
		CU_ASSERT_EQUAL(ret, 0);
		if (!tc_expect_hex(peer, one_call_sends[i].hex)) {
			fprintf(stderr, "  ^ while sending %s (ret %d)\n", one_call_sends[i].what, ret);
			CU_FAIL("wrong bytes on the wire");
		}
		unpair(h, peer);
	}
}

/* 20000 bytes go out as 8180 + 8180 + 3640 (spec §1.4: no message above 8192). */
static void test_sendmeta_chunking(void)
{
	static const struct { const char *hdr; size_t n; } parts[] = {
		{ "00002000 00000006 00001ff4", 8180 },
		{ "00002000 00000006 00001ff4", 8180 },
		{ "00000e44 00000006 00000e38", 3640 },
	};
	struct tracecmd_msg_handle *h;
	uint64_t seed = 20000;
	char *data = malloc(20000);
	size_t off = 0;
	unsigned int i;
	int peer;

	CU_ASSERT_PTR_NOT_NULL_FATAL(data);
	tc_fill_random(&seed, data, 20000);
	h = pair(FL_NET_CLIENT, &peer);
	CU_ASSERT_EQUAL(tracecmd_msg_metadata_send(h, data, 20000), 0);
	for (i = 0; i < 3; i++) {
		uint8_t hdr[12];

		tc_hex(parts[i].hdr, hdr, sizeof(hdr));
		CU_ASSERT(tc_expect_bytes(peer, hdr, 12, false));
		CU_ASSERT(tc_expect_bytes(peer, data + off, parts[i].n, i == 2));
		off += parts[i].n;
	}
	free(data);
	unpair(h, peer);
}

/* Exactly 8180 bytes is one full message, 8181 needs a second one of 1 byte. */
static void test_sendmeta_boundaries(void)
{
	struct tracecmd_msg_handle *h;
	char *data = calloc(1, 8181);
	int peer;

	CU_ASSERT_PTR_NOT_NULL_FATAL(data);
	memset(data, 'x', 8181);
	h = pair(FL_NET_CLIENT, &peer);
	CU_ASSERT_EQUAL(tracecmd_msg_metadata_send(h, data, 8180), 0);
	{
		uint8_t hdr[12];

		tc_hex("00002000 00000006 00001ff4", hdr, 12);
		CU_ASSERT(tc_expect_bytes(peer, hdr, 12, false));
		CU_ASSERT(tc_expect_bytes(peer, data, 8180, true));
	}
	CU_ASSERT_EQUAL(tracecmd_msg_metadata_send(h, data, 8181), 0);
	{
		uint8_t hdr[12];

		tc_hex("00002000 00000006 00001ff4", hdr, 12);
		CU_ASSERT(tc_expect_bytes(peer, hdr, 12, false));
		CU_ASSERT(tc_expect_bytes(peer, data, 8180, false));
	}
	TC_EXPECT_HEX(peer, "0000000d 00000006 00000001 78");
	free(data);
	unpair(h, peer);
}

/* CINIT carries the count in the sender's native order (spec §5.2 #1, kept on purpose). */
static void test_cinit_native_order(void)
{
	struct tracecmd_msg_handle *h;
	char native[9], want[64];
	int peer;

	h = pair(TRACECMD_MSG_FL_CLIENT | TRACECMD_MSG_FL_VIRT | TRACECMD_MSG_FL_AGENT, &peer);
	CU_ASSERT(tc_send_cmd(peer, TC_CRINIT));
	CU_ASSERT(tc_write_hex(peer, "0000000c 00000008 00000003"));
	CU_ASSERT_EQUAL(tracecmd_msg_agent_connect(h, 4), 3);
	tc_native_hex(4, native);
	snprintf(want, sizeof(want), "0000000c 0000000d %s", native);
	TC_EXPECT_HEX(peer, want);
#if defined(__x86_64__) || defined(__i386__)
	CU_ASSERT_STRING_EQUAL(native, "04000000");
#endif
	unpair(h, peer);
}

static void test_crinit(void)
{
	struct tracecmd_msg_handle *h;
	int peer;

	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_VIRT, &peer);
	CU_ASSERT(tc_write_hex(peer, "0000000c 0000000d 04000000"));
	CU_ASSERT_EQUAL(tracecmd_msg_initial_setting(h), 0);
	TC_EXPECT_HEX(peer, "00000008 0000000e");
	CU_ASSERT_EQUAL(h->cpu_count, 4);
	CU_ASSERT(h->flags & TRACECMD_MSG_FL_AGENT);
	CU_ASSERT(h->flags & TRACECMD_MSG_FL_SERVER);
	unpair(h, peer);
}

/* CONNECT{n}, wait ACK, then domain, agent and n cpu strings without NUL (§3.4). */
static void test_connect_guest(void)
{
	char *cpus[] = { "/v/dom/trace-path-cpu0", "/v/dom/trace-path-cpu1", NULL };
	struct tracecmd_msg_handle *h;
	int peer;

	h = pair(TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_send_cmd(peer, TC_ACK));
	CU_ASSERT_EQUAL(tracecmd_msg_connect_guest(h, "dom", "/v/dom/agent-ctl-path", 2, cpus), 0);
	{
		uint8_t want[12];

		tc_hex("0000000c 00000008 00000002", want, 12);
		CU_ASSERT(tc_expect_bytes(peer, want, 12, false));
	}
	CU_ASSERT(tc_expect_string(peer, "dom"));
	CU_ASSERT(tc_expect_string(peer, "/v/dom/agent-ctl-path"));
	CU_ASSERT(tc_expect_string(peer, cpus[0]));
	CU_ASSERT(tc_expect_string(peer, cpus[1]));
	CU_ASSERT(tc_nothing_pending(peer));
	unpair(h, peer);
}

/* A string longer than one chunk is several SENDMETAs and one FINMETA. */
static void test_long_string_chunks(void)
{
	struct tracecmd_msg_handle *h;
	char *name = malloc(9001);
	uint8_t hdr[12];
	int peer;

	CU_ASSERT_PTR_NOT_NULL_FATAL(name);
	memset(name, 'g', 9000);
	name[9000] = 0;
	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT_EQUAL(tracecmd_msg_send_domain(h, name, 1), 0);
	tc_hex("0000000c 0000000b 00000001", hdr, 12);
	CU_ASSERT(tc_expect_bytes(peer, hdr, 12, false));
	tc_hex("00002000 00000006 00001ff4", hdr, 12);
	CU_ASSERT(tc_expect_bytes(peer, hdr, 12, false));
	CU_ASSERT(tc_expect_bytes(peer, name, 8180, false));
	tc_hex("00000340 00000006 00000334", hdr, 12);
	CU_ASSERT(tc_expect_bytes(peer, hdr, 12, false));
	CU_ASSERT(tc_expect_bytes(peer, name, 820, false));
	TC_EXPECT_HEX(peer, "00000008 00000007");
	free(name);
	unpair(h, peer);
}

static void test_ack_from_get_domain(void)
{
	struct tracecmd_msg_handle *h;
	char *dom = NULL;
	int peer;

	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_send_string(peer, "guest1"));
	CU_ASSERT_EQUAL(tracecmd_msg_get_domain(h, &dom), 0);
	TC_EXPECT_HEX(peer, "00000008 00000009");
	CU_ASSERT_PTR_NOT_NULL_FATAL(dom);
	CU_ASSERT_STRING_EQUAL(dom, "guest1");
	free(dom);
	unpair(h, peer);
}

static int call_list_guests(void *h)
{
	return tracecmd_msg_list_guests(h);
}

static int call_list_agents(void *h)
{
	return tracecmd_msg_list_agents(h);
}

static void test_glist(void)
{
	struct tracecmd_msg_handle *h;
	char *out;
	int peer, ret;

	h = pair(TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_write_hex(peer, "0000000c 0000000b 00000002"));
	CU_ASSERT(tc_send_string(peer, "vm1"));
	CU_ASSERT(tc_send_cmd(peer, TC_FINISH));
	out = tc_capture_stdout(call_list_guests, h, &ret);
	CU_ASSERT_EQUAL(ret, 1);
	CU_ASSERT_STRING_EQUAL(out, "vm1 with 2 cpus\n");
	free(out);
	TC_EXPECT_HEX(peer, "00000008 0000000a");
	unpair(h, peer);
}

static void test_alist(void)
{
	struct tracecmd_msg_handle *h;
	char *out;
	int peer, ret;

	h = pair(TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_send_cmd(peer, TC_FINISH));
	out = tc_capture_stdout(call_list_agents, h, &ret);
	CU_ASSERT_EQUAL(ret, 0);
	CU_ASSERT_STRING_EQUAL(out, "No agents registered\n");
	free(out);
	TC_EXPECT_HEX(peer, "00000008 0000000f");
	unpair(h, peer);
}

/* TRACE{pid}: pid 0 asks for the guest by name (ACK, string, DOMAIN), else DOMAIN. */
static void test_trace(void)
{
	struct tracecmd_msg_handle *h;
	int cpus = -1;
	int peer;

	h = pair(TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_send_cmd(peer, TC_ACK));
	CU_ASSERT(tc_write_hex(peer, "0000000c 0000000b 00000003"));
	CU_ASSERT_EQUAL(tracecmd_msg_connect_agent(h, "guest1", 0, &cpus), 0);
	CU_ASSERT_EQUAL(cpus, 3);
	{
		uint8_t want[12];

		tc_hex("0000000c 00000010 00000000", want, 12);
		CU_ASSERT(tc_expect_bytes(peer, want, 12, false));
	}
	CU_ASSERT(tc_expect_string(peer, "guest1"));
	CU_ASSERT(tc_nothing_pending(peer));

	cpus = -1;
	CU_ASSERT(tc_write_hex(peer, "0000000c 0000000b 00000002"));
	CU_ASSERT_EQUAL(tracecmd_msg_connect_agent(h, "guest1", 1234, &cpus), 0);
	CU_ASSERT_EQUAL(cpus, 2);
	TC_EXPECT_HEX(peer, "0000000c 00000010 000004d2");

	/* Not found: FINISH → -ENODEV with a pid, -EINVAL by name (spec §2.1). */
	CU_ASSERT(tc_send_cmd(peer, TC_FINISH));
	CU_ASSERT_EQUAL(tracecmd_msg_connect_agent(h, "guest1", 99, &cpus), -ENODEV);
	TC_EXPECT_HEX(peer, "0000000c 00000010 00000063");
	CU_ASSERT(tc_send_cmd(peer, TC_FINISH));
	CU_ASSERT_EQUAL(tracecmd_msg_connect_agent(h, "guest1", 0, &cpus), -EINVAL);
	TC_EXPECT_HEX(peer, "0000000c 00000010 00000000");
	unpair(h, peer);
}

/* ---------------- receiving side: what each function makes of raw bytes ---------------- */

static void test_recv_tinit(void)
{
	struct tracecmd_msg_handle *h;
	int peer;

	h = pair(TRACECMD_MSG_FL_SERVER, &peer);
	CU_ASSERT(tc_write_hex(peer, "00000014 00000004 00000008 00001000 00000000"));
	CU_ASSERT_EQUAL(tracecmd_msg_initial_setting(h), 4096);
	CU_ASSERT_EQUAL(h->cpu_count, 8);
	CU_ASSERT_FALSE(h->flags & TRACECMD_MSG_FL_USE_TCP);
	CU_ASSERT_FALSE(h->flags & TRACECMD_MSG_FL_AGENT);
	CU_ASSERT(tc_nothing_pending(peer));
	unpair(h, peer);

	h = pair(TRACECMD_MSG_FL_SERVER, &peer);
	CU_ASSERT(tc_write_hex(peer, "00000020 00000004 00000003 00010000 00000001"
				     "0000000c 00000001 deadbeef"));
	CU_ASSERT_EQUAL(tracecmd_msg_initial_setting(h), 65536);
	CU_ASSERT_EQUAL(h->cpu_count, 3);
	CU_ASSERT(h->flags & TRACECMD_MSG_FL_USE_TCP);
	CU_ASSERT(h->flags & TRACECMD_MSG_FL_SERVER);
	unpair(h, peer);

	/* 4096 CPUs is the largest count accepted. */
	h = pair(TRACECMD_MSG_FL_SERVER, &peer);
	CU_ASSERT(tc_write_hex(peer, "00000014 00000004 00001000 00001000 00000000"));
	CU_ASSERT_EQUAL(tracecmd_msg_initial_setting(h), 4096);
	CU_ASSERT_EQUAL(h->cpu_count, 4096);
	unpair(h, peer);
}

/* Each bad TINIT is refused with a negative errno and leaves cpu_count sane. */
static void test_recv_tinit_bad(void)
{
	static const char *const bad[] = {
		/* unknown option command */
		"00000020 00000004 00000002 00001000 00000001 0000000c 00000002 00000000",
		/* option size 0 and option size above 4096 */
		"00000020 00000004 00000002 00001000 00000001 00000000 00000001 00000000",
		"00000020 00000004 00000002 00001000 00000001 00001400 00000001 00000000",
		/* opt_num says 1 but no option follows */
		"00000014 00000004 00000002 00001000 00000001",
		/* opt_num far larger than the message */
		"00000020 00000004 00000002 00001000 7fffffff 0000000c 00000001 00000000",
		/* 4097 CPUs, negative CPUs */
		"00000014 00000004 00001001 00001000 00000000",
		"00000014 00000004 ffffffff 00001000 00000000",
		/* page size 0 and negative */
		"00000014 00000004 00000002 00000000 00000000",
		"00000014 00000004 00000002 80000000 00000000",
		/* shorter than TINIT's fixed body */
		"00000010 00000004 00000002 00001000",
		/* the header alone */
		"00000008 00000004",
	};
	unsigned int i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct tracecmd_msg_handle *h;
		int peer, ret;

		h = pair(TRACECMD_MSG_FL_SERVER, &peer);
		CU_ASSERT(tc_write_hex(peer, bad[i]));
		ret = tracecmd_msg_initial_setting(h);
		if (ret >= 0)
			fprintf(stderr, "\nbad TINIT #%u accepted (ret %d): %s\n", i, ret, bad[i]);
		CU_ASSERT(ret < 0);
		CU_ASSERT_FALSE(h->flags & TRACECMD_MSG_FL_USE_TCP);
		unpair(h, peer);
	}
}

/* CINIT is accepted in either byte order (spec §5.2 #1). */
static void test_recv_cinit_either_order(void)
{
	static const char *const cinit[] = {
		"0000000c 0000000d 04000000",
		"0000000c 0000000d 00000004",
		"0000000c 0000000d 00100000", /* 4096 little endian */
		"0000000c 0000000d 00001000", /* 4096 big endian */
	};
	static const int want[] = { 4, 4, 4096, 4096 };
	unsigned int i;

	for (i = 0; i < 4; i++) {
		struct tracecmd_msg_handle *h;
		int peer;

		h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_VIRT, &peer);
		CU_ASSERT(tc_write_hex(peer, cinit[i]));
		CU_ASSERT_EQUAL(tracecmd_msg_initial_setting(h), 0);
		CU_ASSERT_EQUAL(h->cpu_count, want[i]);
		CU_ASSERT(h->flags & TRACECMD_MSG_FL_AGENT);
		TC_EXPECT_HEX(peer, "00000008 0000000e");
		unpair(h, peer);
	}
}

static void test_recv_cinit_too_many(void)
{
	static const char *const cinit[] = {
		"0000000c 0000000d 01110000", /* 0x1101 (4353) LE, 0x01110000 BE */
		"0000000c 0000000d ffffffff",
		"0000000c 0000000d 00200000", /* 0x2000 LE, 0x200000 BE */
	};
	unsigned int i;

	for (i = 0; i < 3; i++) {
		struct tracecmd_msg_handle *h;
		int peer;

		h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_VIRT, &peer);
		CU_ASSERT(tc_write_hex(peer, cinit[i]));
		CU_ASSERT(tracecmd_msg_initial_setting(h) < 0);
		/* Refused: no CRINIT goes out. */
		CU_ASSERT(tc_nothing_pending(peer));
		unpair(h, peer);
	}
}

static void test_recv_rinit_bad(void)
{
	static const char *const bad[] = {
		/* claims 3 ports, carries 2 */
		"00000014 00000005 00000003 000005dc 000005dd",
		/* 5000 CPUs */
		"0000000c 00000005 00001388",
		/* negative CPU count */
		"0000000c 00000005 80000000",
	};
	unsigned int i;

	for (i = 0; i < 3; i++) {
		struct tracecmd_msg_handle *h;
		int *ports = NULL;
		int peer, ret;

		h = pair(FL_NET_CLIENT, &peer);
		h->cpu_count = 2;
		page_size = 4096;
		CU_ASSERT(tc_write_hex(peer, bad[i]));
		ret = tracecmd_msg_send_init_data(h, &ports);
		if (ret >= 0)
			fprintf(stderr, "\nbad RINIT #%u accepted: %s\n", i, bad[i]);
		CU_ASSERT(ret < 0);
		if (ret >= 0)
			free(ports);
		unpair(h, peer);
	}
}

/* The reply `cmd` where RINIT (client) or TCONNECT (virt server) is due gives `want`. */
static void expect_reply_result(uint32_t cmd, int want)
{
	struct tracecmd_msg_handle *h;
	int *ports = NULL;
	int peer;

	h = pair(FL_NET_CLIENT, &peer);
	h->cpu_count = 1;
	CU_ASSERT(tc_send_cmd(peer, cmd));
	CU_ASSERT_EQUAL(tracecmd_msg_send_init_data(h, &ports), want);
	unpair(h, peer);

	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_VIRT, &peer);
	CU_ASSERT(tc_send_cmd(peer, cmd));
	CU_ASSERT_EQUAL(tracecmd_msg_set_connection(h, "dom"), want);
	CU_ASSERT(tc_nothing_pending(peer));
	unpair(h, peer);
}

/* CLOSE as the reply aborts the wait with -ECONNABORTED. */
static void test_recv_close_aborts(void)
{
	expect_reply_result(TC_CLOSE, -ECONNABORTED);
}

/* A command other than the expected one is -EINVAL (spec §2.1). */
static void test_recv_wrong_command(void)
{
	struct tracecmd_msg_handle *h;
	int peer;

	expect_reply_result(TC_ACK, -EINVAL);

	h = pair(TRACECMD_MSG_FL_SERVER, &peer);
	CU_ASSERT(tc_send_cmd(peer, TC_ACK));
	CU_ASSERT_EQUAL(tracecmd_msg_initial_setting(h), -EINVAL);
	unpair(h, peer);

	/* agent: CRINIT expected, then CONNECT */
	h = pair(TRACECMD_MSG_FL_CLIENT | TRACECMD_MSG_FL_AGENT, &peer);
	CU_ASSERT(tc_send_cmd(peer, TC_CRINIT));
	CU_ASSERT(tc_send_cmd(peer, TC_FINISH));
	CU_ASSERT_EQUAL(tracecmd_msg_agent_connect(h, 2), -EINVAL);
	unpair(h, peer);

	/* connect_guest: the reply must be ACK; -1 otherwise (spec §2.1) */
	h = pair(TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_send_cmd(peer, TC_FINISH));
	CU_ASSERT(tracecmd_msg_connect_guest(h, "d", "a", 0, NULL) < 0);
	TC_EXPECT_HEX(peer, "0000000c 00000008 00000000");
	unpair(h, peer);

	/* list: an unexpected reply ends the list with -EINVAL */
	h = pair(TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_send_cmd(peer, TC_ACK));
	CU_ASSERT_EQUAL(tracecmd_msg_list_domains(h), -EINVAL);
	unpair(h, peer);
}

/*
 * Sizes outside [8, 8192], a size below the command's minimum, unknown commands
 * and payloads on header-only commands: a negative result at once, without waiting
 * for bytes the bad header claims.
 */
static void test_recv_garbage_headers(void)
{
	static const char *const bad[] = {
		"ffffffff 00000004",
		"00002001 00000004",
		"00000004 00000004",
		"00000000 00000000",
		"00000008 00000011",			/* cmd 17 (MAX) */
		"0000000c 00000063 00000000",		/* cmd 99 */
		"0000000c 0000000d",			/* CINIT missing its body */
		"0000000c 00000009 00000000",		/* ACK with a payload */
		"0000000b 0000000d 000000",		/* size below CINIT's minimum */
	};
	unsigned int i;

	tracecmd_msg_set_timeout(2000);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct tracecmd_msg_handle *h;
		long long t0;
		int peer, ret;

		h = pair(TRACECMD_MSG_FL_SERVER, &peer);
		CU_ASSERT(tc_write_hex(peer, bad[i]));
		t0 = tc_now_ms();
		ret = tracecmd_msg_initial_setting(h);
		if (ret >= 0)
			fprintf(stderr, "\nbad header #%u accepted: %s\n", i, bad[i]);
		CU_ASSERT(ret < 0);
		/* #6 claims 4 more bytes than sent: a stall; everything else fails fast. */
		if (i != 6)
			CU_ASSERT(tc_now_ms() - t0 < 1500);
		unpair(h, peer);
	}
	tracecmd_msg_set_timeout(5000);
}

struct timed {
	struct tracecmd_msg_handle *h;
	int ret;
	long long ms;
};

/* A peer that sends part of a message and stalls: -ETIMEDOUT within ~the timeout. */
static void test_recv_stall_times_out(void)
{
	static const char *const partial[] = {
		"",					/* nothing at all */
		"0000",					/* half a header */
		"00000014 00000004 00000008",		/* half a TINIT */
	};
	unsigned int i;

	tracecmd_msg_set_timeout(300);
	for (i = 0; i < 3; i++) {
		struct tracecmd_msg_handle *h;
		long long t0, dt;
		int peer, ret;

		h = pair(TRACECMD_MSG_FL_SERVER, &peer);
		CU_ASSERT(tc_write_hex(peer, partial[i]));
		t0 = tc_now_ms();
		ret = tracecmd_msg_initial_setting(h);
		dt = tc_now_ms() - t0;
		CU_ASSERT_EQUAL(ret, -ETIMEDOUT);
		if (dt > 3000)
			fprintf(stderr, "\nstall #%u took %lld ms with a 300 ms timeout\n", i, dt);
		CU_ASSERT(dt < 3000);
		unpair(h, peer);
	}

	/* A string cut short mid-chunk times out as well. */
	{
		struct tracecmd_msg_handle *h;
		char *dom = NULL;
		int peer;

		h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER, &peer);
		CU_ASSERT(tc_write_hex(peer, "00000014 00000006 00000008 61626364"));
		CU_ASSERT_EQUAL(tracecmd_msg_get_domain(h, &dom), -ETIMEDOUT);
		unpair(h, peer);
	}
	tracecmd_msg_set_timeout(5000);
}

/* EOF instead of a reply is an error, not a hang and not success. */
static void test_recv_eof(void)
{
	struct tracecmd_msg_handle *h;
	int *ports = NULL;
	int peer, ret;

	h = pair(FL_NET_CLIENT, &peer);
	h->cpu_count = 1;
	shutdown(peer, SHUT_WR);
	ret = tracecmd_msg_send_init_data(h, &ports);
	CU_ASSERT(ret < 0);
	unpair(h, peer);

	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER, &peer);
	close(peer);
	CU_ASSERT_EQUAL(tracecmd_msg_read_manager(h), TRACECMD_MSG_MNGR_ERR);
	tracecmd_msg_handle_close(h);
}

static void test_read_manager(void)
{
	static const struct {
		const char *hex;
		enum tracecmd_msg_mngr_type type;
	} req[] = {
		{ "0000000c 00000008 00000003", TRACECMD_MSG_MNGR_CONNECT },
		{ "00000008 0000000a", TRACECMD_MSG_MNGR_GLIST },
		{ "00000008 0000000f", TRACECMD_MSG_MNGR_ALIST },
		{ "0000000c 00000010 0000004d", TRACECMD_MSG_MNGR_TRACE },
		{ "00000008 00000009", TRACECMD_MSG_MNGR_ERR },		/* ACK */
		{ "0000000c 00000008 00001388", TRACECMD_MSG_MNGR_ERR },	/* 5000 CPUs */
		{ "0000000c 00000008 ffffffff", TRACECMD_MSG_MNGR_ERR },	/* negative */
	};
	unsigned int i;

	for (i = 0; i < sizeof(req) / sizeof(req[0]); i++) {
		struct tracecmd_msg_handle *h;
		int peer;

		h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER, &peer);
		CU_ASSERT(tc_write_hex(peer, req[i].hex));
		CU_ASSERT_EQUAL(tracecmd_msg_read_manager(h), req[i].type);
		if (req[i].type == TRACECMD_MSG_MNGR_CONNECT)
			CU_ASSERT_EQUAL(h->cpu_count, 3);
		if (req[i].type == TRACECMD_MSG_MNGR_TRACE)
			CU_ASSERT_EQUAL(h->pid, 77);
		unpair(h, peer);
	}
}

static void test_get_connect(void)
{
	struct tracecmd_msg_handle *h;
	char *dom = NULL, *agent = NULL, **cpus = NULL;
	int peer;

	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_write_hex(peer, "0000000c 00000008 00000002"));
	CU_ASSERT_EQUAL_FATAL(tracecmd_msg_read_manager(h), TRACECMD_MSG_MNGR_CONNECT);
	CU_ASSERT(tc_send_string(peer, "dom"));
	CU_ASSERT(tc_send_string(peer, "agent"));
	CU_ASSERT(tc_send_string(peer, "cpu0"));
	CU_ASSERT(tc_send_string(peer, "cpu1"));
	CU_ASSERT_EQUAL(tracecmd_msg_get_connect(h, &dom, &agent, &cpus), 0);
	TC_EXPECT_HEX(peer, "00000008 00000009");
	CU_ASSERT_PTR_NOT_NULL_FATAL(dom);
	CU_ASSERT_PTR_NOT_NULL_FATAL(agent);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cpus);
	CU_ASSERT_STRING_EQUAL(dom, "dom");
	CU_ASSERT_STRING_EQUAL(agent, "agent");
	CU_ASSERT_PTR_NOT_NULL_FATAL(cpus[0]);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cpus[1]);
	CU_ASSERT_STRING_EQUAL(cpus[0], "cpu0");
	CU_ASSERT_STRING_EQUAL(cpus[1], "cpu1");
	CU_ASSERT_PTR_NULL(cpus[2]); /* NULL-terminated, unlike the original */
	free(cpus[0]);
	free(cpus[1]);
	free(cpus);
	free(dom);
	free(agent);
	unpair(h, peer);

	/* A string cut short by the peer closing is an error. */
	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER, &peer);
	h->cpu_count = 2;
	CU_ASSERT(tc_send_string(peer, "dom"));
	CU_ASSERT(tc_send_cmd(peer, TC_FINMETA)); /* FINMETA alone = no string */
	CU_ASSERT(tracecmd_msg_get_connect(h, &dom, &agent, &cpus) < 0);
	unpair(h, peer);
}

static void test_get_domain_empty_is_error(void)
{
	struct tracecmd_msg_handle *h;
	char *dom = NULL;
	int peer;

	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_send_cmd(peer, TC_FINMETA));
	CU_ASSERT_EQUAL(tracecmd_msg_get_domain(h, &dom), -EINVAL);
	unpair(h, peer);

	/* A string in several chunks arrives whole. */
	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER, &peer);
	CU_ASSERT(tc_write_hex(peer, "0000000e 00000006 00000002 6775"));
	CU_ASSERT(tc_write_hex(peer, "0000000f 00000006 00000003 657374"));
	CU_ASSERT(tc_write_hex(peer, "0000000c 00000006 00000000"));
	CU_ASSERT(tc_send_cmd(peer, TC_FINMETA));
	CU_ASSERT_EQUAL(tracecmd_msg_get_domain(h, &dom), 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(dom);
	CU_ASSERT_STRING_EQUAL(dom, "guest");
	free(dom);
	unpair(h, peer);
}

static void test_agent_parameters(void)
{
	struct tracecmd_msg_handle *h;
	char *argv[3] = { NULL, NULL, NULL };
	int peer;

	h = pair(TRACECMD_MSG_FL_CLIENT | TRACECMD_MSG_FL_AGENT, &peer);
	CU_ASSERT(tc_send_string(peer, "record"));
	CU_ASSERT(tc_send_string(peer, "-e"));
	CU_ASSERT_EQUAL(tracecmd_msg_agent_parameters(h, 2, argv), 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(argv[0]);
	CU_ASSERT_PTR_NOT_NULL_FATAL(argv[1]);
	CU_ASSERT_STRING_EQUAL(argv[0], "record");
	CU_ASSERT_STRING_EQUAL(argv[1], "-e");
	CU_ASSERT_PTR_NULL(argv[2]);
	free(argv[0]);
	free(argv[1]);

	/* A non-string message instead of the argument is a failure. */
	argv[0] = argv[1] = NULL;
	CU_ASSERT(tc_send_cmd(peer, TC_ACK));
	CU_ASSERT(tracecmd_msg_agent_parameters(h, 1, argv) < 0);
	unpair(h, peer);
}

static void test_collect_metadata(void)
{
	struct tracecmd_msg_handle *h;
	char buf[16] = { 0 };
	int peer, ofd = tmpfile_fd();

	h = pair(TRACECMD_MSG_FL_SERVER, &peer);
	h->version = 2;
	CU_ASSERT(tc_write_hex(peer, "0000000f 00000006 00000003 616263"));
	CU_ASSERT(tc_write_hex(peer, "0000000c 00000006 00000000"));
	CU_ASSERT(tc_write_hex(peer, "00000010 00000006 00000004 64656667"));
	CU_ASSERT(tc_send_cmd(peer, TC_FINMETA));
	CU_ASSERT(tc_send_cmd(peer, TC_CLOSE));
	CU_ASSERT_EQUAL(tracecmd_msg_collect_metadata(h, ofd), 0);
	CU_ASSERT_EQUAL(file_size(ofd), 7);
	CU_ASSERT_EQUAL(pread(ofd, buf, sizeof(buf), 0), 7);
	CU_ASSERT_STRING_EQUAL(buf, "abcdefg");
	/* Nothing sent back to the client. */
	CU_ASSERT(tc_nothing_pending(peer));
	unpair(h, peer);
	close(ofd);
}

/* After FINMETA, a done handle stops waiting for CLOSE (the listener's SIGINT path). */
static void test_collect_metadata_done(void)
{
	struct tracecmd_msg_handle *h;
	long long t0;
	int peer, ofd = tmpfile_fd();

	tracecmd_msg_set_timeout(2000);
	h = pair(TRACECMD_MSG_FL_SERVER, &peer);
	CU_ASSERT(tc_write_hex(peer, "0000000f 00000006 00000003 616263"));
	CU_ASSERT(tc_send_cmd(peer, TC_FINMETA));
	tracecmd_msg_set_done(h);
	t0 = tc_now_ms();
	CU_ASSERT_EQUAL(tracecmd_msg_collect_metadata(h, ofd), 0);
	CU_ASSERT(tc_now_ms() - t0 < 1500);
	CU_ASSERT_EQUAL(file_size(ofd), 3);
	unpair(h, peer);
	close(ofd);
	tracecmd_msg_set_timeout(5000);
}

/*
 * The listener's stop path: a signal handler calls tracecmd_msg_set_done (it must be
 * async-signal-safe) while a thread is blocked where the original waits without a
 * timeout: the CLOSE wait after FINMETA, and the TCONNECT wait of set_connection.
 * The blocked call must come back promptly instead of waiting for the peer.
 */
static struct tracecmd_msg_handle *volatile signal_handle;

static void set_done_handler(int sig)
{
	(void)sig;
	tracecmd_msg_set_done(signal_handle);
}

static int blocked_collect(void *h)
{
	int ofd = tmpfile_fd();
	int ret = tracecmd_msg_collect_metadata(h, ofd);

	close(ofd);
	return ret;
}

static int blocked_set_connection(void *h)
{
	return tracecmd_msg_set_connection(h, "guest0");
}

static int interrupt_blocked(int (*fn)(void *), const char *before, long long *ms)
{
	struct sigaction sa = { .sa_handler = set_done_handler }, old;
	struct tracecmd_msg_handle *h;
	struct tc_call call;
	long long t0;
	int peer, ret;

	tracecmd_msg_set_timeout(10000); /* longer than the bound checked below */
	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_VIRT, &peer);
	signal_handle = h;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART, as the listener's signal_setup */
	sigaction(SIGUSR1, &sa, &old);
	if (before[0])
		CU_ASSERT(tc_write_hex(peer, before));
	tc_call_start(&call, fn, h);
	usleep(200 * 1000); /* let it block (no pass/fail timing depends on this) */
	t0 = tc_now_ms();
	/* Signal until it returns: one landing before the call blocks must not hang the
	 * test. After 3 s give up and unblock it through the peer (then ms fails). */
	for (;;) {
		pthread_kill(call.th, SIGUSR1);
		usleep(50 * 1000);
		if (pthread_tryjoin_np(call.th, NULL) == 0)
			break;
		if (tc_now_ms() - t0 > 3000) {
			shutdown(peer, SHUT_RDWR);
			pthread_join(call.th, NULL);
			break;
		}
	}
	*ms = tc_now_ms() - t0;
	ret = call.ret;
	sigaction(SIGUSR1, &old, NULL);
	unpair(h, peer);
	tracecmd_msg_set_timeout(5000);
	return ret;
}

static void test_signal_stops_blocked_waits(void)
{
	long long ms;
	int ret;

	ret = interrupt_blocked(blocked_collect, "0000000f 00000006 00000003 616263 | 00000008 00000007",
				&ms);
	if (ret < 0 && ret != -EINTR)
		fprintf(stderr, "\ncollect_metadata after set_done from a signal: %d\n", ret);
	CU_ASSERT(ret == 0 || ret == -EINTR);
	CU_ASSERT(ms < 3000);

	ret = interrupt_blocked(blocked_set_connection, "", &ms);
	CU_ASSERT(ret < 0);
	CU_ASSERT(ms < 3000);
}

/* A SENDMETA whose size field disagrees with its length writes nothing it did not get. */
static void test_collect_metadata_bad_size(void)
{
	struct tracecmd_msg_handle *h;
	int peer, ofd = tmpfile_fd();

	h = pair(TRACECMD_MSG_FL_SERVER, &peer);
	CU_ASSERT(tc_write_hex(peer, "0000000f 00000006 00000064 616263"));
	CU_ASSERT(tc_send_cmd(peer, TC_FINMETA));
	CU_ASSERT(tc_send_cmd(peer, TC_CLOSE));
	CU_ASSERT(tracecmd_msg_collect_metadata(h, ofd) < 0);
	CU_ASSERT(file_size(ofd) <= 3);
	unpair(h, peer);
	close(ofd);

	/* A write error on the output is reported as a negative errno. */
	h = pair(TRACECMD_MSG_FL_SERVER, &peer);
	CU_ASSERT(tc_write_hex(peer, "0000000f 00000006 00000003 616263"));
	ofd = open("/dev/null", O_RDONLY);
	CU_ASSERT(tracecmd_msg_collect_metadata(h, ofd) < 0);
	close(ofd);
	unpair(h, peer);
}

static void test_done_flag_client_and_server(void)
{
	unsigned long kinds[] = {
		TRACECMD_MSG_FL_CLIENT | TRACECMD_MSG_FL_NETWORK,
		TRACECMD_MSG_FL_SERVER,
		TRACECMD_MSG_FL_MANAGER,
		0,
	};
	unsigned int i;

	for (i = 0; i < 4; i++) {
		struct tracecmd_msg_handle *h = tracecmd_msg_handle_alloc(-1, kinds[i]);

		CU_ASSERT_PTR_NOT_NULL_FATAL(h);
		CU_ASSERT_EQUAL(h->fd, -1);
		CU_ASSERT_EQUAL(h->flags, kinds[i]);
		CU_ASSERT_EQUAL(h->pid, 0);
		CU_ASSERT_EQUAL(h->cpu_count, 0);
		CU_ASSERT_EQUAL(h->version, 0);
		CU_ASSERT_FALSE(tracecmd_msg_done(h));
		tracecmd_msg_set_done(h);
		CU_ASSERT_TRUE(tracecmd_msg_done(h));
		tracecmd_msg_set_done(h);
		CU_ASSERT_TRUE(tracecmd_msg_done(h));
		tracecmd_msg_handle_close(h); /* fd -1: nothing to close */
	}
}

/* The handle owns its fd: close closes it. */
static void test_close_closes_fd(void)
{
	struct tracecmd_msg_handle *h;
	int peer;

	h = pair(TRACECMD_MSG_FL_CLIENT, &peer);
	tracecmd_msg_handle_close(h);
	CU_ASSERT(tc_eof_within(peer, TC_WAIT_MS));
	close(peer);
}

/* NULL handle or NULL out-pointers: an error value, no crash, nothing sent. */
static void test_null_arguments(void)
{
	struct tracecmd_msg_handle *h;
	int *ports = NULL;
	char *s = NULL, *s2 = NULL, **sv = NULL;
	int fds[2], cpus, peer, ofd = tmpfile_fd();

	CU_ASSERT_FALSE(tracecmd_msg_done(NULL));
	tracecmd_msg_set_done(NULL);
	tracecmd_msg_handle_close(NULL);
	tracecmd_msg_send_close_msg(NULL);
	CU_ASSERT(tracecmd_msg_connect_to_server(NULL) < 0);
	CU_ASSERT(tracecmd_msg_send_init_data(NULL, &ports) < 0);
	CU_ASSERT(tracecmd_msg_metadata_send(NULL, "a", 1) < 0);
	CU_ASSERT(tracecmd_msg_finish_sending_metadata(NULL) < 0);
	CU_ASSERT(tracecmd_msg_set_connection(NULL, "d") < 0);
	CU_ASSERT(tracecmd_msg_initial_setting(NULL) < 0);
	CU_ASSERT(tracecmd_msg_send_port_array(NULL, fds) < 0);
	CU_ASSERT(tracecmd_msg_collect_metadata(NULL, ofd) < 0);
	CU_ASSERT_EQUAL(tracecmd_msg_read_manager(NULL), TRACECMD_MSG_MNGR_ERR);
	CU_ASSERT(tracecmd_msg_get_connect(NULL, &s, &s2, &sv) < 0);
	CU_ASSERT(tracecmd_msg_send_cpus(NULL, 1) < 0);
	CU_ASSERT(tracecmd_msg_send_domain(NULL, "d", 1) < 0);
	CU_ASSERT(tracecmd_msg_get_domain(NULL, &s) < 0);
	CU_ASSERT(tracecmd_msg_send_finish(NULL) < 0);
	CU_ASSERT(tracecmd_msg_transfer_fd(NULL, 0, 1) < 0);
	CU_ASSERT(tracecmd_msg_get_fds(NULL, 2, fds) < 0);
	CU_ASSERT(tracecmd_msg_agent_connect(NULL, 2) < 0);
	CU_ASSERT(tracecmd_msg_agent_parameters(NULL, 1, &s) < 0);
	CU_ASSERT(tracecmd_msg_list_domains(NULL) < 0);
	CU_ASSERT(tracecmd_msg_list_guests(NULL) < 0);
	CU_ASSERT(tracecmd_msg_list_agents(NULL) < 0);
	CU_ASSERT(tracecmd_msg_connect_guest(NULL, "d", "a", 0, NULL) < 0);
	CU_ASSERT(tracecmd_msg_connect_agent(NULL, "g", 0, &cpus) < 0);
	CU_ASSERT_EQUAL(tracecmd_connect_to_socket(NULL), -1);
	CU_ASSERT_PTR_NULL(s);

	/* A live handle with NULL out-pointers or data: refused before anything is sent. */
	h = pair(TRACECMD_MSG_FL_SERVER | TRACECMD_MSG_FL_MANAGER | TRACECMD_MSG_FL_CLIENT, &peer);
	h->cpu_count = 1;
	CU_ASSERT(tracecmd_msg_send_init_data(h, NULL) < 0);
	CU_ASSERT(tracecmd_msg_metadata_send(h, NULL, 5) < 0);
	CU_ASSERT(tracecmd_msg_metadata_send(h, "abc", -1) < 0);
	CU_ASSERT(tracecmd_msg_get_connect(h, NULL, &s2, &sv) < 0);
	CU_ASSERT(tracecmd_msg_get_connect(h, &s, NULL, &sv) < 0);
	CU_ASSERT(tracecmd_msg_get_connect(h, &s, &s2, NULL) < 0);
	CU_ASSERT(tracecmd_msg_send_domain(h, NULL, 1) < 0);
	CU_ASSERT(tracecmd_msg_get_domain(h, NULL) < 0);
	CU_ASSERT(tracecmd_msg_get_fds(h, 2, NULL) < 0);
	CU_ASSERT(tracecmd_msg_agent_parameters(h, 1, NULL) < 0);
	CU_ASSERT(tracecmd_msg_connect_guest(h, NULL, "a", 0, NULL) < 0);
	CU_ASSERT(tracecmd_msg_connect_guest(h, "d", NULL, 0, NULL) < 0);
	CU_ASSERT(tracecmd_msg_connect_guest(h, "d", "a", 2, NULL) < 0);
	CU_ASSERT(tracecmd_msg_connect_agent(h, "g", 0, NULL) < 0);
	CU_ASSERT(tracecmd_msg_connect_agent(h, NULL, 0, &cpus) < 0);
	CU_ASSERT(tc_nothing_pending(peer));
	unpair(h, peer);
	close(ofd);
}

/* A handle whose fd is not a socket gives errors, not crashes. */
static void test_bad_fd(void)
{
	struct tracecmd_msg_handle *h = tracecmd_msg_handle_alloc(-1, TRACECMD_MSG_FL_CLIENT);
	int *ports = NULL;

	CU_ASSERT_PTR_NOT_NULL_FATAL(h);
	tracecmd_msg_set_timeout(500); /* in case -1 is polled (poll ignores it) */
	h->cpu_count = 1;
	CU_ASSERT(tracecmd_msg_metadata_send(h, "abc", 3) < 0);
	CU_ASSERT(tracecmd_msg_finish_sending_metadata(h) < 0);
	CU_ASSERT(tracecmd_msg_send_init_data(h, &ports) < 0);
	CU_ASSERT(tracecmd_msg_initial_setting(h) < 0);
	tracecmd_msg_send_close_msg(h);
	tracecmd_msg_handle_close(h);
	tracecmd_msg_set_timeout(5000);
}

/*
 * The timeout from the environment alone (no setter call): this program re-runs
 * itself with TRACECMD_MSG_TIMEOUT_MS=300 and "--env-timeout-child", which stalls
 * a receive and exits 0 only on -ETIMEDOUT within 3 s.
 */
static const char *self_path = "/proc/self/exe";

static int env_timeout_child(void)
{
	struct tracecmd_msg_handle *h;
	long long t0, dt;
	int sv[2], ret;

	tc_socketpair(sv);
	h = tracecmd_msg_handle_alloc(sv[0], TRACECMD_MSG_FL_SERVER);
	if (!h || !tc_write_hex(sv[1], "00000014 00000004 00000008"))
		return 2;
	t0 = tc_now_ms();
	ret = tracecmd_msg_initial_setting(h);
	dt = tc_now_ms() - t0;
	fprintf(stderr, "env timeout child: ret %d after %lld ms\n", ret, dt);
	return ret == -ETIMEDOUT && dt < 3000 ? 0 : 1;
}

static void test_timeout_from_environment(void)
{
	int status = -1;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		setenv("TRACECMD_MSG_TIMEOUT_MS", "300", 1);
		execl(self_path, self_path, "--env-timeout-child", (char *)NULL);
		_exit(3);
	}
	CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
	CU_ASSERT(WIFEXITED(status));
	CU_ASSERT_EQUAL(WEXITSTATUS(status), 0);
}

int main(int argc, char **argv)
{
	static const struct tc_test tests[] = {
		{ "send TINIT, no option (8 CPUs, 4 KiB)", test_tinit_without_option },
		{ "send TINIT with USETCP (zero padding)", test_tinit_with_usetcp },
		{ "handle fields and page_size read afresh", test_fields_read_afresh },
		{ "one-call sends: TCONNECT, RCONNECT, RINIT, SENDMETA, FINMETA, CLOSE, DOMAIN, FINISH", test_one_call_sends },
		{ "send 20000 bytes as 8180+8180+3640", test_sendmeta_chunking },
		{ "send 8180 and 8181 bytes", test_sendmeta_boundaries },
		{ "send CINIT in native order (agent_connect)", test_cinit_native_order },
		{ "send CRINIT (initial_setting on CINIT)", test_crinit },
		{ "send CONNECT + strings (connect_guest)", test_connect_guest },
		{ "send a 9000-byte string in two chunks", test_long_string_chunks },
		{ "send ACK (get_domain)", test_ack_from_get_domain },
		{ "send GLIST, print the list", test_glist },
		{ "send ALIST, print the empty list", test_alist },
		{ "send TRACE by name and by pid", test_trace },
		{ "receive TINIT: page size, cpus, USETCP", test_recv_tinit },
		{ "receive bad TINITs: refused", test_recv_tinit_bad },
		{ "receive CINIT in either byte order", test_recv_cinit_either_order },
		{ "receive CINIT with > 4096 CPUs: refused", test_recv_cinit_too_many },
		{ "receive bad RINITs: refused", test_recv_rinit_bad },
		{ "receive CLOSE: -ECONNABORTED", test_recv_close_aborts },
		{ "receive wrong commands: -EINVAL", test_recv_wrong_command },
		{ "receive garbage headers: error, no wait", test_recv_garbage_headers },
		{ "receive a stalled message: -ETIMEDOUT", test_recv_stall_times_out },
		{ "timeout set by TRACECMD_MSG_TIMEOUT_MS", test_timeout_from_environment },
		{ "receive EOF: error", test_recv_eof },
		{ "read_manager for each request", test_read_manager },
		{ "get_connect: strings, NULL-terminated list", test_get_connect },
		{ "get_domain: empty string is -EINVAL, chunks join", test_get_domain_empty_is_error },
		{ "agent_parameters", test_agent_parameters },
		{ "collect_metadata until CLOSE", test_collect_metadata },
		{ "collect_metadata stops waiting when done", test_collect_metadata_done },
		{ "collect_metadata: bad size field, write error", test_collect_metadata_bad_size },
		{ "set_done from a signal ends blocked waits", test_signal_stops_blocked_waits },
		{ "done/set_done on client and server handles", test_done_flag_client_and_server },
		{ "handle_close closes the fd", test_close_closes_fd },
		{ "NULL arguments: errors, nothing sent", test_null_arguments },
		{ "invalid fd: errors", test_bad_fd },
		{ NULL, NULL },
	};

	if (argc == 2 && strcmp(argv[1], "--env-timeout-child") == 0)
		return env_timeout_child();
	/* argv[0] rather than /proc/self/exe, which is the tool under valgrind & co. */
	if (argc > 0 && strchr(argv[0], '/'))
		self_path = argv[0];
	return tc_run("msg_wire", tests);
}
