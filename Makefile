# kvq - build with `make`; `make test` runs the test suite; `make help` lists targets.
# Sources are found by wildcard: a new file under src/<part>/ is built without editing
# this file. Files named *_avx2.c, *_avx512.c and *_neon.c get their ISA's flags and
# are built only for the matching architecture.

VERSION_MAJOR := 0
VERSION_MINOR := 1
VERSION_PATCH := 0
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

CC ?= cc
BUILD ?= build
PREFIX ?= /usr/local
DESTDIR ?=
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man

OPT ?= -O2
WARN := -Wall -Wextra -Werror
CPPFLAGS_ALL := -Iinclude -Isrc -D_DEFAULT_SOURCE -D_FILE_OFFSET_BITS=64
CFLAGS_ALL := -std=c11 $(OPT) -g $(WARN) -fPIC -fvisibility=hidden -pthread $(CFLAGS)
LDLIBS_ALL := -lm -pthread $(LDLIBS)

ifeq ($(SAN),1)
CFLAGS_ALL += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(SAN),thread)
CFLAGS_ALL += -fsanitize=thread -fno-omit-frame-pointer
LDFLAGS += -fsanitize=thread
endif

MACHINE := $(shell $(CC) -dumpmachine)
ifneq ($(filter x86_64% amd64%,$(MACHINE)),)
ARCH := x86_64
else ifneq ($(filter aarch64% arm64%,$(MACHINE)),)
ARCH := aarch64
else
ARCH := other
endif

AVX2_FLAGS := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vpopcntdq
NEON_FLAGS :=

