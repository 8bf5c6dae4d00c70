/* Test shim: AF_VSOCK stream sockets carried over TCP loopback, for hosts
 * without /dev/vhost-vsock or vsock loopback. Loaded with LD_PRELOAD.
 *
 * A vsock socket becomes an AF_INET socket; CID:PORT maps to
 * 127.0.0.1:PORT (VMADDR_PORT_ANY to an ephemeral port). Addresses handed
 * back are sockaddr_vm with the CID from the environment:
 *   VSOCK_SHIM_LOCAL_CID  what getsockname reports (default 2, the host)
 *   VSOCK_SHIM_PEER_CID   what getpeername/accept report (default 3)
 * Which fds are vsock is kept in a table set by socket()/accept() and
 * cleared by close(); an fd that is not in it passes through untouched.
 * Only stream sockets; fd passing, dup() and vsock ioctls are not covered. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define MAX_FD 65536
static unsigned char is_vsock[MAX_FD];

#define REAL(name) static __typeof__(name) *real_##name; \
	if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

/* vsock has no Nagle: without TCP_NODELAY, the header+payload pairs of the
 * clock-sync probes wait for delayed ACKs (40 ms each). */
static void mark(int fd, int on)
{
	REAL(setsockopt);

	if (fd < 0 || fd >= MAX_FD)
		return;
	is_vsock[fd] = on;
	if (on)
		real_setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
}

static int marked(int fd)
{
	return fd >= 0 && fd < MAX_FD && is_vsock[fd];
}

static unsigned int env_cid(const char *name, unsigned int dflt)
{
	const char *v = getenv(name);
	return v && *v ? (unsigned int)strtoul(v, NULL, 0) : dflt;
}

/* A sockaddr_in on loopback into a sockaddr_vm with CID `cid`. */
static void to_vm(const struct sockaddr_in *in, unsigned int cid,
		  struct sockaddr *out, socklen_t *len)
{
	struct sockaddr_vm vm;

	memset(&vm, 0, sizeof(vm));
	vm.svm_family = AF_VSOCK;
	vm.svm_cid = cid;
	vm.svm_port = ntohs(in->sin_port);
	if (out && len) {
		socklen_t n = *len < sizeof(vm) ? *len : sizeof(vm);
		memcpy(out, &vm, n);
		*len = sizeof(vm);
	}
}

static int from_vm(const struct sockaddr *addr, socklen_t len, struct sockaddr_in *in)
{
	const struct sockaddr_vm *vm = (const struct sockaddr_vm *)addr;

	if (!addr || len < sizeof(*vm) || vm->svm_family != AF_VSOCK)
		return -1;
	if (vm->svm_port != VMADDR_PORT_ANY && vm->svm_port > 65535)
		return -1;
	memset(in, 0, sizeof(*in));
	in->sin_family = AF_INET;
	in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	in->sin_port = vm->svm_port == VMADDR_PORT_ANY ? 0 : htons(vm->svm_port);
	return 0;
}

int socket(int domain, int type, int protocol)
{
	REAL(socket);
	int fd;

	if (domain != AF_VSOCK) {
		fd = real_socket(domain, type, protocol);
		mark(fd, 0);
		return fd;
	}
	fd = real_socket(AF_INET, type, 0);
	mark(fd, 1);
	return fd;
}

/* bind() or connect() with the vsock address turned into a loopback one. */
static int on_loopback(int fd, const struct sockaddr *addr, socklen_t len,
		       int (*real)(int, const struct sockaddr *, socklen_t))
{
	struct sockaddr_in in;

	if (!marked(fd))
		return real(fd, addr, len);
	if (from_vm(addr, len, &in)) {
		errno = EINVAL;
		return -1;
	}
	return real(fd, (struct sockaddr *)&in, sizeof(in));
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	REAL(bind);
	return on_loopback(fd, addr, len, real_bind);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	REAL(connect);
	return on_loopback(fd, addr, len, real_connect);
}

static int accepted(int lfd, int fd, struct sockaddr *addr, socklen_t *len)
{
	struct sockaddr_in in;
	socklen_t n = sizeof(in);

	if (fd < 0)
		return fd;
	mark(fd, marked(lfd));
	if (!marked(lfd) || !addr)
		return fd;
	if (getpeername(fd, (struct sockaddr *)&in, &n) == 0 && in.sin_family == AF_INET)
		to_vm(&in, env_cid("VSOCK_SHIM_PEER_CID", 3), addr, len);
	return fd;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	REAL(accept);
	int n;

	if (!marked(fd))
		return accepted(fd, real_accept(fd, addr, len), addr, len);
	n = real_accept(fd, NULL, NULL);
	return accepted(fd, n, addr, len);
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	REAL(accept4);
	int n;

	if (!marked(fd))
		return accepted(fd, real_accept4(fd, addr, len, flags), addr, len);
	n = real_accept4(fd, NULL, NULL, flags);
	return accepted(fd, n, addr, len);
}

static int name_of(int fd, struct sockaddr *addr, socklen_t *len, int peer)
{
	REAL(getsockname);
	REAL(getpeername);
	struct sockaddr_in in;
	socklen_t n = sizeof(in);
	int r;

	r = peer ? real_getpeername(fd, (struct sockaddr *)&in, &n)
		 : real_getsockname(fd, (struct sockaddr *)&in, &n);
	if (r)
		return r;
	to_vm(&in, peer ? env_cid("VSOCK_SHIM_PEER_CID", 3)
			: env_cid("VSOCK_SHIM_LOCAL_CID", 2), addr, len);
	return 0;
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	REAL(getsockname);

	if (!marked(fd))
		return real_getsockname(fd, addr, len);
	return name_of(fd, addr, len, 0);
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	REAL(getpeername);

	if (!marked(fd))
		return real_getpeername(fd, addr, len);
	return name_of(fd, addr, len, 1);
}

/* vsock-level options (buffer sizes, connect timeout) have no TCP meaning. */
int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	REAL(setsockopt);

	if (marked(fd) && level == AF_VSOCK)
		return 0;
	return real_setsockopt(fd, level, name, val, len);
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	REAL(getsockopt);

	if (marked(fd) && level == SOL_SOCKET && name == SO_DOMAIN && val && len && *len >= sizeof(int)) {
		*(int *)val = AF_VSOCK;
		*len = sizeof(int);
		return 0;
	}
	return real_getsockopt(fd, level, name, val, len);
}

int close(int fd)
{
	REAL(close);

	mark(fd, 0);
	return real_close(fd);
}
