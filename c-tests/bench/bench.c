/*
 * Recorder benchmark: tracecmd-rs (virt-server C ABI) against Debian's
 * libtracecmd 3.1.6, alternating A/B on the same event load.
 *
 * Not a test: it measures, it does not pass or fail.  See README.md.
 *
 * Both libraries export the same symbol names with different signatures, so
 * each is dlopen()ed with RTLD_LOCAL and called through its own typedefs.
 *
 * Load: one writer thread pinned to each CPU writes fixed-size markers into
 * the private instance's trace_marker at a target rate.  One recorder thread
 * per CPU records per_cpu/cpuN/trace_pipe_raw of that instance into a file.
 * Per run we measure output bytes, the recorders' CPU time (user+sys of the
 * whole process minus the load writers and the main thread, so that threads a
 * library runs itself count), events lost (per_cpu/cpuN/stats overrun +
 * dropped events) and the events found by parsing the recorded pages, which
 * must add up to the markers written.
 *
 * FIFO run: a writer pushes page-sized chunks into a FIFO that the virt
 * recorder of each library copies to a file: the pure copy cost.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CPUS 64
#define MAX_STEPS 32
#define MAX_ROUNDS 32
#define PRINT_EVENT_ID 5 /* ftrace/print: what trace_marker writes */

/* ---- the two ABIs ---------------------------------------------------- */

/* tracecmd-rs, virt-server signatures (spec §2.3) */
typedef void *(*vs_create_fd_t)(int fd, int cpu, unsigned flags, const char *buffer);
typedef void *(*vs_create_virt_t)(const char *file, int cpu, int trace_fd);
typedef int (*vs_start_t)(void *rec, unsigned long sleep);
typedef void (*vs_stop_t)(void *rec);
typedef long (*vs_flush_t)(void *rec); /* documents the ABI; unused */
typedef void (*vs_free_t)(void *rec);

/* Debian libtracecmd 3.1.6: the tracefs_cpu-based recorder of upstream
 * lib/trace-cmd/trace-recorder.c, checked against the disassembly of Debian's
 * libtracecmd.so.1 (flush tests its bool, virt passes four arguments on). */
typedef void *(*c_create_fd_t)(int fd, int cpu, unsigned flags, void *tracefs_instance);
typedef void *(*c_create_virt_t)(const char *file, int cpu, unsigned flags, int trace_fd);
typedef int (*c_start_t)(void *rec, unsigned long sleep);
typedef int (*c_stop_t)(void *rec);
typedef long (*c_flush_t)(void *rec, bool finish); /* documents the ABI; unused */
/* libtracefs 1.6 */
typedef void *(*tfs_instance_alloc_t)(const char *tracing_dir, const char *name);
typedef void (*tfs_instance_free_t)(void *instance);

/* The recorder symbols both libraries export, looked up by the same names.
 * flush is only checked for: tracecmd_start_recording flushes by itself. */
enum { F_CREATE_FD, F_CREATE_VIRT, F_START, F_STOP, F_FLUSH, F_FREE, NFN };
static const char *const fn_names[NFN] = {
	"tracecmd_create_buffer_recorder_fd", "tracecmd_create_recorder_virt",
	"tracecmd_start_recording", "tracecmd_stop_recording",
	"tracecmd_flush_recording", "tracecmd_free_recorder",
};

struct impl {
	const char *name;	/* "rust" or "c" */
	const char *path;
	bool is_c;		/* which set of typedefs applies */
	void *dl;
	void *fn[NFN];
	/* C library only: libtracefs, and the struct tracefs_instance * */
	tfs_instance_alloc_t inst_alloc;
	tfs_instance_free_t inst_free;
	void *instance;
};

/* ---- configuration ------------------------------------------------- */

static struct {
	const char *rust_lib;
	const char *c_lib;
	const char *outdir;
	double secs;
	int rounds;
	long rates[MAX_STEPS];
	int nsteps;
	int marker;
	int buffer_kb;
	int buffer_percent;
	int fifo_mib;
	unsigned long sleep_us;
	unsigned flags;
	bool pin_recorders;
	bool do_steps;
	bool do_fifo;
	bool verbose;
	bool only_c;
	bool only_rust;
} cfg = {
	.rust_lib = "../../build/lib/libtracecmd_rs.so",
	.c_lib = "libtracecmd.so.1",
	.outdir = "build/out",
	.secs = 1.5,
	.rounds = 8,
	.marker = 128,
	.buffer_kb = 1024,
	.buffer_percent = 50,
	.fifo_mib = 256,
	.sleep_us = 1000,
	.do_steps = true,
	.do_fifo = true,
};

static const long default_rates[] = { 50000,  100000, 200000, 300000, 400000,
				       500000, 600000, 700000, 800000, 0 };

static int ncpus;
static long page_size;
static char tracing_dir[256];
static char inst_name[64];
static char inst_dir[PATH_MAX];
static bool inst_made;
static bool in_child;
static volatile pid_t child_pid;
static volatile sig_atomic_t interrupted;

/* ---- small helpers ------------------------------------------------- */

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "bench: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	/* after the fork the parent removes the instance */
	if (inst_made && !in_child && rmdir(inst_dir) < 0)
		fprintf(stderr, "bench: could not remove %s: %s\n", inst_dir, strerror(errno));
	exit(1);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double tv_s(struct timeval tv)
{
	return tv.tv_sec + tv.tv_usec / 1e6;
}

/* CPU seconds of the calling thread, user+sys; its user part in *user */
static double thread_cpu_user_s(double *user)
{
	struct rusage ru;

	if (getrusage(RUSAGE_THREAD, &ru) < 0)
		return *user = 0;
	*user = tv_s(ru.ru_utime);
	return tv_s(ru.ru_utime) + tv_s(ru.ru_stime);
}

