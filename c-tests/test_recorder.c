/*
 * The recorder through the C ABI, against the real kernel (needs root and tracefs):
 * markers per pinned CPU in whole ring-buffer pages, max-kb bounds, stop from a SIGINT
 * handler within 100 ms, virt FIFO splice == NOSPLICE, stop before start, NULL
 * safety, the agent-recorder stub.
 */
#define _GNU_SOURCE
#include <CUnit/Basic.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "trace-cmd.h"

#define PAGE 4096
#define HDR 16
#define COMMIT_FLAGS ((1ULL << 31) | (1ULL << 30))
#define NR_MARKERS 2000
#define MAX_CPUS 64

static char tracing[256];
static char inst[512];
static char tmpdir[256];
static int ncpus;

/* ---- helpers ---- */

static void die(const char *what)
{
	fprintf(stderr, "test_recorder: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void write_file(const char *dir, const char *name, const char *val)
{
	char path[1024];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_TRUNC);
	if (fd < 0 || write(fd, val, strlen(val)) != (ssize_t)strlen(val))
		die(path);
	close(fd);
}

static unsigned char *slurp(const char *path, size_t *len)
{
	struct stat st;
	unsigned char *buf;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) < 0)
		return NULL;
	buf = malloc(st.st_size + 1);
	*len = 0;
	while (buf && *len < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + *len, st.st_size - *len);
		if (r <= 0)
			break;
		*len += r;
	}
	close(fd);
	return buf;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void out_path(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", tmpdir, name);
}

/* Parses every page; returns the page count or -1 (with a message) if one is bad. */
static int check_pages(const unsigned char *data, size_t len, uint64_t *ts_out)
{
	size_t i;

	if (len % PAGE) {
		fprintf(stderr, "output of %zu bytes is not whole pages\n", len);
		return -1;
	}
	for (i = 0; i < len / PAGE; i++) {
		uint64_t ts, commit;

		memcpy(&ts, data + i * PAGE, 8);
		memcpy(&commit, data + i * PAGE + 8, 8);
		commit &= ~COMMIT_FLAGS;
		if (commit > PAGE - HDR) {
			fprintf(stderr, "page %zu: commit %#llx beyond the page\n", i,
				(unsigned long long)commit);
			return -1;
		}
		if (ts_out)
			ts_out[i] = ts;
	}
	return len / PAGE;
}

/* Marks seen[i] for every marker "tcrsc-<tag>-cpu<cpu>-<i>" inside committed data. */
static void find_markers(const unsigned char *data, size_t len, const char *tag, int cpu,
			 char *seen, int n)
{
	char prefix[64];
	size_t plen, p;

	plen = snprintf(prefix, sizeof(prefix), "tcrsc-%s-cpu%d-", tag, cpu);
	for (p = 0; p + PAGE <= len; p += PAGE) {
		uint64_t commit;
		const unsigned char *d = data + p + HDR, *end, *hit;

		memcpy(&commit, data + p + 8, 8);
		commit &= ~COMMIT_FLAGS;
		end = d + commit;
		while (d < end && (hit = memmem(d, end - d, prefix, plen))) {
			int idx = 0;
			const unsigned char *q = hit + plen;

			while (q < end && *q >= '0' && *q <= '9')
				idx = idx * 10 + (*q++ - '0');
			if (q - (hit + plen) == 6 && idx < n)
				seen[idx] = 1;
			d = hit + plen;
		}
	}
}

struct writer {
	int cpu;
	int count;
	const char *tag;
};

static void *write_markers(void *arg)
{
	struct writer *w = arg;
	char path[1024], msg[64];
	cpu_set_t set;
	int fd, i;

	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
		die("pin marker writer");
	snprintf(path, sizeof(path), "%s/trace_marker", inst);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		die(path);
	for (i = 0; i < w->count; i++) {
		int n = snprintf(msg, sizeof(msg), "tcrsc-%s-cpu%d-%06d", w->tag, w->cpu, i);
		if (write(fd, msg, n) != n)
			die("write trace_marker");
	}
	close(fd);
	return NULL;
}

