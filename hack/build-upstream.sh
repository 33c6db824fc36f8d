#!/usr/bin/env bash
# Builds the controllers of the pinned upstream projects (hack/upstream-versions.env) from the Go module
# proxy, one folder per project and version:
#
#   ${LLAMA_OPERATOR_CACHE:-~/.cache/llama-operator}/bin/<project>-<version>/<binary>...
#
#   hack/build-upstream.sh              every project with a controller (LWS, KEDA)
#   hack/build-upstream.sh LWS          one project (its key prefix in upstream-versions.env)
#   bin_dir="$(hack/build-upstream.sh LWS 2>/dev/null)"   # the last stdout line is the last project's folder
#
# Idempotent: a binary that is present is not rebuilt ("present", milliseconds). Each build goes into a
# staging folder inside the target folder and is renamed into place, so Ctrl-C or SIGTERM leaves the old
# state or a complete binary. Progress goes to stderr with elapsed seconds.
#
# A project is a section of `recipe` below: its main packages, binary names and version ldflags. The module
# and version come from upstream-versions.env (<KEY>_MODULE, <KEY>_VERSION); its go.mod's `go` line must be
# at most the local toolchain's (GOTOOLCHAIN=local never downloads another one).
set -euo pipefail

hack_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
versions_file="$hack_dir/upstream-versions.env"
cache_root="${LLAMA_OPERATOR_CACHE:-$HOME/.cache/llama-operator}"
projects=(LWS KEDA)

log() { printf '[%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'build-upstream: %s\n' "$*" >&2; exit 1; }

value() { # the value of KEY in the versions file
	local line
	line="$(grep -E "^$1=" "$versions_file")" || die "$1 is missing in $versions_file"
	printf '%s' "${line#*=}"
}

# recipe KEY VERSION: sets packages (main packages inside the module), binaries (one name each) and ldflags.
recipe() {
	local version=$2
	case "$1" in
	LWS)
		packages=("sigs.k8s.io/lws/cmd")
		binaries=("lws-manager")
		ldflags="-s -w -X sigs.k8s.io/lws/pkg/version.GitVersion=$version"
		ldflags+=" -X sigs.k8s.io/lws/pkg/version.BuildDate=$build_date"
		;;
	KEDA)
		# The operator (ScaledObjects -> HPAs, the metrics gRPC service) and the metrics adapter (the
		# external.metrics.k8s.io API the HPA reads); the admission webhooks are not built.
		packages=("github.com/kedacore/keda/v2/cmd/operator" "github.com/kedacore/keda/v2/cmd/adapter")
		binaries=("keda-operator" "keda-adapter")
		ldflags="-s -w -X github.com/kedacore/keda/v2/version.Version=$version"
		;;
	*) die "no build recipe for $1 (add a section to recipe in ${BASH_SOURCE[0]})" ;;
	esac
}

if (($#)); then projects=("$@"); fi
if [[ -n "${SOURCE_DATE_EPOCH:-}" ]]; then
	build_date="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
else
	build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
fi

staging=""
trap '[[ -z "$staging" ]] || rm -rf "$staging"' EXIT

for project in "${projects[@]}"; do
	module="$(value "${project}_MODULE")"
	version="$(value "${project}_VERSION")"
	recipe "$project" "$version"
	slug="$(printf '%s' "$project" | tr 'A-Z_' 'a-z-')"
	bin_dir="$cache_root/bin/$slug-$version"
	missing=()
	for i in "${!binaries[@]}"; do
		[[ -x "$bin_dir/${binaries[$i]}" ]] || missing+=("$i")
	done
	if ((${#missing[@]} == 0)); then
		log "$module@$version: present ($bin_dir: ${binaries[*]})"
		echo "$bin_dir"
		continue
	fi
	command -v go >/dev/null || die "the go command is not on PATH (Go >= 1.26 is needed)"
	export GOTOOLCHAIN=local CGO_ENABLED=0
	started=$SECONDS
	mkdir -p "$bin_dir"
	staging="$(mktemp -d "$bin_dir/.staging.XXXXXX")"
	log "$module@$version: go mod download"
	json="$(cd "$staging" && go mod download -json "$module@$version")" || die "go mod download $module@$version failed"
	module_dir="$(printf '%s' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -d "$module_dir" ]] || die "go mod download $module@$version printed no module folder"
	go_line="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$module_dir/go.mod")"
	# Built inside the module as downloaded (read-only, checksummed): exactly its go.mod and go.sum. Not
	# `go install pkg@version`: that also reads the module's version list, which the proxy may refuse.
	for i in "${missing[@]}"; do
		package="${packages[$i]}" binary="${binaries[$i]}"
		log "$module@$version (go $go_line): go build $package ($(go version))"
		built="$staging/$binary"
		(cd "$module_dir" && go build -mod=readonly -trimpath -buildvcs=false -ldflags "$ldflags" -o "$built" "$package") ||
			die "go build $package ($module@$version) failed"
		[[ -x "$built" ]] || die "go build $package left no binary at $built"
		mv -f "$built" "$bin_dir/$binary"
		log "$module@$version: built $bin_dir/$binary after $((SECONDS - started)) s"
	done
	rm -rf "$staging" && staging=""
	echo "$bin_dir"
done