static double thread_cpu_s(void)
{
	double user;

	return thread_cpu_user_s(&user);
}

static double proc_cpu_s(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0;
	return tv_s(ru.ru_utime) + tv_s(ru.ru_stime);
}

/* machine-wide CPU time from /proc/stat: idle (idle+iowait) and total, in ticks */
static void machine_ticks(uint64_t *idle, uint64_t *total)
{
	unsigned long long v[10] = { 0 };
	FILE *f = fopen("/proc/stat", "r");
	int i;

	*idle = *total = 0;
	if (!f)
		return;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
		   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) >= 5) {
		for (i = 0; i < 8; i++)	/* guest times are already in user */
			*total += v[i];
		*idle = v[3] + v[4];
	}
	fclose(f);
}

static void inst_path(char *buf, size_t len, const char *file)
{
	if ((size_t)snprintf(buf, len, "%s/%s", inst_dir, file) >= len)
		die("path too long: %s/%s", inst_dir, file);
}

static void inst_write(const char *file, const char *val)
{
	char path[PATH_MAX];
	ssize_t n;
	int fd;

	inst_path(path, sizeof(path), file);
	fd = open(path, O_WRONLY | O_TRUNC);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	n = write(fd, val, strlen(val));
	if (n != (ssize_t)strlen(val))
		die("write '%s' to %s: %s", val, path, n < 0 ? strerror(errno) : "short write");
	close(fd);
}

/* Reads a small instance file into buf as a string; dies on failure. */
static void inst_read(const char *file, char *buf, size_t len)
{
	char path[PATH_MAX];
	ssize_t n;
	int fd;

	inst_path(path, sizeof(path), file);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	n = read(fd, buf, len - 1);
	close(fd);
	if (n <= 0)
		die("read %s: %s", path, n < 0 ? strerror(errno) : "empty");
	buf[n] = 0;
}

static void inst_expect_range(const char *file, long lo, long hi)
{
	char buf[64];
	long v;

	inst_read(file, buf, sizeof(buf));
	v = strtol(buf, NULL, 10);
	if (v < lo || v > hi)
		die("%s/%s reads %ld, expected %ld..%ld", inst_dir, file, v, lo, hi);
}

static void inst_expect(const char *file, long val)
{
	inst_expect_range(file, val, val);
}

/* overrun + dropped events of per_cpu/cpuN/stats */
static uint64_t cpu_lost(int cpu)
{
	char name[64], buf[1024];
	uint64_t lost = 0;
	char *line, *save;

	snprintf(name, sizeof(name), "per_cpu/cpu%d/stats", cpu);
	inst_read(name, buf, sizeof(buf));
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(line, "overrun:", 8))
			lost += strtoull(line + 8, NULL, 10);
		else if (!strncmp(line, "dropped events:", 15))
			lost += strtoull(line + 15, NULL, 10);
	}
	return lost;
}

static void pin_self(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
		die("cannot pin a thread to CPU %d", cpu);
}

static void remove_instance(void);

static void name_self(const char *what, int cpu)
{
	char name[16];

	snprintf(name, sizeof(name), "%s-%d", what, cpu);
	pthread_setname_np(pthread_self(), name);
}

static void on_nudge(int sig)
{
	(void)sig;
}

static void on_int(int sig)
{
	(void)sig;
	interrupted = 1;
}

/* parent: pass SIGINT/SIGTERM on; the child finishes its run and reports */
static void on_int_parent(int sig)
{
	if (child_pid > 0)
		kill(child_pid, sig);
}

/*
 * The benchmark runs in a child process; the parent only waits and then removes
 * the instance, so that even a crash inside a library (or a shared library
 * overwritten under the running process) leaves tracefs as found.  An instance
 * cannot be removed while files in it are open, so this must happen after the
 * child has gone.
 */
