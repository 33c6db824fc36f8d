#!/usr/bin/env bash
# Builds llama.cpp's llama-server (CPU only, statically linked against llama/ggml) from the
# llama.cpp sources vendored in the llama-cpp-python sdist on PyPI, and installs it with the
# sdist's vocabulary files into
#
#   ${LLAMA_OPERATOR_CACHE:-~/.cache/llama-operator}/llama-server/<version>/
#       bin/llama-server
#       vocab/ggml-vocab-*.gguf
#       BUILD-INFO
#
# Idempotent: when the install exists it prints "present" and exits at once. Everything is
# built in a temporary folder next to the install and renamed into place at the end, so an
# interrupted build never leaves a half install. Progress goes to stderr; the last line on
# stdout is the install dir, so callers can do `dir="$(hack/build-llama-server.sh)"`.
#
# The version lives in hack/llama-server-version.env (also read by the Python test helpers).
# Needs cmake, a C/C++ compiler, ninja or make, and pip access to PyPI.
# LLAMA_SERVER_BUILD_JOBS sets the compile parallelism (default: all cores).
set -euo pipefail

hack_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$hack_dir")"
versions_file="$hack_dir/llama-server-version.env"

# shellcheck source=llama-server-version.env
source "$versions_file"
: "${LLAMA_CPP_PYTHON_VERSION:?missing in $versions_file}"
: "${LLAMA_CPP_PYTHON_SDIST_SHA256:?missing in $versions_file}"
: "${LLAMA_CPP_COMMIT:?missing in $versions_file}"
: "${LLAMA_CPP_BUILD_NUMBER:?missing in $versions_file}"

cache_root="${LLAMA_OPERATOR_CACHE:-$HOME/.cache/llama-operator}"
versions_dir="$cache_root/llama-server"
install_dir="$versions_dir/$LLAMA_CPP_PYTHON_VERSION"

# Progress goes to the script's stderr, kept on fd 3 so that a trap firing inside a step
# whose output is redirected to a log file still reports on the terminal.
exec 3>&2
log() {
	printf '[%4ds] %s\n' "$SECONDS" "$*" >&3
}

die() {
	printf 'build-llama-server: %s\n' "$*" >&2
	exit 1
}

is_installed() {
	[[ -x "$install_dir/bin/llama-server" && -f "$install_dir/BUILD-INFO" ]] &&
		compgen -G "$install_dir/vocab/ggml-vocab-*.gguf" >/dev/null
}

if is_installed; then
	echo "present" >&2
	echo "$install_dir"
	exit 0
fi

mkdir -p "$versions_dir"

# Two builds of the same version at once (two test sessions) would compile it twice:
# the second one waits for the first and then finds the install present.
if command -v flock >/dev/null; then
	exec {lock_fd}>"$versions_dir/.lock-$LLAMA_CPP_PYTHON_VERSION"
	if ! flock -n "$lock_fd"; then
		log "another build of $LLAMA_CPP_PYTHON_VERSION is running; waiting for it"
		flock "$lock_fd"
	fi
	if is_installed; then
		echo "present" >&2
		echo "$install_dir"
		exit 0
	fi
	# Holding the lock, any build folder of this version is a leftover of a killed run.
	rm -rf "$versions_dir/.build-$LLAMA_CPP_PYTHON_VERSION."*
fi

for tool in cmake cc c++ tar sha256sum; do
	command -v "$tool" >/dev/null || die "$tool is not on PATH"
done

if [[ -n "${PYTHON:-}" ]]; then
	python="$PYTHON"
elif [[ -x "$repo_dir/.venv/bin/python" ]]; then
	python="$repo_dir/.venv/bin/python"
else
	python="python3"
fi
"$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip (set PYTHON to an interpreter with pip)"

if command -v ninja >/dev/null; then
	generator=(-G Ninja)
else
	generator=(-G "Unix Makefiles")
fi
jobs="${LLAMA_SERVER_BUILD_JOBS:-$(nproc)}"

work_dir="$(mktemp -d "$versions_dir/.build-$LLAMA_CPP_PYTHON_VERSION.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT

# Long steps run in the background in their own process group: bash defers traps while a
# foreground command runs, so Ctrl-C or SIGTERM would otherwise wait for the compile to end.
# The trap stops the whole step (pip, cmake, ninja, compilers), then the EXIT trap cleans up.
step_pgid=""
on_signal() {
	if [[ -n "$step_pgid" ]]; then
		kill -TERM -- "-$step_pgid" 2>/dev/null || true
		wait "$step_pgid" 2>/dev/null || true
	fi
	log "interrupted; nothing was installed"
	exit 130
}
trap on_signal INT TERM

run_step() {
	local status=0
	if command -v setsid >/dev/null; then
		setsid "$@" &
	else
		"$@" &
	fi
	step_pgid=$!
	wait "$step_pgid" || status=$?
	step_pgid=""
	return "$status"
}

step_name=""
step_started=$SECONDS
step() {
	if [[ -n "$step_name" ]]; then
		log "$step_name: done in $((SECONDS - step_started))s"
	fi
	step_name="$*"
	step_started=$SECONDS
	log "$step_name"
}