struct runner {
	struct tracecmd_recorder *rec;
	unsigned long sleep;
	int ret;
	double done;
};

static void *run_recorder(void *arg)
{
	struct runner *r = arg;

	r->ret = tracecmd_start_recording(r->rec, r->sleep);
	r->done = now();
	return NULL;
}

static void run_writers(const char *tag, int count, int only_cpu)
{
	pthread_t th[MAX_CPUS];
	struct writer w[MAX_CPUS];
	int c;

	for (c = 0; c < ncpus; c++) {
		w[c] = (struct writer){ .cpu = c, .count = count, .tag = tag };
		if (only_cpu >= 0 && c != only_cpu)
			continue;
		pthread_create(&th[c], NULL, write_markers, &w[c]);
	}
	for (c = 0; c < ncpus; c++)
		if (only_cpu < 0 || c == only_cpu)
			pthread_join(th[c], NULL);
}

/* ---- tests ---- */

static void test_markers_per_cpu(unsigned flags, const char *tag)
{
	struct tracecmd_recorder *rec[MAX_CPUS];
	struct runner run[MAX_CPUS];
	pthread_t th[MAX_CPUS];
	char file[512];
	int c;

	for (c = 0; c < ncpus; c++) {
		char name[64];

		snprintf(name, sizeof(name), "%s.cpu%d", tag, c);
		out_path(file, sizeof(file), name);
		rec[c] = tracecmd_create_buffer_recorder(file, c, flags, inst);
		CU_ASSERT_PTR_NOT_NULL_FATAL(rec[c]);
		run[c] = (struct runner){ .rec = rec[c], .sleep = 1000 };
		pthread_create(&th[c], NULL, run_recorder, &run[c]);
	}
	run_writers(tag, NR_MARKERS, -1);
	for (c = 0; c < ncpus; c++)
		tracecmd_stop_recording(rec[c]);
	for (c = 0; c < ncpus; c++) {
		char name[64], seen[NR_MARKERS] = { 0 };
		unsigned char *data;
		size_t len;
		int i, missing = 0;

		pthread_join(th[c], NULL);
		CU_ASSERT_EQUAL(run[c].ret, 0);
		tracecmd_free_recorder(rec[c]);
		snprintf(name, sizeof(name), "%s.cpu%d", tag, c);
		out_path(file, sizeof(file), name);
		data = slurp(file, &len);
		CU_ASSERT_PTR_NOT_NULL_FATAL(data);
		CU_ASSERT(check_pages(data, len, NULL) > 0);
		find_markers(data, len, tag, c, seen, NR_MARKERS);
		for (i = 0; i < NR_MARKERS; i++)
			missing += !seen[i];
		if (missing)
			fprintf(stderr, "CPU %d: %d of %d markers missing\n", c, missing,
				NR_MARKERS);
		CU_ASSERT_EQUAL(missing, 0);
		/* no marker of another CPU in this CPU's data */
		for (i = 0; i < ncpus; i++) {
			char other[NR_MARKERS] = { 0 };
			int j, n = 0;

			if (i == c)
				continue;
			find_markers(data, len, tag, i, other, NR_MARKERS);
			for (j = 0; j < NR_MARKERS; j++)
				n += other[j];
			CU_ASSERT_EQUAL(n, 0);
		}
		free(data);
		unlink(file);
	}
}

static void test_markers_splice(void)
{
	test_markers_per_cpu(0, "splice");
}

static void test_markers_nosplice(void)
{
	test_markers_per_cpu(TRACECMD_RECORD_NOSPLICE, "nosplice");
}