static int run_in_child(void)
{
	struct sigaction sa;
	int status;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		in_child = true;
		return -1;
	}
	child_pid = pid;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_int_parent;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			die("waitpid: %s", strerror(errno));
	}
	remove_instance();
	if (WIFSIGNALED(status)) {
		fprintf(stderr, "bench: benchmark process killed by signal %d (%s)\n",
			WTERMSIG(status), strsignal(WTERMSIG(status)));
		return 128 + WTERMSIG(status);
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

/* ---- libraries ------------------------------------------------------- */

static void *sym(struct impl *im, void *dl, const char *name)
{
	void *p;

	dlerror();
	p = dlsym(dl, name);
	if (!p)
		die("%s: symbol %s missing: %s", im->path, name, dlerror());
	return p;
}

static void load_impl(struct impl *im)
{
	void *tfs;
	int i;

	im->dl = dlopen(im->path, RTLD_LOCAL | RTLD_NOW);
	if (!im->dl)
		die("dlopen %s: %s", im->path, dlerror());
	for (i = 0; i < NFN; i++)
		im->fn[i] = sym(im, im->dl, fn_names[i]);
	if (!im->is_c)
		return;
	/* already loaded as a dependency of libtracecmd: the same object */
	tfs = dlopen("libtracefs.so.1", RTLD_LOCAL | RTLD_NOW);
	if (!tfs)
		die("dlopen libtracefs.so.1: %s", dlerror());
	im->inst_alloc = (tfs_instance_alloc_t)sym(im, tfs, "tracefs_instance_alloc");
	im->inst_free = (tfs_instance_free_t)sym(im, tfs, "tracefs_instance_free");
}

static void *rec_create_fd(struct impl *im, int fd, int cpu)
{
	if (im->is_c)
		return ((c_create_fd_t)im->fn[F_CREATE_FD])(fd, cpu, cfg.flags, im->instance);
	return ((vs_create_fd_t)im->fn[F_CREATE_FD])(fd, cpu, cfg.flags, inst_dir);
}

static void *rec_create_virt(struct impl *im, const char *file, int cpu, int trace_fd)
{
	if (im->is_c)
		return ((c_create_virt_t)im->fn[F_CREATE_VIRT])(file, cpu, cfg.flags, trace_fd);
	return ((vs_create_virt_t)im->fn[F_CREATE_VIRT])(file, cpu, trace_fd);
}

static int rec_start(struct impl *im, void *rec)
{
	if (im->is_c)
		return ((c_start_t)im->fn[F_START])(rec, cfg.sleep_us);
	return ((vs_start_t)im->fn[F_START])(rec, cfg.sleep_us);
}

static void rec_stop(struct impl *im, void *rec)
{
	if (im->is_c)
		((c_stop_t)im->fn[F_STOP])(rec);
	else
		((vs_stop_t)im->fn[F_STOP])(rec);
}

static void rec_free(struct impl *im, void *rec)
{
	/* same signature in both */
	((vs_free_t)im->fn[F_FREE])(rec);
}

/* ---- ring-buffer page parsing (spec trace-dat §, kernel ring_buffer.c) -- */

struct parsed {
	uint64_t bytes;
	uint64_t pages;
	uint64_t markers;	/* print events */
	uint64_t others;	/* data events of any other type */
	uint64_t bad_pages;	/* commit beyond the page or event overrunning it */
	uint64_t partial;	/* trailing bytes that are not a whole page */
};

static uint32_t rd32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

static void parse_page(const unsigned char *pg, struct parsed *ps)
{
	uint64_t commit;
	size_t off = 16, end;

	memcpy(&commit, pg + 8, 8);
	commit &= 0x3fffffffULL;	/* RB_MISSED_EVENTS / RB_MISSED_STORED */
	ps->pages++;
	if (commit > (uint64_t)page_size - 16) {
		ps->bad_pages++;
		return;
	}
	end = 16 + commit;
	while (off + 4 <= end) {
		uint32_t hdr = rd32(pg + off);
		uint32_t type_len = hdr & 31;
		size_t len;

		if (type_len == 29) {		/* padding */
			if ((hdr >> 5) == 0)
				break;		/* rest of the page */
			if (off + 8 > end)
				goto bad;
			len = 4 + (size_t)rd32(pg + off + 4);
		} else if (type_len >= 30) {	/* time extend / time stamp */
			len = 8;
		} else {
			size_t data;

			if (type_len == 0) {
				if (off + 8 > end)
					goto bad;
				len = 4 + (size_t)rd32(pg + off + 4);
				data = off + 8;
			} else {
				len = 4 + 4 * (size_t)type_len;
				data = off + 4;
			}
			if (len < 8 || off + len > end || data + 2 > end)
				goto bad;
			if ((pg[data] | pg[data + 1] << 8) == PRINT_EVENT_ID)
				ps->markers++;
			else
				ps->others++;
		}
		if (off + len > end)
			goto bad;
		off += len;
	}
	return;
bad:
	ps->bad_pages++;
}

static void parse_file(const char *path, struct parsed *ps)
{
	static unsigned char *buf;
	const size_t chunk = 1 << 20;
	size_t have = 0;
	ssize_t n;
	int fd;

	if (!buf && !(buf = malloc(chunk)))
		die("out of memory");
	fd = open(path, O_RDONLY);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	for (;;) {
		size_t off = 0;

		n = read(fd, buf + have, chunk - have);
		if (n < 0)
			die("read %s: %s", path, strerror(errno));
		have += n;
		ps->bytes += n;
		while (have - off >= (size_t)page_size) {
			parse_page(buf + off, ps);
			off += page_size;
		}
		memmove(buf, buf + off, have - off);
		have -= off;
		if (n == 0)
			break;
	}
	ps->partial += have;
	close(fd);
}

/* ---- one run of the marker load ------------------------------------ */

struct writer {
	pthread_t th;
	int cpu;
	int fd;
	long rate;
	uint64_t written;
	uint64_t failed;
	double cpu_s;
};

struct recorder {
	pthread_t th;
	struct impl *im;
	void *rec;
	int cpu;
	int ret;
	double cpu_s;
	double user_s;
	int nudges;
	volatile int done;
};

static volatile int writers_go, writers_stop;

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	char *msg = malloc(cfg.marker);
	double t0;

	if (!msg)
		die("out of memory");
	memset(msg, 'm', cfg.marker);
	name_self("writer", w->cpu);
	pin_self(w->cpu);
	w->cpu_s = thread_cpu_s();
	while (!__atomic_load_n(&writers_go, __ATOMIC_ACQUIRE))
		sched_yield();
	t0 = now_s();
	while (!__atomic_load_n(&writers_stop, __ATOMIC_RELAXED)) {
		long burst = 64;

		if (w->rate) {
			double due = (now_s() - t0) * w->rate;

			if ((double)w->written >= due) {
				double wait = ((double)w->written + 1 - due) / w->rate;
				struct timespec ts = { 0, (long)(wait * 1e9) };

				if (ts.tv_nsec > 1000000)
					ts.tv_nsec = 1000000;
				nanosleep(&ts, NULL);
				continue;
			}
			burst = (long)(due - w->written) + 1;
			if (burst > 256)
				burst = 256;
		}
		while (burst--) {
			if (write(w->fd, msg, cfg.marker) == cfg.marker)
				w->written++;
			else
				w->failed++;
		}
	}
	free(msg);
	w->cpu_s = thread_cpu_s() - w->cpu_s;
	return NULL;
}

static void *recorder_main(void *arg)
{
	struct recorder *r = arg;
	double c0, u0, u1;

	/* thread names let perf/top tell recorders and writers apart */
	name_self(r->im->is_c ? "rec-c" : "rec-rust", r->cpu);
	if (cfg.pin_recorders)
		pin_self(r->cpu);
	c0 = thread_cpu_user_s(&u0);
	r->ret = rec_start(r->im, r->rec);
	r->cpu_s = thread_cpu_user_s(&u1) - c0;
	r->user_s = u1 - u0;
	__atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* Stop a recorder thread: the library's stop, then SIGUSR1 nudges (no
 * SA_RESTART) for a blocked splice, as trace-cmd's signal handlers do. */