LIB_PARTS := core quant cpu cache index engine
ALL_LIB_SRC := $(foreach p,$(LIB_PARTS),$(wildcard src/$(p)/*.c))
AVX_SRC := $(filter %_avx2.c %_avx512.c,$(ALL_LIB_SRC))
NEON_SRC := $(filter %_neon.c,$(ALL_LIB_SRC))
LIB_SRC := $(filter-out $(AVX_SRC) $(NEON_SRC),$(ALL_LIB_SRC))
ifeq ($(ARCH),x86_64)
LIB_SRC += $(AVX_SRC)
CPPFLAGS_ALL += -DKVQ_HAVE_X86_SIMD=1
endif
ifeq ($(ARCH),aarch64)
LIB_SRC += $(NEON_SRC)
CPPFLAGS_ALL += -DKVQ_HAVE_NEON=1
endif

# CUDA: compiled whenever nvcc exists (NO_CUDA=1 to skip).
NVCC ?= $(shell command -v nvcc 2>/dev/null)
CU_SRC := $(wildcard src/cuda/*.cu)
CUDA_OBJ :=
ifeq ($(NO_CUDA),1)
NVCC :=
endif
ifneq ($(strip $(NVCC)),)
ifneq ($(strip $(CU_SRC)),)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
NVCCFLAGS ?= -O3 -std=c++17 -Xcompiler -fPIC,-fvisibility=hidden,-fno-threadsafe-statics,-fno-exceptions -Iinclude -Isrc \
  -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
CPPFLAGS_ALL += -DKVQ_HAVE_CUDA=1 -I$(CUDA_HOME)/include
CUDA_OBJ := $(CU_SRC:%.cu=$(BUILD)/%.o)
LDLIBS_ALL += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart
endif
endif

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(CUDA_OBJ)
TOOL_SRC := $(wildcard tools/*.c)
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

STATIC_LIB := $(BUILD)/libkvq.a
SONAME := libkvq.so.$(VERSION_MAJOR)
SHARED_LIB := $(BUILD)/libkvq.so.$(VERSION)
CLI := $(BUILD)/kvq
TEST_BIN := $(BUILD)/kvq-tests

.PHONY: all lib test test-asan test-tsan bench install uninstall clean help check-werror
all: $(STATIC_LIB) $(SHARED_LIB) $(CLI) $(BUILD)/kvq.pc $(BUILD)/kvqConfig.cmake $(BUILD)/kvqConfigVersion.cmake

lib: $(STATIC_LIB) $(SHARED_LIB)

help:
	@echo "make            build libkvq.a, libkvq.so and the kvq CLI into $(BUILD)/"
	@echo "make test       build and run the test suite (ends with 'N passed, N failed')"
	@echo "make test-asan  the same, built with AddressSanitizer + UndefinedBehaviorSanitizer"
	@echo "make test-tsan  the same, built with ThreadSanitizer"
	@echo "make bench      build the benchmark programs into $(BUILD)/bench/"
	@echo "make install    install headers, libraries, kvq.pc and kvq (PREFIX, DESTDIR)"
	@echo "make clean      remove $(BUILD)/"

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) $(AVX2_FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) $(AVX512_FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%_neon.o: %_neon.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) $(NEON_FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(STATIC_LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(SHARED_LIB): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=src/kvq.map $(LDFLAGS) -o $@ $^ $(LDLIBS_ALL)
	ln -sf libkvq.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libkvq.so

$(CLI): $(TOOL_OBJ) $(STATIC_LIB)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS) -o $@ $(TOOL_OBJ) $(STATIC_LIB) $(LDLIBS_ALL)

PRIVATE_LIBS := $(if $(CUDA_OBJ),-L$(CUDA_HOME)/lib64 -lcudart,)
SUBST := sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@VERSION_MAJOR@|$(VERSION_MAJOR)|g' -e 's|@PRIVATE_LIBS@|$(PRIVATE_LIBS)|g' \
	    -e 's|@CMAKE_PRIVATE_LIBS@|$(if $(CUDA_OBJ),$(CUDA_HOME)/lib64/libcudart.so,)|g'
$(BUILD)/kvq.pc: kvq.pc.in Makefile
	@mkdir -p $(dir $@)
	$(SUBST) $< > $@
$(BUILD)/%.cmake: cmake/%.cmake.in Makefile
	@mkdir -p $(dir $@)
	$(SUBST) $< > $@

# The test runner: every `TEST(name)` at the start of a line in tests/*.c is registered.
$(BUILD)/tests/registry.h: $(TEST_SRC)
	@mkdir -p $(dir $@)
	grep -h -o '^TEST([A-Za-z0-9_]*)' $(TEST_SRC) | sed 's/^TEST(\(.*\))/KVQ_TEST_ENTRY(\1)/' > $@.tmp
	mv $@.tmp $@

$(BUILD)/tests/runner.o: $(BUILD)/tests/registry.h
$(BUILD)/tests/%.o: CPPFLAGS_ALL += -I$(BUILD)/tests -Itests

$(TEST_BIN): $(TEST_OBJ) $(STATIC_LIB)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS) -o $@ $(TEST_OBJ) $(STATIC_LIB) $(LDLIBS_ALL)

test: $(TEST_BIN) $(CLI)
	KVQ_CLI=$(CLI) ./$(TEST_BIN) $(TESTS)

test-asan:
	$(MAKE) BUILD=build-asan SAN=1 OPT=-O1 NO_CUDA=1 test

test-tsan:
	$(MAKE) BUILD=build-tsan SAN=thread OPT=-O1 NO_CUDA=1 test TESTS=$(or $(TESTS),thread)

$(BUILD)/bench/%: bench/%.c $(STATIC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) -o $@ $< $(STATIC_LIB) $(LDLIBS_ALL)

bench: $(BENCH_BIN) $(CLI)

install: all
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(BINDIR)
	install -m 644 include/kvq.h $(DESTDIR)$(INCLUDEDIR)/kvq.h
	install -m 644 $(STATIC_LIB) $(DESTDIR)$(LIBDIR)/libkvq.a
	install -m 755 $(SHARED_LIB) $(DESTDIR)$(LIBDIR)/libkvq.so.$(VERSION)
	ln -sf libkvq.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libkvq.so
	install -m 644 $(BUILD)/kvq.pc $(DESTDIR)$(LIBDIR)/pkgconfig/kvq.pc
	install -m 755 $(CLI) $(DESTDIR)$(BINDIR)/kvq
	install -d $(DESTDIR)$(LIBDIR)/cmake/kvq
	install -m 644 $(BUILD)/kvqConfig.cmake $(BUILD)/kvqConfigVersion.cmake $(DESTDIR)$(LIBDIR)/cmake/kvq/

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/kvq.h $(DESTDIR)$(LIBDIR)/libkvq.a \
	  $(DESTDIR)$(LIBDIR)/libkvq.so* $(DESTDIR)$(LIBDIR)/pkgconfig/kvq.pc $(DESTDIR)$(BINDIR)/kvq
	rm -rf $(DESTDIR)$(LIBDIR)/cmake/kvq

clean:
	rm -rf $(BUILD) build-asan build-tsan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# README's test command: dependencies, the suite, then the suite under ASan + UBSan.
.PHONY: check deps
deps:
	./scripts/deps.sh

check: deps
	$(MAKE) test
	$(MAKE) test-asan

# The whole suite cross-built for AArch64 (NEON kernels) and run under qemu-user.
# Needs Debian's gcc-aarch64-linux-gnu and qemu-user (scripts/deps.sh --arm64).
ARM64_CC ?= aarch64-linux-gnu-gcc
QEMU_ARM64 ?= qemu-aarch64 -L /usr/aarch64-linux-gnu
.PHONY: test-arm64
test-arm64:
	$(MAKE) BUILD=build-arm64 CC=$(ARM64_CC) NO_CUDA=1 build-arm64/kvq-tests build-arm64/kvq
	KVQ_CLI="$(QEMU_ARM64) build-arm64/kvq" $(QEMU_ARM64) build-arm64/kvq-tests $(TESTS)