static void test_maxkb_bounds(void)
{
	struct tracecmd_recorder *rec;
	struct runner run;
	pthread_t th;
	char file[512], file1[600];
	unsigned char *data;
	uint64_t ts[64];
	size_t len;
	int pages, i;
	const int maxkb = 64, half = maxkb / 4 / 2;

	out_path(file, sizeof(file), "maxkb");
	snprintf(file1, sizeof(file1), "%s.1", file);
	rec = tracecmd_create_buffer_recorder_maxkb(file, 0, 0, inst, maxkb);
	CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
	CU_ASSERT_EQUAL(access(file1, F_OK), -1);
	run = (struct runner){ .rec = rec, .sleep = 1000 };
	pthread_create(&th, NULL, run_recorder, &run);
	run_writers("maxkb", 20000, 0);
	tracecmd_stop_recording(rec);
	pthread_join(th, NULL);
	CU_ASSERT_EQUAL(run.ret, 0);
	tracecmd_free_recorder(rec);
	data = slurp(file, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(data);
	CU_ASSERT_FATAL(len <= sizeof(ts) / sizeof(ts[0]) * PAGE);
	pages = check_pages(data, len, ts);
	if (pages < half || pages > 2 * half)
		fprintf(stderr, "maxkb: %d pages kept, want %d..%d\n", pages, half, 2 * half);
	CU_ASSERT(pages >= half && pages <= 2 * half);
	for (i = 1; i < pages; i++)
		CU_ASSERT(ts[i - 1] <= ts[i]);
	free(data);
	unlink(file);
}

static struct tracecmd_recorder *sig_rec;

static void on_sigint(int sig)
{
	(void)sig;
	tracecmd_stop_recording(sig_rec);
}

static void test_sigint_stop(void)
{
	struct sigaction sa = { .sa_handler = on_sigint }, old;
	struct runner run;
	pthread_t th;
	char file[512];
	double sent;

	out_path(file, sizeof(file), "sigint");
	sig_rec = tracecmd_create_buffer_recorder(file, 0, 0, inst);
	CU_ASSERT_PTR_NOT_NULL_FATAL(sig_rec);
	/* SA_RESTART as glibc's signal() sets it: the stop must still get through. */
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old);
	/* A long sleep value must not delay the stop. */
	run = (struct runner){ .rec = sig_rec, .sleep = 5000000 };
	pthread_create(&th, NULL, run_recorder, &run);
	usleep(150000);
	run_writers("sigint", 10, 0);
	sent = now();
	pthread_kill(th, SIGINT);
	{
		struct timespec limit;

		clock_gettime(CLOCK_REALTIME, &limit);
		limit.tv_sec += 2;
		if (pthread_timedjoin_np(th, NULL, &limit)) {
			CU_FAIL("SIGINT did not stop tracecmd_start_recording within 2 s");
			tracecmd_stop_recording(sig_rec);
			pthread_join(th, NULL);
		}
	}
	sigaction(SIGINT, &old, NULL);
	CU_ASSERT_EQUAL(run.ret, 0);
	if (run.done - sent >= 0.1)
		fprintf(stderr, "start_recording returned %.0f ms after SIGINT\n",
			(run.done - sent) * 1000);
	CU_ASSERT(run.done - sent < 0.1);
	tracecmd_free_recorder(sig_rec);
	sig_rec = NULL;
	unlink(file);
}

struct fifo_writer {
	const char *path;
	const unsigned char *data;
	size_t len;
};

static void *feed_fifo(void *arg)
{
	struct fifo_writer *f = arg;
	size_t off = 0, chunk = 1;
	int fd = open(f->path, O_WRONLY);

	if (fd < 0)
		die(f->path);
	while (off < f->len) {
		ssize_t w;

		chunk = chunk * 7 % 9001 + 1; /* odd sizes */
		if (chunk > f->len - off)
			chunk = f->len - off;
		w = write(fd, f->data + off, chunk);
		if (w < 0)
			die("write fifo");
		off += w;
	}
	close(fd);
	return NULL;
}

/* Records `data` pushed through a FIFO; virt = tracecmd_create_recorder_virt (splice),
 * else a NOSPLICE buffer recorder whose "trace_pipe_raw" is the FIFO. */