static double stop_recorder(struct recorder *r)
{
	double t0 = now_s();
	int nudges = 0;

	rec_stop(r->im, r->rec);
	for (;;) {
		struct timespec ts = { 0, 100000 };
		int i;

		for (i = 0; i < 20; i++) {
			if (__atomic_load_n(&r->done, __ATOMIC_ACQUIRE))
				goto done;
			nanosleep(&ts, NULL);
		}
		/* 2 ms without returning: interrupt whatever it is blocked in */
		pthread_kill(r->th, SIGUSR1);
		if (++nudges == 5000)
			die("%s recorder of CPU %d did not stop within 10 s", r->im->name, r->cpu);
	}
done:
	r->nudges = nudges;
	pthread_join(r->th, NULL);
	return now_s() - t0;
}

struct result {
	double wall;		/* writer phase */
	double cpu_s;		/* recorder threads + library threads, user+sys */
	double user_s;		/* the user part of it */
	double untracked_s;	/* process CPU outside writers, recorders, main */
	double writer_cpu_s;	/* marker writers, to see how the recorder slows them */
	double machine_busy;	/* share of all CPUs not idle during the writer phase */
	uint64_t written;
	uint64_t write_fail;
	uint64_t lost;
	struct parsed ps;
	double stop_s;		/* longest stop-to-return */
	int rec_err;
};

static void clear_buffer(void)
{
	inst_write("trace", "");
}

static void run_markers(struct impl *im, long rate, struct result *res)
{
	struct writer w[MAX_CPUS];
	struct recorder r[MAX_CPUS];
	uint64_t lost0[MAX_CPUS];
	char path[PATH_MAX], file[PATH_MAX];
	double t0, self0, main0, others = 0;
	uint64_t idle0, total0, idle1, total1;
	int cpu;

	memset(res, 0, sizeof(*res));
	memset(w, 0, sizeof(w));
	memset(r, 0, sizeof(r));
	clear_buffer();
	self0 = proc_cpu_s();
	main0 = thread_cpu_s();
	inst_path(path, sizeof(path), "trace_marker");
	for (cpu = 0; cpu < ncpus; cpu++) {
		int fd;

		lost0[cpu] = cpu_lost(cpu);
		snprintf(file, sizeof(file), "%s/%s.cpu%d", cfg.outdir, im->name, cpu);
		fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			die("create %s: %s", file, strerror(errno));
		r[cpu].im = im;
		r[cpu].cpu = cpu;
		r[cpu].rec = rec_create_fd(im, fd, cpu);
		if (!r[cpu].rec)
			die("%s: tracecmd_create_buffer_recorder_fd(cpu %d): %s", im->name, cpu,
			    strerror(errno));
		w[cpu].cpu = cpu;
		w[cpu].rate = rate;
		w[cpu].fd = open(path, O_WRONLY);
		if (w[cpu].fd < 0)
			die("open %s: %s", path, strerror(errno));
	}
	writers_go = 0;
	writers_stop = 0;
	for (cpu = 0; cpu < ncpus; cpu++) {
		if (pthread_create(&r[cpu].th, NULL, recorder_main, &r[cpu]))
			die("pthread_create failed");
		if (pthread_create(&w[cpu].th, NULL, writer_main, &w[cpu]))
			die("pthread_create failed");
	}
	/* let the recorders reach their first blocking read */
	usleep(20000);
	machine_ticks(&idle0, &total0);
	t0 = now_s();
	__atomic_store_n(&writers_go, 1, __ATOMIC_RELEASE);
	while (now_s() - t0 < cfg.secs && !interrupted)
		usleep(10000);
	__atomic_store_n(&writers_stop, 1, __ATOMIC_RELAXED);
	machine_ticks(&idle1, &total1);
	if (total1 > total0)
		res->machine_busy = 1.0 - (double)(idle1 - idle0) / (total1 - total0);
	for (cpu = 0; cpu < ncpus; cpu++) {
		pthread_join(w[cpu].th, NULL);
		close(w[cpu].fd);
		res->written += w[cpu].written;
		res->write_fail += w[cpu].failed;
		others += w[cpu].cpu_s;
		res->writer_cpu_s += w[cpu].cpu_s;
	}
	res->wall = now_s() - t0;
	for (cpu = 0; cpu < ncpus; cpu++) {
		double s = stop_recorder(&r[cpu]);

		if (s > res->stop_s)
			res->stop_s = s;
		res->cpu_s += r[cpu].cpu_s;
		res->user_s += r[cpu].user_s;
		if (r[cpu].ret < 0)
			res->rec_err++;
		rec_free(im, r[cpu].rec);
		res->lost += cpu_lost(cpu) - lost0[cpu];
	}
	others += thread_cpu_s() - main0;
	res->untracked_s = proc_cpu_s() - self0 - others - res->cpu_s;
	/* a library's own helper threads work for the recorder: count them */
	if (res->untracked_s > 0)
		res->cpu_s += res->untracked_s;
	for (cpu = 0; cpu < ncpus; cpu++) {
		snprintf(file, sizeof(file), "%s/%s.cpu%d", cfg.outdir, im->name, cpu);
		parse_file(file, &res->ps);
		unlink(file);
	}
}

/* ---- one FIFO run ----------------------------------------------------- */

struct fifo_writer {
	int fd;
	uint64_t bytes;
	uint64_t wrote;
	double cpu_s;
};

