#!/usr/bin/env bash
# Takes the CRD files of the pinned upstream projects (hack/upstream-versions.env) from their Go modules
# into
#
#   ${LLAMA_OPERATOR_CACHE:-~/.cache/llama-operator}/crds/<project>-<version>/
#
# with `go mod download` (the module proxy's checksummed zip; nothing is built). Idempotent: a project whose
# folder is complete is skipped. Progress goes to stderr with elapsed seconds; the last line on stdout is
# the crds folder.
#
#   hack/fetch-upstream-crds.sh            every project
#   hack/fetch-upstream-crds.sh GIE        one project (its key prefix in upstream-versions.env)
set -euo pipefail

hack_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
versions_file="$hack_dir/upstream-versions.env"
cache_root="${LLAMA_OPERATOR_CACHE:-$HOME/.cache/llama-operator}"
crds_root="$cache_root/crds"
projects=(GIE PROMETHEUS_OPERATOR LWS KEDA)

log() { printf '[%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'fetch-upstream-crds: %s\n' "$*" >&2; exit 1; }

value() { # the value of KEY in the versions file
	local line
	line="$(grep -E "^$1=" "$versions_file")" || die "$1 is missing in $versions_file"
	printf '%s' "${line#*=}"
}

if (($#)); then projects=("$@"); fi
command -v go >/dev/null || die "the go command is not on PATH (Go >= 1.26 is needed)"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
scratch="$(mktemp -d)" # outside any module: `go mod download module@version` needs no go.mod
trap 'rm -rf "$scratch"' EXIT

for project in "${projects[@]}"; do
	module="$(value "${project}_MODULE")"
	version="$(value "${project}_VERSION")"
	IFS=, read -r -a files <<<"$(value "${project}_CRDS")"
	slug="$(printf '%s' "$project" | tr 'A-Z_' 'a-z-')"
	target="$crds_root/$slug-$version"
	if [[ -f "$target/.complete" ]]; then
		log "$module@$version: present in $target"
		continue
	fi
	log "$module@$version: go mod download"
	started=$SECONDS
	json="$(cd "$scratch" && go mod download -json "$module@$version")" || die "go mod download $module@$version failed"
	dir="$(printf '%s' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -d "$dir" ]] || die "go mod download $module@$version printed no module folder"
	go_line="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$dir/go.mod")"
	staging="$target.partial"
	rm -rf "$staging" && mkdir -p "$staging"
	for file in "${files[@]}"; do
		[[ -f "$dir/$file" ]] || die "$module@$version has no $file"
		cp "$dir/$file" "$staging/"
		chmod u+w "$staging/$(basename "$file")"
	done
	printf '%s@%s (go %s)\n' "$module" "$version" "$go_line" >"$staging/.complete"
	rm -rf "$target" && mv "$staging" "$target"
	log "$module@$version (go $go_line): ${#files[@]} CRD file(s) in $((SECONDS - started)) s"
done
echo "$crds_root"