static unsigned char *record_fifo(int virt, const unsigned char *data, size_t len,
				  size_t *out_len)
{
	char dir[512], fifo[600], file[512];
	struct tracecmd_recorder *rec;
	struct fifo_writer fw;
	struct runner run;
	pthread_t th, wt;
	unsigned char *out;

	snprintf(dir, sizeof(dir), "%s/fake%d", tmpdir, virt);
	mkdir(dir, 0755);
	snprintf(fifo, sizeof(fifo), "%s/per_cpu", dir);
	mkdir(fifo, 0755);
	snprintf(fifo, sizeof(fifo), "%s/per_cpu/cpu0", dir);
	mkdir(fifo, 0755);
	snprintf(fifo, sizeof(fifo), "%s/per_cpu/cpu0/trace_pipe_raw", dir);
	unlink(fifo);
	if (mkfifo(fifo, 0600))
		die("mkfifo");
	out_path(file, sizeof(file), virt ? "virt.out" : "nosplice.out");
	if (virt) {
		int fd = open(fifo, O_RDONLY | O_NONBLOCK);

		if (fd < 0)
			die("open fifo");
		rec = tracecmd_create_recorder_virt(file, 0, fd);
	} else {
		rec = tracecmd_create_buffer_recorder(file, 0, TRACECMD_RECORD_NOSPLICE, dir);
	}
	if (!rec)
		return NULL;
	run = (struct runner){ .rec = rec, .sleep = 1000 };
	pthread_create(&th, NULL, run_recorder, &run);
	fw = (struct fifo_writer){ .path = fifo, .data = data, .len = len };
	pthread_create(&wt, NULL, feed_fifo, &fw);
	pthread_join(wt, NULL);
	tracecmd_stop_recording(rec);
	pthread_join(th, NULL);
	CU_ASSERT_EQUAL(run.ret, 0);
	tracecmd_free_recorder(rec);
	out = slurp(file, out_len);
	unlink(file);
	unlink(fifo);
	return out;
}

