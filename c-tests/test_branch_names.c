/*
 * Source compatibility with the virt-server branch (issue 15 item 1): every enum,
 * flag, type, global and function name that the branch's callers (trace-listen.c,
 * trace-record.c, trace-agent.c, trace-connect.c, trace-list.c, trace-output.c)
 * use, spelled as the branch's trace-cmd.h spells it, compiled against our header
 * as it is. Each function is taken into a pointer of the exact type the branch
 * declares, so a changed parameter or return type fails the build (-Werror).
 * The run then checks the values, and that the names this header used before
 * (TRACECMD_MSG_MNGR_*) still mean the same.
 *
 * Apart from the suite runner (common/tc.h), includes no project header but
 * trace-cmd.h.
 */
#include <errno.h>
#include <stdbool.h>

#include <CUnit/CUnit.h>

#include "tc.h"
#include "trace-cmd.h"

/* The branch's manager-request names, used the way its listener dispatches. */
static const char *request_name(struct tracecmd_msg_handle *h)
{
	enum tracecmd_msg_mngr_type type = tracecmd_msg_read_manager(h);

	switch (type) {
	case TRACECMD_MSG_MNG_CONNECT:
		return "connect";
	case TRACECMD_MSG_MNG_GLIST:
		return "glist";
	case TRACECMD_MSG_MNG_ALIST:
		return "alist";
	case TRACECMD_MSG_MNG_TRACE:
		return "trace";
	case TRACECMD_MSG_MNG_ERR:
	default:
		return "error";
	}
}

/* The branch's declarations, as function-pointer types. */
struct branch_api {
	struct tracecmd_msg_handle *(*handle_alloc)(int, unsigned long);
	void (*handle_close)(struct tracecmd_msg_handle *);
	bool (*done)(struct tracecmd_msg_handle *);
	void (*set_done)(struct tracecmd_msg_handle *);
	int (*connect_to_server)(struct tracecmd_msg_handle *);
	int (*send_init_data)(struct tracecmd_msg_handle *, int **);
	int (*metadata_send)(struct tracecmd_msg_handle *, const char *, int);
	int (*finish_sending_metadata)(struct tracecmd_msg_handle *);
	void (*send_close_msg)(struct tracecmd_msg_handle *);
	int (*connect_to_socket)(char *);
	int (*set_connection)(struct tracecmd_msg_handle *, const char *);
	int (*initial_setting)(struct tracecmd_msg_handle *);
	int (*send_port_array)(struct tracecmd_msg_handle *, int *);
	int (*collect_metadata)(struct tracecmd_msg_handle *, int);
	enum tracecmd_msg_mngr_type (*read_manager)(struct tracecmd_msg_handle *);
	int (*get_connect)(struct tracecmd_msg_handle *, char **, char **, char ***);
	int (*send_cpus)(struct tracecmd_msg_handle *, int);
	int (*send_domain)(struct tracecmd_msg_handle *, char *, int);
	int (*get_domain)(struct tracecmd_msg_handle *, char **);
	int (*send_finish)(struct tracecmd_msg_handle *);
	int (*transfer_fd)(struct tracecmd_msg_handle *, int, int);
	int (*agent_connect)(struct tracecmd_msg_handle *, int);
	int (*agent_parameters)(struct tracecmd_msg_handle *, int, char **);
	int (*list_guests)(struct tracecmd_msg_handle *);
	int (*list_agents)(struct tracecmd_msg_handle *);
	int (*connect_guest)(struct tracecmd_msg_handle *, const char *, const char *,
			     int, char * const *);
	int (*connect_agent)(struct tracecmd_msg_handle *, const char *, int, int *);
	int (*get_fds)(struct tracecmd_msg_handle *, int, int *);
	void (*free_recorder)(struct tracecmd_recorder *);
	struct tracecmd_recorder *(*create_recorder)(const char *, int, unsigned);
	struct tracecmd_recorder *(*create_recorder_fd)(int, int, unsigned);
	struct tracecmd_recorder *(*create_recorder_maxkb)(const char *, int, unsigned, int);
	struct tracecmd_recorder *(*create_buffer_recorder_fd)(int, int, unsigned, const char *);
	struct tracecmd_recorder *(*create_buffer_recorder)(const char *, int, unsigned,
							     const char *);
	struct tracecmd_recorder *(*create_buffer_recorder_maxkb)(const char *, int, unsigned,
								   const char *, int);
	struct tracecmd_recorder *(*create_recorder_virt)(const char *, int, int);
	int (*start_recording)(struct tracecmd_recorder *, unsigned long);
	void (*stop_recording)(struct tracecmd_recorder *);
	long (*flush_recording)(struct tracecmd_recorder *);
	struct tracecmd_recorder *(*create_agent_recorder)(struct buffer_instance *, int,
							    unsigned);
};