static void *fifo_writer_main(void *arg)
{
	struct fifo_writer *fw = arg;
	unsigned char *page = malloc(page_size);
	uint64_t seq = 0;

	if (!page)
		die("out of memory");
	memset(page, 0, page_size);
	name_self("fifo-writer", 0);
	fw->cpu_s = thread_cpu_s();
	while (fw->wrote < fw->bytes && !interrupted) {
		ssize_t n, off = 0;

		memcpy(page, &seq, sizeof(seq));
		seq++;
		while (off < page_size) {
			n = write(fw->fd, page + off, page_size - off);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				die("FIFO write: %s", strerror(errno));
			}
			off += n;
		}
		fw->wrote += page_size;
	}
	free(page);
	close(fw->fd);
	fw->cpu_s = thread_cpu_s() - fw->cpu_s;
	return NULL;
}

static void run_fifo(struct impl *im, struct result *res)
{
	char fifo[PATH_MAX], file[PATH_MAX];
	struct fifo_writer fw = { .bytes = (uint64_t)cfg.fifo_mib << 20 };
	struct recorder r = { .im = im, .cpu = 0 };
	pthread_t wth;
	int rfd, fl;
	double t0, self0, main0;

	memset(res, 0, sizeof(*res));
	self0 = proc_cpu_s();
	main0 = thread_cpu_s();
	snprintf(fifo, sizeof(fifo), "%s/fifo", cfg.outdir);
	snprintf(file, sizeof(file), "%s/%s.fifo", cfg.outdir, im->name);
	unlink(fifo);
	if (mkfifo(fifo, 0600) < 0)
		die("mkfifo %s: %s", fifo, strerror(errno));
	/* open the read end first without blocking, then make it blocking */
	rfd = open(fifo, O_RDONLY | O_NONBLOCK);
	if (rfd < 0)
		die("open %s: %s", fifo, strerror(errno));
	fw.fd = open(fifo, O_WRONLY);
	if (fw.fd < 0)
		die("open %s for writing: %s", fifo, strerror(errno));
	unlink(fifo);
	fl = fcntl(rfd, F_GETFL);
	fcntl(rfd, F_SETFL, fl & ~O_NONBLOCK);
	r.rec = rec_create_virt(im, file, 0, rfd);
	if (!r.rec)
		die("%s: tracecmd_create_recorder_virt: %s", im->name, strerror(errno));
	if (pthread_create(&r.th, NULL, recorder_main, &r))
		die("pthread_create failed");
	usleep(20000);
	t0 = now_s();
	if (pthread_create(&wth, NULL, fifo_writer_main, &fw))
		die("pthread_create failed");
	pthread_join(wth, NULL);
	res->written = fw.wrote;
	/* the recorder sees EOF: it drains what is left in the FIFO, then idles
	 * on 0-byte reads; stop it once its file has everything */
	for (;;) {
		struct stat st;

		if (stat(file, &st) == 0 && (uint64_t)st.st_size >= fw.wrote)
			break;
		if (__atomic_load_n(&r.done, __ATOMIC_ACQUIRE) || now_s() - t0 > 60)
			break;
		usleep(200);
	}
	res->wall = now_s() - t0;
	res->stop_s = stop_recorder(&r);
	res->cpu_s = r.cpu_s;
	res->user_s = r.user_s;
	res->rec_err = r.ret < 0;
	rec_free(im, r.rec);	/* closes rfd: the recorder owns trace_fd */
	res->untracked_s = proc_cpu_s() - self0 - (thread_cpu_s() - main0) - fw.cpu_s - r.cpu_s;
	if (res->untracked_s > 0)
		res->cpu_s += res->untracked_s;
	parse_file(file, &res->ps);
	unlink(file);
}

/* ---- reporting -------------------------------------------------------- */

struct agg {
	double wall, cpu_s, user_s, stop_max, untracked_s;
	double run_min, run_max;	/* per-run CPU-s/GiB spread */
	double runs[MAX_ROUNDS];	/* per-run CPU-s/GiB, for the median */
	int nruns;
	double busy;			/* sum of machine_busy */
	uint64_t written, lost, bytes, markers, others, bad, partial, fail, err;
	int n;
};

static void agg_add(struct agg *a, const struct result *r)
{
	a->wall += r->wall;
	a->cpu_s += r->cpu_s;
	a->user_s += r->user_s;
	a->busy += r->machine_busy;
	if (r->ps.bytes) {
		double g = r->cpu_s / (r->ps.bytes / 1073741824.0);

		if (!a->n || g < a->run_min)
			a->run_min = g;
		if (!a->n || g > a->run_max)
			a->run_max = g;
		if (a->nruns < MAX_ROUNDS)
			a->runs[a->nruns++] = g;
	}
	a->untracked_s += r->untracked_s;
	if (r->stop_s > a->stop_max)
		a->stop_max = r->stop_s;
	a->written += r->written;
	a->lost += r->lost;
	a->bytes += r->ps.bytes;
	a->markers += r->ps.markers;
	a->others += r->ps.others;
	a->bad += r->ps.bad_pages;
	a->partial += r->ps.partial;
	a->fail += r->write_fail;
	a->err += r->rec_err;
	a->n++;
}

static double mbps(const struct agg *a)
{
	return a->wall > 0 ? a->bytes / a->wall / 1e6 : 0;
}

static double cpu_per_gib(const struct agg *a)
{
	return a->bytes ? a->cpu_s / (a->bytes / 1073741824.0) : 0;
}

static int cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return (a > b) - (a < b);
}

/* Median of the single runs' CPU-s/GiB: one run disturbed by other work on the
 * machine moves it less than the pooled figure. */
static double cpu_median(const struct agg *a)
{
	double v[MAX_ROUNDS];

	if (!a->nruns)
		return 0;
	memcpy(v, a->runs, a->nruns * sizeof(v[0]));
	qsort(v, a->nruns, sizeof(v[0]), cmp_double);
	return a->nruns & 1 ? v[a->nruns / 2] : (v[a->nruns / 2 - 1] + v[a->nruns / 2]) / 2;
}

