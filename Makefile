# Builds the C libraries (static, shared, pkg-config) and runs every test.
#   make            build/lib/{libtracecmd_rs.a,libtracecmd_rs.so*,pkgconfig/tracecmd-rs.pc}
#   make check      all Rust tests, then the C suites in c-tests/, then the QEMU guest tests
#   make qemu-check only the real-guest tests in tests/qemu/ (QEMU + Debian's kernel)
#   make install    PREFIX=/usr/local (DESTDIR honoured)
#   make fuzz       every cargo-fuzz target for FUZZ_SECONDS each (not part of check)
#   make miri       the pure codec tests under Miri (nightly)

CARGO   ?= cargo
PREFIX  ?= /usr/local
BUILD   := $(CURDIR)/build
LIBOUT  := $(BUILD)/lib
TARGET  := $(CURDIR)/target/release
VERSION := 0.1.0
# Defined by the program itself in trace-cmd's own tree (spec §7): weak in the
# static library so that both definitions link.
WEAK_SYMS := tracecmd_connect_to_socket receive_fd

.PHONY: fuzz fuzz-cmin miri record deps all lib check rust-check c-check qemu-check install clean

all: lib

lib:
	$(CARGO) build --release --workspace
	mkdir -p $(LIBOUT)/pkgconfig
	cp $(TARGET)/libtracecmd_rs.a $(LIBOUT)/.libtracecmd_rs.a.tmp
	objcopy $(foreach s,$(WEAK_SYMS),--weaken-symbol=$(s)) $(LIBOUT)/.libtracecmd_rs.a.tmp
	mv -f $(LIBOUT)/.libtracecmd_rs.a.tmp $(LIBOUT)/libtracecmd_rs.a
	# copy, then rename: a process that has the old library mapped keeps a valid file
	cp $(TARGET)/libtracecmd_rs.so $(LIBOUT)/.libtracecmd_rs.so.tmp
	mv -f $(LIBOUT)/.libtracecmd_rs.so.tmp $(LIBOUT)/libtracecmd_rs.so.$(VERSION)
	ln -sf libtracecmd_rs.so.$(VERSION) $(LIBOUT)/libtracecmd_rs.so.0
	ln -sf libtracecmd_rs.so.0 $(LIBOUT)/libtracecmd_rs.so
	./c-tests/gen-pc.sh $(CURDIR) $(LIBOUT) $(VERSION) > $(LIBOUT)/pkgconfig/tracecmd-rs.pc

# The main job: a real recording of `sleep 1` with the sched events, shown by
# Debian's trace-cmd report (the reader people already use).
record: deps
	$(CARGO) build --release -p trace-cmd
	$(TARGET)/trace-cmd record -e sched -o trace.dat sleep 1
	trace-cmd report -i trace.dat | head -n 20

check: deps lib rust-check c-check qemu-check

deps:
	./.ci/install-deps

rust-check:
	$(CARGO) test --release --workspace

c-check: lib
	$(MAKE) -C c-tests check

# Boots Debian's kernel under QEMU (TCG) with a busybox initramfs; see tests/qemu/run.sh.
qemu-check: lib
	./tests/qemu/run.sh

install: lib
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/tracecmd-rs
	install -m 644 include/trace-cmd.h $(DESTDIR)$(PREFIX)/include/tracecmd-rs/
	install -m 644 $(LIBOUT)/libtracecmd_rs.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIBOUT)/libtracecmd_rs.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libtracecmd_rs.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libtracecmd_rs.so.0
	ln -sf libtracecmd_rs.so.0 $(DESTDIR)$(PREFIX)/lib/libtracecmd_rs.so
	./c-tests/gen-pc.sh $(PREFIX) $(PREFIX)/lib $(VERSION) installed > $(DESTDIR)$(PREFIX)/lib/pkgconfig/tracecmd-rs.pc

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
	$(MAKE) -C c-tests clean

# Coverage-guided fuzzing ("Fuzzing" in README.md). Needs nightly;
# installs cargo-fuzz if missing. Not part of `make check`.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./fuzz/run.sh

# Folds what `make fuzz` found into fuzz/corpus/, minimised.
fuzz-cmin:
	./fuzz/cmin.sh

# The codec tests that make no system calls, under Miri (undefined behaviour).
MIRI_TESTS := msg_v2_codec msg_v1_v3_codec
miri:
	rustup +nightly component list --installed | grep -q '^miri' || rustup +nightly component add miri rust-src
	$(CARGO) +nightly miri test --no-fail-fast $(foreach t,$(MIRI_TESTS),--test $(t))