log "building llama-server from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (llama.cpp b$LLAMA_CPP_BUILD_NUMBER, $LLAMA_CPP_COMMIT) into $install_dir"

# --no-binary names only our package: with :all: pip would also build the sdist's build
# backend (scikit-build-core and its dependencies) from source just to read its metadata.
step "pip download llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (sdist)"
run_step "$python" -m pip download --quiet --no-binary llama-cpp-python --no-deps \
	"llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work_dir/download" >&2 ||
	die "pip could not download the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist"
sdist="$work_dir/download/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
[[ -f "$sdist" ]] || die "pip did not produce $sdist"
echo "$LLAMA_CPP_PYTHON_SDIST_SHA256  $sdist" | sha256sum --check --quiet - >&2 ||
	die "sha256 of $sdist does not match LLAMA_CPP_PYTHON_SDIST_SHA256 in $versions_file"

step "extract sdist"
tar -xzf "$sdist" -C "$work_dir"
sdist_dir="$work_dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
source_dir="$sdist_dir/vendor/llama.cpp"
[[ -f "$source_dir/tools/server/CMakeLists.txt" ]] ||
	die "the sdist carries no vendor/llama.cpp/tools/server; this version cannot build llama-server"
grep -Fq "ggml-org/llama.cpp@$LLAMA_CPP_COMMIT" "$sdist_dir/CHANGELOG.md" ||
	die "the sdist's CHANGELOG.md does not name llama.cpp commit $LLAMA_CPP_COMMIT (LLAMA_CPP_COMMIT in $versions_file)"

# CPU only and self-contained: static llama/ggml, no OpenSSL (plain HTTP is all a pod needs),
# no OpenMP runtime (ggml's own thread pool), no web UI download, a portable instruction set
# (AVX2/FMA/F16C baseline instead of -march=native, so a cached build runs on any x86-64-v3).
cmake_flags=(
	-DCMAKE_BUILD_TYPE=Release
	-DBUILD_SHARED_LIBS=OFF
	-DGGML_NATIVE=OFF
	-DGGML_CUDA=OFF
	-DGGML_OPENMP=OFF
	-DGGML_CCACHE=OFF
	-DLLAMA_OPENSSL=OFF
	-DLLAMA_BUILD_TESTS=OFF
	-DLLAMA_BUILD_EXAMPLES=OFF
	-DLLAMA_BUILD_TOOLS=ON
	-DLLAMA_BUILD_SERVER=ON
	-DLLAMA_BUILD_APP=OFF
	-DLLAMA_BUILD_UI=OFF
	-DLLAMA_USE_PREBUILT_UI=OFF
	-DLLAMA_BUILD_NUMBER="$LLAMA_CPP_BUILD_NUMBER"
	-DLLAMA_BUILD_COMMIT="$LLAMA_CPP_COMMIT"
)

step "cmake configure (${generator[*]})"
run_step cmake -S "$source_dir" -B "$work_dir/build" "${generator[@]}" "${cmake_flags[@]}" >"$work_dir/configure.log" 2>&1 ||
	{
		tail -n 40 "$work_dir/configure.log" >&2
		die "cmake configure failed"
	}

step "compile llama-server (-j$jobs, nice -n 10)"
run_step nice -n 10 cmake --build "$work_dir/build" --target llama-server -j "$jobs" >"$work_dir/compile.log" 2>&1 ||
	{
		tail -n 40 "$work_dir/compile.log" >&2
		die "compiling llama-server failed"
	}

step "stage install"
staging="$work_dir/install"
mkdir -p "$staging/bin" "$staging/vocab"
cp "$work_dir/build/bin/llama-server" "$staging/bin/llama-server"
strip "$staging/bin/llama-server" 2>/dev/null || true
cp "$source_dir"/models/ggml-vocab-*.gguf "$staging/vocab/"
if ldd "$staging/bin/llama-server" 2>&1 | grep -q "not found"; then
	ldd "$staging/bin/llama-server" >&2
	die "the built llama-server needs a shared library that is not installed"
fi
version_output="$("$staging/bin/llama-server" --version 2>&1)" || die "llama-server --version failed: $version_output"
{
	echo "llama_cpp_python=$LLAMA_CPP_PYTHON_VERSION"
	echo "llama_cpp_commit=$LLAMA_CPP_COMMIT"
	echo "llama_cpp_build_number=$LLAMA_CPP_BUILD_NUMBER"
	echo "cmake_flags=${cmake_flags[*]}"
	echo "compiler=$(c++ --version | head -n 1)"
	echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	printf '%s\n' "$version_output" | sed 's/^/version_output=/'
} >"$staging/BUILD-INFO"

step "install"
# Anything at the install path is an unfinished leftover (is_installed said no): replace it.
if [[ -e "$install_dir" ]]; then
	mv "$install_dir" "$work_dir/replaced"
fi
mv -T "$staging" "$install_dir"
step_name=""
log "done: $(printf '%s' "$version_output" | head -n 1)"
echo "$install_dir"