static void print_run(const char *what, struct impl *im, int round, const struct result *r)
{
	int64_t miss = (int64_t)r->written - (int64_t)r->ps.markers - (int64_t)r->lost;

	if (!cfg.verbose)
		return;
	printf("  %-10s %-4s #%d  wall %.2fs  written %" PRIu64 "  captured %" PRIu64
	       "  lost %" PRIu64 "  unaccounted %" PRId64 "  bytes %" PRIu64
	       "  cpu %.3fs (+%.3fs untracked)  writers %.2fs %.0fns/marker  machine busy %.0f%%"
	       "  stop %.1fms%s\n",
	       what, im->name, round, r->wall, r->written, r->ps.markers, r->lost, miss,
	       r->ps.bytes, r->cpu_s, r->untracked_s, r->writer_cpu_s,
	       r->written ? r->writer_cpu_s * 1e9 / r->written : 0, 100 * r->machine_busy,
	       r->stop_s * 1e3, r->rec_err ? "  RECORDER ERROR" : "");
}

static void print_header(void)
{
	printf("%-9s %-4s %11s %8s %10s %8s %11s %5s %10s %8s %6s %8s %5s %s\n", "rate/cpu",
	       "impl", "written/s", "MB/s", "CPU-s/GiB", "median", "runs", "usr%", "lost", "lost%", "unacc",
	       "stop-ms", "busy", "notes");
}

static void print_agg(const char *label, const char *impl, const struct agg *a)
{
	int64_t unacc = (int64_t)a->written - (int64_t)a->markers - (int64_t)a->lost;
	char notes[160] = "";
	size_t l = 0;

	if (a->bad)
		l += snprintf(notes + l, sizeof(notes) - l, "bad-pages=%" PRIu64 " ", a->bad);
	if (a->partial)
		l += snprintf(notes + l, sizeof(notes) - l, "not-whole-pages ");
	if (a->others)
		l += snprintf(notes + l, sizeof(notes) - l, "other-events=%" PRIu64 " ", a->others);
	if (a->fail)
		l += snprintf(notes + l, sizeof(notes) - l, "marker-write-fail=%" PRIu64 " ", a->fail);
	if (a->err)
		l += snprintf(notes + l, sizeof(notes) - l, "recorder-errors=%" PRIu64 " ", a->err);
	/* CPU burnt outside the recorder threads (helper threads of a library),
	 * already included in CPU-s/GiB */
	if (a->untracked_s > 0.05 + 0.1 * a->cpu_s)
		l += snprintf(notes + l, sizeof(notes) - l, "untracked-cpu=%.2fs ", a->untracked_s);
	printf("%-9s %-4s %11.0f %8.1f %10.3f %8.3f %5.2f-%-5.2f %4.0f%% %10" PRIu64 " %7.3f%% %6" PRId64
	       " %8.1f %4.0f%% %s\n",
	       label, impl, a->wall > 0 ? a->written / a->wall : 0, mbps(a), cpu_per_gib(a),
	       cpu_median(a), a->run_min, a->run_max, a->cpu_s > 0 ? 100 * a->user_s / a->cpu_s : 0, a->lost,
	       a->written ? 100.0 * a->lost / a->written : 0, unacc, a->stop_max * 1e3,
	       a->n ? 100 * a->busy / a->n : 0, notes);
}

static void print_ratio(const char *label, const struct agg *rs, const struct agg *c)
{
	double cr = cpu_per_gib(c) > 0 ? cpu_per_gib(rs) / cpu_per_gib(c) : 0;
	double mr = cpu_median(c) > 0 ? cpu_median(rs) / cpu_median(c) : 0;

	printf("%-9s %-4s  CPU-s/GiB Rust/C = %.2f (medians %.2f)   MB/s Rust/C = %.2f   lost "
	       "(summed over the rounds) Rust %" PRIu64 " vs C %" PRIu64 " (%+" PRId64 ")\n",
	       label, "=>", cr, mr, mbps(c) > 0 ? mbps(rs) / mbps(c) : 0, rs->lost, c->lost,
	       (int64_t)rs->lost - (int64_t)c->lost);
}

/* ---- setup --------------------------------------------------------- */

static void find_tracing_dir(void)
{
	static const char *const cands[] = { "/sys/kernel/tracing", "/sys/kernel/debug/tracing" };
	char p[PATH_MAX];
	size_t i;

	for (i = 0; i < sizeof(cands) / sizeof(cands[0]); i++) {
		snprintf(p, sizeof(p), "%s/instances", cands[i]);
		if (access(p, F_OK) == 0) {
			snprintf(tracing_dir, sizeof(tracing_dir), "%s", cands[i]);
			return;
		}
	}
	die("no tracefs found at /sys/kernel/tracing or /sys/kernel/debug/tracing "
	    "(mount -t tracefs nodev /sys/kernel/tracing, as root)");
}

static void make_instance(void)
{
	char v[32];

	snprintf(inst_name, sizeof(inst_name), "recbench-%d", (int)getpid());
	snprintf(inst_dir, sizeof(inst_dir), "%s/instances/%s", tracing_dir, inst_name);
	if (mkdir(inst_dir, 0755) < 0)
		die("mkdir %s: %s", inst_dir, strerror(errno));
	inst_made = true;
	snprintf(v, sizeof(v), "%d", cfg.buffer_kb);
	inst_write("buffer_size_kb", v);
	/* the kernel rounds the size to whole sub-buffers */
	inst_expect_range("buffer_size_kb", cfg.buffer_kb, cfg.buffer_kb + cfg.buffer_kb / 64 + 8);
	snprintf(v, sizeof(v), "%d", cfg.buffer_percent);
	inst_write("buffer_percent", v);
	inst_expect("buffer_percent", cfg.buffer_percent);
	inst_write("options/overwrite", "1");
	inst_write("tracing_on", "1");
	inst_expect("tracing_on", 1);
}

