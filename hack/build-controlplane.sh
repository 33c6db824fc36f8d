#!/usr/bin/env bash
# Builds the local control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm) from the Go module proxy into
#
#   ${LLAMA_OPERATOR_CACHE:-~/.cache/llama-operator}/bin/k8s-<v>_etcd-<v>_kwok-<v>_helm-<v>/
#
# Idempotent: only missing binaries are built; when all are present it prints
# "all present" and exits at once. Each binary is written to a temporary file in the
# target folder and renamed into place, so an interrupted build never leaves a
# truncated binary behind. Progress goes to stderr; the last line on stdout is the
# bin dir, so callers can do `bin_dir="$(hack/build-controlplane.sh)"`.
#
# Versions live in hack/controlplane-versions.env (also read by the Python harness).
set -euo pipefail

hack_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
versions_file="$hack_dir/controlplane-versions.env"

# shellcheck source=controlplane-versions.env
source "$versions_file"
: "${KUBERNETES_VERSION:?missing in $versions_file}"
: "${ETCD_VERSION:?missing in $versions_file}"
: "${KWOK_VERSION:?missing in $versions_file}"
: "${HELM_VERSION:?missing in $versions_file}"

cache_root="${LLAMA_OPERATOR_CACHE:-$HOME/.cache/llama-operator}"
bin_dir="$cache_root/bin/k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
all_binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

log() {
	printf '[%4ds] %s\n' "$SECONDS" "$*" >&2
}

die() {
	printf 'build-controlplane: %s\n' "$*" >&2
	exit 1
}

missing_binaries() {
	local name
	for name in "${all_binaries[@]}"; do
		[[ -x "$bin_dir/$name" ]] || printf '%s\n' "$name"
	done
}

mapfile -t missing < <(missing_binaries)
if ((${#missing[@]} == 0)); then
	echo "all present" >&2
	echo "$bin_dir"
	exit 0
fi

command -v go >/dev/null || die "the go command is not on PATH (Go >= 1.26 is needed)"

# Never let the go command fetch a different toolchain, never link against libc.
export GOTOOLCHAIN=local CGO_ENABLED=0

# The versions file and the Go modules must agree, or the folder name would lie.
grep -Eq "^require k8s\.io/kubernetes ${KUBERNETES_VERSION//./\\.}\$" "$hack_dir/controlplane/go.mod" ||
	die "hack/controlplane/go.mod does not require k8s.io/kubernetes $KUBERNETES_VERSION"
grep -Eq "^require go\.etcd\.io/etcd/server/v3 ${ETCD_VERSION//./\\.}\$" "$hack_dir/etcd/go.mod" ||
	die "hack/etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION"

if [[ -n "${SOURCE_DATE_EPOCH:-}" ]]; then
	build_date="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
else
	build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
fi

kube_semver="${KUBERNETES_VERSION#v}"
kube_major="${kube_semver%%.*}"
kube_minor="${kube_semver#*.}"
kube_minor="${kube_minor%%.*}"

kube_ldflags="-s -w"
for version_pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kube_ldflags+=" -X $version_pkg.gitVersion=$KUBERNETES_VERSION"
	kube_ldflags+=" -X $version_pkg.gitMajor=$kube_major"
	kube_ldflags+=" -X $version_pkg.gitMinor=$kube_minor"
	kube_ldflags+=" -X $version_pkg.gitTreeState=clean"
	kube_ldflags+=" -X $version_pkg.buildDate=$build_date"
done
etcd_ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
kwok_ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
kwok_ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$kube_semver"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

mkdir -p "$bin_dir"
staging_dir="$(mktemp -d "$bin_dir/.staging.XXXXXX")"
trap 'rm -rf "$staging_dir"' EXIT

# build_in_module NAME MODULE_DIR LDFLAGS PACKAGE: go build inside one of our modules.
build_in_module() {
	local name=$1 module_dir=$2 ldflags=$3 package=$4
	(cd "$module_dir" && go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$staging_dir/$name" "$package")
	mv -f "$staging_dir/$name" "$bin_dir/$name"
}

# install_released NAME LDFLAGS PACKAGE@VERSION: go install of an upstream command whose
# go.mod has no replace directives (kwok, helm).
install_released() {
	local name=$1 ldflags=$2 package_at_version=$3
	(cd "$staging_dir" && GOBIN="$staging_dir" go install -trimpath -buildvcs=false -ldflags "$ldflags" "$package_at_version")
	mv -f "$staging_dir/$name" "$bin_dir/$name"
}

build_one() {
	local name=$1
	case "$name" in
	etcd) build_in_module etcd "$hack_dir/etcd" "$etcd_ldflags" . ;;
	kube-apiserver | kube-controller-manager | kube-scheduler | kubectl)
		build_in_module "$name" "$hack_dir/controlplane" "$kube_ldflags" "k8s.io/kubernetes/cmd/$name"
		;;
	kwok) install_released kwok "$kwok_ldflags" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" ;;
	helm) install_released helm "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" ;;
	*) die "no recipe for $name" ;;
	esac
}

log "building ${missing[*]} into $bin_dir ($(go version))"
for name in "${missing[@]}"; do
	step_started=$SECONDS
	log "building $name ..."
	build_one "$name"
	log "built $name in $((SECONDS - step_started))s"
done
log "done"
echo "$bin_dir"