static const struct branch_api api = {
	.handle_alloc = tracecmd_msg_handle_alloc,
	.handle_close = tracecmd_msg_handle_close,
	.done = tracecmd_msg_done,
	.set_done = tracecmd_msg_set_done,
	.connect_to_server = tracecmd_msg_connect_to_server,
	.send_init_data = tracecmd_msg_send_init_data,
	.metadata_send = tracecmd_msg_metadata_send,
	.finish_sending_metadata = tracecmd_msg_finish_sending_metadata,
	.send_close_msg = tracecmd_msg_send_close_msg,
	.connect_to_socket = tracecmd_connect_to_socket,
	.set_connection = tracecmd_msg_set_connection,
	.initial_setting = tracecmd_msg_initial_setting,
	.send_port_array = tracecmd_msg_send_port_array,
	.collect_metadata = tracecmd_msg_collect_metadata,
	.read_manager = tracecmd_msg_read_manager,
	.get_connect = tracecmd_msg_get_connect,
	.send_cpus = tracecmd_msg_send_cpus,
	.send_domain = tracecmd_msg_send_domain,
	.get_domain = tracecmd_msg_get_domain,
	.send_finish = tracecmd_msg_send_finish,
	.transfer_fd = tracecmd_msg_transfer_fd,
	.agent_connect = tracecmd_msg_agent_connect,
	.agent_parameters = tracecmd_msg_agent_parameters,
	.list_guests = tracecmd_msg_list_guests,
	.list_agents = tracecmd_msg_list_agents,
	.connect_guest = tracecmd_msg_connect_guest,
	.connect_agent = tracecmd_msg_connect_agent,
	.get_fds = tracecmd_msg_get_fds,
	.free_recorder = tracecmd_free_recorder,
	.create_recorder = tracecmd_create_recorder,
	.create_recorder_fd = tracecmd_create_recorder_fd,
	.create_recorder_maxkb = tracecmd_create_recorder_maxkb,
	.create_buffer_recorder_fd = tracecmd_create_buffer_recorder_fd,
	.create_buffer_recorder = tracecmd_create_buffer_recorder,
	.create_buffer_recorder_maxkb = tracecmd_create_buffer_recorder_maxkb,
	.create_recorder_virt = tracecmd_create_recorder_virt,
	.start_recording = tracecmd_start_recording,
	.stop_recording = tracecmd_stop_recording,
	.flush_recording = tracecmd_flush_recording,
	.create_agent_recorder = tracecmd_create_agent_recorder,
};

static void test_mng_values(void)
{
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNG_ERR, 0);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNG_CONNECT, 1);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNG_GLIST, 2);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNG_ALIST, 3);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNG_TRACE, 4);
}

static void test_former_names(void)
{
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNGR_ERR, TRACECMD_MSG_MNG_ERR);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNGR_CONNECT, TRACECMD_MSG_MNG_CONNECT);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNGR_GLIST, TRACECMD_MSG_MNG_GLIST);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNGR_ALIST, TRACECMD_MSG_MNG_ALIST);
	CU_ASSERT_EQUAL(TRACECMD_MSG_MNGR_TRACE, TRACECMD_MSG_MNG_TRACE);
}

static void test_flags_and_bits(void)
{
	enum tracecmd_msg_flags all = TRACECMD_MSG_FL_CLIENT | TRACECMD_MSG_FL_SERVER |
		TRACECMD_MSG_FL_USE_TCP | TRACECMD_MSG_FL_NETWORK | TRACECMD_MSG_FL_VIRT |
		TRACECMD_MSG_FL_MANAGER | TRACECMD_MSG_FL_AGENT;
	enum tracecmd_msg_bits last = TRACECMD_MSG_BIT_AGENT;

	CU_ASSERT_EQUAL(all, 0x7f);
	CU_ASSERT_EQUAL(1 << last, TRACECMD_MSG_FL_AGENT);
	CU_ASSERT_EQUAL(TRACECMD_MSG_BIT_CLIENT + TRACECMD_MSG_BIT_SERVER +
			TRACECMD_MSG_BIT_USE_TCP + TRACECMD_MSG_BIT_NETWORK +
			TRACECMD_MSG_BIT_VIRT + TRACECMD_MSG_BIT_MANAGER, 15);
	CU_ASSERT_EQUAL(TRACECMD_RECORD_NOSPLICE | TRACECMD_RECORD_SNAPSHOT |
			TRACECMD_RECORD_BLOCK, 7);
}

/* The handle fields and the global the branch's callers write directly. */
static void test_handle_fields_and_page_size(void)
{
	struct tracecmd_msg_handle *h = api.handle_alloc(-1, TRACECMD_MSG_FL_SERVER);
	unsigned int saved = page_size;

	CU_ASSERT_PTR_NOT_NULL_FATAL(h);
	h->version = 2;
	h->cpu_count = 4;
	h->pid = 0;
	h->flags |= TRACECMD_MSG_FL_USE_TCP;
	CU_ASSERT(h->flags & TRACECMD_MSG_FL_SERVER);
	CU_ASSERT(!api.done(h));
	api.set_done(h);
	CU_ASSERT(api.done(h));
	/* fd -1: the request cannot be read, which the dispatch names "error". */
	CU_ASSERT_STRING_EQUAL(request_name(h), "error");
	h->fd = -1;
	api.handle_close(h);
	page_size = 4096;
	CU_ASSERT_EQUAL(page_size, 4096);
	page_size = saved;
}

/* Calls through the branch-typed pointers reach the library's functions. */
static void test_calls_through_branch_types(void)
{
	api.stop_recording(NULL);
	api.free_recorder(NULL);
	CU_ASSERT_EQUAL(api.start_recording(NULL, 0), -EINVAL);
	CU_ASSERT_EQUAL(api.flush_recording(NULL), -EINVAL);
	errno = 0;
	CU_ASSERT_PTR_NULL(api.create_agent_recorder(NULL, 0, TRACECMD_RECORD_NOSPLICE));
	CU_ASSERT_EQUAL(errno, ENOSYS);
	CU_ASSERT_EQUAL(api.read_manager(NULL), TRACECMD_MSG_MNG_ERR);
	CU_ASSERT(!api.done(NULL));
}

int main(void)
{
	static const struct tc_test tests[] = {
		{ "TRACECMD_MSG_MNG_* values", test_mng_values },
		{ "TRACECMD_MSG_MNGR_* still mean the same", test_former_names },
		{ "flags, bits and recorder flags", test_flags_and_bits },
		{ "handle fields and page_size", test_handle_fields_and_page_size },
		{ "calls through the branch's function types", test_calls_through_branch_types },
		{ NULL, NULL },
	};

	return tc_run("branch names", tests);
}