static void remove_instance(void)
{
	if (inst_made && rmdir(inst_dir) < 0)
		fprintf(stderr, "bench: could not remove %s: %s\n", inst_dir, strerror(errno));
	else if (inst_made && access(inst_dir, F_OK) == 0)
		fprintf(stderr, "bench: %s still exists after rmdir\n", inst_dir);
	inst_made = false;
}

static void usage(void)
{
	printf("usage: bench [options]\n"
	       "  -r LIB     tracecmd-rs shared library (default %s)\n"
	       "  -c LIB     Debian libtracecmd (default %s)\n"
	       "  -o DIR     directory for the recorded files (default %s)\n"
	       "  -t SECS    seconds of load per run (default %.1f)\n"
	       "  -n N       rounds per step, each runs both libraries, the order flipping\n"
	       "             every round, after one round not counted (default %d)\n"
	       "  -s LIST    marker rates per CPU per second, comma separated, 0 = as fast\n"
	       "             as the writers go (default 50000,100000,200000,300000,400000,\n             500000,600000,700000,800000,0)\n"
	       "  -m BYTES   marker size (default %d)\n"
	       "  -b KB      buffer_size_kb of the private instance (default %d)\n"
	       "  -p PCT     buffer_percent of the private instance (default %d)\n"
	       "  -f MIB     bytes pushed through the FIFO per run (default %d)\n"
	       "  -S USEC    sleep argument of tracecmd_start_recording (default %lu)\n"
	       "  -F FLAGS   recorder flags (1 = NOSPLICE; default 0)\n"
	       "  -P         pin each recorder thread to its CPU\n"
	       "  -x WHAT    only 'steps' or only 'fifo'\n"
	       "  -1 IMPL    only 'rust' or only 'c' (no ratios)\n"
	       "  -v         print every run\n",
	       cfg.rust_lib, cfg.c_lib, cfg.outdir, cfg.secs, cfg.rounds, cfg.marker,
	       cfg.buffer_kb, cfg.buffer_percent, cfg.fifo_mib, cfg.sleep_us);
}

static void parse_rates(const char *s)
{
	char *copy = strdup(s), *tok, *save, *end;

	cfg.nsteps = 0;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (cfg.nsteps == MAX_STEPS)
			die("at most %d rates", MAX_STEPS);
		cfg.rates[cfg.nsteps] = strtol(tok, &end, 10);
		if (*end || cfg.rates[cfg.nsteps] < 0)
			die("bad rate '%s'", tok);
		cfg.nsteps++;
	}
	free(copy);
	if (!cfg.nsteps)
		die("no rates given");
}

static long arg_long(const char *s, long min, long max, const char *what)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*end || v < min || v > max)
		die("%s must be a number from %ld to %ld, got '%s'", what, min, max, s);
	return v;
}

