/*
 * The C ABI as a C compiler sees it through include/trace-cmd.h alone (spec §1.2,
 * §1.3, §7): the handle layout C callers read and write directly, the flag and enum
 * values that go into handle->flags and recorder flags, and the writable page_size.
 *
 * Deliberately includes no project header but trace-cmd.h (no common/ helpers).
 */
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "trace-cmd.h"

/* The layout is a compile-time fact; a wrong header must not even build. */
#if defined(__LP64__)
_Static_assert(sizeof(struct tracecmd_msg_handle) == 24, "handle is 24 bytes on LP64");
_Static_assert(offsetof(struct tracecmd_msg_handle, flags) == 16, "flags at 16 on LP64");
#endif

static void test_handle_layout(void)
{
	struct tracecmd_msg_handle h;

#if defined(__LP64__)
	CU_ASSERT_EQUAL(sizeof(struct tracecmd_msg_handle), 24);
	CU_ASSERT_EQUAL(offsetof(struct tracecmd_msg_handle, flags), 16);
	CU_ASSERT_EQUAL(sizeof(h.flags), 8);
#else
	CU_ASSERT_EQUAL(sizeof(struct tracecmd_msg_handle), 16);
	CU_ASSERT_EQUAL(offsetof(struct tracecmd_msg_handle, flags), 12);
#endif
	CU_ASSERT_EQUAL(offsetof(struct tracecmd_msg_handle, fd), 0);
	CU_ASSERT_EQUAL(offsetof(struct tracecmd_msg_handle, pid), 4);
	CU_ASSERT_EQUAL(offsetof(struct tracecmd_msg_handle, cpu_count), 8);
	CU_ASSERT_EQUAL(offsetof(struct tracecmd_msg_handle, version), 10);
	CU_ASSERT_EQUAL(sizeof(h.fd), 4);
	CU_ASSERT_EQUAL(sizeof(h.pid), 4);
	CU_ASSERT_EQUAL(sizeof(h.cpu_count), 2);
	CU_ASSERT_EQUAL(sizeof(h.version), 2);
	/* Field signedness as in trace-cmd.h: int, int, short, short, unsigned long. */
	h.fd = -1;
	h.pid = -1;
	h.cpu_count = -1;
	h.version = -1;
	h.flags = 0;
	h.flags -= 1;
	CU_ASSERT(h.fd < 0);
	CU_ASSERT(h.pid < 0);
	CU_ASSERT(h.cpu_count < 0);
	CU_ASSERT(h.version < 0);
	CU_ASSERT(h.flags > 0);
}

static void test_msg_flags(void)
{
	CU_ASSERT_EQUAL(TRACECMD_MSG_FL_CLIENT, 1);
	CU_ASSERT_EQUAL(TRACECMD_MSG_FL_SERVER, 2);
	CU_ASSERT_EQUAL(TRACECMD_MSG_FL_USE_TCP, 4);
	CU_ASSERT_EQUAL(TRACECMD_MSG_FL_NETWORK, 8);
	CU_ASSERT_EQUAL(TRACECMD_MSG_FL_VIRT, 16);
	CU_ASSERT_EQUAL(TRACECMD_MSG_FL_MANAGER, 32);
	CU_ASSERT_EQUAL(TRACECMD_MSG_FL_AGENT, 64);
}

static void test_msg_bits(void)
{
	CU_ASSERT_EQUAL(1 << TRACECMD_MSG_BIT_CLIENT, TRACECMD_MSG_FL_CLIENT);
	CU_ASSERT_EQUAL(1 << TRACECMD_MSG_BIT_SERVER, TRACECMD_MSG_FL_SERVER);
	CU_ASSERT_EQUAL(1 << TRACECMD_MSG_BIT_USE_TCP, TRACECMD_MSG_FL_USE_TCP);
	CU_ASSERT_EQUAL(1 << TRACECMD_MSG_BIT_NETWORK, TRACECMD_MSG_FL_NETWORK);
	CU_ASSERT_EQUAL(1 << TRACECMD_MSG_BIT_VIRT, TRACECMD_MSG_FL_VIRT);
	CU_ASSERT_EQUAL(1 << TRACECMD_MSG_BIT_MANAGER, TRACECMD_MSG_FL_MANAGER);
	CU_ASSERT_EQUAL(1 << TRACECMD_MSG_BIT_AGENT, TRACECMD_MSG_FL_AGENT);
}

static void test_mngr_type(void)
{
	enum tracecmd_msg_mngr_type t = TRACECMD_MSG_MNGR_ERR;

	CU_ASSERT_EQUAL(t, 0);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNGR_CONNECT, 1);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNGR_GLIST, 2);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNGR_ALIST, 3);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNGR_TRACE, 4);
	/* An int-sized enum, as C callers store it in plain int variables. */
	CU_ASSERT_EQUAL(sizeof(enum tracecmd_msg_mngr_type), sizeof(int));
}

static void test_record_flags(void)
{
	CU_ASSERT_EQUAL(TRACECMD_RECORD_NOSPLICE, 1);
	CU_ASSERT_EQUAL(TRACECMD_RECORD_SNAPSHOT, 2);
	CU_ASSERT_EQUAL(TRACECMD_RECORD_BLOCK, 4);
}

static void test_page_size_writable(void)
{
	unsigned int *p = &page_size;
	unsigned int saved = page_size;

	/* trace-record.c assigns it before any TINIT: a plain, writable global. */
	page_size = 65536;
	CU_ASSERT_EQUAL(*p, 65536);
	page_size = (unsigned int)getpagesize();
	CU_ASSERT_EQUAL(*p, (unsigned int)getpagesize());
	CU_ASSERT_EQUAL(sizeof(page_size), 4);
	page_size = saved;
}

int main(void)
{
	CU_pSuite s;
	unsigned int failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 1;
	s = CU_add_suite("abi", NULL, NULL);
	if (!s || !CU_add_test(s, "handle layout (sizeof, offsetof, signedness)", test_handle_layout) ||
	    !CU_add_test(s, "TRACECMD_MSG_FL_* values", test_msg_flags) ||
	    !CU_add_test(s, "TRACECMD_MSG_BIT_* match the flags", test_msg_bits) ||
	    !CU_add_test(s, "tracecmd_msg_mngr_type values", test_mngr_type) ||
	    !CU_add_test(s, "TRACECMD_RECORD_* values", test_record_flags) ||
	    !CU_add_test(s, "extern unsigned int page_size is writable", test_page_size_writable)) {
		fprintf(stderr, "CUnit setup failed: %s\n", CU_get_error_msg());
		CU_cleanup_registry();
		return 1;
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	failures = CU_get_number_of_failures();
	CU_cleanup_registry();
	return (int)failures;
}