static void test_virt_fifo_splice_equals_nosplice(void)
{
	size_t len = 300 * 1024 + 123, a_len, b_len, i;
	unsigned char *data = malloc(len), *a, *b;
	uint64_t x = 0x9e3779b97f4a7c15ULL;

	for (i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		data[i] = x;
	}
	a = record_fifo(1, data, len, &a_len);
	b = record_fifo(0, data, len, &b_len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	/* everything, in order, padded with zeros to a whole page */
	CU_ASSERT_EQUAL(a_len, (len + PAGE - 1) / PAGE * PAGE);
	CU_ASSERT_EQUAL(a_len, b_len);
	CU_ASSERT(a_len >= len && memcmp(a, data, len) == 0);
	CU_ASSERT(a_len == b_len && memcmp(a, b, a_len) == 0);
	for (i = len; i < a_len; i++)
		CU_ASSERT_EQUAL_FATAL(a[i], 0);
	free(a);
	free(b);
	free(data);
}

static void test_stop_before_start(void)
{
	struct tracecmd_recorder *rec;
	char file[512];
	double t0;

	out_path(file, sizeof(file), "early");
	rec = tracecmd_create_buffer_recorder(file, 0, 0, inst);
	CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
	tracecmd_stop_recording(rec);
	t0 = now();
	CU_ASSERT_EQUAL(tracecmd_start_recording(rec, 5000000), 0);
	CU_ASSERT(now() - t0 < 1.0);
	CU_ASSERT(tracecmd_flush_recording(rec) >= 0);
	tracecmd_free_recorder(rec);
	unlink(file);
}

static void test_null_and_errors(void)
{
	char file[512];

	tracecmd_stop_recording(NULL);
	tracecmd_free_recorder(NULL);
	CU_ASSERT_EQUAL(tracecmd_start_recording(NULL, 0), -EINVAL);
	CU_ASSERT(tracecmd_flush_recording(NULL) < 0);

	errno = 0;
	CU_ASSERT_PTR_NULL(tracecmd_create_buffer_recorder(NULL, 0, 0, inst));
	CU_ASSERT_EQUAL(errno, EINVAL);

	out_path(file, sizeof(file), "nobuffer");
	errno = 0;
	CU_ASSERT_PTR_NULL(tracecmd_create_buffer_recorder(file, 0, 0, "/nonexistent/tracing"));
	CU_ASSERT_EQUAL(errno, ENOENT);
	CU_ASSERT_EQUAL(access(file, F_OK), -1); /* removed again */

	errno = 0;
	CU_ASSERT_PTR_NULL(tracecmd_create_buffer_recorder(file, -1, 0, inst));
	CU_ASSERT_EQUAL(errno, EINVAL);

	errno = 0;
	CU_ASSERT_PTR_NULL(tracecmd_create_buffer_recorder_fd(-1, 0, 0, inst));
	CU_ASSERT_EQUAL(errno, EBADF);

	errno = 0;
	CU_ASSERT_PTR_NULL(tracecmd_create_recorder_virt(file, 0, -1));
	CU_ASSERT_EQUAL(errno, EBADF);
	unlink(file);
}

static void test_agent_recorder_is_enosys(void)
{
	errno = 0;
	CU_ASSERT_PTR_NULL(tracecmd_create_agent_recorder(NULL, 0, 0));
	CU_ASSERT_EQUAL(errno, ENOSYS);
}

/* The top-level constructors find the tracing dir themselves. */
static void test_top_level_fd_recorder(void)
{
	char file[512];
	struct tracecmd_recorder *rec;
	int fd;

	out_path(file, sizeof(file), "top");
	fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CU_ASSERT_FATAL(fd >= 0);
	rec = tracecmd_create_recorder_fd(fd, 0, TRACECMD_RECORD_SNAPSHOT);
	if (!rec) /* no snapshot support: the plain pipe must still open */
		rec = tracecmd_create_recorder(file, 0, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
	tracecmd_free_recorder(rec);
	unlink(file);
}

/* ---- setup ---- */

static int suite_init(void)
{
	DIR *d;
	struct dirent *e;

	if (access("/sys/kernel/tracing/per_cpu", F_OK) == 0)
		strcpy(tracing, "/sys/kernel/tracing");
	else if (access("/sys/kernel/debug/tracing/per_cpu", F_OK) == 0)
		strcpy(tracing, "/sys/kernel/debug/tracing");
	else {
		fprintf(stderr, "test_recorder: tracefs is not mounted; run as root after .ci/install-deps\n");
		return 1;
	}
	snprintf(inst, sizeof(inst), "%s/instances/tcrsc-rec-%d", tracing, getpid());
	if (mkdir(inst, 0755)) {
		fprintf(stderr, "test_recorder: cannot create %s (needs root): %s\n", inst,
			strerror(errno));
		return 1;
	}
	write_file(inst, "buffer_size_kb", "1024");
	write_file(inst, "tracing_on", "1");
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tcrsc-rec-%d", getpid());
	mkdir(tmpdir, 0755);
	{
		char per_cpu[600];

		snprintf(per_cpu, sizeof(per_cpu), "%s/per_cpu", inst);
		d = opendir(per_cpu);
		if (!d)
			die(per_cpu);
		while ((e = readdir(d)))
			if (!strncmp(e->d_name, "cpu", 3))
				ncpus++;
		closedir(d);
	}
	if (ncpus > MAX_CPUS)
		ncpus = MAX_CPUS;
	return 0;
}

static int suite_clean(void)
{
	char cmd[600];

	if (inst[0] && rmdir(inst))
		fprintf(stderr, "test_recorder: could not remove %s: %s\n", inst, strerror(errno));
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : 1;
}

int main(void)
{
	CU_pSuite s;
	unsigned failed;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	s = CU_add_suite("recorder", suite_init, suite_clean);
	CU_add_test(s, "markers per CPU, splice", test_markers_splice);
	CU_add_test(s, "markers per CPU, NOSPLICE", test_markers_nosplice);
	CU_add_test(s, "maxkb ring bounds and order", test_maxkb_bounds);
	CU_add_test(s, "SIGINT stop within 100 ms", test_sigint_stop);
	CU_add_test(s, "virt FIFO: splice == NOSPLICE", test_virt_fifo_splice_equals_nosplice);
	CU_add_test(s, "stop before start", test_stop_before_start);
	CU_add_test(s, "NULL safety and errors", test_null_and_errors);
	CU_add_test(s, "agent recorder: NULL + ENOSYS", test_agent_recorder_is_enosys);
	CU_add_test(s, "top-level constructors", test_top_level_fd_recorder);
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
	CU_cleanup_registry();
	return failed ? 1 : 0;
}