int main(int argc, char **argv)
{
	struct impl rust = { .name = "rust", .is_c = false };
	struct impl c = { .name = "c", .is_c = true };
	struct impl *order[2];
	struct sigaction sa;
	int nimpl = 0, opt, step, round, i;
	char *end;

	for (i = 0; i < (int)(sizeof(default_rates) / sizeof(default_rates[0])); i++)
		cfg.rates[i] = default_rates[i];
	cfg.nsteps = i;
	while ((opt = getopt(argc, argv, "r:c:o:t:n:s:m:b:p:f:S:F:Px:1:vh")) != -1) {
		switch (opt) {
		case 'r': cfg.rust_lib = optarg; break;
		case 'c': cfg.c_lib = optarg; break;
		case 'o': cfg.outdir = optarg; break;
		case 't':
			cfg.secs = strtod(optarg, &end);
			if (*end || cfg.secs <= 0 || cfg.secs > 600)
				die("-t takes seconds (0 < t <= 600)");
			break;
		case 'n': cfg.rounds = arg_long(optarg, 1, MAX_ROUNDS, "-n"); break;
		case 's': parse_rates(optarg); break;
		case 'm': cfg.marker = arg_long(optarg, 1, 4000, "-m"); break;
		case 'b': cfg.buffer_kb = arg_long(optarg, 8, 1 << 20, "-b"); break;
		case 'p': cfg.buffer_percent = arg_long(optarg, 0, 100, "-p"); break;
		case 'f': cfg.fifo_mib = arg_long(optarg, 1, 1 << 16, "-f"); break;
		case 'S': cfg.sleep_us = arg_long(optarg, 0, 10000000, "-S"); break;
		case 'F': cfg.flags = arg_long(optarg, 0, 7, "-F"); break;
		case 'P': cfg.pin_recorders = true; break;
		case 'x':
			cfg.do_steps = !strcmp(optarg, "steps");
			cfg.do_fifo = !strcmp(optarg, "fifo");
			if (!cfg.do_steps && !cfg.do_fifo)
				die("-x takes 'steps' or 'fifo'");
			break;
		case '1':
			cfg.only_rust = !strcmp(optarg, "rust");
			cfg.only_c = !strcmp(optarg, "c");
			if (!cfg.only_rust && !cfg.only_c)
				die("-1 takes 'rust' or 'c'");
			break;
		case 'v': cfg.verbose = true; break;
		case 'h': usage(); return 0;
		default: usage(); return 2;
		}
	}
	if (geteuid() != 0)
		die("needs root: it creates a tracefs instance and reads trace_pipe_raw");

	page_size = sysconf(_SC_PAGESIZE);
	ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (ncpus < 1 || ncpus > MAX_CPUS)
		die("unsupported CPU count %d", ncpus);
	if (mkdir(cfg.outdir, 0755) < 0 && errno != EEXIST)
		die("mkdir %s: %s", cfg.outdir, strerror(errno));

	find_tracing_dir();
	make_instance();
	i = run_in_child();
	if (i >= 0)
		return i;

	rust.path = cfg.rust_lib;
	c.path = cfg.c_lib;
	if (!cfg.only_c) {
		load_impl(&rust);
		order[nimpl++] = &rust;
	}
	if (!cfg.only_rust) {
		load_impl(&c);
		order[nimpl++] = &c;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_nudge;	/* no SA_RESTART: interrupts a blocked splice */
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_int;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	if (!cfg.only_rust) {
		c.instance = c.inst_alloc(tracing_dir, inst_name);
		if (!c.instance)
			die("tracefs_instance_alloc(%s): %s", inst_name, strerror(errno));
	}

	printf("recorder benchmark: %d CPUs, page %ld, instance %s (buffer_size_kb %d, "
	       "buffer_percent %d, overwrite 1)\n",
	       ncpus, page_size, inst_dir, cfg.buffer_kb, cfg.buffer_percent);
	printf("rust = %s\nc    = %s\noutput dir %s, %.1f s per run, %d rounds (A/B "
	       "alternating), marker %d bytes, sleep %lu us, flags %u%s\n",
	       cfg.only_c ? "-" : cfg.rust_lib, cfg.only_rust ? "-" : cfg.c_lib, cfg.outdir,
	       cfg.secs, cfg.rounds, cfg.marker, cfg.sleep_us, cfg.flags,
	       cfg.pin_recorders ? ", recorders pinned" : "");
	printf("lost = overrun + dropped events (per_cpu stats); unacc = written - captured - "
	       "lost (should be 0);\nCPU-s/GiB = all rounds pooled; median = of the single "
	       "runs; runs = their min-max;\nusr%% = user share of the recorder CPU;\nbusy = all CPUs of the machine busy during the load (other "
	       "work on the machine shows here)\n\n");

	if (cfg.do_steps) {
		bool c_lost_seen = false;

		print_header();
		for (step = 0; step < cfg.nsteps && !interrupted; step++) {
			struct agg a[2];
			char label[32];

			memset(a, 0, sizeof(a));
			if (cfg.rates[step])
				snprintf(label, sizeof(label), "%ld", cfg.rates[step]);
			else
				snprintf(label, sizeof(label), "max");
			/* Round -1 warms up (instance, page cache, files) and is not
			 * counted; the order flips every round (ABBA), so that neither
			 * library always runs right after the other. */
			for (round = -1; round < cfg.rounds && !interrupted; round++) {
				int k;

				for (k = 0; k < nimpl && !interrupted; k++) {
					struct result res;

					i = (round & 1) ? nimpl - 1 - k : k;
					run_markers(order[i], cfg.rates[step], &res);
					if (round < 0)
						continue;
					print_run(label, order[i], round, &res);
					agg_add(&a[i], &res);
				}
			}
			for (i = 0; i < nimpl; i++)
				print_agg(label, order[i]->name, &a[i]);
			if (nimpl == 2) {
				print_ratio(label, &a[0], &a[1]);
				if (a[1].lost && !c_lost_seen) {
					c_lost_seen = true;
					printf("%-9s     (first step where the C recorder loses events)\n",
					       "");
				}
			}
			fflush(stdout);
		}
		printf("\n");
	}

	if (cfg.do_fifo && !interrupted) {
		struct agg a[2];

		memset(a, 0, sizeof(a));
		printf("FIFO source: %d MiB of page-sized writes per run through "
		       "tracecmd_create_recorder_virt\n",
		       cfg.fifo_mib);
		printf("%-9s %-4s %8s %10s %11s %5s %12s %8s %s\n", "", "impl", "MB/s",
		       "CPU-s/GiB", "runs", "usr%", "bytes-out", "stop-ms", "notes");
		for (round = 0; round < cfg.rounds && !interrupted; round++) {
			for (i = 0; i < nimpl && !interrupted; i++) {
				struct result res;

				run_fifo(order[i], &res);
				if (cfg.verbose)
					printf("  fifo       %-4s #%d  wall %.2fs  in %" PRIu64
					       "  out %" PRIu64 "  cpu %.3fs  stop %.1fms\n",
					       order[i]->name, round, res.wall, res.written,
					       res.ps.bytes, res.cpu_s, res.stop_s * 1e3);
				agg_add(&a[i], &res);
			}
		}
		for (i = 0; i < nimpl; i++)
			printf("%-9s %-4s %8.1f %10.3f %5.2f-%-5.2f %4.0f%% %12" PRIu64
			       " %8.1f %s%s%s\n",
			       "fifo", order[i]->name, mbps(&a[i]), cpu_per_gib(&a[i]),
			       a[i].run_min, a[i].run_max,
			       a[i].cpu_s > 0 ? 100 * a[i].user_s / a[i].cpu_s : 0, a[i].bytes,
			       a[i].stop_max * 1e3,
			       a[i].bytes != a[i].written ? "OUTPUT != INPUT " : "",
			       a[i].err ? "RECORDER ERROR " : "",
			       a[i].untracked_s > 0.05 + 0.1 * a[i].cpu_s ? "untracked-cpu " : "");
		if (nimpl == 2)
			printf("%-9s %-4s  CPU-s/GiB Rust/C = %.2f   MB/s Rust/C = %.2f\n", "fifo",
			       "=>", cpu_per_gib(&a[1]) > 0 ? cpu_per_gib(&a[0]) / cpu_per_gib(&a[1]) : 0,
			       mbps(&a[1]) > 0 ? mbps(&a[0]) / mbps(&a[1]) : 0);
	}

	if (!cfg.only_rust)
		c.inst_free(c.instance);
	/* the parent removes the instance */
	return interrupted ? 130 : 0;
}
