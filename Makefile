# kvstrata: the two commands are `make run` and `make test` (see README.md).
BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# ccache: hit across clones of the repo (CI builds in a fresh clone).
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1

.PHONY: all setup configure build test run format format-check layering-check clean tsan

all: build

setup:
	@bash scripts/setup

configure: setup
	@mkdir -p $(BUILD_DIR)
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS) >$(BUILD_DIR)/configure.log 2>&1 \
	  || { cat $(BUILD_DIR)/configure.log; exit 1; }

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

# Every source file we own is clang-formatted (Google style, .clang-format).
FORMAT_FILES = $(shell git ls-files '*.cc' '*.h' '*.cu' '*.cuh' 2>/dev/null)
format-check:
	@command -v clang-format >/dev/null || { echo "clang-format missing: run scripts/setup"; exit 1; }
	@clang-format --dry-run --Werror $(FORMAT_FILES) && echo "format-check: $(words $(FORMAT_FILES)) files clean"

format:
	@clang-format -i $(FORMAT_FILES)

# Lower modules never include higher ones, and only cluster/ includes gRPC (DESIGN.md
# "Modules"; scripts/layering-check has the order).
layering-check:
	@/usr/bin/python3 scripts/layering-check

test: build format-check layering-check
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 1200

# ThreadSanitizer build and run of core/ and kvstore/ tests in build-tsan (scripts/tsan-check).
tsan:
	@bash scripts/tsan-check

run: build
	@bash scripts/demo $(BUILD_DIR)

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR).configure.log
